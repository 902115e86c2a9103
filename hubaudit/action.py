"""The GitHub Action's logic (``.github/actions/audit/action.yml`` runs it; tests run it directly).

``python -m hubaudit.action resolve``
    Work out the cache keys for the Hub cache and the results store: the model's commit sha on the Hub
    (``org/name@revision`` resolved with the token), or the content hash of a local model folder.
``python -m hubaudit.action run``
    Run ``hubaudit audit`` (the CLI, in a child process, its log streamed), then append the report's
    Markdown to ``$GITHUB_STEP_SUMMARY`` and the verdict and figures (label, regain with its interval,
    p-value) to ``$GITHUB_OUTPUT``. Exits with the CLI's code: 0 done, 1 the verdict is one ``fail-on``
    names, 2 a user error, 3 the verdict is ``incomplete`` (a gate never passes on nothing).

Inputs come from the environment, never from a command line or a script's text (``INPUT_MODEL``,
``INPUT_REFERENCE``, ``INPUT_FORGET_SET``, ``INPUT_ATTACKS`` or its older name ``INPUT_BACKENDS``,
``INPUT_THRESHOLD``, ``INPUT_METRICS``, ``INPUT_ALPHA``, ``INPUT_FAIL_ON``, ``INPUT_FAIL_ON_FRAGILE``, ``INPUT_CARD``,
``INPUT_ARTIFACT_NAME``); the Hub token comes as ``HF_TOKEN``, which huggingface_hub reads itself: it is never put on a command line, printed or written.
Without ``GITHUB_OUTPUT`` / ``GITHUB_STEP_SUMMARY`` (outside GitHub) the outputs and summary are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

CARD_CHOICES = ("none", "pr")
EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


class ActionInputError(ValueError):
    """An input the action cannot use (exit 2, with a line saying which and why)."""


def _input(name: str, default: str = "") -> str:
    return os.environ.get("INPUT_" + name.upper().replace("-", "_"), default).strip()


def _attacks_input() -> str:
    """The attack specs: input attacks, or backends (its older name); empty for the CLI's default. Both given
    and different is an error (which one was meant?)."""
    attacks, backends = _input("attacks"), _input("backends")
    if attacks and backends and attacks != backends:
        raise ActionInputError(f"inputs attacks ('{attacks}') and backends ('{backends}') differ; backends is the older "
                               "name of attacks: give only attacks")
    return attacks or backends


def _bool_input(name: str, default: bool) -> bool:
    v = _input(name).lower()
    if v == "":
        return default
    if v in ("true", "yes", "1", "on"):
        return True
    if v in ("false", "no", "0", "off"):
        return False
    raise ActionInputError(f"input {name} must be true or false, got '{v}'")


def _token() -> str | None:
    """The token huggingface_hub itself would send: ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, the saved login
    (``hf auth login``), a Trusted Publisher's exchanged token. Never printed."""
    from huggingface_hub import get_token

    try:
        return get_token() or None
    except Exception:  # noqa: BLE001 - a lookup that fails (an expired login's refresh) still means a token is there
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or "unreadable"


def _private() -> bool:
    """Whether the Hub cache may hold weights fetched with a token (then it is never cached across runs)."""
    import huggingface_hub.constants as hc

    return bool(_token() or os.environ.get("HUGGING_FACE_HUB_TOKEN") or os.environ.get("HF_OIDC_RESOURCE")
                or Path(hc.HF_TOKEN_PATH).is_file())


# -- GitHub's file commands ------------------------------------------------------------------------
def set_outputs(values: dict[str, str]) -> None:
    """Append ``values`` to ``$GITHUB_OUTPUT`` (``name=value``, or the heredoc form for multi-line values)."""
    lines = []
    for name, value in values.items():
        value = "" if value is None else str(value)
        if "\n" in value or "\r" in value:
            delim = f"ghadelimiter_{uuid.uuid4().hex}"
            while delim in value:  # pragma: no cover - 128 random bits
                delim = f"ghadelimiter_{uuid.uuid4().hex}"
            lines.append(f"{name}<<{delim}\n{value}\n{delim}")
        else:
            lines.append(f"{name}={value}")
    text = "\n".join(lines) + "\n"
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")


