"""What ``jaxtune bench`` reports: the scores in ``bench.json``, ``bench.md`` and the profiles plot.

The summary is a function of the records alone, so a resumed benchmark writes the same tables
(the per-step times are recorded once, before a submission's studies on a workload).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.bench.config import BenchConfig
from jaxtune.bench.scoring import Scores

__all__ = ["format_summary", "plot_profiles", "scores_record"]

_KINDS = {"time": "time to target", "steps": "steps to target"}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def scores_record(cfg: BenchConfig, scores: Mapping[str, Scores]) -> dict[str, Any]:
    """The scores as JSON: per kind, each submission's score, ``t``, ``r`` and profile
    (``null`` for an infinite ``t`` or ``r``: a miss, or beyond ``r_max``)."""
    subs = [s.name for s in cfg.submissions]
    loads = [w.name for w in cfg.workloads]
    first = next(iter(scores.values()))
    out: dict[str, Any] = {"r_max": cfg["bench.r_max"], "taus": first.taus.tolist()}
    for kind, s in scores.items():
        out[kind] = {
            "score": {n: float(s.score[a]) for a, n in enumerate(subs)},
            "t": {n: {w: _num(s.t[a, b]) for b, w in enumerate(loads)} for a, n in enumerate(subs)},
            "r": {n: {w: _num(s.r[a, b]) for b, w in enumerate(loads)} for a, n in enumerate(subs)},
            "rho": {n: s.rho[a].tolist() for a, n in enumerate(subs)},
        }
    return out


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "-"


def _ratio(t: float, r: float, r_max: float) -> str:
    if math.isfinite(r):
        return f"{r:.3g}"
    return f"> {r_max:g}" if math.isfinite(t) else "miss"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _workload_section(cfg: BenchConfig, state: Mapping, scores: Mapping, b: int) -> list[str]:
    wl = cfg.workloads[b]
    sign = ">=" if wl.mode == "max" else "<="
    lines = [
        f"## {wl.name}: {wl.metric} {sign} {wl.target:g} within {wl.steps} steps "
        f"(evaluated every {wl.eval_every})",
        "",
    ]
    r_max = cfg["bench.r_max"]
    rows = []
    for a, sub in enumerate(cfg.submissions):
        studies = state["studies"][sub.name][wl.name]
        per_study, hits, n = [], 0, 0
        for j in range(cfg["bench.studies"]):
            reached = [t["target_step"] for t in studies[str(j)]["trials"] if t["target_step"]]
            per_study.append(str(min(reached)) if reached else "-")
            hits, n = hits + len(reached), n + len(studies[str(j)]["trials"])
        ms = state["step_times"][sub.name][wl.name]["seconds_per_step"] * 1e3
        st, tt = scores["steps"], scores["time"]
        rows.append(
            [
                sub.name,
                ", ".join(per_study),
                _fmt(st.t[a, b]),
                _ratio(st.t[a, b], st.r[a, b], r_max),
                f"{ms:.3g}",
                _fmt(tt.t[a, b], 3),
                _ratio(tt.t[a, b], tt.r[a, b], r_max),
                f"{hits}/{n}",
            ]
        )
    header = [
        "submission",
        "steps to target, best per study",
        "t (steps)",
        "r (steps)",
        "ms / step",
        "t (s)",
        "r (time)",
        "trials on target",
    ]
    return [*lines, *_table(header, rows), ""]


def format_summary(cfg: BenchConfig, state: Mapping[str, Any], scores: Mapping[str, Scores]) -> str:
    """The markdown summary: the scores, then one table per workload."""
    studies, trials = cfg["bench.studies"], cfg["bench.trials"]
    vectorized = {
        s["vectorized"]
        for sub in state["studies"].values()
        for w in sub.values()
        for s in w.values()
    }
    how = {
        frozenset([True]): "one vectorized sweep per study",
        frozenset([False]): "one sweep per trial",
    }.get(frozenset(vectorized), "mixed")
    r_max = cfg["bench.r_max"]
    lines = [
        "# jaxtune bench",
        "",
        f"{len(cfg.submissions)} submissions x {len(cfg.workloads)} workloads x {studies} "
        f"studies x {trials} quasi-random trials ({how}). Steps to target: the first "
        "evaluation that reached the target; time to target: steps to target x the "
        "submission's seconds per step on the workload, measured alone (compilation "
        "excluded). t: the median over studies of each study's fastest trial; r: t over the "
        f"fastest submission's t, a miss or above {r_max:g} counting as infinite; score: the "
        f"integral of the fraction of workloads with r <= tau over tau in [1, {r_max:g}], "
        f"divided by {r_max - 1:g} (AlgoPerf's grid of {len(scores['time'].taus)} points, "
        "trapezoid rule).",
        "",
        "## Scores",
        "",
    ]
    rows = [
        [s.name, f"{scores['time'].score[a]:.4f}", f"{scores['steps'].score[a]:.4f}"]
        for a, s in enumerate(cfg.submissions)
    ]
    lines += [*_table(["submission", "score (time)", "score (steps)"], rows), ""]
    for b in range(len(cfg.workloads)):
        lines += _workload_section(cfg, state, scores, b)
    return "\n".join(lines)


def plot_profiles(cfg: BenchConfig, scores: Mapping[str, Scores], path: str | Path) -> Path:
    """``rho(tau)`` of every submission, by time and by steps to target, as a PNG."""
    from jaxtune.report import plots

    fig = plots._figure(6 * len(scores), 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(scores)))
    colors = plots._colors(len(cfg.submissions))
    for ax, (kind, s) in zip(axes, scores.items(), strict=True):
        for a, sub in enumerate(cfg.submissions):
            label = f"{sub.name} (score {s.score[a]:.3f})"
            ax.plot(s.taus, s.rho[a], color=colors[a], lw=2, alpha=0.8, label=label)
        ax.set_xlim(s.taus[0], s.taus[-1])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"tau: ratio of {_KINDS[kind]} to the fastest submission")
        ax.set_ylabel("fraction of workloads with r <= tau")
        ax.set_title(f"performance profiles by {_KINDS[kind]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return plots._save(fig, path)
