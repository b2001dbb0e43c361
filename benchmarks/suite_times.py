"""How long the README's test command takes: from a cold compilation cache (a fresh clone, CI) and warm.

    python benchmarks/suite_times.py            # cold, then warm, the default set
    python benchmarks/suite_times.py --slow     # and the slow set, cold, with XLA's optimisations on (as CI)

Each run is `python -m pytest -q` in its own process, one after the other with nothing beside them (run
nothing else on the machine meanwhile); the cache lives in a temporary directory of this script's, so the
developer's own `.jax-cache/` is left alone. Writes results/<date>-<platform>-suite-times.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import record, write_results

ROOT = Path(__file__).resolve().parent.parent


def run_suite(cache: str, *extra: str, env_extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ, CHARLM_JAX_TEST_CACHE=cache, **(env_extra or {}))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *extra], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", last)}
    print(f"pytest -q {' '.join(extra)}: {seconds:.1f} s, {last}", flush=True)
    return {"wall_seconds": round(seconds, 1), "exit_status": result.returncode, "summary": last, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also time the slow set (cold)")
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as cache:
        runs["default_cold"] = run_suite(cache)
        runs["default_warm"] = run_suite(cache)
    if args.slow:
        with tempfile.TemporaryDirectory() as cache:
            runs["slow_cold"] = run_suite(cache, "-m", "slow", env_extra={"CHARLM_JAX_TEST_OPTIMIZE": "1"})
    date = time.strftime("%Y-%m-%d")
    data = {
        **record("suite_times.py"),
        "cores": os.cpu_count(),
        "runs": runs,
    }
    lines = [
        f"# Test-suite times, {date}",
        "",
        f"Machine: {data['device']}; command: `{data['command']}`; each run "
        "`python -m pytest -q` in its own process, one at a time, nothing beside it.",
        "",
        "| run | wall time | result |",
        "|---|---|---|",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name.replace('_', ', ')} | {run['wall_seconds']:.0f} s ({run['wall_seconds'] / 60:.1f} min) "
            f"| {run['summary']} |"
        )
    platform = "cpu" if "CPU" in data["device"] else "accel"
    print(write_results(f"{date}-{platform}-suite-times", data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
