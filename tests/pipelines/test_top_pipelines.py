"""top in pipelines: each customer's latest events as pandas keeps them, on every engine
and the same bytes on each; the plan's note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from pipelines.engines.base import Engine
from pipelines.runner import run


@pytest.fixture
def events(workdir: Path) -> Path:
    rng = np.random.default_rng(9)
    n = 20_000
    table = pa.table({"event": np.arange(n), "customer": rng.integers(0, 800, n),
                      "ts": pa.array(rng.permutation(n).astype("datetime64[s]"),
                                     pa.timestamp("s")),
                      "amount": rng.gamma(2.0, 10.0, n)})
    folder = workdir / "data" / "events"
    folder.mkdir(parents=True)
    for i in range(4):
        pq.write_table(table.slice(i * 5000, 5000), folder / f"part-{i}.parquet")
    return folder


LATEST = """
    pipeline: latest
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.05
      - id: latest
        op: top
        by: [customer]
        order: ["ts desc"]
        n: 3
        partition_mb: 0.01
      - op: write_parquet
        path: {out}
"""


def test_each_customers_latest_rows_on_every_engine(events: Path, workdir: Path,
                                                   engine: Engine) -> None:
    record = run(write_pipeline(workdir, LATEST.format(out="out/latest")),
                 engine_instance=engine)
    step = record["steps"]["latest"]
    assert step["kind"] == "shuffle" and step["rows"] == 800 * 3
    # only each partition's own first 3 rows of a customer went through the shuffle
    assert step["shuffle"]["partial_rows"] < 20_000 / 2 and step["shuffle"]["partitions"] > 1
    got = ds.dataset(workdir / "out" / "latest").to_table().to_pandas()
    frame = ds.dataset(events).to_table().to_pandas()
    want = frame.sort_values("ts", ascending=False).groupby("customer").head(3)
    assert sorted(got["event"]) == sorted(want["event"])
    if engine.name != "local":
        local = run(write_pipeline(workdir, LATEST.format(out="out/local"), "local.yaml"))
        assert local["steps"]["latest"]["shuffle"] == step["shuffle"]
        assert ds.dataset(workdir / "out" / "local").to_table().equals(
            ds.dataset(workdir / "out" / "latest").to_table())


def test_the_plan_says_what_travels(events: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, LATEST.format(out="out/x"))
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("keeps the first 3 rows by ts desc of each customer: each partition's own "
            "first ones go through the scratch folder to one place per group, into "
            "partitions of up to 0.01 MB, as many as the rows need") in shown
