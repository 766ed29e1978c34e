#!/usr/bin/env bash
# Install everything (see setup.sh) and run the whole test suite, browser and PostgreSQL tests included.
# Without arguments: the tests that need no browser run two at a time (pytest-xdist, one file per process, so one
# PostgreSQL server and one Ray head each), then the browser tests (tests/e2e) one at a time, since they time what a
# page does and a second test beside them only slows them down. With arguments: pytest with those arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 WITH_POSTGRES=1 bash scripts/setup.sh
. .venv/bin/activate
ruff check .
if [ "$#" -gt 0 ]; then
    exec python -m pytest -q "$@"
fi
python -m pytest -q --durations=20 -n 2 --dist loadfile --ignore=tests/e2e
python -m pytest -q --durations=20 tests/e2e
