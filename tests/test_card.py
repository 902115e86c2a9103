import pytest
import yaml

from hubaudit.card import SECTION_START, split_card, update_card
from hubaudit.errors import CardError
from hubaudit.results import AuditReport, CellResult, Verdict

CARD = """---
# a comment the owner wrote
license: apache-2.0
base_model: org/original   # trailing comment
tags:
  - unlearning
  - muse
model-index:
- name: org/unlearned
  results:
  - task: {type: text-generation}
    dataset: {name: MUSE-News, type: muse-bench/MUSE-News}
    metrics:
    - {type: knowmem_f, value: 3.1, name: KnowMem forget}

datasets: [muse-bench/MUSE-News]
---

# org/unlearned

Prose with *markdown*, trailing spaces   
and no final newline"""


def make_report(value=12.5, label="fragile"):
    cells = [CellResult("model", "fp", metrics={"verbmem_f": 3.0, "knowmem_f": 4.0, "knowmem_r": 50.0}),
             CellResult("model", "rtn:4", metrics={"verbmem_f": 3.0, "knowmem_f": 4.0 + value, "knowmem_r": 52.0})]
    return AuditReport(
        inputs={"model": {"name": "org/unlearned", "repo_id": "org/unlearned", "sha": "a" * 40, "identity": "x"},
                "reference": None, "forget": {"name": "muse-news", "source": "hub:muse-bench/MUSE-News@b", "sizes": {}},
                "specs": ["rtn:4"]},
        cells=cells, derived={"regained": {"rtn:4": {"knowmem_f": value, "verbmem_f": 0.0}}},
        verdict=Verdict(label, 5.0, "rtn:4", "knowmem_f", value, f"{label}: rtn:4 brings back {value} points"),
        hubaudit_version="0.1.0", created="2026-11-23T00:00:00+00:00",
    )


def test_everything_else_stays_byte_for_byte():
    new = update_card(CARD, make_report())
    front, body = split_card(CARD)
    new_front, new_body = split_card(new)
    assert new_body.startswith(body)  # the prose is a prefix, untouched
    assert new_body[len(body):].strip().startswith(SECTION_START)
    ours = new_front.index("# hubaudit:start")
    # the metadata before our entry is the original up to the end of the model-index block
    assert new_front[:ours] == front[: front.index("\ndatasets:")].rstrip("\n") + "\n"
    assert new_front.endswith("\ndatasets: [muse-bench/MUSE-News]\n")
    meta, old_meta = yaml.safe_load(new_front), yaml.safe_load(front)
    assert {k: v for k, v in meta.items() if k != "model-index"} == {k: v for k, v in old_meta.items() if k != "model-index"}
    assert meta["model-index"][0] == old_meta["model-index"][0]  # the owner's entry, unchanged
    ours_entry = meta["model-index"][1]
    assert ours_entry["name"] == "org/unlearned"
    values = {(m["type"], m["config"]): m["value"] for r in ours_entry["results"] for m in r["metrics"]}
    assert values[("knowmem_f", "rtn:4")] == 16.5 and values[("knowmem_f", "fp")] == 4.0
    assert ours_entry["results"][0]["dataset"] == {"type": "muse-bench/MUSE-News", "name": "muse-news",
                                                   "split": "forget", "revision": "b"}


def test_second_run_replaces_only_our_spans():
    first = update_card(CARD, make_report(12.5))
    second = update_card(first, make_report(1.0, "robust"))
    assert second.count(SECTION_START) == 1 and second.count("# hubaudit:start") == 1
    assert "ROBUST" in second and "FRAGILE" not in second
    assert update_card(second, make_report(1.0, "robust")) == second  # idempotent
    changed = [l for l in second.splitlines() if l not in first.splitlines()]
    assert changed and all("5.0" in l or "robust" in l.lower() or "ROBUST" in l for l in changed), changed


@pytest.mark.parametrize("text", ["", "Just prose.\n", "---\nlicense: mit\n---\nBody\n"])
def test_cards_without_metadata_or_model_index(text):
    new = update_card(text, make_report())
    front, body = split_card(new)
    assert yaml.safe_load(front)["model-index"][0]["name"] == "org/unlearned"
    if text.startswith("---"):
        assert front.startswith("license: mit\n") and body.startswith("Body\n")
    else:
        assert body.lstrip("\n").startswith(text) if text else SECTION_START in body


def test_broken_markers_and_flow_style_are_refused():
    with pytest.raises(CardError, match="it has 1 and 0"):
        update_card("Text\n" + SECTION_START + "\nhalf", make_report())
    with pytest.raises(CardError, match="flow style"):
        update_card("---\nmodel-index: [{name: x}]\n---\n", make_report())
    with pytest.raises(CardError, match="YAML"):
        update_card("---\nkey: [unclosed\n---\n", make_report())


BOMB = "---\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8)) + "base_model: org/x\n---\n\ntext\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nested aliases expand x9 per level; hubaudit refuses aliases outright: detection treats such a card
    as having no metadata (quickly, in little memory), and the card writer stops with one line."""
    import time

    from hubaudit.cardmeta import CardMetadataError, read_metadata
    from hubaudit.detect import read_card
    from hubaudit.source import _card_data

    assert len(BOMB) < 700
    with pytest.raises(CardMetadataError, match="aliases"):
        read_metadata(BOMB)
    (tmp_path / "README.md").write_text(BOMB)
    t = time.perf_counter()
    assert _card_data(tmp_path) == {} and read_card(str(tmp_path))[0] == {}
    assert time.perf_counter() - t < 1
    with pytest.raises(CardError, match="aliases"):
        update_card(BOMB, make_report())


def test_front_matter_found_as_the_hub_finds_it():
    """A blank line before the front matter: huggingface_hub still reads the metadata, so must we (and not
    add a second block on top); the same pattern as huggingface_hub's, and plain strings only."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK, metadata_load  # noqa: F401

    from hubaudit.cardmeta import REGEX_YAML_BLOCK as OURS
    from hubaudit.cardmeta import card_strings, read_metadata

    assert OURS.pattern == REGEX_YAML_BLOCK.pattern
    card = "\n---\nlicense: mit\nbase_model: org/original\n---\n\n# m\n"
    assert read_metadata(card) == {"license": "mit", "base_model": "org/original"}
    new = update_card(card, make_report())
    assert new.count("---\n") == 2 and new.startswith("\n---\nlicense: mit\n")
    assert yaml.safe_load(split_card(new)[0])["license"] == "mit"
    assert card_strings({"tags": ["a", "b"]}, "tags") == ["a", "b"]
    assert card_strings({"tags": ["a", {"b": 1}]}, "tags") == [] and card_strings({"base_model": 3}, "base_model") == []


