"""Side-by-side benchmarks: generation latency, training step time, data-pipeline memory.

Compares, in one run on one device, charlm_jax against the book's Keras loop
(Keras 3 on its JAX backend, ``model.predict`` per character on a one-hot
window, the book's numpy ``sample``) and a PyTorch ``nn.LSTM`` with a Python
loop carrying the state. Peers come from ``pip install -e ".[peers]"``; a
missing peer is skipped with its reason printed.

Every figure is a median over repeats after warm-up (min and max kept),
timed with ``block_until_ready``; compile time is reported apart. Results go
to ``benchmarks/results/<date>-<device>.json`` with a markdown table and a PNG
plot beside it; each target prints PASS or MISS as a ratio measured here.

    python benchmarks/bench.py --quick      # < 3 minutes on 2 CPU cores
    python benchmarks/bench.py              # the full run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("KERAS_BACKEND", "jax")  # the book's loop runs on Keras' JAX backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from charlm_jax.config import TrainConfig  # noqa: E402
from charlm_jax.decode import generate_ids  # noqa: E402
from charlm_jax.model import build_model, init_params  # noqa: E402
from charlm_jax.train import compile_steps, create_train_state  # noqa: E402

HERE = Path(__file__).resolve().parent
MAXLEN, HIDDEN, BATCH, VOCAB = 60, 128, 128, 77  # the book's configuration; 77 = built-in corpus vocab


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median/min/max seconds of fn() (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "max_s": float(np.max(times)),
            "repeats": repeats}


def first_call_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def device_name() -> str:
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
        return f"CPU {model} ({os.cpu_count()} cores)"
    return f"{device.platform.upper()} {device.device_kind}"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "torch"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------- generation

def bench_charlm_generation(quick: bool) -> dict:
    config = TrainConfig()
    model = build_model(config, VOCAB)
    params = init_params(jax.random.key(0), model, MAXLEN)
    results = {}
    length = 400
    repeats = 3 if quick else 7

    def run(batch, temps, mode, n):
        prompt = jnp.zeros((batch, MAXLEN), jnp.int32)
        temperatures = jnp.asarray(np.resize(np.asarray(temps, np.float32), batch))
        call = lambda: generate_ids(params, jax.random.key(1), prompt, temperatures, model=model,  # noqa: E731
                                    length=n, mode=mode, maxlen=MAXLEN).block_until_ready()
        compile_s = first_call_seconds(call)
        stats = timed(call, repeats, warmup=1)
        return {"batch": batch, "length": n, "mode": mode, "compile_s": compile_s, **stats,
                "per_char_s": stats["median_s"] / n, "chars_per_s": batch * n / stats["median_s"]}

    results["stateful_1"] = run(1, [1.0], "stateful", length)
    results["stateful_4temps"] = run(4, [0.2, 0.5, 1.0, 1.2], "stateful", length)
    results["window_1"] = run(1, [1.0], "window", 100 if quick else length)
    results["window_4temps"] = run(4, [0.2, 0.5, 1.0, 1.2], "window", 100 if quick else length)
    for batch in (1, 64, 1024, 8192):
        n = length if not quick or batch <= 1024 else 100
        results[f"stateful_batch_{batch}"] = run(batch, [1.0], "stateful", n)
    return results


def keras_model():
    """The book's model: LSTM(128) on one-hot windows, Dense softmax."""
    import keras

    return keras.Sequential([keras.Input((MAXLEN, VOCAB)), keras.layers.LSTM(HIDDEN),
                             keras.layers.Dense(VOCAB, activation="softmax")])


def bench_keras_book_loop(quick: bool) -> dict:
    try:
        import keras
    except ImportError as error:
        return {"skipped": f"keras not installed ({error}); pip install -e '.[peers]'"}
    model = keras_model()
    rng = np.random.default_rng(0)

    def sample(preds, temperature=1.0):  # the book's function
        preds = np.asarray(preds).astype("float64")
        preds = np.log(preds) / temperature
        exp_preds = np.exp(preds)
        preds = exp_preds / np.sum(exp_preds)
        probas = rng.multinomial(1, preds / preds.sum(), 1)
        return np.argmax(probas)

    def book_loop(n):
        generated = list(rng.integers(0, VOCAB, MAXLEN))
        for _ in range(n):
            sampled = np.zeros((1, MAXLEN, VOCAB))
            for t, char in enumerate(generated[-MAXLEN:]):
                sampled[0, t, char] = 1.0
            preds = model.predict(sampled, verbose=0)[0]
            generated.append(sample(preds, 1.0))

    n = 30 if quick else 200
    compile_s = first_call_seconds(lambda: book_loop(2))
    stats = timed(lambda: book_loop(n), repeats=1 if quick else 3, warmup=0)
    return {"keras": keras.__version__, "backend": keras.backend.backend(), "length": n, "compile_s": compile_s,
            **stats, "per_char_s": stats["median_s"] / n, "chars_per_s": n / stats["median_s"]}


