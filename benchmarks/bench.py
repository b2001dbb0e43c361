"""Side-by-side benchmarks: generation latency, training speed, memory; PASS/MISS per target.

In one run on one machine: charlm_jax (through its public API, as a user calls it, and through
``generate_ids``) against the book's loop (Keras 3 on its JAX backend, ``model.predict`` per
character on a one-hot window, the book's numpy ``sample``) and PyTorch (``nn.LSTM``, default
threads and one thread). Peers come from ``pip install -e ".[peers]"``; a missing one is
skipped with its reason. The CPU is split into JAX devices as ``charlm-jax train`` does.

Every figure is a median over repeats after warm-up (min and max kept), synchronised before
the clock stops; comparisons that decide a target run interleaved round by round, so a slow
spell of the machine hits both sides. Results: ``results/<date>-<device>[-quick].{json,md,png}``.

    python benchmarks/bench.py --quick      # a few minutes on 2 CPU cores
    python benchmarks/bench.py              # the full run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # the book's loop runs on Keras' JAX backend

from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices  # noqa: E402  (no JAX work yet)

configure_cpu_devices(auto_cpu_devices(128))  # what `charlm-jax train` does for the book's batch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.data.corpus import load_text  # noqa: E402
from charlm_jax.data.windows import Vocab  # noqa: E402
from charlm_jax.model.charlstm import build_model, init_params  # noqa: E402
from charlm_jax.runtime.distributed import block_sharding, make_mesh, put_windows, shard_rows  # noqa: E402
from charlm_jax.settings.config import DEFAULT_SAMPLER, SAMPLERS, TrainConfig  # noqa: E402
from charlm_jax.settings.generation import GenerationOptions  # noqa: E402
from charlm_jax.use.decode import generate_ids  # noqa: E402

from common import (  # noqa: E402
    first_call_seconds,
    interleaved,
    platform_tag,
    record,
    timed,
    training_block,
    write_results,
)
from peers import (  # noqa: E402
    MISSING,
    keras_book_loop,
    keras_training_step,
    torch_device,
    torch_generation_loop,
    torch_training_step,
)

HERE = Path(__file__).resolve().parent
MAXLEN, HIDDEN, BATCH = 60, 128, 128  # the book's configuration
VOCAB = 77  # the built-in corpus's characters
LENGTH = 400
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
STREAM_CHUNKS = (16, 32, 64, 128, 200, 400)


def book_language_model() -> charlm_jax.LanguageModel:
    """The book's model size on the built-in corpus's vocabulary (77), randomly initialised."""
    text = load_text(None).lower()
    vocab, config = Vocab.from_text(text), TrainConfig()
    params = init_params(jax.random.key(0), build_model(config, vocab.size), MAXLEN)
    return charlm_jax.LanguageModel(params=params, vocab=vocab, config=config, default_prompt=text[1000:1060])


def per_char(stats: dict, chars: int, streams: int = 1) -> dict:
    return {**stats, "per_char_s": stats["median_s"] / chars, "chars_per_s": streams * chars / stats["median_s"]}


# ---------------------------------------------------------------- generation


def bench_public_api(lm, quick: bool) -> dict:
    """charlm_jax.generate as a script calls it, against the book's loop in the same rounds."""
    prompt, mesh = lm.default_prompt, make_mesh()
    fns = {}
    for sampler in SAMPLERS:
        fns[f"stateful_1_{sampler}"] = lambda s=sampler: charlm_jax.generate(
            lm, prompt, length=LENGTH, temperatures=[1.0], seed=1, sampler=s
        )
        fns[f"stateful_4temps_{sampler}"] = lambda s=sampler: charlm_jax.generate(
            lm, prompt, length=LENGTH, temperatures=TEMPERATURES, seed=1, sampler=s, mesh=mesh
        )
        fns[f"stateful_4temps_one_device_{sampler}"] = lambda s=sampler: charlm_jax.generate(
            lm, prompt, length=LENGTH, temperatures=TEMPERATURES, seed=1, sampler=s
        )
    window_length = 100 if quick else LENGTH
    fns["window_1"] = lambda: charlm_jax.generate(
        lm, prompt, length=window_length, temperatures=[1.0], seed=1, mode="window"
    )
    fns["window_4temps"] = lambda: charlm_jax.generate(
        lm, prompt, length=window_length, temperatures=TEMPERATURES, seed=1, mode="window", mesh=mesh
    )
    book = keras_book_loop(VOCAB, HIDDEN, MAXLEN, BOOK_LOOP_CHARS[quick])
    if book is not None:
        fns["book_loop"] = book
    results = interleaved(fns, rounds=3 if quick else 7)
    out = {}
    for name, stats in results.items():
        chars = (
            BOOK_LOOP_CHARS[quick] if name == "book_loop" else window_length if name.startswith("window") else LENGTH
        )
        out[name] = per_char(stats, chars)
    if book is None:
        out["book_loop"] = {"skipped": "keras not installed; pip install -e '.[peers]'"}
    return out


