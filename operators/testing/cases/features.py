"""Cases for the feature operators: impute, scalers, pca, one_hot, target_encode,
hash_encode, bucketize, vectorize_text, derive, select, drop, rename, cast, filter, sample,
join, union, expect, and the shuffles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from operators.testing.kit import case


def features_table(rows: int = 240, seed: int = 3, nan: bool = False) -> pa.Table:
    """Numbers with nulls (and NaN if ``nan``), a constant, categories with nulls, a
    dictionary, booleans."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rows) * 3 + 1
    if nan:
        x[rng.random(rows) < 0.05] = np.nan
    plans = np.array(["basic", "plus", "premium", "trial"])[
        np.minimum(rng.geometric(0.45, rows) - 1, 3)]
    regions = np.array(["eu", "us", "apac"])[rng.integers(0, 3, rows)]
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.array(x, mask=rng.random(rows) < 0.08),
        "n": pa.array(rng.integers(0, 20, rows), pa.int64(), mask=rng.random(rows) < 0.1),
        "small": pa.array(rng.integers(-5, 5, rows).astype(np.int32)),
        "const": pa.array(np.full(rows, 0.1)),
        "big": pa.array(np.exp(rng.standard_normal(rows) * 4)),
        "plan": pa.array(plans, pa.string(), mask=rng.random(rows) < 0.07),
        "region": pa.array(regions).dictionary_encode(),
        "flag": pa.array(rng.random(rows) < 0.3),
        "f32": pa.array(rng.standard_normal(rows).astype(np.float32),
                        mask=rng.random(rows) < 0.1),
    })


def nan_table() -> pa.Table:
    return features_table(nan=True)


# pa.Table.equals is False for a table holding NaN, even against itself


def large_table() -> pa.Table:
    """More rows than the exact quantile search collects in one pass, with ties."""
    rng = np.random.default_rng(11)
    rows = 9000
    y = np.round(rng.standard_normal(rows) * 100) / 7
    return pa.table({
        "y": pa.array(y, mask=rng.random(rows) < 0.02),
        "k": pa.array(rng.integers(0, 50, rows), pa.int64()),
    })


def small_table() -> pa.Table:
    """Few enough values that a KLL sketch keeps them all (exact, partition-invariant)."""
    return features_table(rows=150, seed=5)


def _cases(op: str, data: Callable[[], pa.Table], *variants: tuple[str, dict]) -> None:
    for ident, params in variants:
        case(op, params, data, id=ident)


_cases("impute", features_table,
       ("mean", {"columns": ["x", "n", "f32"]}),
       ("median", {"columns": ["x", "n", "big"], "strategy": "median"}),
       ("most-frequent", {"columns": ["plan", "n", "flag", "region", "small"],
                          "strategy": "most_frequent"}),
       ("constant-string", {"columns": ["plan", "region"], "strategy": "constant",
                            "value": "unknown"}),
       ("constant-numbers", {"columns": ["n", "x"], "strategy": "constant", "value": -1}),
       ("constant-float-on-int", {"columns": ["n"], "strategy": "constant", "value": 0.5}),
       ("indicators", {"columns": ["x", "plan", "region"], "strategy": "most_frequent",
                       "add_indicator": True}))
_cases("impute", nan_table,
       ("mean-nan", {"columns": ["x"]}),
       ("median-nan", {"columns": ["x"], "strategy": "median"}))
_cases("impute", large_table,
       ("median-multi-pass", {"columns": ["y", "k"], "strategy": "median"}))
_cases("impute", small_table,
       ("median-approx", {"columns": ["x", "big"], "strategy": "median", "approx": True}))

_cases("standard_scale", features_table,
       ("default", {"columns": ["x", "n", "small", "const", "big", "f32"]}),
       ("no-mean", {"columns": ["x", "n"], "with_mean": False}),
       ("no-std", {"columns": ["x", "const"], "with_std": False}))

_cases("standard_scale", nan_table, ("nan", {"columns": ["x", "n"]}))

_cases("min_max_scale", features_table,
       ("default", {"columns": ["x", "n", "const", "small"]}),
       ("range-clip", {"columns": ["big", "f32"], "feature_range": [-1, 1], "clip": True}))

_cases("max_abs_scale", features_table,
       ("default", {"columns": ["x", "n", "const", "small", "big", "f32"]}))
_cases("max_abs_scale", nan_table, ("nan", {"columns": ["x", "n"]}))
_cases("normalize", features_table,
       ("l2", {"columns": ["small", "const", "big"]}),
       ("l1", {"columns": ["small", "big"], "norm": "l1"}),
       ("max", {"columns": ["small", "const"], "norm": "max"}))

