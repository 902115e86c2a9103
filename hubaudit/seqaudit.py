"""The sequential audit (``hubaudit audit --sequential``): items drawn in a random order fixed by a seed, in
rounds (4, then the first round that can decide a clear regain, growing by half). First, did the model unlearn
at all: its full precision against the original's, on the metrics the not-unlearned check compares, until that
is decided (then a model that did not unlearn is ``not-unlearned`` without any spec evaluated). Then each open
(spec, forget metric) pair is tested after every round with :mod:`hubaudit.sequential`'s anytime-valid tests at
``alpha / K`` (K pairs, Bonferroni), a pair stopping once decided and the audit once the label is: any pair
``fragile``, or every pair ``not-fragile``. Pairs still open when the items run out are decided by the
fixed-sample rule on every item, as the full audit decides them.

Compute goes where the verdict needs it: the verdict's metrics on the audited model's cells and the
original's full-precision cell (the not-unlearned check), item by item as drawn; the metrics the verdict does
not count (KnowMem retain, MIA, ...) on full precision and on the spec the verdict names, unless
``--metrics`` names them (then on every cell); the original's quantized cells are not evaluated (they give
only "retained" at each precision). Each round's items are stored as their own forget set (a rerun with the
same seed reuses them), and a cell stored by a full audit is read, never recomputed.

:func:`run_sequential` returns the cells (the report's, with each sequential cell's items in draw order,
``index`` naming the item) and the sequential record; :func:`apply_sequential` puts the record into
``derived["sequential"]`` and the sequential verdict into the report.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field, replace

from .attacks import FULL_PRECISION, get_attack
from .errors import HubauditError
from .metrics import METRICS, evaluate
from .plan import Auditor, Cell, metric_key
from .metrics.scores import chance as chance_of, label as score_label, retained_keys, verdict_keys
from .results import CellResult, Verdict
from .sequential import BettingCS, PairTest, permutation
from .verdict import MIN_ITEMS_ROBUST

log = logging.getLogger("hubaudit")

FIRST_ROUND = 4  # a first look: nothing can be decided on 4 items, but it ranks the specs for the next round
ROUND_FACTOR = 1.5  # then rounds grow by half: a clear case stops within half a round of its need
RETAINED_SHARE = 0.8  # the not-unlearned rule's share (verdict.NOT_UNLEARNED_RETAINED / 100)


def first_decisive(pairs: int, alpha: float, threshold: float) -> int:
    """The fewest items on which a pair that regains +100 points on every item is called fragile, with
    ``pairs`` pairs at family-wise ``alpha``: the second round, the first at which anything can be decided."""
    t = PairTest("", "", threshold, alpha / max(1, pairs))
    while t.decision == "open" and t.n < 1000:
        t.update([100.0])
    return t.n


def schedule(total: int, second: int) -> list[int]:
    """Cumulative items per round: ``FIRST_ROUND``, ``second``, then growing by ``ROUND_FACTOR``, to ``total``."""
    out = [k for k in (FIRST_ROUND, second) if k < total]
    k = second
    while True:
        k = max(k + 1, int(math.ceil(k * ROUND_FACTOR)))
        if k >= total:
            break
        out.append(k)
    return sorted(set(out)) + [total]


@dataclass
class _Drawn:
    """Item records of one (role, spec, metric) in draw order, and the tokens spent computing them here."""

    rows: list = field(default_factory=list)
    tokens: int = 0
    asked: int = 0  # items asked for, to the end of their round: what the report shows (a full audit's stored
    # cell may hold more, read for free; a sequential audit reports only the items it would have drawn)


class _SpecModel:
    """A spec's model, built once when a round needs it (never when every round is in the store)."""

    def __init__(self, auditor: Auditor, plan: Cell):
        self.auditor, self.plan = auditor, plan
        self.model = None
        self.backend: dict = {}
        self.status, self.reason = "ok", None
        self.identical = False
        self.quantize_seconds = 0.0
        self._built = False

    def get(self):
        if self._built:
            return self.model
        self._built = True
        src = self.plan.source
        if self.plan.spec == FULL_PRECISION:
            self.model = src.model
            self.backend = {"dtype": str(src.compute_dtype()).replace("torch.", ""), "device": src.device}
            return self.model
        attack, qspec = get_attack(self.plan.spec)
        reason = attack.unavailable_reason()
        if reason:
            self.status, self.reason = "skipped", reason
            return None
        t0 = time.perf_counter()
        try:
            self.model, settings = attack.build(src, qspec, rows=None)
        except HubauditError as e:
            self.status, self.reason = "error", str(e)
            return None
        except Exception as e:  # noqa: BLE001 - one failing backend must not end the audit
            log.debug("cell %s failed", self.plan.spec, exc_info=True)
            self.status, self.reason = "error", f"{type(e).__name__}: {e}"
            return None
        self.quantize_seconds += time.perf_counter() - t0
        self.builds = getattr(self, "builds", 0) + 1
        self.backend = {"backend": attack.name, "kind": attack.kind, "settings": settings, "versions": attack.versions()}
        if settings.get("identical_to_full_precision"):
            self.identical, self.model = True, None
        return self.model

    def release(self):
        """Free a quantized model; it is built again when a later round needs it."""
        if self.model is not None and self.plan.spec != FULL_PRECISION:
            self.model = None
            self._built = False
            gc.collect()


