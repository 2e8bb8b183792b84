"""Which process wrote a run record or holds a lock, and whether it is gone: a reader on
the same host can tell a dead writer at once, where another host waits for a heartbeat
or a lock's age."""

from __future__ import annotations

import contextlib
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
    physical memory, or ``SLUICE_CACHE_MB``. The local engine's cache of partitions has
    this budget, and what fits derive from cached partitions (``kept_with``) another."""
    if "SLUICE_CACHE_MB" in os.environ:
        return int(float(os.environ["SLUICE_CACHE_MB"]) * 1024 * 1024)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 1024**3
    return total // 4
