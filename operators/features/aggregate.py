"""aggregate: one row per key from the rows of every partition (a group-by).

Each partition is reduced to partial rows, one per key (``partial``); the runtime sends
the partial rows of a key from every partition to one place by a hash of the key and
``finish`` combines them (``operators.base.Shuffle``). Every aggregation is made of
partials that combine in any order, so the output does not depend on how the rows
were partitioned or which engine ran them (sums of floats up to rounding):

- counts and sums add up; a mean is a sum and a count;
- a variance is each partial's count, mean and sum of squared deviations, combined as
  Chan et al. do (no sum of squares minus a square: no cancellation);
- a distinct count keeps each partition's distinct values of the key (memory grows with
  them: exact, as SQL's ``count(distinct x)``);
- ``max_by(v, o)`` keeps each partition's row of the largest ``o`` (ties: the largest
  ``v``), as Spark's ``max_by`` but deterministic;
- a median or quantile keeps the values (exact, as pandas' ``quantile``: memory grows
  with them, as Spark's exact ``percentile``).
"""

from __future__ import annotations

import datetime
import re
import string
from collections.abc import Iterator
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
    ParamError,
    Params,
    SchemaError,
    Shuffle,
    SluiceError,
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
from operators.features.columns import arrow_message
from operators.features.grouping import (
    INTERNAL,
    Grouper,
    distinct_keys,
    extreme_in_group,
    key_problem,
    nested,
    normalized,
    one_partitioning,
    ordered,
    partition_mb_field,
    partitions_field,
    plain,
    run_starts,
    sorted_order,
    sum_options,
)

# function: (fewest arguments, most arguments, what it gives)
FUNCTIONS: dict[str, tuple[int, int, str]] = {
    "count": (0, 1, "the rows (`count()`), or the values of an expression that are not null"),
    "count_if": (1, 1, "the rows where a condition is true"),
    "sum": (1, 1, "the sum of the values (null when all are null)"),
    "mean": (1, 1, "the mean of the values that are not null (float64)"),
    "min": (1, 1, "the smallest value (numbers, text, dates, times, booleans)"),
    "max": (1, 1, "the largest value"),
    "std": (1, 1, "the sample standard deviation (n - 1; null below 2 values)"),
    "var": (1, 1, "the sample variance (n - 1; null below 2 values)"),
    "count_distinct": (1, 1, "the number of distinct values that are not null (exact)"),
    "any": (1, 1, "whether a condition is true for some row"),
    "all": (1, 1, "whether a condition is true for every row (nulls skipped)"),
    "max_by": (2, 2, "`max_by(value, order)`: the value on the row of the largest order "
                     "(ties: the largest value)"),
    "min_by": (2, 2, "`min_by(value, order)`: the value on the row of the smallest order "
                     "(ties: the smallest value)"),
    "median": (1, 1, "the median of the values that are not null or NaN (exact; float64)"),
    "quantile": (2, 2, "`quantile(x, 0.9)`: the q-quantile of the values, interpolated "
                       "linearly between the two nearest (exact, as pandas' quantile)"),
}
ALIASES = {"avg": "mean", "stddev": "std", "variance": "var", "bool_or": "any",
           "bool_and": "all", "arg_max": "max_by", "arg_min": "min_by"}

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)
_ALL = f"{INTERNAL}all"  # the one key of an aggregate without `by`
_PIVOT = f"{INTERNAL}pivot"  # a row's pivot value: its place among the listed values


@dataclass(frozen=True)
class Aggregation:
    """One output column: ``name = fn(args...)``; ``args`` are expression texts."""

    name: str
    fn: str
    args: tuple[str, ...]
    options: tuple[str, ...] = ()  # literal arguments (quantile's q)

    @property
    def q(self) -> float:
        """The quantile a median or quantile computes."""
        return float(self.options[0]) if self.options else 0.5


def _outside_quotes(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, parenthesis depth after it) of each character of ``text`` from
    ``start`` that is not inside quotes ('...', "...", `...`)."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
            continue
        if ch in "'\"`":
            quote = ch
            continue
        depth += 1 if ch == "(" else -1 if ch == ")" else 0
        yield i, ch, depth


