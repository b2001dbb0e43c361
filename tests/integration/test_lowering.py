"""The compiled computations lower for GPU and TPU, from this CPU-only machine (``jax.export``).

Lowering proves that no operation without a CUDA or TPU lowering (a CPU-only custom call, a host
callback) has crept into the training block, the evaluation step or whole-sample generation, in either
compute dtype and in the variants that change which operations run (streams that carry their state,
dropout and DropConnect, the dense objective, both samplers with every filter). What it does not prove
— speed, memory, fusion on the device — is in docs/benchmarks.md with the command to run there.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import export

from charlm_jax.model.charlstm import build_model
from charlm_jax.settings.config import COMPUTE_DTYPES, TrainConfig
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train import steps as train
from charlm_jax.use import decode

PLATFORMS = ("cuda", "tpu")
VOCAB = 13
BATCH = 8
# Custom calls a lowered module may hold on every platform (sharding annotations); anything else
# would be a platform-specific kernel and is named by the failing test.
PORTABLE_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}

VARIANTS = {
    "book": {},
    "streams": {"objective": "dense", "batching": "streams", "num_layers": 2},
    "regularised": {"objective": "dense", "dropout": 0.3, "locked_dropout": True, "weight_dropout": 0.3},
}
SLOW = pytest.mark.slow  # the default run lowers one variant of each computation per dtype; CI lowers all


def cases(names, default: str):
    """``names`` as parameters, all but ``default`` in the slow set."""
    return [pytest.param(name, marks=() if name == default else SLOW) for name in names]


def config_of(variant: str, compute_dtype: str) -> TrainConfig:
    return TrainConfig(hidden_size=16, maxlen=10, batch_size=BATCH, compute_dtype=compute_dtype, **VARIANTS[variant])


def custom_calls(exported) -> set[str]:
    text = exported.mlir_module()
    return {part.split("(")[0].strip('"@ ') for part in text.split("stablehlo.custom_call")[1:]}


def lowered(fn, *args, **kwargs):
    exported = export.export(fn, platforms=PLATFORMS)(*args, **kwargs)
    assert tuple(exported.platforms) == PLATFORMS
    unexpected = custom_calls(exported) - PORTABLE_CUSTOM_CALLS
    assert not unexpected, f"platform-specific custom calls: {unexpected}"
    return exported


@pytest.mark.parametrize("compute_dtype", COMPUTE_DTYPES)
@pytest.mark.parametrize("variant", cases(VARIANTS, "streams"))
def test_the_training_block_lowers_for_gpu_and_tpu(variant, compute_dtype):
    config = config_of(variant, compute_dtype)
    state = train.create_train_state(jax.random.key(0), config, VOCAB)
    model = build_model(config, VOCAB)
    block = jnp.zeros((3, BATCH, config.maxlen + 1), jnp.int32)  # (steps, batch, maxlen + 1)
    carry_over = config.batching == "streams"
    jitted = jax.jit(train._positional_block, static_argnums=(4, 5, 6, 7))
    lowered(
        jitted,
        state,
        model.zero_carries(BATCH),
        block,
        jax.random.key(1),
        model,
        config.maxlen,
        config.objective,
        carry_over,
    )


@pytest.mark.parametrize("compute_dtype", COMPUTE_DTYPES)
def test_the_eval_step_lowers_for_gpu_and_tpu(compute_dtype):
    config = config_of("streams", compute_dtype)
    params = train.create_train_state(jax.random.key(0), config, VOCAB).params
    model = build_model(config, VOCAB)
    windows = jnp.zeros((BATCH, config.maxlen + 1), jnp.int32)
    lowered(train.eval_step, params, windows, jnp.ones(BATCH), model=model, maxlen=config.maxlen)


GENERATION = {
    "stateful": GenerationOptions(length=32, temperatures=(0.2, 0.5, 1.0, 1.2)),
    "window, filtered": GenerationOptions(
        length=32, temperatures=(0.5, 1.0), mode="window", top_k=5, top_p=0.9, min_p=0.05
    ),
    "gumbel, repetition controls": GenerationOptions(
        length=32, temperatures=(0.7,), sampler="gumbel", repetition_penalty=1.3, no_repeat_ngram=3
    ),
}


@pytest.mark.parametrize("compute_dtype", COMPUTE_DTYPES)
@pytest.mark.parametrize("name", cases(GENERATION, "window, filtered"))
def test_whole_sample_generation_lowers_for_gpu_and_tpu(name, compute_dtype):
    config = config_of("streams", compute_dtype)
    params = train.create_train_state(jax.random.key(0), config, VOCAB).params
    model = build_model(config, VOCAB)
    options = GENERATION[name]
    rows = options.temperatures.shape[0]
    prompt = jnp.zeros((rows, 5), jnp.int32)
    lowered(decode.generate_ids, params, jax.random.key(2), prompt, options, model=model, maxlen=config.maxlen)


def test_a_bfloat16_module_really_holds_bfloat16_products():
    """The lowering tests above see the bfloat16 path, not a float32 one under another name."""
    config = config_of("book", "bfloat16")
    params = train.create_train_state(jax.random.key(0), config, VOCAB).params
    model = build_model(config, VOCAB)
    windows = jnp.zeros((BATCH, config.maxlen + 1), jnp.int32)
    text = lowered(train.eval_step, params, windows, jnp.ones(BATCH), model=model, maxlen=config.maxlen).mlir_module()
    assert "bf16" in text
    f32 = dataclasses.replace(config, compute_dtype="float32")
    text32 = lowered(
        train.eval_step, params, windows, jnp.ones(BATCH), model=build_model(f32, VOCAB), maxlen=config.maxlen
    ).mlir_module()
    assert "bf16" not in text32
