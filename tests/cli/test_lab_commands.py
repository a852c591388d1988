"""Every `lab` subcommand once as users run it: the installed script in a fresh interpreter, no test imports.

tests/rig and tests/pages drive the same handlers in-process; this catches what only a real start shows
(the console script, imports a test happened to make first, argument wiring in lab.cli). `lab blackholes`
has its own file: tests/lattice/test_blackholes_as_users_run_it.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LAB = Path(sys.executable).with_name("lab")
# the rig tests' tiny model, as --set overrides of a real preset that records what `lab verify` replays
TINY = ["corpus.train_bytes=60000", "corpus.tokenizer_bytes=60000", "tokenizer.vocab_size=500", "model.d_model=16",
        "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.context=16", "train.steps=12",
        "train.batch_size=4", "train.seq_len=16", "train.threads=1", "train.device=cpu"]


def lab(*args, cwd: Path, store: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAB_SMOKE", "LAB_RUN_LOG")}
    env.update(LAB_STORE=str(store), TQDM_DISABLE="1")
    r = subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _project(root: Path) -> Path:
    (root / "log").mkdir(parents=True)
    (root / "_quarto.yml").write_text("project:\n  type: website\n  output-dir: site\n  render:\n    - index.qmd\n"
                                      "    - log/*.qmd\nwebsite:\n  title: \"Smoke Lab\"\n")
    (root / "index.qmd").write_text('---\ntitle: "Home"\n---\n\nHello.\n')
    return root


def test_train_runs_show_verify_gc(tmp_path):
    store, proj = tmp_path / "store", _project(tmp_path / "proj")
    r = lab("train", "flannel-7", *[a for kv in TINY for a in ("--set", kv)], cwd=proj, store=store)
    assert r.returncode == 0, r.stderr
    name, key, path = r.stdout.split()
    assert name == "flannel-7" and Path(path) == store / f"flannel-7-{key}.h5" and Path(path).is_file()

    r = lab("runs", cwd=proj, store=store)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:3] == ["flannel-7", key, "12"]
    r = lab("show", key[:8], cwd=proj, store=store)
    assert r.returncode == 0 and "/grad" in r.stdout and '"steps": 12' in r.stdout
    r = lab("verify", "flannel-7", cwd=proj, store=store)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("bit-exact"), r.stdout
    r = lab("verify", "flannel-7", "--hyper", "beta2=0.998", cwd=proj, store=store)
    assert r.returncode == 1  # the negative control must mismatch
    r = lab("gc", "--dry-run", cwd=proj, store=store)  # nothing rendered uses the run
    assert r.returncode == 0 and f"would delete {path}" in r.stdout and Path(path).is_file()
    r = lab("show", "nothing-like-this", cwd=proj, store=store)
    assert r.returncode == 2 and r.stderr.startswith("lab show: error:") and r.stderr.count("\n") == 1


def test_new_and_render(tmp_path):
    proj = _project(tmp_path / "proj")
    r = lab("new", "Smoke entry", "--date", "2026-01-02 03:04", cwd=proj, store=tmp_path / "store")
    entry = proj / "log" / "2026-01-02-0304-smoke-entry.qmd"
    assert r.returncode == 0 and r.stdout.strip() == str(entry) and entry.is_file()
    r = lab("render", "-j", "1", cwd=proj, store=tmp_path / "store")
    assert r.returncode == 0, r.stderr
    assert "1 executed" in r.stdout and "0 failed" in r.stdout
    assert (proj / "site" / "index.html").is_file() and any((proj / "site" / "log").rglob("index.html"))


def test_every_group_fails_one_way(tmp_path):
    """The convention of lab/cli.py, per command group: bad input is exit 2 and one line,
    `lab <command>: error: ...`, whichever package the command drives."""
    outside, store = tmp_path / "outside", tmp_path / "store"
    outside.mkdir()
    not_a_project = "not inside a lab project"
    cases = [
        (["render"], "render", not_a_project),
        (["render", "--cluster", "bad::"], "render", "--cluster 'bad::'"),
        (["new", "An entry"], "new", not_a_project),
        (["preview", "--port", "0"], "preview", not_a_project),
        (["gc"], "gc", not_a_project),
        (["train", "no-such-preset"], "train", "no preset named 'no-such-preset'"),
        (["cluster", "start", "--workers", "0"], "cluster", "--workers: expected at least 1, got 0"),
        (["blackholes", str(tmp_path / "nothing.gguf")], "blackholes", "nothing.gguf: file not found"),
    ]
    for argv, command, needle in cases:
        r = lab(*argv, cwd=outside, store=store)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert r.stderr.startswith(f"lab {command}: error: ") and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert needle in r.stderr, (argv, r.stderr)
    r = lab("new", "An entry", "--date", "yesterday", cwd=_project(tmp_path / "proj"), store=store)
    assert r.returncode == 2 and r.stderr.startswith("lab new: error: date 'yesterday': ") and r.stderr.count("\n") == 1


def test_cluster_start_stops_on_ctrl_c_and_sigterm(tmp_path):
    """`lab cluster start` runs until stopped: Ctrl-C exits 130, `kill PID` 143, each after closing the cluster."""
    import signal

    import pytest

    pytest.importorskip("distributed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAB_SMOKE", "LAB_RUN_LOG")}
    for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        p = subprocess.Popen([str(LAB), "cluster", "start", "--workers", "1", "--port", "0"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().startswith("scheduler "), p.stderr.read()
            p.send_signal(sig)
            assert p.wait(timeout=60) == status
            err = p.stderr.read()
            assert "lab cluster: stopped" in err and "Traceback" not in err, err
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
