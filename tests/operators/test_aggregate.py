"""aggregate: each function against pandas' group-by on rows with nulls, across any
partitioning; variances without cancellation; deterministic max_by; clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from operators.base import DataError, MissingColumnError, ParamError, SchemaError
from operators.features.aggregate import Aggregate
from operators.testing.cases.features import events_table
from operators.testing.kit import shuffled, split


def aggregate(by: list[str], columns: dict[str, str], **params) -> Aggregate:
    return Aggregate(by=by, columns=columns, **params)


def run(op: Aggregate, table: pa.Table, parts: int = 5, places: int = 3) -> pd.DataFrame:
    """The op over ``parts`` partitions finished in ``places`` places, as pandas indexed
    by the keys."""
    out = shuffled(op, split(table, parts, seed=4), 1 if op.one_place() else places)
    frame = out.to_pandas()
    return frame.set_index(op.params.by).sort_index() if op.params.by else frame


def test_every_function_is_pandas_group_by_over_any_partitioning() -> None:
    table = events_table(rows=3000)
    op = aggregate(["customer"], {
        "rows": "count()", "known_x": "count(x)", "flagged": "count_if(flag and x > 0)",
        "x_sum": "sum(x)", "n_sum": "sum(n)", "x_mean": "mean(x)", "x_min": "min(x)",
        "plan_max": "max(plan)", "x_std": "std(x)", "n_var": "var(n)",
        "plans": "count_distinct(plan)", "any_flag": "any(flag)", "latest": "max(ts)",
        "x_median": "median(x)", "x_q90": "quantile(x, 0.9)", "n_q0": "quantile(n, 0)"})
    got = run(op, table)
    df = table.to_pandas()
    g = df.groupby("customer", dropna=False)
    assert len(got) == df["customer"].nunique(dropna=False) == 36  # 35 ids and null
    want = pd.DataFrame({
        "rows": g.size(), "known_x": g["x"].count(),
        "flagged": g.apply(lambda d: int((d["flag"] & (d["x"] > 0)).sum())),
        "x_sum": g["x"].sum(min_count=1), "n_sum": g["n"].sum(min_count=1),
        "x_mean": g["x"].mean(), "x_min": g["x"].min(), "plan_max": g["plan"].max(),
        "x_std": g["x"].std(), "n_var": g["n"].var(), "plans": g["plan"].nunique(),
        "any_flag": g["flag"].any(), "latest": g["ts"].max(), "x_median": g["x"].median(),
        "x_q90": g["x"].quantile(0.9), "n_q0": g["n"].min()})
    assert got.index.isna().sum() == 1  # null is a key of its own
    got.index = got.index.fillna(-1)
    want.index = want.index.fillna(-1)
    got, want = got.sort_index(), want.sort_index()
    for column in ("rows", "known_x", "flagged", "plans"):
        np.testing.assert_array_equal(got[column], want[column], err_msg=column)
        assert got[column].dtype == np.int64
    for column in ("x_sum", "n_sum", "x_mean", "x_min", "x_std", "n_var", "x_median", "x_q90",
                   "n_q0"):
        np.testing.assert_allclose(got[column].astype(float), want[column].astype(float),
                                   rtol=1e-9, err_msg=column)
    assert list(got["plan_max"].fillna("-")) == list(want["plan_max"].fillna("-"))
    assert list(got["any_flag"]) == list(want["any_flag"])
    assert list(got["latest"]) == list(want["latest"])


def test_keys_of_several_columns_dictionaries_as_their_values() -> None:
    table = events_table(rows=1500)
    op = aggregate(["region", "plan"], {"rows": "count()", "big": "mean(big)"})
    out = shuffled(op, split(table, 4), 2)
    assert out.schema.field("region").type == pa.string()  # a dictionary in the input
    df = table.to_pandas()
    df["region"] = df["region"].astype(str)
    want = df.groupby(["region", "plan"], dropna=False).agg(
        rows=("id", "size"), big=("big", "mean")).reset_index()
    got = out.to_pandas()
    key = ["region", "plan"]
    got, want = (f.fillna({"plan": "~"}).sort_values(key).reset_index(drop=True)
                 for f in (got, want))
    np.testing.assert_array_equal(got["rows"], want["rows"])
    np.testing.assert_allclose(got["big"], want["big"], rtol=1e-12)
    assert list(got["plan"]) == list(want["plan"])


def test_a_variance_of_large_values_across_partitions_loses_no_digits() -> None:
    """Values near 1e9 that differ by units: a sum of squares minus a square loses all
    the digits of the variance (~1e18 * 1e-16 against 1); the partials' means and
    squared deviations keep all but the partial means' own rounding (~1e-8 here)."""
    rng = np.random.default_rng(1)
    values = 1e9 + rng.standard_normal(4000)
    table = pa.table({"k": np.repeat([1, 2], 2000), "v": values})
    got = run(aggregate(["k"], {"var": "var(v)", "sd": "std(v)"}), table, parts=9)
    for k, rows in ((1, values[:2000]), (2, values[2000:])):
        assert got.loc[k, "var"] == pytest.approx(np.var(rows, ddof=1), rel=1e-7)
        assert got.loc[k, "sd"] == pytest.approx(np.std(rows, ddof=1), rel=1e-7)


