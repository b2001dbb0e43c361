"""Read a model trained with the book's Keras code: ``Sequential([LSTM(...)..., Dense(vocab)])``.

A pure reader near the bottom of the import graph (numpy, h5py, this package's config and
vocabulary): ``keras_import.import_keras`` turns what it reads into a run directory.
It reads the two formats readers of the book have, without TensorFlow or Keras installed:

* Keras 3 ``.keras``: a zip of ``config.json`` and ``model.weights.h5``, where a layer's
  weights sit under ``layers/<snake_case class name>[_<n>]/...`` (Keras names them by class
  and order of appearance, not by the layer's own name);
* legacy HDF5 ``.h5`` (what Keras 2, the book's Keras, writes, and Keras 3's ``save("x.h5")``):
  the config in the ``model_config`` attribute, each layer's weights listed by the
  ``weight_names`` attribute of ``model_weights/<layer>``.

Keras' LSTM weights are ours unchanged: kernel (inputs, 4H) with gate order i, f, c, o,
recurrent kernel (H, 4H), bias (4H,); the one-hot input makes the first kernel our
embedding table. The saved layer config is honoured: Keras 2.0-2.2 defaulted
``recurrent_activation`` to ``hard_sigmoid``, which Keras 2 defines as
``clip(0.2 z + 0.5, 0, 1)`` and Keras 3 as ``clip(z / 6 + 0.5, 0, 1)``; the file's
``keras_version`` says which. Anything this model cannot represent is refused in one line.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charlm_jax.data.windows import Vocab, prepare_text
from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import TrainConfig


@dataclass(frozen=True)
class KerasModel:
    """What an imported file holds, in this project's terms."""

    lstm_weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per layer: kernel, recurrent, bias
    dense_kernel: np.ndarray  # (hidden, vocab)
    dense_bias: np.ndarray  # (vocab,)
    maxlen: int | None  # the input's time length, when the config fixes it
    recurrent_activation: str  # a config.RECURRENT_ACTIVATIONS name
    dropout: float
    keras_version: str

    @property
    def vocab_size(self) -> int:
        return self.dense_kernel.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.lstm_weights[0][1].shape[0]

    def describe(self) -> str:
        layers = " -> ".join(f"LSTM({w[1].shape[0]})" for w in self.lstm_weights)
        return f"{layers} -> Dense({self.vocab_size}) (Keras {self.keras_version})"


def read_keras_model(path: str | os.PathLike) -> KerasModel:
    """Parse a ``.keras`` or ``.h5`` file of a Sequential LSTM language model."""
    path = Path(path)
    if not path.is_file():
        raise CharLMError(f"no Keras model file at {str(path)!r}: pass the .keras or .h5 file the book's code saved")
    try:
        import h5py
    except ImportError:
        raise CharLMError('reading Keras files needs h5py: pip install -e ".[keras-files]"') from None
    try:
        if zipfile.is_zipfile(path):
            return _read_keras3(path, h5py)
        if h5py.is_hdf5(path):
            return _read_legacy_h5(path, h5py)
    except CharLMError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, json.JSONDecodeError) as error:
        raise CharLMError(
            f"{str(path)!r} is not a readable Keras model ({type(error).__name__}: {error}): "
            "pass a file saved by model.save()"
        ) from None
    raise CharLMError(
        f"{str(path)!r} is neither a Keras 3 .keras archive nor an HDF5 .h5 file: pass a file saved by model.save()"
    )


def _read_keras3(path: Path, h5py) -> KerasModel:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
        weights_file = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    layers = _sequential_layers(config)
    seen: dict[str, int] = {}

    def weights_of(layer: dict) -> list[np.ndarray]:
        snake = _snake_case(layer["class_name"])
        count = seen.get(snake, 0)
        seen[snake] = count + 1
        group = weights_file["layers"][snake if count == 0 else f"{snake}_{count}"]
        group = group["cell"] if "cell" in group else group
        return [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]

    return _assemble(layers, weights_of, keras_version=str(metadata.get("keras_version", "3")))


