"""GPU placement on the Dask engine, with the GPU stand-in (array_api_strict on its
non-default device): workers that offer the resource GPU run every GPU task, a cluster
without one fails with the reason after gpu_timeout (or runs auto on the CPU), a worker
without a usable GPU is named, and GPU workers that leave in the middle of a run fail it
instead of leaving it waiting."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import PLUGINS, ROOT, refused, write_pipeline

from operators.base import SluiceError
from pipelines.device import gpu_problem
from pipelines.engines.dask import DaskEngine, load_profile
from pipelines.runner import make_engine, run
from pipelines.store import ModelStore

STANDIN = ("SLUICE_GPU_STANDIN", "array_api_strict")
TRAIN = ROOT / "conf" / "pipelines" / "churn_train.yaml"
DASK = str(Path(sys.executable).parent / "dask")


def _no_gpu_here() -> bool:
    with pytest.MonkeyPatch.context() as env:
        env.delenv(STANDIN[0], raising=False)
        return gpu_problem() is not None


# the tests that need a worker without a GPU use this machine's own workers
needs_no_gpu = pytest.mark.skipif(not _no_gpu_here(), reason="a GPU is usable here")


def profile(folder: Path, **keys: Any) -> Path:
    path = folder / "dask-profile.yaml"
    path.write_text(yaml.safe_dump({"engine": "dask", **keys}))
    return path


@pytest.fixture
def churn_days(workdir: Path) -> Path:
    """The project's churn data, where conf/pipelines/churn_train.yaml reads it."""
    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    return workdir / "data" / "churn"


@pytest.fixture(scope="module")
def no_gpu_cluster() -> Iterator[Any]:
    """A cluster of one worker that offers no GPU, started here and attached to by the
    tests. Its worker has the stand-in (it could compute on the "GPU"): only the
    resource counts."""
    from distributed import LocalCluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv(*STANDIN)
        env.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p))
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                               memory_limit=0)
    try:
        yield cluster
    finally:
        cluster.close()


def test_dask_gpu_profile_is_valid() -> None:
    conf = load_profile(ROOT / "conf" / "engines" / "dask-gpu.yaml")
    assert (conf.engine, conf.device, conf.scheduler, conf.gpu_timeout) == (
        "dask", "gpu", None, 60)


# --------------------------------------------------------------------------- placement


def model_state(models: str) -> dict[str, np.ndarray]:
    return ModelStore(models).load("churn").chain.steps[-1].state()[1]


