"""What every recovery attack is, and the one registry that finds an attack from a spec string.

An attack is anything that changes a model's weights in a way a user of the published model might, and so
may bring "unlearned" knowledge back: rounding to a quantization grid (``rtn:4``, ``bnb:nf4``, a published
GGUF), zeroing small weights (``prune:0.2``), a few fine-tuning steps (``relearn:steps=20``). A spec names
one cell of the audit grid: ``name[:arg[:arg...]]``; the part before the first colon picks the attack, the
attack reads the rest.

Kinds (:attr:`Attack.kind`): ``quantization`` (every backend in :mod:`hubaudit.quant`), ``pruning``,
``training`` and ``white-box`` (attacks that read or edit activations: ``ablate:direction``, ``probe:logit-lens``). The verdict and the report keep two families apart (:attr:`Attack.family`, :func:`spec_kind`):
``quantization``, the paper's question, and ``recovery``, every other attack, which gets a table of its own.

Adding an attack
----------------
Write one new module, in ``hubaudit/attacks/`` (or ``hubaudit/quant/`` for a quantizer, subclassing
:class:`hubaudit.quant.base.Backend`), with a subclass of :class:`Attack` decorated with ``@register``.
Every module of both packages is discovered on first use, so nothing else changes. An attack:

- sets ``name`` (the spec prefix), ``kind``, ``summary``, ``examples``; ``requires`` (import names of the
  packages it needs), ``extra`` (the pip extra that installs them), ``needs_gpu`` (or ``prefers_gpu``: runs
  on a CPU, much faster on a GPU; a sweep gives a model's worker a GPU when the cluster has one); for a kind other than
  quantization, ``report_note`` (one clause for the report's table of recovery attacks) and ``noun`` (what a
  fragile verdict says did not survive: "relearning", "pruning");
- implements :meth:`Attack.validate` (reject a malformed spec with a :class:`SpecError`) and
  :meth:`Attack.build` (a new model from the :class:`ModelSource`, never touching the source's own);
  or only :meth:`Attack.apply` (change a fresh copy of the full-precision model in place);
- a training attack returns what it trains on from :meth:`Attack.rows_request`: the audit then prepares the
  token rows (:class:`TrainingRows`) from the forget set in the metrics' own prompt forms and passes them to
  :meth:`Attack.build`, so no attack imports a metric or reads a forget set;
- an attack that compares the model with its original (``ablate:direction``) sets ``needs_reference``: the
  audit then refuses the spec without a reference, passes the original's :class:`ModelSource` to
  :meth:`Attack.build` as ``reference=`` and keys the cell's stored results on the original's identity too;
- an attack that holds more than one attacked copy at its peak (a full fine-tune: gradients, optimizer state)
  sets ``memory_copies``, so that a sweep's worker declares enough memory;
- imports its heavy packages inside those methods, never at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import ModelSource

FULL_PRECISION = "fp"  # the name of the unattacked cell (not an attack)
KINDS = ("quantization", "pruning", "training", "white-box")
PACKAGES = ("hubaudit.quant", "hubaudit.attacks")  # every module in these registers its attacks


@dataclass(frozen=True)
class AttackSpec:
    """A parsed spec string: the attack's ``name`` and its positional ``args``
    (``rtn:4:g128`` -> rtn, (4, g128)); ``resolved``: what :meth:`Attack.resolve` pinned for it (a ``file:``
    spec's :class:`~hubaudit.quant.artifact.Artifact`), carried with the spec to the cell that runs it (not part
    of its equality: the text names the cell)."""

    name: str
    args: tuple[str, ...] = ()
    resolved: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> "AttackSpec":
        text = text.strip()
        if not text:
            raise SpecError("empty attack spec; use for example rtn:4 (see `hubaudit attacks`)")
        parts = text.split(":")
        if any(p == "" for p in parts):
            raise SpecError(f"malformed spec '{text}': empty part between colons")
        return cls(parts[0].lower(), tuple(parts[1:]))

    @property
    def backend(self) -> str:
        """The attack's name under its older name (read-only)."""
        return self.name

    def __str__(self) -> str:
        return ":".join((self.name, *self.args))


