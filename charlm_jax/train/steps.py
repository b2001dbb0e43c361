"""Pure training pieces: a run's keys, the optimizer, the state, the loss, one train step, one eval step.

Nothing here reads files or prints; ``loop.py`` drives these functions. One step serves both
batchings (the book's windows are streams whose carries are zero at every step); a block of steps
and the eval step are jit-compiled once per process and shape, with the state donated, so the
optimizer update happens in place on the device and a second run of the same shapes compiles nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import CharLSTM, build_model, init_params
from charlm_jax.model.scoring import window_nll
from charlm_jax.runtime.seeds import seed_key
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.averaging import average_weights

TrainState = train_state.TrainState


@dataclass(frozen=True)
class RunKeys:
    """Independent PRNG streams of a run, all derived from its seed."""

    init: jax.Array
    shuffle: jax.Array
    dropout: jax.Array
    sample: jax.Array

    @classmethod
    def from_seed(cls, seed: int) -> RunKeys:
        return cls(*jax.random.split(seed_key(seed), 4))

    def epoch_key(self, epoch: int) -> jax.Array:
        """The key that orders epoch ``epoch``'s batches (1-based)."""
        return jax.random.fold_in(self.shuffle, epoch - 1)

    def sample_keys(self, epoch: int) -> tuple[jax.Array, jax.Array]:
        """(prompt key, generation key) of an epoch's samples; epoch 1's prompt is also the saved default."""
        prompt_key, generation_key = jax.random.split(jax.random.fold_in(self.sample, epoch))
        return prompt_key, generation_key


@dataclass(frozen=True)
class Anneal:
    """A run rewound at step ``at_step`` to its best weights, those of ``from_step``: from then on the rate falls
    from the schedule's rate at ``from_step`` (times the config's ``anneal_start``) to its final rate over ``steps``
    steps (a cosine), so the rest of a time budget lowers the rate from the best point instead of training on past
    it (``train.past_best``)."""

    at_step: int
    from_step: int
    steps: int

    @property
    def end_step(self) -> int:
        return self.at_step + self.steps


def learning_rate_schedule(
    config: TrainConfig | OptimizerSettings, total_steps: int | None = None, anneal: Anneal | None = None
) -> optax.Schedule:
    """The learning rate at each optimizer step (optax schedules, so it is traced into the step).

    ``total_steps`` is the run's planned length (epochs x steps per epoch); cosine decay ends
    there at ``lr_final_fraction * learning_rate``, and a warm-up never outlasts it. With
    ``constant`` and no warm-up this is the book's fixed 0.01.
    """
    peak = config.learning_rate
    if config.lr_schedule == "cosine" and total_steps is None:
        raise CharLMError(
            "lr_schedule='cosine' needs the run's total_steps (epochs x steps per epoch): "
            "pass total_steps to make_optimizer / create_train_state"
        )
    warmup = config.warmup_steps if total_steps is None else min(config.warmup_steps, max(total_steps - 1, 0))
    if config.lr_schedule == "cosine":
        planned = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(int(total_steps or 0), warmup + 1),
            end_value=peak * config.lr_final_fraction,
        )
        if anneal is None:
            return planned
        start = float(planned(anneal.from_step)) * config.anneal_start
        final = peak * config.lr_final_fraction
        falling = optax.cosine_decay_schedule(start, max(anneal.steps, 1), alpha=min(final / max(start, 1e-30), 1.0))
        return optax.join_schedules([planned, falling], [anneal.at_step])
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])


@dataclass(frozen=True)
class OptimizerSettings:
    """The TrainConfig fields the optimizer reads, and nothing else: hashable, so equal settings share one
    optimizer object (and one compiled block). ``build_optimizer`` reads only these, so a field it needs
    and this type lacks is an AttributeError, never a silent default."""

    learning_rate: float
    lr_schedule: str
    warmup_steps: int
    lr_final_fraction: float
    clip_norm: float | None
    weight_decay: float
    rmsprop_decay: float
    rmsprop_eps: float
    rmsprop_eps_in_sqrt: bool
    max_nonfinite_in_row: int
    average_decay: float
    anneal_start: float

    @classmethod
    def of(cls, config: TrainConfig) -> OptimizerSettings:
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


def make_optimizer(
    config: TrainConfig, total_steps: int | None = None, anneal: Anneal | None = None
) -> optax.GradientTransformation:
    """The run's optimizer; one object per setting and length (see ``build_optimizer``).

    The train state holds its optimizer as static data, part of what the compiled block is keyed on:
    two runs with equal settings get the same object, so the second compiles nothing.
    """
    if config.lr_schedule == "constant" and config.warmup_steps == 0:
        total_steps = None  # the book's fixed rate does not depend on the run's length
    return build_optimizer(OptimizerSettings.of(config), total_steps, anneal)


