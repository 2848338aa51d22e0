"""``jaxtune bench``: an AlgoPerf-style optimizer benchmark, each study one vectorized sweep.

Submissions (optimizers with search spaces) x workloads (tasks with a validation target and a
step budget) x studies x quasi-random trials; each trial's steps and time to its target, and
AlgoPerf's scores (:mod:`jaxtune.bench.scoring`). See docs/bench.md.
"""

from jaxtune.bench import config as config
from jaxtune.bench import scoring as scoring
from jaxtune.bench.config import BENCH_KEYS as BENCH_KEYS
from jaxtune.bench.config import BenchConfig as BenchConfig
from jaxtune.bench.config import bench_config as bench_config
from jaxtune.bench.config import load_bench_config as load_bench_config
from jaxtune.bench.entries import SUBMISSION_KEYS as SUBMISSION_KEYS
from jaxtune.bench.entries import WORKLOAD_KEYS as WORKLOAD_KEYS
from jaxtune.bench.entries import BenchWorkload as BenchWorkload
from jaxtune.bench.entries import Submission as Submission
from jaxtune.bench.runner import BenchResult as BenchResult
from jaxtune.bench.runner import run_benchmark as run_benchmark

__all__ = [
    "BENCH_KEYS",
    "SUBMISSION_KEYS",
    "WORKLOAD_KEYS",
    "BenchConfig",
    "BenchResult",
    "BenchWorkload",
    "Submission",
    "bench_config",
    "config",
    "load_bench_config",
    "run_benchmark",
    "scoring",
]
