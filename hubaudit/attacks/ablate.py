"""``ablate:direction``: a white-box recovery attack. Many unlearning methods (RMU above all, also NPO and DPO)
leave the forgotten knowledge in the weights and add, on forget-topic prompts, a shift of the activations
that derails the output. If that shift lies mostly along one direction of the residual stream, removing
the direction brings the knowledge back (Łucki et al. 2024, *An adversarial perspective on machine
unlearning for AI safety*, arXiv 2409.18025: most of RMU's WMDP accuracy returns).

Spec: ``ablate:direction[:LAYER][:frac=F]``; ``LAYER`` (0-based decoder layer) fixes the layer instead of
choosing it; ``frac``: the share of every forget part held out to find the direction (default 0.1, at least
one item).

What it does, in order:

1. **Held-out items.** The audit prepares the first ``frac`` of every forget part the metrics score item by
   item (the same rows a ``relearn`` cell trains on, :class:`~hubaudit.attacks.TrainingRows`, as ``(ids,
   start)`` pairs: prompt, then answer). The cell's settings record them as ``trained_items``, so the verdict
   computes this spec's regain on the other items only (:func:`hubaudit.verdict.heldout_regained`): the
   items that found the direction never score it.
2. **One direction per layer.** The residual stream at the output of every decoder layer, averaged over
   every token of those rows but the first (BOS, whose activations are outliers), in the unlearned model and
   in the original (``--reference``, required); the direction at layer ``l`` is the difference of the means,
   ``mean_unlearned[l] - mean_original[l]``, normalized.
3. **One layer.** For each layer's direction, the direction is projected out of the unlearned model's
   residual stream (hooks on the embeddings and on every layer's output) and the mean answer loss (NLL per
   answer token) of the held-out rows is measured; the layer whose direction lowers it most is kept. When
   no direction lowers it, the attack changes nothing (the cell is the full-precision cell,
   ``identical_to_full_precision``).
4. **Folded into the weights** (Arditi et al. 2024, *Refusal in language models is mediated by a single
   direction*, weight orthogonalization): the embedding rows and the output matrix of every ``o_proj`` and
   ``down_proj`` (and their biases) are orthogonalized against the direction, ``W <- W - d d^T W``
   (:func:`.residual.fold_out`), so no layer can write it and the residual stream never holds it. The
   result is an ordinary model that every metric evaluates unchanged. The fold is checked on the held-out
   rows (the largest share of ``|h . d| / |h|`` over layers is in the settings); an architecture whose
   sublayers write through a norm after the output matrix (Gemma 2's sandwich norms) keeps the direction,
   and the attack then adds the projection as forward hooks instead (``mode: hooks``).

On the original's own cell the attack has no direction (a model minus itself), and the cell is the
full-precision cell. Cost: two forward passes over the held-out rows for the means, one per layer for the
choice, one for the check; memory: the unlearned model, its copy and the original.

Compared with Łucki et al.'s code (``ethz-spylab/unlearning-vs-safety``,
``src/orthogonalization/orthogonalization.py``):

- *Same*: the direction is the difference of the mean residual streams (unlearned minus original, their
  ``ground_truth`` direction) at a decoder layer's output, over the tokens of forget-topic prompts, and the
  ablation subtracts the projection ``(h . d) d`` with ``d`` normalized.
- *Different*: (a) they average over WMDP questions the original answers and the unlearned model does not,
  skipping the first 40 tokens (few-shot context) and outlier tokens (z-score of mean L1 distance > 3);
  hubaudit averages over every held-out forget item, skipping only the first token. (b) They ablate with a
  forward hook on the chosen layer(s) only, each with its own direction; hubaudit removes the one direction
  everywhere (every write to the residual stream), Arditi et al.'s fold, which is stronger and yields a
  plain model. (c) They pick layers by hand and report the best on the test questions; hubaudit picks the
  layer on the held-out items by answer loss and scores the others. (d) They also try directions from MMLU
  and WikiText and from PCA; hubaudit has the difference of means only.
"""

from __future__ import annotations

