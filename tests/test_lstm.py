"""The LSTM layer's hand-derived backward pass equals autodiff, in float64.

``lstm_scan`` (custom VJP) and a plain ``lax.scan`` of the same cell equations
(``_forward``, differentiated by JAX) must give the same gradients for every
input: gate inputs, recurrent kernel, bias and the initial carry, with and
without padding, for each recurrent activation; and the whole model's loss
gradients must match for both objectives and stacked layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charlm_jax.model import charlstm as model_module
from charlm_jax.model import lstm
from charlm_jax.model.charlstm import CharLSTM, init_params
from charlm_jax.model.lstm import _forward, lstm_scan
from charlm_jax.settings.config import RECURRENT_ACTIVATIONS

from helpers import assert_trees_close, float64_mode

TIME, BATCH, HIDDEN = 7, 3, 5


def autodiff_scan(
    gate_inputs, recurrent_kernel, bias, initial_carry, mask, unroll=1, activation="sigmoid", compute_dtype="float32"
):
    """The same forward as lstm_scan, differentiated by JAX step by step."""
    return _forward(
        gate_inputs, recurrent_kernel, bias, initial_carry, mask, (unroll, activation, compute_dtype), False
    )


def test_the_config_names_every_activation_the_layer_has():
    assert set(RECURRENT_ACTIVATIONS) == set(lstm.ACTIVATION_FUNCTIONS)


@pytest.mark.parametrize("activation", sorted(lstm.ACTIVATION_FUNCTIONS))
@pytest.mark.parametrize("padded", [False, True])
def test_gradients_equal_autodiff_in_float64(activation, padded):
    with float64_mode():
        keys = jax.random.split(jax.random.key(0), 7)
        normal = lambda key, shape, scale=1.0: scale * jax.random.normal(key, shape, jnp.float64)  # noqa: E731
        gate_inputs = normal(keys[0], (TIME, BATCH, 4 * HIDDEN), 2.0)  # large enough to saturate hard sigmoids
        kernel = normal(keys[1], (HIDDEN, 4 * HIDDEN), 0.5)
        bias = normal(keys[2], (4 * HIDDEN,))
        carry = (normal(keys[3], (BATCH, HIDDEN)), normal(keys[4], (BATCH, HIDDEN)))
        mask = jnp.arange(TIME)[:, None] < jnp.array([TIME, 3, 1])[None, :] if padded else None
        # Weights on every output, so each cotangent (outputs and final carry) is non-trivial.
        out_weights = normal(keys[5], (TIME, BATCH, HIDDEN))
        carry_weights = normal(keys[6], (BATCH, HIDDEN))

        def loss(scan, gate_inputs, kernel, bias, carry):
            (c, h), outputs = scan(gate_inputs, kernel, bias, carry, mask, 1, activation)
            return jnp.sum(outputs * out_weights) + jnp.sum(c * carry_weights) + jnp.sum(jnp.sin(h))

        args = (gate_inputs, kernel, bias, carry)
        ours = jax.grad(lambda *a: loss(lstm_scan, *a), argnums=(0, 1, 2, 3))(*args)
        reference = jax.grad(lambda *a: loss(autodiff_scan, *a), argnums=(0, 1, 2, 3))(*args)
        assert_trees_close(ours, reference, rtol=1e-12, atol=1e-12)
        assert float(jnp.abs(ours[1]).max()) > 0.01  # the test compares real gradients, not zeros
        if padded:  # a masked step contributes nothing: the gate-input gradient there is exactly 0
            assert float(jnp.abs(ours[0][3:, 1]).max()) == 0.0 and float(jnp.abs(ours[0][1:, 2]).max()) == 0.0


def numpy_lstm(gate_inputs, kernel, bias, mask):
    """The layer's equations (Keras' gate order i, f, c, o; sigmoid gates) as a float64 numpy loop."""
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    h = np.zeros((gate_inputs.shape[1], kernel.shape[0]))
    c = np.zeros_like(h)
    outputs = []
    for t in range(gate_inputs.shape[0]):
        z = gate_inputs[t] + h @ kernel + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(c_new)
        keep = mask[t][:, None]
        c, h = np.where(keep, c_new, c), np.where(keep, h_new, h)  # a padded step leaves the carry alone
        outputs.append(h)
    return (c, h), np.stack(outputs)


def test_forward_equals_the_equations_written_out_in_numpy():
    keys = jax.random.split(jax.random.key(1), 3)
    gate_inputs = jax.random.normal(keys[0], (TIME, BATCH, 4 * HIDDEN))
    kernel = 0.5 * jax.random.normal(keys[1], (HIDDEN, 4 * HIDDEN))
    bias = jax.random.normal(keys[2], (4 * HIDDEN,))
    zeros = jnp.zeros((BATCH, HIDDEN))
    mask = jnp.arange(TIME)[:, None] < jnp.array([TIME, 4, 2])[None, :]
    ours = lstm_scan(gate_inputs, kernel, bias, (zeros, zeros), mask)
    reference = numpy_lstm(*(np.asarray(a, np.float64) for a in (gate_inputs, kernel, bias)), np.asarray(mask))
    assert_trees_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(ours[1][-1, 2] - ours[1][1, 2]).max()) == 0.0  # row 2 stopped after 2 steps


def model_loss(params, model, ids, seq_lengths, objective):
    """Mean cross-entropy of the objective's targets (as train.loss_fn, plus padded windows)."""
    maxlen = ids.shape[1] - 1  # each row of ids is one window: inputs, then the book's target
    rows = jnp.arange(ids.shape[0])
    last_only = objective == "next_char"
    _, logits = model.apply({"params": params}, ids[:, :maxlen], seq_lengths=seq_lengths, last_only=last_only)
    if last_only:
        targets = ids[:, maxlen] if seq_lengths is None else ids[rows, seq_lengths]
    else:
        targets = ids[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@pytest.mark.parametrize(
    "objective,num_layers,padded",
    [
        ("next_char", 1, False),
        ("dense", 1, False),
        ("next_char", 3, False),
        ("dense", 2, False),
        ("next_char", 2, True),
    ],
)
def test_model_loss_gradients_equal_autodiff(monkeypatch, objective, num_layers, padded):
    model = CharLSTM(vocab_size=9, hidden_size=6, num_layers=num_layers)
    params32 = init_params(jax.random.key(0), model, 8)
    with float64_mode():
        params = jax.tree.map(lambda p: p.astype(jnp.float64) * 2.0, params32)
        ids = jax.random.randint(jax.random.key(1), (4, 9), 0, 9)
        seq_lengths = jnp.array([8, 5, 3, 1]) if padded else None
        grad = jax.grad(model_loss)
        ours = grad(params, model, ids, seq_lengths, objective)
        monkeypatch.setattr(model_module, "lstm_scan", autodiff_scan)
        reference = grad(params, model, ids, seq_lengths, objective)
        assert_trees_close(ours, reference, rtol=1e-10, atol=1e-12)
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ours))
