"""Named points where a test kills the process outright, as a machine's failure or an
OOM killer would: ``SLUICE_TEST_KILL_AT=<point>`` makes the process SIGKILL itself when it
reaches that point (no ``finally`` runs, no lock is released but by the kernel), so that
a test can kill a run precisely between two of its writes. Unset, a point costs one
comparison. The points:

* ``before-write``: a run has recorded the claim of its incremental reads, nothing written;
* ``after-parts``: a write_parquet's data files are written, its ``_SUCCESS`` is not;
* ``after-model``: a save_model's model.json is written, its aliases not yet moved;
* ``after-write``: every output of the run is published, its incremental reads not
  recorded;
* ``after-state``: an incremental read's files are recorded, its claim not yet removed;
* ``in-record``: a run's final record is in its staging file, not yet renamed over the
  running record (a local runs folder).
"""

from __future__ import annotations

import os
import signal

KILL_AT = os.environ.get("SLUICE_TEST_KILL_AT") or None
POINTS = ("before-write", "after-parts", "after-model", "after-write", "after-state",
          "in-record")

if KILL_AT is not None and KILL_AT not in POINTS:
    raise SystemExit(f"SLUICE_TEST_KILL_AT={KILL_AT} names no crash point; the points are "
                     f"{', '.join(POINTS)}")


def crash_point(point: str) -> None:
    """SIGKILL this process here when ``SLUICE_TEST_KILL_AT`` names ``point``."""
    if point == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
