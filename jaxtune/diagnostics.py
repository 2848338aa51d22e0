"""Tuning diagnostics: the practitioner's checklist as functions that pass or fail with a reason.

Each check returns a small result dataclass with ``passed``, ``reason``, the measured numbers and
``report() -> str``:

* :func:`overfit_check`: overfit one example, then one batch (checklist item 10), with a
  diagnosis when it cannot (flat loss, NaN, loss stuck high, labels outside the outputs) and the
  loss at initialization compared with ``log(num_classes)``. Several learning rates train at once
  (vmapped) in one ``while_loop`` program.
* :func:`lr_range_test` (one run, exponentially growing LR) and :func:`lr_sweep_test` (K learning
  rates trained at once by :func:`jaxtune.run_sweep`), with :func:`plot_lr_find`.
* :func:`gradient_health`: gradient-norm percentiles, clip rate and first non-finite step per
  trial of a sweep, with the Deep Learning Tuning Playbook's clipping advice;
  :func:`per_layer_grad_norms` names the layer whose gradient dominates (which layer exploded).
* :func:`init_report`: per-layer activation and gradient scale at initialization for several
  initializer presets (signal propagation, checklist item 4).
* :func:`normalization_masking`: the same config with and without normalization (item 13).
* :func:`data_checks`: non-finite inputs, unstandardized features, test standardized with its own
  statistics (leakage), labels outside the outputs, class imbalance (item 6).
* :func:`run_checks`: all of the above, as one :class:`CheckReport`.

:func:`add_subcommands` adds ``jaxtune check`` and ``jaxtune lr-find`` to the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import data as data_lib
from jaxtune import initializers as init_lib
from jaxtune import models as models_lib
from jaxtune import optimizers as opt_lib
from jaxtune import registry
from jaxtune.config import SweepConfig
from jaxtune.engine import SweepResult, run_sweep, trial_keys

__all__ = [
    "CHECKS",
    "CheckReport",
    "DataCheckResult",
    "GradientHealthResult",
    "InitReport",
    "LayerGradNorms",
    "LRFindResult",
    "NormalizationResult",
    "OverfitResult",
    "add_subcommands",
    "data_checks",
    "explain_divergence",
    "gradient_health",
    "init_report",
    "lr_range_test",
    "lr_sweep_test",
    "normalization_masking",
    "overfit_check",
    "per_layer_grad_norms",
    "plot_grad_norms",
    "plot_init_report",
    "plot_lr_find",
    "run_checks",
]

#: The sub-actions of ``jaxtune check``.
CHECKS = ("all", "overfit", "init", "data", "grads", "norm", "lr")

DEFAULT_PRESETS = ("he_normal", "glorot_normal", "lecun_normal", "normal(1.0)", "normal(0.01)")


# ----------------------------------------------------------------------------------------------
# Shared helpers.


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}"


def _setup(
    config: SweepConfig | Mapping[str, Any],
    dataset: data_lib.Splits | None = None,
    num_classes: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], data_lib.Splits, int, models_lib.Model]:
    """The flat base config, its dataset, class count and model (as the sweep builds them)."""
    cfg = SweepConfig.from_dict(config)
    flat = {**cfg.base, **(overrides or {})}
    ds = dataset if dataset is not None else registry.load_data(flat)
    k = data_lib.num_classes(ds) if num_classes is None else int(num_classes)
    return flat, ds, k, registry.build_model(flat, data_lib.input_shape(ds), k)


def _trial_keys(seed: int) -> jax.Array:
    return trial_keys(jax.random.PRNGKey(seed))


def _init_params(model: models_lib.Model, flat: Mapping[str, Any]) -> tuple[Any, Any]:
    params, model_state = model.init(_trial_keys(flat["train.seed"])[0])
    return init_lib.scale_kernels(params, flat["task.init_scale"]), model_state


def _masked_ce(logits: jax.Array, y: jax.Array, mask: jax.Array | None) -> jax.Array:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if mask is None:
        return jnp.mean(losses)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _label_problem(y: np.ndarray, num_outputs: int, where: str) -> str | None:
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= num_outputs):
        return (
            f"{where} labels span [{int(y.min())}, {int(y.max())}] but the model has "
            f"{num_outputs} outputs (valid labels [0, {num_outputs})): label/output mismatch; "
            "set num_outputs to the number of classes or remap the labels"
        )
    return None


def _savefig(fig: Any, out_dir: str | Path | None, name: str) -> Path | None:
    import matplotlib.pyplot as plt

    path = None
    if out_dir is not None:
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.2), squeeze=False)


# ----------------------------------------------------------------------------------------------
# 1. Overfit one example, then one batch.


@dataclasses.dataclass
class OverfitResult:
    """Outcome of :func:`overfit_check`.

    Attributes:
      passed: the configured learning rate (or, with ``lrs``, at least one) overfit both stages.
      reason: one line: steps taken or the diagnosis.
      lrs: the learning rates tried.
      stages: ``("one example", "one batch")``.
      steps_to_tol: ``[stage][lr]`` steps until the loss fell below ``tol`` (``None``: never).
      final_loss, min_loss: ``[stage][lr]``.
      diagnosis: ``[stage][lr]`` one-line diagnosis (``"ok"`` when it passed).
      losses: ``[stage, lr, step]`` loss curves (NaN after the run stopped).
      init_loss: the loss of the batch at initialization; ``expected_init_loss = log(C)``.
      init_loss_ok: whether ``init_loss`` is within a factor of 2 of ``log(C)``.
    """

    passed: bool
    reason: str
    lrs: list[float]
    stages: tuple[str, ...]
    tol: float
    steps: int
    steps_to_tol: list[list[int | None]]
    final_loss: list[list[float]]
    min_loss: list[list[float]]
    diagnosis: list[list[str]]
    losses: np.ndarray
    init_loss: float
    expected_init_loss: float
    init_loss_ok: bool
    passing_lrs: list[float]

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] overfit check: {self.reason}"]
        for s, stage in enumerate(self.stages):
            for j, lr in enumerate(self.lrs):
                st = self.steps_to_tol[s][j]
                took = f"reached loss < {self.tol:g} in {st} steps" if st is not None else ""
                lines.append(
                    f"  {stage:<12} lr={lr:<8.4g} final loss {_fmt(self.final_loss[s][j])}  "
                    f"{took or self.diagnosis[s][j]}"
                )
        flag = "ok" if self.init_loss_ok else "FAR OFF: check the output layer init and the labels"
        lines.append(
            f"  loss at init {self.init_loss:.4g} vs log(num_classes) = "
            f"{self.expected_init_loss:.4g} ({flag})"
        )
        if len(self.lrs) > 1:
            ok = ", ".join(f"{x:.4g}" for x in self.passing_lrs) or "none"
            lines.append(f"  learning rates that pass: {ok}")
        return "\n".join(lines)


def _diagnose_curve(
    losses: np.ndarray, grad_norms: np.ndarray, lr: float, tol: float
) -> tuple[int | None, str]:
    """Steps to tol (or None) and a one-line diagnosis of one loss curve (the steps that ran)."""
    finite = np.isfinite(losses)
    below = np.flatnonzero(finite & (losses < tol))
    if below.size:
        return int(below[0]), "ok"
    n = len(losses)
    bad = np.flatnonzero(~np.isfinite(losses) | ~np.isfinite(grad_norms))
    if bad.size:
        k = int(bad[0])
        gmax = float(np.max(grad_norms[:k])) if k else math.nan
        return None, (
            f"loss/gradient became non-finite at step {k} (largest gradient norm before: "
            f"{gmax:.3g}): learning rate too large or exploding gradients; lower the learning "
            "rate or clip the gradient norm"
        )
    l0, lmin = float(losses[0]), float(np.min(losses))
    g0 = float(grad_norms[0])
    if l0 - lmin < 0.1 * abs(l0):
        if g0 < 1e-4:
            return None, (
                f"loss flat at {lmin:.4g} with gradient norm {g0:.2g} at init: vanishing gradients "
                "or dead units (saturated sigmoid/tanh, dead ReLUs, too small init); use ReLU and "
                "a variance-scaling init"
            )
        return None, (
            f"loss flat ({l0:.4g} -> {lmin:.4g}) with gradient norm {g0:.3g}: learning rate "
            f"{lr:.3g} too small (or dead units); raise it"
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


def _make_overfit_program(model: models_lib.Model, flat: Mapping[str, Any], steps: int, tol: float):
    def train_one(lr, mask, params, model_state, x, y, dropout_key):
        opt = registry.build_optimizer(flat, {"optimizer.learning_rate": lr}, weight_decay=False)
        opt_state = opt.init(params)

        def loss_fn(p, ms, i):
            logits, new_ms = model.apply(
                p, ms, x, train=True, key=jax.random.fold_in(dropout_key, i), mask=mask
            )
            return _masked_ce(logits, y, mask), new_ms

        def cond(c):
            return (c[0] < steps) & ~c[-1]

        def body(c):
            i, p, ms, o, losses, gns, _ = c
            (loss, new_ms), g = jax.value_and_grad(loss_fn, has_aux=True)(p, ms, i)
            u, o = opt.update(g, o, p)
            gn = optax.global_norm(g)
            done = (loss < tol) | ~jnp.isfinite(loss) | ~jnp.isfinite(gn)
            return (
                i + 1,
                optax.apply_updates(p, u),
                new_ms,
                o,
                losses.at[i].set(loss),
                gns.at[i].set(gn),
                done,
            )

        nan = jnp.full((steps,), jnp.nan, jnp.float32)
        carry = (jnp.int32(0), params, model_state, opt_state, nan, nan, jnp.asarray(False))
        out = jax.lax.while_loop(cond, body, carry)
        return out[4], out[5], out[0]

    return jax.jit(jax.vmap(train_one, in_axes=(0, 0, None, None, None, None, None)))


#: Compiled overfit programs by (config, batch shape, outputs, steps, tol).
_OVERFIT_PROGRAMS: dict = {}


def overfit_check(
    config: SweepConfig | Mapping[str, Any],
    *,
    steps: int = 300,
    tol: float = 0.05,
    lrs: Sequence[float] | None = None,
    dataset: data_lib.Splits | None = None,
    num_classes: int | None = None,
    batch_size: int | None = None,
) -> OverfitResult:
    """Overfit one example, then one batch, with the config's model, optimizer and learning rate.

    Regularization is off (dropout 0, no weight decay), as the checklist prescribes. All stages
    and learning rates train at once: one jitted ``vmap`` over (stage, lr) of a ``while_loop``
    that stops when every run's loss is below ``tol`` (or non-finite) or after ``steps``. The
    one-example stage is the batch with every row but the first masked out, so both stages share
    one compiled program.

    Args:
      config: a :class:`SweepConfig` or dict; its base trial is used.
      steps: step budget per stage.
      tol: the loss to reach (cross-entropy).
      lrs: learning rates to try at once; default the config's.
      dataset: data to use instead of ``task.dataset``.
      num_classes: the model's number of outputs (default: one more than the largest label).
      batch_size: size of "one batch" (default ``train.batch_size``, capped at the train size).

    Returns:
      An :class:`OverfitResult`; it fails with a diagnosis (flat loss: learning rate too small or
      dead units; NaN: learning rate too large; stuck high: the model cannot represent the labels;
      labels outside the outputs: mismatch).

    Example:
      >>> r = overfit_check({"task": {"dataset": "synthetic", "widths": [32]}}, steps=100)
      >>> r.passed
      True
    """
    flat, ds, k, model = _setup(
        config, dataset, num_classes, {"task.dropout": 0.0, "optimizer.weight_decay": 0.0}
    )
    lrs = [float(flat["optimizer.learning_rate"])] if lrs is None else [float(x) for x in lrs]
    n = int(np.shape(ds.train[0])[0])
    bs = min(int(batch_size or flat["train.batch_size"]), n)
    _, data_key, dropout_key, _ = _trial_keys(flat["train.seed"])
    idx = np.asarray(data_lib.batch_indices(data_key, 0, bs, n))
    x, y = np.asarray(ds.train[0])[idx], np.asarray(ds.train[1])[idx]
    stages = ("one example", "one batch")
    expected = math.log(max(model.num_outputs, 2))
    problem = _label_problem(y, model.num_outputs, "training")
    if problem is not None:
        nan = [[math.nan] * len(lrs) for _ in stages]
        return OverfitResult(
            passed=False,
            reason=problem,
            lrs=lrs,
            stages=stages,
            tol=tol,
            steps=steps,
            steps_to_tol=[[None] * len(lrs) for _ in stages],
            final_loss=nan,
            min_loss=nan,
            diagnosis=[[problem] * len(lrs) for _ in stages],
            losses=np.full((2, len(lrs), steps), np.nan, np.float32),
            init_loss=math.nan,
            expected_init_loss=expected,
            init_loss_ok=False,
            passing_lrs=[],
        )
    params, model_state = _init_params(model, flat)
    masks = np.stack([np.arange(bs) == 0, np.ones(bs, bool)])
    lr_arr = np.asarray([lr for _ in stages for lr in lrs], np.float32)
    mask_arr = np.repeat(masks, len(lrs), axis=0)
    structure = sorted((k, str(v)) for k, v in flat.items() if k != "optimizer.learning_rate")
    key = (tuple(structure), x.shape, model.num_outputs)
    key += (steps, tol)
    if key not in _OVERFIT_PROGRAMS:
        _OVERFIT_PROGRAMS[key] = _make_overfit_program(model, flat, steps, tol)
    program = _OVERFIT_PROGRAMS[key]
    outs = program(lr_arr, mask_arr, params, model_state, x, y, dropout_key)
    losses, gns, ran = jax.device_get(outs)
    ran = np.asarray(ran).reshape(len(stages), len(lrs))
    losses = np.asarray(losses).reshape(len(stages), len(lrs), steps)
    gns = np.asarray(gns).reshape(len(stages), len(lrs), steps)
    steps_to, diag, final, lmin = [], [], [], []
    for s in range(len(stages)):
        row_s, row_d, row_f, row_m = [], [], [], []
        for j, lr in enumerate(lrs):
            n_run = int(ran[s, j])
            st, d = _diagnose_curve(losses[s, j, :n_run], gns[s, j, :n_run], lr, tol)
            done = losses[s, j, :n_run]
            row_s.append(st)
            row_d.append(d)
            row_f.append(float(done[-1]) if done.size else math.nan)
            fin = done[np.isfinite(done)]
            row_m.append(float(fin.min()) if fin.size else math.nan)
        steps_to.append(row_s)
        diag.append(row_d)
        final.append(row_f)
        lmin.append(row_m)
    init_loss = float(losses[1, 0, 0])
    init_ok = bool(np.isfinite(init_loss) and 0.5 * expected <= init_loss <= 2.0 * expected)
    passing = [lr for j, lr in enumerate(lrs) if all(steps_to[s][j] is not None for s in range(2))]
    passed = bool(passing)
    if passed:
        j = lrs.index(passing[0])
        reason = (
            f"lr={passing[0]:.4g} overfits one example in {steps_to[0][j]} steps and one batch of "
            f"{bs} in {steps_to[1][j]} steps (loss < {tol:g})"
        )
    else:
        j = 0
        s = 0 if steps_to[0][j] is None else 1
        reason = f"cannot overfit {stages[s]} (lr={lrs[j]:.4g}): {diag[s][j]}"
    if not init_ok:
        reason += (
            f"; loss at init {init_loss:.3g} is far from log({model.num_outputs}) = {expected:.3g}"
        )
    return OverfitResult(
        passed=passed,
        reason=reason,
        lrs=lrs,
        stages=stages,
        tol=tol,
        steps=steps,
        steps_to_tol=steps_to,
        final_loss=final,
        min_loss=lmin,
        diagnosis=diag,
        losses=losses,
        init_loss=init_loss,
        expected_init_loss=expected,
        init_loss_ok=init_ok,
        passing_lrs=passing,
    )


# ----------------------------------------------------------------------------------------------
# 2. Learning-rate finders.


@dataclasses.dataclass
class LRFindResult:
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
      result: the :class:`SweepResult` of the vectorized test.
    """

    passed: bool
    reason: str
    mode: str
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestions: dict[str, float]
    suggestion: float | None
    stop_step: int | None = None
    result: SweepResult | None = dataclasses.field(default=None, repr=False)

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] lr find ({self.mode}): {self.reason}"]
        for name, v in self.suggestions.items():
            lines.append(f"  suggestion {name:<15} lr = {v:.4g}")
        if self.mode == "vectorized":
            for lr, loss in zip(self.lrs, self.losses, strict=True):
                lines.append(f"  lr={lr:<10.4g} final train loss {_fmt(float(loss))}")
        return "\n".join(lines)


