"""Whole samples in one jitted ``lax.scan``: no Python work per generated character.

Two modes:

* ``stateful`` (the default for ``generate``): read the prompt once, then carry
  the LSTM state and feed one character per step, O(1) work per character.
* ``window``: re-read the last ``maxlen`` characters from a zero state at every
  step, exactly what the book's loop does with ``model.predict``; O(maxlen)
  work per character. A prompt shorter than ``maxlen`` is read as it is (a
  shorter window), never padded with characters the model did not see.

The model was trained on windows that start from a zero state, so ``window``
is the book's distribution exactly, while ``stateful`` conditions on the
whole history; for a text no longer than ``maxlen`` the two are identical.

Every option travels as one ``GenerationOptions`` (``charlm_jax.options``); every row of the
batch has its own temperature, so the book's four temperatures (and many prompts) run as one
call. Random numbers: row ``r`` of a call draws step ``t`` from
``fold_in(fold_in(key, first_row + r), t)``, so a row's text depends only on the key, its row
index and its own settings: not on the other rows, the batch size, the device count, the
length asked for (a shorter sample is a prefix of a longer one), or how the steps are grouped
into calls, so a whole sample (``generate_ids``) and the same sample streamed in chunks
(``stream_start`` + ``stream_chunk``) are identical.

Repetition controls (``repetition_penalty``, ``no_repeat_ngram``) read the ids so far from a
fixed-size history carried in the scan, so new values of them never recompile and cost no
Python per step.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.config import MAX_NO_REPEAT_NGRAM
from charlm_jax.errors import CharLMError
from charlm_jax.options import GenerationOptions
from charlm_jax.sampling import ban, draw_noise, repetition_penalty, sample_with_noise

# MAX_NO_REPEAT_NGRAM is the longest n-gram no_repeat_ngram can forbid: the history comparison
# unrolls this many offsets (a static bound, so any n up to it is traced and never recompiles).
# Random numbers drawn at once for a chunk of steps (vectorised threefry beats one call per
# step); the chunk shrinks so the noise stays under this many float32s.
NOISE_BUDGET = 4 * 2**20
# Steps per chunk of the training loop's per-epoch samples, which give way to a stop request
# between chunks however long they are (and the stream's default piece, in ``lm``).
SAMPLE_CHUNK = 200


def as_key(seed: int | jax.Array) -> jax.Array:
    """A ``jax.random`` key from an integer seed (or a key, returned as it is): the one conversion."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    seed = jnp.asarray(seed)
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed.shape == (2,) and seed.dtype == jnp.uint32:  # a legacy jax.random.PRNGKey
        return jax.random.wrap_key_data(seed)
    if seed.shape == () and jnp.issubdtype(seed.dtype, jnp.integer):
        return jax.random.key(seed)
    raise CharLMError(f"seed must be an integer or a jax.random key, got {seed.dtype}{list(seed.shape)}")


class DecodeState(NamedTuple):
    """What a generation step carries: the model's state, the rows' keys and, when needed, the ids so far.

    ``history`` holds every id so far (prompt, then generated) when a repetition control
    is on, else it has width 0; ``count`` is how many of its columns are filled.
    """

    carries: Any  # stateful: the LSTM state after the text so far
    logits: jax.Array  # (batch, vocab) logits of the next id (stateful mode)
    window: jax.Array  # (batch, maxlen) window mode: the last ids, left-aligned; else (batch, 0)
    filled: jax.Array  # () int32: real ids in the window
    history: jax.Array  # (batch, prompt + steps) int32, or (batch, 0)
    count: jax.Array  # () int32: ids written to history
    row_keys: jax.Array  # (batch,) keys, one per row
    step: jax.Array  # () int32: steps generated so far


