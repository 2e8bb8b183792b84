"""evaluate: metrics of predictions against a label, in one pass over the partitions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from operators.arrays import column_to_numpy, is_text
from operators.base import (
    DataError,
    Estimator,
    MissingColumnError,
    ParamError,
    Params,
    SchemaError,
    Transform,
    lookup_fitted,
    register,
    register_fitted,
    require_columns,
    suggest,
)
from operators.evaluate.metrics import (
    CLASSIFICATION_METRICS,
    DEFAULT_METRICS,
    METRICS,
    PROBABILITY_METRICS,
    REGRESSION_METRICS,
    MetricAccumulator,
    align,
)
from operators.features.columns import unique_names
from operators.models import ranking
from operators.models.common import is_numeric, probability_matrix

Task = Literal["classification", "regression", "auto"]


def by_field() -> Any:
    """A measuring step's ``by`` parameter (evaluate, evaluate_clusters)."""
    return Field(None, min_length=1,
                 description="also the metrics of each value of these columns, e.g. [region]: "
                             "under `groups` in the run record (region=east: {...}), beside "
                             "the overall ones")


def max_groups_field() -> Any:
    """A measuring step's ``max_groups`` parameter."""
    return Field(1000, gt=0, description="most groups `by` may make (a run with more fails, "
                                         "naming the columns)")


class EvaluateParams(Params):
    label: str = Field(description="the column of true values")
    metrics: list[str] | None = Field(
        None, description="metrics to compute (default: all for the task that the data allows, "
        "the deviances, pinball_loss, coverage and brier on request only); regression: "
        + ", ".join(REGRESSION_METRICS) + "; classification: "
        + ", ".join(CLASSIFICATION_METRICS) + "; ranking (with group): ndcg, count")
    prediction: str = Field("prediction", description="the column of predicted values")
    probability: str = Field(
        "probability", description="predicted probabilities: binary P(classes[1]) as float64, "
        "multiclass list<double> in sorted class order; needed by log_loss, roc_auc and "
        "pr_auc only")
    weight: str | None = Field(None, description="column of row weights (>= 0)")
    task: Task = Field("auto", description="classification | regression | auto: "
                       "classification when the label is integer, boolean or string")
    classes: list[bool | int | float | str] | None = Field(
        None, description="every class (sorted order is used); default: learned from the "
        "label and prediction values")
    by: list[str] | None = by_field()
    tweedie_power: float = Field(1.5, gt=1.0, lt=2.0,
                                 description="the power tweedie_deviance is measured at (a "
                                             "tweedie model's tweedie_power)")
    quantile: float = Field(0.5, gt=0.0, lt=1.0,
                            description="the level pinball_loss and coverage are for: a "
                                        "quantile model's (loss: quantile)")
    max_groups: int = max_groups_field()
    group: str | None = Field(
        None, description="the query id column of a ranking (integer or string): the "
                          "metrics are ndcg (NDCG@k, the mean over queries, LightGBM's: gain "
                          "2^label - 1, a query of no relevant row counts 1; tied "
                          "predictions share their places' discounts), queries and count; "
                          "a query's rows must be in one partition (`- op: repartition` "
                          "with `by: [<group>]` first); with a weight each query's NDCG "
                          "weighs the mean of its rows' (LightGBM's query weight), with by "
                          "each group's queries' (a query's rows share their by values)")
    k: int = Field(10, ge=1, description="ndcg's cut-off: NDCG@k (with group)")


class Measuring(Estimator):
    """An estimator that measures rows (evaluate, drift, promote): its last ``update``
    keeps the figures in ``state["metrics_values"]``, the run record's metrics, and its
    fitted transform (registered as ``<name>.fitted``) passes the rows on, carrying them."""

    def fitted(self, state: dict[str, Any]) -> Transform:
        return lookup_fitted(f"{self.name}.fitted")(self.params,
                                                    state.get("metrics_values", {}))

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        return dict(state.get("metrics_values", {}))


