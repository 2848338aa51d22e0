"""Tuning diagnostics: the practitioner's checklist, runnable on any task.

Each check trains (where it trains at all) through the public per-trial step
(:func:`jaxtune.make_train_step`) of the trial a sweep would run, and returns a result with
``passed``, ``reason``, the numbers it measured and ``report()``:

* :func:`overfit_check` — overfit one example, then one batch; the loss at init against the
  task's chance level (:mod:`~jaxtune.diagnostics.overfit`);
* :func:`lr_range_test`, :func:`lr_sweep_test`, :func:`plot_lr_find` — learning-rate finders
  (:mod:`~jaxtune.diagnostics.lr_find`);
* :func:`gradient_health`, :func:`explain_divergence`, :func:`per_layer_grad_norms`,
  :func:`plot_grad_norms` (:mod:`~jaxtune.diagnostics.gradients`);
* :func:`init_report`, :func:`plot_init_report` — signal propagation at initialization
  (:mod:`~jaxtune.diagnostics.signal`);
* :func:`normalization_masking` (:mod:`~jaxtune.diagnostics.normalization`);
* :func:`data_checks` (:mod:`~jaxtune.diagnostics.data_checks`);
* :func:`run_checks` — all of them, ending with ``SUMMARY: PASS|FAIL``
  (:mod:`~jaxtune.diagnostics.checklist`); ``jaxtune check`` and ``jaxtune lr-find`` run them
  from the command line (:mod:`~jaxtune.diagnostics.cli`).

Every check takes a configuration, ``task=`` / ``optimizer=`` (as :func:`jaxtune.run_sweep`
does, ``task.factory`` included) or an already bound :class:`Subject`.
"""

from jaxtune.diagnostics.checklist import CHECKS as CHECKS
from jaxtune.diagnostics.checklist import CheckReport as CheckReport
from jaxtune.diagnostics.checklist import run_checks as run_checks
from jaxtune.diagnostics.cli import add_subcommands as add_subcommands
from jaxtune.diagnostics.data_checks import DataCheckResult as DataCheckResult
from jaxtune.diagnostics.data_checks import data_checks as data_checks
from jaxtune.diagnostics.gradients import GradientHealthResult as GradientHealthResult
from jaxtune.diagnostics.gradients import LayerGradNorms as LayerGradNorms
from jaxtune.diagnostics.gradients import explain_divergence as explain_divergence
from jaxtune.diagnostics.gradients import gradient_health as gradient_health
from jaxtune.diagnostics.gradients import per_layer_grad_norms as per_layer_grad_norms
from jaxtune.diagnostics.gradients import plot_grad_norms as plot_grad_norms
from jaxtune.diagnostics.lr_find import LRFindResult as LRFindResult
from jaxtune.diagnostics.lr_find import lr_range_test as lr_range_test
from jaxtune.diagnostics.lr_find import lr_sweep_test as lr_sweep_test
from jaxtune.diagnostics.lr_find import plot_lr_find as plot_lr_find
from jaxtune.diagnostics.normalization import NormalizationResult as NormalizationResult
from jaxtune.diagnostics.normalization import normalization_masking as normalization_masking
from jaxtune.diagnostics.overfit import OverfitResult as OverfitResult
from jaxtune.diagnostics.overfit import diagnose_curve as diagnose_curve
from jaxtune.diagnostics.overfit import overfit_check as overfit_check
from jaxtune.diagnostics.signal import DEFAULT_PRESETS as DEFAULT_PRESETS
from jaxtune.diagnostics.signal import InitReport as InitReport
from jaxtune.diagnostics.signal import init_report as init_report
from jaxtune.diagnostics.signal import plot_init_report as plot_init_report
from jaxtune.diagnostics.subject import Check as Check
from jaxtune.diagnostics.subject import Subject as Subject
from jaxtune.diagnostics.subject import make_subject as make_subject

__all__ = [
    "CHECKS",
    "DEFAULT_PRESETS",
    "Check",
    "CheckReport",
    "DataCheckResult",
    "GradientHealthResult",
    "InitReport",
    "LRFindResult",
    "LayerGradNorms",
    "NormalizationResult",
    "OverfitResult",
    "Subject",
    "add_subcommands",
    "data_checks",
    "diagnose_curve",
    "explain_divergence",
    "gradient_health",
    "init_report",
    "lr_range_test",
    "lr_sweep_test",
    "make_subject",
    "normalization_masking",
    "overfit_check",
    "per_layer_grad_norms",
    "plot_grad_norms",
    "plot_init_report",
    "run_checks",
]
