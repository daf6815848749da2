"""`/docs`: the project's Markdown documentation rendered by the running server, so the pages a
user reads are the files in the repository."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import markdown
from quart import Blueprint, render_template

from app.access import HTTPError
from app.config import ROOT
from app.errors import ErrorCode

blueprint = Blueprint("docs", __name__)
DOCS_DIR = ROOT / "docs"
PAGE_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


def pages() -> dict[str, Path]:
    """`index` is the README; every docs/NAME.md is a page called NAME."""
    found = {"index": ROOT / "README.md"}
    if DOCS_DIR.is_dir():
        found.update({path.stem: path for path in sorted(DOCS_DIR.glob("*.md"))})
    return found


@functools.lru_cache(maxsize=32)
def render(path: Path, modified: float) -> str:
    """HTML of one Markdown file (cached until the file changes)."""
    html: str = markdown.markdown(path.read_text(encoding="utf-8"),
                                  extensions=["tables", "fenced_code", "toc"])
    return html


@blueprint.get("/docs")
@blueprint.get("/docs/<name>")
async def page(name: str = "index") -> str:
    found = pages()
    if not PAGE_NAME.fullmatch(name) or name not in found:
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no documentation page {name!r}")
    path = found[name]
    return await render_template("docs.html", body=render(path, path.stat().st_mtime),
                                 pages=list(found), current=name)
