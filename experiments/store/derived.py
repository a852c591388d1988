"""Derived results: what an analysis computed from recorded runs, stored next to the runs and read back.

    from experiments.store.derived import cached

    @cached
    def run_cloud(run, rows=None, block=128): ...      # the first call computes and stores, later ones read

A call of a `cached` function is stored as `<store>/derived/<run key>/<function>-<hash>.npz` (several runs:
their keys joined by "+"). The hash covers everything the result depends on:

- each run among the arguments (also inside lists, tuples and dicts): its key and `created` (a run deleted
  and trained again is read afresh);
- the other arguments (numbers, strings, None, numpy arrays, slices, ranges and containers of those);
  an argument of any other type makes the call uncached (computed every time, never an error);
- the code: the function's module, the module of each run's class (the reader decides what an analysis
  sees) and every module of the package they import, transitively (any `import` in the file, at the top
  or inside a function), each hashed in the training fingerprint's normal form (`fingerprint.digest`: the
  syntax tree without docstrings, so comment and docstring edits keep every entry); the package's
  `__init__` counts only where a module imports the package itself; and numpy's version.

Results are numpy arrays, numpy scalars, Python scalars, strings, None, dataclasses (of a fingerprinted
module), and lists, tuples and dicts of those; they are stored without pickle and read back equal in type,
dtype and bits. A result holding anything else is returned uncached. An entry is written to a temporary
file and renamed into place, so a killed analysis leaves at most `*.tmp-<pid>` (removed by `lab gc`) and
two processes writing the same entry both write the same bytes. A damaged entry reads as missing and is
written again. When an entry is written, entries of the same call made by older code are removed, so
the store holds one version per call. `lab gc` removes the entries of runs it deletes (`collect`).

LAB_DERIVED=0 disables the cache (nothing read, nothing written): for debugging and for timing analyses.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import secrets
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from experiments.store.fingerprint import digest

FORMAT = 1  # bump when the file layout or the encoding changes: every entry is then recomputed
DIRNAME = "derived"
_TMP = re.compile(r"\.tmp-(?P<pid>\d+)-[0-9a-f]+$")
_loaded: dict[str, tuple[int, int]] = {}  # source file -> (mtime_ns, size) when this process first saw it loaded
stats: Counter = Counter()  # per process: hit, miss, stored, uncached-arguments, unserialisable, disabled


class Unserialisable(TypeError):
    """A value the cache cannot store or key faithfully (the call is then computed without caching)."""


def enabled() -> bool:
    return os.environ.get("LAB_DERIVED", "1").strip().lower() not in ("0", "false", "no", "off")


# ---------------------------------------------------------------------------------------------------------
# the code an analysis depends on


@functools.lru_cache(maxsize=1024)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[int, str | None, tuple[str, ...]], ...]]:
    """(normal-form digest, imports as (level, module, names)) of one source file, per version of the file."""
    source = Path(path).read_text()
    imports = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imports += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    return digest(source), tuple(imports)


def _source_of(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _note_loaded(module: str, path: Path | None = None) -> None:
    """Remember the file a loaded module came from, as first seen (at import for decorated modules)."""
    path = path or _source_of(module)
    if path is not None and module in sys.modules:
        _loaded.setdefault(str(path), _stat(path))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _imported(module: str, path: Path, imports) -> set[str]:
    """Modules of the same top-level package that `module` imports (relative imports resolved)."""
    top = module.split(".")[0]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for level, name, names in imports:
        base = importlib.util.resolve_name("." * level + (name or ""), package) if level else name
        if base != top and not base.startswith(top + "."):
            continue
        if not names:
            out.add(base)
            continue
        for alias in names:  # `from pkg import mod` imports the module; `from mod import f` depends on mod
            out.add(f"{base}.{alias}" if alias != "*" and _is_module(f"{base}.{alias}") else base)
    return out


def _code(modules) -> dict[str, tuple[str, str, tuple[int, int] | None]]:
    """module -> (digest, file, (mtime_ns, size)) over the transitive imports of `modules`."""
    todo, seen = list(modules), {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _source_of(module)
        if path is None:
            seen[module] = ("absent", "", None)
            continue
        stat = _stat(path)
        code, imports = _parsed(str(path), *stat)
        seen[module] = (code, str(path), stat)
        _note_loaded(module, path)
        todo += sorted(_imported(module, path, imports) - seen.keys())
    return dict(sorted(seen.items()))


def _edited_since_loaded(code: dict) -> bool:
    """A loaded module whose file changed since this process loaded it runs other code than the file says:
    its results must not be stored (or read) under the file's digest."""
    return any(path in _loaded and _loaded[path] != stat for _, path, stat in code.values())


# ---------------------------------------------------------------------------------------------------------
# keying a call


def _is_run(x) -> bool:
    recording = sys.modules.get("experiments.store.recording")
    return recording is not None and isinstance(x, recording.Run)


