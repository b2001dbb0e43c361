"""Byte models (--units bytes) and characters a character model never saw (--unseen).

A byte model reads any file (valid UTF-8 or not) as its bytes, trains on windows or streams, from a string
or a memory-mapped prepared corpus, scores in bits per byte, adapts, samples from its distribution, and
turns its output back into text under one stated rule. A character model refuses a character it never saw,
or leaves it out and says how many: never a silent figure.
"""

import json
import warnings

import jax
import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.data.prepared import prepare
from charlm_jax.data.windows import Vocab
from charlm_jax.errors import CharLMError, CharLMWarning
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.train.loop import fine_tune
from charlm_jax.use.decode import generate_ids

from helpers import QUIET, TINY_CLI_FLAGS, TINY_TEXT, tiny_config
from stats import ALPHA, chi_square_p_value

# Two- three- and four-byte characters, and a byte (0xff) that is never part of UTF-8.
MIXED_BYTES = ("naïve café — 東京 😀 ".encode() + b"\xff raw " + TINY_TEXT[:300].encode()) * 4


@pytest.fixture(scope="module")
def byte_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "mixed.bin"
    path.write_bytes(MIXED_BYTES)
    return path


@pytest.fixture(scope="module")
def byte_run(byte_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("byte_run") / "run"
    text = charlm_jax.load_text(byte_file, units="bytes")
    result = charlm_jax.fit(tiny_config(units="bytes", lowercase=False, epochs=2), text, out, console=QUIET)
    return out, result


def test_a_byte_vocabulary_is_every_byte_and_round_trips_any_text():
    vocab = Vocab.of_bytes()
    assert vocab.size == 256 and vocab.unit == "byte"
    text = "naïve 東京 😀"
    ids = vocab.encode(text)
    assert ids.tolist() == list(text.encode()) and vocab.decode(ids) == text
    # A file's undecodable byte survives reading and encoding: its id is the byte itself.
    read = MIXED_BYTES.decode("utf-8", "surrogateescape")
    assert vocab.decode_bytes(vocab.encode(read)) == MIXED_BYTES


def test_output_that_is_not_utf8_decodes_by_the_stated_rule_and_streams_the_same():
    vocab = Vocab.of_bytes()
    ids = np.array(list("ok 😀".encode()) + [0xFF] + list("é".encode())[:1], np.int32)
    assert vocab.decode(ids) == "ok 😀\ufffd\ufffd"  # a stray byte and a cut-short character: one U+FFFD each
    for cut in range(1, len(ids)):  # a character split across two pieces waits for the second
        decode = vocab.decoder()
        assert decode(ids[:cut], False) + decode(ids[cut:], False) + decode(ids[:0], True) == vocab.decode(ids)


def test_a_byte_run_trains_scores_in_bits_per_byte_and_resumes(byte_run, byte_file, capsys):
    out, result = byte_run
    lm = charlm_jax.load(out)
    assert lm.config.units == "bytes" and lm.vocab == Vocab.of_bytes()
    assert np.isfinite(result.history[-1]["val_bits_per_char"])
    lm.encode_prompt(lm.default_prompt)  # the saved prompt is whole characters of the text
    held_out = charlm_jax.score(lm)  # the run's own tail, read again as bytes
    tail = MIXED_BYTES[-len(held_out) :]
    assert len(held_out) == len(tail)
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["unit"] == "byte" and record["bytes"] == len(held_out)
    assert record["bits_per_byte"] == pytest.approx(float(-held_out.mean()), rel=1e-5)
    resumed = charlm_jax.fit(None, None, out, resume=True, overrides={"epochs": 3}, console=QUIET)
    assert resumed.history[-1]["epoch"] == 3


def test_a_byte_model_generates_text_and_stream_equals_generate(byte_run):
    lm = charlm_jax.load(byte_run[0])
    texts = charlm_jax.generate(lm, "café ", length=120, temperatures=(0.5, 1.0), seed=3)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    assert len(texts[1].encode("utf-8", "surrogatepass")) >= 1
    streamed = "".join(charlm_jax.stream(lm, "café ", length=120, temperature=1.0, row=1, seed=3, chunk=7))
    assert streamed == texts[1]


def test_a_byte_models_first_draw_follows_its_distribution(byte_run):
    """The sampler over 256 byte values draws softmax(logits / T), as it does over characters."""
    lm = charlm_jax.load(byte_run[0])
    prompt = lm.encode_prompt("the quick ")
    rows, temperature = 20_000, 0.8
    options = GenerationOptions(length=1, temperatures=np.full(rows, temperature))
    ids = generate_ids(
        lm.params, jax.random.key(5), np.tile(prompt, (rows, 1)), options, model=lm.model, maxlen=lm.config.maxlen
    )
    counts = np.bincount(np.asarray(ids)[:, 0], minlength=256)
    expected = charlm_jax.next_char_probabilities(lm, "the quick ", (temperature,))[0]
    assert chi_square_p_value(counts, expected) > ALPHA
    assert chi_square_p_value(counts, charlm_jax.next_char_probabilities(lm, "the quick ", (1.6,))[0]) < 1e-6


def test_a_prepared_byte_corpus_trains_like_the_string(byte_file, byte_run, tmp_path):
    corpus = prepare(byte_file, tmp_path / "prepared", lowercase=False, units="bytes")
    assert corpus.units == "bytes" and corpus.ids.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(corpus.ids), np.frombuffer(MIXED_BYTES, np.uint8))
    lm = charlm_jax.load(byte_run[0])
    np.testing.assert_allclose(charlm_jax.score(lm, corpus), charlm_jax.score(lm), rtol=1e-6)
    streams = tiny_config(units="bytes", lowercase=False, batching="streams", objective="dense")
    result = charlm_jax.fit(streams, corpus, tmp_path / "streams", console=QUIET)
    assert np.isfinite(result.history[-1]["val_bits_per_char"])
    with pytest.raises(CharLMError, match="holds bytes but this run reads chars"):
        charlm_jax.fit(tiny_config(lowercase=False), corpus, tmp_path / "chars", console=QUIET)


