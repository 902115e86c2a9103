"""``hqq:BITS``: Half-Quadratic Quantization through the hqq package, calibration-free, CPU or GPU.

HQQ (Badri and Shaji, 2023) rounds each group of weights to an affine grid (scale and zero point)
and then optimises the zero point and scale by a half-quadratic solver that minimises an lp error
(p < 1) of the weights themselves: no calibration data. transformers 5.23 does not wire HQQ into
``from_pretrained``, so this backend calls the package directly: every ``nn.Linear`` except
``lm_head`` becomes ``hqq.core.quantize.HQQLinear`` built from ``BaseQuantizeConfig``.

Spec grammar: ``hqq:BITS[:gN]`` with BITS in 1, 2, 3, 4, 5, 6, 8 and group size N (default 64, the
hqq default; groups run along the input columns, ``axis=1``). Compute dtype: the source's (float32 on
CPU). The pure-PyTorch forward is used (hqq's ATen/CUDA extension is optional and not needed).
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Backend, QuantSpec, register
from .gptq import check_group_size

BITS = (1, 2, 3, 4, 5, 6, 8)
DEFAULT_GROUP = 64


def parse_hqq(spec: QuantSpec) -> tuple[int, int]:
    if not spec.args:
        raise SpecError(f"'{spec}' needs a bit width, for example hqq:4 or hqq:4:g64")
    try:
        bits = int(spec.args[0])
    except ValueError:
        raise SpecError(f"'{spec}': the bit width must be one of {', '.join(map(str, BITS))}") from None
    if bits not in BITS:
        raise SpecError(f"'{spec}': hqq supports {', '.join(map(str, BITS))} bits, not {bits}")
    group = DEFAULT_GROUP
    for opt in spec.args[1:]:
        o = opt.lower()
        if o.startswith("g") and o[1:].isdigit() and int(o[1:]) > 0:
            group = int(o[1:])
            if group % 8:
                raise SpecError(f"'{spec}': hqq needs a group size that is a multiple of 8")
        else:
            raise SpecError(f"'{spec}': unknown option '{opt}'; use gN for the group size")
    return bits, group


@register
class HQQBackend(Backend):
    """HQQ via the hqq package: no calibration data, affine grid with optimised zero points."""

    name = "hqq"
    summary = "HQQ (half-quadratic, calibration-free) via the hqq package; 1-8 bits, groups of 64"
    examples = ("hqq:4", "hqq:2", "hqq:3", "hqq:8", "hqq:4:g128")
    requires = ("hqq",)
    extra = "hqq"

    def validate(self, spec: QuantSpec) -> None:
        parse_hqq(spec)

    def apply(self, model, spec: QuantSpec):
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQBackend as Forward, HQQLinear

        bits, group = parse_hqq(spec)
        check_group_size(model, group, spec)
        param = next(model.parameters())
        dtype, device = param.dtype, str(param.device)
        cfg = BaseQuantizeConfig(nbits=bits, group_size=group)
        HQQLinear.set_backend(Forward.PYTORCH)
        targets = [(name, mod) for name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] != "lm_head"]
        mods = dict(model.named_modules())
        for name, lin in targets:
            parent_name, _, child = name.rpartition(".")
            parent = mods[parent_name] if parent_name else model
            setattr(parent, child, HQQLinear(lin, quant_config=cfg, compute_dtype=dtype, device=device, del_orig=True))
        wq = cfg["weight_quant_params"]
        return model, {
            "bits": bits,
            "group_size": group,
            "axis": wq["axis"],
            "optimize": wq["optimize"],
            "round_zero": wq["round_zero"],
            "channel_wise": wq["channel_wise"],
            "compute_dtype": str(dtype).replace("torch.", ""),
            "forward": "HQQBackend.PYTORCH",
            "linear_layers_quantized": len(targets),
            "lm_head": False,
            "call": "hqq.core.quantize.HQQLinear(linear, BaseQuantizeConfig(nbits, group_size))",
        }