def _arg_token(x, runs: list):
    """A JSON value that identifies an argument exactly; runs are collected into `runs`."""
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is float:
        return {"float": repr(x)}  # repr round-trips every float, nan and -0.0 included
    if _is_run(x):
        runs.append(x)
        return {"run": x.key, "created": x.created}
    if type(x) is np.ndarray and _plain(x.dtype):
        data = np.ascontiguousarray(x)
        return {"array": x.dtype.str, "shape": list(x.shape), "sha256": hashlib.sha256(data.tobytes()).hexdigest()}
    if isinstance(x, np.generic):
        return {"scalar": _arg_token(np.asarray(x), runs)}
    if type(x) in (slice, range):
        return {type(x).__name__: [_arg_token(v, runs) for v in (x.start, x.stop, x.step)]}
    if type(x) in (list, tuple):
        return {type(x).__name__: [_arg_token(v, runs) for v in x]}
    if type(x) is dict:
        return {"dict": [[_arg_token(k, runs), _arg_token(v, runs)] for k, v in x.items()]}
    raise Unserialisable(f"argument of type {type(x).__name__}")


@dataclasses.dataclass
class Call:
    """One call of a cached function: where its entry lives and what it must say it is."""

    path: Path
    ident: str
    meta: dict
    modules: set


def _call(fn, sig: inspect.Signature, ignore: tuple, args, kwargs) -> Call | None:
    """The entry of this call, or None when it cannot be keyed (no run among the arguments, or an
    argument the cache cannot identify exactly)."""
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    runs: list = []
    try:
        arguments = {k: _arg_token(v, runs) for k, v in bound.arguments.items() if k not in ignore}
    except Unserialisable:
        return None
    if not runs:
        return None
    code = _code({fn.__module__, *(type(r).__module__ for r in runs)})
    if _edited_since_loaded(code) or code[fn.__module__][0] == "absent":
        return None  # the code that runs is not the code a digest can name
    code = {m: d for m, (d, _, _) in code.items()}
    function = f"{fn.__module__}.{fn.__qualname__}"
    meta = {"format": FORMAT, "function": function, "arguments": arguments, "code": code,
            "numpy": np.__version__}
    ident = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    call_id = hashlib.sha256(json.dumps([function, arguments], sort_keys=True).encode()).hexdigest()[:12]
    keys = "+".join(sorted({r.key for r in runs}))
    name = re.sub(r"[^\w.]+", "_", fn.__qualname__)  # a nested function's "<locals>" is no file name
    path = Path(runs[0].path).parent / DIRNAME / keys / f"{name}-{call_id}-{ident[:12]}.npz"
    return Call(path, ident, meta, set(code))


# ---------------------------------------------------------------------------------------------------------
# results to and from arrays + a JSON tree


