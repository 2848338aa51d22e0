"""Every name a configuration may use, one table per kind, and what each name builds.

Configuration validation derives its allowed values from these tables (``jaxtune.config``), and
the engine builds the bundled tasks and optimizer chains from them, so a name exists in exactly
one place. The builders read a *flat* configuration (dotted keys); numeric values may be traced
arrays given in ``hp``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import optax

from jaxtune import data as data_lib
from jaxtune import models as models_lib
from jaxtune import optimizers as opt_lib
from jaxtune import schedules as sched_lib
from jaxtune import tasks as tasks_lib
from jaxtune.augment import image_augment
from jaxtune.data.splits import take_subset
from jaxtune.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "DTYPES",
    "MODELS",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "POOLINGS",
    "SAMPLERS",
    "SCHEDULES",
    "STRATEGIES",
    "TASK_KINDS",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "build_task",
    "import_factory",
    "load_data",
]


class DatasetEntry(NamedTuple):
    """A bundled dataset: its loader and the kind of task it is."""

    load: Callable[..., data_lib.Splits]
    kind: str  # a key of TASK_KINDS
    images: bool  # whether it has an image layout (``flat=False``)


DATASETS: Mapping[str, DatasetEntry] = MappingProxyType(
    {
        "digits": DatasetEntry(data_lib.load_digits, "classification", True),
        "synthetic": DatasetEntry(data_lib.make_classification, "classification", True),
        "diabetes": DatasetEntry(data_lib.load_diabetes, "regression", False),
    }
)
"""``task.dataset`` names."""

TASK_KINDS: Mapping[str, Callable[..., tasks_lib.Task]] = MappingProxyType(
    {"classification": tasks_lib.classification, "regression": tasks_lib.regression}
)
"""The built-in tasks by kind."""

MODELS: Mapping[str, Callable[..., models_lib.Model]] = MappingProxyType(
    {"mlp": models_lib.mlp, "cnn": models_lib.cnn}
)
"""``task.model`` names."""

ACTIVATIONS = models_lib.ACTIVATIONS
NORMALIZATIONS = models_lib.NORMALIZATIONS
POOLINGS = models_lib.POOLINGS
DTYPES = models_lib.DTYPES
"""``task.dtype`` names: the built-in models' compute dtypes (parameters stay float32)."""
OPTIMIZERS = opt_lib.OPTIMIZERS
SCHEDULES = tuple(sched_lib.SCHEDULES)
"""``schedule.name`` names (the schedules themselves live in :mod:`jaxtune.schedules`)."""

STRATEGIES: Mapping[str, str] = MappingProxyType(
    {
        "all": "jaxtune.engine.run:run_all",
        "halving": "jaxtune.search.halving:run_halving",
        "hyperband": "jaxtune.search.halving:run_hyperband",
        "pbt": "jaxtune.search.pbt:run_pbt",
        "optuna": "jaxtune.search.optuna:run_optuna",
    }
)
"""``sweep.strategy`` names: how the trials of the search space are trained (imported lazily:
the strategies sit above the engine)."""

SAMPLERS = ("tpe", "cmaes", "gp", "qmc", "random")
"""``optuna.sampler`` names."""


#: The schedules whose shape depends on ``train.steps`` (the others ignore it, so sweeps of
#: different lengths share their compiled programs).
SCHEDULES_OF_STEPS = ("cosine", "warmup_cosine")


def build_schedule(flat: Mapping[str, Any], hp: Mapping[str, Any] | None = None) -> Any:
    """The learning rate (a number or an ``optax.Schedule``) of one trial.

    Args:
      flat: the trial's dotted configuration (``schedule.name`` and ``train.steps`` are read
        from here).
      hp: traced numeric values overriding ``flat`` (what the engine passes).
    """
    v = {**flat, **(hp or {})}
    lr = v["optimizer.learning_rate"]
    name, steps = flat["schedule.name"], flat["train.steps"]
    if name == "constant":
        return lr
    if name in ("step_decay", "exponential"):
        return sched_lib.SCHEDULES[name](
            lr, v["schedule.decay_rate"], v["schedule.every"], min_value=v["schedule.min_value"]
        )
    if name == "cosine":
        return sched_lib.cosine_decay(lr, steps, alpha=v["schedule.alpha"])
    warm = v["schedule.warmup_steps"]
    return sched_lib.warmup_cosine_decay(lr, steps - warm, warm, alpha=v["schedule.alpha"])


