"""``quanto:int8|int4|int2``: weight-only quantization through optimum-quanto (``quantize`` + ``freeze``).

optimum-quanto's own documentation marks the package as in maintenance mode (bug fixes only; its
authors point new work to other backends). It is still what older transformers ``QuantoConfig`` code
and many notebooks use, so the audit covers it.

How quanto rounds (0.2.7): ``int8`` is symmetric, one absmax scale per output row; ``int4`` and ``int2``
are affine (scale and shift from each group's min and max, ``MaxOptimizer``) over groups of 128 input
columns, falling back to 96, 64 or 32 when 128 does not divide the width, and to one group per row
when the layer has at most 128 input columns. The settings record the group size of every layer
shape. ``lm_head`` stays in full precision; activations are not quantized.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, QuantSpec, register

QTYPES = {"int8": "qint8", "int4": "qint4", "int2": "qint2"}


def _outside_inference_mode(model) -> None:
    """Run ``model.forward`` under ``no_grad`` but outside ``torch.inference_mode``.

    optimum-quanto 0.2.7's packed int4/int2 weight tensors raise "Cannot set version_counter for
    inference tensor" when used inside ``torch.inference_mode`` (the metrics run in it); ``no_grad`` gives
    the same numbers.
    """
    import functools

    import torch

    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return inner(*args, **kwargs)

    model.forward = forward


@register
class QuantoBackend(Backend):
    """optimum-quanto weight-only int8 / int4 / int2 (package in maintenance mode)."""

    name = "quanto"
    summary = "optimum-quanto weight-only int8/int4/int2 (package in maintenance mode)"
    examples = ("quanto:int8", "quanto:int4", "quanto:int2")
    requires = ("optimum.quanto",)
    extra = "quanto"

    def validate(self, spec: QuantSpec) -> None:
        if len(spec.args) != 1 or spec.args[0].lower() not in QTYPES:
            raise SpecError(f"'{spec}': use quanto:int8, quanto:int4 or quanto:int2")

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None:
            return "needs optimum-quanto: pip install 'hubaudit[quanto]'"
        return super().unavailable_reason()

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for pkg in ("torch", "optimum-quanto"):
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        return out

    def apply(self, model, spec: QuantSpec):
        import torch
        from optimum import quanto

        kind = spec.args[0].lower()
        qtype = getattr(quanto, QTYPES[kind])
        quanto.quantize(model, weights=qtype, exclude=["lm_head", "*.lm_head"])
        quanto.freeze(model)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, quanto.QModuleMixin)]
        if not layers:
            raise RuntimeError(f"{spec}: optimum-quanto quantized no layer")
        if any(n.split(".")[-1] == "lm_head" for n, _ in layers):
            raise RuntimeError(f"{spec}: lm_head was quantized although it was excluded")
        groups = {}
        for _, m in layers:
            key = f"{m.weight.shape[1]} in -> {m.weight.shape[0]} out" if m.weight.dim() == 2 else str(tuple(m.weight.shape))
            groups[key] = m.weight_group_size or "per output row"
        not_linear = [n for n, m in layers if not isinstance(m, torch.nn.Linear)]
        if kind != "int8":
            _outside_inference_mode(model)
        return model, {
            "weights": QTYPES[kind],
            "bits": int(kind[3:]),
            "scheme": "symmetric absmax per output row" if kind == "int8" else "affine min/max (MaxOptimizer) per group",
            "group_size_by_shape": groups,
            "activations": None,
            "linear_layers_quantized": len(layers) - len(not_linear),
            "other_layers_quantized": not_linear,
            "lm_head": False,
            "maintenance_mode": True,
            "forward": ("no_grad, outside torch.inference_mode (quanto's packed int2/int4 weights fail inside it)"
                        if kind != "int8" else "as is"),
            "call": f"optimum.quanto.quantize(model, weights={QTYPES[kind]}, exclude='lm_head'); freeze(model)",
        }
