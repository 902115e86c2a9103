"""A small local Hugging Face Hub for tests: a test double of the Hub's HTTP API.

The real ``huggingface_hub`` client (2.4) talks to it over HTTP, so the client's own code paths run end
to end: ``model_info`` / ``dataset_info``, ``list_repo_tree`` / ``list_repo_files`` / ``get_paths_info`` /
``list_repo_refs`` / ``list_repo_commits``, ``hf_hub_download`` / ``snapshot_download`` (HEAD + GET on
``/resolve/``, with LFS files answered by a 302 to a separate "CDN" origin, exactly like the Hub), the
typed errors (``X-Error-Code``), ``create_commit`` (preupload + NDJSON commit, ``create_pr``), pull
requests and discussions, ``whoami``, ``create_repo``.

Standard library only (PyYAML is used for README metadata when it is importable, which it always is
next to ``huggingface_hub``). Repositories are stored under ``root`` as snapshots: every commit is a
JSON file mapping paths to content-addressed objects (``root/objects/<sha256>``); commit, tree and blob
ids are real git object ids, LFS files are decided by the repo's ``.gitattributes`` (``filter=lfs``)
or size (>= 10 MiB) like a git-lfs server would.

Use it::

    from hubserver import LocalHub, use_endpoint

    with LocalHub(tmp_path / "hub") as hub:                 # starts on 127.0.0.1:<free port>
        hub.add_token("hf_alice", user="alice")
        sha = hub.create_repo("org/tiny", files={"config.json": b"{}"})
        with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
            path = huggingface_hub.hf_hub_download("org/tiny", "config.json")

Pointing the client at the server
---------------------------------
``huggingface_hub`` reads ``HF_ENDPOINT`` (and ``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``, ...)
once, at import time, into ``huggingface_hub.constants``; setting the environment variable in a
running process changes nothing. Two ways work:

* in-process: ``use_endpoint(url, cache_dir)`` patches everything that captured the endpoint/cache at
  import (``constants.ENDPOINT``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (used by ``hf_hub_url``),
  ``constants.HF_URL_HOSTS``, ``utils._http._HUB_ORIGINS``, the module-level ``hf_api.api.endpoint``
  behind ``huggingface_hub.model_info`` & co, ``constants.HF_HUB_CACHE``, the ``HF_HOME``-derived paths
  (token file, agent-harness registry, xet/assets caches), ``constants.HF_HUB_OFFLINE``), resets the
  shared httpx client and the ``HfFileSystem`` instance cache, removes ``HF_TOKEN`` so no stray token
  is sent, and sets the matching environment variables for child processes; all restored on exit.
  ``HfApi`` objects created *before* entering keep their old endpoint (create them inside, or pass
  ``endpoint=hub.endpoint``).
* subprocess: run the client in a child process with ``env=hub_env(url, cache_dir, hf_home)`` (sets
  ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HOME``, optional ``HF_HUB_OFFLINE=1``, drops ``HF_TOKEN``).

Tokens are never logged: ``hub.requests`` keeps header values except ``Authorization`` / ``Cookie``
(``"<redacted>"``), and the server writes nothing to stderr unless ``verbose=True`` (request lines only).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as _dt
import difflib
import fnmatch
import hashlib
import hmac
import html
import http.server
import json
import mimetypes
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

try:  # a hard dependency of huggingface_hub, so present wherever the client is
    import yaml as _yaml
except ImportError:  # pragma: no cover
    _yaml = None

__all__ = ["LocalHub", "HubError", "use_endpoint", "hub_env"]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub forces LFS above 10 MiB
TREE_PAGE_SIZE = 1000  # same caps as the Hub (1000 entries, 50 with expand=True)
TREE_PAGE_SIZE_EXPAND = 50
DISCUSSIONS_PAGE_SIZE = 50
COMMITS_PAGE_SIZE = 50
CDN_URL_TTL = 3600

_PLURAL = {"model": "models", "dataset": "datasets", "space": "spaces"}
_SINGULAR = {v: k for k, v in _PLURAL.items()}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REDACTED_HEADERS = {"authorization", "cookie", "proxy-authorization", "x-xet-access-token"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{7,39}$")
_PR_REF = re.compile(r"^refs/pr/(\d+)$")

_LFS_PATTERNS_COMMON = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*", "*.gguf",
]
_LFS_PATTERNS_DATASET_EXTRA = [
    "*.lz4", "*.mds", "*.mp3", "*.ogg", "*.wav", "*.flac", "*.bmp", "*.gif", "*.png", "*.tiff",
    "*.jpg", "*.jpeg", "*.webp", "*.mp4", "*.webm",
]


def default_gitattributes(repo_type: str = "model") -> bytes:
    """The ``.gitattributes`` the Hub puts in the first commit of a new repo (LFS patterns)."""
    patterns = list(_LFS_PATTERNS_COMMON)
    if repo_type == "dataset":
        patterns += _LFS_PATTERNS_DATASET_EXTRA
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()


class HubError(Exception):
    """An HTTP error answered the way the Hub does (status, ``X-Error-Code``, ``X-Error-Message``)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------------------------
# small helpers


def _now_iso(ts: float | None = None) -> str:
    t = _dt.datetime.fromtimestamp(time.time() if ts is None else ts, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _git_hash(kind: str, payload: bytes) -> str:
    h = hashlib.sha1(f"{kind} {len(payload)}\0".encode())
    h.update(payload)
    return h.hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _split_front_matter(text: str) -> tuple[str | None, str]:
    if not text.startswith("---"):
        return None, text
    m = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.S)
    if m is None:
        m = re.match(r"^---[ \t]*\r?\n()---[ \t]*(\r?\n|$)", text, re.S)
        if m is None:
            return None, text
    return m.group(1), text[m.end():]


def _parse_yaml(text: str) -> Any:
    if _yaml is not None:
        return _yaml.safe_load(text)
    # Fallback (no PyYAML): flat "key: value" and "- item" lists only.
    out: dict[str, Any] = {}
    key = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.lstrip().startswith("- ") and key is not None:
            out.setdefault(key, [])
            if isinstance(out[key], list):
                out[key].append(line.strip()[2:].strip().strip("'\""))
            continue
        if ":" not in line:
            raise ValueError(f"cannot parse line: {line!r}")
        key, _, value = line.partition(":")
        key = key.strip()
        out[key] = value.strip().strip("'\"") if value.strip() else None
    return out


def _card_tags(card: dict | None, base_model: bool = False) -> list[str]:
    """The Hub's tags of a model from its card: the card's own tags, ``license:X`` and (as the Hub's model
    listing has them) ``base_model:ID`` for each base model."""
    if not card:
        return []
    t = card.get("tags")
    tags = [str(x) for x in (t if isinstance(t, list) else [t] if t else [])]
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    if base_model:
        base = card.get("base_model")
        tags += [f"base_model:{b}" for b in (base if isinstance(base, list) else [base] if base else [])]
    return tags


def _card_data(readme: bytes | None) -> dict | None:
    if readme is None:
        return None
    meta, _ = _split_front_matter(readme.decode("utf-8", "replace"))
    if meta is None:
        return None
    try:
        data = _parse_yaml(meta)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _validate_card_files(path: str, data: bytes) -> None:
    """As the Hub reads them: a model card's ``model-index`` must parse with huggingface_hub's own
    ``model_index_to_eval_results``, and a ``.eval_results/*.yaml`` file with ``parse_eval_result_entries``;
    otherwise the commit is refused (400), as the Hub refuses metadata it cannot read."""
    if path == "README.md":
        data_dict = _card_data(data)
        if data_dict and data_dict.get("model-index") is not None:
            try:
                from huggingface_hub.repocard_data import model_index_to_eval_results

                model_index_to_eval_results(data_dict["model-index"])
            except Exception as e:  # noqa: BLE001
                raise HubError(400, f"Invalid model-index in README.md: {type(e).__name__}: {e}")
    elif path.startswith(".eval_results/") and path.endswith((".yaml", ".yml")):
        try:
            from huggingface_hub import parse_eval_result_entries

            entries = _parse_yaml(data.decode("utf-8"))
            if not isinstance(entries, list) or not entries:
                raise ValueError("an eval results file is a non-empty list of entries")
            parse_eval_result_entries(entries)
        except Exception as e:  # noqa: BLE001
            raise HubError(400, f"Invalid eval results file {path}: {type(e).__name__}: {e}")


