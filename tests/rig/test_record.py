"""The recording format: exact bf16 bits, lazy reads, memory independent of the number of steps."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import torch

from experiments.errors import DataError
from experiments.rig.record import Recorder
from experiments.store.recording import Run

ATTRS = {"name": "rec", "key": "0123456789abcdef", "key_parts": "{}", "config": json.dumps({"record": {}}),
         "versions": "{}", "created": "2026-01-01T00:00:00Z", "description": "", "tokenizer": "{}"}


def _write(path, bits_per_step, steps, tokens, dtype="bfloat16"):
    rec = Recorder(path, attrs=ATTRS, tokens=tokens, steps=steps, steps_total=int(steps[-1]),
                   d_model=bits_per_step[0].shape[1], tensors={"W": dtype}, dead=np.zeros(10, bool),
                   counts=np.zeros(10, np.int64))
    for s, arr in zip(steps, bits_per_step, strict=True):
        rec.write_step(int(s), {"W": arr})
    S = int(steps[-1])
    rec.write_scalars(1, np.arange(S, dtype=np.float32), np.full(S, 1e-3), np.ones(S, np.float32))
    rec.finish()


def test_bf16_bits_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    steps, tokens = np.array([0, 1, 2, 5]), np.array([1, 3, 4, 9], np.int32)
    special = np.array([0x0000, 0x8000, 0x0001, 0x7F7F, 0xFF80, 0x7F80, 0x7FC1, 0x3F80], np.uint16)
    bits = [rng.integers(0, 1 << 16, size=(4, 8), dtype=np.uint16) for _ in steps]
    bits[0][0] = special  # zeros, subnormal, max, -inf, inf, a NaN payload
    _write(tmp_path / "r.h5", bits, steps, tokens)
    run = Run(tmp_path / "r.h5")
    got = run.tensor("W", kind="bits")
    assert got.dtype == np.uint16 and np.array_equal(got, np.stack(bits))
    as_np = run.W()
    assert as_np.dtype == ml_dtypes.bfloat16 and np.array_equal(as_np.view(np.uint16), np.stack(bits))
    as_torch = run.W(kind="torch")
    assert as_torch.dtype == torch.bfloat16
    assert np.array_equal(as_torch.view(torch.int16).numpy().view(np.uint16), np.stack(bits))
    # selections by step number and token id, in any order, scalar or list
    assert np.array_equal(run.tensor("W", steps=5, rows=3, kind="bits"), bits[3][1])
    assert np.array_equal(run.tensor("W", steps=[5, 0], rows=[9, 1], kind="bits"),
                          np.stack([bits[3][[3, 0]], bits[0][[3, 0]]]))
    assert np.array_equal(run.tensor("W", steps=slice(1, 5), kind="bits"), np.stack(bits[1:3]))
    assert np.array_equal(run.trajectory(4).view(np.uint16), np.stack([b[2] for b in bits]))
    with pytest.raises(KeyError, match="steps \\[3\\] were not recorded"):
        run.W(steps=3)
    with pytest.raises(KeyError, match="token ids \\[2\\]"):
        run.W(rows=[2])
    with pytest.raises(KeyError, match="'m' was not recorded"):
        run.tensor("m")


def test_incomplete_file_is_never_read_as_a_run(tmp_path):
    rec = Recorder(tmp_path / "half.h5", attrs=ATTRS, tokens=np.arange(2), steps=np.arange(3), steps_total=2,
                   d_model=4, tensors={"W": "bfloat16"}, dead=np.zeros(2, bool), counts=np.zeros(2, np.int64))
    rec.write_step(0, {"W": np.zeros((2, 4), np.uint16)})
    with pytest.raises(DataError, match="only 0 of 2 steps"):
        rec.finish()
    rec.abort()
    with pytest.raises(DataError, match="not complete"):
        Run(tmp_path / "half.h5")


_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from experiments.rig.record import Recorder
    steps = int(sys.argv[2]); N, D = 4096, 64   # 512 KiB of bf16 per recorded step
    attrs = {"name": "m", "key": "0" * 16}
    rec = Recorder(sys.argv[1], attrs=attrs, tokens=np.arange(N), steps=np.arange(steps + 1),
                   steps_total=steps, d_model=D, tensors={"W": "bfloat16", "m": "bfloat16"},
                   dead=np.zeros(N, bool), counts=np.zeros(N, np.int64))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    block = np.arange(N * D, dtype=np.uint16).reshape(N, D)
    for s in range(steps + 1):
        rec.write_step(s, {"W": block, "m": block})
    rec.write_scalars(1, np.zeros(steps, np.float32), np.zeros(steps), np.ones(steps, np.float32))
    rec.finish()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""")


def test_recorder_memory_does_not_grow_with_recorded_steps(tmp_path, sub_env):
    growth = {}
    for steps in (50, 400):  # 50 MB vs 400 MB written
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / f"m{steps}.h5"), str(steps)],
                             env=sub_env(tmp_path), capture_output=True, text=True, check=True)
        growth[steps] = int(out.stdout.split()[-1])  # KiB
    assert (tmp_path / "m400.h5").stat().st_size > 7 * (tmp_path / "m50.h5").stat().st_size
    # peak RSS growth while writing 8x more data stays within a few MB of the small run's
    assert growth[400] < growth[50] + 8 * 1024, growth


def test_chunks_grow_only_where_a_block_of_steps_is_large():
    """About 32 KiB chunks keep one token's trajectory cheap to read; where STEP_BLOCK steps of a tensor exceed
    8 MiB (every row of the vocabulary) they are about 128 KiB, so the writer thread has a quarter as many
    chunks to gather, filter and index per step."""
    from experiments.rig.record import STEP_BLOCK, _chunk_shape

    assert _chunk_shape((1001, 3116, 64), 2) == (STEP_BLOCK, 32, 64)  # the site's dead rows, bf16
    assert _chunk_shape((1001, 3116, 64), 4) == (STEP_BLOCK, 16, 64)  # ... fp32: 6.4 MB a block, still small
    assert _chunk_shape((1001, 10000, 64), 2) == (STEP_BLOCK, 128, 64)  # every row, bf16: 10 MB a block
    assert _chunk_shape((1001, 10000, 64), 4) == (STEP_BLOCK, 64, 64)
    assert _chunk_shape((1001, 10000, 64), 2, 32 * 1024) == (STEP_BLOCK, 32, 64)  # the layout of earlier files
    assert _chunk_shape((3, 10000, 64), 2) == (3, 85, 64)  # three steps of every row: 3.8 MB, small
    assert _chunk_shape((1001, 64), 4) == (STEP_BLOCK, 64)
