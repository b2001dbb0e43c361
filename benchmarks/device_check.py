"""One prepared run for whatever device JAX finds (a lent GPU's few minutes, or this CPU): what to decide there.

Every row says what it compares; a row that does not apply to the device is kept with the reason it was skipped.

* ``tests``: the default tests that exercise numerics and the sampler's statistics (the LSTM's hand-written
  backward against autodiff in float64, the samplers' chi-square tests, bfloat16, the decode scan) on the device.
* ``train``: one optimizer step of the book's shape (batch 128, 60 steps, LSTM 128) and of the ``streams``
  recipe's 2 x 192, this project's scan in float32 and bfloat16 at unroll 1/4/15/60, against PyTorch's
  ``nn.LSTM`` (cuDNN on a GPU) on the same device and ``jax.experimental.rnn.lstm`` (cuDNN, GPU only).
* ``flags``: XLA's GPU command buffers (CUDA graphs) for loops on and off, each in its own process (XLA reads
  its flags at start-up): the book's step and one row of generation.
* ``floor``: an empty ``lax.scan``'s cost per iteration, and the recurrent matmul alone per step.
* ``generation``: microseconds per character at 1, 4 and 128 rows (400 characters) against a PyTorch loop.
* ``memory``: the device's peak bytes in use (a CPU's: peak resident memory).

    python benchmarks/device_check.py                       # the whole check, within --budget-s (default 420)
    python benchmarks/device_check.py --tiny --skip-tests --out /tmp/x   # tiny sizes (the smoke test's)

docs/benchmarks.md ("On a GPU") says what each row decides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # runs from a checkout without an install (a lent machine has JAX, not us)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peak memory is read, not the pool's size
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's idle CPU threads must not spin through the next row

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from charlm_jax.model.charlstm import build_model, init_params  # noqa: E402
from charlm_jax.runtime.distributed import block_sharding, make_mesh, put_windows  # noqa: E402
from charlm_jax.settings.config import TrainConfig  # noqa: E402
from charlm_jax.settings.generation import GenerationOptions  # noqa: E402
from charlm_jax.settings.recipes import recipe_config  # noqa: E402
from charlm_jax.use.decode import generate_ids  # noqa: E402

from common import interleaved, peak_rss_bytes, platform_tag, record, training_block  # noqa: E402
from peers import torch_generation_loop, torch_training_step  # noqa: E402

VOCAB = 77  # the built-in corpus's characters
UNROLLS = (1, 4, 15, 60)
ROWS = (1, 4, 128)
LENGTH = 400
CHECK_TESTS = ["tests/test_lstm.py", "tests/test_sampling.py", "tests/test_generation_stats.py"]
CHECK_TESTS += ["tests/test_precision.py", "tests/test_decode.py"]
COMMAND_BUFFERS = {
    "default": None,
    "off": "--xla_gpu_enable_command_buffer=",
    "loops_on": "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL",
}


class Budget:
    """The run's wall-clock budget: a row that would start after it is recorded as skipped."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def shapes(tiny: bool) -> dict[str, TrainConfig]:
    """The two training shapes, or the smoke test's tiny versions of them (same structure, small sizes)."""
    book, streams = TrainConfig(), recipe_config("streams", dropout=0.0)
    if tiny:
        small = dict(maxlen=12, batch_size=8, steps_per_call=2)
        book, streams = replace(book, hidden_size=16, **small), replace(streams, hidden_size=16, **small)
    return {"book": book, "2x192": streams}


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def rounds_for(tiny: bool) -> int:
    return 2 if tiny else 7


# ---------------------------------------------------------------- rows of this project


def charlm_step(config: TrainConfig):
    """() -> None running one jitted block of ``steps_per_call`` optimizer steps on device-resident windows."""
    mesh = make_mesh(jax.devices()[:1])
    fresh_state, run_block = training_block(config, VOCAB, mesh)
    state = fresh_state()
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, VOCAB, 200_000, dtype=np.int32)
    starts = rng.integers(0, len(corpus) - config.maxlen - 1, (config.steps_per_call, config.batch_size))
    windows = put_windows(corpus, starts.astype(np.int32), config.maxlen + 1, block_sharding(mesh))
    return lambda: run_block(state, windows)["loss"].block_until_ready()