class _Draws:
    """Per-item scores of the verdict's metrics, computed a round at a time in draw order."""

    def __init__(self, auditor: Auditor, seed: int, second: int = 12):
        self.a, self.seed, self.second = auditor, seed, second
        self.fs = auditor.fs
        self.data: dict[tuple, _Drawn] = {}
        self.orders: dict[str, list[int]] = {}

    def part(self, metric) -> str:
        return METRICS.get(metric.name).needs[0]

    def order(self, metric) -> list[int]:
        part = self.part(metric)
        if part not in self.orders:
            self.orders[part] = permutation(len(getattr(self.fs, part)), self.seed, part)
        return self.orders[part]

    def size(self, metric) -> int:
        return len(getattr(self.fs, self.part(metric)))

    def upto(self, plan: Cell, metric, n: int, model: _SpecModel) -> list | None:
        """The first ``n`` drawn items' records of ``metric`` in ``plan``'s cell (computing what is
        missing); None when the cell cannot be evaluated."""
        key = (plan.role, plan.source.identity, plan.text, metric.name)
        got = self.data.setdefault(key, _Drawn())
        got.asked = max(got.asked, next(k for k in schedule(self.size(metric), self.second) if k >= n))
        if len(got.rows) >= n:
            return got.rows[:n]
        a = self.a
        src, spec = plan.source, plan.text
        mkey = metric_key(metric, a.cfg, src, plan.spec)
        order = self.order(metric)
        store = a.store if not a.fresh else None
        full = store.get(src.identity, spec, a.fs_hash, metric.name, mkey) if store is not None else None
        if full is not None and len(full.get("items") or []) == len(order):  # a full audit stored it: read
            got.rows = [{**full["items"][i], "index": i} for i in order]
            return got.rows[:n]
        part = self.part(metric)
        items = getattr(self.fs, part)
        sched = [k for k in schedule(len(order), self.second) if k > len(got.rows)]
        for b in sched:
            start = len(got.rows)
            idx = order[start:b]
            sub = replace(self.fs, **{part: [items[i] for i in idx]})
            sub_hash = sub.content_hash()
            rec = a.store.get(src.identity, spec, sub_hash, metric.name, mkey) if a.store is not None and not a.fresh else None
            if rec is None:
                m = model.get()
                if model.identical:  # the spec's model is the source's own: its full-precision scores
                    fp = self.upto(Cell(plan.role, src, FULL_PRECISION, [metric]), metric, b, _SpecModel(a, Cell(
                        plan.role, src, FULL_PRECISION, [metric])))
                    rows = [dict(r) for r in fp[start:b]]
                    got.rows += rows
                    if b >= n:
                        break
                    continue
                if m is None:
                    return None
                res = evaluate(m, src.tokenizer, sub, [metric], a.cfg, batch_size=a.batch_size, progress=False)[metric.name]
                rec = {"value": res.value, "n": res.n, "items": res.items, "seconds": res.seconds, "tokens": res.tokens,
                       "decoding": res.decoding}
                got.tokens += res.tokens
                if a.store is not None:
                    a.store.put(src.identity, spec, sub_hash, metric.name, mkey, rec)
            got.rows += [{**r, "index": i} for r, i in zip(rec["items"], idx)]
            if b >= n:
                break
        return got.rows[:n]


