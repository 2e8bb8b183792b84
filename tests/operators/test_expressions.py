"""Tests for ``operators.expressions``: the safe filter / derive expression language.

Every expected value is computed independently in plain Python (or numpy for IEEE float
corner cases) from the same rows the expression runs on; nothing is hard-coded from a run.
"""

from __future__ import annotations

import datetime as dt
import decimal
import inspect
import math
import operator
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from differential import and3, or3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators import expressions
from operators.base import DataError, lookup
from operators.expressions import (
    ExpressionError,
    check_filter,
    expression_type,
    nan_safe_filter,
    parse_expression,
    parse_filter,
    referenced_columns,
    unquoted_dates,
)

NAN = float("nan")
D = decimal.Decimal
INF = float("inf")
UTC = dt.UTC

# ---------------------------------------------------------------------------------------------
# A small table and helpers
# ---------------------------------------------------------------------------------------------

SCHEMA = pa.schema(
    [
        ("tenure", pa.int64()),
        ("total", pa.float64()),
        ("region", pa.string()),
        ("flag", pa.bool_()),
        ("d", pa.date32()),
        ("ts", pa.timestamp("us")),
        ("tsz", pa.timestamp("us", tz="UTC")),
        ("plan=basic", pa.int32()),
        ("größe", pa.float64()),
        ("date", pa.int64()),
    ]
)

ROWS: list[dict[str, Any]] = [
    {"tenure": 0, "total": 10.0, "region": "eu", "flag": True, "d": dt.date(2026, 1, 1),
     "ts": dt.datetime(2026, 1, 1, 8, 0), "tsz": dt.datetime(2026, 1, 1, 8, 0, tzinfo=UTC),
     "plan=basic": 1, "größe": 1.5, "date": 7},
    {"tenure": 3, "total": 30.0, "region": "test", "flag": False, "d": dt.date(2026, 11, 28),
     "ts": dt.datetime(2026, 11, 28, 10, 0), "tsz": dt.datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
     "plan=basic": 0, "größe": -2.25, "date": 8},
    {"tenure": None, "total": 5.0, "region": "us", "flag": None, "d": None, "ts": None,
     "tsz": None, "plan=basic": None, "größe": None, "date": None},
    {"tenure": 5, "total": None, "region": None, "flag": True, "d": dt.date(2027, 2, 3),
     "ts": dt.datetime(2027, 2, 3, 23, 59, 59), "tsz": dt.datetime(2027, 2, 3, tzinfo=UTC),
     "plan=basic": 1, "größe": 2.5, "date": 9},
    {"tenure": 12, "total": NAN, "region": "it's", "flag": False, "d": dt.date(2025, 12, 31),
     "ts": dt.datetime(2025, 12, 31), "tsz": dt.datetime(2025, 12, 31, 23, tzinfo=UTC),
     "plan=basic": 0, "größe": 0.5, "date": 10},
    {"tenure": -4, "total": -7.5, "region": "EU", "flag": True, "d": dt.date(2026, 6, 15),
     "ts": dt.datetime(2026, 6, 15, 12, 30), "tsz": dt.datetime(2026, 6, 15, 12, 30, tzinfo=UTC),
     "plan=basic": 1, "größe": -0.0, "date": 11},
]
TABLE = pa.Table.from_pylist(ROWS, schema=SCHEMA)


def evaluate(text: str, table: pa.Table = TABLE) -> list[Any]:
    """Evaluate a value expression over ``table`` with a dataset projection."""
    result = ds.dataset(table).to_table(columns={"r": parse_expression(text)})
    return result.column("r").to_pylist()


def kept_rows(text: str, table: pa.Table = TABLE) -> list[int]:
    """Indices of the rows of ``table`` that ``filter=parse_filter(text)`` keeps."""
    with_ids = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    result = ds.dataset(with_ids).to_table(filter=parse_filter(text), columns=["_row"])
    return sorted(result.column("_row").to_pylist())


def rowwise(fn: Callable[..., Any], *names: str) -> Callable[[dict[str, Any]], Any]:
    """``fn`` applied to the named columns of a row; None (SQL null) if any of them is null."""

    def apply(row: dict[str, Any]) -> Any:
        values = [row[n] for n in names]
        return None if any(v is None for v in values) else fn(*values)

    return apply


def ieee(fn: Callable[..., Any]) -> Callable[..., float]:
    """Float math with IEEE results (inf / nan) instead of Python exceptions."""

    def apply(*args: Any) -> float:
        with np.errstate(all="ignore"):
            return float(fn(*(np.float64(a) for a in args)))

    return apply


def same(actual: Any, expected: Any) -> bool:
    """Equality that treats NaN as equal to NaN, compares numbers numerically, keeps -0.0 == 0."""
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(actual, bool) or isinstance(expected, bool):
            return False
        if math.isnan(expected) or math.isnan(actual):
            return math.isnan(expected) and math.isnan(actual)
        return actual == expected or math.isclose(actual, expected, rel_tol=1e-12, abs_tol=0)
    return type(actual) is type(expected) and actual == expected


def assert_same(actual: list[Any], expected: list[Any]) -> None:
    assert len(actual) == len(expected)
    pairs = enumerate(zip(actual, expected, strict=True))
    bad = [(i, a, e) for i, (a, e) in pairs if not same(a, e)]
    assert not bad, f"rows differ (index, got, expected): {bad}"


def not3(value: bool | None) -> bool | None:
    return None if value is None else not value


def in3(value: Any, items: list[Any]) -> bool | None:
    if value is None:
        return None
    if any(item is not None and value == item for item in items):
        return True
    return None if any(item is None for item in items) else False


def least_greatest(pick: Callable[..., Any]) -> Callable[..., Any]:
    """arrow's min/max_element_wise: skips nulls, and NaN unless everything is NaN."""

    def apply(*values: Any) -> Any:
        present = [v for v in values if v is not None]
        numbers = [v for v in present if not (isinstance(v, float) and math.isnan(v))]
        if numbers:
            return pick(numbers)
        return NAN if present else None

    return apply


# ---------------------------------------------------------------------------------------------
# Value expressions (derive) on the small table
# ---------------------------------------------------------------------------------------------

VALUE_CASES: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    # literals
    ("42", lambda r: 42),
    ("1_000", lambda r: 1000),
    ("1.5", lambda r: 1.5),
    (".5", lambda r: 0.5),
    ("1e-3", lambda r: 0.001),
    ("2.5E2", lambda r: 250.0),
    ("'it''s'", lambda r: "it's"),
    ('"say ""hi"""', lambda r: 'say "hi"'),
    (r"'tab\there\\ \'q\' \u00e9'", lambda r: "tab\there\\ 'q' \u00e9"),
    (r"'a\%b'", lambda r: "a\\%b"),
    ("TRUE", lambda r: True),
    ("False", lambda r: False),
    ("null", lambda r: None),
    # columns
    ("tenure", lambda r: r["tenure"]),
    ("`plan=basic` + 1", rowwise(lambda p: p + 1, "plan=basic")),
    ("größe * 2", rowwise(lambda g: g * 2, "größe")),
    ("`date` * 10", rowwise(lambda v: v * 10, "date")),
    ("`tenure` - 1", rowwise(lambda t: t - 1, "tenure")),
    # arithmetic
    ("tenure + 1", rowwise(lambda t: t + 1, "tenure")),
    ("tenure - 2 * 3", rowwise(lambda t: t - 6, "tenure")),
    ("(tenure - 2) * 3", rowwise(lambda t: (t - 2) * 3, "tenure")),
    ("10 - 2 - 3", lambda r: 5),
    ("100 / 10 / 5", lambda r: 2.0),
    ("total / tenure", rowwise(ieee(operator.truediv), "total", "tenure")),
    ("tenure / 4", rowwise(lambda t: t / 4, "tenure")),
    ("7 / 2", lambda r: 3.5),
    ("tenure / 0", rowwise(ieee(lambda t: t / np.float64(0)), "tenure")),
    ("-tenure / 0", rowwise(ieee(lambda t: -t / np.float64(0)), "tenure")),
    ("tenure % 5", rowwise(lambda t: t % 5, "tenure")),
    ("tenure % -5", rowwise(lambda t: t % -5, "tenure")),
    ("tenure % 0", lambda r: None),
    ("tenure % (tenure - 3)", rowwise(lambda t: None if t == 3 else t % (t - 3), "tenure")),
    ("total % 4", rowwise(lambda v: v % 4, "total")),
    ("-tenure", rowwise(lambda t: -t, "tenure")),
    ("- -tenure", rowwise(lambda t: t, "tenure")),
    ("2 ** 3 ** 2", lambda r: float(2 ** 9)),
    ("-2 ** 2", lambda r: -4.0),
    ("(-2) ** 2", lambda r: 4.0),
    ("2 ^ -1", lambda r: 0.5),
    ("tenure ** 2", rowwise(lambda t: float(t) ** 2, "tenure")),
    ("2 * 3 ** 2", lambda r: 18.0),
    # functions
    ("log(total)", rowwise(ieee(np.log), "total")),
    ("LN(total)", rowwise(ieee(np.log), "total")),
    ("log1p(tenure)", rowwise(ieee(np.log1p), "tenure")),
    ("log2(total)", rowwise(ieee(np.log2), "total")),
    ("log10(total)", rowwise(ieee(np.log10), "total")),
    ("exp(größe)", rowwise(ieee(np.exp), "größe")),
    ("sqrt(total)", rowwise(ieee(np.sqrt), "total")),
    ("abs(tenure)", rowwise(abs, "tenure")),
    ("abs(total)", rowwise(abs, "total")),
    ("floor(größe)", rowwise(lambda g: float(math.floor(g)), "größe")),
    ("ceil(größe)", rowwise(lambda g: float(math.ceil(g)), "größe")),
    ("round(größe)", rowwise(lambda g: float(round(g)), "größe")),
    ("round(größe, 1)", rowwise(lambda g: round(g, 1), "größe")),
    ("round(total / 3, 2)", rowwise(lambda v: float(np.round(v / 3, 2)), "total")),
    ("pow(tenure, 2)", rowwise(lambda t: float(t) ** 2, "tenure")),
    ("POWER(2, tenure)", rowwise(lambda t: 2.0 ** t, "tenure")),
    ("least(tenure, 2)", lambda r: least_greatest(min)(r["tenure"], 2)),
    ("greatest(tenure, total, 0)",
     lambda r: least_greatest(max)(r["tenure"], r["total"], 0)),
    ("least(total, größe)", lambda r: least_greatest(min)(r["total"], r["größe"])),
    ("coalesce(tenure, -1)", lambda r: r["tenure"] if r["tenure"] is not None else -1),
    ("coalesce(region, 'none')", lambda r: r["region"] if r["region"] is not None else "none"),
    ("if(flag, tenure, -tenure)",
     lambda r: None if r["flag"] is None else (r["tenure"] if r["flag"] else
                                               (None if r["tenure"] is None else -r["tenure"]))),
    ("IF_ELSE(tenure > 1, 'big', 'small')",
     rowwise(lambda t: "big" if t > 1 else "small", "tenure")),
    ("is_nan(total)", rowwise(math.isnan, "total")),
    ("lower(region)", rowwise(str.lower, "region")),
    ("Upper(region)", rowwise(str.upper, "region")),
    ("length(region)", rowwise(len, "region")),
    ("year(d)", rowwise(lambda d: d.year, "d")),
    ("month(ts)", rowwise(lambda t: t.month, "ts")),
    ("day(d)", rowwise(lambda d: d.day, "d")),
    ("cast(total as int64)", rowwise(int, "total")),  # evaluated on finite rows only
    ("cast(größe AS int)", rowwise(int, "größe")),
    ("cast(tenure as string)", rowwise(str, "tenure")),
    ("cast(tenure as double) / 2", rowwise(lambda t: t / 2, "tenure")),
    ("cast(tenure as boolean)", rowwise(bool, "tenure")),
    ("cast(ts as date)", rowwise(lambda t: t.date(), "ts")),
    ("cast('2026-03-04' as date)", lambda r: dt.date(2026, 3, 4)),
    ("cast('17' as int16) + 1", lambda r: 18),
    # dates and timestamps as values
    ("date '2026-11-28'", lambda r: dt.date(2026, 11, 28)),
    ("timestamp '2026-11-28 10:00:00'", lambda r: dt.datetime(2026, 11, 28, 10)),
    ("timestamp '2026-11-28T10:00:00.250'", lambda r: dt.datetime(2026, 11, 28, 10, 0, 0, 250000)),
    ("timestamp '2026-11-28 10:00:00Z'", lambda r: dt.datetime(2026, 11, 28, 10, tzinfo=UTC)),
    ("timestamp '2026-11-28 10:00:00+02:00'", lambda r: dt.datetime(2026, 11, 28, 8, tzinfo=UTC)),
]

# rows where cast(total as int64) would be NaN -> unspecified: restrict that case to finite rows
_FINITE_ONLY = {"cast(total as int64)"}


