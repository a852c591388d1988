"""The allocator setting training uses (experiments.rig.malloc): freed blocks are reused instead of faulted in again,
and the recordings do not change by a bit."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest

from experiments.rig import malloc

_FAULTS = """
import resource, sys
import numpy as np
from experiments.rig import malloc
if sys.argv[1] == "keep":
    assert malloc.keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    a = np.empty(5 << 20)  # 40 MiB
    a[:] = 1.0
step()  # the first time its pages are faulted in either way
before = faults()
for _ in range(20):  # a step's fp32 logits (8 x 128 x 10,000): allocated, written, freed
    step()
print(faults() - before)
"""


@pytest.mark.skipif(malloc._libc() is None, reason="not glibc's allocator")
def test_kept_memory_is_not_faulted_in_again(sub_env, store):
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=sub_env(store), capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default >= 20  # glibc maps and unmaps it every time: its pages (or huge pages) fault again each time
    assert kept < 10  # kept in the heap: no fault after the first time


_TRAIN = """
import json, sys
import experiments
from experiments.rig import malloc
if sys.argv[2] == "off":
    malloc.keep_freed_memory = lambda: False
print(experiments.run(json.loads(sys.argv[1]), progress=False).path)
"""


def test_the_recording_does_not_depend_on_the_allocator(sub_env, sibling_store, tiny):
    cfg = tiny(name="malloc", train={"steps": 30}, record={"rows": "dead", "steps": "all",
                                                           "tensors": ["W", "m", "v", "grad"]})
    digests = []
    for mode in ("on", "off"):
        other = sibling_store(mode)
        out = subprocess.run([sys.executable, "-c", _TRAIN, json.dumps(cfg), mode], env=sub_env(other),
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        with h5py.File(out.stdout.split()[-1]) as f:
            digests.append(f.attrs["content_sha256"])
    assert digests[0] == digests[1]
