"""OpenLineage events of real runs, sent to a lineage server on loopback that keeps
what it is sent: START and the end event, the datasets read and written with their
columns and rows, the run's id, its parent; a server that does not answer costs a
note."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import SluiceError
from pipelines.lineage import dataset, run_uuid
from pipelines.runner import run

TRAIN_AND_SCORE = """
    pipeline: churn_lineage
    steps:
      - id: rows
        op: read_parquet
        path: data/churn
        columns: [customer_id, tenure, monthly_charges, churned]
      - id: model
        op: logistic_regression
        label: churned
        features: [tenure, monthly_charges]
      - id: save
        op: save_model
        name: churn
      - id: scores
        op: score
        input: rows
        model: churn
      - id: out
        op: write_parquet
        input: scores
        path: out/scores
    """


class Server:
    """A lineage server on 127.0.0.1 that answers 201 and keeps each request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        kept = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                kept.append({"path": self.path, "headers": dict(self.headers),
                             "event": json.loads(body)})
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r["event"] for r in self.requests]


@pytest.fixture
def server() -> Iterator[Server]:
    served = Server()
    yield served
    served.http.shutdown()
    served.http.server_close()


def _fields(item: dict[str, Any]) -> list[str]:
    return [f["name"] for f in item["facets"]["schema"]["fields"]]


def _facet_schema_urls(value: Any) -> dict[str, str]:
    """Each facet's ``_schemaURL`` in an event, by its name."""
    if isinstance(value, list):
        return {k: v for item in value for k, v in _facet_schema_urls(item).items()}
    if not isinstance(value, dict):
        return {}
    found = {k: v["_schemaURL"] for k, v in value.items()
             if isinstance(v, dict) and "_schemaURL" in v}
    for item in value.values():
        found.update(_facet_schema_urls(item))
    return found


def _assert_facets_point_at_their_definitions(events: list[dict[str, Any]]) -> set[str]:
    """OpenLineage's ``_schemaURL`` is a JSON Pointer to the facet's definition, as every
    producer writes it (``SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet``)."""
    urls = {k: v for event in events for k, v in _facet_schema_urls(event).items()}
    for url in urls.values():
        file, _, pointer = url.partition("#")
        assert file.startswith("https://openlineage.io/spec/facets/"), url
        assert pointer == "/$defs/" + file.rsplit("/", 1)[1].removesuffix(".json"), url
    return set(urls)


def test_a_run_sends_start_and_complete_with_what_it_read_and_wrote(
        churn: Path, workdir: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "nightly")
    record = run(write_pipeline(workdir, TRAIN_AND_SCORE).name, openlineage=server.url)
    assert [r["path"] for r in server.requests] == ["/api/v1/lineage"] * 2
    start, complete = server.events
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    run_id = run_uuid(record["run_id"])
    assert start["run"]["runId"] == complete["run"]["runId"] == run_id
    assert record["openlineage"] == {"url": server.url, "namespace": "nightly",
                                     "run_id": run_id}
    assert complete["job"]["namespace"] == "nightly"
    assert complete["job"]["name"] == "churn_lineage"
    assert _assert_facets_point_at_their_definitions([start, complete]) == {
        "jobType", "schema", "outputStatistics"}
    for event in (start, complete):
        assert event["schemaURL"].startswith("https://openlineage.io/spec/2-0-2/")
        assert event["eventTime"].endswith("Z")

    (read,) = complete["inputs"]  # the model scored is this run's own: an output
    assert (read["namespace"], read["name"]) == ("file", str(workdir / "data" / "churn"))
    assert _fields(read) == ["customer_id", "tenure", "monthly_charges", "churned"]
    written, model = complete["outputs"]
    assert (written["namespace"], written["name"]) == ("file", str(workdir / "out" / "scores"))
    assert written["outputFacets"]["outputStatistics"]["rowCount"] == 5000
    assert _fields(written) == pq.read_schema(
        next((workdir / "out" / "scores").glob("*.parquet"))).names
    assert model["name"] == record["models"][0]["path"]
    # START names what the run will write, before it has: no rows, no model yet
    assert [o["name"] for o in start["outputs"]] == [written["name"]]
    assert "outputFacets" not in start["outputs"][0]

    scoring = write_pipeline(workdir, """
        pipeline: churn_daily
        steps:
          - op: read_parquet
            path: data/churn
          - op: score
            model: churn@1
          - op: write_parquet
            path: out/daily
        """, "daily.yaml")
    run(scoring.name, openlineage=server.url)
    daily = server.events[-1]
    assert [(i["name"], "schema" in i["facets"]) for i in daily["inputs"]] == [
        (str(workdir / "data" / "churn"), True), (model["name"], False)]  # the version read


