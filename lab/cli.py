"""`lab` — dispatch subcommands to the package that owns them.

This is the only module that imports both `experiments` and `publish`; each of those registers its own
subcommands, so neither needs to know the other exists (see ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys


def _used_run_keys() -> set[str]:
    # `lab gc` keeps every run a rendered document used; that knowledge lives in the document cache.
    from publish.cache import used_run_keys
    from publish.sources import find_root

    return used_run_keys(find_root())


def _train_planned(requests: list[dict], jobs: int, cluster: str | None = None) -> dict:
    # `lab render` trains the runs its plan needs before executing documents; training is experiments' job
    # (`lab render --cluster ADDRESS` hands them to a Dask cluster)
    from experiments.runs import train_planned

    return train_planned(requests, jobs=jobs, cluster=cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab",
        description="A literate lab notebook for dead-token dynamics: write entries, train runs, render the site.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    import experiments.blackholes_cli
    import experiments.cli
    import publish.cli

    publish.cli.register(sub, train_runs=_train_planned)
    experiments.cli.register(sub, used_keys=_used_run_keys)
    # no ImportError guard: a broken dependency must fail loudly, not make `lab blackholes` vanish from the help
    experiments.blackholes_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "cluster", None) and getattr(args, "train_runs", None) is not None:
        # `lab render --cluster`: a malformed address fails before anything executes, not only once the plan
        # has a run to train (with every run stored it would never be looked at)
        from experiments.cluster import parse
        from experiments.errors import ConfigError

        try:
            parse(args.cluster)
        except ConfigError as e:
            print(f"lab {args.command}: error: {e}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`lab runs | head`): stop quietly, as Unix tools do, and keep the
        # interpreter's final flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # what a subcommand did not translate: one line, not a traceback
        if os.environ.get("LAB_DEBUG"):
            raise
        print(f"lab {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, OSError) else 1


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}disk full ({e.strerror}); free some space (lab gc) or set LAB_STORE to a larger disk"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    text = " ".join(str(e).split())
    text = text if len(text) <= 400 else text[:400] + " ..."
    return f"{type(e).__name__}: {text} (LAB_DEBUG=1 shows the traceback)"
