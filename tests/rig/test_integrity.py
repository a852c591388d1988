"""Nothing silently wrong: a changed byte in a run file, a full disk, a second trainer waiting on the lock."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import experiments
from experiments.errors import DamagedRunError
from experiments.rig.config import parse_set
from experiments.rig.record import DIGEST_ATTR, Recorder
from experiments.store import runs as R
from experiments.store.recording import Run, check

LAB = Path(sys.executable).parent / "lab"  # the venv's `lab` console script
# flannel-1 shrunk to the rig's tiny run (same corpus/tokenizer as conftest.TINY: its data cache is shared)
TINY_SET = ["train.steps=12", "train.batch_size=4", "train.seq_len=16", "train.threads=1", "train.device=cpu",
            "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.context=16",
            "corpus.train_bytes=60000", "corpus.tokenizer_bytes=60000", "tokenizer.vocab_size=500",
            "record.tensors=[W,m,v,grad,h_mean]"]


def lab(store: Path, sub_env, *args: str, hooks: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = sub_env(store)
    if hooks is not None:  # a sitecustomize.py there runs first: fault injection in the child
        env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
    return subprocess.run([str(LAB), *args], env=env, capture_output=True, text=True, timeout=600, **kw)


def flip_byte(path: Path, dataset: str, step_index: int) -> None:
    """XOR one byte in the middle of the (first) chunk of `dataset` that holds recorded step index `step_index`
    (a chunk spans record.STEP_BLOCK steps, so the damage covers its steps)."""
    with h5py.File(path, "r") as f:
        dsid = f[dataset].id
        per = f[dataset].chunks[0]
        infos = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
    info = next(i for i in infos if i.chunk_offset[0] <= step_index < i.chunk_offset[0] + per)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text and "Exception ignored" not in text, text
    return lines[0]


def test_a_flipped_byte_is_never_served(store, tiny, sub_env):
    run = experiments.run(tiny(), progress=False)
    good = run.W(kind="bits")
    flip_byte(run.path, "W", 9)  # 13 recorded steps: chunks of steps 0-7 and 8-12
    damaged = Run(run.path)
    assert np.array_equal(damaged.W(steps=slice(0, 8), kind="bits"), good[:8])  # the other chunks read
    with pytest.raises(DamagedRunError, match=rf"{run.path.name}: the run file is damaged: dataset /W at steps 8-12 "
                                              r"fails its checksum; `lab gc --damaged`"):
        damaged.W()
    with pytest.raises(DamagedRunError, match="at steps 8-12"):
        damaged.trajectory(int(run.tokens[0]))
    assert check(run.path).status == "damaged"
    # the store does not serve it (its mtime changed since training, so it is read against its digest)
    with pytest.raises(DamagedRunError, match=r"/W at steps 8-12 fails its checksum.*lab gc --damaged"):
        experiments.run(tiny(), progress=False)

    out = lab(store, sub_env, "runs", "--check")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"damaged: {run.path}: /W at steps 8-12 fails its checksum" in out.stderr
    assert "1 damaged" in out.stdout and run.key in out.stdout

    out = lab(store, sub_env, "gc", "--damaged")
    assert out.returncode == 0 and f"deleted {run.path}" in out.stdout and not run.path.exists()
    again = experiments.run(tiny(), progress=False)  # retrained: the same bits as before the damage
    assert again.path == run.path and np.array_equal(again.W(kind="bits"), good)
    assert lab(store, sub_env, "runs", "--check").returncode == 0


def test_verify_reports_damage_not_a_physics_mismatch(store, tiny, sub_env):
    run = experiments.run(tiny(), progress=False)
    flip_byte(run.path, "m", 4)
    out = lab(store, sub_env, "verify", run.key)
    assert out.returncode == 2 and "MISMATCH" not in out.stdout
    err = one_line("\n".join(ln for ln in out.stderr.replace("\r", "\n").splitlines() if "%|" not in ln))
    assert err.startswith("lab verify: error: ") and run.path.name in err and "dataset /m at steps 0-7" in err


def test_the_digest_catches_what_the_chunk_checksums_cannot(store, tiny):
    run = experiments.run(tiny(), progress=False)
    # rewritten through HDF5 itself: the chunk's fletcher32 is recomputed, only the digest tells
    with h5py.File(run.path, "r+") as f:
        f["loss"][3] = 0.0
    assert check(run.path).detail == "/loss differs from the digest written with it"
    with pytest.raises(DamagedRunError, match="/loss differs from the digest"):
        experiments.run(tiny(), progress=False)


def test_the_digest_is_the_hash_of_the_file_written_in_increasing_order(tmp_path):
    rng = np.random.default_rng(1)
    tokens, steps = np.array([2, 5, 7], np.int32), np.array([0, 1, 2, 3])
    rec = Recorder(tmp_path / "r.h5", attrs={"name": "r", "key": "0" * 16}, tokens=tokens, steps=steps,
                   steps_total=3, d_model=4, tensors={"W": "bfloat16", "h_mean": "float32"},
                   dead=np.zeros(8, bool), counts=np.arange(8))
    for s in (0, 1, 3):  # step 2 is never written: its rows keep the fill value, and so does the digest
        rec.write_step(s, {"W": rng.integers(0, 1 << 16, (3, 4), dtype=np.uint16),
                           "h_mean": rng.standard_normal(4).astype(np.float32)})
    rec.write_scalars(1, np.ones(2, np.float32), np.full(2, 1e-3), np.ones(2, np.float32))
    rec.write_scalars(3, np.ones(1, np.float32), np.full(1, 1e-3), np.ones(1, np.float32))
    rec.finish()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        digests = json.loads(f.attrs[DIGEST_ATTR])
        assert set(digests) == set(f.keys())
        for name, want in digests.items():
            assert f[name].fletcher32
            assert hashlib.sha256(np.ascontiguousarray(f[name][()]).tobytes()).hexdigest() == want, name
    assert check(tmp_path / "r.h5").status == "ok"
    with pytest.raises(Exception, match="increasing order"):
        rec2 = Recorder(tmp_path / "s.h5", attrs={}, tokens=tokens, steps=steps, steps_total=3, d_model=4,
                        tensors={"W": "bfloat16"}, dead=np.zeros(8, bool), counts=np.arange(8))
        rec2.write_step(1, {"W": np.zeros((3, 4), np.uint16)})
        rec2.write_step(0, {"W": np.zeros((3, 4), np.uint16)})


def test_old_runs_without_checksums_keep_working(store, tiny, sub_env):
    run = experiments.run(tiny(), progress=False)
    old = store / f"old-{'a' * 16}.h5"
    rec = Recorder(old, attrs={"name": "old", "key": "a" * 16, "key_parts": "{}", "config": "{}",
                               "versions": "{}", "created": "2025-01-01T00:00:00Z"},
                   tokens=np.arange(3), steps=np.arange(3), steps_total=2, d_model=4, tensors={"W": "bfloat16"},
                   dead=np.zeros(3, bool), counts=np.zeros(3, np.int64), checksum=False)
    for s in range(3):
        rec.write_step(s, {"W": np.full((3, 4), s, np.uint16)})
    rec.write_scalars(1, np.ones(2, np.float32), np.ones(2), np.ones(2, np.float32))
    rec.finish()
    assert not Run(old).checksummed and Run(old).W(kind="bits")[2, 0, 0] == 2
    assert check(old).status == "no checksum"
    out = lab(store, sub_env, "runs", "--check")
    assert out.returncode == 0, out.stderr
    assert "1 ok, 0 damaged, 1 with no checksum" in out.stdout
    assert {r["key"]: r["check"] for r in R.list_runs(check=True)} == {run.key: "ok", "a" * 16: "no checksum"}


def _mount_tmpfs_script(mnt: Path, size: str, body: str) -> list[str]:
    script = f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 97\n{body}"
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]


def _can_mount(tmp_path: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    mnt = tmp_path / "probe"
    mnt.mkdir()
    return subprocess.run(_mount_tmpfs_script(mnt, "1m", "true"), capture_output=True).returncode == 0


@pytest.mark.parametrize("when", ["before training", "while writing"])
def test_full_disk_is_one_line_naming_the_path_and_other_runs_stay_intact(store, tiny, tmp_path, sub_env, when):
    """A real full disk: a 2 MB tmpfs (in a user+mount namespace) holding a good run and a filler file."""
    if not _can_mount(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no unshare / user namespaces)")
    other = experiments.run(tiny(), progress=False)
    full = tmp_path / "full"
    full.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    if when == "while writing":  # the space check passes, then the disk fills (another writer, say)
        (hooks / "sitecustomize.py").write_text(textwrap.dedent("""
            from experiments.rig import record
            record.Recorder._check_space = lambda self: None
        """))
    env = sub_env(full)
    env["PYTHONPATH"] = f"{hooks}:{env['PYTHONPATH']}"
    sets = " ".join(f"--set '{s}'" for s in TINY_SET)
    body = textwrap.dedent(f"""
        ln -s {store / 'data'} {full}/data
        cp {other.path} {full}/
        head -c 1650000 /dev/zero > {full}/filler
        {LAB} train flannel-1 {sets} 2> {tmp_path}/err; echo $? > {tmp_path}/rc
        {LAB} runs --check > {tmp_path}/check 2>&1; echo $? > {tmp_path}/check_rc
        ls -a {full} > {tmp_path}/ls
    """)
    out = subprocess.run(_mount_tmpfs_script(full, "2m", body), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    err = (tmp_path / "err").read_text()
    line = one_line(err)
    assert (tmp_path / "rc").read_text().strip() == "2", err
    assert line.startswith("lab train: error: ") and str(full) in line and "disk full" in line
    assert "needs about" in line and "KB" in line and "LAB_STORE" in line
    # nothing half-written is left, and the run that was there still checks out
    assert not [n for n in (tmp_path / "ls").read_text().split() if ".h5.tmp" in n or n.startswith("flannel-1")]
    assert (tmp_path / "check_rc").read_text().strip() == "0", (tmp_path / "check").read_text()
    assert "1 ok, 0 damaged" in (tmp_path / "check").read_text()


def test_a_waiting_train_says_whose_lock_it_waits_for(store, tiny, sub_env):
    import os
    import socket

    cfg, key, final = R._resolve_request({"name": "flannel-1", "overrides": parse_set(TINY_SET)})
    with R._key_lock(store, key, "test", progress=False):
        owner = json.loads((store / f"{key}.lock.owner").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        env = sub_env(store)
        env.pop("TQDM_DISABLE")  # as a user runs it (documents, whose bars are off, get heartbeats instead)
        proc = subprocess.Popen([str(LAB), "train", "flannel-1", *sum((["--set", s] for s in TINY_SET), [])],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        guard = threading.Timer(300, proc.kill)  # a child that never reports must not hang the suite
        guard.start()
        line = proc.stderr.readline()  # blocks until the child reports; it cannot finish while we hold the lock
        guard.cancel()
    out, err = proc.communicate(timeout=600)
    assert f"flannel-1 {key[:8]}: waiting for pid {os.getpid()} on {socket.gethostname()}" in line
    assert str(store / f"{key}.lock") in line
    assert proc.returncode == 0 and final.exists() and not (store / f"{key}.lock.owner").exists()
