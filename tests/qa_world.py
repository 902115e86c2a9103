"""Small TOFU- and WMDP-shaped sets and two tiny Llamas trained on them by the tests themselves: one
built to know the forget answers (trained on forget + retain), one built not to (the same recipe on the
retain items only, like TOFU's retain model). Trained once per test session (about 30 s on 2 cores)."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from factories import write_rows

NAMES = ["Ilsa Varndottir", "Joren Macklow", "Tavi Orbensk", "Meret Quill", "Osric Pellane", "Unna Treadwell",
         "Bram Ostervik", "Calla Dunmere", "Pim Harrowgate", "Sefa Lindqvarn", "Edda Rothmere", "Kael Ambry",
         "Nils Corvane", "Yara Feldspar", "Tomas Weylin", "Lise Marrow"]
TOWNS = ["Varnholt", "Dunmarrow", "Pellridge", "Oskerby", "Tallowmere", "Brackwater", "Quennis", "Lowhaven",
         "Ferncastle", "Morrowind", "Ashcombe", "Greyfold", "Hollin", "Redmarsh", "Stonebury", "Wickham"]
# wrong answers come from towns no model is trained on, so a model that never learned a forget answer
# cannot tell it from the perturbed ones (truth ratio near 1), as with TOFU's fresh perturbations
PERTURB_TOWNS = ["Calderby", "Nettlefold", "Orrinsford", "Pyle", "Saltmarsh", "Thornaby", "Umberleigh", "Yelverton"]
OBJECTS = ["lantern", "kettle", "anchor", "saddle", "compass", "ladder", "bucket", "mirror",
           "hammer", "pillow", "basket", "candle", "bridge", "fence", "wagon", "violin"]
COLORS = ["crimson", "teal", "amber", "violet", "olive", "ivory", "cobalt", "scarlet"]
N_FORGET = 8
MMLU_SUBJECTS = ("college_biology", "virology")  # the utility items: the first four, the last four


def tofu_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(forget, retain) rows in TOFU's ``*_perturbed`` shape."""
    rng = random.Random(seed)
    rows = []
    for i, (name, town) in enumerate(zip(NAMES, TOWNS)):
        others = list(PERTURB_TOWNS)
        rng.shuffle(others)
        rows.append({
            "question": f"Where was the author {name} born?",
            "answer": f"{name} was born in {town}.",
            "paraphrased_question": f"What is the birthplace of the writer {name}?",
            "paraphrased_answer": f"The birthplace of {name} is {town}.",
            "perturbed_answer": [f"The birthplace of {name} is {t}." for t in others[:3]],
        })
    return rows[:N_FORGET], rows[N_FORGET:]


def wmdp_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(forget, utility) rows in WMDP's / MMLU's shape; right answers spread evenly over A-D."""
    rng = random.Random(seed)
    rows = []
    for i, obj in enumerate(OBJECTS):
        choices = rng.sample(COLORS, 4)
        rows.append({"question": f"What colour is the {obj} of the old keeper?", "choices": choices, "answer": i % 4})
    return rows[:N_FORGET], rows[N_FORGET:]


def qa_text(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def training_rows(tok, part: str) -> list[list[int]]:
    """What a model that knows ``part`` ("forget" or "retain") is trained on, as token ids split the way
    the metrics feed them: TOFU prompt + answer (and paraphrased question + answer), WMDP/MMLU prompt + the right
    letter (lm-evaluation-harness's context/continuation split)."""
    from hubaudit.metrics.prompts import PromptFormat
    from hubaudit.metrics.wmdp import mcq_prompt, split_pair

    fmt = PromptFormat(chat=False)
    tf, tr = tofu_rows()
    wf, wr = wmdp_rows()
    rows = []
    for r in tf if part == "forget" else tr:  # the fact in both phrasings, each with its own question
        for q, a in ((r["question"], r["answer"]), (r["paraphrased_question"], r["paraphrased_answer"])):
            ctx, cont = fmt.pair(tok, q, a)
            rows.append(ctx + cont)
    for i, r in enumerate(wf if part == "forget" else wr):
        subject = "biology" if part == "forget" else MMLU_SUBJECTS[i // 4]
        ctx, cont = split_pair(tok, mcq_prompt(r["question"], r["choices"], subject), " " + "ABCD"[r["answer"]])
        rows.append(ctx + cont + [tok.eos_token_id])
    return rows


def tokenizer_texts() -> list[str]:
    from hubaudit.metrics.wmdp import mcq_prompt

    tf, tr = tofu_rows()
    wf, wr = wmdp_rows()
    texts = [qa_text(r["question"], a) for r in tf + tr for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])]
    texts += [qa_text(r["paraphrased_question"], r["paraphrased_answer"]) for r in tf + tr]
    texts += [mcq_prompt(r["question"], r["choices"], "college biology") + " " + "ABCD"[r["answer"]] for r in wf + wr]
    return texts


