"""The engine contract: how a runtime schedules partitions, written once per engine.

A ``Dataset`` is a logical plan: a Source, its partitions, and the transforms
applied to each partition in order. Engines decide where partitions are read and
transformed (threads, Dask workers, Spark executors), how partials are combined
and what is cached; the driver loop that fits estimators (``runner.fit``) and
every operator are the same on every engine.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from operators.arrays import get_namespace
from operators.base import PartitionInfo, Sink, SluiceError, Source, Transform, tree_reduce

__all__ = ["Dataset", "Engine", "StepFailure", "compute_partition", "tree_reduce"]


class StepFailure(Exception):
    """An unexpected error (a bug, not a user mistake) inside a step on a partition."""

    def __init__(self, step: str, where: str, error: BaseException):
        super().__init__(f"step '{step}', {where}: {type(error).__name__}: {error}")
        self.step, self.where, self.error = step, where, error

    def __reduce__(self) -> tuple[Any, ...]:
        # crosses process boundaries (Dask, Spark) with its parts intact
        return (type(self), (self.step, self.where, self.error))


@dataclass(frozen=True)
class Dataset:
    """A source, the steps applied to each partition, and where a cache may live."""

    source: Source
    source_step: str
    ops: tuple[tuple[str, Transform], ...] = ()
    schema: pa.Schema | None = None
    cache_key: str | None = None

    def then(self, step_id: str, transform: Transform, schema: pa.Schema) -> Dataset:
        return replace(self, ops=(*self.ops, (step_id, transform)), schema=schema,
                       cache_key=None)


@dataclass
class StepStats:
    rows_by_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(self.rows_by_partition.values())


def located(step: str, partition: PartitionInfo, exc: BaseException) -> BaseException:
    """Name the step and partition in a failure; user errors stay one-liners."""
    where = f"step '{step}', {partition.describe()}"
    if isinstance(exc, SluiceError):
        return exc.located(where)
    if isinstance(exc, StepFailure):
        return exc
    return StepFailure(step, partition.describe(), exc)


def compute_partition(data: Dataset, partition: PartitionInfo, xp: Any,
                      record: Callable[[str, int, int, float], None] | None = None,
                      start: pa.Table | None = None, skip: int = 0) -> pa.Table:
    """Read one partition and apply the dataset's transforms; failures are located.

    ``start``/``skip`` resume from a cached table that already has ``skip`` ops applied.
    ``record(step, partition_index, rows, seconds)`` receives per-step counts.
    """
    step = data.source_step
    try:
        t0 = time.perf_counter()
        if start is None:
            part = data.source.read(partition)
            if record:
                record(step, partition.index, part.num_rows, time.perf_counter() - t0)
        else:
            part = start
        for step, op in data.ops[skip:]:
            t0 = time.perf_counter()
            part = op.transform(part, xp)
            if record:
                record(step, partition.index, part.num_rows, time.perf_counter() - t0)
        return part
    except (SluiceError, StepFailure) as exc:
        raise located(step, partition, exc) from None
    except Exception as exc:
        raise located(step, partition, exc) from exc


class Engine(ABC):
    """What an engine provides to the runner. Partials and results are picklable."""

    name: str = ""

    def __init__(self, device: str = "cpu", progress: bool = False):
        self.device = device
        self.progress = progress
        self.stats: dict[str, StepStats] = {}

    @property
    def xp_name(self) -> str:
        return "cupy" if self.device == "gpu" else "numpy"

    def xp(self) -> Any:
        return get_namespace(self.xp_name)

    def record(self, step: str, partition: int, rows: int, seconds: float) -> None:
        stats = self.stats.setdefault(step, StepStats())
        stats.rows_by_partition[partition] = rows
        stats.seconds += seconds

    # lifecycle
    def start(self) -> None:  # noqa: B027 - engines without a cluster start nothing
        """Start or attach to the cluster."""

    def close(self) -> None:  # noqa: B027
        """Stop what ``start`` started."""

    def describe(self) -> dict[str, Any]:
        """What the run record says about the engine (cluster address, cores...)."""
        return {"name": self.name, "device": self.device}

    def begin_run(self) -> None:
        """Forget the previous run's counters and caches (an engine can serve many runs)."""
        self.stats = {}

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # data
    def read(self, source: Source, step_id: str, schema: pa.Schema) -> Dataset:
        return Dataset(source=source, source_step=step_id, schema=schema)

    def map(self, data: Dataset, step_id: str, transform: Transform,
            schema: pa.Schema) -> Dataset:
        return data.then(step_id, transform, schema)

    @abstractmethod
    def aggregate(self, data: Dataset, step_id: str, partial: Callable[[pa.Table, Any], Any],
                  combine: Callable[[Any, Any], Any], label: str = "") -> Any:
        """``partial(part, xp)`` on every partition, combined into one value."""

    @abstractmethod
    def persist(self, data: Dataset) -> Dataset:
        """Keep the dataset's partitions for several passes (multi-pass fits)."""

    @abstractmethod
    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        """Write every partition through the sink and commit, or abort on failure."""

    @abstractmethod
    def collect(self, data: Dataset) -> pa.Table:
        """The whole dataset as one table, in partition order (tests, small results)."""
