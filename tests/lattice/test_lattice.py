"""bf16 lattice arithmetic against hand-computed values, and lifecycles on hand-built trajectories."""

import ml_dtypes
import numpy as np
import pytest

from experiments.lattice import lifecycle as lattice

u16 = lambda *xs: np.array(xs, dtype=np.uint16)  # noqa: E731


def test_ulp_hand_values():
    bits = u16(0x3F80, 0x3F00, 0xBF80, 0x3F7F, 0x0000, 0x8000, 0x0001, 0x0080, 0x7F7F, 0x3E80)
    expected = [2.0**-7, 2.0**-8, 2.0**-7, 2.0**-8, 2.0**-133, 2.0**-133, 2.0**-133, 2.0**-133, 2.0**120, 2.0**-9]
    got = lattice.ulp(bits)
    assert got.dtype == np.float32
    assert got.tolist() == expected


def test_ulp_matches_spacing_of_bf16_numbers():
    # the ULP is the gap to the next representable bf16 value away from zero, for normal numbers
    rng = np.random.default_rng(0)
    bits = rng.integers(0x0080, 0x7F7F, size=1000).astype(np.uint16)
    nxt = lattice.to_float32(bits + 1).astype(np.float64) - lattice.to_float32(bits).astype(np.float64)
    assert np.array_equal(lattice.ulp(bits).astype(np.float64), nxt)


@pytest.mark.parametrize("bad", [0x7F80, 0xFF80, 0x7FC0, 0xFFC1])
def test_inf_and_nan_are_rejected(bad):
    with pytest.raises(ValueError, match="inf/NaN.*index \\(1,\\)"):
        lattice.ulp(u16(0x3F80, bad))
    with pytest.raises(ValueError):
        lattice.ordinal(u16(bad))


def test_bits_and_bfloat16_arrays_agree():
    x = np.array([1.0, -0.5, 3.0e-3], dtype=ml_dtypes.bfloat16)
    assert np.array_equal(lattice.ulp(x), lattice.ulp(x.view(np.uint16)))
    assert np.array_equal(lattice.to_float32(x), x.astype(np.float32))
    assert np.array_equal(lattice.from_float32(np.float32([1.0, 1.0 + 2**-9])), u16(0x3F80, 0x3F80))
    with pytest.raises(TypeError):
        lattice.ulp(np.float32([1.0]))


def test_lattice_coordinates_inside_a_binade():
    assert lattice.lattice_coordinates(u16(0x3F00, 0x3F80, 0x3F81, 0xBF80)).tolist() == [128.0, 128.0, 129.0, -128.0]


def test_ordinal_distances_across_binades_signs_and_zero():
    d = lattice.lattice_distance
    assert d(u16(0x3F80), u16(0x3F7F)) == 1  # 1.0 and the largest value below it: adjacent across a binade
    assert d(u16(0x3F85), u16(0x3F82)) == 3
    assert d(u16(0x0001), u16(0x8001)) == 2  # ± smallest subnormal: two steps through zero
    assert d(u16(0x0000), u16(0x8000)) == 0  # +0 and −0 are one lattice point
    assert d(u16(0x3F80), u16(0xBF80)) == 2 * 0x3F80
    a, b = u16(0x3F80, 0x3F80, 0x3F80), u16(0x3F81, 0x3F7E, 0x3F80)
    assert d(a, b, "linf") == 2 and d(a, b, "l1") == 3 and d(a, b, "l2") == pytest.approx(np.sqrt(5))
    with pytest.raises(ValueError, match="norm"):
        d(a, b, "l3")


def test_exponent_distance():
    assert lattice.exponent_distance(u16(0x3F80, 0x3F80), u16(0x3E80, 0x3F81)) == 2  # 1.0 vs 0.25
    assert lattice.exponent_distance(u16(0x0001), u16(0x0080)) == 1  # subnormal E=0 vs smallest normal E=1


def test_displacement_integer_within_binade_half_across_downward_crossing():
    prev = u16(0x3F80, 0x3F80, 0x3F7F, 0x3F85, 0xBF80, 0x3F80)
    cur = u16(0x3F81, 0x3F7F, 0x3F80, 0x3F82, 0xBF81, 0x3F80)
    dw = lattice.lattice_displacement(prev, cur)
    assert dw.dtype == np.float32
    # up one cell; down into the lower binade (half a cell of the start); up out of it; −3; more negative; frozen
    assert dw.tolist() == [1.0, -0.5, 1.0, -3.0, -1.0, 0.0]


def test_displacement_from_exact_zero_is_huge_not_hidden():
    dw = lattice.lattice_displacement(u16(0x0000, 0x0000, 0x0000), u16(0x3F80, 0x2F80, 0x0000))
    assert np.isinf(dw[0]) and dw[0] > 0  # 1.0 / 2**-133 overflows float32
    assert dw[1] == 2.0**-32 / 2.0**-133 and dw[2] == 0
    n = lattice.lattice_norms(dw)
    assert np.isinf(n.l1) and np.isinf(n.l2) and np.isinf(n.linf)


