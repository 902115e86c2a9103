"""The ``hubaudit`` command: a thin shell over the Python API.

Exit codes: 0 done (the verdict is not one ``--fail-on`` names); 1 the verdict is one ``--fail-on``
names (default: ``fragile``); 2 a user error (one line on stderr saying what to do; ``HUBAUDIT_DEBUG=1``
shows the traceback); 3 the verdict is ``incomplete`` (nothing quantized could be evaluated, or no metric
the verdict counts was measured: a gate never passes on no verdict; ``--fail-on none`` turns it off); 70
an internal error (a bug: one line, ``HUBAUDIT_DEBUG=1`` for the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .errors import HubauditError
from .modeling import DTYPE_CHOICES

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 70, 130


def parse_fail_on(text: str) -> frozenset[str]:
    """``fragile,not-unlearned`` -> the labels that fail the gate; ``none`` -> no gate."""
    from .results import VERDICT_LABELS, parse_labels

    try:
        return parse_labels(text)
    except ValueError as e:
        raise HubauditError(f"--fail-on: unknown label {e}; give labels from {', '.join(VERDICT_LABELS)} separated "
                            "by commas, or none") from None


def gate_exit(verdict, fail_on: frozenset[str]) -> int:
    """The exit code of an audit with this verdict under the gate ``fail_on``."""
    if not fail_on:
        return EXIT_OK
    if verdict.label == "incomplete":
        print(f"hubaudit: {verdict.summary}: a gate cannot pass on no verdict (exit 3; --fail-on none to allow it)",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_GATE if verdict.label in fail_on else EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubaudit",
        description="Check whether an unlearned language model really forgot: quantize it, measure how much of "
                    "the forget set comes back, report.",
    )
    p.add_argument("--version", action="version", version=f"hubaudit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser("audit", help="audit a model folder", description="Audit an unlearned model under quantization.")
    a.add_argument("model", help="the unlearned model: a Hub id org/name[@revision] or a local model folder")
    a.add_argument("--reference", metavar="REF",
                   help="the original (pre-unlearning) model, Hub id or folder (default: the card's base_model)")
    a.add_argument("--no-reference", action="store_true", help="do not use the card's base_model as reference")
    a.add_argument("--forget", metavar="SOURCE", default=None,
                   help="forget set: muse-news, muse-books, tofu-forget01|05|10, wmdp-bio|cyber|chem, a Hub dataset "
                        "org/name, a MUSE-layout folder, or synthetic (built in); default: the one the model card "
                        "points to (confirmed on a terminal, or with --yes), else synthetic")
    a.add_argument("--attacks", "--backends", dest="attacks", metavar="SPEC,...", default=None,
                   help="attack specs, comma-separated: quantization (default: cast:bf16,rtn:8,rtn:4,rtn:4:g128), "
                        "published builds of the model: file:PATH.gguf, file:ORG/NAME/FILE.gguf[@REV], "
                        "file:ORG/NAME-GPTQ[@REV], and other recovery attacks: prune:0.2 (magnitude pruning), "
                        "relearn:steps=20 (fine-tuning on a slice of the forget set), finetune:unrelated (a benign "
                        "fine-tune), qlora:nf4 (NF4 + LoRA), ablate:direction, probe:logit-lens (white-box); see "
                        "`hubaudit attacks` (--backends: the older name)")
    a.add_argument("--all-files", action="store_true",
                   help="a file: spec naming a GGUF repository or folder (file:ORG/NAME-GGUF) audits every GGUF file "
                        "in it, one cell each")
    a.add_argument("--sequential", action="store_true",
                   help="draw the items in a random order, in rounds, and stop each (spec, metric) pair and the "
                        "audit once an anytime-valid test decides it (fewer items on a clear case)")
    a.add_argument("--seed", type=int, default=None, metavar="N", help="the --sequential draw order's seed (default 0)")
    a.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="points of a forget metric a spec must bring back (on average, and beyond noise) to call "
                        "the model fragile (default 5)")
    a.add_argument("--alpha", type=float, default=None, metavar="A",
                   help="family-wise error level over every (spec, forget metric) pair tested (Holm); a model whose "
                        "specs only add noise is called fragile with probability at most A (default 0.05)")
    a.add_argument("--metrics", metavar="NAME,...", default=None,
                   help="metric names or aliases, e.g. verbmem_f,knowmem_f,knowmem_r,mia_auc,es_f,prob_f (the list: "
                        "hubaudit.metrics.METRICS; default: all the forget set supports)")
    a.add_argument("--out", metavar="DIR", default=None,
                   help="folder for report.json/.md/.png (default: hubaudit-out/<model name>)")
    a.add_argument("--fail-on", metavar="LABEL,...", default="fragile",
                   help="exit with code 1 when the verdict is one of these labels (fragile, not-unlearned, robust, "
                        "inconclusive; default fragile); an incomplete verdict exits with 3 under any gate; none: "
                        "always exit 0 once the audit finished")
    a.add_argument("--fail-on-fragile", action="store_true", help=argparse.SUPPRESS)  # the default now
    a.add_argument("--retrain", metavar="MODEL", help="a model trained without the forget set (PrivLeak baseline)")
    a.add_argument("--control", metavar="MODEL",
                   help="a model that never learned the forget set (a retain-only model, the original's own base): "
                        "every attack also runs on it and the verdict counts only regain beyond what the same attack "
                        "does to it, item by item; without one the report says the figures are not calibrated")
    a.add_argument("--auc-retrain", type=float, metavar="AUC", help="PrivLeak baseline AUC, when no --retrain model")
    a.add_argument("--retain-logs", metavar="JSON",
                   help="TOFU forget quality's baseline when no --retrain model: the retain model's open-unlearning "
                        "eval log (TOFU_EVAL.json, as its retain_logs_path)")
    a.add_argument("--store", metavar="FILE", help="results store (default: ~/.cache/hubaudit/results.sqlite)")
    a.add_argument("--no-store", action="store_true", help="do not read or write the results store")
    a.add_argument("--fresh", action="store_true", help="ignore stored results and recompute every cell")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    a.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="compute dtype (default auto: the checkpoint's own where the hardware computes it "
                        "natively, bf16 on GPUs and on CPUs with AMX/AVX512-BF16; else float32)")
    a.add_argument("--batch-size", type=int, metavar="N", help="items per batch (default: from a token budget)")
    a.add_argument("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the saved login); never printed")
    a.add_argument("--no-memory-check", action="store_true", help="load even when the estimate says it will not fit")
    a.add_argument("--allow-pickle", action="store_true", help="accept pickle (*.bin) weights, which can run code")
    a.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")
    a.add_argument("--card", choices=["none", "local", "pr"], default="none",
                   help="after the audit: write the updated model card into --out (local) or open/update a Hub "
                        "pull request with it (pr)")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--no-chat-template", action="store_true",
                   help="build TOFU prompts as plain text even when the tokenizer has a chat template")
    a.add_argument("--system-prompt", default="You are a helpful assistant.", metavar="TEXT",
                   help="system turn of TOFU chat prompts (open-unlearning's default; '' for none)")
    a.add_argument("--date-string", default="10 Apr 2025", metavar="DATE",
                   help="date a Llama-3.x chat template prints (open-unlearning's fixed default; '' = the template's "
                        "own, i.e. today's)")
    a.add_argument("--plain-prompt", default="auto", metavar="FORMAT",
                   help="TOFU prompt without a chat template, with {question} ('auto': [INST] {question} [/INST] for "
                        "Llama-2-style tokenizers, else 'Question: {question}\\nAnswer: ')")
    a.add_argument("--mcq-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="WMDP/MMLU prompts start with BOS (default: as lm-evaluation-harness 0.4.8, none except Gemma)")
    a.add_argument("--yes", "-y", action="store_true",
                   help="without --forget: use the forget set proposed from the model card without asking")

    c = sub.add_parser("card", help="write an audit into a model card (locally, or as a Hub pull request)",
                       description="Add or replace hubaudit's section and model-index entry in a model card; "
                                   "everything else in the card stays byte for byte.")
    c.add_argument("model", help="the audited model: a Hub id org/name or a local model folder")
    c.add_argument("--report", required=True, metavar="REPORT", help="report.json of an audit of that model")
    c.add_argument("--out", metavar="FILE", help="where to write the updated card (default: README.md beside the report)")
    c.add_argument("--dry-run", action="store_true", help="print the diff, write and push nothing")
    c.add_argument("--push", action="store_true", help="publish it as a Hub pull request (our open one is reused)")
    c.add_argument("--no-pr", action="store_true", help="with --push: commit straight to main instead of a pull request")
    c.add_argument("--token", metavar="TOKEN", help="Hub token with write access (default: HF_TOKEN or the saved login)")

    d = sub.add_parser("demo", help="build a tiny offline world and audit it (no network, about 10 minutes on 2 cores)",
                       description="Train a tiny tokenizer and Llama-style model on a synthetic forget set, unlearn "
                                   "it, and audit the unlearned model under quantization. Everything offline.")
    d.add_argument("--out", metavar="DIR", default="hubaudit-demo", help="where the world and reports go (default hubaudit-demo)")
    d.add_argument("--size", choices=["demo", "tiny"], default="demo", help="demo (default) or tiny (about a minute, weaker)")
    d.add_argument("--fresh", action="store_true", help="ignore stored results (the trained world is still reused)")
    d.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads for building the world (default 2; the labels are the same with 1)")
    d.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="what the world's bf16 unlearning computes in (default auto: bf16 where this CPU has "
                        "AMX or AVX512-BF16, else float32 with the weights rounded to bf16 after every step)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    sub.add_parser("attacks", aliases=["backends"],
                   help="list the attacks a spec can name (quantization backends, pruning, training attacks) and "
                        "whether they run here")
    _unlearn_parser(sub)
    _sweep_parsers(sub)
    return p


def _sweep_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="audit many models on Ray (a local one by default) and write a leaderboard",
                       description="Audit every model of MODELS.txt (or of a Hub --search) x every spec, on Ray: a "
                                   "local ray.init() without --ray-address, a cluster with it. Every finished cell "
                                   "goes to the results store at once; a rerun computes only what is missing. Writes "
                                   "reports/, leaderboard.parquet, leaderboard.md and sweep.json into --out.")
    s.add_argument("models", nargs="?", metavar="MODELS.txt",
                   help="one org/name[@rev] or folder per line, optionally followed by its reference, its forget "
                        "set and its control (- for the default, none for no reference or no control); # comments")
    s.add_argument("--search", metavar="QUERY",
                   help="models from the Hub instead: tag=...,base_model=org/name,author=...,q=TEXT,limit=N")
    s.add_argument("--reference", metavar="REF", help="the original of every model (default: each card's base_model)")
    s.add_argument("--forget", metavar="SOURCE", default=None, help="the forget set of every model (default synthetic)")
    s.add_argument("--control", metavar="MODEL",
                   help="a model that never learned the forget set, the control of every model (a line may name its "
                        "own): every attack also runs on it, once, and each verdict counts only regain beyond it")
    s.add_argument("--attacks", "--backends", dest="attacks", metavar="SPEC,...", default=None,
                   help="attack specs, as for `hubaudit audit` (default: cast:bf16,rtn:8,rtn:4,rtn:4:g128; "
                        "--backends: the older name)")
    s.add_argument("--sequential", action="store_true",
                   help="each model's audit draws its items in rounds and stops once an anytime-valid test decides it "
                        "(as hubaudit audit --sequential; one worker per model)")
    s.add_argument("--seed", type=int, default=None, metavar="N", help="the --sequential draw order's seed (default 0)")
    s.add_argument("--threshold", type=float, default=None, metavar="X", help="points regained for fragile (default 5)")
    s.add_argument("--alpha", type=float, default=None, metavar="A", help="family-wise error level (default 0.05)")
    s.add_argument("--metrics", metavar="NAME,...", default=None, help="metrics (default: all the forget set supports)")
    s.add_argument("--auc-retrain", type=float, metavar="AUC", help="PrivLeak baseline AUC")
    s.add_argument("--out", metavar="DIR", default="hubaudit-sweep", help="output folder (default hubaudit-sweep)")
    s.add_argument("--store", metavar="FILE", help="results store (default: ~/.cache/hubaudit/results.sqlite)")
    s.add_argument("--fresh", action="store_true", help="recompute every cell")
    s.add_argument("--ray-address", metavar="ADDR",
                   help="a Ray cluster: auto (on a cluster node) or ray://HEAD:10001; default: a local Ray here")
    s.add_argument("--no-ray", action="store_true", help="run in this process, one model after another")
    s.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the local Ray (default: all)")
    s.add_argument("--gpus-per-model", type=float, metavar="G", help="GPUs each model's worker declares (default 1 on CUDA)")
    s.add_argument("--cpus-per-model", type=float, default=1, metavar="C", help="CPUs each model's worker declares (default 1)")
    s.add_argument("--max-retries", type=int, default=2, metavar="N",
                   help="restarts of a worker that died mid-cell, per model (default 2)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    s.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="compute dtype, as hubaudit audit --dtype (default auto; give it on a cluster whose "
                        "workers' hardware differs from this machine's)")
    s.add_argument("--batch-size", type=int, metavar="N", help="items per batch (default: from a token budget)")
    s.add_argument("--card", choices=["none", "pr"], default="none",
                   help="pr: open (or update) a pull request with each Hub model's card")
    s.add_argument("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the saved login); never printed")
    s.add_argument("--allow-pickle", action="store_true", help="accept pickle (*.bin) weights, which can run code")
    s.add_argument("--trust-remote-code", action="store_true", help="run the model folders' own Python code")
    s.add_argument("--dry-run", action="store_true", help="resolve the models and write the plan (sweep.json) only")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    lb = sub.add_parser("leaderboard", help="publish a sweep's leaderboard to a Hub dataset")
    lsub = lb.add_subparsers(dest="lb_command", metavar="ACTION")
    pub = lsub.add_parser("publish", help="push leaderboard.parquet, leaderboard.md and the reports to a Hub dataset "
                                          "(a pull request when the dataset is not yours)")
    pub.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub dataset")
    pub.add_argument("--out", metavar="DIR", default="hubaudit-sweep", help="the sweep's output folder (default hubaudit-sweep)")
    pub.add_argument("--pr", action="store_true", help="open a pull request even on a dataset of your own")
    pub.add_argument("--token", metavar="TOKEN", help="Hub token with write access (default: HF_TOKEN or the saved login)")


def audit_request(args, **extra):
    """The :class:`~hubaudit.plan.AuditRequest` of an ``audit`` or ``sweep`` command, checked before anything
    else; an option not given keeps the request's own default."""
    from .plan import AuditRequest

    if args.seed is not None and not args.sequential:
        raise HubauditError("--seed orders the items of a --sequential audit; add --sequential or drop --seed")
    given = dict(sequential=args.sequential or None, seed=args.seed, specs=args.attacks, threshold=args.threshold,
                 alpha=args.alpha, metrics=args.metrics, auc_retrain=args.auc_retrain, fresh=args.fresh, device=args.device, dtype=args.dtype,
                 batch_size=args.batch_size, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                 control=getattr(args, "control", None), **extra)
    return AuditRequest(**{k: v for k, v in given.items() if v is not None})


