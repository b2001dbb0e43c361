"""The bfloat16 compute dtype: float32 everywhere but inside the products, errors bounded against float32.

float32 itself is untouched by the option (its path is the plain product: the float64 gradient tests
of test_lstm.py keep checking the hand-written backward exactly). Here: what stays float32 under
bfloat16, how far its loss and gradients may drift from float32's, that its hand-written backward
agrees with autodiff of its own forward, and that the sampler still draws from softmax(logits / T) of
the bfloat16 model's logits.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import build_model, init_params
from charlm_jax.model.lstm import lstm_scan
from charlm_jax.settings.config import TrainConfig
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train.steps import create_train_state, loss_fn
from charlm_jax.use.decode import generate_ids

from stats import ALPHA, chi_square_p_value, softmax64

VOCAB = 11


def models(**overrides):
    config = TrainConfig(hidden_size=32, num_layers=2, maxlen=12, objective="dense", **overrides)
    f32 = build_model(config, VOCAB)
    return config, f32, build_model(dataclasses.replace(config, compute_dtype="bfloat16"), VOCAB)


def windows(batch=16, width=13, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, width)), jnp.int32)


def test_bfloat16_keeps_weights_state_logits_and_optimizer_in_float32():
    """Dtypes are decided when a program is traced: abstract evaluation (no compile, no run) shows them."""
    config, _, bf16 = models()
    state = jax.eval_shape(
        lambda: create_train_state(jax.random.key(0), dataclasses.replace(config, compute_dtype="bfloat16"), VOCAB)
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state) if hasattr(leaf, "dtype")} <= {
        jnp.dtype("float32"),
        jnp.dtype("int32"),
        jnp.dtype("bool"),  # the guard's last_finite
    }
    carries, logits = jax.eval_shape(
        lambda p: bf16.apply({"params": p}, windows()[:, :12], bf16.zero_carries(16)), state.params
    )
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(carries)} == {jnp.dtype("float32")}
    grads = jax.eval_shape(
        jax.grad(
            lambda p: loss_fn(
                p, windows(), bf16.zero_carries(16), jax.random.key(1), model=bf16, maxlen=12, objective="dense"
            )[0]
        ),
        state.params,
    )
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {jnp.dtype("float32")}


def test_bfloat16_loss_and_gradients_stay_close_to_float32():
    """bfloat16 keeps 8 bits of mantissa: the loss within 1 %, each gradient within 10 % of float32's norm
    and pointing the same way (cosine > 0.99). Bounds, not equality: the error is the dtype's."""
    config, f32, bf16 = models()
    params = init_params(jax.random.key(3), f32, config.maxlen)
    batch = windows(seed=4)

    def loss_and_grads(model):
        def loss(p):
            return loss_fn(
                p, batch, model.zero_carries(16), jax.random.key(1), model=model, maxlen=12, objective="dense"
            )[0]

        return jax.value_and_grad(loss)(params)

    loss32, grads32 = loss_and_grads(f32)
    loss16, grads16 = loss_and_grads(bf16)
    assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)
    assert float(loss16) != float(loss32)  # the option does change the arithmetic
    for g32, g16 in zip(jax.tree.leaves(grads32), jax.tree.leaves(grads16)):
        g32, g16 = np.asarray(g32, np.float64).ravel(), np.asarray(g16, np.float64).ravel()
        assert np.linalg.norm(g16 - g32) <= 0.1 * np.linalg.norm(g32)
        assert g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32)) > 0.99


