"""The residual stream of a decoder-only causal LM, for the white-box attacks (:mod:`.ablate`, :mod:`.probe`):
where its parts are, per-layer means over held-out rows, the answer loss of rows with a direction projected
out or read through the logit lens, and folding a direction out of the weights that write to the stream.

Layout: every model whose decoder (``model.get_decoder()``) has ``embed_tokens``, ``layers`` and ``norm``, and
whose output embedding is ``lm_head`` (Llama, Mistral, Qwen2/3, Gemma, Phi-3, OLMo...). "Layer ``l``" is the
residual stream at the output of decoder layer ``l`` (0-based): ``hidden_states[l + 1]`` in transformers'
terms, before the final norm.
"""

from __future__ import annotations

from ..errors import SpecError

# the last name of the modules inside a decoder layer that add to the residual stream
WRITERS = ("o_proj", "down_proj", "out_proj", "dense_4h_to_h", "c_proj", "fc2", "w2")


def decoder_parts(model, what: str):
    """``(embed_tokens, layers, norm, lm_head)``, or a :class:`SpecError` naming the layout ``what`` needs."""
    try:
        dec = model.get_decoder()
    except Exception:  # noqa: BLE001 - transformers raises for layouts it does not know
        dec = None
    parts = (getattr(dec, "embed_tokens", None), getattr(dec, "layers", None), getattr(dec, "norm", None),
             model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None)
    if any(p is None for p in parts):
        raise SpecError(f"{what} needs a decoder laid out as model.embed_tokens / model.layers / model.norm / "
                        f"lm_head (Llama, Mistral, Qwen, Gemma...); {type(model).__name__} is not")
    return parts


def _out(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, h):
    return (h, *output[1:]) if isinstance(output, tuple) else h


def batches(rows: list, pad_id: int, batch: int, device):
    """``(ids, mask, labels)`` on ``device`` for each batch of ``rows`` (right-padded, labels -100 on the prompt)."""
    from ..trainrows import pad_batch

    for i in range(0, len(rows), batch):
        ids, mask, labels = pad_batch(rows[i:i + batch], pad_id)
        yield ids.to(device), mask.to(device), labels.to(device)


def _hooked_pass(model, layers, rows: list, pad_id: int, batch: int, on_output) -> int:
    """Run ``model`` over ``rows`` with a forward hook on every decoder layer: ``on_output(i, h, w)`` gets
    layer ``i``'s output ``h`` (float32) and the token weights ``w`` (1 for every token but the first of
    each row and padding, 0 there). Returns the number of tokens weighted."""
    import torch

    device = next(model.parameters()).device
    state: dict = {}

    def hook(i):
        def fn(_m, _i, output):
            on_output(i, _out(output).float(), state["w"])
        return fn

    count = 0
    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for ids, mask, _ in batches(rows, pad_id, batch, device):
                w = mask.float()
                w[:, 0] = 0
                state["w"] = w
                count += int(w.sum())
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return count


def layer_means(model, rows: list, pad_id: int, batch: int = 8):
    """Mean residual stream at the output of every decoder layer, float32 ``[layers, hidden]``, over every
    token of ``rows`` but the first of each (the BOS/first position, whose activations are outliers many
    times larger than the rest), and the number of tokens averaged."""
    import torch

    _, layers, _, _ = decoder_parts(model, "the white-box attacks")
    device = next(model.parameters()).device
    sums = torch.zeros(len(layers), model.config.hidden_size, dtype=torch.float32, device=device)

    def add(i, h, w):
        sums[i] += (h * w[..., None]).sum((0, 1))

    count = _hooked_pass(model, layers, rows, pad_id, batch, add)
    return sums / max(count, 1), count


def project_out_hooks(model, direction):
    """Forward hooks that remove ``direction`` (a unit vector) from the embeddings' output and every decoder
    layer's output: the residual stream never holds it (the hooked equivalent of :func:`fold_out`).
    Returns the handles (``.remove()`` each to undo)."""
    embed, layers, _, _ = decoder_parts(model, "ablate:direction")

    def fn(_m, _i, output):
        h = _out(output)
        d = direction.to(h.dtype)
        return _replace(output, h - (h @ d)[..., None] * d)

    return [embed.register_forward_hook(fn)] + [layer.register_forward_hook(fn) for layer in layers]