def start(params, key: jax.Array, prompt_ids: jax.Array, options: GenerationOptions, first_row=0, *,
          model, steps: int, maxlen: int) -> DecodeState:
    """The state after reading ``prompt_ids`` (batch, prompt), before the first generated id.

    ``steps`` is how many steps will run from it (the width of the history a repetition
    control reads); ``first_row`` is the index of this call's first row (see the module docstring).
    """
    batch, prompt_len = prompt_ids.shape
    if batch != options.temperatures.shape[0]:
        raise CharLMError(f"{batch} prompt rows but {options.temperatures.shape[0]} temperatures: pass one "
                          "temperature per row")
    variables = {"params": params}
    if options.mode == "stateful":
        carries, logits = model.apply(variables, prompt_ids, model.zero_carries(batch), last_only=True)
        window, filled = jnp.zeros((batch, 0), jnp.int32), jnp.int32(0)
    else:
        carries = model.zero_carries(batch)
        logits = jnp.zeros((batch, model.vocab_size), jnp.float32)  # computed from the window each step
        filled = min(prompt_len, maxlen)
        window = jnp.zeros((batch, maxlen), jnp.int32).at[:, :filled].set(prompt_ids[:, prompt_len - filled:])
        filled = jnp.int32(filled)
    width = prompt_len + steps if options.keeps_history else 0
    history = jnp.zeros((batch, width), jnp.int32)
    if options.keeps_history:
        history = history.at[:, :prompt_len].set(prompt_ids)
    rows = jnp.asarray(first_row, jnp.int32) + jnp.arange(batch, dtype=jnp.int32)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(as_key(key), rows)
    return DecodeState(carries, logits, window, filled, history, jnp.int32(prompt_len if options.keeps_history else 0),
                       row_keys, jnp.int32(0))


