"""Resume: a run killed mid-way continues from its last checkpoint and records exactly what an
uninterrupted run records (every dataset byte for byte, and the same content digest)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import experiments
from experiments.rig import record
from experiments.rig import train as T
from experiments.store import runs as R

STEPS = 250


def _cfg(tiny, precision="bf16"):
    tensors = ["W", "m", "v", "grad", "h_mean"] + (["master"] if precision.startswith("fp32-master") else [])
    return tiny(name="resume", train={"steps": STEPS}, precision={"dtype": precision, "sr_seed": 3},
                optim={"schedule": "linear", "clip": 0.05},
                record={"rows": "dead", "steps": "all", "tensors": tensors})


def _reference_and_other_store(cfg, sibling_store):
    """The uninterrupted run in `store`, and an empty second store sharing its prepared data."""
    return experiments.run(cfg, progress=False), sibling_store("other-store")


def _spy_resume(monkeypatch) -> list:
    """The `resume` argument of every training from now on (None for a training from step 0)."""
    calls, real = [], T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: calls.append(k.get("resume")) or real(*a, **k))
    return calls


def _crash_after_checkpoint(monkeypatch, step: int) -> None:
    """The training raises right after it saved its checkpoint at `step` (a crash, not a signal)."""
    real = T._save

    def save(*a, **k):
        real(*a, **k)
        if a[1] == step:
            raise RuntimeError("injected crash")

    monkeypatch.setattr(T, "_save", save)


def _assert_same_recording(want_path, got_path) -> None:
    """Every dataset byte for byte, and the same content digest."""
    (want, want_digest), (got, got_digest) = _datasets(want_path), _datasets(got_path)
    assert sorted(want) == sorted(got)
    for name in want:
        assert np.array_equal(want[name].view(np.uint8), got[name].view(np.uint8)), name
    assert want_digest == got_digest


def _checkpoint_step(ckpt) -> int:
    """The step of the checkpoint (-1 while there is none; it is replaced atomically, never torn)."""
    try:
        return int(torch.load(ckpt, weights_only=False)["step"])
    except FileNotFoundError:
        return -1


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
def test_a_killed_run_resumes_bit_identically(store, tiny, sub_env, sibling_store, monkeypatch, precision, sig):
    cfg = _cfg(tiny, precision)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    whole, other = _reference_and_other_store(cfg, sibling_store)
    env = sub_env(other, LAB_CHECKPOINT_EVERY="50")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = other / f"{whole.path.name}.ckpt"
    deadline = time.monotonic() + 300
    # wait for a random checkpoint (50 or 100 of 250), then kill a moment after it: at least 150 steps remain,
    # so a fast CPU (these tiny steps take under a millisecond) does not finish before the signal arrives
    target = random.choice([50, 100])
    while _checkpoint_step(ckpt) < target:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.02))
    child.send_signal(sig)
    child.wait(timeout=60)
    if (other / whole.path.name).exists():
        pytest.skip("the child finished before the signal arrived")
    assert ckpt.exists() and list(other.glob(f"{whole.path.name}.tmp-*"))
    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 50 <= killed_at < STEPS

    resumed_from = _spy_resume(monkeypatch)
    monkeypatch.setenv("LAB_STORE", str(other))
    again = experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt]
    assert again.key == whole.key
    assert not ckpt.exists() and not list(other.glob("*.tmp-*"))  # nothing left behind
    _assert_same_recording(whole.path, again.path)


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


@pytest.mark.parametrize("saved_digests", [True, False], ids=["digests-in-checkpoint", "older-checkpoint"])
def test_a_crash_keeps_the_checkpoint_and_the_next_call_resumes(store, tiny, sibling_store, monkeypatch,
                                                                 saved_digests):
    """A crash (not a signal) after a checkpoint leaves the recording and its checkpoint, as a kill does; the
    next call resumes from there and records what an uninterrupted run records. The checkpoint carries the
    recording's running digests, so nothing is read back; one written before it did (no `digests`) makes the
    resume rebuild them from the rows, with the same result."""
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    whole, other = _reference_and_other_store(cfg, sibling_store)
    monkeypatch.setenv("LAB_STORE", str(other))
    real_save = T._save
    _crash_after_checkpoint(monkeypatch, 100)
    with pytest.raises(RuntimeError, match="injected crash"):
        experiments.run(cfg, progress=False)
    ckpt = other / f"{whole.path.name}.ckpt"
    assert ckpt.exists() and len(list(other.glob(f"{whole.path.name}.tmp-*"))) == 1
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 100 and set(state["digests"]) == set(_datasets(whole.path)[1])
    if not saved_digests:
        del state["digests"]
        torch.save(state, ckpt)

    monkeypatch.setattr(T, "_save", real_save)
    resumed_from = _spy_resume(monkeypatch)
    restored, real_restored = [], record.Recorder._restored
    monkeypatch.setattr(record.Recorder, "_restored",
                        lambda self, *a: restored.append(real_restored(self, *a)) or restored[-1])
    again = experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt] and restored == [saved_digests]
    assert not ckpt.exists() and not list(other.glob("*.tmp-*"))
    _assert_same_recording(whole.path, again.path)


def test_a_resumed_run_on_a_full_disk_says_so_and_keeps_its_checkpoint(store, tiny, monkeypatch, capfd):
    """A full disk when a run resumes is that failure (with the space it needs), not a checkpoint that cannot
    be continued: nothing is thrown away, and the next call, with space, resumes."""
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    real_save = T._save
    _crash_after_checkpoint(monkeypatch, 100)
    with pytest.raises(RuntimeError, match="injected crash"):
        experiments.run(cfg, progress=False)
    (ckpt,) = store.glob("*.h5.ckpt")
    monkeypatch.setattr(T, "_save", real_save)
    resumed_from = _spy_resume(monkeypatch)
    real_usage = record.shutil.disk_usage
    monkeypatch.setattr(record.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(experiments.store.runs.DataError, match="space|disk"):
        experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt] and "cannot resume" not in capfd.readouterr().err
    assert ckpt.exists() and len(list(store.glob("*.h5.tmp-*"))) == 1
    monkeypatch.setattr(record.shutil, "disk_usage", real_usage)
    experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt, ckpt] and not ckpt.exists()


def test_a_resumed_run_that_fails_otherwise_keeps_its_checkpoint(store, tiny, monkeypatch, capfd):
    """Only a checkpoint or recording that cannot be continued restarts from step 0: a resumed run that fails
    for another reason (here a DataError from training itself, as a full disk or a NaN loss gives) reports that
    error and keeps the checkpoint, instead of throwing it away and training the whole run again."""
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    _crash_after_checkpoint(monkeypatch, 100)
    with pytest.raises(RuntimeError, match="injected crash"):
        experiments.run(cfg, progress=False)
    (ckpt,) = store.glob("*.h5.ckpt")

    calls = []

    def fails_on_resume(*a, **k):
        calls.append(k.get("resume"))
        raise experiments.store.runs.DataError("resume: loss became nan at step 120; try a lower optim.lr")

    monkeypatch.setattr(T, "train", fails_on_resume)
    with pytest.raises(experiments.store.runs.DataError, match="loss became nan"):
        experiments.run(cfg, progress=False)
    assert calls == [ckpt]  # not retried from step 0
    assert "cannot resume" not in capfd.readouterr().err
    assert ckpt.exists() and len(list(store.glob("*.h5.tmp-*"))) == 1


def test_checkpoint_interval_is_validated_and_rounded(monkeypatch):
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "120")
    assert R._checkpoint_every() == 150
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "0")
    assert R._checkpoint_every() == 0
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "often")
    with pytest.raises(experiments.store.runs.ConfigError, match="LAB_CHECKPOINT_EVERY"):
        R._checkpoint_every()


# ------------------------------------------------------------------ continuing a killed recording in place

_N, _D, _T, _CKPT = 200, 16, 120, 37  # a checkpoint inside a chunk row of steps (8 per chunk)


def _bits(step: int, name: str) -> np.ndarray:
    return np.random.default_rng([step, ord(name)]).integers(0, 1 << 16, (_N, _D), dtype=np.uint16)


def _recorder(path, resume_at=None, key="0123456789abcdef", tokens=None):
    from experiments.rig.record import Recorder

    tokens = np.arange(_N) if tokens is None else tokens
    return Recorder(path, attrs={"name": "rec", "key": key}, tokens=tokens,
                    steps=np.arange(_T + 1), steps_total=_T, d_model=_D, tensors={"W": "bfloat16", "m": "bfloat16"},
                    dead=np.ones(_N, bool), counts=np.zeros(_N, np.int64), resume_at=resume_at)


def _record(rec, steps: range) -> None:
    """Steps `steps` of W and m, then the scalars of those steps (as training flushes them at a checkpoint)."""
    for s in steps:
        rec.write_step(s, {"W": _bits(s, "W"), "m": _bits(s, "m")})
    a, b = max(1, steps[0]), steps[-1]
    rec.write_scalars(a, np.arange(a, b + 1, dtype=np.float32), np.full(b + 1 - a, 1e-3),
                      np.ones(b + 1 - a, np.float32))


_KILLED_WRITER = """
import os, signal, sys
sys.path[:0] = sys.argv[2:]
from test_resume import _recorder, _record, _CKPT
rec = _recorder(sys.argv[1])
_record(rec, range(0, _CKPT + 1))
rec.checkpoint()
with open(sys.argv[1], "rb") as f:
    superblock = f.read(48)  # what the checkpoint's flush left: end of allocation, "open for writing" flags
