"""Runs trained as tasks on a real Dask LocalCluster (two single-thread worker processes) into one store:
the same bits as one process, each run trained once however many clients ask, and a worker SIGKILLed
mid-run costs only the steps since the last checkpoint."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import pytest
from distributed import Client

import experiments
from experiments.rig.config import sweep_members
from experiments.store import cluster
from experiments.store import runs as R

from .test_integrity import LAB, TINY_SET

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dask_cluster():
    with cluster.start_local(2) as local:  # what `--cluster local:2` starts
        yield local


@pytest.fixture
def client(dask_cluster):
    with Client(dask_cluster) as c:
        yield c


def _datasets(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


def _same_bits(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        x, y = da[name], db[name]  # bit for bit (NaN included: h_mean of unseen rows is NaN)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), (a.name, name)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs["content_sha256"] == fb.attrs["content_sha256"]


class _Watch:
    """Polls the store while a test runs: a file under a final run name must always read as complete, and
    (with remember=True) must keep the inode it first had (a second training would replace it)."""

    def __init__(self, store: Path):
        self.store, self.bad, self.seen = store, [], {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.05):
            for path in self.store.glob("*.h5"):
                if not R._RUN_FILE.match(path.name):
                    continue
                try:
                    ino = path.stat().st_ino
                    with h5py.File(path, "r") as f:
                        complete = int(f.attrs.get("complete", 0)) == 1
                except (OSError, KeyError):
                    complete = path.exists() is False  # vanished between glob and open: not a finding
                    ino = self.seen.get(path.name)
                if not complete:
                    self.bad.append(f"{path.name} incomplete under a final name")
                if ino is not None:
                    self.seen.setdefault(path.name, ino)
                    if self.seen[path.name] != ino:
                        self.bad.append(f"{path.name} replaced (trained twice)")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def _sweep_cfg(tiny, **train) -> dict:
    cfg = tiny(name="fan", train=train)
    cfg["sweep"] = {"train.init_seed": [1, 2], "train.threads": [1, 2]}  # both thread counts on the workers
    return cfg


def test_a_sweep_on_two_workers_records_the_bits_of_one_process(store, tiny, tmp_path, sibling_store, client,
                                                                 monkeypatch):
    cfg = _sweep_cfg(tiny)
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("LAB_RUN_LOG", str(log))
    before = {w: len(h) for w, h in client.run(cluster.history).items()}
    fanned = experiments.sweep(cfg, executor=client)
    assert len(fanned) == 4 and len({r.key for r in fanned}) == 4
    assert sorted(p.name for p in store.glob("*.h5")) == sorted(r.path.name for r in fanned)
    done = [h for w, hist in client.run(cluster.history).items() for h in hist[before.get(w, 0):]]
    assert sorted(h["key"] for h in done if h["trained"]) == sorted(r.key for r in fanned)
    assert sum(len(h) > before.get(w, 0) for w, h in client.run(cluster.history).items()) == 2  # both worked
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["key"] for x in lines] == [r.key for r in fanned] and all("sweep" in x for x in lines)
    for r in fanned:
        on = json.loads(h5py.File(r.path, "r").attrs["trained_on"])
        assert on["host"] and on["cpu"] and on["torch"] and on["pid"] != os.getpid()

    # the same members trained by this process, one after another, into a store of its own
    monkeypatch.setenv("LAB_STORE", str(sibling_store("one-process")))
    for member, r in zip(sweep_members(R.resolve(cfg)), fanned, strict=True):
        local = experiments.run(member, progress=False)
        assert local.key == r.key
        _same_bits(local.path, r.path)
    assert sorted(R.list_runs(store), key=lambda x: x["key"])[0]["host"]  # `lab runs` shows the machine


def test_two_clients_at_once_train_each_run_once(store, sub_env, client, dask_cluster):
    """Two `lab train crucible-grid --cluster ADDRESS` (its 4 members, tiny) started together: every run is
    trained by exactly one task, and no run file is ever replaced or visible incomplete."""
    before = {w: len(h) for w, h in client.run(cluster.history).items()}
    args = [str(LAB), "train", "crucible-grid", *[a for s in TINY_SET for a in ("--set", s)],
            "--cluster", dask_cluster.scheduler_address]
    watch = _Watch(store)
    try:
        procs = [subprocess.Popen(args, env=sub_env(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        watch.close()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    listed = [sorted(line.split()[1] for line in out.splitlines()) for out, _ in outs]
    assert listed[0] == listed[1] and len(listed[0]) == 4
    assert sorted(p.name.split("-")[-1][:-3] for p in store.glob("*.h5")) == listed[0]
    done = [h for w, hist in client.run(cluster.history).items() for h in hist[before.get(w, 0):]]
    trained = sorted(h["key"] for h in done if h["trained"])
    assert trained == listed[0], done  # each run trained once, cluster-wide
    assert not watch.bad, watch.bad


def test_a_worker_killed_mid_run_is_retried_and_resumes_from_its_checkpoint(store, tiny, sibling_store, client,
                                                                          monkeypatch):
    monkeypatch.setenv("LAB_CHECKPOINT_EVERY", "50")
    cfg = R.resolve(tiny(name="killed", train={"steps": 600}))
    key = cluster.keyed([cfg])[0][1]
    ckpt = R._ckpt(store / f"killed-{key}.h5")
    events: queue.Queue = queue.Queue()
    with Client(client.scheduler.address) as watcher:  # a second client listens to the progress events
        watcher.subscribe_topic(cluster.TOPIC, lambda e: events.put(e[1]))
        result, watch = {}, _Watch(store)
        trainer = threading.Thread(target=lambda: result.update(cluster.train([cfg], client)[0]), daemon=True)
        trainer.start()
        trainer_pid, victim, after = None, None, []
        deadline = time.monotonic() + 240
        while trainer.is_alive() and time.monotonic() < deadline:
            # kill the worker the moment its first checkpoint (step 50) exists: the heartbeat is once a
            # second, and a fast CPU trains these tiny steps faster than that
            if victim is None and trainer_pid is not None and ckpt.exists():
                victim = trainer_pid
                os.kill(victim, signal.SIGKILL)
            try:
                msg = events.get(timeout=0.005)
            except queue.Empty:
                continue
            if msg["key"] != key:
                continue
            if trainer_pid is None:
                trainer_pid = msg["pid"]
            elif victim is not None and msg["pid"] != victim and isinstance(msg["step"], int):
                after.append(msg["step"])
        trainer.join(60)
        watch.close()
    assert victim is not None, "the run finished before it could be killed"
    assert result["trained"] and result["pid"] != victim
    assert result["malloc_trim"] is None  # not Dask's allocator setting, which slows training 1.5x
    # the retry started from the last checkpoint before the kill, not from step 0
    assert result["resumed_from"] is not None and result["resumed_from"] >= 50 and result["resumed_from"] % 50 == 0
    assert all(step >= result["resumed_from"] for step in after), after
    assert not watch.bad, watch.bad
    assert not list(store.glob("*.tmp-*")) and not list(store.glob("*.ckpt"))
    run = experiments.run(cfg, progress=False)  # stored: served, not trained again

    monkeypatch.setenv("LAB_STORE", str(sibling_store("one-process")))
    whole = experiments.run(cfg, progress=False)
    _same_bits(whole.path, run.path)


def test_a_bad_config_fails_on_the_client_before_anything_is_submitted(store, sub_env):
    started = time.monotonic()
    out = subprocess.run([str(LAB), "train", "crucible-grid", "--set", "optim.lr=nan", "--cluster", "local:2"],
                         env=sub_env(store), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "optim.lr: nan is not a finite number" in out.stderr
    assert "submitted" not in out.stdout + out.stderr and time.monotonic() - started < 60
    bad = subprocess.run([str(LAB), "train", "crucible-grid", "--cluster", "local:zero"],
                         env=sub_env(store), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("lab train: error: --cluster local:zero")


def test_render_refuses_a_malformed_cluster_address_before_it_starts(store, sub_env, tmp_path):
    """Even when every run is stored (so the cluster would never be asked), `lab render --cluster` with a
    malformed address says so and exits 2, and builds nothing."""
    (tmp_path / "_quarto.yml").write_text("project:\n  type: website\nwebsite:\n  title: Test\n")
    (tmp_path / "index.qmd").write_text("---\ntitle: Home\n---\n\nHello.\n")  # builds without --cluster
    out = subprocess.run([str(LAB), "render", "--root", str(tmp_path), "--cluster", "local:zero"],
                         env=sub_env(store), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("lab render: error: --cluster local:zero")
    assert "Traceback" not in out.stderr and not (tmp_path / "site").exists()


def test_slots_are_per_host(store, monkeypatch):
    """A store shared by many machines must not pool their cores: each host has its own training slots."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "node-a")
    a = R._slot_lock(store, 0)
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    assert a != R._slot_lock(store, 0) and "node-a" in a.name


