"""The sweep engine: config -> trials -> groups -> calls -> execution forms -> results.

Read top-down: :mod:`~jaxtune.engine.step` (the public per-trial step),
:mod:`~jaxtune.engine.trials` (trials as arrays), :mod:`~jaxtune.engine.bind` (a group's task
and optimizer), :mod:`~jaxtune.engine.plan` (groups and calls),
:mod:`~jaxtune.engine.batching` (each trial's batches), :mod:`~jaxtune.engine.execution` (how a
call loops and batches its trials, and how that is chosen), :mod:`~jaxtune.engine.compile`
(ahead-of-time programs, cache, memory), :mod:`~jaxtune.engine.prepare` (a population, planned
and compiled), :mod:`~jaxtune.engine.population` (its calls and states),
:mod:`~jaxtune.engine.loop` (chunks, callbacks, checkpoints), :mod:`~jaxtune.engine.run` (the
strategy's context and ``run_sweep``) and :mod:`~jaxtune.engine.result` (what comes out).
"""

from jaxtune.engine.result import Selection as Selection
from jaxtune.engine.result import SweepResult as SweepResult
from jaxtune.engine.result import TrialResult as TrialResult
from jaxtune.engine.run import SweepCallback as SweepCallback
from jaxtune.engine.run import run_sweep as run_sweep
from jaxtune.engine.step import TrainState as TrainState
from jaxtune.engine.step import TrainStep as TrainStep
from jaxtune.engine.step import make_train_step as make_train_step
from jaxtune.engine.step import trial_keys as trial_keys

__all__ = [
    "Selection",
    "SweepCallback",
    "SweepResult",
    "TrainState",
    "TrainStep",
    "TrialResult",
    "make_train_step",
    "run_sweep",
    "trial_keys",
]
