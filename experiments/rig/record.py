"""The recording format: one HDF5 file per run, written by `Recorder` (read by `recording.Run`).

Layout (schema FORMAT_VERSION; root attributes as in ARCHITECTURE.md plus `tokenizer`, the tokenizer JSON):
  /tokens (N,) int32       recorded row ids (sorted)          /dead (V,) bool     /counts (V,) int64
  /steps  (T,) int32       recorded steps; step 0 = the initialization
  /loss /lr /clip_scale (S,)  every training step 1..S (float32, float64, float32)
  /W /E /m /v /grad (T, N, D)  uint16 bf16 bit patterns with attr dtype=bfloat16, or float32 (fp32 tensors)
  /master (T, N, D) float32   W's fp32 master copy (fp32-master precisions): what the optimizer updates
  /h_mean (T, D) float32   mean final hidden state over batch x positions of the forward at that step
Row t of m, v is the optimizer state that produced W[t]; row t of grad is the (unclipped) gradient of step t.
Step 0 has no forward: its grad rows are 0 and its h_mean row is NaN.

bf16 is never stored as float16 (lossy); its exact bits go to disk as uint16. Chunks are STEP_BLOCK recorded
steps by a block of rows (about 32 KiB), chosen for the two ways analyses read: one token's trajectory over
1,000 steps reads 126 small chunks (4 MB), and a block of steps of every row (geometry.iter_blocks, 128 steps)
reads at most one chunk row of steps more than it needs. Where STEP_BLOCK steps of a tensor exceed 8 MiB
(every row of the vocabulary recorded) chunks are about 128 KiB: a quarter as many chunks to gather, filter
and index per step, which the writer thread takes from the training's two cores. The Recorder gathers
STEP_BLOCK steps in memory and writes whole chunks (no read-modify-write), from a background thread fed
through a bounded queue, so the training loop only copies each recorded tensor once; memory stays bounded
whatever the number of steps.
No compression (it slows writes by an order of magnitude).

Integrity (schema 2): every dataset is chunked with HDF5's fletcher32 filter, so a changed byte fails the read
of its chunk instead of returning altered numbers; the metadata is written in the HDF5 1.10 format, whose
object headers and chunk indexes carry checksums too. At completion the root attribute `content_sha256`
(JSON {dataset: sha256 hex of its raw bytes in C order}) is written; it is hashed from the buffers as they
are written (steps arrive in order), never by re-reading the file. `recording.check` verifies both.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from experiments.errors import DataError, ResumeError

FORMAT_VERSION = 2
STEP_TENSORS = ("W", "E", "m", "v", "grad", "master")
DIGEST_ATTR = "content_sha256"  # JSON {dataset name: sha256 hex of its raw C-order bytes}
LIBVER = ("v110", "latest")  # object headers and chunk indexes with checksums (readable by HDF5 >= 1.10)
STEP_BLOCK = 8  # recorded steps per chunk: a trajectory reads T/8 chunks, a step read 8 steps' worth
_CHUNK_BYTES = 32 * 1024  # target chunk size: small enough that one row's trajectory reads little
# ... except where a block of steps is large (every row recorded): there the writer's per-chunk work (HDF5's
# gather, filter and index per chunk) costs the training more than a trajectory read gains (bench_train)
_BIG_CHUNK_BYTES, _BIG_BLOCK_BYTES = 128 * 1024, 8 << 20
_FREE_MARGIN = 64 * 1024  # bytes beyond the data and attributes: HDF5 metadata, chunk indexes (+1 %)
_QUEUE_BLOCKS = 2  # chunk rows of steps (per tensor) the training may run ahead of the writer thread


def _chunk_shape(shape: tuple, itemsize: int, target: int | None = None) -> tuple:
    """(steps, rows, D) -> (STEP_BLOCK, rows filling about `target` bytes, D); (steps, D) -> (STEP_BLOCK, D).
    `target` defaults to _CHUNK_BYTES, or _BIG_CHUNK_BYTES where STEP_BLOCK steps of all rows exceed
    _BIG_BLOCK_BYTES."""
    ts = max(1, min(shape[0], STEP_BLOCK))
    if len(shape) == 2:
        return (ts, shape[1])
    if target is None:
        big = ts * shape[1] * shape[2] * itemsize > _BIG_BLOCK_BYTES
        target = _BIG_CHUNK_BYTES if big else _CHUNK_BYTES
    rows = max(1, min(shape[1], target // max(1, ts * shape[2] * itemsize)))
    return (ts, rows, shape[2])


class _Block:
    """Consecutive recorded steps of one tensor, gathered until a whole chunk row of steps can be written."""

    def __init__(self, steps: int, shape: tuple, dtype):
        self.buf = np.empty((steps, *shape), dtype=dtype)
        self.start, self.n = 0, 0


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 1024:,.0f} KB"


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, whether raised by Python (errno) or reported inside an HDF5 message."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "errno = 28" in text or "No space left" in text or "Disk quota exceeded" in text


def h5_reason(e: BaseException) -> str:
    """HDF5's one-line reason from an h5py error (which can span lines and carry a timestamp and buffers)."""
    text = " ".join(str(e).split())
    if "error message = '" in text:  # "(file write failed: time = ..., error message = 'No space left ...', ...)"
        return text.split("error message = '", 1)[1].split("'", 1)[0]
    return text


