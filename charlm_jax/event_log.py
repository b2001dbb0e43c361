"""TensorBoard event files for a run, written when the optional ``tensorboard`` extra is installed.

The writer is tensorboardX's ``SummaryWriter``: a maintained library that writes TensorBoard's
event format with nothing but numpy and protobuf, so a run neither imports TensorFlow nor needs a
TensorBoard server; ``clu``'s metric writers would bring TensorFlow along for the same files.
``metrics.jsonl`` stays the run's record; the events are a view of it for ``tensorboard --logdir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EVENTS_SUBDIR = "tensorboard"
# Seconds between the writer's flushes: a run watched live shows each block within this.
FLUSH_SECONDS = 10


class EventLog:
    """Scalars per block and per validation, samples as text; a no-op without tensorboardX."""

    def __init__(self, writer: Any = None):
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path) -> "EventLog":
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return cls()
        return cls(SummaryWriter(logdir=str(Path(run_dir) / EVENTS_SUBDIR), flush_secs=FLUSH_SECONDS))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def block(self, step: int, metrics: dict[str, np.ndarray], seconds: float, windows: int, chars: int,
              learning_rate: float, skipped_total: int) -> None:
        """One jitted block of steps: mean loss and gradient norm of its finite steps, speed, rate."""
        if not self.enabled:
            return
        finite = ~np.asarray(metrics["skipped"], bool)
        if finite.any():
            self.writer.add_scalar("train/loss", float(np.mean(metrics["loss"][finite])), step)
            self.writer.add_scalar("train/grad_norm", float(np.mean(metrics["grad_norm"][finite])), step)
        self.writer.add_scalar("train/learning_rate", learning_rate, step)
        self.writer.add_scalar("train/windows_per_second", windows / max(seconds, 1e-9), step)
        self.writer.add_scalar("train/characters_per_second", chars / max(seconds, 1e-9), step)
        self.writer.add_scalar("train/skipped_steps_total", skipped_total, step)

    def record(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record: validation scalars and the samples."""
        if not self.enabled:
            return
        step = record["step"]
        for name in ("val_loss", "val_bits_per_char"):
            if name in record:
                self.writer.add_scalar(f"validation/{name.removeprefix('val_')}", record[name], step)
        for temperature, sample in record.get("samples", {}).items():
            self.writer.add_text(f"samples/temperature_{temperature}", record["prompt"] + sample, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
