"""The HTTP server, talked to over real loopback sockets (no mocked transport), as a client would."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from browser import Browser, chromium  # noqa: E402

import charlm_jax  # noqa: E402
import charlm_jax.errors  # noqa: E402
from charlm_jax.serve.run import ServerThread  # noqa: E402
from charlm_jax.settings.serving import ServeLimits, ServeOptions  # noqa: E402


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def call(url: str, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    connection = connect(url)
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


def events(response: http.client.HTTPResponse):
    """Server-sent events of a streamed response, as (event, data) pairs, read as they arrive."""
    kind, data = "message", None
    for line in response:
        line = line.decode("utf-8").rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
        elif line == "" and data is not None:
            yield kind, data
            kind, data = "message", None


def stream(url: str, body: dict) -> list[tuple[str, dict]]:
    connection = connect(url)
    connection.request("POST", "/generate", body=json.dumps({**body, "stream": True}).encode())
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    received = list(events(response))
    connection.close()
    return received


@pytest.fixture(scope="module")
def lm(trained_run):
    return charlm_jax.load(trained_run[0])


@pytest.fixture(scope="module")
def server(lm):
    with ServerThread(lm, ServeOptions(warm_up=False, chunk=8)) as url:
        yield url


REQUESTS = [
    {"prompt": "the ", "temperature": 0.5, "length": 45, "seed": 1},
    {"prompt": "a", "temperatures": [1.0, 0.2], "length": 30, "seed": 2, "top_p": 0.9},
    {"prompt": "the cat", "temperature": 0.8, "length": 37, "seed": 3, "repetition_penalty": 1.3, "no_repeat_ngram": 3},
    {"prompt": "sat on the mat and then the", "temperature": 1.2, "length": 20, "seed": 4, "min_p": 0.05},
    {"prompt": "t", "temperature": 0.0, "length": 25, "seed": 5},
]


def library_texts(lm, request: dict) -> list[str]:
    settings = {k: v for k, v in request.items() if k not in ("prompt", "seed", "temperature")}
    if "temperature" in request:
        settings["temperatures"] = (request["temperature"],)
    return charlm_jax.generate(lm, request["prompt"], seed=request["seed"], **settings)


def test_requests_batched_together_get_the_texts_they_get_alone(lm, server):
    """Concurrent requests share compiled chunks, and each still gets charlm_jax.generate's text for its seed."""
    alone = [call(server, "POST", "/generate", r) for r in REQUESTS]
    with ThreadPoolExecutor(len(REQUESTS) * 2) as pool:
        together = list(pool.map(lambda r: call(server, "POST", "/generate", r), REQUESTS * 2))
    for request, (status, data), (status_b, data_b), (status_c, data_c) in zip(
        REQUESTS, alone, together[: len(REQUESTS)], together[len(REQUESTS) :]
    ):
        assert status == status_b == status_c == 200
        assert data["texts"] == data_b["texts"] == data_c["texts"] == library_texts(lm, request)
    _, health = call(server, "GET", "/health")
    assert health["load"]["active_rows"] == 0 and health["load"]["waiting_requests"] == 0


