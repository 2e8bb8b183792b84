"""Benchmark sides for ``calibrate``: sluice against scikit-learn's calibrators.

Scored rows as a model writes them: an id, an amount, a binary label and an overconfident
``probability`` (the true chance pushed toward 0 and 1, as balanced class weights or
boosting leave it), every value distinct: the worst case for the isotonic fit's points.
Both sides read the same Parquet files, fit the calibration on them, write the rows with
the calibrated probability, and the check compares the two after the runs. sluice keeps
every distinct value (``max_points`` above the rows), as scikit-learn does; its default
(a million) would put 2M distinct values on its grid:

* ``calibrate``: ``method: isotonic`` on the local engine against
  ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y).predict(p)``;
* ``calibrate_sigmoid``: ``method: sigmoid`` against scikit-learn's Platt scaling
  (``_SigmoidCalibration``, what ``CalibratedClassifierCV(method="sigmoid")`` fits).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.category_cases import BLOCK, write_blocks

SEED = 47


def _block(block: int) -> pa.Table:
    """Rows [block * BLOCK, (block + 1) * BLOCK), from the block's own seed."""
    rng = np.random.default_rng([SEED, block])
    logit = rng.normal(-0.5, 1.5, BLOCK)
    label = rng.random(BLOCK) < 1 / (1 + np.exp(-logit))
    scored = 1 / (1 + np.exp(-(2.5 * logit + 0.8)))  # overconfident, too high
    return pa.table({"id": pa.array(np.arange(block * BLOCK, (block + 1) * BLOCK)),
                     "amount": pa.array(rng.lognormal(3, 1, BLOCK)),
                     "label": pa.array(label), "probability": pa.array(scored)})


def scored(out: Path, rows: int, files: int) -> None:
    write_blocks(out, rows, files, _block)


def _sluice(data: Path, scratch: Path, method: str) -> None:
    from pipelines.runner import run

    name = f"calibrate_{method}"
    path = scratch / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: {name}
        steps:
          - op: read_parquet
            path: {data}
          - op: calibrate
            label: label
            method: {method}
            max_points: 100000000   # every distinct value, as scikit-learn (no grid)
          - op: write_parquet
            path: {scratch / f"{name}_sluice"}
            mode: overwrite
        """))
    run(path, models=str(scratch / "calibrate_models"), runs_dir=str(scratch / "runs"))


def _reference(data: Path, scratch: Path, method: str) -> None:
    table = pq.read_table(data)
    p = table.column("probability").to_numpy()
    y = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        calibrated = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(
            p, y).predict(p)
    else:
        from sklearn.calibration import _SigmoidCalibration

        calibrated = _SigmoidCalibration().fit(p, y).predict(p)
    table = table.set_column(table.schema.get_field_index("probability"), "probability",
                             pa.array(calibrated))
    out = scratch / f"calibrate_{method}_reference"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-0.parquet")


def calibrate_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "isotonic")


def calibrate_sklearn(data: Path, scratch: Path) -> None:
    _reference(data, scratch, "isotonic")


def calibrate_sigmoid_sluice_local(data: Path, scratch: Path) -> None:
    _sluice(data, scratch, "sigmoid")


def calibrate_sigmoid_sklearn(data: Path, scratch: Path) -> None:
    _reference(data, scratch, "sigmoid")


def _check(scratch: Path, method: str, tolerance: float) -> None:
    ours = pq.read_table(scratch / f"calibrate_{method}_sluice").sort_by("id")
    theirs = pq.read_table(scratch / f"calibrate_{method}_reference").sort_by("id")
    if ours.num_rows != theirs.num_rows:
        raise SystemExit(f"calibrate ({method}): the sides wrote different numbers of rows")
    gap = float(np.max(np.abs(ours.column("probability").to_numpy()
                              - theirs.column("probability").to_numpy())))
    if gap > tolerance:
        raise SystemExit(f"calibrate ({method}): probabilities differ by {gap:.3g}")
    y = ours.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    brier = float(np.mean((ours.column("probability").to_numpy() - y) ** 2))
    print(f"  calibrate ({method}) check: {ours.num_rows} rows, largest gap to "
          f"scikit-learn's {gap:.2g}; Brier score {brier:.5f}")


def check_calibrate(data: Path, scratch: Path) -> None:
    _check(scratch, "isotonic", 1e-12)


def check_calibrate_sigmoid(data: Path, scratch: Path) -> None:
    # scikit-learn's L-BFGS stops ~1e-9 short of the minimum sluice's Newton reaches
    _check(scratch, "sigmoid", 1e-6)
