"""One trial's trained variables, read from a sweep's checkpoints (nothing is written).

The checkpoints of an adaptive strategy hold only the trials still training when each was
taken; a checkpoint records the sweep-wide id of each trial it holds, so a trial is found by its
``results.json`` id.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtune.checkpoint import CheckpointWarning, _read_only, _restore, _step_meta
from jaxtune.errors import ConfigError

__all__ = ["export_trial"]


def export_trial(run_dir: str | Path, trial_id: int) -> dict[str, Any]:
    """One trial's trained variables from the newest intact checkpoint of a sweep that holds it.

    Works for any model or task: Orbax restores the saved structure. Nothing is moved or
    written; a corrupt checkpoint is skipped with a :class:`CheckpointWarning`. A trial that an
    adaptive strategy (halving, Hyperband, PBT, Optuna) stopped is not in the checkpoints taken
    after it stopped: its variables come from the newest kept checkpoint taken before.

    Args:
      run_dir: a sweep's output directory (with ``checkpoints/``).
      trial_id: the trial's id in ``results.json``.

    Returns:
      ``{"params": ..., **model_state}`` (e.g. ``batch_stats``) as nested dicts of NumPy arrays,
      ready for a Flax ``module.apply(variables, x, ...)``.

    Raises:
      ConfigError: no kept checkpoint holds ``trial_id`` (the message names the trials the
        newest one holds).
    """
    directory = Path(run_dir).absolute() / "checkpoints"
    manager = _read_only(directory)
    newest: list[int] | None = None
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                meta = _step_meta(manager, step, directory)
                ids = meta.get("ids") or list(range(sum(map(len, meta["members"]))))
                newest = ids if newest is None else newest
                where = _position(meta["members"], ids, trial_id)
                if where is None:
                    continue
                states, _ = _restore(manager, step, meta, None)
            except ConfigError:
                raise
            except Exception as e:
                warnings.warn(
                    f"checkpoint at step {step} in {directory} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); trying the previous one",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            g, j = where
            take = lambda tree: jax.tree.map(lambda a: np.asarray(a)[j], tree or {})
            return {"params": take(states[g]["params"]), **take(states[g].get("model_state"))}
    finally:
        manager.close()
    if newest is None:
        raise FileNotFoundError(f"no intact checkpoint in {directory}")
    raise ConfigError(
        f"trial_id = {trial_id}: no checkpoint kept in {directory} holds this trial (the newest "
        f"holds trials {sorted(newest)}; a trial that an adaptive strategy stopped is only in "
        "the checkpoints taken before it stopped, see checkpoint.max_to_keep)"
    )


def _position(members: list[list[int]], ids: list[int], trial_id: int) -> tuple[int, int] | None:
    """``(group, index in the group)`` of the trial ``trial_id`` in a checkpoint whose groups
    stack the population positions ``members`` of the trials ``ids``; None: not there."""
    for g, positions in enumerate(members):
        for j, position in enumerate(positions):
            if ids[position] == trial_id:
                return g, j
    return None
