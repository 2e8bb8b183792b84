"""vector_columns: an embedding column as a numeric column per position, on every engine,
through a model, its saved chain and scoring; its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_pipeline

from operators.base import DataError, SchemaError
from operators.features.vectors import VectorColumns
from pipelines.runner import run


def embeddings(rows: int, seed: int = 0, dim: int = 8) -> tuple[pa.Table, np.ndarray]:
    """Rows of two groups whose embeddings differ in their first positions, as a
    fixed_size_list<float32>[dim] column; the label is the group."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, rows)
    emb = (rng.standard_normal((rows, dim)) + label[:, None] * np.linspace(2, 0, dim)
           ).astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    return pa.table({"doc": np.arange(rows), "embedding": vectors, "label": label}), emb


def test_positions_in_place_of_the_vector_in_its_type() -> None:
    table, emb = embeddings(50)
    op = VectorColumns(columns=["embedding"])
    schema = op.output_schema(table.schema)
    assert schema.names == ["doc", *[f"embedding_{j}" for j in range(8)], "label"]
    assert {schema.field(f"embedding_{j}").type for j in range(8)} == {pa.float32()}
    out = op.transform(table, None)
    assert out.schema == schema
    got = np.column_stack([out.column(f"embedding_{j}").to_numpy() for j in range(8)])
    np.testing.assert_array_equal(got, emb)
    assert op.derived_from()["embedding_3"] == ["embedding"]


def test_lists_with_nulls_take_each_position_the_same_as_without() -> None:
    """A list column (Spark's array<double>) with a null vector and a null number: the
    positions of the others are their numbers, a null vector nulls in every position."""
    rows = [[1.0, 2.0, 3.0], None, [4.0, None, 6.0], [7.0, 8.0, 9.0]]
    table = pa.table({"v": pa.array(rows, pa.list_(pa.float64()))})
    out = VectorColumns(columns=["v"], size=3).transform(table, None)
    assert [out.column(f"v_{j}").to_pylist() for j in range(3)] == [
        [1.0, None, 4.0, 7.0], [2.0, None, None, 8.0], [3.0, None, 6.0, 9.0]]
    plain = VectorColumns(columns=["v"], size=3).transform(table.slice(3), None)  # no null
    assert [plain.column(f"v_{j}").to_pylist() for j in range(3)] == [[7.0], [8.0], [9.0]]
    # a sliced, chunked column
    chunked = pa.table({"v": pa.chunked_array([pa.array(rows[:2], pa.list_(pa.float64())),
                                               pa.array(rows[2:], pa.list_(pa.float64()))])})
    again = VectorColumns(columns=["v"], size=3).transform(chunked.slice(1), None)
    assert again.column("v_0").to_pylist() == [None, 4.0, 7.0]


@pytest.mark.parametrize(("column", "params", "error", "match"), [
    (pa.array([["a"]], pa.list_(pa.string())), {}, SchemaError,
     "column 'v' is list<item: string>, not a vector of numbers"),
    (pa.array([1.0]), {}, SchemaError, "column 'v' is double, not a vector of numbers"),
    (pa.array([[1.0]], pa.list_(pa.float64())), {}, SchemaError,
     r"its vectors' length is not in its type \(give it: size: 384"),
    (pa.array([[1.0, 2.0]], pa.list_(pa.float64(), 2)), {"size": 3}, SchemaError,
     r"holds vectors of 2 numbers, not size: 3 \(set size: 2, or leave size out\)"),
])
def test_plan_errors(column: pa.Array, params: dict[str, Any], error: type,
                     match: str) -> None:
    with pytest.raises(error, match=match):
        VectorColumns(columns=["v"], **params).output_schema(pa.table({"v": column}).schema)


def test_a_vector_of_another_length_is_a_data_error_naming_the_column() -> None:
    table = pa.table({"v": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0], [1.0, 2.0, 3.0]],
                                    pa.list_(pa.float64()))})
    with pytest.raises(DataError, match=r"column 'v' has 2 vectors of another length than "
                                        r"2 \(the first of 1\)"):
        VectorColumns(columns=["v"], size=2).transform(table, None)


def test_a_name_it_makes_that_is_taken_is_refused() -> None:
    table = pa.table({"v": pa.array([[1.0, 2.0]], pa.list_(pa.float64(), 2)),
                      "v_1": [0.0]})
    with pytest.raises(SchemaError, match="the vector's column 'v_1' is a column of the "
                                          "input too"):
        VectorColumns(columns=["v"]).output_schema(table.schema)


TRAIN = """
    pipeline: docs
    steps:
      - op: read_parquet
        path: data/docs
      - op: vector_columns
        columns: [embedding]
      - id: model
        op: logistic_regression
        label: label
        l2: 0.01
        features: [{features}]
      - op: save_model
        name: docs
    """

SCORE = """
    pipeline: docs_score
    steps:
      - op: read_parquet
        path: data/docs
      - op: score
        model: docs
      - op: select
        columns: [doc, prediction, probability]
      - op: write_parquet
        path: out/{name}
    """


def test_a_model_of_embeddings_trains_and_scores_alike_on_every_engine(
        workdir: Path, engine: Any) -> None:
    """read embeddings -> vector_columns -> logistic_regression -> save; the saved chain
    scores the embeddings as read: the same model and scores as scikit-learn's on the
    positions, on every engine and partitioning."""
    from sklearn.linear_model import LogisticRegression

    table, emb = embeddings(600, seed=4)
    data = workdir / "data" / "docs"
    data.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(600), 3)):
        pq.write_table(table.take(part), data / f"part-{i}.parquet")
    features = ", ".join(f"embedding_{j}" for j in range(8))
    record = run(write_pipeline(workdir, TRAIN.format(features=features), "train.yaml"),
                 engine_instance=engine)
    assert record["status"] == "succeeded"
    run(write_pipeline(workdir, SCORE.format(name=engine.name), "score.yaml"),
        engine_instance=engine)
    scores = pq.read_table(workdir / "out" / engine.name).sort_by("doc")
    reference = LogisticRegression(C=1 / (0.01 * 600), tol=1e-12,  # C = 1 / (l2 n)
                                   max_iter=1000).fit(emb.astype(np.float64),
                                                      table.column("label").to_numpy())
    np.testing.assert_allclose(scores.column("probability").to_numpy(),
                               reference.predict_proba(emb.astype(np.float64))[:, 1],
                               rtol=1e-6, atol=1e-8)
