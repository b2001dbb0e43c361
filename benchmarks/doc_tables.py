"""The tables and differences the documents show, derived from the result files into one file.

    python benchmarks/doc_tables.py            # rewrite results/derived-doc-figures.json
    python benchmarks/doc_tables.py --check    # exit 1 if the file differs from what its sources give

A table that gathers several races (the 600 s race of each text, the 60 s race and its re-runs) is built here,
every cell formatted once, and written with the stems it read; a document shows each with one
``<!--table derived-doc-figures tables.NAME-->`` marker (``scripts/render_figures.py``), and the differences
prose quotes (``auto`` below the book, one loop's time over another's, ...) are plain values under ``derived``,
so a figure marker is always a look-up, never arithmetic.
Nothing here is measured: rerun a race, then this, then ``scripts/render_figures.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "derived-doc-figures"
RACE_60 = "2026-12-02-cpu-budget-race"
RACE_60_NOTES, RACE_60_NOTES_FITTED = (
    "2026-12-03-cpu-budget-race-60-idle-notes",
    "2026-12-03-cpu-budget-race-60-idle-notes-fitted",
)
RACE_120, RACE_120_NOTES_FITTED = "2026-12-03-cpu-budget-race-120", "2026-12-03-cpu-budget-race-120-idle-notes-fitted"
RECIPES_600 = "2026-11-30-cpu-recipes"
RACES_600 = {
    "pydoc": ("pydoc", "2026-12-04-cpu-budget-race-600-pydoc"),
    "shakespeare": ("Shakespeare", "2026-12-03-cpu-budget-race-600-shakespeare"),
    "python-source": ("Python sources", "2026-12-04-cpu-budget-race-600-python-source"),
    "idle-notes": ("IDLE's notes, not tuned on", "2026-12-03-cpu-budget-race-600-idle-notes"),
}
BENCH, GENERATION = "2026-12-02-cpu", "2026-11-30-cpu-generation"
DYNAMIC_EVAL, DYNAMIC_EVAL_RACE = "2026-12-02-cpu-dynamic-eval", "2026-12-02-cpu-dynamic-eval-race"
WALL_60 = "2026-12-05-cpu-wall-clock-anneal"  # windows validation; auto, auto --past-best stop, book
WALL_60_RACE = "2026-12-05-cpu-wall-clock-60-stateful-race"  # auto as it is (stateful validation), book, the GPT
PASSES_DROPOUT = "2026-12-05-cpu-wall-clock-passes-dropout-300"  # the ten-minute tier's dropout for many passes
WALL_LABELS = {
    "pydoc": "pydoc", "shakespeare": "Shakespeare", "python-source": "Python sources", "idle-notes": "IDLE's notes",
    "numpy-license": "numpy's licence, named before the runs, not tuned on",
}  # fmt: skip
TEXT_LABELS = {
    "pydoc": "pydoc",
    "shakespeare": "Shakespeare",
    "python-source": "Python sources",
    "idle-notes": "IDLE's notes",
}


def load(stem: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def ranged(cell: dict[str, Any]) -> str:
    """A race cell as 'mean (lowest–highest)'."""
    return f"{cell['mean']:.3f} ({cell['min']:.3f}–{cell['max']:.3f})"


def race_60() -> dict[str, Any]:
    summary = load(RACE_60)["summary"]["60"]
    labels = {
        "pydoc": "pydoc (tuned on)",
        "python-source": "python-source (tuned on)",
        "shakespeare": "Shakespeare (not tuned on)",
        "idle-notes": "idle-notes (not tuned on), `auto` without the small-text rule (dropout 0; seed 0's schedule "
        "fitted on a compiling block, marked in its file)",
    }
    rows = []
    for text, label in labels.items():
        cells = summary[text]
        ours = cells["auto" if "auto" in cells else "auto-d0"]  # idle-notes raced the tier before its small-text rule
        better_gpt = min(cells["gpt"]["mean"], cells["gpt-bf16"]["mean"])
        rows.append(
            [label, *(ranged(cell) for cell in (cells["book"], ours, cells["gpt"], cells["gpt-bf16"])),
             f"{cells['book']['mean'] - ours['mean']:+.3f}", f"{better_gpt - ours['mean']:+.3f}"]
        )  # fmt: skip
    fitted, notes = load(RACE_60_NOTES_FITTED)["summary"]["60"]["idle-notes"], load(RACE_60_NOTES)["summary"]["60"]
    rows.append(
        ["idle-notes, `auto` as it is (dropout 0.4; another machine, four seeds; the GPTs raced there that morning)",
         ranged(fitted["book"]), ranged(fitted["auto"]), ranged(notes["idle-notes"]["gpt"]),
         ranged(notes["idle-notes"]["gpt-bf16"]), f"{fitted['book']['mean'] - fitted['auto']['mean']:+.3f}", "see below"]
    )  # fmt: skip
    header = ["text", "`book`", "`auto`", "`gpt`", "`gpt-bf16`", "`auto` below `book`", "`auto` below the better GPT"]
    return {"header": header, "rows": rows}


def race_120() -> dict[str, Any]:
    data = load(RACE_120)
    summary, verdict = data["summary"]["120"], data["verdict"]["120"]
    labels = {
        "pydoc": "pydoc (tuned on)",
        "python-source": "python-source (tuned on)",
        "shakespeare": "Shakespeare (not tuned on)",
        "idle-notes": "idle-notes (not tuned on; `auto`'s seed 0 fitted its schedule on a compiling block, marked in "
        "its file)",
    }
    rows = [
        [label, *(ranged(summary[text][v]) for v in ("book", "auto", "gpt")),
         f"{verdict[text]['below_book']:+.3f}", f"{verdict[text]['below_peer']:+.3f}"]
        for text, label in labels.items()
    ]  # fmt: skip
    fitted = load(RACE_120_NOTES_FITTED)["summary"]["120"]["idle-notes"]["auto"]
    rows.append(
        [f"idle-notes, `auto` with its schedule fitted on a block that compiled nothing (run after the race, same "
         f"machine, [results](../benchmarks/results/{RACE_120_NOTES_FITTED}.md))", "as above", ranged(fitted),
         "as above", "", ""]
    )  # fmt: skip
    return {"header": ["text", "`book`", "`auto`", "`gpt`", "`auto` below `book`", "`auto` below `gpt`"], "rows": rows}


def recipes_600() -> tuple[dict[str, Any], dict[str, Any]]:
    """The one-seed race of the fixed recipes and the GPTs (rows); each variant's margin below the book, its
    margin over the GPTs and its milliseconds per step."""
    data = load(RECIPES_600)
    texts, chars = data["texts"], data["text_chars"]
    rows, below, per_step = [], {}, {}
    for text in TEXT_LABELS:
        variants = texts[text]
        book = variants["book"]["best_val_bits_per_char"]
        for variant in (name for name in ("book", "fast", "streams", "gpt", "gpt-dropout") if name in variants):
            run = variants[variant]
            last = run["points"][-1]
            name = f"`{variant}`" + (" (raced after the others)" if variant == "fast" else "")
            margin = book - run["best_val_bits_per_char"]
            below.setdefault(text, {})[variant] = margin
            rows.append(
                [f"{text} ({chars[text]:,})", name, f"**{run['best_val_bits_per_char']:.3f}**", f"{margin:+.3f}",
                 f"{last['step']:,}", f"{last['train_seconds'] * 1e3 / last['step']:.0f} ms"]
            )  # fmt: skip
            per_step.setdefault(text, {})[variant] = last["train_seconds"] * 1e3 / last["step"]
    header = ["text (characters)", "variant", "best, whole tail (bits/char)", "below `book`", "steps", "per step"]
    over_gpt = {
        text: {peer: runs[peer]["best_val_bits_per_char"] - runs["streams"]["best_val_bits_per_char"]
               for peer in ("gpt", "gpt-dropout")}
        for text, runs in texts.items()
    }  # fmt: skip
    return {"header": header, "rows": rows}, {"below_book": below, "streams_below": over_gpt, "ms_per_step": per_step}


def races_600() -> tuple[dict[str, Any], dict[str, Any]]:
    """Every text's two-seed 600 s race: the summary table, and one small table per text."""
    rows, per_text = [], {}
    for text, (label, stem) in RACES_600.items():
        data = load(stem)
        summary, verdict = data["summary"]["600"][text], data["verdict"]["600"][text]
        rows.append(
            [f"[{label}](../benchmarks/results/{stem}.md) ({data['text_chars'][text]:,})",
             *(f"{summary[v]['mean']:.3f}" for v in ("book", "auto", "gpt", "gpt-dropout")),
             f"{verdict['below_book']:.3f}", f"{verdict['below_peer']:.3f}"]
        )  # fmt: skip
        per_text[text] = {
            "header": ["`book`", "`auto`", "`gpt`", "`gpt-dropout`"],
            "rows": [
                [
                    f"{ranged(summary[v])}, {summary[v]['steps_mean']:,.0f} updates"
                    for v in ("book", "auto", "gpt", "gpt-dropout")
                ]
            ],
        }
    header = ["text (characters)", "`--recipe book`", "`--recipe auto --time-limit 600`",
              "a small GPT (nanoGPT's CPU recipe, PyTorch)", "the GPT with dropout 0.2", "`auto` below the book",
              "`auto` below the better GPT"]  # fmt: skip
    return {"header": header, "rows": rows}, per_text


