"""Declared equivalences: a training-code change that keeps every recording re-keys stored runs instead of
retraining them, and the checker that earns such a declaration tells equal code from different code."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

import experiments
from experiments.rig import train as T
from experiments.store import equivalence as EQ
from experiments.store import fingerprint as FP
from experiments.store import runs as R

TRAIN_SRC = (R.PACKAGE_DIR / "rig" / "train.py").read_text()
REFACTORED = TRAIN_SRC + "\n\nclass NewlyDeclared(Exception):\n    pass\n"  # changes the normal form only


def _edit_train(monkeypatch, text: str) -> None:
    real = R.module_sources
    monkeypatch.setattr(R, "module_sources", lambda package_dir=R.PACKAGE_DIR: {**real(package_dir), "rig.train": text})


def _content(path) -> str:
    with h5py.File(path, "r") as f:
        return str(f.attrs["content_sha256"])


def _digests(sources: dict) -> dict:
    return {m: FP.digest(s) for m, s in sorted(sources.items())}


def test_a_declared_equivalence_rekeys_the_stored_run_instead_of_training_it(store, tiny, monkeypatch):
    first = experiments.run(tiny(), progress=False)
    digest_before = _content(first.path)
    before = _digests(R.module_sources())
    _edit_train(monkeypatch, REFACTORED)
    after = _digests(R.module_sources())
    (row,) = R.stale_runs()  # undeclared: the run would train again
    assert row["changed"] == ["rig/train.py"]

    monkeypatch.setattr(FP, "equivalences", lambda path=None: ({"from": before, "to": after},))
    assert R.stale_runs() == []
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a declared-equivalent run was trained again"))
    again = experiments.run(tiny(), progress=False)
    assert again.key != first.key and again.path.exists() and not first.path.exists()
    assert again.key_parts["sources"] == after and again.key == R.compute_key(again.config, R._prepare(
        again.config, store))[0]
    assert _content(again.path) == digest_before  # the same recording, under its new key


def test_a_render_plan_rekeys_before_it_counts_what_to_train(store, tiny, monkeypatch):
    cfg = tiny(name="plan-equivalent")
    first = experiments.run(cfg, progress=False)
    before = _digests(R.module_sources())
    _edit_train(monkeypatch, REFACTORED)
    monkeypatch.setattr(FP, "equivalences", lambda path=None: ({"from": before, "to": _digests(R.module_sources())},))
    monkeypatch.setattr(R, "_train_children", lambda *a, **k: pytest.fail("the plan trained a re-keyable run"))
    out = io.StringIO()
    summary = R.train_planned([{"config": cfg}], out=out)
    assert summary["stored"] == 1 and summary["planned"] == 1
    assert "re-keyed 1 stored runs" in out.getvalue() and not first.path.exists()


def test_an_equivalence_applies_to_the_whole_set_and_chains(monkeypatch):
    a, b, c = {"train": "a", "record": "r"}, {"train": "b", "record": "r"}, {"train": "c", "record": "r2"}
    monkeypatch.setattr(FP, "equivalences", lambda path=None: ({"from": a, "to": b}, {"from": b, "to": c},
                                                              {"from": c, "to": b}))
    assert FP.translate(a) == c or FP.translate(a) == b  # a cycle ends, never loops
    assert FP.translate({"train": "a"}) == {"train": "a"}  # a subset is not the checked code
    assert FP.translate({"train": "a", "record": "other"}) == {"train": "a", "record": "other"}
    monkeypatch.setattr(FP, "equivalences", lambda path=None: ({"from": a, "to": b}, {"from": b, "to": c}))
    assert FP.translate(a) == c


def test_the_equivalences_file_is_validated(tmp_path):
    bad = tmp_path / "equivalences.json"
    bad.write_text('[{"from": {"train": "x"}}]')
    with pytest.raises(ValueError, match="entry 0 needs 'from' and 'to'"):
        FP.equivalences.__wrapped__(bad)
    assert FP.equivalences.__wrapped__(tmp_path / "absent.json") == ()


def _tree(tmp_path, name: str, train_text: str):
    tree = tmp_path / name
    shutil.copytree(R.PACKAGE_DIR, tree / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "experiments" / "rig" / "train.py").write_text(train_text)
    return tree


@pytest.mark.slow
def test_the_checker_tells_equal_code_from_code_that_changes_a_recording(tmp_path, tiny):
    cfg = tiny(name="checked", optim={"schedule": "linear"})
    matrix = [(cfg, {}), (cfg, {"precision.dtype": "fp32-master-sr", "record.tensors": ["W", "master", "m"]})]
    here = _tree(tmp_path, "here", TRAIN_SRC)
    same = EQ.check(here, _tree(tmp_path, "refactored", REFACTORED), matrix, tmp_path / "w1", smoke=False)
    assert same == {"runs": 2, "same": 2, "different": []}
    # the learning rate one step late: every W after step 1 differs
    changed = EQ.check(here, _tree(tmp_path, "changed", TRAIN_SRC.replace("step - 1", "step - 2", 1)), matrix,
                       tmp_path / "w2", smoke=False)
    assert changed["runs"] == 2 and changed["same"] == 0
    assert all(any(d.startswith(("lr:", "W:")) for d in diffs) for _, diffs in changed["different"])


@pytest.mark.slow
def test_the_newest_declared_equivalence_holds_on_this_machine(tmp_path, tiny, sub_env, monkeypatch):
    """The reference-equivalence test of a migration: the code before the newest entry and today's code make
    byte-identical recordings here (a small matrix; the entry itself was earned on every preset), and a store
    the old code wrote is taken over by today's without training: `lab runs` as users run it, then `run`."""
    entries = FP.equivalences()
    if not entries:
        pytest.skip("no equivalence declared")
    entry = entries[-1]
    if entry["to"] != _digests(R.module_sources()):
        pytest.skip("the training code changed since the newest entry: it is history, checked when declared")
    rev = entry["from_commit"]
    if subprocess.run(["git", "-C", str(EQ.ROOT), "cat-file", "-e", f"{rev}^{{commit}}"]).returncode != 0:
        pytest.skip(f"{rev[:12]} is not in this clone's history")
    old = EQ.export(rev, tmp_path / "old")
    assert EQ.digests_of(old) == entry["from"]
    cfg = tiny(name="migrated", optim={"schedule": "linear", "clip": 0.05})
    matrix = [(cfg, {}), (cfg, {"precision.dtype": "fp32-master-sr", "record.tensors": ["W", "master", "m", "v"]}),
              (cfg, {"precision.dtype": "fp32", "optim.impl": "single", "record.tensors": ["W", "grad"]})]
    result = EQ.check(old, EQ.ROOT, matrix, tmp_path / "work", smoke=False)
    assert result["different"] == [] and result["runs"] == 3

    old_store = tmp_path / "work" / "store-old"
    before = {p.name: _content(p) for p in old_store.glob("*.h5")}
    lab = shutil.which("lab", path=str(Path(sys.executable).parent))
    stale = subprocess.run([lab, "runs", "--stale"], env=sub_env(old_store), capture_output=True, text=True,
                           timeout=300)
    assert stale.returncode == 0 and "no stale runs" in stale.stdout, stale.stdout + stale.stderr
    rekey = subprocess.run([lab, "runs", "--rekey"], env=sub_env(old_store), capture_output=True, text=True,
                           timeout=300)
    assert rekey.returncode == 0 and "re-keyed 3 run(s)" in rekey.stdout, rekey.stdout + rekey.stderr
    monkeypatch.setenv("LAB_STORE", str(old_store))
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a run of the old code was trained again"))
    runs = [experiments.run(c, progress=False, **o) for c, o in matrix]
    assert sorted(_content(r.path) for r in runs) == sorted(before.values())
    assert not set(before) & {p.name for p in old_store.glob("*.h5")}  # every file carries its new key


def test_a_rekey_that_fails_midway_keeps_the_old_run_whole(store, tiny, monkeypatch):
    """A full disk while the re-keyed copy is written: the old run stays as it was, no temp file is left, and
    the plan says it could not re-key (the document that needs the run then trains it, or says why not)."""
    import errno

    cfg = tiny(name="rekey-fails")
    first = experiments.run(cfg, progress=False)
    before, digest = _digests(R.module_sources()), _content(first.path)
    _edit_train(monkeypatch, REFACTORED)
    monkeypatch.setattr(FP, "equivalences", lambda path=None: ({"from": before, "to": _digests(R.module_sources())},))

    def full_disk(src, dst):
        with open(dst, "wb") as out:
            out.write(open(src, "rb").read(1000))
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(FP.shutil, "copyfile", full_disk)
    monkeypatch.setattr(R, "_train_children", lambda todo, jobs, steps, out: (0, []))  # plan only
    out = io.StringIO()
    R.train_planned([{"config": cfg}], out=out)
    assert "could not re-key stored runs" in out.getvalue() and "No space left" in out.getvalue()
    assert [p.name for p in store.glob("*.h5*")] == [first.path.name] and _content(first.path) == digest
