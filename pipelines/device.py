"""Where numeric kernels run: ``cpu``, ``gpu`` (CuPy) or ``auto``, and in which dtype.

Decided before any data moves, with a reason when a GPU cannot be used. On the
workers, :func:`run_placed` runs one step on one partition where its
:class:`Placement` says; a partition that does not fit in device memory is split
and retried, then computed on the CPU, and the run record says so.

Precedence for a step: the step's ``device:`` > ``sluice run --device`` > the
pipeline's ``device:`` > the engine profile's ``device:`` > ``cpu``; ``dtype:`` the
same way (``--dtype``), default ``float64``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from operators.arrays import get_namespace as _namespace
from operators.arrays import gpu_namespace, is_device_oom, standin
from operators.base import SluiceError

DEVICES = ("cpu", "gpu", "auto")
# a partition that does not fit on the device is halved this many times at most
# (pieces of 1/16) before it is computed on the CPU
MAX_SPLITS = 4


class DeviceProfile(BaseModel):
    """Profile keys every engine profile (``conf/engines/*.yaml``) understands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["local", "dask", "spark"] | None = Field(
        None, description="which engine this profile configures (a profile named other "
                          "than local, dask or spark must say)")
    device: Literal["cpu", "gpu", "auto"] | None = Field(
        None, description="default device of the steps (the pipeline and --device win)")
    dtype: Literal["float64", "float32"] | None = Field(
        None, description="compute dtype of numeric kernels (the pipeline and --dtype win)")
    gpu_timeout: float = Field(
        60, gt=0, description="seconds to wait for a worker with a GPU before failing")
    scratch: str | None = Field(
        None, description="folder (or URL) where shuffle steps (aggregate) leave partial "
                          "rows during a run; every worker must see it (--scratch and "
                          "$SLUICE_SCRATCH win; default: this machine's temporary folder)")


def gpu_problem() -> str | None:
    """Why no GPU can be used here, or None when CuPy sees at least one device.

    CUDA itself honours ``CUDA_VISIBLE_DEVICES``.
    """
    if standin():
        return None
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return "CuPy is not installed (pip install 'sluice[gpu]')"
    except Exception as exc:  # a broken CUDA install fails at import in many ways
        return f"CuPy cannot load: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        return f"no usable CUDA driver ({text})"
    if count < 1:
        return "CUDA finds no GPU (check CUDA_VISIBLE_DEVICES)"
    return None


def resolve(requested: str, problem: Callable[[], str | None] = gpu_problem,
            where: str = "") -> tuple[str, str | None]:
    """The device to use for ``requested`` and a one-line notice when auto falls back.

    ``problem`` says why no GPU can be used (the engine's workers may be asked);
    ``where`` names who asked (a step), for the messages.
    """
    if requested not in DEVICES:
        raise SluiceError(f"unknown device '{requested}'", hint="use cpu, gpu or auto")
    if requested == "cpu":
        return "cpu", None
    reason = problem()
    if reason is None:
        return "gpu", None
    if requested == "gpu":
        if where:
            raise SluiceError(f"{where} asks for device gpu, but {reason}",
                              hint="make it `device: auto` to fall back to the CPU, or run "
                                   "where a GPU is visible")
        raise SluiceError(f"device gpu was asked for, but {reason}",
                          hint="use --device cpu or auto, or run where a GPU is visible")
    return "cpu", f"device auto: {reason}; running on the CPU"


@dataclass(frozen=True)
class Placement:
    """Where one step's kernels run and in which dtype (picklable: travels to workers)."""

    device: str = "cpu"
    dtype: str = "float64"

    def namespace(self) -> Any:
        if self.device == "gpu":
            return gpu_namespace(self.dtype)
        return _namespace("numpy", dtype=self.dtype)

    def cpu(self) -> Placement:
        return Placement("cpu", self.dtype)

    def describe(self) -> str:
        if self.device == "cpu":
            return "cpu"
        return f"gpu:{current_gpu()}"


CPU = Placement()


# --------------------------------------------------------------------------- GPU choice

_selected = threading.local()


def current_gpu() -> str:
    """The address of the GPU this thread computes on (``select_gpu``'s, else CUDA's
    current device; ``standin`` for the stand-in)."""
    address = getattr(_selected, "address", None)
    if address is not None:
        return address
    if standin():
        return "standin"
    import cupy

    return str(cupy.cuda.Device().id)


@contextlib.contextmanager
def select_gpu(address: str | None) -> Iterator[None]:
    """Compute on the GPU ``address`` (a CUDA ordinal, as Spark's resource addresses
    and ``CUDA_VISIBLE_DEVICES`` count them) in this thread; None keeps the current."""
    if address is None:
        yield
        return
    previous = getattr(_selected, "address", None)
    _selected.address = address
    try:
        if standin():
            yield
        else:
            import cupy

            with cupy.cuda.Device(int(address)):
                yield
    finally:
        _selected.address = previous


# --------------------------------------------------------------------------- running


def _free_device_memory() -> None:
    if standin():
        return
    with contextlib.suppress(Exception):
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()


def _halves(part: pa.Table) -> tuple[pa.Table, pa.Table]:
    middle = part.num_rows // 2
    return part.slice(0, middle), part.slice(middle)


def run_placed(placement: Placement, fn: Callable[[pa.Table, Any], Any], part: pa.Table,
               merge: Callable[[Any, Any], Any]) -> tuple[Any, dict[str, Any] | None]:
    """``fn(part, xp)`` where ``placement`` says; the value and, when the device ran out
    of memory, what was done about it (``{"split": pieces}`` or ``{"fallback": "cpu",
    "reason": ...}``) for the run record.

    Out of device memory: the partition is halved and each half retried (``merge``
    joins the results: concatenation for a transform, the estimator's ``combine`` for
    a partial), down to pieces of 1/2**MAX_SPLITS; if that still fails the partition
    runs on the CPU.
    """
    if placement.device == "cpu":
        return fn(part, placement.namespace()), None
    xp = placement.namespace()
    try:
        return fn(part, xp), None
    except Exception as exc:
        if not is_device_oom(exc):
            raise
        first = exc
    _free_device_memory()
    pieces = [0]

    def attempt(piece: pa.Table, depth: int) -> Any:
        try:
            if depth:
                value = fn(piece, xp)
                pieces[0] += 1
                return value
        except Exception as exc:
            if not is_device_oom(exc) or depth >= MAX_SPLITS or piece.num_rows < 2:
                raise
            _free_device_memory()
        a, b = _halves(piece)
        return merge(attempt(a, depth + 1), attempt(b, depth + 1))

    try:
        return attempt(part, 0), {"split": pieces[0]}
    except Exception as exc:
        if not is_device_oom(exc):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(first).__name__
    _free_device_memory()
    cpu = placement.cpu()
    return fn(part, cpu.namespace()), {
        "fallback": "cpu",
        "reason": f"out of device memory in pieces of 1/{2 ** MAX_SPLITS}: {reason}"}
