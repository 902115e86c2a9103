"""ROUGE-L F1 through Google's rouge-score package (no stemmer), exactly as MUSE scores."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference`` (0..1)."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


def cut_at_stop(text: str, stops) -> str:
    """MUSE's ``get_prefix_before_words_occur``: keep what precedes the first stop string."""
    for s in stops:
        text = text.split(s)[0]
    return text
