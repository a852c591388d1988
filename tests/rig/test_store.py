"""The run store: train once per key, atomic files, locks, keys that follow the code, gc, run log."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import pytest

import experiments
from experiments.errors import ConfigError, DataError
from experiments.rig import train as T
from experiments.rig.record import FORMAT_VERSION, Recorder
from experiments.store import runs as R


def test_second_call_trains_nothing_and_run_log_lists_runs(store, tiny, monkeypatch, tmp_path):
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("LAB_RUN_LOG", str(log))
    first = experiments.run(tiny(), progress=False)
    assert first.path == store / f"tiny-{first.key}.h5" and len(first.key) == 16
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("trained again"))
    again = experiments.run(tiny(), progress=False)
    assert again.path == first.path
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [{k: x[k] for k in ("name", "key", "path")} for x in lines] == \
        [{"name": "tiny", "key": first.key, "path": str(first.path)}] * 2
    assert lines[0]["train_seconds"] > 0 and lines[1]["train_seconds"] == 0  # the second call trained nothing
    assert lines[0]["request"] == lines[1]["request"] and "config" in lines[0]["request"]
    with h5py.File(first.path, "r") as f:
        a = f.attrs
        assert (a["schema"], a["complete"], a["steps_total"], a["steps_recorded"]) == (FORMAT_VERSION, 1, 12, 13)
        parts = json.loads(a["key_parts"])
        assert set(parts["sources"]) == set(R.TRAINING_MODULES) and parts["corpus_sha256"]
        assert json.loads(a["config"])["train"]["steps"] == 12 and a["created"].endswith("Z")
        assert "optimizer_impl" in json.loads(a["versions"])
    assert [p.name for p in store.iterdir() if p.suffix == ".h5"] == [first.path.name]


def test_key_follows_training_code_only(store, tiny, tmp_path):
    cfg = R.resolve(tiny())
    prepared = R._prepare(cfg, store)
    copy = tmp_path / "pkg"
    shutil.copytree(R.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    key, _ = R.compute_key(cfg, prepared, R.module_sources(copy))
    assert key == R.compute_key(cfg, prepared)[0]
    (copy / "plots.py").write_text((copy / "plots.py").read_text() + "\n# unrelated edit\n")
    (copy / "physics" / "verify.py").write_text((copy / "physics" / "verify.py").read_text() + "\n# unrelated edit\n")
    assert R.compute_key(cfg, prepared, R.module_sources(copy))[0] == key
    (copy / "rig" / "model.py").write_text((copy / "rig" / "model.py").read_text() + "\n# a comment changes no bits\n")
    assert R.compute_key(cfg, prepared, R.module_sources(copy))[0] == key
    (copy / "rig" / "model.py").write_text((copy / "rig" / "model.py").read_text() + "\nSCALE = 2  # code does\n")
    assert R.compute_key(cfg, prepared, R.module_sources(copy))[0] != key
    # the config is in the key, its free-text description is not
    assert R.compute_key(R.resolve(tiny(optim={"lr": 2e-3})), prepared)[0] != key
    assert R.compute_key(R.resolve(tiny(description="words")), prepared)[0] == key


def test_smoke_runs_never_share_a_key_with_real_runs(store, tiny, monkeypatch):
    prepared = R._prepare(R.resolve(tiny()), store)
    real = R.compute_key(R.resolve(tiny()), prepared)[0]
    monkeypatch.setenv("LAB_SMOKE", "1")
    assert R.compute_key(R.resolve(tiny()), prepared)[0] != real


_TRAIN_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import experiments, experiments.rig.train as T
    real = T.train
    def counting(*a, **k):
        with open(os.environ["TRAIN_COUNT"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        return real(*a, **k)
    T.train = counting
    r = experiments.run(json.loads(sys.argv[1]), progress=False)
    print(r.key)
""")


def test_two_processes_train_once(store, tiny, tmp_path, sub_env):
    count = tmp_path / "count"
    env = sub_env(store, TRAIN_COUNT=str(count))
    cfg = json.dumps(tiny(train={"steps": 800}))  # long enough that the two trainings would overlap
    procs = [subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, cfg], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0].split()[-1] == outs[1][0].split()[-1]
    assert len(count.read_text().split()) == 1


