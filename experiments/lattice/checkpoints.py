"""Load one (V, D) embedding or unembedding matrix from a checkpoint, exactly, as bf16 bits plus identity bytes.

Sources:
- safetensors: one file, or a sharded Hugging Face checkpoint (``model.safetensors.index.json``); the header
  is parsed here and the one tensor memory-mapped as raw bytes (BF16 as uint16), so nothing else is read and
  no bfloat16 numpy dtype needs to be registered.
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

``resolve`` turns a Hugging Face repo id (``ORG/NAME``) into its snapshot in the local cache, offline;
``pairing`` says which tensors are the input embedding and the unembedding and whether they are one matrix.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.bits import from_float32, to_float32
from experiments.errors import DataError

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


# safetensors dtype → (our name, little-endian numpy dtype of the stored bytes). BF16 is read as its raw
# uint16 bits, so nothing depends on a bfloat16 numpy dtype being registered (ml_dtypes imported or not).
_ST_DTYPES = {"BF16": ("bfloat16", "<u2"), "F32": ("float32", "<f4"), "F16": ("float16", "<f2")}
_ST_MAX_HEADER = 100_000_000  # the format's own limit on the JSON header


def _st_entry_ok(entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offs = entry.get("shape"), entry.get("data_offsets")
    return (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
            and isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
            and 0 <= offs[0] <= offs[1])


def _st_header(path: Path, tensor: str | None = None) -> tuple[dict, int]:
    """(tensor table, byte offset of the data buffer) of a safetensors file, checked against the file size.

    The format is an 8-byte little-endian header length, a JSON header, then the data buffer; parsing it
    ourselves lets the tensor be memory-mapped as raw bytes (no copy, no dtype registry).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"only {size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _ST_MAX_HEADER):
                raise ValueError(f"header length {n:,} does not fit in a {size:,}-byte file")
            table = json.loads(f.read(n))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found{_wanted(tensor)}") from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path}: is a directory, not a safetensors file{_wanted(tensor)}") from e
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: not a readable safetensors file{_wanted(tensor)}: {e}") from e
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: not a readable safetensors file{_wanted(tensor)}: header is not an object")
    table.pop("__metadata__", None)
    bad = [k for k, e in table.items() if not _st_entry_ok(e)]
    if bad:
        raise CheckpointError(f"{path}: not a readable safetensors file{_wanted(tensor)}: malformed header entry "
                              f"{bad[0]!r}")
    data_len = size - 8 - n
    end = max((e["data_offsets"][1] for e in table.values()), default=0)
    if end > data_len:
        raise CheckpointError(f"{path}: not a readable safetensors file{_wanted(tensor)}: the header places data "
                              f"up to byte {end:,} but the file holds {data_len:,} (truncated?)")
    return table, 8 + n


def _st_supported() -> str:
    return ", ".join(_ST_DTYPES)


def _st_array(path: Path, tensor: str, table: dict, data_start: int) -> tuple[str, np.ndarray]:
    """(our dtype name, read-only (V, D) memory map of the stored values; BF16 as uint16 bits)."""
    entry = table[tensor]
    st_dtype = entry["dtype"]
    if st_dtype not in _ST_DTYPES:
        raise CheckpointError(f"{path}: tensor {tensor!r} has dtype {st_dtype}; supported: {_st_supported()}")
    v, d = _check_2d(entry["shape"], str(path), tensor)
    dtype, stored = _ST_DTYPES[st_dtype]
    begin, end = entry["data_offsets"]
    if end - begin != v * d * np.dtype(stored).itemsize:
        raise CheckpointError(f"{path}: tensor {tensor!r} holds {end - begin:,} bytes but {st_dtype} "
                              f"{v:,} × {d:,} needs {v * d * np.dtype(stored).itemsize:,}")
    return dtype, np.memmap(path, dtype=stored, mode="r", offset=data_start + begin, shape=(v, d))


def _read_safetensors_tensor(path: Path, tensor: str, progress: bool) -> tuple[str, np.ndarray, np.ndarray | None]:
    table, data_start = _st_header(path, tensor)
    if tensor not in table:
        raise CheckpointError(f"{path}: no tensor {tensor!r}; available: {_listing(list(table))}")
    dtype, stored = _st_array(path, tensor, table, data_start)
    if dtype == "bfloat16":
        return dtype, stored, None  # the memory map is the bits: the census reads the file once, in place
    v, d = stored.shape
    bits = np.empty((v, d), dtype=np.uint16)
    with _progress(v, f"rounding {tensor} to bf16", progress) as bar:
        for s in range(0, v, _ROW_BLOCK):
            bits[s:s + _ROW_BLOCK] = from_float32(stored[s:s + _ROW_BLOCK].astype(np.float32))
            bar.update(min(_ROW_BLOCK, v - s))
    return dtype, bits, stored.view(np.uint8).reshape(v, -1)


