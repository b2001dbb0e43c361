"""What looking inside costs, and what it finds: ``charlm_jax.inspect`` and ``rank_cells`` on a trained run.

    python benchmarks/inspect_cost.py --checkpoint runs/pydoc-auto600/best --text pydoc --tag NAME

The text is the run's held-out tail of the named text (what the model never trained on), its first 10K and
100K characters (``--sizes``). For each size: the seconds of ``inspect`` (first call, compiling included, and a
second one), of ``rank_cells``, the host memory the ``Inspection`` holds, and the process's peak RSS. Then the
ranking of the largest size: per feature the best unit, its correlation and the chance level (the best of 99
shifted copies). Writes results/<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import resource
import time

from charlm_jax.runtime.distributed import use_every_core

use_every_core()

import numpy as np  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.use.cells import rank_cells  # noqa: E402
from charlm_jax.use.lm import held_out_ids  # noqa: E402

from common import record, write_results  # noqa: E402
from race_texts import race_text  # noqa: E402


def held_out(lm, name: str) -> str:
    return lm.vocab.decode(held_out_ids(lm, race_text(name, 600_000)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", default="pydoc", help="the text the run trained on (its tail is read)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tag", required=True)
    args = parser.parse_args(argv)
    lm = charlm_jax.load(args.checkpoint)
    tail = held_out(lm, args.text)
    while len(tail) < max(args.sizes):  # a short tail is read again (the state carries on)
        tail += tail
    sizes, rankings = {}, []
    for size in args.sizes:
        text = tail[:size]
        started = time.perf_counter()
        charlm_jax.inspect(lm, text)
        first = time.perf_counter() - started
        started = time.perf_counter()
        seen = charlm_jax.inspect(lm, text)
        again = time.perf_counter() - started
        started = time.perf_counter()
        rankings = rank_cells(seen.c, seen.h, seen.text)
        ranking_seconds = time.perf_counter() - started
        sizes[str(size)] = {
            "inspect_first_s": first,
            "inspect_s": again,
            "rank_cells_s": ranking_seconds,
            "held_mb": seen.bytes_per_char * size / 1e6,
            "bytes_per_char": seen.bytes_per_char,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
            "bits_per_char": float(-np.mean(seen.log2p[1:])),
        }
        print(size, sizes[str(size)], flush=True)
    found = {
        r.feature.replace(" ", "_").replace("#", "hash"): {
            "unit": r.unit, "r": r.correlation, "abs_r": abs(r.correlation), "chance": r.chance,
            "tracks": "yes" if r.beats_chance else ("not in the text" if not r.present else "no"),
        }
        for r in rankings
    }  # fmt: skip
    data = {
        **record("inspect_cost.py", argv),
        "checkpoint": args.checkpoint,
        "model": f"{lm.config.num_layers} x {lm.config.hidden_size}",
        "step": lm.step,
        "text": args.text,
        "sizes": sizes,
        "rankings": found,
    }
    lines = [
        f"# Inspect: cost and found cells, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`; model {data['model']} (step {lm.step}), the held-out tail of {args.text}.",
        "",
        "| characters | inspect s (first, compiling) | inspect s | rank_cells s | held MB | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {size} | {s['inspect_first_s']:.2f} | {s['inspect_s']:.2f} | {s['rank_cells_s']:.2f} | {s['held_mb']:.0f} | "
        f"{s['peak_rss_mb']:.0f} |"
        for size, s in sizes.items()
    ]
    lines += ["", "| feature | best unit | r | chance | tracks it |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.feature} | {r.unit} | {r.correlation:+.3f} | {r.chance:.3f} | "
        f"{'yes' if r.beats_chance else ('not in the text' if not r.present else 'no')} |"
        for r in rankings
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args.tag, data, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
