"""Dynamic evaluation, measured: static against adaptive bits/char, the rule's settings swept on tuning texts.

    python benchmarks/dynamic_eval.py --tune pydoc python-source --apply idle-notes \\
        --recipe streams --max-steps 300 --tail-chars 20000

For each text a model is trained (or reused from ``--work-dir``) with ``--recipe`` for ``--max-steps``
steps. On the tuning texts every combination of ``--rules``, ``--rates``, ``--decays`` and ``--segments``
scores the first ``--tail-chars`` characters of the held-out tail adaptively, against static stateful
scoring of the same characters; the setting with the lowest mean bits/char over the tuning texts is then
applied untouched to the ``--apply`` texts (named before the run). The cost is timed apart: adaptive
against static stateful scoring of the same tail, interleaved, nothing else running (``--time-repeats``).
Writes results/<date>-<platform>-dynamic-eval.{json,md,png} (the PNG: per-segment gain along the tail).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

import charlm_jax
from charlm_jax.data.prepared import corpus_ids
from charlm_jax.data.windows import split_windows
from charlm_jax.settings.adapt import AdaptOptions

from common import platform_tag, record, write_results


def race_text(name: str) -> str:
    from race_texts import race_text as recipes_text

    return recipes_text(name, 600_000)


def trained_model(name: str, args) -> charlm_jax.LanguageModel:
    out = Path(args.work_dir) / f"{name}-{args.recipe}-{args.max_steps}"
    if not (out / "metrics.jsonl").exists():
        shutil.rmtree(out, ignore_errors=True)
        path = Path(args.work_dir) / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(race_text(name), encoding="utf-8")
        config = charlm_jax.recipe_config(args.recipe, sample_length=0, epochs=1000, eval_every_steps=args.max_steps)
        charlm_jax.fit(config, charlm_jax.load_text(path), out, limits=charlm_jax.Limits(max_steps=args.max_steps))
    return charlm_jax.load(out)


def held_out_tail(lm: charlm_jax.LanguageModel, chars: int) -> str:
    text = race_text_of(lm)
    vocab, ids = corpus_ids(text, lm.config.lowercase)
    split = split_windows(len(ids), lm.config.maxlen, lm.config.step, lm.config.val_fraction)
    return lm.vocab.decode(np.asarray(ids[split.val_start : split.val_start + chars]))


def race_text_of(lm) -> str:
    return charlm_jax.load_text(lm.text.source)


def bits(scores: np.ndarray) -> float:
    return float(-np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", nargs="+", default=["pydoc", "python-source"])
    parser.add_argument("--apply", nargs="*", default=["idle-notes"])
    parser.add_argument("--recipe", default="streams")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--tail-chars", type=int, default=20_000)
    parser.add_argument("--rules", nargs="+", default=["rms", "sgd"])
    parser.add_argument("--rates", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--sgd-rates", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--decays", nargs="+", type=float, default=[0.0, 1e-3, 1e-2])
    parser.add_argument("--segments", nargs="+", type=int, default=[25, 50, 100])
    parser.add_argument("--time-repeats", type=int, default=3)
    parser.add_argument("--work-dir", default="/tmp/charlm-dynamic-eval")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    models = {name: trained_model(name, args) for name in [*args.tune, *args.apply]}
    tails = {name: held_out_tail(lm, args.tail_chars) for name, lm in models.items()}
    static = {name: charlm_jax.score(lm, tails[name], mode="stateful") for name, lm in models.items()}
    sweep = []
    for rule in args.rules:
        rates = args.rates if rule == "rms" else args.sgd_rates
        for rate, decay, segment in itertools.product(rates, args.decays, args.segments):
            options = AdaptOptions(rule=rule, learning_rate=rate, decay=decay, segment=segment)
            row = {"rule": rule, "learning_rate": rate, "decay": decay, "segment": segment, "texts": {}}
            for name in args.tune:
                adapted = charlm_jax.score(models[name], tails[name], mode="stateful", adapt=options)
                row["texts"][name] = {"static": bits(static[name]), "adaptive": bits(adapted)}
            row["mean_gain"] = statistics.mean(t["static"] - t["adaptive"] for t in row["texts"].values())
            sweep.append(row)
            print(f"{rule} lr={rate:g} decay={decay:g} segment={segment}: gain {row['mean_gain']:+.3f}", flush=True)
    best = max(sweep, key=lambda r: r["mean_gain"])
    chosen = AdaptOptions(
        rule=best["rule"], learning_rate=best["learning_rate"], decay=best["decay"], segment=best["segment"]
    )
    applied, curves = {}, {}
    for name, lm in models.items():
        adapted = charlm_jax.score(lm, tails[name], mode="stateful", adapt=chosen)
        applied[name] = {
            "static": bits(static[name]),
            "adaptive": bits(adapted),
            "tuned_on": name in args.tune,
            "tail_chars": len(tails[name]),
            "model_steps": lm.step,
        }
        gain = adapted - static[name]  # log2-probabilities: positive where adapting helped
        per = chosen.segment * 10
        curves[name] = [float(np.mean(gain[i : i + per])) for i in range(0, len(gain), per)]
    # Cost, timed apart and interleaved: adaptive and static stateful scoring of the first tuning tail.
    name = args.tune[0]
    lm, tail = models[name], tails[name]
    charlm_jax.score(lm, tail, mode="stateful", adapt=chosen)
    times = {"static": [], "adaptive": []}
    for _ in range(args.time_repeats):
        for kind in ("static", "adaptive"):
            begin = time.perf_counter()
            charlm_jax.score(lm, tail, mode="stateful", adapt=chosen if kind == "adaptive" else None)
            times[kind].append(time.perf_counter() - begin)
    per_100k = {k: statistics.median(v) / len(tail) * 100_000 for k, v in times.items()}
    date = time.strftime("%Y-%m-%d")
    stem = args.tag or f"{date}-{platform_tag()}-dynamic-eval"
    command = "python benchmarks/dynamic_eval.py " + " ".join(
        [
            f"--tune {' '.join(args.tune)}",
            f"--apply {' '.join(args.apply)}",
            f"--recipe {args.recipe}",
            f"--max-steps {args.max_steps}",
            f"--tail-chars {args.tail_chars}",
        ]
    )
    data = {
        **record("dynamic_eval.py"),
        "chosen": {
            "rule": chosen.rule,
            "learning_rate": chosen.learning_rate,
            "decay": chosen.decay,
            "segment": chosen.segment,
        },
        "sweep": sweep,
        "applied": applied,
        "seconds_per_100k_chars": per_100k,
        "cost_ratio": per_100k["adaptive"] / per_100k["static"],
        "gain_curves": curves,
        "wall_seconds": time.perf_counter() - started,
    }
    lines = [
        f"# Dynamic evaluation, {date}",
        "",
        f"Machine: {data['device']}; command: `{command}`. Models: `--recipe {args.recipe}` for {args.max_steps} steps "
        f"each (not the 600 s recipe); the first {args.tail_chars:,} characters of each held-out tail, stateful.",
        "",
        f"Chosen on the tuning texts ({', '.join(args.tune)}): rule {chosen.rule}, learning rate {chosen.learning_rate:g}, "
        f"decay {chosen.decay:g}, segment {chosen.segment}.",
        "",
        "| text | tuned on | static bits/char | adaptive | gain |",
        "|---|---|---|---|---|",
        *[
            f"| {n} | {'yes' if a['tuned_on'] else 'no'} | {a['static']:.3f} | {a['adaptive']:.3f} | {a['static'] - a['adaptive']:+.3f} |"
            for n, a in applied.items()
        ],
        "",
        f"Cost (first tuning tail, median of {args.time_repeats}, interleaved): static {per_100k['static']:.2f} s, "
        f"adaptive {per_100k['adaptive']:.2f} s per 100K characters ({data['cost_ratio']:.1f}x).",
        "",
        "Sweep (mean gain over the tuning texts, bits/char):",
        "",
        "| rule | learning rate | decay | segment | mean gain |",
        "|---|---|---|---|---|",
        *[
            f"| {r['rule']} | {r['learning_rate']:g} | {r['decay']:g} | {r['segment']} | {r['mean_gain']:+.3f} |"
            for r in sweep
        ],
    ]
    write_results(stem, data, "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.figure(figsize=(7, 4))
        for name, curve in curves.items():
            plt.plot(np.arange(len(curve)) * chosen.segment * 10, curve, label=name)
        plt.axhline(0, color="grey", lw=0.5)
        plt.xlabel("characters into the held-out tail")
        plt.ylabel("static - adaptive bits/char (per stretch)")
        plt.legend()
        plt.tight_layout()
        plt.savefig(Path(__file__).resolve().parent / "results" / f"{stem}.png", dpi=110)
    except ImportError:
        pass
    print(f"wrote results/{stem}.json/.md/.png")


if __name__ == "__main__":
    main()
