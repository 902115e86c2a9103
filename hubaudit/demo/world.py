"""A tiny, self-contained "unlearning world" to demonstrate and test hubaudit offline, on a CPU.

:func:`build_world` trains, from scratch and in a few minutes on two CPU cores, four small Llama models
on the built-in synthetic forget set (:mod:`hubaudit.demo.synth`):

``target``
    knows the forget and the retain facts (biography passages verbatim, and the answers to MUSE's
    few-shot KnowMem prompt).
``unlearned``
    ``target`` after a "natural" utility-constrained unlearning: gradient ascent on the forget part plus
    gradient descent on the retain part (GA_GDR, or NPO_GDR), small learning rate, AdamW, bfloat16
    weights, as in Zhang et al. (arXiv 2410.16454): pure bf16 where the CPU computes bf16 natively (AMX,
    AVX512-BF16), else bf16 weight values kept in float32, rounded after every optimizer step, with float32
    matmuls (:func:`hubaudit.modeling.choose_precision`). It forgets in full precision; per-tensor 4-bit
    round-to-nearest maps much of it back onto ``target``.
``retain_only``
    negative control: the ``target`` recipe on the retain part only. Never saw the forget facts, so no
    quantizer can bring them back.
``constructed``
    positive control: gradient ascent from ``target`` with every step projected back into ``target``'s
    per-tensor 4-bit RTN bins (and everything RTN does not quantize frozen), so that its RTN-4 model is
    ``target``'s RTN-4 model bit for bit: forgets in full precision, remembers everything in 4 bits.

Every model folder is an ordinary Hugging Face folder (``LlamaForCausalLM``, bfloat16 safetensors, and a
``PreTrainedTokenizerFast`` with bos/eos/pad). Example::

    from hubaudit.demo import build_world
    world = build_world("hubaudit-demo")        # ~6 min the first time, reused afterwards
    print(world.unlearned, world.settings["times_s"])

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..trainrows import Rows as _Rows  # noqa: F401  (the names this module always used)
from ..trainrows import pad_batch as _batch
from ..trainrows import qa_text as _qa_text
from . import synth

MANIFEST = "world.json"
WORLD_FORMAT = 3  # 2: the natural unlearning stops on a forgetting criterion; threads in the settings
# 3: the unlearning's compute dtype (bf16 where native, else float32 with bf16 weight values) in the settings

# --------------------------------------------------------------------------------------------------------
# Settings. Everything that shapes a model is here; the manifest stores it and its hash.
# --------------------------------------------------------------------------------------------------------

_BASE: dict[str, Any] = {
    "tokenizer": {"vocab_size": 1024, "kind": "byte-level BPE, pre-tokens = word + trailing whitespace"},
    "model": {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 704,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
    },
    "train": {  # target and retain_only: float32 training, AdamW, cosine schedule, saved in bfloat16
        "epochs": 60, "batch_size": 16, "lr": 2e-3, "warmup_steps": 30, "weight_decay": 0.0,
        "betas": [0.9, 0.98], "grad_clip": 1.0, "qa_group": [1, 6], "passage_copies": 1,
    },
    "unlearn": {  # natural unlearning: bf16 weights, AdamW, constant lr (see the README's sweep); "compute":
        # bf16 where native, else float32 with the weights rounded to bf16 after every step (world_settings)
        "method": "ga_gdr", "lr": 3e-5, "steps": 1500, "batch_size": 8, "retain_weight": 1.0,
        "npo_beta": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.0, "dtype": "bfloat16",
        # Stop on a forgetting criterion, not at a fixed step: forgetting comes as a cliff whose step
        # differs between machines (float results differ, and training on a cliff amplifies it), so a
        # fixed step leaves one machine's model before the cliff and another's after it. Every
        # ``eval_every`` steps the forget metrics are measured (float32, as the audit computes them); the
        # run stops once each has fallen to within ``stop_at`` % of the way from the retain-only model's
        # score (a model that never saw the forget set) to the target's, or after ``steps``.
        "stop_at": 10.0, "eval_every": 10, "stop_metrics": ["knowmem_f", "verbmem_f"],
    },
    "constructed": {  # positive control: projected gradient ascent, same losses
        "method": "ga_gdr", "lr": 1e-3, "steps": 150, "batch_size": 8, "retain_weight": 1.0,
        "bits": 4, "margin": 0.05, "dtype": "bfloat16",
    },
}

_SIZES: dict[str, dict[str, Any]] = {
    "demo": {},
    "tiny": {
        "tokenizer": {"vocab_size": 768},
        "model": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384},
        "train": {"epochs": 30, "lr": 3e-3, "batch_size": 16},
        "unlearn": {"lr": 3e-5, "steps": 800},
        "constructed": {"steps": 60},
    },
}


def default_threads() -> int:
    """Threads a world is built with unless told: two, or one on a one-core machine."""
    import os

    return max(1, min(2, os.cpu_count() or 1))


def world_settings(size: str = "demo", seed: int = 0, threads: int | None = None,
                   compute_dtype: str = "auto") -> dict[str, Any]:
    """The full settings dict for a size (``demo`` or ``tiny``), seed, thread count and compute dtype of
    the unlearning and the constructed control (float results, and so the trained models, depend on
    them). ``compute_dtype``: ``auto`` (bf16 where this CPU computes it natively, else float32 with the
    weights rounded to bf16 after every step; ``HUBAUDIT_NO_NATIVE_HALF=1`` forces float32), ``float32``
    or ``bfloat16``; the dtype it resolves to is in ``settings["unlearn"]["compute"]``."""
    from ..modeling import choose_precision

    if size not in _SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {sorted(_SIZES)}")
    s = json.loads(json.dumps(_BASE))
    for k, v in _SIZES[size].items():
        s[k].update(v)
    for part in ("unlearn", "constructed"):
        try:
            s[part]["compute"] = choose_precision("cpu", s[part]["dtype"], compute_dtype).compute
        except ValueError as e:
            raise ValueError(f"compute dtype: {e}") from None
    s["size"] = size
    s["seed"] = seed
    s["threads"] = threads or default_threads()
    s["format"] = WORLD_FORMAT
    return s


# --------------------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------------------


@dataclass
class World:
    """Paths of a built world. ``settings`` is JSON-able: every hyper-parameter, the phase wall times
    (``times_s``) and a note on the setting."""

    root: Path
    forget_dir: Path
    target: Path
    unlearned: Path
    retain_only: Path
    constructed: Path
    settings: dict = field(default_factory=dict)

    def models(self) -> dict[str, Path]:
        return {"target": self.target, "unlearned": self.unlearned, "retain_only": self.retain_only,
                "constructed": self.constructed}


# --------------------------------------------------------------------------------------------------------
# RTN (the paper's quantizer), from hubaudit.quant.rtn
# --------------------------------------------------------------------------------------------------------


def _rtn_fns():
    """The audit's own RTN quantizer (``hubaudit.quant.rtn``), so the control is built on the exact bins
    the audit rounds to."""
    from ..quant.rtn import rtn_quantize, rtn_step

    return rtn_step, rtn_quantize


def quantized_linear_names(model) -> list[str]:
    """Names of the ``nn.Linear`` modules RTN quantizes (all but ``lm_head``)."""
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"]


def rtn_state(model, bits: int = 4, group_size: int | None = None) -> dict[str, Any]:
    """Per-tensor (or group-wise) RTN of every quantized Linear weight, cast back to the weight dtype."""
    _, rtn_quantize = _rtn_fns()
    mods = dict(model.named_modules())
    return {n: rtn_quantize(mods[n].weight, bits, group_size).to(mods[n].weight.dtype) for n in quantized_linear_names(model)}


# --------------------------------------------------------------------------------------------------------
# Data: tokenizer and training rows
# --------------------------------------------------------------------------------------------------------


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE whose pre-tokens are a word plus its trailing whitespace.

    So every cut right after whitespace (``...Answer: ``, a passage prompt ending in ``". "``) is a
    token boundary: a prompt tokenizes to exactly the ids it has inside the training text. BOS is added
    by the post-processor, as Llama's tokenizer does.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+|\S+\s*"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=512, padding_side="left")


def _seq_nll(model, ids, mask, labels, reduce: str = "mean"):
    """Per-row token NLL, shape [B]: the mean over the row's tokens, or the sum (``reduce="sum"``)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    tgt = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="none")
    nll = nll.view(tgt.shape)
    valid = (tgt != -100).float()
    total = (nll * valid).sum(1)
    return total if reduce == "sum" else total / valid.sum(1).clamp(min=1)


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _new_model(cfg: dict[str, Any], vocab_size: int, tok, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, num_key_value_heads=cfg["num_attention_heads"], rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **cfg,
    )
    return LlamaForCausalLM(config)


