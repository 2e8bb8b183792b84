"""Spark: the partitions of a pipeline as Spark tasks, through ``DataFrame.mapInArrow``.

A job is a DataFrame of partition descriptors (``spark.range`` with one row per
Spark partition, each standing for a contiguous group of sluice partitions)
mapped with ``mapInArrow``: the function reads each of its partitions with the
Source (``source.read(info)``, the same reader as the local engine: manifests,
hive columns, filters, casts and types identical) and applies the dataset's
transforms (``compute_partition``); then, in the same Python worker,

* an aggregate (a fit's pass) runs the partial and emits one row per partition
  with the pickled partial; the driver combines them in partition order
  (``tree_reduce``), so the result does not depend on timing;
* a write runs ``sink.write`` and emits the ``WriteResult``; the driver commits
  once (``_SUCCESS`` manifest, atomic rename: Spark's own committer, with its
  ``_temporary`` folders, is not involved);
* a multi-pass fit runs resident where it can (``resident_fits``): one barrier job
  whose tasks compute their partitions once, keep them, and answer each pass the
  driver sends them over a direct connection (``pipelines/engines/resident.py``);
  the driver combines the partials in partition order, so the model is the same;
* otherwise a multi-pass fit runs one job a pass, reading a ``cache()``-d DataFrame
  of the prepared partitions, kept as Arrow IPC blobs (exact Arrow types, no
  conversion through Spark types), or re-reading a source on local disks;
* ``to_dataframe`` gives the typed DataFrame (the declared schema converted to
  Spark types) for Spark code downstream.

Per-step row counts come back in the result rows, and so does a user error
(``SluiceError``): it is not retried, and the driver raises the one of the lowest
partition, which the CLI prints as its one line. Any other exception fails the task
attempt so that Spark retries it (``spark.task.maxFailures``; a lost Python worker
or executor too); the last attempt returns it as a ``StepFailure`` carrying the
executor's traceback.

GPUs: a step placed on ``gpu`` computes on the GPU Spark assigned to its task
(``TaskContext.resources()["gpu"]``, from ``spark.task.resource.gpu.amount``), so
that tasks sharing an executor's GPUs use different ones; ``gpu_problem`` asks a
1-task job before any data moves (``conf/engines/spark-gpu.yaml``).

Session: ``local[*]`` by default; ``--master URL`` or ``conf/engines/spark.yaml``
(or ``$SLUICE_SPARK_PROFILE``) otherwise. Inside ``spark-submit`` the session
spark-submit configures is used, and its settings win over the profile's. For a
non-local master the engine ships sluice to the executors as the archive of
``pipelines/package.py``, so workers need only pyspark, numpy and pyarrow.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import pickle
import re
import secrets
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.arrays import standin
from operators.base import (
    Estimator,
    FitClock,
    PartitionInfo,
    Sink,
    SluiceError,
    WriteResult,
)
from pipelines.device import CPU, DeviceProfile, Placement, gpu_problem, select_gpu
from pipelines.engines import resident
from pipelines.engines.base import (
    Dataset,
    Engine,
    StepFailure,
    StepStats,
    compute_partition,
    contiguous_groups,
    estimated_bytes,
    format_bytes,
    interrupt_hook,
    interruption,
    located,
    placed_action,
    recorded_write,
    unreachable,
    waiting_line,
    write_through,
)
from pipelines.engines.progress import progress_bar
from pipelines.package import active_archive, cached_build, run_in_executor
from pipelines.profiles import read, validated

PROFILE_ENV = "SLUICE_SPARK_PROFILE"
PROFILE_PATH = Path("conf") / "engines" / "spark.yaml"
DEFAULT_MASTER = "local[*]"
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# how often the driver looks for a partition's failure while a job runs
FAIL_FAST_POLL_S = 0.1
# how long a resident fit's job may take to end once its tasks were told to stop
JOB_END_S = 30.0

# what sluice sets on a session it creates (the profile's `conf` and the constructor's
# win over these; inside spark-submit, spark-submit's settings win over all of them)
DEFAULT_CONF: dict[str, str] = {
    # batches from the JVM to Python (typed DataFrames consumed downstream): Spark's
    # 10,000 rows leave vectorised kernels a small batch each; partitions read by
    # sluice itself do not go through this at all
    "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
    "spark.sql.execution.arrow.maxBytesPerBatch": str(256 * 1024 * 1024),
    "spark.python.worker.reuse": "true",
}
# a local master runs everything on this machine: nothing needs to listen beyond it
LOCAL_CONF: dict[str, str] = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}

_BLOB, _RECORDS, _ERROR, _RESULT = 0, 1, 2, 3
_ROWS_SCHEMA = pa.schema([("partition", pa.int32()), ("kind", pa.int8()), ("data", pa.binary())])
_ROWS_DDL = "partition int, kind byte, data binary"
_BLOB_BYTES = 32 * 1024 * 1024  # cached partitions are cut in IPC blobs of at most this
_ERROR_MARK = re.compile(r"\[sluice-error:([A-Za-z0-9+/=]+)\]")
_PANDAS_WARNING = "PySpark does not yet fully support pandas"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)
# the confs that give Spark tasks a GPU (stage-level scheduling of the default profile)
EXECUTOR_GPU = "spark.executor.resource.gpu.amount"
TASK_GPU = "spark.task.resource.gpu.amount"
GPU_PROFILE = "conf/engines/spark-gpu.yaml"


class SparkProfile(DeviceProfile):
    """``conf/engines/spark.yaml``: how sluice makes its Spark session."""

    master: str | None = Field(None, description="master URL; --master wins; default local[*]")
    app_name: str = Field("sluice", description="application name shown by Spark")
    conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Spark confs (spark.* keys) for sessions sluice makes")
    log_level: str | None = Field("WARN", description="Spark log level (spark.log.level)")
    rows_per_task: int = Field(
        1_000_000, gt=0,
        description="consecutive small partitions share a Spark task up to this many rows")
    ship_code: Literal["auto", "always", "never"] = Field(
        "auto", description="ship sluice to executors as an archive (auto: non-local masters)")
    py_files: list[str] = Field(default_factory=list,
                                description="your own modules/packages for the executors")
    cache_fits: Literal["auto", "always", "never"] = Field(
        "auto", description="whether multi-pass fits cache their prepared input in Spark "
                            "(auto: unless the source is on local disks, which re-reading "
                            "beats: Spark's cache is slower to read than local Parquet)")
    resident_fits: Literal["auto", "always", "never"] = Field(
        "auto", description="run a multi-pass fit as one barrier job whose tasks keep their "
                            "partitions in memory and exchange partials directly, instead "
                            "of one job per pass (auto: when there is a slot for each task, "
                            "dynamic allocation is off and each task's share of the rows is "
                            "estimated under resident_task_bytes)")
    resident_port: int = Field(
        0, ge=0, le=65535,
        description="the driver's port the tasks of a resident fit connect to (0: any free "
                    "port; set one your cluster's network lets executors reach)")
    resident_task_bytes: int = Field(
        4 * 1024**3, gt=0,
        description="auto resident fits: the most bytes of prepared rows one task may hold "
                    "(estimated from row counts and the schema)")
    connect_timeout: float = Field(
        30, gt=0, description="seconds to reach a standalone master (spark://) before the "
                              "session starts; a master that never answers is an error "
                              "then, not Spark's minute of retries")


def load_profile(path: str | os.PathLike[str] | None = None) -> tuple[SparkProfile, str | None]:
    """The profile at ``path``, else ``$SLUICE_SPARK_PROFILE``, else ``conf/engines/spark.yaml``
    when the working directory has one, else the defaults."""
    chosen = path or os.environ.get(PROFILE_ENV)
    if chosen is None:
        if not PROFILE_PATH.is_file():
            return SparkProfile(), None
        chosen = PROFILE_PATH
    where = str(chosen)
    return validated(SparkProfile, read(where, "Spark"), where, "Spark"), where


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The (host, port) of each master of a standalone URL (``spark://h1:p1,h2:p2``, the
    port 7077 unless given); none for other masters."""
    if not master.startswith("spark://"):
        return []
    out = []
    for part in master[len("spark://"):].split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, "7077"
        out.append((host.strip("[]"), int(port) if port.isdigit() else 7077))
    return out


