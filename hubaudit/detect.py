"""Which forget set fits a model: read its card (``datasets``, ``tags``, ``base_model``, the text) and
propose one of the sets hubaudit knows (``tofu-forget01|05|10``, ``wmdp-bio|cyber|chem``,
``muse-news``, ``muse-books``), with the reason, for the CLI to confirm and the Space to pre-fill.

Explicit metadata wins over prose: a ``datasets:`` entry naming a benchmark's Hub repository, then a
tag, then keywords in the description. Nothing is guessed from the model's weights.

Example:
    >>> propose_forget_set({"datasets": ["locuslab/TOFU"]}, "Unlearned on forget05 with NPO.")
    ('tofu-forget05', "the card's datasets list locuslab/TOFU and it mentions forget05")
"""

from __future__ import annotations

import re
from pathlib import Path

_TOFU_SPLIT = re.compile(r"forget[_\- ]?(01|05|10)(?![0-9])|forget[_\- ]?(1|5|10)\s?%", re.I)
_WMDP_SUB = re.compile(r"wmdp[_\- ]?(bio|cyber|chem)", re.I)


def _tofu_split(text: str) -> tuple[str, str]:
    m = _TOFU_SPLIT.search(text)
    if not m:
        return "forget10", ""
    n = m.group(1) or m.group(2)
    split = f"forget{int(n):02d}"
    return split, f" and it mentions {m.group(0).strip()}"


def _wmdp_subset(text: str) -> tuple[str, str]:
    found = []
    for m in _WMDP_SUB.finditer(text):
        s = m.group(1).lower()
        if s not in found:
            found.append(s)
    for word, s in (("bio", "bio"), ("biosecurity", "bio"), ("biology", "bio"), ("cyber", "cyber"),
                    ("cybersecurity", "cyber"), ("chem", "chem"), ("chemistry", "chem")):
        if re.search(rf"(?<![a-z]){word}(?![a-z])", text, re.I) and s not in found:
            found.append(s)
    if not found:
        return "wmdp-bio", " (no subset named: biology, WMDP's largest)"
    note = f" and it mentions {', '.join('wmdp-' + s for s in found)}"
    if len(found) > 1:
        note += f" (audit the others with --forget {', '.join('wmdp-' + s for s in found[1:])})"
    return f"wmdp-{found[0]}", note


def propose_forget_set(card_data: dict | None, readme_text: str = "") -> tuple[str, str] | None:
    """The forget set a model card points to, as ``(source, reason)``, or None when it names none.

    Args:
        card_data: the card's YAML metadata (``datasets``, ``tags``, ``base_model`` ...).
        readme_text: the card's text (metadata included or not).
    """
    card = card_data or {}
    from .cardmeta import card_strings  # plain strings only: other shapes count as absent

    datasets = [d.lower() for d in card_strings(card, "datasets")]
    tags = [t.lower() for t in card_strings(card, "tags")]
    base = " ".join(card_strings(card, "base_model"))
    text = f"{readme_text or ''}\n{base}"
    low = text.lower()

    # 1. a datasets entry naming a benchmark's repository
    for d in datasets:
        if d == "locuslab/tofu":
            split, note = _tofu_split(text)
            return f"tofu-{split}", f"the card's datasets list locuslab/TOFU{note}"
        if d == "cais/wmdp":
            sub, note = _wmdp_subset(text + " " + " ".join(tags))
            return sub, f"the card's datasets list cais/wmdp{note}"
        if d in ("muse-bench/muse-news", "muse-bench/muse-books"):
            name = "muse-news" if d.endswith("news") else "muse-books"
            return name, f"the card's datasets list {d}"
    # 2. tags
    for t in tags:
        if t == "tofu" or t.startswith("tofu-") or t.startswith("tofu_"):
            split, note = _tofu_split(text + " " + t)
            return f"tofu-{split}", f"the card is tagged '{t}'{note}"
        if t.startswith("wmdp"):
            sub, note = _wmdp_subset(text + " " + " ".join(tags))
            return sub, f"the card is tagged '{t}'{note}"
        if t.startswith("muse"):
            name = "muse-books" if "book" in t or re.search(r"harry potter|muse[_\- ]books", low) else "muse-news"
            return name, f"the card is tagged '{t}'"
    # 3. words in the description
    if re.search(r"(?<![a-z])tofu(?![a-z])", low):
        split, note = _tofu_split(text)
        return f"tofu-{split}", f"the card mentions TOFU{note}"
    if re.search(r"(?<![a-z])wmdp(?![a-z])", low):
        sub, note = _wmdp_subset(text)
        return sub, f"the card mentions WMDP{note}"
    if re.search(r"muse[_\- ]?books|harry potter", low):
        return "muse-books", "the card mentions " + ("MUSE Books" if "muse" in low else "Harry Potter (MUSE Books)")
    if re.search(r"muse[_\- ]?news|\bbbc news\b", low):
        return "muse-news", "the card mentions MUSE News"
    return None


def read_card(model: str, *, token: str | None = None) -> tuple[dict, str]:
    """``(card_data, readme_text)`` of a local model folder or a Hub model (only README.md is fetched);
    empty when there is no card."""
    from .source import _card_data, hub_errors, parse_model_ref

    ref = parse_model_ref(model)
    if not ref.is_hub:
        readme = Path(ref.path) / "README.md"
        if not readme.is_file():
            return {}, ""
        return _card_data(Path(ref.path)), readme.read_text(encoding="utf-8", errors="replace")
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as he

    with hub_errors(ref.repo_id, ref.revision):
        try:
            path = Path(hf_hub_download(ref.repo_id, "README.md", revision=ref.revision, token=token))
        except (he.RemoteEntryNotFoundError, he.EntryNotFoundError):
            return {}, ""
    return _card_data(path.parent), path.read_text(encoding="utf-8", errors="replace")


def propose_for_model(model: str, *, token: str | None = None) -> tuple[str, str] | None:
    """:func:`propose_forget_set` for a model id or folder (for the CLI and the Space)."""
    card, text = read_card(model, token=token)
    return propose_forget_set(card, text)