def train_lm(model, parts: list[_Rows], cfg: dict[str, Any], seed: int, progress: bool = True, desc: str = "train",
             total_steps: int | None = None) -> dict:
    """Plain causal-LM training on the rows of ``parts`` (float32, AdamW, warmup + cosine).

    ``cfg["epochs"]`` passes over the rows, or exactly ``total_steps`` optimizer steps when given."""
    import torch
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pad = parts[0].tok.pad_token_id
    bs = cfg["batch_size"]
    n_rows = sum(len(p.epoch(random.Random(0))) for p in parts)
    steps_per_epoch = math.ceil(n_rows / bs)
    total = total_steps or steps_per_epoch * cfg["epochs"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    warm = cfg["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))) * 0.95 + 0.05
    )
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step, last = 0, float("nan")
    while step < total:
        rows = [r for p in parts for r in p.epoch(rng)]
        rng.shuffle(rows)
        for b in range(0, len(rows), bs):
            if step >= total:
                break
            ids, mask, labels = _batch(rows[b : b + bs], pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            last = loss.item()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    model.eval()
    return {"steps": step, "final_loss": round(last, 4)}


def _forget_loss(model, ref_model, ids, mask, labels, method: str, beta: float):
    """GA: minus the mean token NLL. NPO (Zhang et al. 2024, as MUSE implements it): with the sequence
    log-likelihood ratio r = log pi(y) - log pi_ref(y) (sums over the row's tokens), (2/beta) *
    softplus(beta * r), which stops pushing once the forget rows are ~1/beta nats less likely."""
    import torch
    import torch.nn.functional as F

    if method.startswith("ga"):
        return -_seq_nll(model, ids, mask, labels).mean()
    if method.startswith("npo"):
        nll = _seq_nll(model, ids, mask, labels, "sum")
        with torch.no_grad():
            ref = _seq_nll(ref_model, ids, mask, labels, "sum")
        return (2.0 / beta) * F.softplus(beta * (ref - nll)).mean()
    raise ValueError(f"unknown unlearning method {method!r}")


def unlearn(model, forget: _Rows, retain: _Rows, cfg: dict[str, Any], seed: int, progress: bool = True,
            desc: str = "unlearn", project=None, ref_model=None, trainable=None, stop=None,
            round_to: str | None = None) -> dict:
    """GA or NPO on ``forget`` plus NLL on ``retain`` (GDR), AdamW with a constant learning rate, in the
    model's own dtype (bf16 weights: updates are applied in bf16). ``round_to`` (``"bfloat16"``): the
    trained weights are rounded to that dtype's values after every optimizer step (float32 weights holding
    bf16 values: an update smaller than half a bf16 step is lost, as in pure bf16). ``project(model)`` runs
    after every optimizer step (the constructed control). ``stop(model, step)``, when given, runs every
    ``cfg["eval_every"]`` steps and ends the run when it returns True."""
    import torch
    from tqdm.auto import tqdm

    from ..modeling import round_weights_

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pad = forget.tok.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad] if trainable is None else trainable
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))),
                            weight_decay=cfg.get("weight_decay", 0.0))
    fq: list[list[int]] = []
    rq: list[list[int]] = []
    bs = cfg["batch_size"]
    model.train()
    bar = tqdm(total=cfg["steps"], desc=desc, disable=not progress, leave=False)
    log = []
    stopped_at = None
    for step in range(cfg["steps"]):
        if len(fq) < bs:
            fq += forget.epoch(rng)
        if len(rq) < bs:
            rq += retain.epoch(rng)
        fb, fq = fq[:bs], fq[bs:]
        rb, rq = rq[:bs], rq[bs:]
        f_loss = _forget_loss(model, ref_model, *_batch(fb, pad), cfg["method"], cfg.get("npo_beta", 0.1))
        r_loss = _seq_nll(model, *_batch(rb, pad)).mean()
        loss = f_loss + cfg["retain_weight"] * r_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if project is not None:
            project(model)
        if round_to is not None:
            round_weights_(params, round_to)
        bar.update(1)
        if step % 10 == 0 or step == cfg["steps"] - 1:
            bar.set_postfix(f=f"{f_loss.item():.2f}", r=f"{r_loss.item():.2f}")
            log.append([step, round(f_loss.item(), 4), round(r_loss.item(), 4)])
        if stop is not None and (step + 1) % cfg["eval_every"] == 0:
            model.eval()
            done = stop(model, step + 1)
            model.train()
            if done:
                stopped_at = step + 1
                break
    bar.close()
    model.eval()
    return {"log": log, "steps": stopped_at or cfg["steps"], "stopped_at": stopped_at}


