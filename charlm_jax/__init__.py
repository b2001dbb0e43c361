"""charlm-jax: the character-level LSTM of Deep Learning with Python 8.1, in JAX/Flax.

High level: ``fit`` a config (``TrainConfig``, or ``recipe_config(name)``) on a text; ``load``
a checkpoint (or ``import_keras`` a model of the book's Keras code) and ``generate``, ``stream``
or ``score`` text with ``GenerationOptions``.
Lower level, all pure: ``data`` (vocab, windows), ``lstm`` (the LSTM layer and its
hand-derived backward), ``model`` (CharLSTM), ``train`` (optimizer, train/eval steps),
``sampling`` (sample), ``decode`` (generate_ids, one jitted scan), ``scoring`` (the metric).

The names below are imported when first used (PEP 562), so ``import charlm_jax.settings.config`` or
``charlm-jax --help`` does not start JAX; ``from charlm_jax import fit`` imports what ``fit`` needs.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "AdaptOptions": "settings.adapt",
    "BOOK_TEMPERATURES": "settings.config",
    "TrainConfig": "settings.config",
    "load_text": "data.corpus",
    "Vocab": "data.windows",
    "generate_ids": "use.decode",
    "CharLMError": "errors",
    "import_keras": "interop.keras_import",
    "LanguageModel": "use.lm",
    "bits_per_char": "use.lm",
    "generate": "use.lm",
    "load": "use.lm",
    "next_char_probabilities": "use.lm",
    "score": "use.lm",
    "stream": "use.lm",
    "with_compute_dtype": "use.lm",
    "beam_search": "use.beam",
    "copy_check": "use.copies",
    "Hypothesis": "use.beam",
    "inspect": "use.inside",
    "Inspection": "use.inside",
    "rank_cells": "use.cells",
    "text_features": "use.cells",
    "FitResult": "train.run",
    "Limits": "train.run",
    "fit": "train.loop",
    "fine_tune": "train.loop",
    "GenerationOptions": "settings.generation",
    "RECIPES": "settings.recipes",
    "recipe_config": "settings.recipes",
    "sample": "use.sampling",
    "use_every_core": "runtime.distributed",
    "configure_cpu_devices": "runtime.distributed",
    "ServerThread": "serve.run",
    "ServeOptions": "settings.serving",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'charlm_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"charlm_jax.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
