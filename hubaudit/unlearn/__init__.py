"""Unlearning that survives quantization: GA / NPO with retain controls, and SURE.

An audit that says ``fragile`` comes with a way out. ``hubaudit unlearn`` (and :func:`unlearn`) trains an
unlearned model from the original with one of six methods, written from their definitions
(:mod:`.losses`): ``ga``, ``ga_gdr``, ``ga_klr``, ``npo``, ``npo_gdr``, ``npo_klr``; optionally with SURE
(:mod:`.sure`, Zhang et al., arXiv 2410.16454): only the most salient modules or rows train, with a larger
learning rate, so that the update crosses quantization bins. Controls against over-unlearning ("Unlearning
with Control", arXiv 2406.09179), chosen from what the original knows (:func:`.train.choose_controls`): a
forget target on a forget metric the original scores above chance, early stopping on a retain-utility floor,
and forgetting reported next to utility, with a missed target said as such. The output is an ordinary Hugging Face model folder with a card; ``audit=True`` audits it.

Example::

    from hubaudit.unlearn import unlearn
    res = unlearn("org/original-model", forget="muse-news", out="unlearned", method="npo_klr", sure=True,
                  threshold=90, audit=True)
    print(res.after, res.audit.verdict.label)

torch and transformers are imported only when training starts.
"""

from __future__ import annotations

from .losses import METHODS

__all__ = ["METHODS", "RECOMMENDED", "UnlearnConfig", "UnlearnResult", "recommend_command", "unlearn"]

# What the audit report recommends for a fragile model: the paper's fix, SURE, on GA + KL retain, the top 10% of
# rows by saliency, lr 1e-4, stopping at 90% of the original utility, then an audit to check it. On the demo
# world this variant forgot with KnowMem retain at 93% and stayed robust under rtn:4, bnb:nf4 and gguf:Q4_0;
# on the facts benchmark (README, "Plain unlearning against SURE, measured over seeds") row-level SURE reached
# the target in fewer steps than plain unlearning (one seed) and stayed robust under rtn:4. Plain unlearning was robust
# there too, so this is the best-supported setting, not a proven cure: the --audit at the end is the check.
RECOMMENDED = {"method": "ga_klr", "sure": True, "saliency": "row", "threshold": 90, "lr": 1e-4, "utility_floor": 0.9}


def recommend_command(model: str = "ORIGINAL_MODEL", forget: str = "FORGET_SET", out: str = "unlearned-sure") -> str:
    """The ``hubaudit unlearn`` command the audit report recommends for a fragile model."""
    r = RECOMMENDED
    return (f"hubaudit unlearn {model} --forget {forget} --method {r['method']}"
            + (f" --sure --saliency {r['saliency']} --threshold {r['threshold']:g}" if r["sure"] else "")
            + f" --lr {r['lr']:.0e}".replace("e-0", "e-") + f" --utility-floor {r['utility_floor']:g} --out {out} --audit")


def unlearn(model, forget="synthetic", out=None, **kwargs):
    """See :func:`hubaudit.unlearn.train.unlearn`."""
    from .train import unlearn as _unlearn

    return _unlearn(model, forget, out, **kwargs)


def __getattr__(name):
    if name in ("UnlearnConfig", "UnlearnResult", "UnlearnError"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
