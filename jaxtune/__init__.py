"""jaxtune: a JAX toolkit for tuning neural networks.

Composable Optax chains, sound initialization and normalization for Flax models, and sweeps that
train many learning-rate or batch-size settings at once as one jitted, vmapped program.
"""

from jaxtune import checkpoint as checkpoint
from jaxtune import config as config
from jaxtune import data as data
from jaxtune import diagnostics as diagnostics
from jaxtune import initializers as initializers
from jaxtune import models as models
from jaxtune import optimizers as optimizers
from jaxtune import parallel as parallel
from jaxtune import schedules as schedules
from jaxtune import sweep as sweep
from jaxtune.checkpoint import export_trial as export_trial
from jaxtune.config import ConfigError as ConfigError
from jaxtune.config import SweepConfig as SweepConfig
from jaxtune.config import load_config as load_config
from jaxtune.data import Dataset as Dataset
from jaxtune.data import Standardizer as Standardizer
from jaxtune.data import batch_indices as batch_indices
from jaxtune.data import load_digits as load_digits
from jaxtune.data import subset as subset
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
from jaxtune.sweep import SweepCallback as SweepCallback
from jaxtune.sweep import SweepResult as SweepResult
from jaxtune.sweep import TrialResult as TrialResult
from jaxtune.sweep import run_sweep as run_sweep

__version__ = "0.1.0"

__all__ = [
    "CNN",
    "INITIALIZERS",
    "MLP",
    "OPTIMIZERS",
    "ConfigError",
    "Dataset",
    "Model",
    "Standardizer",
    "SweepCallback",
    "SweepConfig",
    "SweepResult",
    "TrialResult",
    "batch_indices",
    "checkpoint",
    "cnn",
    "config",
    "constant",
    "cosine_decay",
    "data",
    "diagnostics",
    "exponential_decay",
    "export_trial",
    "from_linen",
    "from_nnx",
    "get_initializer",
    "initializers",
    "load_config",
    "load_digits",
    "make_optimizer",
    "mlp",
    "models",
    "optimizers",
    "parallel",
    "reinitialize",
    "run_sweep",
    "schedules",
    "step_decay",
    "subset",
    "sweep",
    "warmup",
]
