"""Bad ``jaxtune check`` / ``jaxtune lr-find`` flag values and diagnostics arguments exit 2 (or
raise ``ConfigError``) naming the flag or argument, before anything runs; the data check
tolerates the sampling noise of a small, correctly standardized training split."""

import numpy as np
import pytest
from cli_common import TINY

from jaxtune import data as data_lib
from jaxtune import diagnostics as D
from jaxtune.cli import main
from jaxtune.data.splits import take_subset
from jaxtune.errors import ConfigError


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


# argparse rejects the value itself: exit 2, "argument --FLAG: ..." on stderr.
FLAG_CASES = {
    "lr-find --steps 0": (["lr-find", "--mode", "classic", "--steps", "0"], "--steps", "0"),
    "lr-find --min-lr 0": (["lr-find", "--mode", "classic", "--min-lr", "0"], "--min-lr", "> 0"),
    "lr-find --max-lr -1": (["lr-find", "--max-lr=-1"], "--max-lr", "> 0"),
    "lr-find --min-lr nan": (["lr-find", "--min-lr", "nan"], "--min-lr", "finite"),
    "lr-find --num-lrs 0": (["lr-find", "--num-lrs", "0"], "--num-lrs", ">= 1"),
    "lr-find --lrs empty": (["lr-find", "--mode", "vectorized", "--lrs=,"], "--lrs", "one or more"),
    "check overfit --lrs empty": (["check", "overfit", "--lrs=,"], "--lrs", "one or more"),
    "check overfit --lrs negative": (["check", "overfit", "--lrs=0.1,-1"], "--lrs", "-1"),
    "check overfit --lrs not a number": (["check", "overfit", "--lrs=0.1,x"], "--lrs", "numbers"),
    "check overfit --steps -3": (["check", "overfit", "--steps", "-3"], "--steps", ">= 1"),
    "check overfit --steps 0": (["check", "overfit", "--steps", "0"], "--steps", ">= 1"),
    "check overfit --steps x": (["check", "overfit", "--steps", "x"], "--steps", "'x'"),
    "check init --depth 0": (["check", "init", "--depth", "0"], "--depth", ">= 1"),
    "check init --width 0": (["check", "init", "--depth", "3", "--width", "0"], "--width", ">= 1"),
    "show --top 0": (["show", "--top", "0"], "--top", ">= 1"),
    "show --top -2": (["show", "--top=-2"], "--top", ">= 1"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flag_value_exits_2_naming_the_flag(case, tiny, capsys):
    argv, flag, words = FLAG_CASES[case]
    with pytest.raises(SystemExit) as info:
        main([argv[0], *argv[1:2], tiny, *argv[2:]] if argv[0] == "check" else [*argv, tiny])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"argument {flag}: " in last and words in last, err


# Values each valid alone but not together, or below what the check needs: the handler raises
# ConfigError, main prints one line and returns 2.
HANDLER_CASES = {
    "reversed lr range": (
        ["lr-find", "--mode", "vectorized", "--min-lr", "1", "--max-lr", "0.1", "--steps", "5"],
        ["--min-lr 1", "--max-lr 0.1", "--min-lr < --max-lr"],
    ),
    "equal lr range": (
        ["lr-find", "--mode", "classic", "--min-lr", "0.1", "--max-lr", "0.1"],
        ["--min-lr 0.1", "--max-lr 0.1"],
    ),
    "lr-find classic --steps 3": (
        ["lr-find", "--mode", "classic", "--steps", "3"],
        ["--steps 3", ">= 5"],
    ),
    "check lr --steps 2": (["check", "lr", "--steps", "2"], ["--steps 2", ">= 5"]),
    "check all --steps 4": (["check", "all", "--steps", "4"], ["--steps 4", ">= 5"]),
}


@pytest.mark.parametrize("case", list(HANDLER_CASES))
def test_inconsistent_flags_exit_2_with_one_line(case, tiny, capsys):
    argv, words = HANDLER_CASES[case]
    argv = [argv[0], *argv[1:2], tiny, *argv[2:]] if argv[0] == "check" else [*argv, tiny]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jaxtune: error: ")
    for w in words:
        assert w in lines[0], lines[0]
    assert captured.out == ""


def test_diagnostics_functions_reject_bad_arguments_naming_them():
    """The library's own argument checks: ConfigError (a ValueError) naming the argument, raised
    before any model is built; 0 is never replaced by a default."""
    cases = [
        (lambda: D.lr_range_test(min_lr=1.0, max_lr=0.1), "min_lr"),
        (lambda: D.lr_range_test(min_lr=0.0), "min_lr"),
        (lambda: D.lr_range_test(steps=4), "steps = 4"),
        (lambda: D.lr_sweep_test(lrs=[]), "lrs = []"),
        (lambda: D.lr_sweep_test(lrs=[0.1, -1.0]), "lrs"),
        (lambda: D.lr_sweep_test(steps=0), "steps = 0"),
        (lambda: D.overfit_check(steps=0), "steps = 0"),
        (lambda: D.overfit_check(steps=-3), "steps = -3"),
        (lambda: D.overfit_check(lrs=[]), "lrs = []"),
        (lambda: D.overfit_check(lrs=[float("nan")]), "lrs"),
        (lambda: D.init_report(depth=0), "depth = 0"),
        (lambda: D.init_report(depth=3, width=0), "width = 0"),
        (lambda: D.init_report(widths=[8, 0]), "widths = 0"),
        (lambda: D.normalization_masking(steps=0), "steps = 0"),
        (lambda: D.run_checks(checks=["lr"], steps=3), "steps = 3"),
        (lambda: D.run_checks(checks=["overfit"], overfit_lrs=[]), "overfit_lrs"),
        (lambda: D.run_checks(checks=["nope"]), "unknown check"),
    ]
    for call, words in cases:
        with pytest.raises(ConfigError) as info:
            call()
        assert words in str(info.value), str(info.value)
        assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------
# The standardization check on a small training split.


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_digits(return_standardizer=True)


def _standardize_errors(splits):
    r = D.data_checks(splits, num_outputs=10)
    return [m for name, sev, m in r.findings if name == "standardize" and sev == "error"]


@pytest.mark.parametrize("n", [30, 50, 100, 200, 500])
def test_a_subset_of_a_correctly_standardized_split_passes(digits, n):
    """``task.subset`` cuts the training split after standardizing on all of it: its features'
    means and stds drift by sampling noise only, which the check allows."""
    ds, _ = digits
    sub = take_subset(ds, n)
    assert not _standardize_errors(sub)
    if n == 50:  # the size `jaxtune check data --set task.subset=50` found failing
        assert D.data_checks(sub, num_outputs=10).passed


@pytest.mark.parametrize("n", [30, 50, 200])
def test_an_unstandardized_split_of_the_same_size_still_fails(digits, n):
    ds, std = digits
    sub = take_subset(ds, n)
    x, y = (np.asarray(a) for a in sub.train)
    raw = np.asarray(std.inverse_transform(x))  # the raw pixels, 0..16
    for bad, what in ((raw, "raw"), (x * 16, "centred, not scaled"), (x / 16, "scaled down")):
        errors = _standardize_errors(sub._replace(train=(bad, y)))
        assert errors, what
        assert f"allowed with {n} examples" in errors[0]


def test_the_full_split_keeps_the_strict_band(digits):
    """On all 1257 training rows the allowance is small: features scaled by 0.4 or shifted by
    0.6 fail, as they did before the allowance existed."""
    ds, _ = digits
    x, y = (np.asarray(a) for a in ds.train)
    assert not _standardize_errors(ds)
    assert _standardize_errors(ds._replace(train=(x * 0.4, y)))
    assert _standardize_errors(ds._replace(train=(x + 0.6, y)))


def test_cli_check_data_on_a_subset_passes(tiny, tmp_path, capsys):
    cfg = tmp_path / "digits.toml"
    cfg.write_text('[task]\ndataset = "digits"\nwidths = [8]\n')
    assert main(["check", "data", str(cfg), "--set", "task.subset=50"]) == 0
    assert "[PASS] data checks" in capsys.readouterr().out
