"""Where steps run: per-step device and dtype, precedence, engine profiles, and what
happens when a partition does not fit in device memory.

The GPU is array_api_strict's non-default device here (``SLUICE_GPU_STANDIN``): every
kernel runs through the same placement code as on CuPy, and a kernel that slipped
into NumPy, or made an array on the host, fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SLUICE, refused, sluice_in_process, write_pipeline

from operators.arrays import STANDIN_ENV, STANDIN_MEMORY_ENV
from operators.base import SluiceError
from pipelines.device import gpu_problem
from pipelines.engines.local import LocalEngine
from pipelines.runner import placements, plan_file, run
from pipelines.store import ModelStore

ROWS = 4000
FEATURES = ["a", "b", "c", "d"]


@pytest.fixture
def numbers(workdir: Path) -> Path:
    """One Parquet file, one partition: 4 float features and a binary label."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(ROWS, 4)) * [1.0, 3.0, 0.5, 10.0] + [0, 5, -1, 100]
    logit = x[:, 0] - 0.5 * x[:, 1] + 2 * x[:, 2] + 0.01 * x[:, 3] - 1.5
    y = (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    table = pa.table({**{n: x[:, j] for j, n in enumerate(FEATURES)}, "y": y})
    (workdir / "data").mkdir(exist_ok=True)
    pq.write_table(table, workdir / "data" / "numbers.parquet")
    return workdir / "data" / "numbers.parquet"


TRAIN = """
    pipeline: placed
    {top}
    steps:
      - op: read_parquet
        path: data/numbers.parquet
      - op: standard_scale
        columns: [a, b, c, d]
        {scale}
      - id: model
        op: logistic_regression
        features: [a, b, c, d]
        label: y
        {model}
      - op: save_model
        name: placed
    """


def pipeline(workdir: Path, top: str = "", scale: str = "", model: str = "",
             name: str = "pipeline.yaml") -> Path:
    text = TRAIN.format(top=top.replace("\n", "\n    "), scale=scale.replace("\n", "\n        "),
                        model=model.replace("\n", "\n        "))
    return write_pipeline(workdir, text, name)


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def model_arrays(models: str) -> dict[str, np.ndarray]:
    chain = ModelStore(models).load("placed").chain
    out: dict[str, np.ndarray] = {}
    for i, step in enumerate(chain.steps):
        for key, value in step.state()[1].items():
            out[f"{i}.{key}"] = np.asarray(value)
    return out


def assert_same_model(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                      rtol: float = 1e-9, atol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STANDIN_ENV, "array_api_strict")
    monkeypatch.delenv(STANDIN_MEMORY_ENV, raising=False)


# --------------------------------------------------------------------------- per step


def test_one_step_on_the_gpu_the_others_on_the_cpu(numbers: Path, workdir: Path,
                                                   standin: None) -> None:
    path = pipeline(workdir, model="device: gpu")
    record = run(path, models="gpu-models")
    steps = record["steps"]
    assert steps["model"]["device"] == "gpu:standin"
    assert steps["standard_scale"]["device"] == "cpu"
    assert record["device"] == "cpu, gpu"
    cpu = run(pipeline(workdir, name="cpu.yaml"), models="cpu-models")
    assert cpu["steps"]["model"]["device"] == "cpu" and cpu["device"] == "cpu"
    assert_same_model(model_arrays("gpu-models"), model_arrays("cpu-models"))


def test_the_whole_pipeline_on_the_gpu_gives_the_cpu_model(numbers: Path, workdir: Path,
                                                           standin: None) -> None:
    record = run(pipeline(workdir), models="gpu-models", device="gpu")
    assert {record["steps"][s]["device"] for s in ("standard_scale", "model")} == {
        "gpu:standin"}
    run(pipeline(workdir), models="cpu-models", device="cpu")
    assert_same_model(model_arrays("gpu-models"), model_arrays("cpu-models"))


def test_precedence_step_then_flag_then_pipeline_then_profile(numbers: Path, workdir: Path,
                                                               standin: None) -> None:
    profile = workdir / "conf" / "engines" / "mine.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text("engine: local\ndevice: gpu\ndtype: float32\n")
    engine = LocalEngine(profile=str(profile))
    plain = plan_file(pipeline(workdir))
    assert {p.device for p in placements(plain, engine).values()} == {"gpu"}
    assert {p.dtype for p in placements(plain, engine).values()} == {"float32"}
    top = plan_file(pipeline(workdir, top="device: cpu\ndtype: float64"))
    assert {p.device for p in placements(top, engine).values()} == {"cpu"}
    assert {p.dtype for p in placements(top, engine).values()} == {"float64"}
    assert {p.device for p in placements(top, engine, device="gpu").values()} == {"gpu"}
    assert {p.dtype for p in placements(top, engine, dtype="float32").values()} == {"float32"}
    pinned = plan_file(pipeline(workdir, top="device: cpu", model="device: gpu\ndtype: float32"))
    chosen = placements(pinned, engine, device="cpu", dtype="float64")
    assert (chosen["model"].device, chosen["model"].dtype) == ("gpu", "float32")
    assert (chosen["standard_scale"].device, chosen["standard_scale"].dtype) == (
        "cpu", "float64")


@pytest.mark.skipif(gpu_problem() is None and not os.environ.get(STANDIN_ENV),
                    reason="a GPU is usable here")
def test_a_step_that_needs_a_missing_gpu_is_named_before_data_moves(
        numbers: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STANDIN_ENV, raising=False)
    path = pipeline(workdir, model="device: gpu")
    with pytest.raises(SluiceError) as error:
        run(path, models="models")
    message = str(error.value)
    line = line_of(path, "device: gpu")
    assert f"{path}:{line}: step 'model' asks for device gpu, but {gpu_problem()}" in message
    assert not (workdir / "models").exists() and refused(workdir / "runs", "placement")
    notes: list[str] = []
    record = run(pipeline(workdir, model="device: auto"), models="models",
                 notify=notes.append)
    assert notes == [f"device auto: {gpu_problem()}; running on the CPU"]
    assert record["steps"]["model"]["device"] == "cpu"


def test_placement_keys_are_validated_with_their_line(numbers: Path, workdir: Path) -> None:
    path = pipeline(workdir, top="dtype: float16", model="device: tpu")
    problems = sorted(plan_file(path).problems, key=lambda p: p.line)
    assert [(p.line, p.message) for p in problems] == [
        (2, "`dtype: float16` must be float64 or float32"),
        (line_of(path, "device: tpu"), "`device: tpu` must be cpu, gpu or auto")]
    assert problems[1].step == "model"


def test_float32_is_recorded_and_close_to_float64(numbers: Path, workdir: Path,
                                                  standin: None) -> None:
    record = run(pipeline(workdir, top="dtype: float32"), models="f32", device="gpu")
    assert record["steps"]["model"]["dtype"] == "float32"
    run(pipeline(workdir), models="f64", device="gpu")
    # the model's training means are of standardized columns, 0 up to the rounding of
    # their values: in float32 that is ~1e-7 of the unit scale, not 1e-12
    assert_same_model(model_arrays("f32"), model_arrays("f64"), rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- memory


def _matrix_bytes() -> int:
    """The logistic fit's partition matrix: features, label and weight in float64."""
    return ROWS * (len(FEATURES) + 2) * 8


def test_a_partition_too_big_for_the_device_is_split_and_recorded(
        numbers: Path, workdir: Path, standin: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # a quarter of the matrix fits, a half does not: pieces of 1/4
    monkeypatch.setenv(STANDIN_MEMORY_ENV, str(_matrix_bytes() // 3))
    record = run(pipeline(workdir), models="split", device="gpu")
    model = record["steps"]["model"]
    assert model["device"] == "gpu:standin"
    assert model["device_splits"] == [{"partition": 0, "pieces": 4}]
    assert "device_fallbacks" not in model
    monkeypatch.delenv(STANDIN_MEMORY_ENV)
    run(pipeline(workdir), models="whole", device="cpu")
    assert_same_model(model_arrays("split"), model_arrays("whole"), rtol=1e-9)


def test_a_partition_that_never_fits_runs_on_the_cpu_and_is_recorded(
        numbers: Path, workdir: Path, standin: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STANDIN_MEMORY_ENV, "64")
    record = run(pipeline(workdir), models="fallback", device="gpu")
    for step in ("standard_scale", "model"):
        entry = record["steps"][step]
        # the passes that move no rows (the model's first: label counts) fit anywhere
        assert "cpu" in entry["device"].split(", ")
        (fallback,) = entry["device_fallbacks"]
        assert fallback["partition"] == 0 and fallback["device"] == "cpu"
        assert fallback["reason"].startswith("out of device memory in pieces of 1/16: ")
    monkeypatch.delenv(STANDIN_MEMORY_ENV)
    run(pipeline(workdir), models="whole", device="cpu")
    assert_same_model(model_arrays("fallback"), model_arrays("whole"), rtol=0)


def test_a_bug_on_the_device_is_not_taken_for_out_of_memory(
        numbers: Path, workdir: Path, standin: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.features import scale

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a kernel bug")

    monkeypatch.setattr(scale, "table_to_matrix", broken)
    with pytest.raises(Exception, match="a kernel bug"):
        run(pipeline(workdir), models="m", device="gpu")


# --------------------------------------------------------------------------- profiles


def sluice(*args: str, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SLUICE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CI": "1", **(env or {})})


def test_engine_gpu_reads_the_gpu_profile(numbers: Path, workdir: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    (workdir / "conf" / "engines").mkdir(parents=True)
    text = (root / "conf" / "engines" / "gpu.yaml").read_text()
    (workdir / "conf" / "engines" / "gpu.yaml").write_text(text)
    path = pipeline(workdir)
    result = sluice("run", str(path), "--engine", "gpu", cwd=workdir,
                    env={STANDIN_ENV: "array_api_strict"})
    assert result.returncode == 0, result.stderr
    runs = sorted((workdir / "runs" / "placed").glob("*.json"))
    import json

    record = json.loads(runs[-1].read_text())
    assert record["engine"]["name"] == "local" and record["engine"]["workers"] == 2
    assert record["steps"]["model"]["device"] == "gpu:standin"
    if gpu_problem() is not None:
        env = {k: v for k, v in os.environ.items() if k != STANDIN_ENV}
        result = subprocess.run([SLUICE, "run", str(path), "--engine", "gpu"], cwd=workdir,
                                capture_output=True, text=True, timeout=300,
                                env={**env, "CI": "1"})
        assert result.returncode == 1
        assert result.stderr.startswith("error: device gpu was asked for, but ")


def test_engine_names_and_profiles_are_checked(numbers: Path, workdir: Path) -> None:
    path = pipeline(workdir)
    result = sluice_in_process("run", str(path), "--engine", "flink", cwd=workdir,
                               env={"CI": "1"})
    assert result.returncode == 2
    assert ("unknown engine 'flink': not local, dask, spark, and no conf/engines/flink.yaml "
            f"in {workdir} (use --engine local, dask or spark, or a profile in conf/engines/ "
            "of the working directory (copy the sluice repository's))") in result.stderr
    assert "did you mean" not in result.stderr  # nothing near
    typo = sluice_in_process("run", str(path), "--engine", "sparkk", cwd=workdir,
                             env={"CI": "1"})
    assert typo.returncode == 2 and (f"no conf/engines/sparkk.yaml in {workdir}; did you "
                                     "mean 'spark'?") in typo.stderr
    # the repository's GPU profiles, asked for from another folder: --device says it alone
    gpu = sluice_in_process("run", str(path), "--engine", "gpu", cwd=workdir, env={"CI": "1"})
    assert gpu.returncode == 2 and (f"no conf/engines/gpu.yaml in {workdir} (use --engine "
                                    "local, dask or spark, or a profile in conf/engines/ of "
                                    "the working directory (copy the sluice repository's); "
                                    "--device gpu alone runs the steps on a GPU)"
                                    ) in gpu.stderr, gpu.stderr
    bad = workdir / "odd.yaml"
    bad.write_text("engine: ray\n")
    result = sluice_in_process("run", str(path), "--engine", str(bad), cwd=workdir,
                               env={"CI": "1"})
    assert result.returncode == 2 and (f"{bad}:1: engine profile: `engine:` must be one of "
                                       "local, dask, spark, not 'ray'") in result.stderr
    # a profile's problems are at their file:line, as a pipeline's are
    bad.write_text("engine: local\ndevice: gpu\nworkrs: 3\n")
    result = sluice_in_process("run", str(path), "--engine", str(bad), cwd=workdir,
                               env={"CI": "1"})
    assert result.returncode == 1
    assert (f"error: {bad}:3: local profile: 'workrs': unknown key; did you mean "
            "'workers'?") in result.stderr, result.stderr
    for text, line, said in [
            ("engine: local\n\nworkers: 0\n", 3, "'workers': Input should be greater than 0"),
            ("engine: local\nworkers: [2\n", 3, "not valid YAML: expected ',' or ']'"),
            ("engine: local\nworkers: 2\nworkers: 3\n", 3,
             "key 'workers' appears twice (first on line 2)")]:
        bad.write_text(text)
        result = sluice_in_process("run", str(path), "--engine", str(bad), cwd=workdir,
                                   env={"CI": "1"})
        assert result.returncode in (1, 2) and f"{bad}:{line}: " in result.stderr, (
            result.stderr)
        assert said in result.stderr and "Traceback" not in result.stderr


def test_steps_without_numeric_kernels_stay_on_the_host(numbers: Path, workdir: Path,
                                                        standin: None) -> None:
    path = write_pipeline(workdir, """
        pipeline: host
        steps:
          - op: read_parquet
            path: data/numbers.parquet
          - op: select
            columns: [a, b, y]
          - op: derive
            columns: {ab: "a * b"}
          - op: standard_scale
            columns: [a, b, ab]
        """)
    record = run(path, device="gpu")
    steps = record["steps"]
    assert steps["select"]["device"] == steps["derive"]["device"] == "cpu"
    assert steps["standard_scale"]["device"] == "gpu:standin"


def test_the_summary_says_where_steps_ran_and_what_did_not_fit(
        numbers: Path, workdir: Path, standin: None) -> None:
    path = pipeline(workdir)
    env = {STANDIN_MEMORY_ENV: str(_matrix_bytes() // 3)}
    result = sluice("run", str(path), "--device", "gpu", cwd=workdir,
                    env={STANDIN_ENV: "array_api_strict", **env})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    model = next(line for line in lines if line.lstrip().startswith("model "))
    assert model.endswith("gpu:standin")
    assert "  step 'model', partition 0: split in 4 pieces to fit in device memory" in lines


def test_a_gpu_transform_no_step_reads_ran_on_the_gpu_only(numbers: Path, workdir: Path,
                                                           standin: None) -> None:
    """A transform no step reads is counted by a CPU pass of its own (the run's work):
    the step's device is where its transform ran, not 'cpu, gpu' for that count."""
    record = run(write_pipeline(workdir, """
        pipeline: unread
        steps:
          - id: events
            op: read_parquet
            path: data/numbers.parquet
          - id: unit
            op: normalize
            columns: [a, b, c, d]
            device: gpu
        """))
    unit = record["steps"]["unit"]
    assert (unit["device"], unit["rows"], unit["rows_in"]) == ("gpu:standin", ROWS, ROWS)
    assert unit["compute_seconds"] > 0
