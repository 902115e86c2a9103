"""Where a model or a forget set comes from: a local folder, or a pinned snapshot of a Hub repository.

``MODEL`` is a local folder, ``org/name`` or ``org/name@revision`` (branch, tag or commit). A Hub model
is fetched with ``huggingface_hub.snapshot_download`` restricted to what a causal LM needs, at the
commit sha the revision resolves to; the sha is the model's identity in the report and the results
store. Safe by default: pickle-only repositories are refused unless ``allow_pickle``; the token comes
from the caller, ``HF_TOKEN`` or the saved Hub login, and is never printed or stored.

Errors become one-line :class:`~hubaudit.errors.HubauditError` messages that say what to do.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import HubError, HubNotFound, ModelLoadError

log = logging.getLogger("hubaudit")

HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]{0,95}/)?[A-Za-z0-9][\w.\-]{0,95}$")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# What a causal LM needs (and the card, for base_model); weights are added by kind.
BASE_PATTERNS = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json", "README.md",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_PATTERNS = (*PICKLE_PATTERNS, "pytorch_model.bin.index.json")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

# Shorthands for Hub forget sets: name -> (repo id, metadata the set lacks)
HUB_FORGET_SETS = {
    "muse-news": ("muse-bench/MUSE-News", {"name": "muse-news", "auc_retrain": 0.4772}),
    "muse-books": ("muse-bench/MUSE-Books", {"name": "muse-books", "auc_retrain": 0.5393}),
}
DATASET_PATTERNS = ("verbmem/*", "knowmem/*", "privleak/*", "mcq/*", "tofu/*", "*/*/*.parquet", "meta.json", "README.md")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``MODEL`` argument: a local ``path``, or a Hub ``repo_id`` with an optional ``revision``."""

    text: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None
    public: bool = False  # opened only as a public Hub model (token=False): a card's base_model

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None


def parse_model_ref(text: str | os.PathLike) -> ModelRef:
    """A local folder or a Hub id ``org/name[@revision]``, by what is written, never by what happens to
    exist in the working directory:

    - a ``pathlib.Path``, or text that starts with ``.``, ``/`` or ``~`` or ends with ``/``, or has more
      than one ``/`` before any ``@``, is a folder;
    - ``org/name`` or ``name``, optionally ``@revision`` (a branch, tag, commit or ``refs/pr/N``; the
      revision is split off first), is a Hub id;
    - a Hub id that is also a folder here is ambiguous: :class:`~hubaudit.errors.ModelRefError` asks
      for ``./org/name`` (the folder) and never audits the folder silently.
    """
    if isinstance(text, os.PathLike):
        return ModelRef(str(text), path=Path(text).expanduser())
    s = str(text)
    p = Path(s).expanduser()
    if s.startswith((".", "/", "~")) or s.endswith("/") or (os.sep != "/" and os.sep in s):
        return ModelRef(s, path=p)
    repo, at, rev = s.partition("@")
    if HUB_ID.match(repo) and (rev or not at):
        if not at and p.exists():
            from .errors import ModelRefError

            raise ModelRefError(f"'{s}' is both a Hub model id and a folder here: write ./{s} for the folder "
                                f"(a Hub id is never read from disk)")
        return ModelRef(s, repo_id=repo, revision=rev or None)
    return ModelRef(s, path=p)  # neither: ModelSource says "not found"


