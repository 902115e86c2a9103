"""Forget-set formats, one registry entry each.

Built in:

- ``muse``: a folder in the MUSE benchmark's layout (``verbmem/forget``, ``knowmem/forget_qa`` ...,
  ``privleak/forget|retain|holdout``, optional ``mcq/forget``), each file ``.json`` (as MUSE ships it),
  ``.jsonl``, ``.csv`` or ``.parquet`` with the same fields (MIA texts as a ``text`` column or, in
  ``.json``, plain strings). A missing part is simply absent. An optional ``meta.json`` may give
  ``name``, ``auc_retrain`` and anything else.
  Training text for ``hubaudit unlearn`` (never scored by a metric): ``raw/forget`` and ``raw/retain`` (else
  ``raw/retain1``, as MUSE's scripts train on it), the same file types or ``.txt`` (the whole file is one
  text, as MUSE's own ``raw/*.txt``); see :data:`hubaudit.forget.types.TRAIN_PARTS`.
- ``builtin``: a set shipped inside the package (``synthetic``), read with the ``muse`` reader.

To add a format, register a :class:`Format` subclass with ``@register_format``: ``detect(source)``
says whether it reads that source, ``read(source)`` returns a :class:`ForgetSet`.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

from ..errors import ForgetSetError, ForgetSetNotFound
from ..registry import Registry
from .types import PARTS, QA, TRAIN_ALTERNATIVES, TRAIN_PARTS, Choice, ForgetSet, Passage, TofuQA

EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet")
BUILTIN_SETS = ("synthetic",)
DEFAULT_SET = "synthetic"


class Format:
    name = ""
    summary = ""

    def detect(self, source: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, source: str) -> ForgetSet:  # pragma: no cover - interface
        raise NotImplementedError


FORMATS: Registry[type[Format]] = Registry("forget-set format", ForgetSetError)
register_format = FORMATS.decorator()


def _read_rows(path: Path) -> list:
    """Rows of one file: dicts (or plain strings for a .json array of strings)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):  # {"data": [...]} or one column dict
                data = data.get("data", data.get("rows"))
            if not isinstance(data, list):
                raise ForgetSetError(f"{path}: expected a JSON array of items")
            return data
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise ForgetSetError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
            return rows
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ForgetSetError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
            return pq.read_table(path).to_pylist()
    except json.JSONDecodeError as e:
        raise ForgetSetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ForgetSetError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ForgetSetError(f"{path}: cannot read ({e.strerror or e})") from None
    except ForgetSetError:
        raise
    except Exception as e:  # pyarrow errors and the like
        raise ForgetSetError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    raise ForgetSetError(f"{path}: unsupported file type '{suffix}' (use {', '.join(EXTENSIONS)})")


