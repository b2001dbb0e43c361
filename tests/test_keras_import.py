"""Importing the book's Keras models: both file formats, stacked layers, Keras 2's hard sigmoid, bad files.

Keras 3 (JAX backend) builds and briefly trains real models here, saves them as .keras and
legacy .h5, and the imported model's next-character probabilities must equal model.predict's.
A Keras 2 file (the book's Keras, which this environment cannot run) is written with h5py in
Keras 2's own layout and checked against Keras 2's LSTM equations written out in numpy.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import charlm_jax  # noqa: E402
from charlm_jax.cli.app import main  # noqa: E402
from charlm_jax.errors import CharLMError  # noqa: E402

from helpers import TINY_TEXT  # noqa: E402

h5py = pytest.importorskip("h5py")  # all that reading either format needs (the keras-files extra)

MAXLEN = 10
TEXT = TINY_TEXT.lower()
CHARS = sorted(set(TEXT))
VOCAB = len(CHARS)


def one_hot_windows(starts):
    index = {c: i for i, c in enumerate(CHARS)}
    x = np.zeros((len(starts), MAXLEN, VOCAB), np.float32)
    for row, start in enumerate(starts):
        for t, char in enumerate(TEXT[start : start + MAXLEN]):
            x[row, t, index[char]] = 1.0
    return x


def book_model(keras, *layers):
    """The book's Sequential model around the given LSTM stack, trained for one short epoch."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((MAXLEN, VOCAB)), *layers, keras.layers.Dense(VOCAB, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    starts = np.arange(0, len(TEXT) - MAXLEN, 3)
    targets = np.eye(VOCAB, dtype=np.float32)[[CHARS.index(TEXT[s + MAXLEN]) for s in starts]]
    model.fit(one_hot_windows(starts), targets, batch_size=64, epochs=1, verbose=0)
    return model


def our_probabilities(lm, starts):
    windows = jnp.asarray([[CHARS.index(c) for c in TEXT[s : s + MAXLEN]] for s in starts])
    _, logits = lm.model.apply({"params": lm.params}, windows, last_only=True)
    return np.asarray(jax.nn.softmax(logits))


class SavedModels(dict):
    """Real models of Keras 3, each built and saved in both formats the first time a test asks for it."""

    def __init__(self, keras, folder) -> None:
        super().__init__()
        self.keras, self.folder, self.paths = keras, folder, _Paths(self)

    def __missing__(self, name: str):
        layers = self.keras.layers
        stacks = {
            "book": lambda: [layers.LSTM(16)],
            "stacked": lambda: [layers.LSTM(12, return_sequences=True), layers.Dropout(0.2), layers.LSTM(12)],
            "hard_sigmoid": lambda: [layers.LSTM(16, recurrent_activation="hard_sigmoid")],
        }
        model = book_model(self.keras, *stacks[name]())
        for suffix in (".keras", ".h5"):
            model.save(self.folder / f"{name}{suffix}")
        self[name] = model
        return model


class _Paths:
    def __init__(self, models: SavedModels) -> None:
        self.models = models

    def __getitem__(self, key: tuple[str, str]):
        name, suffix = key
        self.models[name]  # built on first use
        return self.models.folder / f"{name}{suffix}"


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """(models, paths): the tests that need Keras are skipped without it (the dev extra has it)."""
    keras = pytest.importorskip("keras")
    models = SavedModels(keras, tmp_path_factory.mktemp("keras"))
    return models, models.paths


# By default one model in each file format (the book's as .keras, Keras 2's hard sigmoid as .h5; the book's
# own .h5, as the seeds saved it, is imported by test_cli_import_then_generate_eval_and_resume); the other
# four pairs, the same readers on other models (stacked layers among them), run with the slow set.
KERAS_CASES = [
    (name, suffix)
    if (name, suffix) in {("book", ".keras"), ("hard_sigmoid", ".h5")}
    else pytest.param(name, suffix, marks=pytest.mark.slow)
    for name in ("book", "stacked", "hard_sigmoid")
    for suffix in (".keras", ".h5")
]


@pytest.mark.parametrize("name,suffix", KERAS_CASES)
def test_imported_probabilities_equal_keras_predict(saved_models, tmp_path, name, suffix):
    models, paths = saved_models
    lm = charlm_jax.import_keras(paths[name, suffix], tmp_path / "run", text=TINY_TEXT)
    starts = np.random.default_rng(0).integers(0, len(TEXT) - MAXLEN, 32)
    expected = models[name].predict(one_hot_windows(starts), verbose=0)
    np.testing.assert_allclose(our_probabilities(lm, starts), expected, atol=1e-5)
    assert lm.config.maxlen == MAXLEN and lm.vocab.chars == "".join(CHARS)
    assert lm.config.num_layers == (2 if name == "stacked" else 1)
    assert lm.config.recurrent_activation == ("hard_sigmoid" if name == "hard_sigmoid" else "sigmoid")
    texts = charlm_jax.generate(lm, "the quick", length=30, temperatures=[0.5, 1.0])
    assert [len(t) for t in texts] == [30, 30] and set("".join(texts)) <= set(CHARS)


