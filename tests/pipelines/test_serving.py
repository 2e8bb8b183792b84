"""Online scoring: ``load_model`` in-process and ``sluice serve`` over HTTP give the
predictions (and contributions) the bulk ``score`` step writes for the same rows; every
request format; errors a client can act on; refresh, workers, signals, the GPU stand-in.

The servers are real: ``sluice serve`` in a subprocess on 127.0.0.1, a free port."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import SLUICE, write_pipeline

from operators.base import MissingColumnError, SluiceError
from pipelines.datagen import churn_table
from pipelines.runner import run
from pipelines.serving import ARROW, RequestError, _finite, json_columns, load_model
from pipelines.store import ModelStore

# one worker runs the module under pytest-xdist (-n 2): its module fixtures start once
pytestmark = pytest.mark.xdist_group("serving")

INPUTS = ["tenure", "plan", "region", "monthly_charges", "total_charges"]

TRAIN = """
    pipeline: train
    steps:
      - op: read_parquet
        path: {data}
        columns: [tenure, plan, region, monthly_charges, total_charges, churned]
      - op: impute
        columns: [total_charges]
        strategy: median
      - op: one_hot
        columns: [plan, region]
      - op: standard_scale
        columns: [tenure, monthly_charges, total_charges]
      - op: {model}
        label: {label}
{extra}
      - op: save_model
        name: {name}
"""

SCORE = """
    pipeline: score
    steps:
      - op: read_parquet
        path: {data}
      - op: score
        model: {model}
        contributions: {contributions}
      - op: write_parquet
        path: {out}
"""


def _train(folder: Path, models: Path, name: str, model: str = "logistic_regression",
           label: str = "churned", extra: str = "") -> None:
    text = TRAIN.format(data=folder / "train", model=model, label=label, name=name,
                        extra="\n".join(f"        {line}" for line in extra.splitlines()))
    run(write_pipeline(folder, text, f"{name}.yaml"), models=str(models),
        runs_dir=str(folder / "runs"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models trained on 3,000 churn rows: churn (logistic, 2 versions), boosted (3
    classes of plan from the rest, the region a category), charges (linear regression)."""
    folder = tmp_path_factory.mktemp("serving")
    train = churn_table(3000, seed=1)
    (folder / "train").mkdir()
    pq.write_table(train, folder / "train" / "part-0.parquet")
    pq.write_table(churn_table(500, seed=2), folder / "rows.parquet")
    models = folder / "models"
    _train(folder, models, "churn", extra="l2: 0.01")
    _train(folder, models, "churn", extra="l2: 0.5")
    _train(folder, models, "charges", model="linear_regression", label="monthly_charges",
           extra="l2: 0.01")
    # the region as a category of the trees (JSON rows bring it as text)
    boosted = TRAIN.replace("      - op: one_hot\n        columns: [plan, region]\n", "")
    run(write_pipeline(folder, boosted.format(
        data=folder / "train", model="gradient_boosted_trees", label="plan", name="boosted",
        extra="        n_trees: 5\n        max_depth: 3\n        categorical: [region]"),
        "boosted.yaml"),
        models=str(models), runs_dir=str(folder / "runs"))
    ModelStore(str(models)).set_alias("churn", "production", 1)
    return folder


def _rows(registry: Path, n: int = 50) -> pa.Table:
    return pq.read_table(registry / "rows.parquet").slice(0, n)


def _bulk(registry: Path, model: str, rows: pa.Table, contributions: bool = False
          ) -> pa.Table:
    """What the pipeline's score step writes for ``rows``."""
    folder = registry / f"bulk-{model.replace('@', '-')}-{contributions}-{rows.num_rows}"
    folder.mkdir()
    pq.write_table(rows, folder / "rows.parquet")
    text = SCORE.format(data=folder / "rows.parquet", model=model, out=folder / "out",
                        contributions=str(contributions).lower())
    run(write_pipeline(folder, text), models=str(registry / "models"),
        runs_dir=str(folder / "runs"))
    return pq.read_table(folder / "out")


# --------------------------------------------------------------------------- in-process


def test_load_model_scores_as_the_score_step_does_in_every_input_kind(registry: Path
                                                                       ) -> None:
    rows = _rows(registry)
    bulk = _bulk(registry, "churn@production", rows)
    model = load_model("churn@production", str(registry / "models"))
    assert (model.ref, model.asked, model.required) == (
        "churn@1", "churn@production", ["total_charges", "plan", "region", "tenure",
                                        "monthly_charges"])
    expected = bulk.column("probability").to_numpy()
    table = model.score(rows)
    assert table.column_names == [*rows.column_names, "prediction", "probability"]
    np.testing.assert_array_equal(table.column("probability").to_numpy(), expected)
    records = model.score(rows.select(INPUTS).to_pylist())
    np.testing.assert_allclose([r["probability"] for r in records], expected, rtol=1e-12)
    assert [r["prediction"] for r in records] == bulk.column("prediction").to_pylist()
    columns = model.score(rows.select(INPUTS).to_pydict())
    np.testing.assert_allclose(columns["probability"], expected, rtol=1e-12)
    frame = model.score(rows.to_pandas())
    np.testing.assert_allclose(frame["probability"].to_numpy(), expected, rtol=1e-12)
    batch = model.score(rows.to_batches()[0])
    np.testing.assert_allclose(batch.column("probability").to_numpy(), expected[:len(batch)])


def test_contributions_in_process_are_the_score_steps(registry: Path) -> None:
    rows = _rows(registry, 20)
    bulk = _bulk(registry, "churn@2", rows, contributions=True)
    model = load_model("churn@2", str(registry / "models"))
    out = model.score(rows, contributions=True)
    assert out.column("contributions").to_pylist() == bulk.column("contributions").to_pylist()
    by_input = model.score(rows, contributions=True, contributions_by="inputs")
    first = by_input.column("contributions")[0].as_py()
    assert set(first) == {"tenure", "plan", "region", "monthly_charges", "total_charges"}
    full = out.column("contributions")[0].as_py()
    assert first["plan"] == pytest.approx(sum(v for k, v in full.items()
                                              if k.startswith("plan=")))


def test_json_values_convert_to_the_trained_types_or_say_which_row(registry: Path) -> None:
    model = load_model("churn", str(registry / "models"))
    row = {"tenure": 3.0, "plan": "basic", "region": "north", "monthly_charges": 70,
           "total_charges": None}
    exact = model.score([row])[0]
    assert model.score([{**row, "tenure": "3"}])[0] == {**exact, "tenure": 3}
    with pytest.raises(RequestError, match=r"column 'tenure', row 1: 3\.5 is not a whole "
                                           r"number"):
        model.score([row, {**row, "tenure": 3.5}])
    with pytest.raises(RequestError, match=r"column 'monthly_charges', row 0: \"high\" is "
                                           "not double"):
        model.score([{**row, "monthly_charges": "high"}])
    with pytest.raises(MissingColumnError, match="'tenure' not in the input; did you mean "
                                                 "'tenur'"):
        model.score([{"tenur": 3, **{k: v for k, v in row.items() if k != "tenure"}}])
    with pytest.raises(SluiceError, match="cannot score a int"):
        model.score(3)
    # a key one row lacks is null there (the imputer fills total_charges); a column no
    # row has is missing (a misspelt key is not taken for nulls)
    lacking = {k: v for k, v in row.items() if k != "total_charges"}
    assert model.score([{**row, "total_charges": 10.0}, lacking])[1] == exact
    with pytest.raises(MissingColumnError, match="'total_charges' not in the input"):
        model.score([lacking])


def test_a_model_without_contributions_says_so(registry: Path) -> None:
    model = load_model("churn", str(registry / "models"))
    with pytest.raises(RequestError, match="contributions_by needs contributions"):
        model.score(_rows(registry, 2), contributions_by="inputs")


