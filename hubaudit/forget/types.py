"""The one in-memory type every forget-set reader produces."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from ..errors import ForgetSetError


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class Passage:
    """A verbatim-memorization item: the model sees ``prompt`` and should (not) continue with ``gt``."""

    prompt: str
    gt: str


@dataclass(frozen=True)
class Choice:
    """A multiple-choice item (WMDP-style): ``answer`` is the index of the right entry of ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""  # MMLU-style subject ("college_biology"), for the prompt's description line; "" = the set's


@dataclass(frozen=True)
class TofuQA:
    """A TOFU evaluation item: a question, its answer, and (in TOFU's ``*_perturbed`` splits) a paraphrase
    of the answer and wrong answers in the same style, which the truth ratio compares."""

    question: str
    answer: str
    paraphrased_answer: str = ""
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str = ""


# part name -> (item type, the metric(s) that need it, where it lives in the MUSE layout)
PARTS: dict[str, tuple[type | None, str]] = {
    "verbmem": (Passage, "verbmem/forget"),
    "forget_qa": (QA, "knowmem/forget_qa"),
    "forget_qa_icl": (QA, "knowmem/forget_qa_icl"),
    "retain_qa": (QA, "knowmem/retain_qa"),
    "retain_qa_icl": (QA, "knowmem/retain_qa_icl"),
    "mia_forget": (None, "privleak/forget"),  # plain strings
    "mia_retain": (None, "privleak/retain"),
    "mia_holdout": (None, "privleak/holdout"),
    "mcq": (Choice, "mcq/forget"),
    "mcq_retain": (Choice, "mcq/retain"),  # general multiple choice (MMLU subsets): utility beside WMDP
    "tofu_forget": (TofuQA, "tofu/forget"),  # TOFU-style QA with paraphrased/perturbed answers
    "tofu_retain": (TofuQA, "tofu/retain"),
    "tofu_real_authors": (TofuQA, "tofu/real_authors"),  # TOFU's model-utility sets (real_authors_perturbed,
    "tofu_world_facts": (TofuQA, "tofu/world_facts"),  # world_facts_perturbed)
}
# Parts added after the first release: left out of content_hash while absent, so the hash of a set
# without them (and the results stored under it) stays what it was.
_LATER_PARTS = ("mcq_retain", "tofu_forget", "tofu_retain", "tofu_real_authors", "tofu_world_facts")

# Training text: what ``hubaudit unlearn`` trains on, never what a metric scores. MUSE ships its corpora in
# ``raw/`` (``forget``, ``retain1``, ``retain2``, ``holdout``; the paper's scripts unlearn ``raw/forget`` with
# ``raw/retain1`` as the retain set); ``raw/retain`` is read first, else ``raw/retain1``. A ``.txt`` file is
# one text (MUSE's own ``raw/*.txt``). TOFU's ``retainNN`` split (the complement of ``forgetNN``) is the retain
# QA open-unlearning trains on. No audit metric reads these parts, so they are not in :meth:`ForgetSet.sizes`
# or :meth:`ForgetSet.content_hash` (the results store's key); :meth:`ForgetSet.training_hash` covers them.
TRAIN_PARTS: dict[str, tuple[type | None, str]] = {
    "forget_train": (None, "raw/forget"),
    "retain_train": (None, "raw/retain"),
    "tofu_retain_train": (TofuQA, "tofu/retain_train"),
}
TRAIN_ALTERNATIVES: dict[str, tuple[str, ...]] = {"retain_train": ("raw/retain1",)}


