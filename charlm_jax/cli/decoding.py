"""What ``charlm-jax generate`` prints beyond samples: ``--beam N`` (the likeliest continuations, ranked) and
``--copy-check`` (how much of each text is copied from the training text)."""

from __future__ import annotations

import argparse
from typing import Any

from charlm_jax.errors import CharLMError

# Sampling flags beam search does not read (it ranks by the model's own probabilities).
NOT_FOR_BEAM = ("top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram", "no_copy_ngram")


def print_beams(args: argparse.Namespace, lm, prompt: str) -> int:
    from charlm_jax.use.beam import beam_search

    ignored = [f"--{name.replace('_', '-')}" for name in NOT_FOR_BEAM if getattr(args, name) is not None]
    if args.stream or args.adapt or ignored:
        named = ", ".join(ignored + (["--stream"] if args.stream else []) + (["--adapt"] if args.adapt else []))
        raise CharLMError(f"--beam ranks the model's own probabilities and does not read {named}: drop them")
    penalty = args.length_penalty if args.length_penalty is not None else 0.0
    hypotheses = beam_search(lm, prompt, beam=args.beam, length=args.length, stop=args.stop, length_penalty=penalty)
    shown = prompt if len(prompt) <= 200 else f"...{prompt[-200:]}"
    print(f'--- Beam search, width {args.beam}, from: "{shown}"')
    for rank, hypothesis in enumerate(hypotheses, 1):
        ranked = f", score {hypothesis.score:.4f}" if penalty else ""
        print(
            f"------ {rank}: log2p {hypothesis.log2p:.2f} ({-hypothesis.log2p / hypothesis.length:.3f} bits/"
            f"{lm.vocab.unit}, {hypothesis.length} {lm.vocab.unit}s{ranked})"
        )
        print(shown + hypothesis.text)
        if args.copy_check:
            print_copy_check(lm, hypothesis.text, args.copy_min)
    return 0


_INDEX: dict[int, Any] = {}  # the training text's suffix array, built once per command


def print_copy_check(lm, text: str, min_span: int) -> None:
    from charlm_jax.use.copies import copy_check, training_index

    if id(lm) not in _INDEX:
        _INDEX[id(lm)] = training_index(lm)
    print(copy_check(lm, text, _INDEX[id(lm)], min_span).describe(lm.vocab.unit))