@pytest.mark.parametrize(("text", "expected"), VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_value_expression(text: str, expected: Callable[[dict[str, Any]], Any]) -> None:
    table, rows = TABLE, ROWS
    if text in _FINITE_ONLY:
        keep = [i for i, r in enumerate(ROWS) if r["total"] is None or math.isfinite(r["total"])]
        table, rows = TABLE.take(keep), [ROWS[i] for i in keep]
    assert_same(evaluate(text, table), [expected(row) for row in rows])


def test_true_division_is_float64_even_for_integers() -> None:
    table = pa.table({"a": pa.array([7, -7, 1], pa.int32()), "b": pa.array([2, 2, 3], pa.int8())})
    assert expression_type("a / b", table.schema) == pa.float64()
    assert evaluate("a / b", table) == [7 / 2, -7 / 2, 1 / 3]
    assert expression_type("a % b", table.schema) == pa.int32()


def test_division_by_zero_never_raises() -> None:
    table = pa.table({"a": [1, -1, 0, None], "b": [0, 0, 0, 0]})
    got = evaluate("a / b", table)
    assert got[0] == INF and got[1] == -INF and math.isnan(got[2]) and got[3] is None
    assert evaluate("a % b", table) == [None, None, None, None]


def test_unchecked_math_gives_nan_and_inf() -> None:
    table = pa.table({"x": [-1.0, 0.0]})
    got_log, got_sqrt = evaluate("log(x)", table), evaluate("sqrt(x)", table)
    assert math.isnan(got_log[0]) and got_log[1] == -INF
    assert math.isnan(got_sqrt[0]) and got_sqrt[1] == 0.0


# ---------------------------------------------------------------------------------------------
# Predicates (filters) on the small table
# ---------------------------------------------------------------------------------------------


def cmp3(op: Callable[[Any, Any], bool], *names: str, literal: Any = None) -> Callable[..., Any]:
    if literal is not None:
        return rowwise(lambda a: op(a, literal), *names)
    return rowwise(op, *names)


PREDICATE_CASES: list[tuple[str, Callable[[dict[str, Any]], bool | None]]] = [
    ("tenure >= 0 and region != 'test'",
     lambda r: and3(cmp3(operator.ge, "tenure", literal=0)(r),
                    cmp3(operator.ne, "region", literal="test")(r))),
    ("tenure = 3", cmp3(operator.eq, "tenure", literal=3)),
    ("tenure == 3", cmp3(operator.eq, "tenure", literal=3)),
    ("tenure != 3", cmp3(operator.ne, "tenure", literal=3)),
    ("tenure <> 3", cmp3(operator.ne, "tenure", literal=3)),
    ("tenure < 3", cmp3(operator.lt, "tenure", literal=3)),
    ("tenure <= 3", cmp3(operator.le, "tenure", literal=3)),
    ("tenure > 3", cmp3(operator.gt, "tenure", literal=3)),
    ("tenure > -3.5", cmp3(operator.gt, "tenure", literal=-3.5)),
    ("total > tenure", cmp3(operator.gt, "total", "tenure")),
    ("total = total", cmp3(operator.eq, "total", "total")),
    ("total != total", cmp3(operator.ne, "total", "total")),
    ("region < 'f'", cmp3(operator.lt, "region", literal="f")),
    ("flag", lambda r: r["flag"]),
    ("not flag", lambda r: not3(r["flag"])),
    ("flag = false", cmp3(operator.eq, "flag", literal=False)),
    ("true", lambda r: True),
    ("NOT tenure > 1 OR flag AND total > 6",
     lambda r: or3(not3(cmp3(operator.gt, "tenure", literal=1)(r)),
                   and3(r["flag"], cmp3(operator.gt, "total", literal=6)(r)))),
    ("(not tenure > 1 or flag) and total > 6",
     lambda r: and3(or3(not3(cmp3(operator.gt, "tenure", literal=1)(r)), r["flag"]),
                    cmp3(operator.gt, "total", literal=6)(r))),
    ("not not flag", lambda r: r["flag"]),
    ("tenure in (0, 3, 12)", lambda r: in3(r["tenure"], [0, 3, 12])),
    ("tenure IN (3)", lambda r: in3(r["tenure"], [3])),
    ("tenure not in (0, 3)", lambda r: not3(in3(r["tenure"], [0, 3]))),
    ("tenure in (5, null)", lambda r: in3(r["tenure"], [5, None])),
    ("tenure not in (5, null)", lambda r: not3(in3(r["tenure"], [5, None]))),
    ("tenure in (null)", lambda r: in3(r["tenure"], [None])),
    ("größe in (0, 1.5)", lambda r: in3(r["größe"], [0, 1.5])),
    ("region in ('eu', 'it''s')", lambda r: in3(r["region"], ["eu", "it's"])),
    ("region not in ('eu')", lambda r: not3(in3(r["region"], ["eu"]))),
    ("tenure in (tenure - 3, 2 * 2, 12)",
     lambda r: in3(r["tenure"], [None if r["tenure"] is None else r["tenure"] - 3, 4, 12])),
    ("d in (date '2026-01-01', date '2027-02-03')",
     lambda r: in3(r["d"], [dt.date(2026, 1, 1), dt.date(2027, 2, 3)])),
    ("tenure is null", lambda r: r["tenure"] is None),
    ("total IS NOT NULL", lambda r: r["total"] is not None),
    ("total is null", lambda r: r["total"] is None),  # NaN is a value, not null
    ("is_nan(total)", rowwise(math.isnan, "total")),
    ("tenure between 0 and 5", rowwise(lambda t: 0 <= t <= 5, "tenure")),
    ("tenure not between 0 and 5", rowwise(lambda t: not 0 <= t <= 5, "tenure")),
    ("tenure between 0 and 5 and flag",
     lambda r: and3(rowwise(lambda t: 0 <= t <= 5, "tenure")(r), r["flag"])),
    ("total between tenure and 40",
     lambda r: and3(cmp3(operator.ge, "total", "tenure")(r),
                    cmp3(operator.le, "total", literal=40)(r))),
    ("region like 'e%'", rowwise(lambda s: s.startswith("e"), "region")),
    ("region LIKE '_u'", rowwise(lambda s: len(s) == 2 and s[1] == "u", "region")),
    ("region not like '%s%'", rowwise(lambda s: "s" not in s, "region")),
    ("lower(region) = 'eu'", rowwise(lambda s: s.lower() == "eu", "region")),
    ("length(region) > 2", rowwise(lambda s: len(s) > 2, "region")),
    ("d >= date '2026-06-15'", cmp3(operator.ge, "d", literal=dt.date(2026, 6, 15))),
    ("d between date '2026-01-01' and date '2026-12-31'",
     rowwise(lambda d: dt.date(2026, 1, 1) <= d <= dt.date(2026, 12, 31), "d")),
    ("year(d) = 2026", rowwise(lambda d: d.year == 2026, "d")),
    ("ts < timestamp '2026-06-15 12:30:00'",
     cmp3(operator.lt, "ts", literal=dt.datetime(2026, 6, 15, 12, 30))),
    ("ts >= date '2026-06-15'", cmp3(operator.ge, "ts", literal=dt.datetime(2026, 6, 15))),
    ("tsz >= timestamp '2026-06-15T14:30:00+02:00'",
     cmp3(operator.ge, "tsz", literal=dt.datetime(2026, 6, 15, 12, 30, tzinfo=UTC))),
    ("tsz < timestamp '2026-01-01 08:00:00.000001Z'",
     cmp3(operator.lt, "tsz", literal=dt.datetime(2026, 1, 1, 8, 0, 0, 1, tzinfo=UTC))),
    ("total / tenure > 3", rowwise(lambda a, b: ieee(operator.truediv)(a, b) > 3,
                                   "total", "tenure")),
    ("`plan=basic` = 1 and `date` > 7",
     lambda r: and3(cmp3(operator.eq, "plan=basic", literal=1)(r),
                    cmp3(operator.gt, "date", literal=7)(r))),
    ("if(flag, tenure > 1, false)",
     lambda r: None if r["flag"] is None else
     (cmp3(operator.gt, "tenure", literal=1)(r) if r["flag"] else False)),
    ("coalesce(flag, false)", lambda r: r["flag"] if r["flag"] is not None else False),
    ("cast(tenure as bool)", rowwise(bool, "tenure")),
]


@pytest.mark.parametrize(
    ("text", "expected"), PREDICATE_CASES, ids=[c[0] for c in PREDICATE_CASES]
)
def test_predicate(text: str, expected: Callable[[dict[str, Any]], bool | None]) -> None:
    want = [expected(row) for row in ROWS]
    assert evaluate(text) == want  # three-valued result, nulls included
    assert kept_rows(text) == [i for i, v in enumerate(want) if v is True]
    assert pa.types.is_boolean(expression_type(text, SCHEMA))
    assert check_filter(text, SCHEMA).equals(parse_filter(text, SCHEMA))


def test_table_filter_accepts_the_expression_too() -> None:
    want = [i for i, r in enumerate(ROWS) if r["tenure"] is not None and r["tenure"] > 1]
    assert TABLE.filter(parse_filter("tenure > 1")).num_rows == len(want)


def test_keywords_are_case_insensitive() -> None:
    texts = ["tenure is not null and tenure in (0, 3) or tenure between 4 and 5",
             "TENURE IS NOT NULL AND TENURE IN (0, 3) OR TENURE BETWEEN 4 AND 5"]
    # column names stay case-sensitive, keywords don't
    with pytest.raises(ExpressionError, match="unknown column 'TENURE'"):
        check_filter(texts[1], SCHEMA)
    mixed = "tenure Is Not Null And tenure In (0, 3) Or tenure Between 4 AnD 5"
    want = [i for i, r in enumerate(ROWS)
            if r["tenure"] is not None and (r["tenure"] in (0, 3) or 4 <= r["tenure"] <= 5)]
    assert kept_rows(texts[0]) == kept_rows(mixed) == want


def test_literal_types() -> None:
    schema = pa.schema([])
    assert expression_type("1", schema) == pa.int64()
    assert expression_type("1.0", schema) == pa.float64()
    assert expression_type("'x'", schema) == pa.string()
    assert expression_type("true", schema) == pa.bool_()
    assert expression_type("null", schema) == pa.null()
    assert expression_type("date '2026-11-28'", schema) == pa.date32()
    assert expression_type("timestamp '2026-11-28 10:00:00'", schema) == pa.timestamp("us")
    assert expression_type("timestamp '2026-11-28 10:00:00Z'", schema) == pa.timestamp(
        "us", tz="UTC"
    )


@pytest.mark.parametrize(
    ("type_name", "arrow_type"),
    [("int8", pa.int8()), ("int16", pa.int16()), ("int32", pa.int32()), ("int64", pa.int64()),
     ("uint8", pa.uint8()), ("uint16", pa.uint16()), ("uint32", pa.uint32()),
     ("uint64", pa.uint64()), ("float32", pa.float32()), ("float64", pa.float64()),
     ("double", pa.float64()), ("string", pa.string()), ("bool", pa.bool_()),
     ("boolean", pa.bool_()), ("date", pa.date32()), ("INT", pa.int64())],
)
def test_cast_types(type_name: str, arrow_type: pa.DataType) -> None:
    source = "tenure" if type_name != "date" else "ts"
    assert expression_type(f"cast({source} as {type_name})", SCHEMA) == arrow_type


def test_like_matches_an_escaped_backslash_beside_a_percent() -> None:
    # '\\' in a pattern is one literal backslash; Arrow's own shortcut for a pattern
    # that starts or ends with % kept the escape too, and matched nothing
    table = pa.table({"s": ["a\\", "\\b", "a\\b", "ab", None]})
    assert evaluate(r"s like '%\\\\'", table) == [True, False, False, False, None]
    assert evaluate(r"s like '\\\\%'", table) == [False, True, False, False, None]
    assert evaluate(r"s not like 'a\\\\%'", table) == [False, True, False, True, None]
    assert evaluate(r"s like '%\\\\%'", table) == [True, True, True, False, None]
    assert evaluate(r"s like 'a\\\\_'", table) == [False, False, True, False, None]


def test_long_chains_and_lists() -> None:
    table = pa.table({"k": list(range(1000))})
    ors = " or ".join(f"k = {i}" for i in range(0, 1000, 2))
    assert kept_rows(ors, table) == list(range(0, 1000, 2))
    in_list = "k in (" + ", ".join(str(i) for i in range(0, 3000, 3)) + ")"
    assert kept_rows(in_list, table) == list(range(0, 1000, 3))
    nested = "(" * 300 + "k < 5" + ")" * 300
    assert kept_rows(nested, table) == list(range(5))


def test_absurd_nesting_is_a_clean_error() -> None:
    err = error_of(parse_filter, "(" * 5000 + "k > 1" + ")" * 5000)
    assert err.message == "expression is nested too deeply"


def test_integer_edge_literals() -> None:
    assert evaluate("-9223372036854775808", pa.table({"x": [1]})) == [-(2**63)]
    assert evaluate("9223372036854775808", pa.table({"x": [1]})) == [2**63]  # a uint64
    with pytest.raises(ExpressionError, match="does not fit in int64 or uint64"):
        parse_expression("18446744073709551616")


# ---------------------------------------------------------------------------------------------
# API: referenced_columns, expression_type, check_filter, ExpressionError
# ---------------------------------------------------------------------------------------------


def test_referenced_columns_in_order_of_first_appearance() -> None:
    text = "total / tenure > 2 and tenure > 0 or `plan=basic` is null or log(größe) > total"
    assert referenced_columns(text) == ["total", "tenure", "plan=basic", "größe"]
    assert referenced_columns("1 + 2") == []
    assert referenced_columns("`a``b` = 1") == ["a`b"]
    assert referenced_columns("x in (y, z, x)") == ["x", "y", "z"]


NAN_SCHEMA = pa.schema({"x": pa.float64(), "y": pa.float32(), "n": pa.int64()})
WHOLE = "the filter itself"


@pytest.mark.parametrize(("text", "judged"), [
    ("x > 10 and n != 0", WHOLE),  # NaN > 10 is false
    ("x between 1 and 2 or x in (5, 6) or x is null", WHOLE),
    ("x > 10 and x != 12", "x > 10"),  # a conjunction keeps its safe parts
    ("x != 1", None),  # NaN != 1 is true
    ("x > 1 or x != 2", None),  # a disjunction needs them all
    ("not (x <= 1)", None),
    ("not (x != 1)", WHOLE),
    ("not (x != 1 or n < 0)", "not (x != 1) and not (n < 0)"),  # De Morgan
    ("not (x > 1 and y != 2)", None),
    ("not (x not in (1, 2)) and not (x not between 0 and 3)", WHOLE),
    ("is_nan(x)", None),
    ("not is_nan(x + y)", WHOLE),
    ("x is not null and n > 0", WHOLE),
    ("coalesce(x, y) * 2 - 1 > 0 and if(n > 0, x, y) < 5 and x % 3 = 1", WHOLE),
    ("least(x, 5) = 5 and n = 1", "n = 1"),  # least(NaN, 5) is 5
    ("cast(x as int) < 0", None),  # NaN as int64 is its minimum
    ("pow(x, 0) = 1", None),
    ("if(x > 0, 1, 0) = 0", None),
    ("1 / x > 0 and 3 % y = 1 and x / 2 > 0", "x / 2 > 0"),  # 1 / -0.0 is -inf
    ("n != 1 and cast(n as float64) != 2", WHOLE),  # no column that holds NaN
])
def test_nan_safe_filter_keeps_what_a_nan_cannot_make_true(text: str, judged: str | None
                                                           ) -> None:
    """What row-group statistics may judge of a filter where x and y can hold NaN (their
    min and max leave it out): the filter, a weaker one, or nothing."""
    got = nan_safe_filter(text, {"x", "y"}, NAN_SCHEMA)
    if judged is None:
        assert got is None
    else:
        want = parse_filter(text if judged == WHOLE else judged, NAN_SCHEMA)
        assert got is not None and got.equals(want), got


def test_expression_type_plans_without_data() -> None:
    assert expression_type("total / tenure", SCHEMA) == pa.float64()
    assert expression_type("tenure + 1", SCHEMA) == pa.int64()
    assert expression_type("log1p(tenure)", SCHEMA) == pa.float64()
    assert expression_type("upper(region)", SCHEMA) == pa.string()
    assert expression_type("year(d)", SCHEMA) == pa.int64()
    assert expression_type("tenure > 1", SCHEMA) == pa.bool_()
    assert expression_type("region", SCHEMA) == pa.string()


def test_check_filter_returns_the_parsed_expression() -> None:
    expr = check_filter("tenure >= 0 and region != 'test'", SCHEMA)
    assert isinstance(expr, pc.Expression)
    assert expr.equals(parse_filter("tenure >= 0 and region != 'test'"))
    assert isinstance(check_filter("null", SCHEMA), pc.Expression)  # null type is allowed


def test_parsing_is_cached_and_expressions_are_reused() -> None:
    assert parse_expression("tenure + 1") is parse_expression("tenure + 1")
    assert parse_filter("tenure > 1") is parse_filter("tenure > 1")


def test_expression_error_fields_str_pretty_and_pickle() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("tenure > $5")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.text, err.position) == ("tenure > $5", 9)
    assert err.message == "unexpected character '$'"
    assert str(err) == "unexpected character '$' at column 10 in 'tenure > $5'"
    assert "\n" not in str(err)
    assert err.pretty().splitlines() == [err.message, "  tenure > $5", "  " + " " * 9 + "^"]
    # once dask.distributed is imported, tblib pickles an exception's chain too: the
    # error's has no parser state in it (lark's exception is not its context)
    assert err.__context__ is None
    clone = pickle.loads(pickle.dumps(err.with_traceback(None)))
    assert (clone.message, clone.text, clone.position, str(clone)) == (
        err.message, err.text, err.position, str(err))
    no_position = ExpressionError("bad", "x", -1)
    assert str(no_position) == "bad in 'x'"


def test_pretty_points_at_the_right_line() -> None:
    text = "tenure > 1\n  and region ! 'x'"
    err = error_of(parse_filter, text)
    assert err.position == text.index("!")
    assert err.pretty().splitlines()[1:] == ["    and region ! 'x'", "  " + " " * 13 + "^"]


def test_non_string_input_is_a_readable_error() -> None:
    with pytest.raises(ExpressionError, match="got bool True"):
        parse_filter(True)  # type: ignore[arg-type]  # what YAML makes of `filter: yes`


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

FORBIDDEN_IN_MESSAGES = re.compile(
    r"lark|Traceback|Token|RPAR|LPAR|QIDENT|IDENT|COMP_OP|\$END|STRING|Unexpected|"
    r"ArrowNotImplemented|ArrowInvalid|no kernel|_lit\b|rule"
)


def error_of(fn: Callable[..., Any], *args: Any) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        fn(*args)
    err = info.value
    assert not FORBIDDEN_IN_MESSAGES.search(err.message), err.message
    assert "\n" not in str(err)
    return err


