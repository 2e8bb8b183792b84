"""Benchmark sides for trees and neural networks: sluice (local engine; the Spark engine for
``train_boosted_spark``) against Spark MLlib on the same Parquet files and the same cores
(a ``local[2]`` session on a 2-core machine, ``local[N]`` for N = ``os.cpu_count()`` in
general; sluice's local engine uses as many workers).

* ``train_forest_mllib``: ``random_forest`` (50 trees, depth 10, 255 bins, sqrt features,
  Poisson(1) bootstrap: ``bench/tree_cases.py``'s train_forest side) against MLlib's
  ``RandomForestClassifier`` with the same settings (numTrees 50, maxDepth 10, maxBins
  255, featureSubsetStrategy sqrt; MLlib's bootstrap is Poisson(1) too). Both train on the
  rows ``validation_fraction: 0.1`` leaves for training and score the 10% it holds out (a
  hash of each row's content): the setup ``forest_split`` writes the same files with a
  boolean ``held`` column (untimed) that the MLlib side filters on.
* ``train_mlp_mllib``: ``mlp`` hidden [64, 32], full-batch L-BFGS, 50 iterations
  (``bench/mlp_cases.py``'s lbfgs side) against MLlib's ``MultilayerPerceptronClassifier``
  (layers [20, 64, 32, 2], solver l-bfgs, maxIter 50). MLlib's network has sigmoid hidden
  layers and no regularisation, so the sluice side runs ``activation: sigmoid``, ``l2: 0``:
  the same model and objective. ``tol`` is tiny on both sides so that the iteration budget,
  not a tolerance, ends training. Both score the 100,000 held-out rows ``mlp_holdout``
  writes (setup, untimed).
* ``train_boosted_spark``: ``gradient_boosted_trees`` on the **Spark engine** (``run(...,
  engine="spark")``: the session ``conf/engines/spark.yaml`` makes, ``local[*]`` on
  127.0.0.1, ``cache_fits: auto``, so every pass re-reads the local Parquet files)
  against MLlib's ``GBTClassifier`` in a session made the same way (20 rounds, depth 4,
  learning rate 0.1, 255 bins, at least 20 rows a leaf: ``maxIter`` 20, ``maxDepth`` 4,
  ``stepSize`` 0.1, ``maxBins`` 255, ``minInstancesPerNode`` 20, ``subsamplingRate`` 1,
  every feature, no validation column). The held-out rows are ``train_forest_mllib``'s
  (setup ``forest_split``). The models are not the same: sluice takes Newton steps on the
  log-loss (a leaf is ``-rate * G / H``, scores start at the log-odds); MLlib fits
  regression trees (variance) to the first-order residuals of ``2 log(1 + exp(-2yF))``
  on labels +-1, a leaf is their mean, and its first tree fits the labels at weight 1.
  Both do the same work per round (one tree, one pass over the rows per level), which is
  what the case times. The sluice side also records its number of passes.

Time: the harness times each side's whole process. For MLlib that includes starting the
Spark session (the JVM, about 5-10 s), because a Spark job cannot run without it; it is
part of what training with MLlib costs on one machine. For a comparison without start-up,
each side also writes ``<scratch>/<case>_<side>.json`` with ``fit_seconds``: for sluice the
fit step's wall time in the run record (reading the files included, since reading is
lazy), for MLlib the ``Pipeline.fit`` call (VectorAssembler + the model, reading the files
included), plus ``accuracy`` on the held-out rows, and for MLlib ``session_seconds``.
Each side prints its accuracy and fit seconds too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.mlp_cases import HIDDEN, LBFGS_ITERATIONS, _record, _sluice
from bench.tree_cases import FOREST, HOLDOUT, SEED, _run_sluice

BOOSTED_SPARK = {"n_trees": 20, "max_depth": 4, "learning_rate": 0.1, "min_samples_leaf": 20,
                 "max_bins": 255}

MASTER = f"local[{os.cpu_count() or 1}]"  # the same cores as sluice's local engine
SPLIT = "forest_mllib_split"
MLP_SOLVER = {"solver": "lbfgs", "max_iter": LBFGS_ITERATIONS, "activation": "sigmoid",
              "l2": 0.0, "tol": 1e-12}


def _session(master: str = MASTER) -> tuple[Any, float]:
    """A Spark session as the Spark engine makes it (profile included) and its start-up
    seconds."""
    from pipelines.engines.spark import SparkEngine

    start = time.perf_counter()
    engine = SparkEngine(master=master)
    engine.start()
    return engine, time.perf_counter() - start


def _fit_seconds(scratch: Path, pipeline: str, step: str) -> tuple[float, float]:
    """(fit step seconds, whole run seconds) from the one run record of ``pipeline``."""
    [path] = (scratch / "runs" / pipeline).glob("*.json")
    record = json.loads(path.read_text())
    return record["steps"][step]["wall_seconds"], record["seconds"]


def forest_split(data: Path, scratch: Path) -> None:
    """Setup (untimed): the case's files with a ``held`` column, True for the rows sluice
    holds out (the same hash of the same columns), file by file and in the same row
    groups, so that MLlib reads the same layout."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from operators.models.common import holdout_mask

    out = scratch / SPLIT
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, fragment in enumerate(ds.dataset(data, format="parquet").get_fragments()):
        table = fragment.to_table()
        held = holdout_mask(table, HOLDOUT, SEED)
        pq.write_table(table.append_column("held", pa.array(held)),
                       out / f"part-{i:05d}.parquet", row_group_size=250_000)


