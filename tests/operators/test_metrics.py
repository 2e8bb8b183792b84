"""MetricAccumulator against scikit-learn's metrics, over any partitioning."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_gamma_deviance,
    mean_pinball_loss,
    mean_poisson_deviance,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from operators.arrays import get_namespace
from operators.base import DataError, ParamError
from operators.evaluate.metrics import (
    AUC_BINS,
    CLASSIFICATION_METRICS,
    DEFAULT_METRICS,
    REGRESSION_METRICS,
    MetricAccumulator,
    auc,
    auc_bin_error_bound,
)

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")
AUC_TOL = 1e-4  # the stated bound of the binned roc_auc on these scores
PARTITIONINGS = ["one", "contiguous", "shuffled", "by-label"]


def partitions(n: int, how: str, y: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each partition: one, 7 contiguous (with an empty one), 5 shuffled
    pieces in shuffled order, or sorted by label (most see only some classes)."""
    rng = np.random.default_rng(seed)
    if how == "one":
        return [np.arange(n)]
    if how == "contiguous":
        return [np.arange(0), *np.array_split(np.arange(n), 6)]
    if how == "shuffled":
        pieces = np.array_split(rng.permutation(n), 5)
        return [pieces[i] for i in rng.permutation(len(pieces))]
    return np.array_split(np.argsort(y, kind="stable"), 9)


def accumulate(acc: MetricAccumulator, parts: list[np.ndarray], y: np.ndarray, pred: np.ndarray,
               proba: np.ndarray | None = None, weight: np.ndarray | None = None,
               xp: object = NUMPY) -> dict:
    stats = [acc.partial(y[i], pred[i], None if proba is None else proba[i],
                         None if weight is None else weight[i], xp=xp) for i in parts]
    total = stats[0]
    for s in stats[1:]:
        total = acc.combine(total, s)
    return acc.finalize(total)


def close(actual: float, expected: float, tol: float = 1e-12) -> None:
    assert actual == pytest.approx(expected, rel=tol, abs=tol)


# --------------------------------------------------------------------------- data


def binary_data(n: int = 3000, seed: int = 0, labels: tuple = (0, 1)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + 0.7 * rng.random(n), 0.0, 1.0)
    names = np.array(labels)
    return names[y], names[(score > 0.5).astype(int)], score, rng.random(n) * 2


def multiclass_data(n: int = 3000, seed: int = 1, k: int = 4, never_predicted: bool = True):
    rng = np.random.default_rng(seed)
    names = np.array([f"class-{c}" for c in "abcdefgh"[:k]])
    y = rng.integers(0, k, n)
    # informative but imperfect: the label's column gets a head start
    proba = 0.5 * np.eye(k)[y] + 0.5 * rng.dirichlet(np.ones(k) * 0.5, n)
    # the last class is never the prediction
    pred = proba[:, :-1].argmax(axis=1) if never_predicted else proba.argmax(axis=1)
    return names[y], names[pred], proba, rng.random(n) * 2, names


def regression_data(n: int = 3000, seed: int = 2):
    rng = np.random.default_rng(seed)
    y = 1000.0 + 5 * rng.standard_normal(n)
    return y, y + rng.standard_normal(n), rng.random(n) * 2


# --------------------------------------------------------------------------- regression


@pytest.mark.parametrize("how", PARTITIONINGS)
@pytest.mark.parametrize("weighted", [False, True])
def test_regression_matches_sklearn(how: str, weighted: bool) -> None:
    y, pred, w = regression_data()
    w = w if weighted else None
    got = accumulate(MetricAccumulator("regression", REGRESSION_METRICS),
                     partitions(len(y), how, y), y, pred, None, w)
    mse = mean_squared_error(y, pred, sample_weight=w)
    close(got["mse"], mse)
    close(got["rmse"], math.sqrt(mse))
    close(got["mae"], mean_absolute_error(y, pred, sample_weight=w))
    close(got["r2"], r2_score(y, pred, sample_weight=w))
    assert got["count"] == len(y)
    close(got["poisson_deviance"], mean_poisson_deviance(y, pred, sample_weight=w), 1e-9)
    close(got["gamma_deviance"], mean_gamma_deviance(y, pred, sample_weight=w), 1e-9)


