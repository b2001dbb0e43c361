"""Dynamic evaluation: the model keeps learning from the text it reads (Krause et al., 2016 and 2018).

The text is cut into segments of ``segment`` characters. Each segment is scored with the weights and
the LSTM state as they are, and only then do the weights take one step on that segment's loss; the
state runs on from segment to segment. So no character's score depends on the characters after it,
and a text the model has read teaches it the names, identifiers and habits of what follows.

Two update rules, from the paper, each a pure function of the gradient:

* ``rms`` (the paper's "RMS with a global prior"): the step is the gradient divided by the root
  mean square of the training loss's gradient (``gradient_scale``, measured on the run's own
  training text), and the weights decay towards the trained ones, faster where that gradient is
  larger: ``theta += -lr * g / (sqrt(ms) + eps) + decay * min(sqrt(ms) / mean(sqrt(ms)), 1 / decay) * (theta0 - theta)``;
* ``sgd``: ``theta += -lr * g + decay * (theta0 - theta)``, needing nothing but the text.

The pass is compiled once per shape: ``CHUNK_SEGMENTS`` segments per jitted ``lax.scan``, the last
chunk padded with segments that change nothing, so a text of any length compiles once. The adapted
weights are returned, never written back into the model.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charlm_jax.errors import CharLMError
from charlm_jax.settings.adapt import AdaptOptions

# Segments per compiled call: enough to amortise the host round trip, few enough that the last,
# padded chunk wastes little.
CHUNK_SEGMENTS = 64


class Prior(NamedTuple):
    """What every update of a pass reads (a pytree, traced): the trained weights the adapted ones decay
    towards, the ``rms`` rule's gradient scale and per-parameter decay rates, the step size and the decay."""

    trained: Any
    scale: Any
    rates: Any
    learning_rate: jax.Array
    decay: jax.Array


class Segments(NamedTuple):
    """A chunk of segments: inputs, targets and a mask of the real (not padding) characters, each
    (segments, segment); the scan reads them one segment at a time."""

    inputs: Any
    targets: Any
    mask: Any


# ----------------------------------------------------------------------------- the update rules


