"""The GPU test suite (tests/gpu) run here on the GPU stand-in, so that CI, which has
no GPU, runs every test that the GPU machine will: a test that would fail on CuPy for
a reason other than CuPy itself (a wrong expectation, a missing record field, a Dask
placement) fails here first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators.arrays import STANDIN_ENV, STANDIN_MEMORY_ENV

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_suite_passes_on_the_stand_in(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != STANDIN_MEMORY_ENV}
    env[STANDIN_ENV] = "array_api_strict"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "base"), str(ROOT / "tests" / "gpu")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.splitlines()[-1], tail
