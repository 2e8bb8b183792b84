"""window: columns computed over each row's key's rows in order (SQL's window functions).

Each row gets values from the rows of its key (``by``) in ``order``: its position and
rank, the value of the row before or after it (``lag``, ``lead``), running totals up to
it (``cum_*``) and rolling ones over the rows or the time just before it
(``rolling_*``). The rows of a key must meet in one place, so ``window`` is a shuffle
(``operators.base.Shuffle``): every row goes, by a hash of its key, to an output
partition, where the rows of each key are sorted and the columns computed, vectorised
over all the keys at once. The output rows are the input's rows (every one, with its
columns) plus the new columns, in key order, then ``order``; rows whose order ties are
in the order of a hash of their values, so the output is the same on every engine and
partitioning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import (
    ARROW_ERRORS,
    DataError,
    MissingColumnError,
    ParamError,
    Params,
    SchemaError,
    Shuffle,
    register,
    require_columns,
    suggest,
)
from operators.expressions import (
    ExpressionError,
    expression_type,
    parse_expression,
    referenced_columns,
    value_failure,
)
from operators.features.aggregate import _CALL, _raise_all, _split_args
from operators.features.columns import arrow_message
from operators.features.grouping import (
    ByKeys,
    check_order,
    distinct_keys,
    nested,
    one_partitioning,
    order_direction,
    order_keys,
    ordered,
    partition_mb_field,
    partitions_field,
    plain,
    run_first,
    run_starts,
    sorted_order,
)
from operators.hashing import content_hash

# name: (fewest arguments, most, what it computes)
FUNCTIONS: dict[str, tuple[int, int, str]] = {
    "row_number": (0, 0, "the row's position among its key's rows in order, from 1"),
    "rank": (0, 0, "1 + the rows of its key before it in order (rows of the same order "
                   "share a rank, with a gap after them)"),
    "dense_rank": (0, 0, "as rank, without gaps"),
    "percent_rank": (0, 0, "(rank - 1) / (the key's rows - 1), from 0 to 1 (0 for a key of "
                           "one row)"),
    "cume_dist": (0, 0, "the share of the key's rows ordered before this one or with it "
                        "(its ties included)"),
    "ntile": (1, 1, "ntile(4): the quarter of its key's rows the row is in, 1 to 4 (the "
                    "first groups one row larger where the rows do not divide evenly)"),
    "first_value": (1, 1, "x on the key's first row in order"),
    "last_value": (1, 1, "x on the key's last row in order (of all its rows)"),
    "lag": (1, 3, "lag(x): x on the row before (null on the first); lag(x, n): n rows "
                  "before; lag(x, n, default): default where there is no such row"),
    "lead": (1, 3, "lead(x): x on the row after (null on the last); lead(x, n): n rows "
                   "after; lead(x, n, default): default where there is no such row"),
    "cum_sum": (1, 1, "the sum of x over the rows up to this one (this one included)"),
    "cum_count": (0, 1, "cum_count(): the rows up to this one; cum_count(x): those where x "
                        "is not null"),
    "cum_mean": (1, 1, "the mean of x over the rows up to this one"),
    "cum_min": (1, 1, "the smallest x up to this one"),
    "cum_max": (1, 1, "the largest x up to this one"),
    "rolling_sum": (2, 2, "rolling_sum(x, 3): the sum of x over this row and the 2 before "
                          "it; rolling_sum(x, '7 days'): over the rows whose order is less "
                          "than 7 days before this row's (order: one time column)"),
    "rolling_mean": (2, 2, "as rolling_sum, the mean"),
    "rolling_count": (2, 2, "as rolling_sum, the rows where x is not null"),
    "rolling_min": (2, 2, "as rolling_sum, the smallest x (numbers, dates, times)"),
    "rolling_max": (2, 2, "as rolling_sum, the largest x (NaN above every number)"),
    "next_sum": (2, 2, "next_sum(x, 3): the sum of x over the 3 rows after this one; "
                       "next_sum(x, '30 days'): over the rows after this row's time and "
                       "less than 30 days after it (a label: what a customer does next)"),
    "next_mean": (2, 2, "as next_sum, the mean"),
    "next_count": (2, 2, "as next_sum, the rows where x is not null"),
    "next_min": (2, 2, "as next_sum, the smallest x"),
    "next_max": (2, 2, "as next_sum, the largest x"),
}
_VALUE_ARG = {"lag", "lead", "cum_sum", "cum_count", "cum_mean", "cum_min", "cum_max",
              "rolling_sum", "rolling_mean", "rolling_count", "rolling_min", "rolling_max",
              "next_sum", "next_mean", "next_count", "next_min", "next_max",
              "first_value", "last_value"}
_SPAN = re.compile(r"^(\d+)\s*(second|minute|hour|day|week)s?$")
_UNIT_US = {"second": 10**6, "minute": 60 * 10**6, "hour": 3600 * 10**6,
            "day": 86_400 * 10**6, "week": 7 * 86_400 * 10**6}
_MOST_ROWS = 2**31 - 1


@dataclass(frozen=True)
class WindowColumn:
    """One output column: ``name = fn(arg, option)``; ``arg`` is an expression text."""

    name: str
    fn: str
    arg: str | None = None
    rows: int | None = None  # lag/lead's offset, a rolling window's rows
    span_us: int | None = None  # a rolling window's time span
    default: str | None = None  # lag/lead's value past the key's rows (an expression)


def parse_window_column(name: str, text: Any) -> WindowColumn:
    """``text`` (``lag(amount)``) as a WindowColumn; ParamError says what is wrong."""
    where = f"window column '{name}'"
    match = _CALL.match(text) if isinstance(text, str) else None
    if match is None:
        raise ParamError(f"{where}: {text!r} is not a window function",
                         hint="write function(expression), e.g. lag(amount), row_number(), "
                              f"rolling_sum(amount, '7 days'); functions: "
                              f"{', '.join(FUNCTIONS)}")
    given, inner = match.group(1), match.group(2)
    fn = given.lower()
    if fn not in FUNCTIONS:
        raise ParamError(f"{where}: unknown window function '{given}'"
                         f"{suggest(fn, list(FUNCTIONS))}",
                         hint=f"functions: {', '.join(FUNCTIONS)}")
    args = _split_args(inner) if inner.strip() else []
    low, high, what = FUNCTIONS[fn]
    if not low <= len(args) <= high:
        wanted = (str(low) if low == high else f"{low} or {high}" if high == low + 1
                  else f"{low} to {high}")
        raise ParamError(f"{where}: {fn} takes {wanted} argument{'s' if high != 1 else ''}, "
                         f"got {len(args)}", hint=f"{fn}: {what}")
    arg = args[0] if args and fn in _VALUE_ARG else None
    if arg is not None:
        try:
            parse_expression(arg)
        except ExpressionError as exc:
            raise ParamError(f"{where}: {exc}") from None
    rows = span = default = None
    if fn == "ntile":
        rows = _whole(args[0], where, "ntile's number of groups")
    if fn in ("lag", "lead"):
        rows = _whole(args[1], where, f"{fn}'s offset") if len(args) > 1 else 1
        if len(args) > 2:
            default = args[2]
            try:
                parse_expression(default)
            except ExpressionError as exc:
                raise ParamError(f"{where}: {fn}'s default: {exc}") from None
    elif fn.startswith(("rolling_", "next_")):
        size = args[1].strip()
        if size[:1] in "'\"" and size[-1:] == size[:1]:
            found = _SPAN.match(size[1:-1].strip().lower())
            if found is None or int(found.group(1)) == 0:
                raise ParamError(f"{where}: the window '{size[1:-1]}' is not a time span",
                                 hint="e.g. '7 days', '12 hours', '30 minutes', '2 weeks'")
            span = int(found.group(1)) * _UNIT_US[found.group(2)]
        else:
            rows = _whole(size, where, "the window's rows")
    return WindowColumn(name, fn, arg, rows, span, default)


def _whole(text: str, where: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MOST_ROWS:
        raise ParamError(f"{where}: {what} is a whole number of rows from 1 to "
                         f"{_MOST_ROWS:,}, got '{text}'",
                         hint="e.g. lag(amount, 2), rolling_mean(amount, 7), or a time span "
                              "in quotes: rolling_mean(amount, '7 days')")
    return value


class WindowParams(Params):
    by: list[str] = Field(description="the key columns: each row's values come from the "
                                      "rows of its key; `[]`: all the rows are one key")
    order: list[str] = Field(description="the columns that order a key's rows: [ts], or "
                                         "[\"ts desc\"] for the largest first (nulls last "
                                         "either way); rows of equal order follow a hash "
                                         "of their values")
    columns: dict[str, str] = Field(
        description="new columns: {name: function(expression)}, e.g. {prev_amount: "
                    "lag(amount), n: row_number(), spend_7d: rolling_sum(amount, '7 days')}")
    partitions: int | None = partitions_field()
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)

    _distinct_keys = field_validator("by")(distinct_keys)

    @field_validator("order")
    @classmethod
    def _some_order(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one column to order the rows by")
        for entry in value:
            order_direction(entry)
        return value

    @property
    def ordering(self) -> list[tuple[str, bool]]:
        """(column, descending) per order entry."""
        return [order_direction(entry) for entry in self.order]

    @field_validator("columns")
    @classmethod
    def _parses(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("name at least one column to compute")
        problems = []
        for name, text in value.items():
            try:
                parse_window_column(name, text)
            except ParamError as exc:
                problems.append(str(exc))
        if problems:
            raise ParamError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _time_spans_need_one_order(self) -> WindowParams:
        spans = [n for n, t in self.columns.items()
                 if parse_window_column(n, t).span_us is not None]
        if spans and len(self.order) != 1:
            raise ParamError(f"window column '{spans[0]}': a time span needs one order "
                             f"column, a time (order has {len(self.order)})",
                             hint=f"order: [{self.ordering[0][0]}] (rows of one time "
                                  "follow a hash of their values)")
        if spans and self.ordering[0][1]:
            raise ParamError(f"window column '{spans[0]}': a time span is the time before "
                             f"each row: order '{self.order[0]}' ascending",
                             hint=f"order: [{self.ordering[0][0]}]")
        return self


@register("window")
class Window(ByKeys, Shuffle):
    """Columns from each row's key's rows in order: lag, lead, ranks, running and rolling sums.

    Every row is kept, with the new columns added; the output is in key order, then
    `order`, within each output partition (rows go by a hash of their key, through the
    scratch folder, on any engine). Functions: row_number(), rank(), dense_rank(),
    percent_rank(), cume_dist(), ntile(n), first_value(x), last_value(x) (of all the
    key's rows), lag(x, n, default), lead(x, n, default), cum_sum, cum_count, cum_mean,
    cum_min, cum_max (up to the row), rolling_sum, rolling_mean, rolling_count,
    rolling_min, rolling_max (x, N rows or a span such as '7 days' up to the row; also
    seconds, minutes, hours, weeks), next_sum, next_mean, next_count, next_min, next_max
    (the N rows or the span after the row: labels). `order: ["ts desc"]` puts the
    largest first.

    ```yaml
    - op: window
      by: [customer_id]
      order: [ts]
      columns:
        n: row_number()                            # 1, 2, 3 ... per customer
        previous_ts: lag(ts)                       # null on a customer's first event
        spend_so_far: cum_sum(amount)
        spend_7d: rolling_sum(amount, '7 days')    # this event and those of 7 days before
        avg_last_3: rolling_mean(amount, 3)        # this event and the 2 before
    ```
    """

    Params = WindowParams
    new_rows = False  # the input's rows, with columns added
    in_model = False  # what a pipeline prepares, not what a model does
    row_order = "groups"

    @cached_property
    def windows(self) -> list[WindowColumn]:
        return [parse_window_column(n, t) for n, t in self.params.columns.items()]

    def input_columns(self, schema: pa.Schema) -> list[str]:
        used = [*self.params.by, *(c for c, _ in self.params.ordering)]
        for w in self.windows:
            for text in (w.arg, w.default):
                if text is not None:
                    used += [c for c in referenced_columns(text) if c not in used]
        return used

    def check_input(self, schema: pa.Schema) -> None:
        # the keys and orders here; each column's arguments in output_schema, whose
        # error names the window column (and the plan its line)
        require_columns(schema, [*self.params.by, *(c for c, _ in self.params.ordering)])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        check_order(schema, self.params.by, self.params.ordering, durations=False)
        out = schema
        problems = []
        for w in self.windows:
            try:
                field = pa.field(w.name, self._type(w, schema))
            except SchemaError as exc:
                problems.append(exc)
                continue
            if out.get_field_index(w.name) >= 0:
                problems.append(SchemaError(
                    f"window column '{w.name}': the input has a column '{w.name}' already",
                    hint="name the new column otherwise (or drop the input's first)"))
                continue
            out = out.append(field)
        _raise_all(problems, MissingColumnError if all(
            isinstance(p, MissingColumnError) for p in problems) else SchemaError)
        return out

    def _type(self, w: WindowColumn, schema: pa.Schema) -> pa.DataType:
        where = f"window column '{w.name}' ({self.params.columns[w.name]})"
        if w.fn in ("percent_rank", "cume_dist"):
            return pa.float64()
        if w.fn in ("row_number", "rank", "dense_rank", "ntile", "cum_count",
                    "rolling_count", "next_count"):
            if w.arg is not None:
                _arg_type(w, schema, where)  # checked: it must compute
            return pa.int64()
        t = _arg_type(w, schema, where)
        if w.span_us is not None:
            first = self.params.ordering[0][0]
            order = schema.field(first).type
            if not (pa.types.is_timestamp(order) or pa.types.is_date(order)):
                raise SchemaError(f"{where}: a time span needs a time order, and "
                                  f"'{first}' is {order}",
                                  hint="order by a timestamp or date column, or give the "
                                       "window in rows: rolling_sum(x, 7)")
        value = t.value_type if pa.types.is_dictionary(t) else t
        if w.fn in ("first_value", "last_value"):
            return value
        if w.fn in ("lag", "lead"):
            if w.default is not None:
                given = expression_type(w.default, schema)
                given = given.value_type if pa.types.is_dictionary(given) else given
                if not (given == value or pa.types.is_null(given) or (
                        _number(given) and _number(value))):
                    raise SchemaError(f"{where}: {w.fn}'s default is {given}, and the values "
                                      f"are {value}", hint=f"give a default of {value}")
            return value
        if w.fn in ("cum_min", "cum_max"):
            if nested(value) or not ordered(value):
                raise SchemaError(f"{where}: {w.fn} takes values with an order (numbers, "
                                  f"text, dates, times), not {t}")
            return value
        if w.fn in ("rolling_min", "rolling_max", "next_min", "next_max"):
            if not (pa.types.is_integer(value) or pa.types.is_floating(value)
                    or pa.types.is_timestamp(value) or pa.types.is_date(value)
                    or pa.types.is_duration(value)) or pa.types.is_float16(value):
                raise SchemaError(f"{where}: {w.fn} takes numbers, dates or times, not {t}",
                                  hint="cum_min / cum_max take text too")
            return value
        if pa.types.is_decimal(value):
            return pa.float64()  # summed as float64, as its mean
        if not (pa.types.is_integer(value) or pa.types.is_floating(value)
                or pa.types.is_boolean(value)) or pa.types.is_float16(value):
            raise SchemaError(f"{where}: {w.fn} takes numbers, not {t}",
                              hint="cast it, or count it: cum_count(x)")
        if w.fn.endswith("_mean"):
            return pa.float64()
        return pa.int64() if pa.types.is_integer(value) or pa.types.is_boolean(
            value) else pa.float64()

    # ------------------------------------------------------------------ shuffle

    def partial(self, part: pa.Table) -> pa.Table:
        """Every row, with its key's values (decoded, -0.0 as 0.0) to be placed by."""
        return self.keyed(part)

    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        keys = self.key_columns()
        rows = partials.drop_columns(keys)
        if rows.num_rows == 0:
            return self.output_schema(rows.schema).empty_table()
        # sorted by key, order (nulls last), then a hash of the row's values for ties:
        # hashed only where rows tie (a sort is stable), not every column of every row
        ordering = self.params.ordering
        table, sort_keys = order_keys(rows, ordering, [(k, partials.column(k)) for k in keys])
        at = sorted_order(table, sort_keys, "at_end").copy()  # written below
        table = table.take(pa.array(at))
        peers = run_starts(table, table.column_names)  # a run of rows of one key and order
        run = np.cumsum(peers) - 1
        tied = np.flatnonzero(np.bincount(run)[run] > 1)
        if tied.size:
            tie = content_hash(rows.take(pa.array(at[tied])), 0x7135)
            at[tied] = at[tied][np.lexsort((tie, run[tied]))]
        rows = rows.take(pa.array(at))
        n = rows.num_rows
        starts = run_starts(table, keys)  # first row of each key
        gid = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)[gid]  # each row's key's first row
        values = self._arguments(rows)
        for w in self.windows:
            column = _compute(w, values, rows, peers, gid, first, n, ordering[0][0])
            rows = rows.append_column(pa.field(w.name, column.type), column)
        return rows.combine_chunks()

    def _arguments(self, rows: pa.Table) -> dict[str, pa.Array]:
        import pyarrow.dataset as ds

        texts = {t for w in self.windows for t in (w.arg, w.default) if t is not None}
        if not texts:
            return {}
        names = {text: f"a{i}" for i, text in enumerate(sorted(texts))}
        try:
            out = ds.dataset(rows).to_table(
                columns={names[t]: parse_expression(t, rows.schema) for t in names})
        except ARROW_ERRORS as exc:
            failing = next((w for w in self.windows if w.arg is not None
                            and not _evaluates(rows, w.arg)), self.windows[0])
            detail, hint = value_failure(exc, [t for t in (failing.arg, failing.default)
                                               if t is not None], rows)
            raise DataError(f"window column '{failing.name}' "
                            f"({self.params.columns[failing.name]}): {detail}",
                            hint=hint) from None
        return {t: plain(out.column(names[t])) for t in names}


