"""Arrow columns to arrays of an array namespace ``xp`` (NumPy, CuPy, array_api_strict).

Kernels receive ``xp`` and only call what the array API standard offers, so the
same code runs on NumPy, on a GPU through CuPy, and under ``array_api_strict``
(the tests' stand-in that rejects NumPy-only calls).

A namespace may be *placed*: its array-creating functions default to one device
(``array_api_strict``'s ``device1`` in the tests, so that an array a kernel makes on
the host cannot meet the partition's data unnoticed), and it carries the compute
dtype (``float64``, or ``float32`` where a pipeline asks for it) that
:func:`host_buffer` allocates partitions in.

Moves between the host and a device go through :func:`to_xp` and :func:`to_numpy`
only; :func:`transfers` records them, which is how the tests hold kernels to one
host-to-device copy of a partition's data.

GPU stand-in: with ``SLUICE_GPU_STANDIN=array_api_strict`` the ``gpu`` device is
``array_api_strict`` on its non-default device (and
``SLUICE_GPU_STANDIN_MEMORY=BYTES`` makes larger allocations fail as a GPU out of
memory would). Tests and CI use it to run every engine's GPU path without a GPU;
it is not for production.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from array_api_compat import array_namespace

NAMESPACES = ("numpy", "cupy", "array_api_strict")
DTYPES = ("float64", "float32")
STANDIN_ENV = "SLUICE_GPU_STANDIN"
STANDIN_MEMORY_ENV = "SLUICE_GPU_STANDIN_MEMORY"
# host buffers at least this big are page-locked for the copy to a CUDA device:
# pinned memory copies at full PCIe/NVLink speed, but costs more to allocate
PINNED_MIN_BYTES = 1 << 20

_CREATORS = frozenset({"asarray", "zeros", "ones", "empty", "full", "arange", "linspace",
                       "eye"})


class DeviceOutOfMemory(MemoryError):
    """The device has no room for an allocation (the GPU stand-in's out of memory)."""


def _module(name: str) -> Any:
    if name not in NAMESPACES:
        raise ValueError(f"unknown array namespace '{name}'; expected one of {NAMESPACES}")
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "cupy":
        import array_api_compat.cupy as xp

        return xp
    return importlib.import_module("array_api_strict")


class Placed:
    """A namespace whose array-creating functions default to ``device``, and which
    carries a compute dtype. Everything else is the wrapped namespace's own."""

    def __init__(self, xp: Any, device: Any = None, dtype: str = "float64",
                 memory_limit: int = 0):
        if dtype not in DTYPES:
            raise ValueError(f"unknown compute dtype '{dtype}'; expected one of {DTYPES}")
        self._xp, self.device, self.compute_dtype = xp, device, dtype
        self._memory_limit = memory_limit
        self.__name__ = xp.__name__

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._xp, name)
        if name not in _CREATORS or (self.device is None and not self._memory_limit):
            return attr

        def create(*args: Any, **kwargs: Any) -> Any:
            if self.device is not None:
                kwargs.setdefault("device", self.device)
            out = attr(*args, **kwargs)
            if self._memory_limit and _nbytes(out) > self._memory_limit:
                raise DeviceOutOfMemory(
                    f"out of device memory allocating {_nbytes(out)} bytes "
                    f"(the stand-in device holds {self._memory_limit})")
            return out

        return create

    def __repr__(self) -> str:
        return f"Placed({self.__name__}, device={self.device!r}, dtype={self.compute_dtype})"


def _nbytes(array: Any) -> int:
    size = 1
    for n in getattr(array, "shape", ()):
        size *= int(n)
    return size * np.dtype(str(array.dtype).rsplit(".", 1)[-1]).itemsize


def get_namespace(name: str = "numpy", device: Any = None, dtype: str = "float64",
                  memory_limit: int = 0) -> Any:
    """The array namespace called ``name``, wrapped to the array API standard; placed
    on ``device`` and/or computing in ``dtype`` when those are not the defaults."""
    xp = _module(name)
    if device is None and dtype == "float64" and not memory_limit:
        return xp
    return Placed(xp, device, dtype, memory_limit)


def standin() -> str | None:
    """The namespace standing in for a GPU (``$SLUICE_GPU_STANDIN``), or None."""
    name = os.environ.get(STANDIN_ENV, "").strip()
    if not name:
        return None
    if name != "array_api_strict":
        raise ValueError(f"{STANDIN_ENV}={name}: only array_api_strict can stand in for a GPU")
    return name


def gpu_namespace(dtype: str = "float64") -> Any:
    """The namespace of the ``gpu`` device: CuPy on the current CUDA device, or the
    stand-in on its non-default device."""
    if standin():
        strict = _module("array_api_strict")
        limit = int(os.environ.get(STANDIN_MEMORY_ENV) or 0)
        return get_namespace("array_api_strict", strict.Device("device1"), dtype, limit)
    return get_namespace("cupy", None, dtype)


def in_float64(xp: Any) -> Any:
    """``xp`` computing in float64 (on the same device): what an operator that computes
    exactly whatever the step's dtype (``float32 = False``) runs its kernels on."""
    if compute_dtype(xp) == np.float64:
        return xp
    return Placed(xp._xp, xp.device, "float64", xp._memory_limit)


