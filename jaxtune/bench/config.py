"""The ``[bench]`` table of ``jaxtune bench``: submissions x workloads x studies x trials.

The table sits beside ordinary configuration sections in one TOML file; those sections are the
base of every sweep (the workload's own keys and the submission's win over them). Every key of
the table is a :class:`jaxtune.spec.KeySpec` (:data:`BENCH_KEYS`, and those of its entries in
:mod:`jaxtune.bench.entries`), and every (submission, workload) pair is validated as the sweep it
becomes, so a bad setting fails before anything trains, naming its key.

Example:
    >>> cfg = bench_config({"bench": {
    ...     "studies": 2, "trials": 3, "workloads": ["diabetes"],
    ...     "submissions": {"adam": {"optimizer": "adam", "space": {
    ...         "optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 0.1}
    ...     }}}}})
    >>> sweep = cfg.study_config(cfg.submissions[0], cfg.workloads[0], 1)
    >>> sweep.method, sweep.num_trials, sweep.seed, sweep.base["train.seed"]
    ('quasi_random', 3, 1, 1)
    >>> sweep.base["optimizer.name"], sweep.base["select.target"], sweep.base["train.steps"]
    ('adam', 0.5, 400)
    >>> bench_config({"bench": {"studies": 0}})
    Traceback (most recent call last):
    ...
    jaxtune.errors.ConfigError: bench.studies = 0 is invalid: expected an integer in [1, inf)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtune.bench.entries import (
    WORKLOADS_TEXT,
    BenchWorkload,
    Submission,
    parse_submission,
    parse_table,
    parse_workloads,
)
from jaxtune.config import SweepConfig, check_value, parse_override
from jaxtune.config.schema import unknown
from jaxtune.config.toml_io import read_toml
from jaxtune.errors import ConfigError
from jaxtune.spec import KeySpec

__all__ = [
    "BENCH_KEYS",
    "BenchConfig",
    "bench_config",
    "load_bench_config",
    "split_bench",
]


def _workloads(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError("")
    return tuple(value)


#: Every ``bench.*`` key, its default and what it allows.
BENCH_KEYS: dict[str, KeySpec] = {
    "bench.studies": KeySpec("int", 3, low=1),
    "bench.trials": KeySpec("int", 5, low=1),
    "bench.seed": KeySpec("int", 0, low=0),
    "bench.vectorize": KeySpec("bool", True),
    "bench.r_max": KeySpec("float", 4.0, low=1.0, low_open=True),
    "bench.submissions": KeySpec(
        "custom",
        text="a table of named submissions, each { optimizer = NAME or factory = "
        "'module:function', space = { ... } }",
        parser=parse_table,
    ),
    "bench.workloads": KeySpec(
        "custom",
        text=WORKLOADS_TEXT,
        parser=_workloads,
    ),
}

#: Configuration sections a bench sets per sweep; the base file may not set a search.
_NOT_IN_BASE = ("sweep",)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A validated benchmark.

    Attributes:
      base: the base configuration (nested sections) of every sweep.
      settings: every :data:`BENCH_KEYS` scalar (``bench.studies``, ...) with its value.
      submissions, workloads: what is compared, on what.
      checkpoint_every: ``checkpoint.every`` of the base, or None when the base leaves it
        unset (each study then checkpoints every quarter of its budget).
    """

    base: Mapping[str, Any]
    settings: Mapping[str, Any]
    submissions: tuple[Submission, ...]
    workloads: tuple[BenchWorkload, ...]
    checkpoint_every: int | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.settings:
            raise unknown(key, list(self.settings), "bench key")
        return self.settings[key]

    def _dict(self, sub: Submission, wl: BenchWorkload, study: int) -> dict[str, Any]:
        d = copy.deepcopy(dict(self.base))
        keys = {**wl.keys(), **sub.keys()}
        keys["train.seed"] = self.base["train"]["seed"] + study
        every = self.checkpoint_every
        if every is None:
            every = wl.eval_every * max(1, math.ceil(wl.steps / 4 / wl.eval_every))
        keys["checkpoint.every"] = every
        for key, value in keys.items():
            section, name = key.split(".", 1)
            if value is None:
                d.get(section, {}).pop(name, None)
            else:
                d.setdefault(section, {})[name] = value
        return d

    def study_config(self, sub: Submission, wl: BenchWorkload, study: int) -> SweepConfig:
        """The sweep of one study: ``bench.trials`` quasi-random points of the submission's
        space, seeded ``bench.seed + study``, with ``train.seed`` raised by ``study``."""
        d = self._dict(sub, wl, study)
        d["sweep"] = {
            "method": "quasi_random",
            "num_trials": self.settings["bench.trials"],
            "space": dict(sub.space),
            "seed": self.settings["bench.seed"] + study,
        }
        return SweepConfig.from_dict(d)

    def solo_config(
        self,
        sub: Submission,
        wl: BenchWorkload,
        study: int,
        point: Mapping[str, Any],
        *,
        checkpoints: bool = True,
    ) -> SweepConfig:
        """A one-trial sweep of a study's point, on one device."""
        d = self._dict(sub, wl, study)
        d["sweep"] = {"method": "list", "trials": [dict(point)]}
        d.setdefault("parallel", {})["devices"] = 1
        if not checkpoints:
            d["checkpoint"]["every"] = 0
        return SweepConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The document (base sections and a ``bench`` table) that :func:`bench_config` reads."""
        table: dict[str, Any] = {k.split(".", 1)[1]: v for k, v in self.settings.items()}
        table["submissions"] = {
            s.name: {
                **({"optimizer": s.optimizer} if s.optimizer else {"factory": s.factory}),
                "space": copy.deepcopy(dict(s.space)),
                **({"set": dict(s.fixed)} if s.fixed else {}),
            }
            for s in self.submissions
        }
        table["workloads"] = [
            {
                k: v
                for k, v in dataclasses.asdict(w).items()
                if v is not None and not (k == "fixed" and not v)
            }
            for w in self.workloads
        ]
        for w in table["workloads"]:
            if "fixed" in w:
                w["set"] = w.pop("fixed")
        base = copy.deepcopy(dict(self.base))
        if self.checkpoint_every is not None:
            base.setdefault("checkpoint", {})["every"] = self.checkpoint_every
        return {**base, "bench": table}


def split_bench(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(base configuration, bench table)`` of a document (``[bench]`` and ``bench.*`` keys)."""
    rest = {k: v for k, v in d.items() if k != "bench" and not k.startswith("bench.")}
    table = dict(d.get("bench", {})) if isinstance(d.get("bench", {}), Mapping) else {}
    table.update({k[len("bench.") :]: v for k, v in d.items() if k.startswith("bench.")})
    return rest, table


