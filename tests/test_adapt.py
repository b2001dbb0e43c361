"""Dynamic evaluation keeps its promises: no peeking, learning from what it read, lr 0 is static scoring,
the model untouched, the update as written in float64, the CLI as the API, bad settings refused at once."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.errors import CharLMError
from charlm_jax.settings.adapt import AdaptOptions
from charlm_jax.use.adapt import Prior, Segments, adapt_chunk, adaptive_pass, decay_rates, gradient_scale, segment_loss

from helpers import QUIET, assert_trees_equal, float64_mode, tiny_config

SGD = AdaptOptions(rule="sgd", learning_rate=0.05, decay=0.01, segment=16)


@pytest.fixture(scope="module")
def lm(trained_run):
    out, _ = trained_run
    return charlm_jax.load(out)


@pytest.fixture(scope="module")
def scale(lm, tiny_text):
    ids = lm.vocab.encode(tiny_text)
    return gradient_scale(lm.params, lm.model, ids, AdaptOptions(segment=16, scale_batches=4, scale_batch=8))


def ids_of(lm, text):
    return lm.vocab.encode(text)


@pytest.mark.parametrize("k", [5, 16, 17, 40])
def test_changing_a_character_leaves_every_earlier_score_unchanged(lm, tiny_text, scale, k):
    """No peeking: the score of character j depends on characters 0..j only (bit for bit), segment
    boundaries (16) or not."""
    rms = AdaptOptions(learning_rate=1e-2, decay=1e-3, segment=16)
    ids = ids_of(lm, tiny_text[:120])
    changed = ids.copy()
    changed[k] = (changed[k] + 1) % lm.vocab.size
    for options, ms in ((rms, scale), (SGD, None)):
        before, _, _ = adaptive_pass(lm.params, lm.model, ids, options, ms)
        after, _, _ = adaptive_pass(lm.params, lm.model, changed, options, ms)
        # score index j is the log-probability of ids[j + 1]: those of characters before k are equal.
        np.testing.assert_array_equal(before[: k - 1], after[: k - 1])
        assert before[k - 1] != after[k - 1]


@pytest.fixture(scope="module")
def wider_lm(tmp_path_factory, tiny_text):
    """64 units: enough to learn a sentence from a few updates (the 16-unit run cannot)."""
    from charlm_jax.train.loop import fit

    out = tmp_path_factory.mktemp("wider")
    fit(tiny_config(epochs=3, hidden_size=64), tiny_text, out, console=QUIET)
    return charlm_jax.load(out)


@pytest.mark.slow  # trains a 64-unit model of its own
def test_a_text_followed_by_a_copy_of_itself_costs_much_less_the_second_time(wider_lm):
    lm = wider_lm
    piece = "".join(c for c in "a zebra quilts the vexing jokes of a wizard. " if c in lm.vocab.chars) * 2
    text, half = piece * 2, len(piece)  # nothing like the training text, read twice
    static = -charlm_jax.score(lm, text, mode="stateful")
    adapted = -charlm_jax.score(
        lm, text, mode="stateful", adapt=AdaptOptions(rule="sgd", learning_rate=0.3, decay=0.0, segment=16)
    )
    first, second = adapted[: half - 1].mean(), adapted[half - 1 :].mean()
    assert second < first - 0.4, (first, second)  # measured: 4.83 -> 4.24 bits/char
    assert second < static[half - 1 :].mean() - 1.0, (second, static[half - 1 :].mean())  # static: 5.86


def test_with_learning_rate_zero_it_is_static_stateful_scoring(lm, tiny_text, scale):
    static = charlm_jax.score(lm, tiny_text, mode="stateful")
    for options, ms in ((AdaptOptions(learning_rate=0.0, segment=16), scale), (SGD.replace(learning_rate=0.0), None)):
        log_probs, params, _ = adaptive_pass(lm.params, lm.model, ids_of(lm, tiny_text), options, ms)
        np.testing.assert_allclose(log_probs / np.log(2.0), static, rtol=0, atol=2e-5)
        assert_trees_equal(params, lm.params)  # nothing moved: the decay pulls towards where it already is


def test_the_model_is_unchanged_afterwards(lm, tiny_text):
    before = jax.tree.map(np.array, lm.params)
    charlm_jax.score(lm, tiny_text, mode="stateful", adapt=SGD)
    charlm_jax.generate(lm, "the ", length=10, temperatures=(0.5,), adapt=SGD, seed=0)
    assert_trees_equal(lm.params, before)


def test_one_segment_update_equals_the_rule_written_out_in_float64(lm, tiny_text, scale):
    """adapt_chunk's weights after one segment against the rule computed by hand from a float64 gradient."""
    options = AdaptOptions(learning_rate=3e-3, decay=2e-2, segment=16)
    ids = ids_of(lm, tiny_text[:17]).astype(np.int32)
    inputs, targets, mask = ids[:-1], ids[1:], np.ones(16, np.float32)
    rates = decay_rates(scale, options.decay)
    # Start away from the trained weights, so the decay term is not zero.
    start = jax.tree.map(lambda p: p * 1.01, lm.params)
    prior = Prior(lm.params, scale, rates, np.float32(options.learning_rate), np.float32(options.decay))
    segments = Segments(inputs[None], targets[None], mask[None])
    adapted, _, _ = adapt_chunk(
        start, lm.model.zero_carries(1), prior, segments, model=lm.model, rule="rms", eps=options.eps
    )
    with float64_mode():
        as64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
        carries = jax.tree.map(lambda c: np.asarray(c, np.float64), lm.model.zero_carries(1))
        grads = jax.grad(
            lambda p: segment_loss(p, carries, inputs, targets, mask.astype(np.float64), model=lm.model)[0]
        )(as64(start))
        grads = as64(grads)
    ms, p0, p = as64(scale), as64(lm.params), as64(start)
    leaves_rms = [np.sqrt(x) for x in jax.tree.leaves(ms)]
    mean_rms = sum(r.sum() for r in leaves_rms) / sum(r.size for r in leaves_rms)
    rms = jax.tree.map(np.sqrt, ms)
    expected = jax.tree.map(
        lambda pi, gi, p0i, ri: (
            pi
            - options.learning_rate * gi / (ri + options.eps)
            + np.minimum(options.decay * ri / mean_rms, 1.0) * (p0i - pi)
        ),
        p,
        grads,
        p0,
        rms,
    )
    for got, want, was in zip(jax.tree.leaves(adapted), jax.tree.leaves(expected), jax.tree.leaves(p)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-4, atol=2e-6)
        assert np.abs(want - was).max() > 1e-5  # the step is not negligible