def _scores(rows) -> list[float]:
    return [float(r["score"]) for r in rows]


def run_sequential(auditor: Auditor, plans: list[Cell], *, threshold: float, alpha: float, seed: int = 0,
                   all_metrics: bool = False) -> tuple[list[CellResult], dict]:
    """Run a plan's cells sequentially (see the module docstring). ``all_metrics``: the metrics the verdict
    does not count go on every cell (the user named them with ``--metrics``)."""
    t0 = time.perf_counter()
    metrics = plans[0].metrics if plans else []
    vmetrics = [m for m in metrics if m.name in verdict_keys()]
    others = [m for m in metrics if m.name not in verdict_keys()]
    fp_plan = next((p for p in plans if p.role == "model" and p.spec == FULL_PRECISION), None)
    if not vmetrics or fp_plan is None:
        return auditor.run(plans), {"enabled": True, "note": "no metric the verdict counts: every cell evaluated in full"}
    model_specs = [p for p in plans if p.role == "model" and p.spec != FULL_PRECISION]
    seq_specs = [p for p in model_specs if get_attack(p.spec)[0].rows_request(get_attack(p.spec)[1]) is None]
    full_specs = [p for p in model_specs if p not in seq_specs]  # training attacks: every item, tested as drawn
    ref_fp = next((p for p in plans if p.role == "reference" and p.spec == FULL_PRECISION), None)
    K = len(model_specs) * len(vmetrics)  # until the metrics the original never knew are known (below)
    draws = _Draws(auditor, seed, first_decisive(K, alpha, threshold))
    tests: dict[tuple[str, str], PairTest] = {}
    fp_model = _SpecModel(auditor, fp_plan)
    built: dict[str, _SpecModel] = {}
    full_cells: dict[str, CellResult] = {}
    decided_fragile = False
    rmetrics = [m for m in vmetrics if m.name in retained_keys()]
    ref_model = _SpecModel(auditor, ref_fp) if ref_fp is not None else None
    not_unlearned = _did_not_unlearn(draws, fp_plan, fp_model, ref_fp, ref_model, rmetrics, alpha)
    if not_unlearned:  # the label is decided by full precision alone: no spec is needed
        full_specs, seq_specs = [], []
    # a metric the original never knew is not tested (verdict.never_known), exactly as in the full audit: its
    # pairs are not drawn at all
    unknown = (_never_known(draws, ref_fp, ref_model, vmetrics, rmetrics, alpha) if ref_fp is not None
               and not not_unlearned else {})
    tested = [m for m in vmetrics if m.name not in unknown]
    if not tested:  # nothing to test: the full audit says incomplete too
        full_specs, seq_specs = [], []
    K = max(1, len(model_specs) * len(tested))
    alpha_each = alpha / K
    draws.second = first_decisive(K, alpha, threshold)  # fewer pairs tested: a clear regain is decided sooner
    if ref_fp is not None:
        ref_fp.source.release()  # one model in memory at a time (drawn again, if needed, after the specs)

    for plan in full_specs:  # every item anyway (its trained items excluded by the verdict); tested in draw order
        cell = auditor.run_cell(Cell("model", plan.source, plan.spec, tested))
        full_cells[plan.text] = cell
    order_specs = [*seq_specs, *full_specs]
    for plan in order_specs:
        built[plan.text] = _SpecModel(auditor, plan)
        for m in tested:
            k = 0
            if plan in full_specs and full_cells[plan.text].status == "ok":
                from .verdict import _trained_items

                k = _trained_items(full_cells[plan.text], m.name)
            # the confidence sequence covers the mean change of the distribution the items are drawn from
            # (the items in a random order are independent draws from it, as the full audit's bootstrap
            # assumes), not only this list's: sampling without replacement would be as sure as the list is
            # long once it runs out, and call robust what the full audit calls inconclusive
            tests[(plan.text, m.name)] = PairTest(plan.text, m.name, threshold, alpha_each, min_items=MIN_ITEMS_ROBUST)
            tests[(plan.text, m.name)].items = draws.size(m) - k

    def open_metrics(plan):
        return [m for m in tested if tests[(plan.text, m.name)].decision == "open"
                and tests[(plan.text, m.name)].n < tests[(plan.text, m.name)].items]

    def priority(plan):  # the spec closest to a fragile call first: its best open pair's lower end, then mean
        ts = [tests[(plan.text, m.name)] for m in open_metrics(plan)]
        return max(((t.cs.lower if t.n else -100.0, t.mean if t.n else 0.0) for t in ts), default=(-100.0, 0.0))

    # round by round, every spec with an open pair in turn, the most promising first, and within a spec its
    # pairs by mean change: the round stops at the first fragile pair (one quantized model in memory at a
    # time: a spec's model is rebuilt in the next round unless it is the only one left open)
    for n in schedule(max(draws.size(m) for m in vmetrics), draws.second):
        todo = [p for p in order_specs if open_metrics(p) and built[p.text].status == "ok"]
        if not todo or decided_fragile:
            break
        todo.sort(key=priority, reverse=True)
        for plan in todo:
            if decided_fragile:
                break
            spec_model = built[plan.text]
            for m in sorted(open_metrics(plan), key=lambda m: -tests[(plan.text, m.name)].mean
                            if tests[(plan.text, m.name)].n else 0.0):
                t = tests[(plan.text, m.name)]
                n_m = min(n, t.items)
                if plan in full_specs:
                    cell = full_cells[plan.text]
                    if cell.status != "ok" or m.name not in cell.items:
                        t.decision = "untestable"
                        continue
                    k = draws.size(m) - t.items
                    order = [i for i in draws.order(m) if i >= k]  # the items it did not train on, as drawn
                    base_all = draws.upto(fp_plan, m, draws.size(m), fp_model)
                    if base_all is None:
                        t.decision = "untestable"
                        continue
                    by_index = {r["index"]: r["score"] for r in base_all}
                    rows = [cell.items[m.name][i] for i in order[:n_m]]
                    base = [{"score": by_index[i]} for i in order[:n_m]]
                else:
                    base = draws.upto(fp_plan, m, n_m, fp_model)
                    rows = draws.upto(plan, m, n_m, spec_model)
                if rows is None or base is None:
                    t.decision = "untestable"
                    continue
                t.update([a - b for a, b in zip(_scores(rows[t.n:n_m]), _scores(base[t.n:n_m]))])
                if t.decision == "fragile":
                    decided_fragile = True
                    break
            if len(todo) > 1 or decided_fragile:
                spec_model.release()
    for sm in built.values():
        sm.release()

    # not-unlearned: the original at full precision, on the metrics the check compares (not the others), drawn
    # round by round only until an anytime-valid interval says the model keeps less than 80% of it
    fp_key = ("model", fp_plan.source.identity, FULL_PRECISION)
    need: dict[str, int] = {}
    for m in rmetrics if ref_fp is not None and not not_unlearned else []:  # the audited model's first, while it
        # is in memory: at least MIN_ITEMS_ROBUST, on which the full audit's check (the not-unlearned guard) could
        # still stand
        have = draws.data.get((*fp_key, m.name), _Drawn()).asked
        k = min(draws.size(m), max(have, MIN_ITEMS_ROBUST))
        need[m.name] = next(x for x in schedule(draws.size(m), draws.second) if x >= k)  # a whole round
        if need[m.name] > have:
            draws.upto(fp_plan, m, need[m.name], fp_model)

    def draw_original():
        for m in rmetrics:
            got = draws.data.get((*fp_key, m.name), _Drawn())
            base = got.rows[:min(need[m.name], got.asked)]
            if not base:
                continue
            c = chance_of(m.name)
            cs = BettingCS(alpha / len(rmetrics), lo=-c - RETAINED_SHARE * (100 - c), hi=100 - c + RETAINED_SHARE * c)
            for k in [k for k in schedule(draws.size(m), draws.second) if k < len(base)] + [len(base)]:
                ref_rows = draws.upto(ref_fp, m, k, ref_model)
                if ref_rows is None:
                    break
                cs.update([(a - c) - RETAINED_SHARE * (b - c) for a, b in
                           zip(_scores(base[cs.n:k]), _scores(ref_rows[cs.n:k]))])
                if cs.upper < 0:  # keeps less than 80% of the original, at every time with prob. >= 1 - a
                    break

    # the cells of the report
    named = _named_spec(tests)
    cells: list[CellResult] = []
    drawn_original = False
    for plan in plans:
        if plan.role == "reference" and plan.spec != FULL_PRECISION and not (all_metrics and others):
            continue  # the original's quantized cells give only "retained" at that precision
        if plan.role != "model" and not drawn_original:
            fp_plan.source.release()  # one model in memory at a time
            if ref_fp is not None and not not_unlearned:  # else: drawn already, on equal items
                draw_original()
            drawn_original = True
        is_model_cell = plan.role == "model"
        # metrics the verdict does not count: the audited model at full precision and on the named spec (the
        # original's: none; every cell when the user named them with --metrics)
        want_other = others if (all_metrics or (is_model_cell and (plan.spec == FULL_PRECISION or plan.text == named))) else []
        if plan.role == "retrain":
            cells.append(auditor.run_cell(plan))
            continue
        if plan.text in full_cells and is_model_cell:
            cell = full_cells[plan.text]
            if want_other and cell.status == "ok":
                _merge(cell, auditor.run_cell(Cell(plan.role, plan.source, plan.spec, want_other)))
            cell.backend = {**cell.backend, "sequential": {"items": {m.name: tests[(plan.text, m.name)].n
                                                                       for m in vmetrics if (plan.text, m.name) in tests}}}
            cells.append(cell)
            continue
        cell = CellResult(role=plan.role, spec=plan.text)
        sm = (fp_model if plan is fp_plan else ref_model if plan is ref_fp else built.get(plan.text))
        tokens = 0
        used = {}
        if plan.role != "reference" or plan.spec == FULL_PRECISION:
            for m in vmetrics:
                got = draws.data.get((plan.role, plan.source.identity, plan.text, m.name))
                if got is None or not got.rows:
                    continue
                n = tests[(plan.text, m.name)].n if (plan.text, m.name) in tests else got.asked
                rows = got.rows[:n]
                if not rows:
                    continue
                cell.items[m.name] = rows
                cell.metrics[m.name] = sum(_scores(rows)) / len(rows)
                cell.n_items[m.name] = len(rows)
                used[m.name] = len(rows)
                tokens += got.tokens
        if sm is not None:
            cell.status, cell.reason = sm.status, sm.reason
            cell.backend = dict(sm.backend)
            cell.quantize_seconds = sm.quantize_seconds
        reached = any(tests[(plan.text, m.name)].n for m in vmetrics if (plan.text, m.name) in tests)
        if plan.role == "model" and plan.spec != FULL_PRECISION and cell.status == "ok" and not reached:
            cell.status, cell.reason = "skipped", ("the model did not unlearn, decided in full precision before any "
                                                   "spec" if not_unlearned else
                                                   "not evaluated: the sequential audit was decided before this spec")
        if want_other and cell.status == "ok":
            _merge(cell, auditor.run_cell(Cell(plan.role, plan.source, plan.spec, want_other)))
        cell.tokens += tokens
        if used:
            cell.backend["sequential"] = {"items": used}
        cells.append(cell)
    for plan in {id(p.source): p for p in plans}.values():
        plan.source.release()
    record = {
        "enabled": True, "seed": seed, "first_round": FIRST_ROUND, "round_factor": ROUND_FACTOR,
        "alpha": alpha, "pairs_total": K,
        "alpha_each": alpha_each,
        "method": ("per (spec, forget metric) pair: hedged-capital betting confidence sequence for the mean paired "
                   "change (Waudby-Smith & Ramdas 2023) and a mixture e-process for the sign "
                   "test, each at alpha / pairs (Bonferroni); fragile: the sequence's lower end >= threshold and "
                   "e-value >= pairs / alpha; not fragile: upper end < threshold on >= "
                   f"{MIN_ITEMS_ROBUST} items; open at the end: the fixed-sample rule on every item; rounds of "
                   f"{', '.join(map(str, schedule(10 ** 6, draws.second)[:4]))}, ... items; the original drawn "
                   "only on the not-unlearned check's metrics, until the betting confidence sequence of (model - "
                   f"chance) - {RETAINED_SHARE:g} (original - chance) lies below 0 (level alpha / metrics): "
                   "derived.retained_ci.fp.<metric>.n says on how many items"),
        "pairs": {}, "items_available": {m.name: draws.size(m) for m in vmetrics},
        "not_unlearned": not_unlearned,
        "seconds": time.perf_counter() - t0,
        "tokens_computed": sum(d.tokens for d in draws.data.values()),  # the verdict's metrics, this run
    }
    for (spec, m), t in tests.items():
        record["pairs"].setdefault(spec, {})[m] = t.to_json()
    return cells, record


