"""Reading a recorded run: `Run`, lazily by step range and row subset (numpy / ml_dtypes bf16 or torch).

The writer and the format live in record.py, which is on the training path; this reader is not
(runs.TRAINING_MODULES), so adding an accessor here never changes a run key or retrains the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from experiments.errors import DataError
from experiments.record import STEP_TENSORS


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
        # the AdamW kernel laws of the machine that trained the run (experiments.laws); None in older runs
        self.kernel_laws = json.loads(a["kernel_laws"]) if "kernel_laws" in a else None
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

    def census(self, top: int = 20, examples: int = 10) -> dict:
        """Live/dead census of this run's vocabulary on its training text (tokenizer.census_of_counts)."""
        from experiments.census import census_of_counts

        with h5py.File(self.path, "r") as f:
            manifest = json.loads(f.attrs["corpus_manifest"]) if "corpus_manifest" in f.attrs else {}
        return census_of_counts(self.counts, self.tokenizer(), manifest, top=top, examples=examples)

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
