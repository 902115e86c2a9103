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

from ..recommend import RECOMMENDED, recommend_command  # noqa: F401  (what a fragile report recommends)
from .losses import METHODS

__all__ = ["METHODS", "RECOMMENDED", "UnlearnConfig", "UnlearnResult", "recommend_command", "unlearn"]


def unlearn(model, forget="synthetic", out=None, **kwargs):
    """See :func:`hubaudit.unlearn.train.unlearn`."""
    from .train import unlearn as _unlearn

    return _unlearn(model, forget, out, **kwargs)


def __getattr__(name):
    if name in ("UnlearnConfig", "UnlearnResult", "UnlearnError"):
        from . import train

        return getattr(train, name)
    raise AttributeError(name)
