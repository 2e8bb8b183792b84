"""Multi-pass fits over the same table objects (the local engine's cache, a resident
fit's tasks) build a partition's matrix once (``operators.models.common.kept_with``),
and never hand one fit's matrix to another."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from operators.arrays import get_namespace
from operators.base import drive, tree_reduce
from operators.models import linear, logistic, mlp
from operators.testing.kit import split

NUMPY = get_namespace("numpy")
MLP = {"hidden": [3], "activation": "tanh", "l2": 0.01, "tol": 1e-8, "max_iter": 200}
SPLIT = {"validation_fraction": 0.25, "seed": 5}
BALANCED = {"class_weight": "balanced"}
# (module, estimator, what builds its matrix, its params, other fits of the same tables)
FITS = [(mlp, "MLP", "host_matrix", MLP, [BALANCED, SPLIT]),
        (logistic, "LogisticRegression", "feature_matrix", {"solver": "newton"},
         [BALANCED, SPLIT]),
        (logistic, "LogisticRegression", "feature_matrix", {"solver": "lbfgs"},
         [BALANCED, SPLIT]),
        (linear, "LinearRegression", "feature_matrix", {"loss": "poisson", "solver": "lbfgs"},
         [{"fit_intercept": False}, SPLIT])]


def _counted(patch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """The calls of ``module.name`` from now on, each as the rows (length) of its first
    argument."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(first: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(first))
        return real(first, *args, **kwargs)

    patch.setattr(module, name, counted)
    return calls


def _fitted_arrays(op: Any, parts: list[pa.Table]) -> tuple[np.ndarray, dict[str, Any]]:
    def aggregate(partial: Any) -> Any:
        return tree_reduce([partial(p, NUMPY) for p in parts], op.combine)

    state, _ = drive(op, parts[0].schema, aggregate)
    arrays = op.fitted(state).state()[1]
    return np.concatenate([np.ravel(v) for v in arrays.values()]), op.metrics(state)


@pytest.mark.parametrize(("module", "name", "builder", "params", "others"), FITS,
                         ids=["mlp-lbfgs", "logistic-newton", "logistic-lbfgs", "poisson"])
def test_a_partition_s_matrix_is_built_once_a_fit_and_never_another_fit_s(
        module: Any, name: str, builder: str, params: dict[str, Any],
        others: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(300) > 0.4).astype(np.int64)
    parts = split(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "y": y}), 3)
    built = _counted(monkeypatch, module, builder)
    estimator = getattr(module, name)
    plain, metrics = _fitted_arrays(estimator(estimator.Params(label="y", **params)), parts)
    assert metrics["iterations"] > 3
    assert len(built) == len(parts), built  # one matrix a partition for the whole fit
    for other in others:
        def fitted(tables: list[pa.Table], other: dict[str, Any] = other) -> np.ndarray:
            return _fitted_arrays(estimator(estimator.Params(label="y", **params, **other)),
                                  tables)[0]

        again = fitted(parts)
        np.testing.assert_array_equal(again, fitted([pa.table(p.to_pydict()) for p in parts]))
        assert not np.allclose(again, plain)


