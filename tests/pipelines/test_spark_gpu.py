"""Spark tasks on GPUs: the GPU address Spark assigns a task (``TaskContext.resources()``)
selects the device its steps compute on, and a session that cannot give a task a GPU
fails before any data moves, with its reason, after ``gpu_timeout`` at most.

No GPU is needed: executors compute on the GPU stand-in (``SLUICE_GPU_STANDIN``, set
only for them through ``spark.executorEnv``: the driver has no GPU and no stand-in, so
a device decided on the driver would fail), and a standalone worker on 127.0.0.1
offers one GPU, at address "3", found by a discovery script written here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ROOT, refused
from test_spark_submit import VENV_BIN, Cluster, clean_env, standalone

from operators.arrays import STANDIN_ENV
from operators.base import SluiceError
from pipelines import profiles
from pipelines.device import gpu_problem
from pipelines.engines.spark import (
    EXECUTOR_GPU,
    GPU_PROFILE,
    TASK_GPU,
    SparkEngine,
    load_profile,
    task_gpu,
)
from pipelines.runner import run
from pipelines.store import ModelStore

# one worker runs the module under pytest-xdist (-n 2): its module fixtures start once
pytestmark = pytest.mark.xdist_group("spark_gpu")

TRAIN = ROOT / "conf" / "pipelines" / "churn_train.yaml"
ADDRESS = "3"  # the worker's one GPU: not 0, so that it cannot be a default

# trains churn on device gpu; the steps of the run record
DRIVER = '''
import json
import sys

from pipelines.engines.spark import SparkEngine
from pipelines.runner import run

master, profile, train, out = sys.argv[1:5]
with SparkEngine(master=master, profile=profile) as engine:
    record = run(train, device="gpu", models="models", runs_dir="runs", engine_instance=engine)
with open(out, "w") as f:
    json.dump(record["steps"], f)
'''


def write_profile(folder: Path, name: str, conf: dict[str, Any], **keys: Any) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"engine": "spark", "log_level": "ERROR",
                                    "ship_code": "never", **keys, "conf": conf}))
    return path


def model_arrays(models: Path) -> dict[str, np.ndarray]:
    chain = ModelStore(str(models)).load("churn").chain
    return {f"{i}.{key}": np.asarray(value) for i, step in enumerate(chain.steps)
            for key, value in step.state()[1].items()}


def assert_same_model(a: Path, b: Path) -> None:
    got, expected = model_arrays(a), model_arrays(b)
    assert got.keys() == expected.keys() and got
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def train_on_gpu(folder: Path, master: str, profile: Path, **env: str) -> dict[str, dict]:
    """The driver script in its own process (its own JVM and Python workers)."""
    script = folder / "driver.py"
    script.write_text(DRIVER)
    out = folder / "steps.json"
    done = subprocess.run([sys.executable, str(script), master, str(profile), str(TRAIN),
                           str(out)], cwd=folder, env=clean_env(PYSPARK_PYTHON=sys.executable,
                                                                **env),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(out.read_text())


def sluice_gpu(folder: Path, master: str, profile: Path) -> tuple[subprocess.CompletedProcess,
                                                                  float]:
    """``sluice run churn_train --device gpu`` on ``master``; the result and seconds."""
    t0 = time.monotonic()
    done = subprocess.run(
        [str(VENV_BIN / "sluice"), "run", str(TRAIN), "--engine", str(profile), "--master",
         master, "--device", "gpu", "--models", "models", "--runs", "runs"],
        cwd=folder, env=clean_env(PYSPARK_PYTHON=sys.executable, CI="1"),
        capture_output=True, text=True, timeout=240)
    return done, time.monotonic() - t0


def error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr[-5000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-5000:]
    assert "Traceback" not in done.stderr and "Py4J" not in done.stderr
    return errors[0]


def with_data(folder: Path) -> Path:
    folder.mkdir()
    shutil.copytree(ROOT / "data" / "churn", folder / "data" / "churn")
    return folder


@pytest.fixture(scope="module")
def cpu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The churn model trained on the CPU by the local engine (the same partitions,
    combined in the same order as on Spark)."""
    folder = with_data(tmp_path_factory.mktemp("cpu") / "project")
    with contextlib.chdir(folder):
        run(TRAIN, device="cpu", models="models", runs_dir="runs")
    return folder / "models"


