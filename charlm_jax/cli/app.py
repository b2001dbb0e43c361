"""``charlm-jax train | generate | eval | prepare | import-keras | inspect | serve | export``: flags map onto
TrainConfig and the Python API.

Every user-fixable problem becomes one line on stderr and exit status 2. JAX's backends
start only once a command runs, after the CPU has been split into devices (``--cpu-devices``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from charlm_jax.cli.decoding import print_beams, print_copy_check
from charlm_jax.cli.export_command import run_export
from charlm_jax.cli.flags import DEBUG_ENV, build_parser
from charlm_jax.cli.serve_command import run_serve
from charlm_jax.cli.texts import local_text_file, text_length, training_text
from charlm_jax.errors import CharLMError, CharLMWarning
from charlm_jax.settings.config import DEFAULT_HISTORY_WINDOW, DEFAULT_REPETITION_WINDOW, TrainConfig
from charlm_jax.settings.recipes import AUTO_RECIPE, recipe_values
from charlm_jax.train.signals import Stopped, StopSignals


def time_budget(args: argparse.Namespace) -> float | None:
    """The seconds ``--recipe auto`` plans for: the wall clock's, or the training clock's."""
    wall = getattr(args, "time_limit", None)
    return wall if wall is not None else getattr(args, "train_time_limit", None)


def config_overrides(args: argparse.Namespace, corpus_chars: int | None = None) -> dict[str, Any]:
    """The config fields the user set: a recipe's values, then the flags given explicitly."""
    values = recipe_values(args.recipe, time_budget(args), corpus_chars=corpus_chars) if args.recipe is not None else {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            values[field.name] = tuple(value) if field.name == "temperatures" else value
    return values


def start_jax(args: argparse.Namespace) -> None:
    """Split the CPU as any charlm_jax call does (one device per core, ``use_every_core``; each call's mesh then
    takes the devices that share its rows, ``default_mesh``), or into ``--cpu-devices``, before JAX starts; and
    join a multi-host run if asked."""
    from charlm_jax.runtime.distributed import configure_cpu_devices, maybe_initialize_distributed, use_every_core

    if args.cpu_devices is not None:
        configure_cpu_devices(args.cpu_devices)
    elif getattr(args, "coordinator", None) is None:  # a multi-process run: one device per process unless asked
        use_every_core()
    if args.command == "train":
        maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)


def refuse_ineffective(pairs: Sequence[tuple[bool, str]]) -> None:
    """Options that would be silently dropped in the given combination: refused, each with its fix."""
    for ineffective, message in pairs:
        if ineffective:
            raise CharLMError(message)


def given(args: argparse.Namespace, name: str) -> bool:
    return getattr(args, name, None) is not None


def sha256_without_file(args: argparse.Namespace) -> tuple[bool, str]:
    """``--sha256`` checks a --text file or download; with a built-in corpus or --chars it would do nothing."""
    return (
        given(args, "sha256") and args.text is None,
        "--sha256 checks a --text file or download and has no effect on a built-in corpus (--corpus) or "
        "--chars: drop it",
    )


def adapt_options(args: argparse.Namespace):
    """``--adapt`` and its settings as an AdaptOptions (checked here, before any work), or None; a setting
    given without ``--adapt`` is refused, as it would do nothing."""
    from charlm_jax.settings.adapt import AdaptOptions

    fields = {"adapt_lr": "learning_rate", "adapt_decay": "decay", "adapt_segment": "segment", "adapt_rule": "rule"}
    given = {flag: getattr(args, flag) for flag in fields if getattr(args, flag) is not None}
    if not args.adapt:
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            raise CharLMError(f"{flags} set how --adapt adapts and have no effect without it: add --adapt or drop them")
        return None
    return AdaptOptions(**{fields[flag]: value for flag, value in given.items()})


