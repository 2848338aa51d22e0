"""Progress display and the ranked results table of a sweep.

:class:`ProgressBar` is a :class:`~jaxtune.engine.SweepCallback` that drives a ``tqdm`` bar over
the trial-steps the sweep plans to spend (``steps x trials``, less for an adaptive strategy
that stops trials early; elapsed time, ETA and rate come from tqdm) with the current step,
the best value of the selection metric so far and the number of diverged trials as its postfix.

:func:`format_table` renders a :class:`~jaxtune.engine.SweepResult` (live or read back with
``SweepResult.load``) as a plain-text table ranked by the selection metric (a validation
metric), diverged trials last, with the test metrics shown beside and a summary line.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from jaxtune.engine import SweepCallback, SweepResult
from jaxtune.formatting import fmt

__all__ = ["ProgressBar", "format_table", "summary_line"]


class ProgressBar(SweepCallback):
    """A tqdm progress bar over every trial-step of a sweep.

    Args:
      file: where the bar is written (default ``sys.stderr``).
      disable: passed to tqdm (``None`` hides the bar when ``file`` is not a terminal).
      **tqdm_kwargs: further tqdm options (``ncols``, ``mininterval``, ...).
    """

    def __init__(
        self, *, file: IO[str] | None = None, disable: bool | None = False, **tqdm_kwargs: Any
    ):
        self.file = file
        self.disable = disable
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Any = None
        self.steps = 0
        self.num_trials = 0
        self.active = 0  # trials of the population now training (adaptive strategies)
        self.selection: Any = None
        self.best = math.nan
        self.num_diverged = 0
        self.diverged_ids: set[int] = set()
        self.ids: list[int] | None = None  # the trials training now (None: all)

    def on_start(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.steps = int(info["steps"])
        self.num_trials = self.active = int(info["num_trials"])
        self.selection = info.get("selection")
        start = int(info.get("start_step", 0))
        self.diverged_ids, self.ids = set(), None
        self.close()
        self.bar = tqdm(
            total=int(info.get("trial_steps", self.steps * self.num_trials)),
            initial=int(info.get("trial_steps_done", start * self.num_trials)),
            desc=f"sweep ({self.num_trials} trials)",
            unit="trial-step",
            file=self.file if self.file is not None else sys.stderr,
            disable=self.disable,
            dynamic_ncols=True,
            **self.tqdm_kwargs,
        )
        self.bar.set_postfix_str(f"step {start}/{self.steps}", refresh=False)

    def on_population(self, ids: list[int], start: int, stop: int) -> None:
        self.active, self.ids = len(ids), list(ids)

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        sel = self.selection
        if sel is not None and sel.metric in history:
            values = np.asarray(history[sel.metric], float)
            finite = values[np.isfinite(values)]
            if finite.size:
                self.best = float(finite.max() if sel.mode == "max" else finite.min())
        # A diverged trial's loss is NaN from its divergence step on (a trial an adaptive
        # strategy stopped has NaN after its last step too: only the training ones count).
        if stop > 0:
            last = np.asarray(history["train.loss"])[:, stop - 1]
            rows = self.ids if self.ids is not None else range(len(last))
            self.diverged_ids.update(i for i in rows if np.isnan(last[i]))
        self.num_diverged = len(self.diverged_ids)
        if self.bar is None:
            return
        parts = [f"step {stop}/{self.steps}"]
        if sel is not None and math.isfinite(self.best):
            parts.append(f"best {sel.metric} {fmt(self.best)}")
        if self.num_diverged:
            parts.append(f"diverged {self.num_diverged}")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update((stop - start) * self.active)

    def on_end(self, result: SweepResult) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _metric_columns(result: SweepResult) -> list[str]:
    """``train.loss``, the selection metric, the other validation metrics, then test."""
    keys = list(dict.fromkeys(k for t in result.trials for k in t.final))
    sel = result.selection.metric
    valid = [k for k in keys if k.startswith("valid.") and k != sel]
    test = [k for k in keys if k.startswith("test.")]
    head = [k for k in ("train.loss",) if k in keys]
    return head + ([sel] if sel in keys else []) + valid + test


def execution_text(execution: Sequence[dict[str, Any]]) -> str:
    """How each compiled group ran: ``host/unroll (auto: measured: host/unroll 37.2, host/vmap
    30.1 trial-steps/s)``, one entry per group (groups that ran alike are said once).

    Example:
      >>> execution_text([{"form": "scan/vmap", "how": "auto: too short to measure"}])
      'scan/vmap (auto: too short to measure)'
    """
    parts = []
    for e in execution:
        rates = e.get("rates") or {}
        measured = ", ".join(f"{f} {fmt(r)}" for f, r in rates.items())
        text = f"{e['form']} ({e['how']}{': ' + measured + ' trial-steps/s' if measured else ''})"
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def timing_line(result: SweepResult) -> str:
    """``compile C s, run R s, X trial-steps/s; execution ...; precision P``."""
    t = result.timing
    line = (
        f"compile {t.get('compile_s', math.nan):.1f} s, run {t.get('run_s', math.nan):.1f} s, "
        f"{t.get('trial_steps_per_s', math.nan):.0f} trial-steps/s"
    )
    if t.get("execution"):
        line += f"; execution {execution_text(t['execution'])}"
    if t.get("precision"):
        line += f"; precision {t['precision']}"
    return line


def summary_line(result: SweepResult) -> str:
    """``N trials, K diverged; best by valid.X: NAME (valid.X V; test.X T, reported only)``."""
    n = len(result.trials)
    diverged = sum(t.diverged for t in result.trials)
    sel = result.selection.metric
    try:
        best = result.best()
    except ValueError:
        return f"{n} trial{'s' if n != 1 else ''}, {diverged} diverged; no trial has a finite {sel}"
    test = [f"{k} {fmt(v)}" for k, v in best.final.items() if k.startswith("test.")]
    shown = f"{sel} {fmt(best.final[sel])}"
    if test:
        shown += "; " + ", ".join(test) + " (reported, not used to choose)"
    line = (
        f"{n} trial{'s' if n != 1 else ''}, {diverged} diverged; best by {sel} "
        f"({result.selection.mode}): {best.name} ({shown})"
    )
    spent, grid = result.timing.get("trial_steps"), result.timing.get("grid_trial_steps")
    strategy = result.search.get("strategy")
    if strategy and spent and grid:
        line += f"; {strategy} spent {spent} of {grid} trial-steps ({spent / grid:.0%})"
    return line


def _column_names(keys: list[str]) -> list[str]:
    """Each key's last part, or the whole key where two would share it.

    Example:
      >>> _column_names(["optimizer.momentum", "hparams.momentum", "train.batch_size"])
      ['optimizer.momentum', 'hparams.momentum', 'batch_size']
    """
    short = [k.split(".")[-1] for k in keys]
    return [k if short.count(s) > 1 else s for k, s in zip(keys, short, strict=True)]


def format_table(result: SweepResult, *, top: int | None = None) -> str:
    """A ranked plain-text table of the trials and a summary line.

    Columns: rank, name, one column per hyperparameter, the final train loss, the selection
    metric, the other validation metrics, the test metrics, the step at which the trial
    diverged (``-`` if it did not) and, with ``select.target``, the first step that reached it.

    Args:
      result: a sweep result.
      top: show only the best ``top`` trials (the summary still counts all).
    """
    keys = list(dict.fromkeys(k for t in result.trials for k in t.hparams))
    metrics = _metric_columns(result)
    target = result.selection.target is not None
    header = ["rank", "name", *_column_names(keys), *metrics, "diverged_at"]
    stopped = any(t.stopped_step is not None for t in result.trials)
    if stopped:
        header.append("stopped_at")
    if target:
        header.append("target_at")
    ranked = result.ranked()
    shown = ranked if top is None else ranked[: max(top, 0)]
    rows = []
    for rank, t in enumerate(shown, 1):
        row = [str(rank), t.name, *[fmt(t.hparams.get(k)) for k in keys]]
        row += [fmt(t.final.get(k)) for k in metrics]
        row.append(fmt(t.diverged_step) if t.diverged else "-")
        if stopped:
            row.append(fmt(t.stopped_step))
        if target:
            row.append(fmt(t.target_step))
        rows.append(row)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    numeric = [False, False] + [True] * (len(header) - 2)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if len(shown) < len(ranked):
        out.append(f"... {len(ranked) - len(shown)} more")
    out.append(summary_line(result))
    return "\n".join(out)
