"""Kernel laws: what PyTorch's AdamW kernels compute on *this* machine, found by probing them.

The replay (`adam`) rebuilds every AdamW step in numpy. Which arithmetic each kernel performs is not a
constant of PyTorch: it depends on the implementation (single-tensor, foreach, fused), the dtype, and the
libraries the build dispatches to on this CPU (Intel's MKL computes the float32 square root differently on
its AVX-512, AVX2 and generic code paths). So nothing here is assumed: each kernel of the step is run
through torch on probe inputs (vector bodies and tails, magnitudes over many decades, every bf16 value for
the square root) and compared with candidate laws written in numpy. The first candidate that reproduces
torch bit for bit on every probe is the law; when none does, the law is ``library:<fingerprint>``: the
replay borrows that one kernel from torch, and the fingerprint (a hash of the kernel's outputs on the probe
inputs) tells whether another machine's library computes the same bits.

Probing takes about a second per (dtype, implementation) and is cached per machine and torch build in
``$XDG_CACHE_HOME/dead-token-lab/laws/``. A run file records the laws of the machine that trained it, so a
replay on another machine uses the recording machine's arithmetic.

A run trained on a GPU is probed on that GPU (``device="cuda"``): the same candidates, run through the CUDA
kernels. A borrowed CUDA kernel reads ``library@cuda:<fingerprint>``; the replay borrows it from the GPU
when the verifying machine has one, and says so when it has to fall back to the CPU's kernel.

The kernels of one AdamW step (torch 2.13, `torch.optim.AdamW`, not capturable, no amsgrad):

    decay    θ ← θ·(1 − ηλ)                 mul_ by a Python scalar
    lerp     m ← m + (1 − β₁)·(g − m)       lerp_
    beta2    v ← v·β₂                       mul_
    addcmul  v ← v + (1 − β₂)·g·g           addcmul_
    sqrt     d ← √v
    bias2    d ← d / √(1 − β₂ᵗ)             div_ by a Python scalar
    eps      d ← d + ε                      add_
    addcdiv  θ ← θ + (−η/(1 − β₁ᵗ))·m / d   addcdiv_

A bf16 kernel computes in float32 and rounds its result to bf16 once. The fused implementation runs the
whole step in one float32 kernel; its law is the single kernel ``step``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from experiments.bits import from_float32, to_float32

F32 = np.float32
IMPLS = ("single", "foreach", "fused")
KERNELS = ("decay", "lerp", "beta2", "addcmul", "sqrt", "bias2", "eps", "addcdiv")
PROBE_VERSION = 4  # bump when the probe suite or the candidates change

# Candidate laws per kernel, most specific first. "f32": a Python scalar enters the kernel as float32;
# "dtype": it is first rounded to the tensor's dtype (what foreach's scalar overloads do to bf16 tensors).
# "recip…", "div-first…" and "mul-first…" are the CUDA kernels' habits: division by a CPU scalar as a
# multiplication by its reciprocal, and addcdiv / addcmul written a + s·(b / c) and a + s·(b·c), which nvcc
# contracts into one fused multiply-add.
CANDIDATES = {
    "decay": ("f32", "dtype"),
    "lerp": ("fma", "fma-dtype", "unfused"),
    "beta2": ("f32", "dtype"),
    "addcmul": ("fma", "fma-dtype", "unfused", "mul-first-fma", "mul-first"),
    "sqrt": ("ieee",),
    "bias2": ("f32", "dtype", "recip", "recip64"),
    "eps": ("dtype", "f32"),
    "addcdiv": ("f32", "dtype", "div-first-fma", "div-first"),
}


# --------------------------------------------------------------------------- exact arithmetic helpers


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add a·b + c, rounded once (a, b, c float32).

    a·b is exact in float64 (24 + 24 bits); the sum is made exact-enough by rounding it to odd (TwoSum
    error as a sticky bit), after which the single rounding to float32 is the correctly rounded result.
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c64 = np.asarray(c, np.float64)
    s = p + c64
    bp = s - c64
    err = (p - bp) + (c64 - (s - bp))  # TwoSum: s + err == p + c exactly
    bits = s.view(np.uint64)
    inexact_even = (err != 0) & ((bits & np.uint64(1)) == 0) & np.isfinite(s)
    if inexact_even.any():
        toward = np.where(err > 0, np.inf, -np.inf)
        s = np.where(inexact_even, np.nextafter(s, toward), s)
    return s.astype(np.float32)


def rnd(x, bf16: bool):
    """A kernel's store: the float32 result rounded to bf16 (as float32 values) or kept."""
    return to_float32(from_float32(np.asarray(x, F32))) if bf16 else np.asarray(x, F32)