class _Sha256:
    """sha256 whose running state can be saved and restored (OpenSSL's SHA256_CTX through ctypes), so a
    resumed recording continues its digests from a checkpoint instead of reading every row back. Where
    libcrypto is missing or disagrees with hashlib on a probe, `state()` is None and a resume rebuilds."""

    _lib = None
    _CTX = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len (32-bit words)

    @classmethod
    def _crypto(cls):
        if cls._lib is None:
            cls._lib = False
            try:
                import ctypes
                import ctypes.util

                lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
                for fn in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
                    fn.restype = ctypes.c_int
                lib.SHA256_Update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
                probe = bytes(range(256)) * 37
                ctx = ctypes.create_string_buffer(cls._CTX)
                out = ctypes.create_string_buffer(32)
                lib.SHA256_Init(ctx)
                lib.SHA256_Update(ctx, probe, len(probe))
                lib.SHA256_Final(out, ctx)
                if out.raw == hashlib.sha256(probe).digest():
                    cls._lib = lib
            except (OSError, AttributeError):
                pass
        return cls._lib or None

    def __init__(self, state: bytes | None = None):
        import ctypes

        self.lib = self._crypto()
        if self.lib is None:
            if state is not None:
                raise ValueError("no libcrypto here to continue a saved digest state")
            self.h = hashlib.sha256()
            return
        self.ctx = ctypes.create_string_buffer(self._CTX)
        if state is None:
            self.lib.SHA256_Init(self.ctx)
        elif len(state) == self._CTX:
            ctypes.memmove(self.ctx, state, self._CTX)
        else:
            raise ValueError(f"a saved digest state of {len(state)} bytes, not {self._CTX}")

    def update(self, data) -> None:
        if self.lib is None:
            self.h.update(data)
            return
        buf = np.frombuffer(data, np.uint8)
        if len(buf):
            self.lib.SHA256_Update(self.ctx, buf.ctypes.data, len(buf))

    def state(self) -> bytes | None:
        return None if self.lib is None else self.ctx.raw

    def hexdigest(self) -> str:
        if self.lib is None:
            return self.h.hexdigest()
        import ctypes

        ctx, out = ctypes.create_string_buffer(self.ctx.raw, self._CTX), ctypes.create_string_buffer(32)
        self.lib.SHA256_Final(out, ctx)
        return out.raw.hex()


