"""Tests for ``try_cast(x as T)`` (``operators/try_cast.py``): ``cast``'s value where cast
gives one, null where it raises or gives an unspecified value, never an error.

The reference is ``cast`` itself, value by value: each value alone through the
expression language's ``cast``, null where that raises. Floats to integers, where cast
gives unspecified integers for NaN, infinities and values past the range, are worked
out in Python instead.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.expressions import ExpressionError, expression_type, parse_expression

D = decimal.Decimal
NAN, INF = float("nan"), float("inf")

TARGETS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float32", "float64", "string", "bool", "date", "timestamp"]
INT_TARGETS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64, "uint8": 8, "uint16": 16,
               "uint32": 32, "uint64": 64}

EDGES = sorted({v for bits in (8, 16, 32, 64) for v in (
    -(2 ** (bits - 1)) - 1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 2 ** (bits - 1),
    2**bits - 1, 2**bits)} | {-1, 0, 1, 2**53 + 1})


def integers(t: pa.DataType) -> pa.Array:
    if pa.types.is_unsigned_integer(t):
        least, most = 0, 2**t.bit_width - 1
    else:
        least, most = -(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1
    return pa.array([v for v in EDGES if least <= v <= most] + [None], t)


FLOATS = [NAN, INF, -INF, 1.5, -1.5, -0.5, 0.0, -0.0, 127.9, 128.0, -128.9, -129.0, 255.5,
          256.0, 65535.9, 2.0**31 - 0.5, 2.0**31, -(2.0**31) - 0.5, -(2.0**31) - 1,
          2.0**32, 2.0**63, -(2.0**63), 2.0**63 - 1024, 2.0**64, -(2.0**64), 1e20, 1e300,
          5e-324, None]
DECIMALS = [D("-129.00"), D("-128.99"), D("127.99"), D("128.00"), D("255.99"), D("256.00"),
            D("-0.99"), D("-1.00"), D("65535.99"), D("4294967295.99"), D("4294967296.00"),
            D("9223372036854775807.99"), D("9223372036854775808.00"),
            D("-9223372036854775808.99"), D("-9223372036854775809.00"),
            D("18446744073709551615.99"), D("18446744073709551616.00"), D("9" * 36 + ".99"),
            D("-" + "9" * 36 + ".99"), None]
TEXTS = ["12", "-12", "+12", " 12", "12 ", "", "-", "007", "0x1F", "0X7f", "0x80", "0xff",
         "0x100", "0xFFFF", "0xFFFFFFFF", "0xFFFFFFFFFFFFFFFF", "0x1FFFFFFFFFFFFFFFF",
         "0x", "-0x1", "-0", "1.5", "1.", ".5", "1e3", "1E-3", "-1.5e+3", "1e400", "nan",
         "-NaN", "inf", "-Infinity", "infin", "true", "FALSE", "True", "1", "0", "t", "yes",
         "2026-11-28", "2024-02-29", "2026-02-29", "1900-02-29", "2000-02-29", "2026-04-31",
         "2026-13-01", "0000-01-01", "9999-12-31", "2026-11-28 10:05:06",
         "2026-11-28T23:59:59.999999", "2026-11-28 24:00:00", "2026-11-28 10:05:06.1234567",
         "2026-11-28 10", "2026-11-28 10:05", "2026-11-28 10:05:06Z", "12a", "١٢", "é",
         "-128", "-129", "127", "128", "255", "256", "-32769", "65535", "65536",
         "2147483647", "2147483648", "-2147483649", "4294967295", "4294967296",
         "9223372036854775807", "9223372036854775808", "-9223372036854775808",
         "-9223372036854775809", "18446744073709551615", "18446744073709551616",
         "0000000000000000000000018446744073709551615", "-00000000000000000000000128",
         None]
BYTES = [None if v is None else v.encode() for v in TEXTS] + [b"\xff", b"\xc3", b"\xed\xa0\x80",
                                                              b"\xf4\x90\x80\x80", b"\xc3\xa9"]
DAYS = [0, 106751991, 106751992, -106751991, -106751992, 2**31 - 1, -(2**31), None]
SOURCES: dict[str, pa.Array] = {
    **{str(t): integers(t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(),
                                     pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())},
    "float32": pa.array(FLOATS, pa.float64()).cast(pa.float32(), safe=False),
    "float64": pa.array(FLOATS, pa.float64()),
    "decimal(38, 2)": pa.array(DECIMALS, pa.decimal128(38, 2)),
    "decimal(5, 2)": pa.array([D("-999.99"), D("-128.5"), D("255.99"), D("0.01"), None],
                              pa.decimal128(5, 2)),
    "decimal256(50, 1)": pa.array([D("-" + "9" * 49 + ".9"), D("-129.9"), D("-1.0"),
                                   D("18446744073709551615.9"), D("9" * 49 + ".9"), None],
                                  pa.decimal256(50, 1)),
    "string": pa.array(TEXTS, pa.string()),
    "large_string": pa.array(TEXTS, pa.large_string()),
    "string_view": pa.array(TEXTS, pa.string_view()),
    "dictionary": pa.array(TEXTS, pa.string()).dictionary_encode(),
    "binary": pa.array(BYTES, pa.binary()),
    "large_binary": pa.array(BYTES, pa.large_binary()),
    "binary_view": pa.array(BYTES, pa.binary_view()),
    "bool": pa.array([True, False, None]),
    "date32": pa.array(DAYS, pa.int32()).cast(pa.date32()),
    "date64": pa.array([0, 9223372036854775, 9223372036854776, -9223372036854775,
                        -9223372036854776, 86_400_000, None], pa.int64()).cast(pa.date64()),
    **{f"timestamp[{unit}]": pa.array(
        [0, 9223372036854, 9223372036855, -9223372036855, 2**62, -(2**62), 1500, None],
        pa.int64()).cast(pa.timestamp(unit)) for unit in ("s", "ms", "us", "ns")},
    "timestamp[s, tz]": pa.array([9223372036855, 1500, None], pa.int64()).cast(
        pa.timestamp("s", tz="Europe/Paris")),
    "time64": pa.array([1, None], pa.int64()).cast(pa.time64("us")),
    "duration": pa.array([1, None], pa.int64()).cast(pa.duration("s")),
    "null": pa.nulls(3),
}


def run(text: str, column: pa.Array) -> pa.Array:
    table = pa.table({"x": column})
    expr = parse_expression(text, table.schema)
    return ds.dataset(table).to_table(columns={"r": expr}).column("r").combine_chunks()


def cast_alone(column: pa.Array, at: int, target: str) -> Any:
    """``cast`` of ``column``'s value ``at`` alone, None where it raises; a float to an
    integer: null where it is no number in the target's range (cast gives an unspecified
    integer there)."""
    value = column[at]
    if pa.types.is_floating(value.type) and target in INT_TARGETS:
        v = value.as_py()
        if v is None or not math.isfinite(v):
            return None
        bits = INT_TARGETS[target]
        least, most = (0, 2**bits - 1) if target.startswith("u") else (
            -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        whole = math.trunc(v)
        return whole if least <= whole <= most else None
    try:
        return run(f"cast(x as {target})", column.slice(at, 1))[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def plain(value: Any) -> Any:
    """A scalar's Python value; a date's or a time's its type and count of units (past
    the years Python's own take)."""
    if not isinstance(value, pa.Scalar):
        return value
    if pa.types.is_temporal(value.type) and value.is_valid:
        storage = pa.int32() if pa.types.is_date32(value.type) else pa.int64()
        return str(value.type), pa.array([value], value.type).view(storage)[0].as_py()
    return value.as_py()


