"""Resume: a run killed mid-way continues from its last checkpoint and records exactly what an
uninterrupted run records (every dataset byte for byte, and the same content digest)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import experiments
from experiments import runs as R
from experiments import train as T

STEPS = 250


def _cfg(tiny, precision="bf16"):
    tensors = ["W", "m", "v", "grad", "h_mean"] + (["master"] if precision.startswith("fp32-master") else [])
    return tiny(name="resume", train={"steps": STEPS}, precision={"dtype": precision, "sr_seed": 3},
                optim={"schedule": "linear", "clip": 0.05},
                record={"rows": "dead", "steps": "all", "tensors": tensors})


def _datasets(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, json.loads(f.attrs["content_sha256"])


_CHILD = """
import json, sys
import experiments
experiments.run(json.loads(sys.argv[1]), progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision, sig", [("bf16", signal.SIGKILL), ("fp32-master-sr", signal.SIGKILL),
                                            ("bf16", signal.SIGINT)])
def test_a_killed_run_resumes_bit_identically(store, tiny, sub_env, tmp_path, monkeypatch, precision, sig):
    cfg = _cfg(tiny, precision)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    whole = experiments.run(cfg, progress=False)  # the uninterrupted reference

    other = tmp_path / "other-store"
    other.mkdir()
    (other / "data").symlink_to(store / "data", target_is_directory=True)
    env = sub_env(other, LAB_CHECKPOINT_EVERY="50")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = other / f"{whole.path.name}.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists():  # wait for the first checkpoint, then kill at a random moment after it
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.5))
    child.send_signal(sig)
    child.wait(timeout=60)
    if (other / whole.path.name).exists():
        pytest.skip("the child finished before the signal arrived")
    assert ckpt.exists() and list(other.glob(f"{whole.path.name}.tmp-*"))
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 50 <= killed_at < STEPS

    resumed_from = []
    real = T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: resumed_from.append(k.get("resume")) or real(*a, **k))
    monkeypatch.setenv("LAB_STORE", str(other))
    again = experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt]
    assert again.key == whole.key
    assert not ckpt.exists() and not list(other.glob("*.tmp-*"))  # nothing left behind
    (want, want_digest), (got, got_digest) = _datasets(whole.path), _datasets(again.path)
    assert sorted(want) == sorted(got)
    for name in want:
        assert np.array_equal(want[name].view(np.uint8), got[name].view(np.uint8)), name
    assert want_digest == got_digest


def test_a_damaged_interrupted_recording_trains_from_step_zero(store, tiny, monkeypatch, capfd):
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    reference = experiments.run(cfg, progress=False)
    final = reference.path
    partial = final.with_name(f"{final.name}.tmp-999999")
    partial.write_bytes(b"not an HDF5 file at all")
    final.rename(final.with_name("reference.h5"))
    torch.save({"step": 50, "key": reference.key, "partial": str(partial)}, R._ckpt(final))
    run = experiments.run(cfg, progress=False)
    assert "cannot resume" in capfd.readouterr().err
    assert run.path == final and not partial.exists() and not R._ckpt(final).exists()


def test_checkpoint_interval_is_validated_and_rounded(monkeypatch):
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "120")
    assert R._checkpoint_every() == 150
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "0")
    assert R._checkpoint_every() == 0
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "often")
    with pytest.raises(experiments.runs.ConfigError, match="LAB_CHECKPOINT_EVERY"):
        R._checkpoint_every()
