"""Output folders of the command line: a new folder's name, the checks on a given one, the
folders searched for factories (recorded in ``run.json`` for a resume), and what a resumable
command (``jaxtune tune``, ``jaxtune bench``) reads back from its folder."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from jaxtune.errors import ConfigError

__all__ = [
    "SearchPathRecorder",
    "check_output_dir",
    "default_out",
    "make_out_dir",
    "read_search_path",
    "resumable_run",
    "search_path",
    "write_search_path",
]

#: The file of a sweep's folder that records where its factories were imported from.
RUN_FILE = "run.json"


def search_path(args: argparse.Namespace) -> list[Path]:
    """Folders searched first for ``task.factory`` / ``optimizer.factory``: the config's own."""
    return [Path(args.config).resolve().parent] if args.config else []


def write_search_path(out: Path, search: list[Path]) -> None:
    """Record ``search`` in ``<out>/run.json``, so that ``jaxtune sweep --out DIR --resume``
    without CONFIG imports the factories from where the first run did."""
    from jaxtune.files import atomic_write

    text = json.dumps({"search_path": [str(p) for p in search]}, indent=2) + "\n"
    atomic_write(out / RUN_FILE, text)


def read_search_path(out: Path) -> list[Path] | None:
    """The search path recorded in ``<out>/run.json`` (None: nothing recorded)."""
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        return [Path(p) for p in json.loads(path.read_text())["search_path"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a jaxtune run file ({e})") from None


def default_out(prefix: str = "") -> Path:
    """A new folder name under ``runs/``: ``<prefix><date>-<time>``, numbered if taken."""
    out = Path("runs") / time.strftime(f"{prefix}%Y%m%d-%H%M%S")
    candidate, i = out, 1
    while candidate.exists():
        candidate, i = out.with_name(f"{out.name}-{i}"), i + 1
    return candidate


def resumable_run(
    args: argparse.Namespace, what: str, state_file: str, prefix: str = ""
) -> tuple[Path, list[Path], dict | None]:
    """The folder, factory search path and stored state of a resumable command (``jaxtune
    tune``, ``jaxtune bench``): ``--out`` (or a new folder), the config's folder searched
    first, and ``<out>/<state_file>`` read when ``--resume`` continues without CONFIG (its
    search path then comes from the state)."""
    if args.resume and args.out is None:
        raise ConfigError(f"--resume needs --out DIR: the folder of the {what} to continue")
    out = Path(args.out) if args.out is not None else default_out(prefix)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    search, stored = search_path(args), None
    state = out / state_file
    if args.resume and args.config is None and state.is_file():
        stored = json.loads(state.read_text())
        search = [Path(p) for p in stored.get("search_path", [])]
    return out, search, stored


def make_out_dir(out: Path) -> None:
    """Create ``out`` (and its parents); a folder that cannot be made is a ConfigError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out} cannot be used: {e.strerror or e}") from None


def check_output_dir(out: Path, *, resume: bool) -> None:
    """Refuse an output folder that is a file, cannot be written, or holds another sweep."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable")
    if out.is_dir() and not resume:
        from jaxtune.checkpoint import holds_checkpoints

        if holds_checkpoints(out / "checkpoints") or (out / "results.json").exists():
            raise ConfigError(
                f"--out {out} already holds a sweep; pass --resume to continue it or choose "
                "another --out"
            )


class SearchPathRecorder:
    """A sweep callback that records, when the sweep starts, where its factories were
    imported from (:func:`write_search_path`)."""

    def __init__(self, out: Path, search: list[Path]) -> None:
        self.out, self.search = out, search

    def on_start(self, info: dict[str, Any]) -> None:
        write_search_path(self.out, self.search)

    def on_chunk(self, start: int, stop: int, history: Any) -> None:
        pass

    def on_end(self, result: Any) -> None:
        pass
