"""Drawing the next character from logits: softmax with temperature, its filters, two samplers.

The book reweights probabilities with ``exp(log(p) / T)``; that is the same
distribution as ``softmax(logits / T)`` but breaks when a probability is 0
(``log(0) = -inf``) and loses precision for tiny ones. Here the temperature
divides the logits directly (shifted by their maximum first, so huge logits
cannot overflow).

Order of operations (Hugging Face's): the repetition controls on the raw logits
(``repetition_penalty``, ``ban``), then temperature, then top-k, min-p, top-p on
the tempered distribution. ``temperature == 0`` means greedy (argmax of the
processed logits); per-row temperatures let many temperatures share one call.

Two exact samplers of the same distribution, chosen by ``sampler``:

* ``"gumbel"``: ``jax.random.categorical``: argmax of the tempered logits plus
  Gumbel noise, one noise value per vocabulary entry per row.
* ``"inverse_cdf"``: one uniform ``u`` per row; the id is the first whose
  cumulative weight ``cumsum(exp(tempered))`` exceeds ``u`` times the total.
  It needs vocab-times fewer random numbers, which dominate a generation step
  on CPU (XLA:CPU's threefry costs ~7 ns per number).

Float32 resolution: ``jax.random.uniform`` gives multiples of 2**-23, so
``inverse_cdf`` draws every id with probability within 2**-23 (1.2e-7) of its
own, and an id below that may be drawn at the grid's rate or not at all. The
Gumbel noise, ``-log(-log(u))`` on the same grid, is capped at 23 ln 2 = 15.9,
so an id more than about 20.4 nats below the best (probability under ~1e-9)
is never drawn, and ids below ~1e-7 are drawn less often than they should.
Both are far below what a character model's probabilities or any test resolve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.model.scoring import nats_to_bits
from charlm_jax.settings.config import DEFAULT_SAMPLER
from charlm_jax.settings.generation import check_fraction, check_sampler, check_top_k


def sample(
    key: jax.Array,
    logits: jax.Array,
    temperature=1.0,
    *,
    top_k: int | None = None,
    top_p=None,
    min_p=None,
    sampler: str = DEFAULT_SAMPLER,
) -> jax.Array:
    """Draw ids of shape ``logits.shape[:-1]`` from ``softmax(logits / temperature)``.

    ``temperature``: scalar or array broadcastable to ``logits.shape[:-1]``; 0 is greedy.
    ``top_k``: keep the k largest logits (ties with the k-th are kept).
    ``min_p``: keep ids whose tempered probability is at least ``min_p`` times the largest.
    ``top_p``: keep the smallest set of most likely ids whose tempered mass reaches ``top_p``.
    jit- and vmap-compatible; ``top_k`` and ``sampler`` must be static. Concrete inputs
    are validated here (NaN logits, negative temperatures, bad filter values); traced
    inputs inside a caller's jit are the caller's to validate.
    """
    check_sampling_args(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p, sampler=sampler)
    logits = jnp.asarray(logits, jnp.float32)
    noise = draw_noise(key, logits.shape, sampler)
    return sample_with_noise(noise, logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p, sampler=sampler)


def draw_noise(key: jax.Array, logits_shape: tuple[int, ...], sampler: str = DEFAULT_SAMPLER) -> jax.Array:
    """The random numbers one draw consumes: Gumbel noise shaped like the logits, or one uniform per row.

    Drawing them apart from the logits lets generation draw a whole chunk of steps at once
    (``jax.vmap`` over the steps' keys: the same numbers as drawing them one step at a time).
    """
    if sampler == "gumbel":
        return jax.random.gumbel(key, logits_shape, jnp.float32)  # what jax.random.categorical adds
    return jax.random.uniform(key, logits_shape[:-1], jnp.float32)


def sample_with_noise(
    noise: jax.Array,
    logits: jax.Array,
    temperature=1.0,
    *,
    top_k: int | None = None,
    top_p=None,
    min_p=None,
    sampler: str = DEFAULT_SAMPLER,
) -> jax.Array:
    """``sample`` with its random numbers given (from ``draw_noise``); int32 ids."""
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), logits.shape[:-1])
    scaled = tempered_logits(logits, temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if sampler == "gumbel":
        # jax.random.categorical(key, scaled) is exactly argmax(scaled + gumbel(key, scaled.shape)).
        drawn = first_max_index(scaled + noise)
    else:
        drawn = _inverse_cdf(scaled, noise)
    greedy = first_max_index(logits)
    return jnp.where(temperature == 0, greedy, drawn).astype(jnp.int32)


def first_max_index(values: jax.Array) -> jax.Array:
    """``jnp.argmax`` over the last axis for values without NaN (the first index of the maximum).

    Written as a max and a min over an iota: XLA:CPU runs argmax's (value, index) reduction one row at a
    time, two plain reductions vectorised (results/2026-12-05-cpu-four-temperatures: the sampler alone at
    four rows).
    """
    size = values.shape[-1]
    is_max = values == jnp.max(values, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max, jnp.arange(size), size - 1), axis=-1)


def _inverse_cdf(scaled: jax.Array, uniform: jax.Array) -> jax.Array:
    """The first id whose cumulative weight exceeds ``uniform`` times the total weight.

    ``scaled`` is max-shifted (its maximum is 0), so the weights are in [0, 1] with at least
    one 1, and masked ids (-inf) weigh exactly 0: a flat step of the cumulative sum, which
    ``cdf <= target`` can never stop on. Rounding can put the target at the total itself;
    the last id with weight is the answer then.
    """
    weights = jnp.exp(scaled)  # (..., vocab)
    cdf = jnp.cumsum(weights, axis=-1)
    target = uniform[..., None] * cdf[..., -1:]
    index = jnp.sum(cdf <= target, axis=-1)
    vocab = scaled.shape[-1]
    last_with_weight = jnp.max(jnp.where(weights > 0, jnp.arange(vocab), 0), axis=-1)
    return jnp.minimum(index, last_with_weight)


def tempered_logits(
    logits: jax.Array, temperature=1.0, *, top_k: int | None = None, top_p=None, min_p=None
) -> jax.Array:
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


def repetition_penalty(logits: jax.Array, present: jax.Array, penalty) -> jax.Array:
    """CTRL's repetition penalty (as Hugging Face applies it), on raw logits.

    For ids with ``present`` (..., vocab) true, a positive logit is divided by ``penalty``
    and a negative one multiplied by it, so ``penalty > 1`` makes recent ids less likely
    whatever the sign of their logit; 1 changes nothing.
    """
    penalty = jnp.asarray(penalty, logits.dtype)
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(present, penalised, logits)


def ban(logits: jax.Array, banned: jax.Array) -> jax.Array:
    """Logits with the ``banned`` (..., vocab) ids made impossible (-inf)."""
    return jnp.where(banned, -jnp.inf, logits)


def _is_concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def check_sampling_args(
    logits, temperature, *, top_k=None, top_p=None, min_p=None, sampler: str = DEFAULT_SAMPLER
) -> None:
    """Refuse inputs ``sample`` cannot honour, while they are still concrete values.

    The option checks are ``GenerationOptions``' own (``charlm_jax.settings.generation``), so ``sample`` and
    a whole generation refuse the same values with the same words; traced values inside a
    caller's jit are the caller's to validate.
    """
    check_sampler(sampler)
    check_top_k(top_k)
    for name, value in (("top_p", top_p), ("min_p", min_p)):
        if _is_concrete(value):
            check_fraction(name, value)
    if _is_concrete(temperature):
        t = np.asarray(temperature, np.float64)
        if np.any(np.isnan(t)) or np.any(t < 0):
            raise CharLMError(
                f"temperature must be >= 0 (0 means greedy), got {t.tolist()}: pass e.g. --temperatures 0.5"
            )
    if logits is not None and _is_concrete(logits):
        values = np.asarray(logits)
        if np.isnan(values).any() or np.isposinf(values).any():
            raise CharLMError(
                "logits contain NaN or +inf: the model's output is broken; check the checkpoint or the logits function"
            )
        if values.size and np.all(np.isneginf(values), axis=-1).any():
            raise CharLMError("a row of logits is all -inf (every id masked): unmask at least one id")


def entropy_bits(logits: jax.Array) -> jax.Array:
    """Entropy in bits of softmax(logits) along the last axis, with -inf treated as p = 0."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    return nats_to_bits(-jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1))
