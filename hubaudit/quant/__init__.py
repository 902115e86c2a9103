"""Quantization backends behind spec strings (``rtn:4``, ``cast:bf16``...). See :mod:`hubaudit.quant.base`."""

from .base import FULL_PRECISION, Backend, QuantSpec, all_backends, get_backend, register

__all__ = ["FULL_PRECISION", "Backend", "QuantSpec", "all_backends", "get_backend", "register", "parse_specs"]


def parse_specs(specs) -> list[QuantSpec]:
    """Parse and validate a comma-separated string or a list of specs; duplicates dropped, order kept."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out: list[QuantSpec] = []
    for s in specs:
        _, spec = get_backend(s)
        if spec not in out:
            out.append(spec)
    return out
