"""Fan out: train runs as tasks on a Dask distributed cluster, each into the one run store all workers share.

`train(cfgs, cluster)` takes resolved configs (validated on the client: a bad config fails before anything
is submitted), skips the stored ones and submits one task per missing run. `cluster` is a scheduler address
(`tcp://host:8786`), `local` / `local:N` (a LocalCluster of N single-thread worker processes on this
machine, closed afterwards) or a `distributed.Client`.

Contracts:
- The store is one directory every worker reaches at the same path (a shared filesystem); the client leaves
  a probe file in it and every task checks it, so a worker that would train into a private directory
  fails with a one-line error instead. Runs are not streamed back.
- A run is trained at most once cluster-wide: the Dask task key is the run file's stem (`<name>-<key>`),
  so two clients of one scheduler share one task, and the task trains through `runs._obtain`, whose per-key
  file lock in the shared store holds across schedulers and machines.
- A task trains in the worker process (one at a time per process: torch's thread count is per process and
  part of the config) with the store's own machinery, so a killed worker leaves the temporary file and
  checkpoint `runs` resumes from; the scheduler gives the task to another worker (worker deaths:
  `distributed.scheduler.allowed-failures`, exceptions: `retries`). A final run name only ever appears
  through the atomic rename of a complete file.
- Progress: the task tails its own $LAB_PROGRESS heartbeats and relays them as Dask events (topic
  `lab-progress`); the client draws a bar per run and an overall bar, and appends heartbeat lines to its
  own $LAB_PROGRESS so a document waiting on a cluster sweep is not stopped for lack of progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from experiments.errors import ConfigError, DataError
from experiments.store import runs

TOPIC = "lab-progress"
RETRIES = 2  # a task that raised is tried this many more times (a dead worker: the scheduler's allowed-failures)
RELAY_EVERY = 0.5  # seconds between progress events from a training task
_PROBE = ".cluster-probe-"
_ONE_AT_A_TIME = threading.Lock()  # per worker process: torch threads and env are process-wide
_HISTORY: list[dict] = []  # what this worker process's tasks did: {"key", "trained", "seconds"}


def history() -> list[dict]:
    """The tasks this worker process ran (client.run(cluster.history) asks every worker): which runs it
    trained and which it found stored or waited for."""
    return list(_HISTORY)


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError("--cluster needs Dask distributed: pip install -e '.[cluster]' "
                          "(or pip install 'dask[distributed]')") from None
    return distributed


def parse(address: str) -> tuple[str, int | None]:
    """("local", N or None) or ("address", None); a malformed value is a one-line ConfigError."""
    text = str(address).strip()
    if text == "local":
        return "local", None
    if text.startswith("local:"):
        n = text.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--cluster {text}: expected local or local:N with N workers >= 1")
        return "local", int(n)
    if "://" in text or (":" in text and text.rsplit(":", 1)[1].isdigit()):
        return "address", None
    raise ConfigError(f"--cluster {text!r}: expected a scheduler address (tcp://host:8786), local or local:N")


@contextlib.contextmanager
def connect(cluster, threads: int = 1, wait: float = 60.0):
    """A Client for `cluster` (see the module doc); a LocalCluster started here is closed on exit."""
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    kind, n = parse(cluster)
    if kind == "local":
        n = n or max(1, (os.cpu_count() or 1) // max(1, threads))
        with start_local(n) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(cluster, timeout=f"{int(wait)}s")
    except (OSError, TimeoutError) as e:
        raise DataError(f"--cluster {cluster}: cannot reach the scheduler ({' '.join(str(e).split())[:200]})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=wait)
        except TimeoutError:
            raise DataError(f"--cluster {cluster}: no worker joined the scheduler within {wait:.0f} s") from None
        yield client


# Dask's nannies put these in the environment of the worker processes they start, and of the process that
# starts them (os.environ.update). MALLOC_TRIM_THRESHOLD_=65536 turns off glibc's dynamic mmap threshold:
# every tensor over 128 KiB is then mmapped and unmapped again, and training took 1.5x the CPU time
# (crucible-grid, 40 steps: 4.1 vs 2.7 s, measured). torch's threads come from each run's config, so the
# 1-thread caps are not needed either; None keeps a variable out (the environment stays the client's).
NANNY_ENV = {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None,
             "OPENBLAS_NUM_THREADS": None}


def start_local(workers: int, port: int = 0, host: str | None = None, dashboard: str | None = None):
    """A LocalCluster of `workers` single-thread worker processes (each trains one run at a time), started
    without Dask's allocator setting (NANNY_ENV); `train` sets torch's threads from the run config, and the
    training slots keep the cores from being oversubscribed."""
    distributed = _distributed()
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": NANNY_ENV}):  # read when each nanny starts
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        scheduler_port=port, host=host, dashboard_address=dashboard)


# ------------------------------------------------------------------------------------ the worker side


def _task(cfg: dict, key: str, store: str, token: str, env: dict) -> dict:
    """Train (or find) one run on a worker; returns {"key", "path", "trained", "host", "pid", "seconds"}."""
    import socket

    host, pid = socket.gethostname(), os.getpid()
    store_path = Path(store)
    if not (store_path / f"{_PROBE}{token}").exists():
        raise DataError(f"worker on {host}: the run store {store} is not the client's (no probe file there); "
                        "workers need the store on a shared filesystem at the same path (README: Many machines)")
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None  # called outside a worker (tests, debugging): no events
    with _ONE_AT_A_TIME, tempfile.TemporaryDirectory(prefix="lab-task-") as tmp:
        beats = Path(tmp) / "progress"
        saved = {k: os.environ.get(k) for k in (*env, "LAB_PROGRESS", "TQDM_DISABLE", "LAB_RUN_LOG", "LAB_SMOKE")}
        os.environ.update({**env, "LAB_PROGRESS": str(beats)})
        for k in ("TQDM_DISABLE", "LAB_RUN_LOG", "LAB_SMOKE"):  # the config is resolved: no profile here
            os.environ.pop(k, None)
        stop = threading.Event()
        relay = threading.Thread(target=_relay, args=(worker, beats, key, int(cfg["train"]["steps"]), stop),
                                 name=f"lab-relay-{key}", daemon=True)
        try:
            prepared = runs._prepare(cfg, store_path)
            mine, _ = runs.compute_key(cfg, prepared)
            if mine != key:
                raise DataError(f"worker on {host}: {cfg['name']} keys as {mine} here but {key} on the client; "
                                "the worker's training code, torch or numpy differ from the client's")
            final = store_path / f"{cfg['name']}-{key}.h5"
            existed = final.exists()
            resumed_from = None if existed else _checkpoint_step(final)  # a killed worker's last checkpoint
            relay.start()
            started = time.monotonic()
            # the bar counts steps for the heartbeat; it is drawn nowhere (the client draws the bars)
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                run, _ = runs._obtain(cfg, progress=True)
            seconds = time.monotonic() - started
        finally:
            stop.set()
            if relay.is_alive():
                relay.join(timeout=2)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    by = _trained_by(run.path)
    trained = not existed and by.get("host") == host and by.get("pid") == pid
    resumed_from = resumed_from if trained else None
    _HISTORY.append({"key": key, "trained": trained, "seconds": round(seconds, 3), "resumed_from": resumed_from})
    return {"key": key, "path": str(run.path), "trained": trained, "host": host, "pid": pid,
            "seconds": round(seconds, 3), "resumed_from": resumed_from,
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def _checkpoint_step(final: Path) -> int | None:
    """The step of the checkpoint an interrupted training of `final` left (None: none, or unreadable)."""
    ckpt = runs._ckpt(final)
    if not ckpt.exists():
        return None
    try:
        import torch

        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])
    except Exception:  # torn or foreign: `runs` decides what to do with it, this is only a report
        return None


def _trained_by(path: Path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs.get("trained_on", "{}"))
    except (OSError, ValueError):
        return {}


def _relay(worker, beats: Path, key: str, steps: int, stop: threading.Event) -> None:
    """Forward this task's heartbeats to the client as events {"key", "state", "step", "steps", "host", "pid"}."""
    import socket

    host, pid = socket.gethostname(), os.getpid()
    tail = {"progress": beats, "offset": 0}
    state, step, sent = "preparing", None, None
    while True:
        new_step, new_state = runs._last_progress(tail)  # (None, None) when nothing new was appended
        state = new_state or state
        step = new_step if new_step is not None else step
        if worker is not None and (state, step) != sent:
            msg = {"key": key, "state": state, "step": step, "steps": steps, "host": host, "pid": pid}
            with contextlib.suppress(Exception):  # observation only: never disturb the training
                worker.log_event(TOPIC, msg)
            sent = (state, step)
        if stop.wait(RELAY_EVERY):
            return


