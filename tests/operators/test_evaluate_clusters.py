"""evaluate_clusters: scikit-learn's silhouette (squared Euclidean), Calinski-Harabasz and
Davies-Bouldin on the same rows, exact over any partitioning; its errors; after kmeans in
a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_pipeline
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from operators.base import DataError, ParamError, SchemaError
from operators.evaluate.clusters import EvaluateClusters
from operators.testing.kit import NUMPY, fit, split
from pipelines.runner import ValidationFailed, run


def measured(table: pa.Table, parts: int = 1, seed: int | None = None, **params: Any
             ) -> dict[str, Any]:
    return fit(EvaluateClusters(**params), split(table, parts, seed)).metrics


def reference(X: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"silhouette": silhouette_score(X, labels, metric="sqeuclidean"),
            "calinski_harabasz": calinski_harabasz_score(X, labels),
            "davies_bouldin": davies_bouldin_score(X, labels)}


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of different spreads, one tight and far from the origin (where expanding
    |x - m|^2 would cancel), a row alone in its cluster, and a row far from its own."""
    rng = np.random.default_rng(seed)
    shapes = [(0.0, 1.0, 300), (5.0, 0.5, 200), (1e3, 0.01, 100), (-3.0, 2.0, 50)]
    X = np.concatenate([rng.normal(c, s, size=(n, 3)) for c, s, n in shapes])
    labels = np.repeat(np.arange(len(shapes)), [n for _, _, n in shapes])
    labels[5] = 7  # alone: its silhouette counts 0
    X[-1] += 9.0
    order = rng.permutation(len(X))  # clusters spread over the partitions
    return X[order], labels[order]


def table_of(X: np.ndarray, labels: Any) -> pa.Table:
    return pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "prediction": labels})


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_equal_to_scikit_learn_on_any_partitioning(parts: int) -> None:
    """The silhouette equal to scikit-learn's to 1e-12 (measured: equal to the last bit),
    Davies-Bouldin to 1e-12 (scikit-learn measures the means' distances by expanding
    |a - b|^2: 1e-13 apart), Calinski-Harabasz to 1e-12."""
    X, labels = blobs()
    got = measured(table_of(X, labels), parts, seed=parts)
    want = reference(X, labels)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert got["count"] == len(X) and got["clusters"] == 5
    assert got["cluster_sizes"] == {"0": 299, "1": 200, "2": 100, "3": 50, "7": 1}
    means = {c: X[labels == c].mean(axis=0) for c in np.unique(labels)}
    within = sum(float(np.sum((X[labels == c] - m) ** 2)) for c, m in means.items())
    assert got["within_ss"] == pytest.approx(within, rel=1e-12)


def test_text_ids_and_a_subset_of_metrics() -> None:
    """Cluster ids may be text (a dictionary column too); asking for Calinski-Harabasz
    alone takes one pass."""
    X, labels = blobs(1)
    names = np.array(["north", "south", "east", "west", "x", "y", "z", "lone"])[labels]
    t = table_of(X, pa.array(names).dictionary_encode())
    got = measured(t, 4)
    for name, value in reference(X, names).items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    op = EvaluateClusters(metrics=["calinski_harabasz"])
    assert EvaluateClusters().multi_pass and not op.multi_pass  # cache the rows or not
    state = op.init(t.schema)
    state, done = op.update(op.partial(t, state, NUMPY), state)
    assert done and state["metrics_values"] == {
        "calinski_harabasz": pytest.approx(calinski_harabasz_score(X, names), rel=1e-12)}


def test_features_default_to_numbers_but_the_prediction_and_distance() -> None:
    X, labels = blobs(2)
    t = table_of(X, labels).append_column("distance", pa.array(np.full(len(X), 1e6)))
    t = t.append_column("region", pa.array(["east"] * len(X)))
    assert EvaluateClusters().input_columns(t.schema) == ["a", "b", "c", "prediction"]
    assert measured(t)["silhouette"] == pytest.approx(
        silhouette_score(X, labels, metric="sqeuclidean"), rel=1e-12)
    only = measured(t, features=["a", "b"])
    assert only["silhouette"] == pytest.approx(
        silhouette_score(X[:, :2], labels, metric="sqeuclidean"), rel=1e-12)


