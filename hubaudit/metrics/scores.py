"""What every score is, declared once by the metric that produces it, asked by everyone else.

A metric (:class:`~hubaudit.metrics.base.Metric`) produces one or more scores, each a key in a cell's
``metrics`` (``knowmem_f``); ``Metric.scores`` declares, per key, a :class:`Score`: its label, scale,
direction, chance level, side (forget or retain), whether the verdict counts it, what the unlearning trainer
steers by, and where it is shown. ``@register_metric`` puts them in :data:`SCORES`; the verdict, the report,
the card, the leaderboard, the trainer and the Space read them through the functions here, in registration
order (the order of the tables), and hold no list of their own.

Example:
    >>> from hubaudit.metrics.scores import label, keys
    >>> label("knowmem_f")
    'KnowMem forget'
    >>> keys(verdict=True)[:2]
    ['verbmem_f', 'knowmem_f']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MetricError
from ..registry import Registry

# Where a score can be shown (``Score.shown``):
PLACES = {
    "report": "report.md's tables (every cell's score, the original's too)",
    "plot": "report.png",
    "card": "the model card's table, its model-index entry and .eval_results file",
    "space": "the Space's result table",
    "space_plot": "the Space's plot",
    "retained": "the plain knowledge-retained figures (derived['retained']: unlearned / original x 100)",
}


@dataclass(frozen=True)
class Score:
    """The facts of one score.

    Attributes:
        key: the key in a cell's ``metrics`` and in report.json (``knowmem_f``).
        label: its name in tables and sentences (``KnowMem forget``).
        part: the forget-set part its items come from, item for item (a recovery attack that trains on the
            first items of that part has them left out of the regain); "" for none.
        side: ``forget`` (knowledge that should be gone), ``retain`` (utility) or ``privacy`` (MIA).
        scale: 100 for points (0-100), 1 for a 0..1 value (shown with 3 digits).
        higher_means_more_knowledge: direction.
        chance: what a model that knows nothing scores (25 for four-choice accuracy); knowledge retained
            counts the share above it.
        verdict: the verdict tests its regain (per item, paired interval and sign test, Holm over the
            grid). Needs ``side="forget"``, ``scale=100``, higher = more knowledge, and per-item ``score``s.
        retained: the not-unlearned check compares it with the original (``derived["retained_ci"]``).
        steer: rank among the forget metrics the unlearning trainer can stop on (``--stop-metric``);
            None: not one.
        utility: rank among the utility metrics the unlearning trainer keeps; None: not one.
        shown: the places it appears (:data:`PLACES`).
        words: how a model publisher reads it, for the Space's paragraph ("" = the label).
        note: one sentence report.md and the card print under their tables when the score is in them (what
            it measures and on which scale); "" for none.
        retrain_baseline: measured on the retrained model too (``--retrain``), as the baseline of a derived
            figure (PrivLeak's AUC, TOFU's forget quality).
        aliases: other names ``--metrics`` accepts for its metric.
        derived: computed by the audit from other scores (PrivLeak from the MIA AUC), not by the metric.
    """

    key: str
    label: str
    part: str = ""
    side: str = "forget"
    scale: float = 100.0
    higher_means_more_knowledge: bool = True
    chance: float = 0.0
    verdict: bool = False
    retained: bool = False
    steer: int | None = None
    utility: int | None = None
    shown: frozenset[str] = frozenset({"report"})
    words: str = ""
    note: str = ""
    aliases: tuple[str, ...] = ()
    derived: bool = False
    retrain_baseline: bool = False

    def __post_init__(self):
        if self.side not in ("forget", "retain", "privacy"):
            raise ValueError(f"score {self.key}: side must be forget, retain or privacy, got {self.side!r}")
        unknown = set(self.shown) - set(PLACES)
        if unknown:
            raise ValueError(f"score {self.key}: unknown places {sorted(unknown)} (known: {', '.join(PLACES)})")
        if self.verdict and not (self.side == "forget" and self.scale == 100 and self.higher_means_more_knowledge):
            raise ValueError(f"score {self.key}: the verdict counts forget scores on a 0-100 scale where higher means "
                             "more knowledge")
        object.__setattr__(self, "shown", frozenset(self.shown))

    @property
    def digits(self) -> int:
        """Decimals a table shows: 1 for points, 3 for a 0..1 value."""
        return 1 if self.scale >= 100 else 3


SCORES: Registry[Score] = Registry("score", MetricError)
_METRIC_OF: dict[str, str] = {}  # score key -> the metric (registry name) that produces it


def register_scores(metric_name: str, scores) -> None:
    """Register a metric's scores (``@register_metric`` does it); a key registered twice is an error."""
    taken = [s.key for s in scores if s.key in SCORES]
    if taken:
        raise ValueError(f"metric {metric_name!r}: score {taken[0]!r} is registered twice")
    for s in scores:
        SCORES.add(s.key, s)
        _METRIC_OF[s.key] = metric_name