def _field(path: Path, n: int, row, name: str) -> str:
    if not isinstance(row, dict):
        raise ForgetSetError(f"{path}: item {n} is not an object with a '{name}' field")
    if name not in row or row[name] is None:
        raise ForgetSetError(f"{path}: item {n} has no '{name}' field (it has: {', '.join(map(str, row)) or 'nothing'})")
    value = row[name]
    if not isinstance(value, str):
        raise ForgetSetError(f"{path}: item {n}, field '{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise ForgetSetError(f"{path}: item {n} has an empty '{name}' field")
    return value


def _parse_items(part: str, path: Path, rows: list) -> list:
    kind = {**PARTS, **TRAIN_PARTS}[part][0]
    items: list = []
    for n, row in enumerate(rows, 1):
        if kind is None:  # MIA texts: plain strings or a 'text' field
            if isinstance(row, str) and not row.strip():
                raise ForgetSetError(f"{path}: item {n} is an empty text")
            items.append(row if isinstance(row, str) else _field(path, n, row, "text"))
        elif kind is QA:
            items.append(QA(_field(path, n, row, "question"), _field(path, n, row, "answer")))
        elif kind is Passage:
            items.append(Passage(_field(path, n, row, "prompt"), _field(path, n, row, "gt")))
        elif kind is TofuQA:
            from .tofu import tofu_item

            items.append(tofu_item(path, n, row, part in ("tofu_real_authors", "tofu_world_facts")))
        else:
            question = _field(path, n, row, "question")
            choices = row.get("choices")
            if isinstance(choices, str):
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError:
                    choices = None
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise ForgetSetError(f"{path}: item {n} needs 'choices', a list of at least two texts")
            try:
                answer = int(row.get("answer"))
            except (TypeError, ValueError):
                raise ForgetSetError(f"{path}: item {n} needs 'answer', the index of the right choice") from None
            if not 0 <= answer < len(choices):
                raise ForgetSetError(f"{path}: item {n}: answer {answer} is not an index into its {len(choices)} choices")
            subject = row.get("subject") if isinstance(row.get("subject"), str) else ""
            items.append(Choice(question, tuple(choices), answer, subject))
    return items


def _find_part_files(root: Path, rel: str, extensions: tuple[str, ...] = EXTENSIONS) -> list[Path]:
    """The file(s) of one part: ``rel.EXT``, or shards as the Hub stores them (``rel-00000-of-00001.parquet``,
    or the parquet converter's ``rel/0000.parquet``)."""
    single = [root / (rel + ext) for ext in extensions if (root / (rel + ext)).is_file()]
    if len(single) > 1:
        raise ForgetSetError(f"{root}: {rel} is given twice ({', '.join(p.name for p in single)}); keep one")
    if single:
        return single
    parent, name = (root / rel).parent, (root / rel).name
    if not parent.is_dir():
        return []
    shards = sorted(p for ext in extensions for p in parent.glob(f"{name}-*{ext}") if p.is_file())
    if not shards and (root / rel).is_dir():
        shards = sorted(p for ext in extensions for p in (root / rel).glob(f"*{ext}") if p.is_file())
    return shards


def _read_text_file(path: Path) -> list[str]:
    """A ``.txt`` training file: the whole file is one text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ForgetSetError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ForgetSetError(f"{path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        raise ForgetSetError(f"{path}: empty")
    return [text]


def _read_training_parts(root: Path, fs: ForgetSet) -> None:
    for part, (_, rel) in TRAIN_PARTS.items():
        # the usual file types first, then a plain-text file (MUSE's repository ships raw/forget.json and .txt)
        tries = [(r, exts) for r in (rel, *TRAIN_ALTERNATIVES.get(part, ()))
                 for exts in (EXTENSIONS, (".txt",) if TRAIN_PARTS[part][0] is None else ())]
        r, paths = rel, []
        for r, exts in tries:
            paths = _find_part_files(root, r, exts) if exts else []
            if paths:
                break
        if not paths:
            continue
        items = []
        for path in paths:
            items += _read_text_file(path) if path.suffix.lower() == ".txt" else _parse_items(part, path, _read_rows(path))
        setattr(fs, part, items)
        fs.files[part] = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{Path(r).name}-*"


def read_muse_dir(root: Path, name: str | None = None, source: str | None = None) -> ForgetSet:
    """Read a folder in the MUSE layout (see the module docstring)."""
    root = Path(root)
    meta: dict = {}
    meta_file = root / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ForgetSetError(f"{meta_file}: not valid JSON ({e.msg})") from None
        if not isinstance(meta, dict):
            raise ForgetSetError(f"{meta_file}: expected a JSON object")
    fs = ForgetSet(name=name or meta.get("name") or root.name, source=source or str(root), meta=meta)
    auc = meta.get("auc_retrain")
    if auc is not None:
        if not isinstance(auc, (int, float)) or not 0 < auc < 1:
            raise ForgetSetError(f"{meta_file}: auc_retrain must be a number between 0 and 1, got {auc!r}")
        fs.auc_retrain = float(auc)
    for part, (_, rel) in PARTS.items():
        paths = _find_part_files(root, rel)
        if not paths:
            continue
        items = []
        for path in paths:
            items += _parse_items(part, path, _read_rows(path))
        setattr(fs, part, items)
        fs.files[part] = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{Path(rel).name}-*"
    _read_training_parts(root, fs)
    if not fs.sizes():
        raise ForgetSetError(
            f"{root}: no forget-set files found; expected the MUSE layout, e.g. knowmem/forget_qa.json, "
            f"verbmem/forget.json, privleak/forget.json (.json, .jsonl, .csv or .parquet)"
        )
    return fs


@register_format
class MuseDirFormat(Format):
    name = "muse"
    summary = "a folder in the MUSE layout (verbmem/, knowmem/, privleak/; .json .jsonl .csv .parquet)"

    def detect(self, source: str) -> bool:
        return Path(source).is_dir()

    def read(self, source: str) -> ForgetSet:
        return read_muse_dir(Path(source))


def builtin_path(name: str) -> Path:
    """The package folder of a built-in set."""
    return Path(str(resources.files("hubaudit.forget").joinpath("data", name)))


@register_format
class BuiltinFormat(Format):
    name = "builtin"
    summary = f"a set shipped with hubaudit: {', '.join(BUILTIN_SETS)} (offline)"

    def detect(self, source: str) -> bool:
        return source in BUILTIN_SETS

    def read(self, source: str) -> ForgetSet:
        return read_muse_dir(builtin_path(source), name=source, source=f"builtin:{source}")


@register_format
class HubDatasetFormat(Format):
    name = "hub"
    summary = "a Hub dataset in the MUSE layout: muse-news, muse-books, or org/name[@revision]"

    def detect(self, source: str) -> bool:
        from ..source import HUB_FORGET_SETS, HUB_ID

        if source in HUB_FORGET_SETS:
            return True
        repo = source.partition("@")[0]
        return "/" in repo and not Path(source).exists() and not source.startswith((".", "/", "~")) and bool(HUB_ID.match(repo))

    def read(self, source: str) -> ForgetSet:
        from ..source import HUB_FORGET_SETS, fetch_dataset

        repo, _, rev = source.partition("@")
        meta: dict = {}
        if source in HUB_FORGET_SETS:
            repo, meta = HUB_FORGET_SETS[source]
            rev = ""
        snap = fetch_dataset(repo, rev or None)
        fs = read_muse_dir(snap.path, name=meta.get("name") or repo, source=f"hub:{repo}@{snap.sha}")
        if fs.auc_retrain is None and meta.get("auc_retrain"):
            fs.auc_retrain = meta["auc_retrain"]
        fs.meta.setdefault("hub", {"repo_id": repo, "sha": snap.sha})
        return fs


DEFAULT_MAX_ITEM_CHARS = 100_000  # one text of an item: a long news article is ~10k characters


def max_item_chars() -> int:
    """The longest text one item may hold: ``HUBAUDIT_MAX_ITEM_CHARS`` (the Space sets a lower one), else
    ``DEFAULT_MAX_ITEM_CHARS``."""
    import os

    try:
        return int(os.environ.get("HUBAUDIT_MAX_ITEM_CHARS") or DEFAULT_MAX_ITEM_CHARS)
    except ValueError:
        return DEFAULT_MAX_ITEM_CHARS


def check_item_lengths(fs: ForgetSet) -> None:
    """Refuse a forget set with one text longer than :func:`max_item_chars` (one 10 MB line would be tokenized
    and scored whole: gigabytes of memory), naming the part and the item."""
    from dataclasses import fields as dc_fields, is_dataclass

    cap = max_item_chars()
    for part in PARTS:
        for i, item in enumerate(getattr(fs, part, None) or []):
            texts = [item] if isinstance(item, str) else []
            if is_dataclass(item):
                for f in dc_fields(item):
                    v = getattr(item, f.name)
                    texts += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)] \
                        if isinstance(v, (list, tuple)) else []
            longest = max((len(t) for t in texts), default=0)
            if longest > cap:
                where = fs.files.get(part) or PARTS[part][1]
                raise ForgetSetError(f"item {i + 1} of {where} in forget set '{fs.name}' is {longest:,} characters "
                                     f"long; at most {cap:,} per text (HUBAUDIT_MAX_ITEM_CHARS): shorten or drop it")


def load_forget_set(source: str | Path | ForgetSet | None = None) -> ForgetSet:
    """Read a forget set.

    Args:
        source: a built-in name (``"synthetic"``, the default), a folder in the MUSE layout, a Hub
            dataset (``muse-news``, ``muse-books``, ``org/name[@revision]``), or a :class:`ForgetSet`.

    Returns:
        The :class:`ForgetSet`.

    Raises:
        ForgetSetNotFound: the source is neither a known name nor an existing folder.
        ForgetSetError: a file is malformed or an item lacks a field (the message names both).

    Example:
        >>> fs = load_forget_set("synthetic")
        >>> len(fs.forget_qa) >= 100
        True
    """
    if isinstance(source, ForgetSet):
        return source
    source = DEFAULT_SET if source is None else str(source)
    for _, fmt_cls in FORMATS.items():
        fmt = fmt_cls()
        if fmt.detect(source):
            fs = fmt.read(source)
            check_item_lengths(fs)
            return fs
    if Path(source).is_file():
        raise ForgetSetError(
            f"{source} is a file; --forget takes a folder in the MUSE layout (put it at e.g. "
            f"knowmem/forget_qa{Path(source).suffix} inside a folder) or a built-in name ({', '.join(BUILTIN_SETS)})"
        )
    raise ForgetSetNotFound(
        f"forget set '{source}' not found: give a folder in the MUSE layout, a Hub dataset (org/name, muse-news, "
        f"muse-books) or a built-in name ({', '.join(BUILTIN_SETS)})"
    )
