"""Grouping rows by keys with Arrow's hash group-by: what the shuffle operators
(``aggregate``, ``deduplicate``) share: each row's group number, per-group extremes, keys
that group as Spark groups them (floats normalised, dictionaries as their values)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.arrays import plain
from operators.base import ParamError, SchemaError
from operators.features.columns import unique_names

# internal column names start with a NUL character: no column of a user's is named so
INTERNAL = "\x00"
_GROUP_ROWS = f"{INTERNAL}row"
_PER_KEY_NULLS = int(pa.__version__.split(".")[0]) >= 25


def partitions_field(default: str = "as the rows need: partitions of up to "
                                       "partition_mb",
                     how: str = "rows go by a hash of their keys") -> Any:
    """A shuffle step's ``partitions`` parameter."""
    return Field(None, ge=1, le=10_000,
                 description=f"output partitions ({how}); default: {default}")


def partition_mb_field() -> Any:
    """A shuffle step's ``partition_mb`` parameter."""
    return Field(None, gt=0, description="without partitions: the most memory an output "
                                         "partition's rows take before the next are put in "
                                         "another (default 64; keys of one hash bucket stay "
                                         "together)")


def one_partitioning(params: Any) -> Any:
    """A model validator of a shuffle step's parameters: ``partitions`` or
    ``partition_mb``, not both."""
    if params.partitions is not None and params.partition_mb is not None:
        raise ParamError("partitions and partition_mb: give one (partitions: exactly so "
                         "many; partition_mb: as many as the rows need)",
                         hint="drop one of them")
    return params


def distinct_keys(cls: Any, value: list[str]) -> list[str]:
    """A ``by`` validator: each key named once."""
    unique_names(value, "by")
    return value


def nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t) or pa.types.is_dictionary(t) and nested(t.value_type)


def key_problem(schema: pa.Schema, name: str, what: str) -> SchemaError | None:
    """Why column ``name`` cannot be a key of a group-by (nested, always null, float16),
    or None; ``what`` names it in the message (\"by: key column 'k'\")."""
    t = schema.field(name).type
    value = t.value_type if pa.types.is_dictionary(t) else t
    if pa.types.is_float16(value):
        return SchemaError(f"{what} is {t}; keys are plain values",
                           hint=f"cast '{name}' to float32 first")
    if nested(t) or pa.types.is_null(value):
        return SchemaError(f"{what} is {t}; keys are plain values",
                           hint=f"leave '{name}' out of by")
    return None