def _optimizer_with_lr(flat: Mapping[str, Any], learning_rate: Any) -> optax.GradientTransformation:
    return opt_lib.make_optimizer(
        flat["optimizer.name"],
        learning_rate,
        momentum=flat.get("optimizer.momentum"),
        clip_norm=flat.get("optimizer.clip_norm"),
        weight_decay=flat.get("optimizer.weight_decay", 0.0),
    )


def _smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    out = np.empty_like(losses, dtype=np.float64)
    avg = 0.0
    for t, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(v)
        out[t] = avg / (1 - beta ** (t + 1))
    return out


def lr_range_test(
    config: SweepConfig | Mapping[str, Any],
    *,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.9,
    diverge_factor: float = 4.0,
    dataset: data_lib.Splits | None = None,
) -> LRFindResult:
    """The classic LR range test: one short run whose learning rate grows exponentially.

    At step ``t`` the learning rate is ``min_lr * (max_lr / min_lr) ** (t / (steps - 1))``; the
    run (the config's model, optimizer and batches) is one ``lax.scan`` that freezes once the
    smoothed loss exceeds ``diverge_factor`` times its minimum or turns non-finite.

    Suggestions: ``steepest``, the learning rate where the smoothed loss falls fastest against
    ``log(lr)`` (before its minimum), and ``min/10``, the learning rate at the minimum smoothed
    loss divided by 10. ``suggestion`` is ``min/10``.

    Args:
      config: a :class:`SweepConfig` or dict (its base trial).
      min_lr, max_lr: the learning rate range.
      steps: length of the run.
      beta: smoothing factor of the exponential moving average of the loss.
      diverge_factor: stop when the smoothed loss exceeds this multiple of its minimum.
      dataset: data to use instead of ``task.dataset``.

    Returns:
      An :class:`LRFindResult` with ``mode="classic"``.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if steps < 5:
        raise ValueError(f"steps = {steps} is too small: expected at least 5")
    flat, ds, _, model = _setup(config, dataset)
    n = int(np.shape(ds.train[0])[0])
    bs = min(int(flat["train.batch_size"]), n)
    ratio = max_lr / min_lr
    schedule = lambda count: min_lr * ratio ** (count / (steps - 1))
    opt = _optimizer_with_lr(flat, schedule)
    _, data_key, dropout_key, _ = _trial_keys(flat["train.seed"])
    params, model_state = _init_params(model, flat)

    @jax.jit
    def run(params, model_state, x_train, y_train):
        def body(c, step):
            p, ms, o, avg, best, stopped = c
            idx = data_lib.batch_indices(data_key, step, bs, n)
            x, y = x_train[idx], y_train[idx]

            def loss_fn(p):
                logits, new_ms = model.apply(
                    p, ms, x, train=True, key=jax.random.fold_in(dropout_key, step)
                )
                return _masked_ce(logits, y, None), new_ms

            (loss, new_ms), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
            u, new_o = opt.update(g, o, p)
            new_avg = beta * avg + (1 - beta) * loss
            smooth = new_avg / (1 - beta ** (step + 1).astype(jnp.float32))
            bad = ~jnp.isfinite(smooth) | (smooth > diverge_factor * best)
            stop = stopped | bad
            keep = lambda a, b: jax.tree.map(lambda u_, v_: jnp.where(stop, v_, u_), a, b)
            c = (
                keep(optax.apply_updates(p, u), p),
                keep(new_ms, ms),
                keep(new_o, o),
                jnp.where(stop, avg, new_avg),
                jnp.where(stop, best, jnp.minimum(best, smooth)),
                stop,
            )
            return c, (jnp.where(stopped, jnp.nan, loss), stop)

        c0 = (params, model_state, opt.init(params), 0.0, jnp.inf, jnp.asarray(False))
        return jax.lax.scan(body, c0, jnp.arange(steps, dtype=jnp.int32))[1]

    losses, stopped = jax.device_get(run(params, model_state, ds.train[0], ds.train[1]))
    losses = np.asarray(losses, np.float64)
    lrs = min_lr * ratio ** (np.arange(steps) / (steps - 1))
    hit = np.flatnonzero(np.asarray(stopped))
    stop = int(hit[0]) if hit.size else steps
    smoothed = np.full(steps, np.nan)
    smoothed[:stop] = _smooth(losses[:stop], beta)
    suggestions: dict[str, float] = {}
    if stop >= 5:
        s = smoothed[:stop]
        m = int(np.argmin(s))
        suggestions["min/10"] = float(lrs[m] / 10)
        skip = max(1, stop // 10)
        if m > skip + 1:
            grad = np.gradient(s[: m + 1], np.log(lrs[: m + 1]))
            j = skip + int(np.argmin(grad[skip:]))
            suggestions["steepest"] = float(lrs[j])
    suggestion = suggestions.get("min/10")
    passed = suggestion is not None
    if passed:
        reason = (
            f"loss fell to {np.nanmin(smoothed):.3g} at lr {lrs[int(np.nanargmin(smoothed))]:.3g}; "
            f"{'diverged' if stop < steps else 'ended'} at lr {lrs[min(stop, steps - 1)]:.3g}; "
            f"suggested lr {suggestion:.3g}"
        )
    else:
        reason = f"the run diverged after {stop} steps, at lr {lrs[stop]:.3g}: lower min_lr"
    return LRFindResult(
        passed, reason, "classic", lrs, losses, smoothed, suggestions, suggestion, stop
    )


def lr_sweep_test(
    config: SweepConfig | Mapping[str, Any],
    *,
    lrs: Sequence[float] | None = None,
    steps: int = 100,
    within: float = 0.1,
    dataset: data_lib.Splits | None = None,
) -> LRFindResult:
    """The vectorized LR finder: K learning rates trained for ``steps`` steps in one program.

    Runs :func:`jaxtune.run_sweep` with a grid over ``optimizer.learning_rate`` (the config's
    other settings, one seed). Each trial's final loss is the mean train loss of its last
    ``max(1, steps // 5)`` steps (inf if it diverged). Suggestions: ``best``, the learning rate of
    the lowest final loss (``suggestion``), and ``largest_within``, the largest learning rate
    whose final loss is within ``within`` (relative) of the best.

    Args:
      config: a :class:`SweepConfig` or dict (its base trial).
      lrs: the learning rates (default: 13 points log-spaced over ``[1e-4, 10]``).
      steps: training steps per trial.
      within: relative tolerance of ``largest_within``.
      dataset: data to use instead of ``task.dataset``.

    Returns:
      An :class:`LRFindResult` with ``mode="vectorized"`` and the sweep's ``result``.
    """
    lrs = np.logspace(-4, 1, 13) if lrs is None else np.asarray(sorted(lrs), np.float64)
    cfg = SweepConfig.from_dict(config).replace(
        {
            "train.steps": int(steps),
            "train.eval_every": int(steps),
            "checkpoint.every": 0,
            "sweep.method": "grid",
            "sweep.seeds": 1,
            "sweep.grid": {"optimizer.learning_rate": [float(x) for x in lrs]},
        }
    )
    result = run_sweep(cfg, dataset=dataset)
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
    passed = suggestion is not None
    if passed:
        reason = (
            f"lowest final train loss {final.min():.3g} at lr {suggestion:.3g}; "
            f"{int(np.sum(~np.isfinite(final)))} of {len(lrs)} learning rates diverged"
        )
    else:
        reason = "every learning rate diverged: lower the range"
    return LRFindResult(
        passed, reason, "vectorized", lrs, final, final, suggestions, suggestion, None, result
    )


def plot_lr_find(
    *results: LRFindResult, out_dir: str | Path | None = None, name: str = "lr_find.png"
) -> Path | None:
    """Loss vs learning rate (log x) for each finder result, with its suggestions marked.

    Returns:
      The PNG path when ``out_dir`` is given.
    """
    fig, axes = _figure()
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
            ax.plot(
                r.lrs[~fin],
                np.full((~fin).sum(), np.nanmax(r.losses[fin], initial=1.0)),
                "x",
                color="tab:orange",
                label="diverged",
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
    return _savefig(fig, out_dir, name)


# ----------------------------------------------------------------------------------------------
# 3. Gradient health.


@dataclasses.dataclass
class LayerGradNorms:
    """Gradient norm of each top-level layer for one batch (see :func:`per_layer_grad_norms`)."""

    passed: bool
    reason: str
    norms: dict[str, float]
    dominant: str
    loss: float

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] per-layer gradient norms: {self.reason}"]
        for name, v in self.norms.items():
            star = "  <- largest" if name == self.dominant else ""
            lines.append(f"  {name:<16} {_fmt(v)}{star}")
        return "\n".join(lines)


def per_layer_grad_norms(
    config: SweepConfig | Mapping[str, Any],
    params: Any,
    batch: tuple[Any, Any],
    *,
    model_state: Any = None,
    dataset: data_lib.Splits | None = None,
    num_classes: int | None = None,
    key: jax.Array | None = None,
) -> LayerGradNorms:
    """The gradient norm of each layer (top-level params entry) on one batch.

    Args:
      config: the trial's configuration (builds the same model as the sweep).
      params, model_state: the trial's parameters and model state (``model_state`` defaults to
        a fresh init's).
      batch: ``(x, y)``.
      dataset, num_classes: as in :func:`overfit_check` (to rebuild the model).
      key: dropout key.

    Returns:
      A :class:`LayerGradNorms`; ``dominant`` is the layer with the largest (or a non-finite)
      gradient norm. Fails when any norm is non-finite.
    """
    flat, _, _, model = _setup(config, dataset, num_classes)
    if model_state is None:
        model_state = model.init(jax.random.PRNGKey(0))[1]
    x, y = batch

    def loss_fn(p):
        logits, _ = model.apply(p, model_state, x, train=True, key=key)
        return _masked_ce(logits, jnp.asarray(y), None)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    norms = {str(k): float(optax.global_norm(v)) for k, v in grads.items()}
    rank = lambda kv: (not math.isfinite(kv[1]), kv[1] if math.isfinite(kv[1]) else 0.0)
    dominant = max(norms.items(), key=rank)[0]
    finite = all(math.isfinite(v) for v in norms.values())
    total = float(optax.global_norm(grads))
    share = norms[dominant] ** 2 / total**2 if finite and total > 0 else math.nan
    if finite:
        reason = f"largest gradient in {dominant} ({norms[dominant]:.3g}, {share:.0%} of the total)"
    else:
        reason = f"non-finite gradient in {dominant}"
    return LayerGradNorms(finite, reason, norms, dominant, float(loss))


def explain_divergence(result: SweepResult, trial_id: int) -> LayerGradNorms:
    """Which layer exploded: rerun the diverging step of a trial from its kept state.

    A diverged trial keeps its last finite state, i.e. the state just before step
    ``diverged_step``; that step's batch is recomputed and :func:`per_layer_grad_norms` names
    the layer whose gradient dominates.
    """
    trial = result.trials[trial_id]
    if trial.diverged_step is None:
        raise ValueError(f"trial {trial_id} did not diverge")
    cfg = SweepConfig.from_dict(result.config)
    flat = {**cfg.base, **trial.hparams}
    ds = registry.load_data(flat)
    state = result.trial_state(trial_id)
    _, data_key, dropout_key, _ = trial_keys(state.key)
    step = int(trial.diverged_step)
    idx = np.asarray(
        data_lib.batch_indices(data_key, step, int(flat["train.batch_size"]), ds.train[0].shape[0])
    )
    batch = (np.asarray(ds.train[0])[idx], np.asarray(ds.train[1])[idx])
    return per_layer_grad_norms(
        cfg.replace({k: v for k, v in trial.hparams.items() if k in cfg.base}),
        state.params,
        batch,
        model_state=state.model_state,
        dataset=ds,
        key=jax.random.fold_in(dropout_key, step),
    )


@dataclasses.dataclass
class GradientHealthResult:
    """Per-trial gradient statistics of a sweep (see :func:`gradient_health`)."""

    passed: bool
    reason: str
    names: list[str]
    p50: list[float]
    p90: list[float]
    p99: list[float]
    clip_fraction: list[float]
    first_nonfinite: list[int | None]
    recommendations: list[str]
    exploded_layer: dict[int, LayerGradNorms]

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] gradient health: {self.reason}"]
        lines.append(
            f"  {'trial':<28} {'p50':>9} {'p90':>9} {'p99':>9} {'clipped':>8} {'non-finite':>10}"
        )
        for i, name in enumerate(self.names):
            nf = "-" if self.first_nonfinite[i] is None else str(self.first_nonfinite[i])
            lines.append(
                f"  {name:<28} {_fmt(self.p50[i]):>9} {_fmt(self.p90[i]):>9} "
                f"{_fmt(self.p99[i]):>9} {self.clip_fraction[i]:>8.1%} {nf:>10}"
            )
            lines.append(f"    -> {self.recommendations[i]}")
            if i in self.exploded_layer:
                lines.append(f"    -> which layer exploded: {self.exploded_layer[i].reason}")
        return "\n".join(lines)


def gradient_health(
    result: SweepResult, *, trials: Sequence[int] | None = None, explain: bool = True
) -> GradientHealthResult:
    """Gradient-norm percentiles, clip rate and first non-finite step of each trial.

    Recommendation (Deep Learning Tuning Playbook): clip the global norm near the 90th
    percentile of the unclipped gradient norms; if more than half of the updates are clipped,
    lower the learning rate instead. For a diverged trial with its final state available, the
    diverging step is rerun (:func:`explain_divergence`) to name the layer that exploded.

    Args:
      result: a sweep result whose ``history`` holds ``grad_norm`` (the norm before clipping),
        ``clipped`` and ``train.loss``.
      trials: trial ids to examine (default all).
      explain: rerun the diverging step of diverged trials (needs ``result.units``).

    Returns:
      A :class:`GradientHealthResult`; it fails if a trial diverged or clipped most updates.
    """
    ids = list(range(len(result.trials))) if trials is None else list(trials)
    h = result.history
    out = GradientHealthResult(True, "", [], [], [], [], [], [], [], {})
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
        if first is not None:
            rec = (
                f"diverged at step {first}: lower the learning rate or clip the gradient norm "
                f"at ~{p90:.3g} (the 90th percentile before divergence)"
            )
        elif frac > 0.5:
            rec = (
                f"{frac:.0%} of the updates are clipped (clip_norm={clip_norm}): the clip acts "
                "as a smaller learning rate; lower the learning rate instead"
            )
        elif clip_norm is None:
            rec = f"healthy; if you add clipping, use clip_norm ~ {p90:.3g} (90th percentile)"
        else:
            rec = f"healthy; clip_norm={clip_norm} vs 90th percentile {p90:.3g}"
        if p50 > 0 and p99 / p50 > 10:
            rec += f"; spiky gradients (p99/p50 = {p99 / p50:.1f})"
        if first is not None or frac > 0.5:
            bad.append(t.name)
        if first is not None and explain and result.units:
            try:
                out.exploded_layer[i] = explain_divergence(result, i)
            except (ValueError, KeyError) as e:  # pragma: no cover - defensive
                rec += f" (could not rerun the diverging step: {e})"
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
    fig, axes = _figure()
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
    if path is None:
        return _savefig(fig, None, "")
    path = Path(path)
    return _savefig(fig, path.parent, path.name)


# ----------------------------------------------------------------------------------------------
# 4. Signal propagation at initialization.


_LAYER_TYPES = (nn.Dense, nn.Conv)
_NORM_TYPES = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _interceptor(records: list, eps: Sequence[jax.Array] | None = None) -> Any:
    """A linen interceptor that records every Dense/Conv/normalization output in ``records``.

    With ``eps``, the ``k``-th Dense/Conv output gets ``eps[k]`` added, so the gradient with
    respect to ``eps`` is the backpropagated signal at that layer.
    """
    count = [0]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name == "__call__" and isinstance(m, _LAYER_TYPES + _NORM_TYPES):
            kind = "norm" if isinstance(m, _NORM_TYPES) else "layer"
            if kind == "layer" and eps is not None:
                out = out + eps[count[0]]
                count[0] += 1
            records.append((kind, m.name, out))
        return out

    return nn.intercept_methods(interceptor)


def _record_layers(fn: Callable[[], Any]) -> tuple[Any, list[tuple[str, str, Any]]]:
    """Run ``fn`` and record the outputs of every Dense/Conv/normalization layer."""
    records: list[tuple[str, str, Any]] = []
    with _interceptor(records):
        out = fn()
    return out, records


def _jstd(a: jax.Array) -> jax.Array:
    """Standard deviation that does not overflow for huge (but finite) values."""
    a = jnp.asarray(a, jnp.float32)
    m = jnp.max(jnp.abs(a))
    m = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    return m * jnp.std(a / m)


def _std(x: Any) -> float:
    v = float(_jstd(x))
    return v if math.isfinite(v) else math.inf


def _hidden_inputs(records: list, activation: str) -> tuple[list[str], list, list]:
    """Names, raw outputs and activations (logits for the output) of each Dense/Conv layer."""
    act = models_lib.ACTIVATIONS[activation]
    names, raw, post = [], [], []
    layer_ids = [j for j, r in enumerate(records) if r[0] == "layer"]
    for j in layer_ids:
        out = records[j][2]
        nxt = records[j + 1] if j + 1 < len(records) else None
        normed = nxt[2] if nxt is not None and nxt[0] == "norm" else out
        names.append(records[j][1])
        raw.append(out)
        post.append(out if j == layer_ids[-1] else act(normed))
    return names, raw, post


def _default_variables(model: models_lib.Model) -> tuple[Any, Any]:
    """``(params, model_state)`` with Flax's default non-kernel values, without running init.

    Scales and variances are ones, everything else zeros; kernels are then drawn by
    :func:`jaxtune.initializers.reinitialize` (no compiled or eager Flax ``init`` needed).
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))

    def leaf(path, x):
        ones = init_lib._leaf_name(path) in ("scale", "var")
        return (jnp.ones if ones else jnp.zeros)(x.shape, x.dtype)

    params, state = (jax.tree_util.tree_map_with_path(leaf, t) for t in shapes)
    return params, state