def cmd_sweep(args) -> int:
    from .sweep import sweep

    if args.models is None and args.search is None:
        raise HubauditError("give a models file (one org/name[@rev] or folder per line) or --search QUERY")
    if args.no_ray and args.ray_address:
        raise HubauditError("--no-ray and --ray-address exclude each other")
    res = sweep(
        args.models, search=args.search, reference=args.reference, forget=args.forget, request=audit_request(args),
        out=args.out, store=args.store, token=args.token, ray_address=args.ray_address,
        use_ray=False if args.no_ray else None, num_cpus=args.num_cpus,
        gpus_per_model=args.gpus_per_model, cpus_per_model=args.cpus_per_model, max_retries=args.max_retries,
        card=args.card, dry_run=args.dry_run, progress=not args.quiet,
    )
    if args.dry_run:
        print(f"Plan: {res.out / 'sweep.json'} ({len(res.rows)} models, "
              + ("sequential: each model's cells and items are decided round by round)" if args.sequential else
                 f"{res.stats['cells']} cells, {res.stats['reused_cells']} already in the store)"))
        return EXIT_OK
    st = res.stats
    print((res.out / "leaderboard.md").read_text(encoding="utf-8"))
    if args.sequential:
        print(f"{st['models']} models, sequential: {st['cells']} cells, {st['computed_cells']} evaluated (on the items "
              f"drawn), {st['skipped_cells']} not needed or unavailable, {st['error_cells']} failed; "
              f"{st.get('sequential_tokens', 0):,} tokens of the verdict's metrics computed; {st['seconds']:.0f} s")
    else:
        print(f"{st['models']} models, {st['cells']} cells: {st['computed_cells']} computed, {st['reused_cells']} from the "
              f"store, {st['error_cells']} failed, {st['skipped_cells']} skipped (attack unavailable here); "
              f"{st['worker_restarts']} worker restarts; {st['seconds']:.0f} s")
    print(f"Leaderboard: {res.out / 'leaderboard.md'}, {res.out / 'leaderboard.parquet'}; reports in {res.out / 'reports'}")
    return EXIT_OK


