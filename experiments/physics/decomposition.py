"""Every recorded step taken apart: weight decay, momentum, scale, the intended update, and what rounding kept.

For step t, with θ′ = θ[t−1] after the weight-decay multiply and the Adam term
u = −η/(1−β₁ᵗ) · m[t] / (√v̂[t] + ε) computed exactly as PyTorch does (adam.apply_update), the recorded
weights satisfy θ[t] = round(θ′ + u). The rounding residual r = θ′ + u − θ[t] is the part of the intended
update that bf16 discarded: the quantity behind Fimbulwinter, when u stays finite but r = u for every element.

`decompose(run)` streams a recording of W, m, v (grad not needed) and returns per-step aggregates over the
recorded rows; `critical_ratio` places each element against the "critical boundary" where the intended step
is half a ULP of the weight it should move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.errors import DataError
from experiments.lattice import lifecycle as lattice
from experiments.physics import adam


@dataclass
class Decomposition:
    """Per-step aggregates over the recorded rows (arrays aligned with `steps`)."""

    steps: np.ndarray
    decay: np.ndarray  # mean |θ′ − θ[t−1]| per element: what weight decay moved
    mhat: np.ndarray  # mean |m̂| per element
    denom: np.ndarray  # mean (√v̂ + ε) per element
    intended: np.ndarray  # mean |u| per element
    actual: np.ndarray  # mean |θ[t] − θ′| per element: what the Adam term moved after rounding
    lost: np.ndarray  # Σ|r| / Σ|u|: the share of the intended motion rounding discarded
    zeroed: np.ndarray  # fraction of elements with u ≠ 0 whose weight did not move at all
    row_intended: np.ndarray  # mean ‖u‖₂ per row
    row_actual: np.ndarray  # mean ‖θ[t] − θ[t−1]‖₂ per row
    critical: np.ndarray  # median over elements of |u| / (ULP(θ′)/2): below 1, rounding erases the step

    def at(self, step: int) -> int:
        idx = np.flatnonzero(self.steps == step)
        if idx.size == 0:
            raise KeyError(f"step {step} was not decomposed")
        return int(idx[0])


def critical_ratio(decayed: np.ndarray, intended: np.ndarray) -> np.ndarray:
    """|u| / (ULP(θ′)/2) per element: a step below half a ULP rounds back to θ′ (ties aside)."""
    return np.abs(intended) / (0.5 * lattice.ulp(adam.f32_to_bf16(decayed)))


def decompose(run, steps=None, block: int = 32, progress: bool = False) -> Decomposition:
    """Aggregates of every recorded step t ≥ 1 whose predecessor was recorded (bf16 runs)."""
    from tqdm import tqdm

    missing = [t for t in ("W", "m", "v") if t not in run.available]
    if missing:
        raise DataError(f"{run.path.name}: cannot decompose: it did not record {', '.join(missing)}")
    if run.config["precision"]["dtype"] != "bf16":
        raise DataError(f"{run.path.name}: the decomposition is for pure-bf16 runs "
                        f"(this one is {run.config['precision']['dtype']})")
    recorded = set(int(s) for s in run.steps)
    pairs = [t for t in sorted(recorded) if t >= 1 and t - 1 in recorded]
    if steps is not None:
        wanted = set(int(s) for s in steps)
        pairs = [t for t in pairs if t in wanted]
    if not pairs:
        raise DataError(f"{run.path.name}: no two consecutive recorded steps to decompose")
    names = ("decay", "mhat", "denom", "intended", "actual", "lost", "zeroed", "row_intended", "row_actual",
             "critical")
    out = {k: np.zeros(len(pairs)) for k in names}
    with tqdm(total=len(pairs), desc=f"decompose {run.name}", unit="step", disable=not progress) as bar:
        for i in range(0, len(pairs), block):
            chunk = pairs[i:i + block]
            W_prev = run.tensor("W", steps=[t - 1 for t in chunk], kind="bits")
            W_cur = run.tensor("W", steps=chunk, kind="bits")
            m = run.tensor("m", steps=chunk, kind="bits")
            v = run.tensor("v", steps=chunk, kind="bits")
            for j, t in enumerate(chunk):
                k = i + j
                hp = adam.hyper_of(run, t)
                r = adam.apply_update(W_prev[j], m[j], v[j], t, hp, bf16=True,
                                  impl=run.config["optim"].get("impl", "foreach"))
                w0, w1 = adam.bf16_to_f32(W_prev[j]), adam.bf16_to_f32(W_cur[j])
                u = r.intended.astype(np.float64)
                moved = w1.astype(np.float64) - r.decayed.astype(np.float64)
                residual = u - moved
                out["decay"][k] = np.abs(r.decayed.astype(np.float64) - w0).mean()
                out["mhat"][k] = np.abs(adam.bf16_to_f32(m[j]).astype(np.float64)).mean() / (1 - hp.beta1 ** t)
                out["denom"][k] = r.denom.astype(np.float64).mean()
                out["intended"][k] = np.abs(u).mean()
                out["actual"][k] = np.abs(moved).mean()
                total = np.abs(u).sum()
                out["lost"][k] = np.abs(residual).sum() / total if total else 0.0
                nonzero = u != 0
                out["zeroed"][k] = (moved[nonzero] == 0).mean() if nonzero.any() else 0.0
                out["row_intended"][k] = np.linalg.norm(u, axis=-1).mean()
                out["row_actual"][k] = np.linalg.norm(w1.astype(np.float64) - w0, axis=-1).mean()
                out["critical"][k] = np.median(critical_ratio(r.decayed, r.intended))
            bar.update(len(chunk))
    return Decomposition(steps=np.asarray(pairs), **out)


@dataclass
class Lag:
    """Correlation between a row's gradient at step t and its motion at step t + k."""

    lags: np.ndarray  # k = 0 … max_lag
    mean: np.ndarray  # mean over rows of the per-row correlation at each lag
    per_row: np.ndarray  # (rows, lags)
    tokens: np.ndarray

    @property
    def peak(self) -> np.ndarray:
        """Lag of each row's highest correlation."""
        return self.lags[np.argmax(self.per_row, axis=1)]


