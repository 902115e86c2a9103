"""Reproductions of the second hardening review (issue 27), each attack as it was seen: a stranger's card
naming the operator's private or local model, figures published with generated text or local paths."""

import json
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model
from hubaudit.cli import main
from hubserver import LocalHub, use_endpoint

TOKEN = "hf_operator_Secret_token_never_sent_for_a_card_77"
PRIVATE = "victim/private-model"


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def card(base: str) -> bytes:
    return f"---\nbase_model: {base}\ntags:\n- unlearning\n---\n\n# a stranger's model\n".encode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening_hub")
    victim = make_random_model(root / "src" / "victim", seed=3)
    local = make_random_model(root / "operator" / "local-original", seed=4)
    stranger = folder_files(make_random_model(root / "src" / "stranger", seed=5))
    with LocalHub(root / "server") as hub:
        # the operator's token may read the victim's private model (a colleague's, a client's)
        hub.add_token(TOKEN, user="alice", can_read=[PRIVATE])
        hub.create_repo(PRIVATE, files=folder_files(victim), private=True)
        hub.create_repo("stranger/privref", files={**stranger, "README.md": card(PRIVATE)})
        hub.create_repo("stranger/localref", files={**stranger, "README.md": card(str(local))})
        hub.local_model = local
        hub.forget = make_forget_dir(root / "forget", n=6)
        yield hub


def _private_requests(hub):
    return [r for r in hub.requests if PRIVATE in r["path"]]


def test_a_cards_private_base_model_is_never_opened_with_the_operators_token(hub, tmp_path, capsys):
    out = tmp_path / "out"
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        hub.requests.clear()
        code = main(["audit", "stranger/privref", "--token", TOKEN, "--card", "pr", "--forget", str(hub.forget),
                     "--metrics", "knowmem_f,knowmem_r", "--backends", "rtn:4", "--out", str(out), "--no-store",
                     "--quiet"])
        captured = capsys.readouterr()
    assert code in (0, 3), captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["reference"] is None and not any(c["role"] == "reference" for c in report["cells"])
    note = report["derived"]["reference_note"]
    assert "public Hub model" in note and "--reference" in note and "\n" not in note
    # asked for as an anonymous visitor, never with the token; nothing of it was downloaded
    assert _private_requests(hub) and all(r["user"] is None for r in _private_requests(hub))
    assert not any("/resolve/" in r["path"] for r in _private_requests(hub))
    assert not list((tmp_path / "cache").glob("models--victim--private-model"))
    # the pull request on the stranger's repository names nothing of the private model
    pr_card = hub.file_at("stranger/privref", "README.md", revision="refs/pr/1").decode()
    assert "## Quantization audit (hubaudit)" in pr_card and "against the original model" not in pr_card


def test_a_cards_base_model_is_refused_offline_even_when_cached(hub, tmp_path, capsys, monkeypatch):
    """The operator downloaded the private model once; offline, a card naming it must still not open it."""
    from hubaudit.source import card_reference, fetch_model, parse_model_ref

    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        fetch_model(parse_model_ref(PRIVATE), token=TOKEN)  # in the cache now
        import huggingface_hub.constants as hc

        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
        ref, _ = card_reference({"base_model": PRIVATE})
        from hubaudit.errors import HubauditError

        with pytest.raises(HubauditError, match="public Hub model"):
            fetch_model(ref, token=TOKEN)


@pytest.mark.parametrize("base", ["/abs/path/model", "./rel/model", "~/model", "a/b/c", "C:\\models\\x", "org/x @main"])
def test_a_local_path_in_base_model_is_not_a_reference(base):
    from hubaudit.source import card_reference

    ref, note = card_reference({"base_model": base})
    assert ref is None and "--reference" in note and base not in note


def test_a_cards_local_base_model_is_never_loaded_nor_published(hub, tmp_path, capsys, monkeypatch):
    import hubaudit.modeling as modeling

    opened = []
    real = modeling.ModelSource.__init__

    def spy(self, path, *a, **kw):
        opened.append(str(path))
        return real(self, path, *a, **kw)

    monkeypatch.setattr(modeling.ModelSource, "__init__", spy)
    out = tmp_path / "out"
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        code = main(["audit", "stranger/localref", "--token", TOKEN, "--forget", str(hub.forget), "--metrics",
                     "knowmem_f", "--backends", "rtn:4", "--out", str(out), "--no-store", "--quiet"])
    assert code in (0, 3), capsys.readouterr().err
    assert not any(str(hub.local_model) in p for p in opened)
    text = (out / "report.json").read_text()
    assert str(hub.local_model) not in text and json.loads(text)["inputs"]["reference"] is None


