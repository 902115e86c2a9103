"""hubaudit.unlearn: the losses from their definitions, SURE's mask, the trainer (resume, controls), the CLI."""

import json
import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hubaudit.unlearn import losses, recommend_command  # noqa: E402
from hubaudit.unlearn.sure import MaskedParams, build_mask, candidate_params, forget_gradients, saliency  # noqa: E402


def _tiny_llama(seed=0, vocab=40):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _batch(seed=0, vocab=40, pad_last=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    if pad_last:
        mask[1, 5:] = 0
        labels[1, 5:] = -100
    return ids, mask, labels


# ---------------------------------------------------------------------------------------------------- losses


def test_kl_is_a_true_kl_nonnegative_zero_for_identical_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, 11, generator=g), torch.randn(4, 6, 11, generator=g)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    assert losses.kl_loss(a, b, labels) > 0
    assert losses.kl_loss(a, a.clone(), labels).item() == pytest.approx(0, abs=1e-7)
    # a constant shift of the logits is the same distribution: a raw-logit "KL" would not be 0 here
    assert losses.kl_loss(a + 5.0, a, labels).item() == pytest.approx(0, abs=1e-5)
    # positions whose label is -100 do not count, whatever the logits there
    lab2 = labels.clone()
    lab2[:, 3:] = -100
    c = a.clone()
    c[:, 2:] = torch.randn(4, 4, 11, generator=g)  # logits at t predict t+1: positions >= 2 are padding
    assert losses.kl_loss(c, b, lab2).item() == pytest.approx(losses.kl_loss(a, b, lab2).item(), rel=1e-6)


def test_kl_equals_hand_computed_value():
    # one real prediction: position 0 predicts the label at position 1
    p_theta, p_ref = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    logits = torch.log(torch.tensor([[p_theta, [1 / 3] * 3]]))
    logits_ref = torch.log(torch.tensor([[p_ref, [1 / 3] * 3]]))
    labels = torch.tensor([[0, 1]])
    want = sum(r * math.log(r / t) for r, t in zip(p_ref, p_theta))  # KL(p_ref || p_theta)
    assert losses.kl_loss(logits, logits_ref, labels).item() == pytest.approx(want, rel=1e-5)


def test_npo_matches_its_formula_on_a_tiny_case():
    logp, ref, beta = torch.tensor([-12.0, -3.0]), torch.tensor([-10.0, -4.0]), 0.1
    want = sum((2 / beta) * math.log(1 + math.exp(beta * (a - b))) for a, b in ((-12, -10), (-3, -4))) / 2
    assert losses.npo_loss(logp, ref, beta).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError):
        losses.npo_loss(logp, ref, 0.0)


def test_sequence_logprob_and_ga_from_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 9, generator=g)
    labels = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, -100, -100]])
    lp = F.log_softmax(logits[:, :-1], -1)
    row0 = sum(lp[0, t, labels[0, t + 1]] for t in range(4))
    row1 = sum(lp[1, t, labels[1, t + 1]] for t in range(2))
    seq = losses.sequence_logprob(logits, labels)
    assert seq.tolist() == pytest.approx([row0.item(), row1.item()], rel=1e-5)
    # GA averages over the batch's 6 real tokens, not per row first (which would weigh row 1's tokens double)
    assert losses.ga_loss(logits, labels).item() == pytest.approx(((row0 + row1) / 6).item(), rel=1e-5)
    assert losses.ga_loss(logits, labels).item() != pytest.approx(((row0 / 4 + row1 / 2) / 2).item(), rel=1e-3)