def _signal_program(model: models_lib.Model, activation: str, x: jax.Array, y: jax.Array):
    """Layer names and a jitted ``fn(params, state) -> (pre_std, act_std, delta_std)``."""
    records: list = []
    params_shape = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    with _interceptor(records):
        jax.eval_shape(lambda p, s: model.apply(p, s, x, train=True)[0], *params_shape)
    names = [r[1] for r in records if r[0] == "layer"]
    shapes = [r[2].shape for r in records if r[0] == "layer"]

    def forward(eps, params, state):
        recs: list = []
        with _interceptor(recs, eps):
            logits, _ = model.apply(params, state, x, train=True)
        _, pre, post = _hidden_inputs(recs, activation)
        loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        stats = (jnp.stack([_jstd(v) for v in pre]), jnp.stack([_jstd(v) for v in post]))
        return loss, stats

    @jax.jit
    def run(params, state):
        eps = [jnp.zeros(s, jnp.float32) for s in shapes]
        deltas, (pre, post) = jax.grad(forward, has_aux=True)(eps, params, state)
        return pre, post, jnp.stack([_jstd(d) for d in deltas])

    return names, run


@dataclasses.dataclass
class InitReport:
    """Per-layer signal scale at initialization for several initializers (:func:`init_report`).

    ``act_ratio[preset][l]`` is the std of layer ``l``'s activation (post-activation for hidden
    layers, logits for the output) over the input's std; ``grad_ratio[preset][l]`` is the std of
    the gradient of the summed loss with respect to layer ``l``'s output (the backpropagated
    signal) over the last hidden layer's. ``flags[preset]`` lists the layers whose ratio leaves
    ``[low, high]``.
    """

    passed: bool
    reason: str
    presets: list[str]
    layers: list[str]
    input_std: float
    act_std: dict[str, list[float]]
    pre_std: dict[str, list[float]]
    grad_std: dict[str, list[float]]
    act_ratio: dict[str, list[float]]
    grad_ratio: dict[str, list[float]]
    flags: dict[str, list[str]]
    verdict: dict[str, str]
    low: float
    high: float
    checked: list[str]
    plot_path: Path | None = None

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] init report: {self.reason}"]
        step = max(1, len(self.layers) // 10)
        shown = list(range(0, len(self.layers), step))
        if len(self.layers) - 1 not in shown:
            shown.append(len(self.layers) - 1)
        head = "  " + f"{'preset':<14}" + "".join(f"{self.layers[k]:>10}" for k in shown)
        lines.append("  activation std / input std, per layer:")
        lines.append(head)
        for p in self.presets:
            lines.append(
                "  " + f"{p:<14}" + "".join(f"{_fmt(self.act_ratio[p][k]):>10}" for k in shown)
            )
        lines.append("  backpropagated gradient std / last hidden layer's, per layer:")
        lines.append(head)
        for p in self.presets:
            lines.append(
                "  " + f"{p:<14}" + "".join(f"{_fmt(self.grad_ratio[p][k]):>10}" for k in shown)
            )
        for p in self.presets:
            lines.append(f"  {p}: {self.verdict[p]}")
        return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    if not math.isfinite(a) or not math.isfinite(b):
        return math.inf
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def init_report(
    *,
    depth: int = 20,
    width: int = 256,
    presets: Sequence[str] = DEFAULT_PRESETS,
    activation: str = "relu",
    model: str = "mlp",
    normalization: str = "none",
    widths: Sequence[int] | None = None,
    input_dim: int | None = None,
    batch: int = 256,
    low: float = 0.1,
    high: float = 10.0,
    check: Sequence[str] | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> InitReport:
    """Per-layer activation and gradient scale at initialization, per initializer preset.

    A batch of standard-normal inputs goes through a freshly initialized ``depth x width`` MLP
    (or CNN of ``depth`` 3x3 conv layers with ``width`` channels on 8x8 inputs) built with
    :mod:`jaxtune.models`; every Dense/Conv output is recorded with
    ``flax.linen.intercept_methods``, which also adds a zero to each so that the gradient of the
    summed cross-entropy (random labels) with respect to it is the backpropagated signal there.
    One compiled program serves every preset (only the initial parameters differ). A layer is
    flagged when its activation-std ratio to the input (or, for hidden layers, its gradient-std
    ratio to the last hidden layer's) leaves ``[low, high]`` or is non-finite.

    Args:
      depth, width: hidden layers and their width (channels for the CNN).
      presets: initializer names (``"he_normal"``, ``"normal(1.0)"``, ...).
      activation, model, normalization: the architecture.
      widths: explicit hidden widths (overrides ``depth``/``width``).
      input_dim: input features of the MLP (default: the first hidden width).
      batch: number of random inputs.
      low, high: the healthy range of the std ratios.
      check: presets whose flags decide ``passed`` (default all).
      seed: PRNG seed.
      out_dir: where to write ``init_report.png``.

    Returns:
      An :class:`InitReport`.

    Example:
      >>> r = init_report(depth=4, width=32, presets=("he_normal",))
      >>> r.passed
      True
    """
    widths = tuple(widths) if widths is not None else (int(width),) * int(depth)
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(seed), 3)
    shape = (int(input_dim or widths[0]),) if model == "mlp" else (8, 8, 1)
    x = jax.random.normal(key_x, (batch, *shape))
    y = jax.random.randint(key_y, (batch,), 0, 10)
    input_std = _std(x)
    rep = InitReport(
        True,
        "",
        list(presets),
        [],
        input_std,
        {},
        {},
        {},
        {},
        {},
        {},
        {},
        low,
        high,
        list(check) if check is not None else list(presets),
    )
    builder = models_lib.mlp if model == "mlp" else models_lib.cnn
    kw = {"widths": widths} if model == "mlp" else {"channels": widths}
    m = builder(
        num_outputs=10,
        input_shape=shape,
        activation=activation,
        normalization=normalization,
        init=presets[0],
        **kw,
    )
    # One model and one compiled program for every preset: only the kernels differ, redrawn
    # with jaxtune.initializers.reinitialize.
    names, run = _signal_program(m, activation, x, y)
    params0, state = _default_variables(m)
    for preset in presets:
        params = init_lib.reinitialize(params0, preset, key_p)
        pre, post, gstd = (
            [float(v) if math.isfinite(float(v)) else math.inf for v in np.asarray(a)]
            for a in jax.device_get(run(params, state))
        )
        rep.layers = names
        rep.pre_std[preset] = pre
        rep.act_std[preset] = post
        rep.grad_std[preset] = gstd
        rep.act_ratio[preset] = [_ratio(v, input_std) for v in post]
        ref = gstd[-2] if len(gstd) > 1 else gstd[-1]
        rep.grad_ratio[preset] = [_ratio(v, ref) for v in gstd]
        flags = []
        for k, name in enumerate(names):
            a, g = rep.act_ratio[preset][k], rep.grad_ratio[preset][k]
            if k == len(names) - 1:
                g = 1.0  # the output layer's backward signal is the loss gradient itself
            if not (low <= a <= high):
                flags.append(
                    f"{name}: activation {'explodes' if a > high else 'vanishes'} (x{a:.3g})"
                )
            if not (low <= g <= high):
                flags.append(
                    f"{name}: gradient {'explodes' if g > high else 'vanishes'} (x{g:.3g})"
                )
        rep.flags[preset] = flags
        if not flags:
            rep.verdict[preset] = (
                f"signal propagates: activation std ratio in "
                f"[{min(rep.act_ratio[preset]):.3g}, {max(rep.act_ratio[preset]):.3g}] over "
                f"{len(names)} layers"
            )
        else:
            first = flags[0]
            rep.verdict[preset] = f"{len(flags)} flag(s), first at {first}"
    failed = [p for p in rep.checked if rep.flags.get(p)]
    rep.passed = not failed
    rep.reason = (
        f"{', '.join(rep.checked)} keep(s) activations and gradients within "
        f"[{low:g}, {high:g}]x over {len(rep.layers)} layers"
        if not failed
        else f"signal vanishes or explodes with {', '.join(failed)}"
    )
    if out_dir is not None:
        rep.plot_path = plot_init_report(rep, out_dir=out_dir)
    return rep


def plot_init_report(rep: InitReport, *, out_dir: str | Path | None = None) -> Path | None:
    """Activation and gradient std ratio per layer (log y), one line per preset."""
    fig, axes = _figure(2)
    for p in rep.presets:
        for ax, vals in ((axes[0, 0], rep.act_ratio[p]), (axes[0, 1], rep.grad_ratio[p])):
            v = np.asarray(vals, np.float64)
            v = np.where(np.isfinite(v), v, np.nan)
            ax.plot(np.arange(1, len(v) + 1), v, "o-", ms=3, label=p)
    for ax, title in (
        (axes[0, 0], "activation std / input std"),
        (axes[0, 1], "backprop gradient std / last hidden's"),
    ):
        ax.axhspan(rep.low, rep.high, color="green", alpha=0.08)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _savefig(fig, out_dir, "init_report.png")


# ----------------------------------------------------------------------------------------------
# 5. Normalization masking.


@dataclasses.dataclass
class NormalizationResult:
    """Same config with and without normalization (see :func:`normalization_masking`)."""

    passed: bool
    reason: str
    normalizations: list[str]
    final_loss: list[float]
    diverged: list[bool]
    layer_std: list[list[float]]
    growth: list[float]
    masked: bool
    result: SweepResult | None = dataclasses.field(default=None, repr=False)

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] normalization masking: {self.reason}"]
        for j, norm in enumerate(self.normalizations):
            stds = " ".join(_fmt(v) for v in self.layer_std[j])
            lines.append(
                f"  norm={norm:<6} final train loss {_fmt(self.final_loss[j])}  "
                f"diverged={self.diverged[j]}  layer growth x{_fmt(self.growth[j])}  "
                f"pre-norm std per layer: {stds}"
            )
        return "\n".join(lines)


