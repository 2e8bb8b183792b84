"""A union step (``operators.features.union``) on any engine: a source whose partitions
are its branches' (the input's, then each other step's, in order), each read through
its branch's own steps where their placements say and made to the union's columns.

No row moves and nothing is written: partition ``i`` of the union is a partition of one
branch, computed where the engine runs it, so the rows come in the input's order then
each step's, on every engine. A branch's steps count their rows in the run record as
when they are read for themselves (``StepsSource.read_recorded``: on every engine the
count of a partition is its own, so a branch that is also written elsewhere is counted
once).
"""

from __future__ import annotations

import time
from dataclasses import replace

import pyarrow as pa

from operators.base import PartitionInfo, SluiceError
from operators.features.union import Union
from pipelines.engines.base import Dataset, Record, StepsSource, compute_partition, located


class UnionSource(StepsSource):
    """The partitions of ``branches`` (as the engine listed them: ``listed``), one after
    another, each made to ``schema`` by the union step ``step``."""

    name = "union"

    def __init__(self, op: Union, step: str, names: list[str], branches: list[Dataset],
                 listed: list[list[PartitionInfo]], schema: pa.Schema):
        super().__init__()
        self.op, self.step, self.names = op, step, names
        self.branches = branches
        self._schema = schema
        # the union's partition i: (its branch, the branch's own partition)
        self._at = [(b, info) for b, infos in enumerate(listed) for info in infos]

    def schema(self) -> pa.Schema:
        return self._schema

    def datasets(self) -> list[Dataset]:
        return list(self.branches)

    def partitions(self) -> list[PartitionInfo]:
        return [replace(info, index=i) for i, (_, info) in enumerate(self._at)]

    def estimated_bytes(self) -> float | None:
        """The sum of each branch's estimate of its rows as the union makes them (in
        the union's types, with its columns): None where one cannot say."""
        total = 0.0
        for b, data in enumerate(self.branches):
            infos = [info for at, info in self._at if at == b]
            estimate = replace(data, schema=self._schema).estimated_bytes(infos)
            if estimate is None:
                return None
            total += estimate
        return total

    def read_recorded(self, partition: PartitionInfo, record: Record | None) -> pa.Table:
        b, info = self._at[partition.index]
        part = compute_partition(self.branches[b], info, record)
        t0 = time.perf_counter()
        try:
            out = self.op.conform(part, self._schema, self.names[b])
        except SluiceError as exc:
            raise located(self.step, partition, exc) from None
        except Exception as exc:
            raise located(self.step, partition, exc) from exc
        if record:
            record(self.step, partition.index, out.num_rows, time.perf_counter() - t0, None)
        return out
