"""Recovery attacks beyond quantization, through the one attack registry: magnitude pruning (``prune:0.2``),
its spec, what it zeroes, its own row in the report's table of recovery attacks and its words in a verdict;
and ``hubaudit attacks`` listing every kind."""

import json

import pytest

from hubaudit.attacks import all_attacks, get_attack, parse_specs, spec_kind
from hubaudit.attacks.prune import smallest_mask
from hubaudit.cli import main
from hubaudit.errors import SpecError


@pytest.mark.parametrize("spec, message", [
    ("prune", "needs a fraction of weights to zero"),
    ("prune:0", "between 0 and 1"),
    ("prune:1", "between 0 and 1"),
    ("prune:-0.2", "between 0 and 1"),
    ("prune:lots", "must be a number"),
    ("prune:0.2:rows", "unknown option 'rows'"),
])
def test_bad_prune_specs_are_one_line_errors(spec, message):
    with pytest.raises(SpecError, match=message) as e:
        parse_specs(spec)
    assert "\n" not in str(e.value)


def test_every_kind_is_registered_once():
    kinds = {a.name: (a.kind, a.family) for a in all_attacks()}
    assert kinds["rtn"] == ("quantization", "quantization") and kinds["file"] == ("quantization", "quantization")
    assert kinds["prune"] == ("pruning", "recovery") and kinds["relearn"] == ("training", "recovery")
    assert {a.name for a in all_attacks("pruning")} == {"prune"}
    assert spec_kind("prune:0.2") == "recovery" and spec_kind("rtn:4") == "quantization"
    assert get_attack("prune:0.2:head")[0].rows_request(get_attack("prune:0.2")[1]) is None  # needs no training rows


def test_the_mask_takes_exactly_the_smallest_fraction_ties_by_position():
    import torch

    w = torch.tensor([[0.5, -0.1, 0.1, 2.0, -0.1]])
    assert smallest_mask(w, 0.4).tolist() == [[False, True, True, False, False]]  # 2 of 5; the third 0.1 stays
    assert smallest_mask(w, 0.01).sum() == 0  # round(0.05) = 0 weights
    big = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    m = smallest_mask(big, 0.2)
    assert int(m.sum()) == round(0.2 * big.numel())
    assert big[m].abs().max() <= big[~m].abs().min()


def test_prune_zeroes_each_linear_layer_and_leaves_the_source_alone(random_world):
    import torch

    from hubaudit.modeling import ModelSource

    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    before = {k: v.clone() for k, v in src.model.state_dict().items()}
    attack, spec = get_attack("prune:0.2")
    model, settings = attack.build(src, spec)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, module in linears.items():
        w, w0 = module.weight, before[f"{name}.weight"]
        if name == "lm_head":
            assert torch.equal(w, w0)  # kept, as rtn keeps it
            continue
        zeroed = (w == 0) & (w0 != 0)
        assert int(zeroed.sum()) == round(0.2 * w.numel()), name
        assert w0[zeroed].abs().max() <= w0[~zeroed].abs().min()  # the smallest ones, nothing else
        assert torch.equal(w[~zeroed], w0[~zeroed])
    assert settings["linear_layers_pruned"] == len(linears) - 1 and abs(settings["sparsity"] - 0.2) < 1e-3
    assert all(torch.equal(v, before[k]) for k, v in src.model.state_dict().items())  # the source is untouched
    head, _ = attack.build(src, get_attack("prune:0.2:head")[1])
    assert int((head.lm_head.weight == 0).sum()) >= round(0.2 * head.lm_head.weight.numel())


def test_prune_runs_in_an_audit_with_its_own_row(capsys, tmp_path, random_world):
    out = tmp_path / "out"
    code = main([str(a) for a in ["audit", random_world["model"], "--reference", random_world["reference"], "--forget",
                 random_world["forget"], "--metrics", "knowmem_f,knowmem_r", "--backends", "rtn:4,prune:0.2",
                 "--store", tmp_path / "s.sqlite", "--out", out, "--quiet", "--fail-on", "none"]])
    stdout = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    cell = next(c for c in report["cells"] if c["role"] == "model" and c["spec"] == "prune:0.2")
    assert cell["status"] == "ok" and cell["backend"]["kind"] == "pruning"
    assert abs(cell["backend"]["settings"]["sparsity"] - 0.2) < 1e-3
    assert report["derived"]["kinds"] == {"rtn:4": "quantization", "prune:0.2": "recovery"}
    assert "knowmem_f" in report["derived"]["regained"]["prune:0.2"]
    md = (out / "report.md").read_text()
    quant_table, _, recovery = md.partition("Recovery attacks")
    assert "| rtn:4 |" in quant_table and "| prune:0.2 |" not in quant_table
    assert "| prune:0.2 |" in recovery.split("Original model")[0] and "magnitude pruning" in recovery
    assert "| prune:0.2 |" in stdout
    from hubaudit.card import render_section
    from hubaudit.results import AuditReport

    card = render_section(AuditReport.from_json(report))  # a stranger's card says which rows are not quantization
    assert "| `prune:0.2` (recovery attack) |" in card and "| `rtn:4` |" in card and "or a recovery attack" in card


def test_a_fragile_verdict_names_pruning():
    from factories import item_cell

    from hubaudit.audit import derive

    n = 30
    cells = [item_cell("model", "fp", knowmem_f=[0.0] * n), item_cell("model", "rtn:4", knowmem_f=[1.0] * n),
             item_cell("model", "prune:0.2", knowmem_f=[20.0] * n)]
    derived, verdict = derive(cells, ["rtn:4", "prune:0.2"], 5.0, 0.5)
    assert verdict.label == "fragile" and verdict.worst_spec == "prune:0.2"
    assert "does not survive a pruning attack" in verdict.summary and "quantization regains less" in verdict.summary
    assert derived["recommendation"]["action"] == "unlearn"


def test_backends_lists_every_kind(capsys):
    for command in ("backends", "attacks"):
        assert main([command]) == 0
        lines = capsys.readouterr().out.splitlines()
        kinds = {line.split()[0]: line.split()[1] for line in lines[1:] if line.strip() and " yes " in line}
        assert kinds["rtn"] == "quantization" and kinds["prune"] == "pruning" and kinds["relearn"] == "training"


@pytest.mark.parametrize("spec, close", [("prnue:0.2", "prune"), ("relern:steps=5", "relearn"), ("zzz:4", None)])
def test_an_unknown_attack_names_the_attacks_of_every_kind(spec, close):
    """A misspelt recovery attack is an unknown *attack*, listed with every kind's names, not an unknown
    quantization backend."""
    with pytest.raises(SpecError) as e:
        parse_specs(f"rtn:4,{spec}")
    msg = str(e.value)
    assert msg.startswith(f"unknown attack '{spec.split(':')[0]}'") and "quantization backend '" not in msg
    assert (f"did you mean '{close}'?" in msg) == (close is not None)
    for kind in ("quantization backends: ", "pruning: ", "training attacks: ", "white-box attacks: "):
        assert kind in msg
    assert all(a.name in msg for a in all_attacks()) and "see `hubaudit attacks`" in msg and "\n" not in msg


def test_a_spec_names_its_attack():
    _, spec = get_attack("prune:0.2")
    assert spec.name == "prune" and spec.backend == "prune" and spec.args == ("0.2",) and str(spec) == "prune:0.2"
    with pytest.raises(AttributeError):
        spec.backend = "rtn"  # the older name reads only
