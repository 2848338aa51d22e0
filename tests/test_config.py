import itertools
import json
import math
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import qmc

from jaxtune import config as cfg_lib
from jaxtune.config import ConfigError, SweepConfig, expand_trials, load_config, to_toml
from jaxtune.spec import FRACTION, NON_NEGATIVE, POSITIVE, KeySpec, check_arg, concrete


def test_defaults_and_dotted_or_nested_keys_agree():
    a = SweepConfig.from_dict({"optimizer": {"learning_rate": 0.3}, "train": {"steps": 7}})
    b = SweepConfig.from_dict({"optimizer.learning_rate": 0.3, "train.steps": 7})
    assert a.base == b.base
    assert a["optimizer.learning_rate"] == 0.3
    assert a["task.model"] == "mlp"


def test_grid_is_cartesian_product_with_seeds_fastest():
    cfg = SweepConfig.from_dict(
        {
            "train": {"seed": 5},
            "sweep": {
                "seeds": 2,
                "grid": {"optimizer.learning_rate": [0.01, 0.1], "train.batch_size": [8, 16]},
            },
        }
    )
    trials = expand_trials(cfg)
    expected = [
        {"optimizer.learning_rate": lr, "train.batch_size": bs, "train.seed": 5 + s}
        for lr, bs in itertools.product([0.01, 0.1], [8, 16])
        for s in range(2)
    ]
    assert trials == expected


def test_random_log_uniform_within_bounds_and_log_spread():
    cfg = SweepConfig.from_dict(
        {
            "sweep": {
                "method": "random",
                "num_trials": 400,
                "space": {
                    "optimizer.learning_rate": {
                        "distribution": "log_uniform",
                        "low": 1e-4,
                        "high": 1.0,
                    },
                    "optimizer.name": {"choice": ["sgd", "adam"]},
                },
            }
        }
    )
    trials = expand_trials(cfg)
    lrs = np.array([t["optimizer.learning_rate"] for t in trials])
    assert np.all((lrs >= 1e-4) & (lrs <= 1.0))
    # log10 of a log-uniform draw is uniform on [-4, 0]: mean -2, std 4/sqrt(12).
    logs = np.log10(lrs)
    assert abs(logs.mean() + 2) < 0.25
    assert abs(logs.std() - 4 / math.sqrt(12)) < 0.2
    assert {t["optimizer.name"] for t in trials} == {"sgd", "adam"}


def test_quasi_random_uses_scrambled_halton():
    space = {
        "optimizer.learning_rate": {"distribution": "uniform", "low": 0.0001, "high": 0.5},
        "optimizer.momentum": {"distribution": "uniform", "low": 0.5, "high": 0.99},
    }
    cfg = SweepConfig.from_dict(
        {"sweep": {"method": "quasi_random", "num_trials": 16, "seed": 3, "space": space}}
    )
    trials = expand_trials(cfg)
    pts = qmc.Halton(d=2, scramble=True, seed=3).random(16)
    lr = 0.0001 + pts[:, 0] * (0.5 - 0.0001)
    mom = 0.5 + pts[:, 1] * (0.99 - 0.5)
    np.testing.assert_allclose([t["optimizer.learning_rate"] for t in trials], lr)
    np.testing.assert_allclose([t["optimizer.momentum"] for t in trials], mom)


def test_explicit_trial_list():
    cfg = SweepConfig.from_dict(
        {"sweep": {"trials": [{"optimizer.learning_rate": 0.1}, {"optimizer": {"name": "adam"}}]}}
    )
    assert cfg.method == "list"
    assert expand_trials(cfg) == [{"optimizer.learning_rate": 0.1}, {"optimizer.name": "adam"}]


