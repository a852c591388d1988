"""Where each source lands in the mkdocs docs tree (the site builder and the link rewriter share this map).

    index.qmd            -> index.md
    log.qmd              -> log/index.md           (the blog index)
    log/<stem>.qmd|.py   -> log/posts/<stem>.md    (mkdocs-material's blog plugin reads posts/ in the blog dir)
    lore.qmd             -> lore.md
    lore/<stem>.qmd|.py  -> lore/<stem>.md
    <x>.qmd|.py          -> <x>.md

URLs are Quarto's, so a link into the site survives a change of renderer: every source `<x>.qmd` is served
at `<x>.html` (`url_path`); the blog posts are published at `log/<stem>.html` (post_url_format `{file}`)
and `log.html` is a redirect to the blog index `log/index.html`. Quarto cannot produce the directory URLs
the site used before (`log/YYYY/MM/DD/<slug>/`, `lore/<x>/`) without renaming sources; mkdocs can produce
file URLs. The old URLs are kept as redirects (`legacy_redirects`).
Figures of a page go to `<source dir>/<stem>_files/figure-html/` and are named `<label>-output-<n>.png`
(`cell-<n>-output-<n>.png` without a label), exactly where Quarto puts them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import PurePosixPath

from publish.sources import SOURCE_SUFFIXES

SECTION_INDEX = {"log.qmd": "log/index.md"}


def docs_path(rel_source: str) -> str:
    """Docs-tree path (posix) of the page rendered from the source at `rel_source`."""
    rel = PurePosixPath(rel_source)
    if rel.suffix not in SOURCE_SUFFIXES:
        raise ValueError(f"{rel_source}: not a source file (expected {' or '.join(SOURCE_SUFFIXES)})")
    if rel.as_posix() in SECTION_INDEX:
        return SECTION_INDEX[rel.as_posix()]
    if len(rel.parts) == 2 and rel.parts[0] == "log":
        return f"log/posts/{rel.stem}.md"
    return rel.with_suffix(".md").as_posix()


def source_candidates(docs: str) -> list[str]:
    """Every source path that would render to the docs path `docs` (`.qmd` first)."""
    inverse = {v: k for k, v in SECTION_INDEX.items()}
    if docs in inverse:
        return [inverse[docs]]
    path = PurePosixPath(docs)
    if path.suffix != ".md":
        return []
    if len(path.parts) == 3 and path.parts[:2] == ("log", "posts"):
        base = f"log/{path.stem}"
    elif len(path.parts) == 2 and path.parts[0] == "log":
        return []  # only the blog index and posts live in log/
    else:
        base = path.with_suffix("").as_posix()
    candidates = [base + suffix for suffix in SOURCE_SUFFIXES]
    return [c for c in candidates if docs_path(c) == docs]


def source_for(docs: str, sources: Iterable[str]) -> str | None:
    """The source (one of `sources`, root-relative posix paths) that renders to `docs`, or None."""
    known = set(sources)
    return next((c for c in source_candidates(docs) if c in known), None)


def figure_dir(rel_source: str) -> str:
    """Docs-tree folder (posix, trailing slash) for the figures of the page rendered from `rel_source`: the
    site path Quarto uses, `<source dir>/<stem>_files/figure-html/` (also for blog posts, whose pages live
    under log/posts/ in the docs tree but are published at log/<stem>.html)."""
    folder = posixpath.dirname(rel_source)
    return posixpath.join(folder, f"{PurePosixPath(rel_source).stem}_files", "figure-html") + "/"


def url_path(rel_source: str) -> str:
    """Site-relative URL of the page rendered from `rel_source`, the same for `quarto render` and `lab
    render`: `lore/x.qmd` -> `lore/x.html`, `log/<stem>.qmd` -> `log/<stem>.html`, `log.qmd` -> `log.html`."""
    rel = PurePosixPath(rel_source)
    if rel.suffix not in SOURCE_SUFFIXES:
        raise ValueError(f"{rel_source}: not a source file (expected {' or '.join(SOURCE_SUFFIXES)})")
    return rel.with_suffix(".html").as_posix()


def legacy_redirects(rel_source: str, post_slug: str | None = None, date=None) -> list[str]:
    """Site paths (`.../index.html`) of the directory URLs this page had before the Quarto scheme."""
    rel = PurePosixPath(rel_source)
    if rel.as_posix() == "index.qmd":
        return []
    if len(rel.parts) == 2 and rel.parts[0] == "log":
        if date is None or post_slug is None:
            return []
        return [f"log/{date:%Y/%m/%d}/{post_slug}/index.html"]
    if rel.as_posix() == "log.qmd":
        return []
    return [rel.with_suffix("").as_posix() + "/index.html"]


def relative_link(from_docs: str, to_docs: str) -> str:
    """Relative link from one docs-tree file to another (what mkdocs resolves into a URL)."""
    return posixpath.relpath(to_docs, posixpath.dirname(from_docs) or ".")
