"""Running the server: on a socket of its own (``serve``, what the CLI calls), or in a thread of the
caller's process (``ServerThread``: tests, benchmarks and notebooks talk HTTP to it on a free port)."""

from __future__ import annotations

import ipaddress
import socket
import threading

from charlm_jax.errors import CharLMError
from charlm_jax.serve.batcher import Batcher
from charlm_jax.settings.serving import DEFAULT_HOST, DEFAULT_PORT, ServeOptions


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as failure:
        sock.close()
        raise CharLMError(
            f"cannot listen on {host}:{port} ({failure.strerror}): pass another --port or --host"
        ) from None
    sock.listen(2048)
    return sock


def _uvicorn_server(app, sock: socket.socket):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def prepared(lm, options: ServeOptions):
    """The batcher (warmed up if asked) and the application around it."""
    from charlm_jax.serve.app import build_app

    batcher = Batcher(lm, chunk=options.chunk, max_rows=options.max_rows, max_waiting=options.max_waiting)
    if options.warm_up:
        batcher.warm_up()
    return batcher, build_app(lm, batcher, options.limits)


def serve(
    lm, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, options: ServeOptions = ServeOptions(), say=print
) -> None:
    """Serve ``lm`` on ``host:port`` until interrupted (Ctrl-C)."""
    sock = bind(host, port)
    batcher, app = prepared(lm, options)
    where = sock.getsockname()
    say(f"serving on http://{host if ':' not in host else f'[{host}]'}:{where[1]}/ (the playground; Ctrl-C stops)")
    if not is_loopback(host):
        say(f"listening on {host}, not only this machine: anyone who reaches it can use the model (no authentication)")
    try:
        _uvicorn_server(app, sock).run(sockets=[sock])
    finally:
        batcher.close()
        sock.close()


class ServerThread:
    """The server on a free loopback port in a thread of this process: ``with ServerThread(lm) as url: ...``."""

    def __init__(self, lm, options: ServeOptions = ServeOptions(warm_up=False)):
        self.sock = bind(DEFAULT_HOST, 0)
        self.url = f"http://{DEFAULT_HOST}:{self.sock.getsockname()[1]}"
        self.batcher, app = prepared(lm, options)
        self.server = _uvicorn_server(app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise CharLMError("the server thread ended before it started serving")
            threading.Event().wait(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.batcher.close()
        self.sock.close()