def test_lattice_norms():
    n = lattice.lattice_norms(np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]], dtype=np.float32))
    assert n.l1.tolist() == [7.0, 0.0, 2.5]
    assert n.l2.tolist() == [5.0, 0.0, 1.5]
    assert n.linf.tolist() == [4.0, 0.0, 1.0]


# --- lifecycles ------------------------------------------------------------------------------------------


def _trajectory():
    """6 steps labelled 0,10,…,50; 3 tokens; D = 4 (√D = 2) inside the binade [1, 2)."""
    t, n, d = 6, 3, 4
    w = np.full((t, n, d), 0x3F90, dtype=np.uint16)
    # token 0: +20 cells everywhere at step 10 (Early), +2 in one dim at 20 (Midlife), +1 at 30 (Late), then still
    w[1:, 0] += 20
    w[2:, 0, 0] += 2
    w[3:, 0, 1] += 1
    # token 1 never moves; token 2 moves one cell at the last step
    w[5, 2, 3] += 1
    return np.array([0, 10, 20, 30, 40, 50]), w


def test_lifecycle_last_exits_and_cloud_statistics():
    steps, w = _trajectory()
    lc = lattice.lifecycle(w, steps)
    assert lc.last_early.tolist() == [10, -1, -1]
    assert lc.last_midlife.tolist() == [20, -1, -1]
    assert lc.last_motion.tolist() == [30, -1, 50]
    assert lc.fimbulwinter.tolist() == [40, 0, -1]
    assert lc.last_spherical.tolist() == [20, -1, -1] and lc.last_hypernova.tolist() == [-1, -1, -1]
    assert lc.temperature.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0, 1 / 3])
    assert lc.stillness == [(40, 40)]
    assert lc.phase_map()[0].tolist() == [0, 1, 2, 3, 3]
    # last-exit rule: token 2 counts as Late (not yet frozen for good) until its final move
    assert lc.phase_map()[2].tolist() == [2, 2, 2, 2, 2]
    assert lc.phase_map()[1].tolist() == [3, 3, 3, 3, 3]
    s = lc.summary()
    assert s["global_last_motion"] == 50 and s["stillness_periods"] == 1 and s["longest_stillness"] == 1
    assert s["last_motion"] == {"n": 2, "min": 30, "median": 40.0, "max": 50}


def test_chatter_uses_the_last_exit():
    # a token that is Early at step 1, calm at 2, Early again at 3: its Early phase ends at 3
    w = np.full((5, 1, 4), 0x3F90, dtype=np.uint16)
    w[1:] += 10
    w[2:, 0, 0] += 1
    w[3:] += 10
    lc = lattice.lifecycle(w)
    assert lc.last_early.tolist() == [3] and lc.last_midlife.tolist() == [3] and lc.last_motion.tolist() == [3]


class _FakeRun:
    """The slice of `experiments.store.recording.Run` the block reader uses."""

    def __init__(self, steps, w):
        self.steps, self._w, self.calls = steps, w, []

    def tensor(self, name, steps=None, rows=None, kind="numpy"):
        assert name == "W" and kind == "bits" and isinstance(steps, slice)
        self.calls.append((steps.start, steps.stop))
        sel = (self.steps >= steps.start) & (self.steps < steps.stop)
        out = self._w[sel]
        return out if rows is None else out[:, rows]


@pytest.mark.parametrize("block", [2, 3, 4, 10])
def test_streamed_blocks_equal_the_whole(block):
    steps, w = _trajectory()
    whole = lattice.lifecycle(w, steps)
    run = _FakeRun(steps, w)
    lc = lattice.run_lifecycle(run, block=block, progress=False)
    for f in ("steps", "last_early", "last_midlife", "last_motion", "last_hypernova", "last_spherical",
              "fimbulwinter", "temperature"):
        assert np.array_equal(getattr(lc, f), getattr(whole, f)), f
    assert lc.stillness == whole.stillness
    # blocks overlap by exactly one step and cover everything
    starts = [a for a, _ in run.calls]
    assert starts[0] == 0 and len(run.calls) == (1 if block >= 6 else -(-5 // (block - 1)))


def test_tracker_rejects_out_of_order_and_mismatched_blocks():
    steps, w = _trajectory()
    tr = lattice.LifecycleTracker()
    tr.update(steps[:3], w[:3])
    with pytest.raises(ValueError, match="increase"):
        tr.update(steps[:2] - 100, w[:2])
    bad = w[2:4].copy()
    bad[0, 0, 0] += 1
    with pytest.raises(ValueError, match="differs"):
        tr.update(steps[2:4], bad)
    with pytest.raises(ValueError, match="no steps"):
        lattice.LifecycleTracker().result()


def test_leaving_exact_zero_is_a_hypernova():
    w = np.zeros((3, 1, 4), dtype=np.uint16)
    w[1:, 0, 0] = 0x3F80  # 0 → 1.0: ΔW′ overflows to inf
    lc = lattice.lifecycle(w)
    assert lc.last_hypernova.tolist() == [1] and lc.last_early.tolist() == [1] and lc.fimbulwinter.tolist() == [2]
