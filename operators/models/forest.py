"""decision_tree and random_forest: CART trees grown level by level from histograms.

A classification tree's leaf holds the class frequencies of its training weight (the
forest averages them, as scikit-learn's ``predict_proba``), a regression tree's leaf the
weighted mean. Splits maximise the weighted impurity decrease (gini, entropy or variance)
over the bin thresholds of ``trees.py``, missing values sent the better way. A forest's
trees learn from bootstrap copies of the rows: tree ``t`` counts row ``i``
``Poisson(1)`` times, drawn from a hash of the row's content and ``seed + t`` (Spark
MLlib's Poisson bootstrap), and each node considers ``max_features`` features drawn from
a hash of the seed and the node; every tree of a level grows in the same pass.
``monotonic`` (regression and two classes) keeps the mean, or the second class's share,
rising or falling with a feature as scikit-learn's ``monotonic_cst``: a split whose
children's values go the wrong way, or leave the bounds the node's ancestors' constrained
splits set (the middle of their children's values), is not taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import AfterValidator, Field

from operators.base import ParamError, register, register_fitted
from operators.models.trees import (
    Criterion,
    Entropy,
    Gini,
    TreeEstimator,
    TreeModelFitted,
    TreeParams,
    Variance,
    add_roots,
    bootstrap_salt,
    derived_uniform,
    features_fraction,
    fraction_of_features,
    model_arrays,
    new_forest,
    node_keys,
    poisson_counts,
    sample_features,
)


class DecisionTreeParams(TreeParams):
    known_as: ClassVar[dict[str, str]] = {**TreeParams.known_as, "impurity": "criterion"}

    criterion: Literal["gini", "entropy", "variance"] | None = Field(
        None, description="split quality: gini or entropy (classification), variance "
                          "(regression); default gini / variance")
    min_impurity_decrease: float = Field(
        0.0, ge=0.0, description="split a node only if the weighted impurity decreases by "
                                 "at least this much (scikit-learn's definition)")


class RandomForestParams(DecisionTreeParams):
    known_as: ClassVar[dict[str, str]] = {
        **DecisionTreeParams.known_as, "n_estimators": "n_trees", "numTrees": "n_trees",
        "featureSubsetStrategy": "max_features"}

    n_trees: int = Field(100, ge=1, le=100_000, description="trees in the forest")
    max_features: Annotated[Literal["auto", "sqrt", "log2", "all"] | float,
                            AfterValidator(fraction_of_features)] = Field(
        "auto", description="features each node considers: sqrt, log2, all, or a fraction "
                            "in (0, 1]; auto: sqrt for classification, all for regression")
    bootstrap: bool = Field(True, description="each tree learns from Poisson(1) bootstrap "
                                              "copies of the rows (by row hash and seed)")


@register_fitted("decision_tree.fitted")
class DecisionTreeFitted(TreeModelFitted):
    """A decision tree: the leaf's class frequencies (the most frequent class is the
    prediction) or mean."""


@register_fitted("random_forest.fitted")
class RandomForestFitted(TreeModelFitted):
    """A random forest: the mean over trees of the leaf class frequencies or means."""


class AveragedTrees(TreeEstimator):
    """CART trees whose predictions are averaged (one tree, or a forest)."""

    fitted_class: ClassVar[type[TreeModelFitted]] = DecisionTreeFitted

    def __init__(self, params: Any = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        if self.params.task is not None:
            self._check_params(self.params.task == "classification")

    def _check_params(self, classify: bool) -> None:
        super()._check_params(classify)
        criterion = self.params.criterion
        if classify and criterion == "variance":
            raise ParamError(f"{self.name}: criterion variance is for regression",
                             hint="use gini or entropy for classes, or task: regression")
        if not classify and criterion in ("gini", "entropy"):
            raise ParamError(f"{self.name}: criterion {criterion} is for classification, "
                             "the label makes this a regression",
                             hint="use criterion: variance, or task: classification")

    def _n_trees(self) -> int:
        return 1

    def _criterion(self, state: dict[str, Any]) -> Criterion:
        if not state["classify"]:
            return Variance()
        k = len(state["classes"])
        return Entropy(k) if self.params.criterion == "entropy" else Gini(k)

    def _start(self, state: dict[str, Any]) -> dict[str, Any]:
        width = len(state["classes"]) if state["classify"] else 1
        forest = add_roots(new_forest(width), np.arange(self._n_trees()), width)
        return self._next_level({**state, "phase": "grow", "forest": forest})

    def _min_gain_fraction(self, state: dict[str, Any]) -> float:
        return self.params.min_impurity_decrease

    def _model(self, state: dict[str, Any]) -> TreeModelFitted:
        arrays, depth = model_arrays(state["forest"], len(state["features"]))
        classify = state["classify"]
        return self.fitted_class(
            state["features"], state["classes"] if classify else None,
            pa.type_for_alias(state["label_type"]) if classify else None,
            combine="mean", link="identity", depth=depth, arrays=arrays,
            categories=state["categories"])


@register("decision_tree")
class DecisionTree(AveragedTrees):
    """A decision tree (CART) for classification or regression, grown one level per pass.

    ```yaml
    - op: decision_tree
      label: churned              # integer, boolean or string: classes; float: regression
      criterion: gini             # gini | entropy (classes), variance (numbers)
      max_depth: 8                # 0: a single leaf
      min_samples_leaf: 5         # smallest leaf, in rows (or weight)
      max_bins: 255               # value bins per feature; missing values get their own
    ```
    Missing feature values (null, NaN) are allowed: each split learns where they go.
    Categorical columns: one_hot them, or give integer codes (split as ordered values).
    A sparse column (vectorize_text with `sparse: true`) is read as its terms' features
    (`words:<term>`), an absent term the value 0 (scikit-learn's trees; XGBoost and
    LightGBM take it as missing): on the CPU its rows stay sparse, a pass costs the
    stored terms. One node's histograms hold every term's bins: past the memory share
    the fit stops with what to cut (min_df, max_features, max_bins). Draws by row
    content (bootstrap, subsample, the validation split) hash a sparse row as stored,
    so they take other rows than the term columns' would.
    """

    Params = DecisionTreeParams
    fitted_class = DecisionTreeFitted


@register("random_forest")
class RandomForest(AveragedTrees):
    """A random forest of bootstrap trees, features sampled per node, one pass per level.

    ```yaml
    - op: random_forest
      label: churned
      n_trees: 100
      max_depth: 10
      max_features: sqrt          # sqrt | log2 | all | a fraction; auto: sqrt / all
      seed: 7                     # bootstrap and feature draws (by row content, not order)
      max_histogram_mb: 64        # a level needing more is grown in several passes
    ```
    A sparse column (vectorize_text with `sparse: true`) is read as decision_tree reads it.
    """

    Params = RandomForestParams
    fitted_class = RandomForestFitted

    def _n_trees(self) -> int:
        return self.params.n_trees

    def _n_sampled(self, state: dict[str, Any]) -> int:
        return features_fraction(self.params.max_features, len(state["features"]),
                                 state["classify"])

    def _featsel(self, state: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray | None]:
        n, m = len(state["features"]), self._n_sampled(state)
        if m >= n:
            return lambda nodes: None
        seed, forest = self.params.seed, state["forest"]
        return lambda nodes: sample_features(node_keys(forest, nodes), n, m, seed)

    def _initial_rows(self, prep: dict[str, Any], state: dict[str, Any], tree: int, xp: Any
                      ) -> tuple[Any, Any | None]:
        if not self.params.bootstrap:
            return super()._initial_rows(prep, state, tree, xp)
        # drawn where the rows are, from their hashes: no copy of the counts per tree
        counts = poisson_counts(derived_uniform(prep["hash"], bootstrap_salt(tree), xp), xp)
        rows = xp.nonzero((counts > 0) & (prep["w"] > 0))[0]
        return rows, xp.take(counts, rows)

    def _row_hash(self) -> bool:
        return self.params.bootstrap

    def _row_weights(self, prep: dict[str, Any], rows: Any, extra: Any | None, xp: Any) -> Any:
        weights = xp.take(prep["w"], rows)
        return weights if extra is None else weights * xp.astype(extra, xp.float64)

    def _row_counts(self, rows: Any, extra: Any | None, xp: Any) -> Any:
        if extra is None:
            return super()._row_counts(rows, extra, xp)
        return xp.astype(extra, xp.uint32)
