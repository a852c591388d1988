"""The training fingerprint: which edits to the training code change a run's key.

The run key hashes each training-path module (`runs.TRAINING_MODULES`) in a normal form: its abstract syntax
tree with every docstring removed, dumped without positions. Comments never reach the tree, so editing a
comment, a docstring, blank lines or line breaks keeps every key; any change to the code itself changes
the module's hash, even one in a function training never calls. Hashing only what `train` can reach would
spare those too, but Python cannot establish reachability soundly (`nn.Module.__call__` reaches `forward`
by name, getattr by string), so whole modules are hashed and nothing is guessed.

Runs keyed before this normal form (their `key_parts` hash the text) are matched through git history:
`rekey` finds the committed version of each module whose text hash the run recorded, and when its normal form
equals today's, renames the run to the key it would get now, without retraining. `stale` lists the runs
whose recorded fingerprint no longer matches the code, with the modules that changed.

Some code changes do change the normal form and still make the same recordings: a refactor, a new exception
class, a faster path to the same bytes, a module moved or split. Each such change is declared once in
`equivalences.json` (next to this file): the module digests before and after, and how it was checked
(`python -m experiments.store.equivalence REV` trains every preset, smoke-sized, plus the precision and optimizer
variants, under both versions in fresh processes and writes the entry only when every recording is
byte-identical). A run trained by the old code is then current (`translate`), so `stale` does not list it,
and `rekey` gives it the new key without retraining; `lab render` and `run` re-key such runs themselves.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from experiments.paths import fsync_dir

SCHEME = "ast-v1"  # recorded in key_parts["fingerprint"]; absent in runs keyed by source text


def normal_form(source: str) -> str:
    """The module's syntax tree without docstrings or positions (comments are never in it)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=True, include_attributes=False)


@functools.lru_cache(maxsize=512)
def digest(source: str) -> str:
    """Hash of the normal form. Memoised by text: a plan keys every run against the same dozen modules, and
    parsing and dumping them again for each run cost most of a planning pass (28 of 35 s for 62 runs)."""
    return hashlib.sha256(normal_form(source).encode()).hexdigest()[:16]


def text_digest(source: str) -> str:
    """How keys hashed a module before the normal form (kept to recognise those runs)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@cache
def _history(repo: str, relpath: str) -> dict[str, str]:
    """text digest -> normal-form digest of every committed version of one file (empty without git)."""
    try:
        revs = subprocess.run(["git", "-C", repo, "log", "--format=%H", "--", relpath], capture_output=True,
                              text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for rev in revs:
        try:
            text = subprocess.run(["git", "-C", repo, "show", f"{rev}:{relpath}"], capture_output=True, text=True,
                                  check=True, timeout=60).stdout
            out[text_digest(text)] = digest(text)
        except (subprocess.SubprocessError, SyntaxError, ValueError):
            continue
    return out


EQUIVALENCES = Path(__file__).with_name("equivalences.json")


def _relpath(module: str) -> str:
    """A training module's file inside the package: "rig.train" -> "rig/train.py" (keys name modules dotted)."""
    return module.replace(".", "/") + ".py"


def module_path(package_dir: Path, module: str) -> Path:
    return package_dir / _relpath(module)