def _did_not_unlearn(draws: _Draws, fp_plan: Cell, fp_model: _SpecModel, ref_fp: Cell | None,
                     ref_model: _SpecModel | None, rmetrics: list, alpha: float) -> dict | None:
    """First, did the model unlearn at all? The audited model and its original at full precision, on the metrics
    the not-unlearned check compares, round by round, until the betting confidence sequence of (model - chance) -
    0.8 (original - chance) (level ``alpha`` / metrics) lies above 0 on some metric, or below 0 on every one, or
    the items run out. The model did not unlearn when, on the items drawn, the full audit's own rule holds
    (:func:`hubaudit.verdict.kept_most`: the bootstrap interval of knowledge retained >= 80%, the original
    knowing the metric) and either the sequence has decided it or every item is drawn: then the report derives
    ``not-unlearned`` from these items, and no spec is needed. Returns ``{metric, n}`` then, else None."""
    from .verdict import kept_most, retained_figure

    if ref_fp is None or not rmetrics:
        return None
    for m in rmetrics:
        c = chance_of(m.name) or 0.0
        cs = BettingCS(alpha / len(rmetrics), lo=-c - RETAINED_SHARE * (100 - c), hi=100 - c + RETAINED_SHARE * c)
        total = draws.size(m)
        for k in schedule(total, draws.second):
            a, b = draws.upto(fp_plan, m, k, fp_model), draws.upto(ref_fp, m, k, ref_model)
            if a is None or b is None:
                return None
            cs.update([(x - c) - RETAINED_SHARE * (y - c) for x, y in zip(_scores(a[cs.n:k]), _scores(b[cs.n:k]))])
            if cs.upper < 0:  # keeps less than 80% of it: this metric cannot say "not unlearned"
                break
            if cs.lower > 0 or k == total:
                if kept_most(retained_figure(_scores(a[:k]), _scores(b[:k]), c)):
                    return {"metric": m.name, "n": k, "decided_by": "sequential" if k < total else "every item"}
    return None


