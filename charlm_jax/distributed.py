"""Devices and hosts: one data-parallel mesh, JAX's own runtime, nothing home-made.

The batch is split along the mesh axis ``data``; parameters and optimizer state
are replicated (the model is ~100K-1M parameters: sharding them would only add
communication). The same jitted step runs on one device or many.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from charlm_jax.errors import CharLMError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices, or over the given ones."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divides(global_batch: int, mesh: Mesh) -> int:
    """Per-device batch; refuses a global batch the devices cannot share equally."""
    devices = mesh.devices.size
    if global_batch % devices:
        lower = global_batch - global_batch % devices
        raise CharLMError(
            f"batch size {global_batch} does not divide over {devices} devices: pass --batch-size "
            f"{lower or devices} or {lower + devices} (a multiple of {devices})"
        )
    return global_batch // devices


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array from this process's copy of it (every process holds the same values)."""
    array = np.asarray(array)
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    local = _process_slice(array, sharding)
    return jax.make_array_from_process_local_data(sharding, local, array.shape)


def _process_slice(array: np.ndarray, sharding: NamedSharding) -> np.ndarray:
    """This process's rows of a batch-sharded array (all of a replicated one)."""
    if sharding.spec == PartitionSpec():
        return array
    count, index = jax.process_count(), jax.process_index()
    rows = array.shape[0] // count
    return array[index * rows:(index + 1) * rows]


def is_main_process() -> bool:
    """Only process 0 prints, logs metrics and writes samples (orbax coordinates checkpoint writes)."""
    return jax.process_index() == 0


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Join a multi-host run when flags or the environment describe one; a no-op otherwise.

    Explicit flags win; else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID; else cluster environments JAX detects itself (SLURM, TPU
    pods, Open MPI) when CHARLM_JAX_DISTRIBUTED=1.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    auto = os.environ.get("CHARLM_JAX_DISTRIBUTED") == "1"
    if coordinator is None and not auto:
        return False
    if coordinator is not None and (num_processes is None or process_id is None):
        raise CharLMError("a coordinator address needs --num-processes and --process-id "
                          "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    try:
        if coordinator is None:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id)
    except (RuntimeError, ValueError) as error:
        raise CharLMError(f"could not join the distributed run ({error}): check the coordinator "
                          "address, process count and id") from None
    return True


def shard_rows(mesh: Mesh, *arrays: np.ndarray):
    """Place arrays whose first axis is the batch on the mesh: split along ``data`` when the
    rows divide over the devices, else replicated (a batch of 1 on 8 devices still runs)."""
    placed = []
    for array in arrays:
        array = np.asarray(array)
        divides = array.shape[0] % mesh.devices.size == 0
        placed.append(put_global(array, batch_sharding(mesh) if divides else replicated(mesh)))
    return placed
