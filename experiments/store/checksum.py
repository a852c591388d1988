"""Reading checksummed chunks ourselves, so that a checksummed recording reads as fast as a bare one.

HDF5 checks each chunk's fletcher32 on the one thread that reads it, chunk after chunk; on a whole recording
that made reads about 50 % slower than without checksums (bench/bench_integrity.py). A recording's layout is
simple (record.py: chunks of STEP_BLOCK steps x a block of rows x all of D, fletcher32 the only filter), so
`read` reads the chunks itself: it finds them in the file once (`Layout`, from HDF5's own chunk index), reads
runs of them with pread into a per-thread buffer, checks each one there with HDF5's own checksum function
(H5_checksum_fletcher32, from the library h5py loaded, called through ctypes) while it is in cache, and
copies the selected part into the result. Two threads share the step blocks (the copies and the checksum
release the GIL), which pays for the check on two cores.

We never judge damage ourselves: a chunk whose sum we find wrong returns None, and the caller reads the
selection with HDF5's own checked read, which returns the right data or raises the error that names the
chunk. Anything unusual (another filter, a chunk not stored or of another size, a big-endian type, no
library, a probe at first use that disagrees with HDF5) makes `Layout` refuse, and HDF5 reads as before.
"""

from __future__ import annotations

import ctypes
import glob
import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

_state: dict = {}
_lock = threading.Lock()
_local = threading.local()


class Unsupported(Exception):
    """This dataset is not laid out as `read` expects; HDF5 reads it."""


def _candidates() -> list[str]:
    """Paths of the HDF5 library h5py uses: the one mapped into this process first, then the wheel's copy."""
    found = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                base = os.path.basename(path)
                if base.startswith("libhdf5") and not base.startswith("libhdf5_hl") and path not in found:
                    found.append(path)
    except OSError:
        pass
    pkg = Path(h5py.__file__).parent
    found += sorted(glob.glob(str(pkg.parent / "h5py.libs" / "libhdf5-*")))  # Linux wheels
    found += sorted(glob.glob(str(pkg / ".dylibs" / "libhdf5.*")))  # macOS wheels
    return found


def _load():
    if sys.byteorder != "little":
        return None
    for path in _candidates():
        try:
            fletcher32 = ctypes.CDLL(path).H5_checksum_fletcher32
        except (OSError, AttributeError):
            continue
        fletcher32.restype, fletcher32.argtypes = ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_size_t]
        if _probe(fletcher32):
            return fletcher32
    return None


def _probe(fletcher32) -> bool:
    """On a small file: `read` returns what HDF5 returns, and after one chunk's data is changed (its old sum
    kept), HDF5's checked read fails and `read` returns None."""
    data = np.random.default_rng(7).integers(0, 1 << 16, (20, 10, 8), dtype=np.uint16)
    bio = io.BytesIO()
    try:
        with h5py.File(bio, "w") as f:
            ds = f.create_dataset("x", data=data, chunks=(8, 4, 8), fletcher32=True)
            f.flush()
            steps, rows = np.array([0, 3, 4, 5, 19]), np.array([1, 2, 9])
            for s, r in ((np.arange(20), None), (steps, rows)):
                got = read(bio, Layout(ds), s, r, fletcher32, threads=False)
                if got is None or not np.array_equal(got, data[s] if r is None else data[s][:, r]):
                    return False
            _, raw = ds.id.read_direct_chunk((8, 4, 0))
            ds.id.write_direct_chunk((8, 4, 0), bytes([raw[0] ^ 1]) + raw[1:])  # changed data, old sum
            f.flush()
            try:
                ds[()]
                return False  # HDF5 must refuse it...
            except OSError:
                pass
            if read(bio, Layout(ds), np.arange(20), None, fletcher32, threads=False) is not None:
                return False  # ...and so must we
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError, Unsupported):
        return False
    return True


def fletcher32():
    """HDF5's H5_checksum_fletcher32 through ctypes, or None; found and probed once per process."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = None  # an error escaping the probe leaves the fast path off, not half set
            _state["lib"] = _load()
        return _state["lib"]


def _pool() -> ThreadPoolExecutor:
    with _lock:
        if _state.get("pid") != os.getpid():  # a forked child needs its own thread
            _state["pid"], _state["pool"] = os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="chunks")
        return _state["pool"]


class Layout:
    """Where one dataset's chunks lie in the file. Axes are (steps, rows, D); a 2-D (steps, D) dataset is read
    as (steps, 1, D)."""

    def __init__(self, ds: h5py.Dataset):
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        if filters != [h5py.h5z.FILTER_FLETCHER32] or ds.ndim not in (2, 3) or ds.chunks is None:
            raise Unsupported(f"filters {filters}, {ds.ndim} axes")
        if ds.dtype.kind not in "uif" or ds.id.get_type().get_order() != h5py.h5t.ORDER_LE:
            raise Unsupported(f"type {ds.dtype}")
        shape, chunks = ds.shape, ds.chunks
        if ds.ndim == 2:
            shape, chunks = (shape[0], 1, shape[1]), (chunks[0], 1, chunks[1])
        if chunks[2] != shape[2]:
            raise Unsupported("chunks do not span the last axis")
        self.shape, self.chunks, self.dtype, self.flat = shape, chunks, ds.dtype, ds.ndim == 2
        self.chunk_bytes = int(np.prod(chunks)) * ds.dtype.itemsize
        grid = (-(-shape[0] // chunks[0]), -(-shape[1] // chunks[1]))
        self.offset = np.full(grid, -1, dtype=np.int64)  # [step block, row block] -> byte offset in the file
        found = []
        ds.id.chunk_iter(lambda info: found.append((info.chunk_offset, info.filter_mask, info.byte_offset, info.size)))
        for origin, mask, offset, size in found:
            if mask or size != self.chunk_bytes + 4:
                raise Unsupported(f"chunk at {origin} stored with filter mask {mask}, {size} bytes")
            self.offset[origin[0] // chunks[0], (origin[1] // chunks[1]) if ds.ndim == 3 else 0] = offset
        if (self.offset < 0).any():
            raise Unsupported("chunks that were never written")  # HDF5 fills them; let it


def _buffer(nbytes: int) -> np.ndarray:
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _local.buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buf


def _pread(fh, view: memoryview, offset: int) -> int:
    if isinstance(fh, int):
        return os.preadv(fh, [view], offset)
    fh.seek(offset)  # a file object (the probe's BytesIO)
    return fh.readinto(view)


def _positions(sel: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Where sorted `sel` enters each [start, start + n): first and past-last positions, and the local indices
    (a slice where they are consecutive, else an array)."""
    first, last = np.searchsorted(sel, starts), np.searchsorted(sel, starts + n)
    local = []
    for a, b, lo in zip(first.tolist(), last.tolist(), starts.tolist(), strict=True):
        if b > a and int(sel[b - 1]) - int(sel[a]) == b - a - 1:
            local.append(slice(int(sel[a]) - lo, int(sel[b - 1]) - lo + 1))
        else:
            local.append(sel[a:b] - lo)
    return first.tolist(), last.tolist(), local


