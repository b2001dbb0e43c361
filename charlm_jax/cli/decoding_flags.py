"""The flags that say how ``generate`` decodes: sampling filters, repetition controls, stop strings, beam search.

No JAX here (``charlm-jax --help`` answers at once).
"""

from __future__ import annotations

import argparse

from charlm_jax.settings.config import DEFAULT_HISTORY_WINDOW, DEFAULT_REPETITION_WINDOW, DEFAULT_SAMPLER, SAMPLERS


def add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    """Sampling filters and repetition controls, stop strings, and beam search."""
    _add_sampling_flags(parser)
    parser.add_argument(
        "--stop",
        nargs="+",
        type=_escaped,
        default=(),
        metavar="STRING",
        help="end a row when its text ends with any of these (kept in the text; \\n is a newline, \\t a tab)",
    )
    parser.add_argument(
        "--no-copy-ngram",
        type=int,
        metavar="N",
        help="never complete an N-gram of the run's training text (so no span of N characters is copied) "
        "(default: off)",
    )
    parser.add_argument(
        "--copy-check",
        action="store_true",
        help="after each text, its longest span found verbatim in the run's training text and the share of it in "
        "spans of at least --copy-min characters (needs the copy-check extra) (default: off)",
    )
    parser.add_argument(
        "--copy-min", type=int, default=20, metavar="N", help="the span length --copy-check counts (default: 20)"
    )
    parser.add_argument(
        "--beam",
        type=int,
        metavar="N",
        help="beam search: print the N likeliest continuations with their log2-probability instead of sampling "
        "(temperature, filters and repetition controls do not apply; --stop does) (default: off)",
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        metavar="A",
        help="with --beam: rank by log2p / length**A, so a continuation that stopped early is not preferred only "
        "for being short (default: 0, the sum)",
    )


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, help="sample only from the k most likely characters (default: off)")
    parser.add_argument(
        "--top-p", type=float, help="sample from the smallest set with this much probability mass (default: off)"
    )
    parser.add_argument(
        "--min-p",
        type=float,
        help="drop characters less likely than this fraction of the most likely one (default: off)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=DEFAULT_SAMPLER,
        help="how a character is drawn from softmax(logits / T): inverse_cdf (one uniform "
        "per step) or gumbel (jax.random.categorical); the same distribution "
        f"(default: {DEFAULT_SAMPLER})",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        metavar="R",
        help="divide positive (multiply negative) logits of characters seen in the last "
        "--repetition-window characters by R; > 1 discourages loops (default: off)",
    )
    parser.add_argument(
        "--repetition-window",
        type=int,
        metavar="N",
        help=f"characters the penalty looks back over (default: {DEFAULT_REPETITION_WINDOW})",
    )
    parser.add_argument(
        "--no-repeat-ngram",
        type=int,
        metavar="N",
        help="never generate a character that repeats an N-gram already in the last "
        "--history-window characters (default: off)",
    )
    parser.add_argument(
        "--history-window",
        type=int,
        metavar="N",
        help="characters (prompt included) the repetition controls read: their cost per "
        f"character grows with N, never with the text's length (default: {DEFAULT_HISTORY_WINDOW})",
    )


def _escaped(text: str) -> str:
    """A flag's value with ``\\n``, ``\\t`` and ``\\\\`` read as a newline, a tab and a backslash."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")
