"""Evidence (a) of issue 6: validation bits per character against training seconds, per recipe.

Every recipe trains on the same corpus and the same split (the held-out 10 % tail, each
character predicted from the 60 before it, whatever the training objective) for the same
budget of training time, one after the other in this process, and is validated after every
epoch and once more when the budget ends. The training clock stops while validating, so the
comparison is quality per second of training. Target: after 600 s on 2 CPU cores the better
recipe is at least 0.3 bits per character below the book's.

    python benchmarks/recipes.py                        # book and fast, 600 s each (~25 min on 2 cores)
    python benchmarks/recipes.py --variants book fast dense-only --seconds 600
    python benchmarks/recipes.py --report-only          # rebuild table and plot from the saved JSON

``dense-only`` is an ablation: the book with only the objective changed.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import jax
from rich.console import Console

import charlm_jax
from charlm_jax import fit, load_text, recipe_config

sys.path.insert(0, str(Path(__file__).parent))
from bench import device_name, versions  # noqa: E402  (one description of the device for every result file)

RESULTS = Path(__file__).parent / "results"
TARGET_BITS = 0.3
# name -> (recipe, TrainConfig overrides)
VARIANTS = {
    "book": ("book", {}),
    "fast": ("fast", {}),
    "dense-only": ("book", {"objective": "dense"}),
}


def run_variant(name: str, text: str, args) -> dict:
    out = Path(args.work_dir) / name
    shutil.rmtree(out, ignore_errors=True)
    recipe, overrides = VARIANTS[name]
    if name == "fast":
        overrides = {**overrides, **json.loads(args.fast_overrides)}
    config = recipe_config(recipe, epochs=args.epochs, **overrides)
    wall = time.perf_counter()
    result = fit(config, text, out, stop_after_seconds=args.seconds, show_progress=False,
                 console=Console(quiet=True))
    points = [{"epoch": r["epoch"], "partial_epoch": r.get("partial_epoch", False), "step": r["step"],
               "train_seconds": r["train_seconds"], "val_bits_per_char": r["val_bits_per_char"],
               "train_loss": r["train_loss"], "learning_rate": r["learning_rate"],
               "sample_0.5": r.get("samples", {}).get("0.5", "")} for r in result.history]
    print(f"{name}: {points[-1]['val_bits_per_char']:.3f} bits/char after {points[-1]['train_seconds']:.0f} s "
          f"of training ({points[-1]['step']} steps; {time.perf_counter() - wall:.0f} s wall)", flush=True)
    return {"config": config.to_dict(), "stop_reason": result.stop_reason, "points": points,
            "best_epoch": result.best_epoch}


def final_bits(run: dict) -> float:
    """Validation of the best checkpoint the run holds at the end of its budget (<out>/best)."""
    return min(p["val_bits_per_char"] for p in run["points"])


def interpolate(points: list[dict], seconds: float) -> float | None:
    """A run's validation at ``seconds`` of training, linear between its measured points (None outside)."""
    for a, b in zip(points, points[1:]):
        if a["train_seconds"] <= seconds <= b["train_seconds"]:
            w = (seconds - a["train_seconds"]) / max(b["train_seconds"] - a["train_seconds"], 1e-9)
            return a["val_bits_per_char"] + w * (b["val_bits_per_char"] - a["val_bits_per_char"])
    return None


def report(data: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, run in runs.items():
        xs = [p["train_seconds"] for p in run["points"]]
        ys = [p["val_bits_per_char"] for p in run["points"]]
        axis.plot(xs, ys, marker="o", label=f"{name} ({ys[-1]:.3f} at {xs[-1]:.0f} s)")
    axis.set_xlabel("training seconds (validation excluded)")
    axis.set_ylabel("validation bits per character")
    axis.set_title(f"Recipes at equal time, {data['corpus_chars']:,} characters ({data['device']})")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=120)

    lines = [f"# Recipes at equal training time ({data['date']}, {data['device']})", "",
             f"`{data['command']}`; corpus: {data['corpus']} ({data['corpus_chars']:,} characters), "
             f"validation on the last 10 % (every character from the 60 before it); "
             f"jax {data['versions']['jax']}, flax {data['versions']['flax']}, optax {data['versions']['optax']}.", "",
             "| recipe | epoch | step | training seconds | learning rate | val bits/char | "
             "book at the same seconds (interpolated) | lower than book by |", "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        for p in run["points"]:
            epoch = f"{p['epoch']}{' (partial)' if p['partial_epoch'] else ''}"
            book = interpolate(runs["book"]["points"], p["train_seconds"]) if "book" in runs and name != "book" else None
            compare = f"{book:.3f} | {book - p['val_bits_per_char']:.3f}" if book is not None else " | "
            lines.append(f"| {name} | {epoch} | {p['step']} | {p['train_seconds']:.0f} | {p['learning_rate']:.2g} | "
                         f"{p['val_bits_per_char']:.3f} | {compare} |")
    if "book" in runs:
        lines += ["", f"At the end of the budget ({data['seconds']:.0f} s of training), validation of the best "
                  "checkpoint each run holds (`<out>/best`; the last point of each run is in the table):", ""]
        for name, run in runs.items():
            if name == "book":
                continue
            gain = final_bits(runs["book"]) - final_bits(run)
            verdict = "PASS" if gain >= TARGET_BITS else "MISS"
            lines.append(f"- {name}: {final_bits(run):.3f} vs book {final_bits(runs['book']):.3f} bits/char, "
                         f"{gain:.3f} lower; target >= {TARGET_BITS}: {verdict}")
    lines += ["", "Samples at temperature 0.5 at the end of the budget (first 160 characters):", ""]
    for name, run in runs.items():
        full = [p for p in run["points"] if p["sample_0.5"]]
        if full:
            lines.append(f"- {name}, epoch {full[-1]['epoch']}: `{full[-1]['sample_0.5'][:160]!r}`")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["book", "fast"], choices=list(VARIANTS))
    parser.add_argument("--seconds", type=float, default=600.0, help="training seconds per recipe")
    parser.add_argument("--epochs", type=int, default=7,
                        help="planned epochs (the cosine schedule's span; ~600 s here)")
    parser.add_argument("--corpus", default=None, help="built-in corpus name or text path (default: built-in)")
    parser.add_argument("--work-dir", default="/tmp/charlm-recipes")
    parser.add_argument("--tag", default=None, help="results file stem (default: <date>-<platform>-recipes)")
    parser.add_argument("--fast-overrides", default="{}", help="JSON of TrainConfig fields for the fast "
                        "recipe, to try a variant (default: none)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{time.strftime('%Y-%m-%d')}-{jax.devices()[0].platform}-recipes"
    stem = RESULTS / tag
    if args.report_only:
        report(json.loads(stem.with_suffix(".json").read_text()), stem)
        return 0
    text = load_text(args.corpus)
    data = {"date": time.strftime("%Y-%m-%d"), "device": device_name(), "command": " ".join(["python"] + sys.argv),
            "corpus": args.corpus or "built-in pydoc", "corpus_chars": len(text), "seconds": args.seconds,
            "versions": {**versions(), "charlm_jax": charlm_jax.__version__},
            "runs": {}}
    for name in args.variants:
        data["runs"][name] = run_variant(name, text, args)
        stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    report(data, stem)
    if "book" in data["runs"] and len(data["runs"]) > 1:
        best = min(final_bits(run) for name, run in data["runs"].items() if name != "book")
        return 0 if final_bits(data["runs"]["book"]) - best >= TARGET_BITS else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
