"""Cost of run-file integrity: `python bench/bench_integrity.py [--steps 1000] [--rows 3116] [--repeat 5]`.

Writes a Flannel-1-sized recording (1,001 recorded steps x 3,116 dead rows x 64 of bf16 W, about 400 MB) twice
with the Recorder itself, once as schema 1 (no filter, no digest) and once as schema 2 (fletcher32 on every
chunk, HDF5 1.10 metadata with checksums, sha256 digest hashed while writing), then times side by side, best
of --repeat: the whole of W, one token's trajectory over every step, a block of 100 steps, and the write. The
file is in the page cache after writing, so the reads measure what the checksum costs the CPU, not the disk.
Reads go through `recording.Run` as analyses read: a checksummed file through store/checksum.py (chunks read
and checked by us, on two threads), the file without checksums through HDF5. Goal: reading a recording with
checksums at most 5 % slower. `lab runs --check` (every byte read and hashed) is timed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write(path: Path, steps: int, rows: int, d: int, checksum: bool) -> float:
    from experiments.rig.record import Recorder

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 1 << 16, (rows, d), dtype=np.uint16) for _ in range(4)]
    attrs = {"name": "bench", "key": "0" * 16, "key_parts": "{}", "config": "{}", "versions": "{}",
             "created": "2026-01-01T00:00:00Z"}
    started = time.perf_counter()
    rec = Recorder(path, attrs=attrs, tokens=np.arange(rows), steps=np.arange(steps + 1), steps_total=steps,
                   d_model=d, tensors={"W": "bfloat16"}, dead=np.ones(rows, bool),
                   counts=np.zeros(rows, np.int64), checksum=checksum)
    for s in range(steps + 1):
        rec.write_step(s, {"W": frames[s % 4]})
    rec.write_scalars(1, np.ones(steps, np.float32), np.full(steps, 1e-3), np.ones(steps, np.float32))
    rec.finish()
    return time.perf_counter() - started


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps (recorded: steps + 1)")
    ap.add_argument("--rows", type=int, default=3116, help="recorded rows (Flannel 1: 3,116 dead tokens)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions per measurement; the best is reported")
    args = ap.parse_args()

    from experiments.store.recording import Run, check

    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        paths = {False: Path(tmp) / "plain.h5", True: Path(tmp) / "checked.h5"}
        writes = {c: min(write(p, args.steps, args.rows, 64, c) for _ in range(2)) for c, p in paths.items()}
        runs = {c: Run(p) for c, p in paths.items()}
        token = int(runs[True].tokens[len(runs[True].tokens) // 2])
        mid = args.steps // 2  # the middle of the recording, whatever --steps is
        mb = paths[True].stat().st_size / 2**20
        cases = {
            f"all of W ({mb:,.0f} MB)": lambda r: r.W(kind="bits"),
            "one token, every step": lambda r: r.trajectory(token),
            "100 steps, every row": lambda r: r.W(steps=slice(mid, mid + 100), kind="bits"),
            "one step, every row": lambda r: r.W(steps=mid, kind="bits"),
        }
        print(f"recording: {args.steps + 1:,} steps x {args.rows:,} rows x 64 bf16 "
              f"({paths[True].stat().st_size / 2**20:,.0f} MB with checksums, "
              f"{paths[False].stat().st_size / 2**20:,.0f} MB without); best of {args.repeat}")
        print(f"{'':<26}{'no checksum':>13}{'fletcher32':>13}{'slower':>9}")
        ratios = {}
        for label, fn in cases.items():
            # alternate the two files so that neither gets a warmer machine
            t = {False: [], True: []}
            for _ in range(args.repeat):
                for c in (False, True):
                    t[c].append(best(lambda c=c, fn=fn: fn(runs[c]), 1))
            plain, checked = min(t[False]), min(t[True])
            ratios[label] = (checked / plain - 1, checked - plain)
            print(f"{label:<26}{plain * 1e3:>10.1f} ms{checked * 1e3:>10.1f} ms{100 * (checked / plain - 1):>8.1f}%")
        print(f"{'write (with sha256)':<26}{writes[False] * 1e3:>10.1f} ms{writes[True] * 1e3:>10.1f} ms"
              f"{100 * (writes[True] / writes[False] - 1):>8.1f}%")
        seconds = best(lambda: check(paths[True]), max(1, args.repeat // 2))
        print(f"lab runs --check of this file (every chunk read, sha256 of every byte): {seconds:.2f} s")
        whole = ratios[next(iter(cases))][0]
        label, (ratio, extra) = max(ratios.items(), key=lambda kv: kv[1][0])
        print(f"reading the whole recording with checksums: {100 * whole:+.1f} % (goal <= +5 %); the worst "
              f"pattern, {label}: {100 * ratio:+.1f} % ({1e3 * extra:+.2f} ms); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