def unreachable_master(master: str, timeout: float, say: bool = False) -> str | None:
    """Why no master of a standalone URL takes a connection within ``timeout`` seconds,
    or None when one does or the master is not standalone; ``say``: a line on stderr
    while it tries again."""
    return unreachable(master_addresses(master), timeout, waiting=waiting_line(
        f"the Spark master {master}", timeout, f"connect_timeout in {PROFILE_PATH}")
        if say else None)


def is_local(master: str) -> bool:
    return master.startswith("local")


def task_attempts(master: str, conf: dict[str, str]) -> int:
    """How many attempts Spark gives a task: ``local[N, F]`` -> F, ``local[N]`` -> 1,
    a cluster -> ``spark.task.maxFailures``."""
    m = re.fullmatch(r"local\[\s*(?:\*|\d+)\s*,\s*(\d+)\s*\]", master)
    if m:
        return int(m.group(1))
    if master == "local" or master.startswith("local["):
        return 1
    return int(conf.get("spark.task.maxFailures", "4"))


# --------------------------------------------------------------------------- types


def spark_type(t: pa.DataType, column: str = "") -> Any:
    """The Spark type a column of Arrow type ``t`` becomes in a DataFrame."""
    from pyspark.sql import types as st

    if pa.types.is_dictionary(t):
        return spark_type(t.value_type, column)
    simple = [
        (pa.types.is_null, st.NullType), (pa.types.is_boolean, st.BooleanType),
        (pa.types.is_int8, st.ByteType), (pa.types.is_int16, st.ShortType),
        (pa.types.is_int32, st.IntegerType), (pa.types.is_int64, st.LongType),
        # unsigned: the next signed type that holds every value
        (pa.types.is_uint8, st.ShortType), (pa.types.is_uint16, st.IntegerType),
        (pa.types.is_uint32, st.LongType),
        (pa.types.is_float16, st.FloatType), (pa.types.is_float32, st.FloatType),
        (pa.types.is_float64, st.DoubleType),
        (pa.types.is_string, st.StringType), (pa.types.is_large_string, st.StringType),
        (pa.types.is_binary, st.BinaryType), (pa.types.is_large_binary, st.BinaryType),
        (pa.types.is_fixed_size_binary, st.BinaryType),
        (pa.types.is_date, st.DateType), (pa.types.is_duration, st.DayTimeIntervalType),
    ]
    for test, make in simple:
        if test(t):
            return make()
    if pa.types.is_uint64(t):
        return st.DecimalType(20, 0)
    if pa.types.is_string_view(t):
        return st.StringType()
    if pa.types.is_binary_view(t):
        return st.BinaryType()
    if pa.types.is_timestamp(t):
        return st.TimestampType() if t.tz else st.TimestampNTZType()
    if pa.types.is_decimal(t):
        if t.precision > 38:
            raise SluiceError(f"column '{column}' is {t}: Spark decimals hold 38 digits at most",
                              hint="cast it to float64 or a narrower decimal first")
        return st.DecimalType(t.precision, t.scale)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return st.ArrayType(spark_type(t.value_type, column), t.value_field.nullable)
    if pa.types.is_struct(t):
        return st.StructType([st.StructField(f.name, spark_type(f.type, f"{column}.{f.name}"),
                                             f.nullable) for f in t])
    if pa.types.is_map(t):
        return st.MapType(spark_type(t.key_type, column), spark_type(t.item_type, column),
                          t.item_field.nullable)
    raise SluiceError(f"column '{column}' is {t}, which Spark has no type for",
                      hint="cast or drop it before handing the data to Spark")


def spark_schema(schema: pa.Schema) -> Any:
    """An Arrow schema as a Spark ``StructType`` (list<double> -> array<double>...)."""
    from pyspark.sql import types as st

    return st.StructType([st.StructField(f.name, spark_type(f.type, f.name), f.nullable)
                          for f in schema])


def _cast_for_spark(table: pa.Table, target: pa.Schema) -> pa.Table:
    """The Arrow types Spark reads for ``target``; nanoseconds are truncated to Spark's
    microseconds, every other cast is exact or fails."""
    columns = []
    for column, field in zip(table.columns, target):
        have = column.type
        lossy = ((pa.types.is_timestamp(have) or pa.types.is_duration(have))
                 and have.unit == "ns")
        columns.append(column if have == field.type
                       else pc.cast(column, field.type, safe=not lossy))
    return pa.Table.from_arrays(columns, schema=target)


# --------------------------------------------------------------------------- executors


def _binary(values: list[pa.Buffer | bytes]) -> pa.Array:
    """A binary array over existing buffers (no copy of a large blob)."""
    buffers = [v if isinstance(v, pa.Buffer) else pa.py_buffer(v) for v in values]
    offsets = np.zeros(len(buffers) + 1, dtype=np.int32)
    np.cumsum([b.size for b in buffers], out=offsets[1:])
    data = buffers[0] if len(buffers) == 1 else pa.py_buffer(b"".join(b.to_pybytes()
                                                                      for b in buffers))
    return pa.Array.from_buffers(pa.binary(), len(buffers), [None, pa.py_buffer(offsets), data])


def _row(partition: int, kind: int, data: pa.Buffer | bytes) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([partition], pa.int32()), pa.array([kind], pa.int8()), _binary([data])],
        schema=_ROWS_SCHEMA)