# --------------------------------------------------------------------------- no cluster


def test_the_gpu_profile_asks_spark_for_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    kind, path = profiles.locate("spark-gpu")
    assert kind == "spark" and path == GPU_PROFILE
    profile, _ = load_profile(path)
    assert profile.device == "gpu" and profile.gpu_timeout > 0
    assert not profile.master.startswith("local")  # a local master schedules no GPU
    assert int(profile.conf[EXECUTOR_GPU]) >= 1 and 0 < float(profile.conf[TASK_GPU]) <= 1
    assert "spark.executor.resource.gpu.discoveryScript" in profile.conf
    assert any(key.startswith("spark.executorEnv.") for key in profile.conf)
    assert "spark.worker.resource.gpu.amount" in Path(path).read_text()


def test_a_task_computes_on_the_first_gpu_spark_assigned() -> None:
    def context(resources: dict[str, Any]) -> Any:
        return SimpleNamespace(resources=lambda: resources)

    assert task_gpu(None) is None
    assert task_gpu(context({})) is None  # a local master assigns nothing
    assert task_gpu(context({"gpu": SimpleNamespace(addresses=["5", "2"])})) == "5"
    assert task_gpu(context({"fpga": SimpleNamespace(addresses=["0"])})) is None


def fake_session(master: str, conf: dict[str, str]) -> SparkEngine:
    """An engine on a session that runs no job (it has no ``range``): what it says comes
    from the confs alone."""
    engine = SparkEngine(master=master)
    engine.spark = SimpleNamespace(sparkContext=SimpleNamespace(
        master=master, getConf=lambda: SimpleNamespace(getAll=lambda: list(conf.items()))))
    return engine


@pytest.mark.parametrize("conf", [{}, {EXECUTOR_GPU: "1"}, {TASK_GPU: "1"},
                                  {EXECUTOR_GPU: "1", TASK_GPU: "0"}])
def test_a_cluster_session_without_gpu_confs_says_which_at_once(conf: dict[str, str]) -> None:
    reason = fake_session("spark://127.0.0.1:7077", conf).gpu_problem()
    assert reason == (f"the Spark session gives its tasks no GPU: set {EXECUTOR_GPU} and "
                      f"{TASK_GPU} ({GPU_PROFILE} shows how)")


def test_a_local_master_asking_tasks_for_gpus_would_wait_for_ever() -> None:
    # fatal, not a reason for `auto` to fall back: CPU tasks would never start either
    with pytest.raises(SluiceError) as error:
        fake_session("local[2]", {TASK_GPU: "1", EXECUTOR_GPU: "1"}).gpu_problem()
    assert error.value.message.startswith("a local master cannot schedule GPU")
    assert f"{TASK_GPU}=1" in error.value.message


@pytest.mark.skipif(gpu_problem() is None, reason="a GPU (or the stand-in) is usable here")
def test_a_local_master_asks_a_python_worker(spark: SparkEngine) -> None:  # noqa: F811
    # the shared session's Python workers have this process's environment: no GPU
    reason = spark.gpu_problem()
    assert reason is not None and reason.startswith(gpu_problem())
    assert "(on the Spark executor of " in reason


# --------------------------------------------------------------------------- own sessions


