"""What ``jaxtune tune`` records and reports: ``tune.json`` and the markdown summary.

The summary is a function of the records alone (no timings), so a resumed run writes the same
summary as an uninterrupted one. Test metrics appear once, in the last section.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtune import config as config_lib
from jaxtune.config import SweepConfig
from jaxtune.engine import SweepResult
from jaxtune.errors import ConfigError
from jaxtune.files import atomic_write
from jaxtune.formatting import fmt
from jaxtune.search.tune_config import FOLDERS, STAGES, TuneSettings

__all__ = ["finite", "format_summary", "load_state", "rows_of", "save_state", "trial_steps"]

_TITLES = {
    "lr_range": "learning-rate range test",
    "lr_batch": "learning rate x batch size",
    "refine": "refine around the best",
    "seeds": "the chosen setting over seeds",
}
_TOP = 10


def _fingerprint(cfg: SweepConfig, settings: TuneSettings) -> str:
    blob = json.dumps([config_lib.config_hash(cfg), settings.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_state(path: Path, cfg: SweepConfig, settings: TuneSettings, resume: bool) -> dict:
    """The state of a tune run: a fresh one, or ``tune.json`` when resuming the same run."""
    fresh = {"hash": _fingerprint(cfg, settings), "config": cfg.to_dict()}
    fresh.update(tune=settings.to_dict(), stages={})
    if not path.is_file():
        return fresh
    if not resume:
        raise ConfigError(
            f"--out {path.parent} already holds a tune run; pass --resume to continue it or "
            "choose another --out"
        )
    stored = json.loads(path.read_text())
    if stored.get("hash") != fresh["hash"]:
        config_lib.check_same(
            SweepConfig.from_dict(stored["config"]),
            cfg,
            f"the tune run in {path.parent}",
            extra=(stored.get("tune", {}), fresh["tune"]),
        )
    return stored


def save_state(path: Path, state: dict) -> None:
    """Write ``tune.json`` atomically."""
    atomic_write(path, json.dumps(state, indent=2, default=str))


def trial_steps(result: SweepResult) -> int:
    """Trial-steps the sweep trained (each trial to where it stopped), resumed sessions included."""
    steps = result.config.base["train.steps"]
    return sum(steps if t.stopped_step is None else t.stopped_step for t in result.trials)


def finite(values: Sequence[float]) -> list[float | None]:
    """JSON-friendly numbers: None for NaN and infinities."""
    return [float(v) if math.isfinite(v) else None for v in values]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def rows_of(result: SweepResult) -> list[dict[str, Any]]:
    """The ranked trials of a stage's sweep: name, hyperparameters, validation metric, fate."""
    metric = result.selection.metric
    return [
        {
            "name": t.name,
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in t.hparams.items()},
            "metric": _num(t.final.get(metric)),
            "stopped_step": t.stopped_step,
            "diverged": t.diverged,
        }
        for t in result.ranked()
    ]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def _trial_table(record: Mapping[str, Any]) -> list[str]:
    rows = record["rows"]
    keys = list(dict.fromkeys(k for r in rows for k in r["hparams"]))
    header = ["rank", *keys, record["metric"], "fate"]
    body = []
    for rank, r in enumerate(rows[:_TOP], 1):
        fate = "diverged" if r["diverged"] else "trained to the end"
        if r["stopped_step"] is not None and not r["diverged"]:
            fate = f"stopped at step {r['stopped_step']}"
        body.append([rank, *[r["hparams"].get(k) for k in keys], r["metric"], fate])
    more = [f"({len(rows) - _TOP} more in results.csv)"] if len(rows) > _TOP else []
    return _table(header, body) + more


def _detail(stage: str, r: Mapping[str, Any]) -> list[str]:
    if stage == "lr_range":
        lo, hi = r["band"]
        body = [
            [lr, loss, "yes" if lo <= lr <= hi else ""]
            for lr, loss in zip(r["lrs"], r["losses"], strict=True)
        ]
        return _table(["learning rate", "final train loss (- diverged)", "in band"], body)
    if stage == "seeds":
        body = [[s, v] for s, v in zip(r["seeds"], r["valid"], strict=True)]
        mean, low, high = (fmt(x) for x in r["interval"])
        return [
            *_table(["seed", r["metric"]], body),
            "",
            f"{r['metric']}: mean {mean}, {r['confidence']:.0%} Student-t interval "
            f"[{low}, {high}] over {len(r['seeds'])} seeds ({r['diverged']} diverged).",
        ]
    if "rows" not in r:
        return []
    return _trial_table(r)


def format_summary(state: Mapping[str, Any]) -> str:
    """The markdown summary of a tune run (``state``: the contents of ``tune.json``)."""
    stages = {s: state["stages"][s] for s in STAGES if s in state["stages"]}
    metric = next((r["metric"] for r in stages.values() if "metric" in r), None)
    mode = next((r["mode"] for r in stages.values() if "mode" in r), None)
    lines = ["# jaxtune tune", ""]
    if metric:
        lines += [
            f"Every choice is made on **{metric}** ({mode}), the validation split; stage 1 "
            "picks a band from train losses. The test split is reported once, at the end.",
            "",
        ]
    body = []
    for stage, r in stages.items():
        steps = r["trial_steps"]
        if "grid_trial_steps" in r:
            steps = f"{steps} of {r['grid_trial_steps']}"
        body.append([f"{STAGES.index(stage) + 1} {stage}", r["searched"], r["trials"], steps,
                     r["chosen"], r["why"]])  # fmt: skip
    lines += _table(["stage", "searched", "trials", "trial-steps", "chose", "why"], body)
    chosen: dict[str, Any] = {}
    for r in stages.values():
        chosen.update(r["set"])
    if chosen:
        toml = config_lib.to_toml(config_lib.nested(chosen)).strip()
        lines += ["", "## The chosen setting", "", "```toml", toml, "```"]
        if "seeds" in stages:
            lines.append(
                f"\nThe full configuration: `{FOLDERS['seeds']}/config.toml` (`jaxtune sweep` "
                "runs it)."
            )
    for stage, r in stages.items():
        n = STAGES.index(stage) + 1
        lines += ["", f"## Stage {n}: {_TITLES[stage]} (`{r['folder']}/`)", "", r["searched"]]
        lines += ["", f"Chose {r['chosen']}: {r['why']}.", ""]
        lines += _detail(stage, r)
    seeds = stages.get("seeds")
    if seeds:
        lines += ["", "## Test split (reported once, never used to choose)", ""]
        if "test" in seeds:
            mean, low, high = (fmt(x) for x in seeds["test_interval"])
            lines.append(
                f"{seeds['test_metric']} of the chosen setting over {len(seeds['seeds'])} seeds: "
                f"mean {mean}, {seeds['confidence']:.0%} interval [{low}, {high}] (per seed: "
                f"{', '.join(fmt(x) for x in seeds['test'])})."
            )
        else:
            lines.append("The task has no test split.")
    return "\n".join(lines) + "\n"