def test_bfloat16_hand_written_backward_agrees_with_autodiff_of_its_forward():
    """The recurrent gradients of the custom backward in bfloat16, against autodiff through the same
    bfloat16 forward (a plain scan): both round the same products, so they agree far closer than to float32."""
    rng = np.random.default_rng(0)
    time, batch, hidden = 9, 4, 8
    gate_inputs = jnp.asarray(rng.normal(size=(time, batch, 4 * hidden)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(hidden, 4 * hidden)) / np.sqrt(hidden), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(4 * hidden,)) * 0.1, jnp.float32)
    carry = (jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))
    weights = jnp.asarray(rng.normal(size=(time, batch, hidden)), jnp.float32)

    def autodiff_scan(x, w, b):
        from charlm_jax.model.lstm import lstm_cell

        def step(c, x_t):
            new, _ = lstm_cell(c, x_t, w, b, "sigmoid", "bfloat16")
            return new, new[1]

        return jax.lax.scan(step, carry, x)[1]

    def objective(scan):
        return lambda x, w, b: jnp.sum(scan(x, w, b) * weights)

    custom = jax.grad(
        objective(lambda x, w, b: lstm_scan(x, w, b, carry, None, 1, "sigmoid", "bfloat16")[1]), argnums=(0, 1, 2)
    )(gate_inputs, kernel, bias)
    reference = jax.grad(objective(autodiff_scan), argnums=(0, 1, 2))(gate_inputs, kernel, bias)
    exact32 = jax.grad(objective(lambda x, w, b: lstm_scan(x, w, b, carry, None, 1, "sigmoid")[1]), argnums=(0, 1, 2))(
        gate_inputs, kernel, bias
    )
    for mine, theirs, f32 in zip(custom, reference, exact32):
        mine, theirs, f32 = (np.asarray(a, np.float64) for a in (mine, theirs, f32))
        scale = np.linalg.norm(f32)
        assert np.linalg.norm(mine - theirs) <= 0.02 * scale
        assert np.linalg.norm(mine - f32) <= 0.05 * scale


@pytest.mark.parametrize("temperature", [0.5, 1.2])
def test_sampler_draws_from_the_bfloat16_models_own_distribution(temperature):
    """The first character after a prompt, drawn 20,000 times from a bfloat16 model, follows
    softmax(logits / T) of that model's (float32) logits."""
    config, _, bf16 = models()
    params = init_params(jax.random.key(5), bf16, config.maxlen)
    # Larger logits than an untrained model's, so the temperature matters.
    params = jax.tree.map(lambda p: p * 3.0, params)
    prompt = np.array([[1, 4, 2, 7, 3]], np.int32)
    _, logits = bf16.apply({"params": params}, jnp.asarray(prompt), bf16.zero_carries(1), last_only=True)
    options = GenerationOptions(length=1, temperatures=(temperature,) * 20_000, mode="stateful")
    draws = np.asarray(
        generate_ids(
            params,
            jax.random.key(9),
            jnp.asarray(np.tile(prompt, (20_000, 1))),
            options,
            model=bf16,
            maxlen=config.maxlen,
        )
    )[:, 0]
    counts = np.bincount(draws, minlength=VOCAB)
    expected = softmax64(np.asarray(logits[0], np.float64), temperature)
    assert chi_square_p_value(counts, expected) > ALPHA
    assert chi_square_p_value(counts, softmax64(np.asarray(logits[0], np.float64), 1.0)) < 1e-6  # power


def test_an_unknown_compute_dtype_is_refused_in_one_line():
    with pytest.raises(CharLMError, match="compute_dtype must be one of"):
        TrainConfig(compute_dtype="float16")


def test_a_model_scores_and_generates_in_either_dtype(trained_run, tiny_text):
    """Checkpoints hold float32 weights: a float32 run read in bfloat16 scores within 1 % and generates."""
    import charlm_jax

    lm = charlm_jax.load(trained_run[0])
    bf16 = charlm_jax.with_compute_dtype(lm, "bfloat16")
    assert bf16.model.compute_dtype == "bfloat16" and lm.model.compute_dtype == "float32"
    bits32 = charlm_jax.bits_per_char(lm, tiny_text, mode="stateful")
    bits16 = charlm_jax.bits_per_char(bf16, tiny_text, mode="stateful")
    assert bits16 != bits32 and abs(bits16 - bits32) < 0.01 * bits32
    assert len(charlm_jax.generate(bf16, "the ", length=30, temperatures=(0.5,), seed=0)[0]) == 30
    with pytest.raises(CharLMError, match="compute_dtype must be one of"):
        charlm_jax.with_compute_dtype(lm, "float16")


@pytest.mark.slow  # two runs compiled in both dtypes
def test_a_bfloat16_run_resumes_in_float32(tmp_path, tiny_text):
    """The dtype may change on --resume (weights and optimizer state are float32 either way)."""
    from charlm_jax.train.loop import fit
    from charlm_jax.train.run import Limits

    from helpers import QUIET, tiny_config

    out = tmp_path / "run"
    first = fit(
        tiny_config(compute_dtype="bfloat16", epochs=2),
        tiny_text,
        out,
        console=QUIET,
        limits=Limits(max_steps=3),
    )
    assert first.history[-1]["step"] == 3
    resumed = fit(tiny_config(compute_dtype="float32", epochs=2), tiny_text, out, resume=True, console=QUIET)
    assert resumed.history[-1]["epoch"] == 2