def _evaluates(rows: pa.Table, text: str) -> bool:
    import pyarrow.dataset as ds

    try:
        ds.dataset(rows).to_table(columns={"a": parse_expression(text, rows.schema)})
    except ARROW_ERRORS:
        return False
    return True


def _over_key(w: WindowColumn, values: dict[str, pa.Array], peers: np.ndarray,
              first: np.ndarray, size: np.ndarray, index: np.ndarray) -> pa.Array:
    """The functions of a row's place among all its key's rows (as Spark's); ``peers``:
    the first row of each run of ties (of key and order)."""
    if w.fn == "first_value":
        return values[w.arg].take(pa.array(first))
    if w.fn == "last_value":
        return values[w.arg].take(pa.array(first + size - 1))
    if w.fn == "dense_rank":
        dense = np.cumsum(peers)
        return pa.array(dense - dense[first] + 1)
    position = index - first  # from 0
    if w.fn == "ntile":
        groups = w.rows
        small, larger = size // groups, size % groups  # the first `larger` get one more
        head = larger * (small + 1)
        return pa.array(np.where(position < head, position // (small + 1),
                                 larger + (position - head) // np.maximum(small, 1)) + 1)
    run_start = run_first(peers)  # its run of ties
    if w.fn == "rank":
        return pa.array(run_start - first + 1)
    if w.fn == "percent_rank":
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (run_start - first) / (size - 1)
        return pa.array(np.where(size > 1, out, 0.0))
    starts = np.flatnonzero(peers)  # cume_dist: up to the end of the row's run of ties
    ends = np.append(starts[1:], len(index)) - 1
    return pa.array((ends[np.cumsum(peers) - 1] - first + 1) / size)


def _number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _arg_type(w: WindowColumn, schema: pa.Schema, where: str) -> pa.DataType:
    try:
        return expression_type(w.arg, schema)
    except ExpressionError as exc:
        missing = [c for c in referenced_columns(w.arg) if schema.get_field_index(c) < 0]
        # a missing column may come from a fit upstream (one_hot's): the plan waits
        kind = MissingColumnError if missing else SchemaError
        raise kind(f"{where}: {exc}") from None


def _compute(w: WindowColumn, values: dict[str, pa.Array], rows: pa.Table,
             peers: np.ndarray, gid: np.ndarray, first: np.ndarray, n: int,
             order: str) -> pa.Array:
    index = np.arange(n)
    if w.fn == "row_number":
        return pa.array(index - first + 1)
    size = np.bincount(gid)[gid]  # the rows of each row's key
    if w.fn in ("rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "first_value",
                "last_value"):
        return _over_key(w, values, peers, first, size, index)
    if w.fn == "cum_count" and w.arg is None:
        return pa.array(index - first + 1)
    x = values[w.arg]
    if w.fn in ("lag", "lead"):
        source = index - w.rows if w.fn == "lag" else index + w.rows
        inside = (source >= 0) & (source < n)
        inside[inside] &= gid[source[inside]] == gid[inside]
        taken = x.take(pa.array(np.where(inside, source, 0), mask=~inside))
        if w.default is None:
            return taken
        default = values[w.default]
        if default.type != taken.type:  # a number of another type, or null
            try:
                default = (default.cast(pa.float64()).cast(taken.type)
                           if pa.types.is_decimal(taken.type) and _number(default.type)
                           else default.cast(taken.type))
            except ARROW_ERRORS as exc:
                raise DataError(f"window column '{w.name}': {w.fn}'s default "
                                f"({w.default}) as {taken.type}: {arrow_message(exc)}",
                                hint=f"give a default of {taken.type}") from None
        return pc.if_else(pa.array(inside), taken, default)
    if w.fn in ("cum_min", "cum_max"):
        return _running_extreme(x, gid, w.fn == "cum_max")
    start, end = first, index
    ahead = w.fn.startswith("next_")
    if w.rows is not None and ahead:
        start, end = index + 1, np.minimum(first + size - 1, index + w.rows)
    elif w.rows is not None:
        start = np.maximum(first, index - w.rows + 1)
    elif w.span_us is not None:
        start, end = _span_bounds(rows.column(order), gid, first, w.span_us, ahead)
    if w.fn.endswith(("_min", "_max")):
        return _window_extreme(x, start, end, w.fn.endswith("_max"))
    return _window_sum(w, x, first, start, end)


def _window_sum(w: WindowColumn, x: pa.Array, first: np.ndarray, start: np.ndarray,
                end: np.ndarray) -> pa.Array:
    """Sums, counts or means of ``x`` over rows ``start[i]``..``end[i]`` (nulls skipped; a
    sum of none is null; ``start`` past ``end``: no rows). A float window's sum adds its own values
    only (``_range_sums``; a running total is the window from the key's first row,
    ``_key_cumsum``): no difference of two running totals, so a NaN, an infinity or a
    huge value counts only in the windows that hold it, and a key's values never depend
    on what else its partition holds. Counts and integer sums are differences of
    running totals (``_int_window``: exact, as int64 additions wrap)."""
    known = pc.is_valid(x).to_numpy(zero_copy_only=False)
    # by the function, never by the data: the same additions in the same order for a
    # key's window wherever the key is
    running = w.fn.startswith("cum_")
    count = _int_window(known.astype(np.int64), start, end)
    if w.fn.endswith("_count"):
        return pa.array(count)
    value = x.type.value_type if pa.types.is_dictionary(x.type) else x.type
    integer = pa.types.is_integer(value) or pa.types.is_boolean(value)
    mean = w.fn.endswith("_mean")
    if integer and not mean:
        try:
            whole = pc.fill_null(x.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            raise DataError(f"window column '{w.name}': a value of '{w.arg}' is past the "
                            "range of int64, in which integer sums add up",
                            hint="cast the values to float64 first") from None
        # exactly whether a window's sum fits: the sums of the values' high and low 32
        # bits fit int64 (up to 2**31 rows), and the sum fits iff its high part does
        high = _int_window(whole >> 32, start, end) + (
            _int_window(whole & 0xFFFFFFFF, start, end) >> 32)
        if high.size and (high.min() < -(2**31) or high.max() >= 2**31):
            raise DataError(f"window column '{w.name}': a sum of integers passes the range "
                            "of int64", hint="cast the values to float64 first")
        return pa.array(_int_window(whole, start, end), mask=count == 0)
    filled = pc.fill_null(x.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    # inf + -inf is NaN and a sum past 1e308 inf, as they should be: no RuntimeWarning
    # on the user's terminal for them
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        total = _key_cumsum(filled, first) if running else _range_sums(filled, start, end)
        if mean:
            total = total / count
    return pa.array(total, mask=count == 0)


def _int_window(x: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per row i, the sum of integers ``x[start[i]..end[i]]`` as a difference of running
    totals: int64 additions wrap, so a sum that fits in int64 is exact (``start`` past
    ``end``: none)."""
    with np.errstate(over="ignore"):
        running = np.concatenate([[0], np.cumsum(x, dtype=np.int64)])
        return np.where(start <= end, running[end + 1] - running[np.minimum(start, end + 1)],
                        0)


def _key_cumsum(x: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running totals of ``x`` that start again at each key's first row: a scan in
    log2(longest key) vectorised passes, each adding the total ``d`` rows before, so a
    row's total is made of its key's values only, in the same order whatever else the
    partition holds."""
    out = x.copy()
    offset = np.arange(len(x)) - first
    d = 1
    while len(x) and d <= offset.max():
        # contiguous, in place where the row is d or more into its key (a ufunc reads
        # the overlapping input before it writes: numpy copies it)
        np.add(out[d:], out[:-d], out=out[d:], where=offset[d:] >= d)
        d *= 2
    return out


def _range_sums(x: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per row i, the sum of ``x[start[i]..end[i]]`` (nothing where ``start`` is past
    ``end``): sums of runs of 2**k rows (each level from the one below), a window the sum
    of the runs its length's bits give, from its first row on: only its own values, in
    an order that depends on its length alone."""
    length = np.maximum(end - start + 1, 0)
    levels = _runs(x, length, np.add)
    total = np.zeros_like(x)
    at = np.where(length > 0, start, 0)
    for k in range(len(levels) - 1, -1, -1):
        use = np.flatnonzero((length >> k) & 1)
        total[use] += levels[k][at[use]]
        at[use] += 1 << k
    return total


def _runs(x: np.ndarray, length: np.ndarray, combine: Any) -> list[np.ndarray]:
    """Level k: ``combine`` of each run of 2**k rows from each row on (level k + 1 from
    two runs of level k), up to the longest window's ``length``."""
    levels = [x]
    while len(x) and (1 << len(levels)) <= length.max():
        below, half = levels[-1], 1 << (len(levels) - 1)
        levels.append(combine(below[:-half], below[half:]))
    return levels


def _window_extreme(x: pa.Array, start: np.ndarray, end: np.ndarray,
                    largest: bool) -> pa.Array:
    """Per row i, the largest (smallest) non-null ``x[start[i]..end[i]]`` (``start`` past
    ``end``: none): extremes of runs of 2**k rows, a window the extreme of the two runs that
    cover it (they may overlap: an extreme does not mind). NaN is above every number:
    it wins a maximum and loses a minimum to any number."""
    n = len(x)
    value = x.type.value_type if pa.types.is_dictionary(x.type) else x.type
    known = pc.is_valid(x).to_numpy(zero_copy_only=False)
    if pa.types.is_floating(value):
        v = pc.fill_null(x.cast(pa.float64()), -np.inf if largest else np.inf).to_numpy(
            zero_copy_only=False)
        pick = np.maximum if largest else np.fmin  # NaN: kept by a max, dropped by a min
    else:
        limit = np.iinfo(np.int64).min if largest else np.iinfo(np.int64).max
        plain_x = x.cast(value)
        if pa.types.is_date32(value):
            plain_x = plain_x.cast(pa.int32())  # Arrow casts a date32 to int32 only
        v = pc.fill_null(plain_x.cast(pa.int64()), limit).to_numpy(zero_copy_only=False)
        pick = np.maximum if largest else np.minimum
    length = np.maximum(end - start + 1, 0)
    levels = _runs(v, length, pick)
    out = np.zeros_like(v)
    k = np.zeros(n, dtype=np.int64)
    k[length > 0] = np.floor(np.log2(length[length > 0])).astype(np.int64)
    for level in np.unique(k[length > 0]):
        at = np.flatnonzero((k == level) & (length > 0))
        last = end[at] - (1 << int(level)) + 1
        out[at] = pick(levels[level][start[at]], levels[level][last])
    empty = _int_window(known.astype(np.int64), start, end) == 0
    if pa.types.is_floating(value) and not largest:
        # a minimum drops NaN to any number: a window of NaN (and nulls) only is NaN
        numbers = _int_window((known & ~np.isnan(v)).astype(np.int64), start, end)
        out = np.where((numbers == 0) & ~empty, np.nan, out)
    result = pa.array(out, mask=empty)
    if pa.types.is_date32(value):
        result = result.cast(pa.int32())  # Arrow makes a date32 of int32s
    return result if result.type == value else result.cast(value)


def _running_extreme(x: pa.Array, gid: np.ndarray, largest: bool) -> pa.Array:
    """Per row, the largest (smallest) non-null ``x`` of its key up to it; NaN is a value
    above every number (as Spark orders it)."""
    values = x.cast(x.type.value_type) if pa.types.is_dictionary(x.type) else x
    usable = pc.is_valid(values).to_numpy(zero_copy_only=False)
    distinct = pc.unique(values.filter(pa.array(usable)))
    distinct = distinct.take(pc.sort_indices(distinct))  # NaN after every number
    rank = np.zeros(len(values), dtype=np.int64)  # 0: no value yet
    found = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)
    size = len(distinct) + 1
    if usable.any():
        at = found[usable].astype(np.int64)
        rank[usable] = (at + 1) if largest else (size - 1 - at)
    running = np.maximum.accumulate(rank + gid * size) - gid * size
    have = running > 0
    position = np.where(have, (running - 1) if largest else (size - 1 - running), 0)
    return distinct.take(pa.array(position, mask=~have)) if len(distinct) else pa.nulls(
        len(values), values.type)


def _span_bounds(order: pa.ChunkedArray, gid: np.ndarray, first: np.ndarray,
                 span_us: int, ahead: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first and last rows of its key in its time window: those whose time
    is less than ``span_us`` before its own, it included; ``ahead``: after its own and
    less than ``span_us`` after it. A null time has no window (first past last)."""
    t = plain(order)
    if pa.types.is_date(t.type):
        t = t.cast(pa.timestamp("s"))
    # in the column's own unit (a span is whole seconds: exact in any of them)
    per_us = {"s": 10**-6, "ms": 10**-3, "us": 1, "ns": 1000}[t.type.unit]
    span = int(span_us * per_us)
    ticks = t.cast(pa.int64())
    known = pc.is_valid(ticks).to_numpy(zero_copy_only=False)
    at = pc.fill_null(ticks, 0).to_numpy(zero_copy_only=False)
    n = len(at)
    index = np.arange(n)
    if n == 0:
        return index, index
    heads = np.flatnonzero(first == index)
    last = np.append(heads[1:], n)[gid] - 1  # each row's key's last row
    known_last = last - np.bincount(gid, weights=~known).astype(np.int64)[gid]
    if (at[known].astype(np.float64) - at[first][known]).max(initial=0) + span > 2.0**61:
        start, end = _span_bounds_by_rank(at, known, gid, span, ahead)  # centuries of ns
    else:
        # rows are sorted by key, then time (nulls last): laid end to end, each key's
        # times from its first one, then a gap of more than the span, make one
        # increasing line on which one search finds every window's bounds (no sort)
        offset = at - at[first]
        offset[~known] = 0
        widest = np.maximum.reduceat(offset, heads)
        offset[~known] = widest[gid[~known]]  # a null time: at its key's end
        width = widest + span + 1
        # the line's positions must stay in int64: keys in groups of < 2**61 of line
        group = (np.cumsum(width.astype(np.float64)) - width) // 2.0**61
        start, end = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for g in np.unique(group):
            keys = np.flatnonzero(group == g)
            lo = heads[keys[0]]
            hi = heads[keys[-1] + 1] if keys[-1] + 1 < len(heads) else n
            base = np.cumsum(width[keys]) - width[keys]
            line = base[gid[lo:hi] - keys[0]] + offset[lo:hi]
            if ahead:
                start[lo:hi] = lo + np.searchsorted(line, line, side="right")
                end[lo:hi] = lo + np.searchsorted(line, line + span, side="left") - 1
            else:
                start[lo:hi] = lo + np.searchsorted(line, line - span, side="right")
                end[lo:hi] = index[lo:hi]
    start = np.maximum(start, first)
    end = np.minimum(end, known_last)  # a null time is no row of another's window
    return np.where(known, start, index + 1), np.where(known, end, index)


def _span_bounds_by_rank(at: np.ndarray, known: np.ndarray, gid: np.ndarray, span: int,
                         ahead: bool) -> tuple[np.ndarray, np.ndarray]:
    """``_span_bounds`` for keys whose times span more than 2**61 ticks (or a longer
    span): positions are each key's number times (distinct times + 1) plus the time's
    rank among them (a sort of the times, slower). A time's distance from int64's ends
    is taken as an unsigned number, so a span past them means every row that way."""
    distinct = np.unique(at[known])
    size = len(distinct) + 1
    rank = np.where(known, np.searchsorted(distinct, at), size - 1)
    position = gid * size + rank
    span_u = np.uint64(min(span, 2**64 - 1))
    flip = np.uint64(1 << 63)
    from_least = at.view(np.uint64) ^ flip  # at - int64's least, exactly
    with np.errstate(over="ignore"):
        if ahead:  # the times after this one and less than the span after it
            start = np.searchsorted(position, position, side="right")
            past = (~from_least) < span_u  # the span reaches past int64's most
            edge = ((from_least + span_u) ^ flip).view(np.int64)  # at + span
            upper = np.where(past, len(distinct),
                             np.searchsorted(distinct, edge, side="left"))
            end = np.searchsorted(position, gid * size + upper, side="left") - 1
            return start, end
        past = from_least < span_u  # the span reaches past int64's least
        edge = ((from_least - span_u) ^ flip).view(np.int64)  # at - span
        lower = np.where(past, 0, np.searchsorted(distinct, edge, side="right"))
    start = np.searchsorted(position, gid * size + lower, side="left")
    return start, np.arange(len(at))
