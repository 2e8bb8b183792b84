"""pca against scikit-learn's PCA (svd_solver="full"), over in-memory partitions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError
from sklearn.decomposition import PCA as SkPCA

from operators.arrays import get_namespace
from operators.base import DataError, ParamError, SchemaError, drive, tree_reduce
from operators.features.pca import PCA, PCAFitted
from operators.testing.kit import roundtrip, split

NUMPY = get_namespace("numpy")
STRICT = get_namespace("array_api_strict")


def fit_state(params: dict[str, Any], parts: list[pa.Table], xp: Any = NUMPY
              ) -> tuple[PCAFitted, dict[str, Any]]:
    """The fitted transform and the run-record metrics."""
    estimator = PCA(**params)

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], estimator.combine)

    state, rounds = drive(estimator, parts[0].schema, aggregate)
    assert rounds == 1
    return estimator.fitted(state), estimator.metrics(state)


def table_of(X: np.ndarray, **extra: Any) -> pa.Table:
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, **extra})


def names(X: np.ndarray) -> list[str]:
    return [f"x{j}" for j in range(X.shape[1])]


def projected(fitted: PCAFitted, table: pa.Table, xp: Any = NUMPY) -> np.ndarray:
    out = fitted.transform(table, xp)
    return np.column_stack([out.column(n).to_numpy() for n in fitted.names])


def shapes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    tall = rng.standard_normal((20_000, 8)) @ rng.standard_normal((8, 8))
    # strongly correlated columns on scales from 1e-3 to 1e3, far from zero
    base = rng.standard_normal((3000, 5))
    correlated = np.column_stack([base[:, 0] * 1e3 + 5e3, base[:, 0] * 2e3 + base[:, 1],
                                  base[:, 1] * 1e-1 + base[:, 3] * 1e-2 - 7,
                                  base[:, 2] + base[:, 0] * 0.1,
                                  base[:, :3] @ np.array([1.0, -2.0, 0.5]) + base[:, 4] + 40])
    # a column within 1e-3 of the sum of two others: one variance ~1e-7 of the largest
    near = rng.standard_normal((4000, 5)) * np.array([1.0, 2.0, 3.0, 0.5, 1.5])
    near = np.column_stack([near, near[:, 0] + near[:, 1] + rng.standard_normal(4000) * 1e-3])
    return {"tall": tall, "correlated": correlated, "near-degenerate": near}


SHAPES = shapes()


def assert_matches_sklearn(X: np.ndarray, params: dict[str, Any], parts: int = 7,
                           xp: Any = NUMPY) -> PCAFitted:
    table = table_of(X)
    fitted, metrics = fit_state({"columns": names(X), **params}, split(table, parts), xp)
    sk = SkPCA(n_components=params["k"], svd_solver="full",
               whiten=params.get("whiten", False)).fit(X)
    largest = sk.explained_variance_[0]
    np.testing.assert_allclose(fitted.arrays["mean"], sk.mean_, rtol=1e-12,
                               atol=1e-12 * np.abs(X).max())
    np.testing.assert_allclose(fitted.arrays["explained_variance"], sk.explained_variance_,
                               rtol=1e-9, atol=1e-14 * largest)
    np.testing.assert_allclose(fitted.arrays["explained_variance_ratio"],
                               sk.explained_variance_ratio_, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(fitted.arrays["components"], sk.components_, atol=1e-9)
    # scikit-learn's transform projects before it centres (X @ C' - mean @ C'), which
    # loses the digits of a mean far from zero: centre first, with its mean and components
    expected = (X - sk.mean_) @ sk.components_.T
    if params.get("whiten"):
        expected /= np.sqrt(sk.explained_variance_)
    np.testing.assert_allclose(sk.transform(X), expected, rtol=0,
                               atol=1e-15 * np.abs(X).max() * np.abs(expected).max() + 1e-9)
    # and a mean far from zero is known to a few of its own ulps per level of the combine
    resolution = 64 * np.finfo(np.float64).eps * np.abs(X).max()
    np.testing.assert_allclose(projected(fitted, table, xp), expected, rtol=0,
                               atol=1e-9 * np.abs(expected).max() + resolution)
    assert metrics["explained_variance_ratio"] == pytest.approx(
        list(sk.explained_variance_ratio_), rel=1e-9, abs=1e-14)
    assert metrics["explained_variance_ratio_total"] == pytest.approx(
        float(sk.explained_variance_ratio_.sum()), rel=1e-9)
    assert metrics["components"] == sk.n_components_ == len(fitted.names)
    return fitted


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("params", [{"k": 3}, {"k": 3, "whiten": True}, {"k": 0.95},
                                    {"k": 0.999999, "whiten": True}],
                         ids=["k3", "k3-whiten", "k0.95", "k0.999999-whiten"])
def test_matches_sklearn(shape: str, params: dict[str, Any]) -> None:
    assert_matches_sklearn(SHAPES[shape], params)


def test_every_component_and_the_signs_of_sklearn_1_9() -> None:
    X = SHAPES["correlated"]
    fitted = assert_matches_sklearn(X, {"k": X.shape[1]})
    components = fitted.arrays["components"]
    np.testing.assert_allclose(components @ components.T, np.eye(X.shape[1]), atol=1e-12)
    # svd_flip(u_based_decision=False): the largest loading of each component is positive
    largest = components[np.arange(len(components)), np.abs(components).argmax(axis=1)]
    assert (largest > 0).all()


def test_a_mean_far_from_zero_on_many_partitions() -> None:
    """Chan's combine keeps the covariance of columns whose mean is 1e7 standard
    deviations from zero (a sum of squares would cancel every digit)."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((6000, 4)) @ rng.standard_normal((4, 4)) + 1e7
    assert_matches_sklearn(X, {"k": 4}, parts=200)


