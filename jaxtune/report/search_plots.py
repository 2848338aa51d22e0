"""PNG plots of the adaptive strategies (``result.search``), beside the plots of every sweep.

* :func:`plot_rungs` (halving, Hyperband): every trial's selection metric against steps; a
  stopped trial's line ends at the rung that stopped it (marked ``o``), the rungs are vertical
  lines, and the finalists are drawn thick.
* :func:`plot_pbt_schedule` (PBT): the winning trial's hyperparameters against steps, rebuilt
  from the lineage, above every trial's selection metric with the copies marked.
* :func:`plot_optuna` (Optuna): each trial's told value against its number, coloured by round,
  with the best so far.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxtune.engine import SweepResult
from jaxtune.report.figures import figure, palette, save

__all__ = ["plot_optuna", "plot_pbt_schedule", "plot_rungs", "write_search_plots"]


def _metric(result: SweepResult) -> tuple[np.ndarray, np.ndarray, str]:
    metric = result.selection.metric
    h = result.history
    steps = np.asarray(h["eval_step"], float)
    return steps, np.asarray(h[metric], float), metric


def _scale(ax, result: SweepResult, values: np.ndarray) -> None:
    metric = result.selection.metric
    if metric.endswith("accuracy"):
        ax.set_ylim(-0.02, 1.02)
    elif result.selection.mode == "min" and np.any(np.isfinite(values) & (values > 0)):
        ax.set_yscale("log")
        finite = values[np.isfinite(values) & (values > 0)]
        lo, first = float(finite.min()), values[:, 0][np.isfinite(values[:, 0])]
        hi = min(float(finite.max()), 10 * float(first.max()) if first.size else np.inf)
        if hi > lo:
            ax.set_ylim(lo * 0.9, hi * 1.1)


def plot_rungs(result: SweepResult, path: str | Path) -> Path:
    """Successive halving's rungs: the metric of every trial until it stopped."""
    steps, values, metric = _metric(result)
    search = result.search
    fig = figure(8, 5)
    ax = fig.subplots()
    colors = palette(len(result.trials))
    for t in result.trials:
        end = t.stopped_step if t.stopped_step is not None else steps.max(initial=0)
        keep = (steps <= end) & np.isfinite(values[t.id])
        finalist = t.stopped_step is None and not t.diverged
        ax.plot(
            steps[keep],
            values[t.id, keep],
            "-",
            color=colors[t.id],
            lw=2.2 if finalist else 0.8,
            alpha=1.0 if finalist else 0.6,
            label=t.name if finalist else None,
        )
        if t.stopped_step is not None and keep.any():
            j = np.flatnonzero(keep)[-1]
            ax.plot([steps[j]], [values[t.id, j]], "o", color=colors[t.id], markersize=3)
    for step in sorted({r["step"] for r in search.get("rungs", [])}):
        ax.axvline(step, color="0.6", lw=0.8, ls="--")
    _scale(ax, result, values)
    spent, grid = result.timing.get("trial_steps"), result.timing.get("grid_trial_steps")
    share = f"; {spent} of {grid} trial-steps ({spent / grid:.0%})" if spent and grid else ""
    ax.set_title(f"{search.get('strategy', 'halving')}: {metric} per trial{share}")
    ax.set_xlabel("step (dashed: rungs; o: stopped)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, title="finalists")
    return save(fig, path)


def plot_pbt_schedule(result: SweepResult, path: str | Path) -> Path:
    """PBT: the winning hyperparameter schedule and the population's metric with its copies."""
    search = result.search
    schedule = search.get("winning_schedule", [])
    keys = list(search.get("explored", []))
    total = int(result.config.base["train.steps"])
    steps, values, metric = _metric(result)
    fig = figure(8, 3 + 2.2 * max(1, len(keys)))
    axes = fig.subplots(len(keys) + 1, 1, sharex=True, squeeze=False)[:, 0]
    starts = [s["from_step"] for s in schedule] + [total]
    for ax, key in zip(axes, keys, strict=False):
        xs, ys = [], []
        for seg, end in zip(schedule, starts[1:], strict=True):
            xs += [seg["from_step"], end]
            ys += [seg[key], seg[key]]
        ax.plot(xs, ys, "-", color="C0", lw=2)
        ax.set_ylabel(key.split(".")[-1])
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"PBT: hyperparameters of the winning trial ({search.get('winner')})")
    ax = axes[-1]
    colors = palette(len(result.trials))
    for t in result.trials:
        ax.plot(steps, values[t.id], "-", color=colors[t.id], lw=0.8, alpha=0.7)
    for event in search.get("lineage", []):
        j = np.flatnonzero(steps == event["step"])
        if j.size:
            ax.plot([event["step"]], [values[event["copied"], j[0]]], "v", color="k", ms=3)
    _scale(ax, result, values)
    ax.set_ylabel(metric)
    ax.set_xlabel("step (v: a trial copied this one)")
    ax.grid(True, alpha=0.3)
    return save(fig, path)


def plot_optuna(result: SweepResult, path: str | Path) -> Path:
    """Optuna: the value told for each trial (by round) and the best so far."""
    told = result.search.get("told", [])
    batch = int(result.search.get("batch_size", 1))
    mode = result.selection.mode
    fig = figure(8, 4.5)
    ax = fig.subplots()
    xs = [r["trial"] for r in told if r["state"] == "complete"]
    ys = [r["value"] for r in told if r["state"] == "complete"]
    rounds = [x // batch for x in xs]
    colors = palette(max(rounds, default=0) + 1)
    ax.scatter(xs, ys, c=[colors[r] for r in rounds], s=18, zorder=3)
    pruned = [r["trial"] for r in told if r["state"] == "pruned"]
    if ys:
        best = np.maximum.accumulate(ys) if mode == "max" else np.minimum.accumulate(ys)
        ax.step(xs, best, where="post", color="k", lw=1.2, label="best so far")
        for x in pruned:
            ax.axvline(x, color="C3", lw=0.6, alpha=0.5)
        ax.legend(fontsize=8)
    for r in range(1, max(rounds, default=0) + 1):
        ax.axvline(r * batch - 0.5, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("trial (dashed: rounds; red: pruned / diverged)")
    ax.set_ylabel(result.selection.metric)
    ax.set_title(f"optuna ({result.search.get('sampler')}): {len(told)} trials")
    ax.grid(True, alpha=0.3)
    return save(fig, path)


_PLOTS = {
    "halving": ("rungs.png", plot_rungs),
    "hyperband": ("rungs.png", plot_rungs),
    "pbt": ("pbt_schedule.png", plot_pbt_schedule),
    "optuna": ("optuna.png", plot_optuna),
}


def write_search_plots(result: SweepResult, directory: str | Path) -> list[Path]:
    """The strategy's plot in ``directory`` (none for a plain sweep or without a history)."""
    entry = _PLOTS.get(result.search.get("strategy", ""))
    if entry is None or "eval_step" not in result.history:
        return []
    name, plot = entry
    return [plot(result, Path(directory) / name)]