def test_planned_training_goes_to_the_cluster(store, tiny, client):
    """What `lab render --cluster` does with the plan: the missing runs (a sweep expanded) as cluster tasks."""
    one = tiny(name="planned")
    requests = [{"config": one}, {"sweep": _sweep_cfg(tiny, steps=3)}, {"config": one}]
    before = {w: len(h) for w, h in client.run(cluster.history).items()}
    summary = R.train_planned(requests, cluster=client, out=open(os.devnull, "w"))
    assert summary["planned"] == 5 and summary["trained"] == 5 and not summary["failed"]
    done = [h for w, hist in client.run(cluster.history).items() for h in hist[before.get(w, 0):]]
    assert len(done) == 5 and all(h["trained"] for h in done)
    again = R.train_planned(requests, cluster="tcp://127.0.0.1:1", out=open(os.devnull, "w"))
    assert again["stored"] == 5 and again["trained"] == 0  # all stored: no cluster is even contacted


def test_render_passes_cluster_through_to_the_planned_training(monkeypatch, tmp_path):
    import publish.render
    from lab.cli import build_parser

    (tmp_path / "_quarto.yml").write_text("project:\n  type: website\n")
    seen = {}
    monkeypatch.setattr(publish.render, "render", lambda root, paths, **kw: seen.update(kw) or 0)
    args = build_parser().parse_args(["render", "--root", str(tmp_path), "--cluster", "tcp://h:8786"])
    assert args.func(args) == 0
    calls = []
    monkeypatch.setattr(R, "train_planned", lambda requests, jobs=1, out=None, cluster=None: calls.append(cluster))
    seen["train_runs"]([{"name": "flannel-1"}], 1)
    assert calls == ["tcp://h:8786"]


def test_a_worker_refuses_a_store_it_does_not_share_or_a_key_it_does_not_compute(store, tiny, tmp_path):
    """What a task checks before training: the client's probe file is in the store it was sent (a worker
    without the shared filesystem would see an empty directory), and its own key matches the client's."""
    from experiments.errors import DataError

    cfg = R.resolve(tiny(name="refused"))
    key = cluster.keyed([cfg])[0][1]
    token = "0" * 32
    elsewhere = tmp_path / "not-shared"
    elsewhere.mkdir()
    with pytest.raises(DataError, match="is not the client's .*shared filesystem"):
        cluster._task(cfg, key, str(elsewhere), token, {"LAB_STORE": str(elsewhere)})
    (store / f"{cluster._PROBE}{token}").write_text(token)
    with pytest.raises(DataError, match=f"keys as {key} here but {'f' * 16} on the client"):
        cluster._task(cfg, "f" * 16, str(store), token, {"LAB_STORE": str(store)})
    assert not list(store.glob("refused-*")) and os.environ["LAB_STORE"] == str(store)  # nothing trained
    done = cluster._task(cfg, key, str(store), token, {"LAB_STORE": str(store)})  # no worker: still trains
    assert done["trained"] and Path(done["path"]).exists()
