"""Splits streamed from the host train exactly what device-resident splits train.

The same sweep runs with ``data.placement = "device"`` and ``"host"`` (a numpy array, an
``np.memmap`` and a grain source), and every history, final metric and trained state must be
equal bit for bit: the batch indices are the device path's own and the evaluation adds the same
batch sums in the same order.
"""

import json

import grain
import jax
import numpy as np
import optax
import pytest

import jaxtune
from jaxtune import data as data_lib
from jaxtune.errors import TaskError

CFG = {
    "train": {"steps": 24, "eval_every": 8, "batch_size": 16, "batch_grouping": "pad"},
    "eval": {"batch_size": 48},  # several evaluation batches, the last one masked
    "checkpoint": {"every": 8},
    "log": {"tensorboard": False, "plots": False},
}


def _splits(train=None):
    d = data_lib.make_classification(n_train=256, n_valid=100, n_test=60)
    return d if train is None else d._replace(train=train)


def _task(splits):
    model = jaxtune.mlp(num_outputs=4, input_shape=(16,), widths=(16,), normalization="batch")
    return jaxtune.tasks.classification(model, splits)


def _momentum(hp):
    return optax.sgd(hp["optimizer.learning_rate"], momentum=0.9)


def _sweep(task, placement, sweep, out=None, **kw):
    cfg = {**CFG, "data": {"placement": placement}, "sweep": sweep}
    return jaxtune.run_sweep(cfg, task=task, optimizer=_momentum, out_dir=out, **kw)


