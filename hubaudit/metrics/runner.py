"""Batched greedy generation and token log-probabilities: the two primitives every metric uses.

Each text is tokenized once. Items are sorted longest first (an out-of-memory shows up in the first
batch), batched with left padding for generation and right padding for scoring, and returned in the
original order. Greedy decoding, no sampling: deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

DEFAULT_CPU_TOKEN_BUDGET = 16384  # tokens per batch (prompt + new) on CPU
DEFAULT_GPU_TOKEN_BUDGET = 131072


@dataclass
class GenerationOutput:
    texts: list[str]
    prompt_tokens: int
    new_tokens: int


class LMRunner:
    """Runs one model over many texts.

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel``), already on its device, in eval mode.
        tokenizer: its tokenizer.
        batch_size: items per batch, or ``None`` to choose from a token budget (halved on out-of-memory).
        token_budget: tokens per batch when ``batch_size`` is None.
    """

    def __init__(self, model, tokenizer, batch_size: int | None = None, token_budget: int | None = None):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        if token_budget is None:
            token_budget = DEFAULT_GPU_TOKEN_BUDGET if self.device.type == "cuda" else DEFAULT_CPU_TOKEN_BUDGET
        self.token_budget = token_budget
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None:
            pad = self.eos_ids[0] if self.eos_ids else 0
        self.pad_id = pad
        self.max_len = getattr(model.config, "max_position_embeddings", None) or 10**9
        self._torch = torch

    # -- tokenization ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the tokenizer's special tokens (BOS), as MUSE encodes."""
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- batching -------------------------------------------------------------------------------
    def _pad(self, rows: list[list[int]], left: bool):
        """``input_ids`` and ``attention_mask`` [batch, longest] on the device; padding on the left
        (generation: every row ends where new tokens start) or on the right (scoring)."""
        torch = self._torch
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            cols = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[k, cols] = torch.tensor(row)
            mask[k, cols] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _batches(self, lengths: list[int], extra: int) -> list[list[int]]:
        """Indices grouped into batches, longest first; a batch holds ``batch_size`` items or as many
        as fit the token budget at the length of its longest (first) item."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches, start = [], 0
        while start < len(order):
            limit = self.batch_size or max(1, self.token_budget // max(1, lengths[order[start]] + extra))
            batches.append(order[start:start + limit])
            start += limit
        return batches

    def _run_batches(self, lengths, extra, fn: Callable[[list[int]], None], progress=None):
        """Call ``fn`` on each batch; on out-of-memory, halve the batch size and retry that batch."""
        torch = self._torch
        pending = self._batches(lengths, extra)
        while pending:
            batch = pending.pop(0)
            try:
                fn(batch)
                if progress is not None:
                    progress(len(batch))
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(batch) // 2
                self.batch_size = max(1, half)
                pending[:0] = [batch[:half], batch[half:]]

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 progress=None) -> GenerationOutput:
        """Greedy continuations of ``prompts`` (new tokens only, decoded, special tokens skipped).

        A batch stops as soon as every row has produced EOS or one of ``stop_strings``; text after a
        stop string is left for the caller to cut (MUSE cuts it).
        """
        torch = self._torch
        ids = [self.encode(p) for p in prompts]
        for i, x in enumerate(ids):
            if len(x) + max_new_tokens > self.max_len:
                ids[i] = x[-(self.max_len - max_new_tokens):]
        out: list[str | None] = [None] * len(ids)
        counted = {"new": 0}

        def run(batch: list[int]):
            input_ids, mask = self._pad([ids[i] for i in batch], left=True)
            width = input_ids.shape[1]
            kwargs = dict(
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                temperature=None, top_p=None, top_k=None,
                pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None,
            )
            if stop_strings:
                kwargs.update(stop_strings=list(stop_strings), tokenizer=self.tokenizer)
            with torch.inference_mode():
                gen = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            new = gen[:, width:].tolist()
            for r, i in enumerate(batch):
                row = new[r]
                # drop what follows the first EOS (finished rows are padded)
                for k, t in enumerate(row):
                    if t in self.eos_ids:
                        row = row[: k + 1]
                        break
                counted["new"] += len(row)
                out[i] = self.decode(row)

        self._run_batches([len(x) for x in ids], max_new_tokens, run, progress)
        return GenerationOutput([o or "" for o in out], sum(len(x) for x in ids), counted["new"])

    # -- scoring --------------------------------------------------------------------------------
    def token_logprobs(self, texts: Sequence[str], progress=None) -> tuple[list[list[float]], int]:
        """For each text, log p(token_t | tokens_<t) for t = 1..n-1 (the first token is given).

        Returns the per-text lists and the number of tokens processed.
        """
        torch = self._torch
        ids = [self.encode(t)[: self.max_len] for t in texts]
        out: list[list[float] | None] = [None] * len(ids)

        def run(batch: list[int]):
            input_ids, mask = self._pad([ids[i] for i in batch], left=False)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
                target = input_ids[:, 1:]
                lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            lp = lp.cpu()
            for r, i in enumerate(batch):
                out[i] = lp[r, : len(ids[i]) - 1].tolist()

        self._run_batches([len(x) for x in ids], 0, run, progress)
        return [o or [] for o in out], sum(len(x) for x in ids)
