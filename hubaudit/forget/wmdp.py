"""WMDP (Li et al., 2024: hazardous knowledge) as a forget set, with MMLU subsets as its utility check.

On the Hub, ``cais/wmdp`` has the configs ``wmdp-bio``, ``wmdp-cyber``, ``wmdp-chem``, split ``test``,
stored as ``CONFIG/test-00000-of-00001.parquet``; rows are ``question``, ``choices`` (four texts) and
``answer`` (0-3). ``cais/mmlu`` has one config per subject (``college_biology`` ...), same row shape.

Shorthands ``wmdp-bio``, ``wmdp-cyber``, ``wmdp-chem`` (optionally ``@revision``) read the WMDP
config into the ``mcq`` part and, as the WMDP paper reports utility beside it, the MMLU subjects
closest to it into ``mcq_retain`` (:data:`MMLU_UTILITY`: 2 of MMLU's 57 subjects, which the report says).
``wmdp-bio+mmlu=all`` reads the whole group (``cais/mmlu`` config ``all``, 14,042 questions; their mean is
the harness's ``mmlu`` group accuracy, which weights subjects by size), ``wmdp-bio+mmlu=virology,anatomy``
chooses subjects, ``wmdp-bio+mmlu=`` (empty) reads none.

In a local MUSE-layout folder the same items go to ``mcq/forget.json`` and ``mcq/retain.json``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..errors import ForgetSetError
from .readers import EXTENSIONS, Format, _parse_items, _read_rows, register_format
from .types import QA, Choice, ForgetSet, wrong_answers_by_kind

WMDP_REPO = "cais/wmdp"
MMLU_REPO = "cais/mmlu"
# lm-evaluation-harness's wmdp task descriptions (lm_eval/tasks/wmdp/wmdp_*.yaml): "The following are
# multiple choice questions (with answers) about {subject}.\n\n"
SUBJECTS = {"wmdp-bio": "biology", "wmdp-chem": "chemistry", "wmdp-cyber": "cybersecurity"}
# Utility beside each WMDP split: the MMLU subjects the WMDP paper (RMU) reports as closest to it.
MMLU_SUBJECTS_TOTAL = 57
MMLU_UTILITY = {
    "wmdp-bio": ("college_biology", "virology"),
    "wmdp-cyber": ("college_computer_science", "computer_security"),
    "wmdp-chem": ("college_chemistry", "high_school_chemistry"),
}
SHORTHAND = re.compile(r"^(wmdp-(?:bio|cyber|chem))(?:\+mmlu=([\w,]*))?(?:@(.+))?$")


def _config_files(root: Path, config: str, split: str) -> list[Path]:
    folder = root / config
    files = sorted(p for ext in EXTENSIONS for p in folder.glob(f"{split}*{ext}") if p.is_file()) if folder.is_dir() else []
    if not files:
        files = sorted(p for ext in EXTENSIONS for p in root.glob(f"{config}*{split}*{ext}") if p.is_file())
    return files


def read_mcq_config(root: Path, config: str, split: str = "test", subject: str = "") -> list[Choice]:
    files = _config_files(Path(root), config, split)
    if not files:
        raise ForgetSetError(f"{root}: no {config}/{split}-*.parquet (or .json/.jsonl/.csv) found")
    items: list[Choice] = []
    for p in files:
        rows = _read_rows(p)
        for r in rows:
            if isinstance(r, dict) and "choices" in r and not isinstance(r["choices"], (list, str)):
                r["choices"] = list(r["choices"])  # numpy arrays and the like
        items += [Choice(x.question, x.choices, x.answer, x.subject or subject) for x in _parse_items("mcq", p, rows)]
    if not items:
        raise ForgetSetError(f"{files[0]}: empty")
    return items


@register_format
class WmdpFormat(Format):
    name = "wmdp"
    summary = "WMDP from the Hub: wmdp-bio, wmdp-cyber, wmdp-chem (+ MMLU subsets as utility; +mmlu=a,b to choose)"

    def detect(self, source: str) -> bool:
        return bool(SHORTHAND.match(source))

    def read(self, source: str) -> ForgetSet:
        from ..source import fetch_dataset

        config, mmlu, rev = SHORTHAND.match(source).groups()
        subjects = MMLU_UTILITY[config] if mmlu is None else tuple(s for s in mmlu.split(",") if s)
        snap = fetch_dataset(WMDP_REPO, rev or None, patterns=[f"{config}/*", f"{config}.*", f"{config}-*"])
        fs = ForgetSet(name=config, source=f"hub:{WMDP_REPO}@{snap.sha}",
                       meta={"benchmark": "wmdp", "subject": SUBJECTS[config], "mmlu_subjects": list(subjects),
                             "hub": {"repo_id": WMDP_REPO, "sha": snap.sha}})
        fs.mcq = read_mcq_config(snap.path, config)
        fs.files["mcq"] = f"{WMDP_REPO}/{config}/test"
        if subjects:
            msnap = fetch_dataset(MMLU_REPO, None, patterns=[f"{s}/test-*" for s in subjects])
            # the "all" config's rows carry their own subject (read from the row)
            fs.mcq_retain = [x for s in subjects for x in read_mcq_config(msnap.path, s, "test", "" if s == "all" else s)]
            fs.files["mcq_retain"] = f"{MMLU_REPO}/{{{','.join(subjects)}}}/test"
            fs.meta["mmlu_sha"] = msnap.sha
        return fs


def mcq_from_qa(qa: list[QA], kind_of=None, n_choices: int = 4, seed: int = 0) -> list[Choice]:
    """Four-way multiple choice from plain QA (for sets without one, e.g. the synthetic set): the
    distractors are other items' answers to the same kind of question, the right answer's position is
    drawn at random. Items whose kind has fewer than ``n_choices`` distinct answers are left out."""
    rng = random.Random(seed)
    out = []
    for x, wrong in zip(qa, wrong_answers_by_kind(qa, kind_of)):
        if len(wrong) < n_choices - 1:
            continue
        choices = rng.sample(wrong, n_choices - 1)
        pos = rng.randrange(n_choices)
        choices.insert(pos, x.answer)
        out.append(Choice(x.question, tuple(choices), pos))
    return out
