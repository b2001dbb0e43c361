"""docs/figures/playground.png: the server's playground in headless Chromium, mid-use.

    python scripts/playground_figure.py --checkpoint RUN [--prompt TEXT] [--temperature 0.7]

Starts the server in this process (``ServerThread``), types the prompt, sets the slider, clicks Generate and
takes the screenshot when the text is in. Needs Chromium (``apt-get install chromium``) and the serve extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools driver the browser test uses

from browser import Browser, chromium  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.serve.run import ServerThread  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "playground.png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--prompt", default="the meaning of a ")
    parser.add_argument("--temperature", default="0.7")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    if chromium() is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    lm = charlm_jax.load(args.checkpoint)
    with ServerThread(lm) as url, Browser(url + "/", size=(1200, 900)) as page:
        page.wait_for("document.getElementById('model').textContent.includes('LSTM')")
        page.type_into("prompt", args.prompt)
        page.evaluate(
            f"const s = document.getElementById('temperature'); s.value = '{args.temperature}';"
            "s.dispatchEvent(new Event('input', {bubbles: true}));"
            f"document.getElementById('seed').value = '{args.seed}'"
        )
        page.wait_for("document.querySelectorAll('#next .bar').length > 0")
        page.wait_for(f"document.querySelectorAll('#inspect span').length === {len(args.prompt)}")
        page.evaluate("document.getElementById('generate').click()")
        page.wait_for("document.getElementById('status').textContent.includes('(done)')", seconds=60)
        page.screenshot(FIGURE)
    print(f"wrote {FIGURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
