"""Scoring text: the window mode is the training run's validation metric; stateful carries the state."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import charlm_jax
from charlm_jax.data.windows import prepare_text, split_windows
from charlm_jax.errors import CharLMError

from helpers import TINY_TEXT


def test_window_mode_on_the_held_out_tail_reproduces_the_validation_metric(trained_run):
    out, result = trained_run
    lm = charlm_jax.load(out)
    text = prepare_text(TINY_TEXT, lm.config.lowercase)
    val_start = split_windows(len(text), lm.config.maxlen, lm.config.step, lm.config.val_fraction).val_start
    recorded = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    bits = charlm_jax.bits_per_char(lm, text[val_start:], mode="window")
    assert abs(bits - recorded["val_bits_per_char"]) < 1e-4
    scores = charlm_jax.score(lm, text[val_start:])
    assert scores.shape == (len(text) - val_start - lm.config.maxlen,) and np.all(scores <= 0)


def log2_probs_one_by_one(lm, ids):
    """Feed one character at a time, carrying the state: the definition of stateful scoring."""
    model, carries, out = lm.model, lm.model.zero_carries(1), []
    for current, following in zip(ids[:-1], ids[1:]):
        carries, logits = model.apply({"params": lm.params}, jnp.asarray([[current]]), carries, last_only=True)
        out.append(float(jax.nn.log_softmax(logits[0])[following]) / np.log(2))
    return np.asarray(out)


def test_stateful_mode_carries_the_state_from_the_first_character(trained_run):
    lm = charlm_jax.load(trained_run[0])
    text = TINY_TEXT[:90]
    expected = log2_probs_one_by_one(lm, lm.vocab.encode(text))
    np.testing.assert_allclose(charlm_jax.score(lm, text, mode="stateful"), expected, rtol=1e-4, atol=1e-5)


def test_texts_longer_than_one_batch_are_scored_in_fixed_shapes(trained_run, monkeypatch):
    import charlm_jax.model.scoring as scoring

    lm = charlm_jax.load(trained_run[0])
    text = prepare_text(TINY_TEXT, True)
    whole_window = charlm_jax.score(lm, text)
    whole_stateful = charlm_jax.score(lm, text, mode="stateful")
    # Smaller batches and chunks give the same scores, and each shape compiles once.
    monkeypatch.setattr(scoring, "WINDOW_BATCH", 100)
    monkeypatch.setattr(scoring, "STATEFUL_CHUNK", 64)
    scoring._window_nll.clear_cache()
    scoring.stateful_nll.clear_cache()
    np.testing.assert_allclose(charlm_jax.score(lm, text), whole_window, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(charlm_jax.score(lm, text, mode="stateful"), whole_stateful, rtol=1e-4, atol=1e-5)
    assert scoring._window_nll._cache_size() == 1 and scoring.stateful_nll._cache_size() == 1
    # Several of the smaller batches and chunks really ran, the last one padded.
    assert len(text) - lm.config.maxlen > 2 * 100 and (len(text) - lm.config.maxlen) % 100
    assert len(text) - 1 > 2 * 64 and (len(text) - 1) % 64


@pytest.mark.parametrize(
    "text,mode,fragment",
    [
        ("the quick Ω fox", "window", "not in the model's vocabulary: 'ω'"),
        ("the quick", "window", "window scoring needs at least 13"),
        ("t", "stateful", "stateful scoring needs at least 2"),
        ("the quick brown fox", "beam", "mode must be one of"),
    ],
)
def test_bad_texts_are_one_line_errors(trained_run, text, mode, fragment):
    lm = charlm_jax.load(trained_run[0])
    with pytest.raises(CharLMError, match=fragment):
        charlm_jax.score(lm, text, mode=mode)