def run_train(args: argparse.Namespace, stop: StopSignals) -> int:
    from charlm_jax.train.loop import Limits, fit

    limits = Limits(  # checked here, once
        max_steps=args.max_steps,
        max_seconds=args.time_limit,
        max_train_seconds=args.train_time_limit,
        signals=stop,
        started=args.started,  # the wall-clock budget counts from the command's start
    )
    overrides = config_overrides(args)
    fresh = TrainConfig(**overrides)  # validates the flags before anything is loaded
    refuse_ineffective(
        [
            sha256_without_file(args),
            (
                given(args, "lr_final_fraction") and fresh.lr_schedule != "cosine",
                "--lr-final-fraction has no effect with a constant learning rate: drop it or pass --lr-schedule cosine",
            ),
            (
                given(args, "early_stopping_patience")
                and bool(fresh.early_stopping_patience)
                and fresh.val_fraction == 0,
                "--early-stopping-patience needs a validation split, but --val-fraction is 0: drop one of them",
            ),
            (
                (given(args, "temperatures") or given(args, "sample_mode")) and fresh.sample_length == 0,
                "--temperatures/--sample-mode have no effect with --sample-length 0: drop them or sample",
            ),
            (
                given(args, "init_from") and args.resume,
                "--init-from starts a new run from another run's weights and --resume continues the run in --out: "
                "drop one of them (a fine-tuned run is resumed with --resume alone)",
            ),
            (
                given(args, "new_rows") and not given(args, "init_from"),
                "--new-rows says how fine-tuning starts a new character and needs --init-from RUN: drop it or add it",
            ),
            (
                (given(args, "num_processes") or given(args, "process_id")) and args.coordinator is None,
                "--num-processes/--process-id need --coordinator HOST:PORT (or set JAX_COORDINATOR_ADDRESS and "
                "the JAX_ variables instead of the flags)",
            ),
        ]
    )
    from charlm_jax.io.checkpoint import peek_saved_config

    saved = peek_saved_config(args.out) if args.resume else None
    if given(args, "init_from"):  # a fine-tuned run takes the source's settings, the flags on top
        source = peek_saved_config(args.init_from)
        saved = TrainConfig(**{**source.to_dict(), **overrides}) if source is not None else None
    start_jax(args)
    text = training_text(args, (saved or fresh).lowercase, (saved or fresh).units)
    if args.recipe == AUTO_RECIPE:  # auto regularises a text its budget reads many times
        overrides = config_overrides(args, corpus_chars=text_length(text))
    from rich.console import Console

    from charlm_jax.runtime.distributed import is_main_process

    # --no-progress: a console that is not interactive, where the progress bar never shows.
    console = Console(
        soft_wrap=True, quiet=not is_main_process(), force_interactive=False if args.no_progress else None
    )
    if given(args, "init_from"):
        from charlm_jax.train.init_from import DEFAULT_NEW_ROWS
        from charlm_jax.train.loop import fine_tune

        new_rows = args.new_rows or DEFAULT_NEW_ROWS
        result = fine_tune(
            args.init_from, text, args.out, overrides=overrides, limits=limits, console=console, new_rows=new_rows
        )
    else:
        result = fit(None, text, args.out, resume=args.resume, overrides=overrides, limits=limits, console=console)
    return 128 + (stop.received or 0) if result.stop_reason.by_signal else 0


def run_generate(args: argparse.Namespace, stop: StopSignals) -> int:
    refuse_ineffective(
        [
            (
                given(args, "chunk") and not args.stream,
                "--chunk sets the size of streamed pieces and has no effect without --stream: drop it or add --stream",
            ),
            (
                given(args, "repetition_window") and args.repetition_penalty is None,
                "--repetition-window has no effect without --repetition-penalty: drop it or pass --repetition-penalty",
            ),
            (
                given(args, "history_window") and args.repetition_penalty is None and args.no_repeat_ngram is None,
                "--history-window has no effect without --repetition-penalty or --no-repeat-ngram: drop it or add one",
            ),
            (given(args, "length_penalty") and args.beam is None, "--length-penalty needs --beam: add it or drop it"),
        ]
    )
    adapt = adapt_options(args)
    if adapt is not None and args.stream:
        raise CharLMError("--adapt with --stream is not supported: drop --stream to generate from the adapted weights")
    start_jax(args)
    from charlm_jax.settings.generation import GenerationOptions
    from charlm_jax.use.lm import generate, load, stream

    options = GenerationOptions(
        length=args.length,
        temperatures=args.temperatures,
        mode=args.mode,
        sampler=args.sampler,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        repetition_window=args.repetition_window if args.repetition_window is not None else DEFAULT_REPETITION_WINDOW,
        no_repeat_ngram=args.no_repeat_ngram,
        history_window=args.history_window if args.history_window is not None else DEFAULT_HISTORY_WINDOW,
        stop=tuple(args.stop),
        no_copy_ngram=args.no_copy_ngram,
    )  # every option checked here, before the checkpoint is read
    lm = load(args.checkpoint, step=args.step)
    if args.prompt_file is not None:
        from charlm_jax.data.corpus import read_text_file

        prompt = read_text_file(args.prompt_file, lm.config.units)
    else:
        prompt = args.prompt if args.prompt is not None else lm.default_prompt
    prompt_ids = lm.encode_prompt(prompt, args.unseen)  # unknown characters refused before anything is printed
    if args.unseen == "skip":  # said once, here: the prompt goes on without them
        prompt = lm.vocab.decode(prompt_ids)
    if args.beam is not None:
        return print_beams(args, lm, prompt)
    chunk = {} if args.chunk is None else {"chunk": args.chunk}
    if args.stream:
        # Row ``index`` of the unstreamed call: the same text, whatever the chunk. stream() checks its
        # arguments when called, so every row is refused or accepted before anything is printed.
        pieces = [
            stream(lm, prompt, options.replace(temperatures=[temperature]), seed=args.seed, row=index, **chunk)
            for index, temperature in enumerate(args.temperatures)
        ]
    else:
        # The rows are split over the CPU's devices (default_mesh).
        texts = generate(lm, prompt, options, seed=args.seed, adapt=adapt)
    shown = prompt if len(prompt) <= 200 else f"...{prompt[-200:]}"  # a prompt file's last characters
    print(f'--- Generating with seed: "{shown}"' + (" (read adapting)" if adapt is not None else ""))
    for index, temperature in enumerate(args.temperatures):
        print(f"------ temperature: {temperature:g}")
        if args.stream:
            print(shown, end="", flush=True)
            text = "".join(print(piece, end="", flush=True) or piece for piece in pieces[index])
            print()
        else:
            text = texts[index]
            print(shown + text)
        if args.copy_check:
            print_copy_check(lm, text, args.copy_min)
    return 0


