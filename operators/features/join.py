"""join: bring columns of another Parquet table (a lookup, a dimension) to every row.

Two ways, the same rows: a **broadcast** join reads the table once, on the driver, and
sends it with the step to every partition (as Spark's for a small side): each partition
looks its rows' keys up in it, in the rows' order, with no shuffle. A **shuffle** join
(a table too large for every worker: ``strategy: shuffle``, or ``auto`` when the
table's footers say it is over ``max_mb``) sends the rows and the table's rows by a hash
of their keys to the same output partitions through the scratch folder
(``pipelines/shuffle.py``), where each looks its rows up in its share of the table: the
output comes in the input's order within each partition. Enrichment is data
preparation, not a model: a join is never part of a saved model (``in_model``), so a
scoring pipeline joins the same table (the dimension as it is then) before ``score``.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.base import (
    DataError,
    ParamError,
    Params,
    SchemaError,
    Shuffle,
    ShuffleSide,
    SluiceError,
    Transform,
    arrow_message,
    register,
    require_columns,
)
from operators.features.columns import unique_names
from operators.features.grouping import (
    INTERNAL,
    normalized,
    one_partitioning,
    partitions_field,
    plain,
)
from operators.io.parquet import ReadParquet, promoted
from operators.io.paths import this_machines


class JoinParams(Params):
    path: str | None = Field(None, description="the table to join: a Parquet file, "
                                               "directory, glob or URL")
    table: str | None = Field(
        None, description="or: a step of this pipeline whose rows are the table (an "
                          "aggregate's features by customer, a deduplicate's latest rows)")
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
    strategy: Literal["auto", "broadcast", "shuffle"] = Field(
        "auto", description="broadcast: the table read on the driver and sent to every "
                            "partition (rows keep their order); shuffle: rows and table "
                            "sent by key to the same places through the scratch folder "
                            "(any size; rows in their order within each output "
                            "partition); auto: shuffle when the table's footers say it "
                            "takes more than max_mb")
    max_mb: float = Field(256, gt=0, description="the most memory a broadcast table may "
                                                 "take on every worker")
    partitions: int | None = partitions_field()
    partition_mb: float | None = Field(
        None, gt=0, description="without partitions: the most memory an output "
                                "partition's rows and its share of the table take before "
                                "the next are put in another (default 64); a key of more "
                                "rows is split among several, each with its table rows")
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="fsspec options for a URL")

    @field_validator("path")
    @classmethod
    def _this_machines(cls, value: str | None) -> str | None:
        return this_machines(value)

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
    def _consistent(self) -> JoinParams:
        if (self.path is None) == (self.table is None):
            raise ParamError("give path (a Parquet table) or table (a step of this "
                             "pipeline)" + (", not both" if self.path else ""),
                             hint="path: data/customers, or table: customer_features")
        if self.table is not None:
            for name in ("filter", "storage_options"):
                if getattr(self, name):
                    raise ParamError(f"{name}: applies to a table read from path; the "
                                     f"rows of step '{self.table}' are as it makes them",
                                     hint=f"drop {name}:, or filter in a step before "
                                          f"'{self.table}'")
        if self.how == "anti" and self.columns:
            raise ParamError("how: anti keeps the rows without a match, which bring no "
                             "column", hint="drop columns:, or use how: left")
        for name in ("partitions", "partition_mb"):
            if self.strategy == "broadcast" and getattr(self, name) is not None:
                raise ParamError(f"{name}: a broadcast join keeps its input's partitions",
                                 hint=f"drop {name}:, or use strategy: shuffle")
        return one_partitioning(self)


def _comparable(t: pa.DataType) -> pa.DataType:
    """The type keys of one type are compared in: integers as int64 (uint64 as itself:
    its values past int64's range), strings as string, a dictionary as its values';
    others as they are."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) and not pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    return t


_UNITS = ["s", "ms", "us", "ns"]


def _common(have: pa.DataType, want: pa.DataType) -> pa.DataType | None:
    """The type keys of types ``have`` and ``want`` are compared in, as Spark SQL
    compares them: times in the finer unit (zoned ones as instants, in UTC where the
    zones differ), integers as int64 (a uint64 beside a signed type as decimal(20, 0),
    which holds both), floats as float64, decimals widened to hold both (an integer as
    its every digit); None for keys that cannot be compared (text and numbers, a time
    with a zone and one without)."""
    a, b = _comparable(have), _comparable(want)
    if a == b:
        return a
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        if (a.tz is None) != (b.tz is None):
            return None
        unit = max(a.unit, b.unit, key=_UNITS.index)
        return pa.timestamp(unit, tz=a.tz if a.tz == b.tz else "UTC")
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.decimal128(20, 0)
    if _kind(a) != _kind(b):
        return None
    common = promoted(a, b)
    return None if common is None else _comparable(common)


def _kind(t: pa.DataType) -> str:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return ("number" if pa.types.is_integer(t) or pa.types.is_floating(t)
            or pa.types.is_decimal(t) else "text" if pa.types.is_string(t)
            or pa.types.is_large_string(t) else "date" if pa.types.is_date(t)
            else str(t).split("[")[0])


def _key_values(column: pa.ChunkedArray | pa.Array, compared: pa.DataType, name: str
                ) -> pa.Array:
    """Key column ``name`` as keys compare: decoded, in the type both sides' keys are
    compared in (``compared``), floats as one value each (-0.0 as 0.0: both sides of a
    join, and the hash that places them)."""
    column = plain(column)
    # an integer or a decimal compared as a float is rounded to one, as Spark casts it
    exact = not pa.types.is_floating(compared) or pa.types.is_floating(column.type)
    try:
        return normalized(column.cast(compared, safe=exact))
    except pa.ArrowInvalid as exc:
        raise DataError(f"key '{name}' ({column.type}) does not fit {compared}, the type "
                        f"both sides' keys are compared in: {arrow_message(exc)}",
                        hint="keep out the rows whose key is out of that range (a filter "
                             "step), or cast both sides' keys to one type first (op: "
                             "cast)") from None


class _Joining:
    """What both ways of joining share: the keys, the table's read, the output's
    schema, and looking rows up in (a share of) the table."""

    params: JoinParams

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(input column, table column) per key."""
        on = self.params.on
        return list(on.items()) if isinstance(on, dict) else [(k, k) for k in on]

    @cached_property
    def _source(self) -> ReadParquet:
        """The whole table's read (its schema, its columns), listed once per operator."""
        p = self.params
        return ReadParquet(path=p.path, filter=p.filter, storage_options=p.storage_options)

    @property
    def _named(self) -> str:
        """The table, as messages name it."""
        return f"step '{self.params.table}'" if self.params.table else f"'{self.params.path}'"

    def step_inputs(self) -> list[str]:
        return [self.params.table] if self.params.table else []

    def _table_schema(self) -> pa.Schema:
        """The table's columns: its files', or the schema of the step that makes it."""
        if self.params.table is None:
            return self._source.schema()
        schema = getattr(self, "step_schemas", {}).get(self.params.table)
        if schema is None:
            raise SchemaError(f"table: the columns of step '{self.params.table}' are not "
                              "known yet", hint="fix that step's problem first")
        return schema

    def table_columns(self, table_schema: pa.Schema) -> list[str]:
        """The table's columns the join uses: its keys, then the columns it brings."""
        return [right for _, right in self.keys] + self._brought(table_schema)

    def _brought(self, table_schema: pa.Schema) -> list[str]:
        """The table's columns this step adds (before the prefix)."""
        if self.params.how == "anti":
            return []
        keys = {right for _, right in self.keys}
        if self.params.columns is None:
            return [n for n in table_schema.names if n not in keys]
        try:
            require_columns(table_schema, self.params.columns, "column", self._named)
        except SchemaError as exc:
            raise type(exc)(f"columns: {exc.message}", hint=exc.hint) from None
        shared = [c for c in self.params.columns if c in keys]
        if shared:
            raise SchemaError(f"columns: '{shared[0]}' is a key: the input has it already",
                              hint="list only the columns to bring")
        return list(self.params.columns)

    @cached_property
    def _reading(self) -> ReadParquet:
        """The table's read: only the columns the join uses are decoded (the filter may
        use others); made once per operator."""
        p = self.params
        return ReadParquet(path=p.path, filter=p.filter,
                           columns=self.table_columns(self._source.schema()),
                           storage_options=p.storage_options)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [left for left, _ in self.keys]

    def _reads_of(self, other: _Joining) -> _Joining:
        """This operator, with the table's reads ``other`` made already (the files
        listed and their footers read once)."""
        for name in ("_source", "_reading", "step_schemas", "key_types"):
            if name in other.__dict__:
                self.__dict__[name] = other.__dict__[name]
        return self

    # per key, the type both sides' keys are compared in: bound as the step plans
    # (``output_schema``), and travelling with the step to the table's side of a shuffle
    key_types: list[pa.DataType] | None = None

    def _compared(self, schema: pa.Schema, table_schema: pa.Schema) -> list[pa.DataType]:
        """Per key, the type the input's (``schema``) and the table's keys are compared
        in; a SchemaError naming both columns for keys that cannot be compared."""
        types = []
        for left, right in self.keys:
            have, want = schema.field(left).type, table_schema.field(right).type
            common = _common(have, want)
            if common is None:
                zoned = next((t for t in (have, want) if pa.types.is_timestamp(t) and t.tz),
                             None)
                raise SchemaError(
                    f"on: key '{left}' is {have} in the input and {want} in "
                    f"{self._named}" + (f" (column '{right}')" if right != left else "")
                    + ": keys that cannot be compared",
                    hint="cast one side first (op: cast), so that both are numbers or both "
                         "text" if {_kind(have), _kind(want)} == {"number", "text"} else
                         "cast one side first (op: cast), e.g. both to "
                         f"{pa.timestamp(max(have.unit, want.unit, key=_UNITS.index), zoned.tz)}"
                         " (a time without a zone is taken as UTC)"
                         if zoned is not None else "cast one side first (op: cast), e.g. "
                         f"both to {want}")
            types.append(common)
        return types

    def _key_types(self, schema: pa.Schema | None = None) -> list[pa.DataType]:
        """The keys' compared types: as planned, else from the input's ``schema``."""
        if self.key_types is None:
            if schema is None:
                raise RuntimeError("join: the keys' types are not bound: plan the step "
                                   "(output_schema) first")
            self.key_types = self._compared(schema, self._table_schema())
        return self.key_types

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        table_schema = self._table_schema()
        try:
            require_columns(table_schema, [right for _, right in self.keys], "key column",
                            self._named)
        except SchemaError as exc:
            raise type(exc)(f"on: {exc.message}", hint=exc.hint) from None
        self.key_types = self._compared(schema, table_schema)
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

    def _check_one_row_per_key(self, table: pa.Table, keys: list[str],
                               lookup: _Lookup) -> None:
        """A DataError naming a key on several rows of ``table`` (keys known, looked up
        by ``lookup``)."""
        if lookup.unique:
            return
        counts = table.group_by(keys).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
        if repeated.num_rows:
            first = repeated.slice(0, 1).to_pylist()[0]
            shown = ", ".join(f"{right}={first[key]!r}"
                              for key, (_, right) in zip(keys, self.keys, strict=True))
            raise DataError(
                f"key {shown} is on {first['count_all']} rows of {self._named} (and "
                f"{repeated.num_rows - 1:,} other keys are repeated{self._among}): a join "
                f"brings the columns of one row per key", hint=(
                    f"keep one row per key in step '{self.params.table}''s rows (a "
                    "deduplicate by the key before it, or by: the key in its aggregate)"
                    if self.params.table else "keep one row per key in the table, or "
                                              "choose them with filter:"))

    _among = ""

    def _joined(self, part: pa.Table, part_keys: list[Any], table: pa.Table,
                keys: list[str], lookup: _Lookup) -> pa.Table:
        """``part`` with the columns of its keys' rows of ``table`` (``lookup`` made of
        its ``keys``), or its rows that have one (inner) or none (anti)."""
        at = lookup.positions(part_keys)
        if self.params.how == "anti":
            return part.filter(pc.is_null(at))
        if self.params.how == "inner":
            found = pc.is_valid(at)
            part, at = part.filter(found), at.filter(found)
        brought = table.select([n for n in table.column_names if n not in keys]).take(at)
        for field, column in zip(brought.schema, brought.columns, strict=True):
            part = part.append_column(
                field.with_name(self.params.prefix + field.name).with_nullable(True), column)
        return part


class _Lookup:
    """A table's side of the key lookup, made once and used for every part: one key's
    column as it is (its values are the table's rows); several keys' distinct values,
    the dense codes after each fold, and each table row's code."""

    def __init__(self, columns: list[Any]):
        columns = [plain(c) for c in columns]
        if len(columns) == 1:
            self.rows = columns[0]
        else:
            self.values = [pc.unique(c) for c in columns]
            self.dense: list[pa.Array] = []
            self.rows = _fold(columns, self.values, self.dense)
        # one row per key: what the join needs (its key's row), checked once
        self.unique = len(pc.unique(self.rows)) == len(self.rows)

    def positions(self, columns: list[Any]) -> pa.Array:
        """Per row of the key ``columns``, the table's row with its key (null: none)."""
        if len(columns) == 1:
            codes = columns[0].cast(self.rows.type)
        else:
            codes = _fold(columns, self.values, self.dense)
        return pc.index_in(codes, value_set=self.rows, skip_nulls=True)


@register("join")
class Join(_Joining, Transform):
    """Bring columns of another Parquet table to each row, by key (broadcast or shuffle).

    A small table (up to `max_mb`) is read once, on the driver, and sent with the step
    to every partition: each looks its keys up there, keeping its rows' order (a
    broadcast join). A larger one (`strategy: shuffle`, or `auto` when its footers say
    it is over `max_mb`) is joined through a shuffle: the rows and the table's rows go
    by a hash of their keys to the same output partitions (`partitions`), through the
    scratch folder, on any engine; rows keep their order within each output partition.
    A key must be on one row of the table at most (a lookup: duplicates are an error
    naming the key), a null key matches nothing, and keys compare as values, those of two
    types in their common type as Spark SQL compares them (times in the finer unit, int64,
    float64, decimals widened). The table is a Parquet `path`, or another step's rows
    (`table: <step id>`: that step runs first; with `auto` the run chooses once it has,
    from the size its source estimates). Never part of a saved model: a scoring
    pipeline joins the table too.

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

    @classmethod
    def create(cls, params: JoinParams) -> Join | ShuffleJoin:
        """A broadcast join, or a shuffle join for ``strategy: shuffle`` or a table
        whose footers say it takes more than ``max_mb`` (``auto``)."""
        if params.strategy == "broadcast":
            return cls(params)
        if params.strategy == "shuffle":
            return ShuffleJoin(params)
        if params.table is not None:
            return cls(params)  # the run decides, when the step's rows are made (decided)
        probe = cls(params)
        try:
            size = probe._reading.estimated_bytes()
        except (SluiceError, OSError, pa.ArrowException):
            return cls(params)  # the table's problem is reported as the step plans
        if size > params.max_mb * 2**20:
            return ShuffleJoin(params, estimated_mb=size / 2**20)._reads_of(probe)
        probe.estimated_mb = size / 2**20
        return probe

    def __init__(self, params: Any = None, estimated_mb: float | None = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        # the table's size from its footers, when that chose the broadcast (``auto``)
        self.estimated_mb = estimated_mb
        self._table: pa.Table | None = None
        self._given: pa.Table | None = None  # a table step's rows, collected by the run
        self._lookup: _Lookup | None = None
        self._lock = threading.Lock()

    def decided(self, estimated_bytes: float | None) -> Join | ShuffleJoin:
        """For a table step's rows (``table:``) and ``auto``: this broadcast join when
        the rows take at most ``max_mb`` as the run estimates them (from what the
        step's source says), else a shuffle join (also when there is no estimate)."""
        if self.params.table is None or self.params.strategy != "auto":
            return self
        mb = None if estimated_bytes is None else estimated_bytes / 2**20
        if mb is not None and mb <= self.params.max_mb:
            self.estimated_mb = mb
            return self
        return ShuffleJoin(self.params, estimated_mb=mb)._reads_of(self)

    def bind_table(self, table: pa.Table) -> None:
        """A table step's rows (``table:``), collected on the driver by the run."""
        self._given = table

    def __getstate__(self) -> dict[str, Any]:
        # read on the driver before the step goes to the workers: the same table for
        # every partition, read once
        return {"params": self.params, "table": self.table(), "key_types": self.key_types}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.params, self._table, self._lock = state["params"], state["table"], threading.Lock()
        self.key_types = state["key_types"]
        self._lookup, self.estimated_mb, self._given = None, None, None

    def table(self) -> pa.Table:
        """The table, keys in their compared types and the brought columns, read on
        first use (once per process) and checked: its size, one row per key."""
        with self._lock:
            if self._table is None:
                self._table = self._read()
            return self._table

    def _read(self) -> pa.Table:
        keys = [right for _, right in self.keys]
        types = self._key_types()
        if self.params.table is not None:
            if self._given is None:
                raise RuntimeError(f"join: step '{self.params.table}''s rows were not bound")
            # kept until the checks pass: each partition that asks after a failed check
            # fails the same way
            table = self._given.select(self.table_columns(self._given.schema))
        else:
            source = self._reading
            table = pa.concat_tables([source.read(part) for part in source.partitions()]
                                     or [source.schema().empty_table()])
        mb = table.nbytes / 2**20
        if mb > self.params.max_mb:
            raise DataError(
                f"the table {self._named} takes {mb:,.0f} MB in memory, over max_mb "
                f"{self.params.max_mb:g}", hint="join it through a shuffle (strategy: "
                "shuffle: any size), bring fewer columns (columns:), keep fewer rows "
                + (f"(a filter step before '{self.params.table}')" if self.params.table
                   else "(filter:)") + ", or raise max_mb")
        for i, name in enumerate(keys):
            table = table.set_column(i, name, _key_values(table.column(i), types[i], name))
        known = table.filter(pc.invert(pc.is_null(_combined(table, keys)))).combine_chunks()
        self._lookup = _Lookup([known.column(k) for k in keys])
        self._check_one_row_per_key(known, keys, self._lookup)
        self._given = None
        return known

    def _codes(self) -> _Lookup:
        if self._lookup is None:  # two threads may both fold: to the same codes
            table = self.table()
            self._lookup = _Lookup([table.column(right) for _, right in self.keys])
        return self._lookup

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        keys = [right for _, right in self.keys]
        types = self._key_types(part.schema)
        return self._joined(part, [_key_values(part.column(left), t, left)
                                   for (left, _), t in zip(self.keys, types, strict=True)],
                            self.table(), keys, self._codes())


def _hidden(i: int) -> str:
    """The name of key ``i`` in its compared form, in both sides' partial rows."""
    return f"{INTERNAL}key{i}"


class _TableSide(ShuffleSide):
    """A shuffle join's table: its rows with known keys, keys in their compared form
    (under the hidden names) and the columns it brings."""

    name = "table"

    def __init__(self, join: ShuffleJoin):
        self.join = join

    @property
    def step(self) -> str | None:
        return self.join.params.table

    def source(self) -> ReadParquet:
        return self.join._reading

    def key_columns(self) -> list[str]:
        return [_hidden(i) for i in range(len(self.join.keys))]

    def partial(self, part: pa.Table) -> pa.Table:
        keys = [right for _, right in self.join.keys]
        types = self.join._key_types()
        out = pa.table([_key_values(part.column(k), t, k)
                        for k, t in zip(keys, types, strict=True)], names=self.key_columns())
        known = pc.is_valid(_combined(out, out.column_names))  # a null key matches nothing
        # a Parquet table's read has the columns it brings; a step's rows have others too
        join = self.join
        for name in join._brought(join._table_schema() if join.params.table else part.schema):
            out = out.append_column(part.schema.field(name), part.column(name))
        return out.filter(known)


class ShuffleJoin(_Joining, Shuffle):
    """``join`` of a table too large to send to every partition: the input's rows and
    the table's rows go by a hash of their keys (in their compared form) to the same
    output partitions, where each looks its rows up in its share of the table."""

    name = "join"
    in_model = False
    new_rows = False
    row_order = "input"
    splittable = True
    Params = JoinParams
    _among = " in this share of the table"

    def __init__(self, params: Any = None, estimated_mb: float | None = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        # the table's size from its footers, when that chose the shuffle (``auto``)
        self.estimated_mb = estimated_mb

    @cached_property
    def _side(self) -> _TableSide:
        return _TableSide(self)

    def sides(self) -> list[ShuffleSide]:
        return [self._side]

    def key_columns(self) -> list[str]:
        return self._side.key_columns()

    def partial(self, part: pa.Table) -> pa.Table:
        """The rows, with their keys in the compared form (under hidden names) to be
        placed by."""
        types = self._key_types(part.schema)
        for i, ((left, _), t) in enumerate(zip(self.keys, types, strict=True)):
            part = part.append_column(_hidden(i), _key_values(part.column(left), t, left))
        return part

    def finish(self, partials: pa.Table, *sides: pa.Table) -> pa.Table:
        (table,) = sides
        keys = self.key_columns()
        table = table.combine_chunks()
        lookup = _Lookup([table.column(k) for k in keys])
        self._check_one_row_per_key(table, keys, lookup)
        rows = partials.drop_columns(keys)
        return self._joined(rows, [partials.column(k) for k in keys], table, keys, lookup)


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
