"""PNG plots of a sweep's results (matplotlib, Agg canvas, no global state touched).

* :func:`plot_lr_vs_metric`: the final selection metric (a validation metric) and the validation
  loss against the learning rate (log x), one line per setting of the other varying keys (e.g.
  batch size), diverged trials marked ``x``.
* :func:`plot_curves`: every trial's training loss (log y, gaps where it is not finite) and the
  selection metric over the evaluation steps; a legend names up to 10 trials, more are coloured
  by the main varying hyperparameter with a colour bar.
* :func:`write_plots`: both, into ``<out_dir>/plots/``, with the plot of an adaptive strategy.

Figures come from :mod:`jaxtune.report.figures` (an Agg canvas, no ``pyplot``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxtune.engine import SweepResult, TrialResult
from jaxtune.formatting import fmt
from jaxtune.report.figures import figure, palette, save
from jaxtune.report.search_plots import write_search_plots
from jaxtune.tasks import METRIC_MODES

__all__ = ["curves_figure", "plot_curves", "plot_lr_vs_metric", "write_plots"]

_LR = "optimizer.learning_rate"
_SEED = "train.seed"
_FEW = 10  # trials a legend names one by one


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _short(key: str) -> str:
    return key.split(".")[-1]


def varying_keys(trials: Sequence[TrialResult]) -> list[str]:
    """Hyperparameter keys whose values differ between trials, in first-seen order."""
    keys = list(dict.fromkeys(k for t in trials for k in t.hparams))
    return [k for k in keys if len({_freeze(t.hparams.get(k)) for t in trials}) > 1]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _x_axis(result: SweepResult) -> str | None:
    varying = varying_keys(result.trials)
    if _LR in varying:
        return _LR
    numeric = [
        k for k in varying if k != _SEED and all(_is_number(t.hparams[k]) for t in result.trials)
    ]
    if numeric:
        return numeric[0]
    rest = [k for k in varying if k != _SEED]
    return rest[0] if rest else None


def _panels(result: SweepResult) -> list[tuple[str, str]]:
    """The metrics plotted against the swept key: the selection metric, then ``valid.loss``
    (or another validation metric when the selection is the loss), each with its mode."""
    sel = result.selection
    keys = list(dict.fromkeys(k for t in result.trials for k in t.final))
    others = [k for k in keys if k.startswith("valid.") and k != sel.metric]
    second = "valid.loss" if sel.metric != "valid.loss" else (others[0] if others else None)
    panels = [(sel.metric, sel.mode)]
    if second is not None:
        panels.append((second, METRIC_MODES.get(second.split(".", 1)[1], "min")))
    return panels


def plot_lr_vs_metric(result: SweepResult, path: str | Path) -> Path:
    """Final validation metrics against the learning rate (or the main varying key).

    The left panel is the selection metric (``select.metric``), the right one the validation
    loss (or a second validation metric). One line per setting of the other varying keys (seeds
    are averaged, each seed a faint dot); diverged trials are drawn as ``x`` and left out of the
    lines. Metrics where lower is better are capped at 10x their median and drawn on a log axis.
    """
    trials = result.trials
    x_key = _x_axis(result)
    x_of, x_label, categorical, ticks = _x_positions(result, x_key)
    xs_all = np.array(list(x_of.values()), float)
    log_x = (
        not categorical
        and x_key is not None
        and bool(np.all(xs_all > 0))
        and (x_key == _LR or xs_all.max() / xs_all.min() >= 10)
    )
    group_keys = [k for k in varying_keys(trials) if k not in (x_key, _SEED)]
    groups: dict[tuple, list[TrialResult]] = {}
    for t in trials:
        groups.setdefault(tuple(_freeze(t.hparams.get(k)) for k in group_keys), []).append(t)
    colors = palette(len(groups))
    panels = _panels(result)
    fig = figure(6 * len(panels), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    caps = _caps(trials, panels)
    capped = dict.fromkeys(caps, False)
    for color, (gkey, members) in zip(colors, groups.items(), strict=True):
        label = ", ".join(f"{_short(k)}={fmt(v)}" for k, v in zip(group_keys, gkey, strict=True))
        for ax, (metric, mode) in zip(axes, panels, strict=True):
            cap = caps[metric]
            ok = [
                t
                for t in members
                if not t.diverged and math.isfinite(t.final.get(metric, math.nan))
            ]
            by_x: dict[float, list[float]] = {}
            for t in ok:
                by_x.setdefault(x_of[t.id], []).append(t.final[metric])
            xs = sorted(by_x)
            ys = np.array([np.mean(by_x[x]) for x in xs], float)
            capped[metric] |= bool(np.any(ys > cap))
            ax.plot(xs, np.minimum(ys, cap), "o-", color=color, label=label or None, markersize=4)
            if any(len(v) > 1 for v in by_x.values()):
                py = np.array([t.final[metric] for t in ok], float)
                ax.plot([x_of[t.id] for t in ok], np.minimum(py, cap), ".", color=color, alpha=0.35)
            bad = [t for t in members if t.diverged]
            if bad:
                by = np.array([t.final.get(metric, math.nan) for t in bad], float)
                if mode == "min":
                    fill = cap if math.isfinite(cap) else 1.0
                    by = np.where(np.isfinite(by), np.minimum(by, cap), fill)
                else:
                    by = np.where(np.isfinite(by), by, np.nanmin([*by, 0.0]))
                ax.plot([x_of[t.id] for t in bad], by, "x", color=color, markersize=9, mew=2)
    for ax, (metric, mode) in zip(axes, panels, strict=True):
        note = f" (capped at {caps[metric]:.3g})" if capped[metric] else ""
        ax.set_ylabel(f"final {metric}{note}")
        if metric.endswith("accuracy"):
            ax.set_ylim(-0.02, 1.02)
        pos = [t.final.get(metric, math.nan) for t in trials]
        if mode == "min" and any(math.isfinite(v) and v > 0 for v in pos):
            ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.grid(True, which="major", alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        if categorical and ticks:
            ax.set_xticks(range(len(ticks)), ticks)
        chosen = " (selection metric)" if metric == result.selection.metric else ""
        ax.set_title(f"final {metric} vs {_short(x_label)}{chosen}")
    handles, labels = axes[0].get_legend_handles_labels()
    if any(t.diverged for t in trials):
        handles.append(Line2D([], [], ls="", marker="x", color="gray", mew=2, markersize=8))
        labels.append("diverged")
    if handles:
        axes[0].legend(handles, labels, fontsize=8, loc="best")
    return save(fig, path)


def _caps(trials: Sequence[TrialResult], panels: list) -> dict[str, float]:
    """Per panel metric, the value lines are capped at: 10x the median of the finite positive
    finals of the trials that did not diverge, where lower is better (else no cap)."""
    caps = {}
    for metric, mode in panels:
        vals = np.array([t.final.get(metric, math.nan) for t in trials if not t.diverged], float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        caps[metric] = float(10 * np.median(vals)) if mode == "min" and vals.size else math.inf
    return caps


def _x_positions(result: SweepResult, x_key: str | None) -> tuple[dict, str, bool, Any]:
    """Each trial's x position, the axis label, whether the axis is categorical, and its tick
    labels (categorical axes only)."""
    trials = result.trials
    if x_key is None:
        return {t.id: float(t.id) for t in trials}, "trial", False, None
    raw = [t.hparams.get(x_key, result.config.base.get(x_key)) for t in trials]
    if all(_is_number(v) for v in raw):
        return {t.id: float(v) for t, v in zip(trials, raw, strict=True)}, x_key, False, None
    labels = list(dict.fromkeys(fmt(v) for v in raw))
    x_of = {t.id: float(labels.index(fmt(v))) for t, v in zip(trials, raw, strict=True)}
    return x_of, x_key, True, labels


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps of the finite values; NaN where ``x`` is NaN."""
    if window <= 1:
        return x
    ok = np.isfinite(x)
    csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(np.where(ok, x, 0.0), 1)], 1)
    ccnt = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(ok, 1)], 1)
    hi = np.arange(1, x.shape[1] + 1)
    lo = np.maximum(0, hi - window)
    count = ccnt[:, hi] - ccnt[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = (csum[:, hi] - csum[:, lo]) / count
    return np.where(ok, avg, np.nan)


def _trial_colors(result: SweepResult) -> tuple[list[Any], ScalarMappable | None, list]:
    """A colour per trial, keyed by the main varying hyperparameter once there are more trials
    than a legend can name: ``(colors, mappable, handles)``. A numeric key gets a colour bar
    (``mappable``, log-scaled like the learning rate), a categorical one a legend of its values
    (``handles``); a few trials get distinct colours and a legend of their names."""
    trials = result.trials
    key = _x_axis(result)
    if len(trials) <= _FEW or key is None:
        return palette(len(trials)), None, []
    raw = [t.hparams.get(key, result.config.base.get(key)) for t in trials]
    if all(_is_number(v) for v in raw):
        v = np.asarray(raw, float)
        lo, hi = float(v.min()), float(v.max())
        log = lo > 0 and (key == _LR or hi / lo >= 10)
        norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
        mappable = ScalarMappable(norm, colormaps["viridis"])
        return [mappable.to_rgba(x) for x in v], mappable, []
    labels = list(dict.fromkeys(fmt(x) for x in raw))
    by_label = dict(zip(labels, palette(len(labels)), strict=True))
    handles = [Line2D([], [], color=c, label=f"{_short(key)}={lab}") for lab, c in by_label.items()]
    return [by_label[fmt(x)] for x in raw], None, handles


def curves_figure(result: SweepResult) -> Figure:
    """The figure of :func:`plot_curves`."""
    h = result.history
    if "train.loss" not in h:
        raise ValueError("the result has no history (history.npz is missing); cannot plot curves")
    loss = np.asarray(h["train.loss"], float)
    n, steps = loss.shape
    colors, mappable, handles = _trial_colors(result)
    fig = figure(12, 4.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    step_axis = np.arange(steps)
    window = max(1, steps // 50)
    smooth = _moving_average(loss, window)
    for i, t in enumerate(result.trials):
        # NaN (diverged, or not yet run) leaves a gap in the line.
        ax_loss.plot(step_axis, smooth[i], color=colors[i], lw=0.9, alpha=0.9, label=t.name)
        if t.diverged and t.diverged_step is not None:
            finite = np.flatnonzero(np.isfinite(loss[i, : t.diverged_step + 1]))
            if finite.size:
                j = int(finite[-1])
                ax_loss.plot([j], [loss[i, j]], "x", color=colors[i], markersize=8, mew=2)
    finite = smooth[np.isfinite(smooth) & (smooth > 0)]
    if finite.size:
        ax_loss.set_yscale("log")
        first = loss[:, 0][np.isfinite(loss[:, 0]) & (loss[:, 0] > 0)]
        lo, hi = float(finite.min()), float(finite.max())
        cap = 10 * float(first.max()) if first.size else hi
        top = min(hi, cap) * 1.3
        if top > lo * 0.8:
            ax_loss.set_ylim(lo * 0.8, top)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    avg = f", moving average of {window} steps" if window > 1 else ""
    ax_loss.set_title(f"train loss ({n} trials{avg}; x: diverged)")
    ax_loss.grid(True, alpha=0.3)

    eval_step = np.asarray(h.get("eval_step", np.zeros(0)), float)
    metric = result.selection.metric
    acc = np.asarray(h.get(metric, np.zeros((n, 0))), float)
    for i, t in enumerate(result.trials):
        if eval_step.size:
            ax_acc.plot(eval_step, acc[i], "o-", color=colors[i], lw=1, markersize=3, label=t.name)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel(metric)
    if metric.endswith("accuracy"):
        ax_acc.set_ylim(-0.02, 1.02)
    elif result.selection.mode == "min" and np.any(np.isfinite(acc) & (acc > 0)):
        ax_acc.set_yscale("log")
    ax_acc.set_title(f"{metric} (selection metric)")
    ax_acc.grid(True, alpha=0.3)
    if mappable is not None:
        key = _x_axis(result)
        fig.colorbar(mappable, ax=[ax_loss, ax_acc], label=f"{key} (line colour)", pad=0.01)
    elif handles:
        ax_acc.legend(handles=handles, fontsize=7, loc="best")
    elif 0 < n <= _FEW:
        (ax_acc if eval_step.size else ax_loss).legend(fontsize=7, loc="best")
    return fig


def plot_curves(result: SweepResult, path: str | Path) -> Path:
    """Training loss of every trial (log y) and the selection metric over the evaluations.

    Up to 10 trials get distinct colours and a legend of their names; more are coloured by the
    main varying hyperparameter (the learning rate when it varies) with a colour bar, or a
    legend of its values when it is not numeric.
    """
    return save(curves_figure(result), path)


def write_plots(result: SweepResult, out_dir: str | Path) -> list[Path]:
    """Write ``plots/lr_vs_metric.png`` and ``plots/curves.png`` under ``out_dir``, and the
    plot of an adaptive strategy (:mod:`jaxtune.report.search_plots`).

    ``curves.png`` is skipped when the result carries no history.
    """
    d = Path(out_dir) / "plots"
    paths = [plot_lr_vs_metric(result, d / "lr_vs_metric.png")]
    if "train.loss" in result.history:
        paths.append(plot_curves(result, d / "curves.png"))
    return paths + write_search_plots(result, d)
