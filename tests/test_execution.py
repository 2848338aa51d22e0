"""Every execution form trains each trial exactly as its solo run does.

Each form runs the same sweeps: a BatchNorm CNN whose trials have different batch sizes (one
program, batches gathered at the largest size and masked), and an MLP learning-rate sweep whose
trials share one batch per step, one of which diverges. Every trial is compared with the
plain optax loop of tests/reference.py, trained alone at its own batch size. The comparisons
hold at ``train.precision = "float32"`` (the default): matrix products at full float32
precision, so the only differences are summation orders (vmap batches per-trial products).
"""

import jax
import numpy as np
import optax
import pytest
from reference import accuracy, assert_tree_close, optax_loop

import jaxtune
from jaxtune import data as data_lib
from jaxtune.engine import execution, form_choice
from jaxtune.errors import ConfigError

STEPS, EVAL_EVERY = 8, 4
CNN_TRIALS = [
    {"optimizer.learning_rate": 0.05, "train.batch_size": 8},
    {"optimizer.learning_rate": 0.02, "train.batch_size": 16},
]
MLP_RATES = [0.05, 1e30, 0.2]  # the second overflows at step 1
CNN_FORMS = [
    "scan/vmap",
    "scan:3/vmap",
    "unroll/vmap",
    "unroll:2/unroll",
    "host/vmap",
    "host/unroll",
    "host/map",
    "scan/map:2",
    "scan:3(unroll=2)/unroll",
]
MLP_FORMS = ["scan/vmap", "scan(unroll=3)/vmap", "unroll:3/vmap", "host/unroll", "host/map:2"]


def _momentum(hp):
    return optax.sgd(hp["optimizer.learning_rate"], momentum=0.9)


@pytest.fixture(scope="module")
def cnn_task():
    data = data_lib.make_classification(flat=False, image_shape=(8, 8, 1), num_features=64)
    model = jaxtune.cnn(
        num_outputs=4, input_shape=(8, 8, 1), channels=(4, 8), normalization="batch"
    )
    return model, jaxtune.tasks.classification(model, data)


@pytest.fixture(scope="module")
def mlp_task():
    data = data_lib.make_classification()
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(32,))
    return model, jaxtune.tasks.classification(model, data)


def _solo(model, task, lr, bs):
    return optax_loop(
        model, task.data.train, optax.sgd(lr, momentum=0.9), steps=STEPS, batch_size=bs
    )


@pytest.fixture(scope="module")
def cnn_reference(cnn_task):
    model, task = cnn_task
    return [
        _solo(model, task, t["optimizer.learning_rate"], t["train.batch_size"]) for t in CNN_TRIALS
    ]


@pytest.fixture(scope="module")
def mlp_reference(mlp_task):
    model, task = mlp_task
    return [_solo(model, task, lr, 16) for lr in MLP_RATES]


def _sweep(task, form, sweep):
    return jaxtune.run_sweep(
        {
            "train": {
                "steps": STEPS,
                "eval_every": EVAL_EVERY,
                "batch_size": 16,
                "batch_grouping": "pad",
                "execution": form,
            },
            "sweep": sweep,
        },
        task=task,
        optimizer=_momentum,
    )


def _assert_trial(result, i, model, task, ref):
    params, model_state, hist = ref
    trial = result.trials[i]
    assert trial.diverged_step == hist["diverged_step"]
    taken = len(hist["loss"])
    np.testing.assert_allclose(result.history["train.loss"][i, :taken], hist["loss"], rtol=1e-4)
    if hist["diverged_step"] is not None:
        assert np.isnan(result.history["train.loss"][i, taken:]).all()
        return
    # Batched and single products sum in different orders; over 8 steps a ReLU kink can
    # amplify last-bit differences to ~1e-4 (a wrong batch, mask or statistic gives ~1e-1).
    state = result.trial_state(i)
    assert_tree_close(state.params, params, rtol=1e-3, atol=1e-4)
    assert_tree_close(state.model_state, model_state, rtol=1e-3, atol=1e-4)
    want = accuracy(model, params, model_state, task.data.valid)
    assert trial.final["valid.accuracy"] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("form", CNN_FORMS)
def test_batchnorm_cnn_with_masked_batches(form, cnn_task, cnn_reference):
    model, task = cnn_task
    result = _sweep(task, form, {"method": "list", "trials": CNN_TRIALS})
    assert [e["form"] for e in result.timing["execution"]] == [form]
    assert result.timing["groups"][0]["batch_sizes"] == [8, 16]
    for i, ref in enumerate(cnn_reference):
        _assert_trial(result, i, model, task, ref)