def test_a_failed_run_sends_fail_with_its_error_and_the_parent_run(
        churn: Path, workdir: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_URL", server.url)  # as an Airflow deployment sets it
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "s3cret")
    monkeypatch.setenv("OPENLINEAGE_PARENT_ID", "airflow/nightly_dag.train/"
                       "01936b0e-0000-7000-8000-000000000001")
    path = write_pipeline(workdir, TRAIN_AND_SCORE)
    run(path.name)
    with pytest.raises(SluiceError, match="already exists"):
        run(path.name)  # the output is there: the write fails
    start, end = server.events[2:]
    assert (start["eventType"], end["eventType"]) == ("START", "FAIL")
    assert "already exists" in end["run"]["facets"]["errorMessage"]["message"]
    assert end["run"]["facets"]["parent"]["job"] == {"namespace": "airflow",
                                                     "name": "nightly_dag.train"}
    assert end["run"]["facets"]["parent"]["run"]["runId"].endswith("000000000001")
    # nothing published: not the write, nor the model (saved with the outputs), which
    # its score step used and is no input either
    assert end["outputs"] == []
    assert [i["name"] for i in end["inputs"]] == [str(workdir / "data" / "churn")]
    assert server.requests[0]["headers"]["Authorization"] == "Bearer s3cret"
    assert {"parent", "errorMessage"} <= _assert_facets_point_at_their_definitions([end])

    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    before = len(server.events)
    with pytest.raises(SluiceError):
        run(path.name)
    assert len(server.events) == before  # disabled: nothing sent
    # an explicit --openlineage under the kill switch sends nothing either, and says so
    said: list[str] = []
    with pytest.raises(SluiceError):
        run(path.name, openlineage=server.url, notify=said.append)
    assert len(server.events) == before
    assert any("OPENLINEAGE_DISABLED is set, so --openlineage sends no events" in line
               for line in said), said


@pytest.mark.parametrize("parent", ["airflow/nightly_dag.train/scheduled__2026-11-30",
                                    "nightly_dag.train"])
def test_a_parent_id_that_names_no_run_costs_a_note_not_the_events(
        churn: Path, workdir: Path, server: Server, monkeypatch: pytest.MonkeyPatch,
        parent: str) -> None:
    """A parent run id that is no UUID made every event of the run one a server refuses
    (the facet's runId is a uuid), and one without namespace/job/ was dropped silently:
    the events go without the parent, and a note says why."""
    monkeypatch.setenv("OPENLINEAGE_PARENT_ID", parent)
    said: list[str] = []
    run(write_pipeline(workdir, TRAIN_AND_SCORE).name, openlineage=server.url,
        notify=said.append)
    assert [e["eventType"] for e in server.events] == ["START", "COMPLETE"]
    assert all("parent" not in e["run"]["facets"] for e in server.events)
    assert [n for n in said if "OPENLINEAGE_PARENT_ID" in n] == [
        f"OPENLINEAGE_PARENT_ID '{parent}' is not namespace/job/run id with the run id a "
        "UUID (Airflow's lineage_parent_id macro gives one): the run's OpenLineage events "
        "name no parent run"]


def test_a_server_that_does_not_answer_costs_a_note(churn: Path, workdir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said: list[str] = []
    record = run(write_pipeline(workdir, TRAIN_AND_SCORE).name,
                 openlineage=f"http://127.0.0.1:{port}", notify=said.append)
    assert record["status"] == "succeeded"
    notes = [n for n in said if "OpenLineage" in n]
    assert [n.split(" event")[0] for n in notes] == ["the run's OpenLineage START",
                                                     "the run's OpenLineage COMPLETE"]
    assert f"http://127.0.0.1:{port}/api/v1/lineage did not answer" in notes[0]


def test_datasets_are_named_as_openlineage_names_them() -> None:
    assert dataset("s3://bucket/sluice/scores/ds=1")["namespace"] == "s3://bucket"
    assert dataset("s3://bucket/sluice/scores/ds=1")["name"] == "sluice/scores/ds=1"
    assert dataset("gs://b/x")["namespace"] == "gs://b"
    local = dataset("data/churn")
    assert local["namespace"] == "file" and local["name"] == os.path.abspath("data/churn")
    assert dataset("file:///tmp/x")["name"] == "/tmp/x"
    # RFC 8089: file://localhost/tmp/x is /tmp/x (not a folder 'localhost' here)
    assert dataset("file://localhost/tmp/x") == {"namespace": "file", "name": "/tmp/x",
                                                  "facets": {}}
    with pytest.raises(SluiceError, match="names a file on host 'otherhost'"):
        dataset("file://otherhost/tmp/x")
    # a glob: its folder (the path before the first wildcard), as Spark's integration
    # names a directory of files
    assert dataset("data/**")["name"] == os.path.abspath("data")
    assert dataset("data/events/*.parquet")["name"] == os.path.abspath("data/events")
    assert dataset("data/ds=2026-1?/part-[0-9].parquet")["name"] == os.path.abspath("data")
    assert dataset("*.parquet")["name"] == os.getcwd()
    assert dataset("file:///tmp/events/**/*.parquet")["name"] == "/tmp/events"
    assert (dataset("s3://bucket/events/ds=*/x.parquet")["namespace"],
            dataset("s3://bucket/events/ds=*/x.parquet")["name"]) == ("s3://bucket", "events")
    assert dataset("s3://bucket/*.parquet")["name"] == "/"
