"""Read the notebook's sources: `.qmd` files and jupytext percent-format `.py` files.

We support the subset of Quarto that a lab notebook needs, so `quarto render` and our renderer read the same
files: YAML front matter, ```` ```{python} ```` chunks with `#| key: value` options, plain fences as markdown.
Everything the reader does not understand is an error naming file and line, never a silent skip.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

SECTIONS = ("log", "lore")
SOURCE_SUFFIXES = (".qmd", ".py")

# Chunk options we implement (Quarto names). Anything else is an error so a typo never silently does nothing.
CHUNK_OPTIONS = frozenset(
    {"label", "fig-cap", "fig-alt", "tbl-cap", "echo", "output", "eval", "warning", "error", "include",
     "code-fold", "code-summary", "fig-subcap", "layout-ncol"}
)
# Quarto's Jupyter engine ignores these per chunk (it sets matplotlib's size once per document)
FIGURE_SIZE_HELP = ("has no effect on a chunk under Quarto's Jupyter engine, which sets the figure size once "
                    "per document: put it in the front matter, or pass figsize= to plt.subplots")
# Front matter keys we implement; any other is an error naming it (Quarto would act on it, we would not).
FRONT_MATTER_KEYS = frozenset({"title", "description", "date", "categories", "order", "execute", "listing",
                               "jupyter", "bibliography", "fig-width", "fig-height"})
# execute: keys (front matter or _quarto.yml) we implement
EXECUTE_KEYS = frozenset({"echo", "eval", "output", "warning", "error", "include", "timeout", "freeze"})
# _quarto.yml top-level keys we implement (format: only html; see publish/site.py for website:)
PROJECT_KEYS = frozenset({"project", "website", "format", "execute", "bibliography"})
FREEZE_HELP = ("Quarto's freeze reuses a page's results as long as its source text is unchanged, so it would "
               "serve a LAB_SMOKE=1 render on the real site and a page whose experiments changed; use "
               "`freeze: false` (lab render's document cache is exact: it re-executes a page when its source, "
               "a module or file it read, a run it loaded, LAB_SMOKE or LAB_STORE changed)")
_OPTION_VALUES = {
    "echo": (True, False, "fenced"),
    "output": (True, False, "asis"),
    "eval": (True, False),
    "warning": (True, False),
    "error": (True, False),
    "include": (True, False),
    "code-fold": (True, False, "show"),
}

_CODE_OPEN = re.compile(r"^(?P<fence>`{3,})\s*\{python(?P<attrs>[^}]*)\}\s*$")
_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})")
_OPTION_LINE = re.compile(r"^#\|\s?(?P<body>.*)$")
_PERCENT_MARKER = re.compile(r"^#\s*%%(?!%)")


class SourceError(Exception):
    """A problem in a source file; str() is `path:line: message` so editors can jump to it."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else f"{self.path}"
        super().__init__(f"{where}: {message}")


@dataclass
class Chunk:
    kind: str  # "markdown" | "code"
    text: str  # code without its `#|` option lines; markdown verbatim
    options: dict = field(default_factory=dict)
    # 1-based source line: the first text line of a markdown chunk; the opening fence (or `# %%`) of a code chunk
    line: int = 1


@dataclass
class Document:
    path: Path
    rel: str  # posix path relative to the project root
    kind: str  # "log" | "lore" | "page"
    meta: dict
    chunks: list[Chunk]
    slug: str
    # sha256 of the bytes this Document was parsed from: the cache records what was executed, even if the
    # file is edited while its kernel runs
    source_sha256: str = ""

    @property
    def root(self) -> Path:
        return self.path.parents[len(PurePosixPath(self.rel).parts) - 1]

    @property
    def has_code(self) -> bool:
        """Python chunks or inline `{python} expr` values: the document needs a kernel."""
        from publish.markdown import inline_expressions

        return any(c.kind == "code" or inline_expressions(c.text) for c in self.chunks)

    @property
    def title(self) -> str:
        return str(self.meta.get("title", ""))


# ---------------------------------------------------------------------------------------------- project


