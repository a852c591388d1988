"""Reading a recorded run: `Run`, lazily by step range and row subset (numpy / ml_dtypes bf16 or torch).

The writer and the format live in record.py, which is on the training path; this reader is not
(runs.TRAINING_MODULES), so adding an accessor here never changes a run key or retrains the store.

A read that fails (a chunk whose fletcher32 checksum fails, a truncated file) raises DamagedRunError naming
the file, the dataset and the steps; `check` verifies a whole file against its content digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from experiments.bits import as_bf16
from experiments.errors import DamagedRunError, DataError
from experiments.rig.record import DIGEST_ATTR, STEP_TENSORS, h5_reason
from experiments.store import checksum

REPAIR = "`lab gc --damaged` deletes it and the next `lab train` or experiments.run trains it again"
_SCALARS = ("loss", "lr", "clip_scale")  # index i holds training step i + 1
_BLOCK_BYTES = 16 << 20  # what `check` reads (and hashes) at a time


def open_reason(e: BaseException) -> str:
    """Why h5py could not open a file, in a few words ("truncated: 1,000 of 335,336 bytes")."""
    text = h5_reason(e)
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return f"truncated: {int(m[1]):,} of {int(m[2]):,} bytes on disk"
    m = re.search(r"\(([^()]*)\)\s*$", text)  # "Unable to synchronously open file (bad object header ...)"
    return m[1] if m else text


def _ranges(values) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    values = sorted(int(v) for v in values)
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out[:8]) + (f" and {len(out) - 8} more ranges" if len(out) > 8 else "")


def _bad_chunks(ds: h5py.Dataset, rows: np.ndarray | None = None) -> list[int]:
    """Axis-0 indices (among `rows`, default all) whose chunks cannot be read: where a read failed."""
    bad = []
    chunk0 = ds.chunks[0] if ds.chunks else len(ds)
    starts = sorted({int(r) // chunk0 * chunk0 for r in (range(len(ds)) if rows is None else rows)})
    for a in starts:
        try:
            ds[a: a + chunk0]
        except (OSError, RuntimeError):
            bad.extend(range(a, min(a + chunk0, len(ds))))
    return bad if rows is None else [r for r in bad if r in set(int(x) for x in rows)]


def _where(name: str, index: list[int], steps: np.ndarray | None) -> str:
    """Dataset `name`'s axis-0 indices as the steps they hold."""
    s = "s" if len(index) > 1 else ""
    if name in _SCALARS:
        return f"training step{s} {_ranges(i + 1 for i in index)}"
    if steps is not None and len(steps) and name not in ("tokens", "steps", "dead", "counts"):
        return f"step{s} {_ranges(int(steps[i]) for i in index if i < len(steps))}"
    return f"element{s} {_ranges(index)}"


def damaged(path: str | Path, ds: h5py.Dataset, name: str, index: np.ndarray | None = None,
            steps: np.ndarray | None = None, error: BaseException | None = None) -> DamagedRunError:
    """The error for a failed read of dataset `name`: which steps fail and how to repair."""
    bad = _bad_chunks(ds, index)
    reason = "fails its checksum" if error is None or "filter" in str(error) else f"cannot be read ({h5_reason(error)})"
    where = f" at {_where(name, bad, steps)}" if bad else ""
    return DamagedRunError(f"{path}: the run file is damaged: dataset /{name}{where} {reason}; {REPAIR}")


@dataclass
class Integrity:
    status: str  # "ok" | "no checksum" | "damaged" | "incomplete"
    detail: str = ""


