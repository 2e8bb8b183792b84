"""Categorical features of tree models: columns split by sets of values, not thresholds
(LightGBM's and HistGradientBoosting's native categories, XGBoost's ``enable_categorical``).

A categorical feature's values are coded by the model's category list: the ``max_bins``
values most frequent in the training rows' bin sample (ties by value), code ``i`` the
``i``-th; a null, and a value not in the list (rarer, or unseen at training), is
missing and takes the node's missing side (HistGradientBoosting's rule for unknown
categories). The codes travel as float64 like numeric values (NaN for missing), so bins,
histograms and the device copy are the numeric features'. A split sends a set of codes
left: at each node the categories are ordered by the criterion's value of their rows
(the mean, the second class's share, ``-G / (H + l2)``; with more than two classes, the
share of the node's most frequent class) and the best prefix of that order is found as a
threshold is (Fisher's ordering, as LightGBM, HistGradientBoosting and Spark MLlib);
categories with no rows at the node go right.

Types: string (and large or view string), integer, boolean, and dictionaries of them;
the values are kept as one of string, int64 or bool, so a column read as int32 at
training and int64 at scoring (or a dictionary and plain strings) codes the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.arrays import is_text, plain
from operators.base import DataError, SchemaError


def category_type(t: pa.DataType) -> pa.DataType | None:
    """The type a categorical column's values are kept in (string, int64 or bool), or
    None when a column of type ``t`` cannot be categorical."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if is_text(t):
        return pa.string()
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_boolean(t):
        return pa.bool_()
    return None


def check_categorical(schema: pa.Schema, name: str, where: str) -> None:
    """Plan-time check that column ``name`` can be a categorical feature."""
    t = schema.field(name).type
    if category_type(t) is None:
        raise SchemaError(
            f"{where} '{name}' is {t}: a categorical feature holds strings, integers or "
            f"booleans",
            hint="leave it out of categorical (a number is split by thresholds), or cast it")


def normalized(column: pa.ChunkedArray | pa.Array, kept: pa.DataType,
               name: str | None = None) -> pa.Array:
    """A categorical column as one array of its kept type (``category_type``). A uint64
    value beyond int64 cannot be a category: a DataError naming column ``name`` (the
    training rows' sample), else null (scoring's codes: missing, as any value that is
    not a category)."""
    column = plain(column)
    if pa.types.is_uint64(column.type) and kept == pa.int64():
        beyond = pc.greater(column, pa.scalar(2**63 - 1, pa.uint64()))
        if pc.any(beyond).as_py():
            if name is not None:
                raise DataError(f"categorical column '{name}' has uint64 values beyond "
                                f"int64, which its categories are kept as",
                                hint="map the values to a smaller range (or to text) first")
            column = pc.if_else(beyond, pa.scalar(None, pa.uint64()), column)
    return column if column.type == kept else pc.cast(column, kept)


def choose_categories(sample: pa.Array, max_bins: int) -> pa.Array:
    """The ``max_bins`` most frequent values of ``sample`` (a training-row sample), most
    frequent first, ties in value order; nulls are not categories."""
    counts = pc.value_counts(sample.drop_null())
    if len(counts) == 0:
        return pa.array([], type=sample.type)
    values, n = counts.field("values"), counts.field("counts")
    order = pc.sort_indices(pa.table({"n": n, "v": values}),
                            sort_keys=[("n", "descending"), ("v", "ascending")])
    return values.take(order[:max_bins])


def category_codes(column: pa.ChunkedArray | pa.Array, categories: pa.Array) -> np.ndarray:
    """Each value's position in ``categories`` as float64; NaN for a null or a value not
    among them."""
    values = normalized(column, categories.type)
    index = pc.index_in(values, value_set=categories)
    return index.to_numpy(zero_copy_only=False).astype(np.float64)


def categories_meta(categories: dict[str, pa.Array]) -> dict[str, Any]:
    """The categories as JSON: per feature its kept type and values, in code order."""
    return {name: {"type": str(values.type), "values": values.to_pylist()}
            for name, values in categories.items()}


def categories_from_meta(meta: dict[str, Any] | None) -> dict[str, pa.Array]:
    return {name: pa.array(entry["values"], type=pa.type_for_alias(entry["type"]))
            for name, entry in (meta or {}).items()}


def scoring_type_error(schema: pa.Schema, name: str, kept: pa.DataType) -> SchemaError | None:
    """Why column ``name`` of ``schema`` cannot be coded by categories kept as ``kept``
    (None when it can)."""
    t = schema.field(name).type
    if category_type(t) == kept:
        return None
    return SchemaError(
        f"feature column '{name}' is {t}, but the model's categories of it are {kept} "
        f"values",
        hint=f"cast it to {kept}" if category_type(t) is not None or kept == pa.string()
        else "score rows of the columns the model was trained on")


def in_set(category: Any, code: Any, arrays: dict[str, Any], xp: Any) -> Any:
    """Whether each ``code`` (int64) is in the set ``category`` (a row of ``arrays``'
    flattened ``masks``, ``mask_width`` codes a row; where ``category`` is -1 the answer
    is anything), on ``xp``; the two broadcast together."""
    width = arrays["mask_width"]
    at = (xp.where(category >= 0, category, xp.zeros_like(category)) * width
          + xp.where((code >= 0) & (code < width), code, xp.zeros_like(code)))
    return xp.reshape(xp.take(arrays["masks"], xp.reshape(at, (-1,))), at.shape)
