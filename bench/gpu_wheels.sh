#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks into .whl/ at the repository root (git-ignored
# through .git/info/exclude), for bench/gpu_device.sh to install there. Run it here,
# where pip can reach the package index:
#
#     bash bench/gpu_wheels.sh
#
# The GPU machine (Python 3.12, x86-64, no network) already has numpy, pyarrow, pandas,
# scikit-learn, cupy-cuda13x, pytest, click, rich, pyyaml, fsspec, threadpoolctl,
# cloudpickle, toolz, msgpack, sortedcontainers, psutil, jinja2, urllib3, packaging.
# What sluice and its Dask engine need beyond those is below, one version each (two
# versions of one package stop the whole install), pinned to what this repository's
# virtualenv runs. --no-deps: every dependency is named here.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

WHEELS=(
  # sluice's own dependencies
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0  # pydantic 2.14 needs >= 4.16; the machine's may be older
  array-api-compat==1.16.0
  array-api-strict==2.6.1    # the tests' strict namespace
  lark==1.3.1
  datasketches==5.2.0
  # the Dask engine (dask[distributed]) and what it needs beyond the machine's packages
  dask==2026.8.0
  distributed==2026.8.0
  partd==1.4.2
  locket==1.0.0
  tblib==3.2.2
  zict==3.0.0
  tornado==6.6.1
)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
rm -f .whl/*.whl  # one version of each: a stale wheel would be a second one

"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_35_x86_64 -d .whl "${WHEELS[@]}"

count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels, got $count:" >&2
  ls .whl >&2
  exit 1
fi
du -sh .whl
ls .whl
