"""A real Spark standalone cluster on 127.0.0.1 (one master, one worker, started here):
pipelines submitted with ``spark-submit`` and run with ``sluice run --master``.

What the tests prove about "workers that only have pyspark, numpy and pyarrow": the
executors (and, under spark-submit, the driver) run ``bare-python``, this venv's
interpreter started with ``-S`` (no site-packages) and a ``PYTHONPATH`` holding only
numpy, pyarrow, pyspark and py4j; the fixture checks that it cannot import pydantic,
PyYAML, click, pandas or sluice. So every other module comes from the archive that
``pipelines/package.py`` builds, extracted by the executors themselves; the probe
operator records where pydantic was imported from on each executor. The worker is on
this machine, so the interpreter binary and the standard library are shared with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest
from conftest import ROOT

from operators.testing.kit import assert_tables_close
from pipelines.package import build, dependency_closure
from pipelines.runner import run
from pipelines.store import ModelStore

# one worker runs the module under pytest-xdist (-n 2): its standalone cluster starts once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("spark_submit")]

VENV_BIN = Path(sys.executable).parent
SITE = Path(np.__file__).resolve().parent.parent
SPARK_HOME = Path(pyspark.__file__).resolve().parent
BARE_MODULES = ("numpy", "numpy.libs", "pyarrow", "pyarrow.libs", "pyspark", "py4j")
DATA = "data/churn/ds=2026-11-28"

PROBE = '''
"""Operators of the cluster tests (a user's module, shipped with --py-files/py_files)."""

import json
import os
import signal
import sys
from typing import Any

import pyarrow as pa
from pydantic import Field

from operators.base import DataError, Params, Transform


class ProbeParams(Params):
    log: str = Field(description="file that gets one JSON line per partition attempt")
    fail_on: int | None = Field(None, description="a customer_id whose partition is bad data")


class Probe(Transform):
    """Records where this executor imports from; optionally fails on bad data."""

    Params = ProbeParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        import pydantic
        from pyspark import TaskContext

        ids = part["customer_id"].to_pylist() if "customer_id" in part.column_names else []
        context = TaskContext.get()
        line = {"python": sys.executable, "no_site": sys.flags.no_site,
                "pydantic": pydantic.__file__, "rows": part.num_rows,
                "attempt": context.attemptNumber() if context else None,
                "bad": self.params.fail_on in ids}
        with open(self.params.log, "a") as f:
            f.write(json.dumps(line) + "\\n")
        if self.params.fail_on in ids:
            raise DataError(f"customer {self.params.fail_on} is not allowed here",
                            hint="remove it from the input")
        return part


class FlakyParams(Params):
    markers: str = Field(description="folder of markers: each failure happens once")
    raise_on: int = Field(description="first attempt on the partition with this id raises")
    crash_on: int = Field(description="first attempt on the partition with this id dies")


class Flaky(Transform):
    """Fails the first attempt of two partitions: an exception, then a dead worker."""

    Params = FlakyParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def _first_time(self, name: str) -> bool:
        try:
            os.close(os.open(os.path.join(self.params.markers, name),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        ids = set(part["customer_id"].to_pylist())
        if self.params.raise_on in ids and self._first_time("raised"):
            raise OSError("transient: the disk blinked")
        if self.params.crash_on in ids and self._first_time("crashed"):
            os.kill(os.getpid(), signal.SIGKILL)
        return part
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would let Python find this project."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_", "SPARK_", "SLUICE_", "PYTHON"))
           or k == "SPARK_CONF_DIR"}  # the tests' JVM options (tests/spark-conf)
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"'{text}' not in {log}:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Cluster:
    url: str
    folder: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process of this cluster's apps: sluice extracts its
        archive under the cluster's folder (the worker passes it to its executors)."""
        return clean_env(SLUICE_ARCHIVE_DIR=str(self.folder / "extracted"), **extra)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter like a bare cluster node's: pyspark, numpy and pyarrow only."""
    folder = tmp_path_factory.mktemp("bare")
    site = folder / "site"
    site.mkdir()
    for name in BARE_MODULES:
        if (SITE / name).exists():
            (site / name).symlink_to(SITE / name)
    script = folder / "bare-python"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # a node with only pyspark, numpy and pyarrow: no site-packages, no sluice
        PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} -S "$@"
        """))
    script.chmod(0o755)
    env = clean_env()
    ok = subprocess.run([script, "-c", "import numpy, pyarrow, pyspark, py4j"], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    for module in ("pydantic", "yaml", "click", "pandas", "pipelines", "operators", "fsspec"):
        missing = subprocess.run([script, "-c", f"import {module}"], env=env, cwd=folder,
                                 capture_output=True, text=True)
        assert missing.returncode != 0, f"the bare python imports {module}"
    return script


@contextlib.contextmanager
def standalone(folder: Path, **worker_env: str) -> Iterator[Cluster]:
    """A standalone master and one worker (2 cores) on 127.0.0.1, stopped on exit;
    ``worker_env``: the worker's environment (SPARK_WORKER_OPTS, ...)."""
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(VENV_BIN / "spark-class")
    started: list[subprocess.Popen[bytes]] = []
    try:
        master_log = folder / "master.log"
        with master_log.open("wb") as out:
            started.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(free_port())],
                env=clean_env(SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false"),
                stdout=out, stderr=subprocess.STDOUT, cwd=folder))
        wait_for(master_log, "I have been elected leader", started[-1])
        worker_log = folder / "worker.log"
        with worker_log.open("wb") as out:
            started.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url,
                 "--host", "127.0.0.1", "--webui-port", str(free_port()), "--cores", "2",
                 "--memory", "2g", "--work-dir", str(folder / "work")],
                env=clean_env(**worker_env), stdout=out, stderr=subprocess.STDOUT,
                cwd=folder))
        wait_for(worker_log, "Successfully registered with master", started[-1])
        yield Cluster(url, folder)
    finally:
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone master and one worker (2 cores) on 127.0.0.1, stopped at the end."""
    folder = tmp_path_factory.mktemp("cluster")
    with standalone(folder, SLUICE_ARCHIVE_DIR=str(folder / "extracted")) as running:
        yield running


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: the demo data, the archive, the probe module, pipelines."""
    folder = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "data" / "churn", folder / "data" / "churn")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "cluster_probe.py").write_text(PROBE)
    build(folder / "dist")
    return folder


