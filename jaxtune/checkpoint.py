"""Orbax checkpoints of a whole sweep, resume, and export of one trial.

A checkpoint holds one state per group (stacked over the group's trials: a device-independent
layout, so a sweep saved on 4 devices resumes on 2) and the metric histories so far. This module
stores *what it is given* and never imports the engine: each checkpoint records the structure of
what it holds (every leaf's path, shape and dtype, and which trials each group stacks), so
:func:`export_trial` reads a trial of any model or task back without rebuilding it, and a restore
whose caller expects another structure fails with :class:`~jaxtune.errors.CheckpointMismatchError`
(the checkpoint itself is left untouched).

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint under a final name. Each checkpoint also stores a SHA-256 digest
of its arrays and a hash of its files; a checkpoint that fails either check, or cannot be read, is
moved aside (``corrupt-step-N-<time>``, nothing deleted) and the previous one is used. The
configuration and its hash are saved beside the checkpoints (``sweep.json``); resuming with a
different configuration is refused with the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtune import config as config_lib
from jaxtune.config import SweepConfig
from jaxtune.errors import CheckpointMismatchError, ConfigError

__all__ = ["CheckpointWarning", "SweepCheckpointer", "export_trial"]


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is corrupt or incomplete."""


_MANIFEST = "jaxtune_files.json"


def _path_entry(k: Any) -> list:
    if isinstance(k, jax.tree_util.DictKey):
        return ["d", k.key if isinstance(k.key, int | str) else str(k.key)]
    if isinstance(k, jax.tree_util.SequenceKey):
        return ["s", k.idx]
    if isinstance(k, jax.tree_util.GetAttrKey):
        return ["a", k.name]
    return ["i", getattr(k, "key", str(k))]


