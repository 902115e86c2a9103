"""The statistics behind every derived figure: paired bootstrap intervals, a paired sign test, Holm's
family-wise correction, and how many items would decide an open question.

Every function takes per-item scores of the *same* items (paired), is deterministic for its seed, and
uses only numpy (imported inside). Conventions:

- an interval is a percentile bootstrap interval (``level``, default 0.95) over ``resamples`` paired
  resamples of the items (default 4,000, seed 0), vectorized in chunks;
- the test of regain is a one-sided sign test: under "quantization only adds noise", an item that
  changed is as likely to go up as down; ties (unchanged items) carry no information and are dropped.
  Real regain moves items one way (toward the original); noise moves them both ways.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

RESAMPLES = 4000
SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 2_000_000  # resample matrix elements per chunk (memory stays ~16 MB)


def _resample_means(values, resamples: int, seed: int):
    """Means of ``values`` ([n] or [n, k] columns resampled together) over paired bootstrap resamples:
    shape [resamples] or [resamples, k]."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    per = max(1, _CHUNK_ELEMENTS // max(1, n))
    out = []
    done = 0
    while done < resamples:
        b = min(per, resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        out.append(x[idx].mean(axis=1))
        done += b
    return np.concatenate(out, axis=0)


def bootstrap_mean_interval(diffs, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences. One item: (d, d)."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return (math.nan, math.nan)
    if d.size == 1 or np.all(d == d[0]):
        return (float(d[0]), float(d[0]))
    means = _resample_means(d, resamples, seed)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (float(lo), float(hi))


def bootstrap_ratio_interval(num, den, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED,
                             scale: float = 100.0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(num) / mean(den) * scale`` with the items resampled in
    pairs (knowledge retained = unlearned / original on the same items). NaN when ``den`` sums to 0."""
    import numpy as np

    x = np.stack([np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)], axis=1)
    if x.shape[0] == 0 or x[:, 1].sum() <= 0:
        return (math.nan, math.nan)
    m = _resample_means(x, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = m[:, 0] / m[:, 1] * scale
    r = r[np.isfinite(r)]
    if r.size == 0:  # every resample drew only items the original scores 0 on
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return (float(lo), float(hi))


def sign_test(up: int, down: int) -> float:
    """One-sided sign test: P(at least ``up`` of ``up + down`` changed items go up | up and down equally
    likely). Exact (binomial tail with integers). 1.0 when nothing changed."""
    n = up + down
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(up, n + 1))
    return min(1.0, tail / 2**n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence), in the
    input order: reject where adjusted p < alpha."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adj = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def _z(p: float) -> float:
    """Upper-tail standard normal quantile: P(Z > z) = p."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - p)


def items_for_sign_test(up: int, down: int, ties: int, alpha_each: float) -> int | None:
    """About how many items a sign test would need to reach ``alpha_each`` if the items kept moving as
    they did (the same shares up, down and unchanged); None when they do not move up more often than down."""
    changed = up + down
    n = changed + ties
    if changed == 0 or up <= down or n == 0:
        return None
    q = up / changed
    need_changed = (_z(alpha_each) / (2 * q - 1)) ** 2
    return max(n + 1, math.ceil(need_changed * n / changed))


def items_for_interval(n: int, mean: float, lo: float, hi: float, threshold: float) -> int | None:
    """About how many items would put the interval's upper end below ``threshold`` (robust), with the
    same spread: the half-width shrinks as 1/sqrt(n). None when the mean itself is not below it."""
    if n <= 0 or not mean < threshold or not math.isfinite(hi):
        return None
    half = hi - mean
    room = threshold - mean
    if half <= room:
        return n
    return math.ceil(n * (half / room) ** 2)


@dataclass
class PairedChange:
    """How one spec moved one metric against full precision, item by item (higher = more knowledge)."""

    n: int
    mean: float
    ci: tuple[float, float]
    up: int
    down: int
    ties: int
    p: float  # one-sided sign test, raw
    p_holm: float | None = None  # after Holm over the audit's grid

    def to_json(self) -> dict:
        d = asdict(self)
        d["ci"] = [round(x, 4) if math.isfinite(x) else None for x in self.ci]
        d["mean"] = round(self.mean, 4)
        return d


def paired_change(after, before, tol: float = 1e-9, **kw) -> PairedChange:
    """Paired per-item change ``after - before``: mean, bootstrap interval, items up / down / unchanged,
    and the one-sided sign test p-value."""
    d = [a - b for a, b in zip(after, before)]
    up = sum(1 for x in d if x > tol)
    down = sum(1 for x in d if x < -tol)
    mean = sum(d) / len(d) if d else math.nan
    return PairedChange(len(d), mean, bootstrap_mean_interval(d, **kw), up, down, len(d) - up - down, sign_test(up, down))
