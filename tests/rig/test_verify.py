"""`lab verify`: recorded runs of each replayable variant re-computed bit for bit, and negative controls fail."""

from __future__ import annotations

import json

import pytest

import experiments
from experiments.errors import DataError
from experiments.physics import verify

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


def test_fp32_recording_replays_bit_exactly_with_the_probed_laws(store, tiny):
    run = _run(tiny, precision={"dtype": "fp32"}, optim=FLANNEL)
    result = verify.verify(run)
    assert result.variant == "fp32" and result.exact, verify.format_table(result)
    assert "recorded by the training machine" in result.source


@pytest.mark.parametrize("precision", ["fp32-master-rne", "fp32-master-sr"])
def test_master_weight_recordings_replay_with_their_rounding(store, tiny, precision):
    run = _run(tiny, precision={"dtype": precision, "sr_seed": 5}, optim=FLANNEL,
               record={"tensors": ["W", "m", "v", "grad", "master"]})
    result = verify.verify(run)
    assert [m.tensor for m in result.table] == ["master", "m", "v", "W"]
    assert result.exact, verify.format_table(result)
    if precision.endswith("sr"):  # the bf16 W really depends on the recorded seed's random bits
        run.config["precision"]["sr_seed"] = 6
        wrong = {m.tensor: m for m in verify.verify(run).table}
        assert wrong["W"].count > 0 and wrong["master"].count == 0


@pytest.mark.parametrize("beta2", [0.999, 0.995, 0.99, 0.98, 0.95])
def test_foreach_replays_exactly_at_every_beta2_of_the_issue_table(store, tiny, beta2):
    """Regression: foreach rounds β₂ (and 1 − ηλ) to bf16 before its mul_; the replay used to mismatch below 0.995."""
    run = _run(tiny, optim={"betas": [0.9, beta2], "impl": "foreach"})
    result = verify.verify(run)
    assert result.exact, verify.format_table(result)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_fused_run_replays_through_the_library_kernel_and_says_so(store, tiny, precision):
    run = _run(tiny, precision={"dtype": precision}, optim={"impl": "fused", "betas": [0.9, 0.95],
                                                             "weight_decay": 0.1})
    result = verify.verify(run)
    assert result.exact, verify.format_table(result)
    assert any(n.startswith("step: no law reproduces it; borrowed") for n in result.notes)
    assert "borrowed from this machine's torch" in verify.format_table(result)
    assert not verify.verify(run, hyper={"beta2": 0.96}).exact  # the borrowed kernel still sees the hyper-parameters


def test_the_run_file_records_its_machines_kernel_laws(store, tiny):
    from experiments.physics import laws
    run = _run(tiny, optim={"betas": [0.9, 0.95]})
    assert run.kernel_laws["laws"] == laws.current(True, "foreach")
    assert run.kernel_laws["arith"] == "bf16" and run.kernel_laws["impl"] == "foreach"
    assert run.kernel_laws["machine"]["torch"] == run.versions["torch"]


def test_a_recording_from_another_machine_is_replayed_with_that_machines_laws(store, tiny):
    """A run file carries its laws: a replay elsewhere uses them, and a library kernel that differs is named."""
    import h5py

    run = _run(tiny, optim={"betas": [0.9, 0.95]})
    with h5py.File(run.path, "r+") as f:
        rec = json.loads(f.attrs["kernel_laws"])
        rec["machine"]["cpu"] = "Some Other CPU"
        rec["laws"]["beta2"] = "f32" if rec["laws"]["beta2"] == "dtype" else "dtype"  # not what torch did here
        f.attrs["kernel_laws"] = json.dumps(rec)
    other = verify.verify(experiments.find(run.key))
    assert "Some Other CPU" in other.source
    assert not other.exact  # proof that the recorded laws, not this machine's, were used
    assert any(line.startswith("beta2 (second moment") and "reproduces step" in line for line in other.explanation), \
        other.explanation


def _no_cuda():
    import torch
    return not torch.cuda.is_available()


@pytest.mark.skipif(not _no_cuda(), reason="this machine has CUDA: the fallback is for machines without")
def test_a_gpu_recording_replayed_without_a_gpu_borrows_the_cpus_kernels_and_says_so(store, tiny):
    """A run file from a GPU names the GPU's laws; a CPU-only machine keeps the numpy laws, takes its own
    library kernels for the GPU's borrowed ones, and the report says so."""
    import h5py

    run = _run(tiny, optim={"impl": "fused", "betas": [0.9, 0.95], "weight_decay": 0.1})
    with h5py.File(run.path, "r+") as f:
        rec = json.loads(f.attrs["kernel_laws"])
        rec["device"] = "cuda"
        rec["machine"].update(device="cuda", gpu="NVIDIA H200", gpu_capability="9.0", cuda="13.0")
        rec["laws"]["step"] = "library@cuda:0123456789ab"
        f.attrs["kernel_laws"] = json.dumps(rec)
    result = verify.verify(experiments.find(run.key))
    assert "NVIDIA H200, CUDA 13.0" in result.source
    assert any(n.startswith("trained on cuda, replayed on this machine's cpu") for n in result.notes), result.notes
    assert any("library@cuda:0123456789ab" in n and "borrowing this machine's" in n for n in result.notes)
    assert result.exact  # it really was trained on this CPU: the CPU's fused kernel reproduces it


@pytest.mark.skipif(not _no_cuda(), reason="this machine has CUDA")
def test_stochastic_rounding_from_a_gpu_needs_a_gpu_to_replay(store, tiny):
    run = _run(tiny, precision={"dtype": "fp32-master-sr", "sr_seed": 5}, optim=FLANNEL,
               record={"tensors": ["W", "m", "v", "grad", "master"]})
    run.config["train"]["device"] = "cuda"
    with pytest.raises(DataError, match="trained on cuda with stochastic rounding.*machine with cuda"):
        verify.verify(run)


def test_the_report_names_the_machine_that_trained_the_run_and_the_one_replaying_it(store, tiny):
    """A cluster trains runs on many machines: the report says which one trained this run, and what differs."""
    import h5py

    from experiments.store.runs import trained_on

    run = _run(tiny, optim=FLANNEL)
    here = trained_on()
    same = verify.verify(run)
    assert f"trained and replayed on the same machine, {here['host']}" in verify.format_table(same)
    with h5py.File(run.path, "r+") as f:
        f.attrs["trained_on"] = json.dumps({**here, "host": "node-17", "cpu": "Some Other CPU"})
    text = verify.format_table(verify.verify(experiments.find(run.key)))
    assert f"trained on node-17 (Some Other CPU, torch {here['torch']}), replayed on {here['host']}" in text
    assert "host, cpu differ" in text


@pytest.mark.parametrize("tensor, step", [("W", 3), ("m", 5), ("v", 2)])
def test_a_flipped_bit_is_reported_at_its_tensor_and_step(store, tiny, tensor, step):
    import h5py
    import numpy as np

    run = _run(tiny, optim=FLANNEL)
    with h5py.File(run.path, "r+") as f:
        ds = f[tensor]
        frame = ds[step]
        flat = frame.reshape(-1).view(np.uint16)
        flat[7] ^= np.uint16(1 << 13)  # an exponent bit: the value jumps by orders of magnitude
        ds[step] = frame
    result = verify.verify(experiments.find(run.key))
    by = {m.tensor: m for m in result.table}
    assert not result.exact
    assert by[tensor].first_step == step
    assert all(m.first_step is None or m.first_step >= step for m in result.table)
    assert any("damaged data" in line for line in result.explanation), result.explanation


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
    from lab.cli import main

    def lab(*argv):
        return main(list(argv))

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
