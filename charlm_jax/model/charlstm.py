"""The book's model, LSTM(128) -> Dense(vocab), as a Flax module that returns logits.

Two things differ in form, not in function, from ``keras.layers.LSTM`` fed with
one-hot inputs:

* The input is an embedding lookup. A one-hot row times the LSTM's input kernel
  (vocab, 4 * hidden) *is* the kernel's row for that character, so
  ``nn.Embed(vocab, 4 * hidden)`` holds exactly Keras' input kernel and gives
  the same pre-activations without building one-hot tensors. It is looked up
  for the whole window at once, outside the time scan.
* No softmax: the loss and the sampler take logits.

Initialisation follows Keras, not Flax's defaults: glorot-uniform input kernels
over the fused (fan_in, 4 * hidden) shape, orthogonal recurrent kernel over the
fused (hidden, 4 * hidden) shape, bias zero except the forget gate at 1
(``unit_forget_bias=True``); gate order i, f, c, o as in Keras, so Keras
weights can be copied in unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from charlm_jax.model import precision
from charlm_jax.model.lstm import Carry, lstm_cell, lstm_scan
from charlm_jax.settings.config import TrainConfig

# Keras: kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal".
# jax's orthogonal() on a (hidden, 4 * hidden) shape gives orthonormal rows, as Keras' does.
keras_glorot_uniform = nn.initializers.glorot_uniform()
keras_orthogonal = nn.initializers.orthogonal()


def keras_lstm_bias_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Keras ``unit_forget_bias=True``: zeros, except ones for the forget gate (2nd quarter)."""
    del key
    hidden = shape[-1] // 4
    return jnp.concatenate([jnp.zeros(hidden), jnp.ones(hidden), jnp.zeros(2 * hidden)]).astype(dtype)


class LSTMLayer(nn.Module):
    """One LSTM layer over a time-major sequence of input projections (Keras' parameters).

    Holds the recurrent kernel and bias; the scan and its hand-derived backward pass are
    ``lstm.lstm_scan``. Written as a module of our own rather than ``nn.RNN(nn.LSTMCell)``:
    that cell applies its own input Dense inside every step, per gate (the book's one-hot input
    makes that projection a table lookup done once per window), Keras' initialisers are defined
    over the fused 4-gate matrices, and autodiff through ``nn.RNN`` keeps the weight gradient
    inside the time loop (see ``lstm.py``).
    """

    hidden_size: int
    unroll: int = 1
    recurrent_activation: str = "sigmoid"
    weight_dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(
        self, carry: Carry, gate_inputs: jax.Array, mask: jax.Array | None = None, deterministic: bool = True
    ) -> tuple[Carry, jax.Array]:
        """gate_inputs (time, batch, 4H), mask (time, batch) or None -> (carry, h (time, batch, H))."""
        recurrent_kernel = self.param("recurrent_kernel", keras_orthogonal, (self.hidden_size, 4 * self.hidden_size))
        bias = self.param("bias", keras_lstm_bias_init, (4 * self.hidden_size,))
        if self.weight_dropout > 0:
            # DropConnect (AWD-LSTM): one mask on the kernel for the whole batch and every step. The
            # scan receives an ordinary kernel, so its hand-written gradient is unchanged; autodiff of
            # this product carries that gradient back to the parameter.
            recurrent_kernel = nn.Dropout(self.weight_dropout)(recurrent_kernel, deterministic=deterministic)
        if gate_inputs.shape[0] == 1 and mask is None:
            # One step (stateful generation): the cell itself, no loop of length 1 around it.
            carry, _ = lstm_cell(
                carry, gate_inputs[0], recurrent_kernel, bias, self.recurrent_activation, self.compute_dtype
            )
            return carry, carry[1][None]
        return lstm_scan(
            gate_inputs,
            recurrent_kernel,
            bias,
            carry,
            mask,
            self.unroll,
            self.recurrent_activation,
            self.compute_dtype,
        )


