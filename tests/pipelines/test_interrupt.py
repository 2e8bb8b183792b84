"""A run stopped by a signal, as a person (Ctrl-C: SIGINT to the whole process group)
or a scheduler (Airflow, a Kubernetes CronJob: SIGTERM to sluice) stops it, on every
engine: one error line and exit 128 + the signal, nothing published, the run record
says interrupted, and no process of the run is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ENGINES, SLUICE, touch_pipeline

# Spark's own warnings (they pass sluice's log configuration): a cancelled job's killed
# tasks are reported there
JVM_WARNING = re.compile(r"^(WARNING: Using incubator modules|\d\d/\d\d/\d\d [\d:]+ WARN )")


def _gone(pgid: int, seconds: float) -> bool:
    """Whether every process of the group has exited within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_signal_stops_the_run_cleanly(engine: str, how: str, workdir: Path) -> None:
    path, marks = touch_pipeline(workdir, "stopped", 8, 3.0)
    env = {**os.environ, "CI": "1", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    if engine == "spark":  # the tests' shared session holds the UI's port
        (workdir / "conf" / "engines").mkdir(parents=True)
        (workdir / "conf" / "engines" / "spark.yaml").write_text(
            "conf:\n  spark.ui.enabled: false\n")
    child = subprocess.Popen([SLUICE, "run", str(path), "--engine", engine], cwd=workdir,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(marks.iterdir()):  # a partition is being computed
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no partition started"
            time.sleep(0.1)
        if how == "ctrl-c":  # the terminal signals the whole foreground group
            signum = signal.SIGINT
            os.killpg(child.pid, signum)
        else:  # a scheduler signals sluice itself
            signum = signal.SIGTERM
            child.send_signal(signum)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 128 + signum, stderr
    lines = [line for line in stderr.splitlines()
             if line.strip() and not JVM_WARNING.match(line)]
    assert lines == [f"error: interrupted by {signum.name}: stopped; what the run had not "
                     "committed was discarded (its run record says interrupted)"], stderr
    assert len(list(marks.iterdir())) < 8  # it stopped before the end
    assert not (workdir / "out").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]
    (record_path,) = (workdir / "runs" / "stopped").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "interrupted"
    assert record["error"] == f"interrupted by {signum.name}"
    # the engine's workers, the JVM and its Python workers: all gone
    assert _gone(child.pid, 30), "processes of the run are left behind"


def _spawned_workers(driver: object) -> list[object]:
    """The driver's worker processes (multiprocessing's spawned children; not its
    resource tracker, which starts first)."""
    import psutil

    found = []
    for proc in driver.children(recursive=True):  # type: ignore[attr-defined]
        try:
            if "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_while_the_dask_workers_start_stops_the_run(workdir: Path) -> None:
    """The LocalCluster's worker processes start with Ctrl-C held off (the driver stops
    the run); a Ctrl-C in those seconds is the driver's all the same."""
    import psutil

    path, marks = touch_pipeline(workdir, "stopped", 8, 3.0)
    child = subprocess.Popen([SLUICE, "run", str(path), "--engine", "dask"], cwd=workdir,
                             env={**os.environ, "CI": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        driver, deadline = psutil.Process(child.pid), time.monotonic() + 120
        while not _spawned_workers(driver):  # the workers are being started
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no worker process started"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 128 + signal.SIGINT, stderr
    assert stderr.strip().splitlines() == [
        "error: interrupted by SIGINT: stopped; what the run had not committed was "
        "discarded (its run record says interrupted)"], stderr
    assert not any(marks.iterdir())  # no partition was started
    assert _gone(child.pid, 30), "processes of the run are left behind"
