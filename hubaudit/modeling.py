"""Loading a causal LM from a local folder, safely, and knowing which weights it is.

Safe by default: safetensors only (pickle weights need ``allow_pickle=True``), never
``trust_remote_code`` unless asked.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InsufficientMemory, ModelLoadError, ModelNotFound

PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# What a local model's identity (its key in the results store) is made of: config, weights, and every file
# that changes what the metrics see (tokenizer, chat template, generation config).
IDENTITY_FILES = ("config.json", "*.safetensors", *PICKLE_PATTERNS, "generation_config.json", "tokenizer*",
                  "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "chat_template*")


def resolve_device(device: str | None = "auto") -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def content_hash(folder: Path) -> str:
    """sha256 over a model folder's ``IDENTITY_FILES`` (config, weights, tokenizer, chat template, generation
    config: names and bytes, sorted)."""
    h = hashlib.sha256()
    files = sorted({p for pat in IDENTITY_FILES for p in Path(folder).glob(pat) if p.is_file()})
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def estimate_memory_bytes(weight_bytes: int, stored_dtype: str | None, compute_itemsize: int, copies: int = 2) -> int:
    """What an audit needs for a checkpoint of ``weight_bytes`` stored in ``stored_dtype``: the model and
    ``copies - 1`` quantized copies at ``compute_itemsize`` bytes per parameter, plus 10% and 256 MiB of
    slack (a bf16 checkpoint computed in float32 with one copy: about 4.4x its size). Also what the Space
    checks before it queues a model, from the Hub's file list alone."""
    stored = {"float32": 4, "float16": 2, "bfloat16": 2}.get(stored_dtype or "", 2)
    return int(weight_bytes / stored * compute_itemsize * copies * 1.1) + (256 << 20)


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def native_half(device: str) -> dict[str, str | None]:
    """Which 16-bit dtypes ``device`` computes natively, each with what says so (None: not native).

    CUDA: bfloat16 where torch says the GPU supports it (Ampere and newer), float16 always. CPU: bfloat16
    with AMX tiles or AVX512-BF16 (oneDNN's bf16 kernels; elsewhere torch emulates it, slower than
    float32), float16 with AMX-FP16. Set ``HUBAUDIT_NO_NATIVE_HALF=1`` to treat every device as having
    none (float32 unless asked)."""
    import os

    import torch

    if os.environ.get("HUBAUDIT_NO_NATIVE_HALF"):
        return {"bfloat16": None, "float16": None}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():  # planning for GPUs elsewhere (a sweep's driver): Ampere or newer
            return {"bfloat16": "assumed for a GPU not on this machine", "float16": "assumed for a GPU"}
        name = torch.cuda.get_device_name()
        return {"bfloat16": name if torch.cuda.is_bf16_supported() else None, "float16": name}
    cpu = getattr(torch, "cpu", None)

    def has(flag: str) -> bool:
        probe = getattr(cpu, flag, None)
        try:
            return bool(probe()) if probe else False
        except Exception:  # noqa: BLE001 - a probe that fails means no
            return False

    bf16 = "AMX" if has("_is_amx_tile_supported") else "AVX512-BF16" if has("_is_avx512_bf16_supported") else None
    return {"bfloat16": bf16, "float16": "AMX-FP16" if has("_is_amx_fp16_supported") else None}


def choose_compute_dtype(device: str, stored_dtype: str | None, requested: str | None = None) -> tuple[str, str]:
    """The dtype an audit computes in, and why, in words.

    ``requested`` (``float32``, ``bfloat16``, ``float16``) is taken as given. ``auto`` or None: the
    checkpoint's own dtype where the device computes it natively (a bf16 checkpoint in bf16 on a GPU or
    on a CPU with AMX / AVX512-BF16: the weights as published, at the hardware's speed), else float32
    (exact for 16-bit weights). A checkpoint that does not say its dtype is taken as bfloat16 on a GPU."""
    if requested and requested != "auto":
        return requested, "asked for (--dtype)"
    where = "GPU" if device.startswith("cuda") else "CPU"
    native = native_half(device)
    stored = stored_dtype if stored_dtype in ("float32", "bfloat16", "float16") else None
    if stored == "float32":
        return "float32", "auto: the checkpoint is float32"
    want = stored or ("bfloat16" if where == "GPU" else None)
    if want is None:
        return "float32", "auto: the checkpoint does not say its dtype; float32 on the CPU"
    if native.get(want):
        return want, f"auto: the checkpoint's {want}, native on this {where} ({native[want]})"
    return "float32", f"auto: the checkpoint is {want}, which this {where} does not compute natively; float32 (exact)"


