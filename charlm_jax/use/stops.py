"""Stop strings inside a compiled scan: a row's last ids compared with each stop string after every step.

A row keeps a tail of its last ids as wide as the longest stop string (the prompt's last ids at first, so a
stop string may begin in the prompt); after each generated id the tail moves on and the row is done when the
tail ends with a stop string. ``stop_ids`` (rows, stops, width) hold the strings right-aligned, ``ANY_ID``
before a shorter one (it matches every id). A done row returns ``STOPPED`` from then on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from charlm_jax.settings.generation import ANY_ID

# The id a row returns after it completed a stop string, and how many steps run between two checks of
# whether every row has (a whole generation ends early then).
STOPPED = -1
STOP_CHECK_STEPS = 32


def stop_tail(prompt_ids: jax.Array, prompt_lengths: jax.Array, stop_ids) -> tuple[jax.Array, jax.Array]:
    """Each row's tail after its prompt (STOPPED before a short prompt) and no row done; width 0 without stops."""
    batch = prompt_ids.shape[0]
    done = jnp.zeros(batch, bool)
    if stop_ids is None:
        return jnp.zeros((batch, 0), jnp.int32), done
    width = stop_ids.shape[-1]
    positions = prompt_lengths[:, None] - width + jnp.arange(width)[None, :]  # (batch, width)
    ids = jnp.take_along_axis(prompt_ids, jnp.clip(positions, 0, prompt_ids.shape[1] - 1), axis=1)
    return jnp.where(positions >= 0, ids, STOPPED), done


def ends_with_stop(tail: jax.Array, stop_ids: jax.Array) -> jax.Array:
    """(rows,): whether each tail (rows, width) ends with one of its stop strings (rows or 1, stops, width)."""
    matches = (stop_ids == tail[:, None, :]) | (stop_ids == ANY_ID)
    return jnp.any(jnp.all(matches, axis=-1), axis=-1)


def until_all_stopped(run_chunk, state, chunk: int, chunks: int):
    """``chunks`` chunks of ``run_chunk(state, chunk) -> (state, ids (chunk, rows))``, ending early once every
    row is done (``state.done``); (state, ids (chunks, chunk, rows)), the ids of chunks not run STOPPED."""
    ids = jnp.full((chunks, chunk, state.done.shape[0]), STOPPED, jnp.int32)

    def more(carry):
        index, state, _ = carry
        return (index < chunks) & ~jnp.all(state.done)

    def one(carry):
        index, state, ids = carry
        state, new = run_chunk(state, chunk)
        return index + 1, state, jax.lax.dynamic_update_index_in_dim(ids, new, index, 0)

    _, state, ids = jax.lax.while_loop(more, one, (jnp.int32(0), state, ids))
    return state, ids
