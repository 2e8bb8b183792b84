"""Feature operators against scikit-learn and numpy, computed here; and every error kind."""

from __future__ import annotations

import datetime
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import (
    KBinsDiscretizer,
    MaxAbsScaler,
    MinMaxScaler,
    Normalizer,
    OneHotEncoder,
    RobustScaler,
    StandardScaler,
)

from operators.arrays import get_namespace
from operators.base import (
    DataError,
    Estimator,
    ParamError,
    SchemaError,
    SluiceError,
    drive,
    lookup,
    tree_reduce,
)
from operators.hashing import hash_column
from operators.testing.kit import fit, roundtrip, split

NP = get_namespace("numpy")


def build(op: str, **params: Any) -> Any:
    cls = lookup(op)
    return cls(cls.Params(**params))


def run(op: str, table: pa.Table, parts: int = 4, shuffle: int | None = 0,
        score: pa.Table | None = None, **params: Any) -> pa.Table:
    """Fit ``op`` on ``table`` cut in ``parts`` partitions (shuffled by ``shuffle``), then
    transform ``score`` (default: ``table``) after a save/load round trip."""
    operator = build(op, **params)
    transform = (fit(operator, split(table, parts, shuffle)) if isinstance(operator, Estimator)
                 else operator)
    return roundtrip(transform).transform(table if score is None else score, NP)


def passes(op: str, table: pa.Table, parts: int = 3, **params: Any) -> int:
    operator = build(op, **params)
    pieces = split(table, parts)

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, NP) for p in pieces], operator.combine)

    return drive(operator, table.schema, aggregate)[1]


