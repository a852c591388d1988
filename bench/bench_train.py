"""Benchmark of the experiment rig on this machine: `python bench/bench_train.py [--quick]`.

On the default site config (flannel-1: D 64, 2 layers, vocab 10,000, batch 8x128) it times, side by side:
a plain PyTorch loop of the same model as one writes it with torch's own attention kernel
(F.scaled_dot_product_attention, which experiments.rig.model used before it wrote attention out in fp32) and no
determinism settings; our loop without recording; recording W (dead rows = the site
default, and all rows) every step; W, m, v and grad of all rows every step. It reports ms/step, the ratio
plain/ours (>= 1.0 means our loop is at least as fast), the recording overhead, the share of the machine's
bf16 matmul peak (a step's matmul FLOPs over a measured torch bf16 matmul rate), bytes on disk per recorded
step, peak RSS when recording 1k vs 4k steps (a smaller model, D 16, batch 2x32, W of all 10,000 rows every
step, so the writes dominate), the two ways analyses read a 1,000-step recording of the site's 3,116 dead
rows (one token's full trajectory; one step of every row; a 128-step block as geometry.iter_blocks reads),
in the current chunk layout and in the previous one (one step per chunk) side by side, and the seeds' batch
(32x128) extrapolated to 1,000 steps beside the seeds' own figure (26.7 s on an Apple M4 laptop GPU).
Ours runs as every run does, with experiments.rig.malloc's allocator setting (process-wide); the plain loop
runs in a spawned child with glibc's defaults, as a plain script would, and once more with the allocator
setting ("freed memory kept"), so that the ratio of the loops alone is printed beside it: glibc's defaults
make the plain loop's speed vary by up to 1.5x between processes (its mmap threshold adapts to the first
frees). The load average is printed with the figures: compare ratios, which are measured side by side.

The machine may be shared, so ms/step is the fastest 10-step window over `--repeat` runs of each variant
(in rotating order); "mean" is the best whole-call mean (set-up and the final flush included), which includes the writer thread's backlog (its
queue lets the training run up to two chunk rows of steps ahead). `--quick` is a
one-minute version (fewer steps, 100 vs 400 recorded steps for the RSS figure).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from experiments.rig import malloc  # noqa: E402
from experiments.rig import record as record_module  # noqa: E402
from experiments.rig.config import load_config, resolve_device  # noqa: E402
from experiments.rig.model import GPT, flops_per_step  # noqa: E402
from experiments.rig.train import train  # noqa: E402
from experiments.store import runs as R  # noqa: E402
from experiments.store.recording import Run  # noqa: E402

SEED_SECONDS = 26.7  # 1,000 Flannel 1 steps, batch 32x128, Apple M4 laptop GPU (MPS), HF Trainer

_RSS_CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from experiments.store import runs as R
from experiments.rig.config import load_config, resolve_device
from experiments.rig.train import train
cfg = resolve_device(load_config("flannel-1", **json.loads(sys.argv[2])))
p = R._prepare(cfg, R.store_dir())
out = train(cfg, p, sys.argv[3], {"name": "rss", "key": "0" * 16}, progress=False)
print(json.dumps({"rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **out}))
"""


def matmul_rate(m: int, k: int, n: int, dtype=torch.bfloat16, seconds: float = 1.0) -> float:
    """Measured FLOP/s of an (m x k) @ (k x n) torch matmul."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def _sdpa_forward(self, x: torch.Tensor) -> torch.Tensor:
    """experiments.rig.model.Block.forward as one writes it plainly: torch's fused attention kernel."""
    B, T, D = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
    shape = (B, T, self.n_heads, D // self.n_heads)
    q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
    return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


def plain_loop(cfg: dict, ids: np.ndarray, vocab: int, steps: int, device: str = "cpu") -> tuple[float, float]:
    """The same model and optimizer in the plainest loop: torch's attention kernel, no determinism flags, no
    recording, random batches.

    Returns the fastest 10-step window's seconds per step, measured as `train` does, and the mean.
    """
    import types

    torch.manual_seed(0)
    model = GPT(vocab, cfg["model"])
    model.init_weights(torch.Generator().manual_seed(0))
    model = model.to(device=device, dtype=torch.bfloat16)
    for block in model.blocks:
        block.forward = types.MethodType(_sdpa_forward, block)
    o = cfg["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"], foreach=True)
    B, L = cfg["train"]["batch_size"], cfg["train"]["seq_len"]
    data = torch.from_numpy(ids.astype(np.int64)).to(device)
    offsets = torch.arange(L, device=device)
    stamps, best = [time.perf_counter()], float("inf")
    for _ in range(steps):
        x = data[torch.randint(0, len(data) - L, (B,), device=device)[:, None] + offsets]
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
        if len(stamps) > 10:
            best = min(best, (stamps[-1] - stamps[-11]) / 10)
    return best, (stamps[-1] - stamps[0]) / steps