def check(path: str | Path) -> Integrity:
    """Read every dataset of a run file (each chunk's fletcher32 checked by HDF5) and compare its sha256 with
    the digest written at completion. Runs written before checksums (schema 1) are "no checksum"."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("complete", 0)) != 1:
                return Integrity("incomplete", "not marked complete")
            if DIGEST_ATTR not in f.attrs:
                return Integrity("no checksum", "written before run files carried checksums")
            try:
                want = json.loads(f.attrs[DIGEST_ATTR])
            except ValueError:
                return Integrity("damaged", f"its {DIGEST_ATTR} attribute is not valid JSON")
            steps = f["steps"][()] if "steps" in f else None
            extra = sorted(set(f.keys()) - set(want))
            missing = sorted(set(want) - set(f.keys()))
            if extra or missing:
                return Integrity("damaged", f"datasets {missing or extra} differ from those it was written with")
            problems = []
            for name in sorted(want):
                ds = f[name]
                try:
                    got = _sha256(ds)
                except (OSError, RuntimeError) as e:
                    bad = _bad_chunks(ds)
                    where = f" at {_where(name, bad, steps)}" if bad else ""
                    why = "fails its checksum" if "filter" in str(e) else f"cannot be read ({h5_reason(e)})"
                    problems.append(f"/{name}{where} {why}")
                    continue
                if got != want[name]:
                    problems.append(f"/{name} differs from the digest written with it")
            if problems:
                return Integrity("damaged", "; ".join(problems))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        return Integrity("damaged", f"cannot be read: {open_reason(e)}")
    return Integrity("ok")


def _sha256(ds: h5py.Dataset) -> str:
    """sha256 of a dataset's raw bytes in C order, read in blocks along axis 0 (as record._Digest hashes)."""
    h = hashlib.sha256()
    if ds.size == 0:
        return h.hexdigest()
    if ds.ndim == 0:
        h.update(np.ascontiguousarray(ds[()]).tobytes())
        return h.hexdigest()
    row = max(1, ds.size // len(ds) * ds.dtype.itemsize)
    per = max(1, _BLOCK_BYTES // row)
    if ds.chunks:  # whole chunks per read
        per = max(ds.chunks[0], per // ds.chunks[0] * ds.chunks[0])
    buf = np.empty((min(per, len(ds)), *ds.shape[1:]), dtype=ds.dtype)
    for a in range(0, len(ds), per):
        n = min(per, len(ds) - a)
        view = buf[:n]
        ds.read_direct(view, source_sel=np.s_[a: a + n])
        h.update(memoryview(view).cast("B"))
    return h.hexdigest()


def step_indices(recorded: np.ndarray, steps, where: str = "") -> tuple[np.ndarray, bool]:
    """Indices into `recorded` (increasing step numbers) of a selection of step numbers, and a scalar flag.

    steps: None (all), a slice of step numbers (slice(1, 101): 1 ≤ step < 101, any recorded step in it; its
    step strides over the recorded steps), an int or a list of step numbers (each must be recorded: KeyError
    otherwise; `where` names the file in the message). The scalar flag is True for an int.
    """
    recorded = np.asarray(recorded)
    if steps is None:
        return np.arange(len(recorded)), False
    if isinstance(steps, slice):
        lo = -np.inf if steps.start is None else steps.start
        hi = np.inf if steps.stop is None else steps.stop
        idx = np.flatnonzero((recorded >= lo) & (recorded < hi))
        return idx[:: steps.step or 1], False
    scalar = np.ndim(steps) == 0
    wanted = np.atleast_1d(np.asarray(steps, dtype=np.int64))
    idx = np.searchsorted(recorded, wanted)
    bad = (idx >= len(recorded)) | (recorded[np.minimum(idx, len(recorded) - 1)] != wanted)
    if bad.any():
        span = f"{len(recorded)} steps from {recorded[0]} to {recorded[-1]}" if len(recorded) else "no steps"
        raise KeyError(f"{where + ': ' if where else ''}steps {wanted[bad][:10].tolist()} were not recorded "
                       f"(recorded: {span})")
    return idx, scalar


class Run:
    """A complete recorded run (read-only). Opens the file per access, so it never pins a handle."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such run file (deleted meanwhile?)")
        try:
            with h5py.File(self.path, "r") as f:
                a = dict(f.attrs)
                self.steps = f["steps"][()]
                self.tokens = f["tokens"][()]
                self.available = sorted(k for k in f.keys())
        except (OSError, RuntimeError, KeyError) as e:
            raise DamagedRunError(f"{self.path}: the run file is damaged: {open_reason(e)}; {REPAIR}") from None
        # schema 2 files carry content_sha256 and fletcher32 chunks; older ones read as before, unchecked
        self.checksummed = DIGEST_ATTR in a
        if int(a.get("complete", 0)) != 1:
            raise DataError(f"{self.path}: run is not complete (interrupted or still training)")
        self.name = str(a["name"])
        self.key = str(a["key"])
        self.config = json.loads(a["config"])
        self.key_parts = json.loads(a["key_parts"])
        self.versions = json.loads(a["versions"])
        self.created = str(a["created"])
        self.description = str(a.get("description", ""))
        # the AdamW kernel laws of the machine that trained the run (experiments.physics.laws); None in older runs
        self.kernel_laws = json.loads(a["kernel_laws"]) if "kernel_laws" in a else None
        # the machine that completed the training (runs.trained_on); None in runs written before it was recorded
        self.trained_on = json.loads(a["trained_on"]) if "trained_on" in a else None
        self.steps_total = int(a["steps_total"])
        self._row = {int(t): i for i, t in enumerate(self.tokens)}
        self._chunks: dict = {}  # dataset -> (file stamp, (dtype attribute, checksum.Layout or None))

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, key={self.key}, steps={self.steps_total}, rows={len(self.tokens)}, "
                f"tensors={[t for t in self.available if t in (*STEP_TENSORS, 'h_mean')]})")

    def _read(self, name: str) -> np.ndarray:
        with self._open() as f:
            ds = f[name]
            try:
                return ds[()]
            except (OSError, RuntimeError) as e:
                raise damaged(self.path, ds, name, steps=self.steps, error=e) from None

    def _layout(self, ds: h5py.Dataset | None, name: str):
        """(dtype attribute, checksum.Layout or None) of a step tensor, found once per file version: a complete
        run never changes, and a replaced file (another inode, size or time) is looked at anew. With ds None,
        only what is cached (None when nothing is)."""
        try:
            st = self.path.stat()
        except OSError:
            return None  # gone: the open that follows says so
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._chunks.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if ds is None:
            return None
        layout = None
        if ds.fletcher32 and checksum.fletcher32() is not None:
            try:
                layout = checksum.Layout(ds)
            except (checksum.Unsupported, AttributeError, NotImplementedError, OSError, RuntimeError, ValueError):
                layout = None  # an h5py without chunk_iter, or a layout `checksum.read` does not know: HDF5 reads
        self._chunks[name] = (stamp, (ds.attrs["dtype"], layout))
        return self._chunks[name][1]

    def _read_fast(self, layout, sidx: np.ndarray, ridx: np.ndarray | None) -> np.ndarray | None:
        """Read through checksum.read (chunks checked by us, two threads); None: let HDF5 read and check."""
        us = np.unique(sidx)
        ur = None if ridx is None else np.unique(ridx)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None  # gone meanwhile: HDF5's open says so
        try:
            data = checksum.read(fd, layout, us, ur, checksum.fletcher32())
        finally:
            os.close(fd)
        return None if data is None else _reorder(data, us, sidx, ur, ridx)

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except (OSError, RuntimeError) as e:
            if not self.path.exists():
                raise DataError(f"{self.path}: the run file was deleted") from None
            raise DamagedRunError(f"{self.path}: the run file is damaged: {open_reason(e)}; {REPAIR}") from None

    @property
    def dead(self) -> np.ndarray:
        return self._read("dead")

    @property
    def counts(self) -> np.ndarray:
        return self._read("counts")

    @property
    def loss(self) -> np.ndarray:
        return self._read("loss")

    @property
    def lr(self) -> np.ndarray:
        return self._read("lr")

    @property
    def clip_scale(self) -> np.ndarray:
        return self._read("clip_scale")

    def tokenizer(self):
        from tokenizers import Tokenizer

        with self._open() as f:
            return Tokenizer.from_str(f.attrs["tokenizer"])

    def census(self, top: int = 20, examples: int = 10) -> dict:
        """Live/dead census of this run's vocabulary on its training text (tokenizer.census_of_counts)."""
        from experiments.lattice.census import census_of_counts

        with self._open() as f:
            manifest = json.loads(f.attrs["corpus_manifest"]) if "corpus_manifest" in f.attrs else {}
        return census_of_counts(self.counts, self.tokenizer(), manifest, top=top, examples=examples)

    def _step_index(self, steps) -> tuple[np.ndarray, bool]:
        """Step numbers (int, slice of step numbers, list or None) -> indices into /steps; scalar flag."""
        return step_indices(self.steps, steps, where=str(self.path))

    def _row_index(self, rows) -> tuple[np.ndarray | None, bool]:
        if rows is None:
            return None, False
        scalar = np.ndim(rows) == 0
        wanted = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        missing = [int(t) for t in wanted if int(t) not in self._row]
        if missing:
            raise KeyError(f"{self.path}: token ids {missing[:10]} were not recorded "
                           f"(record.rows was {self.config.get('record', {}).get('rows')!r})")
        return np.array([self._row[int(t)] for t in wanted]), scalar

    def tensor(self, name: str, steps=None, rows=None, kind: str = "numpy"):
        """Read `name` for the given step numbers and token ids, touching only the chunks needed.

        steps: None (all recorded), an int, a list, or a slice of step numbers (slice(0, 100) = steps < 100).
        rows: None (all recorded rows) or token ids (an int drops the row axis). kind: "numpy" (ml_dtypes
        bfloat16 or float32), "torch" (torch.bfloat16 / float32) or "bits" (raw uint16 for bf16).
        """
        if kind not in ("numpy", "torch", "bits"):
            raise ValueError(f"kind must be numpy, torch or bits, got {kind!r}")
        if name not in self.available or name not in (*STEP_TENSORS, "h_mean"):
            rec = [t for t in self.available if t in (*STEP_TENSORS, "h_mean")]
            raise KeyError(f"{self.path}: tensor {name!r} was not recorded (recorded: {', '.join(rec)})")
        sidx, s_scalar = self._step_index(steps)
        ridx, r_scalar = self._row_index(rows) if name != "h_mean" else (None, False)
        data = None
        cached = self._layout(None, name) if len(sidx) else None  # (dtype attribute, Layout or None)
        if cached is not None and cached[1] is not None:
            data, dtype = self._read_fast(cached[1], sidx, ridx), cached[0]
        if data is None:
            with self._open() as f:
                ds = f[name]
                dtype, layout = self._layout(ds, name) if len(sidx) else (ds.attrs["dtype"], None)
                if cached is None and layout is not None:
                    data = self._read_fast(layout, sidx, ridx)
                if data is None:
                    try:  # HDF5's own read, each chunk's fletcher32 checked by HDF5
                        data = _read_selection(ds, sidx, ridx)
                    except (OSError, RuntimeError) as e:  # a chunk that fails its checksum: never altered data
                        raise damaged(self.path, ds, name, np.unique(sidx), self.steps, e) from None
        if s_scalar:
            data = data[0]
        if r_scalar:
            data = data[..., 0, :] if not s_scalar else data[0]
        if dtype == "bfloat16" and kind != "bits":
            data = as_bf16(data)
            if kind == "torch":
                import torch

                return torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16)
        elif kind == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(data))
        return data

    def W(self, steps=None, rows=None, kind: str = "numpy"):
        return self.tensor("W", steps=steps, rows=rows, kind=kind)

    def trajectory(self, token_id: int, name: str = "W", kind: str = "numpy"):
        """One token's row over every recorded step: (T, D)."""
        return self.tensor(name, rows=int(token_id), kind=kind)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique indices as [start, stop) runs: [3, 4, 5, 9] -> [(3, 6), (9, 10)]."""
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, cut)]


def _read_product(ds: h5py.Dataset, steps: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """ds[steps][:, rows] for sorted unique steps and rows (None: all), in one H5Dread of a union of
    hyperslabs (HDF5 returns it in row-major order, the order of the product)."""
    lead = (ds.shape[1],) if rows is None else (len(rows),)
    out = np.empty((len(steps), *lead, *ds.shape[2:]), dtype=ds.dtype)
    if out.size == 0:
        return out
    space = ds.id.get_space()
    space.select_none()
    row_runs = [(0, ds.shape[1])] if rows is None else _runs(rows)
    for a, b in _runs(steps):
        for lo, hi in row_runs:
            space.select_hyperslab((a, lo, *[0] * (ds.ndim - 2)), (b - a, hi - lo, *ds.shape[2:]),
                                   op=h5py.h5s.SELECT_OR)
    ds.id.read(h5py.h5s.create_simple(out.shape), space, out)
    return out


def _reorder(data: np.ndarray, us: np.ndarray, sidx: np.ndarray, ur: np.ndarray | None,
             ridx: np.ndarray | None) -> np.ndarray:
    """data read at sorted unique steps `us` x rows `ur`, as asked: at `sidx` x `ridx` (any order, repeats)."""
    if len(us) != len(sidx) or not np.array_equal(us, sidx):
        data = data[np.searchsorted(us, sidx)]
    if ridx is not None and (len(ur) != len(ridx) or not np.array_equal(ur, ridx)):
        data = data[:, np.searchsorted(ur, ridx)]
    return data


def _read_selection(ds: h5py.Dataset, sidx: np.ndarray, ridx: np.ndarray | None) -> np.ndarray:
    """ds[sidx][:, ridx] for any step and row indices (repeats and any order allowed), HDF5 checking."""
    us = np.unique(sidx)
    ur = None if ridx is None else np.unique(ridx)
    return _reorder(_read_product(ds, us, ur), us, sidx, ur, ridx)
