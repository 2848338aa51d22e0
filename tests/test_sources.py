"""Host sources, chunk stacking and the background prefetcher (jaxtune.data.sources / prefetch)."""

from __future__ import annotations

import argparse
import signal
import threading
import time

import jax
import numpy as np
import pytest

from jaxtune import data as D
from jaxtune.diagnostics import data_checks
from jaxtune.errors import TaskError

grain = pytest.importorskip("grain")

WAIT = 10.0  # seconds an event may take before a test fails (never reached when it passes)


def _arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 2)).astype(np.float32)
    y = rng.integers(0, 5, size=n).astype(np.int32)
    return x, y


class Tracking(np.memmap):
    """A memmap that records every ``__getitem__`` key and every ufunc applied to it."""

    log: list

    def __getitem__(self, key):
        Tracking.log.append(("getitem", key))
        return super().__getitem__(key)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        Tracking.log.append(("ufunc", ufunc.__name__))
        inputs = [np.asarray(a) if isinstance(a, Tracking) else a for a in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)


def _memmap(path, array, cls=np.memmap):
    mm = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape)
    mm[:] = array
    mm.flush()
    del mm
    return cls(path, dtype=array.dtype, mode="r", shape=array.shape)


@pytest.fixture()
def tracking(tmp_path):
    Tracking.log = []

    def make(array, name="x.bin"):
        return _memmap(tmp_path / name, array, cls=Tracking)

    return make


class Batched:
    """A random-access source with a batched read (``__getitems__``) that counts its calls."""

    def __init__(self, items):
        self.items, self.calls = items, []

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.calls.append(("one", i))
        return self.items[i]

    def __getitems__(self, keys):
        self.calls.append(("many", list(keys)))
        return [self.items[i] for i in keys]


INDICES = np.array([7, 0, 39, 7, 12, 3, 3, 25])


# --- gathering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda x, y: grain.MapDataset.source(list(zip(x, y, strict=True))),
        lambda x, y: grain.MapDataset.range(len(y)).map(lambda i: (x[i], y[i])),
        lambda x, y: Batched(list(zip(x, y, strict=True))),
    ],
    ids=["grain-source", "grain-map", "getitems"],
)
def test_a_record_source_gathers_exactly_what_numpy_indexing_does(make):
    x, y = _arrays()
    source = D.as_source(make(x, y), name="data.train")
    xb, yb = source.gather(INDICES)
    for got, want in ((xb, x[INDICES]), (yb, y[INDICES])):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert len(source) == 40
    assert source.element_spec == (
        jax.ShapeDtypeStruct((3, 2), np.float32),
        jax.ShapeDtypeStruct((), np.int32),
    )
    assert source.nbytes == x.nbytes + y.nbytes


def test_batched_reads_are_used_and_dict_items_stack_to_dicts():
    x, y = _arrays()
    records = Batched([{"image": x[i], "label": y[i]} for i in range(len(y))])
    source = D.as_source(records)
    source.element_spec  # noqa: B018  (reads item 0 once)
    records.calls.clear()
    batch = source.gather(INDICES)
    assert records.calls == [("many", INDICES.tolist())]
    np.testing.assert_array_equal(batch["image"], x[INDICES])
    np.testing.assert_array_equal(batch["label"], y[INDICES])


def test_a_source_of_inputs_beside_an_array_of_labels():
    x, y = _arrays()
    split = (grain.MapDataset.source(list(x)), y)
    assert D.is_host_source(split) and not D.is_host_source((x, y))
    xb, yb = D.as_source(split).gather(INDICES)
    np.testing.assert_array_equal(xb, x[INDICES])
    np.testing.assert_array_equal(yb, y[INDICES])


def test_a_memmap_gathers_like_the_array_and_reads_only_the_rows_asked(tracking):
    x, y = _arrays()
    mm = tracking(x)
    source = D.as_source((mm, y), name="data.train")
    assert len(source) == 40 and source.nbytes == x.nbytes + y.nbytes
    assert source.element_spec[0] == jax.ShapeDtypeStruct((3, 2), np.float32)
    assert Tracking.log == []  # building it, its spec and its size read nothing
    xb, yb = source.gather(INDICES)
    assert type(xb) is np.ndarray and xb.tobytes() == x[INDICES].tobytes()
    np.testing.assert_array_equal(yb, y[INDICES])
    assert len(Tracking.log) == 1
    kind, key = Tracking.log[0]
    assert kind == "getitem" and np.array_equal(key, INDICES)