def _split_args(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and quotes."""
    cuts = [i for i, ch, depth in _outside_quotes(text) if ch == "," and depth == 0]
    bounds = [-1, *cuts, len(text)]
    return [text[a + 1:b].strip() for a, b in zip(bounds[:-1], bounds[1:])]


def _closing(text: str, start: int) -> int | None:
    """The index of the parenthesis that closes the one at ``start`` (quotes skipped)."""
    return next((i for i, ch, depth in _outside_quotes(text, start)
                 if ch == ")" and depth == 0), None)


def parse_aggregation(name: str, text: Any) -> Aggregation:
    """``text`` (``sum(amount)``) as an Aggregation; ParamError says what is wrong."""
    where = f"aggregate column '{name}'"
    if not isinstance(text, str):
        raise ParamError(f"{where}: expected an aggregation such as 'sum(amount)', "
                         f"got {text!r}")
    match = _CALL.match(text)
    if match is None:
        raise ParamError(f"{where}: '{text}' is not an aggregation",
                         hint="write function(expression), e.g. sum(amount), count(), "
                              f"max_by(plan, event_time); functions: {', '.join(FUNCTIONS)}")
    given, inner = match.group(1), match.group(2)
    closing = _closing(text, text.index("("))
    if closing is not None and text[closing + 1:].strip():
        raise ParamError(f"{where}: one aggregation per column: '{text}' goes on after "
                         f"'{text[:closing + 1].strip()}'",
                         hint="aggregate each part in a column of its own, then combine the "
                              "columns in a derive step after the aggregate")
    distinct = re.match(r"(?i)\s*distinct\s+(.*)$", inner, re.S)
    if distinct:
        raise ParamError(f"{where}: write count_distinct(x) for count(distinct x)",
                         hint=f"count_distinct({distinct.group(1).strip()})")
    fn = ALIASES.get(given.lower(), given.lower())
    if fn not in FUNCTIONS:
        raise ParamError(f"{where}: unknown aggregation '{given}'"
                         f"{suggest(given.lower(), [*FUNCTIONS, *ALIASES])}",
                         hint=f"functions: {', '.join(FUNCTIONS)}")
    args = [] if not inner.strip() or (fn == "count" and inner.strip() == "*") else (
        _split_args(inner))
    low, high, _ = FUNCTIONS[fn]
    if not low <= len(args) <= high:
        wanted = str(low) if low == high else f"{low} or {high}"
        raise ParamError(f"{where}: {fn} takes {wanted} argument{'s' if high != 1 else ''}, "
                         f"got {len(args)}", hint=f"{fn}: {FUNCTIONS[fn][2]}")
    if fn == "quantile":
        try:
            q = float(args[1])
        except ValueError:
            q = -1.0
        if not 0.0 <= q <= 1.0:
            raise ParamError(f"{where}: quantile's second argument is a number from 0 to 1, "
                             f"got '{args[1]}'", hint="e.g. quantile(amount, 0.9)")
        args = [args[0]]
        fn_args: tuple[str, ...] = (repr(q),)
    else:
        fn_args = ()
    for arg in args:
        if not arg:
            raise ParamError(f"{where}: an argument of {fn} is empty ('{text}')")
        try:
            parse_expression(arg)
        except ExpressionError as exc:
            raise ParamError(f"{where}: {exc}") from None
    return Aggregation(name, fn, tuple(args), fn_args)


PivotValue = (bool | int | float | str | datetime.date | datetime.datetime | datetime.time
              | None)


class PivotParams(Params):
    column: str = Field(description="the column whose values become columns")
    values: list[PivotValue] = Field(
        min_length=1, max_length=1000,
        description="the values that become columns, in order (null too): given, so that "
                    "the output's columns are the same whatever the rows hold")
    format: str = Field("{name}_{value}", description="each output column's name from the "
                                                      "aggregation's {name} and the {value}")

    @field_validator("values")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        seen: list[Any] = []
        for v in value:
            if isinstance(v, float) and v != v:
                raise ValueError("NaN is no value to pivot on (it equals nothing)")
            if any(type(v) is type(w) and v == w for w in seen):
                raise ValueError(f"the value {v!r} is listed twice")
            seen.append(v)
        return value

    @field_validator("format")
    @classmethod
    def _named(cls, value: str) -> str:
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value)
                      if f is not None]
        except ValueError as exc:
            raise ValueError(f"format '{value}': {exc}") from None
        if any(f not in ("name", "value") or spec or conv for f, spec, conv in fields):
            raise ValueError(f"format '{value}': only {{name}} and {{value}} may be filled "
                             "in, as they are (no index, attribute or format spec)")
        if "value" not in {f for f, _, _ in fields}:
            raise ValueError("format must hold {value} (and {name}, for more than one "
                             "aggregation): e.g. '{name}_{value}'")
        return value


def plain_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _value_set(values: list[Any], t: pa.DataType) -> pa.Array:
    """The listed pivot values in the pivot column's type ``t`` (plain), as its rows are
    matched against them (-0.0 as 0.0, as keys); a SchemaError for a value ``t`` cannot
    hold as it is (1.5 or 1000 where the column is int8), or two that are one there (1
    and 1.0 of an integer column)."""
    held: list[Any] = []
    temporal = pa.types.is_temporal(t)
    for value in values:
        if value is None:
            held.append(None)
            continue
        if temporal and isinstance(value, int | float):  # not days or seconds since 1970
            raise SchemaError(
                f"the value {value!r} is no {t}: a number is no date or time",
                hint="write it as YAML reads a date or time ('2026-11-30', '2026-11-30 "
                     "10:00:00', '12:00:00' in quotes: unquoted, YAML reads 12:00:00 as "
                     "the number of seconds 43200)")
        if pa.types.is_time(t) and isinstance(value, str):
            try:  # Arrow casts no text to a time of day
                value = datetime.time.fromisoformat(value)
            except ValueError:
                raise SchemaError(f"the value {value!r} is no {t}",
                                  hint="write a time of day as '12:00:00'") from None
        try:  # as the type takes a Python value (1 of a decimal), else as Arrow casts
            as_held = pa.scalar(value, type=t).as_py()
            if isinstance(value, float) and as_held != value and not (
                    pa.types.is_floating(t)):  # 1.5 of an integer column: not 1
                raise SchemaError(f"the value {value!r} is no {t}: it would be {as_held}",
                                  hint=f"list values of the column's type ({t})")
            held.append(as_held)
        except (*ARROW_ERRORS, OverflowError, ValueError, TypeError):
            try:  # a date of a timestamp column, a text of a number
                held.append(pa.scalar(value).cast(t, safe=True).as_py())
            except (*ARROW_ERRORS, OverflowError, ValueError) as exc:
                raise SchemaError(f"the value {value!r} is no {t}: {arrow_message(exc)}",
                                  hint=f"list values of the column's type ({t})") from None
    out = normalized(pa.array(held, type=t))
    seen: dict[Any, Any] = {}
    for value, as_held in zip(values, out.to_pylist(), strict=True):
        if as_held in seen:
            raise SchemaError(f"the values {seen[as_held]!r} and {value!r} are one value "
                              f"of the column ({as_held!r})", hint="list it once")
        seen[as_held] = value
    return out


def _shown(value: Any) -> str:
    """A pivot value as it goes into a column name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


class AggregateParams(Params):
    by: list[str] = Field(description="the key columns: one output row per distinct "
                                      "combination of their values (null is a value); "
                                      "`[]`: one row for all the rows")
    columns: dict[str, str] = Field(
        min_length=1, description="output column: aggregation of an expression over the "
                                  "rows, e.g. `spend: sum(amount)`, `refunds: "
                                  "count_if(kind == 'refund')`, `n: count()`; "
                                  f"functions: {', '.join(FUNCTIONS)}")
    pivot: PivotParams | None = Field(
        None, description="columns of each value of a column: `{column: category, values: "
                          "[books, games]}` makes each aggregation once per value, over "
                          "that value's rows (`spend_books`, `spend_games`; Spark's pivot)")
    partitions: int | None = partitions_field()
    partition_mb: float | None = partition_mb_field()
    _one_partitioning = model_validator(mode="after")(one_partitioning)

    _distinct_keys = field_validator("by")(distinct_keys)

    @model_validator(mode="after")
    def _pivot_names(self) -> AggregateParams:
        pivot = self.pivot
        if pivot is None:
            return self
        if len(self.columns) > 1 and "{name}" not in pivot.format:
            raise ParamError(f"pivot: format '{pivot.format}' gives each aggregation's "
                             "columns the same names", hint="put {name} in it, e.g. "
                                                            "'{name}_{value}'")
        if pivot.column in self.by:
            raise ParamError(f"pivot: '{pivot.column}' is also a key column",
                             hint="pivot on another column, or leave it out of `by`")
        names = [pivot.format.format(name=n, value=_shown(v))
                 for n in self.columns for v in pivot.values]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ParamError(f"pivot: two columns would be named '{twice[0]}'",
                             hint="values that show alike (1 and '1', true and 'true') "
                                  "need a format or values that tell them apart")
        return self

    @model_validator(mode="after")
    def _one_row(self) -> AggregateParams:
        if not self.by and self.partitions not in (None, 1):
            raise ParamError("partitions: with no `by` keys the output is one row (one "
                             "partition)", hint="leave partitions out, or give `by` keys")
        return self

    @field_validator("columns")
    @classmethod
    def _parses(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for name, text in value.items():
            try:
                parse_aggregation(name, text)
            except ParamError as exc:
                problems.append(exc)
        _raise_all(problems, ParamError)
        return value


def _raise_all(problems: list[Any], kind: type[SluiceError]) -> None:
    """Every problem found at once (one error: each column's message, "; " between)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise kind("; ".join(str(p) for p in problems))


@register("aggregate")
class Aggregate(Shuffle):
    """A group-by: one row per key (`by`) from the rows of every partition, any engine.

    Counts, sums, means, extremes, deviations, quantiles, distinct counts and the value
    at the latest time, per customer, day or any key.

    ```yaml
    - op: aggregate
      by: [customer_id]
      columns:
        events: count()
        spend: sum(amount)
        refunds: count_if(kind == 'refund')
        avg_amount: mean(amount)
        last_plan: max_by(plan, event_time)
        active_days: count_distinct(event_date)
    ```

    An aggregation's argument is an expression (as in `derive`): `sum(if(kind ==
    'refund', amount, 0))`. `pivot: {column: category, values: [books, games]}` makes
    each aggregation once per value, over the rows of that value (`spend_books`,
    `spend_games`: Spark's `pivot`); the values are given, so that the output's columns
    stay the same whatever a day's rows hold (a value no row has: counts 0, the rest
    null). The output has the `by` columns (dictionaries as their
    values), then the `columns` in order, one row per distinct key (null is a key), in
    key order within each output partition. Each partition is first reduced to a row per
    key; those rows go to the output partitions by a hash of the key (a shuffle: through
    files in the run's scratch folder, `--scratch`), where each key's rows are combined.
    The result does not depend on the input's partitioning, order or engine.
    """

    Params = AggregateParams

    @cached_property
    def aggregations(self) -> list[Aggregation]:
        """Each `columns` entry's aggregation (with a pivot: of each value's rows, the
        value being one more key of the groups, spread into columns at the end)."""
        return [parse_aggregation(n, t) for n, t in self.params.columns.items()]

    def _group_keys(self) -> list[str]:
        """What the rows are grouped by: the keys, and a pivot's value (its place among
        the listed values) as one more."""
        return self.key_columns() + ([_PIVOT] if self.params.pivot is not None else [])

    def key_columns(self) -> list[str]:
        return list(self.params.by) or [_ALL]

    def one_place(self) -> bool:
        return not self.params.by

    def input_columns(self, schema: pa.Schema) -> list[str]:
        used = list(self.params.by)
        for agg in self.aggregations:
            for arg in agg.args:
                used += [c for c in referenced_columns(arg) if c not in used]
        return used

    # ------------------------------------------------------------------ planning

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.by, "key column")
        problems: list[SchemaError] = []
        for key in self.params.by:
            found = key_problem(schema, key, f"by: key column '{key}'")
            if found is not None:
                problems.append(found)
        for agg in self.aggregations:
            try:
                self._check_types(agg, schema)
            except SchemaError as exc:
                problems.append(exc)
        if self.params.pivot is not None:
            problems += self._pivot_problems(schema)
        for name in self._output_names():
            if name in self.params.by:
                problems.append(SchemaError(f"columns: '{name}' is also a key column",
                                            hint="give the aggregation another name"))
        _raise_all(problems, SchemaError)
        empty = schema.empty_table()
        return self.finish(self.partial(empty)).schema

    def _pivot_problems(self, schema: pa.Schema) -> list[SchemaError]:
        """What is wrong with the pivot's column or values for ``schema``."""
        pivot = self.params.pivot
        assert pivot is not None
        if schema.get_field_index(pivot.column) < 0:
            return [SchemaError(f"pivot: column '{pivot.column}' not in the input"
                                f"{suggest(pivot.column, schema.names)}",
                                hint="input has: " + ", ".join(schema.names[:20]))]
        t = plain_type(schema.field(pivot.column).type)
        if nested(t) or pa.types.is_null(t):
            return [SchemaError(f"pivot: column '{pivot.column}' is {t}, whose values are "
                                "not single values to pivot on")]
        try:
            _value_set(pivot.values, t)
        except SchemaError as exc:
            return [exc.located(f"pivot: column '{pivot.column}' ({t})")]
        return []

    def _output_names(self) -> list[str]:
        """The output's aggregated columns: each aggregation's, or one per aggregation
        and pivot value."""
        pivot = self.params.pivot
        if pivot is None:
            return [agg.name for agg in self.aggregations]
        return [pivot.format.format(name=agg.name, value=_shown(v))
                for agg in self.aggregations for v in pivot.values]

    def _check_types(self, agg: Aggregation, schema: pa.Schema) -> None:
        types = []
        for arg in agg.args:
            try:
                types.append(expression_type(arg, schema))
            except ExpressionError as exc:
                raise SchemaError(f"columns: '{agg.name}': {exc}") from None
        what = f"columns: '{agg.name}' ({agg.fn}({', '.join(agg.args)}))"
        for arg, t in zip(agg.args, types):
            if pa.types.is_null(t) and agg.fn != "count":
                raise SchemaError(f"{what}: '{arg}' is always null (type null)",
                                  hint=f"cast it to the type it stands for, e.g. "
                                       f"cast({arg} as float64)")
        if agg.fn in ("count_if", "any", "all"):
            t = types[0]
            if not pa.types.is_boolean(t):
                raise SchemaError(f"{what}: needs a true/false condition, got {t}",
                                  hint=f"compare it, e.g. {agg.fn}({agg.args[0]} > 0)")
        elif agg.fn in ("sum", "mean", "std", "var", "median", "quantile"):
            t = types[0].value_type if pa.types.is_dictionary(types[0]) else types[0]
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)
                    or pa.types.is_decimal(t)):
                # a duration converts to its count of units (int64) only
                number = "int64" if pa.types.is_duration(t) else "float64"
                hint = (f"count_if({agg.args[0]}) counts the true rows"
                        if pa.types.is_boolean(t) else f"cast it, e.g. {agg.fn}(cast("
                        f"{agg.args[0]} as {number}))" + (
                            f": its count of {t.unit}" if number == "int64" else ""))
                raise SchemaError(f"{what}: needs numbers, got {t}", hint=hint)
        elif agg.fn in ("min", "max", "max_by", "min_by"):
            for arg, t in zip(agg.args, types):
                if not ordered(t):
                    raise SchemaError(f"{what}: '{arg}' is {t}, which has no order here",
                                      hint="numbers, text, dates, times and booleans order "
                                           "(cast durations and float16 to numbers)")
        elif agg.fn == "count_distinct" and nested(types[0]):
            raise SchemaError(f"{what}: '{agg.args[0]}' is {types[0]}; distinct values "
                              "are plain values")

    # ------------------------------------------------------------------ layout

    @cached_property
    def _layout(self) -> _Layout:
        return _Layout(self.aggregations)

    # ------------------------------------------------------------------ partial

    def _project(self, part: pa.Table) -> pa.Table:
        """The key columns and every distinct argument expression (``\\x00x<i>``),
        dictionaries decoded."""
        import pyarrow.dataset as ds

        columns: dict[str, Any] = {k: pc.field(k) for k in self.params.by}
        for text, name in self._layout.inputs.items():
            columns[name] = parse_expression(text, part.schema)
        try:
            out = ds.dataset(part).to_table(columns=columns) if columns else None
        except ARROW_ERRORS as exc:
            detail, hint = value_failure(exc, self._layout.inputs, part)
            raise DataError(f"aggregate column {self._failing(part)}: {detail}",
                            hint=hint, param="columns") from None
        arrays = {} if out is None else {n: plain(out.column(n)) for n in out.column_names}
        for key in self.params.by:  # one group of 0.0 and -0.0, one of every NaN
            arrays[key] = normalized(arrays[key])
        if not self.params.by:
            arrays[_ALL] = pa.array(np.zeros(part.num_rows, dtype=np.int8))
        table = pa.table(arrays) if arrays else pa.table({_ALL: pa.array(
            np.zeros(part.num_rows, dtype=np.int8))})
        pivot = self.params.pivot
        if pivot is not None:
            # each row's value's place among the listed values, -1 for the others (a key
            # of those only is an output row all the same, of counts 0 and nulls)
            column = normalized(plain(part.column(pivot.column)))
            at = pc.index_in(column, value_set=_value_set(pivot.values, column.type),
                             skip_nulls=False).cast(pa.int32())
            table = table.append_column(_PIVOT, pc.fill_null(at, -1))
        return table

    def _failing(self, part: pa.Table) -> str:
        """The first aggregation whose arguments fail on ``part``, as the file says it."""
        import pyarrow.dataset as ds

        for agg in self.aggregations:
            try:
                ds.dataset(part).to_table(columns={
                    f"a{j}": parse_expression(a, part.schema) for j, a in enumerate(agg.args)})
            except ARROW_ERRORS:
                return f"'{agg.name}' ({self.params.columns[agg.name]})"
        return f"'{self.aggregations[0].name}'"

    def partial(self, part: pa.Table) -> pa.Table:
        table = self._project(part)
        keys = self._group_keys()
        layout = self._layout
        for name, (source, variant) in layout.variants.items():  # casts some kinds need
            table = table.append_column(name, _variant(table.column(source), variant))
        g = Grouper(table, keys)
        asked = {f.name: g.add(f.column, *_PARTIAL[f.kind]) for f in layout.fields
                 if f.kind in _PARTIAL}
        g.numbered = any(f.kind == "by_value" for f in layout.fields)
        groups, results, gid = g.run()
        out: dict[str, Any] = {k: groups.column(k) for k in keys}
        for f in layout.fields:
            if f.kind == "m2":  # sum of squared deviations: the variance times the count
                var = results[asked[f.name]]
                out[f.name] = pc.multiply(var, pc.cast(results[asked[f.count]], pa.float64()))
            elif f.kind == "by_value":
                order, value = f.column.split("|")
                o, v = extreme_in_group(gid, groups.num_rows, table.column(order),
                                         table.column(value), f.smallest)
                out[f.order], out[f.name] = o, v
            elif f.kind != "by_order":
                out[f.name] = results[asked[f.name]]
        return pa.table(out)

    # ------------------------------------------------------------------ finish

    def finish(self, partials: pa.Table) -> pa.Table:
        keys = self._group_keys()
        layout = self._layout
        if not self.params.by and partials.num_rows == 0:
            partials = self._no_rows(partials.schema)  # one row for all (no) rows
        g = Grouper(partials, keys)
        asked = {f.name: g.add(f.name, *_FINISH[f.kind]) for f in layout.fields
                 if f.kind in _FINISH}
        g.numbered = any(f.kind in ("m2", "distinct", "by_value", "list")
                         for f in layout.fields)
        groups, results, gid = g.run()
        count = groups.num_rows
        combined: dict[str, pa.Array] = {name: results[key] for name, key in asked.items()}
        for f in layout.fields:
            if f.kind == "distinct":
                combined[f.name] = _distinct_count(partials.column(f.name), gid, count)
            elif f.kind == "by_value":
                _, combined[f.name] = extreme_in_group(
                    gid, count, partials.column(f.order), partials.column(f.name),
                    f.smallest)
        out: dict[str, Any] = {k: groups.column(k) for k in self.params.by}
        for agg in self.aggregations:
            out[agg.name] = self._finished(agg, layout.roles[agg.name], partials, combined,
                                           gid, count)
        if self.params.pivot is not None:
            return self._spread(pa.table({**out, _PIVOT: groups.column(_PIVOT)}))
        table = pa.table(out)  # never empty: `columns` has at least one aggregation
        if self.params.by and table.num_rows > 1:
            table = table.take(sorted_order(table, [(k, "ascending") for k in self.params.by],
                                            "at_end"))
        return table

    def _spread(self, table: pa.Table) -> pa.Table:
        """The finished rows of each (key, pivot value) as a row per key, in key order,
        each aggregation a column per listed value: a value the key has no row of gives
        a count of 0, or null (Spark's pivot after its group-by)."""
        pivot = self.params.pivot
        assert pivot is not None
        by = list(self.params.by)
        table = table.filter(pc.is_valid(table.column(_PIVOT)))  # no rows' row: no key
        if by and table.num_rows:
            if table.num_rows > 1:
                table = table.take(sorted_order(table, [(k, "ascending") for k in by],
                                                "at_end"))
            starts = run_starts(table, by)
            key_of = np.cumsum(starts) - 1
            out: dict[str, Any] = {k: table.column(k).filter(pa.array(starts)) for k in by}
            keys = int(starts.sum())
        else:  # no rows, or no keys: the one row of all the rows
            key_of = np.zeros(table.num_rows, dtype=np.int64)
            out = {k: table.column(k) for k in by}
            keys = 0 if by else 1
        place = table.column(_PIVOT).to_numpy(zero_copy_only=False)
        for agg in self.aggregations:
            values = table.column(agg.name)
            for i, value in enumerate(pivot.values):
                rows = np.full(keys, -1, dtype=np.int64)
                here = np.flatnonzero(place == i)
                rows[key_of[here]] = here
                column = values.take(pa.array(rows, mask=rows < 0))
                if agg.fn in ("count", "count_if", "count_distinct"):
                    column = pc.fill_null(column, 0)
                out[pivot.format.format(name=agg.name, value=_shown(value))] = column
        return pa.table(out)

    def _no_rows(self, schema: pa.Schema) -> pa.Table:
        """The partial row of no rows: counts 0, everything else null."""
        counts = {f.name for f in self._layout.fields if f.kind in ("rows", "count", "sum0")}
        return pa.table({f.name: pa.array([0], f.type) if f.name == _ALL or f.name in counts
                         else pa.nulls(1, f.type) for f in schema}, schema=schema)

    @staticmethod
    def _finished(agg: Aggregation, roles: dict[str, str], partials: pa.Table,
                  combined: dict[str, pa.Array], gid: np.ndarray | None,
                  count: int) -> pa.Array:
        if agg.fn == "mean":
            n = pc.cast(combined[roles["n"]], pa.float64())
            return pc.if_else(pc.greater(n, 0), pc.divide(combined[roles["sum"]], n),
                              pa.nulls(count, pa.float64()))
        if agg.fn in ("std", "var"):
            assert gid is not None
            return _combined_variance(partials, roles, gid, count, agg.fn == "std")
        if agg.fn in ("median", "quantile"):
            assert gid is not None
            return _quantile(partials.column(roles["values"]), gid, count, agg.q)
        if agg.fn == "sum":
            _check_range(agg, combined[roles["value"]], combined[roles["check"]])
        return combined[roles["value"]]


@dataclass(frozen=True)
class _Field:
    """A partial column: ``name`` (``\\x00p<i>``), what it holds of which projected
    ``column`` (``kind``); a by_value field also names its order field."""

    name: str
    column: str
    kind: str
    count: str = ""  # m2: the field of the same column's count
    order: str = ""  # by_value: the field of the order column's extreme
    smallest: bool = False  # by_value: min_by


# what a partial field's kind asks of Arrow's hash group-by on the rows, and of the
# partial rows in finish (kinds missing from _FINISH are combined by the aggregation)
_PARTIAL: dict[str, tuple[str, Any]] = {
    "rows": ("count_all", None), "count": ("count", pc.CountOptions("only_valid")),
    "sum0": ("sum", sum_options(0)), "sum": ("sum", sum_options(1)),
    "mean": ("mean", sum_options(1)), "m2": ("variance", pc.VarianceOptions(ddof=0,
                                                                              min_count=1)),
    "min": ("min", sum_options(1)), "max": ("max", sum_options(1)),
    "any": ("any", sum_options(1)), "all": ("all", sum_options(1)),
    "distinct": ("distinct", pc.CountOptions("only_valid")),
    "list": ("list", None),
}
_FINISH: dict[str, tuple[str, Any]] = {
    "rows": ("sum", sum_options(0)), "count": ("sum", sum_options(0)),
    "sum0": ("sum", sum_options(0)), "sum": ("sum", sum_options(1)),
    "min": ("min", sum_options(1)), "max": ("max", sum_options(1)),
    "any": ("any", sum_options(1)), "all": ("all", sum_options(1)),
}


class _Layout:
    """The partial columns of a set of aggregations, each computed once however many
    aggregations use it (``mean(x)``, ``std(x)`` and ``count(x)`` share x's count): the
    same names in ``partial`` and ``finish``, from the parameters alone.

    ``inputs``: argument expression -> projected column (``\\x00x<i>``); ``variants``:
    a cast of a projected column some kinds need (float64 for means, deviations and
    quantiles, 0/1 for count_if, float64 for sums of floats) -> (column, variant); ``fields``:
    the partial columns in order; ``roles``: per aggregation, role -> partial column.
    """

    def __init__(self, aggregations: list[Aggregation]):
        self.inputs: dict[str, str] = {}
        self.variants: dict[str, tuple[str, str]] = {}
        self.fields: list[_Field] = []
        self._by_key: dict[tuple[str, str, bool], _Field] = {}
        self.roles: dict[str, dict[str, str]] = {}
        for agg in aggregations:
            cols = [self.inputs.setdefault(a, f"{INTERNAL}x{len(self.inputs)}") for a in agg.args]
            self.roles[agg.name] = self._roles(agg.fn, cols)

    def _variant(self, column: str, variant: str) -> str:
        name = f"{column}_{variant}"
        self.variants.setdefault(name, (column, variant))
        return name

    def _field(self, column: str, kind: str, **extra: Any) -> str:
        key = (column, kind, bool(extra.get("smallest")))
        if key not in self._by_key:
            self._by_key[key] = _Field(f"{INTERNAL}p{len(self.fields)}", column, kind, **extra)
            self.fields.append(self._by_key[key])
        return self._by_key[key].name

    def _roles(self, fn: str, cols: list[str]) -> dict[str, str]:
        x = cols[0] if cols else ""
        if fn == "count":
            return {"value": self._field(x, "count") if cols else self._field("", "rows")}
        if fn == "count_if":
            return {"value": self._field(self._variant(x, "int"), "sum0")}
        if fn == "sum":  # and in float64, to tell an integer sum that overflows
            return {"value": self._field(self._variant(x, "num"), "sum"),
                    "check": self._field(self._variant(x, "f64"), "sum")}
        if fn == "mean":
            return {"n": self._field(x, "count"),  # summed in float64, as pandas and Spark
                    "sum": self._field(self._variant(x, "f64"), "sum")}
        if fn in ("std", "var"):
            f64 = self._variant(x, "f64")
            n = self._field(x, "count")
            return {"n": n, "mean": self._field(f64, "mean"),
                    "m2": self._field(f64, "m2", count=n)}
        if fn in ("min", "max", "any", "all"):
            return {"value": self._field(x, fn)}
        if fn == "count_distinct":
            return {"value": self._field(self._variant(x, "norm"), "distinct")}
        if fn in ("median", "quantile"):
            return {"values": self._field(self._variant(x, "f64"), "list")}
        smallest = fn == "min_by"  # max_by / min_by (value, order)
        order = self._field(f"{cols[1]}|{cols[0]}", "by_order", smallest=smallest)
        return {"value": self._field(f"{cols[1]}|{cols[0]}", "by_value", order=order,
                                     smallest=smallest)}


def _variant(column: pa.ChunkedArray, variant: str) -> pa.ChunkedArray:
    """A projected column as a kind needs it: float64 (f64), 0/1 with null as 0 (int),
    float64 if floating else as is (num), floats normalised (norm)."""
    if variant == "int":
        return pc.cast(pc.fill_null(column, False), pa.int64())
    if variant == "norm":
        return normalized(plain(column))
    if variant == "f64" or pa.types.is_floating(column.type):
        # integers past 2**53 lose their last digits, as in pandas and Spark
        return pc.cast(column, pa.float64(), safe=False)
    return column


def _combined_variance(partials: pa.Table, roles: dict[str, str], gid: np.ndarray,
                       count: int, sqrt: bool) -> pa.Array:
    """The sample variance (or deviation) of each group from its partials' counts, means
    and sums of squared deviations."""
    n = plain(partials.column(roles["n"])).to_numpy(zero_copy_only=False).astype(np.float64)
    mean = pc.fill_null(plain(partials.column(roles["mean"])), 0.0).to_numpy(
        zero_copy_only=False)
    m2 = pc.fill_null(plain(partials.column(roles["m2"])), 0.0).to_numpy(
        zero_copy_only=False)
    total = np.bincount(gid, weights=n, minlength=count)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        centre = np.bincount(gid, weights=n * mean, minlength=count) / total
        # a partial of no values adds nothing (not 0 * inf, where the centre is huge)
        between = np.where(n > 0, n * (mean - centre[gid]) ** 2, 0.0)
        spread = np.bincount(gid, weights=m2, minlength=count) + np.bincount(
            gid, weights=between, minlength=count)
        var = spread / (total - 1)
    var = np.maximum(var, 0.0)
    out = np.sqrt(var) if sqrt else var
    return pa.array(out, pa.float64(), mask=total < 2)


def _check_range(agg: Aggregation, total: pa.Array, approx: pa.Array) -> None:
    """A DataError when an integer sum went past its type's range (Arrow's wraps around;
    its float64 twin does not), as Spark's ANSI mode refuses it."""
    if not pa.types.is_integer(total.type):
        return
    limit = 2.0**64 if pa.types.is_unsigned_integer(total.type) else 2.0**63
    over = pc.greater_equal(pc.abs(approx), limit)
    if pc.any(over).as_py():
        at = pc.index(over, True).as_py()
        raise DataError(f"aggregate column '{agg.name}': the sum is past the range of "
                        f"{total.type} (about {approx[at].as_py():.4g})",
                        hint=f"sum in float64: sum(cast({agg.args[0]} as float64))",
                        param="columns")


def _quantile(values: pa.ChunkedArray, gid: np.ndarray, count: int, q: float) -> pa.Array:
    """The ``q``-quantile of each group's values (the partials' lists together, nulls and
    NaN left out), interpolated linearly between the two nearest as pandas and NumPy do;
    null for a group without values. A quantile that falls on a value, or between two
    equal ones, is that value, as Spark's ``percentile`` gives it: the median of [1, inf,
    inf] is inf, where ``lo + (hi - lo) * 0`` of infinities is NaN."""
    lists = plain(values)
    flat = pc.fill_null(plain(pc.list_flatten(lists)), np.nan).to_numpy(zero_copy_only=False)
    owner = gid[pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)]
    kept = ~np.isnan(flat)
    flat, owner = flat[kept], owner[kept]
    order = np.lexsort((flat, owner))
    flat = flat[order]
    n = np.bincount(owner, minlength=count)
    start = np.cumsum(n) - n
    has = n > 0
    at = np.where(has, (n - 1) * q, 0.0)
    low = np.floor(at).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(n - 1, 0))
    out = np.zeros(count)
    if flat.size:
        lo = flat[np.minimum(start + low, flat.size - 1)]
        hi = flat[np.minimum(start + high, flat.size - 1)]
        with np.errstate(invalid="ignore"):  # inf - inf: taken from ``lo`` below
            out = lo + (hi - lo) * (at - low)
        out = np.where((at == low) | (lo == hi), lo, out)
    return pa.array(out, pa.float64(), mask=~has)


def _distinct_count(values: pa.ChunkedArray, gid: np.ndarray, count: int) -> pa.Array:
    """How many distinct values the partials' lists of each group hold together."""
    lists = plain(values)
    owner = gid[pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)]
    pairs = pa.table({"g": owner, "v": plain(pc.list_flatten(lists))})
    out = pairs.group_by("g", use_threads=False).aggregate([("v", "count_distinct")])
    counts = np.zeros(count, dtype=np.int64)
    counts[out.column("g").to_numpy()] = out.column("v_count_distinct").to_numpy()
    return pa.array(counts)