@dataclass(frozen=True)
class RowsRequest:
    """What a training attack wants to train on: ``data`` ``forget`` (the first ``frac`` of every forget part
    the metrics score item by item; those items are then held out of its regained figures) or ``retain``
    (every retain item, nothing held out). ``answers``: each row an ``(ids, start)`` pair whose first ``start``
    ids are the prompt (question, passage prefix), so that a loss can be taken on the answer alone."""

    data: str = "forget"
    frac: float = 0.1
    answers: bool = False


@dataclass
class TrainingRows:
    """Token-id rows prepared by the audit for a training attack, and how many leading items of each forget
    part they use (``trained_items``, recorded in the cell's settings so the audit can hold them out)."""

    rows: list[list[int]]
    trained_items: dict[str, int] = field(default_factory=dict)
    description: str = ""  # for messages: "forget set 'news', forget items"


class Attack:
    """Base class of a recovery attack (see the module docstring for how to add one)."""

    name: str = ""
    kind: str = "quantization"  # one of KINDS
    summary: str = ""
    examples: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # importable module names
    extra: str | None = None  # pip extra: pip install 'hubaudit[EXTRA]'
    needs_gpu: bool = False
    prefers_gpu: bool = False  # runs on a CPU, much faster on a GPU (training attacks): `hubaudit attacks` says so
    # True: a spec names a published build of the audited model (``file:``), not a recipe: it is not
    # applied to the reference model
    artifact: bool = False
    report_note: str = ""  # what the attack does, for the report's table of recovery attacks
    noun: str = "quantization"  # what the verdict says did not survive: "quantization", "relearning", "pruning"
    # True: build() needs the original (reference) model, passed as ``reference=``; the audit refuses the
    # spec when there is none
    needs_reference: bool = False
    # copies of the model, at the compute dtype, one cell of this attack holds at its peak, the full-precision
    # model included: 2 (the model and its attacked copy); a full fine-tune with AdamW holds 5 (the copy's
    # gradients and the optimizer's two moments besides). What a sweep's worker declares to Ray as memory.
    memory_copies: int = 2

    @property
    def family(self) -> str:
        """``quantization`` or ``recovery`` (every other kind): how the report and the verdict group cells."""
        return "quantization" if self.kind == "quantization" else "recovery"

    def validate(self, spec: AttackSpec) -> None:
        """Raise :class:`SpecError` if ``spec`` is not a valid spec for this attack."""

    def rows_request(self, spec: AttackSpec) -> RowsRequest | None:
        """For a training attack, what the audit should prepare rows from; None (the default): no rows."""
        return None

    def unavailable_reason(self) -> str | None:
        """Why this attack cannot run here (missing package, no GPU), or None when it can."""
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
        """Versions of the packages this attack used, for the report."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for mod in ("torch", *self.requires):
            try:
                out[mod] = version(mod)
            except PackageNotFoundError:
                pass
        return out

    def resolve(self, spec: AttackSpec, *, token: str | None = None, all_files: bool = False,
                allow_pickle: bool = False) -> list[AttackSpec]:
        """Called once per audit or sweep when its plan is made, before any model is loaded: find and pin what
        the spec needs (a ``file:`` artifact: its file hash or Hub commit, in :attr:`AttackSpec.resolved`),
        raising a :class:`~hubaudit.errors.HubauditError` for what a user must fix. Returns the specs this one
        stands for (itself; ``file:`` with ``--all-files``: one per GGUF file)."""
        return [spec]

    def check(self, spec: AttackSpec, source: "ModelSource") -> None:
        """Check a resolved spec against the audited model (config and tokenizer; no weights loaded), raising a
        :class:`~hubaudit.errors.HubauditError`; the default checks nothing."""

    def prepare(self, spec: AttackSpec, source: "ModelSource", **kw) -> list[AttackSpec]:
        """:meth:`resolve`, then :meth:`check` of each resolved spec against ``source``."""
        out = self.resolve(spec, **kw)
        for s in out:
            self.check(s, source)
        return out

    def identity(self, spec: AttackSpec) -> str | None:
        """What pins the cell's weights beyond the spec text (a published artifact's file hash or commit),
        or None; part of every stored result's key."""
        return None

    def cache_key(self, spec: AttackSpec, source: "ModelSource") -> dict | None:
        """What else the cell's results depend on, on this machine, beyond the spec text, the device type
        and the full-precision compute dtype (``cast:``: the dtype it computes in), or None; part of every
        stored result's key."""
        return None

    def apply(self, model: Any, spec: AttackSpec) -> tuple[Any, dict]:
        """Change a loaded full-precision ``model`` in place; return it and the settings used."""
        raise NotImplementedError

    def build(self, source: "ModelSource", spec: AttackSpec, rows: TrainingRows | None = None) -> tuple[Any, dict]:
        """Return the attacked model built from ``source`` and the exact settings used; ``rows``: what the
        audit prepared for :meth:`rows_request` (None when the attack asked for nothing). An attack with
        :attr:`needs_reference` is called with ``reference=``, the original's :class:`ModelSource` (the source
        itself when the cell is the original's own).

        The default copies the full-precision model held by ``source`` and calls :meth:`apply`. An attack
        that finds nothing to change returns ``source.model`` itself with ``identical_to_full_precision: True``
        in the settings; the audit then reuses the full-precision results for that cell instead of evaluating
        the same weights again.
        """
        return self.apply(source.fresh_copy(), spec)