def test_views_read_through_to_the_rows_they_name(tracking):
    x, y = _arrays()
    source = D.as_source((tracking(x), y))
    view = source.take(np.array([30, 2, 9, 4])).take(np.array([3, 0]), name="data.valid")
    assert Tracking.log == [] and len(view) == 2 and view.name == "data.valid"
    xb, yb = view.gather(np.array([0, 1, 0]))
    np.testing.assert_array_equal(xb, x[[4, 30, 4]])
    np.testing.assert_array_equal(yb, y[[4, 30, 4]])
    labels = source.part(1).gather(np.arange(40))
    np.testing.assert_array_equal(labels, y)
    assert [k for k, _ in Tracking.log] == ["getitem"]  # the labels read no inputs


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [40, -1, 1000])
@pytest.mark.parametrize("kind", ["array", "grain"])
def test_an_index_out_of_range_names_the_split_and_its_length(kind, bad):
    x, y = _arrays()
    data = (x, y) if kind == "array" else grain.MapDataset.source(list(zip(x, y, strict=True)))
    source = D.as_source(data, name="data.valid")
    # grain itself wraps indices past the end (index % len): the source must not.
    with pytest.raises(IndexError, match=rf"data.valid: index {bad} .* 40 examples .*\[0, 39\]"):
        source.gather(np.array([1, bad]))
    with pytest.raises(IndexError, match="data.valid"):
        source.take(np.array([bad]))


def test_mismatched_items_name_the_split_index_leaf_and_both_shapes():
    x, y = _arrays()
    items = [(x[i], y[i]) for i in range(40)]
    items[9] = (x[9][:2], y[9])
    source = D.as_source(grain.MapDataset.source(items), name="data.train")
    with pytest.raises(
        TaskError,
        match=r"data.train: item 9 leaf \[0\] has shape \(2, 2\) and dtype float32, but "
        r"element_spec \(read from item 0\) has shape \(3, 2\) and dtype float32",
    ):
        source.gather(np.array([3, 9]))
    items[9] = (x[9], np.int64(y[9]))
    with pytest.raises(TaskError, match=r"item 9 leaf \[1\] has shape \(\) and dtype int64"):
        D.as_source(grain.MapDataset.source(items)).gather(np.array([9]))
    items[9] = {"x": x[9]}
    with pytest.raises(TaskError, match="item 9 has structure"):
        D.as_source(grain.MapDataset.source(items)).gather(np.array([9]))


def test_check_source_samples_and_reports_what_it_finds():
    x, y = _arrays()
    items = [(x[i], y[i]) for i in range(40)]
    spec = D.check_source(grain.MapDataset.source(items), "data.train", sample=64)
    assert spec == D.as_source((x, y)).element_spec
    bad = list(items)
    bad[17] = (x[17][:1], y[17])
    with pytest.raises(TaskError, match=r"data.train: item 17 leaf \[0\]"):
        D.check_source(grain.MapDataset.source(bad), "data.train")
    nan = x.copy()
    nan[23, 1, 0] = np.nan
    with pytest.raises(TaskError, match=r"data.test\[0\]: item 23 holds NaN or inf"):
        D.check_source((nan, y), "data.test")
    raw = grain.MapDataset.source([b"record"] * 4)
    with pytest.raises(TaskError, match="must be numeric, got dtype.*parse them"):
        D.check_source(raw, "data.train")
    filtered = grain.MapDataset.source(items).filter(lambda item: item[1] != y[0])
    with pytest.raises(TaskError, match="item 0 is None"):
        D.check_source(filtered, "data.train")
    with pytest.raises(TaskError, match="disagree on the number of examples"):
        D.as_source((x, y[:5]))
    with pytest.raises(TaskError, match="neither an array"):
        D.as_source((x, 3.0))


# --- splits -------------------------------------------------------------------------------------


def test_splits_functions_accept_host_sources(tracking):
    x, y = _arrays(n=100)
    host = D.Splits((tracking(x), y))
    plain = D.Splits((x, y))
    assert D.num_examples(host.train) == 100 and D.input_shape(host) == (3, 2)
    assert D.num_classes(host) == D.num_classes(plain) == int(y.max()) + 1
    for made, want in (
        (D.with_validation(host, 0.2), D.with_validation(plain, 0.2)),
        (D.subset(host, 30), D.subset(plain, 30)),
    ):
        for got_split, want_split in zip(made, want, strict=True):
            if want_split is None:
                assert got_split is None
                continue
            assert D.is_host_source(got_split)
            got = got_split.gather(np.arange(D.num_examples(got_split)))
            for g, w in zip(got, want_split, strict=True):
                np.testing.assert_array_equal(g, w)
    assert not any(kind == "ufunc" for kind, _ in Tracking.log)


