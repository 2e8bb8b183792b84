"""Benchmark cases for ``aggregate``'s ``pivot`` (each aggregation once per listed value
of a column, over that value's rows: Spark's ``pivot``, pandas' ``pivot_table``): sluice
against the pivot every user of each engine would write, on the same Parquet files.

The data: ``aggregate``'s ``events`` (``bench/aggregate_cases.py``): ``rows / 20``
customers (an int64 key, drawn at random, so every file holds most keys), a kind
(``refund`` ~10%), a plan (5 values, drawn evenly: ~4 events of a customer a plan, so
~2% of the (customer, plan) pairs have no row) and an amount (1% null); several files
of 250,000-row groups, so each engine sees several partitions. Every side reads them,
computes per customer and plan the columns of ``COLUMNS`` (the spend: a sum of the
amounts; the events: a row count; the refunds: a count of the refund rows), spreads
them into a column per plan named ``<column>_<plan>`` (``spend_basic``, ...,
``events_basic``, ..., ``refunds_enterprise``: 15 columns and the key) and writes them
as Parquet. A plan a customer has no row of gives counts of 0 and a null spend (SQL's
sum of no values), and so does a plan whose every amount is null (the spend only):

* ``pivot``: read_parquet -> aggregate (by customer_id, ``pivot: {column: plan,
  values: PLANS}``) -> write_parquet on the local engine, against pandas as a pandas
  user writes it: ``pd.read_parquet`` of the 4 columns it needs, ``groupby([customer_id,
  plan])``'s ``sum(min_count=1)`` (null where no amount: the sum of no values), ``size()``
  and ``sum()`` of a refund flag, ``unstack("plan")`` (what ``pivot_table`` does inside;
  ``pivot_table`` itself ran in the same time, 0.17-0.21 s at 2M rows, but its sum
  has no ``min_count``: 0, not null, where a plan's amounts are all null), the counts
  of missing plans filled with 0, the columns flattened to sluice's names; one Parquet
  file out (``to_parquet``);
* ``spark_pivot``: the pipeline on the Spark engine, against
  ``groupBy(customer_id).pivot("plan", PLANS).agg(sum(amount), count(1),
  count_if(kind = 'refund'))`` + ``write.parquet`` in a session made the same way
  (``bench/spark_cases.py``: ``SparkEngine``, loopback only). Spark names a pivot's
  columns ``<value>_<alias>`` (``basic_spend``), renamed to sluice's in the same
  ``select``; and its counts of a plan a customer has no row of are null, not 0
  (Spark's pivot takes each (key, value) group's result, and a missing group has none):
  ``na.fill(0)`` of the count columns before the write makes them what sluice writes,
  so the outputs compare like for like (a cheap projection: part of Spark's side, as a
  Spark user would have to add it to get counts). Spark's time includes its JVM's
  start-up on both sides, and the peak memory is the Python process's only (not the
  JVM's): compare times, not memory.

The sluice sides record in ``<scratch>/<case>_sluice_<engine>.json`` (the harness's
``detail``) the run's seconds, the aggregate step's and its shuffle's sizes; the pandas
side its read, group-by, spread and write seconds.

After the sides (untimed), ``check_*`` reads both outputs back, sorts them by the key
and compares every column: the keys (one row for each customer of the input) and
counts exactly, the spends to 1e-9 (relative; a null and a NaN are the same missing
value); a difference fails the run. Run:

    python -m bench pivot --rows 2000000 --repeat 3
    python -m bench spark_pivot --rows 1000000 --repeat 3
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.aggregate_cases import (
    KEY,
    PLANS,
    _record,
    alike,
    load_output,
    run_shuffle_case,
    stop_if,
)

PIVOT = "plan"
# output column: sluice's aggregation (the reference sides compute the same, by name),
# made once per plan as ``<column>_<plan>``
COLUMNS = {
    "spend": "sum(amount)",
    "events": "count()",
    "refunds": "count_if(kind == 'refund')",
}
COUNTS = ("events", "refunds")
OUTPUT = [f"{name}_{plan}" for name in COLUMNS for plan in PLANS]  # sluice's order
FLOATS = {f"spend_{plan}" for plan in PLANS}  # sums of floats: equal up to rounding


# ---------------------------------------------------------------------- sluice sides

def _sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    """The aggregate of ``COLUMNS`` by customer, a column per plan (``run_shuffle_case``)."""
    wanted = "\n".join(f"              {name}: \"{text}\"" for name, text in COLUMNS.items())
    run_shuffle_case(data, scratch, case, engine, f"""          - id: shuffled
            op: aggregate
            by: [{KEY}]
            pivot:
              column: {PIVOT}
              values: [{", ".join(PLANS)}]
            columns:
{wanted}""")


def pivot_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "pivot", "local")


def spark_pivot_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_pivot", "spark")


# ---------------------------------------------------------------------- references

def pivot_pandas(data: Path, scratch: Path) -> None:
    """pandas as a pandas user writes it: one frame, a group-by of (customer, plan),
    ``unstack`` of the plans into columns, one Parquet file."""
    import pandas as pd

    from bench.cases import fresh

    out = fresh(scratch / "pivot_reference")
    out.mkdir()
    t0 = time.perf_counter()
    frame = pd.read_parquet(data, columns=[KEY, "kind", PIVOT, "amount"])
    t1 = time.perf_counter()
    frame["refund"] = frame["kind"] == "refund"
    grouped = frame.groupby([KEY, PIVOT], sort=False)
    parts = pd.DataFrame({
        "spend": grouped["amount"].sum(min_count=1),  # null where no amount, as SQL's
        "events": grouped.size(),
        "refunds": grouped["refund"].sum(),
    })
    t2 = time.perf_counter()
    wide = parts.unstack(PIVOT)  # a row per customer (sorted), a column per (name, plan)
    result = pd.DataFrame({KEY: wide.index.to_numpy()})
    for name in COLUMNS:
        for plan in PLANS:
            column = wide[(name, plan)].to_numpy()
            if name in COUNTS:  # a plan the customer has no row of: none counted
                column = pd.Series(column).fillna(0).astype("int64").to_numpy()
            result[f"{name}_{plan}"] = column
    t3 = time.perf_counter()
    result.to_parquet(out / "part-00000.parquet", index=False)
    _record(scratch, "pivot_pandas", read_seconds=round(t1 - t0, 6),
            group_seconds=round(t2 - t1, 6), spread_seconds=round(t3 - t2, 6),
            write_seconds=round(time.perf_counter() - t3, 6))


def spark_pivot_spark(data: Path, scratch: Path) -> None:
    """groupBy(key).pivot(plan, PLANS).agg() with Spark's own functions, in a session
    made as sluice makes its own; its ``<plan>_<alias>`` columns renamed to sluice's
    and its null counts of missing plans filled with 0 (the module's docstring)."""
    from pyspark.sql import functions as F

    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_pivot_reference")
    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        result = frame.groupBy(KEY).pivot(PIVOT, list(PLANS)).agg(
            F.sum("amount").alias("spend"), F.count(F.lit(1)).alias("events"),
            F.count_if(F.col("kind") == "refund").alias("refunds"))
        result = result.select(KEY, *[F.col(f"`{plan}_{name}`").alias(f"{name}_{plan}")
                                      for name in COLUMNS for plan in PLANS])
        result = result.na.fill(0, subset=[f"{name}_{plan}" for name in COUNTS
                                           for plan in PLANS])
        result.write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


# ---------------------------------------------------------------------- checks

def _same(data: Path, ours: Path, reference: Path) -> None:
    """Both outputs hold a row for each customer of the input, with the same values in
    every column (counts exactly, never null; spends to 1e-9 relative, a null and a NaN
    the same missing value); SystemExit says what differs."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    a = load_output(ours, [KEY, *OUTPUT], [KEY], FLOATS)
    b = load_output(reference, [KEY, *OUTPUT], [KEY], FLOATS)
    customers = pc.count_distinct(ds.dataset(data, format="parquet").to_table(
        columns=[KEY])[KEY]).as_py()
    problems = []
    for side, t in ((ours.name, a), (reference.name, b)):
        keys = pc.count_distinct(t[KEY]).as_py()
        if t.num_rows != customers or keys != customers:
            problems.append(f"{side}: {t.num_rows:,} rows of {keys:,} keys, not one of "
                            f"each of the input's {customers:,} customers")
        for name in OUTPUT:
            if name not in FLOATS and t[name].null_count:
                problems.append(f"{side}: {t[name].null_count:,} null counts in {name}")
    stop_if(problems, ours, reference)
    if not alike(a[KEY], b[KEY]).all():
        stop_if(["the keys differ"], ours, reference)
    for name in OUTPUT:
        x, y = a[name], b[name]
        if name in FLOATS:
            same = np.isclose(x.to_numpy(zero_copy_only=False),  # null as NaN
                              y.to_numpy(zero_copy_only=False), rtol=1e-9, atol=0,
                              equal_nan=True)
        else:
            same = alike(x, y)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"{name}: {int((~same).sum()):,} of {len(same):,} keys differ "
                            f"(customer {a[KEY][i].as_py()}: {x[i].as_py()!r} against "
                            f"{y[i].as_py()!r})")
    stop_if(problems, ours, reference)
    absent = sum(int(pc.sum(pc.equal(a[f"events_{plan}"], 0)).as_py() or 0)
                 for plan in PLANS)
    empty = sum(a[f"spend_{plan}"].null_count for plan in PLANS)
    print(f"  check: {a.num_rows:,} customers x {len(OUTPUT)} columns agree ({absent:,} "
          f"(customer, plan) pairs without a row: counts 0; {empty:,} null spends)")


def check_pivot(data: Path, scratch: Path) -> None:
    _same(data, scratch / "pivot_sluice", scratch / "pivot_reference")


def check_spark_pivot(data: Path, scratch: Path) -> None:
    _same(data, scratch / "spark_pivot_sluice", scratch / "spark_pivot_reference")