@functools.cache
def build_optimizer(
    config: OptimizerSettings, total_steps: int | None = None, anneal: Anneal | None = None
) -> optax.GradientTransformation:
    """RMSprop with Keras 3's constants, optionally behind global-norm clipping, on a schedule.

    Keras 3: ``v = rho * v + (1 - rho) * g**2``; ``w -= lr * g / sqrt(v + epsilon)`` with
    rho = 0.9, epsilon = 1e-7 inside the square root. optax.rmsprop's default eps is 1e-8,
    so the Keras value is passed explicitly; ``eps_in_sqrt=True`` matches Keras 3's placement
    (Keras 2: ``w -= lr * g / (sqrt(v) + epsilon)``, ``rmsprop_eps_in_sqrt=False``).
    ``total_steps`` (the run's planned optimizer steps) is needed by the cosine schedule only, and so is
    ``anneal`` (a rewound run's fall to the final rate).
    """
    if config.lr_schedule == "constant" and config.warmup_steps == 0:
        # The book: a plain float, so its optimizer state holds no schedule counter.
        learning_rate = config.learning_rate
    else:
        learning_rate = learning_rate_schedule(config, total_steps, anneal)
    transforms = []
    if config.clip_norm is not None:
        transforms.append(optax.clip_by_global_norm(config.clip_norm))
    if config.weight_decay > 0:
        # Decoupled weight decay (as AdamW adds it to Adam): the step is RMSprop's direction plus
        # weight_decay * w, both scaled by the learning rate, so the decay follows the schedule.
        transforms += [
            optax.scale_by_rms(
                decay=config.rmsprop_decay, eps=config.rmsprop_eps, eps_in_sqrt=config.rmsprop_eps_in_sqrt
            ),
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_learning_rate(learning_rate),
        ]
    else:
        transforms.append(
            optax.rmsprop(
                learning_rate,
                decay=config.rmsprop_decay,
                eps=config.rmsprop_eps,
                eps_in_sqrt=config.rmsprop_eps_in_sqrt,
            )
        )
    if config.average_decay > 0:
        transforms.append(average_weights(config.average_decay))  # last: it reads the final updates
    optimizer = optax.chain(*transforms) if len(transforms) > 1 else transforms[0]
    if config.max_nonfinite_in_row > 0:
        # Never let a NaN/inf gradient reach the parameters or RMSprop's statistics. optax gives
        # up and applies the update after max_consecutive_errors; the loop stops long before that.
        optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=NEVER_GIVE_UP)
    return optimizer


NEVER_GIVE_UP = 2**30


def create_train_state(
    key: jax.Array, config: TrainConfig, vocab_size: int, total_steps: int | None = None
) -> TrainState:
    """Initial params and optimizer state; ``total_steps`` sets the cosine schedule's length."""
    model = build_model(config, vocab_size)
    params = init_params(key, model, config.maxlen)
    # No apply_fn: the model is a static argument of the compiled block, and a bound method (compared by
    # the identity of its module) in the state would give every run's state its own compile cache entry.
    state = TrainState.create(apply_fn=None, params=params, tx=make_optimizer(config, total_steps))
    # TrainState.create stores step as the Python int 0; an int32 array keeps the jitted
    # step's input types identical from the first call on (no second compilation).
    return state.replace(step=jnp.zeros((), jnp.int32))


def loss_fn(
    params, windows: jax.Array, carries, dropout_key: jax.Array, *, model: CharLSTM, maxlen: int, objective: str
) -> tuple[jax.Array, Any]:
    """Mean cross-entropy (nats) of a batch of windows, (batch, maxlen + 1) ids each, read from ``carries``.

    A window's first ``maxlen`` ids are the input; the book's target is its last id, the dense
    objective's targets are its ids shifted by one. Returns the loss and the carries after the
    window (what a stream's next batch starts from). ``carries`` are inputs, not parameters: no
    gradient flows into them (truncated BPTT).
    """
    inputs = windows[:, :maxlen]
    last_only = objective == "next_char"
    new_carries, logits = model.apply(
        {"params": params}, inputs, carries, last_only=last_only, deterministic=False, rngs={"dropout": dropout_key}
    )
    targets = windows[:, maxlen] if last_only else windows[:, 1:]  # (batch,) or (batch, maxlen)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), new_carries