def _train_layer_std(result: SweepResult, i: int, ds: data_lib.Splits) -> list[float]:
    flat = {**result.config.base, **result.trials[i].hparams}
    model = registry.build_model(flat, data_lib.input_shape(ds), data_lib.num_classes(ds))
    state = result.trial_state(i)
    x = np.asarray(ds.train[0])[:256]
    _, records = _record_layers(
        lambda: model.apply(state.params, state.model_state, x, train=False)
    )
    layers = [r for r in records if r[0] == "layer"][:-1]
    return [_std(r[2]) for r in layers]


def normalization_masking(
    config: SweepConfig | Mapping[str, Any],
    *,
    steps: int = 200,
    normalizations: Sequence[str] | None = None,
    growth_limit: float = 10.0,
    dataset: data_lib.Splits | None = None,
) -> NormalizationResult:
    """Train the config with and without normalization side by side (one :func:`run_sweep`).

    Normalization can hide exploding activations and gradients: the normalized net trains while
    the same net without it diverges, or its pre-normalization activation scale grows layer by
    layer. The check runs a grid over ``task.normalization`` (default: ``["none", "batch"]``, or
    ``["none", <the config's>]``) and measures, at the final parameters, the std of every hidden
    layer's pre-normalization output on training data; ``growth`` is the last hidden layer's
    std over the first's.

    Returns:
      A :class:`NormalizationResult`; it fails (``masked``) when a normalized run trains (finite,
      loss below its start) while the unnormalized one diverges or some run's layer growth exceeds
      ``growth_limit``.
    """
    cfg = SweepConfig.from_dict(config)
    base_norm = cfg.base["task.normalization"]
    if normalizations is None:
        normalizations = ["none", "batch" if base_norm == "none" else base_norm]
    normalizations = list(normalizations)
    cfg = cfg.replace(
        {
            "train.steps": int(steps),
            "train.eval_every": int(steps),
            "checkpoint.every": 0,
            "sweep.method": "grid",
            "sweep.seeds": 1,
            "sweep.grid": {"task.normalization": normalizations},
        }
    )
    ds = dataset if dataset is not None else registry.load_data(cfg.base)
    result = run_sweep(cfg, dataset=ds)
    final, diverged, stds, growth = [], [], [], []
    for i, t in enumerate(result.trials):
        final.append(float(t.final["train.loss"]))
        diverged.append(bool(t.diverged))
        s = _train_layer_std(result, i, ds)
        stds.append(s)
        growth.append(_ratio(s[-1], s[0]) if s else 1.0)
    h = result.history["train.loss"]
    trains = [
        not diverged[j] and math.isfinite(final[j]) and final[j] < 0.9 * float(h[j, 0])
        for j in range(len(normalizations))
    ]
    none_j = normalizations.index("none") if "none" in normalizations else None
    normed = [j for j, nm in enumerate(normalizations) if nm != "none"]
    problems = []
    if none_j is not None and any(trains[j] for j in normed):
        if diverged[none_j]:
            problems.append(
                f"without normalization the run diverges (step "
                f"{result.trials[none_j].diverged_step}) while "
                f"{', '.join(normalizations[j] for j in normed if trains[j])} trains"
            )
        if growth[none_j] > growth_limit or not math.isfinite(growth[none_j]):
            problems.append(
                f"without normalization the activation scale grows x{growth[none_j]:.3g} "
                "from the first to the last hidden layer"
            )
        for j in normed:
            if trains[j] and growth[j] > growth_limit:
                problems.append(
                    f"under {normalizations[j]} normalization the pre-normalization scale grows "
                    f"x{growth[j]:.3g} layer by layer (hidden by the normalization)"
                )
    masked = bool(problems)
    reason = (
        "normalization is masking a problem: "
        + "; ".join(problems)
        + ". Fix the init/learning rate of the unnormalized net"
        if masked
        else "the unnormalized net trains too and its layer scales stay bounded "
        f"(growth x{_fmt(growth[none_j]) if none_j is not None else '-'})"
    )
    return NormalizationResult(
        not masked, reason, normalizations, final, diverged, stds, growth, masked, result
    )


