"""The long profile of the recipe-space property test, plus the cost of probing the kernel laws.

    python bench/bench_replay_property.py [--examples 200]

Runs tests/rig/test_replay_property.py with fresh random draws (hypothesis, not derandomised) and prints
examples, failures and seconds, then times a cold probe of every (dtype, implementation) against the cached
lookup, side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200)
    args = ap.parse_args()

    env = dict(os.environ, LAB_PROPERTY_EXAMPLES=str(args.examples), LAB_PROPERTY_RANDOM="1")
    started = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests/rig/test_replay_property.py")], cwd=ROOT, env=env)
    took = time.perf_counter() - started
    print(f"property test: {args.examples} random recipes, {'all bit-exact' if rc == 0 else 'FAILED'}, "
          f"{took:.1f} s ({took / args.examples:.2f} s per recipe, training included)")

    code = ("import time, torch, experiments; from experiments.physics import laws\n"
            "t = time.perf_counter()\n"
            "for b in (True, False):\n"
            "    for i in laws.IMPLS: laws.current(b, i)\n"
            "print(time.perf_counter() - t)\n")
    with tempfile.TemporaryDirectory() as cache:
        cenv = dict(os.environ, XDG_CACHE_HOME=cache)
        cold = float(subprocess.check_output([sys.executable, "-c", code], env=cenv, cwd=ROOT))
        warm = float(subprocess.check_output([sys.executable, "-c", code], env=cenv, cwd=ROOT))
    print(f"probe of all six (dtype, impl) laws: cold {cold:.2f} s, cached {warm * 1000:.1f} ms "
          f"({cold / max(warm, 1e-9):.0f}x)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
