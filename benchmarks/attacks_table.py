"""The benign fine-tuning attacks on the demo world, raw and calibrated against the retain-only control.

For each attack (default ``finetune:unrelated`` and ``qlora:nf4``) and each audited demo model (``unlearned``,
the natural unlearning, and ``constructed``, the positive control that forgets inside its 4-bit bins), one
``hubaudit.audit`` with ``--control retain_only`` (the model trained on the retain part only, which never saw
the forget facts). The table: the regain on the audited model (raw, as an uncalibrated audit counts it), the
regain the same attack gives the control, the calibrated regain (difference in differences per item, with its
95% interval and Holm p), the verdict without and with the calibration, and the seconds per cell (the attacked
model's cell and the control's: training + evaluation, as measured by the run that computed the cell; a rerun
reads the cells from the store).

    OMP_NUM_THREADS=1 python benchmarks/attacks_table.py                       # builds the demo world (~8 min)
    OMP_NUM_THREADS=1 python benchmarks/attacks_table.py --world DIR           # a world `hubaudit demo` built
    OMP_NUM_THREADS=1 python benchmarks/attacks_table.py --world DIR --specs finetune:unrelated,relearn:steps=20:lr=3e-4

Also writes the table as JSON (``--json``). Metrics: KnowMem forget, VerbMem forget, KnowMem retain (no MIA).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODELS = ("unlearned", "constructed")
CONTROL = "retain_only"


def world_paths(world: str | None) -> dict[str, Path]:
    if world is None:
        from hubaudit.demo import build_world

        w = build_world("hubaudit-demo")
        return {"unlearned": Path(w.unlearned), "constructed": Path(w.constructed), "retain_only": Path(w.retain_only),
                "forget": Path(w.forget_dir)}
    root = Path(world)
    return {**{m: root / m for m in (*MODELS, CONTROL)}, "forget": root / "forget_set"}


def best(changes: dict) -> tuple[str, dict] | None:
    from hubaudit.metrics.scores import verdict_keys

    ms = [m for m in verdict_keys() if m in changes]
    if not ms:
        return None
    m = max(ms, key=lambda k: changes[k]["mean"])
    return m, changes[m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", help="a demo world folder (hubaudit demo's OUT/world); default: build one")
    ap.add_argument("--specs", default="finetune:unrelated,qlora:nf4")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--store", default="attacks_table.sqlite", help="results store (cells reused across runs)")
    ap.add_argument("--json", default=None, help="write the rows here too")
    args = ap.parse_args()

    import hubaudit
    from hubaudit.metrics.scores import label as score_label

    paths = world_paths(args.world)
    rows = []
    for name in args.models.split(","):
        for spec in args.specs.split(","):
            t0 = time.perf_counter()
            rep = hubaudit.audit(str(paths[name]), reference=False, forget=str(paths["forget"]), specs=spec,
                                 control=str(paths[CONTROL]), metrics="knowmem_f,verbmem_f,knowmem_r",
                                 store=args.store, progress=False)
            wall = time.perf_counter() - t0
            d = rep.derived
            key = next(s for s in rep.specs)
            cal = best((d.get("calibrated_changes") or {}).get(key, {}))
            m, ch = cal if cal else (None, None)
            raw = (d.get("changes") or {}).get(key, {}).get(m) if m else None
            tc, cc = rep.cell("model", key), rep.cell("control", key)
            retain = (d.get("retain_effect") or {}).get(key, {}).get("knowmem_r")
            rows.append({
                "model": name, "spec": key, "metric": score_label(m),
                "raw": raw["mean"] if raw else None, "raw_ci": raw["ci"] if raw else None,
                "control": ch["control_mean"] if ch else None,
                "control_counted": ch.get("control_counted") if ch else None,
                "calibrated": ch["mean"] if ch else None, "calibrated_ci": ch["ci"] if ch else None,
                "p_holm": ch["p_holm"] if ch else None,
                "verdict_uncalibrated": d["calibration"]["uncalibrated_verdict"]["label"],
                "verdict_calibrated": rep.verdict.label,
                "retain_effect": retain["mean"] if retain else None,
                "cell_seconds": round(tc.seconds, 1) if tc else None,
                "train_seconds": round(tc.quantize_seconds, 1) if tc else None,
                "control_cell_seconds": round(cc.seconds, 1) if cc else None,
                "reused": bool(tc and tc.reused), "audit_seconds": round(wall, 1),
            })

    def f(x, ci=None):
        if x is None:
            return "–"
        return f"{x:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and ci[0] is not None else "")

    def pval(p):
        return "" if p is None else f", p = {p:.2g}"

    print("| model | attack | metric | regain (raw) [95% CI] | regain of the control (counted) | calibrated [95% CI], p | "
          "KnowMem retain change | verdict raw -> calibrated | s per cell (train), control |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | `{r['spec']}` | {r['metric']} | {f(r['raw'], r['raw_ci'])} | {f(r['control'])} "
              f"({f(r['control_counted'])}) | "
              f"{f(r['calibrated'], r['calibrated_ci'])}{pval(r['p_holm'])} | {f(r['retain_effect'])} | "
              f"{r['verdict_uncalibrated']} -> {r['verdict_calibrated']} | {r['cell_seconds']} ({r['train_seconds']}), "
              f"{r['control_cell_seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