SYNTAX_ERRORS: list[tuple[str, str, int]] = [
    # text, message fragment, 0-based position
    ("tenure +", "unexpected end of expression; expected a value", 8),
    ("tenure +   ", "unexpected end of expression; expected a value", 8),
    ("log1p(", "unexpected end of expression; expected a value or ')'", 6),
    ("(tenure > 1", "expected ')' (the '(' at column 1 is not closed)", 11),
    ("tenure > (1 + (2)", "the '(' at column 10 is not closed", 17),
    ("tenure > 1 )", "unexpected ')'; expected the end of the expression", 11),
    ("tenure > $1", "unexpected character '$'", 9),
    ("tenure >> 1", "'>' is a comparison and must be followed by a value, not '>'", 8),
    ("tenure => 1", "must be followed by a value, not '>'; did you mean '>='?", 8),
    ("tenure = = 1", "did you mean '=='?", 9),
    ("tenure = * 1", "unexpected '*'; expected a value", 9),
    ("a < b < c", "'<' is a comparison and comparisons can't be chained", 6),
    ("a = b = c", "'=' is a comparison", 6),
    ("tenure tenure", "unexpected name 'tenure'; expected an operator", 7),
    ("tenure 5", "unexpected number 5", 7),
    ("x && y", "use 'and'", 2),
    ("x || y", "use 'or'", 2),
    ("!x", "use 'not'", 0),
    ("region = 'eu", "unterminated string", 9),
    ('region = "eu', "unterminated string", 9),
    ("`plan=basic = 1", "unterminated `quoted name`", 0),
    ("x is 3", "expected 'null' or 'not null'", 5),
    ("x in 1, 2", "expected '('", 5),
    ("x in ()", "unexpected ')'; expected a value", 6),
    ("x between 1", "expected 'and'", 11),
    ("x not", "expected 'in', 'between' or 'like'", 5),
    ("date > 1", "for a column named date write `date`", 5),
    ("in = 1", "'in' is a keyword; for a column with that name write `in`", 0),
    ("x = date 5", "followed by a quoted date", 9),
    ("date '2026-02-30'", "invalid date '2026-02-30'", 5),
    ("date '28.11.2026'", "write date 'YYYY-MM-DD'", 5),
    ("timestamp 'noon'", "invalid timestamp 'noon'", 10),
    (r"'\u12'", "bad escape", 1),
    ("x like y", "pattern after 'like' must be a quoted string", 7),
    ("x = null", "write 'is null'", 2),
    ("x <> NULL", "write 'is not null'", 2),
    ("x in (1, 'a')", "mix number and string", 2),
    ("", "empty expression", 0),
    ("   ", "empty expression", 0),
    ("tenure.total", "attribute access is not supported", 6),
    ("tenure[0]", "indexing is not supported", 6),
    ("x in ['a', 'b']", "write the list of 'in' in parentheses: in ('a', 'b')", 5),
    ("x not in [1]", "write the list of 'in' in parentheses", 9),
    ("x = 1; y = 2", "write one expression", 5),
    ("`x`(1)", "function names are not quoted", 3),
    ("1 +\n  * 2", "unexpected '*'; expected a value", 6),
]


@pytest.mark.parametrize(("text", "fragment", "position"), SYNTAX_ERRORS,
                         ids=[repr(c[0]) for c in SYNTAX_ERRORS])
def test_syntax_errors(text: str, fragment: str, position: int) -> None:
    err = error_of(parse_expression, text)
    assert fragment in err.message
    assert err.position == position, (err.position, str(err))
    assert err.text == text
    if position >= 0:
        assert f"at column {position + 1} in " in str(err)


def test_unknown_column_suggests_a_close_name() -> None:
    text = "tenure > 1 and regoin = 'eu'"
    err = error_of(expression_type, text, SCHEMA)
    assert err.message == "unknown column 'regoin'; did you mean 'region'?"
    assert err.position == text.index("regoin")
    err = error_of(check_filter, "Tenure > 1", SCHEMA)
    assert "did you mean 'tenure'?" in err.message
    # the suggestion is written the way it has to be typed
    err = error_of(check_filter, "`plan=basik` > 1", SCHEMA)
    assert "did you mean `plan=basic`?" in err.message
    schema = pa.schema([("b", pa.int8()), ("a", pa.int8()), ("a b", pa.int8())])
    err = error_of(check_filter, "zzz > 1", schema)
    assert err.message == ("unknown column 'zzz' (a text value goes in quotes: 'zzz'); the "
                           "columns are: b, a, `a b`")


def test_unknown_function_suggests_a_close_name() -> None:
    err = error_of(parse_expression, "1 + sqr(tenure)")
    assert err.message == "unknown function 'sqr'; did you mean 'sqrt'?"
    assert err.position == 4
    err = error_of(parse_expression, "LOG1P_(x)")
    assert "did you mean 'log1p'?" in err.message
    err = error_of(parse_expression, "frobnicate(x)")
    assert err.message.startswith("unknown function 'frobnicate'; known functions: abs, ")
    # all of them (the first dozen, then "...", left substr's user guessing)
    assert err.message.endswith(", upper, week, year") and "..." not in err.message
    err = error_of(parse_expression, "cast(x as int42)")
    assert err.message.startswith("unknown type 'int42'; did you mean")
    assert err.position == 10


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("log(1, 2)", "log() takes exactly 1 argument (got 2)"),
     ("sqrt()", "sqrt() takes exactly 1 argument (got 0)"),
     ("round(x, 1, 2)", "round() takes 1 or 2 arguments (got 3)"),
     ("pow(2)", "pow() takes exactly 2 arguments (got 1)"),
     ("if(a, b)", "if() takes exactly 3 arguments (got 2)"),
     ("least()", "least() takes at least 1 argument (got 0)"),
     ("coalesce()", "coalesce() takes at least 1 argument (got 0)"),
     ("cast(x)", "cast needs a target type: cast(x as float64)"),
     ("cast(x as int, y)", "cast() takes exactly 1 argument (got 2)"),
     ("abs(x as int)", "'as' is only allowed in cast(x as type)")],
)
def test_wrong_arity(text: str, fragment: str) -> None:
    err = error_of(parse_expression, text)
    assert fragment in err.message
    assert 0 <= err.position < len(text)


@pytest.mark.parametrize(
    ("text", "fragments", "at"),
    [("region + 1", ["cannot apply '+'", "string", "int64"], "+"),
     ("1 + region * 2", ["cannot apply '*'", "string and int64"], "*"),
     ("region / 2", ["cannot apply '/'", "string", "needs numbers"], "/"),
     ("flag ** 2", ["cannot apply '**'", "bool"], "**"),
     ("pow(region, 2)", ["pow()", "string"], "pow"),
     ("log1p(region) > 0", ["log1p()", "string"], "log1p"),
     ("upper(tenure) = 'A'", ["upper()", "int64"], "upper"),
     ("tenure and flag", ["'and' needs true/false values", "int64"], "and"),
     ("not region", ["'not' needs true/false values", "string"], "not"),
     ("d > region", ["cannot compare date32[day] and string"], ">"),
     # a text column of dates: cast it (not "write dates as date '...'", a literal's fix)
     ("days_between(region, d)", ["days_between() to string and date32[day]",
                                  "cast(region as date), or as timestamp"], "days_between"),
     ("d > region", ["cannot compare", "cast(region as date)"], ">"),
     ("tsz > timestamp '2026-01-01 00:00:00'", ["timestamp[us, tz=UTC]", "time zone"], ">"),
     ("ts between date '2026-01-01' and timestamp '2027-01-01 00:00:00Z'",
      ["timestamp[us, tz=UTC]", "time zone"], "between"),
     ("tsz in (timestamp '2026-01-01 00:00:00')", ["time zone"], "in"),
     ("tenure in ('a', 'b')", ["cannot look up int64 values in a list of string"], "in"),
     ("region like 'a%' and tenure like 'b'", ["'like'", "int64"], "like 'b'"),
     ("-region", ["unary '-'", "string"], "-"),
     ("cast(d as int8)", ["cannot cast date32[day] to int8"], "cast"),
     # a date without quotes (a ${ds} put in as it is) is a subtraction: said so
     ("region = 2026-11-28", ["cannot compare string and int64",
                              "2026-11-28 without quotes is a subtraction (1987): a date is "
                              "written date '2026-11-28', text '2026-11-28'"], "="),
     ("d <= 2026-1-05", ["cannot compare date32[day] and int64",
                         "2026-1-05 without quotes is a subtraction (2020)"], "<=")],
)
def test_type_errors_name_the_operation_and_types(text: str, fragments: list[str], at: str) -> None:
    parse_expression(text)  # syntactically fine: the problem is only visible with a schema
    err = error_of(expression_type, text, SCHEMA)
    for fragment in fragments:
        assert fragment in err.message, err.message
    assert err.position == text.index(at), str(err)


def test_dates_without_quotes_are_found() -> None:
    """What a derive computes silently (2026-11-28 is the number 1987) is found, as
    written; a date in quotes, a date literal and other subtractions are not."""
    assert unquoted_dates("2026-11-28") == [("2026-11-28", 1987)]
    assert unquoted_dates("if(tenure > 0, 2026 - 11 - 28, 0)") == [("2026 - 11 - 28", 1987)]
    for text in ["'2026-11-28'", "date '2026-11-28'", "tenure - 11 - 28", "2026 - 11",
                 "20 - 11 - 28", "2026.0 - 11 - 28"]:
        assert unquoted_dates(text) == [], text


def test_non_boolean_filter() -> None:
    err = error_of(check_filter, "tenure + 1", SCHEMA)
    assert err.message.startswith("filter must be true/false, got int64")
    err = error_of(check_filter, "region", SCHEMA)
    assert err.message == "filter must be true/false, got string"
    err = error_of(check_filter, "coalesce(total, 0)", SCHEMA)
    assert "got double" in err.message
    # certainly-not-boolean expressions are rejected without a schema as well
    for text, kind in [("tenure + 1", "number"), ("'eu'", "string"), ("-tenure", "number"),
                       ("log(total)", "number"), ("date '2026-01-01'", "date")]:
        err = error_of(parse_filter, text)
        assert err.message.startswith(f"filter must be true/false, got a {kind}"), err.message
    # a bare column may well be boolean: only the schema can tell
    assert isinstance(parse_filter("flag"), pc.Expression)


