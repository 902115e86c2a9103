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


def template_ids(tok, question, answer=None, system="You are a helpful assistant.", date="10 Apr 2025"):
    """open-unlearning's preprocess_chat_instance: [system, user] (+ assistant), the fixed date, tokenize=True."""
    chat = [{"role": "system", "content": system}] if system else []
    chat += [{"role": "user", "content": question}] + ([{"role": "assistant", "content": answer}] if answer else [])
    out = tok.apply_chat_template(chat, add_generation_prompt=answer is None, tokenize=True, date_string=date)
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
    # scoring rows: the whole conversation as the template renders it (the answer, then the template's
    # end-of-turn tokens), EOS appended where it does not end with one: open-unlearning's input_ids
    conversations = set()
    for x in ITEMS:
        for a in (x.answer, x.paraphrased_answer, *x.perturbed_answers):
            joint = template_ids(tok, x.question, a)
            conversations.add(tuple(joint + ([tok.eos_token_id] if joint[-1] != tok.eos_token_id else [])))
    assert {tuple(row) for row in seen["forward"]} == conversations
    assert all(row[-1] == tok.eos_token_id for row in seen["forward"])
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
    assert on["inputs"]["chat_template"]["example"].startswith(
        "<s><|system|>\nYou are a helpful assistant.</s>\n<|user|>\nQUESTION")
    assert main([*args, "--out", str(tmp_path / "off"), "--no-chat-template"]) == 0
    off = json.loads((tmp_path / "off" / "report.json").read_text())
    assert off["inputs"]["chat_template"] is None and off["inputs"]["metric_settings"]["tofu_prob_f"]["chat_template"] is False
    assert off["timings"]["reused_cells"] == 0  # other prompts: nothing reused from the first run
    assert off["cells"][0]["metrics"]["tofu_prob_f"] != on["cells"][0]["metrics"]["tofu_prob_f"]


# A Llama-3.x-style template: prints "Today Date: ..." from date_string, else from strftime_now (today).
LLAMA3 = ("{{ bos_token }}{% if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
          "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
          "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
          "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}\n\n{{ system }}<|eot_id|>"
          "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _freeze_today(monkeypatch, day):
    """Make the template's strftime_now return ``day`` (what transformers' chat-template renderer calls)."""
    import datetime as dt

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, day, 9, 0, 0)

    import transformers.utils.chat_template_utils as ctu

    monkeypatch.setattr(ctu, "datetime", Frozen)


def test_a_llama3_template_renders_the_same_prompt_on_every_day(tmp_path, monkeypatch):
    from hubaudit.metrics.prompts import PromptFormat
    from hubaudit.modeling import ModelSource

    tok = ModelSource(chat_model(tmp_path / "m", LLAMA3), device="cpu").tokenizer
    fmt, todays = PromptFormat.for_tokenizer(tok), PromptFormat.for_tokenizer(tok, date="")
    rendered = {}
    for day in (2, 3):
        _freeze_today(monkeypatch, day)
        rendered[day] = (fmt.render(tok, "Q?"), fmt.pair(tok, "Q?", "A."), fmt.describe(tok), todays.render(tok, "Q?"))
    assert rendered[2][:3] == rendered[3][:3]  # the fixed date: same text, same ids, same store key on both days
    assert "Today Date: 10 Apr 2025\n\nYou are a helpful assistant." in rendered[2][0]
    assert rendered[2][3] != rendered[3][3]  # the template's own date would have changed (the freeze works)


def test_the_store_key_follows_what_shapes_the_prompt(tmp_path):
    from hubaudit.audit import metric_key
    from hubaudit.metrics import METRICS
    from hubaudit.modeling import ModelSource

    src = ModelSource(chat_model(tmp_path / "m", LLAMA3), device="cpu")
    m = METRICS.get("tofu_rouge_f")()
    base = metric_key(m, MetricConfig(), src)
    assert metric_key(m, MetricConfig(), src) == base
    assert metric_key(m, MetricConfig(system_prompt="You are a pirate."), src) != base
    assert metric_key(m, MetricConfig(date_string="01 Jan 2030"), src) != base
    # the chat template itself, with the same settings: the key holds a hash of a rendered example
    src2 = ModelSource(chat_model(tmp_path / "m2", LLAMA3.replace("Today Date", "Date")), device="cpu")
    assert metric_key(m, MetricConfig(), src2) != base


def test_llama2_without_a_template_gets_inst(tmp_path):
    from hubaudit.metrics.prompts import PLAIN_QA, PromptFormat

    class Llama2Tok:  # what matters of Llama-2's tokenizer: its special tokens, size, class and no template
        bos_token, eos_token, vocab_size, eos_token_id, chat_template = "<s>", "</s>", 32000, 2, None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}

    Llama2Tok.__name__ = "LlamaTokenizerFast"
    tok = Llama2Tok()
    fmt = PromptFormat.for_tokenizer(tok)
    assert not fmt.chat and fmt.prompt_text(tok, "Who?") == "[INST] Who? [/INST]"
    # as open-unlearning's Llama-2-7b-chat config: the answer follows "[/INST]" directly, EOS after it
    ctx, cont = fmt.pair(tok, "Who?", "Me.")
    assert ctx == [1] + [ord(c) for c in "[INST] Who? [/INST]"] and cont == [ord(c) for c in "Me."] + [2]
    assert PromptFormat.for_tokenizer(tok, plain="Q: {question}\nA: ").prompt_text(tok, "Who?") == "Q: Who?\nA: "
    Llama2Tok.vocab_size = 50000  # another family without a template: Question/Answer
    assert PromptFormat.for_tokenizer(tok).plain == PLAIN_QA
