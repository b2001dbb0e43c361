"""Helpers shared by the tests: a tiny text and config, a quiet console, tree comparison."""

from __future__ import annotations

import jax
import numpy as np
from rich.console import Console

from charlm_jax.settings.config import TrainConfig

TINY_TEXT = (
    "the quick brown fox jumps over the lazy dog. a stitch in time saves nine. all that glitters is not gold. "
) * 12

QUIET = Console(quiet=True)
# tiny_config's shape as `charlm-jax train` flags, for the tests that run the CLI.
TINY_CLI_FLAGS = ["--maxlen", "12", "--step", "2", "--hidden-size", "16", "--batch-size", "16"]


def tiny_config(**overrides) -> TrainConfig:
    """The tests' model. steps_per_call (speed only) holds a whole tiny epoch in one block: each shape is one
    train program to compile, not a full block and the epoch's short tail."""
    values = dict(
        maxlen=12,
        step=2,
        hidden_size=16,
        batch_size=16,
        epochs=1,
        sample_length=20,
        val_fraction=0.1,
        steps_per_call=64,
    )
    values.update(overrides)
    return TrainConfig(**values)


def float64_mode():
    """JAX's float64 mode as a context (``jax.enable_x64``, in every JAX pyproject.toml admits)."""
    return jax.enable_x64(True)


def assert_trees_equal(a, b) -> None:
    """Bit-for-bit equality of two pytrees of arrays."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def assert_trees_close(a, b, rtol: float, atol: float) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


def train_windows(state, block_windows, key, config, model):
    """The loop's jitted block on the book's windows, (steps, batch, maxlen + 1): (state, metrics)."""
    from charlm_jax.train.steps import train_block

    carries = model.zero_carries(np.shape(block_windows)[1])
    (state, _), metrics = train_block(
        state,
        carries,
        block_windows,
        key,
        model=model,
        maxlen=config.maxlen,
        objective=config.objective,
        carry_over=False,
    )
    return state, metrics


class TickingClock:
    """A clock that advances ``tick`` seconds each time it is read: a block of steps 'takes' one tick, and a run's
    timing is the same on any machine."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now
