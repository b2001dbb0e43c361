"""The training step's pieces: the loss of each objective, gradient clipping, learning-rate schedules, the
optimizer (RMSprop as Keras 2 places epsilon, decoupled weight decay), a two-layer model with dropout."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charlm_jax.data.windows import Vocab, host_windows, split_windows
from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import build_model
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.steps import create_train_state, learning_rate_schedule, loss_fn, make_optimizer

from helpers import tiny_config, train_windows


def _log_softmax64(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("objective", ["next_char", "dense"])
def test_loss_is_the_mean_cross_entropy_of_the_objective_s_targets(tiny_text, objective):
    config = tiny_config(objective=objective)
    vocab = Vocab.from_text(tiny_text)
    ids = vocab.encode(tiny_text)
    model = build_model(config, vocab.size)
    params = create_train_state(jax.random.key(0), config, vocab.size).params
    starts = np.array([0, 5, 17, 40], np.int32)
    loss, _ = loss_fn(
        params,
        jnp.asarray(host_windows(ids, starts, config.maxlen + 1)),
        model.zero_carries(4),
        jax.random.key(1),
        model=model,
        maxlen=config.maxlen,
        objective=objective,
    )  # no dropout
    windows = np.stack([ids[s : s + config.maxlen] for s in starts])  # (batch, maxlen)
    _, logits = model.apply({"params": params}, jnp.asarray(windows))  # (batch, maxlen, vocab)
    log_probs = _log_softmax64(logits)
    if objective == "dense":  # every position predicts the character after it
        targets = np.stack([ids[s + 1 : s + config.maxlen + 1] for s in starts])
        expected = -np.mean(np.take_along_axis(log_probs, targets[..., None], axis=-1))
    else:  # the book: only the character after the window
        targets = ids[starts + config.maxlen]
        expected = -np.mean(log_probs[np.arange(len(starts)), -1, targets])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_clipping_rescales_large_gradients_to_the_global_norm():
    clipped = make_optimizer(TrainConfig(clip_norm=0.5, max_nonfinite_in_row=0))
    plain = make_optimizer(TrainConfig(max_nonfinite_in_row=0))
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[0.5]])}
    big = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[12.0]])}  # global norm 13
    small = {"a": jnp.array([0.03, -0.04]), "b": jnp.array([[0.12]])}  # norm 0.13: untouched
    updates, _ = clipped.update(big, clipped.init(params), params)
    expected, _ = plain.update(jax.tree.map(lambda g: g * 0.5 / 13.0, big), plain.init(params), params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)
    updates, _ = clipped.update(small, clipped.init(params), params)
    expected, _ = plain.update(small, plain.init(params), params)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)


def test_constant_schedule_is_the_book_s_fixed_rate():
    schedule = learning_rate_schedule(TrainConfig(), total_steps=1000)
    assert [float(schedule(t)) for t in (0, 1, 500, 999)] == pytest.approx([0.01] * 4)


def test_warmup_is_linear_from_zero_then_constant():
    schedule = learning_rate_schedule(TrainConfig(warmup_steps=100), total_steps=1000)
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(0.005)
    assert [float(schedule(t)) for t in (100, 600, 999)] == pytest.approx([0.01] * 3)


def test_cosine_follows_the_formula_to_the_final_fraction():
    peak, final, warmup, total = 0.005, 0.05, 20, 220
    config = TrainConfig(learning_rate=peak, lr_schedule="cosine", warmup_steps=warmup, lr_final_fraction=final)
    schedule = learning_rate_schedule(config, total_steps=total)
    end = peak * final
    for t in (20, 70, 120, 170, 220):
        expected = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        assert float(schedule(t)) == pytest.approx(expected, rel=1e-5), t
    assert float(schedule(10)) == pytest.approx(peak / 2)


def test_the_optimizer_applies_the_scheduled_rate():
    config = TrainConfig(lr_schedule="cosine", warmup_steps=2, max_nonfinite_in_row=0)
    optimizer = make_optimizer(config, total_steps=10)
    schedule = learning_rate_schedule(config, total_steps=10)
    w = jnp.array([1.0])
    state = optimizer.init(w)
    v = 0.0
    for t in range(4):
        g = jnp.array([0.5 + t])
        updates, state = optimizer.update(g, state, w)
        v = 0.9 * v + 0.1 * float(g[0]) ** 2
        assert float(updates[0]) == pytest.approx(-float(schedule(t)) * float(g[0]) / math.sqrt(v + 1e-7), rel=1e-5)


def test_cosine_without_total_steps_is_a_clear_error():
    with pytest.raises(CharLMError, match="total_steps"):
        make_optimizer(TrainConfig(lr_schedule="cosine"))


@pytest.mark.slow  # 2 x 256; stacked layers' gradients are checked in test_lstm
def test_a_two_layer_model_of_256_with_dropout_trains(tiny_text):
    """The forum's 2 x LSTM(256) with dropout 0.2: the right shapes, dropout active, and the loss falls."""
    config = tiny_config(num_layers=2, hidden_size=256, dropout=0.2)
    vocab = Vocab.from_text(tiny_text)
    state = create_train_state(jax.random.key(0), config, vocab.size)
    assert state.params["lstm_0"]["recurrent_kernel"].shape == (256, 4 * 256)
    assert state.params["lstm_1"]["recurrent_kernel"].shape == (256, 4 * 256)
    assert state.params["input_kernel_1"]["kernel"].shape == (256, 4 * 256)  # layer 2 reads layer 1
    model = build_model(config, vocab.size)
    split = split_windows(len(tiny_text), config.maxlen, config.step, config.val_fraction)
    corpus = vocab.encode(tiny_text)
    windows = jnp.asarray(host_windows(corpus, split.train_starts[:16], config.maxlen + 1))
    loss = partial(loss_fn, model=model, maxlen=config.maxlen, objective="next_char")
    carries = model.zero_carries(16)
    loss_a, loss_b = (loss(state.params, windows, carries, jax.random.key(k))[0] for k in (1, 2))
    assert np.isfinite(float(loss_a)) and float(loss_a) != float(loss_b)  # dropout is active in training
    block = host_windows(corpus, np.resize(split.train_starts, (30, 16)), config.maxlen + 1)  # 30 steps, same windows
    state, metrics = train_windows(state, block, jax.random.key(3), config, model)
    losses = np.asarray(metrics["loss"])
    assert np.all(np.isfinite(losses)) and losses[-5:].mean() < 0.9 * losses[:5].mean()  # measured: 0.84


