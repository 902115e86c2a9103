"""Anytime-valid statistics for sequential audits (``hubaudit audit --sequential``): tests whose error
guarantee holds however often the data are looked at and whenever the audit stops.

- :func:`sign_evalue`: an e-process for the one-sided sign test (H0: a changed item is at most as likely
  to go up as down, the null of the fixed-sample verdict's sign test). It is the likelihood ratio of
  "P(up) = p" against "P(up) = 1/2", mixed over p uniform on [1/2, 1]; under H0 it is a nonnegative
  supermartingale that starts at 1, so by Ville's inequality P(it ever reaches 1/a) <= a. Exact, in
  integers: ``E = sum_{k=D+1}^{n+1} C(n+1, k) / ((n+1) C(n, U))`` for U items up and D down, n = U + D.
- :class:`BettingCS`: a confidence sequence for the mean of values in a known range [lo, hi] (a paired
  change of a 0-100 score: [-100, 100]): the hedged-capital betting CS of Waudby-Smith & Ramdas (2023,
  "Estimating means of bounded random variables by betting", JRSS-B), with their predictable plug-in bets,
  evaluated on a grid of candidate means. With ``population=N`` it is their sampling-without-replacement
  version: the items come in a uniformly random order from a fixed list of N, and the CS covers the mean of
  the whole list (what the full audit computes) at every time with probability >= 1 - a, and shrinks to
  it as the list runs out.

Both hold under *continuous* monitoring, so looking after every round (or every item) and stopping
when a question is decided keeps the error at ``a``. Over a grid of K (spec, metric) pairs each runs at
``alpha / K`` (Bonferroni, valid for e-processes and confidence sequences under any dependence).

Only numpy, imported inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GRID = 4001  # candidate means on the value range: 0.05 points of a 0-100 change
BET_CAP = 0.75  # c in WSR's truncation of the bets (lambda <= c / m): their suggested 1/2 or 3/4


def sign_evalue(up: int, down: int) -> float:
    """The sign test's e-value after ``up`` items went up and ``down`` went down (ties carry nothing):
    the uniform mixture over P(up) in [1/2, 1] of the likelihood ratio against P(up) = 1/2. 1.0 when
    nothing changed; ``inf`` only past floating point range."""
    n = up + down
    num = sum(math.comb(n + 1, k) for k in range(down + 1, n + 2))
    den = (n + 1) * math.comb(n, up)
    try:
        return num / den
    except OverflowError:  # pragma: no cover - thousands of items all one way
        return math.inf


def sign_evalue_threshold(alpha_each: float) -> float:
    """The e-value at which the sign test rejects at level ``alpha_each`` (Ville): ``1 / alpha_each``."""
    return 1.0 / alpha_each


@dataclass
class BettingCS:
    """Hedged-capital betting confidence sequence for the mean of values in ``[lo, hi]``.

    Feed values with :meth:`update` (in the random order they were drawn); :attr:`lower` and
    :attr:`upper` bound the mean at level ``1 - alpha`` at every time, simultaneously (the running
    intersection: a candidate mean once excluded stays excluded). ``population``: the number of items
    the values are drawn from without replacement (the CS then covers their mean and closes on it as
    the items run out); None: independent draws.
    """

    alpha: float
    lo: float = -100.0
    hi: float = 100.0
    population: int | None = None
    grid: int = GRID
    cap: float = BET_CAP
    n: int = 0
    _state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        import numpy as np

        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.hi > self.lo:
            raise ValueError("hi must be above lo")
        m = np.linspace(0.0, 1.0, self.grid)
        self._state = {"m": m, "log_kp": np.zeros_like(m), "log_km": np.zeros_like(m),
                       "excluded": np.zeros(m.shape, dtype=bool), "sum": 0.0, "mu_hat": 0.5, "var_sum": 0.25}

    def _scale(self, x: float) -> float:
        return min(1.0, max(0.0, (x - self.lo) / (self.hi - self.lo)))

    def update(self, values) -> "BettingCS":
        """Add values (in draw order); returns self."""
        import numpy as np

        s = self._state
        m, log_kp, log_km = s["m"], s["log_kp"], s["log_km"]
        log_bar = math.log(1.0 / self.alpha)
        for v in values:
            x = self._scale(float(v))
            t = self.n + 1
            if self.population is not None and t > self.population:
                raise ValueError(f"more values than the population of {self.population}")
            # predictable plug-in bet (WSR eq. 26-27): from the values before this one
            var_prev = s["var_sum"] / t  # sigma^2_{t-1} = (1/4 + sum (x_i - mu_i)^2) / t
            lam = math.sqrt(2 * math.log(2 / self.alpha) / (var_prev * t * math.log(t + 1)))
            if self.population is not None:
                # the mean of the items not yet drawn, were the whole list's mean m
                with np.errstate(divide="ignore", invalid="ignore"):
                    mt = (self.population * m - s["sum"]) / (self.population - (t - 1))
                impossible = (mt < 0) | (mt > 1)
                mt = np.clip(mt, 0.0, 1.0)
            else:
                mt, impossible = m, None
            with np.errstate(divide="ignore", invalid="ignore"):
                lam_p = np.minimum(lam, self.cap / mt)
                lam_m = np.minimum(lam, self.cap / (1 - mt))
            log_kp += np.log1p(lam_p * (x - mt))
            log_km += np.log1p(-lam_m * (x - mt))
            cap = np.logaddexp(log_kp, log_km) - math.log(2)
            s["excluded"] |= cap >= log_bar
            if impossible is not None:
                s["excluded"] |= impossible
            # running estimates for the next bet (WSR: mu_t, sigma^2_t include x_t)
            s["sum"] += x
            mu = (0.5 + s["sum"]) / (t + 1)
            s["var_sum"] += (x - mu) ** 2
            s["mu_hat"] = mu
            self.n = t
        return self

    def interval(self) -> tuple[float, float]:
        """(lower, upper) on the values' scale: the grid step beyond the extreme candidates not excluded
        (conservative between grid points). ``(lo, hi)`` before any value; an empty set (a miscoverage,
        probability <= alpha) gives the point estimate twice."""
        import numpy as np

        s = self._state
        width = self.hi - self.lo
        if self.population is not None and self.n == self.population:  # every item drawn: the mean is known
            exact = self.lo + width * s["sum"] / self.n
            return (exact, exact)
        keep = np.flatnonzero(~s["excluded"])
        if keep.size == 0:
            est = self.lo + width * s["sum"] / max(1, self.n)
            return (float(est), float(est))
        step = 1.0 / (self.grid - 1)
        a = max(0.0, s["m"][keep[0]] - step)
        b = min(1.0, s["m"][keep[-1]] + step)
        return (float(self.lo + width * a), float(self.lo + width * b))

    @property
    def lower(self) -> float:
        return self.interval()[0]

    @property
    def upper(self) -> float:
        return self.interval()[1]


@dataclass
class PairTest:
    """The sequential test of one (spec, metric) pair: the paired changes so far (in draw order), their
    confidence sequence and the sign test's e-value, and the decision.

    ``decision``: ``open``, ``fragile`` (the CS's lower end >= ``threshold`` and the e-value >= 1 /
    ``alpha_each``: at least ``threshold`` points regained, and items moved up more often than down) or
    ``not-fragile`` (the CS's upper end < ``threshold``, on at least ``min_items`` items).
    """

    spec: str
    metric: str
    threshold: float
    alpha_each: float
    population: int | None = None  # the confidence sequence's (None: independent draws)
    min_items: int = 0
    items: int | None = None  # items there are to draw (the report's ``population``)
    up: int = 0
    down: int = 0
    total: float = 0.0
    decision: str = "open"
    decided_at: int | None = None
    cs: BettingCS | None = None
    tol: float = 1e-9

    def __post_init__(self):
        if self.cs is None:
            self.cs = BettingCS(self.alpha_each, population=self.population)

    @property
    def n(self) -> int:
        return self.cs.n

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def evalue(self) -> float:
        return sign_evalue(self.up, self.down)

    def update(self, diffs) -> str:
        """Add paired changes (spec - full precision, in draw order); decide if the pair is still open.
        Returns the decision."""
        diffs = [float(d) for d in diffs]
        if self.decision != "open" or not diffs:
            return self.decision
        self.cs.update(diffs)
        self.total += sum(diffs)
        self.up += sum(1 for d in diffs if d > self.tol)
        self.down += sum(1 for d in diffs if d < -self.tol)
        lo, hi = self.cs.interval()
        if lo >= self.threshold and self.evalue >= 1 / self.alpha_each:
            self.decision, self.decided_at = "fragile", self.n
        elif hi < self.threshold and self.n >= self.min_items:
            self.decision, self.decided_at = "not-fragile", self.n
        return self.decision

    def to_json(self) -> dict:
        lo, hi = self.cs.interval()
        e = self.evalue
        return {"decision": self.decision, "n": self.n, "population": self.items or self.population,
                "mean": round(self.mean, 4) if self.n else None,
                "cs": [round(lo, 4), round(hi, 4)], "evalue": e if math.isfinite(e) else None,
                "up": self.up, "down": self.down, "alpha_each": self.alpha_each}


def rounds(total: int, first: int = 8, factor: float = 2.0) -> list[int]:
    """Cumulative item counts at which a sequential audit looks: ``first``, then growing by ``factor``
    (8, 16, 32, ...), ending at ``total``."""
    out, k = [], max(1, first)
    while k < total:
        out.append(k)
        k = max(k + 1, int(math.ceil(k * factor)))
    out.append(total)
    return out


def permutation(n: int, seed: int, salt: str = "") -> list[int]:
    """The order items are drawn in: a uniformly random permutation of ``range(n)``, fixed by ``seed``
    (and ``salt``, e.g. the forget-set part, so each part has its own)."""
    import hashlib
    import random

    h = int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:8], "big")
    order = list(range(n))
    random.Random(h).shuffle(order)
    return order