def _gitattributes_lfs_patterns(content: bytes | None) -> list[str]:
    if not content:
        return []
    patterns = []
    for line in content.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _match_git_pattern(path: str, pattern: str) -> bool:
    """Approximate gitattributes/gitignore matching (enough for the usual LFS and ignore patterns)."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):
        prefix = pattern.rstrip("/")
        return path.startswith(prefix + "/") or ("/" + prefix + "/") in ("/" + path)
    if "/" in pattern or anchored:
        return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def _safetensors_info(data: bytes) -> dict | None:
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except Exception:
        return None
    params: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        count = 1
        for d in info.get("shape", []):
            count *= int(d)
        params[info.get("dtype", "?")] = params.get(info.get("dtype", "?"), 0) + count
    return {"parameters": params, "total": sum(params.values())}


def _user_obj(name: str) -> dict:
    return {
        "avatarUrl": f"/avatars/{hashlib.md5(name.encode()).hexdigest()}.svg",
        "fullname": name,
        "name": name,
        "type": "user",
        "isPro": False,
        "isHf": False,
        "isHfAdmin": False,
        "isMod": False,
    }


def _bool_param(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------------------------------
# storage


class _Repo:
    def __init__(self, hub: "LocalHub", repo_type: str, repo_id: str):
        self.hub = hub
        self.repo_type = repo_type
        self.repo_id = repo_id
        self.dir = hub.root / "repos" / _PLURAL[repo_type] / repo_id
        self.private = False
        self.gated: str | bool = False
        self.created_at = _now_iso()
        self.uid = secrets.token_hex(12)
        self.refs: dict[str, str] = {}
        self.discussions: list[dict] = []
        self.granted: set[str] = set()  # sha256 of tokens given access by create_repo(token=...)
        self._commits: dict[str, dict] = {}

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "gated": self.gated,
            "created_at": self.created_at,
            "uid": self.uid,
            "refs": self.refs,
            "discussions": self.discussions,
            "granted": sorted(self.granted),
        }
        tmp = self.dir / "repo.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.dir / "repo.json")

    @classmethod
    def load(cls, hub: "LocalHub", path: Path) -> "_Repo":
        state = json.loads(path.read_text())
        repo = cls(hub, state["repo_type"], state["repo_id"])
        repo.private = state["private"]
        repo.gated = state["gated"]
        repo.created_at = state["created_at"]
        repo.uid = state["uid"]
        repo.refs = state["refs"]
        repo.discussions = state["discussions"]
        repo.granted = set(state.get("granted", []))
        return repo

    def commit_obj(self, sha: str) -> dict:
        if sha not in self._commits:
            self._commits[sha] = json.loads((self.dir / "commits" / f"{sha}.json").read_text())
        return self._commits[sha]

    def has_commit(self, sha: str) -> bool:
        return sha in self._commits or (self.dir / "commits" / f"{sha}.json").exists()

    def all_commit_shas(self) -> list[str]:
        d = self.dir / "commits"
        return [p.stem for p in d.glob("*.json")] if d.exists() else []

    def resolve(self, revision: str) -> str | None:
        """Branch name, ``refs/heads/x``, ``refs/pr/N``, full commit sha or a unique prefix (>= 7)."""
        if revision in (None, ""):
            revision = "main"
        for ref in (f"refs/heads/{revision}", revision):
            if ref.startswith("refs/") and ref in self.refs:
                return self.refs[ref]
        if _HEX40.match(revision) and self.has_commit(revision):
            return revision
        if _HEXPREFIX.match(revision):
            matches = [s for s in self.all_commit_shas() if s.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def branch_ref(self, revision: str) -> str | None:
        """The ref a commit to ``revision`` updates (a branch or a PR ref), or None."""
        if _PR_REF.match(revision) and revision in self.refs:
            return revision
        ref = revision if revision.startswith("refs/heads/") else f"refs/heads/{revision}"
        return ref if ref in self.refs else None

    def ancestors(self, sha: str) -> list[str]:
        """All ancestors (including ``sha``), newest first."""
        seen, order, stack = set(), [], [sha]
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            order.append(s)
            stack.extend(self.commit_obj(s)["parents"])
        order.sort(key=lambda s: (self.commit_obj(s)["timestamp"], s), reverse=True)
        return order


class LocalHub:
    """A local Hub-compatible HTTP server (plus a second "CDN" origin that serves LFS objects).

    ``requests`` is a list of ``{"server": "hub"|"cdn", "method", "path", "headers", "status", "user"}``
    dicts; header values are kept except ``Authorization``/``Cookie`` (``"<redacted>"``).
    """

    def __init__(self, root: Path | str, *, verbose: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "objects").mkdir(exist_ok=True)
        self.verbose = verbose
        self.requests: list[dict] = []
        self._lock = threading.RLock()
        self._tokens: dict[str, dict] = {}  # sha256(token) -> record (raw tokens are never stored)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._secret = secrets.token_bytes(32)
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint: str | None = None
        self.cdn_endpoint: str | None = None
        for path in sorted((self.root / "repos").glob("*/*/*/repo.json")):
            repo = _Repo.load(self, path)
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        """Bind 127.0.0.1 on free ports (hub + CDN) in background threads; return the hub endpoint URL."""
        if self.endpoint is not None:
            return self.endpoint
        for kind in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.hub = self
            server.kind = kind
            thread = threading.Thread(target=server.serve_forever, name=f"localhub-{kind}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self.endpoint

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []
        self.endpoint = self.cdn_endpoint = None

    def __enter__(self) -> "LocalHub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- tokens ----------------------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        user: str = "alice",
        can_read: Iterable[str] | None = None,
        can_write: Iterable[str] | None = None,
        role: str = "write",
    ) -> None:
        """Register a token for ``user``.

        A user can read and write repos in its own namespace. ``can_read`` lists other repo ids
        (``"org/name"``, or ``"datasets/org/name"`` to be type-specific) the token may read when they are
        gated or private; ``can_write`` lists repo ids it may commit to directly (anyone who can read a
        repo may open pull requests on it). ``role="read"`` makes a read-only token (every write: 403).
        """
        if role not in ("read", "write"):
            raise ValueError("role must be 'read' or 'write'")
        with self._lock:
            self._tokens[_token_hash(token)] = {
                "user": user,
                "can_read": set(can_read or ()),
                "can_write": set(can_write or ()),
                "role": role,
                "created_at": _now_iso(),
                "id": secrets.token_hex(12),
            }

    def _token_record(self, token: str | None) -> dict | None:
        return None if token is None else self._tokens.get(_token_hash(token))

    # ---- repos -----------------------------------------------------------------------------------

    def create_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        files: dict[str, bytes | str | Path] | None = None,
        gated: bool | str = False,
        private: bool = False,
        token: str | None = None,
        *,
        author: str | None = None,
        message: str = "initial commit",
    ) -> str:
        """Create a repo whose first commit holds the Hub's default ``.gitattributes`` plus ``files``.

        ``gated``: False, True (= "auto") or "manual". ``token``: if given, that token is granted read
        access to this (gated/private) repo; it is registered for the repo's namespace user when unknown.
        Returns the commit sha now at ``main``.
        """
        self._check_repo_args(repo_id, repo_type)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = _Repo(self, repo_type, repo_id)
            repo.private = bool(private)
            repo.gated = "auto" if gated is True else (gated or False)
            if token is not None:
                if self._token_record(token) is None:
                    self.add_token(token, user=repo.namespace)
                repo.granted.add(_token_hash(token))
            self._repos[(repo_type, repo_id)] = repo
            initial = {".gitattributes": default_gitattributes(repo_type)}
            initial.update(files or {})
            sha = self._make_commit(
                repo, {}, self._normalize_files(initial), [], author or repo.namespace, message, "", parents=[]
            )
            repo.refs["refs/heads/main"] = sha
            repo.save()
            return sha

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str | Path | None],
        repo_type: str = "model",
        branch: str = "main",
        message: str = "Update files",
        *,
        description: str = "",
        author: str | None = None,
    ) -> str:
        """Commit ``files`` (path -> bytes/str/Path; ``None`` deletes the path) on top of ``branch``.

        A branch that does not exist yet is created from ``main``. ``branch`` may also be ``refs/pr/N``
        (adds a commit to that pull request). Returns the new commit sha.
        """
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if _PR_REF.match(branch):
                ref = branch
                if ref not in repo.refs:
                    raise ValueError(f"no pull request ref {branch}")
            else:
                ref = branch if branch.startswith("refs/heads/") else f"refs/heads/{branch}"
                if ref not in repo.refs:
                    repo.refs[ref] = repo.refs["refs/heads/main"]
            parent = repo.refs[ref]
            deletes = [p for p, v in files.items() if v is None]
            adds = self._normalize_files({p: v for p, v in files.items() if v is not None})
            sha = self._make_commit(
                repo, repo.commit_obj(parent)["tree"], adds, deletes, author or repo.namespace, message,
                description, parents=[parent],
            )
            repo.refs[ref] = sha
            pr = self._pr_for_ref(repo, ref)
            if pr is not None:
                self._add_commit_event(pr, sha, message, author or repo.namespace)
            repo.save()
            return sha

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            sha = self._get_repo(repo_type, repo_id).resolve(revision)
            if sha is None:
                raise KeyError(f"unknown revision {revision!r}")
            return sha

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return sorted(repo.commit_obj(self.head(repo_id, revision, repo_type))["tree"])

    def file_at(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of ``path`` at ``revision`` (branch, ``refs/pr/N`` or commit sha); FileNotFoundError if absent."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            entry = repo.commit_obj(self.head(repo_id, revision, repo_type))["tree"].get(path)
            if entry is None:
                raise FileNotFoundError(f"{path} not in {repo_id}@{revision}")
            return self._object_path(entry["sha256"]).read_bytes()

    def pull_requests(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """The repo's pull requests (oldest first), as plain dicts:
        ``num, title, status, author, ref ("refs/pr/N"), target_branch, head, merge_base, merge_commit,
        description, files (paths changed vs merge base), created_at, events``."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            out = []
            for d in repo.discussions:
                if not d["is_pull_request"]:
                    continue
                ref = f"refs/pr/{d['num']}"
                head = repo.refs.get(ref)
                base_tree = repo.commit_obj(d["merge_base"])["tree"]
                head_tree = repo.commit_obj(head)["tree"] if head else base_tree
                changed = sorted(
                    p for p in set(base_tree) | set(head_tree)
                    if (base_tree.get(p) or {}).get("sha256") != (head_tree.get(p) or {}).get("sha256")
                )
                comments = [e for e in d["events"] if e["type"] == "comment"]
                out.append({
                    "num": d["num"],
                    "title": d["title"],
                    "status": d["status"],
                    "author": d["author"],
                    "ref": ref,
                    "target_branch": d["base"].removeprefix("refs/heads/"),
                    "head": head,
                    "merge_base": d["merge_base"],
                    "merge_commit": d.get("merge_commit"),
                    "description": comments[0]["data"]["latest"]["raw"] if comments else "",
                    "files": changed,
                    "created_at": d["created_at"],
                    "events": copy.deepcopy(d["events"]),
                })
            return out

    def discussions(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """All discussions and pull requests of a repo (raw stored records, deep-copied)."""
        with self._lock:
            return copy.deepcopy(self._get_repo(repo_type, repo_id).discussions)

    def set_gated(self, repo_id: str, gated: bool | str, repo_type: str = "model") -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            repo.gated = "auto" if gated is True else (gated or False)
            repo.save()

    def set_private(self, repo_id: str, private: bool, repo_type: str = "model") -> None:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            repo.private = bool(private)
            repo.save()

    def clear_requests(self) -> None:
        self.requests.clear()

    # ---- internals: objects, commits --------------------------------------------------------------

    @staticmethod
    def _check_repo_args(repo_id: str, repo_type: str) -> None:
        if repo_type not in _PLURAL:
            raise ValueError(f"repo_type must be one of {sorted(_PLURAL)}")
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*", repo_id) or "--" in repo_id:
            raise ValueError(f"invalid repo_id {repo_id!r} (expected 'namespace/name')")

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id}")
        return repo

    def _object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256[2:]

    def _store_bytes(self, data: bytes) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._object_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return {"sha256": sha256, "size": len(data), "content_oid": _git_hash("blob", data)}

    def _store_path(self, src: Path) -> dict:
        sha256, sha1, size = hashlib.sha256(), None, src.stat().st_size
        sha1 = hashlib.sha1(f"blob {size}\0".encode())
        tmp = self.root / "objects" / f"incoming.{secrets.token_hex(6)}"
        with open(src, "rb") as f, open(tmp, "wb") as out:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha256.update(chunk)
                sha1.update(chunk)
                out.write(chunk)
        digest = sha256.hexdigest()
        path = self._object_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            tmp.unlink()
        else:
            tmp.replace(path)
        return {"sha256": digest, "size": size, "content_oid": sha1.hexdigest()}

    def _normalize_files(self, files: dict) -> dict[str, dict]:
        out = {}
        for path, value in files.items():
            path = path.strip("/")
            if not path or any(part in ("", ".", "..") for part in path.split("/")):
                raise ValueError(f"invalid path in repo: {path!r}")
            if isinstance(value, str):
                value = value.encode()
            out[path] = self._store_path(Path(value)) if isinstance(value, Path) else self._store_bytes(value)
        return out

    def _make_commit(
        self,
        repo: _Repo,
        base_tree: dict[str, dict],
        adds: dict[str, dict],
        deletes: Iterable[str],
        author: str,
        title: str,
        description: str,
        parents: list[str],
    ) -> str:
        tree = {p: dict(e) for p, e in base_tree.items()}
        for path in deletes:
            tree.pop(path, None)
        for path, obj in adds.items():
            tree[path] = dict(obj)
        # Like git-lfs, a file added by this commit is stored as LFS when the resulting .gitattributes
        # says filter=lfs for it (or it is >= 10 MiB); files carried over keep how they were stored.
        ga = tree.get(".gitattributes")
        patterns = _gitattributes_lfs_patterns(self._object_path(ga["sha256"]).read_bytes()) if ga else []
        for path in adds:
            entry = tree[path]
            lfs = entry["size"] >= LFS_SIZE_THRESHOLD or any(_match_git_pattern(path, p) for p in patterns)
            entry["lfs"] = bool(lfs) and entry["size"] > 0
            entry["oid"] = (
                _git_hash("blob", _lfs_pointer(entry["sha256"], entry["size"])) if entry["lfs"] else entry["content_oid"]
            )
        tree_oid = self._tree_oid(tree, "")
        ts = time.time()
        if parents:  # keep history strictly ordered even within the same second
            ts = max(ts, max(repo.commit_obj(p)["timestamp"] for p in parents) + 0.001)
        message = title + (f"\n\n{description}" if description else "")
        ident = f"{author} <{author}@users.noreply.huggingface.co> {int(ts)} +0000"
        raw = f"tree {tree_oid}\n" + "".join(f"parent {p}\n" for p in parents)
        raw += f"author {ident}\ncommitter {ident}\n\n{message}\n"
        sha = _git_hash("commit", raw.encode())
        obj = {
            "id": sha,
            "tree_oid": tree_oid,
            "tree": tree,
            "parents": parents,
            "title": title,
            "description": description,
            "author": author,
            "timestamp": ts,
            "date": _now_iso(ts),
        }
        (repo.dir / "commits").mkdir(parents=True, exist_ok=True)
        (repo.dir / "commits" / f"{sha}.json").write_text(json.dumps(obj))
        repo._commits[sha] = obj
        return sha

    def _tree_oid(self, tree: dict[str, dict], prefix: str) -> str:
        """Git tree object id of the folder ``prefix`` ("" = root) of a flat snapshot."""
        children: dict[str, tuple[str, str]] = {}
        plen = len(prefix) + 1 if prefix else 0
        subdirs = set()
        for path, entry in tree.items():
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[plen:]
            if "/" in rest:
                subdirs.add(rest.split("/", 1)[0])
            else:
                children[rest] = ("100644", entry["oid"])
        for d in subdirs:
            children[d] = ("40000", self._tree_oid(tree, f"{prefix}/{d}" if prefix else d))
        payload = b""
        for name in sorted(children, key=lambda n: n + "/" if children[n][0] == "40000" else n):
            mode, oid = children[name]
            payload += f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
        return _git_hash("tree", payload)

    # ---- internals: pull requests -------------------------------------------------------------

    def _pr_for_ref(self, repo: _Repo, ref: str) -> dict | None:
        m = _PR_REF.match(ref)
        if not m:
            return None
        for d in repo.discussions:
            if d["num"] == int(m.group(1)) and d["is_pull_request"]:
                return d
        return None

    def _new_event(self, etype: str, author: str, data: dict) -> dict:
        return {"id": secrets.token_hex(12), "type": etype, "createdAt": _now_iso(), "author": _user_obj(author), "data": data}

    def _comment_event(self, author: str, text: str) -> dict:
        version = {"raw": text, "html": f"<p>{html.escape(text)}</p>\n", "updatedAt": _now_iso(), "author": _user_obj(author)}
        return self._new_event(
            "comment",
            author,
            {"edited": False, "hidden": False, "latest": version, "numEdits": 0, "editors": [author],
             "editorAvatarUrls": [], "reactions": [], "identifiedLanguage": {"language": "en", "probability": 1.0},
             "isReport": False, "history": [dict(version)]},
        )

    def _add_commit_event(self, pr: dict, sha: str, title: str, author: str) -> None:
        pr["events"].append(self._new_event("commit", author, {"subject": title, "oid": sha}))
        if pr["status"] == "draft":
            pr["status"] = "open"

    def _new_discussion(self, repo: _Repo, title: str, author: str, description: str, is_pr: bool, base_sha: str | None) -> dict:
        num = len(repo.discussions) + 1
        d = {
            "num": num,
            "title": title,
            "author": author,
            "created_at": _now_iso(),
            "status": "open",
            "is_pull_request": is_pr,
            "events": [self._comment_event(author, description)],
        }
        if is_pr:
            d.update({"base": "refs/heads/main", "merge_base": base_sha, "merge_commit": None})
        repo.discussions.append(d)
        return d


