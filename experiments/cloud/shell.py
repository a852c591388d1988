"""On the shell: how each row's step splits into radial and tangential motion (lore/random-walk-on-the-shell.qmd).

For a row at w_{t−1} that steps by Δw = w_t − w_{t−1}, with r̂ = w_{t−1}/‖w_{t−1}‖ (the position *before* the
step):

- radial part Δw·r̂, tangential part ‖Δw − (Δw·r̂) r̂‖, signed radial fraction f = Δw·r̂ / ‖Δw‖;
- Δr = ‖w_t‖ − ‖w_{t−1}‖, whose sign classifies the step as outward, inward or zero.

Two frames: about the origin (positions w), and about the centroid (comoving positions p = w − C, steps
Δp = Δw − ΔC, r̂ from p_{t−1}). Rows whose stored bits did not change are left out of the fractions f (a zero
step has no direction) and counted as "zero" in the outward/inward/zero shares; in the centroid frame the
fractions use the rows with Δp ≠ 0. `mean_abs_f_incl_zero` averages over every (row, step) with f = 0 for the
rows that did not move, as the seeds did (their median f was 0), for comparison with their numbers.

Seeds on Flannel 1 (3,699 dead rows × 1,000 steps; the page's tables quote them beside ours): mean f 0.1397, mean |f| 0.1402 ⇒ 14% radial / 86%
tangential; outward 36.86%, inward 0.33%, zero 62.81% (111.5:1); Pythagoras E[Δr] ≈ ‖Δw⊥‖²/(2r) predicts
2.79e-7 per step against 3.54e-4 observed; per-token outward counts mean 368.6/1000, variance 6,882.

Streams blocks of steps (memory does not grow with the run); float64 from the exact bf16 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from experiments.bits import as_values
from experiments.cloud.geometry import _row_changed, iter_blocks, row_norms, row_selection
from experiments.store.derived import cached

# ---------------------------------------------------------------------------------------------------------
# null models and significance


def null_radial_fraction(dim: int) -> dict:
    """The signed radial fraction f of a uniformly random direction in `dim` dimensions: E f = 0,
    E|f| = Γ(D/2) / (√π Γ((D+1)/2)) (≈ √(2/(πD)); 0.0997 at D = 64), E f² = 1/D; a symmetric walk steps
    outward and inward equally often (½ each of the steps that change the radius)."""
    e_abs = math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
    return {"dim": dim, "E_f": 0.0, "E_abs_f": e_abs, "E_f2": 1.0 / dim, "sd_abs_f": math.sqrt(1.0 / dim - e_abs ** 2),
            "outward": 0.5, "inward": 0.5}


def log10_binomial_tail(k: int, n: int, p: float = 0.5) -> float:
    """log10 P(X ≥ k) for X ~ Binomial(n, p), from math.lgamma (no scipy, no overflow at n ~ 10⁷).

    Sums the terms from k upwards in log space until they stop mattering (below e⁻⁵⁰ of the sum, past the
    mode); at most 200,000 terms, which covers the mode's ±10σ for n up to ~10⁸."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    lp, lq = math.log(p), math.log1p(-p)

    def log_term(j: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq

    total = log_term(k)
    j, last = k, total
    while j < n and j - k < 200_000:
        j += 1
        last = log_term(j)
        total = max(total, last) + math.log1p(math.exp(-abs(total - last)))
        if last < total - 50 and j > n * p:  # later terms are smaller still: the sum has converged
            break
    return total / math.log(10)


def sign_test(k_out: int, k_in: int) -> dict:
    """Is outward motion more common than inward? Under a symmetric walk each radius-changing step is
    outward with probability ½. Returns z = (k_out − n/2)/√(n/4) and log10 of the one-sided exact binomial
    p-value P(X ≥ k_out) (−inf only when k_out > n, never)."""
    n = k_out + k_in
    z = (k_out - n / 2) / math.sqrt(n / 4) if n else float("nan")
    return {"n": n, "outward": k_out, "inward": k_in, "ratio": k_out / k_in if k_in else float("inf"),
            "z": z, "log10_p": log10_binomial_tail(k_out, n) if n else 0.0}


def dispersion(counts, trials: int) -> dict:
    """Over-dispersion of per-token event counts out of `trials` steps ("Hot and cold tokens" in
    lore/random-walk-on-the-shell.qmd).

    If every token had the same per-step probability p = mean/trials, independently, counts would be
    Binomial(trials, p): variance trials·p(1−p) (index 1). `poisson_index` = variance / mean as the seeds
    compared (variance 6,882 ≫ Poisson 368.6 on Flannel 1)."""
    c = np.asarray(counts, dtype=np.float64)
    mean, var = float(c.mean()), float(c.var(ddof=1)) if c.size > 1 else 0.0
    p = mean / trials if trials else float("nan")
    binom_var = trials * p * (1 - p)
    return {"tokens": int(c.size), "trials": int(trials), "mean": mean, "variance": var,
            "binomial_variance": binom_var, "binomial_index": var / binom_var if binom_var > 0 else float("nan"),
            "poisson_index": var / mean if mean > 0 else float("nan")}


# ---------------------------------------------------------------------------------------------------------
# per-frame accumulation


@dataclass
class FrameMotion:
    """Radial/tangential statistics in one frame ("origin" or "centroid"). Per-transition arrays have length
    T−1 (transition t−1 → t, labelled with step t); totals are over every (row, transition) pair."""

    frame: str
    moved: list = field(default_factory=list)  # per transition: rows counted in the fractions
    outward: list = field(default_factory=list)  # per transition: rows with Δr > 0
    inward: list = field(default_factory=list)  # Δr < 0
    mean_f: list = field(default_factory=list)  # mean signed radial fraction of the moved rows (NaN if none)
    mean_abs_f: list = field(default_factory=list)
    mean_dr: list = field(default_factory=list)  # mean Δr over all rows
    pairs: int = 0  # (row, transition) pairs seen
    n_moved: int = 0
    sum_f: float = 0.0
    sum_abs_f: float = 0.0
    sum_f2: float = 0.0
    sum_radial2: float = 0.0  # Σ (Δw·r̂)²
    sum_step2: float = 0.0  # Σ ‖Δw‖²
    sum_dr: float = 0.0  # Σ Δr
    sum_pythagoras: float = 0.0  # Σ ‖Δw⊥‖² / (2 r_{t−1})
    n_outward: int = 0
    n_inward: int = 0

    def add(self, prev: np.ndarray, cur: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """Add one transition: (N, D) positions before and after, `moved` (N,) marks the rows counted in the
        fractions (those with a zero step are dropped too). Returns the (N,) bool array of outward steps."""
        step = cur - prev
        r_prev = row_norms(prev)
        dr = row_norms(cur) - r_prev
        norm = row_norms(step)
        ok = r_prev > 0
        radial = np.einsum("nd,nd->n", step, prev)
        radial = np.divide(radial, r_prev, out=np.zeros_like(radial), where=ok)
        moved = moved & (norm > 0)
        f = np.divide(radial, norm, out=np.zeros_like(radial), where=moved)
        abs_f = np.abs(f)
        tang2 = np.maximum(norm * norm - radial * radial, 0.0)
        out, inw = dr > 0, dr < 0
        k, n_out, n_in = int(moved.sum()), int(out.sum()), int(inw.sum())
        sum_f, sum_abs_f = float(f.sum()), float(abs_f.sum())
        self.mean_f.append(sum_f / k if k else float("nan"))
        self.mean_abs_f.append(sum_abs_f / k if k else float("nan"))
        self.moved.append(k)
        self.outward.append(n_out)
        self.inward.append(n_in)
        self.mean_dr.append(float(dr.mean()))
        self.pairs += dr.size
        self.n_moved += k
        self.sum_f += sum_f
        self.sum_abs_f += sum_abs_f
        self.sum_f2 += float(f @ f)
        self.sum_radial2 += float(radial @ radial)
        self.sum_step2 += float(norm @ norm)
        self.sum_dr += float(dr.sum())
        self.sum_pythagoras += float(np.divide(tang2, 2 * r_prev, out=np.zeros_like(tang2), where=ok).sum())
        self.n_outward += n_out
        self.n_inward += n_in
        return out

    def summary(self, dim: int) -> dict:
        """Shares and means over every (row, transition), with the null model and the sign test."""
        n = max(self.n_moved, 1)
        null = null_radial_fraction(dim)
        mean_abs = self.sum_abs_f / n
        zero = self.pairs - self.n_outward - self.n_inward
        predicted = self.sum_pythagoras / max(self.pairs, 1)
        observed = self.sum_dr / max(self.pairs, 1)
        return {
            "frame": self.frame, "pairs": self.pairs, "moved": self.n_moved,
            "mean_f": self.sum_f / n, "mean_abs_f": mean_abs, "mean_f2": self.sum_f2 / n,
            "radial_share": mean_abs, "tangential_share": 1 - mean_abs,
            # the seeds averaged f over every (row, step) with f = 0 for a row that did not move
            # (their median f was 0): comparable with their 0.1397 / 0.1402
            "mean_f_incl_zero": self.sum_f / max(self.pairs, 1),
            "mean_abs_f_incl_zero": self.sum_abs_f / max(self.pairs, 1),
            "radial_energy_share": self.sum_radial2 / self.sum_step2 if self.sum_step2 > 0 else float("nan"),
            "null_abs_f": null["E_abs_f"], "null_f2": null["E_f2"],
            "z_abs_f": (mean_abs - null["E_abs_f"]) / (null["sd_abs_f"] / math.sqrt(n)),
            "z_mean_f": (self.sum_f / n) / math.sqrt(null["E_f2"] / n),
            "outward": self.n_outward / max(self.pairs, 1), "inward": self.n_inward / max(self.pairs, 1),
            "zero": zero / max(self.pairs, 1),
            "sign_test": sign_test(self.n_outward, self.n_inward),
            "pythagoras_dr": predicted, "observed_dr": observed,
            "observed_over_pythagoras": observed / predicted if predicted > 0 else float("inf"),
        }


@dataclass
class ShellMotion:
    """Radial/tangential motion of a population of rows about the origin and about the centroid."""

    steps: np.ndarray  # (T−1,) the step each transition ends at
    tokens: np.ndarray  # (N,) token ids (or 0…N−1 for an in-memory array)
    dim: int
    origin: FrameMotion
    centroid: FrameMotion
    outward_counts: np.ndarray  # (N,) outward steps (Δr about the origin > 0) per token

    def per_step(self, frame: str = "origin") -> dict[str, np.ndarray]:
        """Per-transition arrays as fractions of the rows: moved, outward, inward, mean f, mean |f|, mean Δr."""
        fm = getattr(self, frame)
        n = len(self.tokens)
        return {"steps": self.steps, "moved": np.array(fm.moved) / n, "outward": np.array(fm.outward) / n,
                "inward": np.array(fm.inward) / n, "mean_f": np.array(fm.mean_f, dtype=np.float64),
                "mean_abs_f": np.array(fm.mean_abs_f, dtype=np.float64), "mean_dr": np.array(fm.mean_dr)}

    def summary(self, frame: str = "origin") -> dict:
        return getattr(self, frame).summary(self.dim)

    def dispersion(self) -> dict:
        """Over-dispersion of the per-token outward-step counts (see `dispersion`)."""
        return dispersion(self.outward_counts, len(self.steps))

    def hot_and_cold(self, k: int = 10) -> dict:
        """Token ids with the most ("hot") and fewest ("cold") outward steps, with their counts."""
        order = np.argsort(self.outward_counts, kind="stable")
        hot, cold = order[::-1][:k], order[:k]
        return {"hot": self.tokens[hot].tolist(), "hot_counts": self.outward_counts[hot].tolist(),
                "cold": self.tokens[cold].tolist(), "cold_counts": self.outward_counts[cold].tolist()}


class ShellTracker:
    """Streaming accumulator: feed (steps, block) pairs whose blocks overlap by one step."""

    def __init__(self, tokens=None):
        self._tokens = None if tokens is None else np.asarray(tokens)
        self._steps: list[np.ndarray] = []
        self.origin, self.centroid = FrameMotion("origin"), FrameMotion("centroid")
        self._counts: np.ndarray | None = None
        self._dim = 0

    def update(self, steps, block) -> None:
        """Add a (T, N, D) block (bf16 bits or floats) whose first frame, if it is not the run's first, repeats
        the previous block's last; works one transition at a time on cache-sized (N, D) frames."""
        arr = np.asarray(block)
        if arr.ndim != 3:
            raise ValueError(f"expected a (steps, rows, D) block, got shape {arr.shape}")
        if arr.shape[0] < 2:
            return
        prev = as_values(arr[0])
        c_prev = prev.mean(axis=0)
        everyone = np.ones(arr.shape[1], bool)
        for i in range(1, arr.shape[0]):
            cur = as_values(arr[i])
            c_cur = cur.mean(axis=0)
            out = self.origin.add(prev, cur, _row_changed(arr[i - 1], arr[i]))
            self.centroid.add(prev - c_prev, cur - c_cur, everyone)
            self._counts = out.astype(np.int64) if self._counts is None else self._counts + out
            prev, c_prev = cur, c_cur
        self._steps.append(np.asarray(steps)[1:])
        self._dim = arr.shape[2]

    def result(self) -> ShellMotion:
        if self._counts is None:
            raise ValueError("no transitions seen (need at least two recorded steps)")
        tokens = np.arange(len(self._counts)) if self._tokens is None else self._tokens
        return ShellMotion(np.concatenate(self._steps), tokens, self._dim, self.origin, self.centroid,
                           self._counts)


def shell_motion(bits, steps=None, tokens=None) -> ShellMotion:
    """Shell motion of a (T, N, D) array held in memory (bf16 bits as uint16, or floats)."""
    arr = np.asarray(bits)
    tracker = ShellTracker(tokens)
    tracker.update(np.arange(arr.shape[0]) if steps is None else np.asarray(steps), arr)
    return tracker.result()


@cached
def run_shell(run, rows=None, block: int = 64, tensor: str = "W") -> ShellMotion:
    """Shell motion of a recorded run's rows (default: the recorded dead rows), streamed in blocks of steps."""
    ids, selection = row_selection(run, rows)
    tracker = ShellTracker(ids)
    for sel, arr in iter_blocks(run, block=block, rows=selection, tensor=tensor):
        tracker.update(sel, arr)
    return tracker.result()


@cached
def run_cloud_and_shell(run, rows=None, block: int = 64, tensor: str = "W"):
    """(CloudTrack, ShellMotion) of a run's rows (default: the recorded dead rows) from one read of each block
    of steps: the same results as `geometry.run_cloud` and `run_shell`, reading the recording once."""
    from experiments.cloud.geometry import _concat_tracks, cloud_track

    ids, selection = row_selection(run, rows)
    tracker, parts = ShellTracker(ids), []
    for sel, arr in iter_blocks(run, block=block, rows=selection, tensor=tensor):
        parts.append(cloud_track(arr, sel))
        tracker.update(sel, arr)
    return _concat_tracks(parts), tracker.result()


# ---------------------------------------------------------------------------------------------------------
# the inhale's anatomy: common drift vs each row's own step, projected on the row's outward direction


@dataclass
class RadialSplit:
    """Per step t (transition t−1 → t), the mean outward component of the rows' steps split in two:
    `common` = mean ΔC·ŵᵢ (the cloud's shared step), `own` = mean (ΔWᵢ − ΔC)·ŵᵢ (each row's deviation from
    it), ŵᵢ = wᵢ[t−1]/‖wᵢ[t−1]‖. common + own = the mean radial step (first order). `dr` = the mean actual
    change of ‖wᵢ‖, which adds the second-order, always-outward Pythagoras term ≈ ‖Δw⊥‖²/2r (large when a
    step is not small against the radius). `inward_share`: rows whose own part points toward the origin."""

    steps: np.ndarray
    common: np.ndarray
    own: np.ndarray
    inward_share: np.ndarray
    dr: np.ndarray


@cached
def radial_split(run, steps=range(1, 21), rows=None, tensor: str = "W") -> RadialSplit:
    """RadialSplit of a recorded run's rows (default: the recorded dead rows) at the given step numbers
    (each needs its predecessor recorded). A translation of a cloud centred on the origin adds ~nothing
    radially, so a contraction there must come from the rows' own parts (see lore "The inhale")."""
    _, selection = row_selection(run, rows)
    steps = np.asarray(list(steps), dtype=np.int64)
    common, own, inward, dr = (np.empty(len(steps)) for _ in range(4))
    last_step, last_frame = None, None  # consecutive steps share a frame: read each step once
    for i, t in enumerate(steps):
        if last_step == int(t) - 1:
            prev = last_frame
            cur = as_values(run.tensor(tensor, steps=int(t), rows=selection, kind="numpy"))
        else:
            pair = run.tensor(tensor, steps=[int(t) - 1, int(t)], rows=selection, kind="numpy")
            prev, cur = as_values(pair[0]), as_values(pair[1])
        last_step, last_frame = int(t), cur
        step = cur - prev
        dc = step.mean(axis=0)
        norms = row_norms(prev)
        rhat = np.divide(prev, norms[:, None], out=np.zeros_like(prev), where=norms[:, None] > 0)
        c = rhat @ dc
        o = np.einsum("nd,nd->n", step - dc, rhat)
        common[i], own[i], inward[i] = c.mean(), o.mean(), (o < 0).mean()
        dr[i] = (row_norms(cur) - norms).mean()
    return RadialSplit(steps, common, own, inward, dr)
