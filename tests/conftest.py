"""Session fixtures: the tiny text and one short trained run (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from helpers import QUIET, TINY_TEXT, tiny_config


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_text):
    """A two-epoch run on the tiny text; tests read it, none writes to it."""
    from charlm_jax.loop import fit

    out = tmp_path_factory.mktemp("run")
    result = fit(tiny_config(epochs=2), tiny_text, out, console=QUIET, show_progress=False)
    return out, result
