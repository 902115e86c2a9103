"""Small models and forget sets built by the tests themselves (no network, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("the river city of Varnholt was founded in 1821 by Elsbeth Quorin a glassmaker who later moved to "
         "Dunmarrow where she built the first lighthouse on the northern coast Question Answer what year who "
         "which company employs Tamsin Orlev engineer Brightwater Mills born in Pellridge 1964 teacher").split()


def make_tokenizer(folder: Path):
    """A small BPE tokenizer (byte-level) with bos/eos/pad, saved into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] + ["Question: who?\nAnswer: x\n\n"] * 5
    tok.train_from_iterator(corpus, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def make_random_model(folder: Path, seed: int = 0, hidden: int = 64, layers: int = 2, dtype: str = "float32"):
    """A random-weight Llama with the test tokenizer, saved as an ordinary HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    return folder


def make_forget_dir(folder: Path, n: int = 12, ext: str = ".json") -> Path:
    """A MUSE-layout folder with ``n`` items per part, in the given file format."""
    folder = Path(folder)
    qa = [{"question": f"In which year was {WORDS[i]} {WORDS[i + 1]} founded?", "answer": f"{1800 + i} by {WORDS[i + 2]}"}
          for i in range(n)]
    passages = [{"prompt": " ".join(WORDS[i:i + 8]), "gt": " ".join(WORDS[i + 8:i + 20])} for i in range(n)]
    texts = [" ".join(WORDS[i:i + 15]) for i in range(n)]
    holdout = [" ".join(reversed(WORDS[i:i + 15])) for i in range(n)]
    parts = {
        "verbmem/forget": passages, "knowmem/forget_qa": qa, "knowmem/forget_qa_icl": qa[:3],
        "knowmem/retain_qa": qa[::-1], "knowmem/retain_qa_icl": qa[-3:],
        "privleak/forget": texts, "privleak/retain": texts[::-1], "privleak/holdout": holdout,
    }
    for rel, rows in parts.items():
        write_rows(folder / (rel + ext), rows)
    return folder


def write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r if isinstance(r, dict) else {"text": r}) + "\n" for r in rows))
    elif path.suffix == ".csv":
        import csv

        rows = [r if isinstance(r, dict) else {"text": r} for r in rows]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [r if isinstance(r, dict) else {"text": r} for r in rows]
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(path)


def item_cell(role: str, spec: str, backend: dict | None = None, **scores):
    """A finished :class:`CellResult` from per-item scores (``knowmem_f=[0, 100, ...]``): the metric is their
    mean, as the metrics compute it, and the items are kept, as the store keeps them."""
    from hubaudit.results import CellResult

    cell = CellResult(role, spec, attack=dict(backend or {}))
    for m, vals in scores.items():
        vals = [float(v) for v in vals]
        cell.metrics[m] = sum(vals) / len(vals)
        cell.n_items[m] = len(vals)
        cell.items[m] = [{"score": v} for v in vals]
    return cell
