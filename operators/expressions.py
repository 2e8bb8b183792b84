"""Safe SQL-like expressions for pipeline YAML, compiled to ``pyarrow.compute.Expression``.

Used for ``filter:`` predicates on ``read_parquet`` (pushed down into ``pyarrow.dataset`` scans,
where row groups are pruned with Parquet statistics: on floating-point columns only by the
parts of a filter that a NaN cannot make true, ``nan_safe_filter``) and for ``derive:`` value
expressions.
The text is parsed by a ``lark`` LALR grammar into a small syntax tree and then translated
node by node into ``pc.field`` / ``pc.scalar`` / compute-function calls; user text is never
handed to ``eval``, ``exec`` or Python's ``ast``, and nothing in it is executed.

Example::

    >>> import pyarrow as pa, pyarrow.dataset as ds
    >>> table = pa.table({"tenure": [0, 3, None], "region": ["eu", "test", "us"]})
    >>> kept = ds.dataset(table).to_table(filter=parse_filter("tenure >= 0 and region != 'test'"))
    >>> kept.column("region").to_pylist()  # 'test' fails the test, null >= 0 is null
    ['eu']
    >>> derived = ds.dataset(table).to_table(columns={"half": parse_expression("tenure / 2")})
    >>> derived.column("half").to_pylist()
    [0.0, 1.5, None]

Language
--------
* Literals: ``12``, ``1_000``, ``1.5``, ``.5``, ``1e-3`` (an integer is an int64, or a
  uint64 from 2**63 to 2**64 - 1: ``u64 = 18446744073709551615``); strings in ``'...'`` or ``"..."``
  (backslash escapes ``\\n \\t \\r \\0 \\\\ \\' \\"``, ``\\u`` + 4 hex digits,
  ``\\U`` + 8; any other backslash is kept as is, and a doubled quote ``'it''s'`` stands
  for one); ``true`` / ``false``; ``null``;
  ``date '2026-11-28'`` (``date32``); ``timestamp '2026-11-28 10:00:00'`` (``timestamp[us]``,
  or ``timestamp[us, tz=UTC]`` when the text has a zone such as ``Z`` or ``+01:00``); a
  text literal that meets a date or a timestamp (compared with one: ``=``... ``between``,
  ``in``; an argument of ``days_between``..., ``nullif``, or a value of ``if``,
  ``coalesce``, ``least``, ``greatest`` beside a date or time column or literal) is the
  date or time it writes, as Spark SQL, DuckDB and PostgreSQL read it (``day >=
  '2026-01-01'``, ``days_between(day, '${ds}')``; beside dates a date alone; a time
  without a zone beside zoned times is their zone's clock, an error where a clock change
  skips or repeats it).
* Columns: bare names (``tenure``, ``größe``) or backticks for anything else
  (```plan=basic```, a doubled backtick stands for one). Keywords (``and or not in is null
  true false between like date timestamp as``) are case-insensitive and need backticks to be
  used as column names: ```date```.
* Operators, loosest first: ``or``; ``and``; ``not``; comparisons ``= == != <> < <= > >=``,
  ``is [not] null``, ``[not] in (v, ...)``, ``[not] between a and b`` (inclusive),
  ``[not] like 'pat%'`` (``%`` any run, ``_`` one character); ``+ -``; ``* / %``;
  unary ``-``; ``**`` / ``^`` (right-associative, binds tighter than unary minus on its left:
  ``-2 ** 2`` is -4). Comparisons do not chain (``a < b < c`` is an error).
* Functions (case-insensitive): ``log``/``ln``, ``log1p``, ``log2``, ``log10``, ``exp``,
  ``sqrt``, ``abs``, ``floor``, ``ceil``, ``round(x[, ndigits])``, ``pow``/``power(x, y)``,
  ``least(...)``, ``greatest(...)``, ``coalesce(...)``, ``if(cond, a, b)``/``if_else``,
  ``nullif(a, b)`` (null where a equals b, else a: ``x / nullif(n, 0)``),
  ``is_nan(x)``, ``lower``, ``upper``, ``length``, ``year``, ``month``, ``day``, ``hour``,
  ``minute``, ``quarter``, ``day_of_week`` (Monday 0 .. Sunday 6), ``day_of_year``,
  ``week`` (ISO), ``days_between(a, b)`` / ``hours_between`` / ``minutes_between`` /
  ``seconds_between`` (the day, hour... boundaries from a to b, as SQL's datediff: b later
  is positive; a date counts as its midnight, a zoned time by its UTC clock; exact for
  every date and time of every unit, and a count past int64, of seconds between times
  some 10**11 years apart, an error),
  ``cast(x as type)`` with type one of int8..int64, uint8..uint64, int/integer (int64),
  float32, float64/double/float, string/str/utf8, bool/boolean, date, timestamp;
  ``try_cast(x as type)``, the same types: null where cast would stop the run.

Semantics
---------
Null handling is pyarrow's, which is SQL's three-valued logic: arithmetic and comparisons
with a null operand give null, ``and``/``or`` are Kleene (``false and null`` is false,
``true or null`` is true), ``not null`` is null, and a filter keeps only rows whose predicate
is true, so rows where it is null are dropped (``x != 'a'`` drops rows where x is null).
``x in (...)`` follows SQL too: null when x is null, or when x is not in the list and the
list holds a null. ``x = null`` is rejected (it is never true); write ``x is null``.
NaN is a value, not null: ``x is null`` is false for NaN, ``NaN = NaN`` is false.

``/`` is always true division in float64 (integers are converted first) and division by
zero follows IEEE (``inf``/``-inf``/``nan``); ``**``/``pow``, the math functions (log,
exp, sqrt...) and ``+ - * %`` with a float literal also work in float64 (Arrow alone casts
a literal it can hold to the other side's type: int32 times 1.5 ran in float32).

Compiled with the rows' schema (every step does), every sub-expression is typed as it
compiles, and values meet where Arrow's own conversions would raise as the rows are read,
or lose digits:

* A number literal compared with an integer or decimal value (a column or any expression
  of one) is compared exactly, as the number written (``0.1`` is one tenth, not the float
  nearest it), in the value's type: a fraction moves to the neighbour the comparison keeps
  (``i < 1.5`` is ``i <= 1``, ``i = 1.5`` and ``i in (1.5)`` are false), a number past the
  type's range decides every row (``u64 > -1`` is true, ``u8 = 1000`` false; null where
  the value is). Compared with a float, a number literal works in float64; so does a
  float literal without the schema.
* An integer literal in arithmetic meets a decimal in its kind (``amount + 1``) and a
  uint64 as a uint64 (``u8 + 100`` stays Arrow's int16); an integer meeting a float
  converts to float64 unchecked; a uint64 compared with a signed integer is compared
  exactly (in decimal(20, 0)), as are two decimals whose common type is past 38 digits.
* The values of ``if`` (its branches), ``coalesce``, ``least`` and ``greatest`` take one
  type: decimals (and integers beside them) the decimal that holds each, the most digits
  before and after the point, at most 38 in all (a value too large for the rest is an
  error); integers beside a float float64; a uint64 beside a signed integer decimal(20, 0);
  an integer literal the type of the values it meets where it holds it (``coalesce(u64,
  0)`` is a uint64). Timestamps with and without a time zone are refused there, as in
  comparisons; times of several units or zones (a nanosecond column, a literal's
  microseconds; a Paris column, a literal with ``Z``) are the finest unit in the first's
  zone, each the instant it was, and so compare.
* A value that can raise (a cast, rounding, decimal arithmetic) is computed for the
  rows that need it: the branch of ``if`` a row takes, ``coalesce``'s values up to its
  first present one, the operands of ``and``/``or`` up to the one that decides the row;
  ``if(s != '', cast(s as int64), 0)`` does not stop at ''. (Arrow computes every
  argument of a function: those columns read as null for the other rows.) A guard reads
  the values before it as they are where they do not raise, and as null where they would
  (a cast as try_cast; of a cast or arithmetic, coalesce's guard reads the nulls of its
  columns), not as guarded themselves: each guard holds those before it once, and an
  Arrow expression, which computes each part it holds, grows with the square of the
  values that can raise, not twice a value (a ``coalesce`` of ten casts runs as fast as
  unguarded, an ``and`` of ten casts 10-20 times slower: they ran 30 and 80-100 times
  slower).
* Decimal ``+ - * %`` keep at most 38 digits and the digits after the point Arrow's rules
  give them (``d38 + 1`` of a decimal(38, 1) is a decimal(38, 1)), as DuckDB and Spark
  do: a value that does not fit is an error, never another value; a product with more
  than 38 digits after the point is refused as it plans.
* ``floor``/``ceil``/``round`` of a decimal value keep its type, and a value that rounds
  past its precision is an error (``value_failure`` names the column, the value and the
  wider type to cast it to first; Arrow alone gave 0; of a decimal256(76, s), which has no
  wider type to round in, they are refused as it plans); of an integer, ``floor``/``ceil``
  are float64 (converted unchecked) and ``round`` keeps the integer type.

Text functions and ``like`` decode dictionary columns.
``%`` is a floored modulo (the result has the sign of the divisor, as in Python) that keeps
integer types; ``x % 0`` is null. ``+ - *`` on integers wrap on overflow (unchecked
kernels), as do all math functions (``log(0)`` is ``-inf``, ``sqrt(-1)`` is ``nan``).
``round`` rounds half to even. ``least``/``greatest`` skip nulls (and NaN, unless every
value is NaN). ``if(cond, a, b)`` is null where ``cond`` is null. ``cast`` truncates floats
toward zero and timestamps to dates (NaN/inf/out-of-range floats give unspecified integers);
integer overflow and unparsable strings raise when the expression is evaluated.

``try_cast(x as type)`` (Spark SQL's and DuckDB's) gives cast's value wherever cast gives
one, and null where cast would raise (a text that does not parse, an integer or a decimal
past the type's range, a date or a coarse timestamp past ``timestamp[us]``'s, bytes that
are no UTF-8) or gives an unspecified value (NaN, an infinity or a float past the range
to an integer): ``try_cast('12a' as int64)``, ``try_cast(1e20 as int32)`` and
``try_cast(300 as uint8)`` are null, ``try_cast(1.5 as int64)`` is 1 and
``try_cast(-1.5 as int64)`` -1 (toward zero, as cast and Spark's ANSI cast). Text is
read as cast reads it (``operators/try_cast.py``): no spaces around it, no '+' before an
integer, hexadecimal integers (``0x1F``) taken; Spark trims spaces, takes '+', and
refuses hexadecimal, and saturates a double of 2**63 to int64's greatest (null here).
It nulls its own conversion only: an error of its argument (``try_cast(d * 10 as
int64)`` of a decimal past 38 digits) is an error still, and a type cast cannot convert
(a struct) is refused as the expression plans. Its checks need the value's type:
compiled without the rows' schema (as a step's parameters are checked, never run), it
is cast.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import difflib
import functools
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from operators.arrays import is_text
from operators.base import arrow_message
from operators.try_cast import cast_options, try_cast, within

# lark is imported where an expression is parsed: a run without one never imports it
# (~15-20 ms of start-up)
if TYPE_CHECKING:
    from lark import Lark, Token, Tree
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

__all__ = [
    "ExpressionError",
    "check_filter",
    "expression_type",
    "failure_hint",
    "value_failure",
    "nan_safe_filter",
    "parse_expression",
    "parse_filter",
    "referenced_columns",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ExpressionError(ValueError):
    """What was wrong, at which character of which text, and what would fix it.

    Example::

        >>> try:
        ...     parse_expression("tenure +")
        ... except ExpressionError as err:
        ...     print(err)
        unexpected end of expression; expected a value at column 9 in 'tenure +'
    """

    text: str
    position: int
    message: str

    def __init__(self, message: str, text: str, position: int = -1) -> None:
        super().__init__(message, text, position)
        self.message = message
        self.text = text
        self.position = position

    def __str__(self) -> str:
        """One line: the message, the 1-based column and the text."""
        if self.position < 0:
            return f"{self.message} in {self.text!r}"
        return f"{self.message} at column {self.position + 1} in {self.text!r}"

    def pretty(self) -> str:
        """Several lines: the message, then the offending line of text with a caret under it.

        Example::

            >>> print(ExpressionError("unexpected character '$'", "a > $1", 4).pretty())
            unexpected character '$'
              a > $1
                  ^
        """
        if self.position < 0:
            return f"{self.message}\n  {self.text}"
        start = self.text.rfind("\n", 0, self.position) + 1
        end = self.text.find("\n", self.position)
        line = self.text[start : len(self.text) if end < 0 else end]
        # Keep the caret aligned when the line holds tabs.
        prefix = "".join("\t" if ch == "\t" else " " for ch in self.text[start : self.position])
        return f"{self.message}\n  {line}\n  {prefix}^"


# --------------------------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------------------------

_GRAMMAR = r"""
?start: expr

?expr: or_expr
?or_expr: and_expr (OR and_expr)*
?and_expr: not_expr (AND not_expr)*
?not_expr: NOT not_expr                        -> not_op
         | predicate
?predicate: sum
          | sum COMP_OP sum                    -> comparison
          | sum IS NULL                        -> is_null
          | sum IS NOT NULL                    -> is_not_null
          | sum IN LPAR expr_list RPAR         -> in_list
          | sum NOT IN LPAR expr_list RPAR     -> not_in_list
          | sum BETWEEN sum AND sum            -> between
          | sum NOT BETWEEN sum AND sum        -> not_between
          | sum LIKE sum                       -> like
          | sum NOT LIKE sum                   -> not_like
expr_list: expr (COMMA expr)*
?sum: product ((PLUS | MINUS) product)*
?product: unary ((STAR | SLASH | PERCENT) unary)*
?unary: MINUS unary                            -> neg
      | PLUS unary                             -> pos
      | power
?power: atom (POW unary)?
?atom: INT                                     -> int_lit
     | FLOAT                                   -> float_lit
     | STRING                                  -> string_lit
     | TRUE                                    -> true_lit
     | FALSE                                   -> false_lit
     | NULL                                    -> null_lit
     | DATE STRING                             -> date_lit
     | TIMESTAMP STRING                        -> timestamp_lit
     | IDENT                                   -> column
     | QIDENT                                  -> column
     | IDENT LPAR [arg (COMMA arg)*] RPAR      -> call
     | LPAR expr RPAR                          -> paren
arg: expr
   | expr AS type_name                         -> cast_arg
type_name: IDENT | DATE | TIMESTAMP

OR: "or"i
AND: "and"i
NOT: "not"i
IS: "is"i
IN: "in"i
NULL: "null"i
TRUE: "true"i
FALSE: "false"i
BETWEEN: "between"i
LIKE: "like"i
DATE: "date"i
TIMESTAMP: "timestamp"i
AS: "as"i
COMP_OP: "==" | "!=" | "<>" | "<=" | ">=" | "=" | "<" | ">"
PLUS: "+"
MINUS: "-"
POW: "**" | "^"
STAR: "*"
SLASH: "/"
PERCENT: "%"
LPAR: "("
RPAR: ")"
COMMA: ","
INT: /[0-9](_?[0-9])*/
FLOAT.2: /([0-9](_?[0-9])*)?\.[0-9](_?[0-9])*([eE][+-]?[0-9]+)?/
       | /[0-9](_?[0-9])*\.([eE][+-]?[0-9]+)?/
       | /[0-9](_?[0-9])*[eE][+-]?[0-9]+/
