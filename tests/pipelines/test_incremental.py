"""Incremental reads (`read_parquet: incremental: true`): a scheduled re-run reads only
the files no succeeded run of the pipeline read, on every engine; what was read is
committed only when a run succeeds; two runs at once do not both take the same files.

The oracle is the files themselves: the output, after several runs appending to it,
holds each input row exactly once (pyarrow's read of every input file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sluice_in_process, write_pipeline

from operators.base import SluiceError
from operators.io.parquet import STAGING_MARK
from pipelines.cli import main
from pipelines.engines.base import StepFailure
from pipelines.runner import ValidationFailed, run

SLUICE = str(Path(sys.executable).parent / "sluice")

PIPELINE = """
    pipeline: events_daily
    params: {{wait: 0.0}}
    steps:
      - id: events
        op: read_parquet
        path: data/events
        incremental: true{extra}
      - id: touch
        op: sluice_testops.Touch
        folder: {marks}
        seconds: ${{wait}}
      - op: write_parquet
        path: out
        mode: append
    """


def day(root: Path, ds: int, rows: int = 3, bad: bool = False, name: str = "part.parquet"
        ) -> Path:
    """A `ds=` folder's file of ``rows`` ids (``ds * 100 + i``)."""
    folder = root / "data" / "events" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [ds * 100 + i for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "bad": [bad] * rows}), folder / name)
    return folder / name


def pipeline(workdir: Path, extra: str = "") -> Path:
    (workdir / "marks").mkdir(exist_ok=True)
    return write_pipeline(workdir, PIPELINE.format(extra=extra, marks=workdir / "marks"))


def ids_in(folder: Path) -> list[int]:
    return sorted(pq.read_table(folder, columns=["id"]).column("id").to_pylist())


def every_input_id(workdir: Path) -> list[int]:
    return sorted(i for f in (workdir / "data" / "events").rglob("*.parquet")
                  for i in pq.read_table(f).column("id").to_pylist())


def state(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "runs" / "events_daily" / ".reads" / "events.json")
                      .read_text())["files"]


def test_scheduled_runs_append_each_row_exactly_once(workdir: Path, engine: Any) -> None:
    """Three scheduled runs, a new `ds=` folder arriving before the second: each row is
    in the output once; the third, with nothing new, runs nothing and says so."""
    path = pipeline(workdir)
    day(workdir, 1)
    first = run(path, engine_instance=engine)
    assert first["steps"]["events"]["incremental"]["new_files"] == 1
    day(workdir, 2)
    second = run(path, engine_instance=engine)
    read = second["steps"]["events"]["incremental"]
    assert (read["new_files"], read["read_before"]) == (1, 1)
    assert read["first"] == read["last"] == str(workdir / "data/events/ds=2/part.parquet")
    assert second["steps"]["touch"]["rows"] == 3
    assert ids_in(workdir / "out") == every_input_id(workdir)
    third = run(path, engine_instance=engine)
    assert third["status"] == "succeeded" and third["outputs"] == []
    assert third["skipped"] == ("no new files: every file of step 'events' was read by an "
                                "earlier run")
    assert third["steps"]["events"]["incremental"]["read_before"] == 2
    assert ids_in(workdir / "out") == every_input_id(workdir)
    # kept relative to the read's folder: a dataset moved with its files keeps its state
    assert sorted(state(workdir)) == sorted(
        str(p.relative_to(workdir / "data" / "events"))
        for p in (workdir / "data" / "events").rglob("*.parquet"))


def test_a_failed_run_commits_nothing_and_a_rewritten_file_is_new(workdir: Path) -> None:
    path = pipeline(workdir)
    day(workdir, 1)
    run(path)
    day(workdir, 2)
    day(workdir, 3, bad=True)
    with pytest.raises(SluiceError, match="a bad row"):
        run(path)
    assert list(state(workdir)) == ["ds=1/part.parquet"]
    # it published nothing: its claim is removed, nothing for the next run to settle
    assert not (workdir / "runs" / "events_daily" / ".reads" / "events.pending.json").exists()
    day(workdir, 3)  # rewritten in place, good now: a new file
    done = run(path)
    assert done["steps"]["events"]["incremental"]["new_files"] == 2
    assert ids_in(workdir / "out") == every_input_id(workdir)