def train_rows(tiny: bool, budget: Budget) -> dict:
    rows, fns, steps = {}, {}, {}
    for shape, config in shapes(tiny).items():
        for unroll in UNROLLS:
            fns[f"{shape} charlm_jax f32 unroll {unroll}"] = charlm_step(replace(config, unroll=unroll))
        fns[f"{shape} charlm_jax bf16 unroll 1"] = charlm_step(replace(config, compute_dtype="bfloat16"))
        for dtype in ("float32", "bfloat16"):
            fns[f"{shape} torch {dtype}"] = torch_step(config, dtype)
        fns[f"{shape} jax.experimental.rnn f32"] = cudnn_step(config)
        for name in fns:
            steps.setdefault(name, config.steps_per_call if "charlm_jax" in name or "experimental" in name else 1)
    if budget.left() < 60:
        return {"skipped": f"budget: {budget.left():.0f} s left"}
    runnable = {name: fn for name, fn in fns.items() if callable(fn)}
    for name, stats in interleaved(runnable, rounds=rounds_for(tiny)).items():
        per_step = stats["median_s"] / steps[name]
        rows[name] = {"ms_per_step": per_step * 1e3, "min_ms_per_step": stats["min_s"] / steps[name] * 1e3}
    rows.update({name: {"skipped": fn} for name, fn in fns.items() if isinstance(fn, str)})
    for shape in shapes(tiny):
        base = rows.get(f"{shape} charlm_jax f32 unroll 1", {}).get("ms_per_step")
        for name, row in rows.items():
            if name.startswith(shape) and base and "ms_per_step" in row:
                row["vs_charlm_f32_unroll1"] = row["ms_per_step"] / base
    return rows


# ---------------------------------------------------------------- peers


def torch_step(config: TrainConfig, dtype: str):
    """PyTorch's nn.LSTM (cuDNN on a GPU) on the same shape and objective (``peers.torch_training_step``)."""
    step = torch_training_step(
        VOCAB,
        config.hidden_size,
        config.batch_size,
        config.maxlen,
        layers=config.num_layers,
        dense=config.objective == "dense",
        dtype=dtype,
    )
    return step or "torch not installed"


def cudnn_step(config: TrainConfig):
    """``jax.experimental.rnn.lstm`` (cuDNN, float32 only) in a jitted block of the same steps per call."""
    if not on_gpu():
        return "jax.experimental.rnn.lstm runs on a GPU only"
    from jax.experimental import rnn

    hidden, layers, dense = config.hidden_size, config.num_layers, config.objective == "dense"
    key_lstm, key_head = jax.random.split(jax.random.key(0))
    params = {
        "lstm": rnn.init_lstm_weight(key_lstm, VOCAB, hidden, layers, False),
        "head": jax.random.normal(key_head, (hidden, VOCAB)) * hidden**-0.5,
    }
    optimizer = optax.rmsprop(0.01, decay=0.9, eps=1e-7)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (config.batch_size, config.maxlen + 1)))

    def loss_fn(params):
        batch = ids.shape[0]
        zeros = jnp.zeros((layers, batch, hidden))
        lengths = jnp.full((batch,), config.maxlen, jnp.int32)
        inputs = jax.nn.one_hot(ids[:, :-1], VOCAB)
        out, _, _ = rnn.lstm(inputs, zeros, zeros, params["lstm"], lengths, VOCAB, hidden, layers, 0.0, False)
        logits = (out if dense else out[:, -1]) @ params["head"]
        targets = ids[:, 1:] if dense else ids[:, -1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def block(params, opt_state):
        def one(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(one, (params, opt_state), None, length=config.steps_per_call)

    state = {"carry": (params, optimizer.init(params))}

    def run():
        state["carry"], losses = block(*state["carry"])
        losses.block_until_ready()

    return run


# ---------------------------------------------------------------- floors and generation


def floor_rows(tiny: bool) -> dict:
    """The per-iteration cost of a scan that does nothing, and of one doing only the recurrent matmul."""
    length, hidden = (200 if tiny else 10_000), (16 if tiny else 128)
    kernel = jnp.ones((hidden, 4 * hidden)) * 0.01
    empty = jax.jit(lambda c: jax.lax.scan(lambda c, _: (c + 1.0, None), c, None, length=length)[0])
    matmul = jax.jit(
        lambda h: jax.lax.scan(lambda h, _: (jnp.tanh(h @ kernel)[:, :hidden], None), h, None, length=length)[0]
    )
    fns = {
        "empty scan": lambda: empty(jnp.float32(0)).block_until_ready(),
        "recurrent matmul (1 row)": lambda: matmul(jnp.ones((1, hidden))).block_until_ready(),
        "recurrent matmul (128 rows)": lambda: matmul(jnp.ones((128, hidden))).block_until_ready(),
    }
    return {
        name: {"us_per_iteration": s["median_s"] / length * 1e6}
        for name, s in interleaved(fns, rounds_for(tiny)).items()
    }


def book_model(tiny: bool):
    config = shapes(tiny)["book"]
    model = build_model(config, VOCAB)
    return config, model, init_params(jax.random.key(0), model, config.maxlen)


def generation_rows(tiny: bool) -> dict:
    config, model, params = book_model(tiny)
    length = 20 if tiny else LENGTH
    fns, torch_fns = {}, {}
    for rows in ROWS:
        options = GenerationOptions(length=length, temperatures=np.linspace(0.2, 1.2, rows))
        prompts = np.zeros((rows, config.maxlen), np.int32)
        fns[f"charlm_jax {rows} rows"] = lambda o=options, p=prompts: generate_ids(
            params, 1, p, o, model=model, maxlen=config.maxlen
        ).block_until_ready()
        torch_fns[f"torch loop {rows} rows"] = torch_generation(config, rows, length)
    fns.update({name: fn for name, fn in torch_fns.items() if callable(fn)})
    out = {
        name: {"us_per_char": s["median_s"] / length * 1e6} for name, s in interleaved(fns, rounds_for(tiny)).items()
    }
    out.update({name: {"skipped": fn} for name, fn in torch_fns.items() if isinstance(fn, str)})
    one = out["charlm_jax 1 rows"]["us_per_char"]
    out["four_rows_over_one"] = out["charlm_jax 4 rows"]["us_per_char"] / one
    return out


def torch_generation(config: TrainConfig, rows: int, length: int):
    """The book's loop in PyTorch on the same device (``peers.torch_generation_loop``)."""
    return torch_generation_loop(VOCAB, config.hidden_size, config.maxlen, length, rows) or "torch not installed"


# ---------------------------------------------------------------- XLA flags, tests, memory


def flag_rows(tiny: bool, budget: Budget) -> dict:
    """The book's step and one row of generation in a child process per command-buffer setting."""
    if not on_gpu():
        return {"skipped": "XLA's command buffers are a GPU feature"}
    rows = {}
    for name, flags in COMMAND_BUFFERS.items():
        if budget.left() < 45:
            rows[name] = {"skipped": f"budget: {budget.left():.0f} s left"}
            continue
        env = dict(os.environ)
        if flags:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
        command = [sys.executable, __file__, "--child-flags", *(["--tiny"] if tiny else [])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(budget.left(), 30))
        rows[name] = (
            json.loads(done.stdout.strip().splitlines()[-1])
            if done.returncode == 0
            else {"error": done.stderr.strip().splitlines()[-1:]}
        )
        rows[name]["xla_flags"] = flags or "(JAX's defaults)"
    return rows


def child_flags(tiny: bool) -> None:
    config, model, params = book_model(tiny)
    options = GenerationOptions(length=20 if tiny else LENGTH, temperatures=[1.0])
    prompts = np.zeros((1, config.maxlen), np.int32)
    fns = {
        "train": charlm_step(config),
        "generate": lambda: generate_ids(
            params, 1, prompts, options, model=model, maxlen=config.maxlen
        ).block_until_ready(),
    }
    stats = interleaved(fns, rounds_for(tiny))
    print(
        json.dumps(
            {
                "ms_per_step": stats["train"]["median_s"] / config.steps_per_call * 1e3,
                "us_per_char": stats["generate"]["median_s"] / options.length * 1e6,
            }
        )
    )


def test_rows(budget: Budget) -> dict:
    """The numerics and statistics tests on this device (optimised, as users run; one process: one device)."""
    env = {**os.environ, "CHARLM_JAX_TEST_OPTIMIZE": "1", "JAX_PLATFORMS": jax.default_backend()}
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *CHECK_TESTS]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(180, budget.left())
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out", "seconds": time.monotonic() - started}
    lines = done.stdout.strip().splitlines()
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "seconds": time.monotonic() - started,
        "files": CHECK_TESTS,
        "failures": [line for line in lines if line.startswith("FAILED")][:20],
    }