def test_max_by_takes_the_latest_row_ties_by_value_whatever_the_order() -> None:
    table = pa.table({
        "k": [1, 1, 1, 1, 2, 2, 3],
        "plan": ["basic", "pro", "gold", None, "x", None, "only"],
        "ts": [5, 9, 9, 2, None, None, None],
    })
    op = aggregate(["k"], {"last": "max_by(plan, ts)", "first": "min_by(plan, ts)",
                           "at": "max(ts)"})
    for seed in range(6):  # every partition order, one row per partition
        rows = table.take(np.random.default_rng(seed).permutation(7))
        got = run(op, rows, parts=7, places=2)
        # k=1: ts 9 twice: 'pro' > 'gold'; smallest ts 2 has a null plan
        assert got.loc[1, "last"] == "pro" and pd.isna(got.loc[1, "first"])
        # no order at all: nothing is the latest row
        assert pd.isna(got.loc[2, "last"]) and pd.isna(got.loc[3, "last"])


def test_an_empty_input_is_no_rows_or_one_row_for_all() -> None:
    empty = events_table().schema.empty_table()
    keyed = aggregate(["customer"], {"rows": "count()", "x": "sum(x)"})
    assert keyed.finish(keyed.partial(empty)).num_rows == 0
    overall = aggregate([], {"rows": "count()", "x": "sum(x)", "m": "mean(x)",
                             "d": "count_distinct(plan)", "last": "max_by(plan, ts)"})
    out = overall.finish(overall.partial(empty)).to_pylist()
    assert out == [{"rows": 0, "x": None, "m": None, "d": 0, "last": None}]
    table = events_table(rows=400)
    whole = overall.finish(pa.concat_tables([overall.partial(p) for p in split(table, 4)]))
    assert whole.num_rows == 1 and whole["rows"][0].as_py() == 400
    assert whole["x"][0].as_py() == pytest.approx(pa.compute.sum(table["x"]).as_py())


def test_an_aggregation_of_an_expression() -> None:
    table = pa.table({"k": [1, 1, 2], "kind": ["refund", "buy", "refund"],
                      "amount": [10.0, 5.0, 7.0]})
    op = aggregate(["k"], {"refunded": "sum(if(kind == 'refund', amount, 0.0))",
                           "ratio": "mean(cast(kind == 'refund' as float64))"})
    assert op.finish(op.partial(table)).to_pylist() == [
        {"k": 1, "refunded": 10.0, "ratio": 0.5}, {"k": 2, "refunded": 7.0, "ratio": 1.0}]
    assert op.input_columns(table.schema) == ["k", "kind", "amount"]


