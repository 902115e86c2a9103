"""Batched greedy generation and token log-probabilities: the two primitives every metric uses.

Each text is tokenized once. Items are sorted longest first (an out-of-memory shows up in the first
batch), batched with left padding for generation and right padding for scoring, and returned in the
original order. Greedy decoding, no sampling: deterministic.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger("hubaudit")

DEFAULT_CPU_TOKEN_BUDGET = 16384  # tokens per batch (prompt + new) on CPU
DEFAULT_GPU_TOKEN_BUDGET = 131072


_LOGGED: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.warning("hubaudit: %s", message)


def _cache_names() -> list[str]:
    """The names a transformers model's ``forward`` takes its KV cache under, the installed
    transformers' own default first (``ALL_CACHE_NAMES[0]``: ``past_key_values`` up to 5.23, ``cache``
    from 5.24), then the other one (a model written for the other API)."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES

        default = [ALL_CACHE_NAMES[0]] if ALL_CACHE_NAMES and ALL_CACHE_NAMES[0] in ("cache", "past_key_values") else []
    except ImportError:  # pragma: no cover - a transformers without the list
        default = []
    return default + [n for n in ("cache", "past_key_values") if n not in default]


def cache_argument(model) -> tuple[str | None, list[str]]:
    """The keyword under which ``model.forward`` takes a KV cache (None if it takes none), and the
    names of its parameters."""
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return None, []
    return next((n for n in _cache_names() if n in params), None), params


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
        fast: ``None`` (default) decodes with hubaudit's own greedy loop (shared-prefix KV cache, finished
            rows leave the batch) unless the model's generation config needs ``model.generate`` or its
            ``forward`` takes no KV cache (under the name the installed transformers uses, ``cache`` from
            5.24, ``past_key_values`` before, or the other one); ``False`` always uses batched
            ``model.generate``; ``True`` uses the loop even where the generation config asks for logits
            processing. :meth:`decoding_path` says which path runs and why; a fallback is logged once.
    """

    def __init__(self, model, tokenizer, batch_size: int | None = None, token_budget: int | None = None,
                 fast: bool | None = None):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.token_budget = token_budget  # None: chosen per pass from free memory (see _budget)
        self.fast = fast  # None: our greedy loop unless the model needs generate(); False: always generate()
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
        self._decoding: tuple[str, str | None] | None = None
        self._cache_kw = "past_key_values"
        self.generated = False  # set once generate()/generate_ids() ran (the report records the path)

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

    def bytes_per_token(self, scoring: bool) -> int:
        """Memory one token of a batch needs beyond the weights: its KV cache in every layer, one layer's
        activations, and (scoring) its float32 log-probability; on the ``whole`` scoring path also its
        float32 logits over the vocabulary, log-softmax included (the ``sliced`` path holds those for one
        slice of positions only: a fixed ``logprobs.SLICE_BYTES``, taken off the free memory in
        :meth:`_budget`)."""
        c = self.model.config
        c = c.get_text_config(decoder=True) if hasattr(c, "get_text_config") else c
        hidden = getattr(c, "hidden_size", 4096)
        layers = getattr(c, "num_hidden_layers", 32)
        heads = getattr(c, "num_attention_heads", 32) or 32
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        head_dim = getattr(c, "head_dim", None) or hidden // heads
        inter = getattr(c, "intermediate_size", None) or 4 * hidden
        vocab = getattr(c, "vocab_size", 32000)
        elem = next(self.model.parameters()).element_size()
        elem = elem if elem in (2, 4) else 2  # quantized weights: activations are 16-bit
        per = 2 * layers * kv_heads * head_dim * elem + (4 * hidden + 3 * inter) * elem
        if scoring:
            per += 4 + (3 * vocab * 4 if self.scoring_path()[0] == "whole" else 0)
        return per

    def _budget(self, extra: int) -> int:
        """Tokens per batch: the caller's ``token_budget``, else as many as half the free memory holds
        (GPU: free device memory; CPU: MemAvailable), capped at a size past which batching gains nothing."""
        if self.token_budget is not None:
            return self.token_budget
        from ..modeling import available_memory

        cap = DEFAULT_GPU_TOKEN_BUDGET if self.device.type == "cuda" else DEFAULT_CPU_TOKEN_BUDGET
        free = available_memory("cuda" if self.device.type == "cuda" else "cpu")
        if not free:
            return cap
        scoring = extra == 0
        if scoring and self.scoring_path()[0] == "sliced":
            from ..logprobs import SLICE_BYTES

            free -= 3 * SLICE_BYTES  # one slice's logits, their float32 copy and logsumexp's work
        return max(256, min(cap, int(0.5 * max(free, 0) / self.bytes_per_token(scoring=scoring))))

    def _batches(self, lengths: list[int], extra: int) -> list[list[int]]:
        """Indices grouped into batches, longest first; a batch holds ``batch_size`` items or as many
        as fit the token budget at the length of its longest (first) item."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        budget = self._budget(extra) if not self.batch_size else 0
        batches, start = [], 0
        while start < len(order):
            limit = self.batch_size or max(1, budget // max(1, lengths[order[start]] + extra))
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
    def decoding_path(self) -> tuple[str, str | None]:
        """``("fast", None)`` when hubaudit's own greedy loop decodes this model, else ``("generate",
        reason)``: batched ``model.generate`` runs instead (same greedy outputs, slower), and ``reason``
        says why in words. Decided once per runner."""
        if self._decoding is None:
            reason = self._fast_blocker()
            self._decoding = ("fast", None) if reason is None else ("generate", reason)
            if reason is not None and self.fast is None:
                _log_once(f"decoding with model.generate, not hubaudit's fast loop "
                          f"(the shared few-shot prefix is encoded for every prompt; slower): {reason}")
        return self._decoding

    def _fast_ok(self) -> bool:
        return self.decoding_path()[0] == "fast"

    def _fast_blocker(self) -> str | None:
        """Why our own greedy loop cannot stand in for greedy ``model.generate`` on this model, or None.

        It cannot when the caller switched it off, when the model's generation config asks for logits
        processing (``generate`` applies it), or when its ``forward`` takes no KV cache or position ids."""
        if self.fast is False:
            return "switched off by the caller (fast=False)"
        cfg = getattr(self.model, "generation_config", None)
        if cfg is not None and self.fast is None:
            checks = {
                "repetition_penalty": (getattr(cfg, "repetition_penalty", None) or 1.0) != 1.0,
                "no_repeat_ngram_size": bool(getattr(cfg, "no_repeat_ngram_size", None)),
                "bad_words_ids": bool(getattr(cfg, "bad_words_ids", None)),
                "suppress_tokens": bool(getattr(cfg, "suppress_tokens", None)),
                "begin_suppress_tokens": bool(getattr(cfg, "begin_suppress_tokens", None)),
                "forced_bos_token_id": getattr(cfg, "forced_bos_token_id", None) is not None,
                "forced_eos_token_id": getattr(cfg, "forced_eos_token_id", None) is not None,
                "min_new_tokens": bool(getattr(cfg, "min_new_tokens", None)),
                "min_length": (getattr(cfg, "min_length", None) or 0) > 0,
                "sequence_bias": bool(getattr(cfg, "sequence_bias", None)),
                "encoder_repetition_penalty": (getattr(cfg, "encoder_repetition_penalty", None) or 1.0) != 1.0,
            }
            asked = [k for k, v in checks.items() if v]
            if asked:
                return f"the model's generation config asks for logits processing ({', '.join(asked)})"
        name, params = cache_argument(self.model)
        if name is None:
            return (f"{type(self.model).__name__}.forward takes no KV-cache argument (looked for "
                    f"{' or '.join(_cache_names())}; it takes {', '.join(params[:8]) or 'nothing named'})")
        if "position_ids" not in params:
            return f"{type(self.model).__name__}.forward takes no position_ids"
        self._cache_kw = name
        return None

    def _forward(self, cache, **kw):
        """One forward pass with ``cache`` passed under the name this model's forward takes."""
        return self.model(**{self._cache_kw: cache}, use_cache=True, **kw, **self._keep_last)

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 progress=None, shared_prefix: str | None = None) -> GenerationOutput:
        """Greedy continuations of ``prompts`` (new tokens only, decoded, special tokens skipped).

        A row stops at EOS or as soon as its new text holds one of ``stop_strings``; finished rows leave
        the batch at once (their KV cache rows are dropped), so every generated token is computed once.
        Text after a stop string is left for the caller to cut (MUSE cuts it).

        ``shared_prefix``: a text every prompt starts with (KnowMem's few-shot block). Its KV cache is
        computed once and reused by every batch, for the prompts whose tokens start with the prefix's
        own tokens (checked per prompt; the others are encoded whole), so the outputs are the same.
        """
        return self.generate_ids([self.encode(p) for p in prompts], max_new_tokens, stop_strings, progress,
                                 self.encode(shared_prefix) if shared_prefix else None)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_strings: Sequence[str] = (),
                     progress=None, prefix_ids: Sequence[int] | None = None) -> GenerationOutput:
        """:meth:`generate` on prompts given as token ids (a chat template's ids, which must not get a
        second BOS); ``prefix_ids``: ids every prompt starts with, whose KV cache is shared."""
        ids = [list(x) for x in prompts]
        for i, x in enumerate(ids):
            if len(x) + max_new_tokens > self.max_len:
                ids[i] = x[-(self.max_len - max_new_tokens):]
        self.generated = True
        if not self._fast_ok():
            return self._generate_hf(ids, max_new_tokens, stop_strings, progress)
        out: list[str | None] = [None] * len(ids)
        counted = {"new": 0, "prompt": 0}
        prefix_ids = list(prefix_ids or [])
        if len(prefix_ids) < 8:  # not worth a cache
            prefix_ids = []
        P = len(prefix_ids)
        use_prefix = [bool(P) and len(x) > P and x[:P] == prefix_ids for x in ids]
        prefix_cache = self._prefill_prefix(prefix_ids) if any(use_prefix) else None
        if prefix_cache is not None:
            counted["prompt"] += P

        for group in (True, False):
            members = [i for i in range(len(ids)) if use_prefix[i] == group]
            if not members:
                continue
            rows = [ids[i][P:] if group else ids[i] for i in members]

            def run(batch: list[int], rows=rows, members=members, group=group):
                texts, n_new = self._greedy_batch([rows[b] for b in batch], max_new_tokens, stop_strings,
                                                  prefix_cache if group else None, P if group else 0)
                for b, t in zip(batch, texts):
                    out[members[b]] = t
                counted["new"] += n_new
                counted["prompt"] += sum(len(rows[b]) for b in batch)

            self._run_batches([len(r) + (P if group else 0) for r in rows], max_new_tokens, run, progress)
        return GenerationOutput([o or "" for o in out], counted["prompt"], counted["new"])

    def _prefill_prefix(self, prefix_ids: list[int]):
        """The KV cache of the shared prefix, computed once (batch of one)."""
        torch = self._torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        x = torch.tensor([prefix_ids], device=self.device)
        with torch.inference_mode():
            self._forward(cache, input_ids=x, attention_mask=torch.ones_like(x))
        return cache

    @property
    def _keep_last(self) -> dict:
        """``logits_to_keep=1`` where the model takes it: only the last position's logits are needed."""
        if not hasattr(self, "_keep_kw"):
            self._keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        return self._keep_kw

    def _greedy_batch(self, rows: list[list[int]], max_new_tokens: int, stop_strings: Sequence[str],
                      prefix_cache, P: int) -> tuple[list[str], int]:
        """One batch of greedy decoding with a KV cache: prefill (left padded, after the shared prefix's
        cache when given), then one token per step for the rows still running."""
        import copy

        torch = self._torch
        from transformers import DynamicCache

        B = len(rows)
        input_ids, mask = self._pad(rows, left=True)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            if B > 1:
                cache.batch_repeat_interleave(B)
            mask = torch.cat([torch.ones((B, P), dtype=mask.dtype, device=mask.device), mask], dim=1)
        else:
            cache = DynamicCache(config=self.model.config)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = pos[:, -1] + 1
        pos = pos[:, P:]
        eos = set(self.eos_ids)
        new: list[list[int]] = [[] for _ in range(B)]
        alive = list(range(B))
        n_new = 0
        with torch.inference_mode():
            logits = self._forward(cache, input_ids=input_ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            for step in range(max_new_tokens):
                nxt = logits.argmax(-1)
                toks = nxt.tolist()
                keep = []
                for j, r in enumerate(alive):
                    t = toks[j]
                    new[r].append(t)
                    n_new += 1
                    if t in eos:
                        continue
                    if stop_strings and any(s in self.decode(new[r]) for s in stop_strings):
                        continue
                    keep.append(j)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(alive):
                    idx = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(idx)
                    mask, next_pos, nxt = mask[idx], next_pos[idx], nxt[idx]
                    alive = [alive[j] for j in keep]
                mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
                logits = self._forward(cache, input_ids=nxt[:, None], attention_mask=mask,
                                       position_ids=next_pos[:, None]).logits[:, -1]
                next_pos = next_pos + 1
        texts = []
        for row in new:
            for k, t in enumerate(row):  # drop what follows the first EOS
                if t in eos:
                    row = row[: k + 1]
                    break
            texts.append(self.decode(row))
        return texts, n_new

    def _generate_hf(self, ids: list[list[int]], max_new_tokens: int, stop_strings: Sequence[str],
                     progress=None) -> GenerationOutput:
        """Batched ``model.generate`` (greedy, left padding): the path for models whose generation
        config asks for logits processors, or whose forward takes no cache or position ids."""
        torch = self._torch
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
        ids = [self.encode(t)[: self.max_len] for t in texts]
        return self.token_logprobs_ids(ids, progress), sum(len(x) for x in ids)

    def token_logprobs_ids(self, rows: Sequence[Sequence[int]], progress=None) -> list[list[float]]:
        """:meth:`token_logprobs` on token ids: one forward pass per batch, log-probs in one gather."""
        from ..logprobs import token_logprobs

        torch = self._torch
        ids = [list(r)[: self.max_len] for r in rows]
        out: list[list[float] | None] = [None] * len(ids)

        def run(batch: list[int]):
            input_ids, mask = self._pad([ids[i] for i in batch], left=False)
            with torch.inference_mode():
                lp = token_logprobs(self.model, input_ids, mask).cpu()
            for r, i in enumerate(batch):
                out[i] = lp[r, : len(ids[i]) - 1].tolist()

        self._run_batches([len(x) for x in ids], 0, run, progress)
        return [o or [] for o in out]

    def greedy_matches_ids(self, rows: Sequence[Sequence[int]], progress=None) -> list[list[bool]]:
        """For each row of token ids, whether greedy decoding picks token t given tokens before it, for t =
        1..n-1: one teacher-forced forward pass per batch (:func:`hubaudit.logprobs.greedy_matches`)."""
        from ..logprobs import greedy_matches

        torch = self._torch
        ids = [list(r)[: self.max_len] for r in rows]
        out: list[list[bool] | None] = [None] * len(ids)

        def run(batch: list[int]):
            input_ids, mask = self._pad([ids[i] for i in batch], left=False)
            with torch.inference_mode():
                hit = greedy_matches(self.model, input_ids, mask).cpu()
            for r, i in enumerate(batch):
                out[i] = hit[r, : len(ids[i]) - 1].tolist()

        self._run_batches([len(x) for x in ids], 0, run, progress)
        return [o or [] for o in out]

    def scoring_path(self) -> tuple[str, str | None]:
        """``("sliced", None)`` when log-probabilities come from the model's hidden states through its
        output layer a slice of positions at a time (never a float32 ``[batch, positions, vocabulary]``
        tensor), else ``("whole", reason)``: the model's own logits, all at once (a model whose forward
        transforms its logits). See :mod:`hubaudit.logprobs`."""
        from ..logprobs import slicing_check

        return slicing_check(self.model)

    def continuation_logprobs(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                              progress=None) -> list[list[float]]:
        """For each (context ids, continuation ids): log p of every continuation token given what precedes
        it. A context too long for the model is cut on the left."""
        rows, starts = [], []
        for ctx, cont in pairs:
            ctx, cont = list(ctx), list(cont)
            if len(ctx) + len(cont) > self.max_len:
                ctx = ctx[-(self.max_len - len(cont)):]
            rows.append(ctx + cont)
            starts.append(len(ctx))
        lps = self.token_logprobs_ids(rows, progress)
        # token t of a row is predicted at position t - 1
        return [lp[s - 1:] for lp, s in zip(lps, starts)]