@pytest.mark.parametrize("how", PARTITIONINGS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.05])
def test_pinball_loss_and_coverage_of_a_quantile(how: str, weighted: bool,
                                                 quantile: float) -> None:
    y, pred, w = regression_data()
    pred[::7] = y[::7]  # ties: covered
    w = w if weighted else None
    got = accumulate(MetricAccumulator("regression", ["pinball_loss", "coverage"],
                                       quantile=quantile),
                     partitions(len(y), how, y), y, pred, None, w)
    close(got["pinball_loss"], mean_pinball_loss(y, pred, sample_weight=w, alpha=quantile))
    weights = np.ones(len(y)) if w is None else w
    close(got["coverage"], weights[y <= pred].sum() / weights.sum())
    assert "pinball_loss" not in DEFAULT_METRICS["regression"]  # on request only


def test_deviances_of_counts_and_where_they_are_not_defined() -> None:
    rng = np.random.default_rng(4)
    mean = np.exp(rng.uniform(-1, 2, 500))
    counts = rng.poisson(mean).astype(float)
    assert (counts == 0).any()
    acc = MetricAccumulator("regression", ["poisson_deviance", "rmse"])
    got = acc.finalize(acc.combine(acc.partial(counts[:200], mean[:200], None, None),
                                   acc.partial(counts[200:], mean[200:], None, None)))
    close(got["poisson_deviance"], mean_poisson_deviance(counts, mean), 1e-9)
    with pytest.raises(DataError, match="poisson_deviance needs labels >= 0 and predictions"):
        acc.finalize(acc.partial(counts, mean - 5.0, None, None))
    gamma = MetricAccumulator("regression", ["gamma_deviance"])
    with pytest.raises(DataError, match="gamma_deviance needs labels > 0"):
        gamma.finalize(gamma.partial(counts, mean, None, None))
    assert "poisson_deviance" not in DEFAULT_METRICS["regression"]  # on request only


def test_regression_constant_label_r2_as_sklearn() -> None:
    y = np.full(10, 3.0)
    acc = MetricAccumulator("regression", ["r2"])
    for pred in (y.copy(), y + 1):
        got = acc.finalize(acc.partial(y, pred, None, None))
        assert got["r2"] == r2_score(y, pred)