_LR_SPACE = {"optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1.0}}


@pytest.mark.parametrize(
    "d, match",
    [
        (
            {"optimizer": {"learning_rat": 0.1}},
            r"optimizer.learning_rat.*did you mean 'optimizer.learning_rate'",
        ),
        ({"optimizer": {"name": "adamax"}}, r"optimizer.name.*'sgd'"),
        ({"optimizer": {"learning_rate": -1.0}}, r"optimizer.learning_rate.*\(0, inf\)"),
        ({"optimizer": {"momentum": 1.0}}, r"optimizer.momentum.*\[0, 1\)"),
        ({"train": {"batch_size": "big"}}, r"train.batch_size.*integer"),
        ({"task": {"widths": [0]}}, r"task.widths"),
        ({"task": {"init": "kaiming"}}, r"task.init"),
        ({"sweep": {"method": "bayes"}}, r"sweep.method"),
        ({"sweep": {"grid": {"optimizer.learning_rate": []}}}, r"empty"),
        ({"sweep": {"grid": {"train.steps": [1, 2]}}}, r"train.steps cannot vary"),
        ({"train": {"grad_norm": "no"}}, r"train.grad_norm.*true or false"),
        ({"sweep": {"grid": {"train.grad_norm": [True, False]}}}, r"train.grad_norm cannot vary"),
        ({"sweep": {"method": "random", "space": {}}}, r"sweep.space"),
        ({"sweep": {"gird": {}}}, r"did you mean 'grid'"),
        ({"optimizer": {"name": "adagrad", "momentum": 0.9}}, r"optimizer.momentum"),
        # A warmup as long as the run leaves the cosine no steps (its rate would be 0 or NaN).
        (
            {"schedule": {"name": "warmup_cosine", "warmup_steps": 20}, "train": {"steps": 20}},
            r"schedule.warmup_steps = 20 is invalid.*\[0, 20\)",
        ),
        (
            {
                "schedule": {"name": "warmup_cosine"},
                "train": {"steps": 20},
                "sweep": {"grid": {"schedule.warmup_steps": [5, 30]}},
            },
            r"schedule.warmup_steps = 30",
        ),
        # Sampled integers: a continuous distribution would give batch sizes like 46.57.
        (
            {
                "sweep": {
                    "method": "random",
                    "num_trials": 2,
                    "space": {
                        "train.batch_size": {"distribution": "uniform", "low": 16, "high": 64}
                    },
                }
            },
            r"sweep.space\['train.batch_size'\].distribution = 'uniform'"
            r".*'int_uniform' or 'choice'",
        ),
        (
            {"sweep": {"method": "random", "num_trials": 2, "seed": -1, "space": _LR_SPACE}},
            r"sweep.seed = -1 is invalid: expected an integer >= 0",
        ),
        # Tables the method would drop without a word.
        (
            {
                "sweep": {
                    "method": "random",
                    "num_trials": 2,
                    "space": _LR_SPACE,
                    "grid": {"train.batch_size": [16, 64]},
                }
            },
            r"sweep.grid is only used by sweep.method = 'grid' \(got 'random'\)",
        ),
        (
            {"sweep": {"method": "grid", "trials": [{"optimizer.learning_rate": 0.1}]}},
            r"sweep.trials is only used by sweep.method = 'list'",
        ),
        (
            {"sweep": {"grid": {"optimizer.learning_rate": [0.1]}, "num_trials": 4}},
            r"sweep.num_trials is only used by sweep.method = 'random' or 'quasi_random'",
        ),
        ({"train": {"log_every": 10}}, r"unknown configuration key 'train.log_every'"),
        (
            {"task": {"dataset": "synthetic", "valid_fraction": 0.3}},
            r"task.valid_fraction = 0.3 has no effect with task.dataset = 'synthetic'",
        ),
    ],
)
def test_bad_config_names_the_key(d, match):
    with pytest.raises(ConfigError, match=match):
        SweepConfig.from_dict(d)


def test_load_config_toml_and_overrides(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        '[optimizer]\nname = "adam"\n[sweep]\nseeds = 2\n'
        '[sweep.grid]\n"optimizer.learning_rate" = [0.001, 0.01]\n'
    )
    cfg = load_config(p, ["train.steps=33", "task.normalization=batch"])
    assert cfg["optimizer.name"] == "adam"
    assert cfg["train.steps"] == 33
    assert cfg["task.normalization"] == "batch"
    assert len(expand_trials(cfg)) == 4


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[task]\nmodel = \n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(bad)


def test_roundtrip_and_hash():
    cfg = cfg_lib.default_config()
    again = SweepConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg_lib.config_hash(again) == cfg_lib.config_hash(cfg)
    other = cfg.replace({"train.steps": 10})
    assert cfg_lib.diff_configs(cfg, other) == ["train.steps"]
    assert len(expand_trials(cfg)) >= 24


def test_trial_name_is_short_and_safe():
    name = cfg_lib.trial_name({"optimizer.learning_rate": 0.001, "train.batch_size": 32})
    assert name == "lr=0.001,bs=32"


# --------------------------------------------------------------------------------------------
# The one spec: jaxtune.spec.KeySpec and check_arg
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, value, parsed",
    [
        (KeySpec("int", low=1), 20.0, 20),
        (KeySpec("float", low=0.0, low_open=True), 3, 3.0),
        (KeySpec("sizes"), 8, (8,)),
        (KeySpec("sizes"), [], ()),
        (KeySpec("shape"), [8, 8, 1], (8, 8, 1)),
        (KeySpec("dtype", choices=("float32", "bfloat16")), jnp.bfloat16, "bfloat16"),
        (KeySpec("auto_int", choices=("auto",)), "auto", "auto"),
        (KeySpec("auto_int", choices=("auto",)), 4, 4),
        (KeySpec("init"), "normal(0.01)", "normal(0.01)"),
        (KeySpec("float", optional=True), None, None),
    ],
)
def test_key_spec_parses_and_normalises(spec, value, parsed):
    got = spec.parse(value)
    assert got == parsed and type(got) is type(parsed)


