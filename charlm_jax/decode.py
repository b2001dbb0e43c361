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

Every row of the batch has its own temperature, so the book's four
temperatures (and many prompts) run as one call. Step ``t`` of a sample draws
its random numbers from ``jax.random.split(key, length)[t]`` alone, so the text
depends on the key and the length, never on how the steps are grouped: a whole
sample (``generate_ids``) and the same sample streamed in chunks
(``start_decoding`` + ``decode_steps``) are identical, and so are sharded and
unsharded batches.

Repetition controls (``repetition_penalty``, ``no_repeat_ngram``) read the ids
so far from a fixed-size history carried in the scan, so new values of them
never recompile and cost no Python per step.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.config import DEFAULT_REPETITION_WINDOW, DEFAULT_SAMPLER, GENERATION_MODES, MAX_NO_REPEAT_NGRAM
from charlm_jax.errors import CharLMError
from charlm_jax.sampling import ban, check_sampling_args, draw_noise, repetition_penalty, sample_with_noise

# MAX_NO_REPEAT_NGRAM is the longest n-gram no_repeat_ngram can forbid: the history comparison
# unrolls this many offsets (a static bound, so any n up to it is traced and never recompiles).
# Random numbers drawn at once for a chunk of steps (vectorised threefry beats one call per
# step); the chunk shrinks so the noise stays under this many float32s.
NOISE_BUDGET = 4 * 2**20


class Sampling(NamedTuple):
    """How each step draws: temperatures per row and the filters and repetition controls.

    A pytree: ``top_k`` and ``sampler`` are static (hashable) parts; the rest are
    traced, so new values do not recompile (None turns a control off, which does).
    """

    temperatures: jax.Array  # (batch,) float32; 0 is greedy
    top_p: Any = None
    min_p: Any = None
    repetition_penalty: Any = None
    repetition_window: Any = DEFAULT_REPETITION_WINDOW
    no_repeat_ngram: Any = None


class DecodeState(NamedTuple):
    """What a generation step carries: the model's state and, when needed, the ids so far.

    ``history`` holds every id so far (prompt, then generated) when a repetition control
    is on, else it has width 0; ``count`` is how many of its columns are filled.
    """

    carries: Any  # stateful: the LSTM state after the text so far
    logits: jax.Array  # (batch, vocab) logits of the next id (stateful mode)
    window: jax.Array  # (batch, maxlen) window mode: the last ids, left-aligned; else (batch, 0)
    filled: jax.Array  # () int32: real ids in the window
    history: jax.Array  # (batch, prompt + length) int32, or (batch, 0)
    count: jax.Array  # () int32: ids written to history


def start_decoding(params, prompt_ids: jax.Array, *, model, length: int, mode: str = "stateful",
                   maxlen: int = 60, keep_history: bool = False) -> DecodeState:
    """The state after reading ``prompt_ids`` (batch, prompt), before the first generated id."""
    check_mode(mode)
    batch, prompt_len = prompt_ids.shape
    variables = {"params": params}
    if mode == "stateful":
        carries, logits = model.apply(variables, prompt_ids, model.zero_carries(batch), last_only=True)
        window, filled = jnp.zeros((batch, 0), jnp.int32), jnp.int32(0)
    else:
        carries = model.zero_carries(batch)
        logits = jnp.zeros((batch, model.vocab_size), jnp.float32)  # computed from the window each step
        filled = min(prompt_len, maxlen)
        window = jnp.zeros((batch, maxlen), jnp.int32).at[:, :filled].set(prompt_ids[:, prompt_len - filled:])
        filled = jnp.int32(filled)
    width = prompt_len + length if keep_history else 0
    history = jnp.zeros((batch, width), jnp.int32)
    if keep_history:
        history = history.at[:, :prompt_len].set(prompt_ids)
    return DecodeState(carries, logits, window, filled, history, jnp.int32(prompt_len if keep_history else 0))


