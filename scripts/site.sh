#!/usr/bin/env bash
# README's first command: set up the environment and build the whole site into site/.
# Extra arguments go to `lab render` (e.g. -j 2, --keep-going).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lab render "$@"
