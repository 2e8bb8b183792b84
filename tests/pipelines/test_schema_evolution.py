"""read_parquet over a folder whose files' columns changed as it grew (a column added on
day 3, another dropped on day 5): by default the read stops as it plans, naming a file
with the column and one without; ``missing: null`` reads every file's columns, null where
a file lacks one (Spark's mergeSchema), the same table on every engine.

The oracle is pyarrow: each file read by ``pq.read_table`` and the tables concatenated
with their columns unified (``promote_options="default"``)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import DataError
from operators.io.parquet import ReadParquet
from pipelines.runner import ValidationFailed, plan_file, run


def days(root: Path) -> list[Path]:
    """Six daily files: 'b' in days 1-4 (dropped on day 5), 'c' from day 3 (added), 'a'
    as int32 on day 6 (widens to the int64 of the others)."""
    root.mkdir(parents=True)
    paths = []
    for day in range(1, 7):
        ids = list(range(day * 10, day * 10 + 3))
        cols: dict[str, Any] = {"id": ids, "a": pa.array([i * 2 for i in ids],
                                                         pa.int32() if day == 6 else pa.int64())}
        if day <= 4:
            cols["b"] = [f"b{i}" for i in ids]
        if day >= 3:
            cols["c"] = [i / 4 for i in ids]
        paths.append(root / f"d{day}.parquet")
        pq.write_table(pa.table(cols), paths[-1])
    return paths


def unified(paths: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")


def sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return sluice_in_process(*args, cwd=cwd, env={"CI": "1"})


COPY = """
    pipeline: copy
    steps:
      - id: events
        op: read_parquet
        path: data{extra}
      - op: write_parquet
        path: out
    """


def test_files_that_disagree_on_the_columns_fail_as_the_read_plans(workdir: Path) -> None:
    """validate, plan and run all say it, before any data moves: the column, how many of
    the files have it, one that has it and one that does not, and the fixes."""
    paths = days(workdir / "data")
    path = write_pipeline(workdir, COPY.format(extra=""))
    checked = sluice("validate", str(path), cwd=workdir)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    line, total = checked.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}:5: step 'events' (read_parquet): the files "
                           "disagree on the columns read: "), line
    assert (f"'b' is in 4 of the 6 files read (e.g. {paths[0]}), not in 2 "
            f"(e.g. {paths[4]})") in line
    assert f"'c' is in 4 of the 6 files read (e.g. {paths[2]}), not in 2 (e.g. {paths[0]})" \
        in line
    assert "set `missing: null` to read every file's columns" in line
    assert "`columns: [id, a]`" in line
    assert total == "error: 1 problem(s) in 1 file(s)"
    planned = sluice("plan", str(path), cwd=workdir)
    assert planned.returncode == 1 and line.removeprefix("error: ") in planned.stderr
    ran = sluice("run", str(path), cwd=workdir)
    assert ran.returncode == 1 and line.removeprefix("error: ") in ran.stderr
    assert not (workdir / "out").exists()


def test_missing_null_reads_every_files_columns_on_every_engine(workdir: Path,
                                                                engine: Any) -> None:
    paths = days(workdir / "data")
    path = write_pipeline(workdir, COPY.format(extra="\n        missing: null"))
    run(path, engine_instance=engine)
    want = unified(paths)
    assert want.column_names == ["id", "a", "b", "c"]
    got = pq.read_table(workdir / "out")
    assert got.schema == want.schema
    assert got.sort_by("id").equals(want.sort_by("id"))
    assert got.column("b").null_count == 6 and got.column("c").null_count == 6


def test_columns_not_read_never_matter(workdir: Path) -> None:
    paths = days(workdir / "data")
    assert ReadParquet(path=str(workdir / "data"), columns=["id", "a"]).read_all().equals(
        unified(paths).select(["id", "a"]))
    # listed, a column some files lack is the error, naming it only
    with pytest.raises(DataError) as info:
        ReadParquet(path=str(workdir / "data"), columns=["id", "c"]).check_files()
    assert "'c' is in 4 of the 6 files read" in str(info.value)
    assert "'b'" not in str(info.value) and "leave 'c' out of `columns`" in str(info.value)
    # a filter reads its columns too: the rows of the files without one would go silently
    with pytest.raises(DataError) as info:
        ReadParquet(path=str(workdir / "data"), columns=["id"], filter="c > 0").check_files()
    assert "'c' is in 4 of the 6 files read" in str(info.value)
    got = ReadParquet(path=str(workdir / "data"), columns=["id", "c"], missing="null",
                      filter="c > 4").read_all()
    want = unified(paths).select(["id", "c"])
    assert got.equals(want.filter(pa.compute.field("c") > 4))


def test_a_renamed_column_is_said(workdir: Path) -> None:
    (workdir / "data").mkdir()
    pq.write_table(pa.table({"id": [1], "userid": [7]}), workdir / "data" / "d1.parquet")
    pq.write_table(pa.table({"id": [2], "user_id": [8]}), workdir / "data" / "d2.parquet")
    with pytest.raises(DataError) as info:
        ReadParquet(path=str(workdir / "data")).check_files()
    assert ("if 'userid' became 'user_id' in later files: `missing: null`, then a derive "
            "of `user_id: coalesce(user_id, userid)`") in info.value.hint


def test_hive_folders_the_filter_keeps_are_the_files_that_matter(workdir: Path) -> None:
    """A daily job reading `ds = '<today>'` of a folder whose column came on day 2 reads
    today's files, which agree; a backfill of day 1 is told the column is in other days'
    files only. The folders' column is never a file's."""
    root = workdir / "events"
    for ds, cols in (("1", {"id": [1, 2]}), ("2", {"id": [3], "c": [0.5]}),
                     ("3", {"id": [4], "c": [1.5]})):
        (root / f"ds={ds}").mkdir(parents=True)
        pq.write_table(pa.table(cols), root / f"ds={ds}" / "f.parquet")
    today = ReadParquet(path=str(root), filter="ds = 3").read_all()
    assert today.to_pydict() == {"id": [4], "c": [1.5], "ds": [3]}
    with pytest.raises(DataError) as info:
        ReadParquet(path=str(root), filter="ds = 1").check_files()
    assert (f"'c' is in none of the 1 file read (e.g. {root / 'ds=1' / 'f.parquet'}); only "
            f"in files the filter leaves out, such as {root / 'ds=2' / 'f.parquet'}"
            ) in str(info.value)
    every = ReadParquet(path=str(root), missing="null").read_all()
    assert every.to_pydict() == {"id": [1, 2, 3, 4], "c": [None, None, 0.5, 1.5],
                                 "ds": [1, 1, 2, 3]}


def test_a_step_after_the_read_sees_the_later_files_columns(workdir: Path) -> None:
    """The read's schema is every file's columns (it was the first file's: a column only
    later files had was 'not in the input')."""
    paths = days(workdir / "data")
    path = write_pipeline(workdir, """
        pipeline: p
        steps:
          - id: events
            op: read_parquet
            path: data
            columns: [id, c]
          - op: filter
            where: "c > 1"
        """)
    (problem,) = plan_file(path).problems
    assert problem.line == 6 and "'c' is in 4 of the 6 files read" in problem.message
    assert not plan_file(path, text=path.read_text().replace(
        "[id, c]", "[id, c]\n    missing: null")).problems
    with pytest.raises(ValidationFailed):
        run(path)
    assert len(paths) == 6


def test_a_column_of_nulls_only_takes_a_later_files_type(workdir: Path) -> None:
    """A first day whose column held no value (written as Arrow's null type, as pandas
    writes an all-None column) does not fix the column's type: the next day's does."""
    (workdir / "data").mkdir()
    first = pa.table({"id": [1], "note": pa.nulls(1)})
    later = pa.table({"id": [2], "note": ["late"]})
    pq.write_table(first, workdir / "data" / "d1.parquet")
    pq.write_table(later, workdir / "data" / "d2.parquet")
    got = ReadParquet(path=str(workdir / "data")).read_all()
    assert got.equals(pa.concat_tables([first, later], promote_options="permissive"))
    assert got.schema.field("note").type == pa.string()


def test_sparks_name_is_told_the_one_here(workdir: Path) -> None:
    days(workdir / "data")
    path = write_pipeline(workdir, COPY.format(extra="\n        merge_schema: true"))
    problems = [p.message for p in plan_file(path).problems]
    assert any(m.startswith("unknown parameter 'merge_schema'; write `missing: null` here")
               for m in problems), problems


def test_many_columns_are_not_listed_in_the_hint(workdir: Path) -> None:
    (workdir / "data").mkdir()
    wide = {f"c{i:02d}": [i] for i in range(20)}
    pq.write_table(pa.table(wide), workdir / "data" / "d1.parquet")
    pq.write_table(pa.table({**wide, "added": [1]}), workdir / "data" / "d2.parquet")
    with pytest.raises(DataError) as info:
        ReadParquet(path=str(workdir / "data")).check_files()
    assert info.value.hint.endswith("or list the columns to read in `columns:`, without "
                                    "'added'")