def floats(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Columns as a float64 matrix, nulls as NaN."""
    return np.column_stack([
        pc.fill_null(pc.cast(table.column(c), pa.float64()), np.nan).to_numpy()
        for c in columns])


def numbers(rows: int = 600, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rows) * 4 + 10
    x[rng.random(rows) < 0.05] = np.nan
    return pa.table({
        "x": pa.array(x, mask=rng.random(rows) < 0.1),
        "n": pa.array(rng.integers(0, 30, rows), pa.int64(), mask=rng.random(rows) < 0.1),
        "skew": pa.array(np.exp(rng.standard_normal(rows) * 2)),
        "const": pa.array(np.full(rows, 0.1)),
        "label": pa.array(np.array(["a", "b", "c"])[rng.integers(0, 3, rows)]),
    })


def categories(rows: int = 900, seed: int = 1) -> pa.Table:
    """Categories with distinct counts (no ties where grouping cuts), some only late."""
    rng = np.random.default_rng(seed)
    weights = np.array([40, 25, 15, 9, 6, 3, 2]) / 100
    plans = np.array(["basic", "plus", "premium", "trial", "family", "edu", "gov"])
    plan = plans[rng.choice(7, rows, p=weights)]
    return pa.table({
        "plan": pa.array(plan),
        "size": pa.array(rng.choice([1, 2, 3, 5, 8], rows, p=[0.5, 0.2, 0.15, 0.1, 0.05])),
        "flag": pa.array(rng.random(rows) < 0.3),
        "region": pa.array(np.array(["eu", "us"])[rng.integers(0, 2, rows)]).dictionary_encode(),
        "v": pa.array(rng.standard_normal(rows)),
    })


# --------------------------------------------------------------------------- scalers


def test_standard_scale_matches_scikit_learn() -> None:
    table = numbers()
    columns = ["x", "n", "skew", "const"]
    for with_mean, with_std in ((True, True), (False, True), (True, False)):
        got = run("standard_scale", table, 5, 3, columns=columns, with_mean=with_mean,
                  with_std=with_std)
        x = floats(table, columns)
        want = StandardScaler(with_mean=with_mean, with_std=with_std).fit_transform(x)
        np.testing.assert_allclose(floats(got, columns), want, rtol=1e-10, atol=1e-12)
        assert all(got.schema.field(c).type == pa.float64() for c in columns)
        assert got.column_names == table.column_names
    got = run("standard_scale", table, columns=["const", "x"])
    assert np.all(got.column("const").to_numpy() == 0.0)  # exactly 0, not NaN
    assert got.column("x").null_count == table.column("x").null_count


def test_standard_scale_is_stable_on_large_offsets() -> None:
    rng = np.random.default_rng(2)
    values = 1e9 + rng.standard_normal(20_000)
    table = pa.table({"x": values})
    scaled = run("standard_scale", table, 40, 1, columns=["x"]).column("x").to_numpy()
    np.testing.assert_allclose(scaled, (values - values.mean()) / values.std(), rtol=1e-6,
                               atol=1e-6)


def test_min_max_scale_matches_scikit_learn() -> None:
    table = numbers()
    columns = ["x", "n", "skew"]
    got = run("min_max_scale", table, 6, 2, columns=columns, feature_range=[-1, 2])
    want = MinMaxScaler(feature_range=(-1, 2)).fit_transform(floats(table, columns))
    np.testing.assert_allclose(floats(got, columns), want, rtol=1e-12, atol=1e-12)
    const = run("min_max_scale", table, columns=["const"], feature_range=[3, 4])
    assert np.all(const.column("const").to_numpy() == 3.0)


def test_max_abs_scale_matches_scikit_learn() -> None:
    """x / max|x| over every partitioning; nulls and NaN left out of the fit and kept;
    a column of zeros stays 0."""
    table = numbers().append_column("zeros", pa.array(np.zeros(600)))
    table = table.append_column("negative", pa.array(-np.arange(600.0) - 5))
    columns = ["x", "n", "skew", "const", "zeros", "negative"]
    want = MaxAbsScaler().fit_transform(floats(table, columns))
    for parts, shuffle in ((1, None), (6, 2)):
        got = run("max_abs_scale", table, parts, shuffle, columns=columns)
        np.testing.assert_allclose(floats(got, columns), want, rtol=1e-15, atol=0)
        assert got.column("x").null_count == table.column("x").null_count
    assert floats(got, ["negative"]).min() == -1.0


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_normalize_matches_scikit_learn(norm: str) -> None:
    """Each row over its norm; a row of zeros stays zeros; integers become float64."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 3)) * [1, 10, 100]
    x[7] = 0.0
    table = pa.table({"a": x[:, 0], "b": pa.array(np.round(x[:, 1]).astype(np.int64)),
                      "c": x[:, 2], "keep": pa.array(np.arange(300))})
    x[:, 1] = np.round(x[:, 1])
    got = run("normalize", table, columns=["a", "b", "c"], norm=norm)
    np.testing.assert_allclose(floats(got, ["a", "b", "c"]),
                               Normalizer(norm=norm).transform(x), rtol=1e-15, atol=1e-17)
    assert got.column("keep").to_pylist() == list(range(300))
    assert got.schema.field("b").type == pa.float64()


def test_normalize_needs_every_value() -> None:
    table = pa.table({"a": [1.0, None], "b": [2.0, 3.0], "c": [1.0, float("nan")]})
    with pytest.raises(DataError, match="column 'a' has 1 null values"):
        run("normalize", table, columns=["a", "b"])
    with pytest.raises(DataError, match="column 'c' has 1 NaN or infinite values"):
        run("normalize", table, columns=["b", "c"])
    with pytest.raises(DataError, match="column 'b' has 1 NaN or infinite values"):
        run("normalize", pa.table({"a": [1.0], "b": [float("inf")]}), columns=["a", "b"])
    with pytest.raises(Exception, match="at least 2"):
        build("normalize", columns=["a"])


def test_min_max_scale_clips_scored_values_when_asked() -> None:
    train = pa.table({"v": [0.0, 10.0]})
    score = pa.table({"v": [-5.0, 5.0, 20.0]})
    free = run("min_max_scale", train, 1, None, score=score, columns=["v"])
    clipped = run("min_max_scale", train, 1, None, score=score, columns=["v"], clip=True)
    assert free.column("v").to_pylist() == [-0.5, 0.5, 2.0]
    assert clipped.column("v").to_pylist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("options", [
    {}, {"quantile_range": [10, 90], "unit_variance": True}, {"with_centering": False},
    {"with_scaling": False, "quantile_range": [5, 50]}])
def test_robust_scale_matches_scikit_learn(options: dict[str, Any]) -> None:
    """The median and percentiles exact over partitions (NumPy's linear ones, several
    passes for 5,000 values), nulls and NaN left out and kept, a constant column's
    scale 1, heavy tails (Cauchy) no problem."""
    rng = np.random.default_rng(4)
    table = numbers(5000).append_column("cauchy", pa.array(rng.standard_cauchy(5000)))
    columns = ["x", "n", "skew", "const", "cauchy"]
    got = run("robust_scale", table, 7, 4, columns=columns, **options)
    reference = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    want = RobustScaler(**reference).fit_transform(floats(table, columns))
    np.testing.assert_allclose(floats(got, columns), want, rtol=1e-12, atol=1e-12)
    assert got.column("x").null_count == table.column("x").null_count


def test_robust_scale_refuses_a_range_that_is_no_range() -> None:
    with pytest.raises(ValidationError, match="need 0 <= low < high <= 100"):
        build("robust_scale", columns=["x"], quantile_range=[75, 25])
    with pytest.raises(DataError, match="'v' has no values"):
        run("robust_scale", pa.table({"v": pa.array([None, None], pa.float64())}), 1,
            columns=["v"])
    with pytest.raises(ParamError, match="the 0th and 100th are infinite"):
        build("robust_scale", columns=["x"], quantile_range=[0, 100], unit_variance=True)
    with pytest.raises(DataError, match="'v' has 1 infinite values"):  # as the scalers
        run("robust_scale", pa.table({"v": [1.0, 2.0, np.inf]}), 1, columns=["v"])


def test_scalers_reject_infinite_and_empty_columns() -> None:
    with pytest.raises(DataError, match="'v' has 1 infinite"):
        run("standard_scale", pa.table({"v": [1.0, np.inf]}), 1, columns=["v"])
    with pytest.raises(DataError, match="'v' has no values"):
        run("min_max_scale", pa.table({"v": pa.array([None, None], pa.float64())}), 1,
            columns=["v"])


def test_a_scaler_with_no_value_in_any_column_says_no_rows_may_come() -> None:
    """A filter that leaves no row is the likeliest cause; one empty column of several
    is its own."""
    empty = pa.table({"v": pa.array([], pa.float64()), "w": pa.array([], pa.float64())})
    with pytest.raises(DataError) as info:
        run("standard_scale", empty, 1, columns=["v", "w"])
    assert info.value.hint == ("no rows may reach this step: check the filters before it; "
                               "else impute it first, or leave 'v' out")
    one = pa.table({"v": [1.0, 2.0], "w": pa.array([None, None], pa.float64())})
    with pytest.raises(DataError) as info:
        run("standard_scale", one, 1, columns=["v", "w"])
    assert info.value.hint == "impute it first, or leave 'w' out"


# --------------------------------------------------------------------------- impute


def test_impute_adds_indicators_of_what_was_missing() -> None:
    """add_indicator: a `<col>_missing` boolean after each column, true where it was null
    or NaN (scikit-learn's add_indicator, for every column: features='all')."""
    table = numbers(600).append_column("plan", pa.array(["a", None, "b"] * 200))
    got = run("impute", table, 3, 2, columns=["x", "n"], strategy="median", add_indicator=True)
    x = floats(table, ["x", "n"])
    want = SimpleImputer(strategy="median", add_indicator=True).fit_transform(x)
    assert got.column_names[:4] == ["x", "x_missing", "n", "n_missing"]
    np.testing.assert_allclose(floats(got, ["x", "n"]), want[:, :2], rtol=1e-12)
    assert got.column("x_missing").to_pylist() == np.isnan(x[:, 0]).tolist()
    assert got.column("n_missing").to_pylist() == np.isnan(x[:, 1]).tolist()
    assert got.schema.field("x_missing").type == pa.bool_()
    text = run("impute", table, 2, None, columns=["plan"], strategy="constant", value="none",
               add_indicator=True)
    assert text.column("plan_missing").to_pylist() == [False, True, False] * 200
    with pytest.raises(SchemaError, match="indicator 'x_missing' is already a column"):
        build("impute", columns=["x"], add_indicator=True).output_schema(
            got.select(["x", "x_missing"]).schema)


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent"])
def test_impute_matches_simple_imputer(strategy: str) -> None:
    table = numbers(5000)  # > the exact search's one-pass limit: median takes passes
    columns = ["x", "n"]
    got = run("impute", table, 7, 4, columns=columns, strategy=strategy)
    want = SimpleImputer(strategy=strategy).fit_transform(floats(table, columns))
    np.testing.assert_allclose(floats(got, columns), want, rtol=1e-12)
    assert got.column("x").null_count == 0 and not np.isnan(floats(got, ["x"])).any()
    expected_n = pa.int64() if strategy == "most_frequent" else pa.float64()
    assert got.schema.field("n").type == expected_n  # mean/median of ints: float64
    if strategy == "median":
        assert passes("impute", table, columns=columns, strategy="median") > 1


def test_impute_constant_and_strings() -> None:
    table = pa.table({
        "s": pa.array(["b", None, "a", "b", "a", None]),
        "d": pa.array(["x", None, "y", "y", "x", None]).dictionary_encode(),
        "i": pa.array([1, None, 3, 3, 1, 1], pa.int8()),
        "f": pa.array([0.5, None, np.nan, 2.0, 2.0, 0.5], pa.float32()),
    })
    frequent = run("impute", table, 3, columns=["s", "d", "i", "f"], strategy="most_frequent")
    assert frequent.schema == table.schema  # most_frequent keeps every type
    assert frequent.column("s").to_pylist() == ["b", "a", "a", "b", "a", "a"]  # tie: smallest
    assert frequent.column("d").to_pylist() == ["x", "x", "y", "y", "x", "x"]
    assert frequent.column("i").to_pylist() == [1, 1, 3, 3, 1, 1]
    assert frequent.column("f").to_pylist() == [0.5, 0.5, 0.5, 2.0, 2.0, 0.5]
    want = SimpleImputer(strategy="most_frequent").fit_transform(
        np.array([["b"], [np.nan], ["a"], ["b"], ["a"], [np.nan]], dtype=object))
    assert frequent.column("s").to_pylist() == list(want[:, 0])
    const = run("impute", table, 2, columns=["s"], strategy="constant", value="missing")
    assert const.column("s").to_pylist() == ["b", "missing", "a", "b", "a", "missing"]
    ints = run("impute", table, 2, columns=["i"], strategy="constant", value=-1)
    assert ints.schema.field("i").type == pa.int8() and ints.column("i")[1].as_py() == -1
    half = run("impute", table, 2, columns=["i"], strategy="constant", value=0.5)
    assert half.schema.field("i").type == pa.float64() and half.column("i")[1].as_py() == 0.5


def test_impute_records_fitted_values_in_state() -> None:
    table = numbers()
    transform = fit(build("impute", columns=["x", "skew"], strategy="median"),
                    split(table, 3))
    meta, _ = transform.state()
    want = np.nanmedian(floats(table, ["x", "skew"]), axis=0)
    np.testing.assert_allclose([meta["fill"]["x"], meta["fill"]["skew"]], want, rtol=1e-15)


def test_impute_approx_median_is_close() -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_normal(50_000)
    table = pa.table({"v": pa.array(values, mask=rng.random(50_000) < 0.1)})
    meta, _ = fit(build("impute", columns=["v"], strategy="median", approx=True),
                  split(table, 5)).state()
    present = floats(table, ["v"])[:, 0]
    rank = np.mean(present[~np.isnan(present)] < meta["fill"]["v"])
    assert abs(rank - 0.5) < 0.02


def test_impute_errors() -> None:
    empty = pa.table({"v": pa.array([None, None, None], pa.float64())})
    with pytest.raises(DataError, match="'v' has no values") as info:
        run("impute", empty, 2, columns=["v"], strategy="median")
    assert "strategy constant" in str(info.value)
    with pytest.raises(DataError, match="'v'"):
        run("impute", empty, 2, columns=["v"], strategy="most_frequent")
    with pytest.raises(DataError, match="'v' has no values") as info:  # nothing came at all
        run("impute", empty.slice(0, 0), 1, columns=["v"])
    assert info.value.hint == ("no rows may reach this step: check the filters before it; "
                               "else use strategy constant with a `value`")
    schema = numbers().schema
    with pytest.raises(SchemaError, match="'label' is string; strategy mean needs numbers"):
        build("impute", columns=["label"]).output_schema(schema)
    with pytest.raises(SchemaError, match="did you mean 'label'"):
        build("impute", columns=["lable"]).output_schema(schema)
    with pytest.raises(ParamError, match="needs a `value`"):
        build("impute", columns=["x"], strategy="constant")
    with pytest.raises(ParamError, match="does not suit column 'x'"):
        build("impute", columns=["x"], strategy="constant", value="zero").output_schema(schema)
    with pytest.raises(ParamError, match="does not fit"):
        build("impute", columns=["i"], strategy="constant", value=300).output_schema(
            pa.schema({"i": pa.int8()}))
    with pytest.raises(ParamError, match="`approx` applies to strategy median"):
        build("impute", columns=["x"], approx=True)


# --------------------------------------------------------------------------- one_hot


def encoder_matrix(encoder: OneHotEncoder, values: list[Any]) -> np.ndarray:
    return encoder.transform(np.array(values, dtype=object).reshape(-1, 1)).toarray()


def test_one_hot_matches_scikit_learn_and_handles_unseen() -> None:
    table = categories()
    # a category only in the last partition is still learned (vocabulary over all partitions)
    late = pa.table({**{c: table.column(c) for c in ["plan", "size", "flag", "v"]},
                     "region": table.column("region")}).slice(0, 899)
    late = pa.concat_tables([late, pa.table({"plan": ["zeta"], "size": [1], "flag": [False],
                                             "v": [0.0], "region": late.column("region")[:1]})
                             .cast(late.schema)])
    score = pa.table({"plan": ["plus", "unseen", "zeta"], "size": [8, 4, 1],
                      "flag": [True, False, True], "v": [1.0, 2.0, 3.0],
                      "region": pa.array(["us", "eu", "us"]).dictionary_encode()})
    got = run("one_hot", late, 5, 2, score=score, columns=["plan", "size", "flag", "region"])
    expected_names = (["plan=basic", "plan=edu", "plan=family", "plan=gov", "plan=plus",
                       "plan=premium", "plan=trial", "plan=zeta", "size=1", "size=2",
                       "size=3", "size=5", "size=8", "flag=false", "flag=true", "v",
                       "region=eu", "region=us"])
    assert got.column_names == expected_names  # in place of the source, sorted values
    for column in ["plan", "size", "flag", "region"]:
        encoder = OneHotEncoder(handle_unknown="ignore").fit(
            np.array(late.column(column).to_pylist(), dtype=object).reshape(-1, 1))
        names = [n for n in got.column_names if n.startswith(f"{column}=")]
        want = encoder_matrix(encoder, score.column(column).to_pylist())
        np.testing.assert_array_equal(floats(got, names), want)
    assert floats(got, [n for n in expected_names if n.startswith("plan=")])[1].sum() == 0


@pytest.mark.parametrize("limits", [{"max_categories": 4}, {"min_frequency": 0.08},
                                    {"min_frequency": 50},
                                    {"max_categories": 3, "min_frequency": 0.05}])
def test_one_hot_infrequent_matches_scikit_learn(limits: dict[str, Any]) -> None:
    table = categories()
    score = pa.table({"plan": ["basic", "gov", "nope", "plus", "edu"]})
    got = run("one_hot", table.select(["plan"]), 4, 1, score=score, columns=["plan"], **limits)
    encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", **limits).fit(
        np.array(table.column("plan").to_pylist(), dtype=object).reshape(-1, 1))
    infrequent = encoder.infrequent_categories_[0]
    kept = [c for c in encoder.categories_[0] if infrequent is None or c not in infrequent]
    assert got.column_names == [f"plan={c}" for c in kept] + ["plan=other"]
    want = encoder_matrix(encoder, score.column("plan").to_pylist())
    np.testing.assert_array_equal(floats(got, got.column_names), want)


