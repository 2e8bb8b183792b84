"""naive_bayes against scikit-learn's GaussianNB, MultinomialNB and BernoulliNB, and
Spark MLlib's NaiveBayes, over in-memory partitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.naive_bayes import BernoulliNB, ComplementNB, GaussianNB, MultinomialNB

from operators.arrays import get_namespace
from operators.base import DataError, SchemaError, drive, tree_reduce
from operators.models.naive_bayes import NaiveBayes, NaiveBayesFitted
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")
FEATURES = ["x0", "x1", "x2", "x3"]


def fit_state(estimator: NaiveBayes, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[NaiveBayesFitted, dict[str, Any]]:
    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), state


def data(kind: str, rows: int = 900, classes: int = 3, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features a class shifts (far from the origin for gaussian: Chan's combine keeps the
    digits), string class labels, integer weights 0-3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    if kind == "gaussian":
        X = rng.standard_normal((rows, 4)) * [1.0, 3.0, 0.2, 50.0] + y[:, None] * 0.7 + 1e4
    else:
        X = rng.poisson(1.0 + y[:, None] * [0.5, 0.0, 2.0, 1.0], (rows, 4)).astype(float)
    labels = np.array(["churn", "stay", "upgrade", "z"])[y]
    return X, labels, rng.integers(0, 4, rows).astype(float)


def table_of(X: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
             ) -> pa.Table:
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    columns["y"] = labels
    if weights is not None:
        columns["w"] = weights
    return pa.table(columns)


def sklearn_of(kind: str, X: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
               **params: Any) -> Any:
    """scikit-learn's model; weights as repeated rows (GaussianNB's epsilon is of the
    rows' unweighted variance, sluice's of the weighted one: a row of weight w as w
    copies)."""
    if weights is not None:
        repeat = weights.astype(int)
        X, labels = np.repeat(X, repeat, axis=0), np.repeat(labels, repeat)
    model = {"gaussian": GaussianNB, "multinomial": MultinomialNB,
             "bernoulli": BernoulliNB, "complement": ComplementNB}[kind](**params)
    return model.fit(X, labels)


@pytest.mark.parametrize("kind", ["gaussian", "multinomial", "bernoulli", "complement"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_equal_to_scikit_learn(kind: str, weighted: bool, parts: int) -> None:
    X, labels, weights = data(kind, seed=parts)
    table = table_of(X, labels, weights if weighted else None)
    params: dict[str, Any] = {"label": "y", "features": FEATURES, "model_type": kind}
    if weighted:
        params["weight"] = "w"
    if kind == "bernoulli":
        params["binarize"] = 1.0
    model, _ = fit_state(NaiveBayes(**params), split(table, parts, seed=parts))
    sk = sklearn_of(kind, X, labels, weights if weighted else None,
                    **({"binarize": 1.0} if kind == "bernoulli" else {}))
    assert model.classes == sk.classes_.tolist()
    if kind == "gaussian":
        np.testing.assert_allclose(model.theta, sk.theta_, rtol=1e-12)
        np.testing.assert_allclose(model.var, sk.var_, rtol=1e-9)
        np.testing.assert_allclose(np.exp(model.log_prior), sk.class_prior_, rtol=1e-12)
    else:
        np.testing.assert_allclose(model.feature_log_prob, sk.feature_log_prob_, rtol=1e-12)
        np.testing.assert_allclose(model.log_prior, sk.class_log_prior_, rtol=1e-12)
    out = model.transform(table, NUMPY)
    np.testing.assert_allclose(np.array(out.column("probability").to_pylist()),
                               sk.predict_proba(X), rtol=1e-8, atol=1e-12)
    assert out.column("prediction").to_pylist() == sk.predict(X).tolist()


def test_binary_probability_is_the_second_class_and_bool_labels_keep_their_type() -> None:
    X, labels, _ = data("gaussian", classes=2)
    table = table_of(X, labels == "stay")
    model, _ = fit_state(NaiveBayes(label="y", features=FEATURES), split(table, 2))
    out = model.transform(table, NUMPY)
    sk = GaussianNB().fit(X, labels == "stay")
    assert out.schema.field("prediction").type == pa.bool_()
    assert out.schema.field("probability").type == pa.float64()
    np.testing.assert_allclose(out.column("probability").to_numpy(), sk.predict_proba(X)[:, 1],
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "multinomial", "bernoulli", "complement"])
def test_the_strict_namespace_fits_and_scores_as_numpy(kind: str) -> None:
    """The GPU stand-in: every array op of the fit and the scoring through the array API
    only (a slip into NumPy fails on array_api_strict's arrays)."""
    X, labels, weights = data(kind)
    table = table_of(X, labels, weights)
    params = {"label": "y", "features": FEATURES, "model_type": kind, "weight": "w"}
    ours, _ = fit_state(NaiveBayes(**params), split(table, 3))
    strict, _ = fit_state(NaiveBayes(**params), split(table, 3), STRICT)
    for name, value in ours.arrays().items():
        np.testing.assert_allclose(strict.arrays()[name], value, rtol=1e-12, atol=0)
    a = ours.transform(table, NUMPY)
    b = strict.transform(table, STRICT)
    assert a.column("prediction").equals(b.column("prediction"))
    np.testing.assert_allclose(np.array(b.column("probability").to_pylist()),
                               np.array(a.column("probability").to_pylist()), rtol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "multinomial", "bernoulli", "complement"])
