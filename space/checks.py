"""Checks before queueing (so a bad id gets its message at once, not after waiting in the queue): a Hub id,
never a path on this machine; public models only, read without the Space's token; safetensors weights only;
a model the hardware can hold; the caps on uploads, Hub forget sets and each visitor's queued audits."""

import json
import os
from pathlib import Path

from settings import (DEVICE, MAX_FORGET_BYTES, MAX_ITEM_CHARS, MAX_JOBS_PER_VISITOR, MAX_MODEL_BYTES,
                      MAX_UPLOAD_BYTES, MAX_UPLOAD_ITEMS, store)


class InputError(Exception):
    pass


def hub_repo(text: str) -> str | None:
    """The ``org/name`` of text written as a Hub id ``org/name[@revision]``, else None (a path, a bare name,
    anything else): what the Space ever sends to the Hub, never read from this machine."""
    from hubaudit.source import HUB_ID

    repo, at, rev = (text or "").strip().partition("@")
    return repo if "/" in repo and HUB_ID.match(repo) and (rev or not at) else None


def check_model(model_id: str) -> str:
    """The normalized ``org/name[@rev]``; raise InputError with a message a visitor understands."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as he

    model_id = (model_id or "").strip()
    repo, _, rev = model_id.partition("@")
    if not model_id:
        raise InputError("Enter a model id from the Hub, for example `org/my-unlearned-model` (or `org/name@revision`).")
    if hub_repo(model_id) is None:
        raise InputError(f"`{model_id}` is not a Hub model id: use `org/name` or `org/name@revision`.")
    try:
        info = HfApi(token=False).model_info(repo, revision=rev or None, files_metadata=True)
    except he.GatedRepoError:
        raise InputError(f"`{repo}` is gated on the Hub. This Space audits public models only; run "
                         f"`hubaudit audit {repo} --token ...` on your own machine instead.") from None
    except he.RepositoryNotFoundError:
        raise InputError(f"There is no public model `{repo}` on the Hub (check the spelling; private models "
                         f"cannot be audited here).") from None
    except he.RevisionNotFoundError:
        raise InputError(f"`{repo}` has no branch, tag or commit `{rev}`.") from None
    except Exception as e:  # noqa: BLE001 - the Hub is down, a proxy, ...
        raise InputError(f"The Hub could not be asked about `{repo}` ({type(e).__name__}); try again later.") from None
    if getattr(info, "gated", False):
        raise InputError(f"`{repo}` is gated on the Hub. This Space audits public models only; run "
                         f"`hubaudit audit {repo} --token ...` on your own machine instead.")
    files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    weights = {f: n for f, n in files.items() if f.endswith(".safetensors")}
    if not weights:
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
        if pickles:
            raise InputError(f"`{repo}` has only pickle weights (`{pickles[0]}`), which can run code when loaded. "
                             f"The Space loads safetensors only: ask the publisher for a safetensors upload.")
        raise InputError(f"`{repo}` has no model weights (`*.safetensors`): is it a transformers model?")
    if "config.json" not in files:
        raise InputError(f"`{repo}` has no config.json: it is not a transformers model repository.")
    check_size(repo, info.sha, sum(weights.values()), token=False)
    return f"{repo}@{info.sha}"  # pinned: the audit reads the commit that was checked, whatever is pushed later


def check_size(repo: str, sha: str, weight_bytes: int, token) -> None:
    """Refuse a model this Space cannot hold: the library's own estimate (the model and one quantized copy
    at the compute dtype: about 4.4x a bf16 checkpoint where it computes in float32, 2.2x where bf16 is
    native) against the memory there is."""
    from hubaudit.modeling import compute_itemsize, default_compute_dtype, estimate_memory_bytes

    stored = None
    try:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(repo, "config.json", revision=sha, token=token), encoding="utf-8") as f:
            cfg = json.load(f)
        stored = cfg.get("dtype") or cfg.get("torch_dtype")
    except Exception:  # noqa: BLE001 - unknown dtype: the estimate assumes 16-bit weights
        pass
    device = "cuda" if DEVICE in ("auto", "cuda") and _cuda() else "cpu"
    need = estimate_memory_bytes(weight_bytes, stored, compute_itemsize(device, stored), copies=2)
    limit = MAX_MODEL_BYTES if MAX_MODEL_BYTES is not None else _available_bytes()
    if limit is not None and need > limit:
        raise InputError(f"`{repo}` is too big for this Space's hardware: it needs about {need / 2**30:.1f} GiB "
                         f"(the model and one quantized copy, {default_compute_dtype(device, stored)}) "
                         f"and {limit / 2**30:.1f} GiB is available. Run `hubaudit audit {repo}` on a larger machine.")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _available_bytes() -> int | None:
    try:
        from hubaudit.modeling import available_memory

        import torch

        dev = "cuda" if DEVICE in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        return available_memory(dev)
    except Exception:  # noqa: BLE001
        return None


def card_base_model(model_id: str) -> str | None:
    """The card's ``base_model`` (to pre-fill the reference), or None."""
    from huggingface_hub import HfApi

    from hubaudit.source import base_model_of

    repo, _, rev = (model_id or "").strip().partition("@")
    if "/" not in repo:
        return None
    try:
        info = HfApi(token=False).model_info(repo, revision=rev or None)
    except Exception:  # noqa: BLE001 - check_model says what is wrong when the audit is asked for
        return None
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    card = card.to_dict() if hasattr(card, "to_dict") else dict(card or {})
    return base_model_of(card)


