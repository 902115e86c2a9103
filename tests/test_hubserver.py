"""The local Hub test double (tests/hubserver.py) against the real huggingface_hub client."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import LocalHub, hub_env, use_endpoint

huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

ALICE = "hf_TestTokenAlice_d41d8cd98f00b204e98"  # owns the "alice" namespace, reads org/gated
BOB = "hf_TestTokenBob_0cc175b9c0f1b6a831c3"  # a plain user: may open PRs, may not push to org repos
ORG = "hf_TestTokenOrg_92eb5ffee6ae2fec3ad7"  # owns the "org" namespace
TOKENS = (ALICE, BOB, ORG)

README = b"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags:
- unlearning
- tiny
---
# Tiny model

A tiny test model.
"""


def tiny_safetensors(values: list[float]) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, 4 * len(values)]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}f", *values)


def model_files(seed: int = 0) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "seed": seed}).encode(),
        "model.safetensors": tiny_safetensors([float(seed + i) for i in range(16)]),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}).encode(),
        "tokenizer_config.json": b'{"model_max_length": 128}',
        "special_tokens_map.json": b'{"eos_token": "</s>"}',
        "README.md": README,
        "pytorch_model.bin": os.urandom(2 * 1024 * 1024),  # the "big" file nobody should download
    }


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub") as h:
        h.add_token(ALICE, user="alice", can_read={"org/gated", "org/private"})
        h.add_token(BOB, user="bob")
        h.add_token(ORG, user="org")
        yield h
        broken = [r for r in h.requests if r["status"] is None or r["status"] >= 500]
        assert not broken, f"the fake Hub failed on: {broken}"


@pytest.fixture
def api(hub, tmp_path):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        yield HfApi()  # created inside: HfApi() captures constants.ENDPOINT at construction


def _requested(hub: LocalHub, fragment: str, method: str | None = None) -> list[dict]:
    return [r for r in hub.requests if fragment in r["path"] and (method is None or r["method"] == method)]


# --------------------------------------------------------------------------------------------------
# downloads


def test_snapshot_download_allow_patterns_and_revisions(hub, api, tmp_path):
    old_files = model_files(seed=1)
    sha1 = hub.create_repo("org/tiny", files=old_files)

    info = api.model_info("org/tiny", files_metadata=True)
    assert info.sha == sha1
    assert info.gated is False and info.private is False
    assert info.card_data["license"] == "apache-2.0" and "unlearning" in info.card_data["tags"]
    assert info.library_name == "transformers" and info.pipeline_tag == "text-generation"
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    assert info.safetensors.total == 16
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["pytorch_model.bin"] == 2 * 1024 * 1024 and ".gitattributes" in sizes
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["model.safetensors"].sha256 and lfs["pytorch_model.bin"].size == 2 * 1024 * 1024
    assert lfs["config.json"] is None  # regular git file

    cache = tmp_path / "cache"
    folder = Path(snapshot_download("org/tiny", allow_patterns=["*.json", "*.safetensors", "README.md"], cache_dir=cache))
    got = sorted(p.name for p in folder.iterdir())
    assert got == ["README.md", "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert folder.name == sha1
    for name in got:
        assert (folder / name).read_bytes() == old_files[name]
    assert not _requested(hub, "pytorch_model.bin"), "a file outside allow_patterns was requested"
    # LFS files are redirected to the CDN origin (and the client follows to it), regular files are served inline.
    assert _requested(hub, "/resolve/", "HEAD") and any(r["server"] == "cdn" for r in hub.requests)

    # a second commit moves main; the old sha still serves the old content
    sha2 = hub.commit("org/tiny", {"config.json": b'{"model_type": "llama", "seed": 2}'}, message="bump")
    assert sha2 != sha1 and api.model_info("org/tiny").sha == sha2
    assert api.model_info("org/tiny", revision=sha1).sha == sha1
    new_cfg = hf_hub_download("org/tiny", "config.json", cache_dir=cache)
    assert Path(new_cfg).read_bytes() == b'{"model_type": "llama", "seed": 2}'
    old_cfg = hf_hub_download("org/tiny", "config.json", revision=sha1, cache_dir=cache)
    assert Path(old_cfg).read_bytes() == old_files["config.json"]
    old_folder = snapshot_download("org/tiny", revision=sha1, allow_patterns=["config.json"], cache_dir=cache)
    assert Path(old_folder, "config.json").read_bytes() == old_files["config.json"]
    assert hub.file_at("org/tiny", "config.json", revision=sha1) == old_files["config.json"]

    assert api.list_repo_files("org/tiny") == sorted([".gitattributes", *old_files])
    refs = api.list_repo_refs("org/tiny")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", sha2)]
    commits = api.list_repo_commits("org/tiny")
    assert [c.commit_id for c in commits] == [sha2, sha1] and commits[0].title == "bump"


def test_tree_pagination_paths_info_and_folders(hub, api, monkeypatch):
    import hubserver

    files = {f"shards/part-{i:02d}.json": f'{{"i": {i}}}'.encode() for i in range(7)}
    files["top.txt"] = b"top"
    hub.create_repo("org/many", files=files)
    monkeypatch.setattr(hubserver, "TREE_PAGE_SIZE", 3)  # force Link-header pagination
    assert api.list_repo_files("org/many") == sorted([".gitattributes", "top.txt", *files.keys() - {"top.txt"}])
    assert len(_requested(hub, "/tree/")) >= 3
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("org/many")}
    assert top == {"shards": "RepoFolder", ".gitattributes": "RepoFile", "top.txt": "RepoFile"}
    inside = [e.path for e in api.list_repo_tree("org/many", path_in_repo="shards")]
    assert sorted(inside) == sorted(k for k in files if k.startswith("shards/"))
    info = api.get_paths_info("org/many", ["top.txt", "shards", "missing.txt"], expand=True)
    assert {e.path for e in info} == {"top.txt", "shards"}
    assert all(e.last_commit is not None for e in info)
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/many", path_in_repo="nope"))


