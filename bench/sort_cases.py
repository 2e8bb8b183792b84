"""Benchmark cases for ``sort`` (the rows in order across every output partition, Spark's
``orderBy``; a range shuffle: a pass samples the rows for the ranges' bounds, then every
row is sent by its range to an output partition through Arrow IPC files in the scratch
folder, ``pipelines/shuffle.py``, where each partition is sorted): sluice against the
sort every user of each engine would write, on the same Parquet files.

The data (``sort_events``, made by ``sort_events``): events like those of ``window``'s
cases (``bench/window_cases.py``), ``rows / 20`` customers (an int64 key, drawn at
random, so every file holds most keys), a ``ts`` UTC timestamp over a year, a kind, a
plan and an ``amount`` (float64, rounded to cents, 1% null), and an ``event_id`` (int64,
the row's number: unique). Several files of 250,000-row groups, so each engine sees
several partitions. Every side reads them, orders the rows by ``BY`` (the customer, its
largest amounts first, nulls last, then the event: a customer's amounts repeat and its
null amounts tie, so ``event_id`` makes the order total, one order on every side, and
the outputs compare row by row in order) and writes them as Parquet:

* ``sort``: read_parquet -> sort (by customer_id, "amount desc", event_id) ->
  write_parquet on the local engine, against the pyarrow floor: a dataset read whole
  (``pyarrow.dataset(...).to_table()``), ``Table.sort_by`` (Arrow's multi-key sort, nulls
  at the end) and ``pq.write_table``: one Parquet file out. The floor needs no shuffle
  (the table fits in memory): it is the price of the sort itself, not of a sort of more
  rows than memory holds;
* ``spark_sort``: the pipeline on the Spark engine, against ``df.orderBy(customer_id,
  amount desc, event_id)`` (nulls last, as sluice's; Spark's own range partitioning and
  sort) + ``write.parquet``, in a session made the same way (``bench/spark_cases.py``:
  ``SparkEngine``, loopback only). Spark's time includes its JVM's start-up on both
  sides, and the peak memory is the Python process's only (not the JVM's): compare
  times, not memory.

The sluice sides record in ``<scratch>/<case>_sluice_<engine>.json`` (the harness's
``detail``) the run's seconds, the shuffle step's (stage 1: the rows read, sampled,
placed by range and written to the scratch folder; stage 2, the buckets read and
sorted, runs within write_parquet's step) and the shuffle's sizes; the pyarrow side
its read, sort and write seconds.

After the sides (untimed), ``check_*`` reads both outputs back, each side's files one
after another in the order of their names (sluice's ``part-<run id>-<partition>``,
Spark's ``part-<partition>-...``), and checks that both hold every input row once (an
``event_id`` each), that the ``BY`` columns run in the same sequence on both sides
(the whole order, across the files), and then, both sorted by ``event_id``, that every
column holds the same values (exactly: a sort copies values; times, keys and strings in
one type per column, a null and a NaN the same missing value); a difference fails the
run. Run:

    python -m bench sort --rows 2000000 --repeat 3
    python -m bench spark_sort --rows 1000000 --repeat 3
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.aggregate_cases import (
    KEY,
    ROWS_PER_KEY,
    START,
    YEAR_US,
    _record,
    alike,
    event_columns,
    load_output,
    run_shuffle_case,
    stop_if,
    write_generated,
)

AMOUNT = "amount"
EVENT_ID = "event_id"
COLUMNS = [EVENT_ID, KEY, "ts", "kind", "plan", AMOUNT]
# the order: (column, descending); nulls last on every side
BY = [(KEY, False), (AMOUNT, True), (EVENT_ID, False)]


def sort_events(out: Path, rows: int, files: int) -> None:
    """``rows`` events in ``files`` Parquet files, every ``event_id`` distinct."""
    import numpy as np
    import pyarrow as pa

    start = np.datetime64(START, "us").astype(np.int64)
    first_row = [0]  # the rows of the next file are numbered from here

    def make(rng: Any, n: int, customers: int) -> Any:
        number = np.arange(first_row[0], first_row[0] + n, dtype=np.int64)
        first_row[0] += n
        return pa.table({EVENT_ID: pa.array(number), **event_columns(
            rng, n, customers, lambda: start + rng.integers(0, YEAR_US, n))})

    write_generated(out, rows, files, 20261207, ROWS_PER_KEY, make)


# ---------------------------------------------------------------------- sluice sides

def _sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    """The rows in the order of ``BY`` (``run_shuffle_case``)."""
    by = ", ".join(f'"{name} desc"' if down else name for name, down in BY)
    run_shuffle_case(data, scratch, case, engine, f"""          - id: shuffled
            op: sort
            by: [{by}]""")


def sort_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "sort", "local")


def spark_sort_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_sort", "spark")


# ---------------------------------------------------------------------- references

def sort_pyarrow_floor(data: Path, scratch: Path) -> None:
    """The table read whole, Arrow's multi-key sort (nulls at the end), one file out."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from bench.cases import fresh

    out = fresh(scratch / "sort_reference")
    out.mkdir()
    t0 = time.perf_counter()
    table = ds.dataset(data, format="parquet").to_table()
    t1 = time.perf_counter()
    table = table.sort_by([(name, "descending" if down else "ascending", "at_end")
                           for name, down in BY])
    t2 = time.perf_counter()
    pq.write_table(table, out / "part-00000.parquet")
    _record(scratch, "sort_pyarrow_floor", read_seconds=round(t1 - t0, 6),
            sort_seconds=round(t2 - t1, 6), write_seconds=round(time.perf_counter() - t2, 6))


