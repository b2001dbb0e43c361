"""Any Python integer as a ``jax.random`` key: the one rule every seed goes through.

``jax.random.key`` takes a C long, and with 64-bit mode off it keeps only the low 32 bits (seeds 0 and
2**32 give one key). A seed taken from a clock or a hash is often wider. The rule:

- a seed in the 32-bit signed range ``[-2**31, 2**31)`` is ``jax.random.key(seed)``, as JAX does it;
- any other integer is written as its sign and its 32-bit words, least significant first, and its key is
  ``jax.random.key(n)`` (``n`` the number of words, ``-n`` for a negative seed) folded with each word in
  turn (``jax.random.fold_in``).

So the same seed always gives the same key (and text), and two different seeds give different keys
(a fold chain of words never equals a plain key short of a 64-bit hash collision). Pure and host-side:
the words are Python integers, so nothing overflows before JAX sees them.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from charlm_jax.errors import CharLMError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
WORD_BITS = 32


def check_seed(seed: Any) -> int:
    """``seed`` as a Python int, refused in one line if it is not an integer (a bool is not a seed)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CharLMError(f"seed must be an integer (any size), got {seed!r}: pass e.g. --seed 0")
    return int(seed)


def is_plain_seed(seed: int) -> bool:
    """Whether ``seed`` is one ``jax.random.key`` takes as it is (the 32-bit signed range)."""
    return INT32_MIN <= seed <= INT32_MAX


def seed_words(seed: int) -> list[int]:
    """The 32-bit words of ``abs(seed)``, least significant first (at least one)."""
    magnitude = abs(seed)
    words = []
    while True:
        words.append(magnitude & (2**WORD_BITS - 1))
        magnitude >>= WORD_BITS
        if not magnitude:
            return words


def seed_key(seed: Any) -> jax.Array:
    """The ``jax.random`` key of an integer seed of any size, by the rule in this module's docstring."""
    seed = check_seed(seed)
    if is_plain_seed(seed):
        return jax.random.key(seed)
    words = seed_words(seed)
    key = jax.random.key(-len(words) if seed < 0 else len(words))
    for word in words:
        key = jax.random.fold_in(key, np.uint32(word))
    return key
