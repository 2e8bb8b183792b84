"""target_encode: each category becomes the label's mean over its rows, shrunk toward the
label's overall mean; the training rows get it cross-fitted (from the other folds' rows).

One pass collects, per column, category and fold (a hash of the row's values but the
label's, and the seed), the rows, the label's sum and its sum of squared deviations (for
classes: the rows of each class), combined exactly across partitions (Chan's parallel
formula for the deviations). The driver turns them into encodings as scikit-learn's
``TargetEncoder`` does: ``smooth: auto`` is its empirical Bayes shrinkage (Micci-Barreca's
equations 5 and 6), a number ``m`` gives ``(sum + m * mean) / (rows + m)``.

Encoding a category by the label of its own rows leaks the label into the feature: a
model after it learns to trust rare categories too much. So, as ``fit_transform`` of
scikit-learn's encoder, the rows the step is fitted on get, in the training run, the
encodings fitted on the other ``folds - 1`` folds of the rows (cross fitting); a saved
model, scoring new rows, encodes with all of them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, NonNegativeFloat, field_validator

from operators.base import (
    DataError,
    Estimator,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    register_fitted,
    require_columns,
)
from operators.features.columns import replace_columns, replace_field, unique_names
from operators.features.one_hot import (
    ARROW_KIND,
    category_values,
    check_column,
    encoded_schema,
    label,
)
from operators.hashing import content_hash, unit_interval
from operators.models.common import is_classification, label_column

FOLD_SALT = 0x7A26E7C0DE
"""Mixed into the seed of the rows' folds, so that they are not the rows a model step's
``validation_fraction`` holds out with the same seed."""


class TargetEncodeParams(Params):
    columns: list[str] = Field(min_length=1, description="string, integer, boolean or "
                                                         "dictionary columns to encode")
    label: str = Field(description="the column whose mean each category becomes")
    task: Literal["classification", "regression"] | None = Field(
        None, description="classification (a column per class for more than two classes: "
                          "the share of the class's rows) or regression (the label's mean); "
                          "default: classification for an integer, boolean or string label")
    smooth: Literal["auto"] | NonNegativeFloat = Field(
        "auto", description="shrinkage toward the label's mean: auto (scikit-learn's empirical "
                            "Bayes estimate, per category) or m, as if each category had m "
                            "more rows at the label's mean")
    folds: int = Field(5, ge=0, description="cross fitting: the training rows' encodings come "
                                            "from the other folds' rows (scikit-learn's cv); "
                                            "0: from all rows (MLlib's TargetEncoder)")
    seed: int = Field(0, description="seed of the folds (with each row's values but the "
                                     "label's)")

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("one fold leaves no other rows to encode it with: "
                             "use 2 or more, or 0 for none")
        return value


@register("target_encode")
class TargetEncode(Estimator):
    """Each category replaced by the label's mean over its rows, shrunk toward its mean.

    For classes: the share of the positive class (a column `<col>_<class>` per class for
    more than two); unseen categories (and nulls, when the fit saw none) get the label's
    mean.

    The rows the step is fitted on are encoded cross-fitted (each from the encodings of
    the other folds' rows, as scikit-learn's `fit_transform`), so that a model trained
    after it does not learn the label from its own rows; a saved model encodes with
    every row's. Nulls are a category of their own. A row's fold is a hash of its other
    columns (not the label), so rows alike in all of them share one: keep a column that
    tells rows apart (an id) in the input, or a table of the encoded columns and the
    label alone puts each category's rows in one fold, encoded with the other folds' mean.

    ```yaml
    - op: target_encode
      columns: [zip_code, merchant]
      label: churned
      smooth: auto                # or m: as if m more rows at the label's mean
      folds: 5                    # cross fitting of the training rows; 0: none
    ```
    """

    numeric_kernels = False
    Params = TargetEncodeParams
    schema_from_fit = True  # more than two classes: a column per class

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        unique_names(self.params.columns, "columns")
        if self.params.label in self.params.columns:
            raise ParamError(f"the label '{self.params.label}' is also in columns",
                             hint="a column cannot be encoded by its own values")
        self._fitted: TargetEncodeFitted | None = None

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [*self.params.columns, self.params.label]

    def _classify(self, schema: pa.Schema) -> bool:
        t = schema.field(self.params.label).type
        classify = is_classification(t, self.params.task)
        if not classify and not (pa.types.is_integer(t) or pa.types.is_floating(t)
                                 or pa.types.is_boolean(t)):
            raise SchemaError(f"label '{self.params.label}' is {t}: a regression's label is a "
                              "number", hint="leave task out, or cast the label to a number")
        return classify

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if self._fitted is not None:
            return self._fitted.output_schema(schema)
        require_columns(schema, self.input_columns(schema))
        self._classify(schema)
        for name in self.params.columns:
            check_column(schema, name, "target_encode")
            # two classes or a regression: the column in place (more classes: a column
            # per class, known after the fit)
            schema = replace_field(schema, name, [pa.field(name, pa.float64())])
        return schema

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return {"kinds": {c: check_column(schema, c, "target_encode")
                          for c in self.params.columns},
                "classify": self._classify(schema)}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        fold = row_folds(part, self.params)
        labels = label_column(part, self.params.label)
        classify = state["classify"]
        if not classify:
            labels = pc.cast(labels, pa.float64())
        stats = {}
        for name in self.params.columns:
            values = category_values(part.column(name), state["kinds"][name])
            rows = pa.table({"value": values, "fold": pa.array(fold), "y": labels})
            if classify:
                counted = rows.group_by(["value", "fold", "y"]).aggregate([("y", "count")])
                stats[name] = counted.rename_columns(["value", "fold", "label", "n"])
            else:
                grouped = rows.group_by(["value", "fold"]).aggregate(
                    [("y", "count"), ("y", "sum"),
                     ("y", "variance", pc.VarianceOptions(ddof=0))])
                n = grouped.column("y_count")
                m2 = pc.multiply(grouped.column("y_variance"), pc.cast(n, pa.float64()))
                stats[name] = pa.table({"value": grouped.column("value"),
                                        "fold": grouped.column("fold"), "n": n,
                                        "sum": grouped.column("y_sum"), "m2": m2})
        return stats

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {name: _regroup(pa.concat_tables([a[name], b[name]]))
                for name in self.params.columns}

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        folds = max(self.params.folds, 1)
        first = stats[self.params.columns[0]]
        if pc.sum(first.column("n")).as_py() in (None, 0):
            raise DataError("no rows to fit target_encode on",
                            hint="check the filters before this step")
        classes = None
        if state["classify"]:
            classes = pc.unique(first.column("label")).sort().to_pylist()
            if len(classes) < 2:
                raise DataError(f"label '{self.params.label}' has one class "
                                f"({classes[0]!r}): its share is 1 in every category",
                                hint="encode with a label of two or more classes, or "
                                     "task: regression for a number")
        columns = {}
        for name in self.params.columns:
            table = stats[name]
            categories = pc.unique(table.column("value")).sort(null_placement="at_end")
            n, total, m2 = _dense(table, categories, folds, classes)
            columns[name] = {"categories": categories, "n": n, "sum": total, "m2": m2}
        return {**state, "classes": classes, "columns": columns}, True

    def fitted(self, state: dict[str, Any]) -> TargetEncodeFitted:
        smooth, folds = self.params.smooth, self.params.folds
        columns = state["columns"]
        # the label's mean and variance: any column's rows are all the rows
        first = columns[self.params.columns[0]]
        mean, variance = _moments(*_merge(*_merge(first["n"], first["sum"], first["m2"])))
        encoded = {name: (c["categories"], encodings(*_merge(c["n"], c["sum"], c["m2"]),
                                                     mean, variance, smooth))
                   for name, c in columns.items()}
        fit = TargetEncodeFitted(self.params, state["kinds"], state["classes"], mean, encoded)
        if folds:
            # each fold's rows encoded as if the encoder were fitted on the others only
            # (none: the label's mean, all there is to encode them with)
            moments = [_moments(*_merge(*_merge(*_others(first, f))))
                       if np.delete(first["n"], f, axis=-1).any() else (mean, variance)
                       for f in range(folds)]
            training = {name: np.stack([encodings(*_merge(*_others(c, f)), *moments[f], smooth)
                                        for f in range(folds)])
                        for name, c in columns.items()}
            fit.cross_fitted = (training, np.stack([m for m, _ in moments]))
        self._fitted = fit
        return fit

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"categories": {name: len(c["categories"])
                                              for name, c in state["columns"].items()},
                               "folds": self.params.folds}
        if state["classes"] is not None:
            out["classes"] = state["classes"]
        return out


def row_folds(part: pa.Table, params: TargetEncodeParams) -> np.ndarray:
    """Each row's fold (0 .. folds - 1; all 0 without cross fitting): a hash of its
    values but the label's and the seed, so that every engine and partitioning folds the
    same rows. Not the label's: rows alike in every other column would then be folded by
    their class, and each encoded from the other classes' rows only (the encodings
    against the label)."""
    folds = max(params.folds, 1)
    if folds == 1 or part.num_rows == 0:
        return np.zeros(part.num_rows, dtype=np.int64)
    others = [name for name in part.column_names if name != params.label]
    position = unit_interval(content_hash(part.select(others), params.seed ^ FOLD_SALT))
    return np.minimum((position * folds).astype(np.int64), folds - 1)


def _regroup(table: pa.Table) -> pa.Table:
    """Rows of equal keys (value, fold and label, when there is one) as one: rows add;
    the sums add and the squared deviations by Chan's formula (within plus between)."""
    keys = [k for k in ("value", "fold", "label") if k in table.column_names]
    gid = np.zeros(table.num_rows, dtype=np.int64)
    for key in keys:
        encoded = table.column(key).combine_chunks().dictionary_encode(null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        gid = gid * len(encoded.dictionary) + codes
    _, first, inverse = np.unique(gid, return_index=True, return_inverse=True)
    out = table.select(keys).take(pa.array(first))
    n_rows = np.asarray(table.column("n"), dtype=np.int64)
    n = np.bincount(inverse, weights=n_rows).astype(np.int64)
    columns = {**{k: out.column(k) for k in keys}, "n": pa.array(n)}
    if "sum" in table.column_names:
        sums = np.asarray(table.column("sum"), dtype=np.float64)
        total = np.bincount(inverse, weights=sums)
        between = sums / np.maximum(n_rows, 1) - (total / np.maximum(n, 1))[inverse]
        m2 = np.bincount(inverse, weights=np.asarray(table.column("m2"), dtype=np.float64)
                         + n_rows * between * between)
        columns.update(sum=pa.array(total), m2=pa.array(m2))
    return pa.table(columns)


def _dense(table: pa.Table, categories: pa.Array, folds: int, classes: list[Any] | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per category (``categories``' order) and fold: the rows ``(c, F)``, and per
    output (the label, the positive class, or every class) the label's sum and squared
    deviations ``(c, F, K)``. A class's are its rows and ``rows * p * (1 - p)``."""
    c = len(categories)
    at = pc.index_in(table.column("value"), value_set=categories, skip_nulls=False)
    at = np.asarray(at.to_numpy(zero_copy_only=False), dtype=np.int64)
    fold = np.asarray(table.column("fold"), dtype=np.int64)
    rows = np.asarray(table.column("n"), dtype=np.float64)
    cell = at * folds + fold
    n = np.bincount(cell, weights=rows, minlength=c * folds).reshape(c, folds)
    if classes is None:
        total = np.bincount(cell, weights=np.asarray(table.column("sum"), dtype=np.float64),
                            minlength=c * folds).reshape(c, folds, 1)
        m2 = np.bincount(cell, weights=np.asarray(table.column("m2"), dtype=np.float64),
                         minlength=c * folds).reshape(c, folds, 1)
        return n, total, m2
    outputs = classes[1:] if len(classes) == 2 else classes
    labels = table.column("label")
    total = np.zeros((c, folds, len(outputs)))
    for k, value in enumerate(outputs):
        mine = np.asarray(pc.equal(labels, pa.scalar(value, labels.type)).to_numpy(
            zero_copy_only=False), dtype=bool)
        total[:, :, k] = np.bincount(cell[mine], weights=rows[mine],
                                     minlength=c * folds).reshape(c, folds)
    share = total / np.maximum(n, 1)[..., None]
    return n, total, total * (1 - share)


def _merge(n: np.ndarray, total: np.ndarray, m2: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``(..., A)``, sums and squared deviations ``(..., A, K)`` of groups merged
    over their axis ``A`` (folds, then categories): the deviations within plus those
    of the groups' means from the merged mean."""
    rows = n.sum(axis=-1)
    sums = total.sum(axis=-2)
    mean = sums / np.maximum(rows, 1)[..., None]
    own = total / np.maximum(n, 1)[..., None]
    between = (n[..., None] * (own - mean[..., None, :]) ** 2).sum(axis=-2)
    return rows, sums, m2.sum(axis=-2) + between


def _others(column: dict[str, Any], fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A column's statistics without the rows of ``fold`` (its rows: zero)."""
    keep = np.ones(column["n"].shape[-1], dtype=bool)
    keep[fold] = False
    return column["n"][..., keep], column["sum"][..., keep, :], column["m2"][..., keep, :]


def _moments(rows: np.ndarray, total: np.ndarray, m2: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """The label's mean and variance (ddof 0, scikit-learn's ``np.var``) per output."""
    return total / max(float(rows), 1.0), m2 / max(float(rows), 1.0)


def encodings(n: np.ndarray, total: np.ndarray, m2: np.ndarray, mean: np.ndarray,
              variance: np.ndarray, smooth: str | float) -> np.ndarray:
    """Per category ``(c, K)``: its rows ``n``, label sums ``total`` and squared
    deviations ``m2`` shrunk toward ``mean`` as scikit-learn's encoder does; a category
    without rows gets ``mean``."""
    n = n[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        if smooth == "auto":
            # the category's mean weighs n var / (n var + its own variance)
            weight = variance * n / (variance * n + m2 / n)
            out = weight * (total / n) + (1 - weight) * mean
        else:
            out = (total + smooth * mean) / (n + smooth)
    return np.where(np.isnan(out) | (n == 0), mean, out)


@register_fitted("target_encode.fitted")
class TargetEncodeFitted(Transform):
    """The encodings: each column's categories and their values (a column per class for
    more than two classes); unseen categories get the label's mean."""

    numeric_kernels = False
    Params = TargetEncodeParams

    def __init__(self, params: TargetEncodeParams, kinds: dict[str, str],
                 classes: list[Any] | None, mean: np.ndarray,
                 encoded: dict[str, tuple[pa.Array, np.ndarray]]):
        super().__init__(params)
        self.kinds, self.classes, self.mean, self.encoded = kinds, classes, mean, encoded
        # the training rows' cross-fitted encodings (per column, fold, category) and each
        # fold's label mean: the fit's own rows only, never saved (``training_view``)
        self.cross_fitted: tuple[dict[str, np.ndarray], np.ndarray] | None = None

    def training_view(self) -> Transform:
        if self.cross_fitted is None:
            return self
        return CrossFitted(self)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.params.columns)

    def names(self, name: str) -> list[str]:
        """The columns ``name`` becomes: itself, or ``<name>_<class>`` per class."""
        if self.classes is None or len(self.classes) <= 2:
            return [name]
        return [f"{name}_{label(value)}" for value in self.classes]

    def derived_from(self) -> dict[str, list[str]]:
        return {new: [name] for name in self.params.columns for new in self.names(name)
                if new != name}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return encoded_schema(schema, self.kinds, self.names, "target_encode")

    def _index(self, part: pa.Table, name: str) -> np.ndarray:
        """Each row's category (its place in the fitted ones; -1: unseen)."""
        values = category_values(part.column(name), self.kinds[name])
        found = pc.index_in(values, value_set=self.encoded[name][0], skip_nulls=False)
        return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)

    def _put(self, part: pa.Table, name: str, values: np.ndarray) -> pa.Table:
        names = self.names(name)
        return replace_columns(part, name, [pa.field(n, pa.float64()) for n in names],
                               [pa.array(np.ascontiguousarray(values[:, k]))
                                for k in range(len(names))])

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        out = part
        for name in self.params.columns:
            index = self._index(part, name)
            table = np.concatenate([self.encoded[name][1], self.mean[None, :]])
            out = self._put(out, name, table[index])  # -1: the label's mean, last
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays, columns = {}, {}
        for i, (name, (categories, values)) in enumerate(self.encoded.items()):
            nulls = categories.null_count > 0
            present = categories.drop_null()
            arrays[f"categories_{i}"] = np.asarray(
                present.to_numpy(zero_copy_only=False),
                dtype=str if self.kinds[name] == "string" else None)
            arrays[f"encodings_{i}"] = values
            columns[name] = {"kind": self.kinds[name], "null": bool(nulls)}
        meta = {"params": self.params.model_dump(mode="json"), "columns": columns,
                "classes": self.classes, "mean": self.mean.tolist()}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> TargetEncodeFitted:
        encoded, kinds = {}, {}
        for i, (name, column) in enumerate(meta["columns"].items()):
            kinds[name] = column["kind"]
            categories = pa.array(arrays[f"categories_{i}"].tolist(), ARROW_KIND[column["kind"]])
            if column["null"]:
                categories = pa.concat_arrays([categories, pa.nulls(1, categories.type)])
            encoded[name] = (categories, np.asarray(arrays[f"encodings_{i}"], dtype=np.float64))
        return cls(TargetEncodeParams(**meta["params"]), kinds, meta["classes"],
                   np.asarray(meta["mean"], dtype=np.float64), encoded)


class CrossFitted(Transform):
    """The fitted encoder as the training run applies it to the rows it was fitted on:
    each row encoded from the other folds' rows (its fold by ``row_folds``)."""

    numeric_kernels = False
    Params = TargetEncodeParams

    def __init__(self, fitted: TargetEncodeFitted):
        super().__init__(fitted.params)
        self.fitted = fitted

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return self.fitted.input_columns(schema)

    def derived_from(self) -> dict[str, list[str]]:
        return self.fitted.derived_from()

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return self.fitted.output_schema(schema)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        assert self.fitted.cross_fitted is not None
        training, fold_means = self.fitted.cross_fitted
        fold = row_folds(part, self.params)
        out = part
        for name in self.params.columns:
            index = self.fitted._index(part, name)
            values = training[name][fold, np.maximum(index, 0)]
            # a category the fit never saw (not a row it was fitted on): its fold's mean
            values = np.where((index < 0)[:, None], fold_means[fold], values)
            out = self.fitted._put(out, name, values)
        return out
