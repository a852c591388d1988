"""Benchmark black-hole genesis: what accelerated ageing costs per training step, and what the census costs per
recorded step. One command:

    .venv/bin/python bench/bench_genesis.py [--steps 100] [--repeat 3]

1. Training time per step (fastest 10-step window, `train`'s own figure) of `genesis-wd` (D = 16, batch 4×64,
   fp32 master, 1 thread) beside `flannel-1` (the site-size loop, D = 64, batch 8×128, pure bf16), alternating,
   best of `repeat`; the ratio is what one step of accelerated ageing costs in site-size steps.
2. The analyses per recorded step of the stored genesis-wd run (`$LAB_STORE`, trained first if missing;
   3,116 dead rows × 16, 101 recorded steps): the census
   (`genesis.census_track`), the offsets in cells (`gap_track`) and the pure-decay prediction
   (`pure_decay_track`), uncached, against one training step.
Both sides of every ratio are measured in the same process, alternating, on the same loaded machine; the
load (uptime) is printed before and after. Results also go to bench/results/genesis.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ["LAB_DERIVED"] = "0"  # time the analyses, not the cache

import experiments  # noqa: E402
from experiments.lattice import genesis  # noqa: E402
from experiments.rig.config import load_config, resolve_device  # noqa: E402
from experiments.rig.train import train  # noqa: E402
from experiments.store import runs as R  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps per timed run (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repetitions, best kept (default 3)")
    args = ap.parse_args()
    print(f"load average before: {load()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-genesis-", dir=os.environ.get("TMPDIR")))
    names = ("genesis-wd", "flannel-1")
    cfgs = {n: resolve_device(load_config(n, **{"train.steps": args.steps})) for n in names}
    prepared = R._prepare(cfgs["flannel-1"], R.store_dir())  # both presets share corpus and tokenizer
    best = {n: float("inf") for n in names}
    for r in range(args.repeat):
        for n in (names if r % 2 == 0 else names[::-1]):
            path = tmp / f"{n}.h5"
            out = train(cfgs[n], prepared, path, {"name": n, "key": f"{r:016x}"}, progress=False)
            best[n] = min(best[n], out["best_step_seconds"])
            path.unlink()
            print(f"  {n}: {out['best_step_seconds'] * 1e3:.1f} ms/step (repeat {r + 1})", flush=True)
    print(f"\ntraining, best 10-step window per step ({args.steps} steps, best of {args.repeat}):")
    for n in names:
        print(f"  {n:<12} {best[n] * 1e3:8.2f} ms/step")
    ratio = best["genesis-wd"] / best["flannel-1"]
    print(f"  genesis-wd / flannel-1 = {ratio:.3f}  (one ageing step costs {ratio:.2f} site-size steps)")

    # the recording analysed is the stored genesis-wd run (trained into $LAB_STORE first if it is missing)
    run = experiments.run("genesis-wd", progress=False)
    n_rec = len(run.steps)
    analyses = {"census_track": genesis.census_track, "gap_track": genesis.gap_track,
                "pure_decay_track": genesis.pure_decay_track}
    per_step = {}
    for name, fn in analyses.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(run)
            times.append(time.perf_counter() - t0)
        per_step[name] = min(times) / n_rec
    print(f"\nanalyses of the recording ({n_rec} recorded steps × {len(run.tokens):,} dead rows × "
          f"{run.config['model']['d_model']}), best of {args.repeat}, per recorded step:")
    for name, s in per_step.items():
        print(f"  {name:<17} {s * 1e3:8.2f} ms  = {s / best['genesis-wd']:.2f} genesis-wd training steps")
    print(f"load average after: {load()}")
    out = {"steps": args.steps, "repeat": args.repeat, "train_ms_per_step": {n: best[n] * 1e3 for n in names},
           "ratio_genesis_to_flannel": ratio, "analysis_ms_per_recorded_step": {k: v * 1e3 for k, v in per_step.items()},
           "analysis_in_training_steps": {k: v / best["genesis-wd"] for k, v in per_step.items()}}
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "genesis.json").write_text(json.dumps(out, indent=2))
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