def scalar(s: float, law: str, bf16: bool) -> np.float32:
    """A Python scalar as a kernel sees it."""
    s32 = F32(s)
    return F32(rnd(np.array([s32]), True)[0]) if (law == "dtype" and bf16) else s32


# --------------------------------------------------------------------------- the kernels in numpy


def library_device(law: str) -> str:
    """The device a borrowed kernel comes from: ``library@cuda:…`` the GPU, plain ``library…`` the CPU."""
    return law[len("library@"):].split(":", 1)[0] if law.startswith("library@") else "cpu"


def library_law(digest: str, device: str) -> str:
    return f"library:{digest}" if device == "cpu" else f"library@{device}:{digest}"


def kernel(name: str, law: str, bf16: bool, impl: str, *args):
    """One kernel's float32 result (not yet stored) under `law`; args are float32 arrays and Python scalars.

    decay(θ, s) lerp(m, g, w) beta2(v, b) addcmul(v, g, c) sqrt(v) bias2(d, s) eps(d, e) addcdiv(θ, m, d, s)
    """
    if law.startswith("library"):
        return torch_kernel(name, impl, bf16, *args, device=library_device(law))
    if name in ("decay", "beta2"):
        x, s = args
        return x * scalar(s, law, bf16)
    if name == "lerp":
        m, g, w = args
        if law == "unfused":  # the same two branches, multiply and add rounded separately
            w32 = F32(w)
            return m + w32 * (g - m) if abs(float(w32)) < 0.5 else g - (g - m) * (F32(1) - w32)
        w32 = scalar(w, "dtype" if law == "fma-dtype" else "f32", bf16)
        # torch's lerp: a + w·(b − a) for |w| < 0.5, else b − (1 − w)·(b − a), each one fused multiply-add
        if abs(float(w32)) < 0.5:
            return fma32(np.full_like(m, w32), g - m, m)
        return fma32(np.full_like(m, w32 - F32(1)), g - m, g)
    if name == "addcmul":
        v, g, c = args
        if law == "unfused":
            return v + (F32(c) * g) * g
        if law.startswith("mul-first"):
            gg = g * g
            return fma32(np.full_like(gg, F32(c)), gg, v) if law == "mul-first-fma" else v + F32(c) * gg
        c32 = scalar(c, "dtype" if law == "fma-dtype" else "f32", bf16)
        return fma32(c32 * g, g, v)
    if name == "sqrt":
        return np.sqrt(args[0])
    if name == "bias2":
        d, s = args
        if law == "recip":
            return d * (F32(1) / scalar(s, "f32", bf16))
        if law == "recip64":  # the reciprocal taken in double precision, then rounded to float32
            return d * F32(1.0 / float(s))
        return d / scalar(s, law, bf16)
    if name == "eps":
        d, e = args
        return d + scalar(e, law, bf16)
    if name == "addcdiv":
        w, m, d, s = args
        if law.startswith("div-first"):
            s32 = scalar(s, "f32", bf16)
            return fma32(np.full_like(m, s32), m / d, w) if law == "div-first-fma" else w + s32 * (m / d)
        return w + (scalar(s, law, bf16) * m) / d
    raise ValueError(f"unknown kernel {name!r}")


# --------------------------------------------------------------------------- the kernels in torch


def _as_torch(x, bf16: bool, device: str = "cpu"):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, F32).copy())
    t = t.bfloat16() if bf16 else t  # rounded on the CPU: the values are exact in the dtype anyway
    return t if device == "cpu" else t.to(device)


def _values(t) -> np.ndarray:
    import torch

    t = t.cpu()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy().copy()