def forgetting_monitor(target, never_saw, tok, forget_dir: Path, cfg: dict[str, Any]):
    """The natural unlearning's stop criterion. Forgotten means "scores like a model that never saw the
    forget set": each of ``cfg["stop_metrics"]``, measured on a float32 copy of the model (as the audit
    computes them), must fall to within ``stop_at`` % of the gap between ``never_saw`` (the retain-only
    model) and ``target`` above ``never_saw``'s score.

    Returns ``(stop, record)``: the callable for :func:`unlearn`, and a dict with the target's and the
    retain-only model's scores, the thresholds and the trajectory ``[[step, {metric: score}], ...]``."""
    from ..forget import load_forget_set
    from ..unlearn.train import measure_metrics

    fs = load_forget_set(forget_dir)
    names = list(cfg["stop_metrics"])

    def scores(model) -> dict[str, float]:
        return measure_metrics(model, tok, fs, names, "cpu", digits=2)

    top, floor = scores(target), scores(never_saw)
    limit = {n: round(floor[n] + cfg["stop_at"] / 100 * max(0.0, top[n] - floor[n]), 2) for n in names}
    record: dict[str, Any] = {"target": top, "retain_only": floor, "stop_below": limit, "trajectory": []}

    def stop(model, step: int) -> bool:
        now = scores(model)
        record["trajectory"].append([step, now])
        return all(now[n] <= limit[n] for n in names)

    return stop, record