from ..errors import HubauditError, SpecError
from .base import Attack, AttackSpec, RowsRequest, TrainingRows, register

DEFAULT_FRAC = 0.1
METHODS = ("direction",)


def parse_layer_args(spec: AttackSpec, usage: str) -> dict:
    """``{"layer": int | None, "frac": float}`` from a white-box spec's arguments after its method
    (``[:LAYER][:frac=F]``); ``usage`` names the spec's form in messages."""
    out: dict = {"layer": None, "frac": DEFAULT_FRAC}
    for a in spec.args[1:]:
        key, eq, val = a.partition("=")
        if eq and key != "frac":
            raise SpecError(f"'{spec}': unknown option '{a}'; use {usage}")
        try:
            num = float(val) if eq else int(a)
        except ValueError:
            raise SpecError(f"'{spec}': '{val if eq else a}' is not a number; use {usage}") from None
        if eq:
            if not 0 < num <= 1:
                raise SpecError(f"'{spec}': frac must be in (0, 1], got {val}")
            out["frac"] = num
        elif out["layer"] is not None:
            raise SpecError(f"'{spec}': one layer at most; use {usage}")
        elif num < 0:
            raise SpecError(f"'{spec}': the layer is a 0-based decoder layer index, got {a}")
        else:
            out["layer"] = num
    return out


def parse_ablate(spec: AttackSpec) -> dict:
    """``{"layer": int | None, "frac": float}`` of an ``ablate:direction[:LAYER][:frac=F]`` spec."""
    if not spec.args or spec.args[0] not in METHODS:
        raise SpecError(f"'{spec}': use ablate:direction (optionally ablate:direction:LAYER, ablate:direction:frac=0.2)")
    return parse_layer_args(spec, "ablate:direction[:LAYER][:frac=F]")


def check_layer(layer: int | None, n_layers: int, spec: AttackSpec) -> None:
    if layer is not None and layer >= n_layers:
        raise SpecError(f"'{spec}': the model has {n_layers} decoder layers (0 to {n_layers - 1}), not layer {layer}")


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


class LayerAttack(Attack):
    """What the white-box attacks that act at one decoder layer share (``ablate:direction``,
    ``probe:logit-lens``): the spec's ``[:LAYER][:frac=F]`` (:meth:`parse`), the held-out forget items the audit
    prepares to choose the layer on (:meth:`rows_request`, :meth:`held_out`), the layer checked against the
    model before it loads (:meth:`check`), and the choice itself (:meth:`choose`)."""

    def parse(self, spec: AttackSpec) -> dict:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def validate(self, spec: AttackSpec) -> None:
        self.parse(spec)

    def rows_request(self, spec: AttackSpec) -> RowsRequest:
        return RowsRequest(data="forget", frac=self.parse(spec)["frac"], answers=True)

    def check(self, spec: AttackSpec, source) -> None:
        n = source.config().get("num_hidden_layers") if callable(getattr(source, "config", None)) else None
        if isinstance(n, int):
            check_layer(self.parse(spec)["layer"], n, spec)

    @staticmethod
    def held_out(spec: AttackSpec, rows: TrainingRows | None, what: str, hint: str = "") -> None:
        """Refuse a build without the held-out rows it chooses ``what`` on."""
        if rows is None:
            raise SpecError(f"{spec} needs held-out forget items prepared by the audit; run it through hubaudit.audit")
        if not rows.rows:
            raise SpecError(f"{spec}: {rows.description or 'the forget set'} has no item-scored forget part to {what} "
                            f"on (knowmem, verbmem, tofu or wmdp){hint}")

    @staticmethod
    def choose(losses: dict[int, float], given: int | None) -> int:
        """The layer: the one given, else the one with the lowest held-out answer loss."""
        return given if given is not None else min(losses, key=losses.get)