STRING: /'(?:[^'\\]|\\[\s\S]|'')*'/ | /"(?:[^"\\]|\\[\s\S]|"")*"/
IDENT: /[^\W\d]\w*/
QIDENT: /`(?:[^`]|``)*`/
%ignore /\s+/
"""

_KEYWORDS = frozenset(
    ["and", "or", "not", "in", "is", "null", "true", "false", "between", "like", "date",
     "timestamp", "as"]
)
_KEYWORD_TOKENS = frozenset(k.upper() for k in _KEYWORDS)
# Tokens that can only start a value: a parser state accepting them is waiting for a value.
_LITERAL_TOKENS = frozenset(["INT", "FLOAT", "STRING", "IDENT", "QIDENT"])
_IDENT_RE = re.compile(r"[^\W\d]\w*")
_MAX_SHOWN_NAMES = 12


@functools.cache
def _parser() -> Lark:
    """The LALR parser, built on first use (keeps ``import`` cheap)."""
    from lark import Lark

    return Lark(
        _GRAMMAR,
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
    )


# --------------------------------------------------------------------------------------------
# Syntax tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Literal:
    pos: int
    kind: str  # int | float | string | bool | null | date | timestamp
    value: object
    arrow_type: pa.DataType
    # a number as written (1.1 is 11/10, not the float nearest it): what a comparison with
    # an integer or decimal value compares exactly
    exact: decimal.Decimal | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Column:
    pos: int
    name: str


@dataclass(frozen=True, slots=True, eq=False)
class _Neg:
    pos: int
    operand: _Node


@dataclass(frozen=True, slots=True, eq=False)
class _Not:
    pos: int
    operand: _Node


@dataclass(frozen=True, slots=True, eq=False)
class _BinOp:
    pos: int  # of the operator
    op: str  # canonical: + - * / % ** = != < <= > >=
    symbol: str  # as written, for messages
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True, eq=False)
class _Logic:
    pos: int  # of the first operator
    op: str  # and | or
    operands: tuple[_Node, ...]


@dataclass(frozen=True, slots=True, eq=False)
class _IsNull:
    pos: int
    operand: _Node
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class _InList:
    pos: int  # of 'in'
    operand: _Node
    items: tuple[_Node, ...]
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class _Between:
    pos: int
    operand: _Node
    low: _Node
    high: _Node
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class _Like:
    pos: int
    operand: _Node
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class _Call:
    pos: int  # of the function name
    name: str  # canonical lower-case name
    written: str  # as written
    args: tuple[_Node, ...]
    cast_type: str | None = None


_Node = (
    _Literal | _Column | _Neg | _Not | _BinOp | _Logic | _IsNull | _InList | _Between | _Like
    | _Call
)


def _children(node: _Node) -> tuple[_Node, ...]:
    """Direct sub-nodes of ``node`` in textual order."""
    if isinstance(node, _Neg | _Not | _IsNull | _Like):
        return (node.operand,)
    if isinstance(node, _BinOp):
        return (node.left, node.right)
    if isinstance(node, _Logic):
        return node.operands
    if isinstance(node, _InList):
        return (node.operand, *node.items)
    if isinstance(node, _Between):
        return (node.operand, node.low, node.high)
    if isinstance(node, _Call):
        return node.args
    return ()


# a date as a ${ds} puts it in without quotes: 2026-11-28, the number 1987
_DATE_WRITTEN = re.compile(r"\d{4}\s*-\s*\d{1,2}\s*-\s*\d{1,2}")


def _unquoted_date(node: _Node, text: str) -> tuple[str, int] | None:
    """The date ``node`` writes without quotes (a subtraction of three integers:
    2026-11-28), as ``text`` has it, and the number it is; None where it is none."""
    if not (isinstance(node, _BinOp) and node.op == "-" and isinstance(node.left, _BinOp)
            and node.left.op == "-"):
        return None
    year, month, day = node.left.left, node.left.right, node.right
    if not all(isinstance(p, _Literal) and p.kind == "int" for p in (year, month, day)):
        return None
    assert isinstance(year, _Literal) and isinstance(month, _Literal)
    assert isinstance(day, _Literal)
    found = _DATE_WRITTEN.match(text, year.pos)
    if found is None or not year.pos < day.pos < found.end() or (
            text[found.end():][:1].isdigit()):
        return None
    return found.group(0), int(year.value) - int(month.value) - int(day.value)  # type: ignore[call-overload]


def unquoted_dates(text: str) -> list[tuple[str, int]]:
    """The dates ``text`` writes without quotes, as it writes them, each with the number
    it is: a subtraction (2026-11-28 is 1987), where ``date '2026-11-28'`` is a date and
    ``'2026-11-28'`` text.

    Example::

        >>> unquoted_dates("days_between(signup, 2026-11-28)")
        [('2026-11-28', 1987)]
    """
    node = _parse(_require_text(text))
    return [found for sub in _walk(node) if (found := _unquoted_date(sub, text))]


def _walk(node: _Node) -> Iterator[_Node]:
    """All nodes, parents before children, children in textual order (iterative)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(_children(current)))


# --------------------------------------------------------------------------------------------
# Parsing: text -> lark tree -> syntax tree
# --------------------------------------------------------------------------------------------

_COMPARISONS = {"==": "=", "=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">",
                ">=": ">="}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def _unquote_string(token: Token, text: str) -> str:
    """Decode a quoted string token: doubled quotes and backslash escapes."""
    raw = str(token)
    quote, body = raw[0], raw[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == quote:  # the grammar guarantees it is doubled
            out.append(quote)
            i += 2
        elif ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            elif nxt in "uU":
                width = 4 if nxt == "u" else 8
                digits = body[i + 2 : i + 2 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise ExpressionError(
                        f"bad escape '\\{nxt}' in string; it needs {width} hex digits, "
                        f"e.g. '\\{nxt}{'0' * (width - 2)}e9'",
                        text,
                        token.start_pos + 1 + i,
                    )
                code = int(digits, 16)
                if code > 0x10FFFF:
                    raise ExpressionError(
                        f"bad escape '\\{nxt}{digits}' in string; not a unicode character",
                        text,
                        token.start_pos + 1 + i,
                    )
                out.append(chr(code))
                i += 2 + width
            else:  # unknown escapes are kept verbatim (useful for LIKE patterns: '\%')
                out.append(ch + nxt)
                i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _column_name(token: Token) -> str:
    raw = str(token)
    if token.type == "QIDENT":
        return raw[1:-1].replace("``", "`")
    return raw


def _date_literal(token: Token, text: str) -> _Literal:
    return _date_value(_unquote_string(token, text), text, token.start_pos)


def _date_value(value: str, text: str, pos: int) -> _Literal:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError("expected YYYY-MM-DD")
        parsed = _dt.date.fromisoformat(value.strip())
    except ValueError as exc:
        raise ExpressionError(
            f"invalid date {value!r} ({exc}); write date 'YYYY-MM-DD', e.g. date '2026-11-28'",
            text,
            pos,
        ) from None
    return _Literal(pos, "date", parsed, pa.date32())


def _timestamp_literal(token: Token, text: str) -> _Literal:
    return _timestamp_value(_unquote_string(token, text), text, token.start_pos)