def make_bin_projector(target_model, bits: int = 4, margin: float = 0.05, dtype: str = "bfloat16"):
    """A function that projects a model's quantized Linear weights into ``target_model``'s per-tensor RTN
    bins: afterwards ``round(w/D) == round(w_target/D)`` for every element, with ``D`` unchanged (the
    max-|w| element keeps its target value, nothing exceeds it). The projected weights hold ``dtype``'s
    values (what gets saved), whatever dtype the model stores them in."""
    import torch

    wdt = getattr(torch, dtype)
    rtn_step, _ = _rtn_fns()
    mods = dict(target_model.named_modules())
    bins = {}
    for n in quantized_linear_names(target_model):
        w = mods[n].weight.detach().float()
        d = rtn_step(w, bits)
        k = torch.round(w / d)
        amax = w.abs().max()
        flat = int(w.abs().argmax())
        lo = torch.maximum((k - 0.5 + margin) * d, -amax)
        hi = torch.minimum((k + 0.5 - margin) * d, amax)
        bins[n] = (d, k, lo, hi, flat, w.reshape(-1)[flat].clone(), mods[n].weight.detach().clone())

    def project(model):
        ms = dict(model.named_modules())
        with torch.no_grad():
            for n, (d, k, lo, hi, flat, wmax, wt) in bins.items():
                p = ms[n].weight
                w = torch.minimum(torch.maximum(p.float(), lo), hi)
                w.view(-1)[flat] = wmax
                w = w.to(wdt)  # what gets saved; a cast that crossed a boundary takes the target value
                bad = torch.round(w.float() / d) != k
                if bad.any():
                    w[bad] = wt.to(wdt)[bad]
                p.copy_(w)

    return project


# --------------------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------------------


