"""The bfloat16 lattice: ULPs, lattice coordinates, lattice displacements and per-token lifecycles.

Every function takes bf16 data as ``uint16`` bit patterns (or ``ml_dtypes.bfloat16`` arrays, which are viewed
as their bits), because the bits are the ground truth: converting to float first would hide which lattice
cell a value occupies.

The element-wise quantities (the bf16 layout, `ulp`, `ordinal`, conversions to and from float32) live in
`experiments.bits` and are re-exported here. Infinities and NaNs (E = 255) have no lattice position: every
function here rejects them with a ``ValueError`` that says where the first one is.

Conventions for displacements (lore/lattice-scale.qmd, "Displacements in lattice units"): ``ΔW = W[t] −
W[t-1]`` in float32 from bf16 values, and ``ΔW′ = ΔW / ULP(W[t-1])`` elementwise, with the ULP of the
*starting* value. Within a binade ΔW′ is an integer; a step down into the lower binade can give a half
integer (tests/lattice/test_lattice.py). A weight leaving an exact zero divides by ``2**-133`` and gives an
enormous (possibly infinite) ΔW′ (the units pitfalls of lore/lattice-scale.qmd); it is kept, not zeroed,
because it is honestly a huge move and all threshold comparisons stay correct.

Lifecycle phases of one token over a trajectory (lore/lattice-lifecycle.qmd, "Phases by last exit"), each
boundary being the *last* step the hotter criterion held ("last exit", because tokens chatter across
boundaries before leaving): Early ``‖ΔW′‖₂ > √D``; Midlife ``L∞ > 1``; Late ``L∞ ≤ 1`` but still moving
(``L1 > 0``); Fimbulwinter ``L1 = 0`` for good, i.e. every recorded step after the last motion. The seeds'
notebook scheme uses different cuts — Hypernova ``‖ΔW′‖₂ > 1000``, Superluminal ``> √D``, Spherical
``L1 > 1``, Stumbling ``L1 ∈ {0, 1}`` — so the tracker also records the last step of ``‖ΔW′‖₂ > 1000`` and of
``L1 > 1``; the page publishes both schemes side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

# the element-wise bf16 quantities live in experiments.bits; re-exported here, where pages and tests use them
from experiments.bits import (  # noqa: F401
    EXPONENT_BIAS,
    MANTISSA_BITS,
    as_bits,
    check_finite,
    exponent_field,
    from_float32,
    ordinal,
    to_float32,
    ulp,
)

PHASES = ("Early", "Midlife", "Late", "Fimbulwinter")
HYPERNOVA = 1000.0  # ‖ΔW′‖₂ cut of the notebook scheme's hottest phase


# ---------------------------------------------------------------------------------------------------------
# element-wise lattice quantities


def lattice_coordinates(bits) -> np.ndarray:
    """Per-element lattice-cell coordinate value / ULP(value) (float64; e.g. 0.5 → 128.0).

    Only *locally* meaningful: inside one binade neighbouring bf16 values differ by exactly 1, but the
    coordinate jumps where the ULP doubles (a power of two), so differences across a binade boundary are not
    cell counts. Use `ordinal` differences for distances that are correct everywhere.
    """
    return to_float32(bits).astype(np.float64) / ulp(bits).astype(np.float64)


def lattice_distance(a, b, norm: str = "linf", axis: int = -1) -> np.ndarray:
    """Lattice distance between bf16 vectors (cells along each axis, via `ordinal`), reduced over `axis`.

    norm: "linf" (max cells along any axis; 1 = adjacent cell), "l1" (total cells), "l2".
    """
    d = np.abs(ordinal(as_bits(a)).astype(np.int64) - ordinal(as_bits(b)).astype(np.int64))  # bf16 only
    if norm == "linf":
        return d.max(axis=axis)
    if norm == "l1":
        return d.sum(axis=axis)
    if norm == "l2":
        return np.sqrt((d.astype(np.float64) ** 2).sum(axis=axis))
    raise ValueError(f"norm must be 'linf', 'l1' or 'l2', not {norm!r}")


def exponent_distance(a, b, axis: int = -1) -> np.ndarray:
    """Exponent-space distance max_i |E_i(a) − E_i(b)| (a selection radius, not a lattice distance)."""
    check_finite(a)
    check_finite(b)
    return np.abs(exponent_field(a) - exponent_field(b)).max(axis=axis)


def lattice_displacement(prev, cur) -> np.ndarray:
    """ΔW′ = (W[t] − W[t−1]) / ULP(W[t−1]) elementwise, in float32 (integer within a binade)."""
    prev_b, cur_b = as_bits(prev), as_bits(cur)
    if prev_b.shape != cur_b.shape:
        raise ValueError(f"shape mismatch: previous {prev_b.shape} vs current {cur_b.shape}")
    check_finite(cur_b, "current bf16 data")
    delta = to_float32(cur_b) - to_float32(prev_b)
    with np.errstate(over="ignore"):  # leaving an exact zero may overflow to inf, see module docstring
        return delta / ulp(prev_b)


@dataclass(frozen=True)
class LatticeNorms:
    """L1, L2 and L∞ of ΔW′ over the last axis (float64 arrays of the leading shape)."""

    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def lattice_norms(dw_prime, axis: int = -1) -> LatticeNorms:
    """L1 = Σ|ΔW′| (cells moved), L2 = √ΣΔW′², L∞ = max|ΔW′| over `axis`, in float64."""
    a = np.abs(np.asarray(dw_prime, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        return LatticeNorms(l1=a.sum(axis=axis), l2=np.sqrt((a * a).sum(axis=axis)), linf=a.max(axis=axis))


# ---------------------------------------------------------------------------------------------------------
# lifecycles over a trajectory


@dataclass
class Lifecycle:
    """Per-token phase boundaries and per-step cloud statistics of one trajectory.

    Step numbers are the recorded step labels; ΔW′ at step s is the move from the previous recorded step
    to s. A boundary of −1 means the condition never held. `fimbulwinter` is the first recorded step from
    which the token never moves again (−1 if it is still moving at the last recorded step).
    """

    steps: np.ndarray  # (T,) recorded step labels
    dim: int
    last_early: np.ndarray  # (N,) last step with ‖ΔW′‖₂ > √D
    last_midlife: np.ndarray  # (N,) last step with L∞ > 1
    last_motion: np.ndarray  # (N,) last step with L1 > 0
    last_hypernova: np.ndarray  # (N,) last step with ‖ΔW′‖₂ > 1000 (notebook scheme)
    last_spherical: np.ndarray  # (N,) last step with L1 > 1 (notebook scheme)
    fimbulwinter: np.ndarray  # (N,) first step of permanent stillness
    temperature: np.ndarray  # (T−1,) fraction of tokens moving at steps[1:]
    stillness: list[tuple[int, int]] = field(default_factory=list)  # maximal runs (first, last) of global stillness

    @property
    def n_tokens(self) -> int:
        return int(self.last_motion.shape[0])

    def phase_map(self) -> np.ndarray:
        """(N, T−1) phase index per token and step (0 Early … 3 Fimbulwinter, see PHASES), by last exits."""
        s = self.steps[1:][None, :]
        out = np.full((self.n_tokens, s.shape[1]), 3, dtype=np.int8)
        out[s <= self.last_motion[:, None]] = 2
        out[s <= self.last_midlife[:, None]] = 1
        out[s <= self.last_early[:, None]] = 0
        return out

    def summary(self) -> dict:
        """Medians and extremes of the boundaries over tokens that reached them; global freeze facts."""

        def stats(x):
            x = x[x >= 0]
            if x.size == 0:
                return None
            return {"n": int(x.size), "min": int(x.min()), "median": float(np.median(x)), "max": int(x.max())}

        moving_steps = self.steps[1:][self.temperature > 0]
        return {
            "tokens": self.n_tokens,
            "steps": [int(self.steps[0]), int(self.steps[-1])] if self.steps.size else [],
            "last_early": stats(self.last_early),
            "last_midlife": stats(self.last_midlife),
            "last_motion": stats(self.last_motion),
            "last_hypernova": stats(self.last_hypernova),
            "last_spherical": stats(self.last_spherical),
            "fimbulwinter": stats(self.fimbulwinter),
            "global_last_motion": int(moving_steps[-1]) if moving_steps.size else -1,
            "stillness_periods": len(self.stillness),
            # length in recorded steps (the labels may be sparse)
            "longest_stillness": max((int(np.searchsorted(self.steps, b) - np.searchsorted(self.steps, a)) + 1
                                      for a, b in self.stillness), default=0),
        }


class LifecycleTracker:
    """Accumulates a `Lifecycle` from consecutive blocks of a (T, N, D) trajectory, memory O(N·D).

    Feed blocks in step order with `update(steps, bits)`; consecutive blocks may overlap by one step (the
    block reader does that) or not — the last frame of the previous block is remembered either way.
    """

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._prev_step: int | None = None
        self._steps: list[np.ndarray] = []
        self._temp: list[np.ndarray] = []
        self.last_early = self.last_midlife = self.last_motion = None
        self.last_hypernova = self.last_spherical = None
        self._dim = 0

    def update(self, steps, bits) -> None:
        steps = np.asarray(steps, dtype=np.int64)
        b = as_bits(bits)
        if b.ndim != 3 or b.shape[0] != steps.shape[0]:
            raise ValueError(f"expected bits of shape (T, N, D) with T = len(steps) = {steps.shape[0]}, got {b.shape}")
        if self._prev is not None and steps.size and steps[0] == self._prev_step:
            if not np.array_equal(b[0], self._prev):
                raise ValueError(f"overlapping step {int(steps[0])} differs from the previous block's last frame")
            steps, b = steps[1:], b[1:]
        if steps.size == 0:
            return
        if self._prev_step is not None and steps[0] <= self._prev_step:
            raise ValueError(f"steps must increase: block starts at {int(steps[0])} after {self._prev_step}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError("steps must be strictly increasing within a block")
        if self._prev is None:
            n, d = b.shape[1:]
            self._dim = d
            self.last_early = np.full(n, -1, np.int64)
            self.last_midlife = np.full(n, -1, np.int64)
            self.last_motion = np.full(n, -1, np.int64)
            self.last_hypernova = np.full(n, -1, np.int64)
            self.last_spherical = np.full(n, -1, np.int64)
            self._steps.append(steps[:1])
            self._prev, self._prev_step = b[0].copy(), int(steps[0])
            steps, b = steps[1:], b[1:]
        elif b.shape[1:] != self._prev.shape:
            raise ValueError(f"block rows/dims {b.shape[1:]} differ from earlier blocks {self._prev.shape}")
        sqrt_d = np.sqrt(self._dim)
        prev = self._prev
        temp = np.empty(steps.shape[0])
        for i, s in enumerate(steps):
            norms = lattice_norms(lattice_displacement(prev, b[i]))
            moving = norms.l1 > 0
            self.last_early[norms.l2 > sqrt_d] = s
            self.last_midlife[norms.linf > 1] = s
            self.last_motion[moving] = s
            self.last_hypernova[norms.l2 > HYPERNOVA] = s
            self.last_spherical[norms.l1 > 1] = s
            temp[i] = moving.mean() if moving.size else 0.0
            prev = b[i]
        if steps.size:
            self._prev, self._prev_step = b[-1].copy(), int(steps[-1])
            self._steps.append(steps)
            self._temp.append(temp)

    def result(self) -> Lifecycle:
        if self._prev is None:
            raise ValueError("no steps were given")
        steps = np.concatenate(self._steps)
        temp = np.concatenate(self._temp) if self._temp else np.empty(0)
        return Lifecycle(
            steps=steps,
            dim=self._dim,
            last_early=self.last_early.copy(),
            last_midlife=self.last_midlife.copy(),
            last_motion=self.last_motion.copy(),
            last_hypernova=self.last_hypernova.copy(),
            last_spherical=self.last_spherical.copy(),
            fimbulwinter=_fimbulwinter(steps, self.last_motion),
            temperature=temp,
            stillness=stillness_periods(steps[1:], temp),
        )


def _fimbulwinter(steps: np.ndarray, last_motion: np.ndarray) -> np.ndarray:
    # the recorded step right after the last motion; never moved → the first step; moving at the end → −1
    pos = np.searchsorted(steps, last_motion, side="right")
    out = np.full(last_motion.shape, -1, np.int64)
    ok = pos < steps.size
    out[ok] = steps[pos[ok]]
    out[last_motion < 0] = steps[0]
    return out


def stillness_periods(steps, temperature) -> list[tuple[int, int]]:
    """Maximal runs of steps where no token moved, as (first step, last step) pairs."""
    still = np.asarray(temperature) == 0
    if not still.any():
        return []
    edges = np.diff(np.concatenate([[0], still.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(steps[a]), int(steps[b])) for a, b in zip(starts, ends, strict=True)]


def lifecycle(bits, steps=None) -> Lifecycle:
    """Lifecycle of every token in a (T, N, D) bf16 trajectory held in memory (steps default 0…T−1)."""
    b = as_bits(bits)
    tracker = LifecycleTracker()
    tracker.update(np.arange(b.shape[0]) if steps is None else steps, b)
    return tracker.result()


def iter_step_blocks(run, block: int = 256, rows=None, tensor: str = "W",
                     stored: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (steps, bits) blocks of a recorded run, consecutive blocks overlapping by one step.

    `run` is a run-store reader with ``run.steps`` (the recorded step labels) and
    ``run.tensor(name, steps=slice(first, last + 1), rows=..., kind="bits")`` returning a (T, N, D) uint16
    array (`experiments.store.recording.Run` does). The overlap
    lets each block compute ΔW′ on its own; `LifecycleTracker.update` drops the repeated frame.
    `stored=True` yields whatever the recording holds instead of insisting on bf16 bits: uint16 patterns
    for bf16, float32 for fp32 runs (the geometry analyses accept both).
    """
    if block < 2:
        raise ValueError("block must be at least 2 steps (blocks overlap by one)")
    steps = np.asarray(run.steps)
    start = 0
    while start < steps.size:
        sel = steps[start:start + block]
        # a slice of step numbers selects exactly these recorded steps and lets the reader do one contiguous read
        window = slice(int(sel[0]), int(sel[-1]) + 1)
        data = run.tensor(tensor, steps=window, rows=rows, kind="bits")
        if stored:
            data = np.asarray(data)
            yield sel, (data.view(np.uint16) if data.dtype.name == "bfloat16" else data)
        else:
            yield sel, as_bits(data)
        if start + block >= steps.size:
            break
        start += block - 1


def run_lifecycle(run, block: int = 256, rows=None, tensor: str = "W", progress: bool = True) -> Lifecycle:
    """Lifecycle of a recorded run, streamed in blocks of steps with a tqdm progress bar."""
    from tqdm import tqdm

    tracker = LifecycleTracker()
    n = len(run.steps)
    with tqdm(total=n, desc="lifecycle", unit="step", disable=not progress) as bar:
        seen = 0
        for sel, bits in iter_step_blocks(run, block=block, rows=rows, tensor=tensor):
            tracker.update(sel, bits)
            bar.update(len(sel) - (1 if seen else 0))
            seen += 1
    return tracker.result()
