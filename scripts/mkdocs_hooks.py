"""MkDocs hooks for the documentation site (mkdocs.yml: ``hooks``).

A pipe inside inline code in a Markdown table is written ``\\|`` (GitHub's rule, so the README and the pages read
the same on GitHub); Python-Markdown keeps the backslash inside code, so it is taken out here.
"""

import re

_CODE = re.compile(r"<code>(.*?)</code>", re.S)


def on_page_content(html, **kwargs):
    return _CODE.sub(lambda m: "<code>" + m.group(1).replace("\\|", "|") + "</code>", html)