def test_offline_mode_serves_the_cache(hub, api, tmp_path):
    sha = hub.create_repo("org/tiny", files=model_files())
    cache = tmp_path / "cache"
    online = snapshot_download("org/tiny", allow_patterns=["*.json", "README.md"], cache_dir=cache)

    # in another process, with HF_HUB_OFFLINE=1 and the hub stopped
    endpoint = hub.endpoint
    hub.stop()
    code = (
        "import sys, huggingface_hub as h\n"
        "p = h.snapshot_download('org/tiny', allow_patterns=['*.json', 'README.md'])\n"
        "f = h.hf_hub_download('org/tiny', 'config.json')\n"
        "print(p); print(f)\n"
    )
    env = hub_env(endpoint, cache, tmp_path / "hf_home", offline=True)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    folder, cfg = out.stdout.split()
    assert folder == online and Path(folder).name == sha
    assert Path(cfg).read_bytes() == model_files()["config.json"]

    # in this process too (use_endpoint(offline=True) patches constants.HF_HUB_OFFLINE)
    with use_endpoint(endpoint, cache_dir=cache, offline=True):
        assert snapshot_download("org/tiny", allow_patterns=["*.json", "README.md"]) == online
        with pytest.raises(LocalEntryNotFoundError):  # never downloaded => not in the cache
            hf_hub_download("org/tiny", "pytorch_model.bin")


