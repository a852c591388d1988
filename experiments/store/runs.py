"""The run store: content-addressed recordings, trained at most once per key.

key = sha256(resolved config without its description, the fingerprint of each training-path module
(TRAINING_MODULES: its syntax tree without docstrings, see `fingerprint`), corpus and tokenizer hashes,
torch and numpy versions, the recording format)[:16].
The parts are stored in the file (`key_parts`) so the site can say why a run exists.

One complete run is `<store>/<name>-<key>.h5` (store = $LAB_STORE or <repo root>/store). Training writes
`<name>-<key>.h5.tmp-<pid>` under a per-key file lock, marks it complete, fsyncs and renames it atomically,
so a killed or failed run never leaves a file that reads as complete. Every run returned by `run` / `sweep`
is appended to $LAB_RUN_LOG when that variable is set: one JSON line {"name", "key", "path", "request",
"train_seconds"}, where `request` ({"name" or "config", "overrides"}) is the call that would fetch the run
again and `train_seconds` the wall time this call spent training it (or waiting for another process that
was). While a run trains (or waits for its training), a heartbeat line is appended to $LAB_PROGRESS every
HEARTBEAT seconds, so a watcher can tell a long training from a hung one (see ARCHITECTURE.md).
`train_planned` trains a list of such requests ahead of the documents that need them (`lab render`).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from experiments import paths
from experiments.errors import ConfigError, DamagedRunError, DataError, ResumeError
from experiments.rig.config import canonical_json, load_config, resolve_device, sweep_members
from experiments.rig.record import DIGEST_ATTR, FORMAT_VERSION
from experiments.store import fingerprint
from experiments.store.recording import REPAIR, Run, check, open_reason

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # experiments/
TRAINING_MODULES = ("rig.corpus", "rig.tokenizer", "rig.config", "rig.model", "rig.train", "rig.record", "errors")
_RUN_FILE = re.compile(r"^(?P<name>.+)-(?P<key>[0-9a-f]{16})\.h5$")
_TMP_FILE = re.compile(r"^(?P<stem>.+-[0-9a-f]{16})\.h5\.tmp-(?P<pid>\d+)$")
HEARTBEAT = 1.0  # seconds between $LAB_PROGRESS lines while a run trains


store_dir = paths.store_dir  # $LAB_STORE or <repo root>/store


def module_sources(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """Source text of each training-path module (the injectable part of the key)."""
    return {m: fingerprint.module_path(package_dir, m).read_text() for m in TRAINING_MODULES}


def compute_key(cfg: dict, prepared, sources: dict[str, str] | None = None) -> tuple[str, dict]:
    """(key, key_parts) for a resolved config (device fixed) and its prepared data."""
    import numpy
    import torch

    sources = module_sources() if sources is None else sources
    keyed = {k: v for k, v in cfg.items() if k != "description"}
    parts = {
        "config_sha256": hashlib.sha256(canonical_json(keyed).encode()).hexdigest(),
        # each module's syntax tree without docstrings: comment and docstring edits keep every key
        "sources": {m: fingerprint.digest(s) for m, s in sorted(sources.items())},
        "fingerprint": fingerprint.SCHEME,
        "corpus_sha256": prepared.corpus_sha256,
        "tokenizer_sha256": prepared.tokenizer_sha256,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "format": FORMAT_VERSION,
    }
    if cfg["precision"]["dtype"] != "bf16":
        # float32 optimizer state meets kernels whose bits depend on the machine's libraries (MKL's square
        # root differs between its code paths): the probed laws are part of what decides the recording
        from experiments.physics import laws
        parts["kernel_laws"] = laws.current(False, cfg["optim"]["impl"], cfg["train"]["device"])
    key = hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]
    return key, parts


def _prepare(cfg: dict, store: Path):
    from experiments.rig.tokenizer import prepare

    return prepare(cfg["corpus"], cfg["tokenizer"], store / "data")


def _request(name_or_config: str | dict, overrides: dict) -> dict:
    """The call that fetches a run again: what `lab render` plans from (JSON-able, valid under any profile)."""
    head = {"name": name_or_config} if isinstance(name_or_config, str) else {"config": name_or_config}
    return {**head, "overrides": dict(overrides)} if overrides else head


def _log(run: Run, request: dict | None = None, train_seconds: float = 0.0, sweep: dict | None = None) -> None:
    log = os.environ.get("LAB_RUN_LOG")
    if log:
        line = {"name": run.name, "key": run.key, "path": str(run.path), "train_seconds": round(train_seconds, 3)}
        if request is not None:
            line["request"] = request
        if sweep is not None:  # the sweep call this member came from: its members differ per profile
            line["sweep"] = sweep
        # one write of one line: parallel writers append whole lines (O_APPEND)
        with open(log, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")


def _live_step(name: str) -> tuple[int, int] | None:
    """(steps done, steps total) of this process's live tqdm bar for run `name`, if one is showing.

    Read-only: train() owns its bar; a disabled bar (TQDM_DISABLE, progress=False) counts nothing.
    """
    try:
        from tqdm import tqdm

        for bar in list(tqdm._instances):
            if getattr(bar, "desc", None) == name and not bar.disable:
                return int(bar.n), int(bar.total or 0)
    except Exception:  # observation only: never let it disturb a training
        pass
    return None


@contextlib.contextmanager
def _heartbeat(name: str, steps: int):
    """Append {"t", "run", "key", "state", "step", "steps", "elapsed"} to $LAB_PROGRESS every HEARTBEAT s.

    `state` is "preparing" (corpus and tokenizer, key still null), "waiting" (for the key lock or a training
    slot) or "training"; `step` is null when no bar counts the steps (inside a document, where bars are
    disabled). Yields a dict whose "state" and "key" the caller sets.
    """
    path = os.environ.get("LAB_PROGRESS")
    status = {"state": "preparing", "key": None}
    if not path:
        yield status
        return
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while True:
            live = _live_step(name) if status["state"] == "training" else None
            line = {"t": round(time.time(), 3), "run": name, "key": status["key"], "state": status["state"],
                    "step": live[0] if live else None, "steps": steps,
                    "elapsed": round(time.monotonic() - started, 3)}
            try:
                with open(path, "a") as f:
                    f.write(json.dumps(line) + "\n")
            except OSError:
                pass  # a watcher that went away is no reason to stop training
            if stop.wait(HEARTBEAT):
                return

    thread = threading.Thread(target=beat, name=f"lab-heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield status
    finally:
        stop.set()
        thread.join(timeout=2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve(name_or_config: str | dict, **overrides: Any) -> dict:
    """The resolved config `run` would train: preset + overrides, validated, smoke-shrunk, device fixed."""
    return resolve_device(load_config(name_or_config, **overrides))


def run(name_or_config: str | dict, progress: bool = True, **overrides: Any) -> Run:
    """The stored run for this config, training it first if missing (`run("flannel-1", **{"optim.lr": 3e-4})`)."""
    cfg = resolve(name_or_config, **overrides)
    if cfg["sweep"]:
        keys = ", ".join(cfg["sweep"])
        raise ConfigError(f"sweep: {cfg['name']} is a sweep over {keys}; call experiments.sweep({cfg['name']!r}) "
                          f"or fix the swept key(s), e.g. run({cfg['name']!r}, **{{{next(iter(cfg['sweep']))!r}: ...}})")
    result, seconds = _obtain(cfg, progress=progress)
    _log(result, _request(name_or_config, overrides), seconds)
    return result


def _quiet() -> bool:
    """TQDM_DISABLE=1 (tqdm's own switch, which the page executor sets) silences bars we request explicitly."""
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")


@contextlib.contextmanager
def _compute_slot(store: Path, threads: int):
    """Hold one of the store's training slots: cores // threads of them, so that parallel documents or sweep
    members never run more torch threads than the machine has cores (oversubscribed, two 2-thread trainings
    on 2 cores each ran about 10x slower than alone). Others wait their turn; the thread count itself is part
    of the config, since it decides the bits, so it is never changed here.
    """
    slots = max(1, (os.cpu_count() or 1) // max(1, int(threads)))
    locks = [FileLock(str(_slot_lock(store, i))) for i in range(slots)]
    while True:
        for lock in locks:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield
            finally:
                lock.release()
            return
        time.sleep(0.2)


# --- cluster (issue 13): slots are per machine, a store shared by many machines must not pool them ---
def _slot_lock(store: Path, i: int) -> Path:
    """Slot i of this machine: cores are counted per host, and a store on a shared filesystem is seen by
    every worker of a cluster, so the lock name carries the host (one machine's slots never throttle another)."""
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return store / f".train-slot-{host}-{i}.lock"


def trained_on() -> dict:
    """The machine a run is trained on (hostname, CPU model, torch build): a run file's `trained_on`
    attribute, written by `_train_into` on the machine that completes the run, so `lab runs` can show it
    and a replay that differs elsewhere can be traced to the machine."""
    import platform
    import socket

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "pid": os.getpid(),
            "torch": torch.__version__, "torch_git": getattr(torch.version, "git_version", None),
            "cuda": torch.version.cuda, "platform": platform.platform()}
# --- end cluster ---


def _obtain(cfg: dict, progress: bool = True) -> tuple[Run, float]:
    """(the run, seconds spent training it or waiting for another process that was; 0 if it was stored)."""
    progress = progress and not _quiet()
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # the heartbeat covers preparing the data too: on a fresh store that alone takes a while
    with _heartbeat(cfg["name"], int(cfg["train"]["steps"])) as beat:
        prepared = _prepare(cfg, store)
        key, parts = compute_key(cfg, prepared)
        final = store / f"{cfg['name']}-{key}.h5"
        if final.exists():
            return _serve(final), 0.0
        beat.update(state="waiting", key=key)
        with _key_lock(store, key, cfg["name"], progress):
            if final.exists():  # another process trained it while we waited
                return _serve(final), time.monotonic() - started
            if _rekey_equivalent(store, cfg["name"], key, progress):
                return _serve(final), time.monotonic() - started
            resume = _resumable(final)
            keep = _partial_of(resume) if resume else None
            for stale in store.glob(f"{final.name}.tmp-*"):  # we hold the lock: these are leftovers
                if str(stale) != keep:
                    stale.unlink(missing_ok=True)
            with _compute_slot(store, cfg["train"].get("threads") or 1):
                beat["state"] = "training"
                _train_into(cfg, prepared, key, parts, final, progress, resume=resume)
            _mark_verified(final)  # its digest was computed from the very bytes written
    return Run(final), time.monotonic() - started


# ------------------------------------------------------------------------------------ integrity

_VERIFIED = ".verified"  # <store>/.verified/<run file name>: "size mtime_ns" when its check last passed


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _mark_verified(path: Path) -> None:
    """Remember that `path`, as it is now, matches its checksums (so serving it again costs no re-read)."""
    d = path.parent / _VERIFIED
    try:
        d.mkdir(exist_ok=True)
        tmp = d / f".{path.name}.{os.getpid()}"
        tmp.write_text(_stamp(path))
        os.replace(tmp, d / path.name)
    except OSError:
        pass  # only a cache: the next serve checks the file again


def _serve(path: Path) -> Run:
    """The stored run at `path`, never a damaged one: a checksummed file changed since its last check (copied
    in, edited, touched) is read in full against its digest first. DamagedRunError says how to repair."""
    run = Run(path)
    if not run.checksummed:
        return run  # schema 1: nothing to check against ("no checksum" in `lab runs --check`)
    try:
        stamp = (path.parent / _VERIFIED / path.name).read_text()
    except OSError:
        stamp = None
    if stamp != _stamp(path):
        result = check(path)
        if result.status != "ok":
            raise DamagedRunError(f"{path}: the run file is damaged: {result.detail}; {REPAIR}")
        _mark_verified(path)
    return run


@contextlib.contextmanager
def _key_lock(store: Path, key: str, name: str, progress: bool):
    """The per-key training lock; its holder writes `<key>.lock.owner` (pid, host, since) next to it, so a
    second `lab train` of the same run says whom it is waiting for instead of waiting in silence."""
    import socket

    lock = FileLock(str(store / f"{key}.lock"))
    owner = store / f"{key}.lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            try:
                o = json.loads(owner.read_text())
                who = f"pid {o['pid']} on {o['host']}, training since {o['since']}"
            except (OSError, ValueError, KeyError, TypeError):
                who = "another process"
            print(f"{name} {key[:8]}: waiting for {who} to finish it (lock {lock.lock_file})",
                  file=sys.stderr, flush=True)
        lock.acquire()
    try:
        with contextlib.suppress(OSError):
            owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}))
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