@pytest.mark.slow
def test_a_sweep_never_opens_a_cards_private_base_model_and_publishes_no_text_nor_path(hub, tmp_path, capsys):
    from hubaudit.sweep import sweep

    out = tmp_path / "out"
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        hub.requests.clear()
        res = sweep(search="tag=unlearning,author=stranger", forget=str(hub.forget), specs="rtn:4", out=out,
                    store=tmp_path / "s.sqlite", use_ray=False, token=TOKEN, progress=False,
                    metrics="verbmem_f,knowmem_f")
        assert {r.model.split("@")[0] for r in res.rows} == {"stranger/privref", "stranger/localref"}
        plan = json.loads((out / "sweep.json").read_text())
        assert {m["reference"] for m in plan["models"]} == {None}
        assert all(r["user"] is None for r in _private_requests(hub))
        assert main(["leaderboard", "publish", "--repo", "alice/board", "--out", str(out), "--token", TOKEN]) == 0
        capsys.readouterr()
        files = hub.list_files("alice/board", repo_type="dataset")
        published = {f: hub.file_at("alice/board", f, repo_type="dataset") for f in files if f.endswith((".json", ".md"))}
    reports = [json.loads(v) for f, v in published.items() if f.endswith("report.json")]
    assert len(reports) == 2
    for rep in reports:  # per-item numbers stay, generated text goes
        items = [r for c in rep["cells"] for rows in c["items"].values() for r in rows]
        assert items and all("score" in r and "output" not in r for r in items)
        assert "store" not in rep["inputs"] and "path" not in rep["inputs"]["model"]
    local = json.loads((out / "reports" / Path(res.rows[0].report_dir).name / "report.json").read_text())
    outputs = {r["output"] for c in local["cells"] for rows in c["items"].values() for r in rows if r.get("output")}
    assert outputs  # the local report keeps them
    for f, blob in published.items():
        text = blob.decode()
        assert str(tmp_path) not in text and str(hub.forget) not in text, f
        assert not any(o in text for o in outputs if len(o) > 12), f


# -- a verdict on nothing real ----------------------------------------------------------------------------
def _no_torchao(monkeypatch):
    import hubaudit.quant.torchao_backend as tao

    monkeypatch.setattr(tao.TorchAOBackend, "unavailable_reason", lambda self: "torchao's int4 needs a CUDA GPU here")


