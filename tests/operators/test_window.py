"""window: every function against pandas (group-by shift, cumsum, rolling, rank), on any
partitioning; ties, nulls, time spans; what is refused as planned and why."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from operators.base import DataError, ParamError, SchemaError, lookup
from operators.features.window import Window
from operators.testing.kit import shuffled


def window(**params) -> Window:
    cls = lookup("window")
    op = cls.create(cls.Params(**params))
    assert isinstance(op, Window)
    return op


@pytest.fixture
def events() -> pa.Table:
    rng = np.random.default_rng(21)
    n = 3000
    return pa.table({
        "k": pa.array(rng.integers(0, 60, n), mask=rng.random(n) < 0.02),
        "ts": pa.array(rng.integers(0, 400_000, n) * 10**6, pa.timestamp("us")),
        "x": pa.array(rng.normal(100.0, 30.0, n), mask=rng.random(n) < 0.1),
        "i": rng.integers(-50, 50, n),
        "plan": pa.array(rng.choice(["a", "b", "c"], n)).dictionary_encode(),
    })


COLUMNS = {"rn": "row_number()", "rk": "rank()", "dr": "dense_rank()", "prev": "lag(x)",
           "after2": "lead(i, 2)", "prev_plan": "lag(plan)", "cs": "cum_sum(x)",
           "ci": "cum_sum(i)", "cc": "cum_count(x)", "rows": "cum_count()",
           "cm": "cum_mean(i)", "lo": "cum_min(x)", "hi": "cum_max(i)",
           "r3": "rolling_sum(x, 3)", "m3": "rolling_mean(i, 3)", "c3": "rolling_count(x, 3)",
           "s2d": "rolling_sum(x, '2 days')", "m2d": "rolling_mean(x, '2 days')",
           "c1h": "rolling_count(x, '1 hour')"}


def reference(table: pa.Table) -> pd.DataFrame:
    """pandas, on the rows in the window's order (by k, ts; ties as the output has them)."""
    df = table.to_pandas()
    df["k"] = df["k"].fillna(-1)  # pandas drops null keys from groups; one key here
    g = df.groupby("k", sort=False)
    x_known = df["x"].notna()
    ref = pd.DataFrame({
        "rn": g.cumcount() + 1,
        "rk": g["ts"].rank(method="min"), "dr": g["ts"].rank(method="dense"),
        "prev": g["x"].shift(1), "after2": g["i"].shift(-2),
        "cs": g["x"].transform(lambda s: s.fillna(0).cumsum()).where(
            x_known.groupby(df["k"]).cumsum() > 0),
        "ci": g["i"].cumsum(), "cc": x_known.groupby(df["k"]).cumsum(),
        "rows": g.cumcount() + 1, "cm": g["i"].transform(lambda s: s.expanding().mean()),
        "lo": g["x"].cummin().groupby(df["k"]).ffill(), "hi": g["i"].cummax(),
        "r3": g["x"].transform(lambda s: s.rolling(3, min_periods=1).sum()),
        "m3": g["i"].transform(lambda s: s.rolling(3, min_periods=1).mean()),
        "c3": g["x"].transform(lambda s: s.rolling(3, min_periods=1).count()),
    })
    for name, span, fn in (("s2d", "2D", "sum"), ("m2d", "2D", "mean"), ("c1h", "1h", "count")):
        ref[name] = df.groupby("k", group_keys=False, sort=False).apply(
            lambda d, span=span, fn=fn: getattr(d.rolling(span, on="ts")["x"], fn)(),
            include_groups=False)
    ref["prev_plan"] = g["plan"].shift(1).astype(object)
    return ref


