"""Incremental reads exactly once across a kill: a run SIGKILLed at any point of its
writes (``SLUICE_TEST_KILL_AT``, ``operators/crash.py``) leaves a claim that the next run
settles from the outputs, so that every input row is in the appended output once and
the registry holds the model of each run that read files once.

The oracle is the files themselves: the output's ids against every input file's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import ArtifactError
from pipelines.runner import run
from pipelines.store import ModelStore

SLUICE = str(Path(sys.executable).parent / "sluice")

# the model is saved before the write: published first, so that a kill in the write's
# commit leaves a model of a run whose output did not land (taken out by the next run)
PIPELINE = """
    pipeline: events_daily
    params: {src: data/events}
    steps:
      - id: events
        op: read_parquet
        path: ${src}
        incremental: true
      - op: standard_scale
        columns: [value]
      - id: save
        op: save_model
        name: scaler
      - id: write
        op: write_parquet
        input: events
        path: out
        mode: append
    """


def day(root: Path, ds: int, folder: str = "data/events") -> None:
    """A `ds=` folder's file of 3 ids (``ds * 100 + i``)."""
    where = root / folder / f"ds={ds}"
    where.mkdir(parents=True)
    pq.write_table(pa.table({"id": [ds * 100 + i for i in range(3)],
                             "value": [float(i) for i in range(3)]}), where / "part.parquet")


def ids_in(folder: Path) -> list[int]:
    return sorted(pq.read_table(folder, columns=["id"]).column("id").to_pylist())


def every_input_id(folder: Path) -> list[int]:
    return sorted(i for f in folder.rglob("*.parquet")
                  for i in pq.read_table(f).column("id").to_pylist())


def models_by_run(workdir: Path) -> list[str]:
    """The run id of each published version of the model, oldest first."""
    store = ModelStore(str(workdir / "models"))
    return [store.read_meta("scaler", v)["run_id"] for v in store.versions("scaler")]


