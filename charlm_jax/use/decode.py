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

Every option travels as one ``GenerationOptions`` (``charlm_jax.settings.generation``); every row of the
batch has its own temperature, so the book's four temperatures (and many prompts) run as one
call. Random numbers: row ``r`` of a call draws step ``t`` from
``fold_in(fold_in(key, first_row + r), t)``, so a row's text depends only on the key, its row
index and its own settings: not on the other rows, the batch size, the device count, the
length asked for (a shorter sample is a prefix of a longer one), or how the steps are grouped
into calls, so a whole sample (``generate_ids``) and the same sample streamed in chunks
(``stream_start`` + ``stream_chunk``) are identical.

Repetition controls (``repetition_penalty``, ``no_repeat_ngram``) read the last
``history_window`` ids from a ring carried in the scan, with what they need kept up to date one
id at a time: a count of each id in the penalty's window (O(vocab) per step), and, for every id in
the ring, how many ids before it match the ids before the newest one (O(window) per step), from
which the n-gram ban is read for any n. Their cost per character is bounded by the window and
never grows with the text; new values of them never recompile and cost no Python per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.runtime.seeds import check_seed, seed_key
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.use.copies import copied_ngrams
from charlm_jax.use.sampling import ban, draw_noise, repetition_penalty, sample_with_noise
from charlm_jax.use.stops import STOP_CHECK_STEPS, STOPPED, ends_with_stop, stop_tail, until_all_stopped

# Random numbers are drawn at once for a chunk of steps (one vectorised threefry instead of one
# per step, whose fixed cost on a CPU is several steps' worth of LSTM); the chunk shrinks so its
# noise stays under this many float32s.
NOISE_BUDGET = 4 * 2**20
# Steps of the decode scan unrolled into one loop iteration. benchmarks/generation.py measures 1, 2,
# 4 and 8: on XLA:CPU the per-step cost is the kernels (the recurrent matvec, the gate fusions), not
# the loop's round trip, so unrolling bought nothing measurable and only lengthens compilation. The
# ids never depend on it; an accelerator run may choose otherwise.
DECODE_UNROLL = 1
# Steps per chunk of the training loop's per-epoch samples, which give way to a stop request
# between chunks however long they are (and the stream's default piece, in ``lm``).
SAMPLE_CHUNK = 200


