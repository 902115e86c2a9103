"""Prompts built the way a benchmark's own evaluation builds them, as token ids, and the two primitives
the TOFU and WMDP metrics need on ids: greedy generation and the log-likelihood of a continuation.

Chat and instruction models: when the tokenizer has a chat template (and the metric settings allow it),
a question becomes ``tokenizer.apply_chat_template([{"role": "user", "content": q}],
add_generation_prompt=True)``, as open-unlearning builds TOFU prompts. The template's text is tokenized
with ``add_special_tokens=False``, exactly as ``apply_chat_template(..., tokenize=True)`` does: a template
that writes BOS itself gets no second one, and one that does not gets none (the template decides).
Without a template the prompt is plain text encoded with the tokenizer's special tokens (BOS), as
:class:`~hubaudit.metrics.runner.LMRunner` encodes.

Generation and scoring go through :class:`LMRunner`'s id-based methods (``generate_ids``,
``continuation_logprobs``): its text-based ones always add BOS, which a chat template's ids must not get.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's chat template (a Jinja string), or None."""
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):  # several named templates: the default one
        t = t.get("default") or next(iter(t.values()), None)
    return t if isinstance(t, str) and t.strip() else None


def describe_chat_template(tokenizer) -> dict | None:
    """What the report says about the template used: its sha256 (first 12 hex digits) and an example."""
    t = chat_template_of(tokenizer)
    if t is None:
        return None
    example = render_chat(tokenizer, "QUESTION")
    return {"sha256": hashlib.sha256(t.encode()).hexdigest()[:12], "example": example}


def render_chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)


def encode_text(tokenizer, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes prompt ids: with the chat template, or ``plain.format(question=q)``."""

    chat: bool
    plain: str = "Question: {question}\nAnswer: "

    @classmethod
    def for_tokenizer(cls, tokenizer, use_chat_template: bool = True, plain: str = "Question: {question}\nAnswer: "):
        return cls(bool(use_chat_template and chat_template_of(tokenizer)), plain)

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        if self.chat:
            return encode_text(tokenizer, render_chat(tokenizer, question), special=False)
        return encode_text(tokenizer, self.plain.format(question=question))

    def pair(self, tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(context ids, answer ids) to score ``answer`` after the prompt, as the benchmarks' loaders split
        them: the answer is the tail of the joint tokenization when the prompt's ids are its prefix (so
        merges across the boundary are those of training text). Otherwise, for a plain prompt ending in
        whitespace, the whitespace moves to the answer as lm-evaluation-harness moves it (context =
        prompt.rstrip()); else the answer is tokenized on its own. EOS follows the answer, as TOFU's and
        open-unlearning's labels end with it."""
        if self.chat:
            text = render_chat(tokenizer, question)
            prompt, joint = encode_text(tokenizer, text, False), encode_text(tokenizer, text + answer, False)
        else:
            text = self.plain.format(question=question)
            prompt, joint = encode_text(tokenizer, text), encode_text(tokenizer, text + answer)
        if joint[: len(prompt)] == prompt and len(joint) > len(prompt):
            ctx, cont = prompt, joint[len(prompt):]
        elif not self.chat and text != text.rstrip():
            ctx = encode_text(tokenizer, text.rstrip())
            ok = joint[: len(ctx)] == ctx and len(joint) > len(ctx)
            ctx, cont = (ctx, joint[len(ctx):]) if ok else (prompt, encode_text(tokenizer, answer, special=False))
        else:
            ctx, cont = prompt, encode_text(tokenizer, answer, special=False)
        eos = tokenizer.eos_token_id
        if eos is not None and (not cont or cont[-1] != eos):
            cont = cont + [eos]
        return ctx, cont
