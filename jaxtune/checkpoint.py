"""Orbax checkpoints of a whole sweep and resume (one trial's export: :mod:`jaxtune.export`).

A checkpoint holds one state per group (stacked over the group's trials: a device-independent
layout, so a sweep saved on 4 devices resumes on 2) and the metric histories so far, as Orbax
pytree saves. It is restored against an abstract target (the states the resuming run expects),
so a run that builds another model, optimizer or task gets a
:class:`~jaxtune.errors.CheckpointMismatchError` naming the first difference (the checkpoint
itself is left untouched). This module stores *what it is given* and never imports the engine.

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint under a final name. Each step's custom metadata holds the
trials each group stacks, the caller's notes and a SHA-256 digest of every array; a checkpoint
whose arrays do not match their digest, or that cannot be read, is moved aside
(``corrupt-step-N-<time>``, nothing deleted) and the previous one is used. The configuration and
its hash are the manager's root metadata; resuming with a different configuration is refused
with the keys that differ.

Checkpoints of format 1 (jaxtune 0.2: leaf lists beside a ``meta`` item) are refused with a
message that names the format.
"""

from __future__ import annotations

import hashlib
import shutil
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

__all__ = [
    "CheckpointWarning",
    "SweepCheckpointer",
    "holds_checkpoints",
    "latest_notes",
    "stored_config",
]

#: The layout this module writes (step metadata ``format``).
FORMAT = 2


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is corrupt or incomplete."""


def _size(a: Any) -> int:
    return int(np.prod(a.shape)) if hasattr(a, "shape") else int(np.size(a))


def _stored(tree: Any) -> Any:
    """``tree`` with zero-size arrays replaced by None (Orbax cannot save them)."""
    return jax.tree.map(lambda a: None if _size(a) == 0 else a, tree)


def _filled(restored: Any, target: Any) -> Any:
    """Put the zero-size arrays :func:`_stored` dropped back, from the abstract target."""
    leaves, treedef = jax.tree.flatten(target)
    it = iter(jax.tree.leaves(restored))
    return jax.tree.unflatten(
        treedef, [np.zeros(a.shape, a.dtype) if _size(a) == 0 else next(it) for a in leaves]
    )


def _path_name(path: tuple) -> str:
    """A key path as ``a/0/b``, the same for a NamedTuple field and the dict Orbax reads."""

    def name(k: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return "/".join(map(name, path))


def _digest(*trees: Any) -> str:
    """SHA-256 of every array of ``trees`` in path order (independent of container types)."""
    h = hashlib.sha256()
    for tree in trees:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, a in sorted(leaves, key=lambda pa: _path_name(pa[0])):
            a = np.asarray(a)
            h.update(f"{_path_name(path)}:{a.shape}:{a.dtype.str}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _manager(directory: Path, max_to_keep: int = 1, *, read_only: bool = False, root=None) -> Any:
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        ),
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "history": ocp.StandardCheckpointHandler(),
        },
        metadata=root,
    )


def _refuse_format_1(directory: Path) -> None:
    """Raises, naming both formats, when a step in ``directory`` has format 1's layout."""
    old = sorted(int(p.parent.name) for p in directory.glob("*/meta") if p.parent.name.isdigit())
    if old:
        raise CheckpointMismatchError(
            f"checkpoint at step {old[-1]} in {directory} has format 1 (jaxtune 0.2: leaf lists "
            f"beside a 'meta' item); this version reads format {FORMAT}. Resume it with jaxtune "
            "0.2, or start this sweep in a new output directory"
        )


def _step_meta(manager: Any, step: int, directory: Path) -> dict[str, Any]:
    """A step's custom metadata; refuses another format with a message naming it."""
    _refuse_format_1(directory)
    meta = dict(manager.metadata(step).custom_metadata or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"its metadata has no format {FORMAT} record")
    return meta


def _intact(manager: Any, directory: Path, read: Callable[[int, dict], Any], warn: Callable) -> Any:
    """``read(step, meta)`` of the newest checkpoint that reads back intact, or None.

    A checkpoint that fails to read (any error but a mismatch) is handed to ``warn`` and the
    previous one is tried.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            meta = _step_meta(manager, step, directory)
            return read(step, meta)
        except ConfigError:  # a mismatch or a bad request, not a damaged checkpoint
            raise
        except _CallerError as e:  # the caller failed, not the checkpoint: it stays as it is
            raise e.error from e.error.__cause__
        except Exception as e:
            warn(step, e)
    return None


class _CallerError(Exception):
    """An error of the caller's own code while it reads a checkpoint (e.g. compiling the
    population the checkpoint is restored into): passed on, never taken for damage."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _restore(manager: Any, step: int, meta: dict, target: Any) -> tuple[Any, dict]:
    """The states (in ``target``'s structure; None: as saved) and histories of a step."""
    state_args = ocp.args.StandardRestore(None if target is None else _stored(target))
    restored = manager.restore(
        step, args=ocp.args.Composite(state=state_args, history=ocp.args.StandardRestore())
    )
    states, history = restored["state"], dict(restored["history"])
    if meta["digest"] != _digest(states, history):
        raise ValueError("the digest of the restored arrays does not match")
    return (states if target is None else _filled(states, target)), history


