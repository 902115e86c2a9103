"""``file:ARTIFACT``: a quantized build someone published, audited as one more cell.

Most people do not quantize an unlearned model themselves: they download a GGUF file or a GPTQ/AWQ
repository that someone made from it. This backend audits that artifact. The audited model stays the
full-precision model (its cell is the baseline, its tokenizer and prompts are used throughout); the
artifact is loaded exactly as published and evaluated with the same metric code, so the cell says how
much of the forget set the published build brings back.

Spec grammar (the part after ``file:``)
--------------------------------------
- ``PATH.gguf``: a local GGUF file (a path: ``./m.Q4_1.gguf``, ``/abs/m.gguf``, ``~/m.gguf``, or any path
  that exists);
- ``ORG/NAME/FILE.gguf[@REV]``: one GGUF file of a Hub repository (``REV``: branch, tag or commit);
- ``ORG/NAME[@REV]`` or a local folder: a pre-quantized model (GPTQ, AWQ, bitsandbytes, ...: a
  ``config.json`` with a ``quantization_config``), or, with ``--all-files`` (``all_files=True``), every
  GGUF file in it, one cell each.

What is checked before anything is loaded (a one-line error, exit code 2, otherwise):

- the artifact exists, and is pinned: a Hub artifact to the commit its revision resolves to (downloaded
  with the same rules as a model: safetensors only unless ``--allow-pickle``, never remote code unless
  ``--trust-remote-code``), a local file by its sha256, a local folder by its content hash; that identity
  is part of every stored result's key, so a cached value is never reused for another file;
- transformers can load it: a GGUF's architecture is one its GGUF loader knows, every tensor type is one
  gguf-py can dequantize, and it carries a tokenizer; a pre-quantized repository names a quantization
  method transformers knows;
- it is a build of the audited model: the same architecture and shapes (layers, hidden size, heads, key/value
  heads, feed-forward size, vocabulary) and the same tokenizer (every token id the same token).

Loading: a GGUF through transformers' GGUF loader (``from_pretrained(folder, gguf_file=...)``: the blocks are
dequantized, in the compute dtype), a pre-quantized repository through ``from_pretrained`` and its own
quantization config. The cell's settings record the artifact's metadata: its identity, and for a GGUF the
file type, the tensor-type mix and bits per weight, for a repository its ``quantization_config``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HubauditError, ModelLoadError, ModelNotFound, SpecError
from .base import Backend, QuantSpec, register

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import ModelSource

# GGUF files that are not a language model's weights (vision projectors, importance matrices)
NOT_MODEL_GGUF = ("*mmproj*", "*imatrix*")
SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama-gguf-split's parts


class ArtifactError(HubauditError, ValueError):
    """Raised when a ``file:`` artifact cannot be audited: not found, not loadable, or not a build of the
    audited model."""


@dataclass
class Artifact:
    """A published build, resolved and pinned."""

    target: str  # what the spec names (after ``file:``)
    kind: str  # "gguf" or "pretrained"
    folder: Path  # the local folder that holds it
    filename: str | None  # the GGUF file in ``folder``
    identity: str  # sha256:<file> | content:<folder> | hub:<repo>@<commit>[/<file>]
    repo_id: str | None = None
    commit: str | None = None
    requested_revision: str | None = None
    metadata: dict = field(default_factory=dict)
    checked_for: str | None = None  # the identity of the model :func:`check` last accepted it for


_FILE_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256


def target_of(spec: QuantSpec) -> str:
    return ":".join(spec.args)


def _is_local(target: str) -> bool:
    return target.startswith((".", "/", "~")) or Path(target).expanduser().exists()


def _hub_parts(target: str) -> tuple[str, str | None, str | None]:
    """``org/name[/path][@rev]`` -> (repo id, path in the repo or None, revision or None)."""
    from ..source import HUB_ID

    body, _, rev = target.partition("@")
    parts = body.split("/")
    repo = "/".join(parts[:2])
    if len(parts) < 2 or not HUB_ID.match(repo) or ("@" in target and not rev):
        raise ArtifactError(f"file:{target}: not found here, and not a Hub artifact (ORG/NAME[/FILE.gguf][@REV]); give "
                            "an existing path (./model.Q4_K_M.gguf) or a Hub repository")
    return repo, "/".join(parts[2:]) or None, rev or None


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _gguf_names(files: list[str]) -> list[str]:
    return sorted(f for f in files if f.endswith(".gguf") and not any(fnmatch.fnmatch(f.lower(), p) for p in NOT_MODEL_GGUF))


def _many_ggufs(where: str, names: list[str]) -> ArtifactError:
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
    return ArtifactError(f"file:{where} holds {len(names)} GGUF files ({shown}): name one (file:{where}/{names[0]}) "
                         "or pass --all-files to audit each")


# -- resolving ----------------------------------------------------------------------------------------


def expand(target: str, *, all_files: bool, token: str | None = None) -> list[str]:
    """The targets a spec stands for: itself, or with ``all_files`` every GGUF file of a folder/repository."""
    if not all_files or target.endswith(".gguf"):
        return [target]
    if _is_local(target):
        folder = Path(target).expanduser()
        if folder.is_dir() and not (folder / "config.json").is_file():
            names = _gguf_names([str(p.relative_to(folder)) for p in folder.rglob("*.gguf")])
            if names:
                return [f"{target.rstrip('/')}/{n}" for n in names]
        return [target]
    repo, path, rev = _hub_parts(target)
    if path is not None:
        return [target]
    files, _ = _hub_files(repo, rev, token)
    names = _gguf_names(files or [])
    if not names:
        return [target]
    return [f"{repo}/{n}" + (f"@{rev}" if rev else "") for n in names]


def _hub_files(repo: str, rev: str | None, token: str | None) -> tuple[list[str] | None, str]:
    """(files, commit sha) of a Hub model repository at a revision. Offline (or with HF_HUB_OFFLINE=1), a
    revision that is a full commit sha is used as it is (files None: whatever the cache holds)."""
    from huggingface_hub import HfApi

    from ..source import _is_offline_error, hub_errors

    try:
        with hub_errors(repo, rev):
            info = HfApi(token=token).model_info(repo, revision=rev)
    except Exception as e:  # noqa: BLE001
        if not _is_offline_error(e) and not _is_offline_error(e.__cause__ or e.__context__ or e):
            raise
        if rev and re.fullmatch(r"[0-9a-f]{40}", rev):
            return None, rev
        raise ArtifactError(f"file:{repo}: the Hub cannot be reached to pin {rev or 'main'} to a commit; connect, or "
                            "give the commit itself (@<40-hex sha>) to use the local cache") from None
    return [s.rfilename for s in (info.siblings or [])], info.sha


def resolve(target: str, *, token: str | None = None, allow_pickle: bool = False) -> Artifact:
    """Find and pin an artifact (downloading a Hub one into the Hub cache); no model is loaded."""
    if _is_local(target):
        path = Path(target).expanduser()
        if not path.exists():
            raise ArtifactError(f"file:{target} not found; give a GGUF file or a pre-quantized model folder")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ArtifactError(f"file:{target} is not a .gguf file; file: takes a GGUF file or a pre-quantized "
                                    "model folder (config.json with a quantization_config)")
            _refuse_split(path.name, target)
            return Artifact(target, "gguf", path.parent.resolve(), path.name, f"sha256:{file_sha256(path)}")
        if not (path / "config.json").is_file():
            names = _gguf_names([str(p.relative_to(path)) for p in path.rglob("*.gguf")])
            if len(names) == 1:
                return resolve(str(path / names[0]), token=token)
            if names:
                raise _many_ggufs(target.rstrip("/"), names)
            raise ArtifactError(f"file:{target} holds neither a GGUF file nor a model (config.json)")
        from ..modeling import ModelSource

        try:
            ModelSource(path, allow_pickle=allow_pickle, device="cpu")  # the same file checks as a model
        except (ModelLoadError, ModelNotFound) as e:
            raise ArtifactError(f"file:{target}: {e}") from None
        from ..modeling import content_hash

        return Artifact(target, "pretrained", path.resolve(), None, f"content:{content_hash(path)}")
    repo, path_in_repo, rev = _hub_parts(target)
    files, sha = _hub_files(repo, rev, token)
    offline = files is None
    files = files or ([path_in_repo] if path_in_repo else ["config.json"])
    if path_in_repo is None:
        names = _gguf_names(files)
        if "config.json" not in files:
            if len(names) == 1:
                path_in_repo = names[0]
            elif names:
                raise _many_ggufs(repo + (f"@{rev}" if rev else ""), names)
            else:
                raise ArtifactError(f"file:{target}: the repository has neither a GGUF file nor a config.json")
    if path_in_repo is not None:
        if path_in_repo not in files:
            names = _gguf_names(files)
            hint = f"; its GGUF files: {', '.join(names[:6])}" if names else ""
            raise ArtifactError(f"file:{target}: no file {path_in_repo} in {repo} at {rev or 'main'}{hint}")
        if not path_in_repo.endswith(".gguf"):
            raise ArtifactError(f"file:{target} is not a .gguf file; name a GGUF file or the repository itself "
                                "(a pre-quantized model)")
        _refuse_split(path_in_repo, target)
        from huggingface_hub import hf_hub_download

        from ..source import hub_errors

        with hub_errors(repo, rev):
            local = Path(hf_hub_download(repo, path_in_repo, revision=sha, token=token, local_files_only=offline))
        return Artifact(target, "gguf", local.parent, local.name, f"hub:{repo}@{sha}/{path_in_repo}", repo_id=repo,
                        commit=sha, requested_revision=rev)
    from ..source import ModelRef, fetch_model

    try:
        snap = fetch_model(ModelRef(target, repo_id=repo, revision=sha), token=token, allow_pickle=allow_pickle)
    except ModelLoadError as e:
        raise ArtifactError(f"file:{target}: {e}") from None
    return Artifact(target, "pretrained", snap.path, None, f"hub:{repo}@{sha}", repo_id=repo, commit=sha,
                    requested_revision=rev)


def _refuse_split(name: str, target: str) -> None:
    if SPLIT_GGUF.search(name):
        raise ArtifactError(f"file:{target} is one part of a split GGUF file, which transformers' GGUF loader cannot "
                            "read; merge the parts first (llama-gguf-split --merge) and give the merged file")


# -- checking -----------------------------------------------------------------------------------------

# GGUF architecture -> transformers model_type, where they differ
GGUF_ARCH_TO_MODEL_TYPE = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
                           "gpt-oss": "gpt_oss", "command-r": "cohere"}
SHAPE_KEYS = (("block_count", "num_hidden_layers", "layers"), ("embedding_length", "hidden_size", "hidden size"),
              ("feed_forward_length", "intermediate_size", "feed-forward size"),
              ("attention.head_count", "num_attention_heads", "attention heads"),
              ("attention.head_count_kv", "num_key_value_heads", "key/value heads"))


def gguf_metadata(path: Path) -> tuple[dict, list[str] | None]:
    """(what the report records about a GGUF file, its token list or None)."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))

    def get(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - an odd field is reported as missing
            return default

    arch = get("general.architecture")
    counts: dict[str, int] = {}
    bits = numel = 0
    from gguf import GGML_QUANT_SIZES

    for t in reader.tensors:
        name = t.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
        if len(t.shape) > 1:
            block, size = GGML_QUANT_SIZES[t.tensor_type]
            bits += int(t.n_elements) * size * 8 / block
            numel += int(t.n_elements)
    ft = get("general.file_type")
    try:
        file_type = LlamaFileType(ft).name.replace("MOSTLY_", "").replace("ALL_", "") if ft is not None else None
    except ValueError:
        file_type = str(ft)
    meta = {
        "format": "gguf",
        "architecture": arch,
        "name": get("general.name"),
        "file_type": file_type,
        "type_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "bits_per_weight_matrices": round(bits / numel, 3) if numel else None,
        "tensors": len(reader.tensors),
        "quantization_version": get("general.quantization_version"),
        "tokenizer_model": get("tokenizer.ggml.model"),
        "shapes": {k: get(f"{arch}.{k}") for k, _, _ in SHAPE_KEYS},
        "file_bytes": path.stat().st_size,
    }
    template = get("tokenizer.chat_template")
    meta["chat_template_sha256"] = hashlib.sha256(template.encode()).hexdigest()[:12] if isinstance(template, str) else None
    return meta, get("tokenizer.ggml.tokens")


def _check_gguf_loadable(target: str, meta: dict, tokens) -> None:
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - transformers without the GGUF loader
        raise ArtifactError(f"file:{target}: this transformers has no GGUF loader; install transformers >= 5.23") from None
    arch = meta["architecture"]
    try:
        from transformers.integrations.gguf import is_gguf_arch_supported

        new_path = bool(arch) and is_gguf_arch_supported(arch)
    except ImportError:  # pragma: no cover
        new_path = False
    known = set(GGUF_SUPPORTED_ARCHITECTURES)
    if not arch or not (arch in known or GGUF_ARCH_TO_MODEL_TYPE.get(arch) in known or new_path):
        raise ArtifactError(f"file:{target}: transformers cannot load GGUF architecture '{arch}' (its GGUF loader reads "
                            f"{', '.join(sorted(known)[:12])}, ...); audit a build in a supported architecture")
    bad = []
    for name in meta["type_counts"]:
        qt = GGMLQuantizationType[name]
        if qt in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            continue
        block, size = GGML_QUANT_SIZES[qt]
        try:
            quants.dequantize(np.zeros(size, dtype=np.uint8), qt)
        except NotImplementedError:
            bad.append(name)
    if bad:
        raise ArtifactError(f"file:{target}: tensor type(s) {', '.join(bad)} cannot be dequantized by gguf-py, which "
                            "transformers' GGUF loader uses; audit another quantization of the model")
    if not tokens:
        raise ArtifactError(f"file:{target} carries no tokenizer, so it cannot be checked against the audited model's")


def _same_model_type(arch: str, model_type: str) -> bool:
    arch = GGUF_ARCH_TO_MODEL_TYPE.get(arch, arch)
    return arch == model_type or (arch == "llama" and model_type == "mistral")


def check(art: Artifact, src: "ModelSource") -> None:
    """Refuse an artifact transformers cannot load, or that is not a build of the audited model; fill
    ``art.metadata``."""
    cfg = src.config()
    text_cfg = cfg.get("text_config") or cfg
    if art.kind == "gguf":
        from .gguf_check import GGUFLayoutError, check_gguf_layout

        try:  # every count bounded by the file's size before gguf-py's reader trusts them
            vocab = text_cfg.get("vocab_size")
            check_gguf_layout(art.folder / art.filename, vocab if isinstance(vocab, int) and vocab > 0 else None)
            meta, tokens = gguf_metadata(art.folder / art.filename)
        except GGUFLayoutError as e:
            raise ArtifactError(f"file:{art.target} is not a usable GGUF file: {e}") from None
        except (ValueError, KeyError, IndexError, struct.error, OSError) as e:
            raise ArtifactError(f"file:{art.target} is not a usable GGUF file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); give a GGUF file written by llama.cpp "
                                "or gguf-py") from None
        _check_gguf_loadable(art.target, meta, tokens)
        if not _same_model_type(meta["architecture"], cfg.get("model_type", "")):
            raise ArtifactError(f"file:{art.target} is a GGUF of architecture '{meta['architecture']}' and the audited "
                                f"model is '{cfg.get('model_type')}': an artifact must be a build of the audited model")
        for key, hf_key, words in SHAPE_KEYS:
            theirs, ours = meta["shapes"].get(key), text_cfg.get(hf_key)
            if hf_key == "num_key_value_heads" and ours is None:
                ours = text_cfg.get("num_attention_heads")
            if theirs is not None and ours is not None and int(theirs) != int(ours):
                raise ArtifactError(f"file:{art.target} has {theirs} {words} and the audited model {ours}: an artifact "
                                    "must be a build of the audited model")
        _check_tokens(art.target, list(tokens), src)
    else:
        theirs = json.loads((art.folder / "config.json").read_text())
        qc = theirs.get("quantization_config")
        if not isinstance(qc, dict):
            raise ArtifactError(f"file:{art.target} has no quantization_config in its config.json: it is not a "
                                "pre-quantized build (audit it as the model, or name a GGUF file)")
        method = str(qc.get("quant_method", ""))
        from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

        if method not in AUTO_QUANTIZER_MAPPING and method != "bitsandbytes":  # bitsandbytes: _4bit / _8bit there
            raise ArtifactError(f"file:{art.target}: transformers cannot load quantization method '{method}' (it knows "
                                f"{', '.join(sorted(AUTO_QUANTIZER_MAPPING))})")
        if theirs.get("model_type") != cfg.get("model_type"):
            raise ArtifactError(f"file:{art.target} is a '{theirs.get('model_type')}' model and the audited model is "
                                f"'{cfg.get('model_type')}': an artifact must be a build of the audited model")
        their_text = theirs.get("text_config") or theirs
        for _, hf_key, words in (*SHAPE_KEYS, (None, "vocab_size", "vocabulary entries")):
            a, b = their_text.get(hf_key), text_cfg.get(hf_key)
            if a is not None and b is not None and a != b:
                raise ArtifactError(f"file:{art.target} has {a} {words} and the audited model {b}: an artifact must "
                                    "be a build of the audited model")
        meta = {"format": "pretrained", "quant_method": method, "quantization_config": qc,
                "architectures": theirs.get("architectures")}
        if any((art.folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(art.folder, trust_remote_code=src.trust_remote_code)
            vocab = tok.get_vocab()
            _check_tokens(art.target, [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])], src)
            meta["tokenizer"] = "the artifact's own, the same tokens as the audited model's"
        else:
            meta["tokenizer"] = "none in the artifact: the audited model's is used"
    meta.update(identity=art.identity, **({"repo_id": art.repo_id, "commit": art.commit,
                                            "requested_revision": art.requested_revision} if art.repo_id else {}))
    if art.filename:
        meta["file"] = art.filename
    art.metadata = meta
    art.checked_for = getattr(src, "identity", None)


def _check_tokens(target: str, tokens: list[str], src: "ModelSource") -> None:
    tok = src.tokenizer
    ours = tok.convert_ids_to_tokens(list(range(len(tok))))
    n = min(len(tokens), len(ours))
    for i in range(n):
        if tokens[i] != ours[i]:
            raise ArtifactError(f"file:{target} has another tokenizer than the audited model (token {i} is {tokens[i]!r} "
                                f"there and {ours[i]!r} here): an artifact must be a build of the audited model")


def _artifact(spec: QuantSpec) -> Artifact:
    if not isinstance(spec.resolved, Artifact):
        raise ArtifactError(f"{spec} was not resolved; a file: spec is resolved once when the audit's plan is made "
                            "(hubaudit.plan.resolve_specs)")
    return spec.resolved


# -- the backend ----------------------------------------------------------------------------------------


@register
class FileBackend(Backend):
    """A published quantized build (GGUF file, pre-quantized repository), loaded as published."""

    name = "file"
    summary = ("a published build of the audited model: a GGUF file (local or on the Hub) or a pre-quantized Hub "
               "repository (GPTQ, AWQ, bitsandbytes), loaded as published, pinned, checked to be the same model")
    examples = ("file:./model.Q4_K_M.gguf", "file:org/Model-GGUF/model.Q4_K_M.gguf", "file:org/Model-GPTQ@main")
    requires = ()
    artifact = True

    def validate(self, spec: QuantSpec) -> None:
        if not spec.args:
            raise SpecError("'file' needs an artifact: file:PATH.gguf, file:ORG/NAME/FILE.gguf[@REV] or "
                            "file:ORG/NAME[@REV] (a pre-quantized repository)")

    def unavailable_reason(self) -> str | None:
        return None  # a GGUF needs gguf, a GPTQ build gptqmodel...: said by the artifact's own cell

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for mod in ("torch", "transformers", "gguf"):
            try:
                out[mod] = version(mod)
            except PackageNotFoundError:
                pass
        return out

    def resolve(self, spec: QuantSpec, *, token: str | None = None, all_files: bool = False,
                allow_pickle: bool = False) -> list[QuantSpec]:
        """Find and pin the artifact (and, with ``all_files``, every GGUF file of a repository): one spec each,
        carrying its :class:`Artifact`."""
        return [replace(QuantSpec.parse(f"file:{target}"), resolved=resolve(target, token=token, allow_pickle=allow_pickle))
                for target in expand(target_of(spec), all_files=all_files, token=token)]

    def check(self, spec: QuantSpec, source: "ModelSource") -> None:
        """Refuse an artifact that is not a loadable build of the audited model (fills its metadata)."""
        check(_artifact(spec), source)

    def identity(self, spec: QuantSpec) -> str | None:
        return spec.resolved.identity if isinstance(spec.resolved, Artifact) else None

    def quantize(self, source: "ModelSource", spec: QuantSpec):
        art = _artifact(spec)
        if art.repo_id and art.commit and not (art.folder / (art.filename or "config.json")).is_file():
            # resolved on another machine (a sweep's driver, its worker on a cluster node): fetched here at its commit
            art = resolve(f"{art.target.partition('@')[0]}@{art.commit}", allow_pickle=source.allow_pickle)
        if not art.metadata or art.checked_for != source.identity:  # (a sweep's worker) before anything is loaded
            check(art, source)
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        kw = dict(dtype=source.compute_dtype(), trust_remote_code=source.trust_remote_code)
        if art.kind == "gguf":
            model = AutoModelForCausalLM.from_pretrained(art.folder, gguf_file=art.filename, **kw)
            how = f"transformers from_pretrained(gguf_file={art.filename!r}): GGUF blocks dequantized to the compute dtype"
        else:
            model = AutoModelForCausalLM.from_pretrained(art.folder, use_safetensors=None if source.allow_pickle else True,
                                                         **kw)
            how = "transformers from_pretrained with the artifact's quantization_config"
        if not getattr(model, "hf_device_map", None) and not getattr(model, "is_loaded_in_4bit", False) \
                and not getattr(model, "is_loaded_in_8bit", False):
            model = model.to(source.device)
        model.eval()
        return model, {**art.metadata, "loaded_with": how}
