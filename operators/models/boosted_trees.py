"""gradient_boosted_trees: Newton boosting of histogram trees, one tree level per pass.

Each round fits a tree (one per class for multiclass) to the gradient and hessian of
the loss at the current scores, as scikit-learn's HistGradientBoosting and XGBoost: a
split maximises ``G_l^2/(H_l + l2) + G_r^2/(H_r + l2) - G^2/(H + l2)``, a leaf adds
``-learning_rate * G / (H + l2)``. Losses: squared error (regression), the Poisson or
gamma half deviance with a log link (counts, positive amounts: the prediction is the exp
of the scores), log-loss (binary: sigmoid; more classes: softmax). Scores start at the
best constant (the mean, its log, the log-odds or log class priors). The absolute error
and the pinball loss of a ``quantile`` have no curvature: their trees split on the
gradients with hessians of 1, then each leaf takes the quantile of its rows' residuals
(and the scores start at the label's), found exactly over the partitions in a few passes
(``operators/models/selection.py``), as scikit-learn's ``_update_leaves_values``.
``lambdarank`` learns to rank the rows of each query (``group``) by LightGBM's lambdarank
gradients (``operators/models/ranking.py``), from scores of 0; a query's rows must be in one
partition (the summary pass checks), its held-out rows are whole queries and the held-out
loss is 1 - NDCG@``ndcg_at``.

The trees of the finished rounds live in the driver's state. A partition's memo
(``common.fit_memo``) keeps, per round, every training row's node in each tree of
the round (moved one level down per pass by a table lookup), the rows' scores and their
gradient and hessian: a round's last positions are its leaves, so no earlier tree is
walked again (XGBoost and LightGBM update predictions from leaf positions as well).
Without the memo (an engine that hands a new table object to every pass) a partition
walks the finished rounds' trees from the roots and the round's tree down to the level;
both add the same values in the same order, so the model is the same bit for bit.

``subsample`` keeps a row in a round by a hash of its content and the round;
``tree_features`` lets each tree split on a fraction of the features and ``max_features``
each node on some of its tree's (drawn by hashes of the seed and the tree's or node's id,
``trees.allowed_features``): a pass sums the histograms of its trees' features (every
feature of the tree, whatever the nodes draw), so a child's sibling is still its parent's
minus its own; ``monotonic`` constrains the output to rise
(1) or fall (-1) with a feature, as scikit-learn's ``monotonic_cst`` does: a node's
children's values stay within bounds its ancestors' constrained splits set (the middle of
their two children's values), candidate splits whose children's values go the wrong way
are not taken, and gains are the loss decreases at the bounded values (``trees.grow_level``);
``interactions`` keeps each branch of a tree on the features of one group (a node may
split on the features of the groups holding every feature its ancestors split on, as
scikit-learn's ``interaction_cst``: ``interaction_allowed``);
``early_stopping`` scores the held-out rows (``validation_fraction``) in the first pass of
every round and stops, keeping the trees grown so far, when the loss has not improved by
more than ``tol`` in ``n_iter_no_change`` rounds (scikit-learn's rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, Field

from operators.arrays import to_numpy, to_xp
from operators.base import (
    DataError,
    FitProgress,
    ParamError,
    SchemaError,
    register,
    register_fitted,
)
from operators.models import ranking, selection
from operators.models.common import (
    check_role,
    fit_memo,
    held_out,
    label_column,
    memo_release,
    memo_take,
    row_weights,
)
from operators.models.log_link import (
    LOG_LINK,
    LOSS_DESCRIPTION,
    check_tweedie_power,
    deviance_metric,
    half_deviance,
    half_deviance_derivatives,
    start_score,
    tweedie_power_field,
)
from operators.models.trees import (
    GAIN_RTOL,
    LEAF,
    SPLIT,
    Criterion,
    Level,
    Newton,
    TreeEstimator,
    TreeModelFitted,
    TreeParams,
    _ratio,
    add_roots,
    allowed_features,
    cut_places,
    derived_uniform,
    features_fraction,
    fraction_of_features,
    histograms,
    model_arrays,
    model_hashes,
    new_forest,
    node_keys,
    node_tables,
    prepare_rows,
    subsample_salt,
    tree_features,
    tree_label_type,
    truncate,
    walk_step,
)


def interaction_groups(groups: list[list[str]], features: list[str]) -> np.ndarray:
    """The groups as a (groups, features) mask, the features no group names as one more."""
    mask = np.zeros((len(groups) + 1, len(features)), dtype=bool)
    for g, group in enumerate(groups):
        mask[g, [features.index(f) for f in group]] = True
    mask[-1] = ~mask[:-1].any(axis=0)
    return mask[mask.any(axis=1)]


def interaction_allowed(forest: dict[str, np.ndarray], nodes: np.ndarray, groups: np.ndarray
                        ) -> np.ndarray:
    """Which features each node may split on, ``(nodes, features)``: those of the groups
    that hold every feature its ancestors split on (scikit-learn's interaction_cst)."""
    size = len(forest["tree"])
    parent = np.full(size, -1, dtype=np.int64)
    split = np.flatnonzero(forest["status"] == SPLIT)
    parent[forest["left"][split]] = split
    parent[forest["right"][split]] = split
    used = np.zeros((len(nodes), groups.shape[1]), dtype=bool)
    at = np.asarray(nodes, dtype=np.int64)
    rows = np.arange(len(nodes))
    while True:
        at = np.where(at >= 0, parent[np.maximum(at, 0)], -1)
        live = at >= 0
        if not live.any():
            break
        used[rows[live], forest["feature"][at[live]]] = True
    # a group fits when no feature used on the path is outside it
    fits = (used.astype(np.int64) @ (~groups).T.astype(np.int64)) == 0      # (nodes, groups)
    return (fits.astype(np.int64) @ groups.astype(np.int64)) > 0


class BoostedTreesParams(TreeParams):
    known_as: ClassVar[dict[str, str]] = {
        **TreeParams.known_as, "n_estimators": "n_trees", "num_boost_round": "n_trees",
        "num_round": "n_trees", "num_iterations": "n_trees", "max_iter": "n_trees",
        "maxIter": "n_trees", "rounds": "n_trees", "eta": "learning_rate",
        "stepSize": "learning_rate", "reg_lambda": "l2", "lambda": "l2", "lambda_l2": "l2",
        "reg_alpha": "l1", "lambda_l1": "l1", "gamma": "min_split_gain",
        "min_split_loss": "min_split_gain", "min_gain_to_split": "min_split_gain",
        "min_sum_hessian_in_leaf": "min_child_weight", "colsample_bytree": "tree_features",
        "feature_fraction": "tree_features", "colsample_bynode": "max_features",
        "bagging_fraction": "subsample", "subsampleRate": "subsample",
        "early_stopping_rounds": "early_stopping: true, n_iter_no_change: N",
        "interaction_constraints": "interactions", "interaction_cst": "interactions",
        "scale_pos_weight": "class_weight", "tweedie_variance_power": "tweedie_power",
        "quantile_alpha": "quantile", "qid": "group", "eval_at": "ndcg_at",
        "lambdarank_truncation_level": "truncation"}

    n_trees: int = Field(100, ge=1, le=100_000,
                         description="boosting rounds (one tree per class for multiclass)")
    learning_rate: float = Field(0.1, gt=0.0, description="shrinkage of each tree's values")
    max_depth: int = Field(6, ge=0, le=30, description="levels of splits per tree")
    min_samples_leaf: float = Field(20.0, gt=0,
                                    description="smallest training weight of a leaf (rows "
                                                "when there is no weight column)")
    l2: float = Field(0.0, ge=0.0, description="L2 penalty on leaf values (added to H; "
                                                "XGBoost's lambda, LightGBM's lambda_l2)")
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on leaf values: gradient sums "
                                                "within it give a leaf of 0 (XGBoost's "
                                                "alpha, LightGBM's lambda_l1)")
    min_split_gain: float = Field(
        0.0, ge=0.0, description="gain a split must bring as XGBoost counts it, "
                                 "G_L^2/(H_L+l2) + G_R^2/(H_R+l2) - G^2/(H+l2): twice the "
                                 "loss decrease that the model's gains are (XGBoost's "
                                 "gamma, LightGBM's min_gain_to_split)")
    min_child_weight: float = Field(0.001, ge=0.0, description="smallest hessian sum of a "
                                                               "leaf (XGBoost's "
                                                               "min_child_weight; "
                                                               "min_samples_leaf counts rows)")
    subsample: float = Field(1.0, gt=0.0, le=1.0,
                             description="fraction of rows each round learns from (by row "
                                         "hash and round)")
    early_stopping: bool = Field(False, description="stop when the held-out loss stops "
                                                    "improving (needs validation_fraction)")
    n_iter_no_change: int = Field(10, ge=1, description="rounds without improvement before "
                                                        "stopping")
    tol: float = Field(1e-7, ge=0.0, description="smallest improvement of the held-out loss")
    tree_features: float = Field(1.0, gt=0.0, le=1.0,
                                 description="fraction of the features each tree may split on, "
                                             "drawn per tree (XGBoost's colsample_bytree)")
    max_features: Annotated[Literal["sqrt", "log2", "all"] | float,
                            AfterValidator(fraction_of_features)] = Field(
        "all", description="features each node may split on, of its tree's: sqrt, log2, all, "
                           "or a fraction in (0, 1] (scikit-learn's max_features, XGBoost's "
                           "colsample_bynode)")
    interactions: list[list[str]] | None = Field(
        None, description="groups of features that may split in one branch of a tree, e.g. "
                          "[[tenure, plan], [region]]; the features no group names form one "
                          "more (scikit-learn's interaction_cst, XGBoost's "
                          "interaction_constraints)")
    loss: Literal["squared_error", "absolute_error", "quantile", "poisson", "gamma",
                  "tweedie", "lambdarank"] | None = (
        Field(None, description="regression loss: squared_error (default); absolute_error "
                                "(the median) or quantile (the `quantile` given, e.g. 0.9 "
                                "for a prediction interval's top), whose leaves are "
                                "quantiles of their rows' residuals; " + LOSS_DESCRIPTION
                                + " the trees' sum "
                                "(scikit-learn's and XGBoost's); lambdarank: learning to "
                                "rank the rows of each `group` (LightGBM's lambdarank, "
                                "XGBoost's rank:ndcg), the label a relevance grade 0-30, "
                                "the prediction a score to sort a query's rows by; "
                                "classes always use the log-loss"))
    tweedie_power: float = tweedie_power_field()
    quantile: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="the quantile that loss: quantile predicts "
                                               "(scikit-learn's quantile, XGBoost's "
                                               "quantile_alpha, LightGBM's alpha)")
    group: str | None = Field(
        None, description="loss: lambdarank's query id column (integer or string; LightGBM's "
                          "group, XGBoost's qid): a query's rows must be in one partition "
                          "(`- op: repartition` with `by: [<group>]` first), in any order; "
                          "validation_fraction holds out whole queries")
    truncation: int = Field(30, ge=1, description="lambdarank: pairs with a row in the top "
                                                  "truncation places of their query's "
                                                  "ranking learn (LightGBM's "
                                                  "lambdarank_truncation_level)")
    rank_norm: bool = Field(True, description="lambdarank: scale each query's gradients by "
                                              "log2(1 + S)/S of their sum S, and weigh pairs "
                                              "by 1/(0.01 + score gap) (LightGBM's "
                                              "lambdarank_norm)")
    ndcg_at: int = Field(10, ge=1, description="lambdarank: the k of the held-out NDCG@k "
                                               "(validation metrics and early stopping; "
                                               "LightGBM's eval_at)")


