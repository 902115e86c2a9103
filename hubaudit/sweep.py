"""Audit many models at once: ``hubaudit sweep`` on Ray (a local ``ray.init()`` when no cluster is named).

The plan is models x specs x forget sets: one :class:`~hubaudit.plan.AuditRequest` for every model, its specs
resolved once (:func:`~hubaudit.plan.resolve_specs`: a ``file:`` artifact pinned, and audited on the audited
model only, never on its original) and carried as typed specs to the cells the workers run. Its unit of work is a *cell*, one model at one precision on one
forget set, keyed in the results store exactly as :func:`hubaudit.audit` keys it (model identity, spec,
forget-set hash, metric key): the original behind six unlearned variants is one model, evaluated once, and
a cell an earlier audit or sweep finished is never computed again.

How it runs:

- the driver (this process) reads the models, pins each to its commit, looks every cell up in the store,
  and gives the missing cells of one model to one worker: a Ray actor with declared resources
  (``num_gpus``, and ``memory`` from :func:`hubaudit.modeling.estimate_memory_bytes`), which loads the
  model once and runs its cells one after another;
- a worker returns each finished cell and the store records it made; only the driver writes the SQLite
  store, the moment a cell comes back (workers never share one SQLite file over a network);
- a worker that dies mid-cell (killed, out of memory) is restarted by Ray and the cell retried, at most
  ``max_retries`` times; a model that fails for good becomes an ``error`` row with its reason, and the
  sweep goes on;
- once every cell of a model (and of its original) is in, the driver derives the verdict with the audit's
  own machinery (:func:`hubaudit.audit.build_report`), writes ``reports/<model>/report.*`` and adds the
  model's row to the leaderboard (:mod:`hubaudit.leaderboard`).

Without Ray installed (``pip install 'hubaudit[sweep]'``) the same plan runs in this process, one model
after another, and says how to scale out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .audit import build_report
from .errors import HubauditError
from .forget import load_forget_set
from .metrics import MetricConfig, resolve_metrics
from .attacks import FULL_PRECISION
from .plan import (AuditRequest, Auditor, Cell, chat_template_used, check_reference_specs, is_artifact, needs_reference,
                   open_model, resolve_specs)
from .results import AuditReport, CellResult
from .store import ResultStore

log = logging.getLogger("hubaudit")

DEFAULT_MAX_RETRIES = 2  # restarts of a worker that died mid-cell (killed, out of memory), per model
SCALE_OUT = ("Ray is not installed, so the sweep runs in this process, one model after another; to run it on "
             "every core or GPU here, or on a cluster (--ray-address), install the extra: pip install 'hubaudit[sweep]'")


class SweepError(HubauditError):
    """A sweep's input is wrong (models file, search, Ray address)."""


# -- which models ------------------------------------------------------------------------------------


@dataclass
class SweepEntry:
    """One line of a models file: a model, and optionally its own reference, forget set and control.

    ``reference``: None for the sweep's ``--reference`` (else the card's ``base_model``), ``"none"`` for none.
    ``forget``: None for the sweep's ``--forget``.
    ``control``: None for the sweep's ``--control``, ``"none"`` for none (that line is not calibrated).
    """

    model: str
    reference: str | None = None
    forget: str | None = None
    control: str | None = None


def read_models_file(path: str | Path) -> list[SweepEntry]:
    """``MODELS.txt``: one ``org/name[@rev]`` or folder per line, optionally followed by its reference, its
    forget set and its control (``-`` keeps the sweep's default, ``none`` as reference or control audits without
    one); ``#`` starts a comment.

    Raises:
        SweepError: the file is missing, empty, or a line has more than four fields.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"models file {path} not found; give a file with one model per line (or use --search)") from None
    except OSError as e:
        raise SweepError(f"cannot read the models file {path} ({e.strerror or e})") from None
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 4:
            raise SweepError(f"{path}:{n}: a line is MODEL [REFERENCE [FORGET [CONTROL]]], got {len(fields)} fields; "
                             "use - for a default")
        model, ref, forget, control = (fields + ["-", "-", "-"])[:4]
        entries.append(SweepEntry(model, *(None if f == "-" else f for f in (ref, forget, control))))
    if not entries:
        raise SweepError(f"models file {path} names no model; write one org/name[@rev] or folder per line")
    return entries


MAX_SEARCH_LIMIT = 10_000  # models one --search may return


def parse_search(text: str) -> dict:
    """``--search 'tag=unlearning,base_model=org/x,author=org,q=npo,limit=50'`` -> list_models arguments.

    Keys: ``tag`` (repeatable; every tag must match), ``base_model``, ``author``, ``q`` (text in the id),
    ``limit`` (default 100).
    """
    query: dict = {"tags": [], "base_model": None, "author": None, "search": None, "limit": 100}
    for part in [x.strip() for x in (text or "").split(",") if x.strip()]:
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value or key not in ("tag", "base_model", "author", "q", "limit"):
            raise SweepError(f"--search: '{part}' is not one of tag=..., base_model=..., author=..., q=..., limit=N")
        if key == "tag":
            query["tags"].append(value)
        elif key == "limit":
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_SEARCH_LIMIT:
                raise SweepError(f"--search: limit must be a number from 1 to {MAX_SEARCH_LIMIT}, got '{value[:20]}'")
            query["limit"] = int(value)
        else:
            query["search" if key == "q" else key] = value
    if not (query["tags"] or query["base_model"] or query["author"] or query["search"]):
        raise SweepError("--search needs at least one of tag=..., base_model=..., author=..., q=...")
    return query


def search_models(query: dict, *, token: str | None = None) -> list[dict]:
    """The Hub's models matching ``query`` (:func:`parse_search`), through ``HfApi.list_models``, each as
    ``{"id", "sha"}``: the sweep audits exactly these commits, and writes the list to its output.

    ``base_model`` matches the Hub's ``base_model:<id>`` tag (which the Hub derives from the card)."""
    from huggingface_hub import HfApi

    from .source import hub_errors

    filters = list(query.get("tags") or [])
    if query.get("base_model"):
        filters.append(f"base_model:{query['base_model']}")
    with hub_errors(query.get("author") or "models search"):
        found = list(HfApi(token=token).list_models(filter=filters or None, author=query.get("author"),
                                                   search=query.get("search"), limit=query.get("limit") or 100,
                                                   expand=["sha"]))
    return [{"id": m.id, "sha": m.sha} for m in found]


