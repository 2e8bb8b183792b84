"""The embedded local engine: order, caching for multi-pass fits, bounded memory, progress."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SLUICE, sluice_on_terminal, terminal_env, write_pipeline

from operators.io.parquet import ReadParquet
from pipelines.datagen import churn_table
from pipelines.engines.local import LocalEngine
from pipelines.runner import run

THREE_PASS = """
    pipeline: three
    steps:
      - op: read_parquet
        path: data/churn
        partition_mb: 0.02
      - id: three
        op: sluice_testops.ThreePass
        column: monthly_charges
    """


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = ReadParquet.read

    def counted(self, partition):  # noqa: ANN001, ANN202 - a spy with the same signature
        calls.append(partition.index)
        return original(self, partition)

    monkeypatch.setattr(ReadParquet, "read", counted)
    return calls


def test_multi_pass_fit_reads_once_when_cached(churn: Path, workdir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_reads(monkeypatch)
    path = write_pipeline(workdir, THREE_PASS)
    record = run(path)
    x = churn_table(5000)["monthly_charges"].to_numpy()
    metrics = record["metrics"]["three"]
    assert metrics["passes"] == 3
    np.testing.assert_allclose([metrics["mean"], metrics["var"], metrics["maxdev"]],
                               [x.mean(), x.var(), np.abs(x - x.mean()).max()], rtol=1e-12)
    partitions = len(set(calls))
    assert partitions >= 3 and len(calls) == partitions  # one read per partition in all


def test_the_steps_after_a_multi_pass_fit_start_from_its_cache(
        churn: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps after a fit (its scores, an evaluate, a write) take each partition as
    the fit's cache holds it: the source read once in all, the steps before the fit run
    once, and the same results as a run that reads again (no cache)."""
    calls = count_reads(monkeypatch)
    text = THREE_PASS + """
      - op: derive
        columns: {twice: "monthly_charges * 2"}
      - op: write_parquet
        path: out
    """
    record = run(write_pipeline(workdir, text))
    partitions = len(set(calls))
    assert partitions >= 3 and len(calls) == partitions  # the write read no partition
    assert record["steps"]["read_parquet"]["rows"] == record["steps"]["write_parquet"][
        "rows"] == 5000
    calls.clear()
    engine = LocalEngine(cache_bytes=0)  # no cache: every pass and the write read again
    with engine:
        run(write_pipeline(workdir, text.replace("path: out", "path: again"), "again.yaml"),
            engine_instance=engine)
    assert len(calls) == 4 * partitions
    assert pq.read_table(workdir / "out").equals(pq.read_table(workdir / "again"))


