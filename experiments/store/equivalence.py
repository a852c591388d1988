"""Is a change to the training code safe to declare equivalent? Train the same configs under both versions.

    python -m experiments.store.equivalence REV            # compare the committed REV with the working tree
    python -m experiments.store.equivalence REV --write    # ... and, when every recording is identical, append
                                                     # the entry to experiments/store/equivalences.json

A code change that alters a training module's normal form changes every run key (see `fingerprint`). When
the change keeps every recording byte for byte (a refactor, a new exception class, a module moved), the
stored runs need not train again: an entry in `equivalences.json` maps the old module digests to the new
ones, and the store re-keys those runs. This module is how such an entry is earned, never written by hand:
each version trains the matrix in its own fresh process (its own `experiments` package on `sys.path`, its
own store and prepared data) and every pair of run files must agree in every dataset's bytes and every
root attribute except those that name the key or the moment (`IGNORED_ATTRS`), the prepared-data cache
address inside `corpus_manifest` (it hashes corpus.py's text; the corpus itself is compared by its sha256)
and, of `kernel_laws`, everything but the laws themselves (the probe's version, the machine's details).

The default matrix is every preset (sweeps: their smoke members), smoke-sized (`LAB_SMOKE=1`), plus the
variants no preset covers: each precision with m, v, grad and master recorded, each optimizer
implementation, untied embeddings, clipping with a warm-up cosine schedule, weight decay, all rows.
Bits depend on the machine's kernels, so the check says "on this machine"; both versions run on the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
IGNORED_ATTRS = ("key", "key_parts", "created", "trained_on")

VARIANTS = [  # (preset, overrides): the code paths the presets leave out, at smoke size
    ("flannel-1", {"precision.dtype": "fp32", "record.tensors": ["W", "m", "v", "grad"]}),
    ("flannel-1", {"precision.dtype": "fp32-master-rne", "record.tensors": ["W", "m", "v", "grad", "master"]}),
    ("flannel-1", {"precision.dtype": "fp32-master-sr", "record.tensors": ["W", "m", "v", "grad", "master"]}),
    ("flannel-1", {"optim.impl": "single", "record.tensors": ["W", "m", "v", "grad", "h_mean"]}),
    ("flannel-1", {"optim.impl": "fused", "record.tensors": ["W", "m", "v"]}),
    ("flannel-1", {"model.tied": False, "record.tensors": ["W", "E"], "record.rows": "all"}),
    ("flannel-1", {"optim.clip": 1.0, "optim.schedule": "cosine", "optim.warmup": 5, "optim.min_lr_ratio": 0.1}),
    ("flannel-1", {"optim.weight_decay": 0.1, "optim.schedule": "linear", "record.steps": {"every": 3}}),
]

_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import experiments
assert experiments.__file__.startswith(sys.argv[1]), experiments.__file__
out = []
for preset, overrides in json.loads(sys.argv[2]):  # only the package's top-level API: any layout
    cfg = experiments.load_config(preset, **overrides)
    runs = experiments.sweep(preset, progress=False, **overrides) if cfg["sweep"] else \
        [experiments.run(preset, progress=False, **overrides)]
    out.extend({"request": [preset, overrides], "member": i, "path": str(r.path)} for i, r in enumerate(runs))
print("RESULT " + json.dumps(out))
"""


def default_matrix() -> list[tuple[str, dict]]:
    from experiments.rig.config import preset_names

    return [(p, {}) for p in preset_names()] + VARIANTS


