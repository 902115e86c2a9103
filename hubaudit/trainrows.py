"""Token rows for training, shared by everything that trains (the demo world, ``hubaudit unlearn``, the
relearning attack): texts as BOS + text + EOS ids, MUSE's few-shot QA shape, and right-padded batches."""

from __future__ import annotations

import random


def qa_text(pairs: list[dict[str, str]]) -> str:
    """MUSE's few-shot shape: ``Question: q\\nAnswer: a`` joined by blank lines (no trailing separator)."""
    return "\n\n".join(f"Question: {p['question']}\nAnswer: {p['answer']}" for p in pairs)


class Rows:
    """Training rows of one part (forget or retain): passages and few-shot QA groups, as token ids
    (BOS + text + EOS). QA groups are re-drawn every epoch from the part's QA pool."""

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


def pad_batch(rows: list[list[int]], pad_id: int):
    """``(ids, attention_mask, labels)`` of right-padded rows; labels are -100 on padding."""
    import torch

    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):  # right padding for training
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask, labels
