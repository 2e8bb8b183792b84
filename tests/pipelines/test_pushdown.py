"""A filter right after a read is given to the read too (files and row groups skipped by
their statistics), with the same rows on every engine; where it cannot be, it is not."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.expressions import parse_filter
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


def test_a_filter_on_a_column_the_read_declares_is_pushed_and_compares_it_as_declared(
        workdir: Path, engine: Engine) -> None:
    """Text in the files, int64 declared (``schema:``): the pushed filter compares numbers
    ('9' < '50'), as the filter step after the read would, and the read passes on only
    the rows that pass."""
    (workdir / "d").mkdir()
    codes = [str(v) for v in range(0, 200, 7)]
    pq.write_table(pa.table({"code": codes, "x": list(range(len(codes)))}),
                   workdir / "d" / "part-0.parquet")
    path = write_pipeline(workdir, """
        pipeline: declared
        steps:
          - id: events
            op: read_parquet
            path: d
            schema: {code: int64}
          - op: filter
            where: "code >= 50 and code < 100"
          - op: write_parquet
            path: out
        """)
    plan = plan_file(path)
    assert plan.step("events").pushed_from == "filter"
    record = run(path, engine_instance=engine)
    want = sorted(v for v in map(int, codes) if 50 <= v < 100)
    assert sorted(pq.read_table(workdir / "out")["code"].to_pylist()) == want
    assert record["steps"]["events"]["rows"] == len(want)
    assert record["steps"]["events"]["filter_from"] == "filter"


def test_a_filter_is_not_pushed_where_the_rows_could_differ(churn: Path, workdir: Path
                                                            ) -> None:
    read = "      - op: derive\n        input: events\n        columns: {x: tenure}"
    # two readers of the read: the other must get every row
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


@pytest.mark.parametrize("where", ["x != 1", "not (x > 0)", "is_nan(x)", "x != 1 and n >= 0"])
def test_a_pushed_filter_keeps_the_nan_rows_the_statistics_leave_out(workdir: Path,
                                                                     where: str) -> None:
    # a row group's min and max leave NaN out: [NaN, 1.0] says min = max = 1.0, and a
    # filter judged by them alone skipped its NaN row, which the filter keeps
    data = pa.table({"x": [float("nan"), 1.0, 2.0, 1.0], "n": [0, 1, 2, 3]})
    (workdir / "data").mkdir()
    pq.write_table(data, workdir / "data" / "part.parquet", row_group_size=2)
    path = write_pipeline(workdir, f"""
        pipeline: nan
        steps:
          - op: read_parquet
            path: data
            columns: [n]
            filter: "{where}"
          - op: write_parquet
            path: out
        """)
    run(path)
    want = data.filter(parse_filter(where)).select(["n"])
    assert want.num_rows > 0
    assert pq.read_table(workdir / "out").sort_by("n").equals(want)


@pytest.mark.parametrize("own", [None, "v > 0", "cast(s as int8) > 0"])
def test_a_pushed_condition_failing_on_the_rows_is_the_filter_steps(
        workdir: Path, engine: Engine, own: str | None) -> None:
    """A filter step's condition given to the read fails on a value ('x' as int64): the
    error is the filter step's, at its where: line, not the read's filter (which the
    user never wrote there); one the read's own filter fails on stays the read's."""
    from operators.base import SluiceError

    (workdir / "d").mkdir()
    pq.write_table(pa.table({"s": ["1", "5", "x"], "v": [1, 2, 3]}),
                   workdir / "d" / "part-0.parquet")
    read_filter = f'\n            filter: "{own}"' if own else ""
    path = write_pipeline(workdir, f"""
        pipeline: pushed_failure
        steps:
          - id: events
            op: read_parquet
            path: d{read_filter}
          - id: keep
            op: filter
            where: "cast(s as int64) > 3"
          - op: write_parquet
            path: out
        """)
    assert plan_file(path).step("events").pushed_from == "keep"
    with pytest.raises(SluiceError) as caught:
        run(path, engine_instance=engine)
    text = str(caught.value)
    lines = path.read_text().splitlines()
    if own is not None and "int8" in own:  # the read's own filter fails first
        assert "read_parquet filter" in text, text
        assert text.startswith(f"{path}:{lines.index('  - id: events') + 1}:"), text
        return
    where = next(i for i, line in enumerate(lines, 1) if "where:" in line)
    assert text.startswith(f"{path}:{where}: "), text
    assert "filter step 'keep': where 'cast(s as int64) > 3' failed on the rows" in text, text
    assert "'x'" in text and "read_parquet filter" not in text, text
