"""The real generation scan draws from the model's distribution at every temperature.

A fixed bigram table stands in for the LSTM (same interface): the transition
frequencies of long generated samples must match softmax(table[prev] / T) at
each requested temperature, in both generation modes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm_jax.settings.config import SAMPLERS
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.use.decode import generate_ids

from stats import ALPHA, chi_square_p_value, softmax64

TABLE = np.array(
    [
        [2.0, 0.5, -1.0, 0.0, 1.0],
        [-1.0, 1.5, 1.0, 0.0, -np.inf],  # 1 -> 4 is impossible
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [3.0, -2.0, 1.0, 0.5, 0.0],
        [0.5, 1.0, 1.5, 2.0, -0.5],
    ],
    np.float32,
)


class BigramTable(nn.Module):
    """Logits of the next id depend only on the last id: a model with known transitions."""

    vocab_size: int = 5

    def zero_carries(self, batch: int):
        return (jnp.zeros((batch,), jnp.float32),)

    @nn.compact
    def __call__(self, ids, carries=None, *, seq_lengths=None, last_only=True, deterministic=True):
        table = self.param("table", lambda key: jnp.asarray(TABLE))
        if seq_lengths is None:
            last = ids[:, -1]
        else:
            last = jnp.take_along_axis(ids, (seq_lengths - 1)[:, None], axis=1)[:, 0]
        return carries, table[last]  # (batch, vocab)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("penalty", [1.8, 0.6])
def test_draws_follow_softmax_of_the_penalised_logits(sampler, penalty):
    """With a repetition penalty, the first draw after a prompt follows softmax(penalised / T)."""
    model = BigramTable()
    params = {"table": jnp.asarray(np.tile(TABLE[0], (5, 1)))}  # the same logits whatever came before
    temperature, window = 0.8, 3
    # Prompt rows whose last `window` ids are {0, 3} (and an older 1 outside the window).
    prompt = np.array([1, 0, 3, 3], np.int32)
    prompts = jnp.asarray(np.tile(prompt, (20_000, 1)))
    options = GenerationOptions(
        length=1,
        temperatures=np.full(20_000, temperature),
        sampler=sampler,
        repetition_penalty=penalty,
        repetition_window=window,
    )
    ids = np.asarray(generate_ids(params, jax.random.key(7), prompts, options, model=model, maxlen=6))[:, 0]
    counts = np.bincount(ids, minlength=5)
    logits = TABLE[0].astype(np.float64)
    present = np.isin(np.arange(5), [0, 3])
    penalised = np.where(present, np.where(logits > 0, logits / penalty, logits * penalty), logits)
    assert chi_square_p_value(counts, softmax64(penalised, temperature)) > ALPHA
    assert chi_square_p_value(counts, softmax64(logits, temperature)) < 1e-6  # power: unpenalised rejected


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_draws_that_never_complete_a_training_ngram_follow_the_rest_of_softmax(sampler):
    """no_copy_ngram: after the context (3, 0), the training text's 3-grams (3, 0, 1) and (3, 0, 4) are banned; the
    first draw follows softmax(logits / T) over the other ids."""
    from charlm_jax.use.copies import ngram_table

    model = BigramTable()
    params = {"table": jnp.asarray(TABLE)}
    training = np.array([3, 0, 1, 2, 2, 3, 0, 4, 1, 1, 0, 2], np.int32)  # 3-grams after (3, 0): 1 and 4 only
    temperature, rows = 1.3, 20_000
    options = GenerationOptions(length=1, temperatures=np.full(rows, temperature), sampler=sampler, no_copy_ngram=3)
    options = options.with_rows(options.temperatures, copy_table=ngram_table(training, 3))
    prompts = jnp.asarray(np.tile(np.array([2, 3, 0], np.int32), (rows, 1)))
    ids = np.asarray(generate_ids(params, jax.random.key(3), prompts, options, model=model, maxlen=6))[:, 0]
    counts = np.bincount(ids, minlength=5)
    allowed = softmax64(np.where(np.isin(np.arange(5), [1, 4]), -np.inf, TABLE[0].astype(np.float64)), temperature)
    assert counts[1] == counts[4] == 0
    assert chi_square_p_value(counts, allowed) > ALPHA


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_transition_frequencies_match_the_table_at_each_temperature(mode, sampler):
    model = BigramTable()
    params = {"table": jnp.asarray(TABLE)}
    temps = [0.2, 0.5, 1.0, 1.2]
    streams = 16  # per temperature
    batch_temps = np.repeat(temps, streams).astype(np.float32)
    prompts = jnp.asarray(np.arange(len(batch_temps)) % 5, jnp.int32)[:, None]
    options = GenerationOptions(length=1500, temperatures=batch_temps, mode=mode, sampler=sampler)
    ids = np.asarray(generate_ids(params, jax.random.key(0), prompts, options, model=model, maxlen=6))
    text = np.concatenate([np.asarray(prompts), ids], axis=1)  # (batch, 1 + length)
    for t_index, temperature in enumerate(temps):
        rows = text[t_index * streams : (t_index + 1) * streams]
        counts = np.zeros((5, 5))
        np.add.at(counts, (rows[:, :-1].ravel(), rows[:, 1:].ravel()), 1)
        for prev in range(5):
            expected = softmax64(TABLE[prev], temperature)
            p_value = chi_square_p_value(counts[prev], expected)
            assert p_value > ALPHA, (mode, temperature, prev, counts[prev], expected)
        assert counts[1, 4] == 0  # the masked transition never happens
        if temperature != 1.0:  # power: the same counts reject the untempered table
            untempered = [chi_square_p_value(counts[prev], softmax64(TABLE[prev], 1.0)) for prev in range(5)]
            assert min(untempered) < 1e-6, (mode, temperature)
