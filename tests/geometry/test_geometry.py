"""Cloud geometry on synthetic trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.cloud import geometry
from experiments.lattice.lifecycle import from_float32


def _cloud(n=200, d=16, seed=0, sigma=0.02):
    return np.random.default_rng(seed).normal(0, sigma, size=(n, d))


def test_pure_translation_keeps_the_centroid_radius_and_grows_the_origin_radius():
    base = _cloud()
    direction = np.ones(16) / 4.0  # unit vector
    w = np.stack([base + t * 0.05 * direction for t in range(20)])
    track = geometry.cloud_track(w)
    assert np.allclose(track.r_centroid, track.r_centroid[0], rtol=1e-12)
    assert track.r_origin[-1] > 5 * track.r_origin[0]  # drifted far from the origin
    assert np.allclose(np.linalg.norm(np.diff(track.centroid, axis=0), axis=1), 0.05)
    assert np.allclose(track.step_length[1:], 0.05)
    assert track.moving[0] == 0 and np.all(track.moving[1:] == 1)


def test_radii_of_a_known_configuration():
    # Two rows at ±e1 scaled by 3: origin radius 3, centroid at 0, centroid radius 3; shifted by 4·e2
    w = np.array([[[3.0, 0.0], [-3.0, 0.0]], [[3.0, 4.0], [-3.0, 4.0]]])
    track = geometry.cloud_track(w)
    assert track.r_origin.tolist() == [3.0, 5.0]
    assert track.r_centroid.tolist() == [3.0, 3.0]
    assert track.centroid_norm.tolist() == [0.0, 4.0]


def test_contraction_shows_in_both_radii():
    base = _cloud()
    w = np.stack([base * s for s in (1.0, 0.9, 0.8)])
    track = geometry.cloud_track(w)
    assert np.allclose(track.r_centroid / track.r_centroid[0], [1.0, 0.9, 0.8])
    assert np.allclose(track.r_origin / track.r_origin[0], [1.0, 0.9, 0.8])


def test_moving_counts_rows_whose_bits_changed():
    w = np.stack([_cloud(n=4, d=8)] * 3)
    w[2, 1, 0] += 0.5
    bits = from_float32(w.astype(np.float32))
    track = geometry.cloud_track(bits)
    assert track.moving.tolist() == [0.0, 0.0, 0.25]
    with pytest.raises(KeyError, match="step 7"):
        track.at(7)


class _FakeRun:
    def __init__(self, steps, bits):
        self.steps, self._bits = steps, bits

    def tensor(self, name, steps=None, rows=None, kind="numpy"):
        sel = (self.steps >= steps.start) & (self.steps < steps.stop)
        out = self._bits[sel]
        return out if rows is None else out[:, rows]


@pytest.mark.parametrize("block", [2, 3, 7, 50])
def test_streamed_track_equals_the_whole(block):
    rng = np.random.default_rng(3)
    w = np.cumsum(rng.normal(0, 0.01, size=(23, 30, 8)), axis=0)
    bits = from_float32(w.astype(np.float32))
    steps = np.arange(0, 46, 2)
    whole = geometry.cloud_track(bits, steps)
    streamed = geometry.run_cloud(_FakeRun(steps, bits), block=block)
    for f in ("steps", "centroid", "r_origin", "r_centroid", "step_length", "moving"):
        assert np.array_equal(getattr(streamed, f), getattr(whole, f)), f
    rows = [0, 5, 9]
    assert np.array_equal(geometry.run_cloud(_FakeRun(steps, bits), rows=rows, block=block).r_origin,
                          geometry.cloud_track(bits[:, rows], steps).r_origin)
