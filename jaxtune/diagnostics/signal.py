"""Signal propagation at initialization (checklist item 4), for any task built from Flax linen.

Every ``nn.Dense`` / ``nn.Conv`` call inside the task's ``apply`` is intercepted
(``flax.linen.intercept_methods``): its input is the previous layer's activation (after its
activation function and normalization), and a zero added to its output makes the gradient of the
loss with respect to that zero the backpropagated signal at the layer. One compiled program
serves every initializer preset: only the initial kernels differ, redrawn by
:func:`jaxtune.reinitialize`.

Two subjects: a task (the trial's own model on a real training batch, its own initialization
compared with reference presets), or a synthetic ``depth x width`` MLP/CNN on standard-normal
inputs (``init_report(depth=20, width=256)``), the classic demonstration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtune import initializers as init_lib
from jaxtune import models as models_lib
from jaxtune import tasks as tasks_lib
from jaxtune.data import Splits
from jaxtune.diagnostics.subject import (
    Check,
    Subject,
    figure,
    make_subject,
    require_int,
    savefig,
)
from jaxtune.errors import ConfigError
from jaxtune.formatting import fmt

__all__ = [
    "DEFAULT_PRESETS",
    "InitReport",
    "init_report",
    "layer_records",
    "plot_init_report",
    "robust_std",
    "safe_ratio",
]

DEFAULT_PRESETS = ("he_normal", "glorot_normal", "lecun_normal", "normal(1.0)", "normal(0.01)")
TASK_INIT = "task init"
_LAYERS = (nn.Dense, nn.Conv)


def layer_records(records: list, eps: Sequence[jax.Array] | None = None) -> Any:
    """A context that appends ``(name, input, output)`` of every Dense/Conv call to ``records``.

    With ``eps``, the ``k``-th layer's output gets ``eps[k]`` added.
    """
    count = [0]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, _LAYERS):
            if eps is not None:
                out = out + eps[count[0]]
                count[0] += 1
            records.append((_layer_name(context.module), args[0], out))
        return out

    return nn.intercept_methods(interceptor)


def _layer_name(module: nn.Module) -> str:
    """The module's path in the model (``Block_1/Dense_0``): names alone repeat per block."""
    path = getattr(module, "path", None)
    return "/".join(str(p) for p in path) if path else str(module.name)


def robust_std(a: jax.Array) -> jax.Array:
    """Standard deviation that does not overflow for huge (but finite) values."""
    a = jnp.asarray(a, jnp.float32)
    m = jnp.max(jnp.abs(a))
    m = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    return m * jnp.std(a / m)


def safe_ratio(a: float, b: float) -> float:
    if not math.isfinite(a) or not math.isfinite(b):
        return math.inf
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


