"""Sparse term columns (vectorize_text's ``sparse: true``) and the models that read them:
the same numbers as the dense columns, scikit-learn's sparse matrices and models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import lines_run
from sklearn.cluster import KMeans as SkKMeans
from sklearn.decomposition import PCA as SkPCA
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression as SkLogistic
from sklearn.metrics import log_loss
from sklearn.naive_bayes import BernoulliNB, ComplementNB, MultinomialNB

from operators.arrays import get_namespace
from operators.base import DataError, SchemaError, drive, tree_reduce
from operators.features.pca import PCA
from operators.features.text import VectorizeText, VectorizeTextFitted
from operators.models.common import host_matrix
from operators.models.forest import DecisionTree
from operators.models.isolation_forest import IsolationForest
from operators.models.kmeans import KMeans
from operators.models.linear import LinearRegression
from operators.models.logistic import LogisticRegression
from operators.models.mlp import MLP
from operators.models.mlp import _batch_order as epoch_order
from operators.models.mlp import _row_keys as row_keys
from operators.models.naive_bayes import NaiveBayes
from operators.sparse import (
    csr_matrix,
    csr_parts,
    from_csr,
    groups,
    is_sparse_type,
    sparse_field,
    sparse_names,
    sparse_type,
)
from operators.testing.kit import roundtrip, split
from tests.operators.test_text import SKLEARN_CASES, corpus, fit
from tests.pipelines.test_text_pipelines import tickets


def fit_model(op: Any, parts: list[pa.Table], xp: Any = None) -> Any:
    xp = NP if xp is None else xp

    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, xp) for p in parts], op.combine)

    state, _ = drive(op, parts[0].schema, aggregate)
    return op.fitted(state)


NP = get_namespace("numpy")


def dense_of(fitted: VectorizeTextFitted, table: pa.Table) -> np.ndarray:
    out = fitted.transform(table, None)
    field = out.schema.field("text")
    names = sparse_names(field)
    return host_matrix(out, names)


def topics(rows: int = 900, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    docs = corpus(rows, seed)
    label = np.array(["bug", "billing", "other"])[
        [(len(d or "") + int(rng.integers(0, 3))) % 3 for d in docs]]
    return pa.table({"text": docs, "topic": label, "w": rng.uniform(0.5, 2.0, rows)})


@pytest.mark.parametrize("parts", [1, 4])
@pytest.mark.parametrize("ours,theirs", SKLEARN_CASES)
def test_sparse_column_is_scikit_learns_sparse_matrix(ours: dict, theirs: dict,
                                                      parts: int) -> None:
    docs = corpus()
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], sparse=True, **ours), split(table, parts))
    theirs = dict(theirs)
    cls = TfidfVectorizer if theirs.pop("tfidf", False) else CountVectorizer
    reference = cls(**theirs).fit(docs).transform(docs)
    out = fitted.transform(table, None)
    assert out.column_names == ["text"] and is_sparse_type(out.schema.field("text").type)
    assert sparse_names(out.schema.field("text")) == [
        f"text:{t}" for t in fitted.vocabulary["text"]["terms"]]
    ours_csr = csr_matrix(out, sparse_names(out.schema.field("text")))
    reference.sort_indices()
    reference.eliminate_zeros()
    # the same non-zeros in the same places, each row's positions ascending
    np.testing.assert_array_equal(ours_csr.indptr, reference.indptr)
    np.testing.assert_array_equal(ours_csr.indices, reference.indices)
    np.testing.assert_allclose(ours_csr.data, reference.data, rtol=1e-12, atol=1e-15)
    dense = fit(VectorizeText(columns=["text"], **ours), split(table, parts))
    np.testing.assert_array_equal(dense_of(fitted, table), host_matrix(
        dense.transform(table, None), dense.names("text")))


@pytest.mark.parametrize("hashing", ["spark", "sklearn"])
def test_hashed_sparse_column_is_the_hashed_columns(hashing: str) -> None:
    docs = corpus(rows=300, seed=6)
    table = pa.table({"text": docs})
    params = {"num_features": 64, "hashing": hashing}
    fitted = fit(VectorizeText(columns=["text"], sparse=True, **params), [table])
    dense = fit(VectorizeText(columns=["text"], **params), [table])
    field = fitted.transform(table, None).schema.field("text")
    assert sparse_names(field) == [f"text:#{i}" for i in range(64)]
    np.testing.assert_array_equal(dense_of(fitted, table),
                                  host_matrix(dense.transform(table, None),
                                              dense.names("text")))
    if hashing == "sklearn":
        reference = HashingVectorizer(n_features=64, norm=None).transform(docs).toarray()
        np.testing.assert_array_equal(dense_of(fitted, table), reference)


def test_the_sparse_step_survives_its_state_and_a_vocabulary_may_pass_ten_thousand() -> None:
    docs = [" ".join(f"w{i}_{j}" for j in range(30)) for i in range(400)]  # 12,000 terms
    table = pa.table({"text": docs})
    fitted = fit(VectorizeText(columns=["text"], sparse=True), [table])
    assert len(fitted.vocabulary["text"]["terms"]) == 12_000
    back = roundtrip(fitted)
    a, b = fitted.transform(table, None), back.transform(table, None)
    assert a.equals(b) and a.schema.field("text").metadata == b.schema.field("text").metadata
    with pytest.raises(DataError, match="max_features"):
        fit(VectorizeText(columns=["text"]), [table])


@pytest.mark.parametrize("model_type,reference", [
    ("multinomial", MultinomialNB()), ("complement", ComplementNB()),
    ("bernoulli", BernoulliNB()), ("gaussian", None)])
@pytest.mark.parametrize("parts", [1, 3])
def test_naive_bayes_on_a_sparse_column_is_scikit_learns_and_the_dense_columns(
        model_type: str, reference: Any, parts: int) -> None:
    table = topics()
    shuffled = table.take(np.random.default_rng(parts).permutation(table.num_rows))
    words = {"min_df": 2, "ngram_range": [1, 2]}
    sparse_step = fit(VectorizeText(columns=["text"], sparse=True, **words),
                      split(shuffled, parts))
    dense_step = fit(VectorizeText(columns=["text"], **words), split(shuffled, parts))
    sparse_rows = [sparse_step.transform(p, None) for p in split(shuffled, parts)]
    dense_rows = [dense_step.transform(p, None) for p in split(shuffled, parts)]
    params = {"label": "topic", "model_type": model_type, "weight": "w"}
    sparse_model = fit_model(NaiveBayes(**params), sparse_rows)
    dense_model = fit_model(NaiveBayes(**params), dense_rows)
    assert sparse_model.features == dense_model.features == dense_step.names("text")
    for key, value in dense_model.arrays().items():
        np.testing.assert_allclose(sparse_model.arrays()[key], value, rtol=1e-12,
                                   atol=1e-14, err_msg=key)
    scored = sparse_model.transform(sparse_step.transform(table, None), NP)
    proba = np.array(scored.column("probability").to_pylist())
    np.testing.assert_allclose(proba, np.array(dense_model.transform(
        dense_step.transform(table, None), NP).column("probability").to_pylist()),
        rtol=1e-10)
    if reference is not None:
        docs = table.column("text").to_pylist()
        counts = CountVectorizer(ngram_range=(1, 2), min_df=2).fit_transform(docs)
        reference.fit(counts, table.column("topic").to_pylist(),
                      sample_weight=table.column("w").to_numpy())
        np.testing.assert_allclose(proba, reference.predict_proba(counts), rtol=1e-9)


@pytest.mark.parametrize("parts", [1, 4])
def test_logistic_regression_on_a_sparse_column_is_scikit_learns(parts: int) -> None:
    table = tickets(600, seed=3)
    words = {"min_df": 2, "idf": "smooth", "norm": "l2"}
    step = fit(VectorizeText(columns=["text"], sparse=True, **words), split(table, parts))
    rows = [step.transform(p, None) for p in split(table, parts)]
    l2 = 0.01
    model = fit_model(LogisticRegression(label="topic", features=["text"], l2=l2,
                                         solver="lbfgs", tol=1e-10, max_iter=500), rows)
    docs = table.column("text").to_pylist()
    X = TfidfVectorizer(min_df=2).fit_transform(docs)
    n = table.num_rows
    # sluice's loss is the mean log-loss + l2/2 |w|^2: scikit-learn's C = 1 / (n l2)
    sk = SkLogistic(C=1.0 / (n * l2), tol=1e-12, max_iter=5000).fit(
        X, table.column("topic").to_pylist())
    out = model.transform(step.transform(table, None), NP)
    proba = np.array(out.column("probability").to_pylist())
    labels = table.column("topic").to_pylist()

    def objective(p: np.ndarray, coef: np.ndarray) -> float:
        return log_loss(labels, p, labels=sk.classes_) + l2 / 2 * float((coef ** 2).sum())

    # the same problem and minimum (sluice's at least as low as scikit-learn's)
    assert objective(proba, model.coef) <= objective(sk.predict_proba(X), sk.coef_) + 1e-12
    assert objective(proba, model.coef) > objective(sk.predict_proba(X), sk.coef_) - 1e-8
    np.testing.assert_allclose(proba, sk.predict_proba(X), atol=1e-4)
    # and on the dense columns the same model
    dense = fit(VectorizeText(columns=["text"], **words), split(table, parts))
    dense_model = fit_model(LogisticRegression(label="topic", l2=l2, solver="lbfgs",
                                               features=dense.names("text"), tol=1e-10,
                                               max_iter=500),
                            [dense.transform(p, None) for p in split(table, parts)])
    np.testing.assert_allclose(model.coef, dense_model.coef, atol=1e-6)
    np.testing.assert_allclose(model.means, dense_model.means, rtol=1e-12, atol=1e-15)


def test_off_numpy_the_rows_are_made_dense_with_the_same_model() -> None:
    """On a GPU (here the strict stand-in) a sparse column's rows are made dense in the
    model's matrix: the same model and scores as SciPy's CSR path."""
    table = topics(seed=5)
    step = fit(VectorizeText(columns=["text"], sparse=True, min_df=2), [table])
    rows = step.transform(table, None)
    strict = get_namespace("array_api_strict")
    cpu = fit_model(NaiveBayes(label="topic", model_type="multinomial"), [rows])
    off = fit_model(NaiveBayes(label="topic", model_type="multinomial"), [rows], strict)
    np.testing.assert_allclose(off.feature_log_prob, cpu.feature_log_prob, rtol=1e-12)
    a = cpu.transform(rows, NP).column("probability").to_pylist()
    b = off.transform(rows, strict).column("probability").to_pylist()
    np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-12)


def test_steps_that_read_no_sparse_column_say_which_do() -> None:
    table = topics()
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    schema = step.output_schema(table.schema)
    from operators.models.gaussian_mixture import GaussianMixture

    # gaussian_mixture's kmeans start reads one, its EM passes' matrices do not
    for refusing in (GaussianMixture(k=2), GaussianMixture(k=2, features=["text", "w"])):
        with pytest.raises(SchemaError, match="sparse column.*naive_bayes, logistic_regression"
                                              ".*isolation_forest"):
            refusing.output_schema(schema)
    with pytest.raises(SchemaError, match="one position of the sparse column 'text'"):
        NaiveBayes(label="topic", features=["text:app"]).output_schema(schema)
    # listed whole, or left out for others, is fine
    NaiveBayes(label="topic", features=["text"]).output_schema(schema)
    GaussianMixture(k=2, features=["w"]).output_schema(schema)
    IsolationForest().output_schema(schema)


def test_a_sparse_column_of_other_positions_is_refused_by_name() -> None:
    good = from_csr(np.array([0, 2, 2, 3]), np.array([0, 3, 1]), np.array([1.0, 2.0, 5.0]))
    assert is_sparse_type(good.type) and good.type == sparse_type()
    indptr, at, values = csr_parts(pa.chunked_array([good]), 4, "text")
    np.testing.assert_array_equal(indptr, [0, 2, 2, 3])
    with pytest.raises(DataError, match="position 3, outside the 3"):
        csr_parts(good, 3, "text")
    bad = from_csr(np.array([0, 1]), np.array([0]), np.array([np.nan]))
    with pytest.raises(DataError, match="NaN"):
        csr_parts(bad, 3, "text")
    nulls = pa.array([None, {"indices": [1], "values": [2.0]}], sparse_type())
    indptr, at, values = csr_parts(nulls, 3, "text")
    np.testing.assert_array_equal(indptr, [0, 0, 1])  # a null row has no non-zeros
    uneven = pa.array([{"indices": [1, 2], "values": [2.0]}], sparse_type())
    with pytest.raises(DataError, match="2 positions and 1 values in row 0"):
        csr_parts(uneven, 3, "text")


@pytest.mark.parametrize("params", [{"l2": 0.01}, {"loss": "poisson", "l2": 0.001}])
def test_linear_regression_on_a_sparse_column_is_the_dense_columns_model(params: dict
                                                                        ) -> None:
    table = topics(seed=4)
    target = pa.array(np.array([len(t or "") for t in table.column("text").to_pylist()],
                               float) / 10.0 + 0.5)
    table = table.append_column("size", target)
    sparse_step = fit(VectorizeText(columns=["text"], sparse=True, min_df=3), split(table, 3))
    dense_step = fit(VectorizeText(columns=["text"], min_df=3), split(table, 3))
    models = []
    for step, features in ((sparse_step, ["text"]), (dense_step, dense_step.names("text"))):
        rows = [step.transform(p, None) for p in split(table, 3)]
        models.append(fit_model(LinearRegression(label="size", features=features, **params),
                                rows))
    sparse_model, dense_model = models
    assert sparse_model.features == dense_model.features
    np.testing.assert_allclose(sparse_model.coef, dense_model.coef, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sparse_model.means, dense_model.means, rtol=1e-12,
                               atol=1e-15)
    got = sparse_model.transform(sparse_step.transform(table, None), NP)
    want = dense_model.transform(dense_step.transform(table, None), NP)
    np.testing.assert_allclose(got.column("prediction").to_numpy(),
                               want.column("prediction").to_numpy(), rtol=1e-8)


@pytest.mark.parametrize("test,score", [("chi2", "chi2"), ("anova", "f_classif")])
def test_select_features_keeps_scikit_learns_terms_as_one_sparse_column(test: str,
                                                                        score: str) -> None:
    from sklearn import feature_selection

    from operators.features.select_features import SelectFeatures

    table = tickets(900, seed=8)
    step = fit(VectorizeText(columns=["text"], sparse=True), split(table, 3))
    rows = [step.transform(p, None) for p in split(table, 3)]
    select = SelectFeatures(label="topic", features=["text"], test=test, k=8)
    chosen = fit_model(select, rows)
    docs = table.column("text").to_pylist()
    vectorizer = CountVectorizer()
    counts = vectorizer.fit_transform(docs)
    reference = feature_selection.SelectKBest(getattr(feature_selection, score), k=8).fit(
        counts, table.column("topic").to_pylist())
    names = vectorizer.get_feature_names_out()
    assert sorted(chosen.params.kept) == sorted(f"text:{t}"
                                                for t in names[reference.get_support()])
    out = chosen.transform(step.transform(table, None), NP)
    field = out.schema.field("text")
    assert sparse_names(field) == chosen.params.kept  # in position order
    kept = reference.transform(counts)
    kept.sort_indices()
    got = csr_matrix(out, sparse_names(field))
    np.testing.assert_array_equal(got.indptr, kept.indptr)
    np.testing.assert_array_equal(got.indices, kept.indices)
    np.testing.assert_array_equal(got.data, kept.data)
    # a model after it reads the kept terms; saved and loaded, the step is the same
    model = fit_model(NaiveBayes(label="topic", model_type="multinomial",
                                 features=["text"]), [out])
    assert model.features == chosen.params.kept
    assert roundtrip(chosen).transform(step.transform(table, None), NP).equals(out)


def test_select_features_of_a_sparse_column_refuses_a_dense_test() -> None:
    from operators.features.select_features import SelectFeatures

    table = topics()
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    schema = step.output_schema(table.schema)
    with pytest.raises(SchemaError, match="test variance of a sparse column"):
        SelectFeatures(features=["text"], k=3).output_schema(schema)

def test_a_column_named_as_a_term_of_a_sparse_column_is_refused_by_name() -> None:
    """``review:title`` a column and the term 'title' of the sparse column ``review``:
    a model's features name one thing each (the fit took the column for the term's
    place, and said the positions were another vocabulary's)."""
    table = pa.table({"review": ["good title", "bad title", "good", "bad"] * 5,
                      "review:title": np.arange(20.0), "y": ["a", "b"] * 10})
    step = fit(VectorizeText(columns=["review"], sparse=True), [table])
    schema = step.output_schema(table.schema)
    for features in (None, ["review", "review:title"], ["review"]):
        with pytest.raises(SchemaError, match="feature 'review:title' of the sparse column "
                                              "'review' .* is also the name of a column"):
            LogisticRegression(label="y", features=features).output_schema(schema)
    renamed = table.rename_columns(["review", "length", "y"])
    model = fit_model(LogisticRegression(label="y"), [step.transform(renamed, None)])
    assert model.features == ["review:bad", "review:good", "review:title", "length"]


