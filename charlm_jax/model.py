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

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Carry = tuple[jax.Array, jax.Array]  # (c, h), each (batch, hidden)

# Keras: kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal".
# jax's orthogonal() on a (hidden, 4 * hidden) shape gives orthonormal rows, as Keras' does.
keras_glorot_uniform = nn.initializers.glorot_uniform()
keras_orthogonal = nn.initializers.orthogonal()


def keras_lstm_bias_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Keras ``unit_forget_bias=True``: zeros, except ones for the forget gate (2nd quarter)."""
    del key
    hidden = shape[-1] // 4
    return jnp.concatenate([jnp.zeros(hidden), jnp.ones(hidden), jnp.zeros(2 * hidden)]).astype(dtype)


class FusedLSTMCell(nn.RNNCellBase):
    """One LSTM step whose input projection was already computed (fused gates i, f, c, o).

    Written here rather than using ``nn.LSTMCell`` because that cell applies its
    own input Dense inside every scan step, per gate; the book's one-hot input
    makes that projection a table lookup we do once per window, and Keras'
    initialisers are defined over the fused 4-gate matrices.
    """

    hidden_size: int

    @nn.compact
    def __call__(self, carry: Carry, gate_inputs: jax.Array) -> tuple[Carry, jax.Array]:
        c, h = carry  # (batch, hidden) each
        recurrent_kernel = self.param("recurrent_kernel", keras_orthogonal,
                                      (self.hidden_size, 4 * self.hidden_size))
        bias = self.param("bias", keras_lstm_bias_init, (4 * self.hidden_size,))
        z = gate_inputs + h @ recurrent_kernel + bias  # (batch, 4 * hidden)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        # Keras 3 LSTM: recurrent_activation="sigmoid", activation="tanh".
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Carry:
        del rng
        zeros = jnp.zeros((*input_shape[:-1], self.hidden_size), jnp.float32)
        return zeros, zeros

    @property
    def num_feature_axes(self) -> int:
        return 1


class CharLSTM(nn.Module):
    """Stacked LSTM over character ids; returns next-character logits.

    ``__call__(ids, carries)`` runs the whole (batch, time) window in one scan
    per layer and returns the final carries with the logits, so the same
    function serves training (zero carries, whole window), the book's window
    generation and stateful generation (one step, carried state).
    """

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    unroll: int = 1

    def zero_carries(self, batch: int) -> tuple[Carry, ...]:
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.num_layers))

    @nn.compact
    def __call__(self, ids: jax.Array, carries: tuple[Carry, ...] | None = None, *,
                 seq_lengths: jax.Array | None = None, last_only: bool = False,
                 deterministic: bool = True) -> tuple[tuple[Carry, ...], jax.Array]:
        """ids (batch, time) int -> (carries, logits (batch, time, vocab) or (batch, vocab)).

        ``seq_lengths`` (batch,) marks right-padded windows: the returned carry
        is the one after ``seq_lengths`` steps. ``last_only`` returns only the
        logits after the last step (the book's objective needs nothing else).
        """
        if carries is None:
            carries = self.zero_carries(ids.shape[0])
        # (batch, time, 4 * hidden): Keras' input kernel rows, i.e. one_hot(ids) @ kernel.
        x = nn.Embed(self.vocab_size, 4 * self.hidden_size,
                     embedding_init=keras_glorot_uniform, name="input_kernel")(ids)
        new_carries = []
        for layer in range(self.num_layers):
            if layer > 0:
                # Input kernel of a deeper layer: a plain matmul on the layer below's outputs.
                x = nn.Dense(4 * self.hidden_size, use_bias=False, kernel_init=keras_glorot_uniform,
                             name=f"input_kernel_{layer}")(x)  # (batch, time, 4 * hidden)
            rnn = nn.RNN(FusedLSTMCell(self.hidden_size, name=f"lstm_{layer}"), return_carry=True,
                         unroll=self.unroll)
            carry, x = rnn(x, initial_carry=carries[layer], seq_lengths=seq_lengths)
            new_carries.append(carry)
            if last_only and layer == self.num_layers - 1:
                # The top layer's h after the last (unpadded) step, (batch, hidden).
                x = carry[1]
            if self.dropout > 0:
                x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        # Keras Dense: glorot_uniform kernel, zero bias.
        logits = nn.Dense(self.vocab_size, kernel_init=keras_glorot_uniform,
                          bias_init=nn.initializers.zeros, name="logits")(x)
        return tuple(new_carries), logits


def build_model(vocab_size: int, hidden_size: int = 128, num_layers: int = 1,
                dropout: float = 0.0, unroll: int = 1) -> CharLSTM:
    return CharLSTM(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                    dropout=dropout, unroll=unroll)


def init_params(key: jax.Array, model: CharLSTM, maxlen: int = 60):
    """Parameters initialised as Keras initialises LSTM + Dense."""
    dummy = jnp.zeros((1, maxlen), jnp.int32)
    return model.init(key, dummy)["params"]