@pytest.mark.parametrize("form", MLP_FORMS)
def test_mlp_trials_sharing_one_batch_with_a_diverging_trial(form, mlp_task, mlp_reference):
    model, task = mlp_task
    result = _sweep(task, form, {"grid": {"optimizer.learning_rate": MLP_RATES}})
    assert result.timing["groups"][0]["shared_batch"]
    assert [h["diverged_step"] for _, _, h in mlp_reference] == [None, 1, None]
    for i, ref in enumerate(mlp_reference):
        _assert_trial(result, i, model, task, ref)


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("scan/vmap", execution.Form()),
        ("scan:8/vmap", execution.Form("scan", 8)),
        ("unroll/unroll", execution.Form("unroll", None, "unroll")),
        ("host/map:4", execution.Form("host", None, "map", 4)),
        ("scan:8(unroll=2)/map:4", execution.Form("scan", 8, "map", 4, 2)),
        ("scan(unroll=4)/unroll", execution.Form("scan", None, "unroll", unroll=4)),
    ],
)
def test_forms_round_trip_their_configuration_value(text, form):
    assert execution.parse_form(text) == form and str(form) == text


@pytest.mark.parametrize(
    "bad",
    [
        "scan",
        "host:2/vmap",
        "scan/vmap:2",
        "loop/vmap",
        "scan:0/vmap",
        "scan:00/vmap",
        "scan/map:00",
        "scan/map:x",
        "host(unroll=2)/vmap",
        "unroll(unroll=2)/vmap",
        "scan(unroll=0)/vmap",
        "scan(unroll=2/vmap",
    ],
)
def test_bad_execution_values_name_the_key_and_the_forms(bad):
    with pytest.raises(ConfigError, match=r"train\.execution = .* expected 'auto' or LOOP/TRIALS"):
        jaxtune.SweepConfig.from_dict({"train": {"execution": bad}})


def test_candidates_follow_the_backend_and_the_model():
    cpu_conv = form_choice.candidates("cpu", True, 4)
    assert [str(f) for f in cpu_conv] == ["host/unroll", "host/vmap", "host/map"]
    assert all(f.loop == "host" for f in form_choice.candidates("cpu", True, 32))
    assert [str(f) for f in form_choice.candidates("cpu", True, 1)] == ["host/unroll"]
    assert [str(f) for f in form_choice.candidates("cpu", False, 1)] == [
        "scan/unroll",
        "scan(unroll=4)/unroll",
        "host/unroll",
    ]
    assert [str(f) for f in form_choice.candidates("cpu", False, 64)] == ["scan/vmap", "host/vmap"]
    # Trials too large for the CPU cache rule try host-driven unrolled trials first.
    large = form_choice.candidates("cpu", False, 8, large=True)
    assert [str(f) for f in large] == ["host/unroll", "scan/vmap", "host/vmap"]
    assert form_choice.candidates("cpu", False, 64, large=True) == form_choice.candidates(
        "cpu", False, 64
    )
    gpu = form_choice.candidates("gpu", True, 8)
    assert [str(f) for f in gpu] == ["scan/vmap", "scan/map", "host/vmap"]


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the last-level cache rule is for CPU devices only"
)
def test_cpu_calls_fit_half_the_cache_and_large_trials_come_eight_to_a_call():
    from jaxtune.engine import compile as compile_lib

    half, mesh = compile_lib._last_level_cache_bytes() / 2, compile_lib.make_mesh(1)
    # 16 trials fit half the cache: calls of 16 (a group of 40 is cut), not large.
    fit = compile_lib.fit_memory(half / 16, 40, mesh)
    assert (fit.per_call, fit.large) == (16, False) and "half the" in fit.reason
    # Only 4 fit: large trials, 8 to a call; a group of 8 stays one call.
    fit = compile_lib.fit_memory(half / 4, 40, mesh)
    assert (fit.per_call, fit.large) == (8, True) and "large trials" in fit.reason
    assert compile_lib.fit_memory(half / 4, 8, mesh).per_call is None