class SweepCheckpointer:
    """Saves and restores a sweep's state under ``directory`` with Orbax.

    Args:
      directory: the checkpoint folder (``<out>/checkpoints``).
      config: the sweep's configuration; stored as root metadata and checked on resume.
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
        digest = config_lib.config_hash(config)
        has_steps = holds_checkpoints(self.directory)
        if has_steps and not resume:
            raise ConfigError(
                f"{self.directory} already holds checkpoints of a sweep; resume it "
                "(--resume / resume=True) or choose another output directory"
            )
        if has_steps:
            _refuse_format_1(self.directory)  # before a manager writes its own metadata
            stored = _manager(self.directory, read_only=True).metadata().custom_metadata or {}
            if stored.get("hash") != digest and "config" in stored:
                what = f"the checkpointed sweep in {self.directory.parent}"
                config_lib.check_same(SweepConfig.from_dict(stored["config"]), config, what)
        elif (self.directory / "metadata").is_dir() and jax.process_index() == 0:
            shutil.rmtree(self.directory / "metadata")  # a run that never checkpointed
        root = {"config": config.to_dict(), "hash": digest, "format": FORMAT}
        keep = max_to_keep or config.base["checkpoint.max_to_keep"]
        self.manager = _manager(self.directory, keep, root=root)

    def save(
        self,
        step: int,
        states: Sequence[Any],
        history: dict[str, np.ndarray],
        members: Sequence[Sequence[int]],
        *,
        extra: dict[str, Any] | None = None,
        ids: Sequence[int] | None = None,
    ) -> None:
        """Save the sweep at ``step`` (blocking; the write is atomic).

        Args:
          step: the checkpoint's number.
          states: one state pytree per group, stacked over the group's trials.
          history: the metric histories so far.
          members: the trials each group stacks, in order, as positions in the population.
          extra: JSON-able notes stored with the checkpoint (e.g. what an adaptive strategy
            needs to rebuild the population it was training).
          ids: the sweep-wide trial id (as in ``results.json``) of each population position;
            None: the positions are the ids (a plain sweep trains every trial).
        """
        states = _stored(jax.device_get(list(states)))
        history = {k: np.asarray(v) for k, v in history.items() if np.size(v)}
        meta = {
            "format": FORMAT,
            "digest": _digest(states, history),
            "members": [list(map(int, m)) for m in members],
            "extra": extra or {},
        }
        if ids is not None:
            meta["ids"] = list(map(int, ids))
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(states), history=ocp.args.StandardSave(history)
            ),
            custom_metadata=meta,
            force=True,
        )
        self.manager.wait_until_finished()

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

        def read(step: int, meta: dict) -> Any:
            extra = meta.get("extra", {})
            try:
                templates, members = expect(extra)
            except ConfigError:
                raise
            except Exception as e:
                raise _CallerError(e) from e
            want = [list(map(int, m)) for m in members]
            if meta["members"] != want:
                raise CheckpointMismatchError(
                    f"checkpoint at step {step} in {self.directory} holds other trial groups "
                    f"({meta['members']}) than this run ({want})"
                )
            self._check_structure(step, list(templates))
            states, history = _restore(self.manager, step, meta, list(templates))
            return step, list(states), history, extra

        return _intact(self.manager, self.directory, read, self._move_aside)

    def _check_structure(self, step: int, templates: list[Any]) -> None:
        """Compare what a checkpoint holds (Orbax's tree metadata) with what this run builds."""
        saved = self.manager.item_metadata(step)["state"]
        have, want = _leaves(saved), _leaves(_stored(templates))
        if have == want:
            return
        for path in sorted(want.keys() | have.keys()):
            if want.get(path) != have.get(path):
                raise CheckpointMismatchError(
                    f"checkpoint at step {step} in {self.directory} was written by a different "
                    f"model, optimizer or task than this run builds; leaf {path}: checkpoint "
                    f"has {have.get(path, 'nothing')}, this run expects {want.get(path, 'nothing')}"
                )

    def _move_aside(self, step: int, error: Exception) -> None:
        """Move a damaged checkpoint out of the way (nothing is deleted) and say so."""
        aside = self.directory / f"corrupt-step-{step}-{int(time.time())}"
        (self.directory / str(step)).rename(aside)
        self.manager.reload()
        warnings.warn(
            f"checkpoint at step {step} in {self.directory} is corrupt or incomplete "
            f"({type(error).__name__}: {str(error)[:200]}); moved it to {aside.name} and falling "
            "back to the previous one",
            CheckpointWarning,
            stacklevel=4,
        )

    def close(self) -> None:
        self.manager.close()


def _leaves(tree: Any) -> dict[str, tuple]:
    """``path -> (shape, dtype)`` of every array of a tree or of Orbax's metadata of one."""
    return {
        _path_name(path): (tuple(a.shape), np.dtype(a.dtype).name)
        for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _read_only(directory: Path) -> Any:
    if not (directory / "metadata").is_dir():
        raise FileNotFoundError(f"no sweep checkpoints in {directory.parent} (missing metadata)")
    return _manager(directory, read_only=True)


def holds_checkpoints(directory: str | Path) -> bool:
    """Whether ``directory`` (a sweep's ``checkpoints/``) holds any finished checkpoint."""
    directory = Path(directory)
    return directory.is_dir() and any(p.is_dir() and p.name.isdigit() for p in directory.iterdir())


def stored_config(directory: str | Path) -> SweepConfig | None:
    """The configuration a sweep's checkpoints were written with (None: no checkpoints)."""
    directory = Path(directory).absolute()
    if not holds_checkpoints(directory) or not (directory / "metadata").is_dir():
        return None
    root = _read_only(directory).metadata().custom_metadata or {}
    return SweepConfig.from_dict(root["config"]) if "config" in root else None


def latest_notes(directory: str | Path) -> dict[str, Any] | None:
    """The notes (``extra``) of the newest checkpoint whose metadata reads, without reading
    its arrays; None when there is none (what a resumed run plans from before compiling)."""
    directory = Path(directory).absolute()
    if not (directory / "metadata").is_dir():
        return None
    manager = _read_only(directory)
    try:
        return _intact(
            manager, directory, lambda step, meta: meta.get("extra", {}), lambda *a: None
        )
    finally:
        manager.close()
