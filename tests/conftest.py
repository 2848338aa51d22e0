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


_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": None,  # set in pytest_configure
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.3",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


#: XLA's CPU backend compiles without LLVM's optimizations in the test session: the suite's
#: programs are small and run a few dozen steps, so compiling is most of its time (about a
#: fifth less with this flag, measured on tests/test_engine_reference.py). Every comparison a
#: test makes is between computations of the same session. ``JAXTUNE_TEST_XLA_OPTIMIZE=1``
#: runs the suite as users' programs compile.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    """One JAX compilation cache for the session, empty at its start, shared by pytest-xdist
    workers and the subprocesses tests start. Sweeps build a fresh jitted function per
    program, so the same program (the init of a model, say, whatever the execution form) is
    compiled again by every test that runs it; the cache, keyed by the program's HLO and
    compile options, compiles it once. A user's run is not affected."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # an xdist worker inherits the controller's environment
    import tempfile

    config._jax_cache = tempfile.mkdtemp(prefix="jaxtune-test-jax-cache-")
    os.environ.update({**_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR": config._jax_cache})
    if os.environ.get("JAXTUNE_TEST_XLA_OPTIMIZE") != "1":
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def pytest_unconfigure(config):
    cache = getattr(config, "_jax_cache", None)
    if cache is not None:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
