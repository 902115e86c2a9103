"""Proposing a forget set from a model card, and the CLI's confirmation (a question on a terminal,
--yes otherwise, exit 2 without either), end to end against the local Hub."""

import io
import json
import sys
from pathlib import Path

import pytest

from factories import make_random_model
from hubaudit.cli import main
from hubaudit.detect import propose_forget_set
from hubserver import LocalHub, use_endpoint
from qa_world import write_tofu_hub_files

TOFU_CARD = """---
base_model: meta-llama/Llama-3.2-1B-Instruct
datasets:
- locuslab/TOFU
tags:
- unlearning
---

# SimNPO on TOFU

Llama-3.2-1B-Instruct finetuned on TOFU, then unlearned on the forget05 split with SimNPO.
"""


@pytest.mark.parametrize("card, text, source, because", [
    ({"datasets": ["locuslab/TOFU"]}, "unlearned on forget05 with NPO", "tofu-forget05", "datasets list locuslab/TOFU"),
    ({"datasets": ["locuslab/TOFU"]}, "", "tofu-forget10", "datasets list locuslab/TOFU"),
    ({"tags": ["tofu", "unlearning"]}, "the 1% forget split: forget01", "tofu-forget01", "tagged 'tofu'"),
    ({}, "open-unlearning/tofu_Llama-3.2-1B-Instruct_forget10_SimNPO", "tofu-forget10", "mentions TOFU"),
    ({"datasets": ["cais/wmdp"]}, "RMU unlearning of hazardous cyber knowledge", "wmdp-cyber", "cais/wmdp"),
    ({"tags": ["wmdp"]}, "Zephyr-7B with RMU on WMDP bio and cyber", "wmdp-bio", "wmdp-cyber"),
    ({}, "We evaluate on the WMDP benchmark (chemistry)", "wmdp-chem", "mentions WMDP"),
    ({"datasets": ["muse-bench/MUSE-News"]}, "", "muse-news", "MUSE-News"),
    ({}, "Who's Harry Potter? We unlearn the books.", "muse-books", "Harry Potter"),
    ({"tags": ["muse"]}, "MUSE Books, NPO_GDR", "muse-books", "tagged 'muse'"),
])
def test_cards_propose_the_matching_set(card, text, source, because):
    got = propose_forget_set(card, text)
    assert got is not None and got[0] == source and because.lower() in got[1].lower(), got


@pytest.mark.parametrize("card, text", [
    ({}, ""),
    ({"tags": ["unlearning", "llama"]}, "A model that forgot some things. Tofurky recipes excluded."),
    ({"base_model": "org/original"}, "Trained on news about biology."),  # no benchmark named
])
def test_cards_without_a_benchmark_propose_nothing(card, text):
    assert propose_forget_set(card, text) is None


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect_hub")
    m = make_random_model(root / "m", seed=1)
    with LocalHub(root / "server") as hub:
        files = folder_files(m)
        files["README.md"] = TOFU_CARD.encode()
        hub.create_repo("org/tofu-unlearned", files=files)
        hub.create_repo("org/plain", files=folder_files(m))
        tofu = folder_files(write_tofu_hub_files(root / "tofu"))
        tofu = {k.replace("forget01", "forget05"): v for k, v in tofu.items()}
        hub.create_repo("locuslab/TOFU", repo_type="dataset", files=tofu)
        hub.model_dir = m
        yield hub


@pytest.fixture()
def client(hub, tmp_path):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        yield tmp_path


def audit_args(client, model, *extra):
    return ["audit", model, "--no-reference", "--no-store", "--quiet", "--out", str(client / "out"),
            "--backends", "rtn:8", "--metrics", "tofu_prob_f", "--fail-on", "none", *extra]


def test_without_a_terminal_or_yes_it_exits_2_naming_the_proposal(client, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(audit_args(client, "org/tofu-unlearned"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--forget tofu-forget05" in err and "--yes" in err and "locuslab/TOFU" in err
    assert not (client / "out" / "report.json").exists()


def test_yes_audits_the_proposed_set(client, capsys):
    code = main(audit_args(client, "org/tofu-unlearned", "--yes"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "forget set tofu-forget05" in err
    report = json.loads((client / "out" / "report.json").read_text())
    assert report["inputs"]["forget"]["name"] == "tofu-forget05"


@pytest.mark.parametrize("answer, code", [("", 0), ("y", 0), ("n", 2)])
def test_on_a_terminal_it_asks(client, capsys, monkeypatch, answer, code):
    asked = []

    class TTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", TTY(""))
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    assert main(audit_args(client, "org/tofu-unlearned")) == code
    assert asked == ["Use forget set tofu-forget05 (because the card's datasets list locuslab/TOFU and it mentions "
                     "forget05)? [Y/n] "]
    if code == 2:
        assert "pass --forget" in capsys.readouterr().err


def test_no_hint_keeps_the_builtin_default(client, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main(["audit", "org/plain", "--no-reference", "--no-store", "--quiet", "--out", str(client / "out"),
                 "--backends", "rtn:8", "--metrics", "knowmem_f"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((client / "out" / "report.json").read_text())["inputs"]["forget"]["name"] == "synthetic"