BOOK_LOOP_CHARS = {True: 30, False: 200}


def bench_generate_ids(lm, quick: bool) -> dict:
    """The jitted scan alone: one stream, and throughput for many streams with rows over the devices.

    At each stream count the two samplers run interleaved round by round (their difference
    decides the default sampler, so a slow spell of the machine must hit both).
    """
    mesh = make_mesh()
    params = lm.params_on(mesh)
    out = {}
    for streams in (1, 4, 64, 1024, 8192):
        length = 100 if streams == 8192 and quick else LENGTH
        prompts = np.zeros((streams, MAXLEN), np.int32)
        temps = np.resize(np.asarray(TEMPERATURES if streams == 4 else [1.0], np.float32), streams)
        rows = shard_rows(mesh, prompts, temps) if streams > 1 else (jnp.asarray(prompts), jnp.asarray(temps))
        run_params = params if streams > 1 else lm.params
        calls, compile_s = {}, {}
        for sampler in SAMPLERS:
            options = GenerationOptions(length=length, temperatures=temps, sampler=sampler).with_rows(rows[1])

            def call(options=options, run_params=run_params, prompts=rows[0]):
                return generate_ids(
                    run_params, jax.random.key(1), prompts, options, model=lm.model, maxlen=MAXLEN
                ).block_until_ready()

            compile_s[sampler], calls[sampler] = first_call_seconds(call), call
        rounds = 2 if streams >= 1024 else (3 if quick else 9)
        for sampler, stats in interleaved(calls, rounds=rounds).items():
            out[f"{sampler}_{streams}"] = {
                **per_char(stats, length, streams),
                "streams": streams,
                "compile_s": compile_s[sampler],
            }
    return out


def bench_streaming(lm, quick: bool) -> dict:
    """charlm_jax.stream against one generate call: cost per character and time to the first piece."""
    prompt = lm.default_prompt
    fns = {"generate": lambda: charlm_jax.generate(lm, prompt, length=LENGTH, temperatures=[1.0], seed=1)}
    for chunk in STREAM_CHUNKS:
        fns[f"stream_{chunk}"] = lambda c=chunk: list(
            charlm_jax.stream(lm, prompt, length=LENGTH, temperature=1.0, seed=1, chunk=c)
        )
    results = interleaved(fns, rounds=5 if quick else 10)
    out = {name: per_char(stats, LENGTH) for name, stats in results.items()}
    for chunk in STREAM_CHUNKS:
        firsts = []
        for _ in range(5):
            start = time.perf_counter()
            next(iter(charlm_jax.stream(lm, prompt, length=LENGTH, temperature=1.0, seed=1, chunk=chunk)))
            firsts.append(time.perf_counter() - start)
        out[f"stream_{chunk}"]["first_piece_s"] = float(np.median(firsts))
        out[f"stream_{chunk}"]["ratio_to_generate"] = out[f"stream_{chunk}"]["median_s"] / out["generate"]["median_s"]
    return out


