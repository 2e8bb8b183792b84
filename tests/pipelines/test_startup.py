"""What sluice imports before it does anything: the commands that run nothing answer
without importing the engines, the operators or the array libraries, and a run imports
what its pipeline uses. Checked by the modules a fresh interpreter holds, not by time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

HEAVY = ("numpy", "pyarrow", "pandas", "pydantic", "yaml", "fsspec", "lark", "dask",
         "distributed", "pyspark", "mlflow", "operators.base", "pipelines.runner")


def modules_after(code: str, cwd: Path = ROOT) -> set[str]:
    """The modules a fresh interpreter has imported once ``code`` ran (its output is
    dropped; a SystemExit, as a click command ends, is not a failure)."""
    script = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
              "import json\nprint('\\n' + json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY)}


def cli(*args: str) -> str:
    return f"from pipelines.cli import main; main({list(args)!r})"


def test_the_cli_imports_nothing_heavy_before_a_command_needs_it() -> None:
    assert not heavy(modules_after("import pipelines.cli"))
    assert not heavy(modules_after(cli("--help")))
    assert not heavy(modules_after(cli("run", "--help")))


def test_runs_list_reads_the_history_without_the_engines(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "p"
    runs.mkdir(parents=True)
    record = {"run_id": "20261130T000000Z-abcdef", "pipeline": "p", "status": "succeeded",
              "started_at": "2026-11-30T00:00:00", "seconds": 1.0,
              "engine": {"name": "local"}, "params": {}, "steps": {}, "outputs": [],
              "models": [], "metrics": {}}
    (runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    got = modules_after(cli("runs", "list", "--runs", str(tmp_path / "runs")))
    assert "rich" in got  # the table was printed
    assert not heavy(got)


def test_the_cli_choices_are_their_sources() -> None:
    from operators.arrays import DTYPES
    from operators.io.parquet import WRITE_MODES
    from pipelines import cli
    from pipelines.device import DEVICES

    assert (cli.DEVICES, cli.DTYPES, cli.WRITE_MODES) == (DEVICES, DTYPES, WRITE_MODES)


def test_ops_lists_every_operator_without_the_data_libraries() -> None:
    got = modules_after(cli("ops"))
    assert {"operators.models.trees", "operators.io.parquet"} <= got  # every operator
    # (scipy.stats: about a second to import; select_features takes its tests' tails
    # from scipy.special)
    unused = {"pandas", "pyarrow.dataset", "array_api_compat.numpy", "fsspec", "dask",
              "distributed", "pyspark", "scipy.stats"}
    assert not got & unused


def test_a_run_imports_what_its_pipeline_uses(tmp_path: Path) -> None:
    """read -> deduplicate -> write: no expression to parse (lark), no model (the array
    namespaces, the tree and linear models), no URL or glob (fsspec), no other step."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"k": [1, 1, 2], "t": [1, 2, 3]}), tmp_path / "in.parquet")
    (tmp_path / "p.yaml").write_text(
        "pipeline: p\nsteps:\n  - op: read_parquet\n    path: in.parquet\n"
        "  - op: deduplicate\n    by: [k]\n    order: t\n"
        "  - op: write_parquet\n    path: out\n")
    got = modules_after("from pipelines.runner import run; run('p.yaml', runs_dir='runs')",
                        cwd=tmp_path)
    assert pq.read_table(tmp_path / "out").num_rows == 2
    assert "operators.features.deduplicate" in got
    unused = {"lark", "array_api_compat.numpy", "fsspec", "dask", "pyspark", "mlflow",
              "operators.models.trees", "operators.models.logistic", "operators.models.mlp",
              "operators.features.aggregate", "operators.features.window"}
    assert not got & unused


def slow_import(module: str) -> str:
    """The start of a script in which ``module``'s first import takes 2 s more."""
    return f"""
import importlib.abc, json, pickle, sys, time

class Slow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            time.sleep(2.0)
        return None  # the usual finders import it

sys.meta_path.insert(0, Slow())
"""


SLOW_IMPORT = slow_import("array_api_compat.numpy") + """
from pipelines.runner import run
record = run("p.yaml", runs_dir="runs")
print(json.dumps({k: v.get("compute_seconds") for k, v in record["steps"].items()}))
"""


def test_an_array_namespace_s_first_import_is_no_step_s_work(tmp_path: Path) -> None:
    """The first partition a run computes imports the array namespace (NumPy's f2py under
    array_api_compat: tenths of a second), outside its step's clock: made to take 2 s
    here, it is in no step's task time (it was the first transform's, the largest share
    of a small run's work)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.0, 2.0, 4.0]}), tmp_path / "in.parquet")
    (tmp_path / "p.yaml").write_text(
        "pipeline: p\nsteps:\n  - op: read_parquet\n    path: in.parquet\n"
        "  - op: derive\n    columns: {y: 'x * 2'}\n"
        "  - op: standard_scale\n    columns: [x, y]\n"
        "  - op: write_parquet\n    path: out\n")
    out = subprocess.run([sys.executable, "-c", SLOW_IMPORT], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    seconds = json.loads(out.splitlines()[-1])
    assert set(seconds) == {"read_parquet", "derive", "standard_scale", "write_parquet"}
    assert sum(seconds.values()) < 2.0, seconds


WORKER_READ = slow_import("pyarrow.dataset") + """
from pipelines.engines.base import compute_partition
data, partition = pickle.loads(sys.stdin.buffer.read())
seconds = []
table = compute_partition(data, partition, lambda step, i, rows, s, *_: seconds.append(s))
print(json.dumps({"rows": table.num_rows, "seconds": seconds,
                  "imported": "pyarrow.dataset" in sys.modules}))
"""


def test_a_fresh_worker_s_first_read_imports_outside_the_step_s_clock(tmp_path: Path) -> None:
    """A partition read in a fresh worker process (Dask's, Spark's Python worker) imports
    pyarrow's dataset module (which imports pandas: tenths of a second) before the read's
    clock starts: made to take 2 s here, it is not the read step's task time (it was all
    of a small read's, 0.6 s against 0.007 s on the local engine)."""
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    from operators.io.parquet import ReadParquet
    from pipelines.engines.base import Dataset

    pq.write_table(pa.table({"x": [1.0, 2.0, 4.0]}), tmp_path / "in.parquet")
    source = ReadParquet(path=str(tmp_path / "in.parquet"))
    task = pickle.dumps((Dataset(source, "read"), source.partitions()[0]))
    out = subprocess.run([sys.executable, "-c", WORKER_READ], input=task, cwd=ROOT,
                         check=True, capture_output=True).stdout
    got = json.loads(out.decode().splitlines()[-1])
    assert got["rows"] == 3 and got["imported"], got
    (seconds,) = got["seconds"]
    assert seconds < 1.0, got
