"""Faults an operator meets, done for real to real `charlm-jax` processes: signals, a second trainer,
a full or read-only disk, damaged checkpoints, options that would be silently dropped.

Each fault must end as one line on stderr (no traceback), lose nothing that was saved, and leave a run
that ``--resume`` continues.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import charlm_jax
from charlm_jax.train.loop import Limits, fit

from helpers import QUIET, TINY_CLI_FLAGS, assert_trees_equal, tiny_config

TINY_FLAGS = [
    *TINY_CLI_FLAGS,
    "--no-progress",
    "--cpu-devices",
    "1",
]
# No test here bounds how long a stop takes (that depends on the machine); each prints the seconds it
# measured, and asserts what the stop did: the step saved, the validation or samples abandoned unrecorded.


class Trainer:
    """A real `charlm-jax` process whose stdout lines are read as they come."""

    def __init__(self, *argv: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charlm_jax.cli.app", *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, fragment: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, f"exited {self.process.returncode}: {self.process.stderr.read()}"
                continue
            self.stdout.append(line)
            if fragment in line:
                return
        raise AssertionError(f"{fragment!r} never printed; got {self.stdout}")

    def signal_and_wait(self, signum: int) -> float:
        """Send ``signum``; returns the seconds until the process ended."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        self.process.wait(timeout=120)
        return time.monotonic() - sent

    def finish(self, timeout: float = 300.0) -> tuple[int, str, str]:
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=30)  # the pipe is drained once the process has closed it
        while not self.lines.empty():
            self.stdout.append(self.lines.get())
        return self.process.returncode, "".join(self.stdout), self.process.stderr.read()


def run(*argv: str, timeout: float = 300.0) -> tuple[int, str, str]:
    return Trainer(*argv).finish(timeout)


def assert_one_line(stderr: str, fragment: str, prefix: str = "charlm-jax: error: ") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    assert fragment in lines[0], stderr
    return lines[0]


def record_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def text_file(tmp_path, tiny_text):
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- signals


class SignalAtRead:
    """A clock that sends this process ``signum`` the ``at``-th time the loop reads it: a signal in mid-run,
    delivered at a known point whatever the machine's speed."""

    def __init__(self, signum: int, at: int) -> None:
        self.signum, self.at, self.reads = signum, at, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads == self.at:
            os.kill(os.getpid(), self.signum)
        return time.perf_counter()


def test_a_signal_inside_fit_saves_the_step_it_stopped_at_and_resume_continues(tmp_path, tiny_text):
    """The in-process half of the test below (which does it to a real CLI process, with the slow set)."""
    from charlm_jax.train.run import StopReason
    from charlm_jax.train.signals import StopSignals

    out, config = tmp_path / "run", tiny_config(epochs=100000, sample_length=0)
    stop = StopSignals()
    with stop.installed():
        result = fit(
            config, tiny_text, out, console=QUIET, limits=Limits(signals=stop, clock=SignalAtRead(signal.SIGTERM, 12))
        )
    assert result.stop_reason is StopReason.TERMINATED and 0 < result.state.step < 100000
    saved = charlm_jax.load(out)
    assert saved.step == result.state.step and all(s <= saved.step for s in record_steps(out))
    assert_trees_equal(saved.params, result.state.params)
    resumed = fit(config, tiny_text, out, console=QUIET, resume=True, limits=Limits(max_steps=saved.step + 8))
    assert resumed.state.step == saved.step + 8


@pytest.mark.slow  # three processes (trainer, reference, resume); the stop rules are unit-tested in test_stopping,
# a signal inside fit in the test above
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_current_step_exactly_and_resume_continues(tmp_path, text_file, tiny_text, signum, status):
    out = tmp_path / "run"
    trainer = Trainer(
        "train", "--text", text_file, "--out", out, "--epochs", "100000", "--sample-length", "0", *TINY_FLAGS
    )
    trainer.wait_for("epoch 1/")
    seconds = trainer.signal_and_wait(signum)
    code, stdout, stderr = trainer.finish()
    name = signal.Signals(signum).name
    print(f"{name} while training: {seconds:.2f} s from signal to exit")
    assert code == status and "Traceback" not in stderr, stderr
    line = next(line for line in stdout.splitlines() if line.startswith("stopped by"))
    step = int(line.split(" at step ")[1].split(";")[0])
    assert (
        line == f"stopped by {name} at step {step}; checkpoint in {out}; resume with "
        f"charlm-jax train --out {out} --resume"
    )
    saved = charlm_jax.load(out)
    assert saved.step == step and all(s <= step for s in record_steps(out))  # metrics never ahead of checkpoints
    # The checkpoint is what an uninterrupted run holds at that step, bit for bit.
    reference = fit(
        tiny_config(epochs=100000, sample_length=0),
        tiny_text,
        tmp_path / "reference",
        console=QUIET,
        limits=Limits(max_steps=step),
    )
    assert_trees_equal(saved.params, reference.state.params)
    # The command as printed (no --text: the run reads its own text again), with a step limit so it ends.
    printed = line.split("resume with ")[1].split()
    assert printed[:2] == ["charlm-jax", "train"]
    code, stdout, stderr = run(*printed[1:], "--max-steps", str(step + 40), "--no-progress", "--cpu-devices", "1")
    assert code == 0, stderr
    assert f"resuming at step {step}" in stdout and charlm_jax.load(out).step > step
    steps = record_steps(out)
    assert steps == sorted(set(steps))  # each step recorded once, in order