def ratio(data: dict[str, Any], over: str, under: str) -> float:
    return path_value(data, over) / path_value(data, under)


def path_value(data: Any, path: str) -> float:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return float(data)


def speed_ratios() -> dict[str, Any]:
    """The speed ratios README.md and docs/benchmarks.md quote (2026-12-02-cpu, 2026-11-30-cpu-generation)."""
    bench, generation = load(BENCH), load(GENERATION)
    api = "public_api.{}.per_char_s"
    return {
        "training_over_torch": ratio(bench, "training.charlm_jax.median_s", "training.torch.median_s"),
        "book_loop_over_api": ratio(bench, api.format("book_loop"), api.format("stateful_1_inverse_cdf")),
        "book_loop_over_api_gumbel": ratio(bench, api.format("book_loop"), api.format("stateful_1_gumbel")),
        "four_temperatures_over_one": ratio(
            bench, "public_api.stateful_4temps_inverse_cdf.median_s", "public_api.stateful_1_inverse_cdf.median_s"
        ),
        "four_temperatures_one_device_over_one": ratio(
            bench,
            "public_api.stateful_4temps_one_device_inverse_cdf.median_s",
            "public_api.stateful_1_inverse_cdf.median_s",
        ),
        "generation_book_loop_over_api": ratio(generation, "single.book_loop.us_per_char", "single.api_1.us_per_char"),
        "generation_four_over_one": ratio(generation, "single.api_4temps.us_per_char", "single.api_1.us_per_char"),
        "generation_four_mesh_over_one": ratio(
            generation, "single.api_4temps_mesh.us_per_char", "single.api_1.us_per_char"
        ),
    }