def killed_at(point: str, path: Path, workdir: Path) -> None:
    """A `sluice run` of ``path`` that kills itself at crash point ``point``."""
    done = subprocess.run([SLUICE, "run", str(path)], cwd=workdir, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "CI": "1", "SLUICE_TEST_KILL_AT": point})
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("point", "outcome", "engine_name"), [
    ("before-write", "recovered", "local"),  # claimed, nothing written
    ("after-model", "recovered", "local"),  # the model published, the output not
    ("after-parts", "recovered", "local"),  # the output's parts there, no _SUCCESS
    ("after-parts", "recovered", "dask"),  # recovered, and read again, on Dask
    ("after-parts", "recovered", "spark"),  # and on Spark
    ("after-write", "settled", "local"),  # every output landed, nothing recorded
    ("after-state", "settled", "local"),  # recorded, its claim not yet removed
])
def test_a_run_killed_at_any_point_leaves_each_row_once(
        workdir: Path, shared_engines: dict[str, Any], point: str, outcome: str,
        engine_name: str) -> None:
    from conftest import started

    path = write_pipeline(workdir, PIPELINE)
    day(workdir, 1)
    run(path)  # an output to append to
    day(workdir, 2)
    killed_at(point, path, workdir)
    pending = workdir / "runs" / "events_daily" / ".reads" / "events.pending.json"
    dead = json.loads(pending.read_text())["run_id"]
    day(workdir, 3)
    said: list[str] = []
    after = run(path, engine_instance=started(shared_engines, engine_name),
                notify=said.append)
    assert ids_in(workdir / "out") == every_input_id(workdir / "data" / "events")
    assert models_by_run(workdir)[1:] == (
        [dead, after["run_id"]] if outcome == "settled" else [after["run_id"]])
    read = after["steps"]["events"]["incremental"]
    assert read["claim"]["run_id"] == dead and read["claim"]["outcome"] == outcome
    # settled: the dead run's file is read; recovered: read again with the new one
    assert read["new_files"] == (1 if outcome == "settled" else 2)
    (line,) = [line for line in said if line.startswith("step 'events': run ")]
    assert dead in line and f"({outcome})" in line
    # and `sluice runs show` of the run says it too
    shown = subprocess.run([SLUICE, "runs", "show", after["run_id"]], cwd=workdir,
                           capture_output=True, text=True, timeout=60)
    assert f"  {line}\n" in shown.stdout, shown.stdout
    if outcome == "recovered" and point == "after-model":  # its version taken out, said
        store = ModelStore(str(workdir / "models"))
        taken = max(set(range(1, max(store.versions("scaler")) + 1))
                    - set(store.versions("scaler")))
        with pytest.raises(ArtifactError, match=rf"has no version {taken}: it was deleted "
                                                rf".*\(run {dead} was killed before all"):
            store.resolve(f"scaler@{taken}")
    # the killed run's record (lost) stays while its settled model version does
    pruned = subprocess.run([SLUICE, "runs", "prune", "--keep", "0"], cwd=workdir,
                            capture_output=True, text=True, timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    kept = (workdir / "runs" / "events_daily" / f"{dead}.json").exists()
    assert kept == (outcome == "settled"), pruned.stdout
    if outcome == "settled":
        assert f"{dead} (scaler@" in pruned.stdout, pruned.stdout
    assert not pending.exists()
    assert not [p for p in workdir.iterdir() if ".sluice-tmp-" in p.name]


def test_a_moved_dataset_keeps_what_was_read_and_an_old_state_still_reads(
        workdir: Path) -> None:
    """The files read are kept relative to the read's folder: the dataset moved (and the
    pipeline pointed at its new place), nothing is read again; a state written before,
    with whole paths, is read as it was."""
    path = write_pipeline(workdir, PIPELINE)
    day(workdir, 1)
    run(path)
    shutil.move(workdir / "data" / "events", workdir / "data" / "moved")
    moved = run(path, {"src": "data/moved"})
    assert moved["skipped"] and moved["steps"]["events"]["incremental"]["read_before"] == 1
    state_file = workdir / "runs" / "events_daily" / ".reads" / "events.json"
    state = json.loads(state_file.read_text())
    assert list(state["files"]) == ["ds=1/part.parquet"]
    # as sluice wrote it before: whole paths, no "relative"
    del state["relative"]
    state["files"] = {str(workdir / "data" / "moved" / k): v
                      for k, v in state["files"].items()}
    state_file.write_text(json.dumps(state))
    day(workdir, 2, "data/moved")
    again = run(path, {"src": "data/moved"})
    assert again["steps"]["events"]["incremental"]["new_files"] == 1
    assert ids_in(workdir / "out") == every_input_id(workdir / "data" / "moved")
    assert sorted(json.loads(state_file.read_text())["files"]) == [
        "ds=1/part.parquet", "ds=2/part.parquet"]


def _plan_of(path: Path, workdir: Path) -> tuple[dict[str, Any], str]:
    """`sluice plan --json` of ``path``: the plan, and what it said on stderr."""
    shown = subprocess.run([SLUICE, "plan", "--json", str(path)], cwd=workdir,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout), shown.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("point", "outcome"), [
    ("after-parts", "recovered"),  # the output did not land: its file is read again
    ("after-write", "settled"),  # every output landed: its file counts as read
    ("after-write", "running"),  # its record says it runs: it holds the step
])
def test_plan_and_validate_say_what_the_next_run_does_with_a_claim(
        workdir: Path, point: str, outcome: str) -> None:
    """A claim a killed run left: `sluice plan` and `sluice validate` say whose it is and
    what the next run will do with it, and count the files as that run will (a settled
    claim's files as read before, not new), changing nothing."""
    from operators.processes import this_process

    path = write_pipeline(workdir, PIPELINE)
    day(workdir, 1)
    run(path)
    day(workdir, 2)
    killed_at(point, path, workdir)
    pending = workdir / "runs" / "events_daily" / ".reads" / "events.pending.json"
    dead = json.loads(pending.read_text())["run_id"]
    if outcome == "running":  # its record as a live run's: this process's
        record = workdir / "runs" / "events_daily" / f"{dead}.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), **this_process()}))
    day(workdir, 3)
    before = pending.read_bytes()
    plan, said = _plan_of(path, workdir)
    line = next(line for line in said.splitlines() if f"run {dead} " in line)
    assert line.startswith(f"note: {path}:"), said
    assert {"recovered": "reads its 1 file again (recovered), and takes out what landed "
                         "of it in model 'scaler'",
            "settled": "records its 1 file as read (settled)",
            "running": "is reading 1 file now"}[outcome] in line, line
    (events,) = [s for s in plan["steps"] if s["id"] == "events"]
    new = 1 if outcome == "settled" else 2
    assert f"incremental: {new} new file(s) to read now, {3 - new} read by earlier" in (
        " ".join(events["notes"])), events
    checked = subprocess.run([SLUICE, "validate", str(path)], cwd=workdir,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and f"note: {line[6:]}" in checked.stderr, checked.stderr
    assert pending.read_bytes() == before  # nothing settled by looking
    if outcome == "running":
        return
    after = run(path)
    assert after["steps"]["events"]["incremental"]["new_files"] == new
    assert after["steps"]["events"]["incremental"]["claim"]["outcome"] == outcome


@pytest.mark.slow
def test_a_kill_between_two_writes_of_one_output_is_recovered(workdir: Path) -> None:
    """One output written twice by a run: killed after the first write landed and before
    the second did, the run is recovered (its rows taken out of the output, its model
    version removed, its files read again), not settled as landed because the first
    write's files are there."""
    path = write_pipeline(workdir, """
        pipeline: events_daily
        steps:
          - id: events
            op: read_parquet
            path: data/events
            incremental: true
          - id: first
            op: write_parquet
            input: events
            path: out
            mode: append
          - op: standard_scale
            input: events
            columns: [value]
          - id: save
            op: save_model
            name: scaler
          - id: second
            op: write_parquet
            input: events
            path: out
            mode: append
        """)
    day(workdir, 1)
    run(path)
    day(workdir, 2)
    killed_at("after-model", path, workdir)  # the first write and the model landed
    pending = workdir / "runs" / "events_daily" / ".reads" / "events.pending.json"
    dead = json.loads(pending.read_text())["run_id"]
    assert [o.get("write") for o in json.loads(pending.read_text())["outputs"]] == [
        None, None, 2]
    assert len(ids_in(workdir / "out")) == 9  # day 1 twice, day 2 once: half a run
    day(workdir, 3)
    after = run(path)
    read = after["steps"]["events"]["incremental"]
    assert read["claim"]["run_id"] == dead and read["claim"]["outcome"] == "recovered"
    assert ids_in(workdir / "out") == sorted(2 * every_input_id(workdir / "data" / "events"))
    assert models_by_run(workdir)[1:] == [after["run_id"]]


@pytest.mark.slow
def test_the_history_says_how_a_later_run_settled_a_killed_one(workdir: Path) -> None:
    """`runs show / list / compare` of a killed run say what became of it: recovered (its
    file read again, its model version taken out, none of its rows said read or
    written) or settled (its rows landed, counted from the output's _SUCCESS)."""
    from conftest import sluice_in_process

    path = write_pipeline(workdir, PIPELINE)
    day(workdir, 1)
    run(path)
    ids = []
    for ds, point in ((2, "after-parts"), (4, "after-write")):
        day(workdir, ds)
        killed_at(point, path, workdir)
        (pending,) = (workdir / "runs" / "events_daily" / ".reads").glob("*.pending.json")
        day(workdir, ds + 1)
        ids += [json.loads(pending.read_text())["run_id"], run(path)["run_id"]]
    recovered, recovering, settled, settling = ids

    def said(*args: str) -> str:
        done = sluice_in_process(*args, cwd=workdir)
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = said("runs", "show", recovered)
    assert (f"  recovered by run {recovering}: its files read again, what landed taken "
            "out\n") in shown, shown
    assert "step 'events' claimed 1 new file (" in shown and " read 1 new" not in shown
    assert f"; read again by run {recovering}, nothing of it kept\n" in shown, shown
    assert f"  taken out by run {recovering}: scaler@2\n" in shown, shown
    shown = said("runs", "show", settled)
    assert f"  settled by run {settling}: its outputs landed\n" in shown, shown
    assert "step 'events' read 1 new file (" in shown, shown
    assert (f"  landed: 3 rows in out (step 'write', as run {settling} found them)\n"
            in shown), shown
    assert "  saved model scaler@" in shown, shown

    listed = {e["run_id"]: e for e in map(json.loads, said("runs", "list", "--json")
                                          .splitlines())}
    assert (listed[settled]["status"], listed[settled]["rows_written"],
            listed[settled]["settled_by"]["by"]) == ("lost", 3, settling)
    assert (listed[recovered]["rows_written"], listed[recovered]["settled_by"]["outcome"]
            ) == (None, "recovered")
    table = said("runs", "list").splitlines()
    (line,) = [line for line in table if line.startswith(settled)]
    assert f"lost; settled by run {settling}: its outputs landed" in line, table

    compared = said("runs", "compare", settled, settling).splitlines()
    (status,) = [line for line in compared if line.startswith("*  status ")]
    assert f" lost; settled by run {settling}: its outputs landed " in status, compared
    (output,) = [line.split() for line in compared if line.startswith("   write ")]
    assert output == ["write", "3", "rows", "to", "out", "3", "rows", "to", "out"], \
        compared  # the same in both: unmarked
