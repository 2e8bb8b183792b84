"""Benchmark sides for the multilayer perceptron: sluice's ``mlp`` against scikit-learn's
MLPClassifier on the same files, architecture, solver, epochs and cores.

Each side trains on the case's data, then scores a held-out set (100,000 further rows of
the same generator, made once by ``mlp_holdout``, untimed) and writes its accuracy and
its own training seconds to ``<scratch>/<case>_<side>.json``: the harness times the
whole process, the file says what part of it was training and how good the model is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

HIDDEN = [64, 32]
L2 = 1e-5
BATCH = 200
EPOCHS = 10  # adam: fixed epochs on both sides (n_iter_no_change cannot stop either)
LBFGS_ITERATIONS = 50
HOLDOUT_ROWS = 100_000
HOLDOUT_START = 1_000_000_000  # rows of the generator's stream no case reads


def mlp_holdout(data: Path, scratch: Path) -> None:
    """The held-out rows both sides are scored on (setup, untimed)."""
    import pyarrow.parquet as pq

    from pipelines.datagen import numeric_table

    pq.write_table(numeric_table(HOLDOUT_ROWS, start=HOLDOUT_START), scratch / "holdout.parquet")


def _holdout(scratch: Path) -> tuple[object, object]:
    """The held-out table and its labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(scratch / "holdout.parquet")
    return table, table.column("label").to_numpy()


def _record(scratch: Path, name: str, **values: object) -> None:
    (scratch / f"{name}.json").write_text(json.dumps(values, indent=1))


def _sluice(data: Path, scratch: Path, case: str, solver: dict[str, object]) -> None:
    import numpy as np

    from operators.arrays import get_namespace
    from pipelines.runner import run
    from pipelines.store import ModelStore

    models = scratch / f"{case}_models"
    shutil.rmtree(models, ignore_errors=True)
    params = {"label": "label", "hidden": HIDDEN, "l2": L2, **solver}
    step = "\n".join(f"    {key}: {json.dumps(value)}" for key, value in params.items())
    pipeline = scratch / f"{case}.yaml"
    pipeline.write_text(f"pipeline: {case}\nsteps:\n  - op: read_parquet\n    path: {data}\n"
                        f"  - id: fit\n    op: mlp\n{step}\n  - op: save_model\n    name: mlp\n")
    start = time.perf_counter()
    record = run(pipeline, models=str(models), runs_dir=str(scratch / "runs"))
    seconds = time.perf_counter() - start
    model = ModelStore(str(models)).load("mlp").chain.steps[-1]
    table, y = _holdout(scratch)
    predicted = model.transform(table, get_namespace("numpy")).column("prediction").to_numpy()
    metrics = record["metrics"].get("fit") or {}
    _record(scratch, f"{case}_sluice_local", accuracy=float(np.mean(predicted == y)),
            train_seconds=seconds, iterations=metrics.get("iterations"),
            loss=metrics.get("loss"), passes=metrics.get("passes"))


def _sklearn(data: Path, scratch: Path, case: str, solver: str, max_iter: int) -> None:
    import warnings

    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    table = pq.read_table(data)
    features = [c for c in table.column_names if c != "label"]
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    y = table.column("label").to_numpy()
    # the same objective: alpha = l2 * n for lbfgs, l2 * batch_size for adam's per-batch term
    alpha = L2 * (len(y) if solver == "lbfgs" else BATCH)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget, by design
        model = MLPClassifier(hidden_layer_sizes=tuple(HIDDEN), solver=solver, alpha=alpha,
                              batch_size=BATCH, max_iter=max_iter, random_state=0).fit(x, y)
    seconds = time.perf_counter() - start
    test, y_test = _holdout(scratch)
    x_test = np.column_stack([test.column(f).to_numpy() for f in features])
    _record(scratch, f"{case}_sklearn_{solver}",
            accuracy=float(np.mean(model.predict(x_test) == y_test)), train_seconds=seconds,
            iterations=int(model.n_iter_), loss=float(model.loss_), training_rows=len(y))


def train_mlp_sluice_local(data: Path, scratch: Path) -> None:
    """sluice mlp, adam: mini-batch steps in each partition, averaged once per epoch."""
    _sluice(data, scratch, "train_mlp",
            {"solver": "adam", "batch_size": BATCH, "max_iter": EPOCHS})


def train_mlp_sklearn_adam(data: Path, scratch: Path) -> None:
    """scikit-learn MLPClassifier, adam, the same epochs and batch size."""
    _sklearn(data, scratch, "train_mlp", "adam", EPOCHS)


def train_mlp_lbfgs_sluice_local(data: Path, scratch: Path) -> None:
    """sluice mlp, full-batch L-BFGS (one pass per evaluation), a fixed iteration budget."""
    _sluice(data, scratch, "train_mlp_lbfgs", {"solver": "lbfgs", "max_iter": LBFGS_ITERATIONS})


def train_mlp_lbfgs_sklearn_lbfgs(data: Path, scratch: Path) -> None:
    """scikit-learn MLPClassifier, L-BFGS, the same iteration budget."""
    _sklearn(data, scratch, "train_mlp_lbfgs", "lbfgs", LBFGS_ITERATIONS)