def test_dataset_repo_downloads(hub, api, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"]}), buf)
    parquet = buf.getvalue()
    files = {
        "data/train-00000-of-00001.parquet": parquet,
        "forget.json": json.dumps([{"text": "secret fact"}]).encode(),
        "README.md": b"---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n---\n# data\n",
    }
    sha = hub.create_repo("org/forget-set", repo_type="dataset", files=files)
    info = api.dataset_info("org/forget-set", files_metadata=True)
    assert info.sha == sha and info.card_data["license"] == "mit"
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["data/train-00000-of-00001.parquet"] is not None and lfs["forget.json"] is None

    folder = Path(snapshot_download("org/forget-set", repo_type="dataset", allow_patterns=["*.parquet", "*.json"], cache_dir=tmp_path / "c"))
    assert (folder / "data/train-00000-of-00001.parquet").read_bytes() == parquet
    assert pq.read_table(folder / "data/train-00000-of-00001.parquet").num_rows == 2
    assert (folder / "forget.json").read_bytes() == files["forget.json"]
    assert not (folder / "README.md").exists()
    assert all(r["path"].startswith(("/datasets/org/forget-set/", "/api/datasets/org/forget-set"))
               for r in hub.requests if r["server"] == "hub" and "forget-set" in r["path"])
    p = hf_hub_download("org/forget-set", "forget.json", repo_type="dataset", cache_dir=tmp_path / "c2")
    assert Path(p).read_bytes() == files["forget.json"]
    with pytest.raises(RepositoryNotFoundError):  # a dataset is not a model
        api.model_info("org/forget-set")


# --------------------------------------------------------------------------------------------------
# errors


def test_typed_errors(hub, api, tmp_path):
    cache = tmp_path / "cache"
    hub.create_repo("org/tiny", files={"config.json": b"{}"})
    hub.create_repo("org/gated", files={"config.json": b'{"gated": true}', "model.safetensors": tiny_safetensors([1.0])}, gated=True)
    hub.create_repo("org/private", files={"config.json": b'{"private": true}'}, private=True)

    # missing repo: 401 anonymous / 404 authenticated, both RepositoryNotFoundError
    with pytest.raises(RepositoryNotFoundError) as e:
        api.model_info("org/nope")
    assert e.value.response.status_code == 401 and not isinstance(e.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError) as e:
        api.model_info("org/nope", token=BOB)
    assert e.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/nope", cache_dir=cache)

    # gated: metadata is public, files need an accepted token
    info = api.model_info("org/gated")
    assert info.gated == "auto"
    with pytest.raises(GatedRepoError) as e:
        hf_hub_download("org/gated", "config.json", cache_dir=cache)
    assert e.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as e:
        hf_hub_download("org/gated", "config.json", cache_dir=cache, token=BOB)
    assert e.value.response.status_code == 403
    with pytest.raises(GatedRepoError):
        snapshot_download("org/gated", cache_dir=cache)
    assert Path(hf_hub_download("org/gated", "config.json", cache_dir=cache, token=ALICE)).read_bytes() == b'{"gated": true}'
    folder = snapshot_download("org/gated", cache_dir=tmp_path / "c2", token=ALICE)
    assert Path(folder, "model.safetensors").read_bytes() == tiny_safetensors([1.0])

    # private: invisible without access, readable with it
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/private")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/private", "config.json", cache_dir=cache, token=BOB)
    assert api.model_info("org/private", token=ALICE).private is True
    assert Path(hf_hub_download("org/private", "config.json", cache_dir=cache, token=ALICE)).read_bytes() == b'{"private": true}'

    # missing revision
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="no-such-branch", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("org/tiny", revision="0" * 40, cache_dir=cache)
    assert api.revision_exists("org/tiny", "main") and not api.revision_exists("org/tiny", "v9")

    # missing file
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "missing.bin", cache_dir=cache)
    assert api.file_exists("org/tiny", "config.json") and not api.file_exists("org/tiny", "missing.bin")

    # an unknown token is rejected everywhere (401, not a repo error)
    with pytest.raises(HfHubHTTPError) as e:
        api.model_info("org/tiny", token="hf_not_a_known_token")
    assert e.value.response.status_code == 401 and not isinstance(e.value, RepositoryNotFoundError)


# --------------------------------------------------------------------------------------------------
# writes, pull requests, discussions