def answer_loss(model, rows: list, pad_id: int, batch: int = 8) -> float:
    """Mean NLL per answer token of ``rows`` (``(ids, start)`` pairs: the loss is on ``ids[start:]``)."""
    import torch

    from ..logprobs import token_logprobs

    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, labels in batches(rows, pad_id, batch, device):
            lp = token_logprobs(model, ids, mask, labels)
            total -= float(lp.sum())
            n += int((labels[:, 1:] != -100).sum())
    return total / max(n, 1)


def lens_losses(model, rows: list, pad_id: int, batch: int = 8) -> list[float]:
    """Mean NLL per answer token of ``rows`` read through the logit lens at every decoder layer: the layer's
    residual stream through the final norm and ``lm_head``. The last entry is the model's own loss."""
    import torch
    import torch.nn.functional as F

    _, layers, norm, head = decoder_parts(model, "probe:logit-lens")
    device = next(model.parameters()).device
    totals = [0.0] * len(layers)
    n = 0
    state: dict = {}

    def hook(i):
        def fn(_m, _i, output):
            h = _out(output)[state["pos"]]  # [N, hidden]: the states that predict an answer token
            logits = head(norm(h)).float()
            totals[i] += float(F.cross_entropy(logits, state["tgt"], reduction="sum"))
        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for ids, mask, labels in batches(rows, pad_id, batch, device):
                pos = torch.zeros_like(labels, dtype=torch.bool)
                pos[:, :-1] = labels[:, 1:] != -100  # position t predicts token t + 1
                state["pos"], state["tgt"] = pos, labels[:, 1:][labels[:, 1:] != -100]
                n += int(pos.sum())
                model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [t / max(n, 1) for t in totals]


def fold_out(model, direction) -> int:
    """Orthogonalize every weight that writes to the residual stream against ``direction`` (a unit vector),
    in place: the embeddings' rows, and the output matrix (and bias) of every module named in
    :data:`WRITERS` whose output is the hidden size (``o_proj`` and ``down_proj`` in Llama): ``W <- W - d d^T W``
    (Arditi et al. 2024's weight orthogonalization). A tied ``lm_head`` is untied first, so the read-out is
    kept. Computed in float32, stored in each weight's dtype. Returns how many matrices were changed."""
    import torch

    embed, layers, _, head = decoder_parts(model, "ablate:direction")
    hidden = model.config.hidden_size
    changed = 0
    with torch.no_grad():
        d = direction.float().to(embed.weight.device)
        if head is not None and head.weight is embed.weight:
            head.weight = torch.nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
        e = embed.weight.float()
        embed.weight.copy_((e - (e @ d)[:, None] * d[None, :]).to(embed.weight.dtype))
        changed += 1
        for layer in layers:
            for name, mod in layer.named_modules():
                if not isinstance(mod, torch.nn.Linear) or name.split(".")[-1] not in WRITERS or mod.out_features != hidden:
                    continue
                dd = d.to(mod.weight.device)
                w = mod.weight.float()
                mod.weight.copy_((w - dd[:, None] * (dd[None, :] @ w)).to(mod.weight.dtype))
                if mod.bias is not None:
                    b = mod.bias.float()
                    mod.bias.copy_((b - (b @ dd) * dd).to(mod.bias.dtype))
                changed += 1
    return changed


def projection_share(model, direction, rows: list, pad_id: int, batch: int = 8) -> float:
    """The largest, over decoder layers, mean ``|h . d| / |h|`` of the residual stream on ``rows`` (first
    position and padding excluded): how much of ``direction`` the stream still holds (0 when it holds none)."""
    _, layers, _, _ = decoder_parts(model, "ablate:direction")
    sums = [0.0] * len(layers)

    def add(i, h, w):
        share = (h @ direction.float().to(h.device)).abs() / h.norm(dim=-1).clamp(min=1e-12)
        sums[i] += float((share * w).sum())

    count = _hooked_pass(model, layers, rows, pad_id, batch, add)
    return max(s / max(count, 1) for s in sums)
