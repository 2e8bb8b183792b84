"""What every model family shares: feature and label handling, the classifier rule, the
validation split by row hash, the `prediction` / `probability` outputs, the fitted base.

A model step reads numeric feature columns (integer, floating, boolean), a label and
an optional weight column. Its label makes it a classifier (integer, boolean or string:
classes in sorted order) or a regressor (floating point). Rows are held out for
validation by a hash of their content and the seed, so every engine and every
partitioning holds out the same rows.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from abc import abstractmethod
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, PositiveFloat, model_validator

from operators.arrays import (
    column_to_numpy,
    compute_dtype,
    host_buffer,
    is_numpy,
    is_text,
    to_numpy,
    to_xp,
)
from operators.base import (
    DataError,
    FitProgress,
    MissingColumnError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    require_columns,
)
from operators.errors import counted
from operators.evaluate.metrics import DEFAULT_METRICS, MetricAccumulator
from operators.expressions import quote_name
from operators.hashing import chosen_rows, window
from operators.processes import cache_budget
from operators.sparse import (
    columns_of,
    csr_matrix,
    csr_parts,
    expand,
    fill_dense,
    groups,
    has_sparse,
    is_sparse_type,
    issparse,
    matrix_bytes,
    require_dense_room,
    rows_of,
    scipy_sparse,
)

PREDICTION = "prediction"
PROBABILITY = "probability"
CONTRIBUTIONS, CONTRIBUTION_BASE = "contributions", "contribution_base"

ACCUMULATE_ROWS = 1 << 16
"""Rows per float32 matmul block of ``row_products``, each block's result summed in
float64: the float32 rounding of a statistic then stays near 2^-24 x sqrt(block)."""

FEATURE_HINT = ("impute it (op: impute) or leave those rows out (op: filter, or "
                "read_parquet's filter)")
SCORING_HINT = ("the model was trained without such values: leave those rows out before it "
                "scores (op: filter, read_parquet's filter, or `sluice score --filter "
                "'COLUMN is not null'`), or train it again with an impute of the column "
                "before the model step (op: impute; the saved model then fills them as it "
                "scores)")


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped before its tolerance was met (also in the run record)."""


class ConditioningWarning(UserWarning):
    """The design matrix is rank-deficient or ill-conditioned; the solution is the
    minimum-norm one (also in the run record)."""


def validation_fraction_field() -> Any:
    """The ``validation_fraction`` of a step that holds rows out (a model of a label's,
    kmeans')."""
    return Field(0.0, ge=0.0, lt=1.0, description="fraction of rows held out (by row-content "
                                                   "hash) for validation metrics")


def validation_start_field() -> Any:
    """Its ``validation_start``: where the share starts (tune_folds' folds)."""
    return Field(0.0, ge=0.0, lt=1.0,
                 description="where the held-out rows start in the order of the rows' hash: "
                             "those in [start, start + validation_fraction) (tune_folds' "
                             "folds; 0: the first share)")


def check_validation_window(params: HoldsOut) -> None:
    """A ParamError when the held-out share runs past the end of the hash order."""
    if params.validation_start + params.validation_fraction > 1 + 1e-12:
        raise ParamError(f"validation_start {params.validation_start:g} + "
                         f"validation_fraction {params.validation_fraction:g} is over 1",
                         hint="the held-out share must end by 1")


class HoldsOut(Protocol):
    """The parameters of a step that holds rows out for validation (a supervised model's,
    kmeans')."""

    validation_fraction: float
    validation_start: float
    seed: int


class SupervisedParams(Params):
    """Parameters every supervised model step has."""

    label: str = Field(description="the column to predict")
    features: list[str] | None = Field(
        None, description="feature columns (default: every numeric column but the label "
                          "and the weight)")
    weight: str | None = Field(None, description="column of non-negative row weights")
    validation_fraction: float = validation_fraction_field()
    validation_start: float = validation_start_field()
    seed: int = Field(0, description="seed of the validation split")

    @model_validator(mode="after")
    def _window(self) -> SupervisedParams:
        check_validation_window(self)
        check_listed_features(self.features)
        check_role("label", self.label, self.features)
        check_role("weight", self.weight, self.features)
        return self


class PlannedPredictions:
    """A model step whose fit decides the types of its prediction columns (probability:
    float64 for two classes, list<double> for more), never their names."""

    def fit_may_add(self, column: str) -> bool:
        return column in ("prediction", "probability")


def require_counts(X: Any, features: list[str], xp: Any, what: str, hint: str) -> None:
    """Counts or frequencies (a multinomial model's, a chi-squared test's): a DataError
    naming the first feature column of ``X`` with a negative value, and its lowest; the
    look at the values made on ``xp``'s device, only the flags brought back."""
    if issparse(X):  # its stored values only: the rest are 0
        negative = X.data < 0
        if negative.any():
            column = int(X.indices[np.argmax(negative)])
            value = float(X.data[X.indices == column].min())
            raise DataError(f"feature column '{features[column]}' has negative values (as "
                            f"low as {value:g}), but {what} takes counts or frequencies",
                            hint=hint)
        return
    negative = X < 0
    if bool(xp.any(negative)):
        column = int(np.argmax(to_numpy(xp.any(negative, axis=0))))
        value = float(to_numpy(xp.min(X[:, column])))
        raise DataError(f"feature column '{features[column]}' has negative values (as low as "
                        f"{value:g}), but {what} takes counts or frequencies", hint=hint)


def check_listed_features(features: list[str] | None) -> None:
    """A ParamError for ``features: []``: an empty list is no default (every numeric
    column is), and no model trains on no column."""
    if features is not None and not features:
        raise ParamError("features: an empty list", hint="list the feature columns, or "
                                                         "leave features out for every "
                                                         "numeric column but the label and "
                                                         "the weight")


ClassWeight = Literal["balanced"] | dict[bool | int | str, PositiveFloat] | None


def class_weight_field() -> Any:
    return Field(None, description="weigh the classes' rows: balanced (each class weighs as "
                                   "much in all), or {class: factor} (others 1); scikit-learn's "
                                   "class_weight, XGBoost's scale_pos_weight")


