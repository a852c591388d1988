"""Resume after a kill: `python bench/bench_resume.py [--preset flannel-7] [--kill-at 700]`.

Trains the preset uninterrupted (timed), then trains it again in a second store, kills that process
(SIGKILL) once its checkpoint reaches --kill-at, and times the resumed training; prints both times, the
ratio, and whether every dataset of the two recordings is byte-identical. Checkpoints every 100 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = "import experiments, sys; experiments.run(sys.argv[1], progress=False)"


def _store(base: Path, name: str, data: Path) -> Path:
    s = base / name
    s.mkdir()
    (s / "data").symlink_to(data, target_is_directory=True)
    return s


def _train(env: dict, preset: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, preset], env=env, check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="flannel-7")
    ap.add_argument("--kill-at", type=int, default=700)
    args = ap.parse_args()
    import h5py
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        env = dict(os.environ, TQDM_DISABLE="1", LAB_CHECKPOINT_EVERY="100", PYTHONPATH=str(ROOT))
        env.pop("LAB_SMOKE", None)
        a, b = _store(base, "a", data), _store(base, "b", data)
        full = _train({**env, "LAB_STORE": str(a)}, args.preset)
        (run_a,) = a.glob("*.h5")
        child = subprocess.Popen([sys.executable, "-c", CHILD, args.preset], env={**env, "LAB_STORE": str(b)},
                                 cwd=ROOT)
        ckpt = b / f"{run_a.name}.ckpt"
        while True:
            if child.poll() is not None:
                print("the run finished before it could be killed")
                return 1
            try:
                if torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= args.kill_at:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        resumed = _train({**env, "LAB_STORE": str(b)}, args.preset)
        (run_b,) = b.glob("*.h5")
        with h5py.File(run_a, "r") as fa, h5py.File(run_b, "r") as fb:
            same = sorted(fa) == sorted(fb) and all(
                np.array_equal(fa[n][()].view(np.uint8), fb[n][()].view(np.uint8)) for n in fa)
            digest = json.loads(fa.attrs["content_sha256"]) == json.loads(fb.attrs["content_sha256"])
    print(f"{args.preset}: uninterrupted {full:.1f} s; killed at step {args.kill_at}, resumed in {resumed:.1f} s "
          f"= {resumed / full:.0%} of a full run (process start and data loading included); "
          f"recordings byte-identical: {same}, digests equal: {digest}")
    return 0 if same and digest else 1


if __name__ == "__main__":
    sys.exit(main())