def segment_loss(params, carries, inputs, targets, mask, *, model):
    """Mean NLL (nats) of one segment's real characters, read from ``carries``; the carries after it and
    each character's natural log-probability are the auxiliary outputs."""
    new_carries, logits = model.apply({"params": params}, inputs[None, :], carries)  # (1, segment, vocab)
    log_probs = -optax.softmax_cross_entropy_with_integer_labels(logits[0], targets)  # (segment,)
    loss = -jnp.sum(log_probs * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, (new_carries, log_probs)


def decay_rates(scale, decay: float):
    """Per-parameter decay of the ``rms`` rule: ``decay`` times each RMS over the mean RMS, capped at 1."""
    rms = jax.tree.map(jnp.sqrt, scale)
    mean = sum(jnp.sum(r) for r in jax.tree.leaves(rms)) / sum(r.size for r in jax.tree.leaves(rms))
    return jax.tree.map(lambda r: jnp.minimum(decay * r / mean, 1.0), rms)


def adapt_update(params, grads, prior: Prior, *, rule: str, eps: float):
    """One step of ``rule`` (module docstring): the weights after a segment's gradient ``grads``."""
    lr, decay = prior.learning_rate, prior.decay
    if rule == "rms":
        return jax.tree.map(
            lambda p, g, p0, ms, r: p - lr * g / (jnp.sqrt(ms) + eps) + r * (p0 - p),
            params,
            grads,
            prior.trained,
            prior.scale,
            prior.rates,
        )
    return jax.tree.map(lambda p, g, p0: p - lr * g + decay * (p0 - p), params, grads, prior.trained)


@partial(jax.jit, static_argnames=("model", "rule", "eps"))
def adapt_chunk(params, carries, prior: Prior, segments: Segments, *, model, rule, eps):
    """Score, then learn from, each of a chunk's segments in turn: (segments, segment) ids in.

    Returns the adapted params, the carries after the chunk and every character's natural
    log-probability, (segments, segment), each computed before its segment's update.
    """

    def one_segment(state, segment):
        params, carries = state
        seg_inputs, seg_targets, seg_mask = segment
        grad_fn = jax.value_and_grad(partial(segment_loss, model=model), has_aux=True)
        (_, (new_carries, log_probs)), grads = grad_fn(params, carries, seg_inputs, seg_targets, seg_mask)
        updated = adapt_update(params, grads, prior, rule=rule, eps=eps)
        # A padding segment (nothing to read) leaves the weights and the state as they are.
        real = jnp.sum(seg_mask) > 0
        params = jax.tree.map(lambda new, old: jnp.where(real, new, old), updated, params)
        carries = jax.tree.map(lambda new, old: jnp.where(real, new, old), new_carries, carries)
        return (params, carries), log_probs

    (params, carries), log_probs = jax.lax.scan(one_segment, (params, carries), tuple(segments))
    return params, carries, log_probs


# ------------------------------------------------------------------------------- the whole pass


@partial(jax.jit, static_argnames=("model",))
def _squared_gradient(params, windows, *, model):
    """The squared gradient of the mean NLL of a batch of (batch, segment + 1) windows, from zero states."""

    def loss(p):
        _, logits = model.apply({"params": p}, windows[:, :-1], model.zero_carries(windows.shape[0]))
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

    return jax.tree.map(jnp.square, jax.grad(loss)(params))


def gradient_scale(params, model, train_ids: np.ndarray, options: AdaptOptions, seed: int = 0):
    """The mean squared gradient of the training loss at the trained weights (the ``rms`` rule's ``ms``),
    over ``scale_batches`` batches of ``scale_batch`` windows of ``segment + 1`` characters drawn from
    ``train_ids`` with a fixed seed (the same text gives the same scale)."""
    width = options.segment + 1
    if len(train_ids) < width + 1:
        raise CharLMError(
            f"the training text has {len(train_ids)} characters, too few to estimate the gradient scale from "
            f"windows of {width}: pass rule='sgd' (--adapt-rule sgd) or a shorter segment"
        )
    rng = np.random.default_rng(seed)
    total = None
    for _ in range(options.scale_batches):
        starts = rng.integers(0, len(train_ids) - width, options.scale_batch)
        windows = np.asarray(train_ids)[starts[:, None] + np.arange(width)].astype(np.int32)
        squared = _squared_gradient(params, windows, model=model)
        total = squared if total is None else jax.tree.map(jnp.add, total, squared)
    return jax.tree.map(lambda s: s / options.scale_batches, total)


def adaptive_pass(params, model, ids: np.ndarray, options: AdaptOptions, scale=None):
    """Read ``ids`` adapting: (natural log-probability of ids[1:], float64 numpy; adapted params; carries).

    ``scale`` (``gradient_scale``) is needed by the ``rms`` rule. The carries returned are the state
    after reading every id but the last (the state a continuation of the text starts from, after its
    last id is read).
    """
    ids = np.asarray(ids, np.int32)
    if len(ids) < 2:
        raise CharLMError(f"adaptive scoring needs at least 2 characters, got {len(ids)}: pass a longer text")
    if options.rule == "rms" and scale is None:
        raise CharLMError("the rms rule needs the gradient scale of the training text: pass scale=gradient_scale(...)")
    inputs, targets = ids[:-1], ids[1:]
    n, seg = len(targets), options.segment
    per_chunk = CHUNK_SEGMENTS * seg
    chunks = -(-n // per_chunk)
    padded = chunks * per_chunk
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1.0
    shape = (chunks, CHUNK_SEGMENTS, seg)
    inputs_p = np.pad(inputs, (0, padded - n)).reshape(shape)
    targets_p = np.pad(targets, (0, padded - n)).reshape(shape)
    mask_p = mask.reshape(shape)
    if scale is None:  # the sgd rule reads neither; any tree of the params' shapes compiles the same
        scale = jax.tree.map(jnp.ones_like, params)
    prior = Prior(
        params, scale, decay_rates(scale, options.decay), jnp.float32(options.learning_rate), jnp.float32(options.decay)
    )
    carries = model.zero_carries(1)
    scores = np.empty(padded, np.float64)
    for index in range(chunks):
        segments = Segments(inputs_p[index], targets_p[index], mask_p[index])
        params, carries, log_probs = adapt_chunk(
            params, carries, prior, segments, model=model, rule=options.rule, eps=float(options.eps)
        )
        scores[index * per_chunk : (index + 1) * per_chunk] = np.asarray(log_probs).reshape(-1)
    return scores[:n], params, carries
