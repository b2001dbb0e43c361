"""Devices and hosts: one data-parallel mesh, JAX's own runtime, nothing home-made.

The batch is split along the mesh axis ``data``; parameters and optimizer state
are replicated (the model is ~100K-1M parameters: sharding them would only add
communication). The same jitted step runs on one device or many.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from charlm_jax.data.windows import host_windows
from charlm_jax.errors import CharLMError

DATA_AXIS = "data"
# A device's share of the batch below which splitting the CPU into more devices stops paying
# (an assumption: measured only on 2 cores, 64 rows per device; benchmarks/results/2026-11-24-cpu, training step).
MIN_ROWS_PER_CPU_DEVICE = 16


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_cpu_devices(batch_size: int, cores: int | None = None, min_rows: int = MIN_ROWS_PER_CPU_DEVICE) -> int:
    """One CPU device per core, as many as split ``batch_size`` evenly with ``min_rows`` rows each.

    XLA:CPU runs a program's matmuls inside the LSTM's time loop on one core; a batch split
    over one device per core runs the parts side by side (benchmarks/results/2026-11-24-cpu: the training
    step on 2 cores). Generation rows never talk to each other, so one row each is enough.
    """
    cores = cpu_cores() if cores is None else cores
    best = 1
    for count in range(1, cores + 1):
        if batch_size % count == 0 and batch_size // count >= min_rows:
            best = count
    return best


def configure_cpu_devices(count: int, *, strict: bool = True) -> bool:
    """Split the host CPU into ``count`` JAX devices; must run before JAX's first computation.

    Changes nothing on a GPU or TPU machine, whose devices are the accelerators. Once JAX has
    started, the count is fixed: ``strict`` raises then, otherwise this returns False (a default
    that could not apply, as when the CLI runs again inside one Python process).
    """
    if count < 1:
        raise CharLMError(f"--cpu-devices must be >= 1, got {count}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        if strict:
            raise CharLMError(
                "the CPU device count can only be set before JAX's first computation: call "
                "charlm_jax.runtime.distributed.configure_cpu_devices at the top of the script"
            ) from None
        return False
    return True


_every_core_checked = False


def use_every_core() -> None:
    """Split the CPU into one JAX device per core, as the CLI does, for a script's first charlm_jax call.

    ``fit``, ``load``, ``generate``, ``stream``, ``score`` and ``import_keras`` call it before their first
    computation, so a script gets the CLI's speed with no call of its own (XLA:CPU runs the LSTM's
    time loop on one core per device). A process that chose already (``XLA_FLAGS``'s host device count,
    ``JAX_NUM_CPU_DEVICES`` or ``configure_cpu_devices``) is left alone; one where JAX has already run on
    a single CPU device is told once, in a warning, what that costs and how to avoid it.
    """
    global _every_core_checked
    if _every_core_checked:
        return
    _every_core_checked = True
    cores = cpu_cores()
    chosen = forced_cpu_device_count() or jax.config.jax_num_cpu_devices != -1  # type: ignore[attr-defined]
    # A multi-process run keeps one device per process unless it asked for more (each process is a host).
    if cores == 1 or chosen or jax.distributed.is_initialized():
        return
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX has started: the device count is fixed for this process
        if jax.default_backend() == "cpu" and jax.local_device_count() == 1:
            import warnings

            from charlm_jax.errors import CharLMWarning

            warnings.warn(
                f"JAX started before charlm_jax could split the CPU, so this process trains and generates on one "
                f"device of its {cores} cores (training slower than the CLI, which uses every core): "
                "call charlm_jax.use_every_core() before the script's first JAX computation, or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={cores}",
                CharLMWarning,
                stacklevel=3,
            )


def default_mesh(rows: int, min_rows: int = MIN_ROWS_PER_CPU_DEVICE):
    """The mesh a call uses when its caller names none: every device with several processes or an
    accelerator (the batch must divide, and is refused in one line if not), and on one host's CPU the
    most devices that share ``rows`` evenly with ``min_rows`` each (the CLI's rule). None: one device."""
    devices = jax.devices()
    if jax.process_count() == 1 and jax.default_backend() == "cpu":
        devices = devices[: auto_cpu_devices(rows, cores=len(devices), min_rows=min_rows)]
    return make_mesh(devices) if len(devices) > 1 or jax.process_count() > 1 else None


def forced_cpu_device_count() -> bool:
    """Whether XLA_FLAGS already fixes the host device count (then we leave it alone)."""
    return "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices, or over the given ones."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def block_sharding(mesh: Mesh) -> NamedSharding:
    """A block of batches, (steps, batch): each step's batch split along ``data``."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def check_batch_divides(global_batch: int, mesh: Mesh) -> None:
    """Refuse a global batch the devices cannot share equally, naming the nearest that can."""
    devices = mesh.devices.size
    if global_batch % devices:
        lower = global_batch - global_batch % devices
        raise CharLMError(
            f"batch size {global_batch} does not divide over {devices} devices: pass --batch-size "
            f"{lower or devices} or {lower + devices} (a multiple of {devices})"
        )


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array from this process's copy of it (every process holds the same values).

    Each process fills the shards its own devices hold, along whichever axes ``sharding``
    splits (the batch rows of a batch, the second axis of a block of batches).
    """
    array = np.asarray(array)
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_windows(ids: np.ndarray, starts: np.ndarray, width: int, sharding: NamedSharding) -> jax.Array:
    """The global array of windows ``ids[s : s + width]`` for ``starts`` (any shape), int32.

    Each process gathers, from its own copy or memory map of the ids, only the rows its devices
    hold: with several hosts none of them reads a whole batch.
    """
    starts = np.asarray(starts)
    if jax.process_count() == 1:
        return jax.device_put(host_windows(ids, starts, width), sharding)

    def rows(index: Any) -> np.ndarray:  # the shard at ``index`` (a tuple of slices), from this process's ids
        return host_windows(ids, starts[index[:-1]], width)[..., index[-1]]

    return jax.make_array_from_callback(starts.shape + (width,), sharding, rows)


def to_host(tree):
    """Numpy copies of a pytree of global arrays, from any process (gathering rows split over hosts)."""
    from jax.experimental import multihost_utils

    def fetch(array):
        if not isinstance(array, jax.Array) or array.is_fully_addressable or array.is_fully_replicated:
            return np.asarray(array)
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))

    return jax.tree.map(fetch, tree)