@pytest.mark.parametrize(
    "spec, value, expected",
    [
        (KeySpec("int", low=1), 0, "an integer in [1, inf)"),
        (KeySpec("int", low=1), 2.5, "an integer in [1, inf)"),
        (KeySpec("int", low=1), True, "an integer in [1, inf)"),
        (KeySpec("float", low=0.0, high=1.0, high_open=True), 1.0, "a number in [0, 1)"),
        (KeySpec("float"), math.nan, "a number in (-inf, inf)"),
        (KeySpec("choice", choices=("a", "b")), "c", "one of 'a', 'b'"),
        (KeySpec("shape"), [], "a non-empty list of positive integers"),
        (KeySpec("sizes"), [4, 0], "a list of positive integers"),
        (KeySpec("bool"), 1, "true or false"),
        (KeySpec("str", optional=True), "", "a non-empty string or null (unset)"),
        (KeySpec("auto_int", choices=("auto",)), "all", "'auto' or a positive integer"),
        (KeySpec("dtype", choices=("float32",)), "float16", "one of 'float32' (a name or a"),
        (KeySpec("callable", text="a callable step -> value"), 0.1, "a callable step -> value"),
    ],
)
def test_key_spec_errors_name_the_key_and_the_allowed_values(spec, value, expected):
    with pytest.raises(ConfigError) as info:
        spec.check("section.key", value)
    assert str(info.value) == f"section.key = {value!r} is invalid: expected {spec.describe()}"
    assert spec.describe().startswith(expected)
    with pytest.raises(ValueError) as info:
        check_arg("arg", value, spec)
    assert not isinstance(info.value, ConfigError)
    assert str(info.value) == f"arg = {value!r} is invalid: arg must be {spec.describe()}"


def test_key_spec_keeps_a_specific_reason():
    with pytest.raises(
        ConfigError, match=r"^task.init = 'kaiming' is invalid: unknown initializer"
    ):
        KeySpec("init").check("task.init", "kaiming")