def lag_correlation(run, rows=None, steps: tuple[int, int] | None = None, max_lag: int = 30) -> Lag:
    """Per row, Pearson correlation of g[t] (after clipping) with −ΔW[t + k] = W[t+k−1] − W[t+k], pooled over
    the row's coordinates and the steps t in `steps` (first, last), for k = 0 … max_lag.

    With Adam, motion follows the momentum m̂, an exponential average of past gradients with time constant
    1/(1 − β₁) = 10 steps, so the correlation should not peak at k = 0 alone but spread over later steps.
    """
    missing = [t for t in ("W", "grad") if t not in run.available]
    if missing:
        raise DataError(f"{run.path.name}: the lag needs W and grad (missing: {', '.join(missing)})")
    recorded = np.asarray(run.steps)
    first, last = steps if steps is not None else (1, int(recorded.max()))
    last = min(last, int(recorded.max()))
    if first < 1 or not np.isin(np.arange(first - 1, last + 1), recorded).all():
        raise DataError(f"{run.path.name}: the lag needs every step from {first - 1} to {last} recorded")
    if last - first < max_lag + 2:
        raise DataError(f"{run.path.name}: steps {first}..{last} are too few for lags up to {max_lag}")
    W = np.asarray(run.W(steps=slice(first - 1, last + 1), rows=rows), dtype=np.float32)
    g = np.asarray(run.tensor("grad", steps=slice(first, last + 1), rows=rows), dtype=np.float32)
    g = g * run.clip_scale[first - 1:last, None, None].astype(np.float32)
    motion = -(W[1:] - W[:-1])  # (T, N, D), aligned with g: motion[t] is the step t update
    T = motion.shape[0]
    lags = np.arange(max_lag + 1)
    per_row = np.zeros((motion.shape[1], lags.size))
    for k in lags:
        x = g[: T - k].astype(np.float64)
        y = motion[k:].astype(np.float64)
        x = x - x.mean(axis=(0, 2), keepdims=True)
        y = y - y.mean(axis=(0, 2), keepdims=True)
        num = (x * y).sum(axis=(0, 2))
        den = np.sqrt((x * x).sum(axis=(0, 2)) * (y * y).sum(axis=(0, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            per_row[:, k] = np.nan_to_num(num / den)
    tokens = np.asarray(run.tokens) if rows is None else np.atleast_1d(np.asarray(rows))
    return Lag(lags=lags, mean=per_row.mean(axis=0), per_row=per_row, tokens=tokens)


def row_critical(run, step: int, reduce=np.median) -> np.ndarray:
    """Per recorded row, `reduce` (default the median) over its coordinates of |u| / (ULP(θ′)/2) at `step`
    (see critical_ratio); np.max gives the row's most mobile coordinate."""
    hp = adam.hyper_of(run, step)
    r = adam.apply_update(run.tensor("W", steps=step - 1, kind="bits"), run.tensor("m", steps=step, kind="bits"),
                          run.tensor("v", steps=step, kind="bits"), step, hp, bf16=True,
                          impl=run.config["optim"].get("impl", "foreach"))
    return reduce(critical_ratio(r.decayed, r.intended), axis=-1)