def test_regression_default_metrics() -> None:
    y, pred, _ = regression_data(50)
    acc = MetricAccumulator("regression")
    assert sorted(acc.finalize(acc.partial(y, pred, None, None))) == sorted(
        DEFAULT_METRICS["regression"])


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize("how", PARTITIONINGS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("labels", [(0, 1), ("no", "yes")], ids=["int", "str"])
def test_binary_matches_sklearn(how: str, weighted: bool, labels: tuple) -> None:
    y, pred, score, w = binary_data(labels=labels)
    w = w if weighted else None
    acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
    got = accumulate(acc, partitions(len(y), how, y), y, pred, score, w)
    positive = labels[1]
    close(got["accuracy"], accuracy_score(y, pred, sample_weight=w))
    close(got["log_loss"], log_loss(y, y_proba=score, sample_weight=w))
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        close(got[name], fn(y, pred, pos_label=positive, average="binary", sample_weight=w))
    np.testing.assert_allclose(got["confusion_matrix"],
                               confusion_matrix(y, pred, sample_weight=w), rtol=1e-12)
    assert got["classes"] == list(labels)
    assert got["count"] == len(y)
    exact = roc_auc_score(y, score, sample_weight=w)
    positives = score[y == positive]
    bound = auc_bin_error_bound(*_binned(positives, w[y == positive] if weighted else None),
                                *_binned(score[y != positive],
                                         w[y != positive] if weighted else None))
    assert abs(got["roc_auc"] - exact) <= bound + 1e-12
    assert abs(got["roc_auc"] - exact) <= AUC_TOL
    ap = average_precision_score(y, score, pos_label=positive, sample_weight=w)
    assert abs(got["pr_auc"] - ap) <= AUC_TOL


def _binned(scores: np.ndarray, weight: np.ndarray | None) -> tuple[np.ndarray]:
    bins = np.floor(scores * AUC_BINS + 0.5).astype(int)
    return (np.bincount(bins, weight, minlength=AUC_BINS + 1),)


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_auc_exact_when_scores_lie_on_the_grid(weighted: bool) -> None:
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.integers(0, 2, n)
    # few distinct grid points: many ties, all counted exactly
    score = np.clip(rng.integers(0, 600, n) + 200 * y, 0, AUC_BINS) / AUC_BINS
    w = rng.random(n) if weighted else None
    acc = MetricAccumulator("classification", ["roc_auc", "pr_auc"])
    got = accumulate(acc, partitions(n, "shuffled", y), y, y, score, w)
    close(got["roc_auc"], roc_auc_score(y, score, sample_weight=w))
    close(got["pr_auc"], average_precision_score(y, score, sample_weight=w))


def test_pr_auc_of_a_rare_positive_class() -> None:
    """Where it tells more than roc_auc: 2% positives, a model that ranks them well."""
    x, y = make_classification(20000, n_features=8, n_informative=4, weights=[0.98],
                               random_state=2)
    score = LogisticRegression().fit(x[:10000], y[:10000]).predict_proba(x[10000:])[:, 1]
    y = y[10000:]
    acc = MetricAccumulator("classification", ["roc_auc", "pr_auc"])
    got = accumulate(acc, partitions(len(y), "shuffled", y), y, (score > 0.5).astype(int),
                     score)
    assert abs(got["pr_auc"] - average_precision_score(y, score)) <= AUC_TOL
    assert got["pr_auc"] < got["roc_auc"]


def test_auc_of_histograms_is_mann_whitney() -> None:
    rng = np.random.default_rng(4)
    positives, negatives = (rng.integers(0, 5, 50).astype(float) for _ in range(2))
    p_scores = np.repeat(np.arange(50), positives.astype(int))
    n_scores = np.repeat(np.arange(50), negatives.astype(int))
    pairs = (p_scores[:, None] > n_scores[None, :]) + 0.5 * (p_scores[:, None] == n_scores[None, :])
    close(auc(positives, negatives), pairs.mean())


def test_roc_auc_on_real_model_scores() -> None:
    x, y = make_classification(4000, n_features=8, n_informative=4, random_state=0)
    score = LogisticRegression().fit(x[:2000], y[:2000]).predict_proba(x[2000:])[:, 1]
    y = y[2000:]
    acc = MetricAccumulator("classification", ["roc_auc", "log_loss"])
    got = accumulate(acc, partitions(len(y), "shuffled", y), y, (score > 0.5).astype(int), score)
    assert abs(got["roc_auc"] - roc_auc_score(y, score)) <= AUC_TOL
    close(got["log_loss"], log_loss(y, y_proba=score))

    x, y = make_classification(4000, n_features=8, n_informative=5, n_classes=3,
                               random_state=1)
    model = LogisticRegression().fit(x[:2000], y[:2000])
    proba, y = model.predict_proba(x[2000:]), y[2000:]
    acc = MetricAccumulator("classification", ["roc_auc"])
    got = accumulate(acc, partitions(len(y), "by-label", y), y, proba.argmax(axis=1), proba)
    assert abs(got["roc_auc"] - roc_auc_score(y, proba, multi_class="ovr")) <= AUC_TOL


# --------------------------------------------------------------------------- multiclass


@pytest.mark.parametrize("how", PARTITIONINGS)
@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_matches_sklearn(how: str, weighted: bool) -> None:
    y, pred, proba, w, names = multiclass_data()
    w = w if weighted else None
    assert names[-1] not in pred  # a class never predicted
    acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
    got = accumulate(acc, partitions(len(y), how, y), y, pred, proba, w)
    close(got["accuracy"], accuracy_score(y, pred, sample_weight=w))
    close(got["log_loss"], log_loss(y, y_proba=proba, sample_weight=w))
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        close(got[name], fn(y, pred, average="macro", sample_weight=w, zero_division=0))
    np.testing.assert_allclose(got["confusion_matrix"],
                               confusion_matrix(y, pred, sample_weight=w), rtol=1e-12)
    assert got["classes"] == names.tolist()
    exact = roc_auc_score(y, proba, multi_class="ovr", average="macro", sample_weight=w)
    assert abs(got["roc_auc"] - exact) <= AUC_TOL
    onehot = (y[:, None] == names[None, :]).astype(int)
    ap = average_precision_score(onehot, proba, average="macro", sample_weight=w)
    assert abs(got["pr_auc"] - ap) <= AUC_TOL


def test_classes_seen_only_in_some_partitions() -> None:
    """Each partition sees a subset of the classes: 'c' only as a prediction of one
    partition, 'd' only as the label of another."""
    rng = np.random.default_rng(5)
    y = np.repeat(["a", "b", "d", "a"], 100)
    pred = np.concatenate([np.full(100, "a"), rng.choice(["b", "c"], 100),
                           np.full(100, "d"), rng.choice(["a", "b"], 100)])
    proba = rng.dirichlet(np.ones(4), 400)
    w = rng.random(400)
    parts = [np.arange(0, 100), np.arange(100, 200), np.arange(200, 300), np.arange(300, 400)]
    labels = ["a", "b", "c", "d"]
    for order in ([0, 1, 2, 3], [2, 0, 3, 1]):
        acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
        got = accumulate(acc, [parts[i] for i in order], y, pred, proba, w)
        close(got["accuracy"], accuracy_score(y, pred, sample_weight=w))
        close(got["log_loss"], log_loss(y, y_proba=proba, labels=labels, sample_weight=w))
        close(got["f1"], f1_score(y, pred, average="macro", sample_weight=w, zero_division=0))
        np.testing.assert_allclose(got["confusion_matrix"],
                                   confusion_matrix(y, pred, sample_weight=w), rtol=1e-12)
        # macro one-vs-rest over the classes that have positives ('c' has none)
        exact = np.mean([roc_auc_score(y == c, proba[:, j], sample_weight=w)
                         for j, c in enumerate(labels) if c in y])
        assert abs(got["roc_auc"] - exact) <= AUC_TOL


def test_explicit_classes_include_a_class_absent_from_the_data() -> None:
    y, pred, proba, _, names = multiclass_data(500, k=4)
    keep = y != names[-1]  # the last class appears neither as label nor as prediction
    y, pred, proba = y[keep], pred[keep], proba[keep]
    acc = MetricAccumulator("classification", CLASSIFICATION_METRICS, classes=list(names[::-1]))
    got = accumulate(acc, partitions(len(y), "shuffled", y), y, pred, proba)
    labels = names.tolist()
    assert got["classes"] == labels
    close(got["f1"], f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    close(got["log_loss"], log_loss(y, y_proba=proba, labels=labels))
    np.testing.assert_array_equal(got["confusion_matrix"], confusion_matrix(y, pred, labels=labels))
    # without classes, 3 classes against 4 probability columns is ambiguous
    learned = MetricAccumulator("classification", ["log_loss"])
    with pytest.raises(DataError, match="classes"):
        accumulate(learned, [np.arange(len(y))], y, pred, proba)


def test_two_column_probability_is_binary() -> None:
    y, pred, score, _ = binary_data(500)
    acc = MetricAccumulator("classification", ["log_loss", "roc_auc"])
    two = accumulate(acc, [np.arange(500)], y, pred, np.stack([1 - score, score], axis=1))
    one = accumulate(acc, [np.arange(500)], y, pred, score)
    assert two == one


def test_single_class_has_nan_auc() -> None:
    y = np.ones(20, dtype=int)
    acc = MetricAccumulator("classification", ["accuracy", "roc_auc", "log_loss"])
    got = acc.finalize(acc.partial(y, y, np.full(20, 0.9), None))
    assert got["accuracy"] == 1.0 and math.isnan(got["roc_auc"]) and math.isnan(got["log_loss"])


# --------------------------------------------------------------------------- laws and kernels


def test_combine_laws_and_identity() -> None:
    y, pred, proba, w, _ = multiclass_data(900)
    acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
    a, b, c = (acc.partial(y[i], pred[i], proba[i], w[i])
               for i in np.array_split(np.argsort(y, kind="stable"), 3))
    left = acc.finalize(acc.combine(acc.combine(a, b), c))
    right = acc.finalize(acc.combine(a, acc.combine(b, c)))
    swapped = acc.finalize(acc.combine(c, acc.combine(b, a)))
    empty = acc.partial(y[:0], pred[:0], proba[:0], w[:0])
    with_empty = acc.finalize(acc.combine(empty, acc.combine(acc.combine(a, b), c)))
    for other in (right, swapped, with_empty):
        for key in ("accuracy", "log_loss", "f1", "roc_auc"):
            close(other[key], left[key])
        np.testing.assert_allclose(other["confusion_matrix"], left["confusion_matrix"])
    assert acc.combine(empty, a) is a and acc.combine(a, empty) is a


def test_regression_combine_identity() -> None:
    y, pred, w = regression_data(100)
    acc = MetricAccumulator("regression")
    a = acc.partial(y, pred, None, w)
    assert acc.combine(acc.empty(), a) == a == acc.combine(a, acc.partial(y[:0], pred[:0],
                                                                          None, w[:0]))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_array_api_strict_matches_numpy(task: str) -> None:
    if task == "regression":
        y, pred, w = regression_data(400)
        proba, acc = None, MetricAccumulator("regression", REGRESSION_METRICS)
    elif task == "binary":
        y, pred, proba, w = binary_data(400)
        acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
    else:
        y, pred, proba, w, _ = multiclass_data(400)
        acc = MetricAccumulator("classification", CLASSIFICATION_METRICS)
    parts = partitions(len(y), "by-label", y)
    expected = accumulate(acc, parts, y, pred, proba, w)
    got = accumulate(acc, parts, y, pred, proba, w, xp=STRICT)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key == "confusion_matrix":
            np.testing.assert_allclose(got[key], value, rtol=1e-12)
        elif isinstance(value, float):
            close(got[key], value)
        else:
            assert got[key] == value, key


def test_stats_are_plain_picklable_data() -> None:
    y, pred, proba, w, _ = multiclass_data(300)
    acc = MetricAccumulator("classification")
    stats = acc.partial(y, pred, proba, w)
    assert acc.finalize(pickle.loads(pickle.dumps(stats))) == acc.finalize(stats)


# --------------------------------------------------------------------------- errors


def test_unknown_metric_suggests_a_close_name() -> None:
    with pytest.raises(ParamError, match="did you mean 'roc_auc'"):
        MetricAccumulator("classification", ["roc_aux"])
    with pytest.raises(ParamError, match="unknown regression metric 'accuracy'"):
        MetricAccumulator("regression", ["accuracy"])


def test_value_outside_explicit_classes() -> None:
    acc = MetricAccumulator("classification", ["accuracy"], classes=["a", "b"],
                            columns=("plan", "prediction"))
    with pytest.raises(DataError, match="plan value 'c' is not one of the classes") as info:
        acc.partial(np.array(["a", "c"]), np.array(["a", "b"]), None, None)
    assert info.value.hint
    with pytest.raises(DataError, match="plan value 0 is not one"):
        acc.partial(np.array([0, 1]), np.array([0, 1]), None, None)


def test_binary_probability_with_three_classes() -> None:
    acc = MetricAccumulator("classification", ["log_loss"])
    a = acc.partial(np.array([0, 1]), np.array([0, 1]), np.array([0.2, 0.7]), None)
    b = acc.partial(np.array([2]), np.array([2]), np.array([0.5]), None)
    with pytest.raises(DataError, match="binary"):
        acc.combine(a, b)


def test_probability_metrics_need_probabilities() -> None:
    y, pred, _, _ = binary_data(50)
    default = MetricAccumulator("classification")
    got = default.finalize(default.partial(y, pred, None, None))
    assert "log_loss" not in got and "roc_auc" not in got and "accuracy" in got
    with pytest.raises(ParamError, match="log_loss"):
        MetricAccumulator("classification", ["log_loss"]).partial(y, pred, None, None)


def test_no_rows_and_zero_weights() -> None:
    acc = MetricAccumulator("classification")
    with pytest.raises(DataError, match="no rows"):
        acc.finalize(acc.empty())
    with pytest.raises(DataError, match="weights sum to zero"):
        acc.finalize(acc.partial(np.array([1, 0]), np.array([1, 1]), None, np.zeros(2)))
