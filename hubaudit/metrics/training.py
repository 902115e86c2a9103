"""The rows a training attack (``relearn``) trains on, in the prompt forms the metrics score, so that the
attack itself knows no metric: the audit builds them here and hands them over
(:class:`hubaudit.attacks.TrainingRows`).

``data="forget"``: the first ``frac`` (at least one item) of every forget part the metrics score item by
item: ``knowmem/forget_qa`` as ``Question: q\\nAnswer: a``, ``tofu/forget`` as prompt + answer (the chat
template when the tokenizer has one), ``mcq/forget`` as the WMDP prompt + the right letter, ``verbmem/forget``
as prompt + continuation. Those items are still evaluated, but the audit computes the cell's regained figures
on the other items only. ``data="retain"``: every item of the retain parts (``knowmem/retain_qa``,
``tofu/retain``, ``mcq/retain``, ``privleak/retain``), nothing held out.
"""

from __future__ import annotations

import math

# How each part becomes a training row (in this order): a question and answer, a chat prompt and answer, a
# multiple-choice prompt and the right letter, a passage (prompt + continuation), a plain text.
ROW_FORMS = {"forget_qa": "qa", "tofu_forget": "chat", "mcq": "mcq", "verbmem": "passage",
             "retain_qa": "qa", "tofu_retain": "chat", "mcq_retain": "mcq", "mia_retain": "text"}
RETAIN_PARTS = ("retain_qa", "tofu_retain", "mcq_retain", "mia_retain")


def forget_parts() -> list[str]:
    """The forget parts a relearning attack trains on: those the verdict's metrics score item by item
    (:func:`hubaudit.metrics.scores.forget_parts`), in :data:`ROW_FORMS`' order."""
    from .scores import forget_parts as scored

    parts = set(scored())
    return [p for p in ROW_FORMS if p in parts]


def n_trained(n: int, frac: float) -> int:
    return max(1, math.ceil(n * frac)) if n else 0


def training_rows(fs, tokenizer, data: str, frac: float, answers: bool = False) -> tuple[list, dict[str, int]]:
    """Token-id rows to train on, and how many leading items of each forget part they use. ``answers``: each
    row an ``(ids, start)`` pair, its first ``start`` ids the prompt (question, passage prefix, MCQ prompt),
    for a loss on the answer alone (:func:`hubaudit.trainrows.pad_batch` labels the prompt -100)."""
    from .prompts import PromptFormat, encode_text
    from .wmdp import LETTERS, mcq_prompt, split_pair

    eos = tokenizer.eos_token_id
    rows: list[list[int]] = []
    trained: dict[str, int] = {}

    def text_row(text: str, prompt: str | None = None):
        ids = encode_text(tokenizer, text) + ([eos] if eos is not None else [])
        if not answers:
            return ids
        start = len(encode_text(tokenizer, prompt)) if prompt else 0
        return ids, max(0, min(start, len(ids) - 1))

    def pair_row(ctx: list[int], cont: list[int]):
        return (ctx + cont, len(ctx)) if answers else ctx + cont

    chat = PromptFormat.for_tokenizer(tokenizer)
    parts = forget_parts() if data == "forget" else RETAIN_PARTS
    for part in parts:
        items = getattr(fs, part, None)
        if not items:
            continue
        k = n_trained(len(items), frac) if data == "forget" else len(items)
        if data == "forget":
            trained[part] = k
        for x in items[:k]:
            form = ROW_FORMS[part]
            if form == "qa":
                rows.append(text_row(f"Question: {x.question}\nAnswer: {x.answer}", f"Question: {x.question}\nAnswer:"))
            elif form == "chat":
                ctx, cont = chat.pair(tokenizer, x.question, x.answer)
                rows.append(pair_row(ctx, cont))
            elif form == "mcq":
                ctx, cont = split_pair(tokenizer, mcq_prompt(x.question, x.choices, x.subject or fs.meta.get("subject", "")),
                                       " " + LETTERS[x.answer])
                rows.append(pair_row(ctx, cont))
            elif form == "passage":
                rows.append(text_row(x.prompt + x.gt, x.prompt))
            else:  # plain texts
                rows.append(text_row(x))
    return rows, trained