@dataclass
class Snapshot:
    """A Hub repository pinned to a commit and fetched into the local cache."""

    repo_id: str
    repo_type: str
    sha: str
    path: Path
    requested_revision: str | None
    card_data: dict
    fetched_bytes: int
    repo_bytes: int | None
    files: list[str]


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None, repo_type: str = "model"):
    """Turn huggingface_hub's errors into one-line hubaudit errors (never echoing a token)."""
    from huggingface_hub import errors as he

    what = "dataset" if repo_type == "dataset" else "model"
    try:
        yield
    except he.GatedRepoError:
        raise HubError(
            f"{what} '{repo_id}' is gated: accept its conditions on the Hub page, then pass a token with --token "
            f"or the HF_TOKEN environment variable (or run `hf auth login`)"
        ) from None
    except he.RepositoryNotFoundError:
        raise HubNotFound(
            f"{what} '{repo_id}' not found on the Hub (if it is private, pass a token with --token or HF_TOKEN)"
        ) from None
    except he.RevisionNotFoundError:
        raise HubNotFound(f"revision '{revision}' not found in {what} '{repo_id}'; check the branch, tag or commit") from None
    except he.RemoteEntryNotFoundError as e:
        raise HubNotFound(f"{what} '{repo_id}': a file is missing on the Hub ({_first_line(e)})") from None
    except he.LocalEntryNotFoundError:
        raise HubError(
            f"{what} '{repo_id}' is not in the local cache and the Hub cannot be reached; connect, or set "
            f"HF_HUB_OFFLINE=1 only after it has been downloaded once"
        ) from None
    except he.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"no access to {what} '{repo_id}' (HTTP {status}): pass a token with --token or HF_TOKEN") from None
        raise HubError(f"the Hub answered an error for {what} '{repo_id}': {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_offline_error(e: BaseException) -> bool:
    from huggingface_hub import errors as he

    if isinstance(e, (he.OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    name = type(e).__name__
    return name in ("ConnectError", "ConnectTimeout", "ReadTimeout", "NetworkError", "TimeoutException")


def _card_data(folder: Path) -> dict:
    """The card's metadata ({} without a card). A card hubaudit cannot use (YAML aliases, not a mapping,
    unreadable) counts as no metadata, with a warning: a stranger's card must not stop, or stall, an audit."""
    from .cardmeta import CardMetadataError, read_metadata

    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    try:
        return read_metadata(readme.read_text(encoding="utf-8-sig", errors="replace"))
    except (CardMetadataError, OSError) as e:
        log.warning("hubaudit: ignoring the metadata of %s: %s", readme, e)
        return {}


def _snapshot(repo_id: str, revision: str | None, repo_type: str, patterns, token) -> Snapshot:
    """Resolve ``revision`` to a sha (online), fetch the files matching ``patterns`` (a list of globs, or a
    callable taking the repo's file list, or None offline, and returning globs). Offline, or with
    ``HF_HUB_OFFLINE=1``, use the cache with the same globs."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(token=token)
    with hub_errors(repo_id, revision, repo_type):
        try:
            info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, files_metadata=True)
        except Exception as e:  # noqa: BLE001
            if not _is_offline_error(e):
                raise
            info = None
        if info is None and token is False:  # whether it is public cannot be checked from the cache
            raise HubError(f"{repo_type} '{repo_id}' is opened only as a public Hub repository, which cannot be "
                           "checked offline; connect, or pass it explicitly")
        if info is None:  # offline: the cache is all there is
            log.info("hub unreachable or offline mode: using the local cache for %s", repo_id)
            allow = patterns(None) if callable(patterns) else list(patterns)  # what the online call fetched
            path = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True,
                                          allow_patterns=allow, token=token))
            files = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
            return Snapshot(repo_id, repo_type, path.name, path, revision, _card_data(path), 0, None, files)
        files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
        allow = patterns(list(files)) if callable(patterns) else list(patterns)
        wanted = [f for f in files if any(fnmatch.fnmatch(f, p) for p in allow)]
        cap = _max_dataset_bytes() if repo_type == "dataset" else None
        if cap is not None and sum(files[f] for f in wanted) > cap:
            raise HubError(f"dataset '{repo_id}' at {info.sha[:12]} has {sum(files[f] for f in wanted) / 2**20:.1f} MiB "
                           f"of forget-set files; at most {cap / 2**20:.1f} MiB are downloaded here "
                           "(HUBAUDIT_MAX_DATASET_BYTES)")
        # By the requested revision (not the sha) so the cache records the ref for offline use later; the
        # snapshot folder is named by the commit it holds. Under a size cap, by the commit that was measured
        # (a push in between cannot swap in larger files).
        fetch = (info.sha or revision) if cap is not None else revision
        path = Path(snapshot_download(repo_id, repo_type=repo_type, revision=fetch, allow_patterns=allow,
                                      token=token))
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    card = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    return Snapshot(repo_id, repo_type, path.name, path, revision, card or _card_data(path),
                    sum(files[f] for f in wanted), sum(files.values()), sorted(files))


def _max_dataset_bytes() -> int | None:
    """The most bytes of one forget set's files to download: ``HUBAUDIT_MAX_DATASET_BYTES`` (the Space sets
    it), else no limit."""
    try:
        return int(os.environ["HUBAUDIT_MAX_DATASET_BYTES"])
    except (KeyError, ValueError):
        return None


def fetch_model(ref: ModelRef, *, token: str | None = None, allow_pickle: bool = False) -> Snapshot:
    """Fetch a Hub model's snapshot (only what a causal LM needs).

    Raises:
        HubNotFound: no such repository or revision.
        HubError: gated or private without access, or offline with nothing cached.
        ModelLoadError: pickle-only weights without ``allow_pickle``; no weights; not a causal LM.
    """

    def choose(files: list[str] | None) -> list[str]:
        if files is None:  # offline: whatever an online call may have fetched
            return [*BASE_PATTERNS, *SAFETENSORS_PATTERNS, *(PICKLE_WEIGHT_PATTERNS if allow_pickle else ())]
        has_st = any(f.endswith(".safetensors") for f in files)
        pickles = [f for f in files if any(fnmatch.fnmatch(f, p) for p in PICKLE_PATTERNS)]
        if not has_st and pickles and not allow_pickle:
            raise ModelLoadError(
                f"model '{ref.repo_id}' has only pickle weights ({pickles[0]}), which can run code when loaded; "
                f"pass --allow-pickle if you trust it"
            )
        if not has_st and not pickles:
            raise ModelLoadError(f"model '{ref.repo_id}' has no weights (*.safetensors) at this revision")
        if "config.json" not in files:
            raise ModelLoadError(f"'{ref.repo_id}' has no config.json: it is not a transformers model repository")
        return [*BASE_PATTERNS, *(SAFETENSORS_PATTERNS if has_st else PICKLE_WEIGHT_PATTERNS)]

    if ref.public:  # a card's base_model: as any visitor would see it, never with the caller's token
        try:
            snap = _snapshot(ref.repo_id, ref.revision, "model", choose, False)
        except (HubError, ModelLoadError) as e:
            what = "could not be opened as a public Hub model" if isinstance(e, HubError) else f"is not usable ({e})"
            raise type(e)(f"the card's base_model '{ref.text}' {what}; a card's base_model is never opened with "
                          "your token or from disk: pass --reference to compare against the original") from None
    else:
        snap = _snapshot(ref.repo_id, ref.revision, "model", choose, token)
    check_causal_lm(snap.path, ref.repo_id)
    return snap


def check_causal_lm(folder: Path, name: str) -> None:
    """Refuse a config whose architectures name no causal-LM class (an encoder, a classifier)."""
    import json

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return  # ModelSource reports a missing or broken config
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith(CAUSAL_LM_SUFFIXES) for a in archs):
        raise ModelLoadError(f"'{name}' is not a causal language model (architectures: {', '.join(archs)})")


def fetch_dataset(repo_id: str, revision: str | None = None, *, token: str | None = None,
                  patterns=DATASET_PATTERNS) -> Snapshot:
    """Fetch a forget-set dataset repository (by default the MUSE layout, as the benchmark publishes it;
    ``patterns`` picks other files, e.g. one TOFU or WMDP config)."""
    return _snapshot(repo_id, revision, "dataset", patterns, token)


def card_reference(card_data: dict) -> tuple[ModelRef | None, str | None]:
    """The card's ``base_model`` as the reference to open, and a note for the report.

    A card is written by whoever owns the audited repository, so its ``base_model`` is used only as a
    public Hub id: the returned ref is opened with ``token=False`` (never the operator's token, so a
    stranger's card cannot make an audit open, or publish figures of, the operator's private models), and
    it is never read from disk (``/some/local/model`` or ``./x`` is refused, and an ``org/name`` that is also
    a folder here is still a Hub id). Any other original is given with ``--reference``.
    ``(None, None)`` when the card names none; ``(None, note)`` when it names something that is not a Hub id.
    """
    base = base_model_of(card_data)
    if not base:
        return None, None
    repo, at, rev = base.partition("@")
    if not HUB_ID.match(repo) or (at and not rev) or any(c.isspace() for c in base):
        return None, ("the card's base_model is not a Hub id org/name (a local path is never read from a card): "
                      "pass --reference to compare against the original")
    return ModelRef(base, repo_id=repo, revision=rev or None, public=True), None


def base_model_of(card_data: dict) -> str | None:
    """The card's ``base_model`` when it names exactly one model."""
    from .cardmeta import card_strings

    base = card_strings(card_data, "base_model")
    return base[0].strip() if len(base) == 1 and base[0].strip() else None