@pytest.mark.parametrize("buckets", [1, 4])
def test_every_function_is_pandas_on_any_partitioning(events: pa.Table, buckets: int) -> None:
    op = window(by=["k"], order=["ts"], columns=COLUMNS)
    parts = [events.slice(0, 1000), events.slice(1000, 0), events.slice(1000)]
    out = shuffled(op, parts, buckets, seed=buckets)
    assert out.schema == op.output_schema(events.schema)
    assert out.num_rows == events.num_rows
    assert out.schema.field("prev_plan").type == pa.string()
    # each place in key order, then time: compare key by key with pandas
    out = out.sort_by([("k", "ascending"), ("rn", "ascending")])
    want = reference(out.select(events.column_names))
    got = out.to_pandas()
    for name in COLUMNS:
        if name == "prev_plan":
            assert [None if pd.isna(v) else v for v in got[name]] == [
                None if pd.isna(v) else v for v in want[name]]
            continue
        a, b = got[name].astype(float).to_numpy(), want[name].astype(float).to_numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12, err_msg=name)


def test_the_output_is_in_key_then_order_and_the_same_on_any_partitioning(
        events: pa.Table) -> None:
    op = window(by=["k"], order=["ts"], columns={"rn": "row_number()", "prev": "lag(i)"})
    one = shuffled(op, [events], 1)
    keys = one["k"].to_numpy(zero_copy_only=False)
    ts = one["ts"].cast(pa.int64()).to_numpy()
    known = ~np.isnan(keys)
    assert (np.diff(keys[known]) >= 0).all() and np.isnan(keys[known.sum():]).all()
    same_key = np.diff(keys) == 0
    assert (np.diff(ts)[same_key] >= 0).all()
    # ties of time: the same row first whatever the partitioning (a hash of the values)
    for seed, buckets in ((1, 1), (2, 5)):
        rng = np.random.default_rng(seed)
        scrambled = events.take(rng.permutation(events.num_rows))
        other = shuffled(op, [scrambled.slice(0, 1234), scrambled.slice(1234)], buckets)
        order = [("k", "ascending"), ("rn", "ascending")]
        assert other.sort_by(order).equals(one.sort_by(order))


def test_no_keys_is_one_key_of_every_row(events: pa.Table) -> None:
    op = window(by=[], order=["ts"], columns={"rn": "row_number()", "cs": "cum_sum(i)"})
    assert op.one_place()
    out = shuffled(op, [events.slice(0, 10), events.slice(10)], 1)
    assert out["rn"].to_pylist() == list(range(1, events.num_rows + 1))
    np.testing.assert_array_equal(out["cs"].to_numpy(), np.cumsum(out["i"].to_numpy()))


def test_a_null_order_comes_last_and_has_no_time_window() -> None:
    rows = pa.table({"k": [1, 1, 1, 1], "t": pa.array([3, None, 1, 2], pa.timestamp("s")),
                     "x": [1.0, 10.0, 100.0, 1000.0]})
    out = shuffled(window(by=["k"], order=["t"], columns={
        "rn": "row_number()", "rk": "rank()", "cs": "cum_sum(x)",
        "day": "rolling_sum(x, '1 day')"}), [rows], 1)
    assert out["x"].to_pylist() == [100.0, 1000.0, 1.0, 10.0]
    assert out["rk"].to_pylist() == [1, 2, 3, 4]
    assert out["cs"].to_pylist() == [100.0, 1100.0, 1101.0, 1111.0]
    assert out["day"].to_pylist() == [100.0, 1100.0, 1101.0, None]


def test_running_totals_are_each_keys_own(events: pa.Table) -> None:
    """A key's sums are made of its own values in its own order: beside a key of huge
    values, the same as alone (a running total over the partition would cancel)."""
    small = pa.table({"k": [2] * 5, "t": [1, 2, 3, 4, 5], "x": [0.1, 0.2, 0.3, 0.4, 0.5]})
    huge = pa.table({"k": [1] * 3, "t": [1, 2, 3], "x": [1e17, 3e17, -2e17]})
    op = window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)", "r2": "rolling_sum(x, 2)"})
    alone = shuffled(op, [small], 1)
    beside = shuffled(op, [pa.concat_tables([huge, small])], 1).filter(
        pa.compute.equal(pa.compute.field("k"), 2))
    assert beside.equals(alone)
    assert alone["r2"].to_pylist()[1:] == [0.1 + 0.2, 0.2 + 0.3, 0.3 + 0.4, 0.4 + 0.5]


