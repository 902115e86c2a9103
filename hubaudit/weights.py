"""Do a folder's weights fill the model its config declares? Checked before anything is loaded.

transformers fills a tensor the checkpoint lacks with random values (it only logs ``MISSING``), so a
safetensors file holding one norm, or a 3 KB file whose config declares 113M parameters, would be audited
on random weights and judged. :func:`check_weights` reads only the safetensors headers (bounded by the
file sizes) and the config (the model built on the ``meta`` device, no memory), and refuses with one line
when tensors are missing (by name and by count) or the file holds unknown tensors beyond what the
architecture can hold.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .errors import ModelLoadError

MAX_HEADER = 100 << 20  # a safetensors header is JSON; 100 MiB is far above any real one
SHORT_SHARE = 0.99  # the checkpoint holds fewer elements than this share of the declared parameters: refused
EXTRA_SHARE = 0.01  # unknown tensors taking the count this far past what the model can hold: refused


def safetensors_header(path: Path) -> dict:
    """The tensors of one ``.safetensors`` file (name -> {dtype, shape, data_offsets}), its length bounded by
    the file's size; a damaged or truncated file is a :class:`ModelLoadError`."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"{path.name} is not a safetensors file (shorter than its header); download it again")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER):
            raise ModelLoadError(f"{path.name} is damaged: its header claims {n} bytes in a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ModelLoadError(f"{path.name} is damaged: its header is not JSON; download it again") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name} is damaged: its header is not a table of tensors")
    header.pop("__metadata__", None)
    body = size - 8 - n
    for name, t in header.items():
        off = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(off, list) and len(off) == 2 and all(isinstance(x, int) for x in off)
                and 0 <= off[0] <= off[1] <= body and isinstance(t.get("shape"), list)):
            raise ModelLoadError(f"{path.name} is damaged or truncated (tensor {name!r} lies outside the file); "
                                 "download it again")
    return header


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"{index.name} in {folder} is not a safetensors index; download it again") from None
        files = [folder / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{folder} lacks {missing[0]}, a weight file its index names; download it again")
        return files
    # what transformers loads: the index's shards, else model.safetensors (a repository may also hold other
    # files, e.g. Mistral's consolidated.safetensors, which it never reads); anything else is the loader's to refuse
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _declared(folder: Path, trust_remote_code: bool):
    """(unique parameter count, groups of names that are one tensor, base model prefix) of the model the config
    declares, built on the meta device; None when transformers cannot build it from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        if getattr(cfg, "quantization_config", None):
            return None  # a pre-quantized checkpoint stores packed tensors: counts differ by design
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - ModelSource reports a config transformers cannot read
        return None
    groups: dict[int, list[str]] = {}
    at_most = 0  # every name counted, a tied tensor as often as it is named (a checkpoint may store each)
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
        at_most += p.numel()
    at_most += sum(b.numel() for _, b in model.named_buffers())  # persistent buffers may be stored too
    declared = sum(p.numel() for p in model.parameters())
    return declared, at_most, list(groups.values()), getattr(model, "base_model_prefix", "") or ""


def check_weights(folder, name: str, *, trust_remote_code: bool = False) -> None:
    """Refuse (one line, :class:`ModelLoadError`) a folder whose safetensors weights do not fill the model its
    config declares: missing tensors, a parameter count far below the declared one, or a large share of
    tensors the architecture does not have. Folders without safetensors (pickle weights), pre-quantized
    checkpoints and configs transformers cannot build are left to the loader."""
    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        return
    stored: dict[str, int] = {}
    for f in files:
        try:
            header = safetensors_header(f)
        except ModelLoadError as e:
            raise ModelLoadError(f"'{name}': {e}") from None
        for key, t in header.items():
            stored[key] = math.prod(int(x) for x in t["shape"])
    info = _declared(folder, trust_remote_code)
    if info is None:
        return
    declared, at_most, groups, prefix = info
    names = {k: k for k in stored}  # as the model names it -> as the file does
    if prefix and not any(k.startswith(prefix + ".") for k in names):  # saved from the base model
        names = {f"{prefix}.{k}": k for k in stored}
    expected = {n for g in groups for n in g}
    missing = [g[0] for g in groups if not any(n in names for n in g)]
    unexpected = [k for k in names if k not in expected]
    total = sum(stored.values())
    if missing and total < SHORT_SHARE * declared:  # missing by name (after any renaming) and by count
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelLoadError(
            f"'{name}': its weights hold {total:,} of the {declared:,} parameters its config declares (missing: "
            f"{shown}); transformers would fill the rest randomly, so it is not audited: give the complete model")
    # names alone do not decide: transformers renames or fuses some checkpoints' tensors when it loads them
    # (GPT-NeoX's embed_out, per-expert MoE weights), so only tensors beyond what the model can hold count
    if unexpected and total > (1 + EXTRA_SHARE) * at_most:
        shown = ", ".join(sorted(unexpected)[:3]) + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
        raise ModelLoadError(
            f"'{name}': its weights hold {len(unexpected)} tensors its config's architecture does not have ({shown}); "
            "the config does not describe these weights: give the model's own config")
