"""The Dask engine: its cluster, persisted fits, errors across processes, bounded memory,
a worker killed in the middle of a fit. The engine matrix (test_runner, test_equivalence)
checks its results against the local engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import kept_budget_fit, sluice_on_terminal, write_pipeline

from operators.base import SluiceError
from operators.io.parquet import ReadParquet
from pipelines.datagen import churn_table
from pipelines.engines.base import StepFailure
from pipelines.engines.dask import DaskEngine, load_profile
from pipelines.runner import run

DASK = str(Path(sys.executable).parent / "dask")

THREE_PASS = """
    pipeline: three
    params: {sleep: "0", signal: "", out: out}
    steps:
      - id: events
        op: read_parquet
        path: data/churn
        partition_mb: 0.02
      - id: tally
        op: sluice_dasktestops.Tally
        log: tally.log
      - id: three
        op: sluice_dasktestops.SlowThreePass
        column: monthly_charges
        sleep: ${sleep}
        signal_dir: ${signal}
      - op: write_parquet
        path: ${out}
    """


def expected_three(rows: int = 5000) -> list[float]:
    x = churn_table(rows)["monthly_charges"].to_numpy()
    return [x.mean(), x.var(), np.abs(x - x.mean()).max()]


# --------------------------------------------------------------------------- cluster


def test_local_cluster_is_described(dask_engine: DaskEngine) -> None:
    cores = os.cpu_count() or 1
    # under load a worker's missed heartbeat drops it for a moment (it comes back)
    dask_engine._client.wait_for_workers(cores, timeout=60)
    info = dask_engine.describe()
    assert info["name"] == "dask" and info["cluster"] == "LocalCluster"
    assert info["scheduler"].startswith("tcp://127.0.0.1:")
    assert info["workers"] == cores and info["threads"] == cores  # one thread per worker
    assert info["dashboard"] is None  # no bokeh here
    # glibc's adaptive malloc, not Dask's MALLOC_TRIM_THRESHOLD_=65536 (under which every
    # large NumPy temporary is fresh pages: 2.5x the CPU of a boosting fit)
    found = dask_engine._client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    assert len(found) == cores and set(found.values()) == {None}, found
    assert dask_engine._client.run(os.environ.get, "OMP_NUM_THREADS") == {
        w: "1" for w in found}  # Dask's other settings stay


@pytest.mark.parametrize("mode", ["auto", "never"], ids=["resident", "a-job-a-pass"])
def test_workers_keep_what_fits_derive_within_a_share_of_the_memory(
        dask_engine: DaskEngine, churn: Path, workdir: Path, mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a fit keeps with a worker's partitions (``cache_budget``) is a quarter of the
    worker's memory_limit (``memory_limit: auto``: the machine's over the workers), in
    a resident fit's actors as in a task a pass: not a quarter of the machine each."""
    from operators.processes import usable_memory

    cores = os.cpu_count() or 1
    dask_engine._client.wait_for_workers(cores, timeout=60)
    monkeypatch.setattr(dask_engine, "profile",
                        dask_engine.profile.model_copy(update={"resident_fits": mode}))
    record = kept_budget_fit(workdir, dask_engine)
    assert record["steps"]["fit"]["fit_mode"] == (
        f"resident, {cores} workers" if mode == "auto" else "one job a pass")
    limit = usable_memory() // cores  # Dask's auto: the memory over the workers
    assert record["metrics"]["fit"] == {"passes": 1, "processes": cores,
                                        "budgets": [limit // 4]}


def test_profile_gives_defaults_and_arguments_win(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    profile = tmp_path / "dask.yaml"
    profile.write_text("scheduler: tcp://10.0.0.1:8786\nworkers: 3\nmemory_limit: 2GiB\n")
    engine = DaskEngine(profile=profile)
    assert (engine.scheduler, engine.workers, engine.memory_limit) == (
        "tcp://10.0.0.1:8786", 3, "2GiB")
    assert engine.describe()["scheduler"] == "tcp://10.0.0.1:8786"  # before start: no I/O
    monkeypatch.setenv("SLUICE_DASK_PROFILE", str(profile))
    engine = DaskEngine(scheduler="tcp://10.0.0.2:8786", workers=1)
    assert (engine.scheduler, engine.workers, engine.threads_per_worker) == (
        "tcp://10.0.0.2:8786", 1, 1)
    monkeypatch.delenv("SLUICE_DASK_PROFILE")
    monkeypatch.chdir(tmp_path)  # no conf/engines/dask.yaml here: the defaults
    assert load_profile().scheduler is None and load_profile().memory_limit == "auto"
    profile.write_text("workers: 2\nmemory: 4GiB\n")
    with pytest.raises(SluiceError, match=r"dask.yaml:2: Dask profile: 'memory': unknown key; "
                                          r"did you mean 'memory_limit'\?.*keys: "):
        load_profile(profile)
    with pytest.raises(SluiceError, match="Dask profile .* not found"):
        load_profile(tmp_path / "absent.yaml")


def test_workers_must_have_the_drivers_sluice(dask_engine: DaskEngine,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "9.9" if name == "sluice" else real(name))
    with pytest.raises(SluiceError) as info:
        dask_engine._check_workers()
    text = str(info.value)
    assert f"has sluice {real('sluice')}, not 9.9" in text
    assert f"({os.cpu_count()} of {os.cpu_count()} workers)" in text
    assert "install sluice and the pipeline's operator packages" in text


def test_a_worker_that_joined_with_another_sluice_fails_its_tasks(
        dask_engine: DaskEngine, churn: Path, workdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers are checked at start; every task checks the one it runs on, so a worker
    that joined the cluster later with another sluice cannot compute with it."""
    from importlib.metadata import version

    from pipelines.engines import dask as engine_module

    monkeypatch.setattr(engine_module, "_sluice_version", lambda: "9.9")  # the driver's
    path = write_pipeline(workdir, """
        pipeline: joined
        steps:
          - op: read_parquet
            path: data/churn
          - op: write_parquet
            path: out
        """)
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=dask_engine)
    text = str(info.value)
    assert f"has sluice {version('sluice')}, not the driver's 9.9 (it joined the cluster " \
           "after the run started)" in text
    assert "Dask worker tcp://127.0.0.1:" in text
    assert not (workdir / "out").exists()


def test_unreachable_scheduler_is_one_clear_error() -> None:
    engine = DaskEngine(scheduler="tcp://127.0.0.1:9", timeout=1)
    with pytest.raises(SluiceError, match=r"cannot reach the Dask scheduler at tcp://127"):
        engine.start()
    engine.close()


@pytest.mark.parametrize("progress", [True, False])
def test_the_wait_for_a_scheduler_is_said_once_where_progress_is_shown(
        progress: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """With progress (a terminal), one line says what the run waits for as the wait
    starts; without (a scheduled job's log), the error alone."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = DaskEngine(scheduler=f"tcp://127.0.0.1:{port}", timeout=2.5, progress=progress)
    with pytest.raises(SluiceError, match="Connection refused"):
        engine.start()
    engine.close()
    said = capsys.readouterr().err.splitlines()
    assert said == ([f"waiting for the Dask scheduler at tcp://127.0.0.1:{port} (127.0.0.1:"
                     f"{port}: Connection refused): trying again for up to 2.5 s (timeout "
                     "in conf/engines/dask.yaml)"] if progress else [])


def test_a_port_that_is_no_scheduler_is_one_clear_error() -> None:
    """A server that takes the connection and says nothing (the dashboard's port, a web
    server): Dask's client would wait for ever; sluice says what it found."""
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        engine = DaskEngine(scheduler=f"tcp://127.0.0.1:{port}", timeout=2)
        with pytest.raises(SluiceError) as info:
            engine.start()
        engine.close()
    assert time.monotonic() - started < 20
    assert (f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}: 127.0.0.1:{port} "
            "takes connections but says nothing") in info.value.message
    assert "8786 by default (8787 is its dashboard)" in info.value.hint


# --------------------------------------------------------------------------- data


def test_collect_keeps_partition_order(churn: Path, dask_engine: DaskEngine) -> None:
    source = ReadParquet(path=str(churn), partition_mb=0.02)
    dask_engine.begin_run()
    table = dask_engine.collect(dask_engine.read(source, "read", source.schema()))
    assert len(source.partitions()) > 3
    assert table.equals(churn_table(5000).cast(table.schema))


def test_multi_pass_fit_reads_each_partition_once(churn: Path, workdir: Path,
                                                  dask_engine: DaskEngine) -> None:
    path = write_pipeline(workdir, THREE_PASS)
    record = run(path, engine_instance=dask_engine)
    metrics = record["metrics"]["three"]
    assert metrics["passes"] == 3
    np.testing.assert_allclose([metrics["mean"], metrics["var"], metrics["maxdev"]],
                               expected_three(), rtol=1e-12)
    # the persisted partitions served three passes and the write: one tally each
    tallies = [int(n) for n in (workdir / "tally.log").read_text().split()]
    partitions = len(dask_engine.stats["events"].rows_by_partition)
    assert partitions > 3 and len(tallies) == partitions and sum(tallies) == 5000
    assert dask_engine.stats["tally"].rows_by_partition == \
        dask_engine.stats["events"].rows_by_partition
    steps = record["steps"]
    assert steps["events"]["rows"] == steps["tally"]["rows"] == 5000
    assert steps["write_parquet"]["rows"] == 5000
    assert record["engine"]["cluster"] == "LocalCluster"
    assert record["engine"]["scheduler"].startswith("tcp://127.0.0.1:")
    ids = pq.read_table(workdir / "out")["customer_id"].to_numpy()
    np.testing.assert_array_equal(np.sort(ids), np.arange(5000))


# --------------------------------------------------------------------------- errors

UNPICKLABLE = """
    pipeline: grumpy
    steps:
      - op: read_parquet
        path: data/churn
      - id: grump
        op: sluice_dasktestops.GrumpyFailure
        at_partition_with: 4000
      - op: write_parquet
        path: out
    """


def test_exception_that_does_not_pickle_still_names_step_and_partition(
        churn: Path, workdir: Path, dask_engine: DaskEngine) -> None:
    path = write_pipeline(workdir, UNPICKLABLE)
    with pytest.raises(StepFailure) as info:
        run(path, engine_instance=dask_engine)
    failure = info.value
    assert failure.step == "grump" and "part-00002.parquet" in failure.where
    assert isinstance(failure.error, RuntimeError)
    assert "sluice_dasktestops.Grumpy: grumpy (code 7)" in str(failure.error)
    notes = "\n".join(failure.error.__notes__)
    assert "Dask worker traceback (most recent call last)" in notes
    assert "sluice_dasktestops.py" in notes
    assert "raise Grumpy" in notes
    assert not (workdir / "out").exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]


def test_operator_module_missing_on_the_workers(churn: Path, workdir: Path,
                                                dask_engine: DaskEngine,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # only the driver can import this module: the workers were started before it existed
    (workdir / "driver_only_ops.py").write_text(textwrap.dedent("""
        from sluice_testops import Passthrough

        class Nothing(Passthrough):
            pass
        """))
    monkeypatch.syspath_prepend(str(workdir))
    path = write_pipeline(workdir, """
        pipeline: missing
        steps:
          - op: read_parquet
            path: data/churn
          - op: driver_only_ops.Nothing
          - op: write_parquet
            path: out
        """)
    started = time.perf_counter()
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=dask_engine)
    text = str(info.value)
    assert "step 'write_parquet', partition 0" in text
    assert "cannot load the steps: ModuleNotFoundError" in text and "driver_only_ops" in text
    assert "install sluice and the pipeline's operator packages" in text
    assert time.perf_counter() - started < 30
    assert not (workdir / "out").exists()
    # the workers are unharmed
    record = run(write_pipeline(workdir, THREE_PASS), engine_instance=dask_engine)
    assert record["status"] == "succeeded"


# --------------------------------------------------------------------------- memory


def wide_dataset(folder: Path, groups: int, rows: int = 10_000) -> int:
    """Row groups of ``rows`` rows with a 1 kB string each (tiny on disk thanks to the
    dictionary, 10 MB decoded); returns the decoded size in bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    note = pa.array(["n" * 1000] * rows)
    decoded = 0
    with pq.ParquetWriter(folder / "wide.parquet", pa.schema([
            ("customer_id", pa.int64()), ("x0", pa.float64()), ("x1", pa.float64()),
            ("y", pa.float64()), ("note", pa.string())])) as writer:
        for g in range(groups):
            x = rng.standard_normal((rows, 2))
            table = pa.table({
                "customer_id": np.arange(g * rows, (g + 1) * rows),
                "x0": x[:, 0], "x1": x[:, 1],
                "y": 2 * x[:, 0] - x[:, 1] + 0.1 * rng.standard_normal(rows), "note": note})
            decoded += table.nbytes
            writer.write_table(table)
    return decoded


@pytest.mark.slow
def test_scoring_more_data_than_the_workers_memory(workdir: Path) -> None:
    limit = 400 * 2**20
    decoded = wide_dataset(workdir / "wide", groups=48)
    assert decoded > 1.1 * limit
    sample = workdir / "sample"
    sample.mkdir()
    pq.write_table(pq.ParquetFile(workdir / "wide" / "wide.parquet").read_row_group(0),
                   sample / "part.parquet")
    run(write_pipeline(workdir, """
        pipeline: wide_train
        steps:
          - op: read_parquet
            path: sample
            columns: [x0, x1, y]
          - op: linear_regression
            label: y
          - op: save_model
            name: wide
        """, "train.yaml"))
    engine = DaskEngine(workers=1, memory_limit=limit)
    with engine:
        pids = engine._client.run(os.getpid)
        record = run(write_pipeline(workdir, """
            pipeline: wide_score
            steps:
              - op: read_parquet
                path: wide
                partition_mb: 0.001
              - op: score
                model: wide
              - op: write_parquet
                path: scores
            """, "score.yaml"), engine_instance=engine)
        # the nanny restarts a worker that passes 95% of its limit: none was
        assert engine._client.run(os.getpid) == pids
        assert engine.describe()["memory_limit"] == limit
    assert record["outputs"][0]["rows"] == 480_000
    scores = pq.read_table(workdir / "scores", columns=["x0", "x1", "prediction"])
    x0, x1 = scores["x0"].to_numpy(), scores["x1"].to_numpy()
    np.testing.assert_allclose(scores["prediction"].to_numpy(), 2 * x0 - x1, atol=0.05)


# --------------------------------------------------------------------------- faults


@pytest.fixture
def cli_cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A `dask scheduler` and two `dask worker` processes (no nanny) on 127.0.0.1;
    every process is killed at the end, however the test ends."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "cluster-logs"
    logs.mkdir()

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([DASK, *args], cwd=tmp_path, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        scheduler_file = tmp_path / "scheduler.json"
        spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
              "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(scheduler_file))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [spawn(f"worker{i}", "worker", address, "--nthreads", "1", "--no-nanny",
                         "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0",
                         "--name", f"w{i}") for i in range(2)]
        yield {"address": address, "workers": workers, "logs": logs}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait(timeout=30)


@pytest.mark.slow
def test_worker_killed_in_the_middle_of_a_fit(churn: Path, workdir: Path,
                                               cli_cluster: dict[str, Any]) -> None:
    path = write_pipeline(workdir, THREE_PASS)
    reference = run(path, {"out": "reference"}, engine="local")["metrics"]["three"]
    signals = workdir / "signals"
    signals.mkdir()
    victim = cli_cluster["workers"][0]
    killed: list[float] = []

    def kill_in_second_pass() -> None:
        deadline = time.monotonic() + 120
        while not (signals / "pass-1").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        killed.append(time.monotonic())

    engine = DaskEngine(scheduler=cli_cluster["address"], timeout=60)
    with engine:
        engine._client.wait_for_workers(2, timeout=60)
        assert engine.describe()["cluster"] == "attached"
        killer = threading.Thread(target=kill_in_second_pass, daemon=True)
        killer.start()
        record = run(path, {"sleep": "0.06", "signal": str(signals)}, engine_instance=engine)
        killer.join(timeout=5)
        finished = time.monotonic()
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert killed and killed[0] < finished
        # the survivor stays (under load a missed heartbeat can drop it for a moment:
        # it comes back by itself), the victim does not
        engine._client.wait_for_workers(1, timeout=30)
        assert engine.describe()["workers"] == 1
    # the victim held persisted partitions: they were computed again from the source
    scheduler_log = (cli_cluster["logs"] / "scheduler.log").read_text()
    assert "lose already computed task(s)" in scheduler_log and "sluice-persist-" in \
        scheduler_log, scheduler_log
    # the resident fit lost its actor on the victim and fitted again, a job a pass
    mode = record["steps"]["three"]["fit_mode"]
    assert mode.startswith("one job a pass (the resident fit failed: "), mode
    metrics = record["metrics"]["three"]
    assert metrics["passes"] == 3
    for key in ("mean", "var", "maxdev"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-12), key
    assert record["steps"]["write_parquet"]["rows"] == 5000
    assert pq.read_table(workdir / "out").num_rows == 5000


# --------------------------------------------------------------------------- progress


@pytest.mark.slow
def test_cli_attaches_to_a_scheduler_with_a_progress_bar(churn: Path, workdir: Path,
                                                         cli_cluster: dict[str, Any]) -> None:
    path = write_pipeline(workdir, THREE_PASS)
    code, text = sluice_on_terminal(
        ["run", str(path), "--engine", "dask", "--scheduler", cli_cluster["address"],
         "--runs", str(workdir / "runs")], workdir)
    assert code == 0, text
    assert "three: pass 2" in text and "partitions" in text and "ETA" in text, text
    (record_path,) = (workdir / "runs" / "three").glob("*.json")
    engine = json.loads(record_path.read_text())["engine"]
    assert engine["name"] == "dask" and engine["cluster"] == "attached"
    assert engine["scheduler"] == cli_cluster["address"] and engine["workers"] == 2


def test_the_hub_for_resident_passes_is_where_the_scheduler_is_reached_from() -> None:
    """Actors connect back to the driver's hub at the address this machine reaches the
    scheduler from; a TLS scheduler gets no hub (its plain TCP would carry in clear what
    the cluster encrypts): the passes go by actor calls."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert DaskEngine(scheduler=f"tcp://127.0.0.1:{port}", timeout=2)._driver_host() \
            == ("127.0.0.1", "")
        host, why = DaskEngine(scheduler=f"tls://127.0.0.1:{port}", timeout=2)._driver_host()
        assert host is None and "not plain TCP" in why
    host, why = DaskEngine(scheduler=f"tcp://127.0.0.1:{port}", timeout=2)._driver_host()
    assert host is None and "address toward the scheduler is unknown" in why
    assert DaskEngine()._driver_host() == ("127.0.0.1", "")  # our own LocalCluster
