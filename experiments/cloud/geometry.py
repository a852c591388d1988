"""Geometry of a token cloud over time: its centroid, its radii, how far and how many rows move per step.

Two radii, never to be confused (the seeds once read one as the other and concluded a run was
irreproducible; lore/origin-or-centroid.qmd tells the story): r_origin = mean ‖wᵢ‖, the distance of rows from the origin, and r_centroid = mean ‖wᵢ − c‖,
the spread of the cloud about its own centroid c. A cloud that drifts as one body grows r_origin and leaves
r_centroid unchanged.

Arithmetic in float64 from the exact bf16 values; recordings are streamed in blocks of steps, so memory
does not grow with the length of the run. Recordings of fp32 runs (float32 tensors) are accepted as they are.

Beyond the radii: the centroid's path (length, efficiency, straightness, direction against the ±1 diagonal
and against −h_mean), bulk vs thermal motion in the comoving frame and liftoff. lore/origin-or-centroid.qmd
and lore/the-sneeze.qmd compare them with the seeds' numbers; tests/geometry/test_cloud_analyses.py checks
them on clouds with known answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from experiments.bits import as_values, row_cosine
from experiments.lattice.lifecycle import iter_step_blocks
from experiments.store.derived import cached
from experiments.store.recording import step_indices


@dataclass
class CloudTrack:
    """Per recorded step (arrays of length T, aligned with `steps`)."""

    steps: np.ndarray
    centroid: np.ndarray  # (T, D) mean row
    r_origin: np.ndarray  # mean distance of rows from the origin
    r_centroid: np.ndarray  # mean distance of rows from the centroid
    step_length: np.ndarray  # mean ‖W[t] − W[t−1]‖ per row (0 at the first step)
    moving: np.ndarray  # fraction of rows whose bits changed since the previous recorded step (0 at the first)
    r_max_centroid: np.ndarray | None = None  # max distance of any row from the centroid (bounding sphere)
    thermal: np.ndarray | None = None  # mean ‖ΔWᵢ − ΔC‖ per row: motion in the comoving frame (0 at the first)

    @property
    def bulk(self) -> np.ndarray:
        """‖ΔC‖, the centroid's displacement per recorded step (0 at the first)."""
        return np.concatenate([[0.0], np.linalg.norm(np.diff(self.centroid, axis=0), axis=1)])

    @property
    def centroid_norm(self) -> np.ndarray:
        return np.linalg.norm(self.centroid, axis=1)

    def at(self, step: int) -> int:
        """Index of a step number in the arrays."""
        idx = np.flatnonzero(self.steps == step)
        if idx.size == 0:
            raise KeyError(f"step {step} was not recorded")
        return int(idx[0])


def comoving(values: np.ndarray) -> np.ndarray:
    """Positions in the comoving frame: each step's rows minus that step's centroid ((T, N, D) → (T, N, D))."""
    return values - values.mean(axis=-2, keepdims=True)


def _row_changed(prev_raw: np.ndarray, cur_raw: np.ndarray) -> np.ndarray:
    """(N,) bool: rows of two (N, D) stored frames that differ (compared as 64-bit words where possible)."""
    a, b = np.ascontiguousarray(prev_raw), np.ascontiguousarray(cur_raw)
    if a.dtype.name == "bfloat16":
        a, b = a.view(np.uint16), b.view(np.uint16)
    if (a.shape[-1] * a.itemsize) % 8 == 0:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return (a != b).any(axis=-1)


def row_norms(x: np.ndarray) -> np.ndarray:
    """‖xᵢ‖ of each row of an (N, D) float64 array (einsum: no squared temporary)."""
    return np.sqrt(np.einsum("nd,nd->n", x, x))


def cloud_track(bits: np.ndarray, steps: np.ndarray | None = None) -> CloudTrack:
    """The track of a (T, N, D) array of rows (bf16 bit patterns as uint16, or floats).

    Works one step at a time on (N, D) frames that stay in cache (5x faster than whole-block arithmetic on
    a 3,116 x 64 cloud); every per-step value depends only on frames t and t−1, so any blocking of the steps
    gives bit-identical results."""
    arr = np.asarray(bits)
    if arr.ndim != 3:
        raise ValueError(f"expected a (steps, rows, D) array, got shape {arr.shape}")
    n_steps, _, dim = arr.shape
    steps = np.arange(n_steps) if steps is None else np.asarray(steps)
    centroid = np.empty((n_steps, dim))
    r_origin, r_centroid, r_max = np.empty((3, n_steps))
    step_length, moving, thermal = np.zeros((3, n_steps))
    prev = None
    for i in range(n_steps):
        x = as_values(arr[i])
        c = x.mean(axis=0)
        centroid[i] = c
        r_origin[i] = row_norms(x).mean()
        d_c = row_norms(x - c)
        r_centroid[i], r_max[i] = d_c.mean(), d_c.max()
        if prev is not None:
            dw = x - prev
            step_length[i] = row_norms(dw).mean()
            dw -= c - centroid[i - 1]
            thermal[i] = row_norms(dw).mean()
            moving[i] = _row_changed(arr[i - 1], arr[i]).mean()
        prev = x
    return CloudTrack(steps, centroid, r_origin, r_centroid, step_length, moving, r_max, thermal)


