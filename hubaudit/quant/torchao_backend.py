"""``torchao:int8|int4``: PyTorch's torchao weight-only quantization (``torchao.quantization.quantize_``).

- ``torchao:int8``  ``Int8WeightOnlyConfig``: symmetric int8, one scale per output row; activations stay
  in the model's dtype.
- ``torchao:int4[:gN]``  int4 weight-only, asymmetric (scale and zero point) per group of N input
  columns (default 128; 32, 64, 128 or 256). The layout depends on the device, as it does for users:
  on CPU ``PrototypeInt4WeightOnlyConfig`` (``Int4OpaqueTensor``, the ``_weight_int4pack_mm_for_cpu``
  kernel); on CUDA ``Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")`` (tinygemm),
  which needs bfloat16 weights, so the model is cast to bfloat16 there. Both choose the grid with
  tinygemm's min/max rule.

``lm_head`` stays in full precision. ``set_inductor_config=False``: quantizing must not change global
torch.compile settings for the rest of the audit. A layer whose width the group size does not divide
is an error here (torchao itself would silently leave it unquantized).
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, QuantSpec, register
from .gptq import check_group_size

INT4_GROUPS = (32, 64, 128, 256)


def parse_torchao(spec: QuantSpec) -> tuple[str, int | None]:
    if not spec.args or spec.args[0].lower() not in ("int8", "int4"):
        raise SpecError(f"'{spec}': use torchao:int8 or torchao:int4 (torchao:int4:g64 for another group size)")
    kind = spec.args[0].lower()
    group = 128 if kind == "int4" else None
    for opt in spec.args[1:]:
        o = opt.lower()
        if kind == "int4" and o.startswith("g") and o[1:].isdigit() and int(o[1:]) in INT4_GROUPS:
            group = int(o[1:])
        else:
            hint = "gN with N in 32, 64, 128, 256" if kind == "int4" else "no options (int8 is per output row)"
            raise SpecError(f"'{spec}': unknown option '{opt}'; torchao:{kind} takes {hint}")
    return kind, group


@register
class TorchAOBackend(Backend):
    """torchao weight-only int8 / int4 (CPU or CUDA layout)."""

    name = "torchao"
    summary = "torchao weight-only: int8 per row, int4 per group (CPU opaque layout, CUDA tinygemm layout)"
    examples = ("torchao:int8", "torchao:int4", "torchao:int4:g32")
    requires = ("torchao",)
    extra = "torchao"

    def validate(self, spec: QuantSpec) -> None:
        parse_torchao(spec)

    def apply(self, model, spec: QuantSpec):
        import torch
        from torchao.quantization import quantize_

        kind, group = parse_torchao(spec)
        n_linear = check_group_size(model, group or 0, spec)
        device = next(model.parameters()).device
        settings: dict = {"lm_head": False}
        if kind == "int8":
            from torchao.quantization import Int8WeightOnlyConfig

            cfg = Int8WeightOnlyConfig(set_inductor_config=False)
            settings.update({"config": "Int8WeightOnlyConfig", "granularity": "per output row", "symmetric": True})
        elif device.type == "cuda":
            from torchao.quantization import Int4WeightOnlyConfig

            model = model.to(torch.bfloat16)  # tinygemm needs bfloat16
            cfg = Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d", set_inductor_config=False)
            settings.update({"config": "Int4WeightOnlyConfig", "packing": "tile_packed_to_4d (tinygemm, CUDA)",
                             "model_dtype": "bfloat16"})
        else:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

            cfg = PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
            settings.update({"config": "PrototypeInt4WeightOnlyConfig", "packing": "opaque (_weight_int4pack_mm_for_cpu)"})
        if kind == "int4":
            settings.update({"group_size": group, "granularity": f"group of {group} input columns",
                             "qparams": "tinygemm (asymmetric: scale and zero point from min/max)"})

        def is_target(mod, fqn):
            return isinstance(mod, torch.nn.Linear) and fqn.split(".")[-1] != "lm_head"

        quantize_(model, cfg, filter_fn=is_target)
        done = [n for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head" and type(m.weight) is not torch.nn.Parameter
                and type(m.weight) is not torch.Tensor]
        if len(done) != n_linear:
            raise RuntimeError(f"{spec}: torchao quantized {len(done)} of {n_linear} Linear layers")
        settings.update({"bits": 8 if kind == "int8" else 4, "linear_layers_quantized": len(done),
                         "weight_tensor": type(getattr(dict(model.named_modules())[done[0]], "weight")).__name__,
                         "set_inductor_config": False,
                         "call": f"torchao.quantization.quantize_(model, {settings['config']}(...))"})
        return model, settings