def pipeline(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


TRAIN = """
    pipeline: churn_train
    steps:
      - id: events
        op: read_parquet
        path: {data}
        columns: [customer_id, tenure, plan, region, monthly_charges, total_charges, churned]
        filter: "tenure >= 0 and region != 'test'"
        partition_mb: 0.05
      - op: drop
        columns: [customer_id]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - id: model
        op: logistic_regression
        label: churned
        l2: 0.001
      - op: save_model
        name: churn
      {extra}
    """

SCORE = """
    pipeline: churn_score
    steps:
      - id: customers
        op: read_parquet
        path: {data}
        partition_mb: 0.05
      {extra}
      - id: scores
        op: score
        model: churn
      - op: write_parquet
        path: {out}
    """


def step(text: str) -> str:
    return textwrap.indent(textwrap.dedent(text).strip(), "      ").lstrip()


def records(folder: Path, pipeline_name: str) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((folder / pipeline_name).glob("*.json"), key=os.path.getmtime)]


def probe_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def assert_bare_executors(lines: list[dict], cluster: Cluster) -> None:
    assert lines
    for line in lines:
        assert line["no_site"] == 1, line
        # pydantic (compiled pydantic_core) came from the archive the executor extracted
        assert line["pydantic"].startswith(str(cluster.folder / "extracted" / "code-")), line


def local_reference(project: Path, tag: str) -> tuple[dict, pa.Table]:
    """The same training and scoring on the local engine, in this process."""
    folder = project / f"local-{tag}"
    folder.mkdir()
    train = pipeline(folder, "train.yaml",
                     TRAIN.format(data=project / DATA, extra=""))
    score = pipeline(folder, "score.yaml", SCORE.format(
        data=project / DATA, extra="", out=folder / "scores"))
    run(train, models=str(folder / "models"), runs_dir=str(folder / "runs"))
    run(score, models=str(folder / "models"), runs_dir=str(folder / "runs"))
    model = ModelStore(str(folder / "models")).load("churn")
    return model.chain.steps[-1].state()[1], pq.read_table(folder / "scores")


def spark_submit(cluster: Cluster, project: Path, bare: Path, *args: str,
                 conf: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    command = [str(VENV_BIN / "spark-submit"), "--master", cluster.url,
               "--py-files", f"{project / 'dist' / 'sluice.zip'},"
                             f"{project / 'plugins' / 'cluster_probe.py'}",
               "--conf", "spark.executor.memory=1g"]
    for item in conf:
        command += ["--conf", item]
    command += [str(project / "dist" / "sluice_submit.py"), *args]
    env = cluster.env(PYSPARK_PYTHON=str(bare), PYSPARK_DRIVER_PYTHON=str(bare))
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                          timeout=400)


