"""gaussian_mixture against scikit-learn's GaussianMixture, over in-memory partitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.models.common import ConvergenceWarning
from operators.models.gaussian_mixture import GaussianMixture, GaussianMixtureFitted
from operators.models.kmeans import KMeans
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")
pytestmark = pytest.mark.filterwarnings("error::operators.models.common.ConvergenceWarning")
COVARIANCES = ("full", "diag", "tied", "spherical")


def fit_state(estimator: GaussianMixture, parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[GaussianMixtureFitted, dict[str, Any]]:
    """The fitted model and the final state (its ``initial`` parameters among them)."""

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, _ = drive(estimator, parts[0].schema, aggregate)
    return estimator.fitted(state), state


def table_of(X: np.ndarray, **extra: Any) -> pa.Table:
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, **extra})


def overlapping(rows: int = 600, seed: int = 0) -> np.ndarray:
    """Blobs of different spreads that overlap: EM takes several passes."""
    X, _ = make_blobs(rows, n_features=3, centers=4, cluster_std=[1.0, 2.0, 0.5, 1.5],
                      random_state=seed)
    return X


def sklearn_from(state: dict[str, Any], covariance: str, **params: Any) -> SkGaussianMixture:
    """scikit-learn's GaussianMixture started where the fit started."""
    start = state["initial"]
    factor = start["precisions_cholesky"]
    if covariance == "full":
        precisions = np.einsum("kij,klj->kil", factor, factor)
    elif covariance == "tied":
        precisions = factor @ factor.T
    else:
        precisions = factor ** 2
    return SkGaussianMixture(len(start["weights"]), covariance_type=covariance,
                             weights_init=start["weights"], means_init=start["means"],
                             precisions_init=precisions, **params)


def assert_same_fit(model: GaussianMixtureFitted, state: dict[str, Any],
                    sk: SkGaussianMixture, tol: float = 1e-10) -> None:
    assert state["iterations"] == sk.n_iter_
    assert state["converged"] == sk.converged_
    np.testing.assert_allclose(state["lower_bound"], sk.lower_bound_, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.weights, sk.weights_, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.means, sk.means_, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.covariances, sk.covariances_, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.precisions_cholesky, sk.precisions_cholesky_,
                               rtol=1e-8, atol=tol)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("parts", "order"), [(1, None), (3, None), (7, 5)])