def test_every_row_alike_in_its_cluster() -> None:
    """Clusters of copies: scikit-learn's figures where it divides 0 by 0 (silhouette 1
    where the clusters are apart, Calinski-Harabasz 1, Davies-Bouldin 0)."""
    X = np.repeat(np.array([[0.0, 0, 0], [1, 1, 1], [5, 0, 2]]), 4, axis=0)
    labels = np.repeat([0, 1, 2], 4)
    got = measured(table_of(X, labels), 2)
    want = reference(X, labels)
    assert got["silhouette"] == pytest.approx(want["silhouette"])
    assert got["calinski_harabasz"] == want["calinski_harabasz"] == 1.0
    assert got["davies_bouldin"] == want["davies_bouldin"] == 0.0


@pytest.mark.parametrize(("labels", "match"), [
    (np.zeros(20, dtype=int), r"20 rows in 1 clusters: the metrics need 2 to 19"),
    (np.arange(20), r"20 rows in 20 clusters"),
])
def test_too_few_or_too_many_clusters(labels: np.ndarray, match: str) -> None:
    X = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(DataError, match=match):
        measured(table_of(X, labels), 2)


def test_errors_name_the_column() -> None:
    X, labels = blobs()
    t = table_of(X, labels)
    with pytest.raises(SchemaError, match="prediction column 'cluster'"):
        EvaluateClusters(prediction="cluster").output_schema(t.schema)
    with pytest.raises(SchemaError, match="prediction 'a' has type double: cluster ids"):
        EvaluateClusters(prediction="a").output_schema(t.schema)
    text = t.append_column("region", pa.array(["e"] * len(X)))
    with pytest.raises(SchemaError, match="feature column 'region' has type string"):
        EvaluateClusters(features=["a", "region"]).output_schema(text.schema)
    nulls = t.set_column(3, "prediction", pa.array(labels, mask=np.arange(len(X)) == 3))
    with pytest.raises(DataError, match="prediction 'prediction' has 1 null values"):
        measured(nulls)
    with pytest.raises(ParamError, match="lists a metric twice"):
        EvaluateClusters(metrics=["silhouette", "silhouette"])
    with pytest.raises(Exception, match="silhuette"):
        EvaluateClusters(metrics=["silhuette"])


def test_a_weight_listed_in_features_is_a_plan_time_error(workdir: Path) -> None:
    """``features`` that lists the ``weight`` column would measure the clusters on fewer
    columns than were asked: the plan refuses it, naming the step and the column."""
    import pyarrow.parquet as pq

    X, labels = blobs()
    table = table_of(X, labels).append_column("w", pa.array(np.ones(len(X))))
    with pytest.raises(ParamError, match="weight column 'w' is also listed in features"):
        EvaluateClusters(features=["a", "w"], weight="w").output_schema(table.schema)
    (workdir / "data").mkdir()
    pq.write_table(table, workdir / "data" / "p.parquet")
    pipeline = write_pipeline(workdir, """
        pipeline: segments
        steps:
          - op: read_parquet
            path: data
          - id: quality
            op: evaluate_clusters
            features: [a, b, w]
            weight: w
    """)
    with pytest.raises(ValidationFailed) as info:
        run(pipeline)
    problem = str(info.value.problems[0])
    assert f"{pipeline}:7: step 'quality' (evaluate_clusters)" in problem, problem
    assert "weight column 'w' is also listed in features" in problem
    assert "remove 'w' from features" in problem


