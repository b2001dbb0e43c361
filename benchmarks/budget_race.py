"""Recipes at short and long budgets, each run with several seeds: which command to run for which budget.

    python benchmarks/budget_race.py --budgets 60 --texts pydoc python-source --variants book s1x256 s1x128
    python benchmarks/budget_race.py --budgets 60 120 --variants book auto gpt gpt-bf16 --seeds 0 1 --tag T
    python benchmarks/budget_race.py --report-only --tag T

Each run trains one variant on one text for the budget's training seconds (validation excluded), as
``recipes.py`` does (same split, same metric: the best checkpoint scored on the whole held-out 10 % tail,
each character from the 60 before it), one after the other in this process, nothing else running, the
variants interleaved within each (budget, text, seed). ``auto`` is ``--recipe auto`` resolved for the
budget by the library itself (``recipe_config("auto", time_limit=...)``), so the race measures what a
user's command gets. The report gives every seed, the mean and the spread (largest minus smallest) of
each row; a difference between two variants counts only when it exceeds both rows' spreads.

Texts tuned on: pydoc and python-source. Shakespeare and idle-notes (IDLE's change logs and notes, the
text of another register) are raced with whatever was chosen there, untouched.
Writes results/<tag>.{json,md,png}; ``--append`` adds runs to the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import recipes as race  # noqa: E402  (sets the CPU devices before JAX starts, as `charlm-jax train` does)
from common import RESULTS, device_name, record  # noqa: E402

# The streams family the short budgets are explored in: fast's optimizer, schedule and clipping on
# consecutive streams, validated every 100 steps; each variant changes the model or the batch.
_STREAMS = {"batching": "streams", "eval_every_steps": 100, "early_stopping_patience": 0, "epochs": 1000}
VARIANTS: dict[str, tuple[str, dict]] = {
    "book": race.VARIANTS["book"],
    "streams": race.VARIANTS["streams"],
    "s2x192-d02": ("fast", {**_STREAMS, "dropout": 0.2}),
    "s1x256": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 256, "dropout": 0.1}),
    "s1x128": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 128, "dropout": 0.0}),
    "s1x128-bf16": (
        "fast",
        {**_STREAMS, "num_layers": 1, "hidden_size": 128, "dropout": 0.0, "compute_dtype": "bfloat16"},
    ),
    "s1x128-b64": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 128, "dropout": 0.0, "batch_size": 64}),
    "s1x128-b64-d02": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 128, "dropout": 0.2, "batch_size": 64}),
    "s1x128-b64-d04": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 128, "dropout": 0.4, "batch_size": 64}),
    "s1x192-b64": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 192, "dropout": 0.1, "batch_size": 64}),
    "s1x192": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 192, "dropout": 0.1}),
    "s1x192-bf16": (
        "fast",
        {**_STREAMS, "num_layers": 1, "hidden_size": 192, "dropout": 0.1, "compute_dtype": "bfloat16"},
    ),
    "s1x256-b64": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 256, "dropout": 0.1, "batch_size": 64}),
    "s1x256-bf16": (
        "fast",
        {**_STREAMS, "num_layers": 1, "hidden_size": 256, "dropout": 0.1, "compute_dtype": "bfloat16"},
    ),
    "s1x256-avg": ("fast", {**_STREAMS, "num_layers": 1, "hidden_size": 256, "dropout": 0.1, "average_decay": 0.995}),
    "book-avg": ("book", {"epochs": 100, "eval_every_steps": 800, "average_decay": 0.999}),
    "auto": ("auto", {}),
    "gpt": race.VARIANTS["gpt"],
    "gpt-bf16": ("gpt", {"autocast": True}),
    "gpt-dropout": race.VARIANTS["gpt-dropout"],
    "gpt-dropout-bf16": ("gpt", {**race.VARIANTS["gpt-dropout"][1], "autocast": True}),
}
TEXTS = ("pydoc", "python-source", "shakespeare", "idle-notes")


def held(run: dict) -> float:
    return run["best_val_bits_per_char"]


def run_one(variant: str, text_name: str, text: str, budget: float, seed: int, args) -> dict:
    settings = argparse.Namespace(
        seconds=budget,
        work_dir=args.work_dir,
        seed=seed,
        stateful=False,
        lstm_overrides={"seed": seed},
    )
    started = time.perf_counter()
    run = race.run_variant(variant, text_name, text, settings, spec=VARIANTS[variant])
    run.pop("model", None)
    run["seed"], run["wall_seconds"] = seed, round(time.perf_counter() - started, 1)
    return run


def rows_of(data: dict) -> list[dict]:
    """One row per (budget, text, variant): every seed's best, their mean and spread."""
    rows = []
    for budget, texts in data["runs"].items():
        for text_name, variants in texts.items():
            for variant, seeds in variants.items():
                values = [held(seeds[s]) for s in sorted(seeds)]
                rows.append(
                    {
                        "budget": float(budget),
                        "text": text_name,
                        "variant": variant,
                        "seeds": sorted(seeds),
                        "values": values,
                        "mean": statistics.fmean(values),
                        "spread": max(values) - min(values),
                        "steps": [seeds[s]["points"][-1]["step"] for s in sorted(seeds)],
                    }
                )
    return rows