def test_saved_and_loaded_scores_the_same(kind: str) -> None:
    X, labels, _ = data(kind)
    table = table_of(X, labels)
    model, _ = fit_state(NaiveBayes(label="y", features=FEATURES, model_type=kind),
                         split(table, 2))
    again = roundtrip(model)
    assert again.transform(table, NUMPY).equals(model.transform(table, NUMPY))


def test_priors_given_are_the_class_log_priors_as_scikit_learns() -> None:
    X, labels, _ = data("gaussian", classes=2)
    table = table_of(X, labels)
    model, _ = fit_state(NaiveBayes(label="y", features=FEATURES,
                                    priors={"churn": 0.9, "stay": 0.1}), split(table, 3))
    sk = GaussianNB(priors=[0.9, 0.1]).fit(X, labels)
    np.testing.assert_allclose(model.transform(table, NUMPY).column("probability").to_numpy(),
                               sk.predict_proba(X)[:, 1], rtol=1e-8, atol=1e-12)


def test_priors_of_a_boolean_label_are_named_as_yaml_writes_them() -> None:
    """A pipeline file's `priors: {true: 0.3, false: 0.7}` names the classes True and
    False (its keys reach the step as the text written): it was 'priors names class
    'true', which label 'y' does not have (classes: False, True)'."""
    X, labels, _ = data("gaussian", classes=2)
    table = table_of(X, labels == "stay")
    for priors in ({"true": 0.3, "false": 0.7}, {"TRUE": 0.3, "False": 0.7},
                   {True: 0.3, False: 0.7}):
        _, state = fit_state(NaiveBayes(label="y", features=FEATURES, priors=priors),
                             split(table, 2))
        np.testing.assert_allclose(np.exp(state["log_prior"]), [0.7, 0.3], rtol=1e-15)
    with pytest.raises(DataError, match="priors names class 'yes'"):
        fit_state(NaiveBayes(label="y", features=FEATURES, priors={"yes": 0.3, "no": 0.7}),
                  split(table, 2))


