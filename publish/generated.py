"""Pages the renderer adds around the executed documents, as a docs tree of markdown + files.

The Log index (log.qmd's body + feed link; the engine adds the post list, categories and archive), redirects
from the site's old URLs, and on every page its backlinks ("Mentioned in") and, on executed pages, an
"Executed … · runs used" footer. Home cards, latest entries, the lore list and the Runs table are written by
the pages' own Python chunks (publish/listings.py), so `quarto render` makes them too.

Pure text generation: no site-engine calls here, so the engine can change without touching this.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from publish.layout import docs_path, legacy_redirects, url_path

RUN_FILE = re.compile(r"^(?P<name>.+)-(?P<key>[0-9a-f]{16})\.h5$")
# Leading "YYYY-MM-DD-HHMM-" of a log file name: the blog URL already carries the date.
DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-\d{4})?-")
EXCERPT = "<!-- more -->"
LATEST_ON_HOME = 5
FEED_FILE = "feed_rss_created.xml"

# Hyper-parameters worth a glance on the Runs page, in display order. Dotted paths of the experiment configs
# come first; for any other layout the last path component is matched (the run file is plain JSON, and this
# package does not import the science).
SUMMARY_PATHS = (
    "train.steps", "train.batch_size", "train.seq_len", "optim.lr", "optim.weight_decay", "optim.schedule",
    "optim.clip", "model.d_model", "model.n_layers", "model.tied", "model.init_std", "precision.dtype",
    "train.init_seed", "train.data_seed", "tokenizer.vocab_size", "record.rows", "smoke",
)
SUMMARY_KEYS = (
    "steps", "total_steps", "batch_size", "batch", "seq_len", "lr", "learning_rate", "weight_decay",
    "beta1", "beta2", "eps", "vocab_size", "vocab", "d_model", "hidden_dim", "dim", "n_layers",
    "num_layers", "n_heads", "num_heads", "tied", "dtype", "corpus", "seed",
)


@dataclass
class RunInfo:
    path: Path
    name: str
    key: str
    description: str = ""
    created: str = ""
    steps_total: int | None = None
    steps_recorded: int | None = None
    size: int = 0
    summary: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # unreadable file: listed with the reason instead of failing the site


# --------------------------------------------------------------------------- helpers


def rel_link(from_docs: str, to_docs: str) -> str:
    """Relative link between two docs paths (mkdocs resolves .md links relative to the source)."""
    anchor = ""
    if "#" in to_docs:
        to_docs, anchor = to_docs.split("#", 1)
        anchor = "#" + anchor
    return posixpath.relpath(to_docs, posixpath.dirname(from_docs) or ".") + anchor


def page_path(page) -> str:
    return docs_path(page.doc.rel)


def title_of(page) -> str:
    return str(page.doc.meta.get("title") or page.doc.slug)


def when(value) -> str:
    """Minutes are enough on a page; ISO strings (cache records) are shown the same way, with zone."""
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        zone = parsed.strftime(" %Z") if parsed.tzinfo else ""
        return parsed.strftime("%Y-%m-%d %H:%M") + zone
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value or "")


def escape_md(text: str) -> str:
    """Titles inside link text: keep brackets from closing the link."""
    return text.replace("[", r"\[").replace("]", r"\]")


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def post_slug(doc) -> str:
    return DATE_PREFIX.sub("", doc.slug) or doc.slug


def lore_pages(pages) -> list:
    lore = [p for p in pages if p.doc.kind == "lore"]
    return sorted(lore, key=lambda p: (p.doc.meta.get("order", 1_000_000), title_of(p).lower()))


# --------------------------------------------------------------------------- runs


def store_dir(root: Path) -> Path:
    """The run store: $LAB_STORE or <root>/store. The same rule as `experiments.paths.store_dir` (and
    `experiments.rig.corpus.data_dir`), spelled again because publish never imports experiments."""
    return Path(os.environ.get("LAB_STORE") or Path(root) / "store")


def _config_summary(config_json: str) -> list[tuple[str, str]]:
    try:
        config = json.loads(config_json)
    except (TypeError, ValueError):
        return []
    leaves: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, str | int | float | bool) or value is None:
            leaves[prefix] = value

    walk("", config)
    chosen = [(p, leaves[p]) for p in SUMMARY_PATHS if p in leaves]
    if not chosen:
        by_last: dict[str, tuple[str, object]] = {}
        for path, value in leaves.items():
            by_last.setdefault(path.rsplit(".", 1)[-1], (path, value))
        chosen = [(k, by_last[k][1]) for k in SUMMARY_KEYS if k in by_last]
    if not chosen:  # unknown config layout: show the first few scalars rather than nothing
        chosen = list(leaves.items())[:8]
    return [(k, json.dumps(v) if isinstance(v, bool) or v is None else str(v)) for k, v in chosen]


def list_runs(store: Path) -> list[RunInfo]:
    """Every complete run `<name>-<key>.h5` in the store (attributes per ARCHITECTURE.md)."""
    if not store.is_dir():
        return []
    import h5py

    runs = []
    for path in sorted(store.glob("*.h5")):
        m = RUN_FILE.match(path.name)
        if not m:
            continue
        info = RunInfo(path=path, name=m["name"], key=m["key"], size=path.stat().st_size)
        try:
            with h5py.File(path, "r") as f:
                attrs = f.attrs
                if int(attrs.get("complete", 0)) != 1:
                    continue  # still being written (or abandoned): not a run
                info.name = _text(attrs.get("name", info.name))
                info.key = _text(attrs.get("key", info.key))
                info.description = _text(attrs.get("description", ""))
                info.created = _text(attrs.get("created", ""))
                info.steps_total = _int(attrs.get("steps_total"))
                info.steps_recorded = _int(attrs.get("steps_recorded"))
                info.summary = _config_summary(_text(attrs.get("config", "")))
        except (OSError, ValueError, KeyError) as e:
            info.error = f"{path.name}: unreadable ({e})"
        runs.append(info)
    runs.sort(key=lambda r: (r.created, r.name), reverse=True)
    return runs


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- page decorations


def backlinks(pages) -> dict[str, list]:
    """docs path → pages linking to it (each once, in title order)."""
    known = {page_path(p): p for p in pages}
    found: dict[str, dict[str, object]] = {}
    for p in pages:
        src = page_path(p)
        for target in p.links_to or ():
            target = target.split("#", 1)[0]
            if target != src and target in known:
                found.setdefault(target, {})[src] = p
    return {t: sorted(srcs.values(), key=lambda q: title_of(q).lower()) for t, srcs in found.items()}


def mentioned_in(path: str, sources: list) -> str:
    if not sources:
        return ""
    items = "\n".join(f"- [{escape_md(title_of(q))}]({rel_link(path, page_path(q))})" for q in sources)
    return f'\n\n<div class="lab-backlinks" markdown>\n\n## Mentioned in\n\n{items}\n\n</div>\n'


def executed_footer(path: str, page, runs_path: str) -> str:
    if page.status not in ("executed", "reused") or not page.executed_at:
        return ""
    used = [
        f"[{r.get('name', '?')} `{str(r.get('key', ''))[:8]}`]({rel_link(path, runs_path + '#run-' + str(r.get('key')))})"
        for r in (page.runs or ())
    ]
    runs_text = ", ".join(used) if used else "none"
    return (f'\n\n<div class="lab-executed" markdown>\nExecuted {when(page.executed_at)} · '
            f"runs used: {runs_text}\n</div>\n")


def failed_banner(page) -> str:
    if page.status != "failed":
        return ""
    error = (page.error or "unknown error").rstrip()
    body = "\n".join("    " + line for line in error.splitlines())
    shown = (f"Below: the outputs of its last good execution ({when(page.executed_at)})."
             if getattr(page, "shows_last_good", False) else "Below: the source, without outputs.")
    return f'!!! failure "This page failed to execute"\n\n    ```text\n{body}\n    ```\n\n    {shown}\n\n'


def with_excerpt(markdown: str, description: str | None) -> str:
    """Blog excerpts: the author's `<!-- more -->`, else the description as a lead, else the first paragraph."""
    if EXCERPT in markdown:
        return markdown
    if description:
        return f"*{description.strip()}*\n\n{EXCERPT}\n\n{markdown}"
    blocks = re.split(r"\n\s*\n", markdown.strip(), maxsplit=1)
    first = blocks[0]
    if len(blocks) == 2 and not first.lstrip().startswith(("```", "<", "!", "#", "$$", "|")):
        return f"{first}\n\n{EXCERPT}\n\n{blocks[1]}"
    return markdown