def verdicts(rows: list[dict], recommended: str) -> list[dict]:
    """Per (budget, text): the recommended variant against the book and the best GPT raced."""
    out = []
    keys = sorted({(r["budget"], r["text"]) for r in rows})
    for budget, text_name in keys:
        here = {r["variant"]: r for r in rows if r["budget"] == budget and r["text"] == text_name}
        if recommended not in here:
            continue
        ours = here[recommended]
        peers = [r for v, r in here.items() if v.startswith("gpt")]
        best_peer = min(peers, key=lambda r: r["mean"]) if peers else None
        verdict = {"budget": budget, "text": text_name, "ours": ours["mean"], "spread": ours["spread"]}
        if "book" in here:
            verdict["below_book"] = here["book"]["mean"] - ours["mean"]
            verdict["book_spread"] = here["book"]["spread"]
        if best_peer is not None:
            verdict["best_peer"] = best_peer["variant"]
            verdict["below_peer"] = best_peer["mean"] - ours["mean"]
            verdict["peer_spread"] = best_peer["spread"]
        out.append(verdict)
    return out


def report(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(data)
    budgets = sorted({r["budget"] for r in rows})
    lines = [
        f"# Recipes per budget, several seeds ({data['date']}, {data['device']})",
        "",
        f"`{data['command']}`; texts cut to {data['chars']:,} characters, last 10 % held out; "
        f"jax {data['versions']['jax']}. Each value is a run's best checkpoint scored on the whole held-out "
        "tail (bits/char, each character from the 60 before it); spread = largest minus smallest seed.",
        "",
        *(f"Note: {note}\n" for note in data.get("notes", [])),
        "| budget s | text | variant | seeds | bits/char per seed | mean | spread | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget"], TEXTS.index(r["text"]) if r["text"] in TEXTS else 9, r["mean"])):
        lines.append(
            f"| {r['budget']:.0f} | {r['text']} | {r['variant']} | {','.join(map(str, r['seeds']))} | "
            f"{' / '.join(f'{v:.3f}' for v in r['values'])} | {r['mean']:.3f} | {r['spread']:.3f} | "
            f"{' / '.join(f'{s:,}' for s in r['steps'])} |"
        )
    judged = verdicts(rows, data.get("recommended", "auto"))
    if judged:
        lines += ["", f"`{data.get('recommended', 'auto')}` against the book and the best GPT raced (means):", ""]
        for v in judged:
            parts = [f"- {v['budget']:.0f} s, {v['text']}: {v['ours']:.3f} (spread {v['spread']:.3f})"]
            if "below_book" in v:
                parts.append(f"{v['below_book']:+.3f} below the book (its spread {v['book_spread']:.3f})")
            if "below_peer" in v:
                parts.append(f"{v['below_peer']:+.3f} below {v['best_peer']} (its spread {v['peer_spread']:.3f})")
            lines.append("; ".join(parts))
    figure, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.2), squeeze=False)
    for axis, budget in zip(axes[0], budgets):
        here = [r for r in rows if r["budget"] == budget]
        texts = [t for t in TEXTS if any(r["text"] == t for r in here)]
        variants = sorted({r["variant"] for r in here})
        for offset, variant in enumerate(variants):
            for r in (r for r in here if r["variant"] == variant):
                x = texts.index(r["text"]) + (offset - len(variants) / 2) * 0.08
                axis.scatter([x] * len(r["values"]), r["values"], s=14, color=f"C{offset}")
            axis.scatter([], [], color=f"C{offset}", label=variant)
        axis.set_xticks(range(len(texts)), texts)
        axis.set(ylabel="best validation bits/char (each seed a dot)", title=f"{budget:.0f} s of training")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"{data['device']}, {data['date']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=110)
    data["rows"], data["verdicts"] = rows, judged
    # The same, keyed by name, for the documents' figures: summary[budget][text][variant], verdict[budget][text].
    data["summary"] = {}
    for r in rows:
        data["summary"].setdefault(f"{r['budget']:g}", {}).setdefault(r["text"], {})[r["variant"]] = {
            "mean": r["mean"],
            "spread": r["spread"],
            "min": min(r["values"]),
            "max": max(r["values"]),
            "steps_mean": statistics.fmean(r["steps"]),
        }
    data["verdict"] = {}
    for v in judged:
        data["verdict"].setdefault(f"{v['budget']:g}", {})[v["text"]] = v
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", nargs="+", type=float, default=[60.0, 120.0])
    parser.add_argument("--texts", nargs="+", default=list(TEXTS), choices=list(TEXTS))
    parser.add_argument("--variants", nargs="+", default=["book", "auto", "gpt", "gpt-bf16"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--chars", type=int, default=600_000)
    parser.add_argument("--recommended", default="auto")
    parser.add_argument("--work-dir", default="/tmp/charlm-budget-race")
    parser.add_argument("--tag", default=None, help="results file stem (default: <date>-cpu-budget-race)")
    parser.add_argument("--append", action="store_true", help="add these runs to the results file")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    stem = RESULTS / (args.tag or f"{time.strftime('%Y-%m-%d')}-cpu-budget-race")
    command = " ".join(["python", "benchmarks/budget_race.py", *sys.argv[1:]])
    if args.report_only:
        report(json.loads(stem.with_suffix(".json").read_text()), stem)
        return 0
    if args.append and stem.with_suffix(".json").exists():
        data = json.loads(stem.with_suffix(".json").read_text())
        if (data["chars"], data["device"]) != (args.chars, device_name()):
            raise SystemExit(f"{stem}.json was made with other settings or on another device: use another --tag")
        data["command"] += "; " + command
    else:
        data = {
            **record("budget_race.py"),
            "chars": args.chars,
            "text_chars": {},
            "runs": {},
        }
    data["recommended"] = args.recommended
    for budget in args.budgets:
        for text_name in args.texts:
            text = race.race_text(text_name, args.chars)
            data["text_chars"][text_name] = len(text)
            for seed in args.seeds:
                for variant in args.variants:
                    run = run_one(variant, text_name, text, budget, seed, args)
                    runs = data["runs"].setdefault(f"{budget:g}", {}).setdefault(text_name, {})
                    runs.setdefault(variant, {})[str(seed)] = run
                    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    report(data, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