def _never_known(draws: _Draws, ref_fp: Cell, ref_model: _SpecModel, vmetrics: list, rmetrics: list,
                 alpha: float) -> dict:
    """The verdict's metrics the original never knew (:func:`hubaudit.verdict.knows` false), ``{metric: its
    score}``, from the original's full-precision items: those the not-unlearned check drew (its metrics); for
    the others, round by round until the betting confidence sequence of the original's mean (level alpha /
    metrics) lies wholly above or below ``MIN_ORIGINAL`` points above chance, or every item is drawn. The
    decision is the drawn items' mean, which the report's original cell holds, so its ``not_counted`` agrees."""
    from .verdict import MIN_ORIGINAL, knows

    out = {}
    for m in vmetrics:
        c = chance_of(m.name) or 0.0
        got = draws.data.get((ref_fp.role, ref_fp.source.identity, ref_fp.text, m.name))
        have = len(got.rows) if got is not None else 0
        if m in rmetrics and have:
            rows = got.rows
        else:
            cs = BettingCS(alpha / len(vmetrics), lo=0.0, hi=100.0)
            rows = None
            for k in schedule(draws.size(m), draws.second):
                rows = draws.upto(ref_fp, m, k, ref_model)
                if not rows:
                    break
                cs.update(_scores(rows[cs.n:k]))
                if cs.lower >= c + MIN_ORIGINAL or cs.upper < c + MIN_ORIGINAL:
                    break
        if not rows:
            continue
        v = sum(_scores(rows)) / len(rows)
        if not knows(v, c):
            out[m.name] = v
    return out