def test_max_files_reads_the_oldest_first(workdir: Path) -> None:
    path = pipeline(workdir, "\n        max_files: 2")
    for ds in (3, 1, 2):  # written in this order: day 3 is the oldest file
        day(workdir, ds)
        time.sleep(0.01)
    first = run(path)["steps"]["events"]["incremental"]
    assert (first["new_files"], first["waiting"]) == (2, 1)
    assert ids_in(workdir / "out") == [100, 101, 102, 300, 301, 302]
    second = run(path)["steps"]["events"]["incremental"]
    assert (second["new_files"], second["read_before"], second["waiting"]) == (1, 2, 0)
    assert ids_in(workdir / "out") == every_input_id(workdir)


def test_full_refresh_reads_every_file_and_runs_show_says_what_was_read(
        workdir: Path) -> None:
    path = pipeline(workdir)
    day(workdir, 1)
    day(workdir, 2)
    env = {"CI": "1"}
    for args in ([], [], ["--full-refresh"]):
        done = sluice_in_process("run", str(path), *args, cwd=workdir, env=env)
        assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    # every row appended again (mode: append downstream): said once, as the run starts
    (note,) = [line for line in done.stderr.splitlines() if "--full-refresh" in line]
    assert note == (f"note: {path}:14: --full-refresh: step 'events' reads every file again, "
                    "and step 'write_parquet' appends (mode: append) to out: the rows earlier "
                    "runs appended are appended again; write that output with mode: "
                    "overwrite for a full refresh"), done.stderr
    assert (f"step 'events' read 2 new files (first {workdir}/data/events/ds=1/part.parquet, "
            f"last {workdir}/data/events/ds=2/part.parquet); every file (--full-refresh)"
            ) in lines
    listed = sluice_in_process("runs", "list", "--json", cwd=workdir, env=env)
    skipped = json.loads(listed.stdout.splitlines()[1])  # the second run, newest first
    assert skipped["skipped"] == ("no new files: every file of step 'events' was read by "
                                  "an earlier run")
    # the history tells the night that did nothing from those that did
    table = sluice_in_process("runs", "list", cwd=workdir, env=env).stdout.splitlines()
    assert [line.split("  ")[2].strip() for line in table[1:] if line.strip()] == [
        "succeeded", "succeeded, nothing to do", "succeeded"], table
    refreshed = json.loads(listed.stdout.splitlines()[0])
    shown = sluice_in_process("runs", "show", refreshed["run_id"], cwd=workdir, env=env)
    assert f"\n  {note}\n" in shown.stdout, shown.stdout  # kept in its record
    # compared, the nights say which was a full refresh and how many files each read
    compared = sluice_in_process("runs", "compare", skipped["run_id"], refreshed["run_id"],
                                 cwd=workdir, env=env).stdout.splitlines()
    assert [line.split() for line in compared if " full refresh " in line
            or " files read " in line] == [["*", "full", "refresh", "no", "yes"],
                                           ["*", "files", "read", "0", "2"]], compared
    shown = sluice_in_process("runs", "show", skipped["run_id"], cwd=workdir, env=env)
    assert shown.stdout.startswith(f"run {skipped['run_id']} of 'events_daily' on local: "
                                   "succeeded, nothing to do in "), shown.stdout
    assert ("nothing to do: no new files: every file of step 'events' was read by an "
            "earlier run") in shown.stdout
    assert "step 'events' read 0 new files; 2 read by earlier runs" in shown.stdout
    # the skipped run was asked what the first was: its steps' params are the same
    first = json.loads(listed.stdout.splitlines()[2])
    compared = sluice_in_process("runs", "compare", first["run_id"], skipped["run_id"],
                                 cwd=workdir, env=env)
    assert "\nPARAMS: all " in compared.stdout and " are the same\n" in compared.stdout
    assert ids_in(workdir / "out") == sorted(every_input_id(workdir) * 2)  # appended again


