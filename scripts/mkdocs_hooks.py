"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

- A pipe inside inline code in a Markdown table is written ``\\|`` (GitHub's rule, so the README and the pages
  read the same on GitHub); Python-Markdown keeps the backslash inside code, so it is taken out here.
- The docstrings use Sphinx roles (``:class:`~hubaudit.results.AuditReport```); the API reference shows them as
  code, ``~`` keeping only the last name, as Sphinx would.
"""

import re

_CODE = re.compile(r"<code>(.*?)</code>", re.S)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):<code>(~?)([^<]*)</code>")


def _role(m: re.Match) -> str:
    tilde, target = m.groups()
    return "<code>" + (target.rsplit(".", 1)[-1] if tilde else target) + "</code>"


def on_page_content(html, **kwargs):
    html = _ROLE.sub(_role, html)
    return _CODE.sub(lambda m: "<code>" + m.group(1).replace("\\|", "|") + "</code>", html)