def _merge(cell: CellResult, other: CellResult) -> None:
    """``other``'s metrics (the ones the verdict does not count, computed on every item) into ``cell``."""
    if other.status != "ok":
        return
    for m, v in other.metrics.items():
        cell.metrics[m] = v
        cell.n_items[m] = other.n_items.get(m)
        cell.items[m] = other.items.get(m, [])
    cell.tokens += other.tokens
    cell.seconds += other.seconds
    if not cell.backend:
        cell.backend = dict(other.backend)


def _named_spec(tests: dict) -> str | None:
    """The spec the verdict will rest on: a fragile pair's, else the pair with the largest mean change."""
    frag = [t for t in tests.values() if t.decision == "fragile"]
    pool = frag or [t for t in tests.values() if t.n]
    if not pool:
        return None
    return max(pool, key=lambda t: t.mean).spec


def _fixed_sample_in_list_order(report, exhausted) -> None:
    """A pair drawn to the end is decided by the full audit's fixed-sample rule: its bootstrap interval is
    computed here on the items in the forget set's order, as the full audit computes it (a bootstrap with a
    fixed seed resamples positions, so the draw order would move a borderline interval's end by a few hundredths
    and, at the threshold, the label). The mean and the sign test do not depend on the order."""
    from .stats import paired_change

    by = {(c.role, c.spec): c for c in report.cells}
    base = by.get(("model", FULL_PRECISION))
    changes = report.derived.changes
    for s, m, _ in exhausted:
        cell, ch = by.get(("model", s)), (changes.get(s) or {}).get(m)
        if base is None or cell is None or ch is None or _trained_items_of(cell, m):
            continue
        a = {r.get("index"): r.get("score") for r in cell.items.get(m) or []}
        b = {r.get("index"): r.get("score") for r in base.items.get(m) or []}
        if None in a or None in a.values() or set(a) != set(b) or len(a) != ch.get("n"):
            continue
        order = sorted(a)
        ch["ci"] = list(paired_change([float(a[i]) for i in order], [float(b[i]) for i in order]).ci)


