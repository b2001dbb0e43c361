"""Import a model of the book's Keras code as a run directory (``charlm-jax import-keras``).

The file is read by ``keras_files`` (a pure reader); the run starts as every run does, through
``run_dir.write_new_run`` (a step-0 checkpoint with a fresh optimizer state) and ``run_dir.new_run_prompt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from charlm_jax.data.record import record_of
from charlm_jax.data.windows import prepare_text
from charlm_jax.errors import CharLMError
from charlm_jax.interop.keras_files import keras_config, keras_params, keras_vocab, read_keras_model
from charlm_jax.io.checkpoint import CheckpointStore, file_in_the_way
from charlm_jax.model.charlstm import build_model, init_params
from charlm_jax.train.run_dir import make_run_directory, new_run_prompt, write_new_run
from charlm_jax.use.lm import LanguageModel, load


def import_keras(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    text: str | None = None,
    chars: str | None = None,
    lowercase: bool = True,
    maxlen: int | None = None,
) -> LanguageModel:
    """Turn a Keras file into a run directory that ``load``, ``generate``, ``eval`` and ``train --resume``
    accept; returns the loaded ``LanguageModel``.

    Everything is read and checked before ``out_dir`` is touched, so a refused file writes
    nothing. The Keras optimizer state is not imported: a resumed run starts RMSprop afresh.
    """
    if (text is None) == (chars is None):
        raise CharLMError("pass the training text (--text or --corpus) or its characters (--chars), one of them")
    from charlm_jax.runtime.distributed import use_every_core

    use_every_core()
    model = read_keras_model(model_path)
    vocab = keras_vocab(model, text, chars, lowercase)
    config = keras_config(model, maxlen, lowercase)
    imported = keras_params(model)
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), build_model(config, vocab.size), config.maxlen))
    expected = jax.tree.map(lambda p: p.shape, shapes)
    if (
        str(jax.tree.structure(imported)) != str(jax.tree.structure(shapes))
        or jax.tree.map(lambda p: p.shape, imported) != expected
    ):
        raise CharLMError(
            f"the model's weight shapes {jax.tree.map(lambda p: p.shape, imported)} do not fit "
            f"an LSTM of its size {expected}: the file is damaged or not the book's model"
        )
    if text is not None:
        default_prompt = new_run_prompt(config, vocab, vocab.encode(prepare_text(text, lowercase)))
    else:
        default_prompt = " " if " " in vocab.chars else vocab.chars[0]
    out = Path(out_dir)
    if (blocker := file_in_the_way(out)) is not None:
        raise CharLMError(f"{str(blocker)!r} is a file, so {str(out)!r} cannot be a run directory: pass another --out")
    if out.is_dir() and any(out.iterdir()):
        raise CharLMError(f"{str(out)!r} is not empty: pass a new --out for the imported model")
    with CheckpointStore(make_run_directory(out)) as store:
        # The text it was trained on, when given, is recorded: train --resume and eval read it again.
        write_new_run(store, config, vocab, default_prompt, params=imported, text=record_of(text) if text else None)
    return load(out)
