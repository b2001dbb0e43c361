"""The Python API against the CLI on the same run: training windows/s and four-temperature generation.

    python benchmarks/api_vs_cli.py [--tries 2] [--steps 1200]

Every measurement is a fresh process (a script's first call, as a user's notebook makes it), and the
variants are interleaved try by try:

* ``cli``: ``charlm-jax train`` (it splits the CPU into one device per core itself);
* ``api``: ``charlm_jax.fit`` in a script that does nothing else first (``use_every_core`` splits it);
* ``api_one_device``: the same script with ``JAX_NUM_CPU_DEVICES=1``, which is what every script got
  before the API split the CPU (the figure this issue started from).

Training: the book's configuration on the built-in corpus, ``--steps`` optimizer steps with a record
every ``steps / 3``; windows/s is the mean of the records after the first (the first holds the compile).
Generation: 400 characters at the book's four temperatures from that run's checkpoint, the median of
20 calls after a warm-up, in a process split as the CLI splits it for four rows, as the API splits it by
itself, and on one device. Writes results/<date>-<platform>-api-vs-cli.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import platform_tag, record, write_results

TRAIN_SCRIPT = """
import sys, charlm_jax
from rich.console import Console
config = charlm_jax.TrainConfig(sample_length=0, eval_every_steps={every})
charlm_jax.fit(config, charlm_jax.load_text(), sys.argv[1], console=Console(quiet=True),
               limits=charlm_jax.Limits(max_steps={steps}))
"""

GENERATE_SCRIPT = """
import json, sys, time
split = sys.argv[2]
if split == "cli":  # what charlm-jax generate does before JAX starts, for four rows
    from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices
    configure_cpu_devices(auto_cpu_devices(4, min_rows=1))
import jax, charlm_jax
lm = charlm_jax.load(sys.argv[1])
options = charlm_jax.GenerationOptions(length=400, temperatures=(0.2, 0.5, 1.0, 1.2))
charlm_jax.generate(lm, options=options, seed=0)
times = []
for seed in range(20):
    started = time.perf_counter()
    charlm_jax.generate(lm, options=options, seed=seed)
    times.append(time.perf_counter() - started)
times.sort()
print(json.dumps({"seconds": times[len(times) // 2], "devices": jax.device_count()}))
"""


def environment(one_device: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    if one_device:
        env["JAX_NUM_CPU_DEVICES"] = "1"
    return env


def steady_windows_per_second(out: Path) -> float:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["windows_per_second"] for r in records[1:])


def train_once(variant: str, folder: Path, steps: int) -> float:
    out = folder / variant
    every = steps // 3
    if variant == "cli":
        command = ["charlm-jax", "train", "--out", str(out), "--max-steps", str(steps), "--sample-length", "0"]
        command += ["--eval-every-steps", str(every), "--no-progress"]
        subprocess.run(command, check=True, capture_output=True, env=environment(False))
    else:
        script = textwrap.dedent(TRAIN_SCRIPT.format(every=every, steps=steps))
        env = environment(variant == "api_one_device")
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, capture_output=True, env=env)
    return steady_windows_per_second(out)


def generate_once(variant: str, checkpoint: Path) -> dict:
    split = "cli" if variant == "cli" else "api"
    env = environment(variant == "api_one_device")
    result = subprocess.run(
        [sys.executable, "-c", GENERATE_SCRIPT, str(checkpoint), split],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1200)
    args = parser.parse_args()
    variants = ["cli", "api", "api_one_device"]
    training: dict[str, list[float]] = {v: [] for v in variants}
    generation: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as folder:
        for attempt in range(args.tries):
            for variant in variants:
                training[variant].append(train_once(variant, Path(folder) / f"try{attempt}", args.steps))
                print(f"train {variant}: {training[variant][-1]:,.0f} windows/s", flush=True)
        checkpoint = Path(folder) / "try0" / "cli"
        for _ in range(args.tries):
            for variant in variants:
                generation[variant].append(generate_once(variant, checkpoint))
                print(f"generate {variant}: {generation[variant][-1]}", flush=True)
    date = time.strftime("%Y-%m-%d")
    command = f"python benchmarks/api_vs_cli.py --tries {args.tries} --steps {args.steps}"
    train_mean = {v: statistics.mean(training[v]) for v in variants}
    per_char = {v: statistics.median(g["seconds"] for g in generation[v]) / (4 * 400) for v in variants}
    data = {
        **record("api_vs_cli.py"),
        "training_windows_per_second": training,
        "generation": generation,
        "training_ratio_to_cli": {v: train_mean[v] / train_mean["cli"] for v in variants},
        "generation_us_per_char": {v: per_char[v] * 1e6 for v in variants},
        "generation_cost_ratio_to_cli": {v: per_char[v] / per_char["cli"] for v in variants},
    }
    lines = [
        f"# The Python API against the CLI, {date}",
        "",
        f"Machine: {data['device']}; command: `{command}`; every figure a fresh process, variants interleaved.",
        "",
        "| variant | training windows/s (each try) | vs CLI | 4 x 400 characters, us per character | cost vs CLI |",
        "|---|---|---|---|---|",
    ]
    for v in variants:
        tries = ", ".join(f"{w:,.0f}" for w in training[v])
        lines.append(
            f"| {v} | {tries} | {data['training_ratio_to_cli'][v]:.2f}x | {per_char[v] * 1e6:.1f} | "
            f"{data['generation_cost_ratio_to_cli'][v]:.2f}x |"
        )
    print(write_results(f"{date}-{platform_tag()}-api-vs-cli", data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
