"""`lab verify`: recorded runs of each replayable variant re-computed bit for bit, and negative controls fail."""

from __future__ import annotations

import argparse
import json

import pytest

import experiments
from experiments import cli, verify
from experiments.errors import DataError

# the Flannel schedule with an active clip, so the recorded lr and clip scale matter
FLANNEL = {"schedule": "linear", "clip": 0.05}


def _run(tiny, **sections):
    cfg = tiny(train={"steps": 8}, **sections)
    return experiments.run(cfg, progress=False)


@pytest.mark.parametrize("sections", [
    {"optim": FLANNEL},
    {"optim": {**FLANNEL, "weight_decay": 0.1, "lr": 3e-3}},
    {"optim": {"impl": "single"}},
    {"model": {"tied": False}, "optim": FLANNEL},
    {"record": {"rows": "all", "tensors": ["W", "m", "v", "grad"]}},
], ids=["flannel-schedule", "weight-decay", "single-tensor", "untied", "all-rows"])
def test_bf16_recordings_replay_bit_exactly(store, tiny, sections):
    run = _run(tiny, **sections)
    result = verify.verify(run)
    assert result.variant == "bf16" and result.steps == list(range(1, 9))
    assert result.exact, verify.format_table(result)
    assert all(m.elements == 8 * len(run.tokens) * run.config["model"]["d_model"] for m in result.table)


def test_fp32_recording_replays_up_to_the_library_square_root(store, tiny):
    run = _run(tiny, precision={"dtype": "fp32"}, optim=FLANNEL)
    ieee = verify.verify(run)
    by = {m.tensor: m for m in ieee.table}
    assert by["m"].count == 0 and by["v"].count == 0
    assert 0 < by["W"].count < 0.01 * by["W"].elements
    assert verify.verify(run, laws={"sqrt": "library"}).exact


@pytest.mark.parametrize("precision", ["fp32-master-rne", "fp32-master-sr"])
def test_master_weight_recordings_replay_with_their_rounding(store, tiny, precision):
    run = _run(tiny, precision={"dtype": precision, "sr_seed": 5}, optim=FLANNEL,
               record={"tensors": ["W", "m", "v", "grad", "master"]})
    result = verify.verify(run, laws={"sqrt": "library"})
    assert [m.tensor for m in result.table] == ["master", "m", "v", "W"]
    assert result.exact, verify.format_table(result)
    if precision.endswith("sr"):  # the bf16 W really depends on the recorded seed's random bits
        run.config["precision"]["sr_seed"] = 6
        wrong = {m.tensor: m for m in verify.verify(run, laws={"sqrt": "library"}).table}
        assert wrong["W"].count > 0 and wrong["master"].count == 0


@pytest.mark.parametrize("control, kwargs", [
    ("beta2 off by 1e-3", {"hyper": {"beta2": 0.998}}),
    ("decay after the Adam term", {"laws": {"decay": "after"}}),
    ("epsilon inside the square root", {"laws": {"eps": "inside"}}),
    ("no rounding between kernels", {"laws": {"round_each_op": False}}),
])
def test_negative_controls_produce_mismatches(store, tiny, control, kwargs):
    # lr·λ large enough that decay moves weights, so its order matters
    run = _run(tiny, optim={**FLANNEL, "weight_decay": 0.5, "lr": 0.02})
    result = verify.verify(run, **kwargs)
    assert not result.exact, control
    assert any(m.count > 0 and m.first_step is not None and m.max_ulps >= 1 for m in result.table)


def test_unreplayable_runs_say_why(store, tiny):
    with pytest.raises(DataError, match="did not record m, v"):
        verify.verify(_run(tiny, record={"tensors": ["W", "grad"]}))
    with pytest.raises(DataError, match="master weights are not recorded"):  # record.tensors lacks master
        verify.verify(_run(tiny, precision={"dtype": "fp32-master-rne"}))


def test_cli_exit_status_and_json(store, tiny, capsys):
    run = _run(tiny, optim=FLANNEL)
    parser = argparse.ArgumentParser(prog="lab")
    cli.register(parser.add_subparsers(dest="command", required=True))

    def lab(*argv):
        args = parser.parse_args(argv)
        return args.func(args)

    assert lab("verify", run.key) == 0
    assert "bit-exact" in capsys.readouterr().out
    assert lab("verify", run.key, "--hyper", "beta2=0.998", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is False and report["hyper"] == {"beta2": 0.998}
    assert {row["tensor"] for row in report["table"]} == {"W", "m", "v"}
    assert lab("verify", run.key, "--hyper", "gamma=1") == 2
    assert "unknown key" in capsys.readouterr().err
    assert lab("verify", "no-such-run") == 2


def test_a_sign_of_zero_is_a_mismatch():
    """Bit-exact means every bit: +0 and −0 are the same number but not the same recording."""
    import numpy as np

    m = verify.Mismatch(tensor="W")
    verify._tally(m, np.array([0x0000, 0x3F80], np.uint16), np.array([0x8000, 0x3F80], np.uint16), 3, True)
    assert (m.count, m.max_ulps, m.first_step) == (1, 1, 3)