CHECKPOINT_EVERY = 100  # default steps between training checkpoints ($LAB_CHECKPOINT_EVERY, 0 = none)


def _checkpoint_every() -> int:
    """Steps between checkpoints, rounded up to the loop's scalar flush; not in the key (it changes no bits)."""
    from experiments.rig.train import _FLUSH_EVERY

    raw = os.environ.get("LAB_CHECKPOINT_EVERY", str(CHECKPOINT_EVERY))
    try:
        every = int(raw)
    except ValueError:
        raise ConfigError(f"LAB_CHECKPOINT_EVERY: must be a whole number of steps (0 = no checkpoints), "
                          f"got {raw!r}") from None
    return 0 if every <= 0 else -(-every // _FLUSH_EVERY) * _FLUSH_EVERY


def _ckpt(final: Path) -> Path:
    return final.with_name(f"{final.name}.ckpt")


def _checkpoint_names(ckpt: Path) -> list[str]:
    """The recording names a checkpoint gives: its `partial`, then, while a resuming process takes the file over
    under its own temp name (`train._take_over`), the name it had (`previous`); [] if it does not load."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        return [str(n) for n in (state.get("partial"), state.get("previous")) if n]
    except Exception:  # a checkpoint torn by a kill (it is written atomically, but be safe): start over
        return []


def _partial_of(ckpt: Path) -> str | None:
    """The interrupted recording a checkpoint belongs to, if it exists (None if not, or if the checkpoint does
    not load)."""
    return next((n for n in _checkpoint_names(ckpt) if Path(n).exists()), None)


def _resumable(final: Path) -> Path | None:
    """The checkpoint of an interrupted training of `final`, if it and its recording are both there."""
    ckpt = _ckpt(final)
    if not ckpt.exists():
        return None
    if _partial_of(ckpt) is None:
        ckpt.unlink(missing_ok=True)
        return None
    return ckpt


def _discard(ckpt: Path, partial: str | None) -> None:
    ckpt.unlink(missing_ok=True)
    if partial:
        Path(partial).unlink(missing_ok=True)


def _train_into(cfg: dict, prepared, key: str, parts: dict, final: Path, progress: bool,
                resume: Path | None = None) -> None:
    """Train into a temp file and rename it to `final` once complete. Every `_checkpoint_every()` steps the
    state is saved to `<final>.ckpt`; an interrupted training (Ctrl-C, a kill, a crash) leaves its recording
    and checkpoint, and the next call resumes from there (`resume`) with a bit-identical result."""
    from experiments.rig import malloc
    from experiments.rig.train import train, versions

    malloc.keep_freed_memory()  # a step's large tensors are reused, not faulted in again (a third of the time)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    ckpt, every = _ckpt(final), _checkpoint_every()
    old = _partial_of(resume) if resume else None
    attrs = {
        "name": cfg["name"],
        "key": key,
        "key_parts": json.dumps(parts, sort_keys=True),
        "config": json.dumps(cfg, sort_keys=True),
        "versions": json.dumps(versions(cfg), sort_keys=True),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": " ".join(str(cfg.get("description", "")).split()),
        "tokenizer": prepared.tokenizer_json,
        "corpus_manifest": json.dumps(prepared.manifest, sort_keys=True, default=str),
        # the AdamW kernel laws of this machine, so a replay elsewhere uses this machine's arithmetic
        "kernel_laws": json.dumps(_kernel_laws(cfg), sort_keys=True),
        "trained_on": json.dumps(trained_on(), sort_keys=True),  # cluster (issue 13): not in the key
    }
    kwargs = {"checkpoint": ckpt if every else None, "every": every}
    try:
        try:
            train(cfg, prepared, tmp, attrs, progress=progress, resume=resume, **kwargs)
        except DataError as e:
            if resume is None or not isinstance(e, ResumeError):
                raise  # any other failure of a resumed run (disk full, a NaN loss) is that failure
            # the interrupted recording or its checkpoint does not read back: train from step 0 instead
            print(f"{cfg['name']} {key[:8]}: cannot resume ({e}); training from step 0", file=sys.stderr,
                  flush=True)
            tmp.unlink(missing_ok=True)
            _discard(ckpt, old)
            old = None
            train(cfg, prepared, tmp, attrs, progress=progress, **kwargs)
        os.replace(tmp, final)
        paths.fsync_dir(final.parent)
        _discard(ckpt, old)
    except BaseException as e:
        # killed, interrupted or crashed: keep the recording its checkpoint points at, so the next call resumes
        # from there (a deterministic failure comes back at the same step, from the checkpoint, not step 0)
        if _partial_of(ckpt) != str(tmp):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DataError(f"{tmp}: could not write the run: {e}") from e
        raise
    finally:
        malloc.release()  # a kernel that trained lives on: give the kept heap back


def _kernel_laws(cfg: dict) -> dict:
    from experiments.physics import laws
    prec = cfg["precision"]["dtype"]
    return laws.for_run(prec == "bf16", cfg["optim"]["impl"], cfg["train"]["device"])


def _sweep_member(cfg: dict) -> tuple[str, float]:
    # runs in a worker process: train (or find) one member, return its path and training seconds
    run, seconds = _obtain(cfg, progress=False)
    return str(run.path), seconds


def _member_requests(name_or_config: str | dict, cfg: dict, overrides: dict) -> list[dict]:
    """One request per sweep member, in sweep_members' order: the swept values become overrides
    (overriding a swept key fixes it, so each request names exactly one member)."""
    import itertools

    sweep = cfg.get("sweep") or {}
    if not sweep:
        return [_request(name_or_config, overrides)]
    keys = list(sweep)
    return [_request(name_or_config, {**overrides, **dict(zip(keys, combo, strict=True))})
            for combo in itertools.product(*(sweep[k] for k in keys))]


def sweep(name_or_config: str | dict, jobs: int = 1, progress: bool = True, executor=None,
          **overrides: Any) -> list[Run]:
    """All members of a sweep preset (training the missing ones, `jobs` processes in parallel, or as tasks
    on a Dask cluster: `executor` = a scheduler address, "local", "local:N" or a distributed.Client)."""
    cfg = resolve(name_or_config, **overrides)
    members = sweep_members(cfg)
    if executor is not None:  # --- cluster (issue 13) ---
        from experiments.store import cluster
        done = cluster.train(members, executor, progress=progress)
        obtained = [(Run(r["path"]), r["seconds"] if r["trained"] else 0.0) for r in done]
    elif jobs <= 1 or len(members) == 1:
        obtained = [_obtain(m, progress=progress) for m in members]
    else:
        import multiprocessing

        from tqdm import tqdm

        ctx = multiprocessing.get_context("spawn")  # torch state must not be forked
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_sweep_member, copy.deepcopy(m)) for m in members]
            done = [f.result() for f in tqdm(futures, desc=f"sweep {cfg['name']}", disable=not progress or _quiet())]
        obtained = [(Run(p), seconds) for p, seconds in done]
    requests = _member_requests(name_or_config, cfg, overrides)
    call = {"sweep": name_or_config, **({"overrides": dict(overrides)} if overrides else {})}
    for (r, seconds), request in zip(obtained, requests, strict=True):
        _log(r, request, seconds, sweep=call)
    return [r for r, _ in obtained]


# ------------------------------------------------------------------------------------ planned training


def _fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"


def _expand(request: dict) -> list[dict]:
    """A plan request as single-run requests: a sweep ({"sweep": preset, "overrides"}) becomes its members
    under the current profile (the smoke profile keeps fewer of them)."""
    if not isinstance(request, dict):
        raise ConfigError(f"not a run request: {request!r}")
    overrides = request.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides of {request!r} are not a mapping")
    if "sweep" not in request:
        return [request]
    if not isinstance(request["sweep"], (str, dict)):
        raise ConfigError(f"not a run request: {request!r}")
    cfg = resolve(request["sweep"], **overrides)
    return _member_requests(request["sweep"], cfg, overrides)


def _resolve_request(request: dict) -> tuple[dict, str, Path]:
    """(resolved config, key, final path) of a plan request; raises ConfigError / DataError if it no longer
    resolves (a preset renamed, an override dropped): such a plan entry is stale and simply skipped."""
    if not isinstance(request, dict) or not (isinstance(request.get("name"), str) or isinstance(request.get("config"), dict)):
        raise ConfigError(f"not a run request: {request!r}")
    overrides = request.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides of {request!r} are not a mapping")
    cfg = resolve(request.get("name") or request["config"], **overrides)
    if cfg["sweep"]:
        raise ConfigError(f"{cfg['name']} is a sweep; plan entries name single runs")
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    key, _ = compute_key(cfg, _prepare(cfg, store))
    return cfg, key, store / f"{cfg['name']}-{key}.h5"


def _plan_child() -> None:
    """Entry point of one training process started by train_planned: argv[1] is the request (JSON)."""
    request = json.loads(sys.argv[1])
    try:
        run(request.get("name") or request["config"], progress=True, **(request.get("overrides") or {}))
    except KeyboardInterrupt:
        sys.exit(130)  # the temporary file is already removed


def train_planned(requests: list[dict], jobs: int = 1, out=None, cluster=None) -> dict:
    """Train the runs of `requests` ({"name" or "config" or "sweep", "overrides"}) the store lacks, `jobs`
    at a time.

    Each run trains in its own process (`run`, so the key lock and the training slots hold as everywhere);
    its steps come back through $LAB_PROGRESS heartbeats and drive one bar per run plus an overall bar whose
    ETA is the remaining steps at the measured rate. Requests that no longer resolve are skipped with a note.
    A failed training is reported, not raised: the document that needs the run will try again and fail
    with its own error. Returns {"planned", "stored", "trained", "failed", "skipped", "seconds"}.
    `cluster` (an address, "local[:N]" or a distributed.Client) trains the missing runs as Dask tasks instead.
    """
    out = out or sys.stdout
    started = time.monotonic()
    try:
        rekeyed = rekey_runs(say=lambda old, new: print(f"plan: re-keying {old.name} -> {new.name} (its training "
                                                        "code changed without changing the recording)",
                                                        file=out, flush=True))
    except (OSError, ValueError) as e:
        rekeyed = []
        print(f"plan: warning: could not re-key stored runs: {e}", file=out, flush=True)
    if rekeyed:
        print(f"plan: re-keyed {len(rekeyed)} stored runs whose training code changed without changing their "
              "recordings (`lab runs --stale` explains keys)", file=out, flush=True)
    missing: dict[str, tuple[dict, dict]] = {}  # key -> (request, cfg)
    stored, skipped = set(), []
    singles = []
    for request in requests:
        try:
            singles.extend(_expand(request))
        except (ConfigError, DataError) as e:
            skipped.append(f"{request!r}: {e}")
    for request in singles:
        try:
            cfg, key, final = _resolve_request(request)
        except (ConfigError, DataError) as e:
            skipped.append(f"{request!r}: {e}")
            continue
        if final.exists():
            stored.add(key)
        else:
            missing.setdefault(key, (request, cfg))
    summary = {"planned": len(stored) + len(missing), "stored": len(stored), "trained": 0, "failed": [],
               "skipped": skipped, "seconds": 0.0}
    for note in skipped:
        print(f"plan: skipped a stale entry, {note}", file=out, flush=True)
    if not missing:
        if stored:
            print(f"plan: all {len(stored)} runs are in the store", file=out, flush=True)
        summary["seconds"] = time.monotonic() - started
        return summary
    if len(missing) > STALE_WARNING:
        _warn_stale(len(missing), out)
    total_steps = sum(int(cfg["train"]["steps"]) for _, cfg in missing.values())
    where = f"on the cluster {cluster}" if isinstance(cluster, str) else (
        "on the cluster" if cluster is not None else f"{max(1, min(jobs, len(missing)))} at a time")
    print(f"training {len(missing)} runs ({total_steps:,} steps, {where}); "
          f"{len(stored)} already in the store", file=out, flush=True)
    if cluster is not None:  # --- cluster (issue 13) ---
        from experiments.store import cluster as dask_cluster
        done = dask_cluster.train([cfg for _, cfg in missing.values()], cluster, out=out, raise_failed=False)
        failed = [f"{cfg['name']}-{r['key']}: {r['error']}" for r, (_, cfg) in zip(done, missing.values(), strict=True)
                  if "error" in r]
        trained = len(done) - len(failed)
    else:
        trained, failed = _train_children(list(missing.items()), max(1, jobs), total_steps, out)
    summary.update(trained=trained, failed=failed, seconds=time.monotonic() - started)
    print(f"trained {trained} of {len(missing)} runs in {_fmt_minutes(summary['seconds'])}"
          + (f"; {len(failed)} failed (the documents that need them will say why)" if failed else ""),
          file=out, flush=True)
    return summary


def _train_children(todo: list, jobs: int, total_steps: int, out) -> tuple[int, list[str]]:
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    overall = tqdm(total=total_steps, desc=f"training {len(todo)} runs", unit="step", position=0, disable=not tty,
                   bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]")
    eta = _Eta({key: cfg for key, (_, cfg) in todo})
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_RUN_LOG", "TQDM_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    pending = list(todo)
    running: dict = {}  # key -> {"proc", "progress", "err", "bar", "done", "cfg", "offset", "slot"}
    trained, failed, done_steps = 0, [], 0
    measured_at = None  # first ETA line once some steps are measured
    t0, last_line = time.monotonic(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lab-plan-") as tmp:
        try:
            while pending or running:
                free = [s for s in range(jobs) if s not in {r["slot"] for r in running.values()}]
                while pending and free:
                    key, (request, cfg) = pending.pop(0)
                    slot = free.pop(0)
                    progress = Path(tmp) / f"{key}.progress"
                    err = open(Path(tmp) / f"{key}.err", "w")
                    proc = subprocess.Popen(
                        [sys.executable, "-c", "from experiments.store.runs import _plan_child; _plan_child()",
                         json.dumps(request)],
                        env={**env, "LAB_PROGRESS": str(progress)}, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
                    steps = int(cfg["train"]["steps"])
                    bar = tqdm(total=steps, desc=f"  {cfg['name']} {key[:8]}", unit="step", position=slot + 1,
                               leave=False, disable=not tty)
                    running[key] = {"proc": proc, "progress": progress, "err": err, "bar": bar, "done": 0,
                                    "cfg": cfg, "offset": 0, "slot": slot, "steps": steps}
                time.sleep(0.5)
                for key, r in list(running.items()):
                    step, state = _last_progress(r)
                    if step is not None and step > r["done"]:
                        delta = step - r["done"]
                        r["done"] = step
                        r["bar"].update(delta)
                        overall.update(delta)
                        done_steps += delta
                        eta.progress(key, delta)
                    if state == "waiting":
                        r["bar"].set_description_str(f"  {r['cfg']['name']} {key[:8]} (waiting for a training slot)")
                    elif state == "training":
                        r["bar"].set_description_str(f"  {r['cfg']['name']} {key[:8]}")
                    rc = r["proc"].poll()
                    if rc is None:
                        continue
                    rest = r["steps"] - r["done"]
                    if rc == 0:
                        trained += 1
                        overall.update(rest)
                        done_steps += rest
                        eta.progress(key, rest)
                    else:
                        eta.drop(key, rest)
                        overall.total -= rest  # its steps will not come: keep the ETA honest
                        total_steps -= rest
                        r["err"].flush()
                        failed.append(f"{r['cfg']['name']}-{key}: {_last_error(Path(tmp) / f'{key}.err')}")
                        tqdm.write(f"training {r['cfg']['name']} {key[:8]} failed: {failed[-1]}", file=sys.stderr)
                    r["bar"].close()
                    r["err"].close()
                    running.pop(key)
                    eta.finished()
                elapsed = time.monotonic() - t0
                eta.sample(elapsed)
                finished = trained + len(failed)
                left = eta.left(elapsed) if done_steps else None
                if left is not None:
                    overall.set_postfix_str(f"about {_fmt_minutes(left)} left", refresh=False)
                if done_steps and measured_at is None and (finished or elapsed > 60):
                    measured_at = elapsed
                    tqdm.write(f"training {len(todo)} runs, about {_fmt_minutes(left)} left", file=out)
                    out.flush()
                elif not tty and time.monotonic() - last_line > 30 and done_steps:
                    # no bars in a log: a line every 30 s instead
                    print(f"training: {trained} of {len(todo)} runs done, {done_steps:,}/{total_steps:,} steps, "
                          f"about {_fmt_minutes(left)} left", file=out, flush=True)
                    last_line = time.monotonic()
        except BaseException:
            # Ctrl-C or an error here: stop every child cleanly (each removes its temporary file), then kill
            for r in running.values():
                with contextlib.suppress(OSError):
                    r["proc"].send_signal(2)
            deadline = time.monotonic() + 4
            for r in running.values():
                try:
                    r["proc"].wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    r["proc"].kill()
                    r["proc"].wait()
                r["err"].close()
                r["bar"].close()
            raise
        finally:
            overall.close()
    return trained, failed


class _Eta:
    """Time left for a plan's training. A run costs what its steps cost, in matmul FLOPs (a genesis step is
    about twenty times cheaper than a crucible step, so counting steps misleads), plus what every run costs
    besides its steps (a process, imports, data, the final fsync). Both are measured: elapsed ~ a * (runs
    begun) + b * (work done) is fitted (least squares, a, b >= 0) over samples taken as the plan goes, whose
    work grows within a run (b) and jumps between runs (a); until the samples tell them apart, b alone."""

    def __init__(self, cfgs: dict[str, dict]):
        self.per_step = {key: _flops_per_step(cfg) for key, cfg in cfgs.items()}
        self.total = sum(self.per_step[key] * int(cfg["train"]["steps"]) for key, cfg in cfgs.items())
        self.runs, self.done, self.finished_runs = len(cfgs), 0.0, 0
        self.points: list[tuple[float, int, float]] = []  # (elapsed, runs begun, work done)

    def progress(self, key: str, steps: int) -> None:
        self.done += self.per_step[key] * steps

    def drop(self, key: str, steps: int) -> None:
        """A run failed: its remaining steps will not come."""
        self.total -= self.per_step[key] * steps

    def finished(self) -> None:
        self.finished_runs += 1

    @property
    def begun(self) -> int:
        """Runs finished, and the one whose steps are being counted now."""
        return min(self.runs, self.finished_runs + 1)

    def sample(self, elapsed: float) -> None:
        if self.done > 0 and (not self.points or elapsed - self.points[-1][0] >= 1.0):
            self.points.append((elapsed, self.begun, self.done))

    def left(self, elapsed: float) -> float:
        import numpy as np

        if self.done <= 0:
            return 0.0
        a, b = 0.0, elapsed / self.done
        if len(self.points) >= 3:
            t, n, w = (np.array(c, dtype=float)
                       for c in zip(*self.points, (elapsed, self.begun, self.done), strict=True))
            (a, b), *_ = np.linalg.lstsq(np.stack([n, w], axis=1), t, rcond=None)
            if a < 0 or b <= 0:
                a, b = 0.0, float(t @ w / (w @ w))
        return max(0.0, a * (self.runs - self.begun) + b * max(0.0, self.total - self.done))


def _flops_per_step(cfg: dict) -> float:
    """Matmul FLOPs of one step of `cfg` (the vocabulary as configured); 1 if the config does not say."""
    from experiments.rig.model import flops_per_step

    try:
        t = cfg["train"]
        return float(flops_per_step(int(cfg["tokenizer"]["vocab_size"]), cfg["model"], int(t["batch_size"]),
                                    int(t["seq_len"])))
    except (KeyError, TypeError, ValueError):
        return 1.0


def _last_progress(r: dict) -> tuple[int | None, str | None]:
    """The newest heartbeat of a child: (step or None, state or None); reads only what was appended."""
    try:
        with open(r["progress"], "rb") as f:
            f.seek(r["offset"])
            data = f.read()
    except OSError:
        return None, None
    end = data.rfind(b"\n")
    if end < 0:
        return None, None
    r["offset"] += end + 1
    step, state = None, None
    for raw in data[:end].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        state = line.get("state") or state
        if isinstance(line.get("step"), int):
            step = line["step"]
    return step, state


def _last_error(path: Path) -> str:
    """The last meaningful line a failed child wrote (its exception), bars and blank lines skipped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no output"
    lines = [ln.strip() for chunk in text.splitlines() for ln in chunk.split("\r") if ln.strip()]
    lines = [ln for ln in lines if "|" not in ln or "Error" in ln]
    return lines[-1] if lines else "exited without a message"


