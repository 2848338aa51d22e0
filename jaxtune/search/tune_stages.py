"""The four stages of ``jaxtune tune``: what each one trains, chooses and records.

Each stage function takes the run so far (:class:`Run`: the configuration, what earlier stages
chose, the band) and returns its record for ``tune.json``: what it searched, the keys it sets
(``set``), what it chose and why, and the numbers the summary shows. Every stage trains through
:func:`jaxtune.run_sweep` (stage 1 through the diagnostics' range test,
:func:`jaxtune.diagnostics.lr_sweep_test`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune import checkpoint
from jaxtune import config as config_lib
from jaxtune.config import SweepConfig
from jaxtune.engine import SweepResult, run_sweep
from jaxtune.engine.aggregate import t_interval
from jaxtune.errors import ConfigError
from jaxtune.files import atomic_write
from jaxtune.formatting import fmt
from jaxtune.search.tune_config import FOLDERS, TuneSettings, refine_grid
from jaxtune.search.tune_report import finite, rows_of, trial_steps

__all__ = ["STAGE_FUNCTIONS", "Run", "lr_band", "t_interval"]

_LR, _BS, _SEED = "optimizer.learning_rate", "train.batch_size", "train.seed"


def lr_band(
    lrs: Sequence[float],
    losses: Sequence[float],
    initial: float,
    *,
    rule: str = "within",
    within: float = 0.1,
    factor: float = 3.0,
) -> tuple[float, float, float]:
    """The learning-rate band of a range test: ``(low, high, best)``.

    ``best`` is the (ascending) learning rate with the lowest final train loss ``L_best``
    (non-finite losses are diverged runs). ``rule = "within"``: the band spans the contiguous
    run of learning rates around ``best`` whose loss is at most ``L_best + within * (initial -
    L_best)``, i.e. within ``within`` of the best as a fraction of the drop from the initial
    loss; a run of one learning rate spans the geometric midpoints to its neighbours.
    ``rule = "around"``: ``[best / factor, best * factor]``.

    Example:
      >>> lr_band([0.01, 0.1, 1.0, 10.0], [0.5, 0.1, 0.2, float("inf")], 2.0)
      (0.1, 1.0, 0.1)
      >>> lo, hi, best = lr_band([0.01, 0.1, 1.0], [0.9, 0.1, 1.5], 2.0)
      >>> round(lo, 4), round(hi, 4), best
      (0.0316, 0.3162, 0.1)
    """
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError("every learning rate diverged")
    b = int(np.argmin(np.where(finite, losses, np.inf)))
    best = float(lrs[b])
    if rule == "around":
        return best / factor, best * factor, best
    ok = finite & (losses <= losses[b] + within * max(initial - losses[b], 0.0))
    i = j = b
    while i > 0 and ok[i - 1]:
        i -= 1
    while j < len(lrs) - 1 and ok[j + 1]:
        j += 1
    if i < j:
        return float(lrs[i]), float(lrs[j]), best
    below = lrs[b - 1] if b > 0 else lrs[b] ** 2 / lrs[b + 1]
    above = lrs[b + 1] if b < len(lrs) - 1 else lrs[b] ** 2 / lrs[b - 1]
    return float(np.sqrt(below * lrs[b])), float(np.sqrt(lrs[b] * above)), best


@dataclasses.dataclass
class Run:
    cfg: SweepConfig
    settings: TuneSettings
    out: Path
    task: Any
    optimizer: Any
    resume: bool
    callbacks: Callable[[str], Sequence[Any]]
    search_path: Sequence[str | Path]
    chosen: dict[str, Any] = dataclasses.field(default_factory=dict)
    band: tuple[float, float] | None = None
    stage_callbacks: Sequence[Any] = ()

    def config(self, sweep: Mapping[str, Any], **keys: Any) -> SweepConfig:
        """The base configuration with what was chosen so far, ``keys`` and ``sweep``."""
        base = {k: v for k, v in self.cfg.base.items() if v is not None}
        base.update(self.chosen, **keys)
        return SweepConfig.from_dict({**config_lib.nested(base), "sweep": dict(sweep)})

    def sweep(self, stage: str, cfg: SweepConfig) -> SweepResult:
        folder = self.out / FOLDERS[stage]
        again = self.resume and checkpoint.holds_checkpoints(folder / "checkpoints")
        result = run_sweep(
            cfg,
            task=self.task,
            optimizer=self.optimizer,
            out_dir=folder,
            resume=again,
            callbacks=self.stage_callbacks,
            search_path=self.search_path,
        )
        if cfg.base["log.plots"]:
            from jaxtune.report.plots import write_plots

            write_plots(result, folder)
        return result


def _stage_lr_range(run: Run) -> dict[str, Any]:
    from jaxtune.diagnostics import lr_sweep_test, plot_lr_find

    s, folder = run.settings, run.out / FOLDERS["lr_range"]
    lrs = np.geomspace(
        s["tune.lr_range.min_lr"], s["tune.lr_range.max_lr"], s["tune.lr_range.num_lrs"]
    )
    steps, rule = s["tune.lr_range.steps"], s["tune.lr_range.band"]
    found = lr_sweep_test(
        run.config({}), task=run.task, optimizer=run.optimizer, lrs=lrs, steps=steps
    )
    found.result.save(folder)
    atomic_write(folder / "config.toml", config_lib.to_toml(found.result.config.to_dict()))
    if run.cfg.base["log.plots"]:
        plot_lr_find(found, out_dir=folder, name="lr_range.png")
    first = found.result.history["train.loss"][:, 0]
    initial = float(np.median(first[np.isfinite(first)]))
    try:
        lo, hi, best = lr_band(
            found.lrs,
            found.losses,
            initial,
            rule=rule,
            within=s["tune.lr_range.within"],
            factor=s["tune.lr_range.factor"],
        )
    except ValueError:
        raise ConfigError(
            f"stage lr_range: every learning rate in [{lrs[0]:.3g}, {lrs[-1]:.3g}] diverged; "
            "lower tune.lr_range.min_lr and tune.lr_range.max_lr"
        ) from None
    final = [None if not math.isfinite(x) else float(x) for x in found.losses]
    if rule == "within":
        rule_text = (
            f"the learning rates next to it whose final train loss is within "
            f"{s['tune.lr_range.within']:g} of the drop from the initial loss {fmt(initial)}"
        )
    else:
        rule_text = f"a factor {s['tune.lr_range.factor']:g} either side"
    best_loss = min(x for x in final if x is not None)
    chain = "constant schedule" if run.optimizer is None else "the optimizer factory's chain"
    return {
        "searched": f"{len(lrs)} learning rates log-spaced in [{lrs[0]:.3g}, {lrs[-1]:.3g}], "
        f"{steps} steps each, trained at once ({chain})",
        "trials": len(lrs),
        "trial_steps": len(lrs) * steps,
        "band": [lo, hi],
        "set": {},
        "chosen": f"band [{fmt(lo)}, {fmt(hi)}]",
        "why": f"lowest final train loss {fmt(best_loss)} at lr {fmt(best)}; the band is "
        f"{rule_text} ({sum(x is None for x in final)} of {len(lrs)} diverged)",
        "lrs": [float(x) for x in found.lrs],
        "losses": final,
        "initial_loss": initial,
    }


def _stage_lr_batch(run: Run) -> dict[str, Any]:
    s = run.settings
    lo, hi = run.band
    sizes = list(s["tune.lr_batch.batch_sizes"])
    sweep = {
        "method": "quasi_random",
        "strategy": "halving",
        "num_trials": s["tune.lr_batch.num_trials"],
        "seed": s["tune.lr_batch.seed"],
        "space": {
            _LR: {"distribution": "log_uniform", "low": lo, "high": hi},
            _BS: {"distribution": "choice", "choice": sizes},
        },
    }
    halving = {
        "halving.eta": s["tune.lr_batch.eta"],
        "halving.min_steps": s["tune.lr_batch.min_steps"],
    }
    result = run.sweep("lr_batch", run.config(sweep, **halving))
    best = _best(result, "lr_batch")
    sel, steps = result.selection, result.config.base["train.steps"]
    rungs = result.search.get("rungs", [])
    kept = ", ".join(
        f"{len(r['survivors'])} of {len(r['trials'])} at step {r['step']}" for r in rungs
    )
    full = sum(t.stopped_step is None and not t.diverged for t in result.trials)
    return {
        "searched": f"{len(result.trials)} quasi-random points: learning rate log-uniform in "
        f"[{fmt(lo)}, {fmt(hi)}] x batch size in {{{', '.join(map(str, sizes))}}}; successive "
        f"halving, eta {s['tune.lr_batch.eta']:g} (kept {kept or 'all'})",
        "trials": len(result.trials),
        "trial_steps": trial_steps(result),
        "grid_trial_steps": int(result.timing["grid_trial_steps"]),
        "set": {_LR: best.hparams[_LR], _BS: best.hparams[_BS]},
        "chosen": f"lr {fmt(best.hparams[_LR])}, batch size {best.hparams[_BS]}",
        "why": f"best {sel.metric} ({sel.mode}) {fmt(best.final[sel.metric])} among the {full} "
        f"trial(s) trained to step {steps}",
        "rows": rows_of(result),
        "metric": sel.metric,
        "mode": sel.mode,
    }


def _stage_refine(run: Run) -> dict[str, Any]:
    base = {**run.cfg.base, **run.chosen}
    grid = refine_grid(run.settings, base)
    if not grid:
        return {"searched": "nothing: no key has a value other than the incumbent's",
                "trials": 0, "trial_steps": 0, "set": {}, "chosen": "the incumbent",
                "why": "nothing to compare"}  # fmt: skip
    trials = [
        {k: v for k, v in zip(grid, combo, strict=True) if v is not None or base[k] is not None}
        for combo in itertools.product(*grid.values())
    ]
    result = run.sweep("refine", run.config({"method": "list", "trials": trials}))
    best = _best(result, "refine")
    sel = result.selection
    incumbent = result.trials[0]
    changed = {k: best.hparams[k] for k in grid if best.hparams[k] != base[k]}
    searched = " x ".join(f"{k} {{{', '.join(map(fmt, v))}}}" for k, v in grid.items())
    if changed:
        why = (
            f"{sel.metric} {fmt(best.final[sel.metric])} against "
            f"{fmt(incumbent.final[sel.metric])} for the incumbent (the setting so far, trained in "
            "the same sweep)"
        )
    else:
        why = f"no combination beat the incumbent's {sel.metric} {fmt(incumbent.final[sel.metric])}"
    chosen = ", ".join(f"{k} {fmt(v)}" for k, v in changed.items()) or "the incumbent"
    return {
        "searched": f"{len(trials)} combinations (every one, trained to the end): {searched}",
        "trials": len(trials),
        "trial_steps": trial_steps(result),
        "set": {k: best.hparams[k] for k in grid},
        "chosen": chosen,
        "why": why,
        "rows": rows_of(result),
        "metric": sel.metric,
        "mode": sel.mode,
    }


def _stage_seeds(run: Run) -> dict[str, Any]:
    s = run.settings
    count, conf = s["tune.seeds.count"], s["tune.seeds.confidence"]
    first = s["tune.seeds.first"]
    first = run.cfg.base[_SEED] + 1 if first is None else first
    result = run.sweep("seeds", run.config({"method": "grid", "seeds": count}, **{_SEED: first}))
    sel = result.selection
    test = "test." + sel.metric.split(".", 1)[1]
    seeds = [int(t.hparams[_SEED]) for t in result.trials]
    valid = [t.final[sel.metric] for t in result.trials]
    mean, low, high = t_interval(valid, conf)
    record = {
        "searched": f"the chosen setting over {count} fresh seeds ({seeds[0]}..{seeds[-1]})",
        "trials": count,
        "trial_steps": trial_steps(result),
        "set": {},
        "chosen": f"{sel.metric} {fmt(mean)}, {conf:.0%} interval [{fmt(low)}, {fmt(high)}]",
        "why": f"Student t interval of the mean over {count} seeds ({count - 1} degrees of "
        "freedom)",
        "seeds": seeds,
        "valid": finite(valid),
        "interval": finite([mean, low, high]),
        "confidence": conf,
        "diverged": sum(t.diverged for t in result.trials),
        "metric": sel.metric,
        "mode": sel.mode,
    }
    if test in result.trials[0].final:
        tests = [t.final[test] for t in result.trials]
        record.update(
            test_metric=test, test=finite(tests), test_interval=finite(t_interval(tests, conf))
        )
    return record


STAGE_FUNCTIONS = {
    "lr_range": _stage_lr_range,
    "lr_batch": _stage_lr_batch,
    "refine": _stage_refine,
    "seeds": _stage_seeds,
}


def _best(result: SweepResult, stage: str) -> Any:
    """The best trial on ``select.metric`` among those trained to the end (``ranked()[0]``)."""
    best = result.ranked()[0]
    if best.diverged or not math.isfinite(best.final.get(result.selection.metric, math.nan)):
        raise ConfigError(
            f"stage {stage}: every trial diverged or has no finite {result.selection.metric}; "
            "narrow its search"
        )
    return best
