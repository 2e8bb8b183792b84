"""Spark benchmark cases: sluice on the Spark engine against Spark's own ways, on the same
Parquet files, in a Spark session with the same settings (``SparkEngine`` makes both).

* ``score_spark_mllib``: read -> ``score`` -> ``write_parquet`` on the Spark engine, against
  MLlib's ``PipelineModel.transform`` (VectorAssembler + LogisticRegressionModel) + write;
* ``score_spark_udf``: the same sluice side, against a ``pandas_udf`` scoring a
  scikit-learn model (how MLflow's ``spark_udf`` scores) + write;
* ``train_spark_mllib``: read + ``logistic_regression`` + ``save_model`` on the Spark
  engine, against MLlib's ``LogisticRegression`` (the same objective: ``regParam`` = l2,
  no standardisation) + save.

Both sides write the input columns plus `prediction` and `probability` (P(label = 1),
float64). The models are fitted once, untimed, in the setup. Run:

    python -m bench.spark_cases score_spark_mllib --rows 1000000 --repeat 1

(or ``python -m bench CASE`` once ``bench/cases.py`` registers these cases, as
``cases()`` below does).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_ITER = 100
MODELS = "spark_bench_models"  # the scratch folder is shared with the other cases


def _session() -> Any:
    """A Spark session made the way the sluice side makes its own (profile included)."""
    from pipelines.engines.spark import SparkEngine

    engine = SparkEngine()
    engine.start()
    return engine


def _features(columns: list[str]) -> list[str]:
    return [c for c in columns if c != "label"]


def spark_models(data: Path, scratch: Path) -> None:
    """Setup (untimed): the sluice model, the same coefficients as a scikit-learn model,
    and an MLlib PipelineModel fitted to the same objective."""
    import numpy as np
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from sklearn.linear_model import LogisticRegression as SkLogistic

    from bench.cases import L2, _fit_logistic
    from pipelines.store import ModelStore

    _fit_logistic(data, scratch, MODELS)
    fitted = ModelStore(str(scratch / MODELS)).load("bench").chain.steps[-1]
    _, arrays = fitted.state()
    coef = np.asarray(arrays["coef"]).reshape(1, -1)
    model = SkLogistic()
    model.classes_ = np.array([0, 1])
    model.coef_ = coef
    model.intercept_ = np.ravel(arrays["intercept"])[:1]
    model.n_features_in_ = coef.shape[1]
    (scratch / "sklearn_model.pkl").write_bytes(pickle.dumps(model))

    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        stages = [VectorAssembler(inputCols=_features(frame.columns), outputCol="features"),
                  LogisticRegression(regParam=L2, elasticNetParam=0.0, standardization=False,
                                     maxIter=MAX_ITER)]
        Pipeline(stages=stages).fit(frame).write().overwrite().save(str(scratch / "mllib_model"))
    finally:
        engine.close()


def _score_sluice(data: Path, scratch: Path, out: str) -> None:
    from bench.cases import _score_logistic

    _score_logistic(data, scratch, out, models=MODELS, engine="spark")


def score_spark_mllib_sluice_spark(data: Path, scratch: Path) -> None:
    _score_sluice(data, scratch, "score_spark_sluice")


def score_spark_udf_sluice_spark(data: Path, scratch: Path) -> None:
    _score_sluice(data, scratch, "score_spark_sluice")


def score_spark_mllib_mllib(data: Path, scratch: Path) -> None:
    """MLlib: PipelineModel.transform, P(1) out of the probability vector, write."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from bench.cases import fresh

    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        scored = PipelineModel.load(str(scratch / "mllib_model")).transform(frame)
        out = scored.select(*frame.columns,
                            F.col("prediction").cast("long").alias("prediction"),
                            vector_to_array("probability")[1].alias("probability"))
        out.write.mode("overwrite").parquet(str(fresh(scratch / "score_spark_mllib")))
    finally:
        engine.close()