def iter_blocks(run, block: int = 128, rows=None, tensor: str = "W") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(steps, stored array) blocks of a recorded run, consecutive blocks overlapping by one step: uint16 bf16
    bit patterns or float32 (fp32 runs), so every analysis here accepts both (`lattice.iter_step_blocks`)."""
    return iter_step_blocks(run, block=block, rows=rows, tensor=tensor, stored=True)


def _concat_tracks(parts: list[CloudTrack]) -> CloudTrack:
    """Join per-block tracks whose blocks overlap by one step (later blocks' first frame is dropped)."""
    names = [f.name for f in fields(CloudTrack)]
    return CloudTrack(*(np.concatenate([getattr(p, n)[1 if i else 0:] for i, p in enumerate(parts)])
                        for n in names))


@cached(ignore=("progress",))  # a page's minute is these tracks: stored per run in <store>/derived
def run_cloud(run, rows=None, block: int = 128, tensor: str = "W", progress: bool = False) -> CloudTrack:
    """The track of a recorded run's rows (default: every recorded row), streamed in blocks of steps."""
    from tqdm import tqdm

    parts: list[CloudTrack] = []
    with tqdm(total=len(run.steps), desc="cloud", unit="step", disable=not progress) as bar:
        for i, (sel, bits) in enumerate(iter_blocks(run, block=block, rows=rows, tensor=tensor)):
            parts.append(cloud_track(bits, sel))  # blocks overlap by one step; _concat_tracks drops the repeat
            bar.update(len(sel) - (1 if i else 0))
    return _concat_tracks(parts)


# ---------------------------------------------------------------------------------------------------------
# the centroid's path


def diagonal_cosine(d: np.ndarray) -> np.ndarray:
    """cos(d, sign(d)) = ‖d‖₁ / (√D ‖d‖₂) per row of (T, D): 1 on a ±1 diagonal, ≈ √(2/π) ≈ 0.80 for a
    Gaussian direction, 1/√D along one axis; NaN for a zero step (the thrust-period sign update,
    lore/step-one.qmd)."""
    d = np.atleast_2d(np.asarray(d, dtype=np.float64))
    n2 = np.linalg.norm(d, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.abs(d).sum(axis=-1) / (np.sqrt(d.shape[-1]) * n2)
    out[n2 == 0] = np.nan
    return out


@dataclass
class CentroidPath:
    """The centroid's walk over a track (the seeds' Crucible 2 reported 0.002889 → 0.635706, efficiency
    0.8364, consecutive cos 0.9881; lore/origin-or-centroid.qmd compares).

    Per-step arrays have length T and are aligned with `steps`: entry t describes the step d_t = C_t − C_{t−1}
    (NaN at the first step and wherever it is undefined).
    """

    steps: np.ndarray
    step: np.ndarray  # ‖d_t‖ = ‖C_t − C_{t−1}‖ (0 at the first step): the bulk motion
    straightness: np.ndarray  # cos(d_{t−1}, d_t): successive centroid steps
    diagonal: np.ndarray  # cos(d_t, sign(d_t)): how close the step is to a ±1 diagonal
    against_h_mean: np.ndarray | None  # cos(d_t, −h_mean[t]) when an h_mean series was given
    path_length: float  # Σ ‖d_t‖
    net_displacement: float  # ‖C_last − C_first‖

    @property
    def efficiency(self) -> float:
        """net displacement / path length (1 for a straight walk; NaN if the centroid never moved)."""
        return self.net_displacement / self.path_length if self.path_length > 0 else float("nan")

    def summary(self) -> dict:
        """Scalars: path, net, efficiency, mean/median straightness, mean diagonal and −h_mean cosines."""
        def mean(x):
            x = np.asarray(x)[np.isfinite(x)] if x is not None else np.array([])
            return float(x.mean()) if x.size else float("nan")

        s = self.straightness[np.isfinite(self.straightness)]
        return {"path_length": self.path_length, "net_displacement": self.net_displacement,
                "efficiency": self.efficiency, "straightness_mean": mean(self.straightness),
                "straightness_median": float(np.median(s)) if s.size else float("nan"),
                "diagonal_mean": mean(self.diagonal), "against_h_mean_mean": mean(self.against_h_mean)}


def centroid_path(track: CloudTrack, h_mean: np.ndarray | None = None, steps=None) -> CentroidPath:
    """The centroid path of a track (optionally only the recorded steps in `steps`, a slice of step numbers).

    h_mean: (T, D) aligned with track.steps (as recorded: row t is the forward of step t, which made W[t];
    row 0 is NaN), compared with each step d_t as cos(d_t, −h_mean[t]) — the "go away" direction.
    """
    sel = step_indices(track.steps, steps)[0]
    c = track.centroid[sel]
    d = np.diff(c, axis=0)
    length = np.concatenate([[0.0], np.linalg.norm(d, axis=1)])
    straight = np.full(len(c), np.nan)
    if len(d) > 1:
        straight[2:] = row_cosine(d[:-1], d[1:])
    diag = np.concatenate([[np.nan], diagonal_cosine(d)]) if len(d) else np.full(len(c), np.nan)
    against = None
    if h_mean is not None:
        h = np.asarray(h_mean, dtype=np.float64)[sel]
        against = np.full(len(c), np.nan)
        if len(d):
            against[1:] = row_cosine(d, -h[1:])
    net = float(np.linalg.norm(c[-1] - c[0])) if len(c) else 0.0
    return CentroidPath(track.steps[sel], length, straight, diag, against, float(length.sum()), net)


def shear_ratio(track: CloudTrack, steps=None) -> float:
    """Thermal / bulk motion over the steps in `steps` (a slice of step numbers, default all): Σ mean‖ΔWᵢ − ΔC‖
    / Σ ‖ΔC‖, i.e. the ratio of the two mean motions (the seeds' Thimble 7: 0.13 in t = 0–100, a coherent
    cloud, see lore/the-sneeze.qmd; ≫ 1 is a cloud that shears or diffuses). The first recorded step (no predecessor) contributes nothing."""
    if track.thermal is None:
        raise ValueError("this track has no thermal motion (build it with cloud_track / run_cloud)")
    sel = step_indices(track.steps, steps)[0]
    sel = sel[sel > 0]
    bulk = track.bulk[sel].sum()
    return float(track.thermal[sel].sum() / bulk) if bulk > 0 else float("inf")


def shear_per_step(track: CloudTrack) -> np.ndarray:
    """thermal / bulk per recorded step (NaN at the first step and where the centroid did not move)."""
    bulk = track.bulk
    out = np.full(len(bulk), np.nan)
    ok = bulk > 0
    ok[0] = False
    out[ok] = track.thermal[ok] / bulk[ok]
    return out


def liftoff(track: CloudTrack) -> int | None:
    """First recorded step at which the origin lies outside the population's bounding sphere (centre = the
    centroid, radius = the largest distance of any member from it): ‖C‖ > max ‖wᵢ − C‖. None if never
    (the seeds' Crucible 3: dead step 31, live never; lore/origin-or-centroid.qmd)."""
    if track.r_max_centroid is None:
        raise ValueError("this track has no bounding radius (build it with cloud_track / run_cloud)")
    out = np.flatnonzero(track.centroid_norm > track.r_max_centroid)
    return int(track.steps[out[0]]) if out.size else None


# ---------------------------------------------------------------------------------------------------------
# populations of one run


def populations(run) -> dict[str, np.ndarray]:
    """Token ids of the recorded dead and live rows: live = the recorded rows not in `run.dead` (a run
    recorded with `record.rows: dead` has no live rows; then "live" is absent)."""
    tokens = np.asarray(run.tokens)
    dead_mask = np.asarray(run.dead, dtype=bool)
    is_dead = dead_mask[tokens]
    out = {"dead": tokens[is_dead]}
    if (~is_dead).any():
        out["live"] = tokens[~is_dead]
    return out


def row_selection(run, rows=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(token ids, the `rows` argument for run.tensor) for `rows` (default: the recorded dead rows). The second
    is None when the ids are exactly the recorded rows: one contiguous read instead of a fancy index."""
    ids = populations(run)["dead"] if rows is None else np.asarray(rows)
    return ids, (None if np.array_equal(ids, np.asarray(run.tokens)) else ids)


@cached
def population_tracks(run, groups: dict[str, np.ndarray] | None = None, block: int = 128,
                      tensor: str = "W") -> dict[str, CloudTrack]:
    """One CloudTrack per group of token ids (default `populations(run)`: dead and live), reading each block
    of steps once for all groups."""
    groups = populations(run) if groups is None else groups
    col = {int(t): i for i, t in enumerate(np.asarray(run.tokens))}
    cols = {name: np.array([col[int(t)] for t in ids], dtype=np.int64) for name, ids in groups.items()}
    parts: dict[str, list[CloudTrack]] = {name: [] for name in groups}
    for sel, arr in iter_blocks(run, block=block, tensor=tensor):
        for name, c in cols.items():
            parts[name].append(cloud_track(arr[:, c], sel))
    return {name: _concat_tracks(p) for name, p in parts.items()}


def h_mean_of(run) -> np.ndarray | None:
    """The run's h_mean series (T, D) float64 when recorded, else None."""
    if "h_mean" not in getattr(run, "available", ()):
        return None
    return np.asarray(run.tensor("h_mean"), dtype=np.float64)