@register("evaluate")
class Evaluate(Measuring):
    """Evaluate predictions against a label; the metrics go to the run record, rows pass through.

    ```yaml
    - op: evaluate
      label: churned
      metrics: [accuracy, roc_auc, f1, confusion_matrix]   # default: all the data allows
      # prediction: prediction   probability: probability   weight: w   task: auto
    ```
    With `group: <query id column>` it measures a ranking instead: `ndcg` (NDCG@`k`, the
    mean over the queries, as LightGBM's) of the prediction (a ranking model's score)
    against the relevance label; a query's rows must be in one partition. With `weight`
    each query's NDCG weighs the mean of its rows' weights; with `by`, each group's
    queries' NDCG too.

    Classification metrics: accuracy, log_loss, roc_auc (binary, or macro one-vs-rest),
    pr_auc (average precision: the area under the precision-recall curve, what tells a
    model's quality for a rare class), precision, recall, f1 (binary: positive class =
    the larger class; multiclass: macro average), confusion_matrix, count; on request
    brier (scikit-learn's brier_score_loss: how true the probabilities are, what
    `calibrate` improves; a model's validation reports it too) and, of two classes,
    thresholds: the ROC and precision-recall curves (threshold, tpr, fpr, precision, f1
    at up to 100 of the scores' thresholds, scikit-learn's roc_curve and
    precision_recall_curve, MLlib's BinaryClassificationMetrics) and best_f1, the
    threshold of the highest F1 with its precision and recall: where to cut. Regression:
    rmse, mse, mae, r2, count; on request poisson_deviance, gamma_deviance,
    tweedie_deviance (at `tweedie_power`, a tweedie model's), and for a
    quantile model pinball_loss (the loss it minimises) and coverage (the share of labels
    at or below the prediction), both at `quantile` (the model's).

    With `by: [region]` the same metrics of each region too (in the same pass, over the
    classes of all the rows), under `groups` in the run record: how a model does for
    each segment, where an overall figure hides a weak one. A null is a group of its own.
    """

    Params = EvaluateParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        known = sorted(set(REGRESSION_METRICS) | set(CLASSIFICATION_METRICS) | {"ndcg"})
        if self.params.metrics == []:
            raise ParamError("metrics is empty", hint="list metrics, or leave it out for all")
        for name in self.params.metrics or []:
            if name not in known:
                raise ParamError(f"unknown metric '{name}'{suggest(name, known)}",
                                 hint="known: " + ", ".join(known))
        if "quantile" in self.params.model_fields_set and not {
                "pinball_loss", "coverage"} & set(self.params.metrics or []):
            raise ParamError(f"quantile: {self.params.quantile:g} is the level of "
                             "pinball_loss and coverage, and metrics names neither",
                             hint="add metrics: [pinball_loss, coverage], or leave quantile "
                                  "out")
        if ("tweedie_power" in self.params.model_fields_set
                and "tweedie_deviance" not in (self.params.metrics or [])):
            raise ParamError(f"tweedie_power: {self.params.tweedie_power:g} is the power of "
                             "tweedie_deviance, and metrics does not name it",
                             hint="add tweedie_deviance to metrics, or leave tweedie_power out")
        if self.params.task == "regression" and self.params.classes is not None:
            raise ParamError("classes are for classification", hint="drop classes")
        unique_names(self.params.by or [], "by")
        self._by = ByGroups(self.name, self.params.by or [], self.params.max_groups)
        if self.params.group is None:
            if "ndcg" in (self.params.metrics or []):
                raise ParamError("ndcg ranks the rows of each query, and group (the query "
                                 "id column) is not set", hint="add group: <query id column>")
            return
        extra = {"metrics": set(self.params.metrics or []) - {"ndcg", "count"},
                 "classes": self.params.classes}
        for name, value in extra.items():
            if value:
                raise ParamError(f"group: {self.params.group} measures a ranking (ndcg), "
                                 f"which takes no {name}",
                                 hint=f"leave {name} out, or evaluate in another step")

    # ----------------------------------------------------------------- plan time

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        if p.group is not None:
            return [p.label, p.prediction, p.group, *([p.weight] if p.weight else []),
                    *(p.by or [])]
        optional = [c for c in (p.probability, p.weight) if c and c in schema.names]
        return [p.label, p.prediction, *optional, *(p.by or [])]

    def check_input(self, schema: pa.Schema) -> None:
        p = self.params
        if p.prediction not in schema.names and p.prediction == "prediction":
            # not a misspelling of another column ("did you mean 'region'?"): no model yet
            error = MissingColumnError(
                "its input has no 'prediction' column: evaluate measures the predictions "
                "of a model step or a score step before it",
                hint="put evaluate after the model step or an `op: score` (check its "
                     "`input:`), or name the column of predictions (prediction: COLUMN)")
            error.columns = ("prediction",)
            raise error
        super().check_input(schema)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self._plan(schema)
        return schema

    def _plan(self, schema: pa.Schema) -> dict[str, Any]:
        """Everything decided from the schema: task, metrics, classes, columns used."""
        p = self.params
        require_columns(schema, [p.label, p.prediction])
        if p.group is not None:
            ranking.check_group_column(schema, p.group)
            for column in (p.label, p.prediction):
                _require_numeric(schema, column, "a ranking")
            if p.weight:
                _require_numeric(schema, p.weight, "a weight")
            if p.by:
                require_groupable(schema, p.by)
            return {"task": "ranking", "metrics": p.metrics or ["ndcg", "count"]}
        label_type = value_type(schema.field(p.label).type)
        task = p.task if p.task != "auto" else task_of(p.label, label_type)
        if p.classes is not None and task != "classification":
            raise ParamError(f"classes given but label '{p.label}' ({label_type}) makes this "
                             "a regression", hint="set task: classification")
        for name in p.metrics or []:
            if name not in METRICS[task]:
                raise ParamError(
                    f"metric '{name}' is not a {task} metric{suggest(name, METRICS[task])}",
                    hint=f"{task} metrics: " + ", ".join(METRICS[task])
                    + ("" if p.task != "auto" else "; or set task"))
        has_proba = p.probability in schema.names and task == "classification"
        if p.metrics is None:
            metrics = [m for m in DEFAULT_METRICS[task]
                       if has_proba or m not in PROBABILITY_METRICS]
        else:
            metrics = list(p.metrics)
        needs = [m for m in metrics if m in PROBABILITY_METRICS]
        if needs and not has_proba:
            raise SchemaError(
                f"metric {', '.join(needs)} needs the probability column '{p.probability}', "
                f"not in the input{suggest(p.probability, schema.names)}",
                hint="score with a classifier first, set `probability:` to the column, "
                     "or drop " + ", ".join(needs))
        classes = self._classes(label_type) if task == "classification" else None
        if task == "regression":
            for column in (p.label, p.prediction):
                _require_numeric(schema, column, "a regression")
        else:
            _require_comparable(schema, p.label, p.prediction)
        if needs:
            _require_probability(schema, p.probability, classes)
        if p.weight is not None:
            require_columns(schema, [p.weight], "weight column")
            _require_numeric(schema, p.weight, "a weight")
        if p.by:
            require_groupable(schema, p.by)
        return {"task": task, "metrics": metrics, "classes": classes,
                "probability": p.probability if needs else None}

    def _classes(self, label_type: pa.DataType) -> list[Any] | None:
        classes = self.params.classes
        if classes is None:
            return None
        try:
            values = pa.array(classes).cast(label_type)
        except (pa.ArrowException, ValueError):
            raise ParamError(f"classes {classes} do not fit the label type {label_type}",
                             hint="list classes as values of the label column") from None
        if values.null_count:
            raise ParamError("classes has an empty value", hint="list each class")
        return values.to_pylist()

    # ----------------------------------------------------------------- fit

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        return self._plan(schema)

    def _accumulator(self, state: dict[str, Any]) -> MetricAccumulator:
        p = self.params
        return MetricAccumulator(state["task"], state["metrics"], state["classes"],
                                 columns=(p.label, p.prediction), quantile=p.quantile,
                                 tweedie_power=p.tweedie_power)

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        if state["task"] == "ranking":
            return self._ranking_partial(part)
        accumulator = self._accumulator(state)
        if part.num_rows == 0:
            return self._grouped(accumulator.empty(), {})
        p = self.params
        numeric = state["task"] == "regression"
        y_true = _values(part, p.label, numeric, "label")
        y_pred = _values(part, p.prediction, numeric, "prediction")
        proba = _probability(part, state["probability"]) if state["probability"] else None
        weight = _weights(part, p.weight) if p.weight else None
        if not p.by:
            return accumulator.partial(y_true, y_pred, proba, weight, xp=xp)
        groups = {}
        for key, rows in self._by.rows(part):
            groups[key] = accumulator.partial(
                y_true[rows], y_pred[rows], None if proba is None else proba[rows],
                None if weight is None else weight[rows], xp=xp)
        overall = functools.reduce(accumulator.combine, groups.values())
        return self._grouped(overall, groups)

    def _grouped(self, overall: dict[str, Any], groups: dict[tuple, Any]) -> dict[str, Any]:
        """Stats with their groups' (``by``), or the overall stats alone."""
        return {**overall, "groups": groups} if self.params.by else overall

    def _ranking_partial(self, part: pa.Table) -> dict[str, Any]:
        """The partition's queries' NDCG@k sum, their weight (their number, unweighted),
        rows and keys (no query may be in two partitions: ``ranking.combine_keys``), and
        with ``by`` each group's sums (a query in one group only)."""
        p = self.params
        labels = _values(part, p.label, True, "label").astype(np.float64)
        ranking.check_relevance(labels, p.label)
        score = _values(part, p.prediction, True, "prediction").astype(np.float64)
        weight = _weights(part, p.weight) if p.weight else None
        keys = ranking.query_keys(part, p.group)
        codes = ranking.query_codes(part, p.group)

        def sums(rows: np.ndarray | slice) -> dict[str, Any]:
            total, weighed = ranking.ndcg_sums(score[rows], labels[rows], codes[rows], p.k,
                                               None if weight is None else weight[rows])
            return {"ndcg": total, "weight": weighed,
                    "rows": len(score[rows]), "queries": len(np.unique(codes[rows]))}

        out = {"task": "ranking", **sums(slice(None)),
               "ranking": {"keys": keys, "queries": len(keys), "span": None}}
        if p.by:
            grouped = self._by.rows(part)
            groups = {key: sums(rows) for key, rows in grouped}
            if sum(g["queries"] for g in groups.values()) != len(keys):
                self._split_query(grouped, codes, keys)
            out["groups"] = groups
        return out

    def _split_query(self, grouped: list[tuple[tuple, np.ndarray]], codes: np.ndarray,
                     keys: pa.Array) -> None:
        """The DataError for a query whose rows have two values of ``by`` (``grouped``:
        the partition's groups' rows)."""
        p = self.params
        seen: dict[int, tuple] = {}
        for key, rows in grouped:
            for code in np.unique(codes[rows]).tolist():
                if code in seen:
                    shown = [self._by.label(k) for k in (seen[code], key)]
                    raise DataError(f"query {keys[code].as_py()!r} of group column "
                                    f"'{p.group}' has rows in two groups of by ({shown[0]} "
                                    f"and {shown[1]}): NDCG ranks a query's rows together",
                                    hint="evaluate by columns whose value is the same on "
                                         "every row of a query")
                seen[code] = key

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if a["task"] == "ranking":
            out = {"task": "ranking", **_added(a, b),
                   "ranking": ranking.combine_keys(a["ranking"], b["ranking"])}
            if "groups" in a:
                out["groups"] = self._by.merged(a["groups"], b["groups"], _added)
            return out
        accumulator = MetricAccumulator(a["task"])
        if "groups" not in a:
            return accumulator.combine(a, b)
        groups = self._by.merged(a["groups"], b["groups"], accumulator.combine)
        overall = {k: v for k, v in a.items() if k != "groups"}
        other = {k: v for k, v in b.items() if k != "groups"}
        return {**accumulator.combine(overall, other), "groups": groups}

    def update(self, stats: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if state["task"] == "ranking":
            return {**state, "metrics_values": self._ranking_values(stats, state)}, True
        accumulator = self._accumulator(state)
        groups = stats.get("groups")
        overall = {k: v for k, v in stats.items() if k != "groups"}
        values = accumulator.finalize(overall)
        k = len(overall.get("classes", ()))
        if "thresholds" in state["metrics"] and k > 2:
            raise DataError(f"thresholds are of two classes' scores, and the label has {k}",
                            hint="leave thresholds out of metrics, or evaluate one class "
                                 "against the rest (derive a boolean label)")
        if groups is not None:
            values["groups"] = {}
            for key in self._by.ordered(groups):
                label = self._by.label(key)
                group = groups[key]
                if state["task"] == "classification":  # every group on all rows' classes
                    group = align(group, overall["classes"])
                try:
                    values["groups"][label] = accumulator.finalize(group)
                except DataError as exc:
                    raise exc.located(f"group {label}") from None
        return {**state, "metrics_values": values}, True


    def _ranking_values(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        queries = stats["ranking"]
        if queries["span"] is not None:
            raise ranking.span_error(p.group, queries["span"])
        if stats["rows"] == 0:
            raise DataError("no rows to evaluate", hint="check the input and any filter")

        def values(sums: dict[str, Any], where: str = "") -> dict[str, Any]:
            if sums["weight"] <= 0:
                raise DataError(f"every query{where} weighs 0 (weight column "
                                f"'{p.weight}'): no NDCG to average",
                                hint="give the queries a positive weight")
            shown = {"ndcg": sums["ndcg"] / sums["weight"], "count": int(sums["rows"])}
            return {**{m: shown[m] for m in state["metrics"]},
                    "queries": int(sums["queries"]), "k": p.k}

        out = values(stats)
        if "groups" in stats:
            out["groups"] = {}
            for key in self._by.ordered(stats["groups"]):
                label = self._by.label(key)
                out["groups"][label] = values(stats["groups"][key], f" of group {label}")
        return out


class Measured(Transform):
    """The rows, unchanged, after a step that measures them (evaluate, drift); carries
    what it measured."""

    def __init__(self, params: Any = None, metrics: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.metrics = dict(metrics or {})

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        return part  # tables are immutable: passing it on cannot change the caller's

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"params": self.params.model_dump(mode="json"), "metrics": self.metrics}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Transform:
        return cls(cls.Params(**meta["params"]), meta.get("metrics"))


@register_fitted("evaluate.fitted")
class EvaluateFitted(Measured):
    """The evaluated data, unchanged; carries the metrics it measured."""

    Params = EvaluateParams


# --------------------------------------------------------------------------- helpers


def value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def task_of(label: str, t: pa.DataType) -> str:
    """DESIGN.md's rule: integer, boolean or string label -> classification; float -> regression."""
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or is_text(t):
        return "classification"
    if pa.types.is_floating(t):
        return "regression"
    raise SchemaError(f"label '{label}' has type {t}: cannot tell classification from "
                      "regression", hint="set task: classification or task: regression")


def _require_numeric(schema: pa.Schema, column: str, what: str) -> None:
    t = value_type(schema.field(column).type)
    if not is_numeric(t):
        raise SchemaError(f"column '{column}' has type {t} but {what} needs numbers",
                          hint="cast it, or choose another column")


def _require_comparable(schema: pa.Schema, label: str, prediction: str) -> None:
    a, b = (value_type(schema.field(c).type) for c in (label, prediction))
    if is_text(a) != is_text(b) or not (is_text(a) or is_numeric(a)):
        raise SchemaError(f"prediction '{prediction}' ({b}) cannot be compared with label "
                          f"'{label}' ({a})", hint="predictions must be class labels of the "
                          "label's kind; is `prediction:` the right column?")


def _require_probability(schema: pa.Schema, column: str, classes: list[Any] | None) -> None:
    t = schema.field(column).type
    is_list = (pa.types.is_list(t) or pa.types.is_large_list(t)
               or pa.types.is_fixed_size_list(t))
    if is_list and not pa.types.is_floating(t.value_type) or not (
            is_list or pa.types.is_floating(t)):
        raise SchemaError(f"probability column '{column}' has type {t}",
                          hint="expected float64 (binary) or list<double> (multiclass)")
    if not is_list and classes is not None and len(classes) > 2:
        raise SchemaError(f"probability column '{column}' is one number per row but "
                          f"{len(classes)} classes are given",
                          hint="multiclass probability is a list<double> per row")


def require_groupable(schema: pa.Schema, columns: list[str]) -> None:
    """Plan time: the ``by`` columns are in the input, each of distinct values."""
    require_columns(schema, columns, "by column")
    for name in columns:
        t = value_type(schema.field(name).type)
        if pa.types.is_nested(t) or pa.types.is_floating(t):
            raise SchemaError(f"by column '{name}' is {t}: groups need distinct values "
                              "(strings, integers, booleans, dates)",
                              hint="`bucketize` or `cast` it first, or group by another column")


class ByGroups:
    """What ``by`` does in a step that measures rows (evaluate, evaluate_clusters): the
    rows of each value of the columns (a null is a value of its own) measured apart, at
    most ``max_groups`` groups, named ``col=value,...`` in the run record in the order of
    their values."""

    def __init__(self, step: str, by: list[str], max_groups: int):
        self.step, self.by, self.max_groups = step, by, max_groups

    def rows(self, part: pa.Table) -> list[tuple[tuple, np.ndarray]]:
        """(the values of ``by``, the positions of the rows that have them), per group
        of ``part``."""
        keys = part.select(self.by)
        keys = keys.append_column("__row", pa.array(np.arange(part.num_rows, dtype=np.int64)))
        grouped = keys.group_by(self.by, use_threads=False).aggregate([("__row", "list")])
        values = list(zip(*(grouped.column(c).to_pylist() for c in self.by), strict=True))
        rows = grouped.column("__row_list")
        self.check(values)
        return [(key, rows[i].values.to_numpy()) for i, key in enumerate(values)]

    def check(self, groups: Collection[Any]) -> None:
        """A DataError where there are more than ``max_groups`` groups."""
        if len(groups) > self.max_groups:
            raise DataError(f"{self.step} by {', '.join(self.by)}: more than "
                            f"{self.max_groups} groups",
                            hint="group by fewer or coarser columns, or raise max_groups")

    def merged(self, a: dict[tuple, Any], b: dict[tuple, Any], add: Callable[[Any, Any], Any]
               ) -> dict[tuple, Any]:
        """Two partials' groups as one's, a group both hold ``add``-ed."""
        groups = dict(a)
        for key, stats in b.items():
            groups[key] = add(groups[key], stats) if key in groups else stats
        self.check(groups)
        return groups

    def label(self, key: tuple) -> str:
        """A group's name in the run record (region=east)."""
        return ",".join(f"{c}={_shown(v)}" for c, v in zip(self.by, key, strict=True))

    @staticmethod
    def ordered(groups: dict[tuple, Any]) -> list[tuple]:
        """The groups' keys in order of their values, nulls last."""
        return sorted(groups, key=lambda key: tuple((v is None, "" if v is None else v)
                                                    for v in key))


def _added(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partials' NDCG sums, weights, rows and queries added."""
    return {k: a[k] + b[k] for k in ("ndcg", "weight", "rows", "queries")}


def _shown(value: Any) -> str:
    """A group's value as its label shows it: null for a null, the text 'null' quoted
    (two groups never share a label), true / false for booleans."""
    if value is None:
        return "null"
    if value == "null":
        return "'null'"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _no_nulls(part: pa.Table, column: str, what: str) -> pa.Array:
    values = part.column(column)
    if values.null_count:
        raise DataError(f"{what} column '{column}' has {values.null_count} null values",
                        hint=f"drop or fill rows with a null '{column}' before evaluate")
    values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def _values(part: pa.Table, column: str, numeric: bool, what: str) -> np.ndarray:
    values = _no_nulls(part, column, what)
    if numeric:
        out = column_to_numpy(values)
    else:
        out = values.to_numpy(zero_copy_only=False)
        if is_text(values.type):
            out = out.astype(str)
    if out.dtype.kind == "f" and np.isnan(out).any():
        raise DataError(f"{what} column '{column}' has NaN values",
                        hint=f"drop or fill rows with a NaN '{column}' before evaluate")
    return out


def _probability(part: pa.Table, column: str) -> np.ndarray:
    """A double column's values, a list column's as (rows, classes)."""
    _no_nulls(part, column, "probability")  # a null is no logit: its own hint
    matrix = probability_matrix(part, column)
    return matrix[:, 0] if pa.types.is_floating(part.schema.field(column).type) else matrix


def _weights(part: pa.Table, column: str) -> np.ndarray:
    out = column_to_numpy(_no_nulls(part, column, "weight"))
    if np.isnan(out).any() or (out < 0).any():
        raise DataError(f"weight column '{column}' has NaN or negative values",
                        hint="weights must be >= 0")
    return out
