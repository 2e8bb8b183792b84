"""vector_columns: a vector column (an embedding: a list of numbers per row) as one
numeric column per position, which every model takes as features.

Spark MLlib's models take one ``vector`` column of features, scikit-learn's a 2-D
array; sluice's models take numeric columns by name. Embeddings from an upstream model
are usually written to Parquet as a list column (``fixed_size_list<float>[384]`` from
Arrow, ``list<float>`` from Spark's ``array<float>``): this step makes them columns
``embedding_0 ... embedding_383`` in the vector's place, in its number type, so that a
model without ``features`` takes them all, and ``save_model`` keeps the step, so that
scoring, ``sluice serve`` and ``spark_udf`` take the vectors as the training read them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import (
    DataError,
    Params,
    SchemaError,
    Transform,
    register,
    require_columns,
)
from operators.features.columns import unique_names

LISTS = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


class VectorColumnsParams(Params):
    columns: list[str] = Field(
        min_length=1, description="vector columns: a list of numbers per row (an embedding)")
    size: int | None = Field(
        None, ge=1, description="the vectors' length, for list columns (a fixed_size_list "
                                "column says its own): a row whose vector is not this long "
                                "stops the run")
    keep: bool = Field(False, description="keep the vector columns beside the new ones")


@register("vector_columns")
class VectorColumns(Transform):
    """Embeddings as columns: a vector column as one numeric column per position.

    A vector column (a list of numbers per row) becomes ``<column>_0``, ``<column>_1``,
    ..., in its place and of its number type; a null vector gives nulls (a model's
    features then say so: `impute` or `filter`).

    ```yaml
    - op: vector_columns
      columns: [embedding]     # fixed_size_list<float>[384] -> embedding_0 ... embedding_383
    - op: kmeans               # features: every numeric column
      k: 20
    ```
    """

    numeric_kernels = False

    Params = VectorColumnsParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def derived_from(self) -> dict[str, list[str]]:
        if self._sizes is None:
            return {}
        return {name: [column] for column, size in self._sizes.items()
                for name in _names(column, size)}

    _sizes: dict[str, int] | None = None

    def _size(self, field: pa.Field) -> int:
        """The vectors' length of a column of this field (a SchemaError where its type
        is no vector of numbers, or its length is not known or not ``size``)."""
        t = field.type
        if not any(test(t) for test in LISTS) or not (
                pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
            raise SchemaError(f"column '{field.name}' is {t}, not a vector of numbers",
                              hint="vector_columns takes list, large_list or "
                                   "fixed_size_list columns of integers or floats")
        size = self.params.size
        if pa.types.is_fixed_size_list(t):
            if size is not None and size != t.list_size:
                raise SchemaError(f"column '{field.name}' holds vectors of {t.list_size} "
                                  f"numbers, not size: {size}",
                                  hint=f"set size: {t.list_size}, or leave size out")
            return t.list_size
        if size is None:
            raise SchemaError(f"column '{field.name}' is {t}: its vectors' length is not in "
                              "its type", hint="give it: size: 384 (the embedding's length)")
        return size

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.params.columns)
        sizes = {name: self._size(schema.field(name)) for name in self.params.columns}
        fields: list[pa.Field] = []
        for field in schema:
            if field.name not in sizes:
                fields.append(field)
                continue
            if self.params.keep:
                fields.append(field)
            fields += [pa.field(name, field.type.value_type)
                       for name in _names(field.name, sizes[field.name])]
        names = [f.name for f in fields]
        clash = next((n for n in names if names.count(n) > 1), None)
        if clash is not None:
            raise SchemaError(f"the vector's column '{clash}' is a column of the input too",
                              hint="rename or drop that column first")
        self._sizes = sizes
        return pa.schema(fields, metadata=schema.metadata)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        require_columns(part.schema, self.params.columns)
        vectors = set(self.params.columns)
        names: list[str] = []
        columns: list[pa.ChunkedArray] = []
        for field, column in zip(part.schema, part.columns, strict=True):
            if field.name not in vectors or self.params.keep:
                names.append(field.name)
                columns.append(column)
            if field.name in vectors:
                size = self._size(field)
                names += _names(field.name, size)
                columns += _positions(column, field.name, size)
        # one table of all the columns: a column added at a time cost more than the
        # numbers' copy (0.15 s a partition of 1,536 positions)
        return pa.Table.from_arrays(columns, names=names, metadata=part.schema.metadata)


def _names(column: str, size: int) -> list[str]:
    return [f"{column}_{j}" for j in range(size)]


def _positions(column: pa.ChunkedArray, name: str, size: int) -> list[pa.ChunkedArray]:
    """A vector column's values by position: ``size`` arrays of its value type (a
    DataError where a row's vector is of another length)."""
    vectors = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(vectors)
    if not pa.types.is_fixed_size_list(vectors.type):
        lengths = pc.list_value_length(vectors)
        wrong = pc.and_kleene(pc.is_valid(lengths), pc.not_equal(lengths, size))
        count = pc.sum(wrong).as_py() or 0
        if count:
            first = pc.filter(lengths, wrong)[0].as_py()
            raise DataError(f"column '{name}' has {count} vectors of another length than "
                            f"{size} (the first of {first})",
                            hint="check the vectors written, or set size: to their length")
    values = vectors.flatten()  # the valid vectors' numbers, in order
    if vectors.null_count == 0 and values.null_count == 0 and len(values) == n * size:
        # one copy: the numbers row by row to position by position
        by_position = np.ascontiguousarray(
            values.to_numpy(zero_copy_only=False).reshape(n, size).T)
        return [pa.chunked_array([pa.array(by_position[j], values.type)])
                for j in range(size)]
    return [pa.chunked_array([pc.list_element(vectors, j)]) for j in range(size)]