# ----------------------------------------------------------------------------------------------
# 6. Data checks.


@dataclasses.dataclass
class DataCheckResult:
    """Outcome of :func:`data_checks`: one ``(name, severity, message)`` per finding."""

    passed: bool
    reason: str
    findings: list[tuple[str, str, str]]
    stats: dict[str, Any]

    def report(self) -> str:
        lines = [f"[{_mark(self.passed)}] data checks: {self.reason}"]
        for name, severity, msg in self.findings:
            lines.append(f"  {severity:<7} {name:<14} {msg}")
        return "\n".join(lines)


def _feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    return x.mean(0), x.std(0)


def data_checks(
    dataset: data_lib.Splits,
    *,
    num_classes: int,
    standardizer: data_lib.Standardizer | None = None,
    mean_tol: float = 0.5,
    std_range: tuple[float, float] = (0.5, 2.0),
    imbalance: float = 10.0,
    outlier: float = 50.0,
) -> DataCheckResult:
    """Checks a dataset for the defects the checklist warns about.

    Errors (fail the check): non-finite inputs; labels outside ``[0, num_classes)``; training
    features far from zero mean / unit variance (``|mean| > mean_tol`` or std outside
    ``std_range``; constant features are only noted); a test split standardized with its own
    statistics (its per-feature means are 0 and stds 1 to far better precision than sampling
    noise ``1/sqrt(n_test)`` allows) or with statistics fit on train+test; a ``standardizer``
    whose statistics are not those of the training split; class imbalance (largest / smallest
    class count over ``imbalance``, or a class missing from train). Warning: test values more
    than ``outlier`` training stds from the training mean (typically a feature that is constant
    on train, whose std was floored to a tiny value).

    Args:
      dataset: the (standardized) dataset.
      num_classes: the model's number of outputs.
      standardizer: the standardizer that produced ``dataset``, if known.

    Returns:
      A :class:`DataCheckResult`.
    """
    findings: list[tuple[str, str, str]] = []
    stats: dict[str, Any] = {}
    x_train, y_train = dataset.train
    x_test, y_test = dataset.test if dataset.test is not None else dataset.valid

    def add(name: str, severity: str, msg: str) -> None:
        findings.append((name, severity, msg))

    splits = {"train": (x_train, y_train), "test": (x_test, y_test)}
    finite = True
    for split, (x, _) in splits.items():
        x = np.asarray(x)
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            finite = False
            add(
                "non-finite",
                "error",
                f"x_{split} has {bad} NaN/inf value(s) of {x.size}; "
                "fix or drop those examples before training",
            )
    for split, (_, y) in splits.items():
        msg = _label_problem(np.asarray(y), num_classes, f"y_{split}")
        if msg:
            add("label range", "error", msg)
    if finite:
        mean_tr, std_tr = _feature_stats(x_train)
        mean_te, std_te = _feature_stats(x_test)
        const = std_tr < 1e-8
        live = ~const
        stats.update(
            train_max_abs_mean=float(np.abs(mean_tr[live]).max(initial=0.0)),
            test_max_abs_mean=float(np.abs(mean_te[live]).max(initial=0.0)),
            constant_features=int(const.sum()),
        )
        off_std = (std_tr < std_range[0]) | (std_tr > std_range[1])
        far = live & ((np.abs(mean_tr) > mean_tol) | off_std)
        if far.any():
            j = int(np.flatnonzero(far)[0])
            add(
                "standardize",
                "error",
                f"{int(far.sum())} of {int(live.sum())} training features are far from zero "
                f"mean / unit variance (e.g. feature {j}: mean {mean_tr[j]:.3g}, std "
                f"{std_tr[j]:.3g}); standardize with the training mean and std",
            )
        if const.any():
            add("constant", "note", f"{int(const.sum())} feature(s) are constant on train")
        n_te = int(np.shape(x_test)[0])
        live_te = std_te > 1e-8
        tight = 1e-3
        noise = 1.0 / math.sqrt(max(n_te, 1))
        self_fit = (
            n_te >= 10
            and noise > 10 * tight
            and live_te.any()
            and np.abs(mean_te[live_te]).max() < tight
            and np.abs(std_te[live_te] - 1).max() < tight
        )
        if self_fit:
            add(
                "leakage",
                "error",
                f"the test split has per-feature mean 0 and std 1 to within {tight:g} while "
                f"sampling noise alone would give ~{noise:.2g}: it was standardized with its "
                "own statistics; apply the training mean and std to the test set",
            )
        both = np.concatenate(
            [
                np.asarray(x_train, np.float64).reshape(np.shape(x_train)[0], -1),
                np.asarray(x_test, np.float64).reshape(n_te, -1),
            ]
        )
        mean_all, std_all = both.mean(0), both.std(0)
        live_all = std_all > 1e-8
        joint = (
            not self_fit
            and live_all.any()
            and np.abs(mean_all[live_all]).max() < tight
            and np.abs(std_all[live_all] - 1).max() < tight
            and np.abs(mean_tr[live]).max(initial=0.0) > 10 * tight
        )
        if joint:
            add(
                "leakage",
                "error",
                "train+test together have mean 0 / std 1 exactly but train alone does not: the "
                "standardizer was fit on all the data; fit it on the training split only",
            )
        if standardizer is not None:
            raw_tr = np.asarray(standardizer.inverse_transform(x_train), np.float64)
            m_raw, s_raw = _feature_stats(raw_tr)
            s_mean = np.asarray(standardizer.mean, np.float64).reshape(-1)
            s_std = np.asarray(standardizer.std, np.float64).reshape(-1)
            scale = np.maximum(s_raw, 1e-6)
            off = live & (
                (np.abs(m_raw - s_mean) / scale > 0.05) | (np.abs(s_raw - s_std) / scale > 0.05)
            )
            if off.any():
                add(
                    "leakage",
                    "error",
                    f"the standardizer's statistics differ from the training split's for "
                    f"{int(off.sum())} feature(s): it was not fit on the training data only",
                )
        if not self_fit and n_te:
            z = np.abs(np.asarray(x_test, np.float64))
            big = int((z > outlier).sum())
            stats["test_max_abs"] = float(z.max())
            if big:
                add(
                    "outliers",
                    "warning",
                    f"x_test has {big} value(s) beyond {outlier:g} training stds (max "
                    f"{z.max():.3g}): features (nearly) constant on train were divided by a "
                    "tiny std; floor the std (e.g. 1 for constant features) or drop them",
                )
    y_tr = np.asarray(y_train)
    if y_tr.size and y_tr.min() >= 0:
        counts = np.bincount(y_tr, minlength=num_classes)[: max(num_classes, 1)]
        stats["class_counts"] = counts.tolist()
        lo, hi = int(counts.min()), int(counts.max())
        ratio = hi / lo if lo else math.inf
        stats["imbalance"] = ratio
        if ratio > imbalance:
            worst = int(np.argmin(counts))
            add(
                "imbalance",
                "error",
                f"class imbalance {ratio:.3g} (max/min count; class {worst} has {lo} examples, "
                f"the largest {hi}); rebalance, reweight the loss, or watch per-class metrics",
            )
    errors = [f for f in findings if f[1] == "error"]
    warnings = [f for f in findings if f[1] == "warning"]
    passed = not errors
    if passed:
        reason = "finite, standardized on train, labels in range, classes balanced"
        if warnings:
            reason += f" ({len(warnings)} warning(s))"
    else:
        reason = "; ".join(sorted({f[0] for f in errors})) + " problem(s) found"
    return DataCheckResult(passed, reason, findings, stats)


