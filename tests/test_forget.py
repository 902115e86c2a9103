import json

import pytest

from factories import make_forget_dir, write_rows
from hubaudit.errors import ForgetSetError, ForgetSetNotFound
from hubaudit.forget import load_forget_set
from hubaudit.metrics import resolve_metrics


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_every_file_format_reads_the_same_set(tmp_path, ext):
    ref = load_forget_set(make_forget_dir(tmp_path / "json", ext=".json"))
    other = load_forget_set(make_forget_dir(tmp_path / "other", ext=ext))
    assert other.content_hash() == ref.content_hash()
    assert other.sizes() == ref.sizes()
    assert other.mia_holdout == ref.mia_holdout and isinstance(other.mia_holdout[0], str)


def test_builtin_synthetic_set_is_complete():
    fs = load_forget_set("synthetic")
    assert len(fs.forget_qa) >= 100
    for part in ("verbmem", "forget_qa_icl", "retain_qa", "retain_qa_icl", "mia_forget", "mia_retain", "mia_holdout"):
        assert fs.sizes()[part] > 0, part
    # forget and retain facts are disjoint, and ICL examples are not scored items
    assert not {q.question for q in fs.forget_qa} & {q.question for q in fs.retain_qa}
    assert not {q.question for q in fs.forget_qa_icl} & {q.question for q in fs.forget_qa}
    assert set(fs.mia_holdout).isdisjoint(fs.mia_forget)


def test_missing_part_switches_its_metric_off(tmp_path):
    root = make_forget_dir(tmp_path / "books")
    for f in (root / "knowmem").iterdir():  # MUSE Books has no knowmem
        f.unlink()
    (root / "knowmem").rmdir()
    fs = load_forget_set(root)
    assert not fs.has("forget_qa")
    names = [m.name for m in resolve_metrics(None, fs)]
    assert names == ["verbmem_f", "mia_auc", "es_f"]  # extraction strength reads the VerbMem passages too
    assert not {"knowmem_f", "knowmem_r", "prob_f"} & set(names)
    with pytest.raises(ForgetSetError, match="knowmem_f|KnowMem forget.*--metrics"):
        resolve_metrics("knowmem_f", fs)


def test_empty_part_is_an_error_unless_its_metric_is_off(tmp_path):
    root = make_forget_dir(tmp_path / "fs")
    (root / "verbmem" / "forget.json").write_text("[]")
    fs = load_forget_set(root)
    with pytest.raises(ForgetSetError, match=r"verbmem/forget\.json is empty.*VerbMem forget.*--metrics"):
        resolve_metrics(None, fs)
    assert [m.name for m in resolve_metrics("knowmem_f,knowmem_r", fs)] == ["knowmem_f", "knowmem_r"]


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".csv"])
def test_missing_field_names_file_item_and_field(tmp_path, ext):
    root = make_forget_dir(tmp_path / "fs", ext=ext)
    path = root / "knowmem" / f"forget_qa{ext}"
    write_rows(path, [{"question": "q1", "answer": "a1"}, {"question": "q2", "reply": "a2"}])
    with pytest.raises(ForgetSetError) as e:
        load_forget_set(root)
    msg = str(e.value)
    assert str(path) in msg and "item 2" in msg and "'answer'" in msg and "\n" not in msg
    assert "has no 'answer'" in msg or "empty 'answer'" in msg  # CSV: a column missing in one row is empty


def test_bad_json_and_unknown_source(tmp_path):
    root = make_forget_dir(tmp_path / "fs")
    (root / "privleak" / "holdout.json").write_text("[1, 2")
    with pytest.raises(ForgetSetError, match="holdout.json: not valid JSON"):
        load_forget_set(root)
    with pytest.raises(ForgetSetNotFound, match="not found"):
        load_forget_set(tmp_path / "nope")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ForgetSetError, match="is a file"):
        load_forget_set(tmp_path / "qa.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ForgetSetError, match="no forget-set files"):
        load_forget_set(empty)


def test_meta_json_sets_auc_retrain(tmp_path):
    root = make_forget_dir(tmp_path / "news")
    (root / "meta.json").write_text(json.dumps({"name": "muse-news-local", "auc_retrain": 0.4772}))
    fs = load_forget_set(root)
    assert fs.name == "muse-news-local" and fs.auc_retrain == 0.4772
    (root / "meta.json").write_text(json.dumps({"auc_retrain": 7}))
    with pytest.raises(ForgetSetError, match="auc_retrain"):
        load_forget_set(root)
