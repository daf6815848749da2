"""`/docs`: the project's Markdown documentation rendered by the running server, so the pages a
user reads are the files in the repository."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from xml.etree.ElementTree import Element

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from quart import Blueprint, Response, render_template, send_from_directory

from app.access import HTTPError
from app.config import ROOT
from app.errors import ErrorCode

blueprint = Blueprint("docs", __name__)
DOCS_DIR = ROOT / "docs"
PAGE_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")
IMAGE_NAME = re.compile(r"[a-z0-9-]{1,40}\.png")
# How the Markdown files point at each other (README.md at the top, the rest in docs/) and at
# their images, to be read on GitHub or in an editor.
DOC_LINK = re.compile(r"(?:\.\./)?(?:docs/)?([A-Za-z][A-Za-z0-9-]*)\.md(#[\w-]*)?")
IMAGE_LINK = re.compile(r"(?:docs/)?images/([a-z0-9-]+\.png)")


def pages() -> dict[str, Path]:
    """`index` is the README; every docs/NAME.md is a page called NAME."""
    found = {"index": ROOT / "README.md"}
    if DOCS_DIR.is_dir():
        found.update({path.stem: path for path in sorted(DOCS_DIR.glob("*.md"))})
    return found


class _ServedLinks(Treeprocessor):
    """Point the files' links and images at where this server serves them: `docs/widgets.md#x`
    and `widgets.md#x` at `/docs/widgets#x`, `README.md` at `/docs`, `docs/images/a.png` at
    `/docs/images/a.png`. Other links are left as they are."""

    def run(self, root: Element) -> None:
        for element in root.iter():
            if element.tag == "a" and (link := DOC_LINK.fullmatch(element.get("href", ""))):
                name = "index" if link[1] == "README" else link[1]
                element.set("href", ("/docs" if name == "index" else f"/docs/{name}")
                            + (link[2] or ""))
            elif element.tag == "img" and (image := IMAGE_LINK.fullmatch(element.get("src", ""))):
                element.set("src", f"/docs/images/{image[1]}")


class _ServedLinksExtension(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.treeprocessors.register(_ServedLinks(md), "c8ws-served-links", 5)  # after "inline"


@functools.lru_cache(maxsize=32)
def render(path: Path, modified: float) -> str:
    """HTML of one Markdown file (cached until the file changes)."""
    html: str = markdown.markdown(
        path.read_text(encoding="utf-8"),
        extensions=["tables", "fenced_code", "toc", _ServedLinksExtension()])
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


@blueprint.get("/docs/images/<name>")
async def image(name: str) -> Response:
    """The pictures the pages show, from docs/images."""
    if not IMAGE_NAME.fullmatch(name) or not (DOCS_DIR / "images" / name).is_file():
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"no documentation image {name!r}")
    return await send_from_directory(DOCS_DIR / "images", name)