# --------------------------------------------------------------------------------------------------
# HTTP


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub
    kind: str

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._conns: set = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut idle keep-alive connections so a stopped hub really stops answering."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60
    server: _Server

    # -- plumbing --

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.hub.verbose:  # request line + status only: never headers
            sys.stderr.write(f"[localhub:{self.server.kind}] {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        self.method = method
        self.body = self._read_body() if method in ("POST", "PUT") else b""
        raw_path, _, query = self.path.partition("?")
        self.query = urllib.parse.parse_qs(query, keep_blank_values=True)
        self.raw_path = raw_path
        headers = {k: ("<redacted>" if k.lower() in _REDACTED_HEADERS else v) for k, v in self.headers.items()}
        self.log_entry = {"server": self.server.kind, "method": method, "path": self.path, "headers": headers,
                          "status": None, "user": None}
        hub.requests.append(self.log_entry)
        self.base_url = f"http://{self.headers.get('Host') or '127.0.0.1:%d' % self.server.server_address[1]}"
        try:
            if self.server.kind == "cdn":
                self._route_cdn()
            else:
                self.token_record = self._authenticate()
                self.log_entry["user"] = self.token_record["user"] if self.token_record else None
                self._route()
        except HubError as e:
            self._send_error(e)
        except Exception as e:  # a bug in the fake: answer 500 with the message, trace to stderr
            traceback.print_exc(file=sys.stderr)
            self._send_error(HubError(500, f"Internal error in LocalHub: {type(e).__name__}: {e}"))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None) -> None:
        self.log_entry["status"] = status
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.method != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers, "application/json; charset=utf-8")

    def _send_error(self, e: HubError) -> None:
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        # header values must be latin-1 single-line
        headers["X-Error-Message"] = e.message.replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
        self._send_json({"error": e.message}, e.status, headers)

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    # -- auth --

    def _authenticate(self) -> dict | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        record = self.server.hub._token_record(token.strip()) if scheme.lower() == "bearer" else None
        if record is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self.token_hash = _token_hash(token.strip())
        return record

    def _require_token(self) -> dict:
        if self.token_record is None:
            raise HubError(401, "You must be authenticated to perform this action. Please pass a token.")
        return self.token_record

    def _has_access(self, repo: _Repo) -> bool:
        tok = self.token_record
        if tok is None:
            return False
        keys = {repo.repo_id, f"{_PLURAL[repo.repo_type]}/{repo.repo_id}"}
        return tok["user"] == repo.namespace or bool(keys & tok["can_read"]) or self.token_hash in repo.granted

    def _can_write(self, repo: _Repo) -> bool:
        tok = self.token_record
        if tok is None or tok["role"] != "write":
            return False
        keys = {repo.repo_id, f"{_PLURAL[repo.repo_type]}/{repo.repo_id}"}
        return tok["user"] == repo.namespace or bool(keys & tok["can_write"])

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        """The repo, or RepoNotFound (401 anonymous / 404 authenticated) if missing or private+no access."""
        repo = self.server.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._has_access(repo)):
            raise HubError(401 if self.token_record is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def _check_gate(self, repo: _Repo) -> None:
        if not repo.gated or self._has_access(repo):
            return
        kind = repo.repo_type
        url = f"{self.base_url}/{_URL_PREFIX[kind]}{repo.repo_id}"
        if self.token_record is None:
            raise HubError(
                401,
                f"Access to {kind} {repo.repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                "GatedRepo",
            )
        raise HubError(
            403,
            f"Access to {kind} {repo.repo_id} is restricted and you are not in the authorized list. Visit {url} to ask for access.",
            "GatedRepo",
        )

    def _resolve(self, repo: _Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # -- routing --

    def _segments(self) -> list[str]:
        segs = [urllib.parse.unquote(s) for s in self.raw_path.split("/")[1:]]
        while segs and segs[-1] == "":
            segs.pop()
        return segs

    def _route(self) -> None:
        segs = self._segments()
        m = self.method
        hub = self.server.hub
        if segs[:1] != ["api"]:
            repo_type = "model"
            if segs and segs[0] in ("datasets", "spaces"):
                repo_type, segs = _SINGULAR[segs[0]], segs[1:]
            if len(segs) >= 4 and segs[2] == "resolve" and m in ("GET", "HEAD"):
                return self._resolve_file(repo_type, f"{segs[0]}/{segs[1]}", segs[3:])
            raise HubError(404, "Sorry, we can't find the page you are looking for.")
        with hub._lock:
            if segs[:1] == ["api"]:
                rest = segs[1:]
                if rest == ["whoami-v2"] and m in ("GET", "HEAD"):
                    return self._whoami()
                if rest == ["agent-harnesses"] and m in ("GET", "HEAD"):
                    return self._send_json({"standardEnvVars": ["AI_AGENT", "AGENT"], "harnesses": {}})
                if rest == ["validate-yaml"] and m == "POST":
                    return self._validate_yaml()
                if rest == ["repos", "create"] and m == "POST":
                    return self._api_create_repo()
                if rest == ["models"] and m in ("GET", "HEAD"):
                    return self._list_models()
                if len(rest) >= 3 and rest[0] in _SINGULAR:
                    return self._route_repo_api(_SINGULAR[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:])
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    def _route_repo_api(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        m = self.method
        get = m in ("GET", "HEAD")
        if not rest and get:
            return self._repo_info(repo_type, repo_id, None)
        head = rest[0] if rest else ""
        tail = "/".join(rest[1:])
        if head == "revision" and get and tail:
            return self._repo_info(repo_type, repo_id, tail)
        if head == "tree" and get and len(rest) >= 2:
            return self._tree(repo_type, repo_id, rest[1:])
        if head == "paths-info" and m == "POST" and tail:
            return self._paths_info(repo_type, repo_id, tail)
        if head == "refs" and get and not tail:
            return self._refs(repo_type, repo_id)
        if head == "commits" and get and tail:
            return self._commits(repo_type, repo_id, tail)
        if head == "preupload" and m == "POST" and tail:
            return self._preupload(repo_type, repo_id, tail)
        if head == "commit" and m == "POST" and tail:
            return self._commit(repo_type, repo_id, tail)
        if head == "resolve" and get and len(rest) >= 3:
            return self._resolve_file(repo_type, repo_id, rest[1:])
        if head == "discussions":
            if len(rest) == 1:
                return self._list_discussions(repo_type, repo_id) if get else self._create_discussion(repo_type, repo_id)
            if not rest[1].isdigit():
                raise HubError(404, "Discussion not found")
            num = int(rest[1])
            if len(rest) == 2 and get:
                return self._discussion_details(repo_type, repo_id, num)
            if m == "POST" and len(rest) >= 3:
                return self._discussion_action(repo_type, repo_id, num, rest[2:])
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    # -- simple endpoints --

    def _whoami(self) -> None:
        tok = self.token_record
        if tok is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._send_json({
            "type": "user",
            "id": hashlib.md5(tok["user"].encode()).hexdigest()[:24],
            "name": tok["user"],
            "fullname": tok["user"].title(),
            "email": f"{tok['user']}@example.invalid",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "avatarUrl": _user_obj(tok["user"])["avatarUrl"],
            "orgs": [],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": f"token-{tok['id'][:6]}", "role": tok["role"], "createdAt": tok["created_at"]},
            },
        })

    def _validate_yaml(self) -> None:
        body = self._json_body() or {}
        meta, _ = _split_front_matter(body.get("content") or "")
        if meta is None:
            return self._send_json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            data = _parse_yaml(meta)
        except Exception as e:
            return self._send_json({"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}, 400)
        if data is not None and not isinstance(data, dict):
            return self._send_json({"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []}, 400)
        self._send_json({"errors": [], "warnings": []})

    def _api_create_repo(self) -> None:
        tok = self._require_token()
        body = self._json_body() or {}
        repo_type = body.get("type") or "model"
        namespace = body.get("organization") or tok["user"]
        repo_id = f"{namespace}/{body.get('name')}"
        if repo_type not in _PLURAL:
            raise HubError(400, f"Invalid repo type {repo_type}")
        if tok["role"] != "write" or (namespace != tok["user"] and repo_id not in tok["can_write"]):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace \"{namespace}\".")
        if (repo_type, repo_id) in self.server.hub._repos:
            raise HubError(409, f"You already created this {repo_type} repo", headers={})
        private = body.get("private")
        if body.get("visibility") is not None:
            private = body["visibility"] == "private"
        try:
            self.server.hub.create_repo(repo_id, repo_type=repo_type, private=bool(private), author=tok["user"])
        except ValueError as e:
            raise HubError(400, str(e))
        repo = self.server.hub._repos[(repo_type, repo_id)]
        self._send_json({"url": f"{self.base_url}/{_URL_PREFIX[repo_type]}{repo_id}", "name": repo_id, "id": repo.uid})

    # -- read endpoints --

    def _list_models(self) -> None:
        """``GET /api/models`` (``HfApi.list_models``): public models whose tags hold every ``filter`` (the card's
        ``tags``, ``license:X`` and, like the Hub, ``base_model:<id>`` for each ``base_model`` the card names),
        of ``author``, with ``search`` in the id; ``limit``; one page. Each as ``{_id, id, modelId, author, sha,
        tags, lastModified, private}``."""
        hub = self.server.hub
        q = self.query
        want = set(q.get("filter", []))
        author, search = (q.get("author") or [None])[0], (q.get("search") or [None])[0]
        limit = int((q.get("limit") or ["1000"])[0])
        out = []
        for (repo_type, repo_id), repo in sorted(hub._repos.items()):
            if repo_type != "model" or repo.private or not repo.all_commit_shas():
                continue
            if author and repo.namespace != author or search and search.lower() not in repo_id.lower():
                continue
            sha = repo.resolve("main")
            if sha is None:
                continue
            tree = repo.commit_obj(sha)["tree"]
            card = _card_data(hub._object_path(tree["README.md"]["sha256"]).read_bytes()) if "README.md" in tree else None
            tags = _card_tags(card, base_model=True)
            if not want <= set(tags):
                continue
            out.append({"_id": repo.uid, "id": repo_id, "modelId": repo_id, "author": repo.namespace, "sha": sha,
                        "tags": tags, "lastModified": repo.commit_obj(sha)["date"], "private": False})
        self._send_json(out[:limit])

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        hub = self.server.hub
        repo = self._repo(repo_type, repo_id)
        sha = self._resolve(repo, revision or "main")
        commit = repo.commit_obj(sha)
        tree = commit["tree"]
        readme = hub._object_path(tree["README.md"]["sha256"]).read_bytes() if "README.md" in tree else None
        card = _card_data(readme)
        blobs = _bool_param(self.query.get("blobs"))
        siblings = []
        for path in sorted(tree):
            e = tree[path]
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update({"size": e["size"], "blobId": e["oid"]})
                if e["lfs"]:
                    s["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": len(_lfs_pointer(e["sha256"], e["size"]))}
            siblings.append(s)
        tags = _card_tags(card)
        data: dict[str, Any] = {
            "_id": repo.uid,
            "id": repo_id,
            "author": repo.namespace,
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in tree.values()),
        }
        if card is not None:
            data["cardData"] = card
        if repo_type == "model":
            data["modelId"] = repo_id
            data["spaces"] = []
            if card:
                for k in ("library_name", "pipeline_tag"):
                    if card.get(k):
                        data[k] = card[k]
            if "config.json" in tree:
                try:
                    cfg = json.loads(hub._object_path(tree["config.json"]["sha256"]).read_bytes())
                    data["config"] = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg}
                except ValueError:
                    pass
            st = [p for p in tree if p.endswith(".safetensors") and "/" not in p]
            if st:
                total: dict[str, int] = {}
                for p in st:
                    with open(hub._object_path(tree[p]["sha256"]), "rb") as f:
                        head = f.read(8)
                        n = int.from_bytes(head, "little") if len(head) == 8 else 0
                        ok = 0 < n <= min(tree[p]["size"] - 8, 100_000_000)
                        info = _safetensors_info(head + f.read(n)) if ok else None
                    for dtype, n in (info or {}).get("parameters", {}).items():
                        total[dtype] = total.get(dtype, 0) + n
                if total:
                    data["safetensors"] = {"parameters": total, "total": sum(total.values())}
        elif repo_type == "dataset":
            data["description"] = ""
            data["paperswithcode_id"] = None
        expand = self.query.get("expand", []) + self.query.get("expand[]", [])
        if expand:
            data = {k: v for k, v in data.items() if k in ("_id", "id") or k in expand}
        self._send_json(data)

    def _entry_json(self, repo: _Repo, sha: str, path: str, entry: dict | None, expand: bool) -> dict:
        tree = repo.commit_obj(sha)["tree"]
        if entry is None:  # folder
            out: dict[str, Any] = {"type": "directory", "oid": self.server.hub._tree_oid(tree, path), "size": 0, "path": path}
        else:
            out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
        if expand:
            last = self._last_commit_touching(repo, sha, path)
            out["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
            if entry is not None:
                out["securityFileStatus"] = {
                    "status": "safe", "avScan": {"virusFound": False, "virusNames": None}, "pickleImportScan": None,
                }
        return out

    def _last_commit_touching(self, repo: _Repo, sha: str, path: str) -> dict:
        def sig(tree: dict) -> tuple:
            return tuple(sorted((p, e["sha256"]) for p, e in tree.items() if p == path or p.startswith(path + "/")))

        current = repo.commit_obj(sha)
        while current["parents"]:
            parent = repo.commit_obj(current["parents"][0])
            if sig(parent["tree"]) != sig(current["tree"]):
                return current
            current = parent
        return current

    def _tree(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        repo = self._repo(repo_type, repo_id)
        revision, folder = rest[0], "/".join(rest[1:]).strip("/")
        if revision == "refs" and len(rest) >= 3 and rest[1] in ("pr", "heads", "convert", "tags"):
            revision, folder = "/".join(rest[:3]), "/".join(rest[3:]).strip("/")
        sha = self._resolve(repo, revision)
        tree = repo.commit_obj(sha)["tree"]
        recursive = _bool_param(self.query.get("recursive"))
        expand = _bool_param(self.query.get("expand"))
        prefix = folder + "/" if folder else ""
        if folder and not any(p.startswith(prefix) for p in tree):
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound", {"X-Repo-Commit": sha})
        items: dict[str, dict | None] = {}
        for path, entry in tree.items():
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            parts = rel.split("/")
            if recursive:
                for i in range(1, len(parts)):
                    items.setdefault(prefix + "/".join(parts[:i]), None)
                items[path] = entry
            elif len(parts) == 1:
                items[path] = entry
            else:
                items.setdefault(prefix + parts[0], None)
        paths = sorted(items, key=lambda p: (items[p] is not None, p))  # folders first, like the Hub
        page = TREE_PAGE_SIZE_EXPAND if expand else TREE_PAGE_SIZE
        try:
            start = int(base64.urlsafe_b64decode(self.query.get("cursor", [""])[-1].encode() + b"==").decode() or 0)
        except ValueError:
            raise HubError(400, "Invalid cursor")
        chunk = paths[start : start + page]
        headers = {}
        if start + page < len(paths):
            q = {k: v[-1] for k, v in self.query.items() if k != "cursor"}
            q["cursor"] = base64.urlsafe_b64encode(str(start + page).encode()).decode().rstrip("=")
            headers["Link"] = f'<{self.base_url}{self.raw_path}?{urllib.parse.urlencode(q)}>; rel="next"'
        self._send_json([self._entry_json(repo, sha, p, items[p], expand) for p in chunk], headers=headers)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        sha = self._resolve(repo, revision)
        tree = repo.commit_obj(sha)["tree"]
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            body = self._json_body() or {}
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:
            form = urllib.parse.parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _bool_param(form.get("expand"))
        out = []
        for p in paths:
            p = p.strip("/")
            if p in tree:
                out.append(self._entry_json(repo, sha, p, tree[p], expand))
            elif p and any(x.startswith(p + "/") for x in tree):
                out.append(self._entry_json(repo, sha, p, None, expand))
        self._send_json(out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo(repo_type, repo_id)
        branches, prs = [], []
        for ref, sha in sorted(repo.refs.items()):
            if ref.startswith("refs/heads/"):
                branches.append({"name": ref[len("refs/heads/"):], "ref": ref, "targetCommit": sha})
            elif _PR_REF.match(ref):
                prs.append({"name": ref[len("refs/pr/"):], "ref": ref, "targetCommit": sha})
        data: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if _bool_param(self.query.get("include_prs")):
            data["pullRequests"] = sorted(prs, key=lambda r: int(r["name"]))
        self._send_json(data)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        sha = self._resolve(repo, revision)
        shas = repo.ancestors(sha)
        p = int((self.query.get("p") or ["0"])[-1] or 0)
        chunk = shas[p * COMMITS_PAGE_SIZE : (p + 1) * COMMITS_PAGE_SIZE]
        headers = {}
        if (p + 1) * COMMITS_PAGE_SIZE < len(shas):
            q = {k: v[-1] for k, v in self.query.items()}
            q["p"] = str(p + 1)
            headers["Link"] = f'<{self.base_url}{self.raw_path}?{urllib.parse.urlencode(q)}>; rel="next"'
        items = []
        for s in chunk:
            c = repo.commit_obj(s)
            item = {"id": s, "title": c["title"], "message": c["description"], "date": c["date"],
                    "authors": [{"user": c["author"], "avatar": _user_obj(c["author"])["avatarUrl"]}]}
            if "formatted" in self.query.get("expand[]", []):
                item["formatted"] = {"title": html.escape(c["title"]), "message": html.escape(c["description"])}
            items.append(item)
        self._send_json(items, headers=headers)

    # -- downloads --

    def _resolve_file(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        hub = self.server.hub
        revision, i = rest[0], 1
        if revision == "refs" and len(rest) >= 4 and rest[1] in ("pr", "heads", "convert", "tags"):
            revision, i = "/".join(rest[:3]), 3
        path = "/".join(rest[i:])
        with hub._lock:  # objects are immutable: only the lookup needs the lock, not the streaming
            repo = self._repo(repo_type, repo_id)
            self._check_gate(repo)
            sha = self._resolve(repo, revision)
            entry = repo.commit_obj(sha)["tree"].get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        name = path.rsplit("/", 1)[-1]
        quoted = urllib.parse.quote(name)
        common = {
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Access-Control-Expose-Headers": "X-Repo-Commit,X-Linked-Size,X-Linked-ETag,X-Error-Code,X-Error-Message,ETag,Link,Accept-Ranges,Content-Range",
            "Vary": "Origin, Accept",
        }
        if entry["lfs"]:
            expires = int(time.time()) + CDN_URL_TTL
            sig = hmac.new(hub._secret, f"{entry['sha256']}:{expires}".encode(), hashlib.sha256).hexdigest()
            q = urllib.parse.urlencode({"name": name, "Expires": expires, "Signature": sig})
            location = f"{hub.cdn_endpoint}/lfs/{entry['sha256']}?{q}"
            body = f"Found. Redirecting to {location}".encode()
            headers = dict(common)
            headers.update({
                "Location": location,
                "ETag": f'"{entry["oid"]}"',
                "X-Linked-Etag": f'"{entry["sha256"]}"',
                "X-Linked-Size": entry["size"],
            })
            return self._send(302, body, headers, "text/plain; charset=utf-8")
        headers = dict(common)
        headers.update({
            "ETag": f'"{entry["oid"]}"',
            "Content-Disposition": f"inline; filename*=UTF-8''{quoted}; filename=\"{name}\";",
        })
        self._send_file(hub._object_path(entry["sha256"]), entry["size"], headers, mimetypes.guess_type(name)[0] or "text/plain; charset=utf-8")

    def _send_file(self, path: Path, size: int, headers: dict, content_type: str) -> None:
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, "Invalid range", headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(size - int(m.group(2)), 0), size - 1
            if start >= size or start > end:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers = dict(headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self.log_entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.method == "HEAD" or length == 0:
            return
        with open(path, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _route_cdn(self) -> None:
        hub = self.server.hub
        segs = self._segments()
        if self.method not in ("GET", "HEAD") or len(segs) != 2 or segs[0] != "lfs" or not re.fullmatch(r"[0-9a-f]{64}", segs[1]):
            raise HubError(404, "NoSuchKey")
        sha256 = segs[1]
        try:
            expires = int(self.query["Expires"][-1])
            sig = self.query["Signature"][-1]
        except (KeyError, ValueError):
            raise HubError(403, "AccessDenied: missing signature")
        expected = hmac.new(hub._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, expected) or expires < time.time():
            raise HubError(403, "AccessDenied: invalid or expired signature")
        path = hub._object_path(sha256)
        if not path.exists():
            raise HubError(404, "NoSuchKey")
        name = (self.query.get("name") or [sha256])[-1]
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}; filename=\"{name}\";",
        }
        self._send_file(path, path.stat().st_size, headers, "application/octet-stream")

    # -- writes --

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        self._require_token()
        repo = self._repo(repo_type, repo_id)
        self._check_gate(repo)
        sha = self._resolve(repo, revision)
        tree = repo.commit_obj(sha)["tree"]
        body = self._json_body() or {}
        ignore = body.get("gitIgnore")
        if ignore is None and ".gitignore" in tree:
            ignore = hub._object_path(tree[".gitignore"]["sha256"]).read_text("utf-8", "replace")
        patterns = [ln.strip() for ln in (ignore or "").splitlines() if ln.strip() and not ln.startswith("#")]
        files = []
        for f in body.get("files") or []:
            path = f.get("path", "")
            existing = tree.get(path)
            files.append({
                "path": path,
                "uploadMode": "regular",  # files travel inline (base64) in the commit payload
                "shouldIgnore": any(_match_git_pattern(path, p) for p in patterns if not p.startswith("!")),
                "oid": existing["content_oid"] if existing else None,
            })
        self._send_json({"files": files, "commitOid": sha})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        tok = self._require_token()
        repo = self._repo(repo_type, repo_id)
        self._check_gate(repo)
        if tok["role"] != "write":
            raise HubError(403, "This token has read-only access: you don't have the rights to create a commit.")
        create_pr = _bool_param(self.query.get("create_pr"))
        lines = [json.loads(ln) for ln in self.body.decode("utf-8").splitlines() if ln.strip()]
        header = next((ln["value"] for ln in lines if ln.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "Missing commit header with a summary")
        title, description = header["summary"], header.get("description") or ""
        parent_commit = header.get("parentCommit")

        pr = None
        if create_pr:
            base_ref = repo.branch_ref(revision)
            if base_ref is None or not base_ref.startswith("refs/heads/"):
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            base_sha = repo.refs[base_ref]
            if parent_commit:
                base_sha = repo.resolve(parent_commit) or self._raise(HubError(404, f"Invalid rev id: {parent_commit}", "RevisionNotFound"))
        else:
            ref = repo.branch_ref(revision)
            if ref is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            pr = hub._pr_for_ref(repo, ref)
            if pr is not None:
                if pr["status"] == "merged":
                    raise HubError(400, "This pull request has already been merged")
                if pr["author"] != tok["user"] and not self._can_write(repo):
                    raise HubError(403, "You don't have the rights to push to this pull request.")
            elif not self._can_write(repo):
                raise HubError(
                    403,
                    f"You don't have the rights to create a commit on branch '{ref[len('refs/heads/'):]}' of {repo_id}. "
                    "Open a pull request instead (create_pr=True).",
                )
            base_sha = repo.refs[ref]
            if parent_commit and not base_sha.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")

        base_tree = repo.commit_obj(base_sha)["tree"]
        adds: dict[str, dict] = {}
        deletes: list[str] = []
        working = set(base_tree)
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            if key == "header":
                continue
            path = (value.get("path") or "").strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')}")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except ValueError:
                    raise HubError(400, f"Invalid base64 content for {path}")
                if repo_type == "model":
                    _validate_card_files(path, data)
                try:
                    adds[path] = hub._normalize_files({path: data})[path]
                except ValueError as e:
                    raise HubError(400, str(e))
                working.add(path)
            elif key == "lfsFile":
                sha256 = value.get("oid", "")
                obj = hub._object_path(sha256) if re.fullmatch(r"[0-9a-f]{64}", sha256) else None
                if obj is None or not obj.exists():
                    raise HubError(422, f"LFS object {sha256} for {path} was not uploaded")
                data = obj.read_bytes()
                adds[path] = {"sha256": sha256, "size": len(data), "content_oid": _git_hash("blob", data)}
                working.add(path)
            elif key == "deletedFile":
                if path not in working:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                working.discard(path)
                adds.pop(path, None)
                deletes.append(path)
            elif key == "deletedFolder":
                victims = [p for p in working if p.startswith(path + "/")]
                if not victims:
                    raise HubError(404, f"A file with this name doesn't exist: {path}/", "EntryNotFound")
                for p in victims:
                    working.discard(p)
                    adds.pop(p, None)
                    deletes.append(p)
            else:
                raise HubError(400, f"Unknown commit operation key {key!r}")
        author = tok["user"]
        sha = hub._make_commit(repo, base_tree, adds, deletes, author, title, description, parents=[base_sha])
        pr_url = None
        if create_pr:
            pr = hub._new_discussion(repo, title, author, description, True, base_sha)
            pr["base"] = base_ref
            repo.refs[f"refs/pr/{pr['num']}"] = sha
            hub._add_commit_event(pr, sha, title, author)
        else:
            repo.refs[ref] = sha
            if pr is not None:
                hub._add_commit_event(pr, sha, title, author)
        if pr is not None:
            pr_url = f"{self.base_url}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{pr['num']}"
        repo.save()
        self._send_json({
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{self.base_url}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{sha}",
            "pullRequestUrl": pr_url,
            "hookOutput": "",
        })

    @staticmethod
    def _raise(e: Exception):
        raise e

    # -- discussions --

    def _discussion_json(self, repo: _Repo, d: dict, details: bool) -> dict:
        out: dict[str, Any] = {
            "num": d["num"],
            "title": d["title"],
            "status": d["status"],
            "createdAt": d["created_at"],
            "isPullRequest": d["is_pull_request"],
            "author": _user_obj(d["author"]),
            "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "numComments": sum(1 for e in d["events"] if e["type"] == "comment"),
            "pinned": False,
            "topReactions": [],
            "repoOwner": {"name": repo.namespace, "type": "user", "isParticipating": False},
        }
        if not details:
            return out
        out.update({"events": d["events"], "locked": False, "collection": "discussions", "isReport": False})
        if d["is_pull_request"]:
            changes = {"base": d["base"]}
            if d.get("merge_commit"):
                changes["mergeCommitId"] = d["merge_commit"]
            out["changes"] = changes
            out["filesWithConflicts"] = self._pr_conflicts(repo, d)
            if _bool_param(self.query.get("diff")):
                out["diff"] = self._pr_diff(repo, d)
        return out

    def _pr_trees(self, repo: _Repo, d: dict) -> tuple[dict, dict, dict]:
        merge_base = repo.commit_obj(d["merge_base"])["tree"]
        head = repo.commit_obj(repo.refs.get(f"refs/pr/{d['num']}", d["merge_base"]))["tree"]
        base_head = repo.commit_obj(repo.refs[d["base"]])["tree"] if d["base"] in repo.refs else merge_base
        return merge_base, head, base_head

    def _pr_conflicts(self, repo: _Repo, d: dict) -> list[str]:
        if d["status"] == "merged":
            return []
        mb, head, base = self._pr_trees(repo, d)

        def sha(t: dict, p: str) -> str | None:
            return (t.get(p) or {}).get("sha256")

        return sorted(
            p for p in set(mb) | set(head) | set(base)
            if sha(head, p) != sha(mb, p) and sha(base, p) != sha(mb, p) and sha(head, p) != sha(base, p)
        )

    def _pr_diff(self, repo: _Repo, d: dict) -> str:
        hub = self.server.hub
        mb, head, _ = self._pr_trees(repo, d)
        out = []
        for p in sorted(set(mb) | set(head)):
            a, b = mb.get(p), head.get(p)
            if (a or {}).get("sha256") == (b or {}).get("sha256"):
                continue
            out.append(f"diff --git a/{p} b/{p}\n")
            if a is None:
                out.append("new file mode 100644\n")
            elif b is None:
                out.append("deleted file mode 100644\n")
            out.append(f"index {(a or {}).get('oid', '0' * 40)[:7]}..{(b or {}).get('oid', '0' * 40)[:7]}\n")
            blobs = []
            for e in (a, b):
                data = hub._object_path(e["sha256"]).read_bytes() if e else b""
                blobs.append(data)
            if any(e and e["lfs"] for e in (a, b)) or any(b"\0" in x[:8000] for x in blobs):
                out.append(f"Binary files {'a/' + p if a else '/dev/null'} and {'b/' + p if b else '/dev/null'} differ\n")
                continue
            old, new = (x.decode("utf-8", "replace").splitlines(keepends=True) for x in blobs)
            out.extend(difflib.unified_diff(old, new, f"a/{p}" if a else "/dev/null", f"b/{p}" if b else "/dev/null"))
            if out and not out[-1].endswith("\n"):
                out.append("\n\\ No newline at end of file\n")
        return "".join(out)

    def _find_discussion(self, repo: _Repo, num: int) -> dict:
        for d in repo.discussions:
            if d["num"] == num:
                return d
        raise HubError(404, "Discussion not found")

    def _list_discussions(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo(repo_type, repo_id)
        dtype = (self.query.get("type") or ["all"])[-1]
        status = (self.query.get("status") or ["all"])[-1]
        author = (self.query.get("author") or [None])[-1]
        search = (self.query.get("search") or [""])[-1].lower()
        p = int((self.query.get("p") or ["0"])[-1] or 0)
        items = []
        for d in reversed(repo.discussions):  # newest first
            if dtype == "pull_request" and not d["is_pull_request"]:
                continue
            if dtype == "discussion" and d["is_pull_request"]:
                continue
            if status == "open" and d["status"] not in ("open", "draft"):
                continue
            if status == "closed" and d["status"] not in ("closed", "merged"):
                continue
            if author and d["author"] != author:
                continue
            if search and search not in d["title"].lower():
                continue
            items.append(d)
        start = p * DISCUSSIONS_PAGE_SIZE
        page = items[start : start + DISCUSSIONS_PAGE_SIZE]
        self._send_json({
            "discussions": [self._discussion_json(repo, d, False) for d in page],
            "count": len(items),
            "start": start,
            "numClosedDiscussions": sum(1 for d in repo.discussions if d["status"] in ("closed", "merged")),
        })

    def _discussion_details(self, repo_type: str, repo_id: str, num: int) -> None:
        repo = self._repo(repo_type, repo_id)
        self._send_json(self._discussion_json(repo, self._find_discussion(repo, num), True))

    def _create_discussion(self, repo_type: str, repo_id: str) -> None:
        hub = self.server.hub
        tok = self._require_token()
        repo = self._repo(repo_type, repo_id)
        body = self._json_body() or {}
        title = (body.get("title") or "").strip()
        if not 3 <= len(title) <= 200:
            raise HubError(400, "Title must be between 3 and 200 characters")
        is_pr = bool(body.get("pullRequest"))
        base_sha = repo.refs["refs/heads/main"]
        d = hub._new_discussion(repo, title, tok["user"], body.get("description") or "", is_pr, base_sha if is_pr else None)
        if is_pr:
            d["status"] = "draft"  # no commits yet, like the Hub
            repo.refs[f"refs/pr/{d['num']}"] = base_sha
        repo.save()
        self._send_json({"num": d["num"], "url": f"{self.base_url}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{d['num']}"})

    def _discussion_action(self, repo_type: str, repo_id: str, num: int, action: list[str]) -> None:
        hub = self.server.hub
        tok = self._require_token()
        repo = self._repo(repo_type, repo_id)
        d = self._find_discussion(repo, num)
        body = self._json_body() or {}
        user = tok["user"]
        is_owner = self._can_write(repo)
        if action == ["comment"]:
            text = (body.get("comment") or "").strip()
            if not text:
                raise HubError(400, "Comment cannot be empty")
            event = hub._comment_event(user, text)
            d["events"].append(event)
            repo.save()
            return self._send_json({"newMessage": event})
        if action == ["title"]:
            if user != d["author"] and not is_owner:
                raise HubError(403, "You don't have the rights to rename this discussion")
            new = (body.get("title") or "").strip()
            event = hub._new_event("title-change", user, {"from": d["title"], "to": new})
            d["title"] = new
            d["events"].append(event)
            repo.save()
            return self._send_json({"newTitle": event})
        if action == ["status"]:
            if user != d["author"] and not is_owner:
                raise HubError(403, "You don't have the rights to change the status of this discussion")
            new = body.get("status")
            if new not in ("open", "closed"):
                raise HubError(400, "status must be 'open' or 'closed'")
            if d["status"] == "merged":
                raise HubError(400, "This pull request has already been merged")
            if body.get("comment"):
                d["events"].append(hub._comment_event(user, body["comment"]))
            event = hub._new_event("status-change", user, {"status": new})
            d["status"] = new
            d["events"].append(event)
            repo.save()
            return self._send_json({"newStatus": event})
        if action == ["merge"]:
            return self._merge(repo, d, user, is_owner, body)
        if len(action) == 3 and action[0] == "comment" and action[2] in ("edit", "hide"):
            event = next((e for e in d["events"] if e["id"] == action[1] and e["type"] == "comment"), None)
            if event is None:
                raise HubError(404, "Comment not found")
            if event["author"]["name"] != user and not (action[2] == "hide" and is_owner):
                raise HubError(403, "You can only edit your own comments")
            if action[2] == "hide":
                event["data"]["hidden"] = True
                event["data"]["latest"]["raw"] = ""
                event["data"]["latest"]["html"] = ""
            else:
                text = body.get("content") or ""
                version = {"raw": text, "html": f"<p>{html.escape(text)}</p>\n", "updatedAt": _now_iso(), "author": _user_obj(user)}
                event["data"]["latest"] = version
                event["data"]["edited"] = True
                event["data"]["numEdits"] += 1
                event["data"]["history"].insert(0, dict(version))
            repo.save()
            return self._send_json({"updatedComment": event})
        raise HubError(404, "Sorry, we can't find the page you are looking for.")

    def _merge(self, repo: _Repo, d: dict, user: str, is_owner: bool, body: dict) -> None:
        hub = self.server.hub
        if not d["is_pull_request"]:
            raise HubError(400, "This discussion is not a pull request")
        if not is_owner:
            raise HubError(403, "You don't have the rights to merge this pull request")
        if d["status"] in ("merged", "closed"):
            raise HubError(400, f"This pull request is {d['status']}")
        conflicts = self._pr_conflicts(repo, d)
        if conflicts:
            raise HubError(409, f"This pull request has conflicts: {', '.join(conflicts)}")
        mb, head, base = self._pr_trees(repo, d)
        adds = {p: e for p, e in head.items() if (mb.get(p) or {}).get("sha256") != e["sha256"]}
        deletes = [p for p in mb if p not in head]
        pr_head = repo.refs[f"refs/pr/{d['num']}"]
        base_sha = repo.refs[d["base"]]
        sha = hub._make_commit(repo, base, adds, deletes, user, f"Merge pull request #{d['num']}: {d['title']}", "",
                               parents=[base_sha, pr_head])
        repo.refs[d["base"]] = sha
        if body.get("comment"):
            d["events"].append(hub._comment_event(user, body["comment"]))
        d["events"].append(hub._new_event("status-change", user, {"status": "merged"}))
        d["status"] = "merged"
        d["merge_commit"] = sha
        repo.save()
        self._send_json({})


# --------------------------------------------------------------------------------------------------
# pointing huggingface_hub at a LocalHub


def hub_env(url: str, cache_dir: Path | str, hf_home: Path | str | None = None, *, offline: bool = False,
            base: dict | None = None) -> dict[str, str]:
    """Environment for a child process whose ``huggingface_hub`` must use ``url`` and ``cache_dir``.

    Starts from ``base`` (default ``os.environ``), drops any ``HF_TOKEN``/``HUGGING_FACE_HUB_TOKEN``
    and staging flag, sets ``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HOME`` (a sibling ``hf_home`` folder
    of the cache by default), ``HF_HUB_DISABLE_TELEMETRY=1`` and ``HF_HUB_OFFLINE`` (``1`` when offline).
    """
    env = dict(os.environ if base is None else base)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
              "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE", "HF_OIDC_RESOURCE"):
        env.pop(k, None)
    hf_home = Path(hf_home) if hf_home is not None else Path(cache_dir).parent / "hf_home"
    env.update({
        "HF_ENDPOINT": url.rstrip("/"),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    })
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@contextlib.contextmanager
def use_endpoint(url: str, cache_dir: Path | str | None = None, *, hf_home: Path | str | None = None,
                 offline: bool = False, isolate_token: bool = True):
    """Point the already-imported ``huggingface_hub`` of this process at ``url`` (restored on exit).

    ``cache_dir``: becomes the default cache (``constants.HF_HUB_CACHE``); ``hf_home``: where the
    token file, the agent-harness registry and the xet/assets caches go (a temporary folder, removed on
    exit, when not given); ``offline``: set ``constants.HF_HUB_OFFLINE`` (every request then raises
    ``OfflineModeIsEnabled`` and downloads are served from the cache); ``isolate_token``: hide
    ``HF_TOKEN`` and the saved token so only explicitly passed tokens are sent.

    Also exports the matching environment variables (``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HOME``,
    ``HF_HUB_OFFLINE``) so subprocesses started inside the block agree with this process.
    """
    from huggingface_hub import constants as C
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _cache_manager, _http

    url = url.rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    tmp_home = None
    if hf_home is None:
        tmp_home = tempfile.mkdtemp(prefix="localhub-hf-home-")
        hf_home = tmp_home
    hf_home = str(hf_home)
    Path(hf_home).mkdir(parents=True, exist_ok=True)

    patches: list[tuple[Any, str, Any]] = [
        (C, "ENDPOINT", url),
        (C, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"),
        (C, "HF_URL_HOSTS", frozenset(C.HF_URL_HOSTS | {(parsed.hostname or "").lower()})),
        (_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(url)})),
        (hf_api.api, "endpoint", url),
        (C, "HF_HUB_OFFLINE", bool(offline)),
        (C, "HF_HOME", hf_home),
        (C, "HF_TOKEN_PATH", os.path.join(hf_home, "token")) if isolate_token else None,
        (C, "HF_STORED_TOKENS_PATH", os.path.join(hf_home, "stored_tokens")) if isolate_token else None,
        (C, "AGENT_HARNESSES_PATH", os.path.join(hf_home, ".agent_harnesses.json")),
        (C, "CHECK_FOR_UPDATE_DONE_PATH", os.path.join(hf_home, ".check_for_update_done")),
        (C, "HF_ASSETS_CACHE", os.path.join(hf_home, "assets")),
        (C, "HF_XET_CACHE", os.path.join(hf_home, "xet")),
        (C, "HF_HUB_DISABLE_TELEMETRY", True),
    ]
    if cache_dir is not None:
        cache_dir = str(cache_dir)
        patches += [
            (C, "HF_HUB_CACHE", cache_dir),
            (C, "HUGGINGFACE_HUB_CACHE", cache_dir),
            (_cache_manager, "HF_HUB_CACHE", cache_dir),
        ]
    env_set = {"HF_ENDPOINT": url, "HF_HOME": hf_home, "HF_HUB_DISABLE_TELEMETRY": "1"}
    if cache_dir is not None:
        env_set["HF_HUB_CACHE"] = cache_dir
    if offline:
        env_set["HF_HUB_OFFLINE"] = "1"
    env_unset = ["HUGGINGFACE_CO_STAGING"] + ([] if offline else ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
    if isolate_token:
        env_unset += ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"]

    saved_attrs = []
    saved_env = {k: os.environ.get(k) for k in list(env_set) + env_unset}
    try:
        for patch in patches:
            if patch is None:
                continue
            obj, name, value = patch
            saved_attrs.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
        for k in env_unset:
            os.environ.pop(k, None)
        os.environ.update(env_set)
        _reset_client_state()
        yield url
    finally:
        for obj, name, value in reversed(saved_attrs):
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_client_state()
        if tmp_home is not None:
            shutil.rmtree(tmp_home, ignore_errors=True)


def _reset_client_state() -> None:
    """Drop pooled HTTP connections and cached filesystem instances bound to a previous endpoint."""
    from huggingface_hub.utils import _http

    _http.close_session()
    try:
        from huggingface_hub import HfFileSystem

        HfFileSystem.clear_instance_cache()
    except Exception:  # pragma: no cover - fsspec missing or API change
        pass