def test_rows_made_dense_past_the_memory_share_are_refused_before_the_allocation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that makes a sparse column's rows dense (linear regression's passes, the
    Gaussian naive Bayes, a GPU) checks the partition's matrix against
    the share of memory the term columns may take (here 64 KB), as vectorize_text
    does, before it allocates it; the steps that read the rows sparse do not."""
    import operators.features.text as text

    table = topics(seed=7).append_column("size", pa.array(np.arange(900.0)))
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    rows = step.transform(table, None)
    width = len(step.vocabulary["text"]["terms"])
    assert 8 * 900 * width > 65536
    monkeypatch.setattr(text, "dense_limit", lambda: 65536.0)
    for model in (LinearRegression(label="size", features=["text"], loss="poisson",
                                   solver="lbfgs"),
                  NaiveBayes(label="topic", model_type="gaussian")):
        with pytest.raises(DataError, match=rf"a partition of 900 rows with the {width:,} "
                                            r"terms of the sparse column 'text' made dense "
                                            r"\(this step's matrix\) takes .* GiB, over 25% "
                                            r"of") as err:
            fit_model(model, [rows])
        assert "partition_mb" in err.value.hint and "max_features" in err.value.hint
    fit_model(NaiveBayes(label="topic", model_type="multinomial"), [rows])
    fit_model(LogisticRegression(label="topic", features=["text"], solver="lbfgs", l2=0.01),
              [rows])


def test_normal_equations_too_wide_for_memory_are_refused_before_the_first_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """linear_regression's squared loss sums a (features + 2)^2 matrix a partition: with a
    sparse column's terms (no 10,000-term cap) it is checked against the term columns'
    share of memory (here just under it) before any pass; the log-link losses, fitted
    by L-BFGS without it, are not refused."""
    import operators.features.text as text

    table = topics(seed=7).slice(0, 12)
    table = table.append_column("size", pa.array(np.arange(1.0, 13.0)))
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    rows = step.transform(table, None)
    width = len(step.vocabulary["text"]["terms"]) + 2
    assert 8 * 12 * width < 8 * width * width - 1
    monkeypatch.setattr(text, "dense_limit", lambda: 8.0 * width * width - 1)
    with pytest.raises(DataError, match=rf"normal equations on {width - 2:,} features "
                                        rf"\({width - 2:,} terms of the sparse column 'text'\)"
                                        rf" take a {width:,} x {width:,} matrix") as err:
        fit_model(LinearRegression(label="size", features=["text"]), [rows])
    assert "max_features" in err.value.hint
    fit_model(LinearRegression(label="size", features=["text"], loss="poisson", l2=0.01),
              [rows])


def test_contributions_of_a_wide_vocabulary_are_refused_before_the_allocation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row's contributions are dense, a number per term and class: with 3 classes
    three times the rows made dense; past the memory share (here between the two) the
    scores are made all the same and the contributions refused by name."""
    import operators.features.text as text

    table = topics(seed=7)
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    rows = step.transform(table, None)
    model = fit_model(LogisticRegression(label="topic", features=["text"], l2=0.01), [rows])
    width = len(model.features)
    monkeypatch.setattr(text, "dense_limit", lambda: 8.0 * 900 * width * 2)
    assert model.transform(rows, NP).num_rows == 900
    with pytest.raises(DataError, match=rf"a partition of 900 rows with the {width:,} terms "
                                        r"of the sparse column 'text' made dense"):
        model.explain(rows, NP)
    assert model.explain(rows.slice(0, 400), NP).num_rows == 400


