"""The generated parts of the top pages, written as markdown by Python chunks of the pages themselves.

`index.qmd`, `lore.qmd` and `runs.qmd` call these from an ``output: asis`` chunk, so `quarto render` and
`lab render` produce the same Home cards, latest entries, lore list and Runs table:

```{python}
#| echo: false
#| output: asis
from publish import listings
print(listings.home())
```

Everything is read from the sources (front matter, chunk labels), the run plan `_runs.yml`, the document
cache (when `lab render` left one) and the run store (`LAB_STORE`, default `<root>/store`), never from a
renderer. Links are to sources (`lore/x.qmd`) relative to the calling page, which both renderers resolve.
Thumbnails point at the first figure of a lore page where both renderers put it
(`lore/<stem>_files/figure-html/<label>-output-1.png`, see publish/layout.py).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import posixpath
from pathlib import Path

from publish import generated
from publish.layout import figure_dir
from publish.sources import SourceError, discover, find_root, read_document

LATEST_ON_HOME = generated.LATEST_ON_HOME


def _root(root) -> Path:
    return Path(root).resolve() if root is not None else find_root()


def _documents(root: Path) -> list:
    docs = []
    for path in discover(root):
        try:
            docs.append(read_document(path, root))
        except SourceError:
            continue  # that page fails on its own; a listing must not
    return docs


def _link(here: str, source: str) -> str:
    return posixpath.relpath(source, posixpath.dirname(here) or ".")


def _title(doc) -> str:
    return str(doc.meta.get("title") or doc.slug)


def thumbnail(doc) -> str | None:
    """Site path of the first figure of `doc` (a labelled chunk with a caption or a `fig-` label)."""
    for chunk in doc.chunks:
        label = str(chunk.options.get("label") or "")
        if chunk.kind == "code" and label and (label.startswith("fig-") or chunk.options.get("fig-cap")) \
                and chunk.options.get("eval", True) is not False:
            return f"{figure_dir(doc.rel)}{label}-output-1.png"
    return None


def lore_docs(docs: list) -> list:
    """Lore pages in reading order: front matter `order:` first, then by title."""
    lore = [d for d in docs if d.kind == "lore"]
    return sorted(lore, key=lambda d: (d.meta.get("order", 1_000_000), _title(d).lower()))


def log_docs(docs: list) -> list:
    logs = sorted((d for d in docs if d.kind == "log"), key=lambda d: d.rel)
    return sorted(logs, key=lambda d: d.meta.get("date") or dt.datetime.min, reverse=True)


def home(here: str = "index.qmd", root=None, latest: int = LATEST_ON_HOME) -> str:
    """Findings cards (lore pages with their first figure) and the latest log entries."""
    root = _root(root)
    docs = _documents(root)
    out = []
    lore = lore_docs(docs)
    if lore:
        cards = []
        for d in lore:
            target = _link(here, d.rel)
            thumb = thumbnail(d)
            title = generated.escape_md(_title(d))
            if thumb:
                img = (f'<img src="{html.escape(_link(here, thumb), quote=True)}" '
                       f'alt="{html.escape(_title(d), quote=True)}" loading="lazy">')
                head = f"[{img}]({target})"
            else:
                head = '<span class="lab-thumb--none" data-search-exclude>no figure yet</span>'
            desc = d.meta.get("description") or ""
            cards.append(f"-   {head}\n\n    **[{title}]({target})**\n\n    {desc}".rstrip())
        out.append('## Findings\n\n<div class="grid cards lab-findings" markdown="1">\n\n'
                   + "\n\n".join(cards) + "\n\n</div>\n")
    logs = log_docs(docs)
    if logs:
        items = "\n".join(f"- {generated.when(d.meta.get('date'))} · "
                          f"[{generated.escape_md(_title(d))}]({_link(here, d.rel)})" for d in logs[:latest])
        out.append(f"## Latest log entries\n\n{items}\n\n[All entries →]({_link(here, 'log.qmd')})\n")
    return "\n".join(out)


def lore_index(here: str = "lore.qmd", root=None) -> str:
    """Every lore page with its description, in reading order."""
    lore = lore_docs(_documents(_root(root)))
    if not lore:
        return "*No lore pages yet.*\n"
    lines = []
    for d in lore:
        line = f"- [{generated.escape_md(_title(d))}]({_link(here, d.rel)})"
        desc = d.meta.get("description")
        lines.append(f"{line} — {desc}" if desc else line)
    return "\n".join(lines) + "\n"


def _used_by(root: Path, docs: list, runs: list) -> dict[str, list]:
    """Run key -> documents using it: exact keys from the document cache where `lab render` left entries,
    else by the run plan's requests (a run named N is used by each source requesting N or a sweep of N)."""
    by_rel = {d.rel: d for d in docs}
    used: dict[str, list] = {}

    def add(key: str, doc) -> None:
        users = used.setdefault(key, [])
        if doc not in users:
            users.append(doc)

    cache_root = root / ".lab" / "cache"
    if cache_root.is_dir():
        for path in cache_root.rglob("*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or record.get("source") not in by_rel:
                continue
            for r in record.get("runs") or []:
                if isinstance(r, dict) and "key" in r:
                    add(str(r["key"]), by_rel[record["source"]])
    try:
        from publish import plan

        requests = plan.load(root)
    except Exception:  # a damaged plan: the cache entries (if any) still say who used what
        requests = {}
    for rel, reqs in requests.items():
        doc = by_rel.get(rel)
        if doc is None:
            continue
        for req in reqs or ():
            name = req.get("name") or req.get("sweep")
            for r in runs:
                if r.name == name or (req.get("sweep") and r.name.startswith(f"{name}")):
                    add(r.key, doc)
    return used


def runs(here: str = "runs.qmd", root=None, store=None) -> str:
    """Every complete run in the store, newest first, with its key, size, a config summary and its users."""
    root = _root(root)
    runs_found = generated.list_runs(Path(store) if store else generated.store_dir(root))
    if not runs_found:
        return "*No complete runs in the store yet.*\n"
    docs = _documents(root)
    used_by = _used_by(root, docs, runs_found)
    out = [f"{len(runs_found)} complete run{'s' if len(runs_found) != 1 else ''} in the store, newest first.\n"]
    for r in runs_found:
        out.append(f"## {r.name} `{r.key[:8]}` {{#run-{r.key}}}\n")
        if r.error:
            out.append(f"*{r.error}*\n")
            continue
        if r.description:
            out.append(f"{r.description}\n")
        facts = [f"key `{r.key}`", f"created {generated.when(r.created) if r.created else '?'}"]
        if r.steps_total is not None:
            recorded = "" if r.steps_recorded is None else f" ({r.steps_recorded:,} recorded)"
            facts.append(f"{r.steps_total:,} steps{recorded}")
        facts.append(f"{generated.size_text(r.size)} on disk")
        out.append(" · ".join(facts) + "\n")
        if r.summary:
            chips = " ".join(f"`{k}={v}`" for k, v in r.summary)
            out.append(f'<div class="lab-run" markdown="1">\n{chips}\n</div>\n')
        users = sorted(used_by.get(r.key, []), key=lambda d: _title(d).lower())
        used = ", ".join(f"[{generated.escape_md(_title(d))}]({_link(here, d.rel)})" for d in users)
        out.append(f"Used by: {used or 'no page'}\n")
    return "\n".join(out)

