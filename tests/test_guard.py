"""The non-finite guard: a NaN gradient never reaches the parameters, and a diverging run stops."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.loop import Limits, fit
from charlm_jax.train.steps import RunKeys, create_train_state

from helpers import QUIET, assert_trees_equal, tiny_config


def test_nan_gradient_leaves_params_and_optimizer_statistics_untouched():
    state = create_train_state(jax.random.key(0), TrainConfig(hidden_size=8), vocab_size=7)
    nan_grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), state.params)
    after = state.apply_gradients(grads=nan_grads)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.params, state.params)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(after.params))
    assert int(after.opt_state.notfinite_count) == 1 and int(after.opt_state.total_notfinite) == 1
    # A finite gradient afterwards is applied normally and resets the count in a row.
    ones = jax.tree.map(jnp.ones_like, state.params)
    later = after.apply_gradients(grads=ones)
    assert not np.array_equal(later.params["logits"]["bias"], state.params["logits"]["bias"])
    assert int(later.opt_state.notfinite_count) == 0 and int(later.opt_state.total_notfinite) == 1


def test_guard_changes_finite_updates_by_float32_rounding_at_most():
    """The guarded update is the same arithmetic, but XLA fuses it differently inside the guard's select
    (jitted or not), so values may differ at float32 rounding (measured: 18 of 224 values, at most 3e-8
    absolute, 8 ulp of the smallest): equal to rtol 1e-6, never a different update."""
    guarded = create_train_state(jax.random.key(0), TrainConfig(hidden_size=8), vocab_size=7)
    plain = create_train_state(jax.random.key(0), TrainConfig(hidden_size=8, max_nonfinite_in_row=0), vocab_size=7)
    grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape), plain.params)
    for _ in range(3):
        guarded, plain = guarded.apply_gradients(grads=grads), plain.apply_gradients(grads=grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), guarded.params, plain.params)
    moved = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(plain.params),
            jax.tree.leaves(create_train_state(jax.random.key(0), TrainConfig(hidden_size=8), vocab_size=7).params),
        )
    ]
    assert min(moved) > 1e-3  # the updates compared are real steps, far above the tolerance


@pytest.mark.slow  # three runs; the guard's step is unit-tested above
def test_a_diverging_run_stops_with_a_clear_error_and_finite_params(tmp_path, tiny_text):
    # A learning rate beyond float32's range makes every update non-finite (inf * g, 0 * inf).
    config = tiny_config(learning_rate=1e39, max_nonfinite_in_row=5, epochs=3)
    with pytest.raises(CharLMError, match="5 steps in a row had non-finite"):
        fit(config, tiny_text, tmp_path / "run", console=QUIET)
    # Stopped before the limit, the run still holds its initial parameters, untouched and finite...
    guarded = fit(config, tiny_text, tmp_path / "short", console=QUIET, limits=Limits(max_steps=4))
    initial = create_train_state(RunKeys.from_seed(config.seed).init, config, guarded.vocab.size).params
    assert_trees_equal(guarded.state.params, initial)
    assert guarded.history[-1]["skipped_steps_total"] == 4
    # ...while the same four steps without the guard destroy them.
    unguarded = fit(
        replace(config, max_nonfinite_in_row=0), tiny_text, tmp_path / "off", console=QUIET, limits=Limits(max_steps=4)
    )
    assert not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(unguarded.state.params))
