"""`lab render`: sources → executed pages → generated docs tree → site, swapped in only on success.

Steps: read + validate every source; execute what changed (publish.pages, with the document cache);
print one line per document and a summary; add the generated pages; build the site into a temporary
directory next to `site/`; swap it into place. Any failure leaves the previous `site/` byte-identical.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from publish import generated, site
from publish.layout import docs_path
from publish.pages import build_pages
from publish.sources import SourceError, discover, read_document

STAMP = ".lab-build"  # inside the built site: digest of what it was built from


class RenderError(Exception):
    """A problem found before or after execution (validation, site build); message names the file."""


# --------------------------------------------------------------------------- validation


def validate(docs: list) -> None:
    """Duplicate docs paths / URLs and log dates, each error naming the files involved."""
    seen_paths: dict[str, object] = {}
    seen_urls: dict[tuple, object] = {}
    for doc in docs:
        path = docs_path(doc.rel)
        if path in seen_paths:
            raise RenderError(f"{doc.rel}: renders to {path}, like {seen_paths[path].rel}; rename one of them")
        seen_paths[path] = doc
        if doc.kind != "log":
            continue
        date = doc.meta.get("date")
        if not isinstance(date, dt.datetime):
            raise RenderError(f"{doc.rel}: log entry needs a date with time (\"YYYY-MM-DD HH:MM\"), got {date!r}")
        url = (date.date(), generated.post_slug(doc))
        if url in seen_urls:
            raise RenderError(f"{doc.rel}: same date and slug as {seen_urls[url].rel} (their URLs would collide)")
        seen_urls[url] = doc


def select(docs: list, targets: Iterable[str | Path] | None, root: Path) -> list | None:
    """The documents named by `targets` (paths, relative to cwd or root), or None for all."""
    if not targets:
        return None
    by_path = {doc.path.resolve(): doc for doc in docs}
    chosen = []
    for t in targets:
        p = Path(t)
        candidates = [p.resolve()] if p.is_absolute() else [(Path.cwd() / p).resolve(), (root / p).resolve()]
        doc = next((by_path[c] for c in candidates if c in by_path), None)
        if doc is None:
            raise RenderError(f"{t}: not a source of this project (see project.render in _quarto.yml)")
        if doc not in chosen:
            chosen.append(doc)
    return chosen


# --------------------------------------------------------------------------- output


def page_line(page) -> str:
    line = f"{page.status:<9} {page.doc.rel}  {page.seconds:.1f}s"
    reason = getattr(page, "reason", None)  # why it executed, or that it is stale but kept as cached
    return f"{line}  ({reason})" if reason and page.status != "failed" else line


def summary_line(pages: list, seconds: float) -> str:
    counts = {s: sum(p.status == s for p in pages) for s in ("executed", "reused", "static", "failed")}
    extra = f", {counts['static']} static" if counts["static"] else ""
    noun = "document" if len(pages) == 1 else "documents"
    return (f"{len(pages)} {noun}: {counts['executed']} executed, {counts['reused']} reused{extra}, "
            f"{counts['failed']} failed in {seconds:.1f} s")


def failure_report(page) -> str:
    return f"\nFAILED {page.doc.rel}\n{(page.error or 'unknown error').rstrip()}\n"


# --------------------------------------------------------------------------- nav


def navigation(settings: site.SiteSettings, pages: list) -> list:
    """The navbar of _quarto.yml mapped onto docs paths; the Lore tab lists every lore page."""
    lore = [generated.page_path(p) for p in generated.lore_pages(pages)]
    nav = []
    for item in settings.navbar:
        try:
            target = docs_path(item.href)
        except ValueError as e:
            raise RenderError(f"_quarto.yml: website.navbar href {item.href!r}: {e}") from None
        if target == docs_path("lore.qmd") and lore:
            nav.append({item.text: [target, *lore]})
        elif target == docs_path("log.qmd"):
            nav.append({item.text: [target]})  # a section: the blog engine hangs archive + categories in it
        else:
            nav.append({item.text: target})
    return nav


# --------------------------------------------------------------------------- render


def render(
    root: Path | str,
    targets: Iterable[str | Path] | None = None,
    *,
    jobs: int | None = os.cpu_count(),
    force: Iterable[str] = (),
    keep_going: bool = False,
    out: Path | str | None = None,
) -> int:
    """Render the project at `root` into its site (or `out`). Returns the exit status (0 = success).

    `targets`: execute only these sources; the others are taken from the document cache as they are
    (even when stale) and listed as such. `force`: glob patterns of sources to execute regardless of
    the cache. `keep_going`: execute every document despite failures and publish the site with the
    failed pages marked; the exit status is still 1.
    """
    start = time.perf_counter()
    root = Path(root).resolve()
    try:
        settings = site.load_settings(root)
        paths = discover(root)
        docs = [read_document(p, root) for p in paths]
        validate(docs)
        chosen = select(docs, targets, root)
    except (SourceError, site.SiteError, RenderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    site_dir = Path(out).resolve() if out else root / settings.output_dir

    force = list(force)
    if chosen is not None:
        # Everything not targeted is reused as cached; targeted ones run if changed (or forced).
        untargeted = [d for d in docs if d not in chosen]
        print(f"rendering {len(chosen)} of {len(docs)} documents; the other {len(untargeted)} are "
              f"taken from the cache as they are")
    pages = build_pages(
        root, docs, jobs=max(1, int(jobs or 1)), force=force, keep_going=keep_going,
        on_page=lambda page: print(page_line(page), flush=True),
        on_start=lambda doc, why: print(f"{'running':<9} {doc.rel}  ({why})", flush=True),
        **({"only": chosen} if chosen is not None else {}),
    )
    failed = [p for p in pages if p.status == "failed"]
    print(summary_line(pages, time.perf_counter() - start), flush=True)
    for page in failed:
        print(failure_report(page), file=sys.stderr)
    if failed and not keep_going:
        print(f"site not updated: {len(failed)} document(s) failed ({site_dir} left as it was)", file=sys.stderr)
        return 1

    try:
        # two renders of one project may run at once (say, two authors' entries): the build and swap of
        # site/ is the only shared step, so it is serialised
        lock_dir = root / ".lab"
        lock_dir.mkdir(exist_ok=True)
        with FileLock(str(lock_dir / "site.lock")):
            result = publish_site(root, settings, pages, site_dir)
    except (site.SiteError, RenderError, OSError) as e:
        print(f"error: {e}\nsite not updated ({site_dir} left as it was)", file=sys.stderr)
        return 1
    print(f"{result} {site_dir} in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


def publish_site(root: Path, settings: site.SiteSettings, pages: list, site_dir: Path) -> str:
    """Generate, build into a temp dir next to `site_dir`, swap. Returns what was done."""
    tree = generated.docs_tree(root, pages)
    nav = navigation(settings, pages)
    work = site.staging_dir(site_dir)
    try:
        docs_dir, built = work / "docs", work / "site"
        generated.write_tree(tree, docs_dir)
        digest = site.tree_digest([docs_dir, site.ASSETS_DIR],
                                  extra=repr((settings, nav, str(site_dir), site.engine_versions())))
        stamp = site_dir / STAMP
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return "unchanged:"
        warnings = site.build(settings, docs_dir, built, nav, cache_dir=work / "rss-cache")
        broken = [w for w in warnings if "not found among documentation files" in w]
        if broken:
            raise RenderError("broken links:\n  " + "\n  ".join(broken))
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        (built / STAMP).write_text(digest + "\n")
        site.swap_into_place(built, site_dir)
        return "built"
    finally:
        shutil.rmtree(work, ignore_errors=True)
