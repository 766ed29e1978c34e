#!/usr/bin/env bash
# The first command: install if needed (scripts/setup.sh), then open the lab (app/serve.py: app/main.py plus the
# deep-link fix) on this machine only (127.0.0.1),
# over the embedded SQLite store (runs/rlaif_lab.db, or $RLAIF_LAB_DB). The lab starts a local worker process on
# its first page load (training never runs in the web server). Port: $PORT (default 8501). Stop with Ctrl-C;
# a run in progress keeps going in its worker (`python -m engine worker` serves it; the next lab finds it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x .venv/bin/python ] || ! .venv/bin/python -c "import streamlit, torch, engine" 2>/dev/null; then
  echo "Installing into ./.venv (first start only, a few minutes) ..."
  bash scripts/setup.sh
fi
. .venv/bin/activate
PORT=${PORT:-8501}
echo "RLAIF Lab: open http://127.0.0.1:${PORT}  (Ctrl-C stops the web server)"
exec python -m streamlit run app/serve.py --server.address 127.0.0.1 --server.port "$PORT" \
  --server.headless true --server.fileWatcherType none --browser.gatherUsageStats false "$@"