def export(rev: str, into: Path) -> Path:
    """The `experiments` package as committed at `rev`, unpacked under `into` (returned: the sys.path entry)."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "experiments"],
                              capture_output=True, check=True, timeout=120).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"equivalence: git cannot export {rev}: {e.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def train_all(tree: Path, store: Path, matrix: list[tuple[str, dict]], smoke: bool = True) -> list[dict]:
    """Train `matrix` with the `experiments` package found in `tree`, in a fresh process, into `store`."""
    env = dict(os.environ, LAB_STORE=str(store), TQDM_DISABLE="1", PYTHONPATH=str(tree))
    env.pop("LAB_RUN_LOG", None)
    env.pop("LAB_PROGRESS", None)
    if smoke:
        env["LAB_SMOKE"] = "1"
    else:
        env.pop("LAB_SMOKE", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tree), json.dumps(matrix)], env=env, cwd=str(tree),
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"training under {tree} failed: {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def _attrs(f: h5py.File) -> dict:
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items() if k not in IGNORED_ATTRS}
    if "kernel_laws" in out:  # the laws are content; the probe's version and the machine's details are not
        laws = json.loads(out["kernel_laws"])
        out["kernel_laws"] = {"device": laws.get("device", "cpu"), **{k: laws.get(k) for k in ("arith", "impl", "laws")}}
    if "corpus_manifest" in out:  # its "key" addresses the prepared-data cache, which hashes corpus.py's text
        manifest = json.loads(out["corpus_manifest"])
        manifest.pop("key", None)
        out["corpus_manifest"] = manifest
    return out


def differences(a: Path, b: Path) -> list[str]:
    """Where two run files disagree: datasets (names, dtype, shape, bytes) and root attributes ([] if none)."""
    out = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        if sorted(names_a) != sorted(names_b):
            out.append(f"objects differ: {sorted(set(names_a) ^ set(names_b))}")
        for name in sorted(set(names_a) & set(names_b)):
            da, db = fa[name], fb[name]
            if isinstance(da, h5py.Dataset) != isinstance(db, h5py.Dataset):
                out.append(f"{name}: a dataset in one file only")
            elif isinstance(da, h5py.Dataset):
                if da.dtype != db.dtype or da.shape != db.shape:
                    out.append(f"{name}: {da.dtype}{da.shape} vs {db.dtype}{db.shape}")
                elif da[()].tobytes() != db[()].tobytes():
                    out.append(f"{name}: bytes differ")
        ta, tb = _attrs(fa), _attrs(fb)
        out += [f"attribute {k}: {ta.get(k)!r} vs {tb.get(k)!r}" for k in sorted(set(ta) | set(tb))
                if ta.get(k) != tb.get(k)]
    return out


_DIGESTS = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
try:
    from experiments.store import fingerprint, runs
except ImportError:  # a version from before the rooms (experiments/runs.py)
    from experiments import fingerprint, runs
print(json.dumps({m: fingerprint.digest(s) for m, s in sorted(runs.module_sources().items())}))
"""


def digests_of(tree: Path) -> dict[str, str]:
    """The training-module digests (what run keys hash) of the `experiments` package in `tree`."""
    out = subprocess.run([sys.executable, "-c", _DIGESTS, str(tree)],
                         capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(tree)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(old_tree: Path, new_tree: Path, matrix: list[tuple[str, dict]], work: Path, smoke: bool = True,
          progress=None) -> dict:
    """Train `matrix` under both trees and compare. Returns {"runs", "same", "different": [(run, [diffs])]}."""
    say = progress or (lambda msg: None)
    say(f"training {len(matrix)} configs under the old code ...")
    old = train_all(old_tree, work / "store-old", matrix, smoke)
    say(f"training {len(matrix)} configs under the new code ...")
    new = train_all(new_tree, work / "store-new", matrix, smoke)
    if [(r["request"], r["member"]) for r in old] != [(r["request"], r["member"]) for r in new]:
        raise RuntimeError("the two versions resolved the matrix into different runs (a sweep changed?)")
    different = [(Path(n["path"]).name, d) for o, n in zip(old, new, strict=True)
                 if (d := differences(Path(o["path"]), Path(n["path"])))]
    return {"runs": len(new), "same": len(new) - len(different), "different": different}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.store.equivalence", description=__doc__.split("\n")[0])
    ap.add_argument("rev", help="the committed version to compare the working tree with (e.g. HEAD, a hash)")
    ap.add_argument("--write", action="store_true", help="append the entry to equivalences.json if all agree")
    ap.add_argument("--why", default="", help="one line for the entry: what changed")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lab-equivalence-") as tmp:
        work = Path(tmp)
        old_tree = export(args.rev, work / "old")
        old_d, new_d = digests_of(old_tree), digests_of(ROOT)
        if old_d == new_d:
            print(f"equivalence: {args.rev} and the working tree have the same training fingerprint; "
                  "nothing to declare")
            return 0
        matrix = default_matrix()
        result = check(old_tree, ROOT, matrix, work, progress=lambda m: print(f"equivalence: {m}", flush=True))
    changed = sorted(m for m in set(old_d) | set(new_d) if old_d.get(m) != new_d.get(m))
    print(f"equivalence: {result['same']} of {result['runs']} recordings identical "
          f"(changed modules: {', '.join(changed)})")
    for name, diffs in result["different"]:
        print(f"  {name}: {'; '.join(diffs[:4])}")
    if result["different"]:
        print("equivalence: not equivalent; the change retrains every run it touches")
        return 1
    if args.write:
        from experiments.store.fingerprint import EQUIVALENCES

        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.rev], capture_output=True, text=True,
                             check=True).stdout.strip()
        entries = json.loads(EQUIVALENCES.read_text()) if EQUIVALENCES.exists() else []
        entries.append({"from": old_d, "to": new_d, "from_commit": rev, "changed": changed, "why": args.why,
                        "checked": f"{result['runs']} smoke-sized runs byte-identical (python -m "
                                   f"experiments.store.equivalence {rev[:12]})"})
        EQUIVALENCES.write_text(json.dumps(entries, indent=1) + "\n")
        print(f"equivalence: entry appended to {EQUIVALENCES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
