"""The laws of physics: one AdamW step re-computed with our own arithmetic, bit for bit.

PyTorch's AdamW (torch 2.13, `foreach` and single-tensor implementations, not capturable, no amsgrad)
executes this sequence per parameter tensor; every line is one kernel, and a kernel on a bf16 tensor
computes in float32 ("opmath") and rounds its result to bf16 once, round to nearest even:

    θ ← θ·(1 − η·λ)                          mul_ by a Python scalar (only when λ ≠ 0)
    m ← m + (1 − β₁)·(g − m)                 lerp_: vectorised as fma(w, g − m, m) for w < 0.5
    v ← v·β₂                                 mul_
    v ← v + ((1 − β₂)·g)·g                   addcmul_: fma((1 − β₂)·g, g, v)
    d ← √v                                   sqrt
    d ← d / √(1 − β₂ᵗ)                       div_ by a Python scalar
    d ← d + ε                                add_ (ε first cast to the tensor's dtype)
    θ ← θ + ((−η / (1 − β₁ᵗ))·m) / d         addcdiv_: float32 product, quotient, sum

Bias corrections and the step size are Python doubles; scalars enter a kernel as float32. The gradient is
the recorded (unclipped) one times the recorded clip scale (clip_grad_norm_ multiplies in place, one bf16
rounding). In an fp32 run the same sequence runs in float32 with no bf16 rounding.

Everything here is numpy, written from the equations above, not a call into torch.optim: a mismatch
against a recording is a law we got wrong. float32 operations in numpy are correctly rounded IEEE
operations, so they are the kernels' arithmetic; the one fused multiply-add is computed exactly in float64
with a sticky bit (round to odd) and then rounded once to float32. Which kernel fuses and which scalar is
cast where was established by comparing each kernel alone against PyTorch (tests/physics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.lattice import from_float32, to_float32

F32 = np.float32


# --------------------------------------------------------------------------- number formats


# bf16 bits <-> float32: the lattice module's exact widening and round-to-nearest-even narrowing (checked
# against torch's cast in tests/rig/test_adam.py)
bf16_to_f32 = to_float32
f32_to_bf16 = from_float32


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add a·b + c, rounded once (a, b, c float32).

    a·b is exact in float64 (24 + 24 bits); the sum is made exact-enough by rounding it to odd (TwoSum
    error as a sticky bit), after which the single rounding to float32 is the correctly rounded result.
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bp = s - c64
    err = (p - bp) + (c64 - (s - bp))  # TwoSum: s + err == p + c exactly
    bits = s.view(np.uint64)
    inexact_even = (err != 0) & ((bits & np.uint64(1)) == 0) & np.isfinite(s)
    if inexact_even.any():
        toward = np.where(err > 0, np.inf, -np.inf)
        s = np.where(inexact_even, np.nextafter(s, toward), s)
    return s.astype(np.float32)


def stochastic_round(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """float32 → bf16 by adding 16 random low bits to the bit pattern and cutting them (the rig's rounding):
    rounds the magnitude up with probability equal to the discarded fraction."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return (((bits + np.asarray(noise, dtype=np.int64)) >> 16) & 0xFFFF).astype(np.uint16)


# --------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class Hyper:
    """What one AdamW step needs besides tensors (Python floats, as PyTorch holds them)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


def hyper_of(run, step: int, **replace: float) -> Hyper:
    """The hyper-parameters of a recorded run's step `step` (its scheduled lr), optionally replaced."""
    o = run.config["optim"]
    fixed = dict(beta1=float(o["betas"][0]), beta2=float(o["betas"][1]), eps=float(o["eps"]),
                 weight_decay=float(o["weight_decay"]))
    unknown = set(replace) - set(fixed)
    if unknown:
        raise ValueError(f"hyper: unknown key(s) {sorted(unknown)}; known: {sorted(fixed)}")
    return Hyper(lr=float(run.lr[step - 1]), **{**fixed, **replace})


@dataclass
class StepResult:
    """W, m, v after the step (bits for bf16, float32 otherwise) and the pieces of the update."""

    W: np.ndarray
    m: np.ndarray
    v: np.ndarray
    decayed: np.ndarray  # float32 values of θ after the weight-decay multiply (θ itself when λ = 0)
    denom: np.ndarray  # float32 values of √v̂ + ε as the kernel stored it
    intended: np.ndarray  # float32 Adam term ((−η/(1−β₁ᵗ))·m)/d, before it is added to θ and rounded


def _round(x: np.ndarray, bf16: bool) -> np.ndarray:
    """A kernel's output store: bf16 bits (bf16 tensors) or the float32 itself."""
    return f32_to_bf16(x) if bf16 else x.astype(np.float32, copy=False)


def _val(x: np.ndarray, bf16: bool) -> np.ndarray:
    return bf16_to_f32(x) if bf16 else np.asarray(x, dtype=np.float32)


def adamw_step(W, m, v, g, t: int, hp: Hyper, clip_scale: float = 1.0, bf16: bool = True,
               laws: dict | None = None) -> StepResult:
    """One AdamW step t (1-based) from W[t−1], m[t−1], v[t−1] and the recorded gradient g[t].

    bf16=True: W, m, v, g are uint16 bf16 bit patterns and every kernel rounds to bf16; False: float32.
    At t = 1 pass m = v = 0. `laws` overrides parts of the arithmetic (negative controls: see `LAWS`).
    """
    law = {**LAWS, **(laws or {})}
    m, v, g = (_val(x, bf16) for x in (m, v, g))
    if clip_scale != 1.0:  # clip_grad_norm_: g.mul_(scale) on the gradient, in its own dtype
        g = _val(_round(g * F32(clip_scale), bf16), bf16)
    rnd = _rounder(bf16, law)
    m = rnd(fma32(np.full_like(m, F32(1 - hp.beta1)), g - m, m))
    v = rnd(v * F32(hp.beta2))
    v = rnd(fma32(F32(1 - hp.beta2) * g, g, v))
    return apply_update(W, m, v, t, hp, bf16=bf16, laws=laws, state_is_bits=False)


def _rounder(bf16: bool, law: dict):
    return (lambda x: _val(_round(x, bf16), bf16)) if _truthy(law["round_each_op"]) else (lambda x: x)


def apply_update(W, m, v, t: int, hp: Hyper, bf16: bool = True, laws: dict | None = None,
                 state_is_bits: bool = True) -> StepResult:
    """The rest of step t once m[t], v[t] are known: weight decay, the denominator, the Adam term, θ[t].

    This is how a recording is decomposed: W[t−1] with the recorded m[t], v[t] gives the intended update
    and what bf16 rounding kept of it, without the gradient.
    """
    law = {**LAWS, **(laws or {})}
    W = _val(W, bf16)
    if state_is_bits:
        m, v = _val(m, bf16), _val(v, bf16)
    lr, b1, b2, eps, wd = hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay
    rnd = _rounder(bf16, law)
    if wd != 0 and law["decay"] == "before":
        W = rnd(W * F32(1 - lr * wd))
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    step_size = (lr / bc1) * -1
    # add_(ε) casts the scalar to the tensor's dtype first (mul_ and div_ keep it float32)
    eps32 = bf16_to_f32(f32_to_bf16(np.float32(eps))) if bf16 else F32(eps)
    sqrt = _library_sqrt if (law["sqrt"] == "library" and not bf16) else np.sqrt
    if law["eps"] == "outside":
        d = rnd(sqrt(v))
        d = rnd(d / F32(bc2 ** 0.5))
        d = rnd(d + eps32)
    else:  # ε inside the square root: a textbook variant
        d = rnd(sqrt(rnd(v / F32(bc2) + eps32)))
    decayed = W
    intended = (F32(step_size) * m) / d
    W = rnd(W + intended)
    if wd != 0 and law["decay"] == "after":
        W = rnd(W * F32(1 - lr * wd))
    return StepResult(W=_round(W, bf16), m=_round(m, bf16), v=_round(v, bf16), decayed=decayed, denom=d,
                      intended=intended)


def _truthy(value) -> bool:
    return value not in (False, 0, 0.0, "0", "false", "no")


def _library_sqrt(x: np.ndarray) -> np.ndarray:
    """float32 square root from the library PyTorch links (on x86 CPUs Intel's VML, which is not correctly
    rounded: about 0.7 % of results are one ULP low). Only used to show that this is the whole fp32 gap."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).sqrt().numpy()


# The laws as PyTorch executes them; a negative control replaces one of them. `sqrt`: "ieee" is the
# correctly rounded square root (exact for bf16: the float32 result is rounded to bf16, checked
# exhaustively), "library" borrows PyTorch's float32 sqrt.
LAWS = {"decay": "before", "eps": "outside", "round_each_op": True, "sqrt": "ieee"}
