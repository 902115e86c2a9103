"""``finetune:unrelated``: the benign fine-tune a downstream user does. A few steps of ordinary causal-LM
fine-tuning of every weight on text that has nothing to do with the forget set, then the same metrics.
Published work finds that this alone brings much "unlearned" knowledge back: fine-tuning on a handful of
unrelated examples recovers most of an RMU model's hazardous knowledge (Łucki et al. 2024, arXiv 2409.18025)
and 16 fine-tuning steps undo state-of-the-art unlearning (Che et al. 2025, arXiv 2502.05209).

Spec: ``finetune:unrelated[:STEPS][:lr=X][:batch=B][:seed=S]``, default 16 steps (as Che et al.),
``lr=2e-5``, ``batch=8``, ``seed=0``. ``unrelated`` names the corpus, the only one for now.

The text: ``hubaudit/attacks/data/unrelated.txt`` (package data, written for hubaudit: everyday how-to
sentences about nothing a forget set covers, no people, news, books, biology, chemistry or security; distinct
from the quantizers' calibration text), one row per line, tokenized with the model's own tokenizer (its BOS
where it adds one, an EOS after every line), at most 128 tokens a row.

Training: a fresh copy of the full-precision model, AdamW (betas 0.9, 0.999, no weight decay), constant
learning rate, causal-LM loss (mean token NLL), batches drawn in a seeded order (deterministic for a seed on
one device). Precision: the audit's compute dtype, so a 16-bit checkpoint trains in its own 16-bit dtype where
the device computes it natively (a GPU, a CPU with AMX or AVX512-BF16: :func:`hubaudit.modeling.native_half`),
as a user's ``bf16=True`` run does there, and in float32 elsewhere (never emulated 16-bit); ``--dtype`` sets
it; the settings say which and why.
The trained copy is cast to the audit's compute dtype for evaluation. Memory: the copy plus AdamW's two
moments (three to four copies of the weights).

Because the text is unrelated, every forget item counts (nothing is held out). Training on any text also
moves a model that never knew the forget set: give ``--control`` to count only what goes beyond that.
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources

from ..errors import SpecError
from .base import Attack, AttackSpec, register

CORPORA = ("unrelated",)
DEFAULTS = {"steps": 16, "lr": 2e-5, "batch": 8, "seed": 0}
MAX_TOKENS = 128  # per row
OPTIONS = "lr=X, batch=B, seed=S"


@lru_cache(maxsize=None)
def corpus_lines(name: str = "unrelated") -> tuple[str, ...]:
    """The lines of a corpus shipped with hubaudit (``hubaudit/attacks/data/NAME.txt``), comments dropped."""
    text = resources.files("hubaudit.attacks").joinpath("data", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def corpus_digest(name: str = "unrelated") -> str:
    """sha256 (first 16 hex digits) of a shipped corpus's lines: part of a cell's key in the results store."""
    import hashlib

    return hashlib.sha256("\n".join(corpus_lines(name)).encode()).hexdigest()[:16]


def corpus_rows(tokenizer, name: str = "unrelated", max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Token-id rows of a shipped corpus, one per line: the tokenizer's own ids (its BOS where it adds one),
    an EOS after each line, at most ``max_tokens`` tokens."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [(tokenizer(ln)["input_ids"] + eos)[:max_tokens] for ln in corpus_lines(name)]


def parse_options(spec: AttackSpec, defaults: dict, positional: tuple[str, ...], start: int,
                  ints=("steps", "batch", "seed", "rank")) -> dict:
    """``spec.args[start:]``: first the ``positional`` values in order (integers), then ``key=value`` options
    (numbers) among ``defaults``' keys; checked ranges. For ``finetune`` and ``qlora``."""
    out = dict(defaults)
    pos = list(positional)
    for a in spec.args[start:]:
        key, eq, val = a.partition("=")
        if not eq:
            if not pos:
                raise SpecError(f"'{spec}': unexpected '{a}'; options go as key=value ({_option_words(defaults)})")
            key, val = pos.pop(0), a
        elif key not in defaults:
            raise SpecError(f"'{spec}': unknown option '{a}'; use {_option_words(defaults)}")
        try:
            out[key] = int(val) if key in ints else float(val)
        except ValueError:
            raise SpecError(f"'{spec}': {key} must be {'an integer' if key in ints else 'a number'}, got '{val}'") from None
    if not 1 <= out["steps"] <= 100000:
        raise SpecError(f"'{spec}': steps must be 1 to 100000, got {out['steps']}")
    if not out["lr"] > 0:
        raise SpecError(f"'{spec}': lr must be > 0, got {out['lr']}")
    if out["batch"] < 1:
        raise SpecError(f"'{spec}': batch must be at least 1, got {out['batch']}")
    if "rank" in out and not 1 <= out["rank"] <= 4096:
        raise SpecError(f"'{spec}': rank must be 1 to 4096, got {out['rank']}")
    return out


