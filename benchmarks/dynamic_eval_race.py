"""Dynamic evaluation at the race's budget: static against adaptive bits/char of 600 s models, beside the peers.

    python benchmarks/dynamic_eval_race.py                      # 4 texts x (LSTM + GPT) x 600 s, ~100 min
    python benchmarks/dynamic_eval_race.py --texts pydoc --seconds 60 --tag try

On every raced text (recipes.py's: pydoc, shakespeare, python-source, and idle-notes, the text of another
register) the recommended recipe (``--recipe``, default streams) and the small GPT peer (gpt_peer.py, its
published CPU recipe) each train for ``--seconds`` of training time, one after the other in this process,
nothing beside them. Each is then scored on the whole held-out tail (the last 10 %), static and adaptive:

* the LSTM stateful (state carried from the tail's first character), adapted by ``charlm_jax.use.adapt``;
* the GPT a segment at a time, each segment the last predictions of one 64-character window (every
  character from 39-63 before it; its race metric, each from the 60 before it, is reported beside),
  adapted by the same rule in PyTorch (``gpt_peer.adaptive_log2_probs``: score a segment, one
  RMS-normalised step on its loss, decay towards the trained weights).

The rule's learning rate, decay and segment are swept for each model family on the tuning texts
(``--tune``; the first ``--sweep-chars`` characters of each tail) and the best mean setting is applied
untouched to every text. The book's static figure is read from the 600 s race file (``--book-from``),
with its machine named. Trained models are kept in ``--work-dir`` and reused by a rerun.
Writes results/<date>-<platform>-dynamic-eval-race.{json,md,png} (PNG: per-stretch gain along each tail).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console

import charlm_jax
from charlm_jax.data.windows import Vocab, prepare_text, split_windows
from charlm_jax.settings.adapt import AdaptOptions

from common import RESULTS, platform_tag, record, write_results
from race_texts import RACE_VAL_CHARS, race_text

TEXTS = ("pydoc", "shakespeare", "python-source", "idle-notes")
LSTM_GRID = {
    "rule": ("rms",),
    "learning_rate": (1e-4, 2e-4, 3e-4, 5e-4),
    "decay": (0.0, 1e-3, 1e-2),
    "segment": (25, 50),
}
# The GPT's rms steps diverge at rates the LSTM takes (some of its gradients' RMS are ~1e-6), so its grid
# reaches lower, and the sgd rule is swept for it too: the peer gets the better of the two.
GPT_GRID = {"rule": ("rms",), "learning_rate": (1e-5, 3e-5, 1e-4), "decay": (0.0, 1e-3), "segment": (25,)}
GPT_SGD_GRID = {"rule": ("sgd",), "learning_rate": (0.003, 0.01, 0.03, 0.1), "decay": (0.0, 1e-3), "segment": (25,)}
GPT_SKIP = 64  # the GPT's tail is scored from its 65th character on: its first window lies inside the tail
STRETCH = 1000  # characters per point of the gain curves


def bits(log2_probs: np.ndarray) -> float:
    return float(-np.mean(log2_probs))


def train_lstm(name: str, text_path: Path, args) -> charlm_jax.LanguageModel:
    out = Path(args.work_dir) / f"{name}-{args.recipe}-{args.seconds:g}s"
    if not (out / "best").exists():
        config = charlm_jax.recipe_config(args.recipe, val_chars=RACE_VAL_CHARS, sample_length=0)
        wall = time.perf_counter()
        result = charlm_jax.fit(
            config,
            charlm_jax.load_text(text_path),
            out,
            limits=charlm_jax.Limits(max_seconds=args.seconds),
            console=Console(quiet=True),
        )
        last = result.history[-1]
        print(f"{name} {args.recipe}: {last['step']} steps, {time.perf_counter() - wall:.0f} s wall", flush=True)
    return charlm_jax.load(out / "best")


def gpt_ids(text: str):
    """The GPT's ids and the race's split of them (the book's maxlen/step/val_fraction), as recipes.run_peer."""
    config = charlm_jax.recipe_config("book")
    prepared = prepare_text(text, config.lowercase)
    vocab = Vocab.from_text(prepared)
    ids = np.asarray(vocab.encode(prepared))
    return ids, vocab.size, split_windows(len(ids), config.maxlen, config.step, config.val_fraction).val_start


def train_peer(name: str, text: str, args):
    import torch

    from gpt_peer import GPTRecipe, build_gpt, train_gpt

    ids, vocab_size, val_start = gpt_ids(text)
    path = Path(args.work_dir) / f"{name}-gpt-{args.seconds:g}s.pt"
    recipe = GPTRecipe()
    model = build_gpt(recipe, vocab_size)
    if path.exists():
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return model, recipe, saved["steps"], ids, val_start, saved["window_bits"]
    wall = time.perf_counter()
    result = train_gpt(
        recipe, ids, val_start, vocab_size, seconds=args.seconds, eval_every_seconds=50.0, context=60, keep_model=True
    )
    steps = result["points"][-1]["step"]
    print(f"{name} gpt: {steps} steps, {time.perf_counter() - wall:.0f} s wall", flush=True)
    window_bits = result["best_val_bits_per_char"]  # each tail character from the 60 before it
    torch.save({"state": result["model"].state_dict(), "steps": steps, "window_bits": window_bits}, path)
    return result["model"], recipe, steps, ids, val_start, window_bits


def tail_text(lm: charlm_jax.LanguageModel, chars: int) -> str:
    """The first ``chars`` characters of the run's held-out tail, as a string (prepared: lower-cased)."""
    from charlm_jax.use.lm import held_out_ids

    ids = held_out_ids(lm, charlm_jax.load_text(lm.text.source))[:chars]
    return lm.vocab.decode(np.asarray(ids))


def settings(*grids: dict):
    for grid in grids:
        for rule, rate, decay, segment in itertools.product(
            grid["rule"], grid["learning_rate"], grid["decay"], grid["segment"]
        ):
            yield {"rule": rule, "learning_rate": rate, "decay": decay, "segment": segment}


def sweep(grids: list[dict], tune: list[str], gain_of) -> tuple[dict, list[dict]]:
    """Every setting's mean gain over the tuning texts; the best setting and all rows."""
    rows = []
    for setting in settings(*grids):
        gains = {name: gain_of(name, setting) for name in tune}
        rows.append({**setting, "gains": gains, "mean_gain": statistics.mean(gains.values())})
        print(f"  {setting}: mean gain {rows[-1]['mean_gain']:+.3f}", flush=True)
    return max(rows, key=lambda r: r["mean_gain"] if np.isfinite(r["mean_gain"]) else -np.inf), rows


def curve(static: np.ndarray, adaptive: np.ndarray) -> list[float]:
    gain = adaptive - static  # log2-probabilities: positive where adapting helped
    return [float(np.mean(gain[i : i + STRETCH])) for i in range(0, len(gain), STRETCH)]


def book_figures(path: Path) -> tuple[dict, str]:
    race = json.loads(path.read_text())
    return (
        {
            name: {
                "window": runs["book"]["best_val_bits_per_char"],
                "stateful": runs["book"]["best_stateful_bits_per_char"],
                "steps": runs["book"]["points"][-1]["step"],
                "recommended_steps": runs.get("streams", {}).get("points", [{}])[-1].get("step"),
                "gpt_steps": runs.get("gpt", {}).get("points", [{}])[-1].get("step"),
            }
            for name, runs in race["texts"].items()
            if "book" in runs
        },
        f"{path.name} ({race['device']}, {race['date']})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", nargs="+", default=list(TEXTS))
    parser.add_argument("--tune", nargs="+", default=["pydoc", "python-source"])
    parser.add_argument("--recipe", default="streams")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--chars", type=int, default=600_000)
    parser.add_argument("--sweep-chars", type=int, default=20_000)
    parser.add_argument("--book-from", default=str(RESULTS / "2026-11-30-cpu-recipes.json"))
    parser.add_argument("--lstm-rates", nargs="+", type=float, default=list(LSTM_GRID["learning_rate"]))
    parser.add_argument("--lstm-segments", nargs="+", type=int, default=list(LSTM_GRID["segment"]))
    parser.add_argument("--decays", nargs="+", type=float, default=list(LSTM_GRID["decay"]))
    parser.add_argument("--gpt-rates", nargs="+", type=float, default=list(GPT_GRID["learning_rate"]))
    parser.add_argument("--gpt-sgd-rates", nargs="*", type=float, default=list(GPT_SGD_GRID["learning_rate"]))
    parser.add_argument("--gpt-decays", nargs="+", type=float, default=list(GPT_GRID["decay"]))
    parser.add_argument("--time-repeats", type=int, default=3)
    parser.add_argument("--work-dir", default="/tmp/charlm-dynamic-eval-race")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    lstms, peers = {}, {}
    for name in args.texts:  # training first, each run alone
        text_path = Path(args.work_dir) / f"{name}.txt"
        text_path.write_text(race_text(name, args.chars), encoding="utf-8")
        lstms[name] = train_lstm(name, text_path, args)
        peers[name] = train_peer(name, text_path.read_text(encoding="utf-8"), args)
    train_wall = time.perf_counter() - started

    print("scoring: static", flush=True)
    lstm_static = {name: charlm_jax.score(lm, mode="stateful") for name, lm in lstms.items()}
    import gpt_peer

    scales = {}

    def gpt_scores(name, setting, end=None):
        model, recipe, _, ids, val_start, _ = peers[name]
        if name not in scales:
            scales[name] = gpt_peer.gradient_scale(model, ids, val_start, recipe)
        return gpt_peer.adaptive_log2_probs(model, ids, val_start + GPT_SKIP, scales[name], end=end, **setting)

    gpt_static = {name: gpt_scores(name, {"learning_rate": 0.0, "decay": 0.0}) for name in peers}

    print("sweep: LSTM", flush=True)

    heads = {name: tail_text(lm, args.sweep_chars + 1) for name, lm in lstms.items()}

    def lstm_gain(name, setting):
        adapted = charlm_jax.score(lstms[name], heads[name], mode="stateful", adapt=AdaptOptions(**setting))
        return bits(lstm_static[name][: len(adapted)]) - bits(adapted)

    lstm_grid = {**LSTM_GRID, "learning_rate": args.lstm_rates, "decay": args.decays, "segment": args.lstm_segments}
    gpt_grids = [{**GPT_GRID, "learning_rate": args.gpt_rates, "decay": args.gpt_decays}]
    if args.gpt_sgd_rates:
        gpt_grids.append({**GPT_SGD_GRID, "learning_rate": args.gpt_sgd_rates, "decay": args.gpt_decays})
    lstm_best, lstm_rows = sweep([lstm_grid], args.tune, lstm_gain)
    print("sweep: GPT", flush=True)

    def gpt_gain(name, setting):
        val_start = peers[name][4]
        n = args.sweep_chars
        adapted = gpt_scores(name, setting, end=val_start + GPT_SKIP + n)
        return bits(gpt_static[name][:n]) - bits(adapted)

    gpt_best, gpt_rows = sweep(gpt_grids, args.tune, gpt_gain)
    keys = ("rule", "learning_rate", "decay", "segment")
    lstm_options = AdaptOptions(**{k: lstm_best[k] for k in keys})
    gpt_setting = {k: gpt_best[k] for k in keys}

    books, book_source = book_figures(Path(args.book_from))
    rows, curves = {}, {}
    for name in args.texts:
        lstm_adaptive = charlm_jax.score(lstms[name], mode="stateful", adapt=lstm_options)
        gpt_adaptive = gpt_scores(name, gpt_setting)
        book = books.get(name, {})
        rows[name] = {
            "tuned_on": name in args.tune,
            "tail_chars": int(len(lstm_static[name]) + 1),
            "lstm_steps": lstms[name].step,
            "gpt_steps": peers[name][2],
            "book_static": book.get("stateful"),
            "book_window": book.get("window"),
            "book_steps": book.get("steps"),
            "race_recommended_steps": book.get("recommended_steps"),
            "race_gpt_steps": book.get("gpt_steps"),
            "lstm_static": bits(lstm_static[name]),
            "lstm_adaptive": bits(lstm_adaptive),
            "gpt_static": bits(gpt_static[name]),
            "gpt_adaptive": bits(gpt_adaptive),
            "gpt_window": peers[name][5],
        }
        r = rows[name]
        r["adaptive_gain"] = r["lstm_static"] - r["lstm_adaptive"]
        r["below_adapted_gpt"] = r["gpt_adaptive"] - r["lstm_adaptive"]
        r["below_book"] = None if r["book_static"] is None else r["book_static"] - r["lstm_adaptive"]
        r["pass"] = (
            r["adaptive_gain"] >= 0.1
            and r["below_adapted_gpt"] >= 0.1
            and (r["below_book"] is not None and r["below_book"] >= 0.4)
        )
        curves[name] = {"lstm": curve(lstm_static[name], lstm_adaptive), "gpt": curve(gpt_static[name], gpt_adaptive)}
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)

    # Cost: static against adaptive scoring of the first tuning text's whole tail, interleaved, each timed alone.
    name = args.tune[0]
    lm = lstms[name]
    charlm_jax.score(lm, mode="stateful", adapt=lstm_options)
    times = {"static": [], "adaptive": [], "gpt_static": [], "gpt_adaptive": []}
    for _ in range(args.time_repeats):
        for kind in times:
            begin = time.perf_counter()
            if kind == "static":
                charlm_jax.score(lm, mode="stateful")
            elif kind == "adaptive":
                charlm_jax.score(lm, mode="stateful", adapt=lstm_options)
            else:
                gpt_scores(name, gpt_setting if kind == "gpt_adaptive" else {"learning_rate": 0.0, "decay": 0.0})
            times[kind].append(time.perf_counter() - begin)
    tail = rows[name]["tail_chars"]
    per_100k = {k: statistics.median(v) / tail * 100_000 for k, v in times.items()}

    date = time.strftime("%Y-%m-%d")
    stem = args.tag or f"{date}-{platform_tag()}-dynamic-eval-race"
    command = (
        f"python benchmarks/dynamic_eval_race.py --texts {' '.join(args.texts)} --tune {' '.join(args.tune)} "
        f"--recipe {args.recipe} --seconds {args.seconds:g} --sweep-chars {args.sweep_chars} "
        f"--lstm-rates {' '.join(map(format, args.lstm_rates))} --lstm-segments {' '.join(map(str, args.lstm_segments))} "
        f"--decays {' '.join(map(format, args.decays))} --gpt-rates {' '.join(map(format, args.gpt_rates))} "
        f"--gpt-sgd-rates {' '.join(map(format, args.gpt_sgd_rates))} --gpt-decays {' '.join(map(format, args.gpt_decays))} "
        f"--time-repeats {args.time_repeats}"
    )
    data = {
        **record("dynamic_eval_race.py"),
        "seconds": args.seconds,
        "book_source": book_source,
        "lstm_chosen": dataclasses.asdict(lstm_options),
        "gpt_chosen": gpt_setting,
        "lstm_sweep": lstm_rows,
        "gpt_sweep": gpt_rows,
        "rows": rows,
        "seconds_per_100k_chars": per_100k,
        "cost_ratio": per_100k["adaptive"] / per_100k["static"],
        "gpt_cost_ratio": per_100k["gpt_adaptive"] / per_100k["gpt_static"],
        "gain_curves": curves,
        "train_wall_seconds": train_wall,
        "wall_seconds": time.perf_counter() - started,
    }
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        f"# Dynamic evaluation at {args.seconds:g} s, against the peers ({date})",
        "",
        f"Machine: {data['device']}; command: `{command}`. Each model trained {args.seconds:g} s (validation "
        f"excluded), alone; scored on the whole held-out tail (last 10 % of at most {args.chars:,} characters). "
        "LSTM: the recipe's best checkpoint, stateful. GPT: the peer's held-best, read 25 characters at a time as "
        "the last predictions of a 64-character window (its tail scored from the 65th character); 'GPT window' is "
        "its race metric, each character from the 60 before it. The book's static figure (stateful, of its 600 s "
        f"best checkpoint) is read from {book_source}.",
        "",
        f"Rule chosen on {', '.join(args.tune)} (first {args.sweep_chars:,} tail characters), then applied untouched: "
        f"LSTM rms lr {lstm_options.learning_rate:g}, decay {lstm_options.decay:g}, segment {lstm_options.segment}; "
        f"GPT {gpt_setting['rule']} lr {gpt_setting['learning_rate']:g}, decay {gpt_setting['decay']:g}, segment {gpt_setting['segment']}.",
        "",
        "| text | tuned on | book static | GPT window | GPT static | GPT adaptive | LSTM static | LSTM adaptive | "
        "adaptive gain | below adapted GPT | below book | steps LSTM / GPT (race file's) | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {'yes' if r['tuned_on'] else 'no'} | {fmt(r['book_static'])} | {fmt(r['gpt_window'])} | {fmt(r['gpt_static'])} | "
            f"{fmt(r['gpt_adaptive'])} | {fmt(r['lstm_static'])} | {fmt(r['lstm_adaptive'])} | "
            f"{r['adaptive_gain']:+.3f} | {r['below_adapted_gpt']:+.3f} | "
            f"{'-' if r['below_book'] is None else format(r['below_book'], '+.3f')} | "
            f"{r['lstm_steps']:,} / {r['gpt_steps']:,} ({r['race_recommended_steps'] or '-'} / {r['race_gpt_steps'] or '-'}) | "
            f"{'PASS' if r['pass'] else 'MISS'} |"
        )
    lines += [
        "",
        "Targets: adaptive gain >= 0.1, >= 0.1 below the adapted GPT, >= 0.4 below the book's static figure.",
        "",
        f"Cost ({args.tune[0]}'s tail, {tail:,} characters, median of {args.time_repeats}, interleaved), seconds per 100K "
        f"characters: LSTM static {per_100k['static']:.2f}, adaptive {per_100k['adaptive']:.2f} "
        f"({data['cost_ratio']:.1f}x); GPT static {per_100k['gpt_static']:.2f}, adaptive "
        f"{per_100k['gpt_adaptive']:.2f} ({data['gpt_cost_ratio']:.1f}x).",
        "",
    ]
    for family, table in (("LSTM", lstm_rows), ("GPT", gpt_rows)):
        lines += [
            f"{family} sweep (gain in bits/char on the tuning texts):",
            "",
            f"| rule | learning rate | decay | segment | {' | '.join(args.tune)} | mean |",
            "|---|---|---|---|" + "---|" * (len(args.tune) + 1),
            *[
                f"| {r['rule']} | {r['learning_rate']:g} | {r['decay']:g} | {r['segment']} | "
                + " | ".join(f"{r['gains'][t]:+.3f}" for t in args.tune)
                + f" | {r['mean_gain']:+.3f} |"
                for r in table
            ],
            "",
        ]
    write_results(stem, data, "\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False, sharey=True)
    for axis, (name, pair) in zip(axes[0], curves.items()):
        for family, values in pair.items():
            axis.plot(np.arange(len(values)) * STRETCH, values, label=f"{family}")
        axis.axhline(0, color="grey", lw=0.5)
        axis.set(title=name, xlabel="characters into the held-out tail")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"static - adaptive bits/char (per {STRETCH})")
    axes[0][0].legend()
    figure.suptitle(f"{data['device']}, {date}", fontsize=9)
    figure.tight_layout()
    figure.savefig(RESULTS / f"{stem}.png", dpi=110)
    print("\n".join(lines))
    print(f"wrote results/{stem}.json/.md/.png")


if __name__ == "__main__":
    main()