@pytest.mark.slow
def test_stop_during_validation_drops_it_and_saves_within_seconds(tmp_path):
    """A 2.3M-window validation (the python-source corpus, half held out) is abandoned between batches."""
    out = tmp_path / "run"
    flags = [
        "--corpus",
        "python-source",
        "--out",
        out,
        "--val-fraction",
        "0.5",
        "--val-chars",
        "0",
        "--step",
        "1000",
        "--maxlen",
        "60",
        "--hidden-size",
        "64",
        "--batch-size",
        "16",
        "--eval-every-steps",
        "16",
        "--sample-length",
        "0",
        "--no-progress",
        "--cpu-devices",
        "1",
    ]
    trainer = Trainer("train", *flags)
    trainer.wait_for("validating on")  # 2.3M windows: the signal arrives long before their end
    seconds = trainer.signal_and_wait(signal.SIGINT)
    code, stdout, stderr = trainer.finish()
    print(f"SIGINT while validating: {seconds:.2f} s from signal to exit")
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "stopped by SIGINT at step 16;" in stdout
    assert record_steps(out) == []  # the abandoned validation recorded nothing
    assert charlm_jax.load(out).step == 16
    trainer = Trainer("train", *flags, "--resume")
    trainer.wait_for("resuming at step 16")
    trainer.wait_for("validating on")  # the resumed run trains on and validates again
    print(f"SIGTERM while validating after a resume: {trainer.signal_and_wait(signal.SIGTERM):.2f} s to exit")
    code, stdout, _ = trainer.finish()
    assert code == 143 and charlm_jax.load(out).step == 32


@pytest.mark.slow
def test_stop_during_the_epoch_samples_is_honoured_between_chunks(tmp_path, text_file):
    out = tmp_path / "run"
    trainer = Trainer(
        "train",
        "--text",
        text_file,
        "--out",
        out,
        "--epochs",
        "2",
        "--sample-length",
        "300000",
        "--sample-mode",
        "window",
        *TINY_FLAGS,
    )
    trainer.wait_for("epoch 1/2: train loss")  # printed after validation, before 4 x 300,000 characters of samples
    seconds = trainer.signal_and_wait(signal.SIGINT)
    code, stdout, stderr = trainer.finish()
    print(f"SIGINT while sampling: {seconds:.2f} s from signal to exit")
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "stopped by SIGINT at step 35;" in stdout
    assert record_steps(out) == [] and charlm_jax.load(out).step == 35
    code, stdout, stderr = run(
        "train",
        "--text",
        text_file,
        "--out",
        out,
        "--resume",
        "--epochs",
        "2",
        "--sample-length",
        "0",
        *TINY_FLAGS[:-2],
    )
    assert code == 0 and "resuming at step 35" in stdout and record_steps(out) == [70], stderr


# -------------------------------------------------------------------------------- two trainers


