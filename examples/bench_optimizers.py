"""A user optimizer for `jaxtune bench examples/bench.toml`: Lion after global-norm clipping.

`optimizer.factory = "bench_optimizers:clipped_lion"` imports this module from the folder of
the TOML file. The factory receives one trial's hyperparameters as traced scalars (the
benchmark's quasi-random points vary them across the trials of a study, all in one program)
and returns a plain optax chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax


def clipped_lion(hp: Mapping[str, Any]) -> optax.GradientTransformation:
    """Clip the gradient to global norm 1, then Lion (``optax.lion``) with decoupled weight
    decay; ``hparams.lion_b1`` is Lion's interpolation factor ``b1``."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.lion(
            learning_rate=hp["optimizer.learning_rate"],
            b1=hp["hparams.lion_b1"],
            weight_decay=hp["optimizer.weight_decay"],
        ),
    )