def test_one_hot_ties_keep_the_smaller_value() -> None:
    table = pa.table({"c": ["d", "d", "d", "b", "b", "c", "c", "a"]})
    got = run("one_hot", table, 3, 0, columns=["c"], max_categories=3)
    assert got.column_names == ["c=b", "c=d", "c=other"]
    assert floats(got, ["c=other"])[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_one_hot_nulls() -> None:
    table = pa.table({"c": pa.array(["x", None, "y", None, "x"]), "k": [1, 2, 3, 4, 5]})
    got = run("one_hot", table, 2, columns=["c"])
    assert got.column_names == ["c=x", "c=y", "c=null", "k"]
    assert floats(got, ["c=null"])[:, 0].tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(DataError, match=r"column 'c' has \d nulls in this partition"):
        run("one_hot", table, 2, columns=["c"], nulls="error")
    clean = table.filter(pc.is_valid(table.column("c")))
    with pytest.raises(DataError, match="column 'c' has 2 nulls"):
        run("one_hot", clean, 1, score=table, columns=["c"], nulls="error")


def test_one_hot_schema_before_and_after_fit() -> None:
    table = categories()
    op = build("one_hot", columns=["plan"])
    assert op.output_schema(table.schema).names == ["size", "flag", "region", "v"]
    transform = fit(op, split(table, 3))
    assert op.output_schema(table.schema) == transform.output_schema(table.schema)
    assert op.output_schema(table.schema).names[0] == "plan=basic"


def test_one_hot_errors() -> None:
    schema = categories().schema
    with pytest.raises(SchemaError, match="'v' is double; one_hot encodes") as info:
        build("one_hot", columns=["v"]).output_schema(schema)
    assert "bucketize" in str(info.value)
    with pytest.raises(SchemaError, match="did you mean 'plan'"):
        build("one_hot", columns=["plna"]).output_schema(schema)
    clash = pa.table({"c": ["other", "other", "a", "a", "b", "c"]})
    with pytest.raises(DataError, match="category 'other' that clashes"):
        run("one_hot", clash, 1, columns=["c"], max_categories=3)
    with pytest.raises(ValidationError, match="fraction"):
        build("one_hot", columns=["c"], min_frequency=1.5)


# --------------------------------------------------------------------------- hash_encode


def test_hash_encode_buckets_are_the_shared_hash() -> None:
    table = categories()
    got = run("hash_encode", table, 4, columns=["plan", "size"], buckets=16, seed=9)
    for column in ["plan", "size"]:
        names = [f"{column}#{i}" for i in range(16)]
        matrix = floats(got, names)
        want = (hash_column(table.column(column), 9) % np.uint64(16)).astype(int)
        assert np.array_equal(matrix.argmax(axis=1), want)
        assert np.all(matrix.sum(axis=1) == 1)
    assert got.column_names[:16] == [f"plan#{i}" for i in range(16)]
    kept = run("hash_encode", table, columns=["plan"], buckets=4, drop=False)
    assert kept.column_names == table.column_names + [f"plan#{i}" for i in range(4)]
    # the same value in a dictionary column and a plain one: the same bucket
    plain = run("hash_encode", pa.table({"r": table.column("region").cast(pa.string())}),
                columns=["r"], buckets=8)
    coded = run("hash_encode", pa.table({"r": table.column("region")}), columns=["r"],
                buckets=8)
    assert plain.equals(coded)


def test_hash_encode_nulls_are_zero() -> None:
    got = run("hash_encode", pa.table({"c": ["a", None, "b"]}), columns=["c"], buckets=3)
    assert floats(got, got.column_names).sum(axis=1).tolist() == [1, 0, 1]
    # a dictionary whose null is one of its values (its null_count says 0)
    coded = pc.dictionary_encode(pa.array(["a", None, "b"]), null_encoding="encode")
    assert coded.null_count == 0
    got = run("hash_encode", pa.table({"c": coded}), columns=["c"], buckets=3)
    assert floats(got, got.column_names).sum(axis=1).tolist() == [1, 0, 1]


# --------------------------------------------------------------------------- bucketize


def test_bucketize_quantiles_match_kbins_discretizer() -> None:
    table = numbers(6000)
    columns = ["x", "skew"]
    got = run("bucketize", table, 6, 5, columns=columns, quantiles=5)
    x = floats(table, columns)
    for j, column in enumerate(columns):
        present = x[:, j][~np.isnan(x[:, j])]
        kbins = KBinsDiscretizer(n_bins=5, encode="ordinal", strategy="quantile",
                                 quantile_method="linear", subsample=None)
        kbins.fit(present.reshape(-1, 1))
        want = kbins.transform(present.reshape(-1, 1))[:, 0]
        values = got.column(column)
        assert values.type == pa.int32()
        assert values.null_count == int(np.isnan(x[:, j]).sum())
        np.testing.assert_array_equal(values.drop_null().to_numpy(), want)
    assert passes("bucketize", table, columns=columns, quantiles=5) > 1


def test_bucketize_boundaries_and_suffix() -> None:
    table = pa.table({"v": pa.array([-3.0, 0.0, 0.5, 1.0, 9.0, None, np.nan])})
    got = run("bucketize", table, 2, columns=["v"], boundaries=[0, 1], suffix="_b")
    assert got.column_names == ["v", "v_b"]
    assert got.column("v_b").to_pylist() == [0, 1, 1, 2, 2, None, None]
    want = np.searchsorted([0.0, 1.0], [-3.0, 0.0, 0.5, 1.0, 9.0], side="right")
    assert got.column("v_b").to_pylist()[:5] == want.tolist()
    ints = run("bucketize", pa.table({"k": pa.array([1, 5, 7], pa.int16())}), columns=["k"],
               boundaries=[5])
    assert ints.schema.field("k").type == pa.int32() and ints.column("k").to_pylist() == [0, 1, 1]


@pytest.mark.parametrize("op", ["standard_scale", "min_max_scale", "max_abs_scale",
                                "robust_scale"])
def test_scalers_name_every_column_that_is_not_a_number(op: str) -> None:
    """Three text columns among the scaled: one plan run names all three with their types
    (it named the first only, so each fix met the next error)."""
    schema = numbers().schema.append(pa.field("city", pa.string())) \
        .append(pa.field("when", pa.timestamp("us")))
    with pytest.raises(SchemaError) as err:
        build(op, columns=["x", "label", "n", "city", "when"]).output_schema(schema)
    text = str(err.value)
    assert "3 columns are not numbers" in text
    for shown in ("'label' (string)", "'city' (string)", "'when' (timestamp[us])"):
        assert shown in text
    assert "'x'" not in text and "'n'" not in text


def test_bucketize_errors() -> None:
    schema = numbers().schema
    with pytest.raises(SchemaError, match="'label' is string, but bucketize needs numbers"):
        build("bucketize", columns=["label"], quantiles=4).output_schema(schema)
    with pytest.raises(ParamError, match="either `boundaries` or `quantiles`"):
        build("bucketize", columns=["x"])
    with pytest.raises(ParamError, match="either"):
        build("bucketize", columns=["x"], quantiles=3, boundaries=[1])
    with pytest.raises(ValidationError, match="increase strictly"):
        build("bucketize", columns=["x"], boundaries=[2, 1])
    with pytest.raises(SchemaError, match="adds column 'x_b' that the input already has"):
        build("bucketize", columns=["x"], boundaries=[1], suffix="_b").output_schema(
            schema.append(pa.field("x_b", pa.int8())))
    all_null = pa.table({"v": pa.array([None, None], pa.float64())})
    with pytest.raises(DataError, match="'v' has no values to learn quantiles"):
        run("bucketize", all_null, 1, columns=["v"], quantiles=2)


# --------------------------------------------------------------------------- derive


def test_derive_chained_expressions() -> None:
    table = numbers()
    got = run("derive", table, columns={
        "ratio": "skew / (n + 1)",
        "log_ratio": "log1p(ratio)",
        "n": "n * 2",          # replaces n in place
        "twice": "n + 0",      # sees the new n
        "is_a": "label = 'a'",
    })
    skew, n = floats(table, ["skew"])[:, 0], floats(table, ["n"])[:, 0]
    ratio = skew / (n + 1)
    np.testing.assert_allclose(floats(got, ["ratio"])[:, 0], ratio, rtol=1e-15)
    np.testing.assert_allclose(floats(got, ["log_ratio"])[:, 0], np.log1p(ratio), rtol=1e-15)
    np.testing.assert_array_equal(floats(got, ["n"])[:, 0], n * 2)
    np.testing.assert_array_equal(floats(got, ["twice"])[:, 0], n * 2)
    assert got.column_names == table.column_names + ["ratio", "log_ratio", "twice", "is_a"]
    assert got.schema.field("n").type == pa.int64()
    assert got.column("is_a").to_pylist() == [v == "a" for v in table.column("label").to_pylist()]
    assert build("derive", columns={"r": "skew / n", "s": "r + x"}).input_columns(
        table.schema) == ["skew", "n", "x"]


def test_derive_errors_name_the_new_column() -> None:
    schema = numbers().schema
    with pytest.raises(SchemaError, match="derive column 'r': .*'lable'"):
        build("derive", columns={"r": "upper(lable)"}).output_schema(schema)
    with pytest.raises(SchemaError, match="derive column 'r'"):
        build("derive", columns={"r": "label * 2"}).output_schema(schema)
    with pytest.raises(ParamError, match="derive column 'bad'"):
        build("derive", columns={"ok": "x + 1", "bad": "x +"})
    table = pa.table({"s": ["1", "2", "three"]})
    with pytest.raises(DataError, match="derive column 'i'"):
        run("derive", table, columns={"i": "cast(s as int64)"})


# --------------------------------------------------------------------------- columns


def test_select_drop_rename() -> None:
    table = numbers()
    assert run("select", table, columns=["label", "x"]).column_names == ["label", "x"]
    assert run("drop", table, columns=["x", "const"]).column_names == ["n", "skew", "label"]
    renamed = run("rename", table, columns={"x": "n", "n": "x"})
    assert renamed.column_names == ["n", "x", "skew", "const", "label"]
    np.testing.assert_array_equal(floats(renamed, ["n"]), floats(table, ["x"]))
    with pytest.raises(SchemaError, match="^column 'lable' not in the input; did you mean 'label'"):
        build("select", columns=["lable"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="^columns 'lable', 'y' not in the input"):
        build("select", columns=["lable", "x", "y"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="'consts'"):
        build("drop", columns=["consts"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="renaming 'x' to 'n' clashes with column 'n'"):
        build("rename", columns={"x": "n"}).output_schema(table.schema)
    with pytest.raises(SchemaError, match="renaming 'x' and 'n' both give 'z'"):
        build("rename", columns={"x": "z", "n": "z"}).output_schema(table.schema)
    with pytest.raises(ParamError, match="listed twice"):
        build("select", columns=["x", "x"])


def test_each_missing_column_gets_its_own_suggestion() -> None:
    """Every misspelt column its closest name, not the first alone; never a column the
    step asks for as well (it is no misspelling of another)."""
    schema = pa.schema([("monthly_charges", pa.float64()), ("total_charges", pa.float64()),
                        ("tenure", pa.int64())])
    with pytest.raises(SchemaError, match="^columns 'tenur', 'monthly_charge' not in the "
                                          "input; did you mean 'tenure' for 'tenur', "
                                          "'monthly_charges' for 'monthly_charge'[?] "):
        build("select", columns=["tenur", "monthly_charge"]).output_schema(schema)
    with pytest.raises(SchemaError, match="^column 'total_charges' not in the input "
                                          "[(]input has"):
        build("select", columns=["monthly_charges", "total_charges"]).output_schema(
            pa.schema([("monthly_charges", pa.float64())]))
    with pytest.raises(SchemaError, match="^column 'churnd' not in the input; did you mean "
                                          "'churned'[?]"):  # nearly the same name
        build("select", columns=["churnd", "churned"]).output_schema(
            pa.schema([("churned", pa.int64())]))


def test_cast() -> None:
    table = pa.table({"s": ["1", "22", None], "f": [1.5, 2.0, 300.0], "i": [1, 2, 3]})
    got = run("cast", table, columns={"s": "int16", "i": "float32"})
    assert got.schema.field("s").type == pa.int16() and got.column("s").to_pylist() == [1, 22,
                                                                                       None]
    assert got.schema.field("i").type == pa.float32()
    with pytest.raises(DataError, match="cannot cast column 'f' to int8") as info:
        run("cast", table, columns={"f": "int8"})
    assert "safe: false" in str(info.value)
    unsafe = run("cast", table, columns={"f": "int32"}, safe=False)
    assert unsafe.column("f").to_pylist() == [1, 2, 300]
    with pytest.raises(SchemaError, match="cannot cast column 'i' from list<.*> to int64"):
        build("cast", columns={"i": "int64"}).output_schema(pa.schema({"i": pa.list_(pa.int64())}))
    with pytest.raises(ParamError, match="cast of column 'f': unknown type 'float65'"):
        build("cast", columns={"f": "float65"})


def test_cast_with_invalid_null_is_try_cast() -> None:
    """``invalid: null``: each column as the expressions' try_cast gives it (Spark SQL's
    try_cast): the cast's value where it converts, null where cast would stop the run
    or give an undefined integer; nothing else changes."""
    table = pa.table({"s": ["1", "12a", None, "300", "-5", "7"],
                      "f": [1.5, 1e20, float("nan"), -1.5, 255.0, 256.0],
                      "d": pa.array(["3", "x", "3", None, "4", "4"]).dictionary_encode(),
                      "keep": list(range(6))})
    got = run("cast", table, columns={"s": "uint8", "f": "uint8", "d": "int32"},
              invalid="null")
    assert got.column("s").to_pylist() == [1, None, None, None, None, 7]
    assert got.column("f").to_pylist() == [1, None, None, None, 255, None]  # -1.5 is -1: no uint8
    assert got.column("d").to_pylist() == [3, None, 3, None, 4, 4]
    assert got.column("keep").to_pylist() == list(range(6))
    assert got.schema.field("d").type == pa.int32()
    same = run("derive", table, columns={"s": "try_cast(s as uint8)",
                                         "f": "try_cast(f as uint8)",
                                         "d": "try_cast(d as int32)"})
    assert got.select(["s", "f", "d"]).equals(same.select(["s", "f", "d"]))
    with pytest.raises(DataError, match="cannot cast column 's' to uint8") as info:
        run("cast", table, columns={"s": "uint8"})
    assert "`invalid: null`" in str(info.value)
    with pytest.raises(ParamError, match="invalid: null makes a value that does not fit null"):
        build("cast", columns={"s": "int8"}, invalid="null", safe=False)


def test_cast_with_invalid_null_refuses_targets_try_cast_does_not_cover() -> None:
    """try_cast finds the values a cast refuses for the expressions' cast types only:
    to a decimal, 1e9 as decimal128(5, 2) was 0.00 and 'abc' stopped the run with
    Arrow's bare error; such a target is refused when the step is made, naming it."""
    for target in ("decimal128(5, 2)", "timestamp[ns]", "timestamp[us, tz=UTC]"):
        with pytest.raises(ParamError, match=f"cast of column 'x': invalid: null casts to "
                                             f"an integer.* not {re.escape(target)}") as info:
            build("cast", columns={"x": target}, invalid="null")
        assert f"or to {target} without invalid: null" in str(info.value)
    table = pa.table({"s": ["1", "2024-01-01"], "f": [1.5, 1e9]})
    got = run("cast", table, columns={"s": "timestamp[us]", "f": "float32"}, invalid="null")
    assert got.column("s").to_pylist() == [None, datetime.datetime(2024, 1, 1)]


def test_errors_are_sluice_errors_with_hints() -> None:
    schema = numbers().schema
    with pytest.raises(SchemaError) as info:
        build("standard_scale", columns=["x", "label"]).output_schema(schema)
    assert str(info.value).startswith("column 'label' is string, but standard_scale needs")
    assert info.value.hint and "cast" in info.value.hint
    assert isinstance(info.value, SluiceError)
    with pytest.raises(SchemaError, match="'label' is string, but min_max_scale"):
        build("min_max_scale", columns=["label"]).output_schema(schema)
    with pytest.raises(ValidationError, match="low must be below high"):
        build("min_max_scale", columns=["x"], feature_range=[1, 0])


def test_derive_saves_the_columns_scoring_needs() -> None:
    """A derive in a saved model leaves out the columns only training reads (the label it
    derives), unless a later expression of the step uses them; none left: not saved."""
    from operators.features.derive import Derive

    op = Derive(columns={"y": "status == 'closed'", "ratio": "a / b", "y2": "y and a > 0"})
    assert op.saved_view(frozenset({"y2"})).params.columns == {
        "y": "status == 'closed'", "ratio": "a / b"}  # y2 left out; y is no label here
    assert op.saved_view(frozenset({"y"})) is op  # y2 reads y: nothing to leave out
    assert op.saved_view(frozenset({"y", "y2"})).params.columns == {"ratio": "a / b"}
    assert op.saved_view(frozenset()) is op
    alone = Derive(columns={"y": "status == 'closed'"})
    assert alone.saved_view(frozenset({"y"})) is None
