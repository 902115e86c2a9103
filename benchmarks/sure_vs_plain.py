"""Plain utility-constrained unlearning against SURE, under per-tensor 4-bit RTN, over seeds.

    python benchmarks/sure_vs_plain.py --seeds 0,1,2 --out bench-sure [--threads 1]

For every seed, a small world in which plain unlearning can be fragile (the recipe measured here at small
scale, ``../shared/PAPER_NOTES.md``):

- **facts**: invented people, one short fact each (``NAME was born in TOWN in YEAR and works as a PROFESSION
  at COMPANY.``): 90 to forget, 90 to keep, 45 never trained on. Written in the MUSE layout as a
  VerbMem-only forget set: ``verbmem/forget`` (prompt ``NAME was born in``, the rest as ``gt``),
  ``privleak/forget``, ``privleak/retain``, ``privleak/holdout``; no QA.
- **original**: a 4-layer, 384-wide Llama trained from scratch on the forget and retain facts (each row
  BOS + fact + EOS; float32, AdamW, cosine), saved in bfloat16.
- **plain**: ``hubaudit unlearn`` GA_GDR (gradient ascent on the forget rows plus gradient descent on the
  retain rows), pure bf16 weights, AdamW, lr 2e-5, batches of 16 + 16, steered by VerbMem forget to
  ``--stop-at`` % of the original's, utility floor on the retain passages' token probability.
- **SURE**: the same from the same original, to the same forgetting target, with SURE (``--sure-saliency``,
  ``--sure-threshold``, ``--sure-lr``).
- **variants** (``--variants``): other settings to the same target (see ``VARIANTS``).

Each unlearned model is audited against the original with the verdict machinery (``hubaudit.audit``:
per-item paired change under ``rtn:4``, bootstrap interval, one-sided sign test, Holm) on VerbMem forget.
Utility is the retain passages' token probability (the trainer's utility) with a bootstrap interval over
the 90 retain facts. Prints a Markdown table and writes ``OUT/results.json`` and ``OUT/table.md``. Torch runs
with ``--threads`` threads (default 1, so that a shared machine stays usable); wall times depend on that
and on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

N_FORGET, N_RETAIN, N_HOLDOUT = 90, 90, 45
DATA_SEED = 4321
MODEL = {"hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 6, "intermediate_size": 1024,
         "max_position_embeddings": 128, "tie_word_embeddings": False}
VOCAB = 1024
TRAIN = {"epochs": 60, "batch_size": 16, "lr": 1e-3, "warmup_steps": 30, "weight_decay": 0.0, "betas": [0.9, 0.98],
         "grad_clip": 1.0}
PLAIN = {"method": "ga_gdr", "lr": 2e-5, "batch_size": 16, "dtype": "bfloat16", "steps": 600}
SURE = {"sure": True, "saliency": "module", "threshold": 90.0, "lr": 1e-4}
# Part 3 of issue 19: the variants the paper and its successors name, each to the same forgetting target
VARIANTS = {
    "sure_row": {"sure": True, "saliency": "row", "threshold": 90.0, "lr": 1e-4},
    "sure_lr3e-4": {"sure": True, "saliency": "module", "threshold": 90.0, "lr": 3e-4},
    "plain_lr6e-5": {"lr": 6e-5},
}


def make_facts(seed: int = DATA_SEED) -> dict[str, list[dict[str, str]]]:
    """Invented people with one fact each: ``{"forget": [...], "retain": [...], "holdout": [...]}``, each item
    ``{"prompt", "gt", "text"}`` with ``text == prompt + gt``."""
    from hubaudit.demo import synth

    rng = random.Random(seed)
    n = N_FORGET + N_RETAIN + N_HOLDOUT
    taken: set[str] = set()
    firsts = synth._unique(rng, n, lambda: synth._word(rng, rng.choice([2, 3])), taken)
    lasts = synth._unique(rng, n, lambda: synth._word(rng, rng.choice([2, 3])), taken)
    towns = synth._unique(rng, 60, lambda: synth._word(rng, 2) + rng.choice(synth._TOWN_SUFFIX), taken)
    companies = [f"{w} {rng.choice(synth._COMPANY_SUFFIX)}" for w in synth._unique(rng, 60, lambda: synth._word(rng, 2), taken)]
    facts = []
    for i in range(n):
        prompt = f"{firsts[i]} {lasts[i]} was born in "
        gt = (f"{rng.choice(towns)} in {rng.randint(1900, 1999)} and works as a {rng.choice(synth._PROFESSIONS)} "
              f"at {rng.choice(companies)}.")
        facts.append({"prompt": prompt, "gt": gt, "text": prompt + gt})
    return {"forget": facts[:N_FORGET], "retain": facts[N_FORGET:N_FORGET + N_RETAIN],
            "holdout": facts[N_FORGET + N_RETAIN:]}


def write_forget_set(folder: Path, facts: dict) -> Path:
    """The MUSE-layout, VerbMem-only forget set (no QA)."""
    files = {"verbmem/forget.json": [{"prompt": f["prompt"], "gt": f["gt"]} for f in facts["forget"]],
             "privleak/forget.json": [f["text"] for f in facts["forget"]],
             "privleak/retain.json": [f["text"] for f in facts["retain"]],
             "privleak/holdout.json": [f["text"] for f in facts["holdout"]]}
    for rel, rows in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(rows, indent=0))
    return folder


def build_original(root: Path, seed: int, progress: bool) -> tuple[Path, Path, float]:
    """(original model folder, forget-set folder, training seconds); reused when already built."""
    from hubaudit.demo.world import _new_model, _Rows, _save, build_tokenizer, train_lm

    facts = make_facts()
    fdir = write_forget_set(root / "forget_set", facts)
    orig = root / f"original-seed{seed}"
    info = orig / "train.json"
    if info.is_file() and (orig / "config.json").is_file():
        return orig, fdir, json.loads(info.read_text())["seconds"]
    t = time.perf_counter()
    texts = [f["text"] for part in facts.values() for f in part]
    tok = build_tokenizer(texts, VOCAB)
    rows = _Rows(tok, [f["text"] for f in facts["forget"] + facts["retain"]], [], (1, 1))
    model = _new_model(MODEL, len(tok), tok, seed)
    res = train_lm(model, [rows], TRAIN, seed, progress, f"original seed {seed}")
    _save(model, tok, orig)
    secs = round(time.perf_counter() - t, 1)
    info.write_text(json.dumps({"seconds": secs, **res, "model": MODEL, "train": TRAIN}))
    return orig, fdir, secs


def interval(values) -> dict:
    from hubaudit.stats import bootstrap_mean_interval

    vals = [float(v) for v in values]
    return {"mean": sum(vals) / len(vals), "ci": list(bootstrap_mean_interval(vals)), "n": len(vals)}


def run_one(name: str, orig: Path, fdir: Path, out: Path, settings: dict, args, seed: int) -> dict:
    """Unlearn, audit under rtn:4, and gather the row's figures."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubaudit.audit import audit
    from hubaudit.forget import load_forget_set
    from hubaudit.unlearn import unlearn
    from hubaudit.unlearn.train import retain_prob_items

    kw = {**PLAIN, "stop_at": args.stop_at, "stop_metric": "verbmem_f", "eval_every": args.eval_every,
          "utility_floor": args.utility_floor, "seed": seed, "checkpoint_every": 10_000, **settings}
    if args.steps:
        kw["steps"] = args.steps
    t = time.perf_counter()
    res = unlearn(str(orig), str(fdir), out, progress=args.progress, device="cpu", **kw)
    wall = time.perf_counter() - t
    man = res.manifest
    rep = audit(out, reference=str(orig), forget=str(fdir), specs="rtn:4", metrics="verbmem_f", store=False,
                device="cpu", progress=False, out=out / "audit")
    cells = {(c.role, c.spec): c for c in rep.cells}
    ch = rep.derived["changes"]["rtn:4"]["verbmem_f"]
    fs = load_forget_set(str(fdir))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        util = retain_prob_items(model, tok, fs)
    score = lambda role, spec: interval([r["score"] for r in cells[(role, spec)].items["verbmem_f"]])  # noqa: E731
    return {
        "name": name, "seed": seed, "settings": kw, "steps": man["steps"], "steps_run": man["steps_run"],
        "stop_reason": man["stop_reason"], "target": man["target"], "train_seconds": man["train_seconds"],
        "wall_seconds": round(wall, 1), "sure_mask": man["sure_mask"],
        "verbmem": {"original_fp": score("reference", "fp"), "original_rtn4": score("reference", "rtn:4"),
                    "fp": score("model", "fp"), "rtn4": score("model", "rtn:4")},
        "rtn4_change": ch, "verdict": rep.verdict.label, "verdict_summary": rep.verdict.summary,
        "utility": {"before": man["before"]["retain_prob"], "after": interval(util)},
    }


