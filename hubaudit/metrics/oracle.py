"""The test oracle: the one-item-at-a-time protocol of MUSE's (and the paper's) scripts, kept as a plain
loop (and TOFU's ROUGE and answer probability the same way, prompts from
``apply_chat_template(..., tokenize=True)``).

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


def _chat_ids(tokenizer, messages, generation: bool, cfg: MetricConfig) -> list[int]:
    kw = {"date_string": cfg.date_string} if cfg.date_string else {}
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _oun_ids(tokenizer, question: str, answer: str, cfg: MetricConfig) -> tuple[list[int], list[int]]:
    """(prompt ids, whole-conversation ids + EOS) as open-unlearning's ``preprocess_chat_instance`` builds them."""
    if _uses_chat(tokenizer, cfg):
        chat = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        chat += [{"role": "user", "content": question}]
        prompt = _chat_ids(tokenizer, chat, True, cfg)
        joint = _chat_ids(tokenizer, chat + [{"role": "assistant", "content": answer}], False, cfg)
    else:
        from .prompts import PromptFormat

        text = PromptFormat.for_tokenizer(tokenizer, False, cfg.plain_prompt).plain.format(question=question)
        prompt, joint = list(tokenizer(text).input_ids), list(tokenizer(text + answer).input_ids)
    if joint[-1] != tokenizer.eos_token_id:
        joint = joint + [tokenizer.eos_token_id]
    return prompt, joint


def _uses_chat(tokenizer, cfg: MetricConfig) -> bool:
    return bool(getattr(cfg, "chat_template", True) and isinstance(getattr(tokenizer, "chat_template", None), str))


def tofu_rouge(model, tokenizer, items, cfg: MetricConfig = MetricConfig()) -> float:
    """TOFU ROUGE-L recall x 100: one ``generate`` per question (200 new tokens, stopped by EOS), against the
    decoded conversation minus the decoded prompt, as open-unlearning's ``eval_text_similarity``."""
    import torch

    from .prompts import clean_up_spaces
    from .tofu import TOFU_MAX_NEW_TOKENS, rouge_l_recall

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = []
    for x in items:
        prompt, joint = _oun_ids(tokenizer, x.question, x.answer, cfg)
        ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=TOFU_MAX_NEW_TOKENS, do_sample=False, num_beams=1, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=pad)
        text = clean_up_spaces(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)).strip()
        full, inp = (clean_up_spaces(tokenizer.decode(t, skip_special_tokens=True)) for t in (joint, prompt))
        scores.append(rouge_l_recall(full.replace(inp, "").strip(), text))
    return float(np.mean(scores) * 100)


def tofu_prob(model, tokenizer, items, cfg: MetricConfig = MetricConfig()) -> float:
    """TOFU answer probability: one forward pass per item over the whole conversation, the tokens after the
    prompt's length scored (open-unlearning's labels), exp(-mean loss)."""
    import torch

    probs = []
    for x in items:
        prompt, joint = _oun_ids(tokenizer, x.question, x.answer, cfg)
        ids = torch.tensor([joint], device=model.device)
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
        lp = [logp[i - 1, joint[i]].item() for i in range(len(prompt), len(joint))]
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