@cache
def equivalences(path: Path = EQUIVALENCES) -> tuple[dict, ...]:
    """The declared code changes that keep recordings: ({"from": {module: digest}, "to": {...}, ...}, ...)."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return ()
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("from"), dict) and isinstance(e.get("to"), dict)):
            raise ValueError(f"{path}: entry {i} needs 'from' and 'to' mappings of module -> digest")
    return tuple(entries)


def translate(digests: dict[str, str | None]) -> dict[str, str | None]:
    """The module digests of the newest code declared to make the same recordings as `digests`.

    An entry applies only when the whole set matches (every training module, nothing else): it was checked
    for that exact code, not for each module alone. Entries chain (A -> B, then B -> C).
    """
    seen = []
    while digests not in seen:
        seen.append(digests)
        for e in equivalences():
            if e["from"] == digests:
                digests = dict(e["to"])
                break
        else:
            return digests
    return digests


def recorded_digests(parts: dict, package_dir: Path) -> dict[str, str | None]:
    """Normal-form digest of each module a run was trained with (None where history cannot tell)."""
    sources = parts.get("sources", {})
    if parts.get("fingerprint") == SCHEME:
        return dict(sources)
    repo = str(package_dir.parent)
    out = {}
    for module, text_sha in sources.items():
        path = module_path(package_dir, module)
        current = path.read_text() if path.exists() else None
        if current is not None and text_digest(current) == text_sha:
            out[module] = digest(current)
        else:
            out[module] = _history(repo, f"{package_dir.name}/{_relpath(module)}").get(text_sha)
    return out


def expected_parts(parts: dict, current_sources: dict[str, str]) -> dict:
    """The key parts a stored run would have if trained now with the same config and data."""
    import numpy
    import torch

    from experiments.rig.record import FORMAT_VERSION

    new = {k: v for k, v in parts.items() if k not in ("sources", "fingerprint")}
    new.update(sources={m: digest(s) for m, s in sorted(current_sources.items())}, fingerprint=SCHEME,
               torch=torch.__version__, numpy=numpy.__version__, format=FORMAT_VERSION)
    return new


def differences(parts: dict, current_sources: dict[str, str], package_dir: Path) -> list[str]:
    """What changed since a run was trained: module names, versions or the format ([] if it is current)."""
    new = expected_parts(parts, current_sources)
    rec = translate(recorded_digests(parts, package_dir))
    changed = [_relpath(m) if rec.get(m) is not None else f"{_relpath(m)} (recorded version not in git history)"
               for m in sorted(set(new["sources"]) | set(rec)) if rec.get(m) != new["sources"].get(m)]
    changed += [f"{k} {parts.get(k)} -> {new[k]}" for k in ("torch", "numpy", "format") if parts.get(k) != new[k]]
    extra = sorted(set(parts) - set(new) - {"sources", "fingerprint"})
    changed += [f"key part {k}" for k in extra]
    return changed


def _key_of(parts: dict) -> str:
    from experiments.rig.config import canonical_json

    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def rekey(store: Path, current_sources: dict[str, str], package_dir: Path, dry_run: bool = False,
          pattern: str = "*.h5", key: str | None = None, say=None) -> list[tuple]:
    """Give every run whose recorded code is semantically today's, or declared equivalent to it, the key it
    would get now (only runs matching `pattern`, and only the one that gets `key` if given).

    Returns (old path, new path) pairs. Only the key, `key_parts` and the file name change: the recording is
    the one the current code would make, so nothing is retrained. Runs that differ in anything are left alone.
    `say(old, new)` is called before each copy (a large store takes a while).
    """
    import h5py

    moves = []
    wanted = key
    for path in sorted(store.glob(pattern)):
        try:
            with h5py.File(path, "r") as f:
                if int(f.attrs.get("complete", 0)) != 1:
                    continue
                parts, name, key = json.loads(f.attrs["key_parts"]), str(f.attrs["name"]), str(f.attrs["key"])
        except (OSError, KeyError, ValueError):
            continue
        if differences(parts, current_sources, package_dir):
            continue
        new_parts = expected_parts(parts, current_sources)
        new_key = _key_of(new_parts)
        if new_key == key or (wanted is not None and new_key != wanted):
            continue
        target = path.with_name(f"{name}-{new_key}.h5")
        moves.append((path, target))
        if dry_run or target.exists():
            continue
        if say is not None:
            say(path, target)
        tmp = path.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(path, tmp)  # the old run stays whole until the re-keyed copy is complete
            with h5py.File(tmp, "r+") as f:
                f.attrs["key"] = new_key
                f.attrs["key_parts"] = json.dumps(new_parts, sort_keys=True)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())  # on disk before the rename makes it the run and the old one goes
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)  # another process re-keyed it first
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        fsync_dir(target.parent)
        path.unlink(missing_ok=True)
    return moves