def test_a_million_hashed_positions_are_grouped_faster_than_they_are_named() -> None:
    """``groups`` runs on every scored partition and served request (three times): a
    hashed column's 2^20 positions took a second (a Python step a name), more than
    making their names; the runs are the same where names nest or hold line breaks."""
    field = sparse_field("text", 2 ** 20, None)
    schema = pa.schema([pa.field("x", pa.float64()), field])
    names = ["x", *sparse_names(field)]
    assert groups(schema, names) == ((None, 0, 1), ("text", 1, 2 ** 20 + 1))
    # walked (a new list each time: nothing remembered) with no Python step a name: the
    # lines Python runs counted, not timed (a test asserts no speed; bench/ measures it)
    lines = lines_run(lambda: groups(schema, list(names)))
    assert 0 < lines < 10_000, lines
    # a model's own list, walked again for each partition: remembered, for that list
    assert groups(schema, names) is groups(schema, names)
    fewer = names[:-1]
    assert groups(schema, fewer) == ((None, 0, 1), ("text", 1, 2 ** 20))
    assert groups(pa.schema([pa.field("x", pa.float64())]), names)[1] == (None, 1, 2)
    nested = pa.schema([pa.field("a", sparse_type()), pa.field("a:x", sparse_type()),
                        pa.field("b", sparse_type()), pa.field("c", pa.float64())])
    assert groups(nested, ["a:p", "a:x:q", "a:x:r", "a:s", "c", "b:t\nb:u", "b:v",
                           "a:w", "\n", "b:"]) == (
        ("a", 0, 1), ("a:x", 1, 3), ("a", 3, 4), (None, 4, 5), ("b", 5, 7), ("a", 7, 8),
        (None, 8, 9), ("b", 9, 10))