# -- the plan --------------------------------------------------------------------------------------------


class PlannedModel:
    """A model as the driver knows it before any worker loads it: what the store keys cells by, what the
    report names it, and what a worker needs to load it (``load``: a folder, or ``repo@sha``).

    Has the :class:`~hubaudit.modeling.ModelSource` attributes :func:`~hubaudit.plan.metric_key` and
    :func:`~hubaudit.audit.build_report` read."""

    def __init__(self, *, name: str, load: str, identity: str, device: str, stored_dtype: str | None,
                 weight_bytes: int, card: dict, path: str = "", repo_id: str | None = None,
                 revision: str | None = None, dtype: str = "auto"):
        self.name, self.load, self.identity, self.device, self.dtype = name, load, identity, device, dtype
        self._stored, self.weight_bytes, self.card = stored_dtype, weight_bytes, card
        self.path, self.repo_id, self.revision, self.snapshot = path, repo_id, revision, None
        self.public = False  # a card's base_model: resolved and loaded with token=False only
        self._token: str | bool | None = None  # what the tokenizer's files are fetched with (never shown)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The model's tokenizer, for the metrics whose store key hashes a rendered prompt (TOFU, WMDP): read
        from the folder, or only the tokenizer's files of the pinned Hub commit (no weights)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from .errors import ModelLoadError

            folder = self.path
            try:
                if not folder:
                    from huggingface_hub import snapshot_download

                    folder = snapshot_download(self.repo_id, revision=self.revision, allow_patterns=list(TOKENIZER_FILES),
                                               token=False if self.public else self._token)
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
            except Exception as e:  # noqa: BLE001 - any tokenizer failure is the model's
                raise ModelLoadError(f"model '{self.name}': cannot load its tokenizer ({type(e).__name__}: {e})") from None
        return self._tokenizer

    def compute_dtype(self):
        import torch

        from .modeling import choose_compute_dtype

        return getattr(torch, choose_compute_dtype(self.device, self._stored, self.dtype)[0])

    def compute_dtype_reason(self) -> str:
        from .modeling import choose_compute_dtype

        return choose_compute_dtype(self.device, self._stored, self.dtype)[1]

    def memory_bytes(self) -> int:
        """What one worker needs for this model: full precision plus one quantized copy (the audit's rule)."""
        from .modeling import estimate_memory_bytes

        return estimate_memory_bytes(self.weight_bytes, self._stored, self.compute_dtype().itemsize, 2)


