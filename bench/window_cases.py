"""Benchmark cases for ``window`` (SQL's window functions per key in order; a shuffle:
every row sent by a hash of its key to an output partition through Arrow IPC files in
the scratch folder, ``pipelines/shuffle.py``, where each key's rows are sorted and the
columns computed): sluice against the window every user of each engine would write, on
the same Parquet files.

The data (``window_events``, made by ``window_events``): events like those of
``aggregate``'s cases (``bench/aggregate_cases.py``), ``rows / 20`` customers (an int64
key, drawn at random, so every file holds most keys), a ``ts`` UTC timestamp over a
year, a kind, a plan and an ``amount`` (float64, 1% null), with one change: every ``ts``
is distinct (a random multiple of ``rows`` microseconds plus the row's own number,
below ``rows``), so a customer's events have one order on every side (sluice orders
ties by a hash of the row, pandas' stable sort and Spark otherwise) and the outputs
compare row by row. Several files of 250,000-row groups, so each engine sees several
partitions. Every side reads them, adds per customer in ``ts`` order the columns of
``COLUMNS`` (the row's number, the previous event's time, the running spend, the mean
of the last 3 amounts and the spend of the 7 days up to the event: the events less
than 7 days before it) to every event and writes the rows as Parquet:

* ``window``: read_parquet -> window (by customer_id, order ts) -> write_parquet on the
  local engine, against pandas as a pandas user writes it: ``pq.read_table(...)
  .to_pandas()``, ``sort_values([customer_id, ts], kind="stable")``, ``groupby``'s
  ``cumcount() + 1``, ``shift(1)``, ``cumsum`` (of the amounts with nulls as 0, null
  until a customer's first amount: SQL's sum of no values), ``rolling(3,
  min_periods=1).mean()`` and a ``rolling("7D").sum()`` (the rows of ``(t - 7 days,
  t]``, sluice's span) over the customers' times laid end to end, the same windows as
  ``groupby().rolling("7D", on="ts")`` in a twelfth of its time (``_week``); one
  Parquet file out (``to_parquet``);
* ``spark_window``: the pipeline on the Spark engine, against
  ``Window.partitionBy(customer_id).orderBy(ts)`` with ``row_number``, ``lag``, ``sum``
  over ``rowsBetween(unboundedPreceding, currentRow)``, ``avg`` over ``rowsBetween(-2,
  currentRow)`` and ``sum`` over the window ordered by ``unix_micros(ts)``,
  ``rangeBetween(-(7 days in us - 1), currentRow)`` (less than 7 days before, to the
  microsecond) + ``write.parquet``, in a session made the same way
  (``bench/spark_cases.py``: ``SparkEngine``, loopback only). Spark's time includes its
  JVM's start-up on both sides, and the peak memory is the Python process's only (not
  the JVM's): compare times, not memory.

The sluice sides record in ``<scratch>/<case>_sluice_<engine>.json`` (the harness's
``detail``) the run's seconds, the shuffle step's (stage 1: the rows read, hashed and
written to the scratch folder; stage 2, the buckets read, sorted and the columns
computed, runs within write_parquet's step) and the shuffle's sizes; the pandas side
its read, sort, window and write seconds.

After the sides (untimed), ``check_*`` reads both outputs back, sorts them by
``(customer_id, ts, n)`` and compares every column, the input's and the new ones: the
row numbers, times, keys and strings exactly, floats to 1e-9 (relative; a null and a
NaN are the same missing value), after the checks that both hold every input row once;
a difference fails the run. Run:

    python -m bench window --rows 2000000 --repeat 3
    python -m bench spark_window --rows 1000000 --repeat 3
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

ORDER = "ts"  # event_columns' time
WEEK_US = 7 * 86_400 * 10**6
INPUT_COLUMNS = [KEY, ORDER, "kind", "plan", "amount"]
# output column: sluice's window function (the reference sides compute the same, by name)
COLUMNS = {
    "n": "row_number()",
    "prev_ts": f"lag({ORDER})",
    "spend": "cum_sum(amount)",
    "last3": "rolling_mean(amount, 3)",
    "week": "rolling_sum(amount, '7 days')",
}
FLOATS = {"amount", "spend", "last3", "week"}


def window_events(out: Path, rows: int, files: int) -> None:
    """``rows`` events in ``files`` Parquet files, every ``ts`` distinct."""
    import numpy as np
    import pyarrow as pa

    start = np.datetime64(START, "us").astype(np.int64)
    step = max(1, rows)  # ts: a random multiple of ``rows`` us + the row's number
    first_row = [0]  # the rows of the next file are numbered from here

    def make(rng: Any, n: int, customers: int) -> Any:
        number = np.arange(first_row[0], first_row[0] + n, dtype=np.int64)
        first_row[0] += n
        ts = start + rng.integers(0, YEAR_US // step, n) * step + number  # drawn first
        return pa.table(event_columns(rng, n, customers, lambda: ts))

    write_generated(out, rows, files, 20261206, ROWS_PER_KEY, make)


# ---------------------------------------------------------------------- sluice sides

def _sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    """The window of ``COLUMNS`` by customer in ``ts`` order (``run_shuffle_case``)."""
    wanted = "\n".join(f"              {name}: \"{text}\"" for name, text in COLUMNS.items())
    run_shuffle_case(data, scratch, case, engine, f"""          - id: shuffled
            op: window
            by: [{KEY}]
            order: [{ORDER}]
            columns:
{wanted}""")


def window_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "window", "local")


def spark_window_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_window", "spark")


# ---------------------------------------------------------------------- references

def window_pandas(data: Path, scratch: Path) -> None:
    """pandas as a pandas user writes it: one frame, a stable sort, grouped window
    functions, one Parquet file."""
    import pyarrow.parquet as pq

    from bench.cases import fresh

    out = fresh(scratch / "window_reference")
    out.mkdir()
    t0 = time.perf_counter()
    frame = pq.read_table(data).to_pandas()
    t1 = time.perf_counter()
    frame = frame.sort_values([KEY, ORDER], kind="stable", ignore_index=True)
    t2 = time.perf_counter()
    grouped = frame.groupby(KEY, sort=False)
    frame["n"] = grouped.cumcount() + 1
    frame["prev_ts"] = grouped[ORDER].shift(1)
    # SQL's running sum: nulls skipped, null until the customer's first amount (pandas'
    # cumsum leaves NaN on the null rows themselves)
    known = frame["amount"].notna()
    spend = frame["amount"].fillna(0.0).groupby(frame[KEY], sort=False).cumsum()
    frame["spend"] = spend.where(known.groupby(frame[KEY], sort=False).cumsum() > 0)
    # groupby().rolling() gives (key, row) in key order: the frame's own order (sorted
    # by key), so the values line up with its rows
    frame["last3"] = grouped["amount"].rolling(3, min_periods=1).mean().to_numpy()
    frame["week"] = _week(frame, grouped)
    t3 = time.perf_counter()
    frame.to_parquet(out / "part-00000.parquet", index=False)
    _record(scratch, "window_pandas", read_seconds=round(t1 - t0, 6),
            sort_seconds=round(t2 - t1, 6), window_seconds=round(t3 - t2, 6),
            write_seconds=round(time.perf_counter() - t3, 6))


def _week(frame: Any, grouped: Any) -> Any:
    """Each row's sum of the amounts of ``(ts - 7 days, ts]`` of its customer: one
    ``rolling("7D")`` over the customers' times laid end to end (the frame is sorted by
    customer, then time: each customer's times from its first, then a gap of more than
    7 days), the same windows as ``grouped.rolling("7D", on=ts)`` (pandas' grouped
    indexer: 12x slower, 2.4 s against 0.20 s at 2,000,000 rows), which it falls back
    to where the line would pass int64 microseconds."""
    import numpy as np
    import pandas as pd

    us = frame[ORDER].dt.as_unit("us").astype(np.int64).to_numpy()
    code = grouped.ngroup().to_numpy()  # 0, 1, ... in the frame's (key) order
    heads = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    offset = us - us[heads][code]
    width = np.maximum.reduceat(offset, heads) + WEEK_US + 1
    if width.sum(dtype=np.float64) > 2.0**62:
        return grouped.rolling("7D", on=ORDER)["amount"].sum().to_numpy()
    line = (np.cumsum(width) - width)[code] + offset
    return pd.Series(frame["amount"].to_numpy(), index=pd.DatetimeIndex(
        line.astype("datetime64[us]"))).rolling("7D").sum().to_numpy()


def spark_window_spark(data: Path, scratch: Path) -> None:
    """Window.partitionBy(key).orderBy(ts): the frames of ``COLUMNS`` in Spark's own
    functions, in a session made as sluice makes its own."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_window_reference")
    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        by_time = Window.partitionBy(KEY).orderBy(ORDER)
        # the 7 days before, to the microsecond: less than WEEK_US before the row's time
        by_us = Window.partitionBy(KEY).orderBy(F.unix_micros(F.col(ORDER)))
        result = frame.select(
            "*",
            F.row_number().over(by_time).alias("n"),
            F.lag(ORDER, 1).over(by_time).alias("prev_ts"),
            F.sum("amount").over(by_time.rowsBetween(Window.unboundedPreceding,
                                                     Window.currentRow)).alias("spend"),
            F.avg("amount").over(by_time.rowsBetween(-2, Window.currentRow)).alias("last3"),
            F.sum("amount").over(by_us.rangeBetween(-(WEEK_US - 1), Window.currentRow))
            .alias("week"))
        result.write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


