"""A recording made on one machine verifies on another: runs trained on a GPU, replayed on this CPU.

The fixtures (tests/fixtures/cuda_runs) were trained on an NVIDIA H200 by bench/gpu_check.sh. Their files
carry the GPU's probed kernel laws (CUDA's reciprocal division, addcmul and addcdiv as one fused multiply-add
of a product or quotient computed first, ...), all of them numpy laws, so `lab verify` on any CPU replays
them bit for bit without the GPU. Run as users run it: the installed `lab` in a fresh process.
"""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cuda_runs"
LAB = Path(sys.executable).with_name("lab")


@pytest.mark.parametrize("packed", sorted(p.name for p in FIXTURES.glob("*.h5.xz")))
def test_a_run_trained_on_a_gpu_replays_bit_exactly_on_this_cpu(packed, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    name = packed.removesuffix(".xz")
    (store / name).write_bytes(lzma.decompress((FIXTURES / packed).read_bytes()))
    key = name.removesuffix(".h5").rsplit("-", 1)[1]
    env = {**os.environ, "LAB_STORE": str(store), "TQDM_DISABLE": "1"}
    done = subprocess.run([str(LAB), "verify", key], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NVIDIA H200, CUDA 13.0" in done.stdout and "bit-exact" in done.stdout
    assert "library" not in done.stdout.split("kernel laws", 1)[1].splitlines()[0]  # every law is numpy's
