"""What an audit recommends for a fragile model, as data: the paper's fix, SURE, redone from the original,
then an audit to check it. The audit puts it into the report (``derived["recommendation"]``); the report
renders it and ``hubaudit unlearn`` documents the same settings, and neither needs the other."""

from __future__ import annotations

# The paper's fix, SURE, on GA + KL retain, the top 10% of rows by saliency, lr 1e-4, stopping at 90% of the
# original utility, then an audit to check it. On the demo world this variant forgot with KnowMem retain at 93%
# and stayed robust under rtn:4, bnb:nf4 and gguf:Q4_0; on the facts benchmark (README, "Plain unlearning against
# SURE, measured over seeds") row-level SURE reached the target in fewer steps than plain unlearning (one seed) and
# stayed robust under rtn:4. Plain unlearning was robust there too, so this is the best-supported setting, not a
# proven cure: the --audit at the end is the check.
RECOMMENDED = {"method": "ga_klr", "sure": True, "saliency": "row", "threshold": 90, "lr": 1e-4, "utility_floor": 0.9}


def recommend_command(model: str = "ORIGINAL_MODEL", forget: str = "FORGET_SET", out: str = "unlearned-sure",
                      settings: dict | None = None) -> str:
    """The ``hubaudit unlearn`` command for ``settings`` (default :data:`RECOMMENDED`)."""
    r = {**RECOMMENDED, **(settings or {})}
    return (f"hubaudit unlearn {model} --forget {forget} --method {r['method']}"
            + (f" --sure --saliency {r['saliency']} --threshold {r['threshold']:g}" if r["sure"] else "")
            + f" --lr {r['lr']:.0e}".replace("e-0", "e-") + f" --utility-floor {r['utility_floor']:g} --out {out} --audit")


def recommendation(label: str) -> dict | None:
    """What to do after a verdict ``label``: for ``fragile``, redo the unlearning with SURE (the settings of
    :func:`recommend_command`); None otherwise."""
    if label != "fragile":
        return None
    return {"action": "unlearn", "why": "the unlearning does not survive an attack; SURE is the paper's fix",
            "settings": dict(RECOMMENDED)}