# The files a tokenizer is read from (config.json: AutoTokenizer may need the model type)
TOKENIZER_FILES = ("config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                   "chat_template*")

_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def plan_model(text, *, device: str, token: str | None = None, allow_pickle: bool = False,
               trust_remote_code: bool = False, dtype: str = "auto") -> PlannedModel:
    """Pin a model without loading or downloading its weights: a folder is hashed (its identity); a Hub
    id is resolved to its commit with one ``model_info`` call (card, file sizes, dtype of the weights).
    ``text`` may be a :class:`~hubaudit.source.ModelRef`; a public one (a card's ``base_model``) is resolved
    with ``token=False``, and its workers load it with ``token=False`` too."""
    from .source import ModelRef, parse_model_ref

    ref = text if isinstance(text, ModelRef) else parse_model_ref(text)
    if ref.public:
        token = False
    if not ref.is_hub:
        src, card = open_model(text, device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        return PlannedModel(name=src.name, load=str(src.path), identity=src.identity, device=device,
                            stored_dtype=src.stored_dtype(), weight_bytes=src.weight_bytes(), card=card,
                            path=str(src.path), dtype=dtype)
    from huggingface_hub import HfApi

    from .errors import ModelLoadError
    from .source import hub_errors

    try:
        with hub_errors(ref.repo_id, ref.revision):
            info = HfApi(token=token).model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    except HubauditError as e:
        if not ref.public:
            raise
        raise type(e)(f"the card's base_model '{ref.text}' could not be opened as a public Hub model; a card's "
                      "base_model is never opened with your token or from disk: pass --reference to compare against "
                      "the original") from None
    files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    weights = sum(n for f, n in files.items() if f.endswith(".safetensors"))
    if not weights:
        pickles = sum(n for f, n in files.items() if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
        if not (pickles and allow_pickle):
            raise ModelLoadError(f"model '{ref.repo_id}' has no safetensors weights at this revision"
                                 + (" (only pickle weights: pass --allow-pickle if you trust it)" if pickles else ""))
        weights = pickles
    params = (getattr(info, "safetensors", None) and getattr(info.safetensors, "parameters", None)) or {}
    stored = _SAFETENSORS_DTYPES.get(max(params, key=params.get)) if params else None
    card = getattr(info, "card_data", None)
    card = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    planned = PlannedModel(name=ref.repo_id, load=f"{ref.repo_id}@{info.sha}", identity=f"hub:{ref.repo_id}@{info.sha}",
                           device=device, stored_dtype=stored, weight_bytes=weights, card=card, repo_id=ref.repo_id,
                           revision=info.sha, dtype=dtype)
    planned.public = ref.public
    planned._token = token
    return planned


@dataclass
class SweepRow:
    """One model of the sweep: its audit (or why there is none)."""

    model: str
    forget: str
    status: str = "pending"  # ok | error
    reason: str | None = None
    report: AuditReport | None = None
    report_dir: str | None = None
    card: dict = field(default_factory=dict)
    sha: str | None = None
    card_pr: str | None = None


@dataclass
class SweepResult:
    """What :func:`sweep` did: one row per model, where the files are, and how the work ran."""

    rows: list[SweepRow]
    out: Path
    stats: dict

    @property
    def leaderboard(self):
        """The leaderboard as a pandas DataFrame (the same rows as ``leaderboard.parquet``)."""
        import pandas as pd

        return pd.read_parquet(self.out / "leaderboard.parquet")


# -- the worker ------------------------------------------------------------------------------------------


class _RecordingStore(ResultStore):
    """An in-memory store that remembers what was put, so a worker can send its records to the driver."""

    def __init__(self, known: list[tuple] = ()):
        super().__init__(":memory:")
        for rec in known:  # what the driver's store has of this model: reused, not sent back
            super().put(*rec)
        self.new: list[tuple] = []

    def put(self, model, spec, forget, metric, metric_key, record):
        super().put(model, spec, forget, metric, metric_key, record)
        self.new.append((model, spec, forget, metric, metric_key, record))


def _chat_key(cfg: MetricConfig) -> tuple[str, str]:
    """Where a model's chat-template description is stored (beside its full-precision cell)."""
    return "_chat_template", json.dumps({"chat_template": cfg.chat_template, "system_prompt": cfg.system_prompt,
                                         "date_string": cfg.date_string})


class CellWorker:
    """Loads one model once and runs its cells (on Ray: one actor per model). Never writes the results store:
    each :meth:`cell` returns the finished cell and the store records it made."""

    def __init__(self, load: str, identity: str, device: str, fs, metrics: list[str], cfg: MetricConfig,
                 batch_size: int | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
                 known: list[tuple] = (), dtype: str = "auto", token: str | None = None):
        self.load, self.identity, self.fs, self.metric_names = load, identity, fs, metrics
        self.kw = dict(device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                       token=token)
        self.store = _RecordingStore(known)
        self.auditor = Auditor(fs, cfg, self.store, batch_size=batch_size, progress=False)
        self.src = None

    def pid(self) -> int:
        return os.getpid()

    def _open(self, load: str, identity: str, token=None):
        kw = dict(self.kw) if token is None else {**self.kw, "token": token}
        src = open_model(load, **kw)[0]
        if src.identity != identity:
            raise HubauditError(f"model '{load}' changed since the sweep was planned (identity "
                                f"{src.identity}, planned {identity}); run the sweep again")
        return src

    def cell(self, spec, reference: tuple | None = None) -> dict:
        """One cell (``spec``: a resolved :class:`~hubaudit.attacks.AttackSpec`, or ``"fp"``):
        ``{"cell": CellResult, "records": [...], "pid": ...}``; metrics this worker already computed for an
        earlier cell (a spec identical to full precision) are reused. ``reference``: ``(load, identity,
        public)`` of the original, for an attack that reads it (``ablate:direction``); loaded once per worker."""
        if self.src is None:
            self.src = self._open(self.load, self.identity)
        ref = None
        if reference is not None:
            load, identity, public = reference
            if identity == self.identity:
                ref = self.src
            else:
                if getattr(self, "_ref", (None, None))[0] != identity:
                    self._ref = (identity, self._open(load, identity, False if public else None))
                ref = self._ref[1]
        metrics = resolve_metrics(self.metric_names, self.fs)
        self.store.new = []
        cell = self.auditor.run_cell(Cell("model", self.src, spec, metrics, ref))
        if spec == FULL_PRECISION and cell.status == "ok":  # what the report says of the prompts (TOFU)
            self.store.put(self.identity, spec, self.auditor.fs_hash, *_chat_key(self.auditor.cfg),
                           {"value": chat_template_used(self.src, self.auditor.cfg, metrics)})
        records, self.store.new = self.store.new, []
        return {"cell": cell, "records": records, "pid": os.getpid()}

    def release(self) -> None:
        for src in (self.src, getattr(self, "_ref", (None, None))[1]):
            if src is not None:
                src.release()


class AuditWorker(CellWorker):
    """A sweep's ``--sequential`` unit of work: one model's whole sequential audit (:mod:`hubaudit.seqaudit`),
    its original's draws included, in one process (on Ray: one actor per model), since its rounds decide which
    items and specs the next round needs. Like :class:`CellWorker` it never writes the results store: it starts
    from what the driver's store has of both models (every forget set: a round's items are stored as their own)
    and returns the records it made."""

    def __init__(self, load: str, identity: str, device: str, fs, metrics: list[str], cfg: MetricConfig,
                 batch_size: int | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
                 known: list[tuple] = (), dtype: str = "auto", token: str | None = None, *, specs: list,
                 reference: tuple | None, threshold: float, alpha: float, seed: int, all_metrics: bool):
        super().__init__(load, identity, device, fs, metrics, cfg, batch_size, allow_pickle, trust_remote_code,
                         known, dtype, token)
        self.specs, self.reference, self.all_metrics = specs, reference, all_metrics
        self.threshold, self.alpha, self.seed = threshold, alpha, seed

    def audit(self) -> dict:
        """``{"cells": [CellResult], "sequential": record, "chat_template": ..., "records": [...], "pid": ...}``."""
        from .plan import plan_cells
        from .seqaudit import run_sequential

        self.src = self._open(self.load, self.identity)
        ref = None
        if self.reference is not None:
            load, identity, public = self.reference
            ref = self.src if identity == self.identity else self._open(load, identity, False if public else None)
            self._ref = (identity, ref)
        metrics = resolve_metrics(self.metric_names, self.fs)
        self.store.new = []
        cells, record = run_sequential(self.auditor, plan_cells(self.specs, metrics, model=self.src, reference=ref),
                                       threshold=self.threshold, alpha=self.alpha, seed=self.seed,
                                       all_metrics=self.all_metrics)
        chat = chat_template_used(self.src, self.auditor.cfg, metrics)
        records, self.store.new = self.store.new, []
        self.release()
        return {"cells": cells, "sequential": record, "chat_template": chat, "records": records, "pid": os.getpid()}


# -- the sweep -------------------------------------------------------------------------------------------


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node IP is the loopback (checked in ray 2.60)


def _start_ray(address: str | None, num_cpus: int | None, token: str | None = None):
    """Ray, connected: to ``address`` (``auto``, ``ray://host:10001``), else a local one on this machine, whose
    workers inherit ``token`` as ``HF_TOKEN`` (set only while Ray starts; never a task argument, never written).
    Returns (ray module, whether we started it) or (None, False) without Ray installed."""
    try:
        import ray
    except ImportError:
        if address:
            raise SweepError("--ray-address needs Ray: pip install 'hubaudit[sweep]'") from None
        return None, False
    if ray.is_initialized():
        return ray, False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **{k: v for k, v in kw.items() if k != "include_dashboard"})
        else:
            before = {k: os.environ.get(k) for k in ("HF_TOKEN", LOOPBACK_ENV)}
            if token:
                os.environ["HF_TOKEN"] = token
            # a one-machine Ray on the loopback only: its node IP is 127.0.0.1, so GCS, raylet, object manager and
            # workers listen on 127.0.0.1 and nothing on another interface (Ray >= 2.50 binds its servers to the
            # node IP). Ray reads the node IP as its single-machine mode does on macOS/Windows: from
            # ENABLE_RAY_CLUSTER (the driver) and its environment variable (every process Ray starts).
            import ray._private.ray_constants as rc

            os.environ[LOOPBACK_ENV] = "0"
            cluster = rc.ENABLE_RAY_CLUSTER
            rc.ENABLE_RAY_CLUSTER = False
            try:
                ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kw)  # never someone's `ray start`
            finally:
                rc.ENABLE_RAY_CLUSTER = cluster
                for k, v in before.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    except ConnectionError as e:
        raise SweepError(f"cannot connect to the Ray cluster at --ray-address {address} ({str(e).splitlines()[0]}); "
                         "check the address (auto on a cluster node, ray://HEAD:10001 from outside)") from None
    return ray, True


def sweep(
    models: Iterable[str | SweepEntry] | str | Path | None = None,
    *,
    search: str | dict | None = None,
    reference=None,
    forget: str | None = None,
    out: str | Path = "hubaudit-sweep",
    store: str | Path | None = None,
    token: str | None = None,
    ray_address: str | None = None,
    use_ray: bool | None = None,
    num_cpus: int | None = None,
    gpus_per_model: float | None = None,
    cpus_per_model: float = 1,
    max_retries: int = DEFAULT_MAX_RETRIES,
    card: str = "none",
    dry_run: bool = False,
    progress: bool = True,
    request: AuditRequest | None = None,
    **options,
) -> SweepResult:
    """Audit many models: every model x every spec x its forget set, on Ray, into one results store, a
    report per model and a leaderboard.

    Args:
        models: a models file (see :func:`read_models_file`), or a list of model ids / folders /
            :class:`SweepEntry`.
        search: instead of ``models``, a Hub query (``"tag=unlearning,base_model=org/x"``, see
            :func:`parse_search`); the query and the commits it resolved to go into ``sweep.json``.
        reference, forget, token: as in :func:`hubaudit.audit`, the default of every model (a models-file line
            may name its own reference and forget set). ``control`` (a keyword of the request): a model that never
            learned the forget set, the control of every model (a models-file line may name its own, or ``none``):
            every spec also runs on it, once for the whole sweep, and each model's verdict counts only the regain
            beyond what the same attack does to it (:mod:`hubaudit.calibrate`); the leaderboard says which rows
            were calibrated. A spec that reads the original (``ablate:direction``) runs with each line's reference
            (a line without one is an error row).
        out: the folder for ``leaderboard.parquet``, ``leaderboard.md``, ``sweep.json`` and ``reports/``.
        store: the results store (default: the audit's default file); only this process writes it.
        ray_address: a Ray cluster (``auto``, ``ray://head:10001``); default: a local Ray on this machine.
        use_ray: False runs everything in this process; None uses Ray when it is installed.
        num_cpus: CPUs of the local Ray (default: all).
        gpus_per_model / cpus_per_model: resources each model's worker declares (default: 1 GPU on CUDA).
        max_retries: how often a worker that died mid-cell is restarted and the cell retried.
        card: ``pr`` opens (or updates) a pull request with each Hub model's card; ``none`` (default).
        dry_run: resolve the models and write the plan (``sweep.json``), compute nothing.
        progress: a progress bar over cells.
        request: the audit's parameters (:class:`~hubaudit.plan.AuditRequest`), the same for every model; or its
            fields as keywords (``specs``, ``threshold``, ``alpha``, ``metrics``, ``fresh``, ...), as for
            :func:`hubaudit.audit`. ``device``: ``auto`` (a GPU per model when the Ray cluster has GPUs),
            ``cpu`` or ``cuda``; ``dtype``: with ``auto`` the driver plans the dtype from the device type and
            the checkpoint (the store key) by its own hardware; on a cluster whose workers differ from the
            driver, give it (``bfloat16``) so plan and workers agree.

    Returns:
        A :class:`SweepResult`.

    Raises:
        HubauditError: a wrong input (models file, spec, search), before any work.
    """
    t0 = time.perf_counter()
    req = AuditRequest.of(request, options)
    if card not in ("none", "pr"):
        raise HubauditError(f"--card must be none or pr for a sweep, got {card}")
    if max_retries < 0:
        raise HubauditError(f"--max-retries must be >= 0, got {max_retries}")
    query, resolved = None, None
    if search is not None:
        if models:
            raise SweepError("give a models file or --search, not both")
        query = parse_search(search) if isinstance(search, str) else dict(search)
        resolved = search_models(query, token=token)
        if not resolved:
            raise SweepError(f"--search found no model on the Hub ({json.dumps(query)}); loosen the query")
        entries = [SweepEntry(f"{m['id']}@{m['sha']}") for m in resolved]
    elif models is None:
        raise SweepError("give a models file (one org/name[@rev] or folder per line) or --search")
    elif isinstance(models, (str, Path)):
        entries = read_models_file(models)
    else:
        entries = [m if isinstance(m, SweepEntry) else SweepEntry(str(m)) for m in models]
    from .report import check_out_dir

    out = check_out_dir(out)
    specs = resolve_specs(req, token=token)  # once, on the driver: a file: artifact pinned, carried to the cells
    result_store = ResultStore(store)
    ray = None
    started_ray = False
    try:
        if ray_address and use_ray is not False:  # a cluster: its GPUs decide where the models run
            ray, started_ray = _start_ray(ray_address, num_cpus)
        if req.device != "auto":
            unit_device = req.device
        elif ray is not None:
            unit_device = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
        else:  # the local Ray runs on this machine: its devices are ours
            from .modeling import resolve_device

            unit_device = resolve_device("auto")
        gpus = gpus_per_model if gpus_per_model is not None else (1 if unit_device == "cuda" else 0)
        run = _Sweep(entries, req, specs, reference=reference, forget=forget, out=out, store=result_store,
                     device=unit_device, token=token, ray=ray, gpus=gpus, cpus=cpus_per_model,
                     max_retries=max_retries, card=card, progress=progress)
        run.plan()
        meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "query": query,
                "resolved": resolved, "specs": [str(s) for s in specs], "device": unit_device, "ray_address": ray_address,
                "control": None if req.control is None else str(req.control), "models": run.describe()}
        (out / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if dry_run:
            return SweepResult(run.rows, out, run.stats)
        if run.has_work and ray is None and use_ray is not False:  # a local Ray, only when there is work
            ray, started_ray = _start_ray(None, num_cpus, token)
            if ray is None:
                print(f"hubaudit: {SCALE_OUT}", file=sys.stderr)
            run.ray = ray
        run.execute()
        run.finish()
        from .leaderboard import write_leaderboard

        write_leaderboard(run.rows, out)
        run.stats["seconds"] = time.perf_counter() - t0
        meta.update(stats=run.stats, models=run.describe(), ray="none" if ray is None else (ray_address or "local"))
        (out / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return SweepResult(run.rows, out, run.stats)
    finally:
        if started_ray:
            ray.shutdown()
        result_store.close()


def _cell_name(spec, ref: PlannedModel | None) -> str:
    """The driver's name of a cell of a model: its spec, and for an attack that reads the original
    (``ablate:direction``) which original, since two lines may audit one model against two originals."""
    return str(spec) if ref is None else f"{spec} vs {ref.identity}"


def _ref_arg(ref: PlannedModel | None) -> tuple | None:
    """What a worker needs to load the original an attack reads: ``(load, identity, public)``."""
    return None if ref is None else (ref.load, ref.identity, ref.public)


class _Sweep:
    """The driver's state: the plan, what is pending, and what came back."""

    def __init__(self, entries, request: AuditRequest, specs: list, *, reference, forget, out, store, device, token,
                 ray, gpus, cpus, max_retries, card, progress):
        self.entries, self.request, self.specs = entries, request, specs  # specs: resolved (typed) once
        self.reference, self.forget, self.out, self.store = reference, forget, out, store
        self.device, self.token = device, token  # the device the workers compute on (request.device resolved)
        self.cfg, self.fresh, self.dtype = request.metric_config, request.fresh, request.dtype
        self.ray, self.gpus, self.cpus, self.max_retries, self.card = ray, gpus, cpus, max_retries, card
        self.progress = progress
        self.rows: list[SweepRow] = []
        self.audits: list[dict] = []  # per row: model, reference (PlannedModel), fs, metrics, reference_note
        self.cells: dict[tuple, CellResult] = {}  # (identity, fs hash, spec) -> finished cell
        self.todo: dict[tuple, dict] = {}  # (identity, fs hash) -> {"model": PlannedModel, "fs":, "specs": [typed]}
        self.audit_todo: list[dict] = []  # --sequential: the audits (of self.audits) a worker runs whole
        self._lookups: dict[str, Auditor] = {}
        self.stats = {"models": 0, "cells": 0, "reused_cells": 0, "computed_cells": 0, "error_cells": 0,
                      "skipped_cells": 0, "worker_restarts": 0, "workers": 0}

    # -- planning --
    def _planned(self, text, cache: dict) -> PlannedModel:
        key = ("public", text.text) if getattr(text, "public", False) else text  # never the operator's copy
        if key not in cache:
            try:
                cache[key] = plan_model(text, device=self.device, token=self.token,
                                        allow_pickle=self.request.allow_pickle,
                                        trust_remote_code=self.request.trust_remote_code, dtype=self.dtype)
            except HubauditError as e:
                cache[key] = e
        if isinstance(cache[key], HubauditError):
            raise cache[key]
        return cache[key]

    def plan(self) -> None:
        from .source import card_reference

        models: dict = {}
        sets: dict = {}
        for e in self.entries:
            fsrc = e.forget or self.forget or "synthetic"
            row = SweepRow(model=e.model, forget=fsrc)
            self.rows.append(row)
            audit = {"row": row}
            self.audits.append(audit)
            try:
                if fsrc not in sets:
                    fs = load_forget_set(fsrc)
                    sets[fsrc] = (fs, fs.content_hash(), [m.name for m in resolve_metrics(self.request.metrics, fs)])
                fs, fs_hash, metric_names = sets[fsrc]
                m = self._planned(e.model, models)
                row.sha, row.card = m.revision, m.card
                ref_text, note = e.reference if e.reference is not None else self.reference, None
                from_card = ref_text is None
                if from_card:  # a public Hub id only (token=False), never a local path: see card_reference
                    ref_text, note = card_reference(m.card)
                    if ref_text is not None:
                        note = f"reference taken from the model card's base_model: {ref_text.text} (a public Hub model)"
                ref = None
                if ref_text not in (None, False, "none"):
                    try:
                        ref = self._planned(ref_text if from_card else str(ref_text), models)
                    except HubauditError as err:
                        if not from_card:
                            raise
                        note = str(err)
                if ref is None:  # ablate:direction without an original: this line cannot be audited
                    check_reference_specs(self.specs)
                ctl_text = e.control if e.control is not None else self.request.control
                if self.request.sequential and ctl_text not in (None, "none"):
                    raise HubauditError("--sequential does not calibrate against a control yet: give this line's "
                                        "control as none, or drop --sequential")
                ctl = None if ctl_text in (None, "none") else self._planned(str(ctl_text), models)
                audit.update(model=m, reference=ref, control=ctl, fs=fs, fs_hash=fs_hash, metrics=metric_names,
                             note=note)
                if self.request.sequential:  # one worker runs the whole audit, round by round
                    self.audit_todo.append(audit)
                    continue
                for who in [m] + [x for x in (ref, ctl) if x is not None]:
                    for spec in self._specs_of(who is m):
                        self._need(who, fs, fs_hash, metric_names, spec, ref)
            except HubauditError as err:
                row.status, row.reason = "error", str(err)
        self.stats["models"] = len(self.rows)

    def _specs_of(self, audited: bool) -> list:
        """Full precision and every spec for the audited model; for its original, not a published build (file:)."""
        return [FULL_PRECISION, *(s for s in self.specs if audited or not is_artifact(s))]

    def _need(self, who: PlannedModel, fs, fs_hash, metric_names, spec, ref: PlannedModel | None = None) -> None:
        ref = ref if spec != FULL_PRECISION and needs_reference(spec) else None
        key = (who.identity, fs_hash, _cell_name(spec, ref))
        t = self.todo.get(key[:2], {})
        if key in self.cells or key[2] in (_cell_name(s, r) for s, r in zip(t.get("specs", ()), t.get("refs", ()))):
            return
        if fs_hash not in self._lookups:  # one per forget set (an Auditor hashes its set once)
            self._lookups[fs_hash] = Auditor(fs, self.cfg, self.store, self.fresh)
        found = self._lookups[fs_hash].lookup(Cell("model", who, spec, resolve_metrics(metric_names, fs), ref))
        self.stats["cells"] += 1
        if found is not None:
            self.cells[key] = found
            self.stats["reused_cells"] += 1
            return
        t = self.todo.setdefault(key[:2], {"model": who, "fs": fs, "fs_hash": fs_hash, "metrics": metric_names,
                                           "specs": [], "refs": []})
        t["specs"].append(spec)
        t["refs"].append(ref)  # the original an attack reads (ablate:direction), else None

    def describe(self) -> list[dict]:
        out = []
        for a in self.audits:
            row, m, ref, ctl = a["row"], a.get("model"), a.get("reference"), a.get("control")
            out.append({"model": row.model, "sha": row.sha, "identity": m.identity if m else None,
                        "reference": ref.name if ref else None, "reference_identity": ref.identity if ref else None,
                        "control": ctl.name if ctl else None, "control_identity": ctl.identity if ctl else None,
                        "forget": row.forget, "status": row.status, "reason": row.reason,
                        "memory_bytes": m.memory_bytes() if m else None, "report": row.report_dir})
        return out

    # -- running --
    def _record(self, key: tuple, res: dict) -> None:
        """A cell came back: write its records (the driver is the only writer), keep the cell."""
        for rec in res["records"]:
            self.store.put(*rec)
        cell = res["cell"]
        self.cells[key] = cell
        if cell.status == "error":
            self.stats["error_cells"] += 1
        elif cell.status == "skipped":  # a backend not usable on that worker: not stored, asked again next time
            self.stats["skipped_cells"] += 1
        elif not cell.reused:
            self.stats["computed_cells"] += 1
        else:
            self.stats["reused_cells"] += 1

    def _failed(self, key: tuple, reason: str) -> None:
        self.cells[key] = CellResult(role="model", spec=key[2].split(" vs ")[0], status="error", reason=reason)
        self.stats["error_cells"] += 1

    def _worker_args(self, t: dict) -> tuple:
        m = t["model"]
        known = [] if self.fresh else self.store.records(m.identity, t["fs_hash"])
        return (m.load, m.identity, self.device, t["fs"], t["metrics"], self.cfg, self.request.batch_size,
                self.request.allow_pickle, self.request.trust_remote_code, known, self.dtype)

    @property
    def has_work(self) -> bool:
        return bool(self.todo or self.audit_todo)

    def execute(self) -> None:
        total = sum(len(t["specs"]) for t in self.todo.values()) + len(self.audit_todo)
        bar = None
        if self.progress and total:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="sweep", unit="model" if self.audit_todo else "cell")
        try:
            if self.audit_todo:
                self._run_audits(bar)
            elif self.ray is None:
                self._run_here(bar)
            else:
                self._run_ray(bar)
        finally:
            if bar:
                bar.close()

    # -- --sequential: a worker per audit --
    def _audit_worker(self, a: dict) -> tuple[tuple, dict]:
        m, ref = a["model"], a["reference"]
        known = [] if self.fresh else [r for who in {m.identity, *([ref.identity] if ref else [])}
                                        for r in self.store.records(who, None)]
        args = (m.load, m.identity, self.device, a["fs"], a["metrics"], self.cfg, self.request.batch_size,
                self.request.allow_pickle, self.request.trust_remote_code, known, self.dtype)
        kw = dict(specs=self.specs, reference=None if ref is None else (ref.load, ref.identity, ref.public),
                  threshold=self.request.threshold, alpha=self.request.alpha, seed=self.request.seed,
                  all_metrics=self.request.metrics is not None)
        return args, kw

    def _audit_done(self, a: dict, res: dict) -> None:
        for rec in res["records"]:
            self.store.put(*rec)
        a["result"] = res
        cells = res["cells"]
        self.stats["cells"] += len(cells)
        self.stats["computed_cells"] += sum(1 for c in cells if c.status == "ok" and not c.reused)
        self.stats["reused_cells"] += sum(1 for c in cells if c.reused)
        self.stats["error_cells"] += sum(1 for c in cells if c.status == "error")
        self.stats["skipped_cells"] += sum(1 for c in cells if c.status == "skipped")
        self.stats["sequential_tokens"] = self.stats.get("sequential_tokens", 0) + res["sequential"].get("tokens_computed", 0)

    def _run_audits(self, bar) -> None:
        if self.ray is None:
            for a in self.audit_todo:
                if bar:
                    bar.set_postfix_str(a["model"].name)
                args, kw = self._audit_worker(a)
                try:
                    worker = AuditWorker(*args, token=False if a["model"].public else self.token, **kw)
                    self._audit_done(a, worker.audit())
                except HubauditError as e:
                    a["row"].status, a["row"].reason = "error", str(e)
                except Exception as e:  # noqa: BLE001 - one model failing must not end the sweep
                    log.debug("sweep audit failed", exc_info=True)
                    a["row"].status, a["row"].reason = "error", f"{type(e).__name__}: {e}"
                self.stats["workers"] += 1
                if bar:
                    bar.update(1)
            return
        ray = self.ray
        remote = ray.remote(AuditWorker)
        pending: dict = {}  # object ref -> (audit, its actor)
        for a in self.audit_todo:
            args, kw = self._audit_worker(a)
            m, ref = a["model"], a["reference"]
            memory = m.memory_bytes() + (ref.memory_bytes() if ref is not None and ref.identity != m.identity else 0)
            actor = remote.options(num_cpus=self.cpus, num_gpus=self.gpus, memory=memory, max_restarts=self.max_retries,
                                   max_task_retries=self.max_retries).remote(
                *args, **({"token": False} if m.public else {}), **kw)
            self.stats["workers"] += 1
            pending[actor.audit.remote()] = (a, actor)
        try:
            while pending:
                (ref_, *_), _ = ray.wait(list(pending), num_returns=1)
                a, actor = pending.pop(ref_)
                res, why = self._ray_result(ref_)
                if why is None:
                    self._audit_done(a, res)
                else:
                    a["row"].status, a["row"].reason = "error", why
                ray.kill(actor)  # its one audit is done: free its resources for a model still waiting
                if bar:
                    bar.update(1)
                    bar.set_postfix_str(a["model"].name)
        finally:  # interrupted: no worker outlives the sweep
            for _, actor in pending.values():
                ray.kill(actor)

    def _run_here(self, bar) -> None:
        for (ident, fs_hash), t in self.todo.items():
            worker = None
            for spec, ref in zip(t["specs"], t["refs"]):
                key = (ident, fs_hash, _cell_name(spec, ref))
                if bar:
                    bar.set_postfix_str(f"{t['model'].name} {spec}")
                try:
                    if worker is None:  # in this process: the token is passed on (a Ray worker reads HF_TOKEN)
                        worker = CellWorker(*self._worker_args(t), token=False if t["model"].public else self.token)
                    self._record(key, worker.cell(spec, _ref_arg(ref)))
                except HubauditError as e:
                    self._failed(key, str(e))
                except Exception as e:  # noqa: BLE001 - one model failing must not end the sweep
                    log.debug("sweep cell failed", exc_info=True)
                    self._failed(key, f"{type(e).__name__}: {e}")
                if bar:
                    bar.update(1)
            if worker is not None:
                worker.release()
            self.stats["workers"] += 1

    def _run_ray(self, bar) -> None:
        ray = self.ray
        remote = ray.remote(CellWorker)
        pending: dict = {}  # object ref -> (key, group)
        actors: dict = {}  # group -> [actor handle, cells left, pids seen]
        for group, t in self.todo.items():
            opts = dict(**self.resources(t), max_restarts=self.max_retries, max_task_retries=self.max_retries)
            actor = remote.options(**opts).remote(*self._worker_args(t), **({"token": False} if t["model"].public else {}))
            actors[group] = [actor, len(t["specs"]), set()]
            self.stats["workers"] += 1
            pending[actor.pid.remote()] = (None, group)  # its first process: a later one is a restart
            for spec, ref in zip(t["specs"], t["refs"]):  # one actor runs its calls in order: full precision first
                pending[actor.cell.remote(spec, _ref_arg(ref))] = ((*group, _cell_name(spec, ref)), group)
        try:
            self._collect(pending, actors, bar)
        finally:  # interrupted, or done: no worker outlives the sweep
            for actor, left, _ in actors.values():
                if left:
                    ray.kill(actor)

    def resources(self, t: dict) -> dict:
        """What one model's worker declares to Ray: ``num_cpus``, ``num_gpus`` (``--gpus-per-model``, default
        one GPU whenever the sweep computes on CUDA: every cell of the model, training attacks included, runs on
        it) and ``memory``: the model at its compute dtype times the most copies one of its cells holds (2: full
        precision and an attacked copy; 5 for a full fine-tune, :attr:`~hubaudit.attacks.Attack.memory_copies`),
        plus the original when an attack reads it (``ablate:direction``)."""
        from .attacks import get_attack
        from .modeling import estimate_memory_bytes

        m = t["model"]
        copies = max([2] + [get_attack(s)[0].memory_copies for s in t["specs"] if s != FULL_PRECISION])
        memory = estimate_memory_bytes(m.weight_bytes, m._stored, m.compute_dtype().itemsize, copies)
        refs = {r.identity: r for r in t.get("refs", ()) if r is not None and r.identity != m.identity}
        memory += sum(r.memory_bytes() for r in refs.values())
        return {"num_cpus": self.cpus, "num_gpus": self.gpus, "memory": memory}

    def _ray_result(self, ref) -> tuple:
        """``(value, None)`` of a finished Ray call, or ``(None, why)`` in one line: the call's own error (a model
        that cannot load, ...), or its worker dead more often than ``max_retries``."""
        ray = self.ray
        try:
            return ray.get(ref), None
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            lines = str(cause if cause is not None else e).strip().splitlines()
            return None, lines[-1] if lines else type(e).__name__
        except ray.exceptions.RayError as e:
            return None, (f"the worker died {self.max_retries + 1} times ({type(e).__name__}); out of memory? see the "
                          "Ray logs")

    def _collect(self, pending: dict, actors: dict, bar) -> None:
        ray = self.ray
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            key, group = pending.pop(ref)
            if key is None:
                try:
                    actors[group][2].add(ray.get(ref))
                except ray.exceptions.RayError:
                    pass  # its cells say what happened
                continue
            res, why = self._ray_result(ref)
            if why is None:
                actors[group][2].add(res["pid"])
                self._record(key, res)
            else:
                self._failed(key, why)
            if bar:
                bar.update(1)
                bar.set_postfix_str(f"{self.todo[group]['model'].name} {key[2]}")
            actors[group][1] -= 1
            if actors[group][1] == 0:
                self.stats["worker_restarts"] += max(0, len(actors[group][2]) - 1)
                ray.kill(actors[group][0])  # frees its resources for the next model

    # -- results --
    def finish(self) -> None:
        """Every model whose cells are all in: its report (the audit's own derivation) and files."""
        from .report import safe_name, write_report

        for a in self.audits:
            row = a["row"]
            if row.status == "error":
                continue
            m, ref, ctl, fs, fs_hash = a["model"], a["reference"], a.get("control"), a["fs"], a["fs_hash"]
            seq = a.get("result")
            cells = [] if seq is None else seq["cells"]
            for role, who in (("model", m), ("reference", ref), ("control", ctl)) if seq is None else ():
                if who is None:
                    continue
                for spec in self._specs_of(role == "model"):
                    r = ref if spec != FULL_PRECISION and needs_reference(spec) else None
                    cells.append(replace(self.cells[(who.identity, fs_hash, _cell_name(spec, r))], role=role))
            base = cells[0]
            if base.status != "ok":
                row.status, row.reason = "error", f"the model could not be evaluated: {base.reason}"
                continue
            report = build_report(cells, src=m, ref=ref, ret=None, fs=fs,
                                  metric_objs=resolve_metrics(a["metrics"], fs), cfg=self.cfg,
                                  specs=[str(s) for s in self.specs], threshold=self.request.threshold,
                                  alpha=self.request.alpha, auc_retrain=self.request.auc_retrain,
                                  store=self.store, fresh=self.fresh, reference_note=a["note"],
                                  chat_template=seq["chat_template"] if seq is not None else
                                  (self.store.get(m.identity, FULL_PRECISION, fs_hash, *_chat_key(self.cfg)) or {}).get("value"),
                                  started=time.perf_counter(), ctl=ctl)
            if seq is not None:
                from .seqaudit import apply_sequential

                apply_sequential(report, seq["sequential"])
            name = f"{m.repo_id}@{m.revision[:8]}" if m.repo_id else f"{Path(m.name).name}@{m.identity.split(':')[-1][:8]}"
            if ctl is not None:  # one model, calibrated against two controls (or none): two reports
                name += f"@control-{ctl.identity.split(':')[-1][:8]}"
            folder = self.out / "reports" / safe_name(f"{name}@{fs.name}@{fs_hash[:8]}", "model")  # per forget set
            write_report(report, folder)
            row.status, row.report, row.report_dir = "ok", report, str(folder.relative_to(self.out))
            if self.card == "pr" and m.repo_id:
                from .card import publish_card

                try:
                    row.card_pr = publish_card(report, m.repo_id, token=self.token, pr=True).pr_url
                except HubauditError as e:
                    log.warning("hubaudit: the card pull request for %s failed: %s", m.repo_id, e)