def test_npo_gradient_tends_to_ga_on_sequence_sums_as_beta_goes_to_zero():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 13, (3, 8), generator=g)
    base = torch.randn(3, 8, 13, generator=g)
    ref = losses.sequence_logprob(torch.randn(3, 8, 13, generator=g), labels)  # a different reference

    def grad(fn):
        x = base.clone().requires_grad_(True)
        fn(x).backward()
        return x.grad

    ga_sum = grad(lambda x: -(-losses.sequence_logprob(x, labels)).mean())  # GA on sequence NLL sums, as a loss
    # minimizing NPO pushes the same way as minimizing GA's loss: grad NPO -> grad(mean log p) = -grad(GA loss)
    small = grad(lambda x: losses.npo_loss(losses.sequence_logprob(x, labels), ref, 1e-6))
    big = grad(lambda x: losses.npo_loss(losses.sequence_logprob(x, labels), ref, 1.0))
    assert torch.allclose(small, ga_sum, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(big, ga_sum, rtol=1e-2, atol=1e-4)


def test_method_terms_use_the_right_pieces():
    model, ref = _tiny_llama(0), _tiny_llama(1)
    b = _batch()
    assert losses.retain_term("ga", model, ref, b) is None and losses.retain_term("npo", model, ref, b) is None
    gdr = losses.retain_term("ga_gdr", model, ref, b)
    assert gdr.item() == pytest.approx(losses.batch_token_nll(model(input_ids=b[0], attention_mask=b[1]).logits, b[2]).item())
    assert losses.retain_term("npo_klr", model, ref, b).item() > 0
    assert losses.retain_term("npo_klr", model, model, b).item() == pytest.approx(0, abs=1e-6)
    # NPO at theta == reference: (2/beta) log 2
    assert losses.forget_term("npo", model, model, b, 0.1).item() == pytest.approx(20 * math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="unknown"):
        losses.forget_term("xx", model, ref, b)


@pytest.mark.parametrize("method", ["ga_gdr", "npo_klr"])
def test_terms_through_slices_equal_the_definitions_value_and_gradient(method, monkeypatch):
    """The trainer's terms (output layer a slice of positions at a time, checkpointed) give the values and
    the gradients of the definitions on the model's whole logits."""
    import hubaudit.logprobs as lp_mod

    vocab = 40
    monkeypatch.setattr(lp_mod, "SLICE_BYTES", 4 * vocab * 3 * 2)  # 2 positions of each of 3 rows per slice
    model, ref = _tiny_llama(0, vocab), _tiny_llama(1, vocab)
    b = _batch(vocab=vocab)
    assert lp_mod.slicing_check(model)[0] == "sliced"

    def whole():
        logits = model(input_ids=b[0], attention_mask=b[1]).logits
        f = losses.ga_loss(logits, b[2]) if method == "ga_gdr" else losses.npo_loss(
            losses.sequence_logprob(logits, b[2]),
            losses.sequence_logprob(ref(input_ids=b[0], attention_mask=b[1]).logits, b[2]).detach(), 0.1)
        r = losses.batch_token_nll(logits, b[2]) if method == "ga_gdr" else losses.kl_loss(
            logits, ref(input_ids=b[0], attention_mask=b[1]).logits.detach(), b[2])
        return f + r

    def sliced():
        return losses.forget_term(method, model, ref, b, 0.1) + losses.retain_term(method, model, ref, b)

    grads = []
    for fn in (whole, sliced):
        model.zero_grad()
        value = fn()
        value.backward()
        grads.append((value.item(), [p.grad.clone() for p in model.parameters()]))
    (v1, g1), (v2, g2) = grads
    assert v2 == pytest.approx(v1, rel=1e-5, abs=1e-6)
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(g1, g2))


# ---------------------------------------------------------------------------------------------------- SURE


def test_mask_keeps_units_above_the_percentile():
    sal = {"a": torch.tensor(1.0), "b": torch.tensor(5.0), "c": torch.tensor(3.0), "d": torch.tensor(0.5)}
    m = build_mask(sal, 50, "module")
    assert sorted(m.rows) == ["b", "c"] and m.n_selected == 2
    assert sorted(build_mask(sal, 80, "module").rows) == ["b"]
    rows = build_mask({"w": torch.tensor([1.0, 9.0, 2.0, 8.0]), "v": torch.tensor([0.0, 7.0])}, 50, "row")
    assert rows.rows["w"].tolist() == [False, True, False, True] and rows.rows["v"].tolist() == [False, True]
    with pytest.raises(ValueError):
        build_mask(sal, 100)


def test_saliency_is_the_forget_gradient_norm_and_scope_excludes_unquantized_matrices():
    model = _tiny_llama(0)
    lin = candidate_params(model, "linear")
    assert "lm_head.weight" not in lin and "model.embed_tokens.weight" not in lin
    assert set(candidate_params(model, "all")) >= set(lin) | {"lm_head.weight", "model.embed_tokens.weight"}
    b = _batch()
    grads = forget_gradients(model, None, [b, b], "ga_klr", scope="linear")
    model.zero_grad()
    (2 * losses.forget_term("ga", model, None, b)).backward()
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(grads[name], dict(model.named_parameters())[name].grad, rtol=1e-4, atol=1e-7)
    s = saliency(grads, "row")
    assert s[name].shape == (grads[name].shape[0],)
    assert torch.allclose(s[name], grads[name].norm(dim=1))
    top = max(saliency(grads, "module").items(), key=lambda kv: kv[1])[0]
    assert list(build_mask(saliency(grads, "module"), 95, "module").rows) == [top]


@pytest.mark.parametrize("level", ["module", "row"])
def test_masked_training_leaves_everything_outside_the_mask_bit_for_bit(level):
    model = _tiny_llama(0).to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    b = _batch()
    grads = forget_gradients(model, None, [b], "ga")
    mask = build_mask(saliency(grads, level), 70, level)
    mp = MaskedParams(model, mask)
    # weight decay would move every weight the optimizer holds: the mask must hold anyway
    opt = torch.optim.AdamW(mp.params, lr=1e-2, weight_decay=0.5)
    for _ in range(4):
        losses.forget_term("ga", model, None, b).backward()
        opt.step()
        opt.zero_grad()
        mp.restore()
    changed_inside = 0
    for n, p in model.named_parameters():
        rows = mask.rows.get(n)
        if rows is None:
            assert torch.equal(p, before[n]), n
            continue
        assert torch.equal(p[~rows], before[n][~rows]), n
        changed_inside += int((p[rows] != before[n][rows]).sum())
    assert changed_inside > 0
    if level == "row":
        assert any(not bool(r.all()) for r in mask.rows.values())  # some matrix was only partly selected