def ordered(t: pa.DataType) -> bool:
    """Values Arrow's min and max compare: numbers, text, bytes, dates, times, booleans."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    return (pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t)
            or pa.types.is_decimal(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_boolean(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def normalized(column: pa.Array) -> pa.Array:
    """Floats as one key each value: -0.0 as 0.0, every NaN as one NaN (as Spark
    normalises them for grouping and distinct counts); anything else as is."""
    if not pa.types.is_floating(column.type):
        return column
    zeroed = pc.add(column, pa.scalar(0.0, column.type))  # -0.0 + 0.0 is 0.0
    return pc.if_else(pc.is_nan(zeroed), pa.scalar(float("nan"), column.type), zeroed)


def sum_options(min_count: int) -> pc.ScalarAggregateOptions:
    return pc.ScalarAggregateOptions(skip_nulls=True, min_count=min_count)


class Grouper:
    """Hash aggregations of a table's columns by keys, with each row's group number:
    ``add`` what to compute, ``run`` it once (one pass of Arrow's hash group-by)."""

    def __init__(self, table: pa.Table, keys: list[str]):
        self.table, self.keys = table, keys
        self.wanted: dict[tuple[str, str, str], tuple[str, Any]] = {}
        self.numbered = False  # True: ``run`` also gives each row's group number

    def add(self, column: str, fn: str, options: Any = None) -> tuple[str, str, str]:
        key = (column, fn, repr(options))
        self.wanted.setdefault(key, (column, options))
        return key

    def run(self) -> tuple[pa.Table, dict[tuple[str, str, str], pa.Array], np.ndarray | None]:
        """The groups' keys (first appearance order), the aggregations by their ``add``
        key, and each row's group number if ``numbered`` (else None)."""
        n = self.table.num_rows
        # the keys under names of their own: Arrow names an aggregation <column>_<fn>, and
        # a key named so (or count_all) would clash with it
        inner = [f"{INTERNAL}k{j}" for j in range(len(self.keys))]
        table = self.table.rename_columns(
            [inner[self.keys.index(c)] if c in self.keys else c for c in self.table.column_names])
        specs: list[tuple[str, str, Any]] = []
        if self.numbered:  # the rows of each group, as a list (one more hash aggregate)
            table = table.append_column(_GROUP_ROWS, pa.array(np.arange(n, dtype=np.int64)))
            specs.append((_GROUP_ROWS, "list", None))
        specs += [(col, fn, opts) for (col, fn, _), (_, opts) in self.wanted.items()]
        if not specs:
            specs.append(("", "count_all", None))
        out = table.group_by(inner, use_threads=False).aggregate(
            [(c if c else [], f, o) if o is not None else (c if c else [], f)
             for c, f, o in specs])
        gid = None
        if self.numbered:
            rows = out.column(f"{_GROUP_ROWS}_list").combine_chunks()
            gid = np.empty(n, dtype=np.int64)
            gid[pc.list_flatten(rows).to_numpy(zero_copy_only=False)] = (
                pc.list_parent_indices(rows).to_numpy(zero_copy_only=False))
        results = {key: out.column("count_all" if not col else f"{col}_{fn}").combine_chunks()
                   for key in self.wanted for col, fn in [(key[0], key[1])]}
        return out.select(inner).rename_columns(self.keys), results, gid


def sorted_order(table: pa.Table, keys: list[tuple[str, str]], nulls: str) -> np.ndarray:
    """The row order that sorts ``table`` by ``keys`` (name, order), nulls ``nulls``
    (at_start / at_end) for every key."""
    if _PER_KEY_NULLS:
        index = pc.sort_indices(table, sort_keys=[(k, o, nulls) for k, o in keys])
    else:  # pyarrow before 25: one placement for all keys
        index = pc.sort_indices(table, sort_keys=keys, null_placement=nulls)
    return index.to_numpy(zero_copy_only=False)


def order_direction(entry: str) -> tuple[str, bool]:
    """An order entry as (column, descending): 'ts', 'ts asc' or 'ts desc'."""
    words = entry.rsplit(None, 1)
    if len(words) == 2 and words[1].lower() in ("asc", "desc"):
        return words[0].strip(), words[1].lower() == "desc"
    return entry, False


class ByKeys:
    """What a shuffle that brings each ``by`` key's rows to one place shares (window,
    top): its keys under hidden names, as keys compare; one place without keys."""

    params: Any
    _KEYED = f"{INTERNAL}key"

    def key_columns(self) -> list[str]:
        return [f"{self._KEYED}{i}" for i in range(len(self.params.by))] or [self._KEYED]

    def one_place(self) -> bool:
        return not self.params.by

    def keyed(self, part: pa.Table) -> pa.Table:
        """``part`` with its key's values (decoded, -0.0 as 0.0) to be placed by."""
        if not self.params.by:
            return part.append_column(self._KEYED,
                                      pa.array(np.zeros(part.num_rows, np.int8)))
        for name, key in zip(self.key_columns(), self.params.by, strict=True):
            part = part.append_column(name, normalized(plain(part.column(key))))
        return part


def check_order(schema: pa.Schema, by: list[str], ordering: list[tuple[str, bool]],
                what: str = "order", durations: bool = True) -> None:
    """A SchemaError for a ``by`` column that cannot be a key, or an order column of
    ``what`` that has no order (Arrow sorts durations; the min/max kernels do not)."""
    for key in by:
        found = key_problem(schema, key, f"by: key column '{key}'")
        if found is not None:
            raise found
    for name, _ in ordering:
        t = schema.field(name).type
        if nested(t) or not (ordered(t) or durations and pa.types.is_duration(t)):
            raise SchemaError(f"{what}: column '{name}' is {t}, which has no order",
                              hint="order by numbers, text, dates, times"
                                   + (", durations" if durations else "") + " or booleans")


def unique_order(entries: list[str], what: str) -> list[str]:
    """A validator of order entries ('ts', 'ts desc'): each column named once."""
    unique_names([order_direction(entry)[0] for entry in entries], what)
    return entries


def order_keys(rows: pa.Table, ordering: list[tuple[str, bool]],
               first: list[tuple[str, Any]] = ()) -> tuple[pa.Table, list[tuple[str, str]]]:
    """The columns that sort ``rows`` by ``ordering`` ((column, descending) each) and
    their sort keys for ``sorted_order(..., "at_end")``: values as keys compare (decoded,
    -0.0 as 0.0), NaN above every number, so first when descending (Arrow's sort puts
    it last either way), nulls last; ``first``: (name, column)s to sort by before them,
    ascending (a window's keys)."""
    names = [name for name, _ in first]
    arrays = [column for _, column in first]
    keys = [(name, "ascending") for name in names]
    for i, (name, down) in enumerate(ordering):
        column = normalized(plain(rows.column(name)))
        if down and pa.types.is_floating(column.type):
            names.append(f"{INTERNAL}n{i}")
            arrays.append(pc.is_nan(column))
            keys.append((names[-1], "descending"))
        names.append(f"{INTERNAL}o{i}")
        arrays.append(column)
        keys.append((names[-1], "descending" if down else "ascending"))
    return pa.table(arrays, names=names), keys


def run_starts(table: pa.Table, keys: list[str]) -> np.ndarray:
    """True on the first row of each run of equal keys (nulls equal nulls, NaN NaN)."""
    n = table.num_rows
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    for name in keys:
        column = plain(table.column(name))
        if n < 2:
            break
        a, b = column.slice(1), column.slice(0, n - 1)
        differ = pc.not_equal(a, b)
        if pa.types.is_floating(column.type):  # NaN keys are one key
            differ = pc.and_(differ, pc.invert(pc.and_(pc.is_nan(a), pc.is_nan(b))))
        nulls = pc.is_null(a).to_numpy(zero_copy_only=False) != pc.is_null(b).to_numpy(
            zero_copy_only=False)
        starts[1:] |= pc.fill_null(differ, False).to_numpy(zero_copy_only=False) | nulls
    return starts


def run_first(starts: np.ndarray) -> np.ndarray:
    """Each row's index of the first row of its run (``starts``: True where one begins,
    as ``run_starts`` gives)."""
    return np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))


