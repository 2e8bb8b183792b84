"""A run's record while it runs: written ``running`` as it starts, its heartbeat kept
fresh, replaced by the final record; a run killed outright leaves it, and readers show
it ``lost`` (its process gone from this host, or no heartbeat from another)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SLUICE, sluice_in_process, touch_pipeline

from operators.processes import this_process
from pipelines import runs
from pipelines.runner import run


def _listed(workdir: Path, *options: str) -> list[dict[str, Any]]:
    done = sluice_in_process("runs", "list", "--json", *options, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _wait_for(check: Any, what: str, child: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + 60
    while not (found := check()):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


@pytest.mark.slow
def test_a_running_run_is_seen_and_a_killed_one_is_lost(workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """While the run runs its record says running and its heartbeat moves; list shows it
    with its time so far, prune leaves it; SIGKILLed, it is lost (the record on disk
    still says running). The same record as another host's (its host rewritten) is
    running until its heartbeat has been silent LOST_AFTER_BEATS intervals (and
    LOST_AFTER_SECONDS, lowered here from 5 minutes), and lost after. Its incremental
    read's lock went with its process: the next run reads the files it did not commit,
    and writes a record of its own beside the killed one's; prune deletes the lost one."""
    interval = 0.4
    path, marks = touch_pipeline(workdir, "beating", 2, 60.0)
    path.write_text(path.read_text().replace("path: parts", "path: parts\n    incremental: true"))
    env = {**os.environ, "CI": "1", "SLUICE_HEARTBEAT_SECONDS": str(interval)}
    child = subprocess.Popen([SLUICE, "run", str(path)], cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    folder = workdir / "runs" / "beating"
    try:
        _wait_for(lambda: any(marks.iterdir()), "no partition started", child)
        (record_path,) = folder.glob("*.json")
        record = json.loads(record_path.read_text())
        assert (record["status"], record["pid"], record["host"], record["heartbeat_seconds"]
                ) == ("running", child.pid, socket.gethostname(), interval)
        assert record["steps"]["touch"]["op"] == "sluice_testops.Touch"
        run_id = record["run_id"]
        # heartbeat_at says the second: it moves within two intervals of one
        later = _wait_for(lambda: (r := json.loads(record_path.read_text()))["heartbeat_at"]
                          != record["heartbeat_at"] and r, "the heartbeat did not move", child)
        assert later["heartbeat_unix"] > record["heartbeat_unix"]
        assert later["seconds"] > record["seconds"] and later["status"] == "running"

        (running,) = _listed(workdir)
        assert running["status"] == "running" and running["seconds"] > 0
        assert _listed(workdir, "--status", "lost") == []
        shown = sluice_in_process("runs", "show", run_id, cwd=workdir).stdout
        assert f"run {run_id} of 'beating' on local: running for " in shown
        assert f"(every {interval:g}s), process {child.pid} on {socket.gethostname()}" in shown
        pruned = sluice_in_process("runs", "prune", "--keep", "0", cwd=workdir).stdout
        assert pruned.startswith("deleted 0 run record(s)") and record_path.exists()
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.communicate()

    left = json.loads(record_path.read_text())
    assert left["status"] == "running"  # as it was left
    (lost,) = _listed(workdir, "--status", "lost")
    assert lost["run_id"] == run_id
    assert lost["error"] == f"process {child.pid} on this host is gone"
    assert _listed(workdir, "--status", "running") == []
    shown = sluice_in_process("runs", "show", run_id, cwd=workdir).stdout
    assert f"run {run_id} of 'beating' on local: lost after " in shown
    assert f"  lost: process {child.pid} on this host is gone" in shown

    # as another host's run: its process cannot be looked at, its heartbeat is what says
    text = record_path.read_text()
    here = f'"host": {json.dumps(socket.gethostname())}'
    assert text.count(here) == 1
    record_path.write_text(text.replace(here, '"host": "node-7"'))
    floor = runs.LOST_AFTER_SECONDS
    monkeypatch.setattr(runs, "LOST_AFTER_SECONDS", 0.0)
    (running,) = _listed(workdir)  # within LOST_AFTER_BEATS intervals of its last beat
    assert (running["status"], running["error"]) == ("running", None)
    shown = sluice_in_process("runs", "show", run_id, cwd=workdir).stdout
    assert f"(every {interval:g}s), process {child.pid} on node-7" in shown
    pruned = sluice_in_process("runs", "prune", "--keep", "0", cwd=workdir).stdout
    assert pruned.startswith("deleted 0 run record(s)") and record_path.exists()
    silent_for = runs.LOST_AFTER_BEATS * interval
    time.sleep(max(0.0, left["heartbeat_unix"] + silent_for - time.time()) + 0.05)
    (lost,) = _listed(workdir, "--status", "lost")
    assert lost["error"].startswith(f"no heartbeat since {left['heartbeat_at']} (")
    assert lost["error"].endswith(f"s ago; it beats every {interval:g}s)")
    shown = sluice_in_process("runs", "show", run_id, cwd=workdir).stdout
    assert f"  lost: no heartbeat since {left['heartbeat_at']} (" in shown
    monkeypatch.setattr(runs, "LOST_AFTER_SECONDS", floor)  # and not before 5 minutes
    assert _listed(workdir, "--status", "running")[0]["run_id"] == run_id
    record_path.write_text(text)

    killed = record_path.read_text()
    path.write_text(path.read_text().replace("seconds: 60.0", "seconds: 0.0"))
    after = run(path)
    assert after["status"] == "succeeded" and after["run_id"] != run_id
    assert after["steps"]["read_parquet"]["incremental"]["new_files"] == 2
    assert record_path.read_text() == killed  # the killed run's record is not its
    (mine,) = set(folder.glob("*.json")) - {record_path}
    written = json.loads(mine.read_text())
    assert (written["run_id"], written["status"], written["pid"]) == (
        after["run_id"], "succeeded", os.getpid())
    assert "heartbeat_at" not in written and written["steps"]["touch"]["rows"] == 200
    assert [(r["run_id"], r["status"]) for r in _listed(workdir)] == [
        (after["run_id"], "succeeded"), (run_id, "lost")]
    pruned = sluice_in_process("runs", "prune", "--keep", "0", "--status", "lost",
                               cwd=workdir).stdout
    assert pruned.startswith(f"deleted 1 run record(s): {run_id} (beating)")
    assert not record_path.exists() and mine.exists()


@pytest.mark.slow
def test_a_run_killed_as_it_writes_its_final_record_leaves_its_running_one_whole(
        workdir: Path) -> None:
    """Killed between writing its final record and putting it in place
    (``SLUICE_TEST_KILL_AT=in-record``), a run leaves its running record as it was, whole:
    read as lost, no file skipped as damaged; the next run's record is its own."""
    path, _ = touch_pipeline(workdir, "ending", 1, 0.0)
    path.write_text(path.read_text().replace("path: out", "path: out\n    mode: overwrite"))
    done = subprocess.run([SLUICE, "run", str(path)], cwd=workdir, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "CI": "1", "SLUICE_TEST_KILL_AT": "in-record"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    (record_path,) = (workdir / "runs" / "ending").glob("*.json")
    left = json.loads(record_path.read_text())
    assert left["status"] == "running" and left["outputs"] == []
    listed = sluice_in_process("runs", "list", "--json", cwd=workdir)
    assert listed.stderr == ""  # nothing skipped as damaged
    (lost,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (lost["run_id"], lost["status"], lost["error"]) == (
        left["run_id"], "lost", f"process {left['pid']} on this host is gone")

    after = run(path)
    assert after["status"] == "succeeded" and after["run_id"] != left["run_id"]
    assert json.loads(record_path.read_text()) == left
    assert [(r["run_id"], r["status"]) for r in _listed(workdir)] == [
        (after["run_id"], "succeeded"), (left["run_id"], "lost")]
    # the final record it was writing, left beside it, goes with it when it is pruned
    (staged,) = record_path.parent.glob(f".{record_path.name}.*.tmp")
    assert json.loads(staged.read_text())["status"] == "succeeded"
    sluice_in_process("runs", "prune", "--keep", "0", "--status", "lost", cwd=workdir,
                      check=True)
    assert not record_path.exists() and not staged.exists()


def test_a_run_s_final_record_replaces_its_running_one(workdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The heartbeat stops with the run: what stays is the final record, without the
    heartbeat (a beat after it would make a finished run running again)."""
    monkeypatch.setenv("SLUICE_HEARTBEAT_SECONDS", "0.01")
    path, _ = touch_pipeline(workdir, "short", 1, 0.2)
    record = run(path)
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "sluice-heartbeat"]
    (record_path,) = (workdir / "runs" / "short").glob("*.json")
    written = json.loads(record_path.read_text())
    assert written["status"] == "succeeded" == record["status"]
    assert written["pid"] == os.getpid() and "heartbeat_at" not in written
    assert not [p for p in record_path.parent.iterdir() if p.name.startswith(".")]

    monkeypatch.setenv("SLUICE_HEARTBEAT_SECONDS", "soon")
    done = sluice_in_process("run", str(path), cwd=workdir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: $SLUICE_HEARTBEAT_SECONDS is 'soon', not a number "
                                  "of seconds above 0 (set it to how often a running run's "
                                  "record is rewritten (default 30), or unset it)")


def _running(workdir: Path, run_id: str, **fields: Any) -> None:
    """A running record as a run writes it, with ``fields`` (another host's, a process
    that is not the run's)."""
    record = {"run_id": run_id, "pipeline": "elsewhere", "status": "running",
              "started_at": "2026-11-28T06:00:00Z", "started_unix": time.time() - 3600,
              "seconds": 1.0, "engine": {"name": "spark"}, "params": {}, "steps": {},
              "outputs": [], "models": [], "metrics": {}, "heartbeat_seconds": 30.0,
              **this_process(), **fields}
    runs.write(record, str(workdir / "runs"))


def test_a_running_record_is_lost_when_its_run_cannot_be_alive(workdir: Path) -> None:
    """From another host: lost after 10 silent intervals and at least 5 minutes; on
    this host: alive while its process is (the same process, by its start), lost once
    its pid is another process's."""
    now = time.time()
    _running(workdir, "20261128T060000Z-000001", host="node-7", heartbeat_unix=now - 299,
             heartbeat_at="2026-11-28T06:55:01Z", heartbeat_seconds=1.0)
    _running(workdir, "20261128T060000Z-000002", host="node-7", heartbeat_unix=now - 301,
             heartbeat_at="2026-11-28T06:54:59Z", heartbeat_seconds=1.0)
    _running(workdir, "20261128T060000Z-000003", host="node-7", heartbeat_unix=now - 400,
             heartbeat_at="2026-11-28T06:53:20Z", heartbeat_seconds=60.0)
    _running(workdir, "20261128T060000Z-000004")  # this very process
    _running(workdir, "20261128T060000Z-000005", pid_start=-1)  # its pid, reused
    statuses = {r["run_id"][-1]: (r["status"], r["error"]) for r in _listed(workdir)}
    assert statuses == {
        "1": ("running", None),
        "2": ("lost", "no heartbeat since 2026-11-28T06:54:59Z (5m01s ago; it beats every "
                      "1s)"),
        "3": ("running", None),  # 400 s is not 10 of its 60 s beats
        "4": ("running", None),
        "5": ("lost", f"process {os.getpid()} on this host is gone"),
    }
    # a running run is not done: not counted among the newest kept, never deleted
    doomed, _ = runs.prunable(runs.load(str(workdir / "runs")).records, keep=1)
    assert sorted(r["run_id"][-1] for r in doomed) == ["2"]



def test_showing_a_lost_run_reads_the_records_after_it_not_the_whole_history(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs show` of a killed run finds the run that settled its claim among the
    records from an hour before it on (a settling host's clock may lag), without reading
    the pipeline's older history."""
    killed, settler = "20261128T060000Z-000005", "20261128T055000Z-000006"  # a lagging clock
    old = [f"2026112{day}T060000Z-00000{day}" for day in range(1, 4)]
    for run_id in old:
        runs.write({"run_id": run_id, "pipeline": "elsewhere", "status": "succeeded",
                    "started_at": "2026-11-2xT06:00:00Z", "seconds": 1.0,
                    "engine": {"name": "local"}, "params": {}, "steps": {}, "outputs": [],
                    "models": [], "metrics": {}}, str(workdir / "runs"))
    _running(workdir, killed, pid_start=-1)  # its pid, reused: lost
    claim = {"run_id": killed, "outcome": "settled", "files": 1, "outputs": [], "models": []}
    runs.write({"run_id": settler, "pipeline": "elsewhere", "status": "succeeded",
                "started_at": "2026-11-28T05:50:00Z", "seconds": 1.0,
                "engine": {"name": "local"}, "params": {},
                "steps": {"events": {"op": "read_parquet", "incremental": {"claim": claim}}},
                "outputs": [], "models": [], "metrics": {}}, str(workdir / "runs"))
    parsed: list[str] = []
    real = runs._parsed

    def spy(content: Any) -> Any:
        record, problem = real(content)
        parsed.append(record["run_id"] if record else problem)
        return record, problem

    monkeypatch.setattr(runs, "_parsed", spy)
    (shown,) = runs.load(str(workdir / "runs"), "elsewhere", prefix=killed).records
    assert shown["status"] == "lost" and shown["settled_by"]["by"] == settler
    assert sorted(parsed) == [settler, killed, killed], parsed  # the older three unread


def test_a_running_run_s_steps_show_no_time(workdir: Path) -> None:
    """A running (or lost) run's steps have not ended: `runs show` lists them without a
    time, not as steps of 0 seconds; a step an older record timed keeps its time."""
    _running(workdir, "20261128T060000Z-000001",
             steps={"events": {"op": "read_parquet", "kind": "source"},
                    "model": {"op": "logistic_regression", "kind": "estimator",
                              "wall_seconds": 1.5}})
    shown = sluice_in_process("runs", "show", "20261128T060000Z-000001", cwd=workdir).stdout
    lines = {line.split()[0]: line for line in shown.splitlines() if line.startswith("  ")}
    assert lines["events"] == f"  {'events':<24} read_parquet"
    assert lines["model"] == f"  {'model':<24} {'logistic_regression':<22} {'':17}     1.500s"
