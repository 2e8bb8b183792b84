"""Tuning a model step: every combination of the values a step's ``tune:`` lists is
fitted on the same training rows and compared on the same held-out rows (the step's
``validation_fraction`` and ``seed``); the best is the step's model (MLlib's
TrainValidationSplit, scikit-learn's GridSearchCV with one held-out split).

```yaml
- id: model
  op: gradient_boosted_trees
  label: churned
  validation_fraction: 0.2
  tune:                      # every combination: 3 x 2 fits
    max_depth: [3, 4, 6]
    learning_rate: [0.05, 0.1]
  tune_metric: roc_auc       # default: log_loss for classes, rmse for numbers
                             # (pinball_loss for a model of loss: quantile)
```

With ``tune_samples: n`` only n of the combinations are tried, chosen at random by the
step's ``seed`` (a random search, for grids of more than 100 combinations). With
``tune_folds: k`` the combinations are compared by k-fold cross-validation
instead (MLlib's CrossValidator): fold i holds out the rows whose hash falls in
[i/k, (i+1)/k), every combination is fitted k times and scored by the mean of its
folds' metric, and the best values are then fitted as the step says (on all its rows,
or holding out its own ``validation_fraction``): k x combinations + 1 fits.

A key ``<step>.<param>`` varies the feature step that feeds the model with it
(scikit-learn's GridSearchCV over a Pipeline, MLlib's ParamGridBuilder over a Pipeline's
stages):

```yaml
- id: words
  op: vectorize_text
  columns: [text]
- id: nb
  op: naive_bayes
  label: topic
  model_type: multinomial
  validation_fraction: 0.2
  tune:
    smoothing: [0.1, 1.0]
    words.max_features: [500, 2000]
```

Every candidate fits the feature step on the rows the model trains on (the held-out rows
are no step's training rows), then the model on its transform of every row, holding out
the rows ``HoldoutPositions`` placed by the hash of the row as the feature step read it:
the same rows for every candidate, whatever columns its feature step makes. The held-out
rows go through the feature step as new rows would (``HeldOutView``: a cross-fitted
target_encode's training view is for the rows it was fitted on).

A ``kmeans`` step is tuned the same way, by how its fitted centres cluster the held-out
rows (MLlib's ClusteringEvaluator in a TrainValidationSplit; scikit-learn's loop over k
with ``silhouette_score``):

```yaml
- id: segments
  op: kmeans
  features: [tenure, monthly_charges]
  validation_fraction: 0.2   # or tune_folds: 5
  tune:
    k: [2, 3, 4, 5, 6]       # k needs no value on the step when tune lists it
  tune_metric: silhouette    # the default; calinski_harabasz (higher is better),
                             # davies_bouldin or inertia (lower is better)
```

Its ``features`` and ``distance_measure`` are fixed too (the candidates are compared
in their space; with ``distance_measure: cosine`` by the cosine silhouette or the inertia,
Calinski-Harabasz and Davies-Bouldin being Euclidean), and ``tune_metric: inertia``
cannot pick ``k``: the held-out rows' inertia falls as k
grows, so the largest k would always win. A candidate whose held-out rows fall in one
cluster (or each in its own) has no silhouette: it loses, with a note in its entry.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from operators.base import Estimator, Operator, Params, SluiceError, Transform, suggest
from operators.evaluate.clusters import EUCLIDEAN_ONLY
from operators.evaluate.metrics import (
    CLUSTERING_COMPARABLE,
    COMPARABLE,
    LOWER_IS_BETTER,
    MIXTURE_COMPARABLE,
    default_metric,
)
from operators.hashing import positions
from operators.models.common import HOLDOUT_POSITION, placed_in

MAX_CANDIDATES = 100
"""The most combinations one step may try."""
MAX_FOLDS = 20
NAMED_ALIKE = 3
"""The most candidate fits a warning line of a tune names besides its first."""
FIXED = ("label", "weight", "validation_fraction", "validation_start", "seed", "group")
"""What a tuned step cannot vary, of a model that takes it: the rows and what they are
compared on (a ranking's group: its queries, whole ones held out)."""
TUNABLE = ("a model of a label (logistic_regression, linear_regression, the trees, mlp, "
           "naive_bayes), "
           "kmeans or gaussian_mixture")


@dataclass
class FeatureTuning:
    """The feature step a model's ``tune`` varies with it (``<step>.<param>`` keys): the
    step, its class, and its parameters in each combination (an operator is built for
    each fit: an estimator keeps what it fitted)."""

    step: str
    cls: type[Operator]
    params: list[dict[str, Any]] = field(default_factory=list)

    def build(self, i: int) -> Operator:
        return self.cls.create(self.cls.Params(**self.params[i]))


@dataclass
class Tuning:
    """A step's candidates: each combination of the tuned values and its operator."""

    metric: str | None  # None: log_loss, pinball_loss or rmse, by the fitted model
    combos: list[dict[str, Any]] = field(default_factory=list)
    ops: list[Operator] = field(default_factory=list)  # each combination as the step says
    folds: list[list[Operator]] = field(default_factory=list)  # and per fold (tune_folds)
    results: list[dict[str, Any]] = field(default_factory=list)
    feature: FeatureTuning | None = None  # a feature step tuned with the model

    def metric_for(self, validation: dict[str, Any]) -> str:
        if self.metric is not None:
            return self.metric
        return default_metric(validation) if validation else "rmse"

    def score(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """The compared metric of a fit's metrics, and its value."""
        validation = metrics.get("validation") or {}
        if validation.get("count", 1) == 0:
            raise SluiceError("tune: the step held out no rows to compare the candidates on",
                              hint="raise validation_fraction, or give the step more rows")
        name = self.metric_for(validation)
        if name not in validation:
            shown = ", ".join(k for k in validation
                              if k in COMPARABLE or k in CLUSTERING_COMPARABLE) or "none"
            raise SluiceError(f"tune_metric: the model reports no validation {name}",
                              hint=f"it reports: {shown}")
        return name, float(validation[name])

    def best(self) -> int:
        """The position of the best candidate (the first of equals); one of no value (a
        NaN: a silhouette of one cluster) loses, and when every one is NaN, an error."""
        name = self.results[0]["metric"]
        values = [r["value"] for r in self.results]
        if all(v != v for v in values):
            notes = sorted({r["note"] for r in self.results if "note" in r})
            raise SluiceError(f"tune: no candidate has a held-out {name}"
                              + (f" ({'; '.join(notes)})" if notes else ""),
                              hint="hold out more rows (validation_fraction), or try other "
                                   "values")
        sign = 1.0 if name in LOWER_IS_BETTER else -1.0
        ranked = [sign * v if v == v else float("inf") for v in values]
        return ranked.index(min(ranked))


class PositionParams(Params):
    seed: int = 0
    by: str | None = None  # a ranking's query column: whole queries held out


class HoldoutPositions(Transform):
    """Each row's place in [0, 1) by the hash of the row as it is here (or of its query),
    with the model's seed: where the model's held-out window is taken when a feature step
    between here and it is tuned with it (``HOLDOUT_POSITION``; the same place the
    model's own hash gives a row it sees)."""

    name = "tune.positions"
    numeric_kernels = False
    Params = PositionParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema.append(pa.field(HOLDOUT_POSITION, pa.float64()))

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        by = None if self.params.by is None else [self.params.by]
        return part.append_column(HOLDOUT_POSITION,
                                  pa.array(positions(part, self.params.seed, by)))


class WindowParams(Params):
    fraction: float
    start: float = 0.0


class TrainingRows(Transform):
    """The rows outside the model's held-out window: what a feature step tuned with the
    model is fitted on (as scikit-learn's GridSearchCV fits a Pipeline's steps on the
    training folds), so that the held-out rows' metrics are of rows no step saw."""

    name = "tune.training_rows"
    numeric_kernels = False
    Params = WindowParams

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        held = placed_in(part, self.params.fraction, self.params.start)
        return part.filter(pa.array(~held))


class ViewParams(WindowParams):
    drop: bool = False  # the position column too (the rows after the tune)


class HeldOutView(Transform):
    """A feature step tuned with its model, as it hands the model its rows: the rows it
    was fitted on through its ``training_view`` (target_encode's cross-fitted encodings,
    folded as the fit folded them), the held-out rows, which it never saw, as it scores
    new rows (as scikit-learn's GridSearchCV transforms a validation fold with the fitted
    Pipeline). ``drop``: without ``HOLDOUT_POSITION``, the rows after the tune."""

    name = "tune.held_out_view"
    numeric_kernels = False
    Params = ViewParams

    def __init__(self, params: Any = None, fitted: Transform | None = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        assert fitted is not None
        self.fitted = fitted

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return self.fitted.input_columns(schema)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        out = self.fitted.output_schema(schema)
        return out.remove(out.get_field_index(HOLDOUT_POSITION)) if self.params.drop else out

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        training = self.fitted.training_view()
        held = placed_in(part, self.params.fraction, self.params.start)
        if training is self.fitted or not held.any():
            out = training.transform(part, xp)
        elif held.all():
            out = self.fitted.transform(part, xp)
        else:
            order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
            both = pa.concat_tables([training.transform(part.filter(pa.array(~held)), xp),
                                     self.fitted.transform(part.filter(pa.array(held)), xp)])
            out = both.take(pa.array(np.argsort(order)))
        return out.drop_columns([HOLDOUT_POSITION]) if self.params.drop else out


def _combination(index: int, lists: list[list[Any]]) -> list[Any]:
    """The ``index``-th combination of ``itertools.product(*lists)``."""
    out = []
    for values in reversed(lists):
        index, at = divmod(index, len(values))
        out.append(values[at])
    return out[::-1]


def label_of(combo: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in combo.items())


_FIGURE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PLURAL = re.compile(r"#( [a-z]+?)s\b")
"""A counted noun after a figure (# iterations): alike whatever the count, 1 iteration
or 2 iterations."""


def candidate_warnings(said: list[tuple[str, str]], fits: int) -> list[str]:
    """The warnings of a tune's candidate fits (``said``: each fit's label, as
    ``label_of`` and its fold name it, and a warning it gave; ``fits``: how many fits
    the tune made), a line per warning that differs by more than its figures (a
    gradient norm, the max_iter reached), in the order first said: the first fit that
    gave it, its text, and how many more did, naming a few (a grid of 20 candidates x 5
    folds that all stop at max_iter: one line, not 100), and of how many fits in all."""
    alike: dict[str, list[tuple[str, str]]] = {}
    for which, message in said:
        alike.setdefault(_PLURAL.sub(r"#\1", _FIGURE.sub("#", message)), []).append(
            (which, message))
    lines = []
    for (which, message), *more in alike.values():
        line = f"tune candidate {which}: {message}"
        if more:
            named = "; ".join(w for w, _ in more[:NAMED_ALIKE])
            rest = len(more) - NAMED_ALIKE
            line += (f"; so did {len(more)} more candidate fit{'s' * (len(more) > 1)}: "
                     f"{named}" + (f"; and {rest} more" if rest > 0 else ""))
        lines.append(f"{line} ({len(more) + 1} of the tune's {fits} candidate fits)")
    return lines


def chosen_unconverged(best: str, fits: int, tune: Any) -> str:
    """The warning of a tune whose every candidate fit (``fits``) stopped unconverged:
    the best values (``best``) were chosen among fits that did not converge."""
    listed = tune.get("max_iter") if isinstance(tune, dict) else None
    raise_it = (f"list larger max_iter values in the tune (its largest is {max(listed)})"
                if isinstance(listed, list) and listed
                and all(isinstance(v, int | float) for v in listed)
                else "raise the step's max_iter")
    return (f"tune chose {best} from fits that did not converge: none of its {fits} "
            f"candidate fits converged, so their scores rank unfinished models; {raise_it} "
            "(or standardise the features) and run again")


def untuned_defaults(cls: type[Operator], params: dict[str, Any], tune: Any
                     ) -> dict[str, Any]:
    """The first value ``tune`` lists of each required parameter the step leaves out
    (kmeans' k): the step is planned with it, and each candidate with its own."""
    if not isinstance(tune, dict):
        return {}
    fields = cls.Params.model_fields
    return {name: values[0] for name, values in tune.items()
            if name in fields and fields[name].is_required() and name not in params
            and isinstance(values, list) and values}


def feature_keys(tune: Any) -> dict[str, dict[str, Any]]:
    """A model step's ``tune`` keys that name another step's parameter
    (``words.max_features``), by step: ``{step: {param: values}}``."""
    out: dict[str, dict[str, Any]] = {}
    if isinstance(tune, dict):
        for key, values in tune.items():
            if isinstance(key, str) and "." in key:
                step, _, param = key.partition(".")
                out.setdefault(step, {})[param] = values
    return out


def feature_defaults(cls: type[Operator], tuned: dict[str, Any], params: dict[str, Any]
                     ) -> dict[str, Any]:
    """The first value a model's ``tune`` lists of each parameter of a feature step it
    tunes: the step is planned with it (select_features' k given only there); the
    model's step reports what is wrong with the others."""
    return {name: values[0] for name, values in tuned.items()
            if name in cls.Params.model_fields and name not in params
            and isinstance(values, list) and values}


def check_feature_step(step: str, param: str, values: Any, feature: Any, model_input: str | None
                       ) -> str | None:
    """What is wrong with tuning ``step.param`` from a model step (``feature``: the planned
    step named, or None), or None."""
    if feature is None:
        return f"tune: '{step}.{param}': no step '{step}' is planned before this one"
    if step != model_input:
        return (f"tune: '{step}.{param}': step '{step}' is not this step's input "
                f"('{model_input}'): a feature step is tuned with the model it feeds "
                "directly (make it the step before the model, or tune it there)")
    fcls = type(feature.op)
    if not isinstance(feature.op, Estimator) or "validation_fraction" in fcls.Params.model_fields:
        return (f"tune: '{step}.{param}': step '{step}' ({fcls.name}) fits nothing to tune "
                "with this one" if not isinstance(feature.op, Estimator) else
                f"tune: '{step}.{param}': step '{step}' is a model; tune it on its own step")
    if feature.tuning is not None:
        return f"tune: '{step}.{param}': step '{step}' is tuned on its own step already"
    known = list(fcls.Params.model_fields)
    if param not in known:
        return (f"tune: unknown parameter '{param}' of step '{step}'{suggest(param, known)} "
                f"({fcls.name} takes: {', '.join(known)})")
    if param in FIXED or param in ("columns", "features"):
        return (f"tune cannot vary '{step}.{param}': the feature step reads the same columns "
                "and rows in every candidate")
    if not isinstance(values, list) or not values:
        return (f"tune: '{step}.{param}' must list the values to try, e.g. {step}.{param}: "
                "[a, b]")
    if param in feature.spec.params:
        return (f"tune: '{step}.{param}' is set on step '{step}' too; give its values in tune "
                "only")
    return None


def _where(err: dict[str, Any]) -> str:
    """The parameter a pydantic error is about (dotted where it is nested)."""
    return ".".join(str(p) for p in err["loc"])


def _refused(err: dict[str, Any], with_input: bool = True) -> str:
    """A candidate's parameter error as tune says it (``with_input``: the value too)."""
    text = err["msg"].removeprefix("Value error, ").rstrip(".")
    got = f" (got {err['input']!r})" if with_input and "input" in err else ""
    return f"parameter '{_where(err)}': {text}{got}"


def _values_refused(cls: type[Operator], params: dict[str, Any], tune: dict[str, Any],
                    problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Where some of a step's tune keys have problems (said), the values its other keys
    list that the step refuses, as its candidates would have said them (each key's
    first): one validate shows them all, not one a round."""
    said = {key for key, _ in problems}
    good = {k: v for k, v in tune.items() if isinstance(k, str) and "." not in k
            and f"tune.{k}" not in said and k in cls.Params.model_fields
            and isinstance(v, list) and v}
    first = {k: v[0] for k, v in good.items()}
    out = []
    for name, values in good.items():
        for value in values:
            try:
                cls.Params(**{**params, **first, name: value})
            except ValidationError as exc:
                # what it says of this key (not of a parameter the step got wrong itself)
                err = next((e for e in exc.errors() if _where(e) == name), None)
                if err is not None:
                    out.append((f"tune.{name}",
                                f"tune: {label_of({name: value})}: {_refused(err)}"))
                    break
    return out


def plan_tuning(cls: type[Operator], params: dict[str, Any], tune: Any, metric: Any,
                folds: Any = None, samples: Any = None, feature: Any = None,
                model_input: str | None = None, troubled: Any = frozenset()
                ) -> tuple[Tuning | None, list[tuple[str, str]]]:
    """The candidates of a step's ``tune:``, or the problems (``(key, message)``);
    ``feature``: the planned steps by id, for keys that name another step's parameter
    (``troubled``: the ids of steps with problems of their own, said there)."""
    problems: list[tuple[str, str]] = []
    tuned_steps = feature_keys(tune)
    blocked = [step for step in tuned_steps if step in troubled]
    for step, tuned in tuned_steps.items():
        if step in blocked:
            continue
        for param, values in tuned.items():
            found = check_feature_step(step, param, values, (feature or {}).get(step),
                                       model_input)
            if found:
                problems.append((f"tune.{step}.{param}", found))
    if len(tuned_steps) > 1 and not problems:
        problems.append(("tune", "tune varies the parameters of one feature step with the "
                                 f"model, not of {len(tuned_steps)} ("
                                 f"{', '.join(tuned_steps)})"))
    known = list(cls.Params.model_fields)
    if "validation_fraction" not in known:
        return None, [("tune", f"{cls.name} cannot be tuned: tune compares candidates by "
                               "their metrics on rows the step holds out "
                               f"(validation_fraction), which only {TUNABLE} does")]
    clustering = "label" not in known
    # a model that names its own held-out metrics (a mixture's log-likelihood) is compared
    # by those; any other model of no label by the clusterings'
    comparable = list(getattr(cls, "compared_by", ())) or (
        CLUSTERING_COMPARABLE if clustering else COMPARABLE)
    if not isinstance(tune, dict) or not tune:
        example = "{k: [2, 3, 4, 5, 6]}" if clustering else "{max_depth: [3, 4, 6]}"
        return None, [("tune", f"tune must map parameters to the values to try, e.g. "
                               f"{example}")]
    for name, values in tune.items():
        if "." in name:
            continue  # another step's parameter: checked above
        at = f"tune.{name}"  # said at the key's own line
        if name == "features" and clustering:  # of a model of no label: fixed too
            problems.append((at, "tune cannot vary 'features': the candidates' clusters "
                                     "are compared in the space of their features, and "
                                     "another space's silhouette measures another thing; "
                                     "set features on the step"))
        elif name == "distance_measure" and clustering:
            problems.append((at, "tune cannot vary 'distance_measure': a cosine "
                                     "silhouette and a Euclidean one measure other things "
                                     "and cannot choose between them; set it on the step"))
        elif name in FIXED and name in known:
            problems.append((at, f"tune cannot vary '{name}': every candidate is "
                                     "fitted and compared on the same rows"))
        elif name not in known:
            problems.append((at, f"tune: unknown parameter '{name}'{suggest(name, known)}"
                                     f" ({cls.name} takes: {', '.join(known)})"))
        elif not isinstance(values, list) or not values:
            problems.append((at, f"tune: '{name}' must list the values to try, e.g. "
                                     f"{name}: [a, b]"))
        elif name == "quantile":
            problems.append((at, "tune cannot vary 'quantile': it is what a model of "
                                     "loss: quantile predicts, not a setting to tune (each "
                                     "level's pinball loss measures another thing); fit "
                                     "a model per level"))
        elif name == "ndcg_at":
            problems.append((at, "tune cannot vary 'ndcg_at': it is the cut-off the "
                                     "candidates' held-out NDCG is measured at, not a "
                                     "setting to tune (NDCG@1 of one candidate and NDCG@10 "
                                     "of another measure other things); set it on the step"))
        elif name in params:
            problems.append((at, f"tune: '{name}' is set on the step too; give its "
                                     "values in tune only"))
    for varied in ("loss", "tweedie_power"):
        if varied in tune and metric is None:
            problems.append(("tune_metric", f"tune varies {varied}, so its candidates "
                                            "minimise different losses and no one default "
                                            "metric suits them all: name the metric to "
                                            "compare them by (tune_metric: rmse, mae, ...)"))
            break
    if metric is not None and metric not in comparable:
        kinds = {"a model of a label's": COMPARABLE, "a clustering's": CLUSTERING_COMPARABLE,
                 "a mixture's": MIXTURE_COMPARABLE}
        kind = next((name for name, metrics in kinds.items() if metric in metrics), None)
        problems.append(("tune_metric", f"{cls.name} cannot be compared by {kind} metric "
                                        f"'{metric}' (one of: {', '.join(comparable)})"
                         if kind is not None else
                         f"unknown metric '{metric}'{suggest(str(metric), comparable)}"
                         f" (one of: {', '.join(comparable)})"))
    if params.get("distance_measure") == "cosine" and metric in EUCLIDEAN_ONLY:
        problems.append(("tune_metric", f"tune_metric: {metric} measures Euclidean "
                                        "distances, and the step's distance_measure is "
                                        "cosine: compare by silhouette (the default; the "
                                        "cosine one)"))
    if clustering and metric == "inertia" and "k" in tune:
        problems.append(("tune_metric", "tune_metric: inertia cannot choose k: the held-out "
                                        "rows' inertia falls as k grows (more centres, each "
                                        "row nearer one), so the largest k would always win; "
                                        "compare by silhouette (the default), "
                                        "calinski_harabasz or davies_bouldin"))
    for key, value, low, high in (("tune_folds", folds, 2, MAX_FOLDS),
                                  ("tune_samples", samples, 1, MAX_CANDIDATES)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not low <= value <= high):
            problems.append((key, f"{key} must be a whole number from {low} to {high} "
                                  f"(got {value!r})"))
    if not problems and folds is None and not params.get("validation_fraction"):
        problems.append(("tune", "tune needs held-out rows to compare the candidates on: "
                                 "set validation_fraction (e.g. 0.2), or tune_folds (e.g. "
                                 "5) to cross-validate"))
    if problems or blocked:
        return None, problems + _values_refused(cls, params, tune, problems)
    lists = list(tune.values())
    total = math.prod(len(v) for v in lists)
    if samples is not None:
        # a random search: ``samples`` of the combinations, chosen by the step's seed
        # (the same ones on every run), in the grid's order
        picked = np.random.default_rng(int(params.get("seed", 0))).choice(
            total, size=min(samples, total), replace=False) if samples < total else range(total)
        combos = [dict(zip(tune, _combination(int(i), lists), strict=True))
                  for i in sorted(picked)]
    elif total > MAX_CANDIDATES:
        return None, [("tune", f"tune makes {total:,} combinations, over {MAX_CANDIDATES}: "
                               "try fewer values, or tune_samples (e.g. 20) to try a random "
                               "share of them")]
    else:
        combos = [dict(zip(tune, values, strict=True))
                  for values in itertools.product(*lists)]
    tuning = Tuning(metric)
    if tuned_steps:
        (step, _), = tuned_steps.items()
        planned = feature[step]
        tuning.feature = FeatureTuning(step, type(planned.op))
    for combo in combos:
        own = {k: v for k, v in combo.items() if "." not in k}
        try:
            if tuning.feature is not None:
                fparams = {**planned.spec.params, **{k.partition(".")[2]: v
                                                    for k, v in combo.items() if "." in k}}
                tuning.feature.cls.Params(**fparams)  # each candidate's, checked
                tuning.feature.params.append(fparams)
            tuning.ops.append(cls(cls.Params(**{**params, **own})))
            if folds is not None:
                tuning.folds.append([cls(cls.Params(**{
                    **params, **own, "validation_fraction": 1.0 / folds,
                    "validation_start": i / folds})) for i in range(folds)])
        except ValidationError as exc:
            err = exc.errors()[0]
            where = _where(err)
            # the tune key whose value it refused: a feature step's (words.max_features)
            # where the model's own parameters took theirs
            key = next((k for k in combo if k == where or k.endswith(f".{where}")), None)
            problems.append((f"tune.{key}" if key else "tune",
                             f"tune: {label_of(combo)}: {_refused(err, key is not None)}"))
            break
        except SluiceError as exc:
            problems.append(("tune", f"tune: {label_of(combo)}: {exc}"))
            break
        tuning.combos.append(combo)
    return (None, problems) if problems else (tuning, [])
