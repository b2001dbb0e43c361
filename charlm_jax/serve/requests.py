"""Reading the server's JSON requests: every field checked, every refusal one line with a status.

The rules are the library's (``GenerationOptions``, ``Vocab.encode``, ``check_seed``), so a request is
refused for what ``charlm_jax.generate`` would refuse, with the same words, plus the server's own caps
(``ServeLimits``). Nothing here touches JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.runtime.seeds import check_seed
from charlm_jax.settings.adapt import AdaptOptions, as_adapt_options
from charlm_jax.settings.config import UNSEEN_POLICIES
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.settings.serving import ServeLimits

GENERATE_FIELDS = (
    "prompt",
    "length",
    "temperature",
    "temperatures",
    "seed",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "repetition_window",
    "no_repeat_ngram",
    "history_window",
    "sampler",
    "adapt",
    "unseen",
    "stream",
    "stop",
)
SCORE_FIELDS = ("text", "mode", "unseen")
NEXT_FIELDS = ("prompt", "temperature", "top", "unseen")
INSPECT_FIELDS = ("text", "top", "unseen")
OPTION_FIELDS = ("top_k", "top_p", "min_p", "repetition_penalty", "repetition_window", "no_repeat_ngram")


def request_hint(message: str) -> str:
    """A library message in the request's words: a CLI flag it suggests (``--unseen skip``) named as the field
    (``"unseen": "skip"``)."""
    message = message.replace("--temperatures", "--temperature")
    return re.sub(r"--([a-z][a-z-]*) (\S+)", lambda m: f'"{m.group(1).replace("-", "_")}": {m.group(2)}', message)


class RequestError(CharLMError):
    """A request the server refuses: ``status`` is the HTTP status, the message says what to change."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    prompt_ids: np.ndarray
    options: GenerationOptions
    seed: int
    adapt: AdaptOptions | None
    stream: bool


def checked_fields(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``body`` as a dict whose keys are all ``allowed``; anything else refused naming it."""
    if not isinstance(body, dict):
        raise RequestError(f'the body must be a JSON object, got {type(body).__name__}: send e.g. {{"prompt": "the "}}')
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}: this endpoint accepts {', '.join(allowed)}")
    return body


def number_field(body: dict, name: str, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    return value


def integer_field(body: dict, name: str, default: Any, low: int, high: int) -> Any:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def text_field(body: dict, name: str, default: Any, cap: int) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > cap:
        raise RequestError(f"{name} has {len(value):,} characters; this server takes at most {cap:,}")
    return value


def unseen_field(body: dict) -> str:
    value = body.get("unseen", "error")
    if value not in UNSEEN_POLICIES:
        raise RequestError(f"unseen must be one of {', '.join(UNSEEN_POLICIES)}, got {value!r}")
    return value


def flag_field(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}")
    return value


def _temperatures(body: dict, limits: ServeLimits) -> tuple[float, ...]:
    if "temperature" in body and "temperatures" in body:
        raise RequestError("pass temperature (one row) or temperatures (a row each), not both")
    if "temperatures" not in body:
        return (number_field(body, "temperature", 1.0),)
    values = body["temperatures"]
    if not isinstance(values, list) or not 1 <= len(values) <= limits.max_rows:
        raise RequestError(f"temperatures must be a list of 1 to {limits.max_rows} numbers, got {values!r}")
    return tuple(number_field({"t": v}, "t", None) for v in values)


def parse_generate(body: Any, lm, limits: ServeLimits) -> GenerateRequest:
    """A ``POST /generate`` body checked against ``lm`` and ``limits``."""
    body = checked_fields(body, GENERATE_FIELDS)
    prompt = text_field(body, "prompt", lm.default_prompt, limits.max_prompt)
    seed = body.get("seed", 0)
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    check_seed(seed)
    settings = {name: body[name] for name in OPTION_FIELDS + ("sampler", "history_window") if name in body}
    if "stop" in body:
        stop = body["stop"]
        if not isinstance(stop, list) or not all(isinstance(text, str) for text in stop):
            raise RequestError(f"stop must be a list of strings, got {stop!r}")
        settings["stop"] = tuple(stop)
    for name in ("top_p", "min_p", "repetition_penalty"):
        if name in settings:
            number_field(settings, name, None)
    length = integer_field(body, "length", 400, 1, limits.max_length)
    try:
        options = GenerationOptions(length=length, temperatures=_temperatures(body, limits), **settings)
    except TypeError as error:  # a value of the wrong type inside a check
        raise RequestError(f"a generation option has the wrong type: {error}") from None
    from charlm_jax.use.lm import generation_options

    options = generation_options(options, {}, lm)  # the stop strings in the model's ids
    prompt_ids = lm.encode_prompt(prompt, unseen=unseen_field(body))
    return GenerateRequest(prompt, prompt_ids, options, int(seed), adapt_field(body), flag_field(body, "stream"))


def adapt_field(body: dict) -> AdaptOptions | None:
    """``adapt``: true (the defaults), false, or an object of ``AdaptOptions`` fields (``{"rule": "sgd"}``)."""
    value = body.get("adapt", False)
    if isinstance(value, dict):
        return AdaptOptions(**checked_fields(value, tuple(f.name for f in dataclasses.fields(AdaptOptions))))
    if not isinstance(value, bool):
        raise RequestError(f"adapt must be true, false or an object of adaptation settings, got {value!r}")
    return as_adapt_options(value)
