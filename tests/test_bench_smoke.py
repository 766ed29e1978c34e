"""Every bench script runs: `python bench/<name>.py --smoke` exits 0 (tiny models, seconds, nothing written outside
a temporary folder). A new bench/*.py is picked up by the glob; files starting with _ are helpers, not benches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _cases():
    for path in sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_")):
        marks = ()
        if path.name == "bench_judge.py" and "--smoke" not in path.read_text():
            marks = (pytest.mark.xfail(reason="smoke mode lands with the judges branch", strict=True),)
        yield pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("script", list(_cases()))
def test_bench_smoke_mode_runs(script, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TMPDIR=str(temp),
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(script), "--smoke"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{script.name} --smoke exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    assert proc.stdout.strip(), "a bench prints what it measured"
    assert list(cwd.iterdir()) == [], "a smoke run writes nothing outside its temporary folder"
