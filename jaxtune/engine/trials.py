"""Trials as arrays: a trial's numeric keys become traced per-trial values, the rest structure.

A *trial* is the base configuration with its overrides, a flat dict of dotted keys. Its numeric
keys (:func:`jaxtune.config.numeric_keys`: learning rate, batch size, momentum, ..., every
``hparams.*``) become arrays with a leading trial axis; every other key is *structure*, and
trials that share a structure share a compiled program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxtune import config as config_lib

__all__ = ["hp_arrays", "pad_trials", "root_keys", "structure_of"]


def structure_of(flat: Mapping[str, Any], numeric: Sequence[str]) -> tuple:
    """The configuration without its numeric keys, as a sorted tuple of ``(key, value)``."""
    return tuple(sorted((k, v) for k, v in flat.items() if k not in numeric))


def hp_arrays(trials: Sequence[Mapping[str, Any]], numeric: Sequence[str]) -> dict[str, np.ndarray]:
    """Every set numeric key as a host array with a leading trial axis (seed excluded)."""
    hp: dict[str, np.ndarray] = {}
    for key in numeric:
        values = [t[key] for t in trials]
        if key == "train.seed" or any(v is None for v in values):
            continue  # the seed becomes the root key; None is structurally absent
        integral = key == "train.batch_size" or (
            config_lib.is_hparam(key) and all(isinstance(v, int) for v in values)
        )
        hp[key] = np.asarray(values, np.int32 if integral else np.float32)
    return hp


def root_keys(trials: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Each trial's raw root key ``PRNGKey(train.seed)``, stacked ``[trials, 2]``."""
    return np.stack([np.asarray(jax.random.PRNGKey(t["train.seed"])) for t in trials])


def pad_trials(tree: Any, size: int) -> Any:
    """Pad the leading trial axis to ``size`` with copies of the first trial."""

    def pad(a):
        a = np.asarray(a)
        extra = size - a.shape[0]
        return a if extra == 0 else np.concatenate([a, np.repeat(a[:1], extra, axis=0)])

    return jax.tree.map(pad, tree)
