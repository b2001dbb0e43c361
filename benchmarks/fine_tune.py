"""Fine-tuning against training from scratch for the same time, on texts of another kind than the source's.

For each text (the first 40K characters of each, by default) and budget, with each seed, interleaved:

* ``fine-tune``: ``charlm_jax.fine_tune`` from ``--source`` (a ``--recipe auto --time-limit 600`` run of pydoc),
  its settings, ``--lr`` and ``--new-rows`` when given, ``Limits(max_seconds=budget)``;
* ``scratch``: ``--recipe auto`` for the budget and the text's length, the best recipe this project has for it.

Each run's best checkpoint is scored on the text's whole held-out tail (the book's window figure, bits/char);
a fine-tuned run also on the first ``--source-chars`` characters of the source's own held-out tail, against
the source model itself (what fine-tuning keeps of the source's skill).

    python benchmarks/fine_tune.py --source runs/source --texts idle-notes python-source shakespeare \\
        --budgets 30 60 120 --seeds 0 1 --tag <date>-cpu-fine-tune
    python benchmarks/fine_tune.py --source runs/source --texts idle-notes --budgets 60 --seeds 0 \\
        --sweep lr=0.02,0.01,0.005 new_rows=mean,fresh --tag <date>-cpu-fine-tune-sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from charlm_jax.runtime.distributed import auto_cpu_devices, configure_cpu_devices

configure_cpu_devices(auto_cpu_devices(128))  # as `charlm-jax train` splits the CPU

from rich.console import Console  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax import Limits, fit, recipe_config  # noqa: E402
from charlm_jax.train.loop import fine_tune  # noqa: E402
from charlm_jax.use.lm import held_out_ids  # noqa: E402

from common import RESULTS, record  # noqa: E402
from race_texts import RACE_VAL_CHARS, race_text, validation_tail  # noqa: E402


def run_one(variant: dict, text_name: str, text: str, budget: float, seed: int, args) -> dict:
    """One run of a variant (``kind`` fine-tune or scratch, its overrides); its best scored on the tail."""
    out = Path(args.work_dir) / f"{text_name}-{variant['name']}-{budget:g}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = {"val_chars": RACE_VAL_CHARS, "seed": seed, "sample_length": 0, **variant.get("overrides", {})}
    limits, console, started = Limits(max_seconds=budget), Console(quiet=True), time.perf_counter()
    if variant["kind"] == "fine-tune":
        result = fine_tune(
            args.source,
            text,
            out,
            overrides=overrides,
            limits=limits,
            console=console,
            new_rows=variant.get("new_rows", "mean"),
        )
    else:
        config = recipe_config("auto", time_limit=budget, corpus_chars=len(text), **overrides)
        result = fit(config, text, out, limits=limits, console=console)
    if result.stop_reason.by_signal:
        raise SystemExit(f"{text_name} {variant['name']}: stopped by a signal; the results so far are saved")
    wall = time.perf_counter() - started
    best = charlm_jax.load(out / "best")
    row = {
        "text": text_name,
        "variant": variant["name"],
        "budget": budget,
        "seed": seed,
        "bits_per_char": float(charlm_jax.bits_per_char(best, validation_tail(text, best.config), mode="window")),
        "steps": int(result.state.step),
        "wall_seconds": round(wall, 1),
        "train_seconds": result.history[-1]["train_seconds"] if result.history else None,
        "new_characters": best.vocab.size - (args.source_vocab if variant["kind"] == "fine-tune" else best.vocab.size),
    }
    if variant["kind"] == "fine-tune":
        row["source_tail_bits_per_char"] = source_skill(best, args)
    print(json.dumps(row), flush=True)
    return row


def source_skill(lm, args) -> float:
    """Bits/char of ``lm`` on the first ``--source-chars`` characters of the source run's own held-out tail."""
    return float(charlm_jax.bits_per_char(lm, args.source_tail, mode="window"))


