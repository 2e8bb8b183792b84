"""``try_cast(x as T)``: a cast that gives null where the expression language's ``cast``
would stop the run, vectorised in Arrow compute (no Python per row).

``cast`` (``operators/expressions.py``) is Arrow's cast with float, time and decimal
truncation allowed: it raises on a text that does not parse, an integer or a decimal
past the target's range, a date or a timestamp past ``timestamp[us]``'s, and bytes that
are no UTF-8; a NaN, an infinity or a float past the target's range gives an unspecified
integer. ``try_cast`` gives ``cast``'s value wherever that is defined, and null for all
of those, as Spark SQL's ``try_cast`` (its ANSI ``CAST`` that returns NULL instead of
an error) and DuckDB's do. The rows a cast would refuse are found first, by range checks
on numbers and one regular expression on text that accepts what Arrow's parser does,
and made null before the cast: a null is never converted.

Example::

    >>> import pyarrow as pa, pyarrow.compute as pc, pyarrow.dataset as ds
    >>> table = pa.table({"s": ["12", "12a", None, "0x1F"]})
    >>> expr = try_cast(pc.field("s"), pa.string(), pa.int64(), pc.CastOptions(pa.int64()))
    >>> ds.dataset(table).to_table(columns={"n": expr}).column("n").to_pylist()
    [12, None, None, 31]
"""

from __future__ import annotations

import decimal

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["covers", "try_cast", "within"]

# Text Arrow's parsers accept (arrow/util/value_parsing.h), as RE2 patterns: ASCII
# digits only, no surrounding spaces, no '+' before an integer; an integer may also be
# hexadecimal, at most as many digits as the type has nibbles (its bits: 0xff is an
# int8's -1).
_FLOAT = (r"^[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
          r"|(?i:nan|inf|infinity))$")
_BOOL = r"^(?i:true|false|1|0)$"
# a day of the calendar (proleptic Gregorian, years 0000-9999): February 29th of a leap
# year only, the 31st of the long months only
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DAY = (r"(?:[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
        r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
        rf"|{_LEAP_YEAR}-02-29)")
_DATE = rf"^{_DAY}$"
# a time of day after it, to the hour, minute, second or microsecond; no zone (the
# target has none: Arrow refuses one)
_TIMESTAMP = (rf"^{_DAY}(?:[ T](?:[01][0-9]|2[0-3])"
              r"(?::[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?)?)?$")
# well-formed UTF-8 (no surrogates, nothing past U+10FFFF), matched byte by byte: RE2
# reads binary values as Latin-1, one character a byte
_UTF8 = (r"^(?:[\x00-\x7F]|[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]"
         r"|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}|\xED[\x80-\x9F][\x80-\xBF]"
         r"|\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}"
         r"|\xF4[\x80-\x8F][\x80-\xBF]{2})*$")
_US_PER = {"s": 1_000_000, "ms": 1_000}  # microseconds in a second, in a millisecond
_INT64_MAX = 2**63 - 1
_EXACT = decimal.Context(prec=100)  # a decimal256's 76 digits and a bound's, unrounded


def cast_options(target: pa.DataType) -> pc.CastOptions:
    """The expressions' cast to ``target`` (Spark's): a float, time or decimal that does
    not fit the target's precision is truncated toward zero, not refused."""
    return pc.CastOptions(target, allow_float_truncate=True, allow_time_truncate=True,
                          allow_decimal_truncate=True)


def covers(target: pa.DataType) -> bool:
    """Whether ``try_cast`` to ``target`` finds every value the cast would refuse or make
    up: the expressions' cast types (integers, float32, float64, string, bool, date32,
    timestamp[us]); not a decimal (a value past its precision), another timestamp's
    unit or zone, a date64 or a time."""
    return pa.types.is_integer(target) or target in (
        pa.float32(), pa.float64(), pa.string(), pa.bool_(), pa.date32(), pa.timestamp("us"))


def try_cast(expr: pc.Expression, source: pa.DataType, target: pa.DataType,
             options: pc.CastOptions, refused_only: bool = False) -> pc.Expression:
    """``expr`` (of type ``source``) cast to ``target`` as ``options`` say, null where the
    cast would raise or give an unspecified value (``refused_only``: where it would
    raise; a float's unspecified integer kept)."""
    plain = _plain(source)
    if plain != source:
        expr, source = expr.cast(plain), plain
    valid = _convertible(expr, source, target)
    if refused_only and pa.types.is_floating(source) and pa.types.is_integer(target):
        valid = None
    if valid is None:
        return expr.cast(options=options)
    kept = pc.if_else(valid, expr, pc.scalar(pa.scalar(None, source)))
    return kept.cast(options=options)