def run_prepare(args: argparse.Namespace, stop: StopSignals) -> int:
    import time

    from charlm_jax.data.prepared import prepare

    path = local_text_file(args.text, args.sha256)
    started = time.perf_counter()
    corpus = prepare(path, args.out, lowercase=not args.no_lowercase, units=args.units)
    seconds = time.perf_counter() - started
    megabytes = path.stat().st_size / 1e6
    print(
        f"prepared {corpus.num_chars:,} {'bytes' if corpus.units == 'bytes' else 'characters'} ({corpus.vocab.size} distinct, {corpus.ids.dtype.name}) from "
        f"{args.text} into {args.out} in {seconds:.1f} s ({megabytes / max(seconds, 1e-9):.0f} MB/s); train with "
        f"charlm-jax train --data {args.out}"
    )
    return 0


def run_eval(args: argparse.Namespace, stop: StopSignals) -> int:
    import json

    refuse_ineffective([sha256_without_file(args)])
    adapt = adapt_options(args)
    mode = args.mode or ("stateful" if adapt is not None else "window")
    if adapt is not None and mode != "stateful":
        raise CharLMError("--adapt reads the text with its state carried: drop --mode window (or pass --mode stateful)")
    from charlm_jax.data.corpus import load_text
    from charlm_jax.data.prepared import PreparedCorpus, open_prepared
    from charlm_jax.use.lm import load, score

    lm = load(args.checkpoint, step=args.step)
    text: str | PreparedCorpus | None = None
    if args.data is not None:
        text = open_prepared(args.data)
    elif args.text is not None or args.corpus is not None:
        text = load_text(args.text if args.text is not None else args.corpus, sha256=args.sha256, units=lm.config.units)
    # text None: the held-out tail of the run's own text
    scores = score(lm, text, mode=mode, adapt=adapt, unseen=args.unseen)
    bits, unit = float(-scores.mean()), lm.vocab.unit
    scored = f"the held-out tail of {lm.text.describe()}" if text is None and lm.text is not None else None
    if args.json:
        print(
            json.dumps(
                {
                    f"bits_per_{unit}": bits,
                    "unit": unit,
                    "characters" if unit == "char" else "bytes": int(len(scores)),
                    "mode": mode,
                    "adapt": dataclasses.asdict(adapt) if adapt is not None else None,
                    "checkpoint": str(args.checkpoint),
                    "scored": scored or "the text given",
                }
            )
        )
    else:
        adapted = ", adapted" if adapt is not None else ""
        print(
            f"{bits:.4f} bits/{unit} over {len(scores):,} {'character' if unit == 'char' else unit}s ({mode} mode{adapted})"
            + (f" of {scored}" if scored else "")
        )
    return 0


