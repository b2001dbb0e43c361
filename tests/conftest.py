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
# The tests' models are tiny: compiling them costs far more than running them, and XLA's optimisation
# passes are most of the compile (measured: test_loop_options + test_train 97 s -> 64 s without them). JAX's
# own test suite switches them off the same way. Every bit-for-bit comparison here is between programs
# compiled alike; benchmarks, scripts and users run fully optimised code. CHARLM_JAX_TEST_OPTIMIZE=1 keeps
# the optimisations (the CI runs the slow set that way).
if os.environ.get("CHARLM_JAX_TEST_OPTIMIZE") != "1":
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One CPU device per test process (two workers share the cores): the API and the CLI would otherwise split each
# into one device per core, as scripts get it (tests/integration/test_every_core.py checks that in fresh processes,
# without this variable). The processes the tests start inherit it; --cpu-devices still overrides it there.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")

import pytest  # noqa: E402

from helpers import QUIET, TINY_TEXT, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_text):
    """A two-epoch run on the tiny text; tests read it, none writes to it."""
    from charlm_jax.train.loop import fit

    out = tmp_path_factory.mktemp("run")
    result = fit(tiny_config(epochs=2), tiny_text, out, console=QUIET)
    return out, result