def test_an_integer_running_sum_past_int64_stops_the_run() -> None:
    rows = pa.table({"k": [1, 1], "t": [1, 2], "x": pa.array([2**62, 2**62], pa.int64())})
    with pytest.raises(DataError, match="window column 'cs': a sum of integers passes the "
                                        "range of int64"):
        shuffled(window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)"}), [rows], 1)


@pytest.mark.parametrize(("columns", "order", "message"), [
    ({"a": "lag()"}, ["t"], "window column 'a': lag takes 1 to 3 arguments, got 0"),
    ({"a": "lagg(x)"}, ["t"], "window column 'a': unknown window function 'lagg'; did you "
                              "mean 'lag'?"),
    ({"a": "sum(x)"}, ["t"], "unknown window function 'sum'"),
    ({"a": "lag(x, 0)"}, ["t"], "lag's offset is a whole number of rows from 1 to "
                                "2,147,483,647, got '0'"),
    ({"a": "rolling_sum(x, 100000000000000000000)"}, ["t"], "the window's rows is a whole "
                                                            "number of rows from 1 to"),
    ({"a": "rolling_sum(x, '1 day')"}, ["t desc"], "a time span is the time before each "
                                                   "row: order 't desc' ascending"),
    ({"a": "rolling_sum(x, '3 fortnights')"}, ["t"], "the window '3 fortnights' is not a "
                                                    "time span"),
    ({"a": "rolling_sum(x, '1 day')"}, ["t", "x"], "window column 'a': a time span needs "
                                                   "one order column, a time (order has 2)"),
    ({"a": "row_number()"}, [], "name at least one column to order the rows by"),
])
def test_bad_parameters_say_what_and_how(columns: dict, order: list, message: str) -> None:
    cls = lookup("window")
    with pytest.raises((ParamError, ValueError), match=message.replace("(", r"\(").replace(
            ")", r"\)").replace("?", r"\?")):
        cls.Params(by=["k"], order=order, columns=columns)


def test_a_time_span_of_two_orders_is_told_the_users_own_time_column() -> None:
    """The hint named a column of no one's input (order: [event_time]): it is the step's
    first order column."""
    with pytest.raises(ParamError) as info:
        lookup("window").Params(by=["k"], order=["ts", "x"],
                                columns={"a": "rolling_sum(x, '1 day')"})
    assert info.value.hint.startswith("order: [ts] ")


@pytest.mark.parametrize(("columns", "order", "message"), [
    ({"x": "lag(x)"}, ["t"], "window column 'x': the input has a column 'x' already"),
    ({"a": "cum_sum(s)"}, ["t"], "window column 'a' (cum_sum(s)): cum_sum takes numbers, "
                                 "not string"),
    ({"a": "rolling_sum(x, '1 day')"}, ["n"], "a time span needs a time order, and 'n' is "
                                              "int64"),
    ({"a": "lag(nope)"}, ["t"], "window column 'a' (lag(nope)): unknown column 'nope' (a "
                                "text value goes in quotes: 'nope'); the columns are: k, t, "
                                "n, x, s"),
])
def test_schema_problems_are_found_as_planned(columns: dict, order: list, message: str) -> None:
    schema = pa.schema({"k": pa.int64(), "t": pa.timestamp("s"), "n": pa.int64(),
                        "x": pa.float64(), "s": pa.string()})
    with pytest.raises(SchemaError) as info:
        window(by=["k"], order=order, columns=columns).output_schema(schema)
    assert message in str(info.value)