def test_json_request_formats_give_the_same_columns() -> None:
    split = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, None]]}}
    records = {"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2}]}
    inputs = {"inputs": {"a": [1, 2], "b": ["x", None]}}
    instances = {"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": None}]}
    bare = [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    expected = {"a": [1, 2], "b": ["x", None]}
    for body in (split, records, inputs, instances, bare):
        assert json_columns(body)[0] == expected, body
    assert json_columns({"inputs": {"a": 1, "b": "x"}, "params": {"keep": ["a"]}}) == (
        {"a": [1], "b": ["x"]}, {"keep": ["a"]})
    for body, message in [
        ({"dataframe_recs": []}, "unknown key 'dataframe_recs'; did you mean "
                                 "'dataframe_records'"),
        ({}, "no rows"),
        ({"inputs": [], "instances": []}, r"more than one format \(inputs, instances\)"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}},
         r"dataframe_split.data\[0\] has 2 values, for 1 columns"),
        ({"dataframe_records": [{"a": 1}, 3]}, r"dataframe_records\[1\] is not an object"),
        ({"inputs": {"a": [1, 2], "b": [1]}}, "different lengths"),
        ({"inputs": {"a": [1, 2], "b": 1}}, "mixes lists and single values"),
        ("text", "must be a JSON object"),
    ]:
        with pytest.raises(RequestError, match=message):
            json_columns(body)


