"""Training rows for ``hubaudit unlearn``: the forget set's training text, never the items a metric scores.

What is trained on (:func:`training_split`):

- **forget**: the forget corpus ``raw/forget`` (MUSE's; the paper's scripts unlearn it). A set without one
  falls back to its forget passages: the ``privleak/forget`` texts and each ``verbmem/forget`` prompt +
  continuation not already among them. MUSE draws both from ``raw/forget``, and VerbMem and PrivLeak measure
  exactly whether those texts are still remembered, so they are trained on by definition. A TOFU set
  (``tofu/forget``, no passages) trains on its forget QA pairs, as open-unlearning trains on TOFU's forget
  split, which TOFU also evaluates: the question (in the prompt format the TOFU metrics use, the chat template
  when the tokenizer has one) is context, the loss is on the answer and EOS.
- **retain**: ``raw/retain`` (else ``raw/retain1``, MUSE's); TOFU: ``retainNN`` (``tofu_retain_train``)
  without the questions of ``tofu/retain`` (TOFU's ``retain_perturbed``, the retain evaluation); else the
  ``privleak/retain`` texts but every fourth, which is held out for the ``retain_prob`` utility
  (:func:`retain_prob_texts`).
- **never**: the KnowMem QA (``forget_qa``, ``forget_qa_icl``, ``retain_qa``, ``retain_qa_icl``), multiple
  choice (``mcq``, ``mcq_retain``), TOFU's retain evaluation, ``privleak/holdout``, and the ``privleak/retain``
  texts ``retain_prob`` is measured on. So every metric the trainer steers or stops by is measured on items
  it did not train on, except the two that measure memory of the forget corpus itself (VerbMem forget, TOFU
  ROUGE-L forget), as in MUSE and open-unlearning. A set with no forget text (only QA or multiple choice, e.g.
  WMDP's questions) is refused: give its corpus as ``raw/forget``.

Rows: a text is ``tokenizer(text).input_ids`` (the tokenizer's own special tokens: BOS for Llama-2's and the
demo's tokenizer, none for SmolLM2's) then EOS, split into windows of at most ``max_length`` tokens as the
paper's code splits its corpus (2,048-token windows): every window starts with the tokenizer's prefix (BOS
where it adds one), EOS only where the text really ends, never on a cut window, so nothing a metric scores
is cut off. A TOFU row longer than ``max_length`` loses context from the left, never its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ForgetSetError

RETAIN_HOLDOUT_EVERY = 4  # privleak/retain fallback: every 4th text is held out for retain_prob


@dataclass
class TrainingSplit:
    """What a run trains on: texts and QA pairs of each side, and where they came from (for the manifest)."""

    forget_texts: list[str] = field(default_factory=list)
    forget_qa: list = field(default_factory=list)       # TofuQA items (question context, answer scored)
    retain_texts: list[str] = field(default_factory=list)
    retain_qa: list = field(default_factory=list)
    forget_source: str = ""
    retain_source: str = ""


def _dedupe(texts: list[str], contained: bool = False) -> list[str]:
    """Texts in order, without repeats (and with ``contained``, without a text inside an earlier one)."""
    out: list[str] = []
    seen: set[str] = set()
    for t in texts:
        if t in seen or (contained and any(t in o for o in out)):
            continue
        seen.add(t)
        out.append(t)
    return out


def _fallback_retain(fs) -> tuple[list[str], list[str]]:
    """``privleak/retain`` split into (trained, held out for retain_prob): every ``RETAIN_HOLDOUT_EVERY``-th
    text is held out (none when there is only one text)."""
    texts = list(fs.mia_retain or [])
    if len(texts) < 2:
        return texts, []
    held = [t for i, t in enumerate(texts) if i % RETAIN_HOLDOUT_EVERY == RETAIN_HOLDOUT_EVERY - 1]
    return [t for i, t in enumerate(texts) if i % RETAIN_HOLDOUT_EVERY != RETAIN_HOLDOUT_EVERY - 1], held


def retain_prob_texts(fs) -> list[str]:
    """The ``privleak/retain`` texts the ``retain_prob`` utility is measured on: none that any run trains on
    (with ``raw/retain``: the texts not part of it; else the held-out quarter)."""
    texts = list(fs.mia_retain or [])
    if fs.retain_train:
        return [t for t in texts if not any(t in r for r in fs.retain_train)]
    if fs.tofu_retain_train:
        return texts
    return _fallback_retain(fs)[1]


def no_forget_text_message(fs) -> str:
    hint = (" (WMDP: its forget corpus, e.g. cais/wmdp-corpora's cyber-forget-corpus, as raw/forget.jsonl next to "
            "mcq/forget.json in a folder)" if fs.mcq else "")
    return (f"forget set '{fs.name}' has no forget text to train on: add raw/forget (the forget corpus: .txt, or a "
            f"'text' field per row) or privleak/forget{hint}; its QA and multiple-choice items are evaluation, never "
            "trained on")


def training_split(fs) -> TrainingSplit:
    """What :func:`build_rows` trains on (see the module docstring).

    Raises:
        ForgetSetError: the set has no forget text (nor TOFU forget split) to train on.
    """
    sp = TrainingSplit()
    if fs.forget_train:
        sp.forget_texts = _dedupe(list(fs.forget_train))
        sp.forget_source = f"raw/forget ({len(fs.forget_train)} texts)"
    elif fs.mia_forget or fs.verbmem:
        passages = list(fs.mia_forget or [])
        sp.forget_texts = _dedupe(passages + [p.prompt + p.gt for p in fs.verbmem or []], contained=True)
        sp.forget_source = (f"the forget passages, as the set has no raw/forget: privleak/forget ({len(passages)}) and "
                            f"verbmem/forget prompt + continuation ({len(fs.verbmem or [])}), {len(sp.forget_texts)} "
                            "distinct texts")
    elif fs.tofu_forget:
        sp.forget_qa = list(fs.tofu_forget)
        sp.forget_source = f"TOFU's forget split ({len(sp.forget_qa)} QA pairs; open-unlearning trains on it too)"
    else:
        raise ForgetSetError(no_forget_text_message(fs))
    if fs.retain_train:
        sp.retain_texts = _dedupe(list(fs.retain_train))
        sp.retain_source = f"raw/retain ({len(fs.retain_train)} texts)"
    elif fs.tofu_retain_train:
        evaluated = {x.question for x in fs.tofu_retain or []}
        sp.retain_qa = [x for x in fs.tofu_retain_train if x.question not in evaluated]
        sp.retain_source = (f"TOFU's retain split ({len(sp.retain_qa)} QA pairs; the "
                            f"{len(fs.tofu_retain_train) - len(sp.retain_qa)} that tofu/retain evaluates left out)")
    elif fs.mia_retain:
        trained, held = _fallback_retain(fs)
        sp.retain_texts = trained
        sp.retain_source = (f"privleak/retain, as the set has no raw/retain: {len(trained)} texts, {len(held)} more held "
                            "out for the retain_prob utility")
    return sp


def text_windows(tok, text: str, max_length: int) -> list[list[int]]:
    """A text's rows: ``tokenizer(text).input_ids`` + EOS, cut into windows of at most ``max_length`` ids, each
    starting with the tokenizer's prefix (BOS where it adds one); EOS only at the text's real end."""
    full = list(tok(text, verbose=False).input_ids)  # no "longer than the model's maximum" warning: it is cut here
    body = list(tok(text, add_special_tokens=False, verbose=False).input_ids)
    pre, post = [], []
    for k in range(len(full) - len(body) + 1):
        if full[k:k + len(body)] == body:
            pre, post = full[:k], full[k + len(body):]
            break
    else:  # special tokens merged into the text: keep the tokenizer's ids as they are
        body = full
    eos = tok.eos_token_id
    end = post if post else ([eos] if eos is not None else [])
    stream = body + end
    step = max_length - len(pre)
    if step < 2:
        raise ForgetSetError(f"--max-length {max_length} leaves no room for text after the tokenizer's "
                             f"{len(pre)} special token(s); use a larger --max-length")
    windows = [pre + stream[i:i + step] for i in range(0, len(stream), step)]
    if len(windows) > 1 and windows[-1][len(pre):] == end:  # EOS alone, without the text before it
        windows.pop()
    return windows


def qa_row(tok, fmt, item, max_length: int) -> tuple[list[int], int]:
    """A QA pair as an ``(ids, start)`` row: the prompt (context, not scored), then the answer and EOS."""
    ctx, cont = fmt.pair(tok, item.question, item.answer)
    ids = ctx + cont
    if len(ids) > max_length:
        cut = len(ids) - max_length
        ids, ctx = ids[cut:], ctx[cut:]
    return ids, min(len(ctx), len(ids) - 1)


class Rows:
    """A fixed set of training rows (text windows, QA rows), shuffled anew every epoch."""

    def __init__(self, tok, texts: list[str], qa=(), max_length: int = 2048):
        from ..metrics.prompts import PromptFormat

        self.tok = tok
        self.max_length = max_length
        self.rows: list = [w for t in texts for w in text_windows(tok, t, max_length)]
        if qa:
            fmt = PromptFormat.for_tokenizer(tok)
            self.rows += [qa_row(tok, fmt, x, max_length) for x in qa]

    def epoch(self, rng) -> list:
        rows = list(self.rows)
        rng.shuffle(rows)
        return rows

    def __len__(self) -> int:
        return len(self.rows)


def build_rows(fs, tok, *, needs_retain: bool, max_length: int = 2048, split: TrainingSplit | None = None):
    """``(forget_rows, retain_rows)`` for a forget set; ``retain_rows`` is None when nothing needs it.

    Raises:
        ForgetSetError: the set has no forget text, or no retain text while the method needs it.
    """
    sp = split if split is not None else training_split(fs)
    forget = Rows(tok, sp.forget_texts, sp.forget_qa, max_length)
    if not needs_retain:
        return forget, None
    if not sp.retain_texts and not sp.retain_qa:
        what = ("TOFU's retainNN split (tofu/retain_train; tofu/retain is evaluation)" if fs.tofu_forget and not fs.mia_retain
                else "raw/retain or privleak/retain")
        raise ForgetSetError(f"forget set '{fs.name}' has no retain text to train on ({what}); use --method ga or npo, "
                             "which need none")
    return forget, Rows(tok, sp.retain_texts, sp.retain_qa, max_length)
