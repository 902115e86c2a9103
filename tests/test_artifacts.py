"""Published builds as cells (``file:``): a GGUF file written by hubaudit's own ``gguf`` backend, on disk and
served by the local Hub, and a pre-quantized (bitsandbytes) repository, each audited as published: the cell
scores what the matching recipe scores, item for item; it is pinned (sha256 / commit) so the store never
reuses a value for another file; ``--all-files`` audits every GGUF of a repository; an artifact that is not a
build of the audited model, or that transformers cannot load, is refused with one line and exit code 2."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model
from hubaudit.cli import main
from hubserver import LocalHub, use_endpoint

pytestmark = pytest.mark.slow  # each test loads GGUF files through transformers and audits (seconds)


def write(model_dir: Path, path: Path, ftype: str, tokenizer=None):
    from hubaudit.modeling import ModelSource
    from hubaudit.quant.gguf_backend import write_gguf

    src = ModelSource(model_dir, device="cpu")
    return write_gguf(src.model, tokenizer or src.tokenizer, path, ftype)[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    model = make_random_model(root / "model", seed=4, hidden=256)  # rows of 256: the k-quants apply, no fallback
    files = {}
    for ftype in ("Q4_K_M", "Q8_0"):
        path = root / "gguf" / f"tiny.{ftype}.gguf"
        files[ftype] = (path, write(model, path, ftype))
    return {"root": root, "model": model, "forget": make_forget_dir(root / "forget"), "gguf": files}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def audit_cli(capsys, world, out, *extra):
    return run(capsys, "audit", world["model"], "--forget", world["forget"], "--no-reference", "--out", out,
               "--fail-on", "none", "--quiet", *extra)


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def cell(rep: dict, spec: str, role: str = "model") -> dict:
    return next(c for c in rep["cells"] if c["role"] == role and c["spec"] == spec)


def items(c: dict) -> dict:
    """Per-item scores of every metric (MIA: each text's Min-K% score)."""
    return {m: [x.get("score", x.get("min_k")) for x in rows] for m, rows in c["items"].items()}


def test_a_gguf_file_scores_what_the_gguf_recipe_scores_and_is_described(world, tmp_path, capsys):
    import hashlib

    path, types = world["gguf"]["Q4_K_M"]
    code, out, err = audit_cli(capsys, world, tmp_path / "out", "--no-store", "--backends", f"gguf:Q4_K_M,file:{path}")
    assert code == 0, err
    rep = report(tmp_path / "out")
    fp, recipe, art = cell(rep, "fp"), cell(rep, "gguf:Q4_K_M"), cell(rep, f"file:{path}")
    assert art["status"] == "ok"
    # the file holds the blocks the recipe evaluates: the same per-item scores on every metric
    assert items(art) == items(recipe)
    assert items(art)["mia_auc"] != items(fp)["mia_auc"]  # ... and they are not simply full precision's
    s = art["backend"]["settings"]
    assert s["identity"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert s["file_type"] == "Q4_K_M" and s["architecture"] == "llama"
    expected = Counter(types.values()) + Counter({"F32": 2 * 2 + 1})  # 2 norms per layer + the final norm
    assert s["type_counts"] == dict(expected)
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"`file:{path}`: GGUF Q4_K_M (" in md and s["identity"] in md


def test_the_store_never_reuses_a_result_for_another_file_at_the_same_path(world, tmp_path):
    import hubaudit

    path = tmp_path / "model.gguf"
    store = tmp_path / "store.sqlite"
    kw = dict(forget=world["forget"], reference=False, store=store, progress=False)
    shutil.copy(world["gguf"]["Q4_K_M"][0], path)
    first = hubaudit.audit(world["model"], specs=f"file:{path}", **kw)
    shutil.copy(world["gguf"]["Q8_0"][0], path)  # another file, same name
    second = hubaudit.audit(world["model"], specs=f"gguf:Q8_0,file:{path}", **kw)
    a, b = first.cell("model", f"file:{path}"), second.cell("model", f"file:{path}")
    assert not b.reused and b.items == second.cell("model", "gguf:Q8_0").items
    assert b.items["mia_auc"] != a.items["mia_auc"]
    third = hubaudit.audit(world["model"], specs=f"file:{path}", **kw)  # the same file again: reused
    assert third.cell("model", f"file:{path}").reused


@pytest.fixture(scope="module")
def hub(world, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    root = tmp_path_factory.mktemp("hub")
    nf4 = root / "tiny-nf4"
    q = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    q.save_pretrained(nf4)  # a pre-quantized repository, as people publish them
    for f in Path(world["model"]).glob("tokenizer*"):
        shutil.copy(f, nf4)
    with LocalHub(root / "server") as hub:
        gg = {p.name: p for p, _ in world["gguf"].values()}
        hub.first_sha = hub.create_repo("org/tiny-GGUF", files={**gg, "README.md": b"# GGUF builds\n"})
        hub.create_repo("org/tiny-nf4", files={str(p.relative_to(nf4)): p for p in nf4.rglob("*") if p.is_file()})
        yield hub


def test_hub_gguf_repository_every_file_pinned_to_its_commit(world, hub, tmp_path, capsys):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        # a repository with several files: name one, or --all-files
        code, _, err = audit_cli(capsys, world, tmp_path / "x", "--no-store", "--backends", "file:org/tiny-GGUF")
        assert code == 2 and "--all-files" in err and "tiny.Q4_K_M.gguf" in err and len(err.strip().splitlines()) == 1
        code, _, err = audit_cli(capsys, world, tmp_path / "all", "--no-store", "--all-files",
                                 "--backends", "gguf:Q8_0,file:org/tiny-GGUF")
        assert code == 0, err
        rep = report(tmp_path / "all")
        names = [s for s in rep["inputs"]["specs"] if s.startswith("file:")]
        assert names == ["file:org/tiny-GGUF/tiny.Q4_K_M.gguf", "file:org/tiny-GGUF/tiny.Q8_0.gguf"]
        q8 = cell(rep, "file:org/tiny-GGUF/tiny.Q8_0.gguf")
        assert q8["backend"]["settings"]["identity"] == f"hub:org/tiny-GGUF@{hub.first_sha}/tiny.Q8_0.gguf"
        assert items(q8) == items(cell(rep, "gguf:Q8_0"))
        # a new commit replaces the Q8_0 file; @<old commit> still audits the file as it was
        hub.commit("org/tiny-GGUF", {"tiny.Q8_0.gguf": world["gguf"]["Q4_K_M"][0]})
        code, _, err = audit_cli(capsys, world, tmp_path / "old", "--no-store",
                                 "--backends", f"file:org/tiny-GGUF/tiny.Q8_0.gguf@{hub.first_sha}")
        assert code == 0, err
        old = cell(report(tmp_path / "old"), f"file:org/tiny-GGUF/tiny.Q8_0.gguf@{hub.first_sha}")
        assert old["backend"]["settings"]["identity"] == q8["backend"]["settings"]["identity"]
        assert items(old) == items(q8)
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache", offline=True):
        # offline, a commit pins the file in the cache; a branch cannot be resolved and the error says so
        spec = f"file:org/tiny-GGUF/tiny.Q8_0.gguf@{hub.first_sha}"
        code, _, err = audit_cli(capsys, world, tmp_path / "offline", "--no-store", "--backends", spec)
        assert code == 0, err
        assert items(cell(report(tmp_path / "offline"), spec)) == items(q8)
        code, _, err = audit_cli(capsys, world, tmp_path / "x", "--no-store", "--backends", "file:org/tiny-GGUF/tiny.Q8_0.gguf")
        assert code == 2 and "give the commit itself" in err and len(err.strip().splitlines()) == 1, err


def test_a_prequantized_hub_repository_is_loaded_with_its_own_config(world, hub, tmp_path, capsys):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        code, _, err = audit_cli(capsys, world, tmp_path / "out", "--no-store", "--backends", "bnb:nf4,file:org/tiny-nf4")
    assert code == 0, err
    rep = report(tmp_path / "out")
    art = cell(rep, "file:org/tiny-nf4")
    assert items(art) == items(cell(rep, "bnb:nf4"))  # the same 4-bit blocks bitsandbytes makes while loading
    s = art["backend"]["settings"]
    assert s["quant_method"] == "bitsandbytes" and s["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert s["identity"] == f"hub:org/tiny-nf4@{hub.head('org/tiny-nf4')}"
    assert "pre-quantized bitsandbytes (load_in_4bit True, bnb_4bit_quant_type nf4)" in (tmp_path / "out" / "report.md").read_text()


class SwappedTokens:
    """A tokenizer whose tokens 10 and 11 trade places (another tokenizer with the same size)."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)

    def convert_ids_to_tokens(self, ids):
        out = self._tok.convert_ids_to_tokens(ids)
        out[10], out[11] = out[11], out[10]
        return out


def unloadable_arch(path: Path, tok_dir: Path) -> None:
    """A GGUF whose architecture transformers' GGUF loader does not know."""
    from gguf import GGUFWriter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    w = GGUFWriter(str(path), "notanarch")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tok.convert_ids_to_tokens(list(range(len(tok)))))
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((len(tok), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("case", ["layers", "tokenizer", "architecture", "not-gguf", "missing", "two-files"])
def test_an_artifact_that_is_not_a_loadable_build_of_the_model_is_refused(world, tmp_path, capsys, case):
    from hubaudit.modeling import ModelSource

    target = tmp_path / "a.gguf"
    if case == "layers":
        write(make_random_model(tmp_path / "m3", seed=4, hidden=256, layers=3), target, "Q8_0")
        want = "has 3 layers and the audited model 2"
    elif case == "tokenizer":
        write(world["model"], target, "Q8_0", SwappedTokens(ModelSource(world["model"], device="cpu").tokenizer))
        want = "another tokenizer than the audited model (token 10"
    elif case == "architecture":
        unloadable_arch(target, world["model"])
        want = "transformers cannot load GGUF architecture 'notanarch'"
    elif case == "not-gguf":
        target = tmp_path / "pytorch_model.bin"
        target.write_bytes(b"\x80\x02pickle")
        want = "is not a .gguf file"
    elif case == "missing":
        want = "not found"
    else:
        target = tmp_path / "builds"
        target.mkdir()
        for p, _ in world["gguf"].values():
            shutil.copy(p, target)
        want = "holds 2 GGUF files (tiny.Q4_K_M.gguf, tiny.Q8_0.gguf): name one"
    code, out, err = audit_cli(capsys, world, tmp_path / "out", "--no-store", "--backends", f"rtn:4,file:{target}")
    assert code == 2, err
    assert want in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_all_files_without_a_file_spec_is_refused(world, tmp_path, capsys):
    code, _, err = audit_cli(capsys, world, tmp_path / "out", "--no-store", "--all-files", "--backends", "rtn:4")
    assert code == 2 and "--all-files goes with a file: spec" in err and len(err.strip().splitlines()) == 1, err