ATTACKS: Registry[type[Attack]] = Registry("attack", SpecError)
register = ATTACKS.decorator()
_discovered = False


def _discover() -> None:
    """Import every module of :data:`PACKAGES` once, so their ``@register`` lines run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name != "base":
                importlib.import_module(f"{name}.{info.name}")


def get_attack(spec: AttackSpec | str) -> tuple[Attack, AttackSpec]:
    """The attack instance for ``spec`` (validated) and the parsed spec.

    Raises:
        SpecError: unknown attack (with a close match when there is one) or malformed arguments.
    """
    _discover()
    if isinstance(spec, str):
        spec = AttackSpec.parse(spec)
    if spec.name == FULL_PRECISION:
        raise SpecError("'fp' (full precision) is always audited; list only attack specs")
    if spec.name not in ATTACKS:
        raise SpecError(unknown_attack(spec.name))
    attack = ATTACKS.get(spec.name)()
    attack.validate(spec)
    return attack, spec


def parse_specs(specs) -> list[AttackSpec]:
    """Parse and validate a comma-separated string or a list of specs; duplicates dropped, order kept."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out: list[AttackSpec] = []
    for s in specs:
        _, spec = get_attack(s)
        if spec not in out:
            out.append(spec)
    return out


def unknown_attack(name: str) -> str:
    """The message for a spec naming no attack: the attacks there are, by kind, and a close match if any."""
    import difflib

    names = list(ATTACKS)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    groups = {"quantization": "quantization backends", "pruning": "pruning", "training": "training attacks",
              "white-box": "white-box attacks"}
    known = "; ".join(f"{label}: {', '.join(n for n, cls in ATTACKS.items() if cls.kind == kind)}"
                      for kind, label in groups.items() if any(cls.kind == kind for _, cls in ATTACKS.items()))
    return f"unknown attack '{name}'{hint} ({known}); see `hubaudit attacks`"


def spec_family(spec: str) -> str:
    """The spec's family, ``quantization`` or ``recovery`` (:attr:`Attack.family`); ``fp`` for full precision."""
    if spec == FULL_PRECISION:
        return FULL_PRECISION
    try:
        return get_attack(spec)[0].family
    except SpecError:
        return "quantization"


spec_kind = spec_family  # the older name (it returns a family, not a kind)


def all_attacks(kind: str | None = None) -> list[Attack]:
    """Every registered attack (of one ``kind`` when given), by name."""
    _discover()
    return [cls() for _, cls in ATTACKS.items() if kind is None or cls.kind == kind]
