"""shell.radial_split: the common drift and each row's own step, projected on the row's outward direction."""

import numpy as np
import pytest

from experiments.cloud import shell


class FakeRun:
    """Just enough of recording.Run: every row recorded, all of them dead, float32 W."""

    def __init__(self, W):
        self.W = np.asarray(W, dtype=np.float32)
        self.tokens = np.arange(self.W.shape[1])
        self.dead = np.ones(self.W.shape[1], bool)

    def tensor(self, name, steps=None, rows=None, kind="numpy"):
        assert rows is None and name == "W"
        return self.W[np.asarray(steps)]


def _cloud(n=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * 0.1


def test_translation_is_all_common_and_contraction_all_own():
    w0 = _cloud()
    shift = np.full(w0.shape[1], 0.01)
    w1 = w0 + shift  # a pure translation: no own part
    w2 = 0.98 * w1  # a pure contraction about the origin: common step -0.02·C, own part inward for every row
    split = shell.radial_split(FakeRun([w0, w1, w2]), steps=[1, 2])
    rhat0 = w0 / np.linalg.norm(w0, axis=1, keepdims=True)
    assert split.common[0] == pytest.approx((rhat0 @ shift).mean(), rel=1e-4)
    assert split.own[0] == pytest.approx(0.0, abs=1e-6)
    # contraction: total radial step = -0.02 * mean ‖w1‖; all of it inward
    total = split.common[1] + split.own[1]
    assert total == pytest.approx(-0.02 * np.linalg.norm(w1, axis=1).mean(), rel=1e-3)
    assert split.own[1] < 0 and split.inward_share[1] > 0.95
    # a contraction has no tangential part: the actual radius change equals the first-order one
    assert split.dr[1] == pytest.approx(total, rel=1e-6)
    # a translation's actual radius change adds the Pythagoras term: larger than the first-order one
    assert split.dr[0] > split.common[0] + split.own[0]


def test_steps_need_their_predecessor():
    with pytest.raises(IndexError):
        shell.radial_split(FakeRun([_cloud(), _cloud()]), steps=[2])
