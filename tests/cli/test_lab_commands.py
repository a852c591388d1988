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