def test_json_has_no_nan() -> None:
    assert _finite({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {
        "a": [1.0, None], "b": {"c": None}, "d": "x"}


# --------------------------------------------------------------------------- the server


class Served:
    """A running ``sluice serve``: its process, URL and a client."""

    def __init__(self, process: subprocess.Popen[str], port: int, line: str,
                 before: str = ""):
        self.process, self.port, self.line = process, port, line
        self.log: list[str] = [before]  # the lines before ``line``, then the rest
        self.drain = threading.Thread(target=self._drain, daemon=True)  # keep stderr flowing
        self.drain.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.log.append(self.process.stderr.read())

    def wait(self) -> int:
        """The exit status (killed after 30 s), stderr read to its end and closed."""
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.drain.join(10)
            assert self.process.stderr is not None
            self.process.stderr.close()

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        if isinstance(body, dict | list):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def post(self, body: Any, path: str = "/invocations", **headers: str
             ) -> tuple[int, dict[str, Any]]:
        if isinstance(body, str):
            headers = {"Content-Type": "application/json", **headers}
        status, _, data = self.request("POST", path, body, headers or None)
        return status, json.loads(data)


def _start(registry: Path, *args: str, env: dict[str, str] | None = None,
           expect_failure: bool = False) -> Served | subprocess.CompletedProcess[str]:
    command = [SLUICE, "serve", *args, "--models", str(registry / "models"), "--port", "0",
               "--no-access-log"]
    environment = {**os.environ, **(env or {})}
    if expect_failure:
        return subprocess.run(command, capture_output=True, text=True, env=environment,
                              timeout=120, cwd=registry)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment,
                               cwd=registry)
    line, before = _serving_line(process)
    port = int(line.split("http://127.0.0.1:")[1].split(":")[0])
    return Served(process, port, line, before)


def _serving_line(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The server's "serving ..." line, and uvicorn's lines before it (as it starts)."""
    assert process.stderr is not None
    before = []
    for line in process.stderr:
        if line.startswith("serving "):
            return line, "".join(before)
        before.append(line)
    process.kill()
    raise AssertionError("".join(before))


def _stop(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    return served.wait()


@pytest.fixture(scope="module")
def server(registry: Path) -> Iterator[Served]:
    served = _start(registry, "churn@production", "--max-rows", "1000", "--max-mb", "0.5",
                    "--threads", "4")
    assert isinstance(served, Served)
    yield served
    assert _stop(served) == 143


def _split(rows: pa.Table) -> dict[str, Any]:
    return {"dataframe_split": {"columns": rows.column_names,
                                "data": [list(r.values()) for r in rows.to_pylist()]}}


def test_the_server_answers_what_the_score_step_writes(registry: Path, server: Served
                                                       ) -> None:
    assert "serving churn@1 (churn@production) on http://127.0.0.1:" in server.line
    rows = _rows(registry, 40)
    bulk = _bulk(registry, "churn@1", rows)
    expected = [{"prediction": p, "probability": q} for p, q in
                zip(bulk.column("prediction").to_pylist(), bulk.column("probability").to_pylist())]
    status, headers, data = server.request("POST", "/invocations", _split(rows.select(INPUTS)))
    assert (status, headers["x-sluice-model"]) == (200, "churn@1")
    answer = json.loads(data)
    assert answer["model"] == "churn@1"
    assert answer["predictions"] == expected
    records = rows.select(INPUTS).to_pylist()
    assert server.post({"dataframe_records": records})[1]["predictions"] == expected
    assert server.post({"instances": records})[1]["predictions"] == expected
    assert server.post({"inputs": rows.select(INPUTS).to_pydict()})[1]["predictions"] == expected
    # CSV in, JSON out; CSV out when asked
    sink = io.BytesIO()
    pacsv.write_csv(rows.select(INPUTS), sink)
    status, _, data = server.request("POST", "/invocations", sink.getvalue(),
                                     {"Content-Type": "text/csv"})
    assert [p["probability"] for p in json.loads(data)["predictions"]] == pytest.approx(
        bulk.column("probability").to_pylist(), rel=1e-12)
    status, headers, data = server.request("POST", "/invocations", sink.getvalue(),
                                           {"Content-Type": "text/csv", "Accept": "text/csv"})
    assert headers["content-type"].startswith("text/csv")
    assert pacsv.read_csv(io.BytesIO(data)).column("prediction").to_pylist() == \
        bulk.column("prediction").to_pylist()


def test_arrow_in_arrow_out(registry: Path, server: Served) -> None:
    rows = _rows(registry, 200)
    bulk = _bulk(registry, "churn@1", rows)
    small = rows.set_column(rows.schema.get_field_index("tenure"), "tenure",
                            rows.column("tenure").cast(pa.int32()))  # cast to the trained type
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, small.schema) as writer:
        writer.write_table(small)
    status, headers, data = server.request(
        "POST", "/invocations?keep=customer_id", sink.getvalue().to_pybytes(),
        {"Content-Type": "application/vnd.apache.arrow.stream"})
    assert status == 200, data
    assert headers["content-type"] == "application/vnd.apache.arrow.stream"
    out = pa.ipc.open_stream(data).read_all()
    assert out.column_names == ["customer_id", "prediction", "probability"]
    assert out.column("customer_id").equals(rows.column("customer_id"))
    assert out.column("probability").equals(bulk.column("probability"))
    file_sink = pa.BufferOutputStream()
    with pa.ipc.new_file(file_sink, rows.schema) as writer:
        writer.write_table(rows)
    status, _, data = server.request(
        "POST", "/invocations", file_sink.getvalue().to_pybytes(),
        {"Content-Type": "application/vnd.apache.arrow.file", "Accept": "application/json"})
    assert status == 200
    assert [p["probability"] for p in json.loads(data)["predictions"]] == \
        bulk.column("probability").to_pylist()


def test_contributions_and_kept_columns_over_http(registry: Path, server: Served) -> None:
    rows = _rows(registry, 10)
    bulk = _bulk(registry, "churn@production", rows, contributions=True)
    body = {**_split(rows.select(["customer_id", *INPUTS])),
            "params": {"contributions": True, "keep": ["customer_id"]}}
    status, answer = server.post(body)
    assert status == 200, answer
    first = answer["predictions"][0]
    assert list(first) == ["customer_id", "prediction", "probability", "contributions",
                           "contribution_base"]
    assert [p["contributions"] for p in answer["predictions"]] == \
        bulk.column("contributions").to_pylist()
    status, answer = server.post(_split(rows.select(INPUTS)),
                                 "/invocations?contributions=true&contributions_by=inputs")
    assert set(answer["predictions"][0]["contributions"]) == set(INPUTS)


def test_a_threshold_cuts_the_probability_in_process_and_over_http(registry: Path,
                                                                   server: Served) -> None:
    """params.threshold (or ?threshold=): the second class where the probability is at
    least it, as the score step's threshold; a number outside [0, 1] is a 400."""
    rows = _rows(registry, 40)
    served = load_model("churn@production", str(registry / "models"))
    low = served.score(rows, threshold=0.2)
    proba = low.column("probability").to_numpy()
    assert low.column("prediction").to_pylist() == (proba >= 0.2).astype(int).tolist()
    assert (proba >= 0.2).sum() > (proba >= 0.5).sum()
    status, answer = server.post({**_split(rows.select(INPUTS)),
                                  "params": {"threshold": 0.2}})
    assert status == 200, answer
    assert [p["prediction"] for p in answer["predictions"]] == \
        low.column("prediction").to_pylist()
    status, answer = server.post(_split(rows.select(INPUTS)), "/invocations?threshold=0.2")
    assert [p["prediction"] for p in answer["predictions"]] == \
        low.column("prediction").to_pylist()
    charges = load_model("charges", str(registry / "models"))
    with pytest.raises(RequestError, match="threshold cuts a binary classifier's probability, "
                                           "and model 'charges' predicts numbers"):
        charges.score(rows, threshold=0.5)
    for bad in (1.5, "half", True):
        status, answer = server.post({**_split(rows.select(INPUTS)),
                                      "params": {"threshold": bad}})
        assert status == 400 and "params.threshold must be a number from 0 to 1" in \
            answer["message"], answer


def test_a_threshold_out_of_range_in_process_is_said_and_thresholds_are_not_hoarded(
        registry: Path) -> None:
    """score(threshold=1.5) (the API under spark_udf, score_dask and MLflow's predict)
    says what is wrong as a request does, not pydantic's ValidationError of ScoreParams;
    a long-running model scoring every threshold its callers send keeps a bounded
    number of scorers (one a distinct threshold, kept for ever, grew without end)."""
    rows = _rows(registry, 10)
    served = load_model("churn@production", str(registry / "models"))
    for bad in (1.5, -0.1, float("nan"), True):
        with pytest.raises(RequestError, match=r"threshold must be a number from 0 to 1, "
                                               r"not (1\.5|-0\.1|NaN|true)"):
            served.score(rows, threshold=bad)
    for step in range(200):
        served.score(rows, threshold=step / 200)
    assert len(served._scorers) <= 64


def test_client_mistakes_are_answered_with_what_to_fix(registry: Path, server: Served
                                                       ) -> None:
    rows = _rows(registry, 3).select(INPUTS)
    cases = [
        (b"{not json", {"Content-Type": "application/json"}, 400, "the body is not JSON"),
        ({"dataframe_recrods": []}, {}, 400, "did you mean 'dataframe_records'"),
        ({"dataframe_records": [{**r, "tenure": "soon"} for r in rows.to_pylist()]}, {},
         400, "column 'tenure', row 0: \"soon\" is not int64"),
        ({"dataframe_records": [{k: v for k, v in r.items() if k != "region"}
                                for r in rows.to_pylist()]}, {}, 400,
         "'region' not in the input"),
        ({"dataframe_records": [{k: v for k, v in r.items() if k not in ("region", "plan")}
                                for r in rows.to_pylist()]}, {}, 400,
         "columns the model 'churn@production' needs: 'plan', 'region' not in the input"),
        ({"dataframe_records": [{**rows.to_pylist()[0], "tenure": 2**64}]}, {}, 400,
         "column 'tenure', row 0: 18446744073709551616 does not fit int64"),
        ({"dataframe_records": [{**rows.to_pylist()[0], "monthly_charges": -(2**70)}]}, {},
         400, "column 'monthly_charges', row 0: -1180591620717411303424 does not fit"),
        ({**_split(rows), "params": {"contribution": True}}, {}, 400,
         "unknown param 'contribution'; did you mean 'contributions'"),
        ({**_split(rows), "params": {"keep": ["id"]}}, {}, 400,
         "params.keep: column 'id' is not in the request"),
        ({"inputs": {c: [None] * 1001 for c in INPUTS}}, {}, 413,
         "the request has 1001 rows; this server scores up to 1000"),
        (b"x" * 600_000, {"Content-Type": "text/csv"}, 413, "this server takes up to 0.5 MB"),
        (b"a,b", {"Content-Type": "text/plain"}, 415, "content type 'text/plain'"),
        ({**_split(rows), "params": {"contributions": True}}, {"Accept": "text/csv"}, 406,
         "CSV cannot hold"),
    ]
    for body, headers, status, message in cases:
        if isinstance(body, dict):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **headers}
        got, answer_headers, data = server.request("POST", "/invocations", body, headers)
        answer = json.loads(data)
        assert got == status, (message, answer)
        assert message in answer["message"] + " " + answer.get("hint", ""), answer
        assert answer_headers["x-sluice-model"] == "churn@1"
    # rows without the model's columns: the closest names the request has
    renamed = [{("tenur" if k == "tenure" else k): v for k, v in r.items()}
               for r in rows.to_pylist()]
    status, answer = server.post({"dataframe_records": renamed})
    assert status == 400 and "'tenure' not in the input; did you mean 'tenur'" in \
        answer["message"]
    assert server.post({"dataframe_records": [{}, {}]})[0] == 400
    status, _, data = server.request("POST", "/invocations", b"[" * 100_000 + b"]" * 100_000,
                                     {"Content-Type": "application/json"})
    assert status == 400 and "nested too deeply" in json.loads(data)["message"]
    status, headers, _ = server.request("GET", "/invocations")
    assert status == 405 and headers["allow"] == "POST"
    # a column the model does not read, nor keep names, is never converted: mixed
    # values there cannot fail the request; kept, they do
    mixed = {"dataframe_records": [{**r, "note": [1, "a"][i % 2]}
                                   for i, r in enumerate(rows.to_pylist())]}
    assert server.post(mixed)[0] == 200
    status, answer = server.post({**mixed, "params": {"keep": ["note"]}})
    assert (status, answer["error_code"]) == (400, "BAD_REQUEST")
    assert answer["message"].startswith("column 'note': mixed values")
    # the hint of a missing column is apart from the message
    status, answer = server.post({"dataframe_records": [{k: v for k, v in r.items()
                                                         if k != "region"}
                                                        for r in rows.to_pylist()]})
    assert answer["hint"].startswith("input has: ") and "input has" not in answer["message"]
    # no rows: no predictions, whatever the format
    for empty in ({"dataframe_records": []}, {"dataframe_split": {"columns": [], "data": []}},
                  {"inputs": []}):
        assert server.post(empty) == (200, {"predictions": [], "model": "churn@1"}), empty
    # a null the model cannot take: the column, what to do
    status, answer = server.post({"dataframe_records": [{**rows.to_pylist()[0],
                                                         "tenure": None}]})
    assert (status, answer["error_code"]) == (400, "INVALID_DATA")
    assert "tenure" in answer["message"]
    status, _, data = server.request("GET", "/score")
    assert status == 404 and "POST /invocations" in json.loads(data)["hint"]
    status, _, data = server.request("GET", "/invocations")
    assert status == 405
    # the server is still well
    assert server.request("GET", "/ping")[0] == 200


def _metrics(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, data = served.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(data.decode())
            for sample in family.samples}


def test_metrics_count_requests_rows_and_the_model(registry: Path) -> None:
    served = _start(registry, "churn@1")
    assert isinstance(served, Served)
    rows = _rows(registry, 5).select(INPUTS)
    try:
        for _ in range(3):
            assert served.post(_split(rows))[0] == 200
        assert served.post({"dataframe_records": [{"tenure": 1}]})[0] == 400
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        assert served.request("POST", "/invocations", sink.getvalue().to_pybytes(),
                              {"Content-Type": ARROW})[0] == 200
        got = _metrics(served)
    finally:
        assert _stop(served) == 143
    model = (("model", "churn@1"),)
    assert got["sluice_requests_total", (("format", "json"), *model, ("status", "200"))] == 3
    assert got["sluice_requests_total", (("format", "json"), *model, ("status", "400"))] == 1
    assert got["sluice_requests_total", (("format", "stream"), *model, ("status", "200"))] == 1
    assert got["sluice_rows_total", model] == 20
    assert got["sluice_request_seconds_count", model] == 5
    assert got["sluice_model_info", (("asked", "churn@1"), *model)] == 1


def test_health_metadata_and_version(server: Served) -> None:
    status, headers, data = server.request("GET", "/ping")
    assert (status, json.loads(data)) == (200, {"status": "ok", "model": "churn@1"})
    assert server.request("GET", "/health")[0] == 200
    meta = json.loads(server.request("GET", "/metadata")[2])
    assert meta["model"] == "churn@1" and meta["asked"] == "churn@production"
    assert [i["name"] for i in meta["inputs"]] == ["total_charges", "plan", "region",
                                                   "tenure", "monthly_charges"]
    assert meta["outputs"] == [{"name": "prediction", "type": "int64"},
                               {"name": "probability", "type": "double"}]
    assert meta["contributions"] is True and meta["max_rows"] == 1000
    from importlib.metadata import version

    assert json.loads(server.request("GET", "/version")[2]) == {"sluice": version("sluice")}


def test_concurrent_requests_each_get_their_own_rows(registry: Path, server: Served) -> None:
    rows = _rows(registry, 64).select(INPUTS)
    expected = load_model("churn@1", str(registry / "models")).score(rows)
    answers: dict[int, list[float]] = {}

    def client(i: int) -> None:
        part = rows.slice(i * 8, 8)
        answers[i] = [p["probability"] for p in server.post(_split(part))[1]["predictions"]]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [p for i in range(8) for p in answers[i]]
    assert got == expected.column("probability").to_pylist()


def test_a_regressor_and_a_multiclass_model(registry: Path) -> None:
    rows = _rows(registry, 30)
    for name, column in (("charges", "prediction"), ("boosted", "probability")):
        bulk = _bulk(registry, name, rows)
        served = _start(registry, name)
        assert isinstance(served, Served)
        try:
            status, answer = served.post(_split(rows.select([*INPUTS, "churned"])))
            assert status == 200, answer
            assert [p[column] for p in answer["predictions"]] == bulk.column(column).to_pylist()
            assert ("probability" in answer["predictions"][0]) == (name == "boosted")
        finally:
            assert _stop(served) == 143


def test_a_chain_through_pca_is_served_as_the_score_step_scores(registry: Path) -> None:
    """standard_scale -> pca -> logistic_regression: the components replace the scaled
    columns, the model trains on them, and scoring repeats the projection."""
    text = TRAIN.replace("      - op: {model}\n", "      - op: pca\n        columns: [tenure, "
                         "monthly_charges, total_charges]\n        k: 2\n"
                         "      - op: {model}\n")
    run(write_pipeline(registry, text.format(data=registry / "train", model="logistic_regression",
                                             label="churned", name="components", extra=""),
                       "components.yaml"),
        models=str(registry / "models"), runs_dir=str(registry / "runs"))
    chain = ModelStore(str(registry / "models")).load("components").chain
    assert [step.name for step in chain.steps][-3:] == [
        "standard_scale.fitted", "pca.fitted", "logistic_regression.fitted"]
    assert chain.steps[-1].features[-2:] == ["pca_0", "pca_1"]
    rows = _rows(registry, 30)
    bulk = _bulk(registry, "components", rows)
    in_process = load_model("components", str(registry / "models")).score(rows)
    np.testing.assert_array_equal(in_process.column("probability").to_numpy(),
                                  bulk.column("probability").to_numpy())
    served = _start(registry, "components")
    assert isinstance(served, Served)
    try:
        status, answer = served.post(_split(rows.select(INPUTS)))
        assert status == 200, answer
        assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
            bulk.column("probability").to_pylist(), rel=1e-12)
        # an input a component is made from is required
        status, answer = served.post(_split(rows.select(INPUTS).drop_columns(["tenure"])))
        assert status == 400 and "tenure" in json.dumps(answer)
    finally:
        assert _stop(served) == 143