def same(a: Any, b: Any) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def pairs() -> list[tuple[str, str]]:
    """Every source and target cast takes (plans)."""
    out = []
    for source, column in SOURCES.items():
        for target in TARGETS:
            try:
                expression_type(f"cast(x as {target})", pa.schema([("x", column.type)]))
            except ExpressionError:
                continue
            out.append((source, target))
    return out


PAIRS = pairs()


def test_the_pairs_cover_every_kind() -> None:
    assert len(PAIRS) > 200
    assert {s for s, _ in PAIRS} == set(SOURCES)
    assert {t for _, t in PAIRS} == set(TARGETS)


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_try_cast_is_cast_or_null(source: str, target: str) -> None:
    column = SOURCES[source]
    schema = pa.schema([("x", column.type)])
    text = f"try_cast(x as {target})"
    got = run(text, column)
    assert got.type == expression_type(text, schema) == expression_type(
        f"cast(x as {target})", schema)
    expected = [cast_alone(column, at, target) for at in range(len(column))]
    for value, want, have in zip(column, expected, got):
        assert same(have, want), f"{text} of {value!r}: {have!r}, cast gives {want!r}"
    # no rows: no error either, and the type
    empty = run(text, column.slice(0, 0))
    assert len(empty) == 0 and empty.type == got.type


