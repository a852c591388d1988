"""Documents -> pages: execute what is stale (in parallel), reuse what is fresh, convert to mkdocs markdown.

The markdown relies on these Python-Markdown extensions, which the site configuration must enable:
  admonition, pymdownx.details      `??? note "Code"` collapsible blocks for `code-fold`
  pymdownx.superfences              fenced code (also nested in details blocks)
  md_in_html, attr_list             `<figure markdown="span">` with a markdown image inside (so mkdocs
                                    rewrites the image path relative to the page's final URL) and a
                                    `<figcaption markdown="span">` (so captions may hold math/emphasis)
  pymdownx.arithmatex (generic)     `$...$` and `$$...$$` math in markdown chunks, passed through verbatim
  footnotes                         Pandoc's `[^x]` footnotes (and `^[...]`, made `[^lab-fn-N]`), listed at
                                    FOOTNOTES_MARKER under a "Footnotes" heading as Quarto does
Quarto markdown (inline values, sections, callouts, panels, citations) is turned into this by publish.markdown
and publish.citations; what they do not implement is a SourceError with file:line.
Chunk labels become `<a id="label"></a>` anchors; HTML outputs (DataFrames) are included raw; figures are PNG
assets under `<page dir>/<stem>_files/`. The body has no front matter and no title: the site adds both.
"""

from __future__ import annotations

import base64
import fnmatch
import html
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from publish import cache, citations, markdown
from publish.execute import ExecutionError, abort_all, active_count, execute, options_for, strip_ansi
from publish.layout import docs_path, figure_dir
from publish.links import rewrite_links
from publish.sources import Chunk, Document, SourceError, load_project

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg"}
# where Python-Markdown's footnotes extension puts the list (its PLACE_MARKER default)
FOOTNOTES_MARKER = "///Footnotes Go Here///"


@dataclass
class Page:
    doc: Document
    status: str  # "executed" | "reused" | "failed" | "static" (no code)
    seconds: float = 0.0
    markdown: str = ""  # body for mkdocs: links rewritten, figures referenced relatively
    assets: dict[str, bytes] = field(default_factory=dict)  # docs-relative path -> file bytes
    figures: list[str] = field(default_factory=list)  # docs-relative paths of figures, in order
    links_to: list[str] = field(default_factory=list)  # docs paths this page links to
    executed_at: str | None = None
    runs: list[dict] = field(default_factory=list)  # [{"name", "key"}]
    error: str | None = None
    reason: str | None = None  # why it executed ("source changed", "mymod/a.py changed", "forced", ...)
    # where the time went when it executed: the kernel's wall time, the part of it spent training runs
    # (from the run log), and converting the notebook into the page
    execute_seconds: float = 0.0
    train_seconds: float = 0.0
    convert_seconds: float = 0.0
    shows_last_good: bool = False  # failed, but showing the outputs of its last good execution


# ---------------------------------------------------------------------------------------------- markdown


def _fence(text: str, char: str = "`") -> str:
    """A fence longer than any run of `char` inside `text` (so outputs containing ``` stay inside)."""
    longest = max((len(m) for m in re.findall(rf"{re.escape(char)}+", text)), default=0)
    return char * max(3, longest + 1)


def code_markdown(chunk: Chunk, options: dict) -> str:
    echo = options["echo"]
    if echo is False:
        return ""
    code = chunk.text
    if echo == "fenced":
        lines = [f"#| {k}: {v if isinstance(v, str) else str(v).lower()}" for k, v in chunk.options.items()]
        inner = "```{python}\n" + "\n".join([*lines, code]) + "\n```"
        fence = _fence(inner)
        block = f"{fence}markdown\n{inner}\n{fence}"
    else:
        fence = _fence(code)
        block = f"{fence}python\n{code}\n{fence}"
    fold = options["code-fold"]
    if fold in (True, "show"):
        marker = "???+" if fold == "show" else "???"
        summary = str(options.get("code-summary") or "Code").replace('"', "'")
        indented = "\n".join(("    " + line) if line else "" for line in block.splitlines())
        return f'{marker} note "{summary}"\n\n{indented}'
    return block


def _text_block(text: str) -> str:
    text = strip_ansi(text).rstrip("\n")
    fence = _fence(text)
    return f"{fence}text\n{text}\n{fence}"


def _as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


