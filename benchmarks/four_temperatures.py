"""Four temperatures against one: what the book's four samples cost over one, through the API, and where it goes.

Interleaved rounds, one process: ``charlm_jax.generate`` (400 characters, the book's model size, random weights)
with one temperature and with the book's four, the rows split over the CPU's devices as the API does by default and
on one device; then the parts of a step at 1 and 4 rows on one device: the LSTM step alone (a greedy scan, no
sampler) and the sampler alone (a scan over fixed logits). Target (issue 45): four rows at most 1.3x one.

    python benchmarks/four_temperatures.py [--rounds 15] [--tag NAME]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices

configure_cpu_devices(auto_cpu_devices(128))  # as the API's first call splits the CPU

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.runtime.distributed import make_mesh  # noqa: E402
from charlm_jax.use.sampling import sample_with_noise  # noqa: E402

from bench import LENGTH, TEMPERATURES, book_language_model  # noqa: E402
from common import interleaved, record, write_results  # noqa: E402

PART_STEPS = 2000


def api_calls(lm) -> dict:
    one_device = make_mesh(jax.devices()[:1])
    prompt = lm.default_prompt

    def call(temperatures, mesh=None):
        return lambda: charlm_jax.generate(lm, prompt, length=LENGTH, temperatures=temperatures, seed=1, mesh=mesh)

    return {
        "api 1 row": call([1.0]),
        "api 4 rows": call(TEMPERATURES),
        "api 1 row, one device": call([1.0], one_device),
        "api 4 rows, one device": call(TEMPERATURES, one_device),
    }


def lstm_step_alone(lm, rows: int):
    """The stateful decode step without the sampler: argmax feeds the next step."""
    model = lm.model

    @jax.jit
    def run(params, prompt):
        carries, logits = model.apply({"params": params}, prompt, model.zero_carries(rows), last_only=True)

        def step(state, _):
            carries, logits = state
            ids = jnp.argmax(logits, -1).astype(jnp.int32)
            return model.apply({"params": params}, ids[:, None], carries, last_only=True), ids

        return jax.lax.scan(step, (carries, logits), None, length=PART_STEPS)[1]

    prompt = jnp.zeros((rows, lm.config.maxlen), jnp.int32)
    return lambda: run(lm.params, prompt).block_until_ready()


def sampler_alone(vocab: int, rows: int):
    """The default sampler over logits that change a little each step (so nothing is hoisted)."""
    temperatures = jnp.asarray(TEMPERATURES[:rows] if rows <= len(TEMPERATURES) else [1.0] * rows)

    @jax.jit
    def run(logits, noise):
        def step(logits, uniform):
            ids = sample_with_noise(uniform, logits, temperatures)
            return logits + jax.nn.one_hot(ids, vocab) * 1e-3, ids

        return jax.lax.scan(step, logits, noise)[1]

    logits = jax.random.normal(jax.random.key(0), (rows, vocab))
    noise = jax.random.uniform(jax.random.key(1), (PART_STEPS, rows))
    return lambda: run(logits, noise).block_until_ready()


def markdown(data: dict) -> str:
    r = data["ratios"]
    lines = [
        f"# Four temperatures against one, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}` ({data['rounds']} interleaved rounds; medians)",
        "",
        "| row | µs per character (per step for the parts) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {row['us_per_step']:.2f} |" for name, row in data["rows"].items()]
    lines += [
        "",
        f"Four rows / one: **{r['api_default']:.2f}x** through the API (rows over the CPU devices), "
        f"{r['api_one_device']:.2f}x on one device; the LSTM step alone {r['lstm_step']:.2f}x, the sampler alone "
        f"{r['sampler']:.2f}x. Target: 1.3x.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tag", default=None, help="result file stem (default: <date>-cpu-four-temperatures)")
    args = parser.parse_args(argv)
    lm = book_language_model()
    fns = api_calls(lm)
    for rows in (1, 4):
        fns[f"LSTM step alone, {rows} rows"] = lstm_step_alone(lm, rows)
        fns[f"sampler alone, {rows} rows"] = sampler_alone(lm.vocab.size, rows)
    stats = interleaved(fns, rounds=args.rounds)
    rows = {
        name: {**s, "us_per_step": s["median_s"] / (LENGTH if name.startswith("api") else PART_STEPS) * 1e6}
        for name, s in stats.items()
    }

    def ratio(four: str, one: str) -> float:
        return rows[four]["median_s"] / rows[one]["median_s"]

    date = dt.date.today().isoformat()
    data = {
        **record("four_temperatures.py"),
        "devices": len(jax.devices()),
        "rounds": args.rounds,
        "rows": rows,
        "ratios": {
            "api_default": ratio("api 4 rows", "api 1 row"),
            "api_one_device": ratio("api 4 rows, one device", "api 1 row, one device"),
            "lstm_step": ratio("LSTM step alone, 4 rows", "LSTM step alone, 1 rows"),
            "sampler": ratio("sampler alone, 4 rows", "sampler alone, 1 rows"),
        },
    }
    text = markdown(data)
    print(text)
    write_results(args.tag or f"{date}-cpu-four-temperatures", data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
