"""Token log-probabilities without the vocabulary-sized tensor.

A causal LM's forward turns every position's hidden state into logits over the whole vocabulary: for a
batch of 16 texts of 2,000 tokens and SmolLM2's 49k vocabulary that is 6 GB in float32, more than ten
times the model. Scoring needs one number per position (the target token's log-probability), so here
the model runs without its output layer, and the output layer turns the hidden states into logits a
slice of positions at a time (``SLICE_BYTES`` of float32 logits at most). With gradients (relearning,
unlearning) each slice is checkpointed: its logits are recomputed in the backward pass instead of kept.

A model whose forward changes its logits after the output layer (soft-capping, scaling) would be scored
wrongly that way, so :func:`slicing_check` compares both ways on a short probe once per model, and
:func:`token_logprobs` falls back to the model's own whole logits where they disagree.
"""

from __future__ import annotations

import logging
import weakref

log = logging.getLogger("hubaudit")

SLICE_BYTES = 256 << 20  # float32 logits of one slice of positions, at most

_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SAID: set[str] = set()


def vocab_size(model) -> int:
    c = model.config
    c = c.get_text_config(decoder=True) if hasattr(c, "get_text_config") else c
    return getattr(c, "vocab_size", None) or 32000


def decoder_and_head(model):
    """The model without its output layer (its forward returns ``last_hidden_state``) and that layer."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        raise LookupError("no separate decoder and output layer")
    return base, head


def right_padded_mask(mask):
    """None where ``mask`` is right padding (every row ones, then zeros) or no padding at all: in a causal
    model a real token never attends to the padding after it, so its outputs are the same without the mask,
    and without one the attention runs its causal kernel (no [batch, heads, positions, positions] mask is
    built; on CPU several times faster for 2,000-token texts). Else ``mask`` itself."""
    if mask is None:
        return None
    if bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool((mask[:, 0] == 1).all()):
        return None
    return mask


def _targets(ids, labels):
    """Targets ``[B, T-1]`` (positions 1..T-1) and the mask of scored ones."""
    tgt = (ids if labels is None else labels)[:, 1:]
    valid = tgt != -100
    return tgt.clamp(min=0), valid


def whole_token_logprobs(model, ids, mask, labels=None):
    """log p(token_t | tokens_<t), float32 ``[B, T-1]``, from the model's own logits (all at once);
    0 where ``labels`` is -100."""
    import torch

    logits = model(input_ids=ids, attention_mask=right_padded_mask(mask), use_cache=False).logits[:, :-1].float()
    tgt, valid = _targets(ids, labels)
    lp = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return lp * valid


def _slice_lp(head, hidden, tgt):
    import torch

    logits = head(hidden).float()
    return logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _step(model, batch: int, slice_bytes: int | None) -> int:
    return max(1, (slice_bytes or SLICE_BYTES) // (4 * vocab_size(model) * max(1, batch)))


def _decoder_hidden(base, ids, mask):
    """The decoder's last hidden states at positions 0..T-2 (each predicts the next token)."""
    return base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1]


def _by_slices(fn, head, hidden, step: int, *per_position):
    """``fn(head, hidden[:, s:e], *(x[:, s:e] for x in per_position))`` for every slice of ``step``
    positions, concatenated along the positions; checkpointed (recomputed in the backward pass) when
    gradients flow into ``hidden``."""
    import torch
    from torch.utils.checkpoint import checkpoint

    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for s in range(0, hidden.shape[1], step):
        args = (head, hidden[:, s:s + step], *(x[:, s:s + step] for x in per_position))
        parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return torch.cat(parts, dim=1)


def sliced_token_logprobs(model, ids, mask, labels=None, slice_bytes: int | None = None):
    """:func:`whole_token_logprobs` through the output layer a slice of positions at a time. With
    gradients enabled, every slice is checkpointed (recomputed in the backward pass)."""
    base, head = decoder_and_head(model)
    hidden = _decoder_hidden(base, ids, right_padded_mask(mask))
    tgt, valid = _targets(ids, labels)
    return _by_slices(_slice_lp, head, hidden, _step(model, tgt.shape[0], slice_bytes), tgt) * valid


def _slice_kl(head, hidden, ref_logits):
    import torch.nn.functional as F

    lg = F.log_softmax(head(hidden).float(), -1)
    return F.kl_div(lg, F.log_softmax(ref_logits.float(), -1), log_target=True, reduction="none").sum(-1)


