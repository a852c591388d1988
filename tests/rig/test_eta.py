"""The time-left estimate of a plan's training (runs._Eta): work-weighted, with a measured per-run cost."""

from __future__ import annotations

import copy

from experiments.rig.config import load_config
from experiments.store import runs as R


def _plan():
    """A plan like the site's: a few long runs first, then many runs whose steps are ~20x cheaper."""
    big = load_config("flannel-1")
    small = copy.deepcopy(big)
    small["model"].update(d_model=16, n_layers=1, d_ff=64)
    small["train"].update(batch_size=4, seq_len=64)
    cfgs = {f"big{i}": big for i in range(4)} | {f"small{i}": small for i in range(20)}
    return cfgs


def _simulate(cfgs, overhead: float, rate: float):
    """Feed a plan run one at a time (each run: `overhead` seconds, then its steps at `rate` FLOP/s) to an
    _Eta; yield (elapsed, its estimate, the true time left) at every finish and every 100 steps."""
    eta = R._Eta(cfgs)
    per = {k: R._flops_per_step(c) for k, c in cfgs.items()}
    total_time = sum(overhead + per[k] * c["train"]["steps"] / rate for k, c in cfgs.items())
    t = 0.0
    for key, cfg in cfgs.items():
        t += overhead
        for _ in range(cfg["train"]["steps"] // 100):
            t += per[key] * 100 / rate
            eta.progress(key, 100)
            eta.sample(t)
            yield t, eta.left(t), total_time - t
        eta.finished()


def test_the_estimate_weighs_steps_by_their_cost_and_learns_the_per_run_cost():
    cfgs = _plan()
    assert R._flops_per_step(cfgs["big0"]) > 10 * R._flops_per_step(cfgs["small0"])
    points = list(_simulate(cfgs, overhead=3.0, rate=2e11))
    # once the first run has finished (its samples separate the per-run cost from the steps' cost, the
    # second run's start shows the jump), the estimate is this plan's time left
    after_first = points[1000 // 100 + 1:]
    for _, estimate, truth in after_first:
        assert abs(estimate - truth) <= 0.02 * truth + 0.5
    # counting runs (the old estimate's floor) would have said ~4x too much after the two long runs
    t, estimate, truth = points[2 * (1000 // 100) - 1]
    by_runs = (24 - 2) * t / 2
    assert by_runs > 3 * truth and abs(estimate - truth) <= 0.02 * truth


def test_a_failed_run_takes_its_remaining_work_out():
    cfgs = _plan()
    eta = R._Eta(cfgs)
    eta.progress("big0", 500)
    before = eta.left(10.0)
    eta.drop("big0", 500)
    eta.finished()
    assert eta.left(10.0) < before
    assert R._Eta({}).left(5.0) == 0.0
