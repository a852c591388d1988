"""Where each source lands in the mkdocs docs tree (the site builder and the link rewriter share this map).

    index.qmd            -> index.md
    log.qmd              -> log/index.md           (the blog index)
    log/<stem>.qmd|.py   -> log/posts/<stem>.md    (mkdocs-material's blog plugin reads posts/ in the blog dir)
    lore.qmd             -> lore/index.md
    lore/<stem>.qmd|.py  -> lore/<stem>.md
    <x>.qmd|.py          -> <x>.md
Figures of a page go to `<docs dir of the page>/<stem>_files/` (Quarto's `<stem>_files/` convention).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import PurePosixPath

from publish.sources import SOURCE_SUFFIXES

SECTION_INDEX = {"log.qmd": "log/index.md", "lore.qmd": "lore/index.md"}


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
    """Docs-tree folder (posix, trailing slash) for the figures of the page rendered from `rel_source`."""
    folder = posixpath.dirname(docs_path(rel_source))
    return posixpath.join(folder, f"{PurePosixPath(rel_source).stem}_files") + "/"


def relative_link(from_docs: str, to_docs: str) -> str:
    """Relative link from one docs-tree file to another (what mkdocs resolves into a URL)."""
    return posixpath.relpath(to_docs, posixpath.dirname(from_docs) or ".")