def variants(args) -> list[dict]:
    """The runs of each cell: scratch and fine-tune, or the sweep's fine-tune settings."""
    if not args.sweep:
        tuned = {
            "name": "fine-tune",
            "kind": "fine-tune",
            "new_rows": args.new_rows,
            "overrides": {"learning_rate": args.lr} if args.lr else {},
        }
        return [{"name": "scratch", "kind": "scratch"}, tuned]
    out = []
    for item in args.sweep:
        key, _, values = item.partition("=")
        for value in values.split(","):
            if key == "lr":
                out.append({"name": f"ft-lr{value}", "kind": "fine-tune", "overrides": {"learning_rate": float(value)}})
            elif key == "new_rows":
                out.append({"name": f"ft-{value}", "kind": "fine-tune", "new_rows": value})
            else:
                raise SystemExit(f"--sweep knows lr= and new_rows=, got {item!r}")
    return out


def summary(rows: list[dict]) -> dict:
    """Per text, budget and variant: the seeds' mean, spread and values; and fine-tune's gain over scratch."""
    cells: dict = {}
    for row in rows:
        cell = cells.setdefault(row["text"], {}).setdefault(f"{row['budget']:g}", {})
        cell.setdefault(row["variant"], []).append(row)
    out: dict = {}
    for text, budgets in cells.items():
        for budget, by_variant in budgets.items():
            entry = {}
            for variant, runs in by_variant.items():
                values = [r["bits_per_char"] for r in runs]
                entry[variant] = {"mean": statistics.mean(values), "spread": max(values) - min(values), "seeds": values}
                kept = [r["source_tail_bits_per_char"] for r in runs if "source_tail_bits_per_char" in r]
                if kept:
                    entry[variant]["source_tail_mean"] = statistics.mean(kept)
            if "scratch" in entry and "fine-tune" in entry:
                entry["gain"] = entry["scratch"]["mean"] - entry["fine-tune"]["mean"]
            out.setdefault(text, {})[budget] = entry
    return out


def markdown(data: dict) -> str:
    lines = [
        f"# Fine-tuning against scratch, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`",
        "",
        f"Source: `{data['source']}` (step {data['source_step']}), its own held-out tail "
        f"{data['source_tail_bits_per_char']:.3f} bits/char before fine-tuning.",
        "",
        "| text | budget s | variant | bits/char (mean) | spread | seeds | source tail after | gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for text, budgets in data["summary"].items():
        for budget, entry in budgets.items():
            for variant, cell in entry.items():
                if variant == "gain":
                    continue
                kept = f"{cell['source_tail_mean']:.3f}" if "source_tail_mean" in cell else ""
                gain = f"{entry['gain']:+.3f}" if variant == "fine-tune" and "gain" in entry else ""
                seeds = " / ".join(f"{v:.3f}" for v in cell["seeds"])
                lines.append(
                    f"| {text} | {budget} | {variant} | {cell['mean']:.3f} | {cell['spread']:.3f} | {seeds} | {kept} | {gain} |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="the run to fine-tune from")
    parser.add_argument("--texts", nargs="+", default=["idle-notes", "python-source", "shakespeare"])
    parser.add_argument("--chars", type=int, default=40_000, help="characters of each text (from its start)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[30, 60, 120])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning's learning rate (default: the source's)")
    parser.add_argument("--new-rows", default="mean", choices=("mean", "fresh"))
    parser.add_argument("--sweep", nargs="*", default=[], help="lr=A,B,... and/or new_rows=mean,fresh")
    parser.add_argument("--source-chars", type=int, default=20_000)
    parser.add_argument("--work-dir", default="/tmp/charlm-fine-tune")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    source = charlm_jax.load(args.source)
    args.source_vocab = source.vocab.size
    args.source_tail = source.vocab.decode(
        held_out_ids(source, charlm_jax.load_text(source.text.source))[: args.source_chars]
    )
    data = {
        **record("fine_tune.py", argv),
        "source": str(Path(args.source).resolve()),
        "source_step": source.step,
        "source_tail_bits_per_char": source_skill(source, args),
        "chars": args.chars,
        "rows": [],
    }
    stem = RESULTS / args.tag
    for seed in args.seeds:
        for text_name in args.texts:
            text = race_text(text_name, args.chars)
            for budget in args.budgets:
                for variant in variants(args):  # interleaved: each cell's variants run back to back
                    data["rows"].append(run_one(variant, text_name, text, budget, seed, args))
                    data["summary"] = summary(data["rows"])
                    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
