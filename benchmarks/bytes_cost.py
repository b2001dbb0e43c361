"""Bytes against characters: what ``--units bytes`` costs per window and per generated unit, and what it scores.

One text (default: the built-in pydoc corpus, lower-cased as the book does), one model shape (the book's: 1 x 128,
batch 128, windows of 60), two vocabularies: the text's characters and the 256 byte values. Interleaved rounds in
one process, one device:

* **training**: a block of ``--steps`` steps of the loop's compiled block on real windows of the text's ids
  (characters) and of its UTF-8 bytes, as windows per second;
* **generation**: 400 units at the book's four temperatures, one jitted scan, as µs per unit;
* **quality** (``--budget`` seconds of training each, ``--seeds``): ``fit`` with ``--recipe auto`` for the budget
  (``Limits(max_train_seconds=)``: the same training time for both, whatever their validation costs), chars and
  bytes, each best checkpoint scored on the last 9 % of the text (held out by both): bits/char, bits/byte, and bits/byte
  times bytes per character (the same text's cost in bits per character, comparable with the first).

    python benchmarks/bytes_cost.py [--text pydoc] [--chars 600000] [--budget 60] [--seeds 0 1] [--tag NAME]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from charlm_jax.runtime.distributed import use_every_core

use_every_core()  # the quality runs train as the CLI does, over every core; the timed parts on one device

import jax  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax import Limits, TrainConfig, fit, recipe_config  # noqa: E402
from charlm_jax.data.windows import Vocab  # noqa: E402
from charlm_jax.model.charlstm import build_model  # noqa: E402
from charlm_jax.runtime.distributed import block_sharding, make_mesh  # noqa: E402
from charlm_jax.settings.generation import GenerationOptions  # noqa: E402
from charlm_jax.train.steps import create_train_state  # noqa: E402
from charlm_jax.use.decode import generate_ids  # noqa: E402

from common import interleaved, record, write_results  # noqa: E402

TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
LENGTH = 400


def training(config: TrainConfig, ids: np.ndarray, vocab_size: int, steps: int):
    """``steps`` training steps of the book's model on random windows of ``ids``, blocking."""
    from common import training_block

    mesh = make_mesh(jax.devices()[:1])
    fresh_state, run_block = training_block(config, vocab_size, mesh)
    state = fresh_state()
    starts = np.random.default_rng(0).integers(0, len(ids) - config.maxlen - 1, (steps, config.batch_size))
    block = ids[starts[..., None] + np.arange(config.maxlen + 1)].astype(np.int32)
    windows = jax.device_put(block, block_sharding(mesh))
    return lambda: jax.block_until_ready(run_block(state, windows)["loss"])


def generation(config: TrainConfig, vocab_size: int, prompt: np.ndarray):
    params = create_train_state(jax.random.key(0), config, vocab_size, total_steps=10_000).params
    model = build_model(config, vocab_size)
    options = GenerationOptions(length=LENGTH, temperatures=TEMPERATURES)
    rows = np.tile(prompt[: config.maxlen], (len(TEMPERATURES), 1))
    return lambda: jax.block_until_ready(
        generate_ids(params, jax.random.key(3), rows, options, model=model, maxlen=config.maxlen)
    )


