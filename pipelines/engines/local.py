"""The embedded default: partitions (Parquet row groups) on a thread pool sized to the cores.

At most ``2 x workers`` partitions are in flight, so memory is bounded by the
partition size, not the dataset's. Arrow and NumPy release the GIL in their
kernels, which is where a partition spends its time.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pyarrow as pa
from threadpoolctl import threadpool_limits

from operators.base import PartitionInfo, Sink, SluiceError, WriteResult, tree_reduce
from pipelines.device import CPU, Placement
from pipelines.engines.base import (
    Dataset,
    Engine,
    StepFailure,
    compute_partition,
    located,
    placed_action,
    write_through,
)
from pipelines.engines.progress import progress_bar
from pipelines.profiles import load_local


def default_cache_bytes() -> int:
    """A quarter of physical memory, or ``SLUICE_CACHE_MB``."""
    if "SLUICE_CACHE_MB" in os.environ:
        return int(os.environ["SLUICE_CACHE_MB"]) * 1024 * 1024
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 1024**3
    return total // 4


class LocalEngine(Engine):
    """Threads over partitions on this machine; no cluster."""

    name = "local"

    def __init__(self, workers: int | None = None, cache_bytes: int | None = None,
                 profile: str | None = None, **kwargs: Any):
        conf = load_local(profile)
        super().__init__(profile_device=conf, **kwargs)
        self.workers = workers or conf.workers or os.cpu_count() or 1
        self.cache_bytes = default_cache_bytes() if cache_bytes is None else cache_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._caches: dict[str, dict[int, pa.Table]] = {}
        self._cache_full: set[str] = set()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._partitions: dict[int, list[PartitionInfo]] = {}

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sluice")
            # partitions already run in parallel: BLAS threads inside each would
            # oversubscribe the cores (small matmuls slow down many times over)
            cores = os.cpu_count() or 1
            self._blas_limits = threadpool_limits(max(1, cores // self.workers), "blas")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._blas_limits.restore_original_limits()
        self._caches.clear()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "workers": self.workers}

    def begin_run(self) -> None:
        super().begin_run()
        self._caches.clear()
        self._cache_full.clear()
        self._cached_bytes = 0
        self._partitions.clear()

    def record(self, step: str, partition: int, rows: int, seconds: float,
               device: dict[str, Any] | None = None) -> None:
        with self._lock:
            super().record(step, partition, rows, seconds, device)

    def partitions(self, data: Dataset) -> list[PartitionInfo]:
        key = id(data.source)
        if key not in self._partitions:
            try:
                self._partitions[key] = data.source.partitions()
            except SluiceError as exc:
                raise exc.located(f"step '{data.source_step}'") from None
        return self._partitions[key]

    # ------------------------------------------------------------------ running

    def _compute(self, data: Dataset, info: PartitionInfo) -> pa.Table:
        if data.cache_key is None:
            return compute_partition(data, info, self.record)
        cache = self._caches.setdefault(data.cache_key, {})
        table = cache.get(info.index)
        if table is not None:
            return table
        table = compute_partition(data, info, self.record)
        with self._lock:
            if data.cache_key not in self._cache_full:
                if self._cached_bytes + table.nbytes <= self.cache_bytes:
                    cache[info.index] = table
                    self._cached_bytes += table.nbytes
                else:  # too big to keep: later passes recompute from the source
                    self._cache_full.add(data.cache_key)
                    self._cached_bytes -= sum(t.nbytes for t in cache.values())
                    cache.clear()
        return table

    def _each(self, data: Dataset, step: str, fn: Callable[[pa.Table, PartitionInfo], Any],
              label: str) -> Iterator[tuple[PartitionInfo, Any]]:
        """Run ``fn`` (the work of ``step``) on every computed partition; yields in
        partition order. A failure names the step and the partition."""
        self.start()
        assert self._pool is not None
        infos = self.partitions(data)
        limit = 2 * self.workers
        pending: dict[int, Future[Any]] = {}
        done: dict[int, Any] = {}
        nxt = emitted = 0
        progress = progress_bar(self.progress, label, len(infos))

        def job(info: PartitionInfo) -> Any:
            part = self._compute(data, info)
            try:
                return fn(part, info)
            except (SluiceError, StepFailure) as exc:
                raise located(step, info, exc) from None
            except Exception as exc:
                raise located(step, info, exc) from exc

        try:
            with progress as bar:
                while emitted < len(infos):
                    while nxt < len(infos) and len(pending) + len(done) < limit:
                        pending[nxt] = self._pool.submit(job, infos[nxt])
                        nxt += 1
                    finished, _ = wait(pending.values(), return_when=FIRST_COMPLETED)
                    for i in [i for i, f in pending.items() if f in finished]:
                        done[i] = pending.pop(i).result()
                        bar.advance(infos[i].rows or 0)
                    while emitted in done:
                        yield infos[emitted], done.pop(emitted)
                        emitted += 1
        finally:
            for f in pending.values():
                f.cancel()
            wait(pending.values())

    def aggregate(self, data: Dataset, step_id: str, partial: Callable[[pa.Table, Any], Any],
                  combine: Callable[[Any, Any], Any], label: str = "",
                  placement: Placement = CPU) -> Any:
        action = placed_action(step_id, placement, partial, combine)
        partials = [p for _, p in self._each(data, step_id,
                                             lambda part, info: action(part, info, self.record),
                                             label or f"{step_id}: fit")]
        return tree_reduce(partials, combine)

    def persist(self, data: Dataset) -> Dataset:
        if data.cache_key is not None:
            return data
        key = uuid.uuid4().hex
        self._caches[key] = {}
        return Dataset(data.source, data.source_step, data.ops, data.schema, key)

    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        def write_all(token: Any) -> list[WriteResult]:
            return [r for _, r in self._each(
                data, step_id, lambda part, info: sink.write(token, part, info.index),
                f"{step_id}: write")]

        return write_through(sink, run_id, data.schema, write_all)

    def collect(self, data: Dataset) -> pa.Table:
        parts = [t for _, t in self._each(data, "collect", lambda part, _: part, "collect")]
        return pa.concat_tables(parts) if parts else data.schema.empty_table()