def find_root(start: Path | str | None = None) -> Path:
    """The project root: the nearest directory at or above `start` (default: cwd) holding `_quarto.yml`."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "_quarto.yml").is_file():
            return candidate
    raise FileNotFoundError(f"no _quarto.yml in {here} or any parent directory: not inside a lab project")


def load_project(root: Path | str) -> dict:
    """`_quarto.yml` as a dict (the single source of site settings)."""
    path = Path(root) / "_quarto.yml"
    config = _load_yaml(path.read_text(encoding="utf-8"), path, first_line=1)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise SourceError(path, 1, "_quarto.yml must be a mapping")
    from publish.schema import check_project  # Quarto's schema, closed: a misspelt key is an error

    check_project(config, path.read_text(encoding="utf-8"), path, Path(root))
    validate_project(config, path)
    return config


def _line_of(path: Path, key: str) -> int | None:
    try:
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(rf"^\s*{re.escape(key)}\s*:", text):
                return n
    except OSError:
        pass
    return None


def validate_project(config: dict, path: Path) -> None:
    """What `lab render` would not honour in _quarto.yml is an error naming the key."""
    for key in config:
        if key not in PROJECT_KEYS:
            raise SourceError(path, _line_of(path, key), f"key {key!r} is not supported by lab render "
                                                         f"(supported: {', '.join(sorted(PROJECT_KEYS))})")
    execute = config.get("execute") or {}
    if not isinstance(execute, dict):
        raise SourceError(path, _line_of(path, "execute"), "execute: must be a mapping")
    validate_execute(execute, path, _line_of(path, "execute"), project=True)
    fmt = config.get("format") or {}
    if isinstance(fmt, dict):
        for key in fmt:
            if key != "html":
                raise SourceError(path, _line_of(path, key), f"format {key!r}: lab render builds html only")


def validate_execute(execute: dict, path: Path, line: int | None, project: bool = False) -> None:
    for key, value in execute.items():
        if key not in EXECUTE_KEYS:
            raise SourceError(path, line, f"execute: key {key!r} is not supported by lab render "
                                          f"(supported: {', '.join(sorted(EXECUTE_KEYS))})")
        if key == "freeze" and value is not False:
            raise SourceError(path, line, f"execute: freeze: {value!r} is not supported: {FREEZE_HELP}")


def discover(root: Path | str) -> list[Path]:
    """Source files named by `project.render` in `_quarto.yml`, in glob order, without duplicates."""
    root = Path(root).resolve()
    config = load_project(root)
    patterns = (config.get("project") or {}).get("render")
    if patterns is None:
        patterns = ["*.qmd", "**/*.qmd"]
    # Quarto's globs: a pattern starting with "/" is anchored at the project root, any other one matches at
    # every depth ("log/*.qmd" is "**/log/*.qmd", so it also finds tests/fixtures/.../log/*.qmd)
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise SourceError(root / "_quarto.yml", None, "project.render must be a list of glob patterns")
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        negate = pattern.startswith("!")  # Quarto's syntax for excluding files
        body = pattern.lstrip("!")
        body = body[1:] if body.startswith("/") else (body if body.startswith("**/") else "**/" + body)
        matches = sorted(Path(p) for p in glob.glob(body, root_dir=root, recursive=True))
        for rel in matches:
            path = root / rel
            if negate:
                if path in seen:
                    seen.discard(path)
                    found.remove(path)
                continue
            hidden = any(part.startswith(("_", ".")) for part in rel.parts)  # Quarto skips _x/ and .x/
            if path.is_file() and path not in seen and not hidden:
                seen.add(path)
                found.append(path)
    return found


def read_all(root: Path | str, paths: list[Path] | None = None) -> list[Document]:
    """Read every discovered source (or `paths`), rejecting duplicate slugs within a section."""
    root = Path(root).resolve()
    docs = [read_document(p, root) for p in (discover(root) if paths is None else paths)]
    by_slug: dict[tuple[str, str], Document] = {}
    for doc in docs:
        # log/lore pages are addressed by slug; other pages by their path (index.qmd vs notes/index.qmd)
        key = (doc.kind, doc.slug if doc.kind != "page" else PurePosixPath(doc.rel).with_suffix("").as_posix())
        if key in by_slug:
            other = by_slug[key]
            raise SourceError(doc.path, None, f"slug {doc.slug!r} is also used by {other.path} "
                                              f"(one page each: rename one of them)")
        by_slug[key] = doc
    return docs


# ---------------------------------------------------------------------------------------------- documents


def document_kind(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 and parts[0] in SECTIONS else "page"


def read_document(path: Path | str, root: Path | str) -> Document:
    path = Path(path).resolve()
    root = Path(root).resolve()
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        raise SourceError(path, None, f"not inside the project root {root}") from None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(path, text_line_of_offset(data, e.start), "not valid UTF-8") from None
    if path.suffix == ".qmd":
        meta, chunks = parse_qmd(text, path)
    elif path.suffix == ".py":
        meta, chunks = parse_percent(text, path)
    else:
        raise SourceError(path, None, f"unsupported source type {path.suffix!r} (use .qmd or percent .py)")
    kind = document_kind(rel)
    meta, key_lines, meta_line = meta
    validate_meta(meta, kind, path, key_lines, meta_line)
    return Document(path=path, rel=rel, kind=kind, meta=meta, chunks=chunks, slug=path.stem,
                    source_sha256=hashlib.sha256(data).hexdigest())


def text_line_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def validate_meta(meta: dict, kind: str, path: Path, key_lines: dict[str, int], line: int) -> None:
    """Front matter rules; `line` is the first line of the front matter, `key_lines` where each key is."""

    def key_line(key: str) -> int:
        return key_lines.get(key, line)

    for key in meta:
        if key not in FRONT_MATTER_KEYS:
            raise SourceError(path, key_line(key), f"front matter key {key!r} is not supported by lab render "
                                                   f"(supported: {', '.join(sorted(FRONT_MATTER_KEYS))})")
    execute = meta.get("execute")
    if execute is not None:
        if not isinstance(execute, dict):
            raise SourceError(path, key_line("execute"), "`execute` must be a mapping")
        validate_execute(execute, path, key_line("execute"))
    listing = meta.get("listing")
    if listing is not None:
        # the log's post list is the blog engine's; any other listing would be missing from our site
        contents = listing.get("contents") if isinstance(listing, dict) else None
        if path.name != "log.qmd" or contents != "log":
            raise SourceError(path, key_line("listing"), "front matter key 'listing' is supported only in "
                                                         "log.qmd with `contents: log` (the blog's list); "
                                                         "generate other lists with a chunk (publish.listings)")
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        raise SourceError(path, key_line("title"), "front matter needs a non-empty `title`")
    if kind == "log":
        if "date" not in meta:
            raise SourceError(path, line, "log entries need a `date` in the front matter (\"YYYY-MM-DD HH:MM\")")
        meta["date"] = parse_date(meta["date"], path, key_line("date"))
    elif "date" in meta:
        meta["date"] = parse_date(meta["date"], path, key_line("date"))
    categories = meta.get("categories", [])
    if isinstance(categories, str):
        categories = [categories]
    if not isinstance(categories, list) or not all(isinstance(c, str | int | float) for c in categories):
        raise SourceError(path, key_line("categories"), "`categories` must be a list of names")
    meta["categories"] = [str(c) for c in categories]
    for key in ("fig-width", "fig-height"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise SourceError(path, key_line(key), f"`{key}` must be a positive number of inches, not {value!r}")
    if "description" in meta and not isinstance(meta["description"], str):
        raise SourceError(path, key_line("description"), "`description` must be a string")


def parse_date(value, path: Path, line: int) -> dt.datetime:
    """Accept "YYYY-MM-DD HH:MM", "YYYY-MM-DD" and ISO 8601 (YAML may have parsed it already)."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise SourceError(path, line, f"malformed date {value!r}: use \"YYYY-MM-DD HH:MM\" or ISO 8601")