# ------------------------------------------------------------------------------------ listing, gc


def list_runs(store: str | Path | None = None, check: bool = False) -> list[dict]:
    """Every run file in the store with its attributes; incomplete ones have status != complete.

    Each row says whether the file carries checksums (`checksum`); with check=True every file is read in full
    and `check` is "ok", "no checksum" (written before checksums), "damaged" or "incomplete", with `problem`.
    A file deleted while listing is left out, not an error.
    """
    import h5py

    from experiments.store.recording import check as check_file

    store = Path(store) if store is not None else store_dir()
    out = []
    for path in sorted(store.glob("*.h5")) if store.exists() else []:
        m = _RUN_FILE.match(path.name)
        if not m:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # deleted (gc, another process) between the listing and now
            continue
        row = {"name": m["name"], "key": m["key"], "path": str(path), "size": size,
               "status": "unreadable", "steps": None, "created": "", "description": "", "checksum": None,
               "host": ""}
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                row.update(name=str(a.get("name", m["name"])), steps=int(a.get("steps_total", 0)),
                           steps_recorded=int(a.get("steps_recorded", 0)), created=str(a.get("created", "")),
                           description=str(a.get("description", "")), checksum=DIGEST_ATTR in a,
                           status="complete" if int(a.get("complete", 0)) == 1 else "incomplete")
                row["host"] = _host_of(a.get("trained_on"))  # cluster (issue 13)
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            if not path.exists():
                continue
            row["problem"] = open_reason(e)
        if check:
            result = check_file(path)
            if result.status == "damaged" and not path.exists():
                continue
            row.update(check=result.status, problem=result.detail)
            if result.status == "ok":
                _mark_verified(path)
        out.append(row)
    return out


