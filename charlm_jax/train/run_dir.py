"""A run directory: where a training run (or an imported Keras model) lives on disk.

    <out>/                 numbered orbax checkpoints (``checkpoint.CheckpointStore``), the newest three
    <out>/best/            the checkpoint of the best validation so far
    <out>/metrics.jsonl    one JSON record per validation, never ahead of the checkpoints
    <out>/.charlm-jax.lock held by the one trainer writing here (``RunLock``), with
    <out>/.charlm-jax.lock.holder  the holder's note (host, process, start time)

This module is the one place that creates, locks, starts, reads and appends to it; the trainer
(``loop``) and the Keras importer (``interop.keras_import``) both come through here. A checkpoint holds the parameters, the
items below (optimizer state, step and the LSTM carries of the batch in progress) and a meta record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from filelock import FileLock, Timeout

from charlm_jax.data.record import TextRecord
from charlm_jax.data.windows import Split, Vocab, sample_prompt, split_windows
from charlm_jax.errors import CharLMError, MachineError
from charlm_jax.io.checkpoint import CheckpointMeta, CheckpointStore, file_in_the_way
from charlm_jax.runtime.distributed import batch_sharding, put_global, replicated
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.steps import RunKeys, TrainState, create_train_state

BEST_SUBDIR = "best"
METRICS_NAME = "metrics.jsonl"


def make_run_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` (and parents) for a run, or say in one line why it cannot be one."""
    path = Path(directory)
    if (blocker := file_in_the_way(path)) is not None:
        raise CharLMError(f"{str(blocker)!r} is a file, so {str(path)!r} cannot be a run directory: pass another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MachineError(
            f"cannot create the run directory {str(path)!r} ({error.strerror}): pass an --out you can write to"
        ) from None
    if not os.access(path, os.W_OK):
        read_only = os.statvfs(path).f_flag & os.ST_RDONLY
        raise MachineError(
            f"the run directory {str(path)!r} is not writable "
            f"({os.strerror(errno.EROFS if read_only else errno.EACCES)}): pass an --out you can "
            "write to"
        )
    return path


