"""Data-parallel training and sharded generation on 4 forced CPU devices equal 1 device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# One subprocess compiling every computation for 1 and for 4 devices: the slowest unit of the suite (~35 s
# on 2 cores), so it runs with the slow set (CI runs it on every submission).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def four_device_report(tmp_path_factory):
    # Without the tests' JAX_NUM_CPU_DEVICES=1 (conftest), which older JAX lets override XLA_FLAGS.
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("multidevice_check.py")
    out = tmp_path_factory.mktemp("multi")
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_devices_follow_the_one_device_loss_trajectory(four_device_report):
    one, four = four_device_report["losses_one"], four_device_report["losses_four"]
    assert len(one) == len(four) == 12
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
    assert four_device_report["param_max_abs_diff"] < 1e-5
    assert four_device_report["param_shardings"] in (["P()"], ["PartitionSpec()"])  # replicated
    assert all("data" in spec for spec in four_device_report["carry_shardings"])  # split like the rows
    # One compile for every block of the same shape: each block's output placement is the next one's input.
    assert four_device_report["compiled_blocks"] == 1


def test_sharded_generation_gives_the_same_text(four_device_report):
    for mode in ("generation", "window_generation"):
        ids = four_device_report[mode]
        np.testing.assert_array_equal(np.asarray(ids["sharded"]), np.asarray(ids["plain"]), err_msg=mode)
    assert "data" in four_device_report["sharded_output_spec"]


def test_a_batch_that_does_not_divide_is_a_clear_error(four_device_report):
    message = four_device_report["bad_batch_error"]
    assert message and "does not divide over 4 devices" in message and "--batch-size 16 or 20" in message


def test_the_training_loop_on_four_devices_follows_one_device(four_device_report):
    assert four_device_report["fit_devices"] == 4
    one, four = four_device_report["fit_records"]["1"], four_device_report["fit_records"]["4"]
    assert [r["step"] for r in one] == [r["step"] for r in four] and len(one) == 2
    for key in ("train_loss", "val_bits_per_char", "grad_norm_max"):  # float reassociation only
        np.testing.assert_allclose([r[key] for r in four], [r[key] for r in one], rtol=1e-4)


def test_streams_split_over_four_devices_follow_one_device_and_resume_exactly(four_device_report):
    one, four = (four_device_report["stream_records"][n] for n in ("1", "4"))
    assert [r["step"] for r in one] == [r["step"] for r in four] and len(one) == 3
    for key in ("train_loss", "val_bits_per_char"):
        np.testing.assert_allclose([r[key] for r in four], [r[key] for r in one], rtol=1e-4)
    assert four_device_report["stream_resumed_params_diff"] == 0.0
    assert four_device_report["default_mesh_devices_batch_8"] == 1