@pytest.mark.parametrize(("columns", "by", "message"), [
    ({"s": "summ(x)"}, ["k"], "unknown aggregation 'summ'; did you mean 'sum'?"),
    ({"s": "sum(x, y)"}, ["k"], "sum takes 1 argument, got 2"),
    ({"s": "max_by(x)"}, ["k"], "max_by takes 2 arguments, got 1"),
    ({"s": "sum x"}, ["k"], "'sum x' is not an aggregation"),
    ({"s": "sum(x +)"}, ["k"], "aggregate column 's'"),
    ({"s": "count()"}, ["k", "k"], "by"),
    ({"s": "quantile(x, 1.5)"}, ["k"], "quantile's second argument is a number from 0 to 1"),
    ({"s": "quantile(x, y)"}, ["k"], "got 'y'"),
])
def test_parameter_mistakes_are_named(columns: dict[str, str], by: list[str],
                                      message: str) -> None:
    with pytest.raises(ParamError) as caught:
        aggregate(by, columns)
    assert message in str(caught.value)


def test_partitions_need_keys() -> None:
    with pytest.raises(ParamError, match="with no `by` keys the output is one row"):
        aggregate([], {"n": "count()"}, partitions=4)


@pytest.mark.parametrize(("by", "columns", "message"), [
    (["k"], {"s": "sum(plan)"}, "'s' (sum(plan)): needs numbers, got string"),
    (["k"], {"s": "median(plan)"}, "needs numbers, got string"),
    (["k"], {"s": "sum(flag)"}, "count_if(flag) counts the true rows"),
    (["k"], {"s": "count_if(x)"}, "needs a true/false condition, got double"),
    (["k"], {"s": "min(tags)"}, "'tags' is list<item: string>, which has no order"),
    (["k"], {"k": "count()"}, "'k' is also a key column"),
    (["tags"], {"n": "count()"}, "keys are plain values"),
    (["k"], {"s": "sum(amonut)"}, "amount"),
])
def test_schema_mistakes_are_named(by: list[str], columns: dict[str, str],
                                   message: str) -> None:
    schema = pa.schema({"k": pa.int64(), "x": pa.float64(), "plan": pa.string(),
                        "flag": pa.bool_(), "tags": pa.list_(pa.string()),
                        "amount": pa.float64()})
    with pytest.raises(SchemaError) as caught:
        aggregate(by, columns).output_schema(schema)
    assert message in str(caught.value)


def test_a_missing_key_is_named_with_the_closest() -> None:
    with pytest.raises(MissingColumnError, match="customr.*customer"):
        aggregate(["customr"], {"n": "count()"}).output_schema(
            pa.schema({"customer": pa.int64()}))


def test_a_value_that_fails_names_the_aggregate() -> None:
    op = aggregate(["k"], {"n": "sum(cast(plan as int64))"})
    with pytest.raises(DataError, match="aggregate column 'n' .*: .*basic"):
        op.partial(pa.table({"k": [1], "plan": ["basic"]}))


def test_means_and_deviations_of_large_integers_are_float_sums() -> None:
    """A mean or deviation adds integers up in float64 (pandas, Spark): no wrapped int64
    sum, no refused cast of a value past 2**53."""
    big = 2**52
    table = pa.table({"k": [1] * 4096 + [2, 2], "i": [big] * 4096 + [2**53 + 1, 2**53 + 3]})
    got = run(aggregate(["k"], {"m": "mean(i)", "v": "var(i)"}), table)
    assert got.loc[1, "m"] == float(big) and got.loc[1, "v"] == 0.0
    assert got.loc[2, "m"] == pytest.approx(2.0**53 + 2, rel=1e-15)
    # an integer sum stays int64 while it fits, and one that does not is an error (4096 *
    # 2**52 is 2**64: Arrow's int64 sum wraps around to 0)
    fits = run(aggregate(["k"], {"s": "sum(i)"}), table.slice(0, 2047))
    assert fits.loc[1, "s"] == 2047 * big
    with pytest.raises(DataError, match="'s': the sum is past the range of int64"):
        run(aggregate(["k"], {"s": "sum(i)"}), table)


