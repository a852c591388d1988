"""Centroid path, shear, liftoff, shell motion and epochs on synthetic trajectories with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.cloud import epochs, geometry, shell
from experiments.lattice.lifecycle import from_float32

D = 16


def _cloud(n=200, d=D, seed=0, sigma=0.02):
    return np.random.default_rng(seed).normal(0, sigma, size=(n, d))


def _translation(steps=30, speed=0.01, direction=None):
    base = _cloud()
    u = np.ones(D) / math.sqrt(D) if direction is None else direction / np.linalg.norm(direction)
    return np.stack([base + t * speed * u for t in range(steps)]), u


# ------------------------------------------------------------------------------------------- centroid


def test_pure_translation_is_straight_efficient_and_unsheared():
    w, u = _translation()
    track = geometry.cloud_track(w)
    path = geometry.centroid_path(track)
    assert np.allclose(track.r_centroid, track.r_centroid[0], rtol=1e-12)
    assert path.efficiency == pytest.approx(1.0, abs=1e-12)
    assert path.path_length == pytest.approx(0.01 * 29, rel=1e-12)
    assert np.isnan(path.straightness[:2]).all() and np.allclose(path.straightness[2:], 1.0)
    assert path.summary()["straightness_mean"] == pytest.approx(1.0)
    assert np.allclose(path.diagonal[1:], 1.0)  # u is the normalised all-ones diagonal
    assert np.allclose(track.bulk[1:], 0.01) and np.allclose(track.thermal[1:], 0.0, atol=1e-15)
    assert geometry.shear_ratio(track) == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(geometry.shear_per_step(track)[1:], 0.0, atol=1e-12)


def test_a_zigzag_centroid_has_low_efficiency_and_negative_straightness():
    base = _cloud()
    e1 = np.eye(D)[0]
    w = np.stack([base + (t % 2) * 0.01 * e1 for t in range(12)])  # back and forth, ends one step out
    path = geometry.centroid_path(geometry.cloud_track(w))
    assert path.efficiency == pytest.approx(0.01 / (11 * 0.01))
    assert np.allclose(path.straightness[2:], -1.0)
    assert np.allclose(path.diagonal[1:], 1 / math.sqrt(D))  # one axis


def test_shear_counts_thermal_motion_against_the_bulk():
    rng = np.random.default_rng(1)
    base = _cloud()
    w = [base]
    for _ in range(10):  # bulk 0.01 along e0 plus a per-row jitter of norm exactly 0.002 (mean zero over rows)
        jit = rng.normal(size=base.shape)
        jit -= jit.mean(axis=0)
        jit *= 0.002 / np.linalg.norm(jit, axis=1, keepdims=True)
        jit -= jit.mean(axis=0)
        w.append(w[-1] + 0.01 * np.eye(D)[0] + jit)
    track = geometry.cloud_track(np.stack(w))
    assert track.bulk[1:] == pytest.approx(np.full(10, 0.01), rel=1e-9)
    assert geometry.shear_ratio(track) == pytest.approx(0.2, rel=0.02)
    assert geometry.shear_ratio(track, steps=slice(0, 3)) == pytest.approx(track.thermal[1:3].sum() / 0.02)


def test_centroid_steps_against_h_mean():
    w, u = _translation(steps=12)
    h = np.tile(-3.0 * u, (12, 1))  # the cloud moves along −h_mean: "go away"
    h[0] = np.nan  # step 0 has no forward
    path = geometry.centroid_path(geometry.cloud_track(w), h_mean=h)
    assert np.isnan(path.against_h_mean[0]) and np.allclose(path.against_h_mean[1:], 1.0)
    path = geometry.centroid_path(geometry.cloud_track(w), h_mean=-h)
    assert np.allclose(path.against_h_mean[1:], -1.0)
    assert path.summary()["against_h_mean_mean"] == pytest.approx(-1.0)


def test_centroid_path_restricted_to_steps():
    w, _ = _translation(steps=20)
    path = geometry.centroid_path(geometry.cloud_track(w), steps=slice(5, 10))
    assert path.steps.tolist() == [5, 6, 7, 8, 9]
    assert path.net_displacement == pytest.approx(0.04)


# ------------------------------------------------------------------------------------------- radii, liftoff


def test_liftoff_at_a_planted_step():
    base = _cloud(n=100)
    r_max = np.linalg.norm(base - base.mean(axis=0), axis=1).max()
    u = np.ones(D) / math.sqrt(D)
    speed = r_max / 7.5  # the centroid passes r_max between steps 7 and 8
    w = np.stack([base - base.mean(axis=0) + t * speed * u for t in range(15)])
    track = geometry.cloud_track(w)
    assert np.allclose(track.r_max_centroid, r_max)
    assert geometry.liftoff(track) == 8
    assert geometry.liftoff(geometry.cloud_track(w[:8])) is None


class _FakeRun:
    def __init__(self, steps, data, tokens, dead, h_mean=None):
        self.steps, self._data, self.tokens, self.dead = steps, data, np.asarray(tokens), dead
        self._h = h_mean
        self.available = ["W"] + (["h_mean"] if h_mean is not None else [])
        self.name, self.key = "fake", "0123456789abcdef"

    def tensor(self, name, steps=None, rows=None, kind="numpy"):
        if name == "h_mean":
            return self._h
        sel = (self.steps >= steps.start) & (self.steps < steps.stop)
        out = self._data[sel]
        if rows is None:
            return out
        col = {int(t): i for i, t in enumerate(self.tokens)}
        return out[:, [col[int(t)] for t in rows]]


def test_dead_and_live_radii_from_one_pass_and_float32_recordings():
    rng = np.random.default_rng(2)
    w = np.cumsum(rng.normal(0, 0.01, size=(9, 12, D)), axis=0).astype(np.float32)  # an fp32 recording
    tokens = np.array([1, 3, 4, 7, 8, 9, 10, 11, 12, 15, 16, 19])
    dead = np.zeros(20, bool)
    dead[[3, 8, 9, 16]] = True
    run = _FakeRun(np.arange(9), w, tokens, dead)
    pops = geometry.populations(run)
    assert pops["dead"].tolist() == [3, 8, 9, 16] and len(pops["live"]) == 8
    tracks = geometry.population_tracks(run, block=4)
    dead_cols = [1, 4, 5, 10]
    ref = geometry.cloud_track(w[:, dead_cols])
    for f in ("r_origin", "r_centroid", "r_max_centroid", "thermal", "moving"):
        assert np.allclose(getattr(tracks["dead"], f), getattr(ref, f)), f
    live = np.setdiff1d(np.arange(12), dead_cols)
    assert np.allclose(tracks["live"].r_origin, np.linalg.norm(w[:, live].astype(np.float64), axis=2).mean(axis=1))
    assert np.all(tracks["dead"].moving[1:] == 1.0)


# ------------------------------------------------------------------------------------------- shell


def test_null_model_values():
    null = shell.null_radial_fraction(64)
    assert null["E_abs_f"] == pytest.approx(math.sqrt(2 / (math.pi * 64)), rel=0.01)
    assert null["E_abs_f"] == pytest.approx(0.100126, abs=1e-6)
    assert null["E_f2"] == 1 / 64
    # Monte Carlo check of E|f| in D = 5
    v = np.random.default_rng(0).normal(size=(200_000, 5))
    f = v[:, 0] / np.linalg.norm(v, axis=1)
    assert np.abs(f).mean() == pytest.approx(shell.null_radial_fraction(5)["E_abs_f"], abs=3e-3)


def test_binomial_tail_and_sign_test():
    exact = sum(math.comb(100, j) for j in range(60, 101)) / 2 ** 100
    assert shell.log10_binomial_tail(60, 100) == pytest.approx(math.log10(exact), abs=1e-9)
    assert shell.log10_binomial_tail(0, 10) == 0.0
    t = shell.sign_test(368_600, 3_300)  # no overflow at the seeds' scale
    assert t["ratio"] == pytest.approx(111.697, rel=1e-4) and t["z"] > 500
    assert -2e5 < t["log10_p"] < -1e5
    assert shell.sign_test(500, 500)["z"] == 0.0


def test_isotropic_small_steps_give_the_null_fraction_and_balanced_radii():
    rng = np.random.default_rng(4)
    n, t = 400, 60
    start = _cloud(n=n, sigma=0.02)
    steps = rng.normal(size=(t, n, D))
    steps *= 1e-5 / np.linalg.norm(steps, axis=2, keepdims=True)  # ≪ r: Pythagoras bias negligible
    w = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
    s = shell.shell_motion(w).summary()
    null = shell.null_radial_fraction(D)
    assert s["mean_abs_f"] == pytest.approx(null["E_abs_f"], abs=0.01)
    assert s["mean_f2"] == pytest.approx(1 / D, rel=0.05)
    assert abs(s["mean_f"]) < 0.01 and abs(s["z_abs_f"]) < 4
    assert s["outward"] == pytest.approx(0.5, abs=0.02) and s["inward"] == pytest.approx(0.5, abs=0.02)
    assert s["zero"] == 0.0 and abs(s["sign_test"]["z"]) < 4


def test_purely_radial_outward_steps():
    base = _cloud(n=50)
    w = np.stack([base * (1 + 0.01 * k) for k in range(6)])
    sm = shell.shell_motion(w)
    s = sm.summary()
    assert s["mean_f"] == pytest.approx(1.0) and s["radial_share"] == pytest.approx(1.0)
    assert s["outward"] == 1.0 and s["inward"] == 0.0
    assert s["pythagoras_dr"] == pytest.approx(0.0, abs=1e-18)
    assert np.all(sm.outward_counts == 5)
    # about the centroid the comoving cloud also scales: radial outward there too
    assert sm.summary("centroid")["mean_f"] == pytest.approx(1.0)


def test_tangential_steps_grow_the_radius_by_pythagoras():
    rng = np.random.default_rng(5)
    pos = _cloud(n=300)
    frames = [pos]
    for _ in range(20):
        g = rng.normal(size=pos.shape)
        rhat = pos / np.linalg.norm(pos, axis=1, keepdims=True)
        g -= (g * rhat).sum(axis=1, keepdims=True) * rhat
        pos = pos + 1e-3 * g / np.linalg.norm(g, axis=1, keepdims=True)
        frames.append(pos)
    s = shell.shell_motion(np.stack(frames)).summary()
    assert s["mean_abs_f"] < 0.05 and s["tangential_share"] > 0.95
    assert s["outward"] == 1.0  # a tangential step always lengthens the radius
    assert s["observed_dr"] == pytest.approx(s["pythagoras_dr"], rel=0.02)


def test_rows_that_do_not_move_count_as_zero_and_are_left_out_of_fractions():
    base = _cloud(n=4)
    w = np.stack([base, base * 1.01, base * 1.01])
    w[2, 0] *= 1.01  # only row 0 moves in the second transition
    bits = from_float32(w.astype(np.float32))
    sm = shell.shell_motion(bits, tokens=[10, 11, 12, 13])
    ps = sm.per_step()
    assert ps["moved"].tolist() == [1.0, 0.25] and ps["outward"].tolist() == [1.0, 0.25]
    s = sm.summary()
    assert s["moved"] == 5 and s["zero"] == pytest.approx(3 / 8)
    assert s["mean_abs_f"] == pytest.approx(1.0, abs=0.05)  # radial up to bf16 rounding
    assert s["mean_abs_f_incl_zero"] == pytest.approx(s["mean_abs_f"] * 5 / 8)
    assert sm.outward_counts.tolist() == [2, 1, 1, 1]
    assert sm.hot_and_cold(1) == {"hot": [10], "hot_counts": [2], "cold": [11], "cold_counts": [1]}


def _bernoulli_outward(p_per_token, steps=400, seed=6):
    """Rows that step radially outward (by 1%) with per-token probabilities, else stay."""
    rng = np.random.default_rng(seed)
    n = len(p_per_token)
    base = _cloud(n=n)
    out = rng.random((steps, n)) < np.asarray(p_per_token)[None]
    scale = np.cumprod(np.where(out, 1.01, 1.0), axis=0)
    return np.concatenate([base[None], base[None] * scale[:, :, None]]), out.sum(axis=0)


def test_overdispersion_near_one_for_iid_tokens_and_large_for_hot_and_cold():
    w, counts = _bernoulli_outward(np.full(300, 0.37))
    sm = shell.shell_motion(w)
    assert np.array_equal(sm.outward_counts, counts)
    d = sm.dispersion()
    assert d["trials"] == 400 and d["binomial_index"] == pytest.approx(1.0, abs=0.25)
    p = np.where(np.arange(300) < 150, 0.05, 0.7)
    w, _ = _bernoulli_outward(p)
    sm = shell.shell_motion(w, tokens=np.arange(1000, 1300))
    d = sm.dispersion()
    assert d["binomial_index"] > 50 and d["poisson_index"] > 50
    hc = sm.hot_and_cold(20)
    assert all(t >= 1150 for t in hc["hot"]) and all(t < 1150 for t in hc["cold"])


def test_streamed_shell_equals_the_whole():
    rng = np.random.default_rng(7)
    w = np.cumsum(rng.normal(0, 0.01, size=(17, 20, D)), axis=0) + 0.1
    bits = from_float32(w.astype(np.float32))
    tokens = np.arange(20)
    dead = np.ones(20, bool)
    whole = shell.shell_motion(bits, tokens=tokens)
    streamed = shell.run_shell(_FakeRun(np.arange(17), bits, tokens, dead), block=5)
    assert np.array_equal(streamed.outward_counts, whole.outward_counts)
    assert streamed.steps.tolist() == list(range(1, 17))
    a, b = streamed.summary(), whole.summary()
    for k in ("mean_f", "mean_abs_f", "outward", "inward", "zero", "observed_dr", "pythagoras_dr"):
        assert a[k] == pytest.approx(b[k], rel=1e-12), k


# ------------------------------------------------------------------------------------------- epochs


def _planted_radius(t_total=600, inhale_at=3, depth=0.002, peak_at=25, freeze_at=400):
    """r(t): a contraction to step `inhale_at`, a rise whose velocity peaks near `peak_at`, decay, then frozen."""
    t = np.arange(t_total + 1, dtype=np.float64)
    v = np.where(t < inhale_at, -depth / inhale_at, 0.0)
    rise = (t >= inhale_at) & (t < freeze_at)
    v[rise] = 0.005 * np.exp(-((t[rise] - peak_at) / 10.0) ** 2 / 2) + 0.0005 * np.exp(-(t[rise] - peak_at) / 80)
    v[t >= freeze_at] = 0.0
    r = 0.16 + np.concatenate([[0.0], np.cumsum(v[:-1])])
    moving = np.where(t < freeze_at, 1.0, 0.0)
    moving[0] = 0.0
    return t.astype(np.int64), r, moving


def _track(steps, r, moving):
    n = len(steps)
    return geometry.CloudTrack(steps, np.zeros((n, D)), r, r, np.zeros(n), moving)


def test_smoothing_matches_a_reflected_running_mean():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    # scipy.ndimage.uniform_filter1d(x, 5) with mode "reflect": pad (2, 1 | … | 32, 16)
    want = [np.mean([2, 1, 1, 2, 4]), np.mean([1, 1, 2, 4, 8]), np.mean([1, 2, 4, 8, 16]),
            np.mean([2, 4, 8, 16, 32]), np.mean([4, 8, 16, 32, 32]), np.mean([8, 16, 32, 32, 16])]
    assert np.allclose(epochs.uniform_smooth(x, 5), want)


def test_planted_inhale_peak_and_freeze_are_found():
    steps, r, moving = _planted_radius()
    e = epochs.epochs(_track(steps, r, moving), "planted")
    assert e.inhale["step"] == 3
    assert e.inhale["depth"] == pytest.approx(0.002) and e.inhale["relative"] == pytest.approx(0.002 / 0.16)
    assert e.peak_step == 25 and e.sneeze == (3, 25)
    assert e.fimbulwinter["90%frozen"] == 400 and e.fimbulwinter["global"] == 400
    assert e.fimbulwinter["90%frozen-sustained"] == 400
    assert e.deceleration == (25, 400)
    v = epochs.radial_velocity(steps, r)[1]
    slow = int(np.flatnonzero((steps[:-1] > 100) & (v < 0.01 * v.max()))[0])
    assert e.fimbulwinter["velocity<1%peak"] == slow and 100 < slow <= 400
    assert e.re_expansion is None


def test_no_contraction_means_the_inhale_is_absent():
    steps, r, moving = _planted_radius()
    r[:4] = r[4] - 0.001 * (4 - np.arange(4))  # monotone start
    assert epochs.inhale(steps, r) is None
    e = epochs.epochs(_track(steps, r, moving))
    assert e.inhale is None and e.sneeze[0] == 0
    assert "absent" in epochs.EpochTable([e]).markdown()


def test_freeze_definitions_differ_where_they_should():
    steps = np.arange(11)
    moving = np.array([0, 1, 1, 0.05, 0.5, 0.05, 0.02, 0.0, 0.01, 0.0, 0.0])
    r = np.linspace(0.16, 0.2, 11)
    f = epochs.freeze_onsets(steps, r, moving, after=0)
    assert f["90%frozen"] == 3 and f["90%frozen-sustained"] == 5 and f["global"] == 9
    moving[-1] = 0.01
    assert epochs.freeze_onsets(steps, r, moving, after=0)["global"] is None


def test_re_expansion_is_found_after_the_post_peak_minimum():
    steps, r, moving = _planted_radius(t_total=800, freeze_at=700)
    t = steps.astype(float)
    v = np.diff(r)
    v += np.where((t[:-1] >= 300) & (t[:-1] < 400), 0.001, 0.0)  # 20% of the peak velocity, 300–400
    r = 0.16 + np.concatenate([[0.0], np.cumsum(v)])
    rex = epochs.re_expansion(steps, r)
    assert rex is not None and 295 <= rex["start"] <= 300 and 398 <= rex["end"] <= 405
    assert rex["velocity_max"] > 0.001
    assert epochs.re_expansion(steps, r, rise=0.5) is None


def test_epoch_table_rows_and_markdown():
    steps, r, moving = _planted_radius()
    table = epochs.epoch_table([_track(steps, r, moving), _track(steps, r * 2, moving)], labels=["a", "b"])
    rows = table.rows()
    assert [row["run"] for row in rows] == ["a", "b"]
    assert rows[0]["peak_step"] == rows[1]["peak_step"] == 25
    assert rows[1]["peak_velocity"] == pytest.approx(2 * rows[0]["peak_velocity"])
    assert rows[0]["fimbulwinter[global]"] == 400
    md = table.markdown().splitlines()
    assert len(md) == 4 and md[0].count("|") == md[2].count("|") and "Fimbulwinter (global)" in md[0]


def test_one_pass_equals_the_separate_passes():
    rng = np.random.default_rng(8)
    w = np.cumsum(rng.normal(0, 0.01, size=(13, 10, D)), axis=0) + 0.05
    bits = from_float32(w.astype(np.float32))
    tokens = np.arange(100, 110)
    dead = np.zeros(120, bool)
    dead[[101, 104, 105, 109]] = True
    run = _FakeRun(np.arange(13), bits, tokens, dead)
    track, sm = shell.run_cloud_and_shell(run, block=4)
    ref_track = geometry.run_cloud(run, rows=[101, 104, 105, 109], block=6)
    ref_shell = shell.run_shell(run, block=6)
    assert np.array_equal(track.r_origin, ref_track.r_origin) and np.array_equal(track.thermal, ref_track.thermal)
    assert np.array_equal(sm.outward_counts, ref_shell.outward_counts)
    assert sm.tokens.tolist() == [101, 104, 105, 109]
    assert sm.summary()["mean_f"] == pytest.approx(ref_shell.summary()["mean_f"], rel=1e-12)


def test_values_are_the_exact_bf16_values_for_every_finite_pattern():
    from experiments.lattice.lifecycle import to_float32

    bits = np.arange(2 ** 16, dtype=np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80]  # inf/NaN have no value to compare
    assert np.array_equal(geometry.as_values(bits), to_float32(bits).astype(np.float64))
    f32 = np.array([[0.5, -0.25]], dtype=np.float32)
    assert geometry.as_values(f32).dtype == np.float64 and geometry.as_values(f32).tolist() == [[0.5, -0.25]]