def unregister_scores(metric_name: str) -> None:
    """Take a metric's scores out again (tests that register a metric of their own)."""
    for key in [k for k, m in _METRIC_OF.items() if m == metric_name]:
        SCORES.remove(key)
        del _METRIC_OF[key]


def get(key: str) -> Score | None:
    """The score's facts; None for a key no metric here declares (a report by another version)."""
    return SCORES.get(key) if key in SCORES else None


def metric_of(key: str) -> str | None:
    """The name of the metric that produces ``key``."""
    return _METRIC_OF.get(key)


def label(key: str | None) -> str:
    """The score's label; an unknown key as itself."""
    s = get(key) if key else None
    return s.label if s else (key or "")


def words(key: str | None) -> str:
    """How a model publisher reads the score (its ``words``, else its label)."""
    s = get(key) if key else None
    return (s.words or s.label) if s else (key or "")


def keys(shown: str | None = None, **facts: Any) -> list[str]:
    """Score keys in registration order, those shown in ``shown`` and with every given fact, e.g.
    ``keys(verdict=True)``, ``keys(shown="card")``, ``keys(side="retain")``."""
    if shown is not None and shown not in PLACES:
        raise ValueError(f"unknown place {shown!r} (known: {', '.join(PLACES)})")
    out = []
    for s in SCORES.in_order():
        if shown is not None and shown not in s.shown:
            continue
        if all(getattr(s, k) == v for k, v in facts.items()):
            out.append(s.key)
    return out


def verdict_keys() -> list[str]:
    """The scores the verdict counts, in table order."""
    return keys(verdict=True)


def retained_keys() -> list[str]:
    """The scores the not-unlearned check compares with the original."""
    return keys(retained=True)


def chance(key: str) -> float:
    s = get(key)
    return s.chance if s else 0.0


def steer_keys() -> list[str]:
    """The forget metrics the unlearning trainer can stop on, in the order it tries them."""
    return [s.key for s in sorted((s for s in SCORES.in_order() if s.steer is not None), key=lambda s: s.steer)]


def utility_keys() -> list[str]:
    """The utility metrics the unlearning trainer keeps, in the order it tries them."""
    return [s.key for s in sorted((s for s in SCORES.in_order() if s.utility is not None), key=lambda s: s.utility)]


def forget_parts() -> list[str]:
    """The forget-set parts the verdict's scores are scored on (a relearning attack trains on their first items)."""
    out: list[str] = []
    for k in verdict_keys():
        p = SCORES.get(k).part
        if p and p not in out:
            out.append(p)
    return out


def notes(keys_shown) -> list[str]:
    """The ``note`` of each of ``keys_shown`` that has one, in order, each once."""
    out: list[str] = []
    for k in keys_shown:
        s = get(k)
        if s and s.note and s.note not in out:
            out.append(s.note)
    return out


def aliases() -> dict[str, str]:
    """Every alias ``--metrics`` accepts -> the metric's name."""
    return {a: _METRIC_OF[s.key] for s in SCORES.in_order() for a in s.aliases}
