"""charlm-jax: the character-level LSTM of Deep Learning with Python 8.1, in JAX/Flax.

High level: ``fit`` a config (``TrainConfig``, or ``recipe_config(name)``) on a text; ``load``
a checkpoint (or ``import_keras`` a model of the book's Keras code) and ``generate``, ``stream``
or ``score`` text.
Lower level, all pure: ``data`` (vocab, windows), ``lstm`` (the LSTM layer and its
hand-derived backward), ``model`` (CharLSTM), ``train`` (optimizer, train/eval steps),
``sampling`` (sample), ``decode`` (generate_ids, one jitted scan).
"""

from charlm_jax.config import BOOK_TEMPERATURES, TrainConfig
from charlm_jax.corpus import load_text
from charlm_jax.data import Vocab
from charlm_jax.decode import generate_ids
from charlm_jax.errors import CharLMError
from charlm_jax.keras_import import import_keras
from charlm_jax.lm import LanguageModel, bits_per_char, generate, load, score, stream
from charlm_jax.loop import FitResult, fit
from charlm_jax.options import GenerationOptions
from charlm_jax.recipes import RECIPES, recipe_config
from charlm_jax.sampling import sample

__all__ = [
    "BOOK_TEMPERATURES", "CharLMError", "FitResult", "GenerationOptions", "LanguageModel", "RECIPES", "TrainConfig",
    "Vocab",
    "bits_per_char", "fit", "generate", "generate_ids", "import_keras", "load", "load_text", "recipe_config",
    "sample", "score",
    "stream",
]
__version__ = "0.1.0"