def test_a_byte_model_adapts_while_it_reads(byte_run):
    lm = charlm_jax.load(byte_run[0])
    text = MIXED_BYTES[:600].decode("utf-8", "surrogateescape")
    plain = charlm_jax.score(lm, text, mode="stateful")
    adapted = charlm_jax.score(lm, text, mode="stateful", adapt=charlm_jax.AdaptOptions(rule="sgd", segment=50))
    assert plain.shape == adapted.shape == (len(MIXED_BYTES[:600]) - 1,) and np.isfinite(adapted).all()


def test_a_character_file_that_is_not_utf8_points_at_bytes(byte_file, tmp_path, capsys):
    assert main(["train", "--text", str(byte_file), "--out", str(tmp_path / "run"), *TINY_CLI_FLAGS]) != 0
    error = capsys.readouterr().err.strip()
    assert "is not UTF-8 text" in error and "--units bytes" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_bytes_and_characters_never_mix_in_fine_tuning(trained_run, byte_run, tmp_path):
    with pytest.raises(CharLMError, match="a model of chars cannot start a model of bytes"):
        fine_tune(trained_run[0], TINY_TEXT, tmp_path / "a", overrides={"units": "bytes"}, console=QUIET)
    with pytest.raises(CharLMError, match="a model of bytes cannot start a model of chars"):
        fine_tune(byte_run[0], TINY_TEXT, tmp_path / "b", overrides={"units": "chars"}, console=QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    tuned = fine_tune(byte_run[0], "Ünïcödé 😀 notes " * 40, tmp_path / "c", overrides={"epochs": 1}, console=QUIET)
    assert charlm_jax.load(tmp_path / "c").vocab == Vocab.of_bytes() and tuned.history


def test_an_unseen_character_is_refused_or_left_out_and_counted(trained_run, capsys):
    lm = charlm_jax.load(trained_run[0])
    text = TINY_TEXT[:200]
    with_unseen = text[:50] + "Ж" + text[50:120] + "😀😀" + text[120:]
    with pytest.raises(CharLMError, match="3 character|2 character"):
        charlm_jax.score(lm, with_unseen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped = charlm_jax.score(lm, with_unseen, unseen="skip")
    assert any("3 of 203 characters" in str(w.message) for w in caught if issubclass(w.category, CharLMWarning))
    np.testing.assert_array_equal(skipped, charlm_jax.score(lm, text))  # scored as the text without them
    with pytest.raises(CharLMError, match="unseen must be one of"):
        charlm_jax.score(lm, text, unseen="ignore")


def test_the_cli_says_how_many_unseen_characters_it_left_out(trained_run, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text(TINY_TEXT[:300] + "Ж€", encoding="utf-8")
    run = str(trained_run[0])
    assert main(["eval", "--checkpoint", run, "--text", str(path)]) != 0
    assert "--unseen skip" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", run, "--text", str(path), "--unseen", "skip"]) == 0
    captured = capsys.readouterr()
    assert "2 of 302 characters" in captured.err and "bits/char over" in captured.out
    assert main(["generate", "--checkpoint", run, "--prompt", "the Ж fox", "--length", "5"]) != 0
    assert main(["generate", "--checkpoint", run, "--prompt", "the Ж fox", "--length", "5", "--unseen", "skip"]) == 0
    assert '"the  fox"' in capsys.readouterr().out
