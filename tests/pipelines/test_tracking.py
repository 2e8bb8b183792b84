"""Runs logged to MLflow tracking (`sluice run --mlflow`, `sluice runs export`): real
runs logged to a real MLflow store and read back through MLflow's own client. Each test
that takes ``store`` runs twice: on MLflow's file store in the test's folder, and over
HTTP on a real tracking server (``mlflow server`` on 127.0.0.1, started once for the
module, its artifacts through its proxy), the way teams run MLflow."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from conftest import write_pipeline

from operators.base import SluiceError
from operators.processes import this_process
from pipelines import runs
from pipelines.cli import main
from pipelines.runner import ValidationFailed, run
from pipelines.tracking import Tracker, log_quietly

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TRAIN = """
    pipeline: churn_train
    params: {l2: 0.001}
    steps:
      - id: events
        op: read_parquet
        path: data/churn
      - op: one_hot
        columns: [plan]
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges, plan=basic, plan=premium]
        l2: ${l2}
        validation_fraction: 0.2
      - op: save_model
        name: churn
    """

BOOSTED = """
    pipeline: churn_boosted
    steps:
      - op: read_parquet
        path: data/churn
      - id: trees
        op: gradient_boosted_trees
        label: churned
        features: [tenure, monthly_charges]
        n_trees: 12
        max_depth: 2
        validation_fraction: 0.2
        early_stopping: true
    """


pytestmark = pytest.mark.xdist_group("mlflow")  # one tracking server for the module


@pytest.fixture
def file_store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An MLflow file store in the test's folder (MLflow 3 opens one only when asked)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (workdir / "mlruns").as_uri()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[str, Path, Path]]:
    """A real MLflow tracking server on 127.0.0.1 (``mlflow server``: one worker, a file
    backend, artifacts through its proxy), stopped at the end: (its URL, its backend
    folder, its artifacts folder)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    backend, artifacts, log = root / "mlruns", root / "artifacts", root / "server.log"
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true",
           # its job runner (a consumer process it restarts) needs a database and huey
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             backend.as_uri(), "--artifacts-destination", str(artifacts), "--host",
             "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                log.read_text()[-3000:]
            time.sleep(0.25)
        yield url, backend, artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(params=["file", pytest.param("server", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, workdir: Path) -> str:
    """Where the test's runs are tracked: a file store of its own, or the tracking
    server, emptied first (every test starts from an empty store)."""
    if request.param == "file":
        return request.getfixturevalue("file_store")
    url, backend, artifacts = request.getfixturevalue("tracking_server")
    # all but what the server made as it started: the Default experiment and the trash
    # (emptied); the file store reads its folders at each request
    for folder in (backend, backend / ".trash", artifacts):
        for entry in folder.iterdir() if folder.is_dir() else ():
            if folder != backend or entry.name not in ("0", ".trash"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return url


class Forwarder:
    """A TCP hop on 127.0.0.1 to ``target`` (host, port), for a server to be lost: while
    it runs, connections to ``port`` reach the target; once closed, they are refused."""

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target, self.held = target, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:  # closed
                return
            far = socket.create_connection(self.target)
            self.held += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.listener.close()
        self.thread.join()
        for held in self.held:
            held.close()


def _logged(uri: str, record: dict[str, Any]) -> Any:
    return MlflowClient(uri).get_run(record["mlflow"]["run_id"])


def test_a_run_is_logged_with_its_params_metrics_tags_and_record(
        churn: Path, workdir: Path, store: str) -> None:
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    record = run(path.name, mlflow=store)
    client = MlflowClient(store)
    got = _logged(store, record)
    experiment = client.get_experiment(got.info.experiment_id)
    assert experiment.name == "churn_train"
    assert got.info.status == "FINISHED" and got.info.run_name == record["run_id"]
    assert got.info.start_time == round(record["started_unix"] * 1000)
    assert got.info.end_time == got.info.start_time + round(record["seconds"] * 1000)

    params = got.data.params
    assert params["l2"] == "0.001" and params["model.l2"] == "0.001"
    assert params["model.label"] == "churned" and params["events.path"] == "data/churn"
    assert json.loads(params["model.features"]) == ["tenure", "monthly_charges",
                                                    "plan=basic", "plan=premium"]
    assert set(params) == set(runs.run_params(record))

    metrics, model = got.data.metrics, record["metrics"]["model"]
    assert metrics["model.validation.roc_auc"] == model["validation"]["roc_auc"]
    assert metrics["model.loss"] == model["loss"]
    assert metrics["model.converged"] == 1.0  # a bool as 0 or 1
    assert metrics["steps.model.rows"] == record["steps"]["model"]["rows"] == 5000
    assert metrics["seconds"] == record["seconds"]
    numbers = {k: v for k, v in runs.flat_metrics(record).items()
               if isinstance(v, int | float)}
    assert {k: metrics[k] for k in numbers} == {k: float(v) for k, v in numbers.items()}
    # the class labels and the confusion matrix are no curve: in the record only
    assert "model.validation.classes" not in metrics
    assert not any("confusion_matrix" in k for k in metrics)

    tags = got.data.tags
    assert tags["sluice.run_id"] == record["run_id"]
    assert tags["sluice.status"] == "succeeded" and tags["sluice.engine"] == "local"
    assert tags["sluice.models_saved"] == "churn@1"
    assert tags["model.solver"] == model["solver"]  # a text metric is a tag
    assert tags["mlflow.source.name"] == "train.yaml"

    artifacts = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert artifacts == {"sluice_run.json", "train.yaml", "models"}
    folder = client.download_artifacts(got.info.run_id, "sluice_run.json", str(workdir))
    logged = json.loads(Path(folder).read_text())
    assert logged["run_id"] == record["run_id"] and logged["metrics"] == record["metrics"]
    # the run record says where the run went
    saved = json.loads(Path(record["record_path"]).read_text())
    assert saved["mlflow"] == {"uri": store, "experiment_id": experiment.experiment_id,
                               "run_id": got.info.run_id}


def test_the_runs_warnings_are_a_tag(churn: Path, workdir: Path, store: str) -> None:
    path = write_pipeline(workdir, TRAIN.replace("l2: ${l2}", "max_iter: 1"), "train.yaml")
    record = run(path.name, mlflow=store)
    (warned,) = record["warnings"]
    assert "did not converge: max_iter=1 reached" in warned
    tags = _logged(store, record).data.tags
    assert tags["sluice.warnings"] == warned and "sluice.notes" not in tags
    clean = run(write_pipeline(workdir, TRAIN, "clean.yaml").name, mlflow=store)
    assert "sluice.warnings" not in _logged(store, clean).data.tags


def test_a_list_of_numbers_is_the_metrics_history(churn: Path, workdir: Path,
                                                  store: str) -> None:
    path = write_pipeline(workdir, BOOSTED, "boosted.yaml")
    record = run(path.name, mlflow=store, mlflow_experiment="trees")
    losses = record["metrics"]["trees"]["validation_losses"]
    assert len(losses) > 1
    client = MlflowClient(store)
    history = client.get_metric_history(record["mlflow"]["run_id"], "trees.validation_losses")
    assert [(m.step, m.value) for m in history] == list(enumerate(losses))
    assert client.get_experiment(record["mlflow"]["experiment_id"]).name == "trees"


def test_failed_and_refused_runs_are_logged_as_failed(churn: Path, workdir: Path,
                                                      store: str) -> None:
    folder = workdir / "runs" / "churn_train"
    refusing = write_pipeline(workdir, TRAIN.replace("l2: ${l2}", "l3: 0.1"), "typo.yaml")
    with pytest.raises(ValidationFailed):  # an unknown parameter: refused as it plans
        run(refusing.name, mlflow=store)
    (path,) = folder.glob("*.json")
    refused = json.loads(path.read_text())
    got = _logged(store, refused)
    assert got.info.status == "FAILED" and got.data.tags["sluice.failed_in"] == "validation"
    assert got.data.tags["sluice.error"] == refused["error"]
    assert "unknown parameter 'l3'" in refused["error"]
    path.unlink()

    # a feature with nulls (a label missing after one_hot is a plan-time problem now)
    failing = write_pipeline(workdir, TRAIN.replace("[tenure, monthly_charges,",
                                                    "[tenure, total_charges,"), "bad.yaml")
    with pytest.raises(SluiceError, match="feature column 'total_charges' has .* null values"):
        run(failing.name, mlflow=store)  # found as the model's step runs
    (path,) = folder.glob("*.json")
    failed = json.loads(path.read_text())
    got = _logged(store, failed)
    assert got.info.status == "FAILED" and "sluice.failed_in" not in got.data.tags
    assert got.data.tags["sluice.error"] == failed["error"]
    assert got.data.metrics["steps.events.rows"] == 5000  # what ran before it


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_does_not_answer_stops_the_run_before_any_data_moves(
        churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    uri = f"http://127.0.0.1:{_closed_port()}"
    out = CliRunner().invoke(main, ["run", path.name, "--mlflow", uri])
    assert out.exit_code == 1
    assert out.stderr.strip() == (f"error: cannot reach MLflow tracking at {uri}: connection "
                                  "refused (check the URI and that the server is up, or "
                                  "leave --mlflow off)")
    assert "Traceback" not in out.output
    assert not (workdir / "models").exists()  # nothing trained, nothing saved
    (path,) = (workdir / "runs" / "churn_train").glob("*.json")
    assert json.loads(path.read_text())["failed_in"] == "tracking"


def test_without_mlflow_installed_the_run_says_how_to_get_it(
        churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    with pytest.raises(SluiceError, match=r"MLflow is not installed") as caught:
        run(path.name, mlflow="http://127.0.0.1:5000")
    assert caught.value.hint.startswith("pip install 'sluice[mlflow]'")
    assert not (workdir / "models").exists()


def test_a_store_lost_after_the_run_started_costs_the_logging_only(
        churn: Path, workdir: Path, file_store: str) -> None:
    """The store answered when the run began and fails when the run is logged: the
    run's outcome stands, the failure is said and kept in the record."""
    store = file_store
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    record = run(path.name)
    tracker = Tracker(store)
    tracker.connect("churn_train")
    shutil.rmtree(workdir / "mlruns")  # the store's folder is now a file
    (workdir / "mlruns").write_text("not a folder")
    said: list[str] = []
    entry = log_quietly(tracker, record, None, said.append)
    assert entry["uri"] == store and "run_id" not in entry and entry["error"]
    assert said == [f"the run was not logged to MLflow at {store}: {entry['error']} "
                    f"(`sluice runs export --mlflow {store}` logs it later)"]
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.stderr.startswith(f"error: cannot use MLflow tracking at {store}: ")


@pytest.mark.slow
def test_a_server_lost_after_the_run_started_costs_the_logging_only_at_once(
        churn: Path, workdir: Path, tracking_server: tuple[str, Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracking server answered when the run began and takes no connection when the
    run is logged: the failure is said at once, where MLflow's client retried each request
    for about four minutes (here its retries are off, so that a regression fails fast:
    its message is MLflow's, not ours)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    record = run(path.name)
    host, port = urlsplit(tracking_server[0]).hostname, urlsplit(tracking_server[0]).port
    hop = Forwarder((host, port))
    uri = f"http://127.0.0.1:{hop.port}"
    tracker = Tracker(uri)
    tracker.connect("churn_train")  # through the hop, to the real server
    hop.close()  # the server is lost
    said: list[str] = []
    entry = log_quietly(tracker, record, None, said.append)
    lost = f"cannot reach MLflow tracking at {uri}: connection refused"
    assert entry == {"uri": uri, "error": lost}
    assert said == [f"the run was not logged to MLflow at {uri}: {lost} "
                    f"(`sluice runs export --mlflow {uri}` logs it later)"]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["server"], indirect=True)
def test_an_export_that_loses_the_server_part_way_says_how_far_it_got(
        churn: Path, workdir: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server goes while `sluice runs export` logs the history: the error names the
    run that was not logged and says how many were (and were there already); exporting
    again logs the rest, each run once (MLflow's retries off: a regression fails fast)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    records = [run(path.name, {"l2": l2}) for l2 in ("0.1", "0.01", "0.001")]
    logged_by = Tracker.log

    def export_losing_the_server_after_one_run() -> tuple[str, Any]:
        hop = Forwarder((urlsplit(store).hostname, urlsplit(store).port))

        def log_then_lose(self: Tracker, *args: Any, **kwargs: Any) -> dict[str, str]:
            out = logged_by(self, *args, **kwargs)
            hop.close()
            return out

        uri = f"http://127.0.0.1:{hop.port}"
        with monkeypatch.context() as patch:
            patch.setattr(Tracker, "log", log_then_lose)
            return uri, CliRunner().invoke(main, ["runs", "export", "--mlflow", uri])

    uri, out = export_losing_the_server_after_one_run()
    assert out.exit_code == 1 and "Traceback" not in out.output
    lost = f"cannot reach MLflow tracking at {uri}: connection refused"
    assert out.stderr == (
        f"error: logging run {records[1]['run_id']} to MLflow at {uri} failed: {lost} "
        "(1 run(s) were logged before it, 2 not; export again once the server answers to "
        "log the rest, each run once)\n")
    uri, out = export_losing_the_server_after_one_run()
    lost = f"cannot reach MLflow tracking at {uri}: connection refused"
    assert out.stderr.startswith(
        f"error: logging run {records[2]['run_id']} to MLflow at {uri} failed: {lost} "
        "(1 run(s) were logged before it, 1 were there already, 1 not; ")
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.stdout.strip() == f"logged 1 run(s) to MLflow at {store}; 2 already there"
    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "churn_train"]
    logged = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [r.data.tags["sluice.run_id"] for r in logged] == [r["run_id"] for r in records]


def test_export_logs_the_history_once(churn: Path, workdir: Path, store: str) -> None:
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    first = run(path.name)
    second = run(path.name, {"l2": "0.1"})
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"logged 2 run(s) to MLflow at {store}"
    again = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert again.stdout.strip() == f"logged 0 run(s) to MLflow at {store}; 2 already there"
    third = run(path.name, mlflow=store)  # logged as it ran: not exported again
    fourth = run(path.name)
    out = CliRunner().invoke(main, ["runs", "export", "churn_train", "--mlflow", store])
    assert out.stdout.strip() == f"logged 1 run(s) to MLflow at {store}; 3 already there"

    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "churn_train"]
    logged = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [r.data.tags["sluice.run_id"] for r in logged] == [
        r["run_id"] for r in (first, second, third, fourth)]
    exported, live = logged[1], logged[2]
    assert exported.data.params["model.l2"] == "0.1" and live.data.params["model.l2"] == "0.001"
    assert set(exported.data.metrics) == set(live.data.metrics)  # logged the same way
    assert exported.data.metrics["model.loss"] == second["metrics"]["model"]["loss"]

    # a running run is logged once it has ended (logged now, it would stay running or
    # be ended as it is now); a lost one is logged, failed
    gone = 2**22 + 1  # above any pid Linux gives
    for run_id, pid in (("20261201T000000Z-aaaaaa", None), ("20261201T000000Z-bbbbbb", gone)):
        process = this_process()
        runs.write({**first, "run_id": run_id, "status": "running", "outputs": [],
                    "models": [], "metrics": {}, **process,
                    "pid": process["pid"] if pid is None else pid}, str(workdir / "runs"))
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.stdout.strip() == (
        f"logged 1 run(s) to MLflow at {store}; 4 already there; 1 still running, not "
        "logged (export again once it has ended): 20261201T000000Z-aaaaaa")
    (lost,) = client.search_runs([experiment.experiment_id],
                                 "tags.`sluice.run_id` = '20261201T000000Z-bbbbbb'")
    assert (lost.info.status, lost.data.tags["sluice.status"]) == ("FAILED", "lost")


def test_the_summary_says_where_the_run_went(churn: Path, workdir: Path, store: str) -> None:
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    out = CliRunner().invoke(main, ["run", path.name, "--mlflow", store])
    assert out.exit_code == 0, out.output
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("  mlflow: ")]
    (path,) = (workdir / "runs" / "churn_train").glob("*.json")
    entry = json.loads(path.read_text())["mlflow"]
    assert line == (f"  mlflow: run {entry['run_id']} in experiment {entry['experiment_id']} "
                    f"at {store}")


def _scores(workdir: Path, ref: str) -> tuple[Any, Any]:
    """The churn rows as pandas, and sluice's own scores of them by ``ref``."""
    import pyarrow.parquet as pq

    from pipelines.serving import load_model

    rows = pq.read_table(workdir / "data" / "churn").to_pandas()
    return rows, load_model(ref, str(workdir / "models")).score(rows)


def test_a_saved_model_is_an_mlflow_model_of_its_run(churn: Path, workdir: Path,
                                                     store: str) -> None:
    """A run that saves a model logs it as an MLflow model of the run (models/<name>):
    MLflow's pyfunc loads it and answers sluice's prediction and probability."""
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    record = run(path.name, mlflow=store)
    mlflow.set_tracking_uri(store)
    loaded = mlflow.pyfunc.load_model(f"runs:/{record['mlflow']['run_id']}/models/churn")
    assert loaded.metadata.metadata == {"sluice_model": "churn@1"}
    rows, own = _scores(workdir, "churn@1")
    answer = loaded.predict(rows)
    assert list(answer.columns) == ["prediction", "probability"]
    assert answer["prediction"].tolist() == own["prediction"].tolist()
    assert answer["probability"].tolist() == own["probability"].tolist()


def test_models_export_registers_a_version_once(churn: Path, workdir: Path,
                                                store: str) -> None:
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    tracked = run(path.name, mlflow=store)  # churn@1, its run in MLflow with the model
    first = CliRunner().invoke(main, ["models", "export", "churn@1", "--mlflow", store])
    assert first.exit_code == 0, first.output
    run_id = tracked["mlflow"]["run_id"]
    assert first.stdout.strip() == (f"exported churn@1 to MLflow at {store}: run {run_id}, "
                                    "models/churn; registered as 'churn' version 1")
    again = CliRunner().invoke(main, ["models", "export", "churn", "--mlflow", store])
    assert again.stdout.strip().endswith("already registered as 'churn' version 1")

    mlflow.set_tracking_uri(store)
    rows, own = _scores(workdir, "churn@1")
    answer = mlflow.pyfunc.load_model("models:/churn/1").predict(rows)
    assert answer["probability"].tolist() == own["probability"].tolist()

    # the registry's aliases of the version are MLflow's aliases of its version
    aliased = CliRunner().invoke(main, ["models", "alias", "churn@1", "production"])
    assert aliased.exit_code == 0, aliased.output
    moved = CliRunner().invoke(main, ["models", "export", "churn@production", "--mlflow",
                                      store])
    assert moved.stdout.strip().endswith(
        "already registered as 'churn' version 1 (aliases @production)")
    assert str(MlflowClient(store).get_model_version_by_alias("churn", "production")
               .version) == "1"
    by_alias = mlflow.pyfunc.load_model("models:/churn@production").predict(rows)
    assert by_alias["probability"].tolist() == own["probability"].tolist()

    # a version trained without --mlflow: its run is logged first, with the model
    untracked = run(path.name, {"l2": "0.1"})
    out = CliRunner().invoke(main, ["models", "export", "churn@2", "--mlflow", store,
                                    "--registered-name", "churn-prod"])
    assert out.exit_code == 0, out.output
    client = MlflowClient(store)
    (logged,) = client.search_runs(
        [client.get_experiment_by_name("churn_train").experiment_id],
        filter_string=f"tags.`sluice.run_id` = '{untracked['run_id']}'")
    assert logged.data.params["model.l2"] == "0.1"
    assert f"run {logged.info.run_id}, models/churn; registered as 'churn-prod' version 1" \
        in out.stdout
    (version,) = client.search_model_versions("name='churn-prod'")
    assert version.tags["sluice.model"] == "churn@2" and version.run_id == logged.info.run_id

    # a version whose run record is gone: a run of its own
    shutil.rmtree(workdir / "runs")
    run(path.name, {"l2": "1.0"}, runs_dir=str(workdir / "elsewhere"))
    out = CliRunner().invoke(main, ["models", "export", "churn@3", "--mlflow", store,
                                    "--no-register"])
    assert out.exit_code == 0, out.output
    own_run = out.stdout.split("run ")[1].split(",")[0]
    tags = client.get_run(own_run).data.tags
    assert tags["sluice.model"] == "churn@3" and tags["mlflow.runName"] == "churn@3"
    assert client.get_run(own_run).info.status == "FINISHED"
    assert "registered" not in out.stdout
    assert [a.path for a in client.list_artifacts(own_run, "models")] == ["models/churn"]


def _evaluated_by(workdir: Path, store: str, column: str, groups: list[str],
                  labels: list[float], notify: Any = None) -> dict[str, Any]:
    """A run logged to ``store``: a linear regression of six rows, then evaluate's rmse
    by ``column`` (the ``groups``, two rows each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (workdir / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": labels,
                             column: [g for g in groups for _ in range(2)]}),
                   workdir / "data" / "rows.parquet")
    path = write_pipeline(workdir, f"""
        pipeline: by_{column}
        steps:
          - op: read_parquet
            path: data/rows.parquet
          - op: linear_regression
            label: y
            features: [x]
          - id: eval
            op: evaluate
            label: y
            metrics: [rmse]
            by: [{column}]
        """, f"by_{column}.yaml")
    return run(path.name, mlflow=store, notify=notify)


def test_a_group_named_like_a_path_is_logged_under_a_name_mlflow_takes(
        workdir: Path, store: str) -> None:
    """MLflow takes a name as a path too and refuses one that a path's normalising would
    change: an ``evaluate`` group of URLs (``source=s3://...``) made the whole run's
    logging fail (the run FAILED in MLflow, no metric there)."""
    said: list[str] = []
    record = _evaluated_by(workdir, store, "source", ["s3://a/x", "s3://b//y", "/"],
                           [1.1, 2.0, 2.9, 4.2, 5.0, 6.1], said.append)
    assert "run_id" in record["mlflow"], said
    got = _logged(store, record)
    assert got.info.status == "FINISHED"
    groups = record["metrics"]["eval"]["groups"]
    assert set(groups) == {"source=s3://a/x", "source=s3://b//y", "source=/"}
    assert got.data.metrics["eval.groups.source_s3:_/a/x.rmse"] == \
        groups["source=s3://a/x"]["rmse"]
    assert got.data.metrics["eval.groups.source_s3:_/b_/y.rmse"] == \
        groups["source=s3://b//y"]["rmse"]
    assert got.data.metrics["eval.groups.source_/.rmse"] == groups["source=/"]["rmse"]


def test_a_run_refused_as_it_plans_does_not_wait_on_a_server_that_does_not_answer(
        churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run refused before it connected (a parameter mistyped) is logged too: with no
    server answering, the refusal is said at once, with the note that it was not logged,
    where MLflow's client retried the connection for minutes first (here its retries are
    off, so that a regression fails fast: its message is MLflow's, not ours)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    refusing = write_pipeline(workdir, TRAIN.replace("l2: ${l2}", "l3: 0.1"), "typo.yaml")
    uri = f"http://127.0.0.1:{_closed_port()}"
    said: list[str] = []
    with pytest.raises(ValidationFailed):
        run(refusing.name, mlflow=uri, notify=said.append)
    (note,) = said
    assert note == (f"the run was not logged to MLflow at {uri}: cannot reach MLflow "
                    f"tracking at {uri}: connection refused (`sluice runs export --mlflow "
                    f"{uri}` logs it later)")


def test_export_logs_a_run_whose_model_was_pruned_since(churn: Path, workdir: Path,
                                                        store: str) -> None:
    """A run whose saved version was pruned before it was exported is logged as it ended
    (without the model), where the missing model.json failed the export and left the
    run FAILED in MLflow, "already there" to every export after."""
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    first = run(path.name)
    second = run(path.name, {"l2": "0.1"})
    pruned = CliRunner().invoke(main, ["models", "prune", "churn", "--keep", "1"])
    assert pruned.exit_code == 0, pruned.output
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.exit_code == 0, out.output
    client = MlflowClient(store)
    logged = {r.data.tags["sluice.run_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("churn_train").experiment_id])}
    assert {k: r.info.status for k, r in logged.items()} == {
        first["run_id"]: "FINISHED", second["run_id"]: "FINISHED"}
    assert logged[first["run_id"]].data.tags["sluice.models_saved"] == "churn@1"
    assert not client.list_artifacts(logged[first["run_id"]].info.run_id, "models")
    assert [a.path for a in client.list_artifacts(logged[second["run_id"]].info.run_id,
                                                  "models")] == ["models/churn"]


def test_the_mlflow_model_takes_contributions_as_params(churn: Path, workdir: Path,
                                                        store: str) -> None:
    """``predict(df, params={"contributions": True})`` answers the contributions as
    ``sluice serve`` does: MLflow passes params on only to a model whose signature
    declares them (without one it dropped them with a warning), and the rows' columns
    may come in any order, with others besides."""
    from pipelines.serving import load_model

    path = write_pipeline(workdir, TRAIN, "train.yaml")
    record = run(path.name, mlflow=store)
    mlflow.set_tracking_uri(store)
    loaded = mlflow.pyfunc.load_model(f"runs:/{record['mlflow']['run_id']}/models/churn")
    rows, own = _scores(workdir, "churn@1")
    shuffled = rows[list(reversed(rows.columns))].assign(extra=1)
    plain = loaded.predict(shuffled)
    assert list(plain.columns) == ["prediction", "probability"]
    assert plain["probability"].tolist() == own["probability"].tolist()
    model = load_model("churn@1", str(workdir / "models"))
    expected = model.score(rows, contributions=True)
    answer = loaded.predict(shuffled, params={"contributions": True})
    assert list(answer.columns) == list(model.outputs(contributions=True))
    assert "contributions" in answer.columns
    assert answer["contributions"].tolist() == expected["contributions"].tolist()
    cut = loaded.predict(shuffled, params={"threshold": 0.3})
    assert cut["prediction"].tolist() == model.score(rows, threshold=0.3)[
        "prediction"].tolist()
    assert cut["prediction"].sum() > plain["prediction"].sum()


def test_a_run_logged_to_another_experiment_is_there_already(churn: Path, workdir: Path,
                                                            store: str) -> None:
    """A run logged as it ran with ``--mlflow-experiment`` is found by its record's own
    ``mlflow`` entry: export (without that option) logs it no second time, and models
    export registers its model from it, where both logged a copy of the run into the
    pipeline's experiment."""
    path = write_pipeline(workdir, TRAIN, "train.yaml")
    tracked = run(path.name, mlflow=store, mlflow_experiment="team")
    out = CliRunner().invoke(main, ["runs", "export", "--mlflow", store])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"logged 0 run(s) to MLflow at {store}; 1 already there"
    exported = CliRunner().invoke(main, ["models", "export", "churn@1", "--mlflow", store])
    assert exported.exit_code == 0, exported.output
    assert f"run {tracked['mlflow']['run_id']}, models/churn" in exported.stdout
    client = MlflowClient(store)
    assert client.get_experiment_by_name("churn_train") is None or not client.search_runs(
        [client.get_experiment_by_name("churn_train").experiment_id])


def test_names_that_meet_once_mlflow_takes_them_stay_apart(churn: Path, workdir: Path,
                                                            store: str) -> None:
    """evaluate's groups by a currency column: `currency=€`, `currency=$` and
    `currency=£` are all `currency__` in the characters MLflow takes; each keeps a
    metric of its own (a hash of its name added), where a name alone is kept as is."""
    from pipelines.tracking import _keys

    record = _evaluated_by(workdir, store, "currency", ["€", "$", "£"],
                           [1.0, 2.5, 2.9, 4.4, 5.0, 6.0])
    metrics = _logged(store, record).data.metrics
    groups = record["metrics"]["eval"]["groups"]
    names = [f"eval.groups.{g}.rmse" for g in groups]
    keys = _keys(names)
    assert len(set(keys.values())) == 3
    assert {metrics[keys[n]] for n in names} == {g["rmse"] for g in groups.values()}
    assert all(keys[n].startswith("eval.groups.currency__.rmse_") for n in names)
    assert _keys(["eval.groups.region=north.rmse"]) == {
        "eval.groups.region=north.rmse": "eval.groups.region_north.rmse"}


def test_a_run_with_no_new_files_is_logged_too(workdir: Path, store: str) -> None:
    """A scheduled incremental run that found nothing new is a night in MLflow's history
    as in sluice's: finished, with its record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (workdir / "data").mkdir()
    pq.write_table(pa.table({"id": [1, 2]}), workdir / "data" / "d1.parquet")
    path = write_pipeline(workdir, """
        pipeline: inc
        steps:
          - op: read_parquet
            path: data
            incremental: true
          - op: write_parquet
            path: out
            mode: append
        """)
    run(path.name, mlflow=store)
    idle = run(path.name, mlflow=store)
    assert idle["skipped"] and idle["mlflow"]["run_id"]
    got = _logged(store, idle)
    assert got.info.status == "FINISHED" and got.data.tags["sluice.run_id"] == idle["run_id"]


def test_a_database_store_without_the_full_mlflow_says_to_install_it(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sluice[mlflow] is mlflow-skinny, whose client opens no database store: the hint
    says the full MLflow is needed, not to give the database it was given. (The tests'
    tracking server needs SQLAlchemy: it is hidden here, as a user's skinny has none.)"""
    for name in [m for m in sys.modules if m == "sqlalchemy" or m.startswith(
            ("sqlalchemy.", "mlflow.store.db", "mlflow.store.tracking.sqlalchemy"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import sqlalchemy raises
    assert importlib.util.find_spec("sqlalchemy") is None
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with pytest.raises(SluiceError) as info:
        Tracker(uri).connect("churn_train")
    assert str(info.value).startswith(f"cannot use MLflow tracking at {uri}: ")
    assert info.value.hint == (
        "a database store needs the full MLflow (pip install mlflow; sluice[mlflow] is "
        "mlflow-skinny, a tracking server's client): install it, or give a tracking server "
        "(http://host:5000), or leave --mlflow off")
