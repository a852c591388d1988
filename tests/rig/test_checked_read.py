"""Recordings read through store/checksum.py (our chunk reader, HDF5's checksum function) return exactly what
HDF5 returns, for every kind of selection, and never return a changed byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from experiments.errors import DamagedRunError
from experiments.rig.record import Recorder
from experiments.store import checksum
from experiments.store.recording import Run

STEPS, ROWS, D = 60, 150, 16  # chunks (8, 128, 16) for bf16 W: a short last step block and row block


def _write(path: Path, steps: int = STEPS, rows: int = ROWS, checked: bool = True) -> None:
    rng = np.random.default_rng(1)
    attrs = {"name": "t", "key": "0" * 16, "key_parts": "{}", "config": "{}", "versions": "{}",
             "created": "2026-01-01T00:00:00Z"}
    rec = Recorder(path, attrs=attrs, tokens=np.arange(0, 2 * rows, 2), steps=np.arange(steps + 1),
                   steps_total=steps, d_model=D, tensors={"W": "bfloat16", "m": "float32", "h_mean": "float32"},
                   dead=np.ones(2 * rows, bool), counts=np.zeros(2 * rows, np.int64), checksum=checked)
    for s in range(steps + 1):
        rec.write_step(s, {"W": rng.integers(0, 1 << 16, (rows, D), dtype=np.uint16),
                           "m": rng.standard_normal((rows, D)).astype(np.float32),
                           "h_mean": rng.standard_normal(D).astype(np.float32)})
    rec.write_scalars(1, np.ones(steps, np.float32), np.full(steps, 1e-3), np.ones(steps, np.float32))
    rec.finish()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checked") / "run.h5"
    _write(path)
    return path


def _hdf5(path: Path, name: str, steps, rows) -> np.ndarray:
    """The same selection read by h5py alone (HDF5 checks the chunks)."""
    with h5py.File(path, "r") as f:
        data = f[name][()]
    data = data[steps]
    return data if rows is None or name == "h_mean" else data[..., rows, :] if np.ndim(steps) == 0 else data[:, rows]


def test_the_chunk_reader_is_available_and_used(recording):
    assert checksum.fletcher32() is not None, "HDF5's checksum function was not found or failed its probe"
    run = Run(recording)
    run.W(steps=slice(0, 20), kind="bits")
    assert run._chunks["W"][1][1] is not None, "a checksummed recording must be read by checksum.read"


@pytest.mark.parametrize("reader", ["ours", "hdf5", "unchecksummed"])
@pytest.mark.parametrize("name", ["W", "m", "h_mean"])
def test_every_selection_reads_what_hdf5_reads(recording, tmp_path, monkeypatch, name, reader):
    """Ours, and HDF5's own read (no library; a file without checksums) through the same hyperslab reader."""
    if reader == "hdf5":
        monkeypatch.setitem(checksum._state, "lib", None)
    elif reader == "unchecksummed":
        recording = tmp_path / "plain.h5"
        _write(recording, checked=False)
    run = Run(recording)
    rng = np.random.default_rng(5)
    tokens = run.tokens
    cases = [(None, None), (slice(None), None), (7, None), (slice(8, 24), None), (slice(3, 61, 5), None),
             ([59, 2, 2, 40], None), (None, int(tokens[140])), (slice(10, 30), [int(t) for t in tokens[[149, 0, 7]]]),
             ([0, 60], [int(t) for t in tokens[120:150]])]
    cases += [(sorted(rng.choice(STEPS + 1, 9, replace=False).tolist()),
               [int(t) for t in rng.choice(tokens, 11)]) for _ in range(6)]
    for steps, rows in cases:
        kind = "bits" if name == "W" else "numpy"
        got = run.tensor(name, steps=steps, rows=rows, kind=kind)
        s_idx = np.arange(STEPS + 1)[steps] if isinstance(steps, slice) else (slice(None) if steps is None else steps)
        r_idx = None if rows is None else np.searchsorted(tokens, rows)
        want = _hdf5(recording, name, s_idx, r_idx)
        assert got.shape == want.shape and np.array_equal(got, want), (name, steps, rows)
    assert (run._chunks[name][1][1] is not None) == (reader == "ours")


def _chunk(path: Path, name: str, origin: tuple) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info_by_coord(origin)
    return info.byte_offset, info.size


@pytest.mark.parametrize("where", ["data", "sum"])
def test_a_changed_byte_in_a_chunk_or_its_sum_is_never_served(recording, tmp_path, where):
    path = tmp_path / "run.h5"
    shutil.copy(recording, path)
    run = Run(path)
    before = run.W(kind="bits")  # the layout is now cached: the damage happens under a reader that knows it
    offset, size = _chunk(path, "W", (16, 128, 0))  # steps 16-23, the short last row block
    at = offset + (size // 2 if where == "data" else size - 2)
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x10]))
    for steps, rows, at in ((None, None, "steps 16-23"), (slice(16, 17), None, "step 16"),
                            (20, [int(run.tokens[149])], "step 20")):
        with pytest.raises(DamagedRunError, match=f"dataset /W at {at} fails its checksum"):
            run.W(steps=steps, rows=rows, kind="bits")
    # what the damage does not touch still reads, and equals what was read before
    assert np.array_equal(run.W(steps=slice(24, 61), kind="bits"), before[24:])
    assert np.array_equal(run.W(steps=20, rows=[int(t) for t in run.tokens[:128]], kind="bits"), before[20, :128])


def test_without_the_library_hdf5_reads_and_checks(recording, tmp_path, monkeypatch):
    monkeypatch.setitem(checksum._state, "lib", None)
    run = Run(recording)
    assert np.array_equal(run.W(kind="bits"), _hdf5(recording, "W", slice(None), None))
    assert run._chunks["W"][1][1] is None


def test_unchecksummed_and_replaced_files(tmp_path):
    path = tmp_path / "run.h5"
    _write(path, checked=False)  # schema 1: HDF5 reads it, nothing to check
    run = Run(path)
    assert np.array_equal(run.W(kind="bits"), _hdf5(path, "W", slice(None), None))
    assert run._chunks["W"][1][1] is None
    _write(tmp_path / "new.h5", steps=STEPS, rows=ROWS)
    (tmp_path / "new.h5").replace(path)  # the same path, another file: the cached layout must not be used
    assert np.array_equal(run.W(kind="bits"), _hdf5(path, "W", slice(None), None))
