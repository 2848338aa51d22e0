"""Data checks (checklist items 6 and 9): what to look at in a task's splits before training.

Every array of every split is looked at: non-finite values; for floating inputs, features far from
zero mean and unit variance on the training split (beyond the sampling noise of its size),
held-out splits standardized with their own statistics or with statistics fit on all the data
(leakage), a standardizer that was not fit on the training split, and held-out values far
outside the training range; for integer class labels, labels outside the model's outputs and
class imbalance.

A split read on the host (:func:`jaxtune.data.is_host_source`: a memmap, a grain source) is not
read whole: the statistics come from a seeded random sample of at most ``sample_rows`` rows and
``sample_bytes`` bytes of it, and the report says so and how many rows it read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jaxtune.data import Splits, Standardizer, as_source, is_host_source
from jaxtune.diagnostics.subject import Check
from jaxtune.errors import TaskError

__all__ = ["DataCheckResult", "data_checks"]

_HELD_OUT = ("valid", "test")


@dataclasses.dataclass
class DataCheckResult(Check):
    """Findings of :func:`data_checks`: ``(name, severity, message)``; errors fail the check."""

    findings: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"  {sev:<7} {name}: {msg}" for name, sev, msg in self.findings]


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    return x.mean(0), x.std(0)


def _float_leaves(tree: Any) -> list[np.ndarray]:
    return [
        np.asarray(a)
        for a in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(a).dtype, np.floating) and np.ndim(a) >= 2
    ]


def _labels(splits: Splits) -> dict[str, np.ndarray] | None:
    out = {}
    for name in ("train", *_HELD_OUT):
        split = getattr(splits, name)
        if split is None:
            continue
        y = split[1]
        if not isinstance(y, np.ndarray | jax.Array) or np.ndim(y) != 1:
            return None
        if not np.issubdtype(np.asarray(y).dtype, np.integer):
            return None
        out[name] = np.asarray(y)
    return out


def _sample(
    splits: Splits, max_rows: int, max_bytes: int, seed: int
) -> tuple[Splits, dict[str, tuple[int, int]]]:
    """``splits`` with every host-source split replaced by in-memory rows of it.

    Returns the new splits and, per split that was cut down, ``(rows read, rows in the split)``.
    """
    out, sampled = {}, {}
    for name, split in splits._asdict().items():
        if split is None or not is_host_source(split):
            out[name] = split
            continue
        src = as_source(split, name=f"data.{name}")
        n = len(src)
        row_bytes = max(1, src.nbytes // max(n, 1))
        k = max(1, min(n, int(max_rows), int(max_bytes) // row_bytes))
        if k < n:
            idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
            sampled[name] = (k, n)
        else:
            idx = np.arange(n)
        rows = src.gather(idx)
        if not isinstance(rows, tuple | list) or len(rows) != 2:
            raise TaskError(f"data.{name} must be an (inputs, targets) pair")
        out[name] = tuple(rows)
    return Splits(**out), sampled


def _leakage(x_tr: np.ndarray, x_ho: np.ndarray, split: str, add: Any, tight: float) -> bool:
    mean_tr, std_tr = _stats(x_tr)
    mean_ho, std_ho = _stats(x_ho)
    n = int(np.shape(x_ho)[0])
    live = std_ho > 1e-8
    noise = 1.0 / math.sqrt(max(n, 1))
    self_fit = (
        n >= 10
        and noise > 10 * tight
        and live.any()
        and np.abs(mean_ho[live]).max() < tight
        and np.abs(std_ho[live] - 1).max() < tight
    )
    if self_fit:
        add(
            "leakage",
            "error",
            f"the {split} split has per-feature mean 0 and std 1 to within {tight:g} while "
            f"sampling noise alone would give ~{noise:.2g}: it was standardized with its own "
            "statistics; apply the training mean and std to it",
        )
        return True
    both = np.concatenate([x_tr.reshape(len(x_tr), -1), x_ho.reshape(n, -1)]).astype(np.float64)
    mean_all, std_all = both.mean(0), both.std(0)
    live_all, live_tr = std_all > 1e-8, std_tr > 1e-8
    if (
        live_all.any()
        and np.abs(mean_all[live_all]).max() < tight
        and np.abs(std_all[live_all] - 1).max() < tight
        and np.abs(mean_tr[live_tr]).max(initial=0.0) > 10 * tight
    ):
        add(
            "leakage",
            "error",
            f"train+{split} together have mean 0 / std 1 exactly but train alone does not: the "
            "standardizer was fit on all the data; fit it on the training split only",
        )
    return False


def data_checks(
    splits: Splits,
    *,
    num_outputs: int | None = None,
    standardizer: Standardizer | None = None,
    mean_tol: float = 0.5,
    std_range: tuple[float, float] = (0.5, 2.0),
    mean_noise: float = 4.0,
    std_noise: float = 7.0,
    imbalance: float = 10.0,
    outlier: float = 50.0,
    sample_rows: int = 10_000,
    sample_bytes: int = 256 << 20,
    seed: int = 0,
) -> DataCheckResult:
    """Check a task's splits for the defects the checklist warns about.

    Args:
      splits: the task's data.
      num_outputs: the model's number of outputs (bounds integer class labels).
      standardizer: the standardizer that produced the inputs, if known.
      mean_tol, std_range: how far a training feature's mean may be from 0 and its std from 1
        on a large training split.
      mean_noise, std_noise: the sampling-noise allowance added on a small one (a
        ``task.subset``, a sample of a host split): a split standardized on more data than it
        holds is standardized only up to sampling noise. A feature's mean may reach
        ``mean_noise * max(std, 1) / sqrt(n)``, and its std may lie beyond ``std_range`` by the
        factor ``exp(std_noise * sqrt((kurtosis - 1) / n) / 2)`` (the standard error of the log
        std; the kurtosis is the feature's own, at least 3), so sparse, heavy-tailed features of
        a small sample pass while an unstandardized feature still fails.
      sample_rows: the most rows read from a split kept on the host (a memmap, a grain
        source); in-memory arrays are always looked at whole.
      sample_bytes: the most bytes read from such a split.
      seed: seed of those samples.

    Returns:
      A :class:`DataCheckResult`: errors (non-finite values, unstandardized features, leakage,
      labels outside the outputs, class imbalance over ``imbalance``) fail it; held-out values
      beyond ``outlier`` training stds are a warning.
    """
    findings: list[tuple[str, str, str]] = []
    stats: dict[str, Any] = {}

    def add(name: str, severity: str, msg: str) -> None:
        findings.append((name, severity, msg))

    splits, sampled = _sample(splits, sample_rows, sample_bytes, seed)
    for name, (k, n) in sampled.items():
        add(
            "sampled",
            "note",
            f"{name} is read on the host: statistics from a seeded random sample of {k} of {n} "
            "rows (estimates; non-finite values outside the sample are not seen)",
        )
    if sampled:
        stats["sampled_rows"] = {name: k for name, (k, _) in sampled.items()}

    present = {
        n: getattr(splits, n) for n in ("train", *_HELD_OUT) if getattr(splits, n) is not None
    }
    finite = _check_finite(present, add)
    train_x = _float_leaves(present["train"][0])
    if finite and train_x:
        _check_features(
            train_x[0],
            present,
            standardizer,
            add,
            stats,
            (mean_tol, std_range, mean_noise, std_noise),
            outlier,
        )
    labels = _labels(splits)
    if labels is not None:
        _check_labels(labels, num_outputs, imbalance, add, stats)
    errors = [f for f in findings if f[1] == "error"]
    reason = _reason(findings, labels is not None, sampled)
    out = DataCheckResult(not errors, reason, findings=findings, stats=stats)
    out.name = "data checks"
    return out


def _reason(findings: list[tuple[str, str, str]], labelled: bool, sampled: dict) -> str:
    """The one-line verdict of :func:`data_checks`."""
    errors = [f for f in findings if f[1] == "error"]
    warnings = [f for f in findings if f[1] == "warning"]
    if not errors:
        reason = "finite, standardized on train, no leakage found"
        reason += ", labels in range, classes balanced" if labelled else ""
        reason += f" ({len(warnings)} warning(s))" if warnings else ""
    else:
        reason = "; ".join(sorted({f[0] for f in errors})) + " problem(s) found"
    if sampled:
        reason += " (sampled " + ", ".join(f"{k} of {n} {m} rows" for m, (k, n) in sampled.items())
        reason += ")"
    return reason


def _check_finite(present: dict[str, Any], add: Any) -> bool:
    """Whether every float leaf of every split is finite (each that is not: an error)."""
    finite = True
    for name, split in present.items():
        for part, tree in zip(("inputs", "targets"), split, strict=True):
            for a in jax.tree.leaves(tree):
                a = np.asarray(a)
                if not np.issubdtype(a.dtype, np.floating):
                    continue
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                if bad:
                    finite = False
                    add(
                        "non-finite",
                        "error",
                        f"{name} {part} have {bad} NaN/inf value(s) of {a.size}; fix or drop "
                        "those examples before training",
                    )
    return finite


def _check_features(x_tr, present, standardizer, add, stats, tolerance, outlier) -> None:
    """Standardization of the training inputs, leakage into and outliers of the held-out
    splits, and the standardizer's statistics against the training split's."""
    mean_tr, std_tr = _stats(x_tr)
    const, live = std_tr < 1e-8, std_tr >= 1e-8
    stats.update(
        train_max_abs_mean=float(np.abs(mean_tr[live]).max(initial=0.0)),
        constant_features=int(const.sum()),
    )
    mean_max, std_lo, std_hi = _standardize_band(x_tr, mean_tr, std_tr, *tolerance)
    far = live & ((np.abs(mean_tr) > mean_max) | (std_tr < std_lo) | (std_tr > std_hi))
    if far.any():
        j = int(np.flatnonzero(far)[0])
        add(
            "standardize",
            "error",
            f"{int(far.sum())} of {int(live.sum())} training features are far from zero mean "
            f"/ unit variance (e.g. feature {j}: mean {mean_tr[j]:.3g}, std {std_tr[j]:.3g}; "
            f"allowed with {int(np.shape(x_tr)[0])} examples: |mean| <= {mean_max[j]:.3g}, std "
            f"in [{std_lo[j]:.3g}, {std_hi[j]:.3g}]); standardize with the training mean and std",
        )
    if const.any():
        add("constant", "note", f"{int(const.sum())} feature(s) are constant on train")
    for split in _HELD_OUT:
        held = _float_leaves(present[split][0]) if split in present else []
        if not held or _leakage(x_tr, held[0], split, add, tight=1e-3):
            continue
        z = np.abs(np.asarray(held[0], np.float64))
        big = int((z > outlier).sum())
        stats[f"{split}_max_abs"] = float(z.max()) if z.size else 0.0
        if big:
            add(
                "outliers",
                "warning",
                f"{split} inputs have {big} value(s) beyond {outlier:g} training stds "
                f"(max {z.max():.3g}): features (nearly) constant on train were divided "
                "by a tiny std; floor the std (e.g. 1 for constant features) or drop them",
            )
    if standardizer is None:
        return
    raw = np.asarray(standardizer.inverse_transform(x_tr), np.float64)
    m_raw, s_raw = _stats(raw)
    s_mean = np.asarray(standardizer.mean, np.float64).reshape(-1)
    s_std = np.asarray(standardizer.std, np.float64).reshape(-1)
    scale = np.maximum(s_raw, 1e-6)
    off = live & ((np.abs(m_raw - s_mean) / scale > 0.05) | (np.abs(s_raw - s_std) / scale > 0.05))
    if off.any():
        add(
            "leakage",
            "error",
            f"the standardizer's statistics differ from the training split's for "
            f"{int(off.sum())} feature(s): it was not fit on the training data only",
        )


def _standardize_band(x, mean, std, mean_tol, std_range, mean_noise, std_noise):
    """Per feature: the largest ``|mean|`` and the std range a standardized feature may show in
    ``n`` examples, ``mean_tol`` / ``std_range`` widened by the sampling noise of ``n`` rows
    (see :func:`data_checks`)."""
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    n = max(int(x.shape[0]), 1)
    scale = np.where(std >= 1e-8, std, 1.0)
    kurtosis = ((x - mean) ** 4).mean(0) / scale**4
    mean_max = np.maximum(mean_tol, mean_noise * np.maximum(std, 1.0) / math.sqrt(n))
    widen = np.exp(std_noise * np.sqrt(np.maximum(kurtosis - 1.0, 2.0) / n) / 2)
    return mean_max, std_range[0] / widen, std_range[1] * widen


def _check_labels(labels, num_outputs, imbalance, add, stats) -> None:
    """Integer labels within the model's outputs, and the training split's class balance."""
    for name, y in labels.items():
        if y.size and (y.min() < 0 or (num_outputs is not None and y.max() >= num_outputs)):
            upper = "num_outputs" if num_outputs is None else str(num_outputs)
            add(
                "label range",
                "error",
                f"{name} labels span [{int(y.min())}, {int(y.max())}] but the model has "
                f"{upper} outputs (valid labels [0, {upper})): label/output mismatch",
            )
    y_tr = labels["train"]
    if not (y_tr.size and y_tr.min() >= 0):
        return
    k = max(int(y_tr.max()) + 1, num_outputs or 0)
    counts = np.bincount(y_tr, minlength=k)[:k]
    lo, hi = int(counts.min()), int(counts.max())
    ratio = hi / lo if lo else math.inf
    stats.update(class_counts=counts.tolist(), imbalance=ratio)
    if ratio > imbalance:
        worst = int(np.argmin(counts))
        add(
            "imbalance",
            "error",
            f"class imbalance {ratio:.3g} (max/min count; class {worst} has {lo} examples, "
            f"the largest {hi}); rebalance, reweight the loss, or watch per-class metrics",
        )
