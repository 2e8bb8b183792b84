"""write_parquet's `append` and `overwrite_partitions` (Spark's dynamic partition
overwrite): the new files are listed with the kept ones in one new manifest, the rows
must fit the output, writers take turns, and a killed run leaves the old output or the
new, never between, on every engine."""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline
from test_parquet_write import (
    kill_at,
    kill_pipeline,
    read_back,
    run_writer,
    sample,
    snapshot,
    split,
    staging_dirs,
    write,
)

from operators.base import DataError, ParamError
from operators.io.parquet import MANIFEST, ReadParquet, WriteParquet
from pipelines.engines.base import Engine
from pipelines.runner import run


def manifest_of(target: Path) -> dict:
    return json.loads((target / MANIFEST).read_text())


def rows_of(table: pa.Table, **where: object) -> pa.Table:
    mask = None
    for column, value in where.items():
        m = pc.equal(table[column], value)
        mask = m if mask is None else pc.and_(mask, m)
    return table.filter(mask)


# --------------------------------------------------------------------------- append


def test_append_adds_the_rows_after_the_outputs(workdir: Path) -> None:
    target = workdir / "out"
    first, second = sample(600, seed=1), sample(400, seed=2, generation=1)
    write(target, split(first, 2), "run-1", mode="append")  # no output yet: a new one
    entry = write(target, split(second, 3), "run-2", mode="append")
    assert entry == {"path": str(target), "rows": 400, "files": 3, "mode": "append",
                     "output_rows": 1000, "output_files": 5}
    assert read_back(target).equals(pa.concat_tables([first, second]))
    assert pq.read_table(target).num_rows == 1000  # a reader without the manifest too
    manifest = manifest_of(target)
    assert manifest["rows"] == 1000 and manifest["run_id"] == "run-2"
    assert [f.split("-")[1] for f in manifest["files"]] == ["run"] * 5
    assert sum(f.startswith("part-run-1-") for f in manifest["files"]) == 2
    assert staging_dirs(target) == []


def test_append_of_no_rows_leaves_the_output_as_it_was(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(100)], "run-1")
    before = snapshot(target)
    entry = write(target, [sample(0)], "run-2", mode="append")
    assert entry["rows"] == 0 and entry["output_rows"] == 100
    assert snapshot(target) == before and staging_dirs(target) == []


def test_append_widens_narrower_types_and_reads_them_as_the_outputs(workdir: Path) -> None:
    target = workdir / "out"
    first = sample(100)
    write(target, [first], "run-1")
    narrower = sample(50, seed=3).cast(first.schema.set(
        first.schema.get_field_index("year"), pa.field("year", pa.int32())))
    write(target, [narrower], "run-2", mode="append")
    back = read_back(target)
    assert back.schema == first.schema and back.num_rows == 150
    assert back.slice(100).equals(narrower.cast(first.schema))


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop_columns(["x"]), r"the rows lack its column\(s\) x"),
    (lambda t: t.append_column("extra", pa.array([1.0] * t.num_rows)),
     r"it has no column\(s\) extra"),
    (lambda t: t.set_column(t.schema.get_field_index("year"), "year",
                            pc.cast(t["year"], pa.string())),
     r"column 'year' is string in the rows and int64 in the output.*op: cast"),
    (lambda t: t.set_column(t.schema.get_field_index("x"), "x",
                            pc.cast(t["x"], pa.float32())).cast(
        t.schema.set(t.schema.get_field_index("id"), pa.field("id", pa.float64()))),
     r"column 'id' is double in the rows and int64 in the output"),
])
def test_rows_the_output_cannot_take_stop_before_any_data_moves(
        workdir: Path, change: object, message: str) -> None:
    target = workdir / "out"
    write(target, [sample(100)], "run-1")
    before = snapshot(target)
    with pytest.raises(DataError, match=f"cannot append to output '{target}': {message}"):
        op = WriteParquet(path=str(target), mode="append")
        op.begin("run-2", change(sample(10)).schema)  # type: ignore[operator]
    assert snapshot(target) == before and staging_dirs(target) == []