def bench_torch_generation(quick: bool) -> dict:
    loop = torch_generation_loop(VOCAB, HIDDEN, MAXLEN, LENGTH, device=torch_device(prefer_gpu=False))
    if loop is None:
        return {"skipped": f"torch {MISSING}"}
    import torch

    stats = timed(loop, repeats=3 if quick else 7)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), **per_char(stats, LENGTH)}


# ---------------------------------------------------------------- training


def bench_training(quick: bool) -> dict:
    """One optimizer step of the book's configuration, every library in the same rounds.

    charlm_jax runs its default: a jitted block of ``steps_per_call`` steps with the batch split
    over one CPU device per core (``mesh``), and, for reference, the same on one device.
    """
    config, vocab = TrainConfig(), VOCAB
    rng = np.random.default_rng(0)
    corpus_np = rng.integers(0, vocab, 600_000, dtype=np.int32)
    block = config.steps_per_call
    fns, steps_per_call, extra = {}, {}, {}
    for name, mesh in (("charlm_jax", make_mesh()), ("charlm_jax_one_device", make_mesh(jax.devices()[:1]))):
        fresh_state, run_block = training_block(config, vocab, mesh)
        state = fresh_state()
        starts = rng.integers(0, 600_000 - MAXLEN - 1, (block, BATCH), dtype=np.int32)

        def step(state=state, run_block=run_block, starts=starts, mesh=mesh):
            # As the loop runs a block: its windows gathered on the host and shipped, then the steps.
            windows = put_windows(corpus_np, starts, MAXLEN + 1, block_sharding(mesh))
            run_block(state, windows)["loss"].block_until_ready()

        fns[name], steps_per_call[name] = step, block
        extra[name] = {"devices": mesh.devices.size, "steps_per_call": block}
    torch_steps = torch_training_steps()
    if torch_steps is not None:
        for threads in (None, 1):
            name = "torch" if threads is None else "torch_1_thread"
            fns[name], steps_per_call[name] = torch_steps(threads), 1
    keras_step = keras_training_step(VOCAB, HIDDEN, BATCH, MAXLEN)
    if keras_step is not None:
        fns["keras"], steps_per_call["keras"] = keras_step, 1
    results = interleaved(fns, rounds=4 if quick else 12, per_round=1)
    out = {}
    for name, stats in results.items():
        k = steps_per_call[name]
        step_stats = {key: (value / k if key.endswith("_s") else value) for key, value in stats.items()}
        out[name] = {**extra.get(name, {}), **step_stats, "windows_per_s": BATCH / step_stats["median_s"]}
    for name in ("torch", "torch_1_thread", "keras"):
        out.setdefault(name, {"skipped": "not installed; pip install -e '.[peers]'"})
    import torch

    out["torch"]["threads"] = torch.get_num_threads()
    out["block_sizes"] = bench_block_sizes(config, vocab, corpus_np, quick)
    return out


