"""`lab` — the parser, `main`, and the one convention every subcommand follows.

One module per command group, each with a `register(subparsers)` that adds its parsers:

    lab/train.py       lab train, lab cluster start
    lab/runs.py        lab runs, lab show, lab verify, lab gc
    lab/blackholes.py  lab blackholes
    lab/render.py      lab render, lab new, lab preview

The convention: a handler is `cmd_<name>(args) -> int` and returns the exit status; an error is one line on
stderr, `lab <command>: error: ...` (`fail`); exit 0 ok, 1 a failure or a finding (a damaged run, a
mismatch, a page that failed), 2 bad input or usage, 130 interrupted by Ctrl-C. A signal that ends a command
otherwise exits as a shell reports a process that signal stopped: 143 SIGTERM (`lab preview`, `lab cluster
start`: `sigterm_as_interrupt`), 141 a reader that went away (`lab runs | head`). What a handler did not
translate is caught here: one line, never a traceback (LAB_DEBUG=1 shows it).

This package is the only one that imports both `experiments` and `publish` (see ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
TERMINATED, BROKEN_PIPE = 128 + signal.SIGTERM, 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab",
        description="A literate lab notebook for dead-token dynamics: write entries, train runs, render the site.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # no ImportError guard: a broken dependency must fail loudly, not make a command vanish from the help
    from lab import blackholes, render, runs, train

    render.register(sub)
    train.register(sub)
    runs.register(sub)
    blackholes.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return interrupted(e)
    except BrokenPipeError:
        # the reader went away (`lab runs | head`): stop quietly, as Unix tools do, and keep the
        # interpreter's final flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as e:  # what a subcommand did not translate: one line, not a traceback
        if os.environ.get("LAB_DEBUG"):
            raise
        return fail(args.command, _one_line(e), USAGE if isinstance(e, OSError) else FAILED)


def fail(command: str, error: Exception | str, status: int = USAGE) -> int:
    """Print `lab COMMAND: error: ERROR` as one line on stderr; return `status` (default 2, bad input)."""
    text = str(error)
    text = " ".join(text.split()) if "\n" in text else text
    print(f"lab {command}: error: {text}", file=sys.stderr)
    return status


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a closed terminal, a process manager), taken like Ctrl-C by the code it interrupts."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so a long-running command
    stops as cleanly as on Ctrl-C; the previous handler is restored after. Off the main thread: no effect."""

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def interrupted(e: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by `e`: 143 for SIGTERM, 130 for Ctrl-C."""
    return TERMINATED if isinstance(e, Terminated) else INTERRUPTED


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}disk full ({e.strerror}); free some space (lab gc) or set LAB_STORE to a larger disk"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    text = " ".join(str(e).split())
    text = text if len(text) <= 400 else text[:400] + " ..."
    return f"{type(e).__name__}: {text} (LAB_DEBUG=1 shows the traceback)"