def test_a_target_encoded_chain_scores_with_every_rows_encodings(registry: Path) -> None:
    """target_encode of plan and region by churn -> boosted trees: the saved chain
    encodes with the fit on every row, scored in process (serve's path) as the score
    step scores; a region the fit never saw gets the label's mean."""
    text = TRAIN.replace("      - op: one_hot\n        columns: [plan, region]\n",
                         "      - op: target_encode\n        columns: [plan, region]\n"
                         "        label: churned\n")
    run(write_pipeline(registry, text.format(data=registry / "train",
                                             model="gradient_boosted_trees", label="churned",
                                             name="encoded", extra="        n_trees: 5"),
                       "encoded.yaml"),
        models=str(registry / "models"), runs_dir=str(registry / "runs"))
    chain = ModelStore(str(registry / "models")).load("encoded").chain
    encoder = chain.steps[1]
    assert encoder.name == "target_encode.fitted"
    rows = _rows(registry, 30)
    unseen = rows.slice(0, 20)
    unseen = unseen.set_column(unseen.schema.get_field_index("region"), "region",
                               pa.array(["atlantis"] * unseen.num_rows))
    for table in (rows, unseen):
        bulk = _bulk(registry, "encoded", table)
        in_process = load_model("encoded", str(registry / "models")).score(table)
        np.testing.assert_array_equal(in_process.column("probability").to_numpy(),
                                      bulk.column("probability").to_numpy())
    encoded = encoder.transform(unseen.select(["plan", "region"]), None)
    assert encoded.column("region").to_pylist() == [encoder.mean[0]] * unseen.num_rows


def test_refresh_serves_the_version_an_alias_moves_to(registry: Path) -> None:
    store = ModelStore(str(registry / "models"))
    store.set_alias("churn", "canary", 1)
    served = _start(registry, "churn@canary", "--refresh", "0.2")
    assert isinstance(served, Served)
    rows = _rows(registry, 5).select(INPUTS)
    try:
        first = served.post(_split(rows))[1]
        store.set_alias("churn", "canary", 2)
        deadline = time.monotonic() + 30
        while served.post(_split(rows))[1]["model"] != "churn@2":
            assert time.monotonic() < deadline, "the server never moved to churn@2"
            time.sleep(0.1)
        second = served.post(_split(rows))[1]
        v2 = load_model("churn@2", str(registry / "models")).score(rows)
        assert [p["probability"] for p in second["predictions"]] == \
            v2.column("probability").to_pylist()
        assert first["predictions"] != second["predictions"]
        # an alias removed: the refresh fails, the server keeps serving what it had
        info = _metrics(served)
        assert info["sluice_model_info", (("asked", "churn@canary"), ("model", "churn@1"))] == 0
        assert info["sluice_model_info", (("asked", "churn@canary"), ("model", "churn@2"))] == 1
        store.remove_alias("churn", "canary")
        time.sleep(0.6)
        assert served.post(_split(rows))[1]["model"] == "churn@2"
    finally:
        assert _stop(served) == 143
    log = "".join(served.log)
    assert "now serving churn@2 (was churn@1) for churn@canary" in log
    assert "refresh of churn@canary failed, still serving churn@2: model 'churn' has no " \
           "alias 'canary'" in log


