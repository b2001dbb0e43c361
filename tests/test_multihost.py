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

pytestmark = pytest.mark.slow

FLAGS = [
    "--maxlen",
    "12",
    "--step",
    "2",
    "--hidden-size",
    "16",
    "--batch-size",
    "16",
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
        "charlm_jax.cli",
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
        [sys.executable, "-m", "charlm_jax.cli", "prepare", "--text", str(text_file), "--out", str(tmp_path / "data")],
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
        "charlm_jax.cli",
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
