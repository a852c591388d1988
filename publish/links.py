"""Links between pages: find them in markdown, check them, rewrite source paths into docs-tree paths.

Authors link to *sources*, relative to the linking file, as in Quarto: `[inhale](../lore/inhale.qmd#onset)`
or `/lore/inhale.py` (leading slash = project root). We rewrite those into relative links between docs-tree
pages (`../../lore/inhale.md#onset`), which mkdocs turns into URLs. Links to other local files (images,
data) are copied into the docs tree at the same root-relative path. A link to anything that does not exist
is an error naming file:line, so a renamed page never leaves a dead link behind.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from publish.layout import docs_path, relative_link
from publish.sources import Document, SourceError

# `](target "title")` ends every inline link and image; the bracketed text is irrelevant to us.
_INLINE = re.compile(r"\]\(\s*(?P<target><[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?\s*\)")
# `[id]: target` reference definitions
_REFDEF = re.compile(r"^ {0,3}\[(?!\^)[^\]\n]+\]:[ \t]*(?P<target><[^>\n]*>|\S+)", re.MULTILINE)  # [^1]: a footnote
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class LinkError(SourceError):
    """A link to a page or file that does not exist."""


@dataclass(frozen=True)
class Link:
    line: int  # 1-based source line
    target: str  # as written (angle brackets removed)
    image: bool
    start: int  # offsets of the target in the chunk text
    end: int


@dataclass
class Rewritten:
    text: str
    links_to: list[str] = field(default_factory=list)  # docs paths of pages linked to, in order, unique
    files: dict[str, Path] = field(default_factory=dict)  # docs path -> local file to copy into the tree


def _mask_code(text: str) -> str:
    """Blank out fenced blocks and code spans (same length) so links inside code are not touched."""
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~\n"):
                fence = None
            out.append(re.sub(r"[^\n]", " ", line))
            continue
        if m:
            fence = m.group(1)
            out.append(re.sub(r"[^\n]", " ", line))
            continue
        out.append(line)
    masked = "".join(out)
    return _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), masked)


def find_links(text: str, first_line: int = 1) -> list[Link]:
    """Inline links, images and reference definitions in markdown `text` whose first line is `first_line`."""
    masked = _mask_code(text)
    links = []
    for pattern in (_INLINE, _REFDEF):
        for m in pattern.finditer(masked):
            start, end = m.span("target")
            target = text[start:end]
            if target.startswith("<") and target.endswith(">"):
                start, end, target = start + 1, end - 1, target[1:-1]
            image = False
            if pattern is _INLINE:
                image = _is_image(masked, m.start())
            links.append(Link(line=first_line + text.count("\n", 0, start), target=target, image=image,
                              start=start, end=end))
    return sorted(links, key=lambda link: link.start)


def _is_image(masked: str, close: int) -> bool:
    """Walk back from the `]` to its matching `[` and see whether a `!` precedes it."""
    depth = 0
    for i in range(close, -1, -1):
        ch = masked[i]
        if ch == "]":
            depth += 1
        elif ch == "[":
            depth -= 1
            if depth == 0:
                return i > 0 and masked[i - 1] == "!"
    return False


def is_external(target: str) -> bool:
    return bool(_SCHEME.match(target)) or target.startswith("//")


def resolve_target(doc: Document, target: str) -> tuple[str, str]:
    """Root-relative posix path a local link points at, and its `#fragment`/`?query` suffix."""
    cut = min((i for i in (target.find("#"), target.find("?")) if i >= 0), default=len(target))
    path, suffix = target[:cut], target[cut:]
    path = unquote(path)
    if path.startswith("/"):
        resolved = posixpath.normpath(path.lstrip("/"))
    else:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(doc.rel), path))
    return resolved, suffix


def rewrite_links(doc: Document, text: str, first_line: int, sources: set[str] | dict) -> Rewritten:
    """Rewrite the links of one markdown chunk of `doc`; `sources` = root-relative paths of all pages."""
    root = doc.root
    page = docs_path(doc.rel)
    result = Rewritten(text=text)
    pieces, last = [], 0
    for link in find_links(text, first_line):
        target = link.target
        if not target or target.startswith("#") or is_external(target):
            continue
        resolved, suffix = resolve_target(doc, target)
        if resolved == ".." or resolved.startswith("../"):
            raise LinkError(doc.path, link.line, f"link {target!r} points outside the project")
        if resolved in sources:
            dest = docs_path(resolved)
            if dest not in result.links_to and resolved != doc.rel:
                result.links_to.append(dest)
        elif PurePosixPath(resolved).suffix == ".qmd" and (root / resolved).is_file():
            raise LinkError(doc.path, link.line, f"link {target!r}: {resolved} is not rendered "
                                                 f"(not in project.render of _quarto.yml)")
        elif (root / resolved).is_file():
            dest = resolved
            result.files[dest] = root / resolved
        elif (root / resolved).is_dir():
            raise LinkError(doc.path, link.line, f"link {target!r} points at a folder, not a page or file")
        else:
            raise LinkError(doc.path, link.line, f"broken link {target!r}: {resolved} does not exist")
        new = relative_link(page, dest) + suffix
        pieces.append(text[last:link.start])
        pieces.append(new if " " not in new else f"<{new}>")
        last = link.end
    pieces.append(text[last:])
    result.text = "".join(pieces)
    return result


def page_links(doc: Document, sources: set[str] | dict) -> Rewritten:
    """Check and rewrite every markdown chunk of `doc` (no execution); text is the chunks joined."""
    total = Rewritten(text="")
    texts = []
    for chunk in doc.chunks:
        if chunk.kind != "markdown":
            continue
        part = rewrite_links(doc, chunk.text, chunk.line, sources)
        texts.append(part.text)
        total.links_to.extend(d for d in part.links_to if d not in total.links_to)
        total.files.update(part.files)
    total.text = "\n\n".join(texts)
    return total


def check_links(docs: list[Document]) -> dict[str, list[str]]:
    """Docs path of each page -> docs paths it links to; raises LinkError at the first broken link."""
    sources = {d.rel for d in docs}
    return {docs_path(d.rel): page_links(d, sources).links_to for d in docs}
