"""Cases for read_parquet and write_parquet."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from operators.testing.kit import case, scratch_dir


def mixed_table(rows: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.array(rng.standard_normal(rows)),
        "n": pa.array(rng.integers(0, 5, rows).astype(np.int32),
                      mask=rng.random(rows) < 0.1),
        "g": pa.array(np.array(["a", "b", "c"])[rng.integers(0, 3, rows)]),
    })


def _parquet_dir() -> str:
    folder = scratch_dir()
    table = mixed_table()
    for i, piece in enumerate((table.slice(0, 120), table.slice(120))):
        sub = os.path.join(folder, f"g2={'p' if i else 'q'}")
        os.makedirs(sub)
        pq.write_table(piece, os.path.join(sub, f"f{i}.parquet"), row_group_size=25)
    return folder



def _read_case() -> None:
    folder = _parquet_dir()
    case("read_parquet", {"path": folder, "filter": "x > -1 and g != 'c'", "partition_mb": 1},
         mixed_table, id="hive-filter")
    case("read_parquet", {"path": folder, "columns": ["id", "g2"],
                          "schema": {"id": "float64"}}, mixed_table, id="columns-schema")
    case("write_parquet", {"path": os.path.join(scratch_dir(), "out")}, mixed_table)
    case("write_parquet", {"path": os.path.join(scratch_dir(), "out"), "partition_by": ["g"],
                           "mode": "overwrite"}, mixed_table, id="partitioned")
    case("write_parquet", {"path": os.path.join(scratch_dir(), "out"), "mode": "append"},
         mixed_table, id="append")
    case("write_parquet", {"path": os.path.join(scratch_dir(), "out"), "partition_by": ["g"],
                           "mode": "overwrite_partitions"}, mixed_table,
         id="overwrite-partitions")


_read_case()