def test_an_unpartitioned_output_has_no_partitions_to_replace(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(10)], "run-1")
    with pytest.raises(DataError, match=r"cannot overwrite the partitions of output .*: it "
                                        r"is partitioned by no column.*no partitions to "
                                        r"replace: `mode: append` without `partition_by`"):
        write(target, [sample(10)], "run-2", mode="overwrite_partitions", partition_by=["year"])
    with pytest.raises(DataError, match=r"cannot append to .*\(leave `partition_by` out, as "
                                        r"the output has none\)"):
        write(target, [sample(10)], "run-2", mode="append", partition_by=["year"])
    # a cast hint is YAML that reads as the type
    stamped = workdir / "stamped"
    write(stamped, [pa.table({"ts": pa.array([0], pa.timestamp("ms", "UTC"))})], "run-1")
    with pytest.raises(DataError, match=r'`columns: \{ts: "timestamp\[ms, tz=UTC\]"\}`'):
        write(stamped, [pa.table({"ts": ["x"]})], "run-2", mode="append")


def test_a_column_the_rows_name_otherwise_gets_the_rename(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(10)], "run-1")
    renamed = sample(10).rename_columns(["id", "x", "regions", *sample(0).column_names[3:]])
    with pytest.raises(DataError, match=r"\(rename regions to region \(`op: rename`, "
                                        r"`columns: \{regions: region\}`\), give the rows"):
        write(target, [renamed], "run-2", mode="append")


def test_partition_columns_must_be_the_outputs(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(100)], "run-1", partition_by=["year"])
    for by, said in ([None, "no column"], [["region"], "region"]):
        with pytest.raises(DataError, match=(
                rf"it is partitioned by year, this step writes by {said}.*"
                r"partition_by: \[year\]")):
            write(target, [sample(10)], "run-2", mode="append", partition_by=by)
    assert staging_dirs(target) == []


def test_a_schema_changed_between_begin_and_commit_is_refused_at_the_commit(
        workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(100)], "run-1")
    op = WriteParquet(path=str(target), mode="append")
    token = op.begin("run-2", sample(10).schema)
    results = [op.write(token, sample(10), 0)]
    # another run replaced the output with other columns meanwhile
    write(target, [sample(100).drop_columns(["x"])], "run-3", mode="overwrite")
    before = snapshot(target)
    with pytest.raises(DataError, match=r"it has no column\(s\) x"):
        op.commit(token, results)
    assert snapshot(target) == before and staging_dirs(target) == []


def test_a_file_at_the_target_is_no_output_to_append_to(workdir: Path) -> None:
    target = workdir / "out"
    target.write_text("not parquet")
    with pytest.raises(DataError, match="is a file, not a directory.*nothing to append to"):
        write(target, [sample(10)], "run-1", mode="append")


def test_append_to_a_foreign_dataset_keeps_its_files(workdir: Path) -> None:
    """A hive dataset another tool wrote (no manifest, year inferred as int32 from the
    paths): the rows are added and the files listed, the foreign ones kept."""
    target = workdir / "out"
    old = sample(300)
    pq.write_to_dataset(old, target, partition_cols=["year"])
    foreign = sorted(str(p.relative_to(target)) for p in target.rglob("*.parquet"))
    new = sample(200, seed=5, generation=1)
    entry = write(target, split(new, 2), "run-1", mode="append", partition_by=["year"])
    assert entry["output_rows"] is None and entry["output_files"] == len(foreign) + 6
    manifest = manifest_of(target)
    assert manifest["files"][:len(foreign)] == foreign
    back = read_back(target)
    assert back.num_rows == 500
    want = pa.concat_tables([old.select(back.column_names), new.select(back.column_names)])
    order = [("generation", "ascending"), ("id", "ascending")]
    assert back.sort_by(order).cast(want.schema).equals(want.sort_by(order))


def at_once(writers: list[Callable[[], object]]) -> None:
    """Run the writers in threads started together; any error fails the test."""
    errors: list[BaseException] = []

    def guarded(writer: Callable[[], object]) -> None:
        try:
            writer()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_concurrent_appends_all_land(workdir: Path) -> None:
    """Writers committing at once take turns on the output's lock: none loses another's
    files (each re-reads the manifest under the lock)."""
    target = workdir / "out"
    write(target, [sample(100)], "run-0")
    at_once([lambda i=i: write(target, split(sample(50, seed=i, generation=i), 2),
                               f"run-{i}", mode="append") for i in range(1, 9)])
    back = read_back(target)
    assert back.num_rows == 100 + 8 * 50 and manifest_of(target)["rows"] == 500
    assert sorted(set(back["generation"].to_pylist())) == list(range(9))
    assert len(manifest_of(target)["files"]) == 1 + 8 * 2


