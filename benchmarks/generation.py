"""Generation at the machine's floor: per-character latency, its levers, the roofline, repetition costs.

In one run on one machine, every comparison interleaved round by round:

* ``single``: ``charlm_jax.generate`` (public API, stateful, 400 characters, the default sampler)
  for one stream and for the book's four temperatures in one call, against the book's loop
  (Keras 3 ``model.predict`` per character); the per-call host work (prompt encoding, argument
  placement, decoding to text) measured apart, as the API call minus ``generate_ids`` alone.
* ``levers``: one stream, 2,000 characters through ``generate_ids`` with the decode scan unrolled
  1, 2, 4 or 8 times, each sampler, the same step as a ``jax.jit`` of one step called from a
  Python loop, and two floors: the greedy LSTM step alone in a scan and the recurrent matmul alone.
  Another row per XLA:CPU flag set, each in its own process (flags are read at start-up).
* ``roofline``: achieved GFLOP/s of generation at 1-8192 streams and of the training step (the
  ``book`` and ``fast`` shapes) against the CPU's peak, computed from ``lscpu`` as cores x FMA
  units x fp32 lanes x 2 x clock (see ``cpu_peak``). FLOPs are the matmuls' (2 per multiply-add);
  the input projection is a row gather (no FLOPs) and element-wise work is not counted.
* ``repetition``: cost per character of plain generation against each repetition control at
  1K, 10K, 100K and 1M characters (one stream), and the ratio.

    python benchmarks/generation.py                 # about 15 minutes on 2 CPU cores
    python benchmarks/generation.py --quick         # a few minutes; lengths up to 100K
    python benchmarks/generation.py --only roofline
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

if "--child-single" not in sys.argv:  # the XLA-flag children time one device, as a user's script does
    from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices  # noqa: E402

    configure_cpu_devices(auto_cpu_devices(128))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.runtime.distributed import block_sharding, make_mesh, put_windows, shard_rows  # noqa: E402
from charlm_jax.settings.config import DEFAULT_SAMPLER, SAMPLERS, TrainConfig  # noqa: E402
from charlm_jax.settings.generation import GenerationOptions  # noqa: E402
from charlm_jax.settings.recipes import recipe_config  # noqa: E402
from charlm_jax.use.decode import DECODE_UNROLL, _decode_step, _row_noise, generate_ids, start  # noqa: E402

from bench import BOOK_LOOP_CHARS, HIDDEN, LENGTH, MAXLEN, TEMPERATURES, VOCAB, book_language_model  # noqa: E402
from common import interleaved, record, timed, training_block, write_results  # noqa: E402
from peers import keras_book_loop  # noqa: E402

LEVER_LENGTH = 2000
STREAMS = (1, 8, 64, 512, 1024, 4096, 8192)
XLA_FLAG_SETS = ("--xla_cpu_use_xnnpack=true", "--xla_cpu_enable_fast_math=true", "--xla_cpu_multi_thread_eigen=false")


# ---------------------------------------------------------------- the machine


def cpu_peak() -> dict:
    """fp32 peak from lscpu: cores x FMA units x lanes x 2 FLOPs x clock.

    Lanes: 16 with AVX-512, 8 with AVX2, else 4. FMA units per core: 2 (every AVX2/AVX-512 server
    core since Haswell). Clock: lscpu's ``CPU max MHz`` when the VM shows
    it, else half the BogoMIPS (the kernel's calibration is 2 x the TSC clock), i.e. the nominal
    clock without turbo.
    """
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cores = int(fields.get("Core(s) per socket", "1")) * int(fields.get("Socket(s)", "1"))
    flags = fields.get("Flags", "").split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    if "CPU max MHz" in fields:
        mhz, clock_from = float(fields["CPU max MHz"]), "CPU max MHz"
    else:
        mhz, clock_from = float(fields.get("BogoMIPS", "0")) / 2, "BogoMIPS / 2"
    return {
        "cores": cores,
        "lanes_fp32": lanes,
        "fma_units": 2,
        "mhz": mhz,
        "clock_from": clock_from,
        "model": fields.get("Model name", "?"),
    }


def peak_gflops(peak: dict) -> float:
    return peak["cores"] * peak["fma_units"] * peak["lanes_fp32"] * 2 * peak["mhz"] / 1e3


def decode_flops_per_char(config: TrainConfig, vocab: int) -> float:
    hidden, layers = config.hidden_size, config.num_layers
    return layers * 2 * hidden * 4 * hidden + (layers - 1) * 2 * hidden * 4 * hidden + 2 * hidden * vocab


def train_flops_per_step(config: TrainConfig, vocab: int) -> float:
    """Forward matmuls x 3 (forward, and the backward's gradients for inputs and for weights)."""
    hidden, layers, time_steps = config.hidden_size, config.num_layers, config.maxlen
    recurrent = layers * time_steps * 2 * hidden * 4 * hidden
    inputs = (layers - 1) * time_steps * 2 * hidden * 4 * hidden
    outputs = (time_steps if config.objective == "dense" else 1) * 2 * hidden * vocab
    return 3 * (recurrent + inputs + outputs) * config.batch_size


# ---------------------------------------------------------------- single stream


def bench_single(lm, quick: bool) -> dict:
    prompt, mesh = lm.default_prompt, make_mesh()
    prompt_ids = jnp.asarray(lm.encode_prompt(prompt))[None]
    one = GenerationOptions(length=LENGTH, temperatures=[1.0])
    fns = {
        "api_1": lambda: charlm_jax.generate(lm, prompt, length=LENGTH, temperatures=[1.0], seed=1),
        "api_4temps": lambda: charlm_jax.generate(lm, prompt, length=LENGTH, temperatures=TEMPERATURES, seed=1),
        "api_4temps_mesh": lambda: charlm_jax.generate(
            lm, prompt, length=LENGTH, temperatures=TEMPERATURES, seed=1, mesh=mesh
        ),
        "scan_1": lambda: generate_ids(
            lm.params, 1, prompt_ids, one, model=lm.model, maxlen=MAXLEN
        ).block_until_ready(),
    }
    book = keras_book_loop(VOCAB, HIDDEN, MAXLEN, BOOK_LOOP_CHARS[quick])
    if book is not None:
        fns["book_loop"] = book
    rounds = 5 if quick else 15
    results = interleaved(fns, rounds=rounds, per_round=1 if quick else 3)
    out = {}
    for name, stats in results.items():
        chars = BOOK_LOOP_CHARS[quick] if name == "book_loop" else LENGTH
        out[name] = {**stats, "us_per_char": stats["median_s"] / chars * 1e6}
    out["host_us_per_call"] = (results["api_1"]["median_s"] - results["scan_1"]["median_s"]) * 1e6
    if book is None:
        out["book_loop"] = {"skipped": "keras not installed; pip install -e '.[peers]'"}
    return out


# ---------------------------------------------------------------- levers


def bench_levers(lm, quick: bool) -> dict:
    model, params = lm.model, lm.params
    prompt_ids = jnp.asarray(lm.encode_prompt(lm.default_prompt))[None]
    length = 500 if quick else LEVER_LENGTH
    fns = {}
    for sampler in SAMPLERS:
        options = GenerationOptions(length=length, temperatures=[1.0], sampler=sampler)
        for unroll in (1, 2, 4, 8):
            fns[f"scan_{sampler}_unroll{unroll}"] = lambda o=options, u=unroll: generate_ids(
                params, 1, prompt_ids, o, model=model, maxlen=MAXLEN, unroll=u
            ).block_until_ready()
    fns["python_loop_of_jit_step"] = python_loop_of_steps(lm, prompt_ids, length)
    fns["floor_greedy_lstm_step"] = greedy_floor(lm, length)
    fns["floor_recurrent_matmul"] = matmul_floor(lm, length)
    results = interleaved(fns, rounds=3 if quick else 7)
    out = {name: {**stats, "us_per_char": stats["median_s"] / length * 1e6} for name, stats in results.items()}
    if not quick:
        out["xla_flags"] = xla_flag_rows()
    return out


def python_loop_of_steps(lm, prompt_ids, length: int):
    """The decode step jitted alone, called once per character from Python (what the scan saves)."""
    options = GenerationOptions(length=length, temperatures=[1.0])
    state = start(lm.params, jax.random.key(1), prompt_ids, options, model=lm.model, steps=length, maxlen=MAXLEN)
    vocab = lm.model.vocab_size

    @jax.jit
    def one_step(params, state):
        noise = _row_noise(state.row_keys, state.step, vocab, options.sampler)
        return _decode_step(params, state, noise, model=lm.model, options=options)

    def loop():
        current, ids = state, []
        for _ in range(length):
            current, next_ids = one_step(lm.params, current)
            ids.append(next_ids)
        return jnp.stack(ids).block_until_ready()

    return loop


def greedy_floor(lm, length: int):
    model = lm.model

    @jax.jit
    def run(params, carries, logits):
        def step(state, _):
            carries, logits = state
            ids = jnp.argmax(logits, -1).astype(jnp.int32)
            return model.apply({"params": params}, ids[:, None], carries, last_only=True), ids

        return jax.lax.scan(step, (carries, logits), None, length=length, unroll=DECODE_UNROLL)[1]

    carries, logits = model.zero_carries(1), jnp.zeros((1, model.vocab_size))
    return lambda: run(lm.params, carries, logits).block_until_ready()


def matmul_floor(lm, length: int):
    kernel = lm.params["lstm_0"]["recurrent_kernel"]  # (hidden, 4 * hidden)
    hidden = kernel.shape[0]

    @jax.jit
    def run(kernel, h):
        return jax.lax.scan(
            lambda h, _: (jnp.tanh(h @ kernel)[:, :hidden], None), h, None, length=length, unroll=DECODE_UNROLL
        )[0]

    h = jnp.ones((1, hidden))
    return lambda: run(kernel, h).block_until_ready()


def xla_flag_rows() -> dict:
    """The single-stream scan in a fresh process per XLA_FLAGS value, baseline and flag alternated."""
    rows = {}
    for flags in XLA_FLAG_SETS:
        times = {"": [], flags: []}
        for _ in range(2):
            for value in ("", flags):
                env = {**os.environ, "XLA_FLAGS": value}
                done = subprocess.run(
                    [sys.executable, __file__, "--child-single"], env=env, capture_output=True, text=True
                )
                match = re.search(r"us_per_char=([0-9.]+)", done.stdout)
                times[value].append(float(match.group(1)) if match else float("nan"))
        base, flagged = float(np.median(times[""])), float(np.median(times[flags]))
        rows[flags] = {"us_per_char": flagged, "baseline_us_per_char": base, "ratio": flagged / base}
    return rows


def child_single() -> None:
    lm = book_language_model()
    prompt_ids = jnp.asarray(lm.encode_prompt(lm.default_prompt))[None]
    options = GenerationOptions(length=LEVER_LENGTH, temperatures=[1.0])
    stats = timed(
        lambda: generate_ids(lm.params, 1, prompt_ids, options, model=lm.model, maxlen=MAXLEN).block_until_ready(),
        repeats=15,
        warmup=2,
    )
    print(f"us_per_char={stats['median_s'] / LEVER_LENGTH * 1e6:.3f}")


# ---------------------------------------------------------------- roofline


def bench_roofline(lm, quick: bool) -> dict:
    peak = cpu_peak()
    peak_value = peak_gflops(peak)
    mesh = make_mesh()
    params = lm.params_on(mesh)
    flops_char = decode_flops_per_char(lm.config, lm.model.vocab_size)
    out = {"peak": {**peak, "gflops": peak_value}, "generation": {}, "training": {}}
    for streams in STREAMS:
        length = 50 if streams >= 4096 and quick else 200 if streams >= 1024 else LENGTH
        prompts = np.zeros((streams, MAXLEN), np.int32)
        temps = np.ones(streams, np.float32)
        if streams > 1:
            prompts, temps = shard_rows(mesh, prompts, temps)
        run_params = params if streams > 1 else lm.params
        options = GenerationOptions(length=length, temperatures=np.ones(streams, np.float32)).with_rows(temps)

        def call(o=options, p=run_params, x=prompts):
            return generate_ids(p, 1, x, o, model=lm.model, maxlen=MAXLEN).block_until_ready()

        # The prompt is read once per call: its 60 steps count as 60 more characters' work.
        stats = timed(call, repeats=2 if streams >= 1024 else 5, warmup=1)
        gflops = streams * (length + MAXLEN) * flops_char / stats["median_s"] / 1e9
        out["generation"][str(streams)] = {
            **stats,
            "length": length,
            "chars_per_s": streams * length / stats["median_s"],
            "gflops": gflops,
            "fraction_of_peak": gflops / peak_value,
        }
        print(f"generation {streams:5d} streams: {gflops:7.1f} GFLOP/s ({gflops / peak_value:.0%} of peak)", flush=True)
    for recipe in ("book", "fast"):
        config = recipe_config(recipe)
        vocab = lm.model.vocab_size
        fresh_state, run_block = training_block(config, vocab, mesh)
        state = fresh_state()
        rng = np.random.default_rng(0)
        corpus = rng.integers(0, vocab, 200_000, dtype=np.int32)
        block = config.steps_per_call
        starts = rng.integers(0, 200_000 - config.maxlen - 1, (block, config.batch_size), dtype=np.int32)
        windows = put_windows(corpus, starts, config.maxlen + 1, block_sharding(mesh))  # compute only is timed

        def run(state=state, run_block=run_block, windows=windows):
            run_block(state, windows)["loss"].block_until_ready()

        stats = timed(run, repeats=3 if quick else 8, warmup=1)
        step_s = stats["median_s"] / block
        gflops = train_flops_per_step(config, vocab) / step_s / 1e9
        out["training"][recipe] = {
            "step_s": step_s,
            "gflops": gflops,
            "fraction_of_peak": gflops / peak_value,
            "flops_per_step": train_flops_per_step(config, vocab),
        }
        print(f"training step, {recipe}: {gflops:7.1f} GFLOP/s ({gflops / peak_value:.0%} of peak)", flush=True)
    return out


# ---------------------------------------------------------------- repetition controls

CONTROLS = {
    "plain": {},
    "repetition_penalty": {"repetition_penalty": 1.3},
    "no_repeat_ngram": {"no_repeat_ngram": 8},
    "both": {"repetition_penalty": 1.3, "no_repeat_ngram": 8},
}


def bench_repetition(lm, quick: bool) -> dict:
    prompt_ids = jnp.asarray(lm.encode_prompt(lm.default_prompt))[None]
    out = {}
    for length in (1_000, 10_000, 100_000) + (() if quick else (1_000_000,)):
        fns = {}
        for name, settings in CONTROLS.items():
            options = GenerationOptions(length=length, temperatures=[1.0], **settings)
            fns[name] = lambda o=options: generate_ids(
                lm.params, 1, prompt_ids, o, model=lm.model, maxlen=MAXLEN
            ).block_until_ready()
        results = interleaved(fns, rounds=2 if length >= 100_000 else 5)
        plain = results["plain"]["median_s"]
        out[str(length)] = {
            name: {
                **stats,
                "us_per_char": stats["median_s"] / length * 1e6,
                "ratio_to_plain": stats["median_s"] / plain,
            }
            for name, stats in results.items()
        }
        print(
            f"{length:>9} chars: "
            + ", ".join(f"{name} {v['ratio_to_plain']:.2f}x" for name, v in out[str(length)].items()),
            flush=True,
        )
    return out


# ---------------------------------------------------------------- report


def markdown(results: dict, command: str) -> str:
    lines = [
        f"# Generation at the floor, {results['date']}, {results['device']}",
        "",
        f"`{command}`; jax {results['versions']['jax']}. Times are medians of interleaved rounds.",
        "",
    ]
    single = results.get("single")
    if single:
        book = single.get("book_loop", {}).get("us_per_char")
        lines += [
            "## Single stream (public API, stateful, 400 characters)",
            "",
            "| call | µs/char | vs the book's loop |",
            "|---|---:|---:|",
        ]
        for name in ("api_1", "api_4temps", "api_4temps_mesh", "scan_1", "book_loop"):
            if "us_per_char" in single.get(name, {}):
                v = single[name]["us_per_char"]
                lines.append(f"| {name} | {v:.2f} | {book / v:.0f}x |" if book else f"| {name} | {v:.2f} | - |")
        ratio = single["api_4temps"]["median_s"] / single["api_1"]["median_s"]
        ratio_mesh = single["api_4temps_mesh"]["median_s"] / single["api_1"]["median_s"]
        lines += [
            "",
            f"Four temperatures / one: **{ratio:.2f}x** on one device, **{ratio_mesh:.2f}x** with the rows "
            f"over the CPU devices (`mesh=`); host work per call (API minus scan): "
            f"{single['host_us_per_call']:.0f} µs.",
            "",
        ]
    levers = results.get("levers")
    if levers:
        lines += ["## Levers (one stream, `generate_ids`)", "", "| variant | µs/char |", "|---|---:|"]
        for name, v in levers.items():
            if name != "xla_flags":
                lines.append(f"| {name} | {v['us_per_char']:.2f} |")
        for flags, v in levers.get("xla_flags", {}).items():
            lines.append(
                f"| XLA_FLAGS={flags} (own process) | {v['us_per_char']:.2f} "
                f"(baseline {v['baseline_us_per_char']:.2f}, {v['ratio']:.2f}x) |"
            )
        lines.append("")
    roof = results.get("roofline")
    if roof:
        p = roof["peak"]
        lines += [
            "## Roofline",
            "",
            f"Peak: {p['cores']} cores x {p['fma_units']} FMA units x {p['lanes_fp32']} fp32 "
            f"lanes x 2 x {p['mhz']:.0f} MHz ({p['clock_from']}) = **{p['gflops']:.0f} GFLOP/s** ({p['model']}).",
            "",
            "| work | chars/s | GFLOP/s | of peak |",
            "|---|---:|---:|---:|",
        ]
        for streams, v in roof["generation"].items():
            lines.append(
                f"| generation, {streams} streams | {v['chars_per_s']:,.0f} | {v['gflops']:.1f} | "
                f"{v['fraction_of_peak']:.0%} |"
            )
        for recipe, v in roof["training"].items():
            lines.append(
                f"| training step, {recipe} ({v['step_s'] * 1e3:.1f} ms) | - | {v['gflops']:.1f} | "
                f"{v['fraction_of_peak']:.0%} |"
            )
        lines.append("")
    rep = results.get("repetition")
    if rep:
        lines += [
            "## Repetition controls (one stream): µs/char and ratio to plain",
            "",
            "| characters | " + " | ".join(CONTROLS) + " |",
            "|---:|" + "---:|" * len(CONTROLS),
        ]
        for length, row in rep.items():
            lines.append(
                f"| {int(length):,} | "
                + " | ".join(
                    f"{row[name]['us_per_char']:.2f} ({row[name]['ratio_to_plain']:.2f}x)" for name in CONTROLS
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("single", "levers", "roofline", "repetition"), action="append")
    parser.add_argument("--tag", help="file name stem (default: date-cpu-generation[-quick])")
    parser.add_argument("--child-single", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_single:
        child_single()
        return 0
    lm = book_language_model()
    sections = args.only or ["single", "levers", "roofline", "repetition"]
    results = {
        **record("generation.py"),
        "sampler": DEFAULT_SAMPLER,
        "decode_unroll": DECODE_UNROLL,
    }
    for name in sections:
        print(f"== {name}", flush=True)
        results[name] = globals()[f"bench_{name}"](lm, args.quick)
    command = (
        "python benchmarks/generation.py"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {s}" for s in args.only or [])
    )
    stem = args.tag or f"{results['date']}-cpu-generation" + ("-quick" if args.quick else "")
    text = markdown(results, command)
    write_results(stem, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
