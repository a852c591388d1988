"""A run trained on a GPU records, replays and verifies (issue 21, item 4). Skipped where torch sees no CUDA.

The replay laws of the CUDA kernels are probed on the GPU as the CPU's are on the CPU; every invariant here
is one that must hold on any GPU (our step with the probed laws is torch's, bit for bit; a recording replays
exactly; the same config and seed give the same bits in two processes), never a count of one GPU's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import experiments
from experiments.physics import adam, laws, verify

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

FLANNEL = {"schedule": "linear", "clip": 0.05}
RNG = np.random.default_rng(21)


def _values(scale: float, n: int) -> np.ndarray:
    return (RNG.normal(0, 1, n) * scale * RNG.choice([1, 1e-2, 1e-4], n)).astype(np.float32)


@pytest.mark.parametrize("impl", ["single", "foreach"])
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", laws.KERNELS)
def test_each_probed_cuda_kernel_law_reproduces_the_gpu_on_fresh_inputs(name, bf16, impl):
    law = laws.current(bf16, impl, "cuda")[name]
    n = 50_000 + int(RNG.integers(0, 64))
    W, m, g = laws.rnd(_values(0.5, n), bf16), laws.rnd(_values(1e-3, n), bf16), laws.rnd(_values(1e-2, n), bf16)
    v = laws.rnd(np.abs(_values(1e-5, n)), bf16)
    d = laws.rnd(np.abs(_values(1e-3, n)) + np.float32(1e-9), bf16)
    s = {"decay": 1 - 0.07 * 0.3, "lerp": 0.13, "beta2": 0.97, "addcmul": 0.03, "bias2": 0.41, "eps": 2e-8,
         "addcdiv": -1.3e-3}.get(name)
    args = {"decay": (W, s), "lerp": (m, g, s), "beta2": (v, s), "addcmul": (v, g, s), "sqrt": (v,),
            "bias2": (d, s), "eps": (d, s), "addcdiv": (W, m, d, s)}[name]
    want = laws.rnd(laws.torch_kernel(name, impl, bf16, *(a.copy() if isinstance(a, np.ndarray) else a
                                                          for a in args), device="cuda"), bf16)
    got = laws.rnd(laws.kernel(name, law, bf16, impl, *args), bf16)
    assert int((got.view(np.uint32) != want.view(np.uint32)).sum()) == 0, (name, law)


def _torch_step_cuda(W, m, v, g, t, hp: adam.Hyper, clip: float, impl: str, bf16: bool):
    """torch.optim.AdamW itself on the GPU, from a given state (the reference the laws must reproduce)."""
    as_t = (lambda x: torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16).cuda()) if bf16 else \
        (lambda x: torch.from_numpy(x.copy()).cuda())
    p = as_t(W).clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay,
                            foreach=impl == "foreach", fused=impl == "fused")
    grad = as_t(g).clone()
    grad.mul_(torch.tensor(clip, dtype=torch.float32, device="cuda"))
    p.grad = grad
    if t > 1:
        opt.state[p] = {"step": torch.tensor(float(t - 1), device="cuda" if impl == "fused" else "cpu"),
                        "exp_avg": as_t(m).clone(), "exp_avg_sq": as_t(v).clone()}
    opt.step()
    out = (lambda x: x.detach().cpu().view(torch.int16).numpy().view(np.uint16)) if bf16 else \
        (lambda x: x.detach().cpu().numpy())
    return out(p), out(opt.state[p]["exp_avg"]), out(opt.state[p]["exp_avg_sq"])


@pytest.mark.parametrize("impl", ["foreach", "single", "fused"])
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("beta2, wd, lr", [(0.999, 0.0, 1e-3), (0.95, 0.1, 1e-3), (0.99, 0.5, 0.05)])
@pytest.mark.parametrize("t", [1, 2, 500])
def test_the_probed_cuda_laws_reproduce_torch_adamw_on_the_gpu(impl, bf16, beta2, wd, lr, t):
    n, shape = 3000 * 64, (3000, 64)
    W = RNG.normal(0, 0.3, n).astype(np.float32).reshape(shape)
    g = _values(1e-3, n).reshape(shape)
    m = _values(1e-3, n).reshape(shape) if t > 1 else np.zeros(shape, np.float32)
    v = (_values(1e-3, n) ** 2).reshape(shape) if t > 1 else np.zeros(shape, np.float32)
    conv = adam.f32_to_bf16 if bf16 else (lambda x: x)
    W, m, v, g = (conv(x) for x in (W, m, v, g))
    hp = adam.Hyper(lr=lr * (1000 - t + 1) / 1000, beta2=beta2, weight_decay=wd)
    # a bf16 model's clip scale is a bf16 value (torch computes the norm in the gradients' dtype), and CUDA's
    # mul_ by a 0-d device tensor rounds it to the tensor's dtype where the CPU's keeps float32: 0.375 is exact
    clip = 0.375 if impl != "fused" else 1.0
    want = _torch_step_cuda(W, m, v, g, t, hp, clip, impl, bf16)
    got = adam.adamw_step(W, m, v, g, t, hp, clip_scale=clip, bf16=bf16, impl=impl,
                          laws=laws.current(bf16, impl, "cuda"))
    for name, a, b in zip("Wmv", (got.W, got.m, got.v), want, strict=True):
        assert np.array_equal(a.view(b.dtype), b), (name, int((a.view(b.dtype) != b).sum()))


def _cuda_run(tiny, **sections):
    cfg = tiny(train={"steps": 8, "device": "cuda"}, **sections)
    return experiments.run(cfg, progress=False)


@pytest.mark.parametrize("sections", [
    {"optim": FLANNEL},
    {"optim": {**FLANNEL, "impl": "single", "weight_decay": 0.1}},
    {"optim": {"impl": "fused", "betas": [0.9, 0.95], "weight_decay": 0.1}},
    {"precision": {"dtype": "fp32"}, "optim": FLANNEL},
    {"precision": {"dtype": "fp32-master-rne"}, "optim": FLANNEL,
     "record": {"tensors": ["W", "m", "v", "grad", "master"]}},
    {"precision": {"dtype": "fp32-master-sr", "sr_seed": 5}, "optim": FLANNEL,
     "record": {"tensors": ["W", "m", "v", "grad", "master"]}},
], ids=["bf16-foreach", "bf16-single", "bf16-fused", "fp32", "master-rne", "master-sr"])
def test_a_cuda_recording_replays_bit_exactly(store, tiny, sections):
    run = _cuda_run(tiny, **sections)
    assert run.config["train"]["device"] == "cuda" and run.kernel_laws["device"] == "cuda"
    assert run.kernel_laws["machine"]["gpu"] == torch.cuda.get_device_name()
    result = verify.verify(run)
    assert result.exact, verify.format_table(result)
    assert "CUDA" in result.source


_TRAIN = """
import json, sys
import experiments
from experiments.store.recording import Run
run = experiments.run(json.loads(sys.argv[1]), progress=False)
print(json.dumps({"key": run.key, "path": str(run.path)}))
"""


def test_a_cuda_run_gives_the_same_bits_in_two_processes(store, tiny, tmp_path):
    """Same config and seed, two fresh processes, two stores: identical recordings (deterministic kernels)."""
    import h5py

    cfg = tiny(train={"steps": 6, "device": "cuda"}, optim=FLANNEL,
               record={"rows": "all", "tensors": ["W", "m", "v", "grad"]})
    out = []
    for i in range(2):
        s = tmp_path / f"store{i}"
        s.mkdir()
        (s / "data").symlink_to(store / "data", target_is_directory=True)
        env = {**__import__("os").environ, "LAB_STORE": str(s)}
        done = subprocess.run([sys.executable, "-c", _TRAIN, json.dumps(cfg)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert out[0]["key"] == out[1]["key"]
    with h5py.File(out[0]["path"], "r") as a, h5py.File(out[1]["path"], "r") as b:
        for name in ("W", "m", "v", "grad"):
            assert np.array_equal(a[name][()], b[name][()]), name