def default_compute_dtype(device: str, stored_dtype: str | None) -> str:
    """The dtype an audit computes in without one given (:func:`choose_compute_dtype`'s ``auto``)."""
    return choose_compute_dtype(device, stored_dtype)[0]


def compute_itemsize(device: str, stored_dtype: str | None) -> int:
    """Bytes per parameter of :func:`default_compute_dtype`."""
    return 4 if default_compute_dtype(device, stored_dtype) == "float32" else 2


# --------------------------------------------------------------------------------------------------------
# Training and cast precision: 16-bit weights, computed natively or in float32
# --------------------------------------------------------------------------------------------------------

HALF_DTYPES = ("bfloat16", "float16")


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Precision:
    """How a model with ``weights``-valued parameters is trained or evaluated.

    ``weights``: the dtype whose values the parameters hold (what is saved). ``compute``: the dtype they are
    stored in and the matmuls run in. Equal: the plain path (pure bf16 where the hardware has it, or
    float32). ``weights`` 16-bit and ``compute`` float32: the emulated path, on hardware without native
    16-bit: parameters stored in float32 hold 16-bit values, rounded again after every optimizer step
    (:func:`round_weights_`), so an update smaller than half a 16-bit step is lost exactly as in pure
    16-bit; only the activations keep float32's precision. ``reason`` says why, in words."""

    weights: str
    compute: str
    reason: str = ""

    @property
    def emulated(self) -> bool:
        """16-bit weight values stored and computed in float32 (round after every step)."""
        return self.weights != self.compute

    def to_json(self) -> dict[str, str]:
        return {"weights": self.weights, "compute": self.compute, "reason": self.reason}


def choose_precision(device: str, weights, requested: str | None = "auto") -> Precision:
    """The compute dtype for ``weights``-valued parameters (``float32``, ``bfloat16``, ``float16``) on
    ``device``, and why.

    ``auto`` (or None): the weights' own 16-bit dtype where :func:`native_half` says the device computes
    it natively, else float32 (the emulated path; ``HUBAUDIT_NO_NATIVE_HALF=1`` forces it). ``requested``
    float32 or equal to ``weights`` is taken as given.

    Raises:
        ValueError: ``requested`` is a 16-bit dtype other than ``weights`` (or not a dtype name).
    """
    weights = _dtype_name(weights)
    if weights not in ("float32", *HALF_DTYPES):
        raise ValueError(f"weights dtype must be float32, bfloat16 or float16, got {weights!r}")
    if requested not in (None, "auto", "float32", weights):
        raise ValueError(f"compute dtype must be auto, float32 or the weights' dtype ({weights}), got {requested!r}")
    if weights == "float32":
        return Precision("float32", "float32", "float32 weights")
    if requested not in (None, "auto"):
        how = ("emulated: float32 matmuls, weights rounded to " + weights + " after every step"
               if requested == "float32" else "pure " + weights)
        return Precision(weights, requested, f"asked for ({how})")
    where = "GPU" if device.startswith("cuda") else "CPU"
    native = native_half(device).get(weights)
    if native:
        return Precision(weights, weights, f"auto: {weights} is native on this {where} ({native}); pure {weights}")
    return Precision(weights, "float32", f"auto: this {where} does not compute {weights} natively; {weights} weight "
                     "values kept in float32, rounded after every step, float32 matmuls")


def _tensors(weights):
    import torch

    if isinstance(weights, torch.nn.Module):
        return list(weights.parameters())
    if isinstance(weights, torch.Tensor):
        return [weights]
    return list(weights)


def round_weights_(weights, dtype) -> None:
    """Round every floating tensor of ``weights`` (a model, a tensor or an iterable of tensors) that is
    stored in a wider dtype than ``dtype`` to ``dtype``'s values, in place (round to nearest even, as a
    cast does); the storage dtype does not change. Tensors stored in ``dtype`` or narrower are left alone."""
    import torch

    dt = getattr(torch, _dtype_name(dtype))
    with torch.no_grad():
        for p in _tensors(weights):
            if p.is_floating_point() and p.dtype != dt and p.element_size() > dt.itemsize:
                p.copy_(p.to(dt))


