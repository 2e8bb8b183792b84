"""Benchmark cases for ``aggregate`` (a group-by, sluice's shuffle step): sluice against
the group-by every user of each engine would write, on the same Parquet files.

The data (``events``, made by ``events``): one row per event of a customer, ``rows / 20``
customers (an int64 key, drawn at random, so every file holds most keys), a UTC
timestamp, a kind (``refund`` ~10%), a plan (5 values) and an amount (1% null); several
files of 250,000-row groups, so each engine sees several partitions. Every side reads
them, computes per customer the same columns (``COLUMNS``: a row count, sum, mean,
sample standard deviation, min and max of the amount, the refunds, the distinct plans
and the plan at the latest timestamp) and writes them as Parquet:

* ``aggregate``: read_parquet -> aggregate -> write_parquet on the local engine, against
  the pyarrow floor: a dataset read, ``Table.group_by(...).aggregate(...)`` (pyarrow's
  hash aggregations; threads on) and, for ``max_by``, which pyarrow lacks, its cheapest
  exact form found: each key's latest time in NumPy, then the largest plan at it in the
  same group-by (a sort by key and time is 2-3x slower); one Parquet file out;
* ``dask_aggregate``: the same pipeline on the Dask engine, against ``dd.read_parquet`` +
  ``groupby().agg()`` + ``to_parquet``, both on a LocalCluster of single-threaded workers
  (``bench/dask_cases.py``). Dask's ``agg`` has no distinct count and no ``max_by``:
  the distinct plans are ``groupby().plan.nunique(split_out=1)`` beside it (one
  output partition each, so they line up without a shuffle), and ``max_by`` is
  left out of both sides (what a Dask user writes for it, a sort or a join on the
  latest time per key, is a shuffle of every row, not an aggregation);
* ``spark_aggregate``: the pipeline on the Spark engine, against ``groupBy().agg()``
  (``count``, ``sum``, ``avg``, ``stddev``, ``min``, ``max``, ``count_if``,
  ``count_distinct``, ``max_by``) + ``write.parquet`` in a session made the same way
  (``bench/spark_cases.py``: ``SparkEngine``, loopback only). Spark's time includes
  its JVM's start-up on both sides, and the peak memory is the Python process's only
  (not the JVM's): compare times, not memory.

After the sides (untimed), ``check_*`` reads both outputs back, sorts them by the key
and compares every column: counts, extremes, distinct counts and plans exactly, sums,
means and deviations to 1e-9 (relative); a difference fails the run. Run:

    python -m bench aggregate --rows 2000000 --repeat 3
    python -m bench dask_aggregate --rows 1000000 --repeat 3
    python -m bench spark_aggregate --rows 1000000 --repeat 3
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEY = "customer_id"
ROWS_PER_KEY = 20
ROW_GROUP_ROWS = 250_000
KINDS = ("purchase", "refund", "view")
PLANS = ("basic", "standard", "premium", "trial", "enterprise")
START = "2026-01-01T00:00:00"
YEAR_US = 365 * 86_400 * 10**6

# output column: sluice's aggregation (the reference sides compute the same, by name)
COLUMNS = {
    "events": "count()",
    "spend": "sum(amount)",
    "avg_amount": "mean(amount)",
    "sd_amount": "std(amount)",
    "min_amount": "min(amount)",
    "max_amount": "max(amount)",
    "refunds": "count_if(kind == 'refund')",
    "plans": "count_distinct(plan)",
    "last_plan": "max_by(plan, ts)",
}
FLOATS = {"spend", "avg_amount", "sd_amount"}  # sums of floats: equal up to rounding
DASK_COLUMNS = [c for c in COLUMNS if c != "last_plan"]


def write_generated(out: Path, rows: int, files: int, seed: int, rows_per_key: int,
                    make: Callable[[Any, int, int], Any]) -> None:
    """``rows`` rows in ``files`` Parquet files, file i made by ``make(rng, rows of the
    file, customers)`` with its own generator (seed, i), ``rows / rows_per_key``
    customers; written under a temporary name and renamed whole, so an interrupted run
    leaves no half data set for the next."""
    import numpy as np
    import pyarrow.parquet as pq

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    customers = max(1, rows // rows_per_key)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for i in range(files):
        table = make(np.random.default_rng([seed, i]), int(bounds[i + 1] - bounds[i]),
                     customers)
        pq.write_table(table, staging / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
    staging.rename(out)


def events(out: Path, rows: int, files: int) -> None:
    """``rows`` events in ``files`` Parquet files."""
    import numpy as np
    import pyarrow as pa

    start = np.datetime64(START, "us").astype(np.int64)

    def make(rng: Any, n: int, customers: int) -> Any:
        # microseconds over a year: no two events of a customer share a time (at these
        # sizes), so every side's max_by takes the same row
        return pa.table(event_columns(rng, n, customers,
                                      lambda: start + rng.integers(0, YEAR_US, n)))

    write_generated(out, rows, files, 20261129, ROWS_PER_KEY, make)


def event_columns(rng: Any, n: int, customers: int, times: Callable[[], Any]) -> dict[str, Any]:
    """The columns of an events data set (the shuffle cases' ``events``, ``sort_events``,
    ``window_events``): customer, time (``times()``, microseconds since 1970, drawn in
    its place), kind, plan and amount, drawn from ``rng`` in one order, so that each
    data set stays what its seed made."""
    import numpy as np
    import pyarrow as pa

    amount = np.round(rng.gamma(2.0, 20.0, n), 2)
    return {
        KEY: pa.array(rng.integers(0, customers, n, dtype=np.int64)),
        "ts": pa.array(times(), pa.timestamp("us", "UTC")),
        "kind": pa.array(np.array(KINDS)[rng.choice(3, n, p=[0.6, 0.1, 0.3])]),
        "plan": pa.array(np.array(PLANS)[rng.integers(0, len(PLANS), n)]),
        "amount": pa.array(amount, mask=rng.random(n) < 0.01),
    }


# ---------------------------------------------------------------------- sluice sides

def run_shuffle_case(data: Path, scratch: Path, case: str, engine: str, step: str) -> None:
    """read_parquet -> ``step`` (a shuffle step's YAML, id ``shuffled``) -> write_parquet
    on ``engine``; the shuffle's files go under ``scratch`` (the outputs' disk). The
    run's seconds and its shuffle's sizes go to ``<scratch>/<case>_sluice_<engine>.json``."""
    from bench.cases import _pipeline, fresh
    from pipelines.runner import run

    out = fresh(scratch / f"{case}_sluice")
    pipeline = _pipeline(scratch, f"bench_{case}", f"""
        pipeline: bench_{case}
        steps:
          - op: read_parquet
            path: {data}
{step}
          - op: write_parquet
            path: {out}
        """)
    record = run(pipeline, runs_dir=str(scratch / "runs"), engine=engine,
                 scratch=str(scratch / "shuffle"))
    shuffled = record["steps"]["shuffled"]
    _record(scratch, f"{case}_sluice_{engine}", seconds=record["seconds"],
            step_seconds=shuffled.get("wall_seconds"), shuffle=shuffled.get("shuffle"))


def load_output(path: Path, names: list[str], order: list[str],
                floats: Any = ()) -> Any:
    """An output's columns ``names`` (no more) sorted by ``order``, in one type per
    column whichever side wrote it: integers as int64, times as int64 microseconds
    (pandas writes nanoseconds, Spark may write INT96, read back as naive nanoseconds),
    dates as date32, ``floats`` and floating columns as float64 with NaN as null, text
    as string, dictionaries decoded; SystemExit when the columns differ."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    if sorted(dataset.schema.names) != sorted(names):
        raise SystemExit(f"bench: {path.name} has the columns {dataset.schema.names}, not "
                         f"{names}")
    table = dataset.to_table(columns=names)
    columns = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_timestamp(column.type):
            column = pc.cast(pc.cast(column, pa.timestamp("us", "UTC")), pa.int64())
        elif pa.types.is_date(column.type):
            column = pc.cast(column, pa.date32())
        elif name in floats or pa.types.is_floating(column.type):
            column = pc.cast(column, pa.float64())
            column = pc.if_else(pc.is_nan(column), None, column)
        elif pa.types.is_integer(column.type):
            column = pc.cast(column, pa.int64())
        elif pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
            column = pc.cast(column, pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names).sort_by(
        [(name, "ascending") for name in order]).combine_chunks()


