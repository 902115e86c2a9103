"""``probe:logit-lens``: a white-box attack that reads the forget answers from an intermediate layer. An
unlearning method can leave the knowledge in the early and middle layers and suppress it only in the last
ones (Łucki et al. 2024, arXiv 2409.18025, ``src/logit_lens``; open-unlearning's ``src/model/probe.py``
reads hidden states with trained linear probes). The logit lens (nostalgebraist 2020) needs no training:
a layer's residual stream, put through the model's own final norm and ``lm_head``, is a next-token
distribution.

Spec: ``probe:logit-lens[:LAYER][:frac=F]``; ``LAYER`` (0-based decoder layer) fixes the layer instead of
choosing it; ``frac``: the share of every forget part held out to choose it (default 0.1, at least one item).

How it is built: **a truncated model**, not a separate metric. The held-out items (the first ``frac`` of
every item-scored forget part, prepared by the audit as for ``relearn``, recorded as ``trained_items`` and
so left out of this spec's regain) are read through the logit lens at every layer, and the layer with the
lowest mean answer loss (NLL per answer token) is kept. The cell's model is then a copy of the model with
every decoder layer above it removed, the final norm and ``lm_head`` applied to that layer's output: a
legitimate logit-lens model, an ordinary ``*ForCausalLM`` with ``num_hidden_layers = LAYER + 1``, that
generates (with its KV cache) and that every metric (VerbMem, KnowMem, MIA, TOFU, WMDP, ES, probabilities)
evaluates unchanged. Its figures are the knowledge a layer holds that the output hides. When the best
layer is the last, the lens is the model itself and the cell is the full-precision cell
(``identical_to_full_precision``).

Cost: one forward pass over the held-out rows (every layer read at once), then a copy of the model;
the truncated model evaluates faster than the whole one.
"""

from __future__ import annotations

from ..errors import SpecError
from .ablate import LayerAttack, check_layer, pad_id, parse_layer_args
from .base import AttackSpec, TrainingRows, register


def parse_probe(spec: AttackSpec) -> dict:
    """``{"layer": int | None, "frac": float}`` of a ``probe:logit-lens[:LAYER][:frac=F]`` spec."""
    if not spec.args or spec.args[0] != "logit-lens":
        raise SpecError(f"'{spec}': use probe:logit-lens (optionally probe:logit-lens:LAYER, probe:logit-lens:frac=0.2)")
    return parse_layer_args(spec, "probe:logit-lens[:LAYER][:frac=F]")


def truncate(model, layers: int):
    """``model`` (in place) with only its first ``layers`` decoder layers: the final norm and ``lm_head`` then
    read layer ``layers - 1``'s output (the logit lens). The config follows (``num_hidden_layers``,
    ``layer_types``), so caches are sized for the layers that remain."""
    import torch

    from .residual import decoder_parts

    _, blocks, _, _ = decoder_parts(model, "probe:logit-lens")
    dec = model.get_decoder()
    dec.layers = torch.nn.ModuleList(list(blocks)[:layers])
    for cfg in {id(c): c for c in (model.config, getattr(dec, "config", model.config))}.values():
        cfg.num_hidden_layers = layers
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:layers]
    return model


@register
class LogitLensAttack(LayerAttack):
    name = "probe"
    kind = "white-box"
    summary = ("the logit lens: the model cut at the layer that best predicts held-out forget answers, read "
               "through its final norm and lm_head")
    examples = ("probe:logit-lens", "probe:logit-lens:2")
    noun = "logit-lens"
    report_note = ("probe: the logit lens, the model cut at the layer (chosen on held-out forget items) that best "
                   "predicts their answers; scored on the other items")

    def parse(self, spec: AttackSpec) -> dict:
        return parse_probe(spec)

    def build(self, source, spec: AttackSpec, rows: TrainingRows | None = None):
        from . import residual

        args = parse_probe(spec)
        if rows is None:
            self.held_out(spec, rows, "choose the layer")
        n_layers = source.model.config.num_hidden_layers
        check_layer(args["layer"], n_layers, spec)
        settings = {**args, "held_out_rows": len(rows.rows), "trained_items": dict(rows.trained_items)}
        if args["layer"] is None:
            self.held_out(spec, rows, "choose the layer", "; give one: probe:logit-lens:LAYER")
            losses = residual.lens_losses(source.model, rows.rows, pad_id(source.tokenizer))
            layer = self.choose(dict(enumerate(losses)), None)
            settings.update(held_out_loss_by_layer={str(i): round(v, 5) for i, v in enumerate(losses)},
                            chosen_by="lowest held-out answer loss through the logit lens",
                            held_out_loss_output=round(losses[-1], 5), held_out_loss_lens=round(losses[layer], 5))
        else:
            layer = args["layer"]
            settings["chosen_by"] = "given"
        settings.update(layer=layer, layers_kept=layer + 1, layers_removed=n_layers - layer - 1)
        if layer == n_layers - 1:
            return source.model, {**settings, "identical_to_full_precision": True,
                                  "note": "the last layer: the logit lens is the model's own output"}
        model = truncate(source.fresh_copy(), layer + 1)
        model.eval()
        return model, settings
