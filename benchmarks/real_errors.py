"""The verdict's error rates on real models: never-knew and benign variants of the SmolLM2 zoo, audited.

    PYTHONPATH=$PWD python benchmarks/real_errors.py            # after `real_world.py --medium` built the zoo
    PYTHONPATH=$PWD python benchmarks/real_errors.py --render   # the tables from the committed JSON

Reads the zoo that ``benchmarks/real_world.py --medium`` built (``target``, ``retain-only``, the constructed
control) and makes benign variants of it, each an ordinary model folder under ``CACHE/variants``:

- **never knew** (negatives: a ``fragile`` label on any of them is a false alarm): SmolLM2 itself, ``retain-only``,
  ``retain-only`` with Gaussian weight noise (``--noise-seeds`` seeds, noise ``--noise`` times each matrix's
  standard deviation), and ``retain-only`` fine-tuned briefly on unrelated news (Lee articles 100-130, which
  no forget item is about): the "benign fine-tune" a downstream user does;
- **knows** (held the knowledge all along): ``target`` and ``target`` with weight noise;
- **fragile by construction**: the constructed control (projected into ``target``'s ``rtn:8`` bins).

Every model is audited against ``target`` with the zoo's CPU backends and the default verdict. Reported:
the false-fragile rate on the never-knew models (Clopper-Pearson 95% interval), the detection of the
control, the labels of the knowing models, and two AUCs with bootstrap intervals, as open-unlearning's
meta-evaluation scores a metric: how well the forget score after the attack separates cells of models
that hold the knowledge (``target`` family, the control under ``rtn:8``) from cells of models that never had
it, and how well the regain statistic (change against the model's own full precision) separates the
control's ``rtn:8`` cell from every never-knew cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_world as rw  # noqa: E402

RESULTS = HERE / "results" / "real_errors.json"
UNRELATED_ARTICLES = (100, 130)  # Lee background articles no forget or retain item is about
METRICS = ("verbmem_f", "knowmem_f")


def say(msg: str) -> None:
    print(f"[real_errors {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def noisy(src: Path, out: Path, seed: int, rel: float) -> None:
    """``src`` with N(0, (rel * std)^2) added to every matrix of its decoder layers, saved in bfloat16."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from hubaudit.demo.world import _load, _save

    recipe = rw._recipe_hash("noise", str(src), (src / ".complete").read_text(), seed, rel)
    if rw._done(out, recipe):
        return
    model = _load(src, torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                p.add_(torch.randn(p.shape, generator=g) * (rel * p.float().std()))
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _save(model, AutoTokenizer.from_pretrained(src), tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    rw._mark(out, recipe)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def auc(pos: list[float], neg: list[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Mann-Whitney AUC (ties count half) with a percentile bootstrap interval (positives and negatives
    resampled apart)."""
    import numpy as np

    if not pos or not neg:
        return {"auc": None, "ci": None, "n_pos": len(pos), "n_neg": len(neg)}
    p, q = np.asarray(pos, float), np.asarray(neg, float)

    def a(p, q):
        d = p[:, None] - q[None, :]
        return float(((d > 0) + 0.5 * (d == 0)).mean())

    rng = np.random.default_rng(seed)
    boots = [a(rng.choice(p, len(p)), rng.choice(q, len(q))) for _ in range(resamples)]
    return {"auc": round(a(p, q), 3), "ci": [round(float(np.percentile(boots, 2.5)), 3),
                                            round(float(np.percentile(boots, 97.5)), 3)],
            "n_pos": len(pos), "n_neg": len(neg)}


def summarize(records: list[dict]) -> dict:
    by: dict[str, dict[str, dict]] = {}
    for r in records:
        by.setdefault(r["model"], {})[r["spec"]] = r
    groups: dict[str, list[str]] = {}
    for name, cells in by.items():
        groups.setdefault(next(iter(cells.values()))["group"], []).append(name)
    labels = {name: next(iter(cells.values()))["verdict"] for name, cells in by.items()}
    neg = groups.get("never knew", [])
    k = sum(labels[n] == "fragile" for n in neg)
    out: dict = {"labels": labels,
                 "false_fragile": {"k": k, "n": len(neg), "rate": round(k / len(neg), 3) if neg else None,
                                   "ci": [round(x, 3) for x in clopper_pearson(k, len(neg))] if neg else None},
                 "detected": {n: labels[n] == "fragile" for n in groups.get("fragile by construction", [])}}
    for metric in METRICS:
        know_pos, know_neg, reg_pos, reg_neg = [], [], [], []
        for name, cells in by.items():
            g = next(iter(cells.values()))["group"]
            for spec, r in cells.items():
                if spec == "fp" or r["status"] != "ok":
                    continue
                score = r["metrics"].get(metric)
                delta = (r.get("change", {}).get(metric) or {}).get("mean")
                if g == "knows" or (g == "fragile by construction" and spec == "rtn:8"):
                    know_pos.append(score)
                elif g == "never knew":
                    know_neg.append(score)
                if delta is None:
                    continue
                if g == "fragile by construction" and spec == "rtn:8":
                    reg_pos.append(delta)
                elif g == "never knew":
                    reg_neg.append(delta)
        out[f"auc_knowledge_{metric}"] = auc([x for x in know_pos if x is not None], [x for x in know_neg if x is not None])
        out[f"auc_regain_{metric}"] = auc(reg_pos, reg_neg)
        out[f"regain_never_knew_{metric}"] = {
            "max": max(reg_neg) if reg_neg else None, "n": len(reg_neg),
            "over_threshold": sum(x > 5.0 for x in reg_neg)}
    return out


def render(doc: dict) -> str:
    s = doc["summary"]
    ff = s["false_fragile"]
    lines = [f"**The verdict on real models (SmolLM2-135M zoo, {len(s['labels'])} models audited against target, "
             f"backends {', '.join(doc['backends'])})**", "",
             "| model | group | label | VerbMem fp | largest regain (VerbMem / KnowMem, points [95% CI]) |",
             "|---|---|---|---|---|"]
    by: dict[str, dict[str, dict]] = {}
    for r in doc["records"]:
        by.setdefault(r["model"], {})[r["spec"]] = r
    for name, cells in by.items():
        fp = cells.get("fp", {})

        def worst(m):
            best = None
            for spec, r in cells.items():
                c = (r.get("change") or {}).get(m)
                if spec != "fp" and c and c.get("mean") is not None and (best is None or c["mean"] > best[1]["mean"]):
                    best = (spec, c)
            if best is None:
                return "–"
            ci = best[1].get("ci") or [None, None]
            mean = best[1]["mean"]
            return f"{mean:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}] ({best[0]})" if None not in ci else f"{mean:+.1f}"
        vm = fp.get("metrics", {}).get("verbmem_f")
        lines.append(f"| {name} | {fp.get('group', '–')} | **{fp.get('verdict', '–')}** | "
                     f"{'–' if vm is None else f'{vm:.1f}'} | {worst('verbmem_f')} / {worst('knowmem_f')} |")
    lines += ["", f"False-fragile rate on never-knew models: {ff['k']}/{ff['n']} "
              f"(95% CI {ff['ci'][0] * 100:.0f}-{ff['ci'][1] * 100:.0f}%)." if ff["n"] else "",
              "Constructed control detected: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in s["detected"].items()), ""]
    lines += ["| statistic | AUC [95% CI] | positives / negatives (cells) |", "|---|---|---|"]
    for key, what in (("auc_knowledge", "forget score after the attack: knows vs never knew"),
                      ("auc_regain", "regain vs own fp: control rtn:8 vs never knew")):
        for m in METRICS:
            a = s[f"{key}_{m}"]
            val = "–" if a["auc"] is None else f"{a['auc']:.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]"
            lines.append(f"| {m}: {what} | {val} | {a['n_pos']} / {a['n_neg']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/hubaudit-bench/real_world-medium").expanduser(),
                    help="the zoo's work folder (real_world.py --medium's)")
    ap.add_argument("--noise", type=float, default=0.02, help="weight noise, times each matrix's standard deviation")
    ap.add_argument("--noise-seeds", type=int, default=4, help="noisy copies of retain-only (and half as many of target)")
    ap.add_argument("--backends", default=None, help="comma-separated specs (default: the zoo's CPU backends)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--benign-articles", type=int, default=UNRELATED_ARTICLES[1] - UNRELATED_ARTICLES[0],
                    help="unrelated articles of the benign fine-tune (from article 100 on)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--render", action="store_true", help="only print the tables of the results JSON")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(args.out.read_text())))
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(rw.ROOT / "tests"))
    from assets import smollm2_folder

    cfg = rw.MEDIUM
    cache = args.cache
    models = cache / "models"
    target, retain, control = models / "target", models / "retain-only", models / "control"
    for m in (target, retain):
        if not (m / ".complete").is_file():
            raise SystemExit(f"real_errors: {m} is not built; run `python benchmarks/real_world.py --medium` first")
    t_all = time.perf_counter()
    background, holdout = rw.fetch_corpus(cache)
    forget = rw.build_forget_set(cache, cfg, background, holdout)
    var = cache / "variants"
    var.mkdir(exist_ok=True)
    zoo: list[tuple[str, str, Path]] = [("base", "never knew", smollm2_folder()), ("retain-only", "never knew", retain)]
    for s in range(args.noise_seeds):
        say(f"retain-only + noise seed {s}")
        noisy(retain, var / f"retain-only-noise{s}", s, args.noise)
        zoo.append((f"retain-only-noise{s}", "never knew", var / f"retain-only-noise{s}"))
    benign = var / "retain-only-benign"
    texts = background[UNRELATED_ARTICLES[0]:UNRELATED_ARTICLES[0] + args.benign_articles]
    ft = {**cfg, "finetune": {**cfg["finetune"], "epochs": 2}}
    recipe = rw._recipe_hash("benign", ft["finetune"], (retain / ".complete").read_text(), texts)
    if not rw._done(benign, recipe):
        say(f"retain-only fine-tuned on {len(texts)} unrelated articles (2 epochs)")
        rw.finetune(retain, benign, texts, ft, recipe)
    zoo.append(("retain-only-benign", "never knew", benign))
    zoo.append(("target", "knows", target))
    for s in range(max(1, args.noise_seeds // 2)):
        noisy(target, var / f"target-noise{s}", 100 + s, args.noise)
        zoo.append((f"target-noise{s}", "knows", var / f"target-noise{s}"))
    zoo.append(("control", "fragile by construction", control))
    backends = args.backends.split(",") if args.backends else list(cfg["backends"])
    context = {"command": "python benchmarks/real_errors.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **rw.environment()}
    records, timings = [], {}
    for i, (name, group, folder) in enumerate(zoo, 1):
        while not (folder / ".complete").is_file() and name == "control":
            say("waiting for real_world.py --medium to build the control")
            time.sleep(60)
        t = time.perf_counter()
        say(f"[{i}/{len(zoo)}] audit {name} ({group}) against target")
        rep = rw.audit(name, folder, target, forget, backends, var)
        recs = rw.records_of(name, group, rep, context)
        for r in recs:
            r["group"] = group
        records += recs
        timings[name] = round(time.perf_counter() - t, 1)
        say(f"[{i}/{len(zoo)}] {name}: {recs[0]['verdict']}")
    doc = {"about": __doc__.split("\n\n")[0], "settings": {"noise": args.noise, "noise_seeds": args.noise_seeds,
                                                           "unrelated_articles": [UNRELATED_ARTICLES[0], UNRELATED_ARTICLES[0] + args.benign_articles]},
           "backends": backends, "forget_set": forget.name, "timings_s": timings,
           "total_s": round(time.perf_counter() - t_all, 1), "records": records}
    doc["summary"] = summarize(records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    say(f"wrote {args.out} in {doc['total_s']:.0f} s")
    print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
