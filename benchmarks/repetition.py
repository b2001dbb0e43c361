"""Repetition controls measured: how loopy greedy and low-temperature samples are, with and without them.

A one-epoch model of the built-in corpus (the book's recipe; trained here unless
``--checkpoint`` names one) continues the same prompts (training-text windows) for 400
characters at T = 0 and 0.2, plainly and with each control. Loopiness is the share of
distinct 20-grams among a sample's 20-grams (1.0: nothing repeats; a two-word loop is
near 0). Because a ban on repeating n-grams with n <= 20 makes that share 1 by construction,
the table also shows the share of distinct 8-grams, and the model's own bits per character of
the sample (stateful), the price in likelihood each control pays.

    python benchmarks/repetition.py                       # trains 1 epoch first (~2 min on 2 cores)
    python benchmarks/repetition.py --checkpoint runs/charlm
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices

configure_cpu_devices(auto_cpu_devices(128))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

import charlm_jax  # noqa: E402

from common import device_name, record, write_results  # noqa: E402

OPTIONS: dict[str, dict] = {
    "none": {},
    "penalty 1.3, window 20": {"repetition_penalty": 1.3, "repetition_window": 20},
    "penalty 1.3, window 60": {"repetition_penalty": 1.3, "repetition_window": 60},
    "no_repeat_ngram 8": {"no_repeat_ngram": 8},
    "no_repeat_ngram 12": {"no_repeat_ngram": 12},
}
TEMPERATURES = (0.0, 0.2)
LENGTH = 400


def distinct_share(text: str, n: int) -> float:
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return len(set(grams)) / len(grams)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a run directory (default: train the book's recipe for 1 epoch)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--work-dir", default="/tmp/charlm-repetition")
    parser.add_argument("--tag", default=f"{time.strftime('%Y-%m-%d')}-repetition")
    args = parser.parse_args(argv)
    text = charlm_jax.load_text().lower()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = Path(args.work_dir)
        if not (checkpoint / "metrics.jsonl").exists():
            charlm_jax.fit(
                charlm_jax.TrainConfig(epochs=1, sample_length=0), text, checkpoint, console=Console(quiet=True)
            )
    lm = charlm_jax.load(checkpoint)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, int(len(text) * 0.9) - lm.config.maxlen, args.prompts)
    prompts = [text[s : s + lm.config.maxlen] for s in starts]
    rows, samples = [], {}
    for temperature in TEMPERATURES:
        for name, options in OPTIONS.items():
            outputs = [
                charlm_jax.generate(lm, prompt, length=LENGTH, temperatures=[temperature], seed=i, **options)[0]
                for i, prompt in enumerate(prompts)
            ]
            bits = [
                charlm_jax.bits_per_char(lm, prompt + out, mode="stateful") for prompt, out in zip(prompts, outputs)
            ]
            rows.append(
                {
                    "temperature": temperature,
                    "option": name,
                    **options,
                    "distinct_20gram_share": float(np.mean([distinct_share(o, 20) for o in outputs])),
                    "distinct_8gram_share": float(np.mean([distinct_share(o, 8) for o in outputs])),
                    "model_bits_per_char": float(np.mean(bits)),
                }
            )
            samples[f"T={temperature:g}, {name}"] = prompts[0] + " | " + outputs[0]
            print(rows[-1], flush=True)
    lines = [
        f"# Repetition controls, {time.strftime('%Y-%m-%d')}, {device_name()}",
        "",
        f"`python benchmarks/repetition.py`; model: {checkpoint} (validation of the run: see its metrics.jsonl); "
        f"{args.prompts} prompts (training-text windows), {LENGTH} characters each; means over prompts.",
        "",
        "| T | option | distinct 20-grams | distinct 8-grams | model bits/char of the sample |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['temperature']:g} | {row['option']} | {row['distinct_20gram_share']:.3f} | "
            f"{row['distinct_8gram_share']:.3f} | {row['model_bits_per_char']:.3f} |"
        )
    lines += ["", "First prompt's samples (prompt | continuation, first 200 characters):", ""]
    lines += [f"- {key}: `{value[: lm.config.maxlen + 3 + 200]!r}`" for key, value in samples.items()]
    data = {
        **record("repetition.py"),
        "rows": rows,
        "samples": samples,
        "checkpoint": str(checkpoint),
    }
    write_results(args.tag, data, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