def test_check_splits_and_check_task_on_host_sources(tracking):
    from jaxtune import tasks
    from jaxtune.models import mlp

    x, y = _arrays(n=60)
    items = grain.MapDataset.source([(x[i], y[i]) for i in range(40)])
    splits = D.Splits(items, (tracking(x[40:]), y[40:]))
    D.check_splits(splits)
    with pytest.raises(TaskError, match="data.valid does not match data.train"):
        D.check_splits(splits._replace(valid=(x[40:, :2], y[40:])))
    model = mlp(num_outputs=5, input_shape=(3, 2), widths=(4,))
    # Labels of a source of (inputs, targets) items cannot be read alone: a clear refusal.
    with pytest.raises(TaskError, match=r"data.train is not a pair of columns"):
        tasks.classification(model, splits)
    inputs = grain.MapDataset.source(list(x[:40]))
    task = tasks.classification(model, splits._replace(train=(inputs, y[:40])))
    assert tasks.check_task(task, {}) == ["accuracy"]
    with pytest.raises(TaskError, match="too small"):
        tasks.classification(mlp(num_outputs=4, input_shape=(3, 2), widths=(4,)), task.data)


# --- chunks and evaluation batches --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "memmap", "grain"])
def test_stack_batches_equals_indexing_reshaped_and_reads_each_row_once(kind, tmp_path):
    x, y = _arrays()
    idx = np.random.default_rng(1).integers(0, 40, size=(5, 8))
    records = Batched(list(zip(x, y, strict=True)))
    source = {
        "array": (x, y),
        "memmap": (_memmap(tmp_path / "x.bin", x), y),
        "grain": records,
    }[kind]
    xb, yb = D.stack_batches(source, idx)
    assert xb.shape == (5, 8, 3, 2) and yb.shape == (5, 8)
    assert xb.tobytes() == x[idx.reshape(-1)].reshape(5, 8, 3, 2).tobytes()
    np.testing.assert_array_equal(yb, y[idx])
    if kind == "grain":
        reads = [keys for k, keys in records.calls if k == "many"]
        assert reads == [sorted(set(idx.reshape(-1).tolist()))]


@pytest.mark.parametrize(("n", "batch_size"), [(7, 3), (6, 3), (2, 5), (1, 1)])
def test_eval_indices_cover_the_split_once(n, batch_size):
    idx, mask = D.eval_indices(n, batch_size)
    assert idx.shape == mask.shape and idx.shape[1] == min(n, batch_size)
    assert sorted(idx[mask].tolist()) == list(range(n))
    values = np.arange(n) ** 2.0
    assert np.where(mask, values[idx], 0.0).sum() == values.sum()


# --- the prefetcher -----------------------------------------------------------------------------


def test_the_prefetcher_yields_in_order_and_ends():
    with D.Prefetcher(lambda k: k * k, iter(range(6)), depth=2) as p:
        assert list(p) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(StopIteration):
            p.get()
    assert not p.running


def test_the_prefetcher_builds_the_next_item_while_the_caller_holds_this_one():
    started = [threading.Event() for _ in range(5)]
    built = [threading.Event() for _ in range(5)]

    def make(k):
        started[k].set()
        built[k].set()
        return k

    with D.Prefetcher(make, range(5)) as p:
        for k in range(5):
            assert p.get() == k
            if k + 1 < 5:
                # The next item is built while the caller still uses item k ...
                assert built[k + 1].wait(WAIT)
            if k + 2 < 5:
                # ... and, with depth 1, nothing beyond it until the caller asks again.
                assert not started[k + 2].is_set()


def test_a_slow_make_and_a_slow_consumer_overlap():
    """make(k + 1) does not finish until the caller is busy with item k, and the caller does
    not finish item k until make(k + 1) has started: only running both at once passes (run
    one after the other, each wait would time out), so the time taken is the max, not the sum.
    """
    consuming = [threading.Event() for _ in range(4)]
    started = [threading.Event() for _ in range(4)]
    make_saw, caller_saw = [], []

    def make(k):
        started[k].set()
        if k > 0:
            make_saw.append(consuming[k - 1].wait(WAIT))
        return k

    with D.Prefetcher(make, range(4)) as p:
        for k in p:
            consuming[k].set()
            if k < 3:
                caller_saw.append(started[k + 1].wait(WAIT))
    assert make_saw == caller_saw == [True, True, True]


