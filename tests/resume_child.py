"""A child process for tests/test_resume.py: deterministic torch on one CPU thread, then an engine command.

    python tests/resume_child.py cli ARGS...                          python -m engine ARGS...
    python tests/resume_child.py block DB RUN_ID CONFIG STEP MARKER   execute the run; when it reports training step
                                                                      STEP, write MARKER and wait to be killed
"""

import os
import sys
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from engine.__main__ import main  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from engine.runner import execute  # noqa: E402
from engine.store import Store  # noqa: E402

if sys.argv[1] == "cli":
    sys.exit(main(sys.argv[2:]))
db, run_id, config, step, marker = sys.argv[2:7]


def on_progress(p) -> None:
    if p.phase == "train" and p.done == int(step):
        Path(marker).write_text(str(p.done))
        time.sleep(600)  # the test SIGKILLs this process now


execute(RunConfig.load(config), Store(db), run_id, on_progress)
sys.exit(3)  # never reached when the test kills it
