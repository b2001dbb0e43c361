"""``charlm-jax serve``: its flags and what it runs (the server itself is ``charlm_jax.serve``)."""

from __future__ import annotations

import argparse
import signal
import sys

from charlm_jax.errors import CharLMError
from charlm_jax.settings.serving import (
    DEFAULT_CHUNK,
    DEFAULT_HOST,
    DEFAULT_MAX_WAITING,
    DEFAULT_PORT,
    SLOT_BUCKETS,
    ServeLimits,
    ServeOptions,
)


def add_serve_command(commands) -> None:
    """The ``serve`` command's flags."""
    limits = ServeLimits()
    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP: generate (streamed), score, next, inspect, and a playground page",
        description="A local HTTP server: concurrent requests are decoded as rows of one compiled scan. "
        "Needs the serve extra: pip install -e '.[serve]'. Endpoints: docs/serve.md.",
    )
    serve.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory written by train")
    serve.add_argument("--step", type=int, help="checkpoint step to load (default: latest)")
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: a free one)")
    serve.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help=f"steps decoded between two admissions of new requests (default: {DEFAULT_CHUNK})",
    )
    serve.add_argument(
        "--max-rows",
        type=int,
        default=SLOT_BUCKETS[-1],
        help=f"rows decoded at once, all requests together (default: {SLOT_BUCKETS[-1]})",
    )
    serve.add_argument(
        "--max-waiting",
        type=int,
        default=DEFAULT_MAX_WAITING,
        help=f"requests allowed to wait for a row; beyond it a request gets 503 (default: {DEFAULT_MAX_WAITING})",
    )
    serve.add_argument(
        "--max-length",
        type=int,
        default=limits.max_length,
        help=f"characters one row may ask for (default: {limits.max_length})",
    )
    serve.add_argument("--no-warm-up", action="store_true", help="do not compile the common shapes before serving")


def run_serve(args: argparse.Namespace, stop) -> int:
    from charlm_jax.serve.run import serve
    from charlm_jax.train.signals import STOP_SIGNALS
    from charlm_jax.use.lm import load

    for name in ("chunk", "max_rows", "max_waiting", "max_length"):
        if getattr(args, name) < 1:
            raise CharLMError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise CharLMError(f"--port must be from 0 to 65535, got {args.port}")
    lm = load(args.checkpoint, step=args.step)
    options = ServeOptions(
        chunk=args.chunk,
        max_rows=args.max_rows,
        max_waiting=args.max_waiting,
        warm_up=not args.no_warm_up,
        limits=ServeLimits(max_length=args.max_length),
    )
    # uvicorn handles Ctrl-C and SIGTERM while it serves (closing connections), then raises the signal again
    # once it has stopped: it is noted here and ends the command with the usual status.
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, _: received.append(s)) for signum in STOP_SIGNALS}
    try:
        serve(lm, args.host, args.port, options, say=lambda line: print(line, flush=True))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        print(f"charlm-jax: server stopped by {signal.Signals(received[0]).name}", file=sys.stderr)
        return 128 + received[0]
    return 0
