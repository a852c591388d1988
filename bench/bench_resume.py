"""Resume after a kill: `python bench/bench_resume.py [--preset flannel-7] [--kill-at 700] [--every N] [--exact]`.

Trains the preset uninterrupted (timed), then trains it again in a second store, kills that process
(SIGKILL) once its checkpoint reaches --kill-at, and times the resumed training; prints both times, the
ratio, and whether every dataset of the two recordings is byte-identical. Checkpoints every --every steps
(default 100). With --exact the process kills itself as it records step --kill-at, before that step's
checkpoint: it resumes from the checkpoint before, so the steps since are trained again (the worst case
when --kill-at is a multiple of --every).
Each training's CPU seconds (user + system, the process and its threads) are printed beside its wall time,
with the load average: on a shared machine the CPU ratio is the one to read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = "import experiments, sys; experiments.run(sys.argv[1], progress=False)"
KILLED_AT = """
import os, signal, sys
import experiments
from experiments.rig import record
real = record.Recorder.write_step
def write_step(self, step, arrays):  # dies as it records step KILL_AT
    if step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, step, arrays)
record.Recorder.write_step = write_step
experiments.run(sys.argv[1], progress=False)
"""


def _store(base: Path, name: str, data: Path) -> Path:
    s = base / name
    s.mkdir()
    (s / "data").symlink_to(data, target_is_directory=True)
    return s


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _train(env: dict, preset: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one training process."""
    t, c = time.perf_counter(), _cpu()
    subprocess.run([sys.executable, "-c", CHILD, preset], env=env, check=True, cwd=ROOT)
    return time.perf_counter() - t, _cpu() - c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="flannel-7")
    ap.add_argument("--kill-at", type=int, default=700)
    ap.add_argument("--every", type=int, default=100, help="steps between checkpoints (LAB_CHECKPOINT_EVERY)")
    ap.add_argument("--exact", action="store_true", help="kill during step --kill-at, before its checkpoint")
    args = ap.parse_args()
    import h5py
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir()
        env = dict(os.environ, TQDM_DISABLE="1", LAB_CHECKPOINT_EVERY=str(args.every), PYTHONPATH=str(ROOT))
        env.pop("LAB_SMOKE", None)
        a, b = _store(base, "a", data), _store(base, "b", data)
        load = [os.getloadavg()[0]]
        full, full_cpu = _train({**env, "LAB_STORE": str(a)}, args.preset)
        load.append(os.getloadavg()[0])
        (run_a,) = a.glob("*.h5")
        ckpt = b / f"{run_a.name}.ckpt"
        if args.exact:
            done = subprocess.run([sys.executable, "-c", KILLED_AT, args.preset], cwd=ROOT,
                                  env={**env, "LAB_STORE": str(b), "KILL_AT": str(args.kill_at)})
            if done.returncode != -signal.SIGKILL:
                print(f"the run was not killed at step {args.kill_at} (exit status {done.returncode})")
                return 1
        child = None if args.exact else subprocess.Popen([sys.executable, "-c", CHILD, args.preset], cwd=ROOT,
                                                         env={**env, "LAB_STORE": str(b)})
        while child is not None:
            if child.poll() is not None:
                print("the run finished before it could be killed")
                return 1
            try:
                if torch.load(ckpt, map_location="cpu", weights_only=False)["step"] >= args.kill_at:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        if child is not None:
            child.send_signal(signal.SIGKILL)
            child.wait()
        resumed_from = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
        load.append(os.getloadavg()[0])
        resumed, resumed_cpu = _train({**env, "LAB_STORE": str(b)}, args.preset)
        load.append(os.getloadavg()[0])
        (run_b,) = b.glob("*.h5")
        with h5py.File(run_a, "r") as fa, h5py.File(run_b, "r") as fb:
            same = sorted(fa) == sorted(fb) and all(
                np.array_equal(fa[n][()].view(np.uint8), fb[n][()].view(np.uint8)) for n in fa)
            digest = json.loads(fa.attrs["content_sha256"]) == json.loads(fb.attrs["content_sha256"])
    exact = " (exactly)" if args.exact else ""
    print(f"{args.preset}: uninterrupted {full:.1f} s ({full_cpu:.1f} CPU s); killed at step {args.kill_at}{exact}, "
          f"checkpoint every {args.every}: resumed from step {resumed_from} "
          f"in {resumed:.1f} s ({resumed_cpu:.1f} CPU s) = {resumed / full:.0%} of a full run's wall time, "
          f"{resumed_cpu / full_cpu:.0%} of its CPU time (process start and data loading included; 1-min load "
          f"average {', '.join(f'{x:.1f}' for x in load)} before/after each, on {os.cpu_count()} cores); "
          f"recordings byte-identical: {same}, digests equal: {digest}")
    return 0 if same and digest else 1


if __name__ == "__main__":
    sys.exit(main())