def test_what_is_kept_stays_within_the_budget_and_goes_with_its_tables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The designs kept in a process are counted against the cache's budget
    (``SLUICE_CACHE_MB``): past it a fit builds its matrix each pass, as before; and
    what is kept is given back when its tables go."""
    import gc

    from operators.models.common import kept_bytes

    rng = np.random.default_rng(4)
    X = rng.standard_normal((400, 4))
    y = (X[:, 0] > 0).astype(np.int64)

    def tables() -> list[pa.Table]:
        return split(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "y": y}), 2)

    def fit_counting(parts: list[pa.Table]) -> int:
        with monkeypatch.context() as patch:
            built = _counted(patch, logistic, "feature_matrix")
            _fitted_arrays(logistic.LogisticRegression(
                logistic.LogisticRegression.Params(label="y", solver="lbfgs")), parts)
        return len(built)

    gc.collect()
    before = kept_bytes()
    parts = tables()
    assert fit_counting(parts) == 2 and kept_bytes() > before
    del parts
    gc.collect()
    assert kept_bytes() == before
    monkeypatch.setenv("SLUICE_CACHE_MB", "0")
    parts = tables()
    assert fit_counting(parts) > 2 * 3 and kept_bytes() == before  # each pass builds


def _sparse_parts(rows: int, parts: int) -> list[pa.Table]:
    """A dense feature and a sparse column of 3 positions, a 0/1 label."""
    from operators.sparse import sparse_field

    rng = np.random.default_rng(6)
    dense = rng.standard_normal(rows)
    values = rng.standard_normal((rows, 3))
    y = (dense + values[:, 0] - values[:, 2] > 0).astype(np.int64)
    bag = pa.array([{"indices": [j for j in range(3) if (i + j) % 2], "values":
                     [float(values[i, j]) for j in range(3) if (i + j) % 2]}
                    for i in range(rows)], type=sparse_field("bag", 3, None).type)
    schema = pa.schema([pa.field("d", pa.float64()), sparse_field("bag", 3, None),
                        pa.field("y", pa.int64())])
    return split(pa.table([dense, bag, y], schema=schema), parts)


@pytest.mark.parametrize(("module", "name", "builder", "params", "others"),
                         [*FITS, (logistic, "LogisticRegression", "sparse_matrix",
                                  {"solver": "lbfgs"}, [])],
                         ids=["mlp-lbfgs", "logistic-newton", "logistic-lbfgs", "poisson",
                              "logistic-sparse"])
def test_a_partition_s_validation_split_is_made_once_a_fit(
        module: Any, name: str, builder: str, params: dict[str, Any],
        others: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``validation_fraction`` every pass of a multi-pass fit trains on the same
    rows: the partition is split (filtered) once a fit, not once a pass, the held-out
    metrics read the same split, and the fit is the one of tables split afresh each pass
    (tables that cannot keep anything: copies each pass)."""
    from operators.models import common

    if builder == "sparse_matrix":
        parts = _sparse_parts(300, 3)
    else:
        rng = np.random.default_rng(3)
        X = rng.standard_normal((300, 4))
        y = (X[:, 0] + 0.3 * rng.standard_normal(300) > 0.4).astype(np.int64)
        parts = split(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "y": y}), 3)
    splits = _counted(monkeypatch, common, "split_rows")
    built = _counted(monkeypatch, module, builder)
    estimator = getattr(module, name)
    op = estimator(estimator.Params(label="y", **params, **SPLIT))
    kept, metrics = _fitted_arrays(op, parts)
    assert metrics["iterations"] > 3 and "validation" in metrics, metrics
    assert len(splits) == len(parts), splits
    assert len(built) == len(parts), built
    # nothing kept: each pass splits and builds afresh, to the same fit
    monkeypatch.setenv("SLUICE_CACHE_MB", "0")
    splits.clear()
    again, again_metrics = _fitted_arrays(
        op, [pa.table(p.to_pydict(), schema=p.schema) for p in parts])
    assert len(splits) > 3 * len(parts)
    np.testing.assert_array_equal(again, kept)
    assert again_metrics["validation"] == metrics["validation"]


def test_adam_reads_and_hashes_a_partition_s_rows_once_a_fit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of adam's epochs gathers its batches from the training rows' matrix and their
    hashes (``_row_keys``) kept with the partition, and scores early stopping's held-out
    rows from theirs: one build of each a partition for the whole fit, to the model of
    tables that keep nothing."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((300, 4))
    y = (X[:, 0] - X[:, 2] + 0.3 * rng.standard_normal(300) > 0).astype(np.int64)
    parts = split(pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "y": y}), 3)
    built = _counted(monkeypatch, mlp, "host_matrix")
    hashed = _counted(monkeypatch, mlp, "_row_keys")
    op = mlp.MLP(mlp.MLP.Params(label="y", hidden=[4], solver="adam", batch_size=16,
                                max_iter=6, early_stopping=True, n_iter_no_change=10,
                                **SPLIT))
    with pytest.warns(Warning, match="max_iter"):
        kept, metrics = _fitted_arrays(op, parts)
    assert metrics["iterations"] == 6, metrics
    assert len(built) == 2 * len(parts) and len(hashed) == len(parts), (built, hashed)
    monkeypatch.setenv("SLUICE_CACHE_MB", "0")
    built.clear()
    with pytest.warns(Warning, match="max_iter"):
        again = _fitted_arrays(op, [pa.table(p.to_pydict()) for p in parts])[0]
    assert len(built) > 6 * len(parts)
    np.testing.assert_array_equal(again, kept)


