"""The server's settings: where it listens, how it batches, what one request may ask.

Plain values (no JAX), so ``charlm-jax serve --help`` shows the defaults without starting JAX.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Batch sizes the compiled chunk is built for; a batch runs padded to the smallest that holds it.
SLOT_BUCKETS = (1, 4, 16, 64)
# Steps per chunk: how long a new request may wait to join, and how often rows are handed their text.
DEFAULT_CHUNK = 16
DEFAULT_MAX_WAITING = 64


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask: characters generated per row, rows, prompt and text lengths, body bytes."""

    max_length: int = 2000
    max_rows: int = 8
    max_prompt: int = 8192
    max_text: int = 100_000
    max_inspect: int = 5000
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches: steps per chunk, rows decoded at once, requests allowed to wait, whether it
    compiles its common shapes before the first request, and the per-request limits."""

    chunk: int = DEFAULT_CHUNK
    max_rows: int = SLOT_BUCKETS[-1]
    max_waiting: int = DEFAULT_MAX_WAITING
    warm_up: bool = True
    limits: ServeLimits = ServeLimits()
