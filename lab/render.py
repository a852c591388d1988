"""`lab render | new | preview`: the publishing machinery (`publish`) from the command line.

`render` and `preview` train the runs the plan needs before documents execute, through
`experiments.store.runs.train_planned` (publish never imports experiments; this module hands it the trainer).
Exit status: 0 ok, 1 a page failed (or the site could not be built), 2 bad input (no project here, a
misspelt key, a malformed --cluster address, a port taken: one line, `lab <command>: error: ...`),
130 interrupted (143 on SIGTERM, for `lab preview`).
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from lab.cli import fail, interrupted, sigterm_as_interrupt


def _number(cast, least, kind: str, below: str):
    """An argparse type: `text` read by `cast`, at least `least`; the messages name what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {below}, got {value:g}")
        return value

    return parse


_positive_int = _number(int, 1, "a whole number", "at least 1")
_seconds = _number(float, 0, "seconds", "0 (no limit) or more seconds")


def _root(args: argparse.Namespace) -> Path:
    from publish.sources import find_root

    return find_root(args.root) if args.root else find_root()


def train_planned(requests: list[dict], jobs: int, cluster: str | None = None) -> dict:
    """What `lab render` calls to train the runs its plan needs before executing documents (training is
    experiments' job; `lab render --cluster ADDRESS` hands them to a Dask cluster)."""
    from experiments.store.runs import train_planned as train

    return train(requests, jobs=jobs, cluster=cluster)


def cmd_render(args: argparse.Namespace) -> int:
    from publish.render import render

    train_runs = train_planned
    if args.cluster:
        # a malformed address fails before anything executes, not only once the plan has a run to train
        # (with every run stored it would never be looked at)
        from experiments.errors import ConfigError
        from experiments.store.cluster import parse

        try:
            parse(args.cluster)
        except ConfigError as e:
            return fail("render", e)
        train_runs = functools.partial(train_planned, cluster=args.cluster)
    try:
        root = _root(args)
    except FileNotFoundError as e:
        return fail("render", e)
    return render(root, args.paths or None, jobs=args.jobs, force=args.force, keep_going=args.keep_going,
                  strict=args.strict, timeout=args.timeout, train_runs=train_runs, prog="lab render")


def cmd_new(args: argparse.Namespace) -> int:
    from publish.newentry import new_entry

    try:
        root = _root(args)
        path = new_entry(root, args.title, lore=args.lore, date=args.date, categories=tuple(args.category))
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return fail("new", e)
    print(path)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from publish.preview import preview

    try:
        root = _root(args)
    except FileNotFoundError as e:
        return fail("preview", e)
    # `kill PID` (a terminal closed, a process manager stopping it) stops it as cleanly as Ctrl-C does:
    # the render in progress interrupted, its kernels shut down, the server closed
    with sigterm_as_interrupt():
        try:
            return preview(root, host=args.host, port=args.port, jobs=args.jobs, timeout=args.timeout,
                           train_runs=train_planned, prog="lab preview")
        except KeyboardInterrupt as e:  # preview said "preview: stopped"
            return interrupted(e)


def register(subparsers) -> None:
    p = subparsers.add_parser("render", help="execute what changed and build the site",
                              description="Execute changed documents (cached otherwise) and rebuild site/.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="render only these sources; the others are reused from the cache as they are")
    p.add_argument("-j", "--jobs", type=_positive_int, default=os.cpu_count() or 1,
                   help="documents executed in parallel (default: CPU count)")
    p.add_argument("--force", nargs="+", default=[], metavar="PATTERN",
                   help="execute sources matching these glob patterns even if cached (e.g. 'log/*')")
    p.add_argument("--keep-going", action="store_true",
                   help="execute everything despite failures (the default; with --strict: publish nothing still)")
    p.add_argument("--strict", action="store_true",
                   help="all or nothing: stop at the first failed page and leave the site as it was")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="stop a chunk after this long without progress (output or training heartbeats); "
                        "0 = never (default: execute: timeout in _quarto.yml / front matter, else "
                        "1800)")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="train the planned runs on a Dask cluster (tcp://host:8786, local or local:N); "
                        "the run store must be on a filesystem the workers share")
    p.add_argument("--root", help="project root (default: nearest folder with _quarto.yml)")
    p.set_defaults(func=cmd_render)

    p = subparsers.add_parser("new", help="start a new log entry (or lore page)",
                              description="Create a dated log entry (or a lore page) and print its path.")
    p.add_argument("title", metavar="TITLE")
    p.add_argument("--lore", action="store_true", help="a lore page (lore/<slug>.qmd) instead of a log entry")
    p.add_argument("--date", metavar='"YYYY-MM-DD HH:MM"', help="timestamp of the entry (default: now)")
    p.add_argument("--category", action="append", default=[], metavar="C", help="a category (repeatable)")
    p.add_argument("--root", help="project root (default: nearest folder with _quarto.yml)")
    p.set_defaults(func=cmd_new)

    p = subparsers.add_parser("preview", help="serve the site, re-render on changes, reload the browser",
                              description="Render, serve the site on http://HOST:PORT/, and re-render a document "
                                          "when it or anything it read changes; open pages reload. Ctrl-C stops.")
    p.add_argument("--port", type=int, default=4200, help="port to serve on (default 4200; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("-j", "--jobs", type=_positive_int, default=os.cpu_count() or 1,
                   help="documents executed in parallel (default: CPU count)")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="stop a chunk after this long without progress (as lab render --timeout)")
    p.add_argument("--root", help="project root (default: nearest folder with _quarto.yml)")
    p.set_defaults(func=cmd_preview)