_record(rec, range(_CKPT + 1, _CKPT + 41))
rec.checkpoint()  # the chunk index now names chunks past the old end of allocation ...
with open(sys.argv[1], "r+b") as f:
    f.write(superblock)  # ... and the superblock is the checkpoint's again (metadata evicted, then a kill)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_recording_is_continued_in_place_over_its_orphaned_chunks(tmp_path):
    """A killed writer's chunks past its checkpoint, with index entries on disk beyond the superblock's end of
    allocation: the continuing writer must not allocate over them. The result equals an uninterrupted
    recording, dataset for dataset and digest for digest, in the very file the killed writer left."""
    from experiments.rig.record import DIGEST_ATTR

    whole = tmp_path / "whole.h5"
    rec = _recorder(whole)
    _record(rec, range(_T + 1))
    rec.finish()

    part = tmp_path / "part.h5"
    here = Path(__file__).resolve()
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(part), str(here.parent), str(here.parents[2])],
                          capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    inode = part.stat().st_ino
    rec = _recorder(part, resume_at=_CKPT)
    _record(rec, range(_CKPT + 1, _T + 1))
    rec.finish()
    assert part.stat().st_ino == inode
    with h5py.File(whole, "r") as a, h5py.File(part, "r") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            assert np.array_equal(a[name][()].view(np.uint8), b[name][()].view(np.uint8)), name
        assert a.attrs[DIGEST_ATTR] == b.attrs[DIGEST_ATTR] and b.attrs["complete"] == 1


