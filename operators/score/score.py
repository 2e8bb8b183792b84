"""score: apply a saved model's fitted chain and add its predictions to the input."""

from __future__ import annotations

from typing import Any, Literal, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.base import (
    MissingColumnError,
    Operator,
    ParamError,
    Params,
    SchemaError,
    Transform,
    register,
    require_columns,
    yaml_text,
)
from operators.chain import Chain, dump_chain, load_chain
from operators.models.common import (
    CONTRIBUTION_BASE,
    CONTRIBUTIONS,
    PREDICTION,
    PROBABILITY,
    FittedModel,
    named_classes,
)

PREDICTION_COLUMNS = ("prediction", "probability")
OUTPUT_COLUMNS = (*PREDICTION_COLUMNS, CONTRIBUTIONS, CONTRIBUTION_BASE)


# how a nested type's name starts (a type is saved as its name: ``str(pa.DataType)``)
_NESTED_TYPES = ("list<", "large_list<", "list_view<", "large_list_view<", "fixed_size_list<",
                 "struct<", "map<", "sparse_union<", "dense_union<")


def _numeric_name(name: str) -> bool:
    """Whether a saved type name is an integer or floating type's."""
    try:
        t = pa.type_for_alias(name)
    except (ValueError, KeyError):
        return False
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def model_columns(model: Any) -> tuple[str, ...]:
    """The columns score takes from a chain whose model is ``model`` (fitted, or the step
    a pipeline saves it from; None: not known): prediction and probability, and those the
    model adds besides (``extra_columns``: kmeans' distance)."""
    return (*PREDICTION_COLUMNS, *getattr(model, "extra_columns", ()))


EXPLAINED = ("decision_tree, random_forest, gradient_boosted_trees, linear_regression, "
             "logistic_regression and naive_bayes")


class ScoreParams(Params):
    model: str = Field(description="registry reference: name (latest), name@latest, name@3, "
                                   "name@ALIAS; a model a save_model step of the same "
                                   "pipeline saves (name, name@latest or an alias it sets) "
                                   "is the version this run saves")
    contributions: bool = Field(
        False, description="also add each row's per-feature contributions to its raw score "
                           "(exact TreeSHAP, XGBoost's pred_contribs): `contributions`, a "
                           "struct with a field per model feature, and `contribution_base`, "
                           "the model's expected raw score; per row they add up to the raw "
                           "score (log-odds for boosted classes, the probability for "
                           "forests and trees); tree models (TreeSHAP), linear and logistic "
                           "regression (coefficient x the value's difference from the "
                           "training mean)")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="a binary classifier's cut: the prediction is the second class where "
                    "its probability is at least this, else the first (default: the most "
                    "probable class, 0.5; evaluate's thresholds.best_f1 suggests one): "
                    "scikit-learn's FixedThresholdClassifier; MLlib's threshold cuts at "
                    "strictly above")
    contributions_by: Literal["features", "inputs"] = Field(
        "features", description="features: a field per model feature (plan=basic, "
                                "plan=premium...); inputs: per column of this step's input "
                                "the features made from it add up (plan), through one_hot, "
                                "hash_encode, bucketize, derive (of one column) and rename")

    @model_validator(mode="after")
    def _by_needs_contributions(self) -> ScoreParams:
        if self.contributions_by != "features" and not self.contributions:
            raise ParamError("contributions_by needs contributions: true")
        return self


def predicting_model(steps: list[Operator], model: Operator | None = None) -> str | None:
    """The operator name of the model whose predictions a fitted chain ends with, or a
    chain as planned whose model step is ``model`` (None where a step adjusts them after
    it: calibrate, or a saved model scored inside)."""
    for step in reversed(steps):
        if isinstance(step, Score) or getattr(step, "after_model", False):
            return None
        if isinstance(step, FittedModel) or (model is not None and step is model):
            return step.name.removesuffix(".fitted")
    return None


