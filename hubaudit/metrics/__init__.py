"""Metrics: MUSE's memorization and privacy measures, batched.

Example:
    >>> from hubaudit.metrics import evaluate
    >>> results = evaluate(model, tokenizer, load_forget_set("synthetic"))   # doctest: +SKIP
    >>> results["knowmem_f"].value                                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable

from ..errors import MetricError
# Registering a metric: its module, imported here. The order of these imports is the order of the metrics
# (the default run, the report's columns).
from . import muse, extraction, probability, tofu, wmdp  # noqa: F401  (registers the metrics)
from . import scores
from .base import METRICS, Metric, MetricConfig, MetricResult, register_metric, unregister_metric
from .muse import privleak
from .scores import Score

__all__ = ["METRICS", "Metric", "MetricConfig", "MetricResult", "Score", "register_metric", "unregister_metric",
           "evaluate", "resolve_metrics", "privleak", "scores"]


def resolve_metrics(names: Iterable[str] | str | None, fs) -> list[Metric]:
    """The metrics to run on ``fs``.

    With ``names`` None: every metric whose parts the forget set has (a MUSE Books folder without
    ``knowmem/`` simply runs no KnowMem). Named metrics must have their parts. A part that is
    present but empty is an error either way (switch its metric off to go on).

    Raises:
        MetricError: an unknown metric name, or nothing left to run.
        ForgetSetError: a needed part is missing or empty (the message names the metric to drop).
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if names is None:
        chosen = [m.name for m in METRICS.in_order() if all(fs.has(p) for p in m.needs)]
    else:
        chosen = []
        aliases = scores.aliases()
        for n in names:
            n = aliases.get(n.strip().lower(), n.strip().lower())
            METRICS.get(n)
            if n not in chosen:
                chosen.append(n)
    metrics = [METRICS.get(n)() for n in chosen]
    for m in metrics:
        for part in m.needs:
            fs.require(part, m.label)
    if not metrics:
        raise MetricError(f"forget set '{fs.name}' has none of the parts any metric needs ({', '.join(fs.sizes()) or 'it is empty'})")
    return metrics


def evaluate(model, tokenizer, fs, metrics=None, cfg: MetricConfig | None = None, batch_size: int | None = None,
             progress: bool | object = False, desc: str = "") -> dict[str, MetricResult]:
    """Run ``metrics`` (names or :class:`Metric` objects; default: all the set supports) on one model.

    Args:
        model: a loaded causal LM, in eval mode.
        tokenizer: its tokenizer.
        fs: the :class:`~hubaudit.forget.ForgetSet`.
        cfg: metric settings (MUSE defaults).
        batch_size: fixed batch size, or None for a token budget.
        progress: True for a tqdm bar, or a tqdm-like object with ``update`` and ``set_postfix_str``.

    Returns:
        metric name -> :class:`MetricResult`.
    """
    from .runner import LMRunner

    cfg = cfg or MetricConfig()
    if not metrics or isinstance(metrics, str) or isinstance(next(iter(metrics)), str):
        metrics = resolve_metrics(metrics or None, fs)
    runner = LMRunner(model, tokenizer, batch_size=batch_size)
    bar, own = progress, False
    if progress is True:
        from tqdm.auto import tqdm

        total = sum(len(getattr(fs, m.needs[0])) + (len(fs.mia_holdout) if m.name == "mia_auc" else 0) for m in metrics)
        bar, own = tqdm(total=total, desc=desc or "metrics", unit="item", leave=False), True
    out = {}
    try:
        for m in metrics:
            if bar:
                bar.set_postfix_str(m.label)
            runner.generated = False
            res = m.compute(runner, fs, cfg, progress=bar.update if bar else None)
            if runner.generated:
                path, reason = runner.decoding_path()
                res.decoding = {"path": path, **({"reason": reason} if reason else {})}
            out[m.name] = res
    finally:
        if own:
            bar.close()
    return out
