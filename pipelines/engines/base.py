"""The engine contract: how a runtime schedules partitions, written once per engine.

A ``Dataset`` is a logical plan: a Source, its partitions, and the transforms
applied to each partition in order. Engines decide where partitions are read and
transformed (threads, Dask workers, Spark executors), how partials are combined
and what is cached; the driver loop that fits estimators (``Engine.fit``) and
every operator are the same on every engine.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from operators.base import (
    Counts,
    Estimator,
    FitClock,
    PartitionInfo,
    Sink,
    SluiceError,
    Source,
    Transform,
    WriteResult,
    add_counts,
    causes,
    drive,
    tree_reduce,
)
from pipelines.device import CPU, DeviceProfile, Placement, gpu_problem, run_placed
from pipelines.engines.progress import fit_label

__all__ = ["Dataset", "Engine", "StepFailure", "StepsSource", "compute_partition",
           "placed_action", "tree_reduce", "write_through", "StagedSink"]

# record(step, partition index, rows, seconds, device, rows_in, counts): what each step
# did on each partition (rows None: its time only, a write's); ``device`` says where it
# ran ("cpu", "gpu:0") and any out-of-memory split or CPU fallback (see
# ``pipelines.device.run_placed``), None for a source or a write; a transform's
# ``rows_in`` (its input's rows) and ``counts`` (what it counted:
# ``Transform.transform_counted``)
Record = Callable[..., None]


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
    ops: tuple[tuple[str, Transform, Placement], ...] = ()
    schema: pa.Schema | None = None
    cache_key: str | None = None
    # the cache of an ancestor (its key, and how many of ``ops`` its tables have had):
    # where a partition may start instead of the source (the steps after a multi-pass
    # fit, on the local engine and where Spark cached the fit's partitions)
    resume: tuple[str, int] | None = None

    def then(self, step_id: str, transform: Transform, schema: pa.Schema,
             placement: Placement = CPU) -> Dataset:
        resume = (self.cache_key, len(self.ops)) if self.cache_key is not None else self.resume
        return replace(self, ops=(*self.ops, (step_id, transform, placement)), schema=schema,
                       cache_key=None, resume=resume)

    def estimated_bytes(self, partitions: list[PartitionInfo]) -> float | None:
        """About how much memory the rows take, as the source estimates them, where that
        is an upper bound: they come from the source directly or through steps that keep
        some of its rows and columns as they are (a filter, a select), or add columns of
        a fixed width (a derive's numbers: their width times the rows of the source's
        ``partitions``, as the engine listed them); None where a step adds or changes a
        column of text or another variable width (a join's), or the source cannot say."""
        estimate = getattr(self.source, "estimated_bytes", None)
        if estimate is None or self.schema is None:
            return None
        total = estimate()
        if total is None:  # the source cannot say (a union of a branch that cannot)
            return None
        source = self.source.schema()
        added = 0  # bytes a row of the columns steps added or changed
        for column in self.schema:
            at = source.get_field_index(column.name)
            if at >= 0 and source.field(at).type == column.type:
                continue
            t = column.type
            if pa.types.is_dictionary(t) or pa.types.is_boolean(t):
                return None
            try:
                added += t.bit_width // 8
            except ValueError:  # text, nested: no width
                return None
        total = float(total)
        if added:
            rows = [p.rows for p in partitions]
            if None in rows:
                return None
            total += added * float(sum(rows))
        return total

    def uses_gpu(self, skip: int = 0) -> bool:
        """Whether a transform after the first ``skip`` runs on a GPU, or (none skipped)
        one of the steps its source reads through (a union's branches')."""
        if any(p.device == "gpu" for _, _, p in self.ops[skip:]):
            return True
        return (skip == 0 and isinstance(self.source, StepsSource)
                and any(d.uses_gpu() for d in self.source.datasets()))


class StepsSource(Source):
    """A source whose rows other steps of the run make (a union's: its branches'
    partitions, each read through its own steps): ``compute_partition`` reads it with the
    run's ``record``, so that those steps' rows are counted on every engine as when they
    are read for themselves."""

    @abstractmethod
    def datasets(self) -> list[Dataset]:
        """The datasets whose partitions this source's are."""

    @abstractmethod
    def read_recorded(self, partition: PartitionInfo, record: Record | None) -> pa.Table:
        """The rows of ``partition``, telling ``record`` (when given) each step's rows as
        ``compute_partition`` does, this source's own step's too; a failure is located
        at the step that failed (``located``)."""

    def read(self, partition: PartitionInfo) -> pa.Table:
        return self.read_recorded(partition, None)

    def is_local(self) -> bool:
        return all(d.source.is_local() for d in self.datasets())


@dataclass
class StepStats:
    rows_by_partition: dict[int, int] = field(default_factory=dict)
    # a transform's input rows, and what it counted, by partition (a partition computed
    # twice, for two steps that read it, counts once)
    rows_in_by_partition: dict[int, int] = field(default_factory=dict)
    counts_by_partition: dict[int, Counts] = field(default_factory=dict)
    # the task time of its partitions, all of it (a partition computed twice: twice)
    seconds: float = 0.0
    # a fit's time in the driver: init, update, the combine of the partials
    driver_seconds: float = 0.0
    devices: set[str] = field(default_factory=set)
    splits: dict[int, int] = field(default_factory=dict)
    fallbacks: dict[int, str] = field(default_factory=dict)
    # how the engine ran the step, for the run record (a Spark fit: ``fit_mode``)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_partition.values())

    def counts(self) -> Counts | None:
        """What the step counted, every partition's added (None: nothing)."""
        total = None
        for index in sorted(self.counts_by_partition):
            total = add_counts(total, self.counts_by_partition[index])
        return total

    def describe(self) -> dict[str, Any]:
        """The run record's view: its partitions (and a transform's rows in), where the
        step ran, and what ran out of device memory."""
        out: dict[str, Any] = dict(self.notes)
        if self.rows_by_partition:
            out["partitions"] = len(self.rows_by_partition)
        if self.rows_in_by_partition:
            out["rows_in"] = sum(self.rows_in_by_partition.values())
        if self.devices:
            out["device"] = ", ".join(sorted(self.devices))
        if self.splits:
            out["device_splits"] = [{"partition": i, "pieces": n}
                                    for i, n in sorted(self.splits.items())]
        if self.fallbacks:
            out["device_fallbacks"] = [{"partition": i, "device": "cpu", "reason": r}
                                       for i, r in sorted(self.fallbacks.items())]
        return out


def contiguous_groups(infos: list[PartitionInfo], rows: list[int], tasks: int) -> list[list[int]]:
    """Consecutive partitions in ``tasks`` groups of about equal rows (fewer when some
    partitions are large)."""
    total = sum(rows)
    groups: list[list[int]] = []
    last, done = -1, 0
    for position, (info, n) in enumerate(zip(infos, rows)):
        # the task whose share of the rows holds this partition's middle row
        task = (min(tasks - 1, int((done + n / 2) * tasks / total)) if total
                else position * tasks // len(infos))
        if task != last:
            groups.append([])
            last = task
        groups[-1].append(info.index)
        done += n
    return groups


def estimated_bytes(schema: pa.Schema | None, infos: list[PartitionInfo],
                    unknown_rows: int = 0) -> float:
    """Bytes of the rows of ``infos`` in Arrow memory, from row counts and the schema
    (32 bytes a variable-width value; ``unknown_rows`` for a partition of no count)."""
    width = 0
    for column in schema or []:
        try:
            width += max(1, column.type.bit_width // 8)
        except ValueError:  # variable width: strings, lists...
            width += 32
    return float(sum(unknown_rows if i.rows is None else i.rows for i in infos) * max(1, width))


def format_bytes(n: float) -> str:
    """``n`` bytes for a person: 512 B, 3.2 MiB, 1.50 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def located(step: str, partition: PartitionInfo, exc: BaseException) -> BaseException:
    """Name the step and partition in a failure; user errors stay one-liners."""
    where = f"step '{step}', {partition.describe()}"
    if isinstance(exc, SluiceError):
        return exc.located(where)
    if isinstance(exc, StepFailure):
        return exc
    return StepFailure(step, partition.describe(), exc)


def unreachable(addresses: list[tuple[str, int]], timeout: float,
                greeting: bool = False, waiting: Callable[[str], None] | None = None
                ) -> str | None:
    """Why none of ``addresses`` takes a connection within ``timeout`` seconds (tried
    again every second: a server may be starting), or None when one does. With
    ``greeting``, the server must also speak first (a Dask scheduler sends its
    handshake at once; a web server, say the dashboard's port, waits for a request).
    ``waiting``: told why, once, when the first try fails and there is time to try again
    (a person at a terminal then knows what the run waits for)."""
    deadline = time.monotonic() + timeout
    while addresses:
        problems = []
        for host, port in addresses:
            left = max(0.1, min(5.0, deadline - time.monotonic()))
            try:
                with socket.create_connection((host, port), timeout=left) as sock:
                    if not greeting:
                        return None
                    try:
                        if sock.recv(1):
                            return None
                        problems.append(f"{host}:{port} closed the connection at once")
                    except TimeoutError:
                        problems.append(f"{host}:{port} takes connections but says nothing "
                                        f"in {left:g} s")
                    except OSError as exc:
                        problems.append(f"{host}:{port}: {exc.strerror or exc}")
            except OSError as exc:
                problems.append(f"{host}:{port}: {exc.strerror or exc}")
        if time.monotonic() >= deadline:
            return "; ".join(problems)
        if waiting is not None:
            waiting("; ".join(problems))
            waiting = None
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    return None


def waiting_line(what: str, timeout: float, setting: str) -> Callable[[str], None]:
    """A ``waiting`` for ``unreachable`` that prints one line to stderr: what the run
    waits for, why, for how long and where that is set."""
    def say(why: str) -> None:
        print(f"waiting for {what} ({why}): trying again for up to {timeout:g} s "
              f"({setting})", file=sys.stderr, flush=True)

    return say


_interrupt_hooks: list[Callable[[], None]] = []


@contextlib.contextmanager
def interrupt_hook(hook: Callable[[], None]) -> Iterator[None]:
    """While the block runs, ``hook`` is called (in a thread of its own) when the run is
    interrupted by a signal (``on_interrupt``): what the main thread cannot do while a
    library holds it, such as cancelling the Spark job it waits for."""
    _interrupt_hooks.append(hook)
    try:
        yield
    finally:
        _interrupt_hooks.remove(hook)


def on_interrupt() -> None:
    """Start every interrupt hook registered now, each in a daemon thread (a signal
    handler must not block, nor re-enter a library the main thread is inside)."""
    for hook in list(_interrupt_hooks):
        threading.Thread(target=hook, name="sluice-interrupt", daemon=True).start()


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or a signal sluice raises as one) behind ``exc``:
    a library that meets the interrupt in a ``finally`` may raise its own error instead
    (pyspark's job result, a closed connection), whose context is then the interrupt."""
    return next((e for e in causes(exc) if isinstance(e, KeyboardInterrupt)), None)


@contextlib.contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
    """Worker processes started in the block never see SIGINT: Ctrl-C at a terminal
    reaches the whole process group, and it is the driver that stops the run and closes
    its workers; a KeyboardInterrupt traceback from each worker would bury the driver's
    one line.

    The block runs with SIGINT blocked in this thread, and threads started in it inherit
    that: processes they start keep it blocked (the mask survives exec, and Python never
    unblocks it), held and never delivered. A Ctrl-C meanwhile (a LocalCluster takes
    seconds to start) is not lost: another thread takes it and the block notes it, or it
    waits, pending, for the block's end; either way it reaches the handler the block
    found once the block is done (so what the block started is in place to be closed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: ignored, and a Ctrl-C is lost
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        return
    # multiprocessing's resource tracker unblocks SIGINT in the thread that starts it
    # (the first process started): started now, before the block, it changes no mask
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    caught: list[int] = []
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if signal.SIGINT not in blocked:  # a pending Ctrl-C arrives now, to ``previous``
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if caught and callable(previous):
        previous(signal.SIGINT, None)
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


@dataclass(frozen=True)
class Raised:
    """A partition's failure, kept until its turn comes: engines give partitions back
    in partition order and stop submitting at the first failure, so of several failing
    partitions the lowest is reported, whichever finished first (the same error on
    every run and every engine)."""

    error: BaseException

    @staticmethod
    def settle(get: Callable[[], Any]) -> Any:
        """``get()``, or its exception as a ``Raised``."""
        try:
            return get()
        except Exception as exc:
            return Raised(exc)

    @staticmethod
    def unwrap(value: Any) -> Any:
        """``value``, or its error raised."""
        if isinstance(value, Raised):
            raise value.error
        return value


def _concat_counted(a: tuple[pa.Table, Counts | None],
                    b: tuple[pa.Table, Counts | None]) -> tuple[pa.Table, Counts | None]:
    return pa.concat_tables([a[0], b[0]]), add_counts(a[1], b[1])


def _started(placement: Placement) -> float:
    """The clock of a partition's work, started once its array namespace is at hand: the
    namespace's first import in a process (NumPy's f2py under array_api_compat, tenths of
    a second; CuPy's, seconds) is no step's work, though its first partition pays it."""
    placement.namespace()
    return time.perf_counter()


def _placed(step: str, placement: Placement, fn: Callable[[pa.Table, Any], Any],
            part: pa.Table, index: int, merge: Callable[[Any, Any], Any],
            record: Record | None, rows: Callable[[Any], int]) -> Any:
    t0 = _started(placement)
    value, event = run_placed(placement, fn, part, merge)
    if record:
        record(step, index, rows(value), time.perf_counter() - t0,
               _where(placement, event))
    return value


def _where(placement: Placement, event: dict[str, Any] | None) -> dict[str, Any]:
    """Where a partition's work ran, for ``record``: the placement's device, or the CPU
    it fell back to, and any out-of-memory split."""
    return {"device": "cpu" if event and "fallback" in event else placement.describe(),
            **(event or {})}


def _transformed(step: str, placement: Placement, op: Transform, part: pa.Table,
                 index: int, record: Record | None) -> pa.Table:
    """A transform step on one partition, where ``placement`` says, recorded with its
    rows in and out and what it counted."""
    t0 = _started(placement)
    (table, counts), event = run_placed(placement, op.transform_counted, part,
                                        _concat_counted)
    if record:
        record(step, index, table.num_rows, time.perf_counter() - t0,
               _where(placement, event), part.num_rows, counts)
    return table


def compute_partition(data: Dataset, partition: PartitionInfo,
                      record: Record | None = None,
                      start: pa.Table | None = None, skip: int = 0) -> pa.Table:
    """Read one partition and apply the dataset's transforms, each where its placement
    says; failures are located.

    ``start``/``skip`` resume from a cached table that already has ``skip`` ops applied.
    ``record(step, partition_index, rows, seconds, device)`` receives per-step counts
    (a ``StepsSource``'s: of the steps it reads through, with their own partitions).
    """
    step = data.source_step
    if start is None and isinstance(data.source, StepsSource):
        # its steps count their rows and locate their own failures
        start = data.source.read_recorded(partition, record)
    try:
        if start is None:
            data.source.ready()
        t0 = time.perf_counter()
        if start is None:
            part = data.source.read(partition)
            if record:
                record(step, partition.index, part.num_rows, time.perf_counter() - t0, None)
        else:
            part = start
        for step, op, placement in data.ops[skip:]:
            part = _transformed(step, placement, op, part, partition.index, record)
        return part
    except (SluiceError, StepFailure) as exc:
        raise located(step, partition, exc) from None
    except Exception as exc:
        raise located(step, partition, exc) from exc


@dataclass(frozen=True)
class placed_action:  # noqa: N801 - used like a function
    """``partial(part, xp)`` of a fit step on one partition, where ``placement`` says,
    recorded like a transform (rows in, seconds, device). Picklable for workers."""

    step: str
    placement: Placement
    partial: Callable[[pa.Table, Any], Any]
    combine: Callable[[Any, Any], Any]

    def __call__(self, part: pa.Table, info: PartitionInfo, record: Record | None) -> Any:
        return _placed(self.step, self.placement, self.partial, part, info.index,
                       self.combine, record, lambda _: part.num_rows)


@dataclass(frozen=True)
class recorded_write:  # noqa: N801 - used like a function
    """A write's ``sink.write`` of one partition (``token``: the write's), its time
    recorded as the step's work; not its rows, which the sink counts (a shuffle step's
    first stage writes its partial rows, and the step's rows are those of its second).
    Picklable for workers."""

    step: str
    sink: Any
    token: Any

    def __call__(self, part: pa.Table, info: PartitionInfo, record: Record | None) -> Any:
        t0 = time.perf_counter()
        result = self.sink.write(self.token, part, info.index)
        if record:
            record(self.step, info.index, None, time.perf_counter() - t0, None)
        return result


def write_through(sink: Sink, run_id: str, schema: pa.Schema,
                  write_all: Callable[[Any], list[WriteResult]]) -> dict[str, Any]:
    """The sink protocol of every engine: begin, write every partition
    (``write_all(token)``, the engine's part), commit; abort on any failure."""
    token = sink.begin(run_id, schema)
    try:
        results = write_all(token)
    except BaseException:
        sink.abort(token)
        raise
    return sink.commit(token, results)


class StagedSink:
    """A write step's sink whose commit waits for ``publish``: the engine writes its rows
    and stages them as for any sink (``write_through``), and the run publishes every
    output once all its steps have run, so that a run failing after a write publishes
    none (``discard``). Picklable: the workers call ``write`` only."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.token: Any = None
        self.results: list[WriteResult] = []

    def begin(self, run_id: str, schema: pa.Schema) -> Any:
        return self.sink.begin(run_id, schema)

    def write(self, token: Any, part: pa.Table, index: int) -> WriteResult:
        return self.sink.write(token, part, index)

    def commit(self, token: Any, results: list[WriteResult]) -> dict[str, Any]:
        """Kept for ``publish``; the rows written, for now."""
        self.token, self.results = token, results
        return {"rows": sum(r.rows for r in results)}

    def abort(self, token: Any) -> None:
        self.sink.abort(token)

    def publish(self) -> dict[str, Any]:
        """Commit the staged output (the sink's run-record entry)."""
        token, self.token = self.token, None
        return self.sink.commit(token, self.results)

    def discard(self) -> None:
        """Abort the staged output, if it is still staged."""
        token, self.token = self.token, None
        if token is not None:
            self.sink.abort(token)


class Engine(ABC):
    """What an engine provides to the runner. Partials and results are picklable."""

    name: str = ""

    def __init__(self, progress: bool = False, profile: DeviceProfile | None = None):
        self.progress = progress
        # the engine's profile (``conf/engines/*.yaml``); the runner reads its device keys
        # (device, dtype, gpu_timeout), the engine the rest
        self.profile = profile or DeviceProfile()
        self.stats: dict[str, StepStats] = {}

    def record(self, step: str, partition: int, rows: int, seconds: float,
               device: dict[str, Any] | None = None, rows_in: int | None = None,
               counts: Counts | None = None) -> None:
        stats = self.stats.setdefault(step, StepStats())
        if rows is not None:
            stats.rows_by_partition[partition] = rows
        stats.seconds += seconds
        if rows_in is not None:
            stats.rows_in_by_partition[partition] = rows_in
        if counts is not None:
            stats.counts_by_partition[partition] = counts
        if device is not None:
            stats.devices.add(device["device"])
            if "split" in device:
                stats.splits[partition] = device["split"]
            if "fallback" in device:
                stats.fallbacks[partition] = device["reason"]

    def driver_time(self, step: str, seconds: float) -> None:
        """Count ``seconds`` of the step's work done in the driver (a fit's update, the
        combine of its partials)."""
        self.stats.setdefault(step, StepStats()).driver_seconds += seconds

    def reduce(self, step: str, values: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
        """``tree_reduce`` of the partitions' partials on the driver, its time the step's
        driver time."""
        t0 = time.perf_counter()
        try:
            return tree_reduce(values, combine)
        finally:
            self.driver_time(step, time.perf_counter() - t0)

    def record_all(self, rows: list[tuple[Any, ...]]) -> None:
        """``record`` each of the rows a worker sent back."""
        for row in rows:
            self.record(*row)

    def gpu_problem(self, wait: bool = True) -> str | None:
        """Why the engine's workers cannot compute on a GPU, or None when they can
        (asked before any data moves). ``wait``: give GPU workers that may still be
        joining a cluster time (the profile's ``gpu_timeout``); without it, answer from
        what is there now. The local engine asks this machine."""
        return gpu_problem()

    # lifecycle
    def start(self) -> None:  # noqa: B027 - engines without a cluster start nothing
        """Start or attach to the cluster."""

    def close(self) -> None:  # noqa: B027
        """Stop what ``start`` started."""

    def worker_hosts(self) -> set[str]:
        """The hosts the engine's workers run on, as they name themselves (empty: this
        process's machine, or not known)."""
        return set()

    def describe(self) -> dict[str, Any]:
        """What the run record says about the engine (cluster address, cores...)."""
        return {"name": self.name}

    def begin_run(self) -> None:
        """Forget the previous run's counters and caches (an engine can serve many runs)."""
        self.stats = {}

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # data
    def partitions(self, data: Dataset) -> list[PartitionInfo]:
        """The partitions of the dataset's source (engines remember them per run); a
        source that cannot list them (a broken footer) fails as its step, whichever step
        pulls its rows."""
        try:
            return data.source.partitions()
        except SluiceError as exc:
            raise exc.located(f"step '{data.source_step}'") from None

    def remembered_partitions(self, memo: dict[int, tuple[Source, list[PartitionInfo]]],
                              data: Dataset) -> list[PartitionInfo]:
        """``partitions``, remembered in ``memo`` (an engine's, cleared as a run begins)
        by the source object, which the memo holds: an id alone could be a source freed
        earlier in the run (a shuffle's buckets) whose id a new source took, and its
        partitions would be read in the new one's place."""
        held = memo.get(id(data.source))
        if held is None or held[0] is not data.source:
            held = memo[id(data.source)] = (data.source, Engine.partitions(self, data))
        return held[1]

    def read(self, source: Source, step_id: str, schema: pa.Schema) -> Dataset:
        return Dataset(source=source, source_step=step_id, schema=schema)

    def map(self, data: Dataset, step_id: str, transform: Transform,
            schema: pa.Schema, placement: Placement = CPU) -> Dataset:
        return data.then(step_id, transform, schema, placement)

    @abstractmethod
    def aggregate(self, data: Dataset, step_id: str, partial: Callable[[pa.Table, Any], Any],
                  combine: Callable[[Any, Any], Any], label: str = "",
                  placement: Placement = CPU) -> Any:
        """``partial(part, xp)`` on every partition (where ``placement`` says), combined
        into one value."""

    def fit(self, data: Dataset, step_id: str, estimator: Estimator,
            placement: Placement = CPU) -> tuple[Any, int, Dataset]:
        """Fit ``estimator`` on ``data``: the driver loop (``operators.base.drive``), one
        ``aggregate`` per pass over the (persisted, when there are several) partitions.

        Returns the final state, the number of passes and the dataset the passes read.
        """
        if estimator.multi_pass:
            data = self.persist(data)
        clock = FitClock(estimator)

        def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
            return self.aggregate(data, step_id, partial, estimator.combine,
                                  label=fit_label(step_id, clock), placement=placement)

        try:
            state, rounds = drive(estimator, data.schema, aggregate, clock)
        finally:
            self.driver_time(step_id, clock.driver_seconds)
        return state, rounds, data

    @abstractmethod
    def persist(self, data: Dataset) -> Dataset:
        """Keep the dataset's partitions for several passes (multi-pass fits)."""

    def release(self, data: Dataset) -> None:  # noqa: B027 - engines that keep nothing
        """Forget what ``persist`` kept of ``data`` (a tune candidate's rows, done with),
        before the run ends, so that the next candidate's rows have the room."""

    @abstractmethod
    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        """Write every partition through the sink and commit, or abort on failure."""

    @abstractmethod
    def collect(self, data: Dataset) -> pa.Table:
        """The whole dataset as one table, in partition order (tests, small results)."""