def test_float_keys_and_distinct_values_as_spark_normalises_them() -> None:
    """-0.0 and 0.0 are one key, every NaN one key (whatever its bits), and so in
    distinct counts; the rows' hash for places agrees (one key in one place)."""
    nan_bits = np.array([0x7FF8000000000000, 0x7FF8000000000001, 0xFFF8000000000000],
                        dtype=np.uint64).view(np.float64)
    keys = np.concatenate([[0.0, -0.0, 1.0], nan_bits])
    table = pa.table({"k": keys, "v": np.arange(6, dtype=np.float64),
                      "x": np.concatenate([[-0.0, 0.0, np.inf], nan_bits])})
    op = aggregate(["k"], {"n": "count()", "d": "count_distinct(x)"})
    for parts, places in ((1, 1), (6, 3), (3, 5)):
        got = shuffled(op, split(table, parts, seed=1), places).sort_by("k").to_pydict()
        assert got["n"] == [2, 1, 3] and str(got["k"]) == "[0.0, 1.0, nan]"
        assert got["d"] == [1, 1, 1]
    assert shuffled(aggregate(["v"], {"d": "count_distinct(x)"}), [table], 2)["d"].to_pylist(
    ) == [1] * 6
    whole = aggregate([], {"d": "count_distinct(x)"})
    assert whole.finish(whole.partial(table))["d"].to_pylist() == [3]  # 0.0, inf, NaN


