"""target_encode against scikit-learn's TargetEncoder: the encodings of a fit on all the
rows (what a saved model scores with) and the cross-fitted encodings of the training
rows (each fold's from the other folds' rows), for a number, two classes and more, both
smoothings; and in a pipeline run, where the training rows get the cross-fitted ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import TargetEncoder

from operators.arrays import get_namespace
from operators.base import ParamError, SchemaError
from operators.errors import DataError
from operators.features.target_encode import TargetEncode, row_folds
from operators.testing.kit import fit, split
from pipelines.runner import run
from pipelines.store import ModelStore

MISSING = "<null>"  # scikit-learn's category for our nulls


def table(rows: int = 3000, seed: int = 0) -> pa.Table:
    """A string column with nulls and rare categories, an integer column, a dictionary
    column, and labels: a number (around 100), two classes and three."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(40)]
    city = rng.choice(names, rows, p=np.r_[np.full(10, 0.06), np.full(30, 0.4 / 30)])
    store = rng.integers(0, 15, rows)
    effect = dict(zip(names, rng.normal(size=40), strict=True))
    y = np.array([effect[c] for c in city]) + 0.3 * store + 2 * rng.normal(size=rows) + 100
    cities = pa.array(city.tolist(), mask=np.arange(rows) % 37 == 0)
    return pa.table({
        "city": cities, "store": pa.array(store), "y": y,
        "two": pa.array(y > np.median(y)),
        "three": pa.array(np.digitize(y, np.quantile(y, [0.3, 0.7]))),
        "channel": pa.array(rng.choice(["web", "shop", "phone"], rows)).dictionary_encode()})


def reference_matrix(t: pa.Table, columns: list[str]) -> np.ndarray:
    """The columns as scikit-learn's encoder takes them (a null as a category)."""
    out = []
    for name in columns:
        column = t.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        values = column.to_pylist()
        out.append(np.array([MISSING if v is None else v for v in values], dtype=object))
    return np.column_stack(out)


def encoded(t: pa.Table, columns: list[str]) -> np.ndarray:
    """The encoded columns of ``t`` (each input column's, in order)."""
    names = [n for n in t.column_names
             if any(n == c or n.startswith(f"{c}_") for c in columns)]
    return np.column_stack([t.column(n).to_numpy() for n in names])


TARGETS = {"y": "continuous", "two": "binary", "three": "multiclass"}


@pytest.mark.parametrize("smooth", ["auto", 0.0, 4.0])
@pytest.mark.parametrize("label", sorted(TARGETS))
def test_encodings_are_scikit_learns(label: str, smooth: str | float) -> None:
    t = table()
    columns = ["city", "store", "channel"]
    op = TargetEncode(columns=columns, label=label, smooth=smooth, folds=5, seed=3)
    model = fit(op, split(t, 4, seed=1))
    X, y = reference_matrix(t, columns), t.column(label).to_numpy(zero_copy_only=False)
    reference = TargetEncoder(smooth=smooth, target_type=TARGETS[label]).fit(X, y)
    got = model.transform(t, None)
    scale = 100 if label == "y" else 1
    np.testing.assert_allclose(encoded(got, columns), reference.transform(X), rtol=0,
                               atol=1e-13 * scale)
    if label == "three":  # a column per class, named as scikit-learn names them
        assert got.column_names[:3] == ["city_0", "city_1", "city_2"]
    # the training rows: each fold's encodings are those of a fit on the other folds
    training = encoded(model.training_view().transform(t, None), columns)
    folds = row_folds(t, op.params)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for f in range(5):
        other = TargetEncoder(smooth=smooth, target_type=TARGETS[label]).fit(
            X[folds != f], y[folds != f])
        np.testing.assert_allclose(training[folds == f], other.transform(X[folds == f]),
                                   rtol=0, atol=1e-13 * scale, err_msg=f"fold {f}")
    assert not np.allclose(training, encoded(got, columns))


def test_without_folds_the_training_rows_get_the_saved_encodings() -> None:
    t = table(rows=500)
    model = fit(TargetEncode(columns=["city"], label="y", folds=0), split(t, 2))
    assert model.training_view() is model