@pytest.mark.parametrize(("shape", "tolerance"), [("tall", 1e-12), ("correlated", 1e-7)])
def test_partition_invariance_and_order(shape: str, tolerance: float) -> None:
    """As close as the covariance's rounding lets: a component of variance 1e-11 of the
    largest (correlated) moves by up to eps x the variance ratio with the partitioning."""
    X = SHAPES[shape]
    table = table_of(X)
    params = {"columns": names(X), "k": 4, "whiten": True}
    one, _ = fit_state(params, [table])
    expected = projected(one, table)
    for parts, seed in ((5, None), (31, 4), (64, 2)):
        fitted, _ = fit_state(params, split(table, parts, seed))
        for key, value in one.arrays.items():
            np.testing.assert_allclose(fitted.arrays[key], value, rtol=tolerance,
                                       atol=tolerance * np.abs(value).max(), err_msg=key)
        np.testing.assert_allclose(projected(fitted, table), expected, rtol=0,
                                   atol=tolerance * np.abs(expected).max())


def test_strict_array_api_gives_numpys_result() -> None:
    X = SHAPES["tall"][:3000]
    table = table_of(X)
    params = {"columns": names(X), "k": 5, "whiten": True}
    expected, _ = fit_state(params, split(table, 3))
    placed = get_namespace("array_api_strict", STRICT.Device("device1"))
    for xp in (STRICT, placed):
        got, _ = fit_state(params, split(table, 3), xp)
        for key, value in expected.arrays.items():
            np.testing.assert_allclose(got.arrays[key], value, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(projected(got, table, xp), projected(expected, table),
                                   rtol=0, atol=1e-12)


def test_float32_within_its_tolerance() -> None:
    """float32 row work, float64 sums (docs/float32.md): components within 1e-5 of
    float64, projections within 1e-5 of the projections' scale (measured: 9e-8 and 1.1e-7)
    on columns of like scale (float32 resolves variances down to about 1e-7 of the
    largest only)."""
    X = SHAPES["tall"]
    table = table_of(X)
    params = {"columns": names(X), "k": 4}
    expected, _ = fit_state(params, split(table, 3))
    xp32 = get_namespace("array_api_strict", STRICT.Device("device1"), "float32")
    got, _ = fit_state(params, split(table, 3), xp32)
    np.testing.assert_allclose(got.arrays["components"], expected.arrays["components"],
                               atol=1e-5)
    np.testing.assert_allclose(got.arrays["explained_variance"],
                               expected.arrays["explained_variance"], rtol=1e-5)
    reference = projected(expected, table)
    np.testing.assert_allclose(projected(got, table, xp32), reference, rtol=0,
                               atol=1e-5 * np.abs(reference).max())


def test_weights_count_rows() -> None:
    """Integer weights give the PCA of the rows repeated that many times."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4))
    weights = rng.integers(0, 4, 500).astype(np.float64)
    table = table_of(X, w=weights)
    fitted, metrics = fit_state({"columns": names(X), "k": 3, "weight": "w"}, split(table, 4))
    repeated = np.repeat(X, weights.astype(int), axis=0)
    sk = SkPCA(n_components=3, svd_solver="full").fit(repeated)
    np.testing.assert_allclose(fitted.arrays["mean"], sk.mean_, atol=1e-12)
    np.testing.assert_allclose(fitted.arrays["explained_variance"], sk.explained_variance_,
                               rtol=1e-10)
    np.testing.assert_allclose(fitted.arrays["components"], sk.components_, atol=1e-10)
    assert "w" in fitted.transform(table, NUMPY).column_names  # the weight passes through
    assert metrics["rows"] == 500


def test_fewer_rows_than_columns_and_a_constant_column() -> None:
    """A rank-deficient covariance: the components of positive variance are
    scikit-learn's; those of zero variance come only when k asks for them, with
    variance 0, orthonormal, on every partitioning the same, and 0 when whitened."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 9))
    X[:, 3] = 2.5
    rank = 5  # 6 centred rows
    assert_matches_sklearn(X, {"k": rank}, parts=3)
    table = table_of(X)
    params = {"columns": names(X), "k": 9, "whiten": True}
    fitted, metrics = fit_state(params, split(table, 2))
    assert metrics["rank"] == rank
    variance, components = fitted.arrays["explained_variance"], fitted.arrays["components"]
    assert (variance[rank:] == 0).all() and (variance[:rank] > 0).all()
    np.testing.assert_allclose(components @ components.T, np.eye(9), atol=1e-12)
    centred = X - X.mean(axis=0)
    np.testing.assert_allclose(centred @ components[rank:].T, 0, atol=1e-12)
    whitened = projected(fitted, table)
    assert (whitened[:, rank:] == 0).all()
    np.testing.assert_allclose(whitened[:, :rank].var(axis=0, ddof=1), 1, rtol=1e-9)
    for parts, seed in ((3, 1), (6, 2)):
        other, _ = fit_state(params, split(table, parts, seed))
        np.testing.assert_allclose(other.arrays["components"], components, atol=1e-9)


def test_a_sign_tie_is_the_same_on_every_partitioning() -> None:
    """Two standardised columns: loadings of +-1/sqrt(2), the tie broken by rounding."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    table = table_of(x)
    params = {"columns": ["x0", "x1"], "k": 2}
    first, _ = fit_state(params, [table])
    for parts in (2, 3, 7, 16):
        other, _ = fit_state(params, split(table, parts, parts))
        np.testing.assert_allclose(other.arrays["components"], first.arrays["components"],
                                   atol=1e-12)
    # the first loading decides a tie
    assert (first.arrays["components"][:, 0] > 0).all()


def test_output_columns_keep_prefix_and_schema() -> None:
    X = SHAPES["correlated"][:200]
    table = table_of(X, plan=pa.array(["a", "b"] * 100))
    replaced = PCA(columns=["x1", "x0", "x3"], k=2)
    assert replaced.output_schema(table.schema).names == ["x2", "x4", "plan", "pca_0",
                                                         "pca_1"]
    kept = PCA(columns=["x1", "x0"], k=1, keep=True, prefix="pc")
    fitted, _ = fit_state(kept.params.model_dump(), [table])
    out = fitted.transform(table, NUMPY)
    assert out.column_names == [*table.column_names, "pc0"]
    assert out.schema == fitted.output_schema(table.schema) == kept.output_schema(
        table.schema)
    assert out.schema.field("pc0").type == pa.float64()
    assert fitted.derived_from() == {"pc0": ["x1", "x0"]}
    # a fraction decides its components in the fit; the plan knows of one at least
    fraction = PCA(columns=names(X), k=0.99)
    assert fraction.schema_from_fit and fraction.output_schema(table.schema).names[-1] == "pca_0"
    again = roundtrip(fitted)
    back = again.transform(table, NUMPY)
    assert back.schema == out.schema and back.drop_columns(["pc0"]).equals(
        out.drop_columns(["pc0"]))
    # the same projection; BLAS's last bits may follow the arrays' alignment (AVX-512
    # kernels on an AMD EPYC: 1 ulp)
    np.testing.assert_allclose(back.column("pc0").to_numpy(), out.column("pc0").to_numpy(),
                               rtol=1e-14, atol=0)
    empty = fitted.transform(table.schema.empty_table(), NUMPY)
    assert empty.num_rows == 0 and empty.schema == out.schema


# --------------------------------------------------------------------------- errors


def test_nulls_and_nan_are_errors_naming_the_column_and_count() -> None:
    X = SHAPES["tall"][:100].copy()
    params = {"columns": names(X), "k": 2}
    with_null = table_of(X).set_column(
        2, "x2", pa.array(X[:, 2], mask=np.arange(100) % 10 == 0))
    with pytest.raises(DataError, match="pca input column 'x2' has 10 null values") as info:
        fit_state(params, [with_null])
    assert "impute" in info.value.hint
    X[:3, 5] = np.nan
    with pytest.raises(DataError, match="column 'x5' has 3 NaN or infinite values"):
        fit_state(params, [table_of(X)])
    fitted, _ = fit_state(params, [table_of(SHAPES["tall"][:100])])
    with pytest.raises(DataError, match="column 'x5' has 3 NaN"):  # when scoring too
        fitted.transform(table_of(X), NUMPY)


def test_too_few_rows_constant_data_and_small_weights() -> None:
    X = SHAPES["tall"][:1]
    with pytest.raises(DataError, match="at least 2 rows to fit, got 1"):
        fit_state({"columns": names(X), "k": 2}, [table_of(X), table_of(X[:0])])
    constant = np.ones((10, 3))
    with pytest.raises(DataError, match="no variance") as info:
        fit_state({"columns": names(constant), "k": 1}, [table_of(constant)])
    assert "constant" in info.value.hint
    X = SHAPES["tall"][:10]
    with pytest.raises(DataError, match="weights in column 'w' sum to 0.5"):
        fit_state({"columns": names(X), "k": 1, "weight": "w"},
                  [table_of(X, w=np.full(10, 0.05))])


@pytest.mark.parametrize(("params", "message"), [
    ({"k": 0}, "k must be from 1 to the number of columns \\(3\\), got 0"),
    ({"k": 1.5}, "fractional k must be in \\(0, 1\\), got 1.5"),
    ({"k": 1.0}, "got 1.0"),
    ({"k": True}, "not a boolean"),
    ({"k": 2, "prefix": ""}, "prefix"),
    ({}, "k\n  Field required"),
])
def test_parameters_checked_when_planned(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PCA(columns=["a", "b", "c"], **params)


def test_columns_checked_when_planned() -> None:
    schema = pa.schema([("a", pa.float64()), ("b", pa.int32()), ("plan", pa.string()),
                        ("pca_0", pa.float64())])
    with pytest.raises(ParamError, match="column 'a' is listed twice"):
        PCA(columns=["a", "a"], k=1)
    with pytest.raises(ParamError, match="weight column 'a' is also in `columns`"):
        PCA(columns=["a", "b"], k=1, weight="a")
    with pytest.raises(SchemaError, match="column 'plan' is string, but pca needs numbers"):
        PCA(columns=["a", "plan"], k=1).output_schema(schema)
    # k past the columns: known with the schema (a sparse column's terms count)
    with pytest.raises(SchemaError, match=r"pca k must be from 1 to the number of columns "
                                          r"\(2\), got 3"):
        PCA(columns=["a", "b"], k=3).output_schema(schema)
    with pytest.raises(SchemaError, match="output column 'pca_0' is already in the input"):
        PCA(columns=["a", "b"], k=1).output_schema(schema)
    # replaced inputs free their names
    assert PCA(columns=["a", "pca_0"], k=1).output_schema(schema).names == ["b", "plan",
                                                                          "pca_0"]
