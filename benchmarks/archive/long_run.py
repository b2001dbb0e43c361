"""Evidence (b) of issue 6: the book's configuration trained for 60 epochs, unguarded and guarded.

The seeds show the book's recipe (LSTM 128, RMSprop 0.01, next-character objective) turning into
garbage and "e e e" after about epoch 40. This script trains that configuration on the first
``--chars`` characters of a corpus (100K by default, so 60 epochs fit on a 2-core CPU), once per
variant, and writes per-epoch validation bits per character, training loss, gradient norms,
skipped steps and a sample at temperature 0.5, then a table and a plot:

* ``unguarded``: the book exactly, with the non-finite guard turned off (``max_nonfinite_in_row=0``);
* ``keras2-eps``: the book exactly as the seeds ran it (Keras 2 adds RMSprop's epsilon after the
  square root), guard off;
* ``guarded``: the book's model, data and optimizer with this project's guards (non-finite guard,
  clipping at global norm 1.0, best checkpoint kept).

    python benchmarks/archive/long_run.py                       # three variants, ~20 min each on 2 CPU cores
    python benchmarks/archive/long_run.py --report-only         # rebuild table and plot from saved metrics

A run "collapses" at the first epoch whose training loss is not finite or more than
``COLLAPSE_MARGIN_NATS`` above the lowest before it: the seeds' garbage and "e e e" come with the
training loss climbing back towards the unigram entropy. Validation rising while training loss
keeps falling is overfitting (100K characters are few for 60 epochs), reported but not a collapse.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from charlm_jax import TrainConfig, fit, load_text
from charlm_jax.model.scoring import nats_to_bits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/common.py
from common import RESULTS, device_name

COLLAPSE_MARGIN_NATS = 0.5

# name -> TrainConfig overrides of the book's configuration.
VARIANTS: dict[str, dict] = {
    # The book with Keras 3's RMSprop (epsilon inside the square root), guard off.
    "unguarded": {"max_nonfinite_in_row": 0},
    # The book as the seeds ran it: Keras 2 adds epsilon after the square root; guard off.
    "keras2-eps": {"max_nonfinite_in_row": 0, "rmsprop_eps_in_sqrt": False},
    # The book's model, data and optimizer with this project's guards: updates with non-finite
    # gradients skipped, gradients clipped to global norm 1.0, the best epoch kept in <out>/best.
    # No early stopping, so all 60 epochs run.
    "guarded": {"clip_norm": 1.0, "max_nonfinite_in_row": 25},
}


def variant_config(name: str, epochs: int, seed: int) -> TrainConfig:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)}")
    return TrainConfig(epochs=epochs, seed=seed, temperatures=(0.5,), **VARIANTS[name])


def collapse_epoch(records: list[dict]) -> int | None:
    """First epoch whose training loss is non-finite or COLLAPSE_MARGIN_NATS above the lowest before it."""
    lowest = math.inf
    for record in records:
        loss = record.get("train_loss", math.nan)
        if not math.isfinite(loss) or loss > lowest + COLLAPSE_MARGIN_NATS:
            return record["epoch"]
        lowest = min(lowest, loss)
    return None


def run_variant(name: str, text: str, args) -> list[dict]:
    out = Path(args.work_dir) / name
    shutil.rmtree(out, ignore_errors=True)
    config = variant_config(name, args.epochs, args.seed)
    start = time.perf_counter()
    result = fit(config, text, out)
    print(f"{name}: {time.perf_counter() - start:.0f} s, {len(result.history)} epochs", flush=True)
    target = RESULTS / f"{args.tag}-long-run-{name}.jsonl"
    shutil.copyfile(out / "metrics.jsonl", target)
    return result.history


def report(variants: list[str], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"# Long run of the book's configuration, {args.chars:,} characters, {args.epochs} epochs",
        "",
        f"{args.tag}, {device_name()}, `python benchmarks/archive/long_run.py`",
        "",
        "| variant | best val bits/char (epoch) | last val bits/char | lowest / last train loss (nats) "
        "| collapse epoch | skipped steps | max grad norm |",
        "|---|---|---|---|---|---|---|",
    ]
    figure, (axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    samples = []
    for name in variants:
        path = RESULTS / f"{args.tag}-long-run-{name}.jsonl"
        if not path.exists():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        vals = [r.get("val_bits_per_char", math.nan) for r in records]
        finite = [(v, r["epoch"]) for v, r in zip(vals, records) if math.isfinite(v)]
        best, best_epoch = min(finite) if finite else (math.nan, None)
        collapsed = collapse_epoch(records)
        losses = [r["train_loss"] for r in records]
        lines.append(
            f"| {name} | {best:.3f} ({best_epoch}) | {vals[-1]:.3f} (epoch {records[-1]['epoch']}) | "
            f"{min(losses):.3f} / {losses[-1]:.3f} | "
            f"{collapsed if collapsed is not None else 'none'} | {records[-1].get('skipped_steps_total', 0)} | "
            f"{max(r.get('grad_norm_max', math.nan) for r in records):.3g} |"
        )
        axis.plot([r["epoch"] for r in records], vals, marker=".", label=name)
        loss_axis.plot([r["epoch"] for r in records], [nats_to_bits(x) for x in losses], marker=".", label=name)
        for r in records:
            if r["epoch"] in (1, 10, 20, 30, 40, 50, 60) or r is records[-1]:
                samples.append(
                    f"| {name} | {r['epoch']} | {r.get('val_bits_per_char', math.nan):.3f} | "
                    f"`{r.get('samples', {}).get('0.5', '')[:120]!r}` |"
                )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation bits per character")
    axis.set_title(f"Book configuration, {args.chars // 1000}K characters")
    axis.grid(alpha=0.3)
    axis.legend()
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss, bits per character")
    loss_axis.set_title("Training loss (a collapse would climb here)")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend()
    figure.tight_layout()
    figure.suptitle(device_name(), fontsize=9)
    figure.savefig(RESULTS / f"{args.tag}-long-run.png", dpi=120)
    lines += [
        "",
        f"Collapse: training loss more than {COLLAPSE_MARGIN_NATS} nats above its lowest so far, "
        "or not finite. Validation rising while training loss falls is overfitting.",
        "",
        "Samples at temperature 0.5 (first 120 characters):",
        "",
        "| variant | epoch | val bits/char | sample |",
        "|---|---|---|---|",
        *samples,
    ]
    (RESULTS / f"{args.tag}-long-run.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--chars", type=int, default=100_000, help="first N characters of the corpus")
    parser.add_argument("--corpus", default=None, help="built-in corpus name or path (default: built-in)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="/tmp/charlm-long-run")
    parser.add_argument("--tag", default=time.strftime("%Y-%m-%d"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        text = load_text(args.corpus)[: args.chars]
        for name in args.variants:
            run_variant(name, text, args)
    report(args.variants, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