def torch_model():
    import torch

    class TorchCharLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(VOCAB, HIDDEN, batch_first=True)  # one-hot input, as the book's
            self.dense = torch.nn.Linear(HIDDEN, VOCAB)

        def forward(self, x, state=None):
            out, state = self.lstm(x, state)
            return self.dense(out[:, -1]), state

    return TorchCharLSTM()


def bench_torch_generation(quick: bool) -> dict:
    try:
        import torch
    except ImportError as error:
        return {"skipped": f"torch not installed ({error}); pip install -e '.[peers]'"}
    torch.manual_seed(0)
    model = torch_model().eval()
    eye = torch.eye(VOCAB)

    def loop(n):
        with torch.no_grad():
            logits, state = model(eye[torch.zeros(1, MAXLEN, dtype=torch.long)])
            for _ in range(n):
                probs = torch.softmax(logits / 1.0, dim=-1)
                char = torch.multinomial(probs, 1)  # (1, 1)
                logits, state = model(eye[char], state)

    n = 400
    compile_s = first_call_seconds(lambda: loop(5))
    stats = timed(lambda: loop(n), repeats=3 if quick else 7)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "length": n, "compile_s": compile_s,
            **stats, "per_char_s": stats["median_s"] / n, "chars_per_s": n / stats["median_s"]}


# ---------------------------------------------------------------- training

def time_training_step(step: Callable[[], object], quick: bool, **extra) -> dict:
    """First call (compile) apart, then the median step and windows/s of the book's batch."""
    compile_s = first_call_seconds(step)
    stats = timed(step, repeats=10 if quick else 40, warmup=2)
    return {**extra, "compile_s": compile_s, **stats, "windows_per_s": BATCH / stats["median_s"]}


def bench_charlm_training(quick: bool) -> dict:
    config = TrainConfig()
    model = build_model(config, VOCAB)
    state = create_train_state(jax.random.key(0), config, VOCAB)
    train_fn, _ = compile_steps(model, config)
    rng = np.random.default_rng(0)
    corpus = jnp.asarray(rng.integers(0, VOCAB, 600_000, dtype=np.int32))
    starts = [jnp.asarray(rng.integers(0, 600_000 - MAXLEN - 1, BATCH, dtype=np.int32)) for _ in range(4)]
    key = jax.random.key(1)
    holder = {"state": state, "i": 0}

    def step():
        holder["state"], metrics = train_fn(holder["state"], corpus, starts[holder["i"] % 4], key)
        holder["i"] += 1
        metrics["loss"].block_until_ready()

    return time_training_step(step, quick)


def bench_keras_training(quick: bool) -> dict:
    try:
        import keras
    except ImportError as error:
        return {"skipped": f"keras not installed ({error})"}
    model = keras_model()
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    rng = np.random.default_rng(0)
    x = np.eye(VOCAB, dtype=np.float32)[rng.integers(0, VOCAB, (BATCH, MAXLEN))]
    y = np.eye(VOCAB, dtype=np.float32)[rng.integers(0, VOCAB, BATCH)]
    step = lambda: model.train_on_batch(x, y)  # noqa: E731  (returns a Python float: synchronised)
    return time_training_step(step, quick)


def bench_torch_training(quick: bool) -> dict:
    try:
        import torch
    except ImportError as error:
        return {"skipped": f"torch not installed ({error})"}
    torch.manual_seed(0)
    model = torch_model()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1e-7)
    rng = np.random.default_rng(0)
    x = torch.eye(VOCAB)[torch.as_tensor(rng.integers(0, VOCAB, (BATCH, MAXLEN)))]
    y = torch.as_tensor(rng.integers(0, VOCAB, BATCH))

    def step():
        optimizer.zero_grad()
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return time_training_step(step, quick, threads=torch.get_num_threads())


# ---------------------------------------------------------------- memory