def test_a_partition_of_nulls_leaves_a_huge_variance_as_it_is() -> None:
    """A key's partial of nulls only (no values, mean 0) added 0 * inf to the spread of a
    variance whose centre is huge: var of [null | 3.0, 1e300] was NaN over 2 partitions
    and inf (Spark's) over 1."""
    table = pa.table({"k": [1, 1, 1], "x": [None, 3.0, 1e300]})
    op = aggregate(["k"], {"v": "var(x)", "s": "std(x)"})
    for parts in ([table], [table.slice(0, 1), table.slice(1)]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no NumPy overflow warning for the user
            got = shuffled(op, parts, 1).to_pydict()
        assert got["v"] == [float("inf")] and got["s"] == [float("inf")]


def test_a_quantile_on_or_between_equal_infinities_is_that_infinity() -> None:
    """A median or quantile that falls on a value, or between two equal ones, is that
    value (Spark's percentile): the median of [1, inf, inf] and of [inf, inf] was NaN
    (inf + (inf - inf) * 0). Between other values it is Spark's arithmetic: inf above a
    number, NaN between -inf and inf."""
    inf = float("inf")
    groups = {1: [1.0, inf, inf], 2: [inf, inf], 3: [-inf, -inf, 3.0], 4: [0.0, inf],
              5: [-inf, inf], 6: [-inf, 2.0, 5.0]}
    table = pa.table({"k": [k for k, vs in groups.items() for _ in vs],
                      "x": [v for vs in groups.values() for v in vs]})
    got = run(aggregate(["k"], {"m": "median(x)", "q": "quantile(x, 0.5)"}), table,
              parts=3)
    assert got["m"].tolist()[:4] == [inf, inf, -inf, inf]
    assert np.isnan(got.loc[5, "m"]) and got.loc[6, "m"] == 2.0
    got = run(aggregate(["k"], {"q": "quantile(x, 0.25)"}), table, parts=3)
    assert got["q"].tolist()[:4] == [inf, inf, -inf, inf]
    assert np.isnan(got.loc[5, "q"]) and np.isnan(got.loc[6, "q"])  # -inf + inf / 2


@pytest.mark.parametrize("key", ["count_all", "__x0", "__p0", "__row", "__all", "k_sum"])
def test_any_column_name_is_a_key(key: str) -> None:
    """Keys named like Arrow's outputs or sluice's own columns group as any other."""
    table = pa.table({key: [5, 5, 6], "k": [1, 2, 3], "v": [1.0, 2.0, 3.0]})
    op = aggregate([key], {"n": "count()", "s": "sum(v)", "t": "sum(k)",
                           "m": "max_by(v, k)", "d": "count_distinct(k)", "sd": "std(v)"})
    got = shuffled(op, split(table, 2), 1).to_pylist()
    assert got == [{key: 5, "n": 2, "s": 3.0, "t": 3, "m": 2.0, "d": 2,
                    "sd": pytest.approx(np.std([1.0, 2.0], ddof=1))},
                   {key: 6, "n": 1, "s": 3.0, "t": 3, "m": 3.0, "d": 1, "sd": None}]


def test_columns_of_no_values_or_no_order_are_refused_as_planned() -> None:
    schema = pa.schema({"k": pa.int64(), "nothing": pa.null(), "wait": pa.duration("s"),
                        "half": pa.float16()})
    with pytest.raises(SchemaError) as caught:
        aggregate(["k"], {"a": "max(nothing)", "b": "count_distinct(nothing)",
                          "c": "max(wait)", "d": "min(half)", "n": "count(nothing)"}
                  ).output_schema(schema)
    message = str(caught.value)  # every problem at once
    assert "'a' (max(nothing)): 'nothing' is always null (type null)" in message
    assert "'b' (count_distinct(nothing)): 'nothing' is always null" in message
    assert "'c' (max(wait)): 'wait' is duration[s], which has no order here" in message
    assert "'d' (min(half)): 'half' is halffloat" in message and "'n'" not in message
    with pytest.raises(SchemaError, match="key column 'nothing' is null"):
        aggregate(["nothing"], {"n": "count()"}).output_schema(schema)


@pytest.mark.parametrize(("text", "message"), [
    ("sum(amount) / count()", "one aggregation per column: 'sum(amount) / count()' goes on "
                              "after 'sum(amount)'"),
    ("COUNT(DISTINCT kind)", "write count_distinct(x) for count(distinct x) "
                             "(count_distinct(kind))"),
])
def test_sql_habits_get_a_hint(text: str, message: str) -> None:
    with pytest.raises(ParamError) as caught:
        aggregate(["k"], {"a": text})
    assert message in str(caught.value)


def test_every_bad_column_is_named_at_once() -> None:
    with pytest.raises(ParamError) as caught:
        aggregate(["k"], {"a": "summ(x)", "b": "sum(x)", "c": "max_by(x)"})
    assert "column 'a'" in str(caught.value) and "column 'c'" in str(caught.value)


def test_max_by_takes_nan_orders_for_none() -> None:
    nan = float("nan")
    table = pa.table({"k": [1, 1, 2], "o": [nan, 1.0, nan], "v": ["a", "b", "c"]})
    got = run(aggregate(["k"], {"last": "max_by(v, o)", "first": "min_by(v, o)"}), table,
              parts=3, places=2)
    assert got.loc[1, "last"] == "b" and got.loc[1, "first"] == "b"
    assert pd.isna(got.loc[2, "last"])


# --------------------------------------------------------------------------- pivot


def test_a_pivot_is_the_aggregate_of_each_values_rows_over_any_partitioning() -> None:
    """Each aggregation once per value, over that value's rows (null a value; a value no
    row has: counts 0, the rest null): the aggregate of the value's rows alone, and
    pandas' group-by of them for the sums."""
    table = events_table(rows=3000)
    columns = {"rows": "count()", "x_sum": "sum(x)", "x_mean": "mean(x)",
               "big": "count_if(x > 0)", "last": "max_by(n, ts)", "x_med": "median(x)"}
    op = aggregate(["customer"], columns,
                   pivot={"column": "plan", "values": ["basic", "premium", None, "gold"]})
    got = run(op, table)
    assert list(got.columns) == [f"{n}_{v}" for n in columns
                                 for v in ("basic", "premium", "null", "gold")]
    got.index = got.index.fillna(-1)
    plan = table.column("plan")
    for value, label in (("basic", "basic"), ("premium", "premium"), (None, "null")):
        rows = table.filter(pc.is_null(plan) if value is None else pc.equal(plan, value))
        alone = run(aggregate(["customer"], columns), rows, parts=3)
        alone.index = alone.index.fillna(-1)
        alone = alone.reindex(got.index)
        for name in columns:
            want, have = alone[name], got[f"{name}_{label}"]
            if name in ("rows", "big"):
                np.testing.assert_array_equal(have, want.fillna(0).astype(int), err_msg=name)
            else:
                np.testing.assert_allclose(have.astype(float), want.astype(float),
                                           rtol=1e-9, err_msg=f"{name} {label}")
        frame = rows.to_pandas()
        sums = frame.groupby(frame["customer"].fillna(-1))["x"].sum(min_count=1)
        np.testing.assert_allclose(got[f"x_sum_{label}"].astype(float),
                                   sums.reindex(got.index).astype(float), rtol=1e-9)
    assert (got["rows_gold"] == 0).all() and got["x_sum_gold"].isna().all()


def arrow_run(op: Aggregate, table: pa.Table, places: int = 2) -> dict[str, list]:
    """The op over 2 partitions finished in ``places`` places, by key, as lists."""
    out = shuffled(op, split(table, 2, seed=4), 1 if op.one_place() else places)
    if op.params.by:
        out = out.sort_by([(k, "ascending") for k in op.params.by])
    return out.drop_columns(op.params.by).to_pydict()


def test_a_pivot_on_dates_numbers_and_booleans_names_its_columns_by_format() -> None:
    import datetime

    table = pa.table({"k": [1, 1, 2, 2], "day": pa.array(
        np.array(["2026-11-01", "2026-11-02", "2026-11-01", "2026-11-01"], "datetime64[D]")),
        "n": [1, 2, 3, 4], "ok": [True, False, True, True], "v": [10.0, 20.0, 30.0, 40.0]})
    op = aggregate(["k"], {"s": "sum(v)"}, pivot={
        "column": "day", "values": [datetime.date(2026, 11, 1), datetime.date(2026, 11, 2)],
        "format": "{value}:{name}"})
    assert arrow_run(op, table) == {"2026-11-01:s": [10.0, 70.0], "2026-11-02:s": [20.0, None]}
    op = aggregate(["k"], {"s": "sum(v)"}, pivot={"column": "ok", "values": [True, False]})
    assert arrow_run(op, table) == {"s_true": [10.0, 70.0], "s_false": [20.0, None]}
    op = aggregate([], {"s": "sum(v)"}, pivot={"column": "n", "values": [1, 4],
                                               "format": "v{value}"})
    assert arrow_run(op, table) == {"v1": [10.0], "v4": [40.0]}


@pytest.mark.parametrize("pivot, message", [
    ({"column": "plan", "values": ["a", "a"]}, "the value 'a' is listed twice"),
    ({"column": "plan", "values": [float("nan")]}, "NaN is no value to pivot on"),
    ({"column": "plan", "values": ["a"], "format": "{name}"}, "format must hold {value}"),
    ({"column": "plan", "values": ["a"], "format": "{value}_{kind}"},
     "only {name} and {value} may be filled in"),
    ({"column": "plan", "values": ["a", "b"], "format": "{value}"},
     "gives each aggregation's columns the same names"),
    ({"column": "plan", "values": [1, "1"]}, "two columns would be named 'x_1'"),
    ({"column": "customer", "values": [1]}, "'customer' is also a key column"),
])
def test_pivot_mistakes_are_named(pivot: dict, message: str) -> None:
    with pytest.raises((ParamError, ValueError), match=message):
        aggregate(["customer"], {"x": "sum(x)", "y": "count()"}, pivot=pivot)


def test_pivot_columns_and_values_are_checked_against_the_input() -> None:
    schema = events_table(rows=10).schema
    with pytest.raises(SchemaError, match="pivot: column 'plann' not in the input; did you "
                                          "mean 'plan'"):
        aggregate(["customer"], {"s": "sum(x)"},
                  pivot={"column": "plann", "values": ["a"]}).output_schema(schema)
    for values, message in (([1, "a"], r"the value 'a' is no int64"),
                            ([1.5], r"the value 1.5 is no int64"),
                            ([1, 1.0], r"the values 1 and 1.0 are one value of the column")):
        with pytest.raises(SchemaError, match=r"pivot: column 'n' \(int64\): " + message):
            aggregate(["customer"], {"s": "sum(x)"},
                      pivot={"column": "n", "values": values}).output_schema(schema)
    with pytest.raises(SchemaError, match=r"pivot: column 'tiny' \(int8\): the value 1000 "
                                          r"is no int8"):
        aggregate(["customer"], {"s": "sum(x)"},
                  pivot={"column": "tiny", "values": [1000]}).output_schema(
            schema.append(pa.field("tiny", pa.int8())))
    with pytest.raises(SchemaError, match=r"columns: 's' \(sum\(plan\)\): needs numbers"):
        aggregate(["customer"], {"s": "sum(plan)"},
                  pivot={"column": "n", "values": [1]}).output_schema(schema)


def test_pivot_values_are_matched_in_the_columns_type() -> None:
    """0.1 of a float32 column is float32(0.1); infinities; an integer of a decimal
    column; -0.0 rows are 0.0's."""
    import decimal

    table = pa.table({"f": pa.array([0.1, 0.1, float("inf"), -0.0], pa.float32()),
                      "d": pa.array([decimal.Decimal("1.00")] * 4, pa.decimal128(10, 2)),
                      "v": [1.0, 2.0, 4.0, 8.0]})
    op = aggregate([], {"s": "sum(v)"}, pivot={"column": "f", "values": [0.1, float("inf"),
                                                                         0.0]})
    assert arrow_run(op, table) == {"s_0.1": [3.0], "s_inf": [4.0], "s_0.0": [8.0]}
    op = aggregate([], {"n": "count()"}, pivot={"column": "d", "values": [1, 2]})
    assert arrow_run(op, table) == {"n_1": [4], "n_2": [0]}


def test_a_pivot_keeps_a_partial_row_per_key_and_value_present() -> None:
    """Grouped by the keys and the value (Spark's pivot), not a column of every row per
    value: 200 listed values cost what the values present do."""
    rng = np.random.default_rng(3)
    n = 50_000
    table = pa.table({"k": rng.integers(0, 100, n), "kind": rng.integers(0, 5, n),
                      "v": rng.random(n)})
    op = aggregate(["k"], {"s": "sum(v)", "n": "count()"},
                   pivot={"column": "kind", "values": list(range(200))})
    partials = op.partial(table)
    assert partials.num_rows == 100 * 5 and partials.nbytes < 50 * 1000
    out = op.finish(partials)
    assert out.num_rows == 100 and out.num_columns == 1 + 2 * 200
    assert out["n_7"].to_pylist() == [0] * 100 and out["s_7"].null_count == 100


def test_pivot_values_of_dates_and_times_are_dates_and_times() -> None:
    """A number is no date (1 would be 1970-01-02) nor a time (YAML reads an unquoted
    12:00:00 as 43200); a time of day is given as text."""
    table = pa.table({"t": pa.array([43_200_000_000, 0], pa.time64("us")), "v": [1.0, 2.0]})
    op = aggregate([], {"s": "sum(v)"}, pivot={"column": "t", "values": ["12:00:00"]})
    assert arrow_run(op, table) == {"s_12:00:00": [1.0]}
    for values, t in (([43200], "t"), ([1], "d")):
        schema = pa.schema([("t", pa.time64("us")), ("d", pa.date32()), ("v", pa.float64())])
        with pytest.raises(SchemaError, match="a number is no date or time.*in quotes"):
            aggregate([], {"s": "sum(v)"}, pivot={"column": t, "values": values}
                      ).output_schema(schema)


def test_the_hint_for_a_sum_of_durations_is_a_cast_that_converts() -> None:
    """sum(gap) of a duration (ts - previous_ts) said "cast it, e.g. sum(cast(gap as
    float64))", which Arrow refuses (no cast from a duration to a float): the hint is the
    int64 cast, which counts its units, and that aggregation runs."""
    table = pa.table({"k": [1, 1, 2],
                      "gap": pa.array([1_000, 2_000, None], pa.duration("ns"))})
    with pytest.raises(SchemaError, match="needs numbers, got duration") as info:
        aggregate(["k"], {"s": "sum(gap)"}).output_schema(table.schema)
    assert info.value.hint == "cast it, e.g. sum(cast(gap as int64)): its count of ns"
    got = run(aggregate(["k"], {"s": "sum(cast(gap as int64))"}), table)
    assert got["s"].tolist()[:1] == [3_000] and pd.isna(got.loc[2, "s"])
