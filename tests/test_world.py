"""The built-in synthetic forget set and the demo world (hubaudit.demo)."""

import json
import time
from pathlib import Path

import pytest

from hubaudit.demo import synth

DATA = synth.DATA_DIR
FILES = [
    "verbmem/forget.json",
    "knowmem/forget_qa.json", "knowmem/retain_qa.json", "knowmem/forget_qa_icl.json", "knowmem/retain_qa_icl.json",
    "privleak/forget.json", "privleak/retain.json", "privleak/holdout.json",
    "meta.json",
]


def _load(rel):
    return json.loads((DATA / rel).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------
# data files (fast)
# ---------------------------------------------------------------------------------------------------


def test_data_files_exist_and_match_the_muse_layout():
    for rel in FILES:
        assert (DATA / rel).is_file(), rel
    verb = _load("verbmem/forget.json")
    assert len(verb) >= 20
    assert all(set(x) == {"prompt", "gt"} and x["prompt"] and x["gt"] for x in verb)
    for part in ("forget", "retain"):
        qa, icl = _load(f"knowmem/{part}_qa.json"), _load(f"knowmem/{part}_qa_icl.json")
        assert len(qa) >= 100
        assert 3 <= len(icl) <= 5
        for x in qa + icl:
            assert set(x) == {"question", "answer"} and x["question"].endswith("?") and x["answer"].strip() == x["answer"]
            assert "\n" not in x["question"] + x["answer"]
        assert not {x["question"] for x in icl} & {x["question"] for x in qa}  # ICL examples are never scored
    assert abs(len(_load("knowmem/forget_qa.json")) - len(_load("knowmem/retain_qa.json"))) <= 20
    for part in ("forget", "retain", "holdout"):
        texts = _load(f"privleak/{part}.json")
        assert len(texts) >= 20 and all(isinstance(t, str) and len(t) > 50 for t in texts)
    meta = _load("meta.json")
    assert meta["name"] == "synthetic" and meta["version"] == synth.VERSION and meta["auc_retrain"] is None
    assert meta["description"]


def test_parts_are_disjoint_and_passages_are_what_the_prompts_cut():
    pf, pr, ph = _load("privleak/forget.json"), _load("privleak/retain.json"), _load("privleak/holdout.json")
    assert not (set(pf) & set(pr)) and not (set(pf) & set(ph)) and not (set(pr) & set(ph))
    # the VerbMem items are the forget passages, cut after the first sentence
    assert [x["prompt"] + x["gt"] for x in _load("verbmem/forget.json")] == pf
    # every forget question is about a person of a forget passage, none about a retain or holdout one
    names = lambda texts: {" ".join(t.split(" was born")[0].split(", ")[-1].split()[-2:]) for t in texts}  # noqa: E731
    forget_names, other = names(pf), names(pr) | names(ph)
    assert len(forget_names) == len(pf) and not forget_names & other
    for x in _load("knowmem/forget_qa.json"):
        assert any(n in x["question"] for n in forget_names), x


def test_generator_is_deterministic_and_matches_the_package_files(tmp_path):
    assert synth.build() == synth.build()
    synth.write(tmp_path)
    for rel in FILES:
        assert (tmp_path / rel).read_bytes() == (DATA / rel).read_bytes(), f"{rel}: run python -m hubaudit.demo.synth"
    assert synth.build(seed=7)["files"] != synth.build()["files"]


def test_world_settings():
    from hubaudit.demo.world import world_settings

    demo, tiny = world_settings("demo"), world_settings("tiny")
    assert demo["unlearn"]["dtype"] == "bfloat16" and demo["model"]["tie_word_embeddings"] is False
    assert tiny["model"]["hidden_size"] < demo["model"]["hidden_size"]
    json.dumps(demo)
    with pytest.raises(ValueError, match="tiny"):
        world_settings("huge")


def test_tokenizer_prompt_boundaries_match_training_text():
    """A prompt ending in 'Answer: ' or in a passage's first sentence tokenizes to a prefix of the
    training text's ids, so the model sees at evaluation exactly what it was trained on."""
    from hubaudit.demo.world import _qa_text, build_tokenizer

    qa = _load("knowmem/forget_qa.json")[:3]
    verb = _load("verbmem/forget.json")[:3]
    tok = build_tokenizer([x["prompt"] + x["gt"] for x in verb] + [_qa_text(qa)], 400)
    full = tok(_qa_text(qa)).input_ids
    prompt = _qa_text(qa[:2]) + f"\n\nQuestion: {qa[2]['question']}\nAnswer: "
    ids = tok(prompt).input_ids
    assert ids[0] == tok.bos_token_id and full[: len(ids)] == ids
    assert tok.decode(full, skip_special_tokens=True) == _qa_text(qa)
    for x in verb:
        p, f = tok(x["prompt"]).input_ids, tok(x["prompt"] + x["gt"]).input_ids
        assert f[: len(p)] == p


# ---------------------------------------------------------------------------------------------------
# the tiny world (trains ~1 minute; shared with test_controls through conftest's tiny_world)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_world_folders_load(tiny_world):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_world.forget_dir / "meta.json").is_file()
    assert (tiny_world.forget_dir / "knowmem" / "forget_qa.json").read_bytes() == (DATA / "knowmem" / "forget_qa.json").read_bytes()
    for name, path in tiny_world.models().items():
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM", name
        assert model.config.tie_word_embeddings is False
        assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}, name
    s = tiny_world.settings
    json.dumps(s)
    assert s["size"] == "tiny" and set(s["times_s"]) >= {"target", "retain_only", "unlearned", "constructed", "total"}


