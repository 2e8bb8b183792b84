"""OpenLineage run events: what a run read and wrote, for Marquez, DataHub, Atlan and
the other lineage servers (``--openlineage URL``, or the ``OPENLINEAGE_URL`` the
OpenLineage clients read: an Airflow deployment that sends lineage has it set).

A run sends ``START`` as its steps begin and ``COMPLETE``, ``FAIL`` or ``ABORT``
(interrupted) when it ends: the job is the pipeline (in ``OPENLINEAGE_NAMESPACE``, else
``default``), the run a UUID made from the sluice run id (the same on every event, and
``sluice runs show`` names the run), its inputs each ``read_parquet`` path and ``join``
table and each model version scored, its outputs each ``write_parquet`` path (with the
rows written) and each model version saved, with their columns (the schema facet). A
parent run (``OPENLINEAGE_PARENT_ID``: ``namespace/job/run id``, the Airflow task that
started the run) is named in the parent facet. Datasets are named as OpenLineage names
them: ``file`` and the absolute path for a local one, ``s3://bucket`` and the key for an
object store's; a glob's by its folder (the path before its first wildcard), as Spark's
integration names a directory of files.

Lineage is observability, never the run's outcome: a server that does not answer (5
seconds) costs a ``note:`` line; the events are JSON over HTTP, with
``OPENLINEAGE_API_KEY`` as a bearer token where set.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from operators.io.fs import is_url
from operators.io.paths import GLOB_CHARS, glob_base, local_path

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
PRODUCER = "https://github.com/sluice-pipelines/sluice"


def _facet_url(version: str, name: str) -> str:
    """A facet's ``_schemaURL``: the JSON Pointer to its definition in its schema file
    (as the event's ``schemaURL`` points at ``RunEvent``)."""
    return f"https://openlineage.io/spec/facets/{version}/{name}.json#/$defs/{name}"


SCHEMA_FACET = _facet_url("1-1-1", "SchemaDatasetFacet")
STATS_FACET = _facet_url("1-0-2", "OutputStatisticsOutputDatasetFacet")
PARENT_FACET = _facet_url("1-1-0", "ParentRunFacet")
JOB_TYPE_FACET = _facet_url("2-0-3", "JobTypeJobFacet")
ERROR_FACET = _facet_url("1-0-1", "ErrorMessageRunFacet")
ENDPOINT = "api/v1/lineage"
TIMEOUT = 5.0
ENDS = {"succeeded": "COMPLETE", "failed": "FAIL", "interrupted": "ABORT"}


def run_uuid(run_id: str) -> str:
    """The OpenLineage run id of a sluice run: a UUID of its id, the same every time."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sluice:run:{run_id}"))


def dataset(path: str, schema: pa.Schema | None = None) -> dict[str, Any]:
    """A dataset as OpenLineage names it (``file`` and the absolute path, or the
    URL's scheme and bucket and the key; a glob's folder's), with its columns where
    known."""
    if GLOB_CHARS.search(path):  # a directory of files, as Spark's integration names it
        path = glob_base(path) or "."
    parts = urlsplit(path)
    if is_url(path) and parts.netloc:
        namespace, name = f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"
    else:  # the file the run reads or writes (``operators.io.fs.resolve``'s)
        namespace, name = "file", local_path(path)
    out: dict[str, Any] = {"namespace": namespace, "name": name, "facets": {}}
    if schema is not None:
        out["facets"]["schema"] = {
            "_producer": PRODUCER, "_schemaURL": SCHEMA_FACET,
            "fields": [{"name": f.name, "type": str(f.type)} for f in schema]}
    return out


@dataclass
class Lineage:
    """Where a run's events go: ``url`` (the server; ``endpoint`` under it)."""

    url: str
    namespace: str = "default"
    endpoint: str = ENDPOINT
    api_key: str | None = None
    parent: str | None = None

    @classmethod
    def configured(cls, url: str | None) -> Lineage | None:
        """From ``url`` (``--openlineage``), else the OpenLineage clients' environment;
        None where neither names a server or ``OPENLINEAGE_DISABLED`` is true."""
        env = os.environ
        if env.get("OPENLINEAGE_DISABLED", "").lower() in ("1", "true", "yes"):
            return None
        url = url or env.get("OPENLINEAGE_URL")
        if not url:
            return None
        return cls(url, env.get("OPENLINEAGE_NAMESPACE") or "default",
                   env.get("OPENLINEAGE_ENDPOINT") or ENDPOINT,
                   env.get("OPENLINEAGE_API_KEY") or None,
                   env.get("OPENLINEAGE_PARENT_ID") or None)

    def _parent(self) -> tuple[str, str, str] | None:
        """The parent run's namespace, job and run id, where ``parent`` gives them."""
        if not self.parent or self.parent.count("/") < 2:
            return None
        namespace, rest = self.parent.split("/", 1)
        job, run_id = rest.rsplit("/", 1)
        try:
            uuid.UUID(run_id)
        except ValueError:
            return None
        return (namespace, job, run_id) if namespace and job else None

    def parent_problem(self) -> str | None:
        """Why ``OPENLINEAGE_PARENT_ID`` names no parent run, where it is set and does
        not: its events then leave the parent out (a run id that is no UUID made servers
        refuse every event of the run)."""
        if self.parent is None or self._parent() is not None:
            return None
        return (f"OPENLINEAGE_PARENT_ID '{self.parent}' is not namespace/job/run id with "
                "the run id a UUID (Airflow's lineage_parent_id macro gives one): the "
                "run's OpenLineage events name no parent run")

    def event(self, kind: str, record: dict[str, Any], inputs: list[dict[str, Any]],
              outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """An OpenLineage RunEvent of the run ``record`` describes."""
        facets: dict[str, Any] = {}
        parent = self._parent()
        if parent is not None:
            namespace, job, parent_run = parent
            facets["parent"] = {"_producer": PRODUCER, "_schemaURL": PARENT_FACET,
                                "run": {"runId": parent_run},
                                "job": {"namespace": namespace, "name": job}}
        if kind == "FAIL" and record.get("error"):
            facets["errorMessage"] = {
                "_producer": PRODUCER, "message": record["error"],
                "programmingLanguage": "python", "_schemaURL": ERROR_FACET}
        return {
            "eventType": kind,
            "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "producer": PRODUCER, "schemaURL": SPEC,
            "run": {"runId": run_uuid(record["run_id"]), "facets": facets},
            "job": {"namespace": self.namespace, "name": record["pipeline"],
                    "facets": {"jobType": {"_producer": PRODUCER, "_schemaURL": JOB_TYPE_FACET,
                                           "processingType": "BATCH",
                                           "integration": "SLUICE", "jobType": "PIPELINE"}}},
            "inputs": inputs, "outputs": outputs,
        }

    def send(self, event: dict[str, Any]) -> str | None:
        """POST the event; None, or why it was not taken."""
        import urllib.error
        import urllib.request

        target = f"{self.url.rstrip('/')}/{self.endpoint.lstrip('/')}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(target, json.dumps(event).encode(), headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            return f"{target} answered {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return f"{target} did not answer: {reason}"
        return None


def _unique(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for item in found:
        seen.setdefault((item["namespace"], item["name"]), item)
    return list(seen.values())


def datasets(plan: Any, record: dict[str, Any], ended: bool
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's inputs (its reads, join tables and the model versions it scores with)
    and outputs (its writes and, once it has ended, the model versions it saved, with
    the rows written), as OpenLineage datasets."""
    from operators.base import Sink, Source

    inputs, outputs = [], []
    written = {o["step"]: o for o in record.get("outputs") or []}
    for step in plan.steps:
        path = getattr(step.op.params, "path", None)
        if not isinstance(path, str):
            continue
        if isinstance(step.op, Sink):
            upstream = plan.step(step.input) if step.input else None
            item = dataset(path, upstream.schema if upstream is not None else None)
            if ended and step.id in written:
                item["outputFacets"] = {"outputStatistics": {
                    "_producer": PRODUCER, "_schemaURL": STATS_FACET,
                    "rowCount": written[step.id]["rows"]}}
            if not ended or step.id in written:
                outputs.append(item)
        else:  # a read, a join's table file
            inputs.append(dataset(path, step.schema if isinstance(step.op, Source) else None))
    # a version the run saves, then scores with, is no input (and an output only once
    # the run publishes it)
    own = {s.id for s in plan.steps if s.saved_by is not None}
    inputs += [dataset(m["path"]) for m in record.get("models_used") or []
               if m.get("path") and m.get("step") not in own]
    if ended:
        outputs += [dataset(m["path"]) for m in record.get("models") or [] if m.get("path")]
    return _unique(inputs), _unique(outputs)
