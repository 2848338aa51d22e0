"""The unit a user owns: a :class:`Task` (model, loss, metrics and data as pure functions).

A task describes *one* trial, unbatched. The engine owns everything that makes many trials run
as one program (stacking, batching, masking of padded batches, every reduction, evaluation,
divergence quarantine, sharding, checkpoints); a task never needs to know about any of it.

* ``init(key, hp) -> (params, model_state)``
* ``apply(params, model_state, inputs, *, train, key, mask) -> (outputs, new_model_state)``;
  ``mask`` marks the real rows of a padded batch (BatchNorm must use only those), ``key`` feeds
  dropout (``None`` when evaluating).
* ``loss(outputs, targets, hp) -> [B]``: one loss per example; the engine takes the means.
* ``metrics(outputs, targets) -> {name: [B]}``: per-example values; the engine takes the means.
* ``data``: a :class:`jaxtune.data.Splits` of ``(inputs, targets)`` pairs (arrays or pytrees of
  arrays with a leading example axis).

``hp`` is the trial's numeric hyperparameters, a dict of traced scalars keyed as in the
configuration (``hp["optimizer.learning_rate"]``, ``hp["hparams.label_smoothing"]``, ...).

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> data = make_regression_data(n=64, num_features=3, seed=0)
    >>> task = Task(
    ...     init=lambda key, hp: ({"w": jnp.zeros((3, 1))}, {}),
    ...     apply=lambda p, s, x, *, train, key=None, mask=None: (x @ p["w"], s),
    ...     loss=lambda out, y, hp: (out[:, 0] - y) ** 2,
    ...     metrics=lambda out, y: {"mae": jnp.abs(out[:, 0] - y)},
    ...     data=data,
    ... )
    >>> check_task(task, {})  # the contract holds; returns the metric names
    ['mae']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import data as data_lib
from jaxtune.data import Splits
from jaxtune.errors import TaskError
from jaxtune.initializers import scale_kernels
from jaxtune.models import Model

__all__ = [
    "METRIC_MODES",
    "Task",
    "check_task",
    "classification",
    "default_selection",
    "make_regression_data",
    "regression",
]


class Task(NamedTuple):
    """Pure per-trial functions plus data (see the module docstring for the contract).

    Attributes:
      init: ``init(key, hp) -> (params, model_state)``.
      apply: ``apply(params, model_state, inputs, *, train, key, mask) -> (outputs, state)``.
      loss: ``loss(outputs, targets, hp) -> per-example loss [B]``.
      metrics: ``metrics(outputs, targets) -> {name: per-example values [B]}``.
      data: a :class:`jaxtune.data.Splits` (``test`` may be ``None``).
      augment: optional ``augment(key, inputs, hp) -> inputs``, applied to every training
        batch inside the compiled step with the trial's own key.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    loss: Callable[..., jax.Array]
    metrics: Callable[..., Mapping[str, jax.Array]]
    data: Splits
    augment: Callable[..., Any] | None = None


def _model_init(model: Model) -> Callable[..., tuple[Any, Any]]:
    def init(key: jax.Array, hp: Mapping[str, Any]) -> tuple[Any, Any]:
        params, model_state = model.init(key)
        scale = hp.get("task.init_scale")
        if scale is not None:
            params = scale_kernels(params, scale)
        return params, model_state

    return init


def _accuracy_metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    return {"accuracy": (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)}


def _cross_entropy(outputs: jax.Array, targets: jax.Array, hp: Mapping[str, Any]) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets)


def classification(model: Model, data: Splits, *, valid_fraction: float = 0.1) -> Task:
    """Softmax cross-entropy classification of integer labels with an ``accuracy`` metric.

    ``init`` applies ``hp["task.init_scale"]`` (when the trial has it) to every kernel.

    Args:
      model: a :class:`jaxtune.models.Model` whose outputs are ``[B, num_classes]`` logits.
      data: the splits; targets are integer labels ``[N]``. A ``Splits`` without a validation
        split gets one carved out of the training split (``valid_fraction``).
      valid_fraction: see :func:`jaxtune.data.with_validation`.

    Raises:
      TaskError: labels that are not integers, or a model with fewer outputs than classes.
    """
    data = data_lib.with_validation(data, valid_fraction)
    num_classes = data_lib.num_classes(data)
    if model.num_outputs < num_classes:
        raise TaskError(
            f"model.num_outputs = {model.num_outputs} is too small: the labels need "
            f"{num_classes} outputs (labels 0..{num_classes - 1}); build the model with "
            f"num_outputs >= {num_classes}"
        )
    return Task(_model_init(model), model.apply, _cross_entropy, _accuracy_metrics, data)