def front_matter(page) -> dict:
    """Engine-neutral metadata for the docs page (title, date, categories, description, slug)."""
    meta = page.doc.meta
    out: dict = {"title": title_of(page)}
    if meta.get("description"):
        out["description"] = meta["description"]
    if page.doc.kind == "log":
        date = meta.get("date")
        if isinstance(date, dt.datetime):
            out["date"] = date.replace(second=0, microsecond=0)
        elif date is not None:
            out["date"] = date
        out["slug"] = post_slug(page.doc)
        if meta.get("categories"):
            out["categories"] = list(meta["categories"])
    return out


def with_front_matter(meta: dict, body: str) -> str:
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{head}---\n\n{body.strip()}\n"


# --------------------------------------------------------------------------- listing pages


# --------------------------------------------------------------------------- the docs tree


def docs_tree(root: Path, pages: list) -> dict[str, bytes | str]:
    """docs path → content (markdown as str, assets as bytes) for the whole site."""
    root = Path(root)
    by_path = {page_path(p): p for p in pages}
    links_in = backlinks(pages)

    home, log_index, lore_index, runs_page = (docs_path(x) for x in ("index.qmd", "log.qmd", "lore.qmd", "runs.qmd"))
    tree: dict[str, bytes | str] = {}
    for p in pages:
        for asset, data in (p.assets or {}).items():
            tree[asset] = data

    listing = {home: "Home", log_index: "Log", lore_index: "Lore", runs_page: "Runs"}
    for path in set(by_path) | set(listing):
        page = by_path.get(path)
        meta = front_matter(page) if page else {"title": listing[path]}
        body = (failed_banner(page) + (page.markdown or "")) if page else ""
        if page is not None and page.doc.kind == "log":
            body = with_excerpt(body, page.doc.meta.get("description"))
        # Home, Lore and Runs generate their lists themselves (publish/listings.py, from Python chunks), so
        # `quarto render` produces them too; the feed link is the blog engine's own
        if path == log_index:
            # raw HTML: the feed is made by the engine, so it is not a docs file a link checker knows
            body += f'\n\n<a href="{rel_link(path, FEED_FILE)}" class="lab-feed">RSS feed</a> of all entries.\n'
        if page is not None:
            body += executed_footer(path, page, runs_page)
        if path not in listing:  # the top pages are linked from every nav bar: backlinks there are noise
            body += mentioned_in(path, links_in.get(path, []))
        # Bodies carry no title; an explicit H1 keeps the document's own title (the engine would
        # otherwise show the nav label, e.g. "Home") and gives blog excerpts their heading.
        body = f"# {meta['title']}\n\n{body.lstrip()}"
        tree[path] = with_front_matter(meta, body)
    return tree


def redirects(pages: list) -> dict[str, str]:
    """Site path -> site path: `log.html` to the blog index (Quarto's URL of log.qmd), and every page's
    directory URL from before the Quarto URL scheme to its `.html` URL (publish/layout.py)."""
    out = {"log.html": "log/index.html"}
    for p in pages:
        date = p.doc.meta.get("date") if p.doc.kind == "log" else None
        for old in legacy_redirects(p.doc.rel, post_slug(p.doc), date):
            out[old] = url_path(p.doc.rel) if p.doc.rel != "log.qmd" else "log/index.html"
    return out


def write_tree(tree: dict[str, bytes | str], docs_dir: Path) -> None:
    for rel, content in tree.items():
        target = docs_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
