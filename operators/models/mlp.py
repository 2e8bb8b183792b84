"""mlp: a multilayer perceptron (classifier or regressor), full-batch L-BFGS or Adam.

The network: ``hidden`` fully connected layers with ``activation`` (relu, tanh or
sigmoid), then an output layer of one unit with identity (regression) or sigmoid
(two classes) or K units with softmax (K > 2 classes). Layer l computes
``A_l = act(A_{l-1} @ W_l + b_l)`` with ``W_l`` of shape (fan_in, fan_out); the forward
pass and backpropagation are written by hand with array-API ops (matmul, the
activations and their derivatives), so they run on NumPy, CuPy or array_api_strict.

Objective (n = total weight of the training rows, the row count without ``weight``)::

    1/n * sum_i w_i * loss(y_i, f(x_i)) + l2/2 * sum_l |W_l|^2

``loss`` is the log-loss (sigmoid or softmax output) or half the squared error (identity
output); the penalty is on the weights, never the biases; no hidden standardisation.
scikit-learn's MLPClassifier / MLPRegressor add ``alpha/(2 n) * |W|^2`` to the same mean
loss, so ``alpha = l2 * n`` for ``solver: lbfgs``. Its ``adam`` adds the penalty per
mini-batch of b rows as ``alpha/(2 b) * |W|^2``, so there ``alpha = l2 * batch_size``.

The fit is rounds of passes over the partitions:

1. a summary pass: row counts, total weight, the classes (sorted) and their weights, or
   the label's weighted sum. The weights start from ``seed`` (driver-side NumPy
   generator): uniform in ``+-sqrt(6 / fan_in)`` (He) for relu layers,
   ``+-sqrt(6 / (fan_in + fan_out))`` (Glorot) for tanh layers and the output layer,
   ``+-sqrt(2 / (fan_in + fan_out))`` for sigmoid layers (scikit-learn's choice); hidden
   biases start at zero, the output bias at the best constant model (log class priors,
   or the label's mean).
2. ``solver: lbfgs``: each pass evaluates the loss and gradient sums over every
   partition's training rows (in blocks of ``CHUNK_ROWS`` rows) at the point the
   driver-side L-BFGS (``optimize.py``) asks for; all parameters are one flat vector (per
   layer ``W_l`` row-major, then ``b_l``). Stops when ``|grad| <= tol * |grad at the
   start|`` (converged), after ``max_iter`` iterations, or when the line search finds no
   decrease (not converged: warned and recorded).
3. ``solver: adam``: one pass per epoch. Every partition starts from the broadcast
   parameters, Adam moments and step count and takes mini-batch Adam steps
   (``learning_rate``, beta1 0.9, beta2 0.999, eps 1e-8, scikit-learn's update) over its
   own training rows: batches of ``batch_size`` consecutive rows in an order given by a
   hash of each row's content, the seed and the epoch. A batch's gradient is
   ``sum_i w_i grad_i / (b * mean weight) + l2 * W`` (mean weight: total weight / rows),
   an unbiased estimate of the objective's gradient. Each partition returns its
   parameters and moments times its row count; the driver averages them (weighted by
   rows) and advances the step count by the row-weighted mean of the partitions' steps.
   An epoch is thus ``rows per partition / batch_size`` sequential steps, not ``rows /
   batch_size``: partitions much smaller than a batch take one step per epoch. Stops when
   the epoch's loss (the validation loss with ``early_stopping``) has not improved by
   ``tol`` for ``n_iter_no_change`` epochs in a row (converged), or after ``max_iter``
   epochs (not converged: warned and recorded). With ``early_stopping`` each pass also
   scores the held-out rows at the parameters it starts from, and the model is the epoch
   with the lowest validation loss (one extra pass scores the last epoch when
   ``max_iter`` ends the fit).
4. when ``validation_fraction`` > 0, one pass scoring the held-out rows into the run record.

What is deterministic. Partition sums (loss, gradient, adam's weighted parameters) are
combined in double-double arithmetic, so the order in which an engine combines partitions
changes no bit of the result: the same data, ``seed`` and partitioning give the same model
on every engine, bit for bit with the same array library. Adam's batch order comes from
row content, so the order of partitions and of rows within a partition do not matter
either; a different partitioning gives a different (equally good) adam model, by design.
L-BFGS sums are sums over all rows, so another partitioning changes only the rounding of
each partition's own sums; a fit that converges reaches the same minimum (to the
tolerance: about 1e-7 relative with ``tol: 1e-9``), but the optimiser can amplify last-bit
differences on a non-convex loss, so a fit stopped by ``max_iter`` far from a minimum (or
with relu kinks) can end elsewhere on another partitioning.

A sparse column (``vectorize_text`` with ``sparse: true``, ``operators.sparse``) among the
features is its terms ``<col>:<term>``. On NumPy the first layer's products and its
gradient read the rows as SciPy's CSR matrix (the stored values only); off NumPy the rows
are made dense within the memory share. Adam's batch order of CSR rows is that of the
same rows as term columns to the bit (``_batch_order``), so the network is the term
columns' (``sparse: false``) network: to rounding by Adam, to the optimiser's tolerance by
L-BFGS. Held-out rows (``validation_fraction``) are drawn by a hash of the column as
stored, so they (and the network trained on the others) are not the term columns'.

In a float32 step (docs/float32.md) the forward and backward passes run in float32 and
the loss and gradient sums accumulate in float64; adam keeps its parameters and moments
in float64 and orders batches by the float64 rows (the same batches in both dtypes).
A float32 fit differs from a float64 one as another partitioning does: the same minimum
to about 1e-4 in the outputs when both converge there, maybe another on a non-convex loss.

The run record gets ``loss_curve`` (the objective after each L-BFGS iteration; for adam,
each epoch's mean mini-batch loss while it trained, as scikit-learn's ``loss_curve_``).
The fitted network is its arrays (``W0``, ``b0``, ``W1``, ...) and the architecture in
the model's JSON; scoring runs the forward pass over a partition in row chunks.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from operators.arrays import (
    column_to_numpy,
    compute_dtype,
    get_namespace,
    is_numpy,
    to_numpy,
    to_xp,
)
from operators.base import (
    ArtifactError,
    DataError,
    Estimator,
    FitProgress,
    ParamError,
    SchemaError,
    register,
    register_fitted,
)
from operators.errors import counted
from operators.hashing import mix
from operators.models.common import (
    ClassWeight,
    ConvergenceWarning,
    FittedModel,
    PlannedPredictions,
    SupervisedParams,
    by_class,
    check_class_weight,
    check_inputs,
    class_label_type,
    class_weight_field,
    class_weights,
    encode_classes,
    held_out,
    host_matrix,
    is_classification,
    is_numeric,
    kept_design,
    label_column,
    merge_class_weights,
    model_input_columns,
    optimizer_progress,
    parameters,
    precision,
    require_positive_weight,
    require_training_rows,
    row_weights,
    sigmoid,
    softmax,
    sparse_matrix,
    validation_combine,
    validation_finalize,
    validation_partial,
    weigh_classes,
    with_predictions,
)
from operators.models.optimize import lbfgs_start, lbfgs_tell
from operators.sparse import rows_of

CHUNK_ROWS = 1 << 13
"""Rows per forward/backward block of a full-batch pass or of scoring: the activations
held at once are CHUNK_ROWS x the widest layer, whatever the partition size."""
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
DIVERGED_HINT = "standardise the features (op: standard_scale) or lower learning_rate"


class MLPParams(SupervisedParams):
    hidden: list[int] = Field(
        [64, 32], min_length=1,
        description="units of each hidden layer, input side first (at least one layer)")
    activation: Literal["relu", "tanh", "sigmoid"] = Field(
        "relu", description="activation of the hidden layers")
    task: Literal["classification", "regression"] | None = Field(
        None, description="default: classification for an integer, boolean or string label, "
                          "regression for a floating one")
    l2: float = Field(1e-4, ge=0.0,
                      description="L2 penalty on the weights (never the biases): l2/2 * |W|^2 "
                                  "added to the mean loss; scikit-learn alpha = l2 * n")
    solver: Literal["lbfgs", "adam"] = Field(
        "lbfgs", description="lbfgs: full batch, one pass per evaluation, the model does not "
                             "depend on the partitioning (to the optimiser's tolerance); "
                             "adam: mini-batches in each partition, averaged once per epoch "
                             "(one pass per epoch)")
    max_iter: int = Field(200, ge=1, description="L-BFGS iterations, or adam epochs")
    tol: float = Field(1e-4, gt=0.0,
                       description="lbfgs: stop at |grad| <= tol x |initial grad|; adam: stop "
                                   "when the loss has not improved by tol for "
                                   "n_iter_no_change epochs")
    batch_size: int = Field(200, ge=1, description="adam: rows per mini-batch step")
    learning_rate: float = Field(1e-3, gt=0.0, description="adam: step size")
    n_iter_no_change: int = Field(10, ge=1,
                                  description="adam: epochs without improvement before stopping")
    early_stopping: bool = Field(
        False, description="adam: keep the epoch with the lowest loss on the held-out rows "
                           "(validation_fraction) and stop when it no longer improves")
    seed: int = Field(0, description="seed of the initial weights, the validation split and "
                                     "adam's batch order")
    class_weight: ClassWeight = class_weight_field()

    @field_validator("hidden")
    @classmethod
    def _positive_units(cls, value: list[int]) -> list[int]:
        if any(units <= 0 for units in value):
            raise ValueError(f"every hidden layer needs at least one unit (got {value})")
        return value

    @model_validator(mode="after")
    def _early_stopping(self) -> MLPParams:
        if self.early_stopping and self.solver != "adam":
            raise ParamError("early_stopping applies to solver: adam",
                             hint="set solver: adam, or drop early_stopping")
        if self.early_stopping and self.validation_fraction == 0:
            raise ParamError("early_stopping needs held-out rows",
                             hint="set validation_fraction, e.g. 0.1")
        return self


# --------------------------------------------------------------------------- kernels


def _activate(z: Any, activation: str, xp: Any) -> Any:
    if activation == "relu":
        return xp.maximum(z, 0.0)
    if activation == "tanh":
        return xp.tanh(z)
    return sigmoid(z, xp)


def _backprop_activation(upstream: Any, a: Any, activation: str, xp: Any) -> Any:
    """``upstream * act'(z)``, the derivative written with the activation ``a = act(z)``."""
    if activation == "relu":
        return xp.where(a > 0, upstream, 0.0)
    if activation == "tanh":
        return upstream * (1.0 - a * a)
    return upstream * (a * (1.0 - a))