def test_a_newton_hessian_too_large_for_memory_is_refused_before_the_first_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """solver: newton sums a (coefficients)^2 Hessian a partition: a sparse column's
    terms can make it any size; past the memory share it is refused, saying lbfgs."""
    import operators.features.text as text

    table = topics(seed=7)
    rows = fit(VectorizeText(columns=["text"], sparse=True), [table]).transform(table, None)
    model = fit_model(LogisticRegression(label="topic", features=["text"], l2=0.01,
                                         solver="newton"), [rows])
    size = model.coef.size + model.intercept.size
    monkeypatch.setattr(text, "dense_limit", lambda: 8.0 * size * size - 1)
    with pytest.raises(DataError, match=rf"solver: newton's Hessian of {size:,} "
                                        "coefficients takes") as err:
        fit_model(LogisticRegression(label="topic", features=["text"], l2=0.01,
                                     solver="newton"), [rows])
    assert "solver: lbfgs" in err.value.hint


def test_two_sparse_columns_naming_one_feature_are_refused() -> None:
    """Column 'a:x' and column 'a' whose term is 'x:q' both make the feature 'a:x:q'."""
    from operators.sparse import expand, sparse_field

    schema = pa.schema([sparse_field("a", 2, ["x:q", "z"]), sparse_field("a:x", 1, ["q"])])
    with pytest.raises(SchemaError, match="two of the features are named 'a:x:q'"):
        expand(schema, ["a", "a:x"])
    assert expand(schema, ["a"]) == ["a:x:q", "a:z"]