def test_a_nan_an_infinity_or_a_huge_value_counts_only_in_the_windows_that_hold_it() -> None:
    """As pandas and Spark: a window's sum is of its own rows (not a difference of running
    totals, which a NaN, an inf or 1e20 would spoil for the rest of the key)."""
    x = [1.0, float("nan"), 1.0, 1.0, float("inf"), 1.0, 1.0, 1e20, 0.1, 0.1, 0.1]
    rows = pa.table({"k": [1] * len(x), "t": list(range(len(x))), "x": x})
    out = shuffled(window(by=["k"], order=["t"], columns={
        "r2": "rolling_sum(x, 2)", "m3": "rolling_mean(x, 3)", "cs": "cum_sum(x)",
        "hi": "cum_max(x)", "lo": "cum_min(x)"}), [rows], 1)
    # NaN is a value (as in aggregate and Spark): the windows that hold it are NaN
    nan, inf = float("nan"), float("inf")
    want = [1.0, nan, nan, 2.0, inf, inf, 2.0, 1e20 + 1.0, 1e20 + 0.1, 0.2, 0.2]
    got = out["r2"].to_pylist()
    assert [str(v) for v in got] == [str(v) for v in want]
    assert got[-3:] == [1e20 + 0.1, 0.2, 0.2]
    assert out["m3"].to_pylist()[-1] == pytest.approx(0.1)
    assert np.isnan(out["cs"].to_pylist()[-1])  # a running total holds the NaN (SQL)
    # NaN orders above every number (Spark): the largest from it on, never the smallest
    assert np.isnan(out["hi"].to_pylist()[1]) and out["lo"].to_pylist()[1] == 1.0


def test_sums_in_a_window_fit_when_the_keys_total_would_not() -> None:
    big = 10**16
    rows = pa.table({"k": [1] * 1000, "t": list(range(1000)), "x": [big] * 1000})
    out = shuffled(window(by=["k"], order=["t"], columns={"r2": "rolling_sum(x, 2)"}),
                   [rows], 1)
    assert out["r2"].to_pylist()[1:4] == [2 * big] * 3
    swings = pa.table({"k": [1] * 4, "t": [1, 2, 3, 4], "x": [2**62, -(2**62)] * 2})
    out = shuffled(window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)"}), [swings], 1)
    assert out["cs"].to_pylist() == [2**62, 0, 2**62, 0]
    low = pa.table({"k": [1, 1], "t": [1, 2], "x": pa.array([-(2**63), -1], pa.int64())})
    with pytest.raises(DataError, match="a sum of integers passes the range of int64"):
        shuffled(window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)"}), [low], 1)
    huge = pa.table({"k": [1], "t": [1], "x": pa.array([2**63 + 1], pa.uint64())})
    with pytest.raises(DataError, match="a value of 'x' is past the range of int64"):
        shuffled(window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)"}), [huge], 1)


def test_a_time_span_in_nanoseconds_and_a_descending_order() -> None:
    ns = pa.array([0, 1, 86_400 * 10**9 - 1, 86_400 * 10**9 + 5], pa.timestamp("ns"))
    rows = pa.table({"k": [1, 1, 1, 1], "t": ns, "x": [1.0, 2.0, 4.0, 8.0]})
    out = shuffled(window(by=["k"], order=["t"], columns={
        "day": "rolling_sum(x, '1 day')"}), [rows], 1)
    assert out["day"].to_pylist() == [1.0, 3.0, 7.0, 12.0]
    top = shuffled(window(by=["k"], order=["x desc"], columns={
        "rk": "rank()", "first": "lag(x)"}), [rows], 1)
    assert top["x"].to_pylist() == [8.0, 4.0, 2.0, 1.0]
    assert top["rk"].to_pylist() == [1, 2, 3, 4]


def test_decimals_sum_as_float64_and_text_has_a_running_max() -> None:
    import decimal

    rows = pa.table({"k": [1, 1, 1], "t": [1, 2, 3],
                     "d": pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("2.50")],
                                   pa.decimal128(10, 2)), "s": ["b", "c", "a"]})
    op = window(by=["k"], order=["t"], columns={"ds": "cum_sum(d)", "top": "cum_max(s)"})
    out = shuffled(op, [rows], 1)
    assert out.schema == op.output_schema(rows.schema)
    assert out["ds"].to_pylist() == [1.25, 1.25, 3.75]
    assert out["top"].to_pylist() == ["b", "c", "c"]


def test_an_argument_that_fails_on_the_rows_names_its_column() -> None:
    rows = pa.table({"k": [1, 1], "t": [1, 2], "s": ["1", "x"]})
    op = window(by=["k"], order=["t"], columns={"n": "row_number()",
                                                 "bad": "lag(cast(s as int64))"})
    with pytest.raises(DataError, match=r"window column 'bad' \(lag\(cast\(s as int64\)\)\)"):
        shuffled(op, [rows], 1)


