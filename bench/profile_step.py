"""Where a training step goes: `python bench/profile_step.py [--steps 30] [--out bench/results/profile_step.md]`.

Runs the real training loop (`experiments.rig.train.train`, not a copy of it) under `torch.profiler` for the site
config (flannel-1, batch 8x128, no recording) and the seeds' batch (32x128), and prints per-operator tables
(self CPU time, sorted), plus one line per config with the share of the step spent in matmuls, in the
vocabulary-sized work (logits, softmax / cross-entropy and their backward) and in the optimizer. With
`--record` a third table profiles flannel-1 recording W, m, v, grad of all rows every step.
The first steps (allocator growth, kernel selection) are profiled away by a warm-up run first.
`--device cuda` profiles on the GPU (CPU and CUDA activity; kernel launches per step), and the plain PyTorch
loop of bench_train.py beside ours, since on a GPU a model this small is bound by launches, not arithmetic.
The markdown written to --out is what bench/results/profile_step.md holds.
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

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from experiments.rig.config import load_config, resolve_device  # noqa: E402
from experiments.rig.train import train  # noqa: E402
from experiments.store import runs as R  # noqa: E402

# operator name fragments -> the bucket the summary line reports
_BUCKETS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "cross-entropy": ("log_softmax", "nll_loss", "cross_entropy"),
    "optimizer": ("Optimizer.step", "_foreach_", "adamw", "_fused_adam"),
}


def _bucket(name: str) -> str | None:
    for bucket, frags in _BUCKETS.items():
        if any(f in name for f in frags):
            return bucket
    return None


def _launches(events, steps: int) -> str:
    n = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    return f"; {n / steps:.0f} kernel launches per step" if n else ""


def _activities(device: str) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])


def profile_plain(preset: str, steps: int, device: str, prepared_cache: dict) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_train import plain_loop

    cfg = load_config(preset, **{"train.device": device})
    key = (cfg["corpus"]["train_bytes"], cfg["tokenizer"]["vocab_size"])
    if key not in prepared_cache:
        prepared_cache[key] = R._prepare(cfg, R.store_dir())
    prepared = prepared_cache[key]
    plain_loop(cfg, prepared.ids, prepared.vocab_size, 11, device)
    with profile(activities=_activities(device)) as prof:
        t0 = time.perf_counter()
        plain_loop(cfg, prepared.ids, prepared.vocab_size, steps, device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48)
    return (f"plain loop, {preset} on {device}: {wall / steps * 1000:.2f} ms/step under the profiler"
            f"{_launches(events, steps)}"), table


def profile_config(preset: str, steps: int, overrides: dict, tmp: Path, prepared_cache: dict,
                   device: str = "cpu") -> tuple[str, str]:
    if device != "cpu":
        overrides = {**overrides, "train.device": device}
    cfg = resolve_device(load_config(preset, **{"train.steps": steps, **overrides}))
    key = (cfg["corpus"]["train_bytes"], cfg["tokenizer"]["vocab_size"])
    if key not in prepared_cache:
        prepared_cache[key] = R._prepare(cfg, R.store_dir())
    prepared = prepared_cache[key]
    attrs = {"name": "profile", "key": "0" * 16}
    train(cfg, prepared, tmp / "warm.h5", attrs, progress=False)  # warm-up
    (tmp / "warm.h5").unlink()
    with profile(activities=_activities(device)) as prof:
        t0 = time.perf_counter()
        out = train(cfg, prepared, tmp / "p.h5", attrs, progress=False)
        wall = time.perf_counter() - t0
    (tmp / "p.h5").unlink()
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48)
    total = sum(e.self_cpu_time_total for e in events)
    share = {b: 0.0 for b in _BUCKETS}
    for e in events:
        b = _bucket(e.key)
        if b is not None:
            share[b] += e.self_cpu_time_total
    # self time of the children of cross-entropy's autograd nodes is not under its name: count backward ops too
    summary = (f"{preset} {cfg['train']['batch_size']}x{cfg['train']['seq_len']} {overrides or ''}: "
               f"{wall / steps * 1000:.1f} ms/step under the profiler (best 10-step window "
               f"{out['best_step_seconds'] * 1000:.1f} ms); self CPU time: "
               + ", ".join(f"{b} {share[b] / total * 100:.0f} %" for b in _BUCKETS) + _launches(events, steps))
    return summary, table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="profiled steps per config")
    ap.add_argument("--record", action="store_true", help="also profile full recording (W m v grad, all rows)")
    ap.add_argument("--out", type=Path, help="write the tables as markdown here")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default cpu)")
    args = ap.parse_args()
    configs = [("flannel-1", {"record.tensors": []}), ("flannel-1-seed", {"record.tensors": []})]
    if args.record:
        configs.append(("flannel-1", {"record.tensors": ["W", "m", "v", "grad"], "record.rows": "all"}))
    load = os.getloadavg()
    lines = [f"# Profile of one training step ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
             f"{load[2]:.2f} at start; `python bench/profile_step.py{' --record' if args.record else ''}`", ""]
    cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="profile-step-") as tmp:
        for preset, overrides in configs:
            print(f"profiling {preset} {overrides} ...", flush=True)
            summary, table = profile_config(preset, args.steps, overrides, Path(tmp), cache, args.device)
            print(summary)
            print(table, flush=True)
            lines += [f"## {summary}", "", "```", table, "```", ""]
            if args.device != "cpu" and not overrides.get("record.tensors"):
                summary, table = profile_plain(preset, args.steps, args.device, cache)
                print(summary)
                print(table, flush=True)
                lines += [f"## {summary}", "", "```", table, "```", ""]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
