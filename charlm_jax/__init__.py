"""charlm-jax: the character-level LSTM of Deep Learning with Python 8.1, in JAX/Flax.

High level: ``load`` a checkpoint and ``generate`` text, or ``fit`` a config (``TrainConfig``,
or ``recipe_config("book" | "fast")``) on a text.
Lower level, all pure: ``data`` (vocab, windows), ``lstm`` (the LSTM layer and its
hand-derived backward), ``model`` (CharLSTM), ``train`` (optimizer, train/eval steps),
``sampling`` (sample), ``decode`` (generate_ids, one jitted scan).
"""

from charlm_jax.config import BOOK_TEMPERATURES, TrainConfig
from charlm_jax.corpus import load_text
from charlm_jax.data import Vocab
from charlm_jax.errors import CharLMError
from charlm_jax.decode import generate_ids
from charlm_jax.lm import LanguageModel, generate, load
from charlm_jax.loop import FitResult, fit
from charlm_jax.recipes import RECIPES, recipe_config
from charlm_jax.sampling import sample

__all__ = [
    "BOOK_TEMPERATURES", "CharLMError", "FitResult", "LanguageModel", "RECIPES", "TrainConfig", "Vocab",
    "fit", "generate", "generate_ids", "load", "load_text", "recipe_config", "sample",
]
__version__ = "0.1.0"
