"""The model: Keras' LSTM equations and initialisers, logits out, padding-aware windows."""

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.model.charlstm import CharLSTM, init_params


def keras_lstm_reference(one_hot, kernel, recurrent_kernel, bias, dense_kernel, dense_bias):
    """Keras LSTM(return_sequences=False) + Dense, in float64 numpy, gate order i, f, c, o."""
    batch, time, _ = one_hot.shape
    hidden = recurrent_kernel.shape[0]
    h = np.zeros((batch, hidden))
    c = np.zeros((batch, hidden))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(time):
        z = one_hot[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
    return h @ dense_kernel + dense_bias


def test_forward_equals_keras_equations_on_one_hot_inputs():
    model = CharLSTM(vocab_size=11, hidden_size=8)
    params = init_params(jax.random.key(0), model, maxlen=9)
    ids = jax.random.randint(jax.random.key(1), (4, 9), 0, 11)
    _, logits = model.apply({"params": params}, ids, last_only=True)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    expected = keras_lstm_reference(
        np.eye(11)[np.asarray(ids)],
        p["input_kernel"]["embedding"],
        p["lstm_0"]["recurrent_kernel"],
        p["lstm_0"]["bias"],
        p["logits"]["kernel"],
        p["logits"]["bias"],
    )
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def test_initialisation_matches_keras():
    vocab, hidden = 57, 128
    params = init_params(jax.random.key(0), CharLSTM(vocab_size=vocab, hidden_size=hidden))
    bias = np.asarray(params["lstm_0"]["bias"])
    np.testing.assert_array_equal(bias[hidden : 2 * hidden], 1.0)  # unit_forget_bias
    np.testing.assert_array_equal(np.delete(bias, np.s_[hidden : 2 * hidden]), 0.0)
    recurrent = np.asarray(params["lstm_0"]["recurrent_kernel"], np.float64)  # (hidden, 4 hidden)
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(hidden), atol=1e-4)  # orthonormal rows
    kernel = np.asarray(params["input_kernel"]["embedding"])  # (vocab, 4 hidden), glorot over fused shape
    limit = np.sqrt(6 / (vocab + 4 * hidden))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    np.testing.assert_array_equal(np.asarray(params["logits"]["bias"]), 0.0)


def test_shapes_for_all_positions_last_step_and_stacked_layers():
    model = CharLSTM(vocab_size=13, hidden_size=16, num_layers=3, dropout=0.2)
    params = init_params(jax.random.key(0), model, maxlen=7)
    ids = jnp.zeros((5, 7), jnp.int32)
    carries, logits = model.apply({"params": params}, ids)
    assert logits.shape == (5, 7, 13)
    assert len(carries) == 3 and carries[0][0].shape == (5, 16)
    _, last = model.apply({"params": params}, ids, last_only=True)
    np.testing.assert_allclose(last, logits[:, -1], atol=1e-6)
    # Dropout is active only when asked, and then depends on the key.
    _, a = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    _, b = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_seq_lengths_give_the_logits_of_the_shorter_window():
    model = CharLSTM(vocab_size=9, hidden_size=8, num_layers=2)
    params = init_params(jax.random.key(0), model, maxlen=10)
    ids = jax.random.randint(jax.random.key(1), (3, 10), 0, 9)
    _, padded = model.apply({"params": params}, ids, seq_lengths=jnp.full((3,), 4), last_only=True)
    _, short = model.apply({"params": params}, ids[:, :4], last_only=True)
    np.testing.assert_allclose(padded, short, atol=1e-6)


def test_carried_state_continues_the_sequence():
    model = CharLSTM(vocab_size=9, hidden_size=8)
    params = init_params(jax.random.key(0), model, maxlen=10)
    ids = jax.random.randint(jax.random.key(1), (2, 10), 0, 9)
    _, whole = model.apply({"params": params}, ids)
    carries, _ = model.apply({"params": params}, ids[:, :6])
    _, rest = model.apply({"params": params}, ids[:, 6:], carries)
    np.testing.assert_allclose(rest, whole[:, 6:], atol=1e-5)