def test_create_pr_then_update_it(hub, api, tmp_path):
    main_sha = hub.create_repo("org/tiny", files=model_files())
    new_card = README.replace(b"# Tiny model", b"# Tiny model\n\n## Audit\nForgetting verified: no.")
    assert api.whoami(token=ALICE)["name"] == "alice"

    # anonymous and read-only writes are refused
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("org/tiny", [CommitOperationAdd("README.md", new_card)], commit_message="x", create_pr=True, token=False)
    assert e.value.response.status_code == 401

    info = api.create_commit(
        "org/tiny",
        operations=[CommitOperationAdd("README.md", new_card), CommitOperationAdd("audit/report.json", b'{"ok": false}')],
        commit_message="Add audit results",
        commit_description="Automated audit by hubaudit.",
        create_pr=True,
        token=ALICE,
    )
    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert info.pr_url.endswith("/org/tiny/discussions/1") and info.oid == hub.head("org/tiny", "refs/pr/1")
    assert hub.head("org/tiny") == main_sha  # main untouched

    cache = tmp_path / "cache"
    assert Path(hf_hub_download("org/tiny", "README.md", revision="refs/pr/1", cache_dir=cache)).read_bytes() == new_card
    assert Path(hf_hub_download("org/tiny", "README.md", cache_dir=cache)).read_bytes() == README
    assert api.model_info("org/tiny", revision="refs/pr/1").sha == info.oid
    assert any("refs%2Fpr%2F1" in r["path"] for r in _requested(hub, "/resolve/"))

    prs = list(api.get_repo_discussions("org/tiny", author="alice", discussion_type="pull_request", discussion_status="open"))
    assert [(d.num, d.is_pull_request, d.status, d.author, d.title) for d in prs] == [(1, True, "open", "alice", "Add audit results")]
    assert prs[0].git_reference == "refs/pr/1"
    assert list(api.get_repo_discussions("org/tiny", author="bob")) == []

    # a second commit to refs/pr/1 updates the same PR
    info2 = api.create_commit("org/tiny", [CommitOperationAdd("audit/report.json", b'{"ok": true}')],
                              commit_message="Update report", revision="refs/pr/1", token=ALICE)
    assert info2.pr_url is None and info2.oid == hub.head("org/tiny", "refs/pr/1") != info.oid
    assert [d.num for d in api.get_repo_discussions("org/tiny")] == [1]
    refs = api.list_repo_refs("org/tiny", include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", info2.oid)]
    assert hub.head("org/tiny") == main_sha
    assert hub.file_at("org/tiny", "audit/report.json", revision="refs/pr/1") == b'{"ok": true}'

    details = api.get_discussion_details("org/tiny", 1)
    assert details.target_branch == "refs/heads/main" and details.conflicting_files == [] and details.merge_commit_oid is None
    assert [e.type for e in details.events] == ["comment", "commit", "commit"]
    assert details.events[0].content == "Automated audit by hubaudit."
    assert "+## Audit" in details.diff and "audit/report.json" in details.diff

    (pr,) = hub.pull_requests("org/tiny")
    assert pr["num"] == 1 and pr["status"] == "open" and pr["author"] == "alice" and pr["target_branch"] == "main"
    assert pr["files"] == ["README.md", "audit/report.json"] and pr["head"] == info2.oid

    # comments, edits, status
    comment = api.comment_discussion("org/tiny", 1, "Please review.", token=ALICE)
    edited = api.edit_discussion_comment("org/tiny", 1, comment.id, "Please review, thanks.", token=ALICE)
    assert edited.edited and edited.content == "Please review, thanks."
    api.change_discussion_status("org/tiny", 1, "closed", token=ALICE)
    assert list(api.get_repo_discussions("org/tiny", discussion_status="open")) == []
    assert [d.status for d in api.get_repo_discussions("org/tiny", discussion_status="closed")] == ["closed"]


def test_write_permissions_and_merge(hub, api):
    main_sha = hub.create_repo("org/tiny", files={"README.md": README})
    op = lambda: [CommitOperationAdd("README.md", README + b"\nmore\n")]  # noqa: E731

    # bob may open a PR but not push to main, nor to alice's PR
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("org/tiny", op(), commit_message="direct", token=BOB)
    assert e.value.response.status_code == 403
    pr = api.create_commit("org/tiny", op(), commit_message="via PR", create_pr=True, token=BOB)
    alice_pr = api.create_commit("org/tiny", [CommitOperationAdd("NOTES.md", b"n")], commit_message="alice PR", create_pr=True, token=ALICE)
    assert (pr.pr_num, alice_pr.pr_num) == (1, 2)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("org/tiny", op(), commit_message="hijack", revision="refs/pr/2", token=BOB)
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:  # only the owner merges
        api.merge_pull_request("org/tiny", 1, token=BOB)
    assert e.value.response.status_code == 403

    # the owner merges; main moves to a merge commit with the PR's content
    api.merge_pull_request("org/tiny", 1, token=ORG)
    details = api.get_discussion_details("org/tiny", 1)
    assert details.status == "merged" and details.merge_commit_oid == hub.head("org/tiny") != main_sha
    assert hub.file_at("org/tiny", "README.md") == README + b"\nmore\n"

    # direct commits by the owner, deletes, parent_commit checks
    c = api.create_commit("org/tiny", [CommitOperationDelete("README.md"), CommitOperationAdd("a/b.txt", b"x")],
                          commit_message="owner edit", token=ORG)
    assert hub.list_files("org/tiny") == [".gitattributes", "a/b.txt"] and c.oid == hub.head("org/tiny")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit("org/tiny", [CommitOperationAdd("c.txt", b"c")], commit_message="stale", parent_commit=main_sha, token=ORG)
    assert e.value.response.status_code == 412
    with pytest.raises(EntryNotFoundError):
        api.create_commit("org/tiny", [CommitOperationDelete("missing.txt")], commit_message="rm", token=ORG)

    # HfApi.create_repo + upload_file in one's own namespace
    url = api.create_repo("alice/new-model", token=ALICE)
    assert url.repo_id == "alice/new-model"
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="alice/new-model", token=ALICE)
    assert hub.file_at("alice/new-model", "hello.txt") == b"hello"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("org/not-yours", token=ALICE)
    assert e.value.response.status_code == 403


