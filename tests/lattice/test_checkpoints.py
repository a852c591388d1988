"""Checkpoint loaders on files the tests write: safetensors (single, sharded), GGUF (F32/F16/BF16/Q8_0), runs."""

import json

import gguf
import h5py
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from experiments.errors import DataError
from experiments.lattice import blackholes
from experiments.lattice import lifecycle as lattice
from experiments.lattice.checkpoints import CheckpointError, load_matrix

Q = gguf.GGMLQuantizationType


def _bf16(rng, v=64, d=32):
    x = (rng.normal(size=(v, d)) * 0.02).astype(np.float32)
    x[[3, 17, 40]] = x[3]  # a planted black hole
    return x.astype(ml_dtypes.bfloat16)


def _tokenizer(path, n):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    Tokenizer(WordLevel({f"tok{i}": i for i in range(n)}, unk_token="tok0")).save(str(path))


def test_single_safetensors_bf16_with_tokenizer(tmp_path):
    w = _bf16(np.random.default_rng(0))
    save_file({"model.embed_tokens.weight": w, "model.norm.weight": np.ones(32, np.float32)},
              str(tmp_path / "model.safetensors"))
    _tokenizer(tmp_path / "tokenizer.json", 64)
    m = load_matrix(tmp_path, progress=False)
    assert m.tensor == "model.embed_tokens.weight" and m.dtype == "bfloat16" and m.exact_bf16
    assert m.raw is None and np.array_equal(m.bits, w.view(np.uint16))
    assert m.tokens[17] == "tok17"
    c = blackholes.census(m.identity, row_ids=m.row_ids)
    assert c.members(int(c.black_holes[0])).tolist() == [3, 17, 40]


def test_sharded_checkpoint_with_index(tmp_path):
    rng = np.random.default_rng(1)
    emb, head = _bf16(rng), _bf16(rng)
    save_file({"model.embed_tokens.weight": emb}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"lm_head.weight": head, "model.norm.weight": np.ones(32, np.float32)},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {"total_size": 1}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    m = load_matrix(tmp_path, progress=False)  # the unembedding is preferred
    assert m.tensor == "lm_head.weight" and m.path.name == "model-00002-of-00002.safetensors"
    assert np.array_equal(m.bits, head.view(np.uint16))
    m2 = load_matrix(tmp_path / "model.safetensors.index.json", tensor="model.embed_tokens.weight", progress=False)
    assert np.array_equal(m2.bits, emb.view(np.uint16)) and m2.tokens is None
    with pytest.raises(CheckpointError, match="no tensor 'nope'.*lm_head.weight, model.embed_tokens.weight"):
        load_matrix(tmp_path, tensor="nope")
    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="'model.embed_tokens.weight' is mapped to model-00001.*does not exist"):
        load_matrix(tmp_path, tensor="model.embed_tokens.weight")


def test_float32_identity_is_on_the_original_bits(tmp_path):
    x = np.ones((4, 8), dtype=np.float32)
    x[1, 0] = 1.0 + 2**-20  # distinct in float32, identical after rounding to bf16
    x[2] = x[0]
    x[3] = 2.0
    save_file({"embeddings.word_embeddings.weight": x}, str(tmp_path / "m.safetensors"))
    m = load_matrix(tmp_path / "m.safetensors", progress=False)
    assert m.dtype == "float32" and not m.exact_bf16 and m.raw.shape == (4, 32)
    exact = blackholes.census(m.identity)
    assert [exact.members(int(u)).tolist() for u in exact.black_holes] == [[0, 2]]
    view = blackholes.census(m.bits)  # the bf16 view merges row 1 into the black hole
    assert [view.members(int(u)).tolist() for u in view.black_holes] == [[0, 1, 2]]
    assert np.array_equal(m.bits, lattice.from_float32(x))


def _write_gguf(path, tensors, tokens=None):
    w = gguf.GGUFWriter(str(path), arch="llama")
    for name, (data, qtype) in tensors.items():
        if qtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    if tokens:
        w.add_token_list(tokens)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_float_types_and_q8_0(tmp_path):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(16, 64)) * 0.02).astype(np.float32)
    x[5] = x[9] = x[2]
    b = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    q8 = gguf.quants.quantize(x, Q.Q8_0)
    path = tmp_path / "m.gguf"
    _write_gguf(path, {"token_embd.weight": (q8, Q.Q8_0), "f32": (x, None), "f16": (x.astype(np.float16), None),
                       "bf16": (b, Q.BF16)}, tokens=[f"t{i}" for i in range(16)])
    m = load_matrix(path, progress=False)
    assert m.tensor == "token_embd.weight" and m.dtype == "Q8_0" and m.shape == (16, 64)
    assert np.array_equal(m.raw, q8)  # identity on the raw blocks (fp16 scale + int8 values)
    assert np.array_equal(m.bits, lattice.from_float32(gguf.quants.dequantize(q8, Q.Q8_0)))
    assert m.tokens[9] == "t9"
    c = blackholes.census(m.identity)
    assert c.members(int(c.black_holes[0])).tolist() == [2, 5, 9]
    f32 = load_matrix(path, tensor="f32")
    assert f32.dtype == "float32" and np.array_equal(f32.raw.view(np.float32), x)
    f16 = load_matrix(path, tensor="f16")
    assert f16.dtype == "float16" and np.array_equal(f16.raw.view(np.float16), x.astype(np.float16))
    bf = load_matrix(path, tensor="bf16")
    assert bf.exact_bf16 and bf.raw is None and np.array_equal(bf.bits, b)