@pytest.mark.parametrize("spread", [10**9, 10**18, 4 * 10**18])
def test_time_windows_are_brute_forces_whatever_the_times_range(spread: int) -> None:
    """Keys whose times span centuries (nanoseconds near int64's ends) are searched in
    groups that keep the search's positions in range."""
    rng = np.random.default_rng(spread % 97)
    n = 400
    t = rng.integers(-spread, spread, n)
    rows = pa.table({"k": rng.integers(0, 6, n), "t": pa.array(t, pa.timestamp("ns"),
                                                              mask=rng.random(n) < 0.05),
                     "x": rng.random(n)})
    out = shuffled(window(by=["k"], order=["t"], columns={
        "w": "rolling_count(x, '1 weeks')", "s": "rolling_sum(x, '1 weeks')"}), [rows], 1)
    week = 7 * 86_400 * 10**9
    k, ts = out["k"].to_numpy(), out["t"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    x, known = out["x"].to_numpy(), out["t"].is_valid().to_numpy(zero_copy_only=False)
    for i in range(n):
        if not known[i]:
            assert out["w"][i].as_py() == 0 and out["s"][i].as_py() is None
            continue
        inside = [j for j in range(i + 1) if k[j] == k[i] and known[j] and ts[j] > ts[i] - week]
        assert out["w"][i].as_py() == len(inside)
        assert out["s"][i].as_py() == pytest.approx(x[inside].sum())


def test_lag_and_lead_with_a_default_past_the_keys_rows() -> None:
    rows = pa.table({"k": [1, 1, 2], "t": [1, 2, 1], "x": pa.array([5, None, 7], pa.int32()),
                     "fallback": [-1.0, -2.0, -3.0]})
    op = window(by=["k"], order=["t"], columns={
        "prev": "lag(x, 1, 0)", "nxt": "lead(x, 1, fallback)", "two": "lag(x, 2, null)"})
    out = shuffled(op, [rows], 1)
    assert out.schema == op.output_schema(rows.schema)
    assert out["prev"].to_pylist() == [0, 5, 0]
    assert out["nxt"].to_pylist() == [None, -2, -3]  # a null x on the row after stays null
    assert out["two"].to_pylist() == [None, None, None]
    with pytest.raises(DataError, match=r"window column 'p': lag's default \(2.5\) as int32: "):
        shuffled(window(by=["k"], order=["t"], columns={"p": "lag(x, 1, 2.5)"}), [rows], 1)
    with pytest.raises(SchemaError, match=r"lag's default is string, and the values are "
                                          r"int32 \(give a default of int32\)"):
        window(by=["k"], order=["t"], columns={"p": "lag(x, 1, 'none')"}).output_schema(
            rows.schema)


def spark_ntile(rows: int, groups: int) -> list[int]:
    """Spark's NTILE: as even as can be, the first groups one row larger."""
    small, larger = divmod(rows, groups)
    return [g + 1 for g in range(groups) for _ in range(small + (g < larger))]


@pytest.mark.parametrize("buckets", [1, 3])
def test_a_rows_place_among_all_its_keys_rows(buckets: int) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    rows = pa.table({"k": rng.integers(0, 50, n), "o": rng.integers(0, 30, n),
                     "x": rng.normal(size=n)})
    op = window(by=["k"], order=["o"], columns={
        "pr": "percent_rank()", "cd": "cume_dist()", "quarter": "ntile(4)",
        "many": "ntile(70)", "fv": "first_value(x)", "lv": "last_value(x)",
        "rn": "row_number()"})
    out = shuffled(op, [rows.slice(0, 1000), rows.slice(1000)], buckets)
    assert out.schema == op.output_schema(rows.schema)
    df = out.to_pandas().sort_values(["k", "rn"]).reset_index(drop=True)
    g = df.groupby("k")
    size = g["o"].transform("size")
    np.testing.assert_allclose(df["pr"], (g["o"].rank(method="min") - 1) / (size - 1))
    np.testing.assert_allclose(df["cd"], g["o"].rank(method="max") / size)
    np.testing.assert_array_equal(df["fv"], g["x"].transform("first"))
    np.testing.assert_array_equal(df["lv"], g["x"].transform("last"))
    for name, groups in (("quarter", 4), ("many", 70)):
        want = np.concatenate([spark_ntile(len(d), groups) for _, d in g])
        np.testing.assert_array_equal(df[name], want)
    one = shuffled(op, [pa.table({"k": [1], "o": [1], "x": [2.0]})], 1)
    assert one["pr"].to_pylist() == [0.0] and one["cd"].to_pylist() == [1.0]


@pytest.mark.parametrize(("values", "fits"), [
    ([-1024, 2**62 + 512, 2**61 + 256, 2**61 + 256], False),  # exactly 2**63 at the end
    ([2**63 - 1], True), ([-(2**63)], True), ([2**62, 2**62 - 1], True),
    ([-(2**62), -(2**62)], True), ([-(2**62), -(2**62), -1], False),
])
def test_whether_an_integer_sum_fits_is_exact(values: list[int], fits: bool) -> None:
    rows = pa.table({"k": [1] * len(values), "t": list(range(len(values))),
                     "x": pa.array(values, pa.int64())})
    op = window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)"})
    if fits:
        assert shuffled(op, [rows], 1)["cs"].to_pylist() == list(np.cumsum(
            np.array(values, dtype=object)))
    else:
        with pytest.raises(DataError, match="a sum of integers passes the range of int64"):
            shuffled(op, [rows], 1)


