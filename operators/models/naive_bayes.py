"""naive_bayes: Gaussian, multinomial, Bernoulli and complement naive Bayes, in one pass.

Each class's statistics are sums over its rows, so the fit is one pass over the
partitions (two with ``validation_fraction``: the held-out rows are scored after):

- ``gaussian`` (scikit-learn's ``GaussianNB``, MLlib's ``modelType="gaussian"``): each
  class's weighted feature means and population variances. A partition keeps its classes'
  means and the sums of squared deviations from them; partitions combine by Chan's
  update (no cancellation far from the origin). Every variance gets ``var_smoothing``
  times the largest feature variance of all the training rows (scikit-learn's epsilon;
  that variance is derived exactly from the classes' statistics, no second pass).
- ``multinomial`` (``MultinomialNB``, MLlib's default): each class's weighted feature
  totals, smoothed: ``log((N_cj + a) / (N_c + a d))``. Features are counts or
  frequencies: a negative value is a DataError naming its column.
- ``bernoulli`` (``BernoulliNB``, MLlib's ``bernoulli``): each class's weighted count of
  rows where a feature is on (above ``binarize``; with ``binarize: null`` the values must
  be 0 or 1, as MLlib asks), smoothed ``log((N_cj + a) / (N_c + 2a))``; a feature that
  is off counts against its class too.
- ``complement`` (``ComplementNB``, MLlib's ``complement``): the multinomial totals of
  every other class, smoothed, ``-log((N_~cj + a) / (N_~c + a d))``; no class priors.

The class priors are the classes' weight shares unless ``priors`` gives them. A row of
weight w counts as w copies of it. Probabilities are the normalised exponentials of the
joint log-likelihoods (scikit-learn's ``predict_proba``); ``prediction`` is the most
probable class. Always float64.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PositiveFloat, model_validator

from operators.arrays import in_float64, to_numpy
from operators.base import DataError, Estimator, ParamError, register, register_fitted
from operators.models.common import (
    FittedModel,
    PlannedPredictions,
    SupervisedParams,
    check_inputs,
    class_overall,
    class_sums,
    classes_named,
    classifier_label_type,
    combine_class_sums,
    feature_matrix,
    held_out,
    label_column,
    model_input_columns,
    parameters,
    require_counts,
    require_positive_weight,
    require_training_rows,
    row_weights,
    softmax,
    validation_combine,
    validation_finalize,
    validation_partial,
    weigh_classes,
    with_predictions,
)
from operators.sparse import issparse

ModelType = Literal["gaussian", "multinomial", "bernoulli", "complement"]
LOG_2PI = math.log(2.0 * math.pi)


class NaiveBayesParams(SupervisedParams):
    model_type: ModelType = Field(
        "gaussian", description="gaussian: continuous features, a normal distribution a class "
                                "and feature (scikit-learn's GaussianNB); multinomial: counts "
                                "or frequencies (MultinomialNB, MLlib's default); bernoulli: "
                                "on/off features (BernoulliNB); complement: counts, each class "
                                "by the other classes' totals (ComplementNB, for unbalanced "
                                "classes of text)")
    smoothing: PositiveFloat = Field(
        1.0, description="multinomial, bernoulli and complement: added to every count "
                         "(Laplace smoothing: scikit-learn's alpha, MLlib's smoothing)")
    var_smoothing: float = Field(
        1e-9, ge=0.0, description="gaussian: added to every variance, as a fraction of the "
                                  "largest feature variance (scikit-learn's var_smoothing)")
    binarize: float | None = Field(
        0.0, description="bernoulli: a feature is on where its value is above this "
                         "(scikit-learn's binarize); null: the values must be 0 or 1 already "
                         "(MLlib)")
    priors: dict[bool | int | str, PositiveFloat] | None = Field(
        None, description="the classes' prior probabilities, {class: p} for every class, "
                          "summing to 1 (default: their weight shares in the training rows)")

    @model_validator(mode="after")
    def _applies(self) -> NaiveBayesParams:
        """A parameter set that this model type does not use is a mistake, not a no-op."""
        uses = {"gaussian": {"var_smoothing", "priors"},
                "multinomial": {"smoothing", "priors"},
                "bernoulli": {"smoothing", "binarize", "priors"},
                "complement": {"smoothing"}}[self.model_type]
        unused = sorted({"smoothing", "var_smoothing", "binarize", "priors"}
                        & self.model_fields_set - uses)
        if unused:
            raise ParamError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} "
                             f"nothing for model_type {self.model_type}",
                             hint=f"{self.model_type} takes "
                                  + (", ".join(sorted(uses)) or "none of them")
                                  + ("; complement naive Bayes has no class priors "
                                     "(scikit-learn's ComplementNB and MLlib's ignore them)"
                                     if "priors" in unused else ""))
        return self


@register_fitted("naive_bayes.fitted")
class NaiveBayesFitted(FittedModel):
    """Class probabilities from each class's joint log-likelihood: ``log_prior`` plus,
    for ``gaussian``, the normal log-densities of ``theta`` (means) and ``var``; for
    ``multinomial`` and ``complement`` (which adds no prior), ``X @ feature_log_prob.T``;
    for ``bernoulli``, the on features' ``feature_log_prob`` and the off features'
    ``log(1 - exp(feature_log_prob))``."""

    def __init__(self, features: list[str], classes: list[Any], label_type: pa.DataType,
                 model_type: ModelType, log_prior: np.ndarray,
                 theta: np.ndarray | None = None, var: np.ndarray | None = None,
                 feature_log_prob: np.ndarray | None = None, binarize: float | None = None,
                 expected_terms: np.ndarray | None = None):
        super().__init__(features, classes, label_type)
        # (classes, features): each feature's term of each class's joint log-likelihood,
        # averaged over the training rows: the reference of the contributions
        self.expected_terms = (None if expected_terms is None
                               else np.asarray(expected_terms, dtype=np.float64))
        self.model_type = model_type
        self.log_prior = np.asarray(log_prior, dtype=np.float64)
        self.theta = None if theta is None else np.asarray(theta, dtype=np.float64)
        self.var = None if var is None else np.asarray(var, dtype=np.float64)
        self.feature_log_prob = (None if feature_log_prob is None
                                 else np.asarray(feature_log_prob, dtype=np.float64))
        self.binarize = binarize

    @property
    def takes_sparse(self) -> bool:  # type: ignore[override]
        """Scores a sparse column's CSR rows as they are (the Gaussian's squares need
        every value)."""
        return self.model_type != "gaussian"

    @property
    def _prior(self) -> np.ndarray:
        """The class log priors the scores add (none for complement: scikit-learn's,
        MLlib's)."""
        return self.log_prior if self.model_type != "complement" else 0.0 * self.log_prior

    def joint_log_likelihood(self, X: Any, xp: Any) -> Any:
        """(rows, classes): each row's log P(class) + log P(features | class)."""
        prior = parameters(self._prior, xp)
        if self.model_type == "gaussian":
            theta, var = parameters(self.theta, xp), parameters(self.var, xp)
            norm = -0.5 * xp.sum(xp.log(var) + LOG_2PI, axis=1)
            # a class at a time, as scikit-learn: no expansion of the square, whose
            # cancellation would cost digits far from the origin
            columns = [xp.sum((X - theta[c, :]) ** 2 / var[c, :], axis=1)
                       for c in range(len(self.classes))]
            return prior + norm - 0.5 * xp.stack(columns, axis=1)
        flp = parameters(self.feature_log_prob, xp)
        if self.model_type != "bernoulli":
            return X @ flp.T + prior
        on = _switches(X, self.binarize, self.features, xp)
        off = xp.log1p(-xp.exp(flp))  # log(1 - p), exact for p near 0
        return on @ (flp - off).T + (prior + xp.sum(off, axis=1))

    def terms(self, X: Any, xp: Any) -> Any:
        """(rows, features, classes): each feature's term of each class's joint
        log-likelihood (they add up to it, with the prior): the model is additive."""
        if self.model_type == "gaussian":
            theta, var = parameters(self.theta, xp), parameters(self.var, xp)
            return (-0.5 * (xp.log(var) + LOG_2PI).T[None, :, :]
                    - 0.5 * (X[:, :, None] - theta.T[None, :, :]) ** 2 / var.T[None, :, :])
        flp = parameters(self.feature_log_prob, xp)
        if self.model_type != "bernoulli":
            return X[:, :, None] * flp.T[None, :, :]
        on = _switches(X, self.binarize, self.features, xp)
        off = xp.log1p(-xp.exp(flp))
        return on[:, :, None] * (flp - off).T[None, :, :] + off.T[None, :, :]

    def explains(self) -> str | None:
        if self.expected_terms is None:  # pragma: no cover - every fit keeps them
            return "naive_bayes saved without its training rows' expected terms"
        return None

    def contributions(self, part: pa.Table, xp: Any
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Each feature's term less its mean over the training rows, per class (two
        classes: the second's less the first's, the log-odds' share); the base is the
        prior plus the mean terms. The exact Shapley values of an additive score with
        the training rows as the background (features independent), as linear models'."""
        xp = in_float64(xp)
        X = feature_matrix(part, self.features, xp)
        # the scores as transform computes them (the terms' sum rounds otherwise)
        predicted, proba = self.outputs_of(self.predict_matrix(X, xp))
        phi = to_numpy(self.terms(X, xp)) - self.expected_terms.T[None, :, :]
        base = self._prior + self.expected_terms.sum(axis=1)
        if len(self.classes) == 2:
            phi, base = phi[:, :, 1:] - phi[:, :, :1], base[1:] - base[:1]
        return predicted, proba, phi, base

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        return softmax(self.joint_log_likelihood(X, xp), xp)

    def outputs(self, part: pa.Table, xp: Any) -> tuple[np.ndarray, np.ndarray | None]:
        return super().outputs(part, in_float64(xp))  # always float64

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"log_prior": self.log_prior}
        if self.expected_terms is not None:
            out["expected_terms"] = self.expected_terms
        if self.model_type == "gaussian":
            out.update(theta=self.theta, var=self.var)
        else:
            out["feature_log_prob"] = self.feature_log_prob
        return out

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "model_type": self.model_type, "binarize": self.binarize}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]
                   ) -> NaiveBayesFitted:
        return cls(**cls.meta_args(meta), model_type=meta["model_type"],
                   binarize=meta.get("binarize"), log_prior=arrays["log_prior"],
                   theta=arrays.get("theta"), var=arrays.get("var"),
                   feature_log_prob=arrays.get("feature_log_prob"),
                   expected_terms=arrays.get("expected_terms"))


