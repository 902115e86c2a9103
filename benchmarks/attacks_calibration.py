"""False-fragile rate of the recovery attacks with the control calibration on and off, and detection of real regain.

    OMP_NUM_THREADS=1 python benchmarks/attacks_calibration.py --world hubaudit-demo/world \\
        --json benchmarks/results/attacks_calibration.json

Models (built as ``benchmarks/calibration.py`` builds its controls: the demo world's models with independent
Gaussian noise of ``--sigma`` per-tensor 4-bit RTN steps on every quantized weight, a different seed each; the
noise has the size of a quantization error and carries no knowledge):

- negatives (``--negatives``, should never be fragile): the world's ``retain_only`` model, which never saw the
  forget facts. Control: a second noised copy of ``retain_only`` (one for all negatives, its cells computed once);
- positives (``--positives``, should be fragile): the world's natural ``unlearned`` model. Under a fine-tune
  strong enough to recover (the default specs: ``finetune:unrelated:16:lr=3e-4`` and ``qlora:nf4:16:64``,
  ``benchmarks/attacks_table.py``'s strong rows, and ``relearn:steps=20:lr=3e-4``) it regains what it forgot, so
  here it is a positive, not a negative as it is for quantization. Control: ``retain_only`` itself.

About 530 s of CPU on one thread from an empty store (the table in docs/guide/attacks-calibrated.md).

Each model x spec is one ``hubaudit.audit(..., control=...)`` (no reference), so one audit gives both verdicts:
uncalibrated (``derived["calibration"]["uncalibrated_verdict"]``: what the audit says without ``--control``,
derived from the same cells) and calibrated (the report's verdict). The table: fragile count / N with an exact
(Clopper-Pearson) 95% interval for each spec x {not calibrated, calibrated}, negatives and positives, and the cost
per cell (seconds of the cell as the audit measured it, and CPU seconds of the process: on one thread the CPU
time is what the cell would take on an idle core, whatever else the machine runs).

The N models of a row differ by their weight noise only; every audit uses the attack's default seed (a user
runs one seed), so the N outcomes are not independent draws of the attack's randomness, and the interval is
that of N models, not of N fine-tuning runs. Cells are kept in ``--store``: a rerun reuses them, and the JSON is
rewritten after every audit, so an interrupted run leaves its partial figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from calibration import clopper_pearson, dithered  # noqa: E402  (same noise, same interval)

SPECS = "finetune:unrelated:16:lr=3e-4,qlora:nf4:16:64,relearn:steps=20:lr=3e-4"
METRICS = "knowmem_f,verbmem_f"


def audit_row(rep, spec: str, kind: str, name: str, cpu: float, wall: float) -> dict:
    d = rep.derived
    raw = (d.get("changes") or {}).get(spec, {})
    cal = (d.get("calibrated_changes") or {}).get(spec, {})
    tc, cc = rep.cell("model", spec), rep.cell("control", spec)
    return {
        "model": name, "kind": kind, "spec": spec,
        "uncalibrated": d["calibration"]["uncalibrated_verdict"]["label"], "calibrated": rep.verdict.label,
        "calibrated_flag": bool(d["calibration"]["calibrated"].get(spec)),
        "raw": {m: round(v["mean"], 2) for m, v in raw.items()},
        "control_mean": {m: v["control_mean"] for m, v in cal.items()},
        "did": {m: round(v["mean"], 2) for m, v in cal.items()},
        "cell_seconds": round(tc.seconds, 1) if tc and tc.seconds else None,
        "train_seconds": round(tc.quantize_seconds, 1) if tc and tc.quantize_seconds else None,
        "control_cell_seconds": round(cc.seconds, 1) if cc and cc.seconds and not cc.reused else None,
        "reused": bool(tc and tc.reused), "audit_cpu_seconds": round(cpu, 1), "audit_wall_seconds": round(wall, 1),
    }


def summarize(rows: list[dict], specs: list[str]) -> list[dict]:
    out = []
    for spec in specs:
        for kind in ("negative", "positive"):
            rs = [r for r in rows if r["spec"] == spec and r["kind"] == kind]
            if not rs:
                continue
            computed = [r for r in rs if not r["reused"]]
            entry = {"spec": spec, "kind": kind, "n": len(rs)}
            for which in ("uncalibrated", "calibrated"):
                k = sum(r[which] == "fragile" for r in rs)
                lo, hi = clopper_pearson(k, len(rs))
                entry[which] = {"fragile": k, "ci": [round(lo, 3), round(hi, 3)],
                                "labels": {lab: sum(r[which] == lab for r in rs) for lab in sorted({r[which] for r in rs})}}
            entry["cell_seconds"] = (round(sum(r["cell_seconds"] for r in computed) / len(computed), 1)
                                     if computed and all(r["cell_seconds"] for r in computed) else None)
            entry["audit_cpu_seconds"] = (round(sum(r["audit_cpu_seconds"] for r in computed) / len(computed), 1)
                                          if computed else None)
            out.append(entry)
    return out


def table(summary: list[dict]) -> str:
    def rate(e, which):
        s = e[which]
        return f"{s['fragile']}/{e['n']} [{s['ci'][0]:.0%}, {s['ci'][1]:.0%}]"

    lines = ["| attack | models | fragile, not calibrated [95% CI] | fragile, calibrated [95% CI] | "
             "s per cell | CPU s per audit (target's cells) |", "|---|---|---|---|---|---|"]
    for e in summary:
        what = "negatives (retain-only + noise)" if e["kind"] == "negative" else "positives (unlearned + noise)"
        lines.append(f"| `{e['spec']}` | {what} | {rate(e, 'uncalibrated')} | {rate(e, 'calibrated')} | "
                     f"{e['cell_seconds'] if e['cell_seconds'] is not None else '–'} | "
                     f"{e['audit_cpu_seconds'] if e['audit_cpu_seconds'] is not None else '–'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default=None, help="a demo world folder (default: build or reuse hubaudit-demo/world)")
    p.add_argument("--size", choices=["demo", "tiny"], default="demo", help="world size when building one")
    p.add_argument("--specs", default=SPECS)
    p.add_argument("--metrics", default=METRICS)
    p.add_argument("--negatives", type=int, default=12, help="noised retain-only models (never knew)")
    p.add_argument("--positives", type=int, default=4, help="noised unlearned models (regain under a strong fine-tune)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise, in per-tensor 4-bit RTN steps")
    p.add_argument("--work", default=None, help="folder for the noised models and the store (default: WORLD/../attacks-calibration)")
    p.add_argument("--json", default=None, help="write the figures here (rewritten after every audit)")
    args = p.parse_args()

    import torch

    import hubaudit
    from hubaudit.demo.world import build_world

    torch.set_num_threads(1)
    if args.world:  # a world `hubaudit demo` built: its folders as they are (no rebuild on a settings mismatch)
        world_dir = Path(args.world)
        world = SimpleNamespace(**{n: world_dir / n for n in ("unlearned", "retain_only")},
                                forget_dir=world_dir / "forget_set")
        if not all((world_dir / n / "config.json").is_file() for n in ("unlearned", "retain_only")):
            raise SystemExit(f"{world_dir} is not a demo world (no unlearned/ and retain_only/ models)")
    else:
        world_dir = ROOT / "hubaudit-demo" / ("world" if args.size == "demo" else "world-tiny")
        world = build_world(world_dir, size=args.size, progress=False)
    work = Path(args.work) if args.work else world_dir.parent / "attacks-calibration"
    store = work / "results.sqlite"
    specs = [s.strip() for s in args.specs.split(",") if s.strip()]
    t_start, cpu_start = time.perf_counter(), time.process_time()
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix().split("hubaudit/")[-1], *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"hubaudit": hubaudit.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(), "world": str(world_dir), "specs": specs, "metrics": args.metrics,
        "sigma": args.sigma, "negatives": args.negatives, "positives": args.positives,
    }
    print(f"hubaudit attacks calibration: {meta['versions']}, world {world_dir}, specs {specs}, "
          f"{args.negatives} negatives, {args.positives} positives", flush=True)
    ctl_negative = dithered(Path(world.retain_only), work / "retain_only-control", args.sigma, seed=999)
    models = ([("negative", f"retain_only-dither{i}", Path(world.retain_only), ctl_negative, 2000 + i)
               for i in range(args.negatives)]
              + [("positive", f"unlearned-dither{i}", Path(world.unlearned), Path(world.retain_only), 3000 + i)
                 for i in range(args.positives)])
    rows: list[dict] = []

    def write():
        if args.json:
            summary = summarize(rows, specs)
            Path(args.json).write_text(json.dumps({**meta, "seconds": round(time.perf_counter() - t_start),
                                                   "cpu_seconds": round(time.process_time() - cpu_start),
                                                   "summary": summary, "rows": rows}, indent=1) + "\n")

    # spec by spec, negatives and positives interleaved: a partial run has whole rows of the first specs
    order = sorted(models, key=lambda m: (m[4] % 1000, m[0]))
    for spec in specs:
        for kind, name, base, control, seed in order:
            model = dithered(base, work / name, args.sigma, seed=seed)
            c0, w0 = time.process_time(), time.perf_counter()
            rep = hubaudit.audit(str(model), reference=False, forget=world.forget_dir, specs=spec, control=str(control),
                                 metrics=args.metrics, store=store, progress=False)
            row = audit_row(rep, spec, kind, name, time.process_time() - c0, time.perf_counter() - w0)
            rows.append(row)
            print(f"  {kind:<8} {name:<22} {spec:<30} {row['uncalibrated']:>12} -> {row['calibrated']:<12} "
                  f"raw {row['raw']} calibrated {row['did']} control {row['control_mean']} "
                  f"cpu {row['audit_cpu_seconds']} s", flush=True)
            write()
    summary = summarize(rows, specs)
    print("\n" + table(summary))
    print(f"\n{time.perf_counter() - t_start:.0f} s wall, {time.process_time() - cpu_start:.0f} s CPU")
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
