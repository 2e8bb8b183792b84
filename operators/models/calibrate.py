"""calibrate: a classifier's probabilities mapped to frequencies, fitted on scored rows.

Boosted trees and forests rank rows well, but their ``probability`` is not how often the
class happens among rows given that probability. ``calibrate`` follows rows a model
scored (a model step, or ``score`` on rows it was not trained on) and learns, per class,
an increasing map from the model's probability to the class's frequency, as
scikit-learn's ``CalibratedClassifierCV`` with a frozen (prefit) model does:
``isotonic`` (its ``IsotonicRegression(out_of_bounds="clip")``, MLlib's
``IsotonicRegression``) or ``sigmoid`` (Platt's ``1 / (1 + exp(a p + b))``, its
``_sigmoid_calibration``, of the probability or, after a model with a raw score, of
the log-odds: ``sigmoid_of``). More than two classes: one map per class (one-vs-rest), the
calibrated probabilities then divided by their sum (uniform where all are 0).

One pass, exact over partitions: per partition and class column, the weight of each
(probability value, label) pair; partials merge by value. The driver fits on the merged
points: the pool-adjacent-violators algorithm on the weighted mean label of each value
(scikit-learn's, ties included: values closer than 1e-15 to the first of a run are one
point), or Platt's log loss, which is exact on the aggregated points. A fit of more
than ``max_points`` distinct values per class counts each value as the centre of its
bin of ``max_points`` equal bins over [0, 1] instead: a map of each value alone, so it
merges the same way whatever the partitioning.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import (
    DataError,
    Estimator,
    MissingColumnError,
    ParamError,
    Params,
    SchemaError,
    SluiceError,
    Transform,
    register,
    register_fitted,
    require_columns,
)
from operators.models.common import (
    PREDICTION,
    PROBABILITY,
    class_label_type,
    label_column,
    probability_array,
    probability_matrix,
    put_column,
    row_weights,
    sigmoid,
)

TIE = np.finfo(np.float64).resolution
"""Values closer than this to the first of a run of values are one point (scikit-learn's
``_make_unique``)."""

RAW_SCORE_MODELS = ("logistic_regression", "gradient_boosted_trees")
"""Models whose probability is a sigmoid (softmax) of a raw score, scikit-learn's
``decision_function``: its calibration fits a sigmoid of that score, the log-odds."""

READ_HINT = ("calibrate reads the probabilities a model wrote: check the steps between "
             "the model and this one")

AFTER_A_MODEL = ("put calibrate after a model step (logistic_regression, "
                 "gradient_boosted_trees...) or a score step, on rows the model was not "
                 "trained on")


class CalibrateParams(Params):
    label: str = Field(description="the column of the classes the model predicts")
    method: Literal["isotonic", "sigmoid"] = Field(
        "isotonic", description="isotonic: any increasing map (step-wise, interpolated "
                                "between its steps); sigmoid: Platt's 1 / (1 + exp(a p + b)), "
                                "for few rows (a thousand or less)")
    sigmoid_of: Literal["auto", "probability", "log_odds"] = Field(
        "auto", description="what the sigmoid is a function of: the probability "
                            "(scikit-learn's for a model without a decision_function: a "
                            "forest, an MLP) or its log-odds log(p / (1 - p)) (scikit-learn's "
                            "for one with: logistic regression, boosting); auto: the "
                            "log-odds after logistic_regression and gradient_boosted_trees, "
                            "else the probability")
    probability: str = Field(PROBABILITY, description="the model's probability column: "
                                                      "a double (two classes), or a list of "
                                                      "doubles in class order")
    weight: str | None = Field(None, description="column of non-negative row weights")
    max_points: int = Field(1_000_000, ge=2, description="the most distinct probability "
                                                         "values a class's fit keeps; more: "
                                                         "each counts as the centre of its "
                                                         "bin of max_points equal bins over "
                                                         "[0, 1]")


def probability_classes(t: pa.DataType) -> str | None:
    """``binary`` for a floating probability, ``list`` for a list of them, else None."""
    if pa.types.is_floating(t):
        return "binary"
    if ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and pa.types.is_floating(t.value_type)):
        return "list"
    return None


def classes_type(t: pa.DataType) -> pa.DataType | None:
    """The type of the classes a label column of type ``t`` holds: a class label's, or a
    floating label's (a model of ``task: classification`` has those classes)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return t if pa.types.is_floating(t) else class_label_type(t)


