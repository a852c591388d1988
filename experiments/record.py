"""The recording format: one HDF5 file per run, written by `Recorder`, read by `Run`.

Layout (schema FORMAT_VERSION; root attributes as in ARCHITECTURE.md plus `tokenizer`, the tokenizer JSON):
  /tokens (N,) int32       recorded row ids (sorted)          /dead (V,) bool     /counts (V,) int64
  /steps  (T,) int32       recorded steps; step 0 = the initialization
  /loss /lr /clip_scale (S,)  every training step 1..S (float32, float64, float32)
  /W /E /m /v /grad (T, N, D)  uint16 bf16 bit patterns with attr dtype=bfloat16, or float32 (fp32 tensors)
  /h_mean (T, D) float32   mean final hidden state over batch x positions of the forward at that step
Row t of m, v is the optimizer state that produced W[t]; row t of grad is the (unclipped) gradient of step t.
Step 0 has no forward: its grad rows are 0 and its h_mean row is NaN.

bf16 is never stored as float16 (lossy); its exact bits go to disk as uint16. Chunks are one step by a block
of rows, so a step is written once (no read-modify-write) and one token's trajectory reads T small chunks.
No compression (it slows writes by an order of magnitude); memory does not grow with the number of steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from experiments.errors import DataError

FORMAT_VERSION = 1
STEP_TENSORS = ("W", "E", "m", "v", "grad")
_CHUNK_BYTES = 64 * 1024  # target chunk size: small enough that one row's trajectory reads little


def _chunk_rows(n_rows: int, width: int, itemsize: int) -> int:
    return max(1, min(n_rows, _CHUNK_BYTES // max(1, width * itemsize)))


class Recorder:
    """Streams one run into `path` (normally a temp file the store renames once complete).

    `tensors` maps a name in W, E, m, v, grad, h_mean to its dtype ("bfloat16" or "float32").
    """

    def __init__(self, path: str | Path, *, attrs: dict[str, Any], tokens: np.ndarray, steps: np.ndarray,
                 steps_total: int, d_model: int, tensors: dict[str, str], dead: np.ndarray, counts: np.ndarray):
        self.path = Path(path)
        self.tokens = np.asarray(tokens, dtype=np.int32)
        self.steps = np.asarray(steps, dtype=np.int32)
        self.index = {int(s): i for i, s in enumerate(self.steps)}
        self.tensors = dict(tensors)
        self.steps_total = steps_total
        self._scalar_at = 0
        N, T, D = len(self.tokens), len(self.steps), d_model
        try:
            # cache sized for one chunk per dataset; chunks are never revisited
            self.f = h5py.File(self.path, "w", rdcc_nbytes=4 * _CHUNK_BYTES * (len(tensors) + 4))
            for k, v in attrs.items():
                self.f.attrs[k] = v
            self.f.attrs["schema"] = FORMAT_VERSION
            self.f.attrs["complete"] = 0
            self.f.attrs["steps_total"] = steps_total
            self.f.attrs["steps_recorded"] = T
            self.f.create_dataset("tokens", data=self.tokens)
            self.f.create_dataset("steps", data=self.steps)
            self.f.create_dataset("dead", data=np.asarray(dead, dtype=bool))
            self.f.create_dataset("counts", data=np.asarray(counts, dtype=np.int64))
            S = steps_total
            self.f.create_dataset("loss", shape=(S,), dtype=np.float32, chunks=(min(S, 4096),))
            self.f.create_dataset("lr", shape=(S,), dtype=np.float64, chunks=(min(S, 4096),))
            self.f.create_dataset("clip_scale", shape=(S,), dtype=np.float32, chunks=(min(S, 4096),))
            for name, dtype in self.tensors.items():
                store = np.uint16 if dtype == "bfloat16" else np.float32
                if name == "h_mean":
                    ds = self.f.create_dataset(name, shape=(T, D), dtype=np.float32, chunks=(1, D))
                else:
                    rows = _chunk_rows(N, D, np.dtype(store).itemsize)
                    ds = self.f.create_dataset(name, shape=(T, N, D), dtype=store, chunks=(1, rows, D))
                ds.attrs["dtype"] = dtype if name != "h_mean" else "float32"
        except OSError as e:
            self.abort()
            raise DataError(f"{self.path}: cannot create the recording: {e}") from e

    def _write(self, what: str, fn) -> None:
        try:
            fn()
        except OSError as e:  # disk full, quota, I/O error: the caller removes the temp file
            raise DataError(f"{self.path}: writing {what} failed: {e}") from e

    def wants(self, step: int) -> bool:
        return step in self.index

    def write_step(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one recorded step; bf16 arrays arrive as uint16 bit patterns, the rest as float32."""
        i = self.index[step]
        for name, arr in arrays.items():
            self._write(f"{name}[step {step}]", lambda name=name, arr=arr: self.f[name].write_direct(
                np.ascontiguousarray(arr), dest_sel=np.s_[i]))

    def write_scalars(self, start_step: int, loss: np.ndarray, lr: np.ndarray, clip_scale: np.ndarray) -> None:
        """Loss, lr and clip scale for steps start_step .. start_step+len-1 (1-based training steps)."""
        a, b = start_step - 1, start_step - 1 + len(loss)
        for name, arr in (("loss", loss), ("lr", lr), ("clip_scale", clip_scale)):
            self._write(name, lambda name=name, arr=arr: self.f[name].__setitem__(slice(a, b), arr))
        self._scalar_at = b

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Mark complete, flush and fsync. Only after this may the file be renamed to its final name."""
        if self._scalar_at != self.steps_total:
            raise DataError(f"{self.path}: only {self._scalar_at} of {self.steps_total} steps were recorded")

        def _close() -> None:
            for k, v in (extra_attrs or {}).items():
                self.f.attrs[k] = v
            self.f.attrs["complete"] = 1
            self.f.flush()
            self.f.close()

        self._write("the final attributes", _close)
        with open(self.path, "rb+") as fh:
            os.fsync(fh.fileno())

    def abort(self) -> None:
        try:
            f = getattr(self, "f", None)
            if f is not None and f.id.valid:
                f.close()
        except Exception:  # already failing; the temp file is removed by the caller
            pass


def _as_bf16(bits: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return bits.view(ml_dtypes.bfloat16)


class Run:
    """A complete recorded run (read-only). Opens the file per access, so it never pins a handle."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                a = dict(f.attrs)
                self.steps = f["steps"][()]
                self.tokens = f["tokens"][()]
                self.available = sorted(k for k in f.keys())
        except (OSError, KeyError) as e:
            raise DataError(f"{self.path}: not a readable run file: {e}") from e
        if int(a.get("complete", 0)) != 1:
            raise DataError(f"{self.path}: run is not complete (interrupted or still training)")
        self.name = str(a["name"])
        self.key = str(a["key"])
        self.config = json.loads(a["config"])
        self.key_parts = json.loads(a["key_parts"])
        self.versions = json.loads(a["versions"])
        self.created = str(a["created"])
        self.description = str(a.get("description", ""))
        self.steps_total = int(a["steps_total"])
        self._row = {int(t): i for i, t in enumerate(self.tokens)}

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, key={self.key}, steps={self.steps_total}, rows={len(self.tokens)}, "
                f"tensors={[t for t in self.available if t in (*STEP_TENSORS, 'h_mean')]})")

    def _read(self, name: str) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return f[name][()]

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

        with h5py.File(self.path, "r") as f:
            return Tokenizer.from_str(f.attrs["tokenizer"])

    def _step_index(self, steps) -> tuple[np.ndarray, bool]:
        """Step numbers (int, slice of step numbers, list or None) -> indices into /steps; scalar flag."""
        if steps is None:
            return np.arange(len(self.steps)), False
        if isinstance(steps, slice):
            lo = -np.inf if steps.start is None else steps.start
            hi = np.inf if steps.stop is None else steps.stop
            idx = np.nonzero((self.steps >= lo) & (self.steps < hi))[0]
            return idx[:: steps.step or 1], False
        scalar = np.ndim(steps) == 0
        wanted = np.atleast_1d(np.asarray(steps, dtype=np.int64))
        idx = np.searchsorted(self.steps, wanted)
        bad = (idx >= len(self.steps)) | (self.steps[np.minimum(idx, len(self.steps) - 1)] != wanted)
        if bad.any():
            raise KeyError(f"{self.path}: steps {wanted[bad][:10].tolist()} were not recorded "
                           f"(recorded: {len(self.steps)} steps from {self.steps[0]} to {self.steps[-1]})")
        return idx, scalar

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
        with h5py.File(self.path, "r") as f:
            ds = f[name]
            dtype = ds.attrs["dtype"]
            data = _read_selection(ds, sidx, ridx)
        if s_scalar:
            data = data[0]
        if r_scalar:
            data = data[..., 0, :] if not s_scalar else data[0]
        if dtype == "bfloat16" and kind != "bits":
            data = _as_bf16(data)
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


def _read_selection(ds: h5py.Dataset, sidx: np.ndarray, ridx: np.ndarray | None) -> np.ndarray:
    """h5py allows one fancy index per read: use slices where the selection is contiguous."""
    if len(sidx) == 0:
        shape = (0, *ds.shape[1:]) if ridx is None else (0, len(ridx), ds.shape[2])
        return np.empty(shape, dtype=ds.dtype)
    contiguous = np.array_equal(sidx, np.arange(sidx[0], sidx[0] + len(sidx)))
    s_sel = slice(int(sidx[0]), int(sidx[0]) + len(sidx)) if contiguous else None
    if ridx is None:
        return ds[s_sel] if contiguous else ds[np.unique(sidx)][np.searchsorted(np.unique(sidx), sidx)]
    order = np.unique(ridx)
    back = np.searchsorted(order, ridx)
    if contiguous:
        if len(order) == 1:
            return ds[s_sel, int(order[0]): int(order[0]) + 1][:, back]
        return ds[s_sel, order][:, back]
    us = np.unique(sidx)
    lo, hi = int(order[0]), int(order[-1]) + 1
    block = ds[us, lo:hi]
    return block[np.searchsorted(us, sidx)][:, order - lo][:, back]