def test_array_specs_check_concrete_values_elementwise_and_pass_tracers():
    assert check_arg("lr", jnp.array([0.1, 1.0]), POSITIVE) is not None
    with pytest.raises(ValueError, match=r"^lr = .* is invalid: lr must be a number in \(0, inf\)"):
        check_arg("lr", np.array([0.1, -1.0]), POSITIVE)
    with pytest.raises(ValueError, match="momentum"):
        check_arg("momentum", 1.0, FRACTION)
    with pytest.raises(ValueError, match="decay"):
        check_arg("decay", "fast", NON_NEGATIVE)
    traced = jax.jit(lambda v: check_arg("lr", v, POSITIVE) * 2)(-1.0)
    assert float(traced) == -2.0
    assert concrete(jnp.float32(2.0)) == 2.0


def test_every_config_key_describes_itself():
    for key, spec in cfg_lib.KEYS.items():
        assert spec.describe(), key
        if spec.default is not None:
            assert spec.check(key, spec.default) == spec.default, key


def test_the_optuna_strategy_takes_a_space_without_a_method():
    space = {"optimizer.learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1.0}}
    d = {"optuna": {"batch_size": 3, "rounds": 2}, "sweep": {"strategy": "optuna", "space": space}}
    cfg = SweepConfig.from_dict(d)
    assert (cfg.strategy, cfg.method, cfg.num_trials) == ("optuna", "random", 6)
    lrs = [t["optimizer.learning_rate"] for t in expand_trials(cfg)]
    assert len(lrs) == 6 and all(1e-3 <= lr <= 1.0 for lr in lrs)
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    # Without the strategy a space still needs its method, and the error says how to give it.
    with pytest.raises(ConfigError, match="set sweep.method, or list the values in sweep.grid"):
        SweepConfig.from_dict({"sweep": {"space": space}})
    # An explicit grid method is not overridden.
    with pytest.raises(ConfigError, match="got sweep.method = 'grid'"):
        SweepConfig.from_dict({"sweep": {"strategy": "optuna", "method": "grid", "grid": {}}})


def test_check_same_names_each_results_key_that_changed():
    stored = SweepConfig.from_dict(
        {"train": {"steps": 20}, "sweep": {"grid": {"optimizer.learning_rate": [0.1, 0.2]}}}
    )
    allowed = stored.replace({"checkpoint.every": 5, "log.plots": False, "parallel.devices": 1})
    cfg_lib.check_same(stored, allowed, "runs/x")
    changed = stored.replace({"train.steps": 30, "sweep.grid.optimizer.learning_rate": [0.1]})
    with pytest.raises(ConfigError) as info:
        cfg_lib.check_same(stored, changed, "the checkpointed sweep in runs/x")
    message = str(info.value)
    assert message.startswith("cannot resume the checkpointed sweep in runs/x: ")
    assert "sweep.grid (stored {'optimizer.learning_rate': [0.1, 0.2]}, now {'optimizer" in message
    assert "train.steps (stored 20, now 30)" in message
    assert message.index("sweep.grid") < message.index("train.steps")
    with pytest.raises(ConfigError, match=r"differs in tune.x \(stored 1, now unset\);"):
        cfg_lib.check_same(stored, stored, "runs/t", extra=({"tune.x": 1}, {}))
    cfg_lib.check_same(stored, stored, "runs/t", extra=({"tune.x": 1}, {"tune.x": 1}))


def test_to_toml_round_trips():
    data = {
        "a": {
            "s": 'q"uo\\te\n\x7f',
            "i": -3,
            "f": 1e-05,
            "g": 3.0,
            "h": 0.1,
            "b": True,
            "l": [1, 2],
            "ll": [[8], [16, 16]],
            "none": None,
        },
        "sweep": {
            "method": "grid",
            "grid": {"optimizer.learning_rate": [0.001, 1e30], "task.widths": [[8], [16]]},
            "space": {"x.y": {"distribution": "log_uniform", "low": 0.001, "high": 3.0}},
            "trials": [{"optimizer.learning_rate": 0.1}, {"optimizer.learning_rate": 0.2}],
        },
    }
    back = tomllib.loads(to_toml(data))
    expected = json.loads(json.dumps(data))
    del expected["a"]["none"]
    assert back == expected
