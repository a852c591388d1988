"""Geometry of a token cloud over time: its centroid, its radii, how far and how many rows move per step.

Two radii, never to be confused (the seeds once read one as the other and concluded a run was
irreproducible): r_origin = mean ‖wᵢ‖, the distance of rows from the origin, and r_centroid = mean ‖wᵢ − c‖,
the spread of the cloud about its own centroid c. A cloud that drifts as one body grows r_origin and leaves
r_centroid unchanged.

Arithmetic in float64 from the exact bf16 values; recordings are streamed in blocks of steps, so memory
does not grow with the length of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.lattice import iter_step_blocks, to_float32


@dataclass
class CloudTrack:
    """Per recorded step (arrays of length T, aligned with `steps`)."""

    steps: np.ndarray
    centroid: np.ndarray  # (T, D) mean row
    r_origin: np.ndarray  # mean distance of rows from the origin
    r_centroid: np.ndarray  # mean distance of rows from the centroid
    step_length: np.ndarray  # mean ‖W[t] − W[t−1]‖ per row (0 at the first step)
    moving: np.ndarray  # fraction of rows whose bits changed since the previous recorded step (0 at the first)

    @property
    def centroid_norm(self) -> np.ndarray:
        return np.linalg.norm(self.centroid, axis=1)

    def at(self, step: int) -> int:
        """Index of a step number in the arrays."""
        idx = np.flatnonzero(self.steps == step)
        if idx.size == 0:
            raise KeyError(f"step {step} was not recorded")
        return int(idx[0])


def _block_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroid (T, D), r_origin (T,), r_centroid (T,)) of a (T, N, D) float block."""
    centroid = values.mean(axis=1)
    r_origin = np.linalg.norm(values, axis=2).mean(axis=1)
    r_centroid = np.linalg.norm(values - centroid[:, None, :], axis=2).mean(axis=1)
    return centroid, r_origin, r_centroid


def cloud_track(bits: np.ndarray, steps: np.ndarray | None = None) -> CloudTrack:
    """The track of a (T, N, D) array of rows (bf16 bit patterns as uint16, or floats)."""
    arr = np.asarray(bits)
    values = (to_float32(arr) if arr.dtype == np.uint16 else arr).astype(np.float64)
    if values.ndim != 3:
        raise ValueError(f"expected a (steps, rows, D) array, got shape {values.shape}")
    steps = np.arange(values.shape[0]) if steps is None else np.asarray(steps)
    centroid, r_origin, r_centroid = _block_stats(values)
    step_length = np.zeros(values.shape[0])
    moving = np.zeros(values.shape[0])
    if values.shape[0] > 1:
        step_length[1:] = np.linalg.norm(np.diff(values, axis=0), axis=2).mean(axis=1)
        if arr.dtype == np.uint16:
            moving[1:] = (arr[1:] != arr[:-1]).any(axis=2).mean(axis=1)
        else:
            moving[1:] = (values[1:] != values[:-1]).any(axis=2).mean(axis=1)
    return CloudTrack(steps, centroid, r_origin, r_centroid, step_length, moving)


def run_cloud(run, rows=None, block: int = 128, tensor: str = "W", progress: bool = False) -> CloudTrack:
    """The track of a recorded run's rows (default: every recorded row), streamed in blocks of steps."""
    from tqdm import tqdm

    parts: list[CloudTrack] = []
    with tqdm(total=len(run.steps), desc="cloud", unit="step", disable=not progress) as bar:
        for i, (sel, bits) in enumerate(iter_step_blocks(run, block=block, rows=rows, tensor=tensor)):
            part = cloud_track(bits, sel)
            if i:  # blocks overlap by one step: its first frame is the previous block's last
                part = CloudTrack(*(a[1:] for a in (part.steps, part.centroid, part.r_origin, part.r_centroid,
                                                    part.step_length, part.moving)))
            parts.append(part)
            bar.update(len(part.steps))
    return CloudTrack(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("steps", "centroid", "r_origin", "r_centroid", "step_length", "moving")))
