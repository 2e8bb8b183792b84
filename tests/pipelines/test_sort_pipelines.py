"""sort in pipelines: the output files one after another are pandas' order on every engine
(the same bytes on each), ties spread over partitions, the plan's note and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from pipelines.engines.base import Engine
from pipelines.runner import plan_file, run


@pytest.fixture
def sales(workdir: Path) -> Path:
    """12,000 sales in 4 files: a region, an amount (a third of them 10.0), a day."""
    rng = np.random.default_rng(6)
    n = 12_000
    amount = np.where(rng.random(n) < 0.33, 10.0, np.round(rng.gamma(2.0, 20.0, n), 2))
    table = pa.table({
        "sale_id": np.arange(n),
        "region": rng.choice(["eu", "us", "apac", "latam"], n),
        "amount": pa.array(amount, mask=rng.random(n) < 0.02),
        "day": pa.array(rng.integers(0, 90, n).astype("datetime64[D]"), pa.date32()),
    })
    folder = workdir / "data" / "sales"
    folder.mkdir(parents=True)
    for i in range(4):
        pq.write_table(table.slice(i * 3000, 3000), folder / f"part-{i}.parquet",
                       row_group_size=1000)
    return folder


SORTED = """
    pipeline: ranked
    steps:
      - op: read_parquet
        path: data/sales
        partition_mb: 0.01
      - id: ranked
        op: sort
        by: [region, "amount desc"]
        partition_mb: 0.05
      - op: write_parquet
        path: {out}
"""


def files_in_order(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("*.parquet")))


def test_the_files_one_after_another_are_pandas_order_on_every_engine(
        sales: Path, workdir: Path, engine: Engine) -> None:
    record = run(write_pipeline(workdir, SORTED.format(out="out/ranked")),
                 engine_instance=engine)
    step = record["steps"]["ranked"]
    assert step["kind"] == "shuffle" and step["rows"] == 12_000
    shuffle = step["shuffle"]
    assert shuffle["partitions"] > 3 and shuffle["largest_mb"] <= 0.1
    got = files_in_order(workdir / "out" / "ranked")
    assert len(list((workdir / "out" / "ranked").glob("*.parquet"))) == shuffle["partitions"]
    frame = ds.dataset(sales).to_table().to_pandas()
    want = frame.sort_values(["region", "amount"], ascending=[True, False],
                             na_position="last", kind="stable")
    seen = got.to_pandas()
    pd.testing.assert_frame_equal(seen[["region", "amount"]].reset_index(drop=True),
                                  want[["region", "amount"]].reset_index(drop=True))
    assert sorted(seen["sale_id"]) == list(range(12_000))
    # the 10.0s of a region (about 1,000) are spread over output partitions, not one's
    holding = [pq.read_table(f).filter(pa.compute.equal(pq.read_table(f)["amount"], 10.0))
               .num_rows for f in sorted((workdir / "out" / "ranked").glob("*.parquet"))]
    assert sum(1 for h in holding if h) > 4
    if engine.name != "local":  # the same output partitions, byte for byte
        local = run(write_pipeline(workdir, SORTED.format(out="out/local"), "local.yaml"))
        assert local["steps"]["ranked"]["shuffle"] == shuffle
        assert files_in_order(workdir / "out" / "local").equals(got)


def test_another_partitioning_gives_the_same_order(sales: Path, workdir: Path) -> None:
    """Ties follow a hash of the rows, the sample too: 4 input partitions or 12, the
    rows come in the same order (the output partitions may differ)."""
    run(write_pipeline(workdir, SORTED.format(out="out/fine")))
    run(write_pipeline(workdir, SORTED.format(out="out/coarse").replace(
        "partition_mb: 0.01", "partition_mb: 64"), "coarse.yaml"))
    assert files_in_order(workdir / "out" / "fine").equals(
        files_in_order(workdir / "out" / "coarse"))


def test_the_plan_says_how_and_a_column_without_order_is_named(sales: Path,
                                                               workdir: Path) -> None:
    path = write_pipeline(workdir, SORTED.format(out="out/x"))
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("sorts by region, amount desc: a pass samples the rows for the ranges of the "
            "output partitions, then the rows go to their range's through the scratch "
            "folder, into partitions of up to 0.05 MB, as many as the rows need, one "
            "after another in order; every row kept") in shown
    bad = write_pipeline(workdir, SORTED.format(out="out/x").replace(
        '"amount desc"', '"amont desc"'), "bad.yaml")
    (problem,) = plan_file(bad).problems
    assert problem.line == 8 and "by: column 'amont' not in the input" in problem.message


REPEATS = """
    pipeline: repeats
    steps:
      - op: read_parquet
        path: data/repeats
        partition_mb: 0.004
      - id: sorted
        op: sort
        by: [a]
        {given}
      - op: write_parquet
        path: out/{out}
"""


@pytest.mark.parametrize("hot", [False, True])
def test_copies_of_rows_are_sampled_as_many_and_spread(workdir: Path, hot: bool) -> None:
    """Rows alike in every column (copies: one tie hash) count as many rows in the
    sample, and copies of a row that is several bounds are spread over their ranges: the
    output partitions stay about even, where a sample of distinct hashes put 14,655 of
    30,000 rows in one of 20 and 27,000 copies of a hot row in one."""
    rng = np.random.default_rng(12)
    n = 30_000
    a = np.where(rng.random(n) < 0.9, 7, rng.integers(0, 100, n)) if hot else \
        rng.integers(0, 100, n)
    (workdir / "data" / "repeats").mkdir(parents=True)
    for i in range(4):
        pq.write_table(pa.table({"a": a[i * 7500:(i + 1) * 7500]}),
                       workdir / "data" / "repeats" / f"part-{i}.parquet")
    record = run(write_pipeline(workdir, REPEATS.format(out="p", given="partitions: 12")))
    step = record["steps"]["sorted"]
    assert step["rows"] == n  # the sample's pass is not counted as the step's rows
    counts = [pq.read_metadata(f).num_rows
              for f in sorted((workdir / "out" / "p").glob("*.parquet"))]
    assert len(counts) == 12 and max(counts) < 2 * n / 12, counts
    got = files_in_order(workdir / "out" / "p")["a"].to_numpy()
    np.testing.assert_array_equal(got, np.sort(a))
    # by size: no output partition far over partition_mb
    record = run(write_pipeline(workdir, REPEATS.format(out="mb", given="partition_mb: 0.02")))
    assert record["steps"]["sorted"]["shuffle"]["largest_mb"] < 0.06
    np.testing.assert_array_equal(files_in_order(workdir / "out" / "mb")["a"].to_numpy(),
                                  np.sort(a))
