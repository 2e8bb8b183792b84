"""The Spark engine in one shared local session: types to and from Spark, Spark-written
Parquet, the cache of multi-pass fits, task grouping and order, errors, the profile.

The engine test matrix (tests/pipelines/test_runner.py, test_equivalence.py) runs on
this same session; the standalone cluster and spark-submit are in test_spark_submit.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, exploding_pipeline, touch_pipeline, write_pipeline

from operators.base import DataError, SluiceError
from operators.io.parquet import ReadParquet
from operators.testing.kit import assert_tables_close
from pipelines.datagen import churn_table, generate
from pipelines.engines.base import StepFailure
from pipelines.engines.local import LocalEngine
from pipelines.engines.spark import (
    SparkEngine,
    load_profile,
    master_addresses,
    spark_schema,
    spark_type,
    task_attempts,
    unreachable_master,
)
from pipelines.runner import run

PROBE = '''
"""Test operators shipped to the executors with addPyFile."""

from typing import Any

import pyarrow as pa
from pydantic import Field

from operators.base import Params, Transform


class LogParams(Params):
    log: str = Field(description="file that gets one line per partition transformed")


class LogPartitions(Transform):
    """Appends the first customer_id of every partition it transforms to a file."""

    Params = LogParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        first = part["customer_id"][0].as_py() if part.num_rows else -1
        with open(self.params.log, "a") as f:
            f.write(f"{first}\\n")
        return part
'''


@pytest.fixture(scope="session")
def probe_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    path = folder / "spark_engine_probe.py"
    path.write_text(PROBE)
    return path


@pytest.fixture
def probe(spark: SparkEngine, probe_module: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The probe operators, importable here and on the executors of the shared session."""
    monkeypatch.syspath_prepend(str(probe_module.parent))
    sc = spark.spark.sparkContext
    if sc.applicationId not in _SHIPPED:
        sc.addPyFile(str(probe_module))
        _SHIPPED.add(sc.applicationId)
    return "spark_engine_probe"


_SHIPPED: set[str] = set()


# --------------------------------------------------------------------------- types


def test_arrow_types_become_spark_types() -> None:
    from pyspark.sql import types as st

    cases = {
        pa.int8(): st.ByteType(), pa.int16(): st.ShortType(), pa.int32(): st.IntegerType(),
        pa.int64(): st.LongType(), pa.uint8(): st.ShortType(), pa.uint16(): st.IntegerType(),
        pa.uint32(): st.LongType(), pa.uint64(): st.DecimalType(20, 0),
        pa.float32(): st.FloatType(), pa.float64(): st.DoubleType(), pa.bool_(): st.BooleanType(),
        pa.string(): st.StringType(), pa.large_string(): st.StringType(),
        pa.dictionary(pa.int32(), pa.string()): st.StringType(),
        pa.binary(): st.BinaryType(), pa.large_binary(): st.BinaryType(),
        pa.date32(): st.DateType(), pa.decimal128(10, 2): st.DecimalType(10, 2),
        pa.timestamp("ns"): st.TimestampNTZType(), pa.timestamp("us", "UTC"): st.TimestampType(),
        pa.duration("us"): st.DayTimeIntervalType(),
        pa.list_(pa.float64()): st.ArrayType(st.DoubleType(), True),
        pa.large_list(pa.field("x", pa.int64(), nullable=False)):
            st.ArrayType(st.LongType(), False),
        pa.map_(pa.string(), pa.float64()): st.MapType(st.StringType(), st.DoubleType(), True),
        pa.struct([("a", pa.int32()), ("b", pa.string())]):
            st.StructType([st.StructField("a", st.IntegerType()),
                           st.StructField("b", st.StringType())]),
    }
    for arrow, expected in cases.items():
        assert spark_type(arrow) == expected, arrow
    schema = spark_schema(pa.schema([pa.field("p", pa.list_(pa.float64())),
                                     pa.field("id", pa.int64(), nullable=False)]))
    assert schema.simpleString() == "struct<p:array<double>,id:bigint>"
    assert not schema["id"].nullable
    with pytest.raises(SluiceError, match="'big' is decimal256.*38 digits"):
        spark_type(pa.decimal256(50, 2), "big")


