"""Resident fits: a multi-pass fit whose partitions stay where they were computed and
answer every pass the driver sends - on Spark one barrier job whose tasks talk to the
driver over a direct connection (``pipelines/engines/resident.py``), on Dask one actor
per worker holding its persisted partitions.

On both: the same models as one job a pass and as the local engine, bit for bit, and
failures in the first computation and in a pass. On Spark: a lost task, when ``auto``
falls back, and the protocol's own checks (the secret, the order of the answers). Dask's
lost worker is in test_dask_engine.py."""

from __future__ import annotations

import pickle
import re
import socket
import threading
from pathlib import Path
from typing import Any

import click
import numpy as np
import pyarrow as pa
import pytest
from conftest import kept_budget_fit, write_pipeline

from operators.base import DataError, PartitionInfo, SluiceError
from pipelines.engines import resident
from pipelines.engines.base import StepFailure
from pipelines.engines.spark import SparkEngine
from pipelines.runner import run
from pipelines.store import ModelStore


def profile(engine: Any, monkeypatch: pytest.MonkeyPatch, **update: Any) -> None:
    monkeypatch.setattr(engine, "profile", engine.profile.model_copy(update=update))


# the engine matrix's shared Dask and Spark engines (conftest's ``engine``)
on_clusters = pytest.mark.parametrize("engine", ["local", "dask", "spark"], indirect=True)
# what turns resident fits on for the small data here (local: auto waits for 4 workers
# and resident_rows), and what is off
ON = {"local": "always", "dask": "auto", "spark": "auto"}
OFF = {"local": None, "dask": "one job a pass", "spark": "one job a pass"}


