"""The table of workloads: a task factory with a validation target and a step budget each.

A :class:`Workload` names a task factory (an import path usable as ``task.factory``), the
validation metric that decides it, the target that metric must reach, the step budget, and a
reference optimizer with a known-good learning rate that reaches the target within the
budget. :meth:`Workload.config` turns it into a :func:`jaxtune.run_sweep` configuration.

Example:
    >>> w = get_workload("digits_mlp")
    >>> cfg = w.config(**{"optimizer.learning_rate": 3e-3})
    >>> cfg["task"]["factory"], cfg["select"]["metric"], cfg["optimizer"]["learning_rate"]
    ('jaxtune.workloads.tabular:digits_mlp', 'valid.accuracy', 0.003)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jaxtune import registry
from jaxtune.errors import ConfigError
from jaxtune.tasks import Task

__all__ = ["WORKLOADS", "Workload", "get_workload"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """A ready benchmark task: factory, validation target, step budget, reference optimizer.

    Attributes:
      name: the key in :data:`WORKLOADS`.
      description: one line: the model, the data and what the target means.
      factory: ``"package.module:function"``, the ``task.factory`` that builds the task.
      metric: the validation metric the target is on, e.g. ``"valid.accuracy"``.
      mode: ``"max"`` or ``"min"``: which way the metric improves.
      target: the documented validation target.
      steps: the step budget.
      eval_every: steps between evaluations (the resolution of the time to target).
      batch_size: the training batch size.
      learning_rate: a learning rate with which :attr:`optimizer` reaches the target.
      optimizer: the reference optimizer (a :data:`jaxtune.OPTIMIZERS` name).
    """

    name: str
    description: str
    factory: str
    metric: str
    mode: str
    target: float
    steps: int
    eval_every: int
    batch_size: int
    learning_rate: float
    optimizer: str

    def task(self, structure: Mapping[str, Any] | None = None) -> Task:
        """The task, built by :attr:`factory` from ``structure`` (e.g. ``{"task.dtype":
        "bfloat16"}``; keys left out take the workload's defaults)."""
        factory = registry.import_factory(self.factory, "task.factory")
        return factory(dict(structure or {}))

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A :func:`jaxtune.run_sweep` configuration (a dict of sections) for this workload.

        It sets ``task.factory``, ``train.steps`` / ``eval_every`` / ``batch_size``,
        ``select.metric`` / ``mode`` / ``target`` and ``optimizer.name`` / ``learning_rate``.

        Args:
          **overrides: dotted keys (``**{"train.steps": 50}``) set one value; a section name
            with a mapping (``sweep={"grid": {...}}``) updates that section.

        Raises:
          ConfigError: an override that is neither a dotted key nor a section with a mapping.
        """
        cfg: dict[str, Any] = {
            "task": {"factory": self.factory},
            "train": {
                "steps": self.steps,
                "eval_every": self.eval_every,
                "batch_size": self.batch_size,
            },
            "select": {"metric": self.metric, "mode": self.mode, "target": self.target},
            "optimizer": {"name": self.optimizer, "learning_rate": self.learning_rate},
        }
        for key, value in overrides.items():
            section, dot, rest = key.partition(".")
            if dot and section and rest:
                cfg.setdefault(section, {})[rest] = value
            elif not dot and isinstance(value, Mapping):
                cfg.setdefault(key, {}).update(copy.deepcopy(dict(value)))
            else:
                raise ConfigError(
                    f"override {key!r} = {value!r} is invalid: expected a dotted key "
                    "(**{'train.steps': 50}) or a section name with a mapping "
                    "(sweep={'grid': {...}})"
                )
        return cfg


def _workloads(*items: Workload) -> Mapping[str, Workload]:
    return MappingProxyType({w.name: w for w in items})


WORKLOADS: Mapping[str, Workload] = _workloads(
    Workload(
        name="digits_mlp",
        description=(
            "scikit-learn's 8x8 digits, flat (1257 train / 180 valid), MLP 64-256-256-10; "
            "target: validation accuracy (0.945: at most 9 of 180 wrong)"
        ),
        factory="jaxtune.workloads.tabular:digits_mlp",
        metric="valid.accuracy",
        mode="max",
        target=0.945,
        steps=150,
        eval_every=10,
        batch_size=64,
        learning_rate=1e-3,
        optimizer="adam",
    ),
    Workload(
        name="digits_cnn",
        description=(
            "scikit-learn's 8x8 digits as 8x8x1 images (1257 train / 180 valid), CNN of 16-32 "
            "channels (3x3 convolutions, 2x2 max pooling); target: validation accuracy (0.945: "
            "at most 9 of 180 wrong)"
        ),
        factory="jaxtune.workloads.vision:digits_cnn",
        metric="valid.accuracy",
        mode="max",
        target=0.945,
        steps=250,
        eval_every=10,
        batch_size=64,
        learning_rate=1e-2,
        optimizer="adam",
    ),
    Workload(
        name="images32_cnn",
        description=(
            "synthetic 32x32x3 images (10 classes of smooth random colour templates, shifted "
            "up to 8 px, pixel noise; 4000 train / 1000 valid), CNN of 8-16-32 channels; "
            "target: validation accuracy"
        ),
        factory="jaxtune.workloads.vision:images32_cnn",
        metric="valid.accuracy",
        mode="max",
        target=0.9,
        steps=150,
        eval_every=15,
        batch_size=32,
        learning_rate=3e-3,
        optimizer="adam",
    ),
    Workload(
        name="diabetes",
        description=(
            "scikit-learn's diabetes regression (10 features, 308 train / 45 valid), MLP "
            "10-64-1; target: validation MSE in units of the training target's variance"
        ),
        factory="jaxtune.workloads.tabular:diabetes_mlp",
        metric="valid.loss",
        mode="min",
        target=0.5,
        steps=400,
        eval_every=25,
        batch_size=32,
        learning_rate=3e-3,
        optimizer="adam",
    ),
    Workload(
        name="bytes_lm",
        description=(
            "byte-level decoder-only transformer (2 blocks of width 64, 4 heads, 64 bytes) on "
            "Python's own standard-library source; target: validation next-byte "
            "cross-entropy (nats)"
        ),
        factory="jaxtune.workloads.language:bytes_lm",
        metric="valid.loss",
        mode="min",
        target=2.0,
        steps=800,
        eval_every=50,
        batch_size=16,
        learning_rate=3e-3,
        optimizer="adam",
    ),
)
"""Every workload by name."""


def get_workload(name: str) -> Workload:
    """The workload called ``name``.

    Raises:
      ConfigError: an unknown name (the message lists the allowed ones).
    """
    if name not in WORKLOADS:
        raise ConfigError(
            f"unknown workload {name!r}: expected one of {', '.join(map(repr, WORKLOADS))}"
        )
    return WORKLOADS[name]
