"""benchmarks/real_world.py without its models: the forget set's layout keeps evaluation apart from training
text, the shipped QA is about the articles it names, and the table renders what the records say."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import real_world as rw  # noqa: E402


def _articles(n, tag):
    return [f"{tag} article {i}: " + " ".join(f"w{i}_{k}" for k in range(40)) for i in range(n)]


def test_the_forget_set_trains_on_articles_and_evaluates_on_what_no_model_trains_on(tmp_path):
    from hubaudit.forget import load_forget_set
    from hubaudit.unlearn.data import training_split

    background, holdout = _articles(300, "bg"), _articles(50, "ho")
    root = rw.build_forget_set(tmp_path, rw.SMOKE, background, holdout)
    fs = load_forget_set(root)
    f0, f1 = rw.SMOKE["forget_articles"]
    r0, r1 = rw.SMOKE["retain_articles"]
    sp = training_split(fs)
    assert sp.forget_texts == background[f0:f1] and sp.retain_texts == background[r0:r1]
    trained = set(sp.forget_texts) | set(sp.retain_texts)
    # VerbMem: each forget article cut in two, nothing lost
    assert [p.prompt + p.gt for p in fs.verbmem] == background[f0:f1]
    # MIA holdout and the retain_prob texts: never trained on
    assert not trained & set(fs.mia_holdout) and not trained & set(fs.mia_retain)
    # KnowMem: only the questions about this mode's forget / retain articles
    qa = json.loads(rw.QA_FILE.read_text())
    want = [x["question"] for x in qa["forget_qa"] if f0 <= x["article"] < f1]
    assert [x.question for x in fs.forget_qa] == want and want
    assert all(r0 <= x["article"] < r1 for x in qa["retain_qa"] if x["question"] in {y.question for y in fs.retain_qa})


def test_the_shipped_questions_are_about_distinct_articles_on_each_side():
    qa = json.loads(rw.QA_FILE.read_text())
    forget = {x["article"] for x in qa["forget_qa"] + qa["forget_qa_icl"]}
    retain = {x["article"] for x in qa["retain_qa"] + qa["retain_qa_icl"]}
    assert not forget & retain
    f0, f1 = rw.FULL["forget_articles"]
    r0, r1 = rw.FULL["retain_articles"]
    assert all(f0 <= a < f1 for a in forget) and all(r0 <= a < r1 for a in retain)
    questions = [x["question"] for part in ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl") for x in qa[part]]
    assert len(questions) == len(set(questions))


def _record(model, spec, retained, verdict="robust", status="ok"):
    return {"model": model, "spec": spec, "status": status, "verdict": verdict,
            "metrics": {"knowmem_f": 12.5, "verbmem_f": 30.0, "knowmem_r": 40.0},
            "retained": {"knowmem_f": {"value": retained, "ci": [retained - 10, retained + 10], "n": 9, "target": 50.0}}}


def test_the_table_shows_each_models_retained_share_with_its_interval_and_verdict():
    recs = [_record("npo_klr", "fp", 25.0, "fragile"), _record("npo_klr", "rtn:4:g128", 80.0, "fragile"),
            _record("npo_klr", "rtn:8", 30.0, "fragile"), _record("control", "fp", 5.0),
            _record("control", "rtn:8", 0.0, status="failed")]
    table = rw.render_table(recs)
    knowmem = table[table.index("**KnowMem forget"):]  # VerbMem's table comes first; these records' ratios are KnowMem's
    row = next(line for line in knowmem.splitlines() if line.startswith("| npo_klr |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in knowmem.splitlines() if line.startswith("| model |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("rtn:8") < cols.index("rtn:4:g128")  # 8-bit columns first
    assert cells[cols.index("fp")] == "25% [15, 35]"
    assert cells[cols.index("rtn:4:g128")] == "80% [70, 90]"
    assert cells[-1] == "**fragile**"
    control = next(line for line in knowmem.splitlines() if line.startswith("| control |"))
    assert "failed" in control
    verbmem = next(line for line in table.splitlines() if line.startswith("| npo_klr |"))  # no ratio: the scores
    assert "| 30.0 |" in verbmem
    # the paper's rows: NEWS NPO_KLR keeps 16.6 / 58.4 = 28% of VerbMem in full precision
    assert any(line.startswith("| NEWS | npo_klr | 28% /") for line in table.splitlines())


def test_the_augmentation_reorders_an_articles_sentences_and_keeps_every_one():
    text = 'Fires burn near Hill Top. "We are ready," he said. About 500 residents left! Rain fell at 4.30pm today.'
    variants = rw.shuffled_variants([text], 4, seed=1)
    assert len(variants) == 4
    sentences = sorted(['Fires burn near Hill Top.', '"We are ready," he said.', 'About 500 residents left!',
                        'Rain fell at 4.30pm today.'])
    for v in variants:
        assert sorted(s for s in sentences if s in v) == sentences and len(v) == len(text)
    assert any(v != text for v in variants)
    assert rw.shuffled_variants([text], 4, seed=1) == variants  # seeded: the same target on every machine