def correlated_table(rows: int = 300, seed: int = 12) -> pa.Table:
    """Correlated numbers of different scales and an integer column (no nulls), a
    positive weight, and a text column that passes through."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((4, 4)) * np.array([1.0, 3.0, 0.5, 10.0])
    x = rng.standard_normal((rows, 4)) @ mixing + np.array([5.0, -2.0, 0.0, 100.0])
    return pa.table({
        "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
        "i": pa.array(np.round(x[:, 3]).astype(np.int64)),
        "w": pa.array(rng.integers(1, 4, rows).astype(np.float64)),
        "plan": pa.array(np.array(["basic", "plus"])[rng.integers(0, 2, rows)]),
    })


_cases("pca", correlated_table,
       ("k2", {"columns": ["a", "b", "c", "i"], "k": 2}),
       ("fraction-whiten-keep", {"columns": ["a", "b", "c", "i"], "k": 0.9, "whiten": True,
                                 "keep": True, "prefix": "pc"}),
       ("weighted", {"columns": ["a", "b", "c"], "k": 3, "weight": "w"}))

_cases("robust_scale", features_table,
       ("default", {"columns": ["x", "n", "const", "big"]}),
       ("range-unit-variance", {"columns": ["big", "f32", "small"], "quantile_range": [10, 90],
                                "unit_variance": True, "with_centering": False}))
_cases("robust_scale", nan_table, ("nan", {"columns": ["x", "n"]}))
_cases("robust_scale", large_table, ("multi-pass", {"columns": ["y", "k"]}))
_cases("robust_scale", small_table, ("approx", {"columns": ["x", "big"], "approx": True}))

_cases("one_hot", features_table,
       ("default", {"columns": ["plan", "region", "flag", "small"]}),
       ("max-categories", {"columns": ["plan", "small"], "max_categories": 3}),
       ("min-frequency", {"columns": ["plan", "n"], "min_frequency": 0.1}),
       ("min-count-no-nulls", {"columns": ["region", "flag"], "min_frequency": 90,
                               "nulls": "error"}))

def text_table(rows: int = 200, seed: int = 8) -> pa.Table:
    """Short texts of a Zipf-like vocabulary with capitals, punctuation, accents, digits,
    one-letter words, nulls and empty texts; a dictionary-encoded copy; a number."""
    rng = np.random.default_rng(seed)
    words = np.array(["refund", "Slow", "delivery", "great", "café", "naïve", "a", "the",
                      "App", "crash", "42", "login_error", "über", "support", "price",
                      "日本", "x"])
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    seps = np.array([" ", ", ", "! ", " - ", "  ", "... "])
    texts = []
    for _ in range(rows):
        n = int(rng.integers(0, 9))
        picked = rng.choice(words, size=n, p=weights)
        text = "".join(w + seps[rng.integers(0, len(seps))] for w in picked).strip()
        texts.append(None if rng.random() < 0.05 else text)
    text = pa.array(texts, pa.string())
    return pa.table({"review": text, "notes": text.dictionary_encode(),
                     "x": pa.array(rng.standard_normal(rows))})


_cases("vectorize_text", text_table,
       ("counts", {"columns": ["review"]}),
       ("tfidf-ngrams", {"columns": ["review", "notes"], "ngram_range": [1, 2],
                         "idf": "smooth", "norm": "l2", "min_df": 2}),
       ("binary-limits", {"columns": ["review"], "binary": True, "max_df": 0.3,
                          "max_features": 6, "stop_words": ["The", "a"]}),
       ("spark-tokens", {"columns": ["notes"], "separators": "\\s+", "min_token_length": 1,
                         "lowercase": False, "idf": "spark", "sublinear_tf": True,
                         "norm": "l1", "min_df": 0.05}),
       ("hashed-idf", {"columns": ["review", "notes"], "num_features": 16, "idf": "smooth",
                       "norm": "l2"}),
       ("hashed-signed", {"columns": ["review"], "num_features": 8, "hashing": "sklearn",
                          "binary": True, "ngram_range": [1, 2]}),
       ("sparse-tfidf", {"columns": ["review", "notes"], "sparse": True, "idf": "smooth",
                         "norm": "l2", "ngram_range": [1, 2]}),
       ("sparse-hashed", {"columns": ["review"], "sparse": True, "num_features": 8,
                          "hashing": "sklearn", "min_token_length": 1}))

_cases("target_encode", features_table,
       ("regression", {"columns": ["plan", "region", "n"], "label": "big"}),
       ("two-classes", {"columns": ["plan", "small"], "label": "flag", "smooth": 2.0}),
       ("classes-no-folds", {"columns": ["plan", "region"], "label": "small", "folds": 0}),
       ("classes-folds", {"columns": ["region", "flag"], "label": "small", "folds": 3,
                          "seed": 4}))

_cases("hash_encode", features_table,
       ("default", {"columns": ["plan", "n"], "buckets": 8}),
       ("keep-seed", {"columns": ["region", "x", "flag"], "buckets": 4, "seed": 7,
                      "drop": False}))

_cases("bucketize", features_table,
       ("boundaries", {"columns": ["x", "n"], "boundaries": [-2, 0, 1.5, 4]}),
       ("quantiles-suffix", {"columns": ["x", "big", "small"], "quantiles": 4,
                             "suffix": "_q"}))
_cases("bucketize", nan_table,
       ("nan", {"columns": ["x"], "quantiles": 5}))
_cases("bucketize", large_table,
       ("quantiles-multi-pass", {"columns": ["y", "k"], "quantiles": 10}))
_cases("bucketize", small_table,
       ("quantiles-approx", {"columns": ["x", "big"], "quantiles": 3, "approx": True}))

_cases("derive", features_table,
       ("chained", {"columns": {"ratio": "x / greatest(abs(n), 1)",
                                "log_ratio": "log1p(abs(ratio))",
                                "is_basic": "plan = 'basic'",
                                "both": "is_basic and flag"}}),
       ("replace", {"columns": {"x": "coalesce(x, 0.0) * 2", "n": "n % 7",
                                "label": "upper(plan)"}}))

_cases("select", features_table,
       ("reorder", {"columns": ["plan", "x", "id"]}),
       ("missing-ignored", {"columns": ["plan", "not_there", "x"], "missing": "ignore"}))
_cases("drop", features_table,
       ("some", {"columns": ["big", "region"]}),
       ("missing-ignored", {"columns": ["big", "not_there"], "missing": "ignore"}))
_cases("rename", features_table,
       ("some", {"columns": {"x": "x_renamed", "plan": "tier"}}),
       ("swap", {"columns": {"x": "n", "n": "x"}}))
_cases("cast", features_table,
       ("widen", {"columns": {"small": "int64", "n": "float64", "flag": "int8"}}),
       ("to-string-unsafe", {"columns": {"id": "string", "x": "int32"}, "safe": False}),
       ("invalid-null", {"columns": {"big": "int8", "x": "uint8", "plan": "int64",
                                     "region": "float64"}, "invalid": "null"}))

def vectors_table(rows: int = 200, seed: int = 21) -> pa.Table:
    """Embeddings: a fixed_size_list<float32>[4] with null vectors, a list<double> of 3
    with a null number, a list<int32> of 2, and a plain column."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((rows, 4)).astype(np.float32)
    vec = rng.standard_normal((rows, 3))
    pairs = rng.integers(-9, 9, (rows, 2)).astype(np.int32)
    nulls = rng.random(rows) < 0.05
    vec_rows: list = vec.tolist()
    vec_rows[3][1] = None
    return pa.table({
        "x": rng.standard_normal(rows),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 4,
                                                 mask=pa.array(nulls)),
        "vec": pa.array(vec_rows, pa.list_(pa.float64())),
        "pairs": pa.array(pairs.tolist(), pa.list_(pa.int32())),
    })