def per_group(gid: np.ndarray, groups: int, values: pa.Array, fn: str) -> pa.Array:
    """``fn`` (min, max) of ``values`` for each group 0..groups-1 (null where a group
    has no value), in one hash aggregate."""
    out = pa.table({"g": gid, "v": values}).group_by("g", use_threads=False).aggregate(
        [("v", fn, sum_options(1))])
    at = np.full(groups, -1, dtype=np.int64)
    at[out.column("g").to_numpy()] = np.arange(out.num_rows)
    found = out.column(f"v_{fn}").combine_chunks()
    return found.take(pa.array(at, mask=at < 0))


def nan_as_null(column: pa.Array) -> pa.Array:
    """A float column's NaN as nulls (an order that is no order); anything else as is."""
    if not pa.types.is_floating(column.type):
        return column
    return pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)


def at_extreme(gid: np.ndarray, groups: int, order: pa.Array,
               smallest: bool) -> tuple[pa.Array, np.ndarray]:
    """Per group, the largest order (``smallest``: the smallest; null where no row has
    one, NaN being none), and which rows have it."""
    order = nan_as_null(plain(order))
    best = per_group(gid, groups, order, "min" if smallest else "max")
    at_best = pc.fill_null(pc.equal(order, best.take(pa.array(gid))), False)
    return best, at_best.to_numpy(zero_copy_only=False)


def extreme_in_group(gid: np.ndarray, groups: int, order: pa.Array, value: pa.Array,
                     smallest: bool) -> tuple[pa.Array, pa.Array]:
    """Per group, the largest order (``smallest``: the smallest) and the largest
    (smallest) value of the rows that have it; null where no row has an order (NaN is
    none). Two hash aggregates and a comparison, no sort."""
    best, at_best = at_extreme(gid, groups, order, smallest)
    chosen = per_group(gid[at_best], groups, plain(value).filter(pa.array(at_best)),
                       "min" if smallest else "max")
    return best, chosen