def test_the_archive_carries_the_dependencies_a_bare_node_lacks_but_scipy() -> None:
    """sluice's dependencies go in the archive, but what a bare Spark node has and
    SciPy (over 100 MB; the tree histograms fall back to NumPy's bincount without it)."""
    names = {d.metadata["Name"].lower().replace("_", "-") for d in dependency_closure()}
    assert {"pydantic", "pydantic-core", "pyyaml", "datasketches", "fsspec"} <= names
    assert not names & {"numpy", "pyarrow", "pyspark", "py4j", "scipy"}


def test_spark_submit_trains_and_scores_on_bare_workers(cluster: Cluster, project: Path,
                                                        bare_python: Path) -> None:
    (project / "conf" / "engines").mkdir(parents=True)
    (project / "conf" / "engines" / "spark.yaml").write_text(textwrap.dedent("""
        master: local[1]                      # ignored: spark-submit's master wins
        conf:
          spark.sql.shuffle.partitions: 7     # spark-submit's --conf wins
          spark.sql.execution.arrow.maxRecordsPerBatch: 4096
        """))
    log = project / "probe-submit.log"
    markers = project / "markers"
    markers.mkdir()
    train = pipeline(project, "train.yaml", TRAIN.format(data=DATA, extra=step(f"""
        - op: cluster_probe.Probe
          log: {log}
        """)))
    done = spark_submit(cluster, project, bare_python, "run", str(train), "--models", "models",
                        "--runs", "runs", conf=("spark.sql.shuffle.partitions=3",))
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    assert "churn_train' on spark: succeeded" in done.stdout
    (record,) = records(project / "runs", "churn_train")
    engine = record["engine"]
    assert engine["mode"] == "spark-submit" and engine["master"] == cluster.url
    assert engine["task_attempts"] == 4
    assert engine["conf"]["spark.sql.shuffle.partitions"] == "3"
    assert engine["conf"]["spark.sql.execution.arrow.maxRecordsPerBatch"] == "4096"
    # the fit ran as one barrier job whose tasks (on bare workers) kept their partitions
    assert record["steps"]["model"]["fit_mode"].startswith("resident, ")
    assert_bare_executors(probe_lines(log), cluster)

    # scoring, with one task attempt raising and another losing its Python worker
    score = pipeline(project, "score.yaml", SCORE.format(data=DATA, out="scores", extra=step(f"""
        - op: cluster_probe.Flaky
          markers: {markers}
          raise_on: 10
          crash_on: 4000
        """)))
    done = spark_submit(cluster, project, bare_python, "run", str(score), "--models", "models",
                        "--runs", "runs")
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    assert sorted(p.name for p in markers.iterdir()) == ["crashed", "raised"]  # both failed once
    (record,) = records(project / "runs", "churn_score")
    assert record["status"] == "succeeded"

    expected_model, expected_scores = local_reference(project, "submit")
    got_model = ModelStore(str(project / "models")).load("churn").chain.steps[-1].state()[1]
    for key, value in expected_model.items():
        np.testing.assert_allclose(got_model[key], value, rtol=1e-7, atol=1e-10, err_msg=key)
    out = project / "scores"
    scores = pq.read_table(out)
    assert_tables_close(scores.sort_by("customer_id"), expected_scores.sort_by("customer_id"),
                        rtol=1e-7, atol=1e-10, what="scores")
    manifest = json.loads((out / "_SUCCESS").read_text())
    data_files = sorted(p.name for p in out.glob("*.parquet"))
    assert sorted(manifest["files"]) == data_files  # retried attempts left nothing extra
    assert not (out / "_temporary").exists()
    assert record["outputs"][0]["rows"] == scores.num_rows


SUMMARY = """
    pipeline: churn_summary
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.05
      {extra}
      - op: join
        path: {regions}
        on: [region]
        strategy: shuffle
      - id: summary
        op: aggregate
        by: [region, plan]
        partitions: 3
        columns:
          customers: count()
          tax: max(tax_rate)
          churn_rate: mean(churned)
          charges: sum(monthly_charges)
          sd_tenure: std(tenure)
          newest: max_by(customer_id, signup_date)
      - op: write_parquet
        path: {out}
    """