def test_a_second_run_at_once_is_refused_naming_the_first(workdir: Path) -> None:
    """The first run holds the step while it runs; the second fails as it plans, naming
    it; an interrupted first run commits nothing, so the next reads its files."""
    path = pipeline(workdir)
    day(workdir, 1)
    child = subprocess.Popen([SLUICE, "run", str(path), "--param", "wait=5"], cwd=workdir,
                             env={**os.environ, "CI": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((workdir / "marks").iterdir()):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        lock = workdir / "runs" / "events_daily" / ".reads" / "events.lock"
        first = json.loads(lock.read_text())["run_id"]
        with pytest.raises(ValidationFailed) as info:
            run(path)
        (problem,) = info.value.problems
        assert problem.line == 7 and (
            f"step 'events' reads incrementally, and run {first} of pipeline 'events_daily' "
            "is reading it now") in problem.message
        # its record says what it was: refused while another run held the step, not a
        # problem of the pipeline
        (refused,) = [r for r in map(json.loads, map(Path.read_text, (
            workdir / "runs" / "events_daily").glob("*.json"))) if r["status"] == "failed"]
        assert (refused["failed_in"], refused["held_by"]) == ("lock", first)
        assert refused["problems"] == [str(problem)]
        assert {k: e.get("problems") for k, e in refused["steps"].items()} == {
            "events": 1, "touch": None, "write_parquet": None}
        shown = CliRunner().invoke(main, ["runs", "show", refused["run_id"]]).stdout
        assert (f"failed in: lock (run {first} of the pipeline held its incremental reads; "
                "before any step ran)") in shown
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert not (workdir / "runs" / "events_daily" / ".reads" / "events.json").exists()
    assert not (workdir / "runs" / "events_daily" / ".reads" / "events.pending.json").exists()
    done = run(path)
    assert done["steps"]["events"]["incremental"]["new_files"] == 1
    assert ids_in(workdir / "out") == every_input_id(workdir)


def test_with_a_full_read_beside_it_the_incremental_read_decides(workdir: Path) -> None:
    """A run with an incremental read and a whole one runs when the incremental one has
    new files (the other reading all of its own), and is skipped when it has none."""
    day(workdir, 1)
    (workdir / "data" / "extra").mkdir()
    pq.write_table(pa.table({"id": [-1], "bad": [False]}), workdir / "data/extra/x.parquet")
    path = write_pipeline(workdir, """
        pipeline: events_daily
        steps:
          - id: events
            op: read_parquet
            path: data/events
            columns: [id, bad]
            incremental: true
          - id: extra
            op: read_parquet
            path: data/extra
          - op: union
            input: events
            steps: [extra]
          - op: write_parquet
            path: out
            mode: append
        """)
    assert run(path)["steps"]["extra"]["rows"] == 1
    assert run(path)["skipped"]
    day(workdir, 2)
    again = run(path)
    assert (again["steps"]["events"]["rows"], again["steps"]["extra"]["rows"]) == (3, 1)
    assert ids_in(workdir / "out") == sorted([-1, -1, *every_input_id(workdir)])
    assert "incremental" not in again["steps"]["extra"]


def test_a_write_into_the_folder_read_incrementally_is_refused(workdir: Path) -> None:
    day(workdir, 1)
    path = pipeline(workdir)
    path.write_text(path.read_text().replace("path: out", "path: data/events/ds=9"))
    with pytest.raises(ValidationFailed) as info:
        run(path)
    assert "is inside 'data/events', which step 'events' reads" in str(info.value.problems[0])


def test_the_files_read_before_are_not_opened_again(workdir: Path, engine: Any) -> None:
    """A scheduled run opens only the new files (their footers for the columns, as
    the plan's), whatever the history holds: a file read before, its bytes garbled in
    place (same size, same time), is never opened, where reading it would fail."""
    path = pipeline(workdir)
    old = day(workdir, 1)
    run(path, engine_instance=engine)
    stat = old.stat()
    old.write_bytes(b"\0" * stat.st_size)
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    day(workdir, 2)
    done = run(path, engine_instance=engine)
    assert done["steps"]["events"]["incremental"]["new_files"] == 1
    assert ids_in(workdir / "out") == [100, 101, 102, 200, 201, 202]
    with pytest.raises(ValidationFailed) as info:  # reading it fails, as it plans
        run(path, engine_instance=engine, full_refresh=True)
    assert f"cannot read Parquet file '{old}'" in str(info.value.problems[0])


def test_a_column_dropped_upstream_stops_the_next_run(workdir: Path) -> None:
    """The columns are those of every file read so far: a new day without one of them is
    said (where it still is), unless `missing: null`."""
    path = pipeline(workdir)
    day(workdir, 1)
    run(path)
    folder = workdir / "data" / "events" / "ds=2"
    folder.mkdir()
    pq.write_table(pa.table({"id": [200]}), folder / "part.parquet")
    with pytest.raises(ValidationFailed) as info:
        run(path)
    assert (f"'bad' is in none of the 1 file read (e.g. {folder / 'part.parquet'}); only in "
            f"files earlier runs read, such as {workdir}/data/events/ds=1/part.parquet"
            ) in str(info.value.problems[0])
    # the earlier file garbled in place (same size and time): said all the same, from
    # the columns the state keeps (looking for an example opened it: Arrow's error)
    old = workdir / "data" / "events" / "ds=1" / "part.parquet"
    stat = old.stat()
    old.write_bytes(b"\0" * stat.st_size)
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ValidationFailed) as info:
        run(path)
    assert (f"'bad' is in none of the 1 file read (e.g. {folder / 'part.parquet'}); only in "
            "files earlier runs read (") in str(info.value.problems[0])


def test_full_refresh_of_a_pipeline_without_incremental_reads_is_said(workdir: Path) -> None:
    """--full-refresh does something to incremental reads only: asked of a pipeline
    without one, a note says that it changes nothing (it was silent: as if it had
    refreshed)."""
    path = write_pipeline(workdir, """
        pipeline: whole
        steps:
          - op: read_parquet
            path: data/events
          - op: write_parquet
            path: out
            mode: overwrite
        """)
    day(workdir, 1)
    said: list[str] = []
    assert run(path, full_refresh=True, notify=said.append)["status"] == "succeeded"
    assert ("--full-refresh: no read_parquet step of pipeline 'whole' reads incrementally "
            "(incremental: true), so every read reads all its files, as always") in said
    said.clear()
    # an incremental read writing with mode: overwrite refreshes as asked: no line
    overwriting = pipeline(workdir)
    overwriting.write_text(overwriting.read_text().replace("mode: append", "mode: overwrite"))
    run(overwriting, full_refresh=True, notify=said.append)
    assert not [line for line in said if "--full-refresh" in line], said


def test_a_run_failing_after_its_write_publishes_no_output(workdir: Path, engine: Any
                                                           ) -> None:
    """A step failing after a write of the new files' rows: the write is not published
    (its output was, while the files stayed unread, so the next run appended their rows
    a second time); every output is published once every step has run, and the next
    run appends each row once."""
    path = write_pipeline(workdir, """
        pipeline: events_checked
        steps:
          - id: events
            op: read_parquet
            path: data/events
            incremental: true
          - op: write_parquet
            path: out
            mode: append
          - id: check
            input: events
            op: derive
            columns: {customer_id: id}
          - op: sluice_testops.FailingLate
            after: {201: 0.0}
          - op: write_parquet
            path: checked
            mode: append
        """)
    day(workdir, 1)
    run(path, engine_instance=engine)
    day(workdir, 2)
    with pytest.raises(StepFailure, match="boom at 201"):
        run(path, engine_instance=engine)
    assert ids_in(workdir / "out") == [100, 101, 102]
    assert not [p for p in workdir.iterdir() if STAGING_MARK in p.name]  # none left staged
    day(workdir, 2, rows=1)  # mended: rewritten in place without the failing row
    run(path, engine_instance=engine)
    assert ids_in(workdir / "out") == ids_in(workdir / "checked") == every_input_id(workdir)


def test_an_incremental_read_without_an_id_is_told_to_take_one(workdir: Path) -> None:
    """What an incremental read read is kept by its step id: one the file does not give
    ('read_parquet') changes when another read_parquet step comes before it
    ('read_parquet_2'), and every file is then read again; a note says to give one."""
    path = write_pipeline(workdir, """
        pipeline: events_daily
        steps:
          - op: read_parquet
            path: data/events
            incremental: true
          - op: write_parquet
            path: out
            mode: append
        """)
    day(workdir, 1)
    said: list[str] = []
    run(path, notify=said.append)
    assert (f"{path}:3: step 'read_parquet' reads incrementally and has no id: what it "
            "read is kept by its step id, which another read_parquet step before it would "
            "change (every file read again); give it one (`id: events`)") in said
    said.clear()
    day(workdir, 2)
    run(pipeline(workdir), notify=said.append)
    assert not [line for line in said if "has no id" in line]


def test_hive_folders_that_come_later_are_columns_of_their_rows(workdir: Path) -> None:
    """Files in the folder itself first, then `ds=` folders, then a `region=` level: the
    new folders' keys are columns of their rows, as a read of every file has them (the
    columns of the files read before were the whole schema: ds and region were dropped,
    their values lost)."""
    path = write_pipeline(workdir, """
        pipeline: events_by_day
        steps:
          - id: days
            op: read_parquet
            path: data/events
            incremental: true
          - op: write_parquet
            path: out
            mode: overwrite
        """)
    events = workdir / "data" / "events"
    events.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1]}), events / "flat.parquet")
    run(path)
    day(workdir, 2)
    run(path)
    assert pq.read_table(workdir / "out").select(["id", "ds"]).to_pylist() == [
        {"id": i, "ds": 2} for i in (200, 201, 202)]
    (events / "ds=3" / "region=north").mkdir(parents=True)
    pq.write_table(pa.table({"id": [300], "bad": [False]}),
                   events / "ds=3" / "region=north" / "part.parquet")
    run(path)
    assert pq.read_table(workdir / "out").select(["id", "ds", "region"]).to_pylist() == [
        {"id": 300, "ds": 3, "region": "north"}]


