"""``cast:fp32|fp16|bf16``: the model's weights and compute in another floating-point type."""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, QuantSpec, register

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@register
class CastBackend(Backend):
    name = "cast"
    summary = "cast weights and compute to fp32, fp16 or bf16 (no quantization grid)"
    examples = ("cast:bf16", "cast:fp16", "cast:fp32")

    def validate(self, spec: QuantSpec) -> None:
        if len(spec.args) != 1 or spec.args[0].lower() not in DTYPES:
            raise SpecError(f"'{spec}': use cast:fp32, cast:fp16 or cast:bf16")

    def apply(self, model, spec: QuantSpec):
        import torch

        dtype = getattr(torch, DTYPES[spec.args[0].lower()])
        return model.to(dtype), {"dtype": str(dtype).replace("torch.", "")}

    def quantize(self, source, spec: QuantSpec):
        import torch

        dtype = getattr(torch, DTYPES[spec.args[0].lower()])
        if all(p.dtype == dtype for p in source.model.parameters()):
            # Already computed in this type (fp32 on CPU): the cell is the full-precision cell.
            return source.model, {"dtype": str(dtype).replace("torch.", ""), "identical_to_full_precision": True}
        return self.apply(source.fresh_copy(), spec)
