"""The README's "your own text" commands, run exactly as printed, one after the other, in a fresh folder.

    python benchmarks/quickstart.py

The commands are read from README.md (the fenced block after ``<!-- quickstart -->``), so what is
timed is what a newcomer types. Each runs in its own shell in an empty temporary folder, nothing beside
it; its wall time, exit status and output are kept. The README's transcript, times and bits/char are
rendered from the result file (scripts/render_figures.py). Writes results/<date>-<platform>-quickstart.{json,md}.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import platform_tag, record, write_results

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- quickstart -->"


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the README's quick-start block, comments stripped."""
    block = readme.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def transcript(stdout: str, keep_sample: int = 160) -> str:
    """A training run's output with each 400-character sample cut to its first characters."""
    out: list[str] = []
    sample: list[str] | None = None
    for line in stdout.splitlines():
        ends_sample = line.startswith(("------ temperature", "--- Generating", "epoch ", "best ", "validating"))
        if sample is not None and ends_sample:
            text = "\n".join(sample)
            out.append(text[:keep_sample] + (" ..." if len(text) > keep_sample else ""))
            sample = None
        if sample is not None:
            sample.append(line)
            continue
        out.append(line)
        if line.startswith("------ temperature"):
            sample = []
    if sample is not None:
        text = "\n".join(sample)
        out.append(text[:keep_sample] + (" ..." if len(text) > keep_sample else ""))
    return "\n".join(out)


def main() -> None:
    commands = quickstart_commands((ROOT / "README.md").read_text())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    steps = []
    with tempfile.TemporaryDirectory() as folder:
        for command in commands:
            started = time.perf_counter()
            result = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            steps.append(
                {
                    "command": command,
                    "seconds": round(seconds, 1),
                    "status": result.returncode,
                    # The temporary folder's path left out: what a user sees in their own folder.
                    "stdout": result.stdout[-20000:].replace(f"{folder}/", "") if ">" not in command else "",
                    "stderr": result.stderr[-4000:],
                }
            )
            print(f"{seconds:6.1f} s  exit {result.returncode}  {command}", flush=True)
            if result.returncode != 0:
                print(result.stderr)
                break
        records = [json.loads(line) for line in (Path(folder) / "runs/my/metrics.jsonl").read_text().splitlines()]
    train_runs = [s for s in steps if s["command"].startswith("charlm-jax train")]
    evaluated = next(s for s in steps if s["command"].startswith("charlm-jax eval"))
    date = time.strftime("%Y-%m-%d")
    data = {
        **record("quickstart.py"),
        "steps": steps,
        "records": records,
        "first_train_transcript": transcript(train_runs[0]["stdout"]),
        "eval_bits_per_char": float(evaluated["stdout"].split()[0]),
        "all_ok": all(s["status"] == 0 for s in steps) and len(steps) == len(commands),
    }
    lines = [
        f"# The README's quick start, {date}",
        "",
        f"Machine: {data['device']}; command: `{data['command']}`; each command in its own shell, one after the other.",
        "",
        "| command | seconds | exit |",
        "|---|---|---|",
        *[f"| `{s['command']}` | {s['seconds']} | {s['status']} |" for s in steps],
        "",
        "```text",
        data["first_train_transcript"],
        "```",
    ]
    print(write_results(f"{date}-{platform_tag()}-quickstart", data, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
