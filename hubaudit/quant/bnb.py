"""``bnb:int8|nf4|fp4``: bitsandbytes through transformers' ``BitsAndBytesConfig``, quantized while loading.

This is what most people get when they run a Hub model "in 4-bit" or "in 8-bit" with transformers:

- ``bnb:int8``  LLM.int8(): int8 weights with one absmax scale per output row; activation columns
  with an outlier above the threshold (default 6.0) run in 16-bit (``bnb:int8:t0`` turns the
  outlier path off). Activations are cast to float16 for the int8 matmul.
- ``bnb:nf4``   4-bit NormalFloat, one absmax scale per block of 64 weights (QLoRA's format).
- ``bnb:fp4``   4-bit float (e2m1), blocks of 64. This is what ``load_in_4bit=True`` with every other
  setting left at its default gives, i.e. what the paper's released code used (Zhang et al.,
  arXiv 2410.16454): fp4, no double quantization, float32 compute.

Options (4-bit only unless said): ``dq`` double quantization (the per-block scales are quantized
again, to 8 bits in blocks of 256); ``fp32`` / ``bf16`` / ``fp16`` compute dtype (default: the
source's compute dtype: float32 on CPU, which is also bitsandbytes' own default, the model's dtype
on a GPU); ``tN`` (int8 only) the outlier threshold, ``t0`` for none.

Examples: ``bnb:nf4``, ``bnb:nf4:dq``, ``bnb:fp4:bf16``, ``bnb:int8:t0``.

``lm_head`` stays in full precision (transformers never converts it). bitsandbytes runs all
three formats on CPU (0.50 tested here); nothing here needs a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import SpecError
from .base import Backend, QuantSpec, register

FORMATS = ("int8", "nf4", "fp4")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_INT8_THRESHOLD = 6.0


@dataclass(frozen=True)
class BnbSettings:
    fmt: str
    double_quant: bool = False
    compute_dtype: str | None = None  # None: the source's compute dtype
    threshold: float = DEFAULT_INT8_THRESHOLD


def parse_bnb(spec: QuantSpec) -> BnbSettings:
    if not spec.args or spec.args[0].lower() not in FORMATS:
        raise SpecError(f"'{spec}': use bnb:int8, bnb:nf4 or bnb:fp4 (options: dq, fp32|bf16|fp16, tN for int8)")
    fmt = spec.args[0].lower()
    dq, dtype, thr = False, None, DEFAULT_INT8_THRESHOLD
    for opt in spec.args[1:]:
        o = opt.lower()
        if o == "dq" and fmt != "int8":
            dq = True
        elif o in DTYPES and fmt != "int8":
            dtype = DTYPES[o]
        elif fmt == "int8" and o.startswith("t"):
            try:
                thr = float(o[1:])
            except ValueError:
                raise SpecError(f"'{spec}': the outlier threshold must be a number, e.g. t6 or t0") from None
            if thr < 0:
                raise SpecError(f"'{spec}': the outlier threshold must be >= 0")
        else:
            hint = "tN (outlier threshold)" if fmt == "int8" else "dq (double quantization), fp32, bf16 or fp16 (compute dtype)"
            raise SpecError(f"'{spec}': unknown option '{opt}' for bnb:{fmt}; use {hint}")
    return BnbSettings(fmt, dq, dtype, thr)


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs one warning per matmul call on CPU ('inputs will be cast ... to float16');
    the settings record it once instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


_NOTICE_FILTER = _DropInt8CastNotice()


@register
class BnbBackend(Backend):
    """bitsandbytes LLM.int8(), NF4 and FP4, applied by transformers while loading."""

    name = "bnb"
    summary = "bitsandbytes via transformers: LLM.int8(), NF4, FP4 (the paper's load_in_4bit default is fp4)"
    examples = ("bnb:int8", "bnb:nf4", "bnb:fp4", "bnb:nf4:dq", "bnb:fp4:bf16")
    requires = ("bitsandbytes",)
    extra = "bnb"

    def validate(self, spec: QuantSpec) -> None:
        parse_bnb(spec)

    def versions(self) -> dict[str, str]:
        out = super().versions()
        from importlib.metadata import version

        out["transformers"] = version("transformers")
        return out

    def quantize(self, source, spec: QuantSpec):
        import torch
        from transformers import BitsAndBytesConfig

        s = parse_bnb(spec)
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_NOTICE_FILTER)
        compute = getattr(torch, s.compute_dtype) if s.compute_dtype else source.compute_dtype()
        if s.fmt == "int8":
            cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=s.threshold)
        else:
            cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=s.fmt, bnb_4bit_use_double_quant=s.double_quant,
                                     bnb_4bit_compute_dtype=compute)
        model = source.load(quantization_config=cfg, device_map={"": source.device})

        import bitsandbytes as bnb

        qtypes = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
        quantized = [n for n, m in model.named_modules() if isinstance(m, qtypes)]
        kept = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not isinstance(m, qtypes)]
        if not quantized:
            raise RuntimeError(f"{spec}: transformers loaded the model but converted no Linear layer to bitsandbytes")
        settings = {
            "format": {"int8": "LLM.int8()", "nf4": "NF4", "fp4": "FP4 (e2m1)"}[s.fmt],
            "linear_layers_quantized": len(quantized),
            "kept_full_precision": kept,
            "device": source.device,
            "call": "transformers.BitsAndBytesConfig via from_pretrained(quantization_config=...)",
        }
        if s.fmt == "int8":
            settings.update({
                "weight_scales": "absmax per output row (int8)",
                "llm_int8_threshold": s.threshold,
                "outlier_decomposition": s.threshold > 0,
                "activations": "cast to float16 and quantized per row for the int8 matmul",
            })
        else:
            first = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
            qs = first.weight.quant_state
            settings.update({
                "quant_type": s.fmt,
                "blocksize": int(qs.blocksize),
                "double_quant": s.double_quant,
                "nested_blocksize": int(qs.state2.blocksize) if getattr(qs, "state2", None) is not None else None,
                "compute_dtype": str(compute).replace("torch.", ""),
                "quant_storage": str(cfg.bnb_4bit_quant_storage).replace("torch.", ""),
                "equals_paper_load_in_4bit_default": s.fmt == "fp4" and not s.double_quant and compute == torch.float32,
            })
        return model, settings
