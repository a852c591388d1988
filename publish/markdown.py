"""The Quarto (Pandoc) markdown that authors write, turned into what our site engine reads, as Quarto renders it.

Covered here, per markdown chunk: inline values `` `{python} expr` `` (found here, evaluated by publish.execute
in the document's kernel after the chunks before them), sections and their numbers (`## Title {#sec-x}`, for
`@sec-x`), callouts (`::: {.callout-note title="..." collapse="true"}` → admonitions), inline footnotes
(`^[text]` → `[^n]`, which Python-Markdown's footnotes extension numbers like Pandoc). Cross-references and
citations are resolved in publish.pages / publish.citations. The structure (fenced code, headings) comes from
markdown-it-py, a CommonMark parser, so nothing inside code is touched; what we do not implement of Pandoc's
syntax (other fenced divs, heading attributes, shortcodes, inline code of other engines) is a SourceError
with file:line, never text that silently renders differently.
"""

from __future__ import annotations

import html
import re
import shlex
from dataclasses import dataclass, field

from markdown_it import MarkdownIt

from publish.sources import Chunk, Document, SourceError

CALLOUTS = ("note", "tip", "warning", "important", "caution")
_MD = MarkdownIt("commonmark")
_INLINE_CODE = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<body>.+?)(?<!`)(?P=ticks)(?!`)")
_ENGINE = re.compile(r"^\{(?P<engine>[A-Za-z][\w-]*)\}\s*(?P<expr>.*)$", re.S)
_DIV = re.compile(r"^ {0,3}(?P<colons>:{3,})\s*(?P<attrs>.*?)\s*$")
_HEADING_ATTRS = re.compile(r"\s*\{(?P<attrs>[^{}]*)\}\s*$")
_SHORTCODE = re.compile(r"\{\{<.*?>\}\}")


# ---------------------------------------------------------------------------------------------- structure


def code_lines(text: str) -> set[int]:
    """0-based lines of `text` inside fenced or indented code blocks (markdown-it's block structure)."""
    lines: set[int] = set()
    for token in _MD.parse(text):
        if token.type in ("fence", "code_block") and token.map:
            lines.update(range(*token.map))
    return lines


def _masked_lines(text: str) -> list[str]:
    """The lines of `text`, code-block lines blanked (same count), so line numbers stay right."""
    code = code_lines(text)
    return ["" if i in code else line for i, line in enumerate(text.split("\n"))]


# ---------------------------------------------------------------------------------------------- inline values


@dataclass(frozen=True)
class Inline:
    expr: str
    line: int  # 0-based line within the chunk text
    start: int  # offsets of the whole code span in the chunk text
    end: int


def inline_expressions(text: str) -> list[Inline]:
    """`` `{python} expr` `` spans outside code blocks, in order. Inline code of another engine is an error
    for the caller to report (see `check_inline`)."""
    if "{python}" not in text:
        return []
    found = []
    offset = 0
    for i, (line, raw) in enumerate(zip(_masked_lines(text), text.split("\n"), strict=True)):
        for m in _INLINE_CODE.finditer(line):
            engine = _ENGINE.match(m.group("body").strip())
            if engine and engine.group("engine") == "python":
                found.append(Inline(expr=engine.group("expr").strip(), line=i, start=offset + m.start(),
                                    end=offset + m.end()))
        offset += len(raw) + 1
    return found


def check_inline(doc: Document, chunk: Chunk) -> None:
    for i, line in enumerate(_masked_lines(chunk.text)):
        for m in _INLINE_CODE.finditer(line):
            engine = _ENGINE.match(m.group("body").strip())
            if engine and engine.group("engine") != "python":
                raise SourceError(doc.path, chunk.line + i, f"inline code `{{{engine.group('engine')}}}` is not "
                                                            f"supported by lab render (only `{{python}} expr`)")
            if engine and not engine.group("expr").strip():
                raise SourceError(doc.path, chunk.line + i, "inline `{python}` code without an expression")


def escape_value(value: str) -> str:
    """An inline value as literal text (Quarto does not read it as markdown): `a*b*` stays `a*b*`."""
    value = " ".join(value.split("\n"))
    value = html.escape(value, quote=False)
    return re.sub(r"([\\`*_\[\]$])", r"\\\1", value)


