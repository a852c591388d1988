"""Every cloud analysis end to end on a tiny real run (smoke profile, isolated store, ~15 s)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import experiments
from experiments.cloud import epochs, geometry, shell


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Flannel 1 under LAB_SMOKE (20 steps, vocab 1,000) recording every row and h_mean."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_SMOKE", "1")
        mp.setenv("LAB_STORE", str(tmp_path_factory.mktemp("store")))
        mp.setenv("TQDM_DISABLE", "1")
        mp.delenv("LAB_RUN_LOG", raising=False)
        yield experiments.run("flannel-1", progress=False,
                              **{"record.rows": "all", "record.tensors": ["W", "h_mean"]})


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


def test_every_analysis_on_a_tiny_real_run(tiny_run):
    run = tiny_run
    T = len(run.steps)
    assert T == 21 and run.steps[-1] == 20
    pops = geometry.populations(run)
    assert len(pops["dead"]) > 0 and len(pops["live"]) > 0
    assert len(pops["dead"]) + len(pops["live"]) == len(run.tokens)

    tracks = geometry.population_tracks(run, block=8)
    for name, tr in tracks.items():
        assert tr.steps.tolist() == run.steps.tolist(), name
        assert tr.centroid.shape == (T, run.W(steps=0).shape[-1])
        for f in ("r_origin", "r_centroid", "r_max_centroid", "thermal", "step_length", "moving"):
            assert getattr(tr, f).shape == (T,) and _finite(getattr(tr, f)), (name, f)
        assert np.all(tr.r_max_centroid >= tr.r_centroid)
        assert tr.moving[1] == 1.0  # Adam's first step moves every row (sign update)
    dead = tracks["dead"]
    assert np.allclose(dead.r_origin, geometry.run_cloud(run, rows=pops["dead"], block=5).r_origin)

    h = geometry.h_mean_of(run)
    assert h.shape == (T, dead.centroid.shape[1]) and np.isnan(h[0]).all() and _finite(h[1:])
    path = geometry.centroid_path(dead, h_mean=h)
    s = path.summary()
    assert 0 < s["efficiency"] <= 1 and path.path_length > 0
    assert _finite(path.against_h_mean[1:]) and np.all(np.abs(path.against_h_mean[1:]) <= 1 + 1e-12)
    assert _finite(path.diagonal[1:]) and _finite(path.straightness[2:])
    # Step 1 is Adam's sign step: every coordinate of every dead row moves by ±lr, so ΔC is near a diagonal
    assert path.diagonal[1] > 0.5
    assert math.isfinite(geometry.shear_ratio(dead)) and geometry.shear_ratio(dead) > 0
    lift = geometry.liftoff(dead)
    assert lift is None or lift in run.steps

    sm = shell.run_shell(run, block=6)
    assert sm.steps.tolist() == list(range(1, 21)) and len(sm.tokens) == len(pops["dead"])
    for frame in ("origin", "centroid"):
        summ = sm.summary(frame)
        assert summ["pairs"] == 20 * len(pops["dead"])
        assert 0 <= summ["radial_share"] <= 1
        assert summ["outward"] + summ["inward"] + summ["zero"] == pytest.approx(1.0)
        assert all(math.isfinite(summ[k]) for k in ("mean_f", "pythagoras_dr", "observed_dr"))
        assert all(np.shape(v) == (20,) for v in sm.per_step(frame).values())
    d = sm.dispersion()
    assert d["trials"] == 20 and math.isfinite(d["binomial_index"])
    assert sm.outward_counts.shape == (len(pops["dead"]),) and sm.outward_counts.max() <= 20
    assert set(sm.hot_and_cold(3)["hot"]) <= set(pops["dead"].tolist())

    e = epochs.epochs_of_run(run)
    assert e.label.startswith("flannel-1")
    assert e.r_start == pytest.approx(dead.r_origin[0]) and e.peak_velocity > 0
    assert 0 <= e.peak_step < 20 and e.sneeze[1] == e.peak_step
    assert set(e.fimbulwinter) == set(epochs.FREEZE_DEFINITIONS)
    table = epochs.epoch_table([run, e])
    assert len(table.rows()) == 2 and table.rows()[0]["peak_step"] == e.peak_step
    assert table.markdown().count("\n") == 3
