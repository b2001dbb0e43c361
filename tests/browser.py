"""Headless Chromium driven over the DevTools protocol: type, move a slider, click, read the page, screenshot.

Only what the playground's browser test and its documentation figure need (``scripts/playground_figure.py``
imports this file): one page, ``Runtime.evaluate`` and ``Input.insertText`` (real key input, so the page's
own ``input`` handlers run), over the ``websockets`` client. Written here because no small, maintained
Python package drives Chromium without downloading a browser of its own (Playwright, pyppeteer do).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """``with Browser(url, size=(1200, 900)) as page: page.evaluate("document.title")``."""

    def __init__(self, url: str, size: tuple[int, int] = (1200, 900)):
        self.url, self.size = url, size
        self.ids = itertools.count(1)

    def __enter__(self) -> Browser:
        from websockets.sync.client import connect

        self.closing = contextlib.ExitStack()
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--window-size={self.size[0]},{self.size[1]}", "--remote-debugging-port=0",
                   f"--user-data-dir={self.profile.name}", self.url]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.socket = self.closing.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        return self

    def __exit__(self, *exc) -> None:
        self.closing.close()
        os.killpg(self.process.pid, signal.SIGKILL)  # the browser and its helper processes
        self.process.wait()
        self.profile.cleanup()

    def command(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 30.0):
        """Poll ``expression`` until it is truthy (an exception counts as false: the page may be loading)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if value := self.evaluate(expression):
                    return value
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {seconds} s: {expression}")
            time.sleep(0.02)

    def type_into(self, element_id: str, text: str) -> None:
        """Focus the element, select what it holds and type ``text`` over it, as a user would."""
        self.evaluate(
            f"document.getElementById({element_id!r}).focus(); document.getElementById({element_id!r}).select()"
        )
        self.command("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.command("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