def as_key(seed: int | jax.Array) -> jax.Array:
    """A ``jax.random`` key from an integer seed of any size (``seeds.seed_key``), or a key, returned as it is."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return seed_key(seed)
    if not isinstance(seed, (jax.Array, np.ndarray)):
        check_seed(seed)  # a bool, a float, a string: refused in one line
    seed = jnp.asarray(seed)
    if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    if seed.shape == (2,) and seed.dtype == jnp.uint32:  # a legacy jax.random.PRNGKey
        return jax.random.wrap_key_data(seed)
    if seed.shape == () and jnp.issubdtype(seed.dtype, jnp.integer):
        return jax.random.key(seed)
    raise CharLMError(f"seed must be an integer or a jax.random key, got {seed.dtype}{list(seed.shape)}")


class DecodeState(NamedTuple):
    """What a generation step carries: the model's state, the rows' keys and, when a repetition
    control is on, the last ids and what the controls derive from them.

    ``recent`` is a ring of the last ``history_window`` ids (slot ``i % width`` holds the i-th id
    pushed; -1 while empty), ``pushed`` how many ids went in. ``matched[:, s]`` is how many ids,
    ending at slot s, equal the same number ending at the newest id (0 for the newest itself):
    the n-gram ban reads it. ``counts[:, v]`` is how often id v occurs among the last
    ``repetition_window`` ids: the penalty reads it. Each has width 0 when nothing reads it.
    """

    carries: Any  # stateful: the LSTM state after the text so far
    logits: jax.Array  # (batch, vocab) logits of the next id (stateful mode)
    window: jax.Array  # (batch, maxlen) window mode: the last ids, left-aligned; else (batch, 0)
    filled: jax.Array  # () int32: real ids in the window
    recent: jax.Array  # (batch, width) int32 ring of the last ids, or (batch, 0)
    matched: jax.Array  # (batch, width) int32, or (batch, 0)
    counts: jax.Array  # (batch, vocab) int32, or (batch, 0)
    pushed: jax.Array  # (batch,) int32: ids pushed into each row's ring
    row_keys: jax.Array  # (batch,) keys, one per row
    step: jax.Array  # (batch,) int32: steps each row has generated (rows of a server's batch start apart)
    tail: jax.Array  # (batch, longest stop) int32: the last ids, compared with the stop strings; else (batch, 0)
    done: jax.Array  # (batch,) bool: the row completed a stop string (its later ids are STOPPED)


def start(
    params,
    key: jax.Array,
    prompt_ids: jax.Array,
    options: GenerationOptions,
    first_row=0,
    *,
    model,
    steps: int,
    maxlen: int,
) -> DecodeState:
    """The state after reading ``prompt_ids`` (batch, prompt), before the first generated id.

    ``steps`` is how many steps will run from it (the width of the history a repetition
    control reads); ``first_row`` is the index of this call's first row (see the module docstring).
    """
    batch, prompt_len = prompt_ids.shape
    if batch != options.temperatures.shape[0]:
        raise CharLMError(
            f"{batch} prompt rows but {options.temperatures.shape[0]} temperatures: pass one temperature per row"
        )
    variables = {"params": params}
    if options.mode == "stateful":
        carries, logits = model.apply(variables, prompt_ids, model.zero_carries(batch), last_only=True)
        window, filled = jnp.zeros((batch, 0), jnp.int32), jnp.int32(0)
    else:
        carries = model.zero_carries(batch)
        logits = jnp.zeros((batch, model.vocab_size), jnp.float32)  # computed from the window each step
        filled = min(prompt_len, maxlen)
        window = jnp.zeros((batch, maxlen), jnp.int32).at[:, :filled].set(prompt_ids[:, prompt_len - filled :])
        filled = jnp.int32(filled)
    rows = jnp.asarray(first_row, jnp.int32) + jnp.arange(batch, dtype=jnp.int32)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(as_key(key), rows)
    state = DecodeState(
        carries,
        logits,
        window,
        filled,
        *_empty_history(batch, prompt_len + steps, model.vocab_size, options),
        row_keys,
        jnp.zeros(batch, jnp.int32),
        *stop_tail(prompt_ids, jnp.full(batch, prompt_len, jnp.int32), options.stop_ids),
    )
    if options.keeps_history:
        # Only the prompt's last ``width`` ids can matter: the ring's state depends on nothing older.
        width = state.recent.shape[1]
        state, _ = jax.lax.scan(
            lambda st, ids: (_push(st, ids, options), None), state, prompt_ids[:, max(0, prompt_len - width) :].T
        )
    return state


def start_rows(
    params, row_keys: jax.Array, prompt_ids: jax.Array, prompt_lengths: jax.Array, options: GenerationOptions, *, model
) -> DecodeState:
    """``start`` (stateful) for rows that each bring their own key and a right-padded prompt.

    ``prompt_ids`` (batch, P) holds row r's prompt in its first ``prompt_lengths[r]`` places, so prompts of
    any length share the compiled call of their padded length (a server pads to a few lengths). A row's
    state, and so its text, is the one ``start`` gives its prompt with the key ``row_keys[r]``; the
    history ring is ``options.history_window`` wide, which holds the same ids (``start`` narrows it only
    when the text is shorter).
    """
    batch, prompt_len = prompt_ids.shape
    carries, logits = model.apply(
        {"params": params}, prompt_ids, model.zero_carries(batch), seq_lengths=prompt_lengths, last_only=True
    )
    empty = jnp.zeros((batch, 0), jnp.int32)
    state = DecodeState(
        carries,
        logits,
        empty,
        jnp.int32(0),
        *_empty_history(batch, options.history_window, model.vocab_size, options),
        row_keys,
        jnp.zeros(batch, jnp.int32),
        *stop_tail(prompt_ids, prompt_lengths, options.stop_ids),
    )
    if not options.keeps_history:
        return state

    def push_real(state: DecodeState, column) -> tuple[DecodeState, None]:
        ids, position = column
        pushed = _push(state, ids, options)
        # Only the last ``width`` real ids matter (as in ``start``); padding is never pushed.
        real = (position < prompt_lengths) & (position >= prompt_lengths - state.recent.shape[1])

        def pick(new, old):
            return jnp.where(real.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        return state._replace(
            recent=pick(pushed.recent, state.recent),
            matched=pick(pushed.matched, state.matched),
            counts=pick(pushed.counts, state.counts),
            pushed=pick(pushed.pushed, state.pushed),
        ), None

    state, _ = jax.lax.scan(push_real, state, (prompt_ids.T, jnp.arange(prompt_len)))
    return state


def _empty_history(
    batch: int, length: int, vocab: int, options: GenerationOptions
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Ring, matches, counts and pushed for a text of ``length`` ids (prompt + steps) before any id."""
    width = min(options.history_window, length) if options.keeps_history else 0
    recent = jnp.full((batch, width), -1, jnp.int32)
    matched = jnp.zeros((batch, width if options.no_repeat_ngram is not None else 0), jnp.int32)
    counts = jnp.zeros((batch, vocab if options.repetition_penalty is not None else 0), jnp.int32)
    return recent, matched, counts, jnp.zeros(batch, jnp.int32)


