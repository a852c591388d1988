"""The decomposition of recorded steps and the gradient-to-motion lag, on known answers and a tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import experiments
from experiments.physics import adam, decomposition


class _FakeRun:
    """What lag_correlation reads: W and grad by step slice, the clip scale, the recorded steps and rows."""

    def __init__(self, W, g):
        self._W, self._g = W, g
        self.steps = np.arange(W.shape[0])
        self.tokens = np.arange(W.shape[1])
        self.clip_scale = np.ones(W.shape[0] - 1, np.float32)
        self.available = ["W", "grad"]
        self.path = Path("fake.h5")

    def W(self, steps=None, rows=None):
        out = self._W[steps]
        return out if rows is None else out[:, rows]

    def tensor(self, name, steps=None, rows=None):
        assert name == "grad"
        out = self._g[steps.start - 1: steps.stop - 1]  # grad is recorded from step 1
        return out if rows is None else out[:, rows]


def test_lag_finds_a_planted_delay():
    rng = np.random.default_rng(0)
    T, N, D, delay = 200, 6, 8, 3
    g = rng.normal(size=(T, N, D)).astype(np.float32)
    motion = np.zeros_like(g)
    motion[delay:] = g[:-delay]  # the row moves against the gradient of `delay` steps ago
    W = np.concatenate([np.zeros((1, N, D), np.float32), -np.cumsum(motion, axis=0)])
    lag = decomposition.lag_correlation(_FakeRun(W, g), max_lag=8)
    assert np.all(lag.peak == delay)
    assert lag.mean[delay] == pytest.approx(1.0, abs=1e-6) and abs(lag.mean[0]) < 0.2
    assert decomposition.lag_correlation(_FakeRun(W, g), rows=[1, 4], max_lag=8).tokens.tolist() == [1, 4]


def test_critical_ratio_is_half_ulp_units():
    w = adam.bf16_to_f32(adam.f32_to_bf16(np.array([1.0, 0.25, -3.0], np.float32)))
    ulp = np.array([2 ** -7, 2 ** -9, 2 ** -6], np.float32)
    assert np.allclose(decomposition.critical_ratio(w, ulp / 2), 1.0)
    assert np.allclose(decomposition.critical_ratio(w, ulp), 2.0)


def test_decomposition_of_a_tiny_run_adds_up(store, tiny):
    run = experiments.run(tiny(train={"steps": 10}, optim={"lr": 5e-3}), progress=False)
    dec = decomposition.decompose(run)
    assert dec.steps.tolist() == list(range(1, 11))
    # step 1: a sign step, so the intended per-coordinate size is the learning rate itself
    assert dec.intended[0] == pytest.approx(5e-3, rel=0.01)
    assert np.all((dec.lost >= 0) & (dec.lost <= 2))
    assert np.all((dec.zeroed >= 0) & (dec.zeroed <= 1))
    assert np.all(dec.decay == 0)  # no weight decay in this config
    lag = decomposition.lag_correlation(run, max_lag=3)
    assert lag.per_row.shape == (len(run.tokens), 4) and lag.mean[0] > 0