PLAIN = "plain PyTorch loop"
PLAIN_KEPT = "plain loop, freed memory kept"  # the plain loop with our allocator setting: the loop alone compared


def _variant(preset: str, label: str, overrides: dict, steps: int, threads: int, tmp: str):
    """One timed variant in a fresh process (every variant gets one, so none inherits another's heap): the plain
    loop with glibc's default allocator, as a plain script has it; ours as experiments.run runs it, with the
    allocator setting (experiments.rig.malloc). Returns (seconds for `steps` at the best 10-step window's
    pace, mean seconds per step of the whole call, bytes on disk per recorded step or None)."""
    torch.set_num_threads(threads)
    base = resolve_device(load_config(preset, **{"train.steps": steps}))
    prepared = R._prepare(base, R.store_dir())
    if label in (PLAIN, PLAIN_KEPT):
        if label == PLAIN_KEPT:
            malloc.keep_freed_memory()
        plain_loop(base, prepared.ids, prepared.vocab_size, 11)  # warm-up: allocator growth, kernel selection
        best, mean = plain_loop(base, prepared.ids, prepared.vocab_size, steps)
        return best * steps, mean, None
    malloc.keep_freed_memory()
    meta = {"name": "bench", "key": "0" * 16}
    path = Path(tmp) / f"v-{os.getpid()}.h5"
    warm = resolve_device(load_config(preset, **{"train.steps": 10, "record.tensors": []}))
    train(warm, prepared, path, meta, progress=False)
    path.unlink()
    cfg = resolve_device(load_config(preset, **{"train.steps": steps}, **overrides))
    t0 = time.perf_counter()  # the whole call: set-up and the writer's last blocks included
    out = train(cfg, prepared, path, meta, progress=False)
    mean = (time.perf_counter() - t0) / steps
    size = path.stat().st_size // (steps + 1)
    path.unlink()
    return out["best_step_seconds"] * steps, mean, size


def write_recording(path: Path, steps: int, rows: int, d: int, step_block: int, chunk_bytes: int) -> float:
    """A W recording of `rows` x `d` bf16 over steps 0..`steps` written by the Recorder in the given chunk layout
    (step_block 1, 64 KiB: the layout before chunks spanned several steps). Returns the seconds it took."""
    from experiments.rig.record import Recorder

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 1 << 16, (rows, d), dtype=np.uint16) for _ in range(4)]
    attrs = {"name": "bench", "key": "0" * 16, "key_parts": "{}", "config": json.dumps({"record": {"rows": "dead"}}),
             "versions": "{}", "created": "", "description": ""}
    saved = record_module.STEP_BLOCK, record_module._CHUNK_BYTES
    record_module.STEP_BLOCK, record_module._CHUNK_BYTES = step_block, chunk_bytes
    try:
        t0 = time.perf_counter()
        rec = Recorder(path, attrs=attrs, tokens=np.arange(rows), steps=np.arange(steps + 1), steps_total=steps,
                       d_model=d, tensors={"W": "bfloat16"}, dead=np.ones(rows, bool),
                       counts=np.zeros(rows, np.int64))
        for s in range(steps + 1):
            rec.write_step(s, {"W": frames[s % 4]})
        rec.write_scalars(1, np.ones(steps, np.float32), np.full(steps, 1e-3), np.ones(steps, np.float32))
        rec.finish()
        return time.perf_counter() - t0
    finally:
        record_module.STEP_BLOCK, record_module._CHUNK_BYTES = saved


