"""`lab render`: sources → (planned runs trained) → executed pages → generated docs tree → site.

Steps: read + validate every source; find the documents that must execute; train the runs the plan
(`_runs.yml`, publish.plan) says they need and the store lacks (through the `train_runs` callable lab/render.py
passes in); execute them (publish.pages, with the document cache); rewrite the plan; print one line per
document and a summary; add the generated pages; build the site into a temporary directory next to
`site/`; swap it into place; print where the time went. A failed page is published under a banner and the
exit status is 1; with `strict`, any failure leaves the previous `site/` byte-identical.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock

from publish import generated, plan, site
from publish.layout import docs_path
from publish.pages import build_pages
from publish.schema import ConfigError
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


def time_report(pages: list, planned: float, site_seconds: float, total: float) -> list[str]:
    """Where the time went, per executed document and in all: training (planned + inside documents, from
    the run log), analyses (the rest of execution), rendering (pages converted + the site built)."""
    executed = [p for p in pages if p.status == "executed"]
    if not executed and not planned:
        return []
    title = "where the time went (s)"
    width = max([len(p.doc.rel) for p in executed] + [len("planned training"), len(title) - 2])
    lines = [f"{title:<{width + 2}} {'training':>9} {'analyses':>9} {'rendering':>9}"]
    if planned:
        lines.append(f"  {'planned training':<{width}} {planned:>9.1f} {'':>9} {'':>9}")
    for p in executed:
        analyses = max(0.0, p.execute_seconds - p.train_seconds)
        lines.append(f"  {p.doc.rel:<{width}} {p.train_seconds:>9.1f} {analyses:>9.1f} {p.convert_seconds:>9.1f}")
    if site_seconds:
        lines.append(f"  {'site build':<{width}} {'':>9} {'':>9} {site_seconds:>9.1f}")
    training = planned + sum(p.train_seconds for p in executed)
    analyses = sum(max(0.0, p.execute_seconds - p.train_seconds) for p in executed)
    rendering = site_seconds + sum(p.convert_seconds for p in pages)
    # documents executed in parallel overlap, so the parts may add up to more than the total
    lines.append(f"time: total {total:.1f} s, training {training:.1f} s, analyses {analyses:.1f} s, "
                 f"rendering {rendering:.1f} s")
    return lines


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
            nav.append({item.text: [target, *[p for p in lore if p != target]]})
        elif target == docs_path("log.qmd"):
            nav.append({item.text: [target]})  # a section: the blog engine hangs archive + categories in it
        else:
            nav.append({item.text: target})
    return nav


# --------------------------------------------------------------------------- render


def future_dated(docs, now: dt.datetime | None = None) -> list[str]:
    """Entries dated later than now: a typo in the date (2027 for 2026) would put them on top of every listing."""
    now = now or dt.datetime.now()
    out = []
    for d in docs:
        date = d.meta.get("date")
        if isinstance(date, dt.datetime) and (date.replace(tzinfo=None) if date.tzinfo else date) > now:
            out.append(f"{d.rel}: dated {date:%Y-%m-%d %H:%M}, in the future (today is {now:%Y-%m-%d}); "
                       f"listings sort it above every other entry")
    return out


def error_line(error: Exception | str, prog: str | None = None) -> str:
    """`PROG: error: ERROR` (`error: ERROR` without a command name)."""
    return f"{prog}: error: {error}" if prog else f"error: {error}"


def render(
    root: Path | str,
    targets: Iterable[str | Path] | None = None,
    *,
    jobs: int | None = os.cpu_count(),
    force: Iterable[str] = (),
    keep_going: bool = False,
    out: Path | str | None = None,
    strict: bool = False,
    timeout: float | None = None,
    train_runs: Callable[[list[dict], int], dict | None] | None = None,
    prog: str | None = None,
) -> int:
    """Render the project at `root` into its site (or `out`). Returns the exit status (0 = success).

    `targets`: execute only these sources; the others are taken from the document cache as they are
    (even when stale) and listed as such. `force`: glob patterns of sources to execute regardless of
    the cache. A failed document does not stop the others: the site is published with the failed pages
    under a banner and the exit status is 1. `strict`: all or nothing, the first failure stops scheduling
    and the site is left as it was (with `keep_going` too, every document still executes). `timeout`:
    seconds a chunk may go without progress (default: `execute: timeout`, see publish.execute; 0: none).
    `train_runs(requests, jobs)`: trains the planned runs the store lacks before documents execute.
    `prog`: the command an error line names (`lab render: error: ...`; without it, `error: ...`).
    """
    start = time.perf_counter()
    root = Path(root).resolve()
    try:
        paths = discover(root)  # first: Quarto's schema names the line of a bad key, load_settings does not
        settings = site.load_settings(root)
        docs = [read_document(p, root) for p in paths]
        validate(docs)
        chosen = select(docs, targets, root)
    except (SourceError, site.SiteError, RenderError) as e:
        print(error_line(e, prog), file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1  # a key that does not exist: a usage error
    site_dir = Path(out).resolve() if out else root / settings.output_dir
    for line in future_dated(docs):
        print(f"warning: {line}", file=sys.stderr)

    force = list(force)
    if chosen is not None:
        # Everything not targeted is reused as cached; targeted ones run if changed (or forced).
        untargeted = [d for d in docs if d not in chosen]
        print(f"rendering {len(chosen)} of {len(docs)} documents; the other {len(untargeted)} are "
              f"taken from the cache as they are")
    jobs = max(1, int(jobs or 1))
    planned = {"seconds": 0.0}

    def before_execute(to_run: list) -> None:
        # the plan: train what the documents about to execute need before any of them starts, so a first
        # render shows bars and an ETA instead of a silent first page
        try:
            requests = plan.requests_for(root, to_run)
        except plan.PlanError as e:
            print(f"warning: {e}; the documents train what they need themselves", file=sys.stderr)
            return
        noun = "document" if len(to_run) == 1 else "documents"
        print(f"plan: {len(to_run)} {noun} to execute need {len(requests)} runs (from {plan.PLAN_FILE}, the "
              f"document cache and the documents' literal calls)", flush=True)
        if requests and train_runs is not None:
            began = time.perf_counter()
            try:
                train_runs(requests, jobs)
            except Exception as e:  # the plan is an optimisation: the documents still train what they need
                print(f"warning: planned training stopped: {e}; the documents train what they need themselves",
                      file=sys.stderr)
            planned["seconds"] = time.perf_counter() - began

    pages = build_pages(
        root, docs, jobs=jobs, force=force, keep_going=keep_going or not strict, timeout=timeout,
        on_page=lambda page: print(page_line(page), flush=True),
        on_start=lambda doc, why: print(f"{'running':<9} {doc.rel}  ({why})", flush=True),
        before_execute=before_execute,
        **({"only": chosen} if chosen is not None else {}),
    )
    if any(p.status == "executed" for p in pages):
        try:
            if plan.update(root, docs):
                print(f"plan: {plan.PLAN_FILE} updated (commit it)", flush=True)
        except OSError as e:
            print(f"warning: {plan.plan_path(root)}: not updated: {e}", file=sys.stderr)
    failed = [p for p in pages if p.status == "failed"]
    print(summary_line(pages, time.perf_counter() - start), flush=True)
    for page in failed:
        print(failure_report(page), file=sys.stderr)
    if failed and strict:
        print(f"site not updated: {len(failed)} document(s) failed ({site_dir} left as it was; --strict)",
              file=sys.stderr)
        return 1

    site_started = time.perf_counter()
    try:
        # two renders of one project may run at once (say, two authors' entries): the build and swap of
        # site/ is the only shared step, so it is serialised
        lock_dir = root / ".lab"
        lock_dir.mkdir(exist_ok=True)
        with FileLock(str(lock_dir / "site.lock")):
            result = publish_site(root, settings, pages, site_dir)
    except (site.SiteError, RenderError, OSError) as e:
        print(f"{error_line(e, prog)}\nsite not updated ({site_dir} left as it was)", file=sys.stderr)
        return 1
    site_seconds = time.perf_counter() - site_started
    print(f"{result} {site_dir} in {time.perf_counter() - start:.1f} s")
    for line in time_report(pages, planned["seconds"], site_seconds, time.perf_counter() - start):
        print(line)
    if failed:
        print(f"{len(failed)} page(s) failed and are published under a banner: "
              f"{', '.join(p.doc.rel for p in failed)}", file=sys.stderr)
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
        warnings = site.build(settings, docs_dir, built, nav, cache_dir=work / "rss-cache",
                              redirects=generated.redirects(pages))
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
