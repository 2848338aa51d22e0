"""TensorBoard logging of a sweep with tensorboardX, one run per trial.

:class:`TensorBoardLogger` is a :class:`~jaxtune.engine.SweepCallback`. It opens one
``SummaryWriter`` per trial under ``<log_dir>/<trial-name>`` and, on the host between compiled
chunks, writes for every step of the chunk ``train/loss``, ``train/learning_rate``,
``train/grad_norm`` and ``train/clip_rate`` (the fraction of clipped steps over a trailing
window), and every evaluated metric as ``<split>/<metric>`` (``valid/loss``, ``valid/accuracy``,
``test/accuracy``, ...) at each evaluation. Non-finite values are skipped (a diverged trial's
curves simply stop). At the end it writes an hparams session per trial (its hyperparameters
against its final metrics, the ``hparams/*`` scalars) and, for classification tasks, an image grid
of the selected trial's worst-classified validation examples (highest loss under the task's own
loss) with their true and predicted labels.

:func:`read_scalars` reads the scalars back from event files without TensorFlow or TensorBoard.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.engine import SweepCallback, SweepResult

__all__ = ["TensorBoardLogger", "read_events", "read_scalars", "worst_examples"]

_SPLITS = ("valid.", "test.")


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _hparam_value(v: Any) -> bool | int | float | str:
    """A value the hparams plugin accepts: tuples and lists as strings, None as ``"none"``."""
    if v is None:
        return "none"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, tuple | list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _clip_rate(clipped: np.ndarray, alive: np.ndarray, start: int, stop: int, window: int):
    """Fraction of clipped steps among the live steps in ``(s - window, s]`` for s in the chunk."""
    c = np.concatenate([[0], np.cumsum(clipped[:stop] & alive[:stop])])
    a = np.concatenate([[0], np.cumsum(alive[:stop])])
    s = np.arange(start, stop)
    lo = np.maximum(0, s + 1 - window)
    count = a[s + 1] - a[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (c[s + 1] - c[lo]) / np.maximum(count, 1), np.nan)


class TensorBoardLogger(SweepCallback):
    """Writes per-trial TensorBoard runs during a sweep (see the module docstring).

    Args:
      log_dir: the root folder of the runs; default ``<out_dir>/tb`` of the sweep.
      clip_window: the number of trailing steps over which ``train/clip_rate`` is computed.
      num_examples: how many worst-classified validation examples the image grid shows
        (0: none).
      flush_secs: how often the writers flush in the background.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        clip_window: int = 10,
        num_examples: int = 16,
        flush_secs: int = 30,
    ) -> None:
        if clip_window < 1:
            raise ValueError(f"clip_window = {clip_window} is invalid: expected an integer >= 1")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.clip_window = int(clip_window)
        self.num_examples = int(num_examples)
        self.flush_secs = flush_secs
        self.writers: list[Any] = []
        self.names: list[str] = []
        self.run_dirs: list[Path] = []
        self._train_from: list[int] = []  # per run: first train step not yet logged
        self._eval_from: list[int] = []  # per run: first eval step not yet logged

    # -- callback hooks --------------------------------------------------------------------

    def on_start(self, info: dict[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        root = self.log_dir
        if root is None:
            if info.get("out_dir") is None:
                raise ValueError(
                    "TensorBoardLogger needs log_dir or a sweep run with out_dir to know where "
                    "to write"
                )
            root = Path(info["out_dir"]) / "tb"
        self.log_dir = root
        self.close()
        start = int(info.get("start_step", 0))
        self.names = list(info["names"])
        self.run_dirs = [root / name for name in self.names]
        self.writers = []
        self._train_from = []
        self._eval_from = []
        for d in self.run_dirs:
            # On resume, continue from the first step the earlier sessions did not log (an
            # interrupt can land after a checkpoint but before the logging of its chunk), and
            # purge what they logged past it, so TensorBoard shows every step exactly once.
            first = 0 if start == 0 else min(start, _last_logged_step(d) + 1)
            self._train_from.append(first)
            self._eval_from.append(max(first, 1))
            self.writers.append(
                SummaryWriter(
                    logdir=str(d),
                    purge_step=first if first > 0 else None,
                    flush_secs=self.flush_secs,
                    # Unique per session, so a quick resume never reuses an event file's name.
                    filename_suffix=f".{os.getpid()}-{start}",
                )
            )

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        loss = history["train.loss"]
        alive = np.isfinite(loss)
        for i, writer in enumerate(self.writers):
            fw = writer.file_writer
            first = min(self._train_from[i], start)
            rate = _clip_rate(history["clipped"][i], alive[i], first, stop, self.clip_window)
            for s in range(first, stop):
                values = []
                if alive[i, s]:
                    for tag, v in (
                        ("train/loss", loss[i, s]),
                        ("train/learning_rate", history["learning_rate"][i, s]),
                        ("train/grad_norm", history["grad_norm"][i, s]),
                        ("train/clip_rate", rate[s - first]),
                    ):
                        if np.isfinite(v):
                            values.append(Summary.Value(tag=tag, simple_value=float(v)))
                elif np.isfinite(history["learning_rate"][i, s]):
                    lr = float(history["learning_rate"][i, s])
                    values.append(Summary.Value(tag="train/learning_rate", simple_value=lr))
                if values:
                    # One event per step with all train scalars: 4x fewer records to write.
                    fw.add_summary(Summary(value=values), global_step=s)
            for j, e in enumerate(history["eval_step"]):
                if self._eval_from[i] <= int(e) <= stop:
                    values = [
                        Summary.Value(tag=key.replace(".", "/"), simple_value=float(v[i, j]))
                        for key, v in history.items()
                        if key.startswith(_SPLITS) and np.isfinite(v[i, j])
                    ]
                    if values:
                        fw.add_summary(Summary(value=values), global_step=int(e))
            self._train_from[i] = stop
            self._eval_from[i] = stop + 1

    def on_end(self, result: SweepResult) -> None:
        try:
            if self.writers:
                self._write_hparams(result)
                if self.num_examples > 0:
                    self._write_worst_examples(result)
        finally:
            self.close()

    def close(self) -> None:
        """Flush and close every writer (idempotent)."""
        for w in self.writers:
            w.flush()
            w.close()
        self.writers = []

    # -- end-of-sweep summaries ------------------------------------------------------------

    def _write_hparams(self, result: SweepResult) -> None:
        from tensorboardX.summary import hparams

        step = int(result.timing.get("steps_done", result.config.base["train.steps"]))
        for trial, writer in zip(result.trials, self.writers, strict=True):
            hp = {k: _hparam_value(v) for k, v in trial.hparams.items()} or {"trial": trial.name}
            metrics = {f"hparams/{k.replace('.', '_')}": v for k, v in trial.final.items()}
            metrics.update(
                {
                    f"hparams/best_{result.selection.metric.replace('.', '_')}": trial.best,
                    "hparams/diverged": float(trial.diverged),
                    "hparams/diverged_step": (
                        float(trial.diverged_step) if trial.diverged_step is not None else math.nan
                    ),
                }
            )
            # The session lives in the trial's own run, so the HPARAMS tab links to its curves.
            exp, ssi, sei = hparams(hp, metrics)
            fw = writer.file_writer
            for summary in (exp, ssi, sei):
                fw.add_summary(summary)
            for tag, v in metrics.items():
                if _finite(v):
                    writer.add_scalar(tag, float(v), step)

    def _write_worst_examples(self, result: SweepResult) -> None:
        try:
            best = result.best()
        except ValueError:
            return  # every trial diverged: there is no best trial to show
        if not result.units:
            return  # a result read back from disk carries no trained states
        ex = worst_examples(result, best.id, self.num_examples)
        if ex is None:
            return  # not a classification task with array inputs
        image = render_examples(ex, title=f"{best.name}: worst-classified validation examples")
        step = int(result.timing.get("steps_done", result.config.base["train.steps"]))
        self.writers[best.id].add_image("valid/worst_examples", image, step, dataformats="HWC")


# ----------------------------------------------------------------------------------------------
# Worst-classified examples.


def worst_examples(
    result: SweepResult, trial_id: int, k: int = 16, *, split: str = "valid"
) -> dict[str, np.ndarray] | None:
    """The ``k`` examples of a split with the highest loss for one trial, by the task's loss.

    Returns:
      ``{"index", "x", "y_true", "y_pred", "loss"}``, worst first; None when the task is not a
      classification of array inputs (integer targets of shape [N]).
    """
    task, hp = result.trial_task(trial_id)
    x, y = getattr(task.data, split)
    if (
        not hasattr(x, "shape")
        or np.ndim(y) != 1
        or not np.issubdtype(np.asarray(y).dtype, np.integer)
    ):
        return None
    state = result.trial_state(trial_id)
    outputs, _ = task.apply(state.params, state.model_state, np.asarray(x), train=False)
    loss = np.asarray(task.loss(outputs, np.asarray(y), hp), np.float64)
    loss = np.where(np.isfinite(loss), loss, np.inf)
    order = np.argsort(-loss, kind="stable")[:k]
    return {
        "index": order,
        "x": np.asarray(x)[order],
        "y_true": np.asarray(y)[order],
        "y_pred": np.argmax(np.asarray(outputs)[order], axis=-1),
        "loss": loss[order],
    }


def _as_image(x: np.ndarray) -> np.ndarray:
    """One input as a 2-D grey or 3-D RGB image scaled to [0, 1]."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        side = math.isqrt(x.size)
        x = x.reshape(side, side) if side * side == x.size else x.reshape(1, -1)
    elif x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else (x if x.shape[-1] == 3 else x.mean(-1))
    elif x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    lo, hi = np.nanmin(x), np.nanmax(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def render_examples(ex: Mapping[str, np.ndarray], *, title: str = "") -> np.ndarray:
    """An RGB ``uint8`` image (H, W, 3) of a grid of examples titled ``true / pred``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(ex["y_true"])
    cols = max(1, min(n, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.7 * cols, 1.8 * rows + 0.4), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for j in range(n):
        ax = axes[j]
        ax.imshow(_as_image(ex["x"][j]), cmap="gray", interpolation="nearest", aspect="auto")
        wrong = int(ex["y_true"][j]) != int(ex["y_pred"][j])
        ax.set_title(
            f"true {int(ex['y_true'][j])} / pred {int(ex['y_pred'][j])}",
            fontsize=9,
            color="tab:red" if wrong else "black",
        )
    if title:
        fig.suptitle(title, fontsize=9)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ----------------------------------------------------------------------------------------------
# Reading event files back (no TensorFlow needed).


def read_events(path: str | Path) -> list[Any]:
    """Every ``Event`` proto of one event file or of all event files under a folder."""
    from tensorboardX.proto.event_pb2 import Event

    p = Path(path)
    files = sorted(p.rglob("events.out.tfevents.*")) if p.is_dir() else [p]
    events = []
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            start = pos + 12  # uint64 length, uint32 masked crc of the length
            if start + length + 4 > len(data):
                break  # a record cut short by a crash
            events.append(Event.FromString(data[start : start + length]))
            pos = start + length + 4  # the record, then a uint32 masked crc of it
    return events


def _last_logged_step(run_dir: Path) -> int:
    """The last ``train/*`` step still visible in a run's event files (-1 if none).

    Files are read in order and a purge (``SessionLog.START`` at step p) drops steps >= p.
    """
    if not run_dir.is_dir():
        return -1
    steps: set[int] = set()
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        for ev in read_events(f):
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                steps = {s for s in steps if s < ev.step}
            elif ev.HasField("summary") and any(
                v.tag.startswith("train/") for v in ev.summary.value
            ):
                steps.add(int(ev.step))
    return max(steps, default=-1)


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` of the scalars in the event files at ``path``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in read_events(path):
        if not ev.HasField("summary"):
            continue
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out