def build_optimizer(
    flat: Mapping[str, Any], hp: Mapping[str, Any] | None = None, *, weight_decay: bool = True
) -> optax.GradientTransformation:
    """The optimizer chain a configuration names (see :func:`jaxtune.make_optimizer`).

    ``weight_decay=False`` leaves weight decay out of the chain (the engine does so for a
    group whose trials all have ``optimizer.weight_decay = 0``).
    """
    v = {**flat, **(hp or {})}
    return opt_lib.make_optimizer(
        flat["optimizer.name"],
        build_schedule(flat, hp),
        momentum=v.get("optimizer.momentum"),
        clip_norm=v.get("optimizer.clip_norm"),
        weight_decay=v.get("optimizer.weight_decay", 0.0) if weight_decay else 0.0,
    )


_DATA_CACHE: dict[tuple, data_lib.Splits] = {}


def load_data(flat: Mapping[str, Any]) -> data_lib.Splits:
    """The bundled dataset a configuration names, split and standardized (cached per process)."""
    name = flat["task.dataset"]
    entry = DATASETS[name]
    images = entry.images and flat["task.model"] == "cnn"
    key = (
        name,
        images,
        flat["task.valid_fraction"],
        flat["task.test_fraction"],
        flat["task.subset"],
    )
    if key not in _DATA_CACHE:
        kwargs: dict[str, Any] = {}
        if name == "synthetic" and images:
            kwargs = {"image_shape": (8, 8, 1), "num_features": 64}
        elif entry.images:
            kwargs = {"flat": not images}
        if name != "synthetic":
            kwargs.update(
                valid_fraction=flat["task.valid_fraction"], test_fraction=flat["task.test_fraction"]
            )
        try:
            splits = entry.load(**kwargs)
        except ValueError as e:
            raise ConfigError(f"task.valid_fraction / task.test_fraction: {e}") from None
        _DATA_CACHE[key] = take_subset(splits, flat["task.subset"])
    return _DATA_CACHE[key]


def build_model(
    flat: Mapping[str, Any], input_shape: Sequence[int], num_outputs: int
) -> models_lib.Model:
    """The Flax model a configuration names (``task.model``, ``task.widths``, ``task.dtype``...)."""
    common = dict(
        num_outputs=num_outputs,
        input_shape=tuple(input_shape),
        activation=flat["task.activation"],
        normalization=flat["task.normalization"],
        init=flat["task.init"],
        dropout=flat["task.dropout"],
        dtype=flat["task.dtype"],
    )
    widths = flat["task.widths"]
    try:
        if flat["task.model"] == "mlp":
            return models_lib.mlp(widths=widths or (256, 256), **common)
        return models_lib.cnn(
            channels=widths or (16, 32, 64), pooling=flat["task.pooling"], **common
        )
    except ValueError as e:
        raise ConfigError(
            f"task.model = {flat['task.model']!r} cannot be built for task.dataset = "
            f"{flat['task.dataset']!r} (inputs of shape {tuple(input_shape)}): {e}"
        ) from e


def build_task(
    flat: Mapping[str, Any],
    *,
    model: models_lib.Model | None = None,
    data: data_lib.Splits | None = None,
    augment: bool = False,
) -> tasks_lib.Task:
    """The built-in task of a configuration: the dataset's kind, with the configured model.

    ``model`` / ``data`` replace the configured ones (the ``run_sweep(model=, dataset=)``
    conveniences); a user ``data`` without a validation split gets one carved out of train.
    ``augment`` adds :func:`jaxtune.augment.image_augment` (strengths ``augment.*`` in ``hp``).
    """
    kind = DATASETS[flat["task.dataset"]].kind if data is None else _kind_of(data)
    splits = load_data(flat) if data is None else data
    if model is None:
        splits = data_lib.with_validation(splits, flat["task.valid_fraction"])
        if kind == "classification":
            outputs = data_lib.num_classes(splits)
        else:
            y = splits.train[1]
            outputs = 1 if y.ndim == 1 else int(y[0].size)
        model = build_model(flat, data_lib.input_shape(splits), outputs)
    task = TASK_KINDS[kind](model, splits, valid_fraction=flat["task.valid_fraction"])
    return task._replace(augment=image_augment) if augment else task


def _kind_of(data: data_lib.Splits) -> str:
    import numpy as np

    y = np.asarray(data.train[1])
    return "classification" if np.issubdtype(y.dtype, np.integer) else "regression"


def import_factory(spec: str, key: str, *, search: Sequence[str | Path] = ()) -> Callable:
    """Import ``"package.module:function"`` named by configuration key ``key``.

    The current directory and ``search`` (e.g. the configuration file's folder) are tried
    before the installed packages.

    Raises:
      ConfigError: naming ``key`` and ``spec`` when the path is malformed, the import fails or
        the attribute is missing or not callable.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key} = {spec!r} is invalid: expected 'package.module:function'")
    extra = [str(Path(p).resolve()) for p in (*search, Path.cwd())]
    added = [p for p in extra if p not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ConfigError(f"{key} = {spec!r} cannot be imported: {type(e).__name__}: {e}") from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key} = {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key} = {spec!r} is not callable ({type(obj).__name__})")
    return obj
