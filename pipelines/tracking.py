"""Runs logged to MLflow tracking (``sluice run --mlflow URI``, ``sluice runs export``).

A team whose runs are tracked in MLflow sees a sluice run there as any other: one MLflow
run per sluice run, in the experiment named after the pipeline (or ``--mlflow-experiment``),
named by the run id and tagged ``sluice.run_id``. It holds

- params: the pipeline's params and each step's parameters as the step set them,
  ``<step>.<parameter>`` (``runs.run_params``, what ``sluice runs compare`` compares);
- metrics: every number the run record has, by the dotted names ``sluice runs``
  prints (``model.validation.roc_auc``; a list of numbers, such as boosting's
  ``validation_losses``, as the metric's history, a step per round), each step's rows and
  compute seconds (``steps.<step>.rows``) and the run's ``seconds``;
- tags: status, engine, device, pipeline file, the models saved (``churn@3``) and used,
  the error of a failed run, its warnings and notes (a line each, as the run said them),
  and the text metrics (a solver's name);
- artifacts: the run record (``sluice_run.json``) and the pipeline file.

The MLflow run starts and ends when the sluice run did, and ends FINISHED, FAILED or
KILLED (interrupted). The record is logged once the run has ended, from the record alone,
so ``sluice runs export`` logs the history of runs made before the same way (a run
already there, by its ``sluice.run_id`` tag, is left as it is).

MLflow is an optional dependency (``pip install 'sluice[mlflow]'``: mlflow-skinny); it
is imported only when asked for. ``--mlflow`` that cannot be used (no MLflow, a server
that does not answer) fails before any data moves; a server lost while the run ran costs
the logging only (a warning, the run's own status kept), said at once: each use checks
first that the server takes connections, where MLflow's client retries a refused one for
about four minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from operators.errors import SluiceError
from pipelines import runs

STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "lost": "FAILED"}
"""A sluice run's status as MLflow's run status."""
BATCH = {"metrics": 1000, "params": 100, "tags": 100}
"""What one ``log_batch`` call may carry of each (MLflow's limits)."""
CONNECT_SECONDS = 10.0
"""How long the first connection to a tracking server may take."""
PARAM_VALUE = 6000
TAG_VALUE = 5000
KEY = re.compile(r"[^/\w.\- :]")
"""Characters MLflow refuses in a metric, param or tag name (each becomes ``_``)."""
NO_SEGMENT = re.compile(r"^/|/(?=/|$)|(?<![^/])\.+(?![^/])|^\.(?=\.)")
"""What MLflow refuses in a name as it is a path too (a name that normalising as a path
would change): a leading or trailing ``/``, an empty, ``.`` or ``..`` part (a ``by`` group
of URLs, ``source=s3://bucket``), a leading ``..``; each character becomes ``_``."""


def _key(name: str) -> str:
    """``name`` as MLflow takes it: each character it refuses (``=`` of an evaluate
    group's label among them) and each part of a path it refuses, as ``_``."""
    return NO_SEGMENT.sub(lambda m: "_" * len(m.group()), KEY.sub("_", name))[:250]


def _keys(names: list[str]) -> dict[str, str]:
    """Each name's MLflow key (``_key``); where two names would get one key (they
    differ only in what was replaced: ``currency=€`` and ``currency=$``), each of them a
    short hash of the name as it was, so that neither hides the other."""
    keys = {name: _key(name) for name in names}
    taken: dict[str, int] = {}
    for key in keys.values():
        taken[key] = taken.get(key, 0) + 1
    return {name: key if taken[key] == 1
            else f"{key[:240]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
            for name, key in keys.items()}


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _numbers(record: dict[str, Any], flat: dict[str, Any]) -> dict[str, list[float]]:
    """Each numeric metric of the record (``flat``: its metrics, lists kept) as a
    history: one value, or a list's values (``validation_losses``: a round each; a list
    of class labels is no measurement and is left out); booleans as 0 and 1; then each
    step's rows, compute, driver and wall seconds and the run's seconds."""
    out: dict[str, list[float]] = {}
    for name, value in flat.items():
        # a NaN metric as a record read from its file has it: text (``operators.jsontext``)
        if isinstance(value, bool | int | float) or value in runs.NON_FINITE.values():
            out[name] = [float(value)]
        elif (isinstance(value, list) and value and not name.endswith("classes")
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            out[name] = [float(v) for v in value]
    for step_id, entry in (record.get("steps") or {}).items():
        for name in ("rows", "compute_seconds", "driver_seconds", "wall_seconds"):
            if isinstance(entry.get(name), int | float):
                out[f"steps.{step_id}.{name}"] = [float(entry[name])]
    if isinstance(record.get("seconds"), int | float):
        out["seconds"] = [float(record["seconds"])]
    return out


def _tags(record: dict[str, Any], flat: dict[str, Any]) -> dict[str, str]:
    tags = {
        "sluice.run_id": record["run_id"], "sluice.pipeline": record["pipeline"],
        "sluice.status": record["status"],
        "sluice.engine": (record.get("engine") or {}).get("name", ""),
        "mlflow.source.name": str(record.get("file") or ""),
    }
    if record.get("device"):
        tags["sluice.device"] = record["device"]
    saved = [f"{m['name']}@{m['version']}" for m in record.get("models") or []]
    if saved:
        tags["sluice.models_saved"] = ", ".join(saved)
    used = [f"{m['name']}@{m['version']}" for m in record.get("models_used") or []
            if "name" in m and "version" in m]
    if used:
        tags["sluice.models_used"] = ", ".join(used)
    if record.get("error"):
        tags["sluice.error"] = record["error"]
    if record.get("failed_in"):
        tags["sluice.failed_in"] = record["failed_in"]
    for said in ("warnings", "notes"):  # what the run said besides its result, a line each
        if record.get(said):
            tags[f"sluice.{said}"] = "\n".join(map(str, record[said]))
    for name, value in flat.items():
        if isinstance(value, str) and value not in runs.NON_FINITE.values():
            # a solver's name, a chosen setting
            tags[name] = value
    keys = _keys(list(tags))
    return {keys[k]: _text(v, TAG_VALUE) for k, v in tags.items()}


# the schemes of MLflow's database stores (SQLAlchemy's, with or without a driver: mysql+pymysql)
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def _mlflow_client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise SluiceError(f"--mlflow {uri}: MLflow is not installed ({exc})",
                          hint="pip install 'sluice[mlflow]' (mlflow-skinny), or leave "
                               "--mlflow off") from None
    # sluice's summary says where each run went: not MLflow's own lines on stdout as a run
    # ends ("View run ... at: ...", printed for a tracking server, not for a file store),
    # which would interleave with sluice's output (`runs export`, `models export`)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # a store MLflow will not open (its file store, by default)
        database = uri.split(":", 1)[0].split("+", 1)[0] in DATABASES
        raise SluiceError(
            f"cannot use MLflow tracking at {uri}: {runs.first_line(exc) or ''}",
            # sluice[mlflow] is mlflow-skinny, whose client has no database store
            hint="a database store needs the full MLflow (pip install mlflow; sluice[mlflow] "
                 "is mlflow-skinny, a tracking server's client): install it, or give a "
                 "tracking server (http://host:5000), or leave --mlflow off"
            if database and importlib.util.find_spec("sqlalchemy") is None else
            "give a tracking server (http://host:5000) or a database "
            "(sqlite:///mlflow.db), or leave --mlflow off") from None


@dataclass
class Tracker:
    """An MLflow tracking server (or store) the runs are logged to; ``experiment``: the
    experiment of every run (None: each run's pipeline's)."""

    uri: str
    experiment: str | None = None
    client: Any = None
    _experiments: dict[str, str] = field(default_factory=dict)

    def connect(self, pipeline: str) -> None:
        """Reach the server and make the experiment the runs of ``pipeline`` go to: a
        SluiceError naming the URI where it cannot (before any data moves)."""
        self._open()
        self._experiment_id(self.experiment or pipeline)

    def _open(self) -> None:
        """Make the client (once), and check that the server takes connections (each
        time: a server can go while a run runs): a SluiceError naming the URI at once
        where it does not, where MLflow's client would retry each request for about
        four minutes (its retries are for a server that answers, busy)."""
        client = self.client or _mlflow_client(self.uri)
        _answers(self.uri)
        self.client = client

    def _experiment_id(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        try:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                found_id = self.client.create_experiment(name)
            else:
                if found.lifecycle_stage == "deleted":
                    raise SluiceError(
                        f"MLflow experiment '{name}' at {self.uri} is deleted",
                        hint="restore it in MLflow, or give another with --mlflow-experiment")
                found_id = found.experiment_id
        except SluiceError:
            raise
        except Exception as exc:  # MLflow's errors, a refused connection, an auth failure
            raise SluiceError(f"cannot use MLflow tracking at {self.uri}: {described(exc)}",
                              hint="check the URI and that the server answers, or leave "
                                   "--mlflow off") from None
        self._experiments[name] = found_id
        return found_id

    def find(self, record: dict[str, Any]) -> str | None:
        """The MLflow run id of this sluice run where it was logged already: where its
        record says it went (to this server, in whichever experiment), else by its
        ``sluice.run_id`` tag in the experiment it would go to now."""
        from mlflow.exceptions import MlflowException

        logged = record.get("mlflow") or {}
        if logged.get("run_id") and str(logged.get("uri", "")).rstrip("/") == \
                self.uri.rstrip("/"):
            with contextlib.suppress(MlflowException):  # deleted there since
                if self.client.get_run(logged["run_id"]).info.lifecycle_stage == "active":
                    return str(logged["run_id"])
        experiment = self._experiment_id(self.experiment or record["pipeline"])
        found = self.client.search_runs(
            [experiment], filter_string=f"tags.`sluice.run_id` = '{record['run_id']}'",
            max_results=1)
        return found[0].info.run_id if found else None

    def log(self, record: dict[str, Any], pipeline_file: str | None = None) -> dict[str, str]:
        """Log a finished run's record as an MLflow run; its experiment id and run id."""
        self._open()
        experiment = self._experiment_id(self.experiment or record["pipeline"])
        start = int(round(record.get("started_unix", 0) * 1000)) or None
        end = start + int(round(record.get("seconds", 0) * 1000)) if start else None
        run = self.client.create_run(experiment, start_time=start, run_name=record["run_id"])
        run_id = run.info.run_id
        try:
            self._fill(run_id, record, pipeline_file, end)
        except BaseException:
            with contextlib.suppress(Exception):  # not left RUNNING for ever
                self.client.set_terminated(run_id, "FAILED", end_time=end)
            raise
        self.client.set_terminated(run_id, STATUS.get(record["status"], "FAILED"),
                                   end_time=end)
        return {"uri": self.uri, "experiment_id": experiment, "run_id": run_id}

    def _fill(self, run_id: str, record: dict[str, Any], pipeline_file: str | None,
              end: int | None) -> None:
        """The run's metrics, params, tags and artifacts."""
        from mlflow.entities import Metric, Param, RunTag

        flat = runs.flat_metrics(record, lists=True)
        numbers = _numbers(record, flat)
        keys = _keys(list(numbers))
        metrics = [Metric(keys[name], value, end or 0, step)
                   for name, values in numbers.items()
                   for step, value in enumerate(values)]
        given = runs.run_params(record)
        names = _keys(list(given))
        params = [Param(names[name], _text(value, PARAM_VALUE))
                  for name, value in given.items()]
        tags = [RunTag(k, v) for k, v in _tags(record, flat).items()]
        for kind, items in (("metrics", metrics), ("params", params), ("tags", tags)):
            size = BATCH[kind]
            for at in range(0, len(items), size):
                self.client.log_batch(run_id, **{kind: items[at:at + size]})
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "sluice_run.json"
            path.write_text(runs.dumps({k: v for k, v in record.items() if k != "mlflow"},
                                       indent=1))
            self.client.log_artifact(run_id, str(path))
        if pipeline_file and Path(pipeline_file).is_file():
            self.client.log_artifact(run_id, pipeline_file)
        from pipelines import mlflow_model

        for saved in record.get("models") or []:  # each an MLflow model of the run
            if mlflow_model.present(saved["path"]):  # not a version pruned since
                self.log_model(run_id, saved["path"], saved["name"], saved["version"])

    def log_model(self, run_id: str, source: str, name: str, version: int) -> str:
        """The sluice model version in ``source`` as an MLflow model of the run, under
        ``models/<name>``; its artifact URI."""
        from pipelines import mlflow_model

        return mlflow_model.log(self.client, run_id, source, name, version, f"models/{name}")

    def export_model(self, store: Any, ref: str, history: Any, register: bool = True,
                     registered_name: str | None = None) -> dict[str, Any]:
        """A registry's model version in MLflow: in the MLflow run of the run that
        trained it (that run logged first, from its record in ``history``, where it is
        not there yet; a run of its own where the record is gone), under
        ``models/<name>``, and (``register``) a version of the registered model
        ``registered_name`` (default: the model's name), once: a version tagged with
        this ``sluice.model`` already there is kept; the registry's aliases of the
        version set on it in MLflow. What was done, as a dict."""
        from pipelines import mlflow_model

        model = store.load(ref)
        source, meta = store.path_of(model), model.meta
        pipeline = meta.get("pipeline") or model.name
        self.connect(pipeline)
        trained = {"pipeline": pipeline, "run_id": meta.get("run_id", "")}
        record = next((r for r in history.records if r["run_id"] == trained["run_id"]),
                      None) if trained["run_id"] else None
        run_id = self.find(record or trained) if trained["run_id"] else None
        if run_id is None:
            if record is not None:  # the training run, with the model
                run_id = self.log(record)["run_id"]
            else:
                run = self.client.create_run(
                    self._experiment_id(self.experiment or pipeline), run_name=model.ref,
                    tags={"sluice.model": model.ref, "sluice.pipeline": pipeline,
                          "sluice.training_run": trained["run_id"]})
                run_id = run.info.run_id
        path = f"models/{model.name}"
        if path in {a.path for a in self.client.list_artifacts(run_id, "models")}:
            uri = mlflow_model.artifact_uri(self.client, run_id, path)
        else:  # a run logged before runs logged their models, or a run of its own
            uri = self.log_model(run_id, source, model.name, model.version)
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "FINISHED")
        out: dict[str, Any] = {"model": model.ref, "run_id": run_id, "artifact": path,
                               "source": uri}
        if register:
            name = registered_name or model.name
            out["registered"] = name
            out["version"], out["existed"] = mlflow_model.register(
                self.client, name, uri, run_id, model.ref)
            # the registry's aliases of this version, as MLflow's aliases of its version
            # (models:/churn@production), moved there as sluice moved them
            out["aliases"] = sorted(a for a, v in store.aliases(model.name).items()
                                    if v == model.version)
            for alias in out["aliases"]:
                self.client.set_registered_model_alias(name, alias, out["version"])
        return out


def _answers(uri: str, timeout: float = CONNECT_SECONDS) -> None:
    """A tracking server named by an http(s) URI takes connections: a SluiceError at
    once where it does not (MLflow's client retries a refused connection for minutes)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SluiceError(f"cannot reach MLflow tracking at {uri}: {reason.lower()}",
                          hint="check the URI and that the server is up, or leave --mlflow "
                               "off") from None


def described(exc: BaseException) -> str:
    """A failure of MLflow's or the network's in a line: its type and first line (our
    own errors, such as a server that no longer takes connections: their message)."""
    if isinstance(exc, SluiceError):
        return exc.message
    return f"{type(exc).__name__}: {runs.first_line(exc) or ''}"


def log_quietly(tracker: Tracker, record: dict[str, Any], pipeline_file: str | None,
                notify: Any = None) -> dict[str, str]:
    """``Tracker.log`` for a run that has ended: where MLflow fails now (a server lost
    while the run ran), the run's outcome stands; the failure is said (``notify``) and
    kept in the record's ``mlflow`` entry instead of a run id."""
    try:
        return tracker.log(record, pipeline_file)
    except Exception as exc:  # the server's, the network's: the run itself is done
        error = described(exc)
        if notify:
            notify(f"the run was not logged to MLflow at {tracker.uri}: {error} (`sluice "
                   f"runs export --mlflow {tracker.uri}` logs it later)")
        return {"uri": tracker.uri, "error": error}