def test_choose_measures_while_the_budget_lasts_and_keeps_the_fastest():
    forms = [execution.Form("host", trials=t) for t in ("unroll", "vmap", "map")]
    rates = {"host/unroll": 10.0, "host/vmap": 30.0, "host/map": 20.0}
    seen = []

    def measure(form):
        seen.append(str(form))
        return rates[str(form)], 1.0, 2.0

    kw = {"work": lambda f: 1.0, "rate_guess": 10.0, "compile_guess": 2.0}
    chosen = form_choice.choose(forms, measure, 100.0, **kw)
    assert str(chosen.form) == "host/vmap" and seen == list(rates)
    assert chosen.spent_s == pytest.approx(1.0 + 3.0 + 3.0)  # the first's compile is free
    assert chosen.rates == rates
    # 4.5 s: the first two fit (0.2 + 2.2 predicted), the third (predicted 2 + 0.2) does not.
    seen.clear()
    assert str(form_choice.choose(forms, measure, 4.5, **kw).form) == "host/vmap"
    assert seen == ["host/unroll", "host/vmap"]
    # Too little for two measurements: nothing is measured, the first candidate runs.
    seen.clear()
    chosen = form_choice.choose(forms, measure, 2.0, **kw)
    assert (str(chosen.form), chosen.rates, seen) == ("host/unroll", {}, [])


def test_convolutions_are_found_at_any_depth():
    conv = jaxtune.cnn(num_outputs=2, input_shape=(4, 4, 1), channels=(2,))
    dense = jaxtune.mlp(num_outputs=2, input_shape=(3,), widths=(4,))
    x4, x3 = np.ones((2, 4, 4, 1), np.float32), np.ones((2, 3), np.float32)

    def loss(model, x):
        def f(key):
            params, state = model.init(key)
            return jax.grad(lambda p: model.apply(p, state, x, train=True)[0].sum())(params)

        return f

    key = jax.random.PRNGKey(0)
    assert form_choice.has_convolution(loss(conv, x4), key)
    assert not form_choice.has_convolution(loss(dense, x3), key)


def test_auto_measures_records_its_choice_and_a_resumed_run_reuses_it(tmp_path, monkeypatch):
    from jaxtune.engine import prepare

    monkeypatch.setattr(prepare, "MEASURE_FRACTION", 1e9)  # measure whatever the sweep's length
    monkeypatch.setattr(prepare, "_CHOSEN", {})
    cfg = {
        "task": {"dataset": "synthetic", "widths": [16]},
        "train": {"steps": 30, "eval_every": 10, "batch_size": 16},
        "checkpoint": {"every": 10},
        "log": {"tensorboard": False, "plots": False},
        "sweep": {"grid": {"optimizer.learning_rate": [0.01, 0.1, 0.3]}},
    }
    whole = jaxtune.run_sweep(cfg, out_dir=tmp_path / "whole")
    (chosen,) = whole.timing["execution"]
    assert chosen["how"] == "auto: measured"
    assert chosen["form"] in chosen["rates"] and len(chosen["rates"]) >= 2
    assert all(r > 0 for r in chosen["rates"].values())

    class StopAt(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            if stop == 20:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jaxtune.run_sweep(cfg, out_dir=tmp_path / "cut", callbacks=[StopAt()])
    # A new process knows nothing of this one's measurements: the resumed run must take the
    # checkpoint's record, never measure again, also when it changes what a resume may change
    # (where it logs and checkpoints).
    monkeypatch.setattr(prepare, "_CHOSEN", {})
    monkeypatch.setattr(form_choice, "choose", lambda *a, **k: pytest.fail("measured again"))
    changed = {**cfg, "checkpoint": {"every": 5}, "log": {"tensorboard": False, "plots": True}}
    resumed = jaxtune.run_sweep(changed, out_dir=tmp_path / "cut", resume=True)
    (again,) = resumed.timing["execution"]
    assert (again["form"], again["how"]) == (chosen["form"], "recorded (resumed run)")
    for key, value in whole.history.items():
        np.testing.assert_array_equal(resumed.history[key], value, err_msg=key)


@pytest.mark.parametrize(("precision", "hlo"), [("float32", "HIGHEST"), ("bfloat16", "DEFAULT")])
def test_precision_is_the_matmul_precision_of_every_program_and_is_recorded(precision, hlo):
    from jaxtune.engine.bind import Binder
    from jaxtune.engine.prepare import Preparer

    d = {
        "task": {"dataset": "synthetic", "widths": [8]},
        "train": {"steps": 4, "eval_every": 2, "batch_size": 8, "precision": precision},
    }
    cfg = jaxtune.SweepConfig.from_dict(d)
    pop = Preparer(cfg, Binder(cfg), planned_trial_steps=4).population([(0, {})], fresh=False)
    text = pop.calls[0].program.lower_steps(1, 2).as_text()
    assert f"precision = [{hlo}, {hlo}]" in text
    assert jaxtune.run_sweep(d).timing["precision"] == precision
