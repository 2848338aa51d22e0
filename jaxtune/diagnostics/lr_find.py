"""Learning-rate finders (checklist item 1): the classic range test and a vectorized sweep.

Both train the trial's task through the public step with the learning rate given in
``hp["optimizer.learning_rate"]``. For the configured optimizer chain the schedule is set to
``constant`` first; a user optimizer factory must read ``hp["optimizer.learning_rate"]`` for the
finders to mean anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import data as data_lib
from jaxtune.config import SweepConfig
from jaxtune.diagnostics.subject import (
    Check,
    Subject,
    figure,
    make_subject,
    require_int,
    require_lrs,
    savefig,
)
from jaxtune.engine import SweepResult, run_sweep
from jaxtune.engine.step import trial_keys
from jaxtune.errors import ConfigError
from jaxtune.formatting import fmt

__all__ = ["LRFindResult", "lr_range_test", "lr_sweep_test", "plot_lr_find"]


@dataclasses.dataclass
class LRFindResult(Check):
    """Outcome of :func:`lr_range_test` or :func:`lr_sweep_test`.

    Attributes:
      mode: ``"classic"`` (one run, growing LR) or ``"vectorized"`` (K runs at once).
      lrs: learning rates (per step for classic, per trial for vectorized).
      losses: raw loss per step (classic) or final train loss per trial (vectorized; inf when
        the trial diverged).
      smoothed: the bias-corrected exponential moving average (classic) or ``losses``.
      suggestions: named suggestions (classic: ``steepest``, ``min/10``; vectorized: ``best``,
        ``largest_within``); ``suggestion`` is the main one.
      stop_step: classic: the step where the run stopped (divergence) or ``len(lrs)``.
      result: the :class:`jaxtune.SweepResult` of the vectorized test.
    """

    mode: str = "classic"
    lrs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    losses: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    smoothed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    suggestions: dict[str, float] = dataclasses.field(default_factory=dict)
    suggestion: float | None = None
    stop_step: int | None = None
    result: SweepResult | None = dataclasses.field(default=None, repr=False)

    def lines(self) -> list[str]:
        out = [f"  suggestion {k:<15} lr = {v:.4g}" for k, v in self.suggestions.items()]
        if self.mode == "vectorized":
            for lr, loss in zip(self.lrs, self.losses, strict=True):
                out.append(f"  lr={lr:<10.4g} final train loss {fmt(float(loss))}")
        return out


def _smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    out = np.empty_like(losses, dtype=np.float64)
    avg = 0.0
    for t, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(v)
        out[t] = avg / (1 - beta ** (t + 1))
    return out


def lr_range_test(
    config: Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.9,
    diverge_factor: float = 4.0,
    subject: Subject | None = None,
) -> LRFindResult:
    """The classic LR range test: one short run whose learning rate grows exponentially.

    At step ``t`` the learning rate is ``min_lr * (max_lr / min_lr) ** (t / (steps - 1))``; the
    run (the trial's task, optimizer and batches) is one ``lax.scan`` over the public step that
    freezes once the smoothed loss exceeds ``diverge_factor`` times its minimum or turns
    non-finite. Suggestions: ``steepest``, where the smoothed loss falls fastest against
    ``log(lr)`` (before its minimum), and ``min/10``, the learning rate at the minimum smoothed
    loss divided by 10 (the main ``suggestion``).
    """
    if not (np.isfinite(min_lr) and np.isfinite(max_lr) and 0 < min_lr < max_lr):
        raise ConfigError(
            f"min_lr = {min_lr!r}, max_lr = {max_lr!r} are invalid: expected 0 < min_lr < max_lr"
        )
    steps = require_int("steps", steps, minimum=5)
    if subject is None:
        overrides = {"schedule.name": "constant"} if optimizer is None else None
        subject = make_subject(config, task=task, optimizer=optimizer, overrides=overrides)
    fns, hp = subject.fns, subject.hp
    train = subject.task.data.train
    n = data_lib.num_examples(train)
    bs = min(int(subject.flat["train.batch_size"]), n)
    data_key = trial_keys(subject.key)[1]
    ratio = max_lr / min_lr

    @jax.jit
    def run(state, train):
        def body(c, step):
            s, avg, best, stopped = c
            h = {**hp, "optimizer.learning_rate": min_lr * ratio ** (step / (steps - 1))}
            idx = data_lib.batch_indices(data_key, step, bs, n)
            batch = jax.tree.map(lambda a: a[idx], train)
            new, m = fns.train_step(s, h, batch, step)
            loss = m["loss"]
            new_avg = beta * avg + (1 - beta) * loss
            smooth = new_avg / (1 - beta ** (step + 1).astype(jnp.float32))
            stop = stopped | ~jnp.isfinite(smooth) | (smooth > diverge_factor * best)
            keep = jax.tree.map(lambda a, b: jnp.where(stop, b, a), new, s)
            c = (
                keep,
                jnp.where(stop, avg, new_avg),
                jnp.where(stop, best, jnp.minimum(best, smooth)),
                stop,
            )
            return c, (jnp.where(stopped, jnp.nan, loss), stop)

        c0 = (state, jnp.float32(0.0), jnp.float32(jnp.inf), jnp.asarray(False))
        return jax.lax.scan(body, c0, jnp.arange(steps, dtype=jnp.int32))[1]

    state = fns.init(subject.key, {**hp, "optimizer.learning_rate": jnp.float32(min_lr)})
    losses, stopped = jax.device_get(run(state, jax.tree.map(jnp.asarray, train)))
    losses = np.asarray(losses, np.float64)
    lrs = min_lr * ratio ** (np.arange(steps) / (steps - 1))
    hit = np.flatnonzero(np.asarray(stopped))
    stop = int(hit[0]) if hit.size else steps
    smoothed = np.full(steps, np.nan)
    smoothed[:stop] = _smooth(losses[:stop], beta)
    suggestions = _suggestions(smoothed, lrs, stop)
    suggestion = suggestions.get("min/10")
    reason = _reason(smoothed, lrs, stop, suggestion)
    out = LRFindResult(suggestion is not None, reason, mode="classic", lrs=lrs, losses=losses)
    out.name, out.smoothed, out.suggestions = "lr find (classic)", smoothed, suggestions
    out.suggestion, out.stop_step = suggestion, stop
    return out


def _reason(smoothed: np.ndarray, lrs: np.ndarray, stop: int, suggestion: float | None) -> str:
    steps = len(lrs)
    if suggestion is None:
        return f"the run diverged after {stop} steps, at lr {lrs[stop]:.3g}: lower min_lr"
    best = int(np.nanargmin(smoothed))
    return (
        f"loss fell to {np.nanmin(smoothed):.3g} at lr {lrs[best]:.3g}; "
        f"{'diverged' if stop < steps else 'ended'} at lr {lrs[min(stop, steps - 1)]:.3g}; "
        f"suggested lr {suggestion:.3g}"
    )


def _suggestions(smoothed: np.ndarray, lrs: np.ndarray, stop: int) -> dict[str, float]:
    """``min/10`` (a tenth of the learning rate at the smoothed loss's minimum) and
    ``steepest`` (where it falls fastest, past the first tenth), from the steps before
    ``stop``; none with fewer than 5 steps."""
    suggestions: dict[str, float] = {}
    if stop >= 5:
        s = smoothed[:stop]
        m = int(np.argmin(s))
        suggestions["min/10"] = float(lrs[m] / 10)
        skip = max(1, stop // 10)
        if m > skip + 1:
            grad = np.gradient(s[: m + 1], np.log(lrs[: m + 1]))
            suggestions["steepest"] = float(lrs[skip + int(np.argmin(grad[skip:]))])
    return suggestions


def lr_sweep_test(
    config: Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    lrs: Sequence[float] | None = None,
    steps: int = 100,
    within: float = 0.1,
) -> LRFindResult:
    """The vectorized LR finder: K learning rates trained for ``steps`` steps in one program.

    Runs :func:`jaxtune.run_sweep` with a grid over ``optimizer.learning_rate`` (the trial's other
    settings, one seed; the configured chain with a constant schedule). Each trial's final loss
    is the mean train loss of its last ``max(1, steps // 5)`` steps (inf if it diverged).
    Suggestions: ``best``, the learning rate of the lowest final loss (``suggestion``), and
    ``largest_within``, the largest learning rate within ``within`` (relative) of the best.
    """
    steps = require_int("steps", steps)
    lrs = np.logspace(-4, 1, 13) if lrs is None else np.asarray(sorted(require_lrs("lrs", lrs)))
    cfg = SweepConfig.from_dict(config if config is not None else {}).searching(
        {
            "method": "grid",
            "seeds": 1,
            "grid": {"optimizer.learning_rate": [float(x) for x in lrs]},
        },
        {
            "train.steps": int(steps),
            "train.eval_every": int(steps),
            "checkpoint.every": 0,
            **({"schedule.name": "constant"} if optimizer is None else {}),
        },
    )
    result = run_sweep(cfg, task=task, optimizer=optimizer)
    w = max(1, steps // 5)
    tail = result.history["train.loss"][:, -w:]
    final = np.where(
        np.all(np.isfinite(tail), axis=1), np.mean(np.where(np.isfinite(tail), tail, 0), 1), np.inf
    )
    final = np.where([t.diverged for t in result.trials], np.inf, final)
    suggestions: dict[str, float] = {}
    if np.isfinite(final).any():
        b = int(np.argmin(final))
        suggestions["best"] = float(lrs[b])
        ok = np.flatnonzero(final <= final[b] * (1 + within))
        suggestions["largest_within"] = float(lrs[ok.max()])
    suggestion = suggestions.get("best")
    if suggestion is not None:
        reason = (
            f"lowest final train loss {final.min():.3g} at lr {suggestion:.3g}; "
            f"{int(np.sum(~np.isfinite(final)))} of {len(lrs)} learning rates diverged"
        )
    else:
        reason = "every learning rate diverged: lower the range"
    out = LRFindResult(suggestion is not None, reason, mode="vectorized", lrs=lrs, losses=final)
    out.name, out.smoothed, out.suggestions = "lr find (vectorized)", final, suggestions
    out.suggestion, out.result = suggestion, result
    return out


def plot_lr_find(
    *results: LRFindResult, out_dir: str | Path | None = None, name: str = "lr_find.png"
) -> Path | None:
    """Loss vs learning rate (log x) for each finder result, with its suggestions marked."""
    fig, axes = figure()
    ax = axes[0, 0]
    colors = {"steepest": "tab:red", "min/10": "tab:green", "best": "tab:purple"}
    for r in results:
        if r.mode == "classic":
            stop = r.stop_step or len(r.lrs)
            ax.plot(r.lrs[:stop], r.losses[:stop], alpha=0.3, color="tab:blue")
            ax.plot(r.lrs[:stop], r.smoothed[:stop], color="tab:blue", label="range test")
        else:
            fin = np.isfinite(r.losses)
            ax.plot(r.lrs[fin], r.losses[fin], "o-", color="tab:orange", label="vectorized sweep")
            top = np.nanmax(r.losses[fin], initial=1.0)
            ax.plot(
                r.lrs[~fin], np.full((~fin).sum(), top), "x", color="tab:orange", label="diverged"
            )
        for key, lr in r.suggestions.items():
            ax.axvline(
                lr, ls="--", color=colors.get(key, "gray"), label=f"{r.mode} {key}: {lr:.3g}"
            )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("train loss")
    ax.set_title("learning rate finder")
    ax.legend(fontsize=7)
    return savefig(fig, None if out_dir is None else Path(out_dir) / name)
