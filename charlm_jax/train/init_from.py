"""Fine-tuning: a new run that starts from another run's weights, on a text that may have other characters.

The vocabulary becomes the union of the source's characters and the new text's (sorted by code point, as
every vocabulary is). The rows of the input embedding and the columns of the output layer of a character
both know keep their trained values; a character only the new text has gets a new row and column by
``NEW_ROWS`` (``mean``: the mean of the trained rows and columns, its output bias the lowest trained bias,
so it starts as an average character that the model thinks rare; ``fresh``: the initialisation of a new
model; benchmarks/fine_tune.py measures both). Everything else is copied. The optimizer starts fresh (its
RMSprop statistics belong to the source text's gradients), and so do the run's steps, schedule and
records. The source run is only read; the new run records where it came from in ``init_from.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from charlm_jax.data.record import TextRecord
from charlm_jax.data.windows import Vocab
from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import TrainConfig

# The config fields a fine-tuned run takes from its source: they decide the weights' shapes and meaning.
MODEL_SHAPE_FIELDS = ("units", "hidden_size", "num_layers", "recurrent_activation", "lowercase")
NEW_ROWS = ("mean", "fresh")
DEFAULT_NEW_ROWS = "mean"
ORIGIN_NAME = "init_from.json"
# Fine-tuning's peak learning rate, as a share of the source's, unless one is given: half of it scored best of
# 1, 0.5 and 0.25 on the tuning text at 60 s (results/2026-12-05-cpu-fine-tune-sweep) and kept more of the
# source's skill than the full rate.
FINE_TUNE_LR_SCALE = 0.5


@dataclass(frozen=True)
class InitFrom:
    """A source run's weights, read once before the new run starts."""

    path: Path
    params: Any
    vocab: Vocab
    config: TrainConfig
    step: int
    text: TextRecord | None
    new_rows: str = DEFAULT_NEW_ROWS

    def origin(self) -> dict[str, Any]:
        """What the new run records of where it came from."""
        return {
            "source_run": str(self.path),
            "source_step": self.step,
            "source_text": self.text.to_json() if self.text is not None else None,
            "source_vocab_size": self.vocab.size,
            "new_rows": self.new_rows,
        }


def read_source(path: str | os.PathLike, new_rows: str = DEFAULT_NEW_ROWS) -> InitFrom:
    """The source run's newest intact weights, or one line naming why they cannot be read."""
    from charlm_jax.use.lm import load

    if new_rows not in NEW_ROWS:
        raise CharLMError(f"new_rows must be one of {NEW_ROWS}, got {new_rows!r}")
    source = Path(path)
    if not source.is_dir():
        raise CharLMError(f"--init-from {str(source)!r} is not a run directory: pass the --out of a trained run")
    try:
        lm = load(source)
    except CharLMError:
        raise
    except Exception as error:  # orbax's own errors about a missing or foreign directory
        raise CharLMError(
            f"--init-from {str(source)!r} holds no readable checkpoint ({type(error).__name__}): pass the --out of "
            "a trained run"
        ) from None
    return InitFrom(source.resolve(), lm.params, lm.vocab, lm.config, lm.step, lm.text, new_rows)


def fine_tune_config(source: TrainConfig, config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """The new run's config: the source's (its peak learning rate scaled by ``FINE_TUNE_LR_SCALE``), or
    ``config``, with ``overrides`` on top; a model shape that differs from the source's is refused, naming the
    fields."""
    values = dataclasses.asdict(config if config is not None else source)
    if config is None:
        values["learning_rate"] = source.learning_rate * FINE_TUNE_LR_SCALE
    values.update(overrides)
    values["temperatures"] = tuple(values["temperatures"])
    differing = [name for name in MODEL_SHAPE_FIELDS if values[name] != getattr(source, name)]
    if "units" in differing:  # no rule turns a character's weights into bytes' (or back) that would be worth it
        raise CharLMError(
            f"--init-from a model of {source.units} cannot start a model of {values['units']}: a model reads one kind "
            f"of unit; fine-tune with --units {source.units}, or train the {values['units']} model from scratch"
        )
    if differing:
        given = ", ".join(f"{name}={values[name]!r} (source: {getattr(source, name)!r})" for name in differing)
        raise CharLMError(
            f"--init-from keeps the source run's model shape, but {given}: drop those settings (a --recipe "
            "whose model differs too)"
        )
    return TrainConfig(**values)


def union_vocab(source: Vocab, text: Vocab) -> Vocab:
    """Both vocabularies' characters, sorted; a byte model's is every byte already."""
    if source.units == "bytes":
        return source
    return Vocab.from_text(source.chars + text.chars)


def transplant(init: InitFrom, fresh: Any, vocab: Vocab) -> Any:
    """The source's weights on ``vocab`` (a superset of the source's): known characters keep theirs, new ones
    are filled by ``init.new_rows`` (``fresh``: the rows ``fresh``, a new model's initialisation, holds)."""
    # (source vocab,): each source id's id in the new vocabulary (a byte model's: the same ids)
    rows = np.arange(vocab.size) if vocab.units == "bytes" else vocab.lookup(init.vocab.chars)[0]
    known = np.zeros(vocab.size, bool)
    known[rows] = True
    params = jax.tree.map(np.asarray, init.params)
    new = {name: dict(layer) for name, layer in jax.tree.map(np.asarray, fresh).items()}
    for name, layer in params.items():
        if name not in ("input_kernel", "logits"):
            new[name] = layer
    embedding, kernel, bias = params["input_kernel"]["embedding"], params["logits"]["kernel"], params["logits"]["bias"]
    new_embedding, new_kernel, new_bias = (
        new["input_kernel"]["embedding"].copy(),
        new["logits"]["kernel"].copy(),
        new["logits"]["bias"].copy(),
    )
    if init.new_rows == "mean":
        new_embedding[~known] = embedding.mean(axis=0)
        new_kernel[:, ~known] = kernel.mean(axis=1, keepdims=True)
        new_bias[~known] = bias.min()
    new_embedding[rows], new_kernel[:, rows], new_bias[rows] = embedding, kernel, bias
    new["input_kernel"] = {"embedding": new_embedding}
    new["logits"] = {"kernel": new_kernel, "bias": new_bias}
    return new


def write_origin(run_path: Path, init: InitFrom, vocab: Vocab) -> None:
    """``<run>/init_from.json``, written atomically: the source, its step and text record, what was added."""
    added = "".join(sorted(set(vocab.chars) - set(init.vocab.chars)))
    record = {**init.origin(), "added_characters": added, "vocab_size": vocab.size}
    temporary = run_path / (ORIGIN_NAME + ".tmp")
    temporary.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, run_path / ORIGIN_NAME)
