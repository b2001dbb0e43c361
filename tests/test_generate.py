"""Generation: one jitted scan that equals the book's per-character loop, compiled once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm_jax.errors import CharLMError
from charlm_jax.decode import generate_ids
from charlm_jax.model import CharLSTM, init_params
from charlm_jax.sampling import sample

VOCAB, MAXLEN = 11, 8


@pytest.fixture(scope="module")
def model_and_params():
    model = CharLSTM(vocab_size=VOCAB, hidden_size=16)
    params = init_params(jax.random.key(0), model, MAXLEN)
    # Sharpen the random model so samples at different temperatures differ visibly.
    params = jax.tree.map(lambda p: p * 3.0, params)
    return model, params


def book_window_loop(model, params, key, prompt, temperatures, length):
    """The book's loop: re-read the last maxlen characters every step, one model call per character."""
    texts = [list(prompt) for _ in temperatures]
    keys = jax.random.split(key, length)
    for t in range(length):
        window = np.array([text[-MAXLEN:] for text in texts])
        _, logits = model.apply({"params": params}, jnp.asarray(window), last_only=True)
        next_ids = sample(keys[t], logits, jnp.asarray(temperatures))
        for text, i in zip(texts, np.asarray(next_ids)):
            text.append(int(i))
    return np.array([text[len(prompt):] for text in texts])


def stateful_loop(model, params, key, prompt, temperatures, length):
    """What a user would write with a carried state: Python loop, one step per character."""
    batch = len(temperatures)
    carries, logits = model.apply({"params": params}, jnp.asarray([prompt] * batch),
                                  model.zero_carries(batch), last_only=True)
    out = []
    for step_key in jax.random.split(key, length):
        ids = sample(step_key, logits, jnp.asarray(temperatures))
        out.append(np.asarray(ids))
        carries, logits = model.apply({"params": params}, ids[:, None], carries, last_only=True)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("prompt_len", [3, MAXLEN, 13])
def test_window_mode_equals_the_books_loop_exactly(model_and_params, prompt_len):
    model, params = model_and_params
    prompt = list(np.random.default_rng(prompt_len).integers(0, VOCAB, prompt_len))
    temps = [0.2, 0.5, 1.0, 1.2]
    key = jax.random.key(7)
    expected = book_window_loop(model, params, key, prompt, temps, 20)
    got = generate_ids(params, key, jnp.asarray([prompt] * 4), jnp.asarray(temps), model=model,
                       length=20, mode="window", maxlen=MAXLEN)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_stateful_mode_equals_a_python_loop_carrying_the_state(model_and_params):
    model, params = model_and_params
    prompt = [1, 2, 3, 4, 5]
    temps = [0.0, 0.5, 1.0]
    key = jax.random.key(3)
    expected = stateful_loop(model, params, key, prompt, temps, 30)
    got = generate_ids(params, key, jnp.asarray([prompt] * 3), jnp.asarray(temps), model=model,
                       length=30, mode="stateful", maxlen=MAXLEN)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_modes_agree_while_the_text_fits_in_one_window(model_and_params):
    model, params = model_and_params
    prompt = jnp.asarray([[4, 2, 7]] * 4)
    temps = jnp.asarray([0.0, 0.5, 1.0, 1.2])
    kwargs = dict(model=model, length=MAXLEN - 3, maxlen=MAXLEN)
    key = jax.random.key(11)
    window = generate_ids(params, key, prompt, temps, mode="window", **kwargs)
    stateful = generate_ids(params, key, prompt, temps, mode="stateful", **kwargs)
    np.testing.assert_array_equal(np.asarray(window), np.asarray(stateful))


def test_same_key_same_text_other_key_other_text(model_and_params):
    model, params = model_and_params
    prompt = jnp.asarray([[1, 2, 3]] * 2)
    temps = jnp.asarray([1.0, 1.0])
    run = lambda key: np.asarray(generate_ids(params, key, prompt, temps, model=model,  # noqa: E731
                                              length=50, mode="stateful", maxlen=MAXLEN))
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # rows draw independent noise from one key


def test_temperature_zero_is_greedy_whatever_the_key(model_and_params):
    model, params = model_and_params
    prompt = jnp.asarray([[1, 2, 3]])
    out = [np.asarray(generate_ids(params, jax.random.key(k), prompt, jnp.asarray([0.0]), model=model,
                                   length=25, mode="window", maxlen=MAXLEN)) for k in range(3)]
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_new_temperatures_prompts_and_keys_do_not_recompile(model_and_params):
    model, params = model_and_params
    generate_ids.clear_cache()
    for i, temps in enumerate(([0.2, 0.5, 1.0, 1.2], [1.0, 1.0, 0.0, 3.0], [0.7, 0.1, 0.9, 2.0])):
        prompt = jnp.asarray(np.full((4, 5), i + 1), jnp.int32)
        generate_ids(params, jax.random.key(i), prompt, jnp.asarray(temps, jnp.float32), model=model,
                     length=16, mode="stateful", maxlen=MAXLEN)
    assert generate_ids._cache_size() == 1


def test_unknown_mode_is_refused(model_and_params):
    model, params = model_and_params
    with pytest.raises(CharLMError, match="mode must be one of"):
        generate_ids(params, jax.random.key(0), jnp.ones((1, 3), jnp.int32), jnp.ones(1), model=model,
                     length=4, mode="beam", maxlen=MAXLEN)
