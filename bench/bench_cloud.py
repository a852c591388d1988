"""Benchmark the cloud-geometry and epoch analyses on a real recording. One command:

    .venv/bin/python bench/bench_cloud.py [--run flannel-1] [--block 128] [--shell-block 64] [--train]

On Flannel 1 (1,000 steps x 3,116 dead rows x D 64, W every step) it times, each once, after one warm-up
read (so the file sits in the page cache for every contestant alike):

1. reading the recording once, block by block (no arithmetic): the floor every streamed analysis pays;
2. the cloud track (`geometry.run_cloud`: centroid, radii, bounding radius, thermal motion, movers);
3. the centroid path (`geometry.centroid_path`), bulk/thermal shear (`shear_ratio`, `shear_per_step`) and
   liftoff, all from the track;
4. the shell motion (`shell.run_shell`: radial/tangential in two frames, outward counts);
5. the epochs (`epochs.epochs` from the track);
6. the track and the shell from one read (`shell.run_cloud_and_shell`).

The run is opened with `experiments.find` (the newest complete run of that name in the store: never
trains); `--train` uses `experiments.run` instead (trains it if the store lacks it). Results are printed and
written to bench/results/cloud.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiments  # noqa: E402
from experiments.cloud import epochs, geometry, shell  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def read_once(run, rows, block: int) -> int:
    n = 0
    for _, arr in geometry.iter_blocks(run, block=block, rows=rows):
        n += arr.nbytes
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="flannel-1")
    ap.add_argument("--block", type=int, default=128, help="steps per block for the track")
    ap.add_argument("--shell-block", type=int, default=64, help="steps per block for the shell motion")
    ap.add_argument("--train", action="store_true", help="open with experiments.run (may train) instead of find")
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["LAB_DERIVED"] = "0"  # time the analyses, not a read of their stored results

    run = experiments.run(args.run, progress=False) if args.train else experiments.find(args.run)
    dead = geometry.populations(run)["dead"]
    rows = None if np.array_equal(dead, run.tokens) else dead
    shape = (len(run.steps), len(dead), int(run.W(steps=0).shape[-1]))
    read_once(run, rows, args.block)  # warm the page cache

    res: dict = {"run": run.name, "key": run.key, "shape": list(shape), "block": args.block,
                 "shell_block": args.shell_block, "cpus": os.cpu_count(), "machine": platform.platform(),
                 "numpy": np.__version__, "times_s": {}}
    t = res["times_s"]
    t["read recording once"], nbytes = timed(lambda: read_once(run, rows, args.block))
    t["cloud track (run_cloud)"], track = timed(lambda: geometry.run_cloud(run, rows=rows, block=args.block))
    t["centroid path"], path = timed(lambda: geometry.centroid_path(track, h_mean=geometry.h_mean_of(run)))
    t["bulk/thermal shear + liftoff"], shear = timed(
        lambda: (geometry.shear_ratio(track, slice(0, 101)), geometry.shear_per_step(track), geometry.liftoff(track)))
    t["shell motion (run_shell)"], sm = timed(lambda: shell.run_shell(run, rows=dead, block=args.shell_block))
    t["epochs"], ep = timed(lambda: epochs.epochs(track, run.name))
    analyses = [k for k in t if k != "read recording once"]
    t["total (separate passes)"] = sum(t[k] for k in analyses)
    t["track + shell in one read (run_cloud_and_shell)"], _ = timed(
        lambda: shell.run_cloud_and_shell(run, rows=dead, block=args.shell_block))
    res["bytes_read"] = nbytes
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["results"] = {"shear_0_100": shear[0], "liftoff": shear[2], "centroid": path.summary(),
                      "shell_origin": sm.summary("origin"), "shell_centroid": sm.summary("centroid"),
                      "dispersion": sm.dispersion(), "epochs": ep.row()}

    read = t["read recording once"]
    print(f"{run.name} ({run.key}): {shape[0]:,} steps x {shape[1]:,} dead rows x D {shape[2]}, "
          f"{nbytes / 2**20:,.0f} MiB read per pass, {os.cpu_count()} CPUs")
    print(f"{'analysis':<50} {'seconds':>9} {'x read':>8}")
    for k, v in t.items():
        print(f"{k:<50} {v:>9.2f} {v / read:>8.2f}")
    print(f"peak RSS {res['peak_rss_mib']:,.0f} MiB")
    out = ROOT / "bench" / "results" / "cloud.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