def read_patterns(tmp: Path, steps: int = 1000, rows: int = 3116, repeat: int = 5) -> dict:
    """Best-of-`repeat` seconds of the analyses' read patterns, current chunk layout vs one step per chunk."""
    layouts = {"current": (record_module.STEP_BLOCK, record_module._CHUNK_BYTES), "one step per chunk": (1, 65536)}
    runs, out = {}, {}
    for name, (sb, cb) in layouts.items():
        path = tmp / f"read-{sb}.h5"
        out[f"write, {name}"] = write_recording(path, steps, rows, 64, sb, cb)
        runs[name] = Run(path)
    token = int(runs["current"].tokens[len(runs["current"].tokens) // 2])
    mid = steps // 2
    cases = {"one token, every step": lambda r: r.trajectory(token),
             "one step, every row": lambda r: r.W(steps=mid, kind="bits"),
             "128 steps, every row": lambda r: r.W(steps=slice(mid, mid + 128), kind="bits")}
    for label, fn in cases.items():
        for name in layouts:
            out[f"{label}, {name}"] = float("inf")
        for _ in range(repeat):  # alternate the layouts, so that neither gets a quieter machine
            for name, r in runs.items():
                t0 = time.perf_counter()
                fn(r)
                out[f"{label}, {name}"] = min(out[f"{label}, {name}"], time.perf_counter() - t0)
    for name in layouts:
        out[f"file MB, {name}"] = runs[name].path.stat().st_size / 2**20
        runs[name].path.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about one minute instead of about ten")
    ap.add_argument("--steps", type=int, help="steps per timed variant (default 150, quick 30)")
    ap.add_argument("--repeat", type=int, help="alternating repetitions, best kept (default 5, quick 3)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    steps = args.steps or (50 if args.quick else 100)
    repeat = args.repeat or (3 if args.quick else 5)
    rss_steps = (100, 400) if args.quick else (1000, 4000)
    threads = load_config("flannel-1")["train"]["threads"]
    torch.set_num_threads(threads)

    base = resolve_device(load_config("flannel-1", **{"train.steps": steps}))
    print(f"preparing data (cached in {R.store_dir() / 'data'}) ...", flush=True)
    prepared = R._prepare(base, R.store_dir())
    V = prepared.vocab_size
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    variants = {
        "ours, no recording": {"record.tensors": []},
        "ours, W (dead rows) every step": {"record.tensors": ["W"], "record.rows": "dead"},
        "ours, W (all rows) every step": {"record.tensors": ["W"], "record.rows": "all"},
        "ours, W m v grad (all rows)": {"record.tensors": ["W", "m", "v", "grad"], "record.rows": "all"},
    }
    seconds: dict[str, float] = {}
    means: dict[str, float] = {}  # mean seconds per step over a whole run: includes the writer's backlog
    sizes: dict[str, int] = {}
    print(f"timing {steps} steps per variant, best of {repeat} (threads={threads}) ...", flush=True)
    labels = [PLAIN, PLAIN_KEPT, *variants]
    fresh = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    for r in range(repeat):
        # rotate the order each repeat, so no variant always runs right after the same neighbour
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            t, mean, size = fresh.submit(_variant, "flannel-1", label, variants.get(label, {}), steps, threads,
                                         str(tmp)).result()
            if size is not None:
                sizes[label] = size
            seconds[label] = min(seconds.get(label, 1e9), t)
            means[label] = min(means.get(label, 1e9), mean)
    seconds = {label: seconds[label] for label in labels}

    # the seeds' batch (32x128), no recording, both loops, extrapolated to 1,000 steps
    seed_steps = max(25, steps // 4)
    seed = {PLAIN: 1e9, PLAIN_KEPT: 1e9, "ours": 1e9}
    for _ in range(max(1, repeat - 1)):
        for label in seed:
            t, _, _ = fresh.submit(_variant, "flannel-1-seed", label, {"record.tensors": []}, seed_steps, threads,
                                   str(tmp)).result()
            seed[label] = min(seed[label], t / seed_steps)
    fresh.shutdown()
    seed_cfg = resolve_device(load_config("flannel-1-seed"))
    seed_ms = seed["ours"] * 1000
    seed_1000 = seed["ours"] * 1000  # seconds for 1,000 steps

    print("measuring bf16 matmul peak ...", flush=True)
    peak = matmul_rate(2048, 2048, 2048)
    B, L = base["train"]["batch_size"], base["train"]["seq_len"]
    shape_rate = matmul_rate(B * (L - 1), base["model"]["d_model"], V)
    flops = flops_per_step(V, base["model"], base["train"]["batch_size"], base["train"]["seq_len"])

    print(f"peak RSS while recording {rss_steps[0]} vs {rss_steps[1]} steps (small model) ...", flush=True)
    rss = {}
    for n in rss_steps:
        small = {"train.steps": n, "train.batch_size": 2, "train.seq_len": 32, "model.d_model": 16,
                 "model.d_ff": 32, "model.context": 32, "record.rows": "all", "record.tensors": ["W"]}
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(ROOT), json.dumps(small), str(tmp / f"r{n}.h5")],
                             capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
        rss[n]["bytes"] = (tmp / f"r{n}.h5").stat().st_size

    print("reading a 1,000-step recording of 3,116 rows, two chunk layouts ...", flush=True)
    reads = read_patterns(tmp)

    plain, ours = seconds["plain PyTorch loop"], seconds["ours, no recording"]
    rows = []
    for label, s in seconds.items():
        ms = s / steps * 1000
        extra = ""
        if label.startswith("ours"):
            extra = f"{(s / ours - 1) * 100:+.1f}% vs no recording"
        if label == "ours, no recording":
            extra = f"plain/ours = {plain / ours:.2f} (memory kept: {seconds[PLAIN_KEPT] / ours:.2f})"
        size = f"{sizes[label] / 1024:.0f} KiB" if label in sizes and sizes[label] > 4096 else ""
        rows.append((label, f"{ms:.1f}", f"{means[label] * 1000:.1f}", f"{flops / (s / steps) / peak * 100:.1f}%",
                     size, extra))
    header = ("flannel-1 site config (8x128)", "ms/step", "mean", "of bf16 peak", "disk/step", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    print()
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    print(f"bf16 matmul peak (torch 2048^3, {threads} threads): {peak / 1e9:.1f} GFLOP/s; the step's dominant "
          f"shape ({B * (L - 1)}x{base['model']['d_model']} @ {base['model']['d_model']}x{V}) runs at "
          f"{shape_rate / 1e9:.1f} GFLOP/s; one step = {flops / 1e9:.2f} GFLOP of matmuls")
    seed_flops = flops_per_step(V, seed_cfg["model"], seed_cfg["train"]["batch_size"], seed_cfg["train"]["seq_len"])
    print(f"seeds' batch 32x128: ours {seed_ms:.0f} ms/step ({seed_flops / (seed_ms / 1000) / peak * 100:.1f}% of bf16 "
          f"peak), plain loop {seed[PLAIN] * 1000:.0f} ms/step (plain/ours = {seed[PLAIN] / seed['ours']:.2f}; "
          f"memory kept {seed[PLAIN_KEPT] * 1000:.0f} ms/step, {seed[PLAIN_KEPT] / seed['ours']:.2f}) -> "
          f"1,000 steps in {seed_1000:.0f} s here, vs {SEED_SECONDS} s on an Apple M4 laptop GPU")
    a, b = rss_steps
    print(f"peak RSS recording {a} vs {b} steps (D 16, batch 2x32, W of all {V} rows): "
          f"{rss[a]['rss_kib'] / 1024:.0f} MiB vs {rss[b]['rss_kib'] / 1024:.0f} MiB "
          f"(files {rss[a]['bytes'] / 2**20:.0f} MiB vs {rss[b]['bytes'] / 2**20:.0f} MiB, "
          f"{rss[b]['bytes'] / (b + 1) / 1024:.0f} KiB per recorded step)")
    print(f"reads of a 1,000-step W recording of 3,116 rows x 64 (best of 5; {reads['file MB, current']:.0f} MB; "
          f"written in {reads['write, current']:.1f} s vs {reads['write, one step per chunk']:.1f} s):")
    for label in ("one token, every step", "one step, every row", "128 steps, every row"):
        cur, old = reads[f"{label}, current"], reads[f"{label}, one step per chunk"]
        print(f"  {label:<22} {cur * 1000:8.1f} ms   (one step per chunk: {old * 1000:8.1f} ms, "
              f"{old / cur:.2f}x)")
    load = os.getloadavg()
    print(f"load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps({
            "steps": steps, "ms_per_step": {k: v / steps * 1000 for k, v in seconds.items()},
            "mean_ms_per_step": {k: v * 1000 for k, v in means.items()},
            "bytes_per_step": sizes, "peak_flops": peak, "shape_flops": shape_rate, "step_flops": flops, "seed_1000_steps_s": seed_1000, "seed_plain_ms": seed[PLAIN] * 1000,
            "seed_plain_kept_ms": seed[PLAIN_KEPT] * 1000,
            "rss_kib": {str(k): v["rss_kib"] for k, v in rss.items()}, "reads_s": reads,
            "load": os.getloadavg()}, indent=2))
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
