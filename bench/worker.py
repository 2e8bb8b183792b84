"""One side of a benchmark case, run in its own process by the harness."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import cases


def main() -> None:
    case, side, data, scratch = sys.argv[1:5]
    Path(scratch).mkdir(parents=True, exist_ok=True)
    getattr(cases, f"{case}_{side}")(Path(data), Path(scratch))


if __name__ == "__main__":
    main()
