"""The semantic training fingerprint: comments and docstrings keep keys, code changes them; stale and rekey."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import pytest

import experiments
from experiments.rig import train as T
from experiments.store import fingerprint as FP
from experiments.store import runs as R

TRAIN_SRC = (R.PACKAGE_DIR / "rig" / "train.py").read_text()


def test_comments_docstrings_and_layout_keep_the_fingerprint():
    edited = TRAIN_SRC.replace('"""The training loop', '"""The training loop (a docstring edit)', 1)
    edited = edited.replace("\ndef ", "\n# a new comment line\n\n\ndef ", 3)
    assert edited != TRAIN_SRC
    assert FP.digest(edited) == FP.digest(TRAIN_SRC)
    assert FP.text_digest(edited) != FP.text_digest(TRAIN_SRC)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("step - 1", "step - 2", 1),  # a computation
    lambda s: s + "\nUNUSED = 1\n",  # even code training never reaches: reachability is not sound in Python
    lambda s: s.replace('"""The learning rate of optimizer step', '"""x"""\n    _ = 0\n    """The learning rate', 1),
])
def test_any_code_change_changes_it(edit):
    assert FP.digest(edit(TRAIN_SRC)) != FP.digest(TRAIN_SRC)


def test_a_plan_parses_each_module_once_however_many_runs_it_keys(monkeypatch):
    """Keying a run digests every training module; a plan keys dozens of runs (and re-key checks every stored
    one) against the same texts, so each text is parsed once per process, not once per run."""
    parsed = []
    real = FP.normal_form
    monkeypatch.setattr(FP, "normal_form", lambda source: parsed.append(source) or real(source))
    FP.digest.cache_clear()
    sources = R.module_sources()
    first = [FP.digest(s) for s in sources.values()]
    assert len(parsed) == len(set(sources.values()))
    assert [FP.digest(s) for s in sources.values()] * 20 == first * 20 and len(parsed) == len(set(sources.values()))
    assert FP.digest(TRAIN_SRC + "\nX = 1\n") != FP.digest(TRAIN_SRC)  # a new text is parsed: no stale answer
    assert len(parsed) == len(set(sources.values())) + 1


def _fake_edit(monkeypatch, module: str, new_text: str):
    real = R.module_sources

    def patched(package_dir=R.PACKAGE_DIR):
        out = real(package_dir)
        out[module] = new_text
        return out

    monkeypatch.setattr(R, "module_sources", patched)


def test_a_comment_edit_retrains_nothing_and_a_code_edit_is_stale(store, tiny, monkeypatch):
    first = experiments.run(tiny(), progress=False)
    _fake_edit(monkeypatch, "rig.train", TRAIN_SRC + "\n# only a comment\n")
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a comment edit retrained"))
    assert experiments.run(tiny(), progress=False).path == first.path
    assert R.stale_runs() == []
    _fake_edit(monkeypatch, "rig.train", TRAIN_SRC.replace("step - 1", "step - 2", 1))
    (row,) = R.stale_runs()
    assert row["key"] == first.key and row["changed"] == ["rig/train.py"]


def test_rekey_migrates_runs_keyed_by_source_text(store, tiny, monkeypatch):
    run = experiments.run(tiny(), progress=False)
    # make it look like a run from before the fingerprint: text hashes, no scheme, another key
    with h5py.File(run.path, "r+") as f:
        parts = json.loads(f.attrs["key_parts"])
        parts.pop("fingerprint")
        parts["sources"] = {m: FP.text_digest(s) for m, s in R.module_sources().items()}
        f.attrs["key_parts"] = json.dumps(parts)
        f.attrs["key"] = "0123456789abcdef"
    old = run.path.rename(run.path.with_name("tiny-0123456789abcdef.h5"))
    (moved,) = R.rekey_runs(dry_run=True)
    assert moved == (old, run.path) and old.exists()
    assert R.rekey_runs() == [(old, run.path)]
    assert not old.exists() and run.path.exists()
    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("re-keyed run was trained again"))
    again = experiments.run(tiny(), progress=False)
    assert again.key == run.key and again.key_parts["fingerprint"] == FP.SCHEME


def test_lab_runs_stale_and_rekey_from_the_installed_command(store, tiny, sub_env):
    experiments.run(tiny(), progress=False)
    lab = shutil.which("lab", path=str(__import__("pathlib").Path(sys.executable).parent))
    out = subprocess.run([lab, "runs", "--stale"], env=sub_env(store), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no stale runs" in out.stdout and "Traceback" not in out.stderr
    out = subprocess.run([lab, "runs", "--rekey", "--dry-run"], env=sub_env(store), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "would re-key 0 run(s)" in out.stdout


def test_a_render_plan_warns_before_retraining_stale_runs(store, tiny, monkeypatch):
    import io

    cfg = tiny(name="plan-stale")
    experiments.run(cfg, progress=False)
    _fake_edit(monkeypatch, "rig.train", TRAIN_SRC.replace("step - 1", "step - 2", 1))
    monkeypatch.setattr(R, "STALE_WARNING", 0)
    monkeypatch.setattr(R, "_train_children", lambda todo, jobs, steps, out: (len(todo), []))  # plan only
    out = io.StringIO()
    summary = R.train_planned([{"config": cfg}], out=out)
    assert summary["planned"] == 1 and summary["stored"] == 0
    assert "1 stored runs no longer match the training code (changed: rig/train.py)" in out.getvalue()
