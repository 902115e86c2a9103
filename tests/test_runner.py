"""The fast decoding path (own greedy loop, shared-prefix KV cache, finished rows leaving the batch)
gives exactly what batched ``model.generate`` gives, and batches fit the memory there is."""

import pytest

from hubaudit.forget import load_forget_set
from hubaudit.metrics import MetricConfig
from hubaudit.metrics.muse import knowmem_prefix, knowmem_prompt
from hubaudit.metrics.rouge import cut_at_stop
from hubaudit.metrics.oracle import _token_logprobs_one  # the model's whole logits, one text at a time
from hubaudit.metrics.runner import LMRunner
from hubaudit.modeling import ModelSource

STOPS = MetricConfig().stop_strings


def _knowmem_prompts(fs, extra_unprefixed=False):
    prefix = knowmem_prefix(fs.forget_qa_icl)
    prompts = [knowmem_prompt(prefix, x.question) for x in fs.forget_qa]
    if extra_unprefixed:  # a prompt that does not start with the prefix: encoded whole, same result
        prompts.append("Varnholt " + prompts[0])
    return prefix, prompts


def _both(model, tok, prompts, max_new, stops, prefix, batch_size):
    fast = LMRunner(model, tok, batch_size=batch_size).generate(prompts, max_new, stops, shared_prefix=prefix)
    slow = LMRunner(model, tok, batch_size=batch_size, fast=False).generate(prompts, max_new, stops)
    return fast, slow


@pytest.mark.parametrize("batch_size", [None, 3])
def test_fast_generation_equals_model_generate(random_world, batch_size):
    """The loop's logic (prefix cache, rows leaving, stop strings), token for token. In float32: a random
    model's next-token logits are near ties, which 16-bit arithmetic flips with the batch's padding (the
    bf16 test below uses a trained model)."""
    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    fs = load_forget_set(random_world["forget"])
    prefix, prompts = _knowmem_prompts(fs, extra_unprefixed=True)
    fast, slow = _both(src.model, src.tokenizer, prompts, 24, STOPS, prefix, batch_size)
    assert [cut_at_stop(t, STOPS) for t in fast.texts] == [cut_at_stop(t, STOPS) for t in slow.texts]
    # the prefix was encoded once, not once per prompt
    full = sum(len(src.tokenizer(p)["input_ids"]) for p in prompts)
    n_prefix = len(src.tokenizer(prefix)["input_ids"])
    assert fast.prompt_tokens == full - (len(prompts) - 2) * n_prefix  # one prompt lacks the prefix
    # without stop strings: the same continuations, token for token
    fast, slow = _both(src.model, src.tokenizer, [x.prompt for x in fs.verbmem], 40, (), None, batch_size)
    assert fast.texts == slow.texts and fast.new_tokens == slow.new_tokens


def test_generation_config_with_processors_uses_generate(random_world):
    """A repetition penalty in the model's generation config is applied, as greedy generate applies it."""
    src = ModelSource(random_world["model"], device="cpu")
    fs = load_forget_set(random_world["forget"])
    model = src.model
    model.generation_config.repetition_penalty = 1.5
    try:
        runner = LMRunner(model, src.tokenizer)
        assert not runner._fast_ok()
        prompts = [x.prompt for x in fs.verbmem][:4]
        with_penalty = runner.generate(prompts, 30).texts
        model.generation_config.repetition_penalty = 1.0
        plain = LMRunner(model, src.tokenizer).generate(prompts, 30).texts
        assert with_penalty != plain  # the penalty changed the greedy text, so it was honoured
    finally:
        model.generation_config.repetition_penalty = 1.0


def test_batches_fit_free_memory(random_world, monkeypatch):
    src = ModelSource(random_world["model"], device="cpu")
    runner = LMRunner(src.model, src.tokenizer)
    assert runner.bytes_per_token(scoring=True) > runner.bytes_per_token(scoring=False) > 0
    lengths = [50] * 200
    roomy = runner._batches(lengths, 0)
    import hubaudit.modeling as modeling

    tight = 40 * 60 * runner.bytes_per_token(scoring=True)  # half of it holds 20 texts of 60 tokens
    monkeypatch.setattr(modeling, "available_memory", lambda device: tight)
    small = runner._batches(lengths, 0)
    assert max(map(len, small)) < max(map(len, roomy))
    assert max(map(len, small)) * 50 * runner.bytes_per_token(scoring=True) <= tight / 2
    assert sorted(i for b in small for i in b) == list(range(200))


