"""Prompts built the way a benchmark's own evaluation builds them, as token ids, and the two primitives
the TOFU and WMDP metrics need on ids: greedy generation and the log-likelihood of a continuation.

TOFU prompts are built as open-unlearning builds them (``src/data/utils.py::preprocess_chat_instance``
and the ``template_args`` of its ``configs/model/*.yaml``, reviewed at d3d7cf9):

- With a chat template (and ``MetricConfig.chat_template`` on): the conversation is
  ``[system, user]`` with the system prompt "You are a helpful assistant." (``MetricConfig.system_prompt``;
  "" for none; a template that refuses a system turn, Gemma's, gets none, as open-unlearning's Gemma config
  has none), rendered with ``add_generation_prompt=True`` and ``date_string="10 Apr 2025"``
  (``MetricConfig.date_string``; Llama-3.x templates print "Today Date: ..." and would print today's date
  otherwise; "" = the template's own). Its text is tokenized with ``add_special_tokens=False``, exactly as
  ``apply_chat_template(..., tokenize=True)`` does.
- Without a template: ``[INST] {question} [/INST]`` for Llama-2-style tokenizers (open-unlearning's
  Llama-2-7b-chat config and TOFU's original runs), else ``Question: {question}\\nAnswer: `` (its
  Llama-2-7b-hf and phi-1_5 configs), encoded with the tokenizer's special tokens (BOS);
  ``MetricConfig.plain_prompt`` chooses another.

The scored answer span is open-unlearning's labels: the whole conversation (chat: ``[system, user,
assistant]`` rendered without a generation prompt, so the template's end-of-turn tokens are in it; plain:
prompt + answer) is tokenized once, the labels are its tokens after the first ``len(prompt ids)``, and EOS
is appended when the conversation does not end with it. When a merge crosses the prompt/answer boundary
(plain "Answer: " + answer), the first answer token falls inside the prompt's length and is not scored, as
there.

Generation and scoring go through :class:`LMRunner`'s id-based methods (``generate_ids``,
``continuation_logprobs``): its text-based ones always add BOS, which a chat template's ids must not get.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_DATE_STRING = "10 Apr 2025"  # open-unlearning's configs/model/Llama-3.*.yaml date_string
PLAIN_QA = "Question: {question}\nAnswer: "
PLAIN_INST = "[INST] {question} [/INST]"


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's chat template (a Jinja string), or None."""
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):  # several named templates: the default one
        t = t.get("default") or next(iter(t.values()), None)
    return t if isinstance(t, str) and t.strip() else None


def is_llama2_style(tokenizer) -> bool:
    """A Llama-2-style tokenizer (SentencePiece, 32000 tokens, ``<s>``/``</s>``): its chat models were
    trained on ``[INST] q [/INST]``."""
    return (getattr(tokenizer, "bos_token", None) == "<s>" and getattr(tokenizer, "eos_token", None) == "</s>"
            and getattr(tokenizer, "vocab_size", 0) == 32000 and "llama" in type(tokenizer).__name__.lower())


