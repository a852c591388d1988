"""What keeping freed memory (experiments.rig.malloc) saves a training run: `python bench/bench_malloc.py [--steps 300]
[--repeat 2]`.

Trains flannel-1 (bf16, recording W of the dead rows every step, as the site does) and the same run in fp32
(its logits are 40 MiB, above any mmap threshold glibc accepts) in fresh processes, with the allocator setting
on and off, alternating, into a temporary store sharing the project's prepared data. Prints the best wall time,
user and system time of each, the ratio off/on, and whether both recordings have the same content digest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys
import h5py
import experiments
from experiments.rig import malloc
if sys.argv[2] == "off":
    malloc.keep_freed_memory = lambda: False
run = experiments.run("flannel-1", progress=False, **json.loads(sys.argv[1]))
with h5py.File(run.path) as f:
    print(f.attrs["content_sha256"])
run.path.unlink()
"""


def once(overrides: dict, mode: str, store: Path) -> tuple[float, float, float, str]:
    env = dict(os.environ, LAB_STORE=str(store), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(overrides), mode], env=env,
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, out.stdout.split()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from experiments.store import runs as R
    data = R.store_dir() / "data"
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; {args.steps} steps, best of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-malloc-") as tmp:
        store = Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        (store / "data").symlink_to(data, target_is_directory=True)
        for label, over in (("bf16", {}), ("fp32", {"precision.dtype": "fp32"})):
            over = {"train.steps": args.steps, **over}
            best: dict[str, tuple] = {}
            for _ in range(args.repeat):
                for mode in ("off", "on"):
                    r = once(over, mode, store)
                    if mode not in best or r[0] < best[mode][0]:
                        best[mode] = r
            off, on = best["off"], best["on"]
            print(f"flannel-1 {label}: default malloc {off[0]:.1f} s ({off[1]:.1f} user, {off[2]:.1f} sys); "
                  f"freed memory kept {on[0]:.1f} s ({on[1]:.1f} user, {on[2]:.1f} sys); "
                  f"{off[0] / on[0]:.2f}x; same recording: {off[3] == on[3]}")


if __name__ == "__main__":
    main()
