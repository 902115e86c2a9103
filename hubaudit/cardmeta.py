"""Model-card metadata, read the way the Hub reads it and safely.

- The front matter is found with huggingface_hub's own rule (``repocard.REGEX_YAML_BLOCK``: leading blank
  lines allowed, CRLF or LF), so hubaudit and the Hub agree on where the metadata is.
- YAML aliases are refused: a card is written by a stranger, and a few hundred bytes of nested aliases
  expand to hundreds of megabytes (a "billion laughs"). The metadata must be a mapping, at most
  ``MAX_YAML_BYTES`` long.
- :func:`card_strings` reads a key as plain strings only (a string, or a list of strings); anything else
  counts as absent.

Only PyYAML is imported, inside the functions.
"""

from __future__ import annotations

import re
from typing import Any

# The same pattern as huggingface_hub.repocard.REGEX_YAML_BLOCK (a test checks they stay equal).
REGEX_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_DEPTH = 50  # real metadata is a few levels deep (model-index: 6); 2,000 levels exhaust the stack


class CardMetadataError(ValueError):
    """The card's metadata cannot be used: not YAML, not a mapping, aliases, or too long."""


def _loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases (``*name``), so nothing expands beyond what is written."""

        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise CardMetadataError(f"YAML aliases are not accepted in a model card (line {event.start_mark.line + 1})")
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                event = self.peek_event()
                raise CardMetadataError(f"the card's metadata is nested more than {MAX_YAML_DEPTH} levels deep "
                                        f"(line {event.start_mark.line + 1})")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return NoAliasLoader


def safe_yaml(text: str) -> Any:
    """Parse YAML with aliases refused and a size limit; raises :class:`CardMetadataError`."""
    import yaml

    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise CardMetadataError(f"the card's metadata is longer than {MAX_YAML_BYTES // 1024} KiB")
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except CardMetadataError:
        raise
    except yaml.YAMLError as e:
        raise CardMetadataError(f"the card's YAML metadata cannot be read ({str(e).splitlines()[0]})") from None
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise CardMetadataError("the card's metadata is nested too deeply") from None


def split_front_matter(text: str) -> tuple[str, str, str, str] | None:
    """``(opening, yaml, closing, body)`` with ``opening + yaml + closing + body == text``, where ``yaml``
    ends with its line break (empty when the block is empty); None when the card has no front matter."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""  # a UTF-8 byte-order mark stays before the opening fence
    rest = text[len(bom):]
    m = REGEX_YAML_BLOCK.search(rest)
    if not m:
        return None
    block, close = m.group(2), m.group(3)
    nl = "\r\n" if close.startswith("\r\n") else close[0]
    if block:
        return bom + m.group(1), block + nl, close[len(nl):], rest[m.end():]
    return bom + m.group(1), "", close[len(nl):], rest[m.end():]


def read_metadata(text: str) -> dict:
    """The card's metadata as a mapping ({} without front matter); raises :class:`CardMetadataError`."""
    parts = split_front_matter(text)
    if parts is None:
        return {}
    data = safe_yaml(parts[1])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardMetadataError("the card's metadata is not a mapping of keys to values")
    return data


def card_strings(card: dict | None, key: str) -> list[str]:
    """``card[key]`` as a list of plain strings: a string, or a list whose items are all strings; any
    other shape (numbers, mappings, nested lists) gives []."""
    value = (card or {}).get(key)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []
