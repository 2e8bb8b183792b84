"""select_features: keep the features a univariate test ranks best, drop the others.

scikit-learn's ``SelectKBest`` / ``SelectPercentile`` / ``SelectFpr`` / ``SelectFdr`` /
``SelectFwe`` with ``f_classif``, ``chi2`` or ``f_regression``, and ``VarianceThreshold``;
MLlib's ``UnivariateFeatureSelector`` (ANOVA, chi-squared, F-value) and
``VarianceThresholdSelector``. One pass over the partitions:

- ``anova`` (class label, continuous features): each class's weighted means and squared
  deviations (``class_sums``, Chan-combined), so the between- and within-class sums of
  squares of every feature; F = (SSB / (k - 1)) / (SSW / (n - k)).
- ``chi2`` (class label, counts or frequencies): each class's feature totals against
  the totals the class's share of the rows expects; k - 1 degrees of freedom
  (scikit-learn's ``chi2``; MLlib's chi-squared selector is another test, of each
  feature's values as categories).
- ``f_regression`` (numeric label): each feature's correlation r with the label from
  the centred co-moments of features and label; F = r^2 / (1 - r^2) (n - 2).
- ``variance`` (no label): each feature's population variance.

A row of weight w counts as w copies (n is the total weight). The fitted step drops the
features not kept; every other column passes through, and a saved model asks only for
the kept ones. A sparse column's terms (``vectorize_text`` with ``sparse: true``) are
candidates one by one (``chi2`` and ``anova``: ``SelectKBest(chi2)`` on a
``TfidfVectorizer``'s matrix); its kept terms stay one sparse column.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PositiveInt, model_validator

from operators.arrays import in_float64
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
from operators.models.common import (
    check_features,
    check_listed_features,
    check_role,
    check_weight,
    chosen_features,
    class_label_type,
    class_overall,
    class_sums,
    combine_class_sums,
    combine_comoments,
    comoments,
    feature_matrix,
    label_column,
    require_counts,
    require_some_features,
    row_weights,
)
from operators.sparse import (
    columns_of,
    groups,
    is_sparse_type,
    owner_of,
    pending_field,
    select_positions,
    sparse_columns,
    sparse_field,
)

Test = Literal["anova", "chi2", "f_regression", "variance"]
SELECTIONS = ("k", "percentile", "fpr", "fdr", "fwe", "min_variance")


class SelectFeaturesParams(Params):
    features: list[str] | None = Field(
        None, description="the candidate features (default: every numeric column but the "
                          "label and the weight)")
    label: str | None = Field(None, description="the column the features are tested "
                                                "against (none for test: variance)")
    weight: str | None = Field(None, description="column of non-negative row weights (a row "
                                                 "of weight w as w copies)")
    test: Test | None = Field(
        None, description="anova (class label: scikit-learn's f_classif), chi2 (class label, "
                          "counts), f_regression (numeric label), variance (no label); "
                          "default: anova for a label of classes, f_regression for a float "
                          "one, variance without a label")
    k: PositiveInt | None = Field(None, description="keep the k best (SelectKBest; MLlib's "
                                                    "numTopFeatures)")
    percentile: float | None = Field(None, gt=0, le=100,
                                     description="keep those above this percentile of the "
                                                 "statistics (SelectPercentile's rule)")
    fpr: float | None = Field(None, gt=0, le=1, description="keep those of p-value below "
                                                            "this (SelectFpr)")
    fdr: float | None = Field(None, gt=0, le=1, description="keep those the Benjamini-Hochberg "
                                                            "procedure keeps at this false "
                                                            "discovery rate (SelectFdr)")
    fwe: float | None = Field(None, gt=0, le=1, description="keep those of p-value below this "
                                                            "over the number of features "
                                                            "(Bonferroni: SelectFwe)")
    min_variance: float | None = Field(None, ge=0, description="test variance: keep those of "
                                                               "variance above this "
                                                               "(VarianceThreshold; default 0)")

    @model_validator(mode="after")
    def _one_selection(self) -> SelectFeaturesParams:
        check_listed_features(self.features)
        given = [name for name in SELECTIONS if getattr(self, name) is not None]
        test = self.test or ("variance" if self.label is None else None)
        if len(given) > 1:
            raise ParamError(f"{' and '.join(given)} both say how many features to keep",
                             hint="give one of " + ", ".join(SELECTIONS))
        if not given and test != "variance":
            raise ParamError("say which features to keep: k (the best k), percentile, fpr, "
                             "fdr or fwe", hint="e.g. k: 10, or fdr: 0.05")
        if test == "variance" and given and given[0] in ("fpr", "fdr", "fwe"):
            raise ParamError(f"{given[0]} needs p-values, which test variance has none of",
                             hint="use min_variance, k or percentile")
        if given == ["min_variance"] and test not in (None, "variance"):
            raise ParamError(f"min_variance is test variance's, not {test}'s",
                             hint="use k, percentile, fpr, fdr or fwe")
        if self.test in (None, "variance") and self.label is None:
            return self
        if self.test == "variance":
            raise ParamError("test variance uses no label", hint="leave label out")
        if self.label is None:
            raise ParamError(f"test {self.test} needs a label to test the features against",
                             hint="give label, or use test: variance")
        return self


class SparseKept(Params):
    size: int = Field(description="the sparse column's positions before the selection")
    kept: list[int] = Field(description="the positions kept, ascending")


class SelectedParams(Params):
    kept: list[str] = Field(description="the features kept, in the input's order")
    dropped: list[str] = Field(description="the features dropped")
    sparse: dict[str, SparseKept] = Field(
        default_factory=dict, description="each sparse column the features include the "
                                          "positions of: its kept positions stay one sparse "
                                          "column, renumbered in order")


@register_fitted("select_features.fitted")
class SelectedFeatures(Transform):
    """Drop the features a ``select_features`` fit did not keep (where present: a scoring
    row need not have them)."""

    numeric_kernels = False
    Params = SelectedParams

    def input_columns(self, schema: pa.Schema) -> list[str]:
        plain_kept = [k for k in self.params.kept if owner_of(k, self.params.sparse) is None]
        return plain_kept + list(self.params.sparse)

    def _terms(self, column: str) -> list[str]:
        """A sparse column's kept terms, in position order."""
        return [k[len(column) + 1:] for k in self.params.kept
                if owner_of(k, self.params.sparse) == column]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        require_columns(schema, self.input_columns(schema), "feature column")
        names = set(self.params.dropped)
        fields = []
        for f in schema:
            if f.name in self.params.sparse:
                terms = self._terms(f.name)
                fields.append(sparse_field(f.name, len(terms), terms))
            elif f.name not in names:
                fields.append(f)
        return pa.schema(fields, metadata=schema.metadata)

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        present = [name for name in self.params.dropped if name in part.column_names]
        out = part.drop_columns(present) if present else part
        for column, kept in self.params.sparse.items():
            if column not in out.column_names:
                continue
            renumbered = np.full(kept.size, -1, np.int64)
            renumbered[kept.kept] = np.arange(len(kept.kept))
            at = out.schema.get_field_index(column)
            terms = self._terms(column)
            out = out.set_column(at, sparse_field(column, len(terms), terms),
                                 select_positions(out.column(column), kept.size, renumbered,
                                                  column))
        return out


@register("select_features")
class SelectFeatures(Estimator):
    """Keep the features a univariate test ranks best; drop the rest.

    The tests: ANOVA F, chi-squared, F of a correlation, or variance.

    ```yaml
    - op: select_features
      label: churned              # test: anova for classes, f_regression for numbers
      k: 20                       # or percentile: 10, fpr / fdr / fwe: 0.05
    - op: select_features         # no label: drop the (near) constant features
      min_variance: 0.0
    ```
    The run record has each feature's statistic and p-value and the features kept, in
    the order ranked; the later steps see the kept ones only.
    """

    Params = SelectFeaturesParams
    schema_from_fit = True  # which features stay is known after the fit

    def _features(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return chosen_features(schema, p.features, {p.label, p.weight}, sparse=True)

    def _test(self, schema: pa.Schema) -> str:
        p = self.params
        if p.test is not None:
            return p.test
        if p.label is None:
            return "variance"
        return "anova" if class_label_type(schema.field(p.label).type) is not None \
            else "f_regression"

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return columns_of(schema, self._features(schema)) + [c for c in (p.label, p.weight)
                                                             if c]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """At plan time, a lower bound: the columns that are not candidates (which of those
        stay is known after the fit; later steps' checks of them wait for it)."""
        features, _ = self._check(schema)
        names = set(features)
        # a sparse column stays (its kept positions), its terms known after the fit
        return pa.schema([pending_field(f.name) if is_sparse_type(f.type) else f
                          for f in schema if f.name not in names or is_sparse_type(f.type)],
                         metadata=schema.metadata)

    def _check(self, schema: pa.Schema) -> tuple[list[str], str]:
        p = self.params
        features = self._features(schema)
        check_role("label", p.label, p.features)
        check_weight(schema, p.weight, p.features)
        require_some_features(features)
        check_features(schema, features)
        test = self._test(schema)
        sparse = sparse_columns(schema)
        if test in ("f_regression", "variance") and any(
                column in sparse for column in columns_of(schema, features)):
            raise SchemaError(f"test {test} of a sparse column's terms: its co-moments of "
                              "every pair of terms would be dense",
                              hint="use test: chi2 (counts, TF-IDF) or anova with a label of "
                                   "classes, or leave the sparse column out (features:)")
        if p.label is not None:
            require_columns(schema, [p.label], "label column")
            t = schema.field(p.label).type
            if test in ("anova", "chi2") and class_label_type(t) is None:
                raise SchemaError(f"label column '{p.label}' is {t}: test {test} needs "
                                  "classes (integer, boolean or string)",
                                  hint="use test: f_regression for a numeric label")
            if test == "f_regression" and not (pa.types.is_integer(t)
                                               or pa.types.is_floating(t)):
                raise SchemaError(f"label column '{p.label}' is {t}: test f_regression "
                                  "needs numbers", hint="use test: anova for classes")
        return features, test

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features, test = self._check(schema)
        label_type = (None if self.params.label is None
                      else class_label_type(schema.field(self.params.label).type))
        return {"features": features, "test": test,
                "label_type": None if label_type is None else str(label_type),
                "groups": [g for g in groups(schema, features) if g[0] is not None]}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p, test, features = self.params, state["test"], state["features"]
        xp = in_float64(xp)
        weights = row_weights(part, p.weight)
        if test in ("anova", "chi2"):

            def counts(X: Any) -> Any:
                require_counts(X, features, xp, "test chi2",
                               "use test: anova for continuous features")
                return X

            return class_sums(part, features, label_column(part, p.label),
                              pa.type_for_alias(state["label_type"]), weights, xp,
                              test == "anova", counts if test == "chi2" else None,
                              sparse=True)
        if test == "f_regression":
            label_column(part, p.label)  # a null or NaN label: its own error
        columns = features + ([p.label] if test == "f_regression" else [])
        data = feature_matrix(part, columns, xp, [weights])
        return comoments(data[:, :-1], None if p.weight is None else data[:, -1], xp)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "classes" in a:
            return combine_class_sums(a, b)
        return combine_comoments(a, b)

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        test, features = state["test"], state["features"]
        p = self.params
        if p.k is not None and p.k > len(features):
            # known at the fit: a step before (one_hot) may make the features as it fits
            raise ParamError(f"k is {p.k}, but there are {len(features)} features to choose "
                             f"from ({', '.join(features[:10])}"
                             + (", ..." if len(features) > 10 else "") + ")",
                             hint=f"k: {len(features)} keeps them all; give fewer")
        n = float(stats["weights"].sum()) if "classes" in stats else float(stats["weight"])
        if not n > 0:
            raise DataError("select_features has no rows (or only rows of weight 0) to test "
                            "the features on", hint="check the filter and the weight column")
        statistic, p_value = _TESTS[test](stats, n, self.params.label)
        kept = _chosen(self.params, statistic, p_value, features, test)
        return {**state, "statistic": statistic, "p_value": p_value, "kept": kept}, True

    def fitted(self, state: dict[str, Any]) -> SelectedFeatures:
        kept = set(state["kept"])
        features = state["features"]
        sparse = {}
        for column, start, stop in state.get("groups", []):
            sparse[column] = SparseKept(size=stop - start, kept=[
                j - start for j in range(start, stop) if features[j] in kept])
        return SelectedFeatures(
            kept=[f for f in features if f in kept],
            dropped=[f for j, f in enumerate(features) if f not in kept
                     and not any(start <= j < stop for _, start, stop
                                 in state.get("groups", []))],
            sparse=sparse)

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if "kept" not in state:
            return {}
        order = _ranking(state["statistic"])
        out: dict[str, Any] = {"test": state["test"], "kept": state["kept"],
                               "dropped": len(state["features"]) - len(state["kept"])}
        name = "variance" if state["test"] == "variance" else "statistic"
        out[name] = {state["features"][i]: float(state["statistic"][i]) for i in order}
        if state["p_value"] is not None:
            out["p_value"] = {state["features"][i]: float(state["p_value"][i]) for i in order}
        return out


def _anova(stats: dict[str, Any], n: float, label: str | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``f_classif``: the between- and within-class sums of squares."""
    k = _classes(stats, label)
    _require_freedom(n - k, f"more rows than classes: {n:g} rows (their total "
                               f"weight) of {k} classes", "anova")
    totals, means = stats["weights"], stats["means"]
    overall, _ = class_overall(stats)
    between = totals @ ((means - overall) ** 2)
    within = stats["squares"].sum(axis=0)
    return _f_test(between / (k - 1), within / (n - k), k - 1, n - k)


def _require_freedom(freedom: float, needs: str, test: str) -> None:
    """A DataError where the test's denominator has no degrees of freedom (its F is
    0 / 0 for every feature)."""
    if not freedom > 0:
        raise DataError(f"test {test} needs {needs}: no degrees of freedom are left for "
                        "the F test", hint="give it more rows (check the filter and the "
                                           "weight column)")


def _classes(stats: dict[str, Any], label: str | None) -> int:
    """How many classes the rows have (of positive weight: a row of weight w is w copies,
    and a class of rows of weight 0 is none): two at least, or a DataError."""
    k = int(np.count_nonzero(stats["weights"] > 0))
    if k < 2:
        raise DataError(f"label column '{label}' has a single class in the rows: the test "
                        "compares classes", hint="check the filter and the label column")
    return k


def _chi2(stats: dict[str, Any], n: float, label: str | None
          ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``chi2``: the classes' feature totals against the totals their
    shares of the rows expect."""
    k = _classes(stats, label)
    observed = stats["sums"]
    expected = np.outer(stats["weights"] / n, observed.sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (observed - expected) ** 2 / expected, 0.0)
    statistic = terms.sum(axis=0)
    return statistic, _chi2_sf(statistic, k - 1)


def _f_regression(stats: dict[str, Any], n: float, label: str | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``f_regression``: each feature's correlation with the label."""
    comoment = stats["comoment"]
    spread = np.diag(comoment)
    if not spread[-1] > 0:
        raise DataError(f"label column '{label}' is constant: no feature correlates with it",
                        hint="check the filter and the label column")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = comoment[:-1, -1] / np.sqrt(spread[:-1] * spread[-1])
    r = np.where(spread[:-1] > 0, np.clip(r, -1.0, 1.0), 0.0)
    freedom = n - 2
    _require_freedom(freedom, f"more than 2 rows: {n:g} rows (their total weight)",
                     "f_regression")
    with np.errstate(divide="ignore"):
        statistic = np.where(r * r < 1.0, r * r / (1.0 - r * r) * freedom, np.inf)
    return statistic, _f_sf(statistic, 1, freedom)


def _variance(stats: dict[str, Any], n: float, label: str | None
              ) -> tuple[np.ndarray, None]:
    return np.diag(stats["comoment"]) / n, None


_TESTS = {"anova": _anova, "chi2": _chi2, "f_regression": _f_regression,
          "variance": _variance}


def _f_test(between: np.ndarray, within: np.ndarray, df1: float, df2: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """F and its p-value; a feature constant in every class (no spread within) is F = inf
    where the classes' means differ, 0 where nothing varies (p = 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(within > 0, between / within,
                             np.where(between > 0, np.inf, 0.0))
    return statistic, _f_sf(statistic, df1, df2)


def _chi2_sf(statistic: np.ndarray, df: float) -> np.ndarray:
    """``scipy.stats.chi2.sf``: the same special function, without importing
    scipy.stats (about a second, in the driver and in every worker process)."""
    from scipy.special import chdtrc

    return chdtrc(df, np.maximum(statistic, 0.0))  # (NaN stays NaN; below 0: p = 1)


def _f_sf(statistic: np.ndarray, df1: float, df2: float) -> np.ndarray:
    """``scipy.stats.f.sf``, as ``_chi2_sf``."""
    from scipy.special import fdtrc

    return fdtrc(df1, df2, np.maximum(statistic, 0.0))


def _ranking(statistic: np.ndarray) -> list[int]:
    """Feature positions from the highest statistic down (ties: in the features' order)."""
    return sorted(range(len(statistic)), key=lambda i: -statistic[i])


def _chosen(p: SelectFeaturesParams, statistic: np.ndarray, p_value: np.ndarray | None,
            features: list[str], test: str) -> list[str]:
    """The kept features, best first; none kept is an error that says the best one."""
    order = _ranking(statistic)
    count = len(features)
    if p.k is not None:
        keep = order[:p.k]
    elif p.percentile is not None:
        # scikit-learn's SelectPercentile: above the (interpolated) percentile, then ties
        # at it in the features' order while fewer than the percentile's share are kept;
        # an infinite F (a feature constant within each class) as the largest float: the
        # interpolation next to it, 4 + (inf - 4) x 0, is NaN, above which nothing is
        finite = np.minimum(statistic, np.finfo(np.float64).max)
        threshold = np.percentile(finite, 100 - p.percentile) if p.percentile < 100 \
            else -np.inf
        room = int(count * p.percentile / 100) - int(np.sum(finite > threshold))
        ties = [i for i in range(count) if finite[i] == threshold][:max(room, 0)]
        keep = [i for i in order if finite[i] > threshold or i in ties]
    elif p.fpr is not None:
        keep = [i for i in order if p_value[i] < p.fpr]
    elif p.fwe is not None:
        keep = [i for i in order if p_value[i] < p.fwe / count]
    elif p.fdr is not None:
        ranked = np.sort(p_value)
        passing = ranked[ranked <= p.fdr * np.arange(1, count + 1) / count]
        keep = [i for i in order if passing.size and p_value[i] <= passing.max()]
    else:
        floor = p.min_variance or 0.0
        keep = [i for i in order if statistic[i] > floor]
    if not keep:
        best = order[0]
        said = (f"variance {statistic[best]:.6g}" if p_value is None
                else f"p-value {p_value[best]:.6g}")
        rule = next(f"{name}: {getattr(p, name)}" for name in SELECTIONS
                    if getattr(p, name) is not None) if any(
            getattr(p, name) is not None for name in SELECTIONS) else "min_variance: 0"
        raise DataError(f"select_features keeps no feature by {rule} (test {test}; the best "
                        f"is '{features[best]}', {said})",
                        hint="loosen it, or use k: to keep the best k whatever their scores")
    return [features[i] for i in keep]