def layout(tree: Any) -> list[dict[str, Any]]:
    """Every leaf of ``tree``: its key path, shape and dtype (what a checkpoint records)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        {
            "path": [_path_entry(k) for k in path],
            "shape": [int(d) for d in np.shape(leaf)],
            "dtype": np.dtype(leaf.dtype).name,
        }
        for path, leaf in leaves
    ]


def _stored(entry: dict[str, Any]) -> bool:
    return int(np.prod(entry["shape"])) > 0  # Orbax cannot save zero-size arrays


def _digest(groups: Sequence[Sequence[np.ndarray]], history: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    arrays = [a for g in groups for a in g] + [history[k] for k in sorted(history)]
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _describe_path(path: list) -> str:
    return "".join(f".{k}" if kind == "a" else f"[{k!r}]" for kind, k in path) or "<root>"


def _first_difference(want: list, have: list) -> str:
    for g, (a, b) in enumerate(zip(want, have, strict=False)):
        for x, y in zip(a, b, strict=False):
            if x != y:
                return (
                    f"group {g}, leaf {_describe_path(y['path'])}: checkpoint has shape "
                    f"{y['shape']} {y['dtype']}, this run expects {_describe_path(x['path'])} "
                    f"shape {x['shape']} {x['dtype']}"
                )
        if len(a) != len(b):
            return f"group {g}: checkpoint has {len(b)} leaves, this run expects {len(a)}"
    return f"checkpoint has {len(have)} groups, this run expects {len(want)}"


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
            if resume and stored.get("hash") != config_lib.config_hash(config):
                keys = config_lib.diff_configs(SweepConfig.from_dict(stored["config"]), config)
                raise ConfigError(
                    "cannot resume: the configuration differs from the checkpointed sweep in "
                    + (", ".join(keys) if keys else "its search space")
                )
        self.primary = jax.process_index() == 0
        if self.primary:
            self.directory.mkdir(parents=True, exist_ok=True)
            blob = {"config": config.to_dict(), "hash": config_lib.config_hash(config)}
            tmp = meta_path.with_name("sweep.json.tmp")
            tmp.write_text(json.dumps(blob, indent=2))
            tmp.replace(meta_path)
        self.manager = _manager(
            self.directory, max_to_keep or config.base["checkpoint.max_to_keep"]
        )

    def save(
        self,
        step: int,
        states: Sequence[Any],
        history: dict[str, np.ndarray],
        members: Sequence[Sequence[int]],
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Save the sweep at ``step`` (blocking; the write is atomic).

        Args:
          step: the number of steps the saved trials have taken.
          states: one state pytree per group, stacked over the group's trials.
          history: the metric histories so far.
          members: the trials each group stacks, in order.
          extra: JSON-able notes stored with the checkpoint (e.g. what an adaptive strategy
            needs to rebuild the population it was training).
        """
        states = jax.device_get(list(states))
        layouts = [layout(s) for s in states]
        groups = [
            [
                np.asarray(leaf)
                for leaf, e in zip(jax.tree.leaves(s), lay, strict=True)
                if _stored(e)
            ]
            for s, lay in zip(states, layouts, strict=True)
        ]
        history = {k: np.asarray(v) for k, v in history.items() if np.size(v)}
        meta = {
            "step": int(step),
            "digest": _digest(groups, history),
            "members": [list(map(int, m)) for m in members],
            "layout": layouts,
            "extra": extra or {},
        }
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(groups),
                history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        if not self.primary:
            return
        step_dir = self.directory / str(int(step))
        tmp = step_dir / (_MANIFEST + ".tmp")
        tmp.write_text(json.dumps(_file_hashes(step_dir), indent=1))
        tmp.replace(step_dir / _MANIFEST)

    def restore_latest(
        self, expect: Callable[[dict[str, Any]], tuple[Sequence[Any], Sequence[Sequence[int]]]]
    ) -> tuple[int, list[Any], dict[str, np.ndarray], dict[str, Any]] | None:
        """Restore the newest intact checkpoint, or return None when there is none.

        Args:
          expect: ``expect(extra) -> (template_states, members)``: given the notes a checkpoint
            was saved with, the abstract state of each group (stacked over its trials) and the
            trials each group stacks that the caller will put the arrays into.

        Returns:
          ``(step, states, history, extra)``: host arrays in the templates' structure.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint holds other trials or another
            structure than expected (left in place: nothing is moved or deleted).
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = _read_meta(self.manager, step)
            except Exception as e:
                self._move_aside(step, e)
                continue
            extra = meta.get("extra", {})
            template_states, members = expect(extra)
            want = [layout(t) for t in template_states]
            want_members = [list(map(int, m)) for m in members]
            if meta.get("members") != want_members:
                raise CheckpointMismatchError(
                    f"checkpoint at step {step} in {self.directory} holds other trial groups "
                    f"({meta.get('members')}) than this run ({want_members})"
                )
            if meta.get("layout") != want:
                raise CheckpointMismatchError(
                    f"checkpoint at step {step} in {self.directory} was written by a different "
                    "model, optimizer or task than this run builds; "
                    + _first_difference(want, meta.get("layout", []))
                )
            try:
                groups, history = _read_arrays(self.directory, self.manager, step, meta)
            except Exception as e:
                self._move_aside(step, e)
                continue
            states = [
                jax.tree.unflatten(jax.tree.structure(t), _full(g, lay))
                for t, g, lay in zip(template_states, groups, want, strict=True)
            ]
            return step, states, history, extra
        return None

    def _move_aside(self, step: int, error: Exception) -> None:
        aside = self.directory / f"corrupt-step-{step}-{int(time.time())}"
        (self.directory / str(step)).rename(aside)
        self.manager.reload()
        warnings.warn(
            f"checkpoint at step {step} in {self.directory} is corrupt or incomplete "
            f"({type(error).__name__}: {str(error)[:200]}); moved it to {aside.name} and falling "
            "back to the previous one",
            CheckpointWarning,
            stacklevel=3,
        )

    def close(self) -> None:
        self.manager.close()


def _manager(directory: Path, max_to_keep: int, *, read_only: bool = False) -> Any:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        ),
        item_names=("state", "history", "meta"),
    )


def _read_meta(manager: Any, step: int) -> dict[str, Any]:
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    if not isinstance(meta, dict) or "layout" not in meta or "members" not in meta:
        raise ValueError("its metadata has no layout")
    return meta


def _read_arrays(
    directory: Path, manager: Any, step: int, meta: dict[str, Any]
) -> tuple[list[list[np.ndarray]], dict[str, np.ndarray]]:
    _verify_files(directory / str(step))
    abstract = [
        [np.zeros(e["shape"], e["dtype"]) for e in lay if _stored(e)] for lay in meta["layout"]
    ]
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()
        ),
    )
    groups = [[np.asarray(a) for a in g] for g in restored["state"]]
    history = {k: np.asarray(v) for k, v in restored["history"].items()}
    if meta["digest"] != _digest(groups, history):
        raise ValueError("the digest of the restored arrays does not match")
    return groups, history


def _full(stored: list[np.ndarray], lay: list[dict[str, Any]]) -> list[np.ndarray]:
    """The leaves of a group in order, with the zero-size ones (not stored) filled back in."""
    it = iter(stored)
    return [next(it) if _stored(e) else np.zeros(e["shape"], e["dtype"]) for e in lay]


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


def _nest(entries: Sequence[tuple[list, np.ndarray]]) -> Any:
    """Rebuild nested dicts (and lists, for sequence keys) from recorded key paths."""
    root: dict = {}
    for path, value in entries:
        node = root
        for entry in path[:-1]:
            node = node.setdefault(tuple(entry), {})
        node[tuple(path[-1])] = value

    def convert(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(kind == "s" for kind, _ in node):
            return [convert(node[k]) for k in sorted(node, key=lambda kk: kk[1])]
        return {key: convert(v) for (_, key), v in node.items()}

    return convert(root)


def export_trial(run_dir: str | Path, trial_id: int) -> dict[str, Any]:
    """One trial's trained variables from a sweep's latest intact checkpoint.

    Works for any model or task: the checkpoint records the structure it holds. Nothing is
    moved or written; a corrupt checkpoint is skipped with a :class:`CheckpointWarning`.

    Args:
      run_dir: a sweep's output directory (with ``checkpoints/``).
      trial_id: the trial's id in ``results.json``.

    Returns:
      ``{"params": ..., **model_state}`` (e.g. ``batch_stats``) as nested dicts of NumPy arrays,
      ready for a Flax ``module.apply(variables, x, ...)``.
    """
    ckpt_dir = Path(run_dir).absolute() / "checkpoints"
    if not (ckpt_dir / "sweep.json").exists():
        raise FileNotFoundError(f"no sweep checkpoints in {run_dir} (missing sweep.json)")
    manager = _manager(ckpt_dir, 1, read_only=True)
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                meta = _read_meta(manager, step)
                groups, _ = _read_arrays(ckpt_dir, manager, step, meta)
            except Exception as e:
                warnings.warn(
                    f"checkpoint at step {step} in {ckpt_dir} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); trying the previous one",
                    CheckpointWarning,
                    stacklevel=2,
                )
                continue
            for members, stored, lay in zip(meta["members"], groups, meta["layout"], strict=True):
                if trial_id not in members:
                    continue
                j = members.index(trial_id)
                leaves = _full(stored, lay)
                parts: dict[str, list] = {"params": [], "model_state": []}
                for e, leaf in zip(lay, leaves, strict=True):
                    head = e["path"][0][1] if e["path"] else None
                    if head in parts:
                        parts[head].append((e["path"][1:], np.asarray(leaf[j])))
                model_state = _nest(parts["model_state"]) if parts["model_state"] else {}
                return {"params": _nest(parts["params"]), **dict(model_state)}
            total = sum(map(len, meta["members"]))
            raise ValueError(
                f"trial_id = {trial_id} is invalid: expected an integer in [0, {total})"
            )
    finally:
        manager.close()
    raise FileNotFoundError(f"no intact checkpoint in {ckpt_dir}")
