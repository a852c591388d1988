"""Verification throughput: `python bench/bench_verify.py [--steps N]`.

Trains Flannel 7 at site size (W, m, v and grad of the dead rows every step; 1,000 steps by default) into a
temporary store, timing the training loop, then replays every step with `experiments.physics.verify` and reports
elements per second and the ratio of verification time to training time, side by side in one run. The goal
is a ratio below 1: checking a run must cost less than making it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of the recorded run (default 1000)")
    args = ap.parse_args()

    from experiments.store import runs as R
    real_data = R.store_dir() / "data"
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        # a fresh store (so the run is trained here) sharing the prepared corpus and tokenizer
        real_data.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "data").symlink_to(real_data, target_is_directory=True)
        os.environ["LAB_STORE"] = tmp
        import experiments
        from experiments.physics.verify import format_table, verify

        print(f"training flannel-7 for {args.steps} steps (recording W, m, v, grad of the dead rows) ...", flush=True)
        started = time.perf_counter()
        run = experiments.run("flannel-7", **{"train.steps": args.steps})
        train_s = time.perf_counter() - started
        print("verifying ...", flush=True)
        started = time.perf_counter()
        result = verify(run, progress=True)
        verify_s = time.perf_counter() - started
        size = os.path.getsize(run.path)
    print()
    print(format_table(result))
    print()
    print(f"{'':<34}{'seconds':>9}")
    print(f"{'training (with recording)':<34}{train_s:>9.1f}")
    print(f"{'verification (every element)':<34}{verify_s:>9.1f}   {result.elements / verify_s / 1e6:.1f} M elements/s, "
          f"{size / verify_s / 2**20:.0f} MiB/s of recording")
    print(f"verification / training = {verify_s / train_s:.2f}  (goal < 1)")
    return 0 if result.exact else 1


if __name__ == "__main__":
    sys.exit(main())