def cmd_leaderboard(args) -> int:
    from .leaderboard import publish_leaderboard

    if args.lb_command != "publish":
        raise HubauditError("usage: hubaudit leaderboard publish --repo ORG/NAME [--out DIR]")
    res = publish_leaderboard(args.out, args.repo, token=args.token, pr=True if args.pr else None)
    print(f"Pull request: {res['pr_url']}" if res["pr_url"] else f"Published: {res['commit_url']}")
    return EXIT_OK


def _unlearn_parser(sub) -> None:
    from .unlearn.train import STOP_METRICS

    u = sub.add_parser("unlearn", help="unlearn a forget set from a model (GA/NPO, retain controls, SURE)",
                       description="Unlearn a forget set from the original model with GA or NPO (plus a retain "
                                   "loss), optionally with SURE, which keeps the unlearning when the model is "
                                   "quantized. Writes a Hugging Face model folder with a card; resumes when "
                                   "interrupted.")
    u.add_argument("model", help="the original model: a Hub id org/name[@revision] or a local model folder")
    u.add_argument("--forget", metavar="SOURCE", default=None,
                   help="forget set: muse-news, muse-books, a Hub dataset, a MUSE-layout folder, or synthetic")
    u.add_argument("--method", default="npo_klr", choices=["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr"],
                   help="forget loss (GA, NPO) and retain term (GDR: NLL, KLR: KL to the original) (default npo_klr)")
    u.add_argument("--sure", action="store_true", help="SURE: train only the most salient modules/rows, larger lr")
    u.add_argument("--threshold", type=float, default=90.0, metavar="P",
                   help="SURE saliency percentile: keep units above it (90 = top 10%%) (default 90)")
    u.add_argument("--saliency", choices=["module", "row"], default="module", help="SURE unit (default module)")
    u.add_argument("--scope", choices=["linear", "all"], default="linear",
                   help="SURE candidates: the quantized linear layers (default) or every weight matrix")
    u.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-5, 1e-4 with --sure)")
    u.add_argument("--steps", type=int, default=300, help="at most this many optimizer steps (default 300)")
    u.add_argument("--batch-size", type=int, default=8, metavar="N", help="forget rows (and retain rows) per step (default 8)")
    u.add_argument("--retain-weight", type=float, default=1.0, metavar="W", help="weight of the retain term (default 1)")
    u.add_argument("--beta", type=float, default=0.1, help="NPO beta (default 0.1)")
    u.add_argument("--max-length", type=int, default=2048, metavar="N",
                   help="training rows are windows of at most N tokens; a longer text is split, never cut off "
                        "(default 2048, the paper's)")
    u.add_argument("--max-grad-norm", type=float, default=1.0, metavar="G",
                   help="clip the gradient to global norm G before every step (default 1.0, the Hugging Face "
                        "Trainer's; 0 for none)")
    u.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16",
                   help="the weights' dtype: what the model is saved in and, without --master-weights, the values "
                        "the weights hold while training, so updates smaller than its step are lost (default "
                        "bfloat16, as the paper)")
    u.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="what training computes in: auto (default: --dtype where the hardware computes it natively, "
                        "a GPU or a CPU with AMX/AVX512-BF16; else float32 holding --dtype values, rounded after "
                        "every step), float32, or --dtype itself (pure 16-bit even where it is emulated, slowly)")
    u.add_argument("--master-weights", choices=["float32"], default=None,
                   help="train float32 weights (float32 compute) and save them in --dtype: small updates accumulate "
                        "instead of being lost to 16-bit rounding")
    u.add_argument("--utility-floor", type=float, default=0.9, metavar="F",
                   help="stop, and go back to the last good state, when utility (KnowMem retain, TOFU retain, MMLU, "
                        "else the retain passages' token probability) falls below F x the original's (default 0.9; "
                        "0 for none)")
    u.add_argument("--stop-at", type=float, default=None, metavar="PCT",
                   help="stop once the forget score is at most PCT%% of the original's (default: run all steps)")
    u.add_argument("--stop-metric", default=None, metavar="METRIC",
                   help=f"forget metric to steer by: {', '.join(STOP_METRICS)} (default: the first of these the "
                        "original scores at least 10 points above chance on)")
    u.add_argument("--eval-every", type=int, default=25, metavar="N", help="measure forgetting and utility every N steps")
    u.add_argument("--checkpoint-every", type=int, default=50, metavar="N", help="checkpoint every N steps (default 50)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", metavar="DIR", default=None,
                   help="output model folder (default hubaudit-unlearn/<model>-<method>[-sure])")
    u.add_argument("--fresh", action="store_true", help="discard a checkpoint or finished run in --out and start over")
    u.add_argument("--audit", action="store_true", help="then audit the result against MODEL; report in OUT/audit/")
    u.add_argument("--attacks", "--backends", dest="attacks", metavar="SPEC,...", default="rtn:4,bnb:nf4,gguf:Q4_0",
                   help="attack specs for --audit (default rtn:4,bnb:nf4,gguf:Q4_0; --backends: the older name)")
    u.add_argument("--no-store", action="store_true", help="with --audit: do not read or write the results store")
    u.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    u.add_argument("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the saved login); never printed")
    u.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_unlearn(args) -> int:
    from .unlearn.train import UnlearnConfig, describe_controls, describe_precision, unlearn

    cfg = UnlearnConfig(
        method=args.method, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
        retain_weight=args.retain_weight, beta=args.beta, dtype=args.dtype, compute_dtype=args.compute_dtype,
        master_weights=args.master_weights, sure=args.sure,
        max_length=args.max_length, max_grad_norm=args.max_grad_norm or None,
        threshold=args.threshold, saliency=args.saliency, scope=args.scope, eval_every=args.eval_every,
        utility_floor=args.utility_floor or None, stop_at=args.stop_at, stop_metric=args.stop_metric,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    stop_after = os.environ.get("HUBAUDIT_UNLEARN_STOP_AFTER")  # tests: stop resumably after N steps
    res = unlearn(args.model, args.forget, args.out, config=cfg, fresh=args.fresh, device=args.device,
                  token=args.token, progress=not args.quiet, audit=args.audit, audit_specs=args.attacks,
                  audit_store=False if args.no_store else None,
                  max_steps_this_run=int(stop_after) if stop_after else None)
    if res.status != "finished":
        print(f"Stopped after step {res.steps}; run the same command again to resume from {res.out / 'checkpoints'}")
        return EXIT_OK
    m = res.manifest
    scores = ", ".join(f"{k} {res.before[k]:.1f} -> {res.after[k]:.1f}" for k in res.after)
    print(f"Unlearned ({m['config']['method']}{' + SURE' if m['config']['sure'] else ''}, {m['steps']} steps, "
          f"{m['train_seconds']:.0f} s; {m['stop_reason'] or 'ran all steps'}): {scores}")
    if m.get("control"):
        print(f"Controls: {describe_controls(m['control'], m['config']['stop_at'], m['config']['utility_floor'])}")
    if m.get("precision"):
        print(f"{describe_precision(m['precision'], m['config']['dtype']).capitalize()}; weights changed per step: "
              f"{100 * m['changed_share']['mean_per_step']:.2f}% on average")
    if m.get("target"):
        print(f"Forgetting target {m['target']['summary']}")
    print(f"Model: {res.out} (README.md, unlearn.json)")
    if res.audit is not None:
        _print_report(res.audit, res.out / "audit")
    return EXIT_OK


def _default_out(model: str) -> Path:
    name = Path(model.rstrip("/").partition("@")[0]).name or "model"
    return Path("hubaudit-out") / name


def cmd_audit(args) -> int:
    from .audit import audit
    from .metrics import MetricConfig

    if args.batch_size is not None and args.batch_size < 1:
        raise HubauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    fail_on = parse_fail_on(args.fail_on)
    request = audit_request(args, memory_check=not args.no_memory_check, all_files=args.all_files,
                            metric_config=MetricConfig(chat_template=not args.no_chat_template,
                                                       system_prompt=args.system_prompt, date_string=args.date_string,
                                                       plain_prompt=args.plain_prompt, mcq_bos=args.mcq_bos))
    out = Path(args.out) if args.out else _default_out(args.model)
    forget = args.forget if args.forget is not None else _forget_from_card(args)
    report = audit(
        args.model,
        reference=False if args.no_reference else args.reference,
        forget=forget,
        retrain=args.retrain,
        out=out,
        store=False if args.no_store else args.store,
        token=args.token,
        progress=not args.quiet,
        retain_logs=args.retain_logs,
        request=request,
    )
    _print_report(report, out)
    if args.card != "none":
        _write_card(report, args.model, out / "README.md", push=args.card == "pr", token=args.token)
    return gate_exit(report.verdict, fail_on)


def _forget_from_card(args) -> str | None:
    """No --forget: propose the forget set the model card points to, and confirm it (a question on a
    terminal, --yes otherwise). Without a hint on the card: the built-in default (synthetic)."""
    from .detect import propose_for_model

    proposal = propose_for_model(args.model, token=args.token)
    if proposal is None:
        return None
    source, reason = proposal
    if args.yes:
        print(f"hubaudit: forget set {source} ({reason})", file=sys.stderr)
        return source
    if not sys.stdin.isatty():
        raise HubauditError(f"the model card suggests --forget {source} ({reason}); pass --forget {source} to "
                            f"use it (or --yes to accept the proposal, or --forget synthetic)")
    answer = input(f"Use forget set {source} (because {reason})? [Y/n] ").strip().lower()
    if answer not in ("", "y", "yes"):
        raise HubauditError("no forget set chosen; pass --forget SOURCE")
    return source


def _print_report(report, out: Path) -> None:
    from .report import render_markdown

    print(render_markdown(report))
    print(f"Report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")


def _write_card(report, model: str, out: Path, *, push: bool, token: str | None, pr: bool = True,
                dry_run: bool = False) -> None:
    from .card import publish_card, update_local_card
    from .source import parse_model_ref

    ref = parse_model_ref(model)
    if ref.is_hub:
        res = publish_card(report, ref.repo_id, token=token, pr=pr, dry_run=dry_run or not push,
                           out=None if dry_run else out)
    elif push:
        raise HubauditError(f"'{model}' is a local folder: --push and --card pr need a Hub model id")
    else:
        if dry_run:
            from .card import card_diff, update_card

            card = Path(model) / "README.md"
            old = card.read_text(encoding="utf-8") if card.is_file() else ""
            print(card_diff(old, update_card(old, report)), end="")
            return
        res = update_local_card(report, Path(model), out)
    if dry_run:
        print(res.diff or "(the card already holds this audit)", end="\n" if not res.diff else "")
        return
    if res.path:
        print(f"Card: {res.path}")
    if res.pr_url or res.commit_url:  # for scripts (the GitHub Action's pr-url output)
        import json

        (out.parent / "card.json").write_text(json.dumps(
            {"pr_url": res.pr_url, "commit_url": res.commit_url, "reused_pr": res.reused_pr}) + "\n", encoding="utf-8")
    if res.pr_url:
        print(f"Pull request {'updated' if res.reused_pr else 'opened'}: {res.pr_url}")
    elif res.commit_url:
        print(f"Committed: {res.commit_url}")
    elif push:
        print("The card on the Hub already holds this audit; nothing to push.")


def cmd_card(args) -> int:
    import json

    from .results import AuditReport

    if args.no_pr and not args.push:
        raise HubauditError("--no-pr goes with --push")
    try:
        report = AuditReport.from_json(json.loads(Path(args.report).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise HubauditError(f"report {args.report} not found; give the report.json of an audit") from None
    except (ValueError, TypeError, KeyError) as e:
        raise HubauditError(f"{args.report} is not a hubaudit report ({str(e).splitlines()[0]})") from None
    out = Path(args.out) if args.out else Path(args.report).parent / "README.md"
    _write_card(report, args.model, out, push=args.push, token=args.token, pr=not args.no_pr, dry_run=args.dry_run)
    return EXIT_OK


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    if args.threads is not None and args.threads < 1:
        raise HubauditError(f"--threads must be at least 1, got {args.threads}")
    run_demo(Path(args.out), size=args.size, fresh=args.fresh, progress=not args.quiet, threads=args.threads,
             compute_dtype=args.compute_dtype)
    return EXIT_OK


def cmd_attacks(args) -> int:
    from .attacks import KINDS, all_attacks

    rows = []
    for b in sorted(all_attacks(), key=lambda b: (KINDS.index(b.kind), b.name)):
        reason = b.unavailable_reason()
        note = b.summary if reason is None else reason
        if b.prefers_gpu:
            note += " (runs on a CPU; much faster on a GPU)"
        rows.append((b.name, b.kind, "yes" if reason is None else "no", ", ".join(b.examples), note))
    head = ("attack", "kind", "here", "specs")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths)) + "  notes")
    for r in rows:
        print("  ".join(f"{x:<{w}}" for x, w in zip(r, widths)) + f"  {r[4]}")
    print("\nquantization cells go in the main table of the report; pruning, training and white-box attacks "
          "(recovery attacks) in a table of their own")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {"audit": cmd_audit, "card": cmd_card, "demo": cmd_demo, "attacks": cmd_attacks, "backends": cmd_attacks,
               "unlearn": cmd_unlearn, "sweep": cmd_sweep, "leaderboard": cmd_leaderboard}[args.command]
    try:
        return handler(args)
    except HubauditError as e:
        if os.environ.get("HUBAUDIT_DEBUG"):
            raise
        print(f"hubaudit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hubaudit: interrupted; finished cells are in the results store, run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug, not the user's doing: never exit 0 or 1 (a gate's codes)
        if os.environ.get("HUBAUDIT_DEBUG"):
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"hubaudit: internal error: {type(e).__name__}: {first} (a bug; HUBAUDIT_DEBUG=1 shows the traceback, "
              "please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
