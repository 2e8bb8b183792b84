"""Asking for a device: gpu without one fails before any data moves; auto falls back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, refused, write_pipeline

from pipelines.device import gpu_problem
from pipelines.runner import plan_file, run
from pipelines.store import ModelStore

SLUICE = str(Path(sys.executable).parent / "sluice")
needs_no_gpu = pytest.mark.skipif(gpu_problem() is None, reason="a GPU is usable here")


@needs_no_gpu
def test_gpu_without_one_fails_before_data_moves(workdir: Path) -> None:
    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    train = ROOT / "conf" / "pipelines" / "churn_train.yaml"
    result = subprocess.run([SLUICE, "run", str(train), "--device", "gpu"], cwd=workdir,
                            env={**os.environ, "CI": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device gpu was asked for, but ")
    assert gpu_problem() in lines[0]
    assert refused(workdir / "runs", "placement") and not (workdir / "models").exists()


@needs_no_gpu
def test_auto_runs_on_the_cpu_with_one_notice_and_identical_results(workdir: Path) -> None:
    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    train = ROOT / "conf" / "pipelines" / "churn_train.yaml"
    notes: list[str] = []
    auto = run(train, device="auto", models="auto-models", notify=notes.append)
    cpu = run(train, device="cpu", models="cpu-models", notify=notes.append)
    assert len(notes) == 1 and notes[0].startswith("device auto: ")
    assert auto["device"] == "cpu" == cpu["device"]
    a = ModelStore("auto-models").load("churn").chain.steps[-1].state()[1]
    c = ModelStore("cpu-models").load("churn").chain.steps[-1].state()[1]
    for key in c:
        np.testing.assert_array_equal(a[key], c[key])


def test_device_in_the_pipeline_file_is_validated(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: d
        device: tpu
        steps:
          - op: read_parquet
            path: data/churn
        """)
    (problem,) = plan_file(path).problems
    assert problem.line == 2 and "must be cpu, gpu or auto" in problem.message
