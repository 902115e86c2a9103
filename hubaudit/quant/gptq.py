"""``gptq:BITS``: GPTQ through transformers' ``GPTQConfig`` (optimum + gptqmodel), calibrated on generic text.

GPTQ (Frantar et al., 2022) rounds one input column at a time and spreads the rounding error over
the columns not yet rounded, using second-order statistics of each layer's inputs. Those inputs come
from calibration text run through the model, so the result depends on the text: it must never be the
forget set (quantizing on the forget set would be a different experiment: "does calibrating on the
secret bring it back?"). By default the calibration text is a generic corpus shipped with hubaudit
(``hubaudit/quant/data/calibration.txt``: a few hundred lines of plain everyday prose written for this
purpose, about no person and no fact of any benchmark). Set another one with the environment variable
``HUBAUDIT_CALIBRATION=/path/to/file.txt`` (passages separated by blank lines, or one per line) or
:func:`set_calibration`; the report records its name, size and sha256.

Spec grammar: ``gptq:BITS[:gN|:ch][:act][:asym][:nN][:lenN]``

- ``BITS``   2, 3, 4 or 8
- ``gN``     group size N along the input columns (default 128, GPTQConfig's); ``ch``: one group per row
- ``act``    act-order (``desc_act``): round columns in order of decreasing activation size
- ``asym``   asymmetric grid with a zero point (default symmetric, as most Hub GPTQ models)
- ``nN``     at most N calibration windows (default 128); ``lenN``: tokens per window (default 512,
  capped at the model's context)

auto-gptq does not import with transformers 5; gptqmodel reads and writes the same checkpoint format,
so GPTQ models already on the Hub load through the same path. ``lm_head`` stays in full precision.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError
from .base import Backend, QuantSpec, register

CALIBRATION_ENV = "HUBAUDIT_CALIBRATION"
BUILTIN_CALIBRATION = Path(__file__).parent / "data" / "calibration.txt"
DEFAULT_GROUP = 128
DEFAULT_SAMPLES = 128
DEFAULT_SEQLEN = 512
DAMP_PERCENT = 0.1  # transformers' GPTQConfig default

_override: tuple[list[str], str] | None = None


def set_calibration(texts=None, name: str | None = None) -> None:
    """Use other calibration text for GPTQ and AWQ (never the forget set).

    Args:
        texts: a list of strings, a path to a text file, or None to go back to the built-in corpus
            (or ``HUBAUDIT_CALIBRATION`` when set).
        name: how the report names this text (default: the file path, or "user texts").
    """
    global _override
    if texts is None:
        _override = None
    elif isinstance(texts, (str, os.PathLike)):
        _override = (_read_texts(Path(texts)), name or str(texts))
    else:
        texts = [str(t) for t in texts if str(t).strip()]
        if not texts:
            raise SpecError("set_calibration: the list of calibration texts is empty")
        _override = (texts, name or "user texts")


def _read_texts(path: Path) -> list[str]:
    try:
        raw = path.expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"calibration text '{path}' cannot be read ({e}); set {CALIBRATION_ENV} to a UTF-8 text file") from None
    blocks = [b.strip() for b in raw.split("\n\n")] if "\n\n" in raw else [line.strip() for line in raw.splitlines()]
    texts = [b for b in blocks if b]
    if not texts:
        raise SpecError(f"calibration text '{path}' is empty")
    return texts


def calibration_texts() -> tuple[list[str], str]:
    """The calibration passages and their name: :func:`set_calibration`, else ``$HUBAUDIT_CALIBRATION``,
    else the built-in generic corpus."""
    if _override is not None:
        return _override
    env = os.environ.get(CALIBRATION_ENV)
    if env:
        return _read_texts(Path(env)), env
    return _read_texts(BUILTIN_CALIBRATION), "built-in generic corpus (hubaudit/quant/data/calibration.txt)"


def calibration_windows(tokenizer, n_samples: int, seqlen: int) -> tuple[list[list[int]], dict]:
    """Token windows for calibration: the passages joined by blank lines, tokenized, cut into
    consecutive windows of ``seqlen`` tokens (BOS first when the tokenizer has one), at most ``n_samples``.

    Returns the windows and a description for the report (name, sha256 of the text, sizes).
    """
    texts, name = calibration_texts()
    joined = "\n\n".join(texts)
    ids: list[int] = []
    for i, text in enumerate(texts):  # passage by passage: no over-long single encode
        ids += tokenizer(text if i == len(texts) - 1 else text + "\n\n", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = max(1, seqlen - len(bos))
    windows = [bos + ids[i:i + step] for i in range(0, len(ids), step)]
    if len(windows) > 1 and len(windows[-1]) < step // 2 + len(bos):
        windows.pop()  # a short tail adds little and would need padding
    windows = windows[:n_samples]
    info = {
        "name": name,
        "sha256": hashlib.sha256(joined.encode("utf-8")).hexdigest(),
        "passages": len(texts),
        "tokens_available": len(ids),
        "windows": len(windows),
        "tokens_per_window": seqlen,
        "tokens_used": sum(len(w) for w in windows),
    }
    return windows, info


@dataclass(frozen=True)
class GPTQSettings:
    bits: int
    group_size: int = DEFAULT_GROUP  # -1: per output row
    desc_act: bool = False
    sym: bool = True
    n_samples: int = DEFAULT_SAMPLES
    seqlen: int = DEFAULT_SEQLEN


def _int_opt(spec: QuantSpec, opt: str, prefix: str, what: str) -> int:
    try:
        v = int(opt[len(prefix):])
    except ValueError:
        raise SpecError(f"'{spec}': '{opt}' needs a whole number of {what}, e.g. {prefix}64") from None
    if v < 1:
        raise SpecError(f"'{spec}': '{opt}': the number of {what} must be at least 1")
    return v


def parse_gptq(spec: QuantSpec, allowed_bits=(2, 3, 4, 8), name: str = "gptq") -> GPTQSettings:
    if not spec.args:
        raise SpecError(f"'{spec}' needs a bit width, for example {name}:4 or {name}:4:g128")
    try:
        bits = int(spec.args[0])
    except ValueError:
        raise SpecError(f"'{spec}': the bit width must be one of {', '.join(map(str, allowed_bits))}") from None
    if bits not in allowed_bits:
        raise SpecError(f"'{spec}': {name} supports {', '.join(map(str, allowed_bits))} bits, not {bits}")
    kw: dict = {}
    for opt in spec.args[1:]:
        o = opt.lower()
        if o == "ch":
            kw["group_size"] = -1
        elif o.startswith("g") and o[1:].isdigit():
            kw["group_size"] = _int_opt(spec, o, "g", "columns per group")
        elif o == "act" and name == "gptq":
            kw["desc_act"] = True
        elif o == "asym":
            kw["sym"] = False
        elif o == "sym":
            kw["sym"] = True
        elif o.startswith("len") and o[3:].isdigit():
            kw["seqlen"] = _int_opt(spec, o, "len", "tokens")
        elif o.startswith("n") and o[1:].isdigit():
            kw["n_samples"] = _int_opt(spec, o, "n", "calibration windows")
        else:
            extra = "act (act-order), " if name == "gptq" else ""
            raise SpecError(f"'{spec}': unknown option '{opt}'; use gN or ch (groups), {extra}asym, nN (windows), lenN (tokens)")
    return GPTQSettings(bits, **kw)


def check_group_size(model, group_size: int, spec: QuantSpec) -> int:
    """Raise SpecError unless ``group_size`` divides the input width of every Linear but lm_head.
    Returns the number of such layers."""
    import torch

    n = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] != "lm_head":
            n += 1
            if group_size > 0 and m.in_features % group_size:
                raise SpecError(f"'{spec}': layer {name} has {m.in_features} input columns, not a multiple of the group size "
                                f"{group_size}; choose a group size that divides it (or ch for one group per row)")
    return n


@register
class GPTQBackend(Backend):
    """GPTQ via transformers + optimum + gptqmodel; calibrated on generic text, never the forget set."""

    name = "gptq"
    summary = "GPTQ via transformers GPTQConfig (optimum + gptqmodel), calibrated on a generic built-in corpus"
    examples = ("gptq:4", "gptq:8", "gptq:4:g128", "gptq:4:g32:act", "gptq:3:g64")
    requires = ("optimum", "gptqmodel")
    extra = "gptq"

    def validate(self, spec: QuantSpec) -> None:
        parse_gptq(spec)

    def versions(self) -> dict[str, str]:
        out = super().versions()
        from importlib.metadata import version

        out["transformers"] = version("transformers")
        return out

    def quantize(self, source, spec: QuantSpec):
        import torch
        from transformers import GPTQConfig

        s = parse_gptq(spec)
        n_linear = check_group_size(source.model, s.group_size, spec)
        tok = source.tokenizer
        max_pos = getattr(source.model.config, "max_position_embeddings", None) or s.seqlen
        seqlen = min(s.seqlen, max_pos)
        windows, cal = calibration_windows(tok, s.n_samples, seqlen)
        dataset = [{"input_ids": [w], "attention_mask": [[1] * len(w)]} for w in windows]  # [1, len] each, as optimum expects
        # act_group_aware (GAR, gptqmodel's group-aware ordering; GPTQConfig's default) needs groups and no act-order
        gar = s.group_size > 0 and not s.desc_act
        cfg = GPTQConfig(bits=s.bits, group_size=s.group_size, desc_act=s.desc_act, sym=s.sym, dataset=dataset,
                         tokenizer=tok, damp_percent=DAMP_PERCENT, model_seqlen=seqlen, batch_size=1, act_group_aware=gar)
        model = source.load(quantization_config=cfg, device_map={"": source.device})
        qlayers = [(n, m) for n, m in model.named_modules()
                   if hasattr(m, "qweight") and not isinstance(m, torch.nn.Linear)]
        if len(qlayers) != n_linear:
            raise RuntimeError(f"{spec}: expected {n_linear} quantized Linear layers, found {len(qlayers)}")
        return model, {
            "bits": s.bits,
            "group_size": s.group_size,
            "granularity": "per output row" if s.group_size == -1 else f"group of {s.group_size} input columns",
            "sym": s.sym,
            "desc_act": s.desc_act,
            "act_group_aware": gar,
            "damp_percent": DAMP_PERCENT,
            "true_sequential": True,
            "format": "gptq",
            "linear_layers_quantized": len(qlayers),
            "lm_head": False,
            "kernel": type(qlayers[0][1]).__name__,
            "calibration": cal,
            "device": source.device,
            "call": "transformers.GPTQConfig via from_pretrained(quantization_config=...) -> optimum GPTQQuantizer -> gptqmodel",
        }