def upload_to_muse(path: str, dest: Path) -> Path:
    """An uploaded JSONL as a MUSE-layout folder: a line with question/answer is a KnowMem item
    (``"split": "retain"`` for the retain set), one with prompt/gt a VerbMem passage, one with text an
    MIA text (``"split": "holdout"`` for the non-member texts)."""
    parts: dict[str, list] = {}
    name = Path(path).name
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"The uploaded file {name} is {size / 2**20:.1f} MiB; this Space takes at most "
                         f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB (run `hubaudit audit` on your own machine for more).")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise InputError(f"The uploaded file {name} is not UTF-8 text: upload a .jsonl file, one JSON object "
                         "per line.") from None
    items = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        items += 1
        if items > MAX_UPLOAD_ITEMS:
            raise InputError(f"The uploaded file {name} has more than {MAX_UPLOAD_ITEMS} items; this Space "
                             "takes at most that many (run `hubaudit audit` on your own machine for more).")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"Line {n} of the uploaded file is not valid JSON ({e.msg}).") from None
        if not isinstance(row, dict):
            raise InputError(f"Line {n} of the uploaded file is not a JSON object.")
        long = [k for k, v in row.items() if isinstance(v, str) and len(v) > MAX_ITEM_CHARS]
        if long:
            raise InputError(f"Line {n} of the uploaded file has a `{long[0]}` of {len(row[long[0]]):,} characters; "
                             f"this Space takes at most {MAX_ITEM_CHARS:,} per text.")
        split = row.get("split", "")
        if "question" in row and "answer" in row:
            key = "knowmem/retain_qa" if split == "retain" else "knowmem/forget_qa"
            parts.setdefault(key, []).append({"question": row["question"], "answer": row["answer"]})
        elif "prompt" in row and "gt" in row:
            parts.setdefault("verbmem/forget", []).append({"prompt": row["prompt"], "gt": row["gt"]})
        elif "text" in row:
            parts.setdefault("privleak/holdout" if split == "holdout" else "privleak/forget", []).append(
                {"text": row["text"]})
        else:
            raise InputError(f"Line {n} of the uploaded file has none of question+answer, prompt+gt or text.")
    if not parts:
        raise InputError("The uploaded file is empty.")
    dest.mkdir(parents=True, exist_ok=True)
    for rel, rows in parts.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / (rel + ".jsonl")).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (dest / "meta.json").write_text(json.dumps({"name": f"upload:{Path(path).name}"}), encoding="utf-8")
    return dest


def visitor_key(request) -> str | None:
    """Who queued a job, for the per-visitor limit: a hash of the client address as the Space's proxy saw it
    (the *last* hop of X-Forwarded-For, the one the proxy appends; the hops before it are whatever the
    visitor sent), else the connection's address; never the address itself."""
    import hashlib

    if request is None:
        return None
    hops = [h.strip() for h in (request.headers.get("x-forwarded-for") or "").split(",")] if request.headers else []
    fwd = hops[-1] if hops else ""
    host = fwd or (request.client.host if request.client else "")
    return hashlib.sha256(f"hubaudit:{host}".encode()).hexdigest()[:16] if host else None


def queue_full_message(mine: int) -> str:
    return (f"You already have {mine} audit(s) queued or running; this Space takes at most "
            f"{MAX_JOBS_PER_VISITOR} per visitor. Wait for one to finish (its page shows the progress).")


def check_queue_room(visitor: str | None) -> None:
    """An early answer before the slower checks; the limit itself is enforced when the job is inserted
    (``JobStore.add_limited``: count and insert in one transaction)."""
    if visitor is None:
        return
    mine = store.count_active(visitor)
    if mine >= MAX_JOBS_PER_VISITOR:
        raise InputError(queue_full_message(mine))


def check_dataset(ds: str) -> str:
    """Refuse a Hub forget set whose files are more than this Space downloads (MAX_FORGET_BYTES); the id pinned
    to the commit that was measured (``org/name@sha``), which is the one the audit downloads (and checks again)."""
    import fnmatch

    from huggingface_hub import HfApi

    from hubaudit.source import DATASET_PATTERNS

    repo, _, rev = ds.partition("@")
    try:
        info = HfApi(token=False).dataset_info(repo, revision=rev or None, files_metadata=True)
    except Exception:  # noqa: BLE001 - not found or gated: the audit's own message says which, when it runs
        return ds
    size = sum(s.size or 0 for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in DATASET_PATTERNS))
    if size > MAX_FORGET_BYTES:
        raise InputError(f"The forget set `{repo}` is {size / 2**20:.0f} MiB; this Space downloads at most "
                         f"{MAX_FORGET_BYTES / 2**20:.0f} MiB of forget-set files (run `hubaudit audit` on your own "
                         "machine for more).")
    return f"{repo}@{info.sha}" if info.sha else ds