def test_a_streamed_request_is_the_same_text_in_pieces(lm, server):
    request = REQUESTS[1]
    received = stream(server, request)
    assert received[-1] == ("end", {"characters": 60})
    rows = ["", ""]
    for kind, data in received[:-1]:
        assert kind == "message" and len(data["text"]) <= 8
        rows[data["row"]] += data["text"]
    assert rows == library_texts(lm, request)


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/generate", b"{not json", 400, "not valid JSON"),
        ("/generate", [1, 2], 400, "must be a JSON object"),
        ("/generate", {"prompt": "the ", "colour": "red"}, 400, "unknown field(s) ['colour']"),
        ("/generate", {"prompt": "the ", "temperature": -0.5}, 400, "temperature must be >= 0"),
        ("/generate", b'{"prompt": "the ", "temperature": NaN}', 400, "temperature must be a finite number"),
        ("/generate", {"prompt": "the ", "temperature": "hot"}, 400, "temperature must be a finite number"),
        ("/generate", {"prompt": "the ", "length": 100_000}, 400, "length must be an integer from 1 to 2000"),
        ("/generate", {"prompt": "the ", "length": 0}, 400, "length must be an integer"),
        ("/generate", {"prompt": "the Ω"}, 400, "not in the model's vocabulary"),
        ("/generate", {"prompt": ""}, 400, "prompt must be a non-empty string"),
        ("/generate", {"prompt": "the ", "seed": 1.5}, 400, "seed must be an integer"),
        ("/generate", {"prompt": "the ", "top_p": 2}, 400, "top_p"),
        ("/generate", {"prompt": "the ", "temperatures": []}, 400, "temperatures must be a list of 1 to 8"),
        ("/generate", {"prompt": "the ", "stream": "yes"}, 400, "stream must be true or false"),
        ("/score", {"text": "the"}, 400, "window scoring needs at least"),
        ("/score", {"text": "the cat sat", "mode": "sideways"}, 400, "mode must be one of"),
        ("/next", {"prompt": "the", "top": 0}, 400, "top must be an integer"),
        ("/inspect", {"text": "x" * 6000}, 400, "at most 5,000"),
        ("/nowhere", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_one_clear_line_and_the_server_goes_on(server, path, body, status, words):
    raw = body if isinstance(body, bytes) else None
    got, data = call(server, "POST", path, None if raw else body, raw=raw)
    assert got == status and words in data["error"] and "\n" not in data["error"]
    assert call(server, "GET", "/health")[1]["status"] == "ok"


def test_unseen_characters_can_be_left_out(lm, server):
    with pytest.warns(charlm_jax.errors.CharLMWarning, match="left out"):
        status, data = call(server, "POST", "/generate", {"prompt": "the Ω", "length": 10, "unseen": "skip", "seed": 7})
    assert status == 200 and data["texts"] == charlm_jax.generate(lm, "the ", seed=7, temperatures=(1.0,), length=10)


def test_score_next_and_inspect_are_the_librarys_numbers(lm, server, tiny_text):
    text = tiny_text[:200]
    status, scored = call(server, "POST", "/score", {"text": text, "mode": "stateful"})
    assert status == 200
    np.testing.assert_allclose(scored["bits_per_char"], charlm_jax.bits_per_char(lm, text, "stateful"), rtol=1e-6)
    status, nxt = call(server, "POST", "/next", {"prompt": "the ca", "temperature": 0.7, "top": 3})
    expected = charlm_jax.next_char_probabilities(lm, "the ca", (0.7,))[0]
    order = np.argsort(-expected, kind="stable")[:3]
    assert [n["char"] for n in nxt["next"]] == [lm.vocab.chars[i] for i in order]
    np.testing.assert_allclose([n["p"] for n in nxt["next"]], expected[order], rtol=1e-5)
    status, seen = call(server, "POST", "/inspect", {"text": text[:50], "top": 2})
    local = charlm_jax.inspect(lm, text[:50], top_k=2)
    assert seen["labels"] == local.labels() and seen["surprisal"][0] is None
    np.testing.assert_allclose(seen["surprisal"][1:], local.surprisal()[1:], atol=2e-3)


def _wait_for(url: str, condition, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        load = call(url, "GET", "/health")[1]["load"]
        if condition(load) or time.monotonic() > deadline:
            return load
        time.sleep(0.02)


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    connection = connect(server)
    connection.request("POST", "/generate", body=json.dumps({"prompt": "the ", "length": 2000, "stream": True}))
    response = connection.getresponse()
    first = next(events(response))
    assert first[0] == "message"
    connection.sock.close()  # the client goes away without reading the rest
    connection.close()
    assert _wait_for(server, lambda load: load["active_rows"] == 0)["active_rows"] == 0
    assert call(server, "POST", "/generate", {"prompt": "the ", "length": 5})[0] == 200


def test_a_full_queue_is_refused_with_503_and_later_requests_are_served(lm):
    options = ServeOptions(warm_up=False, chunk=1, max_rows=1, max_waiting=1, limits=ServeLimits(max_length=5000))
    with ServerThread(lm, options) as url:
        busy = connect(url)
        busy.request("POST", "/generate", body=json.dumps({"prompt": "the ", "length": 5000, "stream": True}))
        busy_events = events(busy.getresponse())
        next(busy_events)  # the only row is taken
        waiting = threading.Thread(target=call, args=(url, "POST", "/generate", {"prompt": "a", "length": 3}))
        waiting.start()
        assert _wait_for(url, lambda load: load["waiting_requests"] == 1)["waiting_requests"] == 1
        status, data = call(url, "POST", "/generate", {"prompt": "the ", "length": 3})
        assert status == 503 and "waiting" in data["error"]
        busy.sock.close()
        busy.close()
        waiting.join(timeout=60)
        assert not waiting.is_alive()
        assert call(url, "POST", "/generate", {"prompt": "the ", "length": 3})[0] == 200


def test_the_playground_is_served_and_names_what_the_browser_test_drives(server):
    connection = connect(server)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    for element in ("prompt", "temperature", "generate", "output", "next", "inspect"):
        assert f'id="{element}"' in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium: apt-get install chromium (the CI installs it)")
def test_the_playground_works_in_a_browser(lm, tmp_path):
    """Type a prompt, move the slider, click Generate: the characters stream in (seen part-way), the text is
    generate's for the slider's temperature, the bars at the cursor and the prompt's colouring appear."""
    length = 1500
    options = ServeOptions(warm_up=False, chunk=2, limits=ServeLimits(max_length=length))
    with ServerThread(lm, options) as url, Browser(url + "/") as page:
        page.wait_for("document.getElementById('model').textContent.includes('LSTM')")
        page.type_into("prompt", "the ca")
        page.evaluate(
            "const s = document.getElementById('temperature'); s.value = '1.2';"
            "s.dispatchEvent(new Event('input', {bubbles: true}))"
        )
        page.evaluate(f"document.getElementById('length').value = '{length}'")
        assert page.evaluate("document.getElementById('temperature-value').textContent") == "1.2"
        page.wait_for("document.querySelectorAll('#next .bar').length === 10")
        page.wait_for("document.querySelectorAll('#inspect span').length === 6")
        page.evaluate("document.getElementById('generate').click()")
        seen = page.wait_for(
            f"(() => {{ const n = (document.getElementById('generated') || {{textContent: ''}}).textContent.length;"
            f" return n > 0 && n < {length} ? n : 0; }})()"
        )
        page.wait_for("document.getElementById('status').textContent.includes('(done)')", seconds=60)
        text = page.evaluate("document.getElementById('generated').textContent")
        page.screenshot(tmp_path / "playground.png")
    assert 0 < seen < length
    assert text == charlm_jax.generate(lm, "the ca", seed=0, temperatures=(1.2,), length=length)[0]
    assert (tmp_path / "playground.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def documented_examples() -> list[tuple[str, str, str, str, str]]:
    """docs/serve.md's examples: (method, path, body, answer kind, answer)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "serve.md").read_text(encoding="utf-8")
    pattern = r"```http\n(GET|POST) (\S+)\n(.*?)```\n\n```(http|text)\n(.*?)```"
    return re.findall(pattern, doc, re.S)


def same_form(documented, answered) -> bool:
    """The same keys all the way down, and values of the same kind (numbers alike, lists by their first item)."""
    if isinstance(documented, dict):
        return (
            isinstance(answered, dict)
            and set(documented) == set(answered)
            and all(same_form(documented[k], answered[k]) for k in documented)
        )
    if isinstance(documented, list):
        return isinstance(answered, list) and (not documented or not answered or same_form(documented[0], answered[0]))
    if isinstance(documented, (int, float)) and not isinstance(documented, bool):
        return isinstance(answered, (int, float)) and not isinstance(answered, bool)
    return documented is None or answered is None or type(documented) is type(answered)


def test_the_documented_examples_answer_as_documented(server):
    examples = documented_examples()
    assert len(examples) == 8
    for method, path, body, kind, answer in examples:
        request = json.loads(body) if body.strip() else None
        if kind == "text":  # a streamed answer: its events, in the documented form
            received = stream(server, {k: v for k, v in request.items() if k != "stream"})
            documented = [line for line in answer.splitlines() if line]
            assert documented[-2] == "event: end" and same_form(json.loads(documented[-1][6:]), received[-1][1])
            assert received[-1][0] == "end" and all(same_form({"row": 0, "text": ""}, d) for _, d in received[:-1])
            continue
        status_line, payload = answer.split("\n", 1)
        status, data = call(server, method, path, request)
        assert status == int(status_line) and same_form(json.loads(payload), data), (path, body, data)


@pytest.mark.slow
def test_the_command_serves_says_where_and_stops_on_ctrl_c(trained_run):
    """``charlm-jax serve --port 0``: the address printed, a warning for an address beyond this machine, HTTP
    answered, and Ctrl-C ends it with 130."""
    command = [sys.executable, "-m", "charlm_jax.cli", "serve", "--checkpoint", str(trained_run[0])]
    command += ["--host", "0.0.0.0", "--port", "0", "--no-warm-up"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = server.stdout.readline(), server.stdout.readline()
        port = int(re.search(r":(\d+)/", first).group(1))
        assert "not only this machine" in second and "no authentication" in second
        url = f"http://127.0.0.1:{port}"
        assert call(url, "GET", "/health")[1]["status"] == "ok"
        assert call(url, "POST", "/generate", {"prompt": "the ", "length": 12})[0] == 200
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 130
        assert "stopped by SIGINT" in server.stderr.read()
    finally:
        server.kill()


def test_only_loopback_addresses_count_as_this_machine():
    from charlm_jax.serve.run import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_an_adapted_request_gets_what_generate_with_adapt_gives(lm, server):
    request = {"prompt": "the quick brown fox jumps over the lazy dog. ", "temperature": 0.7, "length": 30, "seed": 9}
    status, data = call(server, "POST", "/generate", {**request, "adapt": {"rule": "sgd", "learning_rate": 0.01}})
    options = charlm_jax.AdaptOptions(rule="sgd", learning_rate=0.01)
    expected = charlm_jax.generate(lm, request["prompt"], seed=9, temperatures=(0.7,), length=30, adapt=options)
    plain = charlm_jax.generate(lm, request["prompt"], seed=9, temperatures=(0.7,), length=30)
    assert status == 200 and data["texts"] == expected and expected != plain
    status, data = call(server, "POST", "/generate", {**request, "adapt": {"rule": "sideways"}})
    assert status == 400 and "adaptation rule must be one of" in data["error"]


def test_stop_strings_end_a_row_as_generate_ends_it_batched_or_not(lm, server):
    requests = [
        {"prompt": "the ", "temperature": 1.0, "length": 300, "seed": s, "stop": stop}
        for s, stop in ((1, ["e"]), (2, ["th", "q"]), (3, ["zzz"]), (4, ["."]))
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: call(server, "POST", "/generate", r), requests))
    for request, (status, data) in zip(requests, answers):
        expected = charlm_jax.generate(
            lm, "the ", seed=request["seed"], temperatures=(1.0,), length=300, stop=tuple(request["stop"])
        )
        assert status == 200 and data["texts"] == expected
    streamed = "".join(d["text"] for kind, d in stream(server, requests[1]) if kind == "message")
    assert streamed == answers[1][1]["texts"][0] and streamed.endswith(("th", "q"))
    assert call(server, "POST", "/generate", {"prompt": "the ", "stop": ["Ω"]})[0] == 400
