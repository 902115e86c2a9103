"""hubaudit sweep against a local Hub (tests/hubserver.py, the real huggingface_hub client): models found by
a ``--search`` query (tags, base_model, author) pinned to their commits, their originals taken from the
cards, method and base model read from the cards, card pull requests, and the leaderboard published to a
Hub dataset: a commit on a dataset of our own, a pull request on someone else's. No token is ever printed
or written."""

import json
from pathlib import Path

import pytest

from factories import make_forget_dir, make_random_model
from hubserver import LocalHub, use_endpoint

TOKEN = "hf_sweep_Secret_token_never_printed_42"


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def card(method: str) -> bytes:
    return (f"---\nbase_model: lab/original\ntags:\n- unlearning\n- {method}\n---\n\n# {method} unlearned\n").encode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_hub")
    o = make_random_model(root / "src" / "original", seed=1)
    with LocalHub(root / "server") as hub:
        hub.add_token(TOKEN, user="alice")
        hub.create_repo("lab/original", files=folder_files(o))
        for i, method in enumerate(("npo", "rmu"), 2):
            files = folder_files(make_random_model(root / "src" / method, seed=i))
            files["README.md"] = card(method)
            hub.create_repo(f"lab/{method}-unlearned", files=files)
        other = folder_files(make_random_model(root / "src" / "other", seed=9))
        other["README.md"] = b"---\ntags:\n- unlearning\n---\n\nNo base model named.\n"
        hub.create_repo("lab/other", files=other)
        hub.create_repo("elsewhere/npo-unlearned", files={**other, "README.md": card("npo")})
        hub.create_repo("bob/board", repo_type="dataset", files={"README.md": b"bob's leaderboard\n"})
        hub.forget = make_forget_dir(root / "forget", n=8)
        yield hub


@pytest.mark.slow
def test_search_sweep_and_publish(hub, tmp_path, capsys):
    from hubaudit.cli import main
    from hubaudit.leaderboard import read_leaderboard
    from hubaudit.sweep import sweep

    out, store = tmp_path / "out", tmp_path / "store.sqlite"
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        # the query: tag and base_model (the Hub's base_model:<id> tag) and author; lab/other has no base_model,
        # elsewhere/ is another author
        res = sweep(search="tag=unlearning,base_model=lab/original,author=lab", forget=str(hub.forget), specs="rtn:4",
                    out=out, store=store, use_ray=False, card="pr", token=TOKEN, progress=False)
        plan = json.loads((out / "sweep.json").read_text())
        shas = {r: hub.head(r) for r in ("lab/npo-unlearned", "lab/rmu-unlearned")}
        assert plan["query"]["tags"] == ["unlearning"] and plan["query"]["base_model"] == "lab/original"
        assert {(m["id"], m["sha"]) for m in plan["resolved"]} == set(shas.items())
        # the original behind both is one model, evaluated once: 3 models x (full precision + rtn:4)
        assert res.stats["cells"] == res.stats["computed_cells"] == 6
        assert {m["reference"] for m in plan["models"]} == {"lab/original"}

        lb = res.leaderboard.set_index("model")
        assert dict(lb["commit"]) == shas
        assert dict(lb["method"]) == {"lab/npo-unlearned": "NPO", "lab/rmu-unlearned": "RMU"}
        assert set(lb["base_model"]) == {"lab/original"}
        for repo in shas:  # each card got its pull request, and the row links it
            prs = hub.pull_requests(repo)
            assert len(prs) == 1 and lb.loc[repo, "card_pr"].endswith(f"/{repo}/discussions/{prs[0]['num']}")
            assert lb.loc[repo, "model_url"].endswith(f"/{repo}/tree/{shas[repo]}")

        # publish: our own dataset is created and committed to; bob's gets a pull request, main untouched
        assert main(["leaderboard", "publish", "--repo", "alice/unlearning-board", "--out", str(out),
                     "--token", TOKEN]) == 0
        assert "Published:" in capsys.readouterr().out
        files = hub.list_files("alice/unlearning-board", repo_type="dataset")
        assert {"leaderboard.parquet", "README.md", "sweep.json"} <= set(files)
        assert {f"{r}/report.md" for r in lb["report"]} <= set(files)
        assert "data_files: leaderboard.parquet" in hub.file_at("alice/unlearning-board", "README.md",
                                                                repo_type="dataset").decode()
        published = read_leaderboard("alice/unlearning-board", token=False)
        assert published.set_index("model")["commit"].to_dict() == shas

        bob_main = hub.head("bob/board", repo_type="dataset")
        assert main(["leaderboard", "publish", "--repo", "bob/board", "--out", str(out), "--token", TOKEN]) == 0
        assert "Pull request:" in capsys.readouterr().out
        assert hub.head("bob/board", repo_type="dataset") == bob_main
        assert len(hub.pull_requests("bob/board", repo_type="dataset")) == 1

        # errors a user can cause: one line, exit 2
        assert main(["leaderboard", "publish", "--repo", "nobody/new-board", "--out", str(out), "--token", TOKEN]) == 2
        assert "does not exist and its namespace is not yours" in capsys.readouterr().err
        assert main(["leaderboard", "publish", "--repo", "alice/x", "--out", str(tmp_path / "empty")]) == 2
        assert "holds no leaderboard.parquet" in capsys.readouterr().err
        assert main(["sweep", "--search", "tag=no-such-tag", "--no-ray", "--out", str(tmp_path / "o2")]) == 2
        assert "found no model" in capsys.readouterr().err

    # the token is never printed nor written
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    for f in out.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
