"""TOFU: the reader (Hub layouts, shorthands, local folders), the metrics as TOFU's code defines them,
and scores on a model built to know the forget answers against one built not to."""

import json
import math
from pathlib import Path

import pytest

from factories import write_rows
from hubaudit.errors import ForgetSetError
from hubaudit.forget import QA, TofuQA, load_forget_set
from hubaudit.forget.tofu import tofu_from_qa
from hubaudit.metrics.tofu import (forget_quality, forget_stat, mean_prob, retain_stat, rouge_l_recall,
                                   truth_ratio)
from hubserver import LocalHub, use_endpoint
from qa_world import qa_models, tofu_rows, write_tofu_hub_files


def folder_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu_hub")
    with LocalHub(root / "server") as hub:
        hub.create_repo("locuslab/TOFU", repo_type="dataset", files=folder_files(write_tofu_hub_files(root / "jsonl")))
        hub.create_repo("org/tofu-parquet", repo_type="dataset",
                        files=folder_files(write_tofu_hub_files(root / "pq", layout="parquet")))
        plain = {k: v for k, v in folder_files(write_tofu_hub_files(root / "plain")).items() if "perturbed" not in k}
        hub.create_repo("org/tofu-plain", repo_type="dataset", files=plain)
        yield hub


@pytest.fixture()
def client(hub, tmp_path):
    with use_endpoint(hub.endpoint, cache_dir=tmp_path / "cache"):
        yield tmp_path


def test_truth_ratio_and_aggregates_follow_tofus_code():
    para = [-0.5, -0.5]                      # per-token log p of the paraphrased answer: mean -0.5
    pert = [[-1.0, -2.0], [-2.0, -3.0]]     # means -1.5 and -2.5: geometric mean over answers exp(-2.0)
    r = truth_ratio(para, pert)
    assert r == pytest.approx(math.exp(-2.0 + 0.5))  # P(pert)/P(para), < 1: prefers the right answer
    assert forget_stat([r, 1 / r]) == pytest.approx(r)  # min(R, 1/R) either way round
    assert retain_stat([r, 2.0]) == pytest.approx((1 - r + 0) / 2)  # max(0, 1 - R)
    assert mean_prob([math.log(0.25)] * 3) == pytest.approx(0.25)
    # forget quality: the KS p-value; identical distributions give 1, disjoint ones a small p
    assert forget_quality([0.2, 0.5, 0.9], [0.2, 0.5, 0.9]) == pytest.approx(1.0)
    assert forget_quality([0.1] * 20, [0.9] * 20) < 1e-6


def test_rouge_recall_is_tofus_stemmed_recall():
    from rouge_score import rouge_scorer

    ref, pred = "She writes novels about dragons", "novel writing about the dragons of the north"
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].recall
    assert rouge_l_recall(ref, pred) == expected and 0 < expected < 1
    assert rouge_l_recall("a b c", "a b c and more words") == 1.0  # recall: extra words cost nothing


def test_shorthand_reads_locuslab_tofu_json_lines(client):
    fs = load_forget_set("tofu-forget01")
    forget, retain = tofu_rows()
    assert fs.name == "tofu-forget01" and fs.source.startswith("hub:locuslab/TOFU@")
    assert fs.meta["benchmark"] == "tofu" and fs.files["tofu_forget"] == "forget01_perturbed"
    assert [x.question for x in fs.tofu_forget] == [r["question"] for r in forget]
    assert fs.tofu_forget[0].perturbed_answers == tuple(forget[0]["perturbed_answer"])
    assert fs.tofu_forget[0].paraphrased_answer == forget[0]["paraphrased_answer"]
    assert [x.answer for x in fs.tofu_retain] == [r["answer"] for r in retain]
    assert fs.forget_qa is None and fs.mcq is None  # only TOFU's parts


def test_parquet_layout_and_repo_config_syntax_read_the_same_items(client):
    a = load_forget_set("tofu-forget01")
    b = load_forget_set("org/tofu-parquet:forget01")
    assert b.name == "org/tofu-parquet:forget01"
    assert a.tofu_forget == b.tofu_forget and a.tofu_retain == b.tofu_retain
    assert a.content_hash() == b.content_hash()


def test_without_perturbed_files_the_plain_split_is_read(client):
    fs = load_forget_set("org/tofu-plain:forget01")
    assert fs.files["tofu_forget"] == "forget01" and fs.tofu_retain is None
    assert all(not x.perturbed_answers for x in fs.tofu_forget)
    with pytest.raises(ForgetSetError, match="forget05"):
        load_forget_set("org/tofu-plain:forget05")