@register_fitted("gradient_boosted_trees.fitted")
class BoostedTreesFitted(TreeModelFitted):
    """Boosted trees: ``base + sum of leaf values``, through a sigmoid (binary) or softmax
    (multiclass) for classes."""


@register("gradient_boosted_trees")
class GradientBoostedTrees(TreeEstimator):
    """Gradient-boosted trees (squared error, quantiles, log-loss, lambdarank), a level a pass.

    ```yaml
    - op: gradient_boosted_trees
      label: churned
      n_trees: 200
      learning_rate: 0.1
      max_depth: 6
      subsample: 0.8              # rows per round, by row hash
      tree_features: 0.8          # features per tree (XGBoost's colsample_bytree)
      monotonic: {monthly_charges: 1}   # the churn risk only rises with the price
      categorical: [plan, region] # split by sets of values (no one_hot needed)
      validation_fraction: 0.1
      early_stopping: true        # stop when the held-out loss stops improving
    ```
    A sparse column (vectorize_text with `sparse: true`) is read as decision_tree reads
    it: its terms are features, an absent term the value 0 (XGBoost and LightGBM read it
    as missing), only the stored terms summed on the CPU.
    """

    Params = BoostedTreesParams

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        if self.params.early_stopping and self.params.validation_fraction <= 0:
            raise ParamError("early_stopping needs held-out rows",
                             hint="set validation_fraction (0.1 is usual)")
        unused = sorted({"n_iter_no_change", "tol"} & self.params.model_fields_set)
        if unused and not self.params.early_stopping:
            # XGBoost's early_stopping_rounds alone turns it on; here it would do nothing
            raise ParamError(f"{' and '.join(unused)} {'say' if len(unused) > 1 else 'says'} "
                             "when early stopping stops, and early_stopping is off: every "
                             "one of n_trees would be fitted",
                             hint="set early_stopping: true (with validation_fraction), or "
                                  f"leave {' and '.join(unused)} out")
        if self.params.loss == "quantile" and self.params.quantile is None:
            raise ParamError("loss: quantile needs the quantile to predict",
                             hint="add quantile: 0.9 (or the level wanted, between 0 and 1)")
        check_tweedie_power(self.params)
        if self.params.loss == "lambdarank" and self.params.group is None:
            raise ParamError("loss: lambdarank ranks the rows of each query, and group "
                             "(the query id column) is not set",
                             hint="add group: <the query id column>")
        if self.params.group is not None and self.params.loss != "lambdarank":
            raise ParamError(f"group: {self.params.group} names the queries of loss: "
                             f"lambdarank, and the loss is "
                             f"{self.params.loss or 'squared_error (the default)'}",
                             hint="add loss: lambdarank, or leave group out")
        if self.params.loss == "lambdarank" and self.params.task == "classification":
            raise ParamError("loss: lambdarank scores rows to rank them, not classes",
                             hint="leave task out")
        if self.params.quantile is not None and self.params.loss != "quantile":
            raise ParamError(f"quantile: {self.params.quantile:g} is the level of "
                             f"loss: quantile, and the loss is "
                             f"{self.params.loss or 'squared_error (the default)'}",
                             hint="add loss: quantile, or leave quantile out")

    # ------------------------------------------------------------------ driver

    def _outputs(self, state: dict[str, Any]) -> int:
        return len(state["classes"]) if state["classify"] and len(state["classes"]) > 2 else 1

    def _criterion(self, state: dict[str, Any]) -> Criterion:
        p = self.params
        if self._loss_name(state) in LEAF_QUANTILE:
            gradients = (-1.0, 1.0) if p.loss == "absolute_error" else (
                -self._leaf_level(), 1.0 - self._leaf_level())
            return LeafQuantile(p.l2, p.learning_rate, 1, l1=p.l1,
                                min_hessian=p.min_child_weight, gradients=gradients,
                                blind_splits=p.min_split_gain == 0)
        return Newton(p.l2, p.learning_rate, self._outputs(state), l1=p.l1,
                      min_hessian=p.min_child_weight)

    def _min_gain(self, state: dict[str, Any]) -> float:
        # and more than the noise of the sums once the fit has made real splits: after
        # rounds that fit the rows exactly the gradients are rounding residue, whose
        # "gains" (1e-30) came out otherwise in another partitioning and split on noise.
        # A gain is a gradient sum squared: a gradient sum GAIN_RTOL of the largest the
        # fit has seen gains GAIN_RTOL**2 of its gain (GAIN_RTOL of the gain stopped real
        # splits of labels of more than ~5 digits' range: 1e6 * a + b fit a only)
        scale = float(state["forest"]["gain"].max(initial=0.0))
        # XGBoost and LightGBM compare gamma with G^2/(H + l2) sums, without the half
        # of the loss decrease that the gains here are
        return max(self.params.min_split_gain / 2, GAIN_RTOL**2 * scale)

    def _start(self, state: dict[str, Any]) -> dict[str, Any]:
        k = self._outputs(state)
        loss = self._loss_name(state)
        if loss in LEAF_QUANTILE:  # the label's quantile: a selection first
            return self._select(state, "base", np.zeros(1, np.int64))
        if loss == "lambdarank":  # scores start at 0, as LightGBM's
            base = np.zeros(1)
        elif loss in LOG_LINK:
            base = np.array([start_score(loss, state["label_min"], state["label_max"],
                                         state["mean"], self.params.label,
                                         self.params.tweedie_power)])
        elif not state["classify"]:
            base = np.array([state["mean"]])
        else:
            prior = np.clip(state["prior"], 1e-15, 1.0)
            base = np.array([math.log(prior[1] / prior[0])]) if k == 1 else np.log(prior)
        return self._first_round(state, base)

    def _first_round(self, state: dict[str, Any], base: np.ndarray) -> dict[str, Any]:
        k = self._outputs(state)
        forest = add_roots(new_forest(k), np.arange(k), k)
        state = {**state, "phase": "grow", "forest": forest, "base": base, "round": 0,
                 "losses": [], "stopped": False, "loss_due": self.params.early_stopping}
        return self._next_level(state)

    def _empty_value(self, state: dict[str, Any]) -> np.ndarray:
        return np.zeros(1)

    def _check_params(self, classify: bool) -> None:
        super()._check_params(classify)
        if classify and self.params.loss is not None:
            raise ParamError(f"loss: {self.params.loss} is a regression loss, and the label "
                             "makes this a classifier (which uses the log-loss)",
                             hint="leave loss out, or set task: regression for a numeric label")

    def _label_type(self, schema: pa.Schema) -> tuple[bool, pa.DataType]:
        if self.params.loss != "lambdarank":
            return super()._label_type(schema)
        p = self.params
        ranking.check_group_column(schema, p.group)
        check_role("group", p.group, p.features)
        if p.group in (p.label, p.weight):
            raise ParamError(f"'{p.group}' is the group and the label or weight",
                             hint="group names the query id column")
        return tree_label_type(schema, p.model_copy(update={"task": "regression"}), self.name)

    def _ranks(self, state: dict[str, Any]) -> bool:
        return self._loss_name(state) == "lambdarank"

    def _loss_name(self, state: dict[str, Any]) -> str:
        return "log_loss" if state["classify"] else self.params.loss or "squared_error"

    children_share_features = True  # the features sampled per tree: a node's are its tree's

    def _n_sampled(self, state: dict[str, Any]) -> int:
        return features_fraction(self.params.tree_features, len(state["features"]),
                                 state["classify"])

    def _featsel(self, state: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray | None]:
        """With ``tree_features``, a pass sums the histograms of its trees' features only
        (those of a node are its tree's)."""
        n, m = len(state["features"]), self._n_sampled(state)
        if m >= n:
            return lambda nodes: None
        trees, seed = state["forest"]["tree"], self.params.seed
        return lambda nodes: tree_features(trees[nodes], n, m, seed)

    def _check_features(self, features: list[str]) -> None:
        super()._check_features(features)
        named = [f for group in self.params.interactions or [] for f in group]
        unknown = [f for f in named if f not in features]
        if unknown:
            raise SchemaError(f"interactions names '{unknown[0]}', which is not a feature",
                              hint="features: " + ", ".join(features[:20]))

    def _allowed(self, state: dict[str, Any], nodes: np.ndarray) -> np.ndarray | None:
        n = len(state["features"])
        per_tree = self._n_sampled(state)
        allowed = allowed_features(
            node_keys(state["forest"], nodes), state["forest"]["tree"][nodes], n, per_tree,
            lambda m: features_fraction(self.params.max_features, m, state["classify"]),
            self.params.seed)
        if self.params.interactions is None:
            return allowed
        interacting = interaction_allowed(state["forest"], nodes,
                                          interaction_groups(self.params.interactions,
                                                             state["features"]))
        return interacting if allowed is None else allowed & interacting

    def _before_level(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        if "residuals" in stats:  # the round's residuals' spread, for its leaves' quantiles
            state = {**state, "residuals": stats["residuals"]}
        if "loss" not in stats:
            return state
        if not stats["loss_weight"] > 0:  # each round's loss 0: it would stop, silently
            what = "queries" if self._ranks(state) else "rows (of weight > 0)"
            raise DataError(f"early_stopping: validation_fraction "
                            f"{self.params.validation_fraction:g} held out no {what} to "
                            "measure the rounds on",
                            hint="raise validation_fraction, or turn early_stopping off")
        loss = stats["loss"] / stats["loss_weight"]
        losses = [*state["losses"], float(loss)]
        state = {**state, "losses": losses, "loss_due": False}
        if not self._should_stop(losses):
            return state
        # the round being grown is dropped: its roots are the last trees
        k = self._outputs(state)
        forest = truncate(state["forest"], state["round"] * k)
        return {**state, "forest": forest, "phase": "grown", "stopped": True}

    def _should_stop(self, losses: list[float]) -> bool:
        """scikit-learn's rule: no loss of the last n_iter_no_change rounds beats the one
        before them by more than tol."""
        wait = self.params.n_iter_no_change
        if len(losses) <= wait:
            return False
        reference = losses[-wait - 1] - self.params.tol
        return not any(loss < reference for loss in losses[-wait:])

    def _growing_from(self, state: dict[str, Any]) -> int:
        return int(state["forest"]["roots"][state["round"] * self._outputs(state)])

    def _finish_growth(self, state: dict[str, Any]) -> dict[str, Any]:
        if state["stopped"]:
            return state
        first = self._growing_from(state)
        if state.get("cuts", 0) <= state["round"]:  # lossguide: the round's trees cut once
            state = self._cut(state, first)
        if (self._loss_name(state) in LEAF_QUANTILE
                and state.get("leaves_set") != state["round"]):
            # the round's leaves become quantiles of their rows' residuals first
            forest = state["forest"]
            leaves = first + np.flatnonzero(forest["status"][first:] == LEAF)
            return self._select(state, "leaves", leaves)
        rounds = state["round"] + 1
        state = {**state, "round": rounds}
        if rounds >= self.params.n_trees:
            return state
        k = self._outputs(state)
        forest = add_roots(state["forest"], np.arange(rounds * k, (rounds + 1) * k), k)
        return self._next_level({**state, "forest": forest, "siblings": None,
                                 "loss_due": self.params.early_stopping})

    def _cut(self, state: dict[str, Any], first: int) -> dict[str, Any]:
        """The round's trees cut (lossguide), and where the cut puts each node's rows
        (``cut_places``), for the partitions' walks of the round (``_walk``)."""
        if self.params.grow_policy != "lossguide":
            return state
        places = cut_places(state["forest"], first, int(self.params.max_leaves))
        state = super()._cut(state, first)
        bottom = int(state["forest"]["depth"][first:].max())
        return {**state, "cut_places": {"cuts": state["cuts"], "round": state["round"],
                                        "places": places, "bottom": bottom}}

    def _model(self, state: dict[str, Any]) -> BoostedTreesFitted:
        arrays, depth = model_arrays(state["forest"], len(state["features"]), state["base"])
        classify = state["classify"]
        link = "exp" if self._loss_name(state) in LOG_LINK else "identity"
        if classify:
            link = "sigmoid" if self._outputs(state) == 1 else "softmax"
        return BoostedTreesFitted(
            state["features"], state["classes"] if classify else None,
            pa.type_for_alias(state["label_type"]) if classify else None,
            combine="sum", link=link, depth=depth, arrays=arrays,
            categories=state["categories"],
            quantile=self._leaf_level() if self._loss_name(state) in LEAF_QUANTILE else None,
            deviance=self._deviance(state),
            ranking={"group": self.params.group, "ndcg_at": self.params.ndcg_at}
            if self._ranks(state) else None)

    def _deviance(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The deviance metric a log-link loss minimises (its validation metric and what
        promote and tune compare such models by)."""
        return deviance_metric(self._loss_name(state), self.params.tweedie_power)

    # ------------------------------------------------------------------ leaf quantiles

    def _select(self, state: dict[str, Any], kind: str, nodes: np.ndarray
                ) -> dict[str, Any]:
        """Passes that find a quantile of each group's residuals (``selection``): the
        label's (``base``: one group, before the first round) or those of the rows at
        each of the round's leaves (``leaves``, the leaves' node ids). The leaves' rows
        and weights are the tree's (its histograms summed them), so with the round's
        residual spread (``residuals``, from its first pass) their search starts
        without a summary pass."""
        queries = sent = None
        moments = state.get("residuals")
        if kind == "leaves" and moments is not None and moments[0] > 0:
            weight = state["forest"]["weight"][nodes]
            level, weighted, median = self._query_settings()
            queries = selection.start_from(
                np.rint(weight).astype(np.int64) if not weighted else None, weight,
                moments, level, weighted, median)
            sent = None if queries is None else selection.broadcast(queries)
        return {**state, "phase": "select", "residuals": None,
                "select": {"kind": kind, "nodes": nodes, "queries": queries, "sent": sent}}

    def _leaf_level(self) -> float:
        """The quantile the leaves take (0.5 but for loss: quantile)."""
        return 0.5 if self.params.quantile is None else float(self.params.quantile)

    def _query_settings(self) -> tuple[float, bool, bool]:
        """``selection.start``'s level, weighted and median (absolute_error's)."""
        return (self._leaf_level(), self.params.weight is not None,
                self.params.loss == "absolute_error")

    def _select_partial(self, part: pa.Table, state: dict[str, Any], xp: Any
                        ) -> dict[str, Any]:
        memo = fit_memo(part, state["token"])
        prep = self._prepared(part, state, memo, xp)
        groups, values, mass = self._selection_rows(prep, state, memo, xp)
        sel = state["select"]
        if sel["sent"] is None:
            out = selection.summarise(xp, groups, values, mass, len(sel["nodes"]))
            return {**out, "kind": "select"}
        # intervals only narrow: the rows outside this pass's are out of the later ones
        groups, values, mass = selection.narrow(xp, groups, values, mass, sel["sent"])
        memo["selection"] = (memo["selection"][0], (groups, values, mass))
        out = selection.search_partial(xp, groups, values, mass, sel["sent"])
        return {**out, "kind": "select"}

    def _selection_rows(self, prep: dict[str, Any], state: dict[str, Any],
                        memo: dict[str, Any], xp: Any) -> tuple[Any, Any, Any | None]:
        """The rows a selection counts: their group, value and mass (None: 1 a row).
        ``base``: every training row of positive weight and its label; ``leaves``: the
        rows the round learns from, at their leaf, and their residual (label minus the
        finished rounds' score). Kept in the memo for the selection's passes."""
        sel = state["select"]
        key = (state.get("round"), sel["kind"])
        held = memo.get("selection")
        if held is not None and held[0] == key:
            return held[1]
        if sel["kind"] == "base":
            rows = xp.nonzero(prep["w"] > 0)[0]
            groups = xp.zeros(rows.shape, dtype=xp.int64)
            values = xp.take(xp.astype(prep["y"], xp.float64), rows)
        else:
            forest = state["forest"]
            first = self._growing_from(state)
            tables = node_tables(forest, first, len(forest["tree"]), state["missing"],
                                 prep["n"], xp, sel["nodes"])
            bottom = int(forest["depth"][first:].max())
            pos = self._positions(prep, state, memo, tables, xp, bottom)[0]
            group = xp.take(tables["slot"], pos)
            residual, learners = self._residuals(prep, state, memo, xp)
            rows = xp.nonzero(group >= 0 if learners is None else (group >= 0) & learners)[0]
            groups = xp.take(group, rows)
            values = xp.take(residual, rows)
        mass = None if self.params.weight is None else xp.take(prep["w"], rows)
        memo["selection"] = (key, (groups, values, mass))
        return groups, values, mass

    def _select_update(self, stats: dict[str, Any], state: dict[str, Any]
                       ) -> tuple[dict[str, Any], bool]:
        sel = state["select"]
        if sel["queries"] is None:
            queries = selection.start(stats, *self._query_settings())
        else:
            queries = selection.search_update(sel["queries"], sel["sent"], stats)
        passes = state.get("selection_passes", 0) + 1
        if not selection.done(queries):
            sel = {**sel, "queries": queries, "sent": selection.broadcast(queries)}
            return {**state, "select": sel, "selection_passes": passes}, False
        found = selection.values(queries)
        state = {**state, "select": None, "selection_passes": passes}
        if sel["kind"] == "base":
            return self._first_round(state, found[:1]), False
        # a leaf's value: the learning rate times its rows' residual quantile (within the
        # bounds of monotonic constraints); the penalties l1 and l2 shaped the splits
        # only (scikit-learn's rule)
        forest = {**state["forest"], "value": state["forest"]["value"].copy()}
        nodes = sel["nodes"]
        quantile = found
        direction = self._directions(state)
        if direction is not None:
            quantile = monotone_leaves(forest, self._growing_from(state), nodes, found,
                                       direction)
        has_rows = ~np.isnan(found)
        forest["value"][nodes[has_rows], 0] = self.params.learning_rate * quantile[has_rows]
        return self._after_growth({**state, "forest": forest, "leaves_set": state["round"],
                                   "phase": "grown"})

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        if state["phase"] == "select":
            return self._select_partial(part, state, xp)
        if state["phase"] == "validate" and self._ranks(state):
            return {"ndcg": self._held_ndcg(part, state, xp)}
        return super().partial(part, state, xp)

    def _summary_partial(self, part: pa.Table, state: dict[str, Any]) -> dict[str, Any]:
        out = super()._summary_partial(part, state)
        if self._ranks(state):  # relevance grades, and the queries the partition holds
            p = self.params
            labels = label_column(part, p.label).to_numpy(zero_copy_only=False)
            ranking.check_relevance(np.asarray(labels, dtype=np.float64), p.label)
            keys = ranking.query_keys(part, p.group)
            out["ranking"] = {"keys": keys, "queries": len(keys), "span": None}
        return out

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if a.get("kind") == "select":
            return {**selection.combine(a, b), "kind": "select"}
        if "ndcg" in a:
            return {"ndcg": a["ndcg"] + b["ndcg"]}
        out = super().combine(a, b)
        if "ranking" in a:
            out["ranking"] = ranking.combine_keys(a["ranking"], b["ranking"])
        return out

    def _summarise(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        if "ranking" in stats and stats["ranking"]["span"] is not None:
            raise ranking.span_error(self.params.group, stats["ranking"]["span"])
        out = super()._summarise(stats, state)
        if "ranking" in stats:
            out["queries"] = int(stats["ranking"]["queries"])
        return out

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "select":
            return self._select_update(stats, state)
        if state["phase"] == "validate" and self._ranks(state):
            total, weight, queries, rows = stats["ndcg"].tolist()
            validation: dict[str, Any] = {"count": int(rows)}
            if weight > 0:
                validation.update(ndcg=total / weight, queries=int(queries),
                                  ndcg_at=self.params.ndcg_at)
            return {**state, "phase": "done", "validation": validation}, True
        return super().update(stats, state)

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        """The tree being grown, of ``n_trees``, and its level, with a fit ETA from the
        trees grown and the share of this one (``Level.done``); early stopping, or trees
        that stop short of ``max_depth``, may end the fit sooner."""
        level = state.get("level")
        if state.get("phase") != "grow" or level is None:
            return None
        n, depth = self.params.n_trees, self.params.max_depth
        done = state["round"] + Level.done(level, depth)
        return FitProgress(f"tree {min(state['round'] + 1, n)} of {n}, "
                           f"{Level.where(level, depth)}", done / n)

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        out = super().metrics(state)
        if "forest" not in state:
            return out
        out["rounds"] = len(state["forest"]["roots"]) // self._outputs(state)
        if self._loss_name(state) in LEAF_QUANTILE:  # the quantiles' passes
            out["selection_passes"] = state.get("selection_passes", 0)
        if self._ranks(state):
            out["queries"] = state["queries"]
        if self.params.early_stopping:
            out["stopped_early"] = bool(state["stopped"])
            out["validation_losses"] = [float(v) for v in state["losses"]]
        return out

    # ------------------------------------------------------------------ partitions

    def _level_partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        """The histograms of this pass's nodes from the round's rows: every training row
        keeps its node in each tree of the round (``_positions``), so a level moves rows
        one step down and the round's last positions give the rows' new scores."""
        memo = fit_memo(part, state["token"])
        prep = self._prepared(part, state, memo, xp)
        out = self._pass_extras(part, prep, state, memo, xp)
        columns = self._round_channels(prep, state, memo, xp)  # before positions move
        if self._loss_name(state) in LEAF_QUANTILE and state["level"]["depth"] == 0:
            out["residuals"] = self._residual_moments(prep, state, memo, xp)
        nodes, featsel = Level.group(state["level"])
        forest, k, n = state["forest"], self._outputs(state), prep["n"]
        first = int(forest["roots"][state["round"] * k])
        tables = node_tables(forest, first, len(forest["tree"]), state["missing"], n, xp,
                             nodes)
        positions = self._positions(prep, state, memo, tables, xp)
        learners = self._learners(prep, state, memo, xp)
        # at the roots every row learns: their weight sums are the same every round (and
        # feature, when the rounds' trees sum the same features)
        roots = state["level"]["depth"] == 0 and learners is None and featsel is None
        owner = forest["tree"][nodes] - state["round"] * k
        hist: np.ndarray | None = None
        for column, pos in enumerate(positions):
            # the tree's nodes are the slots [lo, hi): nodes come sorted by tree
            lo, hi = np.searchsorted(owner, [column, column + 1]).tolist()
            if lo == hi:
                continue
            slot = xp.take(tables["slot"], pos)
            inside = slot >= 0 if learners is None else (slot >= 0) & learners
            rows = xp.nonzero(inside)[0]
            if rows.shape[0] == 0:
                continue
            channels = columns[column]
            if rows.shape[0] != n:
                channels = [xp.take(c, rows) for c in channels]
            weights = memo.get("root_weights") if roots else None
            chosen, by_row, m = None, prep.get("by_row"), len(state["features"])
            if featsel is not None and by_row is not None:  # the tree's codes, row-major
                by_row, m = self._tree_codes(memo, by_row, state, column, featsel[lo])
            elif featsel is not None:
                chosen = featsel[lo:hi]
            sums = histograms(xp, prep["codes"], n, rows, xp.take(slot, rows) - lo,
                              channels if weights is None else channels[:-1], None, 1,
                              chosen, m, hi - lo, state["missing"] + 1, by_row)
            if weights is not None:
                sums = np.concatenate([sums, weights], axis=3)
            elif roots:
                memo["root_weights"] = sums[..., -1:].copy()
            if hist is None:
                hist = np.zeros((sums.shape[0], len(nodes), *sums.shape[2:]))
            hist[:, lo:hi] = sums
        out.update({"kind": "level", "hist": hist})
        return out

    @staticmethod
    def _tree_codes(memo: dict[str, Any], by_row: np.ndarray, state: dict[str, Any],
                    column: int, features: np.ndarray) -> tuple[np.ndarray, int]:
        """The partition's codes of a tree's features only, row-major, made once a round
        (a level's rows gather from it as from every feature's codes, at a fraction of
        the bytes)."""
        held = memo.get("tree_codes")
        if held is None or held[0] != state["round"]:
            held = memo["tree_codes"] = (state["round"], {})
        if column not in held[1]:
            held[1][column] = np.ascontiguousarray(by_row[:, features])
        return held[1][column], len(features)

    def _positions(self, prep: dict[str, Any], state: dict[str, Any], memo: dict[str, Any],
                   tables: dict[str, Any], xp: Any, depth: int | None = None) -> list[Any]:
        """Each row's node (local id) in each tree of the round at this level's depth (or
        ``depth``): the memo's moved down the levels split since, or from the roots."""
        forest, k, n = state["forest"], self._outputs(state), prep["n"]
        rounds = state["round"]
        depth = state["level"]["depth"] if depth is None else depth
        held = self._walk(state, memo, xp)
        cuts = state.get("cuts", 0)
        if held is not None and held[0] == rounds and held[1] <= depth and held[3] == cuts:
            positions, steps = held[2], depth - held[1]
        else:
            first = int(forest["roots"][rounds * k])
            positions = [xp.full((n,), int(forest["roots"][rounds * k + c]) - first,
                                 dtype=xp.int64) for c in range(k)]
            steps = depth
        for _ in range(steps):
            positions = [walk_step(pos, _row_ids(prep, xp), prep["codes"], tables, xp)
                         for pos in positions]
        if memo.pop("walk", None) is not None:
            memo_release(memo, k * n * 8)
        if memo_take(memo, k * n * 8):
            memo["walk"] = (rounds, depth, positions, cuts)
        return positions

    @staticmethod
    def _walk(state: dict[str, Any], memo: dict[str, Any], xp: Any) -> tuple | None:
        """The memo's walk ``(round, depth, positions, cuts)``: the rows' nodes in each
        tree of the round after ``depth`` levels. A walk of the trees before the round's
        cut (grow_policy: lossguide) names nodes no longer there; the cut's places move
        it onto the cut trees (at most their depth: every row is at a leaf by then)."""
        held, cut = memo.get("walk"), state.get("cut_places")
        if (held is not None and cut is not None and held[0] == cut["round"]
                and held[3] == cut["cuts"] - 1):
            places = to_xp(cut["places"], xp)
            held = (held[0], min(held[1], cut["bottom"]),
                    [xp.take(places, pos) for pos in held[2]], cut["cuts"])
            memo["walk"] = held
        return held

    def _learners(self, prep: dict[str, Any], state: dict[str, Any], memo: dict[str, Any],
                  xp: Any) -> Any | None:
        """Which rows the round's trees learn from (positive weight, in the subsample);
        None for all."""
        held = memo.get("learners")
        if held is not None and held[0] == state["round"]:
            return held[1]
        keep = prep["w"] > 0
        if self.params.subsample < 1:
            uniform = derived_uniform(prep["hash"], subsample_salt(state["round"]), xp)
            keep = keep & (uniform < self.params.subsample)
        learners = None if bool(xp.all(keep)) else keep
        memo["learners"] = (state["round"], learners)
        return learners

    def _pass_extras(self, part: pa.Table, prep: dict[str, Any], state: dict[str, Any],
                     memo: dict[str, Any], xp: Any) -> dict[str, Any]:
        if not state["loss_due"]:
            return {}
        held = memo["held"]  # prepared with the training rows (``_prepared``)
        raw = self._raw(held, state, memo, "held_raw", xp)
        if self._ranks(state):  # 1 - NDCG@k, a sum over the held-out queries
            total, weight = self._ndcg_sums(_host_scores(raw), held)
            return {"loss": weight - total, "loss_weight": float(weight)}
        loss = _loss(raw, held["y"], self._outputs(state), self._loss_name(state), xp,
                     self._leaf_level(), self.params.tweedie_power)
        return {"loss": float(xp.sum(held["w"] * loss)), "loss_weight": float(xp.sum(held["w"]))}

    def _prepared(self, part: pa.Table, state: dict[str, Any], memo: dict[str, Any],
                  xp: Any) -> dict[str, Any]:
        """``_prepared_rows``, with a ranking's queries (on the host)."""
        prep = self._prepared_rows(part, state, memo, xp)
        if not self._ranks(state):
            return prep
        held = memo.get("held")
        if "query" not in prep or (held is not None and "query" not in held):
            train, held_rows = held_out(part, self.params)
            for rows, table, measured in ((prep, train, False), (held, held_rows, True)):
                if rows is not None and "query" not in rows:
                    rows.update(self._query_rows(table, state, measured))
        return prep

    def _query_rows(self, table: pa.Table, state: dict[str, Any], measured: bool = False
                    ) -> dict[str, Any]:
        """A ranking's rows on the host: their query (a code), relevance and, for the
        gradients, the hash that orders rows of equal score, or, for the held-out NDCG
        (``measured``), their weights (None without a weight column)."""
        p = self.params
        labels = np.asarray(label_column(table, p.label).to_numpy(zero_copy_only=False),
                            dtype=np.float64)
        out = {"query": ranking.query_codes(table, p.group), "relevance": labels}
        if measured:
            out["weight"] = row_weights(table, p.weight) if p.weight else None
        else:
            out["tiebreak"] = model_hashes(table, p, state["features"])
        return out

    def _ndcg_sums(self, score: np.ndarray, rows: dict[str, Any]) -> tuple[float, float]:
        """The held-out queries' NDCG@k sum and weight, each query weighted by the mean of
        its rows' weights (as evaluate's and LightGBM's), from ``_query_rows``' rows."""
        return ranking.ndcg_sums(score, rows["relevance"], rows["query"], self.params.ndcg_at,
                                 rows["weight"])

    def _prepared_rows(self, part: pa.Table, state: dict[str, Any], memo: dict[str, Any],
                       xp: Any) -> dict[str, Any]:
        """The training rows (as every tree estimator), and the held-out rows too when
        this pass scores them: both in one copy to the device."""
        if not state.get("loss_due") or "held" in memo:
            return super()._prepared(part, state, memo, xp)
        train, held = held_out(part, self.params)
        tables = [held] if "prep" in memo else [train, held]
        prepared = prepare_rows(tables, state, self.params, xp, self._row_hash())
        memo["held"] = prepared[-1]
        if len(prepared) == 2:
            memo["prep"] = prepared[0]
        return memo["prep"]

    def _row_hash(self) -> bool:
        return self.params.subsample < 1

    def _combine_level(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = super()._combine_level(a, b)
        if "loss" in a:
            out.update(loss=a["loss"] + b["loss"], loss_weight=a["loss_weight"] + b["loss_weight"])
        if "residuals" in a:
            out["residuals"] = a["residuals"] + b["residuals"]
        return out

    def _residual_moments(self, prep: dict[str, Any], state: dict[str, Any],
                          memo: dict[str, Any], xp: Any) -> np.ndarray:
        """The rows the round learns from: how many, their residuals' sum and sum of
        squares (where the round's leaf quantiles are first looked for)."""
        residual, learners = self._residuals(prep, state, memo, xp)
        if learners is None:
            learners = xp.ones(residual.shape, dtype=xp.bool)
        taken = xp.astype(learners, xp.float64)
        residual = xp.where(learners, residual, xp.zeros_like(residual))
        return to_numpy(xp.stack([xp.sum(taken), xp.sum(residual),
                                  xp.sum(residual * residual)]))

    def _residuals(self, prep: dict[str, Any], state: dict[str, Any], memo: dict[str, Any],
                   xp: Any) -> tuple[Any, Any | None]:
        """Every training row's label minus its score after the finished rounds, and which
        rows the round learns from (None: all)."""
        raw = self._raw(prep, state, memo, "raw", xp)
        residual = xp.astype(prep["y"], xp.float64) - raw[:, 0]
        return residual, self._learners(prep, state, memo, xp)

    def _raw(self, prep: dict[str, Any], state: dict[str, Any], memo: dict[str, Any],
             key: str, xp: Any) -> Any:
        """Scores of the rows after the finished rounds: from the memo, plus the rounds
        finished since, added in round order. A round's leaves: from the training rows'
        last positions in it (``_positions``) when the memo has them, else a walk from
        the roots."""
        rounds, k = state["round"], self._outputs(state)
        done, raw = memo.get(key, (0, None))
        if raw is None or done > rounds:
            done = 0
            raw = xp.broadcast_to(to_xp(state["base"], xp)[None, :], (prep["n"], k))
        forest = state["forest"]
        roots = forest["roots"]
        held = self._walk(state, memo, xp) if key == "raw" else None
        for round_ in range(done, rounds):
            first = int(roots[round_ * k])
            end = int(roots[(round_ + 1) * k]) if (round_ + 1) * k < len(roots) else len(
                forest["tree"])
            tables = node_tables(forest, first, end, state["missing"], prep["n"], xp)
            values = to_xp(forest["value"][first:end], xp)
            bottom = int(forest["depth"][first:end].max())
            for column in range(k):
                if held is not None and held[0] == round_ and held[3] == state.get("cuts", 0):
                    pos, at = held[2][column], held[1]
                else:
                    pos = xp.full((prep["n"],), int(roots[round_ * k + column]) - first,
                                  dtype=xp.int64)
                    at = 0
                for _ in range(bottom - at):
                    pos = walk_step(pos, _row_ids(prep, xp), prep["codes"], tables, xp)
                raw = raw + xp.take(values, pos, axis=0)
        memo[key] = (rounds, raw)
        return raw

    def _round_channels(self, prep: dict[str, Any], state: dict[str, Any],
                        memo: dict[str, Any], xp: Any) -> list[list[Any]]:
        """Per tree of the round (output column), every row's histogram channels
        ``w g``, ``w h``, ``w`` (the quantile losses, whose hessians are 1: ``w g``,
        ``w r`` of the residuals ``r``, ``w``: ``LeafQuantile``)."""
        held = memo.get("channels")
        if held is not None and held[0] == state["round"]:
            return held[1]
        raw = self._raw(prep, state, memo, "raw", xp)
        if self._ranks(state):
            g, h = self._rank_gradients(prep, raw, xp)
        else:
            g, h = _gradients(raw, prep["y"], self._outputs(state), self._loss_name(state),
                              xp, self._leaf_level(), self.params.tweedie_power)
        w = prep["w"]
        if self._loss_name(state) in LEAF_QUANTILE:  # one output: the residuals' column
            h = self._residuals(prep, state, memo, xp)[0][:, None]
        columns = []
        for column in range(self._outputs(state)):
            columns.append([w * g[:, column], w * h[:, column], w])
        memo["channels"] = (state["round"], columns)
        return columns

    def _rank_gradients(self, prep: dict[str, Any], raw: Any, xp: Any) -> tuple[Any, Any]:
        """lambdarank's gradients and hessians, (n, 1) each: computed on the host from
        the scores (a sort within each query), sent back in one copy."""
        g, h = ranking.lambdarank_gradients(_host_scores(raw), prep["relevance"],
                                            prep["query"], prep["tiebreak"],
                                            self.params.truncation, self.params.rank_norm,
                                            prep.setdefault("ranking", {}))
        both = to_xp(np.stack([g, h], axis=1), xp)
        return both[:, 0:1], both[:, 1:2]

    def _held_ndcg(self, part: pa.Table, state: dict[str, Any], xp: Any) -> np.ndarray:
        """The held-out queries' NDCG@k sum, their number and rows, by the model."""
        held = held_out(part, self.params)[1]
        if held.num_rows == 0:
            return np.zeros(4)
        rows = self._query_rows(held, state, measured=True)
        total, weight = self._ndcg_sums(self._model(state).outputs(held, xp)[0], rows)
        return np.array([total, weight, len(np.unique(rows["query"])), held.num_rows],
                        dtype=np.float64)


def _host_scores(raw: Any) -> np.ndarray:
    """The first output's scores as float64 NumPy."""
    return to_numpy(raw[:, 0]).astype(np.float64, copy=False)


class LeafQuantile(Newton):
    """The quantile losses' criterion (absolute error, pinball): Newton's gains and
    values with hessians of 1, so the weight channel is their sum and channel 1 holds the
    residuals' (``w r``, label minus score) instead.

    In a node whose rows' gradients are all one value (every residual on one side, as a
    label without noise leaves many nodes) every split gains exactly 0: the gradient
    says nothing of where the residuals differ, and the node would stay a leaf while its
    quantile moves by the learning rate a round. There ``best_splits`` splits by the
    residuals' squared-error gain (``tie_score``) instead, with a gain of 0 (so
    ``min_split_gain`` still refuses it and leaf-wise growth takes it last);
    scikit-learn splits such a node on the float32 noise of its gradients' sums."""

    def __init__(self, *args: Any, gradients: tuple[float, float], blind_splits: bool,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gradients, self.blind_splits = gradients, blind_splits

    def hessian(self, stats: np.ndarray) -> np.ndarray:
        return stats[2]

    def clean(self, stats: np.ndarray) -> np.ndarray:
        np.maximum(stats[2:], 0.0, out=stats[2:])  # the residual sums have either sign
        return stats

    def blind(self, total: np.ndarray) -> np.ndarray:
        """Per node (``total``: channel first): whether every row's gradient is the same
        (the gradient sum is one of the two gradients times the weight)."""
        if not self.blind_splits:
            return np.zeros(total.shape[1:], dtype=bool)
        g, w = total[0], total[2]
        return np.logical_or.reduce([np.abs(g - v * w) <= GAIN_RTOL * np.abs(v) * w
                                     for v in self.gradients]) & (w > 0)

    def tie_score(self, stats: np.ndarray) -> np.ndarray:
        """The residuals' squared-error score ``R^2 / W`` (half of it, as Newton's)."""
        return 0.5 * _ratio(stats[1] * stats[1], stats[2])

    def tie_value(self, stats: np.ndarray) -> np.ndarray:
        """The residuals' mean ``R / W``: what a monotonic constraint orders there."""
        return _ratio(stats[1], stats[2])


def monotone_leaves(forest: dict[str, np.ndarray], first: int, leaves: np.ndarray,
                    found: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The leaves' quantiles ``found`` (of the tree whose nodes start at ``first``; NaN:
    a leaf without rows) within bounds that keep the tree monotonic in the constrained
    features (``direction`` per feature: 1 rising, -1 falling, 0 free): from the root
    down, a split on a constrained feature bounds its two sides at the middle of their
    cover-weighted mean quantiles (within its own bounds), as the Newton values bound
    them while the tree grows. Those growing bounds are in the gradients' scale, not the
    quantiles'; these are the quantiles' own."""
    end = len(forest["tree"])
    status, feature = forest["status"], forest["feature"]
    left, right, cover = forest["left"], forest["right"], forest["weight"]
    weight, total = np.zeros(end), np.zeros(end)
    has = ~np.isnan(found)
    weight[leaves[has]] = cover[leaves[has]]
    total[leaves[has]] = cover[leaves[has]] * found[has]
    for node in range(end - 1, first - 1, -1):  # children come after their parents
        if status[node] == SPLIT:
            weight[node] = weight[left[node]] + weight[right[node]]
            total[node] = total[left[node]] + total[right[node]]
    lo, hi = np.full(end, -np.inf), np.full(end, np.inf)
    for node in range(first, end):
        if status[node] != SPLIT:
            continue
        a, b = int(left[node]), int(right[node])
        lo[a] = lo[b] = lo[node]
        hi[a] = hi[b] = hi[node]
        sense = direction[feature[node]]
        if sense == 0 or weight[a] == 0 or weight[b] == 0:
            continue
        mid = np.clip((total[a] / weight[a] + total[b] / weight[b]) / 2, lo[node], hi[node])
        if sense > 0:
            hi[a], lo[b] = mid, mid
        else:
            lo[a], hi[b] = mid, mid
    return np.clip(found, lo[leaves], hi[leaves])


def _row_ids(prep: dict[str, Any], xp: Any) -> Any:
    """0 .. n-1, the prepared rows' ids (kept with them)."""
    if "ids" not in prep:
        prep["ids"] = xp.arange(prep["n"], dtype=xp.int64)
    return prep["ids"]


def _targets(y: Any, k: int, classify: bool, xp: Any) -> Any:
    """The label as (n, k) float targets: the value, the positive class, or one-hot."""
    if not classify:
        return xp.astype(y, xp.float64)[:, None]
    if k == 1:
        return xp.astype(y == 1, xp.float64)[:, None]
    return xp.astype(y[:, None] == xp.arange(k, dtype=y.dtype)[None, :], xp.float64)


def _probabilities(raw: Any, k: int, xp: Any) -> Any:
    if k == 1:
        e = xp.exp(-xp.abs(raw))
        return xp.where(raw >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    e = xp.exp(raw - xp.max(raw, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


LEAF_QUANTILE = ("absolute_error", "quantile")
"""The losses whose leaves (and starting score) are quantiles of residuals: their
gradient has no curvature to take a Newton step with (scikit-learn's
``_update_leaves_values``)."""


def _gradients(raw: Any, y: Any, k: int, loss: str, xp: Any, level: float = 0.5,
               power: float = 1.5) -> tuple[Any, Any]:
    """Gradient and hessian of the loss per row and output, (n, k) each (``level``: the
    quantile loss's, ``power``: the Tweedie loss's)."""
    target = _targets(y, k, loss == "log_loss", xp)
    if loss == "squared_error":
        return raw - target, xp.ones_like(raw)
    if loss in LOG_LINK:
        return half_deviance_derivatives(raw, target, loss, power, xp)
    if loss == "absolute_error":  # scikit-learn's gradients (a tie: -1); hessians 1
        ones = xp.ones_like(raw)
        return xp.where(raw > target, ones, -ones), ones
    if loss == "quantile":  # the pinball loss's (a tie: -level, as scikit-learn's)
        ones = xp.ones_like(raw)
        return xp.where(target >= raw, -level * ones, (1.0 - level) * ones), ones
    p = _probabilities(raw, k, xp)
    return p - target, p * (1.0 - p)


def _loss(raw: Any, y: Any, k: int, loss: str, xp: Any, level: float = 0.5,
          power: float = 1.5) -> Any:
    """Per-row loss: half squared error, absolute error, the pinball loss of ``level``,
    the Poisson, gamma or Tweedie (``power``) half deviance (up to terms of the label
    alone), log-loss (binary) or cross-entropy."""
    target = _targets(y, k, loss == "log_loss", xp)
    if loss == "squared_error":
        return 0.5 * (raw[:, 0] - target[:, 0]) ** 2
    if loss == "absolute_error":
        return xp.abs(target[:, 0] - raw[:, 0])
    if loss == "quantile":
        diff = target[:, 0] - raw[:, 0]
        return xp.where(diff >= 0, level * diff, (level - 1.0) * diff)
    if loss in LOG_LINK:
        return half_deviance(raw[:, 0], target[:, 0], loss, power, xp)
    if k == 1:
        z = raw[:, 0]
        return xp.maximum(z, 0.0) + xp.log1p(xp.exp(-xp.abs(z))) - target[:, 0] * z
    top = xp.max(raw, axis=1, keepdims=True)
    log_norm = top[:, 0] + xp.log(xp.sum(xp.exp(raw - top), axis=1))
    return log_norm - xp.sum(target * raw, axis=1)
