"""A validated sweep: the base configuration and its search space."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from jaxtune import registry
from jaxtune.config import space as space_lib
from jaxtune.config.dotted import dotted, nested
from jaxtune.config.schema import KEYS, check_value, is_hparam, unknown
from jaxtune.errors import ConfigError

__all__ = [
    "SweepConfig",
    "check_same",
    "config_hash",
    "determines_results",
    "diff_configs",
    "expand_trials",
]

_SWEEP_KEYS = ("method", "strategy", "num_trials", "seeds", "seed", "grid", "space", "trials")


def _base_keys(d: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted base keys of nested sections (the ``sweep`` table left out)."""
    tables = {k: v for k, v in d.items() if k != "sweep" and not k.startswith("sweep.")}
    return dotted(tables, leaves=KEYS)


def _check_select(base: Mapping[str, Any]) -> None:
    metric = base["select.metric"]
    if metric is not None and not metric.startswith("valid."):
        raise ConfigError(
            f"select.metric = {metric!r} is invalid: hyperparameters are chosen on the "
            "validation split; expected 'valid.loss' or 'valid.<metric>' (test metrics are "
            "reported beside, never used to choose)"
        )


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: the base configuration and the search space.

    Attributes:
      base: every key of :data:`jaxtune.config.KEYS` (and every ``hparams.*`` key) with its
        value for the base trial.
      method: ``grid``, ``random``, ``quasi_random`` or ``list``.
      grid: for ``grid``, dotted key -> values (cartesian product, in order).
      space: for ``random``/``quasi_random``, dotted key -> distribution spec
        (``{"distribution": "log_uniform", "low": 1e-3, "high": 1.0}``, ``uniform``,
        ``int_uniform`` or ``{"choice": [...]}``).
      trials: for ``list``, explicit trial overrides.
      num_trials: number of points for ``random``/``quasi_random``.
      seeds: each setting is repeated with ``train.seed + 0 .. seeds - 1``.
      seed: seed of the random / quasi-random sampler (and of an adaptive strategy's choices).
      strategy: how the trials are trained: ``all`` (every trial to the end), ``halving``,
        ``hyperband``, ``pbt`` or ``optuna`` (:data:`jaxtune.registry.STRATEGIES`).

    Example:
      >>> cfg = SweepConfig.from_dict({
      ...     "hparams": {"label_smoothing": 0.0},
      ...     "sweep": {"grid": {"hparams.label_smoothing": [0.0, 0.1]}},
      ... })
      >>> [t["hparams.label_smoothing"] for t in expand_trials(cfg)]
      [0.0, 0.1]
    """

    base: Mapping[str, Any]
    method: str = "grid"
    grid: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    space: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    trials: tuple = ()
    num_trials: int | None = None
    seeds: int = 1
    seed: int = 0
    strategy: str = "all"

    def __getitem__(self, key: str) -> Any:
        if key not in self.base:
            raise unknown(key, list(self.base))
        return self.base[key]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SweepConfig) -> SweepConfig:
        """Build from nested sections (``{"optimizer": {"name": ...}}``) or dotted keys."""
        if isinstance(d, SweepConfig):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
        base = {k: spec.default for k, spec in KEYS.items()}
        for key, value in _base_keys(d).items():
            base[key] = check_value(key, value)
        _check_select(base)
        sweep = dict(d.get("sweep", {}))
        for k, v in d.items():
            if k.startswith("sweep."):
                sweep[k[len("sweep.") :]] = v
        for k in sweep:
            if k not in _SWEEP_KEYS:
                raise unknown(k, list(_SWEEP_KEYS), "sweep key")
        method = sweep.get("method", _default_method(sweep))
        if method not in space_lib.METHODS:
            raise ConfigError(
                f"sweep.method = {method!r} is invalid: expected one of {space_lib.METHODS}"
            )
        seeds = sweep.get("seeds", 1)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"sweep.seeds = {seeds!r} is invalid: expected an integer >= 1")
        sampler_seed = sweep.get("seed", 0)
        if isinstance(sampler_seed, bool) or not isinstance(sampler_seed, int) or sampler_seed < 0:
            raise ConfigError(f"sweep.seed = {sampler_seed!r} is invalid: expected an integer >= 0")
        grid = space_lib.check_grid(sweep.get("grid", {}), base)
        space = space_lib.check_space(sweep.get("space", {}), base)
        trials = space_lib.check_trials(sweep.get("trials", []), base)
        num_trials = sweep.get("num_trials")
        strategy = sweep.get("strategy", "all")
        if strategy == "optuna" and method in ("random", "quasi_random"):
            num_trials = _optuna_trials(base, num_trials)
        if method in ("random", "quasi_random"):
            if not space:
                raise ConfigError(f"sweep.method = {method!r} needs a non-empty sweep.space table")
            if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
                raise ConfigError(
                    f"sweep.num_trials = {num_trials!r} is invalid: expected an integer >= 1 "
                    f"for method {method!r}"
                )
        elif method == "grid" and space:
            raise ConfigError(
                "sweep.space is only used by methods 'random' and 'quasi_random' (and by "
                "sweep.strategy = 'optuna'): set sweep.method, or list the values in sweep.grid"
            )
        if method == "list" and not trials:
            raise ConfigError("sweep.method = 'list' needs a non-empty sweep.trials list")
        _check_unused_tables(method, grid, trials, num_trials, strategy)
        if strategy not in registry.STRATEGIES:
            raise ConfigError(
                f"sweep.strategy = {strategy!r} is invalid: expected one of "
                f"{', '.join(registry.STRATEGIES)}"
            )
        cfg = cls(base, method, grid, space, trials, num_trials, seeds, sampler_seed, strategy)
        _check_strategy(cfg)
        for overrides in expand_trials(cfg):
            merged = {**cfg.base, **overrides}
            if merged["optimizer.name"] == "adagrad" and merged["optimizer.momentum"] is not None:
                raise ConfigError(
                    "optimizer.momentum must be null (unset) for optimizer.name = 'adagrad'"
                )
            warm, steps = merged["schedule.warmup_steps"], merged["train.steps"]
            if merged["schedule.name"] == "warmup_cosine" and warm >= steps:
                raise ConfigError(
                    f"schedule.warmup_steps = {warm} is invalid for schedule.name = "
                    f"'warmup_cosine': expected an integer in [0, train.steps) = [0, {steps})"
                )
        if cfg.base["task.dataset"] == "synthetic":
            for key in ("task.valid_fraction", "task.test_fraction"):
                if cfg.base[key] != KEYS[key].default:
                    raise ConfigError(
                        f"{key} = {cfg.base[key]} has no effect with task.dataset = "
                        "'synthetic' (its splits have fixed sizes): leave it at its default "
                        f"({KEYS[key].default})"
                    )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Nested sections (JSON/TOML friendly) that :meth:`from_dict` reads back."""
        out = nested({k: space_lib.plain(v) for k, v in self.base.items() if v is not None})
        sweep: dict[str, Any] = {"method": self.method, "seeds": self.seeds, "seed": self.seed}
        if self.grid:
            sweep["grid"] = {k: [space_lib.plain(v) for v in vs] for k, vs in self.grid.items()}
        if self.space:
            sweep["space"] = {k: dict(v) for k, v in self.space.items()}
        if self.trials:
            sweep["trials"] = [{k: space_lib.plain(v) for k, v in t.items()} for t in self.trials]
        if self.num_trials is not None:
            sweep["num_trials"] = self.num_trials
        if self.strategy != "all":
            sweep["strategy"] = self.strategy
        out["sweep"] = sweep
        return out

    def replace(self, overrides: Mapping[str, Any]) -> SweepConfig:
        """A copy with dotted base keys (or ``sweep.*`` keys) overridden, validated."""
        base = {k: v for k, v in self.base.items() if v is not None}
        sweep = self.to_dict()["sweep"]
        for key, value in overrides.items():
            if key.startswith("sweep."):
                table, _, sub = key[len("sweep.") :].partition(".")
                if sub:
                    sweep.setdefault(table, {})[sub] = value
                else:
                    sweep[table] = value
            else:
                base[key] = check_value(key, value)
        return SweepConfig.from_dict({**nested(base), "sweep": sweep})

    def searching(
        self, sweep: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
    ) -> SweepConfig:
        """A copy whose ``[sweep]`` table is ``sweep`` alone (none of this one's grid, space,
        trials or strategy), with dotted base ``overrides``, validated: the search of a
        diagnostic run on a configuration that has a search of its own.

        Example:
          >>> cfg = SweepConfig.from_dict({"sweep": {"grid": {"train.seed": [0, 1]}}})
          >>> one = cfg.searching({"method": "list", "trials": [{}]}, {"train.steps": 5})
          >>> len(expand_trials(one)), one.base["train.steps"]
          (1, 5)
        """
        base = {k: v for k, v in self.base.items() if v is not None}
        base.update({k: check_value(k, v) for k, v in (overrides or {}).items()})
        return SweepConfig.from_dict({**nested(base), "sweep": dict(sweep)})

    @property
    def hparams(self) -> dict[str, Any]:
        """The user hyperparameters (``hparams.*`` keys) of the base configuration."""
        return {k: v for k, v in self.base.items() if is_hparam(k)}


def _default_method(sweep: Mapping[str, Any]) -> str:
    """``sweep.method`` when it is left out: ``list`` for ``sweep.trials``, ``random`` for the
    space of ``sweep.strategy = "optuna"`` (its sampler proposes the points), else ``grid``."""
    if "trials" in sweep:
        return "list"
    if sweep.get("strategy") == "optuna" and sweep.get("space"):
        return "random"
    return "grid"


def _check_unused_tables(
    method: str, grid: Mapping, trials: tuple, num_trials: Any, strategy: str
) -> None:
    """Refuse a sweep table the method would silently drop."""
    if grid and method != "grid":
        raise ConfigError(
            f"sweep.grid is only used by sweep.method = 'grid' (got {method!r}): put its values "
            "in sweep.space as { choice = [...] } or in sweep.trials"
        )
    if trials and method != "list":
        raise ConfigError(
            f"sweep.trials is only used by sweep.method = 'list' (got {method!r}): set "
            "sweep.method = 'list', or leave sweep.trials out"
        )
    if num_trials is not None and method in ("grid", "list") and strategy != "optuna":
        raise ConfigError(
            f"sweep.num_trials is only used by sweep.method = 'random' or 'quasi_random' (got "
            f"{method!r}, whose trials are the grid's points or the listed ones): leave it out"
        )


def _check_strategy(cfg: SweepConfig) -> None:
    """Settings of an adaptive strategy that depend on other keys (exit 2 from the CLI)."""
    base, strategy = cfg.base, cfg.strategy
    every, steps = base["train.eval_every"], base["train.steps"]
    if strategy in ("halving", "hyperband"):
        first = base["halving.min_steps"]
        if first is not None and (first % every or first >= steps):
            raise ConfigError(
                f"halving.min_steps = {first} is invalid: expected a multiple of "
                f"train.eval_every ({every}) below train.steps ({steps})"
            )
        if steps % every:
            raise ConfigError(
                f"train.steps = {steps} is invalid for sweep.strategy = {strategy!r}: expected a "
                f"multiple of train.eval_every ({every}), where the rungs rank the trials"
            )
    if strategy == "pbt":
        interval = base["pbt.interval"]
        if interval is not None and interval % every:
            raise ConfigError(
                f"pbt.interval = {interval} is invalid: expected a multiple of train.eval_every "
                f"({every}), where the population is ranked"
            )
    if strategy == "optuna" and cfg.method not in ("random", "quasi_random"):
        raise ConfigError(
            "sweep.strategy = 'optuna' needs sweep.space distributions and sweep.method = "
            "'random' (the default with a space) or 'quasi_random'; optuna's sampler proposes "
            f"the points (got sweep.method = {cfg.method!r})"
        )
    if strategy == "optuna" and cfg.seeds != 1:
        raise ConfigError(
            f"sweep.seeds = {cfg.seeds} is invalid with sweep.strategy = 'optuna': expected 1 "
            "(optuna proposes each point once; repeat the best over seeds afterwards)"
        )


def _optuna_trials(base: Mapping[str, Any], num_trials: Any) -> int:
    """Optuna proposes ``optuna.batch_size`` trials per round for ``optuna.rounds`` rounds."""
    n = base["optuna.batch_size"] * base["optuna.rounds"]
    if num_trials is not None and num_trials != n:
        raise ConfigError(
            f"sweep.num_trials = {num_trials!r} is invalid with sweep.strategy = 'optuna': "
            f"leave it out, or set it to optuna.batch_size x optuna.rounds = {n}"
        )
    return n


def expand_trials(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The overrides of every trial, in order (seeds vary fastest)."""
    return space_lib.expand(
        cfg.method,
        grid=cfg.grid,
        space=cfg.space,
        trials=cfg.trials,
        num_trials=cfg.num_trials,
        seeds=cfg.seeds,
        seed=cfg.seed,
        base_seed=cfg.base["train.seed"],
    )


#: What may change between a run and its resume: where and how it runs, not what it computes.
_NOT_HASHED_SECTIONS = ("checkpoint", "log", "parallel", "data")
_NOT_HASHED_KEYS = ("train.max_trials_per_call", "train.execution")


def determines_results(key: str) -> bool:
    """Whether a dotted key is part of what a run computes (it may not change on resume),
    rather than of where and how it runs.

    Example:
      >>> determines_results("optimizer.learning_rate"), determines_results("log.plots")
      (True, False)
    """
    return key.split(".")[0] not in _NOT_HASHED_SECTIONS and key not in _NOT_HASHED_KEYS


def _results_keys(cfg: SweepConfig) -> dict[str, Any]:
    """``section.name`` -> value of what determines the results (``sweep.grid`` kept whole)."""
    flat = dotted(cfg.to_dict(), depth=2)
    return {k: v for k, v in flat.items() if determines_results(k)}


def config_hash(cfg: SweepConfig) -> str:
    """A stable hash of everything that determines a sweep's results."""
    blob = json.dumps(nested(_results_keys(cfg)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def diff_configs(a: SweepConfig, b: SweepConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (results-relevant keys only)."""
    da, db = _results_keys(a), _results_keys(b)
    return sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))


def _shown(v: Any) -> str:
    text = "unset" if v is None else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_same(
    stored: SweepConfig,
    current: SweepConfig,
    what: str,
    *,
    extra: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
) -> None:
    """Refuse to continue a run whose configuration changed in what determines its results.

    Where and how a run executes (``checkpoint.*``, ``log.*``, ``parallel.*``, ``data.*``,
    ``train.max_trials_per_call``, ``train.execution``) may change; any other key may not.
    (A resume with ``train.execution = "auto"`` runs the forms the run recorded; one that
    names a form runs that form, equal to the recorded one to float32 rounding.)

    Args:
      stored: the configuration the run was started with.
      current: the configuration it would continue with.
      what: the run as the message names it, e.g. ``"runs/lr"`` or ``"the checkpointed sweep
        in runs/lr"``.
      extra: ``(stored, current)`` mappings of further dotted settings compared key by key
        (``jaxtune tune``'s ``[tune]`` table).

    Raises:
      ConfigError: naming every differing key with its stored and current values.

    Example:
      >>> a = SweepConfig.from_dict({"train": {"steps": 20}})
      >>> check_same(a, a.replace({"checkpoint.every": 5}), "runs/x")  # allowed
      >>> check_same(a, a.replace({"train.steps": 30}), "runs/x")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxtune.errors.ConfigError: cannot resume runs/x: ... train.steps (stored 20, now 30); ...
    """
    old, new = _results_keys(stored), _results_keys(current)
    if extra is not None:
        old, new = {**old, **extra[0]}, {**new, **extra[1]}
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not keys and config_hash(stored) == config_hash(current):
        return
    changes = [f"{k} (stored {_shown(old.get(k))}, now {_shown(new.get(k))})" for k in keys]
    raise ConfigError(
        f"cannot resume {what}: the configuration differs in "
        + (", ".join(changes) or "its search space")
        + "; resume with the stored configuration or start a new run elsewhere"
    )
