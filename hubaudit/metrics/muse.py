"""The MUSE metrics (Shi et al., 2024), batched: VerbMem, KnowMem (forget and retain), and the MIA
AUC behind PrivLeak. Definitions follow MUSE's released evaluation code, item for item:

- VerbMem: greedy continuation of ``prompt`` (``max_new_tokens=128``), ROUGE-L F1 against ``gt``
  tokenized and cut to 128 tokens, decoded; mean x 100.
- KnowMem: prompt = each in-context pair as ``Question: {q}\\nAnswer: {a}\\n\\n``, then
  ``Question: {q}\\nAnswer: ``; greedy, ``max_new_tokens=32``; output cut at the first of ``\\n\\n``,
  ``\\nQuestion``, ``Question:``; ROUGE-L F1 against the answer; mean x 100.
- MIA: Min-K% (K = 40%) = minus the mean of the lowest K% token log-probabilities of a text; ROC AUC
  of forget texts (label 0) against holdout texts (label 1) with -Min-K% as the score. PrivLeak =
  (AUC - AUC_retrain) / AUC_retrain x 100 is derived from it by the audit.
"""

from __future__ import annotations

import time

import numpy as np

from .base import Metric, MetricConfig, MetricResult, register_metric
from .rouge import cut_at_stop, rouge_l_f1
from .scores import Score

EVERYWHERE = frozenset({"report", "plot", "card", "space", "space_plot", "retained"})


def knowmem_prefix(icl) -> str:
    return "".join(f"Question: {x.question}\nAnswer: {x.answer}\n\n" for x in icl or [])


def knowmem_prompt(prefix: str, question: str) -> str:
    return prefix + f"Question: {question}\nAnswer: "


def verbmem_reference(runner, gt: str, max_new_tokens: int) -> str:
    """``gt`` tokenized (with special tokens, as MUSE does), cut to ``max_new_tokens`` tokens, decoded."""
    return runner.decode(runner.encode(gt)[:max_new_tokens])


def min_k_score(logprobs, k: float) -> float:
    """MUSE's Min-K%: minus the mean of the lowest ``int(n*k)`` token log-probabilities."""
    n = int(len(logprobs) * k)
    if n == 0:  # a text of one or two tokens: MUSE would take the mean of nothing (NaN); use all
        n = len(logprobs)
    if n == 0:
        return float("nan")
    return float(-np.mean(np.sort(np.asarray(logprobs, dtype=np.float64))[:n]))


def mia_auc(forget_scores, holdout_scores) -> float:
    """ROC AUC with forget = 0, holdout = 1, score = -Min-K% (as MUSE's ``sweep``)."""
    from sklearn.metrics import roc_auc_score

    y = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    s = -np.array(list(forget_scores) + list(holdout_scores), dtype=np.float64)
    return float(roc_auc_score(y, s))


def privleak(auc: float, auc_retrain: float) -> float:
    return (auc - auc_retrain) / auc_retrain * 100.0


@register_metric
class VerbMem(Metric):
    name = "verbmem_f"
    scores = (Score("verbmem_f", "VerbMem forget", verdict=True, retained=True, steer=2, shown=EVERYWHERE,
                    words="verbatim memory of the forget texts (VerbMem)", aliases=("verbmem",)),)
    needs = ("verbmem",)

    def settings(self, cfg: MetricConfig) -> dict:
        return {"max_new_tokens": cfg.verbmem_max_new_tokens}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require("verbmem", self.label)
        gen = runner.generate([x.prompt for x in items], cfg.verbmem_max_new_tokens, progress=progress)
        rows = []
        for x, out in zip(items, gen.texts):
            f1 = rouge_l_f1(verbmem_reference(runner, x.gt, cfg.verbmem_max_new_tokens), out)
            rows.append({"score": f1 * 100, "output": out})
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, gen.prompt_tokens + gen.new_tokens)


class _KnowMem(Metric):
    qa_part = ""
    icl_part = ""

    def settings(self, cfg: MetricConfig) -> dict:
        return {"max_new_tokens": cfg.knowmem_max_new_tokens, "stop": list(cfg.stop_strings)}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        qa = fs.require(self.qa_part, self.label)
        prefix = knowmem_prefix(getattr(fs, self.icl_part))
        prompts = [knowmem_prompt(prefix, x.question) for x in qa]
        gen = runner.generate(prompts, cfg.knowmem_max_new_tokens, cfg.stop_strings, progress=progress,
                              shared_prefix=prefix)
        rows = []
        for x, out in zip(qa, gen.texts):
            out = cut_at_stop(out, cfg.stop_strings)
            rows.append({"score": rouge_l_f1(x.answer, out) * 100, "output": out})
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, gen.prompt_tokens + gen.new_tokens)


@register_metric
class KnowMemForget(_KnowMem):
    name = "knowmem_f"
    scores = (Score("knowmem_f", "KnowMem forget", verdict=True, retained=True, steer=1, shown=EVERYWHERE,
                    words="answers about the forget set (KnowMem)", aliases=("knowmem",)),)
    needs = ("forget_qa",)
    uses = ("forget_qa_icl",)
    qa_part, icl_part = "forget_qa", "forget_qa_icl"


@register_metric
class KnowMemRetain(_KnowMem):
    name = "knowmem_r"
    scores = (Score("knowmem_r", "KnowMem retain", side="retain", retained=True, utility=1,
                    shown=EVERYWHERE - {"space_plot"}),)  # utility
    needs = ("retain_qa",)
    uses = ("retain_qa_icl",)
    qa_part, icl_part = "retain_qa", "retain_qa_icl"


@register_metric
class MIA(Metric):
    """The MIA AUC behind PrivLeak. Lower AUC = the forget texts look more like training members."""

    name = "mia_auc"
    label = "MIA AUC (Min-K%)"
    # reported as PrivLeak (derived by the audit from the AUC and the retrained model's); not in the verdict
    scores = (Score("mia_auc", "MIA AUC", side="privacy", scale=1, higher_means_more_knowledge=False,
                    shown={"space"}, aliases=("privleak", "mia"), retrain_baseline=True),
              Score("privleak", "PrivLeak", side="privacy", higher_means_more_knowledge=False, derived=True))
    needs = ("mia_forget", "mia_holdout")

    def settings(self, cfg: MetricConfig) -> dict:
        return {"k": cfg.mink_k}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        forget = fs.require("mia_forget", "PrivLeak")
        holdout = fs.require("mia_holdout", "PrivLeak")
        lps, tokens = runner.token_logprobs(list(forget) + list(holdout), progress=progress)
        scores = [min_k_score(lp, cfg.mink_k) for lp in lps]
        f, h = scores[: len(forget)], scores[len(forget):]
        rows = [{"split": "forget", "min_k": s} for s in f] + [{"split": "holdout", "min_k": s} for s in h]
        return MetricResult(mia_auc(f, h), len(scores), rows, time.perf_counter() - t0, tokens)