MEMORY_CHILD = r"""
import json, sys
import numpy as np


def peak_rss():
    # VmHWM belongs to this process image; ru_maxrss would inherit the parent's peak across exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


from charlm_jax.corpus import load_text
text = load_text(None).lower()
text = (text * (600_000 // len(text) + 1))[:600_000]
kind = sys.argv[1]
before = peak_rss()
if kind == "charlm":
    import jax, jax.numpy as jnp
    from charlm_jax.data import Vocab, split_windows
    before = peak_rss()
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    split = split_windows(len(text), 60, 3, 0.1)
    corpus = jax.device_put(ids); corpus.block_until_ready()
    nbytes = ids.nbytes + split.train_starts.nbytes + split.val_starts.nbytes
else:
    # The book's vectorisation (section 8.1), with numpy indexing instead of its Python loop
    # (the same arrays, built in seconds instead of minutes).
    maxlen, step = 60, 3
    starts = np.arange(0, len(text) - maxlen, step)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), np.int64, len(text))
    x = np.zeros((len(starts), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(starts), len(chars)), dtype=bool)
    rows = np.arange(len(starts))
    for t in range(maxlen):
        x[rows, t, ids[starts + t]] = 1
    y[rows, ids[starts + maxlen]] = 1
    nbytes = x.nbytes + y.nbytes
after = peak_rss()
print(json.dumps({"peak_rss_increase_bytes": after - before, "array_bytes": int(nbytes)}))
"""


def bench_memory() -> dict:
    out = {}
    for kind in ("charlm", "book"):
        result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, kind], capture_output=True, text=True,
                                env=dict(os.environ, JAX_PLATFORMS="cpu"))
        if result.returncode != 0:
            out[kind] = {"error": result.stderr[-500:]}
        else:
            out[kind] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- report

def targets(results: dict) -> list[dict]:
    gen, train, mem = results["generation"], results["training"], results["memory"]
    rows = []

    def target(name, ratio, limit, better, detail):
        if ratio is None:
            rows.append({"target": name, "status": "SKIP", "detail": detail})
            return
        ok = ratio >= limit if better == "higher" else ratio <= limit
        rows.append({"target": name, "status": "PASS" if ok else "MISS", "ratio": ratio, "limit": limit,
                     "detail": detail})

    book = gen["keras_book_loop"]
    ours = gen["charlm_jax"]["stateful_1"]
    target("stateful single stream >= 100x faster per character than the book's loop",
           book["per_char_s"] / ours["per_char_s"] if "per_char_s" in book else None, 100, "higher",
           book.get("skipped", f"{book.get('per_char_s', 0) * 1e6:.0f} us vs {ours['per_char_s'] * 1e6:.1f} us"))
    four, one = gen["charlm_jax"]["stateful_4temps"], gen["charlm_jax"]["stateful_1"]
    target("four temperatures in one call <= 1.5x one temperature", four["median_s"] / one["median_s"], 1.5, "lower",
           f"{four['median_s'] * 1e3:.2f} ms vs {one['median_s'] * 1e3:.2f} ms for {one['length']} characters")
    torch_step = train["torch"]
    target("training step no slower than PyTorch nn.LSTM (ratio = ours / torch)",
           train["charlm_jax"]["median_s"] / torch_step["median_s"] if "median_s" in torch_step else None, 1.0,
           "lower", torch_step.get("skipped", f"{train['charlm_jax']['median_s'] * 1e3:.1f} ms vs "
                                   f"{torch_step.get('median_s', 0) * 1e3:.1f} ms"))
    if "array_bytes" in mem.get("charlm", {}) and "array_bytes" in mem.get("book", {}):
        ratio = mem["charlm"]["peak_rss_increase_bytes"] / mem["book"]["peak_rss_increase_bytes"]
        detail = (f"{mem['charlm']['peak_rss_increase_bytes'] / 2**20:.1f} MiB vs "
                  f"{mem['book']['peak_rss_increase_bytes'] / 2**20:.1f} MiB peak RSS increase")
    else:
        ratio, detail = None, "memory child failed"
    target("data-pipeline memory <= 5% of the book's one-hot arrays", ratio, 0.05, "lower", detail)
    return rows