def test_held_out_rows_are_scored_into_the_metrics() -> None:
    X, labels, _ = data("gaussian", rows=2000, classes=2)
    table = table_of(X, labels)
    op = NaiveBayes(label="y", features=FEATURES, validation_fraction=0.25, seed=3)
    assert op.multi_pass and not NaiveBayes(label="y").multi_pass
    model, state = fit_state(op, split(table, 4))
    metrics = op.metrics(state)
    validation = metrics["validation"]
    assert metrics["training_rows"] + metrics["validation_rows"] == 2000
    assert validation["count"] == metrics["validation_rows"] > 0
    assert 0.5 < validation["roc_auc"] <= 1.0
    # the training rows alone: scikit-learn fitted on them gives the same model
    from operators.models.common import held_out
    train = pa.concat_tables([held_out(p, op.params)[0] for p in split(table, 4)])
    sk = GaussianNB().fit(np.column_stack([train.column(f).to_numpy() for f in FEATURES]),
                          train.column("y").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(model.theta, sk.theta_, rtol=1e-12)


# --------------------------------------------------------------------------- errors


def test_errors_say_what_and_how() -> None:
    X, labels, _ = data("gaussian")
    table = table_of(X - 1e4, labels)  # negative values
    with pytest.raises(DataError, match=r"feature column 'x0' has negative values .*"
                                        "multinomial naive_bayes takes counts"):
        fit_state(NaiveBayes(label="y", features=FEATURES, model_type="multinomial"),
                  split(table, 2))
    with pytest.raises(DataError, match=r"binarize: null takes features of 0 or 1"):
        fit_state(NaiveBayes(label="y", features=FEATURES, model_type="bernoulli",
                             binarize=None), split(table, 2))
    one = table_of(X, np.full(len(X), "stay"))
    with pytest.raises(DataError, match="single class"):
        fit_state(NaiveBayes(label="y", features=FEATURES), split(one, 2))
    with pytest.raises(DataError, match="priors has no probability for class 'upgrade'"):
        fit_state(NaiveBayes(label="y", features=FEATURES, priors={"churn": 0.5, "stay": 0.5}),
                  split(table, 2))
    with pytest.raises(DataError, match="priors sum to 0.9"):
        fit_state(NaiveBayes(label="y", features=FEATURES,
                             priors={"churn": 0.3, "stay": 0.3, "upgrade": 0.3}),
                  split(table, 2))
    constant = table.set_column(0, "x0", pa.array(np.ones(len(X))))
    constant = constant.set_column(1, "x1", pa.array(np.ones(len(X))))
    constant = constant.set_column(2, "x2", pa.array(np.ones(len(X))))
    constant = constant.set_column(3, "x3", pa.array(np.ones(len(X))))
    with pytest.raises(DataError, match="constant within class"):
        fit_state(NaiveBayes(label="y", features=FEATURES), split(constant, 2))
    floats = table.set_column(4, "y", pa.array(np.arange(len(X), dtype=float)))
    with pytest.raises(SchemaError, match="naive_bayes needs classes"):
        NaiveBayes(label="y", features=FEATURES).output_schema(floats.schema)
    with pytest.raises(ValidationError):
        NaiveBayes(label="y", model_type="poisson")
    with pytest.raises(DataError, match="complement naive_bayes takes counts"):
        fit_state(NaiveBayes(label="y", features=FEATURES, model_type="complement"),
                  split(table, 2))
    with pytest.raises(ValidationError):
        NaiveBayes(label="y", smoothing=0)


def test_binarize_null_takes_zero_one_features_as_mllib() -> None:
    X, labels, _ = data("bernoulli")
    on = (X > 1).astype(float)
    table = table_of(on, labels)
    a, _ = fit_state(NaiveBayes(label="y", features=FEATURES, model_type="bernoulli",
                                binarize=None), split(table, 3))
    b, _ = fit_state(NaiveBayes(label="y", features=FEATURES, model_type="bernoulli"),
                     split(table_of(X, labels), 3))
    # binarize 0 on the 0/1 rows, binarize null on them, and binarize 1 on the counts
    c, _ = fit_state(NaiveBayes(label="y", features=FEATURES, model_type="bernoulli",
                                binarize=1.0), split(table_of(X, labels), 3))
    np.testing.assert_allclose(a.feature_log_prob, c.feature_log_prob, rtol=1e-14)
    assert not np.allclose(b.feature_log_prob, c.feature_log_prob)


# --------------------------------------------------------------------------- MLlib


@pytest.mark.parametrize("kind", ["gaussian", "multinomial", "bernoulli", "complement"])
def test_equal_to_mllibs_naive_bayes(spark: Any, kind: str) -> None:
    """MLlib's NaiveBayes(modelType=kind, smoothing=1) on the same weighted rows gives the
    same class probabilities (bernoulli on 0/1 features, as MLlib asks; its smoothed
    class priors given as priors)."""
    from pyspark.ml.classification import NaiveBayes as MLlibNaiveBayes
    from pyspark.ml.feature import VectorAssembler

    X, labels, weights = data(kind, rows=600)
    if kind == "bernoulli":
        X = (X > 1).astype(float)
    if kind == "gaussian":
        # near the origin: MLlib's variances are E[x^2] - mean^2, which loses digits at
        # 1e4 (2.7e-5 of a probability, measured); sluice's Chan sums do not
        X = X - 1e4
    y = np.searchsorted(np.unique(labels), labels).astype(float)
    table = table_of(X, labels, weights)
    frame = spark.spark.createDataFrame(
        [tuple(float(v) for v in row) + (float(label), float(w))
         for row, label, w in zip(X, y, weights)], [*FEATURES, "label", "w"])
    frame = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(frame)
    mllib = MLlibNaiveBayes(modelType=kind, smoothing=1.0, weightCol="w").fit(frame)
    theirs = np.array([r.probability.toArray() for r in
                       mllib.transform(frame).select("probability").collect()])
    params: dict[str, Any] = {"label": "y", "features": FEATURES, "model_type": kind,
                              "weight": "w"}
    if kind == "bernoulli":
        params["binarize"] = None
    if kind in ("multinomial", "bernoulli"):
        # MLlib smooths the class priors of these two as well, (W_c + s) / (W + k s);
        # scikit-learn and sluice do not: given as priors, the models are the same
        classes, counts = np.unique(labels, return_inverse=True)
        shares = np.bincount(counts, weights=weights)
        params["priors"] = dict(zip(classes.tolist(),
                                    ((shares + 1.0) / (shares.sum() + len(classes))).tolist()))
    model, _ = fit_state(NaiveBayes(**params), split(table, 3))
    ours = np.array(model.transform(table, NUMPY).column("probability").to_pylist())
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("params", "message"), [
    ({"binarize": 0.5}, "binarize does nothing for model_type gaussian"),
    ({"smoothing": 2.0}, "smoothing does nothing for model_type gaussian"),
    ({"model_type": "multinomial", "var_smoothing": 1e-3, "binarize": 1.0},
     "binarize, var_smoothing do nothing for model_type multinomial"),
    ({"model_type": "complement", "priors": {"a": 0.5, "b": 0.5}},
     "priors does nothing for model_type complement.*has no class priors"),
])
def test_a_parameter_its_model_type_does_not_use_is_refused(params: dict[str, Any],
                                                             message: str) -> None:
    """A parameter of another model type was silently ignored (binarize on a Gaussian)."""
    with pytest.raises(Exception, match=message):
        NaiveBayes(label="y", **params)