_cases("vector_columns", vectors_table,
       ("fixed-size", {"columns": ["emb"]}),
       ("list-kept", {"columns": ["pairs"], "size": 2, "keep": True}),
       ("null-number", {"columns": ["vec"], "size": 3}))

_cases("filter", features_table,
       ("nulls-dropped", {"where": "x > 0.5 and plan != 'trial'"}),
       ("derived", {"where": "coalesce(n, 0) % 3 = 0 or flag"}))
_cases("sample", features_table,
       ("whole-row", {"fraction": 0.4, "seed": 3}),
       ("by-complement", {"fraction": 0.7, "by": ["plan", "region"], "complement": True}))


def _lookup_tables() -> tuple[str, str]:
    """A lookup by plan (string keys, a null key, a plan the data lacks, one it has
    missing: trial) and one by (small, region): int64 keys where the data has int32,
    plain strings where it has a dictionary."""
    import os

    import pyarrow.parquet as pq

    from operators.testing.kit import scratch_dir

    folder = scratch_dir()
    by_plan = os.path.join(folder, "plans.parquet")
    pq.write_table(pa.table({
        "plan": pa.array(["basic", "plus", "premium", "gold", None]),
        "price": pa.array([10.0, 20.0, None, 50.0, 99.0]),
        "tier": pa.array([1, 2, 3, 4, 5], pa.int16()),
    }), by_plan)
    by_pair = os.path.join(folder, "pairs")
    os.makedirs(by_pair)
    small = np.repeat(np.arange(-5, 5), 3)
    region = np.tile(["eu", "us", "apac"], 10)
    keep = (small + np.arange(30)) % 4 != 0  # not every pair
    pairs = pa.table({"small": pa.array(small[keep], pa.int64()), "zone": region[keep],
                      "rate": np.linspace(0.1, 0.9, int(keep.sum()))})
    pq.write_table(pairs.slice(0, 10), os.path.join(by_pair, "a.parquet"))
    pq.write_table(pairs.slice(10), os.path.join(by_pair, "b.parquet"))
    return by_plan, by_pair


