"""Quantization backends behind spec strings (``rtn:4``, ``cast:bf16``...): attacks of kind ``quantization``
in the one attack registry (:mod:`hubaudit.attacks`). See :mod:`hubaudit.quant.base`."""

from ..attacks.base import parse_specs
from .base import FULL_PRECISION, Backend, QuantSpec, all_backends, get_backend, register

__all__ = ["FULL_PRECISION", "Backend", "QuantSpec", "all_backends", "get_backend", "register", "parse_specs"]
