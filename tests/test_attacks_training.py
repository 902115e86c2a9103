"""The benign fine-tuning attacks: ``finetune:unrelated`` (full fine-tuning on text shipped with hubaudit) and
``qlora:nf4`` (NF4 weights + a LoRA adapter, on CPU): specs, the corpus, what they change and what they leave."""

import pytest

from hubaudit.attacks import get_attack, parse_specs, spec_kind
from hubaudit.errors import SpecError
from hubaudit.forget import load_forget_set
from hubaudit.modeling import ModelSource


@pytest.mark.parametrize("spec, message", [
    ("finetune", "name the text to fine-tune on"),
    ("finetune:news", "name the text to fine-tune on"),
    ("finetune:unrelated:0", "steps must be 1 to 100000"),
    ("finetune:unrelated:many", "steps must be an integer"),
    ("finetune:unrelated:16:foo=1", "unknown option 'foo=1'"),
    ("finetune:unrelated:16:32", "unexpected '32'"),
    ("finetune:unrelated:lr=-1", "lr must be > 0"),
    ("qlora", "use qlora:nf4"),
    ("qlora:fp4", "use qlora:nf4"),
    ("qlora:nf4:0", "rank must be 1 to 4096"),
    ("qlora:nf4:8:16:4", "unexpected '4'"),
    ("qlora:nf4:batch=0", "batch must be at least 1"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_specs(spec)


def test_spec_defaults_kinds_and_availability():
    from hubaudit.attacks.finetune import parse_finetune
    from hubaudit.attacks.qlora import parse_qlora

    ft, spec = get_attack("finetune:unrelated")
    assert parse_finetune(spec) == {"corpus": "unrelated", "steps": 16, "lr": 2e-5, "batch": 8, "seed": 0}
    assert parse_finetune(get_attack("finetune:unrelated:64:lr=1e-4")[1])["steps"] == 64
    q, qspec = get_attack("qlora:nf4:8:32")
    assert parse_qlora(qspec) == {"format": "nf4", "rank": 8, "steps": 32, "lr": 2e-4, "batch": 8, "seed": 0}
    assert parse_qlora(get_attack("qlora:nf4")[1])["rank"] == 16
    for attack in (ft, q):
        assert attack.kind == "training" and attack.family == "recovery" and not attack.needs_gpu and attack.prefers_gpu
        assert attack.rows_request(spec) is None  # nothing from the forget set
    assert spec_kind("finetune:unrelated") == spec_kind("qlora:nf4") == "recovery"
    assert q.requires == ("peft", "bitsandbytes") and q.extra == "attacks"
    assert q.unavailable_reason() is None  # installed here (the attacks extra)


def test_hubaudit_attacks_lists_them(capsys):
    from hubaudit.cli import main

    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "training" in rows["finetune"] and "yes" in rows["qlora"] and "faster on a GPU" in rows["qlora"]


def test_a_bad_spec_on_the_command_line_exits_2(capsys, tmp_path, random_world):
    from hubaudit.cli import main

    code = main(["audit", str(random_world["model"]), "--no-store", "--quiet", "--out", str(tmp_path / "o"),
                 "--forget", str(random_world["forget"]), "--backends", "qlora:nf4:x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "rank must be an integer" in err[0]


def test_the_corpus_ships_and_is_unrelated():
    from importlib import resources

    from hubaudit.attacks.finetune import corpus_lines

    lines = corpus_lines("unrelated")
    assert len(lines) >= 50 and not any(ln.startswith("#") for ln in lines)
    calibration = resources.files("hubaudit.quant").joinpath("data", "calibration.txt").read_text()
    assert not any(ln in calibration for ln in lines)  # not the quantizers' calibration text
    text = " ".join(lines).lower()
    fs = load_forget_set("synthetic")  # nothing the built-in forget set asks about
    assert not [q.answer for q in fs.forget_qa if len(q.answer) > 3 and q.answer.lower() in text]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_changes_weights_deterministically_and_leaves_the_source(random_world):
    import torch

    src = ModelSource(random_world["model"], device="cpu")
    before = _weights(src.model)
    attack, spec = get_attack("finetune:unrelated:3:lr=1e-3")
    a, settings = attack.build(src, spec)
    b, _ = attack.build(src, spec)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # seeded
    assert sum(not torch.equal(sa[k], before[k]) for k in sa) >= len(sa) // 2  # every weight trains
    assert all(torch.equal(v, before[k]) for k, v in src.model.state_dict().items())  # the source is untouched
    assert settings["steps"] == 3 and settings["train_rows"] >= 50 and settings["final_loss"] < settings["first_loss"]
    assert next(a.parameters()).dtype == src.compute_dtype()


@pytest.mark.parametrize("native", [True, False])
def test_finetune_trains_in_native_half_or_float32_never_emulated(random_world, monkeypatch, native):
    from hubaudit.attacks.finetune import training_precision
    from hubaudit.modeling import native_half

    if not native:
        monkeypatch.setenv("HUBAUDIT_NO_NATIVE_HALF", "1")
    src = ModelSource(random_world["model"], device="cpu")  # a bfloat16 checkpoint
    prec = training_precision(src)
    assert not prec.emulated
    has = native_half("cpu")["bfloat16"] is not None
    assert prec.compute == ("bfloat16" if has else "float32")
    attack, spec = get_attack("finetune:unrelated:1")
    assert attack.cache_key(spec, src)["precision"] == prec.compute  # stored results keep them apart
    _, settings = attack.build(src, spec)
    assert settings["precision"]["compute"] == prec.compute


def test_qlora_runs_on_cpu_and_evaluates_nf4_with_the_adapter(random_world, tmp_path):
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    import hubaudit

    src = ModelSource(random_world["model"], device="cpu")
    before = _weights(src.model)
    attack, spec = get_attack("qlora:nf4:4:3:lr=1e-2")
    model, settings = attack.build(src, spec)
    lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert lora and any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert any(float(m.lora_B["default"].weight.abs().sum()) > 0 for m in lora)  # B starts at zero: it trained
    assert settings["rank"] == 4 and settings["quant_type"] == "nf4" and settings["adapter_parameters"] > 0
    assert all(torch.equal(v, before[k]) for k, v in src.model.state_dict().items())
    # end to end, as a cell of an audit
    report = hubaudit.audit(random_world["model"], reference=False, forget=random_world["forget"], specs="qlora:nf4:4:2",
                            metrics="knowmem_f,knowmem_r", store=False, progress=False)
    cell = report.cell("model", "qlora:nf4:4:2")
    assert cell.status == "ok", cell.reason
    assert cell.backend["versions"]["peft"] and cell.n_items["knowmem_f"] == 12
    assert "qlora:nf4:4:2" in report.derived["retain_effect"]  # a training attack reports its retain effect