def weigh_classes(choice: ClassWeight, classes: list[Any], totals: np.ndarray, label: str
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The classes' total weights with ``class_weight`` applied, and the factor of each
    class position's rows (None without ``class_weight``). ``balanced``: each class's
    total becomes the mean total (scikit-learn's ``n / (k n_c)``, on the rows' weights);
    a mapping names classes as the label holds them (or as text). A single class is an
    error: a classifier needs two."""
    if len(classes) < 2:
        raise DataError(f"label column '{label}' has a single class ({classes[0]!r}) in the "
                        "training rows", hint="a classifier needs at least two classes: "
                                              "check the filter and the label column")
    if choice is None:
        return totals, None
    if choice == "balanced":
        present = totals > 0
        factor = np.where(present, totals.sum() / (present.sum() * np.where(present, totals, 1.0)),
                          0.0)
        return totals * factor, factor
    factor = np.ones(len(classes))
    for key, value in choice.items():
        hits = classes_named(key, classes)
        if not hits:
            shown = ", ".join(repr(c) for c in classes[:20])
            raise DataError(f"class_weight names class {key!r}, which label '{label}' does not "
                            "have in the training rows", hint=f"classes: {shown}")
        factor[hits] = value
    return totals * factor, factor


def classes_named(key: bool | int | str, classes: list[Any]) -> list[int]:
    """The positions in ``classes`` of the class a parameter's key names: as the label
    holds it (True is not 1), or as text (YAML keys of a text label, "1" of an integer,
    "true" or "false" of a boolean in any case: a pipeline file's keys come as written)."""
    return [i for i, c in enumerate(classes)
            if (key == c and isinstance(key, bool) == isinstance(c, bool))
            or (isinstance(key, str) and (key.lower() == str(c).lower()
                                          if isinstance(c, bool) else key == str(c)))]


def named_classes(choice: ClassWeight) -> list[str]:
    """The distinct classes a ``class_weight`` mapping names, as text (``classes_named``
    reads True and "true", 1 and "1" as one): a fit finds each in its label or refuses,
    so a model fitted has at least these, as its pipeline plans."""
    if not isinstance(choice, dict):
        return []
    return list(dict.fromkeys(str(k).lower() if isinstance(k, bool) else str(k)
                              for k in choice))


def check_class_weight(choice: ClassWeight, classify: bool, label: str) -> None:
    if choice is not None and not classify:
        raise ParamError(f"class_weight weighs classes, and label '{label}' makes this a "
                         "regression", hint="leave class_weight out, or set task: classification")


def by_class(weights: np.ndarray, index: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """Row weights times their class's ``class_weight`` factor (rows of no known class,
    index -1, keep theirs)."""
    if factor is None:
        return weights
    return weights * np.where(index >= 0, factor[np.maximum(index, 0)], 1.0)


# --------------------------------------------------------------------------- types


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def class_label_type(t: pa.DataType) -> pa.DataType | None:
    """The type class labels of a column of type ``t`` have, or None if not a class label.

    Integer, boolean and string columns hold classes (a dictionary column's values do).
    """
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or is_text(t):
        return t
    return None


def classifier_label_type(schema: pa.Schema, label: str, op: str) -> pa.DataType:
    """The class type of a classifier's ``label`` column (``class_label_type``), or a
    SchemaError saying ``op`` needs classes and how to get them or predict numbers."""
    t = schema.field(label).type
    value_type = class_label_type(t)
    if value_type is None:
        raise SchemaError(
            f"label column '{label}' is {t}: {op} needs classes (integer, boolean or string)",
            hint=f"cast it (read_parquet schema: {{{label}: int64}}), or use "
                 "linear_regression to predict numbers")
    return value_type


def is_classification(label_type: pa.DataType, task: str | None = None) -> bool:
    """The model is a classifier when its label holds classes, unless ``task`` says."""
    if task is not None:
        return task == "classification"
    return class_label_type(label_type) is not None


# --------------------------------------------------------------------------- plan time


def select_features(schema: pa.Schema, params: SupervisedParams,
                    categorical: Collection[str] = (), sparse: bool = False) -> list[str]:
    """The feature columns: as given, or every numeric column (and every ``categorical``
    one) but the label and weight, in the input's order (``sparse``: a sparse column's
    positions too, ``operators.sparse``)."""
    return chosen_features(schema, params.features,
                           {params.label, params.weight, query_column(params)}, categorical,
                           sparse)


def chosen_features(schema: pa.Schema, features: list[str] | None,
                    skip: Collection[str | None], categorical: Collection[str] = (),
                    sparse: bool = False) -> list[str]:
    """``features`` as given, or every numeric column (and every ``categorical`` one)
    but those of ``skip`` (a label, a weight), in the input's order. ``sparse``: the
    step reads sparse columns, each as its positions' names (``operators.sparse``);
    without it a sparse column among the features is a SchemaError that says which steps
    read one."""
    if features is None:
        features = [f.name for f in schema
                    if f.name not in skip and f.name != HOLDOUT_POSITION
                    and (is_numeric(f.type) or f.name in categorical
                         or is_sparse_type(f.type))]
    else:
        features = list(features)
    if not sparse:
        for name in features:
            if name in schema.names and is_sparse_type(schema.field(name).type):
                raise SchemaError(
                    f"column '{name}' is a sparse column (vectorize_text with sparse: "
                    "true), which this step does not read",
                    hint="naive_bayes, logistic_regression, linear_regression, kmeans, "
                         "decision_tree, random_forest, gradient_boosted_trees, mlp, "
                         "isolation_forest, select_features (chi2, anova), "
                         "evaluate_clusters and pca read "
                         "sparse columns; for this step make a column per term (leave sparse: "
                         "out), or leave the column out (features:)")
        return features
    return expand(schema, features)


def model_input_columns(schema: pa.Schema, params: SupervisedParams,
                        categorical: Collection[str] = (), sparse: bool = False
                        ) -> list[str]:
    """Columns a model step reads while fitting: features (a sparse column once),
    label, weight."""
    extra = [params.label, params.weight, query_column(params)]
    return (columns_of(schema, select_features(schema, params, categorical, sparse))
            + [c for c in extra if c])


def check_features(schema: pa.Schema, features: list[str], fitted: bool = False) -> None:
    """Plan-time check: every feature is present and numeric (or a position of a sparse
    column). ``fitted``: a fitted model's features, whose sparse columns' terms are
    positions of their own, so a feature that is a sparse column is not a number."""
    plain_features = [features[start] for column, start, _ in groups(schema, features)
                      if column is None]
    require_columns(schema, plain_features, "feature column")
    for name in plain_features:
        t = schema.field(name).type
        if is_sparse_type(t) and not fitted:  # its terms not known yet (the step fits them)
            continue
        if is_sparse_type(t):
            raise SchemaError(
                f"feature column '{name}' is a sparse column (each row's non-zero terms), "
                "and the model was trained on it as one number a row",
                hint=f"score rows whose '{name}' is the number it was trained on")
        if not is_numeric(t):
            raise SchemaError(
                f"feature column '{name}' is {t}, not numeric",
                hint="encode it first (op: one_hot or op: hash_encode), or leave it out of "
                     "features")


def check_role(role: str, name: str | None, features: list[str] | None) -> None:
    """A ParamError when the ``role`` column (label, weight) is also a listed feature."""
    if name is not None and name in (features or []):
        raise ParamError(f"the {role} column '{name}' is also listed in features",
                         hint=f"remove '{name}' from features")


def check_weight(schema: pa.Schema, weight: str | None, features: list[str] | None) -> None:
    """Plan-time check of a weight column: present, numeric, not a listed feature."""
    check_role("weight", weight, features)
    if weight is None:
        return
    require_columns(schema, [weight], "weight column")
    t = schema.field(weight).type
    if not is_numeric(t):
        raise SchemaError(f"weight column '{weight}' is {t}, not numeric",
                          hint="cast it to float64")


def check_inputs(schema: pa.Schema, params: SupervisedParams,
                 categorical: Collection[str] = (), sparse: bool = False) -> list[str]:
    """Plan-time checks of features, label and weight; returns the feature columns
    (``categorical`` ones need not be numeric: their caller checks them; ``sparse``: a
    sparse column's positions, ``operators.sparse``)."""
    require_columns(schema, [params.label], "label column")
    features = select_features(schema, params, categorical, sparse)
    check_role("label", params.label, params.features)
    check_weight(schema, params.weight, params.features)
    if params.weight == params.label:
        raise ParamError(f"'{params.label}' is both the label and the weight",
                         hint="use another weight column")
    require_some_features(features)
    check_features(schema, [f for f in features if f not in categorical])
    return features


def require_some_features(features: list[str]) -> None:
    """A step of features to read finds none: a missing-column error (after a fit that
    makes its columns as it fits, such as one_hot or select_features, checked when the
    run gets there)."""
    if not features:
        raise MissingColumnError("no numeric feature columns in the input",
                                 hint="list features, or encode string columns (op: one_hot)")


# --------------------------------------------------------------------------- partitions


_TABLE_MEMOS: dict[int, tuple[Any, dict[str, Any]]] = {}


def table_memo(part: pa.Table) -> dict[str, Any]:
    """A dict that lives as long as the table object ``part`` (weakly keyed by it; a
    fresh dict, kept nowhere, if the table cannot be weakly referenced): what a fit
    derives from a partition, for the next pass over the same table (the local engine
    and resident fits hand every pass the same object). A table never changes, so what
    is derived from it holds while it lives."""
    key = id(part)
    entry = _TABLE_MEMOS.get(key)
    if entry is not None and entry[0]() is part:
        return entry[1]
    memo: dict[str, Any] = {}

    def forget(ref: Any, key: int = key) -> None:
        held = _TABLE_MEMOS.get(key)
        if held is not None and held[0] is ref:
            _TABLE_MEMOS.pop(key, None)

    try:
        ref = weakref.ref(part, forget)
    except TypeError:
        return memo
    _TABLE_MEMOS[key] = (ref, memo)
    return memo


MEMO_FACTOR = 2.0
"""What a fit keeps with a partition's table (``kept_with``, the trees' rows) holds at most
this many times the table's bytes."""


class _Kept:
    """The bytes ``kept_with`` and the fits' memos (``fit_memo``) hold in this process,
    against ``cache_budget`` (the local engine's cache has as much: what is derived from
    the partitions it caches takes at most as much again)."""

    lock = threading.Lock()
    bytes = 0
    # given back by a table's finalizer, settled under the lock: the garbage collector
    # can run a finalizer anywhere, inside a locked section too
    freed: ClassVar[list[int]] = []

    @classmethod
    def settle(cls) -> None:
        """Under the lock: what finalizers gave back, off the count."""
        while cls.freed:
            cls.bytes -= cls.freed.pop()

    @classmethod
    def take(cls, size: int, memo: dict[str, Any] | None = None) -> bool:
        """``size`` bytes more where the budget (and ``memo``'s limit) has room."""
        with cls.lock:
            cls.settle()
            if cls.bytes + size > cache_budget() or (
                    memo is not None and memo["bytes"] + size > memo["limit"]):
                return False
            cls.bytes += size
            if memo is not None:
                memo["bytes"] += size
            return True

    @classmethod
    def give_back(cls, size: int) -> None:
        """``size`` bytes let go of (without the lock: also a finalizer)."""
        cls.freed.append(size)


def memo_take(memo: dict[str, Any], size: int) -> bool:
    """Room for ``size`` more bytes in a fit's memo of a partition (``fit_memo``), taken
    where there is: within the memo's ``limit`` (``MEMO_FACTOR`` times its table's bytes)
    and the process's kept budget (``_Kept``, which ``kept_with`` shares); False (keep
    nothing) where there is not."""
    return _Kept.take(size, memo)


def memo_release(memo: dict[str, Any], size: int) -> None:
    """``size`` bytes ``memo_take`` took for an entry let go of (none once the memo is
    let go of whole: ``_memo_gone``)."""
    with _Kept.lock:
        if memo["limit"] >= 0:
            memo["bytes"] -= size
            _Kept.give_back(size)


def _memo_gone(memo: dict[str, Any]) -> None:
    """Every byte of ``memo`` given back, and nothing taken again: its table went (a
    finalizer: no lock), or another fit's memo took its place (under the lock)."""
    _Kept.give_back(memo["bytes"])
    memo["bytes"], memo["limit"] = 0, -1


def fit_memo(part: pa.Table, token: str) -> dict[str, Any]:
    """A dict that lives as long as the table object ``part`` and belongs to the fit
    ``token`` (another fit's replaces it): what a fit derives from a partition for its
    next pass over the same table (``table_memo``). What is counted in it (``memo_take``,
    ``memo_release``: its ``bytes`` of at most its ``limit``) is within the process's
    kept budget until the table goes or another fit's memo replaces it. A fresh dict,
    kept nowhere and taking nothing, if the table cannot be weakly referenced.

    Only derived, exactly recomputable data goes in: an engine that hands a new table
    object to every pass gets the same model, more slowly.
    """
    held = table_memo(part)
    entry = held.get("fit")
    if entry is not None and entry[0] == token:
        return entry[1]
    if entry is not None:
        entry[2].detach()
        with _Kept.lock:
            _memo_gone(entry[1])
    memo: dict[str, Any] = {"bytes": 0, "limit": MEMO_FACTOR * part.nbytes}
    try:
        release = weakref.finalize(part, _memo_gone, memo)
    except TypeError:  # nothing outlives the pass: nothing to count
        memo["limit"] = -1
        return memo
    held["fit"] = (token, memo, release)
    return memo


_NOTHING = object()


def kept_size(made: Any) -> int:
    """The bytes of what ``kept_with`` keeps: a dense or CSR matrix's (``matrix_bytes``),
    a table's, the sum of a tuple's items; None takes none."""
    if made is None:
        return 0
    if isinstance(made, tuple | list):
        return sum(kept_size(item) for item in made)
    if isinstance(made, pa.Table):
        return made.nbytes
    return matrix_bytes(made)


def kept_with(part: pa.Table, name: str, key: tuple[Any, ...], make: Callable[[], Any]
              ) -> Any:
    """``make()``, kept with the table ``part`` (``table_memo``) under ``name`` for the next
    pass that asks with the same ``key`` (what it was made from: the fit's columns,
    classes, weights and split), where it takes (``kept_size``) at most ``MEMO_FACTOR``
    times the table's bytes and what this process keeps so stays within ``_Kept``'s
    budget (released as the table goes): a multi-pass fit over the same table objects
    (the local engine's cache, a resident fit's tasks) reads a partition's columns
    once. What is kept must not be written to."""
    found = kept(part, name, key, _NOTHING)
    if found is not _NOTHING:
        return found
    memo = table_memo(part)
    held = memo.get(name)
    if held is not None:  # another fit's: let it go
        del memo[name]
        held[2].detach()
        _Kept.give_back(held[3])
    made = make()
    size = kept_size(made)
    if size <= MEMO_FACTOR * part.nbytes and _Kept.take(size):
        try:
            release = weakref.finalize(part, _Kept.give_back, size)
        except TypeError:  # a table that cannot be weakly referenced: nothing kept
            _Kept.give_back(size)
            return made
        memo[name] = (key, made, release, size)
    return made


def kept(part: pa.Table, name: str, key: tuple[Any, ...], default: Any = None) -> Any:
    """What ``kept_with`` keeps with ``part`` under ``name`` for ``key``; ``default`` if
    nothing is."""
    held = table_memo(part).get(name)
    return held[1] if held is not None and held[0] == key else default


def kept_bytes() -> int:
    """What ``kept_with`` holds in this process now, in bytes."""
    with _Kept.lock:
        _Kept.settle()
        return _Kept.bytes


HOLDOUT_POSITION = "__sluice_holdout_position"
"""A column a tune of a feature step with its model adds before the feature step: each
row's place in [0, 1) by the hash of the row as the feature step read it (and the model's
seed), which the model's hold-out then reads, so that every candidate's feature columns
hold out the same rows (``pipelines.tuning``). Never a feature."""


def placed_in(part: pa.Table, fraction: float, start: float = 0.0) -> np.ndarray:
    """True for the rows whose ``HOLDOUT_POSITION`` falls in [start, start + fraction)."""
    return window(column_to_numpy(part.column(HOLDOUT_POSITION)), fraction, start)


def holdout_mask(part: pa.Table, fraction: float, seed: int, start: float = 0.0,
                 by: str | None = None) -> np.ndarray:
    """True for the rows held out for validation: a hash of all of the row's columns, or
    of column ``by`` alone (a ranking's query: whole queries are held out), or where a
    tune of the feature step before placed them (``HOLDOUT_POSITION``); kept with the
    table: every pass of a multi-pass fit splits the same rows."""
    if fraction <= 0:
        return np.zeros(part.num_rows, dtype=bool)
    masks = table_memo(part).setdefault("holdout", {})
    mask = masks.get((fraction, seed, start, by))
    if mask is None and HOLDOUT_POSITION in part.column_names:
        mask = placed_in(part, fraction, start)
    if mask is None:
        mask = chosen_rows(part, fraction, seed, None if by is None else [by], start=start)
        mask.flags.writeable = False
        masks[(fraction, seed, start, by)] = mask
    return mask


def split_rows(part: pa.Table, fraction: float, seed: int, start: float = 0.0,
               by: str | None = None) -> tuple[pa.Table, pa.Table]:
    """(training rows, held-out rows) of a partition."""
    if fraction <= 0:
        return part, part.slice(0, 0)
    mask = holdout_mask(part, fraction, seed, start, by)
    return part.filter(pa.array(~mask)), part.filter(pa.array(mask))


def query_column(params: HoldsOut) -> str | None:
    """The query id column of a ranking model (``group``), None for other models."""
    return getattr(params, "group", None)


def kept_design(part: pa.Table, name: str, params: SupervisedParams, state: dict[str, Any],
                xp: Any, make: Callable[[], Any], *key: Any) -> Any:
    """A supervised fit's design of ``part``'s training rows for a pass on ``xp``
    (``make()``): on NumPy ``kept_with`` the table under ``name``, keyed by what it is
    made of (the features, label and weight columns, the validation split and query, the
    classes and class weights of ``state``, ``key``, the compute dtype); on a device
    made each pass (its one copy there)."""
    if not is_numpy(xp):
        return make()
    factor = state.get("class_factor")
    made_of = (tuple(state["features"]), params.label, params.weight,
               params.validation_fraction, params.seed, params.validation_start,
               query_column(params), tuple(state.get("classes") or ()),
               state.get("label_type"),
               None if factor is None else tuple(np.asarray(factor, np.float64).tolist()),
               *key, str(compute_dtype(xp)))
    return kept_with(part, name, made_of, make)


def held_out(part: pa.Table, params: HoldsOut, keep: bool = False
             ) -> tuple[pa.Table, pa.Table]:
    """``split_rows`` as a model step's parameters say (a ranking holds out queries).

    With ``keep`` (a multi-pass fit's passes) the two tables are kept with ``part``
    (``kept_with``, within its budget), so that every pass after the first filters
    nothing; without it a split already kept is used, and none is kept."""
    key = (params.validation_fraction, params.seed, params.validation_start,
           query_column(params))

    def split() -> tuple[pa.Table, pa.Table]:
        return split_rows(part, *key)

    if params.validation_fraction <= 0:
        return split()
    if keep:
        return kept_with(part, "held_out", key, split)
    found = kept(part, "held_out", key)
    return split() if found is None else found


def finite_column(column: pa.ChunkedArray, what: str, hint: str = FEATURE_HINT
                  ) -> np.ndarray:
    """The column as float64 values, a DataError when one is null, NaN or infinite."""
    if column.null_count:
        raise DataError(f"{what} has {column.null_count:,} null values", hint=hint)
    values = column_to_numpy(column)
    if pa.types.is_floating(column.type) and not np.isfinite(values).all():
        bad = len(values) - int(np.isfinite(values).sum())
        raise DataError(f"{what} has {bad:,} NaN or infinite values", hint=hint)
    return values


def require_training_rows(rows: int, heldout: int) -> None:
    """A DataError when nothing is left to train on (after the validation hold-out)."""
    if rows == 0:
        raise DataError(
            "no training rows" + (f" ({heldout} held out for validation)" if heldout else ""),
            hint="check the input and its filter" + (", or lower validation_fraction"
                                                     if heldout else ""))


def require_positive_weight(total: float, weight: str | None) -> None:
    """A DataError when the training rows' weights sum to zero (or to NaN)."""
    if not total > 0:
        raise DataError(f"the weights in column '{weight}' sum to zero",
                        hint="give some training rows a positive weight")


def host_matrix(part: pa.Table, features: list[str],
                extra: list[np.ndarray] | None = None, xp: Any = None,
                role: str = "feature column", hint: str = FEATURE_HINT) -> np.ndarray:
    """Features (checked: no nulls, NaN or inf; an error names the ``role`` and the
    column, with ``hint``) then ``extra`` columns, as one host matrix in ``xp``'s compute
    dtype (float64 without ``xp``), ready to send to it."""
    extra = extra or []
    shape = (part.num_rows, len(features) + len(extra))
    runs = groups(part.schema, features)
    made_dense = [(column, stop - j) for column, j, stop in runs if column is not None]
    if made_dense:
        require_dense_room(shape[0], shape[1], made_dense)
    host = np.empty(shape, np.float64, order="F") if xp is None else host_buffer(shape, xp)
    for column, j, stop in runs:
        if column is not None:  # a sparse column's positions: its rows made dense here
            fill_dense(host[:, j:stop], part.column(column), stop - j, column)
            continue
        name = features[j]
        values = finite_column(part.column(name), f"{role} '{name}'", hint)
        try:
            # finite in float64, past the compute dtype's range (float32: 3.4e38): the
            # cast's own overflow flag says so, no second look at the values
            with np.errstate(over="raise"):
                host[:, j] = values
        except FloatingPointError:
            limit = float(np.finfo(host.dtype).max)
            raise DataError(f"{role} '{name}' has values past {host.dtype}'s range "
                            f"({limit:.3g}), which the step computes in",
                            hint="compute in float64 (dtype: float64), or scale the "
                                 "column first") from None
    for j, values in enumerate(extra, start=len(features)):
        host[:, j] = values
    return host


def require_features(schema: pa.Schema, features: list[str]) -> None:
    """A missing-column error where a table lacks a feature's column (a sparse column's
    for its positions)."""
    require_columns(schema, columns_of(schema, features), "feature column")


def sparse_matrix(part: pa.Table, features: list[str], xp: Any,
                  hint: str = FEATURE_HINT) -> Any:
    """The features as a SciPy CSR matrix where some are a sparse column's and ``xp`` is
    NumPy (and SciPy is there); else None: the caller makes a dense matrix. A plain
    feature's nulls or NaN: a DataError with ``hint``."""
    if is_numpy(xp) and has_sparse(part.schema, features):
        return csr_matrix(part, features, hint=hint)
    return None


def model_matrix(part: pa.Table, features: list[str], xp: Any, sparse: bool,
                 hint: str = FEATURE_HINT) -> Any:
    """``feature_matrix``, or (``sparse``: the caller computes on SciPy matrices) a CSR
    matrix where ``sparse_matrix`` makes one."""
    X = sparse_matrix(part, features, xp, hint) if sparse else None
    return feature_matrix(part, features, xp, hint=hint) if X is None else X


def feature_matrix(part: pa.Table, features: list[str], xp: Any,
                   extra: list[np.ndarray] | None = None, role: str = "feature column",
                   hint: str = FEATURE_HINT) -> Any:
    """``host_matrix`` moved to ``xp`` in one host-to-device copy."""
    return to_xp(host_matrix(part, features, extra, xp, role, hint), xp)


def unit_rows(X: Any, features: list[str], xp: Any, step: str) -> Any:
    """The rows of ``X`` divided by their Euclidean norms: their directions, what cosine
    distances compare (``1 - cos = |a - b|^2 / 2`` of unit rows). A row of all zeros has
    no direction: a DataError naming the columns (MLlib refuses zero vectors too). A
    SciPy CSR matrix's rows are scaled as they are stored (still sparse)."""
    if issparse(X):
        return _unit_sparse_rows(X, features, step)
    with np.errstate(over="ignore", under="ignore"):  # such rows are measured again
        norms = xp.sqrt(xp.sum(X * X, axis=1))
    lost = ~xp.isfinite(norms) | (norms == 0)
    if bool(xp.any(lost)):
        # squares past the float range (1e155 in float64) or below it (1e-162): each
        # such row's norm of the row divided by its largest value, as BLAS's nrm2 does
        # (its direction is the same; a row of zeros stays one)
        largest = xp.max(xp.abs(X), axis=1)
        scale = xp.where(largest > 0, largest, xp.ones_like(largest))
        scaled = X / scale[:, None]
        norms = xp.where(lost, largest * xp.sqrt(xp.sum(scaled * scaled, axis=1)), norms)
    if bool(xp.any(norms == 0)):
        _no_direction(int(np.count_nonzero(to_numpy(norms) == 0)), features, step)
    return X / norms[:, None]


def _unit_sparse_rows(X: Any, features: list[str], step: str) -> Any:
    """``unit_rows`` of a SciPy CSR matrix: each stored value divided by its row's norm
    (of the row divided by its largest value, as BLAS's nrm2 does)."""
    n = X.shape[0]
    rows = rows_of(X.indptr)
    largest = np.zeros(n, X.dtype)
    np.maximum.at(largest, rows, np.abs(X.data))
    scale = np.where(largest > 0, largest, 1.0).astype(X.dtype)
    scaled = X.data / scale[rows]
    norms = largest * np.sqrt(np.bincount(rows, weights=scaled * scaled, minlength=n))
    if (norms == 0).any():
        _no_direction(int(np.count_nonzero(norms == 0)), features, step)
    out = X.copy()
    out.data = (X.data / norms[rows]).astype(X.dtype, copy=False)
    return out


def _no_direction(zeros: int, features: list[str], step: str) -> None:
    named = ", ".join(features) if len(features) <= 12 else (
        ", ".join(features[:12]) + f", ... ({len(features):,} features)")
    raise DataError(f"{step}: {zeros} rows have every feature 0 ({named}): "
                    "a zero vector has no direction, so no cosine distance",
                    hint="filter those rows out before the step (filter: or op: filter), "
                         "or use the Euclidean distance")


def parameters(values: np.ndarray, xp: Any) -> Any:
    """Host parameters (coefficients, layer weights) as an array of ``xp`` in its compute
    dtype: a float64 parameter would promote every product with the data to float64."""
    return xp.asarray(np.asarray(values, dtype=compute_dtype(xp)))


def precision(xp: Any) -> float:
    """The machine epsilon of ``xp``'s compute dtype: how finely a partition's sums can
    tell two points apart (iterative fits loosen their stopping rules to it)."""
    return float(np.finfo(compute_dtype(xp)).eps)


def row_products(a: Any, b: Any, xp: Any) -> Any:
    """``a.T @ b`` (``a @ b`` for a vector ``a``): a sum over the rows, in float64.

    In float64 that is the one matmul. In a narrower compute dtype the matmul still runs
    in it (the speed of float32 is there), over blocks of ``ACCUMULATE_ROWS`` rows whose
    results are added up in float64: the rounding of a sum grows with the block, not
    with the partition.
    """
    if a.dtype == xp.float64 and b.dtype == xp.float64:
        return a @ b if a.ndim == 1 else a.T @ b
    rows = a.shape[0]
    total = xp.zeros(tuple(a.shape[1:]) + tuple(b.shape[1:]), dtype=xp.float64)
    for start in range(0, rows, ACCUMULATE_ROWS):
        stop = min(start + ACCUMULATE_ROWS, rows)
        block_a, block_b = a[start:stop, ...], b[start:stop, ...]
        block = block_a @ block_b if a.ndim == 1 else block_a.T @ block_b
        total = total + xp.astype(block, xp.float64)
    return total


def loss_sums(X: Any, loss: Any, grad: Any, hess: Any | None, xp: Any) -> dict[str, Any]:
    """A partition's sums for a driver-side optimiser of a model linear in the design
    ``X`` before a link: the rows' weighted losses ``loss``, the gradient ``X' grad`` and
    (``hess`` not None) the Hessian ``X' diag(hess) X``, from per-row values already
    multiplied by the rows' weights; on the host, in float64."""
    return {"kind": "evaluate", "loss": float(xp.sum(loss, dtype=xp.float64)),
            "grad": to_numpy(row_products(grad, X, xp)),
            "hess": np.zeros((0, 0)) if hess is None
            else to_numpy(row_products(X, X * hess[:, None], xp))}


def no_loss_sums(size: int, hessian: bool) -> dict[str, Any]:
    """``loss_sums`` of a partition without training rows (``size`` parameters)."""
    return {"kind": "evaluate", "loss": 0.0, "grad": np.zeros(size),
            "hess": np.zeros((size, size) if hessian else (0, 0))}


def penalised(stats: dict[str, Any], total: float, l2: float, mask: np.ndarray,
              x: np.ndarray, hessian: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
    """The objective ``sum of losses / total + l2/2 |mask x|^2`` at ``x``, its gradient and
    (``hessian``) its Hessian from the combined ``loss_sums`` (``mask``: 1 for a
    penalised parameter, 0 for an intercept)."""
    loss = stats["loss"] / total + 0.5 * l2 * float(np.sum(mask * x * x))
    grad = stats["grad"] / total + l2 * mask * x
    hess = stats["hess"] / total + l2 * np.diag(mask) if hessian else None
    return loss, grad, hess


def combine_loss_sums(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partitions' ``loss_sums`` as one."""
    return {"kind": "evaluate", "loss": a["loss"] + b["loss"], "grad": a["grad"] + b["grad"],
            "hess": a["hess"] + b["hess"]}


def probability_array(proba: np.ndarray, listed: bool) -> pa.Array:
    """A model's probability column from its (rows, classes) probabilities: P(classes[1])
    as a double, or (``listed``) a list of every class's, in class order."""
    if not listed:
        return pa.array(np.ascontiguousarray(proba[:, 1]), pa.float64())
    offsets = pa.array(np.arange(0, proba.size + 1, proba.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(proba.reshape(-1)))


def sigmoid(z: Any, xp: Any) -> Any:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(z: Any, xp: Any) -> Any:
    """Row-wise softmax, the row maximum subtracted first so exp cannot overflow."""
    e = xp.exp(z - xp.max(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def in_last_iteration(iterations: int) -> str:
    """Where a change was measured: 'in iteration 12, its last' (one shape for every
    count: a tune says the warnings of candidate fits alike where only figures differ)."""
    return f"in iteration {iterations:,}, its last"


def warn_unconverged(name: str, opt: dict[str, Any], advice: str) -> None:
    """A ConvergenceWarning when the optimiser state ``opt`` stopped unconverged."""
    if not opt["converged"]:
        warnings.warn(
            f"{name} did not converge: {opt['reason']} after "
            f"{counted(opt['iterations'], 'iteration')} (gradient norm {opt['gradient_norm']:.3g}, "
            f"tol {opt['tol']:g} x initial {opt['g0']:.3g}); {advice}", ConvergenceWarning,
            stacklevel=4)


def optimizer_progress(state: dict[str, Any]) -> FitProgress | None:
    """Where a fit's optimiser is (``state["opt"]``, ``operators.models.optimize``):
    'L-BFGS iteration 12 of at most 100' (a line search may take several passes an
    iteration; it stops sooner when it converges, so no ETA); None outside it."""
    opt = state.get("opt")
    if not isinstance(opt, dict) or opt.get("done") or "iterations" not in opt:
        return None
    name = "Newton" if opt.get("method") == "newton" else "L-BFGS"
    return FitProgress(f"{name} iteration {opt['iterations'] + 1} of at most "
                       f"{opt['max_iter']}")


def optimizer_metrics(state: dict[str, Any]) -> dict[str, Any]:
    """The run record of an optimised fit: solver, convergence, loss, row counts."""
    opt = state["opt"]
    out: dict[str, Any] = {
        "solver": state["solver"], "converged": bool(opt["converged"]),
        "iterations": int(opt["iterations"]), "loss": float(opt["f"]),
        "gradient_norm": float(opt["gradient_norm"]),
        "initial_gradient_norm": float(opt["g0"]),
        "training_rows": int(state["rows"]), "validation_rows": int(state["heldout"]),
    }
    if not opt["converged"]:
        out["stop_reason"] = opt["reason"]
    if "validation" in state:
        out["validation"] = state["validation"]
    return out


def comoments(values: Any, weights: Any, xp: Any, block_rows: int | None = None,
              diagonal: bool = False) -> dict[str, Any]:
    """Total weight, weighted mean and centred co-moment matrix (the weighted sum of
    ``outer(x - mean, x - mean)``) of the rows of ``values``, accumulated in float64
    whatever its dtype; ``weights`` None: every row weighs 1. ``combine_comoments``
    adds two up. ``block_rows``: the co-moment summed that many rows at a time, with no
    temporary the size of ``values`` (the same mean; the co-moment to the last bits of
    another order of its sums). ``diagonal``: the co-moment's diagonal only (a vector:
    the weighted sums of squares about the mean; a sparse column's thousands of terms
    have a co-moment matrix of millions of values); a SciPy CSR matrix's (``values``,
    on NumPy) is that diagonal, from its stored values."""
    if issparse(values):
        return _sparse_moments(values, weights)
    k = values.shape[1]
    if weights is None:
        total = float(values.shape[0])
        mean = xp.sum(values, axis=0, dtype=xp.float64) / max(total, 1.0)
    else:
        total = float(xp.sum(weights, dtype=xp.float64))
        mean = row_products(weights, values, xp) / total if total > 0 else None
    if not total > 0:
        return {"weight": 0.0, "mean": np.zeros(k),
                "comoment": np.zeros(k if diagonal else (k, k))}
    rows = values.shape[0]
    step = rows if block_rows is None else block_rows
    mean = _exact_where_constant(values, weights, mean, xp, step)
    # centred on the mean rounded to the data's dtype: in float32 the co-moments move by
    # (mean - rounded)^2 relative terms, below float32's own resolution of the values
    rounded = xp.astype(mean, values.dtype)
    comoment = None
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        centred = values[start:stop, ...] - rounded
        weighted = centred if weights is None else centred * weights[start:stop, None]
        block = (xp.sum(centred * weighted, axis=0, dtype=xp.float64) if diagonal
                 else row_products(centred, weighted, xp))
        comoment = block if comoment is None else comoment + block
    return {"weight": total, "mean": to_numpy(mean), "comoment": to_numpy(comoment)}


def _sparse_moments(X: Any, weights: Any) -> dict[str, Any]:
    """``comoments(diagonal=True)`` of a SciPy CSR matrix: the weighted sums of squares
    about the mean from the stored values, ``sum w ((x - m)^2 - m^2)`` over them plus
    ``W m^2`` (each row's zeros' share), in float64, no cancellation of raw sums."""
    n, k = X.shape
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    total = float(np.sum(w))
    if not total > 0:
        return {"weight": 0.0, "mean": np.zeros(k), "comoment": np.zeros(k)}
    rows, at = rows_of(X.indptr), X.indices
    values = X.data.astype(np.float64, copy=False)
    row_weight = w[rows]
    mean = np.bincount(at, weights=values * row_weight, minlength=k) / total
    m = mean[at]
    comoment = (np.bincount(at, weights=row_weight * ((values - m) ** 2 - m * m),
                            minlength=k) + total * mean * mean)
    return {"weight": total, "mean": mean, "comoment": np.maximum(comoment, 0.0)}


def _exact_where_constant(values: Any, weights: Any, mean: Any, xp: Any, step: int) -> Any:
    """``mean`` with each column that has one value over the rows that weigh set to that
    value exactly: the mean's rounding (3 x 0.1 / 3 is not 0.1) centres such a column off
    itself, and gives it a variance of rounding noise (1e-34 at 0.1, 4e-12 at 1e10),
    which a test of spread then ranks as spread. ``step`` rows at a time."""
    lowest = highest = None
    for start in range(0, values.shape[0], step):
        block = values[start:start + step, ...]
        low = high = block
        if weights is not None:
            weighs = weights[start:start + step, None] > 0
            low = xp.where(weighs, block, xp.asarray(math.inf, dtype=block.dtype))
            high = xp.where(weighs, block, xp.asarray(-math.inf, dtype=block.dtype))
        low, high = xp.min(low, axis=0), xp.max(high, axis=0)
        lowest = low if lowest is None else xp.minimum(lowest, low)
        highest = high if highest is None else xp.maximum(highest, high)
    return xp.where(lowest == highest, xp.astype(lowest, mean.dtype), mean)


def combine_means(wa: np.ndarray, ma: np.ndarray, wb: np.ndarray, mb: np.ndarray
                  ) -> np.ndarray:
    """The mean of two weighted means, symmetric in a and b (commutative bit for bit),
    and exactly the one that has weight where the other has none, or where both are
    equal (a constant column stays its value: 0.1 and 0.1 of weights 1 and 2 are 0.1,
    not the 0.10000000000000002 of (0.1 + 2 x 0.1) / 3)."""
    total = wa + wb
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = (wa * ma + wb * mb) / total
    return np.where(wa > 0, np.where((wb > 0) & (ma != mb), mixed, ma), mb)


def combine_comoments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``comoments`` as one by Chan's pairwise update (stable where raw sums of
    squares would cancel): ``C = Ca + Cb + d d' wa wb / w``, ``d`` the mean's change."""
    if not a["weight"] > 0 or not b["weight"] > 0:
        kept = b if not a["weight"] > 0 else a
        return {"weight": kept["weight"], "mean": kept["mean"], "comoment": kept["comoment"]}
    wa, wb = a["weight"], b["weight"]
    total = wa + wb
    delta = b["mean"] - a["mean"]
    mean = combine_means(wa, a["mean"], wb, b["mean"])
    spread = np.outer(delta, delta) if a["comoment"].ndim == 2 else delta * delta
    comoment = a["comoment"] + b["comoment"] + spread * (wa * wb / total)
    return {"weight": total, "mean": mean, "comoment": comoment}


def row_weights(part: pa.Table, weight: str | None) -> np.ndarray:
    """The weight column as float64 (ones without one); nulls, NaN or negatives are errors."""
    if weight is None:
        return np.ones(part.num_rows)
    column = part.column(weight)
    what = f"weight column '{weight}'"
    hint = "weights must be finite and >= 0; filter or impute those rows"
    if column.null_count:
        raise DataError(f"{what} has {column.null_count} null values", hint=hint)
    values = column_to_numpy(column)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise DataError(f"{what} has {int(bad.sum())} negative, NaN or infinite values "
                        f"(first: {values[bad][0]})", hint=hint)
    return values


def label_column(part: pa.Table, label: str) -> pa.Array:
    """The label column as one array (dictionary decoded); nulls are a DataError."""
    column = part.column(label)
    if column.null_count:
        raise DataError(
            f"label column '{label}' has {column.null_count} null values",
            hint=f"filter them out (read_parquet filter: \"{quote_name(label)} is not null\") "
                 "or impute them")
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_floating(array.type):
        bad = len(array) - (pc.sum(pc.is_finite(array)).as_py() or 0)
        if bad:
            raise DataError(f"label column '{label}' has {bad} NaN or infinite values",
                            hint=f"filter them out (read_parquet filter: "
                                 f"\"abs({quote_name(label)}) < 1e308\", which keeps the "
                                 "finite labels: NaN is not null) or impute them")
    return array


def class_weights(labels: pa.Array, weights: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """The classes present (sorted) and the total weight of each."""
    if len(labels) == 0:
        return [], np.zeros(0)
    unique = pc.unique(labels)
    index = pc.index_in(labels, value_set=unique).to_numpy(zero_copy_only=False)
    totals = np.bincount(index, weights=weights, minlength=len(unique))
    values = unique.to_pylist()
    order = sorted(range(len(values)), key=lambda i: values[i])
    return [values[i] for i in order], totals[order]


def merge_class_weights(a: tuple[list[Any], np.ndarray],
                        b: tuple[list[Any], np.ndarray]) -> tuple[list[Any], np.ndarray]:
    """The union of two ``class_weights`` results (sorted, weights added)."""
    totals: dict[Any, float] = dict(zip(a[0], a[1].tolist()))
    for value, weight in zip(b[0], b[1].tolist()):
        totals[value] = totals.get(value, 0.0) + weight
    classes = sorted(totals)
    return classes, np.array([totals[c] for c in classes], dtype=np.float64)


def class_sums(part: pa.Table, features: list[str], labels: pa.Array,
               label_type: pa.DataType, weights: np.ndarray, xp: Any, moments: bool,
               prepare: Any = None, sparse: bool = False) -> dict[str, Any]:
    """A partition's statistics of ``features`` per class of ``labels``: the classes
    present (sorted), their total ``weights``, and each class's weighted feature
    ``sums``, or with ``moments`` its weighted ``means`` and the weighted ``squares`` of
    the deviations from them (no cancellation far from the origin). One copy of the rows
    to ``xp``; ``prepare`` (the feature matrix -> the matrix summed) checks or maps it
    first. ``sparse`` (sums only): where some features are a sparse column's and ``xp``
    is NumPy, the sums of its CSR matrix (``prepare`` then takes one).
    ``combine_class_sums`` adds two up."""
    classes, totals = class_weights(labels, weights)
    d = len(features)
    out: dict[str, Any] = {"classes": classes, "weights": totals}
    if not classes:
        empty = np.zeros((0, d))
        return {**out, **({"means": empty, "squares": empty} if moments else {"sums": empty})}
    index = encode_classes(labels, classes, label_type)
    X = sparse_matrix(part, features, xp) if sparse and not moments else None
    if X is not None:
        X = X if prepare is None else prepare(X)
        by_class = np.zeros((len(index), len(classes)))
        valid = index >= 0
        by_class[np.flatnonzero(valid), index[valid]] = weights[valid]
        return {**out, "sums": np.asarray((X.T @ by_class).T)}
    data = feature_matrix(part, features, xp, [index, weights])
    X, w = data[:, :d], data[:, d + 1]
    if prepare is not None:
        X = prepare(X)
    onehot = xp.astype(xp.astype(data[:, d], xp.int64)[:, None]
                       == xp.arange(len(classes), dtype=xp.int64)[None, :], data.dtype)
    by_class = onehot * w[:, None]
    sums = to_numpy(row_products(by_class, X, xp))
    if not moments:
        return {**out, "sums": sums}
    # each class's mean about one of its rows that weighs: a feature constant in a
    # class has that value for mean exactly, and deviations of 0 (its sums' rounding
    # made a spread of noise, which a test of spread ranks as spread)
    shift = xp.take(X, xp.asarray(_first_weighing_rows(index, weights, len(classes))),
                    axis=0)
    shifted = to_numpy(row_products(by_class, X - onehot @ shift, xp))
    means = to_numpy(shift) + shifted / np.where(totals > 0, totals, 1.0)[:, None]
    deviations = X - onehot @ parameters(means, xp)
    return {**out, "means": means,
            "squares": to_numpy(row_products(by_class, deviations * deviations, xp))}


def _first_weighing_rows(index: np.ndarray, weights: np.ndarray, classes: int
                         ) -> np.ndarray:
    """Each class position's first row of positive weight (row 0 for a class without
    one: its rows add nothing)."""
    rows = np.flatnonzero((weights > 0) & (index >= 0))
    found, first = np.unique(index[rows], return_index=True)
    out = np.zeros(classes, dtype=np.int64)
    out[found] = rows[first]
    return out


def _on_classes(stats: dict[str, Any], classes: list[Any]) -> dict[str, np.ndarray]:
    """``class_sums``' arrays laid out on ``classes`` (zeros for a class it has no rows
    of)."""
    at = [classes.index(c) for c in stats["classes"]]
    out = {}
    for key in ("weights", "sums", "means", "squares"):
        if key in stats:
            value = stats[key]
            laid = np.zeros((len(classes), *value.shape[1:]))
            laid[at] = value
            out[key] = laid
    return out


def combine_class_sums(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``class_sums`` as one: the classes' union, weights and sums added, means and
    squares by Chan's update (symmetric in a and b: commutative bit for bit)."""
    classes = sorted(set(a["classes"]) | set(b["classes"]))
    x, y = _on_classes(a, classes), _on_classes(b, classes)
    wa, wb = x["weights"], y["weights"]
    total = wa + wb
    out: dict[str, Any] = {"classes": classes, "weights": total}
    if "sums" in x:
        return {**out, "sums": x["sums"] + y["sums"]}
    safe = np.where(total > 0, total, 1.0)[:, None]
    delta = y["means"] - x["means"]
    return {**out, "means": combine_means(wa[:, None], x["means"], wb[:, None], y["means"]),
            "squares": x["squares"] + y["squares"] + delta * delta * (wa * wb)[:, None] / safe}


def class_overall(stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The weighted mean and population variance of each feature over all the rows of
    ``class_sums``' statistics (the variance from means and squares: within plus between;
    None from sums alone)."""
    totals = stats["weights"]
    total = float(totals.sum())
    if "sums" in stats:
        return stats["sums"].sum(axis=0) / total, None
    means, squares = stats["means"], stats["squares"]
    # about a class's mean: where every class has the same, the overall mean is it exactly
    reference = means[int(np.argmax(totals > 0))]
    overall = reference + totals @ (means - reference) / total
    return overall, (squares.sum(axis=0) + totals @ ((means - overall) ** 2)) / total


def encode_classes(labels: pa.Array, classes: list[Any], label_type: pa.DataType) -> np.ndarray:
    """Each label's position in ``classes`` (int64), -1 for a label not among them."""
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    index = pc.index_in(labels, value_set=pa.array(classes, type=label_type))
    return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


# --------------------------------------------------------------------------- outputs


def _put_field(schema: pa.Schema, field: pa.Field) -> pa.Schema:
    """Replace the field of that name in place, or append it at the end."""
    index = schema.get_field_index(field.name)
    return schema.set(index, field) if index >= 0 else schema.append(field)


def put_column(table: pa.Table, field: pa.Field, column: pa.Array) -> pa.Table:
    """Replace the column of that name in place, or append it at the end."""
    index = table.schema.get_field_index(field.name)
    if index >= 0:
        return table.set_column(index, field, column)
    return table.append_column(field, column)


def prediction_fields(classes: list[Any] | None,
                      label_type: pa.DataType | None) -> list[pa.Field]:
    """``prediction`` (class label or float64) and, for classifiers, ``probability``."""
    if classes is None:
        return [pa.field(PREDICTION, pa.float64())]
    probability = pa.float64() if len(classes) == 2 else pa.list_(pa.float64())
    return [pa.field(PREDICTION, label_type), pa.field(PROBABILITY, probability)]


def with_predictions(schema: pa.Schema, classes: list[Any] | None,
                     label_type: pa.DataType | None) -> pa.Schema:
    for field in prediction_fields(classes, label_type):
        schema = _put_field(schema, field)
    return schema


class FittedModel(Transform):
    """A fitted model: reads its feature columns, adds ``prediction`` (and ``probability``).

    Subclasses implement ``predict_matrix`` on the namespace ``xp`` and the artifact
    arrays (``arrays`` / ``from_state``); this class does the columns, the schema and the
    class labels. Input columns pass through; scoring data needs only the features.
    """

    # False: a model of no label (kmeans' clusters), whose predictions there is nothing
    # to compare with (promote refuses it)
    supervised: ClassVar[bool] = True

    def __init__(self, features: list[str], classes: list[Any] | None = None,
                 label_type: pa.DataType | None = None):
        super().__init__({})
        self.features = list(features)
        self.classes = None if classes is None else list(classes)
        self.label_type = label_type

    def __repr__(self) -> str:
        what = "regressor" if self.classes is None else f"classes={self.classes!r}"
        return f"{type(self).__name__}(features={self.features!r}, {what})"

    @property
    def is_classifier(self) -> bool:
        return self.classes is not None

    @abstractmethod
    def predict_matrix(self, X: Any, xp: Any) -> Any:
        """Regressor: the (n,) predictions; classifier: (n, K) class probabilities."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The model's numeric state, saved in arrays.npz."""

    # whether predict_matrix takes a SciPy CSR matrix (a sparse column's rows as they
    # are: operators.sparse) where the namespace is NumPy
    takes_sparse: bool = False

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return columns_of(schema, self.features)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_features(schema, self.features, fitted=True)
        return with_predictions(schema, self.classes, self.label_type)

    def outputs(self, part: pa.Table, xp: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, probabilities) on the host: class positions for a classifier."""
        require_features(part.schema, self.features)
        X = model_matrix(part, self.features, xp, self.takes_sparse, hint=SCORING_HINT)
        return self.outputs_of(self.predict_matrix(X, xp))

    def outputs_of(self, scores: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``outputs`` of ``predict_matrix``'s scores."""
        # computed in the compute dtype; the output columns are float64 whatever it is
        scores = to_numpy(scores).astype(np.float64, copy=False)
        if not self.is_classifier:
            return scores, None
        # the most probable class from the probabilities that come back anyway: one
        # transfer from the device per partition, not two
        return np.argmax(scores, axis=1), scores

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return self.with_outputs(part, *self.outputs(part, xp))

    def with_outputs(self, part: pa.Table, predicted: np.ndarray,
                     proba: np.ndarray | None) -> pa.Table:
        """``part`` with the prediction columns of ``outputs``' arrays."""
        fields = prediction_fields(self.classes, self.label_type)
        if proba is None:
            return put_column(part, fields[0], pa.array(predicted, pa.float64()))
        labels = pa.array(self.classes, type=self.label_type).take(pa.array(predicted))
        out = put_column(part, fields[0], labels)
        return put_column(out, fields[1], probability_array(proba, len(self.classes) != 2))

    # --------------------------------------------------------------- contributions

    def explains(self) -> str | None:
        """None when ``contributions`` explains this model's scores, else why not."""
        return f"{self.name.removesuffix('.fitted')}, which has no per-feature contributions"

    @property
    def explains_classes(self) -> bool:
        """Whether contributions are per class (multiclass) rather than one number."""
        return self.is_classifier and len(self.classes) > 2

    def contribution_fields(self, groups: dict[str, str] | None = None) -> list[pa.Field]:
        """``contributions`` (a struct, a field per feature, or per group of features
        where ``groups`` maps each feature to one) and ``contribution_base``: float64
        each, or a list of float64 per class (multiclass)."""
        value = pa.list_(pa.float64()) if self.explains_classes else pa.float64()
        names = self.features if groups is None else list(dict.fromkeys(groups.values()))
        return [pa.field(CONTRIBUTIONS, pa.struct([pa.field(f, value) for f in names])),
                pa.field(CONTRIBUTION_BASE, value)]

    def contributions(self, part: pa.Table, xp: Any
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """``outputs`` with each row's per-feature contributions to its raw score, (rows,
        features, k) on the host, and the expected raw score (k,); from one copy of the
        rows to the device. A model without them says why (``explains``)."""
        raise SchemaError(f"model ends in {self.explains()}")

    def explain(self, part: pa.Table, xp: Any, groups: dict[str, str] | None = None
                ) -> pa.Table:
        """``transform`` plus the ``contributions`` and ``contribution_base`` columns;
        with ``groups`` (feature -> name) the features of a group add up to one field."""
        require_features(part.schema, self.features)
        predicted, proba, phi, base = self.contributions(part, xp)
        out = self.with_outputs(part, predicted, proba)
        n, fields = part.num_rows, self.contribution_fields(groups)
        if groups is not None:
            names = [f.name for f in fields[0].type]
            at = {name: i for i, name in enumerate(names)}
            summed = np.zeros((n, len(names), phi.shape[2]))
            for j, feature in enumerate(self.features):
                summed[:, at[groups[feature]], :] += phi[:, j, :]
            phi = summed
        if self.explains_classes:
            k = phi.shape[2]
            offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
            per_feature = [pa.ListArray.from_arrays(offsets, pa.array(phi[:, j, :].reshape(-1)))
                           for j in range(phi.shape[1])]
            base_column = pa.ListArray.from_arrays(offsets, pa.array(np.tile(base, n)))
        else:
            per_feature = [pa.array(np.ascontiguousarray(phi[:, j, 0]), pa.float64())
                           for j in range(phi.shape[1])]
            base_column = pa.array(np.full(n, base[0]), pa.float64())
        struct = pa.StructArray.from_arrays(per_feature, fields=list(fields[0].type))
        return put_column(put_column(out, fields[0], struct), fields[1], base_column)

    def meta(self) -> dict[str, Any]:
        return {"features": self.features, "classes": self.classes,
                "label_type": None if self.label_type is None else str(self.label_type)}

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.meta(), self.arrays()

    @staticmethod
    def meta_args(meta: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments of ``FittedModel`` stored by ``meta()``."""
        label_type = meta.get("label_type")
        return {"features": list(meta["features"]), "classes": meta.get("classes"),
                "label_type": None if label_type is None else pa.type_for_alias(label_type)}


def weighted_sums(table: pa.Table, columns: list[str], weights: np.ndarray) -> np.ndarray:
    """Each column's sum of ``weights`` x value, in float64 (the training means of a
    linear model's contributions); a sparse column's positions' sums too."""
    out = np.zeros(len(columns))
    for column, start, stop in groups(table.schema, columns):
        if column is None:
            out[start] = float(column_to_numpy(table.column(columns[start])) @ weights)
            continue
        indptr, at, values = csr_parts(table.column(column), stop - start, column)
        out[start:stop] = np.bincount(at, weights=values * weights[rows_of(indptr)],
                                      minlength=stop - start)
    return out


def with_ones(X: Any) -> Any:
    """A SciPy CSR design matrix with a column of ones after its features (the
    intercept's)."""
    sp = scipy_sparse()
    return sp.hstack([X, np.ones((X.shape[0], 1))], format="csr")


class LinearContributions:
    """Contributions of a model linear in its features before a link (linear and
    logistic regression): ``coef_j * (x_j - mean_j)`` per output, the training rows'
    (weighted) mean ``means`` the reference, and ``coef @ means + intercept`` the base:
    the exact Shapley values of the raw score for independent features (SHAP's
    LinearExplainer). Models saved before the means were kept have none."""

    means: np.ndarray | None
    coef: np.ndarray
    intercept: Any

    def _keep_means(self, means: np.ndarray | None) -> None:
        self.means = None if means is None else np.asarray(means, dtype=np.float64)

    def _means_array(self) -> dict[str, np.ndarray]:
        """The means for arrays.npz, where the model has them."""
        return {} if self.means is None else {"means": self.means}

    def explains(self) -> str | None:
        if self.means is None:
            return (f"{self.name.removesuffix('.fitted')} saved without its training means "
                    "(by an older sluice): train it again to explain its scores")
        return None

    def contributions(self, part: pa.Table, xp: Any
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        assert self.means is not None
        coef = np.atleast_2d(self.coef)  # (outputs, features)
        made = [(column, stop - start) for column, start, stop
                in groups(part.schema, self.features) if column is not None]
        if made:  # each row's contributions, (rows, features, outputs), are dense
            require_dense_room(part.num_rows, coef.size, made)
        X = feature_matrix(part, self.features, xp)
        predicted, proba = self.outputs_of(self.predict_matrix(X, xp))
        centred = X - to_xp(self.means.astype(compute_dtype(xp)), xp)
        phi = centred[:, :, None] * to_xp(coef.T[None, :, :].astype(compute_dtype(xp)), xp)
        base = coef @ self.means + np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        return predicted, proba, to_numpy(phi).astype(np.float64, copy=False), base


# --------------------------------------------------------------------------- validation


def metric_accumulator(model: FittedModel) -> MetricAccumulator:
    if model.is_classifier:  # and the Brier score: how true the probabilities are
        return MetricAccumulator("classification",
                                 [*DEFAULT_METRICS["classification"], "brier"],
                                 classes=model.classes)
    quantile = getattr(model, "quantile", None)
    if quantile is not None:  # a quantile model: the loss it minimises, how much it covers
        return MetricAccumulator("regression", [*DEFAULT_METRICS["regression"],
                                                "pinball_loss", "coverage"],
                                 quantile=quantile)
    deviance = getattr(model, "deviance", None)
    if deviance is not None:  # a log link's: the deviance it minimises
        return MetricAccumulator("regression", [*DEFAULT_METRICS["regression"],
                                                deviance["metric"]],
                                 tweedie_power=deviance.get("tweedie_power", 1.5))
    return MetricAccumulator("regression")


def validation_partial(model: FittedModel, part: pa.Table, params: SupervisedParams,
                       xp: Any) -> dict[str, Any]:
    """Metric statistics of ``model`` on the partition's held-out rows.

    Held-out rows whose class the training rows never had are counted, not scored.
    """
    accumulator = metric_accumulator(model)
    _, held = held_out(part, params)
    weights = row_weights(held, params.weight)
    labels = label_column(held, params.label)
    unseen = 0
    if model.is_classifier:
        truth = encode_classes(labels, model.classes, model.label_type)
        known = truth >= 0
        unseen = int((~known).sum())
        if unseen:
            held, truth, weights = held.filter(pa.array(known)), truth[known], weights[known]
    if held.num_rows == 0:
        return {"metrics": accumulator.empty(), "unseen": unseen}
    predicted, proba = model.outputs(held, xp)
    if model.is_classifier:
        names = np.asarray(model.classes)
        stats = accumulator.partial(names[truth], names[predicted], proba, weights)
    else:
        stats = accumulator.partial(column_to_numpy(labels), predicted, None, weights)
    return {"metrics": stats, "unseen": unseen}


def validation_combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Combine two ``validation_partial`` results."""
    accumulator = MetricAccumulator(a["metrics"]["task"])
    return {"metrics": accumulator.combine(a["metrics"], b["metrics"]),
            "unseen": a["unseen"] + b["unseen"]}


def validation_finalize(model: FittedModel, stats: dict[str, Any]) -> dict[str, Any]:
    """The validation metrics; ``{"count": 0}`` when no row was held out."""
    out: dict[str, Any] = {"count": 0}
    if stats["metrics"]["rows"] > 0:
        out = metric_accumulator(model).finalize(stats["metrics"])
    if stats["unseen"]:
        out["unseen_class_rows"] = stats["unseen"]
    return out


def probability_matrix(part: pa.Table, column: str, outputs: int | None = None,
                       hint: str = "is it a probability (not a logit or score)?"
                       ) -> np.ndarray:
    """A model's probability column as (rows, outputs) float64: one column for a double,
    one per class for a list (every list as long; ``outputs`` of them when given). A
    null, NaN or a value outside [0, 1] is a DataError (``hint``: what to check)."""
    values = part.column(column).combine_chunks()
    if values.null_count:
        raise DataError(f"probability column '{column}' has {values.null_count} null values",
                        hint=hint)
    if pa.types.is_floating(values.type):
        matrix = column_to_numpy(values)[:, None]
    else:
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        k = outputs if outputs is not None else (int(lengths[0]) if len(lengths) else 0)
        if len(lengths) and (lengths != k).any():
            bad = int(lengths[lengths != k][0])
            raise DataError(f"probability column '{column}' has lists of {bad} and of {k} "
                            "values", hint="a model writes one value per class, in every row")
        flat = pc.list_flatten(values)
        if flat.null_count:
            raise DataError(f"probability column '{column}' has {flat.null_count} null "
                            "values in its lists", hint=hint)
        matrix = column_to_numpy(flat).reshape(len(values), k)
    bad = ~((matrix >= 0) & (matrix <= 1))  # NaN too
    if bad.any():
        raise DataError(f"probability column '{column}' has {int(bad.sum())} values that are "
                        f"NaN or outside [0, 1] (first: {matrix[bad][0]})", hint=hint)
    return matrix + 0.0  # -0.0 as 0.0: one value