def test_after_kmeans_in_a_pipeline(workdir: Path) -> None:
    """The figures of a kmeans step's clusters, in the run record: better for k = 3 on
    three blobs than for k = 2 or 6, as the silhouette is meant to tell."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = centres[rng.integers(0, 3, 3000)] + rng.standard_normal((3000, 2))
    (workdir / "data").mkdir()
    pq.write_table(pa.table({"u": x[:, 0], "v": x[:, 1]}), workdir / "data" / "p.parquet")
    silhouettes = {}
    for k in (2, 3, 6):
        pipeline = write_pipeline(workdir, f"""
            pipeline: segments
            steps:
              - op: read_parquet
                path: data
              - op: kmeans
                k: {k}
                seed: 1
              - id: quality
                op: evaluate_clusters
        """)
        figures = run(pipeline)["metrics"]["quality"]
        assert figures["clusters"] == k and figures["count"] == 3000
        silhouettes[k] = figures["silhouette"]
    assert silhouettes[3] > max(silhouettes[2], silhouettes[6])


def engine_figures(workdir: Path, engine: Any, table: pa.Table, params: str = ""
                   ) -> dict[str, dict[str, Any]]:
    """The run record's figures of ``table`` as one file on the local engine ("one") and
    as 6 files of small row groups on ``engine`` ("many"); ``params``: the step's lines."""
    import pyarrow.parquet as pq

    for name, parts in (("one", [table]), ("many", split(table, 6))):
        folder = workdir / name
        folder.mkdir()
        for i, part in enumerate(parts):
            pq.write_table(part, folder / f"part-{i}.parquet", row_group_size=60)
    figures = {}
    for name, eng in (("one", None), ("many", engine)):
        pipeline = write_pipeline(workdir, f"""
            pipeline: quality
            steps:
              - op: read_parquet
                path: {name}
                partition_mb: 0.002
              - id: quality
                op: evaluate_clusters
                {params}
        """, f"{name}.yaml")
        figures[name] = run(pipeline, engine_instance=eng)["metrics"]["quality"]
    return figures


def test_every_engine_and_layout_gives_the_same_figures(workdir: Path, engine: Any) -> None:
    """Local, Dask and Spark, over 6 files of small row groups: the local engine's
    figures from one file, and scikit-learn's."""
    X, labels = blobs(4)
    figures = engine_figures(workdir, engine, table_of(X, labels))
    for key, value in reference(X, labels).items():
        assert figures["one"][key] == pytest.approx(value, rel=1e-12), key
        assert figures["many"][key] == pytest.approx(value, rel=1e-12), key
    assert figures["many"]["cluster_sizes"] == figures["one"]["cluster_sizes"]