def test_a_fitted_model_scoring_a_sparse_column_in_a_numbers_place_says_so() -> None:
    """A model fitted on numbers, scored where a feature's column is a sparse one (another
    pipeline's column of that name): every model says which feature, as it plans to
    score; kmeans, trees and the mixtures raised a TypeError of Python's (a row's dict
    made a float) as the rows were read."""
    from operators.models.boosted_trees import GradientBoostedTrees
    from operators.models.gaussian_mixture import GaussianMixture
    from operators.models.isolation_forest import IsolationForest
    from operators.models.kmeans import KMeans

    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(size=200), "b": rng.normal(size=200),
                      "y": (rng.random(200) > 0.5).astype(np.int64)})
    sparse = from_csr(np.arange(201), np.zeros(200, np.int64), np.ones(200))
    scored = table.set_column(1, "b", sparse).schema
    for op in [KMeans(k=2, features=["a", "b"]), GaussianMixture(k=2, features=["a", "b"]),
               IsolationForest(features=["a", "b"], n_trees=5),
               DecisionTree(label="y", features=["a", "b"]),
               GradientBoostedTrees(label="y", features=["a", "b"], n_trees=3),
               LogisticRegression(label="y", features=["a", "b"])]:
        fitted = fit_model(op, [table])
        fitted.output_schema(table.schema)
        with pytest.raises(SchemaError, match="feature column 'b' is a sparse column"):
            fitted.output_schema(scored)


def fit_kmeans(op: Any, parts: list[pa.Table], xp: Any = None) -> tuple[Any, dict[str, Any]]:
    """The fitted kmeans model and its metrics."""
    xp = NP if xp is None else xp
    state, _ = drive(op, parts[0].schema,
                     lambda partial: tree_reduce([partial(p, xp) for p in parts], op.combine))
    return op.fitted(state), op.metrics(state)


def tfidf_tickets(parts: int, sparse: bool = True) -> tuple[pa.Table, Any, list[pa.Table]]:
    """Tickets, the fitted TF-IDF step (scikit-learn's TfidfVectorizer(min_df=2)) and the
    rows it makes of ``parts`` partitions."""
    table = tickets(600, seed=3)
    step = fit(VectorizeText(columns=["text"], sparse=sparse, min_df=2, idf="smooth",
                             norm="l2"), split(table, parts))
    return table, step, [step.transform(p, None) for p in split(table, parts)]


@pytest.mark.parametrize("parts", [1, 4])
def test_kmeans_on_a_sparse_column_is_scikit_learns_on_the_csr_matrix(parts: int) -> None:
    """From the same centres scikit-learn's KMeans on the TF-IDF CSR matrix: the same
    labels, centres, inertia and iterations; the term columns (no sparse: true) give the
    same model."""
    table, step, rows = tfidf_tickets(parts)
    X = TfidfVectorizer(min_df=2).fit_transform(table.column("text").to_pylist())
    # rows of distinct lengths: unit rows would put a text that shares no term with any
    # at one distance from all four, a tie scikit-learn parts by rounding (sluice: the
    # first centre)
    init = X[[0, 5, 11, 42]].toarray() * np.array([[1.0], [0.9], [0.8], [0.7]])
    model, metrics = fit_kmeans(KMeans(k=4, features=["text"], init=init.tolist()), rows)
    sk = SkKMeans(n_clusters=4, init=init, n_init=1, algorithm="lloyd").fit(X)
    assert model.features == [f"text:{t}" for t in step.vocabulary["text"]["terms"]]
    labels = model.transform(step.transform(table, None), NP).column("prediction")
    np.testing.assert_array_equal(labels.to_numpy(), sk.labels_)
    np.testing.assert_allclose(model.centres, sk.cluster_centers_, rtol=1e-9, atol=1e-12)
    assert metrics["inertia"] == pytest.approx(sk.inertia_, rel=1e-9)
    assert metrics["iterations"] == sk.n_iter_
    _, dense_step, dense_rows = tfidf_tickets(parts, sparse=False)
    dense, dense_metrics = fit_kmeans(KMeans(k=4, features=dense_step.names("text"),
                                             init=init.tolist()), dense_rows)
    assert dense.features == model.features
    np.testing.assert_allclose(model.centres, dense.centres, rtol=1e-9, atol=1e-12)
    assert metrics["inertia"] == pytest.approx(dense_metrics["inertia"], rel=1e-9)
    assert metrics["cluster_sizes"] == dense_metrics["cluster_sizes"]