def compute_dtype(xp: Any) -> np.dtype:
    """The dtype partitions are computed in on ``xp`` (float64 unless placed otherwise)."""
    return np.dtype(getattr(xp, "compute_dtype", "float64"))


def is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def is_cupy(xp: Any) -> bool:
    return getattr(xp, "__name__", "").endswith("cupy")


def is_device_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CuPy's allocator, cuBLAS,
    cuSOLVER, the CUDA runtime, or the stand-in)."""
    if isinstance(exc, DeviceOutOfMemory):
        return True
    name = type(exc).__name__
    text = str(exc)
    return (name == "OutOfMemoryError" and "cupy" in type(exc).__module__) or any(
        marker in text for marker in ("cudaErrorMemoryAllocation", "CUBLAS_STATUS_ALLOC_FAILED",
                                      "CUSOLVER_STATUS_ALLOC_FAILED", "out of memory"))


# --------------------------------------------------------------------------- transfers

_ledger = threading.local()


@contextlib.contextmanager
def transfers() -> Iterator[list[tuple[str, tuple[int, ...], int]]]:
    """Record this thread's host/device moves: ``(direction, shape, bytes)`` with
    direction ``h2d`` or ``d2h``. Moves within the host are not recorded."""
    previous = getattr(_ledger, "log", None)
    log: list[tuple[str, tuple[int, ...], int]] = []
    _ledger.log = log
    try:
        yield log
    finally:
        _ledger.log = previous


def _note(direction: str, array: Any) -> None:
    log = getattr(_ledger, "log", None)
    if log is not None:
        log.append((direction, tuple(int(n) for n in array.shape), _nbytes(array)))


def host_buffer(shape: tuple[int, ...], xp: Any, order: str = "F",
                dtype: Any = None) -> np.ndarray:
    """An uninitialised host array to fill and send to ``xp`` in one copy: of the
    namespace's compute dtype, page-locked (pinned) when it goes to a CUDA device and
    is big enough for that to pay."""
    dtype = np.dtype(dtype) if dtype is not None else compute_dtype(xp)
    size = int(np.prod(shape)) * dtype.itemsize
    if is_cupy(xp) and size >= PINNED_MIN_BYTES:
        import cupyx

        return cupyx.empty_pinned(shape, dtype=dtype, order=order)
    return np.empty(shape, dtype=dtype, order=order)


def is_text(t: pa.DataType) -> bool:
    """Whether values of type ``t`` are text: string, large string or string view (a
    dictionary's values: ask of its ``value_type``)."""
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def plain(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array, dictionaries decoded (keys and values compare as values)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


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


def table_to_matrix(part: pa.Table, columns: list[str], xp: Any, dtype: Any = None) -> Any:
    """Columns of ``part`` as one (rows, len(columns)) array of ``xp``, in its compute
    dtype (or ``dtype``: float64 where values must stay exact). The matrix is filled on
    the host and moved to ``xp``'s device in one copy."""
    host = host_buffer((part.num_rows, len(columns)), xp, dtype=dtype)
    for j, name in enumerate(columns):
        host[:, j] = column_to_numpy(part.column(name))
    return to_xp(host, xp)


def to_xp(array: np.ndarray, xp: Any) -> Any:
    """A NumPy array as an array of ``xp`` (one host-to-device copy on a device)."""
    if is_numpy(xp):
        return array
    _note("h2d", array)
    out = xp.asarray(array)
    if is_cupy(xp) and array.nbytes >= PINNED_MIN_BYTES:
        # the copy from a pinned buffer is asynchronous: the buffer goes back to
        # CuPy's pool when the caller drops it, so the copy must be done by then
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    return out


def segment_sums(xp: Any, keys: Any, values: Any, length: int) -> np.ndarray:
    """``out[key] += values[row]`` for keys in ``[0, length)`` (per column of a 2-D
    ``values``), on the host as float64. The array API has no bincount, so: sort by key,
    cumulative sums, read at each key's boundaries (searchsorted); integer values stay
    exact."""
    order = xp.argsort(keys)
    sorted_keys = xp.take(keys, order)
    values = xp.take(values, order, axis=0)
    edges = xp.searchsorted(sorted_keys, xp.arange(length + 1, dtype=sorted_keys.dtype))
    running = xp.cumulative_sum(values, axis=0, include_initial=True)
    at = xp.take(running, edges, axis=0)
    return to_numpy(at[1:, ...] - at[:-1, ...]).astype(np.float64)


def to_numpy(array: Any) -> np.ndarray:
    """Any namespace's array back on the host as NumPy."""
    if isinstance(array, np.ndarray):
        return array
    xp = array_namespace(array)
    name = getattr(xp, "__name__", "")
    if name.startswith("array_api_compat.numpy") or name == "numpy":
        return np.asarray(array)
    _note("d2h", array)
    if hasattr(array, "get"):  # CuPy
        return array.get()
    if name == "array_api_strict":
        return np.asarray(array.to_device(xp.Device("CPU_DEVICE")))
    return np.asarray(array)
