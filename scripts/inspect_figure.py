"""docs/figures/inspect_page.png: the inspect page of a run, as headless Chromium shows it.

    python scripts/inspect_figure.py --checkpoint RUN [--text PATH_OR_URL] [--cell c0_12]

Runs ``charlm-jax inspect`` (its table printed), then Chromium's screenshot of the page showing the unit that
tracks the first feature found (or ``--cell``). Needs Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "inspect_page.png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", default=None)
    parser.add_argument("--cell", default=None, help="the unit shown (default: the first one found)")
    parser.add_argument("--page-chars", type=int, default=1500)
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as work:
        page = Path(work) / "page.html"
        command = [sys.executable, "-m", "charlm_jax.cli", "inspect", "--checkpoint", args.checkpoint]
        command += ["--out", str(page), "--page-chars", str(args.page_chars)]
        command += ["--text", args.text] if args.text else []
        subprocess.run(command, check=True)
        data = json.loads(re.search(r'application/json">(.*?)</script>', page.read_text(), re.S).group(1))
        found = [r["unit"] for r in data["rankings"] if r["tracks"]]
        cell = args.cell or (found[0] if found else data["units"][0])
        shot = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1100"]
        subprocess.run([*shot, f"--screenshot={FIGURE}", f"file://{page}#cell={cell}"], check=True, capture_output=True)
    print(f"wrote {FIGURE} (unit {cell})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