def _ipc_blobs(table: pa.Table) -> Iterator[pa.Buffer]:
    """A table as IPC streams of at most ``_BLOB_BYTES`` each (one, if it is empty)."""
    per_row = max(1, table.nbytes // max(table.num_rows, 1))
    step = max(1, _BLOB_BYTES // per_row)
    start = 0
    while True:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(start, step))
        yield sink.getvalue()
        start += step
        if start >= table.num_rows:
            return


def _marked(failure: BaseException) -> str:
    """A failure's first line, and the failure itself for the driver to recover from the
    text of a failed Spark job."""
    payload = base64.b64encode(pickle.dumps(resident.portable(failure))).decode()
    first = str(failure).splitlines()[0] if str(failure) else repr(failure)
    return f"{first} [sluice-error:{payload}]"


class _Attempt(RuntimeError):
    """Fails a task attempt so that Spark runs it again; carries the failure along."""


@dataclass
class _Task:
    """What one Spark task runs, pickled into the ``mapInArrow`` function.

    ``kind``: ``results`` (``work`` on each partition, one result row each), ``cache``
    (the partitions as IPC blobs for ``cache()``), ``frame`` (typed record batches).
    The input rows are partition descriptors (``spark.range``: the task's number), or
    the rows of a cached DataFrame when ``cached``.
    """

    kind: str
    data: Dataset
    infos: dict[int, PartitionInfo]
    groups: list[list[int]]
    cached: bool
    step: str
    attempts: int
    nonce: str
    cwd: str = ""
    work: Callable[[pa.Table, PartitionInfo, Any], Any] | None = None
    frame_schema: pa.Schema | None = None
    batch_rows: int = 100_000
    # a ``results`` job's partitions, done or failed (``_Outcomes``), sent to the
    # driver as each task ends, so that the driver cancels the job at the first failure
    # instead of computing every other partition
    failures: Any = None
    # of ``cached`` rows: how many of the dataset's steps they have had (fewer: an
    # ancestor's cache, the rest applied here)
    done: int = 0

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        last = context is None or context.attemptNumber() + 1 >= self.attempts
        inputs = (self._cached_inputs(batches) if self.cached
                  else self._computed_inputs(batches, last))
        if self.cached and self.done < len(self.data.ops):
            inputs = self._resumed_inputs(inputs, last)
        emit = getattr(self, f"_emit_{self.kind}")
        # a GPU step computes on the GPU Spark gave this task (a local master gives
        # none: the current device); the run record names it
        address = task_gpu(context) if self._computes_on_gpu() else None
        with _placed_task(self.cwd, address):
            for info, table, records, failure in inputs:
                yield from emit(info, table, records, failure, last)
                if self.kind == "results" and self._failed:
                    break  # the job fails: this task's other partitions are wasted

    def _computes_on_gpu(self) -> bool:
        """Whether this task runs a transform (not already cached) or a fit's partial
        placed on a GPU."""
        work = self.work
        return (((not self.cached or self.done < len(self.data.ops))
                 and self.data.uses_gpu())
                or (isinstance(work, placed_action) and work.placement.device == "gpu"))

    def _retry(self, failure: BaseException, last: bool) -> None:
        """A bug may be transient (a lost file handle, memory): before the last attempt,
        fail the attempt so that Spark runs the task again."""
        if isinstance(failure, StepFailure) and not last:
            raise _Attempt(_marked(failure))

    # inputs: (info, table or None, per-step records, failure or None)

    def _computed_inputs(self, batches: Iterator[pa.RecordBatch], last: bool
                         ) -> Iterator[Any]:
        numbers = [int(v) for batch in batches for v in batch.column(0).to_pylist()]
        for number in numbers:  # this task's number: its group of partitions
            for index in self.groups[number]:
                yield self._computed(self.infos[index], last)

    def _computed(self, info: PartitionInfo, last: bool, start: pa.Table | None = None,
                  skip: int = 0) -> tuple[Any, ...]:
        """One partition through the dataset's steps (from ``start``, a table that had
        ``skip`` of them: ``compute_partition``), as an input: with its steps' counts,
        or its failure."""
        records: list[tuple[str, int, int, float]] = []
        try:
            table = compute_partition(self.data, info, lambda *r, out=records: out.append(r),
                                      start=start, skip=skip)
        except (SluiceError, StepFailure) as exc:
            self._retry(exc, last)
            return info, None, records, exc
        return info, table, records, None

    def _resumed_inputs(self, inputs: Iterator[Any], last: bool) -> Iterator[Any]:
        """An ancestor's cached partitions through the dataset's steps after it; the
        counts of those steps only (the cache's were recorded when it was built)."""
        for info, table, _, failure in inputs:
            yield ((info, None, [], failure) if failure is not None
                   else self._computed(info, last, table, self.done))

    def _cached_inputs(self, batches: Iterator[pa.RecordBatch]) -> Iterator[Any]:
        current: int | None = None
        blobs: list[pa.Buffer] = []
        records: list[Any] = []
        failure: BaseException | None = None

        def flush() -> Any:
            table = None
            if failure is None:
                table = pa.concat_tables([pa.ipc.open_stream(b).read_all() for b in blobs])
            return self.infos[current], table, records, failure

        for batch in batches:
            parts = batch.column(0).to_pylist()
            kinds = batch.column(1).to_pylist()
            data = batch.column(2)
            for i, (part, kind) in enumerate(zip(parts, kinds)):
                if part != current:
                    if current is not None:
                        yield flush()
                    current, blobs, records, failure = part, [], [], None
                if kind == _BLOB:
                    blobs.append(data[i].as_buffer())
                elif kind == _RECORDS:
                    records = pickle.loads(data[i].as_buffer())
                else:
                    failure = pickle.loads(data[i].as_buffer())
        if current is not None:
            yield flush()

    # outputs

    def _emit_results(self, info: PartitionInfo, table: pa.Table | None, records: list[Any],
                      failure: BaseException | None, last: bool
                      ) -> Iterator[pa.RecordBatch]:
        if failure is None:
            assert self.work is not None and table is not None
            try:
                value = self.work(table, info, lambda *r, out=records: out.append(r))
            except Exception as exc:
                failure = located(self.step, info, exc)
                self._retry(failure, last)
            else:
                if self.failures is not None:
                    self.failures.add((None, frozenset((info.index,))))
                yield _row(info.index, _RESULT, pickle.dumps((value, records)))
                return
        blob = pickle.dumps((resident.portable(failure), records))
        self._failed = True
        if self.failures is not None:
            self.failures.add(((info.index, blob), frozenset((info.index,))))
        yield _row(info.index, _ERROR, blob)

    _failed = False

    def _emit_cache(self, info: PartitionInfo, table: pa.Table | None, records: list[Any],
                    failure: BaseException | None, last: bool
                    ) -> Iterator[pa.RecordBatch]:
        if failure is not None:
            # an error row in the cache: the pass reading it reports the failure
            yield _row(info.index, _ERROR, pickle.dumps(resident.portable(failure)))
            return
        assert table is not None
        for blob in _ipc_blobs(table):
            yield _row(info.index, _BLOB, blob)
        yield _row(info.index, _RECORDS, pickle.dumps(records))

    def _emit_frame(self, info: PartitionInfo, table: pa.Table | None, records: list[Any],
                    failure: BaseException | None, last: bool
                    ) -> Iterator[pa.RecordBatch]:
        if failure is not None:
            raise _Attempt(_marked(failure))
        assert table is not None and self.frame_schema is not None
        yield from _cast_for_spark(table, self.frame_schema).to_batches(self.batch_rows)


@dataclass
class _ResidentTask:
    """One task of a resident fit (``pipelines/engines/resident.py``): compute the
    partitions of ``groups[rank]`` once, connect to the driver, answer its passes."""

    data: Dataset
    infos: dict[int, PartitionInfo]
    groups: list[list[int]]
    step: str
    placement: Placement
    host: str
    port: int
    secret: bytes
    cwd: str = ""

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        rank = context.partitionId()
        for _ in batches:  # the descriptor row: a task's number is its rank
            pass
        gpu = self.data.uses_gpu() or self.placement.device == "gpu"
        with _placed_task(self.cwd, task_gpu(context) if gpu else None):
            self._run(rank)
        yield _row(self.groups[rank][0], _RECORDS, pickle.dumps((None, [])))

    def _run(self, rank: int) -> None:
        def unreachable(exc: OSError) -> BaseException:
            return _Attempt(_marked(SluiceError(
                f"a task of the resident fit of step '{self.step}' cannot reach the driver "
                f"at {self.host}:{self.port} ({exc})",
                hint="let executors reach that port (resident_port in the Spark profile "
                     "picks it), or set resident_fits: never")))

        task = resident.Task(self.data, [self.infos[i] for i in self.groups[rank]], self.step)
        task.run(self.host, self.port, self.secret, rank, unreachable)


@contextlib.contextmanager
def _placed_task(cwd: str, gpu: str | None) -> Iterator[None]:
    """A task's surroundings: the driver's working directory, where an executor sees
    it (relative paths in a pipeline mean it, as on the local engine: local masters,
    NFS), and the GPU Spark gave the task (``gpu``: its address; None: none used)."""
    previous = os.getcwd()
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        with select_gpu(gpu):
            yield
    finally:
        os.chdir(previous)


def task_gpu(context: Any) -> str | None:
    """The address of the first GPU Spark assigned to the task of ``context``, or None
    (no task context, or a session that gives tasks no GPU: a local master)."""
    if context is None:
        return None
    gpu = context.resources().get("gpu")
    return gpu.addresses[0] if gpu is not None and gpu.addresses else None


@dataclass(frozen=True)
class _GpuProbe:
    """The function of a 1-task job: why this executor's Python worker cannot compute
    on the GPU Spark assigned to its task, or None (a result row)."""

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        for _ in batches:  # the one descriptor row
            pass
        address = task_gpu(TaskContext.get())
        problem = gpu_problem()
        if problem is None and address is not None:
            problem = _unknown_address(address)
        if problem is not None:
            problem += f" (on the Spark executor of {socket.gethostname()})"
        yield _row(0, _RESULT, pickle.dumps(problem))


def _unknown_address(address: str) -> str | None:
    """Why CUDA has no device ``address`` (Spark's addresses are what the discovery
    script printed), or None when it has."""
    if standin():
        return None
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if address.isdigit() and int(address) < count:
        return None
    return (f"Spark assigned GPU '{address}', but CUDA sees {count} device(s) "
            "(the discovery script must print CUDA ordinals; CUDA_VISIBLE_DEVICES "
            "renumbers them)")


# --------------------------------------------------------------------------- the engine


@contextlib.contextmanager
def _environ_defaults(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set only while the JVM starts, and only where unset."""
    added = [k for k in values if k not in os.environ]
    for key in added:
        os.environ[key] = values[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _quiet_pandas_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PANDAS_WARNING, category=FutureWarning)
        yield


@dataclass
class _Cache:
    frame: Any  # the cached DataFrame of IPC blobs, built on first use
    counted: bool = False  # the per-step counts of its first computation are recorded


class SparkEngine(Engine):
    """Partitions as Spark tasks: ``mapInArrow`` over partition descriptors."""

    name = "spark"

    def __init__(self, master: str | None = None, conf: dict[str, Any] | None = None,
                 progress: bool = False, profile: str | os.PathLike[str] | None = None,
                 **kwargs: Any):
        settings, self.profile_path = load_profile(profile)
        super().__init__(progress=progress, profile=settings, **kwargs)
        self.master = master or self.profile.master or DEFAULT_MASTER
        self.conf = {k: _conf_text(v) for k, v in {**self.profile.conf, **(conf or {})}.items()}
        self.spark: Any = None
        self.mode = "off"  # session: sluice made it; spark-submit; attached: it existed
        self._owned = False
        self._attempts = 1
        self._conf: dict[str, str] = {}
        self._conf_of: Any = None  # the SparkContext ``_conf`` was read from
        self._caches: dict[str, _Cache] = {}
        self._partitions: dict[int, tuple[Any, list[PartitionInfo]]] = {}

    # ------------------------------------------------------------------ lifecycle

    def settings(self, local: bool | None = None) -> dict[str, str]:
        """The Spark confs sluice asks for: its defaults, then the profile's, then the
        constructor's (a local master also binds to 127.0.0.1)."""
        out = dict(DEFAULT_CONF)
        if is_local(self.master) if local is None else local:
            out.update(LOCAL_CONF)
        # sluice draws its own bars (``_bars``): a job's, a resident fit's passes', labelled
        # with where the fit is, as wide as the terminal; Spark's would overwrite them
        out["spark.ui.showConsoleProgress"] = "false"
        if self.profile.log_level:
            out["spark.log.level"] = self.profile.log_level.upper()
        out.update(self.conf)
        return out

    def worker_hosts(self) -> set[str]:
        """The executors' hosts (the driver's too), from Spark's status tracker."""
        if self.spark is None:
            return set()
        try:
            infos = self.spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
            return {str(info.host()) for info in infos}
        except Exception:  # noqa: BLE001 - a Spark without that view: not known
            return set()

    def start(self) -> None:
        if self.spark is not None:
            return
        from pyspark import SparkConf, SparkContext
        from pyspark.sql import SparkSession

        with _quiet_pandas_warning():
            if SparkContext._active_spark_context is not None:
                self.spark = SparkSession.builder.getOrCreate()
                self.mode, self._owned = "attached", False
            elif "PYSPARK_GATEWAY_PORT" in os.environ:
                # the driver of spark-submit: its JVM holds its settings, which win
                SparkContext._ensure_initialized()
                conf = SparkConf()
                for key, value in self.settings(local=False).items():
                    conf.setIfMissing(key, value)
                conf.setIfMissing("spark.app.name", self.profile.app_name)
                self.spark = SparkSession.builder.config(conf=conf).getOrCreate()
                self.mode, self._owned = "spark-submit", True
            else:
                why = unreachable_master(self.master, self.profile.connect_timeout,
                                         self.progress)
                if why is not None:
                    raise SluiceError(
                        f"cannot reach the Spark master {self.master} within "
                        f"{self.profile.connect_timeout:g} s ({why})",
                        hint="is the master running there? check --master, or master "
                             f"and connect_timeout in {PROFILE_PATH}")
                conf = SparkConf().setMaster(self.master).setAppName(self.profile.app_name)
                conf.setAll(list(self.settings().items()))
                conf.set(DRIVER_JAVA_OPTIONS, quiet_driver_logs(conf.get(DRIVER_JAVA_OPTIONS)))
                env = ({"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
                       if is_local(self.master) else {})
                with _environ_defaults(env):
                    self.spark = _new_session(SparkSession.builder.config(conf=conf),
                                              self.master)
                self.mode, self._owned = "session", True
        sc = self.spark.sparkContext
        self._attempts = task_attempts(sc.master, self.spark_conf())
        self._ship_code(sc)

    def spark_conf(self) -> dict[str, str]:
        """The session's Spark confs, read once per SparkContext: they are fixed once it
        has started, and reading them is a py4j call per conf (hundreds, a few tens of
        milliseconds, which every job and run asked for again)."""
        sc = self.spark.sparkContext
        if self._conf_of is not sc:
            self._conf, self._conf_of = dict(sc.getConf().getAll()), sc
        return self._conf

    def _ship_code(self, sc: Any) -> None:
        ship = self.profile.ship_code
        # under spark-submit with the archive, the executors have it already
        if active_archive() is None and (ship == "always" or (ship == "auto"
                                                              and not is_local(sc.master))):
            sc.addPyFile(str(cached_build().path))
        for path in self.profile.py_files:
            sc.addPyFile(path)

    def close(self) -> None:
        self._drop_caches()
        if self.spark is not None and self._owned:
            _let_tasks_end(self.spark.sparkContext, JOB_END_S)
            self.spark.stop()
        self.spark, self.mode, self._owned = None, "off", False

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "master": self.master, "mode": self.mode}
        if self.profile_path:
            out["profile"] = self.profile_path
        if self.spark is not None:
            sc = self.spark.sparkContext
            conf = self.spark_conf()
            out.update(master=sc.master, spark_version=sc.version, app_id=sc.applicationId,
                       parallelism=sc.defaultParallelism, task_attempts=self._attempts,
                       conf={k: conf[k] for k in sorted(self.settings(is_local(sc.master)))
                             if k in conf})
        return out

    def begin_run(self) -> None:
        super().begin_run()
        self._drop_caches()
        self._partitions.clear()

    def release(self, data: Dataset) -> None:
        cache = self._caches.pop(data.cache_key or "", None)
        if cache is not None and cache.frame is not None:
            with contextlib.suppress(Exception):
                cache.frame.unpersist(blocking=False)

    def _drop_caches(self) -> None:
        for cache in self._caches.values():
            if cache.frame is not None:
                with contextlib.suppress(Exception):  # a stopped session has nothing cached
                    cache.frame.unpersist(blocking=False)
        self._caches.clear()

    # ------------------------------------------------------------------ planning

    def partitions(self, data: Dataset) -> list[PartitionInfo]:
        return self.remembered_partitions(self._partitions, data)

    def task_groups(self, infos: list[PartitionInfo]) -> list[list[int]]:
        """Consecutive partitions per Spark task: about ``rows_per_task`` rows each, and
        at least one task per core when there are enough partitions."""
        if not infos:
            return [[]]
        budget = self.profile.rows_per_task
        rows = [budget if i.rows is None else i.rows for i in infos]
        parallelism = self.spark.sparkContext.defaultParallelism if self.spark else 1
        return contiguous_groups(infos, rows, min(len(infos), max(parallelism,
                                                            -(-sum(rows) // budget))))

    def _source_frame(self, data: Dataset, infos: list[PartitionInfo]
                      ) -> tuple[Any, list[list[int]], _Cache | None, int]:
        """The DataFrame a job maps over: partition descriptors, or the dataset's cache
        (built here, lazily, on its first use), or an ancestor's built cache (the steps
        after a multi-pass fit: no second read of the source); and how many of the
        dataset's steps its rows have had."""
        groups = self.task_groups(infos)
        descriptors = self.spark.range(0, len(groups), 1, len(groups))
        cache = self._caches.get(data.cache_key) if data.cache_key else None
        if cache is None and data.resume is not None:
            ancestor = self._caches.get(data.resume[0])
            if ancestor is not None and ancestor.frame is not None:
                return ancestor.frame, groups, ancestor, data.resume[1]
        if cache is None:
            return descriptors, groups, None, 0
        if cache.frame is None:
            task = self._task("cache", data, infos, groups, cached=False, step="cache")
            cache.frame = self._map(descriptors, task, _ROWS_DDL).cache()
        return cache.frame, groups, cache, len(data.ops)

    def _task(self, kind: str, data: Dataset, infos: list[PartitionInfo],
              groups: list[list[int]], cached: bool, step: str, **extra: Any) -> _Task:
        return _Task(kind=kind, data=data, infos={i.index: i for i in infos}, groups=groups,
                     cached=cached, step=step, attempts=self._attempts,
                     nonce=uuid.uuid4().hex, cwd=os.getcwd(), **extra)

    @staticmethod
    def _map(frame: Any, task: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
             schema: Any, barrier: bool = False) -> Any:
        from pyspark import cloudpickle

        function = functools.partial(run_in_executor, cloudpickle.dumps(task))
        with _quiet_pandas_warning():
            try:
                return frame.mapInArrow(function, schema, barrier=barrier)
            except ImportError:
                return _map_in_arrow_without_pandas(frame, function, schema, barrier)

    # ------------------------------------------------------------------ running

    def _run(self, data: Dataset, step: str, work: Callable[[pa.Table, PartitionInfo, Any], Any],
             label: str) -> list[Any]:
        """``work(part, info, record)`` on every partition; the results in partition order."""
        self.start()
        infos = self.partitions(data)
        if not infos:
            return []
        frame, groups, cache, done = self._source_frame(data, infos)
        failures = self.spark.sparkContext.accumulator(None, _Outcomes())
        task = self._task("results", data, infos, groups, cached=cache is not None, step=step,
                          work=work, failures=failures, done=done)
        rows = self._collect(self._map(frame, task, _ROWS_DDL), label, (failures, infos))
        results: dict[int, Any] = {}
        errors: dict[int, BaseException] = {}
        # (an ancestor's cache: its tasks send the counts of the steps after it only)
        count = cache is None or not cache.counted or done < len(data.ops)
        for part, kind, data_ in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(),
                                     rows.column(2).to_pylist()):
            value, records = pickle.loads(data_)
            if kind == _ERROR:
                errors[part] = value
            else:
                results[part] = value
            if count:
                self.record_all(records)
        if cache is not None and done == len(data.ops):
            cache.counted = True
        if errors:
            raise errors[min(errors)]
        return [results[info.index] for info in infos]

    def _collect(self, frame: Any, label: str,
                 failures: tuple[Any, list[PartitionInfo]] | None = None,
                 group: str | None = None) -> pa.Table:
        """Run a job; a failed one (every attempt of a task failed) becomes the sluice
        error it carries, or one line saying what Spark reported.

        ``failures``: the job's ``_Outcomes`` accumulator (partition failures that are
        not retried, partitions done) and the job's partitions. A failure cancels the job
        (fail fast: the other partitions' work would be thrown away) once every partition
        before it is done, and the lowest failure is raised: the same error whichever
        task finished first, as on the other engines. The partitions done advance the
        job's progress bar (``_bars``), labelled ``label``. ``group``: the job group (to
        cancel the job from another thread), else a new one.
        """
        sc = self.spark.sparkContext
        group = group or f"sluice-{uuid.uuid4().hex[:12]}"
        sc.setJobGroup(group, label or "sluice", interruptOnCancel=True)
        done = threading.Event()
        failed: list[bytes] = []

        def watch(bar: Any) -> None:
            accumulator, infos = failures
            rows = {info.index: info.rows or 0 for info in infos}
            shown: set[int] = set()
            while not done.wait(FAIL_FAST_POLL_S):
                value = accumulator.value
                if value is None:
                    continue
                first, finished = value
                for index in sorted(finished - shown):
                    bar.advance(rows[index])
                shown |= finished
                if first is not None:
                    if any(index < first[0] and index not in finished for index in rows):
                        continue  # a partition before it may fail too: its turn first
                    failed.append(first[1])
                    _cancel(sc, group)
                    return

        watcher = None
        shown = progress_bar(failures is not None and self._bars(), label,
                             len(failures[1]) if failures else 0)
        try:
            with _quiet_pandas_warning(), interrupt_hook(lambda: _cancel(sc, group)), \
                    shown as bar:
                if failures is not None:
                    watcher = threading.Thread(target=watch, args=(bar,),
                                               name="sluice-fail-fast", daemon=True)
                    watcher.start()
                return frame.toArrow()
        except BaseException as exc:
            # Ctrl-C, or pyspark's own error raised in a finally while it was interrupted
            interrupt = interruption(exc)
            if interrupt is not None:
                _cancel(sc, group)
                # the frame (and the broadcast of its function) lives until its killed
                # tasks end: dropped under them, Spark logs a missing block for each
                _let_tasks_end(sc, JOB_END_S)
                if interrupt is exc:
                    raise
                raise interrupt from None
            if not isinstance(exc, Exception):
                raise
            done.set()
            if watcher is not None:
                watcher.join()
            self._quiesce(group)
            if failed:
                error, _ = pickle.loads(failed[0])
                raise error from None
            raise _job_failure(exc, label) from None
        finally:
            done.set()
            _clear_job_group(sc)

    # ------------------------------------------------------------------ GPUs

    def gpu_problem(self, wait: bool = True) -> str | None:
        """Why Spark tasks cannot compute on a GPU, or None: a 1-task job asks an
        executor's Python worker (a local master's run on this machine, with the
        environment the session started them with). On a cluster the session must ask
        for GPUs, and the job must get one within the profile's ``gpu_timeout``:
        Spark itself waits for ever for an executor with the resources asked (whatever
        ``wait`` says: a session whose tasks ask for GPUs cannot run without one)."""
        self.start()
        sc = self.spark.sparkContext
        conf = self.spark_conf()
        asks = {k: _amount(conf.get(k)) > 0 for k in (EXECUTOR_GPU, TASK_GPU)}
        # local[N] has no executors to give GPUs to: tasks that ask for one never start
        # (local-cluster[...] is a standalone cluster, and does)
        if sc.master == "local" or sc.master.startswith("local["):
            if asks[TASK_GPU]:
                # fatal whatever the device: no task of this session would ever start
                raise SluiceError(
                    f"a local master cannot schedule GPU resources, so tasks asking for "
                    f"{TASK_GPU}={conf[TASK_GPU]} never start, on the GPU or the CPU",
                    hint="drop it (local tasks use this machine's GPU), or use a cluster "
                         "master")
        elif not all(asks.values()):
            return (f"the Spark session gives its tasks no GPU: set {EXECUTOR_GPU} and "
                    f"{TASK_GPU} ({GPU_PROFILE} shows how)")
        timeout = self.profile.gpu_timeout
        group = f"sluice-gpu-{uuid.uuid4().hex[:12]}"
        expired, finished = threading.Event(), threading.Event()

        def cancel() -> None:
            # again until the probe returns: a job submitted after the first cancel (the
            # query planned slowly on a loaded driver) would otherwise wait for ever
            expired.set()
            while not finished.is_set():
                sc.cancelJobGroup(group)
                finished.wait(0.5)

        frame = self._map(self.spark.range(0, 1, 1, 1), _GpuProbe(), _ROWS_DDL)
        timer = threading.Timer(timeout, cancel)
        timer.daemon = True
        sc.setJobGroup(group, "sluice: GPU probe", interruptOnCancel=True)
        timer.start()
        try:
            with _quiet_pandas_warning():
                rows = frame.toArrow()
        except Exception as exc:
            if expired.is_set():
                # not a reason to fall back to the CPU: every task of this session asks
                # for a GPU, so CPU steps would wait for ever too
                raise SluiceError(self._no_gpu_in_time(timeout, conf),
                                  hint="steps on the CPU would wait too: fix the GPU "
                                       "resources, or run with a session that asks tasks "
                                       "for no GPU") from None
            raise _job_failure(exc, "GPU probe") from None
        finally:
            finished.set()
            timer.cancel()
            _clear_job_group(sc)
        return pickle.loads(rows.column(2)[0].as_py())

    def _no_gpu_in_time(self, timeout: float, conf: dict[str, str]) -> str:
        executors = ""
        with contextlib.suppress(Exception):  # py4j: the count is a detail of the message
            # the driver is listed among them
            count = len(self.spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos())
            executors = f"{count - 1} executor(s) registered; "
        return (f"no Spark executor got a GPU within {timeout:g} s ({executors}executors ask "
                f"for {EXECUTOR_GPU}={conf.get(EXECUTOR_GPU, 'unset')}, tasks for "
                f"{TASK_GPU}={conf.get(TASK_GPU, 'unset')}: check that workers offer them, "
                "spark.worker.resource.gpu.*; gpu_timeout sets the wait)")

    def _quiesce(self, group: str, timeout: float = 15.0) -> None:
        """Wait for the tasks of a failed job to stop, so that an abort that follows does
        not race a task still writing."""
        tracker = self.spark.sparkContext.statusTracker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = 0
            for job in tracker.getJobIdsForGroup(group):
                info = tracker.getJobInfo(job)
                for stage in info.stageIds if info else []:
                    stage_info = tracker.getStageInfo(stage)
                    active += stage_info.numActiveTasks if stage_info else 0
            if not active:
                return
            time.sleep(0.1)

    def aggregate(self, data: Dataset, step_id: str, partial: Callable[[pa.Table, Any], Any],
                  combine: Callable[[Any, Any], Any], label: str = "",
                  placement: Placement = CPU) -> Any:
        partials = self._run(data, step_id, placed_action(step_id, placement, partial, combine),
                             label or f"{step_id}: fit")
        return self.reduce(step_id, partials, combine)

    def fit(self, data: Dataset, step_id: str, estimator: Estimator,
            placement: Placement = CPU) -> tuple[Any, int, Dataset]:
        """A multi-pass fit runs resident (one barrier job whose tasks keep their
        partitions, ``_ResidentTask``) where the profile's ``resident_fits`` allows it,
        else one job a pass."""
        tasks, problem = self._resident_tasks(data, step_id, estimator)
        notes = self.stats.setdefault(step_id, StepStats()).notes
        if tasks is None:
            if estimator.multi_pass:
                notes["fit_mode"] = "one job a pass" + (f" ({problem})" if problem else "")
            return super().fit(data, step_id, estimator, placement)
        infos = self.partitions(data)
        rows = [self.profile.rows_per_task if i.rows is None else i.rows for i in infos]
        groups = contiguous_groups(infos, rows, tasks)
        notes["fit_mode"] = f"resident, {len(groups)} tasks"
        conf = self.spark_conf()
        host = conf.get("spark.driver.host") or socket.gethostname()
        hub = resident.Hub(conf.get("spark.driver.bindAddress") or host,
                           secrets.token_bytes(32), self.profile.resident_port)
        task = _ResidentTask(data=data, infos={i.index: i for i in infos}, groups=groups,
                             step=step_id, placement=placement, host=host, port=hub.port,
                             secret=hub.secret, cwd=os.getcwd())
        descriptors = self.spark.range(0, len(groups), 1, len(groups))
        frame = self._map(descriptors, task, _ROWS_DDL, barrier=True)
        group = f"sluice-{uuid.uuid4().hex[:12]}"
        job = _Background(lambda: self._collect(
            frame, f"{step_id}: fit (resident, {len(groups)} tasks)", group=group))

        def end() -> BaseException | None:
            """Stop the tasks, then the job; the job's own failure, if it had one."""
            everyone = len(hub.tasks) == len(groups)
            hub.close()  # connected tasks stop and return
            if everyone:
                job.thread.join(timeout=JOB_END_S)
            if job.thread.is_alive():  # tasks that never started (no free slots)
                # by group: a barrier job waiting for slots is no running job yet
                self.spark.sparkContext.cancelJobGroup(group)
                job.wait(quiet=True)
                return None
            return job.error

        from pyspark import cloudpickle

        try:
            hub.accept(len(groups), job.check)
            clock = FitClock(estimator)
            try:
                # a bar a pass (the job's own has none: it is one job for every pass)
                state, rounds = resident.fit(hub, estimator, data.schema, infos, step_id,
                                             placement, self.record_all, cloudpickle.Pickler,
                                             clock, self._bars())
            finally:
                self.driver_time(step_id, clock.driver_seconds)
        except (ConnectionError, _JobEnded) as exc:
            # the job or a task was lost (an executor, a Python worker, the network), or
            # the tasks never connected: a barrier stage is not retried, so under auto
            # the fit starts again, one job a pass, whose tasks Spark retries one by one
            lost = end() or exc
            if self.profile.resident_fits != "auto":
                raise lost from None
            reason = str(lost).splitlines()[0][:300] if str(lost) else type(lost).__name__
            notes["fit_mode"] = f"one job a pass (the resident fit failed: {reason})"
            return super().fit(data, step_id, estimator, placement)
        except BaseException:
            end()
            raise
        failed = end()
        if failed is not None:
            raise failed
        return state, rounds, data

    def _bars(self) -> bool:
        """Whether jobs draw sluice's progress bars: with ``progress``, unless Spark's
        own stage bar is on (a session sluice attached to may have it): the two would
        overwrite each other on the terminal."""
        return self.progress and not _on(self.spark_conf(), "spark.ui.showConsoleProgress")

    def _resident_tasks(self, data: Dataset, step_id: str, estimator: Estimator
                        ) -> tuple[int | None, str]:
        """How many tasks a resident fit of ``estimator`` gets, or None for one job a
        pass (a single-pass fit, ``resident_fits: never``, or under auto what makes it
        impossible, the second value)."""
        mode = self.profile.resident_fits
        if mode == "never" or not estimator.multi_pass:
            return None, ""
        self.start()
        infos = self.partitions(data)
        if not infos:
            return None, ""
        slots = self._slots()
        conf = self.spark_conf()
        problem = None
        if _on(conf, "spark.dynamicAllocation.enabled"):
            problem = "dynamic allocation is on, and a barrier job needs its executors fixed"
        elif mode == "auto" and (_on(conf, "spark.network.crypto.enabled")
                                 or _on(conf, "spark.ssl.enabled")):
            problem = ("Spark's network encryption is on, and the resident fit's connection "
                       "is not encrypted")
        elif (mode == "auto" and self.master.startswith("k8s://")
              and not self.profile.resident_port):
            problem = ("on Kubernetes the driver's pod accepts only the ports its service "
                       "names; set resident_port to one of them")
        elif slots < 1:
            problem = "no executor offers a free task slot"
        tasks = max(1, min(slots, len(infos)))
        if problem is None and mode == "auto":
            held = estimated_bytes(data.schema, infos, self.profile.rows_per_task) / tasks
            if held > self.profile.resident_task_bytes:
                problem = (f"each task would hold about {format_bytes(held)}, over "
                           f"resident_task_bytes")
        if problem is None:
            return tasks, ""
        if mode == "always":
            where = self.profile_path or "the Spark profile"
            raise SluiceError(f"step '{step_id}': cannot run the fit resident: {problem}",
                              hint=f"set resident_fits: auto or never in {where}")
        return None, problem

    def _slots(self) -> int:
        """Tasks the cluster can run at once now (what a barrier job may ask for)."""
        jsc = self.spark.sparkContext._jsc.sc()
        try:
            profile = jsc.resourceProfileManager().resourceProfileFromId(0)
            return int(jsc.maxNumConcurrentTasks(profile))
        except Exception:  # noqa: BLE001 - a JVM without the method: no resident fits
            return 0

    def persist(self, data: Dataset) -> Dataset:
        mode = self.profile.cache_fits
        if data.cache_key is not None or mode == "never" or (
                mode == "auto" and data.source.is_local()):
            return data
        key = uuid.uuid4().hex
        self._caches[key] = _Cache(None)
        return replace(data, cache_key=key)

    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        def write_all(token: Any) -> list[WriteResult]:
            return self._run(
                data, step_id, recorded_write(step_id, sink, token), f"{step_id}: write")

        return write_through(sink, run_id, data.schema, write_all)

    def collect(self, data: Dataset) -> pa.Table:
        parts = self._run(data, "collect", lambda part, info, record: part, "collect")
        return pa.concat_tables(parts) if parts else data.schema.empty_table()

    def to_dataframe(self, data: Dataset, batch_rows: int = 100_000) -> Any:
        """The dataset as a Spark DataFrame of its declared schema (Spark types), for Spark
        code downstream. Its partitions are computed when Spark runs it; a failure there
        is a Spark task failure carrying the sluice error's text."""
        from pyspark.sql.pandas.types import to_arrow_schema

        self.start()
        schema = spark_schema(data.schema)
        target = to_arrow_schema(schema, timezone="UTC")
        infos = self.partitions(data)
        frame, groups, cache, done = self._source_frame(data, infos)
        task = self._task("frame", data, infos, groups, cached=cache is not None,
                          step="to_dataframe", frame_schema=target, batch_rows=batch_rows,
                          done=done)
        return self._map(frame, task, schema)


def _on(conf: Any, key: str) -> bool:
    return str(conf.get(key, "false")).strip().lower() == "true"


class _JobEnded(Exception):
    """The job of a resident fit ended while the driver waited for its tasks."""


class _Background:
    """A job collected in a thread while the driver talks to its tasks."""

    def __init__(self, run: Callable[[], Any]):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(run,), daemon=True,
                                       name="sluice-resident-fit")
        self.thread.start()

    def _main(self, run: Callable[[], Any]) -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
            self.error = exc

    def check(self) -> None:
        """Raise if the job ended before its tasks connected."""
        if not self.thread.is_alive():
            raise _JobEnded(self.error or "the resident fit's job ended before its tasks "
                                          "connected")

    def wait(self, quiet: bool = False) -> None:
        self.thread.join()
        if self.error is not None and not quiet:
            raise self.error


def _map_in_arrow_without_pandas(frame: Any, function: Any, schema: Any,
                                  barrier: bool = False) -> Any:
    """``mapInArrow`` on a driver without pandas (a bare spark-submit node): pyspark's
    method checks for pandas, which it never uses for Arrow batches; this builds the
    same plan without the check."""
    from pyspark.sql import DataFrame
    from pyspark.sql.pandas.functions import vectorized_udf
    from pyspark.util import PythonEvalType

    udf = vectorized_udf(function, schema, PythonEvalType.SQL_MAP_ARROW_ITER_UDF)
    column = udf(*[frame[c] for c in frame.columns])
    return DataFrame(frame._jdf.mapInArrow(column._jc, barrier, None), frame.sparkSession)


def _clear_job_group(sc: Any) -> None:
    for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
        sc.setLocalProperty(key, None)


def _amount(value: str | None) -> float:
    """A resource amount conf as a number (unset or not a number: 0)."""
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


class _Outcomes:
    """A pyspark ``AccumulatorParam`` (duck-typed: pyspark is imported lazily) over a
    job's partitions: ``(failure, done)``, the failure of the lowest partition index
    (``(index, pickled (error, records))``, or None) and the indices of the partitions
    done (failed or not); None before any."""

    def zero(self, value: Any) -> Any:
        return None

    def addInPlace(self, a: Any, b: Any) -> Any:  # noqa: N802 - pyspark's name
        if a is None or b is None:
            return a if b is None else b
        failures = [f for f in (a[0], b[0]) if f is not None]
        return (min(failures, key=lambda f: f[0]) if failures else None, a[1] | b[1])


def _let_tasks_end(sc: Any, seconds: float) -> None:
    """Wait (up to ``seconds``) for the tasks still running to end: the tasks of a job
    cancelled a moment ago (an interrupted run) wind down after it, and a session
    stopped under them logs their block manager's errors."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(Exception):  # a session already half gone: stop it anyway
        tracker = sc._jsc.sc().statusTracker()
        while time.monotonic() < deadline and sum(
                info.numRunningTasks() for info in tracker.getExecutorInfos()):
            time.sleep(0.05)


def _cancel(sc: Any, group: str) -> None:
    """Cancel the running jobs of ``group``, by job id: a job that ended meanwhile is
    then no warning in the log (cancelling a group with no active job is)."""
    for job in _running(sc, group):
        sc._jsc.sc().cancelJob(job)


def _running(sc: Any, group: str) -> list[int]:
    """The jobs of ``group`` still running."""
    tracker = sc.statusTracker()
    out = []
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        if info is not None and str(info.status) == "RUNNING":
            out.append(int(job))
    return out


def _new_session(builder: Any, master: str) -> Any:
    """``builder.getOrCreate()``; a session Spark cannot start (a master that refuses
    the application, a bad conf, no Java) is a sluice error naming the master and
    Spark's own first line, not a Java stack."""
    try:
        return builder.getOrCreate()
    except Exception as exc:
        text = str(exc)
        cause = re.search(r"(?:SparkException|Exception|Error): ([^\n]+)", text)
        first = (cause.group(1) if cause else
                 next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__))
        if "stopped SparkContext" in first:
            first = ("Spark stopped the session as it started (for a standalone master, "
                     "'All masters are unresponsive' above means that no master there "
                     "accepted the application: is it a Spark master, of this Spark "
                     "version?)")
        raise SluiceError(f"Spark could not start a session on {master}: "
                          f"{first.strip()[:500]}",
                          hint="see Spark's log lines above; check --master and the conf "
                               f"in {PROFILE_PATH}") from None


def quiet_driver_logs(options: str | None) -> str:
    """The driver's JVM options with sluice's log4j2 configuration (warnings and errors,
    no start-up banner), unless the options name a configuration of their own."""
    options = options or ""
    if "log4j2.configurationFile" in options or "log4j.configuration" in options:
        return options
    path = Path(__file__).with_name("log4j2.properties").resolve()
    return f"{options} -Dlog4j2.configurationFile={path.as_uri()}".strip()


def _conf_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _job_failure(exc: BaseException, label: str) -> BaseException:
    text = str(exc)
    marked = _ERROR_MARK.search(text)
    if marked:
        return pickle.loads(base64.b64decode(marked.group(1)))
    reason = re.search(r"Job aborted due to stage failure: ([^\n]+)", text)
    first = reason.group(1) if reason else next((ln for ln in text.splitlines() if ln.strip()),
                                                type(exc).__name__)
    message = f"Spark job '{label}' failed: {first.strip()[:500]}"
    # the Python error under the JVM's, e.g. an archive built for another Python
    python = [m for m in _EXCEPTION_LINE.finditer(text)
              if not m.group(1).startswith(("org.", "java.", "scala.", "py4j.", "io."))]
    if python and python[-1].group(0) not in message:
        message += f" ({python[-1].group(0).strip()[:500]})"
    return SluiceError(message, hint="see the Spark driver and executor logs")