@pytest.mark.slow
def test_fast_generation_on_a_trained_model(tiny_world):
    """On a model that answers (rows stop at different steps and leave the batch): the same answers."""
    src = ModelSource(tiny_world.target, device="cpu")
    fs = load_forget_set(tiny_world.forget_dir)
    prefix, prompts = _knowmem_prompts(fs)
    fast, slow = _both(src.model, src.tokenizer, prompts, 32, STOPS, prefix, None)
    a = [cut_at_stop(t, STOPS) for t in fast.texts]
    assert a == [cut_at_stop(t, STOPS) for t in slow.texts]
    assert sum(bool(x.strip()) for x in a) > len(a) // 2  # real answers, not empty strings
    assert fast.new_tokens < len(prompts) * 32  # rows stopped early


@pytest.mark.slow
def test_bf16_fast_path_equals_a_one_at_a_time_generate_loop(tiny_world):
    """The cell an audit computes by default on a bf16-capable machine (a bf16 checkpoint, computed in
    bf16) gives, item for item, the texts of MUSE's protocol: ``model.generate`` one prompt at a time."""
    import torch

    src = ModelSource(tiny_world.target, device="cpu", dtype="bfloat16")
    assert src.model.dtype == torch.bfloat16
    fs = load_forget_set(tiny_world.forget_dir)
    prefix, prompts = _knowmem_prompts(fs)
    fast = LMRunner(src.model, src.tokenizer).generate(prompts, 32, STOPS, shared_prefix=prefix)
    loop = LMRunner(src.model, src.tokenizer, batch_size=1, fast=False).generate(prompts, 32, STOPS)
    assert [cut_at_stop(t, STOPS) for t in fast.texts] == [cut_at_stop(t, STOPS) for t in loop.texts]
    verb = [x.prompt for x in fs.verbmem]
    fast = LMRunner(src.model, src.tokenizer).generate(verb, 48)
    loop = LMRunner(src.model, src.tokenizer, batch_size=1, fast=False).generate(verb, 48)
    assert fast.texts == loop.texts


class _OtherCacheApi:
    """A model whose forward takes its KV cache under another name than the installed transformers'
    default (``past_key_values`` on transformers 5.24, ``cache`` on 5.23): code written for the other API."""

    def __init__(self, inner, cache_name):
        from hubaudit.metrics.runner import cache_argument

        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.parameters, self.generate = inner.parameters, inner.generate
        self._inner_name = cache_argument(inner)[0]
        name = cache_name

        def forward(input_ids=None, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0, **kw):
            cache = {self._inner_name: kw[name]} if kw.get(name) is not None else {}
            return inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, logits_to_keep=logits_to_keep, **cache)

        import inspect

        params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
                  for n in ("input_ids", "attention_mask", "position_ids", name, "use_cache", "logits_to_keep")]
        forward.__signature__ = inspect.Signature(params)
        self.forward = forward

    def __call__(self, **kw):
        return self.forward(**kw)


def test_fast_path_follows_the_models_cache_argument(random_world):
    """The fast path is used whichever name the model's forward takes its cache under (transformers 5.24
    renamed past_key_values to cache), and gives what model.generate gives."""
    import transformers

    from hubaudit.metrics.runner import _cache_names, cache_argument

    src = ModelSource(random_world["model"], device="cpu")
    fs = load_forget_set(random_world["forget"])
    installed = cache_argument(src.model)[0]
    assert installed == _cache_names()[0]  # the installed transformers' own default name
    from packaging.version import Version

    assert installed == ("cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values")
    prompts = [x.prompt for x in fs.verbmem][:5]
    slow = LMRunner(src.model, src.tokenizer, fast=False).generate(prompts, 20)
    for name in ("cache", "past_key_values"):
        runner = LMRunner(_OtherCacheApi(src.model, name), src.tokenizer)
        assert runner.decoding_path() == ("fast", None)
        assert runner._cache_kw == name
        out = runner.generate(prompts, 20)
        assert out.texts == slow.texts


