"""Benchmark cases for ``deduplicate`` (one row per key, the latest by an order column;
sluice's second shuffle step): sluice against the way every user of each engine keeps
the latest row of a key, on the same Parquet files.

The data (``updates``, made by ``updates``): a table of updates to customers, ``rows /
10`` customers (an int64 key, drawn at random, so every file holds most keys and a
customer has ~10 updates, Poisson-spread), an ``updated_at`` UTC timestamp on the hour
over 90 days (a batch load's stamp: a customer's latest time is shared by two of its
updates for ~0.2% of the customers) and six more columns: a plan (5 strings), a login
count (int64) and four floats (``risk`` 1% null); several files of 250,000-row groups,
so each engine sees several partitions. Every side reads them, keeps per customer the
row of the latest ``updated_at`` (any one of a tie) and writes it as Parquet:

* ``deduplicate``: read_parquet -> deduplicate (by customer_id, order updated_at, keep
  last) -> write_parquet on the local engine, against the pyarrow floor: a dataset read,
  each key's dictionary code (Arrow's hash), its latest time by NumPy's
  ``maximum.at``, one row of each key at it by a scatter of row numbers (of a tie,
  whichever NumPy writes last: no sort, no second group-by) and a ``take``; one
  Parquet file out;
* ``spark_deduplicate``: the pipeline on the Spark engine, against what a Spark user
  writes to keep the latest row: ``row_number()`` over a ``Window`` partitioned by the
  key and ordered by ``updated_at`` descending, the rows numbered 1 kept, +
  ``write.parquet``, in a session made the same way (``bench/spark_cases.py``:
  ``SparkEngine``, loopback only). ``dropDuplicates([key])`` would be cheaper but keeps
  an arbitrary row of each key, not the latest. Spark's time includes its JVM's
  start-up on both sides, and the peak memory is the Python process's only (not the
  JVM's): compare times, not memory.

After the sides (untimed), ``check_*`` reads both outputs back and compares them: the
same number of rows, one row per key on each side, the same keys, each key's kept
``updated_at`` equal, and for every key whose latest time is one row's alone in the
input (ties keep the row of the smallest hash in sluice, any one in the references),
every column of the kept row equal; a difference fails the run. Run:

    python -m bench deduplicate --rows 2000000 --repeat 3
    python -m bench spark_deduplicate --rows 1000000 --repeat 3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.aggregate_cases import alike, run_shuffle_case, stop_if, write_generated

KEY = "customer_id"
ORDER = "updated_at"
ROWS_PER_KEY = 10
PLANS = ("basic", "standard", "premium", "trial", "enterprise")
START = "2026-01-01T00:00:00"
HOURS = 90 * 24  # updated_at on the hour over 90 days: ~10 updates a key, some ties
HOUR_US = 3600 * 10**6
COLUMNS = [KEY, ORDER, "plan", "logins", "balance", "credit_limit", "risk", "discount"]


def updates(out: Path, rows: int, files: int) -> None:
    """``rows`` updates in ``files`` Parquet files."""
    import numpy as np
    import pyarrow as pa

    start = np.datetime64(START, "us").astype(np.int64)

    def make(rng: Any, n: int, customers: int) -> Any:
        return pa.table({
            KEY: pa.array(rng.integers(0, customers, n, dtype=np.int64)),
            ORDER: pa.array(start + rng.integers(0, HOURS, n) * HOUR_US,
                            pa.timestamp("us", "UTC")),
            "plan": pa.array(np.array(PLANS)[rng.integers(0, len(PLANS), n)]),
            "logins": pa.array(rng.poisson(20, n).astype(np.int64)),
            "balance": pa.array(np.round(rng.normal(500.0, 300.0, n), 2)),
            "credit_limit": pa.array(rng.choice([1000.0, 2500.0, 5000.0, 10000.0], n)),
            "risk": pa.array(rng.random(n), mask=rng.random(n) < 0.01),
            "discount": pa.array(np.round(rng.random(n) * 0.3, 3)),
        })

    write_generated(out, rows, files, 20261130, ROWS_PER_KEY, make)


# ---------------------------------------------------------------------- sluice sides

def _sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    """Each customer's latest update (``run_shuffle_case``)."""
    run_shuffle_case(data, scratch, case, engine, f"""          - id: shuffled
            op: deduplicate
            by: [{KEY}]
            order: {ORDER}""")


def deduplicate_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "deduplicate", "local")


def spark_deduplicate_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_deduplicate", "spark")


# ---------------------------------------------------------------------- references

