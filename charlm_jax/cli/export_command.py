"""``charlm-jax export``: its flags and what it runs (the artifact itself is ``charlm_jax.interop.export``)."""

from __future__ import annotations

import argparse

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import DEFAULT_HISTORY_WINDOW, DEFAULT_REPETITION_WINDOW, DEFAULT_SAMPLER, SAMPLERS

FILTERS = ("top_p", "min_p", "repetition_penalty", "no_repeat_ngram")
PLATFORM_NAMES = ("cpu", "cuda", "tpu", "rocm")


def add_export_command(commands) -> None:
    """The ``export`` command's flags."""
    export = commands.add_parser(
        "export",
        help="write the whole generation as a jax.export artifact a program with JAX alone can call",
        description="Serialize prompt reading, the decoding scan and the sampler (weights inside) with "
        "jax.export, plus a JSON file of the vocabulary and the inputs. Needs the export extra "
        "(flatbuffers): pip install -e '.[export]'. examples/run_exported.py calls it.",
    )
    export.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    export.add_argument("--out", required=True, metavar="FILE", help="the artifact (its description: FILE.json)")
    export.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")
    export.add_argument(
        "--platforms", nargs="+", choices=PLATFORM_NAMES, default=["cpu"], help="where it may run (default: cpu)"
    )
    export.add_argument("--rows", type=int, default=1, help="rows per call, a temperature each (default: 1)")
    export.add_argument("--length", type=int, default=400, help="characters generated per row (default: 400)")
    export.add_argument(
        "--max-prompt", type=int, default=256, help="longest prompt, in characters the model reads (default: 256)"
    )
    export.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help=f"(default: {DEFAULT_SAMPLER})")
    export.add_argument("--top-k", type=int, help="compiled in (default: off)")
    export.add_argument(
        "--with",
        dest="filters",
        nargs="+",
        choices=FILTERS,
        default=[],
        help="filters the artifact takes as inputs, a value per row (default: none)",
    )
    export.add_argument(
        "--history-window",
        type=int,
        default=DEFAULT_HISTORY_WINDOW,
        help=f"with repetition controls: characters they read, compiled in (default: {DEFAULT_HISTORY_WINDOW})",
    )


def run_export(args: argparse.Namespace, stop) -> int:
    from charlm_jax.interop.export import write_export
    from charlm_jax.settings.generation import GenerationOptions
    from charlm_jax.use.lm import load

    if args.rows < 1:
        raise CharLMError(f"--rows must be a positive integer, got {args.rows}")
    neutral = {"top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram": args.history_window}
    options = GenerationOptions(
        length=args.length,
        temperatures=(1.0,) * args.rows,
        sampler=args.sampler,
        top_k=args.top_k,
        history_window=args.history_window,
        repetition_window=min(DEFAULT_REPETITION_WINDOW, args.history_window),
        **{name: neutral[name] for name in args.filters},  # on; the values are the artifact's inputs
    )
    lm = load(args.checkpoint, step=args.step)
    artifact, meta = write_export(lm, options, args.out, max_prompt=args.max_prompt, platforms=args.platforms)
    size = artifact.stat().st_size
    print(f"wrote {artifact} ({size / 1e6:.1f} MB, {', '.join(args.platforms)}) and {meta}")
    print(f"inputs: prompt_ids ({args.rows}, {args.max_prompt}), prompt_lengths ({args.rows},), seed, temperatures")
    return 0