def _option_words(defaults: dict) -> str:
    return ", ".join(f"{k}=" + ("N" if isinstance(v, int) else "X") for k, v in defaults.items())


def parse_finetune(spec: AttackSpec) -> dict:
    if not spec.args or spec.args[0] not in CORPORA:
        raise SpecError(f"'{spec}': name the text to fine-tune on: finetune:unrelated[:STEPS][:lr=X][:batch=B][:seed=S]")
    return {"corpus": spec.args[0], **parse_options(spec, DEFAULTS, ("steps",), 1)}


def train_steps(model, rows: list[list[int]], pad_id: int, steps: int, lr: float, batch: int, seed: int,
                max_len: int | None = None) -> dict:
    """``steps`` AdamW steps of causal-LM loss on ``rows`` over the parameters that require grad, in the dtype
    they are stored in (constant lr, seeded order), in place. Returns the first and last losses."""
    import torch

    from ..logprobs import token_logprobs
    from ..trainrows import pad_batch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    device = next(model.parameters()).device
    queue: list[list[int]] = []
    losses = []
    for _ in range(steps):
        while len(queue) < batch:
            order = list(rows)
            rng.shuffle(order)
            queue += order
        b, queue = queue[:batch], queue[batch:]
        if max_len:
            b = [r[:max_len] for r in b]
        ids, mask, labels = pad_batch(b, pad_id)
        labels = labels.to(device)
        lp = token_logprobs(model, ids.to(device), mask.to(device), labels)
        loss = -lp.sum() / (labels[:, 1:] != -100).sum().clamp(min=1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return {"first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4)}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def training_precision(source):
    """The :class:`~hubaudit.modeling.Precision` to fine-tune ``source``'s weights in: the audit's compute dtype
    (``auto``: the checkpoint's 16-bit dtype where the device computes it natively, else float32;
    :func:`hubaudit.modeling.choose_compute_dtype`), weights and matmuls alike: never the emulated path."""
    from ..modeling import Precision

    compute = str(source.compute_dtype()).replace("torch.", "")
    why = source.compute_dtype_reason() if hasattr(source, "compute_dtype_reason") else ""
    return Precision(compute, compute, f"the audit's compute dtype ({why})" if why else "the audit's compute dtype")


@register
class FinetuneAttack(Attack):
    name = "finetune"
    kind = "training"
    summary = "a few steps of ordinary fine-tuning on generic text unrelated to the forget set (16 by default)"
    examples = ("finetune:unrelated", "finetune:unrelated:64", "finetune:unrelated:16:lr=1e-4")
    prefers_gpu = True
    memory_copies = 5  # the model, its fine-tuned copy, gradients, AdamW's two moments
    noun = "benign fine-tuning"
    report_note = ("finetune: a few steps of full fine-tuning on generic text shipped with hubaudit, unrelated to the "
                   "forget set (the benign fine-tune a downstream user does)")

    def validate(self, spec: AttackSpec) -> None:
        parse_finetune(spec)

    def cache_key(self, spec: AttackSpec, source) -> dict:
        return {"corpus": corpus_digest(parse_finetune(spec)["corpus"]),
                "precision": training_precision(source).compute}

    def build(self, source, spec: AttackSpec, rows=None):
        import torch

        args = parse_finetune(spec)
        tok = source.tokenizer
        train = corpus_rows(tok, args["corpus"])
        prec = training_precision(source)
        model = source.fresh_copy().to(getattr(torch, prec.compute))
        max_len = getattr(model.config, "max_position_embeddings", None)
        info = train_steps(model, train, pad_id(tok), args["steps"], args["lr"], min(args["batch"], len(train)),
                           args["seed"], max_len)
        model.to(source.compute_dtype())
        settings = {**args, "train_rows": len(train), "train_tokens": sum(map(len, train)), **info,
                    "corpus_file": f"hubaudit/attacks/data/{args['corpus']}.txt",
                    "precision": prec.to_json(), "parameters": "every weight (full fine-tuning)",
                    "optimizer": "AdamW(0.9, 0.999), constant lr, no weight decay",
                    "torch_threads": torch.get_num_threads()}
        return model, settings