def _safetensors_map(path: Path, tensor: str | None = None) -> tuple[Path, dict[str, Path]]:
    """(the file named for errors, tensor name → file holding it) for a .safetensors file, a sharded
    checkpoint's index JSON, or a directory holding either."""
    p = path
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.is_file():
            p = index
        else:
            files = sorted(p.glob("*.safetensors"))
            if len(files) != 1:
                raise CheckpointError(f"{p}: expected model.safetensors.index.json or exactly one .safetensors "
                                      f"file, found {len(files)}{_directory_hint(p) if not files else ''}")
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
        return p, {name: p.parent / shard for name, shard in weight_map.items()}
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    return p, dict.fromkeys(_st_header(p, tensor)[0], p)


def _shard(where: Path, files: dict[str, Path], name: str) -> Path:
    shard = files[name]
    if not shard.is_file():
        raise CheckpointError(f"{where}: tensor {name!r} is mapped to {shard.name}, which does not exist")
    return shard


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
    where, files = _safetensors_map(Path(path), tensor)
    name = _pick(list(files), tensor, SAFETENSORS_NAMES, str(where))
    source = _shard(where, files, name)
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
    reader = _gguf_reader(p, tensor)
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


def _gguf_reader(p: Path, tensor: str | None = None):
    import gguf

    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    try:
        return gguf.GGUFReader(str(p))
    except Exception as e:  # truncated files fail while the reader maps the tensor table
        # the reader memory-maps each tensor at its offset: a short file shows up as a reshape/mmap failure
        size = p.stat().st_size
        if isinstance(e, (ValueError, IndexError)) and any(w in str(e) for w in ("reshape", "mmap", "offset", "buffer")):
            raise CheckpointError(f"{p}: not a readable GGUF file{_wanted(tensor)}: truncated ({size:,} bytes): its "
                                  f"tensor table points past the end of the file; download or copy it again") from e
        raise CheckpointError(f"{p}: not a readable GGUF file{_wanted(tensor)}: {type(e).__name__}: {e}") from e


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
        kind, target = _directory_kind(p)
        if kind == "gguf":
            return load_gguf(target, tensor=tensor, progress=progress)
        return load_safetensors(target, tensor=tensor, progress=progress)
    if not p.exists():
        raise CheckpointError(f"{p}: file not found")
    raise CheckpointError(f"{p}: unknown checkpoint type (expected .safetensors, .json index, .gguf or .h5)")


def _directory_kind(p: Path) -> tuple[str, Path]:
    """("gguf", the one .gguf file) or ("safetensors", the directory) for a checkpoint directory."""
    ggufs = sorted(p.glob("*.gguf"))
    if not any(p.glob("*.safetensors*")):
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if ggufs:
            raise CheckpointError(f"{p}: {len(ggufs)} .gguf files and no safetensors; name one of them")
    return "safetensors", p


def _directory_hint(p: Path) -> str:
    """What is in a directory without weights and, for a Hugging Face cache snapshot, how to fetch them."""
    found = sorted(x.name for x in p.iterdir())
    hint = f" (it holds {_listing(found, 8) if found else 'nothing'}; supported: .safetensors, " \
           "model.safetensors.index.json with its shards, .gguf)"
    repo = _cached_repo_id(p)
    if repo:
        hint += f"; fetch the weights with `hf download {repo} --include '*.safetensors' '*.json'`"
    return hint


# ---------------------------------------------------------------------------------------------------------
# the Hugging Face cache, offline

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".safetensors", ".json", ".gguf", ".h5", ".hdf5")


def hf_cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_repo_id(p: Path) -> str | None:
    # <cache>/models--ORG--NAME/snapshots/<rev>/ → ORG/NAME
    repo = p.parent.parent.name
    if p.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return None


def looks_like_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not spec.lower().endswith(_CHECKPOINT_SUFFIXES)


def resolve(spec: str | Path, revision: str | None = None) -> Path:
    """A local path as given, or the cached snapshot of a Hugging Face repo id (``ORG/NAME``), never the network."""
    p = Path(spec)
    if p.exists() or not looks_like_repo_id(str(spec)):
        if revision is not None:
            raise CheckpointError(f"{p}: --revision applies to a Hugging Face repo id (ORG/NAME), not a local path")
        return p
    return hf_snapshot(str(spec), revision)