def _layers(theta: Any, units: list[int], xp: Any) -> list[tuple[Any, Any]]:
    """The (W, b) of every layer: views of the flat parameter vector."""
    out, start = [], 0
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        stop = start + fan_in * fan_out
        out.append((xp.reshape(theta[start:stop], (fan_in, fan_out)),
                    theta[stop:stop + fan_out]))
        start = stop + fan_out
    return out


def _forward(X: Any, layers: list[tuple[Any, Any]], activation: str, xp: Any
             ) -> tuple[list[Any], Any]:
    """The inputs of every layer (X first) and the output layer's pre-activation."""
    inputs = [X]
    for W, b in layers[:-1]:
        inputs.append(_activate(inputs[-1] @ W + b, activation, xp))
    W, b = layers[-1]
    return inputs, inputs[-1] @ W + b


def _output_loss(z: Any, target: Any, w: Any, output: str, xp: Any) -> tuple[Any, Any]:
    """The weighted loss sum and its gradient by the output pre-activation ``z``."""
    if output == "identity":
        residual = z[:, 0] - target
        return (0.5 * xp.sum(w * residual * residual, dtype=xp.float64),
                (w * residual)[:, None])
    if output == "sigmoid":
        s = z[:, 0]
        # log(1 + exp(s)) - y s, stable for large |s|
        loss = xp.sum(w * (xp.maximum(s, 0.0) + xp.log1p(xp.exp(-xp.abs(s))) - target * s),
                      dtype=xp.float64)
        return loss, (w * (sigmoid(s, xp) - target))[:, None]
    k = z.shape[1]
    onehot = xp.astype(target[:, None] == xp.arange(k, dtype=z.dtype)[None, :], z.dtype)
    top = xp.max(z, axis=1, keepdims=True)
    log_norm = top + xp.log(xp.sum(xp.exp(z - top), axis=1, keepdims=True))
    loss = xp.sum(w * xp.sum(onehot * (log_norm - z), axis=1), dtype=xp.float64)
    return loss, (xp.exp(z - log_norm) - onehot) * w[:, None]