def _plain(t: pa.DataType) -> pa.DataType:
    """A dictionary's values, a view's plain kind: what if_else and the regular
    expressions take."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if t == pa.string_view():
        return pa.string()
    if t == pa.binary_view() or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    return t


def _text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def _convertible(expr: pc.Expression, source: pa.DataType, target: pa.DataType
                 ) -> pc.Expression | None:
    """True where ``expr``'s value converts to ``target``, false where the cast would
    refuse it (null where it is null); None where every value converts."""
    if source == target:
        return None
    if _text(source):
        return _parses(expr, source, target)
    if pa.types.is_integer(target):
        if pa.types.is_integer(source):
            return within(expr, source, *_range(target))
        if pa.types.is_floating(source):
            # truncated toward zero; NaN fails both tests
            whole = pc.trunc(expr.cast(pa.float64()))
            least, most = _range(target)
            return pc.and_kleene(pc.greater_equal(whole, pc.scalar(float(least))),
                                 pc.less(whole, pc.scalar(float(most + 1))))
        if pa.types.is_decimal(source):
            # truncated toward zero: from the first value of the type past least - 1 to
            # the last short of most + 1 (a step of the point after it, or, of a negative
            # scale, the multiple of the step there: both values the type holds)
            least, most = _range(target)
            step = decimal.Decimal(1).scaleb(-source.scale, _EXACT)
            return within(expr, source, _multiple(least - 1, step, decimal.ROUND_FLOOR, 1),
                          _multiple(most + 1, step, decimal.ROUND_CEILING, -1))
    if target == pa.timestamp("us"):
        # a timestamp[us] holds ±292,000 years; coarser units and dates hold more
        if pa.types.is_date32(source):
            per, unit = 86_400_000_000, pa.int32()
        elif pa.types.is_date64(source):
            per, unit = 1_000, pa.int64()
        elif pa.types.is_timestamp(source) and source.unit in _US_PER:
            per, unit = _US_PER[source.unit], pa.int64()
        else:
            return None
        return within(expr.cast(unit), unit, -(_INT64_MAX // per), _INT64_MAX // per)
    return None


def _multiple(bound: int, step: decimal.Decimal, rounding: str, beyond: int
              ) -> decimal.Decimal:
    """The multiple of ``step`` next to ``bound``, ``beyond`` steps past the one it
    rounds to (floor then +1: the first above it; ceiling then -1: the last below)."""
    steps = _EXACT.divide(decimal.Decimal(bound), step).to_integral_value(rounding, _EXACT)
    return _EXACT.multiply(_EXACT.add(steps, beyond), step)


def _range(t: pa.DataType) -> tuple[int, int]:
    if pa.types.is_unsigned_integer(t):
        return 0, 2**t.bit_width - 1
    return -(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1


def within(expr: pc.Expression, t: pa.DataType, least: int | decimal.Decimal,
            most: int | decimal.Decimal) -> pc.Expression | None:
    """``least <= expr <= most`` for an integer or decimal ``expr`` of type ``t``,
    compared in ``t`` (a bound between its least and greatest values is one of them);
    None where every value of ``t`` is within."""
    if pa.types.is_decimal(t):
        high = decimal.Decimal(10**t.precision - 1).scaleb(-t.scale, _EXACT)
        low = -high
    else:
        low, high = _range(t)
    tests = []
    if least > low:
        tests.append(pc.greater_equal(expr, pc.scalar(pa.scalar(least, t))))
    if most < high:
        tests.append(pc.less_equal(expr, pc.scalar(pa.scalar(most, t))))
    if not tests:
        return None
    return tests[0] if len(tests) == 1 else pc.and_kleene(*tests)


def _matches(expr: pc.Expression, pattern: str) -> pc.Expression:
    return pc.match_substring_regex(expr, pattern=pattern)


def _parses(expr: pc.Expression, source: pa.DataType, target: pa.DataType
            ) -> pc.Expression | None:
    """Where text ``expr`` is one Arrow parses as a ``target`` that holds it."""
    if pa.types.is_integer(target):
        return _matches(expr, _integer_text(target))
    if pa.types.is_floating(target):
        return _matches(expr, _FLOAT)
    if pa.types.is_boolean(target):
        return _matches(expr, _BOOL)
    if pa.types.is_date32(target):
        return _matches(expr, _DATE)
    if target == pa.timestamp("us"):
        return _matches(expr, _TIMESTAMP)
    if pa.types.is_string(target) and (pa.types.is_binary(source)
                                       or pa.types.is_large_binary(source)):
        return _matches(expr, _UTF8)
    return None


def _integer_text(target: pa.DataType) -> str:
    """A pattern of the text Arrow parses as an integer of type ``target``: decimal
    digits (a '-' before them for a signed type) of a number in its range, however many
    zeros lead; or '0x' and at most as many hexadecimal digits as it has nibbles."""
    least, most = _range(target)
    width = len(str(most))  # -least has as many digits
    shorter = f"[0-9]{{1,{width - 1}}}"
    decimal_digits = rf"0*(?:{shorter}|{_at_most(str(most))})"
    if least < 0:
        decimal_digits += rf"|-0*(?:{shorter}|{_at_most(str(-least))})"
    return rf"^(?:{decimal_digits}|0[xX][0-9a-fA-F]{{1,{target.bit_width // 4}}})$"


def _at_most(bound: str) -> str:
    """A pattern of the numbers of as many digits as ``bound`` up to it: its first i
    digits, a smaller one, then any (as many as it has after that), for each i; or it."""
    shapes = []
    for i, digit in enumerate(bound):
        if digit != "0":
            smaller = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            rest = len(bound) - i - 1
            shapes.append(bound[:i] + smaller + (f"[0-9]{{{rest}}}" if rest else ""))
    return "|".join([*shapes, bound])