# ---------------------------------------------------------------------------------------------------- API, data, report


def test_config_validation_and_recommendation():
    from hubaudit.errors import HubauditError
    from hubaudit.unlearn.train import DEFAULT_LR, DEFAULT_SURE_LR, UnlearnConfig

    assert UnlearnConfig().lr == DEFAULT_LR and UnlearnConfig(sure=True).lr == DEFAULT_SURE_LR
    for bad in ({"method": "dpo"}, {"threshold": 100}, {"steps": 0}, {"utility_floor": 2}, {"saliency": "head"},
                {"lr": -1.0}, {"stop_at": 150}, {"compute_dtype": "float16"}, {"master_weights": "float64"},
                {"master_weights": "float32", "compute_dtype": "bfloat16"}):
        with pytest.raises(HubauditError):
            UnlearnConfig(**bad).validate()
    cmd = recommend_command("org/original", "muse-news")
    assert cmd.startswith("hubaudit unlearn org/original --forget muse-news --method") and "--sure" in cmd


def _tok(tmp_path, bos=True):
    """The tests' byte-level BPE tokenizer; ``bos=False``: one that adds no special token, as SmolLM2's
    (bos_token ``<|im_start|>`` never added by encoding)."""
    from factories import make_tokenizer

    tok = make_tokenizer(tmp_path / f"tok{int(bos)}")
    if not bos:
        from tokenizers import processors

        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _decoded(tok, rows):
    from hubaudit.trainrows import row_ids

    return [tok.decode(row_ids(r)[0], skip_special_tokens=True) for r in rows]


def _with_corpora(fs, forget, retain):
    import dataclasses

    return dataclasses.replace(fs, forget_train=forget, retain_train=retain)


def test_training_rows_hold_no_evaluation_item(tmp_path):
    """What unlearning trains on is text, never an item a metric scores: no KnowMem question or answer
    prompt, no multiple-choice item, no PrivLeak holdout text, no text the retain_prob utility is measured on."""
    from hubaudit.forget import load_forget_set
    from hubaudit.unlearn.data import build_rows, retain_prob_texts, training_split
    from hubaudit.unlearn.train import _supports

    tok = _tok(tmp_path)
    synthetic = load_forget_set("synthetic")
    corpus = _with_corpora(synthetic, ["The forget corpus: " + " ".join(synthetic.mia_forget)],
                           ["The retain corpus. " + " ".join(synthetic.mia_retain[:10])])
    for fs in (synthetic, corpus):
        forget, retain = build_rows(fs, tok, needs_retain=True, max_length=2048)
        rows = _decoded(tok, forget.rows) + _decoded(tok, retain.rows)
        assert rows and not any("Question:" in r or "Answer:" in r for r in rows)
        for q in fs.forget_qa + fs.forget_qa_icl + fs.retain_qa + fs.retain_qa_icl:
            assert not any(q.question in r for r in rows), q.question
        assert not any(h in r for h in fs.mia_holdout for r in rows)
        held = retain_prob_texts(fs)
        assert held and _supports(fs, "retain_prob") and not any(h in r for h in held for r in rows)
        assert set(held) <= set(fs.mia_retain)
    # without corpora: the forget passages (privleak/forget; verbmem prompt + continuation are the same texts),
    # and three of every four retain passages, the fourth kept for retain_prob
    sp = training_split(synthetic)
    assert sp.forget_texts == list(synthetic.mia_forget) and "privleak/forget" in sp.forget_source
    assert len(sp.retain_texts) + len(retain_prob_texts(synthetic)) == len(synthetic.mia_retain)
    # with corpora: only they are trained on; retain_prob is measured on the retain passages outside raw/retain
    sp = training_split(corpus)
    assert sp.forget_texts == corpus.forget_train and sp.retain_texts == corpus.retain_train
    assert retain_prob_texts(corpus) == synthetic.mia_retain[10:]


def test_a_set_with_only_questions_is_refused_with_what_to_add():
    from hubaudit.errors import ForgetSetError
    from hubaudit.unlearn.data import training_split

    with pytest.raises(ForgetSetError, match="no forget text to train on: add raw/forget") as e:
        training_split(_fs(forget_qa=4, retain_qa=4))
    assert "\n" not in str(e.value)
    with pytest.raises(ForgetSetError, match="WMDP: its forget corpus"):
        training_split(_fs(mcq=8))