@register
class AblateAttack(LayerAttack):
    name = "ablate"
    kind = "white-box"
    summary = ("project out the direction that separates the model's activations from the original's on held-out "
               "forget prompts (needs --reference)")
    examples = ("ablate:direction", "ablate:direction:3")
    noun = "direction ablation"
    needs_reference = True
    report_note = ("ablate: the residual-stream direction separating the model from its original on held-out forget "
                   "items, folded out of the weights; scored on the other items")

    def parse(self, spec: AttackSpec) -> dict:
        return parse_ablate(spec)

    def build(self, source, spec: AttackSpec, rows: TrainingRows | None = None, reference=None):
        import torch

        from . import residual

        args = parse_ablate(spec)
        if reference is None:
            raise SpecError(f"{spec} compares the model with its original: pass --reference ORIGINAL")
        self.held_out(spec, rows, "find the direction")
        base = {**args, "held_out_rows": len(rows.rows), "trained_items": dict(rows.trained_items),
                "direction": "mean(model) - mean(original), residual stream at a decoder layer's output"}
        if reference is source or reference.identity == source.identity:
            return source.model, {**base, "identical_to_full_precision": True,
                                  "note": "the original's own cell: no direction between a model and itself"}
        model = source.model
        residual.decoder_parts(model, str(spec))
        was_loaded = getattr(reference, "_model", None) is not None
        ref_model = reference.model
        for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
            a, b = getattr(model.config, key, None), getattr(ref_model.config, key, None)
            if a != b:
                raise HubauditError(f"{spec}: the original has {key} {b} and the model {a}; the direction needs "
                                    "the same architecture (pass the model's own original as --reference)")
        n_layers = model.config.num_hidden_layers
        check_layer(args["layer"], n_layers, spec)
        pad = pad_id(source.tokenizer)
        mean_model, tokens = residual.layer_means(model, rows.rows, pad)
        mean_ref, _ = residual.layer_means(ref_model, rows.rows, pad)
        if not was_loaded:
            reference.release()
        diff = (mean_model - mean_ref).float()
        scale = mean_model.norm(dim=-1).clamp(min=1e-12)

        copy = source.fresh_copy()
        loss_none = residual.answer_loss(copy, rows.rows, pad)
        candidates = [args["layer"]] if args["layer"] is not None else list(range(n_layers))
        losses: dict[int, float] = {}
        for layer in candidates:
            norm = diff[layer].norm()
            if not norm > 0:
                continue
            handles = residual.project_out_hooks(copy, diff[layer] / norm)
            try:
                losses[layer] = residual.answer_loss(copy, rows.rows, pad)
            finally:
                for h in handles:
                    h.remove()
        settings = {**base, "tokens_averaged": tokens, "held_out_loss_before": round(loss_none, 5),
                    "held_out_loss_by_layer": {str(k): round(v, 5) for k, v in losses.items()},
                    "relative_shift_by_layer": {str(k): round(float(diff[k].norm() / scale[k]), 5) for k in candidates}}
        if not losses:
            del copy
            return source.model, {**settings, "identical_to_full_precision": True,
                                  "note": "the model's mean activations equal the original's: no direction"}
        layer = self.choose(losses, args["layer"])
        if args["layer"] is None and losses[layer] >= loss_none:
            del copy
            return source.model, {**settings, "layer": None, "identical_to_full_precision": True,
                                  "note": "no layer's direction lowers the held-out answer loss: nothing ablated"}
        d = diff[layer] / diff[layer].norm()
        share_before = residual.projection_share(copy, d, rows.rows, pad)
        folded = residual.fold_out(copy, d)
        share_after = residual.projection_share(copy, d, rows.rows, pad)
        mode = "folded"
        if share_after > max(1e-3, 0.05 * share_before):  # the stream still holds it: project it out at run time
            residual.project_out_hooks(copy, d)
            mode = "hooks"
        copy.eval()
        settings.update(layer=layer, chosen_by="given" if args["layer"] is not None else "lowest held-out answer loss",
                        held_out_loss_after=round(losses[layer], 5), mode=mode, matrices_folded=folded,
                        projection_share_before=round(share_before, 6), projection_share_after=round(share_after, 6),
                        direction_norm=round(float(diff[layer].norm()), 6), torch_threads=torch.get_num_threads())
        return copy, settings