@pytest.mark.parametrize("kind", ["gaussian", "multinomial", "bernoulli", "complement"])
@pytest.mark.parametrize("classes", [2, 3])
def test_contributions_add_up_to_the_raw_score_about_the_training_mean(kind: str,
                                                                       classes: int) -> None:
    """Each row's contributions plus the base are its raw score (the joint
    log-likelihoods; two classes: their log-odds), and the base is the raw score's mean
    over the (weighted) training rows: each feature's term less its training mean, the
    exact Shapley values of an additive score (as linear models' LinearExplainer)."""
    X, labels, weights = data(kind, classes=classes)
    table = table_of(X, labels, weights)
    params: dict[str, Any] = {"label": "y", "features": FEATURES, "model_type": kind,
                              "weight": "w"}
    model, _ = fit_state(NaiveBayes(**params), split(table, 3))
    model = roundtrip(model)  # the saved form explains too
    predicted, proba, phi, base = model.contributions(table, NUMPY)
    jll = np.asarray(model.joint_log_likelihood(X, NUMPY))
    raw = jll[:, 1:] - jll[:, :1] if classes == 2 else jll
    np.testing.assert_allclose(phi.sum(axis=1) + base, raw, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weights @ raw / weights.sum(), base, rtol=1e-9, atol=1e-9)
    # a feature's contribution depends on its own value only
    same = X[:, 0] == X[0, 0]
    np.testing.assert_allclose(phi[same, 0, :], np.broadcast_to(phi[0, 0, :], phi[same, 0].shape),
                               rtol=1e-12)
    scored = model.transform(table, NUMPY)
    assert np.array_equal(predicted, np.searchsorted(model.classes,
                                                     scored.column("prediction").to_pylist()))
    explained = model.explain(table, NUMPY)
    assert explained.column("probability").equals(scored.column("probability"))
    strict = model.contributions(table, STRICT)
    np.testing.assert_allclose(strict[2], phi, rtol=1e-12, atol=1e-12)