def test_long_texts_become_windows_with_nothing_cut_off(tmp_path):
    """A VerbMem passage longer than --max-length reaches the trainer whole, in windows: each at most
    max-length ids, each starting with the tokenizer's prefix, EOS only at the text's end."""
    from hubaudit.forget.types import Passage
    from hubaudit.unlearn.data import build_rows

    fs = _fs(forget_qa=2)
    fs.verbmem = [Passage("the river city of Varnholt was founded in 1821 by Elsbeth Quorin a glassmaker ",
                          "who later moved to Dunmarrow where she built the first lighthouse on the northern coast")]
    text = fs.verbmem[0].prompt + fs.verbmem[0].gt
    for bos in (True, False):
        tok = _tok(tmp_path, bos)
        body = tok(text, add_special_tokens=False).input_ids
        prefix = [tok.bos_token_id] if bos else []
        assert tok(text).input_ids == prefix + body  # the test tokenizer adds BOS; the SmolLM2-like one adds none
        cont = tok(fs.verbmem[0].gt, add_special_tokens=False).input_ids
        assert len(body) > 3 * 16 and len(cont) > 16
        forget, _ = build_rows(fs, tok, needs_retain=False, max_length=16)
        windows = forget.rows
        assert len(windows) == -(-(len(body) + 1) // (16 - len(prefix))) and all(len(w) <= 16 for w in windows)
        assert all(w[:len(prefix)] == prefix for w in windows)
        assert [w[-1] == tok.eos_token_id for w in windows] == [False] * (len(windows) - 1) + [True]
        stream = [t for w in windows for t in w[len(prefix):]]
        assert stream == body + [tok.eos_token_id]  # every id of the text, the continuation included
        # the default keeps the whole passage in one row
        assert build_rows(fs, tok, needs_retain=False)[0].rows == [prefix + body + [tok.eos_token_id]]


def test_corpora_are_read_from_muses_raw_layout_and_stay_out_of_the_audit_hash(tmp_path):
    import shutil

    from factories import write_rows
    from hubaudit.forget import load_forget_set

    src = load_forget_set("synthetic")
    from hubaudit.forget.readers import builtin_path

    folder = tmp_path / "news"
    shutil.copytree(builtin_path("synthetic"), folder)
    (folder / "raw").mkdir()
    (folder / "raw/forget.txt").write_text("One long forget corpus.\n\nIts second article.\n", encoding="utf-8")
    write_rows(folder / "raw/retain1.jsonl", [{"text": "retain article one"}, {"text": "retain article two"}])
    fs = load_forget_set(folder)
    assert fs.forget_train == ["One long forget corpus.\n\nIts second article.\n"]
    assert fs.retain_train == ["retain article one", "retain article two"]
    assert fs.training_sizes() == {"forget_train": 1, "retain_train": 2} and "forget_train" not in fs.sizes()
    # the audit's key is the evaluation items only; an unlearning run's key covers the corpora too
    assert fs.content_hash() == src.content_hash() and fs.training_hash() != src.training_hash()


def test_ga_weighs_every_token_alike():
    """The trainer's GA term is the mean over the batch's real tokens: a batch of a short and a long row
    gives the token-weighted mean of the two rows alone, not the mean of the two."""
    model = _tiny_llama(0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharp predictions: the two rows' mean NLLs differ
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(4))
    mask, labels = torch.ones_like(ids), ids.clone()
    mask[0, 3:] = 0
    labels[0, 3:] = -100  # row 0: 2 scored tokens; row 1: 8
    both = losses.forget_term("ga", model, None, (ids, mask, labels)).item()
    one = [losses.forget_term("ga", model, None, (ids[i:i + 1, :n], mask[i:i + 1, :n], labels[i:i + 1, :n])).item()
           for i, n in ((0, 3), (1, 9))]
    assert both == pytest.approx((2 * one[0] + 8 * one[1]) / 10, rel=1e-5)
    assert abs(one[0] - one[1]) > 0.3 and both != pytest.approx((one[0] + one[1]) / 2, rel=1e-2)


def test_fragile_report_recommends_unlearn_with_sure():
    from hubaudit.audit import derive
    from hubaudit.report import render_markdown
    from hubaudit.results import AuditReport

    def report(rtn4):
        from factories import item_cell

        cs = [item_cell("model", "fp", knowmem_f=[10.0] * 30), item_cell("model", "rtn:4", knowmem_f=[rtn4] * 30),
              item_cell("reference", "fp", knowmem_f=[90.0] * 30)]
        derived, v = derive(cs, ["rtn:4"], threshold=5, auc_retrain=0.5)
        inputs = {"model": {"name": "unl"}, "reference": {"name": "org/original"}, "specs": ["rtn:4"],
                  "forget": {"name": "news", "source": "muse-news", "sizes": {"forget_qa": 3}}, "device": "cpu",
                  "dtype": "float32"}
        return render_markdown(AuditReport(inputs, cs, derived, v))

    assert "hubaudit unlearn org/original --forget muse-news" in report(40.0)
    assert "hubaudit unlearn" not in report(11.0)


class _Planted:
    """What a crafted checkpoint could carry: unpickling it would run code (here: create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused(random_world, tmp_path):
    """Resuming reads the checkpoint with torch.load(weights_only=True): a file planted in the output folder
    cannot run code; the user gets one line naming --fresh."""
    import torch

    from hubaudit.unlearn.train import CHECKPOINT, UnlearnError, unlearn

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code-ran"
    (out / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": "x", "payload": _Planted(str(marker))}, out / CHECKPOINT)
    with pytest.raises(UnlearnError, match="--fresh"):
        unlearn(random_world["model"], random_world["forget"], out, device="cpu", progress=False, steps=2)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- controls


def _fs(**parts):
    from hubaudit.forget.types import QA, Choice, ForgetSet, Passage

    make = {"verbmem": lambda n: [Passage(f"p{i} ", f"g{i}") for i in range(n)],
            "forget_qa": lambda n: [QA(f"q{i}", f"a{i}") for i in range(n)],
            "retain_qa": lambda n: [QA(f"r{i}", f"b{i}") for i in range(n)],
            "mcq": lambda n: [Choice(f"c{i}", ("w", "x", "y", "z"), 0) for i in range(n)],
            "mia_retain": lambda n: [f"t{i}" for i in range(n)]}
    return ForgetSet("s", "here", **{k: make[k](n) for k, n in parts.items()})


def test_controls_steer_by_a_metric_the_original_knows_and_say_why():
    from hubaudit.unlearn.train import RETAIN_PROB, UnlearnError, choose_controls, describe_controls

    fs = _fs(verbmem=4, forget_qa=4, retain_qa=4, mia_retain=4)
    # the original does not answer the QA (KnowMem 0): VerbMem steers, the retain passages give the utility
    c = choose_controls(fs, {"verbmem_f": 98.9, "knowmem_f": 0.0, "knowmem_r": 0.0, RETAIN_PROB: 70.0})
    assert c["forget_metric"] == "verbmem_f" and c["utility_metric"] == RETAIN_PROB
    assert "knowmem_f" in c["skipped"] and "knowmem_r" in c["skipped"]
    text = describe_controls(c, 50, 0.9)
    assert "steering by VerbMem forget" in text and "98.9" in text and "KnowMem forget: the original scores 0.0" in text
    # when it knows both, KnowMem comes first (documented order), and a named metric wins
    both = {"verbmem_f": 60.0, "knowmem_f": 55.0, "knowmem_r": 50.0, RETAIN_PROB: 70.0}
    assert choose_controls(fs, both)["forget_metric"] == "knowmem_f"
    assert choose_controls(fs, both)["utility_metric"] == "knowmem_r"
    assert choose_controls(fs, both, "verbmem_f")["forget_metric"] == "verbmem_f"
    # a metric the original scores near zero on is never chosen, not even when asked for
    with pytest.raises(UnlearnError, match="--stop-metric knowmem_f: the original scores 0.0"):
        choose_controls(fs, {"verbmem_f": 98.9, "knowmem_f": 0.0, RETAIN_PROB: 70.0}, "knowmem_f")
    with pytest.raises(UnlearnError, match="no knowledge of forget set"):
        choose_controls(fs, {"verbmem_f": 3.0, "knowmem_f": 0.0, RETAIN_PROB: 70.0})


def test_controls_count_multiple_choice_above_chance_and_report_a_missing_utility():
    from hubaudit.unlearn.train import UnlearnError, chance_level, choose_controls

    fs = _fs(mcq=8)
    assert chance_level(fs, "wmdp_acc") == 25.0 and chance_level(fs, "verbmem_f") == 0.0
    with pytest.raises(UnlearnError, match="chance 25"):  # 30% of four choices is near chance, not knowledge
        choose_controls(fs, {"wmdp_acc": 30.0})
    c = choose_controls(fs, {"wmdp_acc": 60.0})
    assert c["forget_metric"] == "wmdp_acc" and c["utility_metric"] is None and "no utility floor" in c["utility_why"]
    # retain QA the original does not answer, and no retain passages: no floor, and the reason says why
    c = choose_controls(_fs(forget_qa=4, retain_qa=4), {"knowmem_f": 50.0, "knowmem_r": 0.0})
    assert c["utility_metric"] is None and "knows none of the set's retain metrics" in c["utility_why"]


def test_a_model_that_knows_nothing_of_the_set_is_refused_with_one_line(random_world, tmp_path, capsys):
    from hubaudit.cli import main

    code = main(["unlearn", str(random_world["model"]), "--forget", str(random_world["forget"]), "--method", "ga",
                 "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "shows no knowledge" in err and len(err.strip().splitlines()) == 1
    assert main(["unlearn", str(random_world["model"]), "--forget", str(random_world["forget"]), "--stop-metric",
                 "tofu_rouge_f", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "has no part for it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- slow: on the tiny world


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights_and_sure_mask_holds(tiny_world, tmp_path):
    from hubaudit.unlearn import unlearn

    kw = dict(method="npo_klr", sure=True, saliency="row", threshold=80, steps=10, eval_every=4, checkpoint_every=3,
              utility_floor=None, progress=False)
    full = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "full", **kw)
    part = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "part", max_steps_this_run=5, **kw)
    assert part.status == "interrupted" and part.steps == 5 and (tmp_path / "part/checkpoints/state.pt").is_file()
    done = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "part", **kw)
    assert done.status == "finished" and done.steps == full.steps == 10
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert done.manifest["log"] == full.manifest["log"] and done.manifest["evals"] == full.manifest["evals"]
    assert not (tmp_path / "part/checkpoints").exists()
    # outside SURE's mask the weights are the original's, bit for bit; inside, some moved
    orig = _weights(tiny_world.target)
    mask = full.manifest["sure_mask"]
    moved = {k for k in orig if not torch.equal(orig[k], a[k])}
    assert moved and moved <= set(mask["modules"])
    assert mask["selected_params_fraction"] < 0.5
    # a finished run is reused; other settings in the same folder are refused
    again = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "full", **kw)
    assert again.manifest["key"] == full.manifest["key"]
    from hubaudit.errors import HubauditError

    unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "other", max_steps_this_run=1, **kw)
    with pytest.raises(HubauditError, match="unfinished run with other settings"):
        unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "other", **{**kw, "steps": 11})
    with pytest.raises(HubauditError, match="finished run with other settings"):
        unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "full", **{**kw, "steps": 11})


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_a_step_boundary_and_resumes_bit_for_bit(tiny_world, tmp_path, monkeypatch):
    import signal

    from hubaudit.unlearn import losses as L
    from hubaudit.unlearn import unlearn

    kw = dict(method="ga_gdr", steps=8, eval_every=0, checkpoint_every=100, progress=False)
    full = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "full", **kw)
    calls = {"n": 0}
    real = L.forget_term

    def forget_term(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C in the middle of step 3
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(L, "forget_term", forget_term)
    assert full.status == "finished" and full.steps == 8
    # a library's own SIGINT handler that does not raise: the run installs its own, then puts it back
    def quiet(*_):
        pass

    previous = signal.signal(signal.SIGINT, quiet)
    try:
        with pytest.raises(KeyboardInterrupt):
            unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "cut", **kw)
        assert signal.getsignal(signal.SIGINT) is quiet
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(L, "forget_term", real)
    ck = torch.load(tmp_path / "cut/checkpoints/state.pt", weights_only=False)
    assert ck["state"]["step"] == 3  # the step in flight finished, then the checkpoint
    done = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "cut", **kw)
    assert done.status == "finished" and done.steps == 8
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.slow
def test_utility_floor_stops_and_goes_back_to_a_state_above_it(tiny_world, tmp_path):
    from hubaudit.unlearn import unlearn

    res = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "ga", method="ga", lr=3e-3, steps=40,
                  eval_every=5, utility_floor=0.9, progress=False)
    assert res.stop_reason and res.stop_reason.startswith("utility floor")
    assert res.steps < res.manifest["steps_run"] <= 40
    assert res.after["knowmem_r"] >= 0.9 * res.before["knowmem_r"]
    assert res.manifest["evals"][-1]["knowmem_r"] < 0.9 * res.before["knowmem_r"]


@pytest.mark.slow
def test_cli_unlearn_writes_a_model_folder_with_card_and_audit(tiny_world, tmp_path, monkeypatch, capsys):
    from hubaudit.cli import main

    out = tmp_path / "out"
    args = ["unlearn", str(tiny_world.target), "--forget", str(tiny_world.forget_dir), "--method", "ga_gdr",
            "--steps", "6", "--eval-every", "3", "--checkpoint-every", "2", "--out", str(out), "--quiet"]
    monkeypatch.setenv("HUBAUDIT_UNLEARN_STOP_AFTER", "3")
    assert main(args) == 0
    assert "run the same command again to resume" in capsys.readouterr().out
    monkeypatch.delenv("HUBAUDIT_UNLEARN_STOP_AFTER")
    assert main(args + ["--audit", "--backends", "rtn:4", "--no-store"]) == 0
    printed = capsys.readouterr().out
    assert "Unlearned (ga_gdr, 6 steps" in printed and "Verdict:" in printed
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_world.target}\ntags:\n- unlearning\n- hubaudit\n---")
    man = json.loads((out / "unlearn.json").read_text())
    assert man["config"]["method"] == "ga_gdr" and man["steps"] == 6 and set(man["before"]) == set(man["after"])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "audit/report.json").read_text())["inputs"]["reference"]
    # a folder that is not ours is refused with a one-line error
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("x")
    assert main(["unlearn", str(tiny_world.target), "--out", str(tmp_path / "busy"), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def _verbmem_only(world, folder):
    """The tiny world's forget set without its QA: VerbMem forget, and retain passages for utility."""
    import shutil

    shutil.copytree(world.forget_dir, folder)
    shutil.rmtree(folder / "knowmem")
    return folder


@pytest.mark.slow
def test_unlearn_on_a_verbmem_only_set_stops_on_its_target_and_says_what_it_reached(tiny_world, tmp_path, capsys):
    from hubaudit.cli import main

    fdir = _verbmem_only(tiny_world, tmp_path / "verbmem_only")
    out = tmp_path / "out"
    assert main(["unlearn", str(tiny_world.target), "--forget", str(fdir), "--method", "ga_gdr", "--lr", "1e-4",
                 "--steps", "80", "--eval-every", "2", "--stop-at", "50", "--utility-floor", "0.8", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    man = json.loads((out / "unlearn.json").read_text())
    assert man["control"]["forget_metric"] == "verbmem_f" and man["control"]["utility_metric"] == "retain_prob"
    assert man["stop_reason"].startswith("forget target: verbmem_f") and man["steps"] < 80
    t = man["target"]
    assert t["reached"] and t["reached_value"] == man["after"]["verbmem_f"] <= 0.5 * man["before"]["verbmem_f"]
    assert "steering by VerbMem forget" in printed and "Forgetting target reached: VerbMem forget" in printed
    assert f"{man['after']['verbmem_f']:.1f}" in printed
    card = (out / "README.md").read_text()
    assert "| forgetting target | reached" in card and "retain passages' token probability" in card


@pytest.mark.slow
def test_a_run_that_misses_its_target_says_so_in_summary_card_and_manifest(tiny_world, tmp_path, capsys):
    from hubaudit.cli import main

    out = tmp_path / "out"
    assert main(["unlearn", str(tiny_world.target), "--forget", str(tiny_world.forget_dir), "--method", "ga_gdr",
                 "--steps", "2", "--eval-every", "1", "--stop-at", "1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    man = json.loads((out / "unlearn.json").read_text())
    assert man["target"]["reached"] is False and man["stop_reason"] is None and man["steps"] == 2
    assert "Forgetting target NOT reached" in printed and "after 2 of 2 steps" in printed
    assert "| forgetting target | NOT reached" in (out / "README.md").read_text()


def _grad_norm_at_step(norms, monkeypatch):
    """Record the global gradient norm the optimizer sees at every step."""
    real = torch.optim.AdamW.step

    def step(self, *a, **k):
        grads = [p.grad.float() for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads])).item())
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)


@pytest.mark.slow
def test_the_trainer_gets_every_window_of_a_long_passage_and_clipped_gradients(tiny_world, tmp_path, monkeypatch):
    from hubaudit.forget import load_forget_set
    from transformers import AutoTokenizer
    from hubaudit.unlearn import losses as L
    from hubaudit.unlearn import unlearn
    from hubaudit.unlearn.data import text_windows

    batches, norms = [], []
    real = L.forget_term

    def forget_term(method, model, ref, batch, beta=0.1):
        batches.append([r[m.bool()].tolist() for r, m in zip(batch[0], batch[1])])
        return real(method, model, ref, batch, beta)

    monkeypatch.setattr(L, "forget_term", forget_term)
    _grad_norm_at_step(norms, monkeypatch)
    kw = dict(method="ga", lr=1e-3, steps=2, batch_size=512, eval_every=0, max_length=16, progress=False)
    unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "clipped", **kw)
    # one batch held every row: every window of every forget passage, none longer than --max-length
    tok = AutoTokenizer.from_pretrained(tiny_world.target)
    fs = load_forget_set(tiny_world.forget_dir)
    first = sorted(map(tuple, batches[0]))
    assert max(len(r) for r in first) == 16
    item = max(fs.verbmem, key=lambda p: len(p.prompt + p.gt))
    windows = text_windows(tok, item.prompt + item.gt, 16)
    assert len(windows) > 2 and all(tuple(w) in first for w in windows)
    stream = [t for w in windows for t in w[1:]]  # each window starts with BOS
    assert stream[-1] == tok.eos_token_id and tok.decode(stream[:-1]).endswith(item.gt)
    # clipping: the optimizer never sees a gradient norm above 1 (bf16 rounding aside); without it, it does
    assert norms and max(norms) <= 1.0 + 1e-2
    unclipped: list = []
    monkeypatch.undo()
    _grad_norm_at_step(unclipped, monkeypatch)
    unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / "unclipped", **{**kw, "max_grad_norm": None})
    assert max(unclipped) > 1.0 + 1e-2


