"""One trainer per run directory: an exclusive lock, with the holder named when it refuses.

Two trainers writing one ``--out`` would interleave checkpoints and metrics, and orbax's
temporary directories of one would be cleaned away under the other. The lock is the
``filelock`` library's (an OS lock: ``flock`` on Linux), so the kernel releases it when its
process ends in any way, ``kill -9`` included: a stale lock can never block the next run.
``filelock`` does not say who holds a lock, so the holder writes a small JSON note beside it
(process id, host, start time, command) that a refused trainer quotes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from charlm_jax.errors import CharLMError, MachineError

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