@register("score")
class Score(Transform):
    """Score rows with a saved model: adds `prediction` and, for classifiers, `probability`.

    ```yaml
    - op: score
      model: churn@3
    ```
    The runtime loads the model when the pipeline is planned (``bind``); input
    columns pass through unchanged. A model the same pipeline trains and saves is
    scored as the version this run saves, once saved (MLlib's fit, then transform):
    train on one `sample` of the rows and `evaluate` on the rest in one run.
    `contributions: true` explains the scores of a tree, linear or naive Bayes model: each
    row's per-feature contributions (exact TreeSHAP; coefficient x distance from the
    training mean; a naive Bayes term less its training mean), which add up to its raw
    score.
    """

    float32 = True  # docs/float32.md

    Params = ScoreParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.chain: Chain | None = None
        self.model_info: dict[str, Any] = {}
        self.data_steps: list[dict[str, Any]] = []
        self.trained_types: dict[str, str] = {}  # input column: its type in training
        self.required: list[str] = []
        self.planned: list[pa.Field] | None = None
        self.predictions: tuple[str, ...] = PREDICTION_COLUMNS
        self.model_kind: str | None = None  # the operator of the model that predicts
        # the model step of a model this run trains and saves (``bind_planned``)
        self.planned_model: Operator | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        """The columns this step adds (taken from the model's chain, replacing the input's
        of the same names)."""
        extra = (CONTRIBUTIONS, CONTRIBUTION_BASE) if self.params.contributions else ()
        return (*self.predictions, *extra)

    def bind(self, chain: Chain, required: list[str], info: dict[str, Any]) -> None:
        """Attach the loaded model: its chain, the columns it needs, its registry info."""
        self.chain, self.required, self.model_info = chain, list(required), dict(info)
        models = [step for step in chain.steps if isinstance(step, FittedModel)]
        self.predictions = model_columns(models[-1] if models else None)
        self.model_kind = predicting_model(chain.steps)
        # the training pipeline's steps that are not in the model (join, filter, sample)
        meta = self.model_info.pop("meta", None) or {}
        self.data_steps = meta.get("data_steps", [])
        self.trained_types = {f["name"]: f["type"]
                              for f in (meta.get("input_schema") or {}).get("fields", [])}
        self.planned = None

    def bind_planned(self, required: list[str], added: list[pa.Field],
                     info: dict[str, Any], model: Operator | None = None,
                     steps: list[Operator] | None = None) -> None:
        """Attach a model the pipeline saves before this step, as planned: the columns it
        will need, the prediction columns the plan knows of, the model step and the
        chain's ``steps`` (the fitted chain is bound when the run gets there)."""
        if self.params.contributions and isinstance(model, Score):
            self._scores_with(model)
        if self.params.contributions and not getattr(model, "explained", False):
            self._not_explained(f"{model.name}, which has no per-feature contributions"
                                if model is not None else "no model step")
        self.chain, self.required, self.model_info = None, list(required), dict(info)
        self.planned = list(added)
        self.planned_model = model
        self.predictions = model_columns(model)
        self.model_kind = predicting_model(steps or [], model)

    def _not_explained(self, why: str) -> None:
        raise SchemaError(f"contributions: model '{self.params.model}' ends in {why}",
                          hint=f"contributions are computed for {EXPLAINED}; score another "
                               "model, or drop contributions")

    def _explained(self, chain: Chain) -> int:
        """The position in ``chain`` of the model whose contributions are asked for."""
        models = [i for i, step in enumerate(chain.steps) if isinstance(step, FittedModel)]
        scored = [step for step in chain.steps if isinstance(step, Score) and step.chain]
        if not models and scored:
            self._scores_with(scored[-1])
        if not models:
            self._not_explained("no model step")
        why = chain.steps[models[-1]].explains()
        if why is not None:
            self._not_explained(why)
        return models[-1]

    def _scores_with(self, inner: Score) -> None:
        """The contributions error of a model that scores with the saved model ``inner``
        binds (score, then calibrate), named by the version frozen in it (its name alone
        may name a retrained model now)."""
        info = inner.model_info
        ref = (f"{info['name']}@{info['version']}" if "version" in info
               else info.get("ref") or inner.params.model)
        raise SchemaError(f"contributions: model '{self.params.model}' scores with the "
                          f"saved model '{ref}' (a score step, then calibrate...), whose "
                          "contributions it does not carry",
                          hint=f"ask model '{ref}' for the contributions")

    def _groups(self, chain: Chain, at: int) -> dict[str, str] | None:
        """With ``contributions_by: inputs``, the input column of each of the model's
        features (the chain before the model made them)."""
        if self.params.contributions_by != "inputs":
            return None
        model = chain.steps[at]
        assert isinstance(model, FittedModel)
        return input_groups(chain.steps[:at], model.features)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The params and the bound model's chain (its steps' states, as ``save_model``
        keeps a chain), so that a model saved after this step (``calibrate``) scores with
        the model it was fitted on: a model of a model, frozen as it was scored."""
        meta, arrays = super().state()
        if self.chain is None:
            return meta, arrays
        entries, inner = dump_chain(self.chain.steps)
        info = {k: self.model_info[k] for k in ("name", "version", "ref")
                if k in self.model_info}
        meta["model"] = {"steps": entries, "required": self.required, "info": info}
        return meta, {f"model.{key}": value for key, value in inner.items()}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Transform:
        score = cls(cls.Params(**meta["params"]))
        model = meta.get("model")
        if model is not None:
            inner = {key.removeprefix("model."): value for key, value in arrays.items()}
            score.bind(Chain(load_chain(model["steps"], inner)), model["required"],
                       model["info"])
        return score

    def _bound(self) -> Chain:
        if self.chain is None:
            raise SchemaError(f"model '{self.params.model}' is not loaded")
        return self.chain

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return list(self.required)

    def check_input(self, schema: pa.Schema) -> None:
        missing = {c for c in self.required if schema.get_field_index(c) < 0}
        made = {c for step in self.data_steps for c in step.get("added_columns") or []}
        try:
            # columns a training step made and this input lacks: no misspelt names
            require_columns(schema, self.required,
                            f"column the model '{self.params.model}' needs:",
                            close=not missing <= made)
        except MissingColumnError as exc:
            for step in self.data_steps:
                added = [c for c in step.get("added_columns") or [] if c in missing]
                if added:
                    shown = ", ".join(f"'{c}'" for c in added)
                    raise MissingColumnError(exc.message, hint=(
                        f"the model's training pipeline added {shown} in step "
                        f"'{step['step']}' ({step['op']}), which a model does not keep: "
                        f"repeat that step before this one")) from None
            raise

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        planned = self.chain is None and self.planned is not None
        chain = None if planned else self._bound()
        self.check_input(schema)
        if chain is None:
            # a planned model's contributions come with its features, at run time
            added = list(self.planned or [])
            probability = next((f for f in added if f.name == PROBABILITY), None)
            if self.params.threshold is not None:
                self._planned_binary(probability)
        else:
            try:
                produced = chain.output_schema(schema)
            except SchemaError as exc:
                raise self._retyped(schema, exc) from None
            added = [produced.field(c) for c in self.predictions if c in produced.names]
            if not added:
                raise SchemaError(f"model '{self.params.model}' has no predicting step",
                                  hint="the saved chain must end in a model step")
            if self.params.threshold is not None:
                self._binary_classes(produced)
            if self.params.contributions:
                at = self._explained(chain)
                model = chain.steps[at]
                assert isinstance(model, FittedModel)
                added += model.contribution_fields(self._groups(chain, at))
        kept = pa.schema([f for f in schema if f.name not in self.outputs],
                         metadata=schema.metadata)
        for field in added:
            kept = kept.append(field)
        return kept

    def _planned_binary(self, probability: pa.Field | None) -> None:
        """As the pipeline plans, a SchemaError for a ``threshold`` on the model this run
        trains where it predicts numbers, or has more than two classes as far as the plan
        knows them: those its class_weight names (its label's values are known only once
        fitted: then said, ``_binary_classes``)."""
        if probability is None or probability.type != pa.float64():
            self._refuse_threshold("predicts numbers" if probability is None
                                   else "has more than two classes")
        named = named_classes(getattr(getattr(self.planned_model, "params", None),
                                      "class_weight", None))
        if len(named) > 2:
            self._refuse_threshold(f"is trained on at least {len(named)} classes (its "
                                   f"class_weight names {', '.join(named)})")

    def _binary_classes(self, produced: pa.Schema) -> list[Any]:
        """The two classes of the model a ``threshold`` cuts; a SchemaError for a model
        of more classes, or of numbers."""
        classes = next((step.classes for step in reversed(self._bound().steps)
                        if getattr(step, "classes", None) is not None), None)
        if (classes is None or len(classes) != 2 or PROBABILITY not in produced.names
                or produced.field(PROBABILITY).type != pa.float64()):
            label = getattr(getattr(self.planned_model, "params", None), "label", None)
            self._refuse_threshold(
                "predicts numbers" if classes is None else f"has {len(classes)} classes"
                + (f" (this run trains it: label '{label}' has them, which are known only "
                   "once fitted, not as the pipeline plans)" if label else ""))
        return list(classes)

    def _refuse_threshold(self, what: str) -> NoReturn:
        raise SchemaError(f"threshold cuts a binary classifier's probability, and model "
                          f"'{self.params.model}' {what}",
                          hint="leave threshold out (the most probable class is the "
                               "prediction)")

    def _retyped(self, schema: pa.Schema, exc: SchemaError) -> SchemaError:
        """``exc`` (a step of the model's chain refused this input), with a hint that names
        the columns whose type is not the one the model was trained on, where some are: the
        fix is a cast back, not a change to the model's steps."""
        changed = {name: trained for name, trained in self.trained_types.items()
                   if name in self.required and schema.get_field_index(name) >= 0
                   and str(schema.field(name).type) != trained}
        if not changed:
            return exc
        said = ", ".join(f"'{name}' as {trained}, not {schema.field(name).type}"
                         for name, trained in changed.items())
        # a list, struct or map casts to none of a number, a text or a time (nor back)
        uncastable = [name for name, trained in changed.items()
                      if pa.types.is_nested(schema.field(name).type)
                      != trained.startswith(_NESTED_TYPES)]
        if uncastable:
            numbers = all(_numeric_name(changed[name]) for name in uncastable)
            which = " and ".join(f"'{name}'" for name in uncastable)
            exc.hint = (f"model '{self.params.model}' was trained with {said}: no cast "
                        f"turns {which} back; score rows whose {which} "
                        f"{'holds' if len(uncastable) == 1 else 'hold'} the "
                        f"{'numbers' if numbers else 'values'} the model was trained on")
            return exc
        casts = ", ".join(f"{name}: {yaml_text(trained)}" for name, trained in changed.items())
        exc.hint = (f"model '{self.params.model}' was trained with {said}: cast "
                    f"{'it' if len(changed) == 1 else 'them'} back before scoring "
                    f"(`op: cast`, `columns: {{{casts}}}`)")
        return exc

    def transform(self, part: pa.Table, xp: Any) -> pa.Table:
        chain = self._bound()
        if self.params.contributions:
            at = self._explained(chain)
            model = chain.steps[at]
            assert isinstance(model, FittedModel)
            explained = model.explain(Chain(chain.steps[:at]).transform(part, xp), xp,
                                      self._groups(chain, at))
            scored = Chain(chain.steps[at + 1:]).transform(explained, xp)
        else:
            scored = chain.transform(part, xp)
        if self.params.threshold is not None:
            classes = self._binary_classes(scored.schema)
            field = scored.schema.field(PREDICTION)
            cut = pc.greater_equal(scored.column(PROBABILITY), self.params.threshold)
            labels = pa.array(classes, field.type)
            predicted = pc.if_else(cut, labels[1], labels[0])
            scored = scored.set_column(scored.schema.get_field_index(PREDICTION), field,
                                       predicted)
        out = part.drop_columns([c for c in self.outputs if c in part.column_names])
        for name in self.outputs:
            if name in scored.column_names:
                out = out.append_column(scored.schema.field(name), scored.column(name))
        return out


def input_groups(steps: list[Transform], features: list[str]) -> dict[str, str]:
    """Per model feature, the column of the chain's input it is made from (through each
    step's ``derived_from``), or itself where it comes from several or none."""
    out = {}
    for feature in features:
        current = [feature]
        for step in reversed(steps):
            made = step.derived_from()
            current = list(dict.fromkeys(c for name in current for c in made.get(name, [name])))
        out[feature] = current[0] if len(current) == 1 else feature
    return out

