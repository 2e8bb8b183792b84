"""One side of a benchmark case, run in its own process by the harness."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import cases


def peak_rss_bytes() -> int:
    """This process's own high-water RSS (VmHWM). getrusage's maxrss would include the
    harness's peak, which a child inherits across fork and exec on Linux."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    case, side, data, scratch, stats = sys.argv[1:6]
    Path(scratch).mkdir(parents=True, exist_ok=True)
    getattr(cases, f"{case}_{side}")(Path(data), Path(scratch))
    Path(stats).write_text(str(peak_rss_bytes()))


if __name__ == "__main__":
    main()
