"""select, drop, rename and cast columns; and the column helpers the feature operators share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from operators.arrays import plain
from operators.base import (
    ARROW_ERRORS,
    DataError,
    ErrorOrNull,
    ParamError,
    Params,
    SchemaError,
    Transform,
    arrow_message,
    columns_view,
    columns_without,
    register,
    require_columns,
)
from operators.expressions import with_projected
from operators.io.parquet import parse_type
from operators.try_cast import cast_options, covers, try_cast

# --------------------------------------------------------------------------- helpers


def is_numeric(t: pa.DataType) -> bool:
    """Integer or floating point (booleans and decimals are not numbers to scale)."""
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def require_numeric(schema: pa.Schema, columns: Iterable[str], what: str) -> None:
    """SchemaError naming every column of ``columns`` that is not integer or floating
    (one run of the plan shows them all, not one a run)."""
    columns = list(columns)
    require_columns(schema, columns)
    bad = [(name, schema.field(name).type) for name in columns
           if not is_numeric(schema.field(name).type)]
    if not bad:
        return
    if len(bad) == 1:
        name, t = bad[0]
        raise SchemaError(f"column '{name}' is {t}, but {what} needs numbers",
                          hint=f"leave '{name}' out, or `cast` it to float64 first")
    listed = ", ".join(f"'{name}' ({t})" for name, t in bad)
    raise SchemaError(f"{len(bad)} columns are not numbers, but {what} needs numbers: {listed}",
                      hint="leave them out, or `cast` them to float64 first")


def unique_names(names: list[str], param: str) -> None:
    """ParamError if a column is listed twice in ``param``."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ParamError(f"column '{name}' is listed twice in `{param}`")
        seen.add(name)


def null_mask(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where ``column`` is null, as a NumPy bool vector."""
    if not column.null_count and not pa.types.is_dictionary(column.type):
        # (a dictionary's nulls may sit in its values, which null_count does not count)
        return np.zeros(len(column), dtype=bool)
    return np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)


def replace_field(schema: pa.Schema, name: str, fields: list[pa.Field]) -> pa.Schema:
    """``schema`` with column ``name`` replaced, in place, by ``fields`` (any number)."""
    i = schema.get_field_index(name)
    out = schema.remove(i)
    for k, f in enumerate(fields):
        out = out.insert(i + k, f)
    return out


def replace_columns(part: pa.Table, name: str, fields: list[pa.Field],
                    arrays: list[pa.Array]) -> pa.Table:
    """``part`` with column ``name`` replaced, in place, by ``arrays`` (any number)."""
    i = part.schema.get_field_index(name)
    if len(fields) != len(arrays):
        raise ValueError(f"{len(fields)} fields for {len(arrays)} arrays")
    columns = part.columns
    return pa.Table.from_arrays([*columns[:i], *arrays, *columns[i + 1:]],
                                schema=replace_field(part.schema, name, fields))


def value_counts(column: pa.ChunkedArray | pa.Array) -> dict[str, Any]:
    """Distinct values (not null, not NaN) in sorted order, their counts, and the nulls.

    Plain data for an Estimator's stats: ``{"values": list, "counts": int64 array,
    "nulls": int}``; ``merge_counts`` combines two exactly.
    """
    column = plain(column)
    nulls = column.null_count
    column = column.drop_null()
    if pa.types.is_floating(column.type):
        # -0.0 + 0.0 is 0.0: one value, however the partitions split the data
        column = pc.add(column.filter(pc.invert(pc.is_nan(column))), 0.0)
    counted = pc.value_counts(column)
    values, counts = counted.field("values"), counted.field("counts")
    order = pc.sort_indices(values)
    return {"values": values.take(order).to_pylist(),
            "counts": counts.take(order).to_numpy(zero_copy_only=False).astype(np.int64),
            "nulls": int(nulls)}


def merge_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``value_counts`` as one: counts of equal values add; values stay sorted."""
    merged: dict[Any, int] = dict(zip(a["values"], a["counts"].tolist(), strict=True))
    for value, count in zip(b["values"], b["counts"].tolist(), strict=True):
        merged[value] = merged.get(value, 0) + count
    values = sorted(merged)
    return {"values": values, "counts": np.array([merged[v] for v in values], dtype=np.int64),
            "nulls": a["nulls"] + b["nulls"]}