def test_many_clusters_take_memory_of_the_clusters_not_rows_times_clusters() -> None:
    """600 clusters of 40 features: the second pass holds a block of rows' distances to
    the means at a time (not every row's at once), and Davies-Bouldin the means' k x k
    distances (not a k x k x features array of their differences: 115 MB here)."""
    import tracemalloc

    rng = np.random.default_rng(7)
    k, d, n = 600, 40, 12000
    labels = np.arange(n) % k
    X = rng.standard_normal((k, d))[labels] + 0.1 * rng.standard_normal((n, d))
    t = pa.table({**{f"f{j}": X[:, j] for j in range(d)}, "prediction": labels})
    op = EvaluateClusters(metrics=["silhouette", "davies_bouldin"])
    state = op.init(t.schema)
    state, _ = op.update(op.partial(t, state, NUMPY), state)
    tracemalloc.start()
    try:
        state, done = op.update(op.partial(t, state, NUMPY), state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done and peak < 40 * 2**20, f"{peak / 2**20:.0f} MiB"
    want = reference(X, labels)
    for name in ("silhouette", "davies_bouldin"):
        assert state["metrics_values"][name] == pytest.approx(want[name], rel=1e-12), name


def test_any_array_namespace() -> None:
    """The array API's strict namespace (no slice past an array's end: the second pass's
    last block of rows is cut to the rows there are) gives NumPy's figures."""
    from operators.arrays import get_namespace

    X, labels = blobs(5)
    table = table_of(X, labels)
    want = measured(table, 3)
    got = fit(EvaluateClusters(), split(table, 3), get_namespace("array_api_strict")).metrics
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("rows", [1, 2])
def test_too_few_rows_for_any_clustering(rows: int) -> None:
    """Two clusters need three rows at least: said so (was "need 2 to 2 clusters" of
    two rows in two clusters)."""
    X = np.arange(rows, dtype=float)[:, None].repeat(3, axis=1)
    with pytest.raises(DataError, match=rf"{rows} rows in {rows} clusters: the metrics "
                                        r"need 3 rows at least \(2 clusters, fewer than "
                                        r"the rows\)"):
        measured(table_of(X, np.arange(rows)))


def test_a_note_where_the_default_features_are_not_the_clusterings(workdir: Path) -> None:
    """kmeans named its features and evaluate_clusters did not: it would measure the
    clusters on every number (here a column kmeans never saw too), which the plan says;
    given the same features, nothing is said."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    (workdir / "data").mkdir()
    pq.write_table(pa.table({"u": rng.standard_normal(200), "v": rng.standard_normal(200),
                             "spend": 1000 * rng.random(200)}), workdir / "data" / "p.parquet")
    notes: dict[str, list[str]] = {}
    for name, given in (("default", ""), ("named", "features: [u, v]")):
        pipeline = write_pipeline(workdir, f"""
            pipeline: segments
            steps:
              - op: read_parquet
                path: data
              - id: segments
                op: kmeans
                k: 3
                features: [u, v]
              - id: quality
                op: evaluate_clusters
                {given}
        """, f"{name}.yaml")
        notes[name] = []
        assert run(pipeline, notify=notes[name].append)["status"] == "succeeded"
    assert notes["named"] == []
    assert notes["default"] == [
        f"{workdir / 'default.yaml'}:9: step 'quality' (evaluate_clusters) measures the "
        "clusters on every numeric column but its prediction and distance (u, v, spend), "
        "not on the "
        "features step 'segments' (kmeans) clustered on (u, v): list `features: [u, v]`"]


def test_weighted_as_mllibs_clustering_evaluator(spark: Any) -> None:
    """``weight``: the silhouette is MLlib's ClusteringEvaluator with weightCol (a row's
    own cluster's mean distance over the others' weight, W_C - w; the mean of the rows'
    silhouettes weighted), on any partitioning; Calinski-Harabasz and Davies-Bouldin
    count a row as its weight (scikit-learn's on the rows repeated); a weight of 0 is
    refused."""
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.linalg import Vectors

    X, labels = blobs(3)
    w = np.random.default_rng(4).integers(1, 4, len(X)).astype(np.float64)
    table = table_of(X, labels).append_column("w", pa.array(w))
    frame = spark.spark.createDataFrame(
        [(Vectors.dense(x.tolist()), float(label), float(weight))
         for x, label, weight in zip(X, labels, w, strict=True)],
        ["features", "prediction", "w"])
    mllib = ClusteringEvaluator(distanceMeasure="squaredEuclidean",
                                weightCol="w").evaluate(frame)
    repeated = np.repeat(X, w.astype(int), axis=0), np.repeat(labels, w.astype(int))
    for parts in (1, 4):
        got = measured(table, parts, seed=parts, weight="w")
        assert got["silhouette"] == pytest.approx(mllib, rel=1e-9)
        assert got["calinski_harabasz"] == pytest.approx(
            calinski_harabasz_score(*repeated), rel=1e-9)
        assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(*repeated),
                                                      rel=1e-9)
        assert got["count"] == len(X)  # rows, not weight (and w is no default feature)
    plain = measured(table, 1, features=["a", "b", "c"])
    assert plain["silhouette"] == pytest.approx(reference(X, labels)["silhouette"],
                                                rel=1e-12)
    assert plain["silhouette"] != pytest.approx(mllib, rel=1e-6)
    zero = table.set_column(table.schema.get_field_index("w"), "w",
                            pa.array(np.where(np.arange(len(X)) == 3, 0.0, w)))
    with pytest.raises(DataError, match="weight column 'w' has 1 values of 0"):
        measured(zero, 1, weight="w")


# --------------------------------------------------------------------------- cosine


def directions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``blobs`` with rows of lengths from 0.1 to 50: lengths change every squared
    Euclidean distance and no cosine one."""
    X, labels = blobs(seed)
    lengths = np.random.default_rng(seed + 1).uniform(0.1, 50.0, len(X))
    return X * lengths[:, None], labels


def cosine_reference(X: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None
                     ) -> float:
    """MLlib's cosine silhouette of every pair of rows (O(rows^2)): a row's mean distance
    to its own cluster's others over their weight, to another's over its weight."""
    w = np.ones(len(X)) if w is None else w
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    D = 1.0 - U @ U.T
    s = np.zeros(len(X))
    for i in range(len(X)):
        own = labels == labels[i]
        if w[own].sum() == w[i]:
            continue
        a = (D[i, own] @ w[own]) / (w[own].sum() - w[i])
        b = min((D[i, labels == c] @ w[labels == c]) / w[labels == c].sum()
                for c in set(labels.tolist()) - {labels[i]})
        s[i] = (b - a) / max(a, b)
    return float(s @ w / w.sum())


@pytest.mark.parametrize("weighted", [False, True])
def test_cosine_silhouette_is_mllibs(spark: Any, weighted: bool) -> None:
    """``distance_measure: cosine``: MLlib's ClusteringEvaluator(distanceMeasure="cosine")
    to 1e-9, with and without weightCol, on 1, 3 and 7 partitions; without weights also
    scikit-learn's silhouette_score(metric="cosine"); the figures of every pair of rows
    to 1e-12 either way. within_ss: the rows' cosine distances to their cluster's
    direction."""
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.linalg import Vectors

    X, labels = directions()
    w = np.random.default_rng(4).uniform(0.5, 3.0, len(X)) if weighted else None
    table = table_of(X, labels)
    rows = [(Vectors.dense(x.tolist()), float(label)) for x, label in zip(X, labels, strict=True)]
    columns = ["features", "prediction"]
    if weighted:
        table = table.append_column("w", pa.array(w))
        rows = [(*row, float(weight)) for row, weight in zip(rows, w, strict=True)]
        columns.append("w")
    frame = spark.spark.createDataFrame(rows, columns)
    mllib = ClusteringEvaluator(distanceMeasure="cosine",
                                **({"weightCol": "w"} if weighted else {})).evaluate(frame)
    euclidean = measured(table, 1, weight="w" if weighted else None)["silhouette"]
    assert euclidean != pytest.approx(mllib, abs=1e-3)  # the measure matters here
    want = cosine_reference(X, labels, w)
    if not weighted:
        assert want == pytest.approx(silhouette_score(X, labels, metric="cosine"), abs=1e-12)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    ones = np.ones(len(X)) if w is None else w
    within = 0.0
    for c in set(labels.tolist()):
        mean = np.average(U[labels == c], axis=0, weights=ones[labels == c])
        within += ones[labels == c] @ (1.0 - U[labels == c] @ (mean / np.linalg.norm(mean)))
    for parts in (1, 3, 7):
        got = measured(table, parts, seed=parts, distance_measure="cosine",
                       weight="w" if weighted else None)
        assert got["silhouette"] == pytest.approx(mllib, abs=1e-9)
        assert got["silhouette"] == pytest.approx(want, abs=1e-12)
        assert got["within_ss"] == pytest.approx(within, rel=1e-12)
        assert set(got) == {"silhouette", "within_ss", "count", "clusters", "cluster_sizes"}


def test_cosine_any_array_namespace() -> None:
    from operators.arrays import get_namespace

    X, labels = directions(2)
    table = table_of(X, labels)
    strict = fit(EvaluateClusters(distance_measure="cosine"), split(table, 3, seed=1),
                 get_namespace("array_api_strict")).metrics
    want = measured(table, 3, seed=1, distance_measure="cosine")
    assert strict["cluster_sizes"] == want["cluster_sizes"]
    for name in ("silhouette", "within_ss"):
        assert strict[name] == pytest.approx(want[name], rel=1e-12), name


def test_cosine_refuses_euclidean_indices_and_zero_rows() -> None:
    with pytest.raises(ParamError, match="calinski_harabasz, davies_bouldin measure "
                                         "Euclidean distances, and distance_measure is cosine"):
        EvaluateClusters(distance_measure="cosine",
                         metrics=["silhouette", "calinski_harabasz", "davies_bouldin"])
    X, labels = directions()
    X[7] = 0.0
    with pytest.raises(DataError, match=r"evaluate_clusters \(cosine\): 1 rows have every "
                                        r"feature 0 \(a, b, c\)"):
        measured(table_of(X, labels), 3, seed=3, distance_measure="cosine")
    assert measured(table_of(X, labels), 1)["count"] == len(X)  # squared Euclidean: a point


def test_cosine_after_a_cosine_kmeans_in_a_pipeline(workdir: Path) -> None:
    """A cosine kmeans' clusters measured by evaluate_clusters' cosine silhouette (the
    run record: scikit-learn's silhouette_score(metric="cosine") of the scored rows);
    asking it for a Euclidean index is a plan-time problem naming the file, line and
    step; a row of zeros stops the run, naming the step and the columns."""
    import pyarrow.parquet as pq

    X, _ = directions(3)
    (workdir / "data").mkdir()
    rows = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]})
    pq.write_table(rows, workdir / "data" / "p.parquet")
    text = """
        pipeline: segments
        steps:
          - op: read_parquet
            path: data
          - op: kmeans
            k: 3
            distance_measure: cosine
          - id: quality
            op: evaluate_clusters
            distance_measure: cosine{extra}
    """
    from operators.models.kmeans import KMeans

    figures = run(write_pipeline(workdir, text.format(extra="")))["metrics"]["quality"]
    assert figures["clusters"] == 3 and "davies_bouldin" not in figures
    model = fit(KMeans(k=3, distance_measure="cosine"), [rows])  # the step's own fit
    labels = model.transform(rows, NUMPY).column("prediction").to_numpy()
    assert figures["silhouette"] == pytest.approx(silhouette_score(X, labels, metric="cosine"),
                                                  rel=1e-9)
    pipeline = write_pipeline(workdir, text.format(
        extra="\n            metrics: [silhouette, davies_bouldin]"))
    with pytest.raises(ValidationFailed) as info:
        run(pipeline)
    problem = str(info.value.problems[0])
    assert f"{pipeline}:11: step 'quality' (evaluate_clusters)" in problem, problem
    assert "metrics: davies_bouldin measures Euclidean distances" in problem
    X[11] = 0.0
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}),
                   workdir / "data" / "p.parquet")
    with pytest.raises(Exception, match=r"kmeans \(cosine\): 1 rows have every feature 0 "
                                        r"\(a, b, c\)") as err:
        run(write_pipeline(workdir, text.format(extra="")))
    assert "step" in str(err.value) and "filter those rows out" in str(err.value)


