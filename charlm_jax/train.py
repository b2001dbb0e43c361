"""Pure training pieces: the optimizer, the state, the loss, one train step, one eval step.

Nothing here reads files or prints; ``loop.py`` drives these functions. The
train step is jit-compiled once per run with the state donated, so the
optimizer update happens in place on the device.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from charlm_jax.config import TrainConfig
from charlm_jax.errors import CharLMError
from charlm_jax.model import CharLSTM, build_model, init_params
from charlm_jax.scoring import window_nll

TrainState = train_state.TrainState


def learning_rate_schedule(config: TrainConfig, total_steps: int | None = None) -> optax.Schedule:
    """The learning rate at each optimizer step (optax schedules, so it is traced into the step).

    ``total_steps`` is the run's planned length (epochs x steps per epoch); cosine decay ends
    there at ``lr_final_fraction * learning_rate``, and a warm-up never outlasts it. With
    ``constant`` and no warm-up this is the book's fixed 0.01.
    """
    peak = config.learning_rate
    if config.lr_schedule == "cosine" and total_steps is None:
        raise CharLMError("lr_schedule='cosine' needs the run's total_steps (epochs x steps per epoch): "
                          "pass total_steps to make_optimizer / create_train_state")
    warmup = config.warmup_steps if total_steps is None else min(config.warmup_steps, max(total_steps - 1, 0))
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=peak * config.lr_final_fraction)
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                [warmup])


def make_optimizer(config: TrainConfig, total_steps: int | None = None) -> optax.GradientTransformation:
    """RMSprop with Keras 3's constants, optionally behind global-norm clipping, on a schedule.

    Keras 3: ``v = rho * v + (1 - rho) * g**2``; ``w -= lr * g / sqrt(v + epsilon)`` with
    rho = 0.9, epsilon = 1e-7 inside the square root. optax.rmsprop's default eps is 1e-8,
    so the Keras value is passed explicitly; ``eps_in_sqrt=True`` matches Keras 3's placement
    (Keras 2: ``w -= lr * g / (sqrt(v) + epsilon)``, ``rmsprop_eps_in_sqrt=False``).
    ``total_steps`` (the run's planned optimizer steps) is needed by the cosine schedule only.
    """
    if config.lr_schedule == "constant" and config.warmup_steps == 0:
        # The book: a plain float, so its optimizer state has no schedule counter and
        # checkpoints written before schedules existed still restore.
        learning_rate = config.learning_rate
    else:
        learning_rate = learning_rate_schedule(config, total_steps)
    transforms = []
    if config.clip_norm is not None:
        transforms.append(optax.clip_by_global_norm(config.clip_norm))
    if config.weight_decay > 0:
        # Decoupled weight decay (as AdamW adds it to Adam): the step is RMSprop's direction plus
        # weight_decay * w, both scaled by the learning rate, so the decay follows the schedule.
        transforms += [optax.scale_by_rms(decay=config.rmsprop_decay, eps=config.rmsprop_eps,
                                          eps_in_sqrt=config.rmsprop_eps_in_sqrt),
                       optax.add_decayed_weights(config.weight_decay),
                       optax.scale_by_learning_rate(learning_rate)]
    else:
        transforms.append(optax.rmsprop(learning_rate, decay=config.rmsprop_decay,
                                        eps=config.rmsprop_eps, eps_in_sqrt=config.rmsprop_eps_in_sqrt))
    optimizer = optax.chain(*transforms) if len(transforms) > 1 else transforms[0]
    if config.max_nonfinite_in_row > 0:
        # Never let a NaN/inf gradient reach the parameters or RMSprop's statistics. optax gives
        # up and applies the update after max_consecutive_errors; the loop stops long before that.
        optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=NEVER_GIVE_UP)
    return optimizer


NEVER_GIVE_UP = 2**30


def create_train_state(key: jax.Array, config: TrainConfig, vocab_size: int,
                       total_steps: int | None = None) -> TrainState:
    """Initial params and optimizer state; ``total_steps`` sets the cosine schedule's length."""
    model = build_model(config, vocab_size)
    params = init_params(key, model, config.maxlen)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config, total_steps))
    # TrainState.create stores step as the Python int 0; an int32 array keeps the jitted
    # step's input types identical from the first call on (no second compilation).
    return state.replace(step=jnp.zeros((), jnp.int32))