def train_step(
    state: TrainState,
    carries,
    windows: jax.Array,
    dropout_key: jax.Array,
    *,
    model: CharLSTM,
    maxlen: int,
    objective: str,
    carry_over: bool,
) -> tuple[TrainState, Any, dict[str, jax.Array]]:
    """One optimizer update on a batch, (batch, maxlen + 1) windows, from ``carries``.

    The one step of both batchings. Consecutive streams (``carry_over``) start from the carries the
    previous batch left and pass theirs on; the book's windows are streams whose carries are zero
    at every step and never passed on. A refused (non-finite) step leaves the parameters alone; a
    stream's carry restarts from zero where it stopped being finite.
    """
    if not carry_over:
        carries = jax.tree.map(jnp.zeros_like, carries)  # a constant: XLA folds it, as for a fresh window
    step_key = jax.random.fold_in(dropout_key, state.step)
    (loss, new_carries), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, windows, carries, step_key, model=model, maxlen=maxlen, objective=objective
    )
    new_state, metrics = apply_update(state, loss, grads)
    if carry_over:
        carries = jax.tree.map(lambda c: jnp.where(jnp.isfinite(c), c, 0.0), new_carries)
    return new_state, carries, metrics


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
            opt_state=jax.tree.map(
                lambda new, old: jnp.where(params_finite, new, old), new_state.opt_state, state.opt_state
            ),
        )
        skipped = ~(new_state.opt_state.last_finite & params_finite)
    else:
        skipped = ~(jnp.isfinite(grad_norm) & jnp.isfinite(loss))  # reported only: no guard
    return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": skipped}


def _train_block(
    state: TrainState,
    carries,
    block_windows: jax.Array,
    dropout_key: jax.Array,
    *,
    model: CharLSTM,
    maxlen: int,
    objective: str,
    carry_over: bool,
) -> tuple[tuple[TrainState, Any], dict[str, jax.Array]]:
    """``train_step`` over a block of batches, (steps, batch, maxlen + 1) windows, in one ``lax.scan``.

    One call per block instead of one per batch: Python, the host sync for the metrics and
    the runtime's allocation of the step's temporary buffers happen once per block. Each
    step is exactly ``train_step`` (same dropout key per step, same guard), so the block size
    changes speed, not results. Returns ((state, carries), metrics stacked (steps,) each).
    """

    def one_step(state_and_carries, windows):
        state, carries = state_and_carries
        state, carries, metrics = train_step(
            state, carries, windows, dropout_key, model=model, maxlen=maxlen, objective=objective, carry_over=carry_over
        )
        return (state, carries), metrics

    return jax.lax.scan(one_step, (state, carries), block_windows)


def _eval_step(
    params, windows: jax.Array, weights: jax.Array, *, model: CharLSTM, maxlen: int
) -> tuple[jax.Array, jax.Array]:
    """Summed next-character NLL (nats) and count over weighted windows.

    Always the book's objective (each character predicted from the ``maxlen``
    before it, from a zero state), whatever the training objective, so every
    run's validation bits per character compare directly.
    """
    nll = window_nll(params, windows, model=model, maxlen=maxlen)  # (batch,)
    return jnp.sum(nll * weights), jnp.sum(weights)


@functools.cache
def compiled_train_block(mesh=None) -> Callable:
    """``train_block`` jitted for ``mesh``: one compiled function per process and mesh, as generation's
    scans are, so every run (the CLI's, a script's, a test's) with the same model and shapes shares one
    cache entry. The state is replicated, the carries and each step's batch split along the mesh's
    ``data`` axis, in and out (fixed here, so a block's output is a valid input of the next without a
    second compile); the state and the carries are donated. ``mesh=None``: placement follows the inputs.
    """
    static = (4, 5, 6, 7)  # model, maxlen, objective, carry_over: positional, as jit's shardings require
    if mesh is None:
        jitted = jax.jit(_positional_block, static_argnums=static, donate_argnums=(0, 1))
    else:
        from charlm_jax.runtime.distributed import batch_sharding, block_sharding, replicated

        repl, rows = replicated(mesh), batch_sharding(mesh)
        jitted = jax.jit(
            _positional_block,
            static_argnums=static,
            donate_argnums=(0, 1),
            in_shardings=(repl, rows, block_sharding(mesh), repl),
            out_shardings=((repl, rows), repl),
        )

    @functools.wraps(_train_block)
    def block(state, carries, block_windows, dropout_key, *, model, maxlen, objective, carry_over):
        return jitted(state, carries, block_windows, dropout_key, model, maxlen, objective, carry_over)

    block.jitted = jitted  # type: ignore[attr-defined]  # the jit itself: what a caller counts compilations of
    return block


def _positional_block(state, carries, block_windows, dropout_key, model, maxlen, objective, carry_over):
    return _train_block(
        state,
        carries,
        block_windows,
        dropout_key,
        model=model,
        maxlen=maxlen,
        objective=objective,
        carry_over=carry_over,
    )


# train_block(state, carries, block_windows (steps, batch, maxlen + 1), dropout_key, *, model, maxlen, objective,
#             carry_over) -> ((state, carries), metrics (steps,) each), placed as its inputs are.
train_block = compiled_train_block()
# eval_step(params, windows (batch, maxlen + 1), weights (batch,), *, model, maxlen) -> (nll sum, count)
eval_step = jax.jit(_eval_step, static_argnames=("model", "maxlen"))


def train_state_items(state: TrainState) -> dict[str, Any]:
    """The parts of the state a checkpoint needs besides params."""
    return {"step": state.step, "opt_state": state.opt_state}
