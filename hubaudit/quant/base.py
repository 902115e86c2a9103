"""What every quantization backend is, and the registry that finds one from a spec string.

A spec names one cell of the audit grid: ``backend[:arg[:arg...]]``, for example ``rtn:4``,
``rtn:8:g128``, ``cast:bf16``. The part before the first colon picks the backend; the backend reads
the rest.

Adding a backend
----------------
Write one new module in ``hubaudit/quant/`` with a subclass of :class:`Backend` decorated with
``@register``. Every module in the package is discovered on first use, so nothing else changes.
A backend:

- sets ``name`` (the spec prefix), ``summary``, ``examples``; ``requires`` (import names of the
  packages it needs), ``extra`` (the pip extra that installs them), ``needs_gpu``;
- implements :meth:`Backend.validate` (reject a malformed spec with a :class:`SpecError`) and either
  :meth:`Backend.apply` (quantize a loaded full-precision model in place) or, for backends that
  quantize while loading, :meth:`Backend.quantize` (build the model from the :class:`ModelSource`);
- imports its heavy packages inside those methods, never at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import ModelSource

FULL_PRECISION = "fp"  # the name of the unquantized cell (not a backend)


@dataclass(frozen=True)
class QuantSpec:
    """A parsed spec string: ``backend`` and its positional ``args`` (``rtn:4:g128`` -> rtn, (4, g128))."""

    backend: str
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "QuantSpec":
        text = text.strip()
        if not text:
            raise SpecError("empty quantization spec; use for example rtn:4 (see `hubaudit backends`)")
        parts = text.split(":")
        if any(p == "" for p in parts):
            raise SpecError(f"malformed spec '{text}': empty part between colons")
        return cls(parts[0].lower(), tuple(parts[1:]))

    def __str__(self) -> str:
        return ":".join((self.backend, *self.args))


class Backend:
    """Base class of a quantization backend (see the module docstring for how to add one)."""

    name: str = ""
    summary: str = ""
    examples: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # importable module names
    extra: str | None = None  # pip extra: pip install 'hubaudit[EXTRA]'
    needs_gpu: bool = False
    # "quantization", or "recovery" for an attack that changes the weights another way (relearn); the
    # report keeps the two kinds apart and the verdict says which one brought knowledge back
    kind: str = "quantization"
    # True: the audit sets ``self.forget_set`` (the ForgetSet) before calling quantize()
    needs_forget_set: bool = False
    # True: a spec names a published build of the audited model (``file:``), not a recipe: it is not
    # applied to the reference model
    artifact: bool = False

    def validate(self, spec: QuantSpec) -> None:
        """Raise :class:`SpecError` if ``spec`` is not a valid spec for this backend."""

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (missing package, no GPU), or None when it can."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            how = f"pip install 'hubaudit[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            return f"needs {', '.join(missing)}: {how}"
        if self.needs_gpu:
            import torch

            if not torch.cuda.is_available():
                return "needs a CUDA GPU, and none is visible"
        return None

    def versions(self) -> dict[str, str]:
        """Versions of the packages this backend used, for the report."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for mod in ("torch", *self.requires):
            try:
                out[mod] = version(mod)
            except PackageNotFoundError:
                pass
        return out

    def prepare(self, spec: QuantSpec, source: "ModelSource", **kw) -> list[str]:
        """Called by the audit before any model is loaded, with the audited model's source (and ``token``,
        ``all_files``, ``allow_pickle``): find and check what the spec needs, raising a
        :class:`~hubaudit.errors.HubauditError` for what a user must fix. Returns the specs this one stands
        for (itself; ``file:`` with ``--all-files``: one per GGUF file)."""
        return [str(spec)]

    def identity(self, spec: QuantSpec) -> str | None:
        """What pins the cell's weights beyond the spec text (a published artifact's file hash or commit),
        or None; part of every stored result's key."""
        return None

    def apply(self, model: Any, spec: QuantSpec) -> tuple[Any, dict]:
        """Quantize a loaded full-precision ``model`` in place; return it and the settings used."""
        raise NotImplementedError

    def quantize(self, source: "ModelSource", spec: QuantSpec) -> tuple[Any, dict]:
        """Return a quantized model built from ``source`` and the exact settings used.

        The default copies the full-precision model held by ``source`` and calls :meth:`apply`. A backend
        that finds nothing to change returns ``source.model`` itself with
        ``identical_to_full_precision: True`` in the settings; the audit then reuses the full-precision
        results for that cell instead of evaluating the same weights again.
        """
        return self.apply(source.fresh_copy(), spec)


BACKENDS: Registry[type[Backend]] = Registry("quantization backend", SpecError)
register = BACKENDS.decorator()
_discovered = False


def _discover() -> None:
    """Import every module of ``hubaudit.quant`` once, so their ``@register`` lines run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import hubaudit.quant as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"hubaudit.quant.{info.name}")


def get_backend(spec: QuantSpec | str) -> tuple[Backend, QuantSpec]:
    """The backend instance for ``spec`` (validated) and the parsed spec.

    Raises:
        SpecError: unknown backend (with a close match when there is one) or malformed arguments.
    """
    _discover()
    if isinstance(spec, str):
        spec = QuantSpec.parse(spec)
    if spec.backend == FULL_PRECISION:
        raise SpecError("'fp' (full precision) is always audited; list only quantization specs")
    backend = BACKENDS.get(spec.backend)()
    backend.validate(spec)
    return backend, spec


def spec_kind(spec: str) -> str:
    """``quantization`` or ``recovery`` (the backend's ``kind``); ``fp`` for full precision."""
    if spec == FULL_PRECISION:
        return FULL_PRECISION
    try:
        return get_backend(spec)[0].kind
    except SpecError:
        return "quantization"


def all_backends() -> list[Backend]:
    _discover()
    return [cls() for _, cls in BACKENDS.items()]