def markdown(results: dict) -> str:
    g, t = results["generation"], results["training"]
    lines = [f"# Benchmark {results['date']} on {results['device']}", "",
             f"Command: `{results['command']}`", "", "## Generation (per character, median)", "",
             "| what | batch | per character | characters/s | compile |", "|---|---|---|---|---|"]

    def gen_row(name, r, batch=1):
        if "skipped" in r:
            lines.append(f"| {name} | - | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {name} | {batch} | {r['per_char_s'] * 1e6:,.1f} us | {r['chars_per_s']:,.0f} | "
                         f"{r['compile_s']:.2f} s |")

    gen_row("book loop (Keras `model.predict` per char)", g["keras_book_loop"])
    gen_row("PyTorch nn.LSTM, Python loop with state", g["torch_loop"])
    cj = g["charlm_jax"]
    gen_row("charlm_jax window mode", cj["window_1"])
    gen_row("charlm_jax window mode, 4 temperatures", cj["window_4temps"], 4)
    gen_row("charlm_jax stateful", cj["stateful_1"])
    gen_row("charlm_jax stateful, 4 temperatures", cj["stateful_4temps"], 4)
    for batch in (64, 1024, 8192):
        gen_row("charlm_jax stateful", cj[f"stateful_batch_{batch}"], batch)
    lines += ["", "## Training step (batch 128, 60 steps, 128 units, RMSprop)", "",
              "| library | step (median [min, max]) | windows/s | compile / first step |", "|---|---|---|---|"]
    for name in ("charlm_jax", "keras", "torch"):
        r = t[name]
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {name} | {r['median_s'] * 1e3:.1f} ms [{r['min_s'] * 1e3:.1f}, {r['max_s'] * 1e3:.1f}] | "
                         f"{r['windows_per_s']:,.0f} | {r['compile_s']:.2f} s |")
    m = results["memory"]
    lines += ["", "## Data pipeline memory, 600K-character corpus", "", "| pipeline | arrays | peak RSS increase |",
              "|---|---|---|"]
    for name in ("charlm", "book"):
        r = m.get(name, {})
        if "array_bytes" in r:
            lines.append(f"| {name} | {r['array_bytes'] / 2**20:.1f} MiB | {r['peak_rss_increase_bytes'] / 2**20:.1f} MiB |")
    lines += ["", "## Targets", "", "| target | status | ratio | detail |", "|---|---|---|---|"]
    for row in results["targets"]:
        ratio = f"{row['ratio']:.3g} (limit {row['limit']})" if "ratio" in row else "-"
        lines.append(f"| {row['target']} | {row['status']} | {ratio} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cj = results["generation"]["charlm_jax"]
    batches = [1, 64, 1024, 8192]
    per_char = [cj[f"stateful_batch_{b}"]["per_char_s"] * 1e6 for b in batches]
    throughput = [cj[f"stateful_batch_{b}"]["chars_per_s"] for b in batches]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(batches, per_char, marker="o", label="charlm_jax stateful")
    right.loglog(batches, throughput, marker="o", label="charlm_jax stateful")
    for name, key, style in (("book loop (Keras)", "keras_book_loop", "--"), ("PyTorch loop", "torch_loop", ":")):
        r = results["generation"][key]
        if "per_char_s" in r:
            left.axhline(r["per_char_s"] * 1e6, ls=style, color="grey", label=name)
            right.axhline(r["chars_per_s"], ls=style, color="grey", label=name)
    left.set(xlabel="streams in one call", ylabel="latency per generated step (us)", title="per-character latency")
    right.set(xlabel="streams in one call", ylabel="characters / s (all streams)", title="throughput")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"{results['device']}, {results['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter peer loops (< 3 min on 2 cores)")
    parser.add_argument("--out", default=str(HERE / "results"), help="results directory")
    parser.add_argument("--tag", help="file name stem (default: date and device)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {"date": dt.date.today().isoformat(), "device": device_name(), "versions": versions(),
               "command": "python benchmarks/bench.py" + (" --quick" if args.quick else ""),
               "config": {"maxlen": MAXLEN, "hidden": HIDDEN, "batch": BATCH, "vocab": VOCAB}}
    print(f"device: {results['device']}", flush=True)
    results["generation"] = {"charlm_jax": bench_charlm_generation(args.quick)}
    print("charlm_jax generation done", flush=True)
    results["generation"]["torch_loop"] = bench_torch_generation(args.quick)
    results["generation"]["keras_book_loop"] = bench_keras_book_loop(args.quick)
    print("peer generation done", flush=True)
    results["training"] = {"charlm_jax": bench_charlm_training(args.quick),
                           "torch": bench_torch_training(args.quick), "keras": bench_keras_training(args.quick)}
    print("training done", flush=True)
    results["memory"] = bench_memory()
    results["targets"] = targets(results)
    results["wall_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    platform_tag = "cpu" if jax.devices()[0].platform == "cpu" else jax.devices()[0].device_kind.replace(" ", "-")
    stem = args.tag or f"{results['date']}-{platform_tag}{'-quick' if args.quick else ''}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / f"{stem}.md").write_text(table)
    try:
        plot(results, out / f"{stem}.png")
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[dev]')")
    print(table)
    print(f"wrote {out / stem}.json/.md/.png in {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
