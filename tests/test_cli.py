import json
import subprocess
import sys
import time

import pytest

from factories import make_forget_dir, write_rows
from hubaudit.cli import main


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_instant_and_imports_no_torch():
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hubaudit", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0 and "audit" in r.stdout and "demo" in r.stdout
    assert elapsed < 3, elapsed  # about 0.2 s here; generous for a loaded CI machine
    r = subprocess.run([sys.executable, "-c", "import sys, hubaudit.cli; print('torch' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "False"


def test_backends_lists_what_runs_here(capsys):
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0
    assert any(line.startswith("rtn") and " yes " in line for line in out.splitlines())
    assert "cast:bf16" in out


def _bad_model_dirs(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "noconfig").mkdir()
    pickle_only = tmp_path / "pickle_only"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80\x02")
    return {"missing": tmp_path / "missing", "file": tmp_path / "afile", "noconfig": tmp_path / "noconfig",
            "pickle": pickle_only}


@pytest.mark.parametrize("case, extra, message", [
    ("missing", [], "not found"),
    ("file", [], "is a file"),
    ("noconfig", [], "no config.json"),
    ("pickle", [], "--allow-pickle"),
    ("good", ["--attacks", "rtn:4,gptqq:4"], "unknown attack 'gptqq'"),
    ("good", ["--attacks", "prnue:0.2"], "unknown attack 'prnue'; did you mean 'prune'?"),
    ("good", ["--backends", "rtn:12"], "from 2 to 8"),  # the older name of --attacks
    ("good", ["--forget", "nowhere"], "forget set 'nowhere' not found"),
    ("good", ["--forget", "BADFIELD"], "item 1 has no 'gt' field"),
    ("good", ["--metrics", "verbmem,bleu"], "unknown metric 'bleu'"),
    ("good", ["--threshold", "-1"], "--threshold"),
    ("good", ["--alpha", "1.5"], "--alpha must be between 0 and 1"),
    ("good", ["--alpha", "0"], "--alpha must be between 0 and 1"),
    ("good", ["--fail-on", "fragil"], "--fail-on: unknown label fragil"),
    ("good", ["--auc-retrain", "2"], "--auc-retrain"),
    ("good", ["--batch-size", "0"], "--batch-size"),
    ("good", ["--out", "OUTFILE"], "is a file"),
    ("good", ["--reference", "MISSING"], "not found"),
])
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, random_world, case, extra, message):
    dirs = _bad_model_dirs(tmp_path)
    model = random_world["model"] if case == "good" else dirs[case]
    bad_forget = make_forget_dir(tmp_path / "badforget")
    write_rows(bad_forget / "verbmem" / "forget.json", [{"prompt": "p"}])
    (tmp_path / "outfile").write_text("mine")
    subst = {"BADFIELD": bad_forget, "OUTFILE": tmp_path / "outfile", "MISSING": tmp_path / "missing"}
    extra = [subst.get(x, x) for x in extra]
    if "--forget" not in extra:
        extra += ["--forget", random_world["forget"]]
    code, out, err = run_cli(capsys, "audit", model, "--no-store", "--quiet", "--out", tmp_path / "o", *extra)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubaudit: error: ") and message in lines[0], err
    assert (tmp_path / "outfile").read_text() == "mine"


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["audit"])
    assert e.value.code == 2
    assert main([]) == 2


def test_audit_writes_reports_and_exit_codes(capsys, tmp_path, tiny_world):
    out = tmp_path / "out"
    args = ["audit", tiny_world.unlearned, "--reference", tiny_world.target, "--forget", tiny_world.forget_dir,
            "--backends", "rtn:8,rtn:2", "--store", tmp_path / "s.sqlite", "--out", out, "--quiet"]
    code, stdout, _ = run_cli(capsys, *args)
    report = json.loads((out / "report.json").read_text())
    label = report["verdict"]["label"]
    assert label in ("not-unlearned", "fragile", "robust", "inconclusive")
    assert code == (1 if label == "fragile" else 0)  # the default gate: --fail-on fragile
    assert "| rtn:2 |" in stdout and (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[95% CI]" in stdout and "p (Holm)" in stdout and " ± " in stdout  # every figure with its uncertainty
    # a gate on the label it got fails; none never does
    code, _, _ = run_cli(capsys, *args, "--fail-on", f"{label},robust")
    assert code == 1
    code, _, _ = run_cli(capsys, *args, "--fail-on", "none")
    assert code == 0
    assert (out / "history").is_dir()  # the first run's reports were kept


def test_incomplete_never_passes_a_gate(capsys, tmp_path, random_world, monkeypatch):
    """Every quantized cell erroring: verdict incomplete, exit 3 under any gate, with a line saying why;
    only --fail-on none lets it pass."""
    import hubaudit.quant.rtn as rtn

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(rtn.RTNBackend, "apply", broken)
    args = ["audit", random_world["model"], "--no-reference", "--forget", random_world["forget"], "--metrics",
            "knowmem_f", "--backends", "rtn:4", "--store", tmp_path / "s.sqlite", "--out", tmp_path / "o", "--quiet"]
    code, out, err = run_cli(capsys, *args)
    assert code == 3 and "no quantized cell could be evaluated" in err and "gate cannot pass" in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["verdict"]["label"] == "incomplete" and "kernel exploded" in out
    code, _, _ = run_cli(capsys, *args, "--fail-on", "none")
    assert code == 0


def test_damaged_store_is_a_user_error_and_bugs_exit_70(capsys, tmp_path, random_world, monkeypatch):
    bad = tmp_path / "results.sqlite"
    bad.write_bytes(b"this is not a database, it is a damaged file" * 100)
    code, out, err = run_cli(capsys, "audit", random_world["model"], "--forget", random_world["forget"], "--store", bad,
                             "--quiet", "--out", tmp_path / "o", "--no-reference")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "results store" in err and "--no-store" in err
    def bug(*a, **k):
        raise KeyError("an internal slip")

    monkeypatch.setattr(sys.modules["hubaudit.audit"], "audit", bug)
    code, out, err = run_cli(capsys, "audit", random_world["model"], "--quiet", "--out", tmp_path / "o")
    assert code == 70 and err.startswith("hubaudit: internal error: KeyError") and len(err.strip().splitlines()) == 1
