"""repartition in pipelines: a day's rows in one file of a hive-partitioned output, many
small partitions put together and a few large ones split, on every engine with the same
bytes; rows unchanged and in the input's order within each output partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.io.parquet import ReadParquet
from pipelines.engines.base import Engine
from pipelines.runner import run

FILES, ROWS = 12, 1500


@pytest.fixture
def events(workdir: Path) -> pa.Table:
    """12 small files of events of 5 days, in event order (a day's rows in every file)."""
    rng = np.random.default_rng(4)
    n = FILES * ROWS
    table = pa.table({
        "event": np.arange(n),
        "ds": pa.array(np.array(["2026-11-0" + str(d) for d in range(1, 6)])[
            rng.integers(0, 5, n)]),
        "amount": rng.gamma(2.0, 10.0, n),
        "note": pa.array(np.array(["a", "bb", None, "cccc"], dtype=object)[
            rng.integers(0, 4, n)]),
    })
    folder = workdir / "data" / "events"
    folder.mkdir(parents=True)
    for i in range(FILES):
        pq.write_table(table.slice(i * ROWS, ROWS), folder / f"part-{i:02d}.parquet")
    return table


BY_DAY = """
    pipeline: by_day
    steps:
      - op: read_parquet
        path: data/events
      - id: days
        op: repartition
        by: [ds]
      - op: write_parquet
        path: {out}
        partition_by: [ds]
"""

SPREAD = """
    pipeline: spread
    steps:
      - op: read_parquet
        path: data/events
      - id: spread
        op: repartition
        {how}
      - op: write_parquet
        path: {out}
"""


def output_files(folder: Path) -> list[pa.Table]:
    """Each output file's rows, in the manifest's order."""
    source = ReadParquet(path=str(folder))
    return [source.read(p) for p in source.partitions()]


def assert_input_rows_in_order(parts: list[pa.Table], table: pa.Table) -> None:
    """Every input row once, unchanged; within each part in the input's order."""
    for part in parts:
        events = part["event"].to_numpy()
        assert np.all(np.diff(events) > 0), "rows out of the input's order"
    got = pa.concat_tables([p.select(table.column_names) for p in parts]).sort_by("event")
    assert got.equals(table)


def test_a_day_is_one_file_on_every_engine(events: pa.Table, workdir: Path,
                                           engine: Engine) -> None:
    record = run(write_pipeline(workdir, BY_DAY.format(out="out/days")),
                 engine_instance=engine)
    step = record["steps"]["days"]
    assert step["rows"] == events.num_rows and step["kind"] == "shuffle"
    days = sorted((workdir / "out" / "days").glob("ds=*"))
    assert len(days) == 5
    assert all(len(list(day.glob("*.parquet"))) == 1 for day in days)
    parts = output_files(workdir / "out" / "days")
    assert len(parts) == 5
    assert [p["ds"].unique().to_pylist() for p in parts] == [
        [d.name.split("=")[1]] for d in days]
    assert_input_rows_in_order(parts, events)
    if engine.name != "local":
        local = run(write_pipeline(workdir, BY_DAY.format(out="out/local"), "local.yaml"))
        assert local["steps"]["days"]["shuffle"] == step["shuffle"]
        assert all(a.equals(b) for a, b in zip(
            output_files(workdir / "out" / "local"), parts, strict=True))


def test_without_repartition_each_input_partition_writes_a_file_a_day(
        events: pa.Table, workdir: Path) -> None:
    """What the step saves: the same write straight after the read makes 12 x 5 files."""
    text = BY_DAY.replace("""      - id: days
        op: repartition
        by: [ds]
""", "")
    notes: list[str] = []
    record = run(write_pipeline(workdir, text.format(out="out/days")), notify=notes.append)
    assert len(list((workdir / "out" / "days").rglob("*.parquet"))) == FILES * 5
    assert record["outputs"][0]["folders"] == 5
    # the run says so, and what would make one file a day
    assert notes == [f"{workdir / 'pipeline.yaml'}:5: step 'write_parquet': wrote 60 files "
                     "into 5 partition folders (12 each, a file from every input "
                     "partition): a `repartition` step with `by: [ds]` before the write "
                     "makes one file a folder"]
    notes.clear()
    run(write_pipeline(workdir, BY_DAY.format(out="out/again")), notify=notes.append)
    assert notes == []


@pytest.mark.parametrize("how, files", [("partition_mb: 0.25", None), ("partitions: 3", 3),
                                        ("partitions: 30", 30)])
def test_rows_spread_into_as_many_partitions_as_asked_on_every_engine(
        events: pa.Table, workdir: Path, engine: Engine, how: str, files: int | None) -> None:
    record = run(write_pipeline(workdir, SPREAD.format(out="out/spread", how=how)),
                 engine_instance=engine)
    parts = output_files(workdir / "out" / "spread")
    shuffle = record["steps"]["spread"]["shuffle"]
    assert shuffle["partitions"] == len(parts)
    if files is None:  # put together: fewer, none much over 0.25 MB
        assert 1 < len(parts) < FILES and shuffle["largest_mb"] <= 0.5
    else:
        assert len(parts) == files
        sizes = np.array([p.num_rows for p in parts])
        assert sizes.min() > 0.6 * events.num_rows / files  # spread evenly
    assert_input_rows_in_order(parts, events)


def test_the_plan_says_where_the_rows_go(events: pa.Table, workdir: Path) -> None:
    path = write_pipeline(workdir, BY_DAY.format(out="out/x"))
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("shuffles: the rows of each ds to one place through the scratch folder, into "
            "partitions of up to 64 MB, as many as the rows need; rows unchanged, in their "
            "order within each") in shown


def test_a_model_trained_after_a_repartition_does_not_keep_it(
        events: pa.Table, workdir: Path) -> None:
    from pipelines.serving import load_model

    path = write_pipeline(workdir, """
        pipeline: train
        steps:
          - op: read_parquet
            path: data/events
          - op: derive
            columns:
              big: "amount > 20"
          - op: repartition
            partitions: 2
          - op: standard_scale
            columns: [amount]
          - op: logistic_regression
            label: big
            features: [amount]
          - op: save_model
            name: big
        """)
    run(path)
    model = load_model("big")
    names = [s.name.removesuffix(".fitted") for s in model.model.chain.steps]
    # no repartition; and no derive: it made only the label, which scoring has no use for
    assert names == ["standard_scale", "logistic_regression"]
    scored = model.score_table(events.slice(0, 100))
    assert pc.all(pc.equal(scored["prediction"], pc.greater(events.slice(0, 100)["amount"],
                                                            20))).as_py()


def test_a_key_column_that_is_not_there_is_named_at_its_line(workdir: Path,
                                                            events: pa.Table) -> None:
    path = write_pipeline(workdir, BY_DAY.format(out="out/x").replace("by: [ds]",
                                                                      "by: [day]"))
    done = sluice_in_process("validate", str(path), cwd=workdir)
    assert done.returncode == 1
    assert "pipeline.yaml:7: step 'days' (repartition): by: key column 'day'" in done.stderr
    assert "not in the input (input has: event, ds, amount, note)" in done.stderr


def test_copies_of_a_row_spread_as_any_rows_do(workdir: Path) -> None:
    """Without `by`, a row's place in its partition spreads it (Spark's round robin): two
    distinct rows repeated 40,000 times fill 8 partitions evenly (a hash of their values
    would put every copy in one)."""
    folder = workdir / "data" / "copies"
    folder.mkdir(parents=True)
    rows = pa.table({"kind": ["a"] * 36_000 + ["b"] * 4_000, "v": [1.0] * 40_000})
    for i in range(4):
        pq.write_table(rows.slice(i * 10_000, 10_000), folder / f"p{i}.parquet")
    run(write_pipeline(workdir, SPREAD.format(out="out/copies", how="partitions: 8").replace(
        "data/events", "data/copies")))
    sizes = [p.num_rows for p in output_files(workdir / "out" / "copies")]
    assert len(sizes) == 8 and sum(sizes) == 40_000
    assert max(sizes) < 1.2 * 40_000 / 8 and min(sizes) > 0.8 * 40_000 / 8, sizes


def test_many_tiny_partitions_spread_evenly(workdir: Path) -> None:
    """50 files of 3 rows into 8 partitions: each partition's rows numbered from a start
    of its own, so the first rows of all 50 do not meet in one place."""
    folder = workdir / "data" / "tiny"
    folder.mkdir(parents=True)
    for i in range(50):
        pq.write_table(pa.table({"event": [3 * i, 3 * i + 1, 3 * i + 2]}),
                       folder / f"p{i:02d}.parquet")
    run(write_pipeline(workdir, SPREAD.format(out="out/tiny", how="partitions: 8").replace(
        "data/events", "data/tiny")))
    sizes = [p.num_rows for p in output_files(workdir / "out" / "tiny")]
    assert len(sizes) == 8 and sum(sizes) == 150 and max(sizes) <= 30, sizes
