"""Round-to-nearest (RTN) quantization: the paper's own quantizer, in plain torch.

Zhang et al. (arXiv 2410.16454) define, for N bits,

    Q(w) = D * round(w / D),    D = max|w| / 2^(N-1)

with the maximum taken over the whole tensor. The formula is applied exactly as written (no clamp: the
largest weight lands on the grid point +-2^(N-1)). Finer variants take the maximum over each output
row (``ch``) or over groups of ``g`` consecutive input columns (``gN``), as GPTQ-style kernels do.

Spec grammar: ``rtn:BITS[:gN|:ch][:head]``

- ``rtn:4``        per-tensor, 4 bits (the paper's setting)
- ``rtn:4:ch``     per output channel
- ``rtn:4:g64``    per group of 64 input columns
- ``rtn:4:head``   also quantize ``lm_head`` (kept in full precision otherwise)

Only ``nn.Linear`` weights are quantized; embeddings, norms and biases are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SpecError
from .base import Backend, QuantSpec, register

if TYPE_CHECKING:  # pragma: no cover
    import torch


def rtn_step(w: "torch.Tensor", bits: int, group_size: int | None = None, per_channel: bool = False) -> "torch.Tensor":
    """The step D of the RTN grid, broadcastable against ``w`` (2-D, shape [out, in]).

    Per tensor: a scalar; per channel: [out, 1]; per group: [out, ceil(in / g), 1] over the reshaped
    weight (when ``g`` does not divide ``in``, the last group of each row is shorter: it holds the
    remaining columns). A zero maximum (an all-zero tensor, row or group) gives D = 1, so zeros stay zeros.
    """
    import torch

    w = w.detach().float()
    levels = 2 ** (bits - 1)
    if group_size:
        amax = _groups(w, group_size).abs().amax(dim=-1, keepdim=True)
    elif per_channel:
        amax = w.abs().amax(dim=1, keepdim=True)
    else:
        amax = w.abs().max()
    d = amax / levels
    return torch.where(d == 0, torch.ones_like(d), d)


def _groups(w: "torch.Tensor", group_size: int) -> "torch.Tensor":
    """[out, in] -> [out, ceil(in / g), g], the last group zero-padded (zeros change no maximum)."""
    import torch

    out_f, in_f = w.shape
    pad = -in_f % group_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(out_f, (in_f + pad) // group_size, group_size)


def rtn_quantize(w: "torch.Tensor", bits: int, group_size: int | None = None, per_channel: bool = False) -> "torch.Tensor":
    """Return ``D * round(w / D)`` in float32 (the caller casts). ``w``: [out, in]."""
    w32 = w.detach().float()
    d = rtn_step(w32, bits, group_size, per_channel)
    if group_size:
        out_f, in_f = w32.shape
        g = _groups(w32, group_size)
        return (d * (g / d).round()).reshape(out_f, -1)[:, :in_f]
    return d * (w32 / d).round()


@dataclass(frozen=True)
class RTNSettings:
    bits: int
    group_size: int | None = None
    per_channel: bool = False
    quantize_head: bool = False

    @property
    def granularity(self) -> str:
        if self.group_size:
            return f"group of {self.group_size}"
        return "per channel" if self.per_channel else "per tensor"


def parse_rtn(spec: QuantSpec) -> RTNSettings:
    if not spec.args:
        raise SpecError(f"'{spec}' needs a bit width, for example rtn:4 or rtn:4:g128")
    try:
        bits = int(spec.args[0])
    except ValueError:
        raise SpecError(f"'{spec}': the bit width must be a whole number from 2 to 8, got '{spec.args[0]}'") from None
    if not 2 <= bits <= 8:
        raise SpecError(f"'{spec}': the bit width must be from 2 to 8, got {bits}")
    group_size, per_channel, head = None, False, False
    for opt in spec.args[1:]:
        if opt == "ch":
            per_channel = True
        elif opt == "head":
            head = True
        elif opt == "tensor":
            pass
        elif opt.startswith("g") and opt[1:].isdigit() and int(opt[1:]) > 0:
            group_size = int(opt[1:])
        else:
            raise SpecError(f"'{spec}': unknown option '{opt}' (use gN for groups, ch for per-channel, head to include lm_head)")
    if group_size and per_channel:
        raise SpecError(f"'{spec}': choose either groups (gN) or per-channel (ch), not both")
    return RTNSettings(bits, group_size, per_channel, head)


@register
class RTNBackend(Backend):
    """The paper's round-to-nearest formula; exact, no extra package, CPU or GPU."""

    name = "rtn"
    summary = "round-to-nearest, the paper's Q(w) = D*round(w/D); per tensor, channel or group"
    examples = ("rtn:4", "rtn:8", "rtn:4:g128", "rtn:4:ch", "rtn:3")

    def validate(self, spec: QuantSpec) -> None:
        parse_rtn(spec)

    def apply(self, model, spec: QuantSpec):
        import torch

        s = parse_rtn(spec)
        n_layers, ragged = 0, []
        with torch.no_grad():
            for name, module in model.named_modules():
                if not isinstance(module, torch.nn.Linear):
                    continue
                if not s.quantize_head and name.split(".")[-1] == "lm_head":
                    continue
                w = module.weight
                if s.group_size and w.shape[1] % s.group_size:
                    ragged.append(name)
                w.copy_(rtn_quantize(w, s.bits, s.group_size, s.per_channel).to(w.dtype))
                n_layers += 1
        return model, {
            "bits": s.bits,
            "granularity": s.granularity,
            "lm_head": s.quantize_head,
            "linear_layers_quantized": n_layers,
            "formula": "D*round(w/D), D=max|w|/2^(bits-1), no clamp",
            **({"ragged_last_group": f"{len(ragged)} layers' input width is not a multiple of {s.group_size}: "
                                     f"their last group per row holds the remaining columns"} if ragged else {}),
        }
