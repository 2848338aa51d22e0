"""The whole checklist on one trial (a configuration or a user task), as one report.

``data`` (:func:`data_checks` of the task's splits), ``init`` (:func:`init_report` of the task's
own model: its initialization against reference presets), ``overfit`` (:func:`overfit_check`),
``lr`` (:func:`lr_range_test`), ``norm`` (:func:`normalization_masking`, skipped without a
normalization switch) and ``grads`` (:func:`gradient_health` of a short run of the trial). The
report ends with ``SUMMARY: PASS|FAIL``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxtune.config import SweepConfig
from jaxtune.diagnostics.data_checks import data_checks
from jaxtune.diagnostics.gradients import gradient_health, plot_grad_norms
from jaxtune.diagnostics.lr_find import lr_range_test, plot_lr_find
from jaxtune.diagnostics.normalization import normalization_masking
from jaxtune.diagnostics.overfit import overfit_check
from jaxtune.diagnostics.signal import init_report
from jaxtune.diagnostics.subject import Check, make_subject, require_int, require_lrs
from jaxtune.engine import run_sweep
from jaxtune.errors import ConfigError, TaskError

__all__ = ["CHECKS", "CheckReport", "run_checks"]

#: The checks of :func:`run_checks`, in the order they run.
CHECKS = ("data", "init", "overfit", "lr", "norm", "grads")


@dataclasses.dataclass
class CheckReport:
    """All checks of :func:`run_checks` on one trial."""

    passed: bool
    reason: str
    results: dict[str, Check]
    plots: list[Path]

    def report(self) -> str:
        parts = [r.report() for r in self.results.values()]
        if self.plots:
            parts.append("plots: " + ", ".join(str(p) for p in self.plots))
        ran = [r for r in self.results.values() if not r.skipped]
        n_ok = sum(r.passed for r in ran)
        skipped = len(self.results) - len(ran)
        summary = (
            f"SUMMARY: {'PASS' if self.passed else 'FAIL'}: {n_ok}/{len(ran)} checks passed"
            + (f", {skipped} skipped" if skipped else "")
            + f" ({', '.join(f'{k} {r.mark}' for k, r in self.results.items())})"
        )
        return "\n\n".join([*parts, summary])


def _broken(name: str, error: Exception) -> Check:
    return Check(False, f"the task breaks its contract: {error}", name=name)


def run_checks(
    config: SweepConfig | Any = None,
    *,
    task: Any = None,
    optimizer: Any = None,
    out_dir: str | Path | None = None,
    checks: Sequence[str] = CHECKS,
    steps: int = 200,
    overfit_lrs: Sequence[float] | None = None,
    fast: bool = False,
    search: Sequence[str | Path] = (),
) -> CheckReport:
    """Run the checklist on the base trial of ``config`` (and ``task`` / ``optimizer``).

    Args:
      config: a configuration (default: the bundled sweep); ``task.factory`` /
        ``optimizer.factory`` are honoured.
      task, optimizer: a user task or factory and optimizer factory (as for ``run_sweep``).
      out_dir: where PNG plots and ``checks.txt`` go.
      checks: which of :data:`CHECKS` to run.
      steps: training steps of the short runs (an integer >= 1; >= 5 with the ``lr`` check).
      overfit_lrs: learning rates of the overfit check (default the trial's; each > 0).
      fast: a smaller budget (for smoke tests).
      search: folders searched first for the factories.

    Raises:
      ConfigError: naming the argument when ``checks``, ``steps`` or ``overfit_lrs`` is invalid.
    """
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ConfigError(f"unknown check(s) {sorted(unknown)}; allowed: {', '.join(CHECKS)}")
    steps = require_int("steps", steps, minimum=5 if "lr" in checks else 1)
    if overfit_lrs is not None:
        overfit_lrs = require_lrs("overfit_lrs", overfit_lrs)
    if fast:
        steps = min(steps, 60)
    kw = dict(task=task, optimizer=optimizer, search=search)
    results: dict[str, Check] = {}
    plots: list[Path] = []
    raw = make_subject(config, check=False, **kw)
    if "data" in checks:
        try:
            outputs = raw.num_outputs() if raw.labels() is not None else None
        except Exception:  # the model does not fit its inputs: the contract check says so
            outputs = None
        results["data"] = data_checks(raw.task.data, num_outputs=outputs)
    try:
        subject = make_subject(config, **kw)
    except TaskError as e:
        for name in checks:
            if name != "data":
                results[name] = _broken(name, e)
        return _finish(results, plots, out_dir)
    if "init" in checks:
        rep = init_report(subject=subject, batch=128 if fast else 256, out_dir=out_dir)
        results["init"] = rep
        plots += [rep.plot_path] if rep.plot_path else []
    if "overfit" in checks:
        off = {"task.dropout": 0.0, "optimizer.weight_decay": 0.0}
        quiet = make_subject(config, overrides=off, **kw)
        results["overfit"] = overfit_check(
            subject=quiet, steps=100 if fast else 300, lrs=overfit_lrs
        )
    if "lr" in checks:
        constant = {"schedule.name": "constant"} if subject.optimizer_source is None else None
        lr = lr_range_test(subject=make_subject(config, overrides=constant, **kw), steps=steps)
        results["lr"] = lr
        path = plot_lr_find(lr, out_dir=out_dir)
        plots += [path] if path else []
    plots += _trained_checks(subject, checks, steps, out_dir, results)
    return _finish(results, plots, out_dir)


def _trained_checks(
    subject: Any, checks: Sequence[str], steps: int, out_dir: Any, results: dict[str, Check]
) -> list[Path]:
    """The ``norm`` and ``grads`` checks into ``results`` (the gradient check reads the
    normalization sweep's trials of the subject's own normalization, else a one-trial sweep);
    returns the plots written."""
    sweep, own, plots = None, [0], []
    if "norm" in checks:
        norm = normalization_masking(subject=subject, steps=steps)
        results["norm"] = norm
        if norm.result is not None:
            sweep = norm.result
            mine = subject.cfg.base["task.normalization"]
            own = [i for i, nm in enumerate(norm.normalizations) if nm == mine]
    if "grads" in checks:
        sweep = sweep if sweep is not None else _one_trial_sweep(subject, steps)
        results["grads"] = gradient_health(sweep, trials=own)
        if out_dir is not None:
            plots.append(plot_grad_norms(sweep, Path(out_dir) / "grad_norms.png"))
    return plots


def _one_trial_sweep(subject: Any, steps: int) -> Any:
    """The base trial alone, trained ``steps`` steps (for the gradient check)."""
    one = subject.cfg.searching(
        {"method": "list", "trials": [{}], "seeds": 1},
        {"train.steps": steps, "train.eval_every": steps, "checkpoint.every": 0},
    )
    return run_sweep(one, task=subject.task_source, optimizer=subject.optimizer_source)


def _finish(results: dict[str, Check], plots: list[Path], out_dir: Any) -> CheckReport:
    failed = [k for k, r in results.items() if not r.passed]
    reason = "all checks passed" if not failed else f"failed: {', '.join(failed)}"
    report = CheckReport(not failed, reason, results, [p for p in plots if p is not None])
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "checks.txt").write_text(report.report() + "\n")
    return report
