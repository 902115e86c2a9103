"""Deterministic generator of hubaudit's built-in synthetic forget set.

Fictional people (invented names, towns and companies; no real person) with a handful of facts each.
Every person gets one short biography passage; the passages and the question/answer pairs drawn from
them are written in the MUSE on-disk layout::

    verbmem/forget.json            [{"prompt", "gt"}]     first sentence -> rest of the passage
    knowmem/forget_qa.json         [{"question", "answer"}]
    knowmem/retain_qa.json
    knowmem/forget_qa_icl.json     few-shot examples (facts of the same part, never scored)
    knowmem/retain_qa_icl.json
    privleak/forget.json           [str]  passages the target is trained on (forget part)
    privleak/retain.json           [str]  passages the target is trained on (retain part)
    privleak/holdout.json          [str]  same style, people never trained on
    meta.json

``python -m hubaudit.demo.synth`` rewrites ``hubaudit/forget/data/synthetic/`` byte for byte
identically (pure ``random.Random(seed)``, no other source of randomness).

The passage is the unit of training: :func:`build` returns the people and their passages as well, so
:mod:`hubaudit.demo.world` trains on exactly the texts the files describe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SEED = 1234
VERSION = 1
N_FORGET = 28  # people in the forget part (4 scored questions each)
N_RETAIN = 28
N_HOLDOUT = 28
N_ICL = 4

DATA_DIR = Path(__file__).resolve().parent.parent / "forget" / "data" / "synthetic"

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "z", "sh", "ch"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou", "ae"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "k", "x"]
_TOWN_SUFFIX = ["ford", "vale", "moor", "wick", "holm", "stead", "mere", "bury", "haven", "crest"]
_COMPANY_SUFFIX = ["Labs", "Works", "Foundry", "Logistics", "Textiles", "Instruments", "Ceramics", "Mills", "Press"]
_PROFESSIONS = [
    "cartographer", "glassblower", "beekeeper", "locksmith", "botanist", "bookbinder", "surveyor", "tailor",
    "clockmaker", "geologist", "baker", "pharmacist", "architect", "violin maker", "ferry pilot", "librarian",
    "potter", "translator", "engineer", "astronomer", "carpenter", "chemist", "photographer", "lighthouse keeper",
]
_INSTRUMENTS = ["cello", "flute", "harp", "oboe", "accordion", "banjo", "clarinet", "trumpet", "mandolin", "piano", "viola", "bassoon"]
_ANIMALS = ["dog", "cat", "parrot", "tortoise", "goat", "rabbit", "horse", "ferret"]
_COLORS = ["green", "blue", "red", "yellow", "grey", "white", "orange", "violet"]
_NUMBERS = ["two", "three", "four", "five", "six"]


def _word(rng: random.Random, n_syll: int) -> str:
    parts = []
    for i in range(n_syll):
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if i == n_syll - 1 else ""))
    return "".join(parts).capitalize()


def _unique(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        w = make()
        if w not in taken and len(w) >= 4:
            taken.add(w)
            out.append(w)
    return out


def _passage(rng: random.Random, p: dict[str, Any]) -> tuple[str, str]:
    """(first sentence, rest) of one biography; the first sentence names the person."""
    he, his = ("She", "her") if p["gender"] == "f" else ("He", "his")
    he_l = he.lower()
    first = rng.choice([
        "{name} was born in {town} in {year}.",
        "{name} was born in the town of {town} in the year {year}.",
        "In {year}, {name} was born in {town}.",
    ]).format(**p)
    work = rng.choice([
        "{he} worked as a {profession} at {company} for most of {his} life.",
        "For many years {he_l} was a {profession} employed by {company}.",
        "{he} earned {his} living as a {profession} at {company}.",
    ])
    music = rng.choice([
        "In the evenings {he_l} played the {instrument}.",
        "{he} also played the {instrument} in a small band.",
    ])
    home = rng.choice([
        "{he} lived in a {color} house with a {animal} named {pet}.",
        "{his_c} {animal}, {pet}, slept by the door of {his} {color} house.",
    ])
    family = rng.choice([
        "{he} had {siblings} siblings.",
        "{he} was one of {siblings_plus} children.",
    ])
    middle = [work, music, home]
    rng.shuffle(middle)
    fmt = dict(p, he=he, he_l=he_l, his=his, his_c=his.capitalize())
    rest = " ".join(s.format(**fmt) for s in middle + [family])
    return first, rest


_QUESTIONS = {
    "town": ("Where was {name} born?", "{town}"),
    "year": ("In what year was {name} born?", "{year}"),
    "profession": ("What was {name}'s profession?", "{profession}"),
    "company": ("Which company employed {name}?", "{company}"),
    "instrument": ("Which instrument did {name} play?", "{instrument}"),  # ICL only
}
SCORED_FIELDS = ("town", "year", "profession", "company")


def _qa(p: dict[str, Any], field: str) -> dict[str, str]:
    q, a = _QUESTIONS[field]
    return {"question": q.format(**p), "answer": a.format(**p)}


def build(seed: int = SEED) -> dict[str, Any]:
    """Generate the whole set in memory.

    Returns a dict with ``people`` (per part: list of person dicts, each with its ``passage``),
    ``files`` (relative path -> JSON-able content, exactly what :func:`write` stores) and ``meta``.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    n_people = N_FORGET + N_RETAIN + N_HOLDOUT
    firsts = _unique(rng, n_people, lambda: _word(rng, rng.choice([2, 2, 3])), taken)
    lasts = _unique(rng, n_people, lambda: _word(rng, rng.choice([2, 3])), taken)
    towns = _unique(rng, 24, lambda: _word(rng, 1) + rng.choice(_TOWN_SUFFIX), taken)
    companies = [c + " " + rng.choice(_COMPANY_SUFFIX) for c in _unique(rng, 24, lambda: _word(rng, 2), taken)]
    pets = _unique(rng, n_people, lambda: _word(rng, 2), taken)

    people: list[dict[str, Any]] = []
    for i in range(n_people):
        siblings = rng.randrange(len(_NUMBERS))
        p = {
            "name": f"{firsts[i]} {lasts[i]}",
            "gender": rng.choice("fm"),
            "town": rng.choice(towns),
            "year": str(rng.randrange(1901, 2000)),
            "profession": rng.choice(_PROFESSIONS),
            "company": rng.choice(companies),
            "instrument": rng.choice(_INSTRUMENTS),
            "animal": rng.choice(_ANIMALS),
            "pet": pets[i],
            "color": rng.choice(_COLORS),
            "siblings": _NUMBERS[siblings],
            "siblings_plus": _NUMBERS[min(siblings + 1, len(_NUMBERS) - 1)] if siblings + 1 < len(_NUMBERS) else "seven",
        }
        first, rest = _passage(rng, p)
        p["prompt"], p["gt"] = first + " ", rest
        p["passage"] = first + " " + rest
        people.append(p)

    forget = people[:N_FORGET]
    retain = people[N_FORGET:N_FORGET + N_RETAIN]
    holdout = people[N_FORGET + N_RETAIN:]

    def qa(part):
        return [_qa(p, f) for p in part for f in SCORED_FIELDS]

    def icl(part):
        return [_qa(p, "instrument") for p in part[:N_ICL]]

    files: dict[str, Any] = {
        "verbmem/forget.json": [{"prompt": p["prompt"], "gt": p["gt"]} for p in forget],
        "knowmem/forget_qa.json": qa(forget),
        "knowmem/retain_qa.json": qa(retain),
        "knowmem/forget_qa_icl.json": icl(forget),
        "knowmem/retain_qa_icl.json": icl(retain),
        "privleak/forget.json": [p["passage"] for p in forget],
        "privleak/retain.json": [p["passage"] for p in retain],
        "privleak/holdout.json": [p["passage"] for p in holdout],
    }
    meta = {
        "name": "synthetic",
        "version": VERSION,
        "description": (
            "Built-in synthetic forget set of hubaudit: short biographies of invented people (fictional "
            "names, towns and companies), in the MUSE on-disk layout. The forget and retain parts are "
            "what the demo target model is trained on; holdout passages describe people never trained on. "
            "Regenerate with `python -m hubaudit.demo.synth`."
        ),
        "auc_retrain": None,
        "generator": "hubaudit.demo.synth",
        "seed": seed,
        "counts": {k: len(v) for k, v in files.items()},
        "people": {"forget": len(forget), "retain": len(retain), "holdout": len(holdout)},
        "scored_fields": list(SCORED_FIELDS),
        "icl_field": "instrument",
    }
    files["meta.json"] = meta
    return {"people": {"forget": forget, "retain": retain, "holdout": holdout}, "files": files, "meta": meta}


def dumps(obj: Any) -> str:
    """The one JSON serialization used for every file (stable, readable, newline-terminated)."""
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def write(out_dir: str | Path = DATA_DIR, seed: int = SEED) -> Path:
    """Write the set to ``out_dir`` (default: the package folder). Returns the folder."""
    out = Path(out_dir)
    for rel, content in build(seed)["files"].items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(content), encoding="utf-8")
    return out


if __name__ == "__main__":  # pragma: no cover
    print(f"wrote {write()}")
