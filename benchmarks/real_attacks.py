"""The attacks people run, on the real-LLM zoo, raw and calibrated against the model that never read the articles.

    OMP_NUM_THREADS=1 python benchmarks/real_attacks.py             # after `python benchmarks/real_world.py --medium`
    OMP_NUM_THREADS=1 python benchmarks/real_attacks.py --render    # the table from the committed JSON

For each audited model of the medium SmolLM2 zoo (default ``npo_klr-lr0.0001``, the model that really unlearned,
and ``base``, SmolLM2 itself, which never read the articles: a negative) and each attack (``finetune:unrelated``,
``qlora:nf4``, ``ablate:direction``, ``probe:logit-lens``), one ``hubaudit audit`` against ``target`` (the
original, which ``ablate:direction`` needs) with ``--control retain-only`` (fine-tuned on the retain articles
only). Per row: the regain the verdict would count without the control (raw, with its 95% interval), what the
same attack does to the control, the calibrated regain (clipped difference in differences, with its interval
and Holm p), the verdict without and with the calibration, the change of the retain metric, and the seconds per
cell. Cells come from the zoo's results store (``--store``), so a rerun computes only what is missing.

Writes ``benchmarks/results/real_attacks.json`` (rows plus the command, date, CPU and versions).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "real_attacks.json"
SPECS = ("finetune:unrelated", "qlora:nf4", "ablate:direction", "probe:logit-lens")
METRICS = "verbmem_f,es_f,prob_f,knowmem_r"


def best(changes: dict) -> tuple[str, dict] | None:
    """The (metric, change) with the largest mean among the verdict's metrics."""
    return max(changes.items(), key=lambda x: x[1]["mean"]) if changes else None


def row(name: str, spec: str, rep, wall: float) -> dict:
    from hubaudit.metrics.scores import label

    d = rep.derived
    cal = best((d.get("calibrated_changes") or {}).get(spec, {}))
    raw_all = (d.get("changes") or {}).get(spec, {})
    m, ch = cal if cal else (best(raw_all) or (None, None))
    raw = raw_all.get(m) if m else None
    tc, cc = rep.cell("model", spec), rep.cell("control", spec)
    retain = (d.get("retain_effect") or {}).get(spec, {}).get("knowmem_r")
    unc = ((d.get("calibration") or {}).get("uncalibrated_verdict") or {}).get("label", rep.verdict.label)
    return {
        "model": name, "spec": spec, "metric": label(m) if m else None,
        "status": tc.status if tc else "not run", "reason": (tc.reason or "")[:200] if tc else None,
        "raw": raw["mean"] if raw else None, "raw_ci": raw["ci"] if raw else None,
        "control": ch.get("control_mean") if cal else None, "control_counted": ch.get("control_counted") if cal else None,
        "calibrated": ch["mean"] if cal else None, "calibrated_ci": ch["ci"] if cal else None,
        "p_holm": ch.get("p_holm") if cal else None, "n": ch.get("n") if ch else None,
        "verdict_uncalibrated": unc, "verdict_calibrated": rep.verdict.label,
        "verdict_summary": rep.verdict.summary,
        "retain_effect": retain["mean"] if retain else None,
        "cell_seconds": round(tc.seconds, 1) if tc else None, "control_cell_seconds": round(cc.seconds, 1) if cc else None,
        "reused": bool(tc and tc.reused), "audit_seconds": round(wall, 1),
    }


def render(rows: list[dict]) -> str:
    def f(x, ci=None):
        if x is None:
            return "–"
        return f"{x:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and ci[0] is not None else "")

    lines = ["| model | attack | metric | regain, raw [95% CI] | the control's regain (counted) | calibrated [95% CI], p "
             "| KnowMem retain change | verdict raw -> calibrated | s per cell, control |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | `{r['spec']}` | – | {r['status']}: {r['reason']} | | | | | |")
            continue
        p = "" if r["p_holm"] is None else f", p = {r['p_holm']:.2g}"
        lines.append(f"| {r['model']} | `{r['spec']}` | {r['metric']} | {f(r['raw'], r['raw_ci'])} | {f(r['control'])} "
                     f"({f(r['control_counted'])}) | {f(r['calibrated'], r['calibrated_ci'])}{p} | {f(r['retain_effect'])} | "
                     f"{r['verdict_uncalibrated']} -> {r['verdict_calibrated']} | {r['cell_seconds']}, "
                     f"{r['control_cell_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/hubaudit-bench/real_world-medium").expanduser(),
                    help="the medium zoo's folder (real_world.py --medium's cache)")
    ap.add_argument("--models", default="npo_klr-lr0.0001,base")
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--skip", default="base@qlora:nf4",
                    help="MODEL@SPEC pairs not to run (default: QLoRA on the negative, about 10 min a cell on one CPU thread)")
    ap.add_argument("--control", default="retain-only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", action="store_true", help="only print the table of the results JSON")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.out.read_text())["rows"]))
        return 0
    import torch

    import hubaudit

    sys.path.insert(0, str(HERE))
    from real_world import environment, say

    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.cache / "models"
    forget = next(args.cache.glob("forget-*"))
    sys.path.insert(0, str(HERE.parent / "tests"))
    from assets import smollm2_folder

    folders = {"base": smollm2_folder(), **{p.name: p for p in models.iterdir() if (p / ".complete").is_file()}}
    rows = []
    for name in args.models.split(","):
        if name not in folders:
            raise SystemExit(f"real_attacks: no built model {name!r} in {models} (build it with real_world.py --medium)")
        for spec in args.specs.split(","):
            if f"{name}@{spec}" in args.skip.split(","):
                continue
            say(f"{name} x {spec} (control {args.control})")
            t0 = time.perf_counter()
            rep = hubaudit.audit(str(folders[name]), reference=str(models / "target"), forget=str(forget), specs=spec,
                                 control=str(folders[args.control]), metrics=METRICS, store=str(args.cache / "store.sqlite"),
                                 device="cpu", progress=False)
            rows.append(row(name, spec, rep, time.perf_counter() - t0))
            say(render(rows[-1:]).splitlines()[-1])
    doc = {"about": "benchmarks/real_attacks.py: attacks on the medium SmolLM2 zoo, raw and calibrated against "
                    f"{args.control}", "command": "python benchmarks/real_attacks.py " + " ".join(argv or sys.argv[1:]),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **environment(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
