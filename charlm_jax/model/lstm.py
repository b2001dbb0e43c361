"""One LSTM layer scanned over time, with a hand-derived backward pass (``jax.custom_vjp``).

Why it is written by hand: autodiff of a ``lax.scan`` differentiates step by step, so its
reverse loop also accumulates the recurrent weight gradient, ``dW += h_{t-1}^T dz_t``, as a
small matmul and an add inside every one of the 60 steps, and it keeps every intermediate the
forward made. Here, as cuDNN does for its RNN kernels, the reverse loop produces only the gate
gradients ``dz_t`` and the carry gradients; the weight and bias gradients are taken out of the
loop as one large matmul over time and batch, which XLA runs at full speed (and on every core
it has) instead of 60 small ones. Tests check the gradients against autodiff in float64.

Equations (Keras' LSTM, gate order i, f, c, o; ``x_t`` is the input projection, computed
outside; ``act`` is the recurrent activation, sigmoid unless a Keras 2 model says otherwise)::

    z_t = x_t + h_{t-1} W + b                    i, f, o = act(z_i, z_f, z_o); g = tanh(z_g)
    c_t = f * c_{t-1} + i * g                    h_t = o * tanh(c_t)

Derivatives, with ``dh`` the whole gradient reaching ``h_t`` (from the output at t and from
step t + 1) and ``dc`` the gradient reaching ``c_t`` from step t + 1::

    do = dh * tanh(c_t)                          dc += dh * o * (1 - tanh(c_t)^2)
    di = dc * g      dg = dc * i      df = dc * c_{t-1}
    dz_t = [di * act'(i), df * act'(f), dg * (1 - g^2), do * act'(o)]
    dh_{t-1} = dz_t W^T     dc_{t-1} = dc * f     dx_t = dz_t
    dW = sum_t h_{t-1}^T dz_t     db = sum_t sum_batch dz_t          (after the loop)

With a ``mask`` (right-padded windows, ``False`` past a row's length) a masked step leaves the
carry unchanged: its ``dz`` is 0 and the carry gradients pass through it untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from charlm_jax.model import precision

Carry = tuple[jax.Array, jax.Array]  # (c, h), each (batch, hidden)


def _hard_sigmoid_keras2(z: jax.Array) -> jax.Array:
    # Keras 2.0-2.2 (the book's Keras): clip(0.2 z + 0.5, 0, 1).
    return jnp.clip(0.2 * z + 0.5, 0.0, 1.0)


def _hard_sigmoid_keras3(z: jax.Array) -> jax.Array:
    # Keras 3: relu6(z + 3) / 6 = clip(z / 6 + 0.5, 0, 1).
    return jnp.clip(z / 6.0 + 0.5, 0.0, 1.0)


# config.RECURRENT_ACTIVATIONS name -> (activation, its derivative written in terms of the activation's output s)
ACTIVATION_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (jax.nn.sigmoid, lambda s: s * (1.0 - s)),
    "hard_sigmoid_keras2": (_hard_sigmoid_keras2, lambda s: jnp.where((s > 0) & (s < 1), 0.2, 0.0)),
    "hard_sigmoid": (_hard_sigmoid_keras3, lambda s: jnp.where((s > 0) & (s < 1), 1.0 / 6.0, 0.0)),
}


def lstm_cell(
    carry: Carry,
    gate_inputs: jax.Array,
    recurrent_kernel: jax.Array,
    bias: jax.Array,
    activation: str = "sigmoid",
    compute_dtype: str = "float32",
) -> tuple[Carry, jax.Array]:
    """One step of the equations above; returns the new carry and the activated gates (batch, 4H).

    ``compute_dtype`` (``precision``): the dtype of the product ``h W``; everything else stays float32.
    """
    c, h = carry  # (batch, hidden) each
    act = ACTIVATION_FUNCTIONS[activation][0]
    z = gate_inputs + precision.matmul(h, recurrent_kernel, compute_dtype) + bias  # (batch, 4 * hidden)
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i, f, g, o = act(z_i), act(z_f), jnp.tanh(z_g), act(z_o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), jnp.concatenate([i, f, g, o], axis=-1)


def _masked(mask_t, new: Carry, old: Carry) -> Carry:
    if mask_t is None:
        return new
    keep = mask_t[:, None]
    return jnp.where(keep, new[0], old[0]), jnp.where(keep, new[1], old[1])


def _forward(gate_inputs, recurrent_kernel, bias, initial_carry, mask, statics: tuple, keep_residuals: bool):
    """The forward scan; with ``keep_residuals`` it also stacks what the backward pass reads.

    ``statics``: ``(unroll, activation, compute_dtype)``, ``lstm_scan``'s non-differentiable arguments."""
    unroll, activation, compute_dtype = statics

    def step(carry, inputs):
        x_t, mask_t = inputs
        new, gates = lstm_cell(carry, x_t, recurrent_kernel, bias, activation, compute_dtype)
        new = _masked(mask_t, new, carry)
        outputs = (new[1], new[0], gates) if keep_residuals else new[1]
        return new, outputs

    return jax.lax.scan(step, initial_carry, (gate_inputs, mask), unroll=unroll)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def lstm_scan(
    gate_inputs: jax.Array,
    recurrent_kernel: jax.Array,
    bias: jax.Array,
    initial_carry: Carry,
    mask: jax.Array | None,
    unroll: int = 1,
    activation: str = "sigmoid",
    compute_dtype: str = "float32",
) -> tuple[Carry, jax.Array]:
    """Run the layer over time-major inputs: (time, batch, 4H) -> (final carry, h (time, batch, H)).

    ``mask`` (time, batch) bool, or None when every row uses every step. ``compute_dtype``: the dtype
    of the recurrent products, forward and backward (``precision``).
    """
    statics = (unroll, activation, compute_dtype)
    return _forward(gate_inputs, recurrent_kernel, bias, initial_carry, mask, statics, False)


