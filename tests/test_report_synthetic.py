"""The ranked table and the plots of hand-made results (no training): ordering, the summary line,
which curves a reader can tell apart."""

import math

import numpy as np
import pytest

from jaxtune import config as config_lib
from jaxtune.engine import Selection, SweepResult, TrialResult
from jaxtune.report import plots
from jaxtune.report.progress import format_table


def _trial(i, acc, diverged=False, step=None):
    return TrialResult(
        id=i,
        name=f"{i:03d}-lr={i}",
        hparams={"optimizer.learning_rate": float(i + 1), "train.batch_size": 16 * (1 + i % 2)},
        final={
            "train.loss": 0.5,
            "valid.loss": 1.0 - (0 if math.isnan(acc) else acc),
            "valid.accuracy": acc,
            "test.accuracy": 1.0 - acc,
        },
        diverged=diverged,
        diverged_step=step,
        best_step=None,
        best=acc,
    )


def _fake_result(trials):
    cfg = config_lib.SweepConfig.from_dict({"train": {"steps": 4, "eval_every": 2}})
    n = len(trials)
    history = {
        "train.loss": np.array([[2.0, 1.5, np.nan, np.nan]] * n, np.float32),
        "grad_norm": np.ones((n, 4), np.float32),
        "clipped": np.zeros((n, 4), bool),
        "learning_rate": np.ones((n, 4), np.float32),
        "eval_step": np.array([2, 4], np.int32),
        "valid.loss": np.ones((n, 2), np.float32),
        "valid.accuracy": np.full((n, 2), 0.5, np.float32),
    }
    return SweepResult(cfg, trials, history, {"steps_done": 4}, Selection("valid.accuracy", "max"))


def test_format_table_ordering():
    result = _fake_result(
        [
            _trial(0, 0.5),
            _trial(1, 0.9),
            _trial(2, math.nan),
            _trial(3, 0.99, diverged=True, step=7),
            _trial(4, 0.7),
            _trial(5, 0.2, diverged=True, step=3),
        ]
    )
    assert [t.id for t in result.ranked()] == [1, 4, 0, 2, 3, 5]
    lines = format_table(result).splitlines()
    body = lines[2:-1]
    assert [int(line.split()[0]) for line in body] == [1, 2, 3, 4, 5, 6]
    assert [line.split()[1] for line in body] == [result.trials[i].name for i in (1, 4, 0, 2, 3, 5)]
    assert body[-2].split()[-1] == "7" and body[0].split()[-1] == "-"
    assert lines[-1] == (
        "6 trials, 2 diverged; best by valid.accuracy (max): 001-lr=1 (valid.accuracy 0.9; "
        "test.accuracy 0.1 (reported, not used to choose))"
    )
    top = format_table(result, top=2).splitlines()
    assert len(top) == 2 + 2 + 2 and top[-2] == "... 4 more"


def test_plots_of_a_synthetic_result_with_divergence(tmp_path):
    result = _fake_result(
        [_trial(0, 0.5), _trial(1, 0.9), _trial(2, 0.3, diverged=True, step=2), _trial(3, 0.6)]
    )
    paths = plots.write_plots(result, tmp_path)
    assert [p.name for p in paths] == ["lr_vs_metric.png", "curves.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    # A result without history draws only the learning-rate plot.
    result.history = {}
    assert [p.name for p in plots.write_plots(result, tmp_path / "b")] == ["lr_vs_metric.png"]


def test_curves_name_few_trials_and_key_many_by_the_learning_rate():
    from matplotlib import colormaps

    few = plots.curves_figure(_fake_result([_trial(i, 0.5 + i / 10) for i in range(4)]))
    (legend,) = [ax.get_legend() for ax in few.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legend.get_texts()] == [f"{i:03d}-lr={i}" for i in range(4)]

    result = _fake_result([_trial(i, 0.5) for i in range(12)])  # lr 1 .. 12
    fig = plots.curves_figure(result)
    assert len(fig.axes) == 3 and all(ax.get_legend() is None for ax in fig.axes)
    bar = fig.axes[2]
    assert bar.get_ylabel() == "optimizer.learning_rate (line colour)"
    assert bar.get_yscale() == "log" and bar.get_ylim() == pytest.approx((1.0, 12.0))
    lines = fig.axes[0].get_lines()
    viridis = colormaps["viridis"]
    np.testing.assert_allclose(lines[0].get_color(), viridis(0.0))
    np.testing.assert_allclose(lines[-1].get_color(), viridis(1.0))
    middle = math.log(6.0) / math.log(12.0)  # lr 6 on a log scale from 1 to 12
    np.testing.assert_allclose(lines[5].get_color(), viridis(middle), atol=1 / 255)

    for i, t in enumerate(result.trials):
        t.hparams = {"optimizer.name": ["sgd", "adam"][i % 2], "train.seed": i}
    fig = plots.curves_figure(result)
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legend.get_texts()] == ["name=sgd", "name=adam"]
    lines = fig.axes[0].get_lines()
    assert lines[0].get_color() == lines[2].get_color() != lines[1].get_color()