def test_kmeans_ties_of_unit_rows_are_the_same_on_every_kernel_and_partitioning() -> None:
    """From unit rows (TF-IDF rows as given centres), every text that shares no term with
    any is at one distance from all four: a tie, the first centre's on the CSR pass, the
    term columns' and the array-API kernels, on 1 and 4 partitions alike."""
    table, step, rows = tfidf_tickets(1)
    X = TfidfVectorizer(min_df=2).fit_transform(table.column("text").to_pylist())
    init = X[[0, 5, 11, 42]].toarray().tolist()
    sparse, metrics = fit_kmeans(KMeans(k=4, features=["text"], init=init), rows)
    want = sparse.transform(rows[0], NP).column("prediction").to_numpy()
    _, _, four = tfidf_tickets(4)
    again, again_metrics = fit_kmeans(KMeans(k=4, features=["text"], init=init), four)
    _, dense_step, dense_rows = tfidf_tickets(1, sparse=False)
    dense, dense_metrics = fit_kmeans(KMeans(k=4, features=dense_step.names("text"),
                                             init=init), dense_rows)
    strict, strict_metrics = fit_kmeans(KMeans(k=4, features=["text"], init=init), rows,
                                        get_namespace("array_api_strict"))
    for model, got in ((again, again_metrics), (dense, dense_metrics),
                       (strict, strict_metrics)):
        np.testing.assert_allclose(model.centres, sparse.centres, rtol=1e-9, atol=1e-12)
        assert got["cluster_sizes"] == metrics["cluster_sizes"]
        assert got["iterations"] == metrics["iterations"]
    np.testing.assert_array_equal(
        dense.transform(dense_rows[0], NP).column("prediction").to_numpy(), want)

