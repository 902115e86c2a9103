"""Extraction strength and the answers' probability, the two metrics the verdict counts beside ROUGE: computed in
one teacher-forced pass, they equal their definitions (greedy generation from every prefix; the probability of
each answer token given what precedes it, one item at a time)."""

from __future__ import annotations

import math

import pytest

from factories import make_forget_dir, make_random_model

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """A tiny Llama trained a little on half of the forget passages and answers: some come back whole, some in
    part, some not at all (float32, so that greedy picks are no near-ties)."""
    import torch

    from hubaudit.forget import load_forget_set
    from hubaudit.modeling import ModelSource

    root = tmp_path_factory.mktemp("memorized")
    folder = make_random_model(root / "model", seed=3, hidden=64, layers=2)
    fs = load_forget_set(make_forget_dir(root / "forget", n=12))
    src = ModelSource(folder, device="cpu", dtype="float32")
    model, tok = src.model, src.tokenizer
    texts = [x.prompt + x.gt for x in fs.verbmem[::2]] + [f"Question: {x.question}\nAnswer: {x.answer}"
                                                          for x in fs.forget_qa[::2]]
    rows = [tok(t)["input_ids"] for t in texts]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(200):
        r = rows[step % len(rows)]
        ids = torch.tensor([r])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return src, fs


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ``ids``, the whole sequence re-read at every step (no cache: the plain definition)."""
    import torch

    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
    return out


def _slow_es(model, ctx: list[int], cont: list[int]) -> float:
    """open-unlearning's loop with generation in place of the argmax check: the first k whose greedy
    continuation from ctx + cont[:k] is cont[k:], else k = L - 1; ES = 1 - k / L."""
    n = len(cont)
    for k in range(n):
        if _greedy(model, ctx + cont[:k], n - k) == cont[k:]:
            break
    return 1 - k / n


def test_extraction_strength_equals_greedy_generation_from_every_prefix(memorized):
    from hubaudit.metrics import MetricConfig, evaluate
    from hubaudit.metrics.extraction import passage_ids
    from hubaudit.metrics.runner import LMRunner

    src, fs = memorized
    cfg = MetricConfig(verbmem_max_new_tokens=MAX_TOKENS)
    res = evaluate(src.model, src.tokenizer, fs, ["es_f"], cfg, batch_size=5)["es_f"]
    runner = LMRunner(src.model, src.tokenizer)
    slow = []
    for x, row in zip(fs.verbmem, res.items):
        ctx, cont = passage_ids(runner, x.prompt, x.gt, MAX_TOKENS)
        assert row["tokens"] == len(cont) == MAX_TOKENS
        slow.append(_slow_es(src.model, ctx, cont) * 100)
        assert row["score"] == pytest.approx(slow[-1]), x.prompt
    # the passages span the range: some come back whole from the prompt, some not even in part
    assert max(slow) == 100.0 and min(slow) < 50
    assert res.value == pytest.approx(sum(slow) / len(slow))
    assert res.n == len(fs.verbmem)


def test_extraction_strength_follows_open_unlearning_at_the_edges():
    from hubaudit.metrics.extraction import extraction_prefix, extraction_strength

    assert extraction_strength([True] * 4) == 1.0  # the prompt alone brings it all back
    assert extraction_strength([False, True, True, True]) == 0.75
    assert extraction_strength([True, False, True, True]) == 0.5  # a miss after the start counts
    # nothing comes back: open-unlearning's loop ends at k = L - 1, the same as "only the last token"
    assert extraction_prefix([False] * 4) == 3 and extraction_strength([False] * 4) == 0.25
    assert extraction_strength([False, False, False, True]) == 0.25
    assert extraction_strength([]) == 0.0


def test_answer_probability_is_the_geometric_mean_of_the_answer_tokens(memorized):
    """P(a|q)^(1/|a|) x 100 in KnowMem's prompt, one question at a time with the model's own logits; the answer's
    tokens are those the joint encoding has after the prompt's."""
    import torch

    from hubaudit.metrics import MetricConfig, evaluate
    from hubaudit.metrics.muse import knowmem_prefix, knowmem_prompt

    src, fs = memorized
    res = evaluate(src.model, src.tokenizer, fs, ["prob_f"], MetricConfig(), batch_size=4)["prob_f"]
    tok = src.tokenizer
    prefix = knowmem_prefix(fs.forget_qa_icl)
    for x, row in zip(fs.forget_qa, res.items):
        prompt = knowmem_prompt(prefix, x.question)  # as KnowMem's generation is fed it, trailing space included
        ctx = tok(prompt)["input_ids"]
        whole = tok(prompt + x.answer)["input_ids"]
        if whole[: len(ctx)] != ctx:  # the answer's first token swallows the prompt's space: the answer alone
            whole = ctx + tok(x.answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(src.model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        answer = [float(lp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))]
        assert row["answer_tokens"] == len(answer)
        assert row["score"] == pytest.approx(math.exp(sum(answer) / len(answer)) * 100, rel=1e-4)
    trained, untrained = res.items[::2], res.items[1::2]
    assert sum(r["score"] for r in trained) > sum(r["score"] for r in untrained)  # it learned those answers