def stop_if(problems: list[str], ours: Any, reference: Any) -> None:
    """Stop the benchmark, naming what differs, when the sides' outputs (folders
    ``ours`` and ``reference``) disagree: no results are kept for a run whose sides did
    not do the same work."""
    if problems:
        raise SystemExit(f"bench: the sides disagree ({ours.name} vs {reference.name}): "
                         + "; ".join(problems))


def alike(x: Any, y: Any) -> Any:
    """Per row, whether two columns hold the same value (both null counts as the same),
    as a NumPy bool array."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.or_kleene(pc.and_(pc.is_null(x), pc.is_null(y)), pc.equal(x, y)),
                        False).to_numpy(zero_copy_only=False)


def _sluice(data: Path, scratch: Path, case: str, engine: str,
            columns: list[str] | None = None) -> None:
    """The aggregate of ``columns`` of ``COLUMNS`` by customer (``run_shuffle_case``)."""
    wanted = "\n".join(f"              {name}: \"{COLUMNS[name]}\""
                       for name in (columns or list(COLUMNS)))
    run_shuffle_case(data, scratch, case, engine, f"""          - id: shuffled
            op: aggregate
            by: [{KEY}]
            columns:
{wanted}""")


def _record(scratch: Path, name: str, **values: Any) -> None:
    (scratch / f"{name}.json").write_text(json.dumps(values, indent=1))


def aggregate_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "aggregate", "local")


def dask_aggregate_sluice_dask(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "dask_aggregate", "dask", DASK_COLUMNS)


def spark_aggregate_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_aggregate", "spark")


# ---------------------------------------------------------------------- references

def aggregate_pyarrow_floor(data: Path, scratch: Path) -> None:
    """pyarrow's hash group-by, max_by included: each key's latest time (NumPy's
    ``maximum.at`` over the key's dictionary codes), then the largest plan of the rows at
    it (sluice's tie rule) in the same group-by. A sort by (key, time) taking the last
    row of each key gives the same plans in 2-3x the group-by's time (0.31-0.51 s
    against 0.14 s for the whole aggregation of 1M rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from bench.cases import fresh

    out = fresh(scratch / "aggregate_reference")
    out.mkdir()
    table = ds.dataset(data, format="parquet").to_table(
        columns=[KEY, "ts", "kind", "plan", "amount"])
    codes = pc.dictionary_encode(table[KEY].combine_chunks()).indices.to_numpy()
    ts = pc.cast(table["ts"], pa.int64()).to_numpy()  # no nulls in the data
    latest = np.full(int(codes.max(initial=-1)) + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, codes, ts)
    table = table.append_column("refund", pc.cast(pc.equal(table["kind"], "refund"),
                                                  pa.int64()))
    table = table.append_column("latest_plan", pc.if_else(pa.array(ts == latest[codes]),
                                                          table["plan"], None))
    grouped = table.group_by(KEY).aggregate([
        ([], "count_all"),
        ("amount", "sum"),
        ("amount", "mean"),
        ("amount", "stddev", pc.VarianceOptions(ddof=1)),
        ("amount", "min"),
        ("amount", "max"),
        ("refund", "sum"),
        ("plan", "count_distinct"),
        ("latest_plan", "max"),
    ])
    result = pa.table({
        KEY: grouped[KEY], "events": grouped["count_all"], "spend": grouped["amount_sum"],
        "avg_amount": grouped["amount_mean"], "sd_amount": grouped["amount_stddev"],
        "min_amount": grouped["amount_min"], "max_amount": grouped["amount_max"],
        "refunds": grouped["refund_sum"], "plans": grouped["plan_count_distinct"],
        "last_plan": grouped["latest_plan_max"],
    })
    pq.write_table(result, out / "part-00000.parquet")


def dask_aggregate_dask(data: Path, scratch: Path) -> None:
    """dd.read_parquet + groupby().agg() (+ nunique, which agg lacks) + to_parquet."""
    import dask.dataframe as dd

    from bench.cases import fresh
    from bench.dask_cases import _cluster

    out = fresh(scratch / "dask_aggregate_reference")
    with _cluster():
        frame = dd.read_parquet(data, columns=[KEY, "kind", "plan", "amount"])
        frame = frame.assign(refund=frame["kind"] == "refund")
        grouped = frame.groupby(KEY)
        result = grouped.agg(
            events=("amount", "size"), spend=("amount", "sum"), avg_amount=("amount", "mean"),
            sd_amount=("amount", "std"), min_amount=("amount", "min"),
            max_amount=("amount", "max"), refunds=("refund", "sum"))
        # one output partition, as agg's: nunique's default (a shuffle to as many
        # partitions as the input) made assign align the two by two more shuffles,
        # 2.9x the time of this at 200,000 rows
        result = result.assign(plans=grouped["plan"].nunique(split_out=1))
        result.reset_index().to_parquet(out, write_index=False)


def spark_aggregate_spark(data: Path, scratch: Path) -> None:
    """groupBy().agg() with Spark's own functions, in a session made as sluice makes it."""
    from pyspark.sql import functions as F

    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_aggregate_reference")
    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        result = frame.groupBy(KEY).agg(
            F.count(F.lit(1)).alias("events"), F.sum("amount").alias("spend"),
            F.avg("amount").alias("avg_amount"), F.stddev("amount").alias("sd_amount"),
            F.min("amount").alias("min_amount"), F.max("amount").alias("max_amount"),
            F.count_if(F.col("kind") == "refund").alias("refunds"),
            F.count_distinct("plan").alias("plans"),
            F.max_by("plan", "ts").alias("last_plan"))
        result.write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


# ---------------------------------------------------------------------- checks

def _same(ours: Path, reference: Path, columns: list[str]) -> None:
    """Both outputs hold the same keys and values (floats to 1e-9 relative; a null and
    a NaN are the same missing value); SystemExit says what differs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def load(path: Path) -> dict[str, np.ndarray]:
        table = ds.dataset(path, format="parquet").to_table(columns=[KEY, *columns])
        out = {}
        for name, column in zip(table.column_names, table.sort_by(KEY).columns):
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                out[name] = np.array(column.to_pylist(), dtype=object)
            elif pa.types.is_floating(column.type):  # null as NaN
                out[name] = pc.cast(column, "float64").to_numpy(zero_copy_only=False)
            else:  # keys and counts, whatever integer type a side wrote
                out[name] = pc.cast(column, "int64").to_numpy(zero_copy_only=False)
        return out

    a, b = load(ours), load(reference)
    problems = []
    if len(a[KEY]) != len(b[KEY]) or not np.array_equal(a[KEY], b[KEY]):
        problems.append(f"keys: {len(a[KEY]):,} against {len(b[KEY]):,} rows, or "
                        "different keys")
    else:
        for name in columns:
            x, y = a[name], b[name]
            if name in FLOATS:
                same = np.isclose(x, y, rtol=1e-9, atol=0, equal_nan=True)
            else:
                same = (x == y) | (_missing(x) & _missing(y))
            if not same.all():
                i = int(np.flatnonzero(~same)[0])
                problems.append(f"{name}: {int((~same).sum()):,} of {len(x):,} keys differ "
                                f"(key {a[KEY][i]}: {_show(x[i])} against {_show(y[i])})")
    stop_if(problems, ours, reference)
    print(f"  check: {len(a[KEY]):,} keys x {len(columns)} columns agree")


def _missing(values: Any) -> Any:
    """Where ``values`` are missing (None or NaN)."""
    import numpy as np

    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)


def check_aggregate(data: Path, scratch: Path) -> None:
    _same(scratch / "aggregate_sluice", scratch / "aggregate_reference", list(COLUMNS))


def check_dask_aggregate(data: Path, scratch: Path) -> None:
    _same(scratch / "dask_aggregate_sluice", scratch / "dask_aggregate_reference",
          DASK_COLUMNS)


def check_spark_aggregate(data: Path, scratch: Path) -> None:
    _same(scratch / "spark_aggregate_sluice", scratch / "spark_aggregate_reference",
          list(COLUMNS))



def _show(value: Any) -> str:
    return repr(value.item() if hasattr(value, "item") else value)
