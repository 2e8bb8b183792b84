"""On a real NVIDIA GPU (CuPy): kernels, pipelines and engines give the CPU's results.

Every test is marked ``gpu`` and skipped, with the reason ``pipelines.device.gpu_problem()``
gives, where CuPy sees no GPU. ``SLUICE_GPU_STANDIN=array_api_strict`` runs them all the
same, with the stand-in device in place of CuPy (a dry run of the tests themselves on a
machine without a GPU; the memory limit is then ``SLUICE_GPU_STANDIN_MEMORY``).

    python3 -m pytest -m gpu tests/gpu -q       # bench/gpu_device.sh runs this on the GPU

What is checked:

* every conformance-kit case (transforms and estimators) fitted and applied on the GPU
  namespace gives NumPy's fitted state and output, within the case's tolerance;
* a kernel moves a partition's rows to the device at most once per call (``partial`` or
  ``transform``), also for partitions big enough to go through pinned host buffers;
* the churn demo (conf/pipelines/churn_train.yaml, then churn_score.yaml) with
  ``device: gpu`` gives the CPU's models and scores, on the local engine and on Dask
  (a LocalCluster whose workers hold the resource ``GPU: 1``);
* out of device memory, a scoring run still succeeds with the CPU's scores, and the run
  record says what happened under the step's entry: partitions split into pieces that
  fit (``device_splits``), or computed on the CPU (``device_fallbacks``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT

from operators.arrays import gpu_namespace, standin, to_numpy, transfers
from operators.base import Estimator, Transform, drive
from operators.io.parquet import ReadParquet
from operators.testing.kit import (
    NUMPY,
    Case,
    all_cases,
    applicable,
    assert_close_tree,
    assert_tables_close,
    fit,
    split,
)
from pipelines.device import gpu_problem
from pipelines.runner import run
from pipelines.store import ModelStore

PROBLEM = gpu_problem()  # None under the stand-in too
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(PROBLEM is not None, reason=f"needs a GPU: {PROBLEM}")]

TRAIN = ROOT / "conf" / "pipelines" / "churn_train.yaml"
SCORE = ROOT / "conf" / "pipelines" / "churn_score.yaml"
DAY = "2026-11-28"  # the demo pipelines' default ds
SCORES = Path("data") / "scores" / f"ds={DAY}"
# a refit reaches the optimiser's tolerance by another rounding path: the kit's tolerance
# for Newton-fitted logistic models
MODEL_RTOL, MODEL_ATOL = 1e-7, 1e-9
# one model scored on two devices: the same arithmetic, rounded in another order
SCORE_RTOL, SCORE_ATOL = 1e-9, 1e-12


@pytest.fixture(scope="module")
def xp() -> Any:
    """The ``gpu`` device's namespace: CuPy (or the stand-in on its own device)."""
    return gpu_namespace("float64")


# --------------------------------------------------------------------------- comparisons


def assert_same_state(actual: Transform, expected: Transform, rtol: float, atol: float,
                      what: str) -> None:
    """Two fitted transforms have the same saved form (meta as JSON, arrays)."""
    assert actual.name == expected.name, f"{what}: {actual.name} != {expected.name}"
    meta_a, arrays_a = actual.state()
    meta_e, arrays_e = expected.state()
    assert_close_tree(json.loads(json.dumps(meta_a)), json.loads(json.dumps(meta_e)),
                      rtol, atol, f"{what} meta")
    assert_close_tree({k: np.asarray(v) for k, v in arrays_a.items()},
                      {k: np.asarray(v) for k, v in arrays_e.items()},
                      rtol, atol, f"{what} arrays")


def tolerances(c: Case) -> tuple[float, float]:
    """The case's own tolerance, never tighter than float64 rounding allows."""
    return max(c.rtol, 1e-9), max(c.atol, 1e-12)


# --------------------------------------------------------------------------- the kit

KIT = [c for c in all_cases() if "strict_namespace" in applicable(c)]


