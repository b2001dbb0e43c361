"""The model's forward pass with every layer's state kept at every step: what ``use.inside`` looks at.

``CharLSTM.__call__`` returns only the last carries and the logits; a researcher looking for the cell that
tracks quotes needs ``c`` and ``h`` of every layer after every character (and the gates, on request). This
is the same computation from the same parameters (the embedding row as the first layer's input
projection, each deeper layer's input kernel on the layer below's ``h``, ``lstm.lstm_cell`` per step, the
output layer), with the per-step states stacked instead of dropped. Dropout is off, as in evaluation.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from charlm_jax.model import precision
from charlm_jax.model.charlstm import CharLSTM
from charlm_jax.model.lstm import lstm_trace


@partial(jax.jit, static_argnames=("model", "gates"))
def trace_states(params, carries, ids: jax.Array, *, model: CharLSTM, gates: bool = False):
    """Read ``ids`` (time,) from ``carries`` (batch 1): (carries, logits (time, vocab), c and h (time, layers,
    hidden), gates (time, layers, 4 * hidden) or None). ``logits[t]`` is the distribution after reading
    ``ids[t]``: the prediction of ``ids[t + 1]``."""
    dtype = model.compute_dtype
    x = params["input_kernel"]["embedding"][ids][:, None, :]  # (time, 1, 4H)
    new_carries, cs, hs, gs = [], [], [], []
    for layer in range(model.num_layers):
        if layer > 0:
            x = precision.matmul(x, params[f"input_kernel_{layer}"]["kernel"], dtype)
        weights = params[f"lstm_{layer}"]
        carry, (h, c, g) = lstm_trace(
            x, weights["recurrent_kernel"], weights["bias"], carries[layer], model.recurrent_activation, dtype
        )
        new_carries.append(carry)
        cs.append(c[:, 0])
        hs.append(h[:, 0])
        gs.append(g[:, 0])
        x = h
    top = x[:, 0]  # (time, H)
    logits = precision.matmul(top, params["logits"]["kernel"], dtype) + params["logits"]["bias"]
    stacked_gates = jnp.stack(gs, axis=1) if gates else None
    return tuple(new_carries), logits, jnp.stack(cs, axis=1), jnp.stack(hs, axis=1), stacked_gates
