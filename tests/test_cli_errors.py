"""Bad configurations: exit 2, one line on stderr, no traceback, before anything runs."""

from pathlib import Path

import pytest
from cli_common import TINY, run_cli

from jaxtune.cli import main


def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    tiny = tmp / "tiny.toml"
    tiny.write_text(TINY)
    syntax = tmp / "syntax.toml"
    syntax.write_text('[task]\ndataset = "synthetic"\nwidths = [8,\nmodel = = "mlp"\n')
    unknown = tmp / "unknown.toml"
    unknown.write_text(TINY.replace('name = "momentum"', 'nmae = "momentum"'))
    empty = tmp / "empty.toml"
    empty.write_text(TINY.replace("[0.05, 0.5]", "[]"))
    a_file = tmp / "a_file"
    a_file.write_text("")
    out = ["--out", str(tmp / "never")]
    return {
        "missing file": (["sweep", str(tmp / "nope.toml"), *out], "not found"),
        "toml syntax": (["sweep", str(syntax), *out], "line 4"),
        "unknown key in file": (["sweep", str(unknown), *out], "did you mean 'optimizer.name'"),
        "unknown key in --set": (
            ["sweep", str(tiny), "--set", "optimizer.learnig_rate=0.1", *out],
            "did you mean 'optimizer.learning_rate'",
        ),
        "wrong type": (["sweep", str(tiny), "--set", "train.steps=fast", *out], "train.steps"),
        "out of range": (
            ["sweep", str(tiny), "--set", "optimizer.momentum=1.5", *out],
            "optimizer.momentum",
        ),
        "batch size > training set": (
            ["sweep", str(tiny), "--set", "sweep.grid.train.batch_size=[16, 4096]", *out],
            "larger than the training set",
        ),
        "empty grid": (["sweep", str(empty), *out], "empty"),
        "out is a file": (["sweep", str(tiny), "--out", str(a_file)], "is a file"),
        "resume without out": (["sweep", str(tiny), "--resume"], "--resume needs --out"),
        "resume of a missing folder": (
            ["sweep", str(tiny), "--resume", *out],
            "does not exist, so there is no sweep to continue",
        ),
        "factory import fails": (
            ["sweep", str(tiny), "--set", "task.factory=no_such_module:make", *out],
            "task.factory = 'no_such_module:make' cannot be imported",
        ),
        "factory returns no task": (
            ["sweep", str(tiny), "--set", "task.factory=json:dumps", *out],
            "must return a jaxtune.Task",
        ),
        "bad execution form": (
            ["sweep", str(tiny), "--set", 'train.execution="scan/loop"', *out],
            "train.execution = 'scan/loop' is invalid: expected 'auto' or LOOP/TRIALS",
        ),
        "bad precision": (
            ["sweep", str(tiny), "--set", 'train.precision="fp8"', *out],
            "train.precision = 'fp8' is invalid: expected one of 'float32', 'tensorfloat32'",
        ),
        "bad dtype": (
            ["sweep", str(tiny), "--set", 'task.dtype="float16"', *out],
            "task.dtype = 'float16' is invalid: expected one of 'float32', 'bfloat16'",
        ),
        "processes without a coordinator": (
            ["sweep", str(tiny), "--set", "parallel.num_processes=2", *out],
            "parallel.num_processes = 2 needs parallel.coordinator",
        ),
        "set a swept key": (
            ["sweep", str(tiny), "--set", "optimizer.learning_rate=0.1", *out],
            "--set optimizer.learning_rate = 0.1 has no effect: the sweep varies "
            "optimizer.learning_rate (sweep.grid)",
        ),
        "model and data mismatch": (
            ["sweep", str(tiny), "--set", "task.model=cnn", "--set", "task.dataset=diabetes", *out],
            "task.model = 'cnn' cannot be built for task.dataset = 'diabetes' (inputs of shape "
            "(10,))",
        ),
        "factory refuses its configuration": (
            [
                "sweep",
                str(tiny),
                "--set",
                "task.factory=jaxtune.workloads.language:bytes_lm",
                "--set",
                "task.widths=[30, 30]",
                *out,
            ],
            "task.widths = (30, 30)): num_heads = 4 is invalid",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "toml syntax",
        "unknown key in file",
        "unknown key in --set",
        "wrong type",
        "out of range",
        "batch size > training set",
        "empty grid",
        "out is a file",
        "resume without out",
        "resume of a missing folder",
        "factory import fails",
        "factory returns no task",
        "bad execution form",
        "bad precision",
        "bad dtype",
        "processes without a coordinator",
        "set a swept key",
        "model and data mismatch",
        "factory refuses its configuration",
    ],
)
def test_bad_config_exits_2_with_one_line(case, tmp_path, capsys):
    argv, expected = _bad_cases(tmp_path)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("jaxtune: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (tmp_path / "never").exists()  # nothing was created


def test_bad_config_in_a_subprocess(tmp_path):
    proc = run_cli("sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["toml syntax", "unknown key in --set", "empty grid", "out is a file"]
)
def test_bad_config_in_a_subprocess_slow(case, tmp_path):
    argv, expected = _bad_cases(tmp_path)[case]
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr
    assert "Traceback" not in proc.stderr
