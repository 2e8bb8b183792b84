#!/usr/bin/env bash
# Everything sluice checks on a real NVIDIA GPU, in one call of the device tool:
# the GPU tests (tests/gpu, marker gpu) and the CPU-vs-GPU benchmark (bench/gpu.py).
#
# Before (here, with network; once per checkout):   bash bench/gpu_wheels.sh
# Then one call of the device tool:
#     run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=560)
# What comes back under files_at: env.txt, pytest.log, pytest.xml, bench.log, gpu.json
# (copy gpu.json to bench/results/gpu.json to keep it). Usually about 5 minutes; at most
# about 8 (each part has its own time limit, below).
#
# A shorter rerun (the machine stays warm for 30 s after a call), by environment:
#     SKIP_TESTS=1 | SKIP_BENCH=1                 leave a part out
#     TEST_ARGS='-k "churn or memory"'            pass pytest more arguments
#     BENCH_ROWS=1000000  BENCH_ARGS='--cases score,train_mlp'
# e.g. run(command="SKIP_BENCH=1 TEST_ARGS='-k memory' bash bench/gpu_device.sh", ...)
#
# The machine: Python 3.12 (python3), CUDA 13, CuPy, numpy, pyarrow, pandas, scikit-learn,
# pytest and pytest-timeout installed; no network. The wheels of .whl/ (sluice's other
# dependencies, Dask) are installed into /tmp/site; sluice itself runs from the working
# tree on PYTHONPATH, with a minimal dist-info so that importlib.metadata knows its
# version (the Dask engine checks that its workers run the driver's version).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}  # the device tool sets OUT; these files come back
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset SLUICE_GPU_STANDIN SLUICE_GPU_STANDIN_MEMORY  # the real GPU, not the stand-in
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-210}
BENCH_ROWS=${BENCH_ROWS:-1000000,10000000}
started=$(date +%s)
say() { echo "== gpu_device [$(( $(date +%s) - started )) s]: $*"; }

# --------------------------------------------------------------------------- environment
say "installing $(ls .whl/*.whl 2>/dev/null | wc -l) wheels into /tmp/site"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl; then
  echo "gpu_device: the wheel install failed (carry [\".whl\"]; bench/gpu_wheels.sh makes it)"
  exit 3
fi
version=$(python3 -c 'import tomllib
print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
mkdir -p "/tmp/site/sluice-$version.dist-info"
printf 'Metadata-Version: 2.1\nName: sluice\nVersion: %s\n' "$version" \
  > "/tmp/site/sluice-$version.dist-info/METADATA"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi
  python3 - <<'EOF'
import importlib.metadata as md
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ("sluice", "cupy-cuda13x", "numpy", "pyarrow", "pydantic", "array-api-compat",
             "array-api-strict", "dask", "distributed", "datasketches", "lark",
             "scikit-learn", "pytest", "pytest-timeout", "typing-extensions"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
from pipelines.device import gpu_problem

print("gpu_problem():", gpu_problem())
import cupy

print("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "| driver",
      cupy.cuda.runtime.driverGetVersion(), "| devices", cupy.cuda.runtime.getDeviceCount())
print("a kernel on the GPU:", float((cupy.arange(10.0) ** 2).sum()))
EOF
} 2>&1 | tee "$OUT/env.txt"
env_rc=${PIPESTATUS[0]}
[ "$env_rc" -eq 0 ] || say "the environment check failed (rc $env_rc); going on"

# --------------------------------------------------------------------------- tests
test_rc=skipped
if [ -z "${SKIP_TESTS:-}" ]; then
  say "python3 -m pytest -m gpu tests/gpu (at most $TEST_TIMEOUT s)"
  eval "timeout -k 10 $TEST_TIMEOUT python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider \
    --durations=15 --junitxml=\"$OUT/pytest.xml\" ${TEST_ARGS:-}" 2>&1 | tee "$OUT/pytest.log"
  test_rc=${PIPESTATUS[0]}
fi

# --------------------------------------------------------------------------- benchmark
bench_rc=skipped
if [ -z "${SKIP_BENCH:-}" ]; then
  say "python3 -m bench.gpu --rows $BENCH_ROWS (at most $BENCH_TIMEOUT s)"
  eval "timeout -k 10 $BENCH_TIMEOUT python3 -m bench.gpu --rows $BENCH_ROWS \
    --out \"$OUT/gpu.json\" --max-side-s 20 ${BENCH_ARGS:-}" 2>&1 | tee "$OUT/bench.log"
  bench_rc=${PIPESTATUS[0]}
fi

say "done: tests rc=$test_rc (124: timed out), bench rc=$bench_rc"
for rc in "$test_rc" "$bench_rc"; do
  if [ "$rc" != skipped ] && [ "$rc" -ne 0 ]; then exit 1; fi
done
exit 0