def _timestamp_value(value: str, text: str, pos: int) -> _Literal:
    try:
        if not re.match(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError("expected YYYY-MM-DD HH:MM:SS")
        parsed = _dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ExpressionError(
            f"invalid timestamp {value!r} ({exc}); write timestamp 'YYYY-MM-DD HH:MM:SS', "
            "optionally with a zone like 'Z' or '+02:00'",
            text,
            pos,
        ) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(_dt.UTC)
        return _Literal(pos, "timestamp", parsed, pa.timestamp("us", tz="UTC"))
    return _Literal(pos, "timestamp", parsed, pa.timestamp("us"))


def _time_text(node: _Node, other: pa.DataType | None, text: str) -> _Node:
    """A text literal that meets a date or a timestamp (``day >= '2026-01-01'``,
    ``days_between(day, '2026-01-01')``, as Spark SQL, DuckDB and PostgreSQL take it):
    the date or timestamp it writes, read as
    ``date '...'`` / ``timestamp '...'`` read theirs (a time without a zone beside zoned
    times in their zone, as Spark reads it in its session's); any other node as it is."""
    if not (isinstance(node, _Literal) and node.kind == "string" and other is not None):
        return node
    value = str(node.value)
    if pa.types.is_date(other):
        if re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", value) is None:
            raise ExpressionError(
                f"{value!r} meets dates here and is no date: write one as 'YYYY-MM-DD' (a "
                "time of day meets timestamps: cast the dates as timestamp first)",
                text, node.pos)
        return _date_value(value, text, node.pos)
    if not pa.types.is_timestamp(other):
        return node
    written = _timestamp_value(value, text, node.pos)
    if other.tz is None or written.arrow_type.tz is not None:
        return written
    # a time without a zone beside zoned times: that clock time in their zone
    naive = pa.scalar(written.value, pa.timestamp("us"))
    try:
        instant = pc.assume_timezone(naive, other.tz).as_py().astimezone(_dt.UTC)
    except pa.ArrowInvalid as exc:  # in a clock change's gap, or twice in its overlap
        when = ("twice in zone {} (its clocks go back over it)" if "ambiguous" in str(exc)
                else "no time in zone {} (its clocks skip it)")
        raise ExpressionError(
            f"{value!r} is {when.format(repr(other.tz))}; write the time with its offset, "
            "e.g. '2026-10-25 02:30:00+02:00'", text, node.pos) from None
    return _Literal(node.pos, "timestamp", instant, pa.timestamp("us", tz="UTC"))


def _tok(tree: Tree, index: int) -> Token:
    from lark import Token

    child = tree.children[index]
    assert isinstance(child, Token)
    return child


def _build(tree: Tree | Token, text: str) -> _Node:
    """Translate one lark tree into a syntax-tree node."""
    from lark import Token, Tree

    if isinstance(tree, Token):  # pragma: no cover - the grammar always wraps tokens
        raise ExpressionError(f"unexpected {tree!s}", text, tree.start_pos)
    kind = tree.data
    kids = tree.children

    if kind == "int_lit":
        tok = _tok(tree, 0)
        value = int(str(tok).replace("_", ""))
        return _Literal(tok.start_pos, "int", value, pa.int64(), decimal.Decimal(value))
    if kind == "float_lit":
        tok = _tok(tree, 0)
        written = str(tok).replace("_", "")
        return _Literal(tok.start_pos, "float", float(written), pa.float64(),
                        decimal.Decimal(written))
    if kind == "string_lit":
        tok = _tok(tree, 0)
        return _Literal(tok.start_pos, "string", _unquote_string(tok, text), pa.string())
    if kind in ("true_lit", "false_lit"):
        return _Literal(_tok(tree, 0).start_pos, "bool", kind == "true_lit", pa.bool_())
    if kind == "null_lit":
        return _Literal(_tok(tree, 0).start_pos, "null", None, pa.null())
    if kind == "date_lit":
        lit = _date_literal(_tok(tree, 1), text)
        return _Literal(_tok(tree, 0).start_pos, lit.kind, lit.value, lit.arrow_type)
    if kind == "timestamp_lit":
        lit = _timestamp_literal(_tok(tree, 1), text)
        return _Literal(_tok(tree, 0).start_pos, lit.kind, lit.value, lit.arrow_type)
    if kind == "column":
        tok = _tok(tree, 0)
        return _Column(tok.start_pos, _column_name(tok))
    if kind == "paren":
        return _build(kids[1], text)
    if kind == "pos":
        return _build(kids[1], text)
    if kind == "neg":
        operand = _build(kids[1], text)
        pos = _tok(tree, 0).start_pos
        if isinstance(operand, _Literal) and operand.kind in ("int", "float"):
            return _Literal(pos, operand.kind, -operand.value, operand.arrow_type,  # type: ignore[operator]
                            -operand.exact)  # type: ignore[operator]
        return _Neg(pos, operand)
    if kind == "not_op":
        return _Not(_tok(tree, 0).start_pos, _build(kids[1], text))
    if kind in ("or_expr", "and_expr"):
        operands = tuple(_build(k, text) for k in kids[::2])
        return _Logic(_tok(tree, 1).start_pos, "or" if kind == "or_expr" else "and", operands)
    if kind in ("sum", "product"):
        node = _build(kids[0], text)
        for i in range(1, len(kids), 2):
            op_tok = _tok(tree, i)
            node = _BinOp(op_tok.start_pos, str(op_tok), str(op_tok), node,
                          _build(kids[i + 1], text))
        return node
    if kind == "power":
        op_tok = _tok(tree, 1)
        return _BinOp(op_tok.start_pos, "**", str(op_tok), _build(kids[0], text),
                      _build(kids[2], text))
    if kind == "comparison":
        op_tok = _tok(tree, 1)
        return _BinOp(op_tok.start_pos, _COMPARISONS[str(op_tok)], str(op_tok),
                      _build(kids[0], text), _build(kids[2], text))
    if kind in ("is_null", "is_not_null"):
        return _IsNull(_tok(tree, 1).start_pos, _build(kids[0], text), kind == "is_not_null")
    if kind in ("in_list", "not_in_list"):
        negated = kind == "not_in_list"
        list_tree = kids[4 if negated else 3]
        assert isinstance(list_tree, Tree)
        items = tuple(_build(k, text) for k in list_tree.children[::2])
        return _InList(_tok(tree, 1).start_pos, _build(kids[0], text), items, negated)
    if kind in ("between", "not_between"):
        negated = kind == "not_between"
        off = 1 if negated else 0
        return _Between(_tok(tree, 1).start_pos, _build(kids[0], text),
                        _build(kids[2 + off], text), _build(kids[4 + off], text), negated)
    if kind in ("like", "not_like"):
        negated = kind == "not_like"
        like_pos = _tok(tree, 2 if negated else 1).start_pos
        pattern = _build(kids[-1], text)
        if not (isinstance(pattern, _Literal) and pattern.kind == "string"):
            raise ExpressionError(
                "the pattern after 'like' must be a quoted string, e.g. x like 'abc%'",
                text,
                _first_pos(pattern),
            )
        return _Like(like_pos, _build(kids[0], text), str(pattern.value), negated)
    if kind == "call":
        return _build_call(tree, text)
    raise AssertionError(f"unhandled grammar rule {kind}")  # pragma: no cover


def _build_call(tree: Tree, text: str) -> _Call:
    from lark import Tree

    name_tok = _tok(tree, 0)
    written = str(name_tok)
    name = written.lower()
    if name not in _FUNCTIONS:
        raise ExpressionError(_unknown_function_message(written), text, name_tok.start_pos)
    arg_trees = [k for k in tree.children[2:-1] if isinstance(k, Tree)]
    spec = _FUNCTIONS[name]
    if len(arg_trees) < spec.min_args or (
        spec.max_args is not None and len(arg_trees) > spec.max_args
    ):
        raise ExpressionError(
            f"{written}() {_arity_text(spec.min_args, spec.max_args)} (got {len(arg_trees)})"
            + (f": {name}(x as float64)" if name in _CASTS else ""),
            text,
            name_tok.start_pos,
        )
    args: list[_Node] = []
    cast_type: str | None = None
    for arg_tree in arg_trees:
        args.append(_build(arg_tree.children[0], text))
        if arg_tree.data == "cast_arg":
            if name not in _CASTS:
                raise ExpressionError(
                    "'as' is only allowed in cast(x as type) and try_cast(x as type)", text,
                    _tok(arg_tree, 1).start_pos,
                )
            type_tok = arg_tree.children[2].children[0]
            cast_type = str(type_tok).lower()
            if cast_type not in _CAST_TYPES:
                raise ExpressionError(
                    _unknown_name_message("type", str(type_tok), _CAST_TYPES),
                    text,
                    type_tok.start_pos,
                )
    if name in _CASTS and cast_type is None:
        raise ExpressionError(
            f"{written} needs a target type: {name}(x as float64)", text, name_tok.start_pos
        )
    if name in _CASTS:
        return _Call(name_tok.start_pos, name, written, tuple(args), cast_type)
    return _Call(name_tok.start_pos, spec.canonical, written, tuple(args))


def _arity_text(low: int, high: int | None) -> str:
    def n(k: int) -> str:
        return f"{k} argument" + ("" if k == 1 else "s")

    if high is None:
        return f"takes at least {n(low)}"
    if low == high:
        return f"takes exactly {n(low)}"
    return f"takes {low} or {n(high)}" if high == low + 1 else f"takes {low} to {n(high)}"


def _first_pos(node: _Node) -> int:
    """Character offset where ``node``'s text starts."""
    return min(n.pos for n in _walk(node))


def quote_name(name: str) -> str:
    """How to write column ``name`` in an expression."""
    if _IDENT_RE.fullmatch(name) and name.lower() not in _KEYWORDS:
        return name
    return "`" + name.replace("`", "``") + "`"


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate most like ``name``: same name up to case, else a close spelling."""
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _shown(names: Sequence[str]) -> str:
    more = ", ..." if len(names) > _MAX_SHOWN_NAMES else ""
    return ", ".join(names[:_MAX_SHOWN_NAMES]) + more


def _unknown_name_message(what: str, name: str, known: Sequence[str] | dict[str, object]) -> str:
    names = sorted(known)
    match = _closest(name, names)
    if match is not None:
        return f"unknown {what} {name!r}; did you mean {match!r}?"
    return f"unknown {what} {name!r}; known {what}s: {_shown(names)}"


def _unknown_column_message(name: str, columns: Sequence[str]) -> str:
    match = _closest(name, columns)
    if match is not None:
        written = quote_name(match)
        suggestion = repr(match) if written == match else written
        return f"unknown column {name!r}; did you mean {suggestion}?"
    return (f"unknown column {name!r} (a text value goes in quotes: {name!r}); the columns "
            f"are: {_shown([quote_name(c) for c in columns])}")


def _unknown_function_message(name: str) -> str:
    match = _closest(name, sorted(_FUNCTIONS))
    if match is not None:
        return f"unknown function {name!r}; did you mean {match!r}?"
    return f"unknown function {name!r}; known functions: {function_names()}"


def function_names() -> str:
    """Every function an expression may call, in order (what `sluice ops derive` lists,
    and an unknown function's error: all of them, not the first dozen)."""
    return ", ".join(sorted(_FUNCTIONS))


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> _Node:
    """Parse ``text`` into a syntax tree (cached; trees are immutable)."""
    if not text.strip():
        raise ExpressionError("empty expression; write e.g. tenure > 0", text, 0)
    from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    # the error is raised outside the except blocks: lark's exception (its parser's
    # state, which holds modules) must not be its __context__, or the error cannot be
    # pickled where tblib pickles exception chains (a Dask worker's error to the client)
    error: ExpressionError | None = None
    try:
        tree = _parser().parse(text)
    except UnexpectedCharacters as exc:
        error = _unexpected_character(exc, text)
    except UnexpectedToken as exc:
        error = _unexpected_token(exc, text)
    except UnexpectedEOF:  # pragma: no cover - LALR reports '$END' tokens instead
        error = ExpressionError(
            "unexpected end of expression; expected a value", text, len(text.rstrip()))
    except LarkError:  # pragma: no cover - defensive
        error = ExpressionError("could not parse expression", text, -1)
    if error is not None:
        raise error
    try:
        return _build(tree, text)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply", text, -1) from None


# --------------------------------------------------------------------------------------------
# Syntax error messages
# --------------------------------------------------------------------------------------------

_CHAR_HINTS = {
    "&": "; use 'and' to combine conditions",
    "|": "; use 'or' to combine conditions",
    "!": "; use 'not' to negate, or '!=' for not equal",
    ".": "; attribute access is not supported (quote a column with dots in backticks: `a.b`)",
    "[": "; indexing is not supported",
    "]": "; indexing is not supported",
    "{": "; braces are not supported; use ( and )",
    "}": "; braces are not supported; use ( and )",
    ";": "; write one expression, joining conditions with 'and' / 'or'",
    ":": "; write one expression (a derive step is 'name: expression' in the YAML itself)",
    "~": "; use 'not' to negate",
}


def _unexpected_character(exc: UnexpectedCharacters, text: str) -> ExpressionError:
    pos = exc.pos_in_stream
    char = text[pos]
    if char in "'\"":
        return ExpressionError(f"unterminated string; add the closing {char}", text, pos)
    if char == "`":
        return ExpressionError("unterminated `quoted name`; add the closing `", text, pos)
    before = _tokens_before(text, pos) if char == "[" else []
    if before and before[-1].type == "IN":  # Python's list: x in ['a', 'b']
        return ExpressionError("unexpected character '['; write the list of 'in' in "
                               "parentheses: in ('a', 'b')", text, pos)
    return ExpressionError(f"unexpected character {char!r}{_CHAR_HINTS.get(char, '')}", text, pos)


def _describe_token(tok: Token) -> str:
    value = str(tok)
    if tok.type == "$END":
        return "end of expression"
    if tok.type == "IDENT":
        return f"name {value!r}"
    if tok.type == "QIDENT":
        return f"column {value}"
    if tok.type in ("INT", "FLOAT"):
        return f"number {value}"
    if tok.type == "STRING":
        return "string " + (value if len(value) <= 30 else value[:27] + "...")
    return f"'{value}'"


def _describe_expected(accepts: set[str]) -> str:
    parts: list[str] = []
    if accepts & _LITERAL_TOKENS:
        parts.append("a value")
    elif accepts == {"STRING"}:
        parts.append("a quoted string")
    elif accepts <= {"NULL", "NOT"} and "NULL" in accepts:
        parts.append("'null' or 'not null'")
    elif accepts and accepts <= {"IN", "BETWEEN", "LIKE"}:
        parts.append("'in', 'between' or 'like'")
    elif accepts == {"LPAR"}:
        parts.append("'('")
    if "AND" in accepts and not accepts & {"OR", "COMP_OP", "$END"}:
        parts.append("'and'")  # between x and ...
    elif accepts & {"COMP_OP", "STAR", "SLASH", "PERCENT", "POW", "AND", "OR", "IS"}:
        parts.append("an operator")
    if "RPAR" in accepts:
        parts.append("')'")
    if "COMMA" in accepts:
        parts.append("','")
    if "$END" in accepts:
        parts.append("the end of the expression")
    if not parts:  # pragma: no cover - every parser state maps to something above
        return "something else"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _tokens_before(text: str, pos: int) -> list[Token]:
    """The tokens of ``text`` that start before ``pos`` (lexing stops at the first bad char)."""
    from lark.exceptions import LarkError

    tokens: list[Token] = []
    try:
        for tok in _parser().lex(text):
            if tok.start_pos >= pos:
                break
            tokens.append(tok)
    except LarkError:
        pass
    return tokens


def _unexpected_token(exc: UnexpectedToken, text: str) -> ExpressionError:
    tok = exc.token
    at_end = tok.type == "$END"
    pos = len(text.rstrip()) if at_end else tok.start_pos
    accepts = set(exc.accepts or exc.expected)
    expected = _describe_expected(accepts)
    before = _tokens_before(text, pos)
    previous = before[-1] if before else None
    wants_value = bool(accepts & _LITERAL_TOKENS)

    if previous is not None and previous.type in ("DATE", "TIMESTAMP") and accepts == {"STRING"}:
        word = str(previous).lower()
        example = "'2026-11-28'" if word == "date" else "'2026-11-28 10:00:00'"
        return ExpressionError(
            f"'{previous}' starts a {word} literal and must be followed by a quoted {word} "
            f"like {word} {example}; for a column named {word} write `{previous}`",
            text,
            pos,
        )
    if tok.type == "COMP_OP" and wants_value and previous is not None and (
        previous.type == "COMP_OP"
    ):
        glued = f"{previous}{tok}" if previous.end_pos == tok.start_pos else f"{previous} {tok}"
        fix = {"=>": ">=", "=<": "<=", "= =": "==", "=!": "!=", "><": "<>"}.get(glued)
        return ExpressionError(
            f"'{previous}' is a comparison and must be followed by a value, not '{tok}'"
            + (f"; did you mean '{fix}'?" if fix else ""),
            text,
            pos,
        )
    if tok.type == "COMP_OP" and not wants_value and "COMP_OP" not in accepts:
        return ExpressionError(
            f"'{tok}' is a comparison and comparisons can't be chained; join them with 'and', "
            "e.g. 'a < b and b < c'",
            text,
            pos,
        )
    message = f"unexpected {_describe_token(tok)}; expected {expected}"
    if tok.type in _KEYWORD_TOKENS and wants_value:
        message += f" ('{tok}' is a keyword; for a column with that name write `{tok}`)"
    elif tok.type == "LPAR" and previous is not None and previous.type == "QIDENT":
        message += " (function names are not quoted)"
    elif at_end and "RPAR" in accepts and not wants_value:
        opener = _unclosed_paren(before)
        if opener is not None:
            message += f" (the '(' at column {opener + 1} is not closed)"
    return ExpressionError(message, text, pos)


def _unclosed_paren(tokens: list[Token]) -> int | None:
    stack: list[int] = []
    for tok in tokens:
        if tok.type == "LPAR":
            stack.append(tok.start_pos)
        elif tok.type == "RPAR" and stack:
            stack.pop()
    return stack[-1] if stack else None


# --------------------------------------------------------------------------------------------
# Functions and types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Function:
    canonical: str
    min_args: int
    max_args: int | None
    build: Callable[..., pc.Expression]
    result: str  # number | string | bool | any : for the schema-free filter check
    numeric_args: bool = False  # the arguments are converted to float64 (pow, log)
    time_args: bool = False  # the arguments are dates or timestamps (days_between)
    text_args: bool = False  # the arguments are text (a dictionary of it decoded: lower)
    values_from: int | None = None  # the arguments from here on are values of one type (if)


def _float64(expr: pc.Expression, node: _Node) -> pc.Expression:
    """``expr`` as float64: literals directly, everything else by an (unchecked) cast."""
    if isinstance(node, _Literal) and node.kind in ("int", "float"):
        return pc.scalar(pa.scalar(float(node.value), pa.float64()))  # type: ignore[arg-type]
    if isinstance(node, _Literal) and node.kind == "null":
        return pc.scalar(pa.scalar(None, pa.float64()))
    return expr.cast(pa.float64(), safe=False)


def _unary(fn: Callable[..., pc.Expression]) -> Callable[..., pc.Expression]:
    return lambda nodes, exprs: fn(exprs[0])


def _float_unary(fn: Callable[..., pc.Expression]) -> Callable[..., pc.Expression]:
    """``fn`` of its argument in float64: Arrow's own conversion of an integer is
    checked (int64 past 2**53 raised) and keeps float32 (exp(88.8) overflowed)."""
    return lambda nodes, exprs: fn(_float64(exprs[0], nodes[0]))


def _text(expr: pc.Expression) -> pc.Expression:
    """Text as plain strings: Arrow's string kernels take no dictionary (a hive
    partition's or a dictionary-encoded column's text)."""
    return expr.cast(pa.string())


def _text_unary(fn: Callable[..., pc.Expression]) -> Callable[..., pc.Expression]:
    return lambda nodes, exprs: fn(_text(exprs[0]))


def _build_round(nodes: Sequence[_Node], exprs: Sequence[pc.Expression]) -> pc.Expression:
    if len(exprs) == 1:
        return pc.round(exprs[0])
    digits = nodes[1]
    if isinstance(digits, _Literal) and digits.kind == "int":
        return pc.round(exprs[0], ndigits=int(digits.value))  # type: ignore[call-overload]
    return pc.round_binary(exprs[0], exprs[1])


def _build_pow(nodes: Sequence[_Node], exprs: Sequence[pc.Expression]) -> pc.Expression:
    return pc.power(_float64(exprs[0], nodes[0]), _float64(exprs[1], nodes[1]))


_FUNCTIONS: dict[str, _Function] = {}


def _register(names: str, fn: _Function) -> None:
    for name in names.split():
        _FUNCTIONS[name] = fn


for _names, _fn in (("log ln", pc.ln), ("log1p", pc.log1p), ("log2", pc.log2),
                    ("log10", pc.log10), ("exp", pc.exp), ("sqrt", pc.sqrt)):
    _register(_names, _Function(_names.split()[0], 1, 1, _float_unary(_fn), "number",
                                numeric_args=True))
_register("abs", _Function("abs", 1, 1, _unary(pc.abs), "number"))
_register("floor", _Function("floor", 1, 1, _unary(pc.floor), "number"))
_register("ceil", _Function("ceil", 1, 1, _unary(pc.ceil), "number"))
_register("round", _Function("round", 1, 2, _build_round, "number"))
_register("pow power", _Function("pow", 2, 2, _build_pow, "number", numeric_args=True))
_register("least", _Function("least", 1, None, lambda n, e: pc.min_element_wise(*e), "any",
                             values_from=0))
_register("greatest", _Function("greatest", 1, None, lambda n, e: pc.max_element_wise(*e), "any",
                                values_from=0))
_register("coalesce", _Function("coalesce", 1, None, lambda n, e: pc.coalesce(*e), "any",
                                values_from=0))
_register("if if_else", _Function("if", 3, 3, lambda n, e: pc.if_else(*e), "any",
                                  values_from=1))
_register("nullif", _Function("nullif", 2, 2, lambda n, e: e[0], "any"))  # ``_Compiler._call``
_register("is_nan", _Function("is_nan", 1, 1, _unary(pc.is_nan), "bool"))
_register("lower", _Function("lower", 1, 1, _text_unary(pc.utf8_lower), "string",
                            text_args=True))
_register("upper", _Function("upper", 1, 1, _text_unary(pc.utf8_upper), "string",
                            text_args=True))
_register("length", _Function("length", 1, 1, _text_unary(pc.utf8_length), "number",
                             text_args=True))
_register("year", _Function("year", 1, 1, _unary(pc.year), "number"))
_register("month", _Function("month", 1, 1, _unary(pc.month), "number"))
_register("day", _Function("day", 1, 1, _unary(pc.day), "number"))
_register("hour", _Function("hour", 1, 1, _unary(pc.hour), "number"))
_register("minute", _Function("minute", 1, 1, _unary(pc.minute), "number"))
_register("quarter", _Function("quarter", 1, 1, _unary(pc.quarter), "number"))
_register("day_of_week dayofweek", _Function("day_of_week", 1, 1, _unary(pc.day_of_week),
                                             "number"))
_register("day_of_year dayofyear", _Function("day_of_year", 1, 1, _unary(pc.day_of_year),
                                             "number"))
_register("week", _Function("week", 1, 1, _unary(pc.iso_week), "number"))


_VIEW_VALUES = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}

_RAISING_CALLS = frozenset(["cast", "round", "floor", "ceil"])
"""Functions that raise on some values (a text that is no number, a decimal past its
digits): guarded where a row may not need them (``_Compiler._under``)."""


def _null_outside(guard: pc.Expression, expr: pc.Expression, t: pa.DataType | None
                  ) -> pc.Expression:
    """``expr`` where ``guard`` is true, a null of type ``t`` (unknown: Arrow's null type)
    elsewhere: the rows a guarded part is not computed for."""
    return pc.if_else(guard, expr, pc.scalar(pa.scalar(None, t or pa.null())))


def _joined(guard: pc.Expression | None, more: pc.Expression) -> pc.Expression:
    """The rows of both guards (``guard`` None: every row)."""
    return more if guard is None else pc.and_kleene(guard, more)


def _between(kernel: Callable[..., pc.Expression]) -> Callable[..., pc.Expression]:
    """``kernel`` of two times as timestamp[us]: any units, dates as their midnight, zoned
    times by their UTC clock (Arrow's kernels want one type on both sides). Compiled
    without the rows' schema only: with it, ``_boundaries`` count exactly."""
    def build(nodes: Sequence[_Node], exprs: Sequence[pc.Expression]) -> pc.Expression:
        return kernel(*(e.cast(pa.timestamp("us")) for e in exprs))
    return build


_NANOSECONDS = {"days": 86_400 * 10**9, "hours": 3_600 * 10**9, "minutes": 60 * 10**9,
                "seconds": 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
"""The length of a day, hour... and of each timestamp unit, in nanoseconds."""


def _boundaries(expr: pc.Expression, t: pa.DataType, unit: str) -> pc.Expression:
    """The ``unit`` (days, hours...) boundaries from 1970-01-01 to each value of ``expr``,
    a date or a timestamp of type ``t`` (a zoned one by its UTC clock): its count of its
    own units, floored to whole ``unit``s, as int64. Exact for every value of every type,
    where Arrow's kernels need one unit on both sides and a cast to it raised (a date past
    timestamp[us]'s range, nanoseconds that are no whole microsecond)."""
    if pa.types.is_date32(t):
        count, own = expr.cast(pa.int32()).cast(pa.int64()), _NANOSECONDS["days"]
    elif pa.types.is_date64(t):
        count, own = expr.cast(pa.int64()), _NANOSECONDS["ms"]
    elif pa.types.is_timestamp(t):
        count, own = expr.cast(pa.int64()), _NANOSECONDS[t.unit]
    else:  # a null: nothing to count
        return expr.cast(pa.int64())
    length = _NANOSECONDS[unit]
    if own >= length:  # a day is 24 hours: the product of a date fits (2**31 * 86,400)
        return count if own == length else pc.multiply(count, pc.scalar(own // length))
    per = pc.scalar(length // own)
    truncated = pc.divide(count, per)  # toward zero: one less below it, where it cut
    cut_below = pc.less(pc.subtract(count, pc.multiply(truncated, per)), pc.scalar(0))
    return pc.subtract(truncated, cut_below.cast(pa.int64()))


for _unit, _kernel in (("days", pc.days_between), ("hours", pc.hours_between),
                       ("minutes", pc.minutes_between), ("seconds", pc.seconds_between)):
    _register(f"{_unit}_between", _Function(f"{_unit}_between", 2, 2, _between(_kernel),
                                            "number", time_args=True))
_register("cast", _Function("cast", 1, 1, lambda n, e: e[0], "any"))
_register("try_cast", _Function("try_cast", 1, 1, lambda n, e: e[0], "any"))
_CASTS = frozenset(["cast", "try_cast"])

_CAST_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "int": pa.int64(),
    "integer": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "string": pa.string(),
    "str": pa.string(),
    "utf8": pa.string(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}

_ARROW_COMPARISON = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1
_UNITS = ["s", "ms", "us", "ns"]  # timestamp units, coarsest first


# --------------------------------------------------------------------------------------------
# Compilation: syntax tree -> pc.Expression
# --------------------------------------------------------------------------------------------


def _balanced(fn: Callable[..., pc.Expression], exprs: Sequence[pc.Expression]) -> pc.Expression:
    """Combine many expressions with a binary ``fn`` as a balanced tree (shallow nesting)."""
    items = list(exprs)
    while len(items) > 1:
        paired = [fn(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            paired.append(items[-1])
        items = paired
    return items[0]


_REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def _like_regex(pattern: str) -> str:
    """A LIKE pattern as an anchored regex: ``%`` any run, ``_`` one character, a
    backslash makes the next character literal (a trailing one is itself)."""
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "%":
            out.append(".*")
            continue
        if ch == "_":
            out.append(".")
            continue
        if ch == "\\":
            ch = next(chars, "\\")
        out.append("\\" + ch if ch in _REGEX_SPECIAL else ch)
    return "(?s)^" + "".join(out) + "$"


def _value_set(items: Sequence[_Literal], text: str, pos: int) -> tuple[pa.DataType, list]:
    """The arrow type and the non-null values of an all-literal ``in`` list."""
    values = [item for item in items if item.kind != "null"]
    types = {item.arrow_type for item in values}
    kinds = {item.kind for item in values}
    if not values:
        return pa.null(), []
    if kinds == {"int"} and any(item.value > _INT64_MAX for item in values):  # type: ignore[operator]
        # past int64 (a uint64's upper half): uint64 where every value is one
        arrow_type = (pa.uint64() if all(item.value >= 0 for item in values)  # type: ignore[operator]
                      else pa.float64())
    elif kinds <= {"int", "float"}:
        arrow_type = pa.int64() if kinds == {"int"} else pa.float64()
    elif len(types) == 1:
        arrow_type = next(iter(types))
    else:
        names = sorted({"number" if k in ("int", "float") else k for k in kinds})
        if names == ["timestamp"]:
            names = ["timestamps with and without a time zone"]
        raise ExpressionError(
            f"the values after 'in' mix {' and '.join(names)}; use values of one type",
            text,
            pos,
        )
    if arrow_type == pa.float64():
        return arrow_type, [float(item.value) for item in values]  # type: ignore[arg-type]
    return arrow_type, [item.value for item in values]


def _number_kind(t: pa.DataType | None) -> str | None:
    if t is not None and pa.types.is_integer(t):
        return "int"
    if t is not None and pa.types.is_floating(t):
        return "float"
    if t is not None and pa.types.is_decimal(t):
        return "decimal"
    return None


def _number_literal(node: _Node) -> bool:
    return isinstance(node, _Literal) and node.kind in ("int", "float")


def _float_literal(node: _Node) -> bool:
    return isinstance(node, _Literal) and node.kind == "float"


# A literal's exact value scaled to a type's step, whatever its exponent (1e-400 is not 0).
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_MIRRORED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_DECIMAL128_DIGITS, _DECIMAL256_DIGITS = 38, 76
_SIGNED = {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}
_UNSIGNED = {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}


def _steps(t: pa.DataType) -> tuple[int, int, int]:
    """An integer's or a decimal's values as whole steps of its last digit: the scale, the
    least and the greatest number of steps (a decimal(5, 2) is -99999..99999 hundredths)."""
    if pa.types.is_decimal(t):
        most = 10**t.precision - 1
        return t.scale, -most, most
    if pa.types.is_unsigned_integer(t):
        return 0, 0, 2**t.bit_width - 1
    return 0, -(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1


def _step_value(steps: int, t: pa.DataType) -> int | decimal.Decimal:
    """``steps`` steps of ``t`` as the Python value of ``t`` (a Decimal of a decimal)."""
    return decimal.Decimal(steps).scaleb(-t.scale, _EXACT) if pa.types.is_decimal(t) else steps


def _step_scalar(steps: int, t: pa.DataType) -> pc.Expression:
    """``steps`` steps of ``t`` as a literal of type ``t``."""
    return pc.scalar(pa.scalar(_step_value(steps, t), t))


def _steps_of(exact: decimal.Decimal, t: pa.DataType) -> int | None:
    """``exact`` in whole steps of ``t``; None where ``t`` has no such value (1.5 of an
    integer, 1000 of a decimal(5, 2), -1 of a uint64)."""
    scale, least, most = _steps(t)
    scaled = exact.scaleb(scale, _EXACT)
    if not least <= scaled <= most or scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def _integer_digits(t: pa.DataType) -> pa.DataType:
    """The decimal(p, 0) that holds every value of integer type ``t`` (int32: 10 digits)."""
    _, least, most = _steps(t)
    return pa.decimal128(len(str(max(-least, most))), 0)


def _common_decimal(types: Sequence[pa.DataType]) -> pa.DataType:
    """The decimal type each of ``types`` (decimals; integers as decimal(p, 0)) converts to
    without loss, as SQL engines widen them: the most digits after the point and the most
    before it. Past the 38 digits of a decimal128 (Spark's most too) it keeps 38 and the
    digits after the point: a value too large for the rest is an error as it converts."""
    decimals = [t if pa.types.is_decimal(t) else _integer_digits(t) for t in types]
    scale = max(t.scale for t in decimals)
    whole = max(t.precision - t.scale for t in decimals)
    if any(pa.types.is_decimal256(t) for t in decimals):
        return pa.decimal256(min(whole + scale, _DECIMAL256_DIGITS), scale)
    return pa.decimal128(min(whole + scale, _DECIMAL128_DIGITS), scale)


def _common_integer(types: Sequence[pa.DataType], literals: Sequence[int]) -> pa.DataType:
    """The integer type holding each of ``types`` and ``literals``, as Arrow widens (int8 and
    uint8 in int16); a uint64 beside a signed value in decimal(20, 0), which holds both
    (Arrow's int64 raised past 2**63)."""
    signed = any(pa.types.is_signed_integer(t) for t in types) or any(v < 0 for v in literals)
    bits = max((t.bit_width * (2 if signed and pa.types.is_unsigned_integer(t) else 1)
                for t in types), default=8)
    while bits <= 64:
        common = (_SIGNED if signed else _UNSIGNED)[bits]
        _, least, most = _steps(common)
        if all(least <= v <= most for v in literals):
            return common
        bits *= 2
    return pa.decimal128(20, 0)


# functions whose value is null exactly where an argument is (where they do not raise)
_STRICT_CALLS = frozenset(["cast", "round", "floor", "ceil", "abs", "log", "log1p", "log2",
                           "log10", "exp", "sqrt", "pow", "is_nan", "lower", "upper", "length",
                           "year", "month", "day", "hour", "minute", "quarter", "day_of_week",
                           "day_of_year", "week", "days_between", "hours_between",
                           "minutes_between", "seconds_between"])


def _strict_leaves(node: _Node) -> list[_Node] | None:
    """The columns and null literals whose nulls are ``node``'s, where it does not raise:
    it is null exactly where one of them is (a cast, arithmetic, a comparison of such
    values); None where it is not so (coalesce, if, 'is null', 'and', ``x % y`` - null
    where y is 0 -, try_cast)."""
    leaves: list[_Node] = []
    for n in _walk(node):
        if isinstance(n, _Column) or (isinstance(n, _Literal) and n.kind == "null"):
            leaves.append(n)
        elif isinstance(n, _BinOp) and n.op == "%":
            divisor = n.right
            if not (isinstance(divisor, _Literal) and divisor.kind in ("int", "float")
                    and divisor.value):
                return None
        elif not (isinstance(n, _Literal | _Neg | _Not | _BinOp | _Like)
                  or (isinstance(n, _Call) and n.name in _STRICT_CALLS)):
            return None
    return leaves


class _Unsafe(Exception):
    """A value that can raise with no form that gives null instead (``_decider``)."""


def _bound_type(expr: pc.Expression, empty: pa.Table) -> pa.DataType:
    """The type ``expr`` evaluates to over ``empty``'s columns (Arrow binds it on no rows)."""
    import pyarrow.dataset as ds

    return ds.dataset(empty).to_table(columns={"_": expr}).schema.types[0]


class _Compiler:
    """Translate a syntax tree into a ``pc.Expression``; optionally record every node's
    result. ``types``: the types of the columns the text names, where known. With them
    every sub-expression is typed as it compiles (``_type``), and operands meet where
    Arrow's own conversions would raise as the rows are read or lose digits: an integer
    literal takes the kind of the value it meets, a comparison with a number literal is
    decided exactly, values of one function (if, coalesce) get one type, decimal
    arithmetic stays within 38 digits, and rounding a decimal has room for its carry."""

    def __init__(self, text: str, trace: list[tuple[_Node, pc.Expression]] | None = None,
                 types: dict[str, pa.DataType] | None = None) -> None:
        self.text = text
        self.trace = trace
        self.types = types or {}
        self._exprs: dict[int, pc.Expression] = {}
        self._node_types: dict[int, pa.DataType | None] = {}
        self._empty: pa.Table | None = None
        # the rows whose values matter where a branch not taken everywhere compiles
        # (``_under``): its columns read as null elsewhere, so its errors are theirs only
        self._guard: pc.Expression | None = None
        # compiling a value as the guards after it read it (``_decider``): null where it
        # would raise, no guard of its own
        self._safe = False
        # text literals read as the dates or times they write (``_read_as_times``)
        self._as: dict[int, _Node] = {}

    def _result_type(self, expr: pc.Expression) -> pa.DataType | None:
        """The type ``expr`` has over the known columns; None where it names another column
        or Arrow refuses it (the type check says why)."""
        if self._empty is None:
            self._empty = pa.schema(list(self.types.items())).empty_table()
        try:
            return _bound_type(expr, self._empty)
        except (pa.ArrowException, TypeError, ValueError):
            return None

    def _type(self, node: _Node) -> pa.DataType | None:
        """The type ``node`` compiled to, a dictionary's values for a dictionary; None
        without the schema, and for a literal (it takes the kind of what it meets)."""
        if not self.types or isinstance(node, _Literal):
            return None
        if id(node) not in self._node_types:
            t = (self.types.get(node.name) if isinstance(node, _Column)
                 else self._result_type(self._exprs[id(node)]))
            self._node_types[id(node)] = (t.value_type if t is not None
                                          and pa.types.is_dictionary(t) else t)
        return self._node_types[id(node)]

    def to_expr(self, node: _Node) -> pc.Expression:
        """``node``'s expression (a text literal's read as the date or time it stands
        for, ``_read_as_times``)."""
        if self._safe:  # not the node's own expression: not recorded, nor traced
            return self._compile(self._written(node))
        expr = self._compile(self._written(node))
        self._exprs[id(node)] = expr
        if self.trace is not None:
            self.trace.append((node, expr))
        return expr

    def _compile(self, node: _Node) -> pc.Expression:
        if isinstance(node, _Literal):
            if node.kind == "int" and not _INT64_MIN <= node.value <= _INT64_MAX:  # type: ignore[operator]
                if 0 <= node.value <= _UINT64_MAX:  # type: ignore[operator]
                    # a uint64's upper half (`u64 = 18446744073709551615`): compared with
                    # a column exactly, as any integer literal
                    return pc.scalar(pa.scalar(node.value, pa.uint64()))
                raise ExpressionError(
                    f"integer {node.value} does not fit in int64 or uint64; write it as a "
                    "float, e.g. 1e20",
                    self.text,
                    node.pos,
                )
            return pc.scalar(pa.scalar(node.value, node.arrow_type))
        if isinstance(node, _Column):
            field = pc.field(node.name)
            if self._guard is None:
                return field
            t = self.types.get(node.name)
            # if_else has no kernel for a dictionary or a view: their values, plainly
            plain = (t.value_type if pa.types.is_dictionary(t) else _VIEW_VALUES.get(t)
                     ) if t is not None else None
            if plain is not None:
                field, t = field.cast(plain), plain
            return _null_outside(self._guard, field, t)
        if isinstance(node, _Neg):
            return pc.negate(self.to_expr(node.operand))
        if isinstance(node, _Not):
            return pc.invert(self.to_expr(node.operand))
        if isinstance(node, _Logic):
            fn = pc.and_kleene if node.op == "and" else pc.or_kleene
            # an operand after one that decides the row (false for and, true for or) is
            # not needed there
            operands, guard, guarding = [], None, not self._safe
            for operand in node.operands:
                alone = guard is None and self._guard is None
                operands.append(self._under(guard, operand))
                # an operand that is no true/false decides nothing (the type check says so)
                guarding = guarding and self._boolean(operand) and operand is not node.operands[-1]
                if not guarding:
                    guard = None
                    continue
                truth = self._truth(operand, self._decider(operand, operands[-1], alone))
                undecided = (pc.coalesce(truth, True) if node.op == "and"
                             else pc.invert(pc.coalesce(truth, False)))
                guard = _joined(guard, undecided)
            return _balanced(fn, operands)
        if isinstance(node, _BinOp):
            return self._binop(node)
        if isinstance(node, _IsNull):
            operand = self.to_expr(node.operand)
            return pc.is_valid(operand) if node.negated else pc.is_null(operand)
        if isinstance(node, _InList):
            result = self._in_list(node)
            return pc.invert(result) if node.negated else result
        if isinstance(node, _Between):
            operand = self.to_expr(node.operand)
            low_node, high_node = self._compared_with(node.operand, (node.low, node.high))
            low, high = self.to_expr(node.low), self.to_expr(node.high)
            result = pc.and_kleene(self._compare(">=", node.operand, low_node, operand, low),
                                   self._compare("<=", node.operand, high_node, operand, high))
            return pc.invert(result) if node.negated else result
        if isinstance(node, _Like):
            operand = _text(self.to_expr(node.operand))
            if "\\" in node.pattern:
                # Arrow's match_like misreads an escaped backslash beside a leading or
                # trailing %: its starts/ends-with shortcut keeps the escape character
                # ('a\\' like '%\\\\' is false there); a regex does not
                result = pc.match_substring_regex(operand, pattern=_like_regex(node.pattern))
            else:
                result = pc.match_like(operand, pattern=node.pattern)
            return pc.invert(result) if node.negated else result
        if isinstance(node, _Call):
            return self._call(node)
        raise AssertionError(f"unhandled node {node!r}")  # pragma: no cover

    def _under(self, guard: pc.Expression | None, node: _Node, within: bool = False
               ) -> pc.Expression:
        """``node`` compiled for the rows where ``guard`` is true (a branch of ``if``, a
        later value of ``coalesce``, an operand after the one that decides an ``and``):
        where it can raise on a value (a cast, decimal arithmetic, rounding), its columns
        are null elsewhere, so that a row it is not taken for cannot stop the run
        (``if(s != '', cast(s as int64), 0)``). Elsewhere as compiled alone, so that
        filters keep their form for the files' statistics. ``within``: ``guard`` is false
        wherever the one it is under is (it need not be joined to it)."""
        if guard is None or self._safe or not self._may_raise(node):
            return self.to_expr(node)
        outer = self._guard
        self._guard = guard if within else _joined(outer, guard)
        try:
            return self.to_expr(node)
        finally:
            self._guard = outer

    def _decider(self, node: _Node, expr: pc.Expression, alone: bool) -> pc.Expression:
        """Compiled ``node`` (``expr``) as the guards of the values after it read it (is it
        false, is it null?): ``expr`` where it holds no guard (it cannot raise, or was
        compiled for every row: ``alone``); else ``node`` compiled again, without guards,
        and null where it would raise (a cast as try_cast, a decimal past its digits) -
        the same value wherever ``expr`` does not raise, and where it does, it raises
        itself. ``expr`` held the guard it was computed under, and a guard made of it
        held that guard twice (and once more joined to it): each value that can raise
        doubled the guards after it. A value that cannot be so compiled (no schema; an
        integer rounded to tens) is ``expr``."""
        if self._safe or alone or not self._may_raise(node):
            return expr
        outer, self._guard, self._safe = self._guard, None, True
        try:
            return self.to_expr(node)
        except _Unsafe:
            return expr
        finally:
            self._guard, self._safe = outer, False

    def _missing(self, node: _Node, expr: pc.Expression, alone: bool) -> pc.Expression:
        """Where compiled ``node`` (``expr``) is null, as the guards of coalesce's later
        values read it: where one of its columns is, for a value null exactly there (a
        cast, arithmetic, a comparison: ``_strict_leaves``), which reads no more than
        them; else where its ``_decider`` is."""
        leaves = _strict_leaves(node) if self._may_raise(node) else None
        if leaves is None:
            return pc.is_null(self._decider(node, expr, alone))
        if any(isinstance(leaf, _Literal) for leaf in leaves):  # a null literal
            return pc.scalar(True)
        if not leaves:
            return pc.scalar(False)
        return _balanced(pc.or_kleene, [pc.is_null(pc.field(leaf.name)) for leaf in leaves
                                         if isinstance(leaf, _Column)])

    def _narrowed(self, expr: pc.Expression, source: pa.DataType, target: pa.DataType
                  ) -> pc.Expression:
        """``expr`` (an integer or a decimal of type ``source``) cast to decimal ``target``,
        which has at least its digits after the point, checked: a value past ``target``
        is an error (``_decider``: null)."""
        digits = source if pa.types.is_decimal(source) else _integer_digits(source)
        if self._safe:
            most = decimal.Decimal(10**target.precision - 1).scaleb(-target.scale, _EXACT)
            most = most.quantize(decimal.Decimal(1).scaleb(-digits.scale),
                                 decimal.ROUND_FLOOR, _EXACT)
            bound: int | decimal.Decimal = most if pa.types.is_decimal(source) else int(most)
            fits = within(expr, source, -bound, bound)
            if fits is not None:
                expr = _null_outside(fits, expr, source)
        more = digits.precision + target.scale - digits.scale
        if more > _DECIMAL128_DIGITS and pa.types.is_decimal128(target):
            # past 38 digits with the new ones after the point: Arrow's decimal128 rescale
            # wraps around silently (-1e36 of a decimal(38, 1) in a decimal(38, 12) came
            # back as -1.9e25) and refuses an integer; in decimal256 it is exact, and the
            # last cast checks the digits
            expr = expr.cast(pa.decimal256(min(more, _DECIMAL256_DIGITS), target.scale))
        return expr.cast(target)

    def _boolean(self, node: _Node) -> bool:
        """Whether compiled ``node`` may be true/false (its type bool, null or unknown)."""
        if isinstance(node, _Literal):
            return node.kind in ("bool", "null")
        t = self._type(node)
        return t is None or pa.types.is_boolean(t) or pa.types.is_null(t)

    @staticmethod
    def _truth(node: _Node, expr: pc.Expression) -> pc.Expression:
        """``expr`` of a true/false ``node`` as a guard takes it (a null literal: a
        boolean null, which coalesce can join to true or false)."""
        if isinstance(node, _Literal) and node.kind == "null":
            return pc.scalar(pa.scalar(None, pa.bool_()))
        return expr

    def _may_raise(self, node: _Node) -> bool:
        """Whether ``node`` holds an operation that raises on some values: a cast,
        rounding, or, on decimal columns, arithmetic (overflow) or values of one type
        (if's, coalesce's: a decimal converted to the common one may not fit it)."""
        decimals = any(isinstance(n, _Column) and self.types.get(n.name) is not None
                       and pa.types.is_decimal(self.types[n.name]) for n in _walk(node))
        return any((isinstance(n, _Call) and n.name in _RAISING_CALLS)
                   or (decimals and isinstance(n, _BinOp) and n.op in "+-*%")
                   or (decimals and isinstance(n, _Call)
                       and _FUNCTIONS[n.name].values_from is not None)
                   for n in _walk(node))

    def _arguments(self, node: _Call) -> tuple[list[pc.Expression], list[pc.Expression | None]]:
        """The compiled arguments, and the rows each is needed for (None: every row):
        ``if``'s branches each for the rows that take it, ``coalesce``'s later values for
        the rows whose earlier ones are null."""
        if self._safe:  # nothing raises: no guards
            return [self.to_expr(arg) for arg in node.args], [None] * len(node.args)
        if node.name == "if":
            outer = self._guard
            if outer is None or self._may_raise(node.args[0]):
                cond = self.to_expr(node.args[0])
                within = False
            else:
                # under a guard, a condition that cannot raise is compiled as alone and
                # made null outside the guard, so the branches' guards hold the outer one
                # once: compiled under it, and joined to it, they held it twice, and a
                # chain of ifs doubled with each level
                self._guard = None
                try:
                    alone = self.to_expr(node.args[0])
                finally:
                    self._guard = outer
                cond = _null_outside(outer, alone, pa.bool_())
                within = True
            if not self._boolean(node.args[0]):  # no true/false: the type check says so
                return [cond, *map(self.to_expr, node.args[1:])], [None] * len(node.args)
            truth = self._truth(node.args[0], self._decider(node.args[0], cond, outer is None))
            guards = [None, pc.coalesce(truth, False), pc.invert(pc.coalesce(truth, True))]
            return [cond, *(self._under(g, a, within)
                            for g, a in zip(guards[1:], node.args[1:]))], guards
        if node.name == "coalesce":
            exprs, guards, guard = [], [], None
            for arg in node.args:
                alone = guard is None and self._guard is None
                exprs.append(self._under(guard, arg))
                guards.append(guard)
                if arg is not node.args[-1]:
                    guard = _joined(guard, self._missing(arg, exprs[-1], alone))
            return exprs, guards
        return [self.to_expr(arg) for arg in node.args], [None] * len(node.args)

    def _call(self, node: _Call) -> pc.Expression:
        spec = _FUNCTIONS[node.name]
        times = node.args if spec.time_args or node.name == "nullif" else (
            node.args[spec.values_from:] if spec.values_from is not None else ())
        # days_between(d, '2026-01-01'), coalesce(d, '2026-01-01'): beside a date or time
        # column or literal, a text literal is the date or time it writes
        self._read_as_times(times, next((t for t in map(self._plain_type, times) if t is not None
                                         and (pa.types.is_date(t) or pa.types.is_timestamp(t))),
                                        None))
        exprs, guards = self._arguments(node)
        if spec.values_from is not None:
            at = spec.values_from
            exprs[at:] = self._of_one_type(node.args[at:], exprs[at:], guards[at:])
        if node.name in ("least", "greatest"):
            zoned = self._zoned_extreme(node, exprs)
            if zoned is not None:
                return zoned
        if node.name in ("floor", "ceil", "round"):
            return self._rounded(node, exprs)
        if node.name in _CASTS:
            assert node.cast_type is not None
            target = _CAST_TYPES[node.cast_type]
            options = cast_options(target)
            source = (node.args[0].arrow_type if isinstance(node.args[0], _Literal)
                      else self._result_type(exprs[0]))
            if node.name == "try_cast" and source is not None:
                return try_cast(exprs[0], source, target, options)
            if self._safe:
                if source is None:
                    raise _Unsafe
                return try_cast(exprs[0], source, target, options, refused_only=True)
            return exprs[0].cast(options=options)
        if spec.time_args:
            types = [self._written(arg).arrow_type if isinstance(arg, _Literal)
                     else self._result_type(e) for arg, e in zip(node.args, exprs, strict=True)]
            if None not in types:  # b's boundaries less a's: past int64 an error
                unit = spec.canonical.removesuffix("_between")
                return pc.subtract_checked(*(_boundaries(e, t, unit)
                                             for e, t in zip(exprs[::-1], types[::-1],
                                                             strict=True)))
        if node.name == "nullif":  # null where a equals b (SQL's); a where b is null
            equal = self._compare("=", node.args[0], node.args[1], exprs[0], exprs[1])
            t = self._type(node.args[0])
            return pc.if_else(pc.coalesce(equal, False),
                              pc.scalar(pa.scalar(None, t or pa.null())), exprs[0])
        return spec.build(node.args, exprs)

    # ---------------------------------------------------------------- values of one type

    def _of_one_type(self, nodes: Sequence[_Node], exprs: Sequence[pc.Expression],
                     guards: Sequence[pc.Expression | None] | None = None
                     ) -> list[pc.Expression]:
        """Values that must share a type (if's branches, coalesce's and least's arguments)
        in one where Arrow's own choice fails as the rows are read or loses: decimals of
        two types in one that holds both (if_else refused them), an integer beside a float
        in float64 unchecked (Arrow's conversion is checked: past 2**53 it raised), a
        uint64 beside a signed integer in decimal(20, 0), an integer literal in the type
        of the values it meets where it fits (``coalesce(u64, 0)`` stays uint64). Other
        types, or unknown ones: as Arrow decides."""
        target = self._common_number_type(nodes)
        if target is None:
            return self._one_time_type(nodes, exprs)
        guards = guards or [None] * len(exprs)
        return [self._converted(node, expr, target, guard)
                for node, expr, guard in zip(nodes, exprs, guards)]

    def _one_time_type(self, nodes: Sequence[_Node], exprs: Sequence[pc.Expression]
                       ) -> list[pc.Expression]:
        """Times of several units or zones (a nanosecond column, a literal's
        microseconds; a Paris column, a literal with ``Z``) in one type: the finest unit,
        in the first's zone, each value the instant it was. Arrow's coalesce took a
        microsecond literal's count as nanoseconds (1970-01-21 for 2026-03-29), its
        if_else of us and ms truncated to ms, and it refused two zones side by side.
        Other values, and zoned times beside others (refused as it plans), as they are."""
        types = self._time_types(nodes)
        times = {t for t in types if t is not None and pa.types.is_timestamp(t)}
        zones = [t.tz for t in types if t is not None and pa.types.is_timestamp(t) and t.tz]
        if len(times) < 2 or (zones and any(not t.tz for t in times)):
            return list(exprs)
        target = pa.timestamp(max((t.unit for t in times), key=_UNITS.index),
                              tz=zones[0] if zones else None)
        return [e.cast(target) if t is not None and pa.types.is_timestamp(t) and t != target
                else e for e, t in zip(exprs, types, strict=True)]

    def _time_types(self, nodes: Sequence[_Node]) -> list[pa.DataType | None]:
        """The nodes' types, a literal's its own (a time literal's unit and zone)."""
        return [self._written(n).arrow_type if isinstance(n, _Literal) else self._type(n)
                for n in nodes]

    def _plain_type(self, node: _Node) -> pa.DataType | None:
        """The type of a column or a date or time literal, before anything compiles (a
        dictionary's values); None for other nodes."""
        t = (self.types.get(node.name) if isinstance(node, _Column) else
             node.arrow_type if isinstance(node, _Literal) and node.kind in ("date", "timestamp")
             else None)
        return t.value_type if t is not None and pa.types.is_dictionary(t) else t

    def _zoned_extreme(self, node: _Call, exprs: Sequence[pc.Expression]
                       ) -> pc.Expression | None:
        """least / greatest of zoned times, in one type already (Arrow's element-wise
        min and max have no kernel for them): of their UTC clocks, in that zone; None
        for other values."""
        zoned = [t for t in self._time_types(node.args)
                 if t is not None and pa.types.is_timestamp(t) and t.tz]
        if not zoned:
            return None
        kernel = pc.min_element_wise if node.name == "least" else pc.max_element_wise
        target = max(zoned, key=lambda t: _UNITS.index(t.unit))
        return kernel(*(e.cast(pa.timestamp(target.unit)) for e in exprs)).cast(target)

    def _common_number_type(self, nodes: Sequence[_Node]) -> pa.DataType | None:
        types: list[pa.DataType] = []
        literals: list[int] = []
        floats = False
        for node in nodes:
            if isinstance(node, _Literal):
                if node.kind == "int":
                    literals.append(node.value)  # type: ignore[arg-type]
                elif node.kind == "float":
                    floats = True
                elif node.kind != "null":
                    return None
                continue
            t = self._type(node)
            if _number_kind(t) is None:
                return None
            types.append(t)
        if not types:
            return None
        kinds = {_number_kind(t) for t in types}
        if floats or "float" in kinds:
            if kinds == {"float"} and not floats and all(abs(v) <= 2**24 for v in literals):
                target = max(types, key=lambda t: t.bit_width)  # float32 beside float32
            else:
                target = pa.float64()
        elif "decimal" in kinds:
            target = _common_decimal(types + [pa.decimal128(len(str(abs(v))), 0)
                                              for v in literals])
        else:
            target = _common_integer(types, literals)
        if all(t == target for t in types) and len(types) == len(nodes):
            return None
        return target

    def _converted(self, node: _Node, expr: pc.Expression, target: pa.DataType,
                   guard: pc.Expression | None = None) -> pc.Expression:
        node = self._written(node)
        if isinstance(node, _Literal):
            value = node.value
            if value is not None and pa.types.is_decimal(target):
                value = decimal.Decimal(value)  # type: ignore[arg-type]
                if _steps_of(value, target) is None:
                    # past the digits the values' type keeps before the point: an error
                    # where the literal is chosen (not as the expression compiles)
                    exact = pa.decimal256(len(str(abs(node.value))), 0)  # type: ignore[arg-type]
                    literal = pc.scalar(pa.scalar(value, exact))
                    if guard is not None:
                        literal = _null_outside(guard, literal, exact)
                    return self._narrowed(literal, exact, target)
            elif value is not None and pa.types.is_floating(target):
                value = float(value)  # type: ignore[arg-type]
            return pc.scalar(pa.scalar(value, target))
        if self._type(node) == target:
            return expr
        # an integer in float64 unchecked, as everywhere in the language; a decimal
        # checked: a value too large for the 38 digits it has is an error, never another
        # (of the rows that need it: ``guard``)
        if guard is not None and not pa.types.is_floating(target):
            expr = _null_outside(guard, expr, self._type(node))
        source = self._type(node)
        if pa.types.is_decimal(target) and source is not None:
            return self._narrowed(expr, source, target)
        return expr.cast(target, safe=not pa.types.is_floating(target))

    # ---------------------------------------------------------------------- comparisons

    def _compared_with(self, node: _Node, others: Sequence[_Node]) -> tuple[_Node, ...]:
        """``others`` as compared with ``node`` (compiled): a text literal beside a date
        or timestamp the date or time it writes (``_read_as_times``)."""
        self._read_as_times(others, self._type(node))
        return tuple(map(self._written, others))

    def _read_as_times(self, nodes: Sequence[_Node], t: pa.DataType | None) -> None:
        """The text literals of ``nodes``, beside values of type ``t``, read as the dates
        or times they write where ``t`` is a date or a timestamp (``_time_text``)."""
        if t is None or not (pa.types.is_date(t) or pa.types.is_timestamp(t)):
            return
        for node in nodes:
            read = _time_text(node, t, self.text)
            if read is not node:
                self._as[id(node)] = read

    def _written(self, node: _Node) -> _Node:
        """``node`` as it is read: a text literal the date or time it writes where it
        meets dates or times (``_read_as_times``)."""
        return self._as.get(id(node), node)

    def _compare(self, op: str, left_node: _Node, right_node: _Node, left: pc.Expression,
                 right: pc.Expression) -> pc.Expression:
        """``left op right`` (the operands compiled) where Arrow alone converts lossily or
        raises: a number literal beside an integer or decimal value is decided exactly
        (``_compared_exactly``); beside a float, and an integer beside a float, both in
        float64 (Arrow narrowed a literal to float32 and converted an int64 checked); a
        uint64 beside a signed integer in decimal(20, 0), which holds both (Arrow
        converted the uint64 to int64 and raised past 2**63); times of two zones as the
        instants they are (Arrow refused them: a UTC literal beside a Paris column)."""
        kernel = _ARROW_COMPARISON[op]
        left_type, right_type = self._type(left_node), self._type(right_node)
        for literal, other_type, other, other_op in ((right_node, left_type, left, op),
                                                     (left_node, right_type, right,
                                                      _MIRRORED[op])):
            if not _number_literal(literal):
                continue
            assert isinstance(literal, _Literal) and literal.exact is not None
            if other_type is not None and _number_kind(other_type) in ("int", "decimal"):
                return self._compared_exactly(other_op, other, other_type, literal.exact)
            if _number_kind(other_type) == "float" or (other_type is None
                                                       and _float_literal(literal)):
                return kernel(_float64(left, left_node), _float64(right, right_node))
        if {_number_kind(left_type), _number_kind(right_type)} == {"int", "float"}:
            return kernel(_float64(left, left_node), _float64(right, right_node))
        if pa.uint64() in (left_type, right_type) and any(
                t is not None and pa.types.is_signed_integer(t) for t in (left_type,
                                                                          right_type)):
            both = pa.decimal128(20, 0)
            return kernel(left.cast(both), right.cast(both))
        left, right = self._one_time_type((left_node, right_node), (left, right))
        result = kernel(left, right)
        if "decimal" in {_number_kind(left_type), _number_kind(right_type)} and (
                self._result_type(result) is None):
            # two decimals whose common type is past 38 digits (decimal(38, 1) and
            # decimal(7, 3)): Arrow refused them as the rows were read; decimal256 holds it
            wide = [self._decimal256(e) for e in (left, right)]
            if wide[0] is not None and wide[1] is not None:
                return kernel(*wide)
        return result

    @staticmethod
    def _compared_exactly(op: str, expr: pc.Expression, t: pa.DataType,
                          exact: decimal.Decimal) -> pc.Expression:
        """``expr op exact`` for an integer or decimal ``expr`` of type ``t``, in ``t``: a
        fraction between two of its values moves to the neighbour the comparison keeps
        (``i < 1.5`` is ``i <= 1``, ``i = 1.5`` is false), and a number past its range
        decides every row (``u64 > -1``); a decided comparison is ``expr >= least`` (true)
        or ``expr < least`` (false): null where ``expr`` is, as a comparison is, and
        row-group statistics still apply."""
        kernel = _ARROW_COMPARISON[op]
        scale, least, most = _steps(t)
        scaled = exact.scaleb(scale, _EXACT)
        if op in ("=", "!="):
            steps = _steps_of(exact, t)
            if steps is not None:
                return kernel(expr, _step_scalar(steps, t))
            holds = op == "!="
        elif scaled > most:
            holds = op in ("<", "<=")
        elif scaled < least:
            holds = op in (">", ">=")
        else:
            rounding = decimal.ROUND_CEILING if op in ("<", ">=") else decimal.ROUND_FLOOR
            return kernel(expr, _step_scalar(int(scaled.to_integral_value(rounding)), t))
        return (pc.greater_equal if holds else pc.less)(expr, _step_scalar(least, t))

    def _in_list(self, node: _InList) -> pc.Expression:
        operand = self.to_expr(node.operand)
        items = self._compared_with(node.operand, node.items)
        if not all(isinstance(item, _Literal) for item in items):
            return _balanced(pc.or_kleene, [
                self._compare("=", node.operand, item, operand, self.to_expr(written))
                for written, item in zip(node.items, items, strict=True)])
        literals = [item for item in items if isinstance(item, _Literal)]
        for written in node.items:
            self.to_expr(written)  # range checks and tracing
        t = self._type(node.operand)
        numbers = [item for item in literals if item.kind != "null"]
        terms = []
        if _number_kind(t) in ("int", "decimal") and all(map(_number_literal, numbers)):
            # exactly the listed numbers the operand's type holds (1.5 is no integer's,
            # -1 no uint64's: Arrow converted the column and raised)
            assert t is not None
            held = (_steps_of(item.exact, t) for item in numbers)  # type: ignore[arg-type]
            steps = sorted({s for s in held if s is not None})
            if steps:
                value_set = pa.array([_step_value(s, t) for s in steps], type=t)
                terms.append(pc.is_in(operand, value_set=value_set))
        else:
            arrow_type, values = _value_set(literals, self.text, node.pos)
            if _number_kind(t) == "float" and arrow_type in (pa.int64(), pa.uint64(),
                                                               pa.float64()):
                operand, arrow_type = _float64(operand, node.operand), pa.float64()
                values = [float(v) for v in values]
            if _is_numeric(arrow_type) and any(v == 0 for v in values):
                # is_in hashes -0.0 and 0.0 apart; '=' treats them as equal, and so should
                # 'in'; an int64 0 (a float64 one narrows to float32, raising for an int64
                # past 2**24)
                values = [v for v in values if v != 0]
                terms.append(pc.equal(operand, pc.scalar(0)))
            if values:
                terms.insert(0, pc.is_in(operand, value_set=pa.array(values, type=arrow_type)))
        # is_in answers false for a null operand; SQL wants null, so or it with
        # 'null where the operand is null, false elsewhere'.
        terms.append(pc.invert(pc.true_unless_null(operand)))
        if any(item.kind == "null" for item in literals):
            # x not in the rest of the list: null, not false
            terms.append(pc.scalar(pa.scalar(None, pa.bool_())))
        return _balanced(pc.or_kleene, terms)

    # ----------------------------------------------------------------------- arithmetic

    def _binop(self, node: _BinOp) -> pc.Expression:
        for side in (node.left, node.right):
            if node.op in _ARROW_COMPARISON and isinstance(side, _Literal) and side.kind == "null":
                negate = "not " if node.op == "!=" else ""
                raise ExpressionError(
                    f"'{node.symbol} null' is never true (comparing with null gives null); "
                    f"write 'is {negate}null'",
                    self.text,
                    node.pos,
                )
        if node.op in _ARROW_COMPARISON:
            # a text literal beside a date or timestamp is the date or time it writes
            if isinstance(node.left, _Literal):
                right = self.to_expr(node.right)
                (left_node,) = self._compared_with(node.right, (node.left,))
                left, right_node = self.to_expr(node.left), node.right
            else:
                left = self.to_expr(node.left)
                (right_node,) = self._compared_with(node.left, (node.right,))
                right, left_node = self.to_expr(node.right), node.left
            return self._compare(node.op, left_node, right_node, left, right)
        left, right = self.to_expr(node.left), self.to_expr(node.right)
        if node.op == "/":
            return pc.divide(_float64(left, node.left), _float64(right, node.right))
        if node.op == "**":
            return pc.power(_float64(left, node.left), _float64(right, node.right))
        left, right = self._arithmetic_operands(node, left, right)
        if node.op == "%":
            divisor = node.right
            if not (isinstance(divisor, _Literal) and divisor.kind in ("int", "float")
                    and divisor.value):
                # x % 0 is null rather than an error (integer kernels raise on zero
                # divisors); the zero in the divisor's type (an int64 one converted a uint64
                # and raised past 2**63, and asked a decimal for 19 more digits)
                t = self._result_type(right)
                zero = pa.scalar(0, t) if _number_kind(t) in ("int", "float") else (
                    pa.scalar(decimal.Decimal(0), t) if _number_kind(t) == "decimal" else 0)
                right = pc.if_else(pc.equal(right, pc.scalar(zero)), pc.scalar(None), right)
        kernel = {"+": pc.add, "-": pc.subtract, "*": pc.multiply, "%": pc.modulo}[node.op]
        return self._within_38_digits(node, kernel, left, right)

    def _arithmetic_operands(self, node: _BinOp, left: pc.Expression, right: pc.Expression
                             ) -> tuple[pc.Expression, pc.Expression]:
        """``+ - * %``'s operands: an integer literal beside a decimal as a decimal of its
        digits (``amount + 1`` asked Arrow for a precision of 21), beside a uint64 as a
        uint64 (past 2**63 it met int64 and raised; ``u8 + 100`` stays Arrow's int16); an
        integer beside a float, and anything beside a float literal, in float64 (Arrow's
        conversion of an int64 is checked, and it narrowed a literal to float32)."""
        left = self._literal_beside(node.left, node.right, left)
        right = self._literal_beside(node.right, node.left, right)
        kinds = {_number_kind(self._type(n)) for n in (node.left, node.right)}
        if kinds == {"int", "float"} or _float_literal(node.left) or _float_literal(node.right):
            return _float64(left, node.left), _float64(right, node.right)
        return left, right

    def _literal_beside(self, literal: _Node, other: _Node, expr: pc.Expression
                        ) -> pc.Expression:
        t = self._type(other)
        if t is None or not (isinstance(literal, _Literal) and literal.kind == "int"):
            return expr
        value = literal.value
        assert isinstance(value, int)
        if pa.types.is_decimal(t):
            digits = max(len(str(abs(value))), 1)
            return pc.scalar(pa.scalar(decimal.Decimal(value), pa.decimal128(digits, 0)))
        if t == pa.uint64() and value >= 0:
            return pc.scalar(pa.scalar(value, t))
        return expr

    def _within_38_digits(self, node: _BinOp, kernel: Callable[..., pc.Expression],
                          left: pc.Expression, right: pc.Expression) -> pc.Expression:
        """``kernel(left, right)``; where Arrow refuses a decimal result past 38 digits
        (``d38 + 1``), worked out in decimal256 and brought back to 38 digits with the
        same digits after the point, as DuckDB and Spark keep them: a value that does not
        fit is an error as it converts, never another value."""
        result = kernel(left, right)
        if not any(_number_kind(self._type(n)) == "decimal" for n in (node.left, node.right)):
            return result
        if self._result_type(result) is not None:
            return result
        operands = [self._decimal256(expr) for expr in (left, right)]
        if operands[0] is None or operands[1] is None:
            return result
        wide = kernel(*operands)
        wide_type = self._result_type(wide)
        if wide_type is None and node.op == "*":
            wide = self._wide_product(*operands)
            wide_type = self._result_type(wide)
        if wide_type is None or not pa.types.is_decimal(wide_type):
            return result  # the type check tells Arrow's refusal (past 76 digits)
        if wide_type.scale > _DECIMAL128_DIGITS:
            sides = " and ".join(str(self._result_type(e)) for e in (left, right))
            raise ExpressionError(
                f"'{node.symbol}' of {sides} has {wide_type.scale} digits after the point, "
                f"more than a decimal's {_DECIMAL128_DIGITS}; convert one side, e.g. "
                "cast(x as float64)",
                self.text,
                node.pos,
            )
        return self._narrowed(wide, wide_type, pa.decimal128(_DECIMAL128_DIGITS,
                                                             wide_type.scale))

    def _decimal256(self, expr: pc.Expression) -> pc.Expression | None:
        t = self._result_type(expr)
        if t is not None and pa.types.is_integer(t):
            t = _integer_digits(t)
        if t is None or not pa.types.is_decimal(t):
            return None
        return expr.cast(pa.decimal256(t.precision, t.scale))

    def _wide_product(self, left: pc.Expression, right: pc.Expression) -> pc.Expression:
        """``left * right`` of two 38-digit decimals: Arrow wants 77 digits for it, past
        decimal256's 76. Where ``right`` fits in 37 digits it is narrowed to them, else
        ``left`` is: where neither does, the product is past any 38-digit result, and
        narrowing ``left`` is the overflow's error."""
        types = [self._result_type(e) for e in (left, right)]
        assert types[0] is not None and types[1] is not None
        narrow = [pa.decimal256(t.precision - 1, t.scale) for t in types]
        bound = _step_scalar(_steps(narrow[1])[2], types[1])
        small = pc.less_equal(pc.abs(right), bound)
        zero = [pc.scalar(pa.scalar(decimal.Decimal(0), t)) for t in types]
        right_narrow = pc.if_else(small, right, zero[1]).cast(narrow[1])
        left_narrow = self._narrowed(pc.if_else(small, zero[0], left), types[0], narrow[0])
        return pc.if_else(small, pc.multiply(left, right_narrow),
                          pc.multiply(left_narrow, right))

    # ------------------------------------------------------------------------- rounding

    def _rounded(self, node: _Call, exprs: list[pc.Expression]) -> pc.Expression:
        """floor, ceil or round. Of a decimal: with a digit more before the point (and as
        many as it rounds to: round(d, -3) of a decimal(5, 2) needs thousands), the result
        in the decimal's type again by a checked cast: Arrow rounds within the precision,
        and a value that rounds past it (floor of -99999999.99 in a decimal(10, 2), of
        a sum) came back as 0.00, silently; now it is an error, and the result keeps
        the type (if(c, round(d), d) stays one type). Of an integer: float64 unchecked,
        as the math functions convert (Arrow's checked conversion raised past 2**53)."""
        build = _FUNCTIONS[node.name].build
        t = self._type(node.args[0])
        if _number_kind(t) == "int" and node.name != "round":
            return build(node.args, [_float64(exprs[0], node.args[0])])
        if t is None or not pa.types.is_decimal(t):
            if self._safe and (t is None or _number_kind(t) == "int") and len(node.args) > 1:
                # an integer rounded to tens may overflow (127 of an int8 to 130)
                digits = node.args[1]
                if not (isinstance(digits, _Literal) and digits.kind == "int"
                        and int(digits.value) >= 0):  # type: ignore[arg-type]
                    raise _Unsafe
            return build(node.args, exprs)
        places = _places(node)
        if t.precision >= _DECIMAL256_DIGITS and (places is None or places < t.scale):
            raise ExpressionError(
                f"cannot {node.written}() a {t} value: one that rounds up past its "
                f"{_DECIMAL256_DIGITS} digits, Arrow's most, would come back as another; "
                "convert it, e.g. cast(x as float64)",
                self.text,
                node.pos,
            )
        wider = _rounding_type(t, places)
        return self._narrowed(build(node.args, [exprs[0].cast(wider), *exprs[1:]]), wider, t)


def _places(node: _Call) -> int | None:
    """The digits a floor, ceil or round rounds to: 0, round's literal, None for another
    expression."""
    if len(node.args) < 2:
        return 0
    digits = node.args[1]
    return int(digits.value) if isinstance(digits, _Literal) and digits.kind == "int" \
        else None  # type: ignore[arg-type]


def _rounding_type(t: pa.DataType, places: int | None) -> pa.DataType:
    """The decimal a decimal of type ``t`` is rounded in to ``places``: a digit more
    before the point (and as many as it rounds to: round(d, -3) of a decimal(5, 2) needs
    thousands), as many after."""
    precision = t.precision + 1
    if places is not None and places < 0:
        precision = max(precision, t.scale - places + 1)
    precision = min(precision, _DECIMAL256_DIGITS)
    return (pa.decimal128(precision, t.scale)
            if precision <= _DECIMAL128_DIGITS and pa.types.is_decimal128(t)
            else pa.decimal256(precision, t.scale))


@functools.lru_cache(maxsize=1024)
def _compiled(text: str, types: tuple[tuple[str, pa.DataType], ...] = ()) -> pc.Expression:
    node = _parse(text)
    try:
        return _Compiler(text, types=dict(types)).to_expr(node)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply", text, -1) from None


def _types_of(text: str, schema: pa.Schema | None) -> tuple[tuple[str, pa.DataType], ...]:
    """The types of the columns ``text`` names, as ``schema`` has them (a cache key)."""
    if schema is None:
        return ()
    names = set(referenced_columns(text))
    return tuple((f.name, f.type) for f in schema if f.name in names)


def _require_text(text: object) -> str:
    if not isinstance(text, str):
        raise ExpressionError(
            f"expected an expression as text, got {type(text).__name__} {text!r} "
            "(quote it in the YAML file)",
            str(text),
            -1,
        )
    return text


# --------------------------------------------------------------------------------------------
# Typing against a schema
# --------------------------------------------------------------------------------------------


def _is_numeric(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
    )


def _is_text(t: pa.DataType) -> bool:
    """Text for the text functions: strings of any kind, a dictionary of them, null."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return is_text(t) or pa.types.is_null(t)


def _describe_node(node: _Node) -> str:
    if isinstance(node, _BinOp):
        return f"'{node.symbol}'"
    if isinstance(node, _Logic):
        return f"'{node.op}'"
    if isinstance(node, _Not):
        return "'not'"
    if isinstance(node, _Neg):
        return "unary '-'"
    if isinstance(node, _InList):
        return "'not in'" if node.negated else "'in'"
    if isinstance(node, _Between):
        return "'not between'" if node.negated else "'between'"
    if isinstance(node, _Like):
        return "'not like'" if node.negated else "'like'"
    if isinstance(node, _IsNull):
        return "'is not null'" if node.negated else "'is null'"
    if isinstance(node, _Call):
        return f"{node.written}()"
    return "value"  # pragma: no cover


def _type_error(
    node: _Node, arg_types: list[pa.DataType], detail: str, text: str
) -> ExpressionError:
    types = " and ".join(str(t) for t in arg_types) if arg_types else "no arguments"
    what = _describe_node(node)
    if isinstance(node, _Column):
        return ExpressionError(f"cannot use column {node.name!r} ({detail})", text, node.pos)
    if isinstance(node, _Call) and node.name in _CASTS:
        message = f"cannot {node.name} {arg_types[0]} to {node.cast_type}"
    elif isinstance(node, _BinOp) and node.op in _ARROW_COMPARISON:
        message = f"cannot compare {types} with {what}"
    elif isinstance(node, _Logic | _Not):
        message = f"{what} needs true/false values, got {types}"
    elif isinstance(node, _InList):
        listed = " and ".join(dict.fromkeys(str(t) for t in arg_types[1:]))
        message = f"cannot look up {arg_types[0]} values in a list of {listed}"
    else:
        message = f"cannot apply {what} to {types}"
    hints = []
    temporal = [t for t in arg_types if pa.types.is_timestamp(t) or pa.types.is_date(t)]
    if temporal and any(pa.types.is_string(t) for t in arg_types):
        texts = [child for child, t in zip(_children(node), arg_types, strict=False)
                 if pa.types.is_string(t)]
        # a column of dates as text is cast; a literal is written as a date
        columns = [child.name for child in texts if isinstance(child, _Column)]
        if columns:
            hints.append(f"a column of dates as text is cast to one first: "
                         f"cast({quote_name(columns[0])} as date), or as timestamp")
        if len(columns) < len(texts):
            hints.append("write dates as date '2026-11-28' or timestamp "
                         "'2026-11-28 10:00:00'")
    dates = [found for sub in _walk(node) if (found := _unquoted_date(sub, text))]
    if dates:
        date, number = dates[0]
        hints.append(f"{date} without quotes is a subtraction ({number}): a date is "
                     f"written date '{date}', text '{date}'")
    zones = {t.tz is not None for t in arg_types if pa.types.is_timestamp(t)}
    if zones == {True, False}:
        hints.append(
            "one timestamp has a time zone and the other has not; add or drop the zone "
            "(a literal with 'Z' or '+01:00' is UTC)"
        )
    if detail and not detail.startswith("Function ") and not hints:
        hints.append(detail)
    if hints:
        message += " (" + "; ".join(hints) + ")"
    return ExpressionError(message, text, node.pos)


def _arrow_detail(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first


@functools.lru_cache(maxsize=1024)
def _typed(text: str, schema: pa.Schema) -> pa.DataType:
    import pyarrow.dataset as ds

    node = _parse(text)
    names = set(schema.names)
    for sub in _walk(node):
        if isinstance(sub, _Column) and sub.name not in names:
            raise ExpressionError(_unknown_column_message(sub.name, schema.names), text, sub.pos)
    trace: list[tuple[_Node, pc.Expression]] = []
    try:
        _Compiler(text, trace, dict(_types_of(text, schema))).to_expr(node)
    except RecursionError:
        raise ExpressionError("expression is nested too deeply", text, -1) from None
    empty = schema.empty_table()
    index = {id(n): i for i, (n, _) in enumerate(trace)}
    try:
        projected = ds.dataset(empty).to_table(
            columns={f"_{i}": e for i, (_, e) in enumerate(trace)})
        types = list(projected.schema.types)
    except (pa.ArrowException, TypeError, ValueError):
        types = []
        for sub, expr in trace:  # post-order: children are typed before their parents
            try:
                types.append(_bound_type(expr, empty))
            except (pa.ArrowException, TypeError, ValueError) as exc:
                arg_types = [types[index[id(c)]] for c in _children(sub)]
                raise _type_error(sub, arg_types, _arrow_detail(exc), text) from None
    for sub, _ in trace:
        compares = (isinstance(sub, _BinOp) and sub.op in _ARROW_COMPARISON) or isinstance(
            sub, _Between | _InList) or (isinstance(sub, _Call)
                                         and _FUNCTIONS[sub.name].values_from is not None)
        if compares:  # arrow only notices this while running, not when planning
            arg_types = [types[index[id(c)]] for c in _children(sub)]
            zones = {t.tz is not None for t in arg_types if pa.types.is_timestamp(t)}
            if zones == {True, False}:
                raise _type_error(sub, arg_types, "", text)
        numeric = (isinstance(sub, _BinOp) and (
            sub.op in ("/", "**") or (sub.op in ("+", "-", "*", "%") and (
                _float_literal(sub.left) or _float_literal(sub.right))))) or (
            isinstance(sub, _Call) and _FUNCTIONS[sub.name].numeric_args
        )
        if numeric:
            arg_types = [types[index[id(c)]] for c in _children(sub)]
            if not all(_is_numeric(t) for t in arg_types):
                raise _type_error(sub, arg_types, "it needs numbers", text)
        texts = (isinstance(sub, _Call) and _FUNCTIONS[sub.name].text_args) or isinstance(
            sub, _Like)
        if texts:  # their arguments are cast to strings: what else would convert
            arg_types = [types[index[id(c)]] for c in _children(sub)]
            if not all(_is_text(t) for t in arg_types):
                raise _type_error(sub, arg_types, "it needs text", text)
        if isinstance(sub, _Call) and sub.name == "round" and len(sub.args) > 1:
            digits = types[index[id(sub.args[1])]]
            if not (pa.types.is_integer(digits) or pa.types.is_null(digits)):
                # Arrow converts them to int32 as the rows are read, and raised there
                arg_types = [types[index[id(c)]] for c in _children(sub)]
                raise _type_error(sub, arg_types, "the digits to round to are a whole "
                                  "number, e.g. round(x, 2)", text)
        if isinstance(sub, _Call) and _FUNCTIONS[sub.name].time_args:
            arg_types = [types[index[id(c)]] for c in _children(sub)]
            if not all(pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_null(t)
                       for t in arg_types):
                raise _type_error(sub, arg_types, "it needs dates or timestamps", text)
    return types[index[id(node)]]


# --------------------------------------------------------------------------------------------
# What row-group statistics may judge where columns hold NaN
# --------------------------------------------------------------------------------------------

# Parquet's min and max of a floating-point column leave NaN out (a row group of 1.0 and
# NaN says min = max = 1.0; one of NaN alone has none), so a reader that skips row groups
# by them reasons as if no row held NaN. A filter may be judged that way where its truth
# on a row never rests on a NaN: where it is true, it stays true whatever non-NaN,
# non-null values the NaN take (such values are what the statistics describe: a row group
# holding a NaN in a column is never all null in it). ``nan_safe_filter`` keeps the parts
# of a filter that are so. The statistics blur zero's sign as well (a row group of 0.0 is
# min -0.0, max 0.0, which Arrow takes for 'x = -0.0'): a filter must not tell the two
# zeros apart either (1 / x does).

# NaN in, NaN (or null) out
_NAN_CARRYING_OPERATORS = frozenset(["+", "-", "*", "/", "%"])
_NAN_CARRYING_FUNCTIONS = frozenset(["abs", "floor", "ceil", "round", "log", "log1p", "log2",
                                     "log10", "exp", "sqrt"])
_FLOAT_CASTS = frozenset(name for name, t in _CAST_TYPES.items() if pa.types.is_floating(t))


def _reads(node: _Node, columns: frozenset[str]) -> bool:
    return any(isinstance(n, _Column) and n.name in columns for n in _walk(node))


def _nan_blind(node: _Node, nan_columns: frozenset[str]) -> bool:
    """Whether ``node``'s value on a row, where it is not NaN, and whether it is null,
    stay as they are when the NaN of ``nan_columns`` become numbers, and when their zeros
    change sign (-0.0 = 0.0 to a comparison). So do arithmetic, the math functions, casts
    to float and ``coalesce`` of such values, and ``if`` between them on a condition that
    reads none of those columns; not a division by such a column (1 / x is -inf for -0.0,
    inf for 0.0; 1 % x null for 0, NaN for NaN), ``least``/``greatest`` (they skip NaN:
    least(NaN, 5) is 5), ``**`` (1 ** NaN is 1), casts to other types (NaN as int64 is
    its minimum), or anything else."""
    if not _reads(node, nan_columns) or isinstance(node, _Column):
        return True
    args = _children(node)
    if isinstance(node, _BinOp):
        ok = node.op in _NAN_CARRYING_OPERATORS and not (
            node.op in ("/", "%") and _reads(node.right, nan_columns))
    elif isinstance(node, _Call) and node.name == "if":
        ok, args = not _reads(node.args[0], nan_columns), node.args[1:]
    elif isinstance(node, _Call):
        ok = node.name in _NAN_CARRYING_FUNCTIONS or node.name == "coalesce" or (
            node.name in _CASTS and node.cast_type in _FLOAT_CASTS)
    else:
        ok = isinstance(node, _Neg)
    return ok and all(_nan_blind(arg, nan_columns) for arg in args)


def _nan_safe_test(node: _Node, negated: bool, nan_columns: frozenset[str]) -> bool:
    """Whether the test ``node`` (``not node`` where ``negated``) is never true on a row by a
    NaN, nor false by replacing it: of values blind to NaN (``_nan_blind``), a comparison
    but '!=' (NaN < 1 and NaN = 1 are false, NaN != 1 is true), ``between``, ``in``, ``is
    [not] null`` (NaN is not null) and ``not is_nan``."""
    if not all(_nan_blind(child, nan_columns) for child in _children(node)):
        return False
    if isinstance(node, _BinOp) and node.op in _ARROW_COMPARISON:
        return (node.op == "!=") == negated
    if isinstance(node, _Between | _InList):
        return node.negated == negated
    if isinstance(node, _IsNull):
        return True
    return isinstance(node, _Call) and node.name == "is_nan" and negated


def _nan_safe_part(node: _Node, negated: bool, nan_columns: frozenset[str],
                   compiler: _Compiler, unread: frozenset[str]) -> pc.Expression | None:
    """A filter every row passing ``node`` (``not node`` where ``negated``) passes, made of
    its parts that are safe from NaN (``_nan_safe_test``) and read none of ``unread``, or
    None: a conjunction keeps the parts that are (each is implied by the whole), a
    disjunction needs every one to be; under ``not`` the two trade places (De Morgan
    holds in three-valued logic too)."""
    if isinstance(node, _Not):
        return _nan_safe_part(node.operand, not negated, nan_columns, compiler, unread)
    if isinstance(node, _Logic) and _reads(node, nan_columns | unread):
        parts = [_nan_safe_part(op, negated, nan_columns, compiler, unread)
                 for op in node.operands]
        if (node.op == "and") != negated:
            kept = [p for p in parts if p is not None]
            return _balanced(pc.and_kleene, kept) if kept else None
        if any(p is None for p in parts):
            return None
        return _balanced(pc.or_kleene, parts)  # type: ignore[arg-type]
    if _reads(node, unread) or (_reads(node, nan_columns)
                                and not _nan_safe_test(node, negated, nan_columns)):
        return None
    expr = compiler.to_expr(node)
    return pc.invert(expr) if negated else expr


@functools.lru_cache(maxsize=1024)
def _nan_safe(text: str, types: tuple[tuple[str, pa.DataType], ...],
              nan_columns: frozenset[str], unread: frozenset[str]) -> pc.Expression | None:
    if not _reads(_parse(text), nan_columns | unread):
        return _compiled(text, types)
    compiler = _Compiler(text, types=dict(types))
    return _nan_safe_part(_parse(text), False, nan_columns, compiler, unread)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def parse_expression(text: str, schema: pa.Schema | None = None) -> pc.Expression:
    """Parse a value expression (a ``derive`` step) into a ``pc.Expression``; with the
    ``schema`` of the rows it will run on, literals meet decimal and unsigned columns in
    their kind (``_Compiler``).

    Example::

        >>> import pyarrow.dataset as ds
        >>> table = pa.table({"amount": [0.0, 1.5]})
        >>> derived = ds.dataset(table).to_table(columns={"x": parse_expression("amount * 2")})
        >>> derived.column("x").to_pylist()
        [0.0, 3.0]
    """
    text = _require_text(text)
    return _compiled(text, _types_of(text, schema))


def with_projected(table: pa.Table, expressions: dict[str, pc.Expression],
                   fields: dict[str, pa.Field] | None = None) -> pa.Table:
    """``table`` with the columns ``expressions`` make from it, in one projection: each
    in the place of the column of its name, or after the others; its field is the one of
    its name in ``fields``, else a plain one of the value's type. Arrow's errors pass
    through, for the caller to name the expression.

    Example::

        >>> table = pa.table({"amount": [0.0, 1.5]})
        >>> with_projected(table, {"x": parse_expression("amount * 2")}).column_names
        ['amount', 'x']
    """
    import pyarrow.dataset as ds

    made = ds.dataset(table).to_table(columns=expressions)
    for name in expressions:
        field = (fields or {}).get(name) or pa.field(name, made.schema.field(name).type)
        i = table.schema.get_field_index(name)
        column = made.column(name)
        table = (table.set_column(i, field, column) if i >= 0
                 else table.append_column(field, column))
    return table


def parse_filter(text: str, schema: pa.Schema | None = None) -> pc.Expression:
    """Parse a boolean predicate (a ``filter``) into a ``pc.Expression`` for dataset scans.

    Expressions that are certainly not true/false (arithmetic, a number or string literal)
    are rejected here; others, such as a bare column, are checked by :func:`check_filter`.

    Example::

        >>> table = pa.table({"tenure": [0, 5, None], "region": ["eu", "test", "us"]})
        >>> table.filter(parse_filter("tenure >= 0 and region != 'test'")).num_rows
        1
    """
    text = _require_text(text)
    expr = _compiled(text, _types_of(text, schema))
    node = _parse(text)
    kind = _static_kind(node)
    if kind is not None and kind != "bool":
        start = len(text) - len(text.lstrip())
        hint = f"; compare it, e.g. {text.strip() + ' > 0'!r}" if kind == "number" else ""
        raise ExpressionError(f"filter must be true/false, got a {kind}{hint}", text, start)
    return expr


def _static_kind(node: _Node) -> str | None:
    """What ``node`` certainly evaluates to, without a schema (None: can't tell)."""
    if isinstance(node, _Literal):
        return {"int": "number", "float": "number", "string": "string", "bool": "bool",
                "date": "date", "timestamp": "timestamp"}.get(node.kind)
    if isinstance(node, _Neg):
        return "number"
    if isinstance(node, _BinOp):
        return "bool" if node.op in _ARROW_COMPARISON else "number"
    if isinstance(node, _Not | _Logic | _IsNull | _InList | _Between | _Like):
        return "bool"
    if isinstance(node, _Call):
        if node.name in _CASTS:
            return "bool" if node.cast_type in ("bool", "boolean") else "value of another type"
        result = _FUNCTIONS[node.name].result
        return None if result == "any" else result
    return None


def failure_hint(texts: Iterable[str], what: str = "expression") -> str:
    """What to advise where the expressions ``texts`` failed on a partition's values (a
    text that does not parse as a number, a value past its type): ``try_cast`` where one
    of them casts, and a guard.

    Example::

        >>> failure_hint(["cast(code as int64) + 1"]).split(";")[0]
        'try_cast(x as type) gives null where a value does not convert'
    """
    guard = f"guard the {what}, e.g. with if(...) or coalesce(...)"
    if any(isinstance(n, _Call) and n.name == "cast"
           for text in texts for n in _walk(_parse(_require_text(text)))):
        return f"try_cast(x as type) gives null where a value does not convert; or {guard}"
    return guard


def value_failure(exc: BaseException, texts: Iterable[str], part: pa.Table,
                  what: str = "expression", also: str = "", on_read: bool = False
                  ) -> tuple[str, str]:
    """What went wrong where the expressions ``texts`` failed (``exc``) on the values of
    ``part``, and what to do: a floor, ceil or round of a decimal that rounds a value past
    the digits of its type names its column (or type), a value and what it rounds to, and
    the wider type to round in (``on_read``: a read's filter, which reads the files'
    types: filtered after a cast instead); else
    Arrow's message and ``failure_hint`` (and ``also``)."""
    texts = list(texts)
    for text in texts:
        found = _rounded_past(text, part, on_read)
        if found is not None:
            return found
    return arrow_message(exc), failure_hint(texts, what) + also


def _rounded_past(text: str, part: pa.Table, on_read: bool) -> tuple[str, str] | None:
    """A floor, ceil or round of a decimal in ``text`` that rounds a value of ``part``
    past its type's digits: what, and the fix; None where none does."""
    import pyarrow.dataset as ds

    types = {f.name: f.type for f in part.schema}
    for node in _walk(_parse(text)):
        if not (isinstance(node, _Call) and node.name in ("floor", "ceil", "round")):
            continue
        compiler = _Compiler(text, types=types)
        try:
            args = [compiler.to_expr(a) for a in node.args]
            t = compiler._type(node.args[0])
            if t is None or not pa.types.is_decimal(t):
                continue
            wider = _rounding_type(t, _places(node))
            rounded = _FUNCTIONS[node.name].build(node.args, [args[0].cast(wider), *args[1:]])
            made = ds.dataset(part).to_table(columns={"value": args[0], "rounded": rounded})
        except (pa.ArrowException, TypeError, ValueError, RecursionError):
            continue  # its argument fails itself: another node says why
        most = decimal.Decimal(10) ** (t.precision - t.scale)
        past = pc.greater_equal(pc.abs(made.column("rounded")), pa.scalar(most, wider))
        at = pc.index(past, True).as_py()
        if at < 0:
            continue
        value, to = made.column("value")[at].as_py(), made.column("rounded")[at].as_py()
        widened = f"decimal({wider.precision}, {wider.scale})"
        places = "" if len(node.args) < 2 or _places(node) is None else f", {_places(node)}"
        subject = node.args[0]
        message = (f"{node.written}() of " + (f"column '{subject.name}' ({t})"
                                              if isinstance(subject, _Column)
                                              else f"a {t} value")
                   + f" rounds {value} to {to}, which has more digits than the "
                   f"{t.precision} of the type {node.written}() keeps")
        if isinstance(subject, _Column):
            cast = f"`op: cast` with `columns: {{{subject.name}: {widened}}}`"
            hint = ((f"filter in steps after the read instead: {cast}, then `op: filter`"
                     if on_read else f"widen the column first: {cast} in a step before this "
                     "one") + f" ({node.written}() then keeps that type), or round it as a "
                    f"float: {node.written}(cast({subject.name} as float64){places})")
        else:
            hint = ("cast the decimal columns it is computed from to a wider decimal first "
                    f"(`op: cast`, e.g. {widened}), or round it as a float: "
                    f"{node.written}(cast(... as float64){places})")
        return message, hint
    return None


def referenced_columns(text: str) -> list[str]:
    """Column names used by ``text``, in order of first appearance, without duplicates.

    Example::

        >>> referenced_columns("total / tenure > 2 and tenure > 0")
        ['total', 'tenure']
    """
    node = _parse(_require_text(text))
    columns = sorted((n.pos, n.name) for n in _walk(node) if isinstance(n, _Column))
    return list(dict.fromkeys(name for _, name in columns))


def expression_type(text: str, schema: pa.Schema) -> pa.DataType:
    """The arrow type ``text`` evaluates to over ``schema``, checked without reading any data.

    Raises :class:`ExpressionError` for unknown columns (suggesting a close name) and for
    operations the column types don't support.

    Example::

        >>> schema = pa.schema({"total": pa.int64(), "tenure": pa.int32()})
        >>> expression_type("total / tenure", schema)
        DataType(double)
    """
    return _typed(_require_text(text), schema)


def check_filter(text: str, schema: pa.Schema) -> pc.Expression:
    """Check that ``text`` is a valid true/false predicate over ``schema`` and return it parsed.

    Example::

        >>> check_filter("tenure >= 0", pa.schema({"tenure": pa.int64()}))
        <pyarrow.compute.Expression (tenure >= 0)>
    """
    text = _require_text(text)
    result = expression_type(text, schema)
    if not (pa.types.is_boolean(result) or pa.types.is_null(result)):
        start = len(text) - len(text.lstrip())
        raise ExpressionError(
            f"filter must be true/false, got {result}; compare it with a value, e.g. "
            f"{text.strip() + ' > 0'!r}"
            if _is_numeric(result)
            else f"filter must be true/false, got {result}",
            text,
            start,
        )
    return _compiled(text, _types_of(text, schema))


def nan_safe_filter(text: str, nan_columns: Collection[str],
                    schema: pa.Schema | None = None,
                    unread: Collection[str] = ()) -> pc.Expression | None:
    """What of filter ``text`` Parquet row-group statistics may judge where the columns
    ``nan_columns`` can hold NaN (their min and max leave it out): a weaker filter that
    every row passing ``text`` passes and whose truth never rests on a NaN; the filter
    itself where it reads none of them, None where no part of it is so. Skip row groups
    by it, then filter the rows read by the whole filter. No part of it reads the
    columns ``unread`` (a read's columns that the files hold as another type than
    ``schema``'s: their rows are judged once cast).

    Example::

        >>> schema = pa.schema({"x": pa.float64(), "n": pa.int64()})
        >>> # x > 10 is what row groups are skipped by (Arrow's statistics see through
        >>> # the cast of a float64 column to double)
        >>> nan_safe_filter("x > 10 and x != 12", {"x"}, schema)  # doctest: +ELLIPSIS
        <pyarrow.compute.Expression (cast(x, ...) > 10)>
        >>> print(nan_safe_filter("x != 1", {"x"}, schema))  # NaN != 1 is true
        None
        >>> nan_safe_filter("n > 5 and x > 10", {"x"}, schema, unread={"n"})  # doctest: +ELLIPSIS
        <pyarrow.compute.Expression (cast(x, ...) > 10)>
    """
    text = _require_text(text)
    return _nan_safe(text, _types_of(text, schema), frozenset(nan_columns), frozenset(unread))
