"""The Dask engine: partitions as ``dask.distributed`` tasks, Arrow tables between them.

How the contract maps onto distributed:

* **cluster**: ``--scheduler tcp://host:port`` (or ``scheduler:`` in the profile)
  attaches to a running cluster; without one a ``LocalCluster`` of worker
  processes on 127.0.0.1 is started (one per core, one thread each). Workers
  import sluice and the operator packages a pipeline names from their own
  environment (``pip install sluice[dask]`` plus your plugins, or the same
  PYTHONPATH): nothing is shipped but the pickled steps. ``start`` checks that
  every worker can import the same sluice version.
* **tasks**: one ``client.submit`` per ``PartitionInfo``; the task reads the
  partition, applies the dataset's transforms and runs the step's work (a partial,
  a sink write) on the worker. The steps go to the cluster once per call, as the
  bytes of one small task that every partition task depends on, and the worker
  unpickles them inside the task, so a module it lacks is an error that names the
  step rather than a worker that cannot read its messages. A bounded window (four
  tasks per worker thread) is in flight; results come back in partition order.
* **persist**: a multi-pass fit's input becomes one future per partition holding
  the computed Arrow table on a worker (spilled by Dask when memory runs short,
  recomputed from the source if its worker dies); every pass and every dataset
  derived from it start from those futures. They are released by the next run.
* **resident fits**: a multi-pass fit on the CPU creates one actor per worker
  (``_Resident``), given the persisted partitions on it (a worker holding more
  than its share of the threads hands the extra to the least loaded, once); each
  actor then serves the passes over a connection of its own to the driver's hub
  (``resident.Hub``, as the local and Spark engines' tasks; one actor call per pass
  where the workers cannot connect back), on the same table objects every pass. Partitions an
  actor holds cannot be spilled: a worker that would hold more than half its memory
  limit that way makes the fit run a job a pass instead. A lost actor
  (its worker died) makes the fit start again, a job a pass, where Dask recomputes
  the lost partitions. ``resident_fits: never`` in the profile turns it off.
* **combine**: partials come back to the driver and are combined there with
  ``tree_reduce`` (fixed pairwise order, as every engine), so the result does not
  depend on which worker finished first.
* **write**: ``sink.begin`` and ``sink.commit`` on the driver, ``sink.write`` in the
  tasks; after a failure the writes in flight finish before ``sink.abort``.
* **paths**: a task works in the driver's directory when the worker has it (a
  LocalCluster, workers on the same machine), so relative paths mean the same as
  on the local engine; remote workers need absolute paths or URLs.
* **errors**: a failure in a task comes back as a value (no worker log spam), and
  is raised on the driver as itself: a ``SluiceError`` with step and partition,
  or a ``StepFailure`` whose error carries the worker's traceback as a note.
* **counters**: each task returns its per-step row counts and seconds with its
  result; the driver merges them into ``engine.stats``.
* **GPUs**: a worker that computes on a GPU offers the Dask resource ``GPU=1``
  (``dask worker SCHEDULER --resources GPU=1``, one worker per GPU). Every task of a
  call with a step placed on the GPU asks for it, so the scheduler runs it on such a
  worker only; CPU-only calls go anywhere. Before any data moves, ``gpu_problem``
  waits up to ``gpu_timeout`` seconds for such a worker and has each one check its
  GPU; a run that asks for device gpu fails then with the reason instead of waiting
  for ever, and ``auto`` runs on the CPU. While a call waits for GPU tasks, workers
  with the resource that leave for longer than ``gpu_timeout`` fail it the same way.
  A LocalCluster gives ``gpu_workers`` of its workers ``GPU=1``, each its own GPU
  (``CUDA_VISIBLE_DEVICES``); with none configured, once a run asks for a GPU and this
  machine has one, every worker offers ``GPU=1`` and they share it (a cluster started
  before the run asked is started again). ``conf/engines/dask-gpu.yaml`` documents
  the settings.

The profile ``conf/engines/dask.yaml`` (relative to the working directory), or the
file named by ``$SLUICE_DASK_PROFILE``, gives the defaults; arguments win over it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import pickle
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from operators.base import (
    Estimator,
    FitClock,
    PartitionInfo,
    Sink,
    SluiceError,
    WriteResult,
)
from operators.processes import WORKER_MEMORY_ENV, cache_budget, usable_cores
from pipelines.device import CPU, DeviceProfile, Placement, gpu_problem
from pipelines.engines import resident
from pipelines.engines.base import (
    Dataset,
    Engine,
    Raised,
    StepFailure,
    StepStats,
    compute_partition,
    format_bytes,
    located,
    placed_action,
    recorded_write,
    unreachable,
    waiting_line,
    workers_ignore_ctrl_c,
    write_through,
)
from pipelines.engines.progress import progress_bar
from pipelines.profiles import read, validated

__all__ = ["DaskEngine", "DaskProfile", "load_profile"]

PROFILE = Path("conf") / "engines" / "dask.yaml"
PROFILE_ENV = "SLUICE_DASK_PROFILE"

# what a worker's traceback note says it came from (resident.portable)
WORKER = "Dask worker"
# how long an actor tries to connect to the driver's hub for a resident fit's passes
# before the passes go by actor calls
HUB_CONNECT_S = 10.0
WORKER_HINT = ("install sluice and the pipeline's operator packages where the workers run "
               "(the same environment or PYTHONPATH as the driver)")

# tasks in flight per worker thread: enough to hide the round trip to the driver,
# few enough that the results of a collect and the writes to finish before an abort
# stay small
WINDOW = 4

# what a task that computes on a GPU asks of its worker: workers offer GPU=1, one per
# GPU, so the scheduler runs such tasks only there (and one at a time on each GPU)
GPU = {"GPU": 1}
GPU_WORKER_HINT = ("start one worker per GPU with `dask worker {scheduler} --resources "
                   "GPU=1`, CUDA_VISIBLE_DEVICES=<i> for each, or `dask cuda worker "
                   "{scheduler} --resources GPU=1`")

Counts = list[tuple[Any, ...]]  # (step, partition, rows, seconds, device)

# a resident fit's actor keeps its partitions in memory (Dask can no longer spill
# them): at most this share of its worker's memory limit, else a job a pass
RESIDENT_MEMORY = 0.5


class DaskProfile(DeviceProfile):
    """``conf/engines/dask.yaml``: where the cluster is, or how to start a local one."""

    scheduler: str | None = Field(
        None, description="tcp://host:port of a running scheduler; null starts a LocalCluster")
    workers: int | None = Field(
        None, gt=0, description="LocalCluster worker processes (null: one per core)")
    threads_per_worker: int = Field(1, gt=0, description="threads of each LocalCluster worker")
    memory_limit: str | int | float | None = Field(
        "auto", description="per LocalCluster worker: 'auto' (memory / workers), '4GiB', "
                            "bytes, or 0 / null for no limit")
    timeout: float = Field(
        30, gt=0, description="seconds to reach the scheduler and to wait for a first worker")
    gpu_workers: int = Field(
        0, ge=0, description="LocalCluster only: workers that get the resource GPU=1, the "
                             "i-th seeing only GPU i (CUDA_VISIBLE_DEVICES); 0: when a run "
                             "asks for a GPU and this machine has one, every worker gets "
                             "GPU=1 and they share it")
    malloc_trim_threshold: int | None = Field(
        None, ge=0,
        description="LocalCluster only: glibc's MALLOC_TRIM_THRESHOLD_ for the workers; "
                    "null keeps glibc's adaptive default (Dask sets 65536, under which "
                    "every large NumPy temporary costs fresh pages: 2.5x the CPU of a "
                    "boosting fit)")
    resident_fits: Literal["auto", "never"] = Field(
        "auto", description="auto: a multi-pass fit on the CPU runs resident - one actor "
                            "per worker holds the worker's persisted partitions and "
                            "answers each pass in one call, instead of one task per "
                            "partition a pass; never: a job a pass")


def load_profile(path: str | Path | None = None) -> DaskProfile:
    """The profile at ``path``, ``$SLUICE_DASK_PROFILE`` or ``conf/engines/dask.yaml``;
    defaults when none exists (a path named explicitly must exist)."""
    named = path or os.environ.get(PROFILE_ENV)
    file = Path(named) if named else PROFILE
    if not file.exists():
        if named:
            raise SluiceError(f"Dask profile '{file}' not found",
                              hint=f"fix the path, or unset {PROFILE_ENV}")
        return DaskProfile()
    return validated(DaskProfile, read(file, "Dask"), str(file), "Dask")


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _Failure:
    """A task's failure, returned as a value: raised again on the driver, after the
    counts of the steps that did run are recorded."""

    error: BaseException
    counts: Counts = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    """What every partition task of one engine call runs (pickled once per call)."""

    data: Dataset
    skip: int  # transforms already applied to the persisted partitions a task starts from
    step: str
    action: Callable[[pa.Table, PartitionInfo, Any], Any]  # (part, info, record)
    cwd: str  # the driver's: relative paths in a pipeline mean the same on the workers
    version: str = ""  # the driver's sluice: a worker that joined later must have it too

    @property
    def uses_gpu(self) -> bool:
        """Whether a task of this job computes on a GPU (a transform it applies, or a
        fit's partial)."""
        return self.data.uses_gpu(self.skip) or (
            isinstance(self.action, placed_action) and self.action.placement.device == "gpu")


def _table(part: pa.Table, info: PartitionInfo, record: Any) -> pa.Table:
    return part


# unpickled jobs of this worker process, by key (a few calls back: passes overlap little)
_JOBS: dict[str, _Job] = {}
_JOBS_KEPT = 4
_JOBS_LOCK = threading.Lock()


def _unpack(key: str, blob: bytes) -> _Job:
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job is None:
            job = pickle.loads(blob)
            _JOBS[key] = job
            while len(_JOBS) > _JOBS_KEPT:
                del _JOBS[next(iter(_JOBS))]
    return job


def _blob(blob: bytes) -> bytes:
    """The job's bytes as a task of their own: recomputed from the graph if lost."""
    return blob


def _tcp_address(address: str) -> list[tuple[str, int]]:
    """The (host, port) of a plain TCP scheduler address (``tcp://host:port`` or
    ``host:port``); none for other protocols (tls://, ucx://...), which are not probed."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return []
    host, _, port = rest.rpartition(":")
    return [(host.strip("[]"), int(port))] if host and port.isdigit() else []


def _quiet_cancellations() -> None:
    """On a worker of our LocalCluster: a task cancelled while it runs (a failed or
    interrupted run cancels the rest) is no warning on the console."""
    import logging

    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def _worker_memory() -> Any:
    """A worker plugin: each worker (those there and those that join) says its
    ``memory_limit`` in its environment (``WORKER_MEMORY_ENV``), the memory the
    operators' budgets there are a quarter of (``operators.processes.usable_memory``).
    Made here: ``distributed`` is imported only where the engine runs."""
    from distributed import WorkerPlugin

    class WorkerMemory(WorkerPlugin):
        name = "sluice-worker-memory"

        def setup(self, worker: Any) -> None:
            limit = worker.memory_manager.memory_limit
            if limit:
                os.environ[WORKER_MEMORY_ENV] = str(int(limit))

    return WorkerMemory()


def _quiet_shutdown() -> None:
    """On a worker of our LocalCluster about to be closed: its heartbeats failing while
    the scheduler goes first are no errors on the console (an interrupted run printed a
    worker's traceback after its one line)."""
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    """The logger ``name`` (and its children) says nothing while the block runs."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run(key: str, blob: bytes, info: PartitionInfo, start: Any) -> Any:
    """One partition of a job, on a worker: ``(value, counts, inherited counts)`` or a
    ``_Failure``. ``start`` is a persisted partition's own output, or None."""
    if isinstance(start, _Failure):
        return start
    try:
        job = _unpack(key, blob)
    except Exception as exc:
        return _Failure(SluiceError(
            f"a Dask worker cannot load the steps: {type(exc).__name__}: {exc}",
            hint=WORKER_HINT))
    if job.version and job.version != _sluice_version():
        # the workers were checked at start; this one joined the cluster since
        return _Failure(SluiceError(
            f"Dask worker {_worker_address()} has sluice {_sluice_version()}, not the "
            f"driver's {job.version} (it joined the cluster after the run started)",
            hint=WORKER_HINT))
    _follow(job.cwd)
    counts: Counts = []

    def record(*row: Any) -> None:
        counts.append(row)

    part = None
    try:
        part = compute_partition(job.data, info, record,
                                 start=None if start is None else start[0], skip=job.skip)
        try:
            value = job.action(part, info, record)
        except (SluiceError, StepFailure) as exc:
            raise located(job.step, info, exc) from None
        except Exception as exc:
            raise located(job.step, info, exc) from exc
    except Exception as exc:
        return _Failure(resident.portable(exc, WORKER), counts)
    finally:
        # Arrow's allocator keeps freed pages for reuse: a worker's memory would grow
        # towards its limit (and be paused) without this, which costs well under a ms
        part = None
        pa.default_memory_pool().release_unused()
    inherited = [] if start is None else [*start[1], *start[2]]
    return value, counts, inherited


def _follow(cwd: str) -> None:
    """Work in the driver's directory where it exists (a worker on the same machine);
    every task of a driver asks for the same one, so threads do not disagree."""
    try:
        here = os.getcwd()
    except FileNotFoundError:  # the directory this worker was in is gone
        here = None
    if here != cwd and os.path.isdir(cwd):
        os.chdir(cwd)


@functools.cache
def _sluice_version() -> str:
    from importlib.metadata import version

    return version("sluice")


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # not in a worker (tests call tasks directly)
        return "(not a worker)"


def _probe() -> Callable[[], str]:
    """A check for every worker, pickled by value (it must run where sluice is missing)."""

    def probe() -> str:
        try:
            from importlib.metadata import version

            import pipelines.engines.dask  # noqa: F401 - what every task imports

            return version("sluice")
        except Exception as exc:
            return f"cannot import sluice: {type(exc).__name__}: {exc}"

    return probe


class _Resident:
    """A Dask actor holding one worker's persisted partitions for a resident fit: each
    pass is one call (``run``) that answers for all of them, on the same table objects
    every pass (an estimator's partition memo lives as long as the fit)."""

    def __init__(self, step: str, version: str, cwd: str, threads: int,
                 infos: list[PartitionInfo], *parts: Any):
        self.step, self.version, self.cwd = step, version, cwd
        self.held = list(zip(infos, parts, strict=True))
        self.reader = resident.PassReader()  # every pass comes here, in order
        # a worker runs its actors' calls in one thread: a worker of several threads
        # gets its partitions computed by as many here
        self.pool = None
        if threads > 1 and len(self.held) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(min(threads, len(self.held)),
                                           thread_name_prefix="sluice-resident")

    def ready(self) -> list[tuple[int, BaseException | None, Counts]]:
        """Per partition: its failure to compute (or None) and the counts of the steps
        that made it (recorded once by the driver)."""
        if self.version and self.version != _sluice_version():
            error = SluiceError(
                f"Dask worker {_worker_address()} has sluice {_sluice_version()}, not the "
                f"driver's {self.version}", hint=WORKER_HINT)
            return [(info.index, error, []) for info, _ in self.held]
        out: list[tuple[int, BaseException | None, Counts]] = []
        for info, part in self.held:
            if isinstance(part, _Failure):
                out.append((info.index, part.error, part.counts))
            else:
                out.append((info.index, None, [*part[1], *part[2]]))
        return out

    def run(self, blob: bytes) -> tuple[list[Any], Counts]:
        """One pass: the pickled work on every held partition; (answers, counts)."""
        return self._answer(self.reader.loads(blob))

    def serve(self, host: str, port: int, secret: bytes, rank: int) -> bool:
        """Every pass over a connection of its own to the driver (``resident.Hub``), until
        the driver says stop (True) or hangs up (False): Dask's actor calls cost about
        2 ms each way and 3 ms a megabyte of partials, a connection a fraction of that.
        A driver this worker cannot reach is an error here, and the driver falls back
        to ``run``."""
        sock = resident.connect(host, port, secret, rank, timeout=HUB_CONNECT_S)
        with sock:
            return resident.serve(sock, pickle.dumps((None, [])),
                                  lambda work: pickle.dumps(self._answer(work)))

    def _answer(self, work: Any) -> tuple[list[Any], Counts]:
        _follow(self.cwd)
        counts: Counts = []

        def record(*row: Any) -> None:
            counts.append(row)

        def locate(info: PartitionInfo, exc: BaseException) -> BaseException:
            return resident.portable(located(self.step, info, exc), WORKER)

        held = [(info, part[0]) for info, part in self.held]
        if self.pool is None:
            found = resident.answers(lambda t, i: work(t, i, record), held, locate)
        else:
            found = list(self.pool.map(
                lambda one: resident.answers(lambda t, i: work(t, i, record), [one],
                                             locate)[0], held))
        return resident.merged(found, work.combine), counts


# --------------------------------------------------------------------------- driver side


@dataclass
class _Persisted:
    data: Dataset
    blob: Any  # the future of the job's bytes: the partitions' recipe if a worker dies
    futures: list[Any]
    gpu: bool  # computed on GPU workers: one lost is computed again only there
    merged: set[int] = field(default_factory=set)  # partitions whose counts are recorded


@dataclass(frozen=True)
class _Submitted:
    """One engine call's job on the cluster."""

    key: str  # every task key of the call ends in it
    blob: Any  # the future of the pickled job
    base: _Persisted | None  # the persisted partitions its tasks start from
    resources: dict[str, int] | None  # what each of its tasks asks of a worker

    @property
    def needs_gpu(self) -> bool:
        """Whether its tasks, or the persisted partitions they start from, need a GPU."""
        return self.resources is not None or (self.base is not None and self.base.gpu)


class DaskEngine(Engine):
    """Partitions as tasks on a dask.distributed cluster (local processes or attached)."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 progress: bool = False, *, threads_per_worker: int | None = None,
                 memory_limit: str | int | float | None = None, timeout: float | None = None,
                 gpu_workers: int | None = None, profile: str | Path | None = None,
                 **kwargs: Any):
        conf = load_profile(profile)
        super().__init__(progress=progress, profile=conf, **kwargs)
        self.scheduler = scheduler or conf.scheduler
        self.workers = workers or conf.workers
        self.threads_per_worker = threads_per_worker or conf.threads_per_worker
        self.memory_limit = conf.memory_limit if memory_limit is None else memory_limit
        self.timeout = timeout or conf.timeout
        self.gpu_workers = conf.gpu_workers if gpu_workers is None else gpu_workers
        # a LocalCluster with every worker offering GPU=1 (sharing this machine's GPU)
        self._share_gpu = False
        self._cluster: Any = None
        self._client: Any = None
        self._persisted: dict[str, _Persisted] = {}
        self._partitions: dict[int, tuple[Any, list[PartitionInfo]]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._client is not None:
            return
        from distributed import Client

        if self.scheduler:
            # Dask's client waits for ever on a server that takes the connection but does
            # not speak its protocol (the dashboard's port, another service)
            why = unreachable(_tcp_address(self.scheduler), self.timeout, greeting=True,
                              waiting=waiting_line(f"the Dask scheduler at {self.scheduler}",
                                                   self.timeout, f"timeout in {PROFILE}")
                              if self.progress else None)
            if why is not None:
                raise SluiceError(
                    f"cannot reach the Dask scheduler at {self.scheduler}: {why}",
                    hint="is `dask scheduler` running there? It listens on 8786 by default "
                         f"(8787 is its dashboard); check --scheduler or {PROFILE}")
            try:
                client = Client(self.scheduler, timeout=self.timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise SluiceError(
                    f"cannot reach the Dask scheduler at {self.scheduler}: {exc}",
                    hint="is `dask scheduler` running there? check --scheduler or "
                         f"{PROFILE}") from None
            try:
                client.wait_for_workers(1, timeout=self.timeout)
            except TimeoutError:
                client.close()
                raise SluiceError(
                    f"no Dask worker joined the scheduler at {self.scheduler} within "
                    f"{self.timeout:g} s", hint=f"start some: `dask worker {self.scheduler}`"
                ) from None
        else:
            with workers_ignore_ctrl_c():
                self._cluster = self._local_cluster()
            client = Client(self._cluster, set_as_default=False)
        self._client = client
        if self._cluster is not None:
            client.run(_quiet_cancellations)
        try:
            self._check_workers()  # the plugin is unpickled by the workers' sluice
            client.register_plugin(_worker_memory())
        except BaseException:
            self.close()
            raise
        if self.progress and self.dashboard:
            print(f"Dask dashboard: {self.dashboard}", file=sys.stderr)

    def _local_cluster(self) -> Any:
        """A LocalCluster of worker processes on 127.0.0.1, the GPU workers among them
        offering the resource GPU (each its own GPU, or all sharing this machine's)."""
        import dask.config

        # the workers' environment before Python starts (glibc reads it at start-up);
        # nannies read it when they are made, the GPU workers' below included
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        if self.profile.malloc_trim_threshold is not None:
            environ["MALLOC_TRIM_THRESHOLD_"] = self.profile.malloc_trim_threshold
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return self._start_local_cluster()

    def _local_workers(self) -> int:
        """The worker processes of the LocalCluster this engine starts."""
        return max(self.workers or usable_cores(), self.gpu_workers)

    def _start_local_cluster(self) -> Any:
        from distributed import LocalCluster

        total = self._local_workers()
        gpus = total if self._share_gpu else self.gpu_workers
        env = {}  # set in each worker once started (the pre-spawn environ is the driver's too)
        if not self.memory_limit and "SLUICE_CACHE_MB" not in os.environ:
            # workers without a memory_limit share the budget of what fits keep with
            # their partitions (``cache_budget``), as the local engine's threads do
            env["SLUICE_CACHE_MB"] = repr(cache_budget() / total / 2**20)
        cluster = LocalCluster(
            n_workers=total - gpus,
            threads_per_worker=self.threads_per_worker, processes=True, host="127.0.0.1",
            # the scheduler's HTTP server (the dashboard, with bokeh) on a free port
            # of 127.0.0.1: the default, 8787, is often taken by another cluster
            dashboard_address="127.0.0.1:0",
            memory_limit=self.memory_limit or 0, **({"env": env} if env else {}),
        )
        if not gpus:
            return cluster
        # LocalCluster gives all its workers the same options; a SpecCluster (which it
        # is) takes workers of other specifications added to its spec, started when
        # its state is corrected
        template = cluster.new_spec
        devices = _visible_devices(gpus)
        for i in range(gpus):
            options = {**template["options"], "resources": dict(GPU)}
            if not self._share_gpu:
                options["env"] = {**(options.get("env") or {}),
                                  "CUDA_VISIBLE_DEVICES": devices[i % len(devices)]}
            cluster.worker_spec[f"gpu-{i}"] = {**template, "options": options}
        try:
            cluster.sync(cluster._correct_state)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _check_workers(self) -> None:
        from importlib.metadata import version

        ours = version("sluice")
        found = self._client.run(_probe())
        wrong = {addr: v for addr, v in found.items() if v != ours}
        if wrong:
            addr, what = next(iter(wrong.items()))
            what = what if what.startswith("cannot") else f"has sluice {what}, not {ours}"
            raise SluiceError(f"Dask worker {addr} {what} ({len(wrong)} of {len(found)} "
                              "workers)", hint=WORKER_HINT)

    def close(self) -> None:
        self._release()
        if self._client is not None and self._cluster is not None:
            with contextlib.suppress(Exception):  # a worker already gone has nothing to say
                self._client.run(_quiet_shutdown, wait=True)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            # a LocalCluster we started: its scheduler (in this process) logs errors for
            # workers that end before it tells them to (Ctrl-C reaches them too), noise
            # at the end of an interrupted run
            with _silenced("distributed"):
                self._cluster.close()
            self._cluster = None

    @property
    def dashboard(self) -> str | None:
        if self._client is None or not _has_bokeh():
            return None
        return self._client.dashboard_link

    def worker_hosts(self) -> set[str]:
        if self._client is None:
            return set()
        from urllib.parse import urlsplit

        return {urlsplit(address).hostname or "" for address in
                self._client.scheduler_info(n_workers=-1).get("workers", {})} - {""}

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(),
               "cluster": "attached" if self.scheduler else "LocalCluster"}
        if self._client is None:
            return {**out, "scheduler": self.scheduler, "workers": self.workers}
        import distributed

        workers = self._client.scheduler_info().get("workers", {}).values()
        limits = sorted({w.get("memory_limit") or 0 for w in workers})
        gpus = len(self._gpu_addresses())
        return {**out, "scheduler": self._client.scheduler.address,
                "workers": len(workers), "threads": sum(w.get("nthreads", 0) for w in workers),
                "memory_limit": limits[0] if len(limits) == 1 else limits,
                **({"gpu_workers": gpus} if gpus else {}),
                "dashboard": self.dashboard, "distributed": distributed.__version__}

    # ------------------------------------------------------------------ GPUs

    def gpu_problem(self, wait: bool = True) -> str | None:
        """Why no worker can compute on a GPU, or None: waits up to ``gpu_timeout``
        seconds (``wait``; else not at all) for a worker that offers the resource GPU,
        then has each such worker check its GPU."""
        if not self.scheduler and not self.gpu_workers and not self._share_gpu:
            # a LocalCluster's workers are processes of this machine: its GPU or none
            reason = gpu_problem()
            if reason is not None:
                return f"the LocalCluster's workers run on this machine, and {reason}"
            self._share_gpu = True
            self.close()  # one already started has no GPU workers: it starts again
        self._require()
        timeout = self.profile.gpu_timeout
        addresses = self._wait_for_gpu_workers(timeout if wait else 0.0)
        if not addresses:
            scheduler = self._client.scheduler.address
            waited = f" after {timeout:g} s" if wait else ""
            return (f"no Dask worker offers the resource GPU{waited} ("
                    + GPU_WORKER_HINT.format(scheduler=scheduler) + ")")
        return self._check_gpus(addresses, timeout)

    def _gpu_addresses(self) -> list[str]:
        """The workers that offer the resource GPU now."""
        workers = self._client.scheduler_info().get("workers", {})
        return sorted(addr for addr, info in workers.items()
                      if (info.get("resources") or {}).get("GPU", 0) >= 1)

    def _wait_for_gpu_workers(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = self._gpu_addresses()
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _check_gpus(self, addresses: list[str], timeout: float) -> str | None:
        """``pipelines.device.gpu_problem`` on each GPU worker, as a task that holds its
        GPU: the first worker's reason, or None. Workers still busy after ``timeout``
        (another client's GPU tasks) are trusted when one of the others answered."""
        from distributed import wait

        client = self._client
        tag = uuid.uuid4().hex
        checks = {addr: client.submit(gpu_problem, pure=False, resources=dict(GPU),
                                      workers=[addr], allow_other_workers=False,
                                      key=f"sluice-gpu-check-{tag}-{i}")
                  for i, addr in enumerate(addresses)}
        try:
            # wait() raises TimeoutError when some are not done: those are read below
            with client.as_current(), contextlib.suppress(TimeoutError):
                wait(list(checks.values()), timeout=timeout)
            answered = 0
            for addr, future in checks.items():
                if not future.done():
                    continue
                answered += 1
                try:
                    reason = future.result()
                except Exception as exc:  # the worker died, or cannot run the check
                    reason = f"the GPU check failed: {type(exc).__name__}: {exc}"
                if reason is not None:
                    return f"Dask worker {addr}: {reason}"
            if not answered:
                return (f"none of the {len(addresses)} Dask worker(s) offering the resource "
                        f"GPU ran a GPU check within {timeout:g} s (busy with other tasks?)")
            return None
        finally:
            client.cancel(list(checks.values()))

    def _gpu_workers_gone(self) -> SluiceError | None:
        """While GPU tasks wait: an error when no worker has offered the resource GPU
        for ``gpu_timeout`` seconds (they left: the tasks would wait for ever)."""
        timeout = self.profile.gpu_timeout
        if self._wait_for_gpu_workers(timeout):
            return None
        return SluiceError(
            f"no Dask worker has offered the resource GPU for {timeout:g} s (they left "
            "the cluster), and the step's tasks need one",
            hint=GPU_WORKER_HINT.format(scheduler=self._client.scheduler.address))

    def begin_run(self) -> None:
        super().begin_run()
        self._release()
        self._partitions.clear()

    def _release(self) -> None:
        if self._client is not None:
            for kept in self._persisted.values():
                self._client.cancel([*kept.futures, kept.blob])
        self._persisted.clear()

    def release(self, data: Dataset) -> None:
        kept = self._persisted.pop(data.cache_key or "", None)
        if kept is not None and self._client is not None:
            self._client.cancel([*kept.futures, kept.blob])

    def _require(self) -> Any:
        self.start()
        return self._client

    def partitions(self, data: Dataset) -> list[PartitionInfo]:
        return self.remembered_partitions(self._partitions, data)

    # ------------------------------------------------------------------ running

    def _base(self, data: Dataset) -> _Persisted | None:
        """The persisted dataset ``data`` starts from: itself, or the longest persisted
        prefix of its steps over the same source."""
        if data.cache_key in self._persisted:
            return self._persisted[data.cache_key]
        best = None
        for kept in self._persisted.values():
            n = len(kept.data.ops)
            if (kept.data.source is data.source and kept.data.source_step == data.source_step
                    and data.ops[:n] == kept.data.ops
                    and (best is None or n > len(best.data.ops))):
                best = kept
        return best

    def _submit_job(self, data: Dataset, step: str,
                    action: Callable[[pa.Table, PartitionInfo, Any], Any]) -> _Submitted:
        import cloudpickle

        base = self._base(data)
        job = _Job(data, len(base.data.ops) if base else 0, step, action,
                   os.getcwd(), _sluice_version())
        # one per call: every task key of the call ends in it (the dashboard groups
        # them as sluice-<step>)
        key = uuid.uuid4().hex
        blob = self._client.submit(_blob, cloudpickle.dumps(job), key=f"sluice-job-{key}",
                                   pure=False)
        return _Submitted(key, blob, base, dict(GPU) if job.uses_gpu else None)

    def _each(self, data: Dataset, step: str,
              action: Callable[[pa.Table, PartitionInfo, Any], Any], label: str,
              drain: bool = False) -> Iterator[tuple[PartitionInfo, Any]]:
        """Run ``action`` (the work of ``step``) on every partition; yields results in
        partition order. ``drain``: after a failure, wait for the tasks in flight (a
        sink must not be aborted under a write) before raising."""
        from distributed import wait

        client = self._require()
        infos = self.partitions(data)
        job = self._submit_job(data, step, action)
        key, blob, base = job.key, job.blob, job.base
        limit = WINDOW * max(1, sum(client.nthreads().values()))
        # tasks that only GPU workers can run check, every gpu_timeout, that some are left
        patience = self.profile.gpu_timeout if job.needs_gpu else None
        stranded = False  # no GPU worker left: the GPU tasks in flight never finish
        pending: dict[int, Any] = {}
        done: dict[int, Any] = {}  # a value, or a Raised
        nxt = emitted = 0
        failed = False  # once a partition failed, nothing more is submitted
        interrupted = False  # Ctrl-C: the tasks in flight are not waited for
        try:
            with progress_bar(self.progress, label, len(infos)) as bar:
                while emitted < len(infos):
                    while (not failed and nxt < len(infos)
                           and len(pending) + len(done) < limit):
                        start = base.futures[nxt] if base else None
                        pending[nxt] = client.submit(
                            _run, key, blob, infos[nxt], start, pure=False,
                            resources=job.resources,
                            key=f"sluice-{_safe(step)}-{key}-{nxt}")
                        nxt += 1
                    try:
                        with client.as_current():  # wait() finds the client this way
                            wait(list(pending.values()), timeout=patience,
                                 return_when="FIRST_COMPLETED")
                    except TimeoutError:
                        gone = self._gpu_workers_gone()
                        if gone is not None:
                            stranded = True
                            raise gone from None
                        continue
                    for i in [i for i, f in pending.items() if f.done()]:
                        done[i] = Raised.settle(functools.partial(
                            self._outcome, pending.pop(i), infos[i], step, base))
                        failed = failed or isinstance(done[i], Raised)
                        bar.advance(infos[i].rows or 0)
                    while emitted in done:  # a failure is raised in its turn
                        yield infos[emitted], Raised.unwrap(done.pop(emitted))
                        emitted += 1
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if pending:
                if drain and not interrupted:
                    # those that can still run (on CPU workers) finish; the stranded
                    # ones are given up after gpu_timeout
                    with client.as_current(), contextlib.suppress(TimeoutError):
                        wait(list(pending.values()), timeout=patience if stranded else None)
                client.cancel(list(pending.values()))
            client.cancel([blob])

    def _outcome(self, future: Any, info: PartitionInfo, step: str,
                 base: _Persisted | None) -> Any:
        """A task's value, its counters merged; its failure raised as itself."""
        from distributed import KilledWorker

        where = f"step '{step}', {info.describe()}"
        try:
            out = future.result()
        except KilledWorker:
            raise SluiceError(
                f"{where}: the Dask workers running this task died (killed, or out of memory)",
                hint="raise the workers' memory_limit or lower partition_mb") from None
        except Exception as exc:  # the cluster's failure (a lost scheduler...), not a step's
            raise SluiceError(f"{where}: the Dask cluster could not run the task: "
                              f"{type(exc).__name__}: {exc}",
                              hint="see the scheduler's and the workers' logs") from None
        if isinstance(out, _Failure):
            self.record_all(out.counts)
            error = out.error
            if isinstance(error, SluiceError) and not error.where:
                error.located(where)
            raise error from None
        value, counts, inherited = out
        if base is not None and info.index not in base.merged:
            base.merged.add(info.index)
            counts = [*inherited, *counts]
        self.record_all(counts)
        return value

    def fit(self, data: Dataset, step_id: str, estimator: Estimator,
            placement: Placement = CPU) -> tuple[Any, int, Dataset]:
        """A multi-pass fit on the CPU runs resident (``_Resident``: one actor per
        worker, one call per worker a pass) unless the profile says never; a fit that
        loses a worker meanwhile starts again, a job a pass (Dask recomputes what the
        worker held)."""
        notes = self.stats.setdefault(step_id, StepStats()).notes
        if (not estimator.multi_pass or self.profile.resident_fits == "never"
                or placement.device == "gpu"):
            if estimator.multi_pass:
                notes["fit_mode"] = "one job a pass"
            return super().fit(data, step_id, estimator, placement)
        from distributed import wait

        client = self._require()
        data = self.persist(data)
        kept = self._persisted[data.cache_key]
        infos = self.partitions(data)
        if not infos:
            return super().fit(data, step_id, estimator, placement)
        with client.as_current():  # actor handles find their client this way
            wait(kept.futures)
            return self._resident_fit(client, data, step_id, estimator, placement, kept,
                                      infos, notes)

    def _resident_fit(self, client: Any, data: Dataset, step_id: str, estimator: Estimator,
                      placement: Placement, kept: _Persisted, infos: list[PartitionInfo],
                      notes: dict[str, Any]) -> tuple[Any, int, Dataset]:
        plan = self._resident_plan(client, kept)
        crowded = self._over_memory(client, kept, plan)
        if crowded:
            notes["fit_mode"] = f"one job a pass ({crowded})"
            return super().fit(data, step_id, estimator, placement)
        notes["fit_mode"] = f"resident, {len(plan)} workers"
        holders: list[Any] = []
        try:
            holders = self._holders(client, step_id, infos, kept, plan)
            failures: dict[int, BaseException] = {}
            for call in [h.ready() for h in holders]:
                for index, failure, counts in call.result():
                    if index not in kept.merged:
                        kept.merged.add(index)
                        self.record_all(counts)
                    if failure is not None:
                        failures[index] = failure
            def locate(first: int, error: BaseException) -> BaseException:
                if isinstance(error, SluiceError) and not error.where:
                    error.located(f"step '{step_id}', {infos[first].describe()}")
                return error

            resident.raise_lowest(failures, locate)

            import cloudpickle

            hub = self._hub(holders, notes)

            def gather(work: bytes, advance: Callable[[int], None]
                       ) -> dict[tuple[int, int], Any]:
                if hub is not None:
                    return hub.gather(work, self.record_all, advance)
                calls = [h.run(work) for h in holders]  # every actor at once
                return resident.by_partition((call.result() for call in calls),
                                             self.record_all, advance)

            clock = FitClock(estimator)
            try:
                state, rounds = resident.drive_passes(
                    estimator, data.schema, infos, step_id, placement,
                    resident.shown_passes(self.progress, step_id, clock, infos, gather),
                    cloudpickle.Pickler, clock)
            finally:
                self.driver_time(step_id, clock.driver_seconds)
                if hub is not None:
                    hub.close()
        except (SluiceError, StepFailure):
            raise
        except Exception as exc:  # a worker lost, the actor gone: Dask recomputes
            notes["fit_mode"] = (f"one job a pass (the resident fit failed: "
                                 f"{type(exc).__name__}: {str(exc)[:200]})")
            return super().fit(data, step_id, estimator, placement)
        finally:
            holders.clear()
        return state, rounds, data

    def _hub(self, holders: list[Any], notes: dict[str, Any]) -> resident.Hub | None:
        """The actors connected to a hub of the driver's, each serving the passes over
        its connection (``_Resident.serve``); None, and the passes go by actor calls,
        when they cannot connect to it (a driver workers cannot reach: a laptop behind
        NAT, a firewall), which ``fit_mode`` says."""
        import secrets

        host, why = self._driver_host()
        if host is None:
            notes["fit_mode"] += f" (passes by actor calls: {why})"
            return None
        hub = resident.Hub(host, secrets.token_bytes(32))
        serving = [h.serve(host, hub.port, hub.secret, rank) for rank, h in enumerate(holders)]

        def check() -> None:
            for call in serving:
                if call.done():
                    call.result()  # raises the actor's connection error
                    raise ConnectionError("an actor stopped serving before it connected")

        try:
            hub.accept(len(holders), check, timeout=HUB_CONNECT_S + 5)
            hub.ready(lambda records: None)
        except BaseException as exc:
            hub.close()  # the actors that did connect see it closed and return
            if not isinstance(exc, Exception):  # interrupted
                raise
            for call in serving:  # the actors are free again for the calls
                with contextlib.suppress(Exception):
                    call.result()
            notes["fit_mode"] += (f" (passes by actor calls: the workers cannot connect to "
                                  f"{host}: {type(exc).__name__}: {str(exc)[:200]})")
            return None
        return hub

    def _driver_host(self) -> tuple[str | None, str]:
        """The address of this machine that the workers reach: loopback for our own
        LocalCluster, else the one its connection to the scheduler comes from; or None
        and why not (a scheduler on another protocol, ``tls://``: the hub's plain TCP
        would carry in clear what the cluster encrypts)."""
        if self._cluster is not None or not self.scheduler:
            return "127.0.0.1", ""
        found = _tcp_address(self.scheduler)
        if not found:
            return None, "the scheduler's protocol is not plain TCP, and the hub's would be"
        try:
            with socket.create_connection(found[0], timeout=self.timeout) as sock:
                return str(sock.getsockname()[0]), ""
        except OSError:
            return None, "this machine's address toward the scheduler is unknown"

    def _resident_plan(self, client: Any, kept: _Persisted) -> dict[str, list[int]]:
        """Which worker's actor holds which persisted partitions: each the ones it has,
        up to its share of the cluster's threads; the rest go to the workers with the
        least (their only move, once for the whole fit)."""
        threads = client.nthreads()
        total = sum(threads.values())
        where = client.who_has(kept.futures)
        load: dict[str, list[int]] = {w: [] for w in sorted(threads)}
        extra = []
        for i, future in enumerate(kept.futures):
            holder = min(where.get(future.key) or ("",))
            share = -(-len(kept.futures) * threads.get(holder, 0) // max(1, total))
            if holder in load and len(load[holder]) < share:
                load[holder].append(i)
            else:
                extra.append(i)
        for i in extra:
            lightest = min(load, key=lambda w: len(load[w]) / threads[w])
            load[lightest].append(i)
        return {w: sorted(mine) for w, mine in load.items() if mine}

    @staticmethod
    def _over_memory(client: Any, kept: _Persisted, plan: dict[str, list[int]]) -> str:
        """Why an actor would hold too much (its worker could no longer spill what it
        holds), or "": at most RESIDENT_MEMORY of a worker's memory limit."""
        sizes = client.nbytes([f.key for f in kept.futures], summary=False)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        for worker, mine in plan.items():
            limit = workers.get(worker, {}).get("memory_limit") or 0
            held = sum(sizes.get(kept.futures[i].key, 0) for i in mine)
            if limit and held > RESIDENT_MEMORY * limit:
                return (f"worker {worker} would hold {format_bytes(held)} of partitions, "
                        f"over {RESIDENT_MEMORY:.0%} of its memory limit")
        return ""

    def _holders(self, client: Any, step_id: str, infos: list[PartitionInfo],
                 kept: _Persisted, load: dict[str, list[int]]) -> list[Any]:
        """One ``_Resident`` actor per worker of ``load``, given those partitions."""
        threads = client.nthreads()
        actors = []
        for worker, mine in load.items():
            actors.append(client.submit(
                _Resident, step_id, _sluice_version(), os.getcwd(), threads[worker],
                [infos[i] for i in mine], *[kept.futures[i] for i in mine],
                actor=True, pure=False, workers=[worker], allow_other_workers=False,
                key=f"sluice-resident-{_safe(step_id)}-{uuid.uuid4().hex}"))
        return [a.result() for a in actors]

    def aggregate(self, data: Dataset, step_id: str, partial: Callable[[pa.Table, Any], Any],
                  combine: Callable[[Any, Any], Any], label: str = "",
                  placement: Placement = CPU) -> Any:
        action = placed_action(step_id, placement, partial, combine)
        partials = [p for _, p in self._each(data, step_id, action,
                                             label or f"{step_id}: fit")]
        return self.reduce(step_id, partials, combine)

    def persist(self, data: Dataset) -> Dataset:
        if data.cache_key is not None:
            return data
        client = self._require()
        infos = self.partitions(data)
        step = data.ops[-1][0] if data.ops else data.source_step
        job = self._submit_job(data, step, _table)
        base = job.base
        futures = [client.submit(_run, job.key, job.blob, info,
                                 base.futures[i] if base else None, pure=False,
                                 resources=job.resources,
                                 key=f"sluice-persist-{_safe(step)}-{job.key}-{i}")
                   for i, info in enumerate(infos)]
        kept = Dataset(data.source, data.source_step, data.ops, data.schema, job.key)
        self._persisted[job.key] = _Persisted(kept, job.blob, futures, job.needs_gpu)
        return kept

    def write(self, data: Dataset, step_id: str, sink: Sink, run_id: str) -> dict[str, Any]:
        self._require()

        def write_all(token: Any) -> list[WriteResult]:
            return [r for _, r in self._each(data, step_id, recorded_write(step_id, sink, token),
                                             f"{step_id}: write", drain=True)]

        return write_through(sink, run_id, data.schema, write_all)

    def collect(self, data: Dataset) -> pa.Table:
        parts = [t for _, t in self._each(data, "collect", _table, "collect")]
        return pa.concat_tables(parts) if parts else data.schema.empty_table()


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _visible_devices(count: int) -> list[str]:
    """The CUDA devices a LocalCluster's GPU workers take in turn: the driver's
    ``CUDA_VISIBLE_DEVICES`` if set, else ordinals 0 to ``count - 1``."""
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
             if d.strip()]
    return named or [str(i) for i in range(count)]


def _safe(step: str) -> str:
    """A step id as a readable part of a Dask key."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in step)
