#!/usr/bin/env bash
# Install and run the main job: the default offline RLAIF run (PPO on HH prompts, before/after toxicity).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m engine run configs/default.yaml "$@"
