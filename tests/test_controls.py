"""The auditor on models whose answer is known: a constructed fragile model, a model that never saw
the forget set, and the batched metrics against MUSE's loop on a model that knows the facts."""

import pytest

import hubaudit
from hubaudit.forget import load_forget_set
from hubaudit.metrics import evaluate
from hubaudit.metrics.oracle import evaluate_one_at_a_time
from hubaudit.modeling import ModelSource, native_half

pytestmark = pytest.mark.slow
FORGET_METRICS = ("verbmem_f", "knowmem_f")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "results.sqlite"


def test_target_knows_the_facts(tiny_world, store):
    report = hubaudit.audit(tiny_world.target, forget=tiny_world.forget_dir, specs="rtn:8", store=store, progress=False)
    fp = report.cell("model", "fp").metrics
    assert fp["knowmem_f"] > 40 and fp["knowmem_r"] > 40 and fp["verbmem_f"] > 40, fp


def test_positive_control_rtn4_brings_back_the_original(tiny_world, store):
    """Unlearning kept inside each weight's 4-bit bin: rtn:4 maps it back onto the original exactly."""
    report = hubaudit.audit(tiny_world.constructed, reference=tiny_world.target, forget=tiny_world.forget_dir,
                            specs="rtn:4", store=store, progress=False)
    fp, q4 = report.cell("model", "fp").metrics, report.cell("model", "rtn:4").metrics
    ref_fp, ref_q4 = report.cell("reference", "fp").metrics, report.cell("reference", "rtn:4").metrics
    for m in FORGET_METRICS:
        assert q4[m] == pytest.approx(ref_q4[m], abs=1e-9), m  # the same quantized weights, the same scores
    assert max(ref_fp[m] - fp[m] for m in FORGET_METRICS) > 15  # it did forget in full precision
    assert report.verdict.label == "fragile" and report.verdict.worst_spec == "rtn:4"
    assert report.verdict.max_regained >= 15


def test_negative_control_retain_only_is_robust(tiny_world, store):
    report = hubaudit.audit(tiny_world.retain_only, reference=tiny_world.target, forget=tiny_world.forget_dir,
                            specs="rtn:8,rtn:4,rtn:4:g64", store=store, progress=False)
    assert report.verdict.label == "robust", report.verdict.summary
    fp = report.cell("model", "fp").metrics
    ref = report.cell("reference", "fp").metrics
    assert fp["knowmem_f"] < ref["knowmem_f"] - 20  # it never knew the forget facts
    assert fp["knowmem_r"] > 40  # but knows the retain ones


def test_batched_equals_one_at_a_time_on_a_trained_model(tiny_world):
    src = ModelSource(tiny_world.target, device="cpu")
    fs = load_forget_set(tiny_world.forget_dir)
    names = ["verbmem_f", "knowmem_f", "knowmem_r", "mia_auc"]
    fast = evaluate(src.model, src.tokenizer, fs, names)
    slow = evaluate_one_at_a_time(src.model, src.tokenizer, fs, names)
    for name in names:
        assert fast[name].value == pytest.approx(slow[name], abs=0.01), name
    assert fast["knowmem_f"].value > 40  # scores that mean something, not zeros on both sides


NO_NATIVE = "no native bf16 (HUBAUDIT_NO_NATIVE_HALF=1)"


