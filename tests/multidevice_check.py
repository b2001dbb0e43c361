"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4 (see test_distributed.py).

Prints one JSON line of comparisons between 1 and 4 devices.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from charlm_jax.data.windows import Vocab, split_windows
from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import build_model
from charlm_jax.runtime.distributed import block_sharding, make_mesh, put_windows, replicated, shard_rows
from charlm_jax.settings.config import TrainConfig
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train.loop import Limits, fit
from charlm_jax.train.run_dir import zero_carries
from charlm_jax.train.steps import compiled_train_block, create_train_state
from charlm_jax.use.decode import generate_ids

text = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 12
out_dir = sys.argv[1]
assert jax.device_count() == 4, jax.devices()
config = TrainConfig(maxlen=12, step=2, hidden_size=16, batch_size=16, epochs=1, sample_length=0, dropout=0.1)
vocab = Vocab.from_text(text)
split = split_windows(len(text), config.maxlen, config.step, 0.1)
model = build_model(config, vocab.size)


def loss_trajectory(mesh, steps=12):
    state = jax.device_put(create_train_state(jax.random.key(0), config, vocab.size), replicated(mesh))
    corpus = vocab.encode(text)
    carries = zero_carries(config, mesh)
    losses, carry_specs = [], set()
    for i in range(0, steps, 4):  # blocks of 4 steps, as the loop below runs them (one compile for both)
        starts = np.stack(
            [split.train_starts[(np.arange(16) * 7 + j * 16) % len(split.train_starts)] for j in range(i, i + 4)]
        )  # (4, 16)
        windows = put_windows(corpus, starts, config.maxlen + 1, block_sharding(mesh))
        (state, carries), metrics = compiled_train_block(mesh)(
            state,
            carries,
            windows,
            jax.random.key(1),
            model=model,
            maxlen=config.maxlen,
            objective=config.objective,
            carry_over=False,
        )
        losses.extend(float(loss) for loss in np.asarray(metrics["loss"]))
        carry_specs |= {str(leaf.sharding.spec) for leaf in jax.tree.leaves(carries)}
    shardings = {str(leaf.sharding.spec) for leaf in jax.tree.leaves((state.params, state.opt_state))}
    return losses, state.params, shardings, carry_specs, compiled_train_block(mesh).jitted._cache_size()


one, params_one, *_ = loss_trajectory(make_mesh(jax.devices()[:1]))
four, params_four, shardings, carry_specs, compiled_blocks = loss_trajectory(make_mesh())
param_diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_four))
)

# Sharded generation: 8 rows over 4 devices equals the same call on one device.
temps = np.array([0.0, 0.2, 0.5, 1.0, 1.2, 1.0, 0.7, 2.0], np.float32)
prompts = np.tile(vocab.encode("the quick")[None], (8, 1))
kwargs = dict(model=model, maxlen=config.maxlen)
stateful, window = (
    GenerationOptions(length=40, temperatures=temps),
    GenerationOptions(length=40, temperatures=temps, mode="window"),
)
params_one = jax.device_get(params_one)
plain = generate_ids(params_one, jax.random.key(3), jnp.asarray(prompts), stateful, **kwargs)
mesh = make_mesh()
sharded_prompts, sharded_temps = shard_rows(mesh, prompts, temps)
sharded_params = jax.device_put(params_one, replicated(mesh))
sharded = generate_ids(sharded_params, jax.random.key(3), sharded_prompts, stateful.with_rows(sharded_temps), **kwargs)
plain_w = generate_ids(params_one, jax.random.key(4), jnp.asarray(prompts), window, **kwargs)
sharded_w = generate_ids(sharded_params, jax.random.key(4), sharded_prompts, window.with_rows(sharded_temps), **kwargs)

# A global batch that does not divide over 4 devices is refused with a clear error.
try:
    fit(
        TrainConfig(maxlen=12, hidden_size=16, batch_size=18, epochs=1, sample_length=0),
        text,
        out_dir + "/bad",
        console=Console(quiet=True),
        mesh=make_mesh(),  # all 4 devices named: fit's own default would pick the devices the batch divides over
    )
    bad_batch_error = None
except CharLMError as error:
    bad_batch_error = str(error)

# The whole loop on 4 devices (with per-epoch samples split over them) and on 1 device.
loop_config = TrainConfig(
    maxlen=12, step=2, hidden_size=16, batch_size=16, epochs=2, sample_length=10, steps_per_call=4, dropout=0.1
)
fits = {
    n: fit(loop_config, text, f"{out_dir}/run{n}", console=Console(quiet=True), mesh=make_mesh(jax.devices()[:n]))
    for n in (1, 4)
}

# Consecutive streams: their carries split over the 4 devices like the rows, and restored so on resume.
stream_config = TrainConfig(
    maxlen=12,
    hidden_size=16,
    batch_size=8,
    epochs=3,
    sample_length=0,
    steps_per_call=2,
    batching="streams",
    objective="dense",
    dropout=0.1,
    locked_dropout=True,
    weight_dropout=0.1,
)
stream_fits = {
    n: fit(stream_config, text, f"{out_dir}/streams{n}", console=Console(quiet=True), mesh=make_mesh(jax.devices()[:n]))
    for n in (1, 4)
}
fit(
    stream_config,
    text,
    f"{out_dir}/streams-split",
    console=Console(quiet=True),
    limits=Limits(max_steps=9),
    mesh=make_mesh(),
)  # inside the second epoch: the carries are restored, not zero
resumed = fit(
    stream_config, text, f"{out_dir}/streams-split", console=Console(quiet=True), resume=True, mesh=make_mesh()
)
# With no mesh named, fit trains a batch of 8 on one device (at least 16 rows per CPU device, as the CLI).
default_devices = len(
    jax.tree.leaves(fit(stream_config, text, f"{out_dir}/streams-default", console=Console(quiet=True)).state.params)[
        0
    ].sharding.device_set
)
stream_params_diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(
        jax.tree.leaves(jax.device_get(resumed.state.params)),
        jax.tree.leaves(jax.device_get(stream_fits[4].state.params)),
    )
)

print(
    json.dumps(
        {
            "losses_one": one,
            "losses_four": four,
            "param_max_abs_diff": param_diff,
            "param_shardings": sorted(shardings),
            "carry_shardings": sorted(carry_specs),
            "compiled_blocks": compiled_blocks,
            "sharded_output_spec": str(sharded.sharding.spec),
            "generation": {"plain": np.asarray(plain).tolist(), "sharded": np.asarray(sharded).tolist()},
            "window_generation": {"plain": np.asarray(plain_w).tolist(), "sharded": np.asarray(sharded_w).tolist()},
            "bad_batch_error": bad_batch_error,
            "fit_devices": len(jax.devices()),
            "fit_records": {
                n: [
                    {k: r[k] for k in ("step", "train_loss", "val_bits_per_char", "grad_norm_max")}
                    for r in result.history
                ]
                for n, result in fits.items()
            },
            "stream_records": {
                n: [{k: r[k] for k in ("step", "train_loss", "val_bits_per_char")} for r in result.history]
                for n, result in stream_fits.items()
            },
            "stream_resumed_params_diff": stream_params_diff,
            "default_mesh_devices_batch_8": default_devices,
        }
    )
)