def class_kind(t: pa.DataType | None) -> str | None:
    """What classes of type ``t`` are: integers, numbers, booleans or text, whatever
    their width (an int32 label and a model's int64 prediction hold the same classes)."""
    if t is None:
        return None
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "floating"
    return "boolean" if pa.types.is_boolean(t) else "text"


def coarsened(x: np.ndarray, bins: int) -> np.ndarray:
    """Each value as the centre of its bin of ``bins`` equal bins over [0, 1]."""
    return (np.minimum(np.floor(x * bins), bins - 1) + 0.5) / bins


def _points(x: np.ndarray, labels: pa.Array, weights: np.ndarray) -> pa.Table:
    """The weight of each (value, label) pair."""
    rows = pa.table({"x": pa.array(x, pa.float64()), "label": labels,
                     "w": pa.array(weights, pa.float64())})
    summed = rows.group_by(["x", "label"]).aggregate([("w", "sum")])
    return summed.select(["x", "label", "w_sum"]).rename_columns(["x", "label", "w"])


def _more_than(points: pa.Table, m: int) -> bool:
    """Whether ``points`` has more than ``m`` distinct values (counted only where its
    rows, a value's and a label's, could be more)."""
    return points.num_rows > m and pc.count_distinct(points.column("x")).as_py() > m


