"""`lab train | runs | show | gc`: the run store from the command line.

`register(subparsers, used_keys)` adds the subcommands; each handler returns an exit code (0 ok, 2 bad
config or data, 130 interrupted). `used_keys` is a callable returning the run keys rendered documents used
(the `lab` dispatcher asks the document cache); `gc` keeps those and deletes every other complete run.
`runs --check` reads every run against its checksums (exit 1 if one is damaged); `gc --damaged` deletes those.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable

from experiments.errors import ConfigError, DamagedRunError, DataError


def _fail(cmd: str, err: Exception) -> int:
    print(f"lab {cmd}: error: {err}", file=sys.stderr)
    return 2


def _check_numbers(cfg: dict, overrides: dict, prefix: str = "") -> None:
    """NaN or inf is never a meaningful config value (torch raised its own traceback for optim.lr=nan)."""
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _check_numbers(value, overrides, dotted + ".")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                given = next((f" (--set {k}={v})" for k in overrides if dotted.endswith(k)), "")
                raise ConfigError(f"{dotted}: must be a finite number, got {v}{given}")


def _check_device(device: str, flag: bool) -> None:
    """A device this machine has, or one line naming the devices it does have (not torch's AssertionError)."""
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps"):
        return
    import torch

    found = ["cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found += [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if mps:
        found.append("mps")
    what = f"--device {device}" if flag else f"train.device: {device}"
    if kind == "mps" and not mps:
        raise ConfigError(f"{what}: no MPS (Apple GPU) on this machine; devices found: {', '.join(found)}")
    if kind == "cuda" and n == 0:
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{what}: no CUDA on this machine ({why}); devices found: {', '.join(found)}")
    if kind == "cuda" and index and (not index.isdigit() or int(index) >= n):
        raise ConfigError(f"{what}: this machine has {n} CUDA device(s); devices found: {', '.join(found)}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_train(args: argparse.Namespace) -> int:
    from experiments.config import load_config, parse_set
    from experiments.runs import run, sweep

    try:
        overrides = parse_set(args.set or [])
        if args.device:
            overrides["train.device"] = args.device
        cfg = load_config(args.name, **overrides)
        _check_numbers(cfg, overrides)
        _check_device(str(cfg["train"]["device"]), bool(args.device))
        if getattr(args, "cluster", None):  # --- cluster (issue 13): each run a task on the Dask cluster ---
            from experiments import cluster

            cluster.parse(args.cluster)  # a malformed address fails before anything starts
            if cfg["sweep"]:
                runs = sweep(args.name, executor=args.cluster, **overrides)
            else:
                from experiments.runs import resolve

                cluster.train([resolve(args.name, **overrides)], args.cluster)
                runs = [run(args.name, **overrides)]  # stored now: found, logged
        elif cfg["sweep"]:
            runs = sweep(args.name, jobs=args.jobs, **overrides)
        else:
            runs = [run(args.name, **overrides)]
    except KeyboardInterrupt:
        if getattr(args, "cluster", None):  # cluster (issue 13): workers keep their recordings and checkpoints
            print(f"lab train: interrupted; runs of {args.name} that were training resume from their last "
                  "checkpoint next time", file=sys.stderr)
            return 130
        print(f"lab train: interrupted; {args.name} was not stored (temporary file removed)", file=sys.stderr)
        return 130
    except (ConfigError, DataError) as e:
        return _fail("train", e)
    except OSError as e:  # a full disk or a read-only store while caching the corpus / tokenizer
        where = f"{e.filename}: " if e.filename else ""
        return _fail("train", DataError(f"{where}{e.strerror or e}; nothing was stored"))
    for r in runs:
        print(f"{r.name}  {r.key}  {r.path}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from experiments.runs import list_runs

    if getattr(args, "rekey", False):
        return _rekey(args.dry_run)
    if getattr(args, "stale", False):
        return _stale(args.json)
    try:
        rows = list_runs(check=args.check)
    except (DataError, OSError) as e:
        return _fail("runs", e)
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
    from experiments.runs import stale_runs

    rows = stale_runs()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no stale runs: every complete run matches the current training code")
        return 0
    for r in rows:
        print(f"{r['name']}  {r['key']}  changed: {', '.join(r['changed'])}")
    print(f"{len(rows)} stale run(s): a render that needs them trains them again "
          "(`lab runs --rekey` keeps those whose code changed only in comments or docstrings)")
    return 0


def _rekey(dry_run: bool) -> int:
    from experiments.runs import rekey_runs

    try:
        moves = rekey_runs(dry_run=dry_run)
    except (DataError, OSError) as e:
        return _fail("runs", e)
    verb = "would re-key" if dry_run else "re-keyed"
    for old, new in moves:
        print(f"{verb} {old.name} -> {new.name}")
    print(f"{verb} {len(moves)} run(s) whose training code is unchanged but for comments and docstrings")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import h5py

    from experiments.runs import find

    try:
        r = find(args.run)
    except DataError as e:
        return _fail("show", e)
    try:
        return _show(r, h5py)
    except (OSError, RuntimeError, KeyError) as e:  # the datasets' headers of a damaged file
        return _fail("show", DamagedRunError(f"{r.path}: the run file is damaged: {e}"))


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


def cmd_gc(args: argparse.Namespace, used_keys: Callable[[], Iterable[str]] | None) -> int:
    from experiments.runs import gc

    if args.damaged:
        try:
            doomed = gc((), dry_run=args.dry_run, damaged=True)
        except (DataError, OSError) as e:
            return _fail("gc", e)
        verb = "would delete" if args.dry_run else "deleted"
        for path in doomed:
            print(f"{verb} {path}")
        print(f"{verb} {len(doomed)} damaged run file(s); the next run of each trains it again")
        return 0
    if used_keys is None:
        print("lab gc: error: no document cache to ask which runs are used; nothing deleted", file=sys.stderr)
        return 2
    try:
        keep = set(used_keys())
        if not keep and not args.all and not args.dry_run:
            # An empty document cache (a fresh clone, a deleted .lab/) says nothing about what is used:
            # deleting every run on that evidence would throw away hours of training.
            print("lab gc: no rendered document uses any run (is the document cache empty? run `lab render` "
                  "first); nothing deleted. `lab gc --all` deletes every run.", file=sys.stderr)
            return 2
        doomed = gc(keep, dry_run=args.dry_run)
    except (ConfigError, DataError, OSError) as e:
        return _fail("gc", e)
    verb = "would delete" if args.dry_run else "deleted"
    for path in doomed:
        print(f"{verb} {path}")
    print(f"{verb} {len(doomed)} file(s); kept runs used by {len(keep)} key(s)")
    return 0


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
    from experiments.runs import find
    from experiments.verify import format_table, verify

    try:
        laws = _parse_pairs(args.law, "--law")
        hyper = _parse_pairs(args.hyper, "--hyper", numbers=True)
        run = find(args.run)
        result = verify(run, laws=laws, hyper=hyper, progress=not args.json)
    except (ConfigError, DataError, ValueError) as e:
        return _fail("verify", e)
    except KeyboardInterrupt:
        print("lab verify: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_table(result))
    return 0 if result.exact else 1


def cmd_cluster_start(args: argparse.Namespace) -> int:
    """Start a LocalCluster, print its address for `--cluster`, and keep it until Ctrl-C."""
    import os
    import time

    from experiments import cluster

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        return _fail("cluster", ConfigError(f"--workers: expected at least 1, got {workers}"))
    try:
        local = cluster.start_local(workers, port=args.port, host=args.host)
    except (ConfigError, OSError) as e:
        return _fail("cluster", e)
    import signal

    def _stop(signum, frame):  # SIGTERM (kill, systemd, a batch system) stops it as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with local:
        address = local.scheduler_address
        print(f"scheduler {address} with {workers} single-thread worker(s); Ctrl-C stops it", flush=True)
        print(f"  lab train NAME --cluster {address}    lab render --cluster {address}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("lab cluster: stopped", file=sys.stderr)
    return 0


def register(subparsers, used_keys: Callable[[], Iterable[str]] | None = None) -> None:
    p = subparsers.add_parser("train", help="train a preset (or every member of a sweep) into the run store")
    p.add_argument("name", help="preset name (experiments/configs/NAME.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: the preset's, auto = cuda > mps > cpu)")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes for a sweep (default 1)")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="train on a Dask cluster: a scheduler address (tcp://host:8786), local or local:N "
                        "(N single-thread worker processes here); the store must be on a shared filesystem")
    p.set_defaults(func=cmd_train)

    # --- cluster (issue 13) ---
    p = subparsers.add_parser("cluster", help="start a Dask cluster on this machine for --cluster")
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("start", help="a scheduler and N single-thread workers here, until Ctrl-C")
    c.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    c.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786; 0 = any free port)")
    c.add_argument("--host", default=None, help="interface to listen on (default: localhost only)")
    c.set_defaults(func=cmd_cluster_start)
    # --- end cluster ---

    p = subparsers.add_parser("runs", help="list the runs in the store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="read every run in full against its checksums; name the damaged ones (exit 1)")
    p.add_argument("--stale", action="store_true",
                   help="list runs whose training code (or torch, numpy, format) changed, with what changed")
    p.add_argument("--rekey", action="store_true",
                   help="re-key runs whose training code changed only in comments or docstrings (no retraining)")
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
    p.set_defaults(func=lambda args: cmd_gc(args, used_keys))
