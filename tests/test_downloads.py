"""Downloads at the edges: a body cut short, a reset, a wrong checksum, a damaged cache entry.

A server of the test's own on 127.0.0.1 (loopback only; it stops with the test) serves each fault.
Nothing unverified may be cached: after every refused download the cache holds no file.
"""

import hashlib
import http.server
import socket
import struct
import threading
import warnings

import pytest

from charlm_jax.cli.app import main
from charlm_jax.data.corpus import RECORD_SUFFIX, CachedDownloadWarning, load_text
from charlm_jax.errors import CharLMError

BODY = ("the quick brown fox jumps over the lazy dog. " * 400).encode()  # 18,000 bytes


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    """/full.txt as it should be; /short.txt announces every byte and sends half; /reset.txt sends half and
    resets the connection; /chunked.txt sends one chunk and closes without the last one."""

    requests: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        FaultyHandler.requests.append(self.path)
        half = BODY[: len(BODY) // 2]
        if self.path == "/chunked.txt":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.path == "/full.txt":
            self.wfile.write(BODY)
            return
        self.wfile.write(half)
        self.wfile.flush()
        if self.path == "/reset.txt":  # SO_LINGER 0: close() sends a reset, not an orderly end
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


@pytest.fixture()
def server():
    FaultyHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def cached_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize(
    "path,fragment",
    [
        ("/short.txt", "ended after 9,000 of the 18,000 bytes the server announced"),
        # A reset reaches the client as a reset or, when the bytes before it were read first, as an early end.
        ("/reset.txt", "cannot download .*Connection|ended after 9,000 of the 18,000 bytes"),
        ("/chunked.txt", "cannot download .*IncompleteRead"),
    ],
)
def test_a_body_cut_short_is_refused_and_nothing_is_cached(server, tmp_path, path, fragment):
    cache = tmp_path / "cache"
    with pytest.raises(CharLMError, match=fragment) as refused:
        load_text(server + path, cache_dir=cache)
    assert "\n" not in str(refused.value)
    assert cached_files(cache) == []  # no entry, no temporary file


def test_the_cli_refuses_a_truncated_download_in_one_line(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHARLM_JAX_CACHE", str(tmp_path / "cache"))
    code = main(["train", "--text", server + "/short.txt", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "ended after 9,000 of the 18,000 bytes" in err, err
    assert cached_files(tmp_path / "cache") == []


def test_a_wrong_checksum_caches_nothing_and_a_right_one_records_length_and_digest(server, tmp_path):
    cache, url = tmp_path / "cache", server + "/full.txt"
    with pytest.raises(CharLMError, match="nothing was cached"):
        load_text(url, cache_dir=cache, sha256="0" * 64)
    assert cached_files(cache) == []
    digest = hashlib.sha256(BODY).hexdigest()
    assert load_text(url, cache_dir=cache, sha256=digest) == BODY.decode()
    entry, record = cached_files(cache)
    assert record == entry + RECORD_SUFFIX
    assert f'"bytes": {len(BODY)}' in (cache / record).read_text() and digest in (cache / record).read_text()
    assert load_text(url, cache_dir=cache) == BODY.decode() and FaultyHandler.requests == ["/full.txt"] * 2


def test_the_cli_caches_nothing_when_its_checksum_fails(server, tmp_path, monkeypatch, capsys):
    """train --text URL --sha256 WRONG is refused, and a later run without --sha256 downloads afresh."""
    monkeypatch.setenv("CHARLM_JAX_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--text", server + "/full.txt", "--out", str(tmp_path / "run")]
    assert main([*argv, "--sha256", "0" * 64]) == 2 and "sha256" in capsys.readouterr().err
    assert cached_files(tmp_path / "cache") == []


@pytest.mark.parametrize("damage", ["truncated", "edited", "no record"])
def test_a_damaged_cache_entry_is_noticed_and_fetched_again(server, tmp_path, damage):
    cache, url = tmp_path / "cache", server + "/full.txt"
    load_text(url, cache_dir=cache)
    entry = next(p for p in cache.iterdir() if not p.name.endswith(RECORD_SUFFIX))
    if damage == "truncated":
        entry.write_bytes(BODY[:100])
    elif damage == "edited":
        entry.write_bytes(BODY.replace(b"fox", b"cat"))
    else:
        entry.with_name(entry.name + RECORD_SUFFIX).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_text(url, cache_dir=cache) == BODY.decode()
    assert [type(w.message) for w in caught] == [CachedDownloadWarning]
    assert FaultyHandler.requests == ["/full.txt"] * 2 and entry.read_bytes() == BODY
