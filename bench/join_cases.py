"""Benchmark cases for ``join`` through a shuffle (``strategy: shuffle``: the rows and
the table's rows sent by a hash of their keys to the same output partitions through
Arrow IPC files in the scratch folder, ``pipelines/shuffle.py``): sluice against the
join every user of each engine would write for a table too large to broadcast, on the
same Parquet files.

The data (``orders``, made by ``orders``) is two tables under the data folder:

* ``orders/``: ``rows`` orders, an ``order_id`` (int64, unique: the sort key that makes
  the outputs comparable row by row), a ``customer_id`` (int64, drawn at random from
  ``rows / 4`` customers, so every file holds most of them and the table side is large),
  an ``amount`` (float64), a ``ts`` UTC timestamp and a ``channel`` (4 short strings);
* ``customers/``: one row per customer, ``rows / 4`` rows in random order: ~90% of the
  orders' customers (the others' orders find no row: nulls in a left join) and as many
  customers again as those left out that no order has; a ``segment`` (5 strings), a
  ``lifetime_value`` (float64) and a ``signup`` date.

Both in several files of 250,000-row groups, so each engine sees several partitions.
Every side reads them, left-joins the customers' columns to every order by
``customer_id`` and writes the result as Parquet:

* ``join_shuffle``: read_parquet (orders) -> join (customers, ``strategy: shuffle``,
  ``how: left``) -> write_parquet on the local engine, against the pyarrow floor: both
  tables read whole by ``pyarrow.dataset`` and ``orders.join(customers, keys=...,
  join_type="left outer")`` (Acero's in-memory hash join, threads on); one Parquet file
  out. The floor needs no shuffle (both tables fit in memory): it is the price of the
  join itself, not of a join of tables larger than memory;
* ``spark_join``: the pipeline on the Spark engine, against ``orders.join(customers,
  "customer_id", "left")`` with ``spark.sql.autoBroadcastJoinThreshold=-1`` (a
  sort-merge join, what Spark does for a large table; its shuffle is Spark's own) +
  ``write.parquet`` in a session made the same way (``bench/spark_cases.py``:
  ``SparkEngine``, loopback only). Spark's time includes its JVM's start-up on both
  sides, and the peak memory is the Python process's only (not the JVM's): compare
  times, not memory;
* ``dask_join``: the pipeline on the Dask engine, against ``dd.merge(orders, customers,
  on="customer_id", how="left")`` (a hash shuffle of both sides) + ``to_parquet``, both
  on a LocalCluster of single-threaded workers (``bench/dask_cases.py``); the peak
  memory is the client's process only (the workers are processes of their own).

The sluice sides record in ``<scratch>/<case>_sluice_<engine>.json`` (the harness's
``detail``) the run's seconds, the shuffle step's (stage 1: both tables read, hashed
and written to the scratch folder; stage 2, the buckets read and joined, runs within
write_parquet's step) and the shuffle's sizes.

After the sides (untimed), ``check_*`` reads both outputs back, sorts them by
``(customer_id, order_id)`` and compares every column exactly (floats too: a join copies
values; a null and a NaN are the same missing value, as pandas writes one for the
other), after the checks that both hold every order once; a difference fails the run.
Run:

    python -m bench join_shuffle --rows 2000000 --repeat 3
    python -m bench spark_join --rows 1000000 --repeat 3
    python -m bench dask_join --rows 1000000 --repeat 3
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.aggregate_cases import (
    _record,
    alike,
    load_output,
    run_shuffle_case,
    stop_if,
    write_generated,
)

KEY = "customer_id"
ORDER_ID = "order_id"
ORDERS_PER_CUSTOMER = 4
KNOWN = 0.9  # the share of the orders' customers in the customers table
CHANNELS = ("web", "app", "store", "phone")
SEGMENTS = ("consumer", "small_business", "mid_market", "enterprise", "public_sector")
START = "2026-01-01T00:00:00"
YEAR_US = 365 * 86_400 * 10**6
SIGNUP_DAYS = 10 * 365  # signups over the ten years before START
ORDER_COLUMNS = [ORDER_ID, KEY, "amount", "ts", "channel"]
CUSTOMER_COLUMNS = ["segment", "lifetime_value", "signup"]
COLUMNS = [*ORDER_COLUMNS, *CUSTOMER_COLUMNS]


def orders(out: Path, rows: int, files: int) -> None:
    """``rows`` orders under ``out/orders`` and their customers under ``out/customers``,
    each in ``files`` Parquet files; made in a temporary folder renamed whole, so an
    interrupted run leaves no half data set for the next."""
    import numpy as np
    import pyarrow as pa

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    start = np.datetime64(START, "us").astype(np.int64)
    first_order = [0]  # the order ids of the next file start here

    def make_orders(rng: Any, n: int, customers: int) -> Any:
        ids = np.arange(first_order[0], first_order[0] + n, dtype=np.int64)
        first_order[0] += n
        return pa.table({
            ORDER_ID: pa.array(ids),
            KEY: pa.array(rng.integers(0, customers, n, dtype=np.int64)),
            "amount": pa.array(np.round(rng.gamma(2.0, 30.0, n), 2)),
            "ts": pa.array(start + rng.integers(0, YEAR_US, n), pa.timestamp("us", "UTC")),
            "channel": pa.array(np.array(CHANNELS)[rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05])]),
        })

    write_generated(staging / "orders", rows, files, 20261201, ORDERS_PER_CUSTOMER,
                    make_orders)

    # the customers' ids: ~90% of the orders' (0 .. customers - 1), then as many new ones
    # as were left out (customers ..), so the table has ``customers`` rows; shuffled, so
    # every file holds keys of every bucket
    customers = max(1, rows // ORDERS_PER_CUSTOMER)
    rng = np.random.default_rng(20261203)
    known = np.flatnonzero(rng.random(customers) < KNOWN)
    ids = np.concatenate([known, np.arange(customers, 2 * customers - len(known))])
    ids = rng.permutation(ids).astype(np.int64)
    taken = [0]

    def make_customers(rng: Any, n: int, _: int) -> Any:
        mine = ids[taken[0]:taken[0] + n]
        taken[0] += n
        days = rng.integers(1, SIGNUP_DAYS, n)
        return pa.table({
            KEY: pa.array(mine),
            "segment": pa.array(np.array(SEGMENTS)[rng.choice(5, n,
                                                              p=[0.6, 0.2, 0.1, 0.07, 0.03])]),
            "lifetime_value": pa.array(np.round(rng.lognormal(6.0, 1.2, n), 2)),
            "signup": pa.array((np.datetime64(START[:10], "D") - days).astype("datetime64[D]"),
                               pa.date32()),
        })

    write_generated(staging / "customers", len(ids), files, 20261202, 1, make_customers)
    staging.rename(out)


# ---------------------------------------------------------------------- sluice sides

def _sluice(data: Path, scratch: Path, case: str, engine: str) -> None:
    """orders -> join customers through a shuffle, a left join (``run_shuffle_case``)."""
    run_shuffle_case(data / "orders", scratch, case, engine, f"""          - id: shuffled
            op: join
            path: {data / "customers"}
            on: [{KEY}]
            strategy: shuffle
            how: left""")


def join_shuffle_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "join_shuffle", "local")


def spark_join_sluice_spark(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "spark_join", "spark")


def dask_join_sluice_dask(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "dask_join", "dask")


# ---------------------------------------------------------------------- references

def join_shuffle_pyarrow_floor(data: Path, scratch: Path) -> None:
    """Acero's hash join of the two tables read whole (threads on), one file out."""
    import time

    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from bench.cases import fresh

    out = fresh(scratch / "join_shuffle_reference")
    out.mkdir()
    t0 = time.perf_counter()
    left = ds.dataset(data / "orders", format="parquet").to_table()
    right = ds.dataset(data / "customers", format="parquet").to_table()
    t1 = time.perf_counter()
    joined = left.join(right, keys=KEY, join_type="left outer")
    t2 = time.perf_counter()
    pq.write_table(joined, out / "part-00000.parquet")
    _record(scratch, "join_shuffle_pyarrow_floor", read_seconds=round(t1 - t0, 6),
            join_seconds=round(t2 - t1, 6), write_seconds=round(time.perf_counter() - t2, 6))