def _backward(inputs: list[Any], layers: list[tuple[Any, Any]], delta: Any, activation: str,
              xp: Any) -> Any:
    """The flat gradient (the parameter vector's layout) from the output's ``delta``."""
    grads = []
    for i in range(len(layers) - 1, -1, -1):
        grads.append(xp.sum(delta, axis=0))
        grads.append(xp.reshape(inputs[i].T @ delta, (-1,)))
        if i:
            delta = _backprop_activation(delta @ layers[i][0].T, inputs[i], activation, xp)
    return xp.concat(grads[::-1])


def _predict(X: Any, layers: list[tuple[Any, Any]], activation: str, output: str, xp: Any
             ) -> Any:
    """Regression: the (n,) predictions; classifier: (n, K) probabilities."""
    pieces, rows = [], X.shape[0]
    for start in range(0, max(rows, 1), CHUNK_ROWS):
        _, z = _forward(X[start:min(start + CHUNK_ROWS, rows), :], layers, activation, xp)
        if output == "identity":
            pieces.append(z[:, 0])
        elif output == "sigmoid":
            p = sigmoid(z[:, 0], xp)
            pieces.append(xp.stack([1.0 - p, p], axis=1))
        else:
            pieces.append(softmax(z, xp))
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=0)


def _columns(data: Any, n_features: int) -> tuple[Any, Any, Any]:
    """(features, target, weight) of a dense matrix of the three (views, no copy)."""
    return data[:, :n_features], data[:, n_features], data[:, n_features + 1]


def _data_loss(rows: tuple[Any, Any, Any], theta: Any, net: dict[str, Any], xp: Any,
               gradient: bool) -> tuple[float, np.ndarray | None]:
    """Weighted loss sum (and its gradient sum) over ``rows`` (features: a matrix, or a
    SciPy CSR one; target; weight), block by block so memory stays bounded; ``theta`` is
    in the features' dtype, the blocks' sums are added up in float64."""
    X, target, weight = rows
    layers = _layers(theta, net["units"], xp)
    loss, grad, count = None, None, X.shape[0]
    for start in range(0, count, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, count)
        inputs, z = _forward(X[start:stop, :], layers, net["activation"], xp)
        part, delta = _output_loss(z, target[start:stop], weight[start:stop],
                                   net["output"], xp)
        loss = part if loss is None else loss + part  # on the device until the end
        if gradient:
            g = xp.astype(_backward(inputs, layers, delta, net["activation"], xp), xp.float64)
            grad = g if grad is None else grad + g
    total = 0.0 if loss is None else float(loss)
    if not gradient:
        return total, None
    return total, np.zeros(_size(net["units"])) if grad is None else to_numpy(grad)


def _adam_epoch(rows: tuple[Any, Any, Any], net: dict[str, Any], adam: dict[str, Any],
                l2: float, batch_size: int, learning_rate: float, mean_weight: float, xp: Any
                ) -> tuple[Any, Any, Any, int, float]:
    """Mini-batch Adam steps over ``rows`` (features, target, weight) in order: (theta,
    m, v, steps, the weighted sum of each row's loss when its batch was used).

    The parameters and moments stay float64 on the device (a float32 step would be lost
    in the rounding of a float32 weight); each batch's forward and backward pass runs in
    the features' dtype with the parameters rounded to it."""
    X, target, weight = rows
    theta, m, v = (xp.asarray(adam[key]) for key in ("theta", "m", "v"))
    penalised = xp.asarray(net["penalised"])
    # the running loss stays on the device: one transfer at the end, not one per step
    t, running, steps, count = float(adam["t"]), xp.asarray(0.0, dtype=xp.float64), 0, \
        X.shape[0]
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        layers = _layers(xp.astype(theta, target.dtype, copy=False), net["units"], xp)
        inputs, z = _forward(X[start:stop, :], layers, net["activation"], xp)
        loss, delta = _output_loss(z, target[start:stop], weight[start:stop], net["output"],
                                   xp)
        scale = 1.0 / ((stop - start) * mean_weight)
        grad = _backward(inputs, layers, delta * scale, net["activation"], xp)
        grad = grad + l2 * penalised * theta
        t += 1.0
        steps += 1
        m = BETA1 * m + (1.0 - BETA1) * grad
        v = BETA2 * v + (1.0 - BETA2) * (grad * grad)
        step = learning_rate * math.sqrt(1.0 - BETA2 ** t) / (1.0 - BETA1 ** t)
        theta = theta - step * m / (xp.sqrt(v) + ADAM_EPS)
        running = running + loss
    return theta, m, v, steps, float(running)


