"""Adaptive search: strategies that spend less compute on trials that are not going anywhere.

``sweep.strategy`` picks one (:data:`jaxtune.registry.STRATEGIES`); every strategy ranks trials on
the validation metric (``select.metric``) and works for user tasks:

* ``halving`` / ``hyperband`` (:mod:`~jaxtune.search.halving`): successive halving with the
  survivors repacked into smaller programs;
* ``pbt`` (:mod:`~jaxtune.search.pbt`): population-based training, exploit and explore between
  chunks, hyperparameters changed without recompiling;
* ``optuna`` (:mod:`~jaxtune.search.optuna`): batched model-based proposals through Optuna's
  ask-and-tell API, each batch trained as one vectorized group.

``jaxtune tune`` (:mod:`~jaxtune.search.tune`) runs the tuning order as staged sweeps.
"""

from jaxtune.search.tune import TuneResult as TuneResult
from jaxtune.search.tune import run_tune as run_tune

__all__ = ["TuneResult", "run_tune"]