def test_an_overwrite_among_appends_leaves_a_whole_output(workdir: Path) -> None:
    """An overwrite takes the same lock: the appends before it are gone, those after it
    are there, and every file the manifest lists exists."""
    target = workdir / "out"
    write(target, [sample(100)], "run-0")
    at_once([lambda i=i: write(target, [sample(50, seed=i, generation=i)], f"run-{i}",
                               mode="append") for i in (1, 2, 4, 5, 6)]
            + [lambda: write(target, [sample(70, generation=99)], "over", mode="overwrite")])
    manifest = manifest_of(target)
    assert all((target / f).exists() for f in manifest["files"])
    back = read_back(target)
    generations = by_generation(back)
    assert generations.pop(99) == 70 and set(generations.values()) <= {50}
    assert back.num_rows == manifest["rows"] == 70 + 50 * len(generations)
    assert pq.read_table(target).num_rows == back.num_rows


def test_files_of_a_run_that_died_while_moving_in_are_swept(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample(100)], "run-1")
    orphan = target / "part-20261130T010203Z-dead00-00000.parquet"
    pq.write_table(sample(7), orphan)  # moved in, then the run died before its manifest
    assert read_back(target).num_rows == 100  # listed by no manifest: no reader's
    write(target, [sample(10)], "run-2", mode="append")
    assert not orphan.exists() and read_back(target).num_rows == 110
    assert pq.read_table(target).num_rows == 110


# --------------------------------------------------------------------------- partitions


def test_overwrite_partitions_replaces_those_the_rows_fall_in(workdir: Path) -> None:
    target = workdir / "out"
    old = sample(900)  # years 2020, 2021, 2022
    write(target, split(old, 3), "run-1", partition_by=["year"])
    old_2021 = sorted(str(p.relative_to(target)) for p in (target / "year=2021").iterdir())
    new = rows_of(sample(90, seed=4, generation=1), year=2021)
    entry = write(target, split(new, 2), "run-2", mode="overwrite_partitions",
                  partition_by=["year"])
    assert entry["partitions"] == 1 and entry["partitions_replaced"] == 1
    assert entry["output_rows"] == 600 + new.num_rows
    back = read_back(target)
    for year in (2020, 2022):
        assert by_generation(rows_of(back, year=year)) == {0: 300}
    assert by_generation(rows_of(back, year=2021)) == {1: new.num_rows}
    assert not any((target / f).exists() for f in old_2021)
    assert pq.read_table(target).num_rows == back.num_rows
    # a year the output lacks is added, the others kept
    added = sample(30, seed=6, generation=2).drop_columns(["year"]).append_column(
        "year", pa.array([2030] * 30, pa.int64()))
    entry = write(target, [added.select(old.column_names)], "run-3",
                  mode="overwrite_partitions", partition_by=["year"])
    assert entry["partitions_replaced"] == 0
    assert read_back(target).num_rows == back.num_rows + 30
    assert manifest_of(target)["rows"] == back.num_rows + 30