@dataclass
class _Converted:
    blocks: list[str] = field(default_factory=list)
    assets: dict[str, bytes] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def outputs_markdown(doc: Document, chunk_index: int, chunk: Chunk, options: dict, outputs: list,
                     out: _Converted, markdown_links: Callable[[str], str] = lambda text: text,
                     numbers: dict[str, int] | None = None) -> None:
    """Append the markdown (and assets) for one code cell's outputs to `out`.

    `markdown_links` rewrites the links of markdown the cell printed (`output: asis`, text/markdown), so a
    generated sentence may link to `../lore/page.qmd` like the document's own prose.
    """
    asis = options["output"] == "asis"
    page = docs_path(doc.rel)
    numbers = numbers or {}
    stream: list[str] = []

    errors: list[str] = []

    def flush():
        if stream:
            text = "".join(stream)
            out.blocks.append(markdown_links(text.rstrip("\n")) if asis else _text_block(text))
            stream.clear()
        if errors:
            out.blocks.append(_text_block("".join(errors)))
            errors.clear()

    label = chunk.options.get("label")
    caption = chunk.options.get("fig-cap")
    alt = chunk.options.get("fig-alt") or caption or ""
    number = numbers.get(str(label)) if label else None
    if caption and number is not None:  # Quarto numbers figures whose chunk label starts with fig-
        caption = f"Figure&nbsp;{number}: {caption}"
    # panels (`fig-subcap`, `layout-ncol`): the chunk's images side by side under one caption, as Quarto
    subcaps = subcaptions(chunk)
    ncol = int(chunk.options.get("layout-ncol") or 1)
    panels: list[tuple[str, str]] | None = [] if subcaps or ncol > 1 else None
    panels_at = -1
    # a table chunk (`tbl-` label + `tbl-cap`): its outputs under "Table N: caption", on top as in Quarto
    table_at = len(out.blocks)
    table_caption = chunk.options.get("tbl-cap")
    if label and str(label).startswith("tbl-") and table_caption and number is not None:
        table_caption = f"Table&nbsp;{number}: {table_caption}"
    else:
        table_caption = None
    for n_output, output in enumerate(outputs, 1):
        kind = output.get("output_type")
        if kind == "stream":
            if output.get("name") == "stderr":  # never inside printed markdown: a block of its own, after it
                errors.append(_as_text(output.get("text", "")))
            else:
                stream.append(_as_text(output.get("text", "")))
            continue
        flush()
        if kind == "error":
            if options["error"]:
                out.blocks.append(_text_block("\n".join(output.get("traceback") or
                                                        [f"{output.get('ename')}: {output.get('evalue')}"])))
            continue
        if kind not in ("display_data", "execute_result"):
            continue
        data = output.get("data", {})
        image_type = next((t for t in IMAGE_TYPES if t in data), None)
        if image_type:
            # Quarto's file names: <label>-output-<n>, or cell-<n>-output-<n> without a label, where n counts
            # every output of the cell (a warning printed before the figure makes it output-2)
            stem = re.sub(r"[^A-Za-z0-9_-]+", "-", label) if label else f"cell-{chunk_index + 1}"
            rel = f"{figure_dir(doc.rel)}{stem}-output-{n_output}.{IMAGE_TYPES[image_type]}"
            payload = data[image_type]
            out.assets[rel] = (_as_text(payload).encode("utf-8") if image_type == "image/svg+xml"
                               else base64.b64decode(_as_text(payload)))
            out.figures.append(rel)
            src = posixpath.relpath(rel, posixpath.dirname(page) or ".")
            alt_text = str(alt).replace("[", r"\[").replace("]", r"\]").replace("\n", " ")
            if panels is not None:
                if panels_at < 0:
                    panels_at = len(out.blocks)
                    out.blocks.append("")  # the layout goes here once every panel is known
                panels.append((alt_text, src))
                continue
            # no indentation inside: md_in_html would turn it into a <br>; the caption may hold math
            lines = ['<figure markdown="span">', f"![{alt_text}]({src})"]
            if caption:
                lines.append(f'<figcaption markdown="span">{caption}</figcaption>')
            lines.append("</figure>")
            out.blocks.append("\n".join(lines))
        elif "text/html" in data:
            out.blocks.append(_as_text(data["text/html"]).strip())
        elif "text/markdown" in data:
            out.blocks.append(markdown_links(_as_text(data["text/markdown"]).strip()))
        elif "text/plain" in data:
            text = _as_text(data["text/plain"])
            out.blocks.append(markdown_links(text.strip()) if asis else _text_block(text))
    flush()
    if panels:
        out.blocks[panels_at] = _layout(label, panels, subcaps, ncol, caption)
    if table_caption and len(out.blocks) > table_at:
        out.blocks.insert(table_at, f'<figure class="lab-table" markdown="block">\n'
                                    f'<figcaption markdown="span">{table_caption}</figcaption>')
        out.blocks.append("</figure>")


