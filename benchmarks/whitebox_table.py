"""The white-box attacks on the demo world: how much ``ablate:direction`` and ``probe:logit-lens`` bring back,
and what each cell costs.

    python benchmarks/whitebox_table.py                       # the demo world (built or reused: hubaudit-demo/world)
    python benchmarks/whitebox_table.py --world /tmp/demo/world --json wb.json
    python benchmarks/whitebox_table.py --size tiny           # quick

Models, each audited against the world's ``target`` (the original) on the whole synthetic forget set:

- ``unlearned``: the natural GA_GDR unlearning (does its forgetting live along one direction?);
- ``constructed``: the quantization positive control (forgets by a small move inside the 4-bit bins);
- ``retain_only``: the negative control, never saw the forget facts; whatever an attack "regains" there
  it taught (the direction is the one separating it from the target, which does know the facts);
- ``shifted``: the white-box positive control built here: ``target`` with a bias on layer 0's
  ``down_proj`` (three times the residual stream's typical norm) along one random direction, a model whose
  whole "unlearning" is a shift along one direction.

For each: the full-precision forget scores, each spec's regain on the held-out forget items (the verdict's
figure: the items that found the direction or chose the layer are not counted) with its 95% paired
interval, the layer chosen, the verdict, and per cell the build time (finding the direction or the
layer, folding) and the whole cell's time. Not a test: it prints a Markdown table (``--json`` writes the
figures).
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
SPECS = ("ablate:direction", "probe:logit-lens")
METRICS = "knowmem_f,verbmem_f,knowmem_r"
MODELS = ("unlearned", "constructed", "retain_only", "shifted")


def world_paths(world: Path | None, size: str) -> dict[str, Path]:
    """The world's model folders: read from ``world``'s manifest (never rebuilt there), else built or
    reused in ``hubaudit-demo/world`` (``world-tiny`` for the tiny size), as the other benchmarks do."""
    if world is not None:
        man = json.loads((world / "world.json").read_text())
        paths = {n: world / n for n in man["models"]}
        paths["forget"] = world / man["forget_dir"]
        return paths
    from hubaudit.demo import build_world

    w = build_world(ROOT / "hubaudit-demo" / ("world" if size == "demo" else "world-tiny"), size=size, progress=False)
    return {**w.models(), "forget": w.forget_dir}


def shifted(target: Path, dst: Path, scale: float = 3.0, seed: int = 0) -> Path:
    """``target`` with a bias on layer 0's down_proj: ``scale`` x the layer-0 residual norm, a random direction."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    cfg = AutoConfig.from_pretrained(target)
    cfg.mlp_bias = True
    model = AutoModelForCausalLM.from_pretrained(target, config=cfg, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(target)
    ids = torch.tensor([tok("Question: who founded the city?\nAnswer: a glassmaker").input_ids])
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.bias.zero_()
        norm = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, 1:].norm(dim=-1).mean()
        v = torch.randn(cfg.hidden_size, generator=torch.Generator().manual_seed(seed))
        model.model.layers[0].mlp.down_proj.bias.copy_(v / v.norm() * norm * scale)
    model.to(torch.bfloat16).save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, help="a built demo world (its world.json is read; nothing is written there)")
    ap.add_argument("--size", default="demo", choices=("demo", "tiny"))
    ap.add_argument("--out", type=Path, default=ROOT / "hubaudit-demo" / "whitebox",
                    help="where the shifted control and the scratch stores go")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    import hubaudit

    args.out.mkdir(parents=True, exist_ok=True)
    paths = world_paths(args.world, args.size)
    paths["shifted"] = shifted(paths["target"], args.out / "shifted")
    rows = []
    for name in args.models.split(","):
        store = args.out / f"store-{name}-{time.time_ns()}.sqlite"  # fresh: every cell computed and timed
        t0 = time.perf_counter()
        rep = hubaudit.audit(paths[name], reference=paths["target"], forget=paths["forget"], specs=",".join(SPECS),
                             metrics=METRICS, store=store, progress=False)
        wall = time.perf_counter() - t0
        store.unlink(missing_ok=True)
        fp = rep.cell("model", "fp")
        row = {"model": name, "fp": fp.metrics, "target": rep.cell("reference", "fp").metrics,
               "verdict": rep.verdict.label, "summary": rep.verdict.summary, "audit_seconds": round(wall, 1),
               "fp_cell_seconds": round(fp.seconds, 1), "specs": {}}
        for spec in SPECS:
            cell = rep.cell("model", spec)
            s = cell.backend.get("settings", {})
            ch = (rep.derived.get("changes") or {}).get(spec, {})
            row["specs"][spec] = {
                "status": cell.status, "reason": cell.reason,
                "regained": rep.derived["regained"].get(spec, {}),
                "ci": {m: ch[m].get("ci") for m in ch},
                "layer": s.get("layer"), "identical": bool(s.get("identical_to_full_precision")),
                "held_out": s.get("trained_items"), "mode": s.get("mode"),
                "loss_before": s.get("held_out_loss_before") or s.get("held_out_loss_output"),
                "loss_after": s.get("held_out_loss_after") or s.get("held_out_loss_lens"),
                "build_seconds": round(cell.quantize_seconds, 2), "cell_seconds": round(cell.seconds, 1),
            }
        rows.append(row)
        print(f"{name}: {rep.verdict.summary}", file=sys.stderr)

    print(f"\nWhite-box attacks on the {args.size if args.world is None else args.world} demo world "
          f"(reference: target; torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print("| model | fp KnowMem f / VerbMem f | spec | layer | regained KnowMem f [95% CI] | regained VerbMem f [95% CI] "
          "| KnowMem r change | build s | cell s | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def fmt(v, ci):
        if v is None:
            return "-"
        c = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci and None not in ci else ""
        return f"{v:+.1f}{c}"

    for r in rows:
        for spec, s in r["specs"].items():
            g, ci = s["regained"], s["ci"]
            layer = "none" if s["identical"] and s["layer"] is None else (f"{s['layer']} (= fp)" if s["identical"] else s["layer"])
            print(f"| {r['model']} | {r['fp'].get('knowmem_f', 0):.1f} / {r['fp'].get('verbmem_f', 0):.1f} | {spec} | {layer} "
                  f"| {fmt(g.get('knowmem_f'), ci.get('knowmem_f'))} | {fmt(g.get('verbmem_f'), ci.get('verbmem_f'))} "
                  f"| {fmt(g.get('knowmem_r'), None)} | {s['build_seconds']:.1f} | {s['cell_seconds']:.1f} | {r['verdict']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "specs": SPECS, "metrics": METRICS,
                                         "threads": torch.get_num_threads()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
