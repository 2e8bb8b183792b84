"""Run a pipeline through the `sluice run` CLI, optionally pausing at a commit step.

Used by test_parquet_write.py, which SIGKILLs this process at chosen moments:

    python kill_writer.py PIPELINE.yaml

``KILL_WRITER_PAUSE`` (only here, never in the library) names a point at which the
writer prints ``PAUSED <point>`` on stdout and sleeps, so the test can kill it there:

* ``staged``: every partition is written into the staging directory, no manifest yet;
* ``publishing``: the manifest is written, the rename has not happened;
* ``exchanged``: the new output is in place, the old one not yet deleted (overwrite);
* ``moved``: an append's files are moved into the output, its manifest not yet replaced.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import operators.io.parquet as parquet
from pipelines.cli import main

PAUSE = os.environ.get("KILL_WRITER_PAUSE", "")


def pause(point: str) -> None:
    print(f"PAUSED {point}", flush=True)
    time.sleep(120)


def hook() -> None:
    if PAUSE == "staged":
        commit = parquet.WriteParquet.commit

        def paused_commit(self: Any, token: Any, results: Any) -> Any:
            pause("staged")
            return commit(self, token, results)

        parquet.WriteParquet.commit = paused_commit  # type: ignore[method-assign]
    elif PAUSE == "publishing":
        rename = parquet.rename_noreplace

        def paused_rename(src: str, dst: str) -> None:
            pause("publishing")  # the manifest is written; the rename is next
            rename(src, dst)

        parquet.rename_noreplace = paused_rename
    elif PAUSE == "exchanged":
        exchange = parquet.exchange

        def paused_exchange(src: str, dst: str) -> bool:
            swapped = exchange(src, dst)
            pause("exchanged")
            return swapped

        parquet.exchange = paused_exchange
    elif PAUSE == "moved":
        replace = parquet._replace_manifest

        def paused_replace(directory: str, manifest: Any, durable: bool) -> None:
            pause("moved")
            replace(directory, manifest, durable)

        parquet._replace_manifest = paused_replace
    elif PAUSE:
        raise SystemExit(f"unknown KILL_WRITER_PAUSE '{PAUSE}'")


if __name__ == "__main__":
    hook()
    main(["run", *sys.argv[1:]])
