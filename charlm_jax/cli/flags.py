"""The command line's words: every ``charlm-jax`` command and flag, with its default and help.

Flags of ``train`` map one-to-one onto ``TrainConfig`` fields (their help is the field's metadata);
``cli`` runs the commands. Nothing here imports JAX, so ``charlm-jax --help`` starts at once.
"""

from __future__ import annotations

import argparse
import dataclasses

from charlm_jax.cli.decoding_flags import add_decoding_flags
from charlm_jax.cli.export_command import add_export_command
from charlm_jax.cli.serve_command import add_serve_command
from charlm_jax.settings.config import (
    BOOK_TEMPERATURES,
    GENERATION_MODES,
    UNITS,
    UNSEEN_POLICIES,
    TrainConfig,
)
from charlm_jax.settings.recipes import AUTO_RECIPE, DEFAULT_RECIPE, RECIPE_NAMES

# A --text file larger than this trains through a prepared corpus (memory independent of its size).
AUTO_PREPARE_BYTES = 64 << 20
DEBUG_ENV = "CHARLM_JAX_DEBUG"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, default None so that flags the user passed can be told apart."""
    defaults = TrainConfig()
    group = parser.add_argument_group("model and training (TrainConfig; defaults are the book recipe)")
    group.add_argument(
        "--recipe",
        choices=list(RECIPE_NAMES),
        default=None,
        help=f"named set of the values below: {' | '.join(RECIPE_NAMES)} ({AUTO_RECIPE}: chosen for the "
        f"--time-limit given); flags given with it override its values (default: {DEFAULT_RECIPE}; see docs/recipes.md)",
    )
    for field in dataclasses.fields(TrainConfig):
        flags = ["--" + field.name.replace("_", "-")]
        if field.name == "temperatures":
            flags.append("--temperature")  # generate's spelling, accepted here too
        default = getattr(defaults, field.name)
        shown = " ".join(f"{t:g}" for t in default) if isinstance(default, tuple) else default
        help_text = f"{field.metadata['help']} (default: {shown})"
        choices = field.metadata["choices"]
        if isinstance(default, bool):
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(
                *flags, dest=field.name, type=float, nargs="+", default=None, metavar="T", help=help_text
            )
        elif choices is not None:
            group.add_argument(*flags, choices=choices, default=None, help=help_text)
        else:
            kind = type(default) if default is not None else float
            group.add_argument(*flags, type=kind, default=None, metavar=field.name.upper(), help=help_text)


def _add_cpu_devices_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="split the CPU into N JAX devices, the batch divided among them (default: one "
        "per core when no GPU/TPU is present; nothing changes on a GPU or TPU)",
    )


def _add_unseen_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--unseen",
        choices=UNSEEN_POLICIES,
        default="error",
        help=f"a character of {what} the model never saw: error (refuse, naming it; default) or skip (leave it "
        "out and say how many were left out); a --units bytes model sees every text",
    )


def _add_adapt_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """Dynamic evaluation's flags (charlm_jax.AdaptOptions; defaults chosen by benchmarks/dynamic_eval.py)."""
    from charlm_jax.settings.adapt import RULES, AdaptOptions

    defaults = AdaptOptions()
    group = parser.add_argument_group("dynamic evaluation (docs/generation.md)")
    group.add_argument("--adapt", action="store_true", help=f"adapt the weights while reading {what} (default: off)")
    group.add_argument(
        "--adapt-lr", type=float, metavar="F", help=f"adaptation learning rate (default: {defaults.learning_rate:g})"
    )
    group.add_argument(
        "--adapt-decay",
        type=float,
        metavar="F",
        help=f"decay towards the trained weights per segment (default: {defaults.decay:g})",
    )
    group.add_argument(
        "--adapt-segment", type=int, metavar="N", help=f"characters per update (default: {defaults.segment})"
    )
    group.add_argument(
        "--adapt-rule",
        choices=RULES,
        help=f"rms: the paper's RMS-normalised step; sgd: plain (default: {defaults.rule})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charlm-jax",
        description=("Character-level LSTM language model (Deep Learning with Python, 8.1) in JAX/Flax."),
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the Python traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    add_train_command(commands)
    add_generate_command(commands)
    add_eval_command(commands)
    add_prepare_command(commands)
    add_import_keras_command(commands)
    add_inspect_command(commands)
    add_serve_command(commands)
    add_export_command(commands)
    return parser


def _add_limit_flags(train: argparse.ArgumentParser) -> None:
    """When a run stops before its epochs: the wall clock, the training clock, the steps."""
    train.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="the run's wall clock, from this command to its last line (compiling, validating, checkpointing "
        "included; counted across --resume): it ends with a record and a checkpoint in time; --resume "
        "continues (default: none)",
    )
    train.add_argument(
        "--train-time-limit",
        type=float,
        metavar="SECONDS",
        help="stop after this much training time alone (validation, samples and checkpoints excluded; counted "
        "across --resume); not with --time-limit (default: none)",
    )
    train.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps in all (counted across --resume), validate and "
        "checkpoint; --resume continues (default: none)",
    )


