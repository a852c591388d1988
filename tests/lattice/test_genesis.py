"""Black-hole genesis analyses: the decay budget against the training schedule, and the census / gap / pure-decay
tracks on a synthetic recording whose collapse step is known in closed form."""

import math

import numpy as np
import pytest

from experiments.lattice import genesis
from experiments.lattice import lifecycle as lattice
from experiments.rig.train import lr_at


@pytest.mark.parametrize("schedule,warmup,floor", [("constant", 0, 0.0), ("constant", 7, 0.0), ("linear", 5, 0.0),
                                                    ("cosine", 10, 0.1), ("cosine", 0, 0.0)])
def test_lr_schedule_is_what_training_uses(schedule, warmup, floor):
    o = {"lr": 3e-3, "schedule": schedule, "warmup": warmup, "min_lr_ratio": floor}
    want = np.array([lr_at(o, t, 97) for t in range(1, 98)])
    got = genesis.lr_schedule(3e-3, 97, schedule, warmup, floor)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_budget_constant_and_wsd():
    assert genesis.budget(1e-2, 1.0, 1000) == pytest.approx(10.0)
    # WSD: warm-up to the peak, flat, then linear to 0 over the decay steps: area = peak·(steps − warmup/2 − decay/2)
    s = genesis.budget(3e-3, 0.01, 2_000_000, "wsd", warmup=2000, decay_steps=400_000)
    assert s == pytest.approx(3e-3 * 0.01 * (2_000_000 - 1000 - 200_000), rel=1e-4)
    with pytest.raises(ValueError, match="schedule"):
        genesis.lr_schedule(1e-3, 10, "step")


class FakeRun:
    """The reader surface the analyses use, over arrays in memory (master = exact fp32 rows, W = their RNE)."""

    def __init__(self, master, lr, wd, steps):
        self.master = np.asarray(master, np.float32)
        self.steps = np.asarray(steps)
        self.lr = np.asarray(lr, np.float64)
        self.config = {"optim": {"weight_decay": wd}}
        self.tokens = np.arange(self.master.shape[1])
        self.available = ["W", "master"]

    def _idx(self, steps):
        if isinstance(steps, slice):
            return np.flatnonzero((self.steps >= steps.start) & (self.steps < steps.stop))
        return int(np.flatnonzero(self.steps == steps)[0])

    def tensor(self, name, steps=None, rows=None, kind="numpy"):
        x = self.master[self._idx(steps)]
        return lattice.from_float32(x) if name == "W" else x


def pure_decay_run(n=64, d=4, steps=400, lam=1.0, lr=1e-2, seed=0):
    """Rows c + d_i(0)·Π(1 − ηλ) with c fixed at 0.75 (one binade, cell 2⁻⁸): the gap is the pure-decay law."""
    rng = np.random.default_rng(seed)
    off = rng.normal(0, 0.02, size=(n, d))
    off -= off.mean(axis=0)
    shrink = np.concatenate([[1.0], np.cumprod(np.full(steps, 1 - lr * lam))])
    master = 0.75 + off[None] * shrink[:, None, None]
    return FakeRun(master, np.full(steps, lr), lam, np.arange(steps + 1)), off


def test_tracks_on_pure_decay_collapse_where_the_law_says():
    run, off = pure_decay_run()
    s, shrink = genesis.run_budget(run)
    assert s[-1] == pytest.approx(4.0) and shrink[-1] == pytest.approx(0.99 ** 400)
    track = genesis.census_track.uncached(run)
    assert track.unique[0] == 64 and track.black_holes[0] == 0
    assert track.unique[-1] == 1 and track.tokens_in_black_holes[-1] == 64  # everything inside one cell
    # first black hole: the first step at which some pair is within one cell in every coordinate (RNE, exact)
    w = lattice.from_float32(run.master)
    want = next(t for t in range(w.shape[0]) if len(np.unique(w[t], axis=0)) < 64)
    assert track.first(track.black_holes > 0) == want
    # the pure-decay prediction is exact here (c is constant and the offsets follow the law)
    pure = genesis.pure_decay_track.uncached(run)
    np.testing.assert_array_equal(pure.predicted_unique, track.unique)
    gaps = genesis.gap_track.uncached(run)
    cell = 2.0 ** -8
    np.testing.assert_allclose(gaps.median_cells, np.median(np.abs(off).max(axis=1)) * shrink / cell, rtol=1e-4)
    assert gaps.inside[-1] == 1.0 and gaps.inside[0] == 0.0
    # the per-pair onset: the log of the smallest pair's largest gap in half-cells
    pair = np.abs(off[:, None] - off[None]).max(axis=2)
    np.fill_diagonal(pair, np.inf)
    assert genesis.predicted_onset(run) == pytest.approx(math.log(pair.min() / (cell / 2)), rel=1e-5)


def test_noise_floor_keeps_rows_apart_and_the_prediction_says_what_is_missing():
    """Offsets refreshed by per-row noise every step (the Adam-step floor) never all merge; pure decay would."""
    run, off = pure_decay_run(steps=400)
    rng = np.random.default_rng(1)
    noisy = run.master.astype(np.float64).copy()
    for t in range(1, noisy.shape[0]):  # d ← d·(1 − ηλ) + ξ, ξ ~ 0.4 cells: a floor of 0.4/√(1 − 0.99²) ≈ 3 cells
        noisy[t] = 0.75 + (noisy[t - 1] - 0.75) * 0.99 + rng.normal(0, 0.4 * 2 ** -8, off.shape)
    run.master = noisy.astype(np.float32)
    track = genesis.census_track.uncached(run)
    pure = genesis.pure_decay_track.uncached(run)
    assert pure.predicted_unique[-1] < 5 < track.unique[-1]