def _host_of(attr) -> str:
    """The host a run was trained on ("" for runs written before `trained_on` was recorded)."""
    try:
        return str(json.loads(attr).get("host") or "") if attr is not None else ""
    except (ValueError, TypeError, AttributeError):
        return ""


def find(ref: str, store: str | Path | None = None) -> Run:
    """A complete run by file name, key, key prefix or run name (the newest run of that name)."""
    rows = [r for r in list_runs(store) if r["status"] == "complete"]
    ref = ref.removesuffix(".h5")
    exact = [r for r in rows if r["key"] == ref or Path(r["path"]).stem == ref]
    if not exact:
        exact = [r for r in rows if r["key"].startswith(ref)] if re.fullmatch(r"[0-9a-f]{4,16}", ref) else []
        if len({r["key"] for r in exact}) > 1:
            raise DataError(f"run {ref!r} is ambiguous: {', '.join(sorted(r['key'] for r in exact))}")
    if not exact:
        exact = sorted((r for r in rows if r["name"] == ref), key=lambda r: r["created"])[-1:]
    if not exact:
        # a run file that matches but does not read as complete is damaged (a final name is only ever
        # given to a complete file): say so rather than "no run matches"
        hurt = [r for r in list_runs(store) if r["status"] != "complete" and
                (r["key"] == ref or Path(r["path"]).stem == ref or r["name"] == ref
                 or (re.fullmatch(r"[0-9a-f]{4,16}", ref) and r["key"].startswith(ref)))]
        if hurt:
            r = hurt[-1]
            why = r.get("problem") or f"not marked complete ({r['status']})"
            raise DamagedRunError(f"{r['path']}: the run file is damaged: {why}; {REPAIR}")
        raise DataError(f"no complete run matches {ref!r} in {Path(store) if store else store_dir()}")
    return Run(exact[0]["path"])


