import pytest
import torch

from hubaudit.errors import SpecError
from hubaudit.quant import QuantSpec, get_backend, parse_specs
from hubaudit.quant.rtn import rtn_quantize


def test_rtn_is_the_papers_formula_per_tensor():
    w = torch.tensor([[0.8, -0.1, 0.26], [0.06, -0.8, 0.4]])
    d = 0.8 / 8  # D = max|w| / 2^(N-1), N = 4
    expected = d * torch.round(w / d)
    assert torch.equal(rtn_quantize(w, 4), expected)
    assert torch.allclose(rtn_quantize(w, 4), torch.tensor([[0.8, -0.1, 0.3], [0.1, -0.8, 0.4]]))


def test_rtn_groups_and_channels_use_their_own_maximum():
    w = torch.tensor([[1.0, 0.3, 0.01, 0.02], [0.1, 0.05, 4.0, 0.0]])
    per_row = rtn_quantize(w, 2, per_channel=True)  # D = row max / 2
    assert torch.allclose(per_row[0], torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert torch.allclose(per_row[1], torch.tensor([0.0, 0.0, 4.0, 0.0]))
    grouped = rtn_quantize(w, 2, group_size=2)  # D per pair of columns
    assert torch.allclose(grouped[0], torch.tensor([1.0, 0.5, 0.01, 0.02]))  # small group, small step
    assert torch.equal(rtn_quantize(torch.zeros(2, 4), 4), torch.zeros(2, 4))


def test_rtn_groups_that_do_not_divide_the_width_end_with_a_shorter_group():
    """704 columns in groups of 128 (the demo model's down_proj): five full groups and one of 64."""
    torch.manual_seed(0)
    w = torch.randn(3, 704)
    q = rtn_quantize(w, 4, group_size=128)
    assert q.shape == w.shape
    for start in range(0, 704, 128):
        part = w[:, start:start + 128]
        assert torch.equal(q[:, start:start + 128], rtn_quantize(part, 4, per_channel=True))
    assert w[:, 640:].shape[1] == 64


def test_more_bits_never_worse_on_random_weights():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    errs = [(rtn_quantize(w, b) - w).pow(2).mean().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4


def test_rtn_backend_quantizes_linears_and_keeps_lm_head(random_world):
    from hubaudit.modeling import ModelSource

    src = ModelSource(random_world["model"], device="cpu")
    backend, spec = get_backend("rtn:4")
    q, info = backend.quantize(src, spec)
    layer = q.model.layers[0].mlp.down_proj.weight
    orig = src.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(layer, rtn_quantize(orig, 4).to(layer.dtype)) and not torch.equal(layer, orig)
    assert torch.equal(q.lm_head.weight, src.model.lm_head.weight)
    assert torch.equal(q.model.embed_tokens.weight, src.model.model.embed_tokens.weight)
    assert info["linear_layers_quantized"] == 2 * 7 and info["granularity"] == "per tensor"
    # the full-precision model the source holds is untouched
    assert torch.equal(src.model.model.layers[0].mlp.down_proj.weight, orig)
    qh, info = get_backend("rtn:4:head")[0].quantize(src, QuantSpec.parse("rtn:4:head"))
    assert torch.equal(qh.lm_head.weight, rtn_quantize(src.model.lm_head.weight, 4).to(qh.lm_head.weight.dtype))


@pytest.mark.parametrize("spec, message", [
    ("rtn", "needs a bit width"),
    ("rtn:9", "from 2 to 8"),
    ("rtn:four", "whole number"),
    ("rtn:4:g0", "unknown option"),
    ("rtn:4:g64:ch", "not both"),
    ("rnt:4", "did you mean 'rtn'"),
    ("cast:int8", "cast:fp32, cast:fp16 or cast:bf16"),
    ("rtn::4", "empty part"),
    ("fp", "always audited"),
])
def test_bad_specs_say_what_to_do(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_specs(spec)


def test_specs_parse_in_order_without_duplicates():
    assert [str(s) for s in parse_specs("rtn:4, cast:bf16,rtn:4,RTN:8:g128")] == ["rtn:4", "cast:bf16", "rtn:8:g128"]


@pytest.mark.parametrize("dtype, same_spec, other_spec", [("float32", "cast:fp32", "cast:bf16"),
                                                           ("bfloat16", "cast:bf16", "cast:fp32")])
def test_cast_to_the_compute_type_reuses_the_full_precision_cell(random_world, dtype, same_spec, other_spec):
    import hubaudit

    report = hubaudit.audit(random_world["model"], forget=random_world["forget"], specs="cast:fp32,cast:bf16",
                            metrics="knowmem_f", store=False, progress=False, device="cpu", dtype=dtype)
    fp, same, other = (report.cell("model", s) for s in ("fp", same_spec, other_spec))
    assert same.backend["settings"]["identical_to_full_precision"] is True
    assert same.metrics == fp.metrics and same.items == fp.items
    other_dtype = other_spec.replace("cast:bf16", "bfloat16").replace("cast:fp32", "float32")
    settings = other.backend["settings"]
    assert (settings["dtype"], settings["weights"]) == (other_dtype, other_dtype)
    assert settings["compute"] in (other_dtype, "float32") and "identical_to_full_precision" not in settings
    assert other.status == "ok"


@pytest.mark.parametrize("native", [None, "AMX"])
def test_cast_rounds_the_weights_and_computes_in_float32_where_16_bit_is_not_native(tmp_path, monkeypatch, native):
    """cast:bf16 means bf16 weight values; without native bf16 they are computed in float32 (not emulated)."""
    import hubaudit.modeling as modeling
    from factories import make_random_model

    from hubaudit.modeling import ModelSource, rounding_changes

    monkeypatch.setattr(modeling, "native_half", lambda d: {"bfloat16": native, "float16": None})
    src = ModelSource(make_random_model(tmp_path / "m", seed=3, dtype="float32"), device="cpu")
    assert rounding_changes(src.model, "bfloat16") > 0  # float32 weights that bf16 cannot hold
    backend, spec = get_backend("cast:bf16")
    q, settings = backend.quantize(src, spec)
    compute = torch.bfloat16 if native else torch.float32
    assert {p.dtype for p in q.parameters()} == {compute}
    assert (settings["weights"], settings["compute"]) == ("bfloat16", str(compute).removeprefix("torch."))
    assert "identical_to_full_precision" not in settings
    w, orig = q.model.layers[0].mlp.down_proj.weight, src.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(w, orig.to(torch.bfloat16).to(compute))  # the bf16 values, whatever it computes in
    assert rounding_changes(src.model, "bfloat16") > 0  # the source's own model untouched
    # forced either way by the spec
    q, settings = get_backend("cast:bf16:compute=fp32")[0].quantize(src, QuantSpec.parse("cast:bf16:compute=fp32"))
    assert settings["compute"] == "float32" and {p.dtype for p in q.parameters()} == {torch.float32}
    q, settings = get_backend("cast:bf16:compute=native")[0].quantize(src, QuantSpec.parse("cast:bf16:compute=native"))
    assert settings["compute"] == "bfloat16" and {p.dtype for p in q.parameters()} == {torch.bfloat16}
    with pytest.raises(SpecError, match="compute=fp32"):
        parse_specs("cast:bf16:compute=fp16")


def test_cast_bf16_of_a_bf16_checkpoint_computed_in_float32_is_the_full_precision_cell(random_world, monkeypatch):
    """HUBAUDIT_NO_NATIVE_HALF=1 (a CPU without AVX512-BF16/AMX): the audit computes the bf16 checkpoint in
    float32, and cast:bf16 changes no weight and computes in float32 too: the same cell, not a slower one."""
    import hubaudit

    monkeypatch.setenv("HUBAUDIT_NO_NATIVE_HALF", "1")
    report = hubaudit.audit(random_world["model"], forget=random_world["forget"], specs="cast:bf16",
                            metrics="knowmem_f", store=False, progress=False, device="cpu")
    assert report.inputs["dtype"] == "float32"
    cell = report.cell("model", "cast:bf16")
    assert cell.backend["settings"]["compute"] == "float32" and cell.backend["settings"]["weights"] == "bfloat16"
    assert cell.backend["settings"]["identical_to_full_precision"] is True
    assert cell.metrics == report.cell("model", "fp").metrics
