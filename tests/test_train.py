"""Training pieces: Keras' RMSprop by hand, a step that learns, compiled once."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charlm_jax.data.windows import Vocab, host_windows, split_windows
from charlm_jax.model.charlstm import build_model
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.steps import create_train_state, eval_step, make_optimizer, train_block

from helpers import assert_trees_equal, tiny_config, train_windows


def test_rmsprop_matches_keras_formula_by_hand():
    config = TrainConfig()
    optimizer = make_optimizer(config)
    w = jnp.array([1.0, -2.0, 3.0])
    grads = [jnp.array([0.5, -1e-3, 2.0]), jnp.array([-0.25, 4.0, 1e-5])]
    state = optimizer.init(w)
    v = np.zeros(3)
    w_ref = np.asarray(w, np.float64)
    for g in grads:
        updates, state = optimizer.update(g, state, w)
        w = optax.apply_updates(w, updates)
        g = np.asarray(g, np.float64)
        v = 0.9 * v + 0.1 * g**2  # Keras 3: rho = 0.9
        w_ref = w_ref - 0.01 * g / np.sqrt(v + 1e-7)  # epsilon inside the sqrt
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)


def _setup(text, **overrides):
    config = tiny_config(**overrides)
    vocab = Vocab.from_text(text)
    corpus = jnp.asarray(vocab.encode(text))
    split = split_windows(len(text), config.maxlen, config.step, config.val_fraction)
    state = create_train_state(jax.random.key(0), config, vocab.size)
    model = build_model(config, vocab.size)

    def windows(corpus, starts):  # what the loop does: windows gathered on the host
        return host_windows(np.asarray(corpus), np.asarray(starts), config.maxlen + 1)

    def block_fn(state, corpus, block_starts, key):
        return train_windows(state, windows(corpus, block_starts), key, config, model)

    def train_fn(state, corpus, starts, key):  # one step: a block of one batch
        state, metrics = block_fn(state, corpus, jnp.asarray(starts)[None], key)
        return state, jax.tree.map(lambda m: m[0], metrics)

    def eval_fn(params, corpus, starts, weights):
        return eval_step(params, windows(corpus, starts), weights, model=model, maxlen=config.maxlen)

    train_fn.block = block_fn
    return config, corpus, split, state, train_fn, eval_fn


def test_train_step_lowers_the_loss_on_a_fixed_batch(tiny_text):
    for objective in ("next_char", "dense"):
        _, corpus, split, state, train_fn, _ = _setup(tiny_text, objective=objective)
        starts = jnp.asarray(split.train_starts[:16])
        losses = []
        for _ in range(20):
            state, metrics = train_fn(state, corpus, starts, jax.random.key(1))
            losses.append(float(metrics["loss"]))
        assert all(b < a for a, b in zip(losses, losses[1:10])), (objective, losses)
        assert losses[-1] < 0.7 * losses[0], (objective, losses)


def test_overfits_a_tiny_text_to_near_zero_loss():
    text = "abcdefgh" * 8
    config, corpus, split, state, train_fn, eval_fn = _setup(
        text, maxlen=6, step=1, hidden_size=32, batch_size=16, val_fraction=0.0
    )
    starts = split.train_starts
    for i in range(150):
        batch = jnp.asarray(np.resize(np.roll(starts, i), 16))
        state, metrics = train_fn(state, corpus, batch, jax.random.key(0))
    nll, count = eval_fn(state.params, corpus, jnp.asarray(starts[:16]), jnp.ones(16))
    assert float(nll / count) < 0.02


def test_train_block_compiles_once_per_block_size(tiny_text):
    _, corpus, split, state, train_fn, _ = _setup(tiny_text, hidden_size=17)  # a shape no other test compiles
    block, before = train_fn.block, train_block.jitted._cache_size()
    sizes = []
    for i in range(4):  # new batches and keys, same shapes: one compilation
        starts = jnp.asarray(split.train_starts[:48]).reshape(3, 16)
        state, _ = block(state, corpus, jnp.roll(starts, i), jax.random.key(i))
        sizes.append(train_block.jitted._cache_size() - before)
    state, _ = block(state, corpus, starts[:2], jax.random.key(9))  # an epoch's remainder block
    assert sizes == [1, 1, 1, 1] and train_block.jitted._cache_size() - before == 2


def test_a_block_of_steps_equals_the_steps_one_by_one(tiny_text):
    _, corpus, split, state, train_fn, _ = _setup(tiny_text, dropout=0.1)
    starts = jnp.asarray(split.train_starts[:64]).reshape(4, 16)
    single = jax.tree.map(jnp.copy, state)  # the block call donates (consumes) its state
    blocked, block_metrics = train_fn.block(state, corpus, starts, jax.random.key(1))
    losses = []
    for row in starts:
        single, metrics = train_fn(single, corpus, row, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    # Bit for bit: the block size is a speed knob, and resumed runs depend on it being exact.
    np.testing.assert_array_equal(np.asarray(block_metrics["loss"]), np.asarray(losses, np.float32))
    assert int(blocked.step) == int(single.step) == 4
    assert_trees_equal(blocked.params, single.params)
    assert_trees_equal(blocked.opt_state, single.opt_state)


def test_eval_ignores_padding_rows(tiny_text):
    _, corpus, split, state, _, eval_fn = _setup(tiny_text)
    starts = jnp.asarray(split.val_starts[:16])
    full_sum, full_n = eval_fn(state.params, corpus, starts, jnp.ones(16))
    weights = jnp.asarray([1.0] * 10 + [0.0] * 6)
    part_sum, part_n = eval_fn(state.params, corpus, starts, weights)
    head_sum, _ = eval_fn(state.params, corpus, starts.at[10:].set(starts[0]), weights)
    assert float(full_n) == 16 and float(part_n) == 10
    np.testing.assert_allclose(float(part_sum), float(head_sum), rtol=1e-6)
    assert float(part_sum) < float(full_sum)


def test_optimizer_settings_are_config_fields_and_only_they_change_the_optimizer():
    from charlm_jax.train.steps import OptimizerSettings

    names = {f.name for f in dataclasses.fields(OptimizerSettings)}
    assert names <= {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig()
    assert make_optimizer(base) is make_optimizer(dataclasses.replace(base, hidden_size=64, seed=3, dropout=0.1))
    for name, value in [("learning_rate", 0.02), ("clip_norm", 1.0), ("average_decay", 0.9), ("rmsprop_decay", 0.8)]:
        assert make_optimizer(dataclasses.replace(base, **{name: value})) is not make_optimizer(base), name