def _assert_same(a, b):
    assert [t.final for t in a.trials] == [t.final for t in b.trials]
    assert a.history.keys() == b.history.keys()
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    for t in (t for t in a.trials if t.stopped_step is None):  # a stopped trial keeps no state
        for x, y in zip(
            jax.tree.leaves(a.trial_state(t.id)), jax.tree.leaves(b.trial_state(t.id)), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SHARED = {"grid": {"optimizer.learning_rate": [0.02, 0.1, 0.3]}}
PER_TRIAL = {"grid": {"optimizer.learning_rate": [0.05, 0.2], "train.seed": [0, 3]}}
BATCH_SIZES = {"grid": {"optimizer.learning_rate": [0.05, 0.2], "train.batch_size": [8, 16, 24]}}


@pytest.fixture(scope="module")
def on_device():
    task = _task(_splits())
    return task, {
        name: _sweep(task, "device", sweep)
        for name, sweep in [("shared", SHARED), ("per_trial", PER_TRIAL), ("sizes", BATCH_SIZES)]
    }


@pytest.mark.parametrize("name", ["shared", "per_trial", "sizes"])
def test_host_placement_equals_device_placement_bit_for_bit(name, on_device):
    task, results = on_device
    sweep = {"shared": SHARED, "per_trial": PER_TRIAL, "sizes": BATCH_SIZES}[name]
    streamed = _sweep(task, "host", sweep)
    (info,) = streamed.timing["data"]
    assert info["placement"] == "host" and info["host_splits"] == ["train"]
    assert results[name].timing["data"][0]["placement"] == "device"
    _assert_same(streamed, results[name])


def test_a_memmap_and_a_grain_source_stream_the_same_sweep(on_device, tmp_path):
    _, results = on_device
    splits = _splits()
    x, y = splits.train
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    mm[:] = x
    mm.flush()
    memmapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    valid = np.lib.format.open_memmap(
        tmp_path / "vx.npy", mode="w+", dtype=x.dtype, shape=splits.valid[0].shape
    )
    valid[:] = splits.valid[0]
    valid.flush()
    rows = grain.MapDataset.source([x[i] for i in range(len(y))])
    for train, valid_split in [
        ((memmapped, y), (np.load(tmp_path / "vx.npy", mmap_mode="r"), splits.valid[1])),
        ((rows, y), splits.valid),
    ]:
        source = splits._replace(train=train, valid=valid_split)
        streamed = _sweep(_task(source), "host", SHARED)
        _assert_same(streamed, results["shared"])
    # The memmapped validation split was evaluated from the host, batch by batch.
    assert streamed.timing["data"][0]["host_splits"] == ["train"]


def test_auto_streams_what_does_not_fit_the_device_budget(on_device):
    task, results = on_device
    cfg = {**CFG, "data": {"device_bytes": 1000}, "sweep": SHARED}
    streamed = jaxtune.run_sweep(cfg, task=task, optimizer=_momentum)
    (info,) = streamed.timing["data"]
    assert (info["placement"], info["device_budget_bytes"]) == ("host", 1000)
    assert info["data_bytes"] > 1000
    _assert_same(streamed, results["shared"])


def test_a_streamed_sweep_killed_mid_run_resumes_to_the_same_result(on_device, tmp_path):
    task, results = on_device

    class StopAt(jaxtune.SweepCallback):
        def on_chunk(self, start, stop, history):
            if stop == 16:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _sweep(task, "host", PER_TRIAL, out=tmp_path, callbacks=[StopAt()])
    resumed = _sweep(task, "host", PER_TRIAL, out=tmp_path, resume=True)
    _assert_same(resumed, results["per_trial"])


SPACE = {"optimizer.learning_rate": {"distribution": "log_uniform", "low": 0.01, "high": 0.3}}


@pytest.mark.parametrize(
    ("sweep", "extra"),
    [
        ({**PER_TRIAL, "strategy": "halving"}, {}),
        ({**PER_TRIAL, "strategy": "pbt"}, {"pbt": {"interval": 8}}),
        (
            {"strategy": "optuna", "space": SPACE},
            {"optuna": {"batch_size": 2, "rounds": 2, "sampler": "tpe"}},
        ),
    ],
    ids=["halving", "pbt", "optuna"],
)
def test_every_strategy_streams_the_same_search(sweep, extra, on_device, tmp_path):
    task, _ = on_device
    cfg = {**CFG, **extra, "sweep": sweep}

    def run(placement, out):
        return jaxtune.run_sweep(
            {**cfg, "data": {"placement": placement}}, task=task, optimizer=_momentum, out_dir=out
        )

    device, host = run("device", tmp_path / "device"), run("host", tmp_path / "host")
    assert [d["placement"] for d in host.timing["data"]] == ["host"] * len(host.timing["data"])
    searched = [
        json.dumps(r.search, default=str).replace(str(tmp_path / side), "<out>")
        for r, side in ((host, "host"), (device, "device"))
    ]
    assert searched[0] == searched[1]  # the same rungs, lineage or told values
    _assert_same(host, device)


class _Rows:
    """A random-access source that claims ``claimed`` rows; rows from ``bad`` on have the wrong
    shape."""

    def __init__(self, a, claimed, bad=None):
        self.a, self.claimed, self.bad = a, claimed, bad

    def __len__(self):
        return self.claimed

    def __getitem__(self, i):
        row = self.a[i]  # IndexError past the real end
        return row[:-1] if self.bad is not None and i >= self.bad else row


@pytest.mark.parametrize(
    ("claimed", "bad", "match"),
    [
        (300, None, r"train.* says it has 300 examples but reading indices .*IndexError"),
        (256, 1, r"train.*item \d+ .*shape \(15,\).*\(16,\)"),
    ],
)
def test_a_bad_source_fails_before_compiling(claimed, bad, match, monkeypatch):
    from jaxtune.engine import compile as compile_lib

    x, y = _splits().train
    monkeypatch.setattr(
        compile_lib.CompiledCall, "compile_all", lambda *a, **k: pytest.fail("compiled")
    )
    with pytest.raises(TaskError, match=match):
        task = _task(_splits(train=(_Rows(x, claimed, bad), _Rows(y, claimed))))
        _sweep(task, "host", SHARED)


def test_calls_of_one_trial_share_one_feed_and_equal_the_device(on_device, monkeypatch):
    """Three one-trial calls at one seed read the same rows: one feed is built per chunk and
    given to all three, and each equals its device-placed call."""
    from jaxtune.engine import feed as feed_lib

    task, _ = on_device
    built = []
    build = feed_lib.HostFeed.build
    monkeypatch.setattr(
        feed_lib.HostFeed, "build", lambda self, *a: built.append(a) or build(self, *a)
    )
    one = {**CFG["train"], "max_trials_per_call": 1}

    def run(placement):
        cfg = {**CFG, "train": one, "data": {"placement": placement}, "sweep": SHARED}
        return jaxtune.run_sweep(cfg, task=task, optimizer=_momentum)

    device, host = run("device"), run("host")
    assert host.timing["groups"][0]["calls"] == 3
    assert len(built) == CFG["train"]["steps"] // CFG["train"]["eval_every"]  # one per chunk
    _assert_same(host, device)


def test_a_split_evaluated_from_the_host_equals_the_device_means_bit_for_bit(tmp_path):
    """One trial per call, the validation split memmapped: its means from the host's batch
    sums equal the device program's, in one batch and in several."""
    splits = _splits()
    x = splits.valid[0]
    mm = np.lib.format.open_memmap(tmp_path / "vx.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    mm[:] = x
    mm.flush()
    task = _task(
        splits._replace(valid=(np.load(tmp_path / "vx.npy", mmap_mode="r"), splits.valid[1]))
    )
    for eval_batch in (1024, 48):
        runs = []
        for placement in ("device", "host"):
            cfg = {
                **CFG,
                "train": {**CFG["train"], "max_trials_per_call": 1},
                "eval": {"batch_size": eval_batch},
                "data": {"placement": placement},
                "sweep": SHARED,
            }
            runs.append(jaxtune.run_sweep(cfg, task=task, optimizer=_momentum))
        assert runs[1].timing["data"][0]["host_splits"] == ["train", "valid"]
        _assert_same(runs[1], runs[0])
