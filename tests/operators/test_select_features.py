"""select_features against scikit-learn's univariate tests and selectors, over
in-memory partitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.feature_selection import (
    SelectFdr,
    SelectFpr,
    SelectFwe,
    SelectKBest,
    SelectPercentile,
    VarianceThreshold,
    chi2,
    f_classif,
    f_regression,
)

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.features.select_features import SelectedFeatures, SelectFeatures
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")
D = 12


def fit_state(op: SelectFeatures, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[SelectedFeatures, dict[str, Any]]:
    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], op.combine)

    state, _ = drive(op, parts[0].schema, aggregate)
    return op.fitted(state), state


def data(kind: str, rows: int = 800, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 features of which a few carry the label (classes, or a number), far from the
    origin for the continuous tests; integer weights 0-3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    if kind == "chi2":
        X = rng.poisson(1.0 + np.outer(y, np.linspace(0, 1.5, D) ** 3), (rows, D)).astype(float)
    else:
        X = rng.standard_normal((rows, D)) + np.outer(y, np.linspace(0, 0.3, D) ** 2) + 1e4
    target = y.astype(float) if kind != "f_regression" else X[:, :4] @ [0.5, 0.1, 0.02, 0.0] \
        + rng.standard_normal(rows)
    return X, target, rng.integers(0, 4, rows).astype(float)


def table_of(X: np.ndarray, y: np.ndarray, w: np.ndarray | None, classes: bool) -> pa.Table:
    columns: dict[str, Any] = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    columns["y"] = pa.array(y.astype(np.int64)) if classes else y
    if w is not None:
        columns["w"] = w
    return pa.table(columns)


SCORES = {"anova": f_classif, "chi2": chi2, "f_regression": f_regression}


@pytest.mark.parametrize("test", ["anova", "chi2", "f_regression"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_statistics_and_p_values_are_scikit_learns(test: str, weighted: bool,
                                                    parts: int) -> None:
    X, y, w = data(test, seed=parts)
    table = table_of(X, y, w if weighted else None, test != "f_regression")
    params: dict[str, Any] = {"label": "y", "test": test, "k": 3}
    if weighted:
        params["weight"] = "w"
    op = SelectFeatures(**params)
    _, state = fit_state(op, split(table, parts, seed=parts))
    if weighted:  # as repeated rows
        X, y = np.repeat(X, w.astype(int), axis=0), np.repeat(y, w.astype(int))
    if test != "chi2":
        # the tests are unchanged by a shift; scikit-learn's sums of squares lose ~1e-4
        # of F at 1e4 from the origin (measured), sluice's centred sums nothing
        X = X - 1e4
    statistic, p_value = SCORES[test](X, y)
    np.testing.assert_allclose(state["statistic"], statistic, rtol=1e-9)
    np.testing.assert_allclose(state["p_value"], p_value, rtol=1e-6, atol=1e-300)
    want = SelectKBest(SCORES[test], k=3).fit(X, y).get_support()
    assert set(state["kept"]) == {f"f{j}" for j in np.flatnonzero(want)}


@pytest.mark.parametrize(("params", "selector"), [
    ({"k": 5}, SelectKBest(f_classif, k=5)),
    ({"percentile": 30}, SelectPercentile(f_classif, percentile=30)),
    ({"percentile": 25}, SelectPercentile(f_classif, percentile=25)),
    ({"fpr": 0.01}, SelectFpr(f_classif, alpha=0.01)),
    ({"fdr": 0.05}, SelectFdr(f_classif, alpha=0.05)),
    ({"fwe": 0.05}, SelectFwe(f_classif, alpha=0.05)),
])
def test_each_rule_keeps_what_scikit_learns_selector_keeps(params: dict[str, Any],
                                                          selector: Any) -> None:
    X, y, _ = data("anova", seed=4)
    table = table_of(X, y, None, True)
    model, state = fit_state(SelectFeatures(label="y", **params), split(table, 4))
    want = [f"f{j}" for j in np.flatnonzero(selector.fit(X - 1e4, y).get_support())]
    assert sorted(state["kept"]) == sorted(want) and 0 < len(want) < D
    # the fitted step drops the others, keeps every other column, in its order
    out = model.transform(table, NUMPY)
    assert out.column_names == [c for c in table.column_names
                                if not c.startswith("f") or c in want]
    assert model.output_schema(table.schema) == out.schema
    assert roundtrip(model).transform(table, NUMPY).equals(out)
    # rows without the dropped features (scoring rows of a saved model) pass too
    assert model.transform(table.select(want), NUMPY).column_names == want


def test_variance_is_variance_threshold_and_needs_no_label() -> None:
    X, _, w = data("anova")
    X[:, 3] = 7.0
    X[:, 5] = 1e4 + (np.arange(len(X)) % 2) * 1e-3  # tiny, not zero, far from the origin
    table = table_of(X, np.zeros(len(X)), w, True).drop_columns(["y"])
    _, state = fit_state(SelectFeatures(), split(table.drop_columns(["w"]), 3))
    sk = VarianceThreshold().fit(X)
    np.testing.assert_allclose(state["statistic"], sk.variances_, rtol=1e-9, atol=1e-18)
    assert state["kept"][-1:] != ["f3"] and "f3" not in state["kept"] and "f5" in state["kept"]
    _, weighted = fit_state(SelectFeatures(weight="w", min_variance=0.5), split(table, 3))
    repeated = np.repeat(X, w.astype(int), axis=0)
    np.testing.assert_allclose(weighted["statistic"], repeated.var(axis=0), rtol=1e-9,
                               atol=1e-18)
    assert set(weighted["kept"]) == {f"f{j}" for j in range(D)
                                     if repeated[:, j].var() > 0.5}


def test_strict_namespace_equals_numpy() -> None:
    for test in ("anova", "chi2", "f_regression"):
        X, y, w = data(test)
        table = table_of(X, y, w, test != "f_regression")
        op = SelectFeatures(label="y", test=test, weight="w", k=4)
        _, a = fit_state(op, split(table, 3))
        _, b = fit_state(op, split(table, 3), STRICT)
        np.testing.assert_allclose(b["statistic"], a["statistic"], rtol=1e-12)
        assert a["kept"] == b["kept"]


def test_record_ranks_the_features() -> None:
    X, y, _ = data("anova")
    op = SelectFeatures(label="y", k=2)
    _, state = fit_state(op, split(table_of(X, y, None, True), 2))
    metrics = op.metrics(state)
    assert metrics["test"] == "anova" and metrics["dropped"] == D - 2
    ranked = list(metrics["statistic"])
    assert metrics["kept"] == ranked[:2]
    assert list(metrics["statistic"].values()) == sorted(metrics["statistic"].values(),
                                                         reverse=True)
    assert set(metrics["p_value"]) == set(ranked)


def test_errors_say_what_and_how() -> None:
    X, y, _ = data("anova")
    table = table_of(X, y, None, True)
    with pytest.raises(ParamError, match="say which features to keep"):
        SelectFeatures(label="y")
    with pytest.raises(ParamError, match="k and fdr both say"):
        SelectFeatures(label="y", k=2, fdr=0.1)
    with pytest.raises(ParamError, match="fpr needs p-values"):
        SelectFeatures(fpr=0.1)
    with pytest.raises(ParamError, match="min_variance is test variance's"):
        SelectFeatures(label="y", test="anova", min_variance=1.0)
    with pytest.raises(ParamError, match="test chi2 needs a label"):
        SelectFeatures(test="chi2", k=2)
    with pytest.raises(ParamError, match="k is 20, but there are 12 features"):
        fit_state(SelectFeatures(label="y", k=20), split(table, 2))
    floats = table.set_column(table.schema.get_field_index("y"), "y", pa.array(y + 0.5))
    with pytest.raises(SchemaError, match="test anova needs classes"):
        SelectFeatures(label="y", test="anova", k=2).output_schema(floats.schema)
    negative = table.set_column(0, "f0", pa.array(X[:, 0] - 2e4))
    with pytest.raises(DataError, match="test chi2 takes counts"):
        fit_state(SelectFeatures(label="y", test="chi2", k=2), split(negative, 2))
    # on a device (array_api_strict's non-default one, as CuPy's): the same error, where
    # the column's flags were taken to the host without leaving the device first
    import array_api_strict

    device = get_namespace("array_api_strict", array_api_strict.Device("device1"))
    with pytest.raises(DataError, match="feature column 'f0' has negative values"):
        fit_state(SelectFeatures(label="y", test="chi2", k=2), split(negative, 2), device)
    noise = table_of(np.random.default_rng(1).standard_normal((400, D)),
                     np.random.default_rng(2).integers(0, 2, 400).astype(float), None, True)
    with pytest.raises(DataError, match=r"keeps no feature by fwe: 1e-06 \(test anova; the "
                                        r"best is 'f\d+', p-value"):
        fit_state(SelectFeatures(label="y", fwe=1e-6), split(noise, 2))
    one = table_of(X, np.zeros(len(X)), None, True)
    with pytest.raises(DataError, match="single class"):
        fit_state(SelectFeatures(label="y", k=2), split(one, 2))


@pytest.mark.parametrize(("test", "feature_type", "label_type"), [
    ("anova", "continuous", "categorical"), ("f_regression", "continuous", "continuous")])
def test_same_features_as_mllibs_univariate_selector(spark: Any, test: str, feature_type: str,
                                                     label_type: str) -> None:
    """MLlib's UnivariateFeatureSelector (numTopFeatures 4) keeps the same features. (Its
    chi-squared selector tests each feature's values as categories, a contingency table:
    another test than scikit-learn's chi2 of counts, which sluice's is.)"""
    from pyspark.ml.feature import UnivariateFeatureSelector, VectorAssembler

    X, y, _ = data(test, rows=500)
    X = X - 1e4
    names = [f"f{j}" for j in range(D)]
    frame = spark.spark.createDataFrame([tuple(map(float, row)) + (float(t),)
                                         for row, t in zip(X, y)], [*names, "label"])
    frame = VectorAssembler(inputCols=names, outputCol="features").transform(frame)
    selector = UnivariateFeatureSelector(featuresCol="features", labelCol="label",
                                         selectionMode="numTopFeatures")
    selector.setFeatureType(feature_type).setLabelType(label_type).setSelectionThreshold(4)
    theirs = {names[i] for i in selector.fit(frame).selectedFeatures}
    _, state = fit_state(SelectFeatures(label="y", test=test, k=4),
                         split(table_of(X, y, None, test != "f_regression"), 3))
    assert set(state["kept"]) == theirs


@pytest.mark.parametrize("op", ["select_features", "logistic_regression", "naive_bayes",
                                "gradient_boosted_trees"])
def test_an_empty_features_list_is_refused_at_its_name(op: str) -> None:
    """features: [] said "no numeric feature columns in the input" at the step's line,
    as if the input lacked them; an empty list is the mistake, named."""
    from operators.base import lookup

    params: dict[str, Any] = {"label": "y", "features": []}
    if op == "select_features":
        params["k"] = 2
    with pytest.raises(ParamError, match="features: an empty list"):
        lookup(op)(**params)


@pytest.mark.parametrize("parts", [1, 3, 7])
@pytest.mark.parametrize("weighted", [False, True])
def test_a_constant_feature_has_no_spread_whatever_its_value(parts: int, weighted: bool
                                                             ) -> None:
    """A column of 0.1 (or 1e10 + 0.1) everywhere: its mean is the value exactly, not a
    rounding of it, so variance 0 (dropped by min_variance 0, as VarianceThreshold), and
    anova's and f_regression's F 0 and p-value 1, ranked below every real feature (the
    rounding noise of its sums of squares made F of 100+, the best of the features)."""
    X, y, w = data("anova", seed=parts)
    w[0] = 0.0  # a row of weight 0 (its value counts for nothing)
    X[:, 2], X[:, 7] = 0.1, 1e10 + 0.1
    X[0, 2] = 5.0  # on the row of weight 0 only: constant where the weights are
    constant = ["f2", "f7"] if weighted else ["f7"]
    weight = {"weight": "w"} if weighted else {}
    table = table_of(X, y, w if weighted else None, True)
    _, state = fit_state(SelectFeatures(**weight), split(table.drop_columns(["y"]), parts,
                                                          seed=parts))
    features = state["features"]
    assert [f for f in features if state["statistic"][features.index(f)] == 0] == constant
    assert not set(constant) & set(state["kept"])
    for test in ("anova", "f_regression"):
        labelled = table if test == "anova" else table.set_column(
            table.schema.get_field_index("y"), "y", pa.array(y + X[:, 0] * 0.1))
        _, state = fit_state(SelectFeatures(label="y", test=test, k=D - 2, **weight),
                             split(labelled, parts, seed=parts))
        at = [features.index(f) for f in constant]
        assert (state["statistic"][at] == 0).all() and (state["p_value"][at] == 1).all()
        assert not set(constant) & set(state["kept"])


@pytest.mark.parametrize("test", ["anova", "chi2"])
def test_a_class_of_rows_of_weight_0_only_is_no_class(test: str) -> None:
    """A row of weight w is w copies: a class whose rows all weigh 0 is not in the data,
    and not among the k classes of the degrees of freedom (it made anova's F and both
    p-values another test's)."""
    X, y, w = data(test, seed=3)
    y[:6], w[:6] = 7.0, 0.0
    table = table_of(X, y, w, True)
    _, state = fit_state(SelectFeatures(label="y", test=test, weight="w", k=3),
                         split(table, 3))
    repeated = np.repeat(X if test == "chi2" else X - 1e4, w.astype(int), axis=0)
    statistic, p_value = SCORES[test](repeated, np.repeat(y, w.astype(int)))
    np.testing.assert_allclose(state["statistic"], statistic, rtol=1e-9)
    np.testing.assert_allclose(state["p_value"], p_value, rtol=1e-6, atol=1e-300)


def test_percentile_keeps_a_feature_of_infinite_f() -> None:
    """A feature constant within each class (the class's own code) has F = inf; the
    percentile's interpolation between it and the next (4 + (inf - 4) x 0) was NaN, and
    no feature was above NaN: 'keeps no feature'. percentile: 25 of 5 keeps the best."""
    X, y, _ = data("anova", seed=2)
    X = X[:, :5]
    X[:, 3] = y
    table = table_of(X, y, None, True)
    _, state = fit_state(SelectFeatures(label="y", percentile=25), split(table, 2))
    assert np.isinf(state["statistic"][3])
    assert state["kept"] == ["f3"]
    _, best = fit_state(SelectFeatures(label="y", k=1), split(table, 2))
    assert best["kept"] == ["f3"]


def test_too_few_rows_for_the_degrees_of_freedom_are_said() -> None:
    """anova of as many rows as classes, f_regression of two rows: no degrees of freedom
    are left (n - k, n - 2), F is 0 / 0; it was NaN for every feature, with NumPy's
    RuntimeWarning on the terminal, and the features 'kept' were any."""
    table = pa.table({"a": [1.0, 2.0], "b": [3.0, 3.5], "y": [0, 1]})
    with pytest.raises(DataError, match=r"test anova needs more rows than classes: 2 rows "
                                        r"\(their total weight\) of 2 classes") as info:
        fit_state(SelectFeatures(label="y", k=1), [table])
    assert "more rows" in (info.value.hint or "")
    numeric = table.set_column(2, "y", pa.array([0.0, 1.0]))
    with pytest.raises(DataError, match=r"test f_regression needs more than 2 rows: 2 rows "
                                        r"\(their total weight\)"):
        fit_state(SelectFeatures(label="y", k=1), [numeric])
