"""MkDocs hook: links from a docs page to files of the repository outside docs/.

A page may link to ``../examples/graph_tour.py``: right on GitHub, and right in the
built site too (``site/`` lies next to ``docs/`` and mirrors its folders), but not
a documentation file, so ``mkdocs build --strict`` would fail on it. This hook turns
such a link into an HTML link, which MkDocs does not check, when the file exists;
a link to a missing file stays as written, and --strict fails on it.

Used by mkdocs.yml (``hooks: [docs/repo_links.py]``); not part of the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def outside_links(markdown: str, page_dir: Path, docs_dir: Path) -> str:
    """``markdown`` with each link to an existing file outside ``docs_dir`` as HTML.

    Links are resolved from ``page_dir`` (the page's folder); fenced code is left alone.
    """

    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        path = (page_dir / target).resolve()
        if path.is_relative_to(docs_dir) or not path.exists():
            return match[0]
        return f'<a href="{target}{match["anchor"] or ""}">{match["text"]}</a>'

    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(rewrite, line))
    return "\n".join(out)


def on_page_markdown(markdown: str, *, page: Any, config: Any, **kwargs: Any) -> str:
    """MkDocs calls this with each page's Markdown before rendering it."""
    docs_dir = Path(config["docs_dir"]).resolve()
    return outside_links(markdown, (docs_dir / page.file.src_path).parent, docs_dir)
