#!/usr/bin/env bash
# README's first command: set up the environment and build the whole site into site/.
# Extra arguments go to `lab render` (e.g. -j 2, --strict, --timeout 600). A fresh clone trains the runs of
# _runs.yml first (bars and an ETA), then executes every page; a failed page is published under a banner
# and the script exits non-zero (with --strict, site/ is left as it was).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lab render "$@"