def _empty(submitted: float) -> tuple[float, float]:
    """An empty task for the overhead benchmark: (submitted, started) wall clock times."""
    return submitted, time.time()


# ------------------------------------------------------------------------------------ the client side


def keyed(cfgs: list[dict]) -> list[tuple[dict, str, Path]]:
    """(cfg, key, final path) per resolved config, computed on the client (preparing data if needed)."""
    store = runs.store_dir()
    store.mkdir(parents=True, exist_ok=True)
    out = []
    for cfg in cfgs:
        if cfg.get("sweep"):
            raise ConfigError(f"{cfg['name']}: a sweep, not one run; expand it with sweep_members first")
        key, _ = runs.compute_key(cfg, runs._prepare(cfg, store))
        out.append((cfg, key, store / f"{cfg['name']}-{key}.h5"))
    return out


def train(cfgs: list[dict], cluster, out=None, progress: bool = True, retries: int = RETRIES,
          raise_failed: bool = True) -> list[dict]:
    """Train the runs of `cfgs` (resolved configs) the store lacks on `cluster`; one result per cfg, in order:
    {"key", "path", "trained", "host", "pid", "seconds"} or, for a failed run, {"key", "error"} (raised as
    DataError unless raise_failed=False)."""
    out = out or sys.stderr
    items = keyed(cfgs)  # bad configs and data fail here, before anything is submitted
    results: dict[str, dict] = {}
    todo: dict[str, tuple[dict, Path]] = {}
    for cfg, key, final in items:
        if final.exists():
            results[key] = {"key": key, "path": str(final), "trained": False, "host": "", "pid": None,
                            "seconds": 0.0}
        else:
            todo.setdefault(key, (cfg, final))
    if todo:
        threads = max(int(cfg["train"].get("threads") or 1) for cfg, _ in todo.values())
        with connect(cluster, threads=threads) as client:
            results.update(_submit_and_watch(client, todo, out, progress, retries))
    failed = [r for r in results.values() if "error" in r]
    if failed and raise_failed:
        raise DataError(f"{len(failed)} of {len(todo)} runs failed on the cluster: "
                        + "; ".join(f"{todo[r['key']][0]['name']} {r['key'][:8]}: {r['error']}" for r in failed))
    return [results[key] for _, key, _ in items]


