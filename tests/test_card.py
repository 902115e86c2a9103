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
    values = {(m["type"], r["task"]["name"]): m["value"] for r in ours_entry["results"] for m in r["metrics"]}
    assert values[("knowmem_f", "Unlearning audit, rtn:4")] == 16.5
    assert ours_entry["results"][0]["dataset"]["type"] == "muse-bench/MUSE-News"


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
    with pytest.raises(CardError, match="without"):
        update_card("Text\n" + SECTION_START + "\nhalf", make_report())
    with pytest.raises(CardError, match="flow style"):
        update_card("---\nmodel-index: [{name: x}]\n---\n", make_report())
    with pytest.raises(CardError, match="YAML"):
        update_card("---\nkey: [unclosed\n---\n", make_report())