def resident_on(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    profile(engine, monkeypatch, resident_fits=ON[engine.name])


RESIDENT = {"local": "resident, 2 processes", "dask": "resident, 2 workers",
            "spark": "resident, 2 tasks"}


def fitted_arrays(models: Path, name: str) -> dict[str, np.ndarray]:
    """Every array of the latest version of ``name``, keyed by step and array name."""
    model = ModelStore(str(models)).load(name)
    out = {}
    for i, step in enumerate(model.chain.steps):
        _, arrays = step.state()
        out.update({f"{i}.{k}": v for k, v in arrays.items()})
    return out


MODELS = {
    "boosted": """
          - id: model
            op: gradient_boosted_trees
            label: churned
            n_trees: 6
            max_depth: 3
            validation_fraction: 0.2
            subsample: 0.8
            seed: 3""",
    "forest": """
          - id: model
            op: random_forest
            label: churned
            n_trees: 4
            max_depth: 4
            seed: 5""",
    "logistic": """
          - op: impute
            columns: [total_charges]
          - op: standard_scale
            columns: [tenure, monthly_charges, total_charges]
          - id: model
            op: logistic_regression
            label: churned
            l2: 0.01""",
}


@on_clusters
@pytest.mark.parametrize("model", sorted(MODELS))
def test_resident_fits_give_the_same_model_as_one_job_a_pass_and_local(
        engine: Any, churn: Path, workdir: Path, model: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_pipeline(workdir, f"""
        pipeline: fit_{model}
        steps:
          - op: read_parquet
            path: data/churn
            columns: [tenure, monthly_charges, total_charges, churned]
            partition_mb: 0.02{MODELS[model]}
          - op: save_model
            name: m
        """)
    fits = {}
    for mode in ("on", "never"):
        profile(engine, monkeypatch,
                resident_fits=ON[engine.name] if mode == "on" else "never")
        record = run(path, engine_instance=engine, models=str(workdir / mode))
        expected = RESIDENT[engine.name] if mode == "on" else OFF[engine.name]
        assert record["steps"]["model"].get("fit_mode") == expected
        assert record["steps"]["model"]["rows"] == 5000
        fits[mode] = (fitted_arrays(workdir / mode, "m"), record["metrics"]["model"])
    run(path, engine="local", models=str(workdir / "threads"))
    fits["threads"] = (fitted_arrays(workdir / "threads", "m"), None)
    arrays = fits["on"][0]
    assert arrays
    for other in ("never", "threads"):
        assert arrays.keys() == fits[other][0].keys()
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, fits[other][0][key], err_msg=key)
    assert fits["on"][1] == fits["never"][1]  # passes, losses, validation: the same


def failing_fit(workdir: Path, at_pass: int, kind: str, at: int = 3500,
                once: Path | None = None) -> Path:
    """A fit of ``at_pass + 1`` passes failing (``kind``) in pass ``at_pass`` on the
    partition holding customer ``at`` (only while the file ``once`` does not exist)."""
    return write_pipeline(workdir, f"""
        pipeline: failing
        steps:
          - op: read_parquet
            path: data/churn
            partition_mb: 0.02
          - id: fit
            op: sluice_testops.FailingPass
            at_pass: {at_pass}
            at_partition_with: {at}
            kind: {kind}
            once: {'null' if once is None else once}
        """)


@on_clusters
@pytest.mark.parametrize("at_pass", [0, 2])
def test_a_user_error_in_a_pass_is_one_located_line(engine: Any, churn: Path,
                                                    workdir: Path, at_pass: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    resident_on(engine, monkeypatch)
    with pytest.raises(DataError) as info:
        run(failing_fit(workdir, at_pass, "user"), engine_instance=engine)
    text = str(info.value)
    assert f"a bad row in pass {at_pass}" in text and "step 'fit', partition " in text
    assert engine.stats["fit"].notes["fit_mode"] == RESIDENT[engine.name]
    # the holders are gone and the next fit runs
    record = run(failing_fit(workdir, 4, "user", at=-1), engine_instance=engine)
    assert record["status"] == "succeeded" and record["metrics"]["fit"]["passes"] == 5


@on_clusters
def test_a_bug_in_a_pass_carries_the_workers_traceback(engine: Any, churn: Path,
                                                       workdir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    resident_on(engine, monkeypatch)
    with pytest.raises(StepFailure) as info:
        run(failing_fit(workdir, 1, "bug"), engine_instance=engine)
    assert isinstance(info.value.error, ZeroDivisionError)
    assert "boom in pass 1" in str(info.value)
    notes = "\n".join(getattr(info.value.error, "__notes__", []))
    heading = {"local": "worker process traceback", "dask": "Dask worker traceback",
               "spark": "executor traceback"}[engine.name]
    assert heading in notes and "sluice_testops.py" in notes


@on_clusters
def test_an_error_computing_the_partitions_ends_every_task(engine: Any, churn: Path,
                                                           workdir: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    resident_on(engine, monkeypatch)
    path = write_pipeline(workdir, """
        pipeline: failing_read
        steps:
          - op: read_parquet
            path: data/churn
            partition_mb: 0.02
          - id: explode
            op: sluice_testops.Exploding
            at_partition_with: 4000
          - id: fit
            op: sluice_testops.ThreePass
            column: monthly_charges
        """)
    with pytest.raises(StepFailure) as info:
        run(path, engine_instance=engine)
    assert "step 'explode', partition" in str(info.value)
    assert engine.stats["fit"].notes["fit_mode"] == RESIDENT[engine.name]


def test_a_task_lost_mid_fit_refits_one_job_a_pass(spark: SparkEngine, churn: Path,
                                                   workdir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python worker that exits mid-fit fails the barrier stage (Spark does not retry
    it): under auto the fit starts again, one job a pass (whose tasks Spark retries),
    with the same result; under always the run fails saying so; a worker that always
    dies fails the run, and the session serves the next fit."""
    marker = workdir / "died"
    path = failing_fit(workdir, 1, "exit", once=marker)
    record = run(path, engine_instance=spark)
    assert marker.exists()
    mode = record["steps"]["fit"]["fit_mode"]
    assert mode.startswith("one job a pass (the resident fit failed: "), mode
    assert record["metrics"]["fit"]["passes"] == 2
    assert record["steps"]["fit"]["rows"] == 5000
    marker.unlink()
    # (a context of its own: undoing the test's monkeypatch would also undo the workdir's
    # folder and runs folder, and the next runs would write their records into the repo)
    with monkeypatch.context() as patched:
        profile(spark, patched, resident_fits="always")
        with pytest.raises(SluiceError, match="failed"):
            run(path, engine_instance=spark)
    with pytest.raises(SluiceError):
        run(failing_fit(workdir, 1, "exit"), engine_instance=spark)
    record = run(failing_fit(workdir, 2, "user", at=-1), engine_instance=spark)
    assert record["status"] == "succeeded"


def test_auto_falls_back_and_always_says_why(spark: SparkEngine, churn: Path, workdir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = failing_fit(workdir, 2, "user", at=-1)  # never fails: three passes
    with monkeypatch.context() as patched:
        patched.setattr(SparkEngine, "_slots", lambda self: 0)
        record = run(path, engine_instance=spark)
        assert record["steps"]["fit"]["fit_mode"] == (
            "one job a pass (no executor offers a free task slot)")
        profile(spark, patched, resident_fits="always")
        with pytest.raises(SluiceError, match="no executor offers a free task slot") as info:
            run(path, engine_instance=spark)
        assert "resident_fits: auto or never" in info.value.hint
    # over the memory budget: auto fits one job a pass
    profile(spark, monkeypatch, resident_task_bytes=1000)
    record = run(path, engine_instance=spark)
    assert re.fullmatch(r"one job a pass \(each task would hold about [\d.]+ KiB, over "
                        r"resident_task_bytes\)", record["steps"]["fit"]["fit_mode"])


# --------------------------------------------------------------------------- the protocol


def test_hub_drops_connections_without_the_secret_and_orders_by_rank() -> None:
    hub = resident.Hub("127.0.0.1", b"s" * 32)
    stray = socket.create_connection(("127.0.0.1", hub.port))
    resident.send(stray, resident.HELLO, b"x" * 32 + (0).to_bytes(4, "big"))
    tasks = [resident.connect("127.0.0.1", hub.port, b"s" * 32, rank) for rank in (1, 0)]
    try:
        hub.accept(2, check=lambda: None, timeout=30)
        assert stray.recv(1) == b""  # closed unread
        # the hub's first connection is task 0's, whatever the order they came in
        resident.send(hub.tasks[0], resident.STOP)
        assert resident.receive(tasks[1])[0] == resident.STOP
    finally:
        for sock in (stray, *tasks):
            sock.close()
        hub.close()


def test_hub_gives_up_when_the_job_failed_before_its_tasks_connected() -> None:
    hub = resident.Hub("127.0.0.1", b"s" * 32)

    def failed() -> None:
        raise RuntimeError("the job failed")

    try:
        with pytest.raises(RuntimeError, match="the job failed"):
            hub.accept(2, check=failed, timeout=30)
    finally:
        hub.close()


def test_a_pass_gathers_every_partition_and_raises_the_lowest_failure() -> None:
    """Two tasks in threads: the values come back by partition index; failures of
    several partitions give the lowest one's; records reach the driver."""
    hub = resident.Hub("127.0.0.1", b"k" * 32)
    infos = [PartitionInfo(index=i, path=f"p{i}") for i in range(4)]
    tables = {i: pa.table({"x": [float(i)] * (i + 1)}) for i in range(4)}
    held = {0: [(infos[0], tables[0]), (infos[1], tables[1])],
            1: [(infos[2], tables[2]), (infos[3], tables[3])]}

    def task(rank: int) -> None:
        sock = resident.connect("127.0.0.1", hub.port, b"k" * 32, rank)

        def answer(work: Any) -> bytes:
            done = resident.answers(work, held[rank],
                                    lambda info, exc: DataError(f"p{info.index}: {exc}"))
            return pickle.dumps((done, [("pass", rank)]))

        resident.serve(sock, pickle.dumps((None, [("read", rank)])), answer)
        sock.close()

    threads = [threading.Thread(target=task, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    records: list[Any] = []
    try:
        hub.accept(2, check=lambda: None, timeout=30)
        hub.ready(records.extend)
        values = hub.gather(pickle.dumps(_Rows()), records.extend)
        assert values == {(0, 1): 1, (1, 2): 2, (2, 3): 3, (3, 4): 4}
        with pytest.raises(DataError, match="p1: bad"):
            hub.gather(pickle.dumps(_Fails({1, 3})), records.extend)
    finally:
        hub.close()
        for t in threads:
            t.join(timeout=30)
    assert sorted(records) == [("pass", 0), ("pass", 0), ("pass", 1), ("pass", 1),
                               ("read", 0), ("read", 1)]


class _Rows:
    def __call__(self, table: pa.Table, info: PartitionInfo) -> int:
        return table.num_rows


class _Fails:
    def __init__(self, failing: set[int]):
        self.failing = failing

    def __call__(self, table: pa.Table, info: PartitionInfo) -> int:
        if info.index in self.failing:
            raise ValueError("bad")
        return table.num_rows


@pytest.mark.parametrize("engine", ["dask"], indirect=True)
def test_dask_fits_a_job_a_pass_when_an_actor_would_hold_too_much(
        engine: Any, churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor keeps its partitions in memory, where Dask can no longer spill them: over
    RESIDENT_MEMORY of a worker's memory limit, the fit runs a job a pass instead."""
    from pipelines.engines import dask as dask_engine

    path = failing_fit(workdir, 2, "user", at=-1)
    with monkeypatch.context() as patched:
        patched.setattr(dask_engine, "RESIDENT_MEMORY", 1e-9)
        record = run(path, engine_instance=engine)
    mode = record["steps"]["fit"]["fit_mode"]
    assert mode.startswith("one job a pass (worker tcp://127.0.0.1:") and \
        " of partitions, over 0% of its memory limit" in mode, mode
    assert record["metrics"]["fit"]["passes"] == 3
    # the command line's summary says so, with the reason
    from click.testing import CliRunner

    shown = CliRunner().invoke(_printing, obj=record)
    assert f"  step 'fit': fitted {mode}\n" in shown.output, shown.output
    record = run(path, engine_instance=engine)
    assert record["steps"]["fit"]["fit_mode"] == RESIDENT["dask"]
    assert "fitted" not in CliRunner().invoke(_printing, obj=record).output


@click.command()
@click.pass_obj
def _printing(record: dict[str, Any]) -> None:
    """The summary ``sluice run`` prints for a record."""
    from pipelines.cli import _print_record

    _print_record(record)


@pytest.mark.parametrize("engine", ["local"], indirect=True)
def test_local_fits_on_threads_when_a_worker_process_dies(
        engine: Any, churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process that exits mid-fit: the fit starts again on the threads, with
    the same result; auto keeps threads for small data or few workers."""
    resident_on(engine, monkeypatch)
    marker = workdir / "died"
    record = run(failing_fit(workdir, 1, "exit", once=marker), engine_instance=engine)
    assert marker.exists()
    mode = record["steps"]["fit"]["fit_mode"]
    assert re.fullmatch(r"threads \(the resident fit failed: worker process sluice-fit-\d "
                        r"exited with code 3\)", mode), mode
    assert record["metrics"]["fit"]["passes"] == 2 and record["steps"]["fit"]["rows"] == 5000
    profile(engine, monkeypatch, resident_fits="auto")
    record = run(failing_fit(workdir, 2, "user", at=-1), engine_instance=engine)
    assert "fit_mode" not in record["steps"]["fit"]  # 5,000 rows on 2 workers: threads


def test_local_auto_keeps_threads_when_the_processes_would_hold_too_much(
        churn: Path, workdir: Path) -> None:
    """auto, with workers and rows enough: worker processes, unless the partitions they
    would hold are over the engine's cache budget (the threads' cache keeps what fits)."""
    from pipelines.engines.local import LocalEngine

    modes = []
    for budget in (10_000, 1 << 30):
        engine = LocalEngine(workers=4, cache_bytes=budget)
        engine.profile = engine.profile.model_copy(update={"resident_fits": "auto",
                                                           "resident_rows": 1000})
        try:
            record = run(failing_fit(workdir, 2, "user", at=-1), engine_instance=engine)
        finally:
            engine.close()
        modes.append(record["steps"]["fit"]["fit_mode"])
        assert record["metrics"]["fit"]["passes"] == 3
    assert re.fullmatch(r"threads \(the partitions, about [\d.]+ [KM]iB, are over the "
                        r"9\.8 KiB worker processes may hold: SLUICE_CACHE_MB\)", modes[0]), modes
    assert re.fullmatch(r"resident, \d processes", modes[1]), modes


def test_local_worker_processes_share_the_budget_of_what_fits_keep(
        churn: Path, workdir: Path) -> None:
    """The worker processes of a local resident fit keep what fits derive from their
    partitions (``kept_with``, the trees' memos) within a share each of the engine's
    budget, as the threads keep it within the one budget: not a whole budget each."""
    from pipelines.engines.local import LocalEngine

    engine = LocalEngine(workers=2, cache_bytes=6 << 20)
    engine.profile = engine.profile.model_copy(update={"resident_fits": "always"})
    try:
        record = kept_budget_fit(workdir, engine)
    finally:
        engine.close()
    assert record["steps"]["fit"]["fit_mode"] == "resident, 2 processes"
    assert record["metrics"]["fit"] == {"passes": 1, "processes": 2, "budgets": [3 << 20]}


def test_tasks_that_never_start_fall_back_after_the_timeout(
        spark: SparkEngine, churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A barrier job asking for more slots than are free never starts its tasks: after
    the connect timeout the job is cancelled and the fit runs a job a pass."""
    monkeypatch.setattr(resident, "CONNECT_TIMEOUT_S", 3.0)
    monkeypatch.setattr(SparkEngine, "_slots", lambda self: 3)  # local[2] has 2
    path = failing_fit(workdir, 2, "user", at=-1)
    record = run(path, engine_instance=spark)
    assert record["steps"]["fit"]["fit_mode"] == (
        "one job a pass (the resident fit failed: 3 of 3 tasks did not connect in 3 s)")
    assert record["metrics"]["fit"]["passes"] == 3
    # the status tracker hears of jobs ending through Spark's asynchronous listener
    # bus: once it has heard all, no job may be left (the barrier job cancelled)
    sc = spark.spark.sparkContext
    sc._jsc.sc().listenerBus().waitUntilEmpty(10_000)
    assert not sc.statusTracker().getActiveJobsIds()


def _same(a: Any, b: Any) -> None:
    """``a`` and ``b`` equal, arrays bit for bit with their dtype and shape."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tolist() == b.tolist() if a.dtype.hasobject else a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def test_passes_send_what_changed_of_the_state_and_every_task_rebuilds_it() -> None:
    """A state whose arrays grow by rows and change a few (a forest's levels), repeat,
    change shape, type or contiguity, or appear twice: each pass unpickles to the
    same values, with the same sharing; a task that writes its copy changes nothing
    the next pass rebuilds from; a growing forest costs its new rows."""
    import cloudpickle

    rng = np.random.default_rng(3)
    writer, readers = resident.PassWriter(cloudpickle.Pickler), [resident.PassReader()
                                                                 for _ in range(2)]
    nodes = rng.standard_normal(4000)
    edges = [rng.standard_normal(300) for _ in range(3)]
    sizes = []
    for step in range(6):
        nodes = np.concatenate([nodes, rng.standard_normal(500)])
        nodes[rng.integers(0, 4000, 3)] = rng.standard_normal(3)  # a few rows change
        nodes[5] = np.nan if step % 2 else -0.0  # NaN and -0.0: bits, not values
        table = rng.integers(0, 9, (200 + 10 * step, 3)).astype(np.int32)
        state = {
            "nodes": nodes, "again": nodes, "edges": edges, "step": step,
            "table": table if step != 3 else np.asfortranarray(table),  # contiguity
            "kind": rng.standard_normal(300).astype(np.float32 if step == 4 else np.float64),
            "small": np.arange(3), "scalar": np.float64(step), "boxed": np.array(7.0),
            "objects": np.array(["a", None], dtype=object),
            "fn": (lambda x, k=step: x + k),
        }
        blob = writer.dumps(state)
        sizes.append(len(blob))
        for reader in readers:
            got = reader.loads(blob)
            assert got["fn"](1) == 1 + step
            assert got["again"] is got["nodes"]  # shared as in the state
            _same({k: v for k, v in state.items() if k != "fn"},
                  {k: v for k, v in got.items() if k != "fn"})
            got["nodes"][:] = 0.0  # the task's own copy
            got["edges"][0][:] = 0.0
    # the first pass sends everything; later ones the new and changed rows, not 32 KB
    assert sizes[0] > 40_000 and max(sizes[1:]) < 12_000, sizes


def test_a_pass_of_a_shrunken_or_rebuilt_array_is_sent_whole() -> None:
    import cloudpickle

    writer, reader = resident.PassWriter(cloudpickle.Pickler), resident.PassReader()
    first = np.arange(5000.0)
    assert reader.loads(writer.dumps([first])) [0].tobytes() == first.tobytes()
    for new in (first[:100].copy(), np.arange(5000.0)[::-1].copy(), np.arange(6000.0) * 2):
        got = reader.loads(writer.dumps([new]))[0]
        assert got.tobytes() == new.tobytes() and got.shape == new.shape


def test_tasks_combine_whole_subtrees_and_the_driver_gets_tree_reduces_result() -> None:
    """Each task combines the whole subtrees of ``tree_reduce``'s tree among its
    partitions (``merged``); the driver combines the rest (``tree_reduce_blocks``): the
    same combines in the same order as ``tree_reduce`` over all partitions, for any
    number of partitions and any way tasks hold them (Dask's are not contiguous)."""
    from operators.base import tree_blocks, tree_reduce, tree_reduce_blocks

    rng = np.random.default_rng(8)

    def combine(a: Any, b: Any) -> Any:  # neither associative nor commutative
        return (a, b)

    for n in range(1, 34):
        expected = tree_reduce(list(range(n)), combine)
        for trial in range(6):
            tasks = int(rng.integers(1, n + 1))
            if trial % 2:  # contiguous groups, as the local and Spark engines hold them
                cuts = np.sort(rng.choice(np.arange(1, n), tasks - 1, replace=False)) \
                    if tasks > 1 else []
                groups = np.split(np.arange(n), cuts)
            else:  # anywhere, as Dask places persisted partitions
                groups = np.array_split(rng.permutation(n), tasks)
            replies = []
            for group in groups:
                found = [(int(i), None, int(i), int(i) + 1) for i in sorted(group)]
                replies.append((resident.merged(found, combine), []))
            answered: list[int] = []
            blocks = resident.by_partition(replies, lambda r: None, answered.append)
            assert sorted(answered) == list(range(n))
            assert tree_reduce_blocks(blocks, n, combine) == expected, (n, groups)
    # a task holding 0-3 and 5 of 8 sends two answers; 0-7 one
    assert tree_blocks([0, 1, 2, 3, 5]) == [(0, 4), (5, 6)]
    assert tree_blocks(range(8)) == [(0, 8)]
    assert tree_blocks([1, 2, 3, 4]) == [(1, 2), (2, 4), (4, 5)]


def test_a_task_with_a_failed_partition_sends_its_answers_as_they_are() -> None:
    error = ValueError("p1")
    found = [(0, None, "a", 1), (1, error, None, 2)]
    assert resident.merged(list(found), lambda a, b: a + b) == found
    with pytest.raises(ValueError, match="p1"):
        resident.by_partition([(found, [])], lambda r: None)


@pytest.mark.parametrize("engine", ["dask"], indirect=True)
def test_dask_passes_go_by_actor_calls_when_the_workers_cannot_reach_the_driver(
        engine: Any, churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actors serve the passes over connections to the driver's hub; actors that
    cannot connect (here: told a port nobody listens on) leave the passes to Dask's
    actor calls, which ``fit_mode`` says: the same model either way."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    class Unreachable(resident.Hub):
        @property
        def port(self) -> int:
            return closed

    path = write_pipeline(workdir, f"""
        pipeline: fit_boosted
        steps:
          - op: read_parquet
            path: data/churn
            columns: [tenure, monthly_charges, total_charges, churned]
            partition_mb: 0.02{MODELS["boosted"]}
          - op: save_model
            name: m
        """)
    resident_on(engine, monkeypatch)
    record = run(path, engine_instance=engine, models=str(workdir / "hub"))
    assert record["steps"]["model"]["fit_mode"] == RESIDENT["dask"]
    monkeypatch.setattr(resident, "Hub", Unreachable)
    record = run(path, engine_instance=engine, models=str(workdir / "calls"))
    mode = record["steps"]["model"]["fit_mode"]
    assert mode.startswith(f"{RESIDENT['dask']} (passes by actor calls: the workers cannot "
                           "connect to 127.0.0.1: "), mode
    assert "Connection refused" in mode or "ConnectionRefusedError" in mode, mode
    hub, calls = fitted_arrays(workdir / "hub", "m"), fitted_arrays(workdir / "calls", "m")
    assert hub and hub.keys() == calls.keys()
    for key, value in hub.items():
        np.testing.assert_array_equal(value, calls[key], err_msg=key)