@pytest.mark.slow
def test_a_tofu_set_unlearns_on_its_forget_split_with_the_question_as_context(tmp_path, capsys):
    """TOFU (as open-unlearning): the forget QA pairs are the training rows, loss on the answer only; the
    retain rows are TOFU's retain split without the items tofu/retain evaluates. End to end on a tiny model
    that learned the set."""
    from factories import write_rows
    from hubaudit.cli import main
    from hubaudit.forget import load_forget_set
    from hubaudit.trainrows import row_ids
    from hubaudit.unlearn.data import build_rows
    from qa_world import qa_models, tofu_rows
    from transformers import AutoTokenizer

    forget, retain = tofu_rows()
    folder = tmp_path / "tofu"
    write_rows(folder / "tofu/forget.json", forget)
    write_rows(folder / "tofu/retain.json", retain[:4])  # the retain evaluation
    write_rows(folder / "tofu/retain_train.json", [{"question": r["question"], "answer": r["answer"]} for r in retain])
    model = qa_models()["known"]
    fs = load_forget_set(folder)
    tok = AutoTokenizer.from_pretrained(model)
    f_rows, r_rows = build_rows(fs, tok, needs_retain=True)
    assert len(f_rows) == len(forget) and len(r_rows) == len(retain) - 4
    for (ids, start), x in zip(f_rows.rows, fs.tofu_forget):
        assert x.question in tok.decode(ids[:start]) and tok.decode(ids[start:], skip_special_tokens=True).strip() == x.answer
    assert not any(r["question"] in tok.decode(row_ids(r_)[0]) for r in retain[:4] for r_ in r_rows.rows)
    out = tmp_path / "out"
    assert main(["unlearn", str(model), "--forget", str(folder), "--method", "ga_gdr", "--lr", "2e-3", "--steps", "12",
                 "--batch-size", "4", "--eval-every", "6", "--utility-floor", "0", "--dtype", "float32", "--out", str(out),
                 "--quiet"]) == 0
    man = json.loads((out / "unlearn.json").read_text())
    assert man["control"]["forget_metric"] == "tofu_rouge_f" and "TOFU's forget split" in man["training_data"]["forget"]
    assert man["training_data"]["retain_rows"] == 4 and man["steps"] == 12
    assert man["after"]["tofu_rouge_f"] < man["before"]["tofu_rouge_f"] - 20