@pytest.mark.parametrize("c", KIT, ids=[c.name for c in KIT])
def test_kit_case_on_the_gpu_equals_numpy(c: Case, xp: Any) -> None:
    data = c.data()
    # in 3 partitions, unless the case's rows may not be cut anywhere (a ranking's
    # queries: whole in one partition)
    parts = [data] if "partition_invariance" in c.skip else split(data, 3)
    rtol, atol = tolerances(c)
    on_cpu, on_gpu = c.build(), c.build()
    if isinstance(on_cpu, Estimator):
        on_cpu, on_gpu = fit(on_cpu, parts, NUMPY), fit(on_gpu, parts, xp)
        assert_same_state(on_gpu, on_cpu, rtol, atol, f"{c.name} fitted on the GPU")
    expected = pa.concat_tables([on_cpu.transform(p, NUMPY) for p in parts])
    got = pa.concat_tables([on_gpu.transform(p, xp) for p in parts])
    assert_tables_close(got, expected, rtol, atol, f"{c.name} on the GPU")
    # the model fitted on the GPU serves the CPU unchanged (it is saved as host arrays)
    assert_tables_close(pa.concat_tables([on_gpu.transform(p, NUMPY) for p in parts]),
                        expected, rtol, atol, f"{c.name} fitted on the GPU, applied on the CPU")


def _counted_calls(op: Any, data: pa.Table, xp: Any) -> list[tuple[str, int]]:
    """Fit (if an estimator) and transform ``data`` on ``xp``: for every call its name
    and its host-to-device copies of the partition's rows."""
    rows = data.num_rows
    calls: list[tuple[str, int]] = []

    def counted(what: str, fn: Callable[[], Any]) -> Any:
        with transfers() as log:
            out = fn()
        calls.append((what, sum(1 for direction, shape, _ in log
                                if direction == "h2d" and rows in shape)))
        return out

    if isinstance(op, Estimator):
        def aggregate(partial: Callable[[pa.Table, Any], Any]) -> Any:
            return counted("partial", lambda: partial(data, xp))

        state, _ = drive(op, data.schema, aggregate)
        op = op.fitted(state)
    counted("transform", lambda: op.transform(data, xp))
    return calls


@pytest.mark.parametrize("c", KIT, ids=[c.name for c in KIT])
def test_kit_case_copies_a_partition_to_the_gpu_once_per_call_and_model(c: Case,
                                                                        xp: Any) -> None:
    data = c.data()
    calls = _counted_calls(c.build(), data, xp)
    many = [(what, n) for what, n in calls if n > c.copies]
    assert not many, (f"{c.name}: {many[0][0]} moved the partition's {data.num_rows} rows "
                      f"to the GPU {many[0][1]} times ({c.copies} is the contract)")


def _numeric(rows: int) -> pa.Table:
    from pipelines.datagen import numeric_table

    return numeric_table(rows)


# 48 MB of features: CuPy's copies go through pinned host buffers (the stand-in has none,
# and is slow: a dry run there takes fewer rows)
BIG_ROWS = 20_000 if standin() else 300_000


def test_big_partitions_go_to_the_gpu_in_one_copy_with_the_cpu_results(xp: Any) -> None:
    """300,000 rows x 20 features: logistic regression and its scoring copy the rows
    once per call and agree with NumPy."""
    from operators.models.logistic import LogisticRegression

    data = _numeric(BIG_ROWS)
    op = LogisticRegression(LogisticRegression.Params(label="label", l2=1e-4))
    calls = _counted_calls(op, data, xp)
    assert calls[-1][0] == "transform" and calls[-1][1] == 1, calls
    optimising = [n for _, n in calls[1:-1]]  # after the summary pass (host only)
    assert optimising and all(n == 1 for n in optimising), calls
    parts = split(data, 2)
    on_cpu = fit(LogisticRegression(op.params), parts, NUMPY)
    on_gpu = fit(LogisticRegression(op.params), parts, xp)
    assert_same_state(on_gpu, on_cpu, MODEL_RTOL, MODEL_ATOL, "logistic fitted on the GPU")
    assert_tables_close(on_cpu.transform(data, xp), on_cpu.transform(data, NUMPY),
                        SCORE_RTOL, SCORE_ATOL, f"scores of {BIG_ROWS} rows on the GPU")


def test_the_gpu_namespace_keeps_arrays_on_the_device(xp: Any) -> None:
    """What the kernels get is a device namespace, not NumPy in disguise."""
    from operators.arrays import is_numpy, to_xp

    assert not is_numpy(xp)
    host = np.arange(12.0).reshape(3, 4)
    with transfers() as log:
        back = to_numpy(xp.sum(to_xp(host, xp), axis=0))
    assert [direction for direction, _, _ in log] == ["h2d", "d2h"]
    np.testing.assert_array_equal(back, host.sum(axis=0))


