"""The coarsening tools on known answers: exact translations, collapse below the ULP, stochastic rounding,
and shared rows in recorded runs (planted duplicates and a smoke-profile training)."""

import ml_dtypes
import numpy as np
import pytest

from experiments.lattice import blackholes, coarsening
from experiments.lattice import lifecycle as lattice

# ---------------------------------------------------------------------------------------------------------
# rounding


def test_round_nearest_is_ml_dtypes_and_stochastic_is_unbiased():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 40)) * 0.02).astype(np.float32)
    assert np.array_equal(coarsening.round_nearest(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    # values on the bf16 lattice come back exactly under stochastic rounding
    on = lattice.to_float32(lattice.from_float32(x))
    assert np.array_equal(coarsening.round_stochastic(on, rng), lattice.from_float32(on))
    # a quarter of the way from 1 to 1 + 2**-7 (and the negative mirror): up (away from zero) 25% of the time
    v = np.array([1.0 + 2**-9, -(1.0 + 2**-9)], dtype=np.float32)
    b = coarsening.round_stochastic(np.tile(v, (40_000, 1)), rng)
    up = np.abs(lattice.to_float32(b)) > 1.0
    assert set(np.unique(np.abs(lattice.to_float32(b)))) == {1.0, 1.0078125}
    assert np.allclose(up.mean(axis=0), 0.25, atol=0.01)
    assert np.array_equal(v, np.array([1.0 + 2**-9, -(1.0 + 2**-9)], dtype=np.float32))  # input untouched


def test_unit_direction():
    rng = np.random.default_rng(1)
    for kind in ("random", "diagonal"):
        u = coarsening.unit_direction(kind, 16, rng)
        assert u.shape == (16,) and np.isclose(np.linalg.norm(u), 1.0)
    assert np.allclose(np.abs(coarsening.unit_direction("diagonal", 16, rng)), 0.25)
    assert np.allclose(coarsening.unit_direction([3.0, 4.0], 2, rng), [0.6, 0.8])
    with pytest.raises(ValueError, match="direction"):
        coarsening.unit_direction("sideways", 4, rng)
    with pytest.raises(ValueError, match="non-zero"):
        coarsening.unit_direction(np.zeros(4), 4, rng)


# ---------------------------------------------------------------------------------------------------------
# drift


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_translation_by_exact_lattice_multiples_moves_every_row_rigidly(rounding):
    # all coordinates stay in the binade [1, 2) (ULP 2**-7); each step adds exactly 2 ULPs per coordinate, so
    # both roundings are exact and every bit pattern rises by 2 per step: nothing can merge or split
    d, steps = 4, 8
    start = np.full(d, 1.25)
    radius = 2 * (1.25 + steps * 2 * 2**-7)  # target 1.375 per coordinate along (1, 1, 1, 1)/2
    r = coarsening.drift(n=300, d=d, sigma=0.02, radius=radius, steps=steps, direction=np.ones(d), start=start,
                         rounding=rounding, seed=3)
    assert np.all(r.increment == np.float32(2 * 2**-7))
    assert r.unique[0] > 250 and np.all(r.unique == r.unique[0])  # distinct on the coarse lattice, and kept
    assert np.array_equal(r.bits.astype(np.int64) - r.initial_bits, np.full((300, d), 2 * steps))
    assert r.steps.tolist() == list(range(steps + 1))


def test_translation_preserves_distinctness_when_sigma_dwarfs_the_ulp():
    # σ = 0.02 against a destination ULP of ~3e-5: the seeds' 03_drift_coalescence case, all rows kept
    r = coarsening.drift(n=400, d=64, sigma=0.02, radius=0.37, steps=50, seed=4, record=(10, 25))
    assert r.steps.tolist() == [0, 10, 25, 50]
    assert np.all(r.unique == 400) and np.all(r.black_holes == 0) and np.all(r.largest == 1)
    assert abs(r.centroid_norm[-1] - 0.37) < 0.01


def test_cloud_far_below_the_ulp_is_one_black_hole_and_nearest_keeps_it_whole():
    rng = np.random.default_rng(5)
    c = rng.normal(size=32) * 0.37 / np.sqrt(32)
    r = coarsening.drift(n=200, d=32, sigma=1e-12, radius=0.5, steps=20, direction=c, start=c, seed=5)
    assert r.unique[0] == 1 and r.largest[0] == 200  # the initial cast already merged everything
    assert np.all(r.unique == 1) and r.black_holes[-1] == 1  # identical inputs round identically
    # stochastic rounding rounds each copy independently: the black hole evaporates
    s = coarsening.drift(n=200, d=32, sigma=1e-12, radius=0.5, steps=20, direction=c, start=c, seed=5,
                         rounding="stochastic")
    assert s.unique[0] == 1 and s.unique[-1] == 200


def test_a_fine_cloud_coalesces_when_it_drifts_onto_a_coarse_lattice():
    # σ = 1e-6 near the origin: ULPs ~1e-8, all distinct. At 0.37 along the diagonal of 4 dims each coordinate
    # sits at 0.185 where the ULP is 2**-10 ≈ 1e-3: the whole cloud falls into one or two cells per axis
    r = coarsening.drift(n=500, d=4, sigma=1e-6, radius=0.37, steps=10, direction="diagonal", seed=6)
    assert r.unique[0] == 500
    assert r.unique[-1] <= 16 and r.black_holes[-1] >= 1 and r.largest[-1] >= 100
    assert np.all(np.diff(r.unique) <= 0)  # nearest rounding never splits a merged pair
    assert r.median_ulp[-1] == 2**-10 and r.median_ulp[0] < 1e-7


def test_stochastic_drift_is_reproducible_with_its_seed():
    kw = dict(n=100, d=16, sigma=1e-5, radius=0.3, steps=15, rounding="stochastic")
    a, b, c = coarsening.drift(seed=1, **kw), coarsening.drift(seed=1, **kw), coarsening.drift(seed=2, **kw)
    assert np.array_equal(a.bits, b.bits) and a.unique.tolist() == b.unique.tolist()
    assert not np.array_equal(a.bits, c.bits)
    # same cloud and direction, different rounding noise: the seed of the rounding stream is separate
    n1 = coarsening.drift(seed=1, **{**kw, "rounding": "nearest"})
    assert np.array_equal(n1.initial_bits, a.initial_bits) and not np.array_equal(n1.bits, a.bits)


def test_drift_populations_and_arguments():
    r = coarsening.drift(n=50, d=2, sigma=1e-6, radius=0.3, steps=3, direction="diagonal", seed=0)
    for pops, u, big in zip(r.populations, r.unique, r.largest, strict=True):
        assert pops.sum() == 50 and pops.size == u and pops[0] == big and np.all(np.diff(pops) <= 0)
    assert r.tokens_in_black_holes[-1] == r.populations[-1][r.populations[-1] > 1].sum()
    s = r.summary()
    assert s["unique"] == r.unique[-1] and s["unique_start"] == 50 and s["direction"] == "diagonal"
    with pytest.raises(ValueError, match="rounding"):
        coarsening.drift(n=5, d=2, rounding="up")
    with pytest.raises(ValueError, match="need n"):
        coarsening.drift(n=0)
    with pytest.raises(ValueError, match="start has shape"):
        coarsening.drift(n=5, d=2, start=np.zeros(3))


def test_drift_sweep_table():
    rows = coarsening.drift_sweep(sigmas=(0.02, 1e-9), radii=(0.37,), steps=(5,), directions=("diagonal",),
                                  roundings=("nearest", "stochastic"), n=60, d=8)
    assert [(r["sigma"], r["rounding"]) for r in rows] == [
        (0.02, "nearest"), (0.02, "stochastic"), (1e-9, "nearest"), (1e-9, "stochastic")]
    assert rows[0]["unique"] == 60 and rows[0]["black_holes"] == 0
    assert rows[2]["unique"] < 60 and rows[2]["largest"] > 1


# ---------------------------------------------------------------------------------------------------------
# sigma sweep


def test_sigma_sweep_regimes_on_a_john_like_vector():
    john = coarsening.john_standin(d=256, norm=coarsening.JOHN_NORM, seed=0)
    prof = coarsening.ulp_profile(john)
    assert abs(prof["norm"] - coarsening.JOHN_NORM) < 1e-3 and prof["exp_max"] <= 123
    rows = coarsening.sigma_sweep(john, (1e-13, 1e-3), n=300, seed=42)
    assert (rows[0]["unique"], rows[0]["black_holes"], rows[0]["largest"], rows[0]["on_center"]) == (1, 1, 300, 300)
    assert (rows[1]["unique"], rows[1]["black_holes"], rows[1]["on_center"]) == (300, 0, 0)
    assert coarsening.sigma_sweep(john, (1e-13,), n=300, seed=1) == rows[:1]
    mid = coarsening.half_unique_sigma(john, n=300, iterations=10)
    assert 1e-10 < mid["sigma"] < 1e-6 and 100 <= mid["unique"] <= 200
    lap = coarsening.john_standin(d=256, seed=0, distribution="laplace")
    assert abs(coarsening.ulp_profile(lap)["norm"] - coarsening.JOHN_NORM) < 1e-3
    with pytest.raises(ValueError, match="distribution"):
        coarsening.john_standin(distribution="cauchy")


def test_sigma_sweep_accepts_bfloat16_and_rejects_nan():
    c = np.full(8, 0.5, dtype=np.float32).astype(ml_dtypes.bfloat16)
    assert coarsening.sigma_sweep(c, (0.0,), n=10)[0]["unique"] == 1
    with pytest.raises(ValueError, match="inf/NaN"):
        coarsening.sigma_sweep(np.array([0x7FC0, 0x3F80], dtype=np.uint16), (1e-3,), n=4)


# ---------------------------------------------------------------------------------------------------------
# our runs


def _recorded_run(path, w, steps, tokens, dead):
    from experiments.rig.record import Recorder
    from experiments.store.recording import Run

    attrs = {"name": "planted", "key": "0123456789abcdef", "key_parts": "{}", "config": '{"record": {"rows": "all"}}',
             "versions": "{}", "created": "2026-01-01T00:00:00Z", "description": "test"}
    n_steps = int(steps[-1])
    rec = Recorder(path, attrs=attrs, tokens=np.asarray(tokens), steps=np.asarray(steps), steps_total=n_steps,
                   d_model=w.shape[2], tensors={"W": "bfloat16"}, dead=dead, counts=np.zeros(dead.size, np.int64))
    for i, s in enumerate(steps):
        rec.write_step(int(s), {"W": w[i]})
    rec.write_scalars(1, np.zeros(n_steps, np.float32), np.zeros(n_steps), np.ones(n_steps, np.float32))
    rec.finish()
    return Run(rec.path)


def test_shared_rows_on_planted_duplicates(tmp_path):
    tokens = [3, 4, 5, 8, 9]  # token 5 is live: its row must not count
    dead = np.zeros(12, dtype=bool)
    dead[[3, 4, 8, 9]] = True
    w = np.arange(3 * 5 * 6, dtype=np.uint16).reshape(3, 5, 6) + 0x3F80  # all distinct
    w[1, 1] = w[1, 0]  # step 1: tokens 3 and 4 share a row
    w[2, 1] = w[2, 0]  # step 2: 3, 4 and 9 share one row; live 5 copies dead 8 (ignored)
    w[2, 4] = w[2, 0]
    w[2, 2] = w[2, 3]
    run = _recorded_run(tmp_path / "planted-0123456789abcdef.h5", w, [0, 1, 2], tokens, dead)
    r = coarsening.shared_rows_over_time(run, chunk=2)
    assert r.rows == 4 and r.steps.tolist() == [0, 1, 2]
    assert r.unique.tolist() == [4, 3, 2] and r.black_holes.tolist() == [0, 1, 1]
    assert r.tokens_in_black_holes.tolist() == [0, 2, 3] and r.largest.tolist() == [1, 2, 3]
    assert r.table()[2] == {"step": 2, "unique": 2, "black_holes": 1, "tokens_in_black_holes": 3, "largest": 3}
    sel = coarsening.shared_rows_over_time(run, steps=[2, 0])
    assert sel.steps.tolist() == [2, 0] and sel.unique.tolist() == [2, 4]
    assert coarsening.shared_rows_over_time(run, steps=slice(1, None)).unique.tolist() == [3, 2]


def test_shared_rows_on_a_smoke_run(tmp_path, monkeypatch):
    import experiments

    monkeypatch.setenv("LAB_SMOKE", "1")
    monkeypatch.setenv("LAB_STORE", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("LAB_RUN_LOG", raising=False)
    run = experiments.run("flannel-1", progress=False)
    r = coarsening.shared_rows_over_time(run)
    n_dead = int(run.dead[run.tokens].sum())
    assert r.rows == n_dead > 0 and r.steps.tolist() == run.steps.tolist()
    assert r.unique[0] == n_dead  # N(0, 0.02) in D = 64: distinct at init
    last = blackholes.census(run.W(steps=int(run.steps[-1]), kind="bits")[run.dead[run.tokens]])
    assert (r.unique[-1], r.black_holes[-1]) == (last.n_unique, last.black_holes.size)


def test_master_drift_is_the_rounding_of_the_float32_cloud():
    d, n, steps, sigma = 16, 80, 7, 1e-3
    direction = np.linspace(-1, 1, d) + 0.05
    r = coarsening.drift(n=n, d=d, sigma=sigma, radius=0.4, steps=steps, direction=direction, seed=9,
                         master=True, record=())
    x = np.random.default_rng(9).standard_normal(size=(n, d), dtype=np.float32)
    x *= np.float32(sigma)
    assert np.array_equal(r.initial_bits, lattice.from_float32(x))
    for _ in range(steps):
        x += r.increment
    assert np.array_equal(r.bits, lattice.from_float32(x)) and r.master and r.summary()["master"]
    s = coarsening.drift(n=n, d=d, sigma=sigma, radius=0.4, steps=steps, direction=direction, seed=9,
                         master=True, rounding="stochastic", record=())
    lo, hi = np.minimum(r.bits, s.bits), np.maximum(r.bits, s.bits)
    assert np.all(hi - lo <= 1)  # the stochastic view is one of the two neighbours of the master value


def test_nearest_cells():
    base = np.full((5, 3), 0x3F90, dtype=np.uint16)  # 1.125, all in the binade [1, 2)
    base[1, 0] += 1  # one cell from row 0
    base[2] = base[0]  # a black hole with row 0
    base[3, 2] += 7
    base[4, 1] += 40
    base[4, 0] += 3
    assert coarsening.nearest_cells(base, chunk=2).tolist() == [0, 1, 0, 7, 40]
    neg = np.array([[0x3F80], [0xBF80]], dtype=np.uint16)  # +1 and −1: every cell through zero counts
    assert coarsening.nearest_cells(neg).tolist() == [2 * 0x3F80] * 2
    assert coarsening.nearest_cells(neg[:1]).tolist() == [np.iinfo(np.int64).max]
