"""The one-item-at-a-time protocol of MUSE's (and the paper's) scripts, kept as a plain loop (and TOFU's
ROUGE and answer probability the same way, prompts from ``apply_chat_template(..., tokenize=True)``).

It exists to check the batched metrics against (tests) and to measure what batching buys
(``benchmarks/``): one ``model.generate`` per prompt with no padding, the few-shot prefix re-encoded
for every question, token log-probabilities collected one position at a time.
"""

from __future__ import annotations

import numpy as np

from .base import MetricConfig
from .muse import knowmem_prefix, knowmem_prompt, mia_auc, min_k_score
from .rouge import cut_at_stop, rouge_l_f1


def _generate_one(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids.to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             temperature=None, top_p=None, top_k=None, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)[0]


def verbmem(model, tokenizer, fs, cfg: MetricConfig = MetricConfig()) -> float:
    scores = []
    for x in fs.verbmem:
        out = _generate_one(model, tokenizer, x.prompt, cfg.verbmem_max_new_tokens)
        gt_ids = tokenizer(x.gt, return_tensors="pt", add_special_tokens=True).input_ids[:, : cfg.verbmem_max_new_tokens]
        gt = tokenizer.batch_decode(gt_ids, skip_special_tokens=True)[0]
        scores.append(rouge_l_f1(gt, out))
    return float(np.mean(scores) * 100)


def knowmem(model, tokenizer, qa, icl, cfg: MetricConfig = MetricConfig()) -> float:
    scores = []
    for x in qa:
        prompt = knowmem_prompt(knowmem_prefix(icl), x.question)
        out = cut_at_stop(_generate_one(model, tokenizer, prompt, cfg.knowmem_max_new_tokens), cfg.stop_strings)
        scores.append(rouge_l_f1(x.answer, out))
    return float(np.mean(scores) * 100)


def _token_logprobs_one(model, tokenizer, text: str) -> list[float]:
    import torch

    input_ids = torch.tensor(tokenizer.encode(text)).unsqueeze(0).to(model.device)
    with torch.inference_mode():
        logits = model(input_ids).logits
    probs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
    return [probs[0, i, t].item() for i, t in enumerate(input_ids[0][1:])]


def mia(model, tokenizer, fs, cfg: MetricConfig = MetricConfig()) -> float:
    f = [min_k_score(_token_logprobs_one(model, tokenizer, t), cfg.mink_k) for t in fs.mia_forget]
    h = [min_k_score(_token_logprobs_one(model, tokenizer, t), cfg.mink_k) for t in fs.mia_holdout]
    return mia_auc(f, h)


def _tofu_prompt_ids(tokenizer, question: str, chat: bool) -> list[int]:
    """The prompt as ``apply_chat_template(..., tokenize=True)`` gives it (or the plain TOFU prompt with BOS)."""
    if chat:
        out = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    return list(tokenizer(f"Question: {question}\nAnswer: ").input_ids)


def _uses_chat(tokenizer, cfg: MetricConfig) -> bool:
    return bool(getattr(cfg, "chat_template", True) and isinstance(getattr(tokenizer, "chat_template", None), str))


def tofu_rouge(model, tokenizer, items, cfg: MetricConfig = MetricConfig()) -> float:
    """TOFU ROUGE-L recall x 100: one ``generate`` per question (200 new tokens, stopped by EOS)."""
    import torch

    from .tofu import TOFU_MAX_NEW_TOKENS, rouge_l_recall

    chat = _uses_chat(tokenizer, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = []
    for x in items:
        ids = torch.tensor([_tofu_prompt_ids(tokenizer, x.question, chat)], device=model.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=TOFU_MAX_NEW_TOKENS, do_sample=False, num_beams=1, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=pad)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        scores.append(rouge_l_recall(x.answer, text if chat else cut_at_stop(text, cfg.stop_strings)))
    return float(np.mean(scores) * 100)


def tofu_prob(model, tokenizer, items, cfg: MetricConfig = MetricConfig()) -> float:
    """TOFU answer probability: one forward pass per item over prompt + answer + EOS, P(a|q)^(1/|a|)."""
    import torch

    chat = _uses_chat(tokenizer, cfg)
    probs = []
    for x in items:
        prompt = _tofu_prompt_ids(tokenizer, x.question, chat)
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": x.question}], add_generation_prompt=True,
                                                 tokenize=False)
            joint = list(tokenizer(text + x.answer, add_special_tokens=False).input_ids)
        else:
            joint = list(tokenizer(f"Question: {x.question}\nAnswer: {x.answer}").input_ids)
        answer = joint[len(prompt):] if joint[:len(prompt)] == prompt else list(
            tokenizer(x.answer, add_special_tokens=False).input_ids)
        answer = answer + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer], device=model.device)
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
        lp = [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer)]
        probs.append(float(np.exp(np.mean(lp))))
    return float(np.mean(probs))


def evaluate_one_at_a_time(model, tokenizer, fs, names, cfg: MetricConfig = MetricConfig()) -> dict[str, float]:
    """The same metric values as :func:`hubaudit.metrics.evaluate`, computed item by item."""
    out = {}
    if "verbmem_f" in names:
        out["verbmem_f"] = verbmem(model, tokenizer, fs, cfg)
    if "knowmem_f" in names:
        out["knowmem_f"] = knowmem(model, tokenizer, fs.forget_qa, fs.forget_qa_icl, cfg)
    if "knowmem_r" in names:
        out["knowmem_r"] = knowmem(model, tokenizer, fs.retain_qa, fs.retain_qa_icl, cfg)
    if "mia_auc" in names:
        out["mia_auc"] = mia(model, tokenizer, fs, cfg)
    for name, part in (("tofu_rouge_f", "tofu_forget"), ("tofu_rouge_r", "tofu_retain")):
        if name in names:
            out[name] = tofu_rouge(model, tokenizer, getattr(fs, part), cfg)
    for name, part in (("tofu_prob_f", "tofu_forget"), ("tofu_prob_r", "tofu_retain")):
        if name in names:
            out[name] = tofu_prob(model, tokenizer, getattr(fs, part), cfg)
    return out
