import pytest

from hubaudit.forget import QA, load_forget_set
from hubaudit.metrics import MetricConfig, evaluate
from hubaudit.metrics.muse import knowmem_prefix, knowmem_prompt, mia_auc, min_k_score, privleak
from hubaudit.metrics.oracle import evaluate_one_at_a_time
from hubaudit.metrics.rouge import cut_at_stop, rouge_l_f1
from hubaudit.modeling import ModelSource


def test_knowmem_prompt_is_muses():
    icl = [QA("Who?", "Ann"), QA("When?", "1990")]
    p = knowmem_prompt(knowmem_prefix(icl), "Where?")
    assert p == "Question: Who?\nAnswer: Ann\n\nQuestion: When?\nAnswer: 1990\n\nQuestion: Where?\nAnswer: "
    assert cut_at_stop("Paris\nQuestion: next", ("\n\n", "\nQuestion", "Question:")) == "Paris"


def test_rouge_is_rouge_score_without_stemmer():
    from rouge_score import rouge_scorer

    ref, pred = "The glassmakers founded Varnholt in 1821", "glassmaker founded varnholt 1821!"
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l_f1(ref, pred) == expected and 0 < expected < 1  # no stemming: glassmakers != glassmaker


def test_min_k_and_auc_orientation():
    assert min_k_score([-1.0, -5.0, -0.1, -3.0, -0.2], 0.4) == pytest.approx(4.0)  # lowest 2: -5, -3
    # forget texts more likely (lower Min-K) than holdout: a memorizing model, AUC near 0
    assert mia_auc([0.5, 0.6, 0.7], [2.0, 2.5, 3.0]) == 0.0
    assert privleak(0.0, 0.4772) == pytest.approx(-100.0)
    assert privleak(0.4772, 0.4772) == 0.0


@pytest.mark.parametrize("batch_size", [None, 5])
def test_batched_scores_equal_one_at_a_time(random_world, batch_size):
    """Left-padded batches give the same outputs and scores as MUSE's item-by-item loop. In float32: a
    random model's next-token logits are near ties, which 16-bit arithmetic flips with the padding (the
    bf16 comparison is on a trained model, in test_runner)."""
    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    fs = load_forget_set(random_world["forget"])
    cfg = MetricConfig(verbmem_max_new_tokens=40)
    names = ["verbmem_f", "knowmem_f", "knowmem_r", "mia_auc"]
    fast = evaluate(src.model, src.tokenizer, fs, names, cfg, batch_size=batch_size)
    slow = evaluate_one_at_a_time(src.model, src.tokenizer, fs, names, cfg)
    for name in names:
        assert fast[name].value == pytest.approx(slow[name], abs=0.01), name
    # per item too: the same generated text, not only the same mean
    from hubaudit.metrics.oracle import _generate_one

    for x, row in zip(fs.verbmem, fast["verbmem_f"].items):
        assert row["output"] == _generate_one(src.model, src.tokenizer, x.prompt, 40)
    assert fast["verbmem_f"].tokens > 0 and fast["mia_auc"].n == len(fs.mia_forget) + len(fs.mia_holdout)
