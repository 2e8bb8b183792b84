"""write_parquet: atomic, manifest-listed outputs that survive SIGKILL at any moment."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from operators.base import DataError
from operators.io import fs as sluice_fs
from operators.io.parquet import MANIFEST, STAGING_MARK, ReadParquet, WriteParquet

HERE = Path(__file__).resolve().parent


def sample(rows: int = 1000, seed: int = 0, generation: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.array(rng.standard_normal(rows)),
        "region": pa.array(np.array(["north", "south", "a b/c=d", "é"])[np.arange(rows) % 4],
                           mask=np.arange(rows) % 9 == 0),
        "year": pa.array((2020 + np.arange(rows) % 3).astype(np.int64)),
        "day": pa.array((np.arange(rows) % 2).astype("datetime64[D]"), pa.date32()),
        "generation": pa.array(np.full(rows, generation, dtype=np.int64)),
    })


def write(path: Path, parts: list[pa.Table], run_id: str, **params: object) -> dict:
    """begin / write every part / commit, as an engine does (the writes with the sink and
    token pickled, as they travel to Dask or Spark workers)."""
    op = WriteParquet(path=str(path), **params)
    token = op.begin(run_id, parts[0].schema)
    worker, worker_token = pickle.loads(pickle.dumps((op, token)))
    try:
        results = [worker.write(worker_token, part, i) for i, part in enumerate(parts)]
    except BaseException:
        op.abort(token)  # as every engine does (write_through)
        raise
    return op.commit(token, results)


def split(table: pa.Table, n: int) -> list[pa.Table]:
    bounds = np.linspace(0, table.num_rows, n + 1).astype(int)
    return [table.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]


def snapshot(root: Path) -> dict[str, str]:
    """Every file below root with its content hash: 'intact byte for byte'."""
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def staging_dirs(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir()
                  if p.name.startswith(f".{target.name}{STAGING_MARK}"))


def read_back(path: Path) -> pa.Table:
    return ReadParquet(path=str(path)).read_all()


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


# --------------------------------------------------------------------------- basics


def test_write_commits_a_manifest_and_reads_back(workdir: Path) -> None:
    table = sample()
    target = workdir / "out"
    entry = write(target, split(table, 3), "run-1")
    assert entry == {"path": str(target), "rows": 1000, "files": 3}
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["run_id"] == "run-1" and manifest["rows"] == 1000
    assert sorted(manifest["files"]) == sorted(p.name for p in target.glob("*.parquet"))
    assert all(f.startswith("part-run-1-") for f in manifest["files"])
    assert read_back(target).equals(table)  # manifest order is partition order
    assert pq.read_table(target).equals(table)  # any Parquet reader sees the same
    assert staging_dirs(target) == []


def test_empty_result_is_a_readable_output(workdir: Path) -> None:
    table = sample()
    write(workdir / "out", [table.slice(0, 0), table.slice(0, 0)], "run-1")
    back = read_back(workdir / "out")
    assert back.num_rows == 0 and back.schema == table.schema


def test_mode_error_refuses_and_leaves_the_target_intact(workdir: Path) -> None:
    target = workdir / "out"
    write(target, split(sample(), 2), "run-1")
    before = snapshot(target)
    with pytest.raises(DataError, match="already exists.*mode: overwrite"):
        write(target, [sample(10, seed=1)], "run-2")
    assert snapshot(target) == before and staging_dirs(target) == []

    foreign = workdir / "foreign"  # a directory sluice did not write
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="already exists"):
        write(foreign, [sample(10)], "run-3")
    assert (foreign / "notes.txt").read_text() == "keep me"

    a_file = workdir / "file.parquet"
    pq.write_table(sample(5), a_file)
    before = snapshot(a_file)
    with pytest.raises(DataError, match="already exists"):
        write(a_file, [sample(10)], "run-4")
    assert snapshot(a_file) == before


def test_mode_error_takes_the_place_of_an_empty_directory(workdir: Path) -> None:
    (workdir / "out").mkdir()
    write(workdir / "out", [sample()], "run-1")
    assert read_back(workdir / "out").equals(sample())


def test_unwritable_target_is_a_one_line_data_error(workdir: Path) -> None:
    (workdir / "a_file").write_text("not a directory")
    with pytest.raises(DataError) as info:
        write(workdir / "a_file" / "out", [sample()], "run-1")
    assert "cannot write Parquet to" in str(info.value) and "\n" not in str(info.value)


def test_output_appearing_during_the_write_is_not_clobbered(workdir: Path) -> None:
    target = workdir / "out"
    op = WriteParquet(path=str(target))
    token = op.begin("slow", sample().schema)
    results = [op.write(token, sample(), 0)]
    write(target, [sample(7, seed=3)], "fast")  # another run commits first
    before = snapshot(target)
    with pytest.raises(DataError, match="appeared while writing"):
        op.commit(token, results)
    assert snapshot(target) == before and staging_dirs(target) == []


def test_overwrite_replaces_atomically(workdir: Path) -> None:
    target = workdir / "out"
    write(target, split(sample(1000, seed=1), 4), "run-1")
    old_files = set(os.listdir(target))
    new = sample(300, seed=2)
    write(target, split(new, 2), "run-2", mode="overwrite")
    assert read_back(target).equals(new)
    assert not old_files & set(os.listdir(target)) - {MANIFEST}
    assert staging_dirs(target) == []
    a_file = workdir / "file.parquet"  # a file in the way is replaced too
    pq.write_table(sample(5), a_file)
    write(a_file, [new], "run-3", mode="overwrite")
    assert read_back(a_file).equals(new) and staging_dirs(a_file) == []


def test_abort_leaves_the_previous_output(workdir: Path) -> None:
    target = workdir / "out"
    write(target, [sample()], "run-1")
    before = snapshot(target)
    op = WriteParquet(path=str(target), mode="overwrite")
    token = op.begin("run-2", sample().schema)
    op.write(token, sample(50, seed=9), 0)
    assert staging_dirs(target) == [f".out{STAGING_MARK}run-2"]
    op.abort(token)
    assert snapshot(target) == before and staging_dirs(target) == []


def test_partition_by_reads_back_equal(workdir: Path) -> None:
    table = sample(2000)
    target = workdir / "hive"
    write(target, split(table, 3), "run-1", partition_by=["region", "year"],
          row_group_rows=100)
    dirs = {p.relative_to(target).parts[0] for p in target.rglob("*.parquet")}
    assert "region=north" in dirs and "region=__HIVE_DEFAULT_PARTITION__" in dirs
    back = read_back(target)
    assert back.schema == table.schema  # types and column order, from the manifest
    assert by_id(back).equals(by_id(table))
    # a reader that knows nothing of the manifest sees the same rows
    plain = pq.read_table(target)
    assert sorted(plain["id"].to_pylist()) == table["id"].to_pylist()
    filtered = ReadParquet(path=str(target), filter="year = 2021 and region = 'south'")
    parts = filtered.partitions()
    assert {Path(p.path).parent.name for p in parts} == {"year=2021"}
    mask = pc.and_(pc.equal(table["year"], 2021), pc.equal(table["region"], "south"))
    assert by_id(filtered.read_all()).equals(by_id(table.filter(mask)))


def test_partition_by_keeps_each_files_rows_in_the_partitions_order(workdir: Path) -> None:
    """A sorted (or windowed) partition written hive-partitioned: each file's rows in
    the order they came (the writer's threads would otherwise mix its batches)."""
    table = sample(200_000)
    part = pa.Table.from_batches(table.to_batches(max_chunksize=1000))
    write(workdir / "out", [part], "run-1", partition_by=["year"])
    for path in (workdir / "out").rglob("*.parquet"):
        ids = pq.read_table(path)["id"].to_numpy()
        assert np.all(np.diff(ids) > 0), path


def test_partition_by_overwrite_and_empty(workdir: Path) -> None:
    target = workdir / "hive"
    write(target, [sample(100)], "run-1", partition_by=["year"])
    new = sample(40, seed=5)
    write(target, [new], "run-2", partition_by=["year"], mode="overwrite")
    assert by_id(read_back(target)).equals(by_id(new))
    write(target, [new.slice(0, 0)], "run-3", partition_by=["year"], mode="overwrite")
    back = read_back(target)
    assert back.num_rows == 0 and back.schema == new.schema


def test_durable_output_is_flushed_before_the_rename(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    write(workdir / "fast", split(sample(), 2), "run-0", partition_by=["year"])
    assert synced == []  # not durable: no fsync (the default; a killed run is still safe)
    target = workdir / "out"
    write(target, split(sample(), 2), "run-1", partition_by=["year"], durable=True)
    staging = workdir / f".out{STAGING_MARK}run-1"
    listed = json.loads((target / MANIFEST).read_text())["files"]
    assert {staging / f for f in [*listed, MANIFEST]} <= set(synced)
    assert {staging} | {(staging / f).parent for f in listed} <= set(synced)
    assert synced[-1] == workdir  # the rename itself, last


# --------------------------------------------------------------------------- staging debris


def test_dead_runs_staging_is_swept_live_runs_is_not(workdir: Path) -> None:
    target = workdir / "out"
    dead = workdir / f".out{STAGING_MARK}dead-run"
    (dead / "year=2020").mkdir(parents=True)
    (dead / "year=2020" / "part-dead-run-00000-0.parquet").write_bytes(b"half")
    other = workdir / f".other{STAGING_MARK}dead-run"  # another target's: not ours to sweep
    other.mkdir()
    live = WriteParquet(path=str(target), mode="overwrite")
    live_token = live.begin("live-run", sample().schema)  # sweeps the dead one
    assert not dead.exists() and other.exists()
    assert staging_dirs(target) == [f".out{STAGING_MARK}live-run"]
    write(target, [sample(10)], "second", mode="overwrite")  # a live lock is respected
    assert staging_dirs(target) == [f".out{STAGING_MARK}live-run"]
    live.commit(live_token, [live.write(live_token, sample(), 0)])
    assert read_back(target).equals(sample()) and staging_dirs(target) == []
    assert read_back(workdir / "out").num_rows == 1000


def test_sweep_keeps_a_directory_locked_by_another_process(workdir: Path) -> None:
    path = workdir / f".out{STAGING_MARK}other-process"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from operators.io.fs import claim_dir
            claim_dir({str(path)!r})
            print("locked", flush=True)
            time.sleep(60)
            """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert sluice_fs.sweep_stale(str(workdir), f".out{STAGING_MARK}") == []
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sluice_fs.sweep_stale(str(workdir), f".out{STAGING_MARK}") == [str(path)]


# --------------------------------------------------------------------------- readers


def test_overwrite_while_a_reader_reads(workdir: Path) -> None:
    """Every read is one whole generation, or a clear error; never rows of two."""
    target = workdir / "out"
    rows = 4000
    write(target, split(sample(rows), 4), "gen-0")
    seen: list[int] = []
    errors: list[str] = []
    mixes: list[object] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            op = ReadParquet(path=str(target))
            try:
                parts = op.partitions()
                tables = []
                for part in parts:
                    time.sleep(0.002)  # widen the window between planning and reading
                    tables.append(op.read(part))
            except DataError as exc:
                errors.append(str(exc))
                continue
            got = pa.concat_tables(tables)
            generations = pc.unique(got["generation"]).to_pylist()
            if len(generations) != 1 or got.num_rows != rows:
                mixes.append((generations, got.num_rows))
            else:
                seen.append(generations[0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(1, 25):
            write(target, split(sample(rows, generation=generation), 4), f"gen-{generation}",
                  mode="overwrite")
            time.sleep(0.02)
    finally:
        done.set()
        thread.join()
    assert not mixes
    assert len(set(seen)) >= 2, "the reader never overlapped the writer"
    assert all("the file is gone" in e for e in errors), errors[:3]


# --------------------------------------------------------------------------- SIGKILL


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    from pipelines.datagen import generate

    folder = tmp_path_factory.mktemp("kill") / "churn"
    generate("churn", 1_000_000, folder, files=4, row_group_rows=50_000)
    return folder, pq.read_table(folder)


def start_writer(pipeline: Path, cwd: Path, pause: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "CI": "1", "KILL_WRITER_PAUSE": pause}
    return subprocess.Popen([sys.executable, str(HERE / "kill_writer.py"), str(pipeline)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_writer(pipeline: Path, cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = start_writer(pipeline, cwd)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return time.perf_counter() - t0


def state_of(target: Path, old: pa.Table | None, new: pa.Table) -> str:
    """'absent', 'old' or 'new'; anything else (a readable half) fails the test."""
    if not target.exists():
        assert old is None, "the old output vanished"
        return "absent"
    back = read_back(target)
    plain = pq.read_table(target)  # a reader that ignores the manifest sees the same
    if old is not None and back.equals(old):
        assert plain.equals(old)
        return "old"
    assert back.num_rows == new.num_rows and back.equals(new), "a half output is readable"
    assert plain.num_rows == new.num_rows
    return "new"


def kill_pipeline(folder: Path, source: Path, mode: str) -> Path:
    path = folder / f"copy-{mode}.yaml"
    path.write_text(textwrap.dedent(f"""\
        pipeline: copy
        steps:
          - op: read_parquet
            path: {source}
          - op: write_parquet
            path: outputs/out
            mode: {mode}
        """))
    return path


def kill_at(pipeline: Path, cwd: Path, pause: str, delay: float) -> None:
    proc = start_writer(pipeline, cwd, pause)
    try:
        if pause:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == f"PAUSED {pause}", (line, proc.stderr and proc.stderr.read())
        else:
            time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)


def test_sigkill_at_any_moment_leaves_old_or_new(workdir: Path,
                                                 big_dataset: tuple[Path, pa.Table]) -> None:
    source, new = big_dataset
    target = workdir / "outputs" / "out"
    old = sample(500, seed=7)
    pipeline = kill_pipeline(workdir, source, "overwrite")
    full_run = run_writer(pipeline, workdir)
    assert state_of(target, None, new) == "new"
    delays = np.sort(np.random.default_rng(42).uniform(0.05, 1.0, 5)) * full_run
    moments = [("", float(d)) for d in delays] + [
        ("staged", 0.0), ("publishing", 0.0), ("exchanged", 0.0)]
    outcomes = []
    for pause, delay in moments:
        write(target, [old], f"old-{len(outcomes)}", mode="overwrite")
        kill_at(pipeline, workdir, pause, delay)
        outcome = state_of(target, old, new)
        outcomes.append((pause or f"{delay:.2f}s", outcome))
        if pause in ("staged", "publishing"):
            assert outcome == "old" and len(staging_dirs(target)) == 1
        if pause == "exchanged":  # swapped in, the old output left in the staging dir
            assert outcome == "new" and len(staging_dirs(target)) == 1
        # debris beside the target is invisible to readers of the parent directory
        assert ReadParquet(path=str(target.parent / "*")).read_all().num_rows in (
            old.num_rows, new.num_rows)
        run_writer(pipeline, workdir)  # the re-run succeeds and sweeps the debris
        assert state_of(target, None, new) == "new" and staging_dirs(target) == []
    assert ("staged", "old") in outcomes and any(o == "old" for p, o in outcomes[:5]), outcomes


def test_sigkill_of_a_first_write_leaves_nothing(workdir: Path,
                                                 big_dataset: tuple[Path, pa.Table]) -> None:
    source, new = big_dataset
    target = workdir / "outputs" / "out"
    pipeline = kill_pipeline(workdir, source, "error")
    for pause in ("publishing",):
        kill_at(pipeline, workdir, pause, 0.0)
        assert state_of(target, None, new) == "absent"
        assert len(staging_dirs(target)) == 1
        with pytest.raises(DataError, match="no such file"):
            ReadParquet(path=str(target)).schema()
        run_writer(pipeline, workdir)  # mode error: debris is no output
        assert state_of(target, None, new) == "new" and staging_dirs(target) == []
        shutil.rmtree(target)


def test_a_file_written_whole_replaces_the_old_one_or_leaves_it(tmp_path: Path) -> None:
    """``fs.written_whole`` (run records, aliases, generated data, spark-submit
    archives): the new contents appear at once, with the folder's usual permissions;
    a failed or interrupted write leaves the old file as it was and no staging file."""
    target = tmp_path / "record.json"
    target.write_text("old")
    with sluice_fs.written_whole(target) as staging:
        Path(staging).write_text("new")
        assert target.read_text() == "old" and Path(staging).parent == tmp_path
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    for error in (ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(error)), sluice_fs.written_whole(target) as staging:
            Path(staging).write_text("half")
            raise error
        assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_file_written_whole_is_flushed_then_renamed_then_its_folder_flushed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record, model or state file said written survives a power cut whole: its
    contents reach the disk before the rename publishes it, the rename after."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def spy_replace(src: str, dst: str) -> None:
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    target = tmp_path / "model.json"
    with sluice_fs.written_whole(target) as staging:
        Path(staging).write_text("new")
    assert events == [("fsync", staging), ("replace", staging, str(target)),
                      ("fsync", str(tmp_path))]
    events.clear()
    with sluice_fs.written_whole(target, durable=False) as staging:
        Path(staging).write_text("newer")
    assert events == [("replace", staging, str(target))] and target.read_text() == "newer"


def test_an_output_inside_the_folder_the_pipeline_reads_is_refused(workdir: Path) -> None:
    """Its rows would be read again by the next run (5,000 rows, then 10,000): refused
    as the file is planned, and where a glob the pipeline reads reaches it (data/**: the
    glob was never checked); the folder itself (overwrite in place), a folder beside it,
    a glob that does not reach it and a folder with a manifest (its files only) are not."""
    from conftest import write_pipeline

    from pipelines.runner import plan_file

    (workdir / "data" / "ds=1").mkdir(parents=True)
    pq.write_table(sample(), workdir / "data" / "ds=1" / "part-0.parquet")

    def problems(read: str, write: str) -> list[str]:
        return [str(p) for p in plan_file(write_pipeline(workdir, f"""
            pipeline: copy
            steps:
              - id: rows
                op: read_parquet
                path: {read}
              - op: write_parquet
                path: {write}
                mode: overwrite
            """)).problems]

    assert problems("data", "data/scored") == [
        f"{workdir / 'pipeline.yaml'}:7: step 'write_parquet' (write_parquet): output "
        "'data/scored' is inside 'data', which step 'rows' reads: the next run would read "
        "these rows as input too (write it outside that folder)"]
    assert problems("./data/", "data/ds=2/x")  # however the paths are written
    assert problems(f"file://localhost{workdir}/data", f"file://{workdir}/data/scored")
    assert problems("data", f"file://otherhost{workdir}/data/scored") == [  # its own
        f"{workdir / 'pipeline.yaml'}:7: step 'write_parquet' (write_parquet): path: "
        f"'file://otherhost{workdir}/data/scored' names a file on host 'otherhost': sluice "
        "opens file:// URLs of this machine only (file:///path, or file://localhost/path) "
        f"(for this machine's {workdir}/data/scored: file://{workdir}/data/scored; for a "
        "file on 'otherhost': a URL of a store that reaches it (hdfs://, s3://...), or "
        "mount it here and give its path)"]
    for read, write in [("data", "data"), ("data", "scored"), ("data/ds=*", "data/out"),
                        ("data/ds=1", "data/ds=10")]:
        assert problems(read, write) == [], (read, write)
    # a glob that reaches it: ** below it, * naming it or a folder above it, its files
    for read, write in [("data/**", "data/out"), ("data/*", "data/out"),
                        ("data/*", "data/ds=1/out"), ("data/*/*.parquet", "data/out")]:
        assert problems(f'"{read}"', write) == [
            f"{workdir / 'pipeline.yaml'}:7: step 'write_parquet' (write_parquet): output "
            f"'{write}' is matched by '{read}', which step 'rows' reads: the next run would "
            "read these rows as input too (write it outside that folder)"], (read, write)
    # a pattern that is no glob is the read's problem alone (a ValueError's traceback)
    (bad,) = problems('"data/***"', "data/out")
    assert "step 'rows' (read_parquet): 'data/***' is not a glob" in bad
    for read, write in [("data/ds=1/*.parquet", "data/ds=1"), ("data/**", "data"),
                        ("data/ds=1/*.parquet", "data/ds=1/out")]:
        assert problems(f'"{read}"', write) == [], (read, write)
    (workdir / "data" / "ds=1" / MANIFEST).write_text(json.dumps({
        "format": "sluice-output/1", "run_id": "r", "rows": 1000, "files": ["part-0.parquet"]}))
    assert problems('"data/*"', "data/ds=1/out") == []  # the manifest's files only
    (workdir / "data" / MANIFEST).write_text(json.dumps({
        "format": "sluice-output/1", "run_id": "r", "rows": 1000,
        "files": ["ds=1/part-0.parquet"]}))
    assert problems("data", "data/scored") == []


def test_a_run_that_writes_one_output_twice(workdir: Path) -> None:
    """Two write steps into one output in a run: the second finds the first's output
    there, as written in that order (overwritten; mode error is the output-exists
    error). Outputs wait for the end of the run to be published, and the second's
    staging met the first's: 'File exists: .out.sluice-tmp-...'."""
    from conftest import write_pipeline

    from pipelines.runner import run

    pq.write_table(pa.table({"id": [1, 2]}), workdir / "in.parquet")

    def pipeline(mode: str) -> Path:
        return write_pipeline(workdir, f"""
            pipeline: twice
            steps:
              - id: rows
                op: read_parquet
                path: in.parquet
              - op: write_parquet
                path: out
                mode: {mode}
              - input: rows
                op: write_parquet
                path: ./out
                mode: {mode}
            """)

    run(pipeline("overwrite"))
    assert sorted(pq.read_table(workdir / "out").column("id").to_pylist()) == [1, 2]
    shutil.rmtree(workdir / "out")
    with pytest.raises(DataError, match="output './out' already exists"):
        run(pipeline("error"))
