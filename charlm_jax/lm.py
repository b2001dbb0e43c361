"""The Python API for researchers' scripts: load a checkpoint, generate text.

    lm = charlm_jax.load("runs/book")
    texts = charlm_jax.generate(lm, "the meaning of ", length=400,
                                temperatures=(0.2, 0.5, 1.0, 1.2), seed=0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.config import BOOK_TEMPERATURES, TrainConfig
from charlm_jax.data import Vocab
from charlm_jax.errors import CharLMError
from charlm_jax.decode import check_generation_args, generate_ids
from charlm_jax.model import CharLSTM, build_model, init_params


@dataclass(frozen=True)
class LanguageModel:
    """A trained model: parameters plus everything needed to read and write its text."""

    params: dict
    vocab: Vocab
    config: TrainConfig
    default_prompt: str
    step: int = 0

    @property
    def model(self) -> CharLSTM:
        return build_model(self.config, self.vocab.size)

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """Prompt ids after the training text's own preprocessing (lower-casing)."""
        if not isinstance(prompt, str) or not prompt:
            raise CharLMError("prompt is empty: pass some text, e.g. --prompt 'the '")
        if self.config.lowercase:
            prompt = prompt.lower()
        return self.vocab.encode(prompt, what="prompt")


def load(checkpoint_dir: str | os.PathLike, step: int | None = None) -> LanguageModel:
    """The model saved in a training run's output directory (latest step unless ``step``)."""
    from charlm_jax.checkpoint import CheckpointStore, abstract_tree

    store = CheckpointStore(checkpoint_dir, create=False)
    try:
        meta = store.restore_meta(step)
        model = build_model(meta.config, meta.vocab.size)
        shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), model, meta.config.maxlen))
        params, _ = store.restore(abstract_tree(shapes), step=meta.step)
    finally:
        store.close()
    return LanguageModel(params=params, vocab=meta.vocab, config=meta.config,
                         default_prompt=meta.default_prompt, step=meta.step)


def generate(lm: LanguageModel, prompt: str | None = None, length: int = 400,
             temperatures: Sequence[float] | float = BOOK_TEMPERATURES, seed: int | jax.Array = 0,
             mode: str = "stateful", *, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, include_prompt: bool = False, mesh=None) -> list[str]:
    """One generated string per temperature, all drawn in one jitted call.

    ``prompt`` defaults to the excerpt of training text saved in the checkpoint.
    ``seed`` is an int or a ``jax.random`` key. With a ``mesh`` (see
    ``charlm_jax.distributed.make_mesh``) the temperature rows are split over its
    devices; the text is the same as unsharded for the same seed. The prompt goes through the
    training preprocessing (lower-casing by default); characters outside the
    vocabulary are refused with an error naming them.
    """
    temps = check_generation_args(length, temperatures, mode, top_k=top_k, top_p=top_p, min_p=min_p)
    prompt = lm.default_prompt if prompt is None else prompt
    prompt_ids = lm.encode_prompt(prompt)
    key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    batch_prompts = np.broadcast_to(prompt_ids, (len(temps), len(prompt_ids)))  # (temps, prompt)
    params, prompt_rows, temp_rows = lm.params, jnp.asarray(batch_prompts), jnp.asarray(temps)
    if mesh is not None:
        from charlm_jax.distributed import put_global, replicated, shard_rows

        params = jax.tree.map(lambda x: put_global(np.asarray(x), replicated(mesh)), lm.params)
        prompt_rows, temp_rows = shard_rows(mesh, batch_prompts, temps)
    ids = generate_ids(params, key, prompt_rows, temp_rows,
                       model=lm.model, length=int(length), mode=mode, maxlen=lm.config.maxlen,
                       top_k=top_k, top_p=top_p, min_p=min_p)
    ids = np.asarray(ids)
    head = prompt if include_prompt else ""
    return [head + lm.vocab.decode(row) for row in ids]