@dataclass
class ForgetSet:
    """The parts an audit needs. A part that is ``None`` is absent (its metrics are switched off by
    default); a part that is an empty list was given but holds nothing (an error if a metric needs it).

    Attributes:
        name: a short name for reports ("synthetic", "muse-news", a folder name).
        source: where it was read from (a path or a Hub id), for the report.
        auc_retrain: the MIA AUC of a model retrained without the forget set, if the set's metadata
            knows it (MUSE News 0.4772, Books 0.5393); PrivLeak is relative to it.
        files: part name -> the file it was read from, for messages.
    """

    name: str
    source: str
    verbmem: list[Passage] | None = None
    forget_qa: list[QA] | None = None
    forget_qa_icl: list[QA] | None = None
    retain_qa: list[QA] | None = None
    retain_qa_icl: list[QA] | None = None
    mia_forget: list[str] | None = None
    mia_retain: list[str] | None = None
    mia_holdout: list[str] | None = None
    mcq: list[Choice] | None = None
    mcq_retain: list[Choice] | None = None
    tofu_forget: list[TofuQA] | None = None
    tofu_retain: list[TofuQA] | None = None
    forget_train: list[str] | None = None
    retain_train: list[str] | None = None
    tofu_retain_train: list[TofuQA] | None = None
    tofu_real_authors: list[TofuQA] | None = None
    tofu_world_facts: list[TofuQA] | None = None
    auc_retrain: float | None = None
    meta: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Number of items of each present part."""
        return {p: len(getattr(self, p)) for p in PARTS if getattr(self, p) is not None}

    def training_sizes(self) -> dict[str, int]:
        """Number of items of each present training part (:data:`TRAIN_PARTS`)."""
        return {p: len(getattr(self, p)) for p in TRAIN_PARTS if getattr(self, p) is not None}

    def has(self, part: str) -> bool:
        return getattr(self, part) is not None

    def require(self, part: str, metric: str) -> list:
        """The items of ``part``, or a :class:`ForgetSetError` naming the metric to switch off."""
        items = getattr(self, part)
        where = self.files.get(part, {**PARTS, **TRAIN_PARTS}[part][1])
        if items is None:
            raise ForgetSetError(
                f"forget set '{self.name}' has no {part} part ({where}), which {metric} needs; "
                f"add it or leave {metric} out of --metrics"
            )
        if not items:
            raise ForgetSetError(
                f"forget set '{self.name}': {where} is empty, and {metric} needs it; "
                f"fill it or leave {metric} out of --metrics"
            )
        return items

    def to_json(self) -> dict:
        out = {"name": self.name, "source": self.source, "auc_retrain": self.auc_retrain, "meta": self.meta}
        for p in PARTS:
            items = getattr(self, p)
            out[p] = None if items is None else [x if isinstance(x, str) else asdict(x) for x in items]
        for p in TRAIN_PARTS:
            items = getattr(self, p)
            if items is not None:
                out[p] = [x if isinstance(x, str) else asdict(x) for x in items]
        return out

    def content_hash(self) -> str:
        """sha256 of the parts' content (not of names or paths): the store's key for this set."""
        parts = {}
        for p in PARTS:
            items = getattr(self, p)
            if items is None and p in _LATER_PARTS:
                continue
            parts[p] = None if items is None else [x if isinstance(x, str) else _hash_item(x) for x in items]
        blob = json.dumps({"parts": parts, "auc_retrain": self.auc_retrain}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def training_hash(self) -> str:
        """sha256 of :meth:`content_hash` and the training parts: what an unlearning run's key covers."""
        parts = {p: [x if isinstance(x, str) else asdict(x) for x in getattr(self, p)]
                 for p in TRAIN_PARTS if getattr(self, p) is not None}
        blob = json.dumps({"content": self.content_hash(), "train": parts}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _hash_item(x) -> dict:
    d = asdict(x)
    if isinstance(x, Choice) and not x.subject:
        d.pop("subject")  # as before the field existed
    return d


def wrong_answers_by_kind(qa: list[QA], kind_of=None) -> list[list[str]]:
    """For each item, the distinct answers of the other items that ask the same kind of question
    (``kind_of(index, item)``; default: the question without its first word and its capitalized words),
    in order of first appearance: the distractors the TOFU- and WMDP-shaped sets built from plain QA use."""
    if kind_of is None:
        def kind_of(i, x):
            return " ".join(w for w in x.question.split()[1:] if not w[:1].isupper())
    kinds = [kind_of(i, x) for i, x in enumerate(qa)]
    pool: dict = {}
    for k, x in zip(kinds, qa):
        if x.answer not in pool.setdefault(k, []):
            pool[k].append(x.answer)
    return [[a for a in pool[k] if a != x.answer] for k, x in zip(kinds, qa)]


assert {f.name for f in fields(ForgetSet)} >= set(PARTS) | set(TRAIN_PARTS)
