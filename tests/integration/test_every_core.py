"""The Python API uses every core as the CLI does, in a fresh process with no call of the user's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from charlm_jax.runtime.distributed import cpu_cores

pytestmark = pytest.mark.skipif(cpu_cores() < 2, reason="needs a machine with at least 2 cores")


def run_script(source: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.slow  # three fresh processes; the split rule itself is unit-tested
def test_fit_and_generate_split_the_cpu_like_the_cli(tmp_path):
    result = run_script(
        """
        import jax, charlm_jax
        from rich.console import Console
        from charlm_jax.runtime.distributed import cpu_cores
        config = charlm_jax.TrainConfig(maxlen=12, step=2, hidden_size=16, batch_size=32, epochs=1, sample_length=0)
        text = "the quick brown fox jumps over the lazy dog. " * 30
        result = charlm_jax.fit(config, text, "run", console=Console(quiet=True))
        leaf = jax.tree.leaves(result.state.params)[0]
        lm = charlm_jax.load("run")
        from charlm_jax.runtime.distributed import default_mesh
        rows = default_mesh(4, min_rows=1)
        texts = charlm_jax.generate(lm, "the ", length=20, temperatures=(0.2, 0.5, 1.0, 1.2), seed=0)
        print(cpu_cores(), jax.device_count(), len(leaf.sharding.device_set), rows.devices.size, len(texts))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cores, devices, trained_on, generated_on, texts = map(int, result.stdout.split())
    assert devices == cores and trained_on == 2 and generated_on == 2 and texts == 4  # 32 rows: 16 per device
    assert "warning" not in result.stderr.lower()


def test_a_script_that_started_jax_first_is_told_once_what_it_costs(tmp_path):
    result = run_script(
        """
        import warnings
        import jax, jax.numpy as jnp
        jnp.zeros(3).block_until_ready()   # JAX starts on one CPU device
        import charlm_jax
        from charlm_jax.runtime.distributed import use_every_core
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            use_every_core()
            use_every_core()
        print(len(caught), jax.device_count())
        print(caught[0].message)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    count, message = result.stdout.split("\n", 1)
    assert count.split() == ["1", "1"]
    assert "call charlm_jax.use_every_core() before the script's first JAX computation" in message
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=" in message
