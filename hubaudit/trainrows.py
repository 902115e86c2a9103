"""Token rows for training, shared by everything that trains (the demo world, ``hubaudit unlearn``, the
relearning attack): texts as ids, MUSE's few-shot QA shape, and right-padded batches.

A text's row is ``tokenizer(text).input_ids`` + EOS: the tokenizer's own special tokens, then EOS. Whether
that starts with BOS is the tokenizer's choice, as when the metrics encode a prompt (``add_special_tokens``):
the demo's tokenizer and Llama-2's add BOS (``<s>``); SmolLM2's (a GPT-2-style byte-level BPE whose
``bos_token`` is ``<|im_start|>`` in the Instruct model) adds none, so its rows are text + ``<|im_end|>``, its
EOS. A row is a list of ids, every one scored; or a pair ``(ids, start)`` whose first ``start`` ids are
context only (a question before the answer the loss is on), which :func:`pad_batch` labels ``-100``."""

from __future__ import annotations

import random


def qa_text(pairs: list[dict[str, str]]) -> str:
    """MUSE's few-shot shape: ``Question: q\\nAnswer: a`` joined by blank lines (no trailing separator)."""
    return "\n\n".join(f"Question: {p['question']}\nAnswer: {p['answer']}" for p in pairs)


class Rows:
    """Training rows of one part (forget or retain): passages and few-shot QA groups, as token ids
    (``tokenizer(text).input_ids`` + EOS, see the module docstring). QA groups are re-drawn every epoch from
    the part's QA pool."""

    def __init__(self, tok, passages: list[str], qa: list[dict[str, str]], group: tuple[int, int], copies: int = 1):
        self.tok = tok
        self.passages = [self._ids(t) for t in passages] * copies
        self.qa = qa
        self.group = group

    def _ids(self, text: str) -> list[int]:
        return self.tok(text).input_ids + [self.tok.eos_token_id]

    def epoch(self, rng: random.Random) -> list[list[int]]:
        pool = list(self.qa)
        rng.shuffle(pool)
        rows = list(self.passages)
        i = 0
        while i < len(pool):
            k = rng.randint(*self.group)
            rows.append(self._ids(qa_text(pool[i:i + k])))
            i += k
        rng.shuffle(rows)
        return rows


def row_ids(row) -> tuple[list[int], int]:
    """``(ids, start)`` of a row: a list of ids (``start`` 0) or an ``(ids, start)`` pair."""
    if isinstance(row, tuple):
        return list(row[0]), int(row[1])
    return row, 0


def pad_batch(rows: list, pad_id: int):
    """``(ids, attention_mask, labels)`` of right-padded rows; labels are -100 on padding and on a row's
    context ids (the first ``start`` of an ``(ids, start)`` row)."""
    import torch

    rows = [row_ids(r) for r in rows]
    n = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (r, start) in enumerate(rows):  # right padding for training
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, start: len(r)] = torch.tensor(r[start:])
        mask[i, : len(r)] = 1
    return ids, mask, labels