def _ci(d: dict, digits: int = 1) -> str:
    lo, hi = d["ci"]
    return f"{d['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(rows: list[dict]) -> str:
    head = ["seed", "method", "steps (stop)", "VerbMem fp", "VerbMem `rtn:4`", "change under `rtn:4`",
            "items up / down", "p (Holm)", "verdict", "utility", "training"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen = set()
    for r in rows:
        v = r["verbmem"]
        if r["seed"] not in seen:
            seen.add(r["seed"])
            out.append(f"| {r['seed']} | original | | {_ci(v['original_fp'])} | {_ci(v['original_rtn4'])} | | | | | "
                       f"{r['utility']['before']:.1f} | |")
        ch = r["rtn4_change"]
        stop = ("target" if (r["stop_reason"] or "").startswith("forget target") else
                "utility floor" if (r["stop_reason"] or "").startswith("utility") else "all steps")
        reached = "" if r["target"] is None or r["target"]["reached"] else ", target not reached"
        out.append(
            f"| {r['seed']} | {r['name']} | {r['steps']} ({stop}{reached}) | {_ci(v['fp'])} | {_ci(v['rtn4'])} | "
            f"{ch['mean']:+.1f} [{ch['ci'][0]:+.1f}, {ch['ci'][1]:+.1f}] | {ch['up']} / {ch['down']} of {ch['n']} | "
            f"{ch['p_holm']:.2g} | **{r['verdict']}** | {_ci(r['utility']['after'])} | {r['train_seconds']:.0f} s |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="bench-sure")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--stop-at", type=float, default=50.0, help="forgetting target: VerbMem forget <= PCT%% of the original's")
    ap.add_argument("--utility-floor", type=float, default=0.25,
                    help="stop when the retain passages' token probability falls below F x the original's (default 0.25)")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="at most this many steps (default 600)")
    ap.add_argument("--methods", default="plain,sure", help=f"plain, sure, and any of {', '.join(VARIANTS)}")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"plain": {}, "sure": SURE, **VARIANTS}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in settings]
    if bad:
        print(f"unknown --methods {', '.join(bad)}; choose from {', '.join(settings)}", file=sys.stderr)
        return 2
    rows = []
    t0 = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        orig, fdir, secs = build_original(root, seed, args.progress)
        print(f"seed {seed}: original trained in {secs:.0f} s", flush=True)
        for m in methods:
            r = run_one(m, orig, fdir, root / f"seed{seed}-{m}", settings[m], args, seed)
            r["original_train_seconds"] = secs
            rows.append(r)
            print(json.dumps({k: r[k] for k in ("name", "seed", "steps", "stop_reason", "verdict", "train_seconds")}
                             | {"change": r["rtn4_change"], "fp": r["verbmem"]["fp"]["mean"],
                                "utility": r["utility"]["after"]["mean"]}), flush=True)
            (root / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    md = table(rows)
    (root / "table.md").write_text(md + "\n")
    print(md)
    print(f"total {time.perf_counter() - t0:.0f} s with {args.threads} torch thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
