"""How likely the model finds a text: the log-probability of each character, in fixed shapes.

Two readings of "the model's probability of a text":

* ``window``: each character from position ``maxlen`` on, predicted from the ``maxlen``
  characters before it, from a zero state: the book's training windows, and exactly the
  validation metric the training loop reports for its held-out tail.
* ``stateful``: every character from position 1 on, predicted with the LSTM state carried
  from the first character, as stateful generation reads text.

Both run as jitted calls of one fixed shape (``WINDOW_BATCH`` windows, or ``STATEFUL_CHUNK``
characters), so any length of text compiles once and needs memory for its ids and scores
only (8 bytes per character) besides one batch.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charlm_jax.data.windows import gather_windows

WINDOW_BATCH = 512
STATEFUL_CHUNK = 2048
SCORE_MODES = ("window", "stateful")


def nats_to_bits(nats):
    """Nats (natural-log units, what the losses are in) to bits: the one conversion."""
    return nats / math.log(2.0)


def window_nll(params, windows: jax.Array, *, model, maxlen: int) -> jax.Array:
    """The metric: negative log-probability (nats) of each window's last id, (batch,).

    ``windows`` (batch, maxlen + 1): each last character is predicted from the ``maxlen`` before
    it, from a zero state (the book's objective). Training's validation (``train.eval_step``) and
    ``charlm_jax.score`` both use it.
    """
    _, logits = model.apply({"params": params}, windows[:, :maxlen], last_only=True)  # (batch, vocab)
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, maxlen])


@partial(jax.jit, static_argnames=("model", "maxlen"))
def _window_nll(params, corpus_ids: jax.Array, starts: jax.Array, *, model, maxlen: int) -> jax.Array:
    """``window_nll`` of the windows starting at ``starts`` in a text already on the device."""
    return window_nll(params, gather_windows(corpus_ids, starts, maxlen + 1), model=model, maxlen=maxlen)


@partial(jax.jit, static_argnames=("model",))
def stateful_nll(params, carries, inputs: jax.Array, targets: jax.Array, *, model):
    """One chunk of a carried-state pass: (new carries, negative log-probability of each target, (chunk,))."""
    carries, logits = model.apply({"params": params}, inputs[None, :], carries)  # (1, chunk, vocab)
    return carries, optax.softmax_cross_entropy_with_integer_labels(logits[0], targets)


def score_ids(params, model, ids: np.ndarray, mode: str, maxlen: int) -> np.ndarray:
    """log2-probability of each scored character of ``ids`` (see the module docstring), float64."""
    if mode == "window":
        nll = _window_scores(params, model, ids, maxlen)
    else:
        nll = _stateful_scores(params, model, ids)
    return -nats_to_bits(nll)


def _window_scores(params, model, ids: np.ndarray, maxlen: int) -> np.ndarray:
    corpus = jnp.asarray(ids)
    starts = np.arange(0, max(len(ids) - maxlen, 0), dtype=np.int32)
    scores = np.empty(len(starts), np.float64)
    for begin in range(0, len(starts), WINDOW_BATCH):
        batch = starts[begin : begin + WINDOW_BATCH]
        padded = np.resize(batch, WINDOW_BATCH)  # the last batch repeats windows, its extra scores dropped
        scores[begin : begin + len(batch)] = np.asarray(
            _window_nll(params, corpus, padded, model=model, maxlen=maxlen)
        )[: len(batch)]
    return scores


def _stateful_scores(params, model, ids: np.ndarray) -> np.ndarray:
    inputs, targets = ids[:-1], ids[1:]
    scores = np.empty(len(targets), np.float64)
    # Placed like the parameters, as the carries each call returns are, so every call reuses one compile.
    carries = jax.device_put(model.zero_carries(1), jax.tree.leaves(params)[0].sharding)
    for begin in range(0, len(targets), STATEFUL_CHUNK):
        chunk_inputs = inputs[begin : begin + STATEFUL_CHUNK]
        n = len(chunk_inputs)
        pad = STATEFUL_CHUNK - n  # only the last chunk: the carry after it is never used
        carries, chunk_scores = stateful_nll(
            params, carries, np.pad(chunk_inputs, (0, pad)), np.pad(targets[begin : begin + n], (0, pad)), model=model
        )
        scores[begin : begin + n] = np.asarray(chunk_scores)[:n]
    return scores
