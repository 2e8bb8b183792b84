"""Benchmark cases: a dataset and two sides (sluice first, the reference second)."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.datagen import generate


@dataclass(frozen=True)
class Case:
    dataset: str
    sides: tuple[str, str]
    generate: Callable[[Path, int, int], None]


def _numeric(out: Path, rows: int, files: int) -> None:
    generate("numeric", rows, out, files=files, row_group_rows=250_000)


CASES: dict[str, Case] = {
    # read -> write_parquet through the local engine vs pyarrow's own read + write
    "io_copy": Case("numeric", ("sluice_local", "pyarrow_floor"), _numeric),
}


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def io_copy_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run

    out = fresh(scratch / "io_copy_sluice")
    pipeline = scratch / "io_copy.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        pipeline: io_copy
        steps:
          - op: read_parquet
            path: {data}
          - op: write_parquet
            path: {out}
        """))
    run(pipeline, runs_dir=str(scratch / "runs"))


def io_copy_pyarrow_floor(data: Path, scratch: Path) -> None:
    """The floor: a dataset scan written back out by pyarrow, file by file."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = fresh(scratch / "io_copy_pyarrow")
    out.mkdir()
    for i, fragment in enumerate(ds.dataset(data, format="parquet").get_fragments()):
        pq.write_table(fragment.to_table(), out / f"part-{i:05d}.parquet")