@pytest.mark.slow
def test_workers_share_the_port(registry: Path) -> None:
    served = _start(registry, "churn@2", "--workers", "2")
    assert isinstance(served, Served)
    rows = _rows(registry, 5).select(INPUTS)
    expected = load_model("churn@2", str(registry / "models")).score(rows)
    try:
        for _ in range(20):
            status, answer = served.post(_split(rows))
            assert status == 200, answer
            assert [p["probability"] for p in answer["predictions"]] == \
                expected.column("probability").to_pylist()
        # both processes answer (each connection is accepted by one or the other: on a
        # loaded machine one may take every request for a while; asked until both have
        # answered, for up to a minute)
        processes = set()
        deadline = time.monotonic() + 60
        while len(processes) < 2 and time.monotonic() < deadline:
            processes.add(json.loads(served.request("GET", "/metadata")[2])["process"])
            time.sleep(0.01)
        assert len(processes) == 2, processes
        # the workers' counts, summed
        got = _metrics(served)
        assert got["sluice_requests_total", (("format", "json"), ("model", "churn@2"),
                                             ("status", "200"))] == 20
        assert got["sluice_rows_total", (("model", "churn@2"),)] == 100
    finally:
        assert _stop(served) == 143


@pytest.mark.slow
def test_workers_have_started_when_the_server_says_serving(registry: Path,
                                                           tmp_path: Path) -> None:
    """With --workers, "serving" is said once every worker has loaded the model and
    started its application, so that a request is answered at once (it was said as the
    socket opened, seconds before a worker could answer): here each worker starts two
    seconds late, and each has started when the line comes."""
    hooks, started = tmp_path / "hooks", tmp_path / "started"
    hooks.mkdir()
    started.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, pathlib, time\n"
        "if 'SLUICE_SERVE' in os.environ:  # a worker process (the server's settings)\n"
        "    time.sleep(2)\n"
        f"    pathlib.Path({str(started)!r}, str(os.getpid())).touch()\n")
    path = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH")) if p)
    served = _start(registry, "churn@2", "--workers", "2", env={"PYTHONPATH": path})
    assert isinstance(served, Served)
    try:
        assert len(list(started.iterdir())) >= 2
        status, answer = served.post(_split(_rows(registry, 2).select(INPUTS)))
        assert status == 200, answer
    finally:
        assert _stop(served) == 143


