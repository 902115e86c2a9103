"""Imports point down: faces (cli, action, demo, space) -> workflows (sweep, unlearn) -> audit (audit, plan, verdict, card,
leaderboard, detect, then report) -> attacks / metrics -> forget -> source -> small helpers. A module may
import its own package and anything below it; never a package above, nor a peer on its own level (attacks and
metrics know nothing of each other). Read from the source with ``ast`` (imports inside functions and under
``TYPE_CHECKING`` count too), so a lazy import cannot hide a circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (group, rank, module prefixes): a higher rank may import a lower one. Groups of one rank that list
# "shared" may import each other (the faces; the helpers).
LAYERS = [
    ("faces", 90, ("hubaudit", "hubaudit.__main__", "hubaudit.cli", "hubaudit.action", "hubaudit.demo", "space"), True),
    ("sweep", 80, ("hubaudit.sweep",), False),
    ("unlearn", 80, ("hubaudit.unlearn",), False),
    ("audit", 70, ("hubaudit.audit",), False),
    ("seqaudit", 69, ("hubaudit.seqaudit",), False),
    ("plan", 68, ("hubaudit.plan",), False),
    ("calibrate", 67.5, ("hubaudit.calibrate",), False),
    ("verdict", 67, ("hubaudit.verdict",), False),
    ("card", 65, ("hubaudit.card",), False),
    ("leaderboard", 65, ("hubaudit.leaderboard",), False),
    ("detect", 65, ("hubaudit.detect",), False),
    ("report", 60, ("hubaudit.report",), False),
    ("attacks", 50, ("hubaudit.attacks", "hubaudit.quant"), False),
    ("metrics", 50, ("hubaudit.metrics",), False),
    ("forget", 40, ("hubaudit.forget",), False),
    ("source", 30, ("hubaudit.source",), False),
    ("helpers", 10, ("hubaudit.errors", "hubaudit.registry", "hubaudit.stats", "hubaudit.sequential", "hubaudit.store", "hubaudit.results",
                     "hubaudit.memory", "hubaudit.cardmeta", "hubaudit.modeling", "hubaudit.logprobs",
                     "hubaudit.recommend", "hubaudit.trainrows", "hubaudit.weights",
                     "hubaudit.__version__"), True),  # a constant set before the package root imports anything
]


def group_of(module: str):
    best = None
    for name, rank, prefixes, shared in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[0])):
                best = (p, name, rank, shared)
    return None if best is None else best[1:]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str, source: str | None = None) -> list[tuple[int, str]]:
    """(line, imported module) for every hubaudit/space import in the file, relative ones resolved; the Space's
    own modules, which it imports by their file names (``from settings import ...``), as ``space.NAME``."""
    tree = ast.parse(source if source is not None else path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def absolute(name: str) -> str:
        local = module.startswith("space") and (ROOT / "space" / f"{name.split('.')[0]}.py").exists()
        return "space." + name if local else name

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, absolute(a.name)) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = absolute(node.module or "")
            names = [target + "." + a.name for a in node.names] if target == "hubaudit" or not node.module else [target]
            out += [(node.lineno, t) for t in names]
    return [(line, t) for line, t in out if t.split(".")[0] in ("hubaudit", "space")]


def violations(path: Path, module: str, source: str | None = None) -> list[str]:
    here = group_of(module)
    assert here is not None, f"{module} belongs to no layer: add it to LAYERS in {__file__}"
    bad = []
    for line, target in imports_of(path, module, source):
        there = group_of(target)
        if there is None:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which belongs to no layer")
            continue
        (g, rank, shared), (tg, trank, tshared) = here, there
        if g == tg or rank > trank or (rank == trank and shared and tshared):
            continue
        bad.append(f"{path.relative_to(ROOT)}:{line}: {module} ({g}) imports {target} ({tg}), "
                   f"{'a peer' if rank == trank else 'a layer above'}")
    return bad


def all_modules():
    for path in sorted([*(ROOT / "hubaudit").rglob("*.py"), *(ROOT / "space").glob("*.py")]):
        yield path, module_name(path)


def test_imports_point_down():
    bad = [v for path, module in all_modules() for v in violations(path, module)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_quantization_backends_import_no_metric():
    for path in (ROOT / "hubaudit" / "quant").glob("*.py"):
        assert not [t for _, t in imports_of(path, module_name(path)) if t.startswith("hubaudit.metrics")], path


@pytest.mark.parametrize("module, source, ok", [
    ("hubaudit.report", "from .unlearn import recommend_command", False),  # the old circle
    ("hubaudit.report", "def f():\n    from hubaudit.audit import derive", False),  # lazy imports count
    ("hubaudit.quant.rtn", "from ..metrics.prompts import encode_text", False),  # a peer
    ("hubaudit.attacks.relearn", "from ..metrics import METRICS", False),
    ("hubaudit.unlearn.data", "from ..demo.world import _Rows", False),  # a face
    ("hubaudit.metrics.base", "from ..forget import ForgetSet", True),
    ("hubaudit.audit", "from .attacks import get_attack\nfrom .report import render_markdown", True),
    ("hubaudit.cli", "from .demo.run import run_demo", True),
])
def test_the_check_catches_an_upward_import(module, source, ok):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert (not violations(path, module, source)) is ok


SPACE_ORDER = ("jobs", "settings", "words", "checks", "publishing", "webhooks", "worker", "page", "app")


def test_the_spaces_modules_import_only_those_before_them():
    """space/README.md's table: each of the Space's files imports only files listed above it."""
    files = {p.stem for p in (ROOT / "space").glob("*.py")}
    assert files == set(SPACE_ORDER), f"add the Space's new file to SPACE_ORDER and space/README.md: {files}"
    for i, name in enumerate(SPACE_ORDER):
        path = ROOT / "space" / f"{name}.py"
        mine = {t.split(".")[1] for _, t in imports_of(path, f"space.{name}") if t.startswith("space.")}
        assert mine <= set(SPACE_ORDER[:i]), (name, sorted(mine - set(SPACE_ORDER[:i])))
