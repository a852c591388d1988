"""Load one (V, D) embedding or unembedding matrix from a checkpoint, exactly, as bf16 bits plus identity bytes.

Sources:
- safetensors: one file, or a sharded Hugging Face checkpoint (``model.safetensors.index.json``); read lazily
  with ``safe_open`` in row blocks, so only the one tensor is ever in memory.
- GGUF (through the ``gguf`` package): F32, F16, BF16 and Q8_0 tensors.
- our own runs (``.h5`` files of the run store): ``/W`` (or ``/E``) uint16 at one recorded step.

How dtypes map (``Matrix``):
- ``bits`` is always (V, D) uint16 bf16 bit patterns. For bf16 tensors they *are* the stored bits. For
  F32/F16 they are the values rounded to bf16 (nearest even); for Q8_0 the dequantized values rounded to
  bf16. Lattice operations (ULPs, exponent selection, adjacency) are only meaningful when ``exact_bf16``.
- ``identity`` is what black holes are defined on: the stored bytes of each row. For bf16 that is ``bits``;
  for F32/F16 the original float bits; for Q8_0 the raw quantized blocks (scale + int8 values), so two rows
  are one black hole only if their stored blocks are identical.

Token strings come from a ``tokenizer.json`` next to the checkpoint (safetensors) or from the GGUF's
``tokenizer.ggml.tokens`` metadata. Every failure raises ``CheckpointError`` naming the file and tensor.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.errors import DataError
from experiments.lattice import from_float32, to_float32

# tried in order when no tensor name is given: the unembedding first (what the frozen-smoke work studied)
SAFETENSORS_NAMES = ("lm_head.weight", "model.embed_tokens.weight", "embed_tokens.weight",
                     "embeddings.word_embeddings.weight", "transformer.wte.weight", "wte.weight")
GGUF_NAMES = ("output.weight", "token_embd.weight")
RUN_NAMES = ("W",)
_ROW_BLOCK = 16384


class CheckpointError(DataError):
    """A checkpoint is missing, truncated, of an unsupported type, or lacks the requested 2-D tensor."""


@dataclass
class Matrix:
    """One (V, D) matrix loaded from a checkpoint (see the module docstring for the dtype mapping)."""

    path: Path
    tensor: str
    dtype: str  # as stored: "bfloat16", "float32", "float16", "Q8_0"
    bits: np.ndarray  # (V, D) uint16 bf16 bit patterns
    raw: np.ndarray | None  # (V, row bytes) stored bytes when dtype is not bf16
    row_ids: np.ndarray  # (V,) vocabulary id of each row
    tokens: list[str | None] | None = None  # token string per vocabulary id, when a tokenizer was found
    step: int | None = None  # run files: the recorded step

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.bits.shape)

    @property
    def exact_bf16(self) -> bool:
        """True when `bits` are the stored bits, so lattice analyses are valid."""
        return self.dtype == "bfloat16"

    @property
    def identity(self) -> np.ndarray:
        """Per-row arrays whose bytes define identity for the black-hole census."""
        return self.bits if self.raw is None else self.raw

    def values(self) -> np.ndarray:
        """(V, D) float32 values: exact for bf16/F32/F16; quantized tensors give their bf16-rounded values."""
        if self.dtype in ("float32", "float16"):
            return self.raw.view(np.dtype(self.dtype)).astype(np.float32)
        return to_float32(self.bits)

    def describe(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        return f"{self.path} [{self.tensor}{where}] {self.dtype} {self.shape[0]:,} × {self.shape[1]:,}"


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, disable=not enabled or total < 4 * _ROW_BLOCK)


def _pick(names: list[str], wanted: str | None, defaults: tuple[str, ...], where: str) -> str:
    if wanted is not None:
        if wanted in names:
            return wanted
        raise CheckpointError(f"{where}: no tensor {wanted!r}; available: {_listing(names)}")
    for n in defaults:
        if n in names:
            return n
    raise CheckpointError(f"{where}: none of the default tensors {list(defaults)} is present; "
                          f"pass --tensor, available: {_listing(names)}")


def _listing(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _check_2d(shape, where: str, tensor: str) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or 0 in shape:
        raise CheckpointError(f"{where}: tensor {tensor!r} has shape {shape}, expected a 2-D (rows, dim) matrix")
    return shape


# ---------------------------------------------------------------------------------------------------------
# safetensors


def _wanted(tensor: str | None) -> str:
    return f" (reading tensor {tensor!r})" if tensor else ""


def _safe_open(path: Path, tensor: str | None = None):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="np")
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found{_wanted(tensor)}") from e
    except Exception as e:  # SafetensorError: truncated, corrupt header, …
        raise CheckpointError(f"{path}: not a readable safetensors file{_wanted(tensor)}: {e}") from e


_ST_DTYPES = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}


def _read_safetensors_tensor(path: Path, tensor: str, progress: bool) -> tuple[str, np.ndarray, np.ndarray | None]:
    with _safe_open(path, tensor) as f:
        names = list(f.keys())
        if tensor not in names:
            raise CheckpointError(f"{path}: no tensor {tensor!r}; available: {_listing(names)}")
        sl = f.get_slice(tensor)
        st_dtype = sl.get_dtype()
        if st_dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {tensor!r} has dtype {st_dtype}; supported: {sorted(_ST_DTYPES)}")
        v, d = _check_2d(sl.get_shape(), str(path), tensor)
        dtype = _ST_DTYPES[st_dtype]
        bits = np.empty((v, d), dtype=np.uint16)
        raw = None if dtype == "bfloat16" else np.empty((v, d), dtype=np.dtype(dtype))
        with _progress(v, f"reading {tensor}", progress) as bar:
            for s in range(0, v, _ROW_BLOCK):
                try:
                    block = np.asarray(sl[s:min(s + _ROW_BLOCK, v)])  # slicing past the end is an error
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read tensor {tensor!r} rows {s}…: {e}") from e
                if raw is None:
                    bits[s:s + _ROW_BLOCK] = block.view(np.uint16)
                else:
                    raw[s:s + _ROW_BLOCK] = block
                    bits[s:s + _ROW_BLOCK] = from_float32(block.astype(np.float32))
                bar.update(block.shape[0])
    if raw is not None:
        raw = raw.view(np.uint8).reshape(v, -1)
    return dtype, bits, raw


def _tokenizer_tokens(directory: Path, vocab_size: int) -> list[str | None] | None:
    tj = directory / "tokenizer.json"
    if not tj.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(tj)).get_vocab(with_added_tokens=True)
    except Exception as e:  # token strings are a convenience: the matrix is still usable without them
        warnings.warn(f"{tj}: could not read the tokenizer ({e}); token strings omitted", stacklevel=3)
        return None
    tokens: list[str | None] = [None] * max(vocab_size, max(vocab.values(), default=-1) + 1)
    for s, i in vocab.items():
        tokens[i] = s
    return tokens


def load_safetensors(path: str | Path, tensor: str | None = None, progress: bool = True) -> Matrix:
    """A matrix from a ``.safetensors`` file, a sharded checkpoint's index JSON, or a directory holding either."""
    p = Path(path)
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.is_file():
            p = index
        else:
            files = sorted(p.glob("*.safetensors"))
            if len(files) != 1:
                raise CheckpointError(f"{p}: expected model.safetensors.index.json or exactly one .safetensors "
                                      f"file, found {len(files)}")
            p = files[0]
    if p.name.endswith(".json"):
        try:
            weight_map = json.loads(p.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except FileNotFoundError as e:
            raise CheckpointError(f"{p}: file not found") from e
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p}: not a safetensors index (needs a 'weight_map' object): {e}") from e
        name = _pick(list(weight_map), tensor, SAFETENSORS_NAMES, str(p))
        shard = p.parent / weight_map[name]
        if not shard.is_file():
            raise CheckpointError(f"{p}: tensor {name!r} is mapped to {weight_map[name]}, which does not exist")
        source = shard
    else:
        if not p.is_file():
            raise CheckpointError(f"{p}: file not found")
        with _safe_open(p, tensor) as f:
            names = list(f.keys())
        name = _pick(names, tensor, SAFETENSORS_NAMES, str(p))
        source = p
    dtype, bits, raw = _read_safetensors_tensor(source, name, progress)
    return Matrix(path=source, tensor=name, dtype=dtype, bits=bits, raw=raw,
                  row_ids=np.arange(bits.shape[0]), tokens=_tokenizer_tokens(source.parent, bits.shape[0]))


