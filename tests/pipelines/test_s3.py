"""read_parquet / write_parquet on S3 (moto in server mode on 127.0.0.1) and the
object-store commit protocol: run-id file names, manifest last, old files deleted after."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import fsspec  # noqa: E402

import operators.io.parquet as parquet  # noqa: E402
from operators.base import DataError, SluiceError  # noqa: E402
from operators.io.parquet import MANIFEST, ReadParquet, WriteParquet  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, for this module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket; credentials and endpoint from the environment, as users set them."""
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # fsspec caches filesystem instances: none may keep another endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    name = f"sluice-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


def s3() -> Any:
    """The s3fs instance sluice itself uses (same options, so the same cached instance)."""
    return fsspec.filesystem("s3")


def objects(bucket: str, prefix: str = "") -> list[str]:
    """Every key under the prefix, straight from the server (boto3, no cache)."""
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def put(bucket: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def sample(rows: int = 300, generation: int = 0) -> pa.Table:
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.array(np.random.default_rng(generation).standard_normal(rows)),
        "region": pa.array(np.array(["north", "south", "east"])[np.arange(rows) % 3]),
        "generation": pa.array(np.full(rows, generation, dtype=np.int64)),
    })


def write(url: str, parts: list[pa.Table], run_id: str, **params: Any) -> dict[str, Any]:
    op = WriteParquet(path=url, **params)
    token = op.begin(run_id, parts[0].schema)
    return op.commit(token, [op.write(token, p, i) for i, p in enumerate(parts)])


