"""Progress display and the ranked results table of a sweep.

:class:`ProgressBar` is a :class:`~jaxtune.sweep.SweepCallback` that drives a ``tqdm`` bar over
``steps x trials`` trial-steps (elapsed time, ETA and rate come from tqdm) with the current step,
the best test accuracy so far and the number of diverged trials as its postfix.

:func:`format_table` renders a :class:`~jaxtune.sweep.SweepResult` (live or read back with
``SweepResult.load``) as a plain-text table ranked by final test accuracy, diverged trials last,
followed by a summary line.
"""

from __future__ import annotations

import math
import sys
from typing import IO, Any

import numpy as np

from jaxtune.sweep import SweepCallback, SweepResult, TrialResult

__all__ = ["ProgressBar", "format_table", "rank_trials"]


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
        self.best_accuracy = math.nan
        self.num_diverged = 0

    def on_start(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.steps = int(info["steps"])
        self.num_trials = int(info["num_trials"])
        start = int(info.get("start_step", 0))
        self.close()
        self.bar = tqdm(
            total=self.steps * self.num_trials,
            initial=start * self.num_trials,
            desc=f"sweep ({self.num_trials} trials)",
            unit="trial-step",
            file=self.file if self.file is not None else sys.stderr,
            disable=self.disable,
            dynamic_ncols=True,
            **self.tqdm_kwargs,
        )
        self.bar.set_postfix_str(f"step {start}/{self.steps}", refresh=False)

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        acc = np.asarray(history["test_accuracy"], float)
        finite = acc[np.isfinite(acc)]
        if finite.size:
            self.best_accuracy = float(finite.max())
        loss = np.asarray(history["train_loss"])[:, :stop]
        # A diverged trial's loss is NaN from its divergence step on.
        self.num_diverged = int(np.sum(np.isnan(loss[:, -1]))) if loss.size else 0
        if self.bar is None:
            return
        parts = [f"step {stop}/{self.steps}"]
        if math.isfinite(self.best_accuracy):
            parts.append(f"best acc {self.best_accuracy:.4f}")
        if self.num_diverged:
            parts.append(f"diverged {self.num_diverged}")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update((stop - start) * self.num_trials)

    def on_end(self, result: SweepResult) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------------
# The ranked table.


def _accuracy(t: TrialResult) -> float:
    v = t.final.get("test_accuracy", math.nan)
    return v if v is not None and math.isfinite(v) else math.nan


def rank_trials(result: SweepResult) -> list[TrialResult]:
    """Trials sorted by final test accuracy (best first); NaN accuracy, then diverged, last."""

    def key(t: TrialResult) -> tuple:
        acc = _accuracy(t)
        return (t.diverged, math.isnan(acc), -acc if not math.isnan(acc) else 0.0, t.id)

    return sorted(result.trials, key=key)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, tuple | list):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def _hparam_keys(result: SweepResult) -> list[str]:
    return list(dict.fromkeys(k for t in result.trials for k in t.hparams))


def summary_line(result: SweepResult) -> str:
    """``N trials, K diverged; best: NAME (test accuracy A, test loss L)``."""
    n = len(result.trials)
    diverged = sum(t.diverged for t in result.trials)
    try:
        best = result.best("test_accuracy")
        best_txt = (
            f"best: {best.name} (test accuracy {best.final['test_accuracy']:.4f}, "
            f"test loss {_fmt(best.final.get('test_loss'))})"
        )
    except ValueError:
        best_txt = "no trial finished with a finite test accuracy"
    return f"{n} trial{'s' if n != 1 else ''}, {diverged} diverged; {best_txt}"


def format_table(result: SweepResult, *, top: int | None = None) -> str:
    """A ranked plain-text table of the trials and a summary line.

    Columns: rank, name, one column per hyperparameter, final train loss, test loss, test
    accuracy and the step at which the trial diverged (``-`` if it did not).

    Args:
      result: a sweep result.
      top: show only the best ``top`` trials (the summary still counts all).
    """
    keys = _hparam_keys(result)
    header = ["rank", "name", *[k.split(".")[-1] for k in keys]]
    header += ["train_loss", "test_loss", "test_acc", "diverged_at"]
    ranked = rank_trials(result)
    shown = ranked if top is None else ranked[: max(top, 0)]
    rows = []
    for rank, t in enumerate(shown, 1):
        row = [str(rank), t.name, *[_fmt(t.hparams.get(k)) for k in keys]]
        row += [
            _fmt(t.final.get("train_loss")),
            _fmt(t.final.get("test_loss")),
            _fmt(t.final.get("test_accuracy")),
            _fmt(t.diverged_step) if t.diverged else "-",
        ]
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
