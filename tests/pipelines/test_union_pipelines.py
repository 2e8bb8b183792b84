"""union in pipelines: two reads (one filtered and derived) appended, as pyarrow's
concat_tables of them, in the same order on every engine; the branches' row counts in
the run record; an aggregate's buckets and a model after a union; a branch's columns
from a fit; the plan's line and every problem at its line through `sluice validate`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import sluice_in_process, write_pipeline

from operators.base import DataError, lookup
from operators.io.parquet import ReadParquet
from pipelines.device import Placement
from pipelines.engines.base import Dataset, Engine
from pipelines.engines.local import LocalEngine
from pipelines.runner import plan_file, run
from pipelines.store import ModelStore
from pipelines.union import UnionSource

WEB, APP = 3000, 1600


@pytest.fixture
def feeds(workdir: Path) -> Path:
    """Web events in 3 files (id int32, ts timestamp[ms], text kinds) and app events in
    2 (their own column order, id int64, ts timestamp[us], dictionary kinds, a device)."""
    rng = np.random.default_rng(5)
    web = pa.table({
        "id": pa.array(np.arange(WEB, dtype=np.int32)),
        "ts": pa.array(rng.integers(0, 10**9, WEB).astype("datetime64[ms]"),
                       pa.timestamp("ms")),
        "kind": pa.array(rng.choice(["buy", "view", "refund"], WEB)),
        "amount": pa.array(rng.gamma(2.0, 10.0, WEB), mask=rng.random(WEB) < 0.05),
    })
    app = pa.table({
        "kind": pa.array(rng.choice(["buy", "view"], APP)).dictionary_encode(),
        "amount": rng.gamma(2.0, 12.0, APP),
        "device": pa.array(rng.choice(["ios", "android"], APP)),
        "id": pa.array(np.arange(APP, dtype=np.int64) + 10**10),
        "ts": pa.array(rng.integers(0, 10**12, APP).astype("datetime64[us]"),
                       pa.timestamp("us")),
    })
    for name, table, files in (("web", web, 3), ("app", app, 2)):
        folder = workdir / "data" / name
        folder.mkdir(parents=True)
        size = -(-table.num_rows // files)
        for i in range(files):
            pq.write_table(table.slice(i * size, size), folder / f"part-{i}.parquet",
                           row_group_size=400)
    return workdir / "data"


def read(folder: Path) -> pa.Table:
    return ds.dataset(folder).to_table()


def written(folder: Path) -> list[bytes]:
    """The bytes of each Parquet file in ``folder``, in partition order."""
    files = sorted(folder.glob("part-*.parquet"), key=lambda f: f.stem.rsplit("-", 1)[-1])
    return [f.read_bytes() for f in files]


APPENDED = """
    pipeline: appended
    steps:
      - id: web
        op: read_parquet
        path: data/web
        partition_mb: 0.01
      - id: app
        op: read_parquet
        path: data/app
      - id: big_app
        op: filter
        where: "amount > 15"
      - id: app_cents
        op: derive
        columns: {{cents: "amount * 100"}}
      - id: events
        op: union
        input: web
        steps: [app_cents]
        missing: null
      - id: events_out
        op: write_parquet
        path: out/{out}/events
      - id: app_out
        op: write_parquet
        input: app_cents
        path: out/{out}/app
      - id: by_kind
        op: aggregate
        input: events
        by: [kind]
        columns: {{events: count(), spend: sum(amount), devices: count(device)}}
      - op: write_parquet
        path: out/{out}/by_kind