def test_a_recording_begun_in_the_smaller_chunks_of_earlier_code_is_continued_in_them(tmp_path, monkeypatch):
    """Chunks grew where a block of steps is large (record._BIG_BLOCK_BYTES). A recording interrupted under the
    earlier layout is continued in its own chunks, and equals an uninterrupted recording."""
    from experiments.rig import record

    monkeypatch.setattr(record, "_BIG_BLOCK_BYTES", 1 << 40)  # the earlier code: about 32 KiB chunks always
    whole = tmp_path / "whole.h5"
    rec = _recorder(whole)
    _record(rec, range(_T + 1))
    rec.finish()
    part = tmp_path / "part.h5"
    rec = _recorder(part)
    _record(rec, range(_CKPT + 1))
    rec.checkpoint()
    rec.abort()  # interrupted after its checkpoint
    with h5py.File(part, "r") as f:
        old = f["W"].chunks
    monkeypatch.setattr(record, "_BIG_BLOCK_BYTES", 16 << 10)  # this code's rule, scaled to the test's blocks
    assert record._chunk_shape((_T + 1, _N, _D), 2) != old
    rec = _recorder(part, resume_at=_CKPT)
    _record(rec, range(_CKPT + 1, _T + 1))
    rec.finish()
    with h5py.File(whole, "r") as a, h5py.File(part, "r") as b:
        assert b["W"].chunks == b["m"].chunks == old
        for name in a:
            assert np.array_equal(a[name][()].view(np.uint8), b[name][()].view(np.uint8)), name
        assert a.attrs[record.DIGEST_ATTR] == b.attrs[record.DIGEST_ATTR] and b.attrs["complete"] == 1


def test_a_recording_that_is_not_this_runs_is_not_continued(tmp_path):
    part = tmp_path / "part.h5"
    rec = _recorder(part)
    _record(rec, range(0, 21))
    rec.checkpoint()
    rec.abort()
    with pytest.raises(experiments.errors.DataError, match="does not read back up to step 20.*tokens"):
        _recorder(part, resume_at=20, tokens=np.arange(1, _N + 1))
    with pytest.raises(experiments.errors.DataError, match="does not read back up to step 20.*key"):
        _recorder(part, resume_at=20, key="fedcba9876543210")
    rec = _recorder(part, resume_at=20)  # its own run continues
    _record(rec, range(21, _T + 1))
    rec.finish()