def test_multi_pass_fit_recomputes_when_cache_is_too_small(churn: Path, workdir: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls = count_reads(monkeypatch)
    path = write_pipeline(workdir, THREE_PASS)
    engine = LocalEngine(cache_bytes=0)
    with engine:
        record = run(path, engine_instance=engine)
    partitions = len(set(calls))
    assert len(calls) == 3 * partitions
    x = churn_table(5000)["monthly_charges"].to_numpy()
    np.testing.assert_allclose(record["metrics"]["three"]["var"], x.var(), rtol=1e-12)


def test_output_keeps_partition_order(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, """
        pipeline: copy
        steps:
          - op: read_parquet
            path: data/churn
            partition_mb: 0.02
          - op: write_parquet
            path: out
        """)
    run(path)
    files = sorted((workdir / "out").glob("*.parquet"))
    assert len(files) > 3
    ids = np.concatenate([pq.read_table(f)["customer_id"].to_numpy() for f in files])
    np.testing.assert_array_equal(ids, np.arange(5000))


MEMORY_SCRIPT = """
import sys, pyarrow as pa
sys.path.insert(0, {plugins!r})
from pipelines.runner import run
run({pipeline!r}, runs_dir={runs!r})
print(pa.default_memory_pool().max_memory())
"""


def test_memory_is_bounded_by_partitions_not_dataset(workdir: Path) -> None:
    from pipelines.datagen import generate

    generate("numeric", 1_200_000, workdir / "big", files=12, row_group_rows=100_000)
    dataset_bytes = pq.read_table(workdir / "big").nbytes
    path = write_pipeline(workdir, """
        pipeline: copy
        steps:
          - op: read_parquet
            path: big
            partition_mb: 8
          - op: write_parquet
            path: out
        """)
    script = MEMORY_SCRIPT.format(plugins=str(Path(__file__).parent.parent / "plugins"),
                                  pipeline=str(path), runs=str(workdir / "runs"))
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True,
                         text=True, timeout=300, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    workers = os.cpu_count() or 1
    partition_bytes = dataset_bytes / 12
    assert peak < max(0.5 * dataset_bytes, (2 * workers + 2) * 2 * partition_bytes), (
        f"peak arrow memory {peak / 2**20:.0f} MiB for a {dataset_bytes / 2**20:.0f} MiB dataset")


def test_progress_bar_on_a_terminal_only(churn: Path, workdir: Path) -> None:
    path = write_pipeline(workdir, THREE_PASS)
    code, text = sluice_on_terminal(["run", str(path)], workdir)
    assert code == 0, text
    assert "partitions" in text and "rows" in text and "ETA" in text, text
    piped = subprocess.run([SLUICE, "run", str(path)], cwd=workdir, env=terminal_env(),
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc",
                    reason="declared: malloc arenas are glibc's")
def test_the_engine_limits_malloc_arenas_to_its_workers_unless_the_user_did() -> None:
    """glibc gives each thread that meets a busy arena its own (8 a core at most), and
    NumPy temporaries freed in one are not reused by another: the local engine caps
    them at its workers (2 at least) when it starts, in its own process, and leaves a
    ``MALLOC_ARENA_MAX`` the user set alone. Run in a fresh process: the cap is for
    the whole process and lasts."""
    probe = textwrap.dedent("""
        import ctypes, json, os, sys
        from pipelines.engines import local
        calls = []
        real = local.limit_malloc_arenas
        local.limit_malloc_arenas = lambda workers: calls.append(real(workers)) or calls[-1]
        engine = local.LocalEngine(workers=3)
        engine.start()
        engine.close()
        print(json.dumps(calls))
        """)
    for env, expected in (({}, [3]), ({"MALLOC_ARENA_MAX": "1"}, [None])):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == str(expected).replace("None", "null")


@pytest.mark.parametrize("name", ["local", "dask"])
def test_the_steps_before_a_fit_run_once(churn: Path, workdir: Path, name: str,
                                         shared_engines: dict[str, Any]) -> None:
    """The steps after a multi-pass fit take its cached partitions (the local engine's
    tables, Dask's persisted ones): the steps before the fit run once a partition, and
    the output is the rows as computed. (Spark caches a fit's partitions only where its
    profile says: tests/pipelines/test_spark_engine.py.)"""
    from conftest import started

    engine = started(shared_engines, name)
    counted = workdir / "count.txt"
    text = f"""
    pipeline: once
    steps:
      - op: read_parquet
        path: data/churn
        partition_mb: 0.02
      - op: sluice_testops.Count
        path: {counted}
      - id: three
        op: sluice_testops.ThreePass
        column: monthly_charges
      - op: derive
        columns: {{twice: "monthly_charges * 2"}}
      - op: write_parquet
        path: out
    """
    record = run(write_pipeline(workdir, text), engine_instance=engine)
    lines = counted.read_text().split()
    assert sum(int(n) for n in lines) == 5000, lines  # each partition once
    assert len(lines) == record["steps"]["read_parquet"]["partitions"] > 1
    out = pq.read_table(workdir / "out")
    assert out.num_rows == 5000 and out.column("twice").to_pylist() == [
        2 * v for v in out.column("monthly_charges").to_pylist()]



@pytest.mark.parametrize("engine_name", ["local", "dask", "spark"])
def test_partitions_remembered_by_the_source_not_its_id(workdir: Path, engine_name: str
                                                       ) -> None:
    """An engine remembers a source's partitions for the run by the source object: a
    source freed earlier in the run (a shuffle's buckets) whose id a new source takes
    must not lend the new one its partitions (Spark read a finished test's deleted
    scratch buckets for a new read this way). No engine is started."""
    from pipelines.engines.dask import DaskEngine
    from pipelines.engines.spark import SparkEngine

    first, second = workdir / "a.parquet", workdir / "b.parquet"
    pq.write_table(churn_table(50, seed=1), first)
    pq.write_table(churn_table(80, seed=2), second)
    old = ReadParquet(path=str(first), partition_mb=0.001)
    new = ReadParquet(path=str(second))
    engine = {"local": LocalEngine, "dask": DaskEngine, "spark": SparkEngine}[engine_name]()
    engine._partitions[id(new)] = (old, old.partitions())  # as if old had had new's id
    data = engine.read(new, "b", new.schema())
    infos = engine.partitions(data)
    assert [(i.path, i.rows) for i in infos] == [(str(second), 80)]
    assert engine._partitions[id(new)][0] is new
    assert engine.partitions(data) is infos  # remembered now