def torch_kernel(name: str, impl: str, bf16: bool, *args, device: str = "cpu"):
    """The kernel as `torch.optim.AdamW(foreach=impl == "foreach")` calls it, on float32 value arrays
    (exactly representable in the tensor dtype), on `device`; returns float32 values of the stored result."""
    import torch

    arrs = [_as_torch(a, bf16, device) if isinstance(a, np.ndarray) else a for a in args]
    fe = impl == "foreach"
    if name in ("decay", "beta2"):
        x, s = arrs
        torch._foreach_mul_([x], s) if fe else x.mul_(s)
    elif name == "lerp":
        x, g, w = arrs
        torch._foreach_lerp_([x], [g], w) if fe else x.lerp_(g, w)
    elif name == "addcmul":
        x, g, c = arrs
        torch._foreach_addcmul_([x], [g], [g], c) if fe else x.addcmul_(g, g, value=c)
    elif name == "sqrt":
        x = torch._foreach_sqrt([arrs[0]])[0] if fe else arrs[0].sqrt()
    elif name == "bias2":
        x, s = arrs
        torch._foreach_div_([x], [s]) if fe else x.div_(s)  # foreach divides by a list of scalars
    elif name == "eps":
        x, e = arrs
        torch._foreach_add_([x], e) if fe else x.add_(e)
    elif name == "addcdiv":
        x, m, d, s = arrs
        torch._foreach_addcdiv_([x], [m], [d], [s]) if fe else x.addcdiv_(m, d, value=s)
    else:
        raise ValueError(f"unknown kernel {name!r}")
    return _values(x)