def test_unseen_categories_and_nulls_get_the_labels_mean() -> None:
    t = table(rows=800)
    seen = t.filter(t.column("city").is_valid())
    model = fit(TargetEncode(columns=["city", "store"], label="y"), [seen])
    new = pa.table({"city": pa.array(["c0", "nowhere", None]),
                    "store": pa.array([3, 99, 3])})
    out = model.transform(new, None)
    mean = float(np.mean(seen.column("y").to_numpy()))
    city = out.column("city").to_numpy()
    assert city[1] == pytest.approx(mean, rel=1e-15) and city[2] == city[1] != city[0]
    assert out.column("store").to_numpy()[1] == pytest.approx(mean, rel=1e-15)


def test_the_saved_encoder_is_the_fit_on_every_row(workdir: Path) -> None:
    """A run writes its training rows cross-fitted, and saves the encoder fitted on all
    of them, which is what scoring uses; the model learned from the cross-fitted rows."""
    t = table(rows=2000)
    (workdir / "data").mkdir()
    pq.write_table(t.slice(0, 1000), workdir / "data" / "a.parquet")
    pq.write_table(t.slice(1000), workdir / "data" / "b.parquet")
    pipeline = write_pipeline(workdir, """
        pipeline: encoded
        steps:
          - op: read_parquet
            path: data
            columns: [city, store, channel, two]
          - id: encode
            op: target_encode
            columns: [city, store, channel]
            label: two
          - op: write_parquet
            path: out/encoded
          - op: logistic_regression
            input: encode
            label: two
          - op: save_model
            name: two
    """)
    record = run(pipeline)
    assert record["metrics"]["encode"]["categories"] == {"city": 41, "store": 15,
                                                         "channel": 3}
    params = {"columns": ["city", "store", "channel"], "label": "two"}
    whole = t.select(["city", "store", "channel", "two"])
    model = fit(TargetEncode(**params), [whole])
    written = pq.read_table(workdir / "out" / "encoded")
    np.testing.assert_allclose(
        encoded(written, params["columns"]),
        encoded(model.training_view().transform(whole, None), params["columns"]),
        rtol=1e-13)
    saved = ModelStore().load("two").chain.steps[0]
    assert saved.name == "target_encode.fitted"
    np.testing.assert_allclose(encoded(saved.transform(whole, None), params["columns"]),
                               encoded(model.transform(whole, None), params["columns"]),
                               rtol=1e-13)


def test_plan_time_errors() -> None:
    t = table(rows=50)
    with pytest.raises(ParamError, match="also in columns"):
        TargetEncode(columns=["city", "y"], label="y")
    with pytest.raises(ValueError, match="one fold leaves no other rows"):
        TargetEncode(columns=["city"], label="y", folds=1)
    with pytest.raises(SchemaError, match="target_encode encodes strings.*bucketize it first"):
        TargetEncode(columns=["y"], label="two").output_schema(t.schema)
    with pytest.raises(SchemaError, match="a regression's label is a number"):
        TargetEncode(columns=["store"], label="city",
                     task="regression").output_schema(t.schema)
    model = fit(TargetEncode(columns=["store"], label="y"), [t])
    with pytest.raises(SchemaError, match="fitted on int values"):
        model.output_schema(t.set_column(1, "store", t.column("store").cast(pa.string())).schema)


def test_a_null_label_names_the_column() -> None:
    t = table(rows=50)
    t = t.set_column(2, "y", pa.array([None, *t.column("y").to_pylist()[1:]], pa.float64()))
    with pytest.raises(DataError, match="label column 'y' has 1 null"):
        fit(TargetEncode(columns=["city"], label="y"), [t])


def test_nothing_to_learn_from_is_an_error() -> None:
    t = table(rows=60)
    with pytest.raises(DataError, match="no rows to fit target_encode on"):
        fit(TargetEncode(columns=["city"], label="y"), [t.slice(0, 0)])
    one_class = t.set_column(3, "two", pa.array([True] * t.num_rows))
    with pytest.raises(DataError, match="label 'two' has one class"):
        fit(TargetEncode(columns=["city"], label="two"), split(one_class, 3))


