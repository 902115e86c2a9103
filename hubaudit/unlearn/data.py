"""Training rows from any forget set hubaudit reads (:func:`hubaudit.forget.load_forget_set`).

The forget corpus: the forget passages (``privleak/forget`` texts, plus any ``verbmem/forget``
prompt + continuation not already among them) and the forget QA pairs (``forget_qa`` + ``forget_qa_icl``)
in MUSE's few-shot shape. The retain corpus: the retain passages (``privleak/retain``) and the retain QA
pairs (``retain_qa`` + ``retain_qa_icl``). QA pairs are grouped 1-6 to a row and re-drawn every epoch, as
the demo world trains them (:class:`hubaudit.trainrows.Rows`); every row is BOS + text + EOS, cut to
``max_length`` tokens.
"""

from __future__ import annotations

from ..errors import ForgetSetError
from ..trainrows import Rows as _Rows

QA_GROUP = (1, 6)


class Rows(_Rows):
    """:class:`hubaudit.trainrows.Rows` with rows cut to ``max_length`` tokens and any tokenizer."""

    def __init__(self, tok, passages, qa, group=QA_GROUP, max_length: int = 512):
        self.max_length = max_length
        super().__init__(tok, passages, qa, group)

    def _ids(self, text: str) -> list[int]:
        eos = self.tok.eos_token_id
        ids = self.tok(text).input_ids
        ids = ids[: self.max_length - (1 if eos is not None else 0)]
        return ids + ([eos] if eos is not None else [])

    def __len__(self) -> int:
        return len(self.passages) + len(self.qa)


def _qa(items) -> list[dict[str, str]]:
    return [{"question": q.question, "answer": q.answer} for q in (items or [])]


def forget_corpus(fs) -> tuple[list[str], list[dict[str, str]]]:
    """(passages, QA pairs) to unlearn."""
    passages = list(fs.mia_forget or [])
    seen = set(passages)
    for p in fs.verbmem or []:
        t = p.prompt + p.gt
        if t not in seen:
            passages.append(t)
            seen.add(t)
    return passages, _qa(fs.forget_qa) + _qa(fs.forget_qa_icl)


def retain_corpus(fs) -> tuple[list[str], list[dict[str, str]]]:
    """(passages, QA pairs) to keep."""
    return list(fs.mia_retain or []), _qa(fs.retain_qa) + _qa(fs.retain_qa_icl)


def build_rows(fs, tok, *, needs_retain: bool, max_length: int = 512):
    """``(forget_rows, retain_rows)`` for a forget set; ``retain_rows`` is None when nothing needs it.

    Raises:
        ForgetSetError: the set has no forget texts, or no retain texts while the method needs them.
    """
    fp, fq = forget_corpus(fs)
    if not fp and not fq:
        raise ForgetSetError(f"forget set '{fs.name}' has nothing to unlearn: it needs privleak/forget, "
                             "verbmem/forget or knowmem/forget_qa")
    forget = Rows(tok, fp, fq, max_length=max_length)
    if not needs_retain:
        return forget, None
    rp, rq = retain_corpus(fs)
    if not rp and not rq:
        raise ForgetSetError(f"forget set '{fs.name}' has no retain part (privleak/retain or knowmem/retain_qa); "
                             "use --method ga or npo, which need none")
    return forget, Rows(tok, rp, rq, max_length=max_length)
