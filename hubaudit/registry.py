"""A small typed registry: names to classes, duplicates rejected, close matches suggested.

Used for quantization backends and forget-set formats (and metrics), so that adding one is one new
file with a ``@register`` decorator, never an ``if/else`` chain. Modeled on lm-evaluation-harness's
``lm_eval/api/registry.py``.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import HubauditError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries of one kind.

    Args:
        kind: what the entries are, used in messages ("quantization backend").
        error: the exception class raised for an unknown name.
    """

    def __init__(self, kind: str, error: type[HubauditError] = HubauditError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Take an entry out (a test that registered one of its own)."""
        return self._entries.pop(name)

    def decorator(self, attr: str = "name") -> Callable[[T], T]:
        """A class decorator registering the class under its ``attr`` attribute."""

        def wrap(entry: T) -> T:
            return self.add(getattr(entry, attr), entry)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(self._entries))
            raise self.error(f"unknown {self.kind} '{name}'{hint} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def in_order(self) -> list[T]:
        """The entries in the order they were registered."""
        return list(self._entries.values())
