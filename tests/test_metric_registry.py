"""A metric is one class that declares its scores' facts, plus its registration: a metric registered here, in the
test, shows up in report.json, report.md, the card, the Space's table and words, and counts in the verdict exactly
when it says it does."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"


def _toy(counts: bool):
    """A metric that sees quantization: each item scores 100 when the model's first linear layer holds few
    distinct values (a 4-bit grid), else 0. Nothing a model can forget, but a regain the verdict must see."""
    from hubaudit.metrics import Metric, MetricResult, Score

    class Toy(Metric):
        name = "toy_f"
        scores = (Score("toy_f", "Toy forget", verdict=counts, shown={"report", "card", "space"},
                        words="toy knowledge of the forget set", aliases=("toy",)),)
        needs = ("forget_qa",)

        def compute(self, runner, fs, cfg, progress=None):
            import torch

            w = next(m.weight for m in runner.model.modules() if isinstance(m, torch.nn.Linear))
            score = 100.0 if torch.unique(w.detach().float()).numel() <= 64 else 0.0
            rows = [{"score": score} for _ in fs.require("forget_qa", self.label)]
            return MetricResult(score, len(rows), rows)

    return Toy


@pytest.fixture
def register():
    """Registers metrics for one test and takes them out again."""
    from hubaudit.metrics import METRICS, register_metric, unregister_metric

    names = []

    def add(cls):
        register_metric(cls)
        names.append(cls.name)
        return cls

    yield add
    for n in dict.fromkeys(names):
        if n in METRICS:
            unregister_metric(n)


def _space_modules():
    """space/page.py and space/words.py, imported with the Space's settings in a temporary place."""
    import tempfile

    env = {"HUBAUDIT_SPACE_DATA": tempfile.mkdtemp(), "HUBAUDIT_SPACE_PAUSE_WORKER": "1"}
    old = dict(os.environ)
    os.environ.update(env)
    sys.path.insert(0, str(SPACE))
    try:
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").resolve().parent == SPACE:
                del sys.modules[name]
        mods = {}
        for name in ("words", "page"):
            spec = importlib.util.spec_from_file_location(f"hubaudit_space_{name}", SPACE / f"{name}.py")
            mods[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
        return mods
    finally:
        sys.path.remove(str(SPACE))
        os.environ.clear()
        os.environ.update(old)


def test_a_metric_registered_in_a_test_is_shown_everywhere_and_counts_as_declared(random_world, tmp_path, register):
    import hubaudit
    from hubaudit.card import render_section
    from hubaudit.metrics import scores
    from hubaudit.metrics.base import unregister_metric
    from hubaudit.results import AuditReport
    from hubaudit.verdict import derive

    register(_toy(counts=True))
    assert "toy_f" in scores.verdict_keys() and scores.label("toy_f") == "Toy forget"
    out = tmp_path / "audit"
    rep = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs="rtn:4",
                         metrics="knowmem,toy", store=False, progress=False, out=out)  # its alias works too

    # report.json: its score in every cell, its regain tested; report.md: its column and its pair
    data = json.loads((out / "report.json").read_text())
    cells = {c["spec"]: c for c in data["cells"]}
    assert cells["fp"]["metrics"]["toy_f"] == 0.0 and cells["rtn:4"]["metrics"]["toy_f"] == 100.0
    assert data["derived"]["changes"]["rtn:4"]["toy_f"]["up"] == len(AuditReport.from_json(data).cell("model", "fp").items["toy_f"])
    md = (out / "report.md").read_text()
    assert "| Toy forget |" in md and "| rtn:4 | Toy forget |" in md
    # the verdict counts it: it regained everything, on every item
    assert rep.verdict.label == "fragile" and rep.verdict.worst_metric == "toy_f", rep.verdict.summary
    assert "Toy forget" in rep.verdict.summary

    # the card: its column in the table
    card = render_section(rep)
    header = next(line for line in card.splitlines() if line.startswith("| precision |"))
    assert "Toy forget" in header

    # the Space: its column in the result table, its words in the verdict paragraph
    space = _space_modules()
    frame = space["page"].table_frame(data["cells"], data["derived"])
    assert "Toy forget" in frame.columns
    assert set(frame["Toy forget"]) == {"0.0", "100.0"}
    assert "toy knowledge of the forget set" in space["words"].verdict_words(data)

    # the same cells, the metric declared as one the verdict does not count: no pair, no fragile on it
    unregister_metric("toy_f")
    register(_toy(counts=False))
    derived, verdict = derive(rep.cells, rep.specs, rep.verdict.threshold, 0.5)
    assert "toy_f" not in derived["changes"].get("rtn:4", {})
    assert verdict.worst_metric != "toy_f" and verdict.label != "fragile"
    # ... while it is still shown: a column of the report, not a question of the verdict
    from hubaudit.report import render_markdown

    assert "| Toy forget |" in render_markdown(AuditReport(rep.inputs, rep.cells, derived, verdict))


def test_a_declaration_the_verdict_cannot_count_is_refused(register):
    from hubaudit.errors import MetricError
    from hubaudit.metrics import METRICS, Metric, Score, scores

    with pytest.raises(ValueError, match="0-100"):
        Score("bad_r", "Bad", side="retain", verdict=True)
    with pytest.raises(ValueError, match="unknown places"):
        Score("bad_f", "Bad", shown={"poster"})

    class Twice(Metric):  # a key another metric already declares
        name = "verbmem_f"
        scores = (Score("verbmem_f", "Again"),)

    with pytest.raises(ValueError, match="twice"):
        register(Twice)
    assert METRICS.get("verbmem_f").label == "VerbMem forget" and scores.label("verbmem_f") == "VerbMem forget"
    with pytest.raises(MetricError, match="did you mean 'es_f'"):
        METRICS.get("es")
