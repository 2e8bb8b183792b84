"""Benchmark cases: a dataset and two sides (sluice first, the reference second)."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.aggregate_cases import (  # noqa: F401 - bench.worker looks the sides up here
    aggregate_pyarrow_floor,
    aggregate_sluice_local,
    check_aggregate,
    check_dask_aggregate,
    check_spark_aggregate,
    dask_aggregate_dask,
    dask_aggregate_sluice_dask,
    events,
    spark_aggregate_sluice_spark,
    spark_aggregate_spark,
)
from bench.calibrate_cases import (  # noqa: F401 - bench.worker looks the sides up here
    calibrate_sigmoid_sklearn,
    calibrate_sigmoid_sluice_local,
    calibrate_sklearn,
    calibrate_sluice_local,
    check_calibrate,
    check_calibrate_sigmoid,
    scored,
)
from bench.category_cases import (  # noqa: F401 - bench.worker looks the sides up here
    categories,
    train_boosted_categories_sluice_local,
    train_boosted_categories_xgboost,
)
from bench.dask_cases import (  # noqa: F401 - bench.worker looks the sides up here
    dask_score_logistic_dask_numpy,
    dask_score_logistic_sluice_dask,
    dask_train_logistic_dask_ml,
    dask_train_logistic_sluice_dask,
)
from bench.dedupe_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_deduplicate,
    check_spark_deduplicate,
    deduplicate_pyarrow_floor,
    deduplicate_sluice_local,
    spark_deduplicate_sluice_spark,
    spark_deduplicate_spark,
    updates,
)
from bench.isolation_cases import (  # noqa: F401 - bench.worker looks the sides up here
    planted_rows,
    train_isolation_forest_sklearn,
    train_isolation_forest_sluice_local,
)
from bench.join_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_dask_join,
    check_join_shuffle,
    check_spark_join,
    dask_join_dask,
    dask_join_sluice_dask,
    join_shuffle_pyarrow_floor,
    join_shuffle_sluice_local,
    orders,
    spark_join_sluice_spark,
    spark_join_spark,
)
from bench.kmeans_cases import (  # noqa: F401 - bench.worker looks the sides up here
    blobs,
    check_dask_kmeans,
    dask_train_kmeans_dask_ml,
    dask_train_kmeans_sluice_dask,
    train_kmeans_sklearn,
    train_kmeans_sluice_local,
)
from bench.lightgbm_cases import (  # noqa: F401 - bench.worker looks the sides up here
    train_boosted_lightgbm_lightgbm,
    train_boosted_lightgbm_sluice_local,
)
from bench.mixture_cases import (  # noqa: F401 - bench.worker looks the sides up here
    train_gaussian_mixture_sklearn,
    train_gaussian_mixture_sluice_local,
)
from bench.mllib_cases import (  # noqa: F401 - bench.worker looks the sides up here
    forest_split,
    train_boosted_spark_mllib,
    train_boosted_spark_sluice_spark,
    train_forest_mllib_mllib,
    train_forest_mllib_sluice_local,
    train_mlp_mllib_mllib,
    train_mlp_mllib_sluice_local,
)
from bench.mlp_cases import (  # noqa: F401 - bench.worker looks the sides up here
    mlp_holdout,
    train_mlp_lbfgs_sklearn_lbfgs,
    train_mlp_lbfgs_sluice_local,
    train_mlp_sklearn_adam,
    train_mlp_sluice_local,
)
from bench.naive_bayes_cases import (  # noqa: F401 - bench.worker looks the sides up here
    select_features_sklearn,
    select_features_sluice_local,
    train_naive_bayes_sklearn,
    train_naive_bayes_sluice_local,
)
from bench.pca_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_dask_pca,
    check_train_pca,
    components,
    dask_pca_dask_ml,
    dask_pca_sluice_dask,
    train_pca_sklearn,
    train_pca_sluice_local,
)
from bench.pivot_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_pivot,
    check_spark_pivot,
    pivot_pandas,
    pivot_sluice_local,
    spark_pivot_sluice_spark,
    spark_pivot_spark,
)
from bench.poisson_cases import (  # noqa: F401 - bench.worker looks the sides up here
    counts,
    train_poisson_sklearn_lbfgs,
    train_poisson_sluice_local,
)
from bench.quantile_cases import (  # noqa: F401 - bench.worker looks the sides up here
    quantiles,
    train_boosted_quantile_sklearn_hist,
    train_boosted_quantile_sluice_local,
    train_boosted_quantile_xgboost_sluice_local,
    train_boosted_quantile_xgboost_xgboost,
)
from bench.ranking_cases import (  # noqa: F401 - bench.worker looks the sides up here
    rankings,
    train_boosted_lambdarank_lightgbm,
    train_boosted_lambdarank_sluice_local,
)
from bench.sort_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_sort,
    check_spark_sort,
    sort_events,
    sort_pyarrow_floor,
    sort_sluice_local,
    spark_sort_sluice_spark,
    spark_sort_spark,
)
from bench.spark_cases import (  # noqa: F401 - bench.worker looks the sides up here
    score_spark_mllib_mllib,
    score_spark_mllib_sluice_spark,
    score_spark_udf_pandas_udf_sklearn,
    score_spark_udf_sluice_spark,
    spark_models,
    train_spark_mllib_mllib,
    train_spark_mllib_sluice_spark,
)
from bench.target_encode_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_target_encode,
    merchants,
    target_encode_sklearn,
    target_encode_sluice_local,
)
from bench.text_cases import (  # noqa: F401 - bench.worker looks the sides up here
    tickets,
    train_text_boosted_sparse_sluice_local,
    train_text_boosted_sparse_xgboost,
    train_text_kmeans_sparse_sklearn,
    train_text_kmeans_sparse_sluice_local,
    train_text_logistic_sparse_sklearn,
    train_text_logistic_sparse_sluice_local,
    train_text_naive_bayes_sklearn,
    train_text_naive_bayes_sluice_local,
    train_text_naive_bayes_sparse_sklearn,
    train_text_naive_bayes_sparse_sluice_local,
)
from bench.tree_cases import (  # noqa: F401 - bench.worker looks the sides up here
    train_boosted_sklearn_hist,
    train_boosted_sluice_local,
    train_forest_sklearn,
    train_forest_sluice_local,
)
from bench.window_cases import (  # noqa: F401 - bench.worker looks the sides up here
    check_spark_window,
    check_window,
    spark_window_sluice_spark,
    spark_window_spark,
    window_events,
    window_pandas,
    window_sluice_local,
)
from bench.xgboost_cases import (  # noqa: F401 - bench.worker looks the sides up here
    boosted_models,
    dask_train_boosted_sluice_dask,
    dask_train_boosted_xgboost,
    explain_boosted_xgboost_sluice_local,
    explain_boosted_xgboost_xgboost,
    score_boosted_xgboost_sluice_local,
    score_boosted_xgboost_xgboost,
    train_boosted_colsample_sluice_local,
    train_boosted_colsample_xgboost,
    train_boosted_xgboost_sluice_local,
    train_boosted_xgboost_xgboost,
)
from pipelines.datagen import generate


@dataclass(frozen=True)
class Case:
    dataset: str
    sides: tuple[str, str]
    generate: Callable[[Path, int, int], None]
    setup: Callable[[Path, Path], None] | None = None  # once, untimed, before the sides
    check: Callable[[Path, Path], None] | None = None  # once, untimed, after the sides


def _numeric(out: Path, rows: int, files: int) -> None:
    generate("numeric", rows, out, files=files, row_group_rows=250_000)


def _pipeline(scratch: Path, name: str, text: str) -> Path:
    path = scratch / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


L2 = 1e-4


def _fit_logistic(data: Path, scratch: Path, models: str, engine: str = "local") -> None:
    """read + logistic_regression + save_model with sluice (model name `bench`)."""
    from pipelines.runner import run

    shutil.rmtree(scratch / models, ignore_errors=True)
    run(_pipeline(scratch, f"bench_fit_{engine}", f"""
        pipeline: bench_fit
        steps:
          - op: read_parquet
            path: {data}
          - op: logistic_regression
            label: label
            l2: {L2}
          - op: save_model
            name: bench
        """), models=str(scratch / models), runs_dir=str(scratch / "runs"), engine=engine)


def _train_model(data: Path, scratch: Path) -> None:
    """A logistic model for the scoring cases, saved by sluice and as plain arrays."""
    import numpy as np

    from pipelines.store import ModelStore

    _fit_logistic(data, scratch, "models")
    fitted = ModelStore(str(scratch / "models")).load("bench").chain.steps[-1]
    _, arrays = fitted.state()
    np.savez(scratch / "bench_model.npz", **arrays)


CASES: dict[str, Case] = {
    # read -> write_parquet through the local engine vs pyarrow's own read + write
    "io_copy": Case("numeric", ("sluice_local", "pyarrow_floor"), _numeric),
    # read -> score (logistic) -> write vs a plain pyarrow + numpy script doing the same
    "score_logistic": Case("numeric", ("sluice_local", "pyarrow_numpy"), _numeric,
                           _train_model),
    # read + fit logistic regression (same objective) vs scikit-learn lbfgs
    "train_logistic": Case("numeric", ("sluice_local", "sklearn_lbfgs"), _numeric),
    # read -> score (logistic) -> write on Dask: the Dask engine vs dd.read_parquet +
    # map_partitions(NumPy) + to_parquet on the same LocalCluster shape (the floor on Dask)
    "dask_score_logistic": Case("numeric", ("sluice_dask", "dask_numpy"), _numeric,
                                _train_model),
    # read + linear_regression with loss: poisson (lbfgs) vs scikit-learn PoissonRegressor
    # (lbfgs, alpha = l2), held-out Poisson deviance printed (bench/poisson_cases.py)
    "train_poisson": Case("counts", ("sluice_local", "sklearn_lbfgs"), counts),
    # read + fit logistic regression on Dask: the Dask engine vs dask-ml (lbfgs, same L2)
    "dask_train_logistic": Case("numeric", ("sluice_dask", "dask_ml"), _numeric),
    # read + fit mlp [64, 32], adam 10 epochs, vs scikit-learn MLPClassifier (accuracy in scratch)
    "train_mlp": Case("numeric", ("sluice_local", "sklearn_adam"), _numeric, mlp_holdout),
    # the same with full-batch L-BFGS, 50 iterations on both sides
    "train_mlp_lbfgs": Case("numeric", ("sluice_local", "sklearn_lbfgs"), _numeric, mlp_holdout),
    # random_forest (50 trees, depth 10) vs RandomForestClassifier, held-out accuracy printed
    "train_forest": Case("numeric", ("sluice_local", "sklearn"), _numeric),
    # gradient_boosted_trees (100 trees, depth 6) vs HistGradientBoostingClassifier
    "train_boosted": Case("numeric", ("sluice_local", "sklearn_hist"), _numeric),
    # read -> score -> write on the Spark engine vs MLlib PipelineModel.transform + write
    "score_spark_mllib": Case("numeric", ("sluice_spark", "mllib"), _numeric, spark_models),
    # the same vs a pandas_udf scoring a scikit-learn model (MLflow's spark_udf) + write
    "score_spark_udf": Case("numeric", ("sluice_spark", "pandas_udf_sklearn"), _numeric,
                            spark_models),
    # read + fit logistic regression on the Spark engine vs MLlib LogisticRegression
    "train_spark_mllib": Case("numeric", ("sluice_spark", "mllib"), _numeric),
    # random_forest (50 trees, depth 10) vs MLlib RandomForestClassifier, local[cores]
    "train_forest_mllib": Case("numeric", ("sluice_local", "mllib"), _numeric, forest_split),
    # mlp [64, 32] sigmoid, L-BFGS 50 iterations vs MLlib MultilayerPerceptronClassifier
    "train_mlp_mllib": Case("numeric", ("sluice_local", "mllib"), _numeric, mlp_holdout),
    # gradient_boosted_trees (100 trees, depth 6) vs XGBoost hist, locally and on Dask
    "train_boosted_xgboost": Case("numeric", ("sluice_local", "xgboost"), _numeric),
    "dask_train_boosted": Case("numeric", ("sluice_dask", "xgboost"), _numeric),
    # the same on three text columns split by sets of categories: categorical vs XGBoost's
    # enable_categorical (bench/category_cases.py)
    "train_boosted_categories": Case("categories", ("sluice_local", "xgboost"), categories),
    # the same with half the features per tree: tree_features vs colsample_bytree
    "train_boosted_colsample": Case("numeric", ("sluice_local", "xgboost"), _numeric),
    # read -> score (the 100-tree models of each) -> write vs XGBoost's inplace_predict
    "score_boosted_xgboost": Case("numeric", ("sluice_local", "xgboost"), _numeric,
                                  boosted_models),
    # the same with each row's per-feature contributions: TreeSHAP vs pred_contribs
    "explain_boosted_xgboost": Case("numeric", ("sluice_local", "xgboost"), _numeric,
                                    boosted_models),
    # gradient_boosted_trees (100 trees) grown leaf-wise, grow_policy: lossguide with 31
    # leaves and depth 10, vs LightGBM's LGBMClassifier (num_leaves 31), held-out accuracy
    # and log-loss printed (bench/lightgbm_cases.py)
    "train_boosted_lightgbm": Case("numeric", ("sluice_local", "lightgbm"), _numeric),
    # gradient_boosted_trees' loss: quantile (0.9) on a label of heavy-tailed noise that
    # widens with a feature vs HistGradientBoostingRegressor(loss="quantile") and XGBoost's
    # reg:quantileerror, held-out pinball loss and coverage printed (bench/quantile_cases.py)
    "train_boosted_quantile": Case("quantiles", ("sluice_local", "sklearn_hist"), quantiles),
    "train_boosted_quantile_xgboost": Case("quantiles", ("sluice_local", "xgboost"), quantiles),
    # gradient_boosted_trees' loss: lambdarank (after a repartition by query) vs LightGBM's
    # LGBMRanker(objective="lambdarank"), held-out NDCG@10 printed (bench/ranking_cases.py)
    "train_boosted_lambdarank": Case("rankings", ("sluice_local", "lightgbm"), rankings),
    # pca (k 5 of 20 correlated columns) vs scikit-learn's PCA on the files read with
    # pyarrow / dask-ml's PCA on a LocalCluster; components compared (bench/pca_cases.py)
    "train_pca": Case("components", ("sluice_local", "sklearn"), components,
                      check=check_train_pca),
    "dask_pca": Case("components", ("sluice_dask", "dask_ml"), components,
                     check=check_dask_pca),
    # gradient_boosted_trees (20 trees, depth 4) on the Spark engine vs MLlib GBTClassifier
    "train_boosted_spark": Case("numeric", ("sluice_spark", "mllib"), _numeric, forest_split),
    # read -> target_encode three text columns (50,000, 5,000 and 12 categories), cross-
    # fitted in 5 folds -> write vs scikit-learn's TargetEncoder(cv=5).fit_transform on the
    # files read with pyarrow + write; the fits on every row compared after the sides
    # (bench/target_encode_cases.py)
    "target_encode": Case("merchants", ("sluice_local", "sklearn"), merchants,
                          check=check_target_encode),
    # read -> calibrate an overconfident probability (every value distinct) -> write vs
    # scikit-learn's IsotonicRegression / Platt scaling (_SigmoidCalibration) on the files
    # read with pyarrow + write; the calibrated probabilities compared (calibrate_cases.py)
    "calibrate": Case("scored", ("sluice_local", "sklearn"), scored, check=check_calibrate),
    "calibrate_sigmoid": Case("scored", ("sluice_local", "sklearn"), scored,
                              check=check_calibrate_sigmoid),
    # read + kmeans (k = 8, 20 Lloyd passes, tol 0, k-means|| start) vs scikit-learn's
    # KMeans (lloyd, k-means++ start, n_init 1) and, on 2 Dask workers, dask-ml's KMeans
    # (k-means||); inertia printed (bench/kmeans_cases.py)
    "train_kmeans": Case("blobs", ("sluice_local", "sklearn"), blobs),
    # read + gaussian_mixture (k = 8, full covariances, 20 EM passes, tol 0) vs
    # scikit-learn's GaussianMixture (bench/mixture_cases.py)
    "train_gaussian_mixture": Case("blobs", ("sluice_local", "sklearn"), blobs),
    # read + naive_bayes (Gaussian) + save vs scikit-learn's GaussianNB on the files read
    # with pyarrow (bench/naive_bayes_cases.py)
    "train_naive_bayes": Case("numeric", ("sluice_local", "sklearn"), _numeric),
    # read -> select_features (anova, the best 10 of 20) -> write vs scikit-learn's
    # SelectKBest(f_classif, k=10) on the files read with pyarrow + write
    "select_features": Case("numeric", ("sluice_local", "sklearn"), _numeric),
    "dask_train_kmeans": Case("blobs", ("sluice_dask", "dask_ml"), blobs,
                              check=check_dask_kmeans),
    # read -> isolation_forest (100 trees of 256 rows, contamination 0.01) -> evaluate (every
    # row scored) vs scikit-learn's IsolationForest fit + score_samples on the files read
    # with pyarrow; both sides' ROC AUC printed (bench/isolation_cases.py)
    "train_isolation_forest": Case("planted", ("sluice_local", "sklearn"), planted_rows),
    # read -> vectorize_text (the 2,000 most frequent terms in >= 5 tickets) -> naive_bayes
    # (multinomial) -> save vs CountVectorizer + MultinomialNB on the files read with
    # pyarrow (bench/text_cases.py)
    "train_text_naive_bayes": Case("tickets", ("sluice_local", "sklearn"), tickets),
    # the same with vectorize_text's sparse: true (each row's terms in one column)
    "train_text_naive_bayes_sparse": Case("tickets", ("sluice_local", "sklearn"), tickets),
    # read -> vectorize_text (sparse, TF-IDF of every term in >= 5 tickets) ->
    # logistic_regression (8 classes, L-BFGS, 100 iterations at most) vs TfidfVectorizer +
    # LogisticRegression on the files read with pyarrow
    "train_text_logistic_sparse": Case("tickets", ("sluice_local", "sklearn"), tickets),
    # read -> vectorize_text (sparse, TF-IDF of every term in >= 5 tickets) -> kmeans (k 8,
    # 20 Lloyd passes, k-means|| start) vs TfidfVectorizer + KMeans (lloyd, k-means++,
    # n_init=1, 20 passes) on the files read with pyarrow
    "train_text_kmeans_sparse": Case("tickets", ("sluice_local", "sklearn"), tickets),
    # read -> vectorize_text (sparse, TF-IDF of the 2,000 most frequent terms in >= 5
    # tickets) -> gradient_boosted_trees (20 rounds of 8 trees, depth 6, 32 bins, a tenth
    # held out) vs TfidfVectorizer + XGBoost hist on its CSR matrix (absent terms missing
    # there, 0 here); held-out accuracy on each side (bench/text_cases.py)
    "train_text_boosted_sparse": Case("tickets", ("sluice_local", "xgboost"), tickets),
    # read -> aggregate by customer (counts, sums, mean, std, extremes, distinct, max_by) ->
    # write vs pyarrow's group_by, Dask's groupby().agg() and Spark's groupBy().agg();
    # the outputs are compared after the sides (bench/aggregate_cases.py)
    "aggregate": Case("events", ("sluice_local", "pyarrow_floor"), events,
                      check=check_aggregate),
    "dask_aggregate": Case("events", ("sluice_dask", "dask"), events,
                           check=check_dask_aggregate),
    "spark_aggregate": Case("events", ("sluice_spark", "spark"), events,
                            check=check_spark_aggregate),
    # read -> aggregate by customer with a column per plan (pivot: sum, count, count_if of
    # each of the 5 plans' rows) -> write vs pandas' groupby([customer, plan]) + unstack and
    # Spark's groupBy().pivot().agg(); the outputs are compared after the sides
    # (bench/pivot_cases.py)
    "pivot": Case("events", ("sluice_local", "pandas"), events, check=check_pivot),
    "spark_pivot": Case("events", ("sluice_spark", "spark"), events,
                        check=check_spark_pivot),
    # read -> deduplicate by customer (the latest update of each) -> write vs the pyarrow
    # floor (hash codes + NumPy) and Spark's row_number() over a Window; the kept rows are
    # compared after the sides (bench/dedupe_cases.py)
    "deduplicate": Case("updates", ("sluice_local", "pyarrow_floor"), updates,
                        check=check_deduplicate),
    "spark_deduplicate": Case("updates", ("sluice_spark", "spark"), updates,
                              check=check_spark_deduplicate),
    # read orders -> join customers (a quarter as many rows) through a shuffle, a left
    # join -> write vs Acero's hash join (pyarrow), Spark's sort-merge join and Dask's
    # merge; every column of every row compared after the sides (bench/join_cases.py)
    "join_shuffle": Case("orders", ("sluice_local", "pyarrow_floor"), orders,
                         check=check_join_shuffle),
    "spark_join": Case("orders", ("sluice_spark", "spark"), orders, check=check_spark_join),
    "dask_join": Case("orders", ("sluice_dask", "dask"), orders, check=check_dask_join),
    # read events -> window by customer in time order (row_number, lag, a running sum, a
    # mean of the last 3 rows, a sum of the last 7 days) through a shuffle -> write vs
    # pandas' sort + groupby (cumcount, shift, cumsum, rolling) and Spark's
    # Window.partitionBy().orderBy(); every column of every row compared after the
    # sides (bench/window_cases.py)
    "window": Case("window_events", ("sluice_local", "pandas"), window_events,
                   check=check_window),
    "spark_window": Case("window_events", ("sluice_spark", "spark"), window_events,
                         check=check_spark_window),
    # read events -> sort by customer, amount descending, event (a range shuffle: the
    # rows in order across every output partition) -> write vs pyarrow's Table.sort_by
    # and Spark's orderBy; the order across the files and every column of every row
    # compared after the sides (bench/sort_cases.py)
    "sort": Case("sort_events", ("sluice_local", "pyarrow_floor"), sort_events,
                 check=check_sort),
    "spark_sort": Case("sort_events", ("sluice_spark", "spark"), sort_events,
                       check=check_spark_sort),
}


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def io_copy_sluice_local(data: Path, scratch: Path) -> None:
    from pipelines.runner import run

    out = fresh(scratch / "io_copy_sluice")
    pipeline = scratch / "io_copy.yaml"
    pipeline.write_text(textwrap.dedent(f"""
        pipeline: io_copy
        steps:
          - op: read_parquet
            path: {data}
          - op: write_parquet
            path: {out}
        """))
    run(pipeline, runs_dir=str(scratch / "runs"))


def io_copy_pyarrow_floor(data: Path, scratch: Path) -> None:
    """The floor: a dataset scan written back out by pyarrow, file by file."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = fresh(scratch / "io_copy_pyarrow")
    out.mkdir()
    for i, fragment in enumerate(ds.dataset(data, format="parquet").get_fragments()):
        pq.write_table(fragment.to_table(), out / f"part-{i:05d}.parquet")


