"""The errors jaxtune raises for bad input: each names the field and what it allows."""

from __future__ import annotations

__all__ = ["CheckpointMismatchError", "ConfigError", "TaskError"]


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the key and allowed values."""


class TaskError(ConfigError):
    """A task (or its data) breaks the :class:`jaxtune.Task` contract; the message says where."""


class CheckpointMismatchError(ConfigError):
    """A checkpoint holds state of another structure than the caller expects.

    The checkpoint itself is intact and left in place: the run that asks for it builds a
    different model, optimizer or set of trials than the run that wrote it.
    """
