"""jaxtune: a JAX toolkit for tuning neural networks.

Composable Optax chains, sound initialization and normalization for Flax models, and sweeps that
train many learning-rate or batch-size settings of any task at once, as one jitted, vmapped
program, chosen on a validation split.
"""

from jaxtune import checkpoint as checkpoint
from jaxtune import config as config
from jaxtune import data as data
from jaxtune import diagnostics as diagnostics
from jaxtune import engine as engine
from jaxtune import initializers as initializers
from jaxtune import models as models
from jaxtune import optimizers as optimizers
from jaxtune import parallel as parallel
from jaxtune import registry as registry
from jaxtune import report as report
from jaxtune import schedules as schedules
from jaxtune import tasks as tasks
from jaxtune import workloads as workloads
from jaxtune.bench import run_benchmark as run_benchmark
from jaxtune.config import SweepConfig as SweepConfig
from jaxtune.config import load_config as load_config
from jaxtune.data import Splits as Splits
from jaxtune.data import Standardizer as Standardizer
from jaxtune.data import batch_indices as batch_indices
from jaxtune.data import load_diabetes as load_diabetes
from jaxtune.data import load_digits as load_digits
from jaxtune.data import subset as subset
from jaxtune.engine import SweepCallback as SweepCallback
from jaxtune.engine import SweepResult as SweepResult
from jaxtune.engine import TrainState as TrainState
from jaxtune.engine import TrialResult as TrialResult
from jaxtune.engine import make_train_step as make_train_step
from jaxtune.engine import run_sweep as run_sweep
from jaxtune.errors import ConfigError as ConfigError
from jaxtune.errors import TaskError as TaskError
from jaxtune.export import export_trial as export_trial
from jaxtune.initializers import INITIALIZERS as INITIALIZERS
from jaxtune.initializers import get_initializer as get_initializer
from jaxtune.initializers import reinitialize as reinitialize
from jaxtune.models import CNN as CNN
from jaxtune.models import MLP as MLP
from jaxtune.models import Model as Model
from jaxtune.models import cnn as cnn
from jaxtune.models import from_linen as from_linen
from jaxtune.models import from_nnx as from_nnx
from jaxtune.models import mlp as mlp
from jaxtune.optimizers import OPTIMIZERS as OPTIMIZERS
from jaxtune.optimizers import make_optimizer as make_optimizer
from jaxtune.schedules import constant as constant
from jaxtune.schedules import cosine_decay as cosine_decay
from jaxtune.schedules import exponential_decay as exponential_decay
from jaxtune.schedules import step_decay as step_decay
from jaxtune.schedules import warmup as warmup
from jaxtune.tasks import Task as Task

__version__ = "0.3.0.dev0"

__all__ = [
    "CNN",
    "INITIALIZERS",
    "MLP",
    "OPTIMIZERS",
    "ConfigError",
    "Model",
    "Splits",
    "Standardizer",
    "SweepCallback",
    "SweepConfig",
    "SweepResult",
    "Task",
    "TaskError",
    "TrainState",
    "TrialResult",
    "batch_indices",
    "checkpoint",
    "cnn",
    "config",
    "constant",
    "cosine_decay",
    "data",
    "diagnostics",
    "engine",
    "exponential_decay",
    "export_trial",
    "from_linen",
    "from_nnx",
    "get_initializer",
    "initializers",
    "load_config",
    "load_diabetes",
    "load_digits",
    "make_optimizer",
    "make_train_step",
    "mlp",
    "models",
    "optimizers",
    "parallel",
    "registry",
    "reinitialize",
    "report",
    "run_benchmark",
    "run_sweep",
    "schedules",
    "step_decay",
    "subset",
    "tasks",
    "warmup",
    "workloads",
]