def train_forest_mllib_sluice_local(data: Path, scratch: Path) -> None:
    name = "train_forest_mllib"
    shutil.rmtree(scratch / "runs" / name, ignore_errors=True)
    _run_sluice(data, scratch, name, "random_forest", FOREST)
    fit_seconds, run_seconds = _fit_seconds(scratch, name, "model")
    [path] = (scratch / "runs" / name).glob("*.json")
    metrics = json.loads(path.read_text())["metrics"]["model"]
    _record(scratch, f"{name}_sluice_local", accuracy=metrics["validation"]["accuracy"],
            fit_seconds=fit_seconds, run_seconds=run_seconds, nodes=metrics["nodes"],
            passes=metrics["passes"])
    print(f"  {name} sluice: fit {fit_seconds:.2f} s")


def _held_out_fit(scratch: Path, case: str, classifier: Any, master: str = MASTER,
                  **extra: Any) -> None:
    """MLlib's side of a tree case: ``classifier`` after a VectorAssembler, fitted on the
    rows sluice trains on (the split's ``held`` false), scored on the rows it holds out;
    ``extra``: more fields of the record, each a function of the fitted model."""
    from pyspark.ml import Pipeline
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    engine, session_seconds = _session(master)
    try:
        frame = engine.spark.read.parquet(str(scratch / SPLIT))
        features = [c for c in frame.columns if c not in ("label", "held")]
        start = time.perf_counter()
        model = Pipeline(stages=[VectorAssembler(inputCols=features, outputCol="features"),
                                 classifier(labelCol="label")]).fit(frame.filter(~F.col("held")))
        fit_seconds = time.perf_counter() - start
        held = model.transform(frame.filter(F.col("held")))
        accuracy = MulticlassClassificationEvaluator(
            labelCol="label", metricName="accuracy").evaluate(held)
        fitted = model.stages[-1]
        _record(scratch, f"{case}_mllib", accuracy=accuracy, fit_seconds=fit_seconds,
                session_seconds=session_seconds, master=engine.spark.sparkContext.master,
                **{key: value(fitted) for key, value in extra.items()})
        print(f"  {case} mllib: held-out accuracy {accuracy:.4f}, "
              f"fit {fit_seconds:.2f} s, session start {session_seconds:.2f} s")
    finally:
        engine.close()


def train_forest_mllib_mllib(data: Path, scratch: Path) -> None:
    from functools import partial

    from pyspark.ml.classification import RandomForestClassifier

    forest = partial(RandomForestClassifier, numTrees=FOREST["n_trees"],
                     maxDepth=FOREST["max_depth"], maxBins=255, featureSubsetStrategy="sqrt",
                     seed=SEED)
    _held_out_fit(scratch, "train_forest_mllib", forest, nodes=lambda m: m.totalNumNodes)


def train_mlp_mllib_sluice_local(data: Path, scratch: Path) -> None:
    name = "train_mlp_mllib"
    shutil.rmtree(scratch / "runs" / name, ignore_errors=True)
    _sluice(data, scratch, name, MLP_SOLVER)
    fit_seconds, _ = _fit_seconds(scratch, name, "fit")
    result = scratch / f"{name}_sluice_local.json"
    values = {**json.loads(result.read_text()), "fit_seconds": fit_seconds}
    _record(scratch, f"{name}_sluice_local", **values)
    print(f"  {name} sluice: held-out accuracy {values['accuracy']:.4f}, "
          f"fit {fit_seconds:.2f} s, {values['iterations']} iterations")