_PLANS, _PAIRS = _lookup_tables()
_cases("join", features_table,
       ("left-string-key", {"path": _PLANS, "on": ["plan"]}),
       ("inner-columns-prefix", {"path": _PLANS, "on": ["plan"], "how": "inner",
                                 "columns": ["price"], "prefix": "plan_"}),
       ("two-keys-named", {"path": _PAIRS, "on": {"small": "small", "region": "zone"},
                           "filter": "rate > 0.2"}),
       ("anti", {"path": _PAIRS, "on": {"small": "small", "region": "zone"}, "how": "anti"}),
       # the same joins through a shuffle (a table too large to send everywhere)
       ("shuffle-left-string-key", {"path": _PLANS, "on": ["plan"], "strategy": "shuffle"}),
       ("shuffle-inner-two-keys", {"path": _PAIRS, "on": {"small": "small", "region": "zone"},
                                   "how": "inner", "filter": "rate > 0.2", "prefix": "p_",
                                   "strategy": "shuffle"}),
       ("shuffle-anti", {"path": _PAIRS, "on": {"small": "small", "region": "zone"},
                         "how": "anti", "strategy": "shuffle", "partitions": 3}))
_cases("expect", features_table,
       ("passing-fail", {"rules": {"ids": "id >= 0", "small": "small between -5 and 4"},
                         "not_null": ["region", "flag"]}),
       ("drop", {"rules": {"positive": "x > 0", "known": "plan != 'trial'"},
                 "not_null": ["n"], "on_failure": "drop"}))


def _app_rows() -> pa.Table:
    """features_table's columns in another order and other types: int64 where it has
    int32, float64 where int64, plain strings where a dictionary, float64 where float32."""
    base = features_table(rows=90, seed=4)
    return pa.table({
        "region": base.column("region").cast(pa.string()),
        "small": base.column("small").cast(pa.int64()),
        "id": base.column("id"), "x": base.column("x"),
        "n": base.column("n").cast(pa.float64()),
        "const": base.column("const"), "big": base.column("big"),
        "plan": base.column("plan"), "flag": base.column("flag"),
        "f32": base.column("f32").cast(pa.float64()),
    })


def _store_rows() -> pa.Table:
    """Some of features_table's columns (no plan, flag, big), and two of its own."""
    base = features_table(rows=40, seed=6).drop_columns(["plan", "flag", "big"])
    rng = np.random.default_rng(6)
    return base.append_column("till", pa.array(rng.integers(0, 9, 40), pa.int16())).append_column(
        "paid", pa.array(rng.random(40) * 10, mask=rng.random(40) < 0.2))


case("union", {"steps": ["app"]}, features_table, id="by-name-promoted",
     step_rows={"app": _app_rows})
case("union", {"steps": ["app", "store"], "missing": "null"}, features_table,
     id="missing-null", step_rows={"app": _app_rows, "store": _store_rows})


def events_table(rows: int = 600, seed: int = 8) -> pa.Table:
    """Event rows for aggregate: repeated keys (with nulls, a dictionary key), amounts
    with nulls and NaN, times with ties, a text with nulls."""
    rng = np.random.default_rng(seed)
    base = features_table(rows, seed)
    ts = rng.integers(0, 40, rows).astype("datetime64[s]")
    return base.append_column("customer", pa.array(rng.integers(0, 35, rows), pa.int64(),
                                                   mask=rng.random(rows) < 0.03)).append_column(
        "ts", pa.array(ts, pa.timestamp("s"), mask=rng.random(rows) < 0.05))


