"""Sequential audits (``--sequential``) against the full audit: labels, tokens, items and wall time on the demo
world, and the false-fragile rate under optional stopping on the calibration benchmark's negative controls.

    python benchmarks/sequential.py                       # demo world (built or reused), 8 controls x 10 orders
    python benchmarks/sequential.py --size tiny --controls 4 --orders 5 --json seq.json

1. Demo world: each of its three models (unlearned, constructed, retain_only) audited against the target
   under the demo's specs, once in full and once with ``sequential=True`` (seed 0), each with no results store
   (every cell computed, as a first audit of a Hub model): label, tokens, items of the verdict's metrics and
   wall time.
2. Calibration: the negative controls of ``benchmarks/calibration.py`` (the retain-only and unlearned models
   with quantization-sized weight noise; they should never be fragile), audited in full (filling a store),
   then sequentially under ``--orders`` draw orders (seeds) each: the sequential audit reads every item from
   the store, so each order replays exactly what a sequential audit with that seed decides, at no model cost.
   The false-fragile rate is over controls x orders; the positive controls (constructed, weak mix) give the
   detection rate and the items it needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def items_used(report) -> int:
    """Items of the verdict's metrics evaluated over the audited model's and the original's cells."""
    from hubaudit.metrics.scores import verdict_keys

    return sum(n for c in report.cells if c.status == "ok" for m, n in c.n_items.items() if m in verdict_keys())


def tokens(report) -> int:
    return sum(c.tokens for c in report.cells)


def demo_table(world, specs) -> list[dict]:
    import hubaudit
    from hubaudit.demo.run import SUBJECTS

    rows = []
    for name, attr, _ in SUBJECTS:
        model = getattr(world, attr)
        out = {"model": name}
        for mode in ("full", "sequential"):
            t0 = time.perf_counter()
            r = hubaudit.audit(model, reference=world.target, forget=world.forget_dir, specs=specs, store=False,
                               progress=False, sequential=mode == "sequential")
            out[mode] = {"label": r.verdict.label, "tokens": tokens(r), "items": items_used(r),
                         "seconds": round(time.perf_counter() - t0, 1), "worst": f"{r.verdict.worst_spec} {r.verdict.evidence()}",
                         "summary": r.verdict.summary}
            if mode == "sequential":
                out[mode]["pairs"] = {s: {m: [p["decision"], p["n"], p["population"], p.get("decided_by")]
                                          for m, p in d.items()} for s, d in r.derived["sequential"]["pairs"].items()}
            print(f"  {name:<12} {mode:<10} {out[mode]['label']:<12} tokens {out[mode]['tokens']:>9,} items "
                  f"{out[mode]['items']:>5} {out[mode]['seconds']:>6.1f} s  {out[mode]['worst']}", flush=True)
        rows.append(out)
    return rows


def calibration(world, work: Path, controls: int, orders: int, sigma: float, mix: float, dump=None) -> dict:
    import hubaudit
    from calibration import METRICS, SPECS, clopper_pearson, dithered, mixed

    store = work / "results.sqlite"

    def run(model: Path, **kw):
        return hubaudit.audit(model, reference=world.target, forget=world.forget_dir, specs=SPECS, metrics=METRICS,
                              store=store, progress=False, **kw)

    models = []
    for i in range(controls):
        base = world.retain_only if i % 2 == 0 else world.unlearned
        name = f"{'retain_only' if i % 2 == 0 else 'unlearned'}-dither{i}"
        models.append((name, dithered(base, work / name, sigma, seed=1000 + i), False))
    models.append(("constructed", world.constructed, True))
    models.append((f"weak (mix {mix:g})", mixed(world.unlearned, world.constructed, work / f"mix{mix:g}", mix, seed=7), True))
    out = {"negatives": {}, "positives": {}}
    for name, path, positive in models:
        full = run(path)
        seq = []
        for s in range(orders):
            r = run(path, sequential=True, seed=s)
            n = sum(p["n"] for d in r.derived["sequential"]["pairs"].values() for p in d.values())
            total = sum(p["population"] for d in r.derived["sequential"]["pairs"].values() for p in d.values())
            seq.append({"label": r.verdict.label, "pair_items": n, "pair_items_all": total})
        labels = [x["label"] for x in seq]
        share = sum(x["pair_items"] for x in seq) / max(1, sum(x["pair_items_all"] for x in seq))
        (out["positives"] if positive else out["negatives"])[name] = {
            "full": full.verdict.label, "sequential": {lab: labels.count(lab) for lab in sorted(set(labels))},
            "pair_items_share": round(share, 3)}
        if dump:
            dump(out)
        print(f"  {name:<24} full {full.verdict.label:<12} sequential {dict((lab, labels.count(lab)) for lab in sorted(set(labels)))} "
              f"items {share:.0%} of the full audit's pairs", flush=True)
    k = sum(v["sequential"].get("fragile", 0) for v in out["negatives"].values())
    n = sum(sum(v["sequential"].values()) for v in out["negatives"].values())
    kf = sum(v["full"] == "fragile" for v in out["negatives"].values())
    lo, hi = clopper_pearson(k, n)
    out["false_fragile"] = {"sequential": {"k": k, "n": n, "ci": [lo, hi]},
                            "full": {"k": kf, "n": len(out["negatives"])}}
    return out


