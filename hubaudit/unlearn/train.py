"""The unlearning trainer behind ``hubaudit unlearn`` and :func:`hubaudit.unlearn.unlearn`.

One run: load the original model (and a frozen copy of it when the method needs a reference), build the
forget and retain rows from the forget set, optionally compute SURE's saliency mask, then train with AdamW
at a constant learning rate in the model's training dtype (bfloat16 by default: updates are applied in
bf16, as the paper's setting does). Every ``eval_every`` steps it measures forgetting (KnowMem forget, or
VerbMem forget when the set has no QA) and utility (KnowMem retain) with hubaudit's own metrics, and
stops:

- on the **utility floor** ("Unlearning with Control", arXiv 2406.09179): when utility falls below
  ``utility_floor`` x the original's, training stops and the model goes back to the last evaluated state
  that was above the floor;
- on the **forget target**: when the forget score reaches ``stop_at`` percent of the original's or less.

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
from .losses import METHODS, needs_reference

FORMAT = 1
DEFAULT_LR = 1e-5        # the paper's unlearning learning rate
DEFAULT_SURE_LR = 1e-4   # SURE: larger, on the salient part only
CHECKPOINT = "checkpoints/state.pt"
MANIFEST = "unlearn.json"


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
        dtype: the weights' dtype while training (``bfloat16``, ``float32``, ``float16``).
        sure: train only the salient part (SURE); ``threshold`` is the saliency percentile,
            ``saliency`` the unit (``module`` or ``row``), ``scope`` the candidates (``linear``: the
            quantized linear layers; ``all``: every weight matrix).
        eval_every: measure forgetting and utility every this many steps (0: never).
        utility_floor: stop, and go back to the last state above it, when utility falls below this
            fraction of the original's (None: no floor).
        stop_at: stop once the forget score is at most this percentage of the original's (None: run
            all ``steps``).
        checkpoint_every: save a resumable checkpoint every this many steps.
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
    sure: bool = False
    threshold: float = 90.0
    saliency: str = "module"
    scope: str = "linear"
    eval_every: int = 25
    utility_floor: float | None = 0.9
    stop_at: float | None = None
    checkpoint_every: int = 50
    seed: int = 0
    max_length: int = 512

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.lr is None:
            self.lr = DEFAULT_SURE_LR if self.sure else DEFAULT_LR

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
        for name in ("steps", "batch_size", "checkpoint_every", "max_length"):
            if getattr(self, name) < 1:
                raise UnlearnError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise UnlearnError(f"--eval-every must be 0 or more, got {self.eval_every}")
        if not self.lr > 0:
            raise UnlearnError(f"--lr must be positive, got {self.lr:g}")
        if self.beta <= 0:
            raise UnlearnError(f"--beta must be positive, got {self.beta:g}")
        if self.utility_floor is not None and not 0 <= self.utility_floor <= 1:
            raise UnlearnError(f"--utility-floor is a fraction of the original's utility in [0, 1], got {self.utility_floor:g}")
        if self.stop_at is not None and not 0 <= self.stop_at <= 100:
            raise UnlearnError(f"--stop-at is a percentage of the original's forget score in [0, 100], got {self.stop_at:g}")

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


def _key(cfg: UnlearnConfig, model_id: str, forget_hash: str) -> str:
    blob = json.dumps({"format": FORMAT, "config": cfg.to_json(), "model": model_id, "forget": forget_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _control_metrics(fs) -> tuple[str, str | None]:
    forget = "knowmem_f" if fs.forget_qa else "verbmem_f" if fs.verbmem else None
    utility = "knowmem_r" if fs.retain_qa else None
    if forget is None:
        raise UnlearnError(f"forget set '{fs.name}' has neither knowmem/forget_qa nor verbmem/forget: nothing to measure "
                           "forgetting with")
    return forget, utility


def _report_metrics(fs) -> list[str]:
    """The memorization metrics the forget set supports (VerbMem f, KnowMem f, KnowMem r)."""
    from ..metrics import METRICS

    return [m for m in ("verbmem_f", "knowmem_f", "knowmem_r") if all(getattr(fs, p) for p in METRICS.get(m).needs)]


def measure_metrics(model, tok, fs, names: list[str], device: str, digits: int = 4) -> dict[str, float]:
    """hubaudit's metrics on the current weights (a float32 copy on CPU, as the audit computes), rounded
    to ``digits``; the model's train/eval mode is left as it was. Also the demo world's stop criterion."""
    import torch

    from ..metrics import evaluate

    m = model
    if device == "cpu" and next(model.parameters()).dtype != torch.float32:
        m = copy.deepcopy(model).float()
    was = m.training
    m.eval()
    try:
        with torch.no_grad():
            res = evaluate(m, tok, fs, names)
    finally:
        m.train(was)
    return {k: round(float(v.value), digits) for k, v in res.items()}


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
    from ..demo.world import _batch
    from .data import build_rows
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

    src, _ = open_model(model, token=token, device=device, dtype=cfg.dtype)
    fs = load_forget_set(forget)
    name = Path(str(model).rstrip("/").partition("@")[0]).name or "model"
    out = Path(out) if out is not None else Path("hubaudit-unlearn") / f"{name}-{cfg.method}{'-sure' if cfg.sure else ''}"
    _check_out(out, fresh)
    forget_metric, utility_metric = _control_metrics(fs)
    key = _key(cfg, src.identity, fs.content_hash())

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
    ref = None
    if needs_reference(cfg.method):
        ref = src.load()
        for p in ref.parameters():
            p.requires_grad_(False)
    forget_rows, retain_rows = build_rows(fs, tok, needs_retain=cfg.method.endswith(("_gdr", "_klr")),
                                          max_length=cfg.max_length)
    pad = tok.pad_token_id

    def batch(rows):
        return tuple(t.to(dev) for t in _batch(rows, pad))

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

    rng = random.Random(cfg.seed)
    st: dict[str, Any] = {"step": 0, "fq": [], "rq": [], "log": [], "evals": [], "good_step": 0, "stop_reason": None,
                          "before": None, "orig": None, "train_s": 0.0}
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
        st["orig"] = {"forget": st["before"][forget_metric],
                      "utility": st["before"].get(utility_metric) if utility_metric else None}

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
            opt.step()
            opt.zero_grad(set_to_none=True)
            if masked is not None:
                masked.restore()
            st["step"] += 1
            ran += 1
            step = st["step"]
            bar.update(1)
            if step % 10 == 0 or step == cfg.steps:
                rec = [step, round(f_loss.item(), 4), None if r_loss is None else round(r_loss.item(), 4)]
                st["log"].append(rec)
                bar.set_postfix(forget=f"{rec[1]:.3f}", retain="-" if rec[2] is None else f"{rec[2]:.3f}")
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
    net.eval()
    after = measure_metrics(net, tok, fs, list(st["before"]), dev)
    man = {
        "format": FORMAT, "key": key, "status": "finished", "hubaudit_version": __version__,
        "model": str(model), "model_identity": src.identity, "forget": {"name": fs.name, "source": fs.source,
                                                                        "hash": fs.content_hash()},
        "config": cfg.to_json(), "steps": st["good_step"] if (st["stop_reason"] or "").startswith("utility") else st["step"],
        "steps_run": st["step"], "stop_reason": st["stop_reason"], "forget_metric": forget_metric,
        "utility_metric": utility_metric, "before": st["before"], "after": after,
        "utility_loss": {m: round(st["before"][m] - after[m], 4) for m in after if m.endswith("_r")},
        "forgetting": {m: round(st["before"][m] - after[m], 4) for m in after if m.endswith("_f")},
        "sure_mask": mask_info, "evals": st["evals"], "log": st["log"],
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


def _control(net, tok, fs, dev, cfg, st, forget_metric, utility_metric, good, step):
    """One evaluation: record it, keep the last state above the utility floor, decide whether to stop."""
    names = [forget_metric] + ([utility_metric] if utility_metric else [])
    s = measure_metrics(net, tok, fs, names, dev)
    f, u = s[forget_metric], s.get(utility_metric) if utility_metric else None
    orig = st["orig"]
    rec = {"step": step, forget_metric: f}
    if u is not None:
        rec[utility_metric] = u
    st["evals"].append(rec)
    floor = cfg.utility_floor
    if floor is not None and u is not None and orig["utility"] is not None and u < floor * orig["utility"]:
        st["stop_reason"] = (f"utility floor: {utility_metric} {u:.1f} < {floor:g} x {orig['utility']:.1f} at step "
                             f"{step}; back to step {st['good_step']}")
        return good
    if floor is not None and u is not None:
        good = {"model": {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}}
        st["good_step"] = step
    if cfg.stop_at is not None and f <= cfg.stop_at / 100.0 * orig["forget"]:
        st["stop_reason"] = f"forget target: {forget_metric} {f:.1f} <= {cfg.stop_at:g}% of {orig['forget']:.1f} at step {step}"
    return good


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
    for k in ("lr", "steps", "batch_size", "retain_weight", "beta", "dtype", "weight_decay", "eval_every",
              "utility_floor", "stop_at", "seed"):
        lines.append(f"| {k} | {c[k]} |")
    lines.append(f"| optimizer steps taken | {man['steps']} |")
    lines.append(f"| stopped | {man['stop_reason'] or 'after all steps'} |")
    lines.append(f"| training time | {man['train_seconds']:.0f} s on {man['device']} |")
    lines += ["", "Forgetting and utility (hubaudit's MUSE metrics, ROUGE-L F1 x 100; full precision):", "",
              "| metric | original | unlearned | change |", "|---|---|---|---|"]
    for m, v in man["before"].items():
        a = man["after"].get(m)
        lines.append(f"| {m} | {v:.1f} | {a:.1f} | {a - v:+.1f} |" if a is not None else f"| {m} | {v:.1f} | – | – |")
    lines += ["", "Whether it stays unlearned when quantized: `hubaudit audit THIS_FOLDER --reference "
              f"{man['model']} --forget {man['forget']['source']} --backends rtn:4,bnb:nf4,gguf:Q4_0`.", ""]
    return "\n".join(yaml + lines)
