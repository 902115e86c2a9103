"""SURE (Zhang et al., arXiv 2410.16454, Sec. 5): saliency-based unlearning.

1. Saliency: the gradient of the forget loss at the *original* weights, summed over the forget corpus;
   per module (the Frobenius norm of each weight matrix's gradient) or per row (the norm of each row of
   each weight matrix).
2. Mask: keep the units whose saliency is above the given percentile of all units (``threshold=90``:
   the top 10%).
3. Train only there, with a larger learning rate, so the update is large and local: large enough to
   cross quantization bins, so rounding cannot map the model back onto the original.

By default only the weights of the linear layers that quantizers round are candidates (``scope="linear"``:
every ``nn.Linear`` but ``lm_head``), so that a robust result comes from updates that cross quantization
bins, not from hiding the update in the embeddings or the output head, which per-tensor RTN and
bitsandbytes leave in full precision; ``scope="all"`` adds every other weight matrix. 1-D parameters
(norm scales, biases) stay frozen under SURE. The mask is *applied*, not
only built: parameters with no selected unit get ``requires_grad=False`` and never reach the
optimizer; in a partly selected matrix the gradient of unselected rows is zeroed by a hook and, after
every optimizer step, their values are restored from the original, so they stay bit for bit unchanged
whatever the optimizer does (weight decay, momentum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

LEVELS = ("module", "row")


SCOPES = ("linear", "all")


def candidate_params(model, scope: str = "linear") -> dict:
    """name -> parameter of every unit SURE may select: the weights of the ``nn.Linear`` layers that
    quantizers round (all but ``lm_head``) for ``scope="linear"``, every weight matrix (embeddings and
    the output head too) for ``scope="all"``."""
    import torch

    if scope not in SCOPES:
        raise ValueError(f"SURE scope must be one of {SCOPES}, got {scope!r}")
    if scope == "all":
        return {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    return {f"{n}.weight": m.weight for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"}


def forget_gradients(model, ref_model, batches, method: str, beta: float = 0.1, scope: str = "linear") -> dict:
    """The gradient (float32) of ``method``'s forget loss at the model's current weights, summed over
    ``batches`` (an iterable of ``(ids, mask, labels)``), for every weight matrix."""
    import torch

    from .losses import forget_term

    params = candidate_params(model, scope)
    grads = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    was_training = model.training
    model.train()
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            forget_term(method, model, ref_model, batch, beta).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.float()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(req[n])
        model.train(was_training)
    return grads


def saliency(grads: dict, level: str = "module") -> dict:
    """Saliency per unit: name -> a 0-d tensor (module) or a 1-D tensor, one value per row (row)."""
    if level not in LEVELS:
        raise ValueError(f"saliency level must be one of {LEVELS}, got {level!r}")
    if level == "module":
        return {n: g.norm() for n, g in grads.items()}
    return {n: g.reshape(g.shape[0], -1).norm(dim=1) for n, g in grads.items()}


@dataclass
class SaliencyMask:
    """Which units train. ``rows[name]`` is a bool tensor over the matrix's rows (all True for a
    selected module); names absent from ``rows`` are frozen."""

    level: str
    threshold: float
    cutoff: float
    rows: dict = field(default_factory=dict)
    n_units: int = 0
    n_selected: int = 0

    def selected_fraction(self, model) -> float:
        """Fraction of all the model's parameters that may change."""
        params = dict(model.named_parameters())
        sel = sum(int(r.sum()) * (params[n].numel() // params[n].shape[0]) for n, r in self.rows.items())
        return sel / sum(p.numel() for p in model.parameters())

    def summary(self, model) -> dict:
        return {"level": self.level, "threshold": self.threshold, "cutoff": self.cutoff,
                "units": self.n_units, "selected_units": self.n_selected,
                "selected_params_fraction": round(self.selected_fraction(model), 6),
                "modules": sorted(self.rows)}


def build_mask(sal: dict, threshold: float, level: str = "module") -> SaliencyMask:
    """Keep the units whose saliency is strictly above the ``threshold`` percentile of all units
    (``0 <= threshold < 100``); at least the single most salient unit is always kept."""
    import torch

    if not 0 <= threshold < 100:
        raise ValueError(f"SURE threshold is a percentile in [0, 100), got {threshold}")
    flat = torch.cat([s.reshape(-1).float().cpu() for s in sal.values()])
    cutoff = float(torch.quantile(flat, threshold / 100.0)) if flat.numel() > 1 else float("-inf")
    if not (flat > cutoff).any():
        cutoff = float(flat.max()) - 1e-30  # ties at the top: keep the maximum
    rows = {}
    for n, s in sal.items():
        keep = (s.reshape(-1).float().cpu() > cutoff)
        if level == "module":
            if bool(keep.item()):
                rows[n] = None  # filled with the row count when applied
        elif keep.any():
            rows[n] = keep
    return SaliencyMask(level=level, threshold=threshold, cutoff=cutoff, rows=rows, n_units=int(flat.numel()),
                        n_selected=int((flat > cutoff).sum()))


class MaskedParams:
    """Applies a :class:`SaliencyMask` to a model for training (see the module docstring).

    ``params`` are what the optimizer gets; call :meth:`restore` after every optimizer step.
    """

    def __init__(self, model, mask: SaliencyMask):
        import torch

        self.mask = mask
        named = dict(model.named_parameters())
        for n, p in named.items():
            p.requires_grad_(n in mask.rows)
        self.params = []
        self._partial = []  # (param, row mask broadcastable, original values)
        self._hooks = []
        for n in sorted(mask.rows):
            p = named[n]
            rows = mask.rows[n]
            if rows is None:
                rows = torch.ones(p.shape[0], dtype=torch.bool)
                mask.rows[n] = rows
            self.params.append(p)
            if not bool(rows.all()):
                m = rows.to(p.device).view(-1, *([1] * (p.dim() - 1)))
                self._partial.append((p, m, p.detach().clone()))
                self._hooks.append(p.register_hook(lambda g, m=m: g * m.to(g.dtype)))

    def restore(self) -> None:
        """Put the unselected rows of partly selected matrices back to their original values."""
        import torch

        with torch.no_grad():
            for p, m, orig in self._partial:
                p.copy_(torch.where(m, p, orig))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
