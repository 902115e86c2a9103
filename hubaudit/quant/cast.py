"""``cast:fp32|fp16|bf16[:compute=fp32|native]``: the model's weights rounded to another floating-point type.

What the cell means for the result is the weights' values in that type. It computes in that type where the
hardware does so natively (:func:`hubaudit.modeling.native_half`: a GPU, a CPU with AMX or AVX512-BF16),
else in float32 with the weights rounded to the type's values (``compute=fp32`` forces this,
``compute=native`` forces computing in the type itself, emulated and slow where it is not native). The
cell's settings say ``weights`` and ``compute``. A cast that changes no weight and computes in the
full-precision cell's own dtype is that cell (``identical_to_full_precision``): a bf16 checkpoint audited in
float32 on a CPU without native bf16 has ``cast:bf16`` identical to its full-precision cell.
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, QuantSpec, register

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
COMPUTE = {"fp32": "float32", "float32": "float32", "native": None}


def _parse(spec: QuantSpec) -> tuple[str, str]:
    """(weights dtype, requested compute: auto, float32 or the weights' dtype)."""
    if not spec.args or spec.args[0].lower() not in DTYPES or len(spec.args) > 2:
        raise SpecError(f"'{spec}': use cast:fp32, cast:fp16 or cast:bf16 (optionally :compute=fp32 or :compute=native)")
    weights = DTYPES[spec.args[0].lower()]
    requested = "auto"
    if len(spec.args) == 2:
        key, eq, val = spec.args[1].lower().partition("=")
        if key != "compute" or not eq or val not in COMPUTE:
            raise SpecError(f"'{spec}': the second part is compute=fp32 (float32 matmuls) or compute=native "
                            f"(compute in {weights} itself)")
        requested = COMPUTE[val] or weights
    return weights, requested


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@register
class CastBackend(Backend):
    name = "cast"
    summary = "round the weights to fp32, fp16 or bf16; compute in that type where native, else in float32"
    examples = ("cast:bf16", "cast:fp16", "cast:fp32", "cast:bf16:compute=fp32")

    def validate(self, spec: QuantSpec) -> None:
        _parse(spec)

    def precision(self, device: str, spec: QuantSpec):
        """The cell's :class:`hubaudit.modeling.Precision` on ``device``."""
        from ..modeling import choose_precision

        weights, requested = _parse(spec)
        return choose_precision(device, weights, requested)

    def apply(self, model, spec: QuantSpec):
        device = next(model.parameters()).device.type
        prec = self.precision(device, spec)
        return self._cast(model, prec), self._settings(prec)

    @staticmethod
    def _cast(model, prec):
        import torch

        from ..modeling import round_weights_

        model = model.to(getattr(torch, prec.compute))
        if prec.emulated:
            round_weights_(model, prec.weights)
        return model

    @staticmethod
    def _settings(prec, identical: bool = False) -> dict:
        out = {"dtype": prec.weights, "weights": prec.weights, "compute": prec.compute, "compute_reason": prec.reason}
        if identical:
            out["identical_to_full_precision"] = True
        return out

    def cache_key(self, spec: QuantSpec, source) -> dict:
        return {"compute": self.precision(source.device, spec).compute}

    def quantize(self, source, spec: QuantSpec):
        from ..modeling import rounding_changes

        prec = self.precision(source.device, spec)
        if _name(source.compute_dtype()) == prec.compute and rounding_changes(source.model, prec.weights) == 0:
            # The full-precision model already holds these values and computes in this dtype (fp32 on a CPU; a
            # bf16 checkpoint computed in float32 where bf16 is not native): the cell is the full-precision cell.
            return source.model, self._settings(prec, identical=True)
        return self._cast(source.fresh_copy(), prec), self._settings(prec)