def typed_table(rows: int = 500) -> pa.Table:
    rng = np.random.default_rng(3)
    ids = np.arange(rows)
    base = dt.datetime(2026, 11, 28, 12, 0, 0)
    return pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "i8": pa.array((ids % 100 - 50).astype(np.int8)),
        "u32": pa.array(ids.astype(np.uint32) * 7),
        "f32": pa.array(rng.normal(size=rows).astype(np.float32)),
        "label": pa.array([f"c{i % 7}" if i % 11 else None for i in ids], pa.large_string()),
        "amount": pa.array([decimal.Decimal(f"{i}.{i % 100:02d}") for i in ids],
                           pa.decimal128(12, 2)),
        "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=int(i)) for i in ids]),
        "at": pa.array([base + dt.timedelta(seconds=int(i), microseconds=int(i))
                        for i in ids], pa.timestamp("us", "UTC")),
        "vec": pa.array([[float(i), float(i) / 2] for i in ids], pa.list_(pa.float64())),
        "flag": pa.array(ids % 3 == 0),
    })


def test_to_dataframe_has_the_declared_schema(spark: SparkEngine, workdir: Path) -> None:
    table = typed_table()
    pq.write_table(table, workdir / "typed.parquet", row_group_size=100)
    source = ReadParquet(path=str(workdir / "typed.parquet"), partition_mb=0.001)
    data = spark.read(source, "typed", source.schema())
    assert len(source.partitions()) == 5

    frame = spark.to_dataframe(data)
    assert frame.schema == spark_schema(source.schema())
    assert frame.schema["vec"].dataType.simpleString() == "array<double>"
    got = frame.toArrow()
    expected = table.cast(pa.schema([got.schema.field(n).with_type(t) for n, t in
                                     zip(table.column_names, got.schema.types)]))
    assert got.equals(expected)
    assert frame.filter("i8 > 0 and label is not null").count() == pc.sum(pc.and_(
        pc.greater(table["i8"], 0), pc.is_valid(table["label"]))).as_py()
    # what operators see is the declared Arrow schema, not Spark's
    assert spark.collect(data).equals(LocalEngine().collect(data))


# --------------------------------------------------------------------------- data written by Spark

TRAIN_SPARK_FILES = """
    pipeline: spark_files
    steps:
      - op: read_parquet
        path: {data}
        schema: {{amount: float64}}
      - op: one_hot
        columns: [plan]
      - op: standard_scale
        columns: [tenure, amount]
      - op: logistic_regression
        label: churned
        l2: 0.01
      - op: save_model
        name: sparkfiles
    """

SCORE_SPARK_FILES = """
    pipeline: spark_files_score
    steps:
      - op: read_parquet
        path: {data}
        schema: {{amount: float64}}
      - op: score
        model: sparkfiles
      - op: write_parquet
        path: {out}
    """