@pytest.mark.parametrize("target", TARGETS)
def test_every_value_that_cast_refuses_is_null(target: str) -> None:
    """One refused value among good ones stops cast, not try_cast."""
    bad = {"string": None, "float32": "x", "float64": "x"}.get(target, "2026-02-30")
    column = pa.array(["1", bad, None] if bad else ["1", None])
    if bad is not None:
        with pytest.raises(pa.ArrowInvalid):
            run(f"cast(x as {target})", column)
    assert run(f"try_cast(x as {target})", column)[1].as_py() is None


@pytest.mark.parametrize(("text", "expected"), [
    ("try_cast('12a' as int64)", None),
    ("try_cast('12' as int64)", 12),
    ("try_cast(1e20 as int32)", None),
    ("try_cast(1.5 as int64)", 1),          # as cast, and Spark: toward zero
    ("try_cast(-1.5 as int64)", -1),
    ("try_cast(300 as uint8)", None),
    ("try_cast(-1 as uint64)", None),
    ("try_cast(null as int64)", None),
    ("try_cast('2026-02-29' as date)", None),
    ("try_cast('2024-02-29' as date)", dt.date(2024, 2, 29)),
    ("try_cast('maybe' as bool)", None),
    ("try_cast(12 as string)", "12"),
])
def test_literals(text: str, expected: Any) -> None:
    assert run(text, pa.array([1]))[0].as_py() == expected


def test_nan_and_infinities_to_integers_are_null() -> None:
    got = run("try_cast(x as int64)", pa.array([NAN, INF, -INF, 2.0**63, -(2.0**63), 2.5]))
    assert got.to_pylist() == [None, None, None, None, -(2**63), 2]


def test_out_of_range_decimals_are_null() -> None:
    column = pa.array([D("127.9"), D("128.0"), D("-128.9"), D("-129.0"), None],
                      pa.decimal128(10, 1))
    assert run("try_cast(x as int8)", column).to_pylist() == [127, None, -128, None, None]


def test_decimals_of_a_negative_scale_to_integers() -> None:
    """A decimal of scale -2 holds multiples of 100: -100 and 100 are int8s, -200 and
    300 are not (the bounds were -129 + 100 and 128 - 100, which the type cannot hold:
    the cast raised)."""
    column = pa.array([D("-1E+2"), D("0E+2"), D("1E+2"), D("-2E+2"), D("3E+2"), None],
                      pa.decimal128(5, -2))
    assert run("try_cast(x as int8)", column).to_pylist() == [-100, 0, 100, None, None, None]
    assert run("try_cast(x as uint8)", column).to_pylist() == [None, 0, 100, None, None, None]


