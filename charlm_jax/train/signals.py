"""Stop requests: SIGINT (Ctrl-C) and SIGTERM (how SLURM, Kubernetes and cloud maintenance preempt).

Two behaviours, chosen by where the process is:

* Outside training (reading or downloading a text, preparing, loading a checkpoint) a signal
  raises ``Stopped`` at once: nothing there is worth finishing, and every writer cleans up
  its temporary files on the way out.
* Inside ``fit`` (``StopSignals.deferred``) the first signal only records the request. The
  loop looks at it between blocks of steps, between validation batches and between chunks of
  the per-epoch samples, abandons what is unfinished (a validation in progress is dropped,
  never half-recorded), saves a checkpoint at the last completed step and returns.

A second signal raises ``Stopped`` at once, for a user who really wants out, except inside a
checkpoint save (``critical``): a save is short and atomic, so the second signal waits for it
to finish and then stops the process. Nothing here is written by hand that Python's
``signal`` module already gives; the module only decides *when* a request takes effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """Raised when a stop request must take effect now (a ``BaseException``, like KeyboardInterrupt,
    so ``except Exception`` blocks in between do not swallow it)."""

    def __init__(self, signum: int, forced: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.forced = forced  # a second signal: leave now, save nothing more

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum


class StopSignals:
    """The stop requests one process has received; see the module docstring."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal's number
        self._deferring = 0
        self._critical = 0
        self._pending: int | None = None

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def request(self, signum: int) -> None:
        """What a signal does; callable directly (a test, or another process's agreed stop)."""
        if self.received is None:
            self.received = signum
            if not self._deferring:
                raise Stopped(signum)
            return
        if self._critical:
            self._pending = signum
            return
        raise Stopped(signum, forced=True)

    def check(self) -> None:
        """Raise ``Stopped`` if a stop was requested: the call that abandons unfinished work."""
        if self.received is not None:
            raise Stopped(self.received)

    def _handle(self, signum, frame) -> None:
        self.request(signum)

    @contextlib.contextmanager
    def installed(self, signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopSignals]:
        """Route ``signals`` to this object while the block runs (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in signals}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[StopSignals]:
        """A first signal inside this block only records the request (the loop polls it)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Work no signal may cut in half (a checkpoint save); a second signal waits for its end."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Stopped(signum, forced=True)
