"""Ready benchmark workloads: task factories with a validation target and a step budget.

Each :class:`Workload` of :data:`WORKLOADS` names a task factory (usable as ``task.factory``),
its validation metric and target, a step budget and a reference optimizer whose learning rate
reaches the target within the budget. Nothing is downloaded: the data are scikit-learn's
bundled sets, seeded synthetic images and the Python standard library's own source.

Example:
    >>> import jaxtune
    >>> w = jaxtune.workloads.get_workload("diabetes")
    >>> w.metric, w.mode
    ('valid.loss', 'min')
    >>> sorted(jaxtune.tasks.check_task(w.task(), {}))
    ['mae', 'mse']
"""

from jaxtune.workloads import common as common
from jaxtune.workloads import images as images
from jaxtune.workloads import language as language
from jaxtune.workloads import tabular as tabular
from jaxtune.workloads import vision as vision
from jaxtune.workloads.workload import WORKLOADS as WORKLOADS
from jaxtune.workloads.workload import Workload as Workload
from jaxtune.workloads.workload import get_workload as get_workload

__all__ = [
    "WORKLOADS",
    "Workload",
    "common",
    "get_workload",
    "images",
    "language",
    "tabular",
    "vision",
]