# ---------------------------------------------------------------------------------------------------------
# GGUF

_GGUF_SUPPORTED = ("F32", "F16", "BF16", "Q8_0")


def load_gguf(path: str | Path, tensor: str | None = None, progress: bool = True) -> Matrix:
    """A matrix from a GGUF file (F32, F16, BF16, Q8_0; identity on the stored bytes, see module docstring)."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # truncated files fail while the reader maps the tensor table
        raise CheckpointError(f"{p}: not a readable GGUF file{_wanted(tensor)}: {type(e).__name__}: {e}") from e
    by_name = {t.name: t for t in reader.tensors}
    name = _pick(list(by_name), tensor, GGUF_NAMES, str(p))
    t = by_name[name]
    qtype = t.tensor_type.name
    # GGUF lists dimensions fastest-first: [D, V] is a V × D matrix
    v, d = _check_2d(tuple(int(s) for s in reversed(t.shape)), str(p), name)
    if qtype not in _GGUF_SUPPORTED:
        raise CheckpointError(f"{p}: tensor {name!r} is {qtype}; supported: {', '.join(_GGUF_SUPPORTED)}")
    data = np.asarray(t.data)
    if data.shape[0] != v:
        raise CheckpointError(f"{p}: tensor {name!r} data has {data.shape[0]} rows, header says {v} (truncated?)")
    if qtype == "BF16":
        dtype, bits, raw = "bfloat16", np.array(data.view(np.uint16).reshape(v, d)), None
    elif qtype in ("F32", "F16"):
        dtype = "float32" if qtype == "F32" else "float16"
        raw = np.array(data).view(np.uint8).reshape(v, -1)
        bits = np.empty((v, d), dtype=np.uint16)
        for s in range(0, v, _ROW_BLOCK):
            bits[s:s + _ROW_BLOCK] = from_float32(data[s:s + _ROW_BLOCK].astype(np.float32))
    else:
        dtype, raw = qtype, np.array(data)
        bits = np.empty((v, d), dtype=np.uint16)
        with _progress(v, f"dequantizing {name}", progress) as bar:
            for s in range(0, v, _ROW_BLOCK):
                block = gguf.quants.dequantize(raw[s:s + _ROW_BLOCK], t.tensor_type)
                bits[s:s + _ROW_BLOCK] = from_float32(block.reshape(-1, d))
                bar.update(block.shape[0])
    return Matrix(path=p, tensor=name, dtype=dtype, bits=bits, raw=raw, row_ids=np.arange(v),
                  tokens=_gguf_tokens(reader))


def _gguf_tokens(reader) -> list[str | None] | None:
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        return None
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]


# ---------------------------------------------------------------------------------------------------------
# run files


def load_run(path: str | Path, step: int | None = None, tensor: str | None = None) -> Matrix:
    """Rows of ``/W`` (or another (T, N, D) uint16 dataset) at one recorded step of a run file.

    step: a recorded step label from ``/steps`` (default: the last recorded step). Row ids come from
    ``/tokens`` (the vocabulary ids that were recorded).
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    try:
        f = h5py.File(p, "r")
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable HDF5 run file ({e})") from e
    with f:
        if int(f.attrs.get("complete", 1)) != 1:
            raise CheckpointError(f"{p}: the run is not complete (attribute complete != 1)")
        names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
        name = _pick(names, tensor, RUN_NAMES, str(p))
        ds = f[name]
        if ds.ndim != 3 or ds.dtype != np.uint16:
            raise CheckpointError(f"{p}: dataset {name!r} is {ds.dtype} {ds.shape}, expected (steps, rows, dim) uint16")
        steps = np.asarray(f["steps"][:]) if "steps" in f else np.arange(ds.shape[0])
        if steps.shape[0] != ds.shape[0]:
            raise CheckpointError(f"{p}: /steps has {steps.shape[0]} entries but {name!r} has {ds.shape[0]} steps")
        if step is None:
            idx = ds.shape[0] - 1
        else:
            hit = np.flatnonzero(steps == step)
            if hit.size == 0:
                raise CheckpointError(f"{p}: step {step} was not recorded in {name!r} (recorded: "
                                      f"{steps.size} steps from {int(steps[0])} to {int(steps[-1])})")
            idx = int(hit[0])
        try:
            bits = np.asarray(ds[idx])
        except Exception as e:
            raise CheckpointError(f"{p}: cannot read {name!r} at step index {idx} ({e})") from e
        row_ids = np.asarray(f["tokens"][:], dtype=np.int64) if "tokens" in f else np.arange(bits.shape[0])
        if row_ids.shape[0] != bits.shape[0]:
            raise CheckpointError(f"{p}: /tokens has {row_ids.shape[0]} ids for {bits.shape[0]} rows of {name!r}")
        return Matrix(path=p, tensor=name, dtype="bfloat16", bits=bits, raw=None, row_ids=row_ids,
                      step=int(steps[idx]))


# ---------------------------------------------------------------------------------------------------------


def load_matrix(path: str | Path, tensor: str | None = None, step: int | None = None,
                progress: bool = True) -> Matrix:
    """Dispatch on the path: ``.h5``/``.hdf5`` run file, ``.gguf``, ``.safetensors``, index ``.json`` or a
    directory holding a safetensors checkpoint (or one GGUF)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if step is not None and suffix not in (".h5", ".hdf5"):
        raise CheckpointError(f"{p}: --step only applies to run files (.h5)")
    if suffix in (".h5", ".hdf5"):
        return load_run(p, step=step, tensor=tensor)
    if suffix == ".gguf":
        return load_gguf(p, tensor=tensor, progress=progress)
    if suffix in (".safetensors", ".json"):
        return load_safetensors(p, tensor=tensor, progress=progress)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not any(p.glob("*.safetensors*")) and len(ggufs) == 1:
            return load_gguf(ggufs[0], tensor=tensor, progress=progress)
        return load_safetensors(p, tensor=tensor, progress=progress)
    if not p.exists():
        raise CheckpointError(f"{p}: file not found")
    raise CheckpointError(f"{p}: unknown checkpoint type (expected .safetensors, .json index, .gguf or .h5)")