def torch_fused_step(W, m, v, g, t: int, lr: float, beta1: float, beta2: float, eps: float,
                     weight_decay: float, bf16: bool, device: str = "cpu"):
    """One step of torch's fused AdamW kernel on float32 value arrays; (W, m, v) as float32 values."""
    import torch

    p, mm, vv, gg = (_as_torch(a, bf16, device) for a in (W, m, v, g))
    step = torch.tensor(float(t), device=device)  # the optimizer keeps `step` on the parameters' device
    torch._fused_adamw_([p], [gg], [mm], [vv], [], [step], lr=lr, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
    return _values(p), _values(mm), _values(vv)


# --------------------------------------------------------------------------- the probe


_SIZES = (1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 1000, 4099, 65_537)


def _inputs(rng, n: int, scale: float, positive: bool = False) -> np.ndarray:
    """Values over many decades (dead-token gradients are tiny, weights are not), both signs."""
    x = rng.normal(0, 1, n) * scale * 10.0 ** rng.uniform(-5, 0, n)
    x = np.abs(x) if positive else x
    return x.astype(F32)


def _scalars(name: str) -> tuple[float, ...]:
    """Scalars the probe tries per kernel: the recipes' values and awkward ones."""
    betas2 = (0.999, 0.9999, 0.998, 0.995, 0.99, 0.98, 0.95, 0.9, 0.6, 0.3)
    return {
        # large ηλ too: near 1 every candidate rounds θ·s to the same bf16, so only these tell them apart
        "decay": tuple(1 - lr * wd for lr in (0.2, 0.05, 1e-2, 1e-3) for wd in (0.5, 0.1, 0.01)),
        "lerp": (0.1, 0.05, 0.2, 0.3, 0.5, 0.7, 0.01),
        "beta2": betas2,
        "addcmul": tuple(1 - b for b in betas2),
        "bias2": tuple((1 - b ** t) ** 0.5 for b in (0.999, 0.95, 0.99) for t in (1, 2, 7, 300)),
        "eps": (1e-8, 1e-6, 1e-10, 3e-7),
        "addcdiv": tuple(-lr / (1 - b ** t) for lr in (1e-3, 3e-4, 0.02) for b in (0.9, 0.8) for t in (1, 5, 90)),
        "sqrt": (None,),
    }[name]


def _probe_cases(name: str, bf16: bool):
    """(args...) tuples for one kernel, deterministic, covering vector bodies and scalar tails."""
    rng = np.random.default_rng(20261202)
    for s in _scalars(name):
        for n in _SIZES if name == "sqrt" else _SIZES[:-1]:  # the long vector (MKL's path) for sqrt only
            W = rnd(_inputs(rng, n, 0.5), bf16)
            m, g = rnd(_inputs(rng, n, 1e-3), bf16), rnd(_inputs(rng, n, 1e-2), bf16)
            v = _inputs(rng, n, 1e-5, positive=True)
            if name == "addcmul":  # half the rows where v and (1 − β₂)·g² are alike: fused and not differ there
                like = (F32(s) * g * g * F32(10.0) ** rng.uniform(-1, 1, n).astype(F32)).astype(F32)
                v = np.where(rng.random(n) < 0.5, like, v)
            v = rnd(v, bf16)
            d = rnd(_inputs(rng, n, 1e-3, positive=True) + F32(1e-9), bf16)
            yield {"decay": (W, s), "lerp": (m, g, s), "beta2": (v, s), "addcmul": (v, g, s), "sqrt": (v,),
                   "bias2": (d, s), "eps": (d, s), "addcdiv": (W, m, d, s)}[name]
    if name == "sqrt" and bf16:  # every finite non-negative bf16 value
        yield (to_float32(np.arange(0, 0x7F80, dtype=np.uint16)),)
    # A one-ULP float32 difference between candidates (s·m / d against s·(m / d); d / s against d · (1 / s))
    # shows in bf16 only where the float32 result lies next to a bf16 rounding midpoint, about once in 10⁵:
    if bf16 and name == "addcdiv":  # one long vector
        n = 1 << 21
        d = rnd(_inputs(rng, n, 1e-3, positive=True) + F32(1e-9), bf16)
        yield (rnd(_inputs(rng, n, 0.5), bf16), rnd(_inputs(rng, n, 1e-3), bf16), d, -1.3e-3)
    if bf16 and name == "addcmul":  # one long vector where v and (1 − β₂)·g² are alike
        n = 1 << 21
        g = rnd(_inputs(rng, n, 1e-2), bf16)
        v = rnd((F32(0.05) * g * g * F32(10.0) ** rng.uniform(-1, 1, n).astype(F32)).astype(F32), bf16)
        yield (v, g, 0.05)
    if bf16 and name == "bias2":
        # d / s has only 256 mantissas per scalar (d's 8 bits, two binades), so sweep the scalar instead
        d = to_float32(np.arange(0x3F80, 0x4080, dtype=np.uint16))  # every bf16 in [1, 4)
        for s in rng.uniform(0.03, 1.0, 20_000):
            yield (d, float(s))


def _digest(h, x: np.ndarray) -> None:
    h.update(np.ascontiguousarray(x, F32).tobytes())


def probe_kernel(name: str, bf16: bool, impl: str, device: str = "cpu") -> str:
    """The law of one kernel on this machine: the first candidate that reproduces torch on every probe.

    Two candidates can agree on every bf16 probe (a one-ULP float32 difference that almost never moves a bf16
    rounding: v + s·(g·g) with and without a fused multiply-add, g·g being exact). The kernel computes in
    float32 for both dtypes, so the float32 probe of the same kernel, which tells them apart, decides.
    """
    cases = list(_probe_cases(name, bf16))
    wants = [rnd(torch_kernel(name, impl, bf16, *(a.copy() if isinstance(a, np.ndarray) else a for a in c),
                              device=device), bf16)
             for c in cases]
    found = [law for law in CANDIDATES[name]
             if all(np.array_equal(rnd(kernel(name, law, bf16, impl, *c), bf16).view(np.uint32), w.view(np.uint32))
                    for c, w in zip(cases, wants, strict=True))]
    if len(found) > 1 and bf16:
        in_fp32 = current(False, impl, device)[name]
        return in_fp32 if in_fp32 in found else found[0]
    if found:
        return found[0]
    h = hashlib.sha256()
    for w in wants:
        _digest(h, w)
    return library_law(h.hexdigest()[:12], device)


def _probe_fused(bf16: bool, device: str = "cpu") -> str:
    """The fused kernel is borrowed whole; its fingerprint says whether two machines compute the same bits."""
    rng = np.random.default_rng(7)
    h = hashlib.sha256()
    for n in _SIZES:
        for t, b2 in ((1, 0.999), (7, 0.95), (300, 0.99)):
            W, g = rnd(_inputs(rng, n, 0.5), bf16), rnd(_inputs(rng, n, 1e-2), bf16)
            m, v = rnd(_inputs(rng, n, 1e-3), bf16), rnd(_inputs(rng, n, 1e-5, positive=True), bf16)
            for x in torch_fused_step(W, m, v, g, t, 1e-3, 0.9, b2, 1e-8, 0.1, bf16, device):
                _digest(h, x)
    return library_law(h.hexdigest()[:12], device)


def probe(bf16: bool, impl: str, device: str = "cpu") -> dict:
    """Every kernel law of one (dtype, implementation) on this machine's `device`, uncached."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if impl == "fused":
        return {"step": _probe_fused(bf16, device)}
    return {name: probe_kernel(name, bf16, impl, device) for name in KERNELS}


def device_kind(device) -> str:
    """'cpu', 'cuda' or 'mps' for a torch device or its name: the laws are one per kind (every GPU of a
    machine is one model here; the probe runs on the current one)."""
    return str(device).split(":", 1)[0]


# --------------------------------------------------------------------------- this machine, cached


def machine(device: str = "cpu") -> dict:
    """What decides the kernels' bits here: torch build, ATen's vector ISA, the CPU and MKL's settings; for a
    GPU also its model, compute capability and the CUDA / HIP runtime torch was built with."""
    import torch

    cpu, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    vector = {f for f in flags.split() if f.startswith(("avx", "sse4", "fma", "f16c", "asimd", "sve", "neon"))}
    return {
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", ""),
        "arch": platform.machine(),
        "cpu": cpu,
        "cpu_vector": sorted(vector),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": bool(torch.backends.mkl.is_available()),
        "env": {k: os.environ[k] for k in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
                if k in os.environ},
        "python": sys.version.split()[0],
        "live": _live_kernels(),
        **(_gpu(device) if device != "cpu" else {}),
    }


def _gpu(device: str) -> dict:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {"device": "cuda", "gpu": props.name, "gpu_capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    return {"device": device}


@functools.cache
def _live_kernels() -> dict:
    """What this process's kernels do now, not what its environment says they should do.

    MKL reads MKL_CBWR at its first call, so two processes with the same environment can run different code
    paths (one imported torch before `pin_numerics` set the variable); a cached probe from the one must not
    be served to the other. The branch MKL took and a digest of torch's float32 square root on a fixed
    long vector (MKL's path) tell them apart, in about a millisecond.
    """
    import torch

    branch = None
    try:
        lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
        if lib.exists():
            branch = int(ctypes.CDLL(str(lib)).mkl_serv_cbwr_get(1))  # MKL_CBWR_BRANCH: the path in use
    except (OSError, AttributeError, ValueError):
        pass  # no MKL in this build, or not a shared library: the digest alone decides
    x = _inputs(np.random.default_rng(20261203), 65_537, 1e-5, positive=True)
    h = hashlib.sha256()
    for impl in ("single", "foreach"):
        _digest(h, torch_kernel("sqrt", impl, False, x.copy()))
    return {"mkl_cbwr_branch": branch, "sqrt_fp32": h.hexdigest()[:12]}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dead-token-lab" / "laws"


_MEMO: dict[tuple[bool, str, str], dict] = {}


def current(bf16: bool, impl: str, device: str = "cpu") -> dict:
    """The probed laws of this machine's `device` for (dtype, impl), from memory, the on-disk cache, or a
    fresh probe."""
    device = device_kind(device)
    memo = (bf16, impl, device)
    if memo in _MEMO:
        return _MEMO[memo]
    mach = machine(device)
    fp = hashlib.sha256(json.dumps([PROBE_VERSION, mach], sort_keys=True).encode()).hexdigest()[:16]
    path = _cache_dir() / f"{fp}-{'bf16' if bf16 else 'fp32'}-{impl}.json"
    laws = None
    try:
        laws = json.loads(path.read_text())["laws"]
    except (OSError, ValueError, KeyError):
        pass
    if laws is None:
        laws = probe(bf16, impl, device)
        try:  # a cache that cannot be written only costs a probe next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"machine": mach, "laws": laws}, sort_keys=True, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    _MEMO[memo] = laws
    return laws


def for_run(bf16: bool, impl: str, device: str = "cpu") -> dict:
    """What a run file records: the machine and its laws for the run's arithmetic on the device it trained
    on (JSON-able)."""
    device = device_kind(device)
    return {"machine": machine(device), "device": device, "arith": "bf16" if bf16 else "fp32", "impl": impl,
            "laws": current(bf16, impl, device), "probe_version": PROBE_VERSION}


def available(device: str) -> bool:
    """Whether this machine can run `device`'s kernels (to borrow a recorded library kernel from it)."""
    import torch

    kind = device_kind(device)
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return kind == "cpu"


def pin_numerics() -> None:
    """Ask MKL for its AVX2 code path on every x86 CPU that has AVX2 (Conditional Numerical Reproducibility).

    MKL's float32 square root differs between its AVX-512, AVX2 and generic code paths (one ULP on 0.7 % to
    17 % of inputs), and MKL picks the path from the CPU. MKL_CBWR=AVX2 makes every AVX2-capable CPU, Intel
    or AMD, take the same path, whose square root the probe finds correctly rounded. It only takes effect
    before the process's first MKL call, so the package sets it at import; a user's own MKL_CBWR wins, and
    the probe reports whatever the machine actually does.
    """
    if "MKL_CBWR" in os.environ or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return
    if " avx2" in f" {flags.split(':', 1)[-1]} ":
        os.environ["MKL_CBWR"] = "AVX2"