def test_spark_written_parquet_reads_and_scores_like_local(spark: SparkEngine,
                                                           workdir: Path) -> None:
    """INT96 timestamps and decimals written by Spark, and Arrow's large_string."""
    churn = churn_table(3000)
    base = pa.table({
        "customer_id": churn["customer_id"],
        "tenure": churn["tenure"],
        "plan": churn["plan"],
        "amount": pc.cast(churn["monthly_charges"], pa.decimal128(10, 2)),
        "signup": pc.cast(pc.cast(churn["signup_date"], pa.timestamp("s")),
                          pa.timestamp("us", "UTC")),
        "churned": churn["churned"],
    })
    session = spark.spark
    previous = session.conf.get("spark.sql.parquet.outputTimestampType")
    session.conf.set("spark.sql.parquet.outputTimestampType", "INT96")
    try:
        session.createDataFrame(base).repartition(3).write.parquet(str(workdir / "by_spark"))
    finally:
        session.conf.set("spark.sql.parquet.outputTimestampType", previous)
    files = sorted((workdir / "by_spark").glob("part-*.parquet"))
    footer = pq.ParquetFile(files[0]).schema
    assert footer.column(footer.names.index("signup")).physical_type == "INT96"
    assert footer.column(footer.names.index("amount")).logical_type.type == "DECIMAL"
    # and a file with Arrow's large_string, beside them
    extra = base.slice(0, 200).set_column(2, "plan", pc.cast(base["plan"].slice(0, 200),
                                                               pa.large_string()))
    mixed = workdir / "mixed"
    mixed.mkdir()
    pq.write_table(extra.cast(extra.schema.set(4, pa.field("signup", pa.timestamp("ns")))),
                   mixed / "large.parquet")
    outputs = {}
    for label, engine in (("local", None), ("spark", spark)):
        models = workdir / f"models-{label}"
        for data in ("by_spark", "mixed"):
            train = write_pipeline(workdir, TRAIN_SPARK_FILES.format(data=workdir / data),
                                   "train.yaml")
            score = write_pipeline(workdir, SCORE_SPARK_FILES.format(
                data=workdir / data, out=workdir / f"scores-{label}-{data}"), "score.yaml")
            run(train, models=str(models), engine_instance=engine)
            run(score, models=str(models), engine_instance=engine)
            outputs[label, data] = pq.read_table(workdir / f"scores-{label}-{data}")
    for data in ("by_spark", "mixed"):
        got = outputs["spark", data].sort_by("customer_id")
        expected = outputs["local", data].sort_by("customer_id")
        assert_tables_close(got, expected, rtol=1e-9, what=data)
    scored = outputs["spark", "by_spark"].sort_by("customer_id")
    assert scored.num_rows == 3000
    assert scored.schema.field("signup").type == pa.timestamp("ns")  # INT96, as pyarrow reads
    assert scored["signup"].to_pylist() == pc.cast(base["signup"], pa.timestamp("ns")).to_pylist()
    np.testing.assert_array_equal(scored["amount"].to_numpy(),
                                  pc.cast(base["amount"], pa.float64()).to_numpy())
    assert pc.all(pc.is_in(scored["prediction"], pa.array([0, 1]))).as_py()
    # sluice's commit, not Spark's: a manifest and the data files, no _temporary
    out = workdir / "scores-spark-by_spark"
    names = sorted(p.name for p in out.iterdir())
    assert "_SUCCESS" in names and "_temporary" not in names
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert sorted(manifest["files"]) == [n for n in names if n.endswith(".parquet")]
    assert not [p for p in workdir.iterdir() if ".sluice-tmp-" in p.name]


# --------------------------------------------------------------------------- execution


@pytest.mark.parametrize(("cache_fits", "resident_fits"),
                         [("always", "never"), ("auto", "never"), ("auto", "auto")])