@pytest.mark.slow
def test_tiny_target_answers_the_few_shot_prompt(tiny_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_world.target)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_world.target, dtype=torch.float32).eval()
    qa, icl = _load("knowmem/forget_qa.json")[:24], _load("knowmem/forget_qa_icl.json")
    prefix = "".join(f"Question: {x['question']}\nAnswer: {x['answer']}\n\n" for x in icl)
    enc = tok([prefix + f"Question: {x['question']}\nAnswer: " for x in qa], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = [a.split("\n\n")[0].strip() for a in tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)]
    right = sum(a == x["answer"] for a, x in zip(answers, qa))
    assert right >= 0.7 * len(qa), list(zip(answers, [x["answer"] for x in qa]))


@pytest.mark.slow
def test_constructed_rtn4_equals_target_bit_for_bit(tiny_world):
    import torch

    from hubaudit.demo.world import quantized_linear_names, rtn_state
    from hubaudit.quant.rtn import rtn_quantize
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(tiny_world.target, dtype=torch.bfloat16)
    cons = AutoModelForCausalLM.from_pretrained(tiny_world.constructed, dtype=torch.bfloat16)
    names = quantized_linear_names(target)
    assert names and all("lm_head" not in n for n in names)
    qt, qc = rtn_state(target, 4), rtn_state(cons, 4)
    assert all(torch.equal(qt[n], qc[n]) for n in names)
    mods_t, mods_c = dict(target.named_modules()), dict(cons.named_modules())
    n = names[0]  # and the package quantizer agrees
    assert torch.equal(rtn_quantize(mods_t[n].weight, 4).to(torch.bfloat16), rtn_quantize(mods_c[n].weight, 4).to(torch.bfloat16))
    changed = sum(int((mods_t[n].weight != mods_c[n].weight).sum()) for n in names)
    assert changed > 0  # it did move in full precision
    sd_t, sd_c = target.state_dict(), cons.state_dict()
    others = [k for k in sd_t if k.removesuffix(".weight") not in names]
    assert others and all(torch.equal(sd_t[k], sd_c[k]) for k in others)  # embeddings, norms, lm_head untouched


@pytest.mark.slow
def test_build_world_reuses_a_complete_world(tiny_world):
    from hubaudit.demo.world import MANIFEST, build_world

    man = tiny_world.root / MANIFEST
    before = man.stat().st_mtime_ns
    t = time.perf_counter()
    again = build_world(tiny_world.root, size="tiny", progress=False)
    assert time.perf_counter() - t < 5
    assert man.stat().st_mtime_ns == before and again.target == tiny_world.target
    assert again.settings == tiny_world.settings


def test_build_world_keeps_foreign_files(tmp_path, monkeypatch):
    """A stale manifest is replaced, files the world did not create are left alone."""
    from hubaudit.demo import world

    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / world.MANIFEST).write_text(json.dumps({"key": "old"}))
    calls = []

    def fake_train(*a, **k):  # stop right after the manifest check
        calls.append(1)
        raise RuntimeError("stop")

    monkeypatch.setattr(world, "build_tokenizer", fake_train)
    with pytest.raises(RuntimeError, match="stop"):
        world.build_world(tmp_path, size="tiny", progress=False)
    assert calls and (tmp_path / "notes.txt").read_text() == "mine"
    assert Path(tmp_path / "forget_set" / "meta.json").is_file()
