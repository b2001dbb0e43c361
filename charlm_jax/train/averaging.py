"""Weight averaging: an exponential moving average of the parameters, kept beside them.

The average is the mean of the weights over roughly the last ``1 / (1 - decay)`` steps (Polyak
averaging with a finite memory, as AWD-LSTM's averaged SGD and TF's ExponentialMovingAverage keep
one): the noise of the last steps averages out, which helps most where the learning rate stays high
(the book's constant 0.01). It lives in the optimizer's state, as the last transform of its chain,
so the checkpoints save it, a resumed run continues it exactly, a refused (non-finite) step leaves it
untouched, and every device holds it as it holds the optimizer's state.

Written here because optax has no transform for it: ``optax.ema`` averages the *updates* (a momentum),
not the weights; the arithmetic is optax's own ``incremental_update``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AveragedWeightsState(NamedTuple):
    """The steps averaged so far and the average itself (a tree like the parameters)."""

    averaged_steps: jax.Array
    averaged_params: Any


def warm_decay(decay: float, steps: jax.Array) -> jax.Array:
    """The decay used at step ``steps`` (0-based): ``min(decay, (1 + t) / (10 + t))``, so the average
    follows the weights closely while they move fast at the start instead of remembering the
    initialisation for ``1 / (1 - decay)`` steps (TF's ``num_updates`` rule)."""
    t = steps.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def average_weights(decay: float) -> optax.GradientTransformation:
    """A transform that passes the updates through unchanged and averages the weights they lead to.

    Must be the last of a chain (it reads the final updates); it needs ``params`` in ``update``.
    """

    def init(params) -> AveragedWeightsState:
        # A copy, not the parameters' own buffers: the train state is donated to each compiled block, and a
        # buffer held twice in it cannot be.
        return AveragedWeightsState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state: AveragedWeightsState, params=None):
        if params is None:
            raise ValueError("average_weights needs the parameters: call update(updates, state, params)")
        new_params = optax.apply_updates(params, updates)
        step_size = 1.0 - warm_decay(decay, state.averaged_steps)
        average = optax.incremental_update(new_params, state.averaged_params, step_size)
        return updates, AveragedWeightsState(state.averaged_steps + 1, average)

    return optax.GradientTransformation(init, update)


def averaged_params(opt_state) -> Any | None:
    """The averaged weights held in an optimizer's state, or None when the run does not average."""
    found = optax.tree.get(opt_state, "averaged_params", default=None)
    return found