def quality(text: str, units: str, budget: float, seed: int) -> dict:
    config = recipe_config(
        "auto", time_limit=budget, corpus_chars=len(text), units=units, seed=seed, sample_length=0, val_chars=20_000
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        fit(config, text, Path(out) / "run", limits=Limits(max_train_seconds=budget), console=Console(quiet=True))
        lm = charlm_jax.load(Path(out) / "run" / "best")
        # The last 9 % of the characters: held out by both runs (each holds out its last 10 % of units).
        bits = float(-charlm_jax.score(lm, text[-len(text) * 9 // 100 :], mode="window").mean())
    return {"units": units, "seed": seed, "bits_per_unit": bits, "wall_s": time.perf_counter() - started}


def markdown(data: dict) -> str:
    c = data["cost"]
    lines = [
        f"# Bytes against characters, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`; text: {data['text']} ({data['characters']:,} characters, {data['bytes']:,} UTF-8 bytes, "
        f"{data['bytes_per_char']:.3f} bytes per character); vocabulary {data['char_vocab']} characters or 256 bytes; "
        f"the book's model (1 x 128, batch 128, windows of 60), one device, {data['rounds']} interleaved rounds.",
        "",
        "| | chars | bytes | bytes / chars |",
        "|---|---|---|---|",
        f"| training, windows/s | {c['chars']['windows_per_s']:,.0f} | {c['bytes']['windows_per_s']:,.0f} | "
        f"{c['ratios']['windows_per_s']:.2f}x |",
        f"| generation, µs per unit (4 rows) | {c['chars']['us_per_unit']:.1f} | {c['bytes']['us_per_unit']:.1f} | "
        f"{c['ratios']['us_per_unit']:.2f}x |",
        f"| generation, µs per character of text | {c['chars']['us_per_unit']:.1f} | "
        f"{c['bytes']['us_per_text_char']:.1f} | {c['ratios']['us_per_text_char']:.2f}x |",
        "",
    ]
    if data["quality"]:
        q = data["quality_summary"]
        lines += [
            f"Quality, `--recipe auto --train-time-limit {data['budget']:g}` from scratch, best checkpoint on the last 9 % "
            f"of the text (window mode), mean of seeds {data['seeds']}:",
            "",
            "| units | bits per unit | bits per character of text |",
            "|---|---|---|",
            f"| chars | {q['chars']['bits_per_unit']:.3f} | {q['chars']['bits_per_char']:.3f} |",
            f"| bytes | {q['bytes']['bits_per_unit']:.3f} | {q['bytes']['bits_per_char']:.3f} |",
            "",
        ]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = data["cost"]
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(["chars", "bytes"], [c["chars"]["windows_per_s"], c["bytes"]["windows_per_s"]], color=["C0", "C1"])
    axes[0].set_title("training, windows/s")
    axes[1].bar(
        ["chars\nper unit", "bytes\nper unit", "bytes per\ntext char"],
        [c["chars"]["us_per_unit"], c["bytes"]["us_per_unit"], c["bytes"]["us_per_text_char"]],
        color=["C0", "C1", "C1"],
    )
    axes[1].set_title("generation, µs (4 rows)")
    figure.suptitle(f"bytes vs chars, {data['device']}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", default="pydoc", help="a built-in corpus name or a file")
    parser.add_argument("--chars", type=int, default=600_000, help="characters of the text used")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per quality run; 0: no quality runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tag", default=None, help="result file stem (default: <date>-cpu-bytes-cost)")
    args = parser.parse_args(argv)
    text = charlm_jax.load_text(args.text)[: args.chars].lower()
    config = TrainConfig()
    char_vocab, byte_vocab = Vocab.from_text(text), Vocab.of_bytes()
    char_ids, byte_ids = char_vocab.encode(text), byte_vocab.encode(text)
    times = interleaved(
        {
            "train chars": training(config, char_ids, char_vocab.size, args.steps),
            "train bytes": training(config, byte_ids, 256, args.steps),
            "generate chars": generation(config, char_vocab.size, char_ids),
            "generate bytes": generation(config, 256, byte_ids),
        },
        rounds=args.rounds,
    )
    bytes_per_char = len(byte_ids) / len(char_ids)
    cost = {
        units: {
            "windows_per_s": args.steps * config.batch_size / times[f"train {units}"]["median_s"],
            "us_per_unit": times[f"generate {units}"]["median_s"] / LENGTH * 1e6,
        }
        for units in ("chars", "bytes")
    }
    cost["bytes"]["us_per_text_char"] = cost["bytes"]["us_per_unit"] * bytes_per_char
    cost["ratios"] = {
        "windows_per_s": cost["bytes"]["windows_per_s"] / cost["chars"]["windows_per_s"],
        "us_per_unit": cost["bytes"]["us_per_unit"] / cost["chars"]["us_per_unit"],
        "us_per_text_char": cost["bytes"]["us_per_text_char"] / cost["chars"]["us_per_unit"],
    }
    print(cost, flush=True)
    runs = []
    if args.budget > 0:
        for seed in args.seeds:  # interleaved: chars then bytes per seed
            for units in ("chars", "bytes"):
                runs.append(quality(text, units, args.budget, seed))
                print(runs[-1], flush=True)
    summary = {}
    for units in ("chars", "bytes") if runs else ():
        bits = np.mean([r["bits_per_unit"] for r in runs if r["units"] == units])
        per_char = bits * (bytes_per_char if units == "bytes" else 1.0)
        summary[units] = {"bits_per_unit": float(bits), "bits_per_char": float(per_char)}
    date = dt.date.today().isoformat()
    data = {
        **record("bytes_cost.py", argv),
        "text": args.text,
        "characters": len(char_ids),
        "bytes": len(byte_ids),
        "bytes_per_char": bytes_per_char,
        "char_vocab": char_vocab.size,
        "rounds": args.rounds,
        "steps": args.steps,
        "times": times,
        "cost": cost,
        "budget": args.budget,
        "seeds": args.seeds,
        "quality": runs,
        "quality_summary": summary,
    }
    text_md = markdown(data)
    print(text_md)
    stem = args.tag or f"{date}-cpu-bytes-cost"
    path = write_results(stem, data, text_md)
    plot(data, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