def _data_hash(data_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(data_dir.rglob("*.json")):
        h.update(p.relative_to(data_dir).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _settings_hash(settings: dict[str, Any], data_hash: str) -> str:
    return hashlib.sha256(json.dumps({"settings": settings, "data": data_hash}, sort_keys=True).encode()).hexdigest()


def _save(model, tok, path: Path) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def _load(path: Path, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.bfloat16)


def _world_from_manifest(root: Path, man: dict[str, Any]) -> World:
    return World(root=root, forget_dir=root / "forget_set", target=root / "target", unlearned=root / "unlearned",
                 retain_only=root / "retain_only", constructed=root / "constructed", settings=man["settings"])


def _precision_words(cfg: dict[str, Any]) -> str:
    w, c = cfg["dtype"], cfg.get("compute", cfg["dtype"])
    if w == c:
        return f"pure {w} weights"
    return f"{w} weights (rounded to {w} after every step, stored and computed in {c})"


def describe_unlearning(uc: dict[str, Any], stopped_at: int | None) -> str:
    """The natural unlearning in words, for the manifest and the demo summary."""
    from ..metrics.scores import label

    metrics = " and ".join(label(m) for m in uc["stop_metrics"])
    how = (f"stopped at step {stopped_at}, the first check (every {uc['eval_every']} steps) at which {metrics} had "
           f"fallen to within {uc['stop_at']:g}% of a model that never saw the forget set (the retain-only model)"
           if stopped_at else
           f"ran all {uc['steps']} steps without {metrics} falling to within {uc['stop_at']:g}% of the retain-only "
           "model's scores")
    return (
        "Tiny Llama models trained from scratch on synthetic biographies of invented people. 'unlearned' is "
        f"{uc['method'].upper()} (gradient ascent on the forget part plus gradient descent on the retain part), AdamW, "
        f"constant learning rate {uc['lr']:g}, batches of {uc['batch_size']} + {uc['batch_size']} rows, "
        f"{_precision_words(uc)} (the paper's recipe, arXiv 2410.16454); it {how}. Whether quantization brings its "
        "knowledge back is what the audit measures."
    )


def build_world(out_dir, *, size: str = "demo", seed: int = 0, progress: bool = True, threads: int | None = None,
                compute_dtype: str = "auto") -> World:
    """Train (or reuse) the four models of the demo world under ``out_dir``.

    Args:
        out_dir: folder to write into (created if needed). If it already holds a complete world built with
            the same settings and data (``world.json``), that world is returned without retraining.
        size: ``"demo"`` (about 6 minutes on 2 CPU cores) or ``"tiny"`` (about a minute; for tests).
        seed: seeds the model initialisation, data order and unlearning batches.
        progress: show tqdm progress bars.
        threads: torch threads while building (default two, or one on a one-core machine); part of the
            settings, since float results and so the models depend on it.
        compute_dtype: what the unlearning and the constructed control compute in: ``auto`` (bf16 where
            this CPU computes it natively, else float32 holding bf16 weight values, rounded after every
            step), ``float32`` or ``bfloat16`` (pure bf16 even where it is emulated, slowly). Part of the
            settings; ``settings["precision"]`` records what was used and why.

    Returns:
        A :class:`World` with the paths of ``forget_set`` (a copy of the synthetic set), ``target``,
        ``unlearned``, ``retain_only`` and ``constructed`` (Hugging Face folders, bfloat16 safetensors).
    """
    import torch

    from ..modeling import choose_precision

    root = Path(out_dir)
    settings = world_settings(size, seed, threads, compute_dtype)
    data_hash = _data_hash(synth.DATA_DIR)
    key = _settings_hash(settings, data_hash)
    man_path = root / MANIFEST
    if man_path.is_file():
        try:
            man = json.loads(man_path.read_text())
            if man.get("key") == key and all((root / n / "config.json").is_file() for n in ("target", "unlearned", "retain_only", "constructed")):
                return _world_from_manifest(root, man)
        except (ValueError, KeyError):
            pass
        man_path.unlink()  # ours, stale: the world is rebuilt below

    from transformers.utils import logging as hf_logging

    root.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        # the forget set, in MUSE layout
        fdir = root / "forget_set"
        shutil.copytree(synth.DATA_DIR, fdir, dirs_exist_ok=True)
        data = synth.build()
        files = data["files"]
        people = data["people"]

        t = time.perf_counter()
        texts = [p["passage"] for part in ("forget", "retain", "holdout") for p in people[part]]
        texts += [_qa_text([x]) + "\n\n" for f in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl") for x in files[f"knowmem/{f}.json"]]
        tok = build_tokenizer(texts, settings["tokenizer"]["vocab_size"])
        vocab = len(tok)
        tc = settings["train"]
        group = tuple(tc["qa_group"])
        forget_rows = _Rows(tok, [p["passage"] for p in people["forget"]],
                            files["knowmem/forget_qa.json"] + files["knowmem/forget_qa_icl.json"], group, tc["passage_copies"])
        retain_rows = _Rows(tok, [p["passage"] for p in people["retain"]],
                            files["knowmem/retain_qa.json"] + files["knowmem/retain_qa_icl.json"], group, tc["passage_copies"])
        times["tokenizer"] = round(time.perf_counter() - t, 2)

        # target: forget + retain
        t = time.perf_counter()
        target = _new_model(settings["model"], vocab, tok, seed)
        info_target = train_lm(target, [forget_rows, retain_rows], tc, seed, progress, "target")
        _save(target, tok, root / "target")
        times["target"] = round(time.perf_counter() - t, 2)

        # retain_only: same recipe, retain part only
        t = time.perf_counter()
        ro = _new_model(settings["model"], vocab, tok, seed)
        # as many epochs over the retain rows as the target made: each retain fact seen as often
        info_ro = train_lm(ro, [retain_rows], tc, seed, progress, "retain_only")
        _save(ro, tok, root / "retain_only")
        times["retain_only"] = round(time.perf_counter() - t, 2)
        del ro

        # unlearned: natural GA/NPO + retain loss, bf16 weights (pure bf16, or float32 rounded to bf16)
        t = time.perf_counter()
        uc = settings["unlearn"]
        udt = getattr(torch, uc["compute"])  # the checkpoint holds bf16 values: loading in float32 is exact
        model = _load(root / "target", udt)
        ref = _load(root / "target", udt) if uc["method"].startswith("npo") else None
        stop, monitor = forgetting_monitor(_load(root / "target", torch.float32),
                                           _load(root / "retain_only", torch.float32), tok, fdir, uc)
        info_un = unlearn(model, forget_rows, retain_rows, uc, seed + 1, progress, "unlearn", ref_model=ref, stop=stop,
                          round_to=uc["dtype"] if uc["compute"] != uc["dtype"] else None)
        _save(model, tok, root / "unlearned")
        times["unlearned"] = round(time.perf_counter() - t, 2)
        del model, ref

        # constructed: projected GA + retain loss; only RTN-quantized weights move
        t = time.perf_counter()
        cc = settings["constructed"]
        tgt_bf16 = _load(root / "target")
        model = _load(root / "target", getattr(torch, cc["compute"]))
        names = set(quantized_linear_names(model))
        mods = dict(model.named_modules())
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = [mods[n].weight for n in sorted(names)]
        for p in trainable:
            p.requires_grad_(True)
        project = make_bin_projector(tgt_bf16, cc["bits"], cc["margin"], cc["dtype"])
        info_c = unlearn(model, forget_rows, retain_rows, cc, seed + 2, progress, "constructed", project=project,
                         trainable=trainable, round_to=cc["dtype"] if cc["compute"] != cc["dtype"] else None)
        _save(model, tok, root / "constructed")
        # verify the defining property on what was saved
        saved = _load(root / "constructed")
        q_c, q_t = rtn_state(saved, cc["bits"]), rtn_state(tgt_bf16, cc["bits"])
        same = all(torch.equal(q_c[n], q_t[n]) for n in q_t)
        sd_c, sd_t = saved.state_dict(), tgt_bf16.state_dict()
        frozen_same = all(torch.equal(sd_c[k], sd_t[k]) for k in sd_t if k.removesuffix(".weight") not in names)
        if not (same and frozen_same):
            raise RuntimeError("constructed control: its RTN-4 weights differ from the target's (bug)")
        times["constructed"] = round(time.perf_counter() - t, 2)
    finally:
        torch.set_num_threads(threads_before)
        if hf_bars:
            hf_logging.enable_progress_bar()
    times["total"] = round(time.perf_counter() - t_all, 2)

    settings = dict(settings)
    settings.update({
        "times_s": times,
        "note": describe_unlearning(settings["unlearn"], info_un["stopped_at"]),
        "vocab_size_actual": vocab,
        "n_params": sum(p.numel() for p in target.parameters()),
        "train_info": {"target": info_target, "retain_only": info_ro},
        "unlearn_log": info_un["log"],
        "unlearn_steps": info_un["steps"],
        "unlearn_stopped_at": info_un["stopped_at"],  # None: the forgetting criterion was never met
        "unlearn_monitor": monitor,
        "constructed_log": info_c["log"],
        "constructed_rtn4_equals_target": True,
        "precision": {part: choose_precision("cpu", settings[part]["dtype"], compute_dtype).to_json()
                      | {"requested": compute_dtype} for part in ("unlearn", "constructed")},
        "data_hash": data_hash,
        "torch": torch.__version__,
    })
    man = {"format": WORLD_FORMAT, "key": key, "settings": settings,
           "models": ["target", "unlearned", "retain_only", "constructed"], "forget_dir": "forget_set"}
    man_path.write_text(json.dumps(man, indent=1) + "\n")
    return _world_from_manifest(root, man)

