"""A model's tune varying the feature step before it (`words.max_features`,
`pick.k`): scikit-learn's GridSearchCV over a Pipeline. Each candidate's feature step is
fitted on the rows the model trains on, every candidate holds out the same rows, and the
saved model is the best's; on every engine; and the problems of such a tune as the file
plans."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.metrics import log_loss
from sklearn.naive_bayes import GaussianNB, MultinomialNB
from test_text_pipelines import tickets

from operators.hashing import chosen_rows
from operators.models.common import ConvergenceWarning
from pipelines.runner import plan_file, run
from pipelines.runs import run_params
from pipelines.serving import load_model
from pipelines.store import ModelStore

TEXT = """
    pipeline: tickets_tuned
    steps:
      - op: read_parquet
        path: {data}
        partition_mb: 0.01
      - op: drop
        columns: [ticket_id]
      - id: words
        op: vectorize_text
        columns: [text]
        min_df: 2
      - id: nb
        op: naive_bayes
        label: topic
        model_type: multinomial
        validation_fraction: 0.25
        seed: 5
        tune:
          smoothing: [0.1, 1.0]
          words.max_features: [6, 30]
      - op: save_model
        name: tickets
"""


@pytest.fixture
def ticket_files(workdir: Path) -> Path:
    folder = workdir / "data" / "tickets"
    folder.mkdir(parents=True)
    table = tickets(rows=900, seed=3)
    for i, at in enumerate(range(0, table.num_rows, 300)):
        pq.write_table(table.slice(at, 300), folder / f"part-{i}.parquet", row_group_size=100)
    return folder


def test_text_features_tuned_with_the_model_are_gridsearchcvs_on_every_engine(
        workdir: Path, engine, ticket_files: Path) -> None:
    """Each candidate is CountVectorizer(max_features) fitted on the training rows only,
    then MultinomialNB(alpha), scored by log-loss on the same held-out rows (the rows as
    vectorize_text read them, hashed with the model's seed)."""
    record = run(write_pipeline(workdir, TEXT.format(data=ticket_files)),
                 engine_instance=engine)
    table = tickets(rows=900, seed=3).drop(["ticket_id"])
    held = chosen_rows(table, 0.25, 5)
    docs = np.array(table.column("text").to_pylist(), dtype=object)
    topics = np.array(table.column("topic").to_pylist(), dtype=object)
    candidates = record["metrics"]["nb"]["tuning"]["candidates"]
    expected = {}
    for alpha in (0.1, 1.0):
        for k in (6, 30):
            vectorizer = CountVectorizer(min_df=2, max_features=k).fit(docs[~held])
            nb = MultinomialNB(alpha=alpha).fit(vectorizer.transform(docs[~held]),
                                                topics[~held])
            loss = log_loss(topics[held], nb.predict_proba(vectorizer.transform(docs[held])),
                            labels=nb.classes_)
            name = f"smoothing={alpha}, words.max_features={k}"
            expected[name] = (loss, vectorizer, nb)
            assert candidates[name]["log_loss"] == pytest.approx(loss, rel=1e-9), name
    best = min(expected, key=lambda n: expected[n][0])
    assert record["metrics"]["nb"]["tuning"]["best"] == best
    assert record["metrics"]["nb"]["validation_rows"] == int(held.sum())
    # the feature step's record and the saved model are the best candidate's
    _, vectorizer, nb = expected[best]
    assert record["metrics"]["words"]["terms"] == {"text": len(vectorizer.vocabulary_)}
    assert record["metrics"]["words"]["rows"] == int((~held).sum())
    model = ModelStore().load("tickets")
    assert model.chain.steps[-2].vocabulary["text"]["terms"] == sorted(vectorizer.vocabulary_)
    trained = model.meta["trained_with"]
    assert trained["nb"]["params"]["smoothing"] == float(best.split(",")[0].split("=")[1])
    assert trained["words"]["params"]["max_features"] == int(best.split("=")[-1])
    # the run's params (MLflow's, `sluice runs compare`'s) are those it trained with too
    given = run_params(record)
    assert given["nb.smoothing"] == trained["nb"]["params"]["smoothing"]
    assert given["words.max_features"] == trained["words"]["params"]["max_features"]
    new = ["refund my card", "app crash", "", "courier late again"]
    scored = load_model("tickets").score([{"text": t} for t in new])
    np.testing.assert_allclose([r["probability"] for r in scored],
                               nb.predict_proba(vectorizer.transform(new)), rtol=1e-9)


SELECT = """
    pipeline: picked
    steps:
      - op: read_parquet
        path: {data}
      - id: pick
        op: select_features
        label: y
        test: anova
      - id: model
        op: naive_bayes
        label: y
        seed: 2
        tune_folds: 3
        tune:
          pick.k: [1, 3, 6]
      - op: save_model
        name: picked
"""


def test_select_features_k_tuned_by_cross_validation(workdir: Path) -> None:
    """k of SelectKBest(f_classif) with GaussianNB, by 3-fold cross-validation: each fold's
    selector fitted on the other folds' rows; the best k then fitted on every row."""
    rng = np.random.default_rng(0)
    rows = 600
    y = rng.integers(0, 2, rows)
    X = rng.standard_normal((rows, 6))
    X[:, 0] += 1.2 * y
    X[:, 1] += 0.6 * y
    X[:, 2] += 0.2 * y
    table = pa.table({**{f"x{j}": X[:, j] for j in range(6)}, "y": y})
    data = workdir / "rows.parquet"
    pq.write_table(table, data)
    record = run(write_pipeline(workdir, SELECT.format(data=data)))
    tuning = record["metrics"]["model"]["tuning"]
    assert tuning["folds"] == 3
    for k in (1, 3, 6):
        losses = []
        for f in range(3):
            held = chosen_rows(table, 1 / 3, 2, start=f / 3)
            selector = SelectKBest(f_classif, k=k).fit(X[~held], y[~held])
            nb = GaussianNB().fit(selector.transform(X[~held]), y[~held])
            losses.append(log_loss(y[held], nb.predict_proba(selector.transform(X[held]))))
        got = tuning["candidates"][f"pick.k={k}"]
        np.testing.assert_allclose(got["folds"], losses, rtol=1e-7)
    best_k = int(tuning["best"].split("=")[1])
    selector = SelectKBest(f_classif, k=best_k).fit(X, y)
    kept = [f"x{j}" for j in np.flatnonzero(selector.get_support())]
    assert sorted(record["metrics"]["pick"]["kept"]) == kept  # on every row at the end
    model = ModelStore().load("picked")
    assert model.chain.steps[-1].features == kept


@pytest.mark.parametrize("tune,message", [
    ("pick.k: [1, 2]", "tune: 'pick.k': no step 'pick' is planned before this one"),
    ("words.max_featurs: [5]", "unknown parameter 'max_featurs' of step 'words'; did you "
                               "mean 'max_features'? (vectorize_text takes: columns,"),
    ("words.columns: [[text]]", "tune cannot vary 'words.columns'"),
    ("words.min_df: [1, 2]", "tune: 'words.min_df' is set on step 'words' too"),
    ("words.max_features: 5", "tune: 'words.max_features' must list the values to try"),
    ("drop.columns: [[a]]", "step 'drop' is not this step's input ('words')"),
])
def test_problems_of_a_feature_steps_tune_are_found_as_the_file_plans(
        workdir: Path, ticket_files: Path, tune: str, message: str) -> None:
    text = TEXT.format(data=ticket_files).replace(
        "          smoothing: [0.1, 1.0]\n          words.max_features: [6, 30]\n",
        f"          {tune}\n")
    found = [str(p) for p in plan_file(write_pipeline(workdir, text)).problems]
    assert len(found) == 1, found
    assert message in found[0]
    assert "step 'nb'" in found[0]


def test_plan_says_the_feature_step_is_fitted_by_the_tune(workdir: Path,
                                                          ticket_files: Path) -> None:
    from pipelines.describe import describe, format_plan

    plan = plan_file(write_pipeline(workdir, TEXT.format(data=ticket_files)))
    text = "\n".join(format_plan(plan, describe(plan)))
    assert ("fits (one pass) once per candidate of 'nb''s tune, on the rows that step "
            "trains on; the best is kept") in text
    assert "tunes 4 combinations, with step 'words'" in text


def test_a_feature_step_read_by_another_step_too_is_refused(workdir: Path,
                                                            ticket_files: Path) -> None:
    text = TEXT.format(data=ticket_files) + """      - op: write_parquet
        input: words
        path: out
"""
    found = [str(p) for p in plan_file(write_pipeline(workdir, text)).problems]
    assert len(found) == 1, found
    assert "step 'words' is tuned with this one, but step 'write_parquet' reads its rows" \
        in found[0]


def test_a_model_is_no_feature_step(workdir: Path, ticket_files: Path) -> None:
    text = TEXT.format(data=ticket_files).replace(
        "      - op: save_model\n", "      - id: again\n        op: naive_bayes\n"
        "        label: topic\n        validation_fraction: 0.2\n        tune:\n"
        "          nb.smoothing: [1.0, 2.0]\n      - op: save_model\n")
    found = [str(p) for p in plan_file(write_pipeline(workdir, text)).problems]
    assert any("step 'nb' is tuned on its own step already" in f
               or "step 'nb' is a model" in f for f in found), found


ENCODED = """
    pipeline: encoded
    steps:
      - op: read_parquet
        path: {data}
      - id: enc
        op: target_encode
        columns: [city]
        label: y
      - id: model
        op: logistic_regression
        label: y
        features: [city, x]
        l2: 0.01
        validation_fraction: 0.3
        seed: 4
        tune:
          enc.smooth: [1.0, 50.0]
      - op: save_model
        name: encoded
      - op: write_parquet
        path: out
"""


def test_a_cross_fitted_encoder_tuned_with_the_model_is_gridsearchcvs(workdir: Path,
                                                                     engine) -> None:
    """target_encode (cross-fitted, as TargetEncoder.fit_transform) tuned with its model:
    the held-out rows, which the encoder never saw, are encoded as it encodes new rows
    (GridSearchCV transforms a validation fold with the fitted Pipeline), and the rows
    after the tune are those the model trained on: the training rows' cross-fitted
    encodings as the fit folded them (a model refitted on the rows written has the saved
    model's coefficients)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import TargetEncoder

    rng = np.random.default_rng(0)
    rows = 800
    city = rng.integers(0, 40, rows)
    x = rng.standard_normal(rows)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(rng.standard_normal(40)[city] + x)))).astype(
        np.int64)
    table = pa.table({"id": np.arange(rows), "city": [f"c{c}" for c in city], "x": x, "y": y})
    pq.write_table(table, workdir / "rows.parquet")
    record = run(write_pipeline(workdir, ENCODED.format(data=workdir / "rows.parquet")),
                 engine_instance=engine)
    tuning = record["metrics"]["model"]["tuning"]
    smooth = float(tuning["best"].split("=")[1])
    held = chosen_rows(table, 0.3, 4)
    cities = np.array(table.column("city").to_pylist(), dtype=object)[:, None]
    encoder = TargetEncoder(smooth=smooth, target_type="binary").fit(cities[~held], y[~held])
    model = ModelStore().load("encoded").chain.steps[-1]
    X = np.column_stack([encoder.transform(cities[held])[:, 0], x[held]])
    p = 1 / (1 + np.exp(-(X @ model.coef[0] + model.intercept[0])))
    assert tuning["candidates"][tuning["best"]]["log_loss"] == pytest.approx(
        log_loss(y[held], p), rel=1e-9)
    out = pq.read_table(workdir / "out").sort_by("id")
    written = np.column_stack([out.column("city").to_numpy(), out.column("x").to_numpy()])
    np.testing.assert_allclose(written[held, 0], X[:, 0], rtol=1e-12)
    refit = LogisticRegression(C=1 / (0.01 * int((~held).sum())), tol=1e-12,
                               max_iter=10_000).fit(written[~held], y[~held])
    np.testing.assert_allclose(model.coef[0], refit.coef_[0], rtol=1e-5)


def test_the_tuned_feature_steps_note_is_said(workdir: Path, ticket_files: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The best candidate's feature step's note (a vocabulary much wider than its text,
    past 1 MB of columns here where the run's threshold is 1 GiB) is a line of the run, at
    that step's line, as if it had run on its turn."""
    import operators.features.text as text_module

    monkeypatch.setattr(text_module, "NOTE_BYTES", 1 << 20)
    notes: list[str] = []
    text = TEXT.format(data=ticket_files).replace(
        "min_df: 2", "min_df: 1\n        ngram_range: [1, 3]").replace("[6, 30]",
                                                                      "[2000, 3000]")
    run(write_pipeline(workdir, text), notify=notes.append)
    wide = [n for n in notes if "step 'words'" in n]
    assert len(wide) == 1 and "grows" in wide[0], notes
    assert wide[0].startswith(f"{workdir / 'pipeline.yaml'}:8: step 'words'")


@pytest.mark.parametrize("change,message", [
    (("op: vectorize_text", "op: vectorise_text"), "unknown operator 'vectorise_text'"),
    (("min_df: 2", "min_df: -1"), "parameter 'min_df': a number of rows must be at least 0"),
])
def test_a_feature_step_of_its_own_problem_is_said_once(workdir: Path, ticket_files: Path,
                                                        change: tuple[str, str],
                                                        message: str) -> None:
    """The feature step's problem is said at its line, not again by the tune as a
    candidate's problem or as no step 'words' planned."""
    text = TEXT.format(data=ticket_files).replace(*change)
    found = [str(p) for p in plan_file(write_pipeline(workdir, text)).problems]
    assert len(found) == 1, found
    assert "step 'words'" in found[0] and message in found[0]


def kept_datasets(engine: Any) -> int:
    """How many datasets the engine keeps persisted now (each engine's own store)."""
    return len(engine._persisted if hasattr(engine, "_persisted") else engine._caches)


def test_each_candidates_rows_are_let_go_once_fitted(workdir: Path, engine,
                                                     ticket_files: Path) -> None:
    """A multi-pass model's candidate rows (the feature step's columns of every row) are
    persisted for its passes and released after its fit: only the marked input stays for
    the run (4 candidates kept 5 datasets, on every engine)."""
    text = TEXT.format(data=ticket_files).replace(
        "        op: naive_bayes\n        label: topic\n        model_type: multinomial\n",
        "        op: logistic_regression\n        label: topic\n").replace(
        "smoothing: [0.1, 1.0]", "l2: [0.1, 1.0]")
    record = run(write_pipeline(workdir, text), engine_instance=engine)
    assert len(record["metrics"]["nb"]["tuning"]["candidates"]) == 4
    # Spark caches nothing of local files (cache_fits: auto reads them again)
    assert kept_datasets(engine) == (0 if engine.name == "spark" else 1)


def test_a_failing_feature_candidate_is_said_at_the_tunes_line_with_its_values(
        workdir: Path, ticket_files: Path) -> None:
    """A candidate whose feature step fails by its tuned value (a min_df no term reaches:
    "lower min_df") is said at the tune's line of that value, with the candidate's
    values and the feature step named: not at the step's line, where min_df is not."""
    from operators.base import SluiceError

    text = TEXT.format(data=ticket_files).replace("        min_df: 2\n", "").replace(
        "words.max_features: [6, 30]", "words.min_df: [2, 100000]")
    path = write_pipeline(workdir, text)
    line = next(n for n, row in enumerate(path.read_text().splitlines(), 1)
                if "words.min_df:" in row)
    with pytest.raises(SluiceError) as failed:
        run(path)
    said = str(failed.value)
    assert said.startswith(f"{path}:{line}: step 'nb' (naive_bayes): tune candidate "
                           "smoothing=0.1, words.min_df=100000: step 'words': "), said
    assert said.endswith("(lower min_df or raise max_df)"), said


def test_a_candidate_through_its_feature_step_that_does_not_converge_is_a_warning(
        workdir: Path, ticket_files: Path) -> None:
    """A model tuned with its feature step warns as the run's warning, naming the
    candidate's values of both steps, not as a Python warning."""
    text = TEXT.format(data=ticket_files).replace(
        "op: naive_bayes", "op: logistic_regression").replace(
        "        model_type: multinomial\n", "        max_iter: 1\n").replace(
        "smoothing: [0.1, 1.0]", "l2: [0.1]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = run(write_pipeline(workdir, text))
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)], caught
    best = record["metrics"]["nb"]["tuning"]["best"]
    other = next(k for k in record["metrics"]["nb"]["tuning"]["candidates"] if k != best)
    candidate, model, chosen = record["warnings"]
    assert f"step 'nb' (logistic_regression): tune candidate {other}: logistic_regression " \
           "did not converge: max_iter=1 reached" in candidate, candidate
    assert candidate.endswith(" (1 of the tune's 2 candidate fits)"), candidate
    assert f"step 'nb' (logistic_regression): tune candidate {best}, chosen (its fit is the " \
           "model): logistic_regression did not converge: max_iter=1 reached" in model, model
    # max_iter is the step's, not tuned: raise it there
    assert chosen.endswith(f"step 'nb' (logistic_regression): tune chose {best} from fits "
                           "that did not converge: none of its 2 candidate fits converged, so "
                           "their scores rank unfinished models; raise the step's max_iter (or "
                           "standardise the features) and run again"), chosen
