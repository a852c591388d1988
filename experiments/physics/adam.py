"""The laws of physics: one AdamW step re-computed with our own arithmetic, bit for bit.

PyTorch's AdamW (torch 2.13, not capturable, no amsgrad) executes this sequence per parameter tensor in
the single-tensor and foreach implementations; every line is one kernel, and a kernel on a bf16 tensor
computes in float32 ("opmath") and rounds its result to bf16 once, round to nearest even:

    θ ← θ·(1 − η·λ)                          decay    (only when λ ≠ 0)
    m ← m + (1 − β₁)·(g − m)                 lerp
    v ← v·β₂                                 beta2
    v ← v + (1 − β₂)·g·g                     addcmul
    d ← √v                                   sqrt
    d ← d / √(1 − β₂ᵗ)                       bias2
    d ← d + ε                                eps
    θ ← θ + ((−η / (1 − β₁ᵗ))·m) / d         addcdiv

Bias corrections and the step size are Python doubles. How each kernel computes (where a scalar is rounded
to bf16 first, which multiply-add is fused, whether the square root is correctly rounded) is not written
down here but probed on the running machine by `experiments.physics.laws`; e.g. foreach rounds the scalars of its
`mul_` (1 − ηλ and β₂) to bf16, so at β₂ = 0.95 it multiplies by 0.94921875, and MKL's float32 square root
is not correctly rounded on AVX-512. The gradient is the recorded (unclipped) one times the recorded clip
scale (clip_grad_norm_ multiplies in place, one rounding). The fused implementation runs the whole step as
one float32 kernel, which the replay borrows from the library (law ``step``: ``library:<fingerprint>``).

Everything else is numpy: float32 operations in numpy are correctly rounded IEEE operations, and the fused
multiply-add is computed exactly in float64 with a sticky bit (round to odd), then rounded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.bits import from_float32, to_float32
from experiments.physics.laws import fma32, kernel  # noqa: F401  (fma32: the one fused multiply-add, used by tests)

F32 = np.float32


# --------------------------------------------------------------------------- number formats


# bf16 bits <-> float32: experiments.bits' exact widening and round-to-nearest-even narrowing (checked against
# torch's cast in tests/rig/test_adam.py), under the names the replay, log/2026-11-22-2015-laws-of-physics.qmd
# and the tests use (the rig's stochastic rounding is `bits.stochastic_round`)
bf16_to_f32 = to_float32
f32_to_bf16 = from_float32


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


def laws_for(bf16: bool, impl: str = "foreach", laws: dict | None = None) -> dict:
    """The arithmetic of one step: the structure (`LAWS`), this machine's probed kernel laws, then overrides."""
    from experiments.physics import laws as kernel_laws
    probed = kernel_laws.current(bf16, impl)
    if impl == "fused":  # decompositions of a fused run take the single-tensor kernels as the nearest model
        probed = {**kernel_laws.current(bf16, "single"), **probed}
    return {**LAWS, **probed, **normalise_laws(laws)}


def adamw_step(W, m, v, g, t: int, hp: Hyper, clip_scale: float = 1.0, bf16: bool = True,
               laws: dict | None = None, impl: str = "foreach") -> StepResult:
    """One AdamW step t (1-based) from W[t−1], m[t−1], v[t−1] and the recorded gradient g[t].

    bf16=True: W, m, v, g are uint16 bf16 bit patterns and every kernel rounds to bf16; False: float32.
    At t = 1 pass m = v = 0. `impl` is the run's optim.impl; `laws` overrides the probed kernel laws
    (a recording machine's, or a negative control: see `LAWS`).
    """
    law = laws_for(bf16, impl, laws)
    m, v, g = (_val(x, bf16) for x in (m, v, g))
    if clip_scale != 1.0:  # clip_grad_norm_: g.mul_(scale) on the gradient, in its own dtype
        g = _val(_round(g * F32(clip_scale), bf16), bf16)
    if impl == "fused":
        return _fused_step(W, m, v, g, t, hp, bf16, law)
    rnd = _rounder(bf16, law)
    m = rnd(kernel("lerp", law["lerp"], bf16, impl, m, g, 1 - hp.beta1))
    v = rnd(kernel("beta2", law["beta2"], bf16, impl, v, hp.beta2))
    v = rnd(kernel("addcmul", law["addcmul"], bf16, impl, v, g, 1 - hp.beta2))
    return apply_update(W, m, v, t, hp, bf16=bf16, laws=law, state_is_bits=False, impl=impl)


