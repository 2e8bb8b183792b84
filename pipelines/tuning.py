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
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from operators.base import Operator, SluiceError, suggest
from operators.evaluate.metrics import COMPARABLE, LOWER_IS_BETTER, default_metric
from operators.models.common import SupervisedParams

MAX_CANDIDATES = 100
"""The most combinations one step may try."""
MAX_FOLDS = 20
FIXED = ("label", "weight", "validation_fraction", "validation_start", "seed", "group")
"""What every candidate shares (a ranking's group: its queries, whole ones held out);
of a model that takes it."""
"""What a tuned step cannot vary: the rows and what they are compared on."""
METRICS = COMPARABLE


@dataclass
class Tuning:
    """A step's candidates: each combination of the tuned values and its operator."""

    metric: str | None  # None: log_loss, pinball_loss or rmse, by the fitted model
    combos: list[dict[str, Any]] = field(default_factory=list)
    ops: list[Operator] = field(default_factory=list)  # each combination as the step says
    folds: list[list[Operator]] = field(default_factory=list)  # and per fold (tune_folds)
    results: list[dict[str, Any]] = field(default_factory=list)

    def metric_for(self, validation: dict[str, Any]) -> str:
        if self.metric is not None:
            return self.metric
        return default_metric(validation) if validation else "rmse"

    def score(self, metrics: dict[str, Any]) -> tuple[str, float]:
        """The compared metric of a fit's metrics, and its value."""
        validation = metrics.get("validation") or {}
        name = self.metric_for(validation)
        if name not in validation:
            shown = ", ".join(k for k in validation if k in METRICS) or "none"
            raise SluiceError(f"tune_metric: the model reports no validation {name}",
                              hint=f"it reports: {shown}")
        return name, float(validation[name])

    def best(self) -> int:
        """The position of the best candidate (the first of equals)."""
        name = self.results[0]["metric"]
        sign = 1.0 if name in LOWER_IS_BETTER else -1.0
        values = [sign * r["value"] if r["value"] == r["value"] else float("inf")
                  for r in self.results]
        return values.index(min(values))


def _combination(index: int, lists: list[list[Any]]) -> list[Any]:
    """The ``index``-th combination of ``itertools.product(*lists)``."""
    out = []
    for values in reversed(lists):
        index, at = divmod(index, len(values))
        out.append(values[at])
    return out[::-1]


def label_of(combo: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in combo.items())


def plan_tuning(cls: type[Operator], params: dict[str, Any], tune: Any, metric: Any,
                folds: Any = None, samples: Any = None
                ) -> tuple[Tuning | None, list[tuple[str, str]]]:
    """The candidates of a step's ``tune:``, or the problems (``(key, message)``)."""
    problems: list[tuple[str, str]] = []
    if not issubclass(cls.Params, SupervisedParams):
        return None, [("tune", f"{cls.name} is not a model of a label: only a model step "
                               "with a label (and validation_fraction) can be tuned")]
    if not isinstance(tune, dict) or not tune:
        return None, [("tune", "tune must map parameters to the values to try, e.g. "
                               "{max_depth: [3, 4, 6]}")]
    known = list(cls.Params.model_fields)
    for name, values in tune.items():
        if name in FIXED and name in known:
            problems.append(("tune", f"tune cannot vary '{name}': every candidate is "
                                     "fitted and compared on the same rows"))
        elif name not in known:
            problems.append(("tune", f"tune: unknown parameter '{name}'{suggest(name, known)}"
                                     f" ({cls.name} takes: {', '.join(known)})"))
        elif not isinstance(values, list) or not values:
            problems.append(("tune", f"tune: '{name}' must list the values to try, e.g. "
                                     f"{name}: [a, b]"))
        elif name == "quantile":
            problems.append(("tune", "tune cannot vary 'quantile': it is what a model of "
                                     "loss: quantile predicts, not a setting to tune (each "
                                     "level's pinball loss measures another thing); fit "
                                     "a model per level"))
        elif name == "ndcg_at":
            problems.append(("tune", "tune cannot vary 'ndcg_at': it is the cut-off the "
                                     "candidates' held-out NDCG is measured at, not a "
                                     "setting to tune (NDCG@1 of one candidate and NDCG@10 "
                                     "of another measure other things); set it on the step"))
        elif name in params:
            problems.append(("tune", f"tune: '{name}' is set on the step too; give its "
                                     "values in tune only"))
    for varied in ("loss", "tweedie_power"):
        if varied in tune and metric is None:
            problems.append(("tune_metric", f"tune varies {varied}, so its candidates "
                                            "minimise different losses and no one default "
                                            "metric suits them all: name the metric to "
                                            "compare them by (tune_metric: rmse, mae, ...)"))
            break
    if metric is not None and metric not in METRICS:
        problems.append(("tune_metric", f"unknown metric '{metric}'{suggest(str(metric), METRICS)}"
                                        f" (one of: {', '.join(METRICS)})"))
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
    if problems:
        return None, problems
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
    for combo in combos:
        try:
            tuning.ops.append(cls(cls.Params(**{**params, **combo})))
            if folds is not None:
                tuning.folds.append([cls(cls.Params(**{
                    **params, **combo, "validation_fraction": 1.0 / folds,
                    "validation_start": i / folds})) for i in range(folds)])
        except ValidationError as exc:
            err = exc.errors()[0]
            text = err["msg"].removeprefix("Value error, ").rstrip(".")
            where = ".".join(str(p) for p in err["loc"])
            problems.append(("tune", f"tune: {label_of(combo)}: parameter '{where}': {text}"))
            break
        except SluiceError as exc:
            problems.append(("tune", f"tune: {label_of(combo)}: {exc}"))
            break
        tuning.combos.append(combo)
    return (None, problems) if problems else (tuning, [])
