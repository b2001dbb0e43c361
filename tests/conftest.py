"""Session fixtures: the tiny text and one short trained run (helpers live in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

# JAX's persistent compilation cache, set before JAX is imported so that every process the tests start
# (the CLI under test, the 4-device check) inherits it: the same tiny model compiled once, not once
# per process. Kept between runs in .jax-cache/ (git ignores it) unless CHARLM_JAX_TEST_CACHE names
# another directory ("" turns it off). Cache keys include JAX's version and the device set.
_cache = os.environ.get("CHARLM_JAX_TEST_CACHE", str(Path(__file__).resolve().parent.parent / ".jax-cache"))
if _cache:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from helpers import QUIET, TINY_TEXT, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_text):
    """A two-epoch run on the tiny text; tests read it, none writes to it."""
    from charlm_jax.loop import fit

    out = tmp_path_factory.mktemp("run")
    result = fit(tiny_config(epochs=2), tiny_text, out, console=QUIET)
    return out, result
