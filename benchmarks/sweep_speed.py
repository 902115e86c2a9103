"""The same 6 cells (2 models x full precision, rtn:8, rtn:4) run sequentially in one process and as a sweep on
a local Ray on this machine: the ratio, what Ray costs per task, and what one cell costs.

    python benchmarks/sweep_speed.py                        # 2 random Llamas of the demo's shape (hidden 256, 4 layers)
    python benchmarks/sweep_speed.py --hidden 64 --layers 2 # the test suite's tiny shape
    python benchmarks/sweep_speed.py --num-cpus 4 --json out.json

Prints: the sequential sweep's wall time (``use_ray=False``), the Ray sweep's wall time with and without
starting Ray, their ratio, Ray's own cost (starting and stopping a local Ray; starting an actor; one
actor call that does nothing, the mean of 200; a worker with torch, transformers and hubaudit imported,
once per model), and per cell: seconds, tokens processed, tokens per
second, peak memory. Each run has its own empty results store, so every cell is computed.

Not a test: it times things. Its figures go into the README's plan for sweeping the Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's model and forget-set factories


def ray_costs(num_cpus: int, calls: int = 200) -> dict:
    """Seconds to start and stop a local Ray, to start an actor, and per no-op actor call."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - t0

    @ray.remote(num_cpus=1)
    class Noop:
        def call(self):
            return None

    t0 = time.perf_counter()
    a = Noop.remote()
    ray.get(a.call.remote())
    t_actor = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        ray.get(a.call.remote())
    t_call = (time.perf_counter() - t0) / calls
    ray.kill(a)

    @ray.remote(num_cpus=1)
    class Loaded:  # what a sweep's worker pays once per model before its first cell: a process with torch,
        def __init__(self):  # transformers and hubaudit imported
            import torch  # noqa: F401
            import transformers  # noqa: F401

            import hubaudit.sweep  # noqa: F401

        def call(self):
            return None

    t0 = time.perf_counter()
    b = Loaded.remote()
    ray.get(b.call.remote())
    t_loaded = time.perf_counter() - t0
    ray.kill(b)
    t0 = time.perf_counter()
    ray.shutdown()
    return {"init_s": t_init, "shutdown_s": time.perf_counter() - t0, "actor_start_s": t_actor, "call_s": t_call,
            "worker_with_imports_s": t_loaded}


def run(models: list[Path], forget: Path, specs: str, use_ray: bool, num_cpus: int, tmp: Path) -> tuple[float, object]:
    from hubaudit.sweep import SweepEntry, sweep

    tag = "ray" if use_ray else "seq"
    t0 = time.perf_counter()
    res = sweep([SweepEntry(str(m), "none") for m in models], forget=str(forget), specs=specs,
                out=tmp / f"out-{tag}", store=tmp / f"store-{tag}.sqlite", use_ray=use_ray, num_cpus=num_cpus,
                progress=False)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--items", type=int, default=24, help="items per forget-set part (default 24)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()

    import torch

    from factories import make_forget_dir, make_random_model

    specs = "rtn:8,rtn:4"
    with tempfile.TemporaryDirectory(prefix="hubaudit-sweep-speed-") as tmp:
        tmp = Path(tmp)
        models = [make_random_model(tmp / f"m{i}", seed=i, hidden=args.hidden, layers=args.layers) for i in (1, 2)]
        forget = make_forget_dir(tmp / "forget", n=args.items)
        params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(models[0]).parameters())
        costs = ray_costs(args.num_cpus)
        torch.set_num_threads(args.num_cpus)  # the sequential run may use every core, as the workers together do
        t_seq, seq = run(models, forget, specs, False, args.num_cpus, tmp)
        t_ray, ray_res = run(models, forget, specs, True, args.num_cpus, tmp)
        cells = [c for r in seq.rows for c in r.report.cells]
        ray_cells = [c for r in ray_res.rows for c in r.report.cells]
        assert len(cells) == 6 and all(c.status == "ok" for c in cells + ray_cells)
        same = all(a.metrics == b.metrics for a, b in zip(cells, ray_cells))

    work_seq = sum(c.seconds for c in cells)
    t_ray_run = t_ray - costs["init_s"] - costs["shutdown_s"]
    out = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}", "model_parameters": params,
        "items_per_part": args.items, "cells": len(cells), "num_cpus": args.num_cpus,
        "sequential_s": t_seq, "ray_s": t_ray, "ray_without_start_s": t_ray_run, "speedup": t_seq / t_ray,
        "speedup_without_start": t_seq / t_ray_run, "ray": costs, "same_scores": same,
        "per_cell": [{"spec": c.spec, "seconds": c.seconds, "tokens": c.tokens,
                      "tokens_per_s": c.tokens / c.seconds if c.seconds else None,
                      "peak_rss_gib": (c.peak_rss_bytes or 0) / 2**30} for c in cells],
        "sequential_cell_work_s": work_seq,
    }
    print(f"{len(cells)} cells, 2 random Llamas of {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} "
          f"layers), {args.items} items per part, {args.num_cpus} CPUs")
    print(f"sequential (one process):      {t_seq:7.1f} s  (cells' own time {work_seq:.1f} s)")
    print(f"local Ray sweep:               {t_ray:7.1f} s  ({t_ray_run:.1f} s without starting and stopping Ray)")
    print(f"ratio sequential / Ray:        {t_seq / t_ray:7.2f}x ({t_seq / t_ray_run:.2f}x without the start)")
    print(f"Ray: start {costs['init_s']:.1f} s, stop {costs['shutdown_s']:.1f} s, an actor {costs['actor_start_s']:.2f} s, "
          f"a call {costs['call_s'] * 1e3:.2f} ms; a worker with torch, transformers and hubaudit imported "
          f"{costs['worker_with_imports_s']:.1f} s (once per model); scores identical: {same}")
    print("per cell (sequential run): spec, seconds, tokens, tokens/s, peak RSS GiB")
    for c in out["per_cell"]:
        print(f"  {c['spec']:8} {c['seconds']:6.2f} {c['tokens']:7d} {c['tokens_per_s'] or 0:9.0f} {c['peak_rss_gib']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