def test_gguf_unsupported_quantization_and_missing_tensor(tmp_path):
    x = np.zeros((4, 64), dtype=np.float32)
    path = tmp_path / "q4.gguf"
    _write_gguf(path, {"token_embd.weight": (gguf.quants.quantize(x, Q.Q4_0), Q.Q4_0), "norm": (x[0], None)})
    with pytest.raises(CheckpointError, match=r"q4\.gguf: tensor 'token_embd.weight' is Q4_0; supported"):
        load_matrix(path)
    with pytest.raises(CheckpointError, match=r"q4\.gguf: no tensor 'output.weight'; available: norm, token_embd"):
        load_matrix(path, tensor="output.weight")
    with pytest.raises(CheckpointError, match=r"q4\.gguf: tensor 'norm' has shape \(64,\), expected a 2-D"):
        load_matrix(path, tensor="norm")


def test_truncated_files_name_the_file_and_tensor(tmp_path):
    st = tmp_path / "m.safetensors"
    save_file({"lm_head.weight": _bf16(np.random.default_rng(3))}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"m\.safetensors: not a readable safetensors file \(reading tensor 'lm_head.weight'\)"):
        load_matrix(st, tensor="lm_head.weight")
    g = tmp_path / "m.gguf"
    _write_gguf(g, {"token_embd.weight": (np.ones((8, 64), np.float32), None)})
    g.write_bytes(g.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"m\.gguf: not a readable GGUF file \(reading tensor 'token_embd.weight'\): truncated \("):
        load_matrix(g, tensor="token_embd.weight")
    assert issubclass(CheckpointError, DataError)