"""


def expected(data: Path) -> pa.Table:
    """pyarrow's concat_tables of the web rows and the app rows the branch makes (kinds
    decoded: pyarrow does not unify a dictionary with text, the union does)."""
    app = read(data / "app")
    app = app.filter(pc.greater(app["amount"], 15))
    app = app.append_column("cents", pc.multiply(app["amount"], 100))
    app = app.set_column(0, "kind", app["kind"].cast(pa.string()))
    return pa.concat_tables([read(data / "web"), app], promote_options="permissive")


def test_a_union_is_concat_tables_in_order_on_every_engine(
        feeds: Path, workdir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_SCRATCH", str(workdir / "scratch"))
    record = run(write_pipeline(workdir, APPENDED.format(out=engine.name)),
                 engine_instance=engine)
    want = expected(feeds)
    got = read(workdir / "out" / engine.name / "events")
    assert got.schema == want.schema
    assert got.column_names == ["id", "ts", "kind", "amount", "device", "cents"]
    assert got.equals(want)  # the input's rows, then the branch's, in their order
    kept = want.num_rows - WEB
    steps = record["steps"]
    assert steps["events"]["kind"] == "union"
    assert steps["events"]["rows"] == want.num_rows
    # the branches' own steps are counted as the union reads them, once each
    assert steps["web"]["rows"] == WEB
    assert steps["app"]["filter_from"] == "big_app" and steps["app"]["rows"] == kept
    assert steps["big_app"]["rows"] == kept and steps["app_cents"]["rows"] == kept
    # the branch written elsewhere too: all its rows there, and counted once
    assert steps["app_out"]["rows"] == kept
    assert read(workdir / "out" / engine.name / "app").num_rows == kept
    frame = want.to_pandas()
    pandas = frame.groupby("kind").agg(events=("id", "size"), spend=("amount", "sum"),
                                       devices=("device", "count"))
    grouped = read(workdir / "out" / engine.name / "by_kind").to_pandas().set_index("kind")
    assert grouped["events"].to_dict() == pandas["events"].to_dict()
    assert grouped["devices"].to_dict() == pandas["devices"].to_dict()
    np.testing.assert_allclose(grouped.loc[pandas.index, "spend"], pandas["spend"],
                               rtol=1e-12)
    if engine.name != "local":
        local = run(write_pipeline(workdir, APPENDED.format(out="local"), "local.yaml"))
        assert read(workdir / "out" / "local" / "events").equals(got)
        # a file a partition (part-<run id>-<partition>), the same bytes on each engine
        files = written(workdir / "out" / "local" / "events")
        assert len(files) > 5 and files == written(workdir / "out" / engine.name / "events")
        assert {k: v.get("rows") for k, v in local["steps"].items()} == {
            k: v.get("rows") for k, v in steps.items()}


def test_the_union_estimates_its_size_from_its_branches_and_a_shuffle_uses_it(
        feeds: Path, workdir: Path) -> None:
    engine = LocalEngine(workers=2)

    def union_of(columns: list[str] | None, **params) -> tuple[Dataset, list[float]]:
        reads = [ReadParquet(path=str(feeds / name), columns=columns, **params)
                 for name in ("web", "app")]
        datasets = [engine.read(r, name, r.schema()) for r, name in zip(reads, ("web", "app"))]
        op = lookup("union")(steps=["app"], missing="null")
        op.bind_step_schema("app", reads[1].schema())
        schema = op.output_schema(reads[0].schema())
        source = UnionSource(op, "events", ["web", "app"], datasets,
                             [engine.partitions(d) for d in datasets], schema)
        return engine.read(source, "events", schema), [r.estimated_bytes() for r in reads]

    data, _ = union_of(None)
    infos = engine.partitions(data)
    branches = [engine.partitions(d) for d in data.source.datasets()]
    # the branches' partitions one after another, numbered as the union's own
    assert [(i.path, i.rows) for i in infos] == [(i.path, i.rows) for b in branches for i in b]
    assert [i.index for i in infos] == list(range(len(infos)))
    # the app's kinds decoded from a dictionary, the web rows' devices as null text: as
    # a step that changes or adds text, no estimate
    assert data.estimated_bytes(infos) is None
    data, (web, app) = union_of(["id", "amount"])
    # the web rows' ids widen to int64: 8 bytes a row added, as a cast step's would
    assert data.estimated_bytes(engine.partitions(data)) == web + 8 * WEB + app
    # a shuffle after such a union sizes its buckets from it
    record = run(write_pipeline(workdir, """
        pipeline: sized
        steps:
          - id: web
            op: read_parquet
            path: data/web
            columns: [id, amount]
          - id: app
            op: read_parquet
            path: data/app
            columns: [id, amount]
          - id: events
            op: union
            input: web
            steps: [app]
          - op: aggregate
            by: [id]
            columns: {n: count()}
            partition_mb: 0.01
          - op: write_parquet
            path: out/sized
        """, "sized.yaml"))
    assert record["steps"]["aggregate"]["shuffle"]["buckets"] == math.ceil(
        (web + 8 * WEB + app) / (0.01 * 2**20 / 4))
    assert record["steps"]["aggregate"]["rows"] == WEB + APP


def test_a_branch_on_a_gpu_makes_the_union_ask_for_one(feeds: Path) -> None:
    """(No GPU needed: where the engines send the tasks is what is checked.)"""
    web = ReadParquet(path=str(feeds / "web"))
    select = lookup("select")(columns=["id"])
    plain = Dataset(web, "web", schema=web.schema())
    placed = plain.then("scaled", select, web.schema(), Placement("gpu", "float64"))
    for branches, gpu in (([plain, placed], True), ([plain, plain], False)):
        union = UnionSource(lookup("union")(steps=["other"]), "events", ["web", "other"],
                            branches, [[], []], web.schema())
        data = Dataset(union, "events", schema=web.schema()).then("after", select,
                                                                   web.schema())
        assert data.uses_gpu() is gpu
        assert not data.uses_gpu(skip=1)  # from a cached partition: no branch is read


TRAIN = """
    pipeline: train_events
    steps:
      - id: web
        op: read_parquet
        path: data/web
      - id: app
        op: read_parquet
        path: data/app
        columns: [id, ts, kind, amount]
      - id: events
        op: union
        input: web
        steps: [app]
      - op: derive
        columns: {{bought: "if(kind = 'buy', 1, 0)", amount: "coalesce(amount, 0.0)"}}
      - id: model
        op: logistic_regression
        label: bought
        features: [amount]{before}
      - op: save_model
        name: events