def _layout(label: str | None, panels: list[tuple[str, str]], subcaps: list[str], ncol: int,
            caption: str | None) -> str:
    """Quarto's figure layout: a grid of `ncol` columns, panel N with id `<label>-N` and caption "(a) ...",
    then the figure's own caption. md_in_html keeps the image paths relative to the page."""
    grid = f"display:grid;grid-template-columns:repeat({ncol},minmax(0,1fr));gap:0.8em;align-items:end"
    lines = ['<figure class="lab-layout" markdown="block">',
             f'<div class="lab-panels" style="{grid}" markdown="block">']
    for n, (alt, src) in enumerate(panels):
        sub_id = f' id="{html.escape(label, quote=True)}-{n + 1}"' if label and subcaps else ""
        lines += [f'<figure{sub_id} markdown="span">', f"![{alt}]({src})"]
        if n < len(subcaps):
            lines.append(f'<figcaption markdown="span">({chr(ord("a") + n)}) {subcaps[n]}</figcaption>')
        lines.append("</figure>")
    lines.append("</div>")
    if caption:
        lines.append(f'<figcaption markdown="span">{caption}</figcaption>')
    lines.append("</figure>")
    return "\n".join(lines)


# Quarto's cross-reference kinds: chunk label prefix -> (caption option, name in the text); sections are
# headings with a `{#sec-x}` id (publish.markdown numbers them)
CROSSREF_KINDS = {"fig": ("fig-cap", "Figure"), "tbl": ("tbl-cap", "Table"), "sec": (None, "Section")}
_CROSSREF = re.compile(r"(?P<open>\[)?(?<![\w@./:])(?P<neg>-?)@(?P<label>(?P<kind>[a-z]+)-[\w-]*\w)"
                       r"(?(open)\](?!\())")


def subcaptions(chunk: Chunk) -> list[str]:
    value = chunk.options.get("fig-subcap")
    return [str(v) for v in value] if isinstance(value, list) else []


def crossref_numbers(doc: Document) -> dict[str, str]:
    """label -> number ("2", "1 (a)" for a panel, "2.1" for a section) for every chunk labelled `fig-*` /
    `tbl-*` (counted per kind in document order, as Quarto numbers them; a text chunk cannot carry such a
    label, see publish.sources), each panel `fig-x-N` of a chunk with `fig-subcap`, and every `sec-*` heading."""
    counts: dict[str, int] = {}
    numbers: dict[str, str] = {}
    for chunk in doc.chunks:
        label = str(chunk.options.get("label") or "")
        kind = label.split("-", 1)[0]
        if chunk.kind == "code" and "-" in label and kind in ("fig", "tbl"):
            counts[kind] = counts.get(kind, 0) + 1
            numbers[label] = str(counts[kind])
            for n, _ in enumerate(subcaptions(chunk)):
                numbers[f"{label}-{n + 1}"] = f"{counts[kind]} ({chr(ord('a') + n)})"
    numbers.update(markdown.section_numbers(doc))
    return numbers


def resolve_crossrefs(doc: Document, text: str, first_line: int, numbers: dict[str, str]) -> str:
    """`@fig-x` -> `[Figure 2](#fig-x)` (Quarto's text for it), `[-@sec-x]` -> `[2](#sec-x)`; an unknown
    label is an error with file:line."""
    from publish.links import _mask_code

    masked = _mask_code(text)
    pieces, last = [], 0
    for m in _CROSSREF.finditer(masked):
        if m.group("kind") not in CROSSREF_KINDS:
            continue  # an e-mail-like word or a citation key, not a cross-reference
        label = m.group("label")
        line = first_line + text.count("\n", 0, m.start())
        if label not in numbers:
            where = (f"heading has `{{#{label}}}`" if m.group("kind") == "sec"
                     else f"chunk has `#| label: {label}`")
            raise SourceError(doc.path, line, f"cross-reference @{label}: no {where} in this document")
        name = CROSSREF_KINDS[m.group("kind")][1]
        shown = numbers[label] if m.group("neg") else f"{name}&nbsp;{numbers[label]}"
        pieces.append(text[last:m.start()])
        pieces.append(f"[{shown}](#{label})")
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)