# --------------------------------------------------------------------------- pipelines


@pytest.fixture
def churn_day(workdir: Path) -> Path:
    """30,000 churn rows for the demo's day, in 3 files (several partitions)."""
    from pipelines.datagen import generate

    out = workdir / "data" / "churn" / f"ds={DAY}"
    generate("churn", 30_000, out, files=3, row_group_rows=2_500)
    return out


class Cluster:
    """A LocalCluster whose workers each hold the resource GPU: 1, with a client of its
    own and a DaskEngine attached to it."""

    def __init__(self) -> None:
        from distributed import Client, LocalCluster

        from pipelines.engines.dask import DaskEngine

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None,
                                    resources={"GPU": 1}, memory_limit=0)
        self.client = Client(self.cluster, set_as_default=False)
        self.engine = DaskEngine(scheduler=self.cluster.scheduler_address)
        self.engine.start()

    def close(self) -> None:
        self.engine.close()
        self.client.close()
        self.cluster.close()


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    cluster.close()


@pytest.fixture(params=["local", "dask"])
def engine_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    """run()'s engine arguments: the local engine made by each run, or the shared
    cluster's engine (and, under ``client``, a client of that cluster)."""
    if request.param == "local":
        return {"engine": "local"}
    cluster = request.getfixturevalue("dask_cluster")
    return {"engine_instance": cluster.engine, "client": cluster.client}


def _run(path: Path, device: str, models: str, engine_kwargs: dict[str, Any]
         ) -> dict[str, Any]:
    kwargs = {k: v for k, v in engine_kwargs.items() if k != "client"}
    return run(path, device=device, models=models, **kwargs)


def _ran_on(record: dict[str, Any], step: str) -> str:
    """Where the run record says a step computed: ``cpu``, ``gpu:0``, ``gpu:standin``..."""
    return str(record["steps"][step].get("device", ""))


