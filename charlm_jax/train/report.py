"""What a training run shows on the console: its opening line, the progress bar, each record.

Only the training loop calls these, and only process 0's console prints (the others are quiet).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from charlm_jax.data.windows import Split


def describe_val_cap(split: Split) -> str:
    if split.val_windows_all <= len(split.val_starts):
        return ""
    return f" (1 in {split.val_stride} of the tail's {split.val_windows_all:,}: --val-chars)"


def describe_mesh(mesh) -> str:
    devices = mesh.devices.size
    platform = mesh.devices.flat[0].platform
    return f"{devices} {platform} device(s), {jax.process_count()} process(es)"


def opening_line(chars: int, vocab_size: int, split: Split, mesh, step: int, unit: str = "char") -> str:
    units = "characters" if unit == "char" else f"{unit}s"
    return (
        f"[bold]charlm-jax[/] {chars:,} {units}, vocabulary {vocab_size}, {split.train_windows:,} training "
        f"windows, {len(split.val_starts):,} validation windows{describe_val_cap(split)}; {describe_mesh(mesh)}"
        + (f"; resuming at step {step}" if step else "")
    )


class ProgressBar:
    """One bar per epoch (rich), advanced after every block; shown only on an interactive console."""

    def __init__(self, console: Console, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]} win/s"),
            TextColumn("skipped {task.fields[skipped]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_interactive,
            transient=True,
        )
        self.task: Any = None
        self.epoch = 0

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.__exit__(*exc_info)

    def update(self, step: int, losses: list[float], windows_per_second: float, skipped: int) -> None:
        """The bar after a block that reached ``step`` (``losses``: the block's finite steps')."""
        epoch = -(-step // self.steps_per_epoch)
        if epoch != self.epoch:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                "train", total=self.steps_per_epoch, epoch=epoch, loss=float("nan"), speed="-", skipped=skipped
            )
            self.epoch = epoch
        self.progress.update(
            self.task,
            completed=step - (epoch - 1) * self.steps_per_epoch,
            loss=float(np.mean(losses or [np.nan])),
            speed=f"{windows_per_second:,.0f}",
            skipped=skipped,
        )


def print_record(console: Console, record: dict[str, Any], epochs: int, unit: str = "char") -> None:
    """A record as the book prints an epoch: the losses, then the prompt and one sample per temperature.
    ``unit``: what the model reads (``char``, or ``byte``: the record's ``val_bits_per_char`` is then per byte)."""
    validation = (
        f", validation {record['val_loss']:.4f} nats = {record['val_bits_per_char']:.3f} bits/{unit}"
        if "val_loss" in record
        else ""
    )
    if "averaged_val_bits_per_char" in record:
        validation += f", averaged weights {record['averaged_val_bits_per_char']:.3f} bits/{unit}"
    console.print(
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}{validation} "
        f"({record['epoch_seconds']:.1f} s, {record['windows_per_second']:,.0f} windows/s)"
    )
    if not np.isfinite(record["train_loss"]):
        console.print("[red]training loss is not finite[/]")


def print_samples(console: Console, prompt: str, samples: dict[str, str]) -> None:
    console.print(f'--- Generating with seed: "{prompt}"', markup=False, highlight=False)
    for temperature, sample in samples.items():
        console.print(f"------ temperature: {temperature}", markup=False, highlight=False)
        console.print(prompt + sample, markup=False, highlight=False)
