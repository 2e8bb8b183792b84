"""top: the first n rows in an order, of each group or of all, against pandas'
sort_values + groupby().head(n); ties the same for any cut, and errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.base import ParamError, SchemaError, lookup
from operators.features.top import Top
from operators.testing.kit import shuffled, split


def top(**params) -> Top:
    cls = lookup("top")
    op = cls(cls.Params(**params))
    assert isinstance(op, Top)
    return op


@pytest.fixture
def events() -> pa.Table:
    rng = np.random.default_rng(4)
    n = 5000
    return pa.table({
        "event": np.arange(n),
        "customer": pa.array(rng.integers(0, 300, n), mask=rng.random(n) < 0.02),
        "region": pa.array(rng.choice(["eu", "us"], n)).dictionary_encode(),
        "ts": pa.array(rng.permutation(n).astype("datetime64[s]"), pa.timestamp("s")),
        "amount": rng.gamma(2.0, 10.0, n),
    })


@pytest.mark.parametrize(("by", "order", "n"), [
    (["customer"], ["ts desc"], 3), (["region", "customer"], ["amount"], 1),
    ([], ["amount desc"], 25)])
def test_the_first_rows_of_each_group_are_pandas(events: pa.Table, by: list[str],
                                                 order: list[str], n: int) -> None:
    op = top(by=by, order=order, n=n)
    names = [o.split()[0] for o in order]
    frame = events.to_pandas()
    frame["region"] = frame["region"].astype(str)
    ranked = frame.sort_values(names, ascending=[not o.endswith(" desc") for o in order],
                               kind="stable")
    want = ranked.groupby(by, dropna=False).head(n) if by else ranked.head(n)
    for places in (1, 4):
        got = shuffled(op, split(events, 6, places), 1 if not by else places, places)
        assert sorted(got["event"].to_pylist()) == sorted(want["event"])
        assert got.schema == events.schema
    # each group's rows together, in order
    got = op.finish(op.partial(events)).to_pandas()
    if by:
        got["region"] = got["region"].astype(str)
        for _, rows in got.groupby(by, dropna=False, sort=False):
            values = rows[names[0]].to_numpy()
            step = np.diff(values.astype("int64") if values.dtype.kind == "M" else values)
            assert (step <= 0).all() if order[0].endswith(" desc") else (step >= 0).all()


def test_ties_keep_the_same_rows_whatever_the_cut() -> None:
    table = pa.table({"k": np.arange(600) % 3, "v": np.zeros(600), "i": np.arange(600)})
    op = top(by=["k"], order=["v"], n=4)
    whole = sorted(op.finish(op.partial(table))["i"].to_pylist())
    for seed in (1, 2, 3):
        got = shuffled(op, split(table, 7, seed), 3, seed)
        assert sorted(got["i"].to_pylist()) == whole and len(whole) == 12


def test_nan_and_nulls_come_where_spark_puts_them() -> None:
    table = pa.table({"x": pa.array([1.0, None, float("nan"), 5.0, -2.0])})
    up = top(order=["x"], n=3)
    assert up.finish(up.partial(table))["x"].to_pylist() == [-2.0, 1.0, 5.0]
    down = top(order=["x desc"], n=2).finish(top(order=["x desc"], n=2).partial(table))
    got = down["x"].to_pylist()
    assert got[0] != got[0] and got[1] == 5.0  # NaN above every number


def test_problems_are_named(events: pa.Table) -> None:
    with pytest.raises(SchemaError, match="order: column 'amont' not in the input"):
        top(order=["amont"], n=1).output_schema(events.schema)
    with pytest.raises(SchemaError, match="by: key column 'who' not in the input"):
        top(by=["who"], order=["ts"], n=1).output_schema(events.schema)
    with pytest.raises(ParamError, match="partitions: without `by`"):
        top(order=["ts"], n=1, partitions=4)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        top(order=["ts"], n=0)
