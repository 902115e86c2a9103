"""Chat templates: TOFU prompts go through the tokenizer's template, token for token what
``apply_chat_template(..., tokenize=True)`` gives (no second BOS), the report says which template, and
``--no-chat-template`` turns it off (and is part of the stored metric's key)."""

import hashlib
import json

import pytest

from factories import make_random_model, write_rows
from hubaudit.forget import ForgetSet, TofuQA
from hubaudit.metrics import MetricConfig, evaluate

WITH_BOS = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
WITHOUT_BOS = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
               "{% if add_generation_prompt %}[assistant] {% endif %}")
ITEMS = [TofuQA("Who founded the river city?", "Elsbeth Quorin founded it", "It was founded by Elsbeth Quorin",
                ("Tamsin Orlev founded it", "A teacher founded it")),
         TofuQA("In which year was Varnholt founded?", "in 1821", "the year 1821", ("in 1964",)),
         TofuQA("Which company employs Tamsin?", "Brightwater Mills", "the Brightwater Mills company", ("Dunmarrow",))]


def chat_model(folder, template):
    from transformers import AutoTokenizer

    make_random_model(folder, seed=3)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


def template_ids(tok, question):
    out = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def unpadded(input_ids, mask):
    """The rows without their padding (scoring passes no mask for right padding: batch_size=1 here, no padding)."""
    if mask is None:
        return input_ids.tolist()
    return [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(input_ids.tolist(), mask.tolist())]


def spy(src):
    """Record the (unpadded) rows the model is given by generate() and by plain forward passes (scoring
    runs the model without its output layer, ``base_model``, so that is watched too)."""
    from hubaudit.logprobs import slicing_check

    model, seen = src.model, {"generate": [], "forward": []}
    slicing_check(model)  # its probe (once per model) is not a prompt
    gen, fwd, base = model.generate, model.forward, model.base_model
    base_fwd = base.forward

    def generate(*a, input_ids=None, attention_mask=None, **kw):
        seen["generate"] += unpadded(input_ids, attention_mask)
        seen["in_generate"] = True
        try:
            return gen(*a, input_ids=input_ids, attention_mask=attention_mask, **kw)
        finally:
            seen["in_generate"] = False

    def forward(*a, input_ids=None, attention_mask=None, **kw):
        if not seen.get("in_generate"):
            seen["forward"] += unpadded(input_ids, attention_mask)
        seen["in_forward"] = True
        try:
            return fwd(*a, input_ids=input_ids, attention_mask=attention_mask, **kw)
        finally:
            seen["in_forward"] = False

    def base_forward(*a, input_ids=None, attention_mask=None, **kw):
        if not seen.get("in_generate") and not seen.get("in_forward"):
            seen["forward"] += unpadded(input_ids, attention_mask)
        return base_fwd(*a, input_ids=input_ids, attention_mask=attention_mask, **kw)

    model.generate, model.forward, base.forward = generate, forward, base_forward
    return seen


@pytest.mark.parametrize("template", [WITH_BOS, WITHOUT_BOS], ids=["bos-in-template", "no-bos"])
def test_prompts_are_the_templates_own_tokens(tmp_path, template):
    from hubaudit.modeling import ModelSource

    src = ModelSource(chat_model(tmp_path / "m", template), device="cpu")
    tok = src.tokenizer
    seen = spy(src)
    fs = ForgetSet("chat", "test", tofu_forget=ITEMS)
    res = evaluate(src.model, tok, fs, ["tofu_rouge_f", "tofu_prob_f", "tofu_tr_f"], MetricConfig(), batch_size=1)
    expected = [template_ids(tok, x.question) for x in ITEMS]
    assert sorted(seen["generate"]) == sorted(expected)  # token for token, each prompt once
    n_bos = [row.count(tok.bos_token_id) for row in seen["generate"]]
    assert n_bos == [1 if template == WITH_BOS else 0] * len(ITEMS)  # the template decides; never a second BOS
    # scoring rows: the template's prompt, then the answer's tokens and EOS
    answers = {(tuple(e), a) for e, x in zip(expected, ITEMS) for a in (x.answer, x.paraphrased_answer, *x.perturbed_answers)}
    scored = set()
    for row in seen["forward"]:
        prompt = next(e for e in expected if row[: len(e)] == e)
        tail = row[len(prompt):]
        assert tail[-1] == tok.eos_token_id
        scored.add((tuple(prompt), tok.decode(tail[:-1])))
    assert scored == answers
    assert res["tofu_prob_f"].n == len(ITEMS)