def _train(device: str, models: str, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    record = _run(TRAIN, device, models, engine_kwargs)
    # host-only steps (one_hot, select...) run on the CPU in a GPU run too
    assert record["status"] == "succeeded" and device in record["device"].split(", ")
    if device == "gpu":  # else the comparisons below would hold trivially
        assert _ran_on(record, "model").startswith("gpu"), record["steps"]["model"]
    return record


def _score(device: str, models: str, engine_kwargs: dict[str, Any]
           ) -> tuple[dict[str, Any], pa.Table]:
    record = _run(SCORE, device, models, engine_kwargs)
    assert record["status"] == "succeeded" and device in record["device"].split(", ")
    table = ReadParquet(path=str(SCORES)).read_all()
    shutil.rmtree(SCORES)  # the next run writes its own
    return record, table.sort_by("customer_id")


def _model_steps(models: str) -> list[Transform]:
    return list(ModelStore(models).load("churn").chain.steps)


def test_churn_demo_on_the_gpu_equals_the_cpu(churn_day: Path,
                                              engine_kwargs: dict[str, Any]) -> None:
    _train("cpu", "models-cpu", engine_kwargs)
    _train("gpu", "models-gpu", engine_kwargs)
    cpu_steps, gpu_steps = _model_steps("models-cpu"), _model_steps("models-gpu")
    assert [s.name for s in gpu_steps] == [s.name for s in cpu_steps]
    for i, (g, c) in enumerate(zip(gpu_steps, cpu_steps, strict=True)):
        assert_same_state(g, c, MODEL_RTOL, MODEL_ATOL, f"model step {i} ({c.name})")

    cpu_record, on_cpu = _score("cpu", "models-cpu", engine_kwargs)
    assert on_cpu.num_rows == 30_000
    # the CPU's model scored on the GPU: the same arithmetic
    record, cpu_model_on_gpu = _score("gpu", "models-cpu", engine_kwargs)
    assert _ran_on(record, "scores").startswith("gpu"), record["steps"]["scores"]
    assert_tables_close(cpu_model_on_gpu, on_cpu, SCORE_RTOL, SCORE_ATOL,
                        "the CPU-trained model scored on the GPU")
    # the GPU's model scored on the GPU: the model's tolerance
    gpu_record, on_gpu = _score("gpu", "models-gpu", engine_kwargs)
    assert_tables_close(on_gpu, on_cpu, MODEL_RTOL, MODEL_ATOL,
                        "the GPU-trained model scored on the GPU")
    assert_close_tree(gpu_record["metrics"], cpu_record["metrics"], 1e-6, 1e-9,
                      "evaluate's metrics")


def test_dask_workers_compute_on_the_gpu(dask_cluster: Cluster) -> None:
    """The cluster the Dask tests use can reach the GPU from its workers."""

    def probe() -> str | None:  # runs on a worker: pickled by value
        from operators.arrays import standin
        from pipelines.device import gpu_problem

        return None if standin() else gpu_problem()

    found = dask_cluster.client.run(probe)
    assert len(found) == 2 and all(v is None for v in found.values()), found
    resources = [w.get("resources") for w in
                 dask_cluster.client.scheduler_info()["workers"].values()]
    assert resources == [{"GPU": 1}, {"GPU": 1}], resources


# --------------------------------------------------------------------------- out of memory

# a 30,000-row partition's features (10 columns, 2.4 MB) do not fit in 2 MiB, a quarter
# of it does: the partition is split; not even a sixteenth fits in 64 KiB: the CPU
SPLIT_MEMORY, FALLBACK_MEMORY = 2 << 20, 64 << 10


def _device_memory_limiter() -> Callable[[int], None]:
    """A function that lets its process take ``nbytes`` more device memory than it
    holds now (0: no cap).

    Made in here so that cloudpickle ships it to Dask workers by value (they cannot import
    this test module); it imports what it needs when it runs.
    """

    def limit(nbytes: int) -> None:
        import os

        from operators.arrays import STANDIN_MEMORY_ENV, standin

        if standin():  # the stand-in caps each allocation
            if nbytes:
                os.environ[STANDIN_MEMORY_ENV] = str(nbytes)
            else:
                os.environ.pop(STANDIN_MEMORY_ENV, None)
            return
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()  # the cap counts the blocks the pool keeps for reuse
        pool.set_limit(size=pool.used_bytes() + nbytes if nbytes else 0)

    return limit


limit_device_memory = _device_memory_limiter()


@pytest.fixture
def big_churn_day(workdir: Path) -> Path:
    """120,000 churn rows for the demo's day: 4 partitions of 30,000 rows."""
    from pipelines.datagen import generate

    out = workdir / "data" / "churn" / f"ds={DAY}"
    generate("churn", 120_000, out, files=4, row_group_rows=30_000)
    return out


def test_scoring_out_of_device_memory_succeeds_and_says_so(
        big_churn_day: Path, engine_kwargs: dict[str, Any]) -> None:
    _train("cpu", "models", engine_kwargs)
    _, on_cpu = _score("cpu", "models", engine_kwargs)
    client = engine_kwargs.get("client")

    def score_within(nbytes: int) -> dict[str, Any]:
        """Score on the GPU with ``nbytes`` of device memory in every process that runs
        partitions; the scores are the CPU's."""
        if client is None:
            limit_device_memory(nbytes)
        else:
            client.run(limit_device_memory, nbytes)
        try:
            record, on_gpu = _score("gpu", "models", engine_kwargs)
        finally:
            if client is None:
                limit_device_memory(0)
            else:
                client.run(limit_device_memory, 0)
        assert_tables_close(on_gpu, on_cpu, SCORE_RTOL, SCORE_ATOL,
                            f"scores within {nbytes} bytes of device memory")
        return record["steps"]["scores"]

    split = score_within(SPLIT_MEMORY)
    assert split.get("device_splits"), f"the run record names no split of 'scores': {split}"
    assert "gpu" in str(split.get("device", "")), split
    # the local engine's threads share the cap: a partition may still end on the CPU
    handled = {e["partition"] for e in split["device_splits"]} | {
        e["partition"] for e in split.get("device_fallbacks", [])}
    assert handled == {0, 1, 2, 3}, split

    fallen = score_within(FALLBACK_MEMORY)
    fallbacks = fallen.get("device_fallbacks")
    assert fallbacks, f"the run record names no device fallback of the step 'scores': {fallen}"
    assert {e["partition"] for e in fallbacks} == {0, 1, 2, 3}, fallen
    assert all(e["device"] == "cpu" and "memory" in e["reason"] for e in fallbacks), fallen