@pytest.mark.slow
def test_gpu_run_on_workers_sharing_the_gpu_gives_the_cpu_model(
        churn_days: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    monkeypatch.setenv(*STANDIN)  # before the workers start: they inherit it
    started: list[dict[str, Any]] = []  # the options of every LocalCluster started
    real = distributed.LocalCluster

    def local_cluster(**options: Any) -> Any:
        started.append(options)
        return real(**options)

    monkeypatch.setattr(distributed, "LocalCluster", local_cluster)
    conf = profile(workdir, workers=2)
    with DaskEngine(profile=conf) as engine:
        assert "gpu_workers" not in engine.describe()
        gpu = run(TRAIN, device="gpu", models="gpu-models", engine_instance=engine)
        # asked for a GPU, the LocalCluster was started again with every worker GPU=1
        assert len(started) == 2
        assert gpu["engine"]["gpu_workers"] == 2 == engine.describe()["workers"]
        cpu = run(TRAIN, device="cpu", models="cpu-models", engine_instance=engine)
    # host-only steps (one_hot) run on the CPU in a GPU run too
    assert gpu["device"] == "cpu, gpu" and cpu["device"] == "cpu"
    for step in ("impute", "standard_scale", "model"):
        assert gpu["steps"][step]["device"] == "gpu:standin", step
        assert cpu["steps"][step]["device"] == "cpu", step
    assert gpu["steps"]["one_hot"]["device"] == "cpu"
    on_gpu, on_cpu = model_state("gpu-models"), model_state("cpu-models")
    assert on_gpu.keys() == on_cpu.keys() and on_cpu
    for key in on_cpu:
        np.testing.assert_allclose(on_gpu[key], on_cpu[key], rtol=1e-9, err_msg=key)
    # `sluice run --engine PROFILE`: the run's own cluster starts with GPU workers
    fresh = run(TRAIN, engine=str(conf), device="gpu", models="fresh-models")
    assert len(started) == 3 and fresh["engine"]["gpu_workers"] == 2
    for key, value in model_state("fresh-models").items():
        np.testing.assert_allclose(value, on_cpu[key], rtol=1e-9, err_msg=key)


PLACED = """
    pipeline: placed
    steps:
      - id: events
        op: read_parquet
        path: data/churn
        partition_mb: 0.02
        columns: [tenure, plan, region, monthly_charges, total_charges, churned]
      - id: impute
        op: impute
        columns: [total_charges]
        strategy: median
      - id: one_hot
        op: one_hot
        columns: [plan, region]
      - id: scale
        op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
        device: gpu
      - id: model
        op: logistic_regression
        label: churned
      - op: write_parquet
        path: out
    """


@pytest.mark.slow
def test_gpu_tasks_run_only_on_the_gpu_worker(churn: Path, workdir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import get_task_stream

    monkeypatch.setenv(*STANDIN)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # GPU worker i takes the i-th
    path = write_pipeline(workdir, PLACED)
    with DaskEngine(profile=profile(workdir, workers=2, gpu_workers=1)) as engine:
        client = engine._client
        workers = client.scheduler_info()["workers"]
        (gpu_worker,) = [a for a, w in workers.items() if w["resources"].get("GPU") == 1]
        (plain_worker,) = set(workers) - {gpu_worker}
        assert client.run(os.getenv, "CUDA_VISIBLE_DEVICES", workers=[gpu_worker]) == {
            gpu_worker: "5"}
        with get_task_stream(client=client) as stream:
            record = run(path, engine_instance=engine)
    partitions = len(engine.stats["events"].rows_by_partition)
    assert partitions > 3
    ran = [(t["key"], t["worker"]) for t in stream.data
           if isinstance(t["key"], str) and t["key"].startswith("sluice-")]
    # the scale step's fit, and the model's input persisted through the scale transform
    on_gpu = [w for k, w in ran if k.startswith(("sluice-scale-", "sluice-persist-scale-"))]
    on_cpu = [w for k, w in ran if not k.startswith(("sluice-scale-", "sluice-persist-scale-",
                                                     "sluice-job-", "sluice-gpu-check-"))]
    assert len(on_gpu) == 2 * partitions
    assert set(on_gpu) == {gpu_worker}
    assert len(on_cpu) > partitions and plain_worker in on_cpu  # CPU work goes anywhere
    # the CPU fits ran resident (an actor per worker), the GPU one a job a pass
    assert record["steps"]["model"]["fit_mode"].startswith("resident, ")
    assert record["steps"]["scale"].get("fit_mode") is None  # one pass: no mode to pick
    assert record["steps"]["scale"]["device"] == "gpu:standin"
    assert all(record["steps"][s]["device"] == "cpu" for s in ("impute", "one_hot", "model"))
    assert pq.read_table(workdir / "out").num_rows == 5000


# --------------------------------------------------------------------------- no GPU


@pytest.mark.slow
def test_no_gpu_worker_fails_after_the_timeout_and_auto_runs_on_the_cpu(
        churn_days: Path, workdir: Path, no_gpu_cluster: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*STANDIN)  # the driver's stand-in does not make a GPU worker
    address = no_gpu_cluster.scheduler_address
    monkeypatch.setenv("SLUICE_DASK_PROFILE", str(profile(workdir, scheduler=address,
                                                          gpu_timeout=2)))
    started = time.monotonic()
    with pytest.raises(SluiceError) as info:
        run(TRAIN, engine="dask", device="gpu")
    waited = time.monotonic() - started
    assert 2 <= waited < 20
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("device gpu was asked for, but no Dask worker offers the "
                           "resource GPU after 2 s (start one worker per GPU with "
                           f"`dask worker {address} --resources GPU=1`, "
                           "CUDA_VISIBLE_DEVICES=<i> for each")
    assert refused(workdir / "runs", "placement") and not (workdir / "models").exists()
    notes: list[str] = []
    # auto does not wait for GPU workers to join: it runs on what is there
    record = run(TRAIN, engine="dask", device="auto", notify=notes.append)
    assert notes == ["device auto: no Dask worker offers the resource GPU ("
                     f"start one worker per GPU with `dask worker {address} --resources "
                     "GPU=1`, CUDA_VISIBLE_DEVICES=<i> for each, or `dask cuda worker "
                     f"{address} --resources GPU=1`); running on the CPU"]
    assert record["status"] == "succeeded" and record["device"] == "cpu"
    assert {step.get("device", "cpu") for step in record["steps"].values()} == {"cpu"}


@needs_no_gpu
def test_local_cluster_without_a_gpu_here_fails_at_once(
        churn_days: Path, workdir: Path, shared_engines: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STANDIN[0], raising=False)
    if "dask" not in shared_engines:
        shared_engines["dask"] = make_engine("dask")
        shared_engines["dask"].start()
    engine = shared_engines["dask"]
    started = time.monotonic()
    with pytest.raises(SluiceError) as info:
        run(TRAIN, device="gpu", engine_instance=engine)
    assert time.monotonic() - started < 10  # no worker can join: nothing to wait for
    assert str(info.value).startswith(
        "device gpu was asked for, but the LocalCluster's workers run on this machine, "
        f"and {gpu_problem()} (")
    assert refused(workdir / "runs", "placement")


@pytest.mark.slow
@needs_no_gpu
def test_gpu_worker_without_a_usable_gpu_is_named(churn_days: Path, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STANDIN[0], raising=False)  # the worker has no GPU at all
    with DaskEngine(profile=profile(workdir, workers=1, gpu_workers=1,
                                    gpu_timeout=10)) as engine:
        (worker,) = engine._client.scheduler_info()["workers"]
        with pytest.raises(SluiceError) as info:
            run(TRAIN, device="gpu", engine_instance=engine)
    reason = gpu_problem()  # what this machine, where the worker runs, lacks
    assert reason.startswith(("CuPy", "no usable CUDA driver", "CUDA finds no GPU"))
    assert str(info.value).startswith(
        f"device gpu was asked for, but Dask worker {worker}: {reason} (")
    assert refused(workdir / "runs", "placement") and not (workdir / "models").exists()


# --------------------------------------------------------------------------- leaving


SLOW_GPU_FIT = """
    pipeline: slow
    steps:
      - id: events
        op: read_parquet
        path: data/churn
        partition_mb: 0.02
      - id: three
        op: sluice_dasktestops.SlowThreePass
        column: monthly_charges
        sleep: 0.05
        signal_dir: signals
        device: gpu
    """


@pytest.mark.slow
def test_gpu_worker_leaving_fails_the_run_instead_of_hanging(
        churn: Path, workdir: Path, no_gpu_cluster: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    address = no_gpu_cluster.scheduler_address
    (workdir / "signals").mkdir()
    log = (workdir / "gpu-worker.log").open("wb")
    gpu_worker = subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
         "--no-dashboard", "--memory-limit", "0", "--resources", "GPU=1"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, STANDIN[0]: STANDIN[1]})
    killed: list[float] = []

    def kill_in_second_pass() -> None:
        deadline = time.monotonic() + 120
        while not (workdir / "signals" / "pass-1").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(gpu_worker.pid, signal.SIGKILL)
        killed.append(time.monotonic())

    try:
        engine = DaskEngine(profile=profile(workdir, scheduler=address, gpu_timeout=2))
        with engine:
            engine._client.wait_for_workers(2, timeout=60)
            killer = threading.Thread(target=kill_in_second_pass, daemon=True)
            killer.start()
            with pytest.raises(SluiceError) as info:
                run(write_pipeline(workdir, SLOW_GPU_FIT), engine_instance=engine)
            failed = time.monotonic()
            killer.join(timeout=5)
    finally:
        if gpu_worker.poll() is None:
            gpu_worker.kill()
        gpu_worker.wait(timeout=30)
        log.close()
    assert killed and 2 <= failed - killed[0] < 30
    text = str(info.value)
    assert "step 'three'" in text and "no Dask worker has offered the resource GPU for " \
        "2 s (they left the cluster), and the step's tasks need one" in text
