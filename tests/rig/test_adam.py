"""The laws of physics, kernel by kernel: our numpy arithmetic against PyTorch's on the same inputs.

Each AdamW kernel is checked alone (so a failure names the law that changed), then whole steps against
torch.optim.AdamW for both CPU implementations that share this arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.physics import adam, laws

F32 = np.float32
RNG = np.random.default_rng(7)
N = 200_000


def _values(scale: float, n: int = N) -> np.ndarray:
    """Magnitudes spread over six decades, both signs: dead-token gradients are tiny, weights are not."""
    return (RNG.normal(0, 1, n) * scale * RNG.choice([1, 1e-2, 1e-4], n)).astype(np.float32)


def _t(x: np.ndarray, bf16: bool) -> torch.Tensor:
    t = torch.from_numpy(x.copy())
    return t.bfloat16() if bf16 else t


def _np(t: torch.Tensor, bf16: bool) -> np.ndarray:
    return adam.bf16_to_f32(t.view(torch.int16).numpy().view(np.uint16)) if bf16 else t.numpy().copy()


def _rnd(x: np.ndarray, bf16: bool) -> np.ndarray:
    return adam.bf16_to_f32(adam.f32_to_bf16(x)) if bf16 else x.astype(np.float32)


def _differ(a: np.ndarray, b: np.ndarray) -> int:
    return int((a.view(np.uint32) != b.view(np.uint32)).sum())


def test_float32_to_bf16_rounds_like_torch():
    u = RNG.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    f = u.view(np.float32)
    f = f[np.isfinite(f)]
    want = torch.from_numpy(f.copy()).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(adam.f32_to_bf16(f), want)


def test_fma_is_a_single_rounding():
    a, b, c = (_values(1.0) for _ in range(3))
    exact = (a.astype(np.longdouble) * b.astype(np.longdouble) + c.astype(np.longdouble)).astype(np.float32)
    assert np.array_equal(adam.fma32(a, b, c), exact)
    # and it is not the two-rounding a*b + c, for some inputs
    assert (adam.fma32(a, b, c) != a * b + c).any()


@pytest.mark.parametrize("impl", ["single", "foreach"])
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", laws.KERNELS)
def test_each_probed_kernel_law_reproduces_torch_on_fresh_inputs(name, bf16, impl):
    """Whatever this CPU's kernels do, the law the probe chose reproduces them on inputs it never saw."""
    law = laws.current(bf16, impl)[name]
    rng = np.random.default_rng(99)
    n = 50_000 + int(rng.integers(0, 64))  # a vector body and a ragged tail
    W, m, g = laws.rnd(_values(0.5, n), bf16), laws.rnd(_values(1e-3, n), bf16), laws.rnd(_values(1e-2, n), bf16)
    v = laws.rnd(np.abs(_values(1e-5, n)), bf16)
    d = laws.rnd(np.abs(_values(1e-3, n)) + F32(1e-9), bf16)
    s = {"decay": 1 - 0.07 * 0.3, "lerp": 0.13, "beta2": 0.97, "addcmul": 0.03, "bias2": 0.41, "eps": 2e-8,
         "addcdiv": -1.3e-3}.get(name)
    args = {"decay": (W, s), "lerp": (m, g, s), "beta2": (v, s), "addcmul": (v, g, s), "sqrt": (v,),
            "bias2": (d, s), "eps": (d, s), "addcdiv": (W, m, d, s)}[name]
    want = laws.rnd(laws.torch_kernel(name, impl, bf16, *(a.copy() if isinstance(a, np.ndarray) else a
                                                          for a in args)), bf16)
    got = laws.rnd(laws.kernel(name, law, bf16, impl, *args), bf16)
    assert _differ(got, want) == 0, (name, law)


@pytest.mark.parametrize("name", [k for k in laws.KERNELS if len(laws.CANDIDATES[k]) > 1])
def test_the_probe_can_tell_the_candidate_laws_apart(name):
    """A probe that cannot separate two candidates would pick the first one by accident: each pair differs
    somewhere on the bf16 probe inputs or, where bf16 cannot show it, on the float32 ones that then decide
    (numpy only, the same on every machine)."""
    def outputs(bf16):
        cases = list(laws._probe_cases(name, bf16))
        return {law: [laws.rnd(laws.kernel(name, law, bf16, "single", *c), bf16) for c in cases]
                for law in laws.CANDIDATES[name]}

    bf16, fp32 = outputs(True), outputs(False)
    names = list(bf16)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert any(_differ(x, y) for x, y in zip(bf16[a], bf16[b], strict=True)) or \
                any(_differ(x, y) for x, y in zip(fp32[a], fp32[b], strict=True)), (name, a, b)


def test_the_probe_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(laws, "_MEMO", {})
    first = laws.current(True, "foreach")
    files = list((tmp_path / "dead-token-lab" / "laws").glob("*.json"))
    assert len(files) == 1
    monkeypatch.setattr(laws, "_MEMO", {})
    monkeypatch.setattr(laws, "probe", lambda *a: pytest.fail("probed again despite the cache"))
    assert laws.current(True, "foreach") == first


