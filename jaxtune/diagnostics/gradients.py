"""Gradient health (checklist item 5): norms, clip rate, divergence and the layer that exploded.

Works on any sweep result: the engine records every trial's gradient norm (before clipping) and
clip flag per step, and a result run in this process carries each trial's task and state, so the
diverging step can be rerun with the task's own loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import data as data_lib
from jaxtune.diagnostics.subject import Check, figure, savefig
from jaxtune.engine import SweepResult
from jaxtune.engine.step import trial_keys
from jaxtune.errors import ConfigError
from jaxtune.formatting import fmt
from jaxtune.tasks import Task

__all__ = [
    "GradientHealthResult",
    "LayerGradNorms",
    "explain_divergence",
    "gradient_health",
    "per_layer_grad_norms",
    "plot_grad_norms",
]


@dataclasses.dataclass
class LayerGradNorms(Check):
    """Gradient norm of each top-level parameter entry (layer) on one batch."""

    norms: dict[str, float] = dataclasses.field(default_factory=dict)
    dominant: str = ""
    loss: float = math.nan

    def lines(self) -> list[str]:
        return [
            f"  {name:<16} {fmt(v)}{'  <- largest' if name == self.dominant else ''}"
            for name, v in self.norms.items()
        ]


def per_layer_grad_norms(
    task: Task,
    hp: Mapping[str, Any],
    params: Any,
    model_state: Any,
    batch: tuple[Any, Any],
    *,
    key: jax.Array | None = None,
) -> LayerGradNorms:
    """The norm of the gradient of the task's mean loss for each top-level params entry.

    Returns:
      A :class:`LayerGradNorms`; ``dominant`` is the entry with the largest (or a non-finite)
      norm. Fails when any norm is non-finite.
    """
    x, y = batch

    def loss_fn(p):
        outputs, _ = task.apply(p, model_state, x, train=True, key=key, mask=None)
        return jnp.mean(task.loss(outputs, y, hp))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    entries = grads.items() if isinstance(grads, Mapping) else enumerate(jax.tree.leaves(grads))
    norms = {str(k): float(optax.tree.norm(v)) for k, v in entries}

    def rank(kv):
        return (not math.isfinite(kv[1]), kv[1] if math.isfinite(kv[1]) else 0.0)

    dominant = max(norms.items(), key=rank)[0]
    finite = all(math.isfinite(v) for v in norms.values())
    total = float(optax.tree.norm(grads))
    if finite:
        share = norms[dominant] ** 2 / total**2 if total > 0 else math.nan
        reason = f"largest gradient in {dominant} ({norms[dominant]:.3g}, {share:.0%} of the total)"
    else:
        reason = f"non-finite gradient in {dominant}"
    out = LayerGradNorms(finite, reason, norms=norms, dominant=dominant, loss=float(loss))
    out.name = "per-layer gradient norms"
    return out


def explain_divergence(result: SweepResult, trial_id: int) -> LayerGradNorms:
    """Which layer exploded: rerun the diverging step of a trial from its kept state.

    A diverged trial keeps its last finite state, the state just before ``diverged_step``; that
    step's batch is rebuilt by the engine's key rule and :func:`per_layer_grad_norms` names the
    layer whose gradient dominates.
    """
    trial = result.trials[trial_id]
    if trial.diverged_step is None:
        raise ValueError(f"trial {trial_id} did not diverge")
    task, hp = result.trial_task(trial_id)
    state = result.trial_state(trial_id)
    step = int(trial.diverged_step)
    n = data_lib.num_examples(task.data.train)
    _, data_key, dropout_key, _ = trial_keys(state.key)
    idx = np.asarray(data_lib.batch_indices(data_key, step, int(hp["train.batch_size"]), n))
    batch = jax.tree.map(lambda a: np.asarray(a)[idx], task.data.train)
    key = jax.random.fold_in(dropout_key, step)
    return per_layer_grad_norms(task, hp, state.params, state.model_state, batch, key=key)


@dataclasses.dataclass
class GradientHealthResult(Check):
    """Per-trial gradient statistics of a sweep (see :func:`gradient_health`)."""

    names: list[str] = dataclasses.field(default_factory=list)
    p50: list[float] = dataclasses.field(default_factory=list)
    p90: list[float] = dataclasses.field(default_factory=list)
    p99: list[float] = dataclasses.field(default_factory=list)
    clip_fraction: list[float] = dataclasses.field(default_factory=list)
    first_nonfinite: list[int | None] = dataclasses.field(default_factory=list)
    recommendations: list[str] = dataclasses.field(default_factory=list)
    exploded_layer: dict[int, LayerGradNorms] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"  {'trial':<28} {'p50':>9} {'p90':>9} {'p99':>9} {'clipped':>8} {'non-finite':>10}"
        ]
        for i, name in enumerate(self.names):
            nf = "-" if self.first_nonfinite[i] is None else str(self.first_nonfinite[i])
            out.append(
                f"  {name:<28} {fmt(self.p50[i]):>9} {fmt(self.p90[i]):>9} "
                f"{fmt(self.p99[i]):>9} {self.clip_fraction[i]:>8.1%} {nf:>10}"
            )
            out.append(f"    -> {self.recommendations[i]}")
            if i in self.exploded_layer:
                out.append(f"    -> which layer exploded: {self.exploded_layer[i].reason}")
        return out


def _advice(first, frac, p50, p90, p99, clip_norm) -> str:
    if first is not None:
        rec = (
            f"diverged at step {first}: lower the learning rate or clip the gradient norm at "
            f"~{p90:.3g} (the 90th percentile before divergence)"
        )
    elif frac > 0.5:
        rec = (
            f"{frac:.0%} of the updates are clipped (clip_norm={clip_norm}): the clip acts as a "
            "smaller learning rate; lower the learning rate instead"
        )
    elif clip_norm is None:
        rec = f"healthy; if you add clipping, use clip_norm ~ {p90:.3g} (90th percentile)"
    else:
        rec = f"healthy; clip_norm={clip_norm} vs 90th percentile {p90:.3g}"
    if p50 > 0 and p99 / p50 > 10:
        rec += f"; spiky gradients (p99/p50 = {p99 / p50:.1f})"
    return rec


def gradient_health(
    result: SweepResult, *, trials: Sequence[int] | None = None, explain: bool = True
) -> GradientHealthResult:
    """Gradient-norm percentiles, clip rate and first non-finite step of each trial.

    Advice (Deep Learning Tuning Playbook): clip the global norm near the 90th percentile of the
    unclipped norms; if more than half of the updates are clipped, lower the learning rate
    instead. For a diverged trial of a result run in this process, the diverging step is rerun
    (:func:`explain_divergence`) to name the layer that exploded. Fails when a trial diverged or
    clipped most of its updates.

    Raises:
      ConfigError: the sweep ran with ``train.grad_norm = false`` (no norms were recorded).
    """
    if not result.config.base["train.grad_norm"]:
        raise ConfigError(
            "gradient health reads the per-step gradient norms, and this sweep ran with "
            "train.grad_norm = false: run it with train.grad_norm = true"
        )
    ids = list(range(len(result.trials))) if trials is None else list(trials)
    h = result.history
    out = GradientHealthResult(True, "")
    out.name = "gradient health"
    bad = []
    for i in ids:
        t = result.trials[i]
        gn = np.asarray(h["grad_norm"][i], np.float64)
        loss = np.asarray(h["train.loss"][i], np.float64)
        nonfinite = np.flatnonzero(~np.isfinite(gn) | ~np.isfinite(loss))
        first = (
            t.diverged_step
            if t.diverged_step is not None
            else (int(nonfinite[0]) if nonfinite.size else None)
        )
        upto = len(gn) if first is None else first
        finite = gn[:upto][np.isfinite(gn[:upto])]
        p50, p90, p99 = (
            (float(np.percentile(finite, q)) for q in (50, 90, 99))
            if finite.size
            else (math.nan,) * 3
        )
        clipped = np.asarray(h["clipped"][i][:upto], bool)
        frac = float(clipped.mean()) if clipped.size else 0.0
        clip_norm = t.hparams.get("optimizer.clip_norm", result.config.base["optimizer.clip_norm"])
        rec = _advice(first, frac, p50, p90, p99, clip_norm)
        if first is not None or frac > 0.5:
            bad.append(t.name)
        if first is not None and explain and result.units:
            out.exploded_layer[i] = explain_divergence(result, i)
        out.names.append(t.name)
        out.p50.append(p50)
        out.p90.append(p90)
        out.p99.append(p99)
        out.clip_fraction.append(frac)
        out.first_nonfinite.append(first)
        out.recommendations.append(rec)
    out.passed = not bad
    out.reason = (
        f"{len(ids)} trial(s) with finite gradients and at most half the updates clipped"
        if not bad
        else f"{len(bad)} of {len(ids)} trial(s) diverged or clip most updates: {', '.join(bad)}"
    )
    return out


def plot_grad_norms(result: SweepResult, path: str | Path | None = None) -> Path | None:
    """Gradient norm per step of every trial (log y), with divergence steps marked."""
    fig, axes = figure()
    ax = axes[0, 0]
    for i, t in enumerate(result.trials):
        (line,) = ax.plot(result.history["grad_norm"][i], lw=1, label=t.name)
        if t.diverged_step is not None:
            ax.axvline(t.diverged_step, color=line.get_color(), ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm (before clipping)")
    ax.set_title("gradient norms")
    ax.legend(fontsize=7)
    return savefig(fig, path)
