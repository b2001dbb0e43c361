"""Drawing the next character from logits: softmax with temperature, and its usual filters.

The book reweights probabilities with ``exp(log(p) / T)``; that is the same
distribution as ``softmax(logits / T)`` but breaks when a probability is 0
(``log(0) = -inf``) and loses precision for tiny ones. Here the temperature
divides the logits directly (shifted by their maximum first, so huge logits
cannot overflow), and ``jax.random.categorical`` draws with the Gumbel-max
trick, for which a ``-inf`` logit is simply never chosen.

Order of operations (the same as Hugging Face's samplers): temperature, then
top-k, then min-p, then top-p, on the tempered distribution. ``temperature == 0``
means greedy (argmax of the raw logits); per-row temperatures let many
temperatures share one batched call.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError


def sample(key: jax.Array, logits: jax.Array, temperature=1.0, *, top_k: int | None = None,
           top_p=None, min_p=None) -> jax.Array:
    """Draw ids of shape ``logits.shape[:-1]`` from ``softmax(logits / temperature)``.

    ``temperature``: scalar or array broadcastable to ``logits.shape[:-1]``; 0 is greedy.
    ``top_k``: keep the k largest logits (ties with the k-th are kept too).
    ``min_p``: keep ids whose tempered probability is at least ``min_p`` times the largest.
    ``top_p``: keep the smallest set of most likely ids whose tempered mass reaches ``top_p``.
    jit- and vmap-compatible; ``top_k`` must be a static Python int. Concrete
    inputs are validated here (NaN logits, negative temperatures, bad filter
    values); traced inputs inside a caller's jit are the caller's to validate.
    """
    validate_sampling_args(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return _sample(key, logits, temperature, top_k, top_p, min_p)


def tempered_logits(logits: jax.Array, temperature=1.0, *, top_k: int | None = None,
                    top_p=None, min_p=None) -> jax.Array:
    """The log-weights the sampler draws from (up to a constant), ``-inf`` where filtered.

    For rows with temperature 0 it returns the logits at temperature 1; those
    rows are drawn greedily by ``sample``.
    """
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), logits.shape[:-1])
    # Shift by the row maximum: softmax is shift-invariant and every value becomes <= 0,
    # so dividing by a tiny temperature cannot overflow to +inf.
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    safe_temperature = jnp.where(temperature > 0, temperature, 1.0)[..., None]
    scaled = (logits - row_max) / safe_temperature  # (..., vocab), max 0
    neg_inf = jnp.asarray(-jnp.inf, scaled.dtype)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth_largest, neg_inf, scaled)
    if min_p is not None:
        # p_i >= min_p * p_max  <=>  scaled_i - max(scaled) >= log(min_p), and max(scaled) is 0.
        scaled = jnp.where(scaled < jnp.log(jnp.asarray(min_p, scaled.dtype)), neg_inf, scaled)
    if top_p is not None:
        descending = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep an id while the mass of the strictly more likely ids is below p: the smallest
        # prefix whose mass reaches p. The most likely id is always kept.
        keep = mass_before < jnp.asarray(top_p, probs.dtype)
        threshold = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < threshold, neg_inf, scaled)
    return scaled


def _sample(key, logits, temperature, top_k, top_p, min_p) -> jax.Array:
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), logits.shape[:-1])
    scaled = tempered_logits(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    drawn = jax.random.categorical(key, scaled, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    return jnp.where(temperature == 0, greedy, drawn).astype(jnp.int32)


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def validate_sampling_args(logits, temperature, *, top_k=None, top_p=None, min_p=None) -> None:
    """Refuse inputs the sampler cannot honour, while they are still concrete values.

    ``logits=None`` checks only the temperature and filters (for callers validating
    generation arguments before any logits exist).
    """
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise CharLMError(f"top_k must be a positive integer, got {top_k!r}: pass e.g. --top-k 40")
    for name, value in (("top_p", top_p), ("min_p", min_p)):
        if value is not None and _is_concrete(value):
            v = np.asarray(value, np.float64)
            if not np.all((v > 0) & (v <= 1)):
                raise CharLMError(f"{name} must be in (0, 1], got {value!r}: pass e.g. --{name.replace('_', '-')} 0.9")
    if _is_concrete(temperature):
        t = np.asarray(temperature, np.float64)
        if np.any(np.isnan(t)) or np.any(t < 0):
            raise CharLMError(
                f"temperature must be >= 0 (0 means greedy), got {t.tolist()}: pass e.g. --temperature 0.5"
            )
    if logits is not None and _is_concrete(logits):
        values = np.asarray(logits)
        if np.isnan(values).any() or np.isposinf(values).any():
            raise CharLMError("logits contain NaN or +inf: the model's output is broken; "
                              "check the checkpoint or the logits function")
        if values.size and np.all(np.isneginf(values), axis=-1).any():
            raise CharLMError("a row of logits is all -inf (every id masked): unmask at least one id")


def entropy_bits(logits: jax.Array) -> jax.Array:
    """Entropy in bits of softmax(logits) along the last axis, with -inf treated as p = 0."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    return -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1) / math.log(2.0)