def test_kmeans_cosine_on_a_sparse_column_is_the_term_columns_model() -> None:
    """Cosine: the CSR rows scaled to unit length, never made dense; the model, the
    distances and the inertia of the term columns'."""
    table, step, rows = tfidf_tickets(3)
    _, dense_step, dense_rows = tfidf_tickets(3, sparse=False)
    init = host_matrix(dense_step.transform(table, None),
                       dense_step.names("text"))[[1, 7, 30]] * 3.0  # not unit
    params = {"k": 3, "init": init.tolist(), "distance_measure": "cosine", "distance": True}
    model, metrics = fit_kmeans(KMeans(features=["text"], **params), rows)
    dense, dense_metrics = fit_kmeans(KMeans(features=dense_step.names("text"), **params),
                                      dense_rows)
    np.testing.assert_allclose(model.centres, dense.centres, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(model.centres, axis=1), 1.0, rtol=1e-12)
    assert metrics["inertia"] == pytest.approx(dense_metrics["inertia"], rel=1e-9)
    ours = model.transform(step.transform(table, None), NP)
    theirs = dense.transform(dense_step.transform(table, None), NP)
    assert ours.column("prediction").equals(theirs.column("prediction"))
    np.testing.assert_allclose(ours.column("distance").to_numpy(),
                               theirs.column("distance").to_numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("params", [
    {"init": "k-means||"}, {"init": "k-means++", "weight": "w"}, {"init": "random"},
    {"validation_fraction": 0.25, "seed": 2}, {"distance_measure": "cosine"}])
def test_kmeans_on_a_sparse_column_is_one_model_on_any_partitioning_and_off_numpy(
        params: dict) -> None:
    """Every start and the held-out measure: the same model from 1 partition as from 4,
    and on the strict stand-in (the rows made dense there) as on the CPU."""
    table = tickets(600, seed=3).append_column(
        "w", pa.array(np.random.default_rng(1).uniform(0.5, 2.0, 600)))
    step = fit(VectorizeText(columns=["text"], sparse=True, min_df=2, norm="l2"), [table])
    features = ["text", "w"] if "weight" not in params else ["text"]
    op = KMeans(k=4, features=features, **params)
    one, one_metrics = fit_kmeans(op, [step.transform(table, None)])
    four, four_metrics = fit_kmeans(op, [step.transform(p, None) for p in split(table, 4)])
    strict, strict_metrics = fit_kmeans(op, [step.transform(p, None) for p in split(table, 4)],
                                        get_namespace("array_api_strict"))
    for other, other_metrics in ((four, four_metrics), (strict, strict_metrics)):
        np.testing.assert_allclose(other.centres, one.centres, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other.mean, one.mean, rtol=1e-9, atol=1e-12)
        assert other_metrics["inertia"] == pytest.approx(one_metrics["inertia"], rel=1e-9)
        assert other_metrics["cluster_sizes"] == one_metrics["cluster_sizes"]
        if "validation" in one_metrics:
            for key, value in one_metrics["validation"].items():
                assert other_metrics["validation"][key] == pytest.approx(value, rel=1e-9)
    assert len(one.features) == len(step.vocabulary["text"]["terms"]) + len(features) - 1
    # the terms are not centred (a centred CSR matrix is dense); a plain column is
    np.testing.assert_array_equal(one.mean[:-1 if "w" in features else None], 0.0)
    if features == ["text", "w"] and params == {"init": "k-means||"}:  # all rows train
        assert one.mean[-1] == pytest.approx(float(np.mean(table.column("w").to_numpy())))
    scored = [one.transform(step.transform(p, None), xp).column("prediction")
              for p, xp in ((table, NP), (table, get_namespace("array_api_strict")))]
    assert scored[0].equals(scored[1])


def test_kmeans_reads_a_sparse_column_as_it_is_on_the_cpu_and_dense_off_it_in_the_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On NumPy no pass makes the partition's rows dense (the fit and the scores go
    where the matrix would be past the memory share, here 64 KB); on the strict
    stand-in they are made dense, checked against the share first."""
    import operators.features.text as text

    table = topics(seed=7)
    step = fit(VectorizeText(columns=["text"], sparse=True), [table])
    rows = step.transform(table, None)
    width = len(step.vocabulary["text"]["terms"])
    assert 8 * 900 * width > 65536
    monkeypatch.setattr(text, "dense_limit", lambda: 65536.0)
    op = KMeans(k=3, features=["text", "w"], distance_measure="cosine")
    model, _ = fit_kmeans(op, [rows])
    assert len(model.transform(rows, NP).column("prediction")) == 900
    with pytest.raises(DataError, match=rf"a partition of 900 rows with the {width:,} "
                                        r"terms of the sparse column 'text' made dense"):
        fit_kmeans(op, [rows], get_namespace("array_api_strict"))


@pytest.mark.parametrize("parts", [1, 4])
def test_pca_of_a_sparse_column_is_the_term_columns_pca(parts: int) -> None:
    """pca of a sparse column (with a plain column of a mean far from 0 beside it, and
    weights) on the CSR rows: the term columns' pca (centred co-moments, scikit-learn's
    components and signs) to rounding, on any partitioning, its scores too; and the
    same model off NumPy, where the rows are made dense."""
    table = topics(seed=3)
    rng = np.random.default_rng(parts)
    table = table.append_column("size", pa.array(1e6 + rng.normal(0, 3, table.num_rows)))
    shuffled = table.take(rng.permutation(table.num_rows))
    words = {"min_df": 3, "idf": "smooth"}
    sparse_step = fit(VectorizeText(columns=["text"], sparse=True, **words),
                      split(shuffled, parts))
    dense_step = fit(VectorizeText(columns=["text"], **words), split(shuffled, parts))
    sparse_rows = [sparse_step.transform(p, None) for p in split(shuffled, parts)]
    dense_rows = [dense_step.transform(p, None) for p in split(shuffled, parts)]
    terms = dense_step.names("text")
    params = {"k": 5, "whiten": True, "weight": "w"}
    sparse_model = fit_model(PCA(columns=["text", "size"], **params), sparse_rows)
    dense_model = fit_model(PCA(columns=[*terms, "size"], **params), dense_rows)
    assert sparse_model.features == [*terms, "size"]
    for key, value in dense_model.arrays.items():  # loadings ~1e-2, their rounding 1e-11
        np.testing.assert_allclose(sparse_model.arrays[key], value, rtol=1e-9, atol=1e-10,
                                   err_msg=key)
    scored = sparse_model.transform(sparse_step.transform(table, None), NP)
    assert scored.column_names == ["topic", "w", "pca_0", "pca_1", "pca_2", "pca_3", "pca_4"]
    ours = np.column_stack([scored.column(f"pca_{i}").to_numpy() for i in range(5)])
    theirs = dense_model.transform(dense_step.transform(table, None), NP)
    np.testing.assert_allclose(ours, np.column_stack(
        [theirs.column(f"pca_{i}").to_numpy() for i in range(5)]), rtol=1e-8, atol=1e-9)
    # unweighted: scikit-learn's PCA of the same matrix, signs included
    plain = fit_model(PCA(columns=["text", "size"], k=5), sparse_rows)
    X = host_matrix(sparse_step.transform(table, None), [*terms, "size"])
    reference = SkPCA(5, svd_solver="full").fit(X)
    np.testing.assert_allclose(plain.arrays["components"], reference.components_,
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plain.arrays["explained_variance"],
                               reference.explained_variance_, rtol=1e-9)
    # off NumPy the rows are made dense: the same model
    strict = get_namespace("array_api_strict")
    off = fit_model(PCA(columns=["text", "size"], **params), sparse_rows, strict)
    for key, value in sparse_model.arrays.items():
        np.testing.assert_allclose(off.arrays[key], value, rtol=1e-9, atol=1e-10,
                                   err_msg=key)
    # and it is saved with its terms
    again = roundtrip(sparse_model)
    assert again.features == sparse_model.features
    np.testing.assert_allclose(np.column_stack([again.transform(
        sparse_step.transform(table, None), NP).column(f"pca_{i}").to_numpy()
        for i in range(5)]), ours, rtol=1e-12, atol=1e-14)


def test_pca_of_a_sparse_column_checks_k_and_its_covariance_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """k counts the terms (more than the listed columns), and a covariance of the terms
    past the memory share is refused before the first pass, naming the column."""
    import operators.features.text as text

    table = topics(seed=7)
    step = fit(VectorizeText(columns=["text"], sparse=True, min_df=2), [table])
    rows = step.transform(table, None)
    width = len(step.vocabulary["text"]["terms"])
    PCA(columns=["text"], k=3).output_schema(rows.schema)  # 3 of the terms: fine
    with pytest.raises(SchemaError, match=rf"pca k must be from 1 to the number of features "
                                          rf"\({width}: the sparse columns' terms counted\), "
                                          rf"got {width + 1}"):
        PCA(columns=["text"], k=width + 1).output_schema(rows.schema)
    monkeypatch.setattr(text, "dense_limit", lambda: 8.0 * width * width)
    with pytest.raises(DataError, match=rf"pca of the {width:,} features of sparse column "
                                        rf"'text' needs their {width:,} x {width:,} "
                                        r"covariance: .* GiB, over 25%") as err:
        fit_model(PCA(columns=["text"], k=2), [rows])
    assert "max_features" in err.value.hint


ADAM = {"hidden": [5], "solver": "adam", "batch_size": 50, "learning_rate": 0.01,
        "max_iter": 8, "weight": "w"}
MLP_CASES = [
    {"hidden": [6], "activation": "tanh", "l2": 0.1, "tol": 1e-11, "max_iter": 1000},
    ADAM,
    # held-out rows: a sparse row is hashed as stored, so not the term columns' rows
    {**ADAM, "early_stopping": True, "validation_fraction": 0.2, "n_iter_no_change": 3},
]


@pytest.mark.filterwarnings("ignore::operators.models.common.ConvergenceWarning")  # 8 epochs
@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("params", MLP_CASES, ids=["lbfgs", "adam", "adam-early-stopping"])
def test_mlp_on_a_sparse_column_is_the_term_columns_network(params: dict, parts: int
                                                           ) -> None:
    """A sparse TF-IDF column beside a plain one: the network of the term columns (the
    same start and batch order), the first layer computed on SciPy's CSR; off NumPy (the
    strict stand-in) on the rows made dense, the same network (held-out rows too); scored
    from the sparse rows as from the columns."""
    table, _, rows = tfidf_tickets(parts)
    sized = [p.append_column("size", pa.array(np.log1p(stored_terms(p))))
             .append_column("w", pa.array(1.0 + stored_terms(p) % 3)) for p in rows]
    _, dense_step, dense_rows = tfidf_tickets(parts, sparse=False)
    terms = dense_step.names("text")
    dense_sized = [p.append_column("size", s.column("size")).append_column("w", s.column("w"))
                   for p, s in zip(dense_rows, sized, strict=True)]
    sparse_net = fit_model(MLP(label="topic", features=["text", "size"], **params), sized)
    dense_net = fit_model(MLP(label="topic", features=[*terms, "size"], **params),
                          dense_sized)
    assert sparse_net.features == [*terms, "size"]
    if "validation_fraction" not in params:
        for a, b in zip(sparse_net.weights + sparse_net.biases,
                        dense_net.weights + dense_net.biases, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    strict = get_namespace("array_api_strict")
    off = fit_model(MLP(label="topic", features=["text", "size"], **params), sized, strict)
    for a, b in zip(off.weights + off.biases, sparse_net.weights + sparse_net.biases,
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    # scored from the sparse rows as from those rows made dense
    whole = pa.concat_tables(sized)
    scored = np.array(sparse_net.transform(whole, NP).column("probability").to_pylist())
    dense_rows = host_matrix(whole, sparse_net.features)
    np.testing.assert_allclose(scored, sparse_net.predict_matrix(dense_rows, NP),
                               rtol=1e-12, atol=1e-14)


def stored_terms(part: pa.Table) -> np.ndarray:
    """Each row's count of stored terms (a plain feature beside the sparse column)."""
    indices = pc.struct_field(part.column("text"), "indices")
    return pc.list_value_length(indices).to_numpy().astype(np.float64)


