"""TOFU's metrics (Maini et al., 2024; as TOFU's ``evaluate_util.py``/``aggregate_eval_stat.py`` and
open-unlearning compute them), on the ``tofu_forget`` and ``tofu_retain`` parts.

Prompt: the model's chat template when its tokenizer has one and ``MetricConfig.chat_template`` is on
(open-unlearning builds TOFU prompts with it), else ``Question: {q}\\nAnswer: `` (hubaudit's assumption
for base models; TOFU's original Llama-2 runs used ``[INST] q [/INST]``, which is that model's template).

- ROUGE: greedy answer (at most 200 new tokens, as open-unlearning; without a chat template also cut at
  MUSE's stop strings, since a base model will go on with the next question), ROUGE-L *recall* against
  the answer with rouge-score's Porter stemmer (TOFU: ``RougeScorer(['rouge1', 'rougeL'],
  use_stemmer=True)``, ``rougeL.recall``); mean x 100.
- Probability: P(a|q)^(1/|a|) = exp(-mean NLL of the answer's tokens), the answer's tokens followed by
  EOS as TOFU's labels are; mean over items (0..1).
- Truth ratio, per item: R = P(perturbed)^(1/len) / P(paraphrased)^(1/len), where the perturbed term is
  the geometric mean over the perturbed answers, as TOFU's code takes it (exp of the mean per-token loss;
  the paper writes an arithmetic mean). Reported as TOFU aggregates it: on the forget set the mean of
  min(R, 1/R) (1 = cannot tell right from wrong: forgotten; lower = knows), on the retain set the mean
  of max(0, 1 - R) (higher = knows). Per-item R is kept in the item records.
- Forget quality (:func:`forget_quality`): the p-value of a two-sample Kolmogorov-Smirnov test between
  the forget-set truth ratios of the audited model and of a model trained without the forget set (the
  audit's ``retrain`` model); high = indistinguishable from never having learned it.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np

from ..errors import MetricError
from .base import Metric, MetricConfig, MetricResult, register_metric
from .prompts import PromptFormat
from .rouge import cut_at_stop

TOFU_MAX_NEW_TOKENS = 200


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, prediction: str) -> float:
    """TOFU's ROUGE-L recall (stemmed), 0..1."""
    return _scorer().score(reference, prediction)["rougeL"].recall


def mean_prob(logprobs) -> float:
    """P^(1/n) = exp(mean log p) over a continuation's tokens."""
    return math.exp(float(np.mean(logprobs))) if len(logprobs) else float("nan")


def truth_ratio(para_lp, perturbed_lps) -> float:
    """R = exp(mean over perturbed answers of their mean token log p - mean token log p of the paraphrase)."""
    pert = float(np.mean([np.mean(lp) for lp in perturbed_lps]))
    return math.exp(pert - float(np.mean(para_lp)))


def forget_stat(ratios) -> float:
    """TOFU's forget-set truth ratio: mean of min(R, 1/R)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.minimum(r, 1 / r)))


def retain_stat(ratios) -> float:
    """TOFU's retain-set truth ratio (model utility): mean of max(0, 1 - R)."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1 - r)))


def forget_quality(model_ratios, retain_ratios) -> float:
    """TOFU's forget quality: KS-test p-value between two models' forget-set truth ratios."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(model_ratios), np.asarray(retain_ratios)).pvalue)


def forget_quality_by_spec(cells) -> dict[str, float]:
    """Forget quality of every ``model`` cell with ``tofu_tr_f`` against the ``retrain`` cell's."""
    ret = next((c for c in cells if c.role == "retrain" and c.status == "ok" and c.items.get("tofu_tr_f")), None)
    if ret is None:
        return {}
    base = [r["truth_ratio"] for r in ret.items["tofu_tr_f"]]
    return {c.spec: forget_quality([r["truth_ratio"] for r in c.items["tofu_tr_f"]], base)
            for c in cells if c.role == "model" and c.status == "ok" and c.items.get("tofu_tr_f")}


def prompt_format(runner, cfg: MetricConfig) -> PromptFormat:
    return PromptFormat.for_tokenizer(runner.tokenizer, getattr(cfg, "chat_template", True))


