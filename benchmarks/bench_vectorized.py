#!/usr/bin/env python
"""Wall time of ``jaxtune bench`` with each study one vectorized sweep, against the same trials
run one at a time (each its own one-trial sweep, ``bench.vectorize = false``), in one run.

Each variant is one ``jaxtune bench CONFIG`` command in its own fresh process (so neither
inherits the other's compiled programs), one after the other on the same machine. Both run
the same studies and quasi-random points; the script checks that they reach the same steps to
target and scores on steps, and reports for each variant the command's wall time, the time in
the studies' sweeps (compile and run) and in the solo timing runs, with the machine's load
average before and after.

Run::

    python benchmarks/bench_vectorized.py                     # examples/bench.toml
    python benchmarks/bench_vectorized.py --quick             # 1 study x 2 trials (a smoke run)
    python benchmarks/bench_vectorized.py --out benchmarks/results/bench_vectorized_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUICK = ["bench.studies=1", "bench.trials=2"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _git_commit() -> str:
    try:
        cmd = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _relative(arg: str) -> str:
    return os.path.relpath(arg, REPO) if os.path.isabs(arg) else arg


def run_variant(config: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    """One ``jaxtune bench`` command in a fresh process; its wall time and ``bench.json``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "jaxtune.cli", "bench", str(config), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    load_before, up_before = os.getloadavg(), _uptime()
    log(f"$ {' '.join(cmd)}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"jaxtune bench exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    record = json.loads((out / "bench.json").read_text())
    studies = [s for sub in record["studies"].values() for w in sub.values() for s in w.values()]
    timings = [t for sub in record["step_times"].values() for t in sub.values()]
    return {
        "command": ["jaxtune", *(_relative(c) for c in cmd[3:])],
        "wall_s": wall,
        "studies": len(studies),
        "trials": sum(len(s["trials"]) for s in studies),
        "study_wall_s": sum(s["wall_s"] for s in studies),
        "study_compile_s": sum(s["compile_s"] for s in studies),
        "study_run_s": sum(s["run_s"] for s in studies),
        "timing_compile_s": sum(t["compile_s"] for t in timings),
        "timing_run_s": sum(sum(t["run_s"]) for t in timings),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "uptime_before": up_before,
        "uptime_after": _uptime(),
        "summary": (out / "bench.md").read_text(),
        "_record": record,
    }


def _steps(record: dict[str, Any]) -> dict[str, list[int | None]]:
    return {
        f"{s}/{w}/{j}": [t["target_step"] for t in study["trials"]]
        for s, sub in record["studies"].items()
        for w, load in sub.items()
        for j, study in load.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "bench.toml"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_vectorized"))
    parser.add_argument("--quick", action="store_true", help="1 study x 2 trials")
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args()
    sets = QUICK if args.quick else []
    runs = Path(args.runs)
    vec = run_variant(Path(args.config), runs / "vectorized", sets)
    solo = run_variant(Path(args.config), runs / "one_at_a_time", [*sets, "bench.vectorize=false"])
    same_steps = _steps(vec["_record"]) == _steps(solo["_record"])
    score_v = vec["_record"]["scores"]["steps"]["score"]
    score_s = solo["_record"]["scores"]["steps"]["score"]
    same_scores = all(np.isclose(score_v[k], score_s[k], rtol=0, atol=0) for k in score_v)
    for v in (vec, solo):
        v["scores"] = v.pop("_record")["scores"]
        for kind in ("time", "steps"):
            v["scores"][kind] = {"score": v["scores"][kind]["score"]}
        v["scores"].pop("taus", None)
    import jax

    out = {
        "what": "examples/bench.toml through `jaxtune bench`: each study one vectorized sweep "
        "against every trial its own one-trial sweep (bench.vectorize = false), each variant "
        "in a fresh process",
        "config": os.path.relpath(Path(args.config).resolve(), REPO),
        "quick": args.quick,
        "vectorized": vec,
        "one_at_a_time": solo,
        "speedup_wall": solo["wall_s"] / vec["wall_s"],
        "speedup_studies": solo["study_wall_s"] / vec["study_wall_s"],
        "same_steps_to_target": same_steps,
        "same_scores_on_steps": same_scores,
        "git": _git_commit(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
        },
    }
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(
        f"vectorized: {vec['wall_s']:.1f} s (studies {vec['study_wall_s']:.1f} s: compile "
        f"{vec['study_compile_s']:.1f} s, run {vec['study_run_s']:.1f} s)\n"
        f"one at a time: {solo['wall_s']:.1f} s (studies {solo['study_wall_s']:.1f} s: compile "
        f"{solo['study_compile_s']:.1f} s, run {solo['study_run_s']:.1f} s)\n"
        f"speedup: {out['speedup_wall']:.2f}x wall, {out['speedup_studies']:.2f}x in the "
        f"studies; same steps to target: {same_steps}; same scores on steps: {same_scores}"
    )


if __name__ == "__main__":
    main()