def spark_join_spark(data: Path, scratch: Path) -> None:
    """A sort-merge join (no broadcast) in a session made as sluice makes its own."""
    from bench.cases import fresh
    from bench.spark_cases import _session

    out = fresh(scratch / "spark_join_reference")
    engine = _session()
    try:
        spark = engine.spark
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
        left = spark.read.parquet(str(data / "orders"))
        right = spark.read.parquet(str(data / "customers"))
        left.join(right, KEY, "left").write.mode("overwrite").parquet(str(out))
    finally:
        engine.close()


def dask_join_dask(data: Path, scratch: Path) -> None:
    """dd.merge (a hash shuffle of both sides: neither is known to be small) +
    to_parquet."""
    import dask.dataframe as dd

    from bench.cases import fresh
    from bench.dask_cases import _cluster

    out = fresh(scratch / "dask_join_reference")
    with _cluster():
        left = dd.read_parquet(data / "orders")
        right = dd.read_parquet(data / "customers")
        dd.merge(left, right, on=KEY, how="left").to_parquet(out, write_index=False)


# ---------------------------------------------------------------------- checks

def _load(path: Path) -> Any:
    """An output's ``COLUMNS`` sorted by (customer_id, order_id), one type per column
    (``load_output``)."""
    return load_output(path, COLUMNS, [KEY, ORDER_ID])


def _same(data: Path, ours: Path, reference: Path) -> None:
    """Both outputs hold every order once, with the same columns of the same values
    (nulls where the customer is unknown); SystemExit says what differs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    a, b = _load(ours), _load(reference)
    total = ds.dataset(data / "orders", format="parquet").count_rows()
    problems = []
    for side, t in ((ours.name, a), (reference.name, b)):
        if t.num_rows != total or pc.count_distinct(t[ORDER_ID]).as_py() != total:
            problems.append(f"{side}: {t.num_rows:,} rows, "
                            f"{pc.count_distinct(t[ORDER_ID]).as_py():,} orders of {total:,}")
    stop_if(problems, ours, reference)
    for name in COLUMNS:
        x, y = a[name], b[name]
        same = alike(x, y)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"{name}: {int((~same).sum()):,} of {len(same):,} rows differ "
                            f"(order {a[ORDER_ID][i].as_py()}: {x[i].as_py()!r} against "
                            f"{y[i].as_py()!r})")
    stop_if(problems, ours, reference)
    unmatched = pc.sum(pc.is_null(a["segment"]).cast(pa.int64())).as_py()
    print(f"  check: {a.num_rows:,} rows x {len(COLUMNS)} columns agree ({unmatched:,} "
          "orders of customers the table lacks, their columns null)")


def check_join_shuffle(data: Path, scratch: Path) -> None:
    _same(data, scratch / "join_shuffle_sluice", scratch / "join_shuffle_reference")


def check_spark_join(data: Path, scratch: Path) -> None:
    _same(data, scratch / "spark_join_sluice", scratch / "spark_join_reference")


def check_dask_join(data: Path, scratch: Path) -> None:
    _same(data, scratch / "dask_join_sluice", scratch / "dask_join_reference")