@pytest.mark.parametrize("parts", [1, 4])
@pytest.mark.parametrize("cosine", [False, True])
def test_a_sparse_term_column_is_measured_as_its_terms(parts: int, cosine: bool) -> None:
    """A TF-IDF sparse column (vectorize_text sparse: true) as the features: the same
    figures as scikit-learn's on its CSR matrix and as the term columns' (its rows made
    dense in the step's matrix, within the memory share); it was refused at plan."""
    from operators.features.text import VectorizeText
    from operators.sparse import csr_matrix, sparse_names
    from tests.operators.test_text import corpus

    docs = [d or "empty" for d in corpus(600, 3)]
    texts = pa.table({"text": docs})
    words = fit(VectorizeText(columns=["text"], sparse=True, min_df=2, norm="l2"), [texts])
    terms = words.transform(texts, None)
    names = sparse_names(terms.schema.field("text"))
    X = csr_matrix(terms, names)
    labels = np.asarray(X[:, : len(names) // 3].sum(axis=1)).ravel().argsort().argsort() % 4
    table = terms.append_column("prediction", pa.array(labels))
    params = {"distance_measure": "cosine"} if cosine else {}
    got = measured(table, parts, seed=parts, features=["text"], **params)
    dense = pa.table({**{n: X[:, j].toarray().ravel() for j, n in enumerate(names)},
                      "prediction": labels})
    same = measured(dense, parts, seed=parts, features=names, **params)
    for name, value in same.items():
        assert value == pytest.approx(got[name], rel=1e-12, abs=1e-12), name
    if cosine:
        assert got["silhouette"] == pytest.approx(
            silhouette_score(X, labels, metric="cosine"), rel=1e-9)
        return
    want = {"silhouette": silhouette_score(X.toarray(), labels, metric="sqeuclidean"),
            "calinski_harabasz": calinski_harabasz_score(X.toarray(), labels),
            "davies_bouldin": davies_bouldin_score(X.toarray(), labels)}
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9), name


def with_regions(X: np.ndarray, labels: np.ndarray, seed: int = 0) -> pa.Table:
    """``table_of`` with a region to group by (a null region among them; 'west' holds 12
    rows all of cluster 1) and a positive weight."""
    rng = np.random.default_rng(seed)
    region = np.array(["east", "north", "south"])[rng.integers(0, 3, len(X))].astype(object)
    region[rng.random(len(X)) < 0.05] = None
    region[np.flatnonzero(labels == 1)[:12]] = "west"
    return table_of(X, labels).append_column("region", pa.array(region, pa.string())) \
        .append_column("w", pa.array(rng.uniform(0.5, 2.0, len(X))))


def assert_same_figures(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name
        else:
            assert got[name] == value, name


def assert_references(figures: dict[str, Any], X: np.ndarray, labels: np.ndarray) -> None:
    """scikit-learn's figures of a group's rows: Davies-Bouldin to 1e-7, as scikit-learn
    measures the means' distances by expanding |a - b|^2, which loses up to 1e-8 in a
    group whose means are 1e3 apart (ours agree with 40-digit arithmetic to the last bit)."""
    for name, value in reference(X, labels).items():
        rel = 1e-7 if name == "davies_bouldin" else 1e-12
        assert figures[name] == pytest.approx(value, rel=rel), name


BY_CASES = {"squared": {}, "weighted": {"weight": "w"}, "cosine": {"distance_measure": "cosine"}}


@pytest.mark.parametrize("parts", [1, 3, 7])
@pytest.mark.parametrize("how", sorted(BY_CASES))
def test_by_gives_each_group_the_figures_of_its_rows_alone(parts: int, how: str) -> None:
    """`by: [region]`, as evaluate's: each region's figures are those of its rows measured
    alone (scikit-learn's too, squared Euclidean), on any partitioning; the overall ones
    are those without `by`; a null region is a group of its own, named last; a region of
    one cluster has no silhouette, Calinski-Harabasz or Davies-Bouldin (NaN), where all
    the rows' would be an error."""
    X, labels = blobs(6)
    table = with_regions(X, labels)
    params = {"features": ["a", "b", "c"], **BY_CASES[how]}
    got = measured(table, parts, seed=parts, by=["region"], **params)
    groups = got.pop("groups")
    assert_same_figures(got, measured(table, **params))
    assert list(groups) == ["region=east", "region=north", "region=south", "region=west",
                            "region=null"]
    regions = table.column("region").to_pylist()
    for label, figures in groups.items():
        value = label.split("=")[1]
        mask = np.array([r is None if value == "null" else r == value for r in regions])
        if value == "west":
            assert figures["clusters"] == 1 and figures["cluster_sizes"] == {"1": 12}
            assert all(np.isnan(figures[m]) for m in
                       ("silhouette", "calinski_harabasz", "davies_bouldin") if m in figures)
            continue
        assert_same_figures(figures, measured(table.filter(pa.array(mask)), **params))
        if how == "squared":
            assert_references(figures, X[mask], labels[mask])
    assert sum(g["count"] for g in groups.values()) == len(X)


def test_by_two_columns_and_its_errors() -> None:
    X, labels = blobs(7)
    table = with_regions(X, labels).append_column(
        "flag", pa.array(np.arange(len(X)) % 2 == 0)).append_column(
        "id", pa.array([str(i) for i in range(len(X))]))
    got = measured(table, 3, features=["a", "b", "c"], by=["region", "flag"],
                   metrics=["count", "calinski_harabasz"])
    assert list(got["groups"])[:2] == ["region=east,flag=false", "region=east,flag=true"]
    assert got["groups"]["region=west,flag=true"]["count"] == 6
    with pytest.raises(DataError, match="evaluate_clusters by id: more than 100 groups") as info:
        measured(table, 3, features=["a", "b", "c"], by=["id"], max_groups=100)
    assert "raise max_groups" in info.value.hint
    with pytest.raises(SchemaError, match="by column 'w' is double: groups need distinct"):
        EvaluateClusters(by=["w"]).output_schema(table.schema)
    with pytest.raises(SchemaError, match="by column 'regoin' not in the input; did you mean "
                                          "'region'"):
        EvaluateClusters(by=["regoin"]).output_schema(table.schema)
    with pytest.raises(ParamError, match="'region' is listed twice in `by`"):
        EvaluateClusters(by=["region", "region"])
    assert EvaluateClusters(features=["a"], by=["region"]).input_columns(table.schema) == [
        "a", "prediction", "region"]


def test_by_on_every_engine_and_layout(workdir: Path, engine: Any) -> None:
    """`by` through local, Dask and Spark over 6 files of small row groups: the local
    engine's figures of one file, group by group, and scikit-learn's of each region."""
    X, labels = blobs(8)
    table = with_regions(X, labels, seed=8)
    figures = engine_figures(workdir, engine, table, "features: [a, b, c]\n"
                                                     "                by: [region]")
    assert list(figures["many"]["groups"]) == list(figures["one"]["groups"])
    for label, want in figures["one"]["groups"].items():
        assert_same_figures(figures["many"]["groups"][label], want)
    regions = table.column("region").to_pylist()
    for value in ("east", "north", "south"):
        mask = np.array([r == value for r in regions])
        assert_references(figures["many"]["groups"][f"region={value}"], X[mask], labels[mask])
    assert np.isnan(figures["many"]["groups"]["region=west"]["silhouette"])