def test_a_process_whose_kernels_behave_differently_does_not_reuse_the_cached_probe(tmp_path, monkeypatch):
    """Same torch, CPU and environment, but MKL took another code path (torch made its first MKL call before
    the package pinned MKL_CBWR): the cache key sees the live kernels, so the other process probes afresh."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(laws, "_MEMO", {})
    laws.current(False, "single")
    (cached,) = (tmp_path / "dead-token-lab" / "laws").glob("*.json")
    live = laws._live_kernels()
    monkeypatch.setattr(laws, "_live_kernels", lambda: {**live, "sqrt_fp32": "another-path"})
    monkeypatch.setattr(laws, "_MEMO", {})
    probed = []
    monkeypatch.setattr(laws, "probe", lambda *a: probed.append(a) or {"sqrt": "ieee"})
    laws.current(False, "single")
    assert probed == [(False, "single", "cpu")]
    assert len(list(cached.parent.glob("*.json"))) == 2


_ORDERS = {"package first": "import experiments, torch; torch.ones(70000).sqrt()",
           "torch's first MKL call first": "import torch; torch.ones(70000).sqrt(); import experiments"}


def test_the_cached_sqrt_law_is_what_each_process_computes_whatever_it_imported_first(tmp_path):
    """Two processes sharing one probe cache, one importing the package before torch's first MKL call and one
    after: each is served the law its own kernels follow (where MKL's paths differ, a shared cache entry
    would hand one of them the other's law)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("MKL_CBWR", None)
    for order in [*_ORDERS.values(), *_ORDERS.values()]:  # twice: the second round reads the cache
        code = (f"{order}\nfrom experiments.physics import laws\n"
                "print(laws.current(False, 'single')['sqrt'], laws.probe_kernel('sqrt', False, 'single'))")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                             cwd=str(Path(laws.__file__).parents[2]))
        assert out.returncode == 0, out.stderr
        cached, fresh = out.stdout.split()
        assert cached == fresh, (order, cached, fresh)


def test_bf16_sqrt_is_exact_for_every_bf16_value():
    bits = np.arange(0, 0x7F80, dtype=np.uint16)  # every finite non-negative bf16
    t = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
    want = t.sqrt().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(adam.f32_to_bf16(np.sqrt(adam.bf16_to_f32(bits))), want)


def _torch_step(W, m, v, g, t, hp: adam.Hyper, clip: float, impl: str, bf16: bool):
    """One step of torch.optim.AdamW itself, from a given state (the reference the laws must reproduce)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    as_t = (lambda x: torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)) if bf16 else \
        (lambda x: torch.from_numpy(x.copy()))
    p = as_t(W).clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, weight_decay=hp.weight_decay,
                            foreach=impl == "foreach", fused=impl == "fused")
    grad = as_t(g).clone()
    grad.mul_(torch.tensor(clip, dtype=torch.float32))
    p.grad = grad
    if t > 1:
        opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": as_t(m).clone(), "exp_avg_sq": as_t(v).clone()}
    opt.step()
    out = (lambda x: x.detach().view(torch.int16).numpy().view(np.uint16)) if bf16 else (lambda x: x.detach().numpy())
    assert p.dtype == dtype
    return out(p), out(opt.state[p]["exp_avg"]), out(opt.state[p]["exp_avg_sq"])


def _state(t: int, bf16: bool, shape=(3000, 64)):
    n = shape[0] * shape[1]
    W = RNG.normal(0, 0.3, n).astype(np.float32).reshape(shape)
    g = _values(1e-3, n).reshape(shape)
    m = _values(1e-3, n).reshape(shape) if t > 1 else np.zeros(shape, np.float32)
    v = (_values(1e-3, n) ** 2).reshape(shape) if t > 1 else np.zeros(shape, np.float32)
    conv = adam.f32_to_bf16 if bf16 else (lambda x: x)
    return tuple(conv(x) for x in (W, m, v, g))


@pytest.mark.parametrize("impl", ["foreach", "single", "fused"])
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize("beta2, wd, lr", [(0.999, 0.0, 1e-3), (0.95, 0.1, 1e-3), (0.99, 0.5, 0.05)])
@pytest.mark.parametrize("t", [1, 2, 500])
def test_the_probed_laws_reproduce_torch_adamw_on_this_machine(impl, bf16, beta2, wd, lr, t):
    """The invariant that holds on every CPU: our step with this machine's probed laws is torch's, bit for bit."""
    W, m, v, g = _state(t, bf16)
    hp = adam.Hyper(lr=lr * (1000 - t + 1) / 1000, beta2=beta2, weight_decay=wd)
    clip = 0.37 if impl != "fused" else 1.0  # the fused kernel never sees a clipped gradient differently
    want = _torch_step(W, m, v, g, t, hp, clip, impl, bf16)
    got = adam.adamw_step(W, m, v, g, t, hp, clip_scale=clip, bf16=bf16, impl=impl)
    for name, a, b in zip("Wmv", (got.W, got.m, got.v), want, strict=True):
        assert np.array_equal(a.view(b.dtype), b), (name, int((a != b).sum()))


def test_a_wrong_law_is_visible_at_recipe_hyper_parameters():
    """Foreach rounds β₂ to bf16 before multiplying: at β₂ = 0.95 the float32 scalar gives other bits."""
    W, m, v, g = _state(5, True)
    hp = adam.Hyper(lr=1e-3, beta2=0.95)
    want = _torch_step(W, m, v, g, 5, hp, 1.0, "foreach", True)
    laws = adam.laws_for(True, "foreach")
    other = "f32" if laws["beta2"] == "dtype" else "dtype"
    got = adam.adamw_step(W, m, v, g, 5, hp, bf16=True, impl="foreach", laws={"beta2": other})
    assert not np.array_equal(got.v, want[2])


def test_weight_decay_below_half_an_ulp_changes_nothing_in_bf16():
    """A separate bf16 multiply by (1 − lr·λ) rounds back to θ when lr·λ is below about 2⁻⁹."""
    W = adam.f32_to_bf16(RNG.normal(0, 0.3, 100_000).astype(np.float32))
    vals = adam.bf16_to_f32(W)
    for lr_wd in (3e-5, 1e-4, 1e-3):
        assert np.array_equal(adam.f32_to_bf16(vals * F32(1 - lr_wd)), W), lr_wd
    assert not np.array_equal(adam.f32_to_bf16(vals * F32(1 - 0.01)), W)