@pytest.fixture(scope="module")
def demo_labels(tiny_world, tmp_path_factory):
    """The demo's three audits (its specs, against the target) on three builds of the tiny world: the
    session's (2 threads, seed 0), one with 1 thread, and one with another seed (another run's floats:
    a stand-in for another machine, where a fixed-step unlearning once landed on the other side of the
    forgetting cliff). On a CPU with native bf16 (AMX, AVX512-BF16), a fourth: the world and its audits as
    a CPU without it makes them (``HUBAUDIT_NO_NATIVE_HALF=1``: unlearning in float32 with bf16 weight
    values, audits in float32)."""
    import os

    from hubaudit.demo.run import DEMO_SPECS, SUBJECTS
    from hubaudit.demo.world import build_world

    root = tmp_path_factory.mktemp("rebuilds")
    builds = {"2 threads": lambda: tiny_world,
              "1 thread": lambda: build_world(root / "t1", size="tiny", threads=1, progress=False),
              "seed 1": lambda: build_world(root / "s1", size="tiny", seed=1, progress=False)}
    if native_half("cpu")["bfloat16"] and not os.environ.get("HUBAUDIT_NO_NATIVE_HALF"):
        builds[NO_NATIVE] = lambda: build_world(root / "f32", size="tiny", progress=False)
    out = {}
    for key, build in builds.items():
        before = os.environ.get("HUBAUDIT_NO_NATIVE_HALF")
        if key == NO_NATIVE:
            os.environ["HUBAUDIT_NO_NATIVE_HALF"] = "1"
        try:
            world = build()
            out[key] = {name: hubaudit.audit(getattr(world, attr), reference=world.target, forget=world.forget_dir,
                                             specs=DEMO_SPECS, store=root / "results.sqlite", progress=False).verdict
                        for name, attr, _ in SUBJECTS}
        finally:
            if key == NO_NATIVE and before is None:
                del os.environ["HUBAUDIT_NO_NATIVE_HALF"]
        out[key]["_world"] = world
    return out


def test_demo_labels_on_a_cpu_without_native_bf16(demo_labels):
    """A CPU without native bf16 unlearns with float32 matmuls (bf16 weight values, rounded after every step)
    and audits in float32: the controls' labels are the same, and the natural unlearning is not fragile on
    either. Its own label is not compared exactly: at this size it sits on the threshold (VerbMem has 28
    items, a regain interval about +-5 points wide against the threshold 5), so any change of floats moves it
    between robust and inconclusive: another seed, and float32 audits of the very same bf16-built world, do."""
    if NO_NATIVE not in demo_labels:
        pytest.skip("this CPU has no native bf16: the session's world is already the float32-compute one")
    native, emulated = demo_labels["2 threads"], demo_labels[NO_NATIVE]
    for name in ("constructed", "retain_only"):
        assert emulated[name].label == native[name].label, (name, emulated[name].summary, native[name].summary)
    assert {native["unlearned"].label, emulated["unlearned"].label} <= {"robust", "inconclusive"}
    for key, compute in (("2 threads", "bfloat16"), (NO_NATIVE, "float32")):
        prec = demo_labels[key]["_world"].settings["precision"]["unlearn"]
        assert (prec["weights"], prec["compute"]) == ("bfloat16", compute), key
    # the same target and retain-only models (float32 training either way), so the audits compare like with like
    assert (demo_labels[NO_NATIVE]["_world"].target / "model.safetensors").read_bytes() == \
        (demo_labels["2 threads"]["_world"].target / "model.safetensors").read_bytes()


def test_demo_labels_do_not_depend_on_the_thread_count(demo_labels):
    one, two = demo_labels["1 thread"], demo_labels["2 threads"]
    assert {k: v.label for k, v in one.items() if k != "_world"} == {k: v.label for k, v in two.items() if k != "_world"}
    # the unlearning stopped on its criterion in both, not at a fixed step
    for key in ("1 thread", "2 threads"):
        s = demo_labels[key]["_world"].settings
        assert s["unlearn_stopped_at"] is not None and s["unlearn_stopped_at"] < s["unlearn"]["steps"], key


def test_demo_labels_that_are_stable_across_builds(demo_labels):
    """What the docs call stable (docs/findings/demo.md): the controls' labels on every build, and the natural
    unlearning never called fragile (at this scale it does not regain; noise must not make it look so)."""
    for key, got in demo_labels.items():
        assert got["constructed"].label == "fragile" and got["constructed"].worst_spec == "rtn:4", (key, got["constructed"].summary)
        assert got["retain_only"].label == "robust", (key, got["retain_only"].summary)
        assert got["unlearned"].label in ("robust", "inconclusive"), (key, got["unlearned"].summary)
        world = got["_world"]
        mon = world.settings["unlearn_monitor"]
        last = mon["trajectory"][-1][1]
        assert all(last[m] <= mon["stop_below"][m] for m in last), (key, mon)  # it forgot, by its own criterion