@pytest.mark.slow  # real trainers in subprocesses: the default run's four minutes (CI runs it)
def test_a_second_trainer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(tmp_path, text_file):
    out = tmp_path / "run"
    first = Trainer(
        "train", "--text", text_file, "--out", out, "--epochs", "100000", "--sample-length", "0", *TINY_FLAGS
    )
    first.wait_for("epoch 1/")
    code, _, stderr = run("train", "--text", text_file, "--out", out, "--resume", *TINY_FLAGS)
    line = assert_one_line(stderr, "is in use by another trainer")
    assert code == 2 and f"process {first.process.pid} on " in line
    first.process.kill()  # kill -9: no handler runs, the lock file stays behind
    first.process.wait(timeout=60)
    code, stdout, stderr = run(
        "train",
        "--text",
        text_file,
        "--out",
        out,
        "--resume",
        "--epochs",
        str(charlm_jax.load(out).step // 35 + 1),
        *TINY_FLAGS,
    )
    assert code == 0 and "resuming at step" in stdout, stderr


# ------------------------------------------------------------------------------- full disk, read-only


@pytest.fixture()
def small_filesystem(tmp_path):
    """A 16 MiB tmpfs of our own (needs the right to mount, which root has here and in CI)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({result.stderr.strip()}): needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resume_is_clean(small_filesystem, text_file):
    out = small_filesystem / "run"
    code, _, stderr = run("train", "--text", text_file, "--out", out, "--epochs", "1", *TINY_FLAGS)
    assert code == 0, stderr
    filler = fill(small_filesystem)
    code, _, stderr = run("train", "--text", text_file, "--out", out, "--resume", "--epochs", "3", *TINY_FLAGS)
    # With the tensorboard extra installed the event files fill the disk first: they stop with one warning
    # (the run goes on to the checkpoint, whose failure is the error).
    events_warning = "charlm-jax: warning: TensorBoard events stopped at step "
    warned = [line for line in stderr.splitlines() if line.startswith(events_warning)]
    assert len(warned) <= 1 and all("No space left on device" in line for line in warned), stderr
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith(events_warning))
    line = assert_one_line(stderr, "No space left on device")
    assert code == 1 and f"cannot write checkpoint step 70 in '{out}'" in line and "step 35 is intact" in line
    assert charlm_jax.load(out).step == 35 and record_steps(out) == [35]  # metrics never ahead of checkpoints
    filler.unlink()
    code, stdout, stderr = run("train", "--text", text_file, "--out", out, "--resume", "--epochs", "3", *TINY_FLAGS)
    assert code == 0 and "resuming at step 35" in stdout, stderr
    assert record_steps(out) == [35, 70, 105] and charlm_jax.load(out).step == 105
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    code, _, stderr = run("train", "--text", text_file, "--out", out, "--resume", "--epochs", "4", *TINY_FLAGS)
    assert code == 1 and "Traceback" not in stderr  # the machine failed, not the input
    assert_one_line(stderr, "Read-only file system")


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.slow  # real trainers in subprocesses: the default run's four minutes (CI runs it)
def test_a_damaged_newest_checkpoint_warns_in_one_line_and_resume_sets_it_aside(tmp_path, trained_run, text_file):
    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)  # steps 35 and 70 of the tiny run (2 epochs)
    (out / "70" / "params" / "manifest.ocdbt").unlink()  # the parameters' index: orbax's reader then fails noisily
    code, stdout, stderr = run("generate", "--checkpoint", out, "--length", "10", "--temperature", "0.5")
    assert code == 0 and stdout.startswith("--- Generating with seed:")
    assert_one_line(stderr, "checkpoint step 70 in", prefix="charlm-jax: warning: ")
    assert "is damaged" in stderr and "using step 35" in stderr
    code, stdout, stderr = run("train", "--text", text_file, "--out", out, "--resume", "--epochs", "3", *TINY_FLAGS)
    assert code == 0, stderr
    warning = assert_one_line(stderr, "using step 35; the damaged step moved to", prefix="charlm-jax: warning: ")
    assert "damaged" in warning and list((out / "damaged").iterdir())
    assert "1 record(s) past step 35 removed" in stdout and record_steps(out) == [35, 70, 105]


# ----------------------------------------------------------------------- options and error policy


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["generate", "--chunk", "-1"], "--chunk sets the size of streamed pieces and has no effect without --stream"),
        (["generate", "--repetition-window", "5"], "--repetition-window has no effect without --repetition-penalty"),
        (["train", "--lr-final-fraction", "0.2"], "--lr-final-fraction has no effect with a constant learning rate"),
        (["train", "--sample-length", "0", "--temperatures", "0.5"], "have no effect with --sample-length 0"),
        (["train", "--val-fraction", "0", "--early-stopping-patience", "2"], "needs a validation split"),
        (["train", "--corpus", "pydoc", "--sha256", "00"], "has no effect on a built-in corpus"),
        (["train", "--num-processes", "2"], "need --coordinator"),
    ],
)
def test_an_option_without_effect_is_refused_in_one_line(capsys, trained_run, tmp_path, argv, fragment):
    from charlm_jax.cli.app import main

    where = ["--checkpoint", str(trained_run[0])] if argv[0] == "generate" else ["--out", str(tmp_path / "r")]
    assert main([argv[0], *where, *argv[1:]]) == 2
    assert_one_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # a CLI process of its own; the one-line errors are tested without it
def test_debug_shows_the_traceback_that_the_one_line_error_hides(tmp_path):
    argv = ["train", "--text", str(tmp_path / "missing.txt")]
    code, _, stderr = run(*argv)
    assert code == 2 and "Traceback" not in stderr
    code, _, stderr = run("--debug", *argv)
    assert code == 1 and "Traceback" in stderr and "CharLMError" in stderr


@pytest.mark.slow  # real trainers in subprocesses: the default run's four minutes (CI runs it)
def test_resume_splits_the_cpu_for_the_saved_batch_not_the_flags_default(tmp_path, text_file):
    """A batch of 17 runs on one CPU device; resumed with no --batch-size, the default 128 would split the
    CPU in two and refuse the saved batch. The device split must follow the checkpoint."""
    out = tmp_path / "run"
    flags = [
        "--text",
        text_file,
        "--out",
        out,
        "--maxlen",
        "12",
        "--step",
        "2",
        "--hidden-size",
        "16",
        "--sample-length",
        "0",
        "--no-progress",
    ]
    code, stdout, stderr = run("train", *flags, "--batch-size", "17", "--epochs", "1")
    assert code == 0 and "1 cpu device(s)" in stdout, stderr
    code, stdout, stderr = run("train", *flags, "--resume", "--epochs", "2")
    assert code == 0 and "resuming at step" in stdout, stderr