# ----------------------------------------------------------------------------------------------
# 7. All checks.


@dataclasses.dataclass
class CheckReport:
    """All checks of :func:`run_checks` on one config."""

    passed: bool
    reason: str
    results: dict[str, Any]
    plots: list[Path]

    def report(self) -> str:
        parts = [r.report() for r in self.results.values()]
        if self.plots:
            parts.append("plots: " + ", ".join(str(p) for p in self.plots))
        n_ok = sum(r.passed for r in self.results.values())
        summary = (
            f"SUMMARY: {'PASS' if self.passed else 'FAIL'}: {n_ok}/{len(self.results)} checks "
            f"passed ({', '.join(f'{k} {_mark(r.passed)}' for k, r in self.results.items())})"
        )
        return "\n\n".join([*parts, summary])


def run_checks(
    config: SweepConfig | Mapping[str, Any] | None = None,
    *,
    out_dir: str | Path | None = None,
    checks: Sequence[str] = ("data", "init", "overfit", "lr", "norm", "grads"),
    steps: int = 200,
    overfit_lrs: Sequence[float] | None = None,
    fast: bool = False,
) -> CheckReport:
    """Run the checklist on a config and collect one report ending with a pass/fail summary.

    ``data`` (:func:`data_checks`), ``init`` (:func:`init_report` of the config's architecture
    and init, against ``normal(0.01)`` and ``normal(1.0)`` for reference), ``overfit``
    (:func:`overfit_check`), ``lr`` (:func:`lr_range_test`), ``norm``
    (:func:`normalization_masking`) and ``grads`` (:func:`gradient_health` of the config's own
    trial from the normalization run, with :func:`plot_grad_norms`).

    Args:
      config: a :class:`SweepConfig`, dict or ``None`` (the bundled default).
      out_dir: where PNG plots and ``checks.txt`` go.
      checks: which checks to run.
      steps: training steps of the short runs.
      overfit_lrs: learning rates for the overfit check (default the config's).
      fast: a smaller budget (for smoke tests).
    """
    from jaxtune import config as config_lib

    cfg = config_lib.default_config() if config is None else SweepConfig.from_dict(config)
    base = cfg.base
    if fast:
        steps = min(steps, 60)
    results: dict[str, Any] = {}
    plots: list[Path] = []
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; allowed: {', '.join(CHECKS[1:])}")
    ds = registry.load_data(base) if {"data", "overfit", "norm", "grads"} & set(checks) else None
    if "data" in checks:
        results["data"] = data_checks(ds, num_classes=data_lib.num_classes(ds))
    if "init" in checks:
        default = (256, 256) if base["task.model"] == "mlp" else (16, 32, 64)
        widths = base["task.widths"] or default
        presets = list(dict.fromkeys([base["task.init"], "normal(0.01)", "normal(1.0)"]))
        rep = init_report(
            widths=widths,
            presets=presets,
            activation=base["task.activation"],
            model=base["task.model"],
            normalization=base["task.normalization"],
            check=[base["task.init"]],
            out_dir=out_dir,
        )
        results["init"] = rep
        if rep.plot_path:
            plots.append(rep.plot_path)
    if "overfit" in checks:
        results["overfit"] = overfit_check(
            cfg, steps=100 if fast else 300, lrs=overfit_lrs, dataset=ds
        )
    if "lr" in checks:
        lr = lr_range_test(cfg, steps=steps)
        results["lr"] = lr
        path = plot_lr_find(lr, out_dir=out_dir)
        if path:
            plots.append(path)
    if {"norm", "grads"} & set(checks):
        if "norm" in checks:
            norm = normalization_masking(cfg, steps=steps, dataset=ds)
            results["norm"] = norm
            sweep = norm.result
            mine = base["task.normalization"]
            own = [i for i, nm in enumerate(norm.normalizations) if nm == mine]
        else:  # the config's own trial alone
            sweep = run_sweep(
                cfg.replace(
                    {
                        "train.steps": steps,
                        "train.eval_every": steps,
                        "checkpoint.every": 0,
                        "sweep.method": "list",
                        "sweep.trials": [{}],
                        "sweep.seeds": 1,
                    }
                ),
                dataset=ds,
            )
            own = [0]
        if "grads" in checks:
            results["grads"] = gradient_health(sweep, trials=own)
            if out_dir is not None:
                plots.append(plot_grad_norms(sweep, Path(out_dir) / "grad_norms.png"))
    failed = [k for k, r in results.items() if not r.passed]
    reason = "all checks passed" if not failed else f"failed: {', '.join(failed)}"
    report = CheckReport(not failed, reason, results, plots)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "checks.txt").write_text(report.report() + "\n")
    return report