@pytest.mark.slow
def test_local_master_computes_on_the_standin_like_the_cpu(tmp_path: Path,
                                                           cpu_model: Path) -> None:
    folder = with_data(tmp_path / "local")
    profile = write_profile(folder, "local.yaml", {"spark.executor.memory": "1g"})
    steps = train_on_gpu(folder, "local[2]", profile, **{STANDIN_ENV: "array_api_strict"})
    # a local master assigns no GPU address: the current device, the stand-in's
    assert steps["model"]["device"] == "gpu:standin"
    assert_same_model(folder / "models", cpu_model)


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone master and a worker (2 cores) on 127.0.0.1 whose one GPU is "3"."""
    folder = tmp_path_factory.mktemp("gpu-cluster")
    script = folder / "gpus.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo '{{"name": "gpu", "addresses": ["{ADDRESS}"]}}'
        """))
    script.chmod(0o755)
    options = (f"-Dspark.worker.resource.gpu.amount=1 "
               f"-Dspark.worker.resource.gpu.discoveryScript={script}")
    with standalone(folder, SPARK_WORKER_OPTS=options) as running:
        yield running


def gpu_conf(cluster: Cluster, gpus: int = 1) -> dict[str, Any]:
    return {EXECUTOR_GPU: gpus, TASK_GPU: 1, "spark.executor.cores": 1,
            "spark.executor.memory": "1g",
            "spark.executor.resource.gpu.discoveryScript": str(cluster.folder / "gpus.sh"),
            f"spark.executorEnv.{STANDIN_ENV}": "array_api_strict"}


@pytest.mark.slow
def test_the_address_spark_assigns_is_the_device_and_gives_the_cpu_model(
        gpu_cluster: Cluster, tmp_path: Path, cpu_model: Path) -> None:
    folder = with_data(tmp_path / "assigned")
    profile = write_profile(folder, "gpu.yaml", gpu_conf(gpu_cluster))
    steps = train_on_gpu(folder, gpu_cluster.url, profile)
    placed = {step: entry["device"] for step, entry in steps.items() if "device" in entry}
    assert placed["model"] == f"gpu:{ADDRESS}" and placed["standard_scale"] == f"gpu:{ADDRESS}"
    # every step with numeric kernels; one_hot works on Arrow on the host; save_model
    # puts out no rows (its profile of the training rows is a pass of its own: its time
    # counts, not its device)
    assert placed.pop("one_hot") == "cpu"
    assert "save_model" not in placed
    assert set(placed.values()) == {f"gpu:{ADDRESS}"}
    assert_same_model(folder / "models", cpu_model)


@pytest.mark.slow
def test_a_cluster_session_without_gpu_confs_fails_before_data_moves(
        gpu_cluster: Cluster, tmp_path: Path) -> None:
    folder = with_data(tmp_path / "unasked")
    profile = write_profile(folder, "plain.yaml", {"spark.executor.memory": "1g"})
    done, _ = sluice_gpu(folder, gpu_cluster.url, profile)
    assert error_line(done) == (
        f"error: device gpu was asked for, but the Spark session gives its tasks no GPU: "
        f"set {EXECUTOR_GPU} and {TASK_GPU} ({GPU_PROFILE} shows how) "
        "(use --device cpu or auto, or run where a GPU is visible)")
    assert refused(folder / "runs", "placement") and not (folder / "models").exists()


@pytest.mark.slow
def test_gpus_no_worker_has_fail_after_the_timeout_instead_of_hanging(
        gpu_cluster: Cluster, tmp_path: Path) -> None:
    folder = with_data(tmp_path / "missing")
    # a wait shorter than planning the probe's query: the job is submitted after the
    # first cancel (as on a loaded driver), and must be cancelled all the same
    profile = write_profile(folder, "two.yaml", gpu_conf(gpu_cluster, gpus=2),
                            gpu_timeout=0.05)
    done, seconds = sluice_gpu(folder, gpu_cluster.url, profile)
    line = error_line(done)
    # fatal for `auto` too: every task of the session asks for a GPU
    assert line.startswith("error: no Spark executor got a GPU within 0.05 s (0 executor(s) "
                           "registered; "), line
    assert line.endswith("(steps on the CPU would wait too: fix the GPU resources, or run "
                         "with a session that asks tasks for no GPU)"), line
    assert f"{EXECUTOR_GPU}=2" in line and f"{TASK_GPU}=1" in line
    assert seconds >= 0.05
    assert refused(folder / "runs", "placement") and not (folder / "models").exists()