def _exact(values: dict[str, Any]) -> dict[str, Any]:
    """Partition sums as double-double pairs (high, low): ``combine`` adds them with an
    error-free two-sum, so the order an engine combines partitions in changes no bit
    of the rounded total (barring ties at 2^-106 relative)."""
    return {"kind": "sums", "sums": {
        k: np.stack([np.atleast_1d(np.asarray(v, dtype=np.float64)), np.zeros(np.size(v))])
        for k, v in values.items()}}


def _dd_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sum of two double-double pairs (Knuth's two-sum, then renormalised)."""
    total = a[0] + b[0]
    back = total - a[0]
    low = (a[0] - (total - back)) + (b[0] - back) + a[1] + b[1]
    high = total + low
    return np.stack([high, low - (high - total)])


def _size(units: list[int]) -> int:
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(units[:-1], units[1:]))


def _row_keys(data: np.ndarray, seed: int, X: Any = None) -> np.ndarray:
    """A uint64 a row from its content (its float64 bits) and the seed, never from its
    position: every cell's bits mixed with a salt of its column, summed along the row and
    mixed again. ``X``: the rows' features as a SciPy CSR matrix, ``data`` then their
    other columns (target, weight): the keys of the dense matrix of the two side by side,
    to the bit."""
    width = data.shape[1] + (0 if X is None else X.shape[1])
    with np.errstate(over="ignore"):
        salt = mix(np.array([seed], dtype=np.int64).view(np.uint64))[0]
        salts = mix(np.arange(width, dtype=np.uint64) ^ salt)
        tail = salts[width - data.shape[1]:]
        sums = np.sum(mix(np.ascontiguousarray(data).view(np.uint64) ^ tail[None, :]),
                      axis=1, dtype=np.uint64)
        if X is not None:
            # a zero cell's word is mix(salt) (0 ^ salt): every row's zeros' words, less
            # those of its stored cells, plus their words (the sum wraps, as the dense one)
            zeros = mix(salts[:X.shape[1]] ^ np.uint64(0))
            values = np.asarray(X.data, dtype=np.float64).view(np.uint64)
            stored = mix(values ^ salts[X.indices]) - zeros[X.indices]
            np.add.at(sums, rows_of(X.indptr), stored)
            sums += np.sum(zeros, dtype=np.uint64)
        return mix(sums)


def _batch_order(keys: np.ndarray, epoch: int) -> np.ndarray:
    """The rows' order in an epoch: ``argsort`` of their ``_row_keys`` mixed with the
    epoch's salt (a fresh permutation an epoch, from the rows' content alone)."""
    with np.errstate(over="ignore"):
        salt = mix(np.array([epoch], dtype=np.int64).view(np.uint64) + _EPOCH_SALT)[0]
        return np.argsort(mix(keys ^ salt), kind="stable")


_EPOCH_SALT = np.uint64(0x243F6A8885A308D3)


# --------------------------------------------------------------------------- fitted


@register_fitted("mlp.fitted")
class MLPFitted(FittedModel):
    """The network's forward pass: ``prediction`` (the most probable class, or the value)
    and, for classifiers, ``probability`` (sigmoid or softmax output)."""

    def __init__(self, features: list[str], classes: list[Any] | None,
                 label_type: pa.DataType | None, activation: str,
                 weights: list[np.ndarray], biases: list[np.ndarray]):
        super().__init__(features, classes, label_type)
        self.activation = activation
        self.weights = [np.asarray(W, dtype=np.float64) for W in weights]
        self.biases = [np.asarray(b, dtype=np.float64).reshape(-1) for b in biases]
        outputs = self.weights[-1].shape[1]
        if classes is None:
            self.output = "identity"
        else:
            self.output = "sigmoid" if outputs == 1 else "softmax"

    @property
    def hidden(self) -> list[int]:
        return [W.shape[1] for W in self.weights[:-1]]

    takes_sparse = True  # the first layer's X @ W of a SciPy CSR matrix too

    def predict_matrix(self, X: Any, xp: Any) -> Any:
        layers = [(parameters(W, xp), parameters(b, xp))
                  for W, b in zip(self.weights, self.biases)]
        return _predict(X, layers, self.activation, self.output, xp)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            out[f"W{i}"], out[f"b{i}"] = W, b
        return out

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "hidden": self.hidden, "activation": self.activation,
                "output": self.output}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPFitted:
        layers = len(meta["hidden"]) + 1
        missing = [k for i in range(layers) for k in (f"W{i}", f"b{i}") if k not in arrays]
        if missing:
            raise ArtifactError(f"mlp model lacks arrays {missing}",
                                hint="the artifact is damaged: train and save it again")
        return cls(**cls.meta_args(meta), activation=meta["activation"],
                   weights=[arrays[f"W{i}"] for i in range(layers)],
                   biases=[arrays[f"b{i}"] for i in range(layers)])


