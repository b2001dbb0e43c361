"""Two `charlm-jax train` processes joined by jax.distributed over loopback (gloo CPU collectives).

The multi-host path as a cluster runs it, on one machine: one process per host, each feeding
its slice of every global batch, process 0 writing metrics, orbax writing one set of
checkpoints, and `--resume` continuing across both. The losses must follow a single process
that trains the same run alone.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import charlm_jax

from helpers import TINY_CLI_FLAGS

pytestmark = pytest.mark.slow

FLAGS = [
    *TINY_CLI_FLAGS,
    "--sample-length",
    "10",
    "--no-progress",
    "--steps-per-call",
    "8",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(text_file, out, *extra, processes=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [
        sys.executable,
        "-m",
        "charlm_jax.cli.app",
        "train",
        "--text",
        str(text_file),
        "--out",
        str(out),
        *FLAGS,
        *extra,
    ]
    if processes == 1:
        result = subprocess.run(base, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return [result.stdout]
    port = free_port()
    runs = [
        subprocess.Popen(
            base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(processes)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    return [stdout for stdout, _ in outputs]


def watch(runs):
    """Read process 0's stdout line by line and every stderr to the end, each pipe by one thread only (a second
    reader, such as communicate(), would take lines from the first). Returns (printed, errors, finish);
    finish() waits for the readers so nothing printed at exit is missed."""
    import threading

    printed, errors = [], {}
    readers = [threading.Thread(target=lambda: printed.extend(runs[0].stdout), daemon=True)]
    readers += [
        threading.Thread(target=lambda i=i: errors.setdefault(i, runs[i].stderr.read()), daemon=True)
        for i in range(len(runs))
    ]
    for reader in readers:
        reader.start()

    def finish():
        for reader in readers:
            reader.join(timeout=30)

    return printed, errors, finish


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_one_process_and_resume_across_both(tmp_path, tiny_text):
    text_file = tmp_path / "text.txt"
    text_file.write_text(tiny_text)
    alone, joined = tmp_path / "alone", tmp_path / "joined"
    train(text_file, alone, "--epochs", "2")
    first = train(text_file, joined, "--epochs", "1", processes=2)
    ours_printed = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for out in first]
    assert "2 cpu device(s), 2 process(es)" in first[0] and ours_printed[1] == []  # only process 0 prints
    second = train(text_file, joined, "--epochs", "2", "--resume", processes=2)
    assert "resuming at step" in second[0]
    ours, reference = records(joined), records(alone)
    assert [r["step"] for r in ours] == [r["step"] for r in reference] and len(ours) == 2  # one metrics file
    for key in ("train_loss", "val_bits_per_char", "grad_norm_max"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in reference], rtol=1e-5)
    assert [r["samples"] for r in ours] == [r["samples"] for r in reference]
    lm = charlm_jax.load(joined)  # one set of checkpoints, readable by a single process
    assert lm.step == ours[-1]["step"] and charlm_jax.load(joined / "best").step == ours[-1]["step"]
    np.testing.assert_allclose(
        charlm_jax.bits_per_char(lm, tiny_text[-200:]),
        charlm_jax.bits_per_char(charlm_jax.load(alone), tiny_text[-200:]),
        rtol=1e-5,
    )


def test_two_processes_on_a_prepared_corpus_follow_one_process_on_the_text(tmp_path, tiny_text):
    """Each process maps the prepared ids and gathers only its own rows of every block; the run is the
    single-process run on the text."""
    text_file = tmp_path / "text.txt"
    text_file.write_text(tiny_text)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "charlm_jax.cli.app",
            "prepare",
            "--text",
            str(text_file),
            "--out",
            str(tmp_path / "data"),
        ],
        check=True,
        capture_output=True,
    )
    alone, joined = tmp_path / "alone", tmp_path / "joined"
    train(text_file, alone, "--epochs", "2")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    port = free_port()
    base = [
        sys.executable,
        "-m",
        "charlm_jax.cli.app",
        "train",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(joined),
        *FLAGS,
        "--epochs",
        "2",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
    ]
    runs = [
        subprocess.Popen(
            base + ["--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for i in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    ours, reference = records(joined), records(alone)
    assert [r["step"] for r in ours] == [r["step"] for r in reference]
    for key in ("train_loss", "val_bits_per_char", "grad_norm_max"):
        np.testing.assert_allclose([r[key] for r in ours], [r[key] for r in reference], rtol=1e-5)


def test_two_processes_stopped_by_sigterm_save_one_step_and_resume_exactly(tmp_path, tiny_text):
    """SIGTERM to both processes (as a scheduler preempts a job): each stops at the same block, the step is
    saved once, process 1 says so in one line of its own, and --resume on both continues exactly."""
    import signal
    import time

    text_file = tmp_path / "text.txt"
    text_file.write_text(tiny_text)
    flags = [*FLAGS, "--sample-length", "0"]
    env, port = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1"), free_port()
    out = tmp_path / "stopped"
    base = [sys.executable, "-m", "charlm_jax.cli.app", "train", "--text", str(text_file), "--out", str(out), *flags]
    runs = [
        subprocess.Popen(
            [*base, "--epochs", "100000", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    printed, errors, finish = watch(runs)
    deadline = time.monotonic() + 300
    while not any(line.startswith("epoch 2/") for line in printed) and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = time.monotonic()
    for run in runs:
        run.send_signal(signal.SIGTERM)
    seconds = []
    for run in runs:
        run.wait(timeout=120)
        seconds.append(time.monotonic() - sent)
    finish()
    print(f"two processes, SIGTERM to exit: {seconds[0]:.2f} s and {seconds[1]:.2f} s")
    assert [run.returncode for run in runs] == [143, 143], errors
    stopped = next(line for line in printed if line.startswith("stopped by SIGTERM"))
    step = int(stopped.split(" at step ")[1].split(";")[0])
    assert (
        stopped.strip() == f"stopped by SIGTERM at step {step}; checkpoint in {out}; resume with "
        f"charlm-jax train --out {out} --resume"
    )
    ours = [line for line in errors[1].splitlines() if line.startswith("charlm-jax")]
    assert ours == [
        f"charlm-jax: process 1 of 2 stopped by SIGTERM at step {step}; process 0 saved the checkpoint in {out}"
    ], errors[1]
    assert "preemption_notifier" not in errors[0] + errors[1]
    # The step saved is what one process reaches when it stops there.
    saved = charlm_jax.load(out)
    assert saved.step == step
    alone = tmp_path / "alone"
    subprocess.run(
        [*base[:7], str(alone), *flags, "--epochs", "100000", "--max-steps", str(step)],
        check=True,
        capture_output=True,
        env=env,
    )
    for ours_leaf, alone_leaf in zip(jax_leaves(saved.params), jax_leaves(charlm_jax.load(alone).params)):
        np.testing.assert_allclose(ours_leaf, alone_leaf, rtol=1e-5, atol=1e-6)
    # --resume on both processes reaches the parameters of a two-process run never stopped.
    epochs = str(step // 35 + 2)
    train(text_file, out, *flags[len(FLAGS) :], "--epochs", epochs, "--resume", processes=2)
    whole = tmp_path / "whole"
    train(text_file, whole, *flags[len(FLAGS) :], "--epochs", epochs, processes=2)
    for resumed_leaf, whole_leaf in zip(
        jax_leaves(charlm_jax.load(out).params), jax_leaves(charlm_jax.load(whole).params)
    ):
        np.testing.assert_array_equal(resumed_leaf, whole_leaf)


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_two_processes_abandon_a_long_validation_together_at_sigterm(tmp_path):
    """A 2.3M-window validation (python-source, half held out) is a collective of both processes: a SIGTERM
    is agreed on between its batches and both drop it, record nothing and save the same step."""
    import signal
    import time

    out, port = tmp_path / "run", free_port()
    flags = ["--corpus", "python-source", "--out", str(out), "--val-fraction", "0.5", "--val-chars", "0"]
    flags += ["--step", "1000", "--maxlen", "60", "--hidden-size", "64", "--batch-size", "16"]
    flags += ["--eval-every-steps", "16", "--sample-length", "0", "--no-progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "charlm_jax.cli.app", "train", *flags, "--coordinator", f"127.0.0.1:{port}"]
            + ["--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    printed, errors, finish = watch(runs)
    deadline = time.monotonic() + 300
    while not any(line.startswith("validating on") for line in printed) and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = time.monotonic()
    for run in runs:
        run.send_signal(signal.SIGTERM)
    for run in runs:
        run.wait(timeout=120)
    print(f"two processes, SIGTERM in a validation to exit: {time.monotonic() - sent:.2f} s")
    finish()
    assert [run.returncode for run in runs] == [143, 143], errors
    assert any(line.startswith("stopped by SIGTERM at step 16;") for line in printed), printed
    assert not (out / "metrics.jsonl").exists()  # the abandoned validation recorded nothing
    assert charlm_jax.load(out).step == 16