def begin_and_write(url: str, table: pa.Table, run_id: str, **params: Any) -> None:
    """A writer that dies before its commit: begin and write, nothing after."""
    op = WriteParquet(path=url, **params)
    token = op.begin(run_id, table.schema)
    op.write(token, table.slice(0, table.num_rows // 2), 0)
    op.write(token, table.slice(table.num_rows // 2), 1)


def read(url: str, **params: Any) -> pa.Table:
    return ReadParquet(path=url, **params).read_all()


# --------------------------------------------------------------------------- reading


def test_read_file_directory_hive_and_glob(bucket: str) -> None:
    table = sample(400)
    put(bucket, "plain/one.parquet", parquet_bytes(table.slice(0, 150), row_group_size=50))
    put(bucket, "plain/two.parquet", parquet_bytes(table.slice(150), row_group_size=70))
    put(bucket, "plain/_SUCCESS", b"")
    for region in ("north", "south"):
        part = table.filter(pc.equal(table["region"], region)).drop(["region"])
        put(bucket, f"hive/region={region}/data.parquet", parquet_bytes(part))

    assert read(f"s3://{bucket}/plain/one.parquet").equals(table.slice(0, 150))
    assert read(f"s3://{bucket}/plain").equals(table)
    assert read(f"s3://{bucket}/plain/*.parquet", filter="id >= 100").equals(
        table.filter(pc.greater_equal(table["id"], 100)))
    hive = ReadParquet(path=f"s3://{bucket}/hive", filter="region = 'south'")
    assert {p.path.rsplit("/", 2)[1] for p in hive.partitions()} == {"region=south"}
    want = table.filter(pc.equal(table["region"], "south"))
    assert hive.read_all().select(want.column_names).equals(want)
    glob = read(f"s3://{bucket}/hive/region=*/*.parquet")
    assert sorted(glob["id"].to_pylist()) == sorted(
        table.filter(pc.is_in(table["region"], pa.array(["north", "south"])))["id"].to_pylist())


def test_broken_object_is_a_one_line_error_naming_the_url(bucket: str) -> None:
    put(bucket, "bad/a.parquet", parquet_bytes(sample()))
    put(bucket, "bad/b.parquet", b"not parquet at all" * 10)
    op = ReadParquet(path=f"s3://{bucket}/bad")
    with pytest.raises(DataError) as info:
        op.schema()
        for part in op.partitions():
            op.read(part)
    assert f"s3://{bucket}/bad/b.parquet" in str(info.value) and "\n" not in str(info.value)


def test_changes_by_another_process_are_seen(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    write(url, [sample(100)], "run-1")
    assert read(url).num_rows == 100  # s3fs now remembers the listing and sizes
    assert read(f"{url}/*.parquet").num_rows == 100
    # another process commits a bigger output behind this one's back
    put(bucket, "out/part-other-00000.parquet", parquet_bytes(sample(250, generation=2)))
    manifest = {"format": "sluice-output/1", "run_id": "other", "rows": 250,
                "files": ["part-other-00000.parquet"], "extra": "x" * 500}
    put(bucket, f"out/{MANIFEST}", json.dumps(manifest).encode())
    assert read(url).equals(sample(250, generation=2))
    assert read(f"{url}/*.parquet").equals(sample(250, generation=2))


# --------------------------------------------------------------------------- writing


def test_write_modes(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    first = sample(300, generation=1)
    assert write(url, [first.slice(0, 100), first.slice(100)], "run-1")["files"] == 2
    assert objects(bucket) == ["out/_SUCCESS", "out/part-run-1-00000.parquet",
                               "out/part-run-1-00001.parquet"]
    assert read(url).equals(first)
    with pytest.raises(DataError, match="already exists"):
        write(url, [sample(5)], "run-2")
    assert read(url).equals(first) and len(objects(bucket)) == 3

    second = sample(120, generation=2)
    write(url, [second], "run-3", mode="overwrite")
    assert objects(bucket) == ["out/_SUCCESS", "out/part-run-3-00000.parquet"]
    assert read(url).equals(second)
    manifest = json.loads(s3().cat(f"{bucket}/out/{MANIFEST}"))
    assert manifest["run_id"] == "run-3" and manifest["rows"] == 120


def test_append_and_overwrite_partitions(bucket: str) -> None:
    url = f"s3://{bucket}/hive"
    first = sample(300, generation=1)
    write(url, [first], "run-1", mode="append", partition_by=["region"])  # a new output
    assert read(url).sort_by("id").equals(first)
    second = sample(90, generation=2)
    entry = write(url, [second.slice(0, 45), second.slice(45)], "run-2", mode="append",
                  partition_by=["region"])
    assert entry["output_rows"] == 390 and entry["output_files"] == 3 + 6
    back = read(url)
    assert back.num_rows == 390 and sorted(set(back["generation"].to_pylist())) == [1, 2]
    # the north rows of a third run take the place of every north row before
    north = sample(30, generation=3).filter(pc.equal(sample(30)["region"], "north"))
    entry = write(url, [north], "run-3", mode="overwrite_partitions", partition_by=["region"])
    assert entry["partitions"] == 1 and entry["partitions_replaced"] == 1
    assert entry["output_rows"] == 390 - 130 + north.num_rows
    back = read(url)
    got = back.filter(pc.equal(back["region"], "north"))
    assert got["generation"].to_pylist() == [3] * north.num_rows
    assert back.num_rows == entry["output_rows"]
    assert not [k for k in objects(bucket) if "region=north" in k and "run-3" not in k]
    with pytest.raises(DataError, match="partitioned by region, this step writes by no col"):
        write(url, [sample(5)], "run-4", mode="append")
    assert not [k for k in objects(bucket) if "run-4" in k]


def test_dead_appender_is_invisible_and_its_rerun_lands_once(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    old = sample(100, generation=1)
    write(url, [old], "old")
    begin_and_write(url, sample(50, generation=2), "dead", mode="append")
    assert read(url).equals(old)  # its files are there, in no manifest
    new = sample(60, generation=3)
    write(url, [new], "rerun", mode="append")
    assert read(url).equals(pa.concat_tables([old, new]))


def test_an_object_at_the_target_key(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    put(bucket, "out", parquet_bytes(sample(20, generation=1)))
    with pytest.raises(DataError, match="already exists"):
        write(url, [sample(5)], "refused")
    op = WriteParquet(path=url, mode="overwrite")
    token = op.begin("replacing", sample().schema)
    results = [op.write(token, sample(60, generation=2), 0)]
    assert read(url).equals(sample(20, generation=1))  # the old object, until the commit
    op.commit(token, results)
    assert read(url).equals(sample(60, generation=2))
    assert "out" not in objects(bucket)


def test_partition_by_round_trips(bucket: str) -> None:
    url = f"s3://{bucket}/hive"
    table = sample(600)
    write(url, [table.slice(0, 250), table.slice(250)], "run-1", partition_by=["region"])
    assert {k.split("/")[1] for k in objects(bucket) if k.endswith(".parquet")} == {
        "region=north", "region=south", "region=east"}
    back = read(url)
    assert back.schema == table.schema and back.sort_by("id").equals(table)
    write(url, [sample(30, generation=4)], "run-2", partition_by=["region"], mode="overwrite")
    assert read(url).sort_by("id").equals(sample(30, generation=4))
    assert not [k for k in objects(bucket) if "run-1" in k]


def test_manifest_is_written_last_and_old_files_deleted_after(
        bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{bucket}/out"
    write(url, [sample(50, generation=1)], "old")
    at_commit: list[list[str]] = []
    real = parquet._write_manifest

    def spy(fs: Any, directory: str, manifest: dict[str, Any]) -> None:
        at_commit.append(objects(bucket))
        real(fs, directory, manifest)
        assert read(url).equals(sample(80, generation=2))  # committed: readers see it all

    monkeypatch.setattr(parquet, "_write_manifest", spy)
    write(url, [sample(40, generation=2), sample(80, generation=2).slice(40)], "new",
          mode="overwrite")
    (before,) = at_commit
    assert "out/part-old-00000.parquet" in before  # old files still there ...
    assert {"out/part-new-00000.parquet", "out/part-new-00001.parquet"} <= set(before)
    assert objects(bucket) == ["out/_SUCCESS", "out/part-new-00000.parquet",
                               "out/part-new-00001.parquet"]  # ... and gone after


def test_dead_writer_leaves_the_previous_output(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    old = sample(200, generation=1)
    write(url, [old], "old")
    begin_and_write(url, sample(500, generation=2), "dead", mode="overwrite")
    assert any("part-dead-" in k for k in objects(bucket))  # its files are there ...
    assert read(url).equals(old)  # ... and invisible to a reader of the manifest
    assert ReadParquet(path=url).partitions()[0].path.endswith("part-old-00000.parquet")
    with pytest.raises(DataError, match="already exists"):
        write(url, [sample(5)], "again")  # mode error: the old output is still there
    new = sample(70, generation=3)
    write(url, [new], "rerun", mode="overwrite")
    assert read(url).equals(new)
    assert objects(bucket) == ["out/_SUCCESS", "out/part-rerun-00000.parquet"]


def test_dead_writer_is_invisible_in_a_hive_subdirectory(bucket: str) -> None:
    url = f"s3://{bucket}/hive"
    old = sample(90, generation=1)
    write(url, [old], "old", partition_by=["region"])
    begin_and_write(url, sample(300, generation=2), "dead", partition_by=["region"],
                    mode="overwrite")
    assert any(k.startswith("hive/region=north/part-dead-") for k in objects(bucket))
    north = old.filter(pc.equal(old["region"], "north")).drop(["region"])
    assert read(f"{url}/region=north").equals(north)
    assert read(f"{url}/region=*/*.parquet").num_rows == old.num_rows


def test_dead_first_writer_leaves_no_readable_output(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    begin_and_write(url, sample(500, generation=2), "20261128T101010Z-abc123")
    assert len(objects(bucket)) == 3  # a pending manifest and two data files
    for reader in (ReadParquet(path=url), ReadParquet(path=f"s3://{bucket}/out/*")):
        with pytest.raises(DataError, match="no committed output"):
            reader.schema()
    new = sample(90, generation=3)
    write(url, [new], "rerun")  # mode error: debris of a dead run is no output
    assert read(url).equals(new)
    assert objects(bucket) == ["out/_SUCCESS", "out/part-rerun-00000.parquet"]


def test_abort_removes_its_files_and_pending_manifest(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    op = WriteParquet(path=url)
    token = op.begin("aborted", sample().schema)
    op.write(token, sample(), 0)
    op.abort(token)
    assert objects(bucket) == []
    write(url, [sample(10)], "after")
    assert read(url).num_rows == 10


def test_overwriting_a_foreign_dataset_hides_new_files_until_commit(bucket: str) -> None:
    url = f"s3://{bucket}/spark"
    foreign = sample(100, generation=7)
    put(bucket, "spark/part-00000-abc-c000.snappy.parquet", parquet_bytes(foreign.slice(0, 60)))
    put(bucket, "spark/part-00001-abc-c000.snappy.parquet", parquet_bytes(foreign.slice(60)))
    put(bucket, "spark/_SUCCESS", b"")
    with pytest.raises(DataError, match="already exists"):
        write(url, [sample(5)], "refused")
    assert read(url).equals(foreign)
    begin_and_write(url, sample(300, generation=8), "dying", mode="overwrite")
    assert read(url).equals(foreign)  # the dead run's files are not in sight
    new = sample(40, generation=9)
    write(url, [new], "done", mode="overwrite")
    assert read(url).equals(new)
    assert objects(bucket) == ["spark/_SUCCESS", "spark/part-done-00000.parquet"]


# --------------------------------------------------------------------------- model registry

REGISTRY_SCHEMA = pa.schema([("a", pa.float64()), ("b", pa.int64())])


def centered(means: list[float]) -> Any:
    from sluice_testops import Centered, CenterParams

    return Centered(CenterParams(columns=["a", "b"]), np.array(means, dtype=np.float64))


def test_registry_round_trip_on_s3(bucket: str) -> None:
    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    assert store.names() == []
    for i in range(3):
        assert store.save("m", [centered([i, -i])], REGISTRY_SCHEMA).version == i + 1
    fresh = ModelStore(f"s3://{bucket}/models")
    assert fresh.names() == ["m"] and fresh.versions("m") == [1, 2, 3]
    assert fresh.load("m@latest").version == 3
    np.testing.assert_array_equal(fresh.load("m@2").chain.steps[0].means, [1.0, -1.0])
    assert objects(bucket, "models/m/1/") == [
        "models/m/1/.claim", "models/m/1/arrays.npz", "models/m/1/model.json"]


def test_registry_aliases_on_s3(bucket: str) -> None:
    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    for i in range(2):
        store.save("m", [centered([i, -i])], REGISTRY_SCHEMA)
    assert store.set_alias("m", "production", 1) is None
    other = ModelStore(f"s3://{bucket}/models")  # another process's view
    assert other.resolve("m@production") == ("m", 1)
    assert store.set_alias("m", "production", 2) == 1
    assert other.resolve("m@production") == ("m", 2)  # never a cached answer
    assert objects(bucket, "models/m/aliases/") == ["models/m/aliases/production.json"]
    assert other.names() == ["m"] and other.versions("m") == [1, 2]
    assert store.remove_alias("m", "production") == 2 and other.aliases("m") == {}


def test_registry_deletes_on_s3_never_reuse_a_number(bucket: str) -> None:
    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    for i in range(3):
        store.save("m", [centered([i, -i])], REGISTRY_SCHEMA)
    store.delete("m", 3)
    assert store.versions("m") == [1, 2]
    assert store.save("m", [centered([9, 9])], REGISTRY_SCHEMA).version == 4
    assert objects(bucket, "models/m/3/") == ["models/m/3/.claim", "models/m/3/DELETED"]


def test_concurrent_registry_saves_on_s3_get_distinct_versions(bucket: str) -> None:
    """Writers that all list the same versions at once: each number is taken once, and
    every version holds the arrays of the writer that took it."""
    import threading

    from pipelines.store import ModelStore

    writers, saves = 4, 4
    barrier = threading.Barrier(writers)
    results: dict[int, list[tuple[int, float]]] = {}

    def save_many(w: int) -> None:
        store = ModelStore(f"s3://{bucket}/models")  # each thread its own store, one s3fs
        got = []
        for k in range(saves):
            barrier.wait(timeout=60)  # all writers race for the same next number
            mark = 100.0 * w + k
            got.append((store.save("m", [centered([mark, 0.0])], REGISTRY_SCHEMA).version,
                        mark))
        results[w] = got

    threads = [threading.Thread(target=save_many, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == writers
    taken = sorted(v for got in results.values() for v, _ in got)
    assert taken == list(range(1, writers * saves + 1))
    store = ModelStore(f"s3://{bucket}/models")
    assert store.versions("m") == taken
    for got in results.values():
        for version, mark in got:
            assert store.load(f"m@{version}").chain.steps[0].means[0] == mark


def test_dead_registry_writer_is_invisible_and_its_number_never_reused(bucket: str) -> None:
    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    store.save("m", [centered([1.0, 1.0])], REGISTRY_SCHEMA)
    put(bucket, "models/m/2/.claim", b"dead")  # a writer that died after its claim
    put(bucket, "models/m/2/arrays.npz", b"half")
    assert store.versions("m") == [1] and store.load("m@latest").version == 1
    assert store.save("m", [centered([3.0, 3.0])], REGISTRY_SCHEMA).version == 3
    assert store.versions("m") == [1, 3]


def test_failed_registry_write_removes_its_files(bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    real_dumps = json.dumps

    def failing(*args: Any, **kwargs: Any) -> str:
        raise OSError("disk on fire")

    monkeypatch.setattr(json, "dumps", failing)
    with pytest.raises(OSError, match="disk on fire"):
        store.save("m", [centered([1.0, 1.0])], REGISTRY_SCHEMA)
    monkeypatch.setattr(json, "dumps", real_dumps)
    assert objects(bucket, "models/") == ["models/m/1/.claim"]
    assert store.versions("m") == []
    assert store.save("m", [centered([1.0, 1.0])], REGISTRY_SCHEMA).version == 2


def test_train_and_score_with_the_registry_on_s3(bucket: str, workdir: Any) -> None:
    """The CLI as users run it, with --models on S3: train saves churn@1, scoring loads it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pipelines.datagen import generate

    generate("churn", 3000, workdir / "data" / "churn" / "ds=2026-11-28", files=2)
    root = Path(__file__).resolve().parents[2]
    sluice = str(Path(sys.executable).parent / "sluice")
    env = {**os.environ, "CI": "1"}
    models = f"s3://{bucket}/models"
    for pipeline in ("churn_train", "churn_score"):
        done = subprocess.run(
            [sluice, "run", str(root / "conf" / "pipelines" / f"{pipeline}.yaml"),
             "--models", models, "--param", "ds=2026-11-28"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    assert "models/churn/1/model.json" in objects(bucket, "models/")
    assert f"step 'scores' used model churn@1 ({models}/churn/1)" in done.stdout, done.stdout
    assert pq.read_table(workdir / "data" / "scores" / "ds=2026-11-28").num_rows == 3000


def test_a_version_saved_elsewhere_is_seen_at_once(bucket: str) -> None:
    """A long-lived store (a scoring service) sees a version another process saved:
    its listings are never answered from fsspec's cache."""
    import boto3

    from pipelines.store import ModelStore

    store = ModelStore(f"s3://{bucket}/models")
    store.save("m", [centered([1.0, 2.0])], REGISTRY_SCHEMA)
    assert store.versions("m") == [1] and store.load("m").version == 1
    client = boto3.client("s3")
    arrays = client.get_object(Bucket=bucket, Key="models/m/1/arrays.npz")["Body"].read()
    meta = json.loads(client.get_object(Bucket=bucket, Key="models/m/1/model.json")["Body"]
                      .read())
    put(bucket, "models/m/2/arrays.npz", arrays)
    put(bucket, "models/m/2/model.json", json.dumps({**meta, "version": 2}).encode())
    assert store.versions("m") == [1, 2]
    assert store.load("m@latest").version == 2


# --------------------------------------------------------------------------- refused access


@pytest.fixture
def no_credentials(bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The bucket, seen by a user who set no AWS credentials (nor any file or instance
    metadata that could give some: no request leaves 127.0.0.1)."""
    import s3fs

    put(bucket, "data/a.parquet", parquet_bytes(sample()))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    return bucket


def assert_one_line(error: BaseException, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and all(p in text for p in parts), text


def test_no_credentials_is_one_error_naming_the_url_and_the_fix(no_credentials: str) -> None:
    from operators.base import SluiceError

    url = f"s3://{no_credentials}/data"
    with pytest.raises(SluiceError) as info:
        ReadParquet(path=url).schema()
    assert_one_line(info.value, f"no credentials to access '{url}'", "AWS_ACCESS_KEY_ID",
                    "anon: true")
    out = f"s3://{no_credentials}/out"
    with pytest.raises(SluiceError) as info:
        write(out, [sample()], "run-1")
    assert_one_line(info.value, f"no credentials to access '{out}'", "AWS_ACCESS_KEY_ID")


def test_no_credentials_for_the_registry_on_the_command_line(no_credentials: str,
                                                             workdir: Any) -> None:
    """`sluice models list` and a run scoring from the registry: one error line each."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (workdir / "data").mkdir()
    pq.write_table(sample(), workdir / "data" / "a.parquet")
    (workdir / "score.yaml").write_text(
        "pipeline: s\nsteps:\n  - op: read_parquet\n    path: data\n"
        "  - op: score\n    model: m\n  - op: write_parquet\n    path: out\n")
    sluice = str(Path(sys.executable).parent / "sluice")
    models = f"s3://{no_credentials}/models"
    for args in (["models", "list"], ["run", "score.yaml"]):
        done = subprocess.run([sluice, *args, "--models", models], cwd=workdir,
                              env={**os.environ, "CI": "1"}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and "Traceback" not in done.stderr
        assert f"no credentials to access '{models}'" in line and "AWS_ACCESS_KEY_ID" in line


def test_access_denied_is_one_error_naming_the_url(bucket: str, s3_endpoint: str) -> None:
    """The store refuses the credentials (moto checking them against its IAM, where the
    test's keys do not exist)."""
    import urllib.request

    import s3fs

    from operators.base import SluiceError
    from pipelines.store import ModelStore

    put(bucket, "data/a.parquet", parquet_bytes(sample()))
    s3fs.S3FileSystem.clear_instance_cache()

    def authenticate(after: str) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{s3_endpoint}/moto-api/reset-auth", data=after.encode(), method="POST",
            headers={"Content-Type": "text/plain"})).close()

    authenticate("0")
    try:
        url = f"s3://{bucket}/data"
        with pytest.raises(SluiceError) as info:
            ReadParquet(path=url).schema()
        assert_one_line(info.value, f"access denied to '{url}'", "credentials")
        with pytest.raises(SluiceError) as info:
            ModelStore(f"s3://{bucket}/models").versions("m")
        assert_one_line(info.value, f"access denied to 's3://{bucket}/models'")
    finally:
        authenticate("inf")


def test_an_endpoint_nobody_listens_on_is_one_error(bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import s3fs

    from operators.base import SluiceError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{bucket}/data"
    with pytest.raises(SluiceError) as info:
        # botocore's own retries off: s3fs still tries a few times
        ReadParquet(path=url, storage_options={
            "config_kwargs": {"retries": {"max_attempts": 1}}}).schema()
    assert_one_line(info.value, f"cannot reach the store of '{url}'", "AWS_ENDPOINT_URL")


def test_refusals_of_every_store_are_recognised_by_their_causes() -> None:
    """Other clients' refusals (their classes' names, as gcsfs and adlfs raise them),
    behind the errors that wrap them; anything else is not a refusal."""
    from operators.io.fs import store_problem

    class DefaultCredentialsError(Exception):
        pass

    class ClientAuthenticationError(Exception):
        pass

    try:
        try:
            raise DefaultCredentialsError("Your default credentials were not found")
        except DefaultCredentialsError as exc:
            raise OSError("listing failed") from exc
    except OSError as wrapped:
        gs = store_problem(wrapped, "gs://b/data")
    assert gs is not None and "no credentials to access 'gs://b/data'" in gs.message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in (gs.hint or "")
    az = store_problem(ClientAuthenticationError("no key"), "abfs://c/data")
    assert az is not None and "AZURE_STORAGE_ACCOUNT_KEY" in (az.hint or "")
    local = store_problem(PermissionError(13, "Permission denied"), "/srv/data")
    assert local is not None and local.message.startswith("access denied to '/srv/data'")
    assert store_problem(ValueError("bad footer"), "s3://b/x") is None
    assert store_problem(FileNotFoundError("s3://b/x"), "s3://b/x") is None


def test_run_records_on_s3(bucket: str, workdir: Any) -> None:
    """--runs on an object store (a Kubernetes CronJob's pod keeps no files): each run's
    record is one object, and `sluice runs list | show | prune` read them back."""
    import json as json_module
    import textwrap
    from pathlib import Path

    from click.testing import CliRunner

    from pipelines import runs
    from pipelines.cli import main
    from pipelines.datagen import generate
    from pipelines.runner import run

    generate("churn", 500, workdir / "data" / "churn", files=1)
    pipeline = Path(workdir) / "copy.yaml"
    pipeline.write_text(textwrap.dedent("""
        pipeline: copy
        steps:
          - op: read_parquet
            path: data/churn
          - op: write_parquet
            path: out
            mode: overwrite
        """))
    url = f"s3://{bucket}/sluice/runs"
    records = [run(str(pipeline), runs_dir=url) for _ in range(3)]
    keys = objects(bucket, "sluice/runs/")
    assert keys == sorted(f"sluice/runs/copy/{r['run_id']}.json" for r in records)
    stored = json_module.loads(s3().cat_file(f"{bucket}/{keys[0]}"))
    assert stored["pipeline"] == "copy" and stored["status"] == "succeeded"

    history = runs.load(url)
    assert [r["run_id"] for r in history.records] == [r["run_id"] for r in records[::-1]]
    assert history.records[0]["record_path"] == f"{url}/copy/{records[-1]['run_id']}.json"
    cli = CliRunner()
    listed = cli.invoke(main, ["runs", "list", "--runs", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == 3
    shown = cli.invoke(main, ["runs", "show", records[0]["run_id"], "--runs", url])
    assert shown.exit_code == 0 and records[0]["run_id"] in shown.stdout, shown.output
    pruned = cli.invoke(main, ["runs", "prune", "--keep", "1", "--runs", url])
    assert pruned.exit_code == 0, pruned.output
    assert objects(bucket, "sluice/runs/") == [f"sluice/runs/copy/{records[-1]['run_id']}.json"]
    empty = cli.invoke(main, ["runs", "list", "--runs", f"s3://{bucket}/elsewhere"])
    assert empty.exit_code == 0
    assert empty.stdout.strip().startswith(f"no run records: s3://{bucket}/elsewhere does not "
                                           "exist")


def test_concurrent_appends_to_one_output_on_s3_all_land(
        bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs appending to one S3 output at once take turns at the commit (a lock object
    created exclusively beside it): every run's rows are listed by the last manifest.
    Each commit here waits 0.3 s between reading the manifest and writing the next, so
    without the lock the runs would read the same manifest and the last would drop the
    others' files."""
    import threading

    url = f"s3://{bucket}/events"
    write(url, [sample(40, generation=0)], "first", mode="append")
    slow = WriteParquet._current

    def read_then_wait(self: WriteParquet, loc: Any) -> Any:
        current = slow(self, loc)
        time.sleep(0.3)
        return current

    monkeypatch.setattr(WriteParquet, "_current", read_then_wait)
    errors: list[BaseException] = []

    def append(generation: int) -> None:
        try:
            write(url, [sample(10 * generation, generation=generation)], f"run-{generation}",
                  mode="append")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(g,)) for g in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    back = read(url)
    counts = pc.value_counts(back["generation"]).to_pylist()
    assert sorted((c["values"], c["counts"]) for c in counts) == [
        (0, 40), (1, 10), (2, 20), (3, 30), (4, 40)]
    assert not [k for k in objects(bucket) if k.endswith("sluice-lock")]  # released


def test_a_dead_writers_lock_on_s3_is_taken_over(bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock object its writer left (a killed run) holds the output up to
    STORE_LOCK_STALE seconds, then the next commit takes it over."""
    import json as json_module

    from operators.io import fs as fs_module

    url = f"s3://{bucket}/events"
    write(url, [sample(20, generation=1)], "first", mode="append")
    put(bucket, ".events.sluice-lock", json_module.dumps(
        {"owner": "dead", "at": time.time() - 5, "host": "gone", "pid": 1}).encode())
    monkeypatch.setattr(fs_module, "STORE_LOCK_STALE", 2.0)
    slept: list[float] = []

    class Clock:  # the module's time, its waits counted
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(fs_module, "time", Clock())
    write(url, [sample(30, generation=2)], "next", mode="append")
    assert slept == []  # 5 s old: stale already, taken over without a wait
    assert read(url).num_rows == 50
    assert not [k for k in objects(bucket) if k.endswith("sluice-lock")]


def test_a_dead_writers_lock_taken_over_by_two_writers_at_once_lets_one_in(
        bucket: str) -> None:
    """Two writers that find one dead writer's lock: the one that reads it first and
    the other takes it over and locks meanwhile waits for that other's commit, not
    deleting its lock (both would commit at once, as without a lock)."""
    import threading

    from operators.io.fs import locked_on_store

    target = f"{bucket}/events"
    put(bucket, ".events.sluice-lock", json.dumps(
        {"owner": "dead", "at": time.time() - 3600, "host": "gone", "pid": 1}).encode())

    class ReadsThenTheOtherLocks:
        """The slower writer's store: right after it reads the dead writer's note, the
        other writer takes the lock over."""

        def __init__(self) -> None:
            self.other: Any = None

        def __getattr__(self, name: str) -> Any:
            return getattr(s3(), name)

        def cat_file(self, path: str) -> bytes:
            note = s3().cat_file(path)
            if self.other is None:
                lock = locked_on_store(s3(), target)
                lock.__enter__()
                # seen by the test only once it holds the lock: on a loaded machine its
                # __exit__ came while __enter__ still ran ("generator already executing")
                self.other = lock
            return note

    slower = ReadsThenTheOtherLocks()
    inside = threading.Event()

    def commit() -> None:
        with locked_on_store(slower, target):
            inside.set()

    thread = threading.Thread(target=commit)
    thread.start()
    try:
        assert not inside.wait(1.5)  # the other holds the lock
    finally:
        while slower.other is None:
            time.sleep(0.01)
        slower.other.__exit__(None, None, None)
    assert inside.wait(10)
    thread.join()
    assert not [k for k in objects(bucket) if "sluice-lock" in k]


def test_an_overwrite_of_a_bucket_root_keeps_the_lock_another_writer_took(
        bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock of an output at a bucket's root is inside it: an overwrite there, which
    deletes what its manifest does not list after its commit (the lock released), kept
    deleting the lock the next writer had taken meanwhile (and a third would write with
    it at once)."""
    url = f"s3://{bucket}"
    write(url, [sample(20, generation=1)], "first", mode="overwrite")
    held = json.dumps({"owner": "next", "at": time.time(), "host": "h", "pid": 1}).encode()
    drop = WriteParquet._drop_unlisted

    def the_next_writer_locks_first(fs: Any, token: dict, keep: set[str], loc: Any) -> None:
        put(bucket, ".sluice-lock", held)  # the next writer's commit begins
        drop(fs, token, keep, loc)

    monkeypatch.setattr(WriteParquet, "_drop_unlisted",
                        staticmethod(the_next_writer_locks_first))
    write(url, [sample(30, generation=2)], "second", mode="overwrite")
    assert ".sluice-lock" in objects(bucket)
    assert read(url).num_rows == 30


def test_an_overwrite_on_s3_keeps_what_a_run_committed_meanwhile(
        bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An overwrite deletes what its manifest does not list after its commit; not the
    files of an append that committed in between (the manifest there lists them: they
    were deleted, and the output listed files that were gone). A run still writing
    whose files an overwrite deleted fails its commit, saying so, and commits nothing."""
    url = f"s3://{bucket}/out"
    write(url, [sample(20, generation=1)], "first", mode="overwrite")
    drop = WriteParquet._drop_unlisted

    def an_append_commits_first(fs: Any, token: dict, keep: set[str], loc: Any) -> None:
        write(url, [sample(7, generation=3)], "appender", mode="append")
        drop(fs, token, keep, loc)

    monkeypatch.setattr(WriteParquet, "_drop_unlisted", staticmethod(an_append_commits_first))
    monkeypatch.setattr(parquet, "locked_on_store",  # the append takes its turn between
                        lambda fs, target, stale=None: contextlib.nullcontext())
    write(url, [sample(30, generation=2)], "second", mode="overwrite")
    back = read(url)
    assert sorted(set(back["generation"].to_pylist())) == [2, 3] and back.num_rows == 37
    assert not [k for k in objects(bucket, "out/") if "-first-" in k]  # the first's: gone
    monkeypatch.setattr(WriteParquet, "_drop_unlisted", staticmethod(drop))

    # a run writing while an overwrite commits: its files go, its commit says so
    op = WriteParquet(path=url, mode="append")
    token = op.begin("late", sample(5).schema)
    results = [op.write(token, sample(5, generation=4), 0)]
    write(url, [sample(3, generation=5)], "third", mode="overwrite")
    with pytest.raises(DataError, match="1 of the 1 files this run wrote to .* were "
                                        "deleted before it committed"):
        op.commit(token, results)
    assert read(url)["generation"].to_pylist() == [5, 5, 5]


def appending_incrementally(workdir: Any, source: str) -> Any:
    """A pipeline 'inc' whose step 'events' reads ``source`` incrementally and appends
    its rows to workdir/out."""
    import textwrap
    from pathlib import Path

    pipeline = Path(workdir) / "inc.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        pipeline: inc
        steps:
          - id: events
            op: read_parquet
            path: {source}
            incremental: true
          - op: write_parquet
            path: out
            mode: append
        """))
    return pipeline


def lost_record(url: str) -> None:
    """Run 20261130T000000Z-dead00's record under ``url``: running, on another host, its
    heartbeat silent since 2026-11-30 (lost)."""
    from pipelines import runs

    runs.write({"run_id": "20261130T000000Z-dead00", "pipeline": "inc", "status": "running",
                "started_at": "2026-11-30T00:00:00Z", "seconds": 1.0,
                "engine": {"name": "local"}, "params": {}, "steps": {}, "outputs": [],
                "models": [], "metrics": {}, "host": "node-7", "pid": 1,
                "heartbeat_at": "2026-11-30T00:00:01Z", "heartbeat_unix": 1796000401.0,
                "heartbeat_seconds": 30.0}, url)


def test_incremental_reads_on_s3(bucket: str, workdir: Any) -> None:
    """Files of an object store read incrementally, with the state and the lock in the
    runs folder on the store: each file's rows once; a lock a killed run left is named,
    and taken over once the run's record reads lost."""
    from pathlib import Path

    from pipelines.runner import ValidationFailed, run

    def day(ds: int) -> None:
        put(bucket, f"events/ds={ds}/part.parquet",
            parquet_bytes(pa.table({"id": [ds * 10 + i for i in range(3)]})))

    pipeline = appending_incrementally(workdir, f"s3://{bucket}/events")
    url = f"s3://{bucket}/sluice/runs"
    day(1)
    day(2)
    assert run(str(pipeline), runs_dir=url)["steps"]["events"]["incremental"]["new_files"] == 2
    day(3)
    lock = f"{bucket}/sluice/runs/inc/.reads/events.lock"
    s3().pipe_file(lock, json.dumps({"run_id": "20261130T000000Z-dead00"}).encode())
    with pytest.raises(ValidationFailed) as info:
        run(str(pipeline), runs_dir=url)
    message = str(info.value.problems[0])
    assert "run 20261130T000000Z-dead00 of pipeline 'inc' is reading it now" in message
    assert f"delete '{lock}' if that run was killed outright" in message
    lost_record(url)  # its running record, its heartbeat silent long enough: lost
    said: list[str] = []
    second = run(str(pipeline), runs_dir=url, notify=said.append)["steps"]["events"][
        "incremental"]
    assert (second["new_files"], second["read_before"]) == (1, 2)
    assert second["lock_taken"]["run_id"] == "20261130T000000Z-dead00"
    assert second["lock_taken"]["lost"].startswith("no heartbeat since 2026-11-30T00:00:01Z")
    assert ("step 'events': run 20261130T000000Z-dead00 left its lock and is lost (no "
            "heartbeat since 2026-11-30T00:00:01Z (") in said[0], said
    assert said[0].endswith("): this run took the lock over"), said
    assert not s3().exists(lock)
    assert run(str(pipeline), runs_dir=url)["skipped"]
    got = sorted(pq.read_table(Path(workdir) / "out").column("id").to_pylist())
    assert got == [10, 11, 12, 20, 21, 22, 30, 31, 32]


def test_a_run_whose_lock_is_taken_over_publishes_nothing(bucket: str, workdir: Any) -> None:
    """A run that took a lost run's lock, and whose own lock another run then took over
    (its heartbeat judged stopped), publishes nothing and says why; the lock stays the
    other run's."""
    from pathlib import Path

    from pipelines.runner import run

    put(bucket, "events/ds=1/part.parquet", parquet_bytes(pa.table({"id": [10, 11]})))
    pipeline = appending_incrementally(workdir, f"s3://{bucket}/events")
    url = f"s3://{bucket}/sluice/runs"
    lock = f"{bucket}/sluice/runs/inc/.reads/events.lock"
    s3().pipe_file(lock, json.dumps({"run_id": "20261130T000000Z-dead00"}).encode())
    lost_record(url)
    other = json.dumps({"run_id": "20261130T000100Z-other0"}).encode()

    def taken_over_meanwhile(line: str) -> None:
        if "this run took the lock over" in line:  # the lock is this run's now: lost too
            s3().pipe_file(lock, other)

    with pytest.raises(SluiceError, match=r"its lock '.*events\.lock' is no longer this "
                                          r"run's \(run 20261130T000100Z-other0 took it "
                                          r"over\).*nothing of this run was published"):
        run(str(pipeline), runs_dir=url, notify=taken_over_meanwhile)
    assert not (Path(workdir) / "out").exists()
    assert s3().cat_file(lock) == other  # not released by the run it is no longer
    assert not s3().exists(f"{bucket}/sluice/runs/inc/.reads/events.json")


def test_a_lock_whose_process_is_gone_is_taken_over_without_a_record(
        bucket: str, workdir: Any) -> None:
    """A run killed as it started, before its record was written, leaves a lock naming
    its process: gone from this host, the next run takes the lock over at once."""
    import os
    import subprocess
    import sys

    from operators.processes import this_process
    from pipelines.runner import run

    put(bucket, "events/ds=1/part.parquet", parquet_bytes(pa.table({"id": [10, 11]})))
    pipeline = appending_incrementally(workdir, f"s3://{bucket}/events")
    url = f"s3://{bucket}/sluice/runs"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    lock = f"{bucket}/sluice/runs/inc/.reads/events.lock"
    s3().pipe_file(lock, json.dumps({"run_id": "20261130T000000Z-dead00",
                                     **this_process(), "pid": ended.pid}).encode())
    assert not os.path.exists(f"/proc/{ended.pid}")
    read = run(str(pipeline), runs_dir=url)["steps"]["events"]["incremental"]
    assert read["lock_taken"] == {"run_id": "20261130T000000Z-dead00",
                                  "lost": f"process {ended.pid} on this host is gone"}
    assert read["new_files"] == 1 and not s3().exists(lock)


@pytest.mark.slow
@pytest.mark.parametrize(("point", "outcome"), [
    ("after-parts", "recovered"),  # the output's parts there, no _SUCCESS
    ("after-write", "settled"),  # the output landed, nothing recorded
])
def test_a_run_killed_on_s3_is_settled_by_the_next(bucket: str, workdir: Any, point: str,
                                                   outcome: str) -> None:
    """Exactly once on an object store: a `sluice run` SIGKILLed in its writes leaves its
    lock and its claim on the store; the next run takes the lock over (its process is
    gone from this host), settles the claim, and every input row is in the output once."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from pipelines.runner import run

    def day(ds: int) -> None:
        put(bucket, f"events/ds={ds}/part.parquet",
            parquet_bytes(pa.table({"id": [ds * 10 + i for i in range(3)]})))

    pipeline = appending_incrementally(workdir, f"s3://{bucket}/events")
    text = pipeline.read_text().replace("path: out", f"path: s3://{bucket}/out")
    pipeline.write_text(text)
    url = f"s3://{bucket}/sluice/runs"
    day(1)
    run(str(pipeline), runs_dir=url)
    day(2)
    killed = subprocess.run([str(Path(sys.executable).parent / "sluice"), "run",
                             str(pipeline), "--runs", url], cwd=workdir, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "CI": "1", "SLUICE_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lock = f"{bucket}/sluice/runs/inc/.reads/events.lock"
    dead = json.loads(s3().cat_file(lock))["run_id"]
    s3().invalidate_cache()
    day(3)
    said: list[str] = []
    after = run(str(pipeline), runs_dir=url, notify=said.append)
    read = after["steps"]["events"]["incremental"]
    assert read["lock_taken"]["run_id"] == dead
    assert read["lock_taken"]["lost"].startswith("process ")
    assert read["claim"]["run_id"] == dead and read["claim"]["outcome"] == outcome
    assert read["new_files"] == (1 if outcome == "settled" else 2)
    # the rows it landed, counted from the output's _SUCCESS on the store
    assert read["claim"].get("outputs") == ([{"step": "write_parquet",
                                              "path": f"s3://{bucket}/out",
                                              "rows": 3}] if outcome == "settled" else None)
    (taken,) = [line for line in said if line.endswith("this run took the lock over")]
    shown = subprocess.run([str(Path(sys.executable).parent / "sluice"), "runs", "show",
                            after["run_id"], "--runs", url], cwd=workdir,
                           capture_output=True, text=True, timeout=60)
    assert f"  {taken}\n" in shown.stdout, shown.stdout
    s3().invalidate_cache()
    got = sorted(pq.read_table(f"{bucket}/out", filesystem=s3()).column("id").to_pylist())
    assert got == [10, 11, 12, 20, 21, 22, 30, 31, 32]
    assert not s3().exists(lock)
    assert not s3().exists(f"{bucket}/sluice/runs/inc/.reads/events.pending.json")


def test_incremental_read_of_a_sluice_output_on_s3(bucket: str, workdir: Any) -> None:
    """Another job's output, appended to run after run (its files listed by its
    manifest), read incrementally: each appended file's rows once."""
    from pathlib import Path

    from pipelines.runner import run

    upstream = f"s3://{bucket}/upstream"
    write(upstream, [sample(40)], "20261130T010000Z-aaaaaa", mode="append")
    pipeline = appending_incrementally(workdir, upstream)
    first = run(str(pipeline))["steps"]["events"]["incremental"]
    write(upstream, [sample(30, generation=1)], "20261130T020000Z-bbbbbb", mode="append")
    second = run(str(pipeline))["steps"]["events"]["incremental"]
    assert (first["new_files"], second["new_files"], second["read_before"]) == (1, 1, 1)
    got = pq.read_table(Path(workdir) / "out")
    assert got.num_rows == 70
    keys = [("generation", "ascending"), ("id", "ascending")]  # ids repeat across the two
    assert got.sort_by(keys).equals(read(upstream).sort_by(keys))