def notebook_markdown(doc: Document, notebook, sources: set[str], project: dict) -> Page:
    """Convert `doc` (with outputs from `notebook`, or none) into a Page body; raises SourceError on bad links,
    unknown cross-references or citation keys, and Quarto markdown we do not render (publish.markdown)."""
    from publish.links import _mask_code

    cells = {}
    if notebook is not None:
        for cell in notebook.cells:
            index = cell.get("metadata", {}).get("lab", {}).get("chunk")
            if index is not None:
                cells[index] = cell
    out = _Converted()
    links_to: list[str] = []
    numbers = crossref_numbers(doc)
    citer = citations.Citer(doc, citations.bibliography_paths(doc, project))
    footnotes: list[str] = []
    footnote_count = [0]

    def markdown_links(text: str, line: int) -> str:
        text = resolve_crossrefs(doc, text, line, numbers)
        text = citations.resolve(citer, text, _mask_code(text), line)
        rewritten = rewrite_links(doc, text, line, sources)
        links_to.extend(d for d in rewritten.links_to if d not in links_to)
        for dest, path in rewritten.files.items():
            out.assets[dest] = path.read_bytes()
        return rewritten.text

    for index, chunk in enumerate(doc.chunks):
        if chunk.kind == "markdown":
            markdown.check_inline(doc, chunk)
            markdown.check_unsupported(chunk.text, doc.path, chunk.line)
            values = cells[index].get("metadata", {}).get("lab", {}).get("inline") if index in cells else None
            text = markdown_links(markdown.substitute_inline(chunk.text, values), chunk.line)
            text = markdown.heading_markdown(text, doc.path, chunk.line)
            text = markdown.callouts(text, doc.path, chunk.line)
            text, notes = markdown.inline_footnotes(text, footnote_count)
            footnotes.extend(notes)
            out.blocks.append(text)
            continue
        options = options_for(doc, chunk, project)
        if options["include"] is False:
            continue
        if chunk.options.get("label"):
            out.blocks.append(f'<a id="{html.escape(str(chunk.options["label"]), quote=True)}"></a>')
        code = code_markdown(chunk, options)
        if code:
            out.blocks.append(code)
        cell = cells.get(index)
        if cell is not None and options["output"] is not False:
            outputs_markdown(doc, index, chunk, options, cell.get("outputs", []), out,
                             lambda text, line=chunk.line: markdown_links(text, line), numbers)
    # Quarto's appendix: References, then Footnotes (Python-Markdown puts its list at the marker)
    out.blocks.append(citer.references())
    out.blocks.extend(footnotes)
    body = "\n\n".join(b for b in out.blocks if b)
    if re.search(r"\[\^[^\]\s]+\]", _mask_code(body)):
        body += ('\n\n<h2 class="lab-appendix-heading" id="footnotes">Footnotes</h2>\n\n'
                 + FOOTNOTES_MARKER)
    return Page(doc=doc, status="static", markdown=body + "\n", assets=out.assets, figures=out.figures,
                links_to=links_to)


# ---------------------------------------------------------------------------------------------- building


def _matches(doc: Document, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(doc.rel, p) or fnmatch.fnmatch(doc.path.name, p) for p in patterns)


def _from_entry(doc: Document, entry: cache.Entry, sources: set[str], project: dict, status: str,
                seconds: float) -> Page:
    converting = time.monotonic()
    page = notebook_markdown(doc, entry.notebook, sources, project)
    page.convert_seconds = time.monotonic() - converting
    page.status = status
    page.seconds = seconds
    page.executed_at = entry.record.get("executed_at")
    seen = set()
    for run in entry.record.get("runs") or []:
        key = (run.get("name"), run.get("key"))
        if key not in seen:
            seen.add(key)
            page.runs.append({"name": run.get("name"), "key": run.get("key")})
    return page


