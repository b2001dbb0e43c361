"""Dynamic evaluation's settings, checked when built; imports neither JAX nor numpy (the CLI's --help reads them)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

from charlm_jax.errors import CharLMError

RULES = ("rms", "sgd")


@dataclass(frozen=True)
class AdaptOptions:
    """How the weights adapt while a text is read (``charlm_jax.use.adapt`` explains the rules); checked when built.

    The defaults are the best of a first sweep by ``benchmarks/dynamic_eval.py`` on the tuning texts (pydoc
    and python-source), on small models (300 steps of the streams recipe): see docs/generation.md.
    ``scale_batches`` batches of ``scale_batch`` training windows estimate the gradient scale of ``rms``.
    """

    learning_rate: float = 3e-4
    decay: float = 1e-3
    segment: int = 25
    rule: str = "rms"
    eps: float = 1e-5
    scale_batches: int = 32
    scale_batch: int = 32

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise CharLMError(f"adaptation rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        for name in ("learning_rate", "decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CharLMError(f"adaptation {name} must be a finite number >= 0, got {value!r}")
        if self.decay >= 1:
            raise CharLMError(
                f"adaptation decay must be < 1 (a fraction of the way back per segment), got {self.decay}"
            )
        for name in ("segment", "scale_batches", "scale_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise CharLMError(f"adaptation {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise CharLMError(f"adaptation eps must be > 0, got {self.eps!r}")

    def replace(self, **changes: Any) -> AdaptOptions:
        return replace(self, **changes)


def as_adapt_options(adapt: bool | AdaptOptions | None) -> AdaptOptions | None:
    """``adapt=True`` is the defaults; an ``AdaptOptions`` itself; False/None no adaptation."""
    if adapt is None or adapt is False:
        return None
    if adapt is True:
        return AdaptOptions()
    if isinstance(adapt, AdaptOptions):
        return adapt
    raise CharLMError(f"adapt must be True, False or an AdaptOptions, got {adapt!r}")
