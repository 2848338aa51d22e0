"""Several devices and several hosts, through JAX's own SPMD runtime.

A sweep's trial axis is sharded over a one-axis ``jax.sharding.Mesh`` named ``trials`` that spans
every device of every process taking part. On one host nothing needs to be set up. On several
hosts (a multi-node GPU cluster or a TPU slice) every process runs the same ``jaxtune sweep``
command; :func:`initialize` connects them with ``jax.distributed.initialize`` before the first
JAX computation. Each process then holds its own shard of the trials; process 0 writes results,
logs and plots, and Orbax checkpoints are written collectively.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxtune.errors import ConfigError

__all__ = ["barrier", "gather", "initialize", "is_primary", "put"]

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(config: Mapping[str, Any]) -> bool:
    """Join a multi-process run when the configuration or the environment asks for one.

    Reads ``parallel.coordinator`` (``host:port`` of process 0), ``parallel.num_processes`` and
    ``parallel.process_id`` from ``config`` (dotted keys), falling back to the environment
    variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. On
    clusters that JAX detects by itself (SLURM, TPU pods) set ``parallel.coordinator = "auto"``.
    On CPU hosts the cross-process collectives use gloo.

    Returns:
      True when this process joined a multi-process run, False for a single-process run.
    """
    coordinator = config.get("parallel.coordinator") or os.environ.get(_ENV[0])
    if not coordinator:
        for key in ("parallel.num_processes", "parallel.process_id"):
            value = config.get(key)
            if value is not None and value > (1 if key.endswith("num_processes") else 0):
                raise ConfigError(
                    f"{key} = {value} needs parallel.coordinator (host:port of process 0, or "
                    "'auto' on clusters JAX detects) or JAX_COORDINATOR_ADDRESS; without one "
                    "the run is a single process"
                )
        return False
    if jax.distributed.is_initialized():
        return True
    num = config.get("parallel.num_processes") or os.environ.get(_ENV[1])
    pid = config.get("parallel.process_id")
    if pid is None:
        pid = os.environ.get(_ENV[2])
    # Cross-process collectives of CPU devices (ignored by GPU and TPU backends). Asking for the
    # backend here would start it, which must wait until after initialize.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=None if num is None else int(num),
            process_id=None if pid is None else int(pid),
        )
    return True


def is_primary() -> bool:
    """Whether this process writes results, logs and plots (process 0)."""
    return jax.process_index() == 0


def barrier(name: str, *, timeout_s: float = 1800.0) -> None:
    """Wait until every process reaches this point (no-op for one process).

    Processes compile at different speeds; meeting here first keeps the first cross-process
    collective from timing out while it waits for a slower peer.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))


def put(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Place host arrays (identical on every process) as global arrays with ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree.map(one, tree)


def gather(tree: Any) -> Any:
    """Host (numpy) copies of global arrays, gathered from every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
