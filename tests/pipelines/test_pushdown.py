"""A filter right after a read is given to the read too (files and row groups skipped by
their statistics), with the same rows on every engine; where it cannot be, it is not."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from pipelines.engines.base import Engine
from pipelines.runner import plan_file, run

FILTERED = """
    pipeline: filtered
    steps:
      - id: events
        op: read_parquet
        path: data/churn
        filter: "region != 'west'"
{read}
      - op: filter
        where: "tenure >= 60 and plan = 'premium'"
      - op: write_parquet
        path: out
"""


def test_a_filter_after_a_read_is_pushed_into_it(churn: Path, workdir: Path,
                                                 engine: Engine) -> None:
    path = write_pipeline(workdir, FILTERED.format(read=""))
    plan = plan_file(path)
    events = plan.step("events")
    assert events.pushed_from == "filter"
    assert events.op.params.filter == ("(region != 'west') and (tenure >= 60 and plan = "
                                       "'premium')")
    record = run(path, engine_instance=engine)
    data = pq.read_table(churn)
    want = data.filter(pc.and_(pc.not_equal(data["region"], "west"),
                               pc.and_(pc.greater_equal(data["tenure"], 60),
                                       pc.equal(data["plan"], "premium"))))
    assert 0 < want.num_rows < 500
    # the read passes on only the rows that pass: the counts say so
    assert record["steps"]["events"]["rows"] == record["steps"]["filter"]["rows"] == (
        want.num_rows)
    assert record["steps"]["events"]["filter_from"] == "filter"
    out = pq.read_table(workdir / "out").sort_by("customer_id")
    assert out.equals(want.sort_by("customer_id"))


@pytest.mark.parametrize("read", [
    "        schema: {tenure: float64}",  # a column the read casts: compared after the cast
    "      - op: derive\n        input: events\n        columns: {x: tenure}",  # two readers
])
def test_a_filter_is_not_pushed_where_the_rows_could_differ(churn: Path, workdir: Path,
                                                            read: str) -> None:
    path = write_pipeline(workdir, FILTERED.format(read=read).replace(
        "      - op: filter\n", "      - op: filter\n        input: events\n"))
    plan = plan_file(path)
    assert plan.ok, plan.problems
    assert plan.step("events").pushed_from is None
    assert plan.step("events").op.params.filter == "region != 'west'"
    record = run(path)
    assert "filter_from" not in record["steps"]["events"]
    assert record["steps"]["events"]["rows"] > record["steps"]["filter"]["rows"]


def test_a_filter_on_a_derived_column_stays_where_it_is(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: derived
        steps:
          - op: read_parquet
            path: data/churn
          - op: derive
            columns: {long: "tenure >= 60"}
          - op: filter
            where: "long"
        """)
    plan = plan_file(path)
    assert plan.step("read_parquet").pushed_from is None
