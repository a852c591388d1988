"""Fan-out on Dask: `python bench/bench_cluster.py [--preset crucible-grid] [--steps 150] [--workers 2] [--tasks 50]`.

A 4-member sweep at site size (crucible-grid: lr x weight decay, batch 8x128; steps shortened by --steps,
`train.threads=1` so both sides train the same recordings) timed side by side, each into a fresh store
sharing one prepared corpus/tokenizer:
  1. one local process training the members one after another (`experiments.sweep(cfg)`),
  2. a LocalCluster of --workers single-thread worker processes (`experiments.sweep(cfg, executor=client)`),
     wall time with and without starting the cluster,
with the CPU seconds each side used (how much of the machine the sweep got: others' load shows there),
then the engine's overhead per task: an empty task submitted and awaited --tasks times (median submit ->
start on the worker, and the client's round trip). Both sides' recordings are compared bit for bit.
On N cores expect at most about N x (one thread per run); each extra machine adds its cores' worth of
runs in parallel as long as the sweep has that many members, less the per-run start-up (data load, imports).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="crucible-grid", help="a sweep preset (default crucible-grid, 4 members)")
    ap.add_argument("--steps", type=int, default=150, help="training steps per member (the preset's: 2,000)")
    ap.add_argument("--workers", type=int, default=2, help="single-thread worker processes in the LocalCluster")
    ap.add_argument("--tasks", type=int, default=50, help="empty tasks for the per-task overhead")
    args = ap.parse_args()

    import h5py
    from distributed import Client

    import experiments
    from experiments.rig.config import sweep_members
    from experiments.store import cluster
    from experiments.store import runs as R

    os.environ.pop("LAB_SMOKE", None)
    overrides = {"train.steps": args.steps, "train.threads": 1}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        stores = {}
        for side in ("local", "cluster"):
            stores[side] = tmp / side
            stores[side].mkdir()
            (stores[side] / "data").symlink_to(data, target_is_directory=True)
        os.environ["LAB_STORE"] = str(stores["local"])
        members = sweep_members(R.resolve(args.preset, **overrides))
        print(f"{args.preset}: {len(members)} members x {args.steps} steps, batch "
              f"{members[0]['train']['batch_size']}x{members[0]['train']['seq_len']}, threads 1; "
              f"{os.cpu_count()} cores; load before: {load()}", flush=True)
        R._prepare(members[0], stores["local"])  # corpus and tokenizer once, outside the timings

        started, cpu0 = time.perf_counter(), _cpu()
        serial = experiments.sweep(args.preset, progress=True, **overrides)
        t_serial, cpu_serial = time.perf_counter() - started, _cpu() - cpu0
        print(f"1 local process: {t_serial:.1f} s", flush=True)

        os.environ["LAB_STORE"] = str(stores["cluster"])
        started = time.perf_counter()
        with cluster.start_local(args.workers) as local, Client(local) as client:  # as `--cluster local:N`
            client.wait_for_workers(args.workers)
            t_up = time.perf_counter() - started
            began, cpu0 = time.perf_counter(), sum(client.run(_cpu).values())
            fanned = experiments.sweep(args.preset, executor=client, progress=True, **overrides)
            t_sweep = time.perf_counter() - began
            cpu_workers = sum(client.run(_cpu).values()) - cpu0
            t_cluster = time.perf_counter() - started
            print(f"LocalCluster of {args.workers}: {t_cluster:.1f} s ({t_up:.1f} s starting it, "
                  f"{t_sweep:.1f} s the sweep)", flush=True)
            cost = cluster.overhead(client, n=args.tasks)

        same = all(_bits(a.path, h5py) == _bits(b.path, h5py) for a, b in zip(serial, fanned, strict=True))
        print()
        print(f"load after: {load()}")
        print(f"sweep of {len(members)} x {args.steps} steps    1 process {t_serial:7.1f} s    "
              f"cluster({args.workers}) {t_cluster:7.1f} s incl. start, {t_sweep:7.1f} s sweep only")
        print(f"speed-up: {t_serial / t_cluster:.2f}x including the cluster's start, "
              f"{t_serial / t_sweep:.2f}x the sweep alone (at most ~{min(args.workers, os.cpu_count() or 1)}x "
              "on this machine)")
        print(f"CPU time: 1 process {cpu_serial:.1f} s, the workers {cpu_workers:.1f} s "
              f"({cpu_workers / cpu_serial:.2f}x); cores the sweep got: 1 process {cpu_serial / t_serial:.2f}, "
              f"cluster {cpu_workers / t_sweep:.2f} (others' load takes the rest)")
        print(f"per-task overhead (empty task, median of {cost['tasks']}): submit -> start "
              f"{cost['submit_to_start_s'] * 1e3:.1f} ms, round trip {cost['round_trip_s'] * 1e3:.1f} ms")
        print(f"recordings bit-identical on both sides: {'yes' if same else 'NO'}")
        return 0 if same else 1


def _cpu() -> float:
    """CPU seconds (user + system) this process has used: in the client, and in each worker (client.run)."""
    t = os.times()
    return t.user + t.system


def _bits(path: Path, h5py) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()].tobytes() for name in f}


if __name__ == "__main__":
    sys.exit(main())
