"""The unlearning trainer behind ``hubaudit unlearn`` and :func:`hubaudit.unlearn.unlearn`.

One run: load the original model (and a frozen copy of it when the method needs a reference), build the
forget and retain rows from the forget set's training text (:mod:`.data`: the forget and retain corpora,
never an item a metric scores, cut into ``max_length``-token windows, 2,048 as the paper's code), optionally
compute SURE's saliency mask, then train with AdamW at a constant learning rate with ``dtype`` weights
(bfloat16 by default: an update smaller than half a bf16 step is lost, as in the paper's pure-bf16 setting),
the gradient clipped to a global norm of ``max_grad_norm`` (1.0, the Hugging Face Trainer's default, which the
paper's code runs on). Where the device computes that dtype natively
(:func:`hubaudit.modeling.choose_precision`: a GPU, a CPU with AMX or AVX512-BF16) it trains in pure bf16;
elsewhere the weights are stored in float32 holding bf16 values, rounded again after every optimizer step,
with float32 matmuls (``compute_dtype`` forces either). ``master_weights="float32"`` trains float32 weights
instead and saves them in ``dtype``. The share of the weights whose (saved-dtype) value each step changed is
logged, shown in the progress bar and summarized in the manifest.

Controls, chosen from what the original actually knows (:func:`choose_controls`): before training the
original is measured on every forget metric the set supports (KnowMem forget, VerbMem forget, TOFU ROUGE-L
forget, WMDP accuracy: ``STOP_METRICS``, in that order) and on its retain side. Forgetting is steered by the
first forget metric on which the original scores at least ``MIN_ORIGINAL`` points above chance (or by
``stop_metric``, which must be one it knows): a metric the original scores near zero on cannot show
forgetting and is never chosen. Utility is the first of KnowMem retain, TOFU ROUGE-L retain, MMLU accuracy
the set has and the original knows, else the retain passages' mean token probability (``retain_prob``:
exp of minus the mean token NLL of each ``privleak/retain`` text no run trains on, x 100, averaged:
:func:`.data.retain_prob_texts`), so any set with a retain part has a utility floor. The choice and its
reason are printed and recorded. Every ``eval_every`` steps it measures both, and stops:

- on the **utility floor** ("Unlearning with Control", arXiv 2406.09179): when utility falls below
  ``utility_floor`` x the original's (above chance), training stops and the model goes back to the last
  evaluated state that was above the floor;
- on the **forget target**: when the forget score reaches ``stop_at`` percent of the original's or less
  (above chance). A run that ends without reaching it says so (``target.reached`` in ``unlearn.json``, the
  card, the CLI's summary).

Checkpoints (model, optimizer, step, data order, random state, evaluation history) go to
``OUT/checkpoints/state.pt`` every ``checkpoint_every`` steps, on Ctrl-C (after the step in flight), and when a
run is cut short
with ``max_steps_this_run``; the same call again resumes from there and gives the same weights, bit for
bit on CPU, as a run that was never interrupted. The finished folder is an ordinary Hugging Face model
folder (safetensors, tokenizer) with a model card (``README.md``) and ``unlearn.json`` (every setting, the
training log, the scores before and after).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import HubauditError
from ..metrics.scores import aliases, label, steer_keys, utility_keys
from .losses import METHODS, needs_reference

FORMAT = 3  # 2: controls chosen from what the original knows (``control``, ``target``; ``stop_metric``)
# 3: training text only, windows, clipping, per-token GA; the compute dtype and master weights (``precision``);
# the share of weights changed per step in the log
DEFAULT_LR = 1e-5        # the paper's unlearning learning rate
DEFAULT_SURE_LR = 1e-4   # SURE: larger, on the salient part only
CHECKPOINT = "checkpoints/state.pt"
MANIFEST = "unlearn.json"
# What each row of the manifest's "log" holds (one every 10 steps); changed_share: the mean, over the steps since
# the previous row, of the share of the trained weights whose value in the saved dtype the step changed
LOG_COLUMNS = ["step", "forget_loss", "retain_loss", "changed_share"]
# Forget metrics the trainer can steer by, in the order it tries them (all 0-100, higher = more knowledge): the
# scores that declare a ``steer`` rank (hubaudit.metrics.scores)
STOP_METRICS = tuple(steer_keys())
# Utility, in the order tried (the scores that declare a ``utility`` rank); RETAIN_PROB (the retain passages'
# token probability) is the fallback
RETAIN_PROB = "retain_prob"
UTILITY_METRICS = (*utility_keys(), RETAIN_PROB)
RETAIN_PROB_LABEL = "retain passages' token probability"


class UnlearnError(HubauditError, ValueError):
    """Raised for an impossible unlearning request (bad setting, an output folder that is not ours)."""


@dataclass
class UnlearnConfig:
    """Every setting that shapes the unlearned model.

    Attributes:
        method: ``ga``, ``ga_gdr``, ``ga_klr``, ``npo``, ``npo_gdr`` or ``npo_klr``.
        lr: AdamW learning rate, constant (default 1e-5, or 1e-4 with ``sure``).
        steps: at most this many optimizer steps (each: ``batch_size`` forget rows + as many retain rows).
        retain_weight: weight of the retain term (GDR's NLL or KLR's KL).
        beta: NPO's inverse temperature.
        dtype: the weights' dtype (``bfloat16``, ``float32``, ``float16``): what the saved model holds, and,
            without ``master_weights``, the values the weights hold while training (rounded to it after every
            step when they are computed in float32).
        compute_dtype: ``auto`` (``dtype`` where the device computes it natively, else float32 holding
            ``dtype`` values), ``float32``, or ``dtype`` itself (pure 16-bit even where it is emulated).
        master_weights: ``float32``: train float32 weights (no rounding while training; float32 compute) and
            save them in ``dtype``; None (default): the weights hold ``dtype`` values throughout.
        sure: train only the salient part (SURE); ``threshold`` is the saliency percentile,
            ``saliency`` the unit (``module`` or ``row``), ``scope`` the candidates (``linear``: the
            quantized linear layers; ``all``: every weight matrix).
        eval_every: measure forgetting and utility every this many steps (0: never).
        utility_floor: stop, and go back to the last state above it, when utility falls below this
            fraction of the original's (None: no floor).
        stop_at: stop once the forget score is at most this percentage of the original's (None: run
            all ``steps``).
        stop_metric: the forget metric to steer by (one of ``STOP_METRICS``); None: the first the original
            knows. The original must score at least ``MIN_ORIGINAL`` points above chance on it.
        checkpoint_every: save a resumable checkpoint every this many steps.
        max_length: training rows are windows of at most this many tokens (the paper's code: 2048).
        max_grad_norm: clip the gradient to this global L2 norm before every step (None: no clipping).
    """

    method: str = "npo_klr"
    lr: float | None = None
    steps: int = 300
    batch_size: int = 8
    retain_weight: float = 1.0
    beta: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    dtype: str = "bfloat16"
    compute_dtype: str = "auto"
    master_weights: str | None = None
    sure: bool = False
    threshold: float = 90.0
    saliency: str = "module"
    scope: str = "linear"
    eval_every: int = 25
    utility_floor: float | None = 0.9
    stop_at: float | None = None
    stop_metric: str | None = None
    checkpoint_every: int = 50
    seed: int = 0
    max_length: int = 2048
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.lr is None:
            self.lr = DEFAULT_SURE_LR if self.sure else DEFAULT_LR
        if self.stop_metric is not None:
            name = self.stop_metric.strip().lower()
            self.stop_metric = aliases().get(name, name)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UnlearnError(f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.saliency not in ("module", "row"):
            raise UnlearnError(f"--saliency must be module or row, got {self.saliency!r}")
        if self.scope not in ("linear", "all"):
            raise UnlearnError(f"--scope must be linear or all, got {self.scope!r}")
        if not 0 <= self.threshold < 100:
            raise UnlearnError(f"--threshold is a saliency percentile in [0, 100), got {self.threshold:g}")
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise UnlearnError(f"--dtype must be bfloat16, float32 or float16, got {self.dtype!r}")
        if self.compute_dtype not in ("auto", "float32", self.dtype):
            raise UnlearnError(f"--compute-dtype must be auto, float32 or the weights' --dtype ({self.dtype}), got "
                               f"{self.compute_dtype!r}")
        if self.master_weights not in (None, "float32"):
            raise UnlearnError(f"--master-weights must be float32 (or not given), got {self.master_weights!r}")
        if self.master_weights and self.compute_dtype not in ("auto", "float32"):
            raise UnlearnError(f"--master-weights float32 computes in float32; drop --compute-dtype {self.compute_dtype}")
        for name in ("steps", "batch_size", "checkpoint_every", "max_length"):
            if getattr(self, name) < 1:
                raise UnlearnError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise UnlearnError(f"--eval-every must be 0 or more, got {self.eval_every}")
        if not self.lr > 0:
            raise UnlearnError(f"--lr must be positive, got {self.lr:g}")
        if self.beta <= 0:
            raise UnlearnError(f"--beta must be positive, got {self.beta:g}")
        if self.max_length < 8:
            raise UnlearnError(f"--max-length must be at least 8 tokens, got {self.max_length}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise UnlearnError(f"--max-grad-norm must be positive (0 on the command line: no clipping), got {self.max_grad_norm:g}")
        if self.utility_floor is not None and not 0 <= self.utility_floor <= 1:
            raise UnlearnError(f"--utility-floor is a fraction of the original's utility in [0, 1], got {self.utility_floor:g}")
        if self.stop_at is not None and not 0 <= self.stop_at <= 100:
            raise UnlearnError(f"--stop-at is a percentage of the original's forget score in [0, 100], got {self.stop_at:g}")
        if self.stop_metric is not None and self.stop_metric not in STOP_METRICS:
            raise UnlearnError(f"--stop-metric must be one of {', '.join(STOP_METRICS)}, got {self.stop_metric!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class UnlearnResult:
    """What a run produced. ``status`` is ``finished`` or ``interrupted`` (resumable)."""

    out: Path
    status: str
    steps: int
    stop_reason: str | None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    audit: Any = None


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def training_precision(cfg: UnlearnConfig, device: str):
    """The :class:`hubaudit.modeling.Precision` a run trains in on ``device``: float32 with
    ``master_weights``, else :func:`hubaudit.modeling.choose_precision` for ``cfg.dtype`` weights."""
    from ..modeling import Precision, choose_precision

    if cfg.master_weights:
        return Precision("float32", "float32", f"float32 master weights (--master-weights), saved as {cfg.dtype}")
    return choose_precision(device, cfg.dtype, cfg.compute_dtype)


def _key(cfg: UnlearnConfig, model_id: str, forget_hash: str, compute: str) -> str:
    blob = json.dumps({"format": FORMAT, "config": cfg.to_json(), "model": model_id, "forget": forget_hash,
                       "compute": compute}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _label(metric: str) -> str:
    return RETAIN_PROB_LABEL if metric == RETAIN_PROB else label(metric)


def _supports(fs, metric: str) -> bool:
    if metric == RETAIN_PROB:
        from .data import retain_prob_texts

        return bool(retain_prob_texts(fs))
    from ..metrics import METRICS

    return all(getattr(fs, p) for p in METRICS.get(metric).needs)


def chance_level(fs, metric: str) -> float:
    """What a model that knows nothing scores: 0 for ROUGE-based metrics and the retain probability, the mean
    of 100 / number of choices for multiple-choice accuracy (25 for four choices)."""
    items = {"wmdp_acc": fs.mcq, "mmlu_acc": fs.mcq_retain}.get(metric)
    if not items:
        return 0.0
    return sum(100.0 / max(1, len(x.choices)) for x in items) / len(items)


def _report_metrics(fs) -> list[str]:
    """What the trainer measures before and after: every forget metric it can steer by and every utility
    metric, where the set has their parts."""
    return [m for m in (*STOP_METRICS, *UTILITY_METRICS) if _supports(fs, m)]


def choose_controls(fs, before: dict[str, float], stop_metric: str | None = None) -> dict[str, Any]:
    """The forget metric to steer by and the utility metric to keep, from the original's scores ``before``.

    A metric "the original knows" scores at least ``MIN_ORIGINAL`` (the audit's, 10) points above chance.
    Forgetting: ``stop_metric`` if given, else the first of ``STOP_METRICS`` the original knows. Utility: the
    first of ``UTILITY_METRICS`` the set has and the original knows (``retain_prob`` needs only retain
    passages); None when the set has no retain part.

    Returns:
        ``{"forget_metric", "forget_chance", "forget_why", "utility_metric", "utility_chance", "utility_why",
        "skipped": {metric: reason}}``.

    Raises:
        UnlearnError: the original knows none of the forget metrics (or not the one asked for).
    """
    from ..verdict import MIN_ORIGINAL, knows as knows_above_chance

    def knows(m):
        return knows_above_chance(before.get(m), chance_level(fs, m))

    def score(m):
        c = chance_level(fs, m)
        return f"{before[m]:.1f}" + (f" (chance {c:.0f})" if c else "")

    supported = [m for m in STOP_METRICS if m in before]
    skipped = {m: f"the original scores {score(m)}, less than {MIN_ORIGINAL:g} points above chance: it cannot show "
                  "forgetting" for m in supported if not knows(m)}
    known = [m for m in supported if knows(m)]
    if stop_metric is not None:
        if stop_metric not in supported:
            raise UnlearnError(f"--stop-metric {stop_metric}: forget set '{fs.name}' has no part for it; choose one of "
                               f"{', '.join(supported) or 'none (the set has no forget metric)'}")
        if stop_metric not in known:
            raise UnlearnError(f"--stop-metric {stop_metric}: {skipped[stop_metric]}; choose one the original knows: "
                               f"{', '.join(f'{m} ({before[m]:.1f})' for m in known) or 'none'}")
        forget, why = stop_metric, f"asked for (--stop-metric); the original scores {score(stop_metric)}"
    elif known:
        forget = known[0]
        why = (f"the first of {', '.join(supported)} the original knows: it scores {score(forget)}" if len(supported) > 1
               else f"the set's only forget metric; the original scores {score(forget)}")
    elif supported:
        raise UnlearnError(f"the original shows no knowledge of forget set '{fs.name}': "
                           + "; ".join(f"{m} {score(m)}" for m in supported)
                           + f" (less than {MIN_ORIGINAL:g} points above chance), so no forgetting can be measured; "
                           "check that --forget is the set this model learned")
    else:
        raise UnlearnError(f"forget set '{fs.name}' has none of verbmem/forget, knowmem/forget_qa, tofu/forget, "
                           "mcq/forget: nothing to measure forgetting with")
    utility, uwhy = None, ("the forget set has no retain part (knowmem/retain_qa, tofu/retain, mcq/retain or "
                           "privleak/retain): no utility floor")
    for m in UTILITY_METRICS:
        if m not in before:
            continue
        if m == RETAIN_PROB or knows(m):
            utility = m
            uwhy = f"the original scores {score(m)}"
            break
        skipped[m] = f"the original scores {score(m)}, less than {MIN_ORIGINAL:g} points above chance: no utility signal"
        uwhy = ("the original knows none of the set's retain metrics and the set has no retain passages "
                "(privleak/retain): no utility floor")
    return {"forget_metric": forget, "forget_chance": chance_level(fs, forget), "forget_why": why,
            "utility_metric": utility, "utility_chance": chance_level(fs, utility) if utility else 0.0,
            "utility_why": uwhy, "skipped": skipped}


def describe_precision(prec: dict[str, Any], saved: str) -> str:
    """How the weights were trained, in one line, for the terminal and the card."""
    w, c = prec["weights"], prec["compute"]
    if w == "float32" and saved != "float32":
        how = f"float32 master weights, float32 compute, saved as {saved}"
    elif w == c:
        how = f"pure {w} (weights and compute)"
    else:
        how = f"{w} weights (stored in {c}, rounded to {w} after every step), {c} compute"
    return f"precision: {how}; {prec['reason']}"


def describe_controls(control: dict[str, Any], stop_at: float | None, utility_floor: float | None) -> str:
    """The controls in one line, for the terminal and the card."""
    f, u = control["forget_metric"], control["utility_metric"]
    text = f"steering by {_label(f)} ({control['forget_why']})"
    if stop_at is not None:
        text += f", target <= {stop_at:g}% of the original's"
    if u is None:
        text += f"; {control['utility_why']}"
    else:
        text += (f"; utility: {_label(u)} ({control['utility_why']})"
                 + (f", floor {utility_floor:g} x the original's" if utility_floor is not None else ", no floor"))
    if control["skipped"]:
        text += "; not used: " + "; ".join(f"{_label(m)}: {r}" for m, r in control["skipped"].items())
    return text


def retain_prob_items(model, tok, fs) -> list[float]:
    """Per retain passage no run trains on (``privleak/retain``, :func:`.data.retain_prob_texts`), 100 x
    exp(mean token log-probability): the utility the trainer falls back on when the set has no retain QA or
    multiple choice."""
    from ..metrics.runner import LMRunner
    from ..metrics.tofu import mean_prob
    from .data import retain_prob_texts

    lps, _ = LMRunner(model, tok).token_logprobs(retain_prob_texts(fs))
    return [100.0 * mean_prob(lp) for lp in lps]


def measure_metrics(model, tok, fs, names: list[str], device: str, digits: int = 4) -> dict[str, float]:
    """hubaudit's metrics on the current weights (a float32 copy on CPU, as the audit computes), rounded
    to ``digits``; the model's train/eval mode is left as it was. ``names`` may include ``retain_prob``.
    Also the demo world's stop criterion."""
    import torch

    from ..metrics import evaluate

    m = model
    if device == "cpu" and next(model.parameters()).dtype != torch.float32:
        m = copy.deepcopy(model).float()
    was = m.training
    m.eval()
    try:
        with torch.no_grad():
            real = [n for n in names if n != RETAIN_PROB]
            res = {k: float(v.value) for k, v in evaluate(m, tok, fs, real).items()} if real else {}
            if RETAIN_PROB in names:
                items = retain_prob_items(m, tok, fs)
                res[RETAIN_PROB] = sum(items) / len(items)
    finally:
        m.train(was)
    return {k: round(res[k], digits) for k in names}


def _atomic_save(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_out(out: Path, fresh: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UnlearnError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not ((out / MANIFEST).exists() or (out / "checkpoints").exists()):
        raise UnlearnError(f"--out {out} is not empty and holds no hubaudit unlearn run; choose a new or empty folder")
    if fresh and (out / "checkpoints").exists():
        shutil.rmtree(out / "checkpoints")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnlearnError(f"cannot create --out {out} ({e.strerror or e})") from None


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------


def unlearn(model, forget="synthetic", out=None, *, config: UnlearnConfig | None = None, fresh: bool = False,
            device: str = "auto", token: str | None = None, progress: bool = True, audit: bool = False,
            audit_specs="rtn:4,bnb:nf4,gguf:Q4_0", audit_store=None, max_steps_this_run: int | None = None,
            **settings) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` and save the result as a Hugging Face model folder in ``out``.

    Args:
        model: the original model: a local folder or a Hub id ``org/name[@revision]``.
        forget: a forget set (built-in name, MUSE-layout folder, Hub dataset, or a ForgetSet).
        out: the output folder (default ``hubaudit-unlearn/<model name>-<method>[-sure]``).
        config: an :class:`UnlearnConfig`; or give its fields as keyword arguments (``method="npo_klr"``,
            ``sure=True``, ``threshold=90``, ...).
        fresh: discard a checkpoint or a finished run in ``out`` and start over.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: tqdm progress bars.
        audit: after training, audit ``out`` against ``model`` with ``audit_specs``; the report goes to
            ``out/audit/``.
        max_steps_this_run: stop (resumably) after this many steps in this call: a checkpoint is written
            and ``status`` is ``interrupted``. For tests and time-sliced jobs.

    Returns:
        An :class:`UnlearnResult`. When ``out`` already holds a finished run with the same settings, model
        and forget set, that run is returned without training.

    Raises:
        HubauditError: a bad setting, model or forget set, or an output folder that is not ours.
    """
    import torch

    from ..audit import open_model
    from ..forget import load_forget_set
    from ..modeling import ChangeCounter, resolve_device, round_weights_
    from ..trainrows import pad_batch
    from .data import build_rows, training_split
    from .losses import forget_term, retain_term

    if config is None:
        names = {f.name for f in fields(UnlearnConfig)}
        bad = sorted(set(settings) - names)
        if bad:
            raise UnlearnError(f"unknown unlearning setting(s) {', '.join(bad)}")
        config = UnlearnConfig(**settings)
    elif settings:
        raise UnlearnError("give either config= or settings as keyword arguments, not both")
    cfg = config
    cfg.validate()

    prec = training_precision(cfg, resolve_device(device))
    src, _ = open_model(model, token=token, device=device, dtype=prec.compute)
    fs = load_forget_set(forget)
    split = training_split(fs)  # refuses a set with no forget text before the weights are loaded
    name = Path(str(model).rstrip("/").partition("@")[0]).name or "model"
    out = Path(out) if out is not None else Path("hubaudit-unlearn") / f"{name}-{cfg.method}{'-sure' if cfg.sure else ''}"
    _check_out(out, fresh)
    if cfg.stop_metric is not None and not _supports(fs, cfg.stop_metric):
        raise UnlearnError(f"--stop-metric {cfg.stop_metric}: forget set '{fs.name}' has no part for it; choose one of "
                           f"{', '.join(m for m in STOP_METRICS if _supports(fs, m)) or 'none'}")
    if not any(_supports(fs, m) for m in STOP_METRICS):
        raise UnlearnError(f"forget set '{fs.name}' has none of verbmem/forget, knowmem/forget_qa, tofu/forget, "
                           "mcq/forget: nothing to measure forgetting with")
    key = _key(cfg, src.identity, fs.training_hash(), prec.compute)

    man_path = out / MANIFEST
    if man_path.is_file() and not fresh:
        try:
            man = json.loads(man_path.read_text())
        except ValueError:
            man = {}
        if man.get("key") == key and man.get("status") == "finished" and (out / "config.json").is_file():
            res = UnlearnResult(out, "finished", man["steps"], man.get("stop_reason"), man.get("before", {}),
                                man.get("after", {}), man)
            if audit:
                res.audit = _audit(out, model, fs, audit_specs, audit_store, device, token, progress)
            return res
        if man.get("status") == "finished" and man.get("key") != key and not (out / CHECKPOINT).is_file():
            raise UnlearnError(f"{out} holds a finished run with other settings, model or forget set; pass --fresh to "
                               "replace it, or choose another --out")
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if ckpt_path.is_file():
        import pickle

        try:  # weights_only: a file in the output folder is never allowed to run code
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
            raise UnlearnError(f"the checkpoint {ckpt_path} cannot be read as plain tensors and numbers "
                               f"({str(e).splitlines()[0][:160]}); pass --fresh to start over") from None
        if not isinstance(ckpt, dict) or ckpt.get("key") != key:
            raise UnlearnError(f"{out} holds an unfinished run with other settings, model or forget set; run the same "
                               "command again to resume it, or pass --fresh to start over")

    dev = src.device
    tok = src.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    net = src.load()
    if prec.emulated:  # 16-bit values in float32 storage (exact for a 16-bit checkpoint)
        round_weights_(net, prec.weights)
    ref = None
    if needs_reference(cfg.method):
        ref = src.load()
        if prec.emulated:
            round_weights_(ref, prec.weights)
        for p in ref.parameters():
            p.requires_grad_(False)
    forget_rows, retain_rows = build_rows(fs, tok, needs_retain=cfg.method.endswith(("_gdr", "_klr")),
                                          max_length=cfg.max_length, split=split)
    training_data = {"forget": split.forget_source, "forget_rows": len(forget_rows),
                     "retain": split.retain_source if retain_rows is not None else None,
                     "retain_rows": len(retain_rows) if retain_rows is not None else 0, "max_length": cfg.max_length}
    pad = tok.pad_token_id

    def batch(rows):
        return tuple(t.to(dev) for t in pad_batch(rows, pad))

    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()

    # SURE: the saliency mask, from the forget-loss gradient at the original weights
    masked = None
    mask_info = None
    if cfg.sure:
        from .sure import MaskedParams, SaliencyMask, build_mask, forget_gradients, saliency

        t = time.perf_counter()
        if ckpt is not None:
            mask = SaliencyMask(**ckpt["mask"])
        else:
            rows = forget_rows.epoch(random.Random(cfg.seed + 7))
            grads = forget_gradients(net, ref, (batch(rows[i:i + cfg.batch_size]) for i in range(0, len(rows), cfg.batch_size)),
                                     cfg.method, cfg.beta, cfg.scope)
            mask = build_mask(saliency(grads, cfg.saliency), cfg.threshold, cfg.saliency)
            del grads
        masked = MaskedParams(net, mask)
        params = masked.params
        mask_info = mask.summary(net)
        mask_info["seconds"] = round(time.perf_counter() - t, 2)
    else:
        params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # the share of the trained weights whose value in the saved dtype a step changed
    counter = ChangeCounter(params, cfg.dtype)

    rng = random.Random(cfg.seed)
    st: dict[str, Any] = {"step": 0, "fq": [], "rq": [], "log": [], "evals": [], "good_step": 0, "stop_reason": None,
                          "before": None, "orig": None, "control": None, "train_s": 0.0,
                          "changed": [0, 0], "changed_total": [0, 0]}  # [elements changed, steps]
    good = None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        st = ckpt["state"]
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        good = ckpt.get("good")
    else:
        st["before"] = measure_metrics(net, tok, fs, _report_metrics(fs), dev)
        st["control"] = choose_controls(fs, st["before"], cfg.stop_metric)
        st["orig"] = {"forget": st["before"][st["control"]["forget_metric"]],
                      "utility": st["before"][st["control"]["utility_metric"]] if st["control"]["utility_metric"] else None}
    control = st["control"]
    forget_metric, utility_metric = control["forget_metric"], control["utility_metric"]
    if progress:
        import sys

        print(f"hubaudit unlearn: {describe_controls(control, cfg.stop_at, cfg.utility_floor)}", file=sys.stderr, flush=True)
        print(f"hubaudit unlearn: training on {training_data['forget']} -> {training_data['forget_rows']} rows"
              + (f"; retain: {training_data['retain']} -> {training_data['retain_rows']} rows" if retain_rows is not None else "")
              + f" (windows of at most {cfg.max_length} tokens)", file=sys.stderr, flush=True)
        print(f"hubaudit unlearn: {describe_precision(prec.to_json(), cfg.dtype)}", file=sys.stderr, flush=True)

    def save_ckpt():
        _atomic_save({"key": key, "model": net.state_dict(), "optimizer": opt.state_dict(), "state": st,
                      "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "good": good,
                      "mask": None if masked is None else {
                          "level": masked.mask.level, "threshold": masked.mask.threshold, "cutoff": masked.mask.cutoff,
                          "rows": {n: r.clone() for n, r in masked.mask.rows.items()},
                          "n_units": masked.mask.n_units, "n_selected": masked.mask.n_selected}},
                     ckpt_path)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=st["step"], desc=f"unlearn {cfg.method}{' +SURE' if cfg.sure else ''}",
               disable=not progress, leave=False)
    net.train()
    bs = cfg.batch_size
    ran = 0
    t_run = time.perf_counter()
    interrupted = False
    # Ctrl-C: finish the step in flight, checkpoint at the step boundary, then raise KeyboardInterrupt
    # (a second Ctrl-C stops at once, without a checkpoint: the last periodic one is kept)
    sigint = {"hit": False, "hard": False}

    def on_sigint(*_):
        if sigint["hit"]:
            sigint["hard"] = True
            raise KeyboardInterrupt
        sigint["hit"] = True

    # Our handler for the run, whatever Python-level handler was there (another library may have set
    # its own), and that one back afterwards; an explicitly ignored SIGINT stays ignored.
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.getsignal(signal.SIGINT)
        if old_handler in (signal.SIG_IGN, None):
            old_handler = None
        else:
            signal.signal(signal.SIGINT, on_sigint)
    try:
        while st["step"] < cfg.steps and st["stop_reason"] is None:
            if sigint["hit"]:
                raise KeyboardInterrupt
            if max_steps_this_run is not None and ran >= max_steps_this_run:
                interrupted = True
                break
            if len(st["fq"]) < bs:
                st["fq"] += forget_rows.epoch(rng)
            fb, st["fq"] = st["fq"][:bs], st["fq"][bs:]
            rb = None
            if retain_rows is not None:
                if len(st["rq"]) < bs:
                    st["rq"] += retain_rows.epoch(rng)
                rb, st["rq"] = st["rq"][:bs], st["rq"][bs:]
            f_loss = forget_term(cfg.method, net, ref, batch(fb), cfg.beta)
            r_loss = retain_term(cfg.method, net, ref, batch(rb)) if rb is not None else None
            loss = f_loss if r_loss is None else f_loss + cfg.retain_weight * r_loss
            loss.backward()
            if cfg.max_grad_norm is not None:  # as the Hugging Face Trainer the paper's code runs on (1.0)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            counter.snapshot()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if prec.emulated:
                round_weights_(params, prec.weights)
            if masked is not None:
                masked.restore()
            changed = counter.changed()
            for k in ("changed", "changed_total"):
                st[k][0] += changed
                st[k][1] += 1
            st["step"] += 1
            ran += 1
            step = st["step"]
            bar.update(1)
            if step % 10 == 0 or step == cfg.steps:
                share = st["changed"][0] / max(1, st["changed"][1] * counter.total)  # mean per step since the last
                st["changed"] = [0, 0]
                rec = [step, round(f_loss.item(), 4), None if r_loss is None else round(r_loss.item(), 4), round(share, 6)]
                st["log"].append(rec)
                bar.set_postfix(forget_loss=f"{rec[1]:.3f}", retain_loss="-" if rec[2] is None else f"{rec[2]:.3f}",
                                changed=f"{100 * share:.2f}%")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                good = _control(net, tok, fs, dev, cfg, st, forget_metric, utility_metric, good, step)
                if st["stop_reason"]:
                    bar.set_postfix_str(st["stop_reason"])
            if step % cfg.checkpoint_every == 0 and step < cfg.steps and st["stop_reason"] is None:
                st["train_s"] += time.perf_counter() - t_run
                t_run = time.perf_counter()
                save_ckpt()
    except KeyboardInterrupt:
        st["train_s"] += time.perf_counter() - t_run
        bar.close()
        if sigint["hit"] and not sigint["hard"]:  # at a step boundary: the state is consistent
            save_ckpt()
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    st["train_s"] += time.perf_counter() - t_run
    bar.close()
    if interrupted:
        save_ckpt()
        return UnlearnResult(out, "interrupted", st["step"], None, st["before"] or {}, {}, {})

    if masked is not None:
        masked.remove()
    if st["stop_reason"] and st["stop_reason"].startswith("utility"):
        net.load_state_dict(good["model"] if good is not None else src.load().state_dict())
    round_weights_(net, cfg.dtype)  # what is saved (master weights; an original that was not in dtype)
    net.eval()
    after = measure_metrics(net, tok, fs, list(st["before"]), dev)
    target = _target(cfg, control, st["orig"], after, st["step"])
    man = {
        "format": FORMAT, "key": key, "status": "finished", "hubaudit_version": __version__,
        "model": str(model), "model_identity": src.identity, "forget": {"name": fs.name, "source": fs.source,
                                                                        "hash": fs.content_hash()},
        "training_data": training_data,
        "config": cfg.to_json(), "steps": st["good_step"] if (st["stop_reason"] or "").startswith("utility") else st["step"],
        "steps_run": st["step"], "stop_reason": st["stop_reason"], "forget_metric": forget_metric,
        "utility_metric": utility_metric, "control": control, "target": target, "before": st["before"], "after": after,
        "utility_loss": {m: round(st["before"][m] - after[m], 4) for m in after if m in UTILITY_METRICS},
        "forgetting": {m: round(st["before"][m] - after[m], 4) for m in after if m in STOP_METRICS},
        "sure_mask": mask_info, "evals": st["evals"], "log": st["log"], "log_columns": LOG_COLUMNS,
        "precision": {**prec.to_json(), "master_weights": cfg.master_weights, "saved": cfg.dtype},
        "changed_share": {"of": f"the {counter.total} elements of the trained parameters, their values in {cfg.dtype}",
                          "mean_per_step": round(st["changed_total"][0] / max(1, st["changed_total"][1] * counter.total), 6),
                          "steps": st["changed_total"][1]},
        "train_seconds": round(st["train_s"], 2), "total_seconds": round(time.perf_counter() - t_start, 2),
        "device": dev, "torch": torch.__version__,
    }
    _save_model(net, tok, out, cfg.dtype)
    (out / "README.md").write_text(render_card(man), encoding="utf-8")
    man_path.write_text(json.dumps(man, indent=1) + "\n")
    if (out / "checkpoints").exists():
        shutil.rmtree(out / "checkpoints")
    res = UnlearnResult(out, "finished", man["steps"], st["stop_reason"], st["before"], after, man)
    net = ref = good = None  # free the training copies before the audit loads its own
    if audit:
        res.audit = _audit(out, model, fs, audit_specs, audit_store, device, token, progress)
    return res


def _limit(orig: float, chance: float, fraction: float) -> float:
    """``fraction`` of the original's score above chance, as a score."""
    return chance + fraction * (orig - chance)


def _control(net, tok, fs, dev, cfg, st, forget_metric, utility_metric, good, step):
    """One evaluation: record it, keep the last state above the utility floor, decide whether to stop."""
    names = [forget_metric] + ([utility_metric] if utility_metric else [])
    s = measure_metrics(net, tok, fs, names, dev)
    f, u = s[forget_metric], s.get(utility_metric) if utility_metric else None
    orig, control = st["orig"], st["control"]
    rec = {"step": step, forget_metric: f}
    if u is not None:
        rec[utility_metric] = u
    st["evals"].append(rec)
    floor = cfg.utility_floor
    if floor is not None and u is not None and u < _limit(orig["utility"], control["utility_chance"], floor):
        st["stop_reason"] = (f"utility floor: {utility_metric} {u:.1f} < {floor:g} x {orig['utility']:.1f} at step "
                             f"{step}; back to step {st['good_step']}")
        return good
    if floor is not None and u is not None:
        good = {"model": {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}}
        st["good_step"] = step
    if cfg.stop_at is not None and f <= _limit(orig["forget"], control["forget_chance"], cfg.stop_at / 100.0):
        st["stop_reason"] = f"forget target: {forget_metric} {f:.1f} <= {cfg.stop_at:g}% of {orig['forget']:.1f} at step {step}"
    return good


def _target(cfg, control, orig, after, steps_run) -> dict[str, Any] | None:
    """Whether the finished model reached the forgetting target (None without ``stop_at``), in numbers and
    in words."""
    if cfg.stop_at is None:
        return None
    m = control["forget_metric"]
    limit = _limit(orig["forget"], control["forget_chance"], cfg.stop_at / 100.0)
    reached = after[m] <= limit
    words = (f"{'reached' if reached else 'NOT reached'}: {_label(m)} {orig['forget']:.1f} -> {after[m]:.1f}, target "
             f"<= {limit:.1f} ({cfg.stop_at:g}% of the original's)"
             + ("" if reached else f" after {steps_run} of {cfg.steps} steps"))
    return {"metric": m, "stop_at": cfg.stop_at, "limit": round(limit, 4), "original": orig["forget"],
            "reached_value": after[m], "reached": reached, "summary": words}


def _save_model(net, tok, out: Path, dtype: str) -> None:
    import torch

    net = net.to(getattr(torch, dtype))
    net.config.dtype = dtype
    net.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _audit(out: Path, model, fs, specs, store, device, token, progress):
    from ..audit import audit

    return audit(out, reference=model, forget=fs, specs=specs, out=out / "audit", store=store, device=device,
                 token=token, progress=progress)


def render_card(man: dict) -> str:
    """The model card of an unlearned model: YAML metadata and how it was made."""
    c = man["config"]
    method = c["method"] + (" + SURE" if c["sure"] else "")
    yaml = ["---", f"base_model: {man['model']}", "tags:", "- unlearning", "- hubaudit", "---", ""]
    lines = [f"# {method}: {man['forget']['name']} unlearned from {man['model']}", ""]
    lines.append(
        f"Made with `hubaudit unlearn` (hubaudit {man['hubaudit_version']}) from `{man['model']}` on the forget set "
        f"`{man['forget']['name']}` (`{man['forget']['source']}`, content hash {man['forget']['hash'][:12]}). "
        f"Method {method}: "
        + {"ga": "gradient ascent on the forget corpus", "npo": "negative preference optimization (NPO) on the forget corpus"}[c["method"].split("_")[0]]
        + {"gdr": ", plus gradient descent on the retain corpus", "klr": ", plus the KL divergence to the original model "
           "on the retain corpus"}.get(c["method"].partition("_")[2], "")
        + (f"; SURE: only the {c['saliency']}s whose forget-loss gradient norm at the original weights is above the "
           f"{c['threshold']:g}th percentile were trained ({man['sure_mask']['selected_units']} of "
           f"{man['sure_mask']['units']} {c['saliency']}s, {100 * man['sure_mask']['selected_params_fraction']:.2f}% of the "
           "parameters); everything else is bit for bit the original." if c["sure"] else ".")
    )
    lines.append("")
    lines.append("| setting | value |")
    lines.append("|---|---|")
    for k in ("lr", "steps", "batch_size", "retain_weight", "beta", "dtype", "weight_decay", "max_length",
              "max_grad_norm", "eval_every", "utility_floor", "stop_at", "stop_metric", "seed"):
        lines.append(f"| {k} | {c.get(k)} |")
    if man.get("training_data"):
        td = man["training_data"]
        lines.append(f"| trained on | forget: {td['forget']}, {td['forget_rows']} rows"
                     + (f"; retain: {td['retain']}, {td['retain_rows']} rows" if td.get("retain") else "") + " |")
    if man.get("precision"):
        lines.append(f"| precision | {describe_precision(man['precision'], c['dtype']).removeprefix('precision: ')} |")
    if man.get("changed_share"):
        lines.append(f"| weights changed per step | {100 * man['changed_share']['mean_per_step']:.2f}% on average "
                     f"({man['changed_share']['of']}) |")
    lines.append(f"| optimizer steps taken | {man['steps']} |")
    lines.append(f"| stopped | {man['stop_reason'] or 'after all steps'} |")
    if man.get("control"):
        lines.append(f"| controls | {describe_controls(man['control'], c['stop_at'], c['utility_floor'])} |")
    if man.get("target"):
        lines.append(f"| forgetting target | {man['target']['summary']} |")
    lines.append(f"| training time | {man['train_seconds']:.0f} s on {man['device']} |")
    lines += ["", "Forgetting and utility (hubaudit's metrics, 0-100; full precision):", "",
              "| metric | original | unlearned | change |", "|---|---|---|---|"]
    for m, v in man["before"].items():
        a = man["after"].get(m)
        lines.append(f"| {_label(m)} | {v:.1f} | {a:.1f} | {a - v:+.1f} |" if a is not None else f"| {_label(m)} | {v:.1f} | – | – |")
    lines += ["", "Whether it stays unlearned when quantized: `hubaudit audit THIS_FOLDER --reference "
              f"{man['model']} --forget {man['forget']['source']} --backends rtn:4,bnb:nf4,gguf:Q4_0`.", ""]
    return "\n".join(yaml + lines)
