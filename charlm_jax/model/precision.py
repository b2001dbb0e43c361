"""The compute dtype: which precision the model's matrix products run in.

``float32`` is the book's arithmetic. ``bfloat16`` runs the LSTM's recurrent product (forward and the
hand-written backward), the deeper layers' input projections and the output layer in bfloat16 with
float32 accumulation and float32 results, as mixed-precision training does on GPUs and TPUs; the state,
the cell's non-linearities, the loss, the optimizer and the master weights stay float32 (the parameters
are cast to bfloat16 where a product reads them, and their gradients arrive in float32). The embedding
lookup that feeds the first layer is a gather, not a product, and stays float32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from charlm_jax.settings.config import COMPUTE_DTYPES  # noqa: F401  (the names a config may hold)


def is_mixed(compute_dtype: str) -> bool:
    """True when products run below float32 (nothing changes for float32: float64 tests stay exact)."""
    return compute_dtype != "float32"


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """``a @ b``; in a mixed dtype both operands rounded to it, the products accumulated in float32."""
    if not is_mixed(compute_dtype):
        return a @ b
    dtype = jnp.dtype(compute_dtype)
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def einsum(spec: str, a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """``jnp.einsum(spec, a, b)`` with ``matmul``'s rounding and float32 accumulation."""
    if not is_mixed(compute_dtype):
        return jnp.einsum(spec, a, b)
    dtype = jnp.dtype(compute_dtype)
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _promote_but_bias(inputs, kernel, bias, *, dtype):
    """Flax Dense's promotion, except the bias: it is added to the float32 product in float32."""
    return inputs.astype(dtype), kernel.astype(dtype), bias


def dense_options(compute_dtype: str) -> dict:
    """Keyword arguments of ``flax.linen.Dense`` for ``compute_dtype`` (none for float32)."""
    if not is_mixed(compute_dtype):
        return {}
    return {
        "dtype": jnp.dtype(compute_dtype),
        "promote_dtype": _promote_but_bias,
        "dot_general": partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
    }
