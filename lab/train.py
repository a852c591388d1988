"""`lab train` and `lab cluster start`: training presets into the run store, here or on a Dask cluster.

Exit status: 0 stored, 2 a bad config or data (one line naming the key, file or device), 130 interrupted
(the run being written is not stored; on a cluster, its runs resume from their last checkpoint).
"""

from __future__ import annotations

import argparse
import math
import sys

from experiments.errors import ConfigError, DataError
from experiments.rig.schema import Invalid
from lab.cli import fail, interrupted, sigterm_as_interrupt


def _check_numbers(cfg: dict, overrides: dict, prefix: str = "") -> None:
    """NaN or inf is never a meaningful config value (torch raised its own traceback for optim.lr=nan)."""
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _check_numbers(value, overrides, dotted + ".")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                given = next((f"--set {k}={v}" for k in overrides if dotted.endswith(k)), None)
                raise Invalid(dotted, f"{v} is not a finite number", "allowed: finite numbers only", given)


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


def cmd_train(args: argparse.Namespace) -> int:
    from experiments.rig.config import load_config, parse_set
    from experiments.store.runs import run, sweep

    try:
        overrides = parse_set(args.set or [])
        if args.device:
            overrides["train.device"] = args.device
        cfg = load_config(args.name, **overrides)
        _check_numbers(cfg, overrides)
        _check_device(str(cfg["train"]["device"]), bool(args.device))
        if getattr(args, "cluster", None):  # --- cluster (issue 13): each run a task on the Dask cluster ---
            from experiments.store import cluster
            cluster.parse(args.cluster)  # a malformed address fails before anything starts
            if cfg["sweep"]:
                runs = sweep(args.name, executor=args.cluster, **overrides)
            else:
                from experiments.store.runs import resolve

                cluster.train([resolve(args.name, **overrides)], args.cluster)
                runs = [run(args.name, **overrides)]  # stored now: found, logged
        elif cfg["sweep"]:
            runs = sweep(args.name, jobs=args.jobs, **overrides)
        else:
            runs = [run(args.name, **overrides)]
    except KeyboardInterrupt as e:
        if getattr(args, "cluster", None):  # cluster (issue 13): workers keep their recordings and checkpoints
            print(f"lab train: interrupted; runs of {args.name} that were training resume from their last "
                  "checkpoint next time", file=sys.stderr)
            return interrupted(e)
        print(f"lab train: interrupted; {args.name} was not stored (temporary file removed)", file=sys.stderr)
        return interrupted(e)
    except (ConfigError, DataError) as e:
        return fail("train", e)
    except OSError as e:  # a full disk or a read-only store while caching the corpus / tokenizer
        where = f"{e.filename}: " if e.filename else ""
        return fail("train", DataError(f"{where}{e.strerror or e}; nothing was stored"))
    for r in runs:
        print(f"{r.name}  {r.key}  {r.path}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """`lab cluster start`: a LocalCluster, its address printed for `--cluster`, kept until Ctrl-C or SIGTERM
    (exit 130 or 143)."""
    import os
    import time

    from experiments.store import cluster
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        return fail("cluster", ConfigError(f"--workers: expected at least 1, got {workers}"))
    try:
        local = cluster.start_local(workers, port=args.port, host=args.host)
    except (ConfigError, OSError) as e:
        return fail("cluster", e)
    # SIGTERM (kill, systemd, a batch system) stops it as cleanly as Ctrl-C
    with sigterm_as_interrupt(), local:
        address = local.scheduler_address
        try:  # from the first line printed: a signal may come as soon as the address is out
            print(f"scheduler {address} with {workers} single-thread worker(s); Ctrl-C stops it", flush=True)
            print(f"  lab train NAME --cluster {address}    lab render --cluster {address}", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt as e:
            print("lab cluster: stopped", file=sys.stderr)
            return interrupted(e)


def register(subparsers) -> None:
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

    p = subparsers.add_parser("cluster", help="start a Dask cluster on this machine for --cluster")
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("start", help="a scheduler and N single-thread workers here, until Ctrl-C")
    c.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    c.add_argument("--port", type=int, default=8786, help="scheduler port (default 8786; 0 = any free port)")
    c.add_argument("--host", default=None, help="interface to listen on (default: localhost only)")
    c.set_defaults(func=cmd_cluster)
