"""The run store: content-addressed recordings, trained at most once per key.

key = sha256(resolved config without its description, sha256 of each training-path module's source
(TRAINING_MODULES), corpus and tokenizer hashes, torch and numpy versions, the recording format)[:16].
The parts are stored in the file (`key_parts`) so the site can say why a run exists.

One complete run is `<store>/<name>-<key>.h5` (store = $LAB_STORE or <repo root>/store). Training writes
`<name>-<key>.h5.tmp-<pid>` under a per-key file lock, marks it complete, fsyncs and renames it atomically,
so a killed or failed run never leaves a file that reads as complete. Every run returned by `run` / `sweep`
is appended to $LAB_RUN_LOG (one JSON line {"name", "key", "path"}) when that variable is set.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from experiments.config import canonical_json, load_config, resolve_device, sweep_members
from experiments.errors import ConfigError, DataError
from experiments.record import FORMAT_VERSION
from experiments.recording import Run

PACKAGE_DIR = Path(__file__).resolve().parent
TRAINING_MODULES = ("corpus", "tokenizer", "config", "model", "train", "record", "errors")
_RUN_FILE = re.compile(r"^(?P<name>.+)-(?P<key>[0-9a-f]{16})\.h5$")
_TMP_FILE = re.compile(r"^(?P<stem>.+-[0-9a-f]{16})\.h5\.tmp-(?P<pid>\d+)$")


def store_dir() -> Path:
    return Path(os.environ.get("LAB_STORE") or PACKAGE_DIR.parent / "store")


def module_sources(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """Source text of each training-path module (the injectable part of the key)."""
    return {m: (package_dir / f"{m}.py").read_text() for m in TRAINING_MODULES}


def compute_key(cfg: dict, prepared, sources: dict[str, str] | None = None) -> tuple[str, dict]:
    """(key, key_parts) for a resolved config (device fixed) and its prepared data."""
    import numpy
    import torch

    sources = module_sources() if sources is None else sources
    keyed = {k: v for k, v in cfg.items() if k != "description"}
    parts = {
        "config_sha256": hashlib.sha256(canonical_json(keyed).encode()).hexdigest(),
        "sources": {m: hashlib.sha256(s.encode()).hexdigest()[:16] for m, s in sorted(sources.items())},
        "corpus_sha256": prepared.corpus_sha256,
        "tokenizer_sha256": prepared.tokenizer_sha256,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "format": FORMAT_VERSION,
    }
    key = hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]
    return key, parts


def _prepare(cfg: dict, store: Path):
    from experiments.tokenizer import prepare

    return prepare(cfg["corpus"], cfg["tokenizer"], store / "data")


def _log(run: Run) -> None:
    log = os.environ.get("LAB_RUN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"name": run.name, "key": run.key, "path": str(run.path)}) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    result = _run_resolved(cfg, progress=progress)
    _log(result)
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
    locks = [FileLock(str(store / f".train-slot-{i}.lock")) for i in range(slots)]
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


def _run_resolved(cfg: dict, progress: bool = True) -> Run:
    progress = progress and not _quiet()
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    prepared = _prepare(cfg, store)
    key, parts = compute_key(cfg, prepared)
    final = store / f"{cfg['name']}-{key}.h5"
    if final.exists():
        return Run(final)
    with FileLock(str(store / f"{key}.lock")):
        if final.exists():  # another process trained it while we waited
            return Run(final)
        for stale in store.glob(f"{final.name}.tmp-*"):  # we hold the lock: these are leftovers
            stale.unlink(missing_ok=True)
        with _compute_slot(store, cfg["train"].get("threads") or 1):
            _train_into(cfg, prepared, key, parts, final, progress)
    return Run(final)


def _train_into(cfg: dict, prepared, key: str, parts: dict, final: Path, progress: bool) -> None:
    from experiments.train import train, versions

    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
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
    }
    try:
        train(cfg, prepared, tmp, attrs, progress=progress)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{tmp}: could not write the run: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sweep_member(cfg: dict) -> str:
    # runs in a worker process: train (or find) one member, return its path
    return str(_run_resolved(cfg, progress=False).path)


def sweep(name_or_config: str | dict, jobs: int = 1, progress: bool = True, **overrides: Any) -> list[Run]:
    """All members of a sweep preset (training the missing ones, `jobs` processes in parallel)."""
    cfg = resolve(name_or_config, **overrides)
    members = sweep_members(cfg)
    if jobs <= 1 or len(members) == 1:
        runs = [_run_resolved(m, progress=progress) for m in members]
    else:
        import multiprocessing

        from tqdm import tqdm

        ctx = multiprocessing.get_context("spawn")  # torch state must not be forked
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_sweep_member, copy.deepcopy(m)) for m in members]
            paths = [f.result() for f in tqdm(futures, desc=f"sweep {cfg['name']}", disable=not progress or _quiet())]
        runs = [Run(p) for p in paths]
    for r in runs:
        _log(r)
    return runs


# ------------------------------------------------------------------------------------ listing, gc


def list_runs(store: str | Path | None = None) -> list[dict]:
    """Every run file in the store with its attributes; incomplete ones have status != complete."""
    import h5py

    store = Path(store) if store is not None else store_dir()
    out = []
    for path in sorted(store.glob("*.h5")) if store.exists() else []:
        m = _RUN_FILE.match(path.name)
        if not m:
            continue
        row = {"name": m["name"], "key": m["key"], "path": str(path), "size": path.stat().st_size,
               "status": "unreadable", "steps": None, "created": "", "description": ""}
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                row.update(name=str(a.get("name", m["name"])), steps=int(a.get("steps_total", 0)),
                           steps_recorded=int(a.get("steps_recorded", 0)), created=str(a.get("created", "")),
                           description=str(a.get("description", "")),
                           status="complete" if int(a.get("complete", 0)) == 1 else "incomplete")
        except (OSError, KeyError, ValueError):
            pass
        out.append(row)
    return out


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
        raise DataError(f"no complete run matches {ref!r} in {Path(store) if store else store_dir()}")
    return Run(exact[0]["path"])


def gc(keep_keys, dry_run: bool = False, store: str | Path | None = None) -> list[Path]:
    """Delete complete runs whose key is not in keep_keys, and temp files of dead processes.

    Returns what was (or, with dry_run, would be) deleted. Incomplete `.h5` files are left alone.
    """
    store = Path(store) if store is not None else store_dir()
    keep = set(keep_keys)
    doomed = [Path(r["path"]) for r in list_runs(store) if r["status"] == "complete" and r["key"] not in keep]
    for path in sorted(store.glob("*.h5.tmp-*")) if store.exists() else []:
        m = _TMP_FILE.match(path.name)
        if m and not _pid_alive(int(m["pid"])):
            doomed.append(path)
    if not dry_run:
        for path in doomed:
            path.unlink(missing_ok=True)
    return doomed
