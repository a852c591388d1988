"""Every failure of a `lab` command is one line naming the key, file or device: no traceback reaches the user.

Each case runs the real `lab` console script as a subprocess, as a user would.
"""

from __future__ import annotations

import os
import textwrap

import experiments

from .test_integrity import lab, one_line


def test_nan_learning_rate_names_the_key(tmp_path, sub_env):
    out = lab(tmp_path, sub_env, "train", "flannel-1", "--set", "optim.lr=nan")
    assert out.returncode == 2 and out.stdout == ""
    line = one_line(out.stderr)
    assert line.startswith("lab train: error: ") and "optim.lr: nan is not a finite number (allowed: a number > 0); set in override" in line


def test_a_device_this_machine_lacks_names_the_devices_it_has(tmp_path, sub_env):
    out = lab(tmp_path, sub_env, "train", "flannel-1", "--device", "cuda:7")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith("lab train: error: --device cuda:7: ") and "devices found: cpu" in line
    assert "no CUDA on this machine" in line or "CUDA device(s)" in line  # a CPU-only torch, or fewer GPUs


def test_a_hyper_parameter_that_is_not_a_number_names_the_key(tmp_path, sub_env):
    out = lab(tmp_path, sub_env, "verify", "flannel-7", "--hyper", "beta2=abc")
    assert out.returncode == 2
    assert one_line(out.stderr) == "lab verify: error: --hyper beta2: must be a number, got 'abc'"


def test_a_run_deleted_while_listing_is_left_out(store, tiny, tmp_path, sub_env):
    kept = experiments.run(tiny(), progress=False)
    gone = experiments.run(tiny(name="gone"), progress=False)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # the race, made certain: the file vanishes between the store's listing and reading its size
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        _glob = pathlib.Path.glob
        def glob(self, pattern):
            found = list(_glob(self, pattern))
            if pattern == "*.h5" and os.path.exists({str(gone.path)!r}):
                os.unlink({str(gone.path)!r})
            return iter(found)
        pathlib.Path.glob = glob
    """))
    out = lab(store, sub_env, "runs", hooks=hooks)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert kept.key in out.stdout and gone.key not in out.stdout and not gone.path.exists()


def test_show_of_a_truncated_run_says_the_file_is_damaged(store, tiny, sub_env):
    run = experiments.run(tiny(), progress=False)
    size = run.path.stat().st_size
    os.truncate(run.path, size // 2)
    out = lab(store, sub_env, "show", run.key)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith(f"lab show: error: {run.path}: the run file is damaged: truncated: ")
    assert f"of {size:,} bytes" in line and "lab gc --damaged" in line


def test_full_disk_while_caching_the_corpus_names_the_file(tmp_path, sub_env):
    """A real full disk (a 1 MB tmpfs as the store): the corpus cache is the first thing written."""
    import subprocess

    from .test_integrity import LAB, _can_mount, _mount_tmpfs_script

    if not _can_mount(tmp_path):
        import pytest

        pytest.skip("cannot mount a tmpfs here (no unshare / user namespaces)")
    full = tmp_path / "full"
    full.mkdir()
    body = textwrap.dedent(f"""
        head -c 900000 /dev/zero > {full}/filler
        {LAB} train flannel-1 --set train.steps=1 2> {tmp_path}/err; echo $? > {tmp_path}/rc
        ls -aR {full} > {tmp_path}/ls
    """)
    out = subprocess.run(_mount_tmpfs_script(full, "1m", body), env=sub_env(full), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    err = (tmp_path / "err").read_text()
    line = one_line(err)
    assert (tmp_path / "rc").read_text().strip() in ("1", "2"), err
    assert line.startswith("lab train: error: ") and f"{full}/data/" in line and "disk full" in line, line
    assert "bytes free" in line and "LAB_STORE" in line
    assert ".tmp" not in (tmp_path / "ls").read_text()  # no half-written cache file left behind