def run_steps(params, state: DecodeState, options: GenerationOptions, *, model,
              count: int) -> tuple[DecodeState, jax.Array]:
    """The next ``count`` steps from ``state``: the new state and ids (batch, count).

    The steps run as scans over chunks whose random numbers are drawn together; the ids
    depend only on the state and ``options``, never on how the steps are grouped.
    """
    batch, vocab = state.logits.shape
    noise_per_step = batch * (vocab if options.sampler == "gumbel" else 1)
    chunk = int(max(1, min(count, 64, NOISE_BUDGET // noise_per_step)))
    step = partial(_decode_step, params, model=model, options=options)

    def run_chunk(state, size):
        steps = state.step + jnp.arange(size, dtype=jnp.int32)
        noise = jax.vmap(lambda t: _row_noise(state.row_keys, t, vocab, options.sampler))(steps)  # (size, batch[, vocab])
        return jax.lax.scan(step, state, noise)

    whole = (count // chunk) * chunk
    state, ids = jax.lax.scan(lambda s, _: run_chunk(s, chunk), state, None, length=count // chunk)
    ids = ids.reshape(whole, batch)
    if whole < count:
        state, tail = run_chunk(state, count - whole)
        ids = jnp.concatenate([ids, tail])
    return state, ids.T  # (batch, count)


def _row_noise(row_keys: jax.Array, step: jax.Array, vocab: int, sampler: str) -> jax.Array:
    """Step ``step``'s random numbers, each row from its own key: (batch, vocab) or (batch,)."""
    keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
    return jax.vmap(lambda key: draw_noise(key, (vocab,), sampler))(keys)


def _decode_step(params, state: DecodeState, noise: jax.Array, *, model,
                 options: GenerationOptions) -> tuple[DecodeState, jax.Array]:
    variables = {"params": params}
    batch = state.logits.shape[0]
    if options.mode == "window":
        lengths = jnp.full((batch,), state.filled, jnp.int32)
        _, logits = model.apply(variables, state.window, model.zero_carries(batch), seq_lengths=lengths,
                                last_only=True)
    else:
        logits = state.logits
    logits = _repetition_controls(logits, state, options)
    next_ids = sample_with_noise(noise, logits, options.temperatures, top_k=options.top_k, top_p=options.top_p,
                                 min_p=options.min_p, sampler=options.sampler)  # (batch,)
    if options.mode == "window":
        maxlen = state.window.shape[1]
        window = jnp.where(state.filled == maxlen, jnp.roll(state.window, -1, axis=1), state.window)
        position = jnp.minimum(state.filled, maxlen - 1)
        window = jax.lax.dynamic_update_slice(window, next_ids[:, None], (0, position))
        state = state._replace(window=window, filled=jnp.minimum(state.filled + 1, maxlen))
    else:
        carries, logits = model.apply(variables, next_ids[:, None], state.carries, last_only=True)
        state = state._replace(carries=carries, logits=logits)
    if state.history.shape[1]:
        history = jax.lax.dynamic_update_slice(state.history, next_ids[:, None], (0, state.count))
        state = state._replace(history=history, count=state.count + 1)
    return state._replace(step=state.step + 1), next_ids


def _repetition_controls(logits: jax.Array, state: DecodeState, options: GenerationOptions) -> jax.Array:
    """Penalise ids seen in the last ``repetition_window`` ids; forbid ids that repeat an n-gram."""
    if not options.keeps_history:
        return logits
    history, count = state.history, state.count  # (batch, width), ()
    vocab = logits.shape[-1]
    positions = jnp.arange(history.shape[1])
    if options.repetition_penalty is not None:
        recent = (positions < count) & (positions >= count - options.repetition_window)  # (width,)
        present = _ids_present(history, jnp.broadcast_to(recent, history.shape), vocab)
        logits = repetition_penalty(logits, present, options.repetition_penalty)
    if options.no_repeat_ngram is not None:
        logits = ban(logits, _ngram_bans(history, count, options.no_repeat_ngram, vocab))
    return logits


def _ngram_bans(history: jax.Array, count: jax.Array, n, vocab: int) -> jax.Array:
    """(batch, vocab): ids that would complete an n-gram already in ``history[:, :count]``.

    An earlier n-gram starting at j matches when its first n - 1 ids equal the last n - 1
    ids of the text; its n-th id, ``history[j + n - 1]``, is then banned. Offsets past
    ``n - 1`` (up to MAX_NO_REPEAT_NGRAM) are switched off by a mask, so ``n`` is traced.
    """
    batch, width = history.shape
    starts = jnp.arange(width)  # candidate n-gram starts j
    match = (starts + n <= count)[None, :]  # the whole earlier n-gram lies in the text so far
    for k in range(MAX_NO_REPEAT_NGRAM - 1):
        used = k < n - 1
        earlier = jnp.take(history, jnp.minimum(starts + k, width - 1), axis=1)  # history[j + k]
        tail = jax.lax.dynamic_slice_in_dim(history, jnp.maximum(count - (n - 1) + k, 0), 1, axis=1)  # (batch, 1)
        match = match & (~used | (earlier == tail))
    banned_ids = jnp.take(history, jnp.minimum(starts + n - 1, width - 1), axis=1)  # (batch, width)
    return _ids_present(banned_ids, jnp.broadcast_to(match & (count >= n - 1), banned_ids.shape), vocab)


def _ids_present(ids: jax.Array, where: jax.Array, vocab: int) -> jax.Array:
    """(batch, vocab): which ids occur in ``ids`` (batch, width) at the positions ``where`` is true."""
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab), bool).at[rows, ids].max(where)


def _generate_ids(params, key: jax.Array, prompt_ids: jax.Array, options: GenerationOptions, first_row=0, *,
                  model, maxlen: int) -> jax.Array:
    """``options.length`` ids after each prompt row: (batch, prompt) -> (batch, length)."""
    state = start(params, key, prompt_ids, options, first_row, model=model, steps=options.length, maxlen=maxlen)
    return run_steps(params, state, options, model=model, count=options.length)[1]


# The two compiled computations of generation, each with one cache that every caller shares (the
# public API, the training loop's samples, benchmarks and tests):
#
# generate_ids(params, key, prompt_ids (batch, P), options, first_row=0, *, model, maxlen) -> (batch, length)
#   ``model`` is any Flax module with ``vocab_size``, ``zero_carries(batch)`` and
#   ``__call__(ids, carries, seq_lengths=, last_only=True) -> (carries, logits)`` (``CharLSTM``, or a
#   test's fixed bigram table); ``key`` a jax.random key or an integer seed.
generate_ids = jax.jit(_generate_ids, static_argnames=("model", "maxlen"))
# The same generation in pieces: stream_start(...) -> state, then stream_chunk(params, state, options,
# model=, count=) -> (state, ids (batch, count)) as often as needed; identical text.
stream_start = jax.jit(start, static_argnames=("model", "steps", "maxlen"))
stream_chunk = jax.jit(run_steps, static_argnames=("model", "count"))
