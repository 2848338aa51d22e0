"""Shared test setup."""

import os

import pytest


@pytest.fixture(autouse=True)
def _keep_xla_flags():
    """The command line sets XLA_FLAGS (one CPU device per core) for the processes it starts;
    an in-process call must not leak that into later tests' subprocesses."""
    before = os.environ.get("XLA_FLAGS")
    yield
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before
