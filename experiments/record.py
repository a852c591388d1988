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

bf16 is never stored as float16 (lossy); its exact bits go to disk as uint16. Chunks are one step by a block
of rows, so a step is written once (no read-modify-write) and one token's trajectory reads T small chunks.
No compression (it slows writes by an order of magnitude); memory does not grow with the number of steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from experiments.errors import DataError

FORMAT_VERSION = 1
STEP_TENSORS = ("W", "E", "m", "v", "grad", "master")
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
