"""TensorBoard event files for a run, written when the optional ``tensorboard`` extra is installed.

The events are written with tensorboardX (a maintained library that writes TensorBoard's format with
nothing but numpy and protobuf; ``clu``'s metric writers would bring TensorFlow along): its summary
builders and its synchronous ``EventsWriter``, not its ``SummaryWriter``, whose background thread and
exit hook print tracebacks when the disk fills and whose errors a run cannot catch. The events are a
view of ``metrics.jsonl``, which stays the run's record: if they cannot be written (a full disk, a
read-only directory) they stop with one warning and the run goes on.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from charlm_jax.errors import CharLMWarning

EVENTS_SUBDIR = "tensorboard"


class EventLog:
    """Scalars per block and per validation, samples as text; a no-op without tensorboardX."""

    def __init__(self, writer: Any = None):
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path) -> EventLog:
        try:
            from tensorboardX.event_file_writer import EventsWriter
        except ImportError:
            return cls()
        log = cls()
        log._guarded(lambda: setattr(log, "writer", _new_writer(EventsWriter, Path(run_dir) / EVENTS_SUBDIR)), 0)
        return log

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def block(
        self,
        step: int,
        metrics: dict[str, np.ndarray],
        seconds: float,
        windows: int,
        chars: int,
        learning_rate: float,
        skipped_total: int,
    ) -> None:
        """One jitted block of steps: mean loss and gradient norm of its finite steps, speed, rate."""
        if not self.enabled:
            return
        finite = ~np.asarray(metrics["skipped"], bool)
        scalars = {
            "train/learning_rate": learning_rate,
            "train/windows_per_second": windows / max(seconds, 1e-9),
            "train/characters_per_second": chars / max(seconds, 1e-9),
            "train/skipped_steps_total": skipped_total,
        }
        if finite.any():
            scalars["train/loss"] = float(np.mean(metrics["loss"][finite]))
            scalars["train/grad_norm"] = float(np.mean(metrics["grad_norm"][finite]))
        self._write(step, scalars)

    def record(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record: validation scalars and the samples."""
        if not self.enabled:
            return
        scalars = {
            f"validation/{name.removeprefix('val_')}": record[name]
            for name in ("val_loss", "val_bits_per_char", "averaged_val_bits_per_char")
            if name in record
        }
        texts = {
            f"samples/temperature_{t}": record["prompt"] + sample for t, sample in record.get("samples", {}).items()
        }
        self._write(record["step"], scalars, texts)

    def close(self) -> None:
        if self.enabled:
            writer, self.writer = self.writer, None
            self._guarded(writer.close, None)

    def _write(self, step: int, scalars: dict[str, float], texts: dict[str, str] | None = None) -> None:
        from tensorboardX import summary
        from tensorboardX.proto.event_pb2 import Event

        def write():
            wall_time = time.time()
            for tag, value in scalars.items():
                self.writer.write_event(Event(wall_time=wall_time, step=step, summary=summary.scalar(tag, value)))
            for tag, text in (texts or {}).items():
                self.writer.write_event(Event(wall_time=wall_time, step=step, summary=summary.text(tag, text)))
            self.writer.flush()  # a run watched live shows each block as it ends

        self._guarded(write, step)

    def _guarded(self, action, step: int | None) -> None:
        """Run ``action``; a failure to write stops the events with one warning, never the run."""
        try:
            action()
        except OSError as error:
            self.writer = None
            where = "" if step is None else f" at step {step}"
            warnings.warn(
                f"TensorBoard events stopped{where} ({error.strerror or error}); metrics.jsonl has every record",
                CharLMWarning,
                stacklevel=3,
            )


def _new_writer(events_writer, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    return events_writer(str(directory / "events"))
