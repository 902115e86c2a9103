"""``awq:4``: Activation-aware Weight Quantization through gptqmodel, on CPU or GPU.

AWQ (Lin et al., 2023) searches, per layer, a per-input-channel scale that protects the weights seen
by large activations, folds that scale into the previous operation (norm or linear), then rounds
each group of weights to 4 bits with a zero point. Like GPTQ it needs calibration text; it uses the
same generic built-in corpus (never the forget set), settable the same way (``HUBAUDIT_CALIBRATION``
or :func:`hubaudit.quant.gptq.set_calibration`).

Which library: gptqmodel (``GPTQModel.load(path, AWQConfig(...)).quantize(...)``, tested with 7.6). It
runs here on CPU with its portable torch kernel (``BACKEND.AWQ_TORCH``, GEMM layout). llm-compressor
cannot be installed next to transformers 5.23 (0.13-0.14 pin transformers <= 5.17, older releases
torch <= 2.12), and AutoAWQ is deprecated upstream, so neither is used. The torch AWQ kernel computes
in float16 or bfloat16 only, so on CPU this backend loads the model in bfloat16 (the evaluation of
this cell then also runs in bfloat16; the settings say so).

Spec grammar: ``awq:4[:gN][:sym][:nN][:lenN]`` -- group size N (default 128), ``sym`` for a symmetric
grid (AWQ's default is asymmetric, with a zero point), calibration windows and their length as for gptq.
``lm_head`` stays in full precision.
"""

from __future__ import annotations

import os

from ..errors import SpecError
from .base import Backend, QuantSpec, register
from .gptq import calibration_windows, check_group_size, parse_gptq

# gptqmodel sizes a CPU thread pool at 1 worker on a 2-core machine but asks 2 for its model loader,
# and refuses to start; two workers is what it needs at least.
_MIN_CPU_WORKERS = 2


@register
class AWQBackend(Backend):
    """AWQ via gptqmodel (torch kernel, CPU or GPU), calibrated on generic text."""

    name = "awq"
    summary = "AWQ 4-bit via gptqmodel (portable torch kernel on CPU), calibrated on a generic built-in corpus"
    examples = ("awq:4", "awq:4:g64", "awq:4:g128:sym")
    requires = ("gptqmodel",)
    extra = "awq"

    def validate(self, spec: QuantSpec) -> None:
        s = parse_gptq(spec, allowed_bits=(4,), name="awq")
        if s.group_size == -1:
            raise SpecError(f"'{spec}': AWQ needs groups (gN), not per-channel")

    def versions(self) -> dict[str, str]:
        out = super().versions()
        from importlib.metadata import version

        out["transformers"] = version("transformers")
        return out

    def quantize(self, source, spec: QuantSpec):
        import torch

        self.validate(spec)
        s = parse_gptq(spec, allowed_bits=(4,), name="awq")
        sym = any(a.lower() == "sym" for a in spec.args[1:])  # AWQ default: zero point
        n_linear = check_group_size(source.model, s.group_size, spec)
        workers = os.environ.get("GPTQMODEL_CPU_WORKERS")
        if workers is None or not workers.isdigit() or int(workers) < _MIN_CPU_WORKERS:
            default = min(12, ((os.cpu_count() or 1) + 1) // 2)  # gptqmodel's own default
            os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(_MIN_CPU_WORKERS, default))

        from gptqmodel import BACKEND, GPTQModel
        from gptqmodel.quantization import AWQConfig

        cuda = source.device.startswith("cuda")
        dtype = torch.float16 if cuda else torch.bfloat16
        if cuda and source.compute_dtype() == torch.bfloat16:
            dtype = torch.bfloat16
        tok = source.tokenizer
        max_pos = getattr(source.model.config, "max_position_embeddings", None) or s.seqlen
        seqlen = min(s.seqlen, max_pos)
        windows, cal = calibration_windows(tok, s.n_samples, seqlen)
        calib = [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]
        qcfg = AWQConfig(bits=4, group_size=s.group_size, sym=sym, offload_to_disk=False)
        wrapped = GPTQModel.load(str(source.path), qcfg, device=source.device, dtype=dtype,
                                 trust_remote_code=source.trust_remote_code)
        backend = BACKEND.AUTO if cuda else BACKEND.AWQ_TORCH
        wrapped.quantize(calib, batch_size=1, tokenizer=tok, backend=backend)
        model = wrapped.model
        model.eval()
        qlayers = [(n, m) for n, m in model.named_modules() if hasattr(m, "qweight") and not isinstance(m, torch.nn.Linear)]
        if len(qlayers) != n_linear:
            raise RuntimeError(f"{spec}: expected {n_linear} quantized Linear layers, found {len(qlayers)}")
        return model, {
            "bits": 4,
            "group_size": s.group_size,
            "zero_point": not sym,
            "format": "gemm",
            "kernel": type(qlayers[0][1]).__name__,
            "backend": str(getattr(backend, "value", backend)),
            "linear_layers_quantized": len(qlayers),
            "lm_head": False,
            "model_dtype": str(dtype).replace("torch.", ""),
            "note": "AWQ's torch kernel computes in float16/bfloat16 only, so this cell is evaluated in that dtype",
            "calibration": cal,
            "device": source.device,
            "call": "gptqmodel.GPTQModel.load(path, AWQConfig(...)).quantize(calibration, backend=...)",
        }