def lstm_trace(
    gate_inputs: jax.Array,
    recurrent_kernel: jax.Array,
    bias: jax.Array,
    initial_carry: Carry,
    activation: str = "sigmoid",
    compute_dtype: str = "float32",
) -> tuple[Carry, tuple[jax.Array, jax.Array, jax.Array]]:
    """``lstm_scan``'s forward keeping every step: (final carry, (h, c, activated gates i|f|g|o)), each
    (time, batch, H) or (time, batch, 4H). For looking inside a model (``use.inside``); no gradient."""
    return _forward(gate_inputs, recurrent_kernel, bias, initial_carry, None, (1, activation, compute_dtype), True)


def _lstm_scan_fwd(gate_inputs, recurrent_kernel, bias, initial_carry, mask, unroll, activation, compute_dtype):
    statics = (unroll, activation, compute_dtype)
    final, (h_seq, c_seq, gates) = _forward(gate_inputs, recurrent_kernel, bias, initial_carry, mask, statics, True)
    residuals = (recurrent_kernel, initial_carry, h_seq, c_seq, gates, mask)
    return (final, h_seq), residuals


def _lstm_scan_bwd(unroll, activation, compute_dtype, residuals, cotangents):
    recurrent_kernel, (c0, h0), h_seq, c_seq, gates, mask = residuals
    (dc_final, dh_final), dh_seq = cotangents
    act_grad = ACTIVATION_FUNCTIONS[activation][1]
    c_prev_seq = jnp.concatenate([c0[None], c_seq[:-1]])  # (time, batch, H): c_{t-1}
    kernel_t = recurrent_kernel.T  # (4H, H)

    def step(carry, inputs):
        dh_next, dc_next = carry
        dh_t, gates_t, c_t, c_prev, mask_t = inputs
        i, f, g, o = jnp.split(gates_t, 4, axis=-1)
        dh = dh_next + dh_t
        tanh_c = jnp.tanh(c_t)
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [dc * g * act_grad(i), dc * c_prev * act_grad(f), dc * i * (1.0 - g * g), dh * tanh_c * act_grad(o)],
            axis=-1,
        )  # (batch, 4H)
        dc_prev = dc * f
        if mask_t is not None:
            keep = mask_t[:, None]
            dz = jnp.where(keep, dz, 0.0)
            dh_prev = precision.matmul(dz, kernel_t, compute_dtype) + jnp.where(keep, 0.0, dh)
            return (dh_prev, jnp.where(keep, dc_prev, dc_next)), dz
        return (precision.matmul(dz, kernel_t, compute_dtype), dc_prev), dz

    (dh0, dc0), dz_seq = jax.lax.scan(
        step, (dh_final, dc_final), (dh_seq, gates, c_seq, c_prev_seq, mask), reverse=True, unroll=unroll
    )
    # The weight gradients, hoisted out of the loop: one matmul over every (time, batch) row.
    h_prev_seq = jnp.concatenate([h0[None], h_seq[:-1]])  # (time, batch, H): h_{t-1}
    d_kernel = precision.einsum("tbh,tbg->hg", h_prev_seq, dz_seq, compute_dtype)  # (H, 4H)
    d_bias = jnp.sum(dz_seq, axis=(0, 1))  # (4H,)
    return dz_seq, d_kernel, d_bias, (dc0, dh0), None


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)