def test_local_folder_tofu_part_and_field_errors(tmp_path):
    forget, retain = tofu_rows()
    write_rows(tmp_path / "ok" / "tofu" / "forget.jsonl", forget)
    write_rows(tmp_path / "ok" / "tofu" / "retain.json", retain)
    fs = load_forget_set(tmp_path / "ok")
    assert len(fs.tofu_forget) == len(forget) and isinstance(fs.tofu_retain[0], TofuQA)
    bad = dict(forget[0])
    del bad["paraphrased_answer"]
    write_rows(tmp_path / "bad" / "tofu" / "forget.json", [forget[1], bad])
    with pytest.raises(ForgetSetError, match="item 2 has perturbed answers but no 'paraphrased_answer'"):
        load_forget_set(tmp_path / "bad")


def test_existing_sets_keep_their_content_hash():
    """Adding the TOFU/WMDP parts must not change the hash (the results store's key) of a MUSE set."""
    fs = load_forget_set("synthetic")
    import hashlib
    from dataclasses import asdict

    parts = {p: None if getattr(fs, p) is None else [x if isinstance(x, str) else asdict(x) for x in getattr(fs, p)]
             for p in ("verbmem", "forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl", "mia_forget",
                       "mia_retain", "mia_holdout", "mcq")}
    blob = json.dumps({"parts": parts, "auc_retrain": fs.auc_retrain}, sort_keys=True, ensure_ascii=False)
    assert fs.content_hash() == hashlib.sha256(blob.encode()).hexdigest()


def test_tofu_from_qa_draws_wrong_answers_of_the_same_kind():
    qa = [QA(f"Where was {n} born?", t) for n, t in (("Ann Oak", "Ely"), ("Bo Fir", "Rye"), ("Cy Elm", "Hove"))]
    qa += [QA(f"In what year was {n} born?", y) for n, y in (("Ann Oak", "1901"), ("Bo Fir", "1950"))]
    items = tofu_from_qa(qa, n_perturbed=3)
    assert items == tofu_from_qa(qa, n_perturbed=3)  # deterministic
    assert set(items[0].perturbed_answers) == {"Rye", "Hove"} and items[0].paraphrased_answer == "Ely"
    assert items[3].perturbed_answers == ("1950",)


@pytest.mark.slow
def test_scores_separate_a_model_that_knows_from_one_that_does_not(client):
    from hubaudit.metrics import evaluate
    from hubaudit.metrics.tofu import forget_quality
    from hubaudit.modeling import ModelSource

    fs = load_forget_set("tofu-forget01")
    models = qa_models()
    res = {}
    for name, path in models.items():
        src = ModelSource(path, device="cpu")
        res[name] = evaluate(src.model, src.tokenizer, fs)
    known, ignorant = res["known"], res["ignorant"]
    assert set(known) == {"tofu_rouge_f", "tofu_prob_f", "tofu_tr_f", "tofu_rouge_r", "tofu_prob_r", "tofu_tr_r"}
    # ROUGE recall credits the answer's template words too (TOFU's own retain model scores about 0.4 on
    # the forget set), so the ignorant model is not near 0; the facts themselves tell the two apart
    assert known["tofu_rouge_f"].value > 80 and ignorant["tofu_rouge_f"].value < known["tofu_rouge_f"].value - 25
    towns = [x.answer.split()[-1].rstrip(".") for x in fs.tofu_forget]
    right = {n: sum(t in row["output"] for t, row in zip(towns, r["tofu_rouge_f"].items)) for n, r in res.items()}
    assert right["known"] >= len(towns) - 1 and right["ignorant"] <= 2, right
    assert known["tofu_prob_f"].value > 0.5 > 0.05 > ignorant["tofu_prob_f"].value
    # forget truth ratio: near 0 for a model that prefers the right answer, larger for one that cannot tell
    assert known["tofu_tr_f"].value < ignorant["tofu_tr_f"].value - 0.2
    # both were trained on the retain authors: utility is there for both
    for r in (known, ignorant):
        assert r["tofu_rouge_r"].value > 50 and r["tofu_prob_r"].value > 0.5 and r["tofu_tr_r"].value > 0.5
    # forget quality against the model that never saw the forget authors
    base = [x["truth_ratio"] for x in ignorant["tofu_tr_f"].items]
    assert forget_quality(base, base) == pytest.approx(1.0)
    assert forget_quality([x["truth_ratio"] for x in known["tofu_tr_f"].items], base) < 0.05


