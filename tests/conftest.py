"""Shared tiny fixtures: a small text, a tiny config, one short trained run."""

from __future__ import annotations

import pytest

from charlm_jax.config import TrainConfig

TINY_TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a stitch in time saves nine. all that glitters is not gold. "
) * 12


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return TINY_TEXT


def tiny_config(**overrides) -> TrainConfig:
    values = dict(maxlen=12, step=2, hidden_size=16, batch_size=16, epochs=1, sample_length=20,
                  val_fraction=0.1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_text):
    """A two-epoch run on the tiny text; tests read it, none writes to it."""
    from rich.console import Console

    from charlm_jax.loop import fit

    out = tmp_path_factory.mktemp("run")
    result = fit(tiny_config(epochs=2), tiny_text, out, console=Console(quiet=True), show_progress=False)
    return out, result