def _load_yaml(text: str, path: Path, first_line: int):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = first_line + mark.line if mark is not None else first_line
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SourceError(path, line, f"malformed YAML: {problem}") from None


def _front_matter(lines: list[str], start: int, path: Path, first_line: int) -> tuple[dict, dict, int]:
    """YAML between `lines[start]` ('---') and the closing '---' → (meta, line of each key, index after)."""
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() in ("---", "..."):
            break
    else:
        raise SourceError(path, first_line, "front matter starts with '---' but is never closed")
    body = lines[start + 1:end]
    meta = _load_yaml("\n".join(body), path, first_line + 1)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SourceError(path, first_line, "front matter must be a YAML mapping")
    from publish.schema import check_front_matter  # Quarto's schema, closed: a misspelt key is an error

    check_front_matter(meta, "\n".join(body), path, first_line + 1)
    # remember where each top-level key is, so later errors can point at it
    key_lines = {}
    for i, text in enumerate(body):
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:", text)
        if m:
            key_lines.setdefault(m.group(1), first_line + 1 + i)
    return meta, key_lines, end + 1


def parse_chunk_options(option_lines: list[str], path: Path, first_line: int) -> dict:
    """`#| key: value` lines (already stripped of `#|`) → validated options dict."""
    if not option_lines:
        return {}
    options = _load_yaml("\n".join(option_lines), path, first_line)
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise SourceError(path, first_line, "chunk options must be `#| key: value` lines")
    key_lines = {}
    for i, text in enumerate(option_lines):
        m = re.match(r"^([^\s:][^:]*?)\s*:", text)
        if m:
            key_lines.setdefault(m.group(1), first_line + i)
    return validate_options(options, path, key_lines, first_line)