def spark_sort_spark(data: Path, scratch: Path) -> None:
    """df.orderBy (nulls last, as sluice's) + write.parquet, in a session made as sluice
    makes its own."""
    from pyspark.sql import functions as F

    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_sort_reference")
    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        order = [F.col(name).desc_nulls_last() if down else F.col(name).asc_nulls_last()
                 for name, down in BY]
        frame.orderBy(*order).write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


# ---------------------------------------------------------------------- checks

def _files(path: Path) -> list[Path]:
    """An output's data files in the order of their names (not the hidden ``.crc`` or
    ``_SUCCESS`` files beside them)."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".parquet"
                  and not p.name.startswith((".", "_")))


def _in_order(path: Path) -> Any:
    """The ``BY`` columns of an output's files read one after another, integers as
    int64, floats as float64 with NaN as null."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names = [name for name, _ in BY]
    files = _files(path)
    if not files:
        raise SystemExit(f"bench: {path.name} holds no Parquet files")
    table = pa.concat_tables([pq.read_table(f, columns=names) for f in files])
    columns = []
    for column in table.columns:
        if pa.types.is_floating(column.type):
            column = pc.cast(column, pa.float64())
            column = pc.if_else(pc.is_nan(column), None, column)
        else:
            column = pc.cast(column, pa.int64())
        columns.append(column)
    return pa.table(columns, names=names).combine_chunks()


def _same(data: Path, ours: Path, reference: Path) -> None:
    """Both outputs hold every input row once, in the same order of ``BY`` across their
    files, with the same values in every column; SystemExit says what differs."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    total = ds.dataset(data, format="parquet").count_rows()
    a, b = _in_order(ours), _in_order(reference)
    problems = []
    for side, t in ((ours.name, a), (reference.name, b)):
        ids = pc.count_distinct(t[EVENT_ID]).as_py()
        if t.num_rows != total or ids != total:
            problems.append(f"{side}: {t.num_rows:,} rows, {ids:,} distinct events of "
                            f"{total:,} rows")
    stop_if(problems, ours, reference)
    # the order: the BY columns position by position, across the files
    for name, _ in BY:
        same = alike(a[name], b[name])
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"order of {name}: {int((~same).sum()):,} of {len(same):,} "
                            f"places differ (first at row {i:,}: "
                            + ", ".join(f"{n}={a[n][i].as_py()!r}" for n, _ in BY)
                            + " against "
                            + ", ".join(f"{n}={b[n][i].as_py()!r}" for n, _ in BY) + ")")
    stop_if(problems, ours, reference)
    # the rows: every column, both sorted by the event (load_output: one type a column)
    x_all = load_output(ours, COLUMNS, [EVENT_ID])
    y_all = load_output(reference, COLUMNS, [EVENT_ID])
    for name in COLUMNS:
        x, y = x_all[name], y_all[name]
        same = alike(x, y)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"{name}: {int((~same).sum()):,} of {len(same):,} rows differ "
                            f"(event {x_all[EVENT_ID][i].as_py()}: {x[i].as_py()!r} against "
                            f"{y[i].as_py()!r})")
    stop_if(problems, ours, reference)
    keys = pc.count_distinct(a[KEY]).as_py()
    empty = int(pc.sum(pc.is_null(a[AMOUNT])).as_py() or 0)
    n, m = len(_files(ours)), len(_files(reference))
    print(f"  check: {a.num_rows:,} rows of {keys:,} customers x {len(COLUMNS)} columns "
          f"agree, in the same order across {n} file{'s' * (n != 1)} ({ours.name}) and "
          f"{m} file{'s' * (m != 1)} ({reference.name}); {empty:,} null amounts, last "
          "of their customer's")


def check_sort(data: Path, scratch: Path) -> None:
    _same(data, scratch / "sort_sluice", scratch / "sort_reference")


def check_spark_sort(data: Path, scratch: Path) -> None:
    _same(data, scratch / "spark_sort_sluice", scratch / "spark_sort_reference")
