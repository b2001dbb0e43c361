"""benchmarks/device_check.py works before a GPU minute is spent on it: every row at tiny sizes on this CPU."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_runs_every_row_that_applies_at_tiny_sizes(tmp_path):
    command = [sys.executable, "benchmarks/device_check.py", "--tiny", "--skip-tests", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = tmp_path.glob("*-device-check.json")
    data = json.loads(result.read_text())
    assert data["backend"] == "cpu" and data["device"].startswith("CPU")
    train = data["train"]
    for shape in ("book", "2x192"):
        for unroll in (1, 4, 15, 60):
            assert train[f"{shape} charlm_jax f32 unroll {unroll}"]["ms_per_step"] > 0
        assert train[f"{shape} charlm_jax bf16 unroll 1"]["ms_per_step"] > 0
        assert "GPU only" in train[f"{shape} jax.experimental.rnn f32"]["skipped"]
        for dtype in ("float32", "bfloat16"):  # measured where torch is installed, else said so
            row = train[f"{shape} torch {dtype}"]
            assert row.get("ms_per_step", 0) > 0 or row["skipped"] == "torch not installed"
    generation = data["generation"]
    assert all(generation[f"charlm_jax {rows} rows"]["us_per_char"] > 0 for rows in (1, 4, 128))
    assert generation["four_rows_over_one"] > 0
    assert data["floor"]["empty scan"]["us_per_iteration"] > 0
    assert "GPU feature" in data["flags"]["skipped"]
    assert "error" not in json.dumps(data), data
    assert result.with_suffix(".md").read_text().startswith("# Device check")
