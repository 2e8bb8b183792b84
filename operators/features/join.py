"""join: bring columns of a small Parquet table (a lookup, a dimension) to every row.

The table is read once, on the driver, and travels with the step to every partition
(a broadcast join, as Spark's for a small side): each partition looks its rows' keys
up in it, in the rows' order, with no shuffle. Enrichment is data preparation, not a
model: a join is never part of a saved model (``Transform.in_model``), so a scoring
pipeline joins the same table (the dimension as it is then) before its ``score``.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import (
    DataError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    require_columns,
)
from operators.features.columns import unique_names
from operators.io.parquet import ReadParquet


class JoinParams(Params):
    path: str = Field(description="the table to join: a Parquet file, directory, glob or URL, "
                                  "read once on the driver (at most max_mb in memory)")
    on: list[str] | dict[str, str] = Field(
        description="key columns: [customer_id] (the same name on both sides), or "
                    "{input column: table column}; a null key matches nothing")
    columns: list[str] | None = Field(
        None, description="the table's columns to bring (default: all but the keys)")
    how: Literal["left", "inner", "anti"] = Field(
        "left", description="left: every row, nulls where no key matches; inner: only the "
                            "rows whose key is in the table; anti: only the rows whose key "
                            "is not (new customers, unmatched orders), bringing no column")
    prefix: str = Field("", description="put before the brought columns' names, e.g. "
                                        "customer_ (for names the input has already)")
    filter: str | None = Field(None, description="rows of the table to use, as "
                                                 "read_parquet's filter")
    max_mb: float = Field(256, gt=0, description="the most memory the table may take: a "
                                                 "join is for a table that fits on every "
                                                 "worker")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for a URL")

    @field_validator("on")
    @classmethod
    def _keys(cls, value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        if not value:
            raise ValueError("name at least one key column")
        unique_names(list(value), "on")
        if isinstance(value, dict):
            unique_names(list(value.values()), "on")
        return value

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unique_names(value, "columns")
        return value

    @model_validator(mode="after")
    def _anti_brings_nothing(self) -> JoinParams:
        if self.how == "anti" and self.columns:
            raise ParamError("how: anti keeps the rows without a match, which bring no "
                             "column", hint="drop columns:, or use how: left")
        return self


def _comparable(t: pa.DataType) -> pa.DataType:
    """The type keys are compared in: integers as int64, strings as string, a
    dictionary as its values'; others as they are."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    return t