def deduplicate_pyarrow_floor(data: Path, scratch: Path) -> None:
    """The cheapest exact way found in pyarrow + NumPy: each key's dictionary code
    (``dictionary_encode``, Arrow's hash; no assumption on the keys' range), its latest
    time by ``np.maximum.at``, and per key one row at that time: the row numbers of the
    rows at it scattered into a slot per key (of a tie, whichever is written last), then
    one ``take``. At 200,000 rows (20,000 keys) this takes 3 ms, against 30 ms for a sort by
    (key, time descending) keeping each key's first row, 8 ms for ``group_by`` max joined
    back to the rows (and a second ``group_by`` for one row of a tie) and 9 ms with
    ``np.unique``'s codes (a sort) in place of Arrow's hash; the read and the write are
    most of the side."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from bench.cases import fresh

    out = fresh(scratch / "deduplicate_reference")
    out.mkdir()
    table = ds.dataset(data, format="parquet").to_table()
    pq.write_table(table.take(_latest_rows(table)), out / "part-00000.parquet")


def _latest_rows(table: Any) -> Any:
    """The row numbers of one row per key at the key's latest ``ORDER`` (no nulls in
    the data); the floor's whole computation."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = pc.dictionary_encode(table[KEY].combine_chunks()).indices.to_numpy()
    ts = pc.cast(table[ORDER], pa.int64()).to_numpy()
    latest = np.full(int(codes.max(initial=-1)) + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, codes, ts)
    at = np.flatnonzero(ts == latest[codes])
    row = np.empty(len(latest), dtype=np.int64)
    row[codes[at]] = at  # every key has a row at its latest time: every slot is written
    return pa.array(row)


def spark_deduplicate_spark(data: Path, scratch: Path) -> None:
    """row_number() over a Window by key, latest first; the rows numbered 1 kept."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_deduplicate_reference")
    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        latest_first = Window.partitionBy(KEY).orderBy(F.col(ORDER).desc())
        result = (frame.withColumn("_rank", F.row_number().over(latest_first))
                  .where(F.col("_rank") == 1).drop("_rank"))
        result.write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


# ---------------------------------------------------------------------- checks

def _load(path: Path) -> Any:
    """An output's ``COLUMNS`` sorted by key, the times as int64 microseconds (Spark
    may write them as INT96, read back as nanoseconds) and the keys as int64."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(path, format="parquet").to_table(columns=COLUMNS)
    columns = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(column.type):
            column = pc.cast(pc.cast(column, pa.timestamp("us", column.type.tz)), pa.int64())
        elif pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        elif name == KEY:
            column = pc.cast(column, pa.int64())
        columns.append(column)
    return pa.table(columns, names=table.column_names).sort_by(KEY).combine_chunks()


def _same(data: Path, ours: Path, reference: Path) -> None:
    """Both outputs hold one row per key, the same keys, the same time per key, and the
    same row for every key whose latest time is one input row's alone; SystemExit says
    what differs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    a, b = _load(ours), _load(reference)
    problems = []
    for side, t in ((ours.name, a), (reference.name, b)):
        keys = t[KEY].to_numpy()
        if len(keys) > 1 and not (np.diff(keys) > 0).all():
            problems.append(f"{side}: {int((np.diff(keys) == 0).sum()):,} repeated keys")
    ka, kb = a[KEY].to_numpy(), b[KEY].to_numpy()
    if a.num_rows != b.num_rows or not np.array_equal(ka, kb):
        problems.append(f"keys: {a.num_rows:,} against {b.num_rows:,} rows, or different keys")
    stop_if(problems, ours, reference)
    ta, tb = a[ORDER].to_numpy(), b[ORDER].to_numpy()
    if not np.array_equal(ta, tb):
        i = int(np.flatnonzero(ta != tb)[0])
        problems.append(f"{ORDER}: {int((ta != tb).sum()):,} of {len(ta):,} keys differ "
                        f"(key {ka[i]}: {ta[i]} against {tb[i]} us)")

    # against the input: the same keys, no row later than its key's kept time, and the
    # keys whose kept time is one input row's alone (there, whole rows must agree)
    source = ds.dataset(data, format="parquet").to_table(columns=[KEY, ORDER])
    keys = pc.cast(source[KEY], pa.int64()).to_numpy()
    ts = pc.cast(source[ORDER], pa.int64()).to_numpy()
    if not np.array_equal(np.unique(keys), ka):
        problems.append("the outputs' keys are not the input's")
    else:
        kept = ta[np.searchsorted(ka, keys)]  # each input row's key's kept time
        if (ts > kept).any():
            problems.append(f"{int((ts > kept).sum()):,} input rows are later than their "
                            "key's kept time")
        at_kept, rows_at = np.unique(keys[ts == kept], return_counts=True)
        if len(at_kept) != len(ka):
            problems.append(f"{len(ka) - len(at_kept):,} kept times are no input row's")
    stop_if(problems, ours, reference)
    tied = np.isin(ka, at_kept[rows_at > 1])
    single = pa.array(~tied)
    for name in COLUMNS[2:]:
        x, y = a[name].filter(single), b[name].filter(single)
        same = alike(x, y)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"{name}: {int((~same).sum()):,} of {len(same):,} untied keys "
                            f"differ (key {ka[~tied][i]}: {x[i].as_py()!r} against "
                            f"{y[i].as_py()!r})")
    stop_if(problems, ours, reference)
    print(f"  check: {len(ka):,} keys agree ({ORDER} of every key; all {len(COLUMNS)} "
          f"columns of the {int((~tied).sum()):,} keys whose latest time is one row's, "
          f"{int(tied.sum()):,} ties)")


def check_deduplicate(data: Path, scratch: Path) -> None:
    _same(data, scratch / "deduplicate_sluice", scratch / "deduplicate_reference")


def check_spark_deduplicate(data: Path, scratch: Path) -> None:
    _same(data, scratch / "spark_deduplicate_sluice", scratch / "spark_deduplicate_reference")