def test_a_compute_dtype_that_is_neither_float32_nor_the_weights_is_a_user_error(capsys):
    from hubaudit.cli import main

    assert main(["unlearn", "org/model", "--dtype", "bfloat16", "--compute-dtype", "float16", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--compute-dtype must be auto, float32 or the weights' --dtype (bfloat16)" in err and "\n" not in err


@pytest.mark.slow
def test_precision_is_recorded_and_master_weights_keep_what_bf16_rounding_loses(tiny_world, tmp_path):
    """bf16 weights lose updates smaller than half a bf16 step, computed natively or in float32; float32 master
    weights keep them and save bf16. Each run's manifest says weights/compute and the share changed per step."""
    from safetensors import safe_open

    from hubaudit.unlearn import unlearn

    kw = dict(method="ga_gdr", lr=1e-5, steps=10, eval_every=0, utility_floor=None, progress=False)
    runs = {"float32 compute": dict(compute_dtype="float32"), "bf16 compute": dict(compute_dtype="bfloat16"),
            "master": dict(master_weights="float32")}
    orig = _weights(tiny_world.target)
    total = sum(t.numel() for t in orig.values())
    moved = {}
    for name, extra in runs.items():
        res = unlearn(tiny_world.target, tiny_world.forget_dir, tmp_path / name.replace(" ", "_"), **kw, **extra)
        man = res.manifest
        want = {"float32 compute": ("bfloat16", "float32"), "bf16 compute": ("bfloat16", "bfloat16"),
                "master": ("float32", "float32")}[name]
        assert (man["precision"]["weights"], man["precision"]["compute"]) == want, name
        assert man["precision"]["saved"] == "bfloat16" and man["precision"]["reason"]
        on_disk = json.loads((res.out / "unlearn.json").read_text())
        assert on_disk["precision"] == man["precision"] and on_disk["changed_share"] == man["changed_share"]
        with safe_open(str(res.out / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}, name
        now = _weights(res.out)
        moved[name] = sum(int((now[k] != orig[k]).sum()) for k in orig)
        # the log's per-step shares account for every element that moved (each changed at least once)
        assert man["log_columns"][-1] == "changed_share" and man["log"][-1][0] == 10
        assert man["changed_share"]["steps"] == 10
        assert man["changed_share"]["mean_per_step"] == pytest.approx(man["log"][-1][3], abs=1e-6)
        assert moved[name] <= man["changed_share"]["mean_per_step"] * 10 * total + 1
        assert moved[name] > 0, name
        assert "| precision |" in (res.out / "README.md").read_text()
    # a 1e-5 step is below half a bf16 step for most weights: lost in bf16 either way, kept by master weights
    assert moved["master"] > 2 * max(moved["float32 compute"], moved["bf16 compute"]), moved
