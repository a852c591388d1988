"""The training loop: determinism, the two seeds, precision variants, recording order (m[t], v[t] -> W[t])."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import experiments
from experiments.store.recording import Run


def _datasets(path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()].tobytes() for name in f}


def test_same_config_gives_byte_identical_recordings(store, tiny, tmp_path):
    first = experiments.run(tiny(), progress=False)
    kept = tmp_path / "first.h5"
    first.path.rename(kept)  # make the store train it again
    second = experiments.run(tiny(), progress=False)
    assert second.key == first.key
    a, b = _datasets(kept), _datasets(second.path)
    assert set(a) >= {"W", "m", "v", "grad", "h_mean", "loss", "lr", "clip_scale", "tokens", "steps", "dead"}
    for name in a:
        assert a[name] == b[name], name


def test_data_seed_changes_trajectory_but_not_init(store, tiny):
    base = experiments.run(tiny(), progress=False)
    other_data = experiments.run(tiny(train={"data_seed": 7}), progress=False)
    other_init = experiments.run(tiny(train={"init_seed": 7}), progress=False)
    assert len({base.key, other_data.key, other_init.key}) == 3
    assert np.array_equal(base.W(steps=0, kind="bits"), other_data.W(steps=0, kind="bits"))
    assert not np.array_equal(base.W(steps=12, kind="bits"), other_data.W(steps=12, kind="bits"))
    assert not np.array_equal(base.W(steps=0, kind="bits"), other_init.W(steps=0, kind="bits"))
    assert not np.array_equal(base.loss, other_data.loss)


def test_records_what_was_asked(store, tiny):
    r = experiments.run(tiny(model={"tied": False}, record={"rows": [0, 5, 7], "steps": {"every": 5},
                                                            "tensors": ["W", "E"]}), progress=False)
    assert r.tokens.tolist() == [0, 5, 7] and r.steps.tolist() == [0, 5, 10]
    assert r.tensor("E").shape == (3, 3, 16) and "m" not in r.available
    assert r.loss.shape == (12,) and np.isfinite(r.loss).all()
    assert r.versions["optimizer_impl"] == "foreach" and r.versions["torch"] == torch.__version__
    assert r.config["record"]["rows"] == [0, 5, 7]
    # step 0 is the initialization: N(0, 0.02) rows, and m = v = 0 before any update
    w0 = r.W(steps=0).astype(np.float32)
    assert 0.01 < w0.std() < 0.03


@pytest.mark.parametrize("precision", ["bf16", "fp32", "fp32-master-rne", "fp32-master-sr"])
def test_each_precision_trains(store, tiny, precision):
    r = experiments.run(tiny(precision={"dtype": precision, "sr_seed": 3}, train={"steps": 6}), progress=False)
    W = r.W()
    assert W.dtype == (np.float32 if precision == "fp32" else np.dtype("bfloat16"))
    m = r.tensor("m")
    assert m.dtype == (np.dtype("bfloat16") if precision == "bf16" else np.float32)
    assert not np.array_equal(W[0], W[-1]) and np.isfinite(r.loss).all()
    assert r.config["precision"]["dtype"] == precision


def test_stochastic_rounding_differs_from_nearest_and_follows_its_seed(store, tiny):
    cfg = dict(train={"steps": 8})
    rne = experiments.run(tiny(precision={"dtype": "fp32-master-rne"}, **cfg), progress=False)
    sr1 = experiments.run(tiny(precision={"dtype": "fp32-master-sr", "sr_seed": 1}, **cfg), progress=False)
    sr2 = experiments.run(tiny(precision={"dtype": "fp32-master-sr", "sr_seed": 2}, **cfg), progress=False)
    # same fp32 master init, so step 0 agrees; the rounding then differs
    assert np.array_equal(rne.W(steps=0, kind="bits"), sr1.W(steps=0, kind="bits"))
    assert not np.array_equal(rne.W(steps=8, kind="bits"), sr1.W(steps=8, kind="bits"))
    assert not np.array_equal(sr1.W(steps=8, kind="bits"), sr2.W(steps=8, kind="bits"))


def _replay_step(run: Run, t: int, impl: str, state_from: int | None = None) -> dict[str, torch.Tensor]:
    """One torch AdamW step from the recorded W[t-1], m[t-1], v[t-1], grad[t], lr[t], clip scale[t]."""
    o = run.config["optim"]
    w = run.W(steps=t - 1, kind="torch").clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=float(run.lr[t - 1]), betas=tuple(o["betas"]), eps=o["eps"],
                            weight_decay=o["weight_decay"], foreach=impl == "foreach", fused=impl == "fused")
    g = run.tensor("grad", steps=t, kind="torch").clone()
    g.mul_(torch.tensor(float(run.clip_scale[t - 1]), dtype=g.dtype))  # clip_grad_norm_ multiplies in place
    w.grad = g
    s = t - 1 if state_from is None else state_from
    if t > 1:
        opt.state[w] = {"step": torch.tensor(float(t - 1)),
                        "exp_avg": run.tensor("m", steps=s, kind="torch").clone(),
                        "exp_avg_sq": run.tensor("v", steps=s, kind="torch").clone()}
    opt.step()
    return {"W": w.detach(), "m": opt.state[w]["exp_avg"], "v": opt.state[w]["exp_avg_sq"]}


@pytest.mark.parametrize("impl, rows", [("foreach", "dead"), ("single", "dead"), ("foreach", "all")])
def test_recording_order_replays_adamw_bit_exactly(store, tiny, impl, rows):
    """m[t], v[t] are the states that produced W[t]: one replayed AdamW step reproduces all three bits."""
    r = experiments.run(tiny(optim={"impl": impl, "schedule": "linear", "clip": 0.05}, train={"steps": 6},
                             record={"rows": rows}), progress=False)
    assert (r.clip_scale < 1).any()  # the clip was active, so its recorded scale matters
    assert r.lr[0] == 1e-3 and r.lr[-1] == pytest.approx(1e-3 / 6)
    for t in (1, 2, 6):
        replay = _replay_step(r, t, impl)
        for name in ("W", "m", "v"):
            want = r.tensor(name, steps=t, kind="torch")
            assert torch.equal(replay[name].view(torch.int16), want.view(torch.int16)), (t, name)
    # and the alignment matters: starting from m[t], v[t] (one step late) does not give W[t]
    late = _replay_step(r, 3, impl, state_from=3)["W"]
    assert not torch.equal(late.view(torch.int16), r.W(steps=3, kind="torch").view(torch.int16))


def test_fused_impl_trains_and_is_recorded(store, tiny):
    r = experiments.run(tiny(optim={"impl": "fused"}, train={"steps": 4}), progress=False)
    assert r.versions["optimizer_impl"] == "fused" and np.isfinite(r.loss).all()
    replay = _replay_step(r, 2, "fused")
    assert torch.equal(replay["W"].view(torch.int16), r.W(steps=2, kind="torch").view(torch.int16))


def test_two_processes_record_identical_bits(store, data_cache, sub_env, tmp_path):
    """The same config and seed in two fresh `lab train` processes (each its own store, the writer thread
    racing the training differently) give byte-identical datasets and the same content digest."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    lab = Path(sys.executable).parent / "lab"
    sets = ["train.steps=20", "train.batch_size=4", "train.seq_len=16", "train.threads=2", "train.device=cpu",
            "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.context=16",
            "corpus.train_bytes=60000", "corpus.tokenizer_bytes=60000", "tokenizer.vocab_size=500",
            "record.rows=all", "record.tensors=[W,m,v,grad,h_mean]", "optim.clip=0.05"]
    paths = []
    for i in range(2):
        s = tmp_path / f"store{i}"
        s.mkdir()
        (s / "data").symlink_to(data_cache, target_is_directory=True)
        out = subprocess.run([str(lab), "train", "flannel-1", *(a for x in sets for a in ("--set", x))],
                             env=sub_env(s), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        paths.append(Path(out.stdout.split()[2]))
    a, b = _datasets(paths[0]), _datasets(paths[1])
    assert set(a) >= {"W", "m", "v", "grad", "h_mean", "loss"} and a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    with h5py.File(paths[0], "r") as f0, h5py.File(paths[1], "r") as f1:
        assert json.loads(f0.attrs["content_sha256"]) == json.loads(f1.attrs["content_sha256"])
        assert f0["W"].chunks[0] > 1  # several steps per chunk: the layout the writer thread assembles