def add_train_command(commands) -> None:
    """The ``train`` command's flags."""
    train = commands.add_parser(
        "train",
        help="train a model; samples at four temperatures each epoch",
        description="Train on a text; defaults reproduce the book's experiment.",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--text",
        metavar="PATH_OR_URL",
        help="UTF-8 text file, or http(s) URL downloaded once into ~/.cache/charlm_jax (default: the built-in corpus; "
        "with --resume, the run's own text, which the run records)",
    )
    source.add_argument(
        "--corpus",
        metavar="NAME",
        help="built-in corpus: pydoc (default, Python's own "
        "documentation), python-source (the standard library's code), king-lear, shakespeare "
        "(need the [shakespeare] extra)",
    )
    source.add_argument(
        "--data",
        metavar="DIR",
        help="a corpus written by charlm-jax prepare, read from its memory "
        f"map (a --text file over {AUTO_PREPARE_BYTES >> 20} MiB is prepared into <out>/prepared "
        "by itself)",
    )
    train.add_argument("--sha256", help="expected SHA-256 of the --text file or download (default: unchecked)")
    train.add_argument(
        "--out",
        default="runs/charlm",
        metavar="DIR",
        help="run directory: checkpoints and metrics.jsonl (default: runs/charlm)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint (default: off)"
    )
    train.add_argument(
        "--init-from",
        metavar="RUN",
        help="fine-tune: start a new run in --out from the weights of the run in RUN (its model shape and settings, "
        "a fresh optimizer; the vocabulary becomes the union of both texts' characters; RUN is only read)",
    )
    train.add_argument(
        "--new-rows",
        choices=("mean", "fresh"),
        default=None,
        help="with --init-from, how a character the source never saw starts: mean (the mean of the trained rows, "
        "as rare as the rarest known character; default) or fresh (a new model's initialisation)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    _add_limit_flags(train)
    _add_cpu_devices_flag(train)
    _add_config_flags(train)
    cluster = train.add_argument_group("multi-host (default: single process; see docs/design.md, More than one device)")
    cluster.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="coordinator address of a multi-host run (or JAX_COORDINATOR_ADDRESS)",
    )
    cluster.add_argument("--num-processes", type=int, help="processes in the run (or JAX_NUM_PROCESSES)")
    cluster.add_argument("--process-id", type=int, help="this process's index (or JAX_PROCESS_ID)")


def add_generate_command(commands) -> None:
    """The ``generate`` command's flags."""
    generate = commands.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Generate text from a trained checkpoint, all temperatures in one call.",
    )
    generate.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    prompted = generate.add_mutually_exclusive_group()
    prompted.add_argument("--prompt", help="text to continue (default: the excerpt saved with the checkpoint)")
    prompted.add_argument(
        "--prompt-file",
        metavar="PATH",
        help="a UTF-8 file whose text, of any length, is the prompt (with --adapt: read adapting)",
    )
    _add_unseen_flag(generate, "the prompt")
    _add_adapt_flags(generate, "the prompt, then generate from the adapted weights")
    generate.add_argument("--length", type=int, default=400, help="characters to generate (default: 400)")
    generate.add_argument(
        "--temperatures",
        "--temperature",
        dest="temperatures",
        type=float,
        nargs="+",
        default=list(BOOK_TEMPERATURES),
        metavar="T",
        help="one or more temperatures; 0 is greedy (default: 0.2 0.5 1.0 1.2)",
    )
    generate.add_argument("--seed", type=int, default=0, help="sampling seed, any integer (default: 0)")
    generate.add_argument(
        "--mode",
        choices=GENERATION_MODES,
        default="stateful",
        help="stateful: carry the LSTM state, O(1) per character; window: re-read the "
        "last maxlen characters each step, as the book (default: stateful)",
    )
    add_decoding_flags(generate)
    generate.add_argument(
        "--stream",
        action="store_true",
        help="print each sample as it is generated, one temperature after another (default: off)",
    )
    generate.add_argument(
        "--chunk", type=int, help="characters per streamed piece (default: the API's, chosen by measurement)"
    )
    generate.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")
    _add_cpu_devices_flag(generate)


