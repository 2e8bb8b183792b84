"""Which process wrote a run record or holds a lock, and whether it is gone: a reader on
the same host can tell a dead writer at once, where another host waits for a heartbeat
or a lock's age."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from pathlib import Path
from typing import Any


def this_process() -> dict[str, Any]:
    """This process, as a run record or a lock's note names it: the host, the pid, and
    (Linux) when the process started and its pid namespace, so that a reader on the same
    host can tell it from another process that took its pid, or from one in another
    container."""
    start, _ = process_state(os.getpid())
    found: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if start is not None:
        found["pid_start"] = start
    with contextlib.suppress(OSError):
        found["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    return found


def process_state(pid: int) -> tuple[int | None, str | None]:
    """A process's start (clock ticks after boot) and state letter (Z: a zombie), as
    Linux's /proc says; (None, None) where it cannot say (gone, or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = stat[stat.rfind(")") + 2:].split()  # after the command, which may hold spaces
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None, None


def process_gone(record: dict[str, Any]) -> bool | None:
    """Whether the process a record (or a lock's note: ``this_process``) names is gone
    from this host (its pid unused, a zombie, or another process's now); None where this
    host is not its own (another host, or another container of the same name: another
    pid namespace)."""
    pid = record.get("pid")
    # not POSIX: os.kill(pid, 0) would end the process (Windows), not look at it
    if os.name != "posix" or record.get("host") != socket.gethostname() \
            or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    here = this_process()
    if record.get("pid_namespace") != here.get("pid_namespace"):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: there
        pass
    except OSError:
        return None
    start, state = process_state(pid)
    if state == "Z":
        return True
    return start is not None and record.get("pid_start") not in (None, start)


def cache_budget() -> int:
    """The bytes a process may keep of partitions between a fit's passes: a quarter of
    the memory it may use (``usable_memory``), or ``SLUICE_CACHE_MB``. The local
    engine's cache of partitions has this budget, and what fits derive from cached
    partitions (``kept_with``) another."""
    if "SLUICE_CACHE_MB" in os.environ:
        return int(float(os.environ["SLUICE_CACHE_MB"]) * 1024 * 1024)
    return (usable_memory() or 8 * 1024**3) // 4


CGROUP_ROOT = "/sys/fs/cgroup"
"""Where Linux mounts the control groups (a container's limits)."""
CGROUP_OF_PROCESS = "/proc/self/cgroup"
"""Which control groups this process is in (a line a hierarchy: id, controllers, path)."""
WORKER_MEMORY_ENV = "SLUICE_WORKER_MEMORY"
"""The bytes an engine's worker process may use, where the engine says so in its
environment (the Dask engine: each worker's ``memory_limit``)."""


def usable_memory() -> int | None:
    """The bytes this process may use: physical memory, or less where a limit says so:
    its container's (the control group's memory limit, cgroup v2 or v1), an engine's
    worker's (``WORKER_MEMORY_ENV``: a Dask worker's ``memory_limit``), a PySpark
    worker's (``spark.executor.pyspark.memory`` over the executor's cores, which Spark
    hands it as ``PYSPARK_EXECUTOR_MEMORY_MB``). None where nothing says (not Linux)."""
    found = []
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not Linux
        found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    found += _cgroup_limits("memory", ("memory.max",), ("memory.limit_in_bytes",))
    for variable, unit in ((WORKER_MEMORY_ENV, 1), ("PYSPARK_EXECUTOR_MEMORY_MB", 1024**2)):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            found.append(int(value) * unit)
    return min(found) if found else None


def usable_cores() -> int:
    """The cores this process may run on: those its CPU affinity allows (a cpuset), or
    fewer where its container's CPU quota (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) gives fewer (rounded up); at least
    1. A container limited to 2 CPUs on a 64-core host computes 2 partitions at once,
    not 64."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quotas = _cgroup_limits("cpu", ("cpu.max",), ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
    return max(1, min([cores, *quotas]))


def _cgroup_limits(controller: str, v2: tuple[str, ...], v1: tuple[str, ...]) -> list[int]:
    """The limits of ``controller`` on this process's control group and those above it
    (each applies): for memory, bytes; for cpu, whole cores (the quota over its period,
    rounded up). Empty where none is set or Linux has no control groups here. Read once
    a process (``cache_budget`` is asked on every kept entry: ~0.2 ms of file reads)."""
    return list(_cgroup_limits_at(CGROUP_ROOT, CGROUP_OF_PROCESS, controller, v2, v1))


@functools.lru_cache(maxsize=16)
def _cgroup_limits_at(root: str, of_process: str, controller: str, v2: tuple[str, ...],
                      v1: tuple[str, ...]) -> tuple[int, ...]:
    """``_cgroup_limits`` under the mount ``root``, for the groups ``of_process`` names."""
    try:
        lines = Path(of_process).read_text().splitlines()
    except OSError:
        return ()
    found: list[int] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2, the unified hierarchy
            base, files = Path(root), v2
        elif controller in controllers.split(","):
            base, files = Path(root) / controllers, v1
        else:
            continue
        # the group's folder and those above it; inside a container's own namespace
        # the path is "/" and the container's limit is at the root of the mount
        folder = base / path.strip("/")
        for at in (folder, *folder.parents):
            if len(at.parts) < len(base.parts):
                break
            limit = _cgroup_limit(at, files, controller)
            if limit is not None:
                found.append(limit)
    return tuple(found)


def _cgroup_limit(folder: Path, files: tuple[str, ...], controller: str) -> int | None:
    """One control group's limit (``_cgroup_limits``), or None (none set, or no file)."""
    try:
        texts = [(folder / name).read_text().split() for name in files]
    except OSError:
        return None
    try:
        if controller == "memory":
            value = texts[0][0]
            # v1 says "no limit" with a number near 2^63
            return None if value == "max" or int(value) >= 1 << 60 else int(value)
        quota, period = texts[0] if len(texts) == 1 else (texts[0][0], texts[1][0])
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return -(-int(quota) // int(period))
    except (IndexError, ValueError):
        return None