def is_main_process() -> bool:
    """Only process 0 prints, logs metrics and writes samples (orbax coordinates checkpoint writes)."""
    return jax.process_index() == 0


def maybe_initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
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
        raise CharLMError(
            "a coordinator address needs --num-processes and --process-id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    # CPU devices of different processes talk through gloo over TCP (GPUs and TPUs use their own
    # collectives; the setting only concerns the CPU backend).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # SIGTERM stays ours (``stopping.StopSignals``), agreed on at every block boundary by ``agreed_stop``.
    # JAX's preemption service would take it over and pick a sync point of its own: measured with two
    # processes over loopback, 20 s (and, in earlier tries, 50-59 s) of further training from SIGTERM to that
    # point, past the ~30 s a scheduler gives before SIGKILL, with its C++ notifier's line as the last one
    # a user sees.
    try:
        jax.config.update("jax_enable_preemption_service", False)
    except AttributeError:  # JAX before the option (its service is then only started on TPUs and GPUs)
        pass
    try:
        if coordinator is None:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
            )
    except (RuntimeError, ValueError) as error:
        raise CharLMError(
            f"could not join the distributed run ({error}): check the coordinator address, process count and id"
        ) from None
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


def agreed_stop(stop) -> bool:
    """Whether to stop at this block boundary: a stop request, agreed on by every process.

    One process: its own request. Several: a request any of them received, gathered at every block
    boundary (a few bytes), so every process stops at the same block however the signal reached them
    (a scheduler signals every host; a user may signal one).
    """
    if jax.process_count() == 1:
        return stop.requested
    from jax.experimental import multihost_utils

    received = np.asarray(multihost_utils.process_allgather(np.int32(stop.received or 0)))
    signum = int(received.max())
    if signum and not stop.requested:
        stop.received = signum  # the agreed request, so every process names the same signal
    return bool(signum)