def read(fh, layout: Layout, steps: np.ndarray, rows: np.ndarray | None, fletcher32, threads: bool = True):
    """layout's dataset at sorted unique `steps` x `rows` (None: every row), as (steps, rows, D) (2-D datasets:
    (steps, D)); None if any chunk read fails its checksum or comes back short. fh: an fd or a file object."""
    cs, cr, d = layout.chunks
    item = layout.dtype.itemsize
    stride = layout.chunk_bytes + 4
    out = np.empty((len(steps), layout.shape[1] if rows is None else len(rows), d), dtype=layout.dtype)
    blocks = np.unique(steps // cs)
    row_blocks = np.arange(layout.offset.shape[1]) if rows is None else np.unique(rows // cr)
    nr = len(row_blocks)
    offsets = layout.offset[blocks][:, row_blocks]
    contiguous = (np.diff(offsets, axis=1) == stride).all(axis=1).tolist()  # one pread for the block's chunks
    s_first, s_last, s_local = _positions(steps, blocks * cs, cs)
    full = min(nr, layout.shape[1] // cr)  # every row: the row blocks that are not the short last one
    if rows is not None:
        r_first, r_last, r_local = _positions(rows, row_blocks * cr, cr)
    # units of work: (step block, first and past-last row block); a read of few blocks is split by rows too,
    # so that both threads share it
    parts = 1 if len(blocks) >= 4 or not threads else min(nr, 2)
    edges = np.linspace(0, nr, parts + 1).astype(int).tolist()
    units = [(i, edges[p], edges[p + 1]) for i in range(len(blocks)) for p in range(parts)]
    failed: list = []
    todo = iter(units)
    take = threading.Lock()

    def work():
        buf = _buffer(nr * stride)
        base = buf.ctypes.data
        chunk = np.lib.stride_tricks.as_strided(buf[: nr * stride].view(layout.dtype), shape=(nr, cs, cr, d),
                                                strides=(stride, cr * d * item, d * item, item), writeable=False)
        sums = buf[: nr * stride].reshape(nr, stride)[:, -4:]
        while not failed:
            with take:
                unit = next(todo, None)
            if unit is None:
                return
            i, k0, k1 = unit
            m = k1 - k0  # chunks k0..k1 of the block go to buf[0 .. m * stride]
            if contiguous[i]:
                runs = [(0, m)]
            else:  # chunks that do not follow each other in the file: one pread per run
                cut = np.flatnonzero(np.diff(offsets[i, k0:k1]) != stride) + 1
                runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(np.arange(m), cut)]
            for k, k2 in runs:
                n = (k2 - k) * stride
                if _pread(fh, memoryview(buf)[k * stride: k * stride + n], int(offsets[i, k0 + k])) != n:
                    failed.append(i)
                    return
            stored = sums[:m].copy().view("<u4").ravel().tolist()
            for k in range(m):
                if fletcher32(base + k * stride, layout.chunk_bytes) != stored[k]:
                    failed.append(i)
                    return
            a, b, ls = s_first[i], s_last[i], s_local[i]
            if rows is None:  # the full row blocks in one strided copy, the short last one apart
                f1 = min(k1, full)
                if f1 > k0:
                    out[a:b, k0 * cr: f1 * cr].reshape(b - a, f1 - k0, cr, d)[...] = \
                        chunk[: f1 - k0, ls].swapaxes(0, 1)
                if k1 > full:
                    out[a:b, full * cr:] = chunk[full - k0, ls, : layout.shape[1] - full * cr]
            else:
                for k in range(k0, k1):
                    out[a:b, r_first[k]: r_last[k]] = chunk[k - k0, ls][:, r_local[k]]

    if threads and len(units) >= 2:
        job = _pool().submit(work)
        try:
            work()
        except BaseException:  # Ctrl-C or an error here: the checker thread stops at its next unit
            failed.append(-1)
            raise
        finally:
            job.result()
    else:
        work()
    if failed:
        return None
    return out[:, 0] if layout.flat else out
