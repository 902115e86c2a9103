"""TOFU (Maini et al., 2024: fictitious authors) as a forget set.

On the Hub, ``locuslab/TOFU`` holds one file per config at the top level, JSON lines despite the
``.json`` name (``forget10.json``, ``forget10_perturbed.json``, ``retain_perturbed.json`` ...); the
parquet conversion stores ``CONFIG/train-00000-of-00001.parquet``. Both layouts are read.

Rows: ``question``, ``answer``; the ``*_perturbed`` configs add ``paraphrased_answer``,
``perturbed_answer`` (a list of five wrong answers in the same style) and ``paraphrased_question``.

Shorthands: ``tofu-forget01``, ``tofu-forget05``, ``tofu-forget10`` (also ``locuslab/TOFU:forget10``,
either with ``@revision``). The forget part is ``forgetNN_perturbed`` (TOFU evaluates forgetting on it;
``forgetNN`` when the perturbed file is missing, with no truth ratio then); the retain part is
``retain_perturbed``, TOFU's 400-question retain evaluation set; TOFU's two other utility sets,
``real_authors_perturbed`` and ``world_facts_perturbed``, go to the ``tofu_real_authors`` and
``tofu_world_facts`` parts when present (model utility needs all three). ``retainNN`` (the complement of
``forgetNN``: ``retain90`` for ``forget10``), which open-unlearning trains its retain loss on, is read when
present as training data for ``hubaudit unlearn`` (``tofu_retain_train``; no metric scores it).

In a local MUSE-layout folder the same items go to ``tofu/forget.json``, ``tofu/retain.json``,
``tofu/real_authors.json``, ``tofu/world_facts.json`` and ``tofu/retain_train.json``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ..errors import ForgetSetError
from .readers import EXTENSIONS, Format, _field, _read_rows, register_format
from .types import QA, ForgetSet, TofuQA, wrong_answers_by_kind

TOFU_REPO = "locuslab/TOFU"
SHORTHAND = re.compile(r"^tofu-(forget(?:01|05|10))(?:@(.+))?$")
REPO_CONFIG = re.compile(r"^([\w.\-]+/[\w.\-]+):(forget(?:01|05|10))(?:@(.+))?$")
RETAIN_CONFIG = "retain_perturbed"
UTILITY_CONFIGS = {"tofu_real_authors": "real_authors_perturbed", "tofu_world_facts": "world_facts_perturbed"}


def tofu_item(path, n: int, row, allow_no_paraphrase: bool = False) -> TofuQA:
    """One TOFU row (question, answer, and the optional perturbation fields)."""
    question = _field(path, n, row, "question")
    answer = _field(path, n, row, "answer")
    para = row.get("paraphrased_answer") or ""
    pert = row.get("perturbed_answer", row.get("perturbed_answers")) or []
    if isinstance(pert, str):
        try:
            pert = json.loads(pert)
        except json.JSONDecodeError:
            pert = [pert]
    if not isinstance(para, str) or not isinstance(pert, (list, tuple)) or not all(isinstance(p, str) for p in pert):
        raise ForgetSetError(f"{path}: item {n}: 'paraphrased_answer' must be text and 'perturbed_answer' a list of texts")
    if pert and not para and not allow_no_paraphrase:
        raise ForgetSetError(f"{path}: item {n} has perturbed answers but no 'paraphrased_answer' (the truth ratio needs both)")
    pq = row.get("paraphrased_question") or ""
    return TofuQA(question, answer, para, tuple(pert), pq if isinstance(pq, str) else "")


def _read_lines_or_json(path: Path) -> list:
    """TOFU's ``.json`` files are JSON lines; a real JSON array is read too."""
    if path.suffix.lower() != ".json":
        return _read_rows(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ForgetSetError(f"{path}: line {k} is not valid JSON ({e.msg})") from None
    return rows


def config_files(root: Path, config: str) -> list[Path]:
    """The file(s) of one config: ``CONFIG.json|jsonl|parquet`` at the top, or ``CONFIG/*.parquet``
    (the parquet converter's ``CONFIG/train-00000-of-00001.parquet``)."""
    top = [root / (config + ext) for ext in EXTENSIONS if (root / (config + ext)).is_file()]
    if top:
        return top[:1]
    folder = root / config
    return sorted(p for ext in EXTENSIONS for p in folder.glob(f"*{ext}") if p.is_file()) if folder.is_dir() else []


def read_config(root: Path, config: str) -> list[TofuQA] | None:
    paths = config_files(root, config)
    if not paths:
        return None
    items: list[TofuQA] = []
    lenient = config in UTILITY_CONFIGS.values()  # their truth ratio compares the answer, not a paraphrase
    for p in paths:
        items += [tofu_item(p, n, row, lenient) for n, row in enumerate(_read_lines_or_json(p), 1)]
    return items


def read_tofu_dir(root: Path, split: str, name: str, source: str) -> ForgetSet:
    """A TOFU snapshot (or folder with TOFU's files) as a :class:`ForgetSet`."""
    root = Path(root)
    fs = ForgetSet(name=name, source=source, meta={"benchmark": "tofu", "split": split})
    forget = read_config(root, f"{split}_perturbed")
    fs.files["tofu_forget"] = f"{split}_perturbed"
    if forget is None:
        forget = read_config(root, split)
        fs.files["tofu_forget"] = split
    if forget is None:
        raise ForgetSetError(f"{source}: neither {split}_perturbed nor {split} found (.json/.jsonl/.parquet, or {split}/*.parquet)")
    if not forget:
        raise ForgetSetError(f"{source}: {fs.files['tofu_forget']} is empty")
    fs.tofu_forget = forget
    retain = read_config(root, RETAIN_CONFIG)
    if retain is not None:
        fs.tofu_retain = retain
        fs.files["tofu_retain"] = RETAIN_CONFIG
    train = read_config(root, retain_split(split))
    if train is not None:
        fs.tofu_retain_train = train
        fs.files["tofu_retain_train"] = retain_split(split)
    for part, config in UTILITY_CONFIGS.items():
        items = read_config(root, config)
        if items is not None:
            setattr(fs, part, items)
            fs.files[part] = config
    return fs


def retain_split(split: str) -> str:
    """TOFU's retain split for a forget split: ``forget10`` -> ``retain90``."""
    return f"retain{100 - int(split[len('forget'):]):02d}"


@register_format
class TofuFormat(Format):
    name = "tofu"
    summary = "TOFU from the Hub: tofu-forget01, tofu-forget05, tofu-forget10 (or locuslab/TOFU:forget10)"

    def detect(self, source: str) -> bool:
        return bool(SHORTHAND.match(source) or REPO_CONFIG.match(source))

    def read(self, source: str) -> ForgetSet:
        from ..source import fetch_dataset

        m = SHORTHAND.match(source)
        if m:
            repo, split, rev = TOFU_REPO, m.group(1), m.group(2)
        else:
            repo, split, rev = REPO_CONFIG.match(source).groups()
        configs = (split, f"{split}_perturbed", RETAIN_CONFIG, retain_split(split), *UTILITY_CONFIGS.values())
        patterns = [f"{c}{ext}" for c in configs for ext in EXTENSIONS] + [f"{c}/*.parquet" for c in configs]
        snap = fetch_dataset(repo, rev or None, patterns=patterns)
        name = f"tofu-{split}" if repo == TOFU_REPO else f"{repo}:{split}"
        fs = read_tofu_dir(snap.path, split, name, f"hub:{repo}@{snap.sha}")
        fs.meta["hub"] = {"repo_id": repo, "sha": snap.sha}
        return fs


def tofu_from_qa(qa: list[QA], kind_of=None, n_perturbed: int = 3, seed: int = 0) -> list[TofuQA]:
    """TOFU-shaped items from plain QA, for sets that have no perturbed answers (the synthetic set).

    Perturbed answers are other items' answers to the same kind of question (``kind_of(index, qa)``,
    default: the question with capitalized words removed), distinct from the right answer; the
    "paraphrased" answer is the answer itself (there is no paraphrase), so the truth ratio compares
    wrong answers against the right one. Deterministic for a seed.
    """
    rng = random.Random(seed)
    out = []
    for x, wrong in zip(qa, wrong_answers_by_kind(qa, kind_of)):
        rng.shuffle(wrong)
        out.append(TofuQA(x.question, x.answer, x.answer, tuple(wrong[:n_perturbed])))
    return out
