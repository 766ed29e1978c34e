#!/usr/bin/env bash
# Install everything (see setup.sh) and run the whole test suite, browser and PostgreSQL tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 WITH_POSTGRES=1 bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q --durations=30 "$@"
