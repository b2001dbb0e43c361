"""Beam search: the likeliest continuations of a prompt, all in one compiled scan.

``beam_ids`` keeps ``beam`` hypotheses; at each step every hypothesis is extended by every character, and the
``beam`` best sums of log-probabilities (the model's own distribution, temperature 1, no filters) are kept, each
carrying its LSTM state. Shapes never change: a hypothesis that completed a stop string (``GenerationOptions.stop``)
is done, keeps its score and extends only by a free STOPPED id, so it competes with the live ones until a
better one pushes it out. Before the search has ``beam`` distinct hypotheses (the first steps of a small
vocabulary), the missing ones have score -inf and are dropped from the result.

``length_penalty`` (alpha) ranks the final hypotheses by ``score / length ** alpha`` (length: generated ids up
to and including a stop) so that a hypothesis that stopped early is not preferred only for being short; the
search itself keeps the best raw sums. With ``beam`` at least ``vocab ** (length - 1)`` the search keeps every
sequence until the last step and returns exactly the best ``beam`` of all ``vocab ** length`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.use.stops import STOPPED, ends_with_stop

MAX_BEAM = 256


@dataclass(frozen=True)
class Hypothesis:
    """One result of a beam search: its text, the log2-probability the model gives it, its generated length."""

    text: str
    log2p: float
    length: int
    score: float  # what it was ranked by: log2p, divided by length ** length_penalty when one is given


@partial(jax.jit, static_argnames=("model", "beam", "length"))
def beam_ids(params, prompt_ids: jax.Array, stop_ids, length_penalty, *, model, beam: int, length: int):
    """The ``beam`` best continuations of ``prompt_ids`` (P,): ids (beam, length) (STOPPED after a stop), their
    log-probabilities in nats (beam,), generated lengths (beam,) and ranking scores (beam,), best first.

    ``stop_ids`` (stops, width) as ``GenerationOptions.with_stop_ids`` encodes them (one row), or None;
    ``length_penalty`` a float (0: rank by the raw sum).
    """
    variables = {"params": params}
    carries, logits = model.apply(variables, prompt_ids[None, :], model.zero_carries(1), last_only=True)
    carries = jax.tree.map(lambda x: jnp.repeat(x, beam, axis=0), carries)
    logits = jnp.repeat(logits, beam, axis=0)
    vocab = logits.shape[-1]
    width = 0 if stop_ids is None else stop_ids.shape[-1]
    tail = jnp.full((beam, width), STOPPED, jnp.int32)
    if width:
        known = prompt_ids[max(0, prompt_ids.shape[0] - width) :]
        tail = tail.at[:, width - known.shape[0] :].set(known[None, :])
    state = (
        carries,
        logits,
        jnp.full(beam, -jnp.inf).at[0].set(0.0),  # one live hypothesis at first: no duplicates
        jnp.full((beam, length), STOPPED, jnp.int32),
        jnp.zeros(beam, bool),
        jnp.full(beam, length, jnp.int32),
        tail,
    )

    def step(state, t):
        carries, logits, scores, ids, done, ends, tail = state
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        free = jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf)  # a done hypothesis: one free continuation
        log_probs = jnp.where(done[:, None], free[None, :], log_probs)
        best, flat = jax.lax.top_k((scores[:, None] + log_probs).reshape(-1), beam)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        carries = jax.tree.map(lambda x: x[parent], carries)
        done, ends, tail = done[parent], ends[parent], tail[parent]
        emitted = jnp.where(done, STOPPED, token)
        ids = ids[parent].at[:, t].set(emitted)
        carries, logits = model.apply(variables, jnp.where(done, 0, token)[:, None], carries, last_only=True)
        if width:
            tail = jnp.concatenate([tail[:, 1:], emitted[:, None]], axis=1)
            stopped = ~done & ends_with_stop(tail, stop_ids[None])
            ends = jnp.where(stopped, t + 1, ends)
            done = done | stopped
        return (carries, logits, best, ids, done, ends, tail), None

    state, _ = jax.lax.scan(step, state, jnp.arange(length))
    _, _, scores, ids, _, ends, _ = state
    ranked = jnp.where(length_penalty > 0, scores / ends.astype(jnp.float32) ** length_penalty, scores)
    order = jnp.argsort(-ranked, stable=True)
    return ids[order], scores[order], ends[order], ranked[order]


def check_beam(beam, length_penalty) -> None:
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or not 1 <= beam <= MAX_BEAM:
        raise CharLMError(f"beam must be an integer from 1 to {MAX_BEAM}, got {beam!r}: pass e.g. --beam 4")
    if (
        isinstance(length_penalty, bool)
        or not isinstance(length_penalty, (int, float))
        or not (np.isfinite(length_penalty) and length_penalty >= 0)
    ):
        raise CharLMError(
            f"length_penalty must be a finite number >= 0 (0: rank by the sum), got {length_penalty!r}: "
            "pass e.g. --length-penalty 1.0"
        )


def beam_search(
    lm, prompt: str | None = None, *, beam: int = 4, length: int = 100, stop=(), length_penalty: float = 0.0
) -> list[Hypothesis]:
    """The ``beam`` likeliest continuations of ``prompt`` under ``lm`` (a ``LanguageModel``), best first.

    ``stop``: strings that end a hypothesis (kept in its text); ``length_penalty``: rank by
    ``log2p / length ** length_penalty`` (see the module docstring). The prompt is read as ``generate`` reads it
    (stateful, lower-cased as the training text was). One compiled call.
    """
    from charlm_jax.settings.generation import GenerationOptions
    from charlm_jax.use.lm import generation_options

    check_beam(beam, length_penalty)
    options = generation_options(GenerationOptions(length=length, temperatures=(1.0,), stop=tuple(stop)), {}, lm)
    prompt_ids = lm.encode_prompt(lm.default_prompt if prompt is None else prompt)
    stop_ids = None if options.stop_ids is None else options.stop_ids[0]
    ids, scores, ends, ranked = beam_ids(
        lm.params, prompt_ids, stop_ids, float(length_penalty), model=lm.model, beam=int(beam), length=length
    )
    to_bits = 1 / np.log(2.0)
    return [
        Hypothesis(lm.vocab.decode(row[row != STOPPED]), float(score) * to_bits, int(end), float(rank) * to_bits)
        for row, score, end, rank in zip(np.asarray(ids), np.asarray(scores), np.asarray(ends), np.asarray(ranked))
        if np.isfinite(score)
    ]