def loss_fn(params, windows: jax.Array, dropout_key: jax.Array, *,
            model: CharLSTM, maxlen: int, objective: str, deterministic: bool = False) -> jax.Array:
    """Mean cross-entropy (nats) of a batch of windows, (batch, maxlen + 1) ids each.

    A window's first ``maxlen`` ids are the input; the book's target is its last id, the dense
    objective's targets are its ids shifted by one.
    """
    inputs = windows[:, :maxlen]
    last_only = objective == "next_char"
    _, logits = model.apply({"params": params}, inputs, last_only=last_only,
                            deterministic=deterministic, rngs={"dropout": dropout_key})
    targets = windows[:, maxlen] if last_only else windows[:, 1:]  # (batch,) or (batch, maxlen)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def train_step(state: TrainState, windows: jax.Array, dropout_key: jax.Array, *,
               model: CharLSTM, maxlen: int, objective: str) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a batch of windows, (batch, maxlen + 1)."""
    step_key = jax.random.fold_in(dropout_key, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, windows, step_key,
                                              model=model, maxlen=maxlen, objective=objective)
    return apply_update(state, loss, grads)


def apply_update(state: TrainState, loss: jax.Array, grads) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer update of one step, refused (parameters untouched) when it is not finite."""
    new_state = state.apply_gradients(grads=grads)
    grad_norm = optax.tree.norm(grads)
    if isinstance(new_state.opt_state, optax.ApplyIfFiniteState):
        # optax.apply_if_finite refused non-finite gradients; an update that overflows the
        # parameters from finite ones (an absurd learning rate) is refused here too.
        params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_state.params)]))
        new_state = new_state.replace(
            params=jax.tree.map(lambda new, old: jnp.where(params_finite, new, old), new_state.params, state.params),
            opt_state=jax.tree.map(lambda new, old: jnp.where(params_finite, new, old), new_state.opt_state,
                                   state.opt_state))
        skipped = ~(new_state.opt_state.last_finite & params_finite)
    else:
        skipped = ~(jnp.isfinite(grad_norm) & jnp.isfinite(loss))  # reported only: no guard
    return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": skipped}


def stream_loss_fn(params, windows: jax.Array, carries, dropout_key: jax.Array, *,
                   model: CharLSTM, maxlen: int) -> tuple[jax.Array, Any]:
    """Mean dense cross-entropy (nats) of the next ``maxlen`` characters of each stream, from ``carries``.

    ``windows`` (streams, maxlen + 1): inputs and targets shifted by one. The carries come from the
    stream's previous batch; the gradient stops at them (truncated BPTT). Returns the loss and the
    carries after the batch, for the next.
    """
    carries = jax.lax.stop_gradient(carries)
    new_carries, logits = model.apply({"params": params}, windows[:, :maxlen], carries, deterministic=False,
                                      rngs={"dropout": dropout_key})  # (streams, maxlen, vocab)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()
    return loss, new_carries


def train_stream_step(state: TrainState, carries, windows: jax.Array, dropout_key: jax.Array, *,
                      model: CharLSTM, maxlen: int) -> tuple[TrainState, Any, dict[str, jax.Array]]:
    """``train_step`` for consecutive streams: one update on their next characters, carries passed on.

    A refused (non-finite) step leaves the parameters alone; the streams' carries restart from zero
    where they stopped being finite.
    """
    step_key = jax.random.fold_in(dropout_key, state.step)
    (loss, new_carries), grads = jax.value_and_grad(stream_loss_fn, has_aux=True)(
        state.params, windows, carries, step_key, model=model, maxlen=maxlen)
    new_state, metrics = apply_update(state, loss, grads)
    new_carries = jax.tree.map(lambda c: jnp.where(jnp.isfinite(c), c, 0.0), new_carries)
    return new_state, new_carries, metrics