def test_spark_submit_aggregates_on_bare_workers_through_retries(
        cluster: Cluster, project: Path, bare_python: Path) -> None:
    """A shuffle join's and an aggregate's shuffle files are written by the executors of
    bare workers (the archive carries the runtime) and read back by others; a write
    attempt that raised or died is redone over its own files; the result is the local
    engine's."""
    folder = project / "summary-run"
    markers = folder / "markers"
    markers.mkdir(parents=True)
    regions = folder / "regions.parquet"
    pq.write_table(pa.table({"region": ["north", "south", "east"],
                             "tax_rate": [0.2, 0.1, 0.15]}), regions)
    summary = pipeline(folder, "summary.yaml", SUMMARY.format(
        data=project / DATA, out=folder / "out", regions=regions, extra=step(f"""
        - op: cluster_probe.Flaky
          markers: {markers}
          raise_on: 10
          crash_on: 4000
        """)))
    scratch = folder / "scratch"
    done = spark_submit(cluster, project, bare_python, "run", str(summary), "--runs",
                        str(folder / "runs"), "--scratch", str(scratch))
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    assert sorted(p.name for p in markers.iterdir()) == ["crashed", "raised"]
    (record,) = records(folder / "runs", "churn_summary")
    assert record["steps"]["summary"]["shuffle"]["partitions"] == 3
    assert record["steps"]["join"]["shuffle"]["table_rows"] == 3
    assert scratch.is_dir() and not list(scratch.iterdir())
    local = pipeline(folder, "local.yaml", SUMMARY.format(
        data=project / DATA, out=folder / "local", regions=regions, extra=""))
    run(local, runs_dir=str(folder / "runs-local"))
    got, want = (pq.read_table(folder / name) for name in ("out", "local"))
    assert got.num_rows == want.num_rows > 10
    order = [("region", "ascending"), ("plan", "ascending")]
    assert_tables_close(got.sort_by(order), want.sort_by(order), rtol=1e-12, atol=1e-12,
                        what="summary")


def test_master_flag_ships_sluice_to_bare_workers(cluster: Cluster, project: Path,
                                                  bare_python: Path) -> None:
    log = project / "probe-master.log"
    profile = project / "cluster.yaml"
    profile.write_text(f"py_files: [{project / 'plugins' / 'cluster_probe.py'}]\n")
    folder = project / "master-run"
    folder.mkdir()
    train = pipeline(folder, "train.yaml", TRAIN.format(
        data=project / DATA, extra=step(f"""
        - op: cluster_probe.Probe
          log: {log}
        """)))
    env = cluster.env(PYSPARK_PYTHON=str(bare_python), SLUICE_SPARK_PROFILE=str(profile),
                      PYTHONPATH=str(project / "plugins"))  # the driver imports the probe too
    done = subprocess.run(
        [str(VENV_BIN / "sluice"), "run", str(train), "--engine", "spark", "--master",
         cluster.url, "--models", str(folder / "models"), "--runs", str(folder / "runs")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr[-5000:]
    (record,) = records(folder / "runs", "churn_train")
    assert record["engine"]["mode"] == "session" and record["engine"]["master"] == cluster.url
    assert_bare_executors(probe_lines(log), cluster)
    expected_model, _ = local_reference(project, "master")
    got = ModelStore(str(folder / "models")).load("churn").chain.steps[-1].state()[1]
    for key, value in expected_model.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-7, atol=1e-10, err_msg=key)


def test_user_error_on_a_cluster_is_one_line_and_not_retried(cluster: Cluster, project: Path,
                                                             bare_python: Path) -> None:
    log = project / "probe-error.log"
    profile = project / "cluster-error.yaml"
    profile.write_text(f"py_files: [{project / 'plugins' / 'cluster_probe.py'}]\n")
    folder = project / "error-run"
    folder.mkdir()
    bad = pipeline(folder, "bad.yaml", f"""
        pipeline: bad_data
        steps:
          - id: events
            op: read_parquet
            path: {project / DATA}
            partition_mb: 0.05
          - id: check
            op: cluster_probe.Probe
            log: {log}
            fail_on: 1234
          - op: write_parquet
            path: {folder / "out"}
        """)
    env = cluster.env(PYSPARK_PYTHON=str(bare_python), SLUICE_SPARK_PROFILE=str(profile),
                      PYTHONPATH=str(project / "plugins"))
    done = subprocess.run(
        [str(VENV_BIN / "sluice"), "run", str(bad), "--engine", "spark", "--master",
         cluster.url, "--runs", str(folder / "runs")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"error: {bad}:7: step 'check', partition "), errors[0]
    assert "customer 1234 is not allowed here (remove it from the input)" in errors[0]
    for stack in ("Traceback", "\tat org.apache", "Py4JJavaError", "PythonException"):
        assert stack not in done.stderr
    lines = probe_lines(log)
    assert [line["attempt"] for line in lines if line["bad"]] == [0]  # no retry of bad data
    assert_bare_executors(lines, cluster)
    assert not (folder / "out").exists()
    assert not [p for p in folder.iterdir() if ".sluice-tmp-" in p.name]