def _failed(doc: Document, error: Exception, seconds: float, sources: set[str], project: dict) -> Page:
    """The page shown under the failure banner: the last good execution's outputs when they belong to this
    very source (a dependency broke it), else the source without outputs."""
    page, last_good = None, None
    entry = cache.load(doc)
    if entry is not None and entry.record.get("source_sha256") == (doc.source_sha256 or cache.sha256(doc.path)):
        try:
            page = notebook_markdown(doc, entry.notebook, sources, project)
            last_good = entry.record.get("executed_at")
        except SourceError:
            page = None
    if page is None:
        try:
            page = notebook_markdown(doc, None, sources, project)
        except SourceError:
            page = Page(doc=doc, status="failed")
    page.status, page.seconds, page.error = "failed", seconds, str(error)
    page.shows_last_good = last_good is not None
    page.executed_at = last_good
    return page


def _unfrozen(doc: Document) -> bool:
    """`execute: freeze: false` in the front matter: a page listing the project (Home, Lore, Runs). Quarto
    executes it at every render; we do when the page's own inputs changed (the cache) or when any source or
    run of the project did (which its chunks read through publish.listings)."""
    return (doc.meta.get("execute") or {}).get("freeze") is False


def _listing_digest(root: Path) -> str:
    import hashlib

    from publish.generated import store_dir
    from publish.listings import thumbnail
    from publish.sources import discover, read_document

    h = hashlib.sha256()
    for path in discover(root):  # what the listings show of each source: front matter and first figure
        try:
            doc = read_document(path, root)
            shown = repr((doc.rel, sorted((k, str(v)) for k, v in doc.meta.items()), thumbnail(doc)))
        except SourceError as e:
            shown = str(e)
        h.update(shown.encode() + b"\0")
    plan = root / "_runs.yml"
    if plan.is_file():
        h.update(cache.sha256(plan).encode())
    store = store_dir(root)
    if store.is_dir():
        for run in sorted(store.glob("*.h5")):
            st = run.stat()
            h.update(f"{run.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _digest_path(doc: Document) -> Path:
    notebook = cache.entry_paths(doc)[1]
    return notebook.with_name(notebook.name + ".listing")


def _saved_digest(doc: Document) -> str | None:
    try:
        return _digest_path(doc).read_text()
    except OSError:
        return None


def build_pages(
    root: Path | str,
    docs: list[Document],
    *,
    jobs: int = 1,
    force: Iterable[str] = (),
    keep_going: bool = False,
    on_page: Callable[[Page], None] | None = None,
    on_start: Callable[[Document, str], None] | None = None,
    only: Iterable[Document] | None = None,
    timeout: float | None = None,
    progress: bool = False,
    before_execute: Callable[[list[Document]], None] | None = None,
) -> list[Page]:
    """Execute stale documents (`jobs` at a time, one kernel each), reuse fresh ones, convert all.

    `force`: fnmatch patterns (against the root-relative path or the file name) of documents to execute
    regardless of the cache. `only`: when given, documents outside it are taken from the cache as they are,
    even if stale (those never executed are executed). Without `keep_going` the first failure stops
    scheduling further executions; documents never started are left out of the result. Returns pages in
    the order of `docs`; `on_page` is called (from this thread) as each one finishes, `on_start(doc, reason)`
    as each execution is scheduled (a long one, e.g. a page that trains a run, is visibly under way). `timeout`: seconds
    a chunk may go without progress (default: each document's `execute: timeout`; 0: none). `progress`: a tqdm
    bar over documents (stderr). `before_execute(docs)`: called once with the documents about to execute,
    before the first starts (`lab render` trains the runs they need there). Ctrl-C interrupts the running
    kernels, shuts them down and re-raises KeyboardInterrupt; finished cache entries stay.
    """
    root = Path(root).resolve()
    project = load_project(root)
    sources = {d.rel for d in docs}
    force = list(force)
    only_rels = None if only is None else {d.rel for d in only}
    results: dict[str, Page] = {}
    failed = threading.Event()
    bar = tqdm(total=len(docs), unit="doc", desc="pages", disable=not progress, leave=False)

    def finish(page: Page) -> None:
        results[page.doc.rel] = page
        bar.update(1)
        if page.status == "failed":
            failed.set()
        if on_page is not None:
            on_page(page)

    stale: list[tuple[Document, str]] = []
    deferred: list[Document] = []
    for doc in docs:
        if failed.is_set() and not keep_going:
            break
        started = time.monotonic()
        try:
            if not doc.has_code:
                page = notebook_markdown(doc, None, sources, project)
                page.seconds = time.monotonic() - started
                finish(page)
                continue
            if _unfrozen(doc) and (only_rels is None or doc.rel in only_rels):
                deferred.append(doc)  # decided after the others ran: they may add runs it lists
                continue
            reason = "forced" if _matches(doc, force) else cache.stale_reason(doc)
            # outside `only`, a stale entry is still shown as it is (the caller chose not to execute it)
            keep_stale = only_rels is not None and doc.rel not in only_rels and reason != "forced"
            entry = cache.load(doc) if reason is None or keep_stale else None
            if entry is None:
                stale.append((doc, reason or "cached notebook unreadable"))
                continue
            page = _from_entry(doc, entry, sources, project, "reused", time.monotonic() - started)
            page.reason = f"stale, not executed: {reason}" if reason else None
            finish(page)
        except SourceError as e:
            finish(_failed(doc, e, time.monotonic() - started, sources, project))

    def run(doc: Document) -> Page:
        started = time.monotonic()
        try:
            digest = _listing_digest(root) if _unfrozen(doc) else None
            execution = execute(doc, project=project, timeout=timeout)
            cache.store(doc, execution)
            if digest is not None:
                _digest_path(doc).write_text(digest)
            entry = cache.Entry(record=cache.load_record(doc) or {}, notebook=execution.notebook)
            page = _from_entry(doc, entry, sources, project, "executed", time.monotonic() - started)
            page.execute_seconds = execution.seconds
            page.train_seconds = sum(float(r.get("train_seconds") or 0) for r in execution.runs)
            return page
        except (ExecutionError, SourceError, OSError) as e:
            return _failed(doc, e, time.monotonic() - started, sources, project)
        except Exception as e:  # a bug of ours must fail this page, not the whole render
            error = f"{doc.path}: internal error: {type(e).__name__}: {e}"
            return _failed(doc, RuntimeError(error), time.monotonic() - started, sources, project)

    pending = list(stale)
    reasons = {d.rel: r for d, r in stale}
    if pending and before_execute is not None and (keep_going or not failed.is_set()):
        before_execute([d for d, _ in pending])
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="lab-exec")
    running: dict[Future, Document] = {}

    def drain(pending: list) -> None:
        while pending or running:
            while pending and len(running) < max(1, jobs) and (keep_going or not failed.is_set()):
                doc, why = pending.pop(0)
                if on_start is not None:
                    on_start(doc, why)
                running[pool.submit(run, doc)] = doc
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                page = future.result()
                page.reason = reasons.get(page.doc.rel)
                finish(page)

    try:
        drain(pending)
        # the listing pages (freeze: false) last, once every run the others trained is in the store
        later = []
        for doc in deferred:
            if failed.is_set() and not keep_going:
                break
            started = time.monotonic()
            try:
                reason = "forced" if _matches(doc, force) else cache.stale_reason(doc)
                if reason is None and _listing_digest(root) != _saved_digest(doc):
                    reason = "execute: freeze: false, and the project's sources or runs changed"
                entry = cache.load(doc) if reason is None else None
                if entry is None:
                    later.append((doc, reason or "cached notebook unreadable"))
                    reasons[doc.rel] = reason or "cached notebook unreadable"
                    continue
                finish(_from_entry(doc, entry, sources, project, "reused", time.monotonic() - started))
            except SourceError as e:
                finish(_failed(doc, e, time.monotonic() - started, sources, project))
        drain(later)
    except KeyboardInterrupt:
        _stop(pool, running)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return [results[d.rel] for d in docs if d.rel in results]


def _stop(pool: ThreadPoolExecutor, running: dict) -> None:
    """Ctrl-C: interrupt every kernel, give the workers a moment to shut them down (each removes its
    connection file), kill what still runs, and never start another document."""
    pool.shutdown(wait=False, cancel_futures=True)
    abort_all()
    deadline = time.monotonic() + 2.5
    while active_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    if active_count():  # a chunk that ignores SIGINT (a C loop): its kernel is killed
        abort_all(kill=True)
        wait(list(running), timeout=2)
