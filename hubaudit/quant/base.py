"""What a quantization backend is: an attack (:class:`hubaudit.attacks.base.Attack`) of kind
``quantization``, one module of ``hubaudit/quant/`` each, registered with ``@register`` in the one attack
registry. A backend implements :meth:`Backend.validate` and either :meth:`Backend.apply` (quantize a loaded
full-precision model in place) or, for backends that quantize while loading, :meth:`Backend.quantize`
(build the model from the :class:`ModelSource`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..attacks.base import (FULL_PRECISION, Attack, AttackSpec, all_attacks, get_attack, register,  # noqa: F401
                            spec_kind)

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import ModelSource

QuantSpec = AttackSpec  # the spec of a quantization cell: the same grammar as every attack's
get_backend = get_attack
all_backends = all_attacks


class Backend(Attack):
    """Base class of a quantization backend."""

    kind = "quantization"

    def quantize(self, source: "ModelSource", spec: AttackSpec) -> tuple[Any, dict]:
        """Return a quantized model built from ``source`` and the exact settings used; the default copies
        the full-precision model and calls :meth:`apply` (see :meth:`Attack.build`)."""
        return self.apply(source.fresh_copy(), spec)

    def build(self, source: "ModelSource", spec: AttackSpec, rows=None) -> tuple[Any, dict]:
        return self.quantize(source, spec)
