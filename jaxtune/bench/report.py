"""What ``jaxtune bench`` records and reports: ``bench.json``, ``bench.md``, the profiles plot.

``bench.json`` holds the benchmark's configuration and identity (a hash of what decides its
numbers), the per-step times, every finished study and, at the end, the scores. The summary
is a function of the records alone, so a resumed benchmark writes the same tables (the
per-step times are recorded once, before a submission's studies on a workload).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.bench.config import BenchConfig, bench_config
from jaxtune.bench.scoring import Scores
from jaxtune.errors import ConfigError
from jaxtune.files import atomic_write
from jaxtune.formatting import fmt
from jaxtune.report.figures import figure, palette, save

__all__ = ["arrays", "format_summary", "load_state", "plot_profiles", "save_state", "scores_record"]

_FORMAT = 1
#: Sections that say where and how a sweep runs, never what it computes.
RUN_SECTIONS = ("checkpoint", "log", "parallel")

_KINDS = {"time": "time to target", "steps": "steps to target"}
_STYLES = ("-", "--", ":", "-.")


def _identity(cfg: BenchConfig) -> dict[str, Any]:
    """What decides a benchmark's numbers: not where or how it runs, nor its vectorization."""
    d = cfg.to_dict()
    for section in RUN_SECTIONS:
        d.pop(section, None)
    for key in ("execution", "max_trials_per_call"):
        d.get("train", {}).pop(key, None)
    d["bench"].pop("vectorize", None)
    return d


def _flat(d: Mapping[str, Any]) -> dict[str, str]:
    return {f"{s}.{k}": json.dumps(v, sort_keys=True) for s, t in d.items() for k, v in t.items()}


def load_state(path: Path, cfg: BenchConfig, resume: bool) -> dict[str, Any]:
    """A fresh record, or ``bench.json`` at ``path`` when resuming the same benchmark.

    Raises:
      ConfigError: ``path`` exists without ``resume``, or holds another benchmark (the message
        names the keys that differ).
    """
    ident = _identity(cfg)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    fresh = {"format": _FORMAT, "hash": digest, "config": cfg.to_dict()}
    fresh.update(step_times={}, studies={})
    if not path.is_file():
        return fresh
    if not resume:
        raise ConfigError(
            f"--out {path.parent} already holds a benchmark; pass --resume to continue it or "
            "choose another --out"
        )
    stored = json.loads(path.read_text())
    if stored.get("hash") != digest:
        old, new = _flat(_identity(bench_config(stored["config"]))), _flat(ident)
        keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        raise ConfigError(
            f"cannot resume {path.parent}: the benchmark differs from the stored one in "
            + (", ".join(keys) or "its settings")
        )
    stored["config"] = cfg.to_dict()
    return stored


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write ``bench.json`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(state, indent=2, default=str))


def arrays(cfg: BenchConfig, state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Steps to target ``[S, W, studies, trials]`` and seconds per step ``[S, W]``."""
    subs, loads = cfg.submissions, cfg.workloads
    steps = np.full((len(subs), len(loads), cfg["bench.studies"], cfg["bench.trials"]), np.inf)
    per_step = np.zeros((len(subs), len(loads)))
    for a, sub in enumerate(subs):
        for b, wl in enumerate(loads):
            per_step[a, b] = state["step_times"][sub.name][wl.name]["seconds_per_step"]
            for j in range(cfg["bench.studies"]):
                for t in state["studies"][sub.name][wl.name][str(j)]["trials"]:
                    if t["target_step"] is not None:
                        steps[a, b, j, t["id"]] = t["target_step"]
    return steps, per_step


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


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _fmt(x: float) -> str:
    return fmt(float(x)) if math.isfinite(x) else "-"


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
                _fmt(tt.t[a, b]),
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
        f"{_n(len(cfg.submissions), 'submission')} x {_n(len(cfg.workloads), 'workload')} x "
        f"{_n(studies, 'study', 'studies')} x {_n(trials, 'quasi-random trial')} ({how}). "
        "Steps to target: the first "
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
    fig = figure(6 * len(scores), 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(scores)))
    colors = palette(len(cfg.submissions))
    for ax, (kind, s) in zip(axes, scores.items(), strict=True):
        for a, sub in enumerate(cfg.submissions):
            label = f"{sub.name} (score {s.score[a]:.3f})"
            style = _STYLES[a % len(_STYLES)]  # tied submissions stay visible
            ax.plot(s.taus, s.rho[a], style, color=colors[a], lw=2, alpha=0.8, label=label)
        ax.set_xlim(s.taus[0], s.taus[-1])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"tau: ratio of {_KINDS[kind]} to the fastest submission")
        ax.set_ylabel("fraction of workloads with r <= tau")
        ax.set_title(f"performance profiles by {_KINDS[kind]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)