def train_block(state: TrainState, block_windows: jax.Array, dropout_key: jax.Array, *,
                model: CharLSTM, maxlen: int, objective: str) -> tuple[TrainState, dict[str, jax.Array]]:
    """``train_step`` over a block of batches, (steps, batch, maxlen + 1) windows, in one ``lax.scan``.

    One call per block instead of one per batch: Python, the host sync for the metrics and
    the runtime's allocation of the step's temporary buffers happen once per block. Each
    step is exactly ``train_step`` (same dropout key per step, same guard), so the block size
    changes speed, not results. Metrics come back stacked, (steps,) each.
    """

    def one_step(state, windows):
        return train_step(state, windows, dropout_key, model=model, maxlen=maxlen, objective=objective)

    return jax.lax.scan(one_step, state, block_windows)


def train_stream_block(state: TrainState, carries, block_windows: jax.Array, dropout_key: jax.Array, *,
                       model: CharLSTM, maxlen: int) -> tuple[tuple[TrainState, Any], dict[str, jax.Array]]:
    """``train_stream_step`` over a block, (steps, streams, maxlen + 1) windows, in one ``lax.scan``:
    returns ((state, carries), metrics stacked (steps,))."""

    def one_step(state_and_carries, windows):
        state, carries = state_and_carries
        state, carries, metrics = train_stream_step(state, carries, windows, dropout_key, model=model, maxlen=maxlen)
        return (state, carries), metrics

    return jax.lax.scan(one_step, (state, carries), block_windows)


def eval_step(params, windows: jax.Array, weights: jax.Array, *,
              model: CharLSTM, maxlen: int) -> tuple[jax.Array, jax.Array]:
    """Summed next-character NLL (nats) and count over weighted windows.

    Always the book's objective (each character predicted from the ``maxlen``
    before it, from a zero state), whatever the training objective, so every
    run's validation bits per character compare directly.
    """
    nll = window_nll(params, windows, model=model, maxlen=maxlen)  # (batch,)
    return jnp.sum(nll * weights), jnp.sum(weights)


class CompiledSteps(NamedTuple):
    """The jitted train block and eval step of one run (see ``compile_steps``)."""

    train_block: Callable
    eval_step: Callable
    train_streams: Callable | None = None  # train_stream_block, when config.batching == "streams"


def compile_steps(model: CharLSTM, config: TrainConfig, mesh=None) -> CompiledSteps:
    """jit the train block and the eval step once, state donated, batches sharded over ``mesh``.

    With a mesh, params and optimizer state are replicated and the batch axis (the second axis
    of a block of windows, the first of an evaluation batch) is split along the mesh's ``data`` axis.
    """
    train_fn = partial(train_block, model=model, maxlen=config.maxlen, objective=config.objective)
    eval_fn = partial(eval_step, model=model, maxlen=config.maxlen)
    streams_fn = partial(train_stream_block, model=model, maxlen=config.maxlen)
    streams = config.batching == "streams"
    if mesh is None:
        return CompiledSteps(jax.jit(train_fn, donate_argnums=0), jax.jit(eval_fn),
                             jax.jit(streams_fn, donate_argnums=(0, 1)) if streams else None)
    from charlm_jax.distributed import batch_sharding, block_sharding, replicated

    repl, data, block = replicated(mesh), batch_sharding(mesh), block_sharding(mesh)
    train_jit = jax.jit(train_fn, in_shardings=(repl, block, repl),
                        out_shardings=(repl, repl), donate_argnums=0)
    eval_jit = jax.jit(eval_fn, in_shardings=(repl, data, data), out_shardings=(repl, repl))
    # Streams are split over the devices like a batch's rows; their carries stay where their rows are.
    streams_jit = jax.jit(streams_fn, in_shardings=(repl, data, block, repl), out_shardings=((repl, data), repl),
                          donate_argnums=(0, 1)) if streams else None
    return CompiledSteps(train_jit, eval_jit, streams_jit)


def train_state_items(state: TrainState) -> dict[str, Any]:
    """The parts of the state a checkpoint needs besides params."""
    return {"step": state.step, "opt_state": state.opt_state}
