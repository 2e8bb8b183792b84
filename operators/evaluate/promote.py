"""promote: a champion/challenger comparison that moves an alias only to a better model.

The model this run saves (the challenger) and the version an alias names now (the
champion) score the same rows in one pass; the metrics of both go to the run record,
and the alias moves to the challenger when it is better by at least ``min_delta`` (or
when the alias names no version yet). A scheduled retraining pipeline ends in it, and
every pipeline or server that follows ``name@alias`` (``sluice serve --refresh``) gets
the new version only when it earned it. The runtime moves the alias; this operator
decides.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from operators.arrays import get_namespace
from operators.base import (
    ParamError,
    Params,
    SchemaError,
    register,
    register_fitted,
    require_columns,
    suggest,
)
from operators.evaluate.evaluate import Evaluate, Measured, Measuring, task_of, value_type
from operators.evaluate.metrics import COMPARABLE, LOWER_IS_BETTER, METRICS, default_metric
from operators.io.model import is_alias
from operators.models.common import FittedModel
from operators.score.score import Score


class PromoteParams(Params):
    model: str = Field(description="the challenger: the model this pipeline saves (its "
                                   "name, name@latest, or an alias its save_model sets)")
    alias: str = Field(description="the alias to move to the challenger when it is better "
                                   "than the version the alias names now (the champion)")
    label: str = Field(description="the true values of the rows both models score")
    metric: str | None = Field(None, description="what they are compared by (default "
                                                 "log_loss for classes, rmse for numbers, "
                                                 "or the loss both models minimise: "
                                                 "pinball_loss at their quantile, the "
                                                 "deviance of poisson, gamma, tweedie, "
                                                 "a ranking's ndcg of its group's "
                                                 "queries at its ndcg_at); "
                                                 "lower is better for "
                                                 "log_loss, rmse, mse, mae, pinball_loss "
                                                 "and the deviances, higher for the rest")
    min_delta: float = Field(0.0, ge=0, description="how much better the challenger must be "
                                                    "(0: better at all; ties keep the "
                                                    "champion)")
    weight: str | None = Field(None, description="a column of row weights for the metric")


@register("promote")
class Promote(Measuring):
    """Move an alias to the model this run saves only if it beats the one it names now.

    ```yaml
    - op: save_model
      name: churn
    - op: promote
      input: holdout          # rows neither model was trained on
      model: churn            # the challenger: the version this run saves
      alias: production       # the champion: churn@production, moved if beaten
      label: churned
      metric: roc_auc         # default: log_loss for classes, rmse for numbers
                              # (the loss the models minimise: pinball_loss for loss:
                              # quantile, the deviance of poisson, gamma, tweedie)
      min_delta: 0.002
    ```
    Both models score the rows in one pass (each through its own saved chain); the run
    record has both metrics, the decision and why. With no version under the alias yet,
    the challenger gets it. Rows pass through.
    """

    numeric_kernels = True
    in_model = False

    Params = PromoteParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        p = self.params
        if not is_alias(p.alias):
            raise ParamError(f"alias '{p.alias}' is not an alias name",
                             hint="a name that is not a number or 'latest': production")
        if p.metric is not None and p.metric not in COMPARABLE:
            raise ParamError(f"unknown metric '{p.metric}'{suggest(p.metric, COMPARABLE)}",
                             hint="one of: " + ", ".join(COMPARABLE))
        self.required: list[str] = []
        self.scorers: list[Score] = []  # the challenger's, then the champion's (if any)
        self.refs: list[str] = []

    def _model_attr(self, name: str) -> list[Any]:
        """Each bound model's ``name`` (``quantile``: a model of loss quantile or
        absolute_error; ``deviance``: a log link's), or None."""
        return [None if s.chain is None else s.chain.found(name) for s in self.scorers]

    def _levels(self) -> list[float | None]:
        return self._model_attr("quantile")

    def _ranking(self) -> dict[str, Any] | None:
        """The challenger's queries and NDCG cut-off, when it is a ranking model."""
        return self._model_attr("ranking")[0] if self.scorers else None

    def _evaluate(self) -> Evaluate:
        p = self.params
        metrics = None if p.metric is None else [p.metric]
        options: dict[str, Any] = {}
        level = self._levels()[0] if self.scorers else None
        ranking = self._ranking()
        if ranking is not None:  # by the NDCG of each query, as the model was validated
            # (with a weight, each query's weighs the mean of its rows')
            return Evaluate(label=p.label, weight=p.weight, metrics=metrics,
                            group=ranking["group"], k=ranking["ndcg_at"])
        if level is not None:
            # pinball_loss and coverage at the models' quantile (bind checks they share
            # it); a quantile model is compared by the loss it minimises unless told
            metrics, options = [p.metric or "pinball_loss"], {"quantile": level}
        else:
            deviances = self._model_attr("deviance")
            if metrics is None and deviances and all(d == deviances[0] for d in deviances):
                # models of one log link's loss: by the deviance they minimise
                metrics = None if deviances[0] is None else [deviances[0]["metric"]]
            power = next((d["tweedie_power"] for d in deviances
                          if d is not None and "tweedie_power" in d), None)
            if metrics == ["tweedie_deviance"] and power is not None:
                options = {"tweedie_power": power}
        return Evaluate(label=p.label, weight=p.weight, metrics=metrics, **options)

    # ----------------------------------------------------------------- binding

    def bind_planned(self, required: list[str]) -> None:
        """The columns the challenger, as the pipeline plans it, reads."""
        self.required = list(required)

    def bind(self, challenger: tuple[Any, list[str], dict[str, Any]],
             champion: tuple[Any, list[str], dict[str, Any]] | None) -> None:
        """The saved challenger and the champion (None: the alias names no version yet),
        each ``(chain, required columns, info)``, as ``score`` binds a model."""
        self.scorers, self.refs = [], []
        for chain, required, info in [challenger, *([champion] if champion else [])]:
            unsupervised = [s for s in chain.steps
                            if isinstance(s, FittedModel) and not s.supervised]
            if unsupervised:
                raise ParamError(
                    f"promote: model '{info['ref']}' ends in "
                    f"{unsupervised[-1].name.removesuffix('.fitted')}, a model of no label: "
                    f"its predictions (clusters) have no true values in '{self.params.label}' "
                    "to be compared by", hint="move the alias with save_model's aliases, or "
                                              "compare the runs' metrics (inertia)")
            scorer = Score(model=info["ref"])
            scorer.bind(chain, required, info)
            self.scorers.append(scorer)
            self.refs.append(f"{info['name']}@{info['version']}")
        self.required = list(dict.fromkeys(c for s in self.scorers for c in s.required))
        rankings = self._model_attr("ranking")
        if any(r != rankings[0] for r in rankings):
            def ranks(r: dict[str, Any] | None) -> str:
                return "ranks no queries" if r is None else (
                    f"ranks the queries of '{r['group']}' by NDCG@{r['ndcg_at']}")
            raise ParamError(f"promote: {self.refs[0]} {ranks(rankings[0])} and "
                             f"{self.refs[1]} {ranks(rankings[1])}: no one metric compares "
                             "them fairly", hint="promote between ranking models of one "
                                                 "group and ndcg_at")
        if rankings and rankings[0] is not None:
            self.required = list(dict.fromkeys([*self.required, rankings[0]["group"]]))
        levels = self._levels()
        if len(set(levels)) > 1 and (self.params.metric is None
                                      or self.params.metric in ("pinball_loss", "coverage")):
            def what(level: float | None) -> str:
                return "the mean" if level is None else f"the {level:g} quantile"
            raise ParamError(
                f"promote: {self.refs[0]} predicts {what(levels[0])} and {self.refs[1]} "
                f"{what(levels[1])}, so "
                + ("no default metric" if self.params.metric is None
                   else f"{self.params.metric} (measured at one quantile)")
                + " compares them fairly",
                hint="name a metric both are judged by (metric: mae, rmse, ...), or "
                     "promote between models of one loss and quantile")

    # ----------------------------------------------------------------- plan time

    def input_columns(self, schema: pa.Schema) -> list[str]:
        p = self.params
        return [*self.required, p.label, *([p.weight] if p.weight else [])]

    def check_input(self, schema: pa.Schema) -> None:
        p = self.params
        require_columns(schema, [p.label, *([p.weight] if p.weight else [])])
        for scorer, ref in zip(self.scorers, self.refs, strict=True):
            try:
                scorer.check_input(schema)
            except SchemaError as exc:
                raise SchemaError(f"{ref} cannot score these rows: {exc.message}",
                                  hint=exc.hint or "give promote the rows both models "
                                  "read") from None
        if not self.scorers:
            require_columns(schema, self.required, f"column the model '{p.model}' needs:")
        if p.metric is not None and p.metric != "ndcg":  # (ndcg: checked when bound)
            # a metric of the other task: said before the run saves
            task = task_of(p.label, value_type(schema.field(p.label).type))
            if p.metric not in METRICS[task]:
                raise ParamError(f"metric '{p.metric}' is not a {task} metric (label "
                                 f"'{p.label}' is {schema.field(p.label).type})",
                                 hint=f"{task} metrics: " + ", ".join(
                                     m for m in METRICS[task] if m in COMPARABLE))

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.check_input(schema)
        return schema

    # ----------------------------------------------------------------- fit

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        if not self.scorers:
            raise SchemaError(f"model '{self.params.model}' is not bound",
                              hint="promote runs after the save_model of its model")
        self.check_input(schema)
        evaluate = self._evaluate()
        return {"evaluations": [evaluate.init(s.output_schema(schema)) for s in self.scorers]}

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> list[Any]:
        # each model scores on the device (its own chain: a copy of the rows each); the
        # metrics of the small prediction columns are counted on the host
        evaluate, host = self._evaluate(), get_namespace("numpy")
        return [evaluate.partial(scorer.transform(part, xp), evaluation, host)
                for scorer, evaluation in zip(self.scorers, state["evaluations"], strict=True)]

    def combine(self, a: list[Any], b: list[Any]) -> list[Any]:
        evaluate = self._evaluate()
        return [evaluate.combine(x, y) for x, y in zip(a, b, strict=True)]

    def update(self, stats: list[Any], state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        evaluate = self._evaluate()
        values = [evaluate.update(s, e)[0]["metrics_values"]
                  for s, e in zip(stats, state["evaluations"], strict=True)]
        return {**state, "metrics_values": self._decide(values)}, True

    def _decide(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        p = self.params
        name = p.metric or default_metric(values[0])
        challenger = float(values[0][name])
        out: dict[str, Any] = {"metric": name, "alias": p.alias, "challenger": self.refs[0],
                               "challenger_value": challenger}
        if len(values) == 1 and challenger == challenger:
            return {**out, "promoted": True, "reason": f"no version had the alias {p.alias}"}
        if challenger != challenger:  # NaN: a metric these rows cannot give (one class)
            return {**out, "promoted": False,
                    "reason": f"{name} is not defined on these rows (one class only?): "
                              "nothing promoted"}
        champion = float(values[1][name])
        out.update(champion=self.refs[1], champion_value=champion)
        if champion != champion:
            return {**out, "promoted": False,
                    "reason": f"{name} of the champion is not defined on these rows: "
                              "nothing promoted"}
        if self.refs[0] == self.refs[1]:
            return {**out, "promoted": False, "reason": "the alias names the challenger"}
        gain = champion - challenger if name in LOWER_IS_BETTER else challenger - champion
        better = gain > p.min_delta if p.min_delta else gain > 0
        direction = "lower" if name in LOWER_IS_BETTER else "higher"
        if better:
            reason = f"{name} {challenger:.6g} vs {champion:.6g} ({direction} is better)"
        else:
            by = f" by more than {p.min_delta:g}" if p.min_delta else ""
            reason = f"{name} {challenger:.6g} vs {champion:.6g}: not {direction}{by}"
        return {**out, "promoted": better, "gain": gain, "reason": reason}


@register_fitted("promote.fitted")
class PromoteFitted(Measured):
    """The rows, unchanged; carries the comparison it made."""

    Params = PromoteParams
