"""Seconds from SIGTERM to exit for two `charlm-jax train` processes joined over loopback (a preemption).

    python benchmarks/multihost_stop.py --tries 3

Each try starts two processes on the tests' tiny text (gloo CPU collectives, 127.0.0.1 only), waits for the
second epoch's line, sends SIGTERM to both, and times each process to its exit; a try runs alone, one after
the other. Writes results/<date>-cpu-multihost-stop.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import record, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import TINY_CLI_FLAGS, TINY_TEXT  # noqa: E402

FLAGS = [*TINY_CLI_FLAGS, "--sample-length", "0"]
FLAGS += ["--no-progress", "--epochs", "100000"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_try(folder: Path) -> dict:
    text = folder / "text.txt"
    text.write_text(TINY_TEXT)
    port, env = free_port(), dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "charlm_jax.cli.app", "train", "--text", str(text), "--out", str(folder / "run")]
    runs = [
        subprocess.Popen(
            [*command, *FLAGS, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    printed: list[str] = []
    # One reader per pipe, joined before the output is read: stderr is drained so a chatty process never blocks.
    readers = [threading.Thread(target=lambda: printed.extend(runs[0].stdout), daemon=True)]
    readers += [threading.Thread(target=run.stderr.read, daemon=True) for run in runs]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 300
    while not any(line.startswith("epoch 2/") for line in printed) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = time.monotonic()
    for run in runs:
        run.send_signal(signal.SIGTERM)
    seconds = []
    for run in runs:
        run.wait(timeout=120)
        seconds.append(round(time.monotonic() - sent, 2))
    for reader in readers:
        reader.join(timeout=30)
    stopped = next((line.strip() for line in printed if line.startswith("stopped by")), "")
    return {"seconds_to_exit": seconds, "exit_status": [run.returncode for run in runs], "line": stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    tries = []
    for _ in range(args.tries):
        with tempfile.TemporaryDirectory() as folder:
            tries.append(one_try(Path(folder)))
            print(tries[-1], flush=True)
    date = time.strftime("%Y-%m-%d")
    data = {
        **record("multihost_stop.py"),
        "tries": tries,
    }
    every = [s for t in tries for s in t["seconds_to_exit"]]
    lines = [
        f"# Two processes stopped by SIGTERM, {date}",
        "",
        f"Machine: {data['device']}, two processes over loopback; command: `{data['command']}`.",
        "",
        "| try | seconds to exit (process 0, 1) | exit statuses |",
        "|---|---|---|",
    ]
    lines += [
        f"| {i + 1} | {t['seconds_to_exit'][0]:.2f}, {t['seconds_to_exit'][1]:.2f} | {t['exit_status']} |"
        for i, t in enumerate(tries)
    ]
    lines += ["", f"Range over every process and try: {min(every):.2f}-{max(every):.2f} s."]
    print(write_results(f"{date}-cpu-multihost-stop", data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