def sliced_kl(model, ref_model, ids, mask, labels, slice_bytes: int | None = None):
    """``KL(p_ref || p_model)`` of the next-token distributions per position, float32 ``[B, T-1]`` (0
    where ``labels`` is -100), a slice of positions at a time; gradients flow into ``model`` only."""
    import torch

    base, head = decoder_and_head(model)
    rbase, rhead = decoder_and_head(ref_model)
    mask = right_padded_mask(mask)
    hidden = _decoder_hidden(base, ids, mask)
    with torch.no_grad():
        rhidden = _decoder_hidden(rbase, ids, mask)
    _, valid = _targets(ids, labels)

    def slice_kl(head, h, rh):  # the reference's logits of the slice, without gradient
        with torch.no_grad():
            ref = rhead(rh)
        return _slice_kl(head, h, ref)

    return _by_slices(slice_kl, head, hidden, _step(model, valid.shape[0], slice_bytes), rhidden) * valid


def slicing_check(model) -> tuple[str, str | None]:
    """``("sliced", None)`` where :func:`sliced_token_logprobs` equals the model's own logits on a probe
    of 32 tokens (to 1e-3 in float32, 0.1 in 16-bit or quantized weights: one bf16 rounding step), else
    ``("whole", reason)``. Checked once per model object."""
    try:
        return _CHECKED[model]
    except (KeyError, TypeError):
        pass
    import torch

    n = min(32, vocab_size(model) - 1)
    device = next(model.parameters()).device
    x = torch.arange(1, n + 1, device=device)[None]
    m = torch.ones_like(x)
    name = type(model).__name__
    was_training = getattr(model, "training", False)
    try:
        model.eval()
        with torch.inference_mode():
            sliced = sliced_token_logprobs(model, x, m)
            whole = whole_token_logprobs(model, x, m)
        tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.1
        diff = float((sliced - whole).abs().max())
        result = ("sliced", None) if diff <= tol else (
            "whole", f"{name}'s forward transforms its logits (its output layer alone differs by {diff:.3g})")
    except Exception as e:  # noqa: BLE001 - any model without the usual layout is scored the plain way
        result = ("whole", f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        if was_training:
            model.train()
    if result[0] == "whole" and result[1] not in _SAID:
        _SAID.add(result[1])
        log.warning("hubaudit: log-probabilities from the model's whole logits (more memory): %s", result[1])
    try:
        _CHECKED[model] = result
    except TypeError:
        pass
    return result


def token_logprobs(model, ids, mask, labels=None):
    """log p(token_t | tokens_<t), float32 ``[B, T-1]`` (0 where ``labels`` is -100): sliced where
    :func:`slicing_check` allows, else from the whole logits. Differentiable when gradients are on."""
    if slicing_check(model)[0] == "sliced":
        return sliced_token_logprobs(model, ids, mask, labels)
    return whole_token_logprobs(model, ids, mask, labels)


def _slice_match(head, hidden, tgt):
    return head(hidden).float().argmax(-1) == tgt


def greedy_matches(model, ids, mask):
    """Whether greedy decoding would pick each next token: ``argmax p(. | tokens_<t) == token_t``, bool
    ``[B, T-1]``, teacher-forced in one forward pass (sliced where :func:`slicing_check` allows)."""
    tgt, _ = _targets(ids, None)
    if slicing_check(model)[0] == "sliced":
        base, head = decoder_and_head(model)
        hidden = _decoder_hidden(base, ids, right_padded_mask(mask))
        return _by_slices(_slice_match, head, hidden, _step(model, tgt.shape[0], None), tgt)
    logits = model(input_ids=ids, attention_mask=right_padded_mask(mask), use_cache=False).logits[:, :-1]
    return logits.float().argmax(-1) == tgt


def kl_per_token(model, ref_model, ids, mask, labels):
    """``KL(p_ref || p_model)`` per position ``[B, T-1]``: sliced where both models allow it."""
    if slicing_check(model)[0] == "sliced" and slicing_check(ref_model)[0] == "sliced":
        return sliced_kl(model, ref_model, ids, mask, labels)
    import torch
    import torch.nn.functional as F

    mask = right_padded_mask(mask)
    lg = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    with torch.no_grad():
        lr = ref_model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    _, valid = _targets(ids, labels)
    kl = F.kl_div(F.log_softmax(lg, -1), F.log_softmax(lr, -1), log_target=True, reduction="none").sum(-1)
    return kl * valid