def by_generation(table: pa.Table) -> dict[int, int]:
    values, counts = np.unique(table["generation"].to_numpy(), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_overwrite_partitions_of_two_columns_and_nulls(workdir: Path) -> None:
    """Partitions are whole paths of values (region=north/day=..): a null region is
    the hive default partition, replaced as any other."""
    target = workdir / "out"
    by = ["region", "day"]
    old = sample(720)
    write(target, split(old, 2), "run-1", partition_by=by)
    new = sample(72, seed=8, generation=1)
    new = new.filter(pc.or_kleene(pc.is_null(new["region"]), pc.equal(new["region"], "north")))
    write(target, [new], "run-2", mode="overwrite_partitions", partition_by=by)
    back = read_back(target)
    kept = old.filter(pc.invert(pc.or_kleene(pc.is_null(old["region"]),
                                       pc.equal(old["region"], "north"))))
    assert by_generation(back) == {0: kept.num_rows, 1: new.num_rows}


def test_a_partition_spelled_otherwise_is_the_same_partition(workdir: Path) -> None:
    """Spark and Hive leave a space in a folder's value (`city=New York`), pyarrow
    escapes it (`city=New%20York`); a timestamp[ms] partition spells fewer digits than
    the output's timestamp[us]: partitions are compared by value, and the replaced
    folder goes."""
    target = workdir / "out"
    for city in ("New York", "Paris"):  # a foreign dataset, folders as Spark names them
        (target / f"city={city}").mkdir(parents=True)
        pq.write_table(pa.table({"id": [1, 2], "generation": [0, 0]}),
                       target / f"city={city}" / "part-00000-9c1d-c000.snappy.parquet")
    new = pa.table({"id": [5, 6], "generation": [1, 1], "city": ["New York"] * 2})
    entry = write(target, [new], "run-1", mode="overwrite_partitions", partition_by=["city"])
    assert entry["partitions_replaced"] == 1
    back = read_back(target)
    assert sorted(zip(back["city"].to_pylist(), back["generation"].to_pylist())) == [
        ("New York", 1), ("New York", 1), ("Paris", 0), ("Paris", 0)]
    assert not (target / "city=New York").exists()

    stamped = workdir / "stamped"
    day = datetime.datetime(2026, 11, 1)
    write(stamped, [pa.table({"k": pa.array([day], pa.timestamp("us")), "g": [0]})], "run-1",
          partition_by=["k"])
    entry = write(stamped, [pa.table({"k": pa.array([day], pa.timestamp("ms")), "g": [1]})],
                  "run-2", mode="overwrite_partitions", partition_by=["k"])
    assert entry["partitions_replaced"] == 1
    back = read_back(stamped)
    assert back["g"].to_pylist() == [1] and back.schema.field("k").type == pa.timestamp("us")


def test_foreign_files_named_as_a_runs_are_kept(workdir: Path) -> None:
    """Hadoop's part-m-00000.parquet looks like a sluice file name: it is the foreign
    dataset's data all the same, kept and listed."""
    target = workdir / "out"
    target.mkdir()
    for name, rows in (("part-m-00000.parquet", 3), ("part-r-00001.parquet", 2)):
        pq.write_table(sample(rows).select(["id", "x"]), target / name)
    write(target, [sample(1, seed=2).select(["id", "x"])], "run-1", mode="append")
    assert read_back(target).num_rows == 6
    assert (target / "part-m-00000.parquet").exists()


def test_a_value_that_does_not_fit_the_outputs_type_stops_before_publishing(
        workdir: Path) -> None:
    target = workdir / "out"
    write(target, [pa.table({"id": pa.array([1, 2], pa.int64())})], "run-1")
    before = snapshot(target)
    big = pa.table({"id": pa.array([3, 2**63], pa.uint64())})  # uint64 widens to int64...
    with pytest.raises(DataError, match=r"column 'id' holds a value its type there \(int64\)"):
        write(target, [big], "run-2", mode="append")  # ... but 2**63 does not fit
    assert snapshot(target) == before and staging_dirs(target) == []
    write(target, [big.slice(0, 1)], "run-3", mode="append")
    assert read_back(target)["id"].to_pylist() == [1, 2, 3]


def test_a_column_of_nulls_takes_the_type_of_rows_appended(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [pa.table({"id": [1], "note": pa.nulls(1)})], "run-1")
    write(target, [pa.table({"id": [2], "note": ["hello"]})], "run-2", mode="append")
    back = read_back(target)
    assert back["note"].to_pylist() == [None, "hello"] and back["note"].type == pa.string()


def test_no_rows_into_a_folder_of_no_data_make_an_output(workdir: Path) -> None:
    target = workdir / "out"
    target.mkdir()
    (target / ".DS_Store").write_text("finder")
    write(target, [sample(0)], "run-1", mode="append")
    back = read_back(target)
    assert back.num_rows == 0 and back.schema == sample(0).schema


def test_partition_columns_of_dictionary_and_decimal_types_read_back(workdir: Path) -> None:
    import decimal

    table = pa.table({"k": pa.array(["a", "b", "a"]).dictionary_encode(),
                      "d": pa.array([decimal.Decimal("1.50")] * 3, pa.decimal128(10, 2)),
                      "g": [0, 1, 2]})
    for by in (["k"], ["d"]):
        target = workdir / f"out-{by[0]}"
        write(target, [table], "run-1", partition_by=by)
        back = ReadParquet(path=str(target)).read_all()
        assert back.schema == table.schema
        assert back.sort_by("g").equals(table)
        # the same on a worker: the reader travels with the types it reads
        import pickle

        reader = ReadParquet(path=str(target))
        reader.schema()
        worker = pickle.loads(pickle.dumps(reader))
        assert worker.read(reader.partitions()[0]).schema == table.schema


def test_overwrite_partitions_names_its_partitions() -> None:
    with pytest.raises(ParamError, match="overwrite_partitions.*partition_by"):
        WriteParquet(path="out", mode="overwrite_partitions")


# --------------------------------------------------------------------------- pipelines


APPEND = """
    pipeline: daily
    params:
      ds: "2026-11-01"
    steps:
      - op: read_parquet
        path: data/events/ds=${ds}
      - id: days
        op: derive
        columns:
          ds: "'${ds}'"
      - op: write_parquet
        path: out/events
        mode: overwrite_partitions
        partition_by: [ds]
"""


def test_a_daily_job_rerun_replaces_its_day_on_every_engine(workdir: Path,
                                                           engine: Engine) -> None:
    rng = np.random.default_rng(3)
    days = {}
    for d in ("2026-11-01", "2026-11-02"):
        days[d] = pa.table({"id": np.arange(500), "v": rng.standard_normal(500)})
        folder = workdir / "data" / "events" / f"ds={d}"
        folder.mkdir(parents=True)
        pq.write_table(days[d].slice(0, 250), folder / "a.parquet")
        pq.write_table(days[d].slice(250), folder / "b.parquet")
    pipeline = write_pipeline(workdir, APPEND)
    for d in ("2026-11-01", "2026-11-02", "2026-11-01"):  # the first day again
        record = run(pipeline, {"ds": d}, engine_instance=engine)
    [output] = record["outputs"]
    assert output["mode"] == "overwrite_partitions" and output["partitions_replaced"] == 1
    assert output["output_rows"] == 1000
    back = read_back(workdir / "out" / "events")
    for d, table in days.items():
        got = back.filter(pc.equal(back["ds"], d)).select(["id", "v"])
        assert got.sort_by("id").equals(table)


def test_cli_appends_and_says_how_many_rows_the_output_has(workdir: Path) -> None:

    folder = workdir / "data" / "events" / "ds=2026-11-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": np.arange(40), "v": np.ones(40)}), folder / "a.parquet")
    pipeline = write_pipeline(workdir, APPEND.replace("overwrite_partitions", "append"))
    for _ in range(2):
        done = sluice_in_process("run", str(pipeline), cwd=workdir)
        assert done.returncode == 0, done.stderr
    assert "appended 40 rows to out/events (80 rows in all)" in done.stdout
    bad = write_pipeline(workdir, APPEND.replace("ds: \"'${ds}'\"", "ds: 'id'"), "bad.yaml")
    done = sluice_in_process("run", str(bad), cwd=workdir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "column 'ds' is int64 in the rows and string in the output" in done.stderr
    assert "bad.yaml:" in done.stderr


# --------------------------------------------------------------------------- kill


def test_sigkill_of_an_append_leaves_old_or_new(workdir: Path) -> None:
    source = workdir / "data" / "src"
    source.mkdir(parents=True)
    new = sample(20_000, seed=11, generation=1)
    for i, part in enumerate(split(new, 4)):
        pq.write_table(part, source / f"p{i}.parquet")
    target = workdir / "outputs" / "out"
    old = sample(500, seed=7)
    pipeline = kill_pipeline(workdir, source, "append")
    for pause in ("staged", "moved"):
        write(target, [old], "old", mode="overwrite")
        kill_at(pipeline, workdir, pause, 0.0)
        assert read_back(target).equals(old)  # the manifest still lists the old files
        if pause == "moved":  # moved in, listed by no manifest
            assert len(list(target.glob("part-*.parquet"))) > 1
        run_writer(pipeline, workdir)  # the re-run appends once and sweeps the debris
        back = read_back(target)
        assert back.num_rows == old.num_rows + new.num_rows
        assert back.equals(pa.concat_tables([old, new]))
        assert pq.read_table(target).num_rows == back.num_rows and staging_dirs(target) == []


def test_two_appends_into_one_output_in_one_run_keep_both(workdir: Path, engine: Engine
                                                          ) -> None:
    """A pipeline appending two steps' rows to one output: the second write's files are
    named apart from the first's (they met: 'exists: part-<run>-00000.parquet'), on
    every engine."""
    pq.write_table(pa.table({"id": [1, 2, 3]}), workdir / "a.parquet")
    pq.write_table(pa.table({"id": [10, 20]}), workdir / "b.parquet")
    record = run(write_pipeline(workdir, """
        pipeline: two
        steps:
          - id: a
            op: read_parquet
            path: a.parquet
          - id: wa
            op: write_parquet
            path: out
            mode: append
          - id: b
            op: read_parquet
            path: b.parquet
          - id: wb
            op: write_parquet
            input: b
            path: out
            mode: append
        """), engine_instance=engine)
    assert record["status"] == "succeeded"
    assert sorted(pq.read_table(workdir / "out").column("id").to_pylist()) == [1, 2, 3, 10, 20]
    names = sorted(p.name for p in (workdir / "out").glob("part-*.parquet"))
    run_id = record["run_id"]
    assert names[0].startswith(f"part-{run_id}-") and names[-1].startswith(f"part-{run_id}.2-")


def test_validate_and_plan_say_what_the_output_cannot_take(workdir: Path) -> None:
    """An output there already that the rows cannot go to (a new upstream column under
    `mode: append`; `mode: error`) is a problem `validate` and `plan` report at the write
    step's line, as the run then refuses it before any step runs, at that line too."""
    pq.write_table(pa.table({"id": [1, 2], "v": [1.0, 2.0]}), workdir / "rows.parquet")
    steps = """
        pipeline: {name}
        steps:
          - op: read_parquet
            path: rows.parquet
          - op: derive
            columns: {{{columns}}}
          - id: out
            op: write_parquet
            path: out
            mode: {mode}
        """
    first = write_pipeline(workdir, steps.format(name="first", columns="w: v * 2",
                                                 mode="append"), "first.yaml")
    assert run(first)["status"] == "succeeded"
    before = snapshot(workdir / "out")
    grown = write_pipeline(workdir, steps.format(name="grown", columns="w: v * 2, channel: "
                                                 "\"'web'\"", mode="append"), "grown.yaml")
    again = write_pipeline(workdir, steps.format(name="again", columns="w: v * 2",
                                                 mode="error"), "again.yaml")
    line = next(n for n, text in enumerate(grown.read_text().splitlines(), 1)
                if "path: out" in text)
    appended = (f"error: {grown}:{line}: step 'out' (write_parquet): cannot append to output "
                "'out': it has no column(s) channel")
    exists = f"error: {again}:{line}: step 'out' (write_parquet): output 'out' already exists"
    checked = sluice_in_process("validate", str(grown), str(again), cwd=workdir)
    errors = checked.stderr.strip().splitlines()
    assert checked.returncode == 1 and len(errors) == 3, errors
    assert errors[0].startswith(appended) and errors[1].startswith(exists), errors
    assert errors[2] == "error: 2 problem(s) in 2 file(s)"
    planned = sluice_in_process("plan", str(grown), cwd=workdir)
    assert planned.returncode == 1 and planned.stdout == ""
    assert planned.stderr.startswith(appended), planned.stderr
    # the same rows the output takes: no problem
    assert sluice_in_process("validate", str(first), cwd=workdir).returncode == 0
    # the run refuses it in the same words, at the same line
    ran = sluice_in_process("run", str(grown), cwd=workdir)
    assert ran.returncode == 1 and ran.stderr.startswith(appended), ran.stderr
    ran = sluice_in_process("run", str(again), cwd=workdir)
    assert ran.returncode == 1 and ran.stderr.startswith(exists), ran.stderr
    assert snapshot(workdir / "out") == before
