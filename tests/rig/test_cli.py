"""`lab train | runs | show | gc` in-process, through `lab.cli.main` (what the console script calls), so a
test can stop the training half-way or fill the disk; tests/cli runs the installed command itself."""

from __future__ import annotations

import json

import pytest
import yaml

import publish.cache
from experiments.rig import config as C
from experiments.rig.record import Recorder
from lab.cli import main as lab_main


@pytest.fixture
def lab(store, tiny, tmp_path, monkeypatch):
    presets = tmp_path / "configs"
    presets.mkdir()
    cfg = tiny()
    del cfg["name"]
    (presets / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(C, "CONFIG_DIR", presets)
    # `lab gc` asks the document cache of the project it runs in which runs rendered documents used
    project = tmp_path / "project"
    project.mkdir()
    (project / "_quarto.yml").write_text("project:\n  type: website\n")
    monkeypatch.chdir(project)
    used: set[str] = set()
    asked = []
    monkeypatch.setattr(publish.cache, "used_run_keys", lambda root: asked.append(root) or set(used))

    def main(*argv: str) -> int:
        return lab_main(list(argv))

    main.used, main.asked, main.project = used, asked, project
    return main


def test_train_runs_show_gc(lab, store, capsys):
    assert lab("train", "tiny", "--set", "optim.lr=2e-3") == 0
    out = capsys.readouterr().out
    name, key, path = out.split()[:3]
    assert name == "tiny" and path.endswith(f"tiny-{key}.h5")
    assert lab("train", "tiny", "--set", "optim.lr=2e-3") == 0  # stored: returns at once
    assert capsys.readouterr().out.split()[1] == key
    assert lab("runs") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "key", "steps", "size", "status", "created", "trained", "on"]
    assert table[1].split()[:3] == ["tiny", key, "12"] and "complete" in table[1]
    assert table[1].split()[-1] == __import__("socket").gethostname()  # the machine that trained it
    assert lab("runs", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["key"] == key
    assert lab("show", key[:8]) == 0
    shown = capsys.readouterr().out
    assert '"lr": 0.002' in shown and "/W" in shown and "bfloat16" in shown and "/loss" in shown
    assert f"trained on {__import__('socket').gethostname()}: " in shown and " cores, torch " in shown
    assert lab("gc", "--dry-run") == 0
    assert "would delete" in capsys.readouterr().out and (store / path.split("/")[-1]).exists()
    assert lab.asked == [lab.project]  # the project around the current folder
    lab.used.add(key)
    assert lab("gc") == 0 and (store / path.split("/")[-1]).exists()
    lab.used.clear()
    # No document uses any run (an empty document cache): refuse rather than wipe the store.
    assert lab("gc") == 2 and (store / path.split("/")[-1]).exists()
    err = capsys.readouterr().err
    assert err.startswith("lab gc: error: no rendered document uses any run") and "nothing deleted" in err
    assert err.count("\n") == 1
    assert lab("gc", "--all") == 0 and not (store / path.split("/")[-1]).exists()


def test_errors_are_one_line_and_exit_2(lab, capsys):
    assert lab("train", "tiny", "--set", "optim.lr=-1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab train: error: optim.lr: got -1 (allowed: a number > 0)") and "\n" not in err
    assert lab("train", "missing") == 2
    assert "no preset named 'missing'" in capsys.readouterr().err
    assert lab("train", "tiny", "--set", "oops") == 2
    assert lab("show", "nothing") == 2


def test_ctrl_c_removes_the_temp_file_and_exits_130(lab, store, monkeypatch, capsys):
    real = Recorder.write_step

    def interrupted(self, step, arrays):
        if step == 4:
            raise KeyboardInterrupt
        return real(self, step, arrays)

    monkeypatch.setattr(Recorder, "write_step", interrupted)
    assert lab("train", "tiny") == 130
    assert "lab train: interrupted; tiny was not stored (temporary file removed)" in capsys.readouterr().err
    assert [p for p in store.iterdir() if ".h5" in p.name] == []


def test_full_disk_while_caching_data_names_the_file(lab, store, capsys, monkeypatch):
    import errno

    from experiments.store import runs
    def full(cfg, store_path):
        raise OSError(errno.ENOSPC, "No space left on device", str(store_path / "data" / "corpus-abc.txt"))

    monkeypatch.setattr(runs, "_prepare", full)
    assert lab("train", "tiny") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab train: error: ") and "corpus-abc.txt" in err and "No space left" in err
    assert "\n" not in err and not list(store.glob("*.h5"))