def run_steps(
    params, state: DecodeState, options: GenerationOptions, *, model, count: int, unroll: int = DECODE_UNROLL
) -> tuple[DecodeState, jax.Array]:
    """The next ``count`` steps from ``state``: the new state and ids (batch, count).

    The steps run as scans over chunks whose random numbers are drawn together; the ids
    depend only on the state and ``options``, never on how the steps are grouped or unrolled.
    """
    batch, vocab = state.logits.shape
    noise_per_step = batch * (vocab if options.sampler == "gumbel" else 1)
    chunk = int(max(1, min(count, NOISE_BUDGET // noise_per_step)))
    step = partial(_decode_step, params, model=model, options=options)

    def run_chunk(state, size):
        steps = state.step[None, :] + jnp.arange(size, dtype=jnp.int32)[:, None]  # (size, batch)
        noise = jax.vmap(lambda t: _row_noise(state.row_keys, t, vocab, options.sampler))(
            steps
        )  # (size, batch[, vocab])
        return jax.lax.scan(step, state, noise, unroll=min(unroll, size))

    if options.stop_ids is not None:  # checked between chunks: once every row stopped, nothing more runs
        chunk = min(chunk, STOP_CHECK_STEPS)
    whole = (count // chunk) * chunk
    if options.stop_ids is not None:
        state, ids = until_all_stopped(run_chunk, state, chunk, count // chunk)
    elif count // chunk == 1:
        state, ids = run_chunk(state, chunk)
    else:
        state, ids = jax.lax.scan(lambda s, _: run_chunk(s, chunk), state, None, length=count // chunk)
    ids = ids.reshape(whole, batch)
    if whole < count:
        state, tail = run_chunk(state, count - whole)
        ids = jnp.concatenate([ids, tail])
    return state, ids.T  # (batch, count)


def _row_noise(row_keys: jax.Array, steps: jax.Array, vocab: int, sampler: str) -> jax.Array:
    """Each row's random numbers for its step ``steps`` (batch,), from its own key: (batch, vocab) or (batch,)."""
    keys = jax.vmap(jax.random.fold_in)(row_keys, steps)
    return jax.vmap(lambda key: draw_noise(key, (vocab,), sampler))(keys)


def _decode_step(
    params, state: DecodeState, noise: jax.Array, *, model, options: GenerationOptions
) -> tuple[DecodeState, jax.Array]:
    variables = {"params": params}
    batch = state.logits.shape[0]
    if options.mode == "window":
        lengths = jnp.full((batch,), state.filled, jnp.int32)
        _, logits = model.apply(variables, state.window, model.zero_carries(batch), seq_lengths=lengths, last_only=True)
    else:
        logits = state.logits
    logits = _repetition_controls(logits, state, options)
    next_ids = sample_with_noise(
        noise,
        logits,
        options.temperatures,
        top_k=options.top_k,
        top_p=options.top_p,
        min_p=options.min_p,
        sampler=options.sampler,
    )  # (batch,)
    if options.stop_ids is not None:
        # A row that stopped returns STOPPED and reads id 0 from here on: its state no longer matters.
        emitted = jnp.where(state.done, STOPPED, next_ids)
        tail = jnp.concatenate([state.tail[:, 1:], emitted[:, None]], axis=1)
        state = state._replace(tail=tail, done=state.done | ends_with_stop(tail, options.stop_ids))
        next_ids = jnp.where(emitted == STOPPED, 0, next_ids)
    else:
        emitted = next_ids
    if options.mode == "window":
        maxlen = state.window.shape[1]
        window = jnp.where(state.filled == maxlen, jnp.roll(state.window, -1, axis=1), state.window)
        position = jnp.minimum(state.filled, maxlen - 1)
        window = jax.lax.dynamic_update_slice(window, next_ids[:, None], (0, position))
        state = state._replace(window=window, filled=jnp.minimum(state.filled + 1, maxlen))
    else:
        carries, logits = model.apply(variables, next_ids[:, None], state.carries, last_only=True)
        state = state._replace(carries=carries, logits=logits)
    if options.keeps_history:
        state = _push(state, next_ids, options)
    return state._replace(step=state.step + 1), emitted


def _push(state: DecodeState, ids: jax.Array, options: GenerationOptions) -> DecodeState:
    """``state`` after the id ``ids`` (batch,) joins the text: ring, matches and counts updated.

    Written as element-wise work over the ring and the vocabulary (one-hot sums, masks built from
    iotas) rather than scatters: on a CPU each scatter is a kernel call of its own, which at one
    stream costs more than the arithmetic.
    """
    recent, width = state.recent, state.recent.shape[1]
    slots = jnp.arange(width)
    slot = state.pushed % width  # (batch,): where the new id goes; it holds the id leaving the ring, if full
    at_slot = slots[None, :] == slot[:, None]  # (batch, width)
    if options.repetition_penalty is not None:
        # The id leaving the penalty's window (repetition_window <= width, so it is still in the ring).
        leaving_pos = state.pushed - options.repetition_window  # (batch,)
        leaving = _at(recent, jnp.maximum(leaving_pos, 0) % width)
        vocab = state.counts.shape[1]
        counts = (
            state.counts
            + jax.nn.one_hot(ids, vocab, dtype=jnp.int32)
            - jnp.where(leaving_pos[:, None] >= 0, jax.nn.one_hot(leaving, vocab, dtype=jnp.int32), 0)
        )
        state = state._replace(counts=counts)
    if options.no_repeat_ngram is not None:
        # An id matches the new suffix when it equals the new id and the id before it matched the old
        # suffix. The slot being overwritten leaves the ring, so nothing extends a match from it (a
        # match never reaches past the ring's oldest id), and the new id itself is not "earlier".
        before = jnp.roll(jnp.where(at_slot, 0, state.matched), 1, axis=1)  # before[:, s] = matched[:, s - 1]
        matched = jnp.where((recent == ids[:, None]) & ~at_slot, before + 1, 0)
        state = state._replace(matched=matched)
    return state._replace(recent=jnp.where(at_slot, ids[:, None], recent), pushed=state.pushed + 1)


def _at(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[r, index[r]]`` for every row r: (batch, width), (batch,) -> (batch,)."""
    return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]


def _repetition_controls(logits: jax.Array, state: DecodeState, options: GenerationOptions) -> jax.Array:
    """Penalise ids seen in the last ``repetition_window`` ids; forbid ids that repeat an n-gram of the text so far,
    or complete one of the training text."""
    if options.repetition_penalty is not None:
        logits = repetition_penalty(logits, state.counts > 0, options.repetition_penalty)
    if options.no_repeat_ngram is not None:
        logits = ban(logits, _ngram_bans(state, options.no_repeat_ngram, logits.shape[-1]))
    if options.no_copy_ngram is not None:
        logits = ban(
            logits,
            copied_ngrams(state.recent, state.pushed, options.copy_table, options.no_copy_ngram, logits.shape[-1]),
        )
    return logits


def _ngram_bans(state: DecodeState, n, vocab: int) -> jax.Array:
    """(batch, vocab): ids that would complete an n-gram occurring wholly inside the ring.

    An earlier id at slot s whose last n - 1 ids equal the text's last n - 1 ids
    (``matched >= n - 1``) was followed by the id in slot s + 1: that id is banned. For n = 1
    every id in the ring is banned; the oldest has no slot before it, so it is added apart.
    """
    recent, matched, pushed = state.recent, state.matched, state.pushed
    width = recent.shape[1]
    followers = jnp.roll(recent, -1, axis=1)  # followers[:, s] = recent[:, s + 1]
    slots = jnp.arange(width)[None, :]
    newest = ((pushed - 1) % width)[:, None]
    earlier = (slots != newest) & (slots < pushed[:, None])  # (batch, width): an id with a follower in the ring
    banned = _ids_present(followers, (matched >= n - 1) & earlier, vocab)
    oldest = _at(recent, jnp.where(pushed > width, pushed % width, 0))  # (batch,)
    return banned | ((n == 1) & (pushed > 0)[:, None] & (oldest[:, None] == jnp.arange(vocab)))


def _ids_present(ids: jax.Array, where: jax.Array, vocab: int) -> jax.Array:
    """(batch, vocab): which ids occur in ``ids`` (batch, width) at the positions ``where`` is true."""
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab), bool).at[rows, jnp.maximum(ids, 0)].max(where)


def _generate_ids(
    params,
    key: jax.Array,
    prompt_ids: jax.Array,
    options: GenerationOptions,
    first_row=0,
    *,
    model,
    maxlen: int,
    unroll: int = DECODE_UNROLL,
) -> jax.Array:
    """``options.length`` ids after each prompt row: (batch, prompt) -> (batch, length)."""
    state = start(params, key, prompt_ids, options, first_row, model=model, steps=options.length, maxlen=maxlen)
    return run_steps(params, state, options, model=model, count=options.length, unroll=unroll)[1]


# The two compiled computations of generation, each with one cache that every caller shares (the
# public API, the training loop's samples, benchmarks and tests):
#
# generate_ids(params, key, prompt_ids (batch, P), options, first_row=0, *, model, maxlen) -> (batch, length)
#   ``model`` is any Flax module with ``vocab_size``, ``zero_carries(batch)`` and
#   ``__call__(ids, carries, seq_lengths=, last_only=True) -> (carries, logits)`` (``CharLSTM``, or a
#   test's fixed bigram table); ``key`` a jax.random key or an integer seed.
generate_ids = jax.jit(_generate_ids, static_argnames=("model", "maxlen", "unroll"))
# The same generation in pieces: stream_start(...) -> state, then stream_chunk(params, state, options,
# model=, count=) -> (state, ids (batch, count)) as often as needed; identical text.
stream_start = jax.jit(start, static_argnames=("model", "steps", "maxlen"))
stream_chunk = jax.jit(run_steps, static_argnames=("model", "count", "unroll"))
# Rows that arrive apart (a server's): start_rows(params, row_keys, padded prompts, lengths, options, model=)
# -> state; their states joined into one batch then run by stream_chunk.
rows_start = jax.jit(start_rows, static_argnames=("model",))


def sample_in_chunks(
    params, key, prompt_ids, options: GenerationOptions, first_row=0, *, model, maxlen: int, chunk: int
) -> Iterator[np.ndarray]:
    """The ids ``generate_ids`` would return, yielded ``chunk`` steps at a time: (batch, <= chunk) host arrays.

    One compiled ``stream_chunk`` call per piece, carrying the decoding state; the text is the same
    whatever ``chunk`` is. The public ``stream`` and the training loop's per-epoch samples (which give
    way to a stop request between pieces) both read a sample this way.
    """
    from charlm_jax.runtime.distributed import to_host

    length = options.length
    steps = -(-length // chunk) * chunk  # whole chunks; the last one's extra ids are dropped
    state = stream_start(params, key, prompt_ids, options, first_row, model=model, steps=steps, maxlen=maxlen)
    for begin in range(0, length, chunk):
        state, ids = stream_chunk(params, state, options, model=model, count=chunk)
        ids = to_host(ids)[:, : length - begin]
        yield ids
        if options.stop_ids is not None and np.all(ids[:, -1] == STOPPED):
            return  # every row completed a stop string
