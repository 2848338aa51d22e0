"""Sweep configuration: dotted keys, validation, search spaces, TOML.

A sweep is a *base* configuration (one value per dotted key, such as
``optimizer.learning_rate``) and a ``[sweep]`` table that says which keys vary and how:

.. code-block:: toml

    [optimizer]
    name = "momentum"

    [hparams]                 # the user's own numeric hyperparameters
    label_smoothing = 0.0

    [sweep]
    method = "grid"
    seeds = 2

    [sweep.grid]
    "optimizer.learning_rate" = [0.01, 0.1]
    "hparams.label_smoothing" = [0.0, 0.1]

:func:`expand_trials` turns a :class:`SweepConfig` into the overrides of every trial; each trial is
the base configuration with its overrides applied.
"""

from jaxtune.config.dotted import dotted as dotted
from jaxtune.config.dotted import nested as nested
from jaxtune.config.schema import HPARAMS as HPARAMS
from jaxtune.config.schema import KEYS as KEYS
from jaxtune.config.schema import NUMERIC_KEYS as NUMERIC_KEYS
from jaxtune.config.schema import check_value as check_value
from jaxtune.config.schema import is_hparam as is_hparam
from jaxtune.config.schema import numeric_keys as numeric_keys
from jaxtune.config.space import trial_name as trial_name
from jaxtune.config.sweep_config import SweepConfig as SweepConfig
from jaxtune.config.sweep_config import check_same as check_same
from jaxtune.config.sweep_config import config_hash as config_hash
from jaxtune.config.sweep_config import determines_results as determines_results
from jaxtune.config.sweep_config import diff_configs as diff_configs
from jaxtune.config.sweep_config import expand_trials as expand_trials
from jaxtune.config.toml_io import default_config as default_config
from jaxtune.config.toml_io import default_config_dict as default_config_dict
from jaxtune.config.toml_io import load_config as load_config
from jaxtune.config.toml_io import parse_override as parse_override
from jaxtune.config.toml_io import to_toml as to_toml
from jaxtune.errors import ConfigError as ConfigError

__all__ = [
    "HPARAMS",
    "KEYS",
    "NUMERIC_KEYS",
    "ConfigError",
    "SweepConfig",
    "check_same",
    "check_value",
    "config_hash",
    "default_config",
    "default_config_dict",
    "diff_configs",
    "dotted",
    "expand_trials",
    "is_hparam",
    "load_config",
    "nested",
    "numeric_keys",
    "parse_override",
    "to_toml",
    "trial_name",
]