def rounding_changes(weights, dtype) -> int:
    """How many elements of ``weights`` (a model, a tensor or an iterable of tensors) :func:`round_weights_`
    would change: 0 when they already hold ``dtype``'s values."""
    import torch

    dt = getattr(torch, _dtype_name(dtype))
    n = 0
    with torch.no_grad():
        for p in _tensors(weights):
            if p.is_floating_point() and p.dtype != dt and p.element_size() > dt.itemsize:
                n += int((p.to(dt).to(p.dtype) != p).sum())
    return n


class ChangeCounter:
    """Counts the elements of ``params`` whose value in ``dtype`` (what is saved) an optimizer step changed:
    call :meth:`snapshot` before the step and :meth:`changed` after it (one copy of the parameters in
    ``dtype`` is held in between). ``total``: the number of elements."""

    def __init__(self, params, dtype):
        import torch

        self.params = _tensors(params)
        self.dtype = getattr(torch, _dtype_name(dtype))
        self.total = sum(p.numel() for p in self.params)
        self._before = None

    def snapshot(self) -> None:
        import torch

        with torch.no_grad():
            self._before = [p.detach().to(self.dtype, copy=True) for p in self.params]

    def changed(self) -> int:
        import torch

        if self._before is None:
            raise RuntimeError("ChangeCounter.changed() without a snapshot() before the step")
        with torch.no_grad():
            n = sum(int((p.detach().to(self.dtype) != b).sum()) for p, b in zip(self.params, self._before))
        self._before = None
        return n


