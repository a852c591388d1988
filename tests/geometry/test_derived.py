"""The derived-results cache (experiments/store/derived.py) on a tiny real run: reuse across processes,
dependency-exact invalidation, atomic writes, gc, and a faithful round trip of every result the pages use."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

import experiments
from experiments.cloud import epochs, geometry, shell
from experiments.store import derived, runs
from experiments.store.recording import Run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding one smoke Flannel 1 that records every row and h_mean (what the pages read)."""
    path = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_SMOKE", "1")
        mp.setenv("LAB_STORE", str(path))
        mp.setenv("TQDM_DISABLE", "1")
        mp.delenv("LAB_RUN_LOG", raising=False)
        experiments.run("flannel-1", progress=False, **{"record.rows": "all", "record.tensors": ["W", "h_mean"]})
    return path


@pytest.fixture
def run(store, tmp_path, monkeypatch):
    """The run, copied into a store of its own (no derived results yet)."""
    monkeypatch.setenv("LAB_DERIVED", "1")
    dest = tmp_path / "store"
    dest.mkdir()
    src = next(store.glob("*.h5"))
    shutil.copyfile(src, dest / src.name)
    derived.stats.clear()
    return Run(dest / src.name)


def entries(run) -> list[Path]:
    return sorted((run.path.parent / "derived").rglob("*.npz"))


