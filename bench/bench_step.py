"""What could make a CPU training step faster: `python bench/bench_step.py [--quick] [--no-compile] [--out FILE]`.

Issue 21 lists candidates for a faster step (a fused or chunked cross-entropy, fp32 accumulation, torch.compile).
This measures each, side by side in one process, on the vocabulary head that profile_step.py shows dominates
the step (logits = h @ W.T, 1,016 x 10,000 at the site's 8x128 and 4,064 x 10,000 at the seeds' 32x128, then
next-token cross-entropy, forward and backward, bf16 as the runs have it), and then the whole model:

  ours            F.cross_entropy on the bf16 logits (torch's log_softmax + nll_loss): what every run does
  row blocks      the same kernels row block by row block, the gradient's one-hot built in a small buffer
                  (cross-entropy is per row, so the bits must equal ours: checked and printed)
  fp32 (HF)       F.cross_entropy(logits.float()): what Hugging Face models do, and so the seeds' recipe
  softmax bf16    a custom autograd function: one exp per element (softmax in the forward, the gradient
                  p/N - onehot/N a multiply in the backward) instead of two (log_softmax, then its backward)
  compiled fp32   torch.compile (inductor, C++/OpenMP) of the fp32 (HF) loss; skipped with --no-compile or
                  where inductor cannot compile
  model, compiled torch.compile of the whole forward + loss against the eager model

For each: ms (best of --repeat, alternating the candidates so none gets a quieter machine), the ratio to ours
(>1 = faster), whether the gradient bits equal ours, and how far its W gradient is from the fp32 (HF) recipe
(sum |difference| / sum |gradient|). Also the rate of the two backward matmuls of the head: dL/dh = G @ W and
dL/dW = G.T @ h (torch takes the transposed operand, at about half the rate).
Threads, the allocator setting and deterministic algorithms are set as every training process sets them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.utils.deterministic  # noqa: E402

from experiments.rig import malloc  # noqa: E402
from experiments.rig.config import load_config  # noqa: E402
from experiments.rig.model import GPT  # noqa: E402

V = 10000


class RowBlocks(torch.autograd.Function):
    """torch's log_softmax and its backward, row block by row block; the dense one-hot gradient of nll_loss is
    built per block in a reused buffer instead of one zeroed (rows x V) tensor."""

    R = 64

    @staticmethod
    def forward(ctx, logits, target):
        out = torch.log_softmax(logits, 1)
        picked = out.gather(1, target[:, None])
        ctx.save_for_backward(out, target, picked)
        return F.nll_loss(picked, torch.zeros_like(target))  # the same cascade sum over rows

    @staticmethod
    def backward(ctx, grad):
        out, target, picked = ctx.saved_tensors
        n, R = len(target), RowBlocks.R
        one = torch.ops.aten.nll_loss_backward(grad, picked, torch.zeros_like(target), None, 1, -100,
                                               torch.tensor(float(n), dtype=out.dtype))
        result, buf = torch.empty_like(out), torch.zeros(min(R, n), out.shape[1], dtype=out.dtype)
        for a in range(0, n, R):
            b = min(a + R, n)
            rows, blk = torch.arange(b - a), buf[: b - a]
            blk[rows, target[a:b]] = one[a:b, 0]
            torch.ops.aten._log_softmax_backward_data.out(blk, out[a:b], 1, out.dtype, out=result[a:b])
            blk[rows, target[a:b]] = 0
        return result, None


class SoftmaxBf16(torch.autograd.Function):
    """Cross-entropy with one exp per element: p = softmax (bf16, fp32 inside); loss = mean(-log p_target) in
    fp32; gradient p/N, minus 1/N at the target."""

    @staticmethod
    def forward(ctx, logits, target):
        p = torch.softmax(logits, 1)
        pt = p.gather(1, target[:, None]).squeeze(1)
        ctx.save_for_backward(p, target, pt)
        return -torch.log(pt.float()).mean()

    @staticmethod
    def backward(ctx, grad):
        p, target, pt = ctx.saved_tensors
        scale = grad.float() / len(target)
        result = torch.mul(p, scale)
        result[torch.arange(len(target)), target] = ((pt.float() - 1) * scale).to(p.dtype)
        return result, None


def fp32_loss(logits, target):
    return F.cross_entropy(logits.float(), target)


def best_ms(fns: dict, repeat: int, inner: int = 3) -> dict[str, float]:
    """Best time per call of each fn, over `repeat` rounds that run every fn in turn."""
    for fn in fns.values():
        fn()
    out = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out[k] = min(out[k], (time.perf_counter() - t0) / inner * 1000)
    return out


def add_compiled(cands: dict, label: str, make, fn, what: str, notes: list) -> None:
    """cands[label] = make(torch.compile(fn)), compiled and run once here (its compile time noted), or a note
    saying why torch.compile is unavailable (no C++ compiler, or inductor unsupported on this platform)."""
    try:
        compiled = make(torch.compile(fn))
        t0 = time.perf_counter()
        compiled()
        notes.append(f"compiling {what} took {time.perf_counter() - t0:.0f} s")
        cands[label] = compiled
    except Exception as e:
        notes.append(f"torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def head(n: int, repeat: int, compile_: bool) -> list[str]:
    """The vocabulary head (n rows) under each cross-entropy candidate."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, 64, generator=g).bfloat16()
    W = (torch.randn(V, 64, generator=g) * 0.3).bfloat16().requires_grad_(True)
    target = torch.randint(0, V, (n,), generator=g)

    def make(loss):
        def step():
            W.grad = None
            hh = h.clone().requires_grad_(True)
            loss(F.linear(hh, W), target).backward()
            return hh.grad, W.grad
        return step

    cands = {"ours (bf16 log_softmax)": make(F.cross_entropy), "row blocks (same kernels)": make(RowBlocks.apply),
             "fp32 (HF recipe)": make(fp32_loss), "softmax bf16 (one exp)": make(SoftmaxBf16.apply)}
    notes = []
    if compile_:
        add_compiled(cands, "compiled fp32 (inductor)", make, fp32_loss, "the fp32 loss", notes)
    grads = {k: tuple(t.clone() for t in fn()) for k, fn in cands.items()}
    ms = best_ms(cands, repeat)
    ours, hf = grads["ours (bf16 log_softmax)"], grads["fp32 (HF recipe)"]
    lines = [f"| vocabulary head, {n} x {V} | ms | ours/this | gradient bits = ours | dL/dW off the fp32 recipe |",
             "|---|---|---|---|---|"]
    base = ms["ours (bf16 log_softmax)"]
    for k in cands:
        same = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(grads[k], ours, strict=True))
        off = ((grads[k][1].float() - hf[1].float()).abs().sum() / hf[1].float().abs().sum()).item()
        lines.append(f"| {k} | {ms[k]:.2f} | {base / ms[k]:.2f} | {'yes' if same else 'no'} | {off:.1e} |")
    # the two backward matmuls of the head, at the shapes the step has
    G = torch.randn(n, V, generator=g).bfloat16()
    Wd = W.detach()
    mm = best_ms({"dh": lambda: G @ Wd, "dW": lambda: G.t() @ h}, repeat)
    flop = 2 * n * V * 64 / 1e9
    notes.append(f"backward matmuls: dL/dh = G @ W {mm['dh']:.2f} ms ({flop / mm['dh'] * 1000:.0f} GFLOP/s), "
                 f"dL/dW = G.T @ h {mm['dW']:.2f} ms ({flop / mm['dW'] * 1000:.0f} GFLOP/s)")
    return lines + [""] + [f"- {x}" for x in notes]