# --------------------------------------------------------------------------- estimator


@register("mlp")
class MLP(PlannedPredictions, Estimator):
    """Multilayer perceptron: a classifier (sigmoid / softmax output) or a regressor.

    ```yaml
    - op: mlp
      label: churned            # integer, boolean or string: classifier; floating: regressor
      hidden: [64, 32]
      activation: relu          # relu | tanh | sigmoid
      l2: 0.0001                # scikit-learn alpha = l2 * n (lbfgs)
      solver: lbfgs             # lbfgs (full batch) | adam (mini-batches, averaged per epoch)
      max_iter: 200
      validation_fraction: 0.1  # held-out rows scored into the run record
    ```
    The plan-time schema of a classifier assumes two classes (``probability`` float64)
    unless the fit finds more: the number of classes is only known from the data. A
    sparse column (vectorize_text with `sparse: true`) among the features gives its terms
    as features (`<col>:<term>`), the first layer computed on its stored values on the
    CPU: the network of the same terms as columns (`sparse: false`), to the optimiser's
    tolerance with lbfgs and to rounding with adam. With `validation_fraction` the
    held-out rows are drawn by a hash of the column as stored, so they (and the network)
    are not the term columns'.
    """

    float32 = True  # docs/float32.md

    Params = MLPParams
    multi_pass = True
    schema_from_fit = True  # probability is float64 for 2 classes, list<double> for more

    def input_columns(self, schema: pa.Schema) -> list[str]:
        return model_input_columns(schema, self.params, sparse=True)

    def _label_type(self, schema: pa.Schema) -> pa.DataType | None:
        """The class label type (classifier) or None (regressor); checks the label."""
        p = self.params
        t = schema.field(p.label).type
        value_type = t.value_type if pa.types.is_dictionary(t) else t
        if is_classification(t, p.task):
            if class_label_type(t) is None and not pa.types.is_floating(value_type):
                raise SchemaError(f"label column '{p.label}' is {t}: not classes",
                                  hint="cast it to int64 or string")
            return value_type
        if not is_numeric(value_type):
            if p.task == "regression":
                raise SchemaError(f"label column '{p.label}' is {t}: a regressor needs numbers",
                                  hint="cast it to float64, or drop `task: regression` to "
                                       "classify it")
            raise SchemaError(f"label column '{p.label}' is {t}: neither classes (integer, "
                              "boolean, string) nor numbers (floating)",
                              hint=f"cast it (read_parquet schema: {{{p.label}: int64}})")
        return None

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        check_inputs(schema, self.params, sparse=True)
        label_type = self._label_type(schema)
        check_class_weight(self.params.class_weight, label_type is not None, self.params.label)
        classes = None if label_type is None else [False, True]
        return with_predictions(schema, classes, label_type)

    def init(self, schema: pa.Schema) -> dict[str, Any]:
        features = check_inputs(schema, self.params, sparse=True)
        label_type = self._label_type(schema)
        check_class_weight(self.params.class_weight, label_type is not None, self.params.label)
        return {"phase": "summary", "features": features, "classify": label_type is not None,
                "label_type": None if label_type is None else str(label_type),
                "label_arrow": str(schema.field(self.params.label).type)}

    # ------------------------------------------------------------------ partitions

    def partial(self, part: pa.Table, state: dict[str, Any], xp: Any) -> dict[str, Any]:
        p = self.params
        if state["phase"] == "validate":
            return validation_partial(self._model(state, state["theta"]), part, p, xp)
        train, held = held_out(part, p, keep=True)
        if state["phase"] == "summary":
            return {**self._summary(train, held, state["classify"]), "precision": precision(xp)}
        if state["phase"] == "lbfgs":
            loss, grad = _data_loss(self._kept_rows(part, "mlp_rows", train, state, xp),
                                    parameters(state["opt"]["point"], xp), state["net"], xp,
                                    gradient=True)
            return _exact({"loss": loss, "grad": grad})
        return self._epoch(part, train, held, state, xp)

    def _summary(self, train: pa.Table, held: pa.Table, classify: bool) -> dict[str, Any]:
        p = self.params
        weights = row_weights(train, p.weight)
        labels = label_column(train, p.label)
        out: dict[str, Any] = {"kind": "summary", "rows": train.num_rows,
                               "heldout": held.num_rows, "weight": float(weights.sum())}
        if classify:
            out["classes"], out["weights"] = class_weights(labels, weights)
        else:
            y = column_to_numpy(labels)
            out["label_sum"] = float(weights @ y)
            held_y = column_to_numpy(label_column(held, p.label))
            # which of 0 and 1 the label has, and whether it has anything else
            out["zero_one"] = [bool((y == 0).any() or (held_y == 0).any()),
                               bool((y == 1).any() or (held_y == 1).any()),
                               bool(((y != 0) & (y != 1)).any()
                                    or ((held_y != 0) & (held_y != 1)).any())]
        return out

    def _rows(self, table: pa.Table, state: dict[str, Any], xp: Any
              ) -> tuple[Any, Any, Any]:
        """``table``'s (features, target, weight) in ``xp``, in one host-to-device copy;
        the features a SciPy CSR matrix where some are a sparse column's and ``xp`` is
        NumPy (its rows as they are: the first layer's products read the stored values
        only), else dense."""
        X, host = self._host_data(table, state, xp, sparse=is_numpy(xp))
        if X is None:
            return _columns(to_xp(host, xp), len(state["features"]))
        return X.astype(compute_dtype(xp), copy=False), host[:, 0], host[:, 1]

    def _kept_rows(self, part: pa.Table, name: str, table: pa.Table, state: dict[str, Any],
                   xp: Any) -> tuple[Any, Any, Any]:
        """``_rows`` of ``table``, the training or the held-out rows of ``part``, kept with
        the partition's table under ``name`` for the next pass (``kept_design``: the local
        engine's and resident fits' passes get the same table object): L-BFGS's
        evaluations and adam's held-out losses read the columns once a fit. On NumPy only
        (a device gets its one copy each pass)."""
        return kept_design(part, name, self.params, state, xp,
                           lambda: self._rows(table, state, xp))

    def _epoch_rows(self, part: pa.Table, train: pa.Table, state: dict[str, Any], xp: Any
                    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """``_host_data`` of the training rows ``train`` of ``part`` (CSR features where
        ``xp`` is NumPy), float64 on the host, with their ``_row_keys``: kept with the
        partition's table (``kept_design``), so that each of adam's epochs gathers its
        batches' rows, neither reading the columns nor hashing the rows again."""
        def make() -> tuple[Any, np.ndarray, np.ndarray]:
            X, host = self._host_data(train, state, sparse=is_numpy(xp))
            return X, host, _row_keys(host, self.params.seed, X)

        return kept_design(part, "mlp_epoch", self.params, state, get_namespace(), make,
                           is_numpy(xp))

    def _host_data(self, table: pa.Table, state: dict[str, Any], xp: Any = None,
                   sparse: bool = False) -> tuple[Any, np.ndarray]:
        """(None, the features, target (class position or value) and weight of
        ``table``'s rows) in ``xp``'s compute dtype (float64 without ``xp``), or, with
        ``sparse`` where some features are a sparse column's, (their CSR matrix in
        float64, the target and weight); rows of a class the training rows never had are
        dropped."""
        p = self.params
        weights = row_weights(table, p.weight)
        labels = label_column(table, p.label)
        if state["classify"]:
            target = encode_classes(labels, state["classes"],
                                    pa.type_for_alias(state["label_type"]))
            weights = by_class(weights, target, state.get("class_factor"))
            known = target >= 0
            if not known.all():
                table, target, weights = table.filter(pa.array(known)), target[known], \
                    weights[known]
            target = target.astype(np.float64)
        else:
            target = column_to_numpy(labels)
        X = sparse_matrix(table, state["features"], np) if sparse else None
        if X is not None:
            return X, np.column_stack([target, weights]).astype(
                np.float64 if xp is None else compute_dtype(xp))
        return None, host_matrix(table, state["features"], [target, weights], xp)

    def _epoch(self, part: pa.Table, train: pa.Table, held: pa.Table, state: dict[str, Any],
               xp: Any) -> dict[str, Any]:
        p, net, adam = self.params, state["net"], state["adam"]
        size = _size(net["units"])
        out: dict[str, Any] = {"rows": 0.0, "steps": 0.0, "loss": 0.0, "theta": np.zeros(size),
                               "m": np.zeros(size), "v": np.zeros(size), "val_loss": 0.0,
                               "val_weight": 0.0}
        if p.early_stopping and held.num_rows:
            rows = self._kept_rows(part, "mlp_held", held, state, xp)
            loss, _ = _data_loss(rows, parameters(adam["theta"], xp), net, xp, gradient=False)
            out.update(val_loss=loss, val_weight=float(xp.sum(rows[2], dtype=xp.float64)))
        if not adam["train"] or train.num_rows == 0:
            return _exact(out)
        # float64 on the host: the batch order hashes the float64 bits of every row
        # (a sparse column's rows as they are on NumPy, made dense for a device: the
        # same order, which ``_batch_order`` gives either)
        X, host, keys = self._epoch_rows(part, train, state, xp)
        order = _batch_order(keys, adam["epoch"])
        if X is None:
            data = to_xp(np.ascontiguousarray(host[order], dtype=compute_dtype(xp)), xp)
            rows = _columns(data, len(state["features"]))
        else:
            tail = np.ascontiguousarray(host[order], dtype=compute_dtype(xp))
            rows = X[order].astype(compute_dtype(xp), copy=False), tail[:, 0], tail[:, 1]
        theta, m, v, steps, running = _adam_epoch(rows, net, adam, p.l2, p.batch_size,
                                                  p.learning_rate, state["mean_weight"], xp)
        rows = train.num_rows
        out.update(rows=float(rows), steps=float(steps * rows), loss=running,
                   theta=to_numpy(theta) * rows, m=to_numpy(m) * rows, v=to_numpy(v) * rows)
        return _exact(out)

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "metrics" in a:
            return validation_combine(a, b)
        if a["kind"] == "summary":
            out = {"kind": "summary", "rows": a["rows"] + b["rows"],
                   "heldout": a["heldout"] + b["heldout"], "weight": a["weight"] + b["weight"],
                   "precision": max(a["precision"], b["precision"])}
            if "classes" in a:
                out["classes"], out["weights"] = merge_class_weights(
                    (a["classes"], a["weights"]), (b["classes"], b["weights"]))
            else:
                out["label_sum"] = a["label_sum"] + b["label_sum"]
                out["zero_one"] = [x or y for x, y in zip(a["zero_one"], b["zero_one"],
                                                          strict=True)]
            return out
        return {"kind": "sums", "sums": {k: _dd_add(v, b["sums"][k])
                                         for k, v in a["sums"].items()}}

    # ------------------------------------------------------------------ driver

    def update(self, stats: dict[str, Any], state: dict[str, Any]
               ) -> tuple[dict[str, Any], bool]:
        if state["phase"] == "summary":
            return self._start(stats, state), False
        if state["phase"] == "validate":
            validation = validation_finalize(self._model(state, state["theta"]), stats)
            return {**state, "phase": "done", "validation": validation}, True
        sums = {k: v[0] + v[1] for k, v in stats["sums"].items()}
        state = self._lbfgs_step(sums, state) if state["phase"] == "lbfgs" \
            else self._adam_step(sums, state)
        if state["phase"] != "finished":
            return state, False
        done = self.params.validation_fraction == 0
        return {**state, "phase": "done" if done else "validate"}, done

    def _start(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        require_training_rows(stats["rows"], stats["heldout"])
        if p.early_stopping and stats["heldout"] == 0:
            raise DataError("early_stopping: no rows were held out",
                            hint="raise validation_fraction")
        total = stats["weight"]
        require_positive_weight(total, p.weight)
        classes, factor = stats.get("classes"), None
        if classes is None:
            output, outputs = "identity", 1
            bias = np.array([stats["label_sum"] / total])
        else:
            totals, factor = weigh_classes(p.class_weight, classes, stats["weights"], p.label)
            total = float(totals.sum())
            logs = np.log(np.maximum(totals, np.finfo(np.float64).tiny))
            if len(classes) == 2:
                output, outputs, bias = "sigmoid", 1, np.array([logs[1] - logs[0]])
            else:
                output, outputs, bias = "softmax", len(classes), logs - logs.mean()
        units = [len(state["features"]), *p.hidden, outputs]
        theta, penalised = self._initial(units, bias)
        net = {"units": units, "activation": p.activation, "output": output,
               "penalised": penalised}
        state = {**state, "classes": classes, "rows": stats["rows"],
                 "zero_one": stats.get("zero_one"),
                 "heldout": stats["heldout"], "weight": total, "class_factor": factor,
                 "mean_weight": total / stats["rows"], "net": net, "loss_curve": []}
        if p.solver == "lbfgs":
            return {**state, "phase": "lbfgs",
                    "opt": lbfgs_start(theta, tol=p.tol, max_iter=p.max_iter,
                                       precision=stats["precision"])}
        adam = {"theta": theta, "m": np.zeros_like(theta), "v": np.zeros_like(theta),
                "t": 0.0, "epoch": 0, "train": True, "best": math.inf, "stale": 0,
                "best_theta": theta, "best_epoch": 0, "validation_curve": []}
        return {**state, "phase": "adam", "adam": adam}

    def _initial(self, units: list[int], output_bias: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The starting parameter vector from the seed, and the mask of the weights."""
        rng = np.random.default_rng(self.params.seed)
        activation = self.params.activation
        pieces, mask = [], []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
            last = i == len(units) - 2
            if last or activation == "tanh":
                bound = math.sqrt(6.0 / (fan_in + fan_out))
            elif activation == "relu":
                bound = math.sqrt(6.0 / fan_in)
            else:
                bound = math.sqrt(2.0 / (fan_in + fan_out))
            pieces += [rng.uniform(-bound, bound, fan_in * fan_out),
                       output_bias if last else np.zeros(fan_out)]
            mask += [np.ones(fan_in * fan_out), np.zeros(fan_out)]
        return np.concatenate(pieces), np.concatenate(mask)

    def _lbfgs_step(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        l2, total, opt = self.params.l2, state["weight"], state["opt"]
        mask, x = state["net"]["penalised"], opt["point"]
        loss = float(stats["loss"][0]) / total + 0.5 * l2 * float(np.sum(mask * x * x))
        grad = stats["grad"] / total + l2 * mask * x
        before = opt["iterations"]
        opt = lbfgs_tell(opt, loss, grad)
        curve = state["loss_curve"]
        if opt["iterations"] > before:
            curve = [*curve, float(opt["f"])]
        state = {**state, "opt": opt, "loss_curve": curve}
        if not opt["done"]:
            return state
        if not np.isfinite(opt["f"]):
            raise DataError("mlp: the loss is not finite at the starting weights",
                            hint="standardise the features (op: standard_scale)")
        self._warn(opt["converged"], opt["reason"], opt["iterations"],
                   f"gradient norm {opt['gradient_norm']:.3g}, tol {opt['tol']:g} x "
                   f"initial {opt['g0']:.3g}")
        return {**state, "phase": "finished", "theta": opt["x"]}

    def _adam_step(self, stats: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        p, adam = self.params, dict(state["adam"])
        if p.early_stopping:
            # the held-out loss of the parameters this pass started from
            if not stats["val_weight"][0] > 0:
                raise DataError("early_stopping: the held-out rows have no weight to score",
                                hint="raise validation_fraction, or check the weight column")
            score = float(stats["val_loss"][0] / stats["val_weight"][0])
            adam["validation_curve"] = [*adam["validation_curve"], score]
            self._track(adam, score, adam["theta"])
        curve = state["loss_curve"]
        if adam["train"]:
            rows = float(stats["rows"][0])
            theta = stats["theta"] / rows
            mask = state["net"]["penalised"]
            loss = (float(stats["loss"][0]) / state["weight"]
                    + 0.5 * p.l2 * float(np.sum(mask * theta ** 2)))
            adam["epoch"] += 1
            if not (np.isfinite(loss) and np.all(np.isfinite(theta))):
                raise DataError(f"mlp: adam diverged in epoch {adam['epoch']} (the loss is "
                                "not finite)", hint=DIVERGED_HINT)
            adam.update(theta=theta, m=stats["m"] / rows, v=stats["v"] / rows,
                        t=adam["t"] + float(stats["steps"][0]) / rows)
            curve = [*curve, loss]
            if not p.early_stopping:
                self._track(adam, loss, theta)
        state = {**state, "adam": adam, "loss_curve": curve}
        if adam["stale"] >= p.n_iter_no_change:
            converged, reason = True, (f"loss did not improve by tol={p.tol:g} for "
                                       f"{counted(p.n_iter_no_change, 'epoch')}")
        elif adam["epoch"] >= p.max_iter and (adam["train"] and p.early_stopping):
            # one more pass scores the last epoch's parameters on the held-out rows
            return {**state, "adam": {**adam, "train": False}}
        elif adam["epoch"] >= p.max_iter:
            converged, reason = False, f"max_iter={p.max_iter} reached"
        else:
            return state
        adam.update(converged=converged, reason=reason)
        self._warn(converged, reason, adam["epoch"], f"last loss {curve[-1]:.6g}")
        theta = adam["best_theta"] if p.early_stopping else adam["theta"]
        return {**state, "adam": adam, "phase": "finished", "theta": theta}

    def _track(self, adam: dict[str, Any], loss: float, theta: np.ndarray) -> None:
        """Count the epochs without an improvement of ``tol`` (scikit-learn's rule)."""
        adam["stale"] = adam["stale"] + 1 if loss > adam["best"] - self.params.tol else 0
        if loss < adam["best"]:
            adam.update(best=loss, best_theta=theta, best_epoch=adam["epoch"])

    def _warn(self, converged: bool, reason: str, iterations: int, detail: str) -> None:
        if converged:
            return
        warnings.warn(
            f"mlp did not converge: {reason} after "
            f"{counted(iterations, 'iteration' if self.params.solver == 'lbfgs' else 'epoch')}"
            f" ({detail}); "
            "raise max_iter, standardise the features (op: standard_scale) or raise l2",
            ConvergenceWarning, stacklevel=4)

    def _model(self, state: dict[str, Any], theta: np.ndarray) -> MLPFitted:
        net = state["net"]
        layers = _layers(theta, net["units"], np)
        label_type = state["label_type"]
        return MLPFitted(state["features"], state["classes"],
                         None if label_type is None else pa.type_for_alias(label_type),
                         net["activation"], [W.copy() for W, _ in layers],
                         [b.copy() for _, b in layers])

    def fitted(self, state: dict[str, Any]) -> MLPFitted:
        """The fitted network; before the fit is done, the network at the current point."""
        if "theta" in state:
            return self._model(state, state["theta"])
        if "net" not in state:
            raise RuntimeError("mlp: fitted() before the summary pass")
        if "adam" in state:
            return self._model(state, state["adam"]["theta"])
        opt = state["opt"]
        return self._model(state, opt["x"] if "x" in opt else opt["point"])

    def progress(self, state: dict[str, Any]) -> FitProgress | None:
        """L-BFGS's iteration, or Adam's epoch, of at most ``max_iter`` (either may stop
        sooner: no ETA)."""
        if state.get("phase") == "adam" and state["adam"]["train"]:
            return FitProgress(f"epoch {state['adam']['epoch'] + 1} of at most "
                               f"{self.params.max_iter}")
        return optimizer_progress(state) if state.get("phase") == "lbfgs" else None

    def metrics(self, state: dict[str, Any]) -> dict[str, Any]:
        if "net" not in state:
            return {}
        net = state["net"]
        out: dict[str, Any] = {
            "solver": self.params.solver, "layers": net["units"],
            "parameters": _size(net["units"]),
            "classes": None if state["classes"] is None else len(state["classes"]),
            "training_rows": int(state["rows"]), "validation_rows": int(state["heldout"]),
            "loss_curve": [float(v) for v in state["loss_curve"]],
        }
        if "opt" in state:
            opt = state["opt"]
            out.update(converged=bool(opt["converged"]), iterations=int(opt["iterations"]),
                       loss=float(opt["f"]) if "f" in opt else float("nan"),
                       gradient_norm=float(opt.get("gradient_norm", float("nan"))),
                       initial_gradient_norm=float(opt.get("g0", float("nan"))))
            reason = opt["reason"]
        else:
            adam = state["adam"]
            out.update(converged=bool(adam.get("converged", False)),
                       iterations=int(adam["epoch"]),
                       loss=out["loss_curve"][-1] if out["loss_curve"] else float("nan"))
            if self.params.early_stopping:
                out.update(validation_loss_curve=[float(v) for v in adam["validation_curve"]],
                           best_epoch=int(adam["best_epoch"]))
            reason = adam.get("reason", "")
        if not out["converged"] and reason:
            out["stop_reason"] = reason
        if state.get("zero_one") == [True, True, False] and self.params.task is None:
            # a float label of only 0 and 1 (a derive, a CSV's double): scikit-learn's
            # MLPClassifier takes 0.0 and 1.0 as classes; this fit made a regression
            out["note"] = (f"the label '{self.params.label}' is {state['label_arrow']} of "
                           "only 0 and 1: mlp fitted a regression, as for any floating label "
                           "(its prediction is a number, evaluate gives rmse); for a "
                           "classifier of the two classes, set `task: classification`, or "
                           "cast the label to int64 (op: cast)")
        if "validation" in state:
            out["validation"] = state["validation"]
        return out