@register("calibrate")
class Calibrate(Estimator):
    """A classifier's `probability` calibrated to frequencies, and its `prediction` with it.

    Goes after rows a model scored, with their label: a model step's rows, or better a
    `score` step's on rows the model was not trained on (a model's own training rows
    make its probabilities look truer than they are). Fits, per class, an increasing map
    from the model's probability to the class's frequency: `isotonic` (scikit-learn's
    `IsotonicRegression`, MLlib's) or `sigmoid` (Platt scaling), as scikit-learn's
    `CalibratedClassifierCV` of a frozen model. Its sigmoid is of the model's raw score
    where the model has one (a `decision_function`): `sigmoid_of: auto` fits it to the
    log-odds after `logistic_regression` and `gradient_boosted_trees` (their raw score,
    for two classes) and to the probability after any other model (a forest, an MLP) or
    a probability column the plan did not see a model make; `sigmoid_of` names either.
    More than two classes: a map per class, then divided by their sum. `prediction` is
    the most probable class again (for two: the positive one above 0.5); no other column
    changes. Saved after a `score` step, the model is the scored model with the
    calibration after it.

    ```yaml
    - op: score
      model: churn                  # on rows churn was not trained on
    - op: calibrate
      label: churned
      method: isotonic              # or sigmoid (Platt), for a thousand rows or fewer
    - op: save_model
      name: churn_calibrated
    ```
    A fit keeps every distinct probability (per class) up to `max_points`; past it, each
    counts as the centre of its bin of `max_points` equal bins over [0, 1] (so a
    probability moves by at most half a bin, 5e-7 by default).
    """

    numeric_kernels = False  # sorting and merging points; the map reads one column
    after_model = True
    Params = CalibrateParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        if p.method == "isotonic" and "sigmoid_of" in p.model_fields_set:
            raise ParamError("sigmoid_of is for method: sigmoid (an isotonic map is the "
                             "same of the probability or of its log-odds)",
                             hint="leave sigmoid_of out, or set method: sigmoid")
        named = [("label", p.label), ("probability", p.probability), ("weight", p.weight)]
        seen: dict[str, str] = {}
        for role, column in named:
            if column is None:
                continue
            if column in seen:
                raise ParamError(f"'{column}' is both the {seen[column]} and the {role}",
                                 hint=f"use another {role} column")
            seen[column] = role
        self.sigmoid_model: str | None = None  # bind_model's, for sigmoid_of: auto

    def bind_model(self, model: str | None) -> None:
        """``sigmoid_of: auto`` made the log-odds after a model of a raw score
        (``RAW_SCORE_MODELS``), the probability after any other or none known."""
        if self.params.sigmoid_of == "auto":
            self.sigmoid_model = model

    @property
    def sigmoid_of(self) -> str:
        """What the sigmoid is fitted to, ``auto`` resolved."""
        chosen = self.params.sigmoid_of
        if chosen != "auto":
            return chosen
        return "log_odds" if self.sigmoid_model in RAW_SCORE_MODELS else "probability"

    def plan_note(self) -> str | None:
        """What `sluice plan` says the sigmoid is fitted to, ``auto`` resolved."""
        if self.params.method != "sigmoid":
            return None
        why = ("" if self.params.sigmoid_of != "auto" else
               f" (sigmoid_of: auto, after {self.sigmoid_model})" if self.sigmoid_model
               else " (sigmoid_of: auto, no model step or score seen before it)")
        what = "log-odds" if self.sigmoid_of == "log_odds" else "probability"
        return f"fits the sigmoid to the model's {what}{why}"

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return [p.label, p.probability] + ([p.weight] if p.weight else [])

    def check_input(self, schema: pa.Schema) -> None:
        p = self.params
        if schema.get_field_index(p.probability) < 0:
            try:
                require_columns(schema, [p.probability], "probability column")
            except MissingColumnError as exc:
                raise MissingColumnError(exc.message, hint=AFTER_A_MODEL) from None
        require_columns(schema, [p.label], "label column")
        if p.weight:
            require_columns(schema, [p.weight], "weight column")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        p = self.params
        kind = probability_classes(schema.field(p.probability).type)
        if kind is None:
            raise SchemaError(f"probability column '{p.probability}' is "
                              f"{schema.field(p.probability).type}: a model's probability "
                              "is a double (two classes) or a list of doubles",
                              hint=AFTER_A_MODEL)
        label_type = classes_type(schema.field(p.label).type)
        if label_type is None:
            raise SchemaError(f"label column '{p.label}' is {schema.field(p.label).type}: "
                              "calibrate calibrates a classifier's classes (integer, "
                              "boolean, string, or numbers of a model of task: "
                              "classification)", hint="calibrate the label the model was "
                                                      "trained to predict")
        at = schema.get_field_index(PREDICTION)
        if at >= 0:
            predicted = schema.field(at).type
            if class_kind(classes_type(predicted)) != class_kind(label_type):
                raise SchemaError(f"label column '{p.label}' is {label_type} and the model's "
                                  f"'{PREDICTION}' is {predicted}: the labels are not the "
                                  "model's classes", hint="calibrate with the label the "
                                                          "model was trained on")
        if p.weight:
            t = schema.field(p.weight).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise SchemaError(f"weight column '{p.weight}' is {t}, not numeric",
                                  hint="cast it to float64")
        return schema

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        self.output_schema(schema)
        return {"label_type": classes_type(schema.field(self.params.label).type),
                "predicted": schema.get_field_index(PREDICTION) >= 0}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p = self.params
        labels = label_column(part, p.label).cast(state["label_type"])
        weights = row_weights(part, p.weight)
        kept = weights > 0  # scikit-learn leaves zero-weight rows out of an isotonic fit
        proba = probability_matrix(part, p.probability, hint=READ_HINT)
        labels = labels.filter(pa.array(kept)) if not kept.all() else labels
        proba, weights = proba[kept], weights[kept]
        predicted = None
        if state["predicted"]:
            column = part.column(PREDICTION)
            if column.null_count:
                raise DataError(f"'{PREDICTION}' has {column.null_count} null values",
                                hint=AFTER_A_MODEL)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            # its own type: an int64 prediction of an int32 label (the same classes)
            predicted = pc.unique(column.combine_chunks()).to_pylist()
        if part.num_rows == 0 or not kept.any():
            return {"points": None, "predicted": predicted, "coarse": False}
        points = [_points(proba[:, k], labels, weights) for k in range(proba.shape[1])]
        return self._bounded({"points": points, "predicted": predicted, "coarse": False})

    def _bounded(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``stats`` coarsened to the grid when any class has more than ``max_points``
        distinct values (``combine`` puts both sides on it when either is): each value
        maps to its bin alone, so coarsening then merging is merging then coarsening."""
        m = self.params.max_points
        points = stats["points"]
        if points is None or stats["coarse"] or not any(_more_than(t, m) for t in points):
            return stats
        grid = [_points(coarsened(np.asarray(t.column("x")), m), t.column("label"),
                        np.asarray(t.column("w"))) for t in points]
        return {**stats, "points": grid, "coarse": True}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        predicted = [s["predicted"] for s in (a, b) if s["predicted"] is not None]
        merged = list(dict.fromkeys(predicted[0] + predicted[1])) if len(predicted) == 2 \
            else predicted[0] if predicted else None
        if a["points"] is None or b["points"] is None:
            kept = a if b["points"] is None else b
            return {**kept, "predicted": merged}
        if len(a["points"]) != len(b["points"]):
            raise DataError(f"probability column '{self.params.probability}' has lists of "
                            f"{len(a['points'])} and of {len(b['points'])} values",
                            hint="a model writes one value per class, in every row")
        coarse = a["coarse"] or b["coarse"]
        m = self.params.max_points
        points = []
        for x, y in zip(a["points"], b["points"], strict=True):
            both = pa.concat_tables([x, y])
            if coarse:  # the other side's values on the grid too
                both = both.set_column(0, "x", pa.array(coarsened(
                    np.asarray(both.column("x")), m)))
            elif both.num_rows <= m:  # as is: the fit adds a value's rows up (a pair
                points.append(both)   # twice, once from each side, is the same weight)
                continue
            points.append(_points(np.asarray(both.column("x")), both.column("label"),
                                  np.asarray(both.column("w"))))
        return self._bounded({"points": points, "predicted": merged, "coarse": coarse})

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        p = self.params
        if stats["points"] is None:
            raise DataError("no rows to calibrate on" + (" (every row's weight is 0)"
                                                         if p.weight else ""),
                            hint="check the filters before this step")
        points = stats["points"]
        label_type = state["label_type"]
        classes = sorted(pc.unique(pa.concat_arrays(
            [t.column("label").combine_chunks() for t in points])).to_pylist())
        outputs = len(points)
        # the rows of weight 0 are left out: a class may be among those only
        among = " among the rows of weight > 0" if p.weight else ""
        if len(classes) < 2:
            raise DataError(f"label column '{p.label}' has a single class ({classes[0]!r}) "
                            f"in the rows to calibrate on{among}",
                            hint="calibrate on rows of every class the model predicts")
        wanted = 2 if outputs == 1 else outputs
        if len(classes) != wanted:
            shown = ", ".join(repr(c) for c in classes[:20])
            raise DataError(f"label column '{p.label}' has {len(classes)} classes ({shown})"
                            f"{among} and the model's probability is for {wanted}",
                            hint="calibrate with the label the model was trained on, on "
                                 "rows of each of its classes")
        if stats["predicted"] is not None:
            strange = [c for c in stats["predicted"] if c not in classes]
            if strange:
                raise DataError(f"the model predicts {strange[0]!r}, which label column "
                                f"'{p.label}' never is: the labels are not the model's "
                                "classes", hint="calibrate with the label the model was "
                                                "trained on")
        positives = classes[1:] if outputs == 1 else classes
        maps, counted = [], []
        for table, positive in zip(points, positives, strict=True):
            x, total, hits = merged_points(table, positive, label_type)
            counted.append(len(x))
            if p.method == "isotonic":
                maps.append(isotonic_points(x, hits / total, total))
            else:
                maps.append(sigmoid_fit(self._sigmoid_input(x), total, hits))
        return {**state, "classes": classes, "maps": maps, "coarse": stats["coarse"],
                "points": counted}, True

    def _sigmoid_input(self, values: np.ndarray) -> np.ndarray:
        return log_odds(values) if self.sigmoid_of == "log_odds" else values

    def _resolved(self) -> CalibrateParams:
        """The params, ``sigmoid_of: auto`` resolved (a saved calibration says which)."""
        if self.params.method == "isotonic" or self.params.sigmoid_of != "auto":
            return self.params
        return self.params.model_copy(update={"sigmoid_of": self.sigmoid_of})

    def fitted(self, state: dict[str, Any]) -> CalibrateFitted:
        return CalibrateFitted(self._resolved(), state["classes"], state["label_type"],
                               state["maps"])

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"classes": state["classes"], "points": state["points"],
                               "coarsened": state["coarse"]}
        if self.params.method == "isotonic":
            out["steps"] = [len(x) for x, _ in state["maps"]]
        else:
            out["a"], out["b"] = ([fit[i] for fit in state["maps"]] for i in (0, 1))
            out["sigmoid_of"] = self.sigmoid_of
        return out


def merged_points(table: pa.Table, positive: Any, label_type: pa.DataType
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct values in order, each with its rows' weight and its positive rows'
    weight; values closer than ``TIE`` to the first of their run are one (the first)."""
    x = np.asarray(table.column("x"), dtype=np.float64)
    w = np.asarray(table.column("w"), dtype=np.float64)
    mine = np.asarray(pc.equal(table.column("label"), pa.scalar(positive, label_type))
                      .to_numpy(zero_copy_only=False), dtype=bool)
    values, inverse = np.unique(x, return_inverse=True)
    total = np.bincount(inverse, weights=w, minlength=len(values))
    hits = np.bincount(inverse, weights=np.where(mine, w, 0.0), minlength=len(values))
    group = tie_groups(values)
    if group[-1] == len(values) - 1:
        return values, total, hits
    first = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    return (values[first], np.bincount(group, weights=total),
            np.bincount(group, weights=hits))


def tie_groups(values: np.ndarray) -> np.ndarray:
    """Each sorted distinct value's point: a new one where it is ``TIE`` or more past
    the first value of the current point (scikit-learn's ``_make_unique``)."""
    close = np.flatnonzero(np.diff(values) < TIE) + 1
    starts = np.ones(len(values), dtype=bool)
    # only a value close to the one before may join its point: a value TIE or more past
    # the one before is past its point's first too
    current, before = 0.0, -2
    for i in close.tolist():
        if i - 1 != before:  # the value before starts a point
            current = values[i - 1]
        if values[i] - current >= TIE:
            current = values[i]
        else:
            starts[i] = False
        before = i
    return np.cumsum(starts) - 1


def isotonic_points(x: np.ndarray, y: np.ndarray, w: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The breakpoints of the increasing fit of ``y`` at ``x`` (weights ``w``), in
    [0, 1], with the points inside a flat stretch left out (they change no
    interpolation): scikit-learn's ``IsotonicRegression`` fitted."""
    try:  # here, on the driver: a spark-submit archive's workers may have no SciPy
        from scipy.optimize import isotonic_regression
    except ImportError:
        raise SluiceError("calibrate's isotonic fit needs SciPy 1.12 or later where the "
                          "pipeline is planned (the driver)",
                          hint="install scipy there, or use method: sigmoid") from None
    fitted = np.clip(isotonic_regression(y, weights=w, increasing=True).x, 0.0, 1.0)
    keep = np.ones(len(fitted), dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return x[keep], fitted[keep]


def log_odds(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), p kept within float64's eps of 0 and 1 (finite: +-36)."""
    eps = np.finfo(np.float64).eps
    q = np.clip(p, eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def sigmoid_fit(x: np.ndarray, total: np.ndarray, hits: np.ndarray) -> tuple[float, float]:
    """Platt's ``(a, b)`` of ``P = 1 / (1 + exp(a x + b))``: the minimum of the log loss
    against his smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (N: the
    classes' weights), by Newton's method with step halving to convergence."""
    misses = total - hits
    prior1, prior0 = float(hits.sum()), float(misses.sum())
    high, low = (prior1 + 1.0) / (prior1 + 2.0), 1.0 / (prior0 + 2.0)
    # per point: its weight and the mean target of its rows
    target = (hits * high + misses * low) / total

    def loss(ab: np.ndarray) -> float:
        z = -(ab[0] * x + ab[1])  # the log-odds of the class
        return float(total @ (np.logaddexp(0.0, z) - target * z))

    ab = np.array([0.0, np.log((prior0 + 1.0) / (prior1 + 1.0))])
    current = loss(ab)
    for _ in range(200):
        z = -(ab[0] * x + ab[1])
        q = sigmoid(z, np)
        residual = total * (q - target)
        # derivatives in (a, b): dz/da = -x, dz/db = -1
        gradient = -np.array([residual @ x, residual.sum()])
        curvature = total * q * (1.0 - q)
        hessian = np.array([[curvature @ (x * x), curvature @ x],
                            [curvature @ x, curvature.sum()]])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        scale = 1.0
        while scale > 1e-10:
            trial = ab - scale * step
            after = loss(trial)
            if after <= current:
                break
            scale /= 2
        else:
            break
        moved = np.abs(trial - ab).max()
        ab, current = trial, after
        if moved <= 1e-14 * max(1.0, np.abs(ab).max()):
            break
    return float(ab[0]), float(ab[1])


@register_fitted("calibrate.fitted")
class CalibrateFitted(Transform):
    """The calibration maps: per class, isotonic breakpoints or Platt's (a, b)."""

    numeric_kernels = False
    after_model = True  # adjusts the predictions of the model before it
    Params = CalibrateParams

    def __init__(self, params: CalibrateParams, classes: list[Any], label_type: pa.DataType,
                 maps: list[tuple[Any, Any]]):
        super().__init__(params)
        self.classes, self.label_type, self.maps = list(classes), label_type, list(maps)

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return [self.params.probability]

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        name = self.params.probability
        if schema.get_field_index(name) < 0:
            try:
                require_columns(schema, [name], "probability column")
            except MissingColumnError as exc:
                raise MissingColumnError(exc.message, hint=AFTER_A_MODEL) from None
        kind = probability_classes(schema.field(name).type)
        if kind != ("binary" if len(self.maps) == 1 else "list"):
            raise SchemaError(f"probability column '{name}' is {schema.field(name).type}; "
                              f"calibrate was fitted on a model of {len(self.classes)} classes",
                              hint=AFTER_A_MODEL)
        return schema

    def calibrated(self, proba: np.ndarray) -> np.ndarray:
        """(rows, classes) calibrated probabilities of the model's (rows, outputs), as
        scikit-learn's calibrated classifier makes them."""
        columns = []
        for k, fit in enumerate(self.maps):
            values = proba[:, k]
            if self.params.method == "isotonic":
                x, y = fit
                columns.append(np.interp(np.clip(values, x[0], x[-1]), x, y))
            else:
                a, b = fit
                if self.params.sigmoid_of == "log_odds":
                    values = log_odds(values)
                columns.append(sigmoid(-(a * values + b), np))
        if len(self.maps) == 1:
            out = np.column_stack([1.0 - columns[0], columns[0]])
        else:
            out = np.column_stack(columns)
            total = out.sum(axis=1, keepdims=True)
            out = np.divide(out, total, out=np.full_like(out, 1.0 / len(self.classes)),
                            where=total != 0)
        out[(out > 1.0) & (out <= 1.0 + 1e-5)] = 1.0
        return out

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        self.output_schema(part.schema)
        name = self.params.probability
        proba = self.calibrated(probability_matrix(part, name, len(self.maps), READ_HINT))
        field = part.schema.field(name)
        column = probability_array(proba, len(self.maps) != 1)
        out = put_column(part, field, column.cast(field.type))
        at = part.schema.get_field_index(PREDICTION)
        if at >= 0:
            predicted = part.schema.field(at)
            most = np.argmax(proba, axis=1)
            classes = pa.array(self.classes, type=self.label_type)
            if pa.types.is_dictionary(predicted.type):  # the classes are its dictionary
                t = predicted.type
                labels = pa.DictionaryArray.from_arrays(
                    pa.array(most, t.index_type), classes.cast(t.value_type), ordered=t.ordered)
            else:
                labels = classes.take(pa.array(most)).cast(predicted.type)
            out = put_column(out, predicted, labels)
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self.params.method == "isotonic":
            arrays = {f"{axis}_{k}": values for k, fit in enumerate(self.maps)
                      for axis, values in zip("xy", fit, strict=True)}
        else:
            arrays = {"sigmoid": np.array(self.maps, dtype=np.float64).reshape(-1, 2)}
        meta = {"params": self.params.model_dump(mode="json"), "classes": self.classes,
                "label_type": str(self.label_type), "outputs": len(self.maps)}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> CalibrateFitted:
        params = CalibrateParams(**meta["params"])
        if params.method == "isotonic":
            maps = [(np.asarray(arrays[f"x_{k}"], dtype=np.float64),
                     np.asarray(arrays[f"y_{k}"], dtype=np.float64))
                    for k in range(meta["outputs"])]
        else:
            maps = [(float(a), float(b)) for a, b in np.asarray(arrays["sigmoid"])]
        return cls(params, meta["classes"], pa.type_for_alias(meta["label_type"]), maps)
