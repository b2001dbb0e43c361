"""The small GPT peer under a wall-clock budget: the child process ``wall_clock.py`` times as it times the CLI.

    python benchmarks/gpt_wall.py --text FILE --out DIR --time-limit 60 --launched EPOCH [--seed 0] [--dropout]

``--launched`` is the parent's ``time.time()`` when it started this process: the budget runs from there, so the
interpreter's start, torch's import and the text's preparation count, as they do for ``charlm-jax train``.
The GPT trains on the same lower-cased text, split and metric as the LSTM (the book's), validating as
``gpt_peer.train_gpt`` does with its cosine fitted to what the deadline leaves. When training is over it
scores its held-best weights on the whole held-out tail (``tail_bits``; not counted, as the LSTM's scoring
after its run is not) and writes ``DIR/result.json`` with the moment training ended (``trained_at``, a
``time.time()``: the run's wall time is that minus ``--launched``).
"""

from __future__ import annotations

import time

LAUNCH_SEEN = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--launched", type=float, default=None, help="the parent's time.time() at launch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", action="store_true", help="the gpt-dropout variant: dropout 0.2, batch 64")
    args = parser.parse_args(argv)
    launched = args.launched if args.launched is not None else LAUNCH_SEEN
    deadline = time.perf_counter() + (launched + args.time_limit - time.time())

    from charlm_jax import recipe_config
    from charlm_jax.data.windows import Vocab, prepare_text, split_windows

    from gpt_peer import EVAL_EVERY_SECONDS, GPTRecipe, train_gpt

    config = recipe_config("book")  # the split and the metric's context: the book's
    prepared = prepare_text(Path(args.text).read_text(encoding="utf-8"), config.lowercase)
    vocab = Vocab.from_text(prepared)
    ids = vocab.encode(prepared)
    split = split_windows(len(ids), config.maxlen, config.step, config.val_fraction)
    recipe = GPTRecipe(dropout=0.2, batch_size=64) if args.dropout else GPTRecipe()
    result = train_gpt(
        recipe,
        ids,
        split.val_start,
        vocab.size,
        seconds=float("inf"),
        eval_every_seconds=EVAL_EVERY_SECONDS,
        context=config.maxlen,
        seed=args.seed,
        keep_model=True,
        deadline=deadline,
    )
    trained_at = time.time() - (time.perf_counter() - result["training_ended"])
    result.pop("model")
    points = result["points"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "trained_at": trained_at,
        "launched": launched,
        "steps": points[-1]["step"],
        "train_seconds": points[-1]["train_seconds"],
        "records": len(points),
        "best_val": min(p["val_bits_per_char"] for p in points),
        "last_val": points[-1]["val_bits_per_char"],
        "fitted_steps": result["config"]["fitted_steps"],
    }
    summary["tail_bits"] = result["best_val_bits_per_char"]  # the held-best weights on the whole tail
    (out / "result.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
