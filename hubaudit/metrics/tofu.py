"""TOFU's metrics (Maini et al., 2024) as open-unlearning computes them (``src/evals/metrics/`` at
d3d7cf9; the formulas are TOFU's ``evaluate_util.py``/``aggregate_eval_stat.py``), on the ``tofu_forget``,
``tofu_retain``, ``tofu_real_authors`` and ``tofu_world_facts`` parts.

Prompts and the scored span: :mod:`hubaudit.metrics.prompts` (open-unlearning's chat prompts with the
system prompt and fixed date, ``[INST]`` or ``Question/Answer`` without a template, its labels).

- ROUGE: greedy answer (at most 200 new tokens, stopped by EOS only, as open-unlearning), decoded with
  special tokens skipped and tokenization spaces cleaned up, stripped; ROUGE-L *recall* (rouge-score,
  Porter stemmer) against the ground truth open-unlearning uses (the decoded conversation minus the
  decoded prompt, i.e. the answer); mean x 100.
- Probability: exp(-mean NLL of the scored tokens) (open-unlearning's ``evaluate_probability``); mean (0..1).
- Truth ratio, per item: R = P(perturbed)^(1/len) / P(paraphrased)^(1/len), the perturbed term exp of the
  mean over perturbed answers of their mean token loss. Forget set: mean of min(R, 1/R) (1 = cannot tell
  right from wrong: forgotten); retain set: mean of max(0, 1 - R). Per-item R is kept in the item records.
- Model utility (``tofu_mu``): the harmonic mean of open-unlearning's 9 values (:func:`utility_values`).
- Forget quality (:func:`forget_quality`): the p-value of a two-sample Kolmogorov-Smirnov test between
  the forget-set truth ratios of the audited model and of a model trained without the forget set (the
  audit's ``retrain`` model, or its open-unlearning eval log: :func:`retain_ratios_from_logs`).
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np

from ..errors import MetricError
from .base import Metric, MetricConfig, MetricResult, register_metric
from .prompts import PromptFormat, clean_up_spaces
from .scores import Score

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


def forget_quality_by_spec(cells, retain_ratios=None) -> dict[str, float]:
    """Forget quality of every ``model`` cell with ``tofu_tr_f`` against the ``retrain`` cell's truth ratios,
    or against ``retain_ratios`` (a retain model's, from :func:`retain_ratios_from_logs`) when given."""
    if retain_ratios is None:
        ret = next((c for c in cells if c.role == "retrain" and c.status == "ok" and c.items.get("tofu_tr_f")), None)
        if ret is None:
            return {}
        retain_ratios = [r["truth_ratio"] for r in ret.items["tofu_tr_f"]]
    return {c.spec: forget_quality([r["truth_ratio"] for r in c.items["tofu_tr_f"]], retain_ratios)
            for c in cells if c.role == "model" and c.status == "ok" and c.items.get("tofu_tr_f")}


def retain_ratios_from_logs(path) -> list[float]:
    """The retain model's forget-set truth ratios from open-unlearning's eval log (``TOFU_EVAL.json``:
    ``forget_truth_ratio.value_by_index.<i>.score``, what its ``retain_logs_path`` points to), or from a
    JSON list of numbers."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MetricError(f"cannot read the retain model's logs {p} ({getattr(e, 'strerror', None) or e}); give "
                          "open-unlearning's TOFU_EVAL.json of the retain model") from None
    if isinstance(data, dict):
        by_index = (data.get("forget_truth_ratio") or {}).get("value_by_index")
        if not isinstance(by_index, dict):
            raise MetricError(f"{p} has no forget_truth_ratio.value_by_index: give open-unlearning's TOFU_EVAL.json "
                              "of the retain model (eval with the forget_truth_ratio metric)")
        data = [by_index[k].get("score") if isinstance(by_index[k], dict) else None
                for k in sorted(by_index, key=lambda k: int(k) if str(k).isdigit() else 0)]
    if not isinstance(data, list) or not data or not all(isinstance(v, (int, float)) for v in data):
        raise MetricError(f"{p}: expected truth ratios (numbers) from the retain model; give its TOFU_EVAL.json")
    return [float(v) for v in data]


def prompt_format(runner, cfg: MetricConfig) -> PromptFormat:
    return PromptFormat.from_config(runner.tokenizer, cfg)


def _memo(runner) -> dict:
    """Values computed once per runner (one model's metrics): model utility reuses the retain metrics'."""
    return runner.__dict__.setdefault("_tofu_memo", {})


def tofu_generate(runner, items, fmt: PromptFormat, progress=None) -> tuple[list[dict], int]:
    """open-unlearning's ``eval_text_similarity``: greedy answers (200 new tokens, no stop strings), cut at
    EOS and stripped; ROUGE-L recall against the decoded conversation minus the decoded prompt."""
    key = ("rouge", id(items), fmt)
    memo = _memo(runner)
    if key not in memo:
        tok = runner.tokenizer
        prompts = [fmt.prompt_ids(tok, x.question) for x in items]
        gen = runner.generate_ids(prompts, TOFU_MAX_NEW_TOKENS, (), progress)
        rows = []
        for x, out in zip(items, gen.texts):
            out = clean_up_spaces(out).strip()
            ref = fmt.reference_text(tok, x.question, x.answer)
            rows.append({"score": rouge_l_recall(ref, out) * 100, "output": out})
        memo[key] = (rows, sum(map(len, prompts)) + gen.new_tokens)
    elif progress is not None:
        progress(len(items))
    return memo[key]


def tofu_logprobs(runner, items, fmt: PromptFormat, answers) -> tuple[list[list[list[float]]], int]:
    """Per item, the scored tokens' log-probs of each of ``answers(item)`` (open-unlearning's labels)."""
    key = ("lp", id(items), fmt, answers.__name__)
    memo = _memo(runner)
    if key not in memo:
        pairs, spans = [], []
        for x in items:
            start = len(pairs)
            pairs += [fmt.pair(runner.tokenizer, x.question, a) for a in answers(x)]
            spans.append((start, len(pairs)))
        lps = runner.continuation_logprobs(pairs)
        memo[key] = ([lps[a:b] for a, b in spans], sum(len(a) + len(b) for a, b in pairs))
    return memo[key]


def _answer(x):
    return (x.answer,)


def _para_and_perturbed(x):
    return (x.paraphrased_answer, *x.perturbed_answers)


def _answer_and_perturbed(x):
    return (x.answer, *x.perturbed_answers)


def _with_options(items, label, name, fs):
    items = [x for x in items if x.perturbed_answers]
    if not items:
        raise MetricError(f"{label} needs items with 'perturbed_answer' (TOFU's *_perturbed splits); forget set "
                          f"'{fs.name}' has none: leave {name} out")
    return items


def normalised_prob(correct_lp, wrong_lps) -> float:
    """open-unlearning's ``probability_w_options``: p(correct) / (p(correct) + sum of p(wrong)), each p the
    length-normalised probability exp(-mean token loss)."""
    c = mean_prob(correct_lp)
    return c / (c + sum(mean_prob(lp) for lp in wrong_lps) + 1e-10)


def model_utility(values) -> float:
    """TOFU's model utility: the harmonic mean of its 9 values (``scipy.stats.hmean``, as open-unlearning's
    ``hm_aggregate``); 0 when any is 0."""
    from scipy.stats import hmean

    v = np.asarray(list(values), dtype=np.float64)
    return 0.0 if (v <= 0).any() else float(hmean(v))


UTILITY_PARTS = {"retain": "tofu_retain", "ra": "tofu_real_authors", "wf": "tofu_world_facts"}


def utility_values(runner, fs, cfg: MetricConfig, progress=None) -> tuple[dict[str, float], int]:
    """The 9 values of open-unlearning's ``model_utility`` (0..1): on retain_perturbed the answer
    probability, ROUGE-L recall and truth ratio (paraphrase vs perturbed, ``max(0, 1 - R)``); on
    real_authors_perturbed and world_facts_perturbed the normalised answer probability, ROUGE-L recall and
    truth ratio (answer vs perturbed)."""
    fmt = prompt_format(runner, cfg)
    out, tokens = {}, 0
    for short, part in UTILITY_PARTS.items():
        items = fs.require(part, TofuModelUtility.label)
        rows, t = tofu_generate(runner, items, fmt, progress)
        out[f"{short}_Q_A_ROUGE"] = float(np.mean([r["score"] for r in rows])) / 100
        tokens += t
        if short == "retain":
            lps, t = tofu_logprobs(runner, items, fmt, _answer)
            out["retain_Q_A_Prob"] = float(np.mean([mean_prob(lp[0]) for lp in lps]))
            tokens += t
            tr_items = [x for x in items if x.perturbed_answers and x.paraphrased_answer]
            lps, t = tofu_logprobs(runner, tr_items, fmt, _para_and_perturbed)
        else:
            tr_items = _with_options(items, TofuModelUtility.label, TofuModelUtility.name, fs)
            lps, t = tofu_logprobs(runner, tr_items, fmt, _answer_and_perturbed)
            out[f"{short}_Q_A_Prob_normalised"] = float(np.mean([normalised_prob(lp[0], lp[1:]) for lp in lps]))
        if not tr_items:
            raise MetricError(f"{TofuModelUtility.label} needs perturbed answers in {part}; forget set '{fs.name}' "
                              f"has none: leave {TofuModelUtility.name} out")
        tokens += t
        out[f"{short}_Truth_Ratio"] = retain_stat([truth_ratio(lp[0], lp[1:]) for lp in lps])
    return out, tokens


class _Tofu(Metric):
    part = ""
    chat = True  # prompts go through the chat template when there is one

    def settings(self, cfg: MetricConfig) -> dict:
        return {"chat_template": bool(getattr(cfg, "chat_template", True)), "prompt": "open-unlearning",
                "system_prompt": cfg.system_prompt, "date_string": cfg.date_string, "plain_prompt": cfg.plain_prompt,
                "labels": "open-unlearning (joint ids after the prompt's length, + EOS)"}

    def prompt_key(self, cfg: MetricConfig, tokenizer) -> dict:
        return PromptFormat.from_config(tokenizer, cfg).describe(tokenizer)


class _TofuRouge(_Tofu):
    def settings(self, cfg):
        return {**super().settings(cfg), "max_new_tokens": TOFU_MAX_NEW_TOKENS, "rouge": "rougeL recall, stemmer",
                "reference": "decoded conversation minus decoded prompt", "stop": "EOS"}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require(self.part, self.label)
        rows, tokens = tofu_generate(runner, items, prompt_format(runner, cfg), progress)
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, tokens)


class _TofuProb(_Tofu):
    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = fs.require(self.part, self.label)
        lps, tokens = tofu_logprobs(runner, items, prompt_format(runner, cfg), _answer)
        if progress is not None:
            progress(len(items))
        rows = [{"score": mean_prob(lp[0]), "answer_tokens": len(lp[0])} for lp in lps]
        value = float(np.mean([r["score"] for r in rows]))
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, tokens)


class _TofuTruth(_Tofu):
    retain = False

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        items = [x for x in fs.require(self.part, self.label) if x.perturbed_answers and x.paraphrased_answer]
        if not items:
            raise MetricError(f"{self.label} needs items with 'paraphrased_answer' and 'perturbed_answer' "
                              f"(TOFU's *_perturbed splits); forget set '{fs.name}' has none: leave {self.name} out")
        lps, tokens = tofu_logprobs(runner, items, prompt_format(runner, cfg), _para_and_perturbed)
        if progress is not None:
            progress(len(items))
        ratios = [truth_ratio(lp[0], lp[1:]) for lp in lps]
        if self.retain:
            rows = [{"score": max(0.0, 1 - r), "truth_ratio": r} for r in ratios]
            value = retain_stat(ratios)
        else:
            rows = [{"score": min(r, 1 / r), "truth_ratio": r} for r in ratios]
            value = forget_stat(ratios)
        return MetricResult(value, len(rows), rows, time.perf_counter() - t0, tokens)


# Registered in table order: forget (ROUGE, probability, truth ratio), then retain, then model utility.
REPORT = frozenset({"report"})
SHOWN = frozenset({"report", "plot", "card"})


@register_metric
class TofuRougeForget(_TofuRouge):
    name, part, needs = "tofu_rouge_f", "tofu_forget", ("tofu_forget",)
    scores = (Score(name, "TOFU ROUGE-L forget", verdict=True, retained=True, steer=3, shown=SHOWN, aliases=("tofu",)),)


@register_metric
class TofuProbForget(_TofuProb):
    name, part, needs = "tofu_prob_f", "tofu_forget", ("tofu_forget",)
    scores = (Score(name, "TOFU answer prob. forget", scale=1, shown=REPORT),)


@register_metric
class TofuTruthForget(_TofuTruth):
    name, part, needs = "tofu_tr_f", "tofu_forget", ("tofu_forget",)
    # min(R, 1/R) -> 1 when right and wrong answers look alike
    scores = (Score(name, "TOFU truth ratio forget", scale=1, higher_means_more_knowledge=False, shown=REPORT,
                    retrain_baseline=True),)  # forget quality compares them with the retrained model's


@register_metric
class TofuRougeRetain(_TofuRouge):
    name, part, needs = "tofu_rouge_r", "tofu_retain", ("tofu_retain",)
    scores = (Score(name, "TOFU ROUGE-L retain", side="retain", utility=2, shown=SHOWN),)


@register_metric
class TofuProbRetain(_TofuProb):
    name, part, needs = "tofu_prob_r", "tofu_retain", ("tofu_retain",)
    scores = (Score(name, "TOFU answer prob. retain", side="retain", scale=1, shown=REPORT),)


@register_metric
class TofuTruthRetain(_TofuTruth):
    name, part, needs, retain = "tofu_tr_r", "tofu_retain", ("tofu_retain",), True
    scores = (Score(name, "TOFU truth ratio retain", side="retain", scale=1, shown=REPORT),)


@register_metric
class TofuModelUtility(_Tofu):
    """open-unlearning's TOFU ``model_utility``: the harmonic mean of 9 values (0..1) over retain_perturbed,
    real_authors_perturbed and world_facts_perturbed (:func:`utility_values`); the items are the 9 values."""

    name = "tofu_mu"
    scores = (Score(name, "TOFU model utility", side="retain", scale=1, shown=REPORT, aliases=("model_utility",)),)
    needs = ("tofu_retain", "tofu_real_authors", "tofu_world_facts")

    def settings(self, cfg):
        return {**super().settings(cfg), "max_new_tokens": TOFU_MAX_NEW_TOKENS, "aggregate": "hmean of 9"}

    def compute(self, runner, fs, cfg, progress=None) -> MetricResult:
        t0 = time.perf_counter()
        values, tokens = utility_values(runner, fs, cfg, progress)
        rows = [{"name": k, "score": v} for k, v in values.items()]
        return MetricResult(model_utility(values.values()), sum(len(fs.require(p, self.label)) for p in self.needs),
                            rows, time.perf_counter() - t0, tokens)