def test_markers_must_be_one_ordered_pair_outside_code_blocks():
    shown = ("# m\n\nTo find our section, look for:\n\n```\n" + SECTION_START + "\n...\n<!-- hubaudit:end -->\n```\n")
    new = update_card(shown, make_report())
    assert new.count(SECTION_START) == 2 and shown.split("---\n")[-1] in new  # the example stays, ours is added
    reversed_markers = "# m\n\n<!-- hubaudit:end -->\ntext\n" + SECTION_START + "\n"
    with pytest.raises(CardError, match="wrong order"):
        update_card(reversed_markers, make_report())
    with pytest.raises(CardError, match="one '<!-- hubaudit:start -->'"):
        update_card("# m\n\n" + SECTION_START + "\nno end\n", make_report())


def test_a_crlf_card_keeps_its_line_endings():
    crlf = CARD.replace("\n", "\r\n")
    new = update_card(crlf, make_report())
    assert "\n" not in new.replace("\r\n", "") and new.startswith(crlf.split("model-index:")[0])
    assert update_card(new, make_report()) == new  # and a rerun replaces exactly our spans


def test_a_card_changed_on_the_hub_meanwhile_is_not_overwritten(tmp_path, monkeypatch):
    """The card is written with parent_commit = the commit it was read at: a commit in between makes the
    write fail with one line, and the other writer's change stays."""
    import hubaudit.card as card
    from hubserver import LocalHub, use_endpoint

    token = "hf_card_writer_token"
    with LocalHub(tmp_path / "server") as hub, use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        hub.add_token(token, user="org")
        first = hub.create_repo("org/unlearned", files={"README.md": CARD.encode(), "config.json": b"{}"})
        hub.commit("org/unlearned", {"README.md": (CARD + "\nEdited by the owner.\n").encode()}, author="org")
        monkeypatch.setattr(card, "_current_card", lambda api, repo_id, revision="main": (CARD, first))
        with pytest.raises(CardError, match="changed on the Hub"):
            card.publish_card(make_report(), "org/unlearned", token=token, pr=False)
        assert hub.file_at("org/unlearned", "README.md").decode().endswith("Edited by the owner.\n")


def test_the_entry_survives_a_huggingface_hub_round_trip():
    """Another tool re-writes the card through huggingface_hub (comments gone, results merged by task and
    dataset): every precision is still there (metric config), and the next audit finds its entry by content
    and replaces it, leaving the owner's entry alone."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard(update_card(CARD, make_report(12.5)))
    card.data.license = "mit"  # any change: the metadata is dumped again from huggingface_hub's objects
    rewritten = str(card)
    assert "# hubaudit:start" not in rewritten
    _, results = model_index_to_eval_results(yaml.safe_load(split_card(rewritten)[0])["model-index"])
    ours = {(r.metric_type, r.metric_config): r.metric_value for r in results if r.source_name == "hubaudit"}
    assert ours[("knowmem_f", "rtn:4")] == 16.5 and ours[("knowmem_f", "fp")] == 4.0
    again = update_card(rewritten, make_report(1.0, "robust"))
    meta = yaml.safe_load(split_card(again)[0])
    _, results = model_index_to_eval_results(meta["model-index"])
    ours = [r for r in results if r.source_name == "hubaudit"]
    assert {(r.metric_type, r.metric_config): r.metric_value for r in ours}[("knowmem_f", "rtn:4")] == 5.0
    assert len(ours) == len({(r.metric_type, r.metric_config) for r in ours})  # one entry, not two
    assert any(r.metric_type == "knowmem_f" and r.metric_value == 3.1 for r in results)  # the owner's result
    assert meta["license"] == "mit" and again.count("# hubaudit:start") == 1


def test_no_dataset_id_is_invented_for_a_local_forget_set_and_eval_results_parse():
    from huggingface_hub import parse_eval_result_entries

    from hubaudit.card import eval_results_file, model_index_entry

    local = make_report()
    local.inputs["forget"] = {"name": "synthetic", "source": "builtin:synthetic", "sizes": {}}
    assert model_index_entry(local) is None and eval_results_file(local) is None
    new = update_card("# m\n\nprose\n", local)
    assert "model-index" not in new and not new.startswith("---") and SECTION_START in new
    path, text = eval_results_file(make_report())
    assert path == ".eval_results/hubaudit-muse-bench-MUSE-News.yaml"
    entries = parse_eval_result_entries(yaml.safe_load(text))
    got = {(e.task_id, e.notes.split(", ")[1].split(" (")[0]): e.value for e in entries}
    assert got[("knowmem_f", "rtn:4")] == 16.5 and got[("knowmem_f", "full precision")] == 4.0
    assert {e.dataset_id for e in entries} == {"muse-bench/MUSE-News"} and {e.dataset_revision for e in entries} == {"b"}