_KILLED_AT = """
import json, os, signal, sys
import experiments
from experiments.rig import record
real = record.Recorder.write_step

def write_step(self, step, arrays):  # the process dies as it records step KILL_AT
    if step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, step, arrays)

record.Recorder.write_step = write_step
experiments.run(json.loads(sys.argv[1]), progress=False)
"""


def _killed_at(cfg, sub_env, store, step: int) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_AT, json.dumps(cfg)], capture_output=True,
                          env=sub_env(store, LAB_CHECKPOINT_EVERY="50", KILL_AT=str(step)), timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def _state(ckpt) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_a_resumed_run_killed_before_its_next_checkpoint_resumes_again_in_the_same_file(
        store, tiny, sub_env, sibling_store, monkeypatch):
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    whole, other = _reference_and_other_store(cfg, sibling_store)
    ckpt = other / f"{whole.path.name}.ckpt"

    _killed_at(cfg, sub_env, other, 70)  # 20 steps after the checkpoint at 50
    (first,) = other.glob("*.tmp-*")
    assert _state(ckpt)["step"] == 50 and _state(ckpt)["partial"] == str(first)
    inode = first.stat().st_ino

    _killed_at(cfg, sub_env, other, 90)  # resumed from 50, killed before its own checkpoint at 100
    (second,) = other.glob("*.tmp-*")  # the same file under the resuming process's name, no copy
    assert second != first and second.stat().st_ino == inode
    state = _state(ckpt)
    assert state["step"] == 50 and state["partial"] == str(second)  # the checkpoint follows the file

    # lab gc keeps a wanted run's interrupted recording and its checkpoint; an unwanted run's go together
    assert R.gc({whole.key}, dry_run=True, store=other) == []
    assert set(R.gc(set(), dry_run=True, store=other)) == {ckpt, second}

    resumed_from = _spy_resume(monkeypatch)
    monkeypatch.setenv("LAB_STORE", str(other))
    again = experiments.run(cfg, progress=False)
    assert resumed_from == [ckpt] and again.path.stat().st_ino == inode
    assert not ckpt.exists() and not list(other.glob("*.tmp-*"))
    _assert_same_recording(whole.path, again.path)


@pytest.mark.slow
def test_a_take_over_killed_before_its_rename_resumes_from_the_old_name(store, tiny, sub_env, sibling_store,
                                                                       monkeypatch):
    cfg = _cfg(tiny)
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    whole, other = _reference_and_other_store(cfg, sibling_store)
    ckpt = other / f"{whole.path.name}.ckpt"
    _killed_at(cfg, sub_env, other, 120)
    (partial,) = other.glob("*.tmp-*")
    inode = partial.stat().st_ino
    # the checkpoint already names the resuming process's file, the rename did not happen
    state = _state(ckpt)
    state["partial"], state["previous"] = str(other / f"{whole.path.name}.tmp-999999999"), str(partial)
    torch.save(state, ckpt)
    assert R.gc({whole.key}, dry_run=True, store=other) == []

    monkeypatch.setenv("LAB_STORE", str(other))
    again = experiments.run(cfg, progress=False)
    assert again.path.stat().st_ino == inode  # resumed in that file, not trained again
    assert not ckpt.exists() and not list(other.glob("*.tmp-*"))
    assert _datasets(whole.path)[1] == _datasets(again.path)[1]


def test_an_interrupted_recording_whose_rows_do_not_read_back_is_not_continued(tmp_path):
    part = tmp_path / "part.h5"
    rec = _recorder(part)
    _record(rec, range(0, 21))
    rec.checkpoint()
    rec.abort()
    with h5py.File(part, "r") as f:
        at = f["m"].id.get_chunk_info_by_coord((8, 0, 0)).byte_offset  # m of steps 8-15
    with open(part, "r+b") as fh:
        fh.seek(at + 100)
        byte = fh.read(1)
        fh.seek(at + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    rec = _recorder(part, resume_at=20)  # the rows are read back by the writer thread: the next write fails
    with pytest.raises(experiments.errors.DataError, match="part.h5: the interrupted recording does not read "
                                                           "back up to step 20"):
        _record(rec, range(21, _T + 1))
        rec.finish()
