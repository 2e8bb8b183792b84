"""expect on every engine: a failing rule stops the run, located at the step and the
partition's file, before anything is written; on_failure: drop goes on without the row."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import SluiceError
from pipelines.datagen import churn_table
from pipelines.engines.base import Engine
from pipelines.runner import run

CHECKED = """
    pipeline: checked
    steps:
      - op: read_parquet
        path: data
      - op: expect
        rules:
          positive_charges: "monthly_charges > 0"
        not_null: [customer_id]
        on_failure: {on_failure}
      - op: write_parquet
        path: out
"""


@pytest.fixture
def data(workdir: Path) -> Path:
    """Two files; the second has one row with a negative charge (customer 2500)."""
    table = churn_table(3000)
    folder = workdir / "data"
    folder.mkdir()
    pq.write_table(table.slice(0, 1500), folder / "a.parquet")
    charges = table["monthly_charges"].to_pylist()
    charges[2500] = -1.0
    bad = table.set_column(table.schema.get_field_index("monthly_charges"),
                           "monthly_charges", [charges])
    pq.write_table(bad.slice(1500), folder / "b.parquet")
    return folder


def test_a_failing_rule_stops_the_run_before_anything_is_written(
        data: Path, workdir: Path, engine: Engine) -> None:
    path = write_pipeline(workdir, CHECKED.format(on_failure="fail"))
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=engine)
    text = str(info.value)
    assert text.startswith(f"{path}:5: step 'expect', partition "), text
    assert "b.parquet" in text
    assert ("1 of 1,500 rows fail 'positive_charges' (monthly_charges > 0), e.g. the row "
            "monthly_charges=-1.0, customer_id=2500, tenure=") in text
    assert "signup_date=20" in text
    assert not (workdir / "out").exists()


def test_drop_goes_on_with_the_rows_that_pass(data: Path, workdir: Path,
                                              engine: Engine) -> None:
    record = run(write_pipeline(workdir, CHECKED.format(on_failure="drop")),
                 engine_instance=engine)
    assert record["steps"]["read_parquet"]["rows"] == 3000
    assert record["steps"]["expect"]["rows"] == 2999
    out = pq.read_table(workdir / "out")
    assert out.num_rows == 2999
    assert pc.min(out["monthly_charges"]).as_py() > 0


def test_warn_goes_on_with_every_row_and_counts_each_rule(data: Path, workdir: Path,
                                                          engine: Engine) -> None:
    """on_failure: warn: every row goes on, the rules' failed and checked rows are the
    step's metrics and the run ends with one warning; the transform's partition metrics
    (rows in and out, partitions, task time) are in its record, and the work of the lazy
    steps a later step computed is theirs, not that step's."""
    path = write_pipeline(workdir, CHECKED.format(on_failure="warn").replace(
        "      - op: write_parquet", "      - id: scale\n        op: standard_scale\n"
        "        columns: [monthly_charges]\n      - op: write_parquet"))
    record = run(path, engine_instance=engine)
    assert record["status"] == "succeeded"
    assert record["warnings"] == [
        f"{path}:5: step 'expect' (expect): 1 of 3,000 rows fail 'positive_charges' "
        "(monthly_charges > 0) (on_failure: warn: the run went on with every row)"]
    assert record["metrics"]["expect"] == {
        "positive_charges": {"checked": 3000, "failed": 1},
        "not_null(customer_id)": {"checked": 3000, "failed": 0}}
    assert pq.read_table(workdir / "out").num_rows == 3000

    steps = record["steps"]
    expect, read = steps["expect"], steps["read_parquet"]
    assert (expect["rows_in"], expect["rows"]) == (3000, 3000)
    assert expect["partitions"] == read["partitions"] >= 2
    assert expect["compute_seconds"] > 0 and "driver_seconds" not in expect
    # the fit computed the read and the expect (lazy: no wall of their own)
    assert steps["scale"]["wall_includes"] == ["read_parquet", "expect"]
    assert "wall_includes" not in expect and "wall_includes" not in read
    assert steps["scale"]["driver_seconds"] > 0
    assert steps["write_parquet"]["compute_seconds"] > 0
    work = {s: e["compute_seconds"] + e.get("driver_seconds", 0) for s, e in steps.items()}
    assert record["work_seconds"] == pytest.approx(sum(work.values()), abs=1e-5)
    for step_id, entry in steps.items():
        assert entry["work_share"] == pytest.approx(work[step_id] / sum(work.values()),
                                                    abs=1e-4)


def test_warn_prints_one_warning_line_and_the_status_says_it(data: Path,
                                                            workdir: Path) -> None:
    path = write_pipeline(workdir, CHECKED.format(on_failure="warn"))
    done = sluice_in_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: {path}:5: step 'expect' (expect): 1 of 3,000 rows fail "
        "'positive_charges' (monthly_charges > 0) (on_failure: warn: the run went on with "
        "every row)"]
    assert ": succeeded, 1 warning in " in done.stdout.splitlines()[0]
    assert "metrics expect.positive_charges: checked=3000, failed=1" in done.stdout
    listed = sluice_in_process("runs", "list", "--status", "succeeded", cwd=workdir)
    assert "succeeded, 1 warning" in listed.stdout, listed.stdout