def test_float_cast_and_an_int4_that_cannot_run_is_incomplete_not_robust(random_world, tmp_path, capsys, monkeypatch):
    _no_torchao(monkeypatch)
    out = tmp_path / "o"
    code = main(["audit", str(random_world["model"]), "--no-reference", "--forget", str(random_world["forget"]),
                 "--metrics", "knowmem_f", "--backends", "cast:bf16,torchao:int4", "--no-store", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    assert code == 3 and verdict["label"] == "incomplete", err
    assert "torchao:int4 (skipped: torchao's int4 needs a CUDA GPU here)" in verdict["summary"]


def test_a_cell_that_could_not_run_is_named_beside_a_verdict(random_world, monkeypatch):
    import hubaudit

    _no_torchao(monkeypatch)
    report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"],
                            specs="rtn:4,torchao:int4", metrics="knowmem_f", store=False, progress=False)
    assert report.verdict.label != "incomplete"
    assert "not evaluated: torchao:int4 (skipped" in report.verdict.summary


def _weights_only(folder: Path, src: Path, keep) -> Path:
    """A copy of model ``src`` whose safetensors holds only the tensors ``keep`` picks."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if keep(k)}, folder / "model.safetensors")
    return folder


def test_a_checkpoint_holding_only_the_final_norm_is_refused_before_loading(random_world, tmp_path, capsys,
                                                                             monkeypatch):
    import transformers

    loaded = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loaded.append(a) or 1 / 0))
    model = _weights_only(tmp_path / "norm-only", random_world["model"], lambda k: k == "model.norm.weight")
    code = main(["audit", str(model), "--no-reference", "--forget", str(random_world["forget"]), "--metrics",
                 "knowmem_f", "--backends", "rtn:4", "--no-store", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing" in err and "declares" in err, err
    assert loaded == []


def test_a_tiny_file_whose_config_declares_a_large_model_is_refused_with_bounded_memory(random_world, tmp_path,
                                                                                          capsys):
    import resource

    model = _weights_only(tmp_path / "big-config", random_world["model"], lambda k: "norm" in k)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               num_key_value_heads=12, vocab_size=32000)  # about 113M parameters declared, a few KB on disk
    (model / "config.json").write_text(json.dumps(cfg))
    assert (model / "model.safetensors").stat().st_size < 8192
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = main(["audit", str(model), "--no-reference", "--forget", str(random_world["forget"]), "--metrics",
                 "knowmem_f", "--backends", "rtn:4", "--no-store", "--quiet"])
    err = capsys.readouterr().err.strip()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert code == 2 and len(err.splitlines()) == 1 and "declares" in err, err
    assert grown_mib < 200  # the 113M random parameters (430 MB in float32) were never allocated


def test_a_complete_checkpoint_passes_the_weight_check(random_world):
    from hubaudit.weights import check_weights

    check_weights(random_world["model"], "model")  # nothing raised: every tensor present


# -- hostile GGUF files -------------------------------------------------------------------------------------
def _gguf(n_tensors: int, kvs: bytes, n_kv: int, tail: bytes = b"") -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tail


def _key(name: str) -> bytes:
    import struct

    return struct.pack("<Q", len(name)) + name.encode()


def _hostile(kind: str) -> bytes:
    import struct

    if kind == "huge-array":  # 114 bytes declaring 2^40 one-byte items
        return _gguf(0, _key("general.x") + struct.pack("<IIQ", 9, 0, 1 << 40), 1).ljust(114, b"\0")
    if kind == "million-empty-tokens":
        return _gguf(0, _key("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 1_000_000) + b"\0" * 8_000_000, 1)
    if kind == "100k-empty-tokens":  # fewer than any cap on its own, far more than the audited model's vocabulary
        return _gguf(0, _key("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 100_000) + b"\0" * 800_000, 1)
    if kind == "tensor-count":
        return _gguf(1 << 40, b"", 0).ljust(114, b"\0")
    if kind == "empty":
        return b""
    if kind == "nested":
        return _gguf(0, _key("general.x") + struct.pack("<IIQ", 9, 9, 2) + struct.pack("<IQ", 0, 1) * 2 + b"\0\0", 1)
    if kind == "tensor-beyond-end":
        tensor = _key("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 64, 1 << 20) + struct.pack("<IQ", 0, 0)
        return _gguf(1, b"", 0, tensor).ljust(256, b"\0")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["huge-array", "million-empty-tokens", "100k-empty-tokens", "tensor-count", "empty",
                                  "nested", "tensor-beyond-end"])
def test_a_hostile_gguf_is_a_one_line_user_error_fast_and_small(random_world, tmp_path, capsys, kind):
    import resource
    import time

    path = tmp_path / "hostile.gguf"
    path.write_bytes(_hostile(kind))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    code = main(["audit", str(random_world["model"]), "--no-reference", "--forget", str(random_world["forget"]),
                 "--metrics", "knowmem_f", "--backends", f"file:{path}", "--no-store", "--quiet"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert code == 2 and len(err.splitlines()) == 1 and "not a usable GGUF file" in err, err
    assert seconds < 10 and grown_mib < 200, (seconds, grown_mib)


def test_a_gguf_written_by_gguf_py_passes_the_layout_check(random_world, tmp_path):
    from hubaudit.modeling import ModelSource
    from hubaudit.quant.gguf_backend import write_gguf
    from hubaudit.quant.gguf_check import check_gguf_layout

    src = ModelSource(random_world["model"], device="cpu")
    write_gguf(src.model, src.tokenizer, tmp_path / "m.gguf", "Q8_0")
    check_gguf_layout(tmp_path / "m.gguf")


# -- the Action's cache and tokens --------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "saved login", "none"])
def test_the_action_never_caches_weights_when_huggingface_hub_would_find_a_token(random_world, tmp_path, monkeypatch,
                                                                                 how):
    import huggingface_hub.constants as hc

    from hubaudit import action

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    token_file = tmp_path / "hf_home" / "token"
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(token_file))
    if how == "saved login":
        token_file.parent.mkdir()
        token_file.write_text(TOKEN)
    elif how != "none":
        monkeypatch.setenv(how, TOKEN)
    monkeypatch.setenv("INPUT_MODEL", str(random_world["model"]))
    outputs = tmp_path / "out.txt"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    assert action.cmd_resolve() == 0
    got = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    if how == "none":
        assert got["hf-cache"] and "store-only-" not in got["cache-key"]
    else:
        assert got["hf-cache"] == "" and "store-only-" in got["cache-key"]
    assert TOKEN not in outputs.read_text()


# -- a local Ray listens on the loopback only ---------------------------------------------------------------
@pytest.mark.slow
def test_a_local_ray_listens_on_the_loopback_only():
    pytest.importorskip("ray", reason="the sweep extra (pip install 'hubaudit[sweep]')")
    import ipaddress

    import psutil

    from hubaudit.sweep import _start_ray

    ray, started = _start_ray(None, 1)
    assert started
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # workers reach it
        me = psutil.Process()
        listening = []
        for p in [me, *me.children(recursive=True)]:
            try:
                listening += [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
    finally:
        ray.shutdown()
    assert listening
    for ip in listening:
        addr = ipaddress.ip_address(ip)
        addr = getattr(addr, "ipv4_mapped", None) or addr
        assert addr.is_loopback, listening


# -- Hub forget sets pinned and size-checked; one item's length capped ---------------------------------------
def test_a_hub_forget_set_is_size_checked_at_its_pinned_commit_before_download(tmp_path, monkeypatch):
    from hubaudit.errors import HubError
    from hubaudit.forget import load_forget_set

    small = make_forget_dir(tmp_path / "small", n=4)
    with LocalHub(tmp_path / "server") as hub:
        sha = hub.create_repo("org/fs", repo_type="dataset", files=folder_files(small))
        monkeypatch.setenv("HUBAUDIT_MAX_DATASET_BYTES", str(1 << 20))
        # after the check, a push makes the set 8 MB: the pinned commit is what is downloaded
        hub.commit("org/fs", {"privleak/holdout.json": json.dumps([{"text": "x" * 1000}] * 8000).encode()},
                   repo_type="dataset")
        with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
            fs = load_forget_set(f"org/fs@{sha}")
            assert fs.source == f"hub:org/fs@{sha}"
            hub.requests.clear()
            with pytest.raises(HubError, match="at most 1.0 MiB"):
                load_forget_set("org/fs")
            assert not any("/resolve/" in r["path"] for r in hub.requests)  # refused before any file came down


def test_one_very_long_item_is_a_clear_cli_error(random_world, tmp_path, capsys, monkeypatch):
    import shutil

    forget = tmp_path / "forget"
    shutil.copytree(random_world["forget"], forget)
    monkeypatch.setenv("HUBAUDIT_MAX_ITEM_CHARS", "5000")
    (forget / "privleak").mkdir(exist_ok=True)
    (forget / "privleak" / "forget.json").write_text(json.dumps([{"text": "word " * 2000}]))
    code = main(["audit", str(random_world["model"]), "--no-reference", "--forget", str(forget), "--backends", "rtn:4",
                 "--no-store", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "10,000 characters" in err and "at most 5,000" in err, err


# -- cards: markers, names, BOM, deep YAML -------------------------------------------------------------------
def _report(random_world, forget_name=None):
    import hubaudit

    report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs="rtn:4",
                            metrics="knowmem_f", store=False, progress=False)
    if forget_name is not None:
        report.inputs["forget"]["name"] = forget_name
    return report


@pytest.fixture(scope="module")
def small_report(random_world):
    return _report(random_world)


@pytest.mark.parametrize("example", [
    "````markdown\n```\n<!-- hubaudit:start -->\nexample\n<!-- hubaudit:end -->\n```\n````\n",
    "    <!-- hubaudit:start -->\n    example\n    <!-- hubaudit:end -->\n",
    "Write `<!-- hubaudit:start -->` and `<!-- hubaudit:end -->` around it.\n",
])
def test_markers_in_someone_elses_code_are_kept(small_report, example):
    from hubaudit.card import update_card

    card = "---\nlicense: mit\n---\n\n# Model\n\nAn example:\n\n" + example + "\nThe end.\n"
    new = update_card(card, small_report)
    assert example in new and "The end.\n" in new  # their text kept byte for byte
    assert new.count("## Quantization audit (hubaudit)") == 1
    assert update_card(new, small_report) == new  # and ours found again on the next run


def test_a_hub_forget_set_name_cannot_inject_markdown_or_markers(random_world):
    from hubaudit.card import render_section

    section = render_section(_report(random_world, "x` ![t](https://evil.example/t.png)\n<!-- hubaudit:end -->"))
    line = next(l for l in section.splitlines() if "forget set" in l)
    assert line.count("`") % 2 == 0 and "`x' ![t](https://evil.example/t.png) <! --" in line
    assert section.count("<!-- hubaudit:end -->") == 1


def test_a_bom_keeps_the_front_matter_where_it_is(small_report):
    from hubaudit.card import update_card
    from hubaudit.cardmeta import read_metadata

    card = "\ufeff---\nlicense: mit\nbase_model: org/x\n---\n\n# Model\n"
    new = update_card(card, small_report)
    assert new.startswith("\ufeff---\nlicense: mit\n") and new.count("---\n") == 2
    assert read_metadata(new)["base_model"] == "org/x"


def test_a_deeply_nested_card_is_ignored_with_a_warning_not_a_crash(random_world, tmp_path, capsys, caplog):
    import shutil

    model = tmp_path / "nested"
    shutil.copytree(random_world["model"], model)
    (model / "README.md").write_text("---\nbase_model: " + "[" * 2000 + "]" * 2000 + "\n---\n\n# x\n")
    code = main(["audit", str(model), "--forget", str(random_world["forget"]), "--metrics", "knowmem_f",
                 "--backends", "rtn:4", "--no-store", "--quiet", "--fail-on", "none"])
    err = capsys.readouterr().err
    assert code == 0 and "nested more than" in caplog.text, err


def test_a_newer_store_is_refused_before_it_is_modified(tmp_path):
    import hashlib
    import sqlite3

    from hubaudit.errors import StoreError
    from hubaudit.store import STORE_VERSION, ResultStore

    path = tmp_path / "newer.sqlite"
    with sqlite3.connect(path) as c:  # a future store: another table layout, a higher version
        c.execute("CREATE TABLE future (x)")
        c.execute(f"PRAGMA user_version = {STORE_VERSION + 1}")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="newer hubaudit"):
        ResultStore(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("limit", ["99999999999999999999999", "0", "²"])
def test_a_huge_search_limit_is_a_one_line_error(capsys, tmp_path, limit):
    code = main(["sweep", "--search", f"tag=unlearning,limit={limit}", "--no-ray", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "limit must be a number from 1 to" in err, err


def test_a_cell_that_could_not_run_is_named_without_local_paths(random_world, monkeypatch):
    import hubaudit
    import hubaudit.quant.rtn as rtn

    def broken(*a, **k):
        raise FileNotFoundError("/home/operator/secret-models/kernel.so is missing")

    monkeypatch.setattr(rtn.RTNBackend, "apply", broken)
    report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"],
                            specs="rtn:8,prune:0.1", metrics="knowmem_f", store=False, progress=False)
    assert "rtn:8 (error: FileNotFoundError: <path> is missing)" in report.verdict.summary
    assert "/home/operator" not in report.verdict.summary


def test_a_checkpoint_with_many_tensors_its_config_lacks_is_refused(random_world, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from hubaudit.errors import ModelLoadError
    from hubaudit.weights import check_weights

    model = tmp_path / "extra"
    shutil.copytree(random_world["model"], model)
    tensors = load_file(model / "model.safetensors")
    tensors["vision_tower.blocks.0.weight"] = torch.zeros(sum(t.numel() for t in tensors.values()) // 10)
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(ModelLoadError, match="tensors its config's architecture does not have"):
        check_weights(model, "extra")


@pytest.mark.parametrize("model_type, extra", [("llama", {"tie_word_embeddings": True}), ("gpt_neox", {}),
                                               ("mixtral", {"num_local_experts": 2}), ("gpt2", {})])
def test_renamed_tied_or_fused_checkpoints_pass_the_weight_check(tmp_path, model_type, extra):
    """transformers renames (GPT-NeoX's embed_out), fuses (Mixtral's experts) or ties (lm_head) some tensors
    when it loads them: a complete checkpoint of each passes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubaudit.weights import check_weights

    kw = (dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256) if model_type == "gpt2" else
          dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=256, **extra))
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).save_pretrained(tmp_path / model_type)
    check_weights(tmp_path / model_type, model_type)


def test_a_second_weights_file_transformers_never_reads_is_not_counted(random_world, tmp_path):
    """Mistral's repositories hold consolidated.safetensors beside model.safetensors: transformers reads only
    the latter, and so does the check."""
    import shutil

    from hubaudit.weights import check_weights

    model = tmp_path / "with-consolidated"
    shutil.copytree(random_world["model"], model)
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")  # the same weights under Mistral's own names
    save_file({k.replace("model.", "mistral."): v for k, v in tensors.items()}, model / "consolidated.safetensors")
    check_weights(model, "with-consolidated")
