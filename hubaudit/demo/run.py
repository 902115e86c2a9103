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
    worst = f"{v.worst_spec} {v.max_regained:+.1f}" if v.max_regained is not None else "–"
    return (f"| {name} | {g(ref, 'knowmem_f')} | {g(fp, 'knowmem_f')} | {g(q4, 'knowmem_f')} | {g(fp, 'verbmem_f')} | "
            f"{g(q4, 'verbmem_f')} | {g(fp, 'knowmem_r')} | {worst} | **{v.label}** | {what} |")


def _finding(natural, constructed) -> str:
    """What the demo showed, in plain words, from the measured figures (never assumed)."""
    fp, ref = natural.cell("model", "fp"), natural.cell("reference", "fp")
    forgot = max((ref.metrics[m] - fp.metrics[m] for m in ("knowmem_f", "verbmem_f") if m in fp.metrics), default=0)
    v = natural.verdict
    if v.label == "fragile":
        return (f"**The natural unlearning is fragile**: it forgot up to {forgot:.1f} points in full precision, and "
                f"{v.worst_spec} brings back {v.max_regained:.1f} points of {v.worst_metric}.")
    how = ("it forgot" if forgot >= natural.verdict.threshold else "it barely forgot") + f" ({forgot:.1f} points)"
    return (f"**At this scale the natural unlearning did not show the effect**: {how} in full precision, and no "
            f"quantizer brought back {v.threshold:g} points (largest: {v.worst_spec}, {v.max_regained:+.1f}). Small "
            f"models trained to memorize move further than a 4-bit step when they forget. The constructed control "
            f"(labelled as such) shows the auditor catching a fragile model: verdict "
            f"**{constructed.verdict.label}**, {constructed.verdict.worst_spec} brings back "
            f"{constructed.verdict.max_regained:.1f} points.")


def run_demo(out: Path, *, size: str = "demo", fresh: bool = False, progress: bool = True) -> dict:
    """Build (or reuse) the world under ``out/world`` and audit its models into ``out/<name>/``.

    Returns a dict with the reports by name, the world, the wall time and the peak memory.
    """
    from ..audit import audit
    from ..report import check_out_dir
    from .world import build_world

    t0 = time.perf_counter()
    out = check_out_dir(out)
    print(f"hubaudit demo: building the offline world in {out / 'world'} (reused when already built)", flush=True)
    world = build_world(out / "world", size=size, progress=progress)
    t_world = time.perf_counter() - t0
    reports = {}
    for name, attr, what in SUBJECTS:
        print(f"\nhubaudit demo: auditing {name} ({what})", flush=True)
        reports[name] = audit(
            getattr(world, attr), reference=world.target, forget=world.forget_dir, specs=DEMO_SPECS,
            out=out / name, store=out / "results.sqlite", fresh=fresh, progress=progress,
        )
    wall = time.perf_counter() - t0
    finding = _finding(reports["unlearned"], reports["constructed"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    lines = [
        "# hubaudit demo",
        "",
        "Each model is audited against the target (the model before unlearning) on the built-in synthetic "
        "forget set. KnowMem and VerbMem are ROUGE-L F1 x 100 (MUSE); `rtn:4` is the paper's per-tensor "
        "round-to-nearest 4-bit.",
        "",
        "| model | target KnowMem f | KnowMem f | KnowMem f, rtn:4 | VerbMem f | VerbMem f, rtn:4 | KnowMem r | "
        "most regained | verdict | what it is |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
    print("\n" + reports["unlearned"].verdict.summary)
    print("\n" + summary)
    return {"reports": reports, "world": world, "seconds": wall, "peak_rss_bytes": peak}