def test_the_folds_do_not_depend_on_the_label() -> None:
    """Rows alike but for the label share a fold: were the label in the fold's hash, a
    table of few distinct rows (a category and a label) would put each category's rows
    of one class in one fold, and encode them from the other class's rows only: the
    training encodings against the label (a model after it learns the sign reversed)."""
    rng = np.random.default_rng(0)
    rows = 6000
    city = rng.choice([f"c{i}" for i in range(20)], rows)
    plan = rng.choice(["basic", "plus", "premium"], rows)
    effect = dict(zip([f"c{i}" for i in range(20)], rng.uniform(0.1, 0.9, 20), strict=True))
    two = rng.random(rows) < np.array([effect[c] for c in city])
    t = pa.table({"city": city, "plan": plan, "two": two})
    op = TargetEncode(columns=["city"], label="two")
    flipped = t.set_column(2, "two", pa.array(~two))
    np.testing.assert_array_equal(row_folds(t, op.params), row_folds(flipped, op.params))
    model = fit(op, split(t, 3))
    training = model.training_view().transform(t, None).column("city").to_numpy()
    whole = model.transform(t, None).column("city").to_numpy()
    assert np.corrcoef(training, two)[0, 1] > 0.5 * np.corrcoef(whole, two)[0, 1] > 0


def test_a_fold_without_other_rows_gets_the_labels_mean() -> None:
    """Rows alike in every column but the label share a fold; where that leaves no rows
    in the other folds, the fold's rows get the label's mean (there is nothing else to
    encode them with), not 0 (the mean of no rows)."""
    t = pa.table({"city": ["a", "a", "a", "a"], "y": [100.0, 101.0, 102.0, 103.0]})
    op = TargetEncode(columns=["city"], label="y")
    assert len(set(row_folds(t, op.params))) == 1
    model = fit(op, [t])
    training = model.training_view().transform(t, None).column("city").to_pylist()
    assert training == [101.5] * 4


@pytest.mark.parametrize("folds", [5, 0])
def test_a_later_models_held_out_score_is_not_optimistic(workdir: Path, folds: int) -> None:
    """A model after the encoder scores its held-out rows (``validation_fraction``) as it
    scores new rows: the held-out rows' encodings never saw their own labels, though the
    encoder was fitted on them. Without cross fitting (``folds: 0``, MLlib's encoder) the
    held-out score is far above that on new rows."""
    rng = np.random.default_rng(7)
    effect = rng.normal(0, 0.5, 4000)  # 4,000 categories of 5 rows each, a weak signal

    def rows(n: int) -> pa.Table:
        category = rng.integers(0, len(effect), n)
        x = rng.normal(size=n)
        chance = 1 / (1 + np.exp(-(effect[category] + 0.5 * x)))
        return pa.table({"merchant": pa.array([f"m{c}" for c in category]), "x": x,
                         "churned": pa.array(rng.random(n) < chance)})

    (workdir / "data").mkdir()
    pq.write_table(rows(20_000), workdir / "data" / "train.parquet")
    new = rows(20_000)
    pipeline = write_pipeline(workdir, f"""
        pipeline: leak
        steps:
          - op: read_parquet
            path: data
          - op: target_encode
            columns: [merchant]
            label: churned
            folds: {folds}
          - id: model
            op: logistic_regression
            label: churned
            validation_fraction: 0.25
          - op: save_model
            name: leak
    """)
    held_out = run(pipeline)["metrics"]["model"]["validation"]["roc_auc"]
    scored = ModelStore().load("leak").chain.transform(new, get_namespace("numpy"))
    fresh = roc_auc_score(new.column("churned").to_numpy(),
                          scored.column("probability").to_numpy())
    if folds:
        assert held_out < fresh + 0.01, (held_out, fresh)
    else:
        assert held_out > fresh + 0.1, (held_out, fresh)