def _sklearn_probability(model_path: str) -> Any:
    """The scoring UDF MLflow's spark_udf builds: a pandas_udf over batches of rows that
    loads the model once per Python worker."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from pyspark.util import PythonEvalType

    def probability(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        with open(model_path, "rb") as f:
            model = pickle.load(f)
        for columns in batches:
            x = pd.concat(columns, axis=1).to_numpy()
            yield pd.Series(model.predict_proba(x)[:, 1])

    # the iterator-of-batches form (type hints name it; this module's are strings)
    return pandas_udf(probability, "double", PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF)


def score_spark_udf_pandas_udf_sklearn(data: Path, scratch: Path) -> None:
    from pyspark.sql import functions as F

    from bench.cases import fresh

    engine = _session()
    try:
        frame = engine.spark.read.parquet(str(data))
        udf = _sklearn_probability(str(scratch / "sklearn_model.pkl"))
        scored = frame.withColumn("probability", udf(*_features(frame.columns)))
        out = scored.withColumn("prediction", (F.col("probability") > 0.5).cast("long"))
        out = out.select(*frame.columns, "prediction", "probability")
        out.write.mode("overwrite").parquet(str(fresh(scratch / "score_spark_udf")))
    finally:
        engine.close()


def train_spark_mllib_sluice_spark(data: Path, scratch: Path) -> None:
    from bench.cases import _fit_logistic
    from pipelines.store import ModelStore

    start = time.perf_counter()
    _fit_logistic(data, scratch, "train_spark_models", engine="spark")
    seconds = time.perf_counter() - start
    fitted = ModelStore(str(scratch / "train_spark_models")).load("bench").chain.steps[-1]
    _, arrays = fitted.state()
    _record(scratch, "train_spark_mllib_sluice_spark", seconds=seconds,
            coef=[float(v) for v in arrays["coef"].ravel()],
            intercept=float(arrays["intercept"].ravel()[0]))


def train_spark_mllib_mllib(data: Path, scratch: Path) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    from bench.cases import L2, fresh

    engine = _session()
    try:
        start = time.perf_counter()
        frame = engine.spark.read.parquet(str(data))
        stages = [VectorAssembler(inputCols=_features(frame.columns), outputCol="features"),
                  LogisticRegression(regParam=L2, elasticNetParam=0.0, standardization=False,
                                     maxIter=MAX_ITER)]
        model = Pipeline(stages=stages).fit(frame)
        model.write().overwrite().save(str(fresh(scratch / "train_spark_mllib_model")))
        seconds = time.perf_counter() - start
        fitted = model.stages[-1]
        _record(scratch, "train_spark_mllib_mllib", seconds=seconds,
                coef=[float(v) for v in fitted.coefficients], intercept=float(fitted.intercept),
                iterations=fitted.summary.totalIterations)
    finally:
        engine.close()


def _record(scratch: Path, name: str, **values: Any) -> None:
    (scratch / f"{name}.json").write_text(json.dumps(values, indent=1))


def cases() -> dict[str, Any]:
    """The cases as ``bench/cases.py`` registers them (for running this module alone)."""
    from bench.cases import Case, _numeric

    return {
        "score_spark_mllib": Case("numeric", ("sluice_spark", "mllib"), _numeric, spark_models),
        "score_spark_udf": Case("numeric", ("sluice_spark", "pandas_udf_sklearn"), _numeric,
                                spark_models),
        "train_spark_mllib": Case("numeric", ("sluice_spark", "mllib"), _numeric),
    }


def run_side(case: str, side: str, data: Path, scratch: Path) -> tuple[float, int]:
    """The harness's ``run_side`` for these cases (a fresh process; its wall time). The
    peak RSS is the side's Python process as ``wait4`` reports it, which leaves out the
    Spark JVM and its Python workers: compare times, not memory, for these cases."""
    cmd = [sys.executable, "-m", "bench.spark_cases", "--side", case, side, str(data),
           str(scratch)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "CI": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {case}/{side} failed")
    return seconds, usage.ru_maxrss * 1024


def main(argv: list[str]) -> int:
    if argv[:1] == ["--side"]:
        case, side, data, scratch = argv[1:5]
        Path(scratch).mkdir(parents=True, exist_ok=True)
        globals()[f"{case}_{side}"](Path(data), Path(scratch))
        return 0
    from bench import harness

    for name, case in cases().items():
        harness.CASES.setdefault(name, case)
    harness.run_side = run_side
    return harness.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
