"""one_hot: a 0/1 float64 column per category, with a vocabulary learned over all partitions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from operators.base import (
    DataError,
    Estimator,
    Params,
    SchemaError,
    Transform,
    register,
    register_fitted,
    require_columns,
)
from operators.features.columns import (
    merge_counts,
    null_mask,
    plain,
    replace_columns,
    replace_field,
    unique_names,
    value_counts,
)


class OneHotParams(Params):
    columns: list[str] = Field(min_length=1, description="string, integer, boolean or "
                                                         "dictionary columns to encode")
    max_categories: int | None = Field(
        None, ge=1, description="at most this many columns per input column, the `other` "
                                "bucket included (`null` not counted); the most frequent "
                                "categories are kept")
    min_frequency: int | float | None = Field(
        None, description="categories seen fewer times (an integer) or in a smaller fraction "
                          "of rows (a float in (0, 1)) go to the `other` bucket")
    nulls: Literal["category", "error"] = Field(
        "category", description="category: a `<col>=null` column; error: nulls are an error")

    @field_validator("min_frequency")
    @classmethod
    def _frequency(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a count must be at least 1, got {value}")
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a fraction must lie in (0, 1), got {value}")
        return value


def _kind(t: pa.DataType) -> str | None:
    """The value kind one_hot encodes for an Arrow type (None: not encodable)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


ARROW_KIND = {"int": pa.int64(), "bool": pa.bool_(), "string": pa.string()}


def check_column(schema: pa.Schema, name: str, op: str = "one_hot") -> str:
    """The kind of column ``name``; SchemaError when ``op`` cannot encode it."""
    t = schema.field(name).type
    kind = _kind(t)
    if kind is None:
        hint = ("bucketize it first" if pa.types.is_floating(t)
                else "cast it to string first")
        raise SchemaError(f"column '{name}' is {t}; {op} encodes strings, integers and "
                          "booleans", hint=hint)
    return kind


def category_values(column: pa.ChunkedArray | pa.Array, kind: str) -> pa.Array:
    """A column's values in its kind's Arrow type (a dictionary's decoded)."""
    values = plain(column)
    if values.type != ARROW_KIND[kind]:
        values = pc.cast(values, ARROW_KIND[kind])
    return values


def encoded_schema(schema: pa.Schema, kinds: dict[str, str],
                   names: Callable[[str], list[str]], op: str) -> pa.Schema:
    """``schema`` with each fitted column (``kinds``: the kind it was fitted on) replaced
    by the float64 columns ``names(column)``; a SchemaError for a column of another
    kind or a new column the input already has."""
    require_columns(schema, list(kinds))
    for name, fitted in kinds.items():
        if check_column(schema, name, op) != fitted:
            raise SchemaError(f"column '{name}' is {schema.field(name).type} but {op} was "
                              f"fitted on {fitted} values",
                              hint=f"cast '{name}' back to the type it was fitted on")
        new = names(name)
        clash = [n for n in new if n != name and n in schema.names]
        if clash:
            raise SchemaError(f"{op} of '{name}' adds column '{clash[0]}' that the input "
                              "already has", hint="rename or drop it first")
        schema = replace_field(schema, name, [pa.field(n, pa.float64()) for n in new])
    return schema


