import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from factories import make_forget_dir, make_random_model  # noqa: E402


@pytest.fixture(scope="session")
def random_world(tmp_path_factory):
    """Two random-weight tiny Llamas (bf16 on disk) and a small MUSE-layout forget set."""
    root = tmp_path_factory.mktemp("random_world")
    return {
        "model": make_random_model(root / "model", seed=1, dtype="bfloat16"),
        "reference": make_random_model(root / "reference", seed=2, dtype="bfloat16"),
        "forget": make_forget_dir(root / "forget"),
        "root": root,
    }


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The demo world at test size: a target that knows the synthetic facts, its unlearned and
    retain-only variants, and the constructed positive control (trained here, about a minute)."""
    from hubaudit.demo.world import build_world

    return build_world(tmp_path_factory.mktemp("tiny_world"), size="tiny", progress=False)
