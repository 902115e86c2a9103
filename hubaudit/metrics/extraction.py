"""Extraction strength (ES) on the forget passages, as open-unlearning's ``extraction_strength``
(``src/evals/metrics/memorization.py``; Carlini et al.'s extraction, scored as a fraction).

For a passage, prompt + continuation: the continuation's tokens ``y_0 .. y_{L-1}`` (VerbMem's, cut to its
``max_new_tokens``), and ``k`` the fewest of them that must be given, after the prompt, for greedy decoding to
produce the rest verbatim. ES = 1 - k / L (1: the prompt alone brings the whole continuation back). As in
open-unlearning, ``k`` is searched over ``0 .. L-1``, so a passage of which not even the last token comes
back scores 1 / L, like one of which only the last does. The score is ES x 100, the mean over passages.

No generation is needed: greedy decoding from prompt + ``y_<k`` reproduces ``y_k ..`` exactly when every
``y_j`` (j >= k) is the argmax given the true tokens before it, so one teacher-forced forward pass per
passage gives every ``k`` at once (``k`` = one past the last token the model would not pick).
"""

from __future__ import annotations

import time

import numpy as np

from .base import Metric, MetricConfig, MetricResult, register_metric
from .prompts import prompt_and_continuation
from .scores import Score


def extraction_prefix(matches) -> int:
    """open-unlearning's ``k`` from the per-token greedy matches of the continuation: the first ``k`` in
    ``0 .. L-1`` whose suffix ``matches[k:]`` is all true, else ``L - 1`` (its loop's last value)."""
    n = len(matches)
    last_miss = max((j for j, ok in enumerate(matches) if not ok), default=-1)
    return min(last_miss + 1, max(n - 1, 0))


def extraction_strength(matches) -> float:
    """1 - k / L in 0..1 (0 for an empty continuation, as open-unlearning)."""
    n = len(matches)
    return 0.0 if n == 0 else 1.0 - extraction_prefix(matches) / n


def passage_ids(runner, prompt: str, gt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids as VerbMem feeds them, the continuation's ids cut to ``max_tokens``)
    (:func:`~hubaudit.metrics.prompts.prompt_and_continuation`)."""
    ctx, cont = prompt_and_continuation(runner.tokenizer, prompt, gt)
    return ctx, cont[:max_tokens]


@register_metric
class ExtractionStrength(Metric):
    name = "es_f"
    scores = (Score("es_f", "ES forget", verdict=True, shown={"report", "card", "space"},
                    words="verbatim extraction of the forget texts (extraction strength)",
                    note="ES: extraction strength x 100 (open-unlearning's): 100 minus the share of a forget passage's "
                         "continuation that must be given for greedy decoding to produce the rest verbatim",
                    aliases=("es", "extraction_strength")),)
    needs = ("verbmem",)

    def settings(self, cfg: MetricConfig) -> dict:
        return {"max_tokens": cfg.verbmem_max_new_tokens, "definition": "open-unlearning extraction_strength"}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require("verbmem", self.label)
        rows_ids, starts, lengths = [], [], []
        for x in items:
            ctx, cont = passage_ids(runner, x.prompt, x.gt, cfg.verbmem_max_new_tokens)
            ctx = ctx[-max(1, runner.max_len - len(cont)):]  # a prompt too long for the model: cut on the left
            rows_ids.append(ctx + cont)
            starts.append(len(ctx))
            lengths.append(len(cont))
        hits = runner.greedy_matches_ids(rows_ids, progress=progress)
        rows = []
        for h, s, n in zip(hits, starts, lengths):
            m = h[s - 1: s - 1 + n]  # token t is predicted at position t - 1
            rows.append({"score": extraction_strength(m) * 100, "prefix": extraction_prefix(m) if n else 0,
                         "tokens": n})
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, sum(len(r) for r in rows_ids))