class ModelSource:
    """A model folder, its tokenizer, and (once loaded) its full-precision model.

    Args:
        path: a local folder with ``config.json``, tokenizer files and weights.
        device: ``"auto"`` (CUDA when there is one), ``"cpu"`` or ``"cuda"``.
        dtype: the compute dtype (a name or a torch dtype); ``None`` or ``"auto"``: the checkpoint's own
            where the device computes it natively, else float32 (:func:`choose_compute_dtype`).
        allow_pickle: accept ``*.bin``/``*.pt`` weights (they can run code when loaded).
        trust_remote_code: let the folder's own Python code define the model.
        revision: a Hub commit sha when the folder is a snapshot; with ``repo_id`` it is the model's
            identity then.
        repo_id: the Hub repository the snapshot came from.

    Raises:
        ModelNotFound: the folder does not exist.
        ModelLoadError: no config, pickle-only weights without ``allow_pickle``, no weights.
    """

    def __init__(self, path, *, device: str | None = "auto", dtype=None, allow_pickle: bool = False,
                 trust_remote_code: bool = False, revision: str | None = None, name: str | None = None,
                 repo_id: str | None = None):
        self.path = Path(path).expanduser()
        self.name = name or str(path)
        if not self.path.exists():
            raise ModelNotFound(f"model '{path}' not found: give a folder with config.json and weights")
        if not self.path.is_dir():
            raise ModelLoadError(f"model '{path}' is a file; give the folder that holds config.json and the weights")
        if not (self.path / "config.json").is_file():
            raise ModelLoadError(f"model folder '{path}' has no config.json; is it a Hugging Face model folder?")
        safetensors = list(self.path.glob("*.safetensors"))
        pickles = [p for pat in PICKLE_PATTERNS for p in self.path.glob(pat)]
        if not safetensors and pickles and not allow_pickle:
            raise ModelLoadError(
                f"model '{path}' has only pickle weights ({pickles[0].name}), which can run code when loaded; "
                f"pass --allow-pickle if you trust it"
            )
        if not safetensors and not pickles:
            raise ModelLoadError(f"model folder '{path}' has no weights (*.safetensors)")
        self.allow_pickle = allow_pickle
        self.trust_remote_code = trust_remote_code
        self.device = resolve_device(device)
        self._dtype = dtype
        self.revision = revision
        self.repo_id = repo_id
        self._identity: str | None = None
        self._model = None
        self._tokenizer = None
        self.snapshot = None  # the Hub snapshot this folder came from, if any

    # -- identity -------------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        """``hub:<repo>@<commit>`` for a Hub snapshot, else ``content:<sha256 of its IDENTITY_FILES>``."""
        if self._identity is None:
            if self.revision and self.repo_id:
                self._identity = f"hub:{self.repo_id}@{self.revision}"
            else:
                self._identity = f"content:{content_hash(self.path)}"
        return self._identity

    def config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{self.path / 'config.json'}: cannot read ({e})") from None

    def stored_dtype(self) -> str | None:
        cfg = self.config()
        return cfg.get("dtype") or cfg.get("torch_dtype")

    def compute_dtype(self):
        import torch

        if self._dtype is not None and self._dtype != "auto":
            return getattr(torch, self._dtype) if isinstance(self._dtype, str) else self._dtype
        return getattr(torch, default_compute_dtype(self.device, self.stored_dtype()))

    def compute_dtype_reason(self) -> str:
        """Why :meth:`compute_dtype` is what it is, in words (the report says it)."""
        if self._dtype is not None and self._dtype != "auto":
            return "asked for (--dtype)"
        return choose_compute_dtype(self.device, self.stored_dtype())[1]

    # -- loading --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
            except Exception as e:  # noqa: BLE001 - any tokenizer failure is the folder's
                raise ModelLoadError(f"model '{self.name}': cannot load its tokenizer ({type(e).__name__}: {e})") from None
        return self._tokenizer

    def load(self, **kwargs):
        """A new model instance from disk, in eval mode on the device (extra kwargs go to from_pretrained)."""
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars say what is happening
        kwargs.setdefault("dtype", self.compute_dtype())
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.path, trust_remote_code=self.trust_remote_code, use_safetensors=None if self.allow_pickle else True,
                **kwargs,
            )
        except ValueError as e:
            if "quantization_config" in kwargs:  # a backend's own failure: its error cell says what it was
                raise
            if "Unrecognized configuration class" in str(e) or "does not recognize this architecture" in str(e):
                raise ModelLoadError(f"model '{self.name}' is not a causal language model ({str(e).splitlines()[0]})") from None
            raise ModelLoadError(f"model '{self.name}': cannot load ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise ModelLoadError(f"model '{self.name}': cannot load ({str(e).splitlines()[0]})") from None
        if "device_map" not in kwargs and "quantization_config" not in kwargs:
            model = model.to(self.device)
        model.eval()
        return model

    @property
    def model(self):
        """The full-precision model, loaded once."""
        if self._model is None:
            self._model = self.load()
        return self._model

    def fresh_copy(self):
        """A deep copy of the full-precision model, for a backend to quantize in place."""
        return copy.deepcopy(self.model)

    def release(self) -> None:
        self._model = None

    # -- memory ---------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        pats = ("*.safetensors", *PICKLE_PATTERNS) if self.allow_pickle else ("*.safetensors",)
        return sum(p.stat().st_size for pat in pats for p in self.path.glob(pat) if p.is_file())

    def estimate_memory(self, copies: int = 2) -> int:
        """Bytes needed for the full-precision model plus ``copies - 1`` quantized copies, at the
        compute dtype (a bf16 checkpoint doubles in float32 on CPU), plus 10% and 256 MiB of slack."""
        return estimate_memory_bytes(self.weight_bytes(), self.stored_dtype(), self.compute_dtype().itemsize, copies)

    def check_memory(self, copies: int = 2) -> None:
        """Refuse before loading when the model cannot fit (instead of meeting the OOM killer)."""
        need, free = self.estimate_memory(copies), available_memory(self.device)
        if free is not None and need > free:
            where = "GPU memory" if self.device.startswith("cuda") else "memory"
            raise InsufficientMemory(
                f"model '{self.name}' needs about {need / 2**30:.1f} GiB of {where} (full precision"
                f"{' plus one quantized copy' if copies > 1 else ''}, {str(self.compute_dtype()).replace('torch.', '')}), "
                f"and {free / 2**30:.1f} GiB is available; use a larger machine or GPU, fewer specs, or "
                f"--no-memory-check to try anyway"
            )


def available_memory(device: str) -> int | None:
    """Free bytes where the model will live: MemAvailable on CPU, free GPU memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