def dynamic_eval_gains() -> dict[str, Any]:
    """docs/generation.md's dynamic-evaluation differences (2026-12-02-cpu-dynamic-eval and its race)."""
    applied, race = load(DYNAMIC_EVAL)["applied"], load(DYNAMIC_EVAL_RACE)["lstm_sweep"]
    return {
        "static_minus_adaptive": {text: row["static"] - row["adaptive"] for text, row in applied.items()},
        "sweep_11_minus_10": race[11]["mean_gain"] - race[10]["mean_gain"],
    }


def race_margins() -> dict[str, Any]:
    """Per text of the two-seed 600 s races: auto below the book and each GPT, and the GPTs' update ratio."""
    margins = {}
    for text, (_, stem) in RACES_600.items():
        cells = load(stem)["summary"]["600"][text]
        margins[text] = {
            "below_book": cells["book"]["mean"] - cells["auto"]["mean"],
            "below_gpt": cells["gpt"]["mean"] - cells["auto"]["mean"],
            "below_gpt_dropout": cells["gpt-dropout"]["mean"] - cells["auto"]["mean"],
            "below_better_gpt": min(cells["gpt"]["mean"], cells["gpt-dropout"]["mean"]) - cells["auto"]["mean"],
            "gpt_updates_over_dropout": cells["gpt"]["steps_mean"] / cells["gpt-dropout"]["steps_mean"],
        }
    return margins


def spread(cell: dict[str, Any]) -> str:
    return f"{cell['tail_mean']:.3f} ({cell['tail_spread']:.3f})"