def test_end_structure_on_a_collapsed_run():
    run, _ = pure_decay_run(steps=250)
    c, report = genesis.end_structure(run)
    assert c.n_rows == 64
    assert report is not None and report.black_holes == int(c.black_holes.size) > 0
    assert sum(r.tokens for r in [*report.table, report.singletons]) == report.selected_tokens
    table = genesis.markdown_table(report)
    assert table.splitlines()[0].startswith("| Comp | Nodes")
    gaps = genesis.bh_linf_gaps(report)
    assert gaps.size == report.black_holes * (report.black_holes - 1) // 2 and (gaps >= 1).all()
    run0, _ = pure_decay_run(steps=2)
    c0, none = genesis.end_structure(run0)
    assert none is None and c0.n_unique == 64


# ---------------------------------------------------------------------------------------------------------
# the tagged structure: config validation and the initialisation


def test_tagged_init_places_a_cube_and_a_control_box_and_leaves_everything_else_alone():
    import torch

    from experiments.rig.model import GPT

    base = {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_ff": 16, "context": 8, "tied": True, "init_std": 0.02}
    spec = {"ids": [3, 9, 4, 7], "control": [11, 12, 13, 14, 15], "scale": 1e-3, "at": "first"}
    plain, tagged = GPT(20, {**base, "tagged": None}), GPT(20, {**base, "tagged": spec})
    plain.init_weights(torch.Generator().manual_seed(5))
    tagged.init_weights(torch.Generator().manual_seed(5))
    a, b = plain.W.detach().numpy(), tagged.W.detach().numpy()
    ids, ctrl = spec["ids"], spec["control"]
    other = np.setdiff1d(np.arange(20), ids + ctrl)
    np.testing.assert_array_equal(a[other], b[other])  # every other draw is the untagged run's
    for p, q in zip(plain.parameters(), tagged.parameters(), strict=True):
        if p is not plain.W:
            assert torch.equal(p, q)
    centre = a[3]
    cube = b[ids]
    np.testing.assert_allclose(cube[:, 2:], np.broadcast_to(centre[2:], (4, 6)), rtol=0, atol=0)
    corners = {tuple(np.round((row[:2] - centre[:2]) / 1e-3 + 0.5).astype(int)) for row in cube}
    assert corners == {(0, 0), (1, 0), (0, 1), (1, 1)}  # the 4 vertices of a square of edge 1e-3
    np.testing.assert_allclose(np.abs(cube[:, :2] - centre[:2]), 5e-4, rtol=1e-3)
    box = b[ctrl]
    assert (np.abs(box[:, :2] - centre[:2]) <= 5e-4 + 1e-9).all()
    np.testing.assert_array_equal(box[:, 2:], np.broadcast_to(centre[2:], (5, 6)))
    origin = GPT(20, {**base, "tagged": {**spec, "at": "origin"}})
    origin.init_weights(torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(origin.W.detach().numpy()[ids][:, 2:], 0.0)


@pytest.mark.parametrize("override,key", [({"model.tagged.ids": [1, 2, 3]}, "model.tagged.ids"),
                                          ({"model.tagged.scale": 0}, "model.tagged.scale"),
                                          ({"model.tagged.control": [89]}, "model.tagged.control"),
                                          ({"model.tagged.at": "centre"}, "model.tagged.at"),
                                          ({"model.tagged.shape": "cube"}, "model.tagged.shape")])
def test_tagged_config_errors_name_the_key(override, key):
    import experiments
    from experiments.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        experiments.load_config("tagged-cube", **override)
    cfg = experiments.load_config("tagged-cube")
    assert cfg["model"]["tagged"]["scale"] == 1e-3 and experiments.load_config("flannel-1")["model"]["tagged"] is None


def test_a_tagged_id_outside_the_vocabulary_is_a_config_error():
    import torch

    from experiments.errors import ConfigError
    from experiments.rig.model import GPT

    cfg = {"d_model": 8, "n_layers": 1, "n_heads": 1, "d_ff": 16, "context": 8, "tied": True, "init_std": 0.02,
           "tagged": {"ids": [1, 50], "control": [], "scale": 1e-3, "at": "first"}}
    with pytest.raises(ConfigError, match="model.tagged: token id 50 is outside the vocabulary"):
        GPT(20, cfg).init_weights(torch.Generator().manual_seed(0))


def test_lab_train_with_a_bad_tagged_key_is_one_line_naming_it(tmp_path):
    """As a user runs it: the installed `lab` script in a fresh process, nothing trained, nothing left behind."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lab = Path(sys.executable).with_name("lab")
    env = dict(os.environ, LAB_STORE=str(tmp_path), TQDM_DISABLE="1")
    env.pop("LAB_SMOKE", None)
    out = subprocess.run([str(lab), "train", "tagged-cube", "--set", "model.tagged.scale=-1"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stdout == ""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "model.tagged.scale: got -1 (allowed: a number > 0)" in lines[0]
    assert not list(tmp_path.glob("*.h5*"))