def _get_it(repo_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"get it with `hf download {repo_id}{rev} --include '*.safetensors' '*.json'` (HF_HUB_CACHE or HF_HOME " \
           "choose the cache)"


def hf_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of a cached model repo: `revision` is a branch, tag or (prefix of a) commit hash;
    without one, ``main`` or else the only cached snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except IncompleteSnapshotError as e:
        return Path(e.snapshot_path)  # files the user skipped (README, other formats); the loader names what is missing
    except HFValidationError as e:
        raise CheckpointError(f"{repo_id}: not a valid Hugging Face repo id: {e}") from e
    except LocalEntryNotFoundError:
        pass
    snapshots = sorted(x.name for x in (repo_dir / "snapshots").glob("*") if x.is_dir())
    if not snapshots:
        raise CheckpointError(f"{repo_id}: not a local path and not in the Hugging Face cache (looked in {repo_dir}); "
                              + _get_it(repo_id, revision))
    picked = [s for s in snapshots if revision is None or (len(revision) >= 7 and s.startswith(revision))]
    if len(picked) == 1 and (revision is not None or len(snapshots) == 1):
        return repo_dir / "snapshots" / picked[0]
    refs = sorted(x.name for x in (repo_dir / "refs").glob("*") if x.is_file())
    cached = f"cached snapshots: {', '.join(s[:12] for s in snapshots)}; refs: {', '.join(refs) or 'none'}"
    if revision is None:
        raise CheckpointError(f"{repo_dir}: no 'main' ref and {len(snapshots)} snapshots ({cached}); "
                              "choose one with --revision")
    raise CheckpointError(f"{repo_id}: revision {revision!r} is not in the Hugging Face cache {repo_dir} ({cached}); "
                          + _get_it(repo_id, revision))


# ---------------------------------------------------------------------------------------------------------
# input embedding and unembedding

EMBEDDING_NAMES = ("model.embed_tokens.weight", "embed_tokens.weight", "model.language_model.embed_tokens.weight",
                   "embeddings.word_embeddings.weight", "transformer.wte.weight", "wte.weight", "token_embd.weight")
UNEMBEDDING_NAMES = ("lm_head.weight", "output.weight")


@dataclass
class Pairing:
    """Which tensors of a checkpoint are the input embedding and the unembedding, and whether they are one."""

    embedding: str | None
    unembedding: str | None
    tied: bool
    reason: str  # why we call it tied or untied

    def role(self, tensor: str) -> str:
        if self.tied and tensor in (self.embedding, self.unembedding):
            return "tied embedding"
        return {self.embedding: "input embedding", self.unembedding: "unembedding"}.get(tensor, "other tensor")

    def describe(self, tensor: str | None = None) -> str:
        if self.tied:
            return f"tied: one matrix ({self.reason})"
        other = self.embedding if tensor == self.unembedding else self.unembedding
        return (f"untied: {self.unembedding} and {self.embedding} are two matrices ({self.reason})"
                + (f"; {other} is the other one, `--tensor both` shows both" if tensor in (self.embedding,
                                                                                         self.unembedding) else ""))


def _config_tie(directory: Path) -> bool | None:
    """tie_word_embeddings from config.json (or its text_config), None when absent or unreadable."""
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config")) if isinstance(cfg, dict) else ():
        if isinstance(c, dict) and isinstance(c.get("tie_word_embeddings"), bool):
            return c["tie_word_embeddings"]
    return None


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    # block by block from the start: untied matrices differ in their first rows, so this rarely reads far
    a, b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if a.size != b.size:
        return False
    step = 1 << 24
    return all(np.array_equal(a[s:s + step], b[s:s + step]) for s in range(0, a.size, step))


def _stored(p: Path, files: dict[str, Path], name: str) -> tuple[str, tuple, np.ndarray]:
    """(dtype, shape, raw bytes as a memory map) of one safetensors tensor."""
    shard = _shard(p, files, name)
    table, start = _st_header(shard, name)
    e = table[name]
    return e["dtype"], tuple(e["shape"]), np.memmap(shard, dtype=np.uint8, mode="r", offset=start + e["data_offsets"][0],
                                                    shape=(e["data_offsets"][1] - e["data_offsets"][0],))


def pairing(path: str | Path) -> Pairing | None:
    """Input embedding vs unembedding of a safetensors or GGUF checkpoint (None for run files).

    Tied when config.json says ``tie_word_embeddings: true``, when there is no unembedding tensor (the
    output layer reuses the embedding), or when the two tensors are bit-identical.
    """
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        return None
    kind, target = _directory_kind(p) if p.is_dir() else ("gguf" if p.suffix.lower() == ".gguf" else "safetensors", p)
    if kind == "gguf":
        tensors = {t.name: t for t in _gguf_reader(target).tensors}
        names, config_tie = list(tensors), None
    else:
        where, files = _safetensors_map(target)
        names, config_tie = list(files), _config_tie(where.parent)
    emb = next((n for n in EMBEDDING_NAMES if n in names), None)
    head = next((n for n in UNEMBEDDING_NAMES if n in names), None)
    if emb is None and head is None:
        return None
    if config_tie:
        return Pairing(emb, head, True, "config.json: tie_word_embeddings true")
    if head is None or emb is None:
        missing = "unembedding (lm_head / output)" if head is None else "input embedding"
        return Pairing(emb, head, True, f"no {missing} tensor: the model reuses {emb or head}")
    if kind == "gguf":
        a, b = tensors[emb], tensors[head]
        same = a.tensor_type == b.tensor_type and _same_bytes(np.asarray(a.data), np.asarray(b.data))
    else:
        (da, sa, a), (db, sb, b) = _stored(where, files, emb), _stored(where, files, head)
        same = (da, sa) == (db, sb) and _same_bytes(a, b)
    if same:
        return Pairing(emb, head, True, f"{emb} and {head} are bit-identical")
    why = "config.json: tie_word_embeddings false" if config_tie is False else "the two tensors differ"
    return Pairing(emb, head, False, why)