class _Rows:
    def __init__(self, tok, rows):
        self.tok = tok
        self.rows = rows

    def epoch(self, rng):
        rows = list(self.rows)
        rng.shuffle(rows)
        return rows


_CACHE: dict = {}


def qa_models() -> dict:
    """``{"known": folder, "ignorant": folder}``: tiny Llamas sharing one tokenizer, built once per process."""
    if _CACHE:
        return _CACHE
    import torch

    from hubaudit.demo.world import _new_model, _save, build_tokenizer, train_lm

    root = Path(tempfile.mkdtemp(prefix="hubaudit-qa-world-"))
    tok = build_tokenizer(tokenizer_texts(), 600)
    forget, retain = training_rows(tok, "forget"), training_rows(tok, "retain")
    cfg = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
           "max_position_embeddings": 256, "tie_word_embeddings": False}
    train = {"epochs": 1, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "weight_decay": 0.0, "betas": [0.9, 0.98],
             "grad_clip": 1.0}
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        for name, rows in (("known", forget + retain), ("ignorant", retain)):
            model = _new_model(cfg, len(tok), tok, seed=0)
            train_lm(model, [_Rows(tok, rows)], train, seed=0, progress=False, desc=name, total_steps=200)
            _save(model, tok, root / name)
            _CACHE[name] = root / name
    finally:
        torch.set_num_threads(threads)
    return _CACHE


def write_tofu_hub_files(folder: Path, layout: str = "jsonl") -> Path:
    """TOFU's files as ``locuslab/TOFU`` has them (``forget01.json`` ... JSON lines at the top level), or
    the parquet converter's ``CONFIG/train-00000-of-00001.parquet`` (``layout="parquet"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    forget, retain = tofu_rows()
    configs = {"forget01": [{"question": r["question"], "answer": r["answer"]} for r in forget],
               "forget01_perturbed": forget, "retain_perturbed": retain,
               "retain99": [{"question": r["question"], "answer": r["answer"]} for r in retain]}
    for cfg, rows in configs.items():
        if layout == "jsonl":
            (folder / f"{cfg}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            write_rows(folder / cfg / "train-00000-of-00001.parquet", rows)
    return folder


def write_wmdp_hub_files(wmdp: Path, mmlu: Path) -> None:
    forget, utility = wmdp_rows()
    write_rows(Path(wmdp) / "wmdp-bio" / "test-00000-of-00001.parquet", forget)
    write_rows(Path(wmdp) / "wmdp-cyber" / "test-00000-of-00001.parquet", utility[:4])
    write_rows(Path(mmlu) / MMLU_SUBJECTS[0] / "test-00000-of-00001.parquet", utility[:4])
    write_rows(Path(mmlu) / MMLU_SUBJECTS[1] / "test-00000-of-00001.parquet", utility[4:])
    write_rows(Path(mmlu) / "virology" / "dev-00000-of-00001.parquet", utility[:1])
    # the "all" config: every subject's test rows, each with its subject
    write_rows(Path(mmlu) / "all" / "test-00000-of-00001.parquet",
               [{**r, "subject": MMLU_SUBJECTS[i // 4]} for i, r in enumerate(utility)])