def test_mlp_batch_order_of_sparse_rows_is_the_dense_rows_order() -> None:
    """The order Adam's batches take hashes a row's cells: the CSR rows with their target
    and weight give the dense matrix's order to the bit (zeros stored or not)."""
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((400, 9)) < 0.3, rng.normal(size=(400, 9)), 0.0)
    tail = rng.normal(size=(400, 2))
    from scipy import sparse as sp

    X = sp.csr_matrix(dense)
    with_zero = X.copy()
    with_zero.data[0] = 0.0  # an explicitly stored zero
    with_zero_dense = with_zero.toarray()
    def batch_order(data: np.ndarray, seed: int, epoch: int, X: Any = None) -> np.ndarray:
        return epoch_order(row_keys(data, seed, X), epoch)

    orders = []
    for epoch in (0, 1, 7):
        want = batch_order(np.column_stack([dense, tail]), 4, epoch)
        np.testing.assert_array_equal(batch_order(tail, 4, epoch, X), want)
        np.testing.assert_array_equal(
            batch_order(tail, 4, epoch, with_zero),
            batch_order(np.column_stack([with_zero_dense, tail]), 4, epoch))
        orders.append(want)
    assert not np.array_equal(batch_order(tail, 4, 0, X), batch_order(tail, 5, 0, X))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_isolation_forest_reads_a_sparse_column_as_the_term_columns() -> None:
    """isolation_forest of a sparse column: its terms are the features; where every row
    is drawn (200 rows, max_samples auto: 256) the trees and scores are the term
    columns' on any partitioning; where rows are drawn by hash (max_samples 64, of the
    column as stored) the fitted model scores a sparse row as the same terms as columns,
    through its CSR matrix and off NumPy alike."""
    table = topics(rows=200, seed=6)
    parts = split(table, 3)
    step = fit(VectorizeText(columns=["text"], sparse=True, min_df=2), parts)
    terms = fit(VectorizeText(columns=["text"], min_df=2), parts)
    sparse_rows = [step.transform(p, None) for p in parts]
    dense_rows = [terms.transform(p, None) for p in parts]
    every = fit_model(IsolationForest(features=["text", "w"], n_trees=12, seed=3),
                      sparse_rows)
    names = [n for n in dense_rows[0].column_names if n.startswith("text:")]
    assert every.features == [*names, "w"]
    columns = fit_model(IsolationForest(features=[*names, "w"], n_trees=12, seed=3),
                        dense_rows)
    for key in every.NODES:
        np.testing.assert_array_equal(every.nodes[key], columns.nodes[key])
    whole, whole_terms = pa.concat_tables(sparse_rows), pa.concat_tables(dense_rows)
    scores = every.transform(whole, NP).column("anomaly_score").to_numpy()
    np.testing.assert_array_equal(
        scores, columns.transform(whole_terms, NP).column("anomaly_score").to_numpy())
    assert len(np.unique(every.nodes["feature"][every.nodes["feature"] >= 0])) > 3

    drawn = IsolationForest(features=["text"], n_trees=10, max_samples=64,
                            contamination=0.1, seed=5)
    model = fit_model(drawn, sparse_rows)
    again = fit_model(drawn, [pa.concat_tables(sparse_rows[::-1])])
    for key in model.NODES:  # the draws by the stored rows' hashes, not partitioning
        np.testing.assert_array_equal(model.nodes[key], again.nodes[key])
    want = model.transform(whole_terms, NP)  # its features are the term columns' names
    for xp in (NP, get_namespace("array_api_strict")):
        got = model.transform(pa.concat_tables(sparse_rows), xp)  # a table of no memo
        for column in ("prediction", "anomaly_score"):
            np.testing.assert_array_equal(got.column(column).to_numpy(),
                                          want.column(column).to_numpy())
    # predict_matrix of the CSR matrix (takes_sparse): the split terms made dense
    np.testing.assert_array_equal(model.outputs(whole, NP)[0],
                                  want.column("anomaly_score").to_numpy())
    assert model.offset != -0.5 and 0 < want.column("prediction").to_numpy().sum() < 200
