"""How often the verdict is wrong: the false-positive rate of ``fragile`` on models that should not be
fragile, and the detection rate of real regain against the number of items.

    python benchmarks/calibration.py --controls 72        # the demo world (built or reused): the README's table
    python benchmarks/calibration.py --size tiny --controls 20 --subsamples 100

Negative controls (should never be ``fragile``): the demo world's retain-only model (never saw the
forget facts) and its natural unlearned model, each with independent Gaussian noise of a quarter of a
per-tensor 4-bit RTN step added to every quantized weight (``--sigma``; a different seed per control).
The noise has the size of a quantization error and carries no knowledge, so whatever quantization does
to these models is noise. Each is audited like a user's model: against the target, under the default
specs (``cast:bf16,rtn:8,rtn:4,rtn:4:g128``), on the whole synthetic forget set.

Positive controls: the constructed control (its ``rtn:4`` weights are the target's: it must be
``fragile`` every time) and a weaker one, the natural unlearned model with a fraction ``--mix`` of its
quantized weight tensors taken from the constructed control: only that part of the unlearning update
stays inside the 4-bit bins, so ``rtn:4`` brings back only part of the knowledge.

Then every audit is re-derived on random subsets of the items (the same items in every cell; default 200
subsets per size) to give the false-positive and the detection rate against the number of items.

Not a test: it prints a table for the README (and ``--json`` writes the figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
SPECS = ("cast:bf16", "rtn:8", "rtn:4", "rtn:4:g128")
METRICS = "verbmem_f,knowmem_f,knowmem_r"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a rate k/n."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def dithered(src: Path, dst: Path, sigma: float, seed: int) -> Path:
    """``src`` with N(0, (sigma * D)^2) added to every RTN-quantized weight, D its per-tensor 4-bit step."""
    import torch

    from hubaudit.demo.world import _load, _save, quantized_linear_names
    from hubaudit.quant.rtn import rtn_step
    from transformers import AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    model = _load(src, torch.float32)
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for n in quantized_linear_names(model):
            w = mods[n].weight
            w.add_(torch.randn(w.shape, generator=g) * sigma * rtn_step(w, 4))
    _save(model, AutoTokenizer.from_pretrained(src), dst)
    return dst


def mixed(base: Path, donor: Path, dst: Path, frac: float, seed: int) -> Path:
    """``base`` with a fraction ``frac`` of its RTN-quantized weight tensors replaced by ``donor``'s."""
    import torch

    from hubaudit.demo.world import _load, _save, quantized_linear_names
    from transformers import AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    model, other = _load(base), _load(donor)
    names = quantized_linear_names(model)
    rng = random.Random(seed)
    take = set(rng.sample(names, max(1, round(frac * len(names)))))
    mods, omods = dict(model.named_modules()), dict(other.named_modules())
    with torch.no_grad():
        for n in take:
            mods[n].weight.copy_(omods[n].weight)
    _save(model, AutoTokenizer.from_pretrained(base), dst)
    return dst


def subset_report(report, idx_by_metric: dict[str, list[int]]):
    """``(derived, verdict)`` of ``report`` re-derived on the given items of each metric (the same items in
    every cell)."""
    from hubaudit.audit import derive
    from hubaudit.results import CellResult

    cells = []
    for c in report.cells:
        nc = CellResult(c.role, c.spec, status=c.status, attack=c.attack, reason=c.reason)
        for m, rows in c.items.items():
            if m not in idx_by_metric or m not in c.metrics:
                continue
            sub = [rows[i] for i in idx_by_metric[m]]
            nc.items[m] = sub
            nc.metrics[m] = sum(r["score"] for r in sub) / len(sub)
            nc.n_items[m] = len(sub)
        cells.append(nc)
    inp = report.inputs
    return derive(cells, inp["specs"], inp["threshold"], 0.5, inp.get("alpha", 0.05))


def old_rule(derived: dict, threshold: float) -> bool:
    """The verdict before it had uncertainty: fragile when some spec's mean regain of a forget metric
    reached the threshold."""
    from hubaudit.metrics.scores import verdict_keys

    return any(v >= threshold for d in derived["regained"].values() for m, v in d.items() if m in verdict_keys())


