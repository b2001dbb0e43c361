"""The HTTP server: Starlette routes over one ``Batcher``, run by uvicorn.

Starlette and uvicorn (the ``serve`` extra) because streaming a response as server-sent events, running
blocking work in a thread pool, and noticing a client that left are what they already do well, with
few dependencies of their own; FastAPI would add pydantic and a schema layer the checks in
``requests`` already are.

Endpoints (docs/serve.md has a request and a response for each):

* ``POST /generate``: the texts of a request, or (``"stream": true``) server-sent events, a piece of a row's
  text each (``data: {"row": 0, "text": "..."}``), then ``event: end``;
* ``POST /score``: bits per character of a text; ``POST /next``: the next-character distribution;
* ``POST /inspect``: per character of a short text, its surprisal and the likeliest next characters;
* ``GET /health``: the model and the load; ``GET /``: the playground page.

Every refusal is a JSON ``{"error": "..."}`` with a 4xx status, a full queue a 503; the server goes on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charlm_jax.errors import CharLMError
from charlm_jax.serve.batcher import Batcher, Job, QueueFull
from charlm_jax.serve.playground import PLAYGROUND
from charlm_jax.serve.requests import (
    INSPECT_FIELDS,
    NEXT_FIELDS,
    SCORE_FIELDS,
    RequestError,
    checked_fields,
    integer_field,
    number_field,
    parse_generate,
    request_hint,
    text_field,
    unseen_field,
)
from charlm_jax.settings.serving import ServeLimits
from charlm_jax.use.inside import unit_label


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limits: ServeLimits) -> Any:
    """The request's JSON, or a ``RequestError`` saying why not (too large, not JSON)."""
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:
        raise RequestError(f"the body has {len(raw):,} bytes; this server takes at most {limits.max_body_bytes:,}", 413)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as failure:
        raise RequestError(f"the body is not valid JSON ({failure}): send a JSON object") from None


def _sse(data: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Server:
    """The routes' shared state: the model, its batcher and the limits."""

    def __init__(self, lm, batcher: Batcher, limits: ServeLimits):
        self.lm, self.batcher, self.limits = lm, batcher, limits

    async def generate(self, request: Request) -> Response:
        parsed = parse_generate(await read_body(request, self.limits), self.lm, self.limits)
        params = None
        if parsed.adapt is not None:
            params = await run_in_threadpool(self._adapted, parsed.prompt_ids, parsed.adapt)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def deliver(row: int, piece: str, done: bool) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, (row, piece, done))

        job = Job(parsed.prompt_ids, parsed.options, parsed.seed, deliver, params)
        self.batcher.submit(job)
        rows = parsed.options.rows
        if parsed.stream:
            return StreamingResponse(self._events(job, pieces, rows), media_type="text/event-stream")
        texts = [""] * rows
        try:
            left = rows
            while left:
                row, piece, done = await pieces.get()
                texts[row] += piece
                left -= done
        finally:
            job.cancel()
        if job.error:
            return error(job.error, 500)
        return JSONResponse(
            {
                "texts": texts,
                "temperatures": [float(f"{t:.6g}") for t in parsed.options.temperatures],
                "seed": parsed.seed,
            }
        )

    async def _events(self, job: Job, pieces: asyncio.Queue, rows: int):
        try:
            left, characters = rows, 0
            while left:
                row, piece, done = await pieces.get()
                if piece:
                    characters += len(piece)
                    yield _sse({"row": row, "text": piece})
                left -= done
            if job.error:
                yield _sse({"error": job.error}, "error")
            else:
                yield _sse({"characters": characters}, "end")
        finally:
            job.cancel()  # a client that left frees its rows at the next chunk

    def _adapted(self, prompt_ids: np.ndarray, options):
        from charlm_jax.use.lm import adapted_params

        return adapted_params(self.lm, prompt_ids, options)

    async def score(self, request: Request) -> Response:
        from charlm_jax.use.lm import score

        body = checked_fields(await read_body(request, self.limits), SCORE_FIELDS)
        text = text_field(body, "text", None, self.limits.max_text)
        mode = body.get("mode", "window")
        log2p = await run_in_threadpool(score, self.lm, text, mode, None, unseen_field(body))
        unit = "byte" if self.lm.config.units == "bytes" else "char"
        return JSONResponse({f"bits_per_{unit}": float(-np.mean(log2p)), "scored": int(len(log2p)), "mode": mode})

    async def next(self, request: Request) -> Response:
        from charlm_jax.use.lm import next_char_probabilities

        body = checked_fields(await read_body(request, self.limits), NEXT_FIELDS)
        prompt = text_field(body, "prompt", None, self.limits.max_prompt)
        temperature = number_field(body, "temperature", 1.0)
        top = integer_field(body, "top", 10, 1, self.lm.vocab.size)
        prompt = self.lm.vocab.decode(self.lm.encode_prompt(prompt, unseen=unseen_field(body)))
        probs = (await run_in_threadpool(next_char_probabilities, self.lm, prompt, (temperature,)))[0]
        order = np.argsort(-probs, kind="stable")[:top]
        return JSONResponse(
            {
                "temperature": temperature,
                "next": [
                    {"char": unit_label(self.lm.vocab.chars, self.lm.config.units, int(i)), "p": float(probs[i])}
                    for i in order
                ],
            }
        )

    async def inspect(self, request: Request) -> Response:
        from charlm_jax.use.inside import inspect
        from charlm_jax.use.page import predictions

        body = checked_fields(await read_body(request, self.limits), INSPECT_FIELDS)
        text = text_field(body, "text", None, self.limits.max_inspect)
        top = integer_field(body, "top", 5, 1, self.lm.vocab.size)
        seen = await run_in_threadpool(inspect, self.lm, text, top, False, unseen_field(body))
        return JSONResponse(predictions(seen, len(seen.ids)))

    async def health(self, request: Request) -> Response:
        config = self.lm.config
        return JSONResponse(
            {
                "status": "ok",
                "default_prompt": self.lm.default_prompt,
                "model": {
                    "step": self.lm.step,
                    "vocabulary": self.lm.vocab.size,
                    "units": config.units,
                    "layers": config.num_layers,
                    "hidden_size": config.hidden_size,
                    "lowercase": config.lowercase,
                },
                "load": self.batcher.load(),
                "limits": self.limits.__dict__,
                "chunk": self.batcher.chunk,
            }
        )

    async def playground(self, request: Request) -> Response:
        return HTMLResponse(PLAYGROUND)


def build_app(lm, batcher: Batcher, limits: ServeLimits | None = None) -> Starlette:
    """The Starlette application serving ``lm`` through ``batcher`` (which the caller closes)."""
    server = Server(lm, batcher, limits or ServeLimits())

    async def refused(request: Request, failure: Exception) -> Response:
        if isinstance(failure, QueueFull):
            return error(str(failure), 503)
        return error(request_hint(str(failure)), getattr(failure, "status", 400))

    async def http_error(request: Request, failure: Exception) -> Response:
        assert isinstance(failure, HTTPException)
        return error(f"{failure.detail}: {request.method} {request.url.path}", failure.status_code)

    routes = [
        Route("/", server.playground, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/generate", server.generate, methods=["POST"]),
        Route("/score", server.score, methods=["POST"]),
        Route("/next", server.next, methods=["POST"]),
        Route("/inspect", server.inspect, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={CharLMError: refused, HTTPException: http_error})