def test_sigterm_finishes_the_request_in_flight(registry: Path) -> None:
    served = _start(registry, "churn")
    assert isinstance(served, Served)
    rows = pa.concat_tables([_rows(registry, 500).select(INPUTS)] * 200)  # 100k rows
    result: dict[str, Any] = {}

    body = json.dumps(_split(rows)).encode()
    sent_half, go_on = threading.Event(), threading.Event()

    def halves() -> Iterator[bytes]:
        """The body in two chunks, the second once the server has been signalled: the
        request is in flight when SIGTERM comes, however fast the server answers."""
        yield body[: len(body) // 2]
        sent_half.set()
        go_on.wait(30)
        yield body[len(body) // 2:]

    def client() -> None:
        status, _, data = served.request("POST", "/invocations", halves(),
                                         {"Content-Type": "application/json"})
        result["answer"] = (status, json.loads(data))
        result["answered"] = time.monotonic()

    thread = threading.Thread(target=client)
    thread.start()
    assert sent_half.wait(30)
    time.sleep(0.2)  # the first half is with the server
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    go_on.set()
    thread.join(60)
    assert served.wait() == 143
    assert result["answered"] > signalled  # the request was in flight
    status, answer = result["answer"]
    assert status == 200 and len(answer["predictions"]) == rows.num_rows


def test_startup_problems_are_one_line(registry: Path) -> None:
    done = _start(registry, "churn@staging", expect_failure=True)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
    assert "staging" in done.stderr
    done = _start(registry, "churn", "--device", "gpu", expect_failure=True,
                  env={"SLUICE_GPU_STANDIN": ""})
    assert done.returncode == 1 and "device gpu was asked for, but" in done.stderr
    served = _start(registry, "churn")
    assert isinstance(served, Served)
    try:
        done = subprocess.run([SLUICE, "serve", "churn", "--models", str(registry / "models"),
                               "--port", str(served.port)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{served.port}" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        assert _stop(served) == 143


def test_the_gpu_path_on_the_stand_in_gives_the_cpu_answer(registry: Path) -> None:
    rows = _rows(registry, 20).select(INPUTS)
    cpu = load_model("churn@1", str(registry / "models")).score(rows)
    served = _start(registry, "churn@1", "--device", "gpu",
                    env={"SLUICE_GPU_STANDIN": "array_api_strict"})
    assert isinstance(served, Served)
    try:
        assert json.loads(served.request("GET", "/metadata")[2])["device"] == "gpu"
        answer = served.post(_split(rows))[1]
        np.testing.assert_allclose([p["probability"] for p in answer["predictions"]],
                                   cpu.column("probability").to_numpy(), rtol=1e-12)
    finally:
        assert _stop(served) == 143


def test_serve_help_lists_the_options() -> None:
    done = subprocess.run([SLUICE, "serve", "--help"], capture_output=True, text=True,
                          timeout=60)
    for option in ("--port", "--workers", "--refresh", "--max-rows", "--device"):
        assert option in done.stdout


def test_a_bug_is_a_500_with_the_traceback_in_the_log(registry: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import socket

    import uvicorn

    from pipelines import serving

    def broken(self: Any, table: pa.Table, **kwargs: Any) -> pa.Table:
        raise ZeroDivisionError("a bug")

    settings = serving.Settings(ref="churn", models=str(registry / "models"))
    app = serving.create_app(settings)
    monkeypatch.setattr(serving.ScoringModel, "score_table", broken)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = Served.__new__(Served)
        client.port = sock.getsockname()[1]
        status, answer = client.post(_split(_rows(registry, 2).select(INPUTS)))
        assert status == 500
        assert answer["error_code"] == "INTERNAL_ERROR"
        assert answer["message"] == "ZeroDivisionError: a bug"
        assert "bug in sluice" in answer["hint"]
        assert client.request("GET", "/ping")[0] == 200
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert any("ZeroDivisionError" in (r.exc_text or "") or r.exc_info for r in caplog.records)


DRIFT = """
    pipeline: watch
    steps:
      - op: read_parquet
        path: {log}
      - op: drift
        model: churn@1
"""


def test_logged_rows_are_what_was_answered_and_a_pipeline_reads_them(registry: Path
                                                                       ) -> None:
    log = registry / "served"
    served = _start(registry, "churn@1", "--log-rows", str(log), "--log-every", "0.2")
    assert isinstance(served, Served)
    rows = _rows(registry, 30).select(INPUTS)
    answers = []
    try:
        for i in range(3):
            status, headers, data = served.request(
                "POST", "/invocations", json.dumps(_split(rows.slice(i * 10, 10))),
                {"Content-Type": "application/json", "X-Request-Id": f"r{i}"})
            assert status == 200 and headers["x-request-id"] == f"r{i}"
            answers += json.loads(data)["predictions"]
        deadline = time.monotonic() + 30
        while not list(log.glob("date=*/*.parquet")):
            assert time.monotonic() < deadline, "no file was written"
            time.sleep(0.1)
        # one more, after a file was written: in the file the shutdown writes
        status, headers, data = served.request("POST", "/invocations",
                                               json.dumps(_split(rows.slice(0, 5))),
                                               {"Content-Type": "application/json"})
        answers += json.loads(data)["predictions"]
        generated = headers["x-request-id"]
        got = _metrics(served)
    finally:
        assert _stop(served) == 143
    files = sorted(log.glob("date=*/*.parquet"))
    assert len(files) >= 2 and not list(log.glob("date=*/.*"))  # no staging file left
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("served_at")
    assert table.column_names == ["total_charges", "plan", "region", "tenure",
                                  "monthly_charges", "prediction", "probability",
                                  "served_at", "model", "request_id"]
    assert table.num_rows == 35
    ids = table.column("request_id").to_pylist()
    assert ids == ["r0"] * 10 + ["r1"] * 10 + ["r2"] * 10 + [generated] * 5
    assert table.column("probability").to_pylist() == [a["probability"] for a in answers]
    assert table.select(INPUTS).slice(0, 30).equals(rows)
    assert set(table.column("model").to_pylist()) == {"churn@1"}
    assert got.get(("sluice_logged_rows_total", ()), 0) >= 30
    # the served rows are a dataset: a drift pipeline reads them, the date a column
    folder = registry / "watch"
    folder.mkdir()
    record = run(write_pipeline(folder, DRIFT.format(log=log)), models=str(registry / "models"),
                 runs_dir=str(folder / "runs"))
    drift = record["metrics"]["drift"]
    assert set(drift["psi"]) == set(INPUTS), drift
    assert all(0 <= v < 10 for v in drift["psi"].values()), drift
    assert record["steps"]["read_parquet"]["rows"] == 35


def test_a_log_that_cannot_be_written_loses_rows_not_requests(registry: Path) -> None:
    blocked = registry / "not-a-folder"
    blocked.write_text("a file where the log's folder would be")
    served = _start(registry, "churn@1", "--log-rows", str(blocked), "--log-every", "0.1")
    assert isinstance(served, Served)
    rows = _rows(registry, 4).select(INPUTS)
    try:
        assert served.post(_split(rows))[0] == 200
        deadline = time.monotonic() + 30
        while _metrics(served).get(("sluice_log_lost_rows_total", ()), 0) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert served.post(_split(rows))[0] == 200
    finally:
        assert _stop(served) == 143
    assert "--log-rows: 4 scored rows not written to" in "".join(served.log)


# --------------------------------------------------------------------------- Spark


def test_spark_udf_and_score_spark_answer_as_load_model(registry: Path, spark: Any) -> None:
    from pyspark.sql import functions as F

    from pipelines.serving import score_spark, spark_udf

    models = str(registry / "models")
    rows = _rows(registry, 300)
    path = registry / "spark-rows.parquet"
    pq.write_table(rows, path)
    df = spark.spark.read.parquet(str(path))
    expected = load_model("churn@1", models).score(rows)
    by_id = dict(zip(rows.column("customer_id").to_pylist(),
                     expected.column("probability").to_pylist()))

    score = spark_udf("churn@1", models)
    assert score.columns == ["total_charges", "plan", "region", "tenure", "monthly_charges"]
    for argument in ([F.struct(*score.columns)], score.columns):
        got = df.select("customer_id", score(*argument).alias("p")).collect()
        assert {r.customer_id: r.p for r in got} == pytest.approx(by_id, rel=1e-12)

    everything = spark_udf("churn@1", models, result="all", contributions=True)
    first = df.select(everything(F.struct(*everything.columns)).alias("s")).first().s
    assert set(first.asDict()) == {"prediction", "probability", "contributions",
                                   "contribution_base"}
    assert first.probability == pytest.approx(expected.column("probability")[0].as_py())

    boosted = spark_udf("boosted", models)  # three classes: an array per row
    classes = load_model("boosted", models).score(rows)
    got = df.select("customer_id", boosted(F.struct(*boosted.columns)).alias("p")).collect()
    want = dict(zip(rows.column("customer_id").to_pylist(),
                    classes.column("probability").to_pylist()))
    np.testing.assert_allclose([list(r.p) for r in sorted(got, key=lambda r: r.customer_id)],
                               [want[k] for k in sorted(want)], rtol=1e-12)

    charges = spark_udf("charges", models)  # a regression: its prediction by default
    got = df.select("customer_id", charges(F.struct(*charges.columns)).alias("p")).collect()
    want = load_model("charges", models).score(rows)
    assert {r.customer_id: r.p for r in got} == pytest.approx(dict(zip(
        rows.column("customer_id").to_pylist(), want.column("prediction").to_pylist())),
        rel=1e-12)

    scored = score_spark(df, "churn@1", models)
    assert scored.columns == [*rows.column_names, "prediction", "probability"]
    assert dict(scored.dtypes)["tenure"] == "bigint"
    got = scored.select("customer_id", "prediction", "probability").collect()
    assert {r.customer_id: r.probability for r in got} == pytest.approx(by_id, rel=1e-12)
    assert sorted(r.prediction for r in got) == sorted(
        expected.column("prediction").to_pylist())

    cut = load_model("churn@1", models).score(rows, threshold=0.3)
    cut_by_id = dict(zip(rows.column("customer_id").to_pylist(),
                         cut.column("prediction").to_pylist(), strict=True))
    assert sum(cut_by_id.values()) > sorted(r.prediction for r in got).count(1)
    # a threshold cuts the prediction: the result a threshold is given for by default
    for at in (spark_udf("churn@1", models, result="prediction", threshold=0.3),
               spark_udf("churn@1", models, threshold=0.3)):
        chosen = df.select("customer_id", at(F.struct(*at.columns)).alias("p")).collect()
        assert {r.customer_id: r.p for r in chosen} == cut_by_id
    with pytest.raises(SluiceError, match="threshold cuts the prediction, and result "
                                          "'probability' is the same without it"):
        spark_udf("churn@1", models, result="probability", threshold=0.3)
    # said on the driver, as the function is made (not in every executor's task)
    with pytest.raises(SluiceError, match="threshold cuts a binary classifier's "
                                          "probability, and model 'charges' predicts numbers"):
        spark_udf("charges", models, threshold=0.3)
    with pytest.raises(SluiceError, match="threshold must be a number from 0 to 1"):
        spark_udf("churn@1", models, result="prediction", threshold=1.5)
    chosen = score_spark(df, "churn@1", models, threshold=0.3).collect()
    assert {r.customer_id: r.prediction for r in chosen} == cut_by_id

    with pytest.raises(SluiceError, match="result 'score': model churn@1 gives prediction, "
                                          "probability"):
        spark_udf("churn@1", models, result="score")
    with pytest.raises(Exception, match=r"takes 5 columns \(total_charges, plan, region, "
                                        r"tenure, monthly_charges\), in that order"):
        df.select(score("tenure", "plan")).collect()


def test_score_dask_answers_as_load_model(registry: Path, dask_engine: Any) -> None:
    import dask.dataframe as dd

    from pipelines.serving import score_dask

    rows = _rows(registry, 300)
    path = registry / "dask-rows"
    path.mkdir(exist_ok=True)
    for i in range(3):
        pq.write_table(rows.slice(i * 100, 100), path / f"part-{i}.parquet")
    ddf = dd.read_parquet(str(path))
    scored = score_dask(ddf, "churn@1", str(registry / "models"))
    assert list(scored.columns) == [*rows.column_names, "prediction", "probability"]
    got = dask_engine._client.compute(scored).result().sort_values("customer_id")
    expected = load_model("churn@1", str(registry / "models")).score(rows)
    np.testing.assert_allclose(got["probability"].to_numpy(),
                               expected.column("probability").to_numpy(), rtol=1e-12)
    assert got["prediction"].tolist() == expected.column("prediction").to_pylist()


def test_json_answers_written_by_arrow_kernels_read_back_exactly() -> None:
    from pipelines.serving import KERNEL_ROWS, json_body

    rng = np.random.default_rng(3)
    n = KERNEL_ROWS * 3
    values = rng.random(n) * 10.0 ** rng.integers(-300, 300, n)
    values[:6] = [float("nan"), float("inf"), -0.0, 5.0, 1e16, 1e-7]
    table = pa.table({
        "id": pa.array([f'c"{i}\\\\' if i % 7 else None for i in range(n)]),
        "prediction": pa.array(rng.integers(-(2**62), 2**62, n)),
        "probability": pa.array(values),
        "flag": pa.array([bool(i % 2) if i % 5 else None for i in range(n)]),
        "plan": pa.array(["basic", "pro"] * (n // 2)).dictionary_encode(),
    })
    fast = json.loads(json_body(table, "m@1"))
    slow = json.loads(json_body(table.slice(0, KERNEL_ROWS - 1), "m@1"))  # Python's json
    expected = table.to_pylist()
    for row in expected:
        p = row["probability"]
        row["probability"] = p if p == p and abs(p) != float("inf") else None
    assert fast == {"predictions": expected, "model": "m@1"}
    assert slow["predictions"] == expected[:KERNEL_ROWS - 1]
    assert all(isinstance(r["probability"], float) for r in fast["predictions"]
               if r["probability"] is not None)  # 5.0 is written 5.0, not 5
    # a list column (multiclass probabilities) goes through Python's json
    lists = pa.table({"probability": pa.array([[0.25, 0.75]] * n)})
    assert json.loads(json_body(lists, "m@1"))["predictions"][0] == {
        "probability": [0.25, 0.75]}


def test_live_drift_over_windows_of_scored_rows(registry: Path) -> None:
    served = _start(registry, "churn@1", "--drift-window", "200")
    assert isinstance(served, Served)
    rows = _rows(registry, 400).select(INPUTS)
    like = rows.slice(0, 200)
    charges = like.schema.get_field_index("monthly_charges")
    shifted = rows.slice(200, 200)
    shifted = shifted.set_column(charges, "monthly_charges",
                                 pc.multiply(shifted.column(charges), 3.0))
    try:
        assert json.loads(served.request("GET", "/metadata")[2])["drift"] is None
        for part in (like.slice(0, 120), like.slice(120)):  # one window of 200
            assert served.post(_split(part))[0] == 200
        first = json.loads(served.request("GET", "/metadata")[2])["drift"]
        assert served.post(_split(shifted))[0] == 200
        second = json.loads(served.request("GET", "/metadata")[2])["drift"]
        got = _metrics(served)
    finally:
        assert _stop(served) == 143
    assert first["drifted"] == [] and first["rows"] == 200
    assert second["drifted"] == ["monthly_charges"] and second["psi"]["monthly_charges"] > 1
    # the drift step's figures of the same rows
    folder = registry / "drift-window"
    folder.mkdir()
    pq.write_table(shifted, folder / "rows.parquet")
    record = run(write_pipeline(folder, DRIFT.format(log=folder / "rows.parquet")),
                 models=str(registry / "models"), runs_dir=str(folder / "runs"))
    assert second["psi"] == pytest.approx(record["metrics"]["drift"]["psi"], rel=1e-12)
    assert got["sluice_drift_windows_total", (("model", "churn@1"),)] == 2
    assert got["sluice_drift_psi", (("column", "monthly_charges"), ("model", "churn@1"))] == \
        pytest.approx(second["psi"]["monthly_charges"])
    assert "churn@1: the last 200 rows moved from the training rows: PSI monthly_charges" \
        in "".join(served.log)


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_and_a_token(registry: Path, tmp_path: Path) -> None:
    import ssl

    cert, key = _certificate(tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    process = subprocess.Popen(
        [SLUICE, "serve", "churn@1", "--models", str(registry / "models"), "--port", "0",
         "--no-access-log", "--token-file", str(token), "--ssl-certfile", str(cert),
         "--ssl-keyfile", str(key)], stderr=subprocess.PIPE, text=True)
    line, before = _serving_line(process)
    assert "on https://127.0.0.1:" in line, line
    served = Served(process, int(line.split("https://127.0.0.1:")[1].split(":")[0]), line,
                    before)
    context = ssl.create_default_context(cafile=str(cert))
    rows = _rows(registry, 3).select(INPUTS)

    def request(method: str, path: str, auth: str | None, body: Any = None
                ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPSConnection("127.0.0.1", served.port, timeout=60,
                                                 context=context)
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        connection.request(method, path, None if body is None else json.dumps(body),
                           headers)
        response = connection.getresponse()
        out = (response.status, {k.lower(): v for k, v in response.getheaders()},
               response.read())
        connection.close()
        return out

    try:
        assert request("GET", "/ping", None)[0] == 200  # liveness needs no token
        status, headers, data = request("POST", "/invocations", None, _split(rows))
        assert (status, headers["www-authenticate"]) == (401, "Bearer")
        assert json.loads(data)["message"] == "POST /invocations: no Authorization header"
        status, _, data = request("POST", "/invocations", "Bearer wrong", _split(rows))
        assert status == 401 and "not this server's" in json.loads(data)["message"]
        for path in ("/metadata", "/metrics", "/version"):
            assert request("GET", path, None)[0] == 401, path
        status, _, data = request("POST", "/invocations", "Bearer s3cret-token", _split(rows))
        assert status == 200 and len(json.loads(data)["predictions"]) == 3
        assert request("GET", "/metadata", "Bearer s3cret-token")[0] == 200
        with pytest.raises(http.client.RemoteDisconnected):  # plain HTTP is not answered
            plain = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
            plain.request("GET", "/ping")
            plain.getresponse()
    finally:
        assert _stop(served) == 143
    done = _start(registry, "churn", "--ssl-certfile", str(cert), expect_failure=True)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 1
    assert "HTTPS needs both --ssl-certfile and --ssl-keyfile" in done.stderr


def test_a_canary_answers_its_share_of_the_requests_by_their_id(registry: Path) -> None:
    served = _start(registry, "churn@1", "--canary", "churn@2:30")
    assert isinstance(served, Served)
    rows = _rows(registry, 5).select(INPUTS)
    models = str(registry / "models")
    expected = {ref: load_model(ref, models).score(rows).column("probability").to_pylist()
                for ref in ("churn@1", "churn@2")}
    by_id: dict[str, str] = {}
    try:
        for i in range(200):
            status, headers, data = served.request(
                "POST", "/invocations", json.dumps(_split(rows)),
                {"Content-Type": "application/json", "X-Request-Id": f"req-{i % 100}"})
            assert status == 200
            ref = headers["x-sluice-model"]
            assert [p["probability"] for p in json.loads(data)["predictions"]] == expected[ref]
            assert by_id.setdefault(f"req-{i % 100}", ref) == ref  # a retry: the same model
        meta = json.loads(served.request("GET", "/metadata")[2])
        got = _metrics(served)
    finally:
        assert _stop(served) == 143
    share = sum(ref == "churn@2" for ref in by_id.values())
    assert 15 <= share <= 45, share  # 30% of 100 ids, by their hash
    assert meta["canary"] == {"model": "churn@2", "asked": "churn@2", "percent": 30.0}
    assert got["sluice_requests_total", (("format", "json"), ("model", "churn@2"),
                                         ("status", "200"))] == 2 * share
    done = _start(registry, "churn@1", "--canary", "churn@2", expect_failure=True)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 2 and "is not REF:PERCENT" in done.stderr


def test_a_shadow_scores_every_request_into_the_row_log(registry: Path) -> None:
    log = registry / "shadowed"
    served = _start(registry, "churn@1", "--shadow", "churn@2", "--log-rows", str(log),
                    "--log-every", "3600")
    assert isinstance(served, Served)
    rows = _rows(registry, 40).select(INPUTS)
    models = str(registry / "models")
    first = load_model("churn@1", models).score(rows)
    second = load_model("churn@2", models).score(rows)
    try:
        for i in range(4):
            status, headers, data = served.request(
                "POST", "/invocations", json.dumps(_split(rows.slice(i * 10, 10))),
                {"Content-Type": "application/json", "X-Request-Id": f"s{i}"})
            assert status == 200 and headers["x-sluice-model"] == "churn@1"
        deadline = time.monotonic() + 30
        while _metrics(served).get(("sluice_shadow_rows_total", (("model", "churn@2"),)),
                                   0) < 40:
            assert time.monotonic() < deadline, "the shadow never scored"
            time.sleep(0.05)
        got = _metrics(served)
        meta = json.loads(served.request("GET", "/metadata")[2])
    finally:
        assert _stop(served) == 143
    assert meta["shadow"] == {"model": "churn@2", "asked": "churn@2"}
    logged = pa.concat_tables([pq.read_table(f) for f in sorted(log.glob("date=*/*.parquet"))])
    for ref, table in (("churn@1", first), ("churn@2", second)):
        mine = logged.filter(pc.equal(logged.column("model"), ref)).sort_by(
            [("request_id", "ascending")])
        assert mine.num_rows == 40
        # each request scored alone against the batch: the same rows' scores to the last
        # bits BLAS gives a row in another block (AVX-512 kernels on an AMD EPYC differ)
        np.testing.assert_allclose(mine.column("probability").to_numpy(),
                                   table.column("probability").to_numpy(), rtol=1e-13,
                                   atol=0)
    disagreeing = sum(a != b for a, b in zip(first.column("prediction").to_pylist(),
                                             second.column("prediction").to_pylist()))
    assert got.get(("sluice_shadow_disagreements_total", (("model", "churn@2"),)),
                   0) == disagreeing


def test_dates_in_json_nested_columns_not_in_csv(registry: Path, server: Served) -> None:
    rows = _rows(registry, 80)  # past the kernels' threshold, and under it
    for n in (80, 3):
        sink = pa.BufferOutputStream()
        part = rows.slice(0, n)
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        status, _, data = server.request(
            "POST", "/invocations?keep=customer_id,signup_date", sink.getvalue().to_pybytes(),
            {"Content-Type": ARROW, "Accept": "application/json"})
        assert status == 200, data
        answer = json.loads(data)["predictions"]
        assert [a["signup_date"] for a in answer] == [
            d.isoformat() for d in part.column("signup_date").to_pylist()]


def test_arrow_dictionaries_and_json_rows_share_one_drift_window_and_row_log(
        registry: Path) -> None:
    log = registry / "mixed-log"
    served = _start(registry, "churn@1", "--drift-window", "100", "--log-rows", str(log),
                    "--log-every", "3600")
    assert isinstance(served, Served)
    rows = _rows(registry, 300).select(INPUTS)
    coded = rows.slice(0, 150)
    coded = coded.set_column(coded.schema.get_field_index("plan"), "plan",
                             pc.dictionary_encode(coded.column("plan")))
    coded = coded.set_column(coded.schema.get_field_index("tenure"), "tenure",
                             coded.column("tenure").cast(pa.int32()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, coded.schema) as writer:
        writer.write_table(coded)
    try:
        status, _, data = served.request("POST", "/invocations", sink.getvalue().to_pybytes(),
                                         {"Content-Type": ARROW})
        assert status == 200, data
        for i in range(3):
            assert served.post(_split(rows.slice(150 + 50 * i, 50)))[0] == 200
        windows = _metrics(served)["sluice_drift_windows_total", (("model", "churn@1"),)]
    finally:
        assert _stop(served) == 143
    assert windows == 2
    folder = registry / "mixed-watch"
    folder.mkdir()
    record = run(write_pipeline(folder, DRIFT.format(log=log)), models=str(registry / "models"),
                 runs_dir=str(folder / "runs"))
    assert record["steps"]["read_parquet"]["rows"] == 300  # one type per column in the log


def test_bearer_is_any_case_and_a_bad_certificate_is_one_line(registry: Path,
                                                              tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc")
    served = _start(registry, "churn@1", "--token-file", str(token))
    assert isinstance(served, Served)
    rows = _rows(registry, 2).select(INPUTS)
    try:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert served.post(json.dumps(_split(rows)), Authorization=f"{scheme} abc")[0] \
                == 200, scheme
        assert served.post(json.dumps(_split(rows)), Authorization="Basic abc")[0] == 401
    finally:
        assert _stop(served) == 143
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    for workers in ("1", "2"):
        done = _start(registry, "churn@1", "--ssl-certfile", str(junk), "--ssl-keyfile",
                      str(junk), "--workers", workers, expect_failure=True)
        assert isinstance(done, subprocess.CompletedProcess)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"cannot use --ssl-certfile {junk}" in done.stderr


def test_pandas_keeps_its_index(registry: Path) -> None:
    frame = _rows(registry, 20).to_pandas().set_index("customer_id")
    scored = load_model("churn@1", str(registry / "models")).score(frame)
    assert scored.index.name == "customer_id" and list(scored.index) == list(frame.index)
    assert list(scored.columns) == [*frame.columns, "prediction", "probability"]


def test_a_full_row_log_file_is_written_beside_the_requests(registry: Path) -> None:
    log = registry / "by-size"
    served = _start(registry, "churn@1", "--log-rows", str(log), "--log-every", "3600",
                    "--log-file-rows", "10")
    assert isinstance(served, Served)
    rows = _rows(registry, 25).select(INPUTS)
    try:
        for start, size in ((0, 12), (12, 5), (17, 8)):
            assert served.post(_split(rows.slice(start, size)))[0] == 200
        deadline = time.monotonic() + 30
        while not list(log.glob("date=*/*.parquet")):  # the timer is an hour away
            assert time.monotonic() < deadline, "a full file was not written"
            time.sleep(0.05)
    finally:
        assert _stop(served) == 143
    files = sorted(log.glob("date=*/*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 25  # the rest at shutdown


def test_an_integer_category_past_the_trained_type_is_unseen_as_in_the_score_step(
        tmp_path: Path) -> None:
    """A store number the int8 of training cannot hold (300) is a category the model never
    saw, answered as the score step answers it (the missing side), not refused."""
    rng = np.random.default_rng(3)
    store = rng.integers(0, 6, 600).astype(np.int8)
    x = rng.random(600)
    (tmp_path / "train").mkdir()
    pq.write_table(pa.table({"store": store, "x": x, "y": x + (store == 3) * 2.0}),
                   tmp_path / "train" / "part-0.parquet")
    text = f"""
        pipeline: stores
        steps:
          - op: read_parquet
            path: {tmp_path / "train"}
          - op: gradient_boosted_trees
            label: y
            categorical: [store]
            n_trees: 3
            max_depth: 2
          - op: save_model
            name: stores
    """
    run(write_pipeline(tmp_path, text, "stores.yaml"), models=str(tmp_path / "models"),
        runs_dir=str(tmp_path / "runs"))
    rows = pa.table({"store": pa.array([300, 3, -200, 1], pa.int64()),
                     "x": [0.5, 0.5, 0.2, 0.9]})
    bulk = _bulk(tmp_path, "stores", rows).column("prediction").to_pylist()
    model = load_model("stores", str(tmp_path / "models"))
    answered = model.score(rows.to_pylist())
    assert [r["prediction"] for r in answered] == pytest.approx(bulk, rel=1e-12)
    assert bulk[0] != bulk[1]  # 300 is not store 3
    assert model.describe()["quantile"] is None
    upper = text.replace("name: stores", "name: upper").replace(
        "            label: y\n", "            label: y\n            loss: quantile\n"
                                  "            quantile: 0.9\n")
    run(write_pipeline(tmp_path, upper, "upper.yaml"), models=str(tmp_path / "models"),
        runs_dir=str(tmp_path / "runs"))
    assert load_model("upper", str(tmp_path / "models")).describe()["quantile"] == 0.9
    assert model.describe()["deviance"] is None
    # a log-link model (boosted or linear) says which deviance it minimises
    for op, name in (("gradient_boosted_trees", "claims"), ("linear_regression", "rates")):
        log_link = text.replace("name: stores", f"name: {name}").replace(
            "op: gradient_boosted_trees", f"op: {op}").replace(
            "            label: y\n", "            label: y\n            loss: tweedie\n"
                                      "            tweedie_power: 1.2\n")
        if op == "linear_regression":
            log_link = (log_link.replace("            categorical: [store]\n", "")
                        .replace("            n_trees: 3\n            max_depth: 2\n", ""))
        run(write_pipeline(tmp_path, log_link, f"{name}.yaml"),
            models=str(tmp_path / "models"), runs_dir=str(tmp_path / "runs"))
        assert load_model(name, str(tmp_path / "models")).describe()["deviance"] == {
            "metric": "tweedie_deviance", "tweedie_power": 1.2}