_ALL_FUNCTIONS = {
    "rows": "count()", "known_x": "count(x)", "flagged": "count_if(flag and x > 0)",
    "x_sum": "sum(x)", "n_sum": "sum(n * 2)", "x_mean": "mean(x)", "x_min": "min(x)",
    "plan_max": "max(plan)", "x_std": "std(x)", "n_var": "var(n)",
    "plans": "count_distinct(plan)", "any_flag": "any(flag)", "all_small": "all(small > -5)",
    "last_plan": "max_by(plan, ts)", "first_n": "min_by(n, ts)", "latest": "max(ts)",
    "x_median": "median(x)", "big_q": "quantile(big, 0.25)",
}
_cases("aggregate", events_table,
       ("one-key", {"by": ["customer"], "columns": _ALL_FUNCTIONS}),
       ("two-keys-dictionary", {"by": ["region", "plan"], "columns": {
           "rows": "count(*)", "avg_big": "avg(big)", "sd": "stddev(f32)",
           "top": "max_by(id, x)", "ids": "count_distinct(id % 7)"}}),
       ("pivot", {"by": ["customer"], "columns": {"rows": "count()", "x_sum": "sum(x)",
                                                  "last": "max_by(n, ts)"},
                  "pivot": {"column": "plan", "values": ["basic", "premium", None, "gold"]}}),
       ("no-keys", {"by": [], "columns": {"rows": "count()", "x_sum": "sum(x)",
                                          "x_var": "var(x)", "plans": "count_distinct(plan)",
                                          "last": "max_by(plan, ts)"}}))


def updates_table(rows: int = 500, seed: int = 9) -> pa.Table:
    """Updates of customers: repeated keys, versions with ties and nulls, exact repeats."""
    base = events_table(rows, seed)
    rng = np.random.default_rng(seed)
    version = pa.array(rng.integers(0, 6, rows), pa.int64(), mask=rng.random(rows) < 0.1)
    table = base.append_column("version", version)
    return pa.concat_tables([table, table.slice(0, 40)])  # rows delivered twice


_cases("deduplicate", updates_table,
       ("latest", {"by": ["customer"], "order": "version"}),
       ("earliest-two-keys", {"by": ["region", "plan"], "order": "ts", "keep": "first"}),
       ("no-order", {"by": ["customer"]}),
       ("whole-rows", {}))
_cases("window", events_table,
       ("one-key-every-function", {"by": ["customer"], "order": ["ts"], "columns": {
           "rownum": "row_number()", "r": "rank()", "dr": "dense_rank()", "prev": "lag(plan)",
           "next2": "lead(x * 2, 2)", "cs": "cum_sum(x)", "ci": "cum_sum(n)",
           "cc": "cum_count()", "cx": "cum_count(x)", "cm": "cum_mean(big)",
           "lo": "cum_min(x)", "hi": "cum_max(ts)", "r3": "rolling_sum(n, 3)",
           "m3": "rolling_mean(x, 3)", "c3": "rolling_count(plan, 3)",
           "s5": "rolling_sum(x, '5 seconds')", "k5": "rolling_count(x, '5 seconds')",
           "pr": "percent_rank()", "cd": "cume_dist()", "third": "ntile(3)",
           "fv": "first_value(plan)", "lv": "last_value(x)", "mx": "rolling_max(x, 4)",
           "mn": "rolling_min(ts, '7 seconds')", "ahead": "next_sum(x, '5 seconds')",
           "after": "next_count(plan, 2)"}}),
       ("two-keys-dictionary-two-orders", {"by": ["region", "plan"], "order": ["small", "id"],
                                           "columns": {"rownum": "row_number()",
                                                       "before": "lag(x)",
                                                       "running": "cum_sum(flag)"},
                                           "partitions": 3}),
       ("no-keys", {"by": [], "order": ["id"], "columns": {"rownum": "row_number()",
                                                          "total": "cum_sum(x)"}}))
_cases("sort", events_table,
       ("one-column", {"by": ["x"]}),
       ("desc-dictionary-and-ties", {"by": ["region", "x desc", "plan"], "partitions": 3}),
       ("time-and-floats-desc", {"by": ["ts desc", "f32 desc"]}))
_cases("repartition", events_table,
       ("by-key", {"by": ["customer"]}),
       ("two-keys-dictionary", {"by": ["region", "plan"], "partitions": 3}),
       ("spread", {}))
_cases("top", events_table,
       ("per-key-latest", {"by": ["customer"], "order": ["ts desc"], "n": 3}),
       ("two-keys-dictionary-two-orders", {"by": ["region", "plan"],
                                          "order": ["x desc", "small"], "n": 2,
                                          "partitions": 3}),
       ("all-rows", {"order": ["big desc"], "n": 10}))
