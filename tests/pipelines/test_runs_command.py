"""`sluice runs`: the run history read back from real runs' records (list, show, compare,
metric), through the CLI and as functions."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import SLUICE, sluice_in_process, write_pipeline

from operators.base import SluiceError
from pipelines import runs
from pipelines.cli import main
from pipelines.runner import run

CENTER = """
    pipeline: center
    params: {l2: 0.001}
    steps:
      - op: read_parquet
        path: data/churn
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
        l2: ${l2}
        validation_fraction: 0.2
      - op: save_model
        name: centre
      - op: write_parquet
        path: out/l2=${l2}        # mode error: a second run of one l2 fails here
    """

COPY = """
    pipeline: copy
    steps:
      - op: read_parquet
        path: data/churn
        filter: "tenure >= 12"
      - op: write_parquet
        path: out/copy
        mode: overwrite
    """


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sluice ARGS` as a user runs it, in its own process."""
    env = {**os.environ, "CI": "1"}
    return subprocess.run([SLUICE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def in_process(*args: str) -> Result:
    """The same command in this process (a second faster than a new one): for the checks
    beyond the first of each command."""
    return CliRunner().invoke(main, list(args))


def _run(path: Path, **params: str) -> dict[str, Any]:
    """Run a pipeline; its record, read back from the runs folder when the run failed."""
    folder = Path(os.environ["SLUICE_RUNS"])
    before = set(folder.rglob("*.json"))
    try:
        return run(path.name, params)  # as a person in the folder runs it
    except SluiceError:
        (written,) = set(folder.rglob("*.json")) - before
        return {**json.loads(written.read_text()), "record_path": str(written)}


@pytest.fixture
def history(churn: Path, workdir: Path) -> list[dict[str, Any]]:
    """Four real runs, oldest first: center l2=0.001 (succeeds, centre@1), copy
    (succeeds, no model), center l2=0.1 (succeeds, centre@2), center l2=0.001 again
    (fails before any step runs: its output exists; no model fitted, none saved)."""
    center = write_pipeline(workdir, CENTER, "center.yaml")
    copy = write_pipeline(workdir, COPY, "copy.yaml")
    records = [_run(center), _run(copy), _run(center, l2="0.1"), _run(center)]
    assert [r["status"] for r in records] == ["succeeded"] * 3 + ["failed"]
    return records


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["run_id"] for r in records]


def test_list_is_newest_first_and_filters(history: list[dict[str, Any]],
                                          workdir: Path) -> None:
    first, copy, second, failed = history
    listed = sluice("runs", "list", cwd=workdir)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["RUN", "PIPELINE", "STATUS", "STARTED", "DURATION", "ENGINE",
                              "ROWS", "WRITTEN", "MODELS", "ERROR"]
    assert [line.split()[0] for line in lines] == _ids([failed, second, copy, first])
    assert lines[0].split()[1:3] == ["center", "failed"]
    assert "centre@3" not in lines[0]  # a failed run publishes no model
    assert "output 'out/l2=0.001' already exists" in lines[0]
    assert lines[2].split()[1:3] == ["copy", "succeeded"]
    copied = copy["outputs"][0]["rows"]
    assert f"{copied:,}" in lines[2].split() and lines[2].split()[-1] == "-"  # no model
    assert lines[3].split()[-2:] == ["5,000", "centre@1"]
    assert lines[3].split()[5] == runs.format_duration(first["seconds"])

    # a status in any case (Failed), as a person may type it
    only_failed = in_process("runs", "list", "center", "--status", "Failed", "--json")
    assert only_failed.exit_code == 0, only_failed.output
    (summary,) = [json.loads(line) for line in only_failed.stdout.splitlines()]
    assert summary == {
        "run_id": failed["run_id"], "pipeline": "center", "status": "failed",
        "started_at": failed["started_at"], "seconds": failed["seconds"], "engine": "local",
        "rows_written": None, "settled_by": None, "models": [],
        "error": failed["error"].splitlines()[0], "warnings": 0, "skipped": None,
        "params": {"l2": 0.001},
        "record_path": failed["record_path"]}

    newest = in_process("runs", "list", "center", "--last", "2", "--json")
    assert [json.loads(line)["run_id"] for line in newest.stdout.splitlines()] == _ids(
        [failed, second])
    none = in_process("runs", "list", "--since", "2999-01-01")
    assert none.exit_code == 0
    assert none.stdout.strip() == (f"no runs started since 2999-01-01 00:00Z among the 4 "
                                   f"runs in {workdir / 'runs'}")
    bad = in_process("runs", "list", "--since", "yesterday")
    assert bad.exit_code == 2 and "'yesterday' is not a date or time" in bad.stderr


def test_load_select_and_summary(history: list[dict[str, Any]], workdir: Path) -> None:
    first, copy, second, failed = history
    loaded = runs.load()
    assert loaded.root == str(workdir / "runs") and loaded.skipped == []
    assert loaded.pipelines == ["center", "copy"]
    assert _ids(loaded.records) == _ids([failed, second, copy, first])
    assert _ids(runs.load(pipeline="center").records) == _ids([failed, second, first])
    assert _ids(runs.select(loaded.records, status="succeeded", last=2)) == _ids(
        [second, copy])
    assert runs.select(loaded.records, since=runs.parse_since("2999-01-01")) == []
    assert _ids(runs.select(loaded.records, since=runs.parse_since(first["started_at"]))
                ) == _ids([failed, second, copy, first])
    summary = runs.summary(loaded.records[1])
    assert (summary["rows_written"], summary["models"], summary["error"]) == (
        5000, ["centre@2"], None)
    assert summary["params"] == {"l2": 0.1}
    assert runs.summary(loaded.records[2])["rows_written"] == copy["outputs"][0]["rows"]


def test_show_takes_a_unique_prefix(history: list[dict[str, Any]], workdir: Path) -> None:
    failed = history[-1]
    shown = sluice("runs", "show", failed["run_id"][:-2], cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == (f"run {failed['run_id']} of 'center' on local: failed in "
                        f"{failed['seconds']:.2f}s")
    assert "saved model" not in shown.stdout
    assert "  params: l2=0.001" in lines
    assert f"  error: {failed['error']}" in lines
    assert lines[-1] == f"  record: {failed['record_path']}"

    as_json = in_process("runs", "show", failed["run_id"], "--json")
    assert json.loads(as_json.stdout) == json.loads(Path(failed["record_path"]).read_text())

    ambiguous = in_process("runs", "show", "20")
    assert ambiguous.exit_code == 1
    (line,) = ambiguous.stderr.splitlines()
    assert line.startswith("error: run id '20' is ambiguous: 4 runs start with it: ")
    assert all(f"{r['run_id']} ({r['pipeline']})" in line for r in history)

    unknown = in_process("runs", "show", "19991231")
    assert unknown.exit_code == 1
    assert unknown.stderr.splitlines() == [
        f"error: no run '19991231' among the 4 runs in {workdir / 'runs'} (`sluice runs "
        "list` shows them; --runs DIR looks in another folder)"]

    # a pipeline's name where a run id goes (`runs show center`): told how to find its runs
    for command in (["show", "center"], ["compare", "center", history[0]["run_id"]]):
        named = in_process("runs", *command)
        assert named.exit_code == 1
        assert named.stderr.splitlines() == [
            "error: no run 'center': that is a pipeline's name, and a run is named by its run "
            "id (`sluice runs list center --last 1` shows its newest run)"]

    loaded = runs.load()
    assert runs.resolve(loaded, history[0]["run_id"])["run_id"] == history[0]["run_id"]
    with pytest.raises(SluiceError, match="ambiguous: 4 runs"):
        runs.resolve(loaded, "2")


def test_compare_marks_the_changed_param_and_metric(history: list[dict[str, Any]],
                                                    workdir: Path) -> None:
    first, copy, second, failed = history
    loss = [r["metrics"]["model"]["loss"] for r in (first, second)]
    assert loss[0] != loss[1]
    out = sluice("runs", "compare", first["run_id"], second["run_id"], cwd=workdir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2 runs of center; * marks what changed"
    assert ["*", "l2", "0.001", "0.1"] in [line.split() for line in lines]
    difference, ratio = loss[1] - loss[0], loss[1] / loss[0]
    assert ["*", "model.loss", f"{loss[0]:.6g}", f"{loss[1]:.6g}", f"{difference:+.6g}",
            f"({ratio:.4g}x)"] in [line.split() for line in lines]
    assert ["model.training_rows", str(first["metrics"]["model"]["training_rows"]),
            str(second["metrics"]["model"]["training_rows"])] in [
        line.split() for line in lines]  # unchanged: no mark, no change
    assert ["*", "save_model", "centre@1", "centre@2"] in [line.split() for line in lines]

    # the pipeline's param, and the step parameters it set: model.l2 (and the output
    # path named by it) changed, the others not
    assert ["*", "model.l2", "0.001", "0.1"] in [line.split() for line in lines]
    table = runs.compare([first, second, failed])
    changed = {p["name"]: p["values"] for p in table["params"] if p["changed"]}
    assert changed == {"l2": [0.001, 0.1, 0.001], "model.l2": [0.001, 0.1, 0.001],
                       "write_parquet.path": ["out/l2=0.001", "out/l2=0.1", "out/l2=0.001"]}
    same = {p["name"]: p["values"][0] for p in table["params"] if not p["changed"]}
    assert same == {"read_parquet.path": "data/churn", "model.label": "churned",
                    "model.features": ["tenure", "monthly_charges"],
                    "model.validation_fraction": 0.2, "save_model.name": "centre"}
    by_name = {row["name"]: row for row in table["metrics"]}
    assert "model" not in failed["metrics"]  # refused before the fit: no value (None)
    assert by_name["model.validation.roc_auc"]["values"] == [
        *(r["metrics"]["model"]["validation"]["roc_auc"] for r in (first, second)), None]
    write = next(row for row in table["steps"] if row["name"] == "write_parquet")
    assert write["rows"] == [5000, 5000, None] and write["changed"]
    assert table["outputs"][0]["values"] == ["5,000 rows to out/l2=0.001",
                                             "5,000 rows to out/l2=0.1", None]

    mixed = runs.compare([first, copy])
    assert mixed["shared_only"] and mixed["pipelines"] == ["center", "copy"]
    assert [row["name"] for row in mixed["steps"]] == ["read_parquet", "write_parquet"]
    assert mixed["metrics"] == [] and mixed["models"] == []
    assert [(p["name"], p["changed"]) for p in mixed["params"]] == [  # the steps both have
        ("read_parquet.path", False), ("write_parquet.path", True)]
    told = in_process("runs", "compare", first["run_id"], copy["run_id"])
    assert told.stdout.startswith("2 runs of different pipelines (center, copy): only the "
                                  "params, metrics, steps, outputs and models they all have")
    assert "PARAMS (1 the same)" in told.stdout  # a table of the one that changed

    # params that all are the same are said so, not as a list of none
    alike = in_process("runs", "compare", first["run_id"], failed["run_id"])
    same = sum(not p["changed"] for p in runs.compare([first, failed])["params"])
    assert same > 1 and f"\nPARAMS: all {same} are the same\n" in alike.stdout, alike.stdout
    assert "none" not in alike.stdout.split("PARAMS")[1].splitlines()[0]


def test_metric_across_runs_is_the_records_values(history: list[dict[str, Any]],
                                                  workdir: Path) -> None:
    center = [history[0], history[2]]  # the failed run fitted nothing: no value
    values = [r["metrics"]["model"]["validation"]["roc_auc"] for r in center]
    points = runs.metric_history(runs.load(pipeline="center").records,
                                 "model.validation.roc_auc")
    assert [(p["run_id"], p["value"]) for p in points] == list(zip(_ids(center), values))

    out = sluice("runs", "metric", "center", "model.validation.roc_auc", "--last", "3",
                 cwd=workdir)
    assert out.returncode == 0, out.stderr
    _, *rows, last = out.stdout.splitlines()
    assert [(row.split()[0], row.split()[-1]) for row in rows] == [
        (center[0]["run_id"], f"{values[0]:.6g}"), (center[1]["run_id"], f"{values[1]:.6g}")]
    assert last.startswith("2 runs (1 more without it)  ")  # the failed run: no fit
    assert last.endswith(f"last - first {values[1] - values[0]:+.6g}"
                         + ("" if values[1] == values[0] or not values[0]
                            else f" ({values[1] / values[0]:.4g}x)"))

    typo = in_process("runs", "metric", "center", "model.validation.roc")
    assert typo.exit_code == 1
    assert typo.stderr.startswith("error: no metric 'model.validation.roc' in the 3 runs of "
                                  "center; did you mean 'model.validation.roc_auc'?")
    with pytest.raises(SluiceError, match="'model.validation' is a group of metrics"):
        runs.metric_history(runs.load().records, "model.validation")


def test_a_pipeline_no_run_ever_had_is_an_error_not_an_empty_answer(
        history: list[dict[str, Any]], workdir: Path) -> None:
    """A misspelt pipeline (`runs metric centr ...` in a scheduled check of a metric)
    exits 1 with the pipelines there are, where it printed the same line and exited 0;
    a selection that leaves none of a real pipeline's runs is still an empty answer."""
    expected = (f"error: no runs of 'centr' in {workdir / 'runs'} (runs of center, copy; "
                "did you mean 'center'?)")
    for args in (["metric", "centr", "model.validation.roc_auc"], ["list", "centr"],
                 ["prune", "centr", "--keep", "1"]):
        typo = in_process("runs", *args)
        assert typo.exit_code == 1, (args, typo.output)
        assert typo.stderr.splitlines() == [expected], args
        assert typo.stdout == ""
    assert len(runs.load().records) == len(history)  # the prune deleted nothing
    none = in_process("runs", "list", "copy", "--status", "failed")
    assert none.exit_code == 0, none.output
    assert none.stdout.startswith("no runs that failed among the 1 runs of 'copy'")


def test_a_damaged_record_is_skipped_with_a_warning(history: list[dict[str, Any]],
                                                    workdir: Path) -> None:
    folder = workdir / "runs" / "center"
    cut = folder / "20261201T000000Z-aaaaaa.json"
    cut.write_text(Path(history[0]["record_path"]).read_text()[:200])  # a half-written file
    partial = folder / "20261201T000001Z-bbbbbb.json"
    partial.write_text(json.dumps({"run_id": "20261201T000001Z-bbbbbb", "pipeline": "center"}))
    listed = sluice("runs", "list", cwd=workdir)
    assert listed.returncode == 0
    warned = listed.stderr.splitlines()
    assert len(warned) == 2 and warned[0].startswith(f"warning: skipped {cut}: not JSON (")
    assert warned[1] == f"warning: skipped {partial}: not a whole run record (no 'status')"
    assert len(listed.stdout.splitlines()) == 1 + len(history)

    loaded = runs.load()
    assert len(loaded.records) == len(history) and len(loaded.skipped) == 2
    # show reads only the records its prefix can name
    good = in_process("runs", "show", history[0]["run_id"])
    assert good.exit_code == 0 and good.stderr == ""
    bad = in_process("runs", "show", "20261201T000001")
    assert bad.exit_code == 1 and bad.stderr.splitlines() == [
        f"warning: skipped {partial}: not a whole run record (no 'status')",
        "error: run '20261201T000001' has no whole record: 20261201T000001Z-bbbbbb skipped "
        "as damaged (the warning above says what is wrong with the file)"]


def test_no_records_says_where_it_looked(workdir: Path) -> None:
    missing = in_process("runs", "list")
    assert missing.exit_code == 0
    assert missing.stdout.strip() == (
        f"no run records: {workdir / 'runs'} does not exist (each run writes its record "
        "there; --runs DIR or $SLUICE_RUNS name another folder)")
    (workdir / "empty").mkdir()
    empty = in_process("runs", "show", "2026", "--runs", "empty")
    assert empty.exit_code == 1
    assert empty.stderr.splitlines() == ["error: no run '2026': no run records in empty"]
    assert runs.nothing_found(runs.load("empty"), "center") == "no run records in empty"


def test_duration_and_sparkline() -> None:
    assert [runs.format_duration(s) for s in (0.126, 12.44, 185, 7630)] == [
        "0.13s", "12.4s", "3m05s", "2h07m"]
    assert runs.sparkline([0.7, None, 0.8, 0.75]) == "▁ █▅"
    assert runs.sparkline([2, 2]) == "▄▄" and runs.sparkline(["newton"]) == ""
    # a metric of NaN (roc_auc of rows of one class) is a gap, not a crash
    nan = float("nan")
    assert runs.sparkline([0.7, nan, 0.8]) == "▁ █" and runs.sparkline([nan]) == ""
    assert runs.change([nan, 0.8]) == (None, None)


def test_a_run_refused_before_it_started_is_a_failed_run_in_the_history(
        churn: Path, workdir: Path) -> None:
    """A scheduled run whose day's input is not there yet stops at validation, exit 1,
    and the history says so: a failed run, its problem, its steps as the file declares
    them, none run."""
    daily = write_pipeline(workdir, """
        pipeline: daily
        params: {ds: "2026-11-30"}
        steps:
          - op: read_parquet
            path: data/churn/ds=${ds}
          - op: write_parquet
            path: out/daily/ds=${ds}
        """, "daily.yaml")
    done = sluice("run", str(daily), cwd=workdir)
    assert done.returncode == 1 and "no such file or directory" in done.stderr
    listed = sluice("runs", "list", "--status", "failed", "--json", cwd=workdir)
    (line,) = listed.stdout.strip().splitlines()
    summary = json.loads(line)
    assert summary["pipeline"] == "daily" and summary["status"] == "failed"
    assert "data/churn/ds=2026-11-30" in summary["error"]
    assert "no such file or directory" in summary["error"]
    (path,) = (workdir / "runs" / "daily").glob("*.json")
    record = json.loads(path.read_text())
    assert record["failed_in"] == "validation" and record["params"] == {"ds": "2026-11-30"}
    assert record["steps"] == {
        "read_parquet": {"op": "read_parquet", "kind": "source",
                         "params": {"path": "data/churn/ds=2026-11-30"}, "problems": 1},
        "write_parquet": {"op": "write_parquet", "kind": "sink",
                          "params": {"path": "out/daily/ds=2026-11-30"}}}
    assert len(record["problems"]) == 1 and "steps_unknown" not in record
    assert not (workdir / "out").exists()
    shown = sluice("runs", "show", record["run_id"], cwd=workdir).stdout
    assert shown.splitlines()[1:4] == [
        "  STEP                     OP                     PROBLEMS",
        "  read_parquet             read_parquet           1",
        "  write_parquet            write_parquet"], shown
    assert "failed in: validation (before any step ran)" in shown
    assert "error: " in shown and "data/churn/ds=2026-11-30" in shown


def test_a_refused_run_names_the_steps_its_file_declares_or_why_none_are_known(
        churn: Path, workdir: Path) -> None:
    """A file that planned with problems: its record names every step it declares, one
    whose op is unknown by the op as written, with its problems; a file that did not
    parse: no step known, and the record and `runs show` say why."""
    typo = write_pipeline(workdir, COPY.replace("op: write_parquet", "op: write_parquett"),
                          "typo.yaml")
    assert sluice_in_process("run", str(typo), cwd=workdir).returncode == 1
    (path,) = (workdir / "runs" / "copy").glob("*.json")
    record = json.loads(path.read_text())
    assert {k: (e["op"], e.get("problems")) for k, e in record["steps"].items()} == {
        "read_parquet": ("read_parquet", None), "write_parquett": ("write_parquett", 1)}
    shown = sluice_in_process("runs", "show", record["run_id"], cwd=workdir).stdout
    assert "  write_parquett           write_parquett         1\n" in shown, shown
    broken = write_pipeline(workdir, COPY.replace("path: out", "path: [out"), "broken.yaml")
    done = sluice_in_process("run", str(broken), cwd=workdir)
    assert done.returncode == 1 and "not valid YAML" in done.stderr
    # its name unknown, the record is under the file's
    (path,) = (workdir / "runs" / "broken").glob("*.json")
    record = json.loads(path.read_text())
    assert record["steps"] == {} and record["failed_in"] == "validation"
    assert record["steps_unknown"] == f"the file did not parse as a pipeline: {record['error']}"
    assert record["error"].startswith(f"{broken}:") and "not valid YAML" in record["error"]
    shown = sluice_in_process("runs", "show", record["run_id"], cwd=workdir).stdout
    assert shown.splitlines()[1] == f"  steps: none known, {record['steps_unknown']}", shown


def test_no_record_for_a_file_that_is_not_there_and_the_records_folder_named(
        churn: Path, workdir: Path) -> None:
    """A mistyped pipeline path is no run to record; a runs folder that cannot be
    written is named (and does not hide a refused run's own problem)."""
    done = sluice("run", "nope.yaml", cwd=workdir)
    assert done.returncode == 1 and "cannot read the file" in done.stderr
    assert not (workdir / "runs").exists()
    bad = write_pipeline(workdir, COPY.replace("data/churn", "data/nothing"), "bad.yaml")
    env_runs = {"SLUICE_RUNS": "/dev/null/runs"}
    done = subprocess.run([SLUICE, "run", str(bad)], cwd=workdir, capture_output=True,
                          text=True, env={**os.environ, "CI": "1", **env_runs})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no such file or directory: 'data/nothing'" in done.stderr
    good = write_pipeline(workdir, COPY, "good.yaml")
    done = subprocess.run([SLUICE, "run", str(good)], cwd=workdir, capture_output=True,
                          text=True, env={**os.environ, "CI": "1", **env_runs})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert ("cannot write the run record to '/dev/null/runs/copy': Not a directory "
            "(--runs DIR (or $SLUICE_RUNS) names a folder (or URL) this user can write)"
            ) in done.stderr


def test_prune_deletes_old_records_but_a_saved_models_provenance(
        history: list[dict[str, Any]], workdir: Path) -> None:
    """`runs prune`: past each pipeline's newest --keep and before --before; a run that
    saved a model version still in the registry stays until that version goes."""
    first, copy, second, failed = history
    paths = {r["run_id"]: Path(r["record_path"]) for r in history}
    dry = sluice("runs", "prune", "--keep", "1", "--dry-run", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete 0 run record(s)",
        f"kept 2 run(s) that saved a model version still in the registry: "
        f"{second['run_id']} (centre@2), {first['run_id']} (centre@1) (`sluice models "
        "prune` first)"]
    assert all(p.exists() for p in paths.values())

    assert in_process("models", "delete", "centre@1").exit_code == 0
    pruned = in_process("runs", "prune", "center", "--keep", "1")
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.splitlines()[0] == (f"deleted 1 run record(s): {first['run_id']} "
                                             "(center)")
    assert not paths[first["run_id"]].exists()
    assert [r["run_id"] for r in runs.load().records] == _ids([failed, second, copy])

    # --before alone: every pipeline's runs started before it (copy saved no model)
    later = in_process("runs", "prune", "--before", "2999-01-01", "--status", "succeeded")
    assert later.exit_code == 0, later.output
    assert later.stdout.splitlines()[0] == (f"deleted 1 run record(s): {copy['run_id']} "
                                            "(copy)")
    assert [r["run_id"] for r in runs.load().records] == _ids([failed, second])
    none = in_process("runs", "prune", "--before", "2000-01-01")
    assert none.stdout.strip() == "deleted 0 run record(s)"

    usage = in_process("runs", "prune")
    assert usage.exit_code == 2 and "say which runs to delete: --keep N" in usage.stderr


def test_records_under_a_file_url_are_said_and_pruned_at_their_paths(
        workdir: Path) -> None:
    """--runs file:///...: a record's path is the file's (it was 'file:/...', a path
    under a folder named 'file:'), and prune deletes it (it said so, deleting nothing)."""
    folder = workdir / "kept_runs"
    url = f"file://{folder}"
    (workdir / "data" / "rows").mkdir(parents=True)
    pq.write_table(pa.table({"tenure": [12, 24]}), workdir / "data" / "rows" / "p.parquet")
    write_pipeline(workdir, COPY.replace("data/churn", "data/rows"), "copy.yaml")
    record = run("copy.yaml", runs_dir=url)
    written = folder / "copy" / f"{record['run_id']}.json"
    assert record["record_path"] == str(written) and written.exists()
    assert [r["record_path"] for r in runs.load(url).records] == [str(written)]
    pruned = in_process("runs", "prune", "--keep", "0", "--runs", url)
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout.startswith(f"deleted 1 run record(s): {record['run_id']} (copy)")
    assert not written.exists()


def test_prune_where_the_store_refuses_a_delete_says_so(
        history: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A runs folder (a bucket) that keeps its files: prune names the record it could not
    delete and what to check, where it ended in a traceback."""
    def refuse(path: Any) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(runs._LocalFiles, "rm", staticmethod(refuse))
    copy = next(r for r in history if r["pipeline"] == "copy")
    pruned = in_process("runs", "prune", "copy", "--keep", "0")
    assert pruned.exit_code == 1
    assert f"access denied to '{copy['record_path']}'" in pruned.output
    assert "permissions on the path" in pruned.output
    assert Path(copy["record_path"]).exists()


def test_a_records_nan_and_infinity_are_strict_json_and_read_as_before(workdir: Path
                                                                        ) -> None:
    """A metric of NaN (roc_auc of rows of one class) is written as the text "nan", not
    JavaScript's bare NaN that strict readers refuse; `runs show` and `compare` print it
    as before, and a record written with bare NaN and Infinity (before) reads the same."""
    (workdir / "scored").mkdir()
    pq.write_table(pa.table({"churned": [0, 0, 0, 0], "prediction": [0, 0, 1, 0],
                             "probability": [0.1, 0.2, 0.7, 0.4]}),
                   workdir / "scored" / "part.parquet")
    path = write_pipeline(workdir, """
        pipeline: one_class
        steps:
          - op: read_parquet
            path: scored
          - id: quality
            op: evaluate
            label: churned
            metrics: [accuracy, roc_auc]
        """)
    record = run(path.name)
    assert record["metrics"]["quality"]["roc_auc"] != record["metrics"]["quality"]["roc_auc"]
    text = Path(record["record_path"]).read_text()

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    written = json.loads(text, parse_constant=refuse)  # as jq, JSON.parse and MLflow read
    assert written["metrics"]["quality"]["roc_auc"] == "nan"
    older = {**written, "run_id": "20261101T000000Z-000001",
             "started_at": "2026-11-01T00:00:00Z"}
    older["metrics"] = {"quality": {"accuracy": 0.75, "roc_auc": "NAN_HERE",
                                    "ratio": "INF_HERE"}}
    old_text = (json.dumps(older).replace('"NAN_HERE"', "NaN")
                .replace('"INF_HERE"', "-Infinity"))
    (Path(record["record_path"]).parent / f"{older['run_id']}.json").write_text(old_text)

    loaded = {r["run_id"]: r for r in runs.load().records}
    assert loaded[older["run_id"]]["metrics"]["quality"] == {
        "accuracy": 0.75, "roc_auc": "nan", "ratio": "-inf"}
    shown = in_process("runs", "show", record["run_id"])
    assert shown.exit_code == 0, shown.output
    assert "roc_auc" in shown.output and "nan" in shown.output
    as_json = in_process("runs", "show", older["run_id"], "--json")
    assert json.loads(as_json.output, parse_constant=refuse)["metrics"]["quality"][
        "ratio"] == "-inf"
    table = runs.compare([loaded[older["run_id"]], loaded[record["run_id"]]])
    auc = next(row for row in table["metrics"] if row["name"] == "quality.roc_auc")
    assert auc["values"] == ["nan", "nan"] and not auc["changed"]
    assert (auc["difference"], auc["ratio"]) == (None, None)
    compared = in_process("runs", "compare", older["run_id"], record["run_id"])
    assert compared.exit_code == 0, compared.output
    assert ["quality.roc_auc", "nan", "nan"] in [line.split() for line in
                                                 compared.output.splitlines()]


def test_show_and_compare_say_each_steps_work_its_share_and_wall(
        history: list[dict[str, Any]], workdir: Path) -> None:
    """A step's line: its partitions' task time, a fit's driver time, its share of the
    run's work and its wall time, which holds the lazy read the fit pulled (the read's
    work is the read's); compare puts them side by side with the work's ratio."""
    first, _, second, _ = history
    shown = in_process("runs", "show", first["run_id"])
    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert shown.stdout.splitlines()[0].endswith(
        f"succeeded in {first['seconds']:.2f}s (work {first['work_seconds']:.3f}s: the "
        "steps' tasks and fits' driver time)")
    assert lines[1] == ["STEP", "OP", "ROWS", "TASKS", "DRIVER", "WORK", "WALL"]
    steps = first["steps"]
    read, model = steps["read_parquet"], steps["model"]
    assert model["wall_includes"] == ["read_parquet"] and read["compute_seconds"] > 0
    assert ["model", "logistic_regression", f"{model['rows']:,}", "rows",
            f"{model['compute_seconds']:.3f}s", f"{model['driver_seconds']:.3f}s",
            f"{model['work_share']:.1%}", f"{model['wall_seconds']:.3f}s", "(wall", "with",
            "read_parquet)"] in lines
    assert ["read_parquet", "read_parquet", f"{read['rows']:,}", "rows",
            f"{read['compute_seconds']:.3f}s", f"{read['work_share']:.1%}",
            f"{read['wall_seconds']:.3f}s"] in lines  # no driver time: no fit
    assert sum(e["work_share"] for e in steps.values()) == pytest.approx(1, abs=1e-3)

    compared = in_process("runs", "compare", first["run_id"], second["run_id"])
    assert compared.exit_code == 0, compared.output
    rows = [line.split() for line in compared.stdout.splitlines()]
    assert ["STEP", "ROWS,", "WORK,", "WALL", first["run_id"], second["run_id"],
            "CHANGE"] in rows
    assert ["work", *(runs.format_duration(r["work_seconds"]) for r in (first, second)),
            f"{second['work_seconds'] / first['work_seconds']:.3g}x"] in rows
    work = [runs.step_work(r["steps"]["model"]) for r in (first, second)]
    assert ["model", "(logistic_regression)", *(
        cell for r, w in zip((first, second), work) for cell in (
            f"{r['steps']['model']['rows']:,}", f"{w:.3f}s",
            f"{r['steps']['model']['work_share']:.1%}",
            f"{r['steps']['model']['wall_seconds']:.3f}s")),
            f"{work[1] / work[0]:.3g}x"] in rows
