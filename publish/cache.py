"""The document cache: `<root>/.lab/cache/<source path>.ipynb` + `.json`, one pair per document.

Quarto's freeze (`_freeze/<page>/execute-results/html.json`) keys only on the md5 of a document's own text,
so it goes stale when imported code, data, runs or LAB_SMOKE change; the project therefore runs Quarto with
`freeze: false` and `lab render` refuses any other freeze (ARCHITECTURE.md, "Freeze cannot lie"). This cache
is the only reuse: its record keys on everything the execution used (see execute.py): the source, every
project module and file it read, the runs it loaded, and ENV_KEYS. A document re-executes iff one of these
changed or vanished; otherwise the cached notebook is reused. `_freeze/` is never read. Hashes are sha256 of the bytes; a (size, mtime) match skips re-hashing. Run files are
immutable once complete (written to a temp file and renamed), so their (size, mtime) identifies them
without reading gigabytes.

Writes are atomic (temp file + rename) and happen only after a successful execution, so a failure never
replaces a good entry. The record is written last and names the notebook's hash: a crash between the two
writes reads as stale, never as a wrong reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from publish.sources import Document, load_project

CACHE_DIR = Path(".lab") / "cache"
FORMAT = 1
# Environment variables that change what a document computes: the smoke profile shrinks every run, and
# another store holds other runs. A cached page made under other values is stale (never a smoke page on
# the real site).
ENV_KEYS = ("LAB_SMOKE", "LAB_STORE")


def environment(root: Path | str) -> dict[str, str]:
    """ENV_KEYS as they bear on `root`: LAB_STORE naming the default store (<root>/store) counts as unset."""
    env = {k: os.environ.get(k, "") for k in ENV_KEYS}
    if env["LAB_STORE"] and Path(env["LAB_STORE"]).resolve() == (Path(root) / "store").resolve():
        env["LAB_STORE"] = ""
    return env


@dataclass
class Entry:
    record: dict
    notebook: nbformat.NotebookNode


def cache_dir(root: Path | str) -> Path:
    return Path(root) / CACHE_DIR


def entry_paths(doc: Document) -> tuple[Path, Path]:
    """(record .json, notebook .ipynb) of a document."""
    base = cache_dir(doc.root) / doc.rel
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".ipynb")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"sha256": sha256(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def unchanged(path: Path, recorded: dict) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return st.st_size == recorded.get("size") and sha256(path) == recorded.get("sha256")


def run_signature(path: Path) -> dict | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store(doc: Document, execution) -> dict:
    """Save a successful execution (an `execute.Execution`) as the document's cache entry; returns the record."""
    root = doc.root
    record_path, notebook_path = entry_paths(doc)
    notebook_bytes = nbformat.writes(execution.notebook).encode("utf-8")
    runs = []
    for run in execution.runs:
        path = _run_path(doc, run.get("path", ""))
        runs.append({**run, "exists": bool(path and path.is_file()),
                     "signature": run_signature(path) if path else None})
    record = {
        "format": FORMAT,
        "source": doc.rel,
        "source_sha256": doc.source_sha256 or sha256(doc.path),
        "modules": {rel: fingerprint(root / rel) for rel in execution.modules if (root / rel).is_file()},
        "files": {rel: fingerprint(root / rel) for rel in execution.files if (root / rel).is_file()},
        "runs": runs,
        "python": execution.python,
        "kernel": execution.kernel,
        "executed_at": execution.executed_at,
        "seconds": round(execution.seconds, 3),
        "notebook_sha256": hashlib.sha256(notebook_bytes).hexdigest(),
        "project_execute": project_execute(root),
        "environment": environment(root),
    }
    atomic_write(notebook_path, notebook_bytes)
    atomic_write(record_path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return record


def project_execute(root: Path) -> str:
    """Hash of `_quarto.yml`'s `execute:` defaults: changing eval/error/warning there changes every run."""
    settings = load_project(root).get("execute") or {}
    if isinstance(settings, dict):  # the timeout decides when a chunk is stopped, not what it computes
        settings = {k: v for k, v in settings.items() if k != "timeout"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _run_path(doc: Document, raw: str) -> Path | None:
    """A run file's path as logged; relative paths are relative to the kernel's cwd, the document's folder."""
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else doc.path.parent / path


def load_record(doc: Document) -> dict | None:
    record_path, _ = entry_paths(doc)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def load(doc: Document) -> Entry | None:
    """The cached entry (fresh or not), or None if there is none or it is damaged."""
    record = load_record(doc)
    if record is None:
        return None
    _, notebook_path = entry_paths(doc)
    try:
        data = notebook_path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != record.get("notebook_sha256"):
        return None
    return Entry(record=record, notebook=nbformat.reads(data.decode("utf-8"), as_version=4))


def stale_reason(doc: Document) -> str | None:
    """Why `doc` must re-execute, or None when its cached notebook can be reused."""
    root = doc.root
    record = load_record(doc)
    if record is None:
        return "not cached"
    if record.get("source") != doc.rel:
        return "cache entry belongs to another source"
    if sha256(doc.path) != record.get("source_sha256"):
        return "source changed"
    if record.get("project_execute") != project_execute(root):
        return "execute: options in _quarto.yml changed"
    recorded_env, env = record.get("environment") or {}, environment(root)
    for k in ENV_KEYS:
        if recorded_env.get(k, "") != env[k]:
            return f"{k} changed ({recorded_env.get(k, '') or 'unset'} -> {env[k] or 'unset'})"
    python = sys.version.split()[0]
    if record.get("python") and record["python"] != python:
        return f"python changed ({record['python']} -> {python})"
    for kind in ("modules", "files"):
        for rel, recorded in (record.get(kind) or {}).items():
            if not (root / rel).is_file():
                return f"{rel} vanished"
            if not unchanged(root / rel, recorded):
                return f"{rel} changed"
    for run in record.get("runs") or []:
        path = _run_path(doc, run.get("path", ""))
        if path is None or not run.get("exists"):
            continue  # we never knew where it lived; its key is still recorded for `lab gc`
        signature = run_signature(path)
        if signature is None:
            return f"run {run.get('name')}-{run.get('key')} is gone"
        if signature != run.get("signature"):
            return f"run {run.get('name')}-{run.get('key')} changed"
    _, notebook_path = entry_paths(doc)
    if not notebook_path.is_file():
        return "cached notebook missing"
    return None


def is_fresh(doc: Document) -> bool:
    return stale_reason(doc) is None


def used_run_keys(root: Path | str) -> set[str]:
    """Run keys used by any cached document (what `lab gc` must keep)."""
    keys = set()
    folder = cache_dir(root)
    if not folder.is_dir():
        return keys
    for path in folder.rglob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            keys.update(str(r["key"]) for r in record.get("runs") or [] if isinstance(r, dict) and "key" in r)
    return keys


def clear(doc: Document) -> None:
    """Forget a document's entry (both files)."""
    for path in entry_paths(doc):
        path.unlink(missing_ok=True)