def model(batch: int, repeat: int, compile_: bool) -> list[str]:
    """The whole forward + loss + backward, eager and compiled (no optimizer step)."""
    cfg = load_config("flannel-1")
    m = GPT(V, cfg["model"])
    m.init_weights(torch.Generator().manual_seed(0))
    m = m.to(torch.bfloat16)
    x = torch.randint(0, V, (batch, cfg["train"]["seq_len"] + 1), generator=torch.Generator().manual_seed(1))

    def loss(x):
        return F.cross_entropy(m(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))

    def make(f):
        def step():
            f(x).backward()
            m.zero_grad(set_to_none=True)
        return step

    cands = {"eager (ours)": make(loss)}
    notes = []
    if compile_:
        add_compiled(cands, "torch.compile (inductor)", make, loss, "the model", notes)
    ms = best_ms(cands, repeat, inner=2)
    lines = [f"| whole model {batch}x{cfg['train']['seq_len']}, forward + backward | ms | eager/this |", "|---|---|---|"]
    for k in cands:
        lines.append(f"| {k} | {ms[k]:.2f} | {ms['eager (ours)'] / ms[k]:.2f} |")
    return lines + [""] + [f"- {x}" for x in notes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, the site's shape only")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidates")
    ap.add_argument("--repeat", type=int, help="alternating rounds, best kept (default 15, quick 5)")
    ap.add_argument("--out", type=Path, help="also write the tables as markdown here")
    args = ap.parse_args()
    repeat = args.repeat or (5 if args.quick else 15)
    malloc.keep_freed_memory()  # as every training process
    torch.set_num_threads(load_config("flannel-1")["train"]["threads"])
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    load = os.getloadavg()
    lines = [f"# Step candidates ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load "
             f"{load[0]:.2f} at start; `python bench/bench_step.py{' --quick' if args.quick else ''}`", ""]
    shapes = [(8, "site, 8x128")] if args.quick else [(8, "site, 8x128"), (32, "seeds, 32x128")]
    for batch, label in shapes:
        print(f"vocabulary head, {label} ...", flush=True)
        lines += [f"## {label}", ""] + head(batch * 127, repeat, not args.no_compile) + [""]
        print(f"whole model, {label} ...", flush=True)
        lines += model(batch, repeat, not args.no_compile) + [""]
    load = os.getloadavg()
    lines.append(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
