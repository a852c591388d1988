"""`lab runs | show | verify | gc`: the run store from the command line.

`runs --check` reads every run against its checksums (exit 1 if one is damaged); `verify` replays a run's
AdamW steps (exit 1 on a mismatch); `gc` keeps the runs rendered documents used (the document cache,
`publish.cache.used_run_keys`) and deletes every other complete run, or with `--damaged` the damaged ones.
Exit status: 0 ok, 1 a finding, 2 bad input or an unreadable store (one line), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from experiments.errors import ConfigError, DamagedRunError, DataError
from lab.cli import fail, interrupted


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_runs(args: argparse.Namespace) -> int:
    from experiments.store.runs import list_runs

    if getattr(args, "rekey", False):
        return _rekey(args.dry_run)
    if getattr(args, "stale", False):
        return _stale(args.json)
    try:
        rows = list_runs(check=args.check)
    except (DataError, OSError) as e:
        return fail("runs", e)
    bad = [r for r in rows if args.check and r["check"] in ("damaged", "incomplete")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 1 if bad else 0
    if not rows:
        print("no runs in the store")
        return 0
    header = ("name", "key", "steps", "size", "status", "created", "trained on") + (("check",) if args.check else ())
    table = [header] + [(r["name"], r["key"], str(r["steps"] if r["steps"] is not None else "?"),
                         _size(r["size"]), r["status"], r["created"], r.get("host") or "-")
                        + ((r["check"],) if args.check else ()) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.check:
        for r in bad:
            print(f"damaged: {r['path']}: {r['problem']}", file=sys.stderr)
        unchecked = sum(r["check"] == "no checksum" for r in rows)
        print(f"checked {len(rows)} run(s): {len(rows) - len(bad) - unchecked} ok, {len(bad)} damaged, "
              f"{unchecked} with no checksum (written before checksums)"
              + ("; `lab gc --damaged` deletes the damaged ones, the next run trains them again" if bad else ""))
    return 1 if bad else 0


def _stale(as_json: bool) -> int:
    from experiments.store.runs import stale_runs

    rows = stale_runs()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no stale runs: every complete run matches the current training code")
        return 0
    for r in rows:
        print(f"{r['name']}  {r['key']}  changed: {', '.join(r['changed'])}")
    print(f"{len(rows)} stale run(s): their training code changed in more than comments and docstrings, and no "
          "entry of experiments/store/equivalences.json declares the change recording-preserving; a render that needs "
          "them trains them again")
    return 0


def _rekey(dry_run: bool) -> int:
    from experiments.store.runs import rekey_runs

    try:
        moves = rekey_runs(dry_run=dry_run)
    except (DataError, OSError) as e:
        return fail("runs", e)
    verb = "would re-key" if dry_run else "re-keyed"
    for old, new in moves:
        print(f"{verb} {old.name} -> {new.name}")
    print(f"{verb} {len(moves)} run(s) whose training code is unchanged but for comments and docstrings, or "
          "declared equivalent (experiments/store/equivalences.json)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import h5py

    from experiments.store.runs import find

    try:
        r = find(args.run)
    except DataError as e:
        return fail("show", e)
    try:
        return _show(r, h5py)
    except (OSError, RuntimeError, KeyError) as e:  # the datasets' headers of a damaged file
        return fail("show", DamagedRunError(f"{r.path}: the run file is damaged: {e}"))


def _show(r, h5py) -> int:
    print(f"{r.name}  key {r.key}  {r.path}")
    print(f"created {r.created}; {r.steps_total} steps, {len(r.steps)} recorded, {len(r.tokens)} rows")
    if r.description:
        print(r.description)
    print("\nversions:", json.dumps(r.versions, sort_keys=True))
    print("key parts:", json.dumps(r.key_parts, sort_keys=True))
    print("\nconfig:")
    print(json.dumps(r.config, indent=2, sort_keys=True))
    print("checksums: fletcher32 per chunk and a content digest (`lab runs --check` reads them all)"
          if r.checksummed else "checksums: none (written before run files carried them)")
    with h5py.File(r.path, "r") as f:  # cluster (issue 13): the machine that trained it
        on = f.attrs.get("trained_on")
    if on is not None:
        m = json.loads(on)
        print(f"trained on {m.get('host')}: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} "
              f"({(m.get('torch_git') or '?')[:12]}{', CUDA ' + m['cuda'] if m.get('cuda') else ''}), {m.get('platform')}")
    print("\ndatasets:")
    with h5py.File(r.path, "r") as f:
        for name in sorted(f):
            ds = f[name]
            stored = str(ds.dtype) + (f" ({ds.attrs['dtype']} bits)" if ds.attrs.get("dtype") == "bfloat16" else "")
            print(f"  /{name:<11} {str(ds.shape):<18} {stored:<24} chunks {ds.chunks}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from experiments.store.runs import gc

    if args.damaged:
        try:
            doomed = gc((), dry_run=args.dry_run, damaged=True)
        except (DataError, OSError) as e:
            return fail("gc", e)
        return _deleted(doomed, args.dry_run, "damaged run file(s); the next run of each trains it again")
    try:
        keep = _used_run_keys()
        if not keep and not args.all and not args.dry_run:
            # An empty document cache (a fresh clone, a deleted .lab/) says nothing about what is used:
            # deleting every run on that evidence would throw away hours of training.
            return fail("gc", "no rendered document uses any run (is the document cache empty? run `lab render` "
                        "first); nothing deleted. `lab gc --all` deletes every run.")
        doomed = gc(keep, dry_run=args.dry_run)
    except (ConfigError, DataError, OSError) as e:
        return fail("gc", e)
    return _deleted(doomed, args.dry_run, f"file(s); kept runs used by {len(keep)} key(s)")


def _deleted(doomed: list, dry_run: bool, what: str) -> int:
    verb = "would delete" if dry_run else "deleted"
    for path in doomed:
        print(f"{verb} {path}")
    print(f"{verb} {len(doomed)} {what}")
    return 0


def _used_run_keys() -> set[str]:
    """The run keys any rendered document used: the document cache of the project around the current folder."""
    from publish import cache
    from publish.sources import find_root

    return set(cache.used_run_keys(find_root()))


def _parse_pairs(items: list[str], what: str, numbers: bool = False) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key] = float(value)
        except ValueError:
            if numbers:
                raise ConfigError(f"{what} {key}: must be a number, got {value!r}") from None
            out[key] = value
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    """Replay a recorded run with our own AdamW arithmetic; exit 1 on any mismatch."""
    from experiments.physics.verify import format_table, verify
    from experiments.store.runs import find

    try:
        laws = _parse_pairs(args.law, "--law")
        hyper = _parse_pairs(args.hyper, "--hyper", numbers=True)
        run = find(args.run)
        result = verify(run, laws=laws, hyper=hyper, progress=not args.json)
    except (ConfigError, DataError, ValueError) as e:
        return fail("verify", e)
    except KeyboardInterrupt as e:
        print("lab verify: interrupted", file=sys.stderr)
        return interrupted(e)
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_table(result))
    return 0 if result.exact else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="list the runs in the store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="read every run in full against its checksums; name the damaged ones (exit 1)")
    p.add_argument("--stale", action="store_true",
                   help="list runs whose training code (or torch, numpy, format) changed, with what changed")
    p.add_argument("--rekey", action="store_true",
                   help="re-key runs whose training code changed only in comments or docstrings, or by a change "
                        "declared recording-preserving in experiments/store/equivalences.json (no retraining)")
    p.add_argument("--dry-run", action="store_true", help="with --rekey: say what would be re-keyed")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("show", help="show a run's config and recorded datasets")
    p.add_argument("run", help="run name, key, key prefix or file name")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("verify", help="replay a recorded run's AdamW steps bit for bit (exit 1 on mismatch)",
                              description="Re-compute every recorded step W[t], m[t], v[t] from W[t-1], m[t-1], "
                                          "v[t-1], grad[t], lr and clip scale with our own arithmetic and "
                                          "print the mismatch table. The run must record W, m, v and grad.")
    p.add_argument("run", help="run name (newest of that name), key, key prefix or file name")
    p.add_argument("--law", action="append", metavar="KEY=VALUE",
                   help="replace a law (negative control): decay=after, eps=inside, round_each_op=0, sqrt=library")
    p.add_argument("--hyper", action="append", metavar="KEY=VALUE",
                   help="replace a hyper-parameter (negative control), e.g. beta2=0.998")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser("gc", help="delete runs no rendered document uses, and stale temp files")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument("--all", action="store_true", help="allow deleting every run when no document uses any")
    p.add_argument("--damaged", action="store_true",
                   help="delete every run file that fails its checksums (whatever uses it); they retrain")
    p.set_defaults(func=cmd_gc)
