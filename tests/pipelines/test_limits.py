"""The memory and cores a process may use: a container's limits (Linux control groups,
v2 and v1, this group's and those above it), a Dask worker's memory_limit, PySpark's
worker memory; the budgets and worker counts that follow from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators import processes
from operators.processes import cache_budget, usable_cores, usable_memory

GIB = 1 << 30


def machine_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str],
              files: dict[str, str]) -> None:
    """This process in the control groups ``lines`` (as /proc/self/cgroup says them),
    with the control files ``files`` (path under the mount: contents)."""
    import tempfile

    here = Path(tempfile.mkdtemp(dir=tmp_path))  # a fresh one each call
    for name, text in files.items():
        (here / "cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (here / "cgroup" / name).write_text(text + "\n")
    (here / "self").write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setattr(processes, "CGROUP_ROOT", str(here / "cgroup"))
    monkeypatch.setattr(processes, "CGROUP_OF_PROCESS", str(here / "self"))


def test_a_cgroup_v2_container_s_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """cgroup v2 (one hierarchy): the group's memory.max and cpu.max, and its parents'
    (the smaller applies); "max" is no limit; a quota of 1.5 cores is 2."""
    monkeypatch.delenv("SLUICE_CACHE_MB", raising=False)
    in_groups(tmp_path, monkeypatch, ["0::/kubepods/pod1/box"], {
        "kubepods/pod1/box/memory.max": "max",
        "kubepods/pod1/memory.max": str(2 * GIB),
        "kubepods/memory.max": str(8 * GIB),
        "kubepods/pod1/box/cpu.max": "150000 100000",
        "kubepods/cpu.max": "max 100000"})
    assert usable_memory() == min(2 * GIB, machine_memory())
    assert cache_budget() == usable_memory() // 4
    assert usable_cores() == min(2, machine_cores())


def test_a_container_s_own_namespace_has_its_limits_at_the_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a container's own cgroup namespace the path is "/": its limits are the
    mount's own files."""
    in_groups(tmp_path, monkeypatch, ["0::/"], {"memory.max": str(GIB),
                                                "cpu.max": "100000 100000"})
    assert usable_memory() == min(GIB, machine_memory()) and usable_cores() == 1
    in_groups(tmp_path, monkeypatch, ["0::/"], {"cpu.max": "50000 100000"})  # half a core
    assert usable_cores() == 1 and usable_memory() == machine_memory()


def test_a_cgroup_v1_container_s_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """cgroup v1 (a hierarchy a controller): memory.limit_in_bytes (a number near 2^63
    is no limit) and cpu.cfs_quota_us over cpu.cfs_period_us (-1: none), under the
    mount of the controller's hierarchy; other hierarchies are not read."""
    lines = ["12:pids:/docker/abc", "5:memory:/docker/abc", "3:cpu,cpuacct:/docker/abc",
             "0::/"]
    in_groups(tmp_path, monkeypatch, lines, {
        "memory/docker/abc/memory.limit_in_bytes": str(3 * GIB),
        "memory/memory.limit_in_bytes": "9223372036854771712",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/docker/cpu.cfs_quota_us": "100000",
        "cpu,cpuacct/docker/cpu.cfs_period_us": "100000",
        "pids/docker/abc/memory.limit_in_bytes": "1"})
    assert usable_memory() == min(3 * GIB, machine_memory())
    assert usable_cores() == 1


def test_no_limit_is_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_groups(tmp_path, monkeypatch, ["4:memory:/x", "1:cpu:/x"], {
        "memory/x/memory.limit_in_bytes": "9223372036854771712",
        "cpu/x/cpu.cfs_quota_us": "-1", "cpu/x/cpu.cfs_period_us": "100000",
        "cpu/x/garbage": "?"})
    assert usable_memory() == machine_memory() and usable_cores() == machine_cores()
    monkeypatch.setattr(processes, "CGROUP_OF_PROCESS", str(tmp_path / "not-there"))
    assert usable_memory() == machine_memory() and usable_cores() == machine_cores()
    in_groups(tmp_path, monkeypatch, ["0::/y"], {"y/memory.max": "lots", "y/cpu.max": ""})
    assert usable_memory() == machine_memory() and usable_cores() == machine_cores()


def test_pyspark_worker_memory_and_the_cache_variable(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """A PySpark worker's memory (Spark hands ``spark.executor.pyspark.memory`` over the
    executor's cores to each Python worker as PYSPARK_EXECUTOR_MEMORY_MB) bounds what it
    may use; SLUICE_CACHE_MB, where set, is the budget whatever the limits."""
    monkeypatch.delenv("SLUICE_CACHE_MB", raising=False)
    monkeypatch.setenv("PYSPARK_EXECUTOR_MEMORY_MB", "512")
    assert usable_memory() == 512 << 20 and cache_budget() == 128 << 20
    monkeypatch.setenv("SLUICE_CACHE_MB", "3")
    assert cache_budget() == 3 << 20


def test_the_local_engine_computes_as_many_partitions_as_the_container_has_cores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.engines.local import LocalEngine

    in_groups(tmp_path, monkeypatch, ["0::/"], {"cpu.max": "100000 100000"})
    engine = LocalEngine()
    try:
        assert engine.workers == 1
    finally:
        engine.close()


@pytest.mark.slow
def test_a_dask_worker_s_memory_limit_bounds_its_budget() -> None:
    """In a Dask worker with a memory_limit, that limit is the memory there: what fits
    keep with its partitions is a quarter of it, not of the machine's."""
    from pipelines.engines.dask import DaskEngine

    # the engine's own LocalCluster: Dask's, made directly, would leave its workers'
    # pre-spawn environment (MALLOC_TRIM_THRESHOLD_) in this process's for later tests
    engine = DaskEngine(workers=1, memory_limit=GIB)
    engine.start()
    try:
        memory, budget = engine._client.submit(
            lambda: (usable_memory(), cache_budget())).result()
    finally:
        engine.close()
    assert memory == min(GIB, machine_memory()) and budget == memory // 4


@pytest.mark.slow
def test_a_local_cluster_without_a_memory_limit_shares_the_budget() -> None:
    """The Dask engine's own LocalCluster with ``memory_limit: 0`` (none): each worker's
    budget is a share of this process's (as the local engine's threads share one), not
    a quarter of the machine each."""
    import os

    from pipelines.engines.dask import DaskEngine

    engine = DaskEngine(workers=2, memory_limit=0)
    engine.start()
    try:
        budgets = {engine._client.submit(cache_budget, pure=False, workers=[w]).result()
                   for w in engine._client.scheduler_info()["workers"]}
    finally:
        engine.close()
    assert "SLUICE_CACHE_MB" not in os.environ  # the driver's own budget stays whole
    assert budgets == {cache_budget() // 2}