def decode_steps(params, state: DecodeState, step_keys: jax.Array, sampling: Sampling, *, model,
                 mode: str = "stateful", top_k: int | None = None,
                 sampler: str = DEFAULT_SAMPLER) -> tuple[DecodeState, jax.Array]:
    """Generate one id per key in ``step_keys`` (steps,); returns the new state and ids (batch, steps).

    The steps run as scans over chunks whose random numbers are drawn together, one chunk
    of steps at a time; the ids depend only on the state, the keys and ``sampling``.
    """
    check_mode(mode)
    batch, vocab = state.logits.shape
    steps = step_keys.shape[0]
    noise_per_step = batch * (vocab if sampler == "gumbel" else 1)
    chunk = int(max(1, min(steps, 64, NOISE_BUDGET // noise_per_step)))
    step = partial(_decode_step, params, model=model, mode=mode, sampling=sampling, top_k=top_k, sampler=sampler)
    noise_shape = (batch, vocab)

    def run_chunk(state, keys):  # keys (chunk,)
        noise = jax.vmap(lambda key: draw_noise(key, noise_shape, sampler))(keys)  # (chunk, batch[, vocab])
        return jax.lax.scan(step, state, noise)

    whole = (steps // chunk) * chunk
    state, ids = jax.lax.scan(run_chunk, state, step_keys[:whole].reshape(steps // chunk, chunk))
    ids = ids.reshape(whole, batch)
    if whole < steps:
        state, tail = run_chunk(state, step_keys[whole:])
        ids = jnp.concatenate([ids, tail])
    return state, ids.T  # (batch, steps)


def start_stream(params, prompt_ids: jax.Array, key: jax.Array, *, model, length: int, chunk: int,
                 mode: str = "stateful", maxlen: int = 60,
                 keep_history: bool = False) -> tuple[DecodeState, jax.Array]:
    """The state after the prompt, and the steps' keys padded to whole chunks, in one call.

    The keys are ``jax.random.split(key, length)``, as ``sample_ids`` draws them; the padding
    repeats the last key and only feeds steps past ``length`` that a stream throws away.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key(key)
    steps = -(-length // chunk) * chunk
    step_keys = jax.random.split(key, length)
    step_keys = jnp.concatenate([step_keys, jnp.broadcast_to(step_keys[-1:], (steps - length,))])
    state = start_decoding(params, prompt_ids, model=model, length=steps, mode=mode, maxlen=maxlen,
                           keep_history=keep_history)
    return state, step_keys


def decode_chunk(params, state: DecodeState, step_keys: jax.Array, start: jax.Array, sampling: Sampling, *,
                 model, size: int, mode: str = "stateful", top_k: int | None = None,
                 sampler: str = DEFAULT_SAMPLER) -> tuple[DecodeState, jax.Array]:
    """``decode_steps`` over ``step_keys[start : start + size]``; ``start`` is traced, so a stream
    of chunks compiles once and passes its keys to the device once."""
    keys = jax.lax.dynamic_slice_in_dim(step_keys, start, size)
    return decode_steps(params, state, keys, sampling, model=model, mode=mode, top_k=top_k, sampler=sampler)


def _decode_step(params, state: DecodeState, noise: jax.Array, *, model, mode: str, sampling: Sampling,
                 top_k: int | None, sampler: str) -> tuple[DecodeState, jax.Array]:
    variables = {"params": params}
    batch = state.logits.shape[0]
    if mode == "window":
        lengths = jnp.full((batch,), state.filled, jnp.int32)
        _, logits = model.apply(variables, state.window, model.zero_carries(batch), seq_lengths=lengths,
                                last_only=True)
    else:
        logits = state.logits
    logits = _repetition_controls(logits, state, sampling)
    next_ids = sample_with_noise(noise, logits, sampling.temperatures, top_k=top_k, top_p=sampling.top_p,
                                 min_p=sampling.min_p, sampler=sampler)  # (batch,)
    if mode == "window":
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
    return state, next_ids


def _repetition_controls(logits: jax.Array, state: DecodeState, sampling: Sampling) -> jax.Array:
    """Penalise ids seen in the last ``repetition_window`` ids; forbid ids that repeat an n-gram."""
    if sampling.repetition_penalty is None and sampling.no_repeat_ngram is None:
        return logits
    history, count = state.history, state.count  # (batch, width), ()
    vocab = logits.shape[-1]
    positions = jnp.arange(history.shape[1])
    if sampling.repetition_penalty is not None:
        recent = (positions < count) & (positions >= count - sampling.repetition_window)  # (width,)
        present = _ids_present(history, jnp.broadcast_to(recent, history.shape), vocab)
        logits = repetition_penalty(logits, present, sampling.repetition_penalty)
    if sampling.no_repeat_ngram is not None:
        logits = ban(logits, _ngram_bans(history, count, sampling.no_repeat_ngram, vocab))
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


GENERATE_STATIC_ARGS = ("model", "length", "mode", "maxlen", "top_k", "sampler")


def sample_ids(params, key: jax.Array, prompt_ids: jax.Array, temperatures: jax.Array, *,
               model, length: int, mode: str = "stateful", maxlen: int = 60,
               top_k: int | None = None, top_p=None, min_p=None, sampler: str = DEFAULT_SAMPLER,
               repetition_penalty=None, repetition_window=DEFAULT_REPETITION_WINDOW,
               no_repeat_ngram=None) -> jax.Array:
    """Generate ``length`` ids after each prompt row: (batch, prompt) -> (batch, length).

    ``model`` is any Flax module with ``vocab_size``, ``zero_carries(batch)`` and
    ``__call__(ids, carries, seq_lengths=, last_only=True) -> (carries, logits)``
    (``CharLSTM``, or a test's fixed bigram table). ``temperatures`` is (batch,).
    ``key`` is a ``jax.random`` key or an integer seed.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key(key)
    sampling = Sampling(temperatures, top_p, min_p, repetition_penalty, repetition_window, no_repeat_ngram)
    keep_history = repetition_penalty is not None or no_repeat_ngram is not None
    state = start_decoding(params, prompt_ids, model=model, length=length, mode=mode, maxlen=maxlen,
                           keep_history=keep_history)
    _, ids = decode_steps(params, state, jax.random.split(key, length), sampling, model=model, mode=mode,
                          top_k=top_k, sampler=sampler)
    return ids


# The whole generation as one compiled call; ``sample_ids`` is its body, for callers that bind
# the static arguments once (``lm.LanguageModel`` does, to skip hashing them on every call).
generate_ids = jax.jit(sample_ids, static_argnames=GENERATE_STATIC_ARGS)
# A generation in chunks of steps (the same text): the training loop's per-epoch samples, which
# must give way to a stop request between chunks however long they are.
SAMPLE_CHUNK = 200
stream_start = jax.jit(start_stream, static_argnames=("model", "length", "chunk", "mode", "maxlen", "keep_history"))
stream_chunk = jax.jit(decode_chunk, static_argnames=("model", "size", "mode", "top_k", "sampler"))


def check_mode(mode: str) -> None:
    if mode not in GENERATION_MODES:
        raise CharLMError(f"mode must be one of {', '.join(GENERATION_MODES)}, got {mode!r}")


def validate_generation_args(length, temperatures, mode, *, top_k=None, top_p=None, min_p=None,
                             sampler: str = DEFAULT_SAMPLER, repetition_penalty=None,
                             repetition_window=DEFAULT_REPETITION_WINDOW, no_repeat_ngram=None) -> np.ndarray:
    """Refuse bad user-facing generation arguments in one line each; returns temperatures (n,) float32."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise CharLMError(f"length must be a positive integer, got {length!r}: pass e.g. --length 400")
    check_mode(mode)
    temps = np.atleast_1d(np.asarray(temperatures, np.float64))
    if temps.ndim != 1 or temps.size == 0:
        raise CharLMError(f"temperatures must be a non-empty list of numbers, got {temperatures!r}")
    check_sampling_args(None, temps, top_k=top_k, top_p=top_p, min_p=min_p, sampler=sampler)
    if not np.all(np.isfinite(temps)):
        raise CharLMError(f"temperatures must be finite, got {temps.tolist()}")
    if repetition_penalty is not None and not (np.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise CharLMError(f"repetition_penalty must be > 0 (1: none; > 1 discourages repeats), got "
                          f"{repetition_penalty!r}: pass e.g. --repetition-penalty 1.3")
    if isinstance(repetition_window, bool) or not isinstance(repetition_window, (int, np.integer)) \
            or repetition_window < 1:
        raise CharLMError(f"repetition_window must be a positive integer, got {repetition_window!r}: "
                          "pass e.g. --repetition-window 20")
    if no_repeat_ngram is not None and (isinstance(no_repeat_ngram, bool)
                                        or not isinstance(no_repeat_ngram, (int, np.integer))
                                        or not 1 <= no_repeat_ngram <= MAX_NO_REPEAT_NGRAM):
        raise CharLMError(f"no_repeat_ngram must be an integer from 1 to {MAX_NO_REPEAT_NGRAM}, got "
                          f"{no_repeat_ngram!r}: pass e.g. --no-repeat-ngram 8")
    return temps.astype(np.float32)
