"""sort: the rows in an order across the output partitions (ranges from a sample), against
pandas; ties by a hash of the row, NaN and nulls where Spark puts them, and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from operators.base import ParamError, SchemaError, lookup
from operators.features.sort import Sort
from operators.testing.kit import shuffled, split


def sort(**params) -> Sort:
    cls = lookup("sort")
    op = cls(cls.Params(**params))
    assert isinstance(op, Sort)
    return op


@pytest.fixture
def rows() -> pa.Table:
    rng = np.random.default_rng(7)
    n = 3000
    return pa.table({
        "id": np.arange(n),
        "region": pa.array(rng.choice(["eu", "us", "apac"], n)).dictionary_encode(),
        "amount": pa.array(np.round(rng.gamma(2.0, 10.0, n), 1), mask=rng.random(n) < 0.05),
        "day": pa.array(rng.integers(0, 30, n).astype("datetime64[D]"), pa.date32()),
    })


@pytest.mark.parametrize("by", [["amount"], ["region", "amount desc"], ["day desc", "id"]])
@pytest.mark.parametrize("places", [1, 4, 9])
def test_the_places_one_after_another_are_pandas_order(rows: pa.Table, by: list[str],
                                                       places: int) -> None:
    op = sort(by=by)
    got = shuffled(op, split(rows, 5, 1), places, seed=2)
    names = [b.split()[0] for b in by]
    frame = rows.to_pandas()
    frame["region"] = frame["region"].astype(str)
    want = frame.sort_values(names, ascending=[not b.endswith(" desc") for b in by],
                             na_position="last", kind="stable")
    seen = got.to_pandas()
    seen["region"] = seen["region"].astype(str)
    # the same rows; the order of their sort columns is pandas' (ties in another order)
    assert sorted(seen["id"]) == list(range(rows.num_rows))
    pd.testing.assert_frame_equal(seen[names].reset_index(drop=True),
                                  want[names].reset_index(drop=True))


def test_ties_follow_a_hash_and_spread_over_the_places() -> None:
    """A value on most rows is not one place's: its rows go to several, in an order of
    their content, the same for any cut of the rows."""
    n = 4000
    table = pa.table({"k": np.where(np.arange(n) % 10 == 0, np.arange(n), 5),
                      "v": np.arange(n) * 3})
    op = sort(by=["k"])
    whole = op.finish(op.partial(table))
    for seed in (1, 2):
        parts = split(table, 7, seed)
        got = shuffled(op, parts, 6, seed)
        assert got.equals(whole)
        placed = np.bincount(op.place(op.partial(table), 6), minlength=6)
        assert (placed > n // 12).sum() >= 4, placed  # the 3,600 fives over 4 places or more


def test_nan_and_nulls_go_where_spark_puts_them() -> None:
    x = pa.array([2.0, None, float("nan"), -1.0, float("nan"), None, 0.0])
    table = pa.table({"x": x, "i": np.arange(7)})
    up = sort(by=["x"]).finish(sort(by=["x"]).partial(table))["x"].to_pylist()
    assert up[:3] == [-1.0, 0.0, 2.0] and all(v != v for v in up[3:5]) and up[5:] == [None] * 2
    down = sort(by=["x desc"]).finish(sort(by=["x"]).partial(table))["x"].to_pylist()
    assert all(v != v for v in down[:2]) and down[2:5] == [2.0, 0.0, -1.0]
    assert down[5:] == [None] * 2


def test_the_sample_is_the_same_however_the_rows_are_cut(rows: pa.Table) -> None:
    op = sort(by=["region", "amount"])
    whole = op.sample(rows, 50)
    for seed in (1, 2, 3):
        parts = split(rows, 6, seed)
        sample = op.sample(parts[0], 50)
        for part in parts[1:]:
            sample = op.combine_samples(op.sample(part, 50), sample, 50)
        assert sample.equals(whole)
    assert whole.num_rows == 50


def test_durations_sort() -> None:
    rng = np.random.default_rng(1)
    table = pa.table({"d": pa.array(rng.integers(-50, 50, 300), pa.duration("ms")),
                      "i": np.arange(300)})
    op = sort(by=["d desc"])
    assert op.output_schema(table.schema) == table.schema
    got = shuffled(op, split(table, 4, 1), 3, 1)["d"].cast(pa.int64()).to_numpy()
    np.testing.assert_array_equal(got, np.sort(got)[::-1])


def test_problems_are_named() -> None:
    table = pa.table({"a": [1], "tags": pa.array([[1, 2]])})
    with pytest.raises(SchemaError, match="by: column 'b' not in the input"):
        sort(by=["b"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="by: column 'tags' is list<item: int64>, which has "
                                          "no order"):
        sort(by=["tags"]).output_schema(table.schema)
    with pytest.raises(ParamError, match="by"):
        sort(by=["a", "a desc"])


def test_rows_that_differ_only_in_the_sign_of_zero_are_not_copies() -> None:
    """The row hash takes -0.0 as 0.0 (as keys compare); rows differing only there are
    not copies, so they keep one order whatever the cut and the places."""
    n = 600
    x = np.where(np.arange(n) % 2 == 0, 0.0, -0.0)
    table = pa.table({"k": np.arange(n) % 3, "x": x, "tag": np.arange(n) % 5})
    op = sort(by=["k"])
    partial = op.partial(table)
    ties = partial.column(partial.num_columns - 1).to_numpy()
    assert len(np.unique(ties)) == 30  # 3 keys x 5 tags x 2 signs
    whole = op.finish(partial)
    for seed, places in ((1, 4), (2, 7), (3, 2)):
        got = shuffled(op, split(table, 6, seed), places, seed)
        assert got.equals(whole)
        assert list(np.signbit(got["x"].to_numpy())) == list(np.signbit(whole["x"].to_numpy()))
