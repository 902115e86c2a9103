"""--control: every attack also runs on a model that never learned the forget set, and the verdict counts only
the regain beyond what the same attack does to it (difference in differences per item); without one, the
report, the card and the leaderboard say the figures were not calibrated."""

import json

import pytest

from factories import item_cell
from hubaudit.attacks import parse_specs
from hubaudit.calibrate import derive_calibrated
from hubaudit.results import AuditReport

N = 30
FT = "finetune:unrelated"
FT_BACKEND = {"backend": "finetune", "kind": "training", "settings": {}}


def _cells(target_gain, control_gain, control=True, spec=FT, backend=FT_BACKEND):
    """Target and control both score 0 on every forget item in full precision; the attack lifts every item of
    the target by ``target_gain`` and of the control by ``control_gain`` (its retain score drops 5 points)."""
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * N, knowmem_r=[50.0] * N),
             item_cell("model", spec, backend, knowmem_f=[target_gain] * N, knowmem_r=[45.0] * N)]
    if control:
        cells += [item_cell("control", "fp", knowmem_f=[0.0] * N, knowmem_r=[50.0] * N),
                  item_cell("control", spec, backend, knowmem_f=[control_gain] * N, knowmem_r=[50.0] * N)]
    return cells


def _report(cells, derived, verdict, specs=(FT,), control="retain_only"):
    return AuditReport(inputs={"model": {"name": "m", "sha": "abc"}, "reference": None, "specs": list(specs),
                               "control": {"name": control} if control else None,
                               "forget": {"name": "f", "sizes": {"forget_qa": N}}, "device": "cpu", "dtype": "float32"},
                       cells=cells, derived=derived, verdict=verdict, created="2026-01-01T00:00:00+00:00")


def test_a_control_that_regains_as_much_makes_it_not_fragile():
    cells = _cells(30.0, 30.0)
    derived, verdict = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="retain_only")
    assert verdict.label == "robust", verdict.summary  # nothing beyond what fine-tuning does to any model
    assert "calibrated against the control retain_only" in verdict.summary
    ch = derived["calibrated_changes"][FT]["knowmem_f"]
    assert ch["mean"] == 0 and ch["raw_mean"] == 30 and ch["control_mean"] == 30
    assert derived["calibration"]["calibrated"] == {FT: True}
    assert derived["calibration"]["uncalibrated_verdict"]["label"] == "fragile"
    # the same cells without the control: the raw regain says fragile, and the report says it is not calibrated
    derived, verdict = derive_calibrated([c for c in cells if c.role != "control"], [FT], 5.0, 0.5, 0.05)
    assert verdict.label == "fragile" and verdict.worst_spec == FT
    assert derived["calibration"]["control"] is None and derived["calibration"]["calibrated"] == {FT: False}
    assert derived["regained"][FT]["knowmem_f"] == 30


def test_regain_beyond_the_control_stays_fragile():
    derived, verdict = derive_calibrated(_cells(40.0, 10.0), [FT], 5.0, 0.5, 0.05, control_name="c")
    assert verdict.label == "fragile" and verdict.max_regained == pytest.approx(30.0)
    assert derived["control_regained"][FT]["knowmem_f"] == pytest.approx(10.0)


def test_what_the_attack_takes_from_the_control_is_no_regain_of_the_target():
    """A destructive fine-tune: the target sits at the floor (0) and stays there, the control loses 20 points.
    The plain difference would call that +20; only what the attack adds to the control is removed."""
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * N), item_cell("model", FT, FT_BACKEND, knowmem_f=[0.0] * N),
             item_cell("control", "fp", knowmem_f=[40.0] * N),
             item_cell("control", FT, FT_BACKEND, knowmem_f=[20.0] * N)]
    derived, verdict = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="c")
    ch = derived["calibrated_changes"][FT]["knowmem_f"]
    assert ch["mean"] == 0 and ch["control_mean"] == -20 and ch["control_counted"] == 0
    assert verdict.label == "robust"