def gc(keep_keys, dry_run: bool = False, store: str | Path | None = None, damaged: bool = False) -> list[Path]:
    """Delete complete runs whose key is not in keep_keys, and temp files of dead processes.

    Returns what was (or, with dry_run, would be) deleted. Incomplete `.h5` files are left alone. The temp
    file of an interrupted training that its checkpoint (`<run>.ckpt`) names is what the next training of
    that key resumes from: it is kept while its key is in keep_keys (or a live process holds it); otherwise it
    goes with its checkpoint, and so does a checkpoint whose recording is gone.
    damaged=True instead deletes every run file that fails its check (read in full; damaged, unreadable
    or not marked complete under a final name), whatever uses it: the next run trains it again.
    """
    store = Path(store) if store is not None else store_dir()
    keep = set(keep_keys)
    if damaged:
        doomed = [Path(r["path"]) for r in list_runs(store, check=True) if r["check"] in ("damaged", "incomplete")]
    else:
        doomed = [Path(r["path"]) for r in list_runs(store) if r["status"] == "complete" and r["key"] not in keep]
        resumable = set()
        for ckpt in sorted(store.glob("*.h5.ckpt")) if store.exists() else []:
            m = _RUN_FILE.match(ckpt.name[:-len(".ckpt")])
            named = [Path(n) for n in _checkpoint_names(ckpt)]  # a resuming process may be renaming one
            live = any((t := _TMP_FILE.match(n.name)) and _pid_alive(int(t["pid"])) for n in named)
            there = [n for n in named if n.exists()]
            if there and (live or (m and m["key"] in keep)):
                resumable.update(n.name for n in there)  # partials live next to their checkpoint
            elif not live:
                doomed.append(ckpt)
        for path in sorted(store.glob("*.h5.tmp-*")) if store.exists() else []:
            m = _TMP_FILE.match(path.name)
            if m and not _pid_alive(int(m["pid"])) and path.name not in resumable:
                doomed.append(path)
    if not dry_run:
        for path in doomed:
            path.unlink(missing_ok=True)
            (path.parent / _VERIFIED / path.name).unlink(missing_ok=True)
    return doomed + _collect_derived(store, doomed, dry_run)