class _Tofu(Metric):
    part = ""
    chat = True  # prompts go through the chat template when there is one

    def settings(self, cfg: MetricConfig) -> dict:
        return {"chat_template": bool(getattr(cfg, "chat_template", True)), "prompt": "Question: {q}\\nAnswer: ",
                "eos_in_answer": True}


class _TofuRouge(_Tofu):
    def settings(self, cfg):
        return {**super().settings(cfg), "max_new_tokens": TOFU_MAX_NEW_TOKENS, "rouge": "rougeL recall, stemmer",
                "stop_without_template": list(cfg.stop_strings)}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require(self.part, self.label)
        fmt = prompt_format(runner, cfg)
        prompts = [fmt.prompt_ids(runner.tokenizer, x.question) for x in items]
        stops = () if fmt.chat else tuple(cfg.stop_strings)
        gen = runner.generate_ids(prompts, TOFU_MAX_NEW_TOKENS, stops, progress)
        texts, new = gen.texts, gen.new_tokens
        rows = []
        for x, out in zip(items, texts):
            out = cut_at_stop(out, stops) if stops else out
            rows.append({"score": rouge_l_recall(x.answer, out) * 100, "output": out})
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, sum(map(len, prompts)) + new)


class _TofuProb(_Tofu):
    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require(self.part, self.label)
        fmt = prompt_format(runner, cfg)
        pairs = [fmt.pair(runner.tokenizer, x.question, x.answer) for x in items]
        lps = runner.continuation_logprobs(pairs, progress)
        rows = [{"score": mean_prob(lp), "answer_tokens": len(lp)} for lp in lps]
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, sum(len(a) + len(b) for a, b in pairs))


class _TofuTruth(_Tofu):
    retain = False

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = [x for x in fs.require(self.part, self.label) if x.perturbed_answers and x.paraphrased_answer]
        if not items:
            raise MetricError(f"{self.label} needs items with 'paraphrased_answer' and 'perturbed_answer' "
                              f"(TOFU's *_perturbed splits); forget set '{fs.name}' has none: leave {self.name} out")
        fmt = prompt_format(runner, cfg)
        pairs, spans = [], []
        for x in items:
            start = len(pairs)
            for a in (x.paraphrased_answer, *x.perturbed_answers):
                pairs.append(fmt.pair(runner.tokenizer, x.question, a))
            spans.append((start, len(pairs)))
        lps = runner.continuation_logprobs(pairs)
        if progress is not None:
            progress(len(items))
        ratios = [truth_ratio(lps[a], lps[a + 1:b]) for a, b in spans]
        if self.retain:
            rows = [{"score": max(0.0, 1 - r), "truth_ratio": r} for r in ratios]
            value = retain_stat(ratios)
        else:
            rows = [{"score": min(r, 1 / r), "truth_ratio": r} for r in ratios]
            value = forget_stat(ratios)
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, sum(len(a) + len(b) for a, b in pairs))


@register_metric
class TofuRougeForget(_TofuRouge):
    name, label, part, needs = "tofu_rouge_f", "TOFU ROUGE-L forget", "tofu_forget", ("tofu_forget",)


@register_metric
class TofuRougeRetain(_TofuRouge):
    name, label, part, needs, forget = "tofu_rouge_r", "TOFU ROUGE-L retain", "tofu_retain", ("tofu_retain",), False


@register_metric
class TofuProbForget(_TofuProb):
    name, label, part, needs = "tofu_prob_f", "TOFU answer prob. forget", "tofu_forget", ("tofu_forget",)


@register_metric
class TofuProbRetain(_TofuProb):
    name, label, part, needs, forget = "tofu_prob_r", "TOFU answer prob. retain", "tofu_retain", ("tofu_retain",), False


@register_metric
class TofuTruthForget(_TofuTruth):
    name, label, part, needs = "tofu_tr_f", "TOFU truth ratio forget", "tofu_forget", ("tofu_forget",)
    higher_means_more_knowledge = False  # min(R, 1/R) -> 1 when right and wrong answers look alike


@register_metric
class TofuTruthRetain(_TofuTruth):
    name, label, part, needs, forget, retain = "tofu_tr_r", "TOFU truth ratio retain", "tofu_retain", ("tofu_retain",), False, True