# ----------------------------------------------------------------------------------------------
# 8. CLI.


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated numbers, e.g. 0.01,0.1,1"
        ) from None


def _load(args: argparse.Namespace) -> SweepConfig:
    from jaxtune.config import load_config

    return load_config(getattr(args, "config", None), getattr(args, "set", None) or [])


def _check_handler(args: argparse.Namespace) -> int:
    what, config = args.what, getattr(args, "config", None)
    if what is not None and what not in CHECKS:
        if config is not None:
            args._check_parser.error(
                f"argument what: invalid choice {what!r} (choose from {', '.join(CHECKS)})"
            )
        what, args.config = "all", what
    what = what or "all"
    cfg = _load(args)
    out = getattr(args, "out", None)
    if what == "all":
        rep = run_checks(
            cfg, out_dir=out, steps=args.steps or 200, overfit_lrs=args.lrs, fast=args.fast
        )
        print(rep.report())
        return 0 if rep.passed else 1
    if what == "overfit":
        r = overfit_check(cfg, steps=args.steps if args.steps else 300, lrs=args.lrs)
    elif what == "init":
        base = cfg.base
        explicit = args.depth is not None
        r = init_report(
            depth=args.depth or 20,
            width=args.width,
            widths=None if explicit else base["task.widths"],
            activation=base["task.activation"],
            model=base["task.model"],
            normalization=base["task.normalization"],
            presets=list(dict.fromkeys([base["task.init"], *DEFAULT_PRESETS])),
            check=[base["task.init"]],
            out_dir=out,
        )
    elif what == "data":
        ds = registry.load_data(cfg.base)
        r = data_checks(ds, num_classes=data_lib.num_classes(ds))
    elif what == "norm":
        r = normalization_masking(cfg, steps=args.steps or 200)
    elif what == "grads":
        rep = run_checks(cfg, out_dir=out, checks=("grads",), steps=args.steps or 200)
        r = rep.results["grads"]
    else:
        r = lr_range_test(cfg, steps=args.steps or 100)
        plot_lr_find(r, out_dir=out)
    print(r.report())
    return 0 if r.passed else 1