def test_module_level_functions_follow_use_endpoint(hub, tmp_path):
    sha = hub.create_repo("org/tiny", files={"config.json": b"{}"})
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        assert huggingface_hub.constants.ENDPOINT == hub.endpoint
        assert huggingface_hub.model_info("org/tiny").sha == sha  # the module-level `api` object
        assert huggingface_hub.hf_hub_url("org/tiny", "config.json").startswith(hub.endpoint)
        assert Path(hf_hub_download("org/tiny", "config.json")).is_relative_to(tmp_path / "cache")
        assert os.environ["HF_ENDPOINT"] == hub.endpoint
    assert huggingface_hub.constants.ENDPOINT != hub.endpoint
    assert os.environ.get("HF_ENDPOINT") != hub.endpoint


# --------------------------------------------------------------------------------------------------
# secrets


def test_tokens_never_logged(tmp_path, capfd):
    with LocalHub(tmp_path / "hub", verbose=True) as hub:  # verbose: the server does write to stderr
        hub.add_token(ALICE, user="alice", can_read={"org/gated"})
        hub.add_token(ORG, user="org")
        hub.create_repo("org/gated", files=model_files(), gated=True)
        with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
            api = HfApi()
            snapshot_download("org/gated", allow_patterns=["*.json", "*.safetensors"], token=ALICE)
            api.create_commit("org/gated", [CommitOperationAdd("x.txt", b"x")], commit_message="t", create_pr=True, token=ALICE)
            list(api.get_repo_discussions("org/gated", token=ALICE))
            api.whoami(token=ALICE)
            with pytest.raises(HfHubHTTPError):
                api.whoami(token="hf_unknown_token_value_123456")
            with pytest.raises(HfHubHTTPError):
                api.create_commit("org/gated", [CommitOperationAdd("y.txt", b"y")], commit_message="t", token=ALICE)
        log = json.dumps(hub.requests)
        authed = [r for r in hub.requests if "Authorization" in r["headers"] or "authorization" in r["headers"]]
        assert authed and all(r["headers"].get("authorization", r["headers"].get("Authorization")) == "<redacted>" for r in authed)
        assert {r["user"] for r in authed} >= {"alice"}
        # the client drops the Authorization header when it follows the redirect to the CDN origin
        cdn = [r for r in hub.requests if r["server"] == "cdn"]
        assert cdn and not any(k.lower() == "authorization" for r in cdn for k in r["headers"])
    captured = capfd.readouterr()
    assert "[localhub:hub]" in captured.err  # the server did log something...
    for token in (*TOKENS, "hf_unknown_token_value_123456"):
        assert token not in log
        assert token not in captured.err and token not in captured.out  # ...but never a token
        assert not any(token.encode() in p.read_bytes() for p in (tmp_path / "hub").rglob("*") if p.is_file())
