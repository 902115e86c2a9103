"""A Markdown table of `hubaudit unlearn --audit` outputs, one row per run (KnowMem forget / VerbMem forget / KnowMem retain).

    python benchmarks/unlearn_table.py OUT_DIR [OUT_DIR ...]

Each OUT_DIR is the --out of a `hubaudit unlearn ... --audit` run (it holds unlearn.json and
audit/report.json). Prints a Markdown table: method, KnowMem forget / VerbMem forget / KnowMem retain in full
precision and under each audited spec, the largest regain, the verdict, steps and training time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(out: Path, specs: list[str]) -> str:
    man = json.loads((out / "unlearn.json").read_text())
    rep = json.loads((out / "audit" / "report.json").read_text())
    cells = {(c["role"], c["spec"]): c for c in rep["cells"]}
    c = man["config"]
    name = f"{c['method']}{' + SURE (' + c['saliency'] + ' ' + format(c['threshold'], 'g') + ')' if c['sure'] else ''}"

    def fmt(role, spec):
        cell = cells.get((role, spec))
        if cell is None or cell["status"] != "ok":
            return cell["status"] if cell else "–"
        m = cell["metrics"]
        return " / ".join(f"{m[k]:.1f}" if k in m else "–" for k in ("knowmem_f", "verbmem_f", "knowmem_r"))

    v = rep["verdict"]
    worst = f"{v['worst_spec']} {v['max_regained']:+.1f}" if v.get("max_regained") is not None else "–"
    return (f"| {name} | {c['lr']:g} | {man['steps']} | " + " | ".join(fmt("model", s) for s in ["fp", *specs])
            + f" | {worst} | **{v['label']}** | {man['train_seconds']:.0f} s |")


def main(argv: list[str]) -> None:
    outs = [Path(a) for a in argv]
    rep = json.loads((outs[0] / "audit" / "report.json").read_text())
    specs = list(rep["inputs"]["specs"])
    cells = {(c["role"], c["spec"]): c for c in rep["cells"]}
    head = ["method", "lr", "steps", "full precision", *specs, "most regained", "verdict", "training"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ref = " | ".join(" / ".join(f"{cells[('reference', s)]['metrics'][k]:.1f}" for k in ("knowmem_f", "verbmem_f", "knowmem_r"))
                     if cells.get(("reference", s), {}).get("status") == "ok" else "–" for s in ["fp", *specs])
    print(f"| original (target) | | | {ref} | | | |")
    for out in outs:
        print(row(out, specs))


if __name__ == "__main__":
    main(sys.argv[1:])