def test_keras2_epsilon_placement_adds_epsilon_after_the_square_root():
    optimizer = make_optimizer(TrainConfig(rmsprop_eps_in_sqrt=False, max_nonfinite_in_row=0))
    w = jnp.array([1.0, -2.0])
    state = optimizer.init(w)
    v = np.zeros(2)
    for g in (np.array([1e-4, 2.0]), np.array([-3e-4, 0.5])):
        updates, state = optimizer.update(jnp.asarray(g, jnp.float32), state, w)
        v = 0.9 * v + 0.1 * g**2
        np.testing.assert_allclose(np.asarray(updates), -0.01 * g / (np.sqrt(v) + 1e-7), rtol=1e-5)


def test_weight_decay_is_decoupled_and_follows_the_learning_rate():
    config = TrainConfig(weight_decay=0.1, lr_schedule="cosine", max_nonfinite_in_row=0)
    optimizer = make_optimizer(config, total_steps=10)
    schedule = learning_rate_schedule(config, total_steps=10)
    w = jnp.array([1.0, -2.0])
    state = optimizer.init(w)
    v = np.zeros(2)
    for t, g in enumerate((np.array([0.5, -1.0]), np.array([2.0, 0.25]))):
        updates, state = optimizer.update(jnp.asarray(g, jnp.float32), state, w)
        v = 0.9 * v + 0.1 * g**2
        expected = -float(schedule(t)) * (g / np.sqrt(v + 1e-7) + 0.1 * np.asarray(w))
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)
        w = optax.apply_updates(w, updates)