def test_no_fast_path_is_said_once_with_its_reason(random_world, caplog):
    """A model whose forward takes no cache decodes with model.generate, and the log and the metric
    result say so (once, with the reason), never silently."""
    import logging

    from hubaudit.metrics import evaluate
    from hubaudit.metrics.runner import _LOGGED

    src = ModelSource(random_world["model"], device="cpu")
    fs = load_forget_set(random_world["forget"])
    model = _OtherCacheApi(src.model, "cache")
    import inspect

    model.forward.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in ("input_ids", "attention_mask")])
    _LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="hubaudit"):
        path, reason = LMRunner(model, src.tokenizer).decoding_path()
        assert path == "generate" and "takes no KV-cache argument" in reason
        res = evaluate(model, src.tokenizer, fs, ["verbmem_f", "mia_auc"])
        LMRunner(model, src.tokenizer).decoding_path()
    said = [r for r in caplog.records if "model.generate" in r.getMessage()]
    assert len(said) == 1 and "no KV-cache argument" in said[0].getMessage()
    assert res["verbmem_f"].decoding["path"] == "generate" and "KV-cache" in res["verbmem_f"].decoding["reason"]
    assert res["mia_auc"].decoding is None  # scoring only: no decoding to speak of
    fast = evaluate(src.model, src.tokenizer, fs, ["verbmem_f"])["verbmem_f"]
    assert fast.decoding == {"path": "fast"} and fast.value == res["verbmem_f"].value


def test_scoring_in_slices_equals_whole_logits_and_never_holds_them(random_world, monkeypatch):
    """Log-probabilities come from the hidden states through the output layer a slice of positions at
    a time: the same values as the model's whole logits, and no logits tensor larger than one slice."""
    import hubaudit.logprobs as logprobs_mod

    src = ModelSource(random_world["model"], device="cpu")
    fs = load_forget_set(random_world["forget"])
    texts = list(fs.mia_forget) + list(fs.mia_holdout)
    runner = LMRunner(src.model, src.tokenizer, batch_size=2)
    assert runner.scoring_path() == ("sliced", None)
    vocab = src.model.config.vocab_size
    monkeypatch.setattr(logprobs_mod, "SLICE_BYTES", 4 * vocab * 8)  # 8 positions (4 of each row) per slice
    held = []
    hook = src.model.get_output_embeddings().register_forward_hook(lambda m, i, o: held.append(o.numel()))
    try:
        lps, _ = runner.token_logprobs(texts)
    finally:
        hook.remove()
    longest = max(len(src.tokenizer(t)["input_ids"]) for t in texts)
    assert held and max(held) <= 8 * vocab < longest * vocab  # a slice at a time, never a whole text
    for text, lp in zip(texts, lps):
        whole = _token_logprobs_one(src.model, src.tokenizer, text)
        assert len(lp) == len(whole)
        assert max(abs(a - b) for a, b in zip(lp, whole)) < 1e-4


def test_a_model_that_transforms_its_logits_is_scored_on_its_own_logits(random_world):
    """A model whose forward changes its logits after the output layer (soft-capping, as Gemma 2 does)
    is scored on the logits its forward returns, and the runner says why."""
    import torch

    src = ModelSource(random_world["model"], device="cpu", dtype="float32")
    fs = load_forget_set(random_world["forget"])
    model = src.model

    def softcap(module, args, out):
        out.logits = torch.tanh(out.logits / 2.0) * 2.0
        return out

    hook = model.register_forward_hook(softcap)
    try:
        runner = LMRunner(model, src.tokenizer)
        path, reason = runner.scoring_path()
        assert path == "whole" and "transforms its logits" in reason
        text = fs.mia_forget[0]
        lp = runner.token_logprobs([text])[0][0]
        capped = _token_logprobs_one(model, src.tokenizer, text)
    finally:
        hook.remove()
    plain = _token_logprobs_one(model, src.tokenizer, text)
    assert max(abs(a - b) for a, b in zip(lp, capped)) < 1e-4
    assert max(abs(a - b) for a, b in zip(lp, plain)) > 0.01  # the cap mattered, so it was honoured
