"""Arrow columns to arrays of an array namespace ``xp`` (NumPy, CuPy, array_api_strict).

Kernels receive ``xp`` and only call what the array API standard offers, so the
same code runs on NumPy, on a GPU through CuPy, and under ``array_api_strict``
(the tests' stand-in that rejects NumPy-only calls).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from array_api_compat import array_namespace

NAMESPACES = ("numpy", "cupy", "array_api_strict")


def get_namespace(name: str = "numpy") -> Any:
    """The array namespace called ``name``, wrapped to the array API standard."""
    if name not in NAMESPACES:
        raise ValueError(f"unknown array namespace '{name}'; expected one of {NAMESPACES}")
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "cupy":
        import array_api_compat.cupy as xp

        return xp
    return importlib.import_module("array_api_strict")


def column_to_numpy(column: pa.ChunkedArray | pa.Array, dtype: Any = np.float64) -> np.ndarray:
    """A numeric Arrow column as a NumPy vector of ``dtype``; nulls become NaN.

    Zero-copy when the column is one chunk of ``dtype`` without nulls.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.int8())
    if column.null_count:
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            column = pc.cast(column, pa.float64()).fill_null(float("nan"))
        else:
            raise TypeError(f"column of type {column.type} has nulls")
    values = column.to_numpy(zero_copy_only=False)
    return values if values.dtype == dtype else values.astype(dtype)


def table_to_matrix(part: pa.Table, columns: list[str], xp: Any, dtype: Any = np.float64) -> Any:
    """Columns of ``part`` as one (rows, len(columns)) array of ``xp``.

    The matrix is filled on the host and moved to ``xp``'s device in one copy.
    """
    host = np.empty((part.num_rows, len(columns)), dtype=dtype, order="F")
    for j, name in enumerate(columns):
        host[:, j] = column_to_numpy(part.column(name), dtype)
    return to_xp(host, xp)


def to_xp(array: np.ndarray, xp: Any) -> Any:
    """A NumPy array as an array of ``xp`` (one host-to-device copy on a GPU)."""
    if is_numpy(xp):
        return array
    return xp.asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    """Any namespace's array back on the host as NumPy."""
    if isinstance(array, np.ndarray):
        return array
    xp = array_namespace(array)
    if getattr(xp, "__name__", "").startswith("array_api_compat.cupy") or hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


def is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")