# --------------------------------------------------------------------------- select / drop


MISSING = ("a column not in the input: an error (a typo found as the pipeline plans), or "
           "nothing to {verb} (pandas' errors='ignore'; what a saved model's {op} does, so "
           "that scoring never needs a column the model does not use: an id, the label)")


class SelectParams(Params):
    columns: list[str] = Field(min_length=1, description="columns to keep, in this order")
    missing: Literal["error", "ignore"] = Field(
        "error", description=MISSING.format(verb="keep", op="select"))


@register("select")
class Select(Transform):
    """Keep only the named columns, in the order given.

    ```yaml
    - op: select
      columns: [tenure, plan, churned]
    ```
    """

    numeric_kernels = False

    Params = SelectParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns) if self.params.missing == "error" else []

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Select:
        return Select(columns=self.params.columns, missing="ignore")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self.params.missing == "error":
            require_columns(schema, self.params.columns)
        return pa.schema([schema.field(c) for c in _there(self.params.columns, schema.names)],
                         metadata=schema.metadata)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return part.select(_there(self.params.columns, part.column_names))


def _there(columns: list[str], names: list[str]) -> list[str]:
    """Those of ``columns`` that are among ``names``, in their order."""
    present = set(names)
    return [c for c in columns if c in present]


class DropParams(Params):
    columns: list[str] = Field(min_length=1, description="columns to remove")
    missing: Literal["error", "ignore"] = Field(
        "error", description=MISSING.format(verb="drop", op="drop"))


@register("drop")
class Drop(Transform):
    """Remove the named columns.

    ```yaml
    - op: drop
      columns: [customer_id, signup_date]
    ```
    """

    numeric_kernels = False

    Params = DropParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns) if self.params.missing == "error" else []

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Drop:
        return Drop(columns=self.params.columns, missing="ignore")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self.params.missing == "error":
            require_columns(schema, self.params.columns)
        for name in _there(self.params.columns, schema.names):
            schema = schema.remove(schema.get_field_index(name))
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return part.drop_columns(_there(self.params.columns, part.column_names))


# --------------------------------------------------------------------------- rename


class RenameParams(Params):
    columns: dict[str, str] = Field(min_length=1,
                                    description="old name: new name, e.g. {amt: amount}")


@register("rename")
class Rename(Transform):
    """Rename columns; the new names must not clash with each other or with kept columns.

    ```yaml
    - op: rename
      columns: {amt: amount, cust: customer_id}
    ```
    """

    numeric_kernels = False

    Params = RenameParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Rename | None:
        """Without the renames only training reads the result of (a label renamed here:
        scoring rows have no label to rename); None where none is left."""
        # by the new names: what the later steps (and the fits) read
        renamed = frozenset(old for old, new in self.params.columns.items()
                            if new in training_only)
        cut = columns_without(self.params, renamed)
        if cut is None:
            return self
        return Rename(cut[0]) if cut[0] is not None else None

    def derived_from(self) -> dict[str, list[str]]:
        return {new: [old] for old, new in self.params.columns.items()}

    def _names(self, names: list[str]) -> list[str]:
        mapping = self.params.columns
        new = [mapping.get(n, n) for n in names]
        seen: dict[str, str] = {}
        for old, name in zip(names, new, strict=True):
            if name in seen:
                pair = (seen[name], old)
                renamed = [n for n in pair if n in mapping]
                if len(renamed) == 2:
                    message = f"renaming '{pair[0]}' and '{pair[1]}' both give '{name}'"
                else:
                    message = f"renaming '{renamed[0]}' to '{name}' clashes with column '{name}'"
                raise SchemaError(message,
                                  hint="choose another name, or drop the other column first")
            seen[name] = old
        return new

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        new = self._names(schema.names)
        return pa.schema([f.with_name(n) for f, n in zip(schema, new, strict=True)],
                         metadata=schema.metadata)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return part.rename_columns(self._names(part.column_names))


# --------------------------------------------------------------------------- cast