def _class_path(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_class(name: str):
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def encode(x, arrays: dict, modules: set):
    """The JSON node of a result; its arrays go into `arrays`. Raises Unserialisable for anything that would
    not read back equal (a subclass, an object array, a dataclass outside the fingerprinted code, ...)."""
    if x is None or type(x) in (bool, int, float, str):
        return x  # json round-trips these exactly (floats via repr, nan and inf included)
    if type(x) is np.ndarray:
        if not _plain(x.dtype):
            raise Unserialisable(f"array of dtype {x.dtype}")
        return {"array": _put(arrays, x)}
    if isinstance(x, np.generic) and _plain(np.asarray(x).dtype) and type(x) is np.asarray(x).dtype.type:
        return {"scalar": _put(arrays, np.asarray(x))}
    if type(x) in (list, tuple):
        return _encode_sequence(x, arrays, modules)
    if type(x) is dict:
        return {"dict": [[encode(k, arrays, modules), encode(v, arrays, modules)] for k, v in x.items()]}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _encode_dataclass(x, arrays, modules)
    raise Unserialisable(f"result of type {type(x).__name__}")


def _plain(dtype: np.dtype) -> bool:
    """numpy's own numbers, booleans and strings: stored and read back by .npy without pickle, bit for bit."""
    return (dtype.kind in "biufc" and dtype.isbuiltin == 1) or (dtype.kind in "US" and dtype.fields is None)


def _put(arrays: dict, a: np.ndarray) -> str:
    name = f"a{len(arrays)}"
    arrays[name] = a
    return name


def _encode_sequence(x, arrays: dict, modules: set):
    kind = type(x).__name__
    # long lists of Python floats or ints (per-step series) as one array: compact and fast to read
    if x and all(type(v) is float for v in x):
        return {kind: {"floats": _put(arrays, np.array(x, dtype=np.float64))}}
    if x and all(type(v) is int and -2**63 <= v < 2**63 for v in x):
        return {kind: {"ints": _put(arrays, np.array(x, dtype=np.int64))}}
    return {kind: [encode(v, arrays, modules) for v in x]}


def _encode_dataclass(x, arrays: dict, modules: set):
    cls = type(x)
    if cls.__module__ not in modules:  # its definition must be part of the fingerprint to be read back right
        raise Unserialisable(f"dataclass {cls.__qualname__} from {cls.__module__}, outside the analysis code")
    try:
        if _resolve_class(_class_path(cls)) is not cls:
            raise Unserialisable(f"dataclass {cls.__qualname__} cannot be found by name")
    except (ImportError, AttributeError):
        raise Unserialisable(f"dataclass {cls.__qualname__} cannot be found by name") from None
    names = [f.name for f in dataclasses.fields(x)]
    if set(getattr(x, "__dict__", {})) - set(names):
        raise Unserialisable(f"{cls.__qualname__} holds attributes besides its fields")
    return {"dataclass": _class_path(cls), "fields": {n: encode(getattr(x, n), arrays, modules) for n in names}}


def decode(node, arrays: dict):
    """The value of a JSON node written by `encode`, its arrays taken from `arrays`."""
    if not isinstance(node, dict):
        return node
    if "dataclass" in node:
        obj = object.__new__(_resolve_class(node["dataclass"]))  # no __init__: fields set exactly as stored
        for name, field in node["fields"].items():
            object.__setattr__(obj, name, decode(field, arrays))
        return obj
    (kind, value), = node.items()
    if kind == "array":
        return arrays[value]
    if kind == "scalar":
        return arrays[value][()]
    if kind == "dict":
        return {decode(k, arrays): decode(v, arrays) for k, v in value}
    if kind not in ("list", "tuple"):
        raise ValueError(f"unknown node {kind!r}")
    if isinstance(value, dict):  # a packed list of floats or ints
        items = arrays[value["floats"] if "floats" in value else value["ints"]].tolist()
    else:
        items = [decode(v, arrays) for v in value]
    return items if kind == "list" else tuple(items)


# ---------------------------------------------------------------------------------------------------------
# entries on disk


_MISS = object()


def _read(call: Call):
    try:
        with np.load(call.path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode())
            if meta.get("ident") != call.ident:
                return _MISS
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        return decode(meta["result"], arrays)
    except FileNotFoundError:
        return _MISS
    except Exception:  # damaged, truncated or of another format: recompute and write it again
        return _MISS


def _write(call: Call, result) -> bool:
    """Store a result; False (nothing written) when it cannot be stored faithfully or the disk refuses."""
    arrays: dict = {}
    try:
        tree = encode(result, arrays, call.modules)
    except Unserialisable:
        stats["unserialisable"] += 1
        return False
    meta = {**call.meta, "ident": call.ident, "result": tree}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    tmp = call.path.with_name(f"{call.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        call.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, call.path)  # atomic: readers see no entry or a whole one
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    _drop_older_versions(call.path)
    return True


def _drop_older_versions(path: Path) -> None:
    """Remove entries of the same call (function and arguments) made by other code."""
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def cached(fn=None, *, ignore: tuple = ()):
    """Decorator: store the results of an analysis of recorded runs (see the module docstring).

    `ignore` names arguments that do not change the result (a progress flag). `f.uncached` is the original.
    Also usable as an explicit call: `cached(f)(run, ...)`.
    """
    if fn is None:
        return functools.partial(cached, ignore=tuple(ignore))
    sig = inspect.signature(fn)
    top = fn.__module__.split(".")[0]
    for module in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        _note_loaded(module)  # decorating runs at import: the files as this process loaded them

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not enabled():
            stats["disabled"] += 1
            return fn(*args, **kwargs)
        call = _call(fn, sig, ignore, args, kwargs)
        if call is None:
            stats["uncached-arguments"] += 1
            return fn(*args, **kwargs)
        hit = _read(call)
        if hit is not _MISS:
            stats["hit"] += 1
            return hit
        stats["miss"] += 1
        result = fn(*args, **kwargs)
        if _write(call, result):
            stats["stored"] += 1
        return result

    wrapper.uncached = fn
    return wrapper


# ---------------------------------------------------------------------------------------------------------
# garbage collection


def collect(store: str | Path, live_keys, dry_run: bool = False) -> list[Path]:
    """Delete the derived results of runs not in `live_keys` (an entry of several runs goes with any of
    them) and temporary files of dead writers. Returns what was (or would be) deleted."""
    from experiments.store import (
        runs,  # the store's own liveness test for temp files (runs imports us lazily too)
    )

    root = Path(store) / DIRNAME
    live = set(live_keys)
    doomed = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        if not set(d.name.split("+")) <= live:
            doomed.append(d)
            continue
        doomed += [tmp for tmp in sorted(d.glob("*.tmp-*"))
                   if (m := _TMP.search(tmp.name)) and not runs._pid_alive(int(m["pid"]))]
    if not dry_run:
        for path in doomed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return doomed
