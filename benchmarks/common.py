"""What every benchmark script shares: timing, the device's description, result files.

Scripts in this folder import it as ``common`` (Python puts a script's own folder first on
``sys.path``), so nothing here is installed with the package.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median/min/max seconds of fn() (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summary(times)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int = 1) -> dict[str, dict]:
    """Time several functions round-robin, so a slow spell of the machine hits all of them alike.

    Each function runs once untimed first (compilation), then ``rounds`` times ``per_round``
    calls; returns the median/min/max seconds per call of each.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: summary(values) for name, values in times.items()}


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "max_s": float(np.max(times)),
        "repeats": len(times),
    }


def first_call_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_flags() -> list[str]:
    """The CPU flags that decide how fast XLA:CPU is here: vector width and bfloat16 products in hardware."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in wanted if flag in flags]


def vector_units(flags: list[str]) -> str:
    """The widest of ``flags``, as a name: ``AMX``, ``AVX-512 BF16``, ``AVX-512``, ``AVX2`` or ``no AVX2``."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def device_name() -> str:
    """The device a result was measured on. A CPU's name includes its widest vector units: cloud VMs
    of one name ("AMD EPYC") came with AVX2 on one day and AVX-512 on another, at twice the steps."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"CPU {model} ({os.cpu_count()} cores, {vector_units(cpu_flags())})"
    return f"{device.platform.upper()} {device.device_kind}"


def platform_tag() -> str:
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind.replace(" ", "-")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "torch", "charlm-jax"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def record(script: str, argv: list[str] | None = None) -> dict:
    """What opens every result file: the date, the device, the versions and the command that made it."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return {
        "date": dt.date.today().isoformat(),
        "device": device_name(),
        "versions": versions(),
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
    }


def result_stem(name: str, tag: str | None = None) -> str:
    """A result file's stem: ``tag`` when given, else ``<date>-<device>-<name>``."""
    return tag or f"{dt.date.today().isoformat()}-{platform_tag()}-{name}"


def write_results(stem: str, data: dict, markdown: str) -> Path:
    """``results/<stem>.json`` and ``.md``; returns the stem's path (plots go beside it)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / stem
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(markdown)
    return path


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM: its own image, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def training_block(config, vocab_size: int, mesh):
    """The training loop's compiled block as ``fit`` runs it: returns (fresh state, run(state, windows) -> metrics).

    ``state`` is a dict (train state and carries, replicated / split over ``mesh``) that ``run`` updates
    in place, since the block donates both.
    """
    import jax

    from charlm_jax.model.charlstm import build_model
    from charlm_jax.runtime.distributed import replicated
    from charlm_jax.train.run_dir import zero_carries
    from charlm_jax.train.steps import compiled_train_block, create_train_state

    model, block = build_model(config, vocab_size), compiled_train_block(mesh)

    def fresh_state() -> dict:
        train = create_train_state(jax.random.key(0), config, vocab_size, total_steps=1000)
        return {"train": jax.device_put(train, replicated(mesh)), "carries": zero_carries(config, mesh)}

    def run(state: dict, windows):
        (state["train"], state["carries"]), metrics = block(
            state["train"],
            state["carries"],
            windows,
            jax.random.key(1),
            model=model,
            maxlen=config.maxlen,
            objective=config.objective,
            carry_over=config.batching == "streams",
        )
        return metrics

    return fresh_state, run