def test_a_keys_float_windows_are_the_same_beside_any_other_key() -> None:
    alone = pa.table({"k": ["a"] * 3, "t": [1, 2, 3], "x": [0.1, 0.2, 0.3]})
    other = pa.table({"k": ["b"] * 4, "t": [1, 2, 3, 4], "x": [0.7, 0.11, 0.13, 0.17]})
    op = window(by=["k"], order=["t"], columns={"r3": "rolling_sum(x, 3)",
                                                "c": "cum_sum(x)"})
    by_itself = shuffled(op, [alone], 1)
    beside = shuffled(op, [pa.concat_tables([other, alone])], 1).filter(
        pa.compute.equal(pa.compute.field("k"), "a"))
    assert beside.equals(by_itself)


def test_spans_longer_than_the_times_differ_take_every_earlier_row() -> None:
    rows = pa.table({"k": [0, 0, 1, 2], "t": pa.array([0, 10**18, 0, 0], pa.timestamp("ns")),
                     "x": [1.0, 2.0, 3.0, 4.0]})
    for span in ("15000 weeks", "20000 weeks", "3000000 weeks"):
        out = shuffled(window(by=["k"], order=["t"], columns={
            "n": f"rolling_count(x, '{span}')"}), [rows], 1)
        assert out["n"].to_pylist() == [1, 2, 1, 1], span


def test_nan_comes_first_in_a_descending_order_as_spark_orders_it() -> None:
    rows = pa.table({"k": [1] * 5, "o": [1.0, float("nan"), 3.0, None, 2.0]})
    out = shuffled(window(by=["k"], order=["o desc"], columns={"r": "rank()"}), [rows], 1)
    assert [str(v) for v in out["o"].to_pylist()] == ["nan", "3.0", "2.0", "1.0", "None"]
    up = shuffled(window(by=["k"], order=["o"], columns={"r": "rank()"}), [rows], 1)
    assert [str(v) for v in up["o"].to_pylist()] == ["1.0", "2.0", "3.0", "nan", "None"]


def test_a_numeric_default_of_a_decimal_lag() -> None:
    import decimal

    rows = pa.table({"k": [1, 1], "t": [1, 2],
                     "d": pa.array([decimal.Decimal("1.25"), decimal.Decimal("2.50")],
                                   pa.decimal128(5, 2))})
    out = shuffled(window(by=["k"], order=["t"], columns={"p": "lag(d, 1, 1)"}), [rows], 1)
    assert out["p"].to_pylist() == [decimal.Decimal("1.00"), decimal.Decimal("1.25")]