def validate_options(options: dict, path: Path, key_lines: dict, default_line: int) -> dict:
    for key, value in options.items():
        line = key_lines.get(key, default_line)
        if key in ("fig-width", "fig-height"):
            raise SourceError(path, line, f"chunk option {key!r} {FIGURE_SIZE_HELP}")
        if key == "fig-subcap":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise SourceError(path, line, "chunk option 'fig-subcap' must be a list of captions, one per panel")
            continue
        if key == "layout-ncol":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SourceError(path, line, f"chunk option 'layout-ncol' must be a whole number of columns, "
                                              f"not {value!r}")
            continue
        if key not in CHUNK_OPTIONS:
            raise SourceError(path, line, f"unknown chunk option {key!r} (supported: "
                                          f"{', '.join(sorted(CHUNK_OPTIONS))})")
        allowed = _OPTION_VALUES.get(key)
        if allowed is not None and value not in allowed:
            raise SourceError(path, line, f"chunk option {key!r} must be one of "
                                          f"{', '.join(str(a).lower() for a in allowed)}, not {value!r}")
        if allowed is None and not isinstance(value, str):
            raise SourceError(path, line, f"chunk option {key!r} must be a string, not {value!r}")
    return dict(options)


def _brace_options(attrs: str, path: Path, line: int) -> dict:
    """Options written inside the fence braces, e.g. ```{python echo=false}; `key=value` pairs only."""
    attrs = attrs.strip().lstrip(",").strip()
    if not attrs:
        return {}
    options = {}
    for item in re.split(r"[,\s]+(?=[\w-]+\s*=)", attrs):
        key, sep, value = item.partition("=")
        if not sep:
            raise SourceError(path, line, f"cannot read chunk attribute {item!r}: use `#| key: value` lines")
        options[key.strip()] = _load_yaml(value.strip().rstrip(","), path, line)
    return validate_options(options, path, {}, line)


def _split_options(code_lines: list[str]) -> tuple[list[str], list[str]]:
    """Leading `#|` lines are options; the rest is code."""
    n = 0
    while n < len(code_lines) and _OPTION_LINE.match(code_lines[n]):
        n += 1
    return [_OPTION_LINE.match(x).group("body") for x in code_lines[:n]], code_lines[n:]