def _checkpoint_every(rest: Mapping[str, Any]) -> Any:
    section = rest.get("checkpoint", {})
    if isinstance(section, Mapping) and "every" in section:
        return section["every"]
    return rest.get("checkpoint.every")


def bench_config(d: Mapping[str, Any] | BenchConfig) -> BenchConfig:
    """Validate a document: base sections and a ``bench`` table (nested or ``bench.*`` keys).

    Raises:
      ConfigError: naming the key and what it allows.
    """
    if isinstance(d, BenchConfig):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(f"a bench config must be a mapping, got {type(d).__name__}")
    rest, table = split_bench(d)
    for section in _NOT_IN_BASE:
        if section in rest or any(k.startswith(section + ".") for k in rest):
            raise ConfigError(
                f"[{section}] is invalid in a bench config: each study builds its own search "
                "(set the space under bench.submissions.<name>.space)"
            )
    base = SweepConfig.from_dict(rest)
    every = _checkpoint_every(rest)
    every = None if every is None else check_value("checkpoint.every", every)
    settings = {}
    for key in table:
        if f"bench.{key}" not in BENCH_KEYS:
            raise unknown(f"bench.{key}", list(BENCH_KEYS), "bench key")
    for key, spec in BENCH_KEYS.items():
        name = key.split(".", 1)[1]
        if name in ("submissions", "workloads"):
            if name not in table:
                raise ConfigError(f"{key} is needed: {spec.describe()}")
            continue
        settings[key] = spec.check(key, table.get(name, spec.default))
    subs = BENCH_KEYS["bench.submissions"].check("bench.submissions", table["submissions"])
    if not subs:
        raise ConfigError("bench.submissions is empty: give at least one submission")
    submissions = tuple(parse_submission(n, t) for n, t in subs.items())
    loads = BENCH_KEYS["bench.workloads"].check("bench.workloads", table["workloads"])
    nested = {k: v for k, v in base.to_dict().items() if k != "sweep"}
    nested["checkpoint"].pop("every", None)
    cfg = BenchConfig(nested, settings, submissions, parse_workloads(loads, base.base), every)
    for sub in cfg.submissions:
        for wl in cfg.workloads:
            try:
                cfg.study_config(sub, wl, 0)
            except ConfigError as e:
                where = f"bench.submissions.{sub.name} on workload {wl.name}"
                raise ConfigError(f"{where}: {e}") from None
    return cfg


def _parse_bench_override(text: str) -> tuple[str, Any]:
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def load_bench_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    document: Mapping[str, Any] | None = None,
) -> BenchConfig:
    """A TOML file's benchmark (or ``document``), with ``"key=value"`` overrides: ``bench.*``
    keys set bench settings, the others the base configuration (as ``jaxtune sweep --set``).

    Raises:
      ConfigError: a missing file, a TOML syntax error, or an invalid key or value.
    """
    if document is None:
        if path is None:
            raise ConfigError("jaxtune bench needs CONFIG.toml: a file with a [bench] table")
        document = read_toml(path)
    rest, table = split_bench(document)
    for text in overrides:
        if "=" not in text:
            key, value = parse_override(text)  # raises with the expected form
        elif text.strip().startswith("bench."):
            key, value = _parse_bench_override(text)
            table[key[len("bench.") :]] = value
            continue
        else:
            key, value = parse_override(text)
        section, name = key.split(".", 1) if "." in key else (key, "")
        rest = copy.deepcopy(rest)
        rest.setdefault(section, {})[name] = value
    return bench_config({**rest, "bench": table})