def clean_up_spaces(text: str) -> str:
    """transformers 4.x's ``clean_up_tokenization`` (what ``decode(..., clean_up_tokenization_spaces=True)``
    applied there to every tokenizer; transformers 5 ignores the flag for BPE tokenizers)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def decode_clean(tokenizer, ids) -> str:
    """``decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)`` as open-unlearning's
    transformers 4.x decodes."""
    return clean_up_spaces(tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))


def encode_text(tokenizer, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompt_and_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """(the prompt's ids as generation is fed them, with BOS; the continuation's ids): the joint encoding's
    tokens after the prompt's, as open-unlearning labels an answer, or the continuation encoded on its own where
    the joint encoding does not start with the prompt's ids. The prompt keeps its trailing space (a tokenizer
    with an ``Answer: `` token sees what greedy decoding sees)."""
    ctx = encode_text(tokenizer, prompt)
    whole = encode_text(tokenizer, prompt + continuation)
    cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else encode_text(tokenizer, continuation, special=False)
    return ctx, cont


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes prompt ids: the chat template (with ``system`` and ``date``), or
    ``plain.format(question=q)``."""

    chat: bool
    plain: str = PLAIN_QA
    system: str = DEFAULT_SYSTEM_PROMPT
    date: str = DEFAULT_DATE_STRING

    @classmethod
    def for_tokenizer(cls, tokenizer, use_chat_template: bool = True, plain: str = "auto",
                      system: str = DEFAULT_SYSTEM_PROMPT, date: str = DEFAULT_DATE_STRING) -> "PromptFormat":
        if not plain or plain == "auto":
            plain = PLAIN_INST if is_llama2_style(tokenizer) else PLAIN_QA
        if "{question}" not in plain:
            from ..errors import MetricError

            raise MetricError(f"the plain prompt {plain!r} has no {{question}}; write it as e.g. 'Q: {{question}}\\nA: '")
        return cls(bool(use_chat_template and chat_template_of(tokenizer)), plain, system or "", date or "")

    @classmethod
    def from_config(cls, tokenizer, cfg) -> "PromptFormat":
        return cls.for_tokenizer(tokenizer, getattr(cfg, "chat_template", True), getattr(cfg, "plain_prompt", "auto"),
                                 getattr(cfg, "system_prompt", DEFAULT_SYSTEM_PROMPT),
                                 getattr(cfg, "date_string", DEFAULT_DATE_STRING))

    # -- chat ------------------------------------------------------------------------------------
    def render(self, tokenizer, question: str, answer: str | None = None) -> str:
        """The chat template's text of [system, user] + generation prompt, or of [system, user, assistant]."""
        turns = [{"role": "user", "content": question}]
        if answer is not None:
            turns.append({"role": "assistant", "content": answer})
        kw = {"date_string": self.date} if self.date else {}
        if self.system:
            try:
                return tokenizer.apply_chat_template([{"role": "system", "content": self.system}, *turns],
                                                     add_generation_prompt=answer is None, tokenize=False, **kw)
            except Exception as e:  # a template that refuses a system turn (Gemma's raises): none, as there
                if "system" not in str(e).lower():
                    raise
        return tokenizer.apply_chat_template(turns, add_generation_prompt=answer is None, tokenize=False, **kw)

    def prompt_text(self, tokenizer, question: str) -> str:
        return self.render(tokenizer, question) if self.chat else self.plain.format(question=question)

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        if self.chat:
            return encode_text(tokenizer, self.render(tokenizer, question), special=False)
        return encode_text(tokenizer, self.plain.format(question=question))

    def joint_ids(self, tokenizer, question: str, answer: str) -> list[int]:
        """The whole conversation's ids (open-unlearning's ``chat_ids`` before EOS is appended)."""
        if self.chat:
            return encode_text(tokenizer, self.render(tokenizer, question, answer), special=False)
        return encode_text(tokenizer, self.plain.format(question=question) + answer)

    def pair(self, tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(context ids, scored ids) as open-unlearning's ``input_ids``/``labels`` split them: the joint ids
        cut at the prompt's length, EOS appended when the joint ids do not end with it."""
        prompt = self.prompt_ids(tokenizer, question)
        joint = self.joint_ids(tokenizer, question, answer)
        eos = tokenizer.eos_token_id
        if eos is not None and (not joint or joint[-1] != eos):
            joint = joint + [eos]
        n = min(len(prompt), len(joint) - 1)  # at least one scored token (EOS) when a merge ate the answer
        return joint[:n], joint[n:]

    def reference_text(self, tokenizer, question: str, answer: str) -> str:
        """The ground truth open-unlearning's ROUGE compares against: the decoded conversation minus the
        decoded prompt, stripped (special tokens skipped, tokenization spaces cleaned up)."""
        ctx, cont = self.pair(tokenizer, question, answer)
        full = decode_clean(tokenizer, ctx + cont)
        return full.replace(decode_clean(tokenizer, self.prompt_ids(tokenizer, question)), "").strip()

    # -- what the store key and the report record -------------------------------------------------
    def describe(self, tokenizer) -> dict:
        """Everything that shapes a prompt: the settings and the sha256 (12 hex digits) of a rendered example
        (prompt and scored span), which changes with the template, the system prompt, the date or the plain form."""
        q, a = "QUESTION", "ANSWER"
        example = self.prompt_text(tokenizer, q)
        ctx, cont = self.pair(tokenizer, q, a)
        blob = json.dumps({"text": example, "ctx": ctx, "cont": cont})
        out = {"chat": self.chat, "example_sha256": hashlib.sha256(blob.encode()).hexdigest()[:12]}
        if self.chat:
            out.update(system_prompt=self.system, date_string=self.date)
        else:
            out["plain"] = self.plain
        return out


def describe_chat_template(tokenizer, fmt: PromptFormat | None = None) -> dict | None:
    """What the report says about the template used: its sha256 (first 12 hex digits) and an example."""
    t = chat_template_of(tokenizer)
    if t is None:
        return None
    fmt = fmt or PromptFormat.for_tokenizer(tokenizer)
    example = fmt.render(tokenizer, "QUESTION")
    return {"sha256": hashlib.sha256(t.encode()).hexdigest()[:12], "example": example,
            "system_prompt": fmt.system, "date_string": fmt.date}


def render_chat(tokenizer, question: str) -> str:
    """The default prompt's text (system prompt and fixed date), for callers that need the text only."""
    return PromptFormat.for_tokenizer(tokenizer).render(tokenizer, question)