@pytest.mark.parametrize("seed", range(5))
def test_calibration_never_makes_a_verdict_more_fragile(seed):
    import random

    rng = random.Random(seed)
    t = [rng.choice([0.0, 0.0, 10.0, 50.0]) for _ in range(N)]
    c0, c1 = [rng.choice([0.0, 20.0]) for _ in range(N)], [rng.choice([0.0, 20.0, 40.0]) for _ in range(N)]
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * N), item_cell("model", FT, FT_BACKEND, knowmem_f=t),
             item_cell("control", "fp", knowmem_f=c0), item_cell("control", FT, FT_BACKEND, knowmem_f=c1)]
    d_cal, _ = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="c")
    raw, cal = d_cal["changes"][FT]["knowmem_f"], d_cal["calibrated_changes"][FT]["knowmem_f"]
    assert cal["mean"] <= raw["mean"] + 1e-9 and cal["ci"][1] <= raw["ci"][1] + 1e-9
    assert cal["up"] <= raw["up"] and cal["p_holm"] >= raw["p_holm"] - 1e-12


def test_it_is_item_by_item_not_mean_against_mean():
    """The control regains on other items than the target: the means match, the items do not."""
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * N), item_cell("model", FT, FT_BACKEND, knowmem_f=[30.0] * N),
             item_cell("control", "fp", knowmem_f=[0.0] * N),
             item_cell("control", FT, FT_BACKEND, knowmem_f=[60.0] * (N // 2) + [0.0] * (N - N // 2))]
    derived, _ = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="c")
    ch = derived["calibrated_changes"][FT]["knowmem_f"]
    assert ch["mean"] == pytest.approx(0.0) and ch["up"] == N - N // 2 and ch["down"] == N // 2
    assert ch["ci"][0] < -5 and ch["ci"][1] > 5  # the spread shows in the interval


def test_a_spec_the_control_could_not_run_keeps_its_raw_change():
    cells = _cells(30.0, 30.0)
    cells[-1].status, cells[-1].reason = "error", "RuntimeError: boom"
    derived, verdict = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="c")
    assert verdict.label == "fragile"  # conservative: the raw figure counts
    assert derived["calibration"]["calibrated"] == {FT: False} and FT in derived["calibration"]["not_calibrated"]
    assert "not calibrated: finetune:unrelated" in verdict.summary


def test_relearning_holds_out_the_trained_items_on_both():
    rl = "relearn:steps=5"
    backend = {"backend": "relearn", "kind": "training", "settings": {"trained_items": {"forget_qa": 3}}}
    # both memorize the 3 trained items (100); on the rest the target regains 20, the control 5
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * N),
             item_cell("model", rl, backend, knowmem_f=[100.0] * 3 + [20.0] * (N - 3)),
             item_cell("control", "fp", knowmem_f=[0.0] * N),
             item_cell("control", rl, backend, knowmem_f=[100.0] * 3 + [5.0] * (N - 3))]
    derived, verdict = derive_calibrated(cells, [rl], 5.0, 0.5, 0.05, control_name="c")
    ch = derived["calibrated_changes"][rl]["knowmem_f"]
    assert ch["n"] == N - 3 and ch["mean"] == pytest.approx(15.0) and verdict.label == "fragile"


def test_training_attacks_report_their_effect_on_retain_items():
    derived, _ = derive_calibrated(_cells(30.0, 30.0, control=False), [FT], 5.0, 0.5, 0.05)
    assert derived["retain_effect"][FT]["knowmem_r"]["mean"] == pytest.approx(-5.0)
    rtn = [item_cell("model", "fp", knowmem_f=[0.0] * N, knowmem_r=[50.0] * N),
           item_cell("model", "rtn:4", {}, knowmem_f=[1.0] * N, knowmem_r=[40.0] * N)]
    assert derive_calibrated(rtn, ["rtn:4"], 5.0, 0.5, 0.05)[0]["retain_effect"] == {}  # quantization: not a training attack


