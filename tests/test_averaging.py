"""Weight averaging (--average-decay): the average's arithmetic, its guard, its checkpoints, and the best."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import charlm_jax
from charlm_jax.errors import CharLMError
from charlm_jax.train.averaging import average_weights, averaged_params, warm_decay
from charlm_jax.train.loop import Limits, fit
from charlm_jax.train.records import better_weights
from charlm_jax.train.steps import make_optimizer

from helpers import QUIET, assert_trees_equal, tiny_config


def test_the_average_follows_the_weights_with_the_warm_decay_then_the_set_one():
    """w_t = t (steps of +1 from w_0 = 0); the average is updated by hand with min(d, (1+t)/(10+t))."""
    decay = 0.9
    transform = average_weights(decay)
    params = {"w": jnp.zeros(3)}
    state = transform.init(params)
    expected = np.zeros(3)
    for t in range(40):
        updates = {"w": jnp.ones(3)}
        out, state = transform.update(updates, state, params)
        assert_trees_equal(out, updates)  # the updates pass through untouched
        params = optax.apply_updates(params, updates)
        d = min(decay, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * np.asarray(params["w"])
        np.testing.assert_allclose(np.asarray(state.averaged_params["w"]), expected, rtol=1e-6)
    assert int(state.averaged_steps) == 40
    assert float(warm_decay(decay, jnp.asarray(0))) == pytest.approx(0.1)
    assert float(warm_decay(decay, jnp.asarray(10**6))) == pytest.approx(decay)
    # on a ramp an average with decay d lags by about d / (1 - d) steps: still warm at t = 39, d = 40 / 49
    assert 3.5 < float(params["w"][0] - state.averaged_params["w"][0]) < 4.5


def test_the_average_lives_in_the_optimizer_state_and_a_refused_step_leaves_it_alone():
    config = tiny_config(average_decay=0.99, clip_norm=1.0)
    optimizer = make_optimizer(config)
    params = {"w": jnp.ones(4)}
    opt_state = optimizer.init(params)
    assert_trees_equal(averaged_params(opt_state), params)
    assert averaged_params(make_optimizer(tiny_config()).init(params)) is None
    _, refused = optimizer.update({"w": jnp.full(4, jnp.nan)}, opt_state, params)
    assert_trees_equal(averaged_params(refused), params)
    assert int(optax.tree.get(refused, "averaged_steps")) == 0
    updates, taken = optimizer.update({"w": jnp.full(4, 0.5)}, opt_state, params)
    moved = optax.apply_updates(params, updates)
    d = float(warm_decay(0.99, jnp.asarray(0)))
    np.testing.assert_allclose(averaged_params(taken)["w"], d * 1.0 + (1 - d) * moved["w"], rtol=1e-6)


def test_the_better_validated_weights_are_the_ones_kept():
    trained, averaged = object(), object()
    assert better_weights({"val_bits_per_char": 2.0, "averaged_val_bits_per_char": 1.9}, trained, averaged) == (
        1.9,
        averaged,
    )
    assert (
        better_weights({"val_bits_per_char": 2.0, "averaged_val_bits_per_char": 2.1}, trained, averaged)[1] is trained
    )
    assert (
        better_weights({"val_bits_per_char": 2.0, "averaged_val_bits_per_char": float("nan")}, trained, averaged)[1]
        is trained
    )
    assert (
        better_weights({"val_bits_per_char": float("nan"), "averaged_val_bits_per_char": 3.0}, trained, averaged)[1]
        is averaged
    )
    assert better_weights({"val_bits_per_char": 2.0}, trained, None) == (2.0, trained)


def test_a_run_validates_both_and_keeps_the_better_score(tmp_path, tiny_text):
    config = tiny_config(epochs=3, average_decay=0.9, sample_length=0)
    whole = fit(config, tiny_text, tmp_path / "whole", console=QUIET)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["averaged_val_bits_per_char"]) for r in records)
    assert all(r["averaged_val_bits_per_char"] != r["val_bits_per_char"] for r in records)
    best_record = [r for r in records if r.get("best")][-1]
    held = min(best_record["val_bits_per_char"], best_record["averaged_val_bits_per_char"])
    assert whole.best_val_bits_per_char == pytest.approx(held)


@pytest.mark.slow  # two more runs; the average's checkpoint round trip is the state's, resumed exactly in test_checkpoint
def test_an_averaging_run_resumes_exactly(tmp_path, tiny_text):
    """The average continues as if the run had never stopped."""
    config = tiny_config(epochs=2, average_decay=0.9, sample_length=0)
    whole = fit(config, tiny_text, tmp_path / "whole", console=QUIET)
    fit(config, tiny_text, tmp_path / "split", console=QUIET, limits=Limits(max_steps=5))
    resumed = fit(config, tiny_text, tmp_path / "split", console=QUIET, resume=True)
    assert_trees_equal(resumed.state.params, whole.state.params)
    assert_trees_equal(averaged_params(resumed.state.opt_state), averaged_params(whole.state.opt_state))


@pytest.mark.slow  # two more runs, each compiling its own decay; better_weights is unit-tested above
@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_best_holds_the_average_exactly_when_its_record_says_so(tmp_path, tiny_text, decay):
    """One record (a one-epoch run) is the best by construction, so both its weights are known at the end;
    whichever of the two scored lower must be the one <out>/best holds."""
    one = fit(tiny_config(average_decay=decay, sample_length=0), tiny_text, tmp_path / "one", console=QUIET)
    (record,) = one.history
    averaged_won = record["averaged_val_bits_per_char"] < record["val_bits_per_char"]
    assert record.get("best_weights") == ("averaged" if averaged_won else None)
    expected = averaged_params(one.state.opt_state) if averaged_won else one.state.params
    assert_trees_equal(charlm_jax.load(tmp_path / "one" / "best").params, expected)


def test_average_decay_is_checked_in_one_line_and_cannot_change_on_resume(tmp_path, tiny_text):
    with pytest.raises(CharLMError, match=r"average_decay must be in \[0, 1\).*--average-decay 0.999"):
        tiny_config(average_decay=1.0)
    out = tmp_path / "run"
    fit(tiny_config(average_decay=0.9, sample_length=0), tiny_text, out, console=QUIET, limits=Limits(max_steps=2))
    with pytest.raises(CharLMError, match="average_decay"):
        fit(tiny_config(average_decay=0.0, sample_length=0), tiny_text, out, resume=True, console=QUIET)


def test_averaging_on_the_book_recipe_keeps_the_update_identical():
    """The averaged chain's updates equal the plain RMSprop's: averaging observes, it never steers."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(0.3, -0.2, 6)}
    plain, averaged = make_optimizer(tiny_config()), make_optimizer(tiny_config(average_decay=0.999))
    u1, _ = plain.update(grads, plain.init(params), params)
    u2, _ = averaged.update(grads, averaged.init(params), params)
    assert_trees_equal(u1, u2)
    assert jax.tree.structure(u1) == jax.tree.structure(u2)


def test_a_state_that_averages_runs_through_the_donated_compiled_block():
    """The average starts as a copy of the weights, not their buffers: a state holding one buffer twice
    could not be donated to the compiled block."""
    from charlm_jax.model.charlstm import build_model
    from charlm_jax.train.steps import create_train_state, train_block

    config = tiny_config(average_decay=0.9)
    state = create_train_state(jax.random.key(0), config, 11, total_steps=20)
    model = build_model(config, 11)
    carries = model.zero_carries(config.batch_size)
    block = jax.random.randint(jax.random.key(1), (2, config.batch_size, config.maxlen + 1), 0, 11)
    for _ in range(2):
        (state, carries), metrics = train_block(
            state,
            carries,
            block,
            jax.random.key(2),
            model=model,
            maxlen=config.maxlen,
            objective=config.objective,
            carry_over=False,
        )
    assert int(optax.tree.get(state.opt_state, "averaged_steps")) == 4
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