def _collect_derived(store: Path, doomed: list[Path], dry_run: bool) -> list[Path]:
    """Derived results (experiments.store.derived) of every run no longer in the store, or about to leave it."""
    from experiments.store import derived
    gone = {Path(p).name for p in doomed}
    live = {m["key"] for path in (store.glob("*.h5") if store.exists() else ())
            if path.name not in gone and (m := _RUN_FILE.match(path.name))}
    return derived.collect(store, live, dry_run=dry_run)


STALE_WARNING = 5  # a plan that trains more runs than this says whether code changes are why


def _warn_stale(n_missing: int, out) -> None:
    """Before a long retraining: how many stored runs the current code no longer matches, and which files."""
    try:
        stale = stale_runs()
    except (OSError, DataError):
        return
    if not stale:
        return
    changed = sorted({c for r in stale for c in r["changed"]})
    print(f"warning: {n_missing} runs to train; {len(stale)} stored runs no longer match the training code "
          f"(changed: {', '.join(changed)}). `lab runs --stale` lists them.", file=out, flush=True)


def stale_runs(store: str | Path | None = None) -> list[dict]:
    """Complete runs whose recorded training fingerprint no longer matches the code: each with `changed`
    (the modules, versions or format that differ), i.e. the runs a render would train again."""
    import h5py

    sources = module_sources()
    out = []
    for row in list_runs(store):
        if row["status"] != "complete":
            continue
        try:
            with h5py.File(row["path"], "r") as f:
                parts = json.loads(f.attrs["key_parts"])
        except (OSError, KeyError, ValueError):
            continue
        changed = fingerprint.differences(parts, sources, PACKAGE_DIR)
        if changed:
            out.append({**row, "changed": changed})
    return out


def rekey_runs(store: str | Path | None = None, dry_run: bool = False, say=None) -> list[tuple[Path, Path]]:
    """Re-key runs whose recorded code is semantically today's or declared equivalent to it (see
    `fingerprint.rekey`); no retraining."""
    store = Path(store) if store is not None else store_dir()
    return fingerprint.rekey(store, module_sources(), PACKAGE_DIR, dry_run=dry_run, say=say) if store.exists() else []


def _rekey_equivalent(store: Path, name: str, key: str, progress: bool) -> bool:
    """Before training `<name>-<key>`: a stored run of the same name whose code is declared to make the same
    recording (`fingerprint.translate`) takes that key instead of being trained again."""
    try:
        moved = fingerprint.rekey(store, module_sources(), PACKAGE_DIR, pattern=f"{glob.escape(name)}-*.h5", key=key)
    except (OSError, ValueError) as e:
        print(f"warning: could not re-key an equivalent stored run of {name}: {e}", file=sys.stderr)
        return False
    if moved and progress:
        print(f"{name}: re-keyed {moved[0][0].name} -> {moved[0][1].name} (same recording, code declared "
              "equivalent)", file=sys.stderr)
    return (store / f"{name}-{key}.h5").exists()  # moved here, or by another process meanwhile