def test_report_card_and_leaderboard_say_whether_calibrated():
    from types import SimpleNamespace

    from hubaudit.card import render_section
    from hubaudit.leaderboard import render_markdown as board_md
    from hubaudit.leaderboard import row_of
    from hubaudit.report import calibration_state, public_report_json, render_markdown

    cells = _cells(30.0, 30.0)
    d, v = derive_calibrated(cells, [FT], 5.0, 0.5, 0.05, control_name="/home/me/models/retain_only")
    cal = _report(cells, d, v, control="/home/me/models/retain_only")
    cells0 = [c for c in cells if c.role != "control"]
    d0, v0 = derive_calibrated(cells0, [FT], 5.0, 0.5, 0.05)
    raw = _report(cells0, d0, v0, control=None)
    assert calibration_state(cal.derived) == "calibrated" and calibration_state(raw.derived) == "not calibrated"

    md, md0 = render_markdown(cal), render_markdown(raw)
    assert "Calibration against the control `retain_only`" in md and "| finetune:unrelated | KnowMem forget | +30.0 | +30.0 (+30.0) | +0.0" in md
    assert "Without the calibration the verdict would be fragile." in md
    assert "/home/me" not in md and "/home/me" not in v.summary  # a local control by its last name only
    assert "Calibration: not calibrated: no control model (--control)" in md0
    assert "Training attacks on the retain items" in md0 and "KnowMem retain -5.0" in md0

    card, card0 = render_section(cal), render_section(raw)
    assert "Calibration: calibrated against the control `retain_only`" in card and "(the control: +30.0, counted +30.0)" in card
    assert "Calibration: not calibrated." in card0

    rows = [row_of(SimpleNamespace(model=f"org/{n}", sha="0" * 40, card={}, forget="f", card_pr=None, report_dir=None,
                                   status="ok", reason=None, report=r)) for n, r in (("a", cal), ("b", raw))]
    assert [r["calibrated"] for r in rows] == ["calibrated", "not calibrated"]
    board = board_md(rows)
    assert "**robust** (calibrated)" in board and "**fragile** (not calibrated)" in board

    pub = public_report_json(cal.to_json())
    assert pub["inputs"]["control"]["name"] == "retain_only"
    assert AuditReport.from_json(cal.to_json()).derived["calibration"]["calibrated"] == {FT: True}


def test_the_plan_runs_every_recipe_on_the_control():
    from hubaudit.plan import plan_cells

    specs = parse_specs("rtn:4,finetune:unrelated")
    cells = plan_cells(specs, [], model="M", reference="R", control="C")
    assert [(c.role, c.text) for c in cells if c.role == "control"] == [
        ("control", "fp"), ("control", "rtn:4"), ("control", "finetune:unrelated")]
    assert all(c.source == "C" for c in cells if c.role == "control")


def test_an_audit_with_a_control_end_to_end(random_world, tmp_path):
    import hubaudit
    from hubaudit.report import render_markdown

    report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs="rtn:4",
                            metrics="knowmem_f", control=random_world["reference"], store=tmp_path / "s.sqlite",
                            progress=False)
    assert {(c.role, c.spec) for c in report.cells if c.role == "control"} == {("control", "fp"), ("control", "rtn:4")}
    assert report.inputs["control"]["identity"].startswith("content:")
    assert report.derived["calibration"]["calibrated"] == {"rtn:4": True}
    assert "rtn:4" in report.derived["calibrated_changes"] and "Calibration against the control" in render_markdown(report)


