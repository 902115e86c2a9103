"""Sequential audits (``--sequential``): the anytime-valid statistics keep their error rate when one looks
after every item and stops at will, decide clear cases early, and an audit that stops early gives the full
audit's label on fewer items."""

import json
import random
import sys
from pathlib import Path

import pytest

from hubaudit.sequential import BettingCS, PairTest, permutation, rounds, sign_evalue

sys.path.insert(0, str(Path(__file__).parent))


def _population(rng: random.Random, n: int) -> list[float]:
    """Paired changes as quantization makes them: most items unchanged, some moved both ways, a few far."""
    out = []
    for _ in range(n):
        u = rng.random()
        out.append(0.0 if u < 0.5 else rng.uniform(-30, 40) if u < 0.95 else rng.choice([-100.0, 100.0]))
    return out


@pytest.mark.parametrize("population", [True, False])
def test_confidence_sequence_covers_the_mean_under_continuous_peeking(population):
    """Looked at after every item, the confidence sequence excludes the true mean at some time in at most
    about alpha of the runs (sampling without replacement: the list's mean; independent draws: the
    distribution's), and it still narrows down (not a trivially wide interval)."""
    alpha, runs, n = 0.1, 150, 80
    rng = random.Random(1)
    pop = _population(rng, n)
    truth = sum(pop) / n
    missed, widths = 0, []
    for r in range(runs):
        if population:
            xs = [pop[i] for i in permutation(n, r)]
        else:
            xs = [rng.choice(pop) for _ in range(n)]  # iid draws from the list: its mean is the truth
        cs = BettingCS(alpha, population=n if population else None, grid=801)
        ever = False
        for x in xs:
            cs.update([x])
            lo, hi = cs.interval()
            ever |= not lo - 1e-9 <= truth <= hi + 1e-9
        missed += ever
        widths.append(cs.interval()[1] - cs.interval()[0])
    # binomial slack: 3 standard errors above alpha
    assert missed / runs <= alpha + 3 * (alpha * (1 - alpha) / runs) ** 0.5, missed
    assert sorted(widths)[runs // 2] < (1 if population else 80), widths[:5]  # it closes on the mean


def test_naive_peeking_would_break_the_guarantee():
    """The reason for the betting sequence: a fixed-sample 95% normal interval, looked at after every item
    under the null, excludes the truth in far more than 5% of runs; the confidence sequence does not."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    rng = random.Random(2)
    runs, n, naive, seq = 200, 100, 0, 0
    for _ in range(runs):
        xs = [rng.choice([-10.0, 10.0]) for _ in range(n)]
        cs = BettingCS(0.05, grid=801)
        bad_naive = bad_seq = False
        for t in range(1, n + 1):
            m = sum(xs[:t]) / t
            sd = (sum((x - m) ** 2 for x in xs[:t]) / max(1, t - 1)) ** 0.5
            if t >= 5 and abs(m) > z * sd / t ** 0.5:
                bad_naive = True
            cs.update([xs[t - 1]])
            lo, hi = cs.interval()
            bad_seq |= not lo <= 0 <= hi
        naive += bad_naive
        seq += bad_seq
    assert naive / runs > 0.1  # peeking at a fixed-sample interval: well above its 5%
    assert seq / runs <= 0.05 + 3 * (0.05 * 0.95 / runs) ** 0.5


def test_sign_evalue_is_exact_and_valid_under_the_null():
    assert sign_evalue(0, 0) == 1.0
    assert sign_evalue(10, 0) == pytest.approx(2 ** 11 / 11 * (1 - 2 ** -11))  # all up: 2^(n+1) / (n+1), less 1
    assert sign_evalue(5, 5) < 1  # as many down as up: evidence against a regain
    rng = random.Random(3)
    alpha, runs, n, crossed = 0.1, 300, 100, 0
    for _ in range(runs):
        up = down = 0
        for _ in range(n):
            up, down = (up + 1, down) if rng.random() < 0.5 else (up, down + 1)
            if sign_evalue(up, down) >= 1 / alpha:
                crossed += 1
                break
    assert crossed / runs <= alpha + 3 * (alpha * (1 - alpha) / runs) ** 0.5, crossed


def test_a_clear_effect_is_rejected_early_and_no_change_is_closed():
    """28 of 28 items regaining +100 (the demo's constructed control) is fragile after a dozen items even at
    alpha / 8; items that never move close as not fragile before the list runs out."""
    alpha_each = 0.05 / 8
    t = PairTest("rtn:4", "knowmem_f", 5.0, alpha_each, population=112, min_items=20)
    n = 0
    while t.decision == "open":
        t.update([100.0])
        n += 1
    assert t.decision == "fragile" and n <= 16 and t.evalue >= 1 / alpha_each
    z = PairTest("rtn:8", "knowmem_f", 5.0, alpha_each, population=112, min_items=20)
    while z.decision == "open":
        z.update([0.0])
    assert z.decision == "not-fragile" and z.n < 112 and z.cs.upper < 5
    # a modest regain that moves items both ways is not called fragile on a few items
    w = PairTest("rtn:4", "verbmem_f", 5.0, alpha_each, population=28)
    w.update([30.0, -20.0, 10.0, -5.0, 0.0, 15.0, -10.0, 20.0])
    assert w.decision == "open"


def test_rounds_and_permutation():
    assert rounds(112) == [8, 16, 32, 64, 112]
    assert rounds(28, 8, 1.5) == [8, 12, 18, 27, 28]
    assert rounds(5) == [5]
    p = permutation(50, seed=3, salt="forget_qa")
    assert sorted(p) == list(range(50)) and p == permutation(50, seed=3, salt="forget_qa")
    assert p != permutation(50, seed=4, salt="forget_qa")


def _tokens(report):
    return sum(c.tokens for c in report.cells)


@pytest.mark.slow
def test_sequential_audit_gives_the_full_label_on_fewer_items(tiny_world, tmp_path):
    """The constructed control (rtn:4 gives back the original): fragile both ways, the sequential audit on
    fewer items and tokens; the retain-only model: robust both ways. The report says how many items each
    decision used, and reads back from JSON."""
    import hubaudit
    from hubaudit.metrics.scores import retained_keys, verdict_keys
    from hubaudit.results import AuditReport

    def run(model, specs, **kw):
        return hubaudit.audit(model, reference=tiny_world.target, forget=tiny_world.forget_dir, specs=specs,
                              store=False, progress=False, **kw)

    full = run(tiny_world.constructed, "rtn:8,rtn:4")
    seq = run(tiny_world.constructed, "rtn:8,rtn:4", sequential=True)
    assert full.verdict.label == seq.verdict.label == "fragile", seq.verdict.summary
    pairs = seq.derived["sequential"]["pairs"]
    decided = [(s, m, p) for s, d in pairs.items() for m, p in d.items() if p["decision"] == "fragile"]
    assert decided and all(p["n"] < p["population"] for _, _, p in decided)
    assert seq.verdict.worst_spec == "rtn:4" and seq.verdict.n_items < full.verdict.n_items
    assert _tokens(seq) < _tokens(full) / 2, (_tokens(seq), _tokens(full))
    # the original: only the verdict's metrics (not KnowMem retain or MIA); those the not-unlearned check
    # compares until it is decided, the others until it is clear that the original knew them
    ref = next(c for c in seq.cells if c.role == "reference" and c.spec == "fp")
    full_ref = next(c for c in full.cells if c.role == "reference" and c.spec == "fp")
    assert set(ref.metrics) == set(verdict_keys()) & set(full.cells[0].metrics)
    checked = set(retained_keys()) & set(ref.metrics)
    model_fp = next(c for c in seq.cells if c.role == "model" and c.spec == "fp")
    assert checked and all(ref.n_items[m] < model_fp.n_items[m] for m in checked), (ref.n_items, model_fp.n_items)
    assert all(seq.derived["retained_ci"]["fp"][m]["n"] == ref.n_items[m] for m in checked)
    assert all(ref.n_items[m] < full_ref.n_items[m] for m in ref.metrics), (ref.n_items, full_ref.n_items)
    assert not seq.derived["statistics"].get("not_counted")  # the original knew every one, as in the full audit
    assert not full.derived["statistics"].get("not_counted")
    assert not any(c.role == "reference" and c.spec != "fp" for c in seq.cells)
    back = AuditReport.from_json(json.loads(json.dumps(seq.to_json())))
    assert back.derived["sequential"]["pairs"] == json.loads(json.dumps(pairs))

    full_r = run(tiny_world.retain_only, "rtn:8,rtn:4")
    seq_r = run(tiny_world.retain_only, "rtn:8,rtn:4", sequential=True)
    assert full_r.verdict.label == seq_r.verdict.label == "robust", seq_r.verdict.summary
    assert _tokens(seq_r) < _tokens(full_r)  # the original's quantized cells are not evaluated


@pytest.mark.slow
def test_a_model_that_did_not_unlearn_is_still_not_unlearned_sequentially(tiny_world):
    """The original audited against itself keeps everything: the sequential audit's not-unlearned check, which
    draws the original only until it is decided, must not stop early on it."""
    import hubaudit

    kw = dict(reference=tiny_world.target, forget=tiny_world.forget_dir, specs="rtn:8", store=False, progress=False,
              metrics="verbmem_f,knowmem_f")
    full = hubaudit.audit(tiny_world.target, **kw)
    seq = hubaudit.audit(tiny_world.target, sequential=True, **kw)
    assert full.verdict.label == seq.verdict.label == "not-unlearned", seq.verdict.summary
    ref = next(c for c in seq.cells if c.role == "reference" and c.spec == "fp")
    model_fp = next(c for c in seq.cells if c.role == "model" and c.spec == "fp")
    assert ref.n_items == model_fp.n_items  # the check compares the same items
    # decided in full precision first, so no spec is evaluated: the model alone says it did not unlearn
    assert seq.derived["sequential"]["not_unlearned"]["metric"] in ref.n_items
    assert [c.status for c in seq.cells if c.role == "model" and c.spec != "fp"] == ["skipped"]
    assert seq.verdict.summary.endswith("decided in full precision before any spec (sequential audit), so no spec "
                                        "was evaluated"), seq.verdict.summary
    assert _tokens(seq) < _tokens(full) / 2, (_tokens(seq), _tokens(full))


def test_the_second_round_is_the_first_where_a_clear_regain_can_be_decided():
    from hubaudit.seqaudit import FIRST_ROUND, first_decisive, schedule

    n = first_decisive(16, 0.05, 5.0)
    rounds_ = schedule(112, n)
    assert rounds_[:2] == [FIRST_ROUND, n] and rounds_[-1] == 112 and rounds_ == sorted(set(rounds_))
    t = PairTest("rtn:4", "verbmem_f", 5.0, 0.05 / 16)
    t.update([100.0] * (n - 1))
    assert t.decision == "open"  # one item fewer: not yet
    assert t.update([100.0]) == "fragile"
    assert first_decisive(40, 0.05, 5.0) >= n  # more pairs, a stricter level: never earlier


@pytest.mark.slow
def test_sequential_rounds_are_stored_and_reused(tiny_world, tmp_path):
    """A second sequential audit with the same seed computes nothing: every round's items are in the store."""
    import hubaudit

    store = tmp_path / "results.sqlite"
    kw = dict(reference=tiny_world.target, forget=tiny_world.forget_dir, specs="rtn:4", store=store, progress=False,
              sequential=True, metrics="verbmem_f,knowmem_f")
    first = hubaudit.audit(tiny_world.constructed, **kw)
    again = hubaudit.audit(tiny_world.constructed, **kw)
    assert again.verdict.label == first.verdict.label
    assert again.derived["sequential"]["pairs"] == first.derived["sequential"]["pairs"]
    assert again.derived["sequential"]["tokens_computed"] == 0 < first.derived["sequential"]["tokens_computed"]


def test_seed_without_sequential_is_a_user_error(capsys, random_world):
    from hubaudit.cli import main

    code = main(["audit", str(random_world["model"]), "--seed", "3", "--no-reference"])
    assert code == 2
    assert "--sequential" in capsys.readouterr().err


def test_report_md_says_how_many_items_each_decision_used(random_world, tmp_path):
    from hubaudit.cli import main

    out = tmp_path / "out"
    assert main(["audit", str(random_world["model"]), "--no-reference", "--forget", str(random_world["forget"]),
                 "--attacks", "rtn:8", "--metrics", "verbmem_f", "--sequential", "--seed", "2", "--no-store",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pair = report["derived"]["sequential"]["pairs"]["rtn:8"]["verbmem_f"]
    md = (out / "report.md").read_text()
    assert "the items each decision used" in md and "seed 2" in md
    assert f"| rtn:8 | VerbMem forget | {pair['decision']} | {pair['n']} / {pair['population']} |" in md


def test_a_metric_the_original_never_knew_is_not_tested_sequentially_either(random_world):
    """A random original knows nothing: the full audit tests no metric (incomplete, every one not counted);
    the sequential audit decides the same from the original's items and draws no spec pair at all."""
    import hubaudit

    kw = dict(reference=random_world["reference"], forget=random_world["forget"], specs="rtn:8", store=False,
              progress=False, metrics="verbmem_f,es_f")
    full = hubaudit.audit(random_world["model"], **kw)
    seq = hubaudit.audit(random_world["model"], sequential=True, **kw)
    assert full.verdict.label == seq.verdict.label == "incomplete", seq.verdict.summary
    assert set(seq.derived["statistics"]["not_counted"]) == set(full.derived["statistics"]["not_counted"]) == {
        "verbmem_f", "es_f"}
    assert not any(p["n"] for d in seq.derived["sequential"]["pairs"].values() for p in d.values())
    spec = next(c for c in seq.cells if c.role == "model" and c.spec == "rtn:8")
    assert not spec.n_items  # no item of the spec was evaluated