def _switches(X: Any, binarize: float | None, features: list[str], xp: Any) -> Any:
    """Bernoulli's 0/1 matrix: above ``binarize``, or the values themselves, which must
    then be 0 or 1 (a DataError naming the first column that is not). A SciPy sparse
    ``X`` stays sparse where its zeros stay off (``binarize`` of 0 or more)."""
    if issparse(X):
        if binarize is not None and binarize < 0:  # every zero is on
            return _switches(X.toarray(), binarize, features, xp)
        on = X.copy()
        if binarize is not None:
            on.data = (on.data > binarize).astype(on.dtype)
            on.eliminate_zeros()
            return on
        bad = (on.data != 0) & (on.data != 1)
        if bad.any():
            column = int(on.indices[np.argmax(bad)])
            value = float(on.data[np.argmax(bad)])
            raise DataError(f"feature column '{features[column]}' has {value!r}, but "
                            "naive_bayes with binarize: null takes features of 0 or 1 only",
                            hint="set binarize: to the value above which a feature is on (0 "
                                 "is scikit-learn's default)")
        return on
    if binarize is not None:
        return xp.astype(binarize < X, X.dtype)
    bad = (X != 0) & (X != 1)
    if bool(xp.any(bad)):
        column = int(np.argmax(to_numpy(xp.any(bad, axis=0))))
        value = to_numpy(X[:, column])[to_numpy(bad[:, column])][0]
        raise DataError(f"feature column '{features[column]}' has {value!r}, but naive_bayes "
                        "with binarize: null takes features of 0 or 1 only",
                        hint="set binarize: to the value above which a feature is on (0 is "
                             "scikit-learn's default)")
    return X