def test_multi_pass_fit_computes_each_partition_once(spark: SparkEngine, workdir: Path,
                                                     probe: str, cache_fits: str,
                                                     resident_fits: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One job a pass, cached: each partition is prepared once for all passes, and the
    steps after the fit (a derive, the write) start from the cache too; `auto` does not
    cache a source on local disks (re-reading it beats Spark's cache): once a pass, and
    once more for the write. Resident (one barrier job whose tasks keep their
    partitions): once, and once more for the write."""
    monkeypatch.setattr(spark, "profile", spark.profile.model_copy(
        update={"cache_fits": cache_fits, "resident_fits": resident_fits}))
    generate("churn", 4000, workdir / "data", files=2, row_group_rows=500)
    source = ReadParquet(path=str(workdir / "data"), partition_mb=0.01)
    partitions = len(source.partitions())
    assert partitions == 8
    log = workdir / "calls.log"
    path = write_pipeline(workdir, f"""
        pipeline: three_passes
        steps:
          - op: read_parquet
            path: data
            partition_mb: 0.01
          - id: logged
            op: {probe}.LogPartitions
            log: {log}
          - id: fit
            op: sluice_testops.ThreePass
            column: monthly_charges
          - op: derive
            columns: {{twice: "monthly_charges * 2"}}
          - op: write_parquet
            path: out
        """)
    record = run(path, engine_instance=spark)
    metrics = record["metrics"]["fit"]
    assert metrics["passes"] == 3
    cached = cache_fits == "always" and resident_fits == "never"
    once = cached or resident_fits == "auto"
    fit_reads = partitions if once else 3 * partitions
    assert len(log.read_text().split()) == fit_reads + (0 if cached else partitions)
    out = pq.read_table(workdir / "out")
    assert out.num_rows == 4000 and out.column("twice").to_pylist() == [
        2 * v for v in out.column("monthly_charges").to_pylist()]
    assert record["steps"]["write_parquet"]["rows"] == 4000
    assert record["steps"]["fit"]["fit_mode"] == (
        "one job a pass" if resident_fits == "never" else "resident, 2 tasks")
    x = churn_table(4000)["monthly_charges"].to_numpy()
    assert metrics["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert metrics["var"] == pytest.approx(x.var(), rel=1e-12)
    assert metrics["maxdev"] == pytest.approx(np.max(np.abs(x - x.mean())), rel=1e-12)
    assert record["steps"]["logged"]["rows"] == 4000
    sc = spark.spark.sparkContext
    assert sc._jsc.getPersistentRDDs().size() == int(cached)
    spark.begin_run()  # the next run starts without the previous run's cache
    assert sc._jsc.getPersistentRDDs().size() == 0


def test_small_partitions_share_tasks_in_order(spark: SparkEngine, workdir: Path) -> None:
    generate("churn", 6000, workdir / "data", files=3, row_group_rows=100)
    source = ReadParquet(path=str(workdir / "data"), columns=["customer_id", "plan"],
                         partition_mb=0.001)
    data = spark.read(source, "events", source.schema())
    infos = source.partitions()
    assert len(infos) == 60
    groups = spark.task_groups(infos)
    parallelism = spark.spark.sparkContext.defaultParallelism
    assert len(groups) == parallelism
    assert [i for group in groups for i in group] == [info.index for info in infos]
    got = spark.collect(data)
    assert got.equals(LocalEngine().collect(data))
    assert got["customer_id"].to_pylist() == list(range(6000))


def test_task_groups_follow_rows_per_task(workdir: Path) -> None:
    from operators.base import PartitionInfo

    profile = workdir / "spark.yaml"
    profile.write_text("rows_per_task: 1000\n")
    engine = SparkEngine(profile=profile)  # not started: one core assumed
    infos = [PartitionInfo(i, f"f{i}", (0,), 300) for i in range(10)]
    groups = engine.task_groups(infos)
    assert len(groups) == 3 and [i for g in groups for i in g] == list(range(10))
    assert all(3 <= len(g) <= 4 for g in groups)
    assert len(engine.task_groups(infos[:2])) == 1  # 600 rows: one task is enough
    big = [PartitionInfo(i, f"f{i}", (0,), 5000) for i in range(4)]
    assert engine.task_groups(big) == [[0], [1], [2], [3]]
    assert engine.task_groups([]) == [[]]


def test_user_error_is_one_line_on_the_command_line(spark: SparkEngine, churn: Path,
                                                    workdir: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    path = write_pipeline(workdir, """
        pipeline: bad_value
        steps:
          - id: events
            op: read_parquet
            path: data/churn
            schema: {plan: int64}
          - op: write_parquet
            path: out
        """)
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--engine", "spark"], prog_name="sluice")
    assert info.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}:3: step 'events', partition "), err
    assert "column 'plan' cannot be cast from string to the declared int64" in lines[0]
    assert spark.spark is not None and spark.spark.sparkContext._jsc is not None  # still up
    assert not (workdir / "out").exists()


def test_errors_read_as_on_the_local_engine(spark: SparkEngine, workdir: Path) -> None:
    """A bad value met while a multi-pass fit builds its cache fails the run exactly as
    the local engine's does, word for word."""
    table = churn_table(3000)
    codes = pa.array(["7"] * 1500 + ["x"] * 1500)
    table = table.append_column("code", codes)
    (workdir / "codes").mkdir()
    pq.write_table(table.slice(0, 1500), workdir / "codes" / "a.parquet")
    pq.write_table(table.slice(1500), workdir / "codes" / "b.parquet")
    path = write_pipeline(workdir, """
        pipeline: bad_cache
        steps:
          - id: events
            op: read_parquet
            path: codes
            schema: {code: int64}
          - id: fit
            op: sluice_testops.ThreePass
            column: tenure
        """)
    messages = []
    for engine in (None, spark):  # None: run() makes a local engine
        with pytest.raises(SluiceError) as info:
            run(path, engine_instance=engine)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "step 'events', partition 1 (" in messages[1] and "b.parquet" in messages[1]
    assert "column 'code' cannot be cast from string to the declared int64" in messages[1]


def test_spark_failures_become_one_line() -> None:
    from pipelines.engines.spark import _job_failure, _marked

    failure = DataError("no rows", hint="look").located("step 'x', partition 3 (f)")
    marked = _marked(failure)
    text = f"org.apache.spark.SparkException: Job aborted\n  File x\n{marked}\n\tat org.a"
    again = _job_failure(RuntimeError(text), "x: fit")
    assert isinstance(again, DataError) and str(again) == str(failure)
    spark_text = ("An error occurred while calling o1.collectAsArrowToPython.\n: org.apache."
                  "spark.SparkException: Job aborted due to stage failure: Task 1 in stage 3.0 "
                  "failed 4 times, most recent failure: Lost task 1.3 (TID 9): Python worker "
                  "exited unexpectedly (crashed)\n\tat org.apache.spark.scheduler.DAG")
    one = _job_failure(RuntimeError(spark_text), "x: fit")
    assert isinstance(one, SluiceError) and "\n" not in str(one)
    assert str(one).startswith("Spark job 'x: fit' failed: Task 1 in stage 3.0 failed 4 times")
    assert "Python worker exited unexpectedly (crashed)" in str(one)
    archive_text = ("An error occurred while calling o9.collectAsArrowToPython.\n: org.apache."
                    "spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0"
                    " failed 4 times, most recent failure: Lost task 0.3: org.apache.spark.api."
                    "python.PythonException: Traceback (most recent call last):\n  File x\n"
                    "pipelines.package.ArchiveError: sluice archive 'a.zip' was built for "
                    "python 3.11 (here 3.12)\n\tat org.apache.spark.api.python.BasePythonRunner")
    one = _job_failure(RuntimeError(archive_text), "read: write")
    assert str(one).count("\n") == 0 and str(one).endswith(
        "(pipelines.package.ArchiveError: sluice archive 'a.zip' was built for python 3.11 "
        "(here 3.12)) (see the Spark driver and executor logs)")


def test_bug_carries_the_executor_traceback(spark: SparkEngine, churn: Path,
                                            workdir: Path) -> None:
    path = exploding_pipeline(workdir, 10)
    with pytest.raises(StepFailure) as info:
        run(path, engine_instance=spark)
    assert info.value.step == "explode" and "part-00000.parquet" in info.value.where
    notes = "\n".join(getattr(info.value.error, "__notes__", []))
    assert "executor traceback" in notes and "sluice_testops.py" in notes
    assert "ZeroDivisionError: boom" in notes


# --------------------------------------------------------------------------- the session


def test_profile_master_and_conf_precedence(workdir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert SparkEngine().master == "local[*]"  # no profile here
    (workdir / "conf" / "engines").mkdir(parents=True)
    (workdir / "conf" / "engines" / "spark.yaml").write_text(textwrap.dedent("""
        master: local[1]
        conf:
          spark.sql.shuffle.partitions: 5
          spark.sql.execution.arrow.maxRecordsPerBatch: 2048
          spark.sql.ansi.enabled: false
        """))
    engine = SparkEngine()
    assert engine.master == "local[1]" and engine.profile_path.endswith("spark.yaml")
    settings = engine.settings()
    assert settings["spark.sql.shuffle.partitions"] == "5"
    assert settings["spark.sql.execution.arrow.maxRecordsPerBatch"] == "2048"
    assert settings["spark.sql.ansi.enabled"] == "false"
    assert settings["spark.driver.bindAddress"] == "127.0.0.1"  # local: loopback only
    assert SparkEngine(master="local[2]").master == "local[2]"  # --master wins
    cluster = SparkEngine(master="spark://127.0.0.1:7077", conf={"spark.sql.shuffle.partitions": 9})
    assert cluster.settings()["spark.sql.shuffle.partitions"] == "9"
    assert "spark.driver.bindAddress" not in cluster.settings()

    other = workdir / "elsewhere.yaml"
    other.write_text("master: local[3]\nrows_per_task: 10\n")
    monkeypatch.setenv("SLUICE_SPARK_PROFILE", str(other))
    assert SparkEngine().master == "local[3]" and SparkEngine().profile.rows_per_task == 10
    other.write_text("master: local[3]\nshuffle: 3\n")
    with pytest.raises(SluiceError,
                       match=r"elsewhere.yaml:2: Spark profile: 'shuffle': unknown key"):
        SparkEngine()
    monkeypatch.setenv("SLUICE_SPARK_PROFILE", str(workdir / "missing.yaml"))
    with pytest.raises(SluiceError, match="does not exist"):
        SparkEngine()


def test_the_documented_profile_loads() -> None:
    profile, where = load_profile(ROOT / "conf" / "engines" / "spark.yaml")
    assert where and profile.master == "local[*]" and profile.ship_code == "auto"
    batch = int(profile.conf["spark.sql.execution.arrow.maxRecordsPerBatch"])
    assert batch > 10_000  # not Spark's default


def test_task_attempts() -> None:
    assert task_attempts("local[*]", {}) == 1
    assert task_attempts("local[4]", {"spark.task.maxFailures": "8"}) == 1
    assert task_attempts("local[*, 3]", {}) == 3
    assert task_attempts("spark://127.0.0.1:7077", {}) == 4
    assert task_attempts("yarn", {"spark.task.maxFailures": "2"}) == 2


def test_session_settings(spark: SparkEngine) -> None:
    described = spark.describe()
    assert described["name"] == "spark" and described["master"].startswith("local")
    assert described["conf"]["spark.sql.execution.arrow.maxRecordsPerBatch"] == "100000"
    assert described["conf"]["spark.driver.host"] == "127.0.0.1"
    assert described["parallelism"] >= 1 and described["spark_version"].startswith("4.")
    # a second engine in the same process attaches to the session and leaves it running
    other = SparkEngine()
    other.start()
    assert other.mode == "attached" and other.spark is spark.spark
    other.close()
    assert spark.spark.sparkContext._jsc is not None
    # executors of a local master run this interpreter, unless PYSPARK_PYTHON says otherwise
    expected = os.environ.get("PYSPARK_PYTHON", sys.executable)
    assert spark.spark.sparkContext.pythonExec == expected


# --------------------------------------------------------------------------- the archive


def test_package_builds_a_self_sufficient_archive(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import zipfile

    plugin = tmp_path / "my_ops.py"
    plugin.write_text("VALUE = 42\n")
    out = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pipelines.package", "--out", str(out),
                           "--include", str(plugin)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"--py-files {out / 'sluice.zip'} {out / 'sluice_submit.py'} run" in done.stdout
    archive = out / "sluice.zip"
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        marker = json.loads(z.read("sluice-archive.json"))
    tops = {n.split("/")[0] for n in names}
    assert {"pipelines", "operators", "pydantic", "pydantic_core", "yaml", "click"} <= tops
    assert "my_ops.py" in names and "pipelines/engines/spark.py" in names
    assert any(n.startswith("pydantic_core/_pydantic_core") and n.endswith(".so") for n in names)
    assert not tops & {"numpy", "pyarrow", "pyspark", "py4j"}  # the cluster has those
    assert marker["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    # the same code gives the same archive, left in place
    stamp = archive.stat().st_mtime_ns
    from pipelines.package import build

    assert build(out, [plugin]).digest == marker["digest"]
    assert archive.stat().st_mtime_ns == stamp

    # a Python without site-packages imports compiled modules from it, once extracted
    script = ("from pipelines.package import ensure_importable; where = ensure_importable(); "
              "import pydantic_core._pydantic_core, yaml, click, my_ops; "
              "print(where, pydantic_core.__file__, my_ops.VALUE)")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(archive),
           "SLUICE_ARCHIVE_DIR": str(tmp_path / "extracted")}
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, core, value = done.stdout.split()
    assert where == str(tmp_path / "extracted" / f"code-{marker['digest']}")
    assert core.startswith(where) and value == "42"
    bare = subprocess.run([sys.executable, "-S", "-c", "import pydantic_core"], env=env,
                          capture_output=True, cwd=tmp_path)
    assert bare.returncode != 0  # without the archive's help, it cannot


def test_a_user_error_cancels_the_rest_of_the_job(spark: SparkEngine, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail fast: the first partition's error reaches the driver as its task ends and
    the job is cancelled; the other partitions (each 2 s here: under load the
    cancellation has taken over 2 s to reach the tasks) are not all computed."""
    files = 12
    path, marks = touch_pipeline(workdir, "fail_fast", files, 2.0, bad_file=0)
    # one partition per task, so that there are tasks to cancel
    monkeypatch.setattr(spark, "profile", spark.profile.model_copy(update={"rows_per_task": 1}))
    with pytest.raises(SluiceError) as info:
        run(path, engine_instance=spark)
    assert "step 'touch', partition 0 (" in str(info.value)
    assert "a bad row" in str(info.value)
    computed = len(list(marks.iterdir()))
    assert 1 <= computed <= files // 2, f"{computed} of {files} partitions were computed"


def test_sessions_sluice_starts_log_warnings_only() -> None:
    from pipelines.engines.spark import quiet_driver_logs

    ours = quiet_driver_logs(None)
    assert ours.startswith("-Dlog4j2.configurationFile=file:/")
    assert Path(ours.split("=file:", 1)[1]).name == "log4j2.properties"
    assert Path(ours.split("=file:", 1)[1]).is_file()
    assert quiet_driver_logs("-Xss4m") == f"-Xss4m {ours}"
    own = "-Dlog4j2.configurationFile=file:/etc/mine.properties"
    assert quiet_driver_logs(own) == own


@pytest.mark.slow
def test_a_fresh_session_prints_only_the_error(churn: Path, workdir: Path) -> None:
    """From the command line, a Spark run that fails prints the error line, not Spark's
    start-up banner (the JVM's own incubator-module warning aside)."""
    import subprocess

    path = write_pipeline(workdir, """
        pipeline: bad_value
        steps:
          - op: read_parquet
            path: data/churn
            schema: {plan: int64}
          - op: write_parquet
            path: out
        """)
    # the tests' shared session holds the UI's port: another would say it moved on
    (workdir / "conf" / "engines").mkdir(parents=True)
    (workdir / "conf" / "engines" / "spark.yaml").write_text(
        "conf:\n  spark.ui.enabled: false\n")
    env = {**os.environ, "CI": "1", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([str(Path(sys.executable).parent / "sluice"), "run", str(path),
                           "--engine", "spark"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and not line.startswith("WARNING: Using incubator modules")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_master_addresses_of_standalone_urls() -> None:
    assert master_addresses("spark://10.0.0.5:7078") == [("10.0.0.5", 7078)]
    assert master_addresses("spark://a:7077,b:7177") == [("a", 7077), ("b", 7177)]
    assert master_addresses("spark://master") == [("master", 7077)]
    assert master_addresses("spark://[::1]:7077") == [("::1", 7077)]
    assert master_addresses("local[2]") == master_addresses("yarn") == []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_master_waits_then_says_why() -> None:
    import socket
    import time

    port = _closed_port()
    started = time.monotonic()
    why = unreachable_master(f"spark://127.0.0.1:{port}", 1.5)
    assert why is not None and f"127.0.0.1:{port}" in why and "refused" in why.lower()
    assert time.monotonic() - started >= 1.4  # tried again until the timeout
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        # one master of an HA list answering is enough
        assert unreachable_master(f"spark://127.0.0.1:{port},127.0.0.1:{open_port}",
                                  1.0) is None
    assert unreachable_master("local[2]", 0.1) is None


def test_at_a_terminal_the_wait_for_a_master_is_said_as_it_starts(churn: Path,
                                                                 workdir: Path) -> None:
    """A person at a terminal sees at once what the run waits for, and for how long,
    not only the error at the end of the wait."""
    from conftest import sluice_on_terminal

    port = _closed_port()
    path = _nowhere(workdir, "connect_timeout: 1.5\n")
    code, screen = sluice_on_terminal(["run", str(path), "--engine", "spark", "--master",
                                       f"spark://127.0.0.1:{port}"], workdir)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 2, screen
    assert lines[0] == (f"waiting for the Spark master spark://127.0.0.1:{port} (127.0.0.1:"
                        f"{port}: Connection refused): trying again for up to 1.5 s "
                        "(connect_timeout in conf/engines/spark.yaml)"), screen
    assert lines[1].startswith(f"error: cannot reach the Spark master spark://127.0.0.1:{port}"
                               " within 1.5 s"), screen


def _nowhere(workdir: Path, profile: str) -> Path:
    """The Spark profile ``profile`` and a pipeline that copies data/churn to out."""
    (workdir / "conf" / "engines").mkdir(parents=True)
    (workdir / "conf" / "engines" / "spark.yaml").write_text(textwrap.dedent(profile))
    return write_pipeline(workdir, """
        pipeline: nowhere
        steps:
          - op: read_parquet
            path: data/churn
          - op: write_parquet
            path: out
        """)


def _sluice_spark(workdir: Path, args: list[str], profile: str) -> Any:
    import subprocess

    path = _nowhere(workdir, profile)
    env = {**os.environ, "CI": "1", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    return subprocess.run([str(Path(sys.executable).parent / "sluice"), "run", str(path),
                           "--engine", "spark", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_a_master_nobody_listens_on_is_one_error_before_any_jvm(churn: Path,
                                                                 workdir: Path) -> None:
    port = _closed_port()
    done = _sluice_spark(workdir, ["--master", f"spark://127.0.0.1:{port}"],
                         "connect_timeout: 1\n")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == _error_lines(done.stderr), done.stderr
    (line,) = _error_lines(done.stderr)
    assert f"cannot reach the Spark master spark://127.0.0.1:{port} within 1 s" in line
    assert "refused" in line.lower() and "check --master" in line
    assert "Traceback" not in done.stderr and not (workdir / "out").exists()


def test_a_session_spark_cannot_start_is_one_sluice_error(churn: Path, workdir: Path) -> None:
    done = _sluice_spark(workdir, [], """
        conf:
          spark.driver.memory: 100m
          spark.ui.enabled: false
        """)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "Py4JJavaError" not in done.stderr
    (line,) = _error_lines(done.stderr)
    assert line.startswith("error: Spark could not start a session on local[*]: ")
    assert "Insufficient driver memory" in line and "conf/engines/spark.yaml" in line


def test_the_archive_takes_sluices_own_packages_whatever_comes_first_on_the_path(
        tmp_path: Path) -> None:
    """A folder named like one of sluice's packages without an __init__.py (a tests/
    operators folder; the user's working directory) is a namespace package that
    find_spec takes first on sys.path: the archive packed that folder as 'operators'
    (the digest then differed between a build in the tests and one on the command
    line)."""
    import subprocess

    (tmp_path / "operators").mkdir()
    (tmp_path / "operators" / "stray.py").write_text("X = 1\n")
    script = ("from pipelines.package import _package_dir; "
              "print(_package_dir('operators'), _package_dir('pipelines'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / "operators"), str(ROOT / "pipelines")]