def train_mlp_mllib_mllib(data: Path, scratch: Path) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler

    engine, session_seconds = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        features = [c for c in frame.columns if c != "label"]
        mlp = MultilayerPerceptronClassifier(
            labelCol="label", layers=[len(features), *HIDDEN, 2], solver="l-bfgs",
            maxIter=LBFGS_ITERATIONS, tol=1e-12, seed=SEED)
        start = time.perf_counter()
        model = Pipeline(stages=[VectorAssembler(inputCols=features, outputCol="features"),
                                 mlp]).fit(frame)
        fit_seconds = time.perf_counter() - start
        # the same held-out rows as the sluice side, scored by MLlib (row order aside)
        test = engine.spark.read.parquet(str(scratch / "holdout.parquet"))
        accuracy = MulticlassClassificationEvaluator(
            labelCol="label", metricName="accuracy").evaluate(model.transform(test))
        summary = model.stages[-1].summary()  # a method on this model, not a property
        _record(scratch, "train_mlp_mllib_mllib", accuracy=accuracy, fit_seconds=fit_seconds,
                session_seconds=session_seconds, iterations=summary.totalIterations,
                loss=float(summary.objectiveHistory[-1]))
        print(f"  train_mlp_mllib mllib: held-out accuracy {accuracy:.4f}, "
              f"fit {fit_seconds:.2f} s, session start {session_seconds:.2f} s, "
              f"{summary.totalIterations} iterations")
    finally:
        engine.close()


def train_boosted_spark_sluice_spark(data: Path, scratch: Path) -> None:
    """gradient_boosted_trees on the Spark engine, holding out ``HOLDOUT`` of the rows."""
    from pipelines.runner import run

    name = "train_boosted_spark"
    shutil.rmtree(scratch / "runs" / name, ignore_errors=True)
    shutil.rmtree(scratch / f"{name}_models", ignore_errors=True)
    settings = "".join(f"\n    {k}: {v}" for k, v in BOOSTED_SPARK.items())
    pipeline = scratch / f"{name}.yaml"
    pipeline.write_text(
        f"pipeline: {name}\nsteps:\n  - op: read_parquet\n    path: {data}\n"
        f"  - id: model\n    op: gradient_boosted_trees\n    label: label\n"
        f"    validation_fraction: {HOLDOUT}\n    seed: {SEED}{settings}\n"
        f"  - op: save_model\n    name: fit\n")
    record = run(pipeline, models=str(scratch / f"{name}_models"),
                 runs_dir=str(scratch / "runs"), engine="spark")
    fit_seconds, run_seconds = _fit_seconds(scratch, name, "model")
    metrics, steps = record["metrics"]["model"], record["steps"]
    accuracy = metrics["validation"]["accuracy"]
    # compute seconds: summed over the tasks of every pass (reading, the operator's own
    # work); the rest of the fit's wall time is outside the tasks (Spark's scheduling of
    # each pass's job, the driver's update, a core left idle)
    _record(scratch, f"{name}_sluice_spark", accuracy=accuracy, fit_seconds=fit_seconds,
            run_seconds=run_seconds, passes=metrics["passes"], rounds=metrics["rounds"],
            nodes=metrics["nodes"], fit_compute_seconds=steps["model"]["compute_seconds"],
            read_compute_seconds=steps["read_parquet"]["compute_seconds"],
            master=record["engine"].get("master"))
    print(f"  {name} sluice spark: held-out accuracy {accuracy:.4f}, fit {fit_seconds:.2f} s, "
          f"run {run_seconds:.2f} s, {metrics['passes']} passes")


def train_boosted_spark_mllib(data: Path, scratch: Path) -> None:
    from functools import partial

    from pyspark.ml.classification import GBTClassifier

    from pipelines.engines.spark import DEFAULT_MASTER

    boosted = partial(
        GBTClassifier, lossType="logistic", maxIter=BOOSTED_SPARK["n_trees"],
        maxDepth=BOOSTED_SPARK["max_depth"], stepSize=BOOSTED_SPARK["learning_rate"],
        maxBins=BOOSTED_SPARK["max_bins"], minInstancesPerNode=BOOSTED_SPARK["min_samples_leaf"],
        subsamplingRate=1.0, featureSubsetStrategy="all", seed=SEED)
    # the sluice side's session: the Spark engine's default master
    _held_out_fit(scratch, "train_boosted_spark", boosted, DEFAULT_MASTER,
                  trees=lambda m: m.getNumTrees, nodes=lambda m: m.totalNumNodes)