# ---------------------------------------------------------------------------------------------
# Injection safety
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["__import__('os').system('touch {marker}')",
     "__import__('os')",
     "eval('open(\"{marker}\", \"w\")')",
     "exec('import os')",
     "open('{marker}', 'w')",
     "tenure.__class__",
     "tenure.__class__.__bases__[0].__subclasses__()",
     "().__class__",
     "[x for x in (1,)]",
     "lambda: 1",
     "getattr(tenure, '__dict__')",
     "tenure; import os",
     "{{'a': 1}}",
     "f'{{1}}'"],
)
def test_injection_attempts_fail_and_execute_nothing(template: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = template.format(marker=marker)
    error_of(parse_expression, text)
    error_of(parse_filter, text)
    error_of(expression_type, text, SCHEMA)
    assert not marker.exists()


def test_module_never_evaluates_user_text() -> None:
    source = inspect.getsource(expressions)
    assert not re.search(r"(?<![\w.])(eval|exec|compile)\(", source)
    assert not re.search(r"^\s*(import ast|from ast )", source, flags=re.MULTILINE)
    assert not re.search(r"literal_eval|__import__|importlib", source)


# ---------------------------------------------------------------------------------------------
# Pushdown: row groups are pruned with Parquet statistics
# ---------------------------------------------------------------------------------------------

N_ROWS, GROUP = 1000, 100
PUSHDOWN_FILTERS = [
    "k >= 950",
    "k < 100",
    "k between 250 and 349",
    "k in (5, 950)",
    "k in (0, 999)",
    "k = 0 or k = 999",
    "not (k < 900)",
    "k > 5000",
    "k >= 300 and day >= date '2026-01-08'",
    "day < date '2026-01-03'",
    "at >= timestamp '2026-01-10 00:00:00Z'",
    "name >= 'n0990'",
]


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    k = list(range(N_ROWS))
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    table = pa.table({
        "k": pa.array(k, pa.int64()),
        "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i // 100) for i in k]),
        "at": pa.array([start + dt.timedelta(hours=i // 4) for i in k], pa.timestamp("us", "UTC")),
        "name": pa.array([f"n{i:04d}" for i in k]),
        "x": pa.array([float(i % 7) for i in k]),
    })
    path = tmp_path_factory.mktemp("pushdown") / "data.parquet"
    pq.write_table(table, path, row_group_size=GROUP)
    assert pq.ParquetFile(path).metadata.num_row_groups == N_ROWS // GROUP
    return path, table


@pytest.mark.parametrize("text", PUSHDOWN_FILTERS)
def test_row_groups_are_pruned_by_statistics(
    text: str, parquet_file: tuple[Path, pa.Table]
) -> None:
    path, table = parquet_file
    dataset = ds.dataset(path, format="parquet")
    expr = check_filter(text, dataset.schema)
    matching = kept_rows(text, table)
    # sorted columns: exactly the row groups holding a matching row can survive the statistics
    expected_groups = sorted({i // GROUP for i in matching})
    (fragment,) = list(dataset.get_fragments())
    kept = fragment.subset(expr)
    assert [rg.id for rg in kept.row_groups] == expected_groups
    assert len(fragment.split_by_row_group(expr)) == len(expected_groups)
    assert len(expected_groups) < N_ROWS // GROUP
    # and the scan still returns exactly the right rows
    scanned = dataset.to_table(filter=expr, columns=["k"]).column("k").to_pylist()
    assert sorted(scanned) == matching


def test_derived_value_through_a_parquet_scan(parquet_file: tuple[Path, pa.Table]) -> None:
    path, table = parquet_file
    dataset = ds.dataset(path, format="parquet")
    result = dataset.to_table(
        columns={"ratio": parse_expression("x / (k + 1)")}, filter=parse_filter("k < 10")
    )
    want = [table["x"][i].as_py() / (i + 1) for i in range(10)]
    assert result.column("ratio").to_pylist() == want


# ---------------------------------------------------------------------------------------------
# Property-based: random tables x random expression trees vs a row-by-row Python reference
# ---------------------------------------------------------------------------------------------

BASE_DAY = dt.date(2026, 1, 1)
P_SCHEMA = pa.schema([
    ("i", pa.int64()),
    ("größe", pa.int64()),
    ("net f", pa.float64()),
    ("s", pa.string()),
    ("d", pa.date32()),
])
INT_COLS = ["i", "größe"]
FLOAT_SPECIALS = [0.0, -0.0, 0.5, -1.5, 2.0, 3.25, NAN, INF, -INF]

row_strategy = st.fixed_dictionaries({
    "i": st.none() | st.integers(-4, 4),
    "größe": st.none() | st.integers(-4, 4),
    "net f": st.none() | st.just(NAN) | st.just(-0.0) | st.sampled_from(FLOAT_SPECIALS)
    | st.floats(-8, 8, allow_nan=False, allow_subnormal=False),
    "s": st.none() | st.sampled_from(["a", "b", "ab", "B", "", "a_b", "it's", "ba"]),
    "d": st.none() | st.integers(0, 12).map(lambda k: BASE_DAY + dt.timedelta(days=k)),
})
tables = st.lists(row_strategy, min_size=1, max_size=20)

# Expression trees are tuples: (kind, ...). Leaves:
int_leaf = st.sampled_from([("col", c) for c in INT_COLS]) | st.integers(-5, 5).map(
    lambda v: ("int", v))
num_leaf = (
    int_leaf
    | st.just(("col", "net f"))
    | st.sampled_from([(0.5, ".5"), (-1.5, "-1.5"), (2.0, "2.0"), (0.0, "0.0"), (0.001, "1e-3"),
                       (2.5, "2.5")]).map(lambda v: ("float", *v))
)


def _num_branches(children: st.SearchStrategy) -> st.SearchStrategy:
    return (
        st.tuples(st.just("bin"), st.sampled_from(["+", "-", "*", "/"]), children, children)
        | st.tuples(st.just("bin"), st.just("/"), children, children)
        | st.tuples(st.just("bin"), st.sampled_from(["-", "/"]), int_leaf, int_leaf)
        # mixed precedence, with and without the parentheses it needs
        | st.tuples(st.just("bin"), st.sampled_from(["+", "-"]), children,
                    st.tuples(st.just("bin"), st.sampled_from(["*", "/"]), children, children))
        | st.tuples(st.just("bin"), st.sampled_from(["*", "/"]),
                    st.tuples(st.just("bin"), st.sampled_from(["+", "-"]), children, children),
                    children)
        | st.tuples(st.just("neg"), children)
        | st.tuples(st.just("call"), st.sampled_from(["abs", "ABS"]), children)
        | st.tuples(st.just("call"), st.just("coalesce"), children, children)
        | st.tuples(st.just("bin"), st.just("%"), int_leaf, int_leaf)
        | st.tuples(st.just("pow"), num_leaf, st.integers(0, 3), st.sampled_from(["**", "^"]))
    )


num_expr = st.recursive(num_leaf, _num_branches, max_leaves=5)
str_expr = st.just(("col", "s")) | st.tuples(
    st.just("call"), st.sampled_from(["lower", "upper"]), st.just(("col", "s")))
str_lit = st.sampled_from(["a", "b", "ab", "", "it's", "B"]).map(lambda v: ("str", v))
date_lit = st.integers(-1, 13).map(lambda k: ("date", BASE_DAY + dt.timedelta(days=k)))
num_lit = st.integers(-5, 5).map(lambda v: ("int", v)) | st.sampled_from(
    [0.5, -1.5, 0.0, -0.0, 2.0, 3.25]).map(lambda v: ("float", v, repr(v)))
null = st.just(("null",))
any_column = st.sampled_from([("col", name) for name in P_SCHEMA.names])
CMP = ["=", "==", "!=", "<>", "<", "<=", ">", ">="]
LIKE_PATTERNS = ["a%", "%b", "_", "a_b", "%", "", "%'%", "B%"]

bool_leaf = (
    st.tuples(st.just("cmp"), st.sampled_from(CMP), num_expr, num_expr)
    | st.tuples(st.just("cmp"), st.sampled_from(CMP), str_expr, str_lit)
    | st.tuples(st.just("cmp"), st.sampled_from(CMP), st.just(("col", "d")), date_lit)
    | st.tuples(st.just("isnull"), any_column | num_expr | str_expr, st.booleans())
    | st.tuples(st.just("in"), num_leaf | num_expr, st.lists(num_lit | null, min_size=1,
                                                             max_size=4), st.booleans())
    | st.tuples(st.just("in"), st.just(("col", "net f")), st.lists(num_lit, min_size=1,
                                                                   max_size=3), st.booleans())
    | st.tuples(st.just("in"), str_expr, st.lists(str_lit | null, min_size=1, max_size=3),
                st.booleans())
    | st.tuples(st.just("in"), num_expr, st.lists(num_expr, min_size=1, max_size=3),
                st.booleans())
    | st.tuples(st.just("between"), num_expr, num_expr, num_expr, st.booleans())
    | st.tuples(st.just("between"), st.just(("col", "d")), date_lit, date_lit, st.booleans())
    | st.tuples(st.just("like"), st.just(("col", "s")), st.sampled_from(LIKE_PATTERNS),
                st.booleans())
    | st.tuples(st.just("bool"), st.booleans())
)
bool_expr = st.recursive(
    bool_leaf,
    lambda ch: st.tuples(st.sampled_from(["and", "or"]), ch, ch) | st.tuples(st.just("not"), ch),
    max_leaves=6,
)
styles = st.fixed_dictionaries({
    "parens": st.booleans(),
    "case": st.sampled_from([str.lower, str.upper, str.title]),
})

# precedence levels, loosest first; an operand must be at least the level its slot needs
OR, AND, NOT, PRED, SUM, PROD, UNARY, POW, ATOM = range(1, 10)


def render(node: tuple, style: dict[str, Any]) -> str:
    """Write a tree as expression text, with minimal or with full parentheses."""
    return _render(node, style)[0]


def _render(node: tuple, style: dict[str, Any]) -> tuple[str, int]:
    kw = style["case"]

    def sub(child: tuple, need: int) -> str:
        text, level = _render(child, style)
        if level < need or (style["parens"] and level < ATOM):
            return f"({text})"
        return text

    kind = node[0]
    if kind == "col":
        name = node[1]
        return (name if re.fullmatch(r"[^\W\d]\w*", name) else f"`{name}`"), ATOM
    if kind == "int":
        return str(node[1]), (ATOM if node[1] >= 0 else UNARY)
    if kind == "float":
        return node[2], (UNARY if node[2].startswith("-") else ATOM)
    if kind == "str":
        return "'" + node[1].replace("'", "''") + "'", ATOM
    if kind == "date":
        return f"{kw('date')} '{node[1].isoformat()}'", ATOM
    if kind == "null":
        return kw("null"), ATOM
    if kind == "bool":
        return kw("true" if node[1] else "false"), ATOM
    if kind == "bin":
        level = SUM if node[1] in "+-" else PROD
        return f"{sub(node[2], level)} {node[1]} {sub(node[3], level + 1)}", level
    if kind == "neg":
        return f"- {sub(node[1], UNARY)}", UNARY
    if kind == "pow":
        return f"{sub(node[1], ATOM)} {node[3]} {node[2]}", POW
    if kind == "call":
        return f"{node[1]}({', '.join(render(arg, style) for arg in node[2:])})", ATOM
    if kind == "try_cast":
        return f"try_cast({render(node[1], style)} {kw('as')} {node[2]})", ATOM
    if kind == "cmp":
        return f"{sub(node[2], SUM)} {node[1]} {sub(node[3], SUM)}", PRED
    if kind == "isnull":
        return f"{sub(node[1], SUM)} {kw('is not null' if node[2] else 'is null')}", PRED
    if kind == "in":
        items = ", ".join(render(item, style) for item in node[2])
        return f"{sub(node[1], SUM)} {kw('not in' if node[3] else 'in')} ({items})", PRED
    if kind == "between":
        word = kw("not between" if node[4] else "between")
        return (f"{sub(node[1], SUM)} {word} {sub(node[2], SUM)} {kw('and')} "
                f"{sub(node[3], SUM)}", PRED)
    if kind == "like":
        pattern = node[2].replace("'", "''")
        return f"{sub(node[1], SUM)} {kw('not like' if node[3] else 'like')} '{pattern}'", PRED
    if kind == "not":
        return f"{kw('not')} {sub(node[1], NOT)}", NOT
    if kind in ("and", "or"):
        level = AND if kind == "and" else OR
        return f"{sub(node[1], level)} {kw(kind)} {sub(node[2], level + 1)}", level
    raise AssertionError(kind)


def reference(node: tuple, row: dict[str, Any]) -> Any:
    """Evaluate a tree on one row in plain Python with SQL three-valued logic."""
    kind = node[0]
    if kind == "col":
        return row[node[1]]
    if kind in ("int", "float", "str", "date", "bool"):
        return node[1]
    if kind == "null":
        return None
    if kind == "not":
        return not3(reference(node[1], row))
    if kind == "and":
        return and3(reference(node[1], row), reference(node[2], row))
    if kind == "or":
        return or3(reference(node[1], row), reference(node[2], row))
    if kind == "isnull":
        value = reference(node[1], row)
        return (value is not None) if node[2] else (value is None)
    if kind == "in":
        result = in3(reference(node[1], row), [reference(item, row) for item in node[2]])
        return not3(result) if node[3] else result
    if kind == "between":
        value, low, high = (reference(n, row) for n in node[1:4])
        result = and3(None if value is None or low is None else value >= low,
                      None if value is None or high is None else value <= high)
        return not3(result) if node[4] else result
    if kind == "like":
        value = reference(node[1], row)
        if value is None:
            return None
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in node[2])
        matched = re.fullmatch(regex, value, flags=re.DOTALL) is not None
        return not matched if node[3] else matched
    if kind == "call" and node[1] == "coalesce":
        first = reference(node[2], row)
        return first if first is not None else reference(node[3], row)
    args = [reference(arg, row) for arg in node[2:]] if kind in ("cmp", "bin") else None
    if kind == "cmp":
        a, b = args  # type: ignore[misc]
        if a is None or b is None:
            return None
        ops = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
               "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
        return ops[node[1]](a, b)
    if kind == "bin":
        a, b = args  # type: ignore[misc]
        if a is None or b is None:
            return None
        if node[1] == "/":
            return ieee(operator.truediv)(a, b)
        if node[1] == "%":
            return None if b == 0 else a % b
        return {"+": operator.add, "-": operator.sub, "*": operator.mul}[node[1]](a, b)
    if kind == "neg":
        value = reference(node[1], row)
        return None if value is None else -value
    if kind == "pow":
        base = reference(node[1], row)
        return None if base is None else ieee(np.power)(base, node[2])
    if kind == "call":
        value = reference(node[2], row)
        if value is None:
            return None
        return {"abs": abs, "lower": str.lower, "upper": str.upper}[node[1].lower()](value)
    raise AssertionError(kind)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=P_SCHEMA)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY_SETTINGS
@given(rows=tables, tree=bool_expr, style=styles)
def test_random_filters_match_python_reference(
    rows: list[dict[str, Any]], tree: tuple, style: dict[str, Any]
) -> None:
    text = render(tree, style)
    table = _table(rows)
    expected = [reference(tree, row) for row in rows]
    # the filter keeps exactly the rows where the predicate is true (not false, not null)
    assert kept_rows(text, table) == [i for i, v in enumerate(expected) if v is True], text
    # and the predicate's three-valued value matches row by row
    assert evaluate(text, table) == expected, text
    assert check_filter(text, table.schema).equals(parse_filter(text, table.schema))
    assert pa.types.is_boolean(expression_type(text, table.schema))
    assert set(referenced_columns(text)) <= set(P_SCHEMA.names)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rows=tables, tree=num_expr, style=styles)
def test_random_value_expressions_match_python_reference(
    rows: list[dict[str, Any]], tree: tuple, style: dict[str, Any]
) -> None:
    text = render(tree, style)
    table = _table(rows)
    # with the rows' schema, as every step compiles it (without one, coalesce(i, .5) is
    # Arrow's float32)
    result = ds.dataset(table).to_table(columns={"r": parse_expression(text, table.schema)})
    assert_same(result.column("r").to_pylist(), [reference(tree, row) for row in rows])
    assert expression_type(text, table.schema) == result.schema.field("r").type, text


def test_date_and_time_parts_and_differences() -> None:
    """The parts of dates and times, and SQL's datediff: the boundaries from a to b."""
    times = [dt.datetime(2026, 11, 1, 23, 30, 5), dt.datetime(2026, 1, 1, 0, 0, 0), None]
    days = [dt.date(2026, 11, 2), dt.date(2024, 2, 29), None]
    table = pa.table({"ts": pa.array(times, pa.timestamp("s")), "d": pa.array(days)})

    def values(text: str) -> list:
        assert expression_type(text, table.schema) == pa.int64(), text
        return ds.dataset(table).to_table(columns={"x": parse_expression(text)})["x"].to_pylist()

    end = "timestamp '2026-11-28 00:00:00'"
    assert values(f"days_between(ts, {end})") == [27, 331, None]
    assert values(f"hours_between(ts, {end})") == [26 * 24 + 1, 331 * 24, None]
    assert values("minutes_between(ts, ts)") == [0, 0, None]
    assert values(f"seconds_between({end}, ts)") == [
        int((t - dt.datetime(2026, 11, 28)).total_seconds()) if t else None for t in times]
    assert values("days_between(d, date '2026-11-28')") == [26, 1003, None]
    assert values("day_of_week(d)") == [d.weekday() if d else None for d in days]
    assert values("dayofyear(d)") == [d.timetuple().tm_yday if d else None for d in days]
    assert values("week(ts)") == [t.isocalendar()[1] if t else None for t in times]
    assert values("quarter(d)") == [4, 1, None]
    assert values("hour(ts) * 60 + minute(ts)") == [23 * 60 + 30, 0, None]
    # any units, a date as its midnight, a zoned time by its UTC clock
    assert values("days_between(d, ts)") == [(t.date() - d).days if t and d else None
                                              for d, t in zip(days, times)]
    assert values("days_between(cast(ts as timestamp), ts)") == [0, 0, None]
    zoned = pa.table({"z": pa.array([dt.datetime(2026, 11, 27, 23, 0)],
                                    pa.timestamp("ms", tz="UTC"))})
    assert ds.dataset(zoned).to_table(columns={"x": parse_expression(
        "hours_between(z, timestamp '2026-11-28 01:00:00')")})["x"].to_pylist() == [2]
    with pytest.raises(ExpressionError, match="cannot apply"):
        expression_type("days_between(d, 3)", table.schema)


def test_a_uint64_is_compared_with_literals_past_int64() -> None:
    """An integer literal of a uint64's upper half (2**63 .. 2**64 - 1) is compared
    exactly, as any integer literal: `u64 = 18446744073709551615` was refused ("does not
    fit in int64; write it as a float"), and a float is not that number; in an `in` list
    without the rows' schema it stopped the plan with pyarrow's OverflowError."""
    table = pa.table({"u": pa.array([0, 2**63, 2**64 - 1, None], pa.uint64()),
                      "i": pa.array([1, -1, 5, None], pa.int64()),
                      "f": [1.0, 2.0**64, 0.0, None]})
    cases = {
        "u = 18446744073709551615": [False, False, True, None],
        "u > 9223372036854775807": [False, True, True, None],
        "u in (18446744073709551615, -1)": [False, False, True, None],
        "u between 9223372036854775808 and 18446744073709551615": [False, True, True, None],
        "i in (1, 18446744073709551615)": [True, False, False, None],
        "i < 18446744073709551615": [True, True, True, None],
        "f in (18446744073709551615)": [False, True, False, None],  # in float64
    }
    for text, want in cases.items():
        parse_expression(text)  # as a step's parameters are checked, without the schema
        assert derived(table, text).to_pylist() == want, text
        kept = ds.dataset(table).to_table(filter=parse_filter(text, table.schema))
        assert kept.num_rows == sum(bool(w) for w in want), text
    assert derived(table, "18446744073709551615").type == pa.uint64()
    with pytest.raises(ExpressionError, match="does not fit in int64 or uint64"):
        parse_expression("u = 18446744073709551616")


def test_values_of_times_of_several_units_are_the_times_they_were() -> None:
    """coalesce / if / least of a nanosecond or millisecond column and a literal (its
    microseconds): Arrow's coalesce took the literal's count of microseconds as
    nanoseconds (2026-03-29 became 1970-01-21), or as milliseconds ('date value out of
    range'), and if_else of us and ms truncated to ms. They are in the finest unit."""
    day = dt.datetime(2026, 1, 1)
    table = pa.table({"n": pa.array([None, day], pa.timestamp("ns")),
                      "m": pa.array([None, day], pa.timestamp("ms"))})
    cases = {
        "coalesce(n, timestamp '2026-03-29 00:00:00')": (
            "ns", [pd.Timestamp(2026, 3, 29), pd.Timestamp(day)]),
        "coalesce(m, timestamp '2026-03-29 00:00:00.123456')": (
            "us", [dt.datetime(2026, 3, 29, 0, 0, 0, 123456), day]),
        "if(m is null, timestamp '2026-03-29 00:00:00.000001', m)": (
            "us", [dt.datetime(2026, 3, 29, 0, 0, 0, 1), day]),
        "least(m, timestamp '2026-03-29 00:00:00.5')": (
            "us", [dt.datetime(2026, 3, 29, 0, 0, 0, 500000), day]),
    }
    for text, (unit, want) in cases.items():
        got = derived(table, text)
        assert got.type == pa.timestamp(unit) and got.to_pylist() == want, text


def test_text_literals_beside_dates_and_times_are_what_they_write(
        parquet_file: tuple[Path, pa.Table]) -> None:
    """``d >= '2026-06-15'``, as Spark SQL, DuckDB and PostgreSQL take it: a text literal
    compared with a date or a timestamp (in a comparison, ``between``, ``in``) is the
    date or time it writes; beside zoned times, a time without a zone is their zone's
    clock. The same rows as the typed literal, and a Parquet scan still prunes by it."""
    same = {
        "d >= '2026-06-15'": "d >= date '2026-06-15'",
        "'2026-06-15' < d": "date '2026-06-15' < d",
        "d between '2026-01-01' and '2026-12-31'":
            "d between date '2026-01-01' and date '2026-12-31'",
        "d not in ('2026-01-01', '2027-02-03')":
            "d not in (date '2026-01-01', date '2027-02-03')",
        "d in ('2026-01-01', d)": "d in (date '2026-01-01', d)",
        "ts < '2026-06-15 12:30:00'": "ts < timestamp '2026-06-15 12:30:00'",
        "ts >= '2026-06-15'": "ts >= timestamp '2026-06-15 00:00:00'",
        "cast(ts as date) = '2026-11-28'": "cast(ts as date) = date '2026-11-28'",
        "tsz >= '2026-06-15T14:30:00+02:00'": "tsz >= timestamp '2026-06-15T14:30:00+02:00'",
        "tsz < '2026-01-01 08:00:00'": "tsz < timestamp '2026-01-01 08:00:00Z'",
        "region = 'eu'": "region = 'eu'",  # text beside text stays text
    }
    rows = TABLE.append_column("_row", pa.array(range(TABLE.num_rows)))
    for text, typed in same.items():
        want = ds.dataset(rows).to_table(filter=check_filter(typed, SCHEMA))["_row"]
        got = ds.dataset(rows).to_table(filter=check_filter(text, SCHEMA))["_row"]
        assert got.to_pylist() == want.to_pylist(), text
        assert 0 < len(got) < TABLE.num_rows, text
        assert expression_type(text, SCHEMA) == pa.bool_()
    # an argument of the time functions and nullif, a value beside dates or times
    values = {
        "days_between(d, '2026-06-15')": "days_between(d, date '2026-06-15')",
        "hours_between('2026-06-15 12:00:00', ts)":
            "hours_between(timestamp '2026-06-15 12:00:00', ts)",
        "coalesce(d, '2026-01-01')": "coalesce(d, date '2026-01-01')",
        "if(tenure > 2, '2026-01-01', d)": "if(tenure > 2, date '2026-01-01', d)",
        "greatest(ts, '2026-06-15')": "greatest(ts, timestamp '2026-06-15 00:00:00')",
        "least(tsz, '2026-06-15T12:00:00Z')": "least(tsz, timestamp '2026-06-15T12:00:00Z')",
        "nullif(d, '2026-01-01')": "nullif(d, date '2026-01-01')",
    }
    for text, typed in values.items():
        assert derived(TABLE, text).equals(derived(TABLE, typed)), text
        assert expression_type(text, SCHEMA) == expression_type(typed, SCHEMA), text
    assert "'x' meets dates" in error_of(expression_type, "coalesce(d, 'x')", SCHEMA).message
    # a zone's clock: 01:30 in Paris is 00:30 UTC in winter
    instants = [dt.datetime(2026, 1, 1, 0, 29, tzinfo=UTC), dt.datetime(2026, 1, 1, 0, 30,
                                                                        tzinfo=UTC)]
    paris = pa.table({"p": pa.array(instants, pa.timestamp("ns", tz="Europe/Paris"))})
    assert derived(paris, "p >= '2026-01-01 01:30:00'").to_pylist() == [False, True]
    # said where the literal is: not a date, a time of day beside dates, a clock change
    for text, fragment in [("d = '2026-13-01'", "invalid date '2026-13-01'"),
                           ("d > 'soon'", "'soon' meets dates here and is no date"),
                           ("d = '2026-01-01 10:00'", "cast the dates as timestamp"),
                           ("ts in ('2026-01-01', 'x')", "invalid timestamp 'x'")]:
        err = error_of(check_filter, text, SCHEMA)
        assert fragment in err.message, err.message
        assert err.position == text.rindex("'", 0, len(text) - 2 if text.endswith(")")
                                           else len(text) - 1), str(err)
    for text, fragment in [("p >= '2026-03-29 02:30'", "no time in zone 'Europe/Paris'"),
                           ("p >= '2026-10-25 02:30'", "twice in zone 'Europe/Paris'")]:
        err = error_of(check_filter, text, paris.schema)
        assert fragment in err.message and "+02:00" in err.message, err.message
        assert err.position == 5, str(err)
    # row groups pruned by a text literal's date and time as by the typed ones
    path, _ = parquet_file
    (fragment,) = list(ds.dataset(path, format="parquet").get_fragments())
    for text, typed in [("day < '2026-01-03'", "day < date '2026-01-03'"),
                        ("at >= '2026-01-10 00:00:00Z'",
                         "at >= timestamp '2026-01-10 00:00:00Z'")]:
        kept = fragment.subset(check_filter(text, fragment.physical_schema)).row_groups
        want = fragment.subset(check_filter(typed, fragment.physical_schema)).row_groups
        assert [rg.id for rg in kept] == [rg.id for rg in want]
        assert 0 < len(kept) < N_ROWS // GROUP


def test_times_of_two_zones_compare_as_the_instants_they_are() -> None:
    """A column of one zone beside a literal (UTC) or a column of another: each value is
    an instant, and they compare as such. Arrow refused any two zones, so a Paris column
    had no literal to compare with (the differential fuzz's `tz < timestamp '...Z'`)."""
    instants = [dt.datetime(2026, 3, 28, 23, 30, tzinfo=UTC), None,
                dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)]
    table = pa.table({"paris": pa.array(instants, pa.timestamp("ns", tz="Europe/Paris")),
                      "tokyo": pa.array(instants, pa.timestamp("ms", tz="Asia/Tokyo"))})
    cases = {
        "paris < timestamp '2026-03-29 00:00:00Z'": [True, None, False],
        "paris = timestamp '2026-03-29 00:30:00+01:00'": [True, None, False],
        "timestamp '2026-03-28 23:30:00Z' >= paris": [True, None, False],
        "paris between timestamp '2026-03-29 00:00:00Z' and timestamp "
        "'2026-03-29 02:00:00+01:00'": [False, None, True],
        "paris in (timestamp '2026-03-29 03:00:00+02:00')": [False, None, True],
        "paris = tokyo": [True, None, True],
    }
    for text, want in cases.items():
        assert derived(table, text).to_pylist() == want, text
        kept = ds.dataset(table).to_table(filter=parse_filter(text, table.schema))
        assert kept.num_rows == sum(bool(w) for w in want), text
    # values of one type: the first's zone, each the instant it was; least and greatest
    # of zoned times at all (Arrow's element-wise min and max have no kernel for them)
    noon = dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    values = {
        "if(paris is null, timestamp '2026-03-29 00:00:00Z', tokyo)": [instants[0], noon,
                                                                       instants[2]],
        "coalesce(paris, timestamp '2026-03-29 00:00:00Z')": [instants[0], noon,
                                                              instants[2]],
        "least(paris, timestamp '2026-03-29 00:00:00Z')": [instants[0], noon, noon],
        "greatest(paris, tokyo, null)": [instants[0], None, instants[2]],
    }
    for text, want in values.items():
        got = derived(table, text).to_pylist()
        assert got == [w and pd.Timestamp(w) for w in want], text  # instants, any zone


# ---------------------------------------------------------------------------------------------
# Literals Arrow would narrow, text in dictionaries (found by fuzzing against DuckDB)
# ---------------------------------------------------------------------------------------------

NARROW = pa.table({
    "i32": pa.array([1, 16_777_217, 20_000_000, None], pa.int32()),
    "f32": pa.array([1.5, 89.0, -2.5, None], pa.float32()),
    "i64": pa.array([2**60 + 1, 3, -7, None], pa.int64()),
    "city": pa.array(["Ab", "cD", None, "Ab"]).dictionary_encode(),
})


def test_a_float_literal_is_not_narrowed_to_the_columns_type() -> None:
    """Arrow casts a literal it can hold exactly to the other operand's type: an int32
    column times 1.5 ran in float32 and raised past 2**24 (amounts in cents times 0.01).
    Arithmetic with a float literal works in float64; a comparison with a whole number
    compares as an integer, with any other in float64."""
    assert evaluate("i32 * 1.5", NARROW) == [1.5, 25_165_825.5, 30_000_000.0, None]
    assert evaluate("i32 + 0.5", NARROW) == [1.5, 16_777_217.5, 20_000_000.5, None]
    assert evaluate("i32 % 2.5", NARROW) == [1.0, 16_777_217 % 2.5, 0.0, None]
    assert expression_type("i32 * 1.5", NARROW.schema) == pa.float64()
    assert expression_type("f32 * 2.0", NARROW.schema) == pa.float64()
    assert expression_type("i32 * 2", NARROW.schema) == pa.int32()  # integers keep theirs
    assert kept_rows("i32 = 16777217.0", NARROW) == [1]
    assert kept_rows("i32 > 16777216.5", NARROW) == [1, 2]
    assert kept_rows("20000000.0 <= i32", NARROW) == [2]
    assert kept_rows("f32 > 1.5", NARROW) == [1]
    with pytest.raises(ExpressionError, match=r"cannot apply '\*' to .*string.*needs numbers"):
        expression_type("city * 1.5", NARROW.schema)


def test_math_functions_work_in_float64() -> None:
    """log of an int64 past 2**53 raised (Arrow's own conversion is checked), exp of a
    float32 overflowed at 89 (it stayed in float32)."""
    logs = evaluate("log(i64)", NARROW)
    assert logs[0] == pytest.approx(math.log(2**60)) and logs[3] is None
    assert evaluate("exp(f32)", NARROW)[1] == pytest.approx(math.exp(89.0))
    assert expression_type("sqrt(i32)", NARROW.schema) == pa.float64()
    with pytest.raises(ExpressionError, match="cannot apply log\\(\\) to .*needs numbers"):
        expression_type("log(city)", NARROW.schema)


def test_text_functions_take_dictionary_columns() -> None:
    """A hive partition's column and a dictionary-encoded one are text: lower, upper,
    length and like take them (they were refused as the file planned)."""
    assert evaluate("lower(city)", NARROW) == ["ab", "cd", None, "ab"]
    assert evaluate("upper(city)", NARROW) == ["AB", "CD", None, "AB"]
    assert evaluate("length(city)", NARROW) == [2, 2, None, 2]
    assert kept_rows("city like 'A%'", NARROW) == [0, 3]
    assert kept_rows("city not like 'A%'", NARROW) == [1]
    with pytest.raises(ExpressionError, match="cannot apply lower\\(\\) to int32 .*needs text"):
        expression_type("lower(i32)", NARROW.schema)
    with pytest.raises(ExpressionError, match="cannot apply 'like' to int64 .*needs text"):
        expression_type("i64 like '1%'", NARROW.schema)


MONEY = pa.table({
    "amount": pa.array([decimal.Decimal("1.25"), decimal.Decimal("100.00"),
                        decimal.Decimal("-3.50"), None], pa.decimal128(10, 2)),
    "u64": pa.array([2**63, 5, 0, None], pa.uint64()),
    "id": pa.array([2**60 + 1, 3, -7, None], pa.int64()),
    "rate": pa.array([0.5, 2.5, 1.0, None]),
})


def on(text: str) -> list[Any]:
    """``text`` over MONEY, compiled with its schema as the steps compile it."""
    return ds.dataset(MONEY).to_table(
        columns={"r": parse_expression(text, MONEY.schema)}).column("r").to_pylist()


def test_integer_literals_meet_decimal_and_unsigned_columns_in_their_kind() -> None:
    """amount > 100 on a decimal column asked Arrow for a precision of 21 and was refused
    as the file planned; a uint64 past 2**63 met an int64 literal and raised. With the
    rows' schema the literal takes the column's kind."""
    assert on("amount > 100") == [False, False, False, None]
    assert on("amount >= 100") == [False, True, False, None]
    assert on("1 < amount") == [True, True, False, None]
    assert on("amount between -4 and 2") == [True, False, True, None]
    assert on("amount in (100, 7, 123456789012)") == [False, True, False, None]
    assert on("amount + 1") == [decimal.Decimal("2.25"), decimal.Decimal("101.00"),
                                decimal.Decimal("-2.50"), None]
    assert expression_type("amount * 2", MONEY.schema) == pa.decimal128(12, 2)
    assert on("u64 > 1") == [True, True, False, None]
    assert on("u64 = 5") == [False, True, False, None]
    assert on("u64 in (0, 5)") == [False, True, True, None]
    assert on("u64 + 0") == [2**63, 5, 0, None]
    # an integer column beside a float one: both in float64 (Arrow's conversion raised
    # past 2**53)
    assert on("id + rate") == [float(2**60 + 1) + 0.5, 5.5, -6.0, None]
    assert on("id > rate") == [True, True, False, None]
    with_filter = MONEY.filter(parse_filter("amount >= 100", MONEY.schema))
    assert with_filter.column("amount").to_pylist() == [decimal.Decimal("100.00")]


def test_a_pushed_filter_on_a_decimal_column_reads_the_rows_it_keeps(tmp_path: Path) -> None:
    pq.write_table(MONEY, tmp_path / "money.parquet", row_group_size=2)
    from operators.io.parquet import ReadParquet

    read = ReadParquet(path=str(tmp_path / "money.parquet"), filter="amount > 1")
    rows = pa.concat_tables(read.read(p) for p in read.partitions())
    assert rows.column("amount").to_pylist() == [decimal.Decimal("1.25"),
                                                 decimal.Decimal("100.00")]


def test_rounding_a_decimal_past_its_precision_is_an_error_not_zero() -> None:
    """Arrow rounds within the column's precision: floor(-99999999.99) of a
    decimal(10, 2) came back as 0.00, silently. The column gets a digit more to round in
    and the result goes back to its type by a checked cast: the value that does not fit
    is an error; the others keep the column's type (if(c, round(d), d) is one type)."""
    D = decimal.Decimal
    edge = pa.table({"d": pa.array([D("99999999.99"), D("-99999999.99"), D("1.25"), None],
                                   pa.decimal128(10, 2)),
                     "c": [True, False, True, None]})

    def on(text: str, rows: pa.Table = edge) -> list[Any]:
        return ds.dataset(rows).to_table(
            columns={"r": parse_expression(text, rows.schema)}).column("r").to_pylist()

    inside = edge.filter(pa.array([False, False, True, True]))
    assert on("floor(d)", inside) == [D("1.00"), None]
    assert on("ceil(d)", inside) == [D("2.00"), None]
    assert on("round(d, 1)", inside) == [D("1.20"), None]
    assert on("if(c, round(d), d)", inside) == [D("1.00"), None]
    assert expression_type("floor(d)", edge.schema) == pa.decimal128(10, 2)
    assert on("floor(d)", edge.slice(0, 1)) == [D("99999999.00")]
    for text in ("floor(d)", "ceil(d)", "round(d)"):  # one of the edge values overflows
        with pytest.raises(pa.ArrowInvalid, match="does not fit in precision"):
            on(text, edge.slice(0, 2))


def test_a_whole_float_literal_compares_with_float_and_decimal_columns() -> None:
    """A whole float literal compared as an int64 one everywhere: a float32 column met it
    in float32 (f32 = 16777217.0 raised, and was refused as the file planned), a decimal
    column asked Arrow for a precision of 21 (amount > 100.0 was refused), and another
    float literal narrowed it to float32. It is an integer of the column's kind only
    beside an integer or decimal column; elsewhere both sides are float64."""
    wide = pa.table({"f32": pa.array([16777216.0, 1.0, None], pa.float32())})
    assert kept_rows("f32 = 16777217.0", wide) == []
    assert kept_rows("f32 < 16777217.0", wide) == [0, 1]
    assert expression_type("f32 = 16777217.0", wide.schema) == pa.bool_()
    assert kept_rows("2147483648.0 != 255.0", wide) == [0, 1, 2]

    assert on("amount > 100.0") == [False, False, False, None]
    assert on("100.0 <= amount") == [False, True, False, None]
    assert on("amount != 1.5") == [True, True, True, None]
    assert on("u64 >= 0.0") == [True, True, True, None]
    assert str(parse_filter("id > 3.0", MONEY.schema)) == "(id > 3)"  # statistics apply


def test_a_float_list_holding_zero_looks_up_an_integer_past_float32() -> None:
    """'in' with 0.0 compares the operand with a zero of the list's type: a float64 zero,
    which Arrow narrows to float32, raised for an int64 past 2**24."""
    assert on("id in (0.0)") == [False, False, False, None]
    assert on("id * 1 not in (0.0, -0.0)") == [True, True, True, None]


def test_small_unsigned_arithmetic_widens_as_arrow_does() -> None:
    """An integer literal takes an unsigned column's type in comparisons (exact there),
    and in arithmetic only a uint64's: u8 + 100 is Arrow's int16 (355 at 255), not a
    uint8 that wraps to 99."""
    rows = pa.table({"u8": pa.array([255, 0, None], pa.uint8())})
    got = ds.dataset(rows).to_table(columns={
        "plus": parse_expression("u8 + 100", rows.schema),
        "minus": parse_expression("u8 - 1", rows.schema),
        "cmp": parse_expression("u8 > 1", rows.schema)})
    assert got.column("plus").to_pylist() == [355, 100, None]
    assert got.column("minus").to_pylist() == [254, -1, None]
    assert got.column("cmp").to_pylist() == [True, False, None]


def test_a_float_list_looks_a_decimal_column_up_in_float64() -> None:
    """Arrow cast a float 'in' list onto a decimal column with truncation: 0.0 was in
    (0.5)."""
    D = decimal.Decimal
    rows = pa.table({"d": pa.array([D("0.0"), D("0.5"), D("-2.5"), None],
                                   pa.decimal128(5, 1))})

    def on(text: str) -> list[Any]:
        return ds.dataset(rows).to_table(
            columns={"r": parse_expression(text, rows.schema)}).column("r").to_pylist()

    assert on("d in (0.5)") == [False, True, False, None]
    assert on("d in (0.5, -2.5)") == [False, True, True, None]
    assert on("d not in (0.5)") == [True, False, True, None]
    assert on("d in (1, 0)") == [True, False, False, None]


# ---------------------------------------------------------------------------------------------
# Sub-expressions typed as they compile (found against DuckDB)
# ---------------------------------------------------------------------------------------------


def derived(table: pa.Table, text: str) -> pa.Array:
    """``text`` as a derive step computes it on ``table``; its planned type is the one made."""
    step = lookup("derive")(lookup("derive").Params(columns={"r": text}))
    made = step.transform(table, np).column("r")
    assert step.output_schema(table.schema).field("r").type == made.type, text
    return made


def over(table: pa.Table, text: str, parse: Callable[..., pc.Expression] = parse_expression
         ) -> list[Any]:
    """``text`` over ``table``, compiled with its schema as the steps compile it."""
    return ds.dataset(table).to_table(
        columns={"r": parse(text, table.schema)}).column("r").to_pylist()


def kept_by_filter_step(table: pa.Table, where: str) -> pa.Table:
    return lookup("filter")(lookup("filter").Params(where=where)).transform(table, np)


CHOICES = pa.table({
    "c": pa.array([True, False, None, False], pa.bool_()),
    "d5": pa.array([D("999.99"), D("1.5"), D("-2.25"), None], pa.decimal128(5, 2)),
    "d6": pa.array([D("0.125"), D("-999.999"), D("3"), D("1")], pa.decimal128(6, 3)),
    "i32": pa.array([1, None, -7, 2], pa.int32()),
    "i64": pa.array([2**60 + 1, -3, None, 9], pa.int64()),
    "u64": pa.array([2**64 - 1, None, 0, 2**63], pa.uint64()),
    "f64": pa.array([0.5, 1.5, None, -2.0], pa.float64()),
    "ts": pa.array([dt.datetime(2026, 1, 1)] * 4, pa.timestamp("us")),
    "tsz": pa.array([dt.datetime(2026, 1, 1, tzinfo=UTC)] * 4, pa.timestamp("us", tz="UTC")),
})


def test_values_of_one_function_are_given_one_type() -> None:
    """if(c, d5, d6) of a decimal(5, 2) and a decimal(6, 3) planned and then failed as the
    rows were read (Arrow's if_else wants one type); least of two decimal types, and a
    decimal beside an integer, were refused; an int64 beside a float64, a uint64 beside a
    signed integer raised past 2**53 / 2**63. The values now meet in one type that holds
    each: the most digits before and after the point, float64, decimal(20, 0)."""
    assert derived(CHOICES, "if(c, d5, d6)").to_pylist() == [D("999.99"), D("-999.999"),
                                                            None, D("1")]
    assert derived(CHOICES, "if(c, d5, d6)").type == pa.decimal128(6, 3)
    assert derived(CHOICES, "coalesce(d5, d6)").to_pylist() == [D("999.99"), D("1.5"),
                                                               D("-2.25"), D("1")]
    assert derived(CHOICES, "least(d5, d6)").to_pylist() == [D("0.125"), D("-999.999"),
                                                            D("-2.25"), D("1")]
    assert derived(CHOICES, "greatest(d5, i32)").to_pylist() == [D("999.99"), D("1.5"),
                                                                D("-2.25"), D("2")]
    assert derived(CHOICES, "greatest(d5, i32)").type == pa.decimal128(12, 2)
    assert derived(CHOICES, "if(c, d5, 1)").to_pylist() == [D("999.99"), D("1"), None, D("1")]
    assert derived(CHOICES, "if(c, d5, 1)").type == pa.decimal128(5, 2)
    assert derived(CHOICES, "if(c, i64, f64)").to_pylist() == [float(2**60 + 1), 1.5, None,
                                                              -2.0]
    assert derived(CHOICES, "coalesce(u64, -1)").to_pylist() == [D(2**64 - 1), D(-1), D(0),
                                                                D(2**63)]
    assert derived(CHOICES, "coalesce(u64, 1)").type == pa.uint64()
    assert derived(CHOICES, "greatest(u64, i64)").to_pylist() == [D(2**64 - 1), D(-3), D(0),
                                                                 D(2**63)]
    assert derived(CHOICES, "d5 in (d6, 1)").to_pylist() == [False, False, False, None]
    assert derived(CHOICES, "d5 in (d6, 1.5, i32)").to_pylist() == [False, True, False, None]
    assert derived(CHOICES, "u64 between i64 and 18446744073709551615.0").to_pylist() == [
        True, None, None, True]
    assert kept_by_filter_step(CHOICES, "u64 > i64 or u64 = i32").num_rows == 2
    with pytest.raises(ExpressionError, match=r"cannot apply if\(\) to bool and "
                       r"timestamp\[us\] and timestamp\[us, tz=UTC\] \(one timestamp has a "
                       r"time zone and the other has not"):
        expression_type("if(c, ts, tsz)", CHOICES.schema)


EDGES = pa.table({
    "d": pa.array([D("99999999.99"), D("-99999999.99"), D("1.25"), None],
                  pa.decimal128(10, 2)),
    "e": pa.array([D("0.01"), D("0"), D("-1.25"), D("7")], pa.decimal128(10, 2)),
    "d5": pa.array([D("999.99"), D("-999.99"), D("2.5"), None], pa.decimal128(5, 2)),
    "w1": pa.array([D("9" * 36 + ".99"), D("1.5"), None, D("-2")], pa.decimal128(38, 2)),
    "w2": pa.array([D("0.01"), D("-0.5"), D("1"), None], pa.decimal128(38, 2)),
    "c": pa.array([True, False, True, None]),
})


def test_rounding_a_decimal_expression_past_its_precision_is_an_error_not_zero() -> None:
    """A bare column was rounded with a digit more; an expression was not, its type being
    unknown as it compiled: floor(-d) of -99999999.99 in a decimal(10, 2) came back as
    0.00, silently, as did ceil(w1 + w2) at 38 digits. Every sub-expression is typed now:
    a value that rounds past its type is an error naming the expression, the others keep
    the type. round(d * 1.0, 1) is float64 arithmetic (a float literal), as documented."""
    def on(text: str, rows: slice) -> list[Any]:
        return over(EDGES.slice(rows.start, rows.stop - rows.start), text)

    inside = slice(2, 4)
    assert on("floor(- d)", inside) == [D("-2.00"), None]
    assert on("ceil(abs(d) + e)", inside) == [D("0.00"), None]
    assert on("round(coalesce(d, e), 1)", inside) == [D("1.20"), D("7.00")]
    assert on("floor(if(c, d, e))", inside) == [D("1.00"), None]
    assert on("round(d5, -4)", slice(0, 3)) == [D("0.00"), D("0.00"), D("0.00")]
    assert expression_type("floor(- d)", EDGES.schema) == pa.decimal128(10, 2)
    assert on("round(d * 1.0, 1)", slice(0, 1)) == [round(99999999.99, 1)]
    for text in ("floor(- d)", "ceil(- d)", "round(abs(d))", "floor(coalesce(d, e))",
                 "floor(if(c, - d, d))", "round(d5, -3)"):
        with pytest.raises(pa.ArrowInvalid, match="does not fit in precision"):
            on(text, slice(0, 2))
    assert on("floor(w1 + w2)", slice(1, 3)) == [D("1.00"), None]
    with pytest.raises(pa.ArrowInvalid, match="does not fit in precision 38"):
        on("ceil(w1 + w2)", slice(0, 1))
    with pytest.raises(DataError, match=r"derive column 'r' \(ceil\(w1 \+ w2\)\): .*"
                                        "does not fit in precision 38"):
        derived(EDGES, "ceil(w1 + w2)")
    with pytest.raises(ExpressionError, match=r"cannot apply round\(\) to decimal128\(10, 2\) "
                       r"and decimal128\(10, 2\) \(the digits to round to are a whole number"):
        expression_type("round(d, e)", EDGES.schema)  # Arrow raised as the rows were read


WIDE = pa.table({
    "d38": pa.array([D("1.5"), D("-" + "9" * 36 + ".5"), None, D("9" * 37 + ".9")],
                    pa.decimal128(38, 1)),
    "d5": pa.array([D("1.25"), D("-1.5"), D("0"), None], pa.decimal128(5, 2)),
    "s10": pa.array([D("1.5"), D("-2"), None, D("0.0000000001")], pa.decimal128(38, 10)),
    "s30": pa.array([D("1.5")] * 4, pa.decimal128(38, 30)),
})


def test_decimal_arithmetic_past_38_digits_keeps_38() -> None:
    """d38 + 1 was refused as its result wanted a precision of 39. As DuckDB and Spark do,
    the result keeps 38 digits and its digits after the point; a value that does not fit
    is an error naming the expression, never another value."""
    fits = WIDE.slice(0, 3)
    assert derived(fits, "d38 + 1").to_pylist() == [D("2.5"), D("-" + "9" * 35 + "8.5"), None]
    assert derived(fits, "d38 + 1").type == pa.decimal128(38, 1)
    assert derived(fits, "d38 * 2").to_pylist() == [D("3"), D("-1" + "9" * 36), None]
    assert derived(fits, "d38 - d5").to_pylist() == [D("0.25"), D("-" + "9" * 35 + "8"), None]
    assert derived(fits, "d38 - d5").type == pa.decimal128(38, 2)
    # two 38-digit decimals: Arrow wants 77 digits for their product, past even decimal256
    assert derived(fits, "s10 * s10").to_pylist() == [D("2.25"), D("4"), None]
    assert derived(fits, "s10 * s10").type == pa.decimal128(38, 20)
    assert derived(fits.slice(0, 1), "d38 * s10").to_pylist() == [D("2.25")]
    for text in ("d38 + 1", "d38 * 2", "d38 + d38"):
        with pytest.raises(DataError, match=rf"derive column 'r' \({re.escape(text)}\): "
                                            "Decimal value does not fit in precision 38"):
            derived(WIDE, text)
    with pytest.raises(DataError, match=r"where \(d38 \+ 1 > 0\): .*does not fit"):
        kept_by_filter_step(WIDE, "d38 + 1 > 0")
    with pytest.raises(ExpressionError, match=r"'\*' of decimal128\(38, 30\) and "
                       r"decimal128\(38, 10\) has 40 digits after the point, more than a "
                       r"decimal's 38; convert one side, e.g. cast\(x as float64\)"):
        expression_type("s30 * s10", WIDE.schema)


BOUNDS = pa.table({
    "u64": pa.array([2**64 - 1, 2**63, 0, None], pa.uint64()),
    "i64": pa.array([2**63 - 1, 2**60 + 1, -(2**63), None], pa.int64()),
    "u8": pa.array([255, 0, 7, None], pa.uint8()),
    "d": pa.array([D("0.10"), D("0.12"), D("0.13"), None], pa.decimal128(5, 2)),
})


def test_comparisons_with_a_literal_past_the_type_are_decided_exactly() -> None:
    """u64 > -1 converted the column to int64 and raised past 2**63; i64 in (1.5) converted
    it to float64 and raised past 2**53. A number literal beside an integer or decimal is
    decided in its type: past its range for every row, a fraction moved to the neighbour
    the comparison keeps, the number as written (not the float nearest it)."""
    def on(text: str) -> list[Any]:
        return over(BOUNDS, text, parse_filter)

    assert on("u64 > -1") == [True, True, True, None]
    assert on("-1 >= u64") == [False, False, False, None]
    assert on("i64 in (1.5)") == [False, False, False, None]
    assert on("i64 not in (1.5, -9223372036854775808)") == [True, True, False, None]
    assert on("i64 = 1.5") == [False, False, False, None]
    assert on("i64 < 1.5") == on("i64 <= 1") == [False, False, True, None]
    assert on("u8 < 300") == [True, True, True, None]
    assert on("u8 between -5 and 7.5") == [False, True, True, None]
    assert on("u64 >= 18446744073709551615.0") == [True, False, False, None]
    assert on("i64 = 9223372036854775807.0") == [True, False, False, None]
    assert on("d < 0.125") == [True, True, False, None]
    assert on("d = 0.1") == [True, False, False, None]
    assert on("d in (0.1, 0.125)") == [True, False, False, None]
    assert str(parse_filter("i64 < 1.5", BOUNDS.schema)) == "(i64 < 2)"  # statistics apply
    assert kept_by_filter_step(BOUNDS, "u64 > -1").num_rows == 3
    assert kept_by_filter_step(BOUNDS, "i64 in (1.5)").num_rows == 0


def test_a_pushed_filter_past_the_columns_range_reads_the_file(tmp_path: Path) -> None:
    pq.write_table(BOUNDS, tmp_path / "bounds.parquet", row_group_size=2)
    from operators.io.parquet import ReadParquet

    for where, ids in (("u64 > -1", [2**64 - 1, 2**63, 0]), ("i64 in (1.5)", []),
                       ("u64 < 1.5", [0])):
        read = ReadParquet(path=str(tmp_path / "bounds.parquet"), filter=where)
        rows = pa.concat_tables(read.read(p) for p in read.partitions())
        assert rows.column("u64").to_pylist() == ids, where


# ---------------------------------------------------------------------------------------------
# Differential: random decimal / unsigned / mixed expressions vs exact Python arithmetic
# ---------------------------------------------------------------------------------------------
# Every value is worked out with Python's ints and Decimals, and every decimal value is checked
# against the type SQL's rules give it (Arrow's precisions, capped at 38 digits; rounding keeps
# its argument's type): where a value does not fit, the expression must raise, never return
# another value. (At a few thousand cases this ran against DuckDB too, which agreed but where
# its types differ: it drops digits after the point from a common type, its round and floor
# change the type, its CASE and coalesce skip the branches not taken.)

MIXED = pa.table({
    "c": pa.array([True, False, None, True, False, True, True], pa.bool_()),
    "d52": pa.array([D("999.99"), D("-999.99"), D("1.25"), None, D("0"), D("-0.5"), D("2.5")],
                    pa.decimal128(5, 2)),
    "d63": pa.array([D("-999.999"), D("2.125"), D("0.125"), D("1.001"), None, D("0"),
                     D("999.999")], pa.decimal128(6, 3)),
    "d381": pa.array([D("1.5"), D("-2.5"), None, D("0"), D("9" * 37 + ".9"),
                      D("-1" + "0" * 36), D("0.1")], pa.decimal128(38, 1)),
    "d3810": pa.array([D("12345.6789"), None, D("-0.0000000001"), D("0"), D("1.5"),
                       D("9" * 28 + "." + "9" * 10), D("-7")], pa.decimal128(38, 10)),
    "i32": pa.array([3, -2, 0, None, 30, -30, 1], pa.int32()),
    "i64": pa.array([2**63 - 1, -(2**63), 2**62 + 1, 0, None, -1, 1], pa.int64()),
    "u64": pa.array([2**64 - 1, 2**63, 0, None, 1, 5, 2**63 - 1], pa.uint64()),
    "u8": pa.array([255, 0, None, 200, 1, 128, 7], pa.uint8()),
})
EXACT_COLUMNS = ["d52", "d63", "d381", "d3810", "i32"]  # what arithmetic takes
WIDE_COLUMNS = ["i64", "u64", "u8"]  # compared, chosen, never summed (integers wrap)
NUMBER_TEXTS = ["-1", "0", "1", "2", "255", "256", "-129", "9223372036854775807",
                "-9223372036854775808", "1.5", "-0.5", "0.125", "999.995", "999.99", "-999.99",
                "0.1", "1e-3", "2.0", "1e30", "-1e30", "18446744073709551615.0",
                "18446744073709551616.0", "9223372036854775807.5", "-9223372036854775808.5",
                "99999999999999999999999999999999999.95", "12345.6789", "-0.0000000001"]


class Overflow(Exception):
    """A value that does not fit its type: the expression must raise."""


def number_node(text: str) -> tuple:
    return ("int", int(text)) if re.fullmatch(r"-?\d+", text) else ("float", float(text), text)


def _kind(node: tuple) -> str:
    """dec | int | lit | bool: what an expression of the generator evaluates to."""
    if node[0] == "col":
        t = MIXED.schema.field(node[1]).type
        return "dec" if pa.types.is_decimal(t) else "int" if pa.types.is_integer(t) else "bool"
    if node[0] == "int":
        return "lit"
    if node[0] == "try_cast":
        return "int"
    kinds = {_kind(child) for child in node[2:] if isinstance(child, tuple)} - {"lit", "bool"}
    if node[0] == "neg":
        kinds = {_kind(node[1])}
    return "dec" if "dec" in kinds else "int" if kinds else "lit"


exact_leaf = st.sampled_from([("col", c) for c in EXACT_COLUMNS])
small_literal = st.integers(-3, 3).map(lambda v: ("int", v))


def _exact_branches(children: st.SearchStrategy) -> st.SearchStrategy:
    return (
        st.tuples(st.just("bin"), st.sampled_from(["+", "-", "*", "%"]), children,
                  children | small_literal)
        | st.tuples(st.just("neg"), children)
        | st.tuples(st.just("call"), st.sampled_from(["abs", "round"]), children)
        | st.tuples(st.just("call"), st.sampled_from(["floor", "ceil"]), children).filter(
            lambda n: _kind(n[2]) == "dec")
        | st.tuples(st.just("call"), st.just("round"), children, st.integers(-3, 3).map(
            lambda v: ("int", v)))
        | st.tuples(st.just("call"), st.just("if"), st.just(("col", "c")), children,
                    children | small_literal)
        | st.tuples(st.just("call"), st.sampled_from(["coalesce", "least", "greatest"]),
                    children, children | small_literal)
        # a value after two that can raise: its guard reads both
        | st.tuples(st.just("call"), st.just("coalesce"), children, children, children,
                    children | small_literal)
    )


exact_expr = st.recursive(exact_leaf, _exact_branches, max_leaves=4)
wide_leaf = st.sampled_from([("col", c) for c in WIDE_COLUMNS])
TRY_CAST_BITS = {"int8": (8, True), "int32": (32, True), "int64": (64, True),
                 "uint8": (8, False), "uint64": (64, False)}
try_casts = st.tuples(st.just("try_cast"), exact_expr | wide_leaf,
                      st.sampled_from(sorted(TRY_CAST_BITS)))
# what if / coalesce / least / greatest choose from (a float makes it all float64: not here)
chosen = exact_expr | wide_leaf | null | try_casts | st.sampled_from(
    [t for t in NUMBER_TEXTS if re.fullmatch(r"-?\d+", t)]).map(number_node)
value_expr = (
    exact_expr
    | wide_leaf
    | try_casts
    | st.tuples(st.just("call"), st.sampled_from(["coalesce", "least", "greatest"]),
                exact_expr | wide_leaf, chosen)
    | st.tuples(st.just("call"), st.just("if"), st.just(("col", "c")), exact_expr | wide_leaf,
                chosen)
)
number = st.sampled_from(NUMBER_TEXTS).map(number_node)
mixed_predicate = (
    st.tuples(st.just("cmp"), st.sampled_from(CMP), value_expr, number)
    | st.tuples(st.just("cmp"), st.sampled_from(CMP), number, value_expr)
    | st.tuples(st.just("cmp"), st.sampled_from(CMP), value_expr, value_expr)
    | st.tuples(st.just("in"), value_expr, st.lists(number | null, min_size=1, max_size=4),
                st.booleans())
    | st.tuples(st.just("in"), value_expr, st.lists(value_expr | number, min_size=1,
                                                    max_size=3), st.booleans())
    | st.tuples(st.just("between"), value_expr, number | value_expr, number | value_expr,
                st.booleans())
)
# an operand after others that can raise, computed where they leave the row undecided
mixed_predicate = mixed_predicate | st.recursive(
    mixed_predicate, lambda ch: st.tuples(st.sampled_from(["and", "or"]), ch, ch),
    max_leaves=4)


def _decimal_type(kind: tuple) -> tuple[int, int]:
    """(precision, scale) of a reference type as a decimal: an integer as decimal(p, 0)."""
    if kind[0] == "dec":
        return kind[1], kind[2]
    return kind[1], 0


def _fitted(value: Any, kind: tuple) -> Any:
    """``value``, raising Overflow where its decimal type cannot hold it."""
    if value is not None and kind[0] == "dec":
        precision, scale = kind[1], kind[2]
        if D(value) != D(value).quantize(D(1).scaleb(-scale)) or abs(value) >= D(10) ** (
                precision - scale):
            raise Overflow
    return value


def _common_kind(kinds: list[tuple]) -> tuple:
    """SQL's common type of values of one function: decimal if any is, the most digits
    before and after the point, at most 38 in all; else an integer of the most digits."""
    if any(k[0] == "dec" for k in kinds):
        scale = max(_decimal_type(k)[1] for k in kinds)
        whole = max(_decimal_type(k)[0] - _decimal_type(k)[1] for k in kinds)
        return ("dec", min(whole + scale, 38), scale)
    return ("int", max(k[1] for k in kinds))


OVERFLOWS = object()  # a value exact() found past its type, not needed yet


def exact(node: tuple, row: dict[str, Any]) -> tuple[Any, tuple]:
    """The exact value of an exact or value expression on one row, and its type as
    ("dec", p, s) or ("int", digits) (a literal: ("int", its digits), "lit" marks it)."""
    kind = node[0]
    if kind == "col":
        t = MIXED.schema.field(node[1]).type
        if pa.types.is_decimal(t):
            return row[node[1]], ("dec", t.precision, t.scale)
        most = 2**t.bit_width - 1 if pa.types.is_unsigned_integer(t) else 2 ** (t.bit_width - 1)
        return row[node[1]], ("int", len(str(most)))
    if kind == "int":
        return node[1], ("int", len(str(abs(node[1]))), "lit")
    if kind == "float":
        return D(node[2]), ("float",)
    if kind == "null":
        return None, ("null",)
    if kind == "try_cast":  # toward zero; null past the type's range, never an error
        bits, signed = TRY_CAST_BITS[node[2]]
        least, most = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        value = exact(node[1], row)[0]
        whole = None if value is None else int(value)  # int() of a Decimal truncates
        return (whole if whole is not None and least <= whole <= most else None,
                ("int", len(str(max(-least, most)))))
    if kind == "neg" or (kind == "call" and node[1] == "abs"):
        value, t = exact(node[-1], row)
        return (None if value is None else -value if kind == "neg" else abs(value)), t[:3]
    if kind == "bin":
        # an operand Arrow folds to null (always_null) leaves the other one uncomputed
        at = dict.fromkeys(row) if always_null(node) else row
        (a, ta), (b, tb) = exact(node[2], at), exact(node[3], at)
        if "dec" not in (ta[0], tb[0]):
            t = ("int", 10)  # int32 arithmetic (the generator keeps it far from wrapping)
        else:
            (pa_, sa), (pb, sb) = _decimal_type(ta), _decimal_type(tb)
            scale = sa + sb if node[1] == "*" else max(sa, sb)
            precision = {"*": pa_ + pb + 1, "%": max(pa_ - sa, pb - sb) + scale}.get(
                node[1], max(pa_ - sa, pb - sb) + scale + 1)
            t = ("dec", min(precision, 38), scale)
        if a is None or b is None:
            return None, t
        if node[1] == "%":
            if b == 0:
                return None, t
            rest = a % b  # Python's Decimal keeps the dividend's sign: floor it
            return _fitted(rest + b if rest and (rest < 0) != (b < 0) else rest, t), t
        return _fitted({"+": operator.add, "-": operator.sub, "*": operator.mul}[node[1]](
            a, b), t), t
    if kind == "call" and node[1] in ("floor", "ceil", "round"):
        value, t = exact(node[2], row)
        places = node[3][1] if len(node) > 3 else 0
        if value is None:
            return None, t[:3]
        rounding = {"floor": decimal.ROUND_FLOOR, "ceil": decimal.ROUND_CEILING,
                    "round": decimal.ROUND_HALF_EVEN}[node[1]]
        rounded = D(value).quantize(D(1).scaleb(-places), rounding=rounding)
        if t[0] == "int":
            return int(rounded), t[:2]
        return _fitted(rounded, t[:3]), t[:3]
    if kind == "call":  # if, coalesce, least, greatest: values of one type
        # a value that overflows stops the row only where it is needed: if's branch
        # taken, coalesce's values up to the first present one (least, greatest: all)
        args = []
        for arg in node[2:]:
            try:
                args.append(exact(arg, row))
            except Overflow:  # its type is that of its nulls
                args.append((OVERFLOWS, exact(arg, dict.fromkeys(row))[1]))
        if node[1] == "if":
            cond, args = args[0][0], args[1:]
            if cond is OVERFLOWS:
                raise Overflow
        kinds = [t for _, t in args if t[0] != "null"]
        typed = [t for t in kinds if len(t) < 3 or t[2] != "lit"]
        common = _common_kind(typed + [t[:2] for t in kinds if len(t) == 3 and t[2] == "lit"
                                       and any(k[0] == "dec" for k in typed)])

        def value(at: int) -> Any:
            v = args[at][0]
            if v is OVERFLOWS:
                raise Overflow
            return _fitted(v, common) if common[0] == "dec" else v

        if node[1] == "if":
            return (None if cond is None else value(0) if cond else value(1)), common
        if node[1] == "coalesce":
            return next((v for v in map(value, range(len(args))) if v is not None),
                        None), common
        present = [v for v in map(value, range(len(args))) if v is not None]
        return ((min if node[1] == "least" else max)(present) if present else None), common
    raise AssertionError(kind)


def always_null(node: tuple) -> bool:
    """Whether a value is null on every row by its form: a null, ``x % 0`` (null for a
    zero divisor), or arithmetic on such a value. Arrow folds a comparison or arithmetic
    with one to null as it binds the expression, without computing the other operand
    (which then cannot overflow)."""
    kind = node[0]
    if kind == "null":
        return True
    if kind == "bin":
        divisor = node[3]
        if node[1] == "%" and divisor[0] in ("int", "float") and exact(divisor, {})[0] == 0:
            return True
        return always_null(node[2]) or always_null(node[3])
    if kind == "neg" or (kind == "call" and node[1] in ("abs", "floor", "ceil", "round")):
        return always_null(node[-1] if kind == "neg" else node[2])
    if kind == "try_cast":
        return always_null(node[1])
    return False


def exact_predicate(node: tuple, row: dict[str, Any]) -> bool | None:
    kind = node[0]
    if kind in ("and", "or"):  # the second operand where the first leaves it undecided
        first = exact_predicate(node[1], row)
        if first is (kind == "or"):
            return first
        second = exact_predicate(node[2], row)
        return and3(first, second) if kind == "and" else or3(first, second)
    if kind == "cmp" and (always_null(node[2]) or always_null(node[3])):
        return None
    # a list of literals only is one is_in of the computed operand; otherwise each item
    # is a comparison, folded as above where the item is always null
    if (kind == "in" and not all(item[0] in ("int", "float", "null") for item in node[2])
            and all(always_null(item) for item in node[2])):
        return None
    if kind == "between" and all(always_null(bound) for bound in node[2:4]):
        return None
    if kind == "cmp":
        a, b = exact(node[2], row)[0], exact(node[3], row)[0]
        if a is None or b is None:
            return None
        return {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
                "<": operator.lt, "<=": operator.le, ">": operator.gt,
                ">=": operator.ge}[node[1]](a, b)
    if kind == "in":
        result = in3(exact(node[1], row)[0], [exact(item, row)[0] for item in node[2]])
        return not3(result) if node[3] else result
    if kind == "between":
        value, low, high = (exact(n, row)[0] for n in node[1:4])
        result = and3(None if value is None or low is None else value >= low,
                      None if value is None or high is None else value <= high)
        return not3(result) if node[4] else result
    raise AssertionError(kind)


def check_mixed(tree: tuple, style: dict[str, Any]) -> None:
    """``tree`` through parse_expression / parse_filter with MIXED's schema against the
    exact reference: the same values row by row, or an error where a value overflows."""
    text = render(tree, style)
    predicate = tree[0] in ("cmp", "in", "between", "and", "or")
    rows = MIXED.to_pylist()
    try:
        with decimal.localcontext(prec=200):
            expected = [exact_predicate(tree, row) if predicate else exact(tree, row)[0]
                        for row in rows]
    except Overflow:
        expected = None
    expr = (parse_filter if predicate else parse_expression)(text, MIXED.schema)
    try:
        got = ds.dataset(MIXED).to_table(columns={"r": expr})
    except pa.ArrowInvalid as exc:
        assert expected is None, f"{text}: raised {exc}, expected {expected}"
        return
    assert expected is not None, f"{text}: no error; a value does not fit its type"
    values = got.column("r").to_pylist()
    assert values == expected, f"{text}: {values} != {expected}"
    assert not predicate or all(isinstance(v, bool) for v in values if v is not None), text
    assert expression_type(text, MIXED.schema) == got.schema.field("r").type, text
    if predicate:
        kept = MIXED.filter(expr).num_rows
        assert kept == sum(v is True for v in expected), text


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(tree=value_expr | mixed_predicate, style=styles)
def test_random_decimal_and_unsigned_expressions_are_exact(tree: tuple, style: dict[str, Any]
                                                           ) -> None:
    check_mixed(tree, style)


def test_a_decimal_widened_past_38_digits_is_an_error_not_another_value() -> None:
    """if's values of one type. In decimal(38, 12), -1e36 of a decimal(38, 1) does not
    fit: Arrow's decimal128 rescale wrapped it around (it gave -1.9e25). In decimal(38,
    20), an int64 literal does not: it stopped the expression as it compiled, whatever
    the rows; now where it is chosen."""
    t = pa.table({"c": [True, False], "w": pa.array([D("-1" + "0" * 36), D("2.5")],
                                                     pa.decimal128(38, 1)),
                  "f": pa.array([D("1.5"), D("0.25")], pa.decimal128(38, 12)),
                  "g": pa.array([D("0.5"), D("-0.5")], pa.decimal128(38, 20))})
    with pytest.raises(pa.ArrowInvalid, match="precision"):
        over(t, "if(c, w, f)")
    assert over(t.slice(1), "if(c, w, f)") == [D("0.25")]
    assert over(t.slice(0, 1), "if(c, g, 9223372036854775807)") == [D("0.5")]
    with pytest.raises(pa.ArrowInvalid, match="precision"):
        over(t.slice(1), "if(c, g, 9223372036854775807)")


# ------------------------------------------------------------------ branches not taken

GUARDED = pa.table({
    "s": pa.array(["12", "", "7", None]),
    "d": pa.array([decimal.Decimal("9" * 36), decimal.Decimal(1), None, decimal.Decimal(5)],
                  pa.decimal128(38, 0)),
})


def evaluated(text: str, predicate: bool = False) -> list[Any]:
    expr = (parse_filter if predicate else parse_expression)(text, GUARDED.schema)
    return ds.dataset(GUARDED).to_table(columns={"r": expr}).column("r").to_pylist()


@pytest.mark.parametrize(("text", "expected"), [
    ("if(s != '', cast(s as int64), 0)", [12, 0, 7, None]),
    ("if(s = '', -1, cast(s as int64))", [12, -1, 7, None]),
    ("coalesce(if(s = '', 0, null), cast(s as int64))", [12, 0, 7, None]),
    ("if(d < 100, d * 1000, d)", [decimal.Decimal("9" * 36), 1000, None, 5000]),
    ("coalesce(if(d > 100, d, null), round(d * 10))", [decimal.Decimal("9" * 36), 10, None, 50]),
])
def test_a_branch_not_taken_cannot_raise(text: str, expected: list[Any]) -> None:
    """The guard an error message advises works: a cast, decimal arithmetic or rounding
    in a branch of if (coalesce's later values) is done for the rows that take it only,
    as DuckDB's and Spark's CASE."""
    assert evaluated(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("s != '' and cast(s as int64) > 10", [True, False, False, None]),
    ("s = '' or cast(s as int64) > 10", [True, True, False, None]),
    ("not (s = '' or cast(s as int64) <= 10)", [True, False, False, None]),
])
def test_an_operand_after_the_deciding_one_cannot_raise(text: str, expected: list[Any]
                                                        ) -> None:
    assert evaluated(text, predicate=True) == expected


@pytest.mark.parametrize("text", [
    "if(s = '', cast(s as int64), 0)",        # the branch taken holds the bad value
    "coalesce(cast(s as int64), 0)",          # the first value: every row needs it
    "if(d > 100, d * 1000, d)",               # 36 nines times 1000: past 38 digits
])
def test_a_branch_taken_still_raises(text: str) -> None:
    with pytest.raises(pa.ArrowInvalid):
        evaluated(text)


def test_filters_keep_their_form_for_the_statistics() -> None:
    """Only an operand that can raise is guarded: plain comparisons reach Arrow as
    written, so row-group statistics still judge them."""
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    assert "if_else" not in str(parse_filter("a > 1 and b = 'x' or a < -5", schema))
    assert "if_else" in str(parse_filter("b != '' and cast(b as int64) > 1", schema))


@pytest.mark.parametrize(("text", "expected", "arrow_type"), [
    ("p / nullif(v, 0)", [None, 1.0, None, None], pa.float64()),
    ("nullif(s, '')", ["a", None, "b", None], pa.string()),
    ("nullif(u, -1)", [1, 2, 3, 4], pa.uint64()),          # -1 is no uint64: never equal
    ("nullif(p, null)", [1, 2, 3, None], pa.int64()),      # b null: a
    ("coalesce(nullif(v, 0), 1)", [1, 2, 1, 5], pa.int64()),
])
def test_nullif_is_sqls(text: str, expected: list[Any], arrow_type: pa.DataType) -> None:
    t = pa.table({"p": pa.array([1, 2, 3, None]), "v": pa.array([0, 2, 0, 5]),
                  "s": pa.array(["a", "", "b", None]), "u": pa.array([1, 2, 3, 4], pa.uint64())})
    got = ds.dataset(t).to_table(columns={"r": parse_expression(text, t.schema)})
    assert got.column("r").to_pylist() == expected
    assert got.schema.field("r").type == arrow_type == expression_type(text, t.schema)

@pytest.mark.parametrize(("text", "expected"), [
    ("if(k > 1, cast(sv as int64), 0)", [0, 5, 7]),
    ("k > 1 and cast(sv as int64) > 5", [False, False, True]),
    ("if(k > 1, cast(bv as string), 'x')", ["x", "2", "3"]),
])
def test_a_guarded_view_column(text: str, expected: list[Any]) -> None:
    """A string_view or binary_view column in a guarded part is read as it was before
    the guard (Arrow's if_else has no kernel for the views)."""
    t = pa.table({"k": [1, 2, 3], "sv": pa.array(["12", "5", "7"], pa.string_view()),
                  "bv": pa.array([b"1", b"2", b"3"], pa.binary_view())})
    expr = parse_expression(text, t.schema)
    assert ds.dataset(t).to_table(columns={"r": expr}).column("r").to_pylist() == expected


def test_nested_guards_grow_with_the_depth_not_twice_a_level() -> None:
    """An if chain (a CASE of ten or more WHENs) whose branches cast: each level's guard
    holds the one above it once, not twice (twice made the expression, and its run, double
    with each level: 12 levels ran 200x slower than unguarded)."""
    schema = pa.schema([("k", pa.int64()), ("s", pa.string())])

    def chain(depth: int) -> str:
        text = "0"
        for i in reversed(range(depth)):
            text = f"if(k = {i}, cast(s as int64) + {i}, {text})"
        return text

    sizes = {depth: len(str(parse_expression(chain(depth), schema))) for depth in (8, 16)}
    assert sizes[16] < 5 * sizes[8]
    t = pa.table({"k": [0, 5, 15, 20], "s": ["1", "2", "3", "x"]})
    got = ds.dataset(t).to_table(columns={"r": parse_expression(chain(16), schema)})
    assert got.column("r").to_pylist() == [1, 7, 18, 0]


def chain(shape: str, n: int) -> str:
    """n values that can raise, each after the ones before: coalesce's values, and's
    operands, if's conditions."""
    casts = [f"cast(a{i} as int64)" for i in range(n)]
    if shape == "coalesce":
        return f"coalesce({', '.join(casts)})"
    if shape == "and":
        return " and ".join(f"{c} >= 0" for c in casts)
    return "".join(f"if({c} > 5, {i}, " for i, c in enumerate(casts)) + "-1" + ")" * n


CHAINS = pa.schema([(f"a{i}", pa.string()) for i in range(16)])


@pytest.mark.parametrize("shape", ["coalesce", "and", "if"])
def test_guards_after_values_that_can_raise_grow_with_the_square_not_twice_a_value(
        shape: str) -> None:
    """Each guard reads the values before it as they are where they do not raise (null
    where they would), not as guarded themselves: it holds the guards before it once, not
    twice (twice made 16 values 4000 times the size of 4)."""
    size = {n: len(str(parse_expression(chain(shape, n), CHAINS))) for n in (4, 8, 16)}
    assert size[8] < 6 * size[4] and size[16] < 5 * size[8]


# rows whose 'x' (no integer) is after the value that decides them: never read
DECIDED_ROWS = {
    "coalesce": [["1", "x", "x"], [None, "2", "x"], [None, None, "3"], [None, None, None]],
    "and": [["-1", "x", "x"], ["9", "-3", "x"], [None, "-2", "x"], ["5", "7", "-4"],
            [None, None, None], ["1", None, "2"]],
    "if": [["9", "x", "x"], [None, "x", "x"], ["1", "2", "8"], ["1", "7", "x"],
           ["3", "1", None]],
}


@pytest.mark.parametrize("shape", ["coalesce", "and", "if"])
def test_a_value_after_values_that_can_raise_is_computed_where_needed_only(shape: str
                                                                           ) -> None:
    """Row by row against Python: each value is computed (and can stop the run) only
    where the ones before it leave the row undecided."""
    rows = DECIDED_ROWS[shape]
    table = pa.table({f"a{i}": [r[i] for r in rows] for i in range(3)})
    expr = parse_expression(chain(shape, 3), table.schema)
    got = ds.dataset(table).to_table(columns={"r": expr}).column("r").to_pylist()

    def expected(row: list[str | None]) -> Any:
        values = (None if v is None else int(v) for v in row)  # int('x') would stop it
        if shape == "coalesce":
            return next((v for v in values if v is not None), None)
        if shape == "and":
            result: bool | None = True
            for v in values:
                result = and3(result, None if v is None else v >= 0)
                if result is False:
                    return False
            return result
        for i, v in enumerate(values):  # a null condition: null, and nothing after it
            if v is None or v > 5:
                return None if v is None else i
        return -1

    assert got == [expected(r) for r in rows]
    # where the rows before leave it undecided, 'x' stops the run
    bad = pa.table({"a0": [None if shape == "coalesce" else "1"], "a1": ["x"], "a2": [None]},
                   schema=table.schema)
    with pytest.raises(pa.ArrowInvalid, match="'x'"):
        ds.dataset(bad).to_table(columns={"r": expr})


def test_a_guard_reads_a_float_cast_to_an_integer_as_cast_gives_it() -> None:
    """A guard reads a value that can raise as cast gives it where cast does not raise:
    NaN as int64 is an integer (unspecified: int64's least here), not try_cast's null,
    so the row is decided and the text after it is not read."""
    table = pa.table({"k": [0, 0], "f": [NAN, 1.0], "s": ["x", "5"]})
    text = "k > 0 or cast(f as int64) < 0 or cast(s as int64) > 0"
    got = ds.dataset(table).to_table(columns={"r": parse_expression(text, table.schema)})
    assert got.column("r").to_pylist() == [True, True]


@pytest.mark.parametrize(("text", "message"), [
    ("if(k, cast(s as int64), 1)", "cannot apply if() to int64 and int64 and int64"),
    ("if(k = 0, 0, if(k, cast(s as int64), 1))", "cannot apply if() to int64"),
    ("k and cast(s as int64) > 1", "'and' needs true/false values, got int64 and bool"),
])
def test_a_guard_on_no_true_false_leaves_the_type_check_its_message(text: str,
                                                                    message: str) -> None:
    """A condition that is no true/false makes no guard: the error says what is wrong
    with the expression, not that Arrow's coalesce has no kernel for column 's'."""
    schema = pa.schema([("s", pa.string()), ("k", pa.int64())])
    with pytest.raises(ExpressionError, match=re.escape(message)):
        expression_type(text, schema)


def test_a_null_condition_guards_as_a_boolean_null() -> None:
    schema = pa.schema([("s", pa.string())])
    assert expression_type("if(null, cast(s as int64), 1)", schema) == pa.int64()


def test_with_projected_puts_columns_in_place_or_after() -> None:
    """The columns expressions make from a table, in one projection: one of a column's
    name takes its place, a new one goes after the others; a field given keeps its
    metadata and nullability, the others are plain nullable fields of the value's type."""
    table = pa.table({"a": pa.array([1, 2], pa.int32()), "b": [0.5, 1.5]})
    kept = pa.field("a", pa.int64(), metadata={"unit": "days"})
    out = expressions.with_projected(
        table, {"a": pc.field("a").cast(pa.int64()),
                "twice": parse_expression("b * 2", table.schema)}, {"a": kept})
    assert out.column_names == ["a", "b", "twice"]
    assert out.schema.field("a") == kept and out.schema.field("a").metadata == kept.metadata
    assert out.schema.field("twice") == pa.field("twice", pa.float64())
    assert out.to_pydict() == {"a": [1, 2], "b": [0.5, 1.5], "twice": [1.0, 3.0]}
    assert table.column_names == ["a", "b"]  # the input is not changed


def test_differences_of_times_at_every_extreme_and_precision() -> None:
    """days_between and its kin count the boundaries exactly for every value a date or a
    timestamp of any unit holds: nanoseconds that are no whole microsecond (Arrow's
    cast to microseconds refused them), dates and coarse times past timestamp[us]'s
    range, times before 1970; Arrow's own kernels agree where they can take the values."""
    rng = np.random.default_rng(3)
    big = 2**62
    table = pa.table({
        "ns": pa.array(np.r_[-1, 1, 999, rng.integers(-big, big, 200)], pa.timestamp("ns")),
        "s": pa.array(np.r_[-1, 0, big, rng.integers(-10**11, 10**11, 200)],
                      pa.timestamp("s", tz="Asia/Kolkata")),
        "d": pa.array(np.r_[2**31 - 1, -2**31, -1, rng.integers(-10**6, 10**6, 200)]
                      .astype(np.int32), pa.date32()),
        "ms": pa.array(np.r_[-1, 86_399_999, 0, rng.integers(-big, big, 200)], pa.date64()),
    })
    lengths = {"days": 86_400 * 10**9, "hours": 3_600 * 10**9, "minutes": 60 * 10**9,
               "seconds": 10**9}
    nanoseconds = {"ns": 1, "s": 10**9, "d": 86_400 * 10**9, "ms": 10**6}

    def boundaries(name: str, unit: str) -> list[int]:
        raw = table.column(name).cast(pa.int32() if name == "d" else pa.int64())
        return [v * nanoseconds[name] // lengths[unit] for v in raw.to_pylist()]

    for unit in lengths:
        for a in nanoseconds:
            for b in nanoseconds:
                text = f"{unit}_between({a}, {b})"
                got = ds.dataset(table).to_table(
                    columns={"x": parse_expression(text, table.schema)})["x"].to_pylist()
                want = [y - x for x, y in zip(boundaries(a, unit), boundaries(b, unit),
                                              strict=True)]
                assert got == want, text
    # Arrow's own kernels, on two columns of one type: the same counts
    pair = pa.table({"a": table.column("ns"), "b": table.column("ns").take(
        pa.array(rng.permutation(table.num_rows)))})
    for unit in lengths:
        ours = ds.dataset(pair).to_table(columns={"x": parse_expression(
            f"{unit}_between(a, b)", pair.schema)})["x"]
        theirs = getattr(pc, f"{unit}_between")(pair.column("a"), pair.column("b"))
        assert ours.to_pylist() == theirs.to_pylist()


def test_a_difference_past_int64_is_an_error_naming_the_column() -> None:
    """seconds_between of times some 10**11 years apart does not fit in an int64: an
    error naming the derive column and its expression, never a wrapped number."""
    table = pa.table({"a": pa.array([-2**62 - 2**61, 0], pa.timestamp("s")),
                      "b": pa.array([2**62 + 2**61, 0], pa.timestamp("s"))})
    with pytest.raises(DataError, match=r"derive column 'gap' \(seconds_between\(a, b\)\): "
                                        r".*overflow"):
        lookup("derive")(columns={"gap": "seconds_between(a, b)"}).transform(table, np)


def test_a_decimal_rounded_past_its_precision_names_the_column_a_value_and_the_fix(
        tmp_path: Path) -> None:
    """Arrow's 'Decimal value does not fit in precision 5' named no column and no value:
    the error names the call, its column (or its type), a value and what it rounds to,
    and how to widen the type first (or round a float)."""
    rows = pa.table({"id": [1, 2, 3], "price": pa.array([D("1.25"), D("999.99"), D("-3.50")],
                                                         pa.decimal128(5, 2))})
    with pytest.raises(DataError) as info:
        derived(rows, "id + round(price)")
    assert info.value.message == (
        "derive column 'r' (id + round(price)): round() of column 'price' "
        "(decimal128(5, 2)) rounds 999.99 to 1000.00, which has more digits than the 5 of "
        "the type round() keeps")
    assert info.value.hint == (
        "widen the column first: `op: cast` with `columns: {price: decimal(6, 2)}` in a "
        "step before this one (round() then keeps that type), or round it as a float: "
        "round(cast(price as float64))")
    with pytest.raises(DataError) as info:
        derived(rows, "round(price, -3)")
    assert "rounds 999.99 to 1000.00" in info.value.message
    assert "`columns: {price: decimal(6, 2)}`" in info.value.hint
    assert info.value.hint.endswith("round(cast(price as float64), -3)")
    with pytest.raises(DataError) as info:  # of an expression: its type
        kept_by_filter_step(EDGES, "ceil(- d) > 0")
    assert info.value.message == (
        "where (ceil(- d) > 0): ceil() of a decimal128(10, 2) value rounds 99999999.99 to "
        "100000000.00, which has more digits than the 10 of the type ceil() keeps")
    assert info.value.hint.startswith(
        "cast the decimal columns it is computed from to a wider decimal first (`op: cast`, "
        "e.g. decimal(11, 2))")
    assert derived(rows.slice(0, 1), "round(price)").to_pylist() == [D("1.00")]
    # every step that evaluates expressions on rows says so (aggregate, window, expect)
    from operators.testing.kit import shuffled

    window = lookup("window")
    for step, run in [
            (lookup("aggregate")(by=["id"], columns={"s": "sum(round(price))"}),
             lambda op: op.partial(rows)),
            (window.create(window.Params(by=["id"], order=["id"],
                                         columns={"prev": "lag(round(price))"})),
             lambda op: shuffled(op, [rows], 1)),
            (lookup("expect")(rules={"small": "round(price) < 10"}),
             lambda op: op.transform(rows, np))]:
        with pytest.raises(DataError) as info:
            run(step)
        assert ("round() of column 'price' (decimal128(5, 2)) rounds 999.99 to 1000.00"
                in info.value.message), step
    # a read's filter reads the files' types: the fix is a cast, then a filter step
    pq.write_table(rows, tmp_path / "rows.parquet")
    read = lookup("read_parquet")(path=str(tmp_path), filter="round(price) > 5")
    with pytest.raises(DataError) as info:
        read.read(read.partitions()[0])
    assert "round() of column 'price' (decimal128(5, 2)) rounds 999.99" in info.value.message
    assert info.value.hint.startswith(
        "filter in steps after the read instead: `op: cast` with `columns: {price: "
        "decimal(6, 2)}`, then `op: filter`")
