"""The one place that says where every array lives: a 1-D `data` mesh over every device of every host; the batch
split over it, the mapper and Adam replicated, the frozen networks replicated or FSDP-sharded; multi-host helpers."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ffclip_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over every device of every host: the batch is split over `data`."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state) -> Any:
    """The mapper and Adam state are small (a few 10 MB): replicated."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def frozen_sharding(mesh: Mesh, frozen, rule: str = "replicate", min_size: int = 2 ** 20):
    """Frozen variables: replicated, or with rule 'fsdp' each array of >= min_size elements split over `data` along
    its largest axis divisible by the axis size (XLA gathers it where used: less memory, more communication)."""
    if rule not in ("replicate", "fsdp"):
        raise ConfigError(f"sharding.frozen must be 'replicate' or 'fsdp', got {rule!r}")
    n = mesh.shape[DATA_AXIS]

    def one(a):
        shape = np.shape(a)
        if rule == "fsdp" and n > 1 and int(np.prod(shape)) >= min_size:
            for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
                if shape[axis] % n == 0:
                    spec = [None] * len(shape)
                    spec[axis] = DATA_AXIS
                    return NamedSharding(mesh, P(*spec))
        return replicated(mesh)
    return jax.tree.map(one, frozen)


def initialize_distributed(config) -> None:
    """jax.distributed.initialize with the config's explicit values (auto-detection for those left unset)."""
    d = config.distributed
    if not d.enabled:
        return
    kwargs = dict(coordinator_address=d.coordinator_address or None, num_processes=d.num_processes or None,
                  process_id=None if d.process_id < 0 else d.process_id)
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a preemption signal seen by one host stops all of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def put(tree, shardings):
    """Host arrays (identical on every host) -> global jax.Arrays with the given shardings (multi-host safe)."""
    def one(a, s):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, s, lambda index: a[index])
    return jax.tree.map(one, tree, shardings)