def write_keras2_h5(path, kernel, recurrent, bias, dense_kernel, dense_bias, maxlen, vocab):
    """A file in the layout Keras 2.1 writes for the book's model (config as a bare layer list)."""
    config = {
        "class_name": "Sequential",
        "config": [
            {
                "class_name": "LSTM",
                "config": {
                    "name": "lstm_1",
                    "units": recurrent.shape[0],
                    "activation": "tanh",
                    "recurrent_activation": "hard_sigmoid",
                    "return_sequences": False,
                    "go_backwards": False,
                    "batch_input_shape": [None, maxlen, vocab],
                },
            },
            {"class_name": "Dense", "config": {"name": "dense_1", "units": vocab, "activation": "softmax"}},
        ],
    }
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.1.6"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["model_config"] = json.dumps(config).encode()
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = [b"lstm_1", b"dense_1"]
        for layer, arrays in (
            ("lstm_1", {"kernel:0": kernel, "recurrent_kernel:0": recurrent, "bias:0": bias}),
            ("dense_1", {"kernel:0": dense_kernel, "bias:0": dense_bias}),
        ):
            group = weights.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/{name}".encode() for name in arrays]
            for name, value in arrays.items():
                group.create_dataset(f"{layer}/{name}", data=value)


def keras2_reference(one_hot, kernel, recurrent, bias, dense_kernel, dense_bias):
    """Keras 2's LSTM with its hard_sigmoid, clip(0.2 z + 0.5, 0, 1), then Dense softmax (float64)."""
    hard_sigmoid = lambda z: np.clip(0.2 * z + 0.5, 0.0, 1.0)  # noqa: E731
    hidden = recurrent.shape[0]
    h = np.zeros((one_hot.shape[0], hidden))
    c = np.zeros_like(h)
    for t in range(one_hot.shape[1]):
        z = one_hot[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = hard_sigmoid(f) * c + hard_sigmoid(i) * np.tanh(g)
        h = hard_sigmoid(o) * np.tanh(c)
    logits = h @ dense_kernel + dense_bias
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_a_keras2_file_uses_keras2s_hard_sigmoid(tmp_path):
    rng = np.random.default_rng(1)
    hidden = 8
    arrays = [
        rng.normal(0, 0.8, shape).astype(np.float32)
        for shape in [(VOCAB, 4 * hidden), (hidden, 4 * hidden), (4 * hidden,), (hidden, VOCAB), (VOCAB,)]
    ]
    path = tmp_path / "book_keras2.h5"
    write_keras2_h5(path, *arrays, MAXLEN, VOCAB)
    lm = charlm_jax.import_keras(path, tmp_path / "run", text=TINY_TEXT)
    assert lm.config.recurrent_activation == "hard_sigmoid_keras2"
    starts = np.arange(0, 200, 7)
    expected = keras2_reference(one_hot_windows(starts).astype(np.float64), *[a.astype(np.float64) for a in arrays])
    np.testing.assert_allclose(our_probabilities(lm, starts), expected, atol=1e-5)


def test_cli_import_then_generate_eval_and_resume(capsys, saved_models, tmp_path):
    _, paths = saved_models
    text_file = tmp_path / "text.txt"
    text_file.write_text(TINY_TEXT)
    out = tmp_path / "imported"
    assert main(["import-keras", str(paths["book", ".h5"]), "--text", str(text_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LSTM(16) x 1 -> Dense(28)" in printed and "fresh RMSprop" in printed
    assert main(["generate", "--checkpoint", str(out), "--prompt", "the quick", "--length", "20"]) == 0
    assert main(["eval", "--checkpoint", str(out), "--text", str(text_file), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])["bits_per_char"]
    assert printed == pytest.approx(charlm_jax.bits_per_char(charlm_jax.load(out), TINY_TEXT), rel=1e-12)
    before = charlm_jax.bits_per_char(charlm_jax.load(out), TEXT[-200:])
    assert (
        main(
            [
                "train",
                "--text",
                str(text_file),
                "--out",
                str(out),
                "--resume",
                "--epochs",
                "2",
                "--sample-length",
                "0",
                "--no-progress",
                "--batch-size",
                "16",
            ]
        )
        != 0
    )  # settings differ: refused
    assert (
        main(
            [
                "train",
                "--text",
                str(text_file),
                "--out",
                str(out),
                "--resume",
                "--epochs",
                "2",
                "--sample-length",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert charlm_jax.load(out).step > 0 and charlm_jax.bits_per_char(charlm_jax.load(out), TEXT[-200:]) != before


def test_bad_files_are_one_line_errors_and_write_nothing(saved_models, tmp_path):
    models, paths = saved_models
    out = tmp_path / "never"
    cases = [
        (paths["book", ".keras"], {"text": TINY_TEXT + "~#%"}, "distinct characters but the model's output layer has"),
        (paths["book", ".h5"], {"chars": "abc"}, "distinct characters"),
    ]
    not_a_model = tmp_path / "notes.h5"
    not_a_model.write_text("just text")
    cases.append((not_a_model, {"text": TINY_TEXT}, "neither a Keras 3 .keras archive nor an HDF5"))
    weights_only = tmp_path / "weights.weights.h5"
    models["book"].save_weights(weights_only)
    cases.append((weights_only, {"text": TINY_TEXT}, "weights only"))
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    gru = keras.Sequential([keras.Input((MAXLEN, VOCAB)), keras.layers.GRU(8), keras.layers.Dense(VOCAB)])
    gru.save(tmp_path / "gru.keras")
    cases.append((tmp_path / "gru.keras", {"text": TINY_TEXT}, "is a GRU"))
    cases.append((tmp_path / "missing.keras", {"text": TINY_TEXT}, "no Keras model file"))
    for path, kwargs, fragment in cases:
        with pytest.raises(CharLMError, match=fragment):
            charlm_jax.import_keras(path, out, **kwargs)
        assert not out.exists()


def test_a_keras_file_whose_config_is_not_an_object_is_one_line(tmp_path, capsys):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(["not", "an", "object"])
        handle.create_group("model_weights")
    assert main(["import-keras", str(path), "--chars", "abc", "--out", str(tmp_path / "imported")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("charlm-jax: error: ") and "the model's config is a JSON list" in line
    assert "not an object" in line and not (tmp_path / "imported").exists()
