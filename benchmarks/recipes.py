"""Recipes at equal training time, on several texts: validation bits per character against seconds.

Every variant trains on the same text and split (the held-out 10 % tail, each character
predicted from the 60 before it from a zero state, whatever the training objective: the
book's metric) for the same budget of training seconds (the clock stops while validating),
one after the other in this process, validating every ``eval_every_steps`` and when the
budget ends. What a user holds at time t is the best checkpoint so far (``<out>/best``); the
comparison is made on those held-best curves. Target: the recommended recipe's best is at
least 0.3 bits/char below the book's after 600 s on every text, and never above the book's
held best at any time after the first minute. Beside each best checkpoint the script reports
the stateful full-context bits/char of the same tail (state carried from its first character).

    python benchmarks/recipes.py                          # book vs fast, 600 s each, three texts (~70 min)
    python benchmarks/recipes.py --texts pydoc --seconds 300 --variants book fast
    python benchmarks/recipes.py --report-only            # rebuild tables and plots from the saved JSON
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices

configure_cpu_devices(auto_cpu_devices(128))  # as `charlm-jax train` does

from rich.console import Console  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax import Limits, fit, recipe_config  # noqa: E402
from charlm_jax.data.windows import Vocab, prepare_text, split_windows  # noqa: E402

from common import RESULTS, device_name, platform_tag, record  # noqa: E402
from race_texts import RACE_VAL_CHARS, race_text, validation_tail  # noqa: E402,F401  (budget_race, fine_tune read them here)

TARGET_BITS = 0.3
PEER_TARGET_BITS = 0.1  # below the best small GPT raced
FIRST_MINUTE = 60.0
# name -> (recipe, TrainConfig overrides). Every variant plans 100 epochs so the time budget is
# what ends it (and fits its learning-rate schedule); eval_every_steps gives a validation about
# every 30-40 s of training on 2 CPU cores, so the curves are compared at many points.
VARIANTS: dict[str, tuple[str, dict]] = {
    "book": ("book", {"epochs": 100, "eval_every_steps": 800}),
    "fast": ("fast", {"epochs": 100, "eval_every_steps": 160}),
    # The previous fast recipe's model (one layer of 128, dropout 0.3), with this one's schedule.
    "fast-128": ("fast", {"epochs": 100, "eval_every_steps": 800, "num_layers": 1, "hidden_size": 128, "dropout": 0.3}),
    # Truncated BPTT: the fast recipe's model and schedule on consecutive streams with carried state.
    "streams": ("streams", {}),
    # ... with AWD-LSTM's regularisation: locked (variational) dropout and DropConnect.
    "streams-awd": (
        "fast",
        {
            "epochs": 1000,
            "eval_every_steps": 160,
            "batching": "streams",
            "early_stopping_patience": 0,
            "locked_dropout": True,
            "weight_dropout": 0.3,
        },
    ),
    # ... on a wider model (two layers of 256) that the regularisation may let a 600 s budget afford.
    "streams-awd-wide": (
        "fast",
        {
            "epochs": 1000,
            "eval_every_steps": 120,
            "batching": "streams",
            "early_stopping_patience": 0,
            "locked_dropout": True,
            "weight_dropout": 0.3,
            "hidden_size": 256,
        },
    ),
    # The peer: a small GPT (gpt_peer.py, PyTorch), nanoGPT's CPU recipe for characters...
    "gpt": ("gpt", {}),
    # ... and with dropout 0.2 and a larger batch (its recipe for more data).
    "gpt-dropout": ("gpt", {"dropout": 0.2, "batch_size": 64}),
}
TEXTS = ("pydoc", "shakespeare", "python-source")
EXTRA_TEXTS = ("idle-notes",)  # raced at 600 s beside TEXTS


def run_variant(variant: str, text_name: str, text: str, args, spec: tuple[str, dict] | None = None) -> dict:
    """One run of ``variant`` (``spec``: its (recipe, overrides) when it is not one of ``VARIANTS``)."""
    recipe, overrides = spec or VARIANTS[variant]
    if recipe == "gpt":
        return run_peer(variant, text_name, text, overrides, args)
    out = Path(args.work_dir) / f"{text_name}-{variant}"
    overrides = {**overrides, **getattr(args, "lstm_overrides", {})}
    shutil.rmtree(out, ignore_errors=True)
    # Validations during the run score RACE_VAL_CHARS evenly spaced tail windows (a whole 60K-window tail
    # costs ~30 s of a 2x192 model per validation); the best checkpoint is scored on the whole tail below.
    budget = {"time_limit": args.seconds, "corpus_chars": len(text)} if recipe == "auto" else {}
    config = recipe_config(recipe, **budget, **{"val_chars": RACE_VAL_CHARS, **overrides})
    wall = time.perf_counter()
    result = fit(config, text, out, limits=Limits(max_seconds=args.seconds), console=Console(quiet=True))
    if result.stop_reason.by_signal:
        # fit turns Ctrl-C / SIGTERM into a clean stop; a race must not score that cut-short run as a row
        # and go on to the next variant (a stopped race kept running and recorded a 20 s "600 s" run).
        raise SystemExit(
            f"{text_name} {variant}: stopped by a signal ({result.stop_reason}); the race stops here, the runs "
            "before it are in the results file (run the rest with --append)"
        )
    points = [
        {
            "epoch": r["epoch"],
            "partial_epoch": r.get("partial_epoch", False),
            "step": r["step"],
            "train_seconds": r["train_seconds"],
            "val_bits_per_char": r["val_bits_per_char"],
            "train_loss": r["train_loss"],
            "learning_rate": r["learning_rate"],
            "sample_0.5": r.get("samples", {}).get("0.5", ""),
        }
        for r in result.history
    ]
    tail = validation_tail(text, config)
    best = charlm_jax.load(out / "best")
    whole_tail = charlm_jax.bits_per_char(best, tail, mode="window")
    stateful = charlm_jax.bits_per_char(best, tail, mode="stateful") if getattr(args, "stateful", True) else None
    print(
        f"{text_name} {variant}: best {whole_tail:.3f} bits/char (stateful {stateful or float('nan'):.3f}) "
        f"after {points[-1]['train_seconds']:.0f} s of training, {points[-1]['step']} steps; "
        f"{time.perf_counter() - wall:.0f} s wall",
        flush=True,
    )
    return {
        "config": config.to_dict(),
        "stop_reason": str(result.stop_reason.value),
        "points": points,
        "best_epoch": result.best_epoch,
        "best_val_bits_per_char": whole_tail,
        "best_val_bits_per_char_subset": result.best_val_bits_per_char,
        "best_stateful_bits_per_char": stateful,
    }


def run_peer(variant: str, text_name: str, text: str, overrides: dict, args) -> dict:
    """The small GPT on the same lower-cased text, split and metric as the LSTM variants."""
    from gpt_peer import EVAL_EVERY_SECONDS, GPTRecipe, train_gpt

    config = recipe_config("book")  # the split and the metric's context: the book's
    prepared = prepare_text(text, config.lowercase)
    vocab = Vocab.from_text(prepared)
    ids = vocab.encode(prepared)
    split = split_windows(len(ids), config.maxlen, config.step, config.val_fraction)
    wall = time.perf_counter()
    result = train_gpt(
        GPTRecipe(**overrides),
        ids,
        split.val_start,
        vocab.size,
        seconds=args.seconds,
        eval_every_seconds=EVAL_EVERY_SECONDS,
        context=config.maxlen,
        seed=getattr(args, "seed", 0),
    )
    points = result["points"]
    print(
        f"{text_name} {variant}: best {result['best_val_bits_per_char']:.3f} bits/char after "
        f"{points[-1]['train_seconds']:.0f} s of training, {points[-1]['step']} steps; "
        f"{time.perf_counter() - wall:.0f} s wall",
        flush=True,
    )
    return result


def held_best(points: list[dict], seconds: float) -> float | None:
    """Validation of the best checkpoint a run holds after ``seconds`` of training (None: none yet)."""
    values = [p["val_bits_per_char"] for p in points if p["train_seconds"] <= seconds]
    return min(values) if values else None


def is_peer(variant: str) -> bool:
    return VARIANTS[variant][0] == "gpt"


def compare(runs: dict, recommended: str, seconds: float) -> dict:
    """The targets for one text: the gain over the book at the end, the worst moment against the book
    after a minute, and the gap to the best small GPT raced (each run's best scored on the whole tail)."""
    book, ours = runs["book"]["points"], runs[recommended]["points"]
    gain = runs["book"]["best_val_bits_per_char"] - runs[recommended]["best_val_bits_per_char"]
    checks = sorted({p["train_seconds"] for p in book + ours if FIRST_MINUTE <= p["train_seconds"] <= seconds + 1})
    worst = None
    for t in checks:
        mine, theirs = held_best(ours, t), held_best(book, t)
        if theirs is not None and (mine is None or worst is None or theirs - mine < worst[1]):
            worst = (t, (theirs - mine) if mine is not None else float("-inf"))
    peers = {v: run["best_val_bits_per_char"] for v, run in runs.items() if is_peer(v)}
    best_peer = min(peers, key=peers.get) if peers else None
    peer_gap = peers[best_peer] - runs[recommended]["best_val_bits_per_char"] if peers else None
    return {
        "gain": gain,
        "worst_time": worst[0] if worst else None,
        "worst_margin": worst[1] if worst else None,
        "best_peer": best_peer,
        "peer_gap": peer_gap,
        "pass": gain >= TARGET_BITS
        and (worst is None or worst[1] >= 0)
        and (peer_gap is None or peer_gap >= PEER_TARGET_BITS),
    }


def report(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = data["texts"]
    recommended = data["recommended"]
    figure, axes = plt.subplots(1, len(texts), figsize=(6 * len(texts), 4.2), squeeze=False)
    lines = [
        f"# Recipes at equal training time ({data['date']}, {data['device']})",
        "",
        f"`{data['command']}`; {data['seconds']:.0f} s of training per run (validation excluded), "
        f"texts cut to {data['chars']:,} characters, last 10 % held out; jax {data['versions']['jax']}.",
        "",
        "Each run's best checkpoint (chosen on its validations) scored on the whole held-out tail, each "
        "character from the 60 before it; the validations during training (the curves) use 8,192 evenly "
        "spaced windows of the tail.",
        "",
        "| text | variant | best val bits/char (held at the end) | stateful bits/char of that checkpoint | "
        "steps | lower than book by |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for axis, (text_name, runs) in zip(axes[0], texts.items()):
        for variant, run in runs.items():
            xs = [p["train_seconds"] for p in run["points"]]
            ys = [p["val_bits_per_char"] for p in run["points"]]
            axis.plot(xs, ys, marker=".", alpha=0.5, label=f"{variant} (validation)")
            held = [held_best(run["points"], x) for x in xs]
            axis.step(xs, held, where="post", label=f"{variant} (best held: {held[-1]:.3f})")
            gain = runs["book"]["best_val_bits_per_char"] - run["best_val_bits_per_char"] if "book" in runs else 0
            stateful = run["best_stateful_bits_per_char"]
            lines.append(
                f"| {text_name} | {variant} | {run['best_val_bits_per_char']:.3f} | "
                f"{'-' if stateful is None else f'{stateful:.3f}'} | {run['points'][-1]['step']:,} | "
                f"{gain:.3f} |"
            )
        axis.axvline(FIRST_MINUTE, color="grey", ls=":", lw=0.8)
        axis.set(
            xlabel="training seconds (validation excluded)",
            ylabel="validation bits per character",
            title=f"{text_name} ({data['text_chars'][text_name]:,} characters)",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        if "book" in runs and recommended in runs:
            c = compare(runs, recommended, data["seconds"])
            worst = (
                f"; closest after the first minute at {c['worst_time']:.0f} s: {c['worst_margin']:.3f} lower"
                if c["worst_time"] is not None
                else ""
            )
            peer = (
                f"; {c['peer_gap']:.3f} below the best GPT ({c['best_peer']}, target >= {PEER_TARGET_BITS})"
                if c["best_peer"]
                else ""
            )
            verdicts.append(
                f"- {text_name}: {recommended} {c['gain']:.3f} bits/char below book at "
                f"{data['seconds']:.0f} s{worst}{peer}; targets (>= {TARGET_BITS} below book and "
                f"never above it{', the GPT gap' if peer else ''}): {'PASS' if c['pass'] else 'MISS'}"
            )
    figure.suptitle(f"{data['device']}, {data['date']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=110)
    lines += ["", *verdicts, "", "Samples at temperature 0.5, last validation of each run (first 120 characters):", ""]
    for text_name, runs in texts.items():
        for variant, run in runs.items():
            full = [p for p in run["points"] if p["sample_0.5"]]
            if full:
                lines.append(f"- {text_name}, {variant}: `{full[-1]['sample_0.5'][:120]!r}`")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["book", "fast"], choices=list(VARIANTS))
    parser.add_argument("--recommended", default="fast", help="the variant the target is about (default: fast)")
    parser.add_argument(
        "--texts",
        nargs="+",
        default=list(TEXTS),
        choices=list(TEXTS) + list(EXTRA_TEXTS) + ["king-lear"],
        help="built-in corpus names, or idle-notes",
    )
    parser.add_argument("--chars", type=int, default=600_000, help="characters of each text (default: 600000)")
    parser.add_argument("--seconds", type=float, default=600.0, help="training seconds per run")
    parser.add_argument("--work-dir", default="/tmp/charlm-recipes")
    parser.add_argument("--tag", default=None, help="results file stem (default: <date>-<platform>-recipes)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the runs already in the results JSON and add (or redo) these; the settings must be the same",
    )
    args = parser.parse_args(argv)
    stem = RESULTS / (args.tag or f"{time.strftime('%Y-%m-%d')}-{platform_tag()}-recipes")
    if args.report_only:
        report(json.loads(stem.with_suffix(".json").read_text()), stem)
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python"] + sys.argv)
    data = {
        **record("recipes.py"),
        "seconds": args.seconds,
        "chars": args.chars,
        "recommended": args.recommended,
        "text_chars": {},
        "texts": {},
    }
    if args.append and stem.with_suffix(".json").exists():
        data = json.loads(stem.with_suffix(".json").read_text())
        if (data["seconds"], data["chars"], data["device"]) != (args.seconds, args.chars, device_name()):
            raise SystemExit(f"{stem}.json was made with other settings or on another device: use another --tag")
        data["command"] = data["command"] + "; " + command
        data["recommended"] = args.recommended
    for text_name in args.texts:
        text = race_text(text_name, args.chars)
        data["text_chars"][text_name] = len(text)
        data["texts"].setdefault(text_name, {})
        for variant in args.variants:
            data["texts"][text_name][variant] = run_variant(variant, text_name, text, args)
            stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    report(data, stem)
    results = [
        compare(runs, args.recommended, args.seconds)["pass"]
        for runs in data["texts"].values()
        if "book" in runs and args.recommended in runs
    ]
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