def _as_targets(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    if outputs.shape != targets.shape and outputs.shape == (*targets.shape, 1):
        return outputs[..., 0]
    return outputs


def _squared_error(outputs: jax.Array, targets: jax.Array, hp: Mapping[str, Any]) -> jax.Array:
    err = _as_targets(outputs, targets) - targets
    return jnp.mean(jnp.reshape(err**2, (err.shape[0], -1)), axis=1)


def _regression_metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    err = jnp.reshape(_as_targets(outputs, targets) - targets, (targets.shape[0], -1))
    return {"mse": jnp.mean(err**2, axis=1), "mae": jnp.mean(jnp.abs(err), axis=1)}


def regression(model: Model, data: Splits, *, valid_fraction: float = 0.1) -> Task:
    """Per-example squared error (mean over output dimensions) with ``mse`` and ``mae`` metrics.

    Targets are ``[N]`` (the model's outputs may be ``[B]`` or ``[B, 1]``) or ``[N, k]``.

    Args:
      model: a :class:`jaxtune.models.Model`.
      data: the splits with float targets (a missing validation split is carved out of train).
      valid_fraction: see :func:`jaxtune.data.with_validation`.
    """
    data = data_lib.with_validation(data, valid_fraction)
    shape = tuple(data_lib.as_source(data.train).element_spec[1].shape)
    want = int(np.prod(shape)) if shape else 1
    if model.num_outputs != want:
        raise TaskError(
            f"model.num_outputs = {model.num_outputs} does not match the targets: expected "
            f"{want} output(s) for targets of per-example shape {shape}"
        )
    return Task(_model_init(model), model.apply, _squared_error, _regression_metrics, data)


def make_regression_data(
    *, n: int = 256, num_features: int = 8, noise: float = 0.1, seed: int = 0
) -> Splits:
    """A linear regression problem ``y = x @ w + noise`` split 60/20/20 (for tests and docs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, num_features)).astype(np.float32)
    w = rng.normal(size=(num_features,))
    y = (x @ w + noise * rng.normal(size=n)).astype(np.float32)
    a, b = int(0.6 * n), int(0.8 * n)
    return Splits((x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:]))


#: Which way is better for the metrics of the built-in tasks (and the loss).
METRIC_MODES = {"loss": "min", "accuracy": "max", "mse": "min", "mae": "min"}


def default_selection(metric_names: Any) -> str:
    """``"valid.accuracy"`` when the task reports accuracy, else ``"valid.loss"``."""
    return "valid.accuracy" if "accuracy" in metric_names else "valid.loss"


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def check_task(task: Any, hp: Mapping[str, Any], *, where: str = "task") -> list[str]:
    """Check a task against its contract on one small batch, abstractly (no FLOPs).

    Args:
      task: the object to check.
      hp: example hyperparameters (numbers or arrays), as a trial would receive them.
      where: how errors name the task (e.g. the ``task.factory`` path).

    Returns:
      The names of the task's metrics.

    Raises:
      TaskError: naming the part that breaks the contract (a split, ``init``, ``apply``,
        ``loss`` or ``metrics``) and what was expected.
    """
    if not isinstance(task, Task):
        raise TaskError(
            f"{where} must be a jaxtune.Task (init, apply, loss, metrics, data), got "
            f"{type(task).__name__}"
        )
    data_lib.check_splits(task.data, where=f"{where}.data")
    inputs, targets = data_lib.as_source(task.data.train).element_spec  # per example, unread
    b = min(2, data_lib.num_examples(task.data.train))
    x = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape), _dtype(a)), inputs)
    y = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape), _dtype(a)), targets)
    hp = {k: jnp.asarray(v) for k, v in hp.items()}
    key = jax.random.PRNGKey(0)
    try:
        params, state = jax.eval_shape(task.init, key, hp)
    except Exception as e:
        raise TaskError(f"{where}.init(key, hp) failed: {type(e).__name__}: {e}") from None
    mask = jax.ShapeDtypeStruct((b,), jnp.bool_)

    def forward(params, state, x, mask):
        return task.apply(params, state, x, train=True, key=key, mask=mask)

    try:
        outputs, _ = jax.eval_shape(forward, params, state, x, mask)
    except Exception as e:
        raise TaskError(
            f"{where}.apply failed on a batch of train inputs shaped {_shapes(x)}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    for name, fn in (("loss", lambda o, t: task.loss(o, t, hp)), ("metrics", task.metrics)):
        try:
            out = jax.eval_shape(fn, outputs, y)
        except Exception as e:
            raise TaskError(
                f"{where}.{name} failed on outputs shaped {_shapes(outputs)} and targets "
                f"shaped {_shapes(y)}: {type(e).__name__}: {_first_line(e)}"
            ) from None
        if name == "loss" and tuple(out.shape) != (b,):
            raise TaskError(
                f"{where}.loss must return one float per example, shape ({b},) for a batch of "
                f"{b}; it returned shape {tuple(out.shape)} (the engine takes the means)"
            )
        if name == "metrics":
            if not isinstance(out, Mapping):
                raise TaskError(
                    f"{where}.metrics must return a dict of name -> per-example values, got "
                    f"{type(out).__name__}"
                )
            for k, v in out.items():
                if not isinstance(k, str) or not k.isidentifier() or k == "loss":
                    raise TaskError(
                        f"{where}.metrics name {k!r} is invalid: expected an identifier other "
                        "than 'loss'"
                    )
                if tuple(getattr(v, "shape", ())) != (b,):
                    raise TaskError(
                        f"{where}.metrics[{k!r}] must be per-example, shape ({b},) for a batch "
                        f"of {b}; it has shape {tuple(getattr(v, 'shape', ()))}"
                    )
            names = list(out)
    return names


def _dtype(a: Any) -> Any:
    dt = np.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype
    return jnp.float32 if dt == np.float64 else (jnp.int32 if dt == np.int64 else dt)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""