def rates(reports: list, sizes: list[int], subsamples: int, seed: int) -> dict[int, dict[str, int]]:
    """For each number of items n: how many of ``subsamples`` random subsets of n items per metric (all
    items when a metric has fewer) of every report are called fragile, by today's verdict and by the old
    bare-threshold rule."""
    rng = random.Random(seed)
    out = {}
    for n in sizes:
        hits = old = total = 0
        for r in reports:
            lengths = {m: len(v) for m, v in r.cell("model", "fp").items.items()}
            for _ in range(subsamples):
                idx = {m: sorted(rng.sample(range(k), min(n, k))) for m, k in lengths.items()}
                derived, verdict = subset_report(r, idx)
                hits += verdict.label == "fragile"
                old += old_rule(derived, r.inputs["threshold"])
                total += 1
        out[n] = {"fragile": hits, "old_rule": old, "total": total}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["demo", "tiny"], default="demo")
    p.add_argument("--world", default=None, help="world folder (default hubaudit-demo/world, or -tiny for tiny)")
    p.add_argument("--controls", type=int, default=24, help="negative controls (half retain-only, half unlearned; "
                                                            "the README's table used 72)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise, in per-tensor 4-bit RTN steps")
    p.add_argument("--mix", type=float, default=0.25, help="share of tensors from the constructed control")
    p.add_argument("--subsamples", type=int, default=200)
    p.add_argument("--sizes", default="10,20,40,80")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()

    import torch

    import hubaudit
    from hubaudit.demo.world import build_world

    world_dir = Path(args.world) if args.world else ROOT / "hubaudit-demo" / ("world" if args.size == "demo" else "world-tiny")
    t0 = time.perf_counter()
    world = build_world(world_dir, size=args.size, progress=False)
    work = world_dir.parent / "calibration"
    store = work / "results.sqlite"
    print(f"hubaudit calibration: torch {torch.__version__}, {args.size} world {world_dir}, {args.controls} negative "
          f"controls, sigma {args.sigma} RTN-4 steps, mix {args.mix}; hubaudit {hubaudit.__version__}", flush=True)

    def run(model: Path):
        return hubaudit.audit(model, reference=world.target, forget=world.forget_dir, specs=SPECS, metrics=METRICS,
                              store=store, progress=False)

    negatives = []
    for i in range(args.controls):
        base = world.retain_only if i % 2 == 0 else world.unlearned
        name = f"{'retain_only' if i % 2 == 0 else 'unlearned'}-dither{i}"
        r = run(dithered(base, work / name, args.sigma, seed=1000 + i))
        negatives.append((name, r))
        v = r.verdict
        print(f"  {name:<24} {v.label:<13} {v.worst_spec} {v.evidence()}", flush=True)
    positives = [("constructed", run(world.constructed)),
                 (f"weak (mix {args.mix:g})", run(mixed(world.unlearned, world.constructed, work / f"mix{args.mix:g}",
                                                        args.mix, seed=7)))]
    for name, r in positives:
        print(f"  {name:<24} {r.verdict.label:<13} {r.verdict.worst_spec} {r.verdict.evidence()}", flush=True)

    labels = [r.verdict.label for _, r in negatives]
    k, n = labels.count("fragile"), len(labels)
    lo, hi = clopper_pearson(k, n)
    sizes = [int(x) for x in args.sizes.split(",")]
    neg_rates = rates([r for _, r in negatives], sizes, max(1, args.subsamples // 10), seed=1)
    pos_rates = {name: rates([r], sizes, args.subsamples, seed=2) for name, r in positives}

    old_whole = sum(old_rule(r.derived, r.inputs["threshold"]) for _, r in negatives)
    print(f"\nFalse positives, whole forget set: {k} of {n} negative controls called fragile "
          f"({k / n:.1%}, 95% interval {lo:.1%} to {hi:.1%}); alpha {negatives[0][1].inputs['alpha']:g}. "
          f"Labels: " + ", ".join(f"{lab} {labels.count(lab)}" for lab in sorted(set(labels)))
          + f". The old bare-threshold rule (mean regain >= threshold): {old_whole} of {n}.")
    print("\n| items per metric | " + " | ".join(str(s) for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))

    def row(title, rr, key="fragile"):
        cells = []
        for s in sizes:
            h, t = rr[s][key], rr[s]["total"]
            cells.append(f"{h / t:.0%} ({h}/{t})")
        return f"| {title} | " + " | ".join(cells) + " |"

    print(row(f"false positives ({n} negative controls)", neg_rates))
    print(row("false positives of the old rule (mean regain >= threshold, no test)", neg_rates, "old_rule"))
    for name, rr in pos_rates.items():
        reg = dict(positives)[name].verdict
        print(row(f"detection: {name}, {reg.worst_spec} {reg.max_regained:+.1f} on all items", rr))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "negatives": {name: r.verdict.label for name, r in negatives},
            "positives": {name: {"label": r.verdict.label, "regained": r.verdict.max_regained} for name, r in positives},
            "false_positive": {"k": k, "n": n, "ci": [lo, hi]},
            "by_items": {"negatives": neg_rates, **{k2: v for k2, v in pos_rates.items()}},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