def _lr_find_handler(args: argparse.Namespace) -> int:
    cfg = _load(args)
    found = []
    if args.mode in ("classic", "both"):
        found.append(lr_range_test(cfg, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps))
    if args.mode in ("vectorized", "both"):
        lrs = args.lrs or list(np.geomspace(args.min_lr, args.max_lr, args.num_lrs))
        found.append(lr_sweep_test(cfg, lrs=lrs, steps=args.steps))
    for r in found:
        print(r.report())
    path = plot_lr_find(*found, out_dir=getattr(args, "out", None))
    if path:
        print(f"plot: {path}")
    return 0 if all(r.passed for r in found) else 1


def add_subcommands(
    subparsers: Any, add_config_arguments: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add ``check`` and ``lr-find`` to a CLI's subparsers.

    ``jaxtune check [WHAT] [CONFIG]``: ``WHAT`` is one of :data:`CHECKS` (default ``all``); a
    first positional that is not a check name is read as the CONFIG, so ``jaxtune check
    sweep.toml`` and ``jaxtune check overfit sweep.toml`` both work. ``jaxtune lr-find [CONFIG]
    --mode classic|vectorized|both``. Handlers return 0 when the checks pass, 1 otherwise.

    Args:
      subparsers: the object returned by ``ArgumentParser.add_subparsers()``.
      add_config_arguments: adds the optional ``config`` positional, ``--set`` and ``--out``.
    """
    check = subparsers.add_parser(
        "check",
        help="run the tuning checklist (overfit, init, data, grads, norm, lr) on a config",
        description="Run the tuning diagnostics. WHAT is one of: "
        + ", ".join(CHECKS)
        + " (default all). `jaxtune check CONFIG.toml` runs all checks.",
    )
    check.add_argument(
        "what",
        nargs="?",
        metavar="WHAT",
        default=None,
        help=f"which check: {', '.join(CHECKS)} (default all)",
    )
    add_config_arguments(check)
    check.add_argument(
        "--lrs",
        type=_parse_floats,
        default=None,
        help="overfit: comma-separated learning rates tried at once",
    )
    check.add_argument("--steps", type=int, default=None, help="step budget of the short runs")
    check.add_argument("--depth", type=int, default=None, help="init: number of hidden layers")
    check.add_argument("--width", type=int, default=256, help="init: hidden width")
    check.add_argument("--fast", action="store_true", help="all: a smaller budget")
    check.set_defaults(func=_check_handler, _check_parser=check)

    lr = subparsers.add_parser(
        "lr-find", help="suggest a learning rate (LR range test and/or vectorized sweep)"
    )
    add_config_arguments(lr)
    lr.add_argument("--mode", choices=("classic", "vectorized", "both"), default="both")
    lr.add_argument("--min-lr", type=float, default=1e-4)
    lr.add_argument("--max-lr", type=float, default=10.0)
    lr.add_argument("--steps", type=int, default=100)
    lr.add_argument("--num-lrs", type=int, default=11, help="vectorized: number of lrs")
    lr.add_argument(
        "--lrs",
        type=_parse_floats,
        default=None,
        help="vectorized: explicit comma-separated learning rates",
    )
    lr.set_defaults(func=_lr_find_handler)