def bench_block_sizes(config, vocab, corpus_np, quick: bool) -> dict:
    """Steps per second of one jitted call per step against blocks of steps (compile excluded)."""
    mesh, rng, out = make_mesh(), np.random.default_rng(1), {}
    fresh_state, run_block = training_block(config, vocab, mesh)
    fns = {}
    for block in (1, 4, 16, 64):
        state = fresh_state()
        starts = rng.integers(0, 600_000 - MAXLEN - 1, (block, BATCH), dtype=np.int32)

        def run(state=state, starts=starts, block=block):
            for _ in range(64 // block):
                windows = put_windows(corpus_np, starts, MAXLEN + 1, block_sharding(mesh))  # as the loop does
                np.asarray(run_block(state, windows)["loss"])  # the loop's one host sync per call

        fns[block] = run
    for block, stats in interleaved(fns, rounds=2 if quick else 4).items():
        out[str(block)] = {"steps_per_s": 64 / stats["median_s"], "median_s_per_64_steps": stats["median_s"]}
    return out


def torch_training_steps():
    """make(threads) -> the PyTorch peer's book step run with ``threads`` CPU threads (None: its default)."""
    step = torch_training_step(VOCAB, HIDDEN, BATCH, MAXLEN, device=torch_device(prefer_gpu=False))
    if step is None:
        return None
    import torch

    default_threads = torch.get_num_threads()

    def make(threads):
        def run():
            torch.set_num_threads(threads or default_threads)
            step()
            torch.set_num_threads(default_threads)

        return run

    return make


def bench_epoch_throughput(quick: bool) -> dict:
    """Whole training epochs: `charlm-jax train` as a user runs it against a plain PyTorch loop.

    Both train the book's configuration on the same 150K characters of the built-in corpus;
    charlm_jax's second epoch (compilation is in the first) against PyTorch's second epoch.
    """
    chars = 60_000 if quick else 150_000
    text = load_text(None)[:chars]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "text.txt"
        path.write_text(text)
        command = [
            sys.executable,
            "-m",
            "charlm_jax.cli.app",
            "train",
            "--text",
            str(path),
            "--epochs",
            "2",
            "--sample-length",
            "0",
            "--no-progress",
            "--out",
            str(Path(folder) / "run"),
        ]
        subprocess.run(command, check=True, capture_output=True)
        records = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
    out = {
        "chars": chars,
        "charlm_jax": {
            "windows_per_s": records[-1]["windows_per_second"],
            "epoch_seconds": records[-1]["epoch_seconds"],
        },
    }
    out["torch"] = torch_epoch(text)
    return out


def torch_epoch(text: str) -> dict:
    try:
        import torch
    except ImportError as error:
        return {"skipped": str(error)}
    torch.manual_seed(0)
    text = text.lower()
    chars = sorted(set(text))
    ids = torch.as_tensor([chars.index(c) for c in text])
    train_end = len(text) - round(0.1 * len(text))
    starts = torch.arange(0, train_end - MAXLEN, 3)
    lstm, dense = torch.nn.LSTM(len(chars), HIDDEN, batch_first=True), torch.nn.Linear(HIDDEN, len(chars))
    parameters = list(lstm.parameters()) + list(dense.parameters())
    optimizer = torch.optim.RMSprop(parameters, lr=0.01, alpha=0.9, eps=1e-7)
    eye = torch.eye(len(chars))
    seconds = []
    for _ in range(2):  # the first epoch warms the allocator and caches, as charlm_jax's compiles
        order = starts[torch.randperm(len(starts))]
        start = time.perf_counter()
        batches = len(order) // BATCH
        for b in range(batches):
            batch = order[b * BATCH : (b + 1) * BATCH]
            windows = ids[batch[:, None] + torch.arange(MAXLEN)]
            optimizer.zero_grad()
            out, _ = lstm(eye[windows])
            loss = torch.nn.functional.cross_entropy(dense(out[:, -1]), ids[batch + MAXLEN])
            loss.backward()
            optimizer.step()
        loss.item()
        seconds.append(time.perf_counter() - start)
    return {
        "windows_per_s": batches * BATCH / seconds[-1],
        "epoch_seconds": seconds[-1],
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- memory


def bench_memory() -> dict:
    out = {}
    for kind in ("charlm", "book", "score"):
        result = subprocess.run(
            [sys.executable, str(HERE / "memory_child.py"), kind],
            capture_output=True,
            text=True,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
            cwd=HERE,
        )
        if result.returncode != 0:
            out[kind] = {"error": result.stderr[-500:]}
        else:
            out[kind] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- report


def targets(results: dict) -> list[dict]:
    api, ids, stream = results["public_api"], results["generate_ids"], results["streaming"]
    train, epochs, memory = results["training"], results["epochs"], results["memory"]
    rows = []

    def target(name, ratio, limit, better, detail):
        if ratio is None:
            rows.append({"target": name, "status": "SKIP", "detail": detail})
            return
        ok = ratio >= limit if better == "higher" else ratio <= limit
        rows.append(
            {"target": name, "status": "PASS" if ok else "MISS", "ratio": ratio, "limit": limit, "detail": detail}
        )

    book, ours = api["book_loop"], api[f"stateful_1_{DEFAULT_SAMPLER}"]
    target(
        "stateful single stream through charlm_jax.generate >= 100x faster per character than the book's "
        "loop (moonshot: 5 us)",
        book["per_char_s"] / ours["per_char_s"] if "per_char_s" in book else None,
        100,
        "higher",
        book.get("skipped", f"{book.get('per_char_s', 0) * 1e6:.0f} us vs {ours['per_char_s'] * 1e6:.1f} us"),
    )
    four, one = api[f"stateful_4temps_{DEFAULT_SAMPLER}"], api[f"stateful_1_{DEFAULT_SAMPLER}"]
    target(
        "four temperatures in one generate call <= 1.5x one temperature",
        four["median_s"] / one["median_s"],
        1.5,
        "lower",
        f"{four['median_s'] * 1e3:.2f} ms vs {one['median_s'] * 1e3:.2f} ms for {LENGTH} characters "
        "(rows over the CPU devices, as the CLI runs them)",
    )
    faster = [
        key
        for key in ids
        if key.startswith("inverse_cdf_")
        if ids[key]["median_s"] < ids[key.replace("inverse_cdf", "gumbel")]["median_s"]
    ]
    target(
        "inverse_cdf faster than gumbel at every batch (then it is the default)",
        len(faster) / max(len([k for k in ids if k.startswith("inverse_cdf_")]), 1),
        1.0,
        "higher",
        f"faster at {[int(k.split('_')[-1]) for k in faster]} streams",
    )
    best_chunk = min((c for c in STREAM_CHUNKS if stream[f"stream_{c}"]["ratio_to_generate"] <= 1.2), default=None)
    chosen = stream[f"stream_{best_chunk or max(STREAM_CHUNKS)}"]
    target(
        "streaming costs <= 1.2x one generate call per character (smallest chunk that does)",
        chosen["ratio_to_generate"],
        1.2,
        "lower",
        f"chunk {best_chunk or max(STREAM_CHUNKS)}: first piece after {chosen['first_piece_s'] * 1e3:.1f} ms",
    )
    torch_step = train["torch"]
    target(
        "training step no slower than PyTorch nn.LSTM with default threads (ratio = ours / torch; moonshot <= 0.77)",
        train["charlm_jax"]["median_s"] / torch_step["median_s"] if "median_s" in torch_step else None,
        1.0,
        "lower",
        f"{train['charlm_jax']['median_s'] * 1e3:.1f} ms vs {torch_step.get('median_s', 0) * 1e3:.1f} ms",
    )
    torch_epoch_ = epochs["torch"]
    target(
        "charlm-jax train epoch throughput no lower than a PyTorch loop (ratio = ours / torch windows/s)",
        epochs["charlm_jax"]["windows_per_s"] / torch_epoch_["windows_per_s"]
        if "windows_per_s" in torch_epoch_
        else None,
        1.0,
        "higher",
        f"{epochs['charlm_jax']['windows_per_s']:,.0f} vs {torch_epoch_.get('windows_per_s', 0):,.0f} windows/s",
    )
    if all("peak_rss_increase_bytes" in memory.get(k, {}) for k in ("charlm", "book")):
        ratio = memory["charlm"]["peak_rss_increase_bytes"] / memory["book"]["peak_rss_increase_bytes"]
        target(
            "data-pipeline memory <= 5% of the book's one-hot arrays",
            ratio,
            0.05,
            "lower",
            f"{memory['charlm']['peak_rss_increase_bytes'] / 2**20:.1f} MiB vs "
            f"{memory['book']['peak_rss_increase_bytes'] / 2**20:.1f} MiB",
        )
    if "peak_rss_increase_bytes" in memory.get("score", {}):
        mib = memory["score"]["peak_rss_increase_bytes"] / 2**20
        target("scoring a 1M-character text needs <= 300 MiB more memory", mib / 300, 1.0, "lower", f"{mib:.0f} MiB")
    return rows


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def markdown(results: dict) -> str:
    api, ids, stream, train, epochs = (
        results[k] for k in ("public_api", "generate_ids", "streaming", "training", "epochs")
    )
    lines = [
        f"# Benchmark {results['date']} on {results['device']}",
        "",
        f"Command: `{results['command']}`; {results['jax_devices']} JAX CPU device(s); versions "
        f"{json.dumps(results['versions'])}",
        "",
        "## Generation through the public API (`charlm_jax.generate`, 400 characters, per character)",
        "",
        "| what | per character | vs book loop |",
        "|---|---|---|",
    ]
    book = api["book_loop"].get("per_char_s")
    for name, label in [
        ("book_loop", "book loop (Keras `model.predict` per character)"),
        (f"stateful_1_{DEFAULT_SAMPLER}", f"stateful, 1 stream, {DEFAULT_SAMPLER} (default)"),
        ("stateful_1_gumbel", "stateful, 1 stream, gumbel"),
        (f"stateful_4temps_{DEFAULT_SAMPLER}", "stateful, 4 temperatures, rows over the devices"),
        (f"stateful_4temps_one_device_{DEFAULT_SAMPLER}", "stateful, 4 temperatures, one device"),
        ("stateful_4temps_gumbel", "stateful, 4 temperatures, gumbel, rows over the devices"),
        ("window_1", "window mode, 1 stream"),
        ("window_4temps", "window mode, 4 temperatures"),
    ]:
        r = api.get(name, {})
        if "per_char_s" in r:
            ratio = f"{book / r['per_char_s']:.0f}x" if book and name != "book_loop" else ""
            lines.append(f"| {label} | {us(r['per_char_s'])} | {ratio} |")
    torch_gen = results["torch_generation"]
    if "per_char_s" in torch_gen:
        lines.append(
            f"| PyTorch nn.LSTM, Python loop carrying the state | {us(torch_gen['per_char_s'])} | "
            f"{book / torch_gen['per_char_s']:.1f}x |"
            if book
            else ""
        )
    lines += [
        "",
        "## `generate_ids` (the jitted scan), rows split over the devices",
        "",
        "| streams | inverse_cdf per step | gumbel per step | inverse_cdf chars/s | gumbel chars/s |",
        "|---|---|---|---|---|",
    ]
    for streams in (1, 4, 64, 1024, 8192):
        a, b = ids[f"inverse_cdf_{streams}"], ids[f"gumbel_{streams}"]
        lines.append(
            f"| {streams} | {us(a['per_char_s'])} | {us(b['per_char_s'])} | {a['chars_per_s']:,.0f} | "
            f"{b['chars_per_s']:,.0f} |"
        )
    lines += [
        "",
        "## Streaming (`charlm_jax.stream`, 400 characters)",
        "",
        "| chunk | per character | vs one generate call | first piece after |",
        "|---|---|---|---|",
    ]
    for chunk in STREAM_CHUNKS:
        r = stream[f"stream_{chunk}"]
        lines.append(
            f"| {chunk} | {us(r['per_char_s'])} | {r['ratio_to_generate']:.2f}x | {r['first_piece_s'] * 1e3:.1f} ms |"
        )
    lines += [
        "",
        "## Training step (book configuration: batch 128, 60 steps, LSTM 128, RMSprop)",
        "",
        "| library | step (median [min, max]) | windows/s |",
        "|---|---|---|",
    ]
    for name, label in [
        ("charlm_jax", "charlm_jax (default: blocks of steps, batch over the CPU devices)"),
        ("charlm_jax_one_device", "charlm_jax on one device"),
        ("torch", "PyTorch, default threads"),
        ("torch_1_thread", "PyTorch, 1 thread"),
        ("keras", "Keras 3 (JAX backend)"),
    ]:
        r = train.get(name, {})
        if "median_s" in r:
            lines.append(
                f"| {label} | {r['median_s'] * 1e3:.1f} ms [{r['min_s'] * 1e3:.1f}, {r['max_s'] * 1e3:.1f}] | "
                f"{r['windows_per_s']:,.0f} |"
            )
    lines += [
        "",
        "Steps per second by steps per jitted call (host sync after each call): "
        + ", ".join(f"{k}: {v['steps_per_s']:.1f}" for k, v in train["block_sizes"].items()),
        "",
        f"Whole epochs on {epochs['chars']:,} characters (second epoch): `charlm-jax train` "
        f"{epochs['charlm_jax']['windows_per_s']:,.0f} windows/s, PyTorch loop "
        f"{epochs['torch'].get('windows_per_s', float('nan')):,.0f} windows/s",
        "",
    ]
    memory = results["memory"]
    lines += ["## Memory", "", "| what | arrays | peak RSS increase |", "|---|---|---|"]
    for name, label in [
        ("charlm", "charlm_jax data pipeline, 600K characters"),
        ("book", "book one-hot x and y"),
        ("score", "charlm_jax.score of 1M characters"),
    ]:
        r = memory.get(name, {})
        if "array_bytes" in r:
            lines.append(
                f"| {label} | {r['array_bytes'] / 2**20:.1f} MiB | {r['peak_rss_increase_bytes'] / 2**20:.1f} MiB |"
            )
    lines += ["", "## Targets", "", "| target | status | ratio | detail |", "|---|---|---|---|"]
    for row in results["targets"]:
        ratio = f"{row['ratio']:.3g} (limit {row['limit']})" if "ratio" in row else "-"
        lines.append(f"| {row['target']} | {row['status']} | {ratio} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, api = results["generate_ids"], results["public_api"]
    streams = [1, 4, 64, 1024, 8192]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler, style in (("inverse_cdf", "o-"), ("gumbel", "s--")):
        left.loglog(streams, [ids[f"{sampler}_{n}"]["per_char_s"] * 1e6 for n in streams], style, label=sampler)
        right.loglog(streams, [ids[f"{sampler}_{n}"]["chars_per_s"] for n in streams], style, label=sampler)
    for name, key, style in (("book loop (Keras)", "book_loop", "--"),):
        if "per_char_s" in api.get(key, {}):
            left.axhline(api[key]["per_char_s"] * 1e6, ls=style, color="grey", label=name)
            right.axhline(api[key]["chars_per_s"], ls=style, color="grey", label=name)
    left.set(xlabel="streams in one call", ylabel="latency per generated step (us)", title="per-step latency")
    right.set(xlabel="streams in one call", ylabel="characters / s (all streams)", title="throughput")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"{results['device']}, {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter peer loops")
    parser.add_argument("--tag", help="file name stem (default: date and device)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {
        **record("bench.py"),
        "jax_devices": jax.device_count(),
    }
    print(f"device: {results['device']}, {jax.device_count()} JAX device(s)", flush=True)
    lm = book_language_model()
    results["public_api"] = bench_public_api(lm, args.quick)
    print("public API done", flush=True)
    results["generate_ids"] = bench_generate_ids(lm, args.quick)
    results["streaming"] = bench_streaming(lm, args.quick)
    results["torch_generation"] = bench_torch_generation(args.quick)
    print("generation done", flush=True)
    results["training"] = bench_training(args.quick)
    results["epochs"] = bench_epoch_throughput(args.quick)
    print("training done", flush=True)
    results["memory"] = bench_memory()
    results["targets"] = targets(results)
    results["wall_seconds"] = time.perf_counter() - started
    stem = args.tag or f"{results['date']}-{platform_tag()}{'-quick' if args.quick else ''}"
    table = markdown(results)
    path = write_results(stem, results, table)
    try:
        plot(results, path.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[dev]')")
    print(table)
    print(f"wrote {path}.json/.md/.png in {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