def label(value: Any) -> str:
    """A category as it appears in a column name: plan=basic, n=3, flag=true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def choose(counts: dict[str, Any], rows: int, params: OneHotParams) -> tuple[list[Any], bool]:
    """The categories kept (sorted) and whether an `other` bucket is needed.

    Below ``min_frequency`` goes to `other`; then, when more than ``max_categories``
    columns would remain, only the ``max_categories - 1`` most frequent stay (equal
    counts: the smaller value stays).
    """
    values, n = counts["values"], counts["counts"]
    threshold = params.min_frequency
    if isinstance(threshold, float):
        threshold = threshold * rows
    keep = [i for i in range(len(values)) if threshold is None or n[i] >= threshold]
    other = len(keep) < len(values)
    limit = params.max_categories
    if limit is not None and len(keep) + other > limit:
        ranked = sorted(keep, key=lambda i: -n[i])  # stable: ties keep the sorted value order
        keep = sorted(ranked[:limit - 1])
        other = True
    return [values[i] for i in keep], other


@register("one_hot")
class OneHot(Estimator):
    """One float64 0/1 column per category, named `<col>=<value>`, where the column was.

    The vocabulary is learned over all partitions (counts combine exactly); columns
    come in sorted value order, then `<col>=other` (categories grouped by
    ``max_categories`` / ``min_frequency``), then `<col>=null` (nulls seen when
    fitting). An unseen category when scoring is all zeros, or `other` when that
    bucket exists. Until the vocabulary is fitted, ``output_schema`` can only say
    that the source columns go: the new columns are known after the fit.

    ```yaml
    - op: one_hot
      columns: [plan, region]     # plan=basic, plan=premium, region=eu, ...
      max_categories: 20
      min_frequency: 0.001
      nulls: category             # category | error
    ```
    """

    numeric_kernels = False

    Params = OneHotParams
    schema_from_fit = True

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")
        self._fitted: OneHotFitted | None = None

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def fit_may_add(self, column: str) -> bool:
        return any(column.startswith(f"{name}=") for name in self.params.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self._fitted is not None:
            return self._fitted.output_schema(schema)
        require_columns(schema, self.params.columns)
        for name in self.params.columns:
            check_column(schema, name)
            schema = replace_field(schema, name, [])
        return schema

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"kinds": {c: check_column(schema, c) for c in self.params.columns}}

    def partial(self, part: pa.Table, state: Any, xp: Any) -> dict[str, Any]:
        stats: dict[str, Any] = {"rows": part.num_rows}
        for name in self.params.columns:
            counts = value_counts(part.column(name))
            if counts["nulls"] and self.params.nulls == "error":
                raise _null_error(name, counts["nulls"])
            stats[name] = counts
        return stats

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": a["rows"] + b["rows"]}
        for name in self.params.columns:
            out[name] = merge_counts(a[name], b[name])
        return out

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        vocab = {}
        for name in self.params.columns:
            categories, other = choose(stats[name], stats["rows"], self.params)
            nulls = stats[name]["nulls"] > 0
            taken = {"other": other, "null": nulls}
            for value in categories:
                if taken.get(label(value)):
                    raise DataError(
                        f"column '{name}' has a category '{label(value)}' that clashes with "
                        f"the `{name}={label(value)}` column one_hot adds",
                        hint="rename the category first, e.g. with derive")
            seen = dict(zip(stats[name]["values"], stats[name]["counts"].tolist(), strict=True))
            vocab[name] = {"kind": state["kinds"][name], "categories": categories,
                           "counts": [seen[value] for value in categories],
                           "other": other, "null": nulls}
        return {"vocabulary": vocab}, True

    def fitted(self, state: dict[str, Any]) -> OneHotFitted:
        self._fitted = OneHotFitted(self.params, state["vocabulary"])
        return self._fitted

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"categories": {c: len(v["categories"]) for c, v in state["vocabulary"].items()}}


def _null_error(name: str, nulls: int) -> DataError:
    return DataError(f"column '{name}' has {nulls} nulls in this partition",
                     hint="impute them first, or set `nulls: category`")


@register_fitted("one_hot.fitted")
class OneHotFitted(Transform):
    """The fitted vocabulary: a 0/1 column per category (+ other, + null)."""

    numeric_kernels = False

    Params = OneHotParams

    def __init__(self, params: OneHotParams, vocabulary: dict[str, Any]):
        super().__init__(params)
        self.vocabulary = vocabulary
        self._sets: dict[str, pa.Array] = {}  # each column's categories, as Arrow

    def _categories(self, name: str) -> pa.Array:
        found = self._sets.get(name)
        if found is None:
            v = self.vocabulary[name]
            found = self._sets[name] = pa.array(v["categories"], ARROW_KIND[v["kind"]])
        return found

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def derived_from(self) -> dict[str, list[str]]:
        return {new: [name] for name in self.params.columns for new in self.names(name)}

    def names(self, name: str) -> list[str]:
        v = self.vocabulary[name]
        out = [f"{name}={label(value)}" for value in v["categories"]]
        out += [f"{name}=other"] * v["other"] + [f"{name}=null"] * v["null"]
        return out

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        kinds = {name: self.vocabulary[name]["kind"] for name in self.params.columns}
        return encoded_schema(schema, kinds, self.names, "one_hot")

    def encode(self, column: pa.ChunkedArray, name: str) -> np.ndarray:
        """The (rows, columns) 0/1 matrix of one input column, Fortran order."""
        v = self.vocabulary[name]
        values = category_values(column, v["kind"])
        k = len(v["categories"])
        rows = len(values)
        index = pc.index_in(values, value_set=self._categories(name))
        index = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)
        missing = null_mask(values)
        if missing.any() and self.params.nulls == "error":
            raise _null_error(name, int(missing.sum()))
        out = np.zeros((rows, k + v["other"] + v["null"]), dtype=np.float64, order="F")
        hit = index >= 0
        out[np.flatnonzero(hit), index[hit]] = 1.0
        if v["other"]:
            out[~hit & ~missing, k] = 1.0
        if v["null"]:
            out[missing, -1] = 1.0
        return out

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        out = part
        for name in self.params.columns:
            matrix = self.encode(part.column(name), name)
            names = self.names(name)
            out = replace_columns(out, name, [pa.field(n, pa.float64()) for n in names],
                                  [pa.array(matrix[:, j]) for j in range(len(names))])
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json"),
                "vocabulary": self.vocabulary}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> OneHotFitted:
        return cls(OneHotParams(**meta["params"]), meta["vocabulary"])