"""


def test_a_model_after_a_union_starts_after_it_and_a_fit_before_is_refused(
        feeds: Path, workdir: Path) -> None:
    record = run(write_pipeline(workdir, TRAIN.format(before="")))
    assert record["steps"]["model"]["rows"] == WEB + APP
    model = ModelStore().load("events")
    assert [s.name for s in model.chain.steps] == ["derive", "logistic_regression.fitted"]
    assert [d["step"] for d in model.meta["data_steps"]] == ["events"]
    refused = TRAIN.format(before="").replace(
        "      - id: events\n", "      - op: standard_scale\n        columns: [amount]\n"
                               "      - id: events\n").replace("input: web",
                                                               "input: standard_scale")
    plan = plan_file(write_pipeline(workdir, refused, "refused.yaml"))
    (problem,) = plan.problems
    assert problem.message.startswith("step 'standard_scale' (standard_scale) is fitted "
                                      "before 'events' (union), and the model saved here "
                                      "starts after it")
    # a branch's own data steps are the model's data steps too (a scoring pipeline
    # repeats them): a filter on the app rows
    branch = TRAIN.format(before="").replace(
        "      - id: events\n", "      - id: paid\n        op: filter\n        input: app\n"
                                 "        where: \"amount > 1\"\n      - id: events\n").replace(
        "steps: [app]", "steps: [paid]").replace("name: events", "name: branch")
    run(write_pipeline(workdir, branch, "branch.yaml"))
    steps = [d["step"] for d in ModelStore().load("branch").meta["data_steps"]]
    assert steps == ["paid", "events"]
    # the same fit in one of the other steps' branch: refused as well
    in_branch = TRAIN.format(before="").replace(
        "      - id: events\n", "      - id: scaled\n        op: standard_scale\n"
                                 "        input: app\n        columns: [amount]\n"
                                 "      - id: events\n").replace("steps: [app]",
                                                                  "steps: [scaled]")
    plan = plan_file(write_pipeline(workdir, in_branch, "in_branch.yaml"))
    (problem,) = plan.problems
    assert problem.message.startswith("step 'scaled' (standard_scale) is fitted before "
                                      "'events' (union)")


ENCODED = """
    pipeline: encoded
    steps:
      - id: web
        op: read_parquet
        path: data/web
        columns: [id, kind]
      - id: encoded
        op: one_hot
        columns: [kind]
      - id: app
        op: read_parquet
        path: data/app
        columns: [id, device]
      - id: events
        op: union
        input: encoded
        steps: [app]
        missing: null
      - op: write_parquet
        path: out/{out}
"""


def test_a_branchs_columns_from_a_fit_are_bound_when_it_has_run(
        feeds: Path, workdir: Path, engine: Engine) -> None:
    path = write_pipeline(workdir, ENCODED.format(out=engine.name))
    plan = plan_file(path)
    assert plan.ok, plan.problems
    assert plan.step("events").open
    record = run(path, engine_instance=engine)
    got = read(workdir / "out" / engine.name)
    assert got.column_names == ["id", "kind=buy", "kind=refund", "kind=view", "device"]
    assert got.num_rows == record["steps"]["events"]["rows"] == WEB + APP
    assert record["steps"]["encoded"]["rows"] == WEB
    web = read(feeds / "web")
    assert got.column("kind=view").to_pylist()[:WEB] == [
        float(k == "view") for k in web.column("kind").to_pylist()]
    assert got.column("kind=view").null_count == APP
    assert got.column("device").null_count == WEB


def test_a_branchs_failure_names_its_step_and_a_value_that_does_not_fit_the_union(
        feeds: Path, workdir: Path) -> None:
    checked = write_pipeline(workdir, """
        pipeline: checked
        steps:
          - id: web
            op: read_parquet
            path: data/web
          - id: app
            op: read_parquet
            path: data/app
          - id: sane
            op: expect
            rules: {small: "amount < 60"}
          - id: events
            op: union
            input: web
            steps: [sane]
            missing: null
          - op: write_parquet
            path: out/checked
        """, "checked.yaml")
    with pytest.raises(DataError) as caught:
        run(checked)
    text = str(caught.value)
    assert text.startswith(f"{checked}:9: step 'sane', partition 0 ("), text
    assert "fail 'small'" in text
    assert not (workdir / "out" / "checked").exists()
    (workdir / "data" / "huge").mkdir()
    pq.write_table(pa.table({"id": pa.array([2**63 + 1], pa.uint64())}),
                   workdir / "data" / "huge" / "part-0.parquet")
    huge = write_pipeline(workdir, """
        pipeline: huge
        steps:
          - id: web
            op: read_parquet
            path: data/web
            columns: [id]
          - id: huge
            op: read_parquet
            path: data/huge
          - id: ids
            op: union
            input: web
            steps: [huge]
          - op: write_parquet
            path: out/huge
        """, "huge.yaml")
    with pytest.raises(DataError) as caught:
        run(huge)
    assert str(caught.value).startswith(
        f"{huge}:10: step 'ids', partition 3 ({workdir / 'data' / 'huge' / 'part-0.parquet'}"
        " row group 0): column 'id' of step 'huge' does not fit the union's type: uint64 "
        "to int64"), str(caught.value)


BASE = """
    pipeline: bad
    steps:
      - id: web
        op: read_parquet
        path: data/web
      - id: app
        op: read_parquet
        path: data/app
      - id: events
        op: union
        input: web
        steps:
          - app
        missing: null
      - op: write_parquet
        path: out/bad