@pytest.mark.parametrize("buckets", [1, 3])
def test_rolling_extremes_are_pandas_over_rows_and_time(buckets: int) -> None:
    rng = np.random.default_rng(3)
    n = 4000
    rows = pa.table({
        "k": rng.integers(0, 40, n),
        "ts": pa.array(rng.integers(0, 10**6, n) * 10**6, pa.timestamp("us")),
        "x": pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1),
        "i": rng.integers(-100, 100, n),
        "d": pa.array(rng.integers(0, 20000, n), pa.int32()).cast(pa.date32())})
    op = window(by=["k"], order=["ts"], columns={
        "mx3": "rolling_max(x, 3)", "mn5": "rolling_min(i, 5)", "dmax": "rolling_max(d, 4)",
        "xmin": "rolling_min(x, '2 days')", "rn": "row_number()"})
    out = shuffled(op, [rows.slice(0, 1500), rows.slice(1500)], buckets)
    assert out.schema == op.output_schema(rows.schema)
    df = out.to_pandas().sort_values(["k", "rn"]).reset_index(drop=True)
    g = df.groupby("k")

    def same(got: pd.Series, want: pd.Series) -> None:
        a, b = np.asarray(got, float), np.asarray(want, float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])

    same(df["mx3"], g["x"].transform(lambda s: s.rolling(3, min_periods=1).max()))
    same(df["mn5"], g["i"].transform(lambda s: s.rolling(5, min_periods=1).min()))
    days = pd.to_datetime(df["d"]).astype("int64")
    same(pd.to_datetime(df["dmax"]).astype("int64"),
         days.groupby(df["k"]).transform(lambda s: s.rolling(4, min_periods=1).max()))
    same(df["xmin"], df.groupby("k", group_keys=False).apply(
        lambda d: d.rolling("2D", on="ts")["x"].min(), include_groups=False).sort_index())
    nan = pa.table({"k": [1] * 5, "t": [1, 2, 3, 4, 5], "x": [1.0, np.nan, 3.0, None, 2.0]})
    both = shuffled(window(by=["k"], order=["t"], columns={
        "mx": "rolling_max(x, 2)", "mn": "rolling_min(x, 2)"}), [nan], 1)
    assert [str(v) for v in both["mx"].to_pylist()] == ["1.0", "nan", "nan", "3.0", "2.0"]
    assert both["mn"].to_pylist() == [1.0, 1.0, 3.0, 3.0, 2.0]  # NaN loses a minimum


