"""RLAIF Lab engine: config, data, models, rewards, PPO, evaluation, run store and worker.

The engine never imports Streamlit and is fully usable from Python and the CLI (`python -m engine`).
Importing `engine` is cheap: torch, transformers and boto3 are imported by the modules that need them.
"""

__version__ = "0.1.0"
