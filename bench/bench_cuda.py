"""Benchmark of the rig on a CUDA GPU: `python bench/bench_cuda.py [--steps N]` (needs torch with CUDA).

The GPU line of bench_train.py (issue 21, item 4), side by side in one run on the same GPU: the plain PyTorch
loop (torch's attention kernel, no determinism flags, no recording, one loss.item() per step) and our loop
(`experiments.rig.train.train`, deterministic algorithms, as every run trains) without recording and with W, m,
v and grad of all rows every step, on the site config (flannel-1, 8x128) and the seeds' batch (32x128). Each
figure is the whole call's mean per step (set-up excluded by a warm-up run, the last device sync and the
writer's final blocks included), best of `--repeat`; the share of the GPU's bf16 matmul peak (8192^3, measured
here) shows how far a model this small is from the hardware: these loops are bound by kernel launches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_train import plain_loop  # noqa: E402

from experiments.rig import malloc  # noqa: E402
from experiments.rig.config import load_config  # noqa: E402
from experiments.rig.model import flops_per_step  # noqa: E402
from experiments.rig.train import train  # noqa: E402
from experiments.store import runs as R  # noqa: E402

SEED_SECONDS = 26.7  # 1,000 Flannel 1 steps, batch 32x128, Apple M4 laptop GPU (MPS), HF Trainer


def cuda_matmul_rate(n: int = 8192, reps: int = 10) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def ours(preset: str, steps: int, overrides: dict, tmp: Path) -> float:
    """Mean seconds per step of `train` on the GPU (a short warm-up run first: CUDA context, cuBLAS plans)."""
    prepared = R._prepare(load_config(preset, **{"train.device": "cuda"}), R.store_dir())
    meta = {"name": "bench", "key": "0" * 16}
    warm = load_config(preset, **{"train.steps": 10, "train.device": "cuda", "record.tensors": []})
    train(warm, prepared, tmp / "warm.h5", meta, progress=False)
    (tmp / "warm.h5").unlink()
    cfg = load_config(preset, **{"train.steps": steps, "train.device": "cuda"}, **overrides)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    train(cfg, prepared, tmp / "run.h5", meta, progress=False)  # returns after the final flush and close
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    (tmp / "run.h5").unlink()
    return seconds / steps


def plain(preset: str, steps: int) -> float:
    cfg = load_config(preset, **{"train.device": "cuda"})
    prepared = R._prepare(cfg, R.store_dir())
    plain_loop(cfg, prepared.ids, prepared.vocab_size, 11, "cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    plain_loop(cfg, prepared.ids, prepared.vocab_size, steps, "cuda")
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: torch sees no CUDA device here", file=sys.stderr)
        return 2
    malloc.keep_freed_memory()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cuda-"))
    peak = cuda_matmul_rate()
    rows, out = [], {}
    for preset, label in (("flannel-1", "site config 8x128"), ("flannel-1-seed", "seeds' batch 32x128")):
        cfg = load_config(preset, **{"train.device": "cuda"})
        vocab = R._prepare(cfg, R.store_dir()).vocab_size
        flops = flops_per_step(vocab, cfg["model"], cfg["train"]["batch_size"], cfg["train"]["seq_len"])
        cases = {"plain PyTorch loop": lambda p=preset: plain(p, args.steps),
                 "ours, no recording": lambda p=preset: ours(p, args.steps, {"record.tensors": []}, tmp),
                 "ours, W m v grad (all rows)": lambda p=preset: ours(
                     p, args.steps, {"record.tensors": ["W", "m", "v", "grad"], "record.rows": "all"}, tmp)}
        best = {k: float("inf") for k in cases}
        for _ in range(args.repeat):
            for k, fn in cases.items():
                best[k] = min(best[k], fn())
        out[preset] = {k: v * 1000 for k, v in best.items()}
        for k, s in best.items():
            extra = ""
            if k == "ours, no recording":
                extra = f"plain/ours = {best['plain PyTorch loop'] / s:.2f}"
            elif k.startswith("ours, W"):
                extra = f"{(s / best['ours, no recording'] - 1) * 100:+.1f}% vs no recording"
            rows.append((label, k, f"{s * 1000:.2f}", f"{flops / s / peak * 100:.2f}%", extra))
        if preset == "flannel-1-seed":
            rows.append((label, "1,000 steps, ours", f"{best['ours, no recording'] * 1000:.1f} s", "",
                         f"vs {SEED_SECONDS} s on the seeds' Apple M4 laptop GPU"))
    head = ("config", "loop", "ms/step", "of bf16 peak", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"bf16 matmul peak {peak / 1e12:.0f} TFLOP/s (8192^3); {args.steps} steps per call, best of {args.repeat}")
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        args.json.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "peak_flops": peak,
                                         "ms_per_step": out}, indent=2))
    shutil.rmtree(tmp)  # each case removed its own files; nothing else lives here
    return 0


if __name__ == "__main__":
    sys.exit(main())