def test_wrong_shape_and_dtype_safetensors(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file({"lm_head.weight": np.zeros((2, 3, 4), np.float32), "ids": np.zeros((3, 4), np.int64)}, str(p))
    with pytest.raises(CheckpointError, match=r"m\.safetensors: tensor 'lm_head.weight' has shape \(2, 3, 4\)"):
        load_matrix(p)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: tensor 'ids' has dtype I64"):
        load_matrix(p, tensor="ids")
    with pytest.raises(CheckpointError, match="none of the default tensors"):
        save_file({"x": np.zeros((2, 2), np.float32)}, str(tmp_path / "n.safetensors"))
        load_matrix(tmp_path / "n.safetensors")


def _write_run(path, w, steps, tokens, complete=1):
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = complete
        d = f.create_dataset("W", data=w)
        d.attrs["dtype"] = "bfloat16"
        f.create_dataset("steps", data=np.asarray(steps, dtype=np.int32))
        f.create_dataset("tokens", data=np.asarray(tokens, dtype=np.int32))


def test_run_file_any_step(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.integers(0x3C00, 0x3D00, size=(3, 5, 8), dtype=np.uint16)
    p = tmp_path / "crucible-0123456789abcdef.h5"
    _write_run(p, w, [0, 10, 20], [7, 11, 13, 17, 19])
    m = load_matrix(p, step=10)
    assert m.step == 10 and np.array_equal(m.bits, w[1]) and m.row_ids.tolist() == [7, 11, 13, 17, 19]
    last = load_matrix(p)
    assert last.step == 20 and np.array_equal(last.bits, w[2])
    with pytest.raises(CheckpointError, match=r"step 15 was not recorded in 'W' \(recorded: 3 steps from 0 to 20\)"):
        load_matrix(p, step=15)
    with pytest.raises(CheckpointError, match="no tensor 'E'"):
        load_matrix(p, tensor="E")
    _write_run(tmp_path / "half.h5", w, [0, 10, 20], [7, 11, 13, 17, 19], complete=0)
    with pytest.raises(CheckpointError, match="not complete"):
        load_matrix(tmp_path / "half.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match=r"junk\.h5: not a readable HDF5"):
        load_matrix(tmp_path / "junk.h5")


def test_dispatch_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_matrix(tmp_path / "missing.safetensors")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_matrix(tmp_path / "x.bin")
    with pytest.raises(CheckpointError, match="--step only applies"):
        load_matrix(tmp_path / "x.gguf", step=3)


def test_real_run_file_through_recorder_and_run(tmp_path):
    """The store's own writer and reader: load_run and the lifecycle block reader agree with the arrays."""
    from experiments.lattice.lifecycle import lifecycle, run_lifecycle
    from experiments.rig.record import Recorder
    from experiments.store.recording import Run

    rng = np.random.default_rng(5)
    steps, tokens = np.array([0, 1, 2, 5, 9]), np.array([3, 4, 8])
    w = np.full((5, 3, 8), 0x3F90, dtype=np.uint16)
    w[1:, 0] += rng.integers(0, 9, size=(4, 8)).astype(np.uint16).cumsum(axis=0)
    w[3:, 2, 1] += 1
    attrs = {"name": "tiny", "key": "0123456789abcdef", "key_parts": "{}", "config": '{"record": {"rows": "all"}}',
             "versions": "{}", "created": "2026-01-01T00:00:00Z", "description": "test"}
    rec = Recorder(tmp_path / "tiny-0123456789abcdef.h5", attrs=attrs, tokens=tokens, steps=steps, steps_total=9,
                   d_model=8, tensors={"W": "bfloat16"}, dead=np.zeros(10, bool), counts=np.zeros(10, np.int64))
    for i, s in enumerate(steps):
        rec.write_step(int(s), {"W": w[i]})
    rec.write_scalars(1, np.zeros(9, np.float32), np.zeros(9), np.ones(9, np.float32))
    rec.finish()
    m = load_matrix(tmp_path / "tiny-0123456789abcdef.h5", step=5)
    assert m.step == 5 and np.array_equal(m.bits, w[3]) and m.row_ids.tolist() == [3, 4, 8]
    streamed = run_lifecycle(Run(rec.path), block=2, progress=False)
    whole = lifecycle(w, steps)
    assert np.array_equal(streamed.last_motion, whole.last_motion) and whole.last_motion.tolist() == [9, -1, 5]
    assert streamed.stillness == whole.stillness


def test_pairing_gguf_and_safetensors(tmp_path):
    from experiments.lattice.checkpoints import pairing

    rng = np.random.default_rng(6)
    emb, head = (rng.normal(size=(16, 64)) * 0.02).astype(np.float32), (rng.normal(size=(16, 64)) * 0.02).astype(np.float32)
    _write_gguf(tmp_path / "untied.gguf", {"token_embd.weight": (emb, None), "output.weight": (head, None)})
    p = pairing(tmp_path / "untied.gguf")
    assert (p.embedding, p.unembedding, p.tied) == ("token_embd.weight", "output.weight", False)
    assert p.role("output.weight") == "unembedding" and p.role("token_embd.weight") == "input embedding"
    _write_gguf(tmp_path / "same.gguf", {"token_embd.weight": (emb, None), "output.weight": (emb.copy(), None)})
    assert pairing(tmp_path / "same.gguf").tied and "bit-identical" in pairing(tmp_path / "same.gguf").reason
    # only the very last element differs: not one matrix
    late = emb.copy()
    late[-1, -1] += 1
    save_file({"model.embed_tokens.weight": emb, "lm_head.weight": late}, str(tmp_path / "late.safetensors"))
    assert not pairing(tmp_path / "late.safetensors").tied
    (tmp_path / "config.json").write_text('{"text_config": {"tie_word_embeddings": true}}')
    assert pairing(tmp_path / "late.safetensors").reason == "config.json: tie_word_embeddings true"
    assert pairing(tmp_path / "crucible-0123456789abcdef.h5") is None


def test_resolve_keeps_local_paths_and_rejects_revision_on_them(tmp_path, monkeypatch):
    from experiments.lattice.checkpoints import looks_like_repo_id, resolve

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Org" / "Name").mkdir(parents=True)
    assert resolve("Org/Name").resolve() == tmp_path / "Org" / "Name"  # a local folder wins over the cache
    with pytest.raises(CheckpointError, match="--revision applies to a Hugging Face repo id"):
        resolve("Org/Name", revision="main")
    assert looks_like_repo_id("Qwen/Qwen3-4B") and not looks_like_repo_id("dir/model.safetensors")
    assert not looks_like_repo_id("/abs/path") and not looks_like_repo_id("a/b/c")


def test_malformed_safetensors_headers(tmp_path):
    p = tmp_path / "m.safetensors"
    header = b'{"lm_head.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 6]}}'
    p.write_bytes(len(header).to_bytes(8, "little") + header + bytes(6))
    with pytest.raises(CheckpointError, match=r"'lm_head.weight' holds 6 bytes but BF16 2 × 2 needs 8"):
        load_matrix(p)
    header = b'{"lm_head.weight": {"dtype": "BF16", "shape": [2, 2]}}'
    p.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="malformed header entry 'lm_head.weight'"):
        load_matrix(p)
    p.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length 1,000,000,000 does not fit"):
        load_matrix(p)
