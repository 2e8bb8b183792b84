"""window in pipelines: pandas' group-by shift / cumsum / rolling on every engine, the
same bytes on each, features that an aggregate then a model use, the plan's note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from conftest import sluice_in_process, write_pipeline

from pipelines.datagen import generate
from pipelines.engines.base import Engine
from pipelines.runner import run


@pytest.fixture
def events(workdir: Path) -> Path:
    out = workdir / "data" / "events"
    generate("events", 12_000, out, files=3, row_group_rows=1500)
    return out


WINDOW = """
    pipeline: sessions
    steps:
      - op: read_parquet
        path: data/events
        partition_mb: 0.05
      - id: history
        op: window
        by: [customer_id]
        order: [ts]
        columns:
          nth: row_number()
          previous_ts: lag(ts)
          spend_so_far: cum_sum(amount)
          spend_7d: rolling_sum(amount, '7 days')
          last3: rolling_mean(amount, 3)
        partitions: 3
      - op: derive
        columns: {{gap_days: "days_between(previous_ts, ts)"}}
      - op: write_parquet
        path: {out}
"""


def test_a_window_is_pandas_on_every_engine_and_the_same_bytes(
        events: Path, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = workdir / "scratch"
    monkeypatch.setenv("SLUICE_SCRATCH", str(scratch))
    record = run(write_pipeline(workdir, WINDOW.format(out="out/history")),
                 engine_instance=engine)
    got = ds.dataset(workdir / "out" / "history").to_table()
    source = ds.dataset(events).to_table()
    assert got.num_rows == source.num_rows == record["steps"]["history"]["rows"]
    assert record["steps"]["history"]["kind"] == "shuffle"
    assert record["steps"]["history"]["shuffle"]["partitions"] == 3
    assert not list(scratch.glob("*"))
    frame = got.to_pandas().sort_values(["customer_id", "nth"]).reset_index(drop=True)
    g = frame.groupby("customer_id", dropna=False)
    assert (g.cumcount() + 1).tolist() == frame["nth"].tolist()
    assert frame["previous_ts"].equals(g["ts"].shift(1))
    np.testing.assert_allclose(frame["spend_so_far"],
                               g["amount"].transform(  # SQL: a sum of no values is null
                                   lambda s: s.fillna(0).cumsum().where(s.notna().cumsum() > 0)),
                               rtol=1e-9)
    rolled = frame.groupby("customer_id", group_keys=False, dropna=False).apply(
        lambda d: d.rolling("7D", on="ts")["amount"].sum(), include_groups=False)
    np.testing.assert_allclose(frame["spend_7d"], rolled.sort_index(), rtol=1e-9)
    gap = (frame["ts"].dt.normalize() - frame["previous_ts"].dt.normalize()).dt.days
    np.testing.assert_allclose(frame["gap_days"].astype(float), gap.astype(float),
                               equal_nan=True)  # day boundaries, as SQL's datediff
    # the local engine gives the same bytes, partition by partition
    run(write_pipeline(workdir, WINDOW.format(out="out/local"), "local.yaml"))
    assert got.equals(ds.dataset(workdir / "out" / "local").to_table())


FEATURES = """
    pipeline: repeat_buyers
    steps:
      - op: read_parquet
        path: data/events
      - op: window
        by: [customer_id]
        order: [ts]
        columns: {prior: lag(amount), n: row_number()}
      - op: derive
        columns: {rise: "coalesce(amount - prior, 0.0)"}
      - op: aggregate
        by: [customer_id]
        columns: {events: max(n), mean_rise: mean(rise)}
      - op: write_parquet
        path: out/buyers
"""


def test_window_then_aggregate_and_the_plan_says_what_it_does(events: Path,
                                                              workdir: Path) -> None:
    path = write_pipeline(workdir, FEATURES)
    shown = sluice_in_process("plan", str(path), cwd=workdir, check=True).stdout
    assert ("shuffles: the rows of each customer_id to one place (through the scratch "
            "folder), ordered by ts, into partitions of up to 64 MB, as many as the rows "
            "need; every row kept") in shown
    one_key = write_pipeline(workdir, FEATURES.replace("by: [customer_id]\n        order",
                                                       "by: []\n        order"), "all.yaml")
    assert ("shuffles: all the rows to one place (one key: no by), ordered by ts, into 1 "
            "partition; every row kept") in sluice_in_process("plan", str(one_key), cwd=workdir,
                                                              check=True).stdout
    run(path)
    out = ds.dataset(workdir / "out" / "buyers").to_table().sort_by("customer_id")
    counts = ds.dataset(events).to_table().group_by("customer_id").aggregate(
        [([], "count_all")]).sort_by("customer_id")
    assert out["events"].cast(pa.int64()).equals(counts["count_all"])


def test_a_bad_column_is_reported_at_its_own_line(events: Path, workdir: Path) -> None:
    """Each column of a window or an aggregate: the problem names the line it is on."""
    from pipelines.runner import plan_file

    path = write_pipeline(workdir, """
        pipeline: lines
        steps:
          - op: read_parquet
            path: data/events
          - op: window
            by: [customer_id]
            order: [ts]
            columns:
              fine: row_number()
              bad: cum_sum(kind)
              worse: lagg(ts)
          - op: aggregate
            by: [customer_id]
            columns:
              events: count()
              spend: summ(amount)
        """)
    def lines_of(path: Path, step: str) -> list[str]:
        text = path.read_text().splitlines()
        return [text[p.line - 1].strip() for p in plan_file(path).problems if p.step == step]

    assert lines_of(path, "window") == ["worse: lagg(ts)"]  # a parameter problem
    assert lines_of(path, "aggregate") == ["spend: summ(amount)"]
    schema_only = write_pipeline(workdir, path.read_text().replace("lagg(ts)", "lag(ts)"),
                                 "schema.yaml")
    assert lines_of(schema_only, "window") == ["bad: cum_sum(kind)"]  # found as planned
    planned = write_pipeline(workdir, schema_only.read_text().replace(
        "bad: cum_sum(kind)", "bad: cum_sum(amount)").replace(
        "spend: summ(amount)", "spend: sum(kind)"), "planned.yaml")
    assert lines_of(planned, "aggregate") == ["spend: sum(kind)"]  # found as planned
    # a window column named like a missing input column: the problem is the reader's
    named = write_pipeline(workdir, planned.read_text().replace(
        "worse: lag(ts)", "worse: lag(fine)").replace("spend: sum(kind)",
                                                      "spend: sum(amount)"), "named.yaml")
    assert lines_of(named, "window") == ["worse: lag(fine)"]