def _fused_step(W, m, v, g, t: int, hp: Hyper, bf16: bool, law: dict) -> StepResult:
    """The fused implementation is one float32 kernel; its law is borrowed whole from the library."""
    from experiments.physics.laws import library_device, torch_fused_step

    step = str(law.get("step", "library"))
    if not step.startswith("library"):
        raise ValueError(f"fused AdamW has no numpy law {law['step']!r}; it is replayed through the library")
    Wn, mn, vn = torch_fused_step(_val(W, bf16), m, v, g, t, hp.lr, hp.beta1, hp.beta2, hp.eps,
                                  hp.weight_decay, bf16, library_device(step))
    nan = np.full_like(Wn, np.nan)
    return StepResult(W=_round(Wn, bf16), m=_round(mn, bf16), v=_round(vn, bf16), decayed=nan, denom=nan,
                      intended=nan)


def _rounder(bf16: bool, law: dict):
    return (lambda x: _val(_round(x, bf16), bf16)) if _truthy(law["round_each_op"]) else (lambda x: x)


def apply_update(W, m, v, t: int, hp: Hyper, bf16: bool = True, laws: dict | None = None,
                 state_is_bits: bool = True, impl: str = "foreach") -> StepResult:
    """The rest of step t once m[t], v[t] are known: weight decay, the denominator, the Adam term, θ[t].

    This is how a recording is decomposed: W[t−1] with the recorded m[t], v[t] gives the intended update
    and what bf16 rounding kept of it, without the gradient.
    """
    law = laws_for(bf16, impl, laws)
    W = _val(W, bf16)
    if state_is_bits:
        m, v = _val(m, bf16), _val(v, bf16)
    lr, b1, b2, eps, wd = hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay
    rnd = _rounder(bf16, law)
    if wd != 0 and law["decay_order"] == "before":
        W = rnd(kernel("decay", law["decay"], bf16, impl, W, 1 - lr * wd))
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    step_size = (lr / bc1) * -1
    if law["eps_place"] == "outside":
        d = rnd(kernel("sqrt", law["sqrt"], bf16, impl, v))
        d = rnd(kernel("bias2", law["bias2"], bf16, impl, d, bc2 ** 0.5))
        d = rnd(kernel("eps", law["eps"], bf16, impl, d, eps))
    else:  # ε inside the square root: a textbook variant
        eps32 = kernel("eps", law["eps"], bf16, impl, np.zeros(1, F32), eps)
        d = rnd(kernel("sqrt", law["sqrt"], bf16, impl, rnd(v / F32(bc2) + eps32)))
    decayed = W
    intended = (F32(step_size) * m) / d
    W = rnd(kernel("addcdiv", law["addcdiv"], bf16, impl, W, m, d, step_size))
    if wd != 0 and law["decay_order"] == "after":
        W = rnd(kernel("decay", law["decay"], bf16, impl, W, 1 - lr * wd))
    return StepResult(W=_round(W, bf16), m=_round(m, bf16), v=_round(v, bf16), decayed=decayed, denom=d,
                      intended=intended)


def _truthy(value) -> bool:
    return value not in (False, 0, 0.0, "0", "false", "no")


# The structure of the step as PyTorch executes it; a negative control replaces one part. The kernels'
# own arithmetic (which scalar is rounded where, which multiply-add is fused, whose square root) is not
# assumed: `experiments.physics.laws` probes it on this machine, and a key here ("sqrt": "library" or "ieee",
# "beta2": "f32", ...) overrides one kernel. The old spellings "decay" / "eps" for the order and the place
# of ε still work as negative controls.
LAWS = {"decay_order": "before", "eps_place": "outside", "round_each_op": True}
_ALIASES = {("decay", "after"): ("decay_order", "after"), ("decay", "before"): ("decay_order", "before"),
            ("eps", "inside"): ("eps_place", "inside"), ("eps", "outside"): ("eps_place", "outside")}


def normalise_laws(laws: dict | None) -> dict:
    """Overrides with the negative controls' short spellings mapped to their structural keys."""
    out = {}
    for k, v in (laws or {}).items():
        k2, v2 = _ALIASES.get((k, v), (k, v))
        out[k2] = v2
    return out
