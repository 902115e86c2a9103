"""TOFU-style and WMDP-style scoring of the demo world's models, and what quantization and the
relearning attack bring back (the figures of issue #9's closing note).

The synthetic set has no perturbed answers and no multiple choice, so both are made from it
(:func:`hubaudit.forget.tofu.tofu_from_qa`, :func:`hubaudit.forget.wmdp.mcq_from_qa`): wrong answers are
other people's answers to the same kind of question; the "paraphrase" is the answer itself.

    python benchmarks/tofu_wmdp_table.py [WORLD_DIR] [--store FILE] [--specs rtn:4,relearn:steps=20:lr=3e-4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hubaudit
from hubaudit.forget import load_forget_set
from hubaudit.forget.tofu import tofu_from_qa
from hubaudit.forget.wmdp import mcq_from_qa

METRICS = "tofu_rouge_f,tofu_prob_f,tofu_tr_f,tofu_rouge_r,wmdp_acc,mmlu_acc,knowmem_f"


def world_set(world: Path):
    fs = load_forget_set(world / "forget_set")
    fs.tofu_forget, fs.tofu_retain = tofu_from_qa(fs.forget_qa), tofu_from_qa(fs.retain_qa)
    fs.mcq, fs.mcq_retain = mcq_from_qa(fs.forget_qa), mcq_from_qa(fs.retain_qa)
    assert len(fs.mcq) == len(fs.forget_qa)  # same order as the QA: relearn's held-out items line up
    fs.name = "synthetic (TOFU/WMDP-style)"
    return fs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world", nargs="?", default="hubaudit-demo/world")
    ap.add_argument("--store", default="hubaudit-demo/issue9.sqlite")
    ap.add_argument("--specs", default="rtn:4,relearn:steps=20:lr=3e-4,relearn:steps=20:lr=3e-4:data=retain")
    ap.add_argument("--models", default="target,unlearned,constructed,retain_only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    world = Path(args.world)
    fs = world_set(world)
    specs = args.specs.split(",")
    rows, raw = [], {}
    for name in args.models.split(","):
        t = time.perf_counter()
        rep = hubaudit.audit(world / name, reference=False, retrain=world / "retain_only", forget=fs, specs=specs,
                             metrics=METRICS, store=args.store, progress=False)
        secs = time.perf_counter() - t
        cells = {s: rep.cell("model", s).metrics for s in ["fp", *specs]}
        raw[name] = {"cells": cells, "regained": rep.derived["regained"], "forget_quality": rep.derived.get("forget_quality"),
                     "verdict": rep.verdict.summary, "seconds": round(secs, 1),
                     "relearn": {s: rep.cell("model", s).backend.get("settings") for s in specs if s.startswith("relearn")}}
        rows.append((name, rep, cells))
        print(f"{name}: {rep.verdict.summary} ({secs:.0f} s)", flush=True)

    def f(x, d=1):
        return "–" if x is None else f"{x:.{d}f}"

    q, rl = specs[0], [s for s in specs if s.startswith("relearn")]
    print()
    print(f"| model | TOFU ROUGE-L f (fp / {q}) | answer prob. f | truth ratio f | TOFU ROUGE-L r | WMDP-style acc f "
          f"(fp / {q}) | MMLU-style acc r | forget quality (fp) | " + " | ".join(f"`{s}` regained (held out)" for s in rl) + " |")
    print("|" + "---|" * (8 + len(rl)))
    for name, rep, cells in rows:
        fp, qq = cells["fp"], cells[q]
        reg = [rep.derived["regained"].get(s, {}) for s in rl]
        fq = (rep.derived.get("forget_quality") or {}).get("fp")
        print(f"| {name} | {f(fp['tofu_rouge_f'])} / {f(qq['tofu_rouge_f'])} | {f(fp['tofu_prob_f'], 3)} | "
              f"{f(fp['tofu_tr_f'], 3)} | {f(fp['tofu_rouge_r'])} | {f(fp['wmdp_acc'])} / {f(qq['wmdp_acc'])} | "
              f"{f(fp['mmlu_acc'])} | {'–' if fq is None else f'{fq:.2g}'} | "
              + " | ".join(f"ROUGE {r.get('tofu_rouge_f', 0):+.1f}, acc {r.get('wmdp_acc', 0):+.1f}, KnowMem {r.get('knowmem_f', 0):+.1f}"
                           for r in reg) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
