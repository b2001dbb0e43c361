"""Consecutive streams with carried state (truncated BPTT) and the recurrent regularisers."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charlm_jax.data.windows import ConsecutiveStreams
from charlm_jax.errors import CharLMError
from charlm_jax.model import charlstm as model_module
from charlm_jax.model.charlstm import CharLSTM, build_model, init_params
from charlm_jax.settings.recipes import recipe_config
from charlm_jax.train.loop import Limits, fit
from charlm_jax.train.steps import create_train_state, train_block

from helpers import QUIET, assert_trees_close, assert_trees_equal, float64_mode, tiny_config
from test_lstm import autodiff_scan


def all_blocks(key, train_chars, streams, maxlen, block_steps, first_batch=0):
    blocks = list(ConsecutiveStreams(train_chars, streams, maxlen, block_steps).blocks(key, first_batch))
    return np.concatenate(blocks) if blocks else np.zeros((0, streams), np.int32)


def test_each_batch_continues_every_stream_where_the_last_one_stopped():
    train_chars, streams, maxlen = 10_000, 7, 20
    starts = all_blocks(jax.random.key(3), train_chars, streams, maxlen, block_steps=5)  # (steps, streams)
    assert len(starts) == ConsecutiveStreams(train_chars, streams, maxlen, 5).steps_per_epoch
    assert (np.diff(starts, axis=0) == maxlen).all()  # batch k + 1 starts where batch k's inputs end
    length = train_chars // streams
    offset = starts[0, 0]
    assert 0 <= offset < maxlen and (starts[0] == np.arange(streams) * length + offset).all()
    # Every window (maxlen inputs and the target after them) stays inside its own stream and the head.
    assert (starts[-1] + maxlen < (np.arange(streams) + 1) * length).all()
    assert starts.max() + maxlen < train_chars


def test_the_offset_changes_with_the_key_and_a_resumed_epoch_continues_it():
    a = all_blocks(jax.random.key(0), 5_000, 4, 30, block_steps=3)
    offsets = {int(all_blocks(jax.random.key(k), 5_000, 4, 30, 3)[0, 0]) for k in range(8)}
    assert len(offsets) > 1
    assert (all_blocks(jax.random.key(0), 5_000, 4, 30, 3, first_batch=4) == a[4:]).all()


def test_the_carries_passed_on_are_the_model_state_after_the_batch(tiny_text):
    # Without dropout a stream step is deterministic: its returned carries are those of the model run
    # over the batch's inputs from the carries it received, and the next step's loss starts from them.
    config = tiny_config(batching="streams", objective="dense", batch_size=4)
    model = build_model(config, 20)
    state = create_train_state(jax.random.key(0), config, 20, total_steps=10)
    windows = jax.random.randint(jax.random.key(1), (2, 4, config.maxlen + 1), 0, 20)  # (steps, streams, width)
    expected, _ = model.apply({"params": state.params}, windows[0, :, : config.maxlen], model.zero_carries(4))
    # The train state and carries are donated: each call gets its own.
    block = partial(train_block, model=model, maxlen=config.maxlen, objective="dense", carry_over=True)
    (_, carries_two), metrics = block(state, model.zero_carries(4), windows, jax.random.key(2))
    (after_one, carries_one), first = block(
        create_train_state(jax.random.key(0), config, 20, 10), model.zero_carries(4), windows[:1], jax.random.key(2)
    )
    assert_trees_close(carries_one, expected, rtol=1e-5, atol=1e-6)
    carried, logits = model.apply({"params": after_one.params}, windows[1, :, : config.maxlen], carries_one)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, windows[1, :, 1:]).mean()
    np.testing.assert_allclose(metrics["loss"][1], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"][0], first["loss"][0], rtol=1e-6)
    assert_trees_close(carries_two, carried, rtol=1e-5, atol=1e-6)


def test_streams_need_the_dense_objective():
    with pytest.raises(CharLMError, match="--objective dense"):
        tiny_config(batching="streams", objective="next_char")


def test_a_text_too_short_for_the_streams_is_a_clear_error(tmp_path, tiny_text):
    with pytest.raises(CharLMError, match="smaller --batch-size"):
        fit(tiny_config(batching="streams", objective="dense", batch_size=128), tiny_text, tmp_path, console=QUIET)


def test_a_streams_run_resumed_mid_epoch_reaches_the_same_parameters(tmp_path, tiny_text):
    config = tiny_config(
        batching="streams",
        objective="dense",
        batch_size=8,
        epochs=3,
        steps_per_call=3,
        dropout=0.2,
        locked_dropout=True,
        weight_dropout=0.2,
        sample_length=0,
    )
    whole = fit(config, tiny_text, tmp_path / "whole", console=QUIET)
    per_epoch = ConsecutiveStreams(1134, 8, config.maxlen, 1).steps_per_epoch
    assert int(whole.state.step) == 3 * per_epoch
    first = fit(config, tiny_text, tmp_path / "split", console=QUIET, limits=Limits(max_steps=per_epoch + 2))
    assert first.resumable
    resumed = fit(config, tiny_text, tmp_path / "split", console=QUIET, resume=True)
    assert_trees_equal(resumed.state.params, whole.state.params)
    assert all(np.isfinite(r["val_bits_per_char"]) for r in resumed.history)


@pytest.mark.parametrize("locked,weight_dropout", [(True, 0.0), (False, 0.3), (True, 0.3)])
def test_gradients_with_the_regularisers_equal_autodiff_in_float64(monkeypatch, locked, weight_dropout):
    # The dropout masks are drawn outside the fused layer, so with the same key both gradients see the same
    # masks; the hand-written backward pass must match autodiff of a plain scan through them.
    model = CharLSTM(
        vocab_size=9, hidden_size=6, num_layers=2, dropout=0.3, locked_dropout=locked, weight_dropout=weight_dropout
    )
    params32 = init_params(jax.random.key(0), model, 8)
    with float64_mode():
        params = jax.tree.map(lambda p: p.astype(jnp.float64) * 2.0, params32)
        ids = jax.random.randint(jax.random.key(1), (4, 9), 0, 9)
        carries = jax.tree.map(lambda c: c + 0.1, model.zero_carries(4, jnp.float64))

        def loss(params):
            _, logits = model.apply(
                {"params": params}, ids[:, :8], carries, deterministic=False, rngs={"dropout": jax.random.key(5)}
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        ours = jax.grad(loss)(params)
        monkeypatch.setattr(model_module, "lstm_scan", autodiff_scan)
        reference = jax.grad(loss)(params)
        assert_trees_close(ours, reference, rtol=1e-10, atol=1e-12)
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ours))


def test_locked_dropout_drops_a_unit_for_the_whole_sequence():
    model = CharLSTM(vocab_size=9, hidden_size=32, dropout=0.5, locked_dropout=True)
    params = init_params(jax.random.key(0), model, 8)
    ids = jax.random.randint(jax.random.key(1), (3, 10), 0, 9)
    _, state = model.apply(
        {"params": params},
        ids,
        deterministic=False,
        rngs={"dropout": jax.random.key(2)},
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    dropped = state["intermediates"]["Dropout_0"]["__call__"][0] == 0  # (time, batch, hidden)
    assert dropped.any() and (dropped == dropped[:1]).all()


def test_weight_dropout_changes_training_only():
    model = CharLSTM(vocab_size=9, hidden_size=8, weight_dropout=0.5)
    params = init_params(jax.random.key(0), model, 8)
    ids = jax.random.randint(jax.random.key(1), (2, 8), 0, 9)
    plain = CharLSTM(vocab_size=9, hidden_size=8).apply({"params": params}, ids)[1]
    np.testing.assert_array_equal(model.apply({"params": params}, ids)[1], plain)
    dropped = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(2)})[1]
    assert not np.allclose(dropped, plain)
    # Training sees the recurrent kernel with about half its weights zeroed and the rest scaled by 1 / (1 - p):
    # the plain model given that masked kernel computes exactly the dropped logits.
    (_, again), captured = model.apply(
        {"params": params},
        ids,
        deterministic=False,
        rngs={"dropout": jax.random.key(2)},
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    np.testing.assert_array_equal(again, dropped)
    masked = np.asarray(captured["intermediates"]["lstm_0"]["Dropout_0"]["__call__"][0])  # the kernel the scan read
    kernel = np.asarray(params["lstm_0"]["recurrent_kernel"])
    kept = masked != 0
    assert 0.35 < 1 - kept.mean() < 0.65
    np.testing.assert_allclose(masked[kept], kernel[kept] / 0.5, rtol=1e-6)
    swapped = {**params, "lstm_0": {**params["lstm_0"], "recurrent_kernel": masked}}
    np.testing.assert_allclose(
        CharLSTM(vocab_size=9, hidden_size=8).apply({"params": swapped}, ids)[1], dropped, rtol=1e-5, atol=1e-6
    )


def test_a_streams_run_validates_on_its_step_schedule_not_at_each_short_epoch(tmp_path, tiny_text):
    config = recipe_config(
        "streams",
        maxlen=12,
        hidden_size=16,
        num_layers=1,
        batch_size=8,
        epochs=3,
        eval_every_steps=4,
        steps_per_call=2,
        sample_length=0,
    )
    assert config.batching == "streams" and config.objective == "dense"
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    per_epoch = ConsecutiveStreams(1134, 8, 12, 1).steps_per_epoch  # 10 steps: the schedule and the epochs' ends differ
    total = 3 * per_epoch
    expected = sorted({*range(4, total + 1, 4), total})
    assert [r["step"] for r in result.history] == expected
    assert [r.get("partial_epoch", False) for r in result.history] == [s % per_epoch != 0 for s in expected]