def _snake_case(class_name: str) -> str:
    """Keras' object-path name of a class: LSTM -> lstm, InputLayer -> input_layer."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _read_legacy_h5(path: Path, h5py) -> KerasModel:
    with h5py.File(path, "r") as handle:
        if "model_config" not in handle.attrs or "model_weights" not in handle:
            raise CharLMError(
                f"{str(path)!r} holds weights only (no model config): save the whole model "
                "with model.save(), not model.save_weights()"
            )
        config = json.loads(_text(handle.attrs["model_config"]))
        version = _text(handle.attrs.get("keras_version", "2"))
        group = handle["model_weights"]

        def weights_of(layer: dict) -> list[np.ndarray]:
            name = layer["config"]["name"]
            names = [_text(n) for n in group[name].attrs.get("weight_names", [])]
            order = {"kernel": 0, "recurrent_kernel": 1, "bias": 2}
            ranked = sorted(names, key=lambda n: order.get(n.rsplit("/", 1)[-1].split(":")[0], 9))
            return [np.asarray(group[name][n]) for n in ranked]

        return _assemble(_sequential_layers(config), weights_of, keras_version=version)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _sequential_layers(config: dict) -> list[dict]:
    if not isinstance(config, dict):
        raise CharLMError(
            f"the model's config is a JSON {type(config).__name__}, not an object: the file is "
            "damaged or was not written by model.save()"
        )
    if config.get("class_name") != "Sequential":
        raise CharLMError(
            f"the model is a {config.get('class_name')!r}, not a Sequential LSTM model as the "
            "book builds: only Sequential([LSTM(...), ..., Dense(vocab)]) imports"
        )
    inner = config["config"]
    return inner["layers"] if isinstance(inner, dict) else inner  # Keras 2.0-2.1 kept a bare list


def _assemble(layers: list[dict], weights_of, keras_version: str) -> KerasModel:
    lstm_weights, dense, maxlen, activation, dropout = [], None, None, None, 0.0
    for index, layer in enumerate(layers):
        kind, cfg = layer["class_name"], layer["config"]
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape is not None and len(shape) == 3:
            maxlen = shape[1]
        if kind == "InputLayer":
            continue
        if kind == "Dropout":
            dropout = max(dropout, float(cfg.get("rate", 0.0)))
            continue
        if dense is not None:
            raise CharLMError(
                f"layer {cfg.get('name')!r} ({kind}) follows the Dense output layer: only "
                "Sequential([LSTM(...), ..., Dense(vocab)]) imports"
            )
        if kind == "LSTM":
            _check_lstm(cfg, is_last=not any(later["class_name"] == "LSTM" for later in layers[index + 1 :]))
            layer_activation = _recurrent_activation(cfg.get("recurrent_activation", "hard_sigmoid"), keras_version)
            if activation is not None and layer_activation != activation:
                raise CharLMError("the LSTM layers use different recurrent activations: this model needs one")
            activation = layer_activation
            weights = weights_of(layer)
            if len(weights) != 3:
                raise CharLMError(
                    f"LSTM layer {cfg.get('name')!r} has {len(weights)} weight arrays, not kernel, "
                    "recurrent kernel and bias (use_bias=False is not supported)"
                )
            kernel, recurrent, bias = (np.asarray(w, np.float32) for w in weights)
            lstm_weights.append((kernel, recurrent, bias))
        elif kind == "Dense":
            if cfg.get("activation") not in ("softmax", "linear", None):
                raise CharLMError(
                    f"the output Dense layer's activation is {cfg.get('activation')!r}: only softmax "
                    "(the book's) or linear logits import"
                )
            weights = weights_of(layer)
            if len(weights) != 2:
                raise CharLMError("the output Dense layer has no bias (use_bias=False is not supported)")
            dense = [np.asarray(w, np.float32) for w in weights]
        else:
            raise CharLMError(
                f"layer {cfg.get('name')!r} is a {kind}: only LSTM, Dropout and a final Dense "
                "import (this is a character LSTM, the book's model)"
            )
    if not lstm_weights or dense is None:
        raise CharLMError("the model needs at least one LSTM layer and a final Dense layer, as the book's has")
    units = {w[1].shape[0] for w in lstm_weights}
    if len(units) != 1:
        raise CharLMError(
            f"the LSTM layers have different sizes {sorted(units)}: stacked layers must share one size to import"
        )
    assert activation is not None  # set by the first LSTM layer, and there is one
    return KerasModel(
        lstm_weights=lstm_weights,
        dense_kernel=dense[0],
        dense_bias=dense[1],
        maxlen=maxlen,
        recurrent_activation=activation,
        dropout=dropout,
        keras_version=keras_version,
    )


def _check_lstm(cfg: dict, is_last: bool) -> None:
    name = cfg.get("name")
    if cfg.get("activation", "tanh") != "tanh":
        raise CharLMError(
            f"LSTM layer {name!r} uses activation {cfg.get('activation')!r}: only tanh (the default) imports"
        )
    if cfg.get("go_backwards"):
        raise CharLMError(
            f"LSTM layer {name!r} reads backwards (go_backwards=True): not a left-to-right language model"
        )
    if bool(cfg.get("return_sequences", False)) == is_last:
        raise CharLMError(
            f"LSTM layer {name!r} has return_sequences={cfg.get('return_sequences')}: every LSTM "
            "but the last must return sequences and the last must not, as in the book's models"
        )


def _recurrent_activation(name: str, keras_version: str) -> str:
    if name == "sigmoid":
        return "sigmoid"
    if name == "hard_sigmoid":
        # Keras 1 and 2 define it as clip(0.2 z + 0.5, 0, 1); Keras 3 as clip(z / 6 + 0.5, 0, 1).
        return "hard_sigmoid_keras2" if keras_version.split(".")[0] in ("1", "2") else "hard_sigmoid"
    raise CharLMError(f"the LSTM's recurrent_activation is {name!r}: only sigmoid and hard_sigmoid import")


def keras_vocab(model: KerasModel, text: str | None = None, chars: str | None = None, lowercase: bool = True) -> Vocab:
    """The book's vocabulary, ``sorted(set(text.lower()))``, checked against the output layer's size."""
    source = prepare_text(text if text is not None else chars or "", lowercase)
    vocab = Vocab.from_text(source)
    if vocab.size != model.vocab_size:
        hint = "" if not lowercase else " (or --no-lowercase if it was trained on text that was not lower-cased)"
        raise CharLMError(
            f"the {'text' if text is not None else '--chars'} has {vocab.size} distinct characters but "
            f"the model's output layer has {model.vocab_size}: pass the text the model was "
            f"trained on{hint}"
        )
    first_kernel_rows = model.lstm_weights[0][0].shape[0]
    if first_kernel_rows != vocab.size:
        raise CharLMError(
            f"the first LSTM reads {first_kernel_rows} input features but the output layer has "
            f"{vocab.size} characters: a character model reads what it predicts"
        )
    return vocab


def keras_params(model: KerasModel) -> dict:
    """The model's weights in CharLSTM's parameter tree (as ``model.init_params`` lays it out)."""
    params: dict[str, Any] = {"input_kernel": {"embedding": model.lstm_weights[0][0]}}
    for layer, (kernel, recurrent, bias) in enumerate(model.lstm_weights):
        if layer > 0:
            params[f"input_kernel_{layer}"] = {"kernel": kernel}
        params[f"lstm_{layer}"] = {"recurrent_kernel": recurrent, "bias": bias}
    params["logits"] = {"kernel": model.dense_kernel, "bias": model.dense_bias}
    return params


def keras_config(model: KerasModel, maxlen: int | None, lowercase: bool) -> TrainConfig:
    """The book's training config around the imported model's shape (so ``train --resume`` continues it)."""
    maxlen = maxlen or model.maxlen
    if maxlen is None:
        raise CharLMError("the model's config does not fix its window length: pass --maxlen (the book's is 60)")
    return TrainConfig(
        maxlen=maxlen,
        lowercase=lowercase,
        hidden_size=model.hidden_size,
        num_layers=len(model.lstm_weights),
        dropout=model.dropout,
        recurrent_activation=model.recurrent_activation,
    )