def wall_clock_tables(stem: str, budget: str) -> dict[str, Any]:
    """The wall-clock race (benchmarks/wall_clock.py): the whole of it for docs/recipes.md, auto against the book
    for README.md."""
    summary = load(stem)["summary"][budget]
    stop = "auto:past-best=stop"
    full, short = [], []
    for text, label in WALL_LABELS.items():
        row = summary[text]
        auto, book = row["auto"], row["book"]
        below = book["tail_mean"] - auto["tail_mean"]
        full.append(
            [label, spread(auto), spread(row[stop]) if stop in row else "", spread(book), f"{below:+.3f}",
             f"{auto['wall_max']:.1f} / {book['wall_max']:.1f}", f"{auto['eval_share_max']:.0%}",
             f"{auto['gap_max']:+.3f}" + (f" / {row[stop]['gap_max']:+.3f}" if stop in row else ""),
             f"{auto['rewinds']}, {auto['early_stops']}"]
        )  # fmt: skip
        gpts = [row["gpt"]] if "gpt" in row else []
        short.append(
            [label, spread(auto), spread(book), *map(spread, gpts), f"{below:+.3f}",
             *(f"{gpt['tail_mean'] - auto['tail_mean']:+.3f}" for gpt in gpts),
             f"{max(cell['wall_max'] for cell in (auto, book, *gpts)):.1f}"]
        )  # fmt: skip
    with_gpt = "gpt" in summary[next(iter(WALL_LABELS))]
    return {
        "full": {
            "header": ["text", "`auto`", "`auto --past-best stop`", "`book`", "`auto` below `book`",
                       "longest run s, auto / book", "validation share, auto", "gap, auto / stop",
                       "auto runs rewound, ended early (of 2)"],
            "rows": full,
        },
        "short": {
            "header": ["text", f"`--recipe auto --time-limit {budget}`", f"`--recipe book --time-limit {budget}`",
                       *(["the small GPT, same wall clock"] if with_gpt else []), "`auto` below the book",
                       *(["`auto` below the GPT"] if with_gpt else []), "longest run, s"],
            "rows": short,
        },
    }  # fmt: skip


def passes_dropout() -> dict[str, Any]:
    """The dropout probe of the ten-minute tier's model on a text read ~210 times (its variants' names hold dots,
    which a figure marker's path cannot): one row per dropout."""
    cells = load(PASSES_DROPOUT)["summary"]["300"]["idle-notes"]
    rows = []
    for variant, cell in cells.items():
        dropout = variant.split("dropout=")[1].split(",")[0]
        rows.append([dropout, f"{cell['tail_mean']:.3f}", f"{cell['gap_max']:+.3f}", f"{cell['wall_max']:.0f}"])
    return {
        "header": ["dropout", "bits/char on the tail", "gap (last - best)", "ended at, s (rewound, annealed)"],
        "rows": rows,
    }


def derive() -> dict[str, Any]:
    recipes_table, recipes_derived = recipes_600()
    seeds_table, per_text = races_600()
    return {
        "what": "derived from the stems in 'sources' by benchmarks/doc_tables.py; nothing measured here",
        "sources": sorted({RACE_60, RACE_60_NOTES, RACE_60_NOTES_FITTED, RACE_120, RACE_120_NOTES_FITTED, RECIPES_600,
                           BENCH, GENERATION, DYNAMIC_EVAL, DYNAMIC_EVAL_RACE, WALL_60, WALL_60_RACE, PASSES_DROPOUT,
                           *(s for _, s in RACES_600.values())}),
        "tables": {"race-60": race_60(), "race-120": race_120(), "recipes-600": recipes_table,
                   "wall-60-full": wall_clock_tables(WALL_60, "60")["full"],
                   "wall-60-race": wall_clock_tables(WALL_60_RACE, "60")["short"], "passes-dropout": passes_dropout(),
                   "races-600": seeds_table, **{f"race-600-{text}": table for text, table in per_text.items()}},
        "derived": {"recipes-600": recipes_derived, "races-600": race_margins(), "speed": speed_ratios(),
                    "dynamic-eval": dynamic_eval_gains()},
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    path = RESULTS / f"{STEM}.json"
    text = json.dumps(derive(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path.name} differs from its sources: run python benchmarks/doc_tables.py")
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
