"""Training options beyond the book: objectives, clipping, schedules, layers, dropout, recipes."""

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
from charlm_jax.settings.recipes import RECIPES, recipe_config
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
def test_forum_model_two_layers_of_256_with_dropout_trains(tiny_text):
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


def test_book_recipe_is_the_default_config():
    assert recipe_config("book") == TrainConfig() == recipe_config()
    book = TrainConfig()
    assert (book.maxlen, book.step, book.hidden_size, book.batch_size, book.learning_rate) == (60, 3, 128, 128, 0.01)
    assert (book.objective, book.clip_norm, book.lr_schedule, book.early_stopping_patience) == (
        "next_char",
        None,
        "constant",
        0,
    )


def test_fast_recipe_keeps_the_books_data_and_optimizer_family_and_overrides_apply():
    fast = recipe_config("fast")
    book = TrainConfig()
    assert (fast.maxlen, fast.step, fast.batch_size, fast.val_fraction, fast.lowercase) == (
        book.maxlen,
        book.step,
        book.batch_size,
        book.val_fraction,
        book.lowercase,
    )
    assert (fast.rmsprop_decay, fast.rmsprop_eps) == (book.rmsprop_decay, book.rmsprop_eps)
    assert fast.objective == "dense" and fast.clip_norm is not None and fast.lr_schedule == "cosine"
    assert recipe_config("fast", epochs=7, clip_norm=2.0).clip_norm == 2.0
    assert set(RECIPES) >= {"book", "fast"}
    with pytest.raises(CharLMError, match="unknown recipe 'nope'"):
        recipe_config("nope")


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


def test_auto_recipe_needs_a_budget_and_picks_a_tier_for_it():
    from charlm_jax.settings import recipes

    with pytest.raises(CharLMError, match="--recipe auto .*pass --time-limit SECONDS"):
        recipe_config("auto")
    with pytest.raises(CharLMError, match="--time-limit must be > 0"):
        recipe_config("auto", time_limit=0)
    for limit, values in recipes.AUTO_TIERS:  # a budget at a tier's upper limit is in that tier
        chosen = recipe_config("auto", time_limit=limit if math.isfinite(limit) else 1e6)
        assert chosen == TrainConfig(**values) and chosen.compute_dtype == "float32"
        # a dtype given wins over the tier's; every other flag overrides as with any recipe
        assert recipe_config("auto", time_limit=limit, compute_dtype="bfloat16").compute_dtype == "bfloat16"
        assert recipe_config("auto", time_limit=limit, epochs=3).epochs == 3
    # the tiers are ordered by budget and every one is a streams recipe that a time limit ends
    limits = [limit for limit, _ in recipes.AUTO_TIERS]
    assert limits == sorted(limits) and limits[-1] == float("inf")
    assert all(values["batching"] == "streams" for _, values in recipes.AUTO_TIERS)


def test_cli_recipe_auto_without_a_time_limit_is_one_line(capsys, tmp_path):
    from charlm_jax.cli.app import main

    assert main(["train", "--recipe", "auto", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --time-limit SECONDS" in err and "Traceback" not in err


def test_auto_regularises_a_text_its_budget_reads_many_times():
    from charlm_jax.settings import recipes

    short_limit = recipes.AUTO_TIERS[0][0]
    # the passes a budget makes over a text: this many characters make exactly the threshold
    threshold_chars = int(short_limit * recipes.SHORT_CHARS_PER_SECOND / recipes.SMALL_TEXT_PASSES)
    small = recipe_config("auto", time_limit=short_limit, corpus_chars=threshold_chars // 4)
    large = recipe_config("auto", time_limit=short_limit, corpus_chars=threshold_chars * 4)
    unknown = recipe_config("auto", time_limit=short_limit)
    assert small.dropout == recipes.SMALL_TEXT_DROPOUT > 0
    assert large.dropout == unknown.dropout == 0.0
    assert small == TrainConfig(**{**large.to_dict(), "temperatures": large.temperatures, "dropout": small.dropout})
    # a tier with its own dropout keeps it; a dropout given wins over the rule
    long_tier = recipe_config("auto", time_limit=1e6, corpus_chars=1_000)
    assert long_tier.dropout == recipes.AUTO_TIERS[-1][1]["dropout"]
    assert recipe_config("auto", time_limit=60, corpus_chars=1_000, dropout=0.0).dropout == 0.0


def test_cli_recipe_auto_trains_what_the_library_picks_for_that_text(tmp_path, tiny_text):
    import charlm_jax
    from charlm_jax.cli.app import main

    text_file = tmp_path / "tiny.txt"
    text_file.write_text(tiny_text)
    out = tmp_path / "run"
    small = ["--maxlen", "12", "--hidden-size", "16", "--batch-size", "8", "--sample-length", "0"]
    flags = ["--recipe", "auto", "--time-limit", "3", "--compute-dtype", "float32", *small, "--no-progress"]
    assert main(["train", "--text", str(text_file), "--out", str(out), *flags]) == 0
    expected = recipe_config(
        "auto",
        time_limit=3,
        corpus_chars=len(tiny_text),
        compute_dtype="float32",
        maxlen=12,
        hidden_size=16,
        batch_size=8,
        sample_length=0,
    )
    assert charlm_jax.load(out).config == expected and expected.dropout > 0  # a tiny text: read many times
