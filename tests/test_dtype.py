"""The compute dtype: the checkpoint's own where the hardware computes it natively (``auto``), else
float32; what was chosen and why is in the report, and stored results never cross dtypes."""

import json

import pytest

import hubaudit
import hubaudit.modeling as modeling
from hubaudit.modeling import choose_compute_dtype


@pytest.mark.parametrize("native, device, stored, expected", [
    ({"bfloat16": "AMX", "float16": None}, "cpu", "bfloat16", "bfloat16"),
    ({"bfloat16": "AVX512-BF16", "float16": None}, "cpu", "bfloat16", "bfloat16"),
    ({"bfloat16": None, "float16": None}, "cpu", "bfloat16", "float32"),  # emulated bf16: float32, exact
    ({"bfloat16": "AMX", "float16": None}, "cpu", "float16", "float32"),
    ({"bfloat16": "AMX", "float16": "AMX-FP16"}, "cpu", "float16", "float16"),
    ({"bfloat16": "AMX", "float16": None}, "cpu", "float32", "float32"),  # never below the checkpoint
    ({"bfloat16": "AMX", "float16": None}, "cpu", None, "float32"),
    ({"bfloat16": "H100", "float16": "H100"}, "cuda", "bfloat16", "bfloat16"),
    ({"bfloat16": "H100", "float16": "H100"}, "cuda", None, "bfloat16"),
    ({"bfloat16": None, "float16": "T4"}, "cuda", "bfloat16", "float32"),  # no bf16 on the GPU
    ({"bfloat16": None, "float16": "T4"}, "cuda", "float16", "float16"),
])
def test_auto_takes_the_checkpoints_dtype_where_it_is_native(monkeypatch, native, device, stored, expected):
    monkeypatch.setattr(modeling, "native_half", lambda d: native)
    dtype, reason = choose_compute_dtype(device, stored)
    assert dtype == expected
    assert reason.startswith("auto:")
    if dtype != "float32":
        assert native[dtype] in reason  # the report says which hardware feature made it native
    assert choose_compute_dtype(device, stored, "float16") == ("float16", "asked for (--dtype)")


def test_this_machine_reports_what_torch_says(monkeypatch):
    import torch

    native = modeling.native_half("cpu")
    has_bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert bool(native["bfloat16"]) == has_bf16
    monkeypatch.setenv("HUBAUDIT_NO_NATIVE_HALF", "1")
    assert choose_compute_dtype("cpu", "bfloat16")[0] == "float32"


def test_the_report_says_the_dtype_and_the_store_keeps_dtypes_apart(random_world, tmp_path):
    store = tmp_path / "results.sqlite"

    def run(dtype, out=None):
        cells = []
        report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs=[],
                                metrics="mia_auc", store=store, progress=False, dtype=dtype, out=out,
                                on_cell=cells.append)
        return report, cells[0]

    r32, c32 = run("float32")
    assert r32.inputs["dtype"] == "float32" and r32.inputs["dtype_reason"] == "asked for (--dtype)"
    r16, c16 = run("bfloat16")
    assert not c16.reused  # a float32 value is never served for a bf16 request
    assert r16.inputs["dtype"] == "bfloat16"
    assert run("float32")[1].reused and run("bfloat16")[1].reused  # each dtype's own value, reused
    report, _ = run("auto", tmp_path / "out")
    expected = choose_compute_dtype("cpu", "bfloat16")  # random_world's checkpoints are bf16
    assert (report.inputs["dtype"], report.inputs["dtype_reason"]) == expected
    assert json.loads((tmp_path / "out" / "report.json").read_text())["inputs"]["dtype"] == expected[0]
    assert expected[1] in (tmp_path / "out" / "report.md").read_text()


def test_a_bad_dtype_is_a_user_error(random_world, capsys):
    from hubaudit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["audit", str(random_world["model"]), "--dtype", "float8"])
    assert e.value.code == 2
    with pytest.raises(hubaudit.HubauditError, match="--dtype must be one of"):
        hubaudit.audit(random_world["model"], forget=random_world["forget"], dtype="fp8", progress=False)


# -- training and cast precision: 16-bit weights, computed natively or in float32 -------------------------


@pytest.mark.parametrize("native, requested, expected", [
    ("AMX", "auto", "bfloat16"),        # native: pure bf16, as before
    (None, "auto", "float32"),          # not native: bf16 values in float32, float32 matmuls
    ("AMX", "float32", "float32"),      # forced either way
    (None, "bfloat16", "bfloat16"),
])
def test_training_computes_in_16_bit_only_where_it_is_native(monkeypatch, native, requested, expected):
    from hubaudit.modeling import choose_precision

    monkeypatch.setattr(modeling, "native_half", lambda d: {"bfloat16": native, "float16": None})
    prec = choose_precision("cpu", "bfloat16", requested)
    assert (prec.weights, prec.compute) == ("bfloat16", expected)
    assert prec.emulated is (expected == "float32")
    assert prec.to_json()["reason"] == prec.reason and prec.reason
    assert choose_precision("cpu", "float32", "auto").compute == "float32"
    with pytest.raises(ValueError, match="float32 or the weights' dtype"):
        choose_precision("cpu", "bfloat16", "float16")


def test_emulated_bf16_loses_sub_step_updates_exactly_like_pure_bf16():
    """Weights holding bf16 values in float32, rounded after every optimizer step, end bit for bit where pure
    bf16 weights end (updates exact in bf16: a power-of-two learning rate times bf16 gradients), including the
    updates smaller than half a bf16 step, which both lose; float32 weights keep them."""
    import torch

    from hubaudit.modeling import ChangeCounter, round_weights_, rounding_changes

    torch.manual_seed(0)
    w = torch.randn(32, 32).to(torch.bfloat16)
    g = torch.randn(32, 32).to(torch.bfloat16)
    for lr in (2.0 ** -20, 2.0 ** -11, 2.0 ** -7):
        pure, emulated, master = (torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.float()),
                                  torch.nn.Parameter(w.float()))
        opts = [torch.optim.SGD([p], lr=lr) for p in (pure, emulated, master)]
        counter = ChangeCounter([emulated], "bfloat16")
        for _ in range(4):
            pure.grad, emulated.grad, master.grad = g.clone(), g.float(), g.float()
            counter.snapshot()
            for o in opts:
                o.step()
            round_weights_(emulated, "bfloat16")
            changed = counter.changed()
        assert emulated.dtype == torch.float32 and rounding_changes(emulated, "bfloat16") == 0
        assert torch.equal(pure.float(), emulated), lr
        lost = int((pure == w).sum())
        if lr == 2.0 ** -20:  # every update far below half a bf16 step: all lost, as in pure bf16
            assert lost == w.numel() and changed == 0
            assert int((master != w.float()).sum()) > 0.9 * w.numel()  # float32 weights keep them
        else:
            assert 0 < changed <= w.numel() - lost
