"""Batched metrics against MUSE's one-item-at-a-time loop, on one model: seconds, tokens/s, agreement.

    python benchmarks/metric_speed.py MODEL_DIR [--forget SOURCE] [--metrics ...] [--limit N]
    python benchmarks/metric_speed.py --demo      # the demo world's target model (built if needed)

Prints, per metric: items, tokens processed, seconds batched and one-at-a-time, the speed-up, and the
two scores (they must agree to 0.01). Not a test: the figures go into the README and issue notes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="model folder")
    p.add_argument("--demo", action="store_true", help="use the demo world's target (hubaudit-demo/world)")
    p.add_argument("--forget", default=None, help="forget set (default: synthetic, or the world's)")
    p.add_argument("--metrics", default="verbmem_f,knowmem_f,knowmem_r,mia_auc")
    p.add_argument("--limit", type=int, default=None, help="use only the first N items of each part")
    args = p.parse_args()

    import torch

    from hubaudit.forget import load_forget_set
    from hubaudit.metrics import MetricConfig, evaluate
    from hubaudit.metrics.oracle import evaluate_one_at_a_time
    from hubaudit.modeling import ModelSource

    forget = args.forget
    if args.demo:
        from hubaudit.demo.world import build_world

        world = build_world("hubaudit-demo/world")
        model_dir, forget = world.target, forget or world.forget_dir
    elif args.model:
        model_dir = args.model
    else:
        p.error("give a model folder or --demo")
    fs = load_forget_set(forget)
    if args.limit:
        from hubaudit.forget import PARTS

        for part in PARTS:
            if getattr(fs, part) is not None:
                setattr(fs, part, getattr(fs, part)[: args.limit])
    src = ModelSource(model_dir)
    model, tok = src.model, src.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    cfg = MetricConfig()
    names = args.metrics.split(",")
    print(f"model {model_dir}: {n_params / 1e6:.1f}M parameters, {src.device} {src.compute_dtype()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'metric':<10} {'items':>5} {'tokens':>8} {'batched s':>9} {'tok/s':>8} {'1-by-1 s':>9} {'speed-up':>8} "
          f"{'score':>8} {'1-by-1':>8}")
    tot_fast = tot_slow = 0.0
    for name in names:
        t0 = time.perf_counter()
        res = evaluate(model, tok, fs, [name], cfg)[name]
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow_value = evaluate_one_at_a_time(model, tok, fs, [name], cfg)[name]
        slow = time.perf_counter() - t0
        tot_fast, tot_slow = tot_fast + fast, tot_slow + slow
        agree = "ok" if abs(res.value - slow_value) <= 0.01 else "DIFFERS"
        print(f"{name:<10} {res.n:>5} {res.tokens:>8} {fast:>9.2f} {res.tokens / fast:>8.0f} {slow:>9.2f} "
              f"{slow / fast:>7.1f}x {res.value:>8.3f} {slow_value:>8.3f} {agree}")
    print(f"{'all':<10} {'':>5} {'':>8} {tot_fast:>9.2f} {'':>8} {tot_slow:>9.2f} {tot_slow / tot_fast:>7.1f}x")


if __name__ == "__main__":
    main()
