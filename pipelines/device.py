"""Where numeric kernels run: ``cpu``, ``gpu`` (CuPy) or ``auto``, decided before any data
moves, with a reason when a GPU cannot be used."""

from __future__ import annotations

import importlib

from operators.base import SluiceError

DEVICES = ("cpu", "gpu", "auto")


def gpu_problem() -> str | None:
    """Why no GPU can be used here, or None when CuPy sees at least one device.

    CUDA itself honours ``CUDA_VISIBLE_DEVICES``.
    """
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


def resolve(requested: str) -> tuple[str, str | None]:
    """The device to use for ``requested`` and a one-line notice when auto falls back."""
    if requested not in DEVICES:
        raise SluiceError(f"unknown device '{requested}'", hint="use cpu, gpu or auto")
    if requested == "cpu":
        return "cpu", None
    problem = gpu_problem()
    if problem is None:
        return "gpu", None
    if requested == "gpu":
        raise SluiceError(f"device gpu was asked for, but {problem}",
                          hint="use --device cpu or auto, or run where a GPU is visible")
    return "cpu", f"device auto: {problem}; running on the CPU"
