"""Overfit one example, then one batch (checklist item 10), and the loss at initialization.

If a model cannot drive the loss on a single example (and then on a single batch) near zero, the
architecture, the loss or the optimizer is broken. Both stages and several learning rates train
at once: one jitted ``vmap`` over (stage, learning rate) of a ``while_loop`` around the public
step, stopping when every run reached the tolerance or diverged. The one-example stage is the
batch with every row but the first masked out, so both stages share one program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.diagnostics.subject import Check, Subject, make_subject, require_int, require_lrs
from jaxtune.formatting import fmt

__all__ = ["OverfitResult", "diagnose_curve", "overfit_check"]

STAGES = ("one example", "one batch")


@dataclasses.dataclass
class OverfitResult(Check):
    """Outcome of :func:`overfit_check`.

    Attributes:
      lrs: the learning rates tried.
      steps_to_tol: ``[stage][lr]`` step at which the loss was below the tolerance (None: never).
      final_loss, min_loss: ``[stage][lr]``.
      diagnosis: ``[stage][lr]`` one-line diagnosis (``"ok"`` when the run reached the tolerance).
      losses: ``[stage, lr, step]`` loss curves (NaN after a run stopped).
      tol: the loss to reach (absolute, or relative to the initial loss when ``relative``).
      init_loss: the loss of the batch at initialization.
      chance_loss: the loss of a uniform guess, ``log(number of classes)``, for classification
        tasks; None where no chance level is defined (``init_note`` says why).
      init_loss_ok: ``init_loss`` within a factor of 2 of ``chance_loss`` (None when undefined).
      passing_lrs: the learning rates that overfit both stages.
    """

    lrs: list[float] = dataclasses.field(default_factory=list)
    tol: float = 0.05
    relative: bool = False
    steps: int = 0
    steps_to_tol: list[list[int | None]] = dataclasses.field(default_factory=list)
    final_loss: list[list[float]] = dataclasses.field(default_factory=list)
    min_loss: list[list[float]] = dataclasses.field(default_factory=list)
    diagnosis: list[list[str]] = dataclasses.field(default_factory=list)
    losses: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((2, 0, 0)))
    init_loss: float = math.nan
    chance_loss: float | None = None
    init_loss_ok: bool | None = None
    init_note: str = ""
    passing_lrs: list[float] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        goal = f"{self.tol:g} x the initial loss" if self.relative else f"{self.tol:g}"
        for s, stage in enumerate(STAGES):
            for j, lr in enumerate(self.lrs):
                st = self.steps_to_tol[s][j] if self.steps_to_tol else None
                took = f"reached loss < {goal} at step {st}" if st is not None else ""
                out.append(
                    f"  {stage:<12} lr={lr:<8.4g} final loss {fmt(self.final_loss[s][j])}  "
                    f"{took or self.diagnosis[s][j]}"
                )
        if self.chance_loss is not None:
            flag = "ok" if self.init_loss_ok else "FAR OFF: check the output layer init and labels"
            out.append(
                f"  loss at init {self.init_loss:.4g} vs chance log(classes) = "
                f"{self.chance_loss:.4g} ({flag})"
            )
        else:
            out.append(
                f"  loss at init {fmt(self.init_loss)}; chance level skipped: {self.init_note}"
            )
        if len(self.lrs) > 1:
            ok = ", ".join(f"{x:.4g}" for x in self.passing_lrs) or "none"
            out.append(f"  learning rates that pass: {ok}")
        return out


def diagnose_curve(
    losses: np.ndarray, grad_norms: np.ndarray, lr: float, threshold: float
) -> tuple[int | None, str]:
    """The step the loss went below ``threshold`` (or None) and a one-line diagnosis.

    The diagnosis agrees with the curve: it calls the learning rate too large (or the run
    diverged) whenever the loss rose above its start or turned non-finite, and too small only
    when the loss neither rose nor fell.
    """
    losses = np.asarray(losses, np.float64)
    grad_norms = np.asarray(grad_norms, np.float64)
    finite = np.isfinite(losses)
    below = np.flatnonzero(finite & (losses < threshold))
    if below.size:
        return int(below[0]), "ok"
    n = len(losses)
    if n == 0:
        return None, "no step ran"
    l0 = float(losses[0])
    bad = np.flatnonzero(~finite | ~np.isfinite(grad_norms))
    if bad.size:
        k = int(bad[0])
        gmax = float(np.max(grad_norms[:k])) if k else math.nan
        return None, (
            f"diverged: the loss/gradient became non-finite at step {k} (from {l0:.4g}; largest "
            f"gradient norm before: {gmax:.3g}): learning rate {lr:.3g} too large or exploding "
            "gradients; lower the learning rate or clip the gradient norm"
        )
    peak, lmin, last = float(np.max(losses)), float(np.min(losses)), float(losses[-1])
    if peak > 1.1 * l0 or last > l0:
        return None, (
            f"the loss rose ({l0:.4g} -> peak {peak:.4g}, last {last:.4g}): learning rate "
            f"{lr:.3g} too large; lower it (or clip the gradient norm)"
        )
    g0 = float(grad_norms[0])
    if l0 - lmin < 0.1 * abs(l0):
        if g0 < 1e-4:
            return None, (
                f"loss flat at {lmin:.4g} with gradient norm {g0:.2g} at init: vanishing "
                "gradients or dead units (saturated sigmoid/tanh, dead ReLUs, too small init); "
                "use ReLU and a variance-scaling init"
            )
        return None, (
            f"loss flat ({l0:.4g} -> {lmin:.4g}, never above its start) with gradient norm "
            f"{g0:.3g}: learning rate {lr:.3g} too small (or dead units); raise it"
        )
    w = max(2, n // 10)
    if 2 * w > n:
        return None, f"loss {l0:.4g} -> {lmin:.4g} after only {n} steps: give it more steps"
    late, earlier = float(np.mean(losses[-w:])), float(np.mean(losses[-2 * w : -w]))
    if earlier - late > 0.05 * earlier:
        return None, (
            f"loss still falling ({l0:.4g} -> {late:.4g}) when the step budget ran out: give it "
            "more steps or a larger learning rate"
        )
    return None, (
        f"loss stuck high at {late:.4g} (from {l0:.4g}): the model cannot represent the labels "
        "(too small, a bottleneck, wrong output activation) or labels do not match the outputs"
    )


def _program(subject: Subject, steps: int, tol: float, relative: bool):
    fns, optimizer = subject.fns, subject.optimizer

    def run(lr, mask, state0, hp, batch):
        hp = {**hp, "optimizer.learning_rate": lr}
        state = state0._replace(opt_state=optimizer(hp).init(state0.params))

        def cond(c):
            return (c[0] < steps) & ~c[-1]

        def body(c):
            i, s, losses, norms, _ = c
            s, m = fns.train_step(s, hp, batch, i, mask)
            losses, norms = losses.at[i].set(m["loss"]), norms.at[i].set(m["grad_norm"])
            threshold = tol * losses[0] if relative else tol
            return i + 1, s, losses, norms, (m["loss"] < threshold) | s.diverged

        nan = jnp.full((steps,), jnp.nan, jnp.float32)
        out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, nan, nan, jnp.asarray(False)))
        return out[2], out[3], out[0]

    return jax.jit(jax.vmap(run, in_axes=(0, 0, None, None, None)))


def _label_problem(subject: Subject) -> str | None:
    y = subject.labels()
    if y is None:
        return None
    outputs = subject.num_outputs()
    if outputs is not None and y.size and (y.min() < 0 or y.max() >= outputs):
        return (
            f"training labels span [{int(y.min())}, {int(y.max())}] but the model has {outputs} "
            f"outputs (valid labels [0, {outputs})): label/output mismatch; set the number of "
            "outputs to the number of classes or remap the labels"
        )
    return None


def overfit_check(
    config: Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    steps: int = 300,
    tol: float | None = None,
    lrs: Sequence[float] | None = None,
    batch_size: int | None = None,
    subject: Subject | None = None,
) -> OverfitResult:
    """Overfit one example, then one batch, with the trial's task, optimizer and learning rate.

    Regularization is off where jaxtune controls it (dropout 0, no weight decay, no augmentation).

    Args:
      config: a configuration (its base trial), or None for the bundled default.
      task, optimizer: a user task / optimizer factory (as for :func:`jaxtune.run_sweep`).
      steps: step budget per stage.
      tol: the loss to reach. Default: 0.05 for tasks that report accuracy (cross-entropy near
        zero), else 5% of the initial loss (``relative``).
      lrs: learning rates to try at once (default the trial's).
      batch_size: size of "one batch" (default ``train.batch_size``).
      subject: an already bound :class:`~jaxtune.diagnostics.Subject` (overrides the above).

    Example:
      >>> r = overfit_check({"task": {"dataset": "synthetic", "widths": [32]}}, steps=100)
      >>> r.passed
      True
    """
    steps = require_int("steps", steps)
    if lrs is not None:
        lrs = require_lrs("lrs", lrs)
    if batch_size is not None:
        batch_size = require_int("batch_size", batch_size)
    if subject is None:
        off = {"task.dropout": 0.0, "optimizer.weight_decay": 0.0}
        subject = make_subject(config, task=task, optimizer=optimizer, overrides=off)
    subject = subject.with_task(subject.task._replace(augment=None))
    hp = subject.hp
    lrs = [float(hp["optimizer.learning_rate"])] if lrs is None else [float(x) for x in lrs]
    relative = tol is None and "accuracy" not in subject.metric_names
    tol = 0.05 if tol is None else float(tol)
    classes = subject.num_outputs() if subject.labels() is not None else None
    chance = math.log(classes) if classes and classes >= 2 else None
    note = "" if chance is not None else "no chance level: not a classification of integer labels"
    result = OverfitResult(False, "", lrs=lrs, tol=tol, relative=relative, steps=steps)
    result.name, result.chance_loss, result.init_note = "overfit check", chance, note
    problem = _label_problem(subject)
    if problem is not None:
        result.reason = problem
        result.diagnosis = [[problem] * len(lrs) for _ in STAGES]
        result.steps_to_tol = [[None] * len(lrs) for _ in STAGES]
        result.final_loss = result.min_loss = [[math.nan] * len(lrs) for _ in STAGES]
        return result
    bs = int(batch_size or subject.flat["train.batch_size"])
    batch = subject.batch(bs)
    rows = np.shape(jax.tree.leaves(batch)[0])[0]
    masks = np.repeat(np.stack([np.arange(rows) == 0, np.ones(rows, bool)]), len(lrs), axis=0)
    lr_arr = np.asarray([lr for _ in STAGES for lr in lrs], np.float32)
    state0 = jax.jit(subject.fns.init)(subject.key, hp)
    out = _program(subject, steps, tol, relative)(lr_arr, masks, state0, hp, batch)
    losses, norms, ran = (np.asarray(a) for a in jax.device_get(out))
    shape = (len(STAGES), len(lrs))
    losses, norms, ran = (
        losses.reshape(*shape, steps),
        norms.reshape(*shape, steps),
        ran.reshape(shape),
    )
    result.losses = losses
    _diagnose_stages(result, losses, norms, ran, lrs, tol, relative)
    result.init_loss = float(losses[1, 0, 0])
    if chance is not None:
        result.init_loss_ok = bool(0.5 * chance <= result.init_loss <= 2.0 * chance)
    _verdict(result, lrs, rows, chance, classes)
    return result


def _diagnose_stages(result, losses, norms, ran, lrs, tol, relative) -> None:
    """Each stage's and learning rate's steps to the tolerance, diagnosis, final and least
    loss, from the curves of the steps that ran."""
    for s in range(len(STAGES)):
        row = [
            diagnose_curve(
                losses[s, j, : ran[s, j]],
                norms[s, j, : ran[s, j]],
                lr,
                tol * (losses[s, j, 0] if relative else 1.0),
            )
            for j, lr in enumerate(lrs)
        ]
        result.steps_to_tol.append([r[0] for r in row])
        result.diagnosis.append([r[1] for r in row])
        done = [losses[s, j, : ran[s, j]] for j in range(len(lrs))]
        result.final_loss.append([float(d[-1]) if d.size else math.nan for d in done])
        result.min_loss.append(
            [float(np.nanmin(d)) if np.isfinite(d).any() else math.nan for d in done]
        )


def _verdict(result, lrs, rows, chance, classes) -> None:
    """The learning rates that overfit both stages, whether the check passed, and why."""
    result.passing_lrs = [
        lr
        for j, lr in enumerate(lrs)
        if all(result.steps_to_tol[s][j] is not None for s in range(2))
    ]
    result.passed = bool(result.passing_lrs)
    if result.passed:
        j = lrs.index(result.passing_lrs[0])
        result.reason = (
            f"lr={lrs[j]:.4g} overfits one example by step {result.steps_to_tol[0][j]} and one "
            f"batch of {rows} by step {result.steps_to_tol[1][j]}"
        )
    else:
        s = 0 if result.steps_to_tol[0][0] is None else 1
        result.reason = f"cannot overfit {STAGES[s]} (lr={lrs[0]:.4g}): {result.diagnosis[s][0]}"
    if result.init_loss_ok is False:
        result.reason += (
            f"; loss at init {result.init_loss:.3g} is far from chance log({classes}) = "
            f"{chance:.3g}"
        )