def add_eval_command(commands) -> None:
    """The ``eval`` command's flags."""
    evaluate = commands.add_parser(
        "eval",
        help="bits per character (per byte for a --units bytes run) of a text under a checkpoint",
        description="Score a text: mean negative log2-probability per character (per byte for a byte model).",
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    scored = evaluate.add_mutually_exclusive_group()
    scored.add_argument(
        "--text",
        metavar="PATH_OR_URL",
        help="UTF-8 text file or http(s) URL to score (default, with none of --text, --corpus, --data: the held-out "
        "tail of the run's own text)",
    )
    scored.add_argument(
        "--corpus", metavar="NAME", help="built-in corpus to score: pydoc, python-source, king-lear, shakespeare"
    )
    scored.add_argument(
        "--data",
        metavar="DIR",
        help="a prepared corpus (charlm-jax prepare): score the whole tail "
        "the run held out, which validation scores only --val-chars of",
    )
    evaluate.add_argument("--sha256", help="expected SHA-256 of the --text file or download (default: unchecked)")
    evaluate.add_argument(
        "--mode",
        choices=("window", "stateful"),
        help="window: each character from the maxlen before it, from a zero state (the "
        "training run's validation metric); stateful: state carried from the first "
        "character (default: window; stateful with --adapt)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    _add_unseen_flag(evaluate, "the text")
    _add_adapt_flags(evaluate, "the text (each segment scored before the model learns from it; needs --mode stateful)")
    evaluate.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")


def add_prepare_command(commands) -> None:
    """The ``prepare`` command's flags."""
    prepare = commands.add_parser(
        "prepare",
        help="encode a large text once into a memory-mapped corpus",
        description="Stream a UTF-8 text through the encoder into DIR/ids.bin (the "
        "smallest unsigned type that holds its characters) and DIR/meta.json, for "
        "train --data and eval --data.",
    )
    prepare.add_argument("--text", required=True, metavar="PATH_OR_URL", help="UTF-8 text file or http(s) URL")
    prepare.add_argument("--sha256", help="expected SHA-256 of the --text file or download (default: unchecked)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    prepare.add_argument(
        "--no-lowercase",
        action="store_true",
        help="keep the text's case (train with --no-lowercase too; default: lower-cased, as the book)",
    )
    prepare.add_argument(
        "--units",
        choices=UNITS,
        default="chars",
        help="chars (default) or bytes: the file's UTF-8 bytes, any file at all (train with --units bytes too)",
    )


def add_import_keras_command(commands) -> None:
    """The ``import-keras`` command's flags."""
    importer = commands.add_parser(
        "import-keras",
        help="turn a model saved by the book's Keras code into a run",
        description="Import a Keras LSTM language model (.keras or legacy .h5) as a "
        "run directory for generate, eval and train --resume.",
    )
    importer.add_argument("model", metavar="MODEL", help="the .keras or .h5 file model.save() wrote")
    vocabulary = importer.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument(
        "--text",
        metavar="PATH_OR_URL",
        help="the text the model was trained on (its vocabulary is sorted(set(text.lower())), as the book builds it)",
    )
    vocabulary.add_argument("--corpus", metavar="NAME", help="a built-in corpus the model was trained on")
    vocabulary.add_argument("--chars", metavar="STRING", help="the model's characters, if the text is not at hand")
    importer.add_argument("--sha256", help="expected SHA-256 of the --text file or download (default: unchecked)")
    importer.add_argument("--out", required=True, metavar="DIR", help="new run directory to write")
    importer.add_argument(
        "--no-lowercase",
        action="store_true",
        help="the model was trained on text as it is, not lower-cased (default: lower-cased)",
    )
    importer.add_argument(
        "--maxlen",
        type=int,
        help="window length, when the model's config does not fix it (default: from the model's input shape)",
    )


def add_inspect_command(commands) -> None:
    """The ``inspect`` command's flags."""
    look = commands.add_parser(
        "inspect",
        help="look inside a model: a page of what it predicts and which cells track what",
        description="Read a text with a checkpoint, rank its cells against features of the text (quotes, "
        "brackets, position in the line, ...) and write one self-contained HTML page.",
    )
    look.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    text = look.add_mutually_exclusive_group()
    text.add_argument("--text", metavar="PATH_OR_URL", help="the text to read (default: the run's held-out tail)")
    text.add_argument("--corpus", metavar="NAME", help="a built-in corpus to read")
    look.add_argument("--out", required=True, metavar="PAGE.html", help="the HTML page to write")
    look.add_argument(
        "--chars", type=int, default=100_000, help="characters read and ranked, from the start (default: 100000)"
    )
    look.add_argument(
        "--page-chars", type=int, default=5000, help="characters shown on the page, from the start (default: 5000)"
    )
    look.add_argument("--top-k", type=int, default=5, help="likeliest next characters kept per position (default: 5)")
    _add_unseen_flag(look, "the text")
    look.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")
