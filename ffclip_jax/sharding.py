"""The one place that says where every array lives: a 1-D `data` mesh (training: every device of every host; the
tools: this process's devices), the batch split over it, the mapper and Adam replicated, the frozen networks
replicated or FSDP-sharded; the devices a tool runs on; multi-host start-up and helpers."""
from __future__ import annotations

from typing import Any, List, Optional, Union

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ffclip_jax.errors import ConfigError, InputError

DATA_AXIS = "data"
FROZEN_RULES = ("replicate", "fsdp")
FSDP_MIN_SIZE = 2 ** 20  # configs/default.py sharding.fsdp_min_size


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default every device of every host): the batch is split over `data`."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state) -> Any:
    """The mapper and Adam state are small (a few 10 MB): replicated."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def frozen_sharding(mesh: Mesh, frozen, rule: str = "replicate", min_size: int = FSDP_MIN_SIZE):
    """Frozen variables: replicated, or with rule 'fsdp' each array of >= min_size elements split over `data` along
    its largest axis divisible by the axis size (XLA gathers it where used: less memory, more communication)."""
    if rule not in FROZEN_RULES:
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


def tool_devices(count: Union[int, str, None] = None) -> List[Any]:
    """The devices a tool (edit, invert, evaluate, the studio, data build) shards its batches over: the first `count`
    of this process's devices ('all': every one). Default: every local device on an accelerator, one on CPU (XLA
    already spreads one CPU device's work over every core; simulated CPU devices share those cores)."""
    local = jax.local_devices()
    if count is None:
        count = len(local) if jax.default_backend() != "cpu" else 1
    elif count == "all":
        count = len(local)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 1 <= count <= len(local):
        raise InputError(f"--devices {count}: expected 1..{len(local)} or 'all' (this process has {len(local)} "
                         f"{jax.default_backend()} device(s))")
    return local[:int(count)]


def start_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> None:
    """jax.distributed.initialize with the explicit values given, auto-detection (TPU slices, SLURM, Open MPI, ...)
    for those left None; call before any other JAX call."""
    kwargs = dict(coordinator_address=coordinator_address or None, num_processes=num_processes,
                  process_id=process_id)
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


def initialize_distributed(config) -> None:
    """`start_distributed` with a training config's `distributed` values (0 / -1 / "": auto-detected)."""
    d = config.distributed
    if d.enabled:
        start_distributed(d.coordinator_address, d.num_processes or None,
                          None if d.process_id < 0 else d.process_id)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a preemption signal seen by one host stops all of them)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def put(tree, shardings):
    """Host arrays (identical on every host) -> global jax.Arrays with the given shardings (multi-host safe)."""
    def one(a, s):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, s, lambda index: a[index])
    return jax.tree.map(one, tree, shardings)