def same(a, b, where="result") -> None:
    """Equal in type, and for arrays in dtype, shape and bits (NaN and -0.0 included)."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(a):
        assert vars(a).keys() == vars(b).keys(), where
        for k in vars(a):
            same(getattr(a, k), getattr(b, k), f"{where}.{k}")
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------------------------------------------
# every result type the epoch pages use, through the real analyses


PAGE_CALLS = {
    "run_cloud": lambda r: geometry.run_cloud(r),
    "run_cloud of token ids": lambda r: geometry.run_cloud(r, rows=geometry.populations(r)["dead"]),
    "dead_track": lambda r: epochs.dead_track(r),
    "population_tracks": lambda r: geometry.population_tracks(r),
    "run_shell": lambda r: shell.run_shell(r),
    "run_cloud_and_shell": lambda r: shell.run_cloud_and_shell(r),
    "radial_split": lambda r: shell.radial_split(r, steps=range(1, 13)),
}


@pytest.mark.parametrize("name", PAGE_CALLS)
def test_page_results_round_trip(run, monkeypatch, name):
    call = PAGE_CALLS[name]
    monkeypatch.setenv("LAB_DERIVED", "0")
    fresh = call(run)
    assert not entries(run) and derived.stats["disabled"] == 1  # switched off: nothing read or written
    monkeypatch.setenv("LAB_DERIVED", "1")
    stored = call(run)
    read = call(run)
    assert derived.stats["miss"] == 1 and derived.stats["stored"] == 1 and derived.stats["hit"] == 1
    same(fresh, stored)
    same(fresh, read)
    assert len(entries(run)) == 1 and entries(run)[0].parent.name == run.key


def test_derived_values_of_a_read_result_match(run):
    """Methods of the read-back objects (what pages print) give the computed numbers."""
    computed = shell.run_shell(run)
    read = shell.run_shell(run)
    assert derived.stats["hit"] == 1
    same(computed.summary("origin"), read.summary("origin"))
    same(computed.dispersion(), read.dispersion())
    same(computed.per_step("centroid"), read.per_step("centroid"))
    track = geometry.run_cloud(run)
    again = geometry.run_cloud(run)
    assert derived.stats["hit"] == 2
    assert geometry.liftoff(track) == geometry.liftoff(again)
    same(geometry.centroid_path(track).summary(), geometry.centroid_path(again).summary())


def test_encoding_edge_cases_round_trip():
    value = {"nan": float("nan"), "neg0": -0.0, "inf": -float("inf"), "big": 2**80, "flag": True, "none": None,
             "text": "ρ ≈ 1", 3: "int key", (1, 2): ["tuple key"], "f32": np.float32(0.1), "b": np.bool_(True),
             "i8": np.arange(5, dtype=np.int8), "u": np.array(["a", "bc"]), "empty": [], "t": (1.5, 2.5),
             "ints": [1, 2, 3], "mixed": [1, 2.0, None], "bools": [True, False], "F": np.asfortranarray(np.eye(3)),
             "0d": np.array(7.0), "c": np.array([1 + 2j]), "f32 array": np.array([0.1, np.nan, -0.0], dtype=np.float32),
             "u64": np.array([2**64 - 1], dtype=np.uint64)}
    arrays: dict = {}
    tree = derived.encode(value, arrays, set())
    text = json.dumps(tree)  # what the entry stores
    same(value, derived.decode(json.loads(text), arrays))


class Outside:
    pass


@pytest.mark.parametrize("bad", [
    np.array([object()]), np.zeros(2, dtype=[("a", "f8")]), {1, 2}, Outside(), np.ma.masked_array([1.0]),
    [np.zeros(1), lambda: 0], type("Sub", (float,), {})(1.0),
], ids=["object-array", "structured", "set", "object", "masked", "callable-in-list", "float-subclass"])
def test_unserialisable_results_are_refused(bad):
    with pytest.raises(derived.Unserialisable):
        derived.encode(bad, {}, set())


def test_bf16_array_is_refused():
    import ml_dtypes

    with pytest.raises(derived.Unserialisable):
        derived.encode(np.zeros(3, dtype=ml_dtypes.bfloat16), {}, set())


# ---------------------------------------------------------------------------------------------------------
# an analysis package of our own: refusals through the decorator, in process


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A package `dtl_probe` with cached analyses (imported from tmp_path)."""
    pkg = tmp_path / "pkg" / "dtl_probe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "analysis.py").write_text(textwrap.dedent("""
        import numpy as np
        from experiments.store.derived import cached

        calls = []

        class Opaque:
            def __init__(self, v):
                self.v = v

        @cached
        def opaque(run):
            calls.append("opaque")
            return Opaque(run.steps.copy())

        @cached
        def steps(run, scale=1.0):
            calls.append("steps")
            return run.steps * scale

        @cached
        def no_run(n):
            calls.append("no_run")
            return np.arange(n)
    """))
    monkeypatch.syspath_prepend(str(pkg.parent))
    import importlib

    for m in [m for m in sys.modules if m.startswith("dtl_probe")]:
        del sys.modules[m]
    module = importlib.import_module("dtl_probe.analysis")
    yield module
    for m in [m for m in sys.modules if m.startswith("dtl_probe")]:
        del sys.modules[m]


def test_unserialisable_result_is_computed_every_time_without_error(run, probe):
    a, b = probe.opaque(run), probe.opaque(run)
    assert isinstance(a, probe.Opaque) and np.array_equal(a.v, b.v)
    assert probe.calls == ["opaque", "opaque"] and not entries(run)
    assert derived.stats["unserialisable"] == 2


def test_uncachable_arguments_compute_without_caching(run, probe):
    same(probe.steps(run, scale=np.float32(2)), run.steps * np.float32(2))
    probe.steps(run, scale=Fraction(2))  # an argument the cache cannot identify
    probe.no_run(3)  # no run to key it to
    probe.no_run(3)
    assert probe.calls == ["steps", "steps", "no_run", "no_run"]
    assert derived.stats["uncached-arguments"] == 3 and len(entries(run)) == 1
    probe.steps(run, scale=np.float32(2))
    probe.steps(run, scale=2.0)  # a Python float is another argument than a float32: its own entry
    assert probe.calls[4:] == ["steps"] and len(entries(run)) == 2


def test_module_edited_after_import_is_not_cached(run, probe):
    """The loaded code is not the file's: a result must not be filed under the new file's digest."""
    src = Path(probe.__file__)
    src.write_text(src.read_text() + "\n\nEDITED = 1\n")
    probe.steps(run)
    probe.steps(run)
    assert probe.calls == ["steps", "steps"] and not entries(run)


# ---------------------------------------------------------------------------------------------------------
# separate processes: two documents, code edits, killed writes


SCRIPT = """
import json, sys
from experiments.store import derived
from experiments.cloud import geometry
from experiments.store.recording import Run
track = geometry.run_cloud(Run(sys.argv[1]))
print(json.dumps({"stats": dict(derived.stats), "r": track.r_origin.tobytes().hex()}))
"""


def in_process(run_path: Path, package_root: Path = ROOT, script: str = SCRIPT, check: bool = True):
    env = {**os.environ, "PYTHONPATH": str(package_root), "LAB_DERIVED": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(run_path)], capture_output=True, text=True, env=env,
                          cwd=package_root)
    if not check:
        return done
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reused_across_processes(run):
    first, second = in_process(run.path), in_process(run.path)
    assert first["stats"] == {"miss": 1, "stored": 1}
    assert second["stats"] == {"hit": 1}
    assert first["r"] == second["r"] == geometry.run_cloud.uncached(run).r_origin.tobytes().hex()


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the `experiments` package whose source the test may edit."""
    root = tmp_path / "code"
    shutil.copytree(ROOT / "experiments", root / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_recomputed_exactly_when_the_analysis_code_changes(run, package_copy):
    pkg = package_copy / "experiments"

    def stats():
        return in_process(run.path, package_copy)["stats"]

    assert stats() == {"miss": 1, "stored": 1}
    assert stats() == {"hit": 1}
    edit(pkg / "cloud" / "geometry.py", '"""Geometry of a token cloud', '"""Edited docstring. Geometry of a token cloud')
    edit(pkg / "cloud" / "geometry.py", "def row_norms(x", "# a comment\ndef row_norms(x")
    assert stats() == {"hit": 1}, "comments and docstrings are not code"
    edit(pkg / "lattice" / "blackholes.py", "import numpy as np", "import numpy as np\nUNRELATED = 1")
    assert stats() == {"hit": 1}, "geometry does not import blackholes"
    edit(pkg / "cloud" / "geometry.py", "def row_norms(x", "UNUSED = 2\n\n\ndef row_norms(x")
    assert stats() == {"miss": 1, "stored": 1}, "the analysis module changed"
    edit(pkg / "lattice" / "lifecycle.py", "import numpy as np", "import numpy as np\nUNUSED = 3")
    assert stats() == {"miss": 1, "stored": 1}, "a module geometry imports changed"
    edit(pkg / "store" / "recording.py", "import numpy as np", "import numpy as np\nUNUSED = 4")
    assert stats() == {"miss": 1, "stored": 1}, "the reader of the run changed"
    assert len(entries(run)) == 1, "older versions of the same call are replaced"


def test_recomputed_when_the_run_changes(run, tmp_path):
    assert in_process(run.path)["stats"] == {"miss": 1, "stored": 1}
    other_key = "0123456789abcdef"
    other = run.path.with_name(f"{run.name}-{other_key}.h5")
    shutil.copyfile(run.path, other)
    with h5py.File(other, "r+") as f:
        f.attrs["key"] = other_key
    assert in_process(other)["stats"] == {"miss": 1, "stored": 1}
    assert (run.path.parent / "derived" / other_key).is_dir()
    with h5py.File(run.path, "r+") as f:  # the same key, trained again (a damaged run deleted and retrained)
        f.attrs["created"] = "2099-01-01T00:00:00+00:00"
    assert in_process(run.path)["stats"] == {"miss": 1, "stored": 1}


KILLED = """
import os, signal, sys
import numpy as np
from experiments.cloud import geometry
from experiments.store.recording import Run

def die_mid_write(file, **arrays):  # half an archive on disk, then the process is killed
    file.write(b"PK\\x03\\x04" + bytes(4096))
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = die_mid_write
geometry.run_cloud(Run(sys.argv[1]))
"""


def test_killed_write_leaves_no_complete_entry(run):
    done = in_process(run.path, script=KILLED, check=False)
    assert done.returncode == -9, done.stderr
    derived_dir = run.path.parent / "derived"
    assert not entries(run)
    leftovers = sorted(derived_dir.rglob("*.tmp-*"))
    assert len(leftovers) == 1
    assert in_process(run.path)["stats"] == {"miss": 1, "stored": 1}
    assert derived.collect(run.path.parent, {run.key}) == leftovers  # the dead writer's file goes
    assert not leftovers[0].exists() and len(entries(run)) == 1


def test_damaged_entry_is_recomputed(run):
    geometry.run_cloud(run)
    entry = entries(run)[0]
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    same(geometry.run_cloud(run), geometry.run_cloud.uncached(run))
    assert derived.stats["miss"] == 2 and derived.stats["stored"] == 2
    geometry.run_cloud(run)
    assert derived.stats["hit"] == 1


# ---------------------------------------------------------------------------------------------------------
# gc


def test_gc_removes_derived_results_of_deleted_runs(run):
    other_key = "fedcba9876543210"
    other = run.path.with_name(f"{run.name}-{other_key}.h5")
    shutil.copyfile(run.path, other)
    with h5py.File(other, "r+") as f:
        f.attrs["key"] = other_key
    geometry.run_cloud(run)
    geometry.run_cloud(Run(other))
    both = run.path.parent / "derived" / f"{min(run.key, other_key)}+{max(run.key, other_key)}"
    both.mkdir()  # an entry of an analysis of both runs
    (both / "x.npz").write_bytes(b"")
    store = run.path.parent

    planned = runs.gc([run.key], dry_run=True, store=store)
    assert store / "derived" / other_key in planned and both in planned and other.exists()
    deleted = runs.gc([run.key], store=store)
    assert other in deleted and store / "derived" / other_key in deleted and both in deleted
    assert not other.exists() and not (store / "derived" / other_key).exists() and not both.exists()
    assert [p.parent.name for p in entries(run)] == [run.key]  # the kept run's results stay
