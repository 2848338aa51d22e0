"""Where a dataset's splits live: on the devices, or on the host, streamed (``data.placement``).

``"device"`` puts every split on every device once; each trial gathers its batches there (the
fast path for data that fits). ``"host"`` keeps the training split on the host and streams the
chunk's batches (:mod:`jaxtune.engine.feed`); evaluation splits given as host sources
(``np.memmap``, grain) are evaluated from the host batch by batch, those given as in-memory
arrays go on the devices. ``"auto"`` (the default) chooses ``"device"`` when all splits fit the
device budget, ``data.device_bytes`` or else half of what a device may use (its memory limit on
an accelerator, half the free host memory per device on a CPU; the other half is left for the
programs: parameters, optimizer states and activations of every trial of a call), and
``"host"`` otherwise. Results are bit-identical either way: the batches are the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxtune import parallel
from jaxtune.config import SweepConfig
from jaxtune.data import HostSource, as_source, check_source, is_host_source
from jaxtune.engine.compile import device_memory_budget
from jaxtune.errors import TaskError

__all__ = ["Placed", "place"]


@dataclasses.dataclass
class Placed:
    """A dataset as the engine holds it.

    Attributes:
      placement: ``"device"`` or ``"host"`` (where the training split is).
      device: the splits on the devices, by name (replicated).
      train: the training split on the host (``placement == "host"``), else None.
      evals: the evaluation splits on the host, by name.
      nbytes: the dataset's size; ``budget``: the device budget it was held against.
    """

    placement: str
    device: dict[str, Any]
    train: HostSource | None
    evals: dict[str, HostSource]
    nbytes: int
    budget: int

    def info(self) -> dict[str, Any]:
        """For ``result.timing`` and the summary line."""
        return {
            "placement": self.placement,
            "data_bytes": self.nbytes,
            "device_budget_bytes": self.budget,
            "host_splits": (["train"] if self.train is not None else []) + sorted(self.evals),
        }


def _whole(split: Any) -> Any:
    """A split as host arrays (a host source is read whole)."""
    if is_host_source(split):
        source = as_source(split)
        return source.gather(np.arange(len(source)))
    return jax.tree.map(np.asarray, split)


def _checked(source: HostSource) -> HostSource:
    """A host split whose sampled items and last item read back as its first item says (so a
    bad source fails here, before anything compiles, not in the middle of a sweep)."""
    check_source(source)
    last = len(source) - 1
    try:
        source.gather(np.asarray([last]))
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(
            f"{source.name} says it has {len(source)} examples but its last one (index {last}) "
            f"cannot be read: {type(e).__name__}: {e}"
        ) from None
    return source


def place(splits: Any, cfg: SweepConfig, mesh: jax.sharding.Mesh) -> Placed:
    """Decide where ``splits`` (a :class:`jaxtune.Splits`) live and put the device part there."""
    named = {k: v for k, v in splits._asdict().items() if v is not None}
    nbytes = sum(as_source(v, name=k).nbytes for k, v in named.items())
    budget = cfg.base["data.device_bytes"] or device_memory_budget(mesh) // 2
    placement = cfg.base["data.placement"]
    if placement == "auto":
        placement = "device" if nbytes <= budget else "host"
    on_device: dict[str, Any] = {}
    train, evals = None, {}
    for name, split in named.items():
        if placement == "host" and (name == "train" or is_host_source(split)):
            source = _checked(as_source(split, name=name))
            if name == "train":
                train = source
            else:
                evals[name] = source
        else:
            on_device[name] = _whole(split)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    device = parallel.put(on_device, replicated)
    return Placed(placement, device, train, evals, int(nbytes), int(budget))