@dataclass(frozen=True)
class RunDirectory:
    """An open run directory: its checkpoints, its best checkpoint and its records."""

    path: Path
    store: CheckpointStore
    best_store: CheckpointStore

    @classmethod
    @contextlib.contextmanager
    def opened(cls, path: str | os.PathLike, *, lock: bool) -> Iterator[RunDirectory]:
        """Create (if need be) and open ``path``; with ``lock``, refuse a second trainer while it is open."""
        path = make_run_directory(path)
        with (
            RunLock(path) if lock else contextlib.nullcontext(),
            CheckpointStore(path) as store,
            CheckpointStore(path / BEST_SUBDIR, max_to_keep=1) as best_store,
        ):
            yield cls(Path(store.directory), store, best_store)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    def append_record(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``, written whole (a short write on a full disk is an OSError, not half a line)."""
        line = (json.dumps(record) + "\n").encode()
        descriptor = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(descriptor, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_path))
        finally:
            os.close(descriptor)

    def drop_records_after(self, step: int) -> int:
        """Remove ``metrics.jsonl`` records past ``step`` (a resume from an older checkpoint than the newest
        record: the damaged newest was skipped); returns how many went. Rewritten atomically."""
        path = self.metrics_path
        if not path.exists():
            return 0
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _record_step(line) <= step]
        if len(kept) != len(lines):
            temporary = path.with_suffix(".jsonl.tmp")
            temporary.write_text("".join(kept))
            os.replace(temporary, path)
        return len(lines) - len(kept)


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line from a crash: dropped with the records past the checkpoint


def zero_carries(config: TrainConfig, mesh=None):
    """Zero LSTM carries of a run's ``batch_size`` rows, ((c, h) per layer), split over ``mesh`` like the rows.

    Made on the host and placed once (not built on a device and copied back first).
    """
    zeros = tuple(
        (np.zeros((config.batch_size, config.hidden_size), np.float32),) * 2 for _ in range(config.num_layers)
    )
    if mesh is None:
        return jax.tree.map(jnp.asarray, zeros)
    return jax.tree.map(lambda x: put_global(x, batch_sharding(mesh)), zeros)


def checkpoint_items(state: TrainState, carries) -> dict[str, Any]:
    """What a checkpoint saves besides the parameters: the optimizer's state and step, and the carries
    the next batch starts from (zero for the book's windows; a stream's state for truncated BPTT)."""
    return {"step": state.step, "opt_state": state.opt_state, "carries": carries}


def new_run_prompt(config: TrainConfig, vocab: Vocab, ids: np.ndarray, split: Split | None = None) -> str:
    """The prompt saved with a new run (``generate``'s default): a window of the training part of the
    text's ``ids``, drawn with the key of epoch 1's samples. The one rule, for trained and imported runs."""
    split = split or split_windows(len(ids), config.maxlen, config.step, config.val_fraction)
    return sample_prompt(RunKeys.from_seed(config.seed).sample_keys(1)[0], vocab, ids, split.val_start, config.maxlen)


def write_new_run(
    store: CheckpointStore,
    config: TrainConfig,
    vocab: Vocab,
    default_prompt: str,
    mesh=None,
    *,
    params=None,
    total_steps: int | None = None,
    text: TextRecord | None = None,
) -> tuple[TrainState, Any]:
    """Start a run directory: its step-0 checkpoint, which ``load``, ``generate`` and ``--resume`` read.

    The parameters are the seed's initialisation, or ``params`` (an imported model's weights); the
    optimizer state is fresh. A new training run and ``import_keras`` both begin here. Returns the
    train state and zero carries, replicated (split) over ``mesh`` when one is given.
    """
    state = create_train_state(RunKeys.from_seed(config.seed).init, config, vocab.size, total_steps)
    if params is not None:
        state = state.replace(params=jax.tree.map(jnp.asarray, params))
    if mesh is not None:
        # put_global, not device_put: with several processes each must hand over its share of a global
        # array, or orbax cannot write it.
        state = jax.tree.map(lambda x: put_global(np.asarray(x), replicated(mesh)), state)
    carries = zero_carries(config, mesh)
    store.save(
        state.params,
        checkpoint_items(state, carries),
        CheckpointMeta(config=config, vocab=vocab, step=0, epoch=0, default_prompt=default_prompt, text=text),
    )
    return state, carries


def read_checkpoint(store: CheckpointStore, mesh, step: int) -> tuple[CheckpointMeta, tuple[Any, dict[str, Any]]]:
    """A resumable checkpoint's meta, parameters and items, replicated over ``mesh`` (carries split over it).

    The shapes come from the saved config (the fields a resume may change leave them alone).
    """
    meta = store.restore_meta(step)
    shapes = jax.eval_shape(lambda: create_train_state(jax.random.key(0), meta.config, meta.vocab.size, 1))
    carries = jax.eval_shape(lambda: zero_carries(meta.config))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), shapes.params)
    items = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), checkpoint_items(shapes, None)
    )
    items["carries"] = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding(mesh)), carries
    )
    return meta, store.restore(params, items, step=step)


# --- One trainer per run directory ---
# One trainer per run directory: an exclusive lock, with the holder named when it refuses.
#
# Two trainers writing one ``--out`` would interleave checkpoints and metrics, and orbax's
# temporary directories of one would be cleaned away under the other. The lock is the
# ``filelock`` library's (an OS lock: ``flock`` on Linux), so the kernel releases it when its
# process ends in any way, ``kill -9`` included: a stale lock can never block the next run.
# ``filelock`` does not say who holds a lock, so the holder writes a small JSON note beside it
# (process id, host, start time, command) that a refused trainer quotes.
LOCK_NAME = ".charlm-jax.lock"
HOLDER_NAME = ".charlm-jax.lock.holder"


class RunLock:
    """``with RunLock(out_dir):`` holds the run directory or raises ``CharLMError`` naming the holder."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._lock = FileLock(self.directory / LOCK_NAME)

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CharLMError(
                f"{str(self.directory)!r} is in use by another trainer ({self.holder()}): wait for "
                "it to finish or stop it, or pass another --out"
            ) from None
        except OSError as error:
            raise MachineError(
                f"cannot lock the run directory {str(self.directory)!r} ({error.strerror}): "
                "pass an --out you can write to"
            ) from None
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        try:
            (self.directory / HOLDER_NAME).write_text(json.dumps(note))
        except OSError:
            pass  # the note only helps a refused trainer say who holds the lock; the lock itself holds
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def holder(self) -> str:
        """The holder's note as one phrase (or why there is none)."""
        try:
            note = json.loads((self.directory / HOLDER_NAME).read_text())
            return f"process {note['pid']} on {note['host']} since {note['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that has not written its note yet"
