"""Every quantization backend on a tiny model: it quantizes, the metrics run on the result, and the
weights really are rounded the way that backend rounds (distinct values per group, error size).

The matrix model has hidden size 256 and intermediate size 512, so every group size used here divides
every layer and GGUF's k-quants (blocks of 256) apply without llama.cpp's fallback types. A backend
whose package is not installed is skipped with the pip extra to install; CI installs them all.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from hubaudit.errors import SpecError
from hubaudit.forget import load_forget_set
from hubaudit.metrics import MetricConfig, evaluate
from hubaudit.modeling import ModelSource
from hubaudit.quant import QuantSpec, all_backends, get_backend, parse_specs

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r", "mia_auc"]
FAST_METRICS = MetricConfig(verbmem_max_new_tokens=16, knowmem_max_new_tokens=8)
NEW_BACKENDS = ("bnb", "gptq", "awq", "hqq", "torchao", "gguf", "quanto")

# spec -> (levels: most distinct values a group may hold, group: "row" or N columns or "gidx",
#          largest relative RMS error of a layer's weights, compared with the original?)
MATRIX = {
    "rtn:4": (17, "tensor", 0.5, True),  # no clamp: -8..+8 steps
    "bnb:int8": (255, "row", 0.02, True),
    "bnb:nf4": (16, 64, 0.2, True),
    "bnb:fp4": (16, 64, 0.25, True),
    "bnb:nf4:dq": (16, 64, 0.2, True),
    # GPTQ/AWQ with fewer calibration windows than the default, to keep CI short (the positive-control
    # test below runs gptq:4 with its defaults)
    "gptq:4:n16": (16, "gidx", 0.3, True),
    "gptq:8:g64:n16:len256": (256, "gidx", 0.03, True),
    "awq:4:n16:len256": (16, 128, None, False),  # AWQ folds a per-channel scale into the previous op
    "hqq:4": (16, 64, 0.2, True),
    "hqq:2": (4, 64, 0.8, True),
    "torchao:int8": (255, "row", 0.02, True),
    "torchao:int4": (16, 128, 0.25, True),
    "quanto:int8": (255, "row", 0.02, True),
    "quanto:int4": (16, 128, 0.25, True),
    "quanto:int2": (4, 128, 0.8, True),
    # gguf: levels and group from each tensor's type (GGUF_LEVELS); the file mixes types
    "gguf:Q8_0": (None, None, 0.02, True),
    "gguf:Q4_0": (None, None, 0.2, True),
    "gguf:Q4_K_M": (None, None, 0.2, True),
    "gguf:Q5_K_S": (None, None, 0.1, True),
    "gguf:Q6_K": (None, None, 0.05, True),
    "gguf:Q3_K_M": (None, None, 0.3, True),
    "gguf:Q2_K": (None, None, 0.5, True),
}
GGUF_LEVELS = {"Q8_0": (32, 32), "Q6_K": (64, 16), "Q5_K": (32, 32), "Q4_K": (16, 32), "Q3_K": (8, 16),
               "Q2_K": (4, 16), "Q4_0": (16, 32), "Q5_0": (32, 32)}


@pytest.fixture(scope="module")
def kworld(tmp_path_factory, random_world):
    from factories import make_random_model

    root = tmp_path_factory.mktemp("kmodel")
    path = make_random_model(root / "model", seed=3, hidden=256, layers=2, dtype="bfloat16")
    src = ModelSource(path, device="cpu")
    return {"path": path, "source": src, "forget": load_forget_set(random_world["forget"])}


def effective_weight(module: torch.nn.Module, in_features: int) -> torch.Tensor:
    """The [out, in] matrix a (quantized) linear layer applies, probed with the identity."""
    p = next(iter(module.parameters()), None)
    buffers = list(module.buffers())
    ref = p if p is not None and p.dtype.is_floating_point else next((b for b in buffers if b.dtype.is_floating_point), p)
    dtype = ref.dtype if ref is not None and ref.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    dtype = getattr(module, "compute_dtype", None) if isinstance(getattr(module, "compute_dtype", None), torch.dtype) else dtype
    with torch.no_grad():
        eye = torch.eye(in_features, dtype=dtype)
        out = module(eye) - module(torch.zeros_like(eye))
    return out.T.float()


def max_distinct(w: torch.Tensor, group, module=None) -> int:
    if group == "tensor":
        return w.unique().numel()
    if group == "row":
        return max(r.unique().numel() for r in w)
    if group == "gidx":
        gidx = getattr(module, "g_idx", None)
        assert gidx is not None, "a GPTQ layer keeps its column-to-group map"
        gidx = gidx.long().cpu()
        return max(w[:, gidx == g].reshape(w.shape[0], -1)[r].unique().numel()
                   for g in gidx.unique() for r in range(w.shape[0]))
    groups = w.reshape(w.shape[0], -1, group)
    return max(g.unique().numel() for g in groups.reshape(-1, group))


def linear_names(model) -> list[tuple[str, int]]:
    return [(n, m.in_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"]


# -- specs, registry, availability (fast) -------------------------------------------------------------------


def test_every_backend_is_registered_with_examples_that_parse():
    names = {b.name for b in all_backends()}
    assert set(NEW_BACKENDS) <= names
    for b in all_backends():
        for ex in b.examples:
            parse_specs(ex)
        assert b.summary
        if b.name in NEW_BACKENDS:
            assert b.extra, f"{b.name} names the pip extra that installs it"
    for spec in MATRIX:
        parse_specs(spec)


@pytest.mark.parametrize("spec, message", [
    ("bnb", "bnb:int8, bnb:nf4 or bnb:fp4"),
    ("bnb:nf4:zz", "unknown option 'zz'"),
    ("bnb:int8:dq", "tN"),
    ("gptq:5", "2, 3, 4, 8 bits"),
    ("gptq:4:g0", "at least 1"),
    ("gptq:4:foo", "unknown option"),
    ("awq:3", "4 bits"),
    ("awq:4:ch", "needs groups"),
    ("hqq:7", "hqq supports"),
    ("hqq:4:g12", "multiple of 8"),
    ("torchao:int3", "torchao:int8 or torchao:int4"),
    ("torchao:int4:g48", "32, 64, 128, 256"),
    ("gguf", "needs a llama.cpp type"),
    ("gguf:Q2_K_S", "importance matrix"),
    ("gguf:Q4_K_X", "unknown GGUF type"),
    ("quanto:int3", "quanto:int8, quanto:int4 or quanto:int2"),
    ("file", "needs an artifact"),
])
def test_bad_specs_say_what_to_do(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_specs(spec)


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"bitsandbytes", "gptqmodel", "optimum", "hqq", "torchao", "gguf"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] in hidden else real(name, *a, **k))
    for b in all_backends():
        if b.name in NEW_BACKENDS:
            reason = b.unavailable_reason()
            assert reason and f"hubaudit[{b.extra}]" in reason, (b.name, reason)


def test_gguf_tensor_mix_follows_llama_cpp_rules():
    from hubaudit.quant.gguf_backend import tensor_types, use_more_bits

    # 32 layers: more bits on the first and last eighth and every third layer in between
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    tensors = [("tok", "token_embd", 4096)]
    for i in range(32):
        tensors += [(f"{i}.q", "attn_q", 4096), (f"{i}.v", "attn_v", 4096), (f"{i}.down", "ffn_down", 11040)]
    tensors += [("out", "output", 4096)]
    t = tensor_types(tensors, "Q4_K_M")
    assert t["tok"] == "Q4_K" and t["out"] == "Q6_K" and t["0.q"] == "Q4_K"
    assert t["0.v"] == "Q6_K" and t["4.v"] == "Q4_K" and t["6.v"] == "Q6_K"
    assert t["5.down"] == "Q5_0"  # 11040 is not a multiple of 256: llama.cpp falls back to Q5_0
    t = tensor_types(tensors, "Q4_0")
    assert t["out"] == "Q6_K" and t["0.v"] == "Q4_0" and t["tok"] == "Q4_0"
    assert tensor_types(tensors, "Q4_0", pure=True)["out"] == "Q4_0"
    assert tensor_types(tensors, "Q8_0")["out"] == "Q8_0"
    t = tensor_types(tensors, "Q4_K_S")
    assert [t[f"{i}.v"] for i in range(6)] == ["Q5_K"] * 4 + ["Q4_K"] * 2 and t["0.down"] == "Q5_1"
    t = tensor_types(tensors + [("0.o", "attn_output", 4096)], "Q3_K_M")
    assert [t[f"{i}.v"] for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"] and t["0.o"] == "Q4_K" and t["0.q"] == "Q3_K"
    assert t["1.down"] == "Q5_1" and t["2.down"] == "Q5_0"  # Q5_K on the first n/16 layers, else Q4_K (both fall back)
    t = tensor_types(tensors + [("0.o", "attn_output", 4096)], "Q2_K", n_gqa=4)
    assert t["0.v"] == "Q4_K" and t["0.o"] == "Q3_K" and t["0.q"] == "Q2_K" and t["out"] == "Q6_K"
    assert tensor_types(tensors, "Q2_K", n_gqa=1)["0.v"] == "Q3_K"
    # tiny widths: Q6_K -> Q8_0, Q4_K -> Q5_0
    assert tensor_types([("v", "attn_v", 128), ("o", "output", 128)], "Q4_K_M") == {"v": "Q8_0", "o": "Q8_0"}


def test_k_quants_pack_into_blocks_gguf_py_decodes():
    """Our Q4_K/Q5_K/Q6_K blocks decode (with gguf-py's independent decoder) to values close to the
    input, with the number of levels each format has, and more bits give smaller errors."""
    pytest.importorskip("gguf", reason="pip install 'hubaudit[gguf]'")
    import numpy as np

    from hubaudit.quant.gguf_backend import quantize_dequantize

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 512)) * 0.02).astype(np.float32)
    w[0, 5] = 0.4  # an outlier
    w[1] = 0.0  # an all-zero row stays zero
    err = {}
    for t, levels, sub in (("Q2_K", 4, 16), ("Q3_K", 8, 16), ("Q4_K", 16, 32), ("Q5_K", 32, 32), ("Q6_K", 64, 16)):
        d = quantize_dequantize(w, t)
        assert np.all(d[1] == 0)
        assert max(len(np.unique(g)) for g in d.reshape(-1, sub)) <= levels
        err[t] = float(np.sqrt(((d - w) ** 2).mean() / (w ** 2).mean()))
    assert err["Q6_K"] < err["Q5_K"] < err["Q4_K"] < err["Q3_K"] < err["Q2_K"] < 0.5, err


# sha256 of the blocks ggml's own quantizer (ggml_quantize_chunk, no imatrix; llama.cpp as vendored by
# llama-cpp-python 0.3.36) writes for golden_matrix(): our numpy port must produce the same bytes.
GGML_GOLDEN = {
    "Q2_K": "e746d00d844b3c7dca845876508ac867aeb6367b4dc1207649ad60e36026bcca",
    "Q3_K": "62b6b442946abe43a1ed6715ef725d2a80c0b1dd088cdaa417cc648415af0413",
    "Q4_K": "1df5247949010954ba15464d863bfce89eb1e5deef3581d64293e6f87243217f",
    "Q5_K": "24f5309f7929759fe2c1ac8ff6645ae43ffd230da36415b4633e2596445f7a2d",
    "Q6_K": "665c044dc6b8317c488e2ac079d29a82433cd1b9f6d9414381667860a06f7f30",
}


def golden_matrix():
    """16 x 512 float32 values from exact integer arithmetic (the same on every platform), with
    outliers and an all-zero run."""
    import numpy as np

    idx = np.arange(16 * 512, dtype=np.int64)
    v = (idx * 1103515245 + 12345) % 2**31
    w = (v.astype(np.float64) / 2**31 - 0.5).astype(np.float32) / np.float32(16)
    w[::97] *= np.float32(8)
    w[5 * 512:5 * 512 + 40] = 0
    return w.reshape(16, 512)


@pytest.mark.parametrize("qtype", sorted(GGML_GOLDEN))
def test_k_quants_are_bit_exact_with_ggml(qtype):
    import hashlib

    from hubaudit.quant.gguf_backend import K_QUANTIZERS

    blocks = K_QUANTIZERS[qtype](golden_matrix().reshape(-1, 256))
    assert hashlib.sha256(blocks.tobytes()).hexdigest() == GGML_GOLDEN[qtype]


# -- the matrix (slow) --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(MATRIX))
def test_backend_matrix(spec, kworld, record_property):
    backend, qspec = get_backend(spec)
    reason = backend.unavailable_reason()
    if reason:
        pytest.skip(reason)
    levels, group, max_err, compare = MATRIX[spec]
    src: ModelSource = kworld["source"]
    orig = {n: m.weight.detach().float().clone() for n, m in src.model.named_modules() if isinstance(m, torch.nn.Linear)}
    t0 = time.perf_counter()
    model, settings = backend.quantize(src, qspec)
    t_quant = time.perf_counter() - t0
    assert isinstance(settings, dict) and settings
    versions = backend.versions()
    assert "torch" in versions, versions
    assert all(versions.get(r.split(".")[0], versions.get(r.replace(".", "-"))) for r in backend.requires), versions

    mods = dict(model.named_modules())
    types = settings.get("tensor_types", {})
    for name, width in linear_names(src.model):
        w = effective_weight(mods[name], width)
        assert w.shape == orig[name].shape, name
        assert not torch.equal(w, orig[name]), f"{spec}: {name} was not changed"
        if spec.startswith("gguf:"):
            levels, group = GGUF_LEVELS[types[name]]
        n = max_distinct(w, group, mods[name])
        assert n <= levels, f"{spec}: {name} has {n} distinct values in a group (at most {levels})"
        assert n >= min(levels, 3), f"{spec}: {name} collapsed to {n} values"
        if compare:
            rel = ((w - orig[name]).pow(2).mean() / orig[name].pow(2).mean()).sqrt().item()
            assert rel < max_err, f"{spec}: {name} relative error {rel:.3f} >= {max_err}"
    if spec == "gguf:Q4_K_M":
        assert types["lm_head"] == "Q6_K" and types["model.embed_tokens"] == "Q4_K"
        assert "Q6_K" in {types[n] for n in types if "v_proj" in n or "down_proj" in n}
    if spec.startswith("gguf:"):  # the file holds the output matrix quantized too
        assert not torch.equal(model.lm_head.weight.float(), orig["lm_head"])
    elif not spec.startswith("awq"):
        head = mods["lm_head"]
        assert isinstance(head, torch.nn.Linear) and torch.equal(head.weight.float(), orig["lm_head"])

    t0 = time.perf_counter()
    res = evaluate(model, src.tokenizer, kworld["forget"], METRICS, FAST_METRICS)
    t_eval = time.perf_counter() - t0
    for m in METRICS:
        v = res[m].value
        assert math.isfinite(v) and (0 <= v <= 1 if m == "mia_auc" else 0 <= v <= 100), (m, v)
        assert res[m].n > 0
    record_property("timing", {"spec": spec, "quantize_s": round(t_quant, 2), "evaluate_s": round(t_eval, 2)})


@pytest.mark.slow
def test_audit_turns_backend_failures_into_cells(kworld, random_world, monkeypatch, tmp_path):
    """A spec the model cannot take becomes an error cell, a missing package a skipped cell naming the
    extra; the other cells still run."""
    import hubaudit
    from hubaudit.quant.bnb import BnbBackend

    monkeypatch.setattr(BnbBackend, "unavailable_reason", lambda self: "needs bitsandbytes: pip install 'hubaudit[bnb]'")
    report = hubaudit.audit(kworld["path"], forget=random_world["forget"], specs="gguf:Q8_0,hqq:4:g96,bnb:nf4",
                            store=tmp_path / "s.sqlite", progress=False, metric_config=FAST_METRICS)
    ok, bad, skipped = (report.cell("model", s) for s in ("gguf:Q8_0", "hqq:4:g96", "bnb:nf4"))
    if ok.status != "skipped":
        assert ok.status == "ok" and ok.backend["settings"]["file_type"] == "Q8_0" and "gguf" in ok.backend["versions"]
    if bad.status != "skipped":
        assert bad.status == "error" and "not a multiple of the group size 96" in bad.reason
    assert skipped.status == "skipped" and "hubaudit[bnb]" in skipped.reason


@pytest.mark.slow
def test_calibration_is_generic_text_and_settable(kworld, tmp_path, monkeypatch):
    from hubaudit.quant import gptq

    texts, name = gptq.calibration_texts()
    assert name.startswith("built-in") and len(texts) >= 200
    joined = " ".join(texts)
    synthetic = load_forget_set("synthetic")  # the built-in forget set: none of it is calibration text
    for text in [p.gt for p in synthetic.verbmem] + synthetic.mia_forget:
        for sentence in text.split(". "):
            assert len(sentence) < 25 or sentence not in joined, sentence
    windows, info = gptq.calibration_windows(kworld["source"].tokenizer, 4, 64)
    assert len(windows) == 4 and all(len(w) <= 64 for w in windows) and info["sha256"]
    f = tmp_path / "cal.txt"
    f.write_text("one passage about rivers.\n\nanother passage about bread.\n")
    monkeypatch.setenv(gptq.CALIBRATION_ENV, str(f))
    texts, name = gptq.calibration_texts()
    assert texts == ["one passage about rivers.", "another passage about bread."] and name == str(f)
    gptq.set_calibration(["custom text"], name="mine")
    try:
        assert gptq.calibration_texts() == (["custom text"], "mine")
    finally:
        gptq.set_calibration(None)
    assert QuantSpec.parse("gptq:4:n8:len64") and gptq.parse_gptq(QuantSpec.parse("gptq:4:n8:len64")).n_samples == 8


# -- the positive control (slow) ----------------------------------------------------------------------------

CONTROL_SPECS = ["rtn:4", "bnb:nf4", "bnb:fp4", "gptq:4", "gguf:Q4_0", "gguf:Q4_K_M"]


@pytest.mark.slow
def test_positive_control_is_caught_by_per_tensor_rtn_only(tiny_world, tmp_path):
    """The constructed control forgets inside the bins of *per-tensor* RTN-4 (its RTN-4 weights are the
    target's, bit for bit). rtn:4 brings the forgotten facts back. The group-wise 4-bit backends
    (bnb nf4/fp4 blocks of 64, GPTQ groups of 128, GGUF blocks of 32/256) do not: their steps are several
    times finer than a per-tensor step, so the control's update (median 0.26, p90 0.67 of a per-tensor
    step) crosses their bins and survives rounding (see the next test). That is a property of this
    control, not a failure of those backends; docs/guide/attacks.md says so."""
    import hubaudit

    specs = [s for s in CONTROL_SPECS if get_backend(s)[0].unavailable_reason() is None]
    report = hubaudit.audit(tiny_world.constructed, reference=tiny_world.target, forget=tiny_world.forget_dir,
                            specs=specs, store=tmp_path / "s.sqlite", progress=False)
    regained = report.derived["regained"]

    def worst(spec):
        return max(regained[spec][m] for m in ("verbmem_f", "knowmem_f"))

    assert report.verdict.label == "fragile" and report.verdict.worst_spec == "rtn:4"
    assert worst("rtn:4") >= 15
    for spec in specs[1:]:
        cell = report.cell("model", spec)
        assert cell.status == "ok", (spec, cell.reason)
        assert worst(spec) < report.verdict.threshold, f"{spec} now catches the per-tensor control: update the note in docs/guide/attacks.md"


@pytest.mark.slow
def test_why_group_wise_backends_miss_the_per_tensor_control(tiny_world):
    """||Q(constructed) - Q(target)|| / ||constructed - target||: 0 for per-tensor rtn:4 (rounding maps
    the control back onto the target), about 1 or more for group-wise 4-bit formats (the update survives)."""
    tgt = ModelSource(tiny_world.target, device="cpu")
    con = ModelSource(tiny_world.constructed, device="cpu")
    names = linear_names(tgt.model)
    ratio = {}
    for spec in ("rtn:4", "rtn:4:g128", "bnb:nf4", "bnb:fp4", "gguf:Q4_0", "gguf:Q4_K_M"):
        backend, qspec = get_backend(spec)
        if backend.unavailable_reason():
            continue
        qt, _ = backend.quantize(tgt, qspec)
        qc, _ = backend.quantize(con, qspec)
        num = den = 0.0
        for name, width in names:
            et, ec = effective_weight(qt.get_submodule(name), width), effective_weight(qc.get_submodule(name), width)
            t, c = tgt.model.get_submodule(name).weight.float(), con.model.get_submodule(name).weight.float()
            num += (ec - et).pow(2).sum().item()
            den += (c - t).pow(2).sum().item()
        ratio[spec] = (num / den) ** 0.5
    assert ratio["rtn:4"] == 0.0
    for spec, r in ratio.items():
        if spec != "rtn:4":
            assert r > 0.5, ratio