def _trained_items_of(cell, metric) -> int:
    from .verdict import _trained_items

    return _trained_items(cell, metric)


def _retained_on_drawn(report) -> None:
    """Knowledge retained at full precision on the items both the audited model and the original drew (the
    original stops once the not-unlearned question is decided, so it may have fewer): what the verdict's check
    computes on equal item lists, here on the common prefix of the draw order."""
    from .verdict import retained_figure

    by = {(c.role, c.spec): c for c in report.cells}
    cell, ref = by.get(("model", FULL_PRECISION)), by.get(("reference", FULL_PRECISION))
    if cell is None or ref is None or cell.status != "ok" or ref.status != "ok":
        return
    d = report.derived
    ci_all = d.retained_ci
    for m in retained_keys():
        a, b = cell.items.get(m) or [], ref.items.get(m) or []
        if not a or not b or len(a) == len(b) or m in (ci_all.get(FULL_PRECISION) or {}):
            continue
        k = min(len(a), len(b))
        if any(x.get("index") != y.get("index") for x, y in zip(a[:k], b[:k])):
            continue  # not the same items
        xa, xb = _scores(a[:k]), _scores(b[:k])
        ci_all.setdefault(FULL_PRECISION, {})[m] = r = retained_figure(xa, xb, chance_of(m))
        mb = r["original"]
        if mb:
            d.retained.setdefault(FULL_PRECISION, {})[m] = sum(xa) / k / mb * 100


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and ci[0] is not None else ""