def test_sigkill_leaves_nothing_complete_and_next_call_trains(store, tiny, tmp_path, sub_env):
    count = tmp_path / "count"
    cfg = tiny(train={"steps": 1500}, record={"tensors": ["W", "m", "v", "grad"]})
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, json.dumps(cfg)],
                            env=sub_env(store, TRAIN_COUNT=str(count)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(store.glob("*.h5.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the training loop, well before its end
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    leftovers = list(store.glob("*.h5.tmp-*"))
    assert leftovers, "the kill should have hit a run in progress"
    assert not list(store.glob("*.h5")) and R.list_runs(store) == []
    with pytest.raises(DataError, match="no complete run"):
        R.find("tiny")
    # its process is gone: a stale temp file, and the checkpoint naming it if one was written (no run is kept)
    assert set(R.gc(set(), dry_run=True)) == set(leftovers) | set(store.glob("*.h5.ckpt"))
    r = experiments.run(cfg, progress=False)  # the same config trains now, and cleans up the leftover
    assert r.steps_total == 1500 and len(count.read_text().split()) == 1
    assert not list(store.glob("*.h5.tmp-*")) and [x["status"] for x in R.list_runs(store)] == ["complete"]


def test_write_error_raises_data_error_and_leaves_nothing(store, tiny, monkeypatch):
    real = Recorder.write_step

    def failing(self, step, arrays):
        if step == 3:
            raise_enospc = OSError(errno.ENOSPC, "No space left on device")
            self._write(f"W[step {step}]", lambda: (_ for _ in ()).throw(raise_enospc))
        return real(self, step, arrays)

    monkeypatch.setattr(Recorder, "write_step", failing)
    with pytest.raises(DataError, match=r"tiny-[0-9a-f]{16}\.h5\.tmp-\d+: writing W\[step 3\] failed.*No space"):
        experiments.run(tiny(), progress=False)
    assert [p.name for p in store.iterdir() if p.name != "data" and not p.name.endswith(".lock")] == []


def test_find_list_and_gc(store, tiny):
    a = experiments.run(tiny(), progress=False)
    b = experiments.run(tiny(name="other"), progress=False)
    rows = {r["key"]: r for r in R.list_runs()}
    assert set(rows) == {a.key, b.key} and rows[a.key]["status"] == "complete" and rows[a.key]["steps"] == 12
    assert R.find("other").key == b.key and R.find(a.key).path == a.path and R.find(a.key[:6]).key == a.key
    assert R.find(a.path.name).key == a.key
    stale = store / f"{a.path.name}.tmp-999999999"
    stale.write_bytes(b"half")
    assert set(R.gc({a.key}, dry_run=True)) == {b.path, stale} and b.path.exists()
    assert set(R.gc({a.key})) == {b.path, stale}
    assert a.path.exists() and not b.path.exists() and not stale.exists()


def test_sweep_trains_members_in_parallel_processes(store, tiny, monkeypatch, tmp_path):
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("LAB_RUN_LOG", str(log))
    cfg = tiny(name="sw", train={"steps": 5}, sweep={"train.init_seed": [1, 2, 3]})
    with pytest.raises(ConfigError, match="sweep: sw is a sweep over train.init_seed"):
        experiments.run(cfg, progress=False)
    runs = experiments.sweep(cfg, jobs=2, progress=False)
    assert [r.config["train"]["init_seed"] for r in runs] == [1, 2, 3] and len({r.key for r in runs}) == 3
    assert len(log.read_text().splitlines()) == 3
    # members are ordinary runs: asking for one by fixing the swept key finds it without training
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("trained again"))
    assert experiments.run(cfg, progress=False, **{"train.init_seed": 2}).key == runs[1].key
    assert [r.key for r in experiments.sweep(cfg, progress=False)] == [r.key for r in runs]
    assert os.environ["LAB_STORE"] == str(store)


def test_training_waits_for_a_free_compute_slot(store, tiny, monkeypatch):
    """2 cores / 2 threads = one training at a time: a second waits instead of oversubscribing the cores."""
    import threading
    import time

    from filelock import FileLock

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cfg = tiny(name="slot", train={"steps": 3, "threads": 2})
    busy = FileLock(str(R._slot_lock(store, 0)))  # this host's first slot
    busy.acquire()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("run", experiments.run(cfg, progress=False)))
    worker.start()
    time.sleep(1.5)
    assert "run" not in result and not list(store.glob("slot-*"))  # waiting: not even a temporary file
    busy.release()
    worker.join(60)
    assert result["run"].steps_total == 3