def _score_logistic(data: Path, scratch: Path, out: str, models: str = "models",
                    engine: str = "local") -> None:
    """read -> score (model `bench`) -> write_parquet with sluice on ``engine``."""
    from pipelines.runner import run

    target = fresh(scratch / out)
    run(_pipeline(scratch, f"bench_score_{engine}", f"""
        pipeline: bench_score
        steps:
          - op: read_parquet
            path: {data}
          - op: score
            model: bench
          - op: write_parquet
            path: {target}
        """), models=str(scratch / models), runs_dir=str(scratch / "runs"), engine=engine)


def score_logistic_sluice_local(data: Path, scratch: Path) -> None:
    _score_logistic(data, scratch, "score_sluice")


def score_logistic_pyarrow_numpy(data: Path, scratch: Path) -> None:
    """What a careful engineer writes by hand: per file, read, X @ w + b, write."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    model = np.load(scratch / "bench_model.npz")
    coef = model["coef"].ravel()
    intercept = float(np.ravel(model["intercept"])[0])
    out = fresh(scratch / "score_numpy")
    out.mkdir()
    features = [f"x{i}" for i in range(len(coef))]
    for i, fragment in enumerate(ds.dataset(data, format="parquet").get_fragments()):
        table = fragment.to_table()
        x = np.column_stack([table.column(f).to_numpy() for f in features])
        p = 1 / (1 + np.exp(-(x @ coef + intercept)))
        table = table.append_column("prediction", pa.array((p > 0.5).astype(np.int64)))
        table = table.append_column("probability", pa.array(p))
        pq.write_table(table, out / f"part-{i:05d}.parquet")


def train_logistic_sluice_local(data: Path, scratch: Path) -> None:
    _fit_logistic(data, scratch, "train_models")


def train_logistic_sklearn_lbfgs(data: Path, scratch: Path) -> None:
    """scikit-learn on the same files and the same objective (C = 1 / (l2 * n))."""
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    table = pq.read_table(data)
    features = [c for c in table.column_names if c != "label"]
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    y = table.column("label").to_numpy()
    LogisticRegression(C=1 / (L2 * len(y)), tol=1e-8, max_iter=1000).fit(x, y)
