"""The vectorized sweep engine: every trial of a group trains at once in one compiled program.

A *trial* is the base configuration with some keys overridden. Its numeric hyperparameters
(``config.NUMERIC_KEYS``: learning rate, batch size, momentum, clip norm, weight decay, schedule
parameters, init scale, seed) become traced arrays with a leading trial axis; every other key is
*structure* (model, widths, activation, normalization, optimizer and schedule names). Trials that
share a structure form a *group*. A group runs as ``jit(scan(vmap(train_step)))`` over a chunk of
``train.eval_every`` steps, followed by a vmapped evaluation on the test split: one host call per
chunk. Logging, checkpoints and the progress bar run on the host between chunks.

Batch sizes: trials of a group with different batch sizes share one program. Every batch is
gathered at the group's largest batch size and masked (the loss and BatchNorm statistics use only
the real rows), so a trial with batch size ``b`` sees exactly the batches of a solo run with batch
size ``b``. When masking would waste more than half of the gathered rows
(``train.batch_grouping = "auto"``), batch sizes are split into sub-groups; ``"pad"`` and
``"split"`` force either choice. The result's ``timing["groups"]`` reports each program's batch
utilization (real rows / gathered rows).

Divergence: a trial whose loss, gradient norm or update turns non-finite keeps its last finite
state from then on and is marked diverged at that step; vmapped trials never mix, so the other
trials are unaffected bit for bit.

Keys: a trial with seed ``s`` uses ``root = jax.random.PRNGKey(s)`` and
``init_key, data_key, dropout_key = jax.random.split(root, 3)``; the batch at step ``t`` is
``data.batch_indices(data_key, t, batch_size, n_train)`` and the dropout key at step ``t`` is
``jax.random.fold_in(dropout_key, t)``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtune import config as config_lib
from jaxtune import data as data_lib
from jaxtune import models as models_lib
from jaxtune import optimizers as opt_lib
from jaxtune import parallel
from jaxtune import schedules as sched_lib
from jaxtune.config import ConfigError, SweepConfig

__all__ = [
    "SweepResult",
    "TrainState",
    "TrialResult",
    "build_optimizer",
    "build_schedule",
    "run_sweep",
    "scale_kernels",
    "trial_keys",
]

_METRICS = ("train_loss", "grad_norm", "clipped", "learning_rate")
_EVALS = ("test_loss", "test_accuracy")


class TrainState(NamedTuple):
    """Per-trial training state; in a sweep every leaf has a leading trial axis."""

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array  # raw uint32[2] root key of the trial
    diverged: jax.Array  # bool
    diverged_step: jax.Array  # int32, -1 while finite


# ----------------------------------------------------------------------------------------------
# Building blocks from a flat config (structure static, numbers possibly traced).


def build_schedule(flat: Mapping[str, Any], hp: Mapping[str, Any] | None = None) -> Any:
    """The learning rate (number or ``optax.Schedule``) of one trial.

    Args:
      flat: the trial's dotted configuration (structure keys are read from here).
      hp: optional traced numeric values overriding ``flat`` (what the engine passes).
    """
    v = {**flat, **(hp or {})}
    lr = v["optimizer.learning_rate"]
    name = flat["schedule.name"]
    steps = flat["train.steps"]
    if name == "constant":
        return lr
    if name == "step_decay":
        return sched_lib.step_decay(
            lr, v["schedule.decay_rate"], v["schedule.every"], min_value=v["schedule.min_value"]
        )
    if name == "exponential":
        return sched_lib.exponential_decay(
            lr, v["schedule.decay_rate"], v["schedule.every"], min_value=v["schedule.min_value"]
        )
    if name == "cosine":
        return sched_lib.cosine_decay(lr, steps, alpha=v["schedule.alpha"])
    warm = v["schedule.warmup_steps"]
    return sched_lib.warmup(
        sched_lib.cosine_decay(lr, steps - warm, alpha=v["schedule.alpha"]), warm
    )


def build_optimizer(
    flat: Mapping[str, Any], hp: Mapping[str, Any] | None = None, *, use_weight_decay: bool = True
) -> optax.GradientTransformation:
    """The optimizer chain of one trial (see :func:`jaxtune.make_optimizer`)."""
    v = {**flat, **(hp or {})}
    wd = v.get("optimizer.weight_decay", 0.0) if use_weight_decay else 0.0
    return opt_lib.make_optimizer(
        flat["optimizer.name"],
        build_schedule(flat, hp),
        momentum=v.get("optimizer.momentum"),
        clip_norm=v.get("optimizer.clip_norm"),
        weight_decay=wd,
    )


def build_model(
    flat: Mapping[str, Any], ds: data_lib.Dataset, num_classes: int
) -> models_lib.Model:
    """The Flax model a configuration names, for inputs shaped like ``ds.x_train``."""
    common = dict(
        num_outputs=num_classes,
        input_shape=tuple(ds.x_train.shape[1:]),
        activation=flat["task.activation"],
        normalization=flat["task.normalization"],
        init=flat["task.init"],
        dropout=flat["task.dropout"],
    )
    widths = flat["task.widths"]
    if flat["task.model"] == "mlp":
        return models_lib.mlp(widths=widths or (256, 256), **common)
    return models_lib.cnn(channels=widths or (16, 32, 64), pooling=flat["task.pooling"], **common)


def load_task_data(flat: Mapping[str, Any]) -> data_lib.Dataset:
    """The dataset of a configuration (standardized with training statistics)."""
    flat_inputs = flat["task.model"] == "mlp"
    if flat["task.dataset"] == "digits":
        ds = data_lib.load_digits(flat=flat_inputs, test_fraction=flat["task.test_fraction"])
    else:
        kw = {} if flat_inputs else {"image_shape": (8, 8, 1), "num_features": 64}
        ds = data_lib.make_classification(flat=flat_inputs, **kw)
    if flat["task.subset"]:
        n = flat["task.subset"]
        if n > ds.x_train.shape[0]:
            raise ConfigError(
                f"task.subset = {n} is larger than the training set "
                f"({ds.x_train.shape[0]} examples)"
            )
        ds = data_lib.subset(ds, n)
    return ds


def trial_keys(key: jax.Array) -> jax.Array:
    """``init_key, data_key, dropout_key`` of a trial whose root key is ``PRNGKey(seed)``."""
    return jax.random.split(key, 3)


def scale_kernels(params: Any, scale: jax.Array) -> Any:
    """Multiply every ``kernel`` leaf of a Flax params tree by ``scale`` (``task.init_scale``)."""

    def f(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        return leaf * scale if name == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(f, params)


def _all_finite(*xs: jax.Array) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


# ----------------------------------------------------------------------------------------------
# The per-trial programs.


@dataclasses.dataclass(frozen=True)
class _Program:
    """Static description of one compiled group program (hashable)."""

    structure: tuple  # sorted (key, value) pairs of the group's static keys
    batch_size: int | None  # static batch size, or None when padded (then max_batch is used)
    max_batch: int
    use_clip: bool
    use_weight_decay: bool

    @property
    def flat(self) -> dict[str, Any]:
        return dict(self.structure)


def _make_fns(
    prog: _Program, model: models_lib.Model, n_train: int, *, needs_key: bool = True
) -> tuple[Callable, ...]:
    flat = prog.flat

    def optimizer(hp):
        return build_optimizer(flat, hp, use_weight_decay=prog.use_weight_decay)

    def init_one(hp):
        init_key, _, _ = trial_keys(hp["key"])
        params, model_state = model.init(init_key)
        params = scale_kernels(params, hp["task.init_scale"])
        opt_state = optimizer(hp).init(params)
        return TrainState(
            params,
            model_state,
            opt_state,
            hp["key"],
            jnp.asarray(False),
            jnp.asarray(-1, jnp.int32),
        )

    def step_one(state: TrainState, hp, data, step, perms, first_epoch):
        if prog.batch_size is not None:
            idx = data_lib.batch_from_permutations(
                perms, first_epoch, step, prog.batch_size, prog.batch_size
            )
            mask = None
        else:
            idx = data_lib.batch_from_permutations(
                perms, first_epoch, step, hp["train.batch_size"], prog.max_batch
            )
            mask = jnp.arange(prog.max_batch) < hp["train.batch_size"]
        x, y = data.x_train[idx], data.y_train[idx]
        # Only a model with dropout (or a user model, which may have some) needs a key.
        drop_key = jax.random.fold_in(trial_keys(state.key)[2], step) if needs_key else None

        def loss_fn(params):
            logits, new_ms = model.apply(
                params, state.model_state, x, train=True, key=drop_key, mask=mask
            )
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            if mask is None:
                loss = jnp.mean(losses)
            else:
                loss = jnp.sum(jnp.where(mask, losses, 0.0)) / hp["train.batch_size"]
            return loss, new_ms

        (loss, new_ms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        updates, new_opt = optimizer(hp).update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = _all_finite(loss, grad_norm, optax.global_norm(updates))
        ok = finite & ~state.diverged
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        newly = ~finite & ~state.diverged
        new_state = TrainState(
            keep(new_params, state.params),
            keep(new_ms, state.model_state),
            keep(new_opt, state.opt_state),
            state.key,
            state.diverged | ~finite,
            jnp.where(newly, step, state.diverged_step).astype(jnp.int32),
        )
        lr = opt_lib.learning_rate_at(build_schedule(flat, hp), step)
        clipped = grad_norm > hp["optimizer.clip_norm"] if prog.use_clip else jnp.asarray(False)
        metrics = {
            "train_loss": jnp.where(ok, loss, jnp.nan),
            "grad_norm": grad_norm,
            "clipped": clipped,
            "learning_rate": jnp.asarray(lr, jnp.float32),
        }
        return new_state, metrics

    def eval_one(state: TrainState, data):
        logits, _ = model.apply(state.params, state.model_state, data.x_test, train=False)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, data.y_test))
        acc = jnp.mean(jnp.argmax(logits, -1) == data.y_test)
        return {"test_loss": loss, "test_accuracy": acc}

    def init_all(hp):
        # lax.map (a loop inside one program) instead of vmap: vmapped key-dependent
        # initializers take far longer to compile, and init runs once per sweep.
        return jax.lax.map(init_one, hp)

    def epochs_one(state: TrainState, hp, start, *, length):
        # The shuffles of every epoch this chunk touches, computed once per chunk.
        _, data_key, _ = trial_keys(state.key)
        batch = prog.batch_size if prog.batch_size is not None else hp["train.batch_size"]
        first = start // (n_train // batch)
        num = min(math.ceil(length / (n_train // prog.max_batch)) + 1, length)
        return data_lib.epoch_permutations(data_key, first, num, n_train), first

    def chunk_all(state, hp, data, start, *, length):
        perms, first = jax.vmap(lambda s, h: epochs_one(s, h, start, length=length))(state, hp)

        def body(s, step):
            return jax.vmap(step_one, in_axes=(0, 0, None, None, 0, 0))(
                s, hp, data, step, perms, first
            )

        steps = start + jnp.arange(length, dtype=jnp.int32)
        state, metrics = jax.lax.scan(body, state, steps)
        evals = jax.vmap(eval_one, in_axes=(0, None))(state, data)
        return state, metrics, evals

    return init_all, chunk_all


# ----------------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class TrialResult:
    """One trial's outcome (a row of the results table)."""

    id: int
    name: str
    hparams: dict[str, Any]
    final: dict[str, float]
    diverged: bool
    diverged_step: int | None
    best_step: int | None
    best_test_accuracy: float

    def row(self) -> dict[str, Any]:
        out = {"id": self.id, "name": self.name}
        out.update({k: _jsonable(v) for k, v in self.hparams.items()})
        out.update(self.final)
        out.update(
            diverged=self.diverged,
            diverged_step=self.diverged_step,
            best_step=self.best_step,
            best_test_accuracy=self.best_test_accuracy,
        )
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _nan_to_none(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


@dataclasses.dataclass
class SweepResult:
    """Everything a sweep produced.

    Attributes:
      config: the resolved :class:`SweepConfig`.
      trials: one :class:`TrialResult` per trial, in trial-id order.
      history: per-trial arrays: ``train_loss``, ``grad_norm``, ``clipped``, ``learning_rate``
        of shape ``[trials, steps]``, ``test_loss`` and ``test_accuracy`` of shape
        ``[trials, evals]``, and ``eval_step`` of shape ``[evals]``.
      timing: ``compile_s``, ``run_s``, ``trial_steps_per_s`` and per-program details.
    """

    config: SweepConfig
    trials: list[TrialResult]
    history: dict[str, np.ndarray]
    timing: dict[str, Any]
    states: list[tuple[list[int], TrainState]] = dataclasses.field(default_factory=list, repr=False)

    def trial_state(self, trial_id: int) -> TrainState:
        """The final :class:`TrainState` of one trial (params, optimizer and model state).

        Available on the result of :func:`run_sweep` (not on a result read back from disk;
        use :func:`jaxtune.export_trial` for that).
        """
        for ids, state in self.states:
            if trial_id in ids:
                j = ids.index(trial_id)
                return jax.tree.map(lambda a: a[j], state)
        raise ValueError(
            f"trial_id = {trial_id} is invalid: expected a trial id in [0, {len(self.trials)})"
        )

    def table(self) -> list[dict[str, Any]]:
        """The per-trial table, one dict per trial."""
        return [t.row() for t in self.trials]

    def best(self, metric: str = "test_accuracy") -> TrialResult:
        """The non-diverged trial with the best final ``metric`` (max for accuracy, else min)."""
        if metric not in ("train_loss", "test_loss", "test_accuracy"):
            raise ValueError(
                f"metric = {metric!r} is invalid: expected train_loss, test_loss or test_accuracy"
            )
        sign = -1.0 if metric == "test_accuracy" else 1.0
        candidates = [
            t
            for t in self.trials
            if not t.diverged and math.isfinite(t.final.get(metric, math.nan))
        ]
        if not candidates:
            raise ValueError("no trial finished with a finite value of " + metric)
        return min(candidates, key=lambda t: sign * t.final[metric])

    def aggregate(self, over: str = "train.seed") -> list[dict[str, Any]]:
        """Mean, std and a 95% interval of each final metric per setting, across ``over``.

        Trials are grouped by every hyperparameter except ``over``. The interval is the Student-t
        interval of the mean (``mean +- t_{0.975, n-1} * std / sqrt(n)``).
        """
        from scipy import stats

        groups: dict[tuple, list[TrialResult]] = {}
        for t in self.trials:
            key = tuple((k, _freeze(v)) for k, v in t.hparams.items() if k != over)
            groups.setdefault(key, []).append(t)
        rows = []
        for key, members in groups.items():
            row: dict[str, Any] = {k: _jsonable(v) for k, v in key}
            row["n"] = len(members)
            row["diverged"] = sum(m.diverged for m in members)
            for metric in ("train_loss", "test_loss", "test_accuracy"):
                vals = np.array([m.final[metric] for m in members], dtype=np.float64)
                mean = float(np.mean(vals))
                std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                half = (
                    float(stats.t.ppf(0.975, len(vals) - 1) * std / math.sqrt(len(vals)))
                    if len(vals) > 1
                    else math.nan
                )
                row[metric] = {"mean": mean, "std": std, "ci95": (mean - half, mean + half)}
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "trials": [
                {
                    "id": t.id,
                    "name": t.name,
                    "hparams": {k: _jsonable(v) for k, v in t.hparams.items()},
                    "final": {k: _nan_to_none(v) for k, v in t.final.items()},
                    "diverged": t.diverged,
                    "diverged_step": t.diverged_step,
                    "best_step": t.best_step,
                    "best_test_accuracy": _nan_to_none(t.best_test_accuracy),
                }
                for t in self.trials
            ],
            "timing": self.timing,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``results.json``, ``results.csv`` and ``history.npz`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(d / "results.json", json.dumps(self.to_json(), indent=2, default=_jsonable))
        rows = self.table()
        fields = list(dict.fromkeys(k for r in rows for k in r))
        tmp = d / "results.csv.tmp"
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(d / "results.csv")
        tmp = d / "history.tmp.npz"
        np.savez_compressed(tmp, **self.history)
        tmp.replace(d / "history.npz")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> SweepResult:
        """Read a result written by :meth:`save`."""
        d = Path(directory)
        blob = json.loads((d / "results.json").read_text())
        cfg = SweepConfig.from_dict(blob["config"])
        trials = []
        for t in blob["trials"]:
            hparams = {k: _freeze(v) for k, v in t["hparams"].items()}
            final = {k: (math.nan if v is None else v) for k, v in t["final"].items()}
            best_acc = t.get("best_test_accuracy")
            trials.append(
                TrialResult(
                    t["id"],
                    t["name"],
                    hparams,
                    final,
                    t["diverged"],
                    t["diverged_step"],
                    t.get("best_step"),
                    math.nan if best_acc is None else best_acc,
                )
            )
        history: dict[str, np.ndarray] = {}
        if (d / "history.npz").exists():
            with np.load(d / "history.npz") as z:
                history = {k: z[k] for k in z.files}
        return cls(cfg, trials, history, blob.get("timing", {}))


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Planning: trials -> groups -> compiled calls.


@dataclasses.dataclass
class _Group:
    """Trials that share one compiled program (same structure and batch bucket)."""

    program: _Program
    members: list[int]  # trial ids, in order
    trials: list[dict[str, Any]]  # their full flat configs
    info: dict[str, Any]


@dataclasses.dataclass
class _Unit:
    """One compiled call: a contiguous slice of a group's trials, padded to the call size."""

    group: int
    program: _Program
    offset: int  # position of the first trial within the group's members
    trial_ids: list[int]  # real trials, in order; the call holds padding copies after them
    size: int  # trials per call including padding (a multiple of the device count)
    hp: dict[str, jax.Array]
    init: Any = None
    chunk: dict[int, Any] = dataclasses.field(default_factory=dict)  # length -> compiled
    state: Any = None


def _structure_of(flat: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in flat.items() if k not in config_lib.NUMERIC_KEYS))


def _batch_buckets(sizes: Sequence[int], mode: str) -> list[list[int]]:
    """Split distinct batch sizes into sub-groups that share one padded program."""
    distinct = sorted(set(sizes), reverse=True)
    if mode == "pad" or len(distinct) == 1:
        return [distinct]
    if mode == "split":
        return [[b] for b in distinct]
    counts = {b: sizes.count(b) for b in distinct}
    buckets: list[list[int]] = []
    for b in distinct:
        if buckets:
            cur = buckets[-1] + [b]
            used = sum(counts[c] * c for c in cur)
            gathered = sum(counts[c] for c in cur) * cur[0]
            if used / gathered >= 0.5:
                buckets[-1] = cur
                continue
        buckets.append([b])
    return buckets


def _hp_numpy(trials: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    # Built with numpy, so a new trial count compiles nothing on the host side.
    hp: dict[str, np.ndarray] = {}
    for key in config_lib.NUMERIC_KEYS:
        values = [t[key] for t in trials]
        if key == "train.seed":
            hp["key"] = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in values])
        elif key == "train.batch_size":
            hp[key] = np.asarray(values, np.int32)
        elif any(v is None for v in values):
            continue  # structurally absent (momentum or clip norm unset)
        else:
            hp[key] = np.asarray(values, np.float32)
    return hp


def _pad_trials(tree: Any, size: int) -> Any:
    """Pad the leading trial axis to ``size`` with copies of the first trial."""

    def pad(a):
        a = np.asarray(a)
        extra = size - a.shape[0]
        return a if extra == 0 else np.concatenate([a, np.repeat(a[:1], extra, axis=0)])

    return jax.tree.map(pad, tree)


def _mesh(setting: Any) -> jax.sharding.Mesh:
    devices = jax.devices()
    k = len(devices) if setting in ("all", "auto") else int(setting)
    if k > len(devices):
        raise ConfigError(
            f"parallel.devices = {k} is invalid: expected 'all' or an integer in "
            f"[1, {len(devices)}] ({len(devices)} {jax.default_backend()} devices available)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:k]), ("trials",))


def _trial_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trials"))


class _Plan(NamedTuple):
    trials: list[dict[str, Any]]  # full flat config per trial
    hparams: list[dict[str, Any]]
    names: list[str]
    groups: list[_Group]
    units: list[_Unit]
    mesh: jax.sharding.Mesh

    @property
    def group_info(self) -> list[dict[str, Any]]:
        return [g.info for g in self.groups]


def _plan(
    cfg: SweepConfig, n_train: int, max_per_call: int | None, mesh: jax.sharding.Mesh
) -> _Plan:
    overrides = config_lib.expand_trials(cfg)
    if not overrides:
        raise ConfigError("the search space is empty: the sweep has no trials")
    trials = [{**cfg.base, **o} for o in overrides]
    varying = list(dict.fromkeys(k for o in overrides for k in o))
    hparams = [{k: t[k] for k in varying} for t in trials]
    names = [f"{i:03d}-{config_lib.trial_name(h)}" for i, h in enumerate(hparams)]
    for t in trials:
        if t["train.batch_size"] > n_train:
            raise ConfigError(
                f"train.batch_size = {t['train.batch_size']} is larger than the training set "
                f"({n_train} examples): expected an integer in [1, {n_train}]"
            )
    by_structure: dict[tuple, list[int]] = {}
    for i, t in enumerate(trials):
        key = (
            _structure_of(t),
            t["optimizer.momentum"] is None,
            t["optimizer.clip_norm"] is None,
        )
        by_structure.setdefault(key, []).append(i)
    groups: list[_Group] = []
    for (structure, _, no_clip), ids in by_structure.items():
        sizes = [trials[i]["train.batch_size"] for i in ids]
        use_wd = any(trials[i]["optimizer.weight_decay"] != 0.0 for i in ids)
        for bucket in _batch_buckets(sizes, cfg.base["train.batch_grouping"]):
            members = [i for i in ids if trials[i]["train.batch_size"] in bucket]
            prog = _Program(
                structure=structure,
                batch_size=None if len(bucket) > 1 else bucket[0],
                max_batch=bucket[0],
                use_clip=not no_clip,
                use_weight_decay=use_wd,
            )
            used = sum(trials[i]["train.batch_size"] for i in members)
            info = {
                "trials": len(members),
                "batch_sizes": sorted(bucket),
                "gathered_batch": bucket[0],
                "batch_utilization": used / (len(members) * bucket[0]),
                "structure": {k: _jsonable(v) for k, v in structure if _varies(k, trials)},
            }
            groups.append(_Group(prog, members, [trials[i] for i in members], info))
    units = _split_units(groups, max_per_call, mesh)
    return _Plan(trials, hparams, names, groups, units, mesh)


def _split_units(
    groups: Sequence[_Group], max_per_call: int | None, mesh: jax.sharding.Mesh
) -> list[_Unit]:
    k = mesh.size
    sharding = _trial_sharding(mesh)
    units = []
    for g, group in enumerate(groups):
        n = len(group.members)
        per_call = max_per_call or n
        n_calls = math.ceil(n / per_call)
        size = math.ceil(n / n_calls)
        size = math.ceil(size / k) * k
        n_calls = math.ceil(n / size)
        hp_all = _hp_numpy(group.trials)
        for c in range(n_calls):
            lo, hi = c * size, min((c + 1) * size, n)
            hp = _pad_trials(jax.tree.map(lambda a: a[lo:hi], hp_all), size)
            hp = parallel.put(hp, sharding)
            units.append(_Unit(g, group.program, lo, group.members[lo:hi], size, hp))
        group.info["calls"] = n_calls
        group.info["trials_per_call"] = size
        group.info["padding_trials"] = n_calls * size - n
    return units


def _group_states(plan: _Plan) -> list[Any]:
    """Host copies of each group's state, stacked over its real trials in member order."""
    out = []
    for g in range(len(plan.groups)):
        parts = [
            jax.tree.map(lambda a, u=u: np.asarray(a)[: len(u.trial_ids)], parallel.gather(u.state))
            for u in plan.units
            if u.group == g
        ]
        out.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
    return out


def _scatter_states(plan: _Plan, group_states: Sequence[Any]) -> None:
    """Give every unit its slice of the groups' states (padded, sharded over the mesh)."""
    sharding = _trial_sharding(plan.mesh)
    for unit in plan.units:
        part = jax.tree.map(
            lambda a, u=unit: np.asarray(a)[u.offset : u.offset + len(u.trial_ids)],
            group_states[unit.group],
        )
        unit.state = parallel.put(_pad_trials(part, unit.size), sharding)


def _group_templates(plan: _Plan, init_fns: Sequence[Callable]) -> list[Any]:
    return [
        jax.eval_shape(init_fns[g], _hp_numpy(group.trials)) for g, group in enumerate(plan.groups)
    ]


def _varies(key: str, trials: Sequence[Mapping[str, Any]]) -> bool:
    return len({_freeze(t[key]) if isinstance(t[key], list) else t[key] for t in trials}) > 1


# ----------------------------------------------------------------------------------------------
# Running.


class SweepCallback:
    """Hooks called on the host between compiled chunks. Subclass and override what you need."""

    def on_start(self, info: dict[str, Any]) -> None:
        """``info`` has ``names``, ``hparams``, ``steps``, ``num_trials``, ``out_dir``, ...."""

    def on_chunk(self, start: int, stop: int, history: dict[str, np.ndarray]) -> None:
        """Steps ``[start, stop)`` are done; ``history`` holds all metrics up to ``stop``."""

    def on_end(self, result: SweepResult) -> None:
        """The sweep finished (or stopped); ``result`` is final."""


def _device_memory_budget(mesh: jax.sharding.Mesh) -> int:
    """Bytes one call may use on each device of the mesh."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    dev = local[0] if local else jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] * 0.8)
    import psutil

    return int(psutil.virtual_memory().available * 0.5 / mesh.size)


def _memory_bytes(compiled: Any) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def _compile_unit(
    unit: _Unit,
    model: models_lib.Model,
    model_key: Any,
    data: data_lib.Dataset,
    lengths: Sequence[int],
    mesh: jax.sharding.Mesh,
    cache: dict,
) -> float:
    """Compile the unit's init and chunk programs (cached by shape); returns seconds spent."""
    t0 = time.perf_counter()
    n_train = int(data.x_train.shape[0])
    key = (
        unit.program,
        unit.size,
        jax.tree.map(lambda a: (a.shape, a.dtype), data),
        tuple(d.id for d in mesh.devices.flat),
        model_key,
    )
    if key not in cache:
        needs_key = model_key[0] == "user" or unit.program.flat.get("task.dropout", 0.0) > 0
        fns = _make_fns(unit.program, model, n_train, needs_key=needs_key)
        cache[key] = {"fns": fns, "model": model}
    entry = cache[key]
    init_all, chunk_all = entry["fns"]
    trial_sh = _trial_sharding(mesh)
    if "init" not in entry:
        entry["init"] = jax.jit(init_all, out_shardings=trial_sh).lower(unit.hp).compile()
    unit.init = entry["init"]
    state_shape = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=trial_sh),
        jax.eval_shape(init_all, unit.hp),
    )
    step_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "trials"))
    for length in lengths:
        if length not in entry:
            fn = jax.jit(
                chunk_all,
                static_argnames="length",
                donate_argnums=0,
                out_shardings=(trial_sh, step_sh, trial_sh),
            )
            entry[length] = fn.lower(
                state_shape, unit.hp, data, np.int32(0), length=length
            ).compile()
        unit.chunk[length] = entry[length]
    return time.perf_counter() - t0


#: Compiled programs by (program, trials per call, data shapes, devices, model). Lets a second
#: sweep of the same shapes reuse the compiled code instead of compiling again.
_COMPILED: dict = {}


def run_sweep(
    config: SweepConfig | Mapping[str, Any] | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[SweepCallback] = (),
    model: models_lib.Model | None = None,
    dataset: data_lib.Dataset | None = None,
    verbose: bool = False,
) -> SweepResult:
    """Train every trial of a sweep, vectorized per group, and collect the results.

    Args:
      config: a :class:`SweepConfig`, a dict of sections/dotted keys, or ``None`` for the
        bundled default sweep.
      out_dir: where results and checkpoints (``<out_dir>/checkpoints``, when
        ``checkpoint.every > 0``) are written.
      resume: continue from the latest intact checkpoint in ``out_dir``.
      callbacks: host-side hooks (progress bars, TensorBoard logging).
      model: a user :class:`jaxtune.models.Model` replacing ``task.model`` for every trial.
      dataset: a user :class:`jaxtune.data.Dataset` replacing ``task.dataset``.
      verbose: print what the engine chose (groups, trials per call, devices).

    Returns:
      A :class:`SweepResult`.

    Example:
      >>> import jaxtune
      >>> result = jaxtune.run_sweep({
      ...     "task": {"dataset": "synthetic", "widths": [16]},
      ...     "train": {"steps": 20, "eval_every": 10, "batch_size": 32},
      ...     "sweep": {"grid": {"optimizer.learning_rate": [0.01, 0.1]}},
      ... })
      >>> len(result.trials)
      2
    """
    from jaxtune import checkpoint as ckpt_lib

    cfg = config_lib.default_config() if config is None else SweepConfig.from_dict(config)
    base = cfg.base
    parallel.initialize(base)
    if not parallel.is_primary():
        callbacks = ()  # results, logs and plots are written by process 0
    if resume and (out_dir is None or base["checkpoint.every"] == 0):
        raise ConfigError("resume needs an output directory and checkpoint.every > 0")
    ctx = _prepare(cfg, model=model, dataset=dataset, compile_programs=True)
    parallel.barrier("jaxtune-compiled")
    plan, data = ctx.plan, ctx.data
    steps, eval_every = base["train.steps"], base["train.eval_every"]
    n = len(plan.trials)
    history = _empty_history(n, steps)
    start_step = 0
    ckpt = None
    if out_dir is not None and base["checkpoint.every"] > 0:
        ckpt = ckpt_lib.SweepCheckpointer(Path(out_dir) / "checkpoints", cfg, resume=resume)
    restored = None
    if ckpt is not None and resume:
        restored = ckpt.restore_latest(_group_templates(plan, ctx.init_fns))
    if restored is not None:
        start_step, group_states, history = restored
        _scatter_states(plan, group_states)
    else:
        for unit in plan.units:
            unit.state = unit.init(unit.hp)

    info = {
        "names": plan.names,
        "hparams": plan.hparams,
        "steps": steps,
        "num_trials": n,
        "out_dir": None if out_dir is None else str(out_dir),
        "start_step": start_step,
        "groups": plan.group_info,
        "devices": plan.mesh.size,
    }
    if verbose:
        _describe(plan)
    for cb in callbacks:
        cb.on_start(info)

    interrupted = False
    t_run = time.perf_counter()
    step = last_ckpt = start_step
    every = base["checkpoint.every"]
    with _deferred_interrupt() as stop_requested:
        try:
            while step < steps and not stop_requested():
                length = min(eval_every, steps - step)
                outs = []
                for unit in plan.units:
                    unit.state, metrics, evals = unit.chunk[length](
                        unit.state, unit.hp, data, np.int32(step)
                    )
                    outs.append((metrics, evals))
                history = _record(history, plan.units, parallel.gather(outs), step, length)
                step += length
                for cb in callbacks:
                    cb.on_chunk(step - length, step, history)
                if ckpt is not None and (step // every > last_ckpt // every or step == steps):
                    ckpt.save(step, _group_states(plan), history)
                    last_ckpt = step
        except KeyboardInterrupt:  # raised by a callback; the state is consistent at `step`
            interrupted = True
        interrupted = interrupted or stop_requested()
        if interrupted and ckpt is not None and step > last_ckpt:
            ckpt.save(step, _group_states(plan), history)
    if ckpt is not None:
        ckpt.close()
    run_s = time.perf_counter() - t_run
    done_steps = (step - start_step) * n
    timing = {
        "compile_s": ctx.compile_s,
        "run_s": run_s,
        "trial_steps_per_s": done_steps / run_s if run_s > 0 else math.nan,
        "steps_done": step,
        "interrupted": interrupted,
        "groups": plan.group_info,
        "backend": jax.default_backend(),
        "devices": plan.mesh.size,
        "trials_per_call": ctx.choice,
    }
    div_steps: list[int | None] = [None] * n
    for unit in plan.units:
        ds_ = np.asarray(parallel.gather(unit.state.diverged_step))
        for j, i in enumerate(unit.trial_ids):
            div_steps[i] = int(ds_[j]) if ds_[j] >= 0 else None
    result = _result(cfg, plan, history, timing, steps, div_steps)
    multi = jax.process_count() > 1
    result.states = [
        (u.trial_ids, parallel.gather(u.state) if multi else u.state) for u in plan.units
    ]
    if out_dir is not None and parallel.is_primary():
        result.save(out_dir)
    for cb in callbacks:
        cb.on_end(result)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _empty_history(n: int, steps: int) -> dict[str, np.ndarray]:
    return {
        "train_loss": np.full((n, steps), np.nan, np.float32),
        "grad_norm": np.full((n, steps), np.nan, np.float32),
        "clipped": np.zeros((n, steps), bool),
        "learning_rate": np.full((n, steps), np.nan, np.float32),
        "eval_step": np.zeros((0,), np.int32),
        "test_loss": np.zeros((n, 0), np.float32),
        "test_accuracy": np.zeros((n, 0), np.float32),
    }


class _Context(NamedTuple):
    plan: _Plan
    data: data_lib.Dataset
    init_fns: list[Callable]  # per group: init_all(hp) for templates
    compile_s: float
    choice: str  # what decided the trials per call


def _prepare(
    cfg: SweepConfig,
    *,
    model: models_lib.Model | None,
    dataset: data_lib.Dataset | None,
    compile_programs: bool,
) -> _Context:
    base = cfg.base
    ds = dataset if dataset is not None else load_task_data(base)
    data_lib.validate_dataset(ds)
    num_classes = int(max(np.max(ds.y_train), np.max(ds.y_test))) + 1
    if model is not None and getattr(model, "num_outputs", None) is not None:
        num_classes = max(num_classes, int(model.num_outputs))
    n_train = int(ds.x_train.shape[0])
    steps, eval_every = base["train.steps"], base["train.eval_every"]
    lengths = sorted({min(eval_every, steps), (steps % eval_every) or min(eval_every, steps)})
    mesh = _mesh(base["parallel.devices"])
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = parallel.put(jax.tree.map(np.asarray, ds), replicated)
    mtpc = base["train.max_trials_per_call"]
    # "auto" first compiles calls of at most _PROBE_TRIALS per device: its memory analysis
    # decides the final size, which is usually this same size, so nothing compiles twice.
    probe = _PROBE_TRIALS * mesh.size
    plan = _plan(cfg, n_train, probe if mtpc == "auto" else mtpc, mesh)
    models: dict[tuple, models_lib.Model] = {}

    def model_for(prog: _Program) -> tuple[models_lib.Model, Any]:
        # A model built from the config is identified by what it was built from, so a later
        # sweep of the same structure finds its compiled programs; a user model by identity.
        if model is not None:
            return model, ("user", id(model))
        key = ("config", prog.structure, tuple(ds.x_train.shape[1:]), num_classes)
        if key not in models:
            models[key] = build_model(prog.flat, ds, num_classes)
        return models[key], key

    init_fns = [_make_fns(g.program, model_for(g.program)[0], n_train)[0] for g in plan.groups]
    choice = "all trials of a group in one call" if mtpc == "auto" else f"fixed at {mtpc}"
    compile_s = 0.0
    if compile_programs:
        for unit in plan.units:
            compile_s += _compile_unit(
                unit, *model_for(unit.program), data, lengths, mesh, _COMPILED
            )
        if mtpc == "auto":
            plan, more, choice = _fit_memory(cfg, plan, n_train, model_for, data, lengths, probe)
            compile_s += more
    return _Context(plan, data, init_fns, compile_s, choice)


def restore_states(
    cfg: SweepConfig, checkpoint_dir: str | Path
) -> tuple[list[Any], list[list[int]]]:
    """The latest intact checkpointed state of each group, with the trial ids of each group."""
    from jaxtune import checkpoint as ckpt_lib

    ctx = _prepare(cfg, model=None, dataset=None, compile_programs=False)
    ckpt = ckpt_lib.SweepCheckpointer(checkpoint_dir, cfg, resume=True)
    try:
        restored = ckpt.restore_latest(_group_templates(ctx.plan, ctx.init_fns))
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no intact checkpoint in {checkpoint_dir}")
    return restored[1], [g.members for g in ctx.plan.groups]


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a request to stop at the next chunk boundary.

    A chunk's update of every trial's state is then never cut in half, so the final checkpoint
    is consistent. A second Ctrl-C interrupts at once.
    """
    requested = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("\nstopping after the current chunk (Ctrl-C again to abort now)", flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


def _last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=default)


#: Trials per device of the first compiled call of ``train.max_trials_per_call = "auto"``.
_PROBE_TRIALS = 8


def _fit_memory(cfg, plan, n_train, model_for, data, lengths, probe):
    """Choose the trials per call of ``train.max_trials_per_call = "auto"``.

    Each call must fit the device's memory (the compiled program's memory analysis, scaled per
    trial, against the device's limit). On CPU devices a call is also kept within half the
    last-level cache: a group whose per-step working set spills out of the cache runs slower
    in one call than in several (benchmarks/sweep_throughput.py measured 8 trials per call as
    the fastest for the digits MLP on a 2-core CPU with a 32 MiB cache, one call for a small
    MLP). ``plan`` was compiled with calls of at most ``probe`` trials.
    """
    k = plan.mesh.size
    per_trial = max(_memory_bytes(u.chunk[max(lengths)]) / max(u.size // k, 1) for u in plan.units)
    budget = _device_memory_budget(plan.mesh)
    limit = max(1, int(budget // max(per_trial, 1)))
    reason = f"the {budget / 2**20:.0f} MiB per-device memory budget"
    if jax.default_backend() == "cpu":
        cache = _last_level_cache_bytes()
        fits = 2 ** int(math.log2(max(1, int(cache / 2 // max(per_trial, 1)))))
        if fits < limit:
            limit, reason = fits, f"half the {cache / 2**20:.0f} MiB last-level CPU cache"
    largest = max(len(g.members) for g in plan.groups)
    want = None if math.ceil(largest / k) <= limit else limit * k  # None: one call per group
    have = probe if largest > probe else None
    per_device = min(limit, math.ceil(largest / k))
    choice = (
        f"auto: up to {per_device} trials per call on each of {k} device(s) "
        f"(~{per_trial * per_device / 2**20:.1f} MiB each, within {reason})"
    )
    if want == have:
        return plan, 0.0, choice
    plan = _plan(cfg, n_train, want, plan.mesh)
    extra = 0.0
    for unit in plan.units:
        extra += _compile_unit(unit, *model_for(unit.program), data, lengths, plan.mesh, _COMPILED)
    return plan, extra, choice


def _describe(plan: _Plan) -> None:
    print(f"devices: {plan.mesh.size} x {jax.default_backend()}")
    for g in plan.group_info:
        print(
            f"group: {g['trials']} trials, {g['calls']} call(s) of {g['trials_per_call']}, "
            f"batch sizes {g['batch_sizes']} gathered at {g['gathered_batch']} "
            f"(utilization {g['batch_utilization']:.0%}) {g['structure'] or ''}"
        )


def _record(history, units, outs, start, length):
    history = dict(history)
    stop = start + length
    test = {k: np.full((history["test_loss"].shape[0],), np.nan, np.float32) for k in _EVALS}
    for unit, (metrics, evals) in zip(units, outs, strict=True):
        ids = np.asarray(unit.trial_ids)
        k = len(ids)
        for name in _METRICS:
            history[name][ids, start:stop] = np.asarray(metrics[name])[:, :k].T
        for name in _EVALS:
            test[name][ids] = np.asarray(evals[name])[:k]
    history["eval_step"] = np.append(history["eval_step"], np.int32(stop))
    for name in _EVALS:
        history[name] = np.concatenate([history[name], test[name][:, None]], axis=1)
    return history


def _result(cfg, plan, history, timing, steps, div_step) -> SweepResult:
    trials = []
    eval_every = cfg.base["train.eval_every"]
    for i, name in enumerate(plan.names):
        losses = history["train_loss"][i]
        window = losses[max(0, steps - eval_every) : steps]
        acc = history["test_accuracy"][i]
        finite_acc = np.where(np.isfinite(acc), acc, -np.inf)
        best = int(np.argmax(finite_acc)) if acc.size else None
        final = {
            "train_loss": float(np.mean(window)) if window.size else math.nan,
            "test_loss": float(history["test_loss"][i, -1]) if acc.size else math.nan,
            "test_accuracy": float(acc[-1]) if acc.size else math.nan,
        }
        trials.append(
            TrialResult(
                id=i,
                name=name,
                hparams=plan.hparams[i],
                final=final,
                diverged=div_step[i] is not None,
                diverged_step=div_step[i],
                best_step=int(history["eval_step"][best]) if best is not None else None,
                best_test_accuracy=float(acc[best]) if best is not None else math.nan,
            )
        )
    return SweepResult(cfg, trials, history, timing)