"""


def test_the_plan_shows_the_steps_and_validate_finds_each_problem_at_its_line(
        feeds: Path, workdir: Path) -> None:
    good = write_pipeline(workdir, BASE, "good.yaml")
    shown = sluice_in_process("plan", str(good), cwd=workdir, check=True).stdout
    assert "  events: union <- web, app  (line 9)" in shown
    assert ("appends the rows of 'app' after 'web''s, columns matched by name: its "
            "partitions are theirs in that order, each read through its own steps (no "
            "shuffle); a column some of them lack is null in their rows") in shown
    assert "      + device string" in shown and "      ~ id int32 -> int64" in shown
    cases = {  # the change -> (the message, its line)
        "          - apq\n": ("steps: 'apq' names no step; did you mean 'app'?", 13),
        "          - events\n": ("steps: a step cannot read its own rows", 13),
        "          - app\n          - app\n": (
            "parameter 'steps': step 'app' is listed twice: its rows would come twice", 12),
        "          - app\n          - web\n": (
            "steps: 'web' is this step's input, whose rows come first already: listed "
            "again, they would come twice", 14),
        "          - app\n        missing: error\n": (
            "steps: columns are matched by name and every step must have the same ones: "
            "'device' is not in step 'web' (missing: null makes a column null", 12),
        "          - typed\n": (
            "steps: column 'kind' is string in step 'web', int64 in step 'typed': types "
            "with no common one to widen to (cast it to one type first: a step `op: cast` "
            "with `columns: {kind: string}` after step 'typed'", 12),
    }
    typed = ("      - id: typed\n        op: derive\n        input: app\n"
             "        columns: {kind: \"id * 2\"}\n")
    files = []
    for i, (change, _) in enumerate(cases.items()):
        text = BASE.replace("          - app\n        missing: null\n", change
                            + ("        missing: null\n" if "missing" not in change else ""))
        text = text.replace("      - op: write_parquet", typed + "      - op: write_parquet")
        files.append(write_pipeline(workdir, text, f"bad{i}.yaml"))
    # the step before it as a union's only other step (its input by default), and a
    # cycle through steps:
    files.append(write_pipeline(workdir, BASE.replace("        input: web\n", ""),
                                "implicit.yaml"))
    looped = BASE.replace("        path: data/app\n",
                          "        path: data/app\n      - id: later\n        op: filter\n"
                          "        input: events\n        where: \"id > 0\"\n").replace(
        "          - app\n", "          - later\n")
    files.append(write_pipeline(workdir, looped, "looped.yaml"))
    done = sluice_in_process("validate", *map(str, files), cwd=workdir, env={"CI": "1"})
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    for path, (message, line) in zip(files, cases.values(), strict=False):
        found = [e for e in errors if e.startswith(f"error: {path}:") and message in e]
        assert found, (message, [e for e in errors if str(path) in e])
        assert found[0].startswith(f"error: {path}:{line}: step 'events' (union): "), found
    (before,) = [e for e in errors if e.startswith(f"error: {files[-2]}:")]
    assert before == (f"error: {files[-2]}:12: step 'events' (union): steps: 'app' is the "
                      "step before this one, its input, whose rows come first already "
                      "(give `input:` the step whose rows come first, and list the others)")
    (cycle,) = [e for e in errors if e.startswith(f"error: {files[-1]}:")]
    assert "steps form a cycle: " in cycle and "events" in cycle and "later" in cycle
    assert errors[-1] == f"error: {len(files)} problem(s) in {len(files)} file(s)"