# ---------------------------------------------------------------------- checks

def _load(path: Path) -> Any:
    """An output's input columns and ``COLUMNS`` sorted by (customer_id, ts, n), one type
    per column (``load_output``)."""
    return load_output(path, [*INPUT_COLUMNS, *COLUMNS], [KEY, ORDER, "n"], FLOATS)


def _same(data: Path, ours: Path, reference: Path) -> None:
    """Both outputs hold every input row once (a key and time each: the times are
    distinct), with the same values in every column; SystemExit says what differs."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    a, b = _load(ours), _load(reference)
    source = ds.dataset(data, format="parquet").to_table(columns=[KEY, ORDER])
    problems = []
    for side, t in ((ours.name, a), (reference.name, b)):
        times = pc.count_distinct(t[ORDER]).as_py()
        if t.num_rows != source.num_rows or times != source.num_rows:
            problems.append(f"{side}: {t.num_rows:,} rows, {times:,} distinct times of "
                            f"{source.num_rows:,} rows")
    stop_if(problems, ours, reference)
    for name in [*INPUT_COLUMNS, *COLUMNS]:
        x, y = a[name], b[name]
        if name in FLOATS:
            nx = x.to_numpy(zero_copy_only=False)  # null as NaN
            ny = y.to_numpy(zero_copy_only=False)
            same = np.isclose(nx, ny, rtol=1e-9, atol=0, equal_nan=True)
        else:
            same = alike(x, y)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"{name}: {int((~same).sum()):,} of {len(same):,} rows differ "
                            f"(customer {a[KEY][i].as_py()}, ts {a[ORDER][i].as_py()} us: "
                            f"{x[i].as_py()!r} against {y[i].as_py()!r})")
    stop_if(problems, ours, reference)
    keys = pc.count_distinct(a[KEY]).as_py()
    empty = int(pc.sum(pc.is_null(a["spend"])).as_py() or 0)
    print(f"  check: {a.num_rows:,} rows of {keys:,} customers x "
          f"{len(INPUT_COLUMNS) + len(COLUMNS)} columns agree ({empty:,} rows before a "
          "customer's first amount: a null running sum)")


def check_window(data: Path, scratch: Path) -> None:
    _same(data, scratch / "window_sluice", scratch / "window_reference")


def check_spark_window(data: Path, scratch: Path) -> None:
    _same(data, scratch / "spark_window_sluice", scratch / "spark_window_reference")
