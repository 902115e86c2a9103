"""The documentation: the MkDocs site builds with warnings as errors (a broken link between pages, a missing
anchor, a page left out of the navigation, an API reference naming an object that no longer exists all fail
here), and every relative link in README.md points to a file of the repository (GitHub renders the README
on its own, outside the site)."""

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target "title")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def relative_links(markdown: str) -> list[str]:
    """The targets of the Markdown links outside code blocks that are not URLs or in-page anchors."""
    text = FENCE.sub("", markdown)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.I)]


def test_every_relative_link_in_the_readme_resolves_to_a_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = relative_links(readme)
    assert len(links) >= 10, "the README links into the docs: expected its links to be found"
    broken = [t for t in links if not (ROOT / unquote(t.split("#", 1)[0])).is_file()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
    docs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert {"docs/index.md", "docs/develop/architecture.md"} <= {t.split("#", 1)[0] for t in links} & docs


def test_the_link_finder_sees_links_and_skips_code_and_urls():
    md = ("see [a](docs/a.md#x) and [b](https://x.org) and [c](#top)\n"
          "```\n[d](docs/d.md)\n```\n`[e](e.md)` ![i](img.png)\n")
    assert relative_links(md) == ["docs/a.md#x"]


def test_the_docs_site_builds_strict(tmp_path):
    # a few seconds; needs the docs extra (mkdocs, mkdocs-material, mkdocstrings), which bash test.sh installs
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (f"mkdocs build --strict failed (without mkdocs: pip install -e '.[docs]'):\n"
                               f"{r.stdout}\n{r.stderr}")
    assert (site / "index.html").is_file() and (site / "develop" / "architecture.html").is_file()
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    assert 'id="hubaudit.audit.audit"' in api, "the API reference is generated from the docstrings"
    # offline: no web fonts or other remote assets the built pages would fetch
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index
