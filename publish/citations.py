"""Citations from a bibliography (`bibliography:` in the front matter or `_quarto.yml`), as Quarto shows them.

Pandoc's syntax: `[@key]`, `[see @a, p. 3; @b]`, `@key` (author in the text), `[-@key]` (year only). They are
formatted by citeproc-py with the style Quarto's pandoc uses by default, Chicago author-date (the CSL file
pandoc ships, `publish/csl/`, CC BY-SA), and linked to a References list at the end of the page, whose entries
have Quarto's ids (`ref-<key>`). A key the bibliography lacks, or a citation with no bibliography, is an error
naming file:line (Quarto would print `?@key` and a warning).
"""

from __future__ import annotations

import functools
import html
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from publish.sources import Document, SourceError

CSL = Path(__file__).parent / "csl" / "chicago-author-date.csl"
# Pandoc's citation key: starts with a letter, digit or _, inner punctuation allowed if followed by a key char
KEY = r"[\w][\w:.#$%&+?<>~/-]*(?<![:.#$%&+?<>~/-])"
BRACKETED = re.compile(r"\[(?P<body>[^\[\]\n]*?-?@" + KEY + r"[^\[\]\n]*)\](?!\()")
ITEM = re.compile(r"^(?P<prefix>.*?)(?P<minus>-?)@(?P<key>" + KEY + r")(?P<suffix>.*)$", re.S)
BARE = re.compile(r"(?<![\w@./:\[])(?P<minus>-?)@(?P<key>" + KEY + r")")
_LOCATOR = re.compile(r"^,?\s*(?:p|pp|page|pages)\.?\s+(?P<pages>[\d\s,–-]+)\s*$")


def _patch_citeproc() -> None:
    """citeproc-py prints a `<label variable="edition"/>` even when the entry has no edition ("..., Edition."):
    CSL says a label of an empty variable is empty."""
    from citeproc import model

    if getattr(model.Label, "_lab_patched", False):
        return
    process = model.Label.process

    def patched(self, item, variable=None, plural=None, context=None, **kwargs):
        name = variable or self.get("variable")
        if name and name != "locator" and name.replace("-", "_") not in item.reference:
            return None
        return process(self, item, variable=variable, plural=plural, context=context, **kwargs)

    model.Label.process = patched
    model.Label._lab_patched = True


