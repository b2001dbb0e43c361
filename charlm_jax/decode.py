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
temperatures (and many prompts) run as one call.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.config import GENERATION_MODES
from charlm_jax.errors import CharLMError
from charlm_jax.sampling import _sample, validate_sampling_args


@partial(jax.jit, static_argnames=("model", "length", "mode", "maxlen", "top_k"))
def generate_ids(params, key: jax.Array, prompt_ids: jax.Array, temperatures: jax.Array, *,
                 model, length: int, mode: str = "stateful", maxlen: int = 60,
                 top_k: int | None = None, top_p=None, min_p=None) -> jax.Array:
    """Generate ``length`` ids after each prompt row: (batch, prompt) -> (batch, length).

    ``model`` is any Flax module with ``zero_carries(batch)`` and
    ``__call__(ids, carries, seq_lengths=, last_only=True) -> (carries, logits)``
    (``CharLSTM``, or a test's fixed bigram table). ``temperatures`` is (batch,).
    Step ``t`` draws with ``jax.random.split(key, length)[t]``, so the same key
    gives the same text whatever the batch's sharding.
    """
    batch, prompt_len = prompt_ids.shape
    variables = {"params": params}
    step_keys = jax.random.split(key, length)

    def draw(step_key, logits):
        return _sample(step_key, logits, temperatures, top_k, top_p, min_p)

    if mode == "stateful":
        carries, logits = model.apply(variables, prompt_ids, model.zero_carries(batch), last_only=True)

        def stateful_step(state, step_key):
            carries, logits = state
            next_ids = draw(step_key, logits)  # (batch,)
            carries, logits = model.apply(variables, next_ids[:, None], carries, last_only=True)
            return (carries, logits), next_ids

        _, ids = jax.lax.scan(stateful_step, (carries, logits), step_keys)
    elif mode == "window":
        filled = min(prompt_len, maxlen)
        window = jnp.zeros((batch, maxlen), jnp.int32)
        window = window.at[:, :filled].set(prompt_ids[:, prompt_len - filled:])  # (batch, maxlen)
        zero = model.zero_carries(batch)

        def window_step(state, step_key):
            window, filled = state
            lengths = jnp.full((batch,), filled, jnp.int32)
            _, logits = model.apply(variables, window, zero, seq_lengths=lengths, last_only=True)
            next_ids = draw(step_key, logits)  # (batch,)
            full = filled == maxlen
            window = jnp.where(full, jnp.roll(window, -1, axis=1), window)
            position = jnp.minimum(filled, maxlen - 1)
            window = jax.lax.dynamic_update_slice(window, next_ids[:, None], (0, position))
            return (window, jnp.minimum(filled + 1, maxlen)), next_ids

        _, ids = jax.lax.scan(window_step, (window, jnp.int32(filled)), step_keys)
    else:
        raise CharLMError(f"mode must be one of {GENERATION_MODES}, got {mode!r}")
    return ids.T  # (batch, length)


def check_generation_args(length, temperatures, mode, *, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """Validate user-facing generation arguments; returns temperatures as float32 (n,)."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise CharLMError(f"length must be a positive integer, got {length!r}: pass e.g. --length 400")
    if mode not in GENERATION_MODES:
        raise CharLMError(f"mode must be one of {', '.join(GENERATION_MODES)}, got {mode!r}")
    temps = np.atleast_1d(np.asarray(temperatures, np.float64))
    if temps.ndim != 1 or temps.size == 0:
        raise CharLMError(f"temperatures must be a non-empty list of numbers, got {temperatures!r}")
    validate_sampling_args(None, temps, top_k=top_k, top_p=top_p, min_p=min_p)
    if not np.all(np.isfinite(temps)):
        raise CharLMError(f"temperatures must be finite, got {temps.tolist()}")
    return temps.astype(np.float32)
