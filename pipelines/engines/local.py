"""The embedded default: partitions (Parquet row groups) on a thread pool sized to the cores.

At most ``2 x workers`` partitions are in flight, so memory is bounded by the
partition size, not the dataset's. Arrow and NumPy release the GIL in most of their
kernels, which is where a partition spends its time.

A multi-pass fit on the CPU can run resident instead (``resident_fits``; auto: with 4
workers or more and ``resident_rows`` rows; ``pipelines/engines/resident.py``):
``workers`` processes (forkserver; auto: unless their partitions are estimated over
the cache budget, ``SLUICE_CACHE_MB``) each compute
their share of the partitions once, keep them (and what the fit derives from them,
within a share of that budget), and answer every pass the driver
sends over a connection on 127.0.0.1. The kernels release the GIL (the tree
histograms too: a sparse product), but a pass's Python code between them does not,
and its share of the threads' time grows with their number; processes share nothing.
The partials combine in partition order, so the model is the threads' one, bit for bit.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

import pyarrow as pa
from threadpoolctl import threadpool_limits

from operators.base import (
    Estimator,
    FitClock,
    PartitionInfo,
    Sink,
    SluiceError,
    WriteResult,
)
from operators.processes import cache_budget, usable_cores
from pipelines.device import CPU, Placement
from pipelines.engines import resident
from pipelines.engines.base import (
    Dataset,
    Engine,
    Raised,
    StepFailure,
    StepStats,
    compute_partition,
    contiguous_groups,
    estimated_bytes,
    format_bytes,
    located,
    placed_action,
    recorded_write,
    workers_ignore_ctrl_c,
    write_through,
)
from pipelines.engines.progress import progress_bar
from pipelines.profiles import load_local

# auto resident fits start at this many workers: on 2 cores a boosting fit of 1M rows
# (30 trees) takes 4.8 s in 2 threads and 6.0 s in 2 processes (the passes' transfers);
# the GIL's share of the threads' time grows with their number
AUTO_WORKERS = 4


_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(workers: int) -> int | None:
    """At most ``workers`` glibc malloc arenas for this process (glibc's default is 8 a
    core), unless ``MALLOC_ARENA_MAX`` says otherwise; the limit set, or None (not
    glibc, or the user's setting). Each thread that meets a busy arena gets its own,
    and NumPy's temporaries freed in one are not reused by another: a boosting fit of
    1M rows on 2 threads peaked at 840 MiB and took 5.3 s with the default, 771 MiB and
    4.5 s with 2 arenas (a forest: 642 against 545 MiB, and faster)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    arenas = max(2, workers)
    return arenas if mallopt(_M_ARENA_MAX, arenas) == 1 else None


class LocalEngine(Engine):
    """Threads over partitions on this machine; no cluster."""

    name = "local"

    def __init__(self, workers: int | None = None, cache_bytes: int | None = None,
                 profile: str | None = None, **kwargs: Any):
        conf = load_local(profile)
        super().__init__(profile=conf, **kwargs)
        self.workers = workers or conf.workers or usable_cores()
        self.cache_bytes = cache_budget() if cache_bytes is None else cache_bytes
        self._pool: ThreadPoolExecutor | None = None
        self._caches: dict[str, dict[int, pa.Table]] = {}
        self._cache_full: set[str] = set()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._partitions: dict[int, tuple[Any, list[PartitionInfo]]] = {}

    def start(self) -> None:
        if self._pool is None:
            limit_malloc_arenas(self.workers)
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sluice")
            # partitions already run in parallel: BLAS threads inside each would
            # oversubscribe the cores (small matmuls slow down many times over)
            cores = usable_cores()
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

    def record(self, *row: Any) -> None:
        with self._lock:
            super().record(*row)

    def partitions(self, data: Dataset) -> list[PartitionInfo]:
        return self.remembered_partitions(self._partitions, data)

    # ------------------------------------------------------------------ running

    def _compute(self, data: Dataset, info: PartitionInfo) -> pa.Table:
        if data.cache_key is None:
            return compute_partition(data, info, self.record, *self._resumed(data, info))
        cache = self._caches.setdefault(data.cache_key, {})
        table = cache.get(info.index)
        if table is not None:
            return table
        table = compute_partition(data, info, self.record, *self._resumed(data, info))
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

    def _resumed(self, data: Dataset, info: PartitionInfo) -> tuple[pa.Table | None, int]:
        """The partition as an ancestor's cache holds it (a multi-pass fit's input, for
        the steps after the fit: no second read of the source, the steps before the fit
        not run again, and the very table the fit saw, whose memos hold), and how many
        of the dataset's steps it has had; (None, 0) where none holds it."""
        if data.resume is None:
            return None, 0
        key, done = data.resume
        table = self._caches.get(key, {}).get(info.index)
        return (table, done) if table is not None else (None, 0)

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
        failed = False  # once a partition failed, nothing more is submitted
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
                    while (not failed and nxt < len(infos)
                           and len(pending) + len(done) < limit):
                        pending[nxt] = self._pool.submit(job, infos[nxt])
                        nxt += 1
                    finished, _ = wait(pending.values(), return_when=FIRST_COMPLETED)
                    for i in [i for i, f in pending.items() if f in finished]:
                        done[i] = Raised.settle(pending.pop(i).result)
                        failed = failed or isinstance(done[i], Raised)
                        bar.advance(infos[i].rows or 0)
                    while emitted in done:  # a failure is raised in its turn
                        yield infos[emitted], Raised.unwrap(done.pop(emitted))
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
        return self.reduce(step_id, partials, combine)

    def fit(self, data: Dataset, step_id: str, estimator: Estimator,
            placement: Placement = CPU) -> tuple[Any, int, Dataset]:
        """A multi-pass CPU fit of at least ``resident_rows`` rows runs in worker
        processes that keep their partitions; otherwise (or when a process is lost, the
        fit starting again) on the threads."""
        infos = self.partitions(data)
        rows = [i.rows or 0 for i in infos]
        processes = min(self.workers, len(infos))
        mode = self.profile.resident_fits
        if (not estimator.multi_pass or mode == "never" or placement.device == "gpu"
                or processes < 2 or (mode == "auto" and (
                    self.workers < AUTO_WORKERS or sum(rows) < self.profile.resident_rows))):
            return super().fit(data, step_id, estimator, placement)
        notes = self.stats.setdefault(step_id, StepStats()).notes
        held = estimated_bytes(data.schema, infos)
        if mode == "auto" and held > self.cache_bytes:
            # the processes would hold every partition; the threads keep what fits in
            # the cache and compute the rest again each pass
            notes["fit_mode"] = (f"threads (the partitions, about {format_bytes(held)}, are "
                                 f"over the {format_bytes(self.cache_bytes)} worker "
                                 "processes may hold: SLUICE_CACHE_MB)")
            return super().fit(data, step_id, estimator, placement)
        groups = contiguous_groups(infos, rows, processes)
        notes["fit_mode"] = f"resident, {len(groups)} processes"
        try:
            state, rounds = self._resident_fit(data, step_id, estimator, placement, infos,
                                               groups)
        except (ConnectionError, _Lost) as exc:
            notes["fit_mode"] = f"threads (the resident fit failed: {exc})"
            return super().fit(data, step_id, estimator, placement)
        return state, rounds, data

    def _resident_fit(self, data: Dataset, step_id: str, estimator: Estimator,
                      placement: Placement, infos: list[PartitionInfo],
                      groups: list[list[int]]) -> tuple[Any, int]:
        import multiprocessing
        import secrets

        import cloudpickle

        by_index = {i.index: i for i in infos}
        hub = resident.Hub("127.0.0.1", secrets.token_bytes(32))
        context = multiprocessing.get_context("forkserver")
        blas = max(1, usable_cores() // len(groups))
        processes: list[Any] = []

        def stop() -> None:
            """Tell the tasks to stop, then wait for their processes (killed if stuck)."""
            hub.close()
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
                    process.join()

        try:
            for rank, group in enumerate(groups):
                task = _LocalTask(data, [by_index[i] for i in group], step_id, hub.port,
                                  hub.secret, rank, os.getcwd(), blas,
                                  self.cache_bytes // len(groups))
                process = context.Process(target=_serve_local, args=(cloudpickle.dumps(task),),
                                          name=f"sluice-fit-{rank}", daemon=True)
                with workers_ignore_ctrl_c():  # and the forkserver, started by the first
                    process.start()
                processes.append(process)

            def check() -> None:
                for process in processes:
                    if process.exitcode is not None:
                        raise _Lost(f"worker process {process.name} exited with code "
                                    f"{process.exitcode} before it connected")

            hub.accept(len(groups), check)
            try:
                clock = FitClock(estimator)
                try:
                    return resident.fit(hub, estimator, data.schema, infos, step_id, placement,
                                        self.record_all, cloudpickle.Pickler, clock,
                                        self.progress)
                finally:
                    self.driver_time(step_id, clock.driver_seconds)
            except ConnectionError:
                stop()  # the others stop; then the lost one has its exit code
                lost = [p for p in processes if p.exitcode not in (None, 0)]
                if lost:
                    raise _Lost(f"worker process {lost[0].name} exited with code "
                                f"{lost[0].exitcode}") from None
                raise
        finally:
            stop()

    def persist(self, data: Dataset) -> Dataset:
        if data.cache_key is not None:
            return data
        key = uuid.uuid4().hex
        self._caches[key] = {}
        return replace(data, cache_key=key)

    def release(self, data: Dataset) -> None:
        with self._lock:
            cache = self._caches.pop(data.cache_key or "", None)
            self._cached_bytes -= sum(t.nbytes for t in (cache or {}).values())
            self._cache_full.discard(data.cache_key or "")

    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        def write_all(token: Any) -> list[WriteResult]:
            write = recorded_write(step_id, sink, token)
            return [r for _, r in self._each(
                data, step_id, lambda part, info: write(part, info, self.record),
                f"{step_id}: write")]

        return write_through(sink, run_id, data.schema, write_all)

    def collect(self, data: Dataset) -> pa.Table:
        parts = [t for _, t in self._each(data, "collect", lambda part, _: part, "collect")]
        return pa.concat_tables(parts) if parts else data.schema.empty_table()


class _Lost(Exception):
    """A worker process of a resident fit died."""


class _LocalTask:
    """What a worker process of a local resident fit runs (pickled once)."""

    def __init__(self, data: Dataset, infos: list[PartitionInfo], step: str, port: int,
                 secret: bytes, rank: int, cwd: str, blas: int, kept: int):
        self.data, self.infos, self.step = data, infos, step
        self.port, self.secret, self.rank, self.cwd, self.blas = port, secret, rank, cwd, blas
        self.kept = kept  # the bytes it may keep of what fits derive: a share of the budget


def _serve_local(blob: bytes) -> None:
    """A worker process of a local resident fit: compute, connect, answer every pass."""
    import pickle

    task: _LocalTask = pickle.loads(blob)
    os.chdir(task.cwd)
    # the processes share the budget of what fits keep (``cache_budget``), as threads do
    os.environ["SLUICE_CACHE_MB"] = repr(task.kept / 2**20)
    with threadpool_limits(task.blas, "blas"):
        resident.Task(task.data, task.infos, task.step, label="worker process").run(
            "127.0.0.1", task.port, task.secret, task.rank)