@dataclasses.dataclass
class InitReport(Check):
    """Per-layer signal scale at initialization for several initializations.

    ``act_ratio[preset][l]`` is the std of layer ``l``'s activation (the next layer's input; the
    output for the last layer) over ``input_std``, the std of the first layer's input (the task's
    inputs for an MLP or a CNN; for a model of token ids, what its embedding and normalization
    feed the first Dense layer, not the ids); ``grad_ratio[preset][l]`` is the std of the
    backpropagated gradient at layer ``l``'s output over the last hidden layer's.
    ``flags[preset]`` lists the layers whose ratio leaves ``[low, high]``.
    """

    presets: list[str] = dataclasses.field(default_factory=list)
    layers: list[str] = dataclasses.field(default_factory=list)
    input_std: float = math.nan
    act_ratio: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    grad_ratio: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    flags: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    verdict: dict[str, str] = dataclasses.field(default_factory=dict)
    low: float = 0.1
    high: float = 10.0
    checked: list[str] = dataclasses.field(default_factory=list)
    plot_path: Path | None = None

    def lines(self) -> list[str]:
        if not self.layers:
            return []
        step = max(1, len(self.layers) // 10)
        shown = list(range(0, len(self.layers), step))
        if len(self.layers) - 1 not in shown:
            shown.append(len(self.layers) - 1)
        head = "  " + f"{'preset':<14}" + "".join(f"{self.layers[k][-10:]:>11}" for k in shown)
        out = ["  activation std / first layer's input std, per layer:", head]
        out += [
            "  " + f"{p:<14}" + "".join(f"{fmt(self.act_ratio[p][k]):>11}" for k in shown)
            for p in self.presets
        ]
        out += ["  backpropagated gradient std / last hidden layer's, per layer:", head]
        out += [
            "  " + f"{p:<14}" + "".join(f"{fmt(self.grad_ratio[p][k]):>11}" for k in shown)
            for p in self.presets
        ]
        out += [f"  {p}: {self.verdict[p]}" for p in self.presets]
        return out


def _program(task: tasks_lib.Task, hp: dict, params_shape: Any, state: Any, x: Any, y: Any):
    """Layer names and a jitted ``run(params) -> (act_std, delta_std)``."""
    records: list = []
    with layer_records(records):
        jax.eval_shape(lambda p: task.apply(p, state, x, train=True, key=None)[0], params_shape)
    names = [r[0] for r in records]
    shapes = [r[2].shape for r in records]

    def forward(eps, params):
        recs: list = []
        with layer_records(recs, eps):
            outputs, _ = task.apply(params, state, x, train=True, key=None)
        acts = [r[1] for r in recs] + [recs[-1][2]]  # the first layer's input, then each output
        return jnp.sum(task.loss(outputs, y, hp)), jnp.stack([robust_std(a) for a in acts])

    @jax.jit
    def run(params):
        eps = [jnp.zeros(s, jnp.float32) for s in shapes]
        deltas, acts = jax.grad(forward, has_aux=True)(eps, params)
        return acts, jnp.stack([robust_std(d) for d in deltas])

    return names, run


def _synthetic(depth, width, widths, model, activation, normalization, input_dim, batch, seed):
    """The synthetic subject: a ``depth x width`` (or ``widths``) MLP/CNN of
    :mod:`jaxtune.models` on standard-normal inputs and random labels (arguments checked)."""
    if widths is not None:
        widths = [require_int("widths", w) for w in widths]
        if not widths:
            raise ConfigError("widths = [] is invalid: expected one or more integers >= 1")
    else:
        depth = require_int("depth", depth if depth is not None else 20)
        width = require_int("width", width)
    if input_dim is not None:
        input_dim = require_int("input_dim", input_dim)
    widths = tuple(widths) if widths is not None else (int(width),) * int(depth)
    key_x, key_y = jax.random.split(jax.random.PRNGKey(seed))
    shape = (int(input_dim or widths[0]),) if model == "mlp" else (8, 8, 1)
    x = np.asarray(jax.random.normal(key_x, (batch, *shape)))
    y = np.asarray(jax.random.randint(key_y, (batch,), 0, 10), np.int32)
    builder = models_lib.mlp if model == "mlp" else models_lib.cnn
    kw = {"widths": widths} if model == "mlp" else {"channels": widths}
    m = builder(
        num_outputs=10, input_shape=shape, activation=activation, normalization=normalization, **kw
    )
    task = tasks_lib.classification(m, Splits((x, y), (x[:1], y[:1])))
    return task, (x, y)


def init_report(
    config: Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    presets: Sequence[str] = DEFAULT_PRESETS,
    depth: int | None = None,
    width: int = 256,
    widths: Sequence[int] | None = None,
    model: str = "mlp",
    activation: str = "relu",
    normalization: str = "none",
    input_dim: int | None = None,
    batch: int = 256,
    low: float = 0.1,
    high: float = 10.0,
    check: Sequence[str] | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    subject: Subject | None = None,
) -> InitReport:
    """Per-layer activation and gradient scale at initialization, per initialization.

    With a configuration or a task (or ``subject``), the trial's own model is examined on a
    training batch with its loss: ``"task init"`` (the task's own ``init``) against ``presets``
    redrawn with :func:`jaxtune.reinitialize`; ``check`` defaults to the task's own init. With
    ``depth`` (or ``widths``) and no configuration, a synthetic MLP/CNN built with
    :mod:`jaxtune.models` is examined on standard-normal inputs and random labels; ``check``
    defaults to every preset. A layer is flagged when a ratio leaves ``[low, high]``. A task
    without Flax linen Dense/Conv layers is skipped with a reason.

    Example:
      >>> r = init_report(depth=4, width=32, presets=("he_normal",))
      >>> r.passed
      True
    """
    synthetic = subject is None and config is None and task is None
    if synthetic:
        t, (x, y) = _synthetic(
            depth, width, widths, model, activation, normalization, input_dim, batch, seed
        )
        hp, root = {}, jax.random.PRNGKey(seed)
        names_to_check = list(check) if check is not None else list(presets)
        candidates = list(presets)
    else:
        subject = subject or make_subject(config, task=task, optimizer=optimizer)
        t, hp, root = subject.task, subject.hp, subject.key
        x, y = subject.batch(batch)
        candidates = [TASK_INIT, *[p for p in presets if p != TASK_INIT]]
        names_to_check = list(check) if check is not None else [TASK_INIT]
    rep = InitReport(True, "", presets=candidates, low=low, high=high, checked=names_to_check)
    rep.name = "init report"
    params0, state = jax.jit(t.init)(root, hp)
    names, run = _program(t, hp, jax.eval_shape(lambda: params0), state, x, y)
    if not names:
        rep.skipped, rep.reason = True, "no Flax linen Dense/Conv layers to record in task.apply"
        return rep
    rep.layers = names
    key = jax.random.fold_in(root, 7)
    for preset in candidates:
        params = params0 if preset == TASK_INIT else init_lib.reinitialize(params0, preset, key)
        _examine(rep, preset, run(params), low, high)
    failed = [p for p in rep.checked if rep.flags.get(p)]
    rep.passed = not failed
    rep.reason = (
        f"{', '.join(rep.checked)} keep(s) activations and gradients within [{low:g}, {high:g}]x "
        f"over {len(names)} layers"
        if not failed
        else f"signal vanishes or explodes with {', '.join(failed)}"
    )
    if out_dir is not None:
        rep.plot_path = plot_init_report(rep, out_dir=out_dir)
    return rep


def _examine(rep: InitReport, preset: str, measured: Any, low: float, high: float) -> None:
    """Record one preset's activation and gradient scale ratios, flags and verdict."""
    names = rep.layers
    acts, deltas = (np.asarray(a, np.float64) for a in jax.device_get(measured))
    acts = [float(v) if math.isfinite(v) else math.inf for v in acts]
    deltas = [float(v) if math.isfinite(v) else math.inf for v in deltas]
    reference, acts = acts[0], acts[1:]
    if preset == rep.presets[0]:
        rep.input_std = reference
    rep.act_ratio[preset] = [safe_ratio(v, reference) for v in acts]
    ref = deltas[-2] if len(deltas) > 1 else deltas[-1]
    rep.grad_ratio[preset] = [safe_ratio(v, ref) for v in deltas]
    flags = _flags(names, rep.act_ratio[preset], rep.grad_ratio[preset], low, high)
    rep.flags[preset] = flags
    ratios = rep.act_ratio[preset]
    rep.verdict[preset] = (
        f"signal propagates: activation std ratio in [{min(ratios):.3g}, {max(ratios):.3g}] "
        f"over {len(names)} layers"
        if not flags
        else f"{len(flags)} flag(s), first at {flags[0]}"
    )


def _flags(names, act_ratio, grad_ratio, low, high) -> list[str]:
    """The layers whose activation or gradient scale ratio leaves ``[low, high]``. Gradient
    ratios are against the last hidden layer's (the reference, 1 by construction); the output
    layer's gradient is not judged: its scale is the loss's, whatever the initialization."""
    flags = []
    for k, name in enumerate(names):
        a = act_ratio[k]
        g = 1.0 if k == len(names) - 1 else grad_ratio[k]
        if not low <= a <= high:
            flags.append(f"{name}: activation {'explodes' if a > high else 'vanishes'} (x{a:.3g})")
        if not low <= g <= high:
            flags.append(f"{name}: gradient {'explodes' if g > high else 'vanishes'} (x{g:.3g})")
    return flags


def plot_init_report(rep: InitReport, *, out_dir: str | Path | None = None) -> Path | None:
    """Activation and gradient std ratio per layer (log y), one line per initialization."""
    fig, axes = figure(2)
    for p in rep.presets:
        for ax, vals in ((axes[0, 0], rep.act_ratio[p]), (axes[0, 1], rep.grad_ratio[p])):
            v = np.asarray(vals, np.float64)
            ax.plot(
                np.arange(1, len(v) + 1), np.where(np.isfinite(v), v, np.nan), "o-", ms=3, label=p
            )
    for ax, title in (
        (axes[0, 0], "activation std / first layer's input std"),
        (axes[0, 1], "backprop gradient std / last hidden's"),
    ):
        ax.axhspan(rep.low, rep.high, color="green", alpha=0.08)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return savefig(fig, None if out_dir is None else Path(out_dir) / "init_report.png")