class CharLSTM(nn.Module):
    """Stacked LSTM over character ids; returns next-character logits.

    ``__call__(ids, carries)`` runs the whole (batch, time) window in one scan
    per layer and returns the final carries with the logits, so the same
    function serves training (zero carries, whole window), the book's window
    generation and stateful generation (one step, carried state). Inside, the
    sequence is time-major, the layout the scans read, so nothing is transposed
    but the logits.
    """

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    unroll: int = 1
    recurrent_activation: str = "sigmoid"
    locked_dropout: bool = False  # one dropout mask per sequence, shared by every time step
    weight_dropout: float = 0.0  # DropConnect on the recurrent kernels
    compute_dtype: str = "float32"  # the products' dtype (precision.COMPUTE_DTYPES)

    def zero_carries(self, batch: int, dtype=jnp.float32) -> tuple[Carry, ...]:
        # A new array for every leaf: one buffer shared by two leaves could not be donated to a jitted step.
        return tuple(
            (jnp.zeros((batch, self.hidden_size), dtype), jnp.zeros((batch, self.hidden_size), dtype))
            for _ in range(self.num_layers)
        )

    @nn.compact
    def __call__(
        self,
        ids: jax.Array,
        carries: tuple[Carry, ...] | None = None,
        *,
        seq_lengths: jax.Array | None = None,
        last_only: bool = False,
        deterministic: bool = True,
    ) -> tuple[tuple[Carry, ...], jax.Array]:
        """ids (batch, time) int -> (carries, logits (batch, time, vocab) or (batch, vocab)).

        ``seq_lengths`` (batch,) marks right-padded windows: the returned carry
        is the one after ``seq_lengths`` steps. ``last_only`` returns only the
        logits after the last step (the book's objective needs nothing else).
        """
        batch, time = ids.shape
        mask = None
        if seq_lengths is not None:
            mask = jnp.arange(time)[:, None] < seq_lengths[None, :]  # (time, batch)
        # (time, batch, 4 * hidden): Keras' input kernel rows, i.e. one_hot(ids) @ kernel.
        x = nn.Embed(self.vocab_size, 4 * self.hidden_size, embedding_init=keras_glorot_uniform, name="input_kernel")(
            ids.T
        )
        if carries is None:
            carries = self.zero_carries(batch, x.dtype)
        new_carries = []
        for layer in range(self.num_layers):
            if layer > 0:
                # Input kernel of a deeper layer: a plain matmul on the layer below's outputs.
                x = nn.Dense(
                    4 * self.hidden_size,
                    use_bias=False,
                    kernel_init=keras_glorot_uniform,
                    name=f"input_kernel_{layer}",
                    **precision.dense_options(self.compute_dtype),
                )(x)  # (time, batch, 4 * hidden)
            carry, x = LSTMLayer(
                self.hidden_size,
                self.unroll,
                self.recurrent_activation,
                self.weight_dropout,
                self.compute_dtype,
                name=f"lstm_{layer}",
            )(carries[layer], x, mask, deterministic)  # (time, batch, H)
            new_carries.append(carry)
            if last_only and layer == self.num_layers - 1:
                # The top layer's h after the last (unpadded) step, (batch, hidden).
                x = carry[1]
            if self.dropout > 0:
                # Locked: the mask broadcast over the time axis, so a unit dropped is dropped for the
                # whole sequence (with last_only, x has no time axis and the two are the same).
                locked = (0,) if self.locked_dropout and x.ndim == 3 else ()
                x = nn.Dropout(self.dropout, broadcast_dims=locked)(x, deterministic=deterministic)
        # Keras Dense: glorot_uniform kernel, zero bias.
        logits = nn.Dense(
            self.vocab_size,
            kernel_init=keras_glorot_uniform,
            bias_init=nn.initializers.zeros,
            name="logits",
            **precision.dense_options(self.compute_dtype),
        )(x)
        if not last_only:
            logits = jnp.swapaxes(logits, 0, 1)  # (batch, time, vocab)
        return tuple(new_carries), logits


def build_model(config: TrainConfig, vocab_size: int) -> CharLSTM:
    """The model a ``TrainConfig`` describes (the one place a config becomes a module)."""
    return CharLSTM(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        dropout=config.dropout,
        unroll=config.unroll,
        recurrent_activation=config.recurrent_activation,
        locked_dropout=config.locked_dropout,
        weight_dropout=config.weight_dropout,
        compute_dtype=config.compute_dtype,
    )


def init_params(key: jax.Array, model: CharLSTM, maxlen: int = 60):
    """Parameters initialised as Keras initialises LSTM + Dense."""
    dummy = jnp.zeros((1, maxlen), jnp.int32)
    return model.init(key, dummy)["params"]