@pytest.mark.parametrize("spread", [10**9, 10**18, 4 * 10**18])
def test_windows_ahead_are_brute_forces(spread: int) -> None:
    """next_*: the rows after a row's time and less than the span after it (or the N
    rows after it): what a customer does next (a label), without looking back."""
    rng = np.random.default_rng(spread % 89)
    n = 300
    t = rng.integers(-spread, spread, n)
    t[:40] = t[40:80]  # ties of time
    rows = pa.table({"k": rng.integers(0, 5, n),
                     "t": pa.array(t, pa.timestamp("ns"), mask=rng.random(n) < 0.05),
                     "x": pa.array(rng.integers(-9, 9, n), mask=rng.random(n) < 0.1)})
    out = shuffled(window(by=["k"], order=["t"], columns={
        "c": "next_count(x, '1 weeks')", "s": "next_sum(x, '1 weeks')",
        "hi": "next_max(x, '1 weeks')", "r": "next_sum(x, 3)", "lo": "next_min(x, 2)",
        "m": "next_mean(x, 4)"}), [rows], 1)
    week = 7 * 86_400 * 10**9
    k, ts = out["k"].to_numpy(), out["t"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    x, known = out["x"].to_pylist(), out["t"].is_valid().to_numpy(zero_copy_only=False)
    for i in range(n):
        same = [j for j in range(n) if k[j] == k[i]]
        later = [j for j in same if j > i]
        span = [x[j] for j in same if known[i] and known[j] and ts[i] < ts[j] < ts[i] + week
                and x[j] is not None]
        assert out["c"][i].as_py() == len(span), i
        assert out["s"][i].as_py() == (sum(span) if span else None), i
        assert out["hi"][i].as_py() == (max(span) if span else None), i
        three = [x[j] for j in later[:3] if x[j] is not None]
        assert out["r"][i].as_py() == (sum(three) if three else None), i
        two = [x[j] for j in later[:2] if x[j] is not None]
        assert out["lo"][i].as_py() == (min(two) if two else None), i
        four = [x[j] for j in later[:4] if x[j] is not None]
        got = out["m"][i].as_py()
        assert (got is None) if not four else got == pytest.approx(sum(four) / len(four))


def test_edges_a_review_found() -> None:
    """A minimum of NaN and nulls only is NaN (not the fill's infinity); a span longer
    than any two times differ still leaves ties of time out of next_*; times at int64's
    very ends are in their windows."""
    nan, most = float("nan"), 2**63 - 1

    def run(table: pa.Table, columns: dict) -> list[dict]:
        return shuffled(window(by=["k"], order=["t"], columns=columns), [table], 1).to_pylist()

    only_nan = pa.table({"k": [1, 1], "t": pa.array([1, 2], pa.timestamp("s")),
                         "f": [nan, None]})
    got = run(only_nan, {"mn": "rolling_min(f, 2)"})
    assert [np.isnan(r["mn"]) for r in got] == [True, True]
    ties = pa.table({"k": [1, 1], "t": pa.array([0, 0], pa.timestamp("ns")), "x": [1, 10]})
    assert [r["huge"] for r in run(ties, {"huge": "next_sum(x, '20000 weeks')"})] == [
        None, None]
    low = pa.table({"k": [1, 1], "t": pa.array([-most - 1, 0], pa.timestamp("ns")),
                    "x": [5, 7]})
    assert [r["r"] for r in run(low, {"r": "rolling_sum(x, '1 days')"})] == [5, 7]
    high = pa.table({"k": [1, 1, 1], "t": pa.array([0, most - 1, most], pa.timestamp("ns")),
                     "x": [5, 7, 9]})
    assert [r["n"] for r in run(high, {"n": "next_sum(x, '1 days')"})] == [None, 9, None]


def test_rows_tied_but_for_the_sign_of_a_zero_keep_one_order() -> None:
    """Ties follow a hash of the row's values in which -0.0 is not 0.0: rows that differ
    only there come in one order whatever the cut and the places."""
    from operators.testing.kit import split

    n = 400
    table = pa.table({"k": np.arange(n) % 4, "t": np.zeros(n, dtype=np.int64),
                      "x": np.where(np.arange(n) // 4 % 2 == 0, 0.0, -0.0)})
    op = window(by=["k"], order=["t"], columns={"i": "row_number()"})
    whole = op.finish(op.partial(table))
    for seed, places in ((1, 3), (2, 5)):
        got = shuffled(op, split(table, 5, seed), places, seed)
        got = got.sort_by([("k", "ascending"), ("i", "ascending")])
        want = whole.sort_by([("k", "ascending"), ("i", "ascending")])
        assert list(np.signbit(got["x"].to_numpy())) == list(np.signbit(want["x"].to_numpy()))


def test_sums_past_the_floats_range_are_inf_and_nan_without_warnings() -> None:
    """inf + -inf is NaN and 1e308 + 1e308 inf, as SQL's and NumPy's: they printed
    NumPy's RuntimeWarnings ('invalid value encountered in add') on the user's terminal
    from a run that succeeded."""
    inf = float("inf")
    rows = pa.table({"k": [1] * 4 + [2] * 2, "t": [1, 2, 3, 4, 1, 2],
                     "x": [inf, -inf, 1.0, 2.0, 1e308, 1e308]})
    op = window(by=["k"], order=["t"], columns={"cs": "cum_sum(x)", "rs": "rolling_sum(x, 2)",
                                                "rm": "rolling_mean(x, 2)"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = shuffled(op, [rows], 1).to_pydict()
    assert str(got["cs"]) == str([inf, float("nan"), float("nan"), float("nan"), 1e308, inf])
    assert str(got["rs"]) == str([inf, float("nan"), -inf, 3.0, 1e308, inf])
    assert str(got["rm"]) == str([inf, float("nan"), -inf, 1.5, 1e308, inf])