def substitute_inline(text: str, values: list[str] | None) -> str:
    """Replace the inline expressions of `text` by their values (in order); without values (a page shown
    without outputs) the code span stays as written."""
    spans = inline_expressions(text)
    if not spans or values is None or len(values) != len(spans):
        return text
    pieces, last = [], 0
    for span, value in zip(spans, values, strict=True):
        pieces.append(text[last:span.start])
        pieces.append(escape_value(value))
        last = span.end
    pieces.append(text[last:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------- sections


def _attributes(raw: str, path, line: int) -> tuple[str | None, list[str], dict[str, str]]:
    """Pandoc attributes `#id .class key="value"` → (id, classes, key-values)."""
    try:
        parts = shlex.split(raw)
    except ValueError as e:
        raise SourceError(path, line, f"cannot read the attributes {{{raw}}}: {e}") from None
    ident, classes, keys = None, [], {}
    for part in parts:
        if part.startswith("#"):
            ident = part[1:]
        elif part.startswith("."):
            classes.append(part[1:])
        elif part == "-":
            classes.append("unnumbered")
        elif "=" in part:
            key, _, value = part.partition("=")
            keys[key] = value
        else:
            classes.append(part)  # `::: callout-note`: Pandoc reads a bare word as a class
    return ident, classes, keys


@dataclass
class Heading:
    level: int
    text: str
    ident: str | None
    numbered: bool
    line: int  # source line
    number: str = ""


def headings(doc: Document) -> list[Heading]:
    """The document's section headings (ATX and setext, outside code and callouts), in order."""
    found = []
    for chunk in doc.chunks:
        if chunk.kind != "markdown":
            continue
        inside = _div_lines(chunk.text)
        for token_index, token in enumerate(tokens := _MD.parse(chunk.text)):
            if token.type != "heading_open" or not token.map or token.map[0] in inside:
                continue
            content = tokens[token_index + 1].content
            line = chunk.line + token.map[0]
            ident, classes = None, []
            m = _HEADING_ATTRS.search(content)
            if m:
                ident, classes, keys = _attributes(m.group("attrs"), doc.path, line)
                unsupported = [c for c in classes if c != "unnumbered"] + list(keys)
                if unsupported:
                    raise SourceError(doc.path, line, f"heading attribute {unsupported[0]!r} is not supported "
                                                      f"by lab render (supported: #id, .unnumbered, -)")
                content = content[:m.start()]
            found.append(Heading(level=int(token.tag[1]), text=content.strip(), ident=ident,
                                 numbered="unnumbered" not in classes, line=line))
    # Quarto numbers sections from the document's top heading level (## when the title is the only #)
    top = min((h.level for h in found), default=1)
    counters: list[int] = []
    for h in found:
        if not h.numbered:
            continue
        depth = h.level - top + 1
        counters = counters[:depth] + [0] * max(0, depth - len(counters))
        counters[depth - 1] += 1
        h.number = ".".join(str(c) for c in counters[:depth])
    return found


def section_numbers(doc: Document) -> dict[str, str]:
    """`sec-*` id → Quarto's section number ("2.1"), for `@sec-x`."""
    numbers = {}
    for h in headings(doc):
        if h.ident and h.ident.startswith("sec-"):
            if not h.numbered:
                raise SourceError(doc.path, h.line, f"section {h.ident!r} is unnumbered: Quarto cannot "
                                                    f"cross-reference it")
            numbers[h.ident] = h.number
    return numbers


def heading_markdown(text: str, path, first_line: int) -> str:
    """Headings as Python-Markdown's attr_list reads them: `{#id}` kept, `-` / `.unnumbered` dropped."""
    masked = _masked_lines(text)
    lines = text.split("\n")
    for i, line in enumerate(masked):
        if re.match(r"^ {0,3}#{1,6}\s", line):
            m = _HEADING_ATTRS.search(line)
            if m:
                ident, _, _ = _attributes(m.group("attrs"), path, first_line + i)
                lines[i] = line[:m.start()] + (f" {{#{ident}}}" if ident else "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- callouts


def _div_lines(text: str) -> set[int]:
    """0-based lines inside (or opening/closing) a fenced div, for heading numbering."""
    inside, depth = set(), 0
    for i, line in enumerate(_masked_lines(text)):
        m = _DIV.match(line)
        if m:
            depth = depth + 1 if m.group("attrs") else max(0, depth - 1)
            inside.add(i)
        elif depth:
            inside.add(i)
    return inside


@dataclass
class _Open:
    kind: str
    title: str | None
    collapse: str | None
    line: int  # 0-based line of the opening fence
    body: list[str] = field(default_factory=list)


def callouts(text: str, path, first_line: int) -> str:
    """`::: {.callout-KIND title="T" collapse="true"}` ... `:::` → a (collapsible) admonition, as Quarto
    shows it: title from `title=` or the body's first heading, else the kind ("Note"). Other fenced divs are
    errors; a callout must open and close within one stretch of text (no python chunk inside)."""
    masked = _masked_lines(text)
    lines = text.split("\n")
    out: list[str] = []
    stack: list[_Open] = []
    for i, (line, seen) in enumerate(zip(lines, masked, strict=True)):
        m = _DIV.match(seen)
        where = first_line + i
        if m and m.group("attrs"):
            raw = m.group("attrs")
            raw = raw[1:-1] if raw.startswith("{") and raw.endswith("}") else raw
            ident, classes, keys = _attributes(raw, path, where)
            kinds = [c for c in classes if c.startswith("callout-")]
            if not kinds or kinds[0][len("callout-"):] not in CALLOUTS:
                raise SourceError(path, where, f"fenced div `{seen.strip()}` is not supported by lab render "
                                               f"(supported: callouts {', '.join('.callout-' + k for k in CALLOUTS)})")
            extra = [c for c in classes if c != kinds[0]] + [k for k in keys if k not in ("title", "collapse")]
            if ident:
                extra.insert(0, "#" + ident)
            if extra:
                raise SourceError(path, where, f"callout attribute {extra[0]!r} is not supported by lab render "
                                               f"(supported: title, collapse)")
            collapse = keys.get("collapse")
            if collapse not in (None, "true", "false"):
                raise SourceError(path, where, f"callout collapse must be true or false, not {collapse!r}")
            stack.append(_Open(kind=kinds[0][len("callout-"):], title=keys.get("title"), collapse=collapse,
                               line=i))
            continue
        if m and not m.group("attrs"):
            if not stack:
                raise SourceError(path, where, "`:::` closes a fenced div that was never opened")
            block = _admonition(stack.pop())
            (stack[-1].body if stack else out).extend(block)
            continue
        (stack[-1].body if stack else out).append(line)
    if stack:
        raise SourceError(path, first_line + stack[-1].line,
                          "callout is not closed by `:::` before the next python chunk or the end of the "
                          "document (lab render does not support chunks inside callouts)")
    return "\n".join(out)


def _admonition(div: _Open) -> list[str]:
    body = list(div.body)
    while body and not body[0].strip():
        body.pop(0)
    title = div.title
    if title is None and body:
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", body[0])
        if heading:
            title = heading.group(1)
            body.pop(0)
    marker = {None: "!!!", "true": "???", "false": "???+"}[div.collapse]
    head = f"{marker} {div.kind}" + (f' "{title}"' if title else "")
    return ["", head, "", *[("    " + line) if line.strip() else "" for line in body], ""]


# ---------------------------------------------------------------------------------------------- footnotes


def inline_footnotes(text: str, counter: list[int]) -> tuple[str, list[str]]:
    """Pandoc's `^[note]` → `[^lab-fn-N]` plus its definition (returned, for the end of the page).
    `counter` is shared across the page's chunks so labels stay unique."""
    masked = "\n".join(_masked_lines(text))
    masked = _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), masked)
    pieces, notes, last, i = [], [], 0, 0
    while True:
        start = masked.find("^[", i)
        if start < 0:
            break
        depth, end = 0, None
        for j in range(start + 1, len(masked)):
            if masked[j] == "[":
                depth += 1
            elif masked[j] == "]":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        if end is None:
            break
        counter[0] += 1
        label = f"lab-fn-{counter[0]}"
        pieces.append(text[last:start])
        pieces.append(f"[^{label}]")
        notes.append(f"[^{label}]: " + " ".join(text[start + 2:end].split()))
        last = i = end + 1
    pieces.append(text[last:])
    return "".join(pieces), notes


def check_unsupported(text: str, path, first_line: int) -> None:
    """Pandoc/Quarto syntax we do not render: an error naming the line."""
    if "{{<" not in text:
        return
    for i, line in enumerate(_masked_lines(text)):
        line = _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)  # `{{< x >}}` in code is just text
        if _SHORTCODE.search(line):
            raise SourceError(path, first_line + i, f"Quarto shortcode {_SHORTCODE.search(line).group(0)!r} is "
                                                    f"not supported by lab render")
