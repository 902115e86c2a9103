"""``prune``: magnitude pruning, a recovery attack of kind ``pruning``. In every linear layer the given
fraction of weights with the smallest absolute value is set to zero (unstructured, per layer, the classic
magnitude criterion), as a user might do to shrink or speed up a published model. Like rounding to a 4-bit
grid it erases small weight changes, and an unlearning method that hid knowledge behind small changes can
lose them here too.

Spec: ``prune:FRACTION[:head]``, FRACTION in (0, 1): ``prune:0.2`` zeroes the 20% smallest weights of each
linear layer; ``head`` also prunes ``lm_head`` (kept otherwise, as RTN keeps it). Embeddings, norms and biases
are kept. Exactly ``round(FRACTION x n)`` weights of a layer with n weights are zeroed: ties at the cut are
broken by position, so the result is deterministic.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Attack, AttackSpec, register


def parse_prune(spec: AttackSpec) -> tuple[float, bool]:
    if not spec.args:
        raise SpecError(f"'{spec}' needs a fraction of weights to zero, for example prune:0.2")
    try:
        frac = float(spec.args[0])
    except ValueError:
        raise SpecError(f"'{spec}': the fraction must be a number between 0 and 1, for example prune:0.2") from None
    if not 0 < frac < 1:
        raise SpecError(f"'{spec}': the fraction must be between 0 and 1 (exclusive), got {spec.args[0]}")
    head = False
    for opt in spec.args[1:]:
        if opt == "head":
            head = True
        else:
            raise SpecError(f"'{spec}': unknown option '{opt}' (use head to prune lm_head too)")
    return frac, head


def smallest_mask(w, frac: float):
    """A boolean mask of ``round(frac x w.numel())`` entries of ``w`` with the smallest ``|w|`` (ties at the
    cut broken by position)."""
    import torch

    a = w.detach().abs().flatten().float()
    k = int(round(frac * a.numel()))
    mask = torch.zeros_like(a, dtype=torch.bool)
    if k == 0:
        return mask.view(w.shape)
    cut = a.kthvalue(k).values
    mask |= a < cut
    need = k - int(mask.sum())
    if need > 0:
        mask[(a == cut).nonzero().flatten()[:need]] = True
    return mask.view(w.shape)


@register
class PruneAttack(Attack):
    name = "prune"
    kind = "pruning"
    summary = "magnitude pruning: zero the given fraction of smallest |w| in each linear layer"
    examples = ("prune:0.2", "prune:0.5")
    noun = "pruning"
    report_note = "prune: magnitude pruning, the smallest weights of each linear layer set to zero"

    def validate(self, spec: AttackSpec) -> None:
        parse_prune(spec)

    def apply(self, model, spec: AttackSpec):
        import torch

        frac, head = parse_prune(spec)
        layers, zeroed, total = 0, 0, 0
        with torch.no_grad():
            for name, module in model.named_modules():
                if not isinstance(module, torch.nn.Linear):
                    continue
                if not head and name.split(".")[-1] == "lm_head":
                    continue
                w = module.weight
                mask = smallest_mask(w, frac)
                w.masked_fill_(mask, 0)
                layers += 1
                zeroed += int(mask.sum())
                total += w.numel()
        return model, {"fraction": frac, "criterion": "smallest |w| in each linear layer (unstructured)",
                       "lm_head": head, "linear_layers_pruned": layers, "weights_zeroed": zeroed,
                       "sparsity": round(zeroed / total, 6) if total else 0.0}