@functools.lru_cache(maxsize=8)
def _source(path: str, mtime_ns: int):
    from citeproc.source.bibtex import BibTeX
    from citeproc.source.json import CiteProcJSON

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # citeproc-py warns about every BibTeX field it does not use
        if path.endswith(".json"):
            import json

            return CiteProcJSON(json.loads(Path(path).read_text(encoding="utf-8")))
        return BibTeX(path, encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _style():
    from citeproc import CitationStylesStyle

    _patch_citeproc()
    return CitationStylesStyle(str(CSL), validate=False)


def bibliography_paths(doc: Document, project: dict) -> list[Path]:
    """The bibliography files of `doc`: front matter (relative to the document), else _quarto.yml (root)."""
    for value, base, where in ((doc.meta.get("bibliography"), doc.path.parent, doc.path),
                               (project.get("bibliography"), doc.root, doc.root / "_quarto.yml")):
        if value is None:
            continue
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise SourceError(where, None, "`bibliography` must be a file name or a list of file names")
        paths = []
        for item in items:
            path = (base / item).resolve()
            if path.suffix not in (".bib", ".json"):
                raise SourceError(where, None, f"bibliography {item!r}: lab render reads BibTeX (.bib) and "
                                               f"CSL JSON (.json)")
            if not path.is_file():
                raise SourceError(where, None, f"bibliography {item!r}: {path} does not exist")
            paths.append(path)
        return paths
    return []


@dataclass
class Citer:
    """Formats the citations of one page and, at the end, its References list."""

    doc: Document
    paths: list[Path]
    cited: list[str] = field(default_factory=list)  # keys in first-cited order

    def __post_init__(self):
        if not self.paths:
            return  # nothing to load: the first citation is an error (see _item)
        from citeproc import CitationStylesBibliography, formatter
        from citeproc.source import BibliographySource

        source = BibliographySource()
        for path in self.paths:
            for key, entry in _source(str(path), path.stat().st_mtime_ns).items():
                source[key] = entry
        self._source = source
        self._bib = CitationStylesBibliography(_style(), source, formatter.html)

    def _item(self, key: str, line: int):
        from citeproc import Citation, CitationItem

        if not self.paths:
            raise SourceError(self.doc.path, line, f"citation @{key}: no bibliography (add `bibliography: "
                                                   f"references.bib` to the front matter or _quarto.yml)")
        if key.lower() not in self._source:
            raise SourceError(self.doc.path, line, f"citation @{key}: no entry {key!r} in "
                                                   f"{', '.join(p.name for p in self.paths)}")
        citation = Citation([CitationItem(key)])
        self._bib.register(citation)
        if key not in self.cited:
            self.cited.append(key)
        text = self._bib.cite(citation, lambda item: None)
        return str(text).strip()

    def _parts(self, key: str, line: int) -> tuple[str, str]:
        """(authors, year) of one entry as the style cites it: "(Kingma and Ba 2014)"."""
        text = self._item(key, line)
        inner = text[1:-1] if text.startswith("(") and text.endswith(")") else text
        authors, _, year = inner.rpartition(" ")
        return authors, year

    def _link(self, key: str, text: str) -> str:
        return f'<a href="#ref-{html.escape(key.lower(), quote=True)}" role="doc-biblioref">{text}</a>'

    def bracketed(self, body: str, line: int) -> str:
        """`see @a, p. 3; @b` → `(see Kingma and Ba 2014, 3; Loshchilov and Hutter 2019)`."""
        shown, keys = [], []
        for part in body.split(";"):
            m = ITEM.match(part.strip())
            if not m:
                raise SourceError(self.doc.path, line, f"cannot read the citation [{body}]: each part needs "
                                                       f"one @key")
            key = m.group("key")
            keys.append(key)
            authors, year = self._parts(key, line)
            suffix = m.group("suffix")
            locator = _LOCATOR.match(suffix)
            if locator:
                suffix = ", " + re.sub(r"\s*-\s*", "–", locator.group("pages").strip())
            inner = year if m.group("minus") else f"{authors} {year}"
            prefix = m.group("prefix").strip()
            shown.append((prefix + " " if prefix else "") + self._link(key, inner + suffix.rstrip()))
        cites = " ".join(html.escape(k, quote=True) for k in keys)
        return f'<span class="citation" data-cites="{cites}">(' + "; ".join(shown) + ")</span>"

    def bare(self, key: str, minus: bool, line: int) -> str:
        authors, year = self._parts(key, line)
        if minus:
            return f'<span class="citation" data-cites="{key}">{self._link(key, year)}</span>'
        return f'<span class="citation" data-cites="{key}">{authors} ({self._link(key, year)})</span>'

    def references(self) -> str:
        """The References list (Quarto's appendix section), empty when nothing was cited."""
        if not self.cited:
            return ""
        self._bib.sort()
        entries = []
        for key, entry in zip(self._bib.keys, self._bib.bibliography(), strict=True):
            text = re.sub(r"\s+", " ", str(entry)).strip()
            # en-US puts a period or comma inside the closing quote (CSL punctuation-in-quote, which
            # citeproc-py does not apply); <em> as pandoc writes it
            text = re.sub(r"”([.,])", r"\1”", text).replace("<i>", "<em>").replace("</i>", "</em>")
            entries.append(f'<div id="ref-{html.escape(key, quote=True)}" class="csl-entry" role="listitem">'
                           f"{text}</div>")
        return ('<section class="lab-appendix" id="quarto-bibliography" role="doc-bibliography">\n'
                '<h2 class="lab-appendix-heading">References</h2>\n'
                '<div id="refs" class="references csl-bib-body hanging-indent" role="list">\n'
                + "\n".join(entries) + "\n</div>\n</section>")


def resolve(citer: Citer, text: str, masked: str, first_line: int) -> str:
    """Replace every citation in `text` (`masked`: the same text with code blanked) by its HTML."""
    spans: list[tuple[int, int, str]] = []
    for m in BRACKETED.finditer(masked):
        line = first_line + text.count("\n", 0, m.start())
        spans.append((m.start(), m.end(), citer.bracketed(text[m.start("body"):m.end("body")], line)))
    taken = [(a, b) for a, b, _ in spans]
    for m in BARE.finditer(masked):
        if any(a <= m.start() < b for a, b in taken):
            continue
        key = m.group("key")
        if key.split("-", 1)[0] in ("fig", "tbl", "sec") and "-" in key:
            continue  # a cross-reference (publish.pages)
        line = first_line + text.count("\n", 0, m.start())
        spans.append((m.start(), m.end(), citer.bare(key, bool(m.group("minus")), line)))
    pieces, last = [], 0
    for start, end, shown in sorted(spans):
        pieces.append(text[last:start])
        pieces.append(shown)
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
