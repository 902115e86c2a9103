"""Forgetting along an unlearning run, in full precision and under per-tensor 4-bit RTN.

    python benchmarks/unlearn_trajectory.py MODEL FORGET OUT --segment 50 [unlearn settings as key=value ...]

Runs `hubaudit.unlearn.unlearn` in segments of --segment steps (each call resumes from the checkpoint the
previous one left, so the finished model is bit for bit the one an uninterrupted run makes) and, after each
segment, measures KnowMem forget / retain of the checkpoint's weights in full precision and with every
quantized linear layer rounded by the audit's own per-tensor RTN (`rtn:4`). Prints one line per segment.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubaudit.demo.world import rtn_state
    from hubaudit.forget import load_forget_set
    from hubaudit.metrics import evaluate
    from hubaudit.unlearn import unlearn

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("forget")
    ap.add_argument("out")
    ap.add_argument("--segment", type=int, default=50)
    a, settings = ap.parse_known_args()
    kw = {}
    for s in settings:
        k, v = s.split("=", 1)
        try:
            kw[k] = json.loads(v)
        except ValueError:
            kw[k] = v
    fs = load_forget_set(a.forget)
    tok = AutoTokenizer.from_pretrained(a.model)
    probe = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()

    def scores(state):
        probe.load_state_dict(state)
        out = {}
        for name in ("fp", "rtn:4"):
            if name == "rtn:4":
                q = rtn_state(probe, 4)
                mods = dict(probe.named_modules())
                with torch.no_grad():
                    for n, w in q.items():
                        mods[n].weight.copy_(w)
            r = evaluate(probe, tok, fs, ["knowmem_f", "knowmem_r"])
            out[name] = {k: round(v.value, 1) for k, v in r.items()}
        return out

    t0 = time.perf_counter()
    while True:
        res = unlearn(a.model, fs, a.out, progress=False, max_steps_this_run=a.segment, **kw)
        if res.status == "finished":
            print(json.dumps({"finished": res.steps, "stop": res.stop_reason, "after": res.after}), flush=True)
            break
        ck = torch.load(f"{a.out}/checkpoints/state.pt", map_location="cpu", weights_only=False)
        s = scores(ck["model"])
        print(json.dumps({"step": res.steps, **s, "t": round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