def memory_row() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {"jax_peak_bytes_in_use": stats.get("peak_bytes_in_use")}
    if out["jax_peak_bytes_in_use"] is None:
        out["process_peak_rss_bytes"] = peak_rss_bytes()
    try:
        import torch

        if torch.cuda.is_available():
            out["torch_max_memory_allocated"] = torch.cuda.max_memory_allocated()
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------- the run


def markdown(data: dict) -> str:
    lines = [f"# Device check, {data['date']}: {data['device']}", "", f"`{data['command']}`", ""]
    for section in ("tests", "train", "flags", "floor", "generation", "memory"):
        lines += [f"## {section}", "", "| row | values |", "|---|---|"]
        value = data.get(section, {})
        items = value.items() if isinstance(value, dict) else [("result", value)]
        for name, row in items:
            shown = (
                ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
                if isinstance(row, dict)
                else row
            )
            lines.append(f"| {name} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def section(data: dict, name: str, fn) -> None:
    """Run one section; an error becomes the section's row, so the other sections still run."""
    started = time.monotonic()
    try:
        data[name] = fn()
    except Exception as error:  # noqa: BLE001  a lent minute must not be lost to one row's failure
        data[name] = {"error": f"{type(error).__name__}: {error}"}
    print(f"{name}: {time.monotonic() - started:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the pytest row")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the results")
    parser.add_argument("--child-flags", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_flags:
        child_flags(args.tiny)
        return 0
    budget = Budget(args.budget_s)
    data = {**record("device_check.py", argv), "backend": jax.default_backend()}
    if not args.skip_tests:
        section(data, "tests", lambda: test_rows(budget))
    section(data, "train", lambda: train_rows(args.tiny, budget))
    section(data, "generation", lambda: generation_rows(args.tiny))
    section(data, "floor", lambda: floor_rows(args.tiny))
    section(data, "memory", memory_row)
    section(data, "flags", lambda: flag_rows(args.tiny, budget))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{data['date']}-{platform_tag()}-device-check"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    print(f"saved {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
