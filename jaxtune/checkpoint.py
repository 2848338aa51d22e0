"""Orbax checkpoints of a whole sweep, resume, and export of one trial.

The sweep state (stacked params, optimizer states, model states, PRNG keys, per-trial diverged
flags and steps) and the metric histories so far are saved through an
``orbax.checkpoint.CheckpointManager`` between compiled chunks. Orbax writes each step into a
temporary directory and renames it when complete, so a crash never leaves a half-written
checkpoint under a final name; in addition every checkpoint stores a SHA-256 digest of its
arrays, and a checkpoint that fails to restore or whose digest does not match is skipped in
favour of the previous one (with a warning).

The configuration and its hash are saved beside the checkpoints (``sweep.json``); resuming with a
different configuration is refused with the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtune import config as config_lib
from jaxtune.config import ConfigError, SweepConfig

__all__ = ["SweepCheckpointer", "export_trial", "CheckpointWarning"]


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is corrupt or incomplete."""


def _digest(tree: Any) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class SweepCheckpointer:
    """Saves and restores a sweep's state under ``directory`` with Orbax.

    Args:
      directory: the checkpoint folder (``<out>/checkpoints``).
      config: the sweep's configuration; stored beside the checkpoints and checked on resume.
      max_to_keep: how many checkpoints to keep (defaults to ``checkpoint.max_to_keep``).
      resume: whether the caller intends to resume. A fresh run into a folder that already holds
        checkpoints is refused so that nothing written before is overwritten.
    """

    def __init__(
        self,
        directory: str | Path,
        config: SweepConfig,
        *,
        max_to_keep: int | None = None,
        resume: bool = False,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.config = config
        meta_path = self.directory / "sweep.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            if not resume and _has_steps(self.directory):
                raise ConfigError(
                    f"{self.directory} already holds checkpoints of a sweep; resume it "
                    "(--resume / resume=True) or choose another output directory"
                )
            if resume:
                old = SweepConfig.from_dict(stored["config"])
                if stored.get("hash") != config_lib.config_hash(config):
                    keys = config_lib.diff_configs(old, config)
                    raise ConfigError(
                        "cannot resume: the configuration differs from the checkpointed sweep in "
                        + (", ".join(keys) if keys else "its search space")
                    )
        self.primary = jax.process_index() == 0
        if self.primary:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = meta_path.with_name("sweep.json.tmp")
            tmp.write_text(
                json.dumps(
                    {"config": config.to_dict(), "hash": config_lib.config_hash(config)}, indent=2
                )
            )
            tmp.replace(meta_path)
        keep = max_to_keep or config.base["checkpoint.max_to_keep"]
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "history", "meta"),
        )

    def save(self, step: int, states: Sequence[Any], history: dict[str, np.ndarray]) -> None:
        """Save the sweep at ``step`` (blocking; the write is atomic).

        Args:
          step: the number of steps every trial has taken.
          states: one state per group, stacked over the group's trials (device-independent
            layout, so a sweep can resume on a different number of devices).
          history: the metric histories so far.
        """
        states = jax.device_get(list(states))
        meta = {"step": int(step), "digest": _digest((states, history))}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(states),
                history=ocp.args.StandardSave(dict(history)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        if not self.primary:
            return
        step_dir = self.directory / str(int(step))
        manifest = step_dir / _MANIFEST
        tmp = step_dir / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(_file_hashes(step_dir), indent=1))
        tmp.replace(manifest)

    def restore_latest(
        self, template_states: Sequence[Any]
    ) -> tuple[int, list[Any], dict[str, np.ndarray]] | None:
        """Restore the newest intact checkpoint, or return None when there is none.

        Args:
          template_states: one abstract state per group (shapes and dtypes, stacked over the
            group's trials); the restored arrays are host (numpy) arrays, which the engine then
            places on however many devices the resumed run has.

        A checkpoint that cannot be read or whose digest does not match is moved aside with a
        :class:`CheckpointWarning` naming it, and the previous one is tried.
        """
        abstract = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), list(template_states))
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                _verify_files(self.directory / str(step))
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract),
                        history=ocp.args.StandardRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                states = list(restored["state"])
                history = {k: np.asarray(v) for k, v in restored["history"].items()}
                if restored["meta"]["digest"] != _digest((jax.device_get(states), history)):
                    raise ValueError("the digest of the restored arrays does not match")
            except Exception as e:
                aside = self.directory / f"corrupt-step-{step}-{int(time.time())}"
                (self.directory / str(step)).rename(aside)
                self.manager.reload()
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is corrupt or incomplete "
                    f"({type(e).__name__}: {str(e)[:200]}); moved it to {aside.name} and "
                    "falling back to the previous one",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            return step, states, history
        return None

    def close(self) -> None:
        self.manager.close()


_MANIFEST = "jaxtune_files.json"


def _file_hashes(step_dir: Path) -> dict[str, str]:
    out = {}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and not p.name.startswith(_MANIFEST):
            out[str(p.relative_to(step_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _verify_files(step_dir: Path) -> None:
    """Compare a checkpoint's files with the hashes written after it was saved."""
    manifest = step_dir / _MANIFEST
    if not manifest.exists():
        return  # saved, but the process died before the manifest: the digest check decides
    expected = json.loads(manifest.read_text())
    actual = _file_hashes(step_dir)
    bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if bad:
        raise ValueError(f"files changed since they were written: {', '.join(bad[:3])}")


def _has_steps(directory: Path) -> bool:
    return any(p.is_dir() and p.name.isdigit() for p in directory.iterdir())


def export_trial(run_dir: str | Path, trial_id: int) -> dict[str, Any]:
    """One trial's trained variables as a plain Flax variables tree.

    Args:
      run_dir: a sweep's output directory (with ``checkpoints/``).
      trial_id: the trial's id in ``results.json``.

    Returns:
      ``{"params": ..., **model_state}`` (e.g. ``batch_stats``) of the latest intact
      checkpoint, ready for ``module.apply(variables, x, ...)``.
    """
    from jaxtune import sweep as sweep_lib

    ckpt_dir = Path(run_dir) / "checkpoints"
    meta = ckpt_dir / "sweep.json"
    if not meta.exists():
        raise FileNotFoundError(f"no sweep checkpoints in {run_dir} (missing {meta})")
    cfg = SweepConfig.from_dict(json.loads(meta.read_text())["config"])
    states, groups = sweep_lib.restore_states(cfg, ckpt_dir)
    for state, ids in zip(states, groups, strict=True):
        if trial_id in ids:
            j = ids.index(trial_id)
            params = jax.tree.map(lambda a: np.asarray(a[j]), state.params)
            model_state = jax.tree.map(lambda a: np.asarray(a[j]), state.model_state)
            return {"params": params, **dict(model_state)}
    total = sum(map(len, groups))
    raise ValueError(f"trial_id = {trial_id} is invalid: expected an integer in [0, {total})")