@register("naive_bayes")
class NaiveBayes(PlannedPredictions, Estimator):
    """Naive Bayes classifier: Gaussian, multinomial, Bernoulli or complement, in one pass.

    ```yaml
    - op: naive_bayes
      label: churned
      model_type: gaussian        # multinomial (counts) | bernoulli (on/off) | complement
      var_smoothing: 1.0e-9       # gaussian; smoothing: 1.0 for the other three
      validation_fraction: 0.2
    ```
    The same model as scikit-learn's GaussianNB / MultinomialNB / BernoulliNB /
    ComplementNB (a row of weight w as w copies) and MLlib's NaiveBayes.
    """

    Params = NaiveBayesParams
    explained = True
    schema_from_fit = True  # probability is float64 for 2 classes, list<double> for more

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        # a second pass only to score the held-out rows
        self.multi_pass = self.params.validation_fraction > 0

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params, sparse=True)

    def _label_type(self, schema: pa.Schema) -> pa.DataType:
        return classifier_label_type(schema, self.params.label, "naive_bayes")

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_inputs(schema, self.params, sparse=True)
        return with_predictions(schema, [False, True], self._label_type(schema))

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = check_inputs(schema, self.params, sparse=True)
        return {"phase": "fit", "features": features,
                "label_type": str(self._label_type(schema))}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p = self.params
        xp = in_float64(xp)  # always float64 (the tolerance of a var_smoothing of 1e-9)
        if state["phase"] == "validate":
            return validation_partial(self.fitted(state), part, p, xp)
        train, held = held_out(part, p)
        features = state["features"]

        def prepare(X: Any) -> Any:
            if p.model_type in ("multinomial", "complement"):
                require_counts(X, features, xp, f"{p.model_type} naive_bayes",
                               "use model_type: gaussian for continuous features, or leave "
                               "the column out (features:); a scaler before it makes values "
                               "negative")
            elif p.model_type == "bernoulli":
                X = _switches(X, p.binarize, features, xp)
            return X

        stats = class_sums(train, features, label_column(train, p.label),
                           pa.type_for_alias(state["label_type"]),
                           row_weights(train, p.weight), xp, p.model_type == "gaussian",
                           prepare, sparse=True)
        return {**stats, "rows": train.num_rows, "heldout": held.num_rows}

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "metrics" in a:
            return validation_combine(a, b)
        return {**combine_class_sums(a, b), "rows": a["rows"] + b["rows"],
                "heldout": a["heldout"] + b["heldout"]}

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "validate":
            model = self.fitted(state)
            return {**state, "phase": "done",
                    "validation": validation_finalize(model, stats)}, True
        state = {**state, **self._model_arrays(stats, state)}
        done = self.params.validation_fraction == 0
        return {**state, "phase": "done" if done else "validate"}, done

    def _model_arrays(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        classes, totals = stats["classes"], stats["weights"]
        weigh_classes(None, classes, totals, p.label)  # two classes at least
        require_positive_weight(float(totals.sum()), p.weight)
        empty = [c for c, t in zip(classes, totals) if t <= 0]
        if empty:
            raise DataError(f"class {empty[0]!r} of label '{p.label}' has training rows of "
                            "weight 0 only: naive_bayes cannot describe its features",
                            hint="give those rows a positive weight, or filter the class out")
        out: dict[str, Any] = {"classes": classes, "rows": stats["rows"],
                               "heldout": stats["heldout"],
                               "log_prior": np.log(self._priors(classes, totals))}
        features = state["features"]
        if p.model_type == "gaussian":
            out.update(theta=stats["means"], var=_variances(stats, p.var_smoothing, features))
        elif p.model_type == "multinomial":
            smoothed = stats["sums"] + p.smoothing
            out["feature_log_prob"] = (np.log(smoothed)
                                       - np.log(smoothed.sum(axis=1, keepdims=True)))
        elif p.model_type == "complement":
            # each class by the totals of the rows of every other class
            others = stats["sums"].sum(axis=0) - stats["sums"] + p.smoothing
            out["feature_log_prob"] = -(np.log(others)
                                        - np.log(others.sum(axis=1, keepdims=True)))
        else:
            out["feature_log_prob"] = (np.log(stats["sums"] + p.smoothing)
                                       - np.log(totals + 2.0 * p.smoothing)[:, None])
        out["expected_terms"] = _expected_terms(p.model_type, out, stats)
        return out

    def _priors(self, classes: list[Any], totals: np.ndarray) -> np.ndarray:
        p = self.params
        if p.priors is None:
            return totals / totals.sum()
        given = {}
        for key, value in p.priors.items():
            hits = [classes[i] for i in classes_named(key, classes)]
            if not hits:
                raise DataError(f"priors names class {key!r}, which label '{p.label}' does "
                                "not have in the training rows",
                                hint="classes: " + ", ".join(repr(c) for c in classes[:20]))
            given[hits[0]] = value
        missing = [c for c in classes if c not in given]
        if missing:
            raise DataError(f"priors has no probability for class {missing[0]!r} of label "
                            f"'{p.label}'" + (f" (and {len(missing) - 1} more)"
                                              if len(missing) > 1 else ""),
                            hint="give every class a prior, or leave priors out to use the "
                                 "classes' shares of the training rows")
        priors = np.array([given[c] for c in classes], dtype=np.float64)
        if not math.isclose(float(priors.sum()), 1.0, rel_tol=0.0, abs_tol=1e-8):
            raise DataError(f"priors sum to {float(priors.sum()):.10g}, not 1",
                            hint="give the classes' probabilities")
        return priors

    def fitted(self, state: dict[str, Any]) -> NaiveBayesFitted:
        if "log_prior" not in state:
            raise RuntimeError("naive_bayes: fitted() before the pass")
        p = self.params
        return NaiveBayesFitted(state["features"], state["classes"],
                                pa.type_for_alias(state["label_type"]), p.model_type,
                                state["log_prior"], theta=state.get("theta"),
                                var=state.get("var"),
                                feature_log_prob=state.get("feature_log_prob"),
                                binarize=p.binarize if p.model_type == "bernoulli" else None,
                                expected_terms=state.get("expected_terms"))

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if "log_prior" not in state:
            return {}
        out: dict[str, Any] = {
            "model_type": self.params.model_type, "classes": len(state["classes"]),
            "training_rows": int(state["rows"]), "validation_rows": int(state["heldout"])}
        if self.params.model_type != "complement":  # which scores without them
            out["priors"] = np.exp(state["log_prior"]).tolist()
        if "validation" in state:
            out["validation"] = state["validation"]
        return out


def _expected_terms(model_type: str, model: dict[str, Any], stats: dict[str, Any]
                    ) -> np.ndarray:
    """(classes, features): each feature's term of each class's joint log-likelihood
    averaged over the training rows (``NaiveBayesFitted.terms``' mean), from the means
    (and variances) of the features alone: the terms are of one feature each."""
    mean, variance = class_overall(stats)
    if model_type == "gaussian":
        theta, var = model["theta"], model["var"]
        return -0.5 * (np.log(var) + LOG_2PI) - 0.5 * (variance + (mean - theta) ** 2) / var
    flp = model["feature_log_prob"]
    if model_type != "bernoulli":
        return mean * flp
    off = np.log1p(-np.exp(flp))
    return mean * (flp - off) + off  # mean: the share of rows where the feature is on


def _variances(stats: dict[str, Any], var_smoothing: float, features: list[str]
               ) -> np.ndarray:
    """Each class's feature variances (population) plus ``var_smoothing`` times the
    largest variance of a feature over all the training rows."""
    epsilon = var_smoothing * float(np.max(class_overall(stats)[1]))
    var = stats["squares"] / stats["weights"][:, None] + epsilon
    if not (var > 0).all():
        c, j = np.argwhere(~(var > 0))[0]
        raise DataError(f"feature column '{features[j]}' is constant within class "
                        f"{stats['classes'][c]!r}: a Gaussian of variance 0 (var_smoothing "
                        "is 0, or every feature is constant)",
                        hint="raise var_smoothing (scikit-learn's default is 1e-9), or leave "
                             "the column out (features:)")
    return var
