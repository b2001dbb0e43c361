"""Decoding beyond sampling, measured: beam search, stop strings, the no-copy ban, the copy check.

    python benchmarks/decoding.py --checkpoint runs/my [--rounds 7] [--tag NAME]

On one run (the README's quick-start model, say), in interleaved rounds (medians):

* per character: sampling one row (400 characters) against beam search of width 1, 4 and 16, and against
  sampling that never completes a 12-gram of the training text (``no_copy_ngram``);
* stop strings, 4 rows of 2,000 characters: no stop string, one that never occurs, and one every row meets
  within a few characters (the call then ends early: what stopped rows cost);
* the copy check: the suffix array of the run's training text (seconds, bytes), the check of each of the four
  book temperatures' samples (seed 0, default prompt) and its result; and, in a fresh process, the suffix
  array of 10^8 characters (the training text repeated): seconds and peak memory.

Writes results/<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from charlm_jax.runtime.distributed import use_every_core

use_every_core()

import numpy as np  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.use.copies import copy_check, training_ids, training_index, training_ngram_table  # noqa: E402

from common import interleaved, peak_rss_bytes, record, write_results  # noqa: E402

LENGTH, STOP_ROWS, STOP_LENGTH = 400, 4, 2000


def per_char_rows(lm, rounds: int) -> dict:
    """Sampling, beam search and the no-copy ban: seconds per call of LENGTH characters."""
    calls = {
        "sample": lambda: charlm_jax.generate(lm, "the ", temperatures=(0.5,), length=LENGTH),
        "no_copy_ngram_12": lambda: charlm_jax.generate(
            lm, "the ", temperatures=(0.5,), length=LENGTH, no_copy_ngram=12
        ),
    }
    for width in (1, 4, 16):
        calls[f"beam_{width}"] = lambda width=width: charlm_jax.beam_search(lm, "the ", beam=width, length=LENGTH)
    return interleaved(calls, rounds)


def stop_rows(lm, rounds: int) -> dict:
    rare = min(lm.vocab.chars, key=lambda c: (c.isalnum() or c.isspace(), c))  # a character samples rarely write
    options = dict(temperatures=(0.5,) * STOP_ROWS, length=STOP_LENGTH)
    calls = {
        "no_stop": lambda: charlm_jax.generate(lm, "the ", **options),
        "stop_never_met": lambda: charlm_jax.generate(lm, "the ", stop=(rare * 5,), **options),
        "stop_met_at_once": lambda: charlm_jax.generate(lm, "the ", stop=(" ", "\n"), **options),
    }
    return interleaved(calls, rounds)


def copy_rows(lm) -> dict:
    started = time.perf_counter()
    index = training_index(lm)
    build = time.perf_counter() - started
    started = time.perf_counter()
    table = training_ngram_table(lm, 12)
    table_seconds = time.perf_counter() - started
    texts = charlm_jax.generate(lm, None, temperatures=charlm_jax.BOOK_TEMPERATURES, length=LENGTH, seed=0)
    reports, check_seconds = {}, []
    for temperature, text in zip(charlm_jax.BOOK_TEMPERATURES, texts):
        started = time.perf_counter()
        report = copy_check(lm, text, index)
        check_seconds.append(time.perf_counter() - started)
        reports[f"{temperature:g}".replace(".", "_")] = {  # no dots: figure markers read keys as a path
            "longest": report.longest,
            "longest_text": report.longest_text,
            "copied_share": report.copied_share,
            "sample": text,
        }
    return {
        "training_chars": int(len(index.ids)),
        "index_seconds": build,
        "index_bytes": index.nbytes,
        "ngram_table_12_seconds": table_seconds,
        "ngram_table_12_bytes": int(table[0].nbytes + table[1].nbytes),
        "check_seconds_median": float(np.median(check_seconds)),
        "samples": reports,
    }


LARGE = """
import json, sys, time
import numpy as np
from charlm_jax.use.copies import CopyIndex
sys.path.insert(0, "benchmarks")
from common import peak_rss_bytes
ids = np.load(sys.argv[1])
size = int(sys.argv[2])
ids = np.resize(ids, size)
before = peak_rss_bytes()
started = time.perf_counter()
index = CopyIndex.build(ids)
seconds = time.perf_counter() - started
print(json.dumps({"chars": size, "seconds": seconds, "bytes": index.nbytes, "peak_rss_increase_bytes": peak_rss_bytes() - before}))
"""


def large_index(lm, size: int, work: str) -> dict:
    """The suffix array of ``size`` characters (the training text repeated), in a fresh process."""
    path = f"{work}/ids.npy"
    np.save(path, training_ids(lm))
    result = subprocess.run([sys.executable, "-c", LARGE, path, str(size)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--large", type=int, default=100_000_000, help="characters of the large suffix array")
    parser.add_argument("--tag")
    args = parser.parse_args(argv)
    lm = charlm_jax.load(args.checkpoint)
    copies = copy_rows(lm)
    per_char = per_char_rows(lm, args.rounds)
    stops = stop_rows(lm, args.rounds)
    with tempfile.TemporaryDirectory() as work:
        large = large_index(lm, args.large, work)
    sample = per_char["sample"]["median_s"]
    summary = {
        **{f"{name}_over_sample": row["median_s"] / sample for name, row in per_char.items() if name != "sample"},
        "sample_us_per_char": sample / LENGTH * 1e6,
        "stop_never_met_over_no_stop": stops["stop_never_met"]["median_s"] / stops["no_stop"]["median_s"],
        "stop_met_at_once_over_no_stop": stops["stop_met_at_once"]["median_s"] / stops["no_stop"]["median_s"],
        "large_index_seconds": large["seconds"],
        "large_index_gb": large["bytes"] / 1e9,
        "large_index_peak_gb": large["peak_rss_increase_bytes"] / 1e9,
    }
    data = {
        **record("decoding.py", argv),
        "checkpoint": args.checkpoint,
        "model": f"{lm.config.num_layers} x {lm.config.hidden_size}, step {lm.step}",
        "per_char": per_char,
        "stops": stops,
        "copies": copies,
        "large_index": large,
        "summary": summary,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    lines = [
        f"# Decoding beyond sampling, {data['date']}: {data['device']}",
        "",
        f"`{data['command']}`; model {data['model']}; {args.rounds} interleaved rounds, medians.",
        "",
        f"| {LENGTH} characters, one row | seconds | x sampling |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {row['median_s']:.4f} | {row['median_s'] / sample:.2f} |" for name, row in per_char.items()]
    lines += ["", f"| {STOP_ROWS} rows x {STOP_LENGTH} characters | seconds | x no stop |", "|---|---|---|"]
    lines += [
        f"| {name} | {row['median_s']:.4f} | {row['median_s'] / stops['no_stop']['median_s']:.2f} |"
        for name, row in stops.items()
    ]
    lines += [
        "",
        f"Copy check: suffix array of the training text ({copies['training_chars']:,} characters) "
        f"{copies['index_seconds']:.2f} s, {copies['index_bytes'] / 1e6:.1f} MB; a 400-character check "
        f"{copies['check_seconds_median'] * 1e3:.1f} ms; the 12-gram table {copies['ngram_table_12_seconds']:.2f} s, "
        f"{copies['ngram_table_12_bytes'] / 1e6:.1f} MB. At {large['chars']:,} characters: {large['seconds']:.1f} s, "
        f"{large['bytes'] / 1e9:.2f} GB held, peak {large['peak_rss_increase_bytes'] / 1e9:.2f} GB.",
        "",
        "| T | longest span found in the training text | share in spans >= 20 | the span |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t.replace('_', '.')} | {r['longest']} | {r['copied_share']:.3f} | {json.dumps(r['longest_text'])} |"
        for t, r in copies["samples"].items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args.tag or f"{data['date']}-cpu-decoding", data, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
