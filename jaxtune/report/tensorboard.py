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
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.engine import SweepCallback, SweepResult
from jaxtune.report.event_files import last_logged_step
from jaxtune.report.worst_examples import render_examples, worst_examples

__all__ = ["TensorBoardLogger"]

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
      log_dir: the root folder of the runs; default ``<out_dir>/tb`` of each sweep (one
        logger may serve several sweeps in turn, each writing into its own folder).
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
        self.root = None if log_dir is None else Path(log_dir)
        self.log_dir = self.root  # the current sweep's root
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

        root = self.root
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
            # A sweep that starts again from step 0 over an earlier session's logs (no
            # checkpoint was reached) purges them all.
            logged = last_logged_step(d)
            first = 0 if start == 0 else min(start, logged + 1)
            self._train_from.append(first)
            self._eval_from.append(max(first, 1))
            self.writers.append(
                SummaryWriter(
                    logdir=str(d),
                    purge_step=first if first > 0 or logged >= 0 else None,
                    flush_secs=self.flush_secs,
                    # Unique per session, so a quick resume never reuses an event file's name.
                    filename_suffix=f".{os.getpid()}-{start}-{time.monotonic_ns()}",
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
                # Steps recorded but never logged: an interrupt raised by a callback records
                # the chunk already dispatched, and a resume with nothing left to train runs
                # no chunk at all.
                done = int(result.timing.get("steps_done", 0))
                if done and any(f < done for f in self._train_from):
                    self.on_chunk(done, done, result.history)
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