def test_em_from_the_same_start_is_scikit_learns(covariance: str, weighted: bool, parts: int,
                                                 order: int | None) -> None:
    X = overlapping()
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 4, len(X)) if weighted else None
    table = table_of(X, **({"w": counts.astype(np.float64)} if weighted else {}))
    model, state = fit_state(GaussianMixture(k=4, covariance=covariance, seed=2,
                                             weight="w" if weighted else None),
                             split(table, parts, seed=order))
    assert state["iterations"] > 2
    # a weight is a repeated row: scikit-learn (no sample_weight) gets the copies
    repeated = X if counts is None else np.repeat(X, counts, axis=0)
    sk = sklearn_from(state, covariance).fit(repeated)
    assert_same_fit(model, state, sk)
    metrics = GaussianMixture(k=4, covariance=covariance).metrics(state)
    np.testing.assert_allclose(metrics["bic"], sk.bic(repeated), rtol=1e-10)
    np.testing.assert_allclose(metrics["aic"], sk.aic(repeated), rtol=1e-10)
    np.testing.assert_allclose(metrics["log_likelihood"], sk.score(repeated), rtol=1e-10)
    out = model.transform(table, NUMPY)
    np.testing.assert_allclose(out.column("log_likelihood").to_numpy(), sk.score_samples(X),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.array(out.column("probability").to_pylist()),
                               sk.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(out.column("prediction").to_numpy(), sk.predict(X))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_the_strict_namespace_fits_scikit_learns(covariance: str) -> None:
    X = overlapping(seed=3)
    table = table_of(X)
    estimator = GaussianMixture(k=4, covariance=covariance, seed=1)
    model, state = fit_state(estimator, split(table, 3), STRICT)
    host, host_state = fit_state(estimator, split(table, 3))
    assert state["iterations"] == host_state["iterations"]
    np.testing.assert_allclose(model.means, host.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.covariances, host.covariances, rtol=1e-12, atol=1e-12)
    assert_same_fit(model, state, sklearn_from(state, covariance).fit(X))
    scored = model.transform(table, STRICT)
    np.testing.assert_allclose(scored.column("log_likelihood").to_numpy(),
                               host.transform(table, NUMPY).column("log_likelihood").to_numpy(),
                               rtol=1e-12)


def test_max_iter_stops_as_scikit_learns_does() -> None:
    X = overlapping(seed=4)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        model, state = fit_state(GaussianMixture(k=4, max_iter=2, tol=0.0), split(table_of(X), 2))
    with pytest.warns(UserWarning):  # scikit-learn's own ConvergenceWarning
        sk = sklearn_from(state, "full", max_iter=2, tol=0.0).fit(X)
    assert not state["converged"] and state["iterations"] == 2
    assert_same_fit(model, state, sk)


def test_a_single_component_is_the_rows_mean_and_covariance() -> None:
    X = overlapping(seed=5)
    w = np.random.default_rng(2).uniform(0.5, 2.0, len(X))
    model, state = fit_state(GaussianMixture(k=1, weight="w", reg_covar=0.0),
                             split(table_of(X, w=w), 3))
    mean = w @ X / w.sum()
    np.testing.assert_allclose(model.means[0], mean, rtol=1e-12)
    np.testing.assert_allclose(model.covariances[0], np.cov(X.T, aweights=w, bias=True),
                               rtol=1e-10)
    assert state["iterations"] == 2 and state["converged"]  # the first changes from -inf


def test_far_from_the_origin_the_sums_do_not_cancel() -> None:
    """The same rows moved 1e7 away: the same covariances (a raw sum of squares, as
    scikit-learn's diag, loses them to rounding there)."""
    X = overlapping(seed=6)
    near, _ = fit_state(GaussianMixture(k=4, covariance="diag", init=X[[0, 100, 200, 300]]
                                        .tolist()), [table_of(X)])
    moved = X + 1e7
    far, _ = fit_state(GaussianMixture(k=4, covariance="diag", init=moved[[0, 100, 200, 300]]
                                       .tolist()), [table_of(moved)])
    np.testing.assert_allclose(far.covariances, near.covariances, rtol=1e-6)
    np.testing.assert_allclose(far.means - 1e7, near.means, atol=1e-7)


# --------------------------------------------------------------------------- the start


def test_the_start_is_kmeans_centres_and_a_hard_assignment() -> None:
    X = overlapping(seed=7)
    table = table_of(X)
    _, state = fit_state(GaussianMixture(k=4, init="kmeans", seed=3, covariance="diag",
                                         reg_covar=0.0), split(table, 2))
    centres = KMeans(k=4, seed=3).fitted(drive(KMeans(k=4, seed=3), table.schema,
                                               lambda f: f(table, NUMPY))[0]).centres
    labels = SkKMeans(4, init=centres, n_init=1).fit(X).predict(X)
    means = np.array([X[labels == j].mean(axis=0) for j in range(4)])
    np.testing.assert_allclose(state["initial"]["means"], means, rtol=1e-9)
    shares = np.bincount(labels, minlength=4) / len(X)
    np.testing.assert_allclose(state["initial"]["weights"], shares, rtol=1e-9)
    variances = np.array([X[labels == j].var(axis=0) for j in range(4)])
    np.testing.assert_allclose(state["initial"]["precisions_cholesky"], variances ** -0.5,
                               rtol=1e-8)


def test_recovers_blobs_as_well_as_scikit_learns_default_fit() -> None:
    X, truth = make_blobs(1500, n_features=2, centers=[[0, 0], [6, 1], [-2, 7]],
                          cluster_std=[1.0, 0.6, 1.4], random_state=8)
    # stretched blobs: a full covariance fits them, spheres would not
    X = X @ np.array([[1.0, 0.4], [0.0, 1.3]])
    table = table_of(X)
    model, state = fit_state(GaussianMixture(k=3, seed=4), split(table, 4))
    sk = SkGaussianMixture(3, random_state=0).fit(X)
    labels = model.transform(table, NUMPY).column("prediction").to_numpy()
    assert adjusted_rand_score(truth, labels) > 0.97
    assert adjusted_rand_score(sk.predict(X), labels) > 0.99
    assert state["log_likelihood"] >= sk.score(X) - 1e-3
    assert sorted(model.weights) == pytest.approx(sorted(sk.weights_), abs=0.01)


def test_seed_and_partitioning() -> None:
    table = table_of(overlapping(seed=9))
    one, _ = fit_state(GaussianMixture(k=4, seed=5), [table])
    seven, _ = fit_state(GaussianMixture(k=4, seed=5), split(table, 7, seed=1))
    np.testing.assert_allclose(seven.means, one.means, rtol=1e-10)
    other, _ = fit_state(GaussianMixture(k=4, seed=6), [table])
    assert not np.allclose(np.sort(other.means, axis=0), np.sort(one.means, axis=0),
                           rtol=1e-12, atol=0)


@pytest.mark.parametrize("init", ["k-means||", "kmeans"])
def test_n_init_keeps_the_start_of_largest_lower_bound(init: str) -> None:
    """n_init starts, each kmeans' start of its own seed (the first: seed's), EM from
    each: each start is the one-start fit of its seed, the kept one the start of largest
    lower bound (scikit-learn's n_init), the same on any partitioning."""
    table = table_of(overlapping(900, seed=2))
    params = {"k": 6, "init": init, "seed": 4, "covariance": "diag", "max_iter": 200}
    model, state = fit_state(GaussianMixture(**params, n_init=4), [table])
    metrics = GaussianMixture(**params, n_init=4).metrics(state)
    starts = metrics["starts"]
    assert len(starts) == 4
    # each start alone: a one-start fit whose kmeans start draws from that start's seed
    alone = []
    for i in range(4):

        class StartAt(GaussianMixture):
            def init(self, schema: pa.Schema, start: int = i) -> dict[str, Any]:
                state = super().init(schema)
                return {**state, "kmeans": {**state["kmeans"], "start": start}}

        estimator = StartAt(**params)
        state_i = fit_state(estimator, [table])[1]
        alone.append((estimator.fitted(state_i), estimator.metrics(state_i)))
    for start, (_, one) in zip(starts, alone):
        assert start["lower_bound"] == pytest.approx(one["lower_bound"], rel=1e-12)
        assert start["iterations"] == one["iterations"]
    assert len({round(s["lower_bound"], 6) for s in starts}) > 1  # the starts differ here
    best = int(np.argmax([s["lower_bound"] for s in starts]))
    np.testing.assert_allclose(model.means, alone[best][0].means, rtol=1e-12, atol=1e-12)
    assert metrics["lower_bound"] == max(s["lower_bound"] for s in starts)
    assert metrics["log_likelihood"] == pytest.approx(alone[best][1]["log_likelihood"],
                                                      rel=1e-12)
    assert alone[0][1]["lower_bound"] == fit_state(GaussianMixture(**params), [table])[1][
        "lower_bound"]  # the first start is n_init: 1's
    parts, _ = fit_state(GaussianMixture(**params, n_init=4), split(table, 5, seed=3))
    np.testing.assert_allclose(parts.means, model.means, rtol=1e-9, atol=1e-9)


def test_n_init_with_given_means_is_a_param_error() -> None:
    with pytest.raises(ParamError, match="n_init: 2 starts from the means init gives"):
        GaussianMixture(k=2, init=[[0.0], [1.0]], n_init=2)


# --------------------------------------------------------------------------- model


def test_model_round_trips_and_has_its_columns() -> None:
    table = table_of(overlapping(seed=10), g=pa.array(["a"] * 600))
    model, _ = fit_state(GaussianMixture(k=3, covariance="tied", features=["x0", "x1"]),
                         [table])
    out = model.transform(table, NUMPY)
    assert out.schema == model.output_schema(table.schema)
    assert out.schema.field("prediction").type == pa.int64()
    assert out.schema.field("probability").type == pa.list_(pa.float64())
    assert out.schema.field("log_likelihood").type == pa.float64()
    assert roundtrip(model).transform(table, NUMPY).equals(out)
    np.testing.assert_allclose(np.array(out.column("probability").to_pylist()).sum(axis=1), 1.0)


# --------------------------------------------------------------------------- errors


def test_more_components_than_rows() -> None:
    table = table_of(overlapping(rows=5))
    with pytest.raises(DataError, match="5 training rows for k = 6 components") as info:
        fit_state(GaussianMixture(k=6), [table])
    assert "lower k" in info.value.hint



def test_one_component_of_one_row() -> None:
    """k = 1 needs one training row (a component a row), as k components need k: the
    start of one component is no kmeans start of two clusters, nor its error."""
    table = table_of(np.array([[1.0, 2.0]]))
    model, state = fit_state(GaussianMixture(k=1, reg_covar=0.5), split(table, 2))
    np.testing.assert_allclose(model.means, [[1.0, 2.0]])
    np.testing.assert_allclose(model.covariances, [0.5 * np.eye(2)])
    assert state["rows"] == 1
    with pytest.raises(DataError, match="no training rows"):
        fit_state(GaussianMixture(k=1), [table.slice(0, 0)])

def test_a_singular_covariance_says_what_to_do() -> None:
    X = overlapping(seed=11)
    table = table_of(np.column_stack([X, X[:, 0]]))  # a feature twice
    with pytest.raises(DataError, match="singular even after reg_covar = 0") as info:
        fit_state(GaussianMixture(k=2, reg_covar=0.0), [table])
    assert "raise reg_covar" in info.value.hint and "covariance: diag" in info.value.hint
    model, _ = fit_state(GaussianMixture(k=2, covariance="diag", reg_covar=0.0), [table])
    assert np.all(model.covariances > 0)



@pytest.mark.parametrize("covariance", ["diag", "spherical"])
def test_a_singular_variance_says_what_to_do_for_its_covariance(covariance: str) -> None:
    """A diagonal or spherical fit whose variance is zero (a component of copies of one
    row) is not told to use covariance: diag, which it is already."""
    rng = np.random.default_rng(0)
    X = np.r_[np.zeros((50, 2)), rng.normal(size=(50, 2)) + 10]
    with pytest.raises(DataError, match="singular even after reg_covar = 0") as info:
        fit_state(GaussianMixture(k=2, covariance=covariance, reg_covar=0.0),
                  [table_of(X)])
    assert "raise reg_covar" in info.value.hint
    assert "covariance: diag" not in info.value.hint
    assert "duplicated feature" not in str(info.value)

def test_null_feature_is_a_data_error_naming_the_column() -> None:
    table = pa.table({"x0": [1.0, 2.0, None, 4.0], "x1": [1.0, 0.0, 1.0, 3.0]})
    with pytest.raises(DataError, match="'x0' has 1 null"):
        fit_state(GaussianMixture(k=2), [table])


def test_plan_time_errors() -> None:
    schema = pa.schema([("x0", pa.float64()), ("x1", pa.float64()), ("s", pa.string())])
    with pytest.raises(SchemaError, match="'s' is string"):
        GaussianMixture(k=2, features=["x0", "s"]).output_schema(schema)
    with pytest.raises(ParamError, match="the means have 3 values and there are 2"):
        GaussianMixture(k=2, init=[[0, 0, 0], [1, 1, 1]]).output_schema(schema)
    with pytest.raises(ParamError, match="init gives 1 means and k is 2"):
        GaussianMixture(k=2, init=[[0, 0]])
    with pytest.raises(ValidationError):
        GaussianMixture(k=2, covariance="banded")
    with pytest.raises(ValidationError):
        GaussianMixture(k=2, reg_covar=-1.0)


def test_too_few_distinct_points_are_called_components() -> None:
    """The start is kmeans' own, but its errors speak of the step's components."""
    from operators.testing.kit import fit

    table = pa.table({"a": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], "b": [0.0] * 3 + [1.0] * 3})
    with pytest.raises(DataError, match="2 distinct points to start 3 components from"):
        fit(GaussianMixture(k=3), [table])
    with pytest.raises(DataError, match="2 distinct points to start 3 clusters from"):
        fit(KMeans(k=3), [table])