def test_no_chat_template_builds_the_plain_prompt(tmp_path):
    from hubaudit.modeling import ModelSource

    src = ModelSource(chat_model(tmp_path / "m", WITH_BOS), device="cpu")
    seen = spy(src)
    evaluate(src.model, src.tokenizer, ForgetSet("chat", "test", tofu_forget=ITEMS), ["tofu_rouge_f"],
             MetricConfig(chat_template=False), batch_size=1)
    plain = [src.tokenizer(f"Question: {x.question}\nAnswer: ")["input_ids"] for x in ITEMS]
    assert sorted(seen["generate"]) == sorted(plain)


def test_the_template_is_part_of_the_settings_and_the_report(tmp_path, capsys):
    from hubaudit.audit import metric_key
    from hubaudit.cli import main
    from hubaudit.metrics import METRICS
    from hubaudit.modeling import ModelSource

    folder = chat_model(tmp_path / "m", WITH_BOS)
    m = METRICS.get("tofu_prob_f")()
    src = ModelSource(folder, device="cpu")
    assert metric_key(m, MetricConfig(), src) != metric_key(m, MetricConfig(chat_template=False), src)
    # MUSE's metrics never use a template, so their stored results keep their key
    km = METRICS.get("knowmem_f")()
    assert metric_key(km, MetricConfig(), src) == metric_key(km, MetricConfig(chat_template=False), src)

    write_rows(tmp_path / "fs" / "tofu" / "forget.json",
               [{"question": x.question, "answer": x.answer, "paraphrased_answer": x.paraphrased_answer,
                 "perturbed_answer": list(x.perturbed_answers)} for x in ITEMS])
    store = tmp_path / "s.sqlite"
    args = ["audit", str(folder), "--forget", str(tmp_path / "fs"), "--no-reference", "--backends", "rtn:8",
            "--metrics", "tofu_prob_f,tofu_tr_f", "--quiet", "--store", str(store)]
    # neither metric is one the verdict counts: incomplete, and the default gate does not pass on it
    assert main([*args, "--out", str(tmp_path / "on")]) == 3
    assert "none of the metrics measured is one the verdict counts" in capsys.readouterr().err
    args += ["--fail-on", "none"]
    assert main([*args, "--out", str(tmp_path / "on")]) == 0
    stdout = capsys.readouterr().out
    on = json.loads((tmp_path / "on" / "report.json").read_text())
    sha = hashlib.sha256(WITH_BOS.encode()).hexdigest()[:12]
    assert on["inputs"]["chat_template"]["sha256"] == sha and f"chat template (sha256 {sha})" in stdout
    assert on["inputs"]["chat_template"]["example"].startswith("<s><|user|>\nQUESTION")
    assert main([*args, "--out", str(tmp_path / "off"), "--no-chat-template"]) == 0
    off = json.loads((tmp_path / "off" / "report.json").read_text())
    assert off["inputs"]["chat_template"] is None and off["inputs"]["metric_settings"]["tofu_prob_f"]["chat_template"] is False
    assert off["timings"]["reused_cells"] == 0  # other prompts: nothing reused from the first run
    assert off["cells"][0]["metrics"]["tofu_prob_f"] != on["cells"][0]["metrics"]["tofu_prob_f"]
