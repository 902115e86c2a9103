"""The forget answers' token probability, as open-unlearning's ``probability`` metric
(``src/evals/metrics/memorization.py``): ``exp(-mean NLL)`` of the gold answer's tokens given the question,
the geometric mean of its per-token probabilities, P(a|q)^(1/|a|). Scored on KnowMem's forget questions in
KnowMem's prompt (its in-context examples, then ``Question: {q}\\nAnswer: ``, fed as KnowMem's generation is
fed it), the answer's tokens those of the joint encoding after the prompt's
(:func:`~hubaudit.metrics.prompts.prompt_and_continuation`); x 100, the mean over questions.

A probability moves when ROUGE on a greedy answer does not (an answer that climbs from 5% to 40% likely is
still not the greedy one), so a regain that ROUGE misses shows here (open-unlearning's meta-evaluation finds
probabilities among the metrics that hold up under relearning).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .base import Metric, MetricConfig, MetricResult, register_metric
from .muse import knowmem_prefix, knowmem_prompt
from .prompts import prompt_and_continuation
from .scores import Score


@register_metric
class AnswerProbability(Metric):
    name = "prob_f"
    scores = (Score("prob_f", "Answer prob. forget", verdict=True, shown={"report", "card", "space"},
                    words="the probability of the forget set's answers",
                    note="Answer prob.: the forget answers' per-token probability x 100 (geometric mean, "
                         "open-unlearning's probability) in KnowMem's prompt",
                    aliases=("prob", "probability")),)
    needs = ("forget_qa",)
    uses = ("forget_qa_icl",)

    def settings(self, cfg: MetricConfig) -> dict:
        return {"prompt": "knowmem", "definition": "open-unlearning probability (exp of minus the mean token NLL)"}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        qa = fs.require("forget_qa", self.label)
        prefix = knowmem_prefix(fs.forget_qa_icl)
        pairs = [prompt_and_continuation(runner.tokenizer, knowmem_prompt(prefix, x.question), x.answer) for x in qa]
        lps = runner.continuation_logprobs(pairs, progress=progress)
        rows = [{"score": math.exp(sum(lp) / len(lp)) * 100 if lp else 0.0, "answer_tokens": len(lp)} for lp in lps]
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, sum(len(c) + len(a) for c, a in pairs))
