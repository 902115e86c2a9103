"""``hubaudit demo``: build the tiny offline world and audit it, start to finish.

The world (see :mod:`hubaudit.demo.world`): a tokenizer and a small Llama-style *target* trained on the
built-in synthetic set (forget + retain), an *unlearned* model made from it the way the paper's
utility-constrained methods do (gradient ascent on the forget part plus a retain loss, small learning
rate, bf16 weights), a *retain-only* model (negative control) and a *constructed* positive control whose
unlearning update stays inside each weight's 4-bit rounding bin. Each is audited against the target;
the audits share one results store, so the target's cells are computed once.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

DEMO_SPECS = ("cast:fp32", "rtn:8", "rtn:4", "rtn:4:g64")

# (name, world attribute, what it is)
SUBJECTS = (
    ("unlearned", "unlearned", "natural unlearning: gradient ascent on the forget part + retain loss, bf16, small lr"),
    ("constructed", "constructed", "CONSTRUCTED positive control: unlearning kept inside each weight's 4-bit RTN bin"),
    ("retain_only", "retain_only", "negative control: trained on the retain part only, never saw the forget facts"),
)


def _row(name: str, what: str, report) -> str:
    fp = report.cell("model", "fp")
    q4 = report.cell("model", "rtn:4")
    ref = report.cell("reference", "fp")

    def g(c, m):
        return f"{c.metrics[m]:.1f}" if c is not None and c.status == "ok" and m in c.metrics else "–"

    v = report.verdict
    evidence = (f"{v.worst_spec} {v.evidence()}" if v.max_regained is not None else "–")
    kept = report.derived.retained_ci.get("fp", {}).get("knowmem_f")
    kept_text = f"{kept['value']:.0f}% [{kept['ci'][0]:.0f}, {kept['ci'][1]:.0f}]" if kept and kept["ci"][0] is not None else "–"
    return (f"| {name} | {g(ref, 'knowmem_f')} | {g(fp, 'knowmem_f')} | {g(q4, 'knowmem_f')} | {g(fp, 'verbmem_f')} | "
            f"{g(q4, 'verbmem_f')} | {g(fp, 'knowmem_r')} | {kept_text} | {evidence} | **{v.label}** | {what} |")


def _finding(natural, constructed, retain_only, world) -> str:
    """What the demo showed, in plain words, from the measured figures and labels (never assumed)."""
    fp, ref = natural.cell("model", "fp"), natural.cell("reference", "fp")
    forgot = max((ref.metrics[m] - fp.metrics[m] for m in ("knowmem_f", "verbmem_f") if m in fp.metrics), default=0)
    v = natural.verdict
    steps = world.settings.get("unlearn_steps")
    stopped = world.settings.get("unlearn_stopped_at")
    how = (f"it forgot up to {forgot:.1f} points in full precision (unlearning stopped at step {stopped}, once it "
           "scored like a model that never saw the forget set)" if stopped else
           f"it forgot up to {forgot:.1f} points in full precision but ran all {steps} steps without scoring like a "
           "model that never saw the forget set")
    controls = (f" The controls, labelled as such: the constructed positive control is **{constructed.verdict.label}** "
                f"({constructed.verdict.worst_spec} {constructed.verdict.evidence()}), the retain-only negative control "
                f"**{retain_only.verdict.label}**.")
    if v.label == "fragile":
        text = f"**The natural unlearning is fragile**: {how}, and {v.worst_spec} brings back {v.evidence()} points."
    elif v.label == "robust":
        text = (f"**At this scale the natural unlearning did not show the effect**: {how}, and no quantizer brings "
                f"back {v.threshold:g} points with 95% confidence (largest: {v.worst_spec} {v.evidence()}). Small "
                "models trained to memorize move further than a 4-bit step when they forget.")
    elif v.label == "not-unlearned":
        text = f"**The natural unlearning did not remove the knowledge**: {how}; {v.summary}."
    elif v.label == "inconclusive":
        text = f"**The audit cannot tell yet for the natural unlearning**: {how}; {v.summary}."
    else:
        text = f"**No verdict for the natural unlearning**: {v.summary}."
    return text + controls


def run_demo(out: Path, *, size: str = "demo", fresh: bool = False, progress: bool = True,
             threads: int | None = None, compute_dtype: str = "auto") -> dict:
    """Build (or reuse) the world under ``out/world`` and audit its models into ``out/<name>/``.
    ``compute_dtype``: what the world's unlearning computes in (:func:`hubaudit.demo.world.build_world`).

    Returns a dict with the reports by name, the world, the wall time and the peak memory.
    """
    from ..audit import audit
    from ..report import check_out_dir
    from .world import build_world

    t0 = time.perf_counter()
    out = check_out_dir(out)
    print(f"hubaudit demo: building the offline world in {out / 'world'} (reused when already built)", flush=True)
    world = build_world(out / "world", size=size, progress=progress, threads=threads, compute_dtype=compute_dtype)
    t_world = time.perf_counter() - t0
    reports = {}
    for name, attr, what in SUBJECTS:
        print(f"\nhubaudit demo: auditing {name} ({what})", flush=True)
        reports[name] = audit(
            getattr(world, attr), reference=world.target, forget=world.forget_dir, specs=DEMO_SPECS,
            out=out / name, store=out / "results.sqlite", fresh=fresh, progress=progress,
        )
    wall = time.perf_counter() - t0
    finding = _finding(reports["unlearned"], reports["constructed"], reports["retain_only"], world)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    lines = [
        "# hubaudit demo",
        "",
        "Each model is audited against the target (the model before unlearning) on the built-in synthetic "
        "forget set. KnowMem and VerbMem are ROUGE-L F1 x 100 (MUSE); `rtn:4` is the paper's per-tensor "
        "round-to-nearest 4-bit.",
        "",
        "| model | target KnowMem f | KnowMem f | KnowMem f, rtn:4 | VerbMem f | VerbMem f, rtn:4 | KnowMem r | "
        "KnowMem f retained [95% CI] | regain the verdict rests on [95% CI], p | verdict | what it is |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(name, what, reports[name]) for name, _, what in SUBJECTS),
        "",
        finding,
        "",
        f"Unlearning setting: {world.settings.get('note', '')}".rstrip(),
        "",
        f"World built or reused in {t_world:.0f} s; whole demo {wall:.0f} s; peak memory {peak / 2**30:.2f} GiB.",
        f"Full reports: {', '.join(str(out / n / 'report.md') for n, _, _ in SUBJECTS)}.",
    ]
    summary = "\n".join(lines) + "\n"
    (out / "demo.md").write_text(summary)
    for name, _, _ in SUBJECTS:
        print(f"\n{name}: {reports[name].verdict.summary}")
    print("\n" + summary)
    return {"reports": reports, "world": world, "seconds": wall, "peak_rss_bytes": peak}