def apply_sequential(report, record: dict) -> None:
    """Put the sequential record into ``report.derived["sequential"]`` and decide the label from the
    anytime-valid tests (see the module docstring); ``incomplete`` and ``not-unlearned`` stay as derived."""
    report.derived["sequential"] = record
    _retained_on_drawn(report)
    v = report.verdict
    if v.label == "not-unlearned" and record.get("not_unlearned"):  # one line for the specs skipped on purpose
        v.summary = v.summary.split("; not evaluated: ")[0] + (
            "; decided in full precision before any spec (sequential audit), so no spec was evaluated")
    if not record.get("pairs") or v.label in ("incomplete", "not-unlearned"):
        return
    tests, alpha = record["pairs_total"], record["alpha"]
    skip = (report.derived.get("statistics") or {}).get("not_counted") or {}  # metrics the original never knew
    pairs = [(s, m, t) for s, d in record["pairs"].items() for m, t in d.items() if m not in skip]
    for d in record["pairs"].values():
        for m, t in d.items():
            if m in skip:
                t["decided_by"] = "not counted: " + skip[m]
    changes = report.derived.get("changes") or {}
    common = dict(threshold=v.threshold, alpha=alpha, tests=tests)

    def fields(s, m, t, note):
        ch = (changes.get(s) or {}).get(m) or {}
        record["pairs"][s][m]["decided_by"] = note
        fixed = note.startswith("fixed")  # a fixed-sample p-value means nothing on a sample that stopped early
        ci = ch.get("ci") if fixed and ch.get("ci") else t["cs"]  # the fixed-sample rule's own interval
        return dict(worst_spec=s, worst_metric=m, max_regained=t["mean"], ci=ci, n_items=t["n"], up=t["up"],
                    down=t["down"], p_value=ch.get("p_holm") if fixed else None, p_raw=ch.get("p") if fixed else None,
                    **common)

    def words(s, m, t):
        lo, hi = t["cs"]
        return (f"{s} {t['mean']:+.1f} points of {score_label(m)} [{lo:+.1f}, {hi:+.1f}] (anytime-valid, level "
                f"1 - {alpha:g}/{tests}), {t['up']} items up and {t['down']} down of {t['n']} drawn of "
                f"{t['population']}")

    frag = [(s, m, t) for s, m, t in pairs if t["decision"] == "fragile"]
    if frag:
        s, m, t = max(frag, key=lambda x: x[2]["cs"][0])
        summary = (f"fragile: {words(s, m, t)}, sign-test e-value {t['evalue']:.3g} >= {tests}/{alpha:g}; "
                   f"decided sequentially, threshold {v.threshold:g}")
        report.verdict = Verdict("fragile", summary=summary, **fields(s, m, t, "sequential"))
        return
    from .verdict import _not_run_words

    not_run = _not_run_words({(c.role, c.spec): c for c in report.cells}, report.inputs["specs"])
    if not_run:  # no fragile pair, and a requested spec was not evaluated: no verdict
        report.verdict = Verdict("incomplete", summary=f"incomplete: not evaluated: {', '.join(not_run)}, so no verdict",
                                 **common)
        return
    exhausted = [(s, m, t) for s, m, t in pairs if t["decision"] == "open"]
    _fixed_sample_in_list_order(report, exhausted)
    for s, m, t in exhausted:  # every item drawn: the fixed-sample rule, as the full audit
        ch = (changes.get(s) or {}).get(m)
        if ch and ch["mean"] >= v.threshold and (ch.get("p_holm") or 1) < alpha and v.label == "fragile":
            report.verdict = replace(v, summary=v.summary + " (every item drawn: decided by the fixed-sample test)")
            record["pairs"][s][m]["decided_by"] = "fixed-sample, every item"
            return
    def fixed_robust(s, m, t):
        hi = ((changes.get(s) or {}).get(m) or {}).get("ci", [None, None])[1]
        return hi is not None and hi < v.threshold and t["n"] >= MIN_ITEMS_ROBUST

    still = [(s, m, t) for s, m, t in exhausted if not fixed_robust(s, m, t)]
    for s, m, t in exhausted:
        record["pairs"][s][m]["decided_by"] = "fixed-sample, every item"
    if still or any(t["decision"] == "untestable" for _, _, t in pairs):
        if v.label in ("inconclusive",):
            return
        s, m, t = max(still or pairs, key=lambda x: x[2]["mean"] if x[2]["mean"] is not None else -1e9)
        report.verdict = Verdict("inconclusive", summary=(
            f"inconclusive: {words(s, m, t)}: every item drawn and neither decided"), **fields(s, m, t, "open"))
        return
    s, m, t = max(pairs, key=lambda x: x[2]["mean"] if x[2]["mean"] is not None else -1e9)
    for s2, m2, t2 in pairs:
        if t2["decision"] == "not-fragile":
            record["pairs"][s2][m2]["decided_by"] = "sequential"
    largest = (words(s, m, t) if t["decision"] == "not-fragile" else
               f"{s} {score_label(m)}, moved {t['mean']:+.1f} {_fmt_ci((changes.get(s) or {}).get(m, {}).get('ci'))} over "
               f"{t['n']} items (fixed-sample interval)")
    report.verdict = Verdict("robust", summary=(
        f"robust: no spec brings back {v.threshold:g} points of a forget metric; the largest, {largest}; "
        f"decided on {sum(x[2]['n'] for x in pairs)} of the pairs' {sum(x[2]['population'] for x in pairs)} items"
        + ("" if not exhausted else " (pairs open at the end by the fixed-sample rule)")),
        **fields(s, m, t, record["pairs"][s][m].get("decided_by", "sequential")))