def add_summary(markdown: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    else:
        print(markdown)


def _escape(text: str) -> str:
    """For a workflow command's message (``::error::...``): GitHub's escaping of %, CR and LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def annotate(level: str, message: str) -> None:
    print(f"::{level}::{_escape(message)}", flush=True)


# -- resolve: cache keys -----------------------------------------------------------------------------
def model_key(model: str) -> str:
    """The model's identity for the cache key: its commit sha on the Hub, or a content hash of a folder."""
    from .source import parse_model_ref

    ref = parse_model_ref(model)
    if ref.is_hub:
        if re.fullmatch(r"[0-9a-f]{40}", ref.revision or ""):
            return ref.revision
        from huggingface_hub import HfApi

        info = HfApi(token=_token()).model_info(ref.repo_id, revision=ref.revision)
        return info.sha
    from .modeling import content_hash

    if not ref.path.is_dir():
        raise ActionInputError(f"model '{model}' is neither a local folder nor a Hub id org/name[@revision]")
    return "content-" + content_hash(ref.path)[:40]


def cmd_resolve() -> int:
    import huggingface_hub.constants as hc

    from . import __version__
    from .store import default_store_path

    model = _input("model")
    key = ""
    try:
        key = model_key(model)
    except Exception as e:  # noqa: BLE001 - the audit step reports the error properly
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        annotate("warning", f"hubaudit: could not resolve '{model}' for the cache key ({first}); no cache this run")
    try:
        attacks = _attacks_input()
    except ActionInputError:
        attacks = _input("attacks") + "\n" + _input("backends")  # the audit step reports it
    settings = "\n".join([__version__, _input("reference"), _input("forget-set"), attacks,
                          _input("threshold"), _input("metrics")])
    # With a token the Hub cache may hold private or gated weights, and a cache can be restored by other
    # branches and pull-request runs: then only the results store is cached (an empty path is skipped).
    private = _private()
    prefix = f"hubaudit-{os.environ.get('RUNNER_OS', sys.platform)}-{'store-only-' if private else ''}{key}-"
    set_outputs({
        "model-key": key,
        "cache-key": prefix + hashlib.sha256(settings.encode()).hexdigest()[:16] if key else "",
        "cache-prefix": prefix if key else "",
        "hf-cache": "" if private else hc.HF_HUB_CACHE,
        "store-dir": str(default_store_path().parent),
    })
    return EXIT_OK


# -- run: the audit ------------------------------------------------------------------------------------
def artifact_name(model: str) -> str:
    """``hubaudit-<org>-<name>[-<revision>]`` for a Hub id, ``hubaudit-<folder name>`` for a folder."""
    from .source import parse_model_ref

    ref = parse_model_ref(model.strip())
    text = f"{ref.repo_id}@{ref.revision or ''}" if ref.is_hub else (ref.path.name if ref.path else "")
    from .report import safe_name

    return "hubaudit-" + (safe_name(text)[:80] or "model")


def _fail_on() -> set[str]:
    """The labels that fail the job: input fail-on (default fragile; none for no gate), without fragile
    when the older input fail-on-fragile is false."""
    from .results import VERDICT_LABELS, parse_labels

    text = _input("fail-on", "fragile") or "fragile"
    try:
        labels = set(parse_labels(text))
    except ValueError:
        raise ActionInputError(f"input fail-on must be labels from {', '.join(VERDICT_LABELS)} separated by commas, "
                               f"or none; got '{text}'") from None
    if not _bool_input("fail-on-fragile", True):
        labels.discard("fragile")
    return labels


def audit_argv(out: Path) -> list[str]:
    """The ``hubaudit audit`` command line for the inputs (no token: the CLI reads ``HF_TOKEN``)."""
    model = _input("model")
    if not model:
        raise ActionInputError("input model is required: a Hub id org/name[@revision] or a local model folder")
    card = _input("card", "none").lower() or "none"
    if card not in CARD_CHOICES:
        raise ActionInputError(f"input card must be one of {', '.join(CARD_CHOICES)}, got '{card}'")
    fail_on = _fail_on()
    argv = [sys.executable, "-m", "hubaudit", "audit", f"--out={out}", f"--card={card}", "--quiet"]
    for name, flag in (("reference", "--reference"), ("forget-set", "--forget"), ("metrics", "--metrics")):
        if _input(name):
            argv.append(f"{flag}={_input(name)}")
    if _attacks_input():
        argv.append(f"--attacks={_attacks_input()}")
    if not _input("forget-set"):
        argv.append("--yes")  # no forget set given: take the one the model card points to (else synthetic)
    if _input("threshold"):
        try:
            float(_input("threshold"))
        except ValueError:
            raise ActionInputError(f"input threshold must be a number, got '{_input('threshold')}'") from None
        argv.append(f"--threshold={_input('threshold')}")
    if _input("alpha"):
        try:
            alpha = float(_input("alpha"))
        except ValueError:
            alpha = -1.0
        if not 0 < alpha < 1:
            raise ActionInputError(f"input alpha must be a number between 0 and 1, got '{_input('alpha')}'")
        argv.append(f"--alpha={_input('alpha')}")
    from .modeling import DTYPE_CHOICES

    dtype = _input("dtype", "auto").lower() or "auto"
    if dtype not in DTYPE_CHOICES:
        raise ActionInputError(f"input dtype must be one of {', '.join(DTYPE_CHOICES)}, got '{_input('dtype')}'")
    argv.append(f"--dtype={dtype}")
    argv.append(f"--fail-on={','.join(sorted(fail_on)) or 'none'}")
    argv += ["--", model]  # after --: a model named like an option stays the model
    return argv


def _stream(argv: list[str], env: dict) -> tuple[int, str]:
    """Run ``argv`` with its output going to our log as it comes; return the code and its last error line."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    error = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("hubaudit: error:"):
            error = line.strip()
    return proc.wait(), error


def _fmt(x) -> str:
    return "" if x is None else f"{x:.2f}"


def cmd_run() -> int:
    outputs = {"verdict": "", "max-regained": "", "worst-spec": "", "worst-metric": "", "interval-low": "",
               "interval-high": "", "p-value": "", "summary": "", "report-path": "", "pr-url": "", "artifact-name": ""}
    try:
        model = _input("model")
        runner_temp = os.environ.get("RUNNER_TEMP")
        outputs["artifact-name"] = _input("artifact-name") or artifact_name(model)
        out = Path(tempfile.mkdtemp(prefix=outputs["artifact-name"] + "-", dir=runner_temp or None))
        argv = audit_argv(out)
    except ActionInputError as e:
        annotate("error", f"hubaudit: {e}")
        add_summary(f"## hubaudit: not run\n\n{e}\n")
        set_outputs(outputs)
        return EXIT_USAGE

    env = dict(os.environ)
    if not env.get("HF_TOKEN"):
        env.pop("HF_TOKEN", None)  # an empty token would be sent as no token anyway; keep the saved login
    started = time.time()
    print(f"hubaudit: auditing {model} -> {out}", flush=True)
    code, error = _stream(argv, env)
    outputs["report-path"] = str(out)

    report_json = out / "report.json"
    finished = (EXIT_OK, EXIT_GATE, EXIT_INCOMPLETE)
    if code in finished and report_json.is_file() and report_json.stat().st_mtime >= started - 1:
        report = json.loads(report_json.read_text(encoding="utf-8"))
        v = report["verdict"]
        ci = v.get("ci") or [None, None]
        outputs.update({
            "verdict": v["label"],
            "max-regained": _fmt(v.get("max_regained")),
            "worst-spec": v.get("worst_spec") or "",
            "worst-metric": v.get("worst_metric") or "",
            "interval-low": _fmt(ci[0]),
            "interval-high": _fmt(ci[1]),
            "p-value": "" if v.get("p_value") is None else f"{v['p_value']:.4g}",
            "summary": v.get("summary", ""),
        })
        card_json = out / "card.json"
        if card_json.is_file() and card_json.stat().st_mtime >= started - 1:
            outputs["pr-url"] = json.loads(card_json.read_text(encoding="utf-8")).get("pr_url") or ""
        summary = (out / "report.md").read_text(encoding="utf-8")
        extra = [f"Report files: artifact `{outputs['artifact-name']}`."]
        if outputs["pr-url"]:
            extra.append(f"Model card pull request: {outputs['pr-url']}")
        add_summary(summary + "\n" + "\n\n".join(extra) + "\n")
        if code in (EXIT_GATE, EXIT_INCOMPLETE) or v["label"] in ("fragile", "not-unlearned"):
            annotate("error" if code != EXIT_OK else "warning", f"hubaudit: {model}: {v.get('summary', '')}")
    else:
        why = error or f"hubaudit exited with code {code} and wrote no report"
        annotate("error", why)
        add_summary(f"## hubaudit: {model}\n\nThe audit did not finish: {why}\n")
        code = code if code not in finished else EXIT_USAGE
    set_outputs(outputs)
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"resolve": cmd_resolve, "run": cmd_run}
    if len(args) != 1 or args[0] not in commands:
        print("usage: python -m hubaudit.action {resolve|run}   (inputs from INPUT_* environment variables)",
              file=sys.stderr)
        return EXIT_USAGE
    return commands[args[0]]()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