class _Digest:
    """sha256 of one dataset's bytes in C order, fed by writes along axis 0 in increasing order.

    Rows never written are the fill value (zeros) in the file, so a gap is hashed as zeros.
    """

    def __init__(self, shape: tuple, dtype, saved: dict | None = None):
        self.rows = shape[0] if shape else 1
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self.at = 0 if saved is None else int(saved["at"])
        self.h = _Sha256(None if saved is None else saved["sha256"])

    def _zeros(self, n: int) -> None:
        zero = bytes(min(n * self.row_bytes, 1 << 20))
        left = n * self.row_bytes
        while left > 0:
            self.h.update(zero[:left])
            left -= len(zero)

    def feed(self, start: int, arr: np.ndarray, rows: int) -> None:
        if start < self.at:
            raise DataError(f"rows from {start} written after row {self.at}: the recording digest needs "
                            "steps in increasing order")
        self._zeros(start - self.at)
        self.h.update(memoryview(arr).cast("B"))
        self.at = start + rows

    def hexdigest(self) -> str:
        self._zeros(self.rows - self.at)
        self.at = self.rows
        return self.h.hexdigest()

    def saved(self) -> dict | None:
        state = self.h.state()
        return None if state is None else {"at": self.at, "sha256": state}


class Recorder:
    """Streams one run into `path` (normally a temp file the store renames once complete).

    `tensors` maps a name in W, E, m, v, grad, h_mean to its dtype ("bfloat16" or "float32").
    `checksum=False` writes the schema-1 layout (no filter, no digest): only for bench/bench_integrity.py.
    `resume_at=step` continues the recording a killed writer left at `path` after its checkpoint at `step`, in
    place (see `_continue`); later steps then overwrite whatever the killed writer wrote after that step.
    `digests` is what `digest_state()` returned at that checkpoint: the digests continue from it (else they are
    rebuilt by reading the rows back).
    """

    def __init__(self, path: str | Path, *, attrs: dict[str, Any], tokens: np.ndarray, steps: np.ndarray,
                 steps_total: int, d_model: int, tensors: dict[str, str], dead: np.ndarray, counts: np.ndarray,
                 checksum: bool = True, resume_at: int | None = None, digests: dict | None = None):
        self.path = Path(path)
        self.tokens = np.asarray(tokens, dtype=np.int32)
        self.steps = np.asarray(steps, dtype=np.int32)
        self.index = {int(s): i for i, s in enumerate(self.steps)}
        self.tensors = dict(tensors)
        self.steps_total = steps_total
        self.checksum = checksum
        self._scalar_at = 0
        self._ds: dict[str, h5py.Dataset] = {}
        self._digest: dict[str, _Digest] = {}
        self._failed = False
        self._blocks: dict[str, _Block] = {}  # the chunk row of steps being filled, per tensor
        self._spare: dict[str, list[np.ndarray]] = {}  # block buffers the writer has finished with
        self._last: dict[str, int] = {}  # last step index given per tensor (steps must arrive in order)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # the writer thread's failure, raised in the caller's thread
        self._stop = False
        N, T, D, S = len(self.tokens), len(self.steps), d_model, steps_total
        dead, counts = np.asarray(dead, dtype=bool), np.asarray(counts, dtype=np.int64)
        layout = {"tokens": ((N,), np.int32), "steps": ((T,), np.int32), "dead": (dead.shape, bool),
                  "counts": (counts.shape, np.int64), "loss": ((S,), np.float32), "lr": ((S,), np.float64),
                  "clip_scale": ((S,), np.float32)}
        for name, dtype in self.tensors.items():
            store = np.uint16 if dtype == "bfloat16" else np.float32
            layout[name] = ((T, D), np.float32) if name == "h_mean" else ((T, N, D), store)
        self.needed = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(t).itemsize for s, t in layout.values())
        self.needed += self.needed // 100 + sum(len(str(v)) for v in attrs.values()) + _FREE_MARGIN
        if resume_at is not None:
            self._continue(resume_at, attrs, layout, {"tokens": self.tokens, "steps": self.steps, "dead": dead,
                                                      "counts": counts}, digests)
            return
        self._check_space()
        try:
            # cache sized for one chunk per dataset; chunks are never revisited
            # whole chunks are written at once and never revisited: a small chunk cache is enough
            self.f = h5py.File(self.path, "w", rdcc_nbytes=4 * _BIG_CHUNK_BYTES * (len(tensors) + 4),
                               rdcc_w0=1.0, **({"libver": LIBVER} if checksum else {}))
            for k, v in attrs.items():
                self.f.attrs[k] = v
            self.f.attrs["schema"] = FORMAT_VERSION if checksum else 1
            self.f.attrs["complete"] = 0
            self.f.attrs["steps_total"] = steps_total
            self.f.attrs["steps_recorded"] = T
            for name, data in (("tokens", self.tokens), ("steps", self.steps), ("dead", dead), ("counts", counts)):
                self._create(name, data.shape, data.dtype, (min(len(data), 1 << 20),) if len(data) else None)
                self._put(name, 0, data)
            for name in ("loss", "lr", "clip_scale"):
                self._create(name, (S,), layout[name][1], (min(S, 4096),))
            for name, dtype in self.tensors.items():
                shape, store = layout[name]
                ds = self._create(name, shape, store, _chunk_shape(shape, np.dtype(store).itemsize))
                ds.attrs["dtype"] = dtype if name != "h_mean" else "float32"
        except (OSError, RuntimeError) as e:
            self._fail(e, "creating the recording")

    def _check_space(self, have: int = 0) -> None:
        """Refuse before training when the disk cannot hold the recording (a full disk mid-run wastes the run);
        `have`: bytes of it already on disk (a recording being continued)."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < self.needed - have:
            raise DataError(f"{self.path.parent}: disk full: {self.path.name} needs about {_mb(self.needed)}, "
                            f"{_mb(free)} free; free some space (lab gc) or set LAB_STORE to a larger disk")

    def _create(self, name: str, shape: tuple, dtype, chunks: tuple | None) -> h5py.Dataset:
        # fletcher32 needs chunks; an empty dataset has none (and no bytes to protect)
        filtered = self.checksum and chunks is not None and all(shape)
        ds = self.f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks if all(shape) else None,
                                   fletcher32=filtered)
        self._ds[name] = ds  # kept open: a dataset closed per write would flush (and fail) in a destructor
        if self.checksum:
            self._digest[name] = _Digest(shape, dtype)
        return ds

    def _put(self, name: str, start: int, arr: np.ndarray) -> None:
        ds = self._ds[name]
        arr = np.ascontiguousarray(arr, dtype=ds.dtype)  # the very bytes the file will hold
        one = arr.ndim == ds.ndim - 1  # one row of axis 0 (a step), or a block of rows
        if name in self._digest:
            self._digest[name].feed(start, arr, 1 if one else len(arr))
        if arr.size:
            ds.write_direct(arr, dest_sel=np.s_[start] if one else np.s_[start: start + len(arr)])

    def _error_for(self, e: BaseException, what: str) -> DataError:
        """One DataError naming the file (and, when the disk is full, the space the recording needs)."""
        if is_disk_full(e):
            try:
                free = f", {_mb(shutil.disk_usage(self.path.parent).free)} free"
            except OSError:
                free = ""
            return DataError(f"{self.path}: {what} failed: disk full (No space left on device): the recording "
                             f"needs about {_mb(self.needed)}{free}; free some space (lab gc) or set LAB_STORE "
                             "to a larger disk; nothing was stored")
        return DataError(f"{self.path}: {what} failed: {h5_reason(e)}")

    def _fail(self, e: BaseException, what: str):
        """Close what can be closed and raise one DataError naming the file (and the space it needs)."""
        self._failed = True
        err = self._error_for(e, what)
        self.abort()
        raise err from None

    def _write(self, what: str, fn) -> None:
        if self._failed:
            raise DataError(f"{self.path}: the recording already failed; nothing more is written")
        try:
            fn()
        except (OSError, RuntimeError) as e:  # disk full, quota, I/O error (h5py raises either)
            self._fail(e, f"writing {what}")

    def wants(self, step: int) -> bool:
        return step in self.index

    def write_step(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Record one step of some tensors (a step's tensors may come in several calls); bf16 arrays arrive as
        uint16 bit patterns, the rest as float32. Each array is copied before this returns (views of live
        tensors are fine); the file is written by a background thread, whole chunks at a time."""
        self._raise_writer_error()
        i = self.index[step]
        for name, arr in arrays.items():
            if i <= self._last.get(name, -1):
                raise DataError(f"{self.path}: {name} of step {step} given after a later step: the recording "
                                "digest needs steps in increasing order")
            self._last[name] = i
            blk = self._blocks.get(name)
            if blk is None:
                ds = self._ds[name]
                ts = ds.chunks[0] if ds.chunks else 1
                blk = self._blocks[name] = _Block(ts, ds.shape[1:], ds.dtype)
            if blk.n and blk.start + blk.n != i:  # a gap: the steps before it go out as they are
                self._send(name)
            if blk.n == 0:
                blk.start = i
            blk.buf[blk.n] = arr  # the one copy: from the caller's (maybe live) tensor into the chunk row
            blk.n += 1
            if (i + 1) % len(blk.buf) == 0 or i + 1 == len(self.steps):
                self._send(name)

    def _send(self, name: str) -> None:
        """Hand the filled part of `name`'s block to the writer thread and start a fresh buffer."""
        blk = self._blocks[name]
        if blk.n == 0:
            return
        start, n, buf = blk.start, blk.n, blk.buf
        spare = self._spare.setdefault(name, [])
        blk.buf, blk.n = (spare.pop() if spare else np.empty_like(buf)), 0

        def put() -> None:
            first, last = int(self.steps[start]), int(self.steps[start + n - 1])
            try:
                self._put(name, start, buf[:n])
            except (OSError, RuntimeError) as e:
                raise self._error_for(e, f"writing {name}[step {first}{f'-{last}' if last != first else ''}]") from None
            spare.append(buf)

        self._enqueue(put)

    def _enqueue(self, fn) -> None:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=_QUEUE_BLOCKS * max(1, len(self.tensors)))
            self._thread = threading.Thread(target=self._writer, name=f"recorder {self.path.name}", daemon=True)
            self._thread.start()
        self._queue.put(fn)

    def _writer(self) -> None:
        """The writer thread: runs queued writes in order; after a failure it only drains the queue."""
        while True:
            fn = self._queue.get()
            try:
                if fn is None:
                    return
                if self._error is None and not self._stop:
                    fn()
            except BaseException as e:  # raised in the training thread at its next call
                self._error = e
            finally:
                self._queue.task_done()

    def _drain(self) -> None:
        """Send every partial block and wait until the writer thread has written everything queued."""
        for name in self._blocks:
            self._send(name)
        if self._queue is not None:
            self._queue.join()
        self._raise_writer_error()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            err, self._failed = self._error, True
            self.abort()
            if isinstance(err, DataError):
                raise err from None
            raise DataError(f"{self.path}: writing the recording failed: {err!r}") from None
        if self._failed:
            raise DataError(f"{self.path}: the recording already failed; nothing more is written")

    def write_scalars(self, start_step: int, loss: np.ndarray, lr: np.ndarray, clip_scale: np.ndarray) -> None:
        """Loss, lr and clip scale for steps start_step .. start_step+len-1 (1-based training steps)."""
        self._raise_writer_error()
        a = start_step - 1
        arrays = [(name, np.array(arr, ndmin=1)) for name, arr in (("loss", loss), ("lr", lr),
                                                                    ("clip_scale", clip_scale))]

        def put() -> None:
            for name, arr in arrays:
                try:
                    self._put(name, a, arr)
                except (OSError, RuntimeError) as e:
                    raise self._error_for(e, f"writing {name}") from None

        self._enqueue(put)
        self._scalar_at = a + len(loss)

    def rows_upto(self, step: int) -> int:
        """How many rows of the step tensors hold steps 0..`step`."""
        return int(np.searchsorted(self.steps, step, side="right"))

    def checkpoint(self) -> None:
        """Make everything written so far durable: HDF5 writes its caches, the OS its buffers.

        A process killed after this leaves a file whose rows up to now read back intact (each chunk and, in
        schema 2, each metadata block carries a checksum, so a block torn by the kill fails loudly)."""
        def _flush() -> None:
            self.f.flush()
            os.fsync(self.f.id.get_vfd_handle())

        self._drain()
        self._write("a checkpoint", _flush)

    def digest_state(self) -> dict | None:
        """The running digests as they stand (after `checkpoint`, i.e. exactly at its step), for the
        checkpoint: {dataset: {"at": rows fed, "sha256": state bytes}}; None where they cannot be saved."""
        saved = {name: d.saved() for name, d in self._digest.items()}
        return None if not saved or None in saved.values() else saved

    def _restored(self, saved: dict | None, expect: dict[str, int]) -> bool:
        """Continue the digests from a checkpoint's `digest_state` if it stands where this step's rows end."""
        if not saved or set(saved) != set(self._digest):
            return False
        try:
            if any(int(saved[name]["at"]) != at for name, at in expect.items()):
                return False
            self._digest = {name: _Digest(self._ds[name].shape, self._ds[name].dtype, saved[name])
                            for name in self._digest}
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def _continue(self, step: int, attrs: dict[str, Any], layout: dict[str, tuple],
                  static: dict[str, np.ndarray], digests: dict | None = None) -> None:
        """Take over the recording a writer killed after its checkpoint at `step` left at `self.path`, in place.

        Rows 0..`step` of the step tensors and the scalars of steps 1..`step` stay where they are: they are
        read (not rewritten), by the writer thread before anything else, to bring each running digest to where
        the killed writer's stood, so the digests see the same bytes in the same order as an uninterrupted
        run's. The layout, the fixed datasets and the root attributes that say what the file holds must be this
        run's. Rows after `step` are overwritten as training reaches them. Raises DataError (the file closed) if
        the file is not this run's or does not open; a row that does not read back fails the next write.
        With `digests` saved at that checkpoint, the digests continue from there and no row is read back."""
        rows = self.rows_upto(step)
        try:
            clear_consistency_flags(self.path)
            _claim_written_space(self.path, list(layout))
            have = self.path.stat().st_size
        except (OSError, RuntimeError, ValueError) as e:
            raise ResumeError(f"{self.path}: the interrupted recording does not read back up to step {step}: "
                              f"{h5_reason(e)}") from None
        self._check_space(have)  # a full disk is that failure, not a reason to start again from step 0
        try:
            self.f = h5py.File(self.path, "r+", rdcc_nbytes=4 * _BIG_CHUNK_BYTES * (len(self.tensors) + 4),
                               rdcc_w0=1.0, **({"libver": LIBVER} if self.checksum else {}))
            a = self.f.attrs
            want = {"schema": FORMAT_VERSION if self.checksum else 1, "steps_total": self.steps_total,
                    "steps_recorded": len(self.steps)}
            for k, v in {**want, "key": attrs.get("key")}.items():
                if v is not None and a.get(k) != v:
                    raise ValueError(f"its {k} is {a.get(k)!r}, not {v!r}")
            for name, (shape, dtype) in layout.items():
                ds = self.f[name]
                filtered = self.checksum and bool(all(shape))
                if ds.shape != tuple(shape) or ds.dtype != np.dtype(dtype) or ds.fletcher32 != filtered:
                    raise ValueError(f"its {name} is {ds.shape} {ds.dtype}, not {tuple(shape)} {np.dtype(dtype)}")
                if name in self.tensors:
                    size = np.dtype(dtype).itemsize  # the layout of this code, or of a writer before big chunks
                    expect = (_chunk_shape(shape, size), _chunk_shape(shape, size, _CHUNK_BYTES))
                    if ds.chunks not in expect or ds.attrs.get("dtype") != (
                            "float32" if name == "h_mean" else self.tensors[name]):
                        raise ValueError(f"its {name} has chunks {ds.chunks}, dtype {ds.attrs.get('dtype')!r}")
                self._ds[name] = ds
                if self.checksum:
                    self._digest[name] = _Digest(shape, dtype)
            for name, data in static.items():
                data = np.ascontiguousarray(data, dtype=layout[name][1])
                if not np.array_equal(self._ds[name][()], data):
                    raise ValueError(f"its {name} are not this run's")
                if name in self._digest:
                    self._digest[name].feed(0, data, len(data))
            for name in self.tensors:
                self._last[name] = rows - 1
            self._scalar_at = step
            for k, v in {**attrs, "complete": 0}.items():  # this process's attributes, as a fresh file has
                old = a.get(k)
                if old is None or isinstance(old, np.ndarray) or old != v:
                    a[k] = v
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            self._failed = True
            self.abort()
            raise ResumeError(f"{self.path}: the interrupted recording does not read back up to step {step}: "
                              f"{h5_reason(e)}") from None
        except BaseException:
            self.abort()
            raise
        if not self._digest:
            return
        expect = {name: len(data) for name, data in static.items()}
        expect.update({name: step for name in ("loss", "lr", "clip_scale")}, **{name: rows for name in self.tensors})
        if self._restored(digests, expect):
            return

        def rebuild() -> None:
            """The digests up to `step`: the rows read back (checksums verified), never written again. The
            writer thread's first job, so training starts meanwhile and no new row is fed before them."""
            try:
                for name in ("loss", "lr", "clip_scale"):
                    arr = self._ds[name][:step]
                    self._digest[name].feed(0, arr, len(arr))
                for name in self.tensors:
                    for start in range(0, rows, 64):  # blocks of steps: memory stays small
                        if self._stop:
                            return
                        block = self._ds[name][start:min(rows, start + 64)]
                        self._digest[name].feed(start, block, len(block))
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                raise ResumeError(f"{self.path}: the interrupted recording does not read back up to step {step}: "
                                  f"{h5_reason(e)}") from None

        self._enqueue(rebuild)

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Mark complete, flush and fsync. Only after this may the file be renamed to its final name."""
        if self._scalar_at != self.steps_total:
            raise DataError(f"{self.path}: only {self._scalar_at} of {self.steps_total} steps were recorded")
        self._drain()
        self._stop_writer()

        def _close() -> None:
            for k, v in (extra_attrs or {}).items():
                self.f.attrs[k] = v
            if self._digest:
                digests = {name: d.hexdigest() for name, d in sorted(self._digest.items())}
                self.f.attrs[DIGEST_ATTR] = json.dumps(digests, sort_keys=True)
            self.f.attrs["complete"] = 1
            self.f.flush()
            self._ds.clear()
            f, self.f = self.f, None
            f.close()

        self._write("the final attributes", _close)
        try:
            with open(self.path, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as e:
            self._fail(e, "syncing the recording to disk")

    def _stop_writer(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            self._queue.put(None)
            thread.join()

    def abort(self) -> None:
        """Close the file without letting HDF5 fail later (in a destructor, or at exit with a segfault).

        Idempotent: after a close that failed, h5py segfaulted on the next look at the file id.
        """
        self._stop = True  # the writer thread skips what is still queued
        self._stop_writer()
        f, self.f = getattr(self, "f", None), None
        if f is None:
            self._ds.clear()
            return
        try:
            if not f.id.valid:
                return
            if self._failed:
                # HDF5 still holds dirty chunks and metadata it could not write, and every close retries
                # them (raising in destructors). The temp file is going to be removed: point HDF5's
                # descriptor at /dev/null so those writes succeed, harmlessly, and the close completes.
                fd = f.id.get_vfd_handle()
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
            self._ds.clear()  # a dataset id released before the redirect would retry its writes and fail
            f.close()
        except Exception:  # already failing; the temp file is removed by the caller
            pass
        finally:
            self._ds.clear()


# --------------------------------------------------------------------------- a file left by a killed writer


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5's metadata (H5_checksum_lookup3)."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & mask
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & mask
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & mask
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask  # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask  # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask  # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask  # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask  # noqa: E702
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - (n - i))
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c ^= b; c = (c - rot(b, 14)) & mask  # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask  # noqa: E702
    return c


def _superblock(fh) -> tuple[bytearray, int] | None:
    """(the first bytes, the checksum's offset) of a version 2/3 superblock at offset 0, checksum verified; None
    for anything else (not HDF5 at offset 0, or an old superblock without flags or checksum)."""
    fh.seek(0)
    head = bytearray(fh.read(96))
    if head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
        return None
    end = 12 + 4 * head[9]  # flags, then base, extension, end-of-file and root addresses
    if int.from_bytes(head[end:end + 4], "little") != _lookup3(bytes(head[:end])):
        raise DataError(f"{fh.name}: the HDF5 superblock fails its checksum; the file cannot be resumed")
    return head, end


def _write_superblock(fh, head: bytearray, end: int) -> None:
    head[end:end + 4] = _lookup3(bytes(head[:end])).to_bytes(4, "little")
    fh.seek(0)
    fh.write(head[:end + 4])


def clear_consistency_flags(path: str | Path) -> None:
    """What HDF5's `h5clear -s` does: reset the "open for writing" flags a killed writer leaves in a version 2/3
    superblock (HDF5 refuses to open such a file at all), re-checksumming the superblock. The superblock is
    verified first, so a file that is not what we think is left untouched."""
    with open(path, "r+b") as fh:
        sb = _superblock(fh)
        if sb is None or sb[0][11] == 0:
            return  # not HDF5 at offset 0, an old superblock without flags, or nothing to clear
        head, end = sb
        head[11] = 0
        _write_superblock(fh, head, end)


def _claim_written_space(path: str | Path, names: list[str]) -> None:
    """Before a killed writer's file is written again: make HDF5 allocate new space after every chunk it holds.

    The superblock's end-of-allocation is the one of the last flush (the checkpoint). The killed writer went on
    writing chunks past it, and the metadata cache may have written index entries pointing at some of them
    before the kill; a new writer would allocate its chunks from the old end, over chunks the index still
    names. When a chunk of `names` reaches past that end, the end is moved to the file's (what `h5clear
    --increment` does). Otherwise it stays, and the new writer reuses the space of the orphaned chunks."""
    with open(path, "r+b") as fh:
        sb = _superblock(fh)
        if sb is None:
            return
        head, end = sb
        n = head[9]
        base = int.from_bytes(head[12:12 + n], "little")
        eoa = int.from_bytes(head[12 + 2 * n:12 + 3 * n], "little")
        size = os.fstat(fh.fileno()).st_size - base
        if size <= eoa:
            return
    reach = 0

    def note(chunk) -> None:
        nonlocal reach
        reach = max(reach, chunk.byte_offset + chunk.size)

    with h5py.File(path, "r") as f:
        for name in names:
            ds = f.get(name)
            if isinstance(ds, h5py.Dataset) and ds.chunks is not None:
                try:
                    ds.id.chunk_iter(note)
                except AttributeError:  # an HDF5 without H5Dchunk_iter: assume the worst
                    reach = size
    if reach <= eoa:
        return
    with open(path, "r+b") as fh:
        head, end = _superblock(fh)
        head[12 + 2 * n:12 + 3 * n] = size.to_bytes(n, "little")
        _write_superblock(fh, head, end)
