"""calibrate against scikit-learn: ``IsotonicRegression(out_of_bounds="clip")`` and
``CalibratedClassifierCV`` of a frozen model (isotonic and sigmoid, two classes and
more, weights, ties), the same fit over any partitioning (the grid past ``max_points``
too), its errors, and a pipeline that scores held-out rows with a saved model,
calibrates them and saves the calibrated model, which then scores new rows better."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, log_loss

from operators.base import DataError, MissingColumnError, ParamError, SchemaError
from operators.models.calibrate import Calibrate, coarsened
from operators.testing.kit import fit, roundtrip, split
from pipelines.runner import run, scoring_pipeline
from pipelines.serving import load_model

# the frozen model takes no weights; the calibration does, which is what is compared
pytestmark = pytest.mark.filterwarnings("ignore:Since FrozenEstimator:UserWarning")


class Given(ClassifierMixin, BaseEstimator):
    """A classifier whose predict_proba is the rows' given probabilities (column 0 of
    X is the row's index into them): the frozen model scikit-learn calibrates."""

    def __init__(self, proba: np.ndarray, classes: np.ndarray):
        self.proba, self.classes = proba, classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> Given:
        self.classes_ = np.asarray(self.classes)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.proba[np.asarray(X[:, 0], dtype=np.int64)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def binary_rows(rows: int = 4000, seed: int = 0, digits: int | None = 3) -> pa.Table:
    """A model's probabilities (rounded to ``digits``: ties), labels that happen with a
    frequency other than them, weights (some 0) and the model's predictions."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 3, rows)
    if digits is not None:
        p = np.round(p, digits)
    y = (rng.random(rows) < p ** 2).astype(np.int64)
    w = rng.exponential(1.0, rows)
    w[:40] = 0.0
    return pa.table({"y": y, "probability": p, "w": w,
                     "prediction": (p > 0.5).astype(np.int64)})


def multiclass_rows(rows: int = 3000, seed: int = 1, k: int = 3) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(k) * 0.7, rows)
    proba = np.round(proba, 2)
    proba /= proba.sum(axis=1, keepdims=True)
    true = proba ** 3 / (proba ** 3).sum(axis=1, keepdims=True)  # overconfident
    y = np.array([rng.choice(k, p=row) for row in true])
    names = np.array(["a", "b", "c", "d"])[:k]
    offsets = pa.array(np.arange(0, rows * k + 1, k, dtype=np.int32))
    table = pa.table({"label": pa.array(names[y]),
                      "probability": pa.ListArray.from_arrays(offsets, pa.array(proba.ravel())),
                      "prediction": pa.array(names[np.argmax(proba, axis=1)]),
                      "w": rng.exponential(1.0, rows)})
    return table, proba


def calibrated(table: pa.Table, parts: int = 3, **params) -> pa.Table:
    return fit(Calibrate(**params), split(table, parts)).transform(table, None)


def column(table: pa.Table, name: str = "probability") -> np.ndarray:
    values = table.column(name).combine_chunks()
    if pa.types.is_list(values.type):
        return np.asarray(values.flatten()).reshape(len(values), -1)
    return np.asarray(values)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("weighted", [False, True])
def test_isotonic_is_scikit_learns(weighted: bool) -> None:
    t = binary_rows()
    p, y, w = column(t), column(t, "y"), column(t, "w")
    fitted = fit(Calibrate(label="y", weight="w" if weighted else None), split(t, 3))
    new = np.r_[np.linspace(-0.0, 1.0, 2001), p]
    got = fitted.calibrated(new[:, None])[:, 1]
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(
        p, y, sample_weight=w if weighted else None).predict(new)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)
    x, _ = fitted.maps[0]
    assert len(x) < len(np.unique(p))  # flat stretches' inner points left out


def test_ties_closer_than_resolution_are_one_point() -> None:
    """scikit-learn takes values within 1e-15 of the first of a run as one: so do we."""
    rng = np.random.default_rng(5)
    base = np.round(rng.random(600), 2)
    p = np.clip(base + rng.integers(0, 3, 600) * 4e-16, 0, 1)
    y = (rng.random(600) < base).astype(np.int64)
    t = pa.table({"y": y, "probability": p})
    fitted = fit(Calibrate(label="y"), split(t, 4))
    reference = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    np.testing.assert_allclose(fitted.maps[0][0], reference.X_thresholds_, rtol=0, atol=0)
    np.testing.assert_allclose(fitted.maps[0][1], reference.y_thresholds_, rtol=0, atol=1e-15)


def platt_reference(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """scikit-learn's sigmoid objective (its targets, its loss) solved to convergence."""
    prior1, prior0 = w[y == 1].sum(), w[y == 0].sum()
    target = np.where(y == 1, (prior1 + 1) / (prior1 + 2), 1 / (prior0 + 2))

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = -(ab[0] * p + ab[1])
        q = 1 / (1 + np.exp(-z))
        g = w * (q - target)
        return float(w @ (np.logaddexp(0, z) - target * z)), np.array([-g @ p, -g.sum()])

    start = np.array([0.0, np.log((prior0 + 1) / (prior1 + 1))])
    return minimize(loss, start, jac=True, method="BFGS", options={"gtol": 1e-13}).x


@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_is_platts(weighted: bool) -> None:
    t = binary_rows()
    p, y = column(t), column(t, "y")
    w = column(t, "w") if weighted else np.ones(len(p))
    fitted = fit(Calibrate(label="y", method="sigmoid", weight="w" if weighted else None),
                 split(t, 3))
    # scikit-learn's objective solved to convergence: the same minimum
    a, b = platt_reference(p, y, w)
    np.testing.assert_allclose(fitted.maps[0], [a, b], rtol=1e-9)
    new = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(fitted.calibrated(new[:, None])[:, 1],
                               1 / (1 + np.exp(a * new + b)), rtol=0, atol=1e-12)
    # scikit-learn's own stops its L-BFGS at a gradient of 1e-6: within that
    X = np.arange(len(p))[:, None]
    reference = CalibratedClassifierCV(FrozenEstimator(Given(np.c_[1 - p, p], [0, 1]).fit(X, y)),
                                       method="sigmoid")
    reference.fit(X, y, sample_weight=w if weighted else None)
    got = column(calibrated(t, method="sigmoid", label="y", weight="w" if weighted else None))
    np.testing.assert_allclose(got, reference.predict_proba(X)[:, 1], rtol=0, atol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_of_log_odds_is_scikit_learns_for_a_logistic_regression(weighted: bool
                                                                        ) -> None:
    """``sigmoid_of: log_odds``: scikit-learn's CalibratedClassifierCV of a frozen
    LogisticRegression fits the sigmoid to its decision_function, the log-odds of its
    probability: from the probability alone, the same calibration (to 1e-8: scikit-learn
    stops its L-BFGS at a gradient of 1e-6), and a sigmoid of the probability is
    another."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(8)
    X = rng.standard_normal((3000, 3))
    y = (rng.random(3000) < 1 / (1 + np.exp(-(0.4 * X[:, 0] - 0.3 * X[:, 1])))).astype(int)
    w = rng.uniform(0.5, 2.0, 3000) if weighted else None
    model = LogisticRegression(C=1e4).fit(X[:1000] * 3, y[:1000])  # overconfident
    reference = CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid")
    reference.fit(X[1000:2000], y[1000:2000],
                  sample_weight=None if w is None else w[1000:2000])
    scored = pa.table({"y": y[1000:2000], "w": np.ones(1000) if w is None else w[1000:2000],
                       "probability": model.predict_proba(X[1000:2000])[:, 1]})
    ours = fit(Calibrate(label="y", method="sigmoid", sigmoid_of="log_odds", weight="w"),
               split(scored, 3))
    new = model.predict_proba(X[2000:])[:, 1]
    want = reference.predict_proba(X[2000:])[:, 1]
    np.testing.assert_allclose(ours.calibrated(new[:, None])[:, 1], want, rtol=0, atol=1e-8)
    other = fit(Calibrate(label="y", method="sigmoid", weight="w"), split(scored, 3))
    assert np.max(np.abs(other.calibrated(new[:, None])[:, 1] - want)) > 1e-3
    with pytest.raises(ParamError, match="sigmoid_of is for method: sigmoid"):
        Calibrate(label="y", sigmoid_of="log_odds")
    assert roundtrip(ours).calibrated(new[:, None]).tolist() == ours.calibrated(
        new[:, None]).tolist()


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_multiclass_is_calibrated_classifier_cv(method: str) -> None:
    t, proba = multiclass_rows()
    y = column(t, "label").astype(str)
    X = np.arange(t.num_rows)[:, None]
    model = Given(proba, np.array(["a", "b", "c"])).fit(X, y)
    reference = CalibratedClassifierCV(FrozenEstimator(model), method=method).fit(
        X, y, sample_weight=column(t, "w"))
    out = calibrated(t, label="label", method=method, weight="w")
    atol = 1e-12 if method == "isotonic" else 1e-8  # scikit-learn's sigmoid: see above
    np.testing.assert_allclose(column(out), reference.predict_proba(X), rtol=0, atol=atol)
    assert out.column("prediction").to_pylist() == reference.predict(X).tolist()
    assert out.schema == t.schema


def test_all_zero_classes_get_the_uniform_distribution() -> None:
    """Where every class's map gives 0, scikit-learn's 1 / classes each."""
    t, _ = multiclass_rows(rows=200, seed=2)
    fitted = fit(Calibrate(label="label"), [t])
    fitted.maps = [(np.array([0.0, 1.0]), np.array([0.0, 0.0]))] * 3
    np.testing.assert_array_equal(fitted.calibrated(np.full((2, 3), 0.3)), np.full((2, 3), 1 / 3))


def test_prediction_follows_the_calibrated_probability() -> None:
    t = binary_rows()
    out = calibrated(t, label="y")
    p = column(out)
    assert column(out, "prediction").tolist() == (p > 1 - p).astype(np.int64).tolist()
    assert out.schema == t.schema
    assert out.drop_columns(["probability", "prediction"]).equals(
        t.drop_columns(["probability", "prediction"]))


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_partition_invariant(method: str) -> None:
    t = binary_rows(rows=3000, digits=None)
    results = [calibrated(t, parts, label="y", method=method, weight="w")
               for parts in (1, 3, 7)]
    for other in results[1:]:
        np.testing.assert_allclose(column(other), column(results[0]), rtol=0, atol=1e-12)


def test_past_max_points_the_grid_whatever_the_partitioning() -> None:
    """More distinct values than max_points: each is its bin's centre; a partition may
    coarsen before the others, and the result is the same for 1, 3 and 7 of them."""
    t = binary_rows(rows=3000, digits=None)  # 3000 distinct values
    bins = 500
    p, y, w = column(t), column(t, "y"), column(t, "w")
    new = np.linspace(0, 1, 777)
    reference = IsotonicRegression(out_of_bounds="clip").fit(coarsened(p, bins), y, w)
    fits = [fit(Calibrate(label="y", weight="w", max_points=bins), split(t, parts))
            for parts in (1, 3, 7)]
    for fitted in fits:
        got = fitted.calibrated(new[:, None])[:, 1]
        np.testing.assert_allclose(got, reference.predict(new), rtol=0, atol=1e-12)
    # 7 partitions of ~430 values: none coarsened alone, the merge did
    estimator = Calibrate(label="y", weight="w", max_points=bins)
    state = estimator.init(t.schema)
    assert not any(estimator.partial(part, state, None)["coarse"] for part in split(t, 7))
    # and below max_points nothing moves
    exact = fit(Calibrate(label="y", weight="w"), split(t, 3))
    np.testing.assert_allclose(exact.calibrated(new[:, None])[:, 1],
                               IsotonicRegression(out_of_bounds="clip").fit(p, y, w).predict(new),
                               rtol=0, atol=1e-12)


def test_state_roundtrip_and_large_list_types() -> None:
    t, _ = multiclass_rows(rows=500)
    large = t.set_column(1, pa.field("probability", pa.large_list(pa.float64())),
                         t.column("probability").cast(pa.large_list(pa.float64())))
    for method in ("isotonic", "sigmoid"):
        fitted = fit(Calibrate(label="label", method=method), split(large, 2))
        out = fitted.transform(large, None)
        assert out.schema == large.schema
        assert roundtrip(fitted).transform(large, None).equals(out)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_column_and_say_what_to_do() -> None:
    t = binary_rows(rows=200)
    with pytest.raises(MissingColumnError, match="probability column 'proba'") as e:
        Calibrate(label="y", probability="proba").output_schema(t.schema)
    assert "after a model step" in e.value.hint
    with pytest.raises(MissingColumnError, match="label column 'churned'"):
        Calibrate(label="churned").output_schema(t.schema)
    with pytest.raises(SchemaError, match="'w' is double"):
        Calibrate(label="w").output_schema(t.schema)
    with pytest.raises(ParamError, match="both the label and the probability"):
        Calibrate(label="y", probability="y")
    strings = t.set_column(0, "y", pa.array(np.where(column(t, "y") == 1, "yes", "no")))
    with pytest.raises(SchemaError, match="labels are not the model's classes"):
        Calibrate(label="y").output_schema(strings.schema)
    with pytest.raises(DataError, match="single class"):
        fit(Calibrate(label="y"), [t.filter(pa.compute.equal(t.column("y"), 0))])
    shifted = t.set_column(0, "y", pa.compute.add(t.column("y"), 1))
    with pytest.raises(DataError, match="predicts 0, which label column 'y' never is"):
        fit(Calibrate(label="y"), [shifted])
    three = t.set_column(0, "y", pa.array(np.arange(200) % 3))
    with pytest.raises(DataError, match="3 classes .* probability is for 2"):
        fit(Calibrate(label="y"), [three.drop_columns(["prediction"])])
    for bad in (None, float("nan"), 1.5):
        values = column(t).copy().tolist()
        values[7] = bad
        broken = t.set_column(1, "probability", pa.array(values, pa.float64()))
        with pytest.raises(DataError, match="probability column 'probability' has 1"):
            fit(Calibrate(label="y"), [broken])


# --------------------------------------------------------------------------- pipeline


def rows(n: int, seed: int) -> pa.Table:
    """Noisy classes of two features: deep boosted trees, fast, are overconfident."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    truth = 1 / (1 + np.exp(-(0.8 * x1 - 0.6 * x2)))
    return pa.table({"id": np.arange(n) + seed * 10**6, "x1": x1, "x2": x2,
                     "label": (rng.random(n) < truth).astype(np.int64)})


@pytest.fixture
def saved(workdir: Path) -> Path:
    """A run that trains boosted trees on half the rows and saves them (``raw``), scores
    the other half with them, calibrates those and saves that (``calibrated``)."""
    (workdir / "data").mkdir()
    pq.write_table(rows(6000, 0), workdir / "data" / "rows.parquet", row_group_size=1000)
    pipeline = write_pipeline(workdir, """
        pipeline: calibrated
        steps:
          - id: rows
            op: read_parquet
            path: data/rows.parquet
          - op: sample
            fraction: 0.5
            by: [id]
          - op: gradient_boosted_trees
            label: label
            features: [x1, x2]
            n_trees: 40
            learning_rate: 0.5
            max_depth: 6
            min_samples_leaf: 2
          - op: save_model
            name: raw
          - op: sample
            input: rows
            fraction: 0.5
            by: [id]
            complement: true
          - op: score
            model: raw
          - op: calibrate
            label: label
          - op: save_model
            name: calibrated
        """)
    notes: list[str] = []
    assert run(pipeline, notify=notes.append)["status"] == "succeeded"
    assert notes == []  # calibrated on rows the trees did not train on
    return workdir


def test_pipeline_calibrates_a_saved_model(saved: Path) -> None:
    workdir = saved
    fresh = rows(20000, 1)
    y = column(fresh, "label")
    raw = load_model("raw").score(fresh.drop_columns(["label"]))
    better = load_model("calibrated")
    scored = better.score(fresh.drop_columns(["label"]))
    assert [f.name for f in better.output_fields()] == ["prediction", "probability"]
    assert better.required == ["x1", "x2"]
    # GET /metadata says which model it scores with, frozen in it
    assert better.describe()["scores_with"] == ["raw@1"]
    assert load_model("raw").describe()["scores_with"] == []
    p_raw, p_cal = column(raw), column(scored)
    assert brier_score_loss(y, p_cal) < brier_score_loss(y, p_raw) - 0.01
    assert log_loss(y, p_cal) < log_loss(y, p_raw) - 0.05
    # what the saved model does is the scored model, then the calibration
    steps = better.model.chain.steps
    assert [s.name for s in steps] == ["score", "calibrate.fitted"]
    again = steps[1].transform(raw, None)
    np.testing.assert_array_equal(column(again), p_cal)
    assert again.column("prediction").equals(scored.column("prediction"))
    # `sluice serve` answers a request with the calibrated probability
    from pipelines.serving import JSON, Server, Settings

    server = Server(Settings(ref="calibrated"))
    body = json.dumps({"dataframe_records": fresh.slice(0, 3).select(["x1", "x2"])
                       .to_pylist()}).encode()
    answer = json.loads(server.score(body, JSON, JSON, {})[0])
    assert answer["model"] == "calibrated@1"
    assert [r["probability"] for r in answer["predictions"]] == pytest.approx(
        p_cal[:3].tolist(), rel=1e-12)
    with pytest.raises(SchemaError, match="scores with the saved model 'raw@1'") as e:
        better.score(fresh.slice(0, 3), contributions=True)
    # the version frozen in it: raw, retrained since, is another model
    assert e.value.hint == "ask model 'raw@1' for the contributions"
    # `sluice score` scores as load_model does
    pq.write_table(fresh, workdir / "data" / "fresh.parquet", row_group_size=3000)
    text = scoring_pipeline("calibrated", str(workdir / "data" / "fresh.parquet"),
                            str(workdir / "scores"), keep=["id"])
    assert run("sluice score calibrated", text=text)["status"] == "succeeded"
    out = pq.read_table(workdir / "scores").sort_by("id")
    assert out.column_names == ["id", "prediction", "probability"]
    np.testing.assert_allclose(column(out), p_cal, rtol=0, atol=1e-15)


def test_spark_udf_answers_the_calibrated_probability(saved: Path, spark) -> None:
    from pyspark.sql import functions as F

    from pipelines.serving import spark_udf

    fresh = rows(500, 2)
    pq.write_table(fresh, saved / "data" / "spark.parquet")
    df = spark.spark.read.parquet(str(saved / "data" / "spark.parquet"))
    score = spark_udf("calibrated")
    assert score.columns == ["x1", "x2"]
    got = df.select("id", score(F.struct(*score.columns)).alias("p")).collect()
    expected = load_model("calibrated").score(fresh)
    want = dict(zip(fresh.column("id").to_pylist(), expected.column("probability").to_pylist()))
    assert {r.id: r.p for r in got} == pytest.approx(want, rel=1e-12)


def test_contributions_of_a_model_calibrated_in_its_chain(workdir: Path) -> None:
    """calibrate right after the model (on its training rows: not what to do, but it
    may be done): a score of the model the run saves explains the model's raw score."""
    (workdir / "data").mkdir()
    pq.write_table(rows(2000, 3), workdir / "data" / "rows.parquet")
    pipeline = write_pipeline(workdir, """
        pipeline: in_chain
        steps:
          - id: rows
            op: read_parquet
            path: data/rows.parquet
          - op: gradient_boosted_trees
            label: label
            features: [x1, x2]
            n_trees: 5
          - op: calibrate
            label: label
            method: sigmoid
          - op: save_model
            name: m
          - op: score
            input: rows
            model: m
            contributions: true
          - op: write_parquet
            path: scores
        """)
    notes: list[str] = []
    assert run(pipeline, notify=notes.append)["status"] == "succeeded"
    assert notes == [
        f"{pipeline}:10: step 'calibrate' (calibrate) fits on the rows step "
        "'gradient_boosted_trees' (gradient_boosted_trees) was trained on, where its "
        "probabilities look truer than on new rows: save the model, `score` rows it did "
        "not train on (a `sample`'s `complement: true`) and calibrate those"]
    out = pq.read_table(workdir / "scores").sort_by("id")
    assert {"contributions", "contribution_base", "probability"} <= set(out.column_names)
    model = load_model("m")
    np.testing.assert_allclose(column(out), column(model.score(rows(2000, 3))), rtol=1e-12)


def test_the_calibrated_example_pipeline(workdir: Path) -> None:
    """conf/pipelines/churn_calibrated.yaml on the committed sample: calibrated on
    customers the trees never saw, better on customers neither step saw, in the same
    order."""
    from conftest import ROOT

    shutil.copytree(ROOT / "data" / "churn", workdir / "data" / "churn")
    record = run(ROOT / "conf" / "pipelines" / "churn_calibrated.yaml")
    steps, metrics = record["steps"], record["metrics"]
    assert steps["calibration_rows"]["rows"] + steps["test_rows"]["rows"] == steps[
        "held_out"]["rows"]
    raw, calibrated = metrics["balanced_metrics"], metrics["calibrated_metrics"]
    assert calibrated["log_loss"] < raw["log_loss"] - 0.005  # 0.591 -> 0.577
    # evaluate's ROC AUC counts pairs within a bin of 2^-16 as ties, and the sigmoid of
    # the log-odds moves some pairs into or out of one bin: the same to 1e-5
    assert calibrated["roc_auc"] == pytest.approx(raw["roc_auc"], abs=1e-5)
    assert metrics["calibrate"]["a"][0] < 0  # increasing in the model's probability
    assert metrics["calibrate"]["sigmoid_of"] == "log_odds"  # of boosted trees
    # the order of the customers is the same: the exact ROC AUC is
    from sklearn.metrics import roc_auc_score

    customers = pq.read_table(workdir / "data" / "churn")
    proba = [np.asarray(load_model(name).score(customers).column("probability"))
             for name in ("churn_balanced", "churn_calibrated")]
    truth = np.asarray(customers.column("churned"))
    assert roc_auc_score(truth, proba[1]) == roc_auc_score(truth, proba[0])
    assert np.all(np.diff(proba[1][np.argsort(proba[0], kind="stable")]) >= 0)


def test_dictionary_labels_and_predictions() -> None:
    """Dictionary columns (each chunk its own dictionary) calibrate as their values."""
    t, _ = multiclass_rows(rows=600)
    plain = calibrated(t, label="label")
    halves = [t.slice(0, 300), t.slice(300)]
    coded = pa.concat_tables([h.set_column(0, "label", h.column("label").dictionary_encode())
                              .set_column(2, "prediction",
                                          h.column("prediction").dictionary_encode())
                              for h in halves])
    out = fit(Calibrate(label="label"), split(coded, 3)).transform(coded, None)
    np.testing.assert_array_equal(column(out), column(plain))
    assert out.column("prediction").type == coded.schema.field("prediction").type
    assert out.column("prediction").cast(pa.string()).to_pylist() == plain.column(
        "prediction").to_pylist()


@pytest.mark.parametrize("kind", ["constant", "hard"])
@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_a_model_of_one_or_two_probabilities(kind: str, method: str) -> None:
    """One probability for every row (a and b not identified: the loss's minimum is
    still the classes' share there, and only there: elsewhere any point of a flat valley
    is a minimum, so the value there is the optimiser's, not compared), or a hard
    classifier's 0 and 1."""
    y = np.r_[np.zeros(60), np.ones(40)].astype(np.int64)
    p = np.full(100, 0.3) if kind == "constant" else np.r_[np.zeros(50), np.ones(50)]
    scored = pa.table({"y": y, "probability": p})
    fitted = fit(Calibrate(label="y", method=method), split(scored, 3))
    new = np.array([0.3]) if kind == "constant" else np.array([0.0, 0.3, 0.5, 1.0])
    reference = (IsotonicRegression(out_of_bounds="clip") if method == "isotonic"
                 else _SigmoidCalibration()).fit(p, y).predict(new)
    np.testing.assert_allclose(fitted.calibrated(new[:, None])[:, 1], reference, rtol=0,
                               atol=1e-9)


def test_a_calibrated_model_of_integer_categories_takes_any_integer(workdir: Path) -> None:
    """The trees' integer category is read as int64 through the saved score step too:
    a value the trained int32 cannot hold is a category never seen, not a refusal."""
    (workdir / "data").mkdir()
    table = rows(3000, 4)
    store = pa.array((np.arange(3000) % 7).astype(np.int32))
    pq.write_table(table.append_column("store", store), workdir / "data" / "rows.parquet")
    pipeline = write_pipeline(workdir, """
        pipeline: stores
        steps:
          - id: rows
            op: read_parquet
            path: data/rows.parquet
          - op: sample
            fraction: 0.5
            by: [id]
          - op: gradient_boosted_trees
            label: label
            features: [x1, store]
            categorical: [store]
            n_trees: 5
          - op: save_model
            name: raw
          - op: sample
            input: rows
            fraction: 0.5
            by: [id]
            complement: true
          - op: score
            model: raw
          - op: calibrate
            label: label
          - op: save_model
            name: calibrated
        """)
    assert run(pipeline)["status"] == "succeeded"
    model = load_model("calibrated")
    assert model.input_schema.field("store").type == pa.int64()
    scored = model.score([{"x1": 0.5, "store": 3}, {"x1": 0.5, "store": 2**40}])
    raw = load_model("raw").score([{"x1": 0.5, "store": 3}, {"x1": 0.5, "store": 2**40}])
    calibration = model.model.chain.steps[1]
    for got, given in zip(scored, raw, strict=True):
        assert got["probability"] == calibration.calibrated(
            np.array([[given["probability"]]]))[0, 1]


def test_a_saved_calibration_scores_without_scipy() -> None:
    """A spark-submit archive's workers may have no SciPy (it stays out of the archive):
    the saved calibration, either method, loads and scores without it."""
    import subprocess
    import sys

    rng = np.random.default_rng(3)
    p = rng.random(400)
    scored = pa.table({"y": (rng.random(400) < p).astype(np.int64), "probability": p})
    states = {}
    for method in ("isotonic", "sigmoid"):
        meta, arrays = fit(Calibrate(label="y", method=method), [scored]).state()
        states[method] = (meta, {k: v.tolist() for k, v in arrays.items()},
                          fit(Calibrate(label="y", method=method), [scored])
                          .calibrated(np.array([[0.1], [0.7]]))[:, 1].tolist())
    script = f"""
import sys, json
sys.modules["scipy"] = None  # no SciPy: an import of it fails
import numpy as np
from operators.models.calibrate import CalibrateFitted
for meta, arrays, want in json.loads({json.dumps(states)!r}).values():
    model = CalibrateFitted.from_state(meta, {{k: np.asarray(v) for k, v in arrays.items()}})
    got = model.calibrated(np.array([[0.1], [0.7]]))[:, 1]
    assert np.allclose(got, want, rtol=0, atol=0), (got, want)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "ok", done.stderr


def test_labels_of_another_width_than_the_predictions() -> None:
    """A label read as int32 (or large_string) where the model predicts int64 (string):
    the same classes, calibrated as with one type; each column keeps its type."""
    t = binary_rows(rows=600)
    want = calibrated(t, label="y")
    narrow = t.set_column(0, "y", t.column("y").cast(pa.int32()))
    out = calibrated(narrow, label="y")
    assert out.schema == narrow.schema
    np.testing.assert_array_equal(column(out), column(want))
    assert out.column("prediction").equals(want.column("prediction"))
    words = pa.array(np.where(column(t, "y") == 1, "yes", "no"))
    predicted = pa.array(np.where(column(t, "prediction") == 1, "yes", "no"))
    texts = t.set_column(0, "y", words.cast(pa.large_string())).set_column(
        3, "prediction", predicted)
    out = calibrated(texts, label="y")
    assert out.schema == texts.schema
    np.testing.assert_array_equal(column(out), column(want))


def test_dictionary_integer_predictions() -> None:
    """An integer prediction dictionary-encoded: calibrated as its values, its type
    kept."""
    t = binary_rows(rows=600)
    coded = t.set_column(3, "prediction", t.column("prediction").dictionary_encode())
    out = calibrated(coded, label="y")
    assert out.schema == coded.schema
    want = calibrated(t, label="y")
    np.testing.assert_array_equal(column(out), column(want))
    assert out.column("prediction").cast(pa.int64()).equals(want.column("prediction"))


def test_models_show_names_the_model_a_calibration_scores_with(saved: Path) -> None:
    """`sluice models show` of a model saved after score + calibrate says which version
    of which model it scores with (frozen in it), not a bare `score`."""
    from click.testing import CliRunner

    from pipelines.cli import main

    shown = CliRunner().invoke(main, ["models", "show", "calibrated"])
    assert shown.exit_code == 0, shown.output
    assert "    - score: raw@1 (gradient_boosted_trees.fitted)\n" in shown.output
    assert "    - calibrate.fitted\n" in shown.output


def test_a_classifier_of_float_labels() -> None:
    """A model of `task: classification` on a double label (0.0 and 1.0) has double
    classes: calibrated as the integers would be (was refused as "not the label the
    model was trained to predict", which it was)."""
    t = binary_rows(rows=600)
    want = calibrated(t, label="y")
    floats = t.set_column(0, "y", t.column("y").cast(pa.float64())).set_column(
        3, "prediction", t.column("prediction").cast(pa.float64()))
    out = calibrated(floats, label="y")
    assert out.schema == floats.schema
    np.testing.assert_array_equal(column(out), column(want))
    assert out.column("prediction").cast(pa.int64()).equals(want.column("prediction"))
    fitted = fit(Calibrate(label="y"), split(floats, 2))
    assert roundtrip(fitted).transform(floats, None).equals(out)


def test_contributions_of_a_calibration_this_run_saves_name_the_scored_model(
        saved: Path) -> None:
    """Asked at plan time of the model a run saves after score + calibrate, the
    contributions error names the model it scores with, as it does once saved (was:
    'ends in no model step')."""
    from pipelines.runner import plan_file

    pipeline = write_pipeline(saved, """
        pipeline: explain
        steps:
          - id: rows
            op: read_parquet
            path: data/rows.parquet
          - op: score
            model: raw
          - op: calibrate
            label: label
          - op: save_model
            name: again
          - op: score
            input: rows
            model: again
            contributions: true
        """, "explain.yaml")
    problems = [str(p) for p in plan_file(pipeline).problems]
    assert len(problems) == 1, problems
    assert "contributions: model 'again' scores with the saved model 'raw@1'" in problems[0]
    assert "ask model 'raw@1' for the contributions" in problems[0]


def test_a_class_of_weight_zero_is_said_so() -> None:
    """Every row of one class weighs 0: the error says the weights left it out, not that
    the label column lacks it."""
    t, _ = multiclass_rows(rows=300)
    w = np.where(column(t, "label") == "c", 0.0, 1.0)
    weighed = t.set_column(3, "w", pa.array(w))
    with pytest.raises(DataError, match=r"has 2 classes \('a', 'b'\) among the rows of "
                                        r"weight > 0 and the model's probability is for 3"):
        fit(Calibrate(label="label", weight="w"), split(weighed, 2))


def test_the_scored_model_is_frozen_in_the_calibrated_one(saved: Path) -> None:
    """raw retrained, then its first version deleted: the calibrated model still scores
    with the raw@1 it was fitted on, as before."""
    from pipelines.store import ModelStore

    fresh = rows(300, 5).drop_columns(["label"])
    before = load_model("calibrated").score(fresh)
    store = ModelStore()
    raw = store.load("raw@1")
    store.save("raw", raw.chain.steps, raw.input_schema)
    store.delete("raw", 1)
    assert store.versions("raw") == [2]
    after = load_model("calibrated").score(fresh)
    assert after.equals(before)


@pytest.mark.filterwarnings("ignore:mlp did not converge")  # what it fits is beside it
@pytest.mark.parametrize(("model", "chosen"), [
    ("op: logistic_regression", "log_odds"),
    ("op: gradient_boosted_trees\n            n_trees: 5", "log_odds"),
    ("op: random_forest\n            n_trees: 5", "probability"),
    ("op: mlp\n            hidden: [4]\n            max_iter: 200", "probability"),
])
def test_sigmoid_of_auto_follows_the_model(workdir: Path, model: str, chosen: str) -> None:
    """``sigmoid_of: auto`` (the default) fits the sigmoid to the log-odds of a model of
    a raw score (scikit-learn's decision_function) and to the probability of any other,
    whether the model is a step before or a saved model a score step loads; the saved
    calibration names what it chose, and a probability read from files is taken as
    is."""
    (workdir / "data").mkdir()
    pq.write_table(rows(2000, 3), workdir / "data" / "rows.parquet")
    train = write_pipeline(workdir, f"""
        pipeline: train
        steps:
          - id: rows
            op: read_parquet
            path: data/rows.parquet
          - op: sample
            fraction: 0.5
            seed: 1
          - {model}
            label: label
            features: [x1, x2]
          - op: save_model
            name: raw
          - op: sample
            input: rows
            fraction: 0.5
            seed: 1
            complement: true
          - op: score
            model: raw
          - id: in_run
            op: calibrate
            label: label
            method: sigmoid
          - op: write_parquet
            path: scored
        """)
    record = run(train)
    assert record["metrics"]["in_run"]["sigmoid_of"] == chosen
    from pipelines.describe import describe
    from pipelines.runner import plan_file

    (entry,) = [e for e in describe(plan_file(train)) if e["id"] == "in_run"]
    model_name = model.split()[1]
    what = "log-odds" if chosen == "log_odds" else "probability"
    assert (f"fits the sigmoid to the model's {what} (sigmoid_of: auto, after "
            f"{model_name})") in entry["notes"]
    again = write_pipeline(workdir, """
        pipeline: again
        steps:
          - op: read_parquet
            path: data/rows.parquet
          - op: score
            model: raw
          - op: calibrate
            label: label
            method: sigmoid
          - op: save_model
            name: calibrated
        """)
    assert run(again)["metrics"]["calibrate"]["sigmoid_of"] == chosen
    meta = json.loads(json.dumps(load_model("calibrated").model.chain.steps[-1].state()[0]))
    assert meta["params"]["sigmoid_of"] == chosen
    from_files = write_pipeline(workdir, """
        pipeline: from_files
        steps:
          - op: read_parquet
            path: scored
          - op: calibrate
            label: label
            method: sigmoid
        """)
    assert run(from_files)["metrics"]["calibrate"]["sigmoid_of"] == "probability"


def test_sigmoid_of_auto_after_a_calibrated_model_the_run_saves(workdir: Path) -> None:
    """A calibrated model's probability is no sigmoid of the model's raw score: a score
    of it then calibrate fits the sigmoid to the probability, in the run that saves it
    (as planned) as in a run that loads it (it was the log-odds in the saving run, after
    the logistic_regression the calibration adjusts)."""
    train = write_pipeline(workdir, """
        pipeline: train
        steps:
          - op: read_parquet
            id: every_row
            path: data/rows.parquet
          - op: logistic_regression
            label: label
            features: [x1, x2]
          - op: calibrate
            label: label
            method: sigmoid
          - op: save_model
            name: calibrated
          - op: sample
            input: every_row
            fraction: 0.5
            seed: 1
          - op: score
            model: calibrated
          - id: in_run
            op: calibrate
            label: label
            method: sigmoid
        """)
    (workdir / "data").mkdir()
    pq.write_table(rows(2000, 3), workdir / "data" / "rows.parquet")
    record = run(train)
    assert record["metrics"]["calibrate"]["sigmoid_of"] == "log_odds"
    assert record["metrics"]["in_run"]["sigmoid_of"] == "probability"
    later = write_pipeline(workdir, """
        pipeline: later
        steps:
          - op: read_parquet
            path: data/rows.parquet
          - op: score
            model: calibrated
          - id: loaded
            op: calibrate
            label: label
            method: sigmoid
        """)
    assert run(later)["metrics"]["loaded"]["sigmoid_of"] == "probability"


def test_sigmoid_of_auto_of_a_column_a_score_step_did_not_make(workdir: Path) -> None:
    """A probability column read from files is calibrated as a probability though a
    score step of a logistic regression comes between (it was the log-odds: the plan
    took the score step for the column's maker)."""
    table = rows(2000, 3)
    vendor = 1 / (1 + np.exp(-(0.5 * table["x1"].to_numpy())))
    (workdir / "data").mkdir()
    pq.write_table(table.append_column("vendor_p", pa.array(vendor)),
                   workdir / "data" / "rows.parquet")
    run(write_pipeline(workdir, """
        pipeline: train
        steps:
          - op: read_parquet
            path: data/rows.parquet
          - op: logistic_regression
            label: label
            features: [x1, x2]
          - op: save_model
            name: ours
        """))
    both = write_pipeline(workdir, """
        pipeline: both
        steps:
          - op: read_parquet
            path: data/rows.parquet
          - op: score
            model: ours
          - op: calibrate
            label: label
            probability: vendor_p
            method: sigmoid
        """, "both.yaml")
    assert run(both)["metrics"]["calibrate"]["sigmoid_of"] == "probability"