def test_validate_and_plan_read_the_state_under_the_runs_folder_they_are_given(
        workdir: Path) -> None:
    """`sluice plan --runs DIR` says what an incremental read would read as the runs kept
    in DIR say (as `sluice run --runs DIR` reads), and `sluice validate --runs DIR`
    finds its problems there; without it, $SLUICE_RUNS (here another folder) decides."""
    path = pipeline(workdir)
    kept = workdir / "kept_runs"
    day(workdir, 1)
    run(path, runs_dir=str(kept))
    cli = CliRunner()
    # no new file: the plan says the run would do nothing, as the run then says
    idle = cli.invoke(main, ["plan", str(path), "--runs", str(kept)])
    assert idle.exit_code == 0, idle.output
    assert "incremental: 0 new file(s) to read now, 1 read by earlier runs" in idle.stdout
    assert idle.stdout.splitlines()[-1] == (
        "nothing to do: no new files: every file of step 'events' was read by an earlier "
        "run: a run now runs no step (and succeeds); it reads the next new files, or every "
        "file with --full-refresh")
    idle_json = cli.invoke(main, ["plan", str(path), "--runs", str(kept), "--json"])
    assert json.loads(idle_json.stdout)["skipped"].startswith("no new files: every file")
    day(workdir, 2)
    planned = cli.invoke(main, ["plan", str(path), "--runs", str(kept)])
    assert planned.exit_code == 0, planned.output
    assert "incremental: 1 new file(s) to read now, 1 read by earlier runs" in planned.stdout
    assert "nothing to do" not in planned.stdout
    assert json.loads(cli.invoke(main, ["plan", str(path), "--runs", str(kept), "--json"]
                                 ).stdout)["skipped"] is None
    default = cli.invoke(main, ["plan", str(path)])
    assert "incremental: 2 new file(s) to read now, 0 read by earlier runs" in default.stdout
    shown = kept / "events_daily" / ".reads" / "events.json"
    shown.write_text("{not json")
    checked = cli.invoke(main, ["validate", str(path), "--runs", str(kept)])
    assert checked.exit_code == 1
    assert f"'{kept}/events_daily/.reads/events.json' is damaged" in checked.stderr
    assert cli.invoke(main, ["validate", str(path)]).exit_code == 0
    assert "--runs DIR" in cli.invoke(main, ["validate", "--help"]).stdout