def test_its_argument_still_raises() -> None:
    """try_cast nulls its own conversion, not an error of the value it converts (Spark
    too): a decimal sum past 38 digits is an error still."""
    column = pa.array([D("9" * 38)], pa.decimal128(38, 0))
    with pytest.raises(pa.ArrowInvalid):
        run("try_cast(x + 1 as int64)", column)


@pytest.mark.parametrize(("text", "fragment"), [
    ("try_cast(x as int65)", "unknown type 'int65'; did you mean 'int64'?"),
    ("try_cast(x)", "try_cast needs a target type: try_cast(x as float64)"),
    ("try_cast(x, 1 as int64)", "try_cast() takes exactly 1 argument (got 2): "
                                "try_cast(x as float64)"),
    ("abs(x as int64)", "'as' is only allowed in cast(x as type) and try_cast(x as type)"),
])
def test_syntax_errors_as_cast_s(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(fragment)):
        parse_expression(text)


@pytest.mark.parametrize("column", [pa.array([{"a": 1}]), pa.array([[1, 2]]),
                                    pa.array([dt.date(2026, 1, 1)])])
def test_what_cast_cannot_convert_is_refused_as_it_plans(column: pa.Array) -> None:
    schema = pa.schema([("x", column.type)])
    target = "int64" if not pa.types.is_date(column.type) else "float64"
    with pytest.raises(ExpressionError,
                       match=re.escape(f"cannot try_cast {column.type} to {target}")):
        expression_type(f"try_cast(x as {target})", schema)


# text Arrow's parsers might take, built from the characters they look at
_PIECES = st.sampled_from(["0", "1", "2", "5", "9", "00", "12", "-", "+", ".", "e", "E", "x",
                           "X", "f", "F", "a", " ", ":", "T", "Z", "nan", "inf", "inity",
                           "true", "false", "2024-02-29", "2026-11-", "-28", " 23", ":59",
                           ".123456", "7", "0x", "9223372036854775807", "2147483648",
                           "18446744073709551615", "65535", "255", "128"])
texts = st.lists(_PIECES, max_size=6).map("".join)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(texts, min_size=1, max_size=8), target=st.sampled_from(TARGETS))
def test_random_text_is_parsed_as_cast_parses_it(values: list[str], target: str) -> None:
    """The patterns take exactly the text Arrow's parser takes (a pattern that took
    more would raise, one that took less would null a value cast converts)."""
    column = pa.array(values)
    got = run(f"try_cast(x as {target})", column)
    for at, (value, have) in enumerate(zip(column, got)):
        assert same(have, cast_alone(column, at, target)), f"{value!r} as {target}: {have!r}"


@settings(max_examples=150, deadline=None, database=None)
@given(year=st.integers(0, 9999), month=st.integers(0, 13), day=st.integers(0, 32),
       time=st.sampled_from(["", " 00", "T23", " 10:05", " 23:59:59", "T00:00:00.5",
                             " 12:30:15.123456", " 12:30:15.1234567", " 24:00", " 12:60"]))
def test_random_days_are_parsed_as_cast_parses_them(year: int, month: int, day: int,
                                                    time: str) -> None:
    value = f"{year:04d}-{month:02d}-{day:02d}"
    for text, target in ((value, "date"), (value + time, "timestamp")):
        got = run(f"try_cast(x as {target})", pa.array([text]))
        assert same(got[0], cast_alone(pa.array([text]), 0, target)), text


def test_february_29th_of_every_year() -> None:
    """A leap year's only: every fourth year, not a century's but every fourth one's."""
    days = [f"{year:04d}-02-29" for year in range(10_000)]
    got = run("try_cast(x as date)", pa.array(days))
    leap = [year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) for year in range(10_000)]
    # year 0 (Python has none) is a leap year of the proleptic calendar
    assert got.is_valid().to_pylist() == leap
    kept = [d for d, is_leap in zip(days, leap) if is_leap]
    assert got.drop_null().equals(run("cast(x as date)", pa.array(kept)))
