"""The parser (its extension points, ``--version``) and the bundled example configurations."""

import tomllib

import pytest
from cli_common import REPO

from jaxtune import cli
from jaxtune import config as config_lib
from jaxtune.cli import main
from jaxtune.config import load_config


def test_parser_is_extensible():
    parser = cli.build_parser()
    args = parser.parse_args(["sweep", "x.toml", "--set", "a=1", "--set", "b=2", "--out", "o"])
    assert (args.config, args.set, args.out, args.resume) == ("x.toml", ["a=1", "b=2"], "o", False)
    assert args.func is cli.cmd_sweep
    import argparse

    other = cli.add_config_arguments(argparse.ArgumentParser())
    assert other.parse_args([]).config is None


def test_the_version_has_one_source(capsys):
    import ast

    import jaxtune

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "jaxtune.__version__"
    # setuptools reads the literal statically; it must be the one the package reports.
    tree = ast.parse((REPO / "jaxtune" / "__init__.py").read_text())
    (literal,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]
    ]
    assert literal == jaxtune.__version__
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxtune {jaxtune.__version__}"


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_load(path):
    if path.name == "tune.toml":  # its [tune] table is read by `jaxtune tune`
        from jaxtune.search.tune_config import load_tune_config

        cfg, _ = load_tune_config(path)
        assert cfg.base["train.steps"] > 0
        return
    if path.name == "bench.toml":  # its [bench] table is read by `jaxtune bench`
        from jaxtune.bench import load_bench_config

        assert load_bench_config(path).submissions
        return
    cfg = load_config(path)
    trials = config_lib.expand_trials(cfg)
    assert 2 <= len(trials) <= 32
    if path.name == "default.toml":
        assert cfg == config_lib.default_config()
    if path.name == "cnn_batchnorm.toml":
        assert {t["task.normalization"] for t in trials} == {"none", "batch"}
    if path.name == "quasi_random.toml":
        assert cfg.method == "quasi_random" and len(trials) == 16
