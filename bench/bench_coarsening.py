"""Benchmark the coarsening tools at the seeds' scale. One command:

    .venv/bin/python bench/bench_coarsening.py [--n 2200] [--dim 2560] [--steps 100]

1. `coarsening.drift` of an n × dim bf16 cloud (σ = 1e-6 toward r = 0.37), round-to-nearest-even and
   stochastic rounding: steps per second with no census, and with the black-hole census at every step.
2. `coarsening.sigma_sweep` around the John stand-in: seconds per σ (n noisy copies + census).
3. `coarsening.shared_rows_over_time` on the stored flannel-1 run, when the store holds one (never trains).
Results are printed and written to bench/results/coarsening.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.lattice import coarsening  # noqa: E402


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def steps_per_second(steps: int, **kw) -> tuple[float, float]:
    """(steps/s of the stepping loop, seconds of the setup): a 1-step run and a (steps + 1)-step run with the
    same census pattern, best of 3 each after a warm-up; the difference is `steps` steps."""
    coarsening.drift(steps=1, **kw)  # warm-up: imports, first allocations
    setup = _best(lambda: coarsening.drift(steps=1, **kw))
    total = _best(lambda: coarsening.drift(steps=steps + 1, **kw))
    return steps / (total - setup), setup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_200)
    ap.add_argument("--dim", type=int, default=2_560)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    res: dict = {"n": args.n, "dim": args.dim, "steps": args.steps, "cpus": os.cpu_count(),
                 "machine": platform.platform(), "numpy": np.__version__}
    kw = dict(n=args.n, d=args.dim, sigma=1e-6, radius=0.37, seed=0)
    for rounding in ("nearest", "stochastic"):
        bare, setup = steps_per_second(args.steps, rounding=rounding, record=(), **kw)
        full, _ = steps_per_second(args.steps, rounding=rounding, **kw)
        res[rounding] = {"steps_per_s": round(bare, 1), "steps_per_s_with_census": round(full, 1),
                         "setup_s": round(setup, 3)}
        print(f"drift {args.n:,} × {args.dim:,} ({rounding}): {bare:.1f} steps/s, {full:.1f} steps/s with the "
              f"census every step (setup {setup:.2f} s: draw, cast, first census)")

    john = coarsening.john_standin()
    sigmas = coarsening.SEED_SIGMAS
    t = time.perf_counter()
    coarsening.sigma_sweep(john, sigmas, n=args.n)
    per = (time.perf_counter() - t) / len(sigmas)
    res["sigma_sweep_s_per_sigma"] = round(per, 3)
    print(f"sigma sweep around the John stand-in: {per:.3f} s per σ ({args.n:,} copies + census)")

    from experiments.store.recording import Run
    from experiments.store.runs import list_runs

    stored = [Run(r["path"]) for r in list_runs() if r["name"] == "flannel-1" and r["status"] == "complete"]
    stored = [r for r in stored if r.config["precision"]["dtype"] == "bf16"]
    if stored:
        run = stored[-1]
        t = time.perf_counter()
        sr = coarsening.shared_rows_over_time(run)
        dt = time.perf_counter() - t
        res["shared_rows"] = {"run": run.key, "steps": int(sr.steps.size), "rows": sr.rows, "seconds": round(dt, 2)}
        print(f"shared rows over time on flannel-1 ({run.key}): {sr.steps.size:,} steps × {sr.rows:,} rows in "
              f"{dt:.2f} s ({sr.steps.size / dt:.0f} steps/s)")
    else:
        print("shared rows over time: no flannel-1 in the store, skipped")

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "coarsening.json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out / 'coarsening.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
