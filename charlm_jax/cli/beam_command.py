"""``charlm-jax generate --beam N``: the likeliest continuations, ranked, instead of samples."""

from __future__ import annotations

import argparse

from charlm_jax.errors import CharLMError

# Sampling flags beam search does not read (it ranks by the model's own probabilities).
NOT_FOR_BEAM = ("top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram")


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
    return 0
