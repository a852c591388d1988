#!/usr/bin/env bash
# README's second command: set up the environment (with test tools and chromium) and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
exec .venv/bin/python -m pytest "$@"