def test_generation_after_adapting_is_one_text_per_seed_and_is_steered(lm):
    prompt = "all that glitters is not gold. " * 8
    options = dict(length=60, temperatures=(0.0, 0.5), seed=3)
    adapt = SGD.replace(learning_rate=0.1)
    first = charlm_jax.generate(lm, prompt, adapt=adapt, **options)
    assert first == charlm_jax.generate(lm, prompt, adapt=adapt, **options)
    assert first != charlm_jax.generate(lm, prompt, **options)
    # Row 1 is what a call with that row alone gives (one seed, one text).
    assert charlm_jax.generate(lm, prompt, adapt=adapt, length=60, temperatures=(0.9, 0.5), seed=3)[1] == first[1]


def test_the_cli_reports_what_the_api_computes(trained_run, lm, tiny_text, tmp_path, capsys):
    out, _ = trained_run
    text_file = tmp_path / "t.txt"
    text_file.write_text(tiny_text[:300])
    flags = ["--adapt", "--adapt-rule", "sgd", "--adapt-lr", "0.05", "--adapt-decay", "0.01", "--adapt-segment", "16"]
    assert main(["eval", "--checkpoint", str(out), "--text", str(text_file), "--json", *flags]) == 0
    reported = json.loads(capsys.readouterr().out)
    api = charlm_jax.score(lm, tiny_text[:300], mode="stateful", adapt=SGD)
    assert reported["mode"] == "stateful" and reported["adapt"]["rule"] == "sgd"
    assert reported["bits_per_char"] == pytest.approx(float(-api.mean()), abs=1e-12)
    assert main(["generate", "--checkpoint", str(out), "--prompt-file", str(text_file), "--length", "20", *flags]) == 0
    assert "(read adapting)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "settings,fragment",
    [
        (dict(learning_rate=-1.0), "learning_rate must be a finite number >= 0"),
        (dict(segment=0), "segment must be a positive integer"),
        (dict(decay=1.5), "decay must be < 1"),
        (dict(rule="adam"), "rule must be one of rms, sgd"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_any_work(settings, fragment):
    with pytest.raises(CharLMError, match=fragment):
        AdaptOptions(**settings)


def test_the_cli_refuses_adaptation_it_cannot_do(trained_run, capsys):
    out, _ = trained_run
    assert main(["eval", "--checkpoint", str(out), "--adapt", "--mode", "window"]) == 2
    assert "--adapt reads the text with its state carried" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--adapt-lr", "0.1"]) == 2
    assert "no effect without it" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--adapt", "--adapt-segment", "0"]) == 2
    assert "segment must be a positive integer" in capsys.readouterr().err
    with pytest.raises(CharLMError, match="pass mode='stateful'"):
        charlm_jax.score(charlm_jax.load(out), "the quick brown fox jumps over the lazy dog", adapt=True)


def test_the_rms_rule_needs_a_readable_training_text(lm, tiny_text):
    """The tiny run trained on a string: rms cannot measure its gradient scale, and says what to do."""
    with pytest.raises(CharLMError, match="rule='sgd'"):
        charlm_jax.score(lm, tiny_text, mode="stateful", adapt=True)
