"""The Hub ends, end to end against a local Hub-compatible server (tests/hubserver.py) with the real
huggingface_hub client: pull a pinned snapshot, audit, open the card pull request, rerun and update
the same pull request; the errors a user meets; offline use; a token that must never leak."""

import json
import os
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model
from hubaudit.cli import main
from hubserver import LocalHub, use_endpoint

TOKEN = "hf_test_Secret_token_do_not_leak_123"
CARD = """---
license: apache-2.0
base_model: org/original  # the model before unlearning
tags:
- unlearning
---

# org/unlearned

An unlearned model. This prose must survive byte for byte.
"""


def folder_files(folder: Path, prefix: str = "") -> dict:
    return {prefix + str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    m = make_random_model(root / "src" / "unlearned", seed=1)
    o = make_random_model(root / "src" / "original", seed=2)
    fs = make_forget_dir(root / "src" / "forget", ext=".parquet")
    with LocalHub(root / "server") as hub:
        hub.add_token(TOKEN, user="alice")
        files = folder_files(m)
        files["README.md"] = CARD.encode()
        files["original/consolidated.pth"] = os.urandom(2 << 20)  # never fetched: not needed for a causal LM
        hub.first_sha = hub.create_repo("org/unlearned", files=files)
        hub.create_repo("org/original", files=folder_files(o))
        # a dataset laid out as the Hub publishes MUSE: config/split-00000-of-00001.parquet
        ds = {k.replace(".parquet", "-00000-of-00001.parquet"): v for k, v in folder_files(fs).items()}
        hub.create_repo("muse-bench/MUSE-News", repo_type="dataset", files=ds)
        hub.create_repo("org/forget", repo_type="dataset", files=ds)
        gated = folder_files(m)
        hub.create_repo("org/gated", files=gated, gated=True)
        pickle_only = {k: v for k, v in folder_files(m).items() if not k.endswith(".safetensors")}
        pickle_only["pytorch_model.bin"] = b"\x80\x02not really"
        hub.create_repo("org/pickled", files=pickle_only)
        bert = dict(folder_files(m))
        cfg = json.loads(bert["config.json"])
        cfg["architectures"] = ["BertForMaskedLM"]
        bert["config.json"] = json.dumps(cfg).encode()
        hub.create_repo("org/encoder", files=bert)
        yield hub


@pytest.fixture()
def client(hub, tmp_path):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        yield tmp_path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_audit_pr_rerun_updates_the_same_pr(hub, client, capsys):
    tmp = client
    out, store = tmp / "out", tmp / "store.sqlite"
    base = ["audit", "org/unlearned", "--forget", "org/forget", "--out", out, "--store", store, "--quiet",
            "--token", TOKEN, "--card", "pr", "--metrics", "knowmem_f,knowmem_r",
            "--fail-on", "none"]  # random weights: the original knows nothing, so the verdict is incomplete
    code, stdout, stderr = run(capsys, *base, "--backends", "rtn:4")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    model = report["inputs"]["model"]
    assert model["sha"] == hub.first_sha and model["repo_id"] == "org/unlearned"
    assert model["identity"] == f"hub:org/unlearned@{hub.first_sha}"
    assert 0 < model["fetched_bytes"] < model["repo_bytes"] - (2 << 20)  # the 2 MiB .pth stayed on the Hub
    assert report["inputs"]["reference"]["repo_id"] == "org/original"  # from the card's base_model
    assert "base_model" in report["derived"]["reference_note"]
    prs = hub.pull_requests("org/unlearned")
    assert len(prs) == 1 and prs[0]["num"] == 1 and "Pull request opened" in stdout
    card = hub.file_at("org/unlearned", "README.md", revision="refs/pr/1").decode()
    assert card.startswith(CARD.split("---\n\n")[0])  # metadata kept, our entry added at its end
    assert "\n# org/unlearned\n\nAn unlearned model. This prose must survive byte for byte.\n" in card
    assert "## Quantization audit (hubaudit)" in card and hub.first_sha in card
    assert hub.file_at("org/unlearned", "README.md").decode() == CARD  # main untouched
    # the same pull request carries the results in the Hub's evaluation results format, which the Hub's
    # own parser reads (the test server refuses what huggingface_hub cannot parse)
    import yaml
    from huggingface_hub import parse_eval_result_entries

    evals = parse_eval_result_entries(yaml.safe_load(
        hub.file_at("org/unlearned", ".eval_results/hubaudit-org-forget.yaml", revision="refs/pr/1")))
    sha = report["inputs"]["forget"]["source"].rpartition("@")[2]
    assert {(e.dataset_id, e.dataset_revision) for e in evals} == {("org/forget", sha)}
    assert {e.task_id for e in evals} == {"knowmem_f", "knowmem_r"} and len(evals) == 2 * 2  # fp and rtn:4

    # rerun with one more spec: stored cells are reused, and the same pull request is updated
    code, stdout, stderr = run(capsys, *base, "--backends", "rtn:4,rtn:8")
    assert code == 0, stderr
    again = json.loads((out / "report.json").read_text())
    assert again["timings"]["reused_cells"] == 4 and again["timings"]["computed_cells"] == 2
    assert [p["num"] for p in hub.pull_requests("org/unlearned")] == [1] and "Pull request updated" in stdout
    card2 = hub.file_at("org/unlearned", "README.md", revision="refs/pr/1").decode()
    assert "`rtn:8`" in card2 and card2.count("## Quantization audit (hubaudit)") == 1

    # the card diff of the second run touches only our section and entry
    code, diff, _ = run(capsys, "card", "org/unlearned", "--report", out / "report.json", "--dry-run")
    assert code == 0 and "+## Quantization audit (hubaudit)" in diff
    removed = [l for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    assert removed == []  # against main: only additions

    # the token is nowhere: reports, cards, store, cache, captured output, the server's log
    for path in tmp.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in stdout + stderr + diff
    assert TOKEN not in json.dumps(hub.requests)


def test_muse_shorthand_reads_the_hub_layout(hub, client):
    from hubaudit.forget import load_forget_set

    fs = load_forget_set("muse-news")
    assert fs.name == "muse-news" and fs.auc_retrain == 0.4772
    assert fs.source.startswith("hub:muse-bench/MUSE-News@") and fs.sizes()["forget_qa"] == 12
    same = load_forget_set(make_forget_dir(client / "same"))
    from hubaudit.forget import PARTS

    assert all(getattr(fs, p) == getattr(same, p) for p in PARTS)  # shards read as the files they were


@pytest.mark.parametrize("model, extra, message", [
    ("org/missing", [], "'org/missing' not found on the Hub"),
    ("org/gated", [], "is gated"),
    ("org/unlearned@no-such-branch", [], "revision 'no-such-branch' not found"),
    ("org/pickled", [], "--allow-pickle"),
    ("org/encoder", [], "not a causal language model"),
    ("org/unlearned", ["--forget", "org/no-dataset"], "dataset 'org/no-dataset' not found"),
])
def test_hub_errors_are_one_line_exit_2(hub, client, capsys, model, extra, message):
    code, _, err = run(capsys, "audit", model, "--no-store", "--quiet", "--out", client / "o",
                       "--metrics", "knowmem_f", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_gated_with_a_granted_token_works(hub, client, capsys):
    hub.add_token("hf_reader_token_456", user="bob", can_read={"org/gated"})
    code, _, err = run(capsys, "audit", "org/gated", "--token", "hf_reader_token_456", "--no-store", "--quiet",
                       "--no-reference", "--forget", "org/forget", "--metrics", "knowmem_f", "--backends", "rtn:8",
                       "--out", client / "o")
    assert code == 0, err
    assert "hf_reader_token_456" not in err


def test_offline_with_a_filled_cache_and_with_an_empty_one(hub, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["audit", "org/unlearned", "--forget", "org/forget", "--no-reference", "--metrics", "knowmem_f",
            "--backends", "rtn:8", "--store", tmp_path / "s.sqlite", "--quiet", "--out", tmp_path / "o"]
    with use_endpoint(hub.endpoint, cache_dir=cache):
        assert run(capsys, *args)[0] == 0
    with use_endpoint(hub.endpoint, cache_dir=cache, offline=True):
        code, _, err = run(capsys, *args)
        assert code == 0, err
        assert json.loads((tmp_path / "o" / "report.json").read_text())["inputs"]["model"]["sha"] == hub.first_sha
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "empty", offline=True):
        code, _, err = run(capsys, *args)
        assert code == 2 and "not in the local cache" in err, err


def test_memory_check_refuses_before_loading(hub, client, capsys, monkeypatch):
    import hubaudit.modeling as modeling

    monkeypatch.setattr(modeling, "available_memory", lambda device: 1 << 20)
    code, _, err = run(capsys, "audit", "org/unlearned", "--no-reference", "--forget", "org/forget", "--no-store",
                       "--quiet", "--out", client / "o")
    assert code == 2 and "needs about" in err and "--no-memory-check" in err, err


def test_model_refs_are_read_by_what_is_written(tmp_path, monkeypatch):
    """A revision is split off before the path rules (refs/pr/1 is a revision, not a path); a folder is
    written as one (./x, /x, ~/x, x/, a Path); a Hub id never silently reads a folder of the same name."""
    from pathlib import Path

    from hubaudit.errors import ModelRefError
    from hubaudit.source import parse_model_ref

    ref = parse_model_ref("org/m@refs/pr/1")
    assert (ref.repo_id, ref.revision, ref.path) == ("org/m", "refs/pr/1", None)
    assert parse_model_ref("org/m").is_hub and parse_model_ref("gpt2@main").is_hub
    for folder in ("./org/m", "/abs/org/m", "~/m", "org/m/", "a/b/c"):
        assert not parse_model_ref(folder).is_hub, folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "m").mkdir(parents=True)
    with pytest.raises(ModelRefError, match=r"\./org/m"):
        parse_model_ref("org/m")
    assert not parse_model_ref(Path("org/m")).is_hub and not parse_model_ref("./org/m").is_hub
    assert parse_model_ref("org/m@main").is_hub  # with a revision it can only be the Hub