def run_import_keras(args: argparse.Namespace, stop: StopSignals) -> int:
    from charlm_jax.data.corpus import load_text

    refuse_ineffective([sha256_without_file(args)])
    from charlm_jax.interop.keras_import import import_keras

    text = None
    if args.text is not None or args.corpus is not None:
        text = load_text(args.text if args.text is not None else args.corpus, sha256=args.sha256)
    lm = import_keras(
        args.model, args.out, text=text, chars=args.chars, lowercase=not args.no_lowercase, maxlen=args.maxlen
    )
    config = lm.config
    print(
        f"imported {args.model}: LSTM({config.hidden_size}) x {config.num_layers} -> Dense({lm.vocab.size}), "
        f"window {config.maxlen}, recurrent activation {config.recurrent_activation}; wrote {args.out}"
    )
    print("the Keras optimizer state is not imported: train --resume continues these weights with a fresh RMSprop")
    return 0


def run_inspect(args: argparse.Namespace, stop: StopSignals) -> int:
    from charlm_jax.data.corpus import load_text
    from charlm_jax.use.inside import inspect
    from charlm_jax.use.lm import held_out_ids, load
    from charlm_jax.use.page import page_data, write_page

    if args.chars < 2 or args.page_chars < 1:
        raise CharLMError("--chars must be >= 2 and --page-chars >= 1: pass e.g. --chars 100000 --page-chars 5000")
    lm = load(args.checkpoint, step=args.step)
    text: str
    if args.text is not None or args.corpus is not None:
        text = load_text(args.text if args.text is not None else args.corpus, units=lm.config.units)
    else:
        from charlm_jax.data.record import read_recorded_text

        text = lm.vocab.decode(held_out_ids(lm, read_recorded_text(lm.text, "this model's run", lm.config.units)))
    from charlm_jax.use.cells import describe_rankings, rank_cells

    seen = inspect(lm, text[: args.chars], top_k=args.top_k, unseen=args.unseen)
    rankings = rank_cells(seen.c, seen.h, seen.row_text())
    title = f"charlm-jax inspect: {args.checkpoint} (step {lm.step})"
    write_page(args.out, page_data(seen, rankings, title, args.page_chars))
    print(describe_rankings(rankings))
    print(
        f"read {len(seen.ids):,} {seen.units} ({seen.bytes_per_char:,} bytes each kept); "
        f"{float(-seen.log2p[1:].mean()):.4f} bits/{lm.vocab.unit} (stateful); page: {args.out}"
    )
    return 0


COMMANDS = {
    "train": run_train,
    "generate": run_generate,
    "eval": run_eval,
    "prepare": run_prepare,
    "import-keras": run_import_keras,
    "inspect": run_inspect,
    "serve": run_serve,
    "export": run_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure a user or an operator meets ends as one line on stderr.

    Exit statuses: 0 done (a time or step limit included); 1 the machine failed (disk full,
    permissions, a read-only file system: any OSError, named with its path); 2 bad input; 130 and
    143 stopped by SIGINT and SIGTERM after saving. ``--debug`` (or ``CHARLM_JAX_DEBUG=1``)
    lets the traceback through instead.
    """
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    args.started = started
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    # Orbax logs every save at INFO level through absl, and a failed restore leaves asyncio tasks whose
    # exceptions asyncio logs at ERROR level; keep the terminal for our own output.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    stop = StopSignals()
    with stop.installed(), _one_line_warnings(debug):
        try:
            return COMMANDS[args.command](args, stop)
        except Stopped as stopped:
            print(f"charlm-jax: stopped by {signal.Signals(stopped.signum).name}", file=sys.stderr)
            return stopped.exit_status
        except KeyboardInterrupt:
            print("charlm-jax: stopped by SIGINT", file=sys.stderr)
            return 130
        except CharLMError as error:
            if debug:
                raise
            print(f"charlm-jax: error: {error.cli_message}", file=sys.stderr)
            return getattr(error, "exit_status", 2)
        except OSError as error:
            if debug:
                raise
            from charlm_jax.io.checkpoint import describe_error

            print(f"charlm-jax: error: {describe_error(error)} (rerun with --debug for the traceback)", file=sys.stderr)
            return 1


@contextlib.contextmanager
def _one_line_warnings(debug: bool):
    """Our warnings as one ``charlm-jax: warning:`` line each; the noise of libraries' cleanup
    (orbax's never-awaited coroutines after a failed restore) kept off stderr unless debugging."""
    previous_show, previous_hook = warnings.showwarning, sys.unraisablehook

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CharLMWarning) or debug:
            print(f"charlm-jax: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    if not debug:
        sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        warnings.showwarning, sys.unraisablehook = previous_show, previous_hook


if __name__ == "__main__":
    sys.exit(main())