def test_control_errors_are_one_line_exit_2(capsys, tmp_path, random_world):
    from hubaudit.cli import main
    from hubaudit.sweep import sweep

    code = main(["audit", str(random_world["model"]), "--no-store", "--quiet", "--out", str(tmp_path / "o"),
                 "--forget", str(random_world["forget"]), "--backends", "rtn:4", "--control", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    # a sweep plans its control like its models: one that is not there makes each of its lines an error row
    res = sweep([str(random_world["model"])], out=tmp_path / "sw", forget=str(random_world["forget"]),
                control=str(tmp_path / "missing"), specs="rtn:4", use_ray=False, progress=False, store=tmp_path / "s")
    assert res.rows[0].status == "error" and "not found" in res.rows[0].reason


def test_a_sweep_calibrates_like_an_audit_and_a_line_can_name_its_own_control(random_world, tmp_path):
    """``--control`` for every line, one line with ``none``, one with a control of its own: each row's figures
    are the audit's with that control, the control's cells are computed once, and the leaderboard says which
    rows were calibrated."""
    import hubaudit
    from hubaudit.sweep import SweepEntry, sweep

    from factories import make_random_model

    m, ref, fs = str(random_world["model"]), str(random_world["reference"]), str(random_world["forget"])
    other = str(make_random_model(tmp_path / "other", seed=5))
    own = str(make_random_model(tmp_path / "own_control", seed=6))
    store = tmp_path / "s.sqlite"
    kw = dict(forget=fs, specs="rtn:4,prune:0.5", metrics="knowmem_f,verbmem_f", progress=False)
    entries = [SweepEntry(m), SweepEntry(other), SweepEntry(other, control="none", forget=fs),
               SweepEntry(m, control=own, forget=fs)]
    res = sweep(entries, reference="none", control=ref, out=tmp_path / "sw", store=store, use_ray=False, **kw)
    assert [r.status for r in res.rows] == ["ok"] * 4, [r.reason for r in res.rows]
    # control cells: fp + 2 specs for each of two controls, each computed once; 3 cells per audited model
    assert res.stats["computed_cells"] == 2 * 3 + 2 * 3
    for row, control in zip(res.rows, (ref, ref, None, own)):
        rep = row.report
        assert (rep.derived["calibration"]["control"] is None) == (control is None)
        one = hubaudit.audit(row.model, reference=False, control=control, store=tmp_path / "fresh.sqlite", **kw)
        assert rep.verdict.label == one.verdict.label and rep.verdict.summary == one.verdict.summary
        assert rep.derived.get("calibrated_changes") == one.derived.get("calibrated_changes")
        assert rep.derived["calibration"]["calibrated"] == one.derived["calibration"]["calibrated"]
        assert (rep.inputs["control"] or {}).get("identity") == (one.inputs["control"] or {}).get("identity")
    board = res.leaderboard
    assert sorted(board["calibrated"]) == ["calibrated"] * 3 + ["not calibrated"]  # rows sorted by verdict
    assert len({r.report_dir for r in res.rows}) == 4  # one model, two controls: two reports
    plan = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [x["control"] for x in plan["models"]][2] is None and plan["control"] == ref


def test_a_models_file_line_names_its_control(tmp_path):
    from hubaudit.sweep import SweepEntry, SweepError, read_models_file

    f = tmp_path / "models.txt"
    f.write_text("org/a - - ./retain_only\norg/b ./orig - none\norg/c\n")
    assert read_models_file(f) == [SweepEntry("org/a", control="./retain_only"), SweepEntry("org/b", "./orig", None, "none"),
                                   SweepEntry("org/c")]
    f.write_text("org/a - - c extra\n")
    with pytest.raises(SweepError, match="a line is MODEL \\[REFERENCE \\[FORGET \\[CONTROL\\]\\]\\], got 5 fields"):
        read_models_file(f)


def test_a_sweep_worker_declares_a_gpu_and_memory_for_its_largest_cell():
    """On CUDA every model's worker asks Ray for a GPU, so its training cells run there; its memory covers its
    largest cell (a full fine-tune holds the model, its copy, gradients and AdamW's two moments) and the
    original an ablation loads beside it."""
    from hubaudit.attacks import parse_specs
    from hubaudit.plan import AuditRequest
    from hubaudit.sweep import PlannedModel, _Sweep

    def planned(name, gib):
        return PlannedModel(name=name, load=name, identity=f"content:{name}", device="cpu", stored_dtype="float32",
                            weight_bytes=gib << 30, card={}, dtype="float32")

    run = _Sweep([], AuditRequest(), [], reference=None, forget=None, out=None, store=None, device="cuda", token=None,
                 ray=None, gpus=1, cpus=1, max_retries=0, card="none", progress=False)
    m, ref = planned("m", 4), planned("ref", 4)

    def res(specs, refs=None):
        specs = ["fp", *parse_specs(specs)]
        return run.resources({"model": m, "specs": specs, "refs": refs or [None] * len(specs)})

    quant, ft, ql = res("rtn:4"), res("rtn:4,finetune:unrelated"), res("qlora:nf4")
    assert quant["num_gpus"] == ft["num_gpus"] == 1 and quant["num_cpus"] == 1
    assert 4.5 * (4 << 30) < ft["memory"] < 6 * (4 << 30) and 2 * (4 << 30) < quant["memory"] < 2.5 * (4 << 30)
    assert ql["memory"] == quant["memory"]  # NF4 + a small adapter: no full copy's optimizer state
    abl = res("ablate:direction", [None, ref])
    assert abl["memory"] == quant["memory"] + ref.memory_bytes()
