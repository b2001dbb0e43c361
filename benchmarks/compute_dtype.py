"""The compute dtype, measured: a whole training step and whole-sample generation in float32 and bfloat16
(and the step with weight averaging, ``--average-decay``, beside them).

    python benchmarks/compute_dtype.py                          # book and streams shapes, ~5 min
    python benchmarks/compute_dtype.py --recipes streams --rounds 9

For each recipe's model and batch (``--recipes``) the compiled training block (``--steps`` steps, the loop's
own ``train.steps.train_block``) and a 400-character generation of four temperatures (``use.decode.generate_ids``)
are timed in both dtypes, interleaved round by round in this process, nothing else running; the report
gives the bfloat16/float32 ratio of each, with the CPU's name and the flags that decide it (AVX512-BF16
and AMX give bfloat16 products in hardware; without them XLA:CPU converts to float32 and back). The
issue's target: a bfloat16 training step at most 0.6x float32's on the CPU that has them.
Writes results/<date>-<platform>-compute-dtype.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax import TrainConfig, recipe_config
from charlm_jax.model.charlstm import build_model
from charlm_jax.runtime.distributed import block_sharding, make_mesh
from charlm_jax.settings.config import COMPUTE_DTYPES
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train.steps import create_train_state
from charlm_jax.use.decode import generate_ids

from common import cpu_flags, interleaved, platform_tag, record, training_block, write_results

VOCAB = 60  # a lower-cased English text's alphabet


AVERAGED = "float32+averaging"


def recipe_of(spec: str):
    """A recipe's config: ``NAME`` or ``NAME:field=value,...`` (e.g. ``streams:num_layers=1,hidden_size=256``);
    ``auto:SECONDS`` is ``--recipe auto`` for that budget, in float32."""
    name, _, rest = spec.partition(":")
    if name == "auto":
        return recipe_config("auto", time_limit=float(rest), compute_dtype="float32")
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        overrides[key] = (
            float(value) if "float" in str(fields[key]) else int(value) if "int" in str(fields[key]) else value
        )
    return recipe_config(name, **overrides)


def row_label(spec: str, config) -> str:
    """A row's name in the results: the recipe's, with the model's shape when the spec changed it (no dots,
    so the documents' figure paths can name it)."""
    name = spec.partition(":")[0]
    return name if ":" not in spec else f"{name}-{config.num_layers}x{config.hidden_size}"


def training_steps(config, steps: int):
    """A closure running ``steps`` training steps of ``config`` (the loop's compiled block, one device), blocking."""
    mesh = make_mesh(jax.devices()[:1])
    fresh_state, run_block = training_block(config, VOCAB, mesh)
    state = fresh_state()
    rng = np.random.default_rng(0)
    block = rng.integers(0, VOCAB, (steps, config.batch_size, config.maxlen + 1)).astype(np.int32)
    windows = jax.device_put(block, block_sharding(mesh))
    return lambda: jax.block_until_ready(run_block(state, windows)["loss"])


def generation(config, length: int):
    params = create_train_state(jax.random.key(0), config, VOCAB, total_steps=10_000).params
    model = build_model(config, VOCAB)
    options = GenerationOptions(length=length, temperatures=(0.2, 0.5, 1.0, 1.2))
    prompt = jnp.zeros((4, config.maxlen), jnp.int32)

    def run():
        jax.block_until_ready(
            generate_ids(params, jax.random.key(3), prompt, options, model=model, maxlen=config.maxlen)
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["book", "streams"])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    rows = {}
    for recipe in args.recipes:
        base = recipe_of(recipe)
        configs = {dtype: dataclasses.replace(base, compute_dtype=dtype) for dtype in COMPUTE_DTYPES}
        # Weight averaging's cost per step, timed in the same rounds: float32 with --average-decay 0.999.
        averaged = {AVERAGED: dataclasses.replace(base, compute_dtype="float32", average_decay=0.999)}
        train_times = interleaved(
            {d: training_steps(c, args.steps) for d, c in {**configs, **averaged}.items()}, args.rounds
        )
        gen_times = interleaved({d: generation(c, args.length) for d, c in configs.items()}, args.rounds)
        row = {
            "model": f"{base.num_layers} x {base.hidden_size}, batch {base.batch_size}, {base.batching}",
            "config": base.to_dict(),
            "step_ms": {d: t["median_s"] / args.steps * 1e3 for d, t in train_times.items()},
            "generation_us_per_char": {d: t["median_s"] / args.length * 1e6 for d, t in gen_times.items()},
            "train_times": train_times,
            "generation_times": gen_times,
        }
        row["step_ratio"] = row["step_ms"]["bfloat16"] / row["step_ms"]["float32"]
        row["generation_ratio"] = row["generation_us_per_char"]["bfloat16"] / row["generation_us_per_char"]["float32"]
        row["averaging_ratio"] = row["step_ms"][AVERAGED] / row["step_ms"]["float32"]
        rows[row_label(recipe, base)] = row
        print(
            row_label(recipe, base),
            f"step {row['step_ratio']:.2f}x, generation {row['generation_ratio']:.2f}x, "
            f"averaging {row['averaging_ratio']:.2f}x",
            flush=True,
        )
    date = time.strftime("%Y-%m-%d")
    flags = cpu_flags()
    # A CPU with bfloat16 hardware gets its own file: the two kinds of machine differ in kind, not degree.
    hardware = "-amx" if "amx_bf16" in flags else ""
    stem = args.tag or f"{date}-{platform_tag()}{hardware}-compute-dtype"
    command = f"python benchmarks/compute_dtype.py --recipes {' '.join(args.recipes)} --rounds {args.rounds} --steps {args.steps}"
    data = {
        **record("compute_dtype.py"),
        "cpu_flags": flags,
        "rows": rows,
        "devices": jax.device_count(),
    }
    lines = [
        f"# Compute dtype: bfloat16 against float32 ({date})",
        "",
        f"Machine: {data['device']}, flags {', '.join(flags) or 'none of avx2/avx512/amx'}; jax "
        f"{data['versions']['jax']}; command: `{command}`. Median of {args.rounds} interleaved rounds; a step is "
        f"the compiled training block's time over {args.steps} steps; generation is {args.length} characters at "
        "four temperatures (four rows) in one compiled scan.",
        "",
        "| recipe | model | float32 step ms | bfloat16 step ms | bf16/f32 | float32 us/char | bfloat16 us/char | "
        "bf16/f32 | float32 + averaging step ms | averaging/f32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {r['model']} | {r['step_ms']['float32']:.1f} | {r['step_ms']['bfloat16']:.1f} | "
            f"{r['step_ratio']:.2f} | {r['generation_us_per_char']['float32']:.0f} | "
            f"{r['generation_us_per_char']['bfloat16']:.0f} | {r['generation_ratio']:.2f} | "
            f"{r['step_ms'][AVERAGED]:.1f} | {r['averaging_ratio']:.2f} |"
            for name, r in rows.items()
        ],
        "",
        "Target (issue 34): the bfloat16 training step at most 0.6x float32's on a CPU with AMX / AVX512-BF16.",
    ]
    write_results(stem, data, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