class CastParams(Params):
    columns: dict[str, str] = Field(
        min_length=1, description="column: type, e.g. {tenure: float64, day: date32}")
    safe: bool = Field(True, description="true: a value that does not fit is an error; "
                                         "false: truncate / wrap as Arrow's unsafe cast does")
    invalid: ErrorOrNull = Field(
        "error", description="what a value that does not convert becomes: error (the run "
                             "stops, naming the column) or null (Spark SQL's try_cast: "
                             "'12a' as int64, 1e20 as int32, 300 as uint8)")

    @model_validator(mode="after")
    def _null_is_safe(self) -> CastParams:
        if self.invalid == "null" and not self.safe:
            raise ParamError("invalid: null makes a value that does not fit null; safe: "
                             "false truncates or wraps it instead: choose one")
        if self.invalid == "null":
            for name, type_name in self.columns.items():
                if not covers(parse_type(type_name)):
                    raise ParamError(
                        f"cast of column '{name}': invalid: null casts to an integer, "
                        "float32, float64, string, bool, date32 or timestamp[us] (the "
                        f"expressions' try_cast), not {type_name}",
                        hint=f"cast '{name}' to one of those, or to {type_name} without "
                             "invalid: null (a value that does not convert then stops the "
                             "run, named)")
        return self

    @field_validator("columns")
    @classmethod
    def _types_known(cls, value: dict[str, str]) -> dict[str, str]:
        for name, type_name in value.items():
            try:
                parse_type(type_name)
            except ValueError as exc:
                raise ParamError(f"cast of column '{name}': {exc}") from None
        return value


@register("cast")
class Cast(Transform):
    """Change column types (Arrow casts); a value that does not fit is an error by default.

    ```yaml
    - op: cast
      columns: {tenure: float64, signup: date32, plan: string}
      invalid: null               # a value that does not convert: null (default: error)
    ```
    `invalid: null` is Spark SQL's `try_cast` of each column (the expressions'
    `try_cast(x as T)`): the cast's value where it gives one, null where it would stop
    the run or give an undefined integer; a float to an integer is truncated toward
    zero (1.5 as 1, as Spark's), where the default refuses it.
    """

    numeric_kernels = False

    Params = CastParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def saved_view(self, training_only: frozenset[str] = frozenset()) -> Cast | None:
        """Without the casts of columns only training reads (the label cast to bool:
        scoring rows have no label); None where none is left."""
        return columns_view(self, training_only)

    def _targets(self) -> dict[str, pa.DataType]:
        return {c: parse_type(t) for c, t in self.params.columns.items()}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        for name, target in self._targets().items():
            i = schema.get_field_index(name)
            source = schema.field(i).type
            try:
                pa.array([], type=source).cast(target)
            except ARROW_ERRORS:
                raise SchemaError(f"cannot cast column '{name}' from {source} to {target}",
                                  hint="cast through an intermediate type, or derive it "
                                       "with an expression") from None
            field = schema.field(i).with_type(target)
            if self.params.invalid == "null":  # a value that does not convert: null
                field = field.with_nullable(True)
            schema = schema.set(i, field)
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        if self.params.invalid == "null":
            return self._try_cast(part)
        for name, target in self._targets().items():
            i = part.schema.get_field_index(name)
            try:
                column = pc.cast(part.column(i), target, safe=self.params.safe)
            except ARROW_ERRORS as exc:
                hint = ("set `invalid: null` to make such values null, `safe: false` to "
                        "truncate or wrap, or fix the data" if self.params.safe
                        else "fix the data")
                raise DataError(f"cannot cast column '{name}' to {target}: "
                                f"{arrow_message(exc)}", hint=hint) from None
            part = part.set_column(i, part.schema.field(i).with_type(target), column)
        return part

    def _try_cast(self, part: pa.Table) -> pa.Table:
        """Each column through the expressions' ``try_cast``, in one projection."""
        targets = self._targets()
        return with_projected(
            part, {name: try_cast(pc.field(name), part.schema.field(name).type, target,
                                  cast_options(target)) for name, target in targets.items()},
            {name: part.schema.field(name).with_type(target).with_nullable(True)
             for name, target in targets.items()})