@pytest.mark.slow
def test_cli_audit_with_the_shorthand_and_a_retain_model(client, capsys):
    from hubaudit.cli import main

    models = qa_models()
    out = client / "out"
    code = main(["audit", str(models["known"]), "--forget", "tofu-forget01", "--no-reference", "--retrain",
                 str(models["ignorant"]), "--backends", "rtn:8", "--no-store", "--quiet", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["forget"]["name"] == "tofu-forget01"
    assert "tofu_rouge_f" in report["inputs"]["metrics"] and report["inputs"]["chat_template"] is None
    fq = report["derived"]["forget_quality"]
    assert set(fq) == {"fp", "rtn:8"} and fq["fp"] < 0.05  # the known model is far from the retain model
    assert "TOFU ROUGE-L forget" in stdout and "TOFU prompts: plain" in stdout and "forget quality" in stdout


def _utility_rows():
    forget, retain = tofu_rows()
    ra = [{"question": f"Who wrote book {i}?", "answer": f"Author {i} wrote it.",
           "perturbed_answer": [f"Author {i + 3} wrote it.", f"Nobody {i} wrote it."]} for i in range(3)]
    wf = [{"question": f"What is {i} plus one?", "answer": f"It is {i + 1}.",
           "perturbed_answer": [f"It is {i + 5}.", f"It is {i + 7}.", f"It is {i + 9}."]} for i in range(4)]
    return forget, retain, ra, wf


def test_model_utility_is_the_harmonic_mean_of_the_nine_values(random_world, tmp_path):
    """open-unlearning's model_utility: hmean of retain prob/ROUGE/truth ratio and, on real_authors and
    world_facts, the normalised answer probability, ROUGE and truth ratio (answer vs perturbed)."""
    from hubaudit.metrics import MetricConfig, evaluate
    from hubaudit.metrics.tofu import model_utility
    from hubaudit.modeling import ModelSource

    assert model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    assert model_utility([0.5, 0.0, 1.0]) == 0.0
    forget, retain, ra, wf = _utility_rows()
    for part, rows in (("forget", forget), ("retain", retain), ("real_authors", ra), ("world_facts", wf)):
        write_rows(tmp_path / "fs" / "tofu" / f"{part}.json", rows)
    fs = load_forget_set(tmp_path / "fs")  # real_authors/world_facts rows have no paraphrase: accepted there
    assert len(fs.tofu_real_authors) == 3 and len(fs.tofu_world_facts) == 4
    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    cfg = MetricConfig()
    res = evaluate(src.model, src.tokenizer, fs, ["tofu_mu", "tofu_rouge_r", "tofu_prob_r", "tofu_tr_r"], cfg)
    values = {r["name"]: r["score"] for r in res["tofu_mu"].items}
    assert len(values) == 9
    positive = all(v > 0 for v in values.values())  # a random model's ROUGE may be 0: utility 0 then
    assert res["tofu_mu"].value == pytest.approx(9 / sum(1 / v for v in values.values()) if positive else 0.0)
    assert 0 <= res["tofu_mu"].value <= min(values.values()) * 9
    # the retain values are the retain metrics' (ROUGE on 0..1)
    assert values["retain_Q_A_ROUGE"] == pytest.approx(res["tofu_rouge_r"].value / 100)
    assert values["retain_Q_A_Prob"] == pytest.approx(res["tofu_prob_r"].value)
    assert values["retain_Truth_Ratio"] == pytest.approx(res["tofu_tr_r"].value)
    # real_authors' normalised probability: p(answer) / (p(answer) + sum of p(perturbed)), each scored as an answer
    for short, rows in (("ra", ra), ("wf", wf)):
        flat = [TofuQA(r["question"], a) for r in rows for a in (r["answer"], *r["perturbed_answer"])]
        probs = [x["score"] for x in evaluate(src.model, src.tokenizer, type(fs)("p", "t", tofu_forget=flat),
                                              ["tofu_prob_f"], cfg)["tofu_prob_f"].items]
        norm, tr, k = [], [], 0
        for r in rows:
            p = probs[k: k + 1 + len(r["perturbed_answer"])]
            k += len(p)
            norm.append(p[0] / (p[0] + sum(p[1:])))
            wrong = math.exp(sum(math.log(q) for q in p[1:]) / len(p[1:]))  # exp(-mean of mean losses)
            tr.append(max(0.0, 1 - wrong / p[0]))
        assert values[f"{short}_Q_A_Prob_normalised"] == pytest.approx(sum(norm) / len(norm), rel=1e-6)
        assert values[f"{short}_Truth_Ratio"] == pytest.approx(sum(tr) / len(tr), rel=1e-6)


def test_forget_quality_against_the_retain_models_logs(tmp_path):
    from hubaudit.errors import MetricError
    from hubaudit.metrics.tofu import forget_quality, forget_quality_by_spec, retain_ratios_from_logs
    from hubaudit.results import CellResult

    logs = {"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {
        "10": {"score": 0.9}, "2": {"score": 0.5}, "1": {"score": 0.7}}}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(logs))
    assert retain_ratios_from_logs(tmp_path / "TOFU_EVAL.json") == [0.7, 0.5, 0.9]
    (tmp_path / "bad.json").write_text(json.dumps({"forget_Q_A_Prob": {}}))
    with pytest.raises(MetricError, match="forget_truth_ratio"):
        retain_ratios_from_logs(tmp_path / "bad.json")
    mine = [0.1, 0.2, 0.15, 0.3]
    cell = CellResult("model", "fp", metrics={"tofu_tr_f": 0.2}, items={"tofu_tr_f": [{"truth_ratio": r} for r in mine]})
    fq = forget_quality_by_spec([cell], [0.7, 0.5, 0.9])
    assert fq == {"fp": pytest.approx(forget_quality(mine, [0.7, 0.5, 0.9]))} and fq["fp"] < 0.1
