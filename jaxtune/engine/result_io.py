"""A sweep's results on disk: ``results.json``, ``results.csv`` and ``history.npz``.

``results.json`` holds the configuration, the selection rule, every trial (non-finite numbers as
``null``), the timing and what an adaptive strategy recorded; ``results.csv`` the per-trial table;
``history.npz`` the histories (:mod:`jaxtune.engine.history`). Each file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.config import SweepConfig
from jaxtune.config.space import freeze
from jaxtune.engine.selection import Selection
from jaxtune.engine.summary import TrialResult, jsonable
from jaxtune.files import atomic_path, atomic_write

__all__ = ["read", "to_json", "write"]


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else x


def _trial_to_json(t: TrialResult) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "hparams": {k: jsonable(v) for k, v in t.hparams.items()},
        "final": {k: _none_if_nan(v) for k, v in t.final.items()},
        "diverged": t.diverged,
        "diverged_step": t.diverged_step,
        "best_step": t.best_step,
        "best": _none_if_nan(t.best),
        "target_step": t.target_step,
        "stopped_step": t.stopped_step,
        "stop_reason": t.stop_reason,
    }


def _trial_from_json(t: Mapping[str, Any]) -> TrialResult:
    return TrialResult(
        t["id"],
        t["name"],
        {k: freeze(v) for k, v in t["hparams"].items()},
        {k: _nan_if_none(v) for k, v in t["final"].items()},
        t["diverged"],
        t["diverged_step"],
        t.get("best_step"),
        _nan_if_none(t.get("best")),
        t.get("target_step"),
        t.get("stopped_step"),
        t.get("stop_reason"),
    )


def to_json(
    config: SweepConfig,
    selection: Selection,
    trials: Sequence[TrialResult],
    timing: Mapping[str, Any],
    search: Mapping[str, Any],
) -> dict[str, Any]:
    """The contents of ``results.json``."""
    return {
        "config": config.to_dict(),
        "select": dataclasses.asdict(selection),
        "trials": [_trial_to_json(t) for t in trials],
        "timing": timing,
        "search": search,
    }


def write(
    directory: str | Path,
    blob: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    history: Mapping[str, np.ndarray],
) -> Path:
    """Write ``results.json`` (``blob``, from :func:`to_json`), ``results.csv`` (``rows``) and
    ``history.npz`` into ``directory``; returns ``directory``."""
    d = Path(directory)
    atomic_write(d / "results.json", json.dumps(blob, indent=2, default=jsonable))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(d / "results.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with atomic_path(d / "history.npz") as tmp:
        np.savez_compressed(tmp, **history)
    return d


def read(directory: str | Path) -> dict[str, Any]:
    """What :func:`write` wrote, as the fields of a :class:`jaxtune.SweepResult`: ``config``,
    ``trials``, ``history``, ``timing``, ``selection`` and ``search``."""
    d = Path(directory)
    blob = json.loads((d / "results.json").read_text())
    history: dict[str, np.ndarray] = {}
    if (d / "history.npz").exists():
        with np.load(d / "history.npz") as z:
            history = {k: z[k] for k in z.files}
    return {
        "config": SweepConfig.from_dict(blob["config"]),
        "trials": [_trial_from_json(t) for t in blob["trials"]],
        "history": history,
        "timing": blob.get("timing", {}),
        "selection": Selection(**blob["select"]),
        "search": blob.get("search", {}),
    }
