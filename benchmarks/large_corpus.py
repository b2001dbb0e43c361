"""Research-scale corpora: cost must grow with the steps trained, not with the corpus's size.

For 1M, 10M and 100M characters: builds a text from what every machine with Python has (the
standard library's own modules, ``python-source``, and its documentation, ``pydoc``, concatenated,
then repeated whole until the size is reached: repeated text says nothing about quality, only about
cost), then runs, each as its own process under ``/usr/bin/time -v``:

* ``charlm-jax prepare``: throughput (MB of UTF-8 per second) and peak RSS;
* ``charlm-jax train --data`` for one block of 16 steps and for 16 + K steps (book's model,
  ``--val-chars`` default, no samples): the first run's wall time bounds the time from start to the
  first training step (it includes start-up, compilation, the block, a validation and a checkpoint);
  the second validates every 16 steps, and its records after the first give steps per second of
  training time (``epoch_seconds``); peak RSS of both.

Targets (issue 23): prepare >= 20 MB/s; train peak RSS <= 1 GB and start to first step <= 60 s at
100M characters.

    python benchmarks/large_corpus.py                     # ~10 minutes on 2 cores
    python benchmarks/large_corpus.py --sizes 1e6 1e7     # smaller
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import record, write_results

EXTRA_STEPS = 64
TRAIN_FLAGS = ["--sample-length", "0", "--no-progress", "--steps-per-call", "16"]


def build_text(chars: int, path: Path) -> None:
    """``chars`` characters of the standard library's code and documentation, repeated as needed."""
    from charlm_jax.data.corpus import load_text

    base = load_text("python-source") + load_text("pydoc")
    with open(path, "w", encoding="utf-8", newline="") as handle:
        left = chars
        while left > 0:
            piece = base[:left]
            handle.write(piece)
            left -= len(piece)


def timed_run(command: list[str]) -> dict:
    """Wall seconds and peak RSS of ``command`` under /usr/bin/time -v; its stdout kept."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"seconds": seconds, "peak_rss_mb": rss_kb / 1024, "stdout": done.stdout[-2000:]}


def measure(chars: int, work: Path) -> dict:
    text, data = work / f"text-{chars}.txt", work / f"data-{chars}"
    if not text.exists():
        build_text(chars, text)
    megabytes = text.stat().st_size / 1e6
    cli = [sys.executable, "-m", "charlm_jax.cli.app"]
    prepared = timed_run(cli + ["prepare", "--text", str(text), "--out", str(data)])
    # The command's own measure of its work (the interpreter's start-up excluded).
    mb_per_s = float(re.search(r"\(([0-9.]+) MB/s\)", prepared["stdout"]).group(1))
    runs = {}
    for steps in (16, 16 + EXTRA_STEPS):
        out = work / f"run-{chars}-{steps}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        every = [] if steps == 16 else ["--eval-every-steps", "16"]
        runs[steps] = timed_run(
            cli + ["train", "--data", str(data), "--out", str(out), "--max-steps", str(steps), *every, *TRAIN_FLAGS]
        )
    records = [json.loads(line) for line in (work / f"run-{chars}-{16 + EXTRA_STEPS}" / "metrics.jsonl").open()]
    steps_per_s = float(np.median([16 / r["epoch_seconds"] for r in records[1:]]))
    row = {
        "chars": chars,
        "megabytes": megabytes,
        "prepare_wall_seconds": prepared["seconds"],
        "prepare_mb_per_s": mb_per_s,
        "prepare_peak_rss_mb": prepared["peak_rss_mb"],
        "first_block_wall_s": runs[16]["seconds"],
        "steps_per_s": steps_per_s,
        "train_peak_rss_mb": max(r["peak_rss_mb"] for r in runs.values()),
        "train_output": runs[16 + EXTRA_STEPS]["stdout"],
    }
    print({k: v for k, v in row.items() if k != "train_output"}, flush=True)
    return row


def markdown(results: dict) -> str:
    lines = [
        f"# Large corpora, {results['date']}, {results['device']}",
        "",
        "`python benchmarks/large_corpus.py`: text built from the standard library's code and documentation, "
        "repeated; each command its own process under `/usr/bin/time -v`; book's model, "
        f"`--steps-per-call 16`, first run 16 steps, second {16 + EXTRA_STEPS}.",
        "",
        "| characters | prepare MB/s (wall s) | prepare peak RSS | start to end of first block (s) | steps/s | "
        "train peak RSS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['chars']:,} | {row['prepare_mb_per_s']:.0f} ({row['prepare_wall_seconds']:.1f}) | "
            f"{row['prepare_peak_rss_mb']:.0f} MiB | "
            f"{row['first_block_wall_s']:.1f} | {row['steps_per_s']:.1f} | {row['train_peak_rss_mb']:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--work-dir", default="/tmp/charlm-large")
    parser.add_argument("--tag", default=f"{time.strftime('%Y-%m-%d')}-cpu-large-corpus")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results = {
        **record("large_corpus.py"),
        "rows": [measure(int(size), work) for size in args.sizes],
    }
    text = markdown(results)
    write_results(args.tag, results, text)
    print(text)
    largest = results["rows"][-1]
    checks = [
        ("prepare >= 20 MB/s", min(r["prepare_mb_per_s"] for r in results["rows"]) >= 20),
        ("train peak RSS <= 1 GB at the largest size", largest["train_peak_rss_mb"] <= 1024),
        ("start to first block <= 60 s at the largest size", largest["first_block_wall_s"] <= 60),
    ]
    for name, ok in checks:
        print(("PASS: " if ok else "MISS: ") + name)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