def test_an_error_in_make_is_raised_in_the_caller_and_stops_the_thread():
    def make(k):
        if k == 2:
            raise ZeroDivisionError("planted")
        return k

    p = D.Prefetcher(make, range(5))
    assert [p.get(), p.get()] == [0, 1]
    with pytest.raises(ZeroDivisionError, match="planted"):
        p.get()
    assert not p.running
    with pytest.raises(StopIteration):
        p.get()

    def items():
        yield 0
        raise KeyError("items")

    with D.Prefetcher(lambda k: k, items()) as p, pytest.raises(KeyError, match="items"):
        list(p)


def test_close_stops_a_prefetcher_left_half_read():
    made = []
    p = D.Prefetcher(made.append, range(1000))
    p.get()
    p.close()
    assert not p.running and len(made) <= 3
    with pytest.raises(StopIteration):
        p.get()


def test_ctrl_c_in_the_caller_does_not_hang():
    release = threading.Event()

    def make(k):
        if k == 1:
            release.wait(WAIT)
        return k

    main = threading.main_thread().ident
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt), D.Prefetcher(make, range(3)) as p:
        p.get()
        timer.start()
        p.get()  # blocks on make(1) until the signal arrives
    timer.join()
    release.set()
    p._thread.join(WAIT)
    assert not p.running


def test_depth_is_validated():
    with pytest.raises(ValueError, match="depth = 0"):
        D.Prefetcher(lambda k: k, range(2), depth=0)


# --- jaxtune check data ------------------------------------------------------------------------


def test_data_checks_sample_a_large_memmap_and_say_so(tracking):
    n = 50_000
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int32)
    splits = D.Splits((tracking(x), y), (x[:500], y[:500]))
    r = data_checks(splits, num_outputs=3)
    assert r.passed, r.report()
    assert "sampled 10000 of 50000 train rows" in r.reason
    assert any(f[0] == "sampled" and "10000 of 50000" in f[2] for f in r.findings)
    assert r.stats["sampled_rows"] == {"train": 10_000}
    # What it read: one gather of 10,000 distinct rows, nothing else of the file.
    assert [kind for kind, _ in Tracking.log] == ["getitem"]
    rows = Tracking.log[0][1]
    assert len(np.unique(rows)) == 10_000
    want = np.abs(x[rows].astype(np.float64).mean(0)).max()
    assert r.stats["train_max_abs_mean"] == pytest.approx(want)
    counts = np.bincount(y[rows], minlength=3)
    assert r.stats["class_counts"] == counts.tolist()
    few = data_checks(splits, num_outputs=3, sample_bytes=20 * 100)  # 16 + 4 bytes a row
    assert "sampled 100 of 50000 train rows" in few.reason
    bad = x * 30 + 5
    r = data_checks(D.Splits((tracking(bad, "bad.bin"), y), (x[:500], y[:500])), num_outputs=3)
    assert not r.passed and "standardize" in r.reason and "sampled" in r.reason


def test_cli_check_data_samples_a_memmap_task(tmp_path, capsys):
    from jaxtune.cli import add_config_arguments
    from jaxtune.config import to_toml
    from jaxtune.diagnostics import add_subcommands

    n = 30_000
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(n, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", (np.arange(n) % 3).astype(np.int32))
    (tmp_path / "mmtask.py").write_text(
        "import pathlib\n"
        "import numpy as np\n"
        "from jaxtune import data, tasks\n"
        "from jaxtune.models import mlp\n"
        "HERE = pathlib.Path(__file__).parent\n"
        "def make_task(structure):\n"
        "    x = np.load(HERE / 'x.npy', mmap_mode='r')\n"
        "    y = np.load(HERE / 'y.npy')\n"
        "    splits = data.Splits((x, y))\n"
        "    return tasks.classification(mlp(num_outputs=3, input_shape=(4,), widths=(4,)), "
        "splits)\n"
    )
    config = tmp_path / "mm.toml"
    config.write_text(to_toml({"task": {"factory": "mmtask:make_task"}}))
    parser = argparse.ArgumentParser(prog="jaxtune")
    add_subcommands(parser.add_subparsers(dest="command"), add_config_arguments)
    args = parser.parse_args(["check", "data", str(config)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "sampled 10000 of 27000 train rows" in out
    assert "of 3000" not in out  # the 3,000-row validation view is read whole


def test_no_thread_is_left_running():
    time.sleep(0)  # after the tests above, only threads that are not prefetchers remain
    assert not [t for t in threading.enumerate() if t.name == "jaxtune-prefetch" and t.is_alive()]
