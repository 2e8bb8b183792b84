"""Run a benchmark case side by side with its reference and print the ratio.

Each side runs in a fresh subprocess (``python -m bench.worker``) so that its wall
time and its peak memory (the child's max RSS) are its own. Every side runs
``--repeat`` times; the median time and the largest peak are reported.

    python -m bench io_copy --rows 2000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cases import CASES

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "generated" / "bench"
RESULTS = ROOT / "bench" / "results"


def run_side(case: str, side: str, data: Path, scratch: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one side in a fresh process."""
    stats = scratch / f".{case}-{side}.rss"
    cmd = [sys.executable, "-m", "bench.worker", case, side, str(data), str(scratch),
           str(stats)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "CI": "1"}, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bench: {case}/{side} failed with exit code {result.returncode}")
    return seconds, int(stats.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args(argv)
    case = CASES[args.case]
    data = DATA / f"{case.dataset}-{args.rows}-{args.files}"
    if not data.exists():
        case.generate(data, args.rows, args.files)
    scratch = DATA / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    if case.setup is not None:
        case.setup(data, scratch)
    results: dict[str, dict[str, float]] = {}
    for side in case.sides:
        times, peaks = [], []
        for _ in range(args.repeat):
            seconds, peak = run_side(args.case, side, data, scratch)
            times.append(seconds)
            peaks.append(peak)
        results[side] = {"seconds": statistics.median(times), "peak_rss_mb": max(peaks) / 2**20,
                         "runs": times}
        detail = scratch / f"{args.case}_{side}.json"  # accuracy, fit seconds, if a side wrote them
        if detail.exists():
            results[side]["detail"] = json.loads(detail.read_text())
    ours, ref = case.sides
    ratio = results[ours]["seconds"] / results[ref]["seconds"]
    mem_ratio = results[ours]["peak_rss_mb"] / results[ref]["peak_rss_mb"]
    print(f"{args.case}: {args.rows:,} rows, {args.files} files, median of {args.repeat}")
    for side in case.sides:
        r = results[side]
        print(f"  {side:<28} {r['seconds']:8.3f} s   peak RSS {r['peak_rss_mb']:8.1f} MiB")
    print(f"  time ratio {ours}/{ref} = {ratio:.2f}x   memory ratio = {mem_ratio:.2f}x")
    if case.check is not None:
        case.check(data, scratch)  # the sides' last outputs agree, or no results are kept
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "case": args.case, "rows": args.rows, "files": args.files, "repeat": args.repeat,
        "results": results, "time_ratio": ratio, "memory_ratio": mem_ratio,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (RESULTS / f"{args.case}.json").write_text(json.dumps(record, indent=1))
    return 0