def replay(world, store: Path, specs, orders: int) -> dict:
    """The demo's three models from a store that holds their full audits: the full audit (read back) and
    sequential audits under ``orders`` draw orders (seeds), which read every item from the store."""
    from hubaudit.demo.run import SUBJECTS

    return replay_subjects([(name, getattr(world, attr), dict(reference=world.target, forget=world.forget_dir,
                                                              specs=specs)) for name, attr, _ in SUBJECTS], store, orders)


def zoo_subjects(cache: Path) -> list[tuple]:
    """Every audit under a ``benchmarks/real_world.py`` cache (``CACHE/audits/NAME/report.json``), with the
    parameters it ran with, in the zoo's order."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_world import _zoo_rank

    out = []
    for rp in sorted((cache / "audits").glob("*/report.json"), key=lambda p: _zoo_rank(p.parent.name)):
        inp = json.loads(rp.read_text())["inputs"]
        out.append((rp.parent.name, inp["model"]["path"], dict(
            reference=(inp.get("reference") or {}).get("path") or False, forget=inp["forget"]["source"],
            specs=",".join(inp["specs"]), metrics=",".join(inp["metrics"]))))
    return out


def replay_subjects(subjects: list[tuple], store: Path, orders: int) -> dict:
    """``(name, model, audit keywords)`` whose full audits are in ``store``: each full audit (read back) and
    sequential audits under ``orders`` draw orders (seeds), which read every item from the store, so each
    order replays exactly what a sequential audit with that seed decides, at no model cost. Tokens of a
    sequential audit are estimated from the stored ones: each (cell, metric)'s full tokens x items drawn /
    items in the set (the metrics it evaluates on every item: their full tokens); seconds likewise from the
    stored compute seconds (metrics, and quantization once per cell it evaluated)."""
    import hubaudit
    from hubaudit.forget import load_forget_set
    from hubaudit.store import ResultStore

    st = ResultStore(store)
    out = {}
    for name, model, kw in subjects:
        kw = dict(kw, store=st, progress=False)
        fs_hash = load_forget_set(kw["forget"]).content_hash()
        full = hubaudit.audit(model, **kw)
        ids = {"model": full.inputs["model"]["identity"]}
        if full.inputs.get("reference"):
            ids["reference"] = full.inputs["reference"]["identity"]
        tok, quant = {}, {}
        for role, ident in ids.items():
            for _, spec, _, metric, _, rec in st.records(ident, fs_hash):
                if metric == "_cell":
                    quant[(role, spec)] = rec.get("quantize_seconds") or 0.0
                else:
                    tok[(role, spec, metric)] = (rec.get("tokens", 0), rec.get("n", 0), rec.get("seconds") or 0.0)
        full_tokens = sum(c.tokens for c in full.cells)
        cells = {(c.role, c.spec) for c in full.cells if c.status == "ok"}  # the store may hold other specs' too
        full_seconds = (sum(t[2] for k, t in tok.items() if k[:2] in cells)
                        + sum(q for k, q in quant.items() if k in cells))
        runs = []
        for seed in range(orders):
            r = hubaudit.audit(model, sequential=True, seed=seed, **kw)
            est = secs = 0.0
            for c in r.cells:
                if c.status == "ok" and c.n_items:
                    secs += quant.get((c.role, c.spec), 0.0)
                for m, n in c.n_items.items():
                    t, n_all, sec = tok.get((c.role, c.spec, m), (0, 0, 0.0))
                    est += t * (n / n_all if n_all else 1)
                    secs += sec * (n / n_all if n_all else 1)
            pairs = r.derived["sequential"]["pairs"]
            runs.append({"label": r.verdict.label, "tokens": est, "seconds": secs,
                         "pair_items": sum(p["n"] for d in pairs.values() for p in d.values()),
                         "pair_population": sum(p["population"] for d in pairs.values() for p in d.values())})
        labels = [x["label"] for x in runs]
        out[name] = {"full": full.verdict.label, "full_tokens": full_tokens, "full_seconds": round(full_seconds, 1),
                     "sequential": {lab: labels.count(lab) for lab in sorted(set(labels))},
                     "tokens_mean": sum(x["tokens"] for x in runs) / orders,
                     "tokens_max": max(x["tokens"] for x in runs),
                     "seconds_mean": round(sum(x["seconds"] for x in runs) / orders, 1),
                     "pair_items_share": sum(x["pair_items"] for x in runs) / max(1, sum(x["pair_population"] for x in runs))}
        o = out[name]
        print(f"| {name} | {o['full']} | {o['sequential']} | {o['tokens_mean']:,.0f} / {full_tokens:,} "
              f"({o['tokens_mean'] / max(1, full_tokens):.0%}; worst order {o['tokens_max'] / max(1, full_tokens):.0%}) | "
              f"{o['pair_items_share']:.0%} | {o['seconds_mean']:.0f} s / {full_seconds:.0f} s |", flush=True)
    st.close()
    return out


def tables(res: dict) -> str:
    """The docs' tables (docs/guide/sequential.md) from a saved JSON (``--tables FILE``)."""
    out = []
    meta = res.get("meta", {})
    if "replay" in res:
        secs = all("seconds_mean" in o for o in res["replay"].values())
        out += ["| model | full audit | sequential (labels over draw orders) | tokens, sequential / full | items of the pairs drawn |"
                + (" compute seconds, sequential / full |" if secs else ""), "|---|---|---|---|---|" + ("---|" if secs else "")]
        for name, o in res["replay"].items():
            labels = ", ".join(f"{k} x{v}" for k, v in o["sequential"].items())
            out.append(f"| {name} | {o['full']} | {labels} | {o['tokens_mean']:,.0f} / {o['full_tokens']:,} "
                       f"({o['tokens_mean'] / o['full_tokens']:.0%}) | {o['pair_items_share']:.0%} |"
                       + (f" {o['seconds_mean']:,.0f} / {o['full_seconds']:,.0f} |" if secs else ""))
        t = res.get("replay_total")
        if t:
            out.append(f"| {'all three' if len(res['replay']) == 3 else 'all'} | | | {t['sequential_tokens_mean']:,.0f} / "
                       f"{t['full_tokens']:,} ({t['sequential_tokens_mean'] / t['full_tokens']:.0%}) | |" + (" |" if secs else ""))
        out.append("")
    c = res.get("calibration") or res.get("calibration_partial")
    if c:
        out += ["| control | kind | full audit | sequential (labels over draw orders) | items of the pairs drawn |",
                "|---|---|---|---|---|"]
        for kind, group in (("negative", c.get("negatives", {})), ("positive", c.get("positives", {}))):
            for name, o in group.items():
                labels = ", ".join(f"{k} x{v}" for k, v in o["sequential"].items())
                out.append(f"| {name} | {kind} | {o['full']} | {labels} | {o['pair_items_share']:.0%} |")
        ff = c.get("false_fragile")
        if ff:
            s_ = ff["sequential"]
            out.append("")
            out.append(f"False fragile, sequential: {s_['k']} of {s_['n']} (control, draw order) runs, 95% Clopper-Pearson "
                       f"interval {s_['ci'][0]:.1%} to {s_['ci'][1]:.1%}; full audit: {ff['full']['k']} of "
                       f"{ff['full']['n']} controls.")
    if meta:
        out.append("")
        out.append(f"Command: `{meta.get('command')}`, {meta.get('date')}; hubaudit {meta.get('hubaudit')}, torch "
                   f"{meta.get('torch')}, transformers {meta.get('transformers')}, {meta.get('threads')} thread(s).")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["demo", "tiny"], default="demo")
    p.add_argument("--world", default=None, help="world folder (default hubaudit-demo/world, or -tiny for tiny)")
    p.add_argument("--controls", type=int, default=8, help="negative controls (half retain-only, half unlearned)")
    p.add_argument("--orders", type=int, default=10, help="draw orders (seeds) per control")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--mix", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=None, help="the threads the world was built with (default 2)")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--skip-calibration", action="store_true")
    p.add_argument("--replay", metavar="STORE", default=None,
                   help="a results store holding the demo models' full audits: replay sequential audits over "
                        "--orders draw orders from it (no model is evaluated), instead of the two parts above")
    p.add_argument("--replay-orders", type=int, default=None, help="draw orders per model in --replay (default --orders)")
    p.add_argument("--real", metavar="CACHE", default=None,
                   help="a benchmarks/real_world.py cache (~/.cache/hubaudit-bench/real_world-medium): replay sequential "
                        "audits of every real-LLM zoo model from its store (--replay-orders orders each) and exit")
    p.add_argument("--json", default=None)
    p.add_argument("--tables", metavar="JSON", default=None, help="print the docs' tables from a saved --json and exit")
    args = p.parse_args()
    if args.tables:
        print(tables(json.loads(Path(args.tables).read_text())))
        return 0

    import torch

    import hubaudit
    from hubaudit.demo.run import DEMO_SPECS
    from hubaudit.demo.world import build_world

    if args.real:
        import platform
        import transformers

        cache = Path(args.real).expanduser()
        ro = args.replay_orders or args.orders
        print(f"Real-LLM zoo {cache}, replayed from its store, {ro} draw orders per model:")
        print("| model | full audit | sequential (labels over orders) | tokens (seq mean / full) | pair items drawn | "
              "compute seconds (seq / full) |")
        print("|---|---|---|---|---|---|")
        res = {"meta": {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "hubaudit": hubaudit.__version__, "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "zoo": str(cache)}}
        res["replay"] = replay_subjects(zoo_subjects(cache), cache / "store.sqlite", ro)
        full = sum(o["full_tokens"] for o in res["replay"].values())
        seq = sum(o["tokens_mean"] for o in res["replay"].values())
        res["replay_total"] = {"sequential_tokens_mean": seq, "full_tokens": full}
        print(f"| all | | | {seq:,.0f} / {full:,} ({seq / full:.0%}) | | |")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        return 0

    world_dir = Path(args.world) if args.world else ROOT / "hubaudit-demo" / ("world" if args.size == "demo" else "world-tiny")
    world = build_world(world_dir, size=args.size, progress=False, threads=args.threads)
    import platform
    import transformers

    res: dict = {"meta": {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          "hubaudit": hubaudit.__version__, "torch": torch.__version__,
                          "transformers": transformers.__version__, "python": platform.python_version(),
                          "threads": torch.get_num_threads(), "world": world.settings.get("precision")}}

    def save(partial=None):
        if args.json:
            if partial is not None:
                res["calibration_partial"] = partial
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))

    print(f"hubaudit sequential benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, {args.size} "
          f"world {world_dir}; hubaudit {hubaudit.__version__}", flush=True)
    if args.replay:
        ro = args.replay_orders or args.orders
        print(f"Replay from {args.replay}, {ro} draw orders per model:")
        print("| model | full audit | sequential (labels over orders) | tokens (seq mean / full) | pair items drawn |")
        print("|---|---|---|---|---|")
        res["replay"] = replay(world, Path(args.replay), DEMO_SPECS, ro)
        save()
        full = sum(o["full_tokens"] for o in res["replay"].values())
        seq = sum(o["tokens_mean"] for o in res["replay"].values())
        print(f"| all three | | | {seq:,.0f} / {full:,} ({seq / full:.0%}) | |")
        res["replay_total"] = {"sequential_tokens_mean": seq, "full_tokens": full}
        args.skip_demo = True
    if not args.skip_demo:
        print("Demo world, full vs sequential (no store):")
        res["demo"] = demo_table(world, DEMO_SPECS)
        print("\n| model | full audit | sequential | tokens (seq / full) | items (seq / full) | wall time (seq / full) |")
        print("|---|---|---|---|---|---|")
        for r in res["demo"]:
            f, s = r["full"], r["sequential"]
            print(f"| {r['model']} | {f['label']} | {s['label']} | {s['tokens']:,} / {f['tokens']:,} "
                  f"({s['tokens'] / f['tokens']:.0%}) | {s['items']} / {f['items']} | {s['seconds']:.0f} s / {f['seconds']:.0f} s |")
        ft = sum(r["full"]["tokens"] for r in res["demo"])
        st = sum(r["sequential"]["tokens"] for r in res["demo"])
        print(f"| all three | | | {st:,} / {ft:,} ({st / ft:.0%}) | | |")
    if not args.skip_calibration:
        work = world_dir.parent / "calibration"
        print(f"\nCalibration: {args.controls} negative controls x {args.orders} draw orders")
        res["calibration"] = c = calibration(world, work, args.controls, args.orders, args.sigma, args.mix, dump=save)
        res.pop("calibration_partial", None)
        ff = c["false_fragile"]["sequential"]
        print(f"\nFalse fragile, sequential: {ff['k']} of {ff['n']} (control, order) runs ({ff['k'] / max(1, ff['n']):.1%}, "
              f"95% interval {ff['ci'][0]:.1%} to {ff['ci'][1]:.1%}); full audit: {c['false_fragile']['full']['k']} of "
              f"{c['false_fragile']['full']['n']} controls; alpha 0.05")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