def _blobs(seed: int) -> pa.Table:
    """300 rows of 3 features about three close centres."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 1.0, (100, 3)) for c in (-0.5, 0.0, 0.5)])
    return pa.table({f"x{j}": X[:, j] for j in range(3)})


@pytest.mark.parametrize("params", [SPLIT, {}], ids=["split", "whole"])
def test_kmeans_rows_and_matrix_are_kept_within_the_budget(monkeypatch: pytest.MonkeyPatch,
                                                           params: dict[str, Any]) -> None:
    """kmeans keeps with a partition, through ``kept_with``: its training rows (a
    validation split of the columns it reads, filtered once a fit) and their centred
    matrix (built by the summary pass, shifted by the mean in place, read by every pass
    after), counted in the budget while the table lives; past the budget
    (``SLUICE_CACHE_MB`` 0) made again each pass, to the same model."""
    import gc

    from operators.models import common, kmeans
    from operators.models.common import kept_bytes

    data = _blobs(9)
    built = _counted(monkeypatch, kmeans, "holdout_mask" if params else "feature_matrix")
    op = kmeans.KMeans(kmeans.KMeans.Params(k=3, max_iter=20, tol=1e-12, **params))
    gc.collect()
    before = kept_bytes()
    parts = split(data, 3)
    kept, metrics = _fitted_arrays(op, parts)
    assert metrics["iterations"] > 3, metrics
    assert built == [p.num_rows for p in parts], built
    key = (0.25, 5, 0.0, ("x0", "x1", "x2"))
    trained = [common.kept(p, "kmeans_training", key) if params else p for p in parts]
    # the training rows' table (where split) and its (matrix, weights): float64 rows of
    # 3 features and a weight
    assert kept_bytes() - before == sum((t.nbytes if params else 0) + t.num_rows * 4 * 8
                                        for t in trained)
    del parts, trained
    gc.collect()
    assert kept_bytes() == before
    monkeypatch.setenv("SLUICE_CACHE_MB", "0")
    built.clear()
    again = _fitted_arrays(op, split(data, 3))[0]
    assert len(built) > 3 * 3, built
    np.testing.assert_array_equal(again, kept)


def _tree_fits() -> list[tuple[Any, dict[str, Any]]]:
    from operators.models.boosted_trees import GradientBoostedTrees
    from operators.models.forest import RandomForest

    return [(RandomForest, {"n_trees": 4, "max_depth": 5}),
            (GradientBoostedTrees, {"n_trees": 4, "max_depth": 3})]


@pytest.mark.parametrize("fit", [0, 1], ids=["forest", "boosting"])
def test_the_trees_rows_are_kept_within_the_budget_and_go_with_their_tables(
        fit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a tree fit keeps with a partition for its next pass (``fit_memo``: a forest's
    rows and their nodes per tree, boosting's walk of each row down the round's tree) is
    counted in the process's kept budget while the table lives and given back when it
    goes or another fit's memo replaces it; within a small budget (``SLUICE_CACHE_MB``)
    the kept bytes never pass it, and with none nothing is kept: the same model each
    time, bit for bit."""
    import gc

    from operators.models import common
    from operators.models.common import kept_bytes
    from operators.testing.cases.trees import tree_table

    op, params = _tree_fits()[fit]
    data = tree_table(rows=600, seed=21)
    seen: list[tuple[int, int]] = []  # (kept in the process, counted in the memos) a pass
    real = common.fit_memo

    def watched(part: pa.Table, token: str) -> dict[str, Any]:
        memo = real(part, token)
        seen.append((kept_bytes(), sum(common.table_memo(p).get("fit", (0, {"bytes": 0}))[1]
                                       ["bytes"] for p in parts)))
        return memo

    def fit_watched() -> np.ndarray:
        seen.clear()
        return _fitted_arrays(op(op.Params(label="y", seed=2, **params)), parts)[0]

    for module in ("trees", "boosted_trees"):
        monkeypatch.setattr(f"operators.models.{module}.fit_memo", watched)
    gc.collect()
    before = kept_bytes()
    parts = split(data, 3)
    model = fit_watched()
    kept = [now - before for now, _ in seen]
    assert max(kept) > 0 and kept == [counted for _, counted in seen]
    # each partition's memo holds at most MEMO_FACTOR times its table
    assert max(kept) <= common.MEMO_FACTOR * sum(p.nbytes for p in parts)
    # another fit over the same tables: the first's memos are let go of, and given back
    np.testing.assert_array_equal(fit_watched(), model)
    assert [now - before for now, _ in seen] == [counted for _, counted in seen]
    del parts
    gc.collect()
    assert kept_bytes() == before
    budget = max(kept) // 3
    # the budget is the process's: what earlier tests' live tables keep counts in it
    monkeypatch.setenv("SLUICE_CACHE_MB", repr((before + budget) / 2**20))
    parts = split(data, 3)
    np.testing.assert_array_equal(fit_watched(), model)
    assert 0 < max(now - before for now, _ in seen) <= budget
    del parts
    gc.collect()
    monkeypatch.setenv("SLUICE_CACHE_MB", "0")
    parts = split(data, 3)
    np.testing.assert_array_equal(fit_watched(), model)
    assert {now for now, _ in seen} == {before}


def test_a_table_freed_inside_the_budget_s_lock_gives_its_bytes_back() -> None:
    """The garbage collector can free a table, and run its finalizer (which gives back
    what was kept with it), on a thread inside the budget's locked section (a fit taking
    room): the finalizer must not wait on that lock (it waited for ever: a fit hung)."""
    import threading
    import weakref

    from operators.models.common import _Kept, kept_bytes

    before = kept_bytes()
    assert _Kept.take(100)

    def freed_while_locked() -> None:
        with _Kept.lock:
            part = pa.table({"x": [1.0]})
            weakref.finalize(part, _Kept.give_back, 100)
            del part  # its finalizer runs here, the lock held

    thread = threading.Thread(target=freed_while_locked, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert kept_bytes() == before