def _markdown_chunk(lines: list[str], first_line: int) -> Chunk | None:
    """Markdown between code chunks, trimmed of blank edge lines; None when there is nothing to say."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    if start == end:
        return None
    return Chunk(kind="markdown", text="\n".join(lines[start:end]), options={}, line=first_line + start)


def parse_qmd(text: str, path: Path) -> tuple[tuple[dict, dict, int], list[Chunk]]:
    """→ ((front matter, line of each key, first line of front matter), chunks)."""
    lines = text.splitlines()
    meta, key_lines, i = {}, {}, 0
    if lines and lines[0].rstrip() == "---":
        meta, key_lines, i = _front_matter(lines, 0, path, 1)
    chunks: list[Chunk] = []
    md_start, md_lines = i, []
    outer_fence: str | None = None  # inside a plain (markdown) fence, ```{python} is just text
    while i < len(lines):
        line = lines[i]
        if outer_fence is not None:
            md_lines.append(line)
            if re.match(rf"^ {{0,3}}{re.escape(outer_fence[0])}{{{len(outer_fence)},}}\s*$", line):
                outer_fence = None
            i += 1
            continue
        opened = _CODE_OPEN.match(line)
        if opened:
            fence = opened.group("fence")
            for j in range(i + 1, len(lines)):
                if re.match(rf"^`{{{len(fence)},}}\s*$", lines[j]):
                    break
            else:
                raise SourceError(path, i + 1, "python chunk is never closed (missing ``` line)")
            chunk_md = _markdown_chunk(md_lines, md_start + 1)
            if chunk_md:
                chunks.append(chunk_md)
            option_lines, code = _split_options(lines[i + 1:j])
            options = _brace_options(opened.group("attrs"), path, i + 1)
            options.update(parse_chunk_options(option_lines, path, i + 2))
            chunks.append(Chunk(kind="code", text="\n".join(code).strip("\n"), options=options, line=i + 1))
            i = j + 1
            md_start, md_lines = i, []
            continue
        if re.match(r"^`{3,}\s*\{", line):
            raise SourceError(path, i + 1, f"unsupported executable chunk {line.strip()!r} (only {{python}})")
        plain = _FENCE_OPEN.match(line)
        if plain:
            outer_fence = plain.group("fence")
        md_lines.append(line)
        i += 1
    if outer_fence is not None:
        raise SourceError(path, md_start + 1, f"a {outer_fence} fence is never closed")
    chunk_md = _markdown_chunk(md_lines, md_start + 1)
    if chunk_md:
        chunks.append(chunk_md)
    return (meta, key_lines, 1), chunks


def parse_percent(text: str, path: Path) -> tuple[tuple[dict, dict, int], list[Chunk]]:
    """A jupytext percent script: jupytext reads the cells, we map them back to source lines."""
    import jupytext

    try:
        nb = jupytext.reads(text, fmt="py:percent")
    except Exception as e:  # jupytext raises assorted errors on bad headers
        raise SourceError(path, 1, f"jupytext cannot read this percent script: {e}") from None
    lines = text.splitlines()
    markers = [n for n, line in enumerate(lines) if _PERCENT_MARKER.match(line)]
    cells = list(nb.cells)

    meta, key_lines, meta_line = {}, {}, 1
    if cells and cells[0].cell_type == "raw" and lines and lines[0].startswith("# ---"):
        # jupytext keeps a `# ---` header's non-jupyter keys (title, date, ...) as a raw cell
        header = cells.pop(0).source.splitlines()
        meta, key_lines, _ = _front_matter(header, 0, path, 1)
    # cells before the first marker (after the header) have no marker line of their own
    starts: list[int] = list(markers)
    if len(cells) == len(markers) + 1:
        header_end = 0
        if lines and lines[0].startswith("# ---"):
            header_end = next((k + 1 for k in range(1, len(lines)) if lines[k].rstrip() == "# ---"), 0)
        starts.insert(0, header_end - 1)
    if len(starts) != len(cells):
        raise SourceError(path, 1, f"cannot map {len(cells)} jupytext cells onto {len(markers)} `# %%` markers")

    chunks: list[Chunk] = []
    for index, (cell, start) in enumerate(zip(cells, starts, strict=True)):
        # first non-blank line after the marker is where the cell's text begins
        first = start + 1
        while first < len(lines) and not lines[first].strip():
            first += 1
        if cell.cell_type == "markdown":
            body = cell.source.splitlines()
            if index == 0 and not meta and body and body[0].rstrip() == "---":
                # Quarto's convention: front matter in the first markdown cell
                meta, key_lines, after = _front_matter(body, 0, path, first + 1)
                meta_line = first + 1
                body = body[after:]
                offset = after
            else:
                offset = 0
            chunk = _markdown_chunk(body, first + 1 + offset)
            if chunk:
                chunks.append(chunk)
        elif cell.cell_type == "code":
            code_lines = cell.source.splitlines()
            option_lines, code = _split_options(code_lines)
            options = parse_chunk_options(option_lines, path, first + 1)
            if not "\n".join(code).strip() and not options:
                continue
            chunks.append(Chunk(kind="code", text="\n".join(code).strip("\n"), options=options,
                                line=start + 1 if start in markers else first + 1))
        else:
            raise SourceError(path, start + 1, f"unsupported cell type {cell.cell_type!r}")
    if isinstance(meta, dict) and "jupyter" in meta:
        meta.pop("jupyter")
    return (meta, key_lines, meta_line), chunks
