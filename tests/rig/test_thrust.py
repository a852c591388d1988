"""Step one on a tiny real run: the sign update, equal steps for dead and live rows, the coherent drift."""

from __future__ import annotations

import numpy as np
import pytest

import experiments
from experiments.errors import DataError
from experiments.physics import thrust


@pytest.fixture
def first_steps(store, tiny):
    cfg = tiny(train={"steps": 12}, record={"rows": "all", "steps": list(range(0, 6)),
                                             "tensors": ["W", "m", "v", "grad", "h_mean"]})
    return experiments.run(cfg, progress=False)


def test_every_row_moves_lr_sqrt_d_dead_or_live(first_steps):
    s1 = thrust.step_one(first_steps)
    assert s1.ideal == pytest.approx(1e-3 * np.sqrt(16))
    ratio = s1.step / s1.ideal
    assert abs(ratio.mean() - 1) < 0.03  # bf16 rounding of ±η is a few percent
    assert s1.dead.any() and (~s1.dead).any()
    assert ratio[s1.dead].mean() == pytest.approx(ratio[~s1.dead].mean(), rel=0.02)


def test_the_direction_is_the_sign_of_the_gradient(first_steps):
    s1 = thrust.step_one(first_steps)
    assert np.median(s1.cos_sign) > 0.99
    # ΔW is not along g: its cosine with −g is what a pure sign step would give, well below 1
    assert np.abs(s1.cos_grad - s1.predicted_cos_grad).mean() < 0.02
    assert np.median(s1.cos_grad) < 0.95


def test_dead_gradients_point_along_the_mean_hidden_state(first_steps):
    s1 = thrust.step_one(first_steps)
    assert np.median(s1.cos_h_mean[s1.dead]) > 0.95


def test_adam_term_is_sqrt_d_at_step_one_and_relaxes(first_steps):
    norms = thrust.adam_term_norms(first_steps, [1, 2, 3, 4, 5])
    assert np.median(norms[0]) == pytest.approx(4.0, rel=0.01)  # √16
    assert np.median(norms[1]) < np.median(norms[0])  # the exact cancellation breaks at t = 2


def test_step_one_says_what_is_missing(store, tiny):
    run = experiments.run(tiny(train={"steps": 3}, record={"tensors": ["W"]}), progress=False)
    with pytest.raises(DataError, match="grad, h_mean"):
        thrust.step_one(run)