@register("join")
class Join(Transform):
    """Bring columns of a small Parquet table to each row, by key (a broadcast join).

    The table is read once, on the driver, and sent with the step to every partition:
    each looks its keys up there, keeping its rows' order; no shuffle. A key must be on
    one row of the table at most (a lookup: duplicates are an error naming the key), a
    null key matches nothing, and keys compare as values (any integer types, any string
    types). Never part of a saved model: a scoring pipeline joins the table too.

    ```yaml
    - op: join
      path: data/customers          # one row per customer_id
      on: [customer_id]             # or {customer_id: id} where the names differ
      columns: [segment, lifetime_value]
      how: left                     # inner: only rows whose key is in it; anti: only others
    ```
    """

    numeric_kernels = False
    in_model = False

    Params = JoinParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self._table: pa.Table | None = None
        self._folded: tuple[list[pa.Array], list[pa.Array], pa.Array] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # read on the driver before the step goes to the workers: the same table for
        # every partition, read once
        return {"params": self.params, "table": self.table()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params, self._table, self._lock = state["params"], state["table"], threading.Lock()
        self._folded = None

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(input column, table column) per key."""
        on = self.params.on
        return list(on.items()) if isinstance(on, dict) else [(k, k) for k in on]

    def _source(self) -> ReadParquet:
        p = self.params
        return ReadParquet(path=p.path, filter=p.filter, storage_options=p.storage_options)

    def _brought(self, table_schema: pa.Schema) -> list[str]:
        """The table's columns this step adds (before the prefix)."""
        if self.params.how == "anti":
            return []
        keys = {right for _, right in self.keys}
        if self.params.columns is None:
            return [n for n in table_schema.names if n not in keys]
        try:
            require_columns(table_schema, self.params.columns, "column",
                            f"'{self.params.path}'")
        except SchemaError as exc:
            raise SchemaError(f"columns: {exc.message}", hint=exc.hint) from None
        shared = [c for c in self.params.columns if c in keys]
        if shared:
            raise SchemaError(f"columns: '{shared[0]}' is a key: the input has it already",
                              hint="list only the columns to bring")
        return list(self.params.columns)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [left for left, _ in self.keys]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        table_schema = self._source().schema()
        try:
            require_columns(table_schema, [right for _, right in self.keys], "key column",
                            f"'{self.params.path}'")
        except SchemaError as exc:
            raise SchemaError(f"on: {exc.message}", hint=exc.hint) from None
        for left, right in self.keys:
            have = schema.field(left).type
            want = table_schema.field(right).type
            if _comparable(have) != _comparable(want):
                raise SchemaError(
                    f"on: key '{left}' is {have} in the input and {want} in "
                    f"'{self.params.path}'" + (f" (column '{right}')" if right != left else ""),
                    hint="cast one side first (op: cast), so that both are numbers or both "
                         "text")
        out = schema
        for name in self._brought(table_schema):
            field = table_schema.field(name).with_name(self.params.prefix + name)
            if out.get_field_index(field.name) >= 0:
                raise SchemaError(
                    f"columns: the input has a column '{field.name}' already",
                    hint="name the columns to bring (columns:), set a prefix: (e.g. "
                         "customer_), or drop the input's first")
            out = out.append(field.with_nullable(True))
        return out

    def table(self) -> pa.Table:
        """The table, keys in their compared types and the brought columns, read on
        first use (once per process) and checked: its size, one row per key."""
        with self._lock:
            if self._table is None:
                self._table = self._read()
            return self._table

    def _read(self) -> pa.Table:
        keys = [right for _, right in self.keys]
        wanted = keys + self._brought(self._source().schema())
        # only the columns the join uses are decoded (the filter may use others)
        p = self.params
        source = ReadParquet(path=p.path, filter=p.filter, columns=wanted,
                             storage_options=p.storage_options)
        table = pa.concat_tables([source.read(part) for part in source.partitions()] or
                                 [source.schema().empty_table()])
        mb = table.nbytes / 2**20
        if mb > self.params.max_mb:
            raise DataError(
                f"the table '{self.params.path}' takes {mb:,.0f} MB in memory, over max_mb "
                f"{self.params.max_mb:g}", hint="a join is for a table every worker can "
                "hold: bring fewer columns (columns:), keep fewer rows (filter:), or raise "
                "max_mb")
        for i, name in enumerate(keys):
            table = table.set_column(i, name, table.column(i).cast(
                _comparable(table.schema.field(i).type)))
        known = table.filter(pc.invert(pc.is_null(_combined(table, keys))))
        counts = known.group_by(keys).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
        if repeated.num_rows:
            first = repeated.slice(0, 1).to_pylist()[0]
            shown = ", ".join(f"{k}={first[k]!r}" for k in keys)
            raise DataError(
                f"key {shown} is on {first['count_all']} rows of '{self.params.path}' (and "
                f"{repeated.num_rows - 1:,} other keys are repeated): a join brings the "
                f"columns of one row per key", hint="keep one row per key in the table, "
                "or choose them with filter:")
        return known.combine_chunks()

    def _codes(self) -> tuple[list[pa.Array], list[pa.Array], pa.Array]:
        """The table's side of the key lookup, once per process: each key's distinct
        values, the dense codes after each fold, and each table row's code."""
        if self._folded is None:  # two threads may both fold: to the same codes
            table = self.table()
            values = [pc.unique(table.column(right)) for _, right in self.keys]
            dense: list[pa.Array] = []
            rows = _fold([table.column(right) for _, right in self.keys], values, dense)
            self._folded = (values, dense, rows)
        return self._folded

    def _positions(self, part: pa.Table) -> pa.Array:
        """Per row of ``part``, the row of the table with its key (null: none)."""
        values, dense, rows = self._codes()
        codes = _fold([part.column(left) for left, _ in self.keys], values, dense)
        return pc.index_in(codes, value_set=rows, skip_nulls=True)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        table = self.table()
        at = self._positions(part)
        if self.params.how == "anti":
            return part.filter(pc.is_null(at))
        if self.params.how == "inner":
            found = pc.is_valid(at)
            part, at = part.filter(found), at.filter(found)
        keys = {right for _, right in self.keys}
        brought = table.select([n for n in table.column_names if n not in keys]).take(at)
        for field, column in zip(brought.schema, brought.columns, strict=True):
            part = part.append_column(
                field.with_name(self.params.prefix + field.name).with_nullable(True), column)
        return part


def _combined(table: pa.Table, keys: list[str]) -> pa.Array:
    """Null where any key of the row is null (such a row matches nothing)."""
    out = pc.is_null(table.column(keys[0]))
    for name in keys[1:]:
        out = pc.or_(out, pc.is_null(table.column(name)))
    return pc.if_else(out, pa.scalar(None, pa.bool_()), pa.scalar(True))


def _fold(columns: list[Any], values: list[pa.Array], dense: list[pa.Array]) -> pa.Array:
    """One code per row for its keys: each key's position among the table's distinct
    values, folded into the codes so far and made dense again after each key (so the
    codes stay below the table's rows: no overflow however many keys); null where a key
    is null or not in the table. The table's own fold fills ``dense`` (empty), a
    partition's reuses it. Keys compare as values: a dictionary or a narrower type is
    cast to the table's."""
    code = None
    for i, (column, distinct) in enumerate(zip(columns, values, strict=True)):
        at = pc.index_in(column.cast(distinct.type), value_set=distinct,
                         skip_nulls=True).cast(pa.int64())
        if code is None:
            code = at
            continue
        raw = pc.add(pc.multiply(code, len(distinct)), at)
        if len(dense) < i:
            dense.append(pc.unique(raw))
        code = pc.index_in(raw, value_set=dense[i - 1], skip_nulls=True).cast(pa.int64())
    return code
