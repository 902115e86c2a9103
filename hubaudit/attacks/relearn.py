"""``relearn``: a recovery attack beside quantization. A few fine-tuning steps on a small slice of the
forget set (or on the retain set: related text that never contained the forgotten facts), then the same
metrics. Published work finds that a handful of steps brings "unlearned" knowledge back (Hu et al.
2024, *Jogging the memory of unlearned LLMs*; Lynch et al. 2024; Deeb & Roger 2024), so a model that
hides rather than removes knowledge is caught here even when quantization leaves it alone.

Spec: ``relearn[:steps=N][:lr=X][:data=forget|retain][:frac=F][:batch=B][:seed=S]``, default
``steps=20, lr=1e-5, data=forget, frac=0.1, batch=8, seed=0``.

What it trains on: the audit prepares the token rows (:func:`hubaudit.metrics.training.training_rows`, in
the metrics' own prompt forms) from what :meth:`RelearnAttack.rows_request` asks for: with ``data=forget``
the first ``frac`` (at least one item) of every forget part the metrics score item by item. Those items are
still evaluated, but the audit computes this spec's *regained* figures on the other items only
(``trained_items`` in the cell's settings says how many of each part; :func:`hubaudit.audit.heldout_regained`),
so memorizing the slice cannot make a model look fragile: what counts is knowledge the slice unlocks
elsewhere. ``data=retain`` trains on every retain item and holds nothing out, because no forget item is
trained on.

Training: a fresh copy of the full-precision model, float32 weights and compute, AdamW (betas 0.9,
0.999, no weight decay), constant learning rate, causal-LM loss on every token of a row, batches drawn
from the slice in a seeded order: deterministic for a seed on one device. The trained copy is cast back
to the audit's compute dtype for evaluation. Memory: the copy plus AdamW's two moments (about 16 bytes
per parameter during training).
"""

from __future__ import annotations

from ..errors import SpecError
from .base import Attack, AttackSpec, RowsRequest, TrainingRows, register

DEFAULTS = {"steps": 20, "lr": 1e-5, "data": "forget", "frac": 0.1, "batch": 8, "seed": 0}


def parse_args(spec: AttackSpec) -> dict:
    out = dict(DEFAULTS)
    for a in spec.args:
        key, eq, val = a.partition("=")
        if not eq or key not in DEFAULTS:
            raise SpecError(f"relearn: unknown argument '{a}'; use steps=N, lr=X, data=forget|retain, frac=F, batch=B, seed=S")
        try:
            if key in ("steps", "batch", "seed"):
                out[key] = int(val)
            elif key in ("lr", "frac"):
                out[key] = float(val)
            else:
                out[key] = val
        except ValueError:
            raise SpecError(f"relearn: {key}={val} is not a number") from None
    if not 1 <= out["steps"] <= 100000:
        raise SpecError(f"relearn: steps must be 1 to 100000, got {out['steps']}")
    if not out["lr"] > 0:
        raise SpecError(f"relearn: lr must be > 0, got {out['lr']}")
    if out["data"] not in ("forget", "retain"):
        raise SpecError(f"relearn: data must be forget or retain, got {out['data']}")
    if not 0 < out["frac"] <= 1:
        raise SpecError(f"relearn: frac must be in (0, 1], got {out['frac']}")
    if out["batch"] < 1:
        raise SpecError(f"relearn: batch must be at least 1, got {out['batch']}")
    return out


def relearn(model, rows: list[list[int]], pad_id: int, steps: int, lr: float, batch: int, seed: int,
            max_len: int | None = None) -> dict:
    """``steps`` AdamW steps of causal-LM loss on ``rows`` (float32, constant lr, seeded order). In place."""
    from .finetune import train_steps

    model.float()
    return train_steps(model, rows, pad_id, steps, lr, batch, seed, max_len)


@register
class RelearnAttack(Attack):
    name = "relearn"
    kind = "training"
    summary = "a few fine-tuning steps on 10% of the forget set (held out when scored), then the same metrics"
    examples = ("relearn:steps=20", "relearn:steps=50:lr=1e-4", "relearn:steps=20:data=retain")
    noun = "relearning"
    prefers_gpu = True
    memory_copies = 5  # the model, its fine-tuned copy, gradients, AdamW's two moments
    report_note = ("relearn: fine-tuning on a slice of the forget set (or the retain set), its regained figures "
                   "counting only the forget items it did not train on")

    def validate(self, spec: AttackSpec) -> None:
        parse_args(spec)

    def rows_request(self, spec: AttackSpec) -> RowsRequest:
        args = parse_args(spec)
        return RowsRequest(data=args["data"], frac=args["frac"])

    def build(self, source, spec: AttackSpec, rows: TrainingRows | None = None):
        import torch

        args = parse_args(spec)
        if rows is None:
            raise SpecError("relearn needs training rows prepared from the forget set; run it through hubaudit.audit")
        if not rows.rows:
            raise SpecError(f"relearn: {rows.description or 'the forget set'} has no {args['data']} items to train on")
        tok = source.tokenizer
        model = source.fresh_copy()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        max_len = getattr(model.config, "max_position_embeddings", None)
        info = relearn(model, rows.rows, pad, args["steps"], args["lr"], min(args["batch"], len(rows.rows)), args["seed"],
                       max_len)
        model.to(source.compute_dtype())
        settings = {**args, "train_rows": len(rows.rows), "trained_items": dict(rows.trained_items), **info,
                    "dtype_train": "float32", "optimizer": "AdamW(0.9, 0.999), constant lr, no weight decay",
                    "torch_threads": torch.get_num_threads()}
        return model, settings