def _submit_and_watch(client, todo: dict, out, progress: bool, retries: int) -> dict[str, dict]:
    from tqdm import tqdm

    store = runs.store_dir()
    token = uuid.uuid4().hex
    probe = store / f"{_PROBE}{token}"
    probe.write_text(token)
    env = {"LAB_STORE": str(store)}
    if "LAB_CHECKPOINT_EVERY" in os.environ:
        env["LAB_CHECKPOINT_EVERY"] = os.environ["LAB_CHECKPOINT_EVERY"]
    events: queue.Queue = queue.Queue()
    client.subscribe_topic(TOPIC, lambda event: events.put(event[1]))
    quiet = not progress or runs._quiet()
    show = not quiet and _isatty(out)  # bars on a terminal; in a log, one line per finished run
    total_steps = sum(int(cfg["train"]["steps"]) for cfg, _ in todo.values())
    overall = tqdm(total=total_steps, desc=f"training {len(todo)} runs on {_where(client)}", unit="step",
                   position=0, disable=not show, file=out)
    bars: dict[str, tqdm] = {}
    lines: dict[str, int] = {}  # key -> the terminal line of its bar (0 is the overall bar)
    warned = False
    done_steps: dict[str, int] = {}
    results: dict[str, dict] = {}
    futures = {}
    try:
        for key, (cfg, final) in todo.items():
            futures[key] = client.submit(_task, cfg, key, str(store), token, env, key=final.stem,
                                         retries=retries, pure=False)
        print(f"submitted {len(futures)} runs ({total_steps:,} steps) to {_where(client)}", file=out, flush=True)
        last_beat = 0.0
        while len(results) < len(futures):
            with contextlib.suppress(queue.Empty):
                while True:
                    msg = events.get(timeout=0.2)
                    key = msg.get("key") if isinstance(msg, dict) else None
                    if key not in futures or key in results:
                        continue  # another client's run, or one already finished
                    cfg = todo[key][0]
                    if key not in bars:
                        used = {lines[k] for k in bars if k not in results}  # a finished run frees its line
                        lines[key] = next(i for i in range(1, len(bars) + 2) if i not in used)
                        bars[key] = tqdm(total=int(cfg["train"]["steps"]), unit="step", leave=False,
                                         position=lines[key], disable=not show, file=out)
                        done_steps[key] = 0
                    bars[key].set_description_str(f"  {cfg['name']} {key[:8]} on {msg.get('host')}"
                                                  + (" (waiting)" if msg.get("state") == "waiting" else ""))
                    step = msg.get("step")
                    if isinstance(step, int) and step != done_steps[key]:
                        # a retried run restarts from its checkpoint (or 0): bars follow the newest worker
                        bars[key].update(step - done_steps[key])
                        overall.update(step - done_steps[key])
                        done_steps[key] = step
            for key, fut in futures.items():
                if key in results or not fut.done():
                    continue
                steps = int(todo[key][0]["train"]["steps"])
                try:
                    results[key] = fut.result()
                except Exception as e:  # the task's own error, or KilledWorker after repeated worker deaths
                    results[key] = {"key": key, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
                    overall.total -= steps - done_steps.get(key, 0)  # its steps will not come
                else:
                    overall.update(steps - done_steps.get(key, 0))
                done_steps[key] = steps
                trim = results[key].get("malloc_trim")
                if trim and not warned:
                    warned = True
                    print(f"note: worker on {results[key]['host']} runs with MALLOC_TRIM_THRESHOLD_={trim} (Dask's "
                          "nanny default), which makes training about 1.5x slower; start workers with "
                          "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\" "
                          "(README: Many machines)", file=out, flush=True)
                if not quiet:
                    r, name = results[key], todo[key][0]["name"]
                    line = (f"{name} {key[:8]}: failed: {r['error']}" if "error" in r else
                            f"{name} {key[:8]}: {'trained' if r['trained'] else 'found'} on {r['host']} "
                            f"in {r['seconds']:.1f} s"
                            + (f", resumed from step {r['resumed_from']}" if r.get("resumed_from") else "")
                            + f" ({len(results)} of {len(futures)} done)")
                    if show:
                        tqdm.write(line, file=out)
                    else:
                        print(line, file=out, flush=True)
                if key in bars:
                    bars[key].close()
            if time.monotonic() - last_beat >= runs.HEARTBEAT:
                _beat(todo, results, done_steps)
                last_beat = time.monotonic()
    except BaseException:
        # Ctrl-C: nothing more starts; a task already training finishes on its worker (a LocalCluster is
        # closed by `connect`, which kills its workers: their runs resume from the last checkpoint next time)
        client.cancel(list(futures.values()))
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(TOPIC)
        for bar in bars.values():
            bar.close()
        overall.close()
        probe.unlink(missing_ok=True)
    return results


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _where(client) -> str:
    try:
        workers = client.scheduler_info().get("workers", {})
        return f"{client.scheduler.address} ({len(workers)} workers)"
    except Exception:
        return "the cluster"


def _beat(todo: dict, results: dict, done_steps: dict) -> None:
    """Heartbeats of the runs still training, in $LAB_PROGRESS (a document's watchdog counts them)."""
    path = os.environ.get("LAB_PROGRESS")
    if not path:
        return
    now = time.time()
    lines = [json.dumps({"t": round(now, 3), "run": cfg["name"], "key": key, "state": "training",
                         "step": done_steps.get(key), "steps": int(cfg["train"]["steps"]), "elapsed": None})
             for key, (cfg, _) in todo.items() if key not in results]
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def overhead(cluster, n: int = 50) -> dict:
    """The engine's overhead per task: an empty task submitted and awaited `n` times, one after another.
    Returns median seconds submit -> start and submit -> result on the client."""
    import statistics

    with connect(cluster) as client:
        client.submit(_empty, time.time(), pure=False).result()  # warm up (first task imports, connects)
        start, total = [], []
        for _ in range(n):
            t0 = time.time()
            submitted, started = client.submit(_empty, t0, pure=False).result()
            total.append(time.time() - t0)
            start.append(started - submitted)
    return {"tasks": n, "submit_to_start_s": statistics.median(start), "round_trip_s": statistics.median(total)}
