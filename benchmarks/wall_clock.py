"""A time budget is the wall clock: each run is the README's command, timed from its launch to its exit.

    python benchmarks/wall_clock.py --budgets 60 --texts pydoc shakespeare --variants auto book --seeds 0 1

Each run is ``charlm-jax train --text FILE --out DIR --recipe VARIANT --time-limit T --no-progress`` in a child
process (its wall time counts the interpreter, JAX's start, compiling, validating and checkpointing). After it
exits, this process scores the run's best checkpoint on the whole held-out tail (each character from the 60
before it: the book's figure) and reads its ``metrics.jsonl``: the best and the last validation (the
overfitting gap is last minus best), the seconds the records took (validation, samples, checkpoints), the
steps, and whether it stopped early. The report gives every seed, the mean, the wall time over the budget, and
``auto`` against ``book`` at the same wall time. Texts: the races' (``race_texts.race_text``: pydoc, shakespeare,
python-source, idle-notes) and ``numpy-license`` (numpy's LICENSE.txt, a legal text shipped with the numpy
wheel: a register none of the recipes was tuned on, named before these runs). Runs one at a time, the variants
interleaved within each (budget, text, seed); nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, record, write_results
from race_texts import race_text

TEXTS = ("pydoc", "shakespeare", "python-source", "idle-notes", "numpy-license")


def variant_flags(variant: str) -> list[str]:
    """``RECIPE`` or ``RECIPE:flag=value,...`` (e.g. ``auto:past-best=stop``): the train flags of a variant."""
    recipe, _, extra = variant.partition(":")
    flags = ["--recipe", recipe]
    for pair in filter(None, extra.split(",")):
        name, _, value = pair.partition("=")
        flags += [f"--{name}", value]
    return flags


GPT_VARIANTS = ("gpt", "gpt-dropout")  # the small GPT peer (gpt_wall.py), timed the same way


def run_gpt(variant: str, text_path: Path, budget: float, seed: int, out: Path) -> dict:
    """The GPT peer in a child process under the same wall-clock budget; its scoring of the tail not counted."""
    launched = time.time()
    command = [
        sys.executable, str(Path(__file__).resolve().parent / "gpt_wall.py"), "--text", str(text_path),
        "--out", str(out), "--time-limit", f"{budget:g}", "--seed", str(seed), "--launched", repr(launched),
        *(["--dropout"] if variant == "gpt-dropout" else []),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    result = json.loads((out / "result.json").read_text())
    wall = result["trained_at"] - launched
    return {
        "wall_seconds": round(wall, 2),
        "steps": result["steps"],
        "train_seconds": result["train_seconds"],
        "records": result["records"],
        "record_seconds": round(wall - result["train_seconds"], 1),
        "eval_seconds": round(wall - result["train_seconds"], 1),  # start-up included: the GPT's is short
        "best_val": result["best_val"],
        "last_val": result["last_val"],
        "early_stop": False,
        "rewound": False,
        "tail_bits": result["tail_bits"],
    }


def run_one(variant: str, text_path: Path, budget: float, seed: int, out: Path) -> dict:
    command = [
        sys.executable, "-m", "charlm_jax.cli", "train", "--text", str(text_path), "--out", str(out),
        *variant_flags(variant), "--time-limit", f"{budget:g}", "--seed", str(seed), "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "val_bits_per_char" in r]
    return {
        "wall_seconds": round(wall, 2),
        "steps": records[-1]["step"],
        "train_seconds": records[-1]["train_seconds"],
        "records": len(records),
        "record_seconds": round(wall - records[-1]["train_seconds"], 1),
        "eval_seconds": round(sum(r.get("eval_seconds", 0.0) for r in records), 1),
        "best_val": min(r["val_bits_per_char"] for r in scored),
        "last_val": scored[-1]["val_bits_per_char"],
        "early_stop": "early stopping" in finished.stdout,
        "rewound": "rewound to it" in finished.stdout,
        "last_line": finished.stdout.strip().splitlines()[-1][:200],
    }


def tail_bits(out: Path, text: str) -> float:
    """The best checkpoint on the whole held-out tail, window mode: what `charlm-jax eval` prints."""
    import charlm_jax
    from charlm_jax.model.scoring import score_ids
    from charlm_jax.use.lm import held_out_ids

    lm = charlm_jax.load(out / "best")
    return float(-score_ids(lm.params, lm.model, held_out_ids(lm, text), "window", lm.config.maxlen).mean())


def summarise(runs: list[dict]) -> dict:
    cells: dict = {}
    for run in runs:
        cells.setdefault(f"{run['budget']:g}", {}).setdefault(run["text"], {}).setdefault(run["variant"], []).append(
            run
        )
    summary: dict = {}
    for budget, texts in cells.items():
        for text, variants in texts.items():
            row = {}
            for variant, group in variants.items():
                row[variant] = {
                    "tail_mean": statistics.mean(r["tail_bits"] for r in group),
                    "tail_spread": max(r["tail_bits"] for r in group) - min(r["tail_bits"] for r in group),
                    "wall_max": max(r["wall_seconds"] for r in group),
                    "wall_over_budget_max": max(r["wall_seconds"] / float(budget) for r in group),
                    "gap_max": max(r["last_val"] - r["best_val"] for r in group),
                    "record_share_max": max(r["record_seconds"] / r["wall_seconds"] for r in group),
                    "eval_share_max": max(r["eval_seconds"] / r["wall_seconds"] for r in group),
                    "early_stops": sum(r["early_stop"] for r in group),
                    "rewinds": sum(r.get("rewound", False) for r in group),
                    "seeds": len(group),
                }
            if "auto" in row and "book" in row:
                row["auto_below_book"] = row["book"]["tail_mean"] - row["auto"]["tail_mean"]
            peers = [row[name]["tail_mean"] for name in GPT_VARIANTS if name in row]
            if "auto" in row and peers:
                row["auto_below_better_gpt"] = min(peers) - row["auto"]["tail_mean"]
            summary.setdefault(budget, {})[text] = row
    return summary


def results_table(summary: dict) -> dict:
    """Every (budget, text, variant) cell, and auto below book where both ran: the table documents show whole."""
    header = ["budget s", "text", "variant", "bits/char (spread)", "wall s (x budget)", "gap", "outside training",
              "validation", "early stops (rewound)"]  # fmt: skip
    rows = []
    for budget, texts in summary.items():
        for text, row in texts.items():
            for variant, cell in row.items():
                if isinstance(cell, dict):
                    rows.append(
                        [budget, text, variant, f"{cell['tail_mean']:.3f} ({cell['tail_spread']:.3f})",
                         f"{cell['wall_max']:.1f} ({cell['wall_over_budget_max']:.3f})", f"{cell['gap_max']:+.3f}",
                         f"{cell['record_share_max']:.0%}", f"{cell['eval_share_max']:.0%}",
                         f"{cell['early_stops']}/{cell['seeds']} ({cell.get('rewinds', 0)})"]
                    )  # fmt: skip
            for key, label in (
                ("auto_below_book", "auto below book"),
                ("auto_below_better_gpt", "auto below the better GPT"),
            ):
                if key in row:
                    rows.append([budget, text, label, f"{row[key]:+.3f}", "", "", "", "", ""])
    return {"header": header, "rows": rows}


def markdown(data: dict) -> str:
    table = data["tables"]["results"]
    lines = [
        f"# Wall-clock budgets, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`. Each run is the CLI's `train --recipe VARIANT --time-limit T`, timed from its launch "
        "to its exit; its best checkpoint scored on the whole held-out tail (bits/char, window mode). Mean of "
        "the seeds (spread in brackets); wall: the longest seed's; gap: the last validation minus the best, the "
        "largest seed's; outside training: the share of wall time outside the training blocks (start-up, compiling, "
        "validation, samples, checkpoints), and validation: the validations' share, the largest seed's; early "
        "stops: runs that ended before the budget past their best, in brackets those rewound to it and annealed.",
        "",
        "| " + " | ".join(table["header"]) + " |",
        "|" + "---|" * len(table["header"]),
        *("| " + " | ".join(row) + " |" for row in table["rows"]),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0])
    parser.add_argument("--texts", nargs="+", default=list(TEXTS))
    parser.add_argument("--variants", nargs="+", default=["auto", "book"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--chars", type=int, default=600_000, help="characters of each text (the races' 600K)")
    parser.add_argument("--tag", default=None, help="result file stem (default: <date>-cpu-wall-clock)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the runs in DIR (default: a temporary one)")
    parser.add_argument("--report-only", action="store_true", help="rewrite results/<tag> from its runs")
    parser.add_argument("--merge", nargs="+", metavar="STEM", help="with --report-only: <tag> holds these files' runs")
    args = parser.parse_args(argv)
    if args.report_only:
        parts = [json.loads((RESULTS / f"{stem}.json").read_text()) for stem in args.merge or [args.tag]]
        data = {**parts[0], "runs": [run for part in parts for run in part["runs"]]}
        if args.merge:
            data["command"] = " ; ".join(part["command"] for part in parts)
            data["merged_from"] = list(args.merge)
        data["summary"] = summarise(data["runs"])
        data["tables"] = {"results": results_table(data["summary"])}
        write_results(args.tag, data, markdown(data))
        return 0
    runs = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or temporary
        Path(work).mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            for name in args.texts:
                text = race_text(name, args.chars)
                path = Path(work) / f"{name}.txt"
                path.write_text(text, encoding="utf-8")
                for seed in args.seeds:
                    for variant in args.variants:
                        out = Path(work) / f"{name}-{variant}-{budget:g}-{seed}"
                        shutil.rmtree(out, ignore_errors=True)
                        run = {"budget": budget, "text": name, "variant": variant, "seed": seed}
                        if variant in GPT_VARIANTS:
                            run.update(run_gpt(variant, path, budget, seed, out))
                        else:
                            run.update(run_one(variant, path, budget, seed, out))
                            run["tail_bits"] = tail_bits(out, text)
                        runs.append(run)
                        print(json.dumps(run), flush=True)
    data = {**record("wall_clock.py", argv), "runs": runs, "summary": summarise(runs)}
    data["tables"] = {"results": results_table(data["summary"])}
    text = markdown(data)
    print(text)
    write_results(args.tag or f"{data['date']}-cpu-wall-clock", data, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
