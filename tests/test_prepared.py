"""Prepared corpora: streamed encoding equals encoding the whole text, training on the memory map equals
training on the text, the validation cap, the CLI, and TensorBoard events read back by TensorBoard."""

import json

import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli import app as cli
from charlm_jax.cli import texts as cli_texts
from charlm_jax.data.prepared import IDS_NAME, META_NAME, open_prepared, prepare, prepared_for
from charlm_jax.data.windows import Vocab, split_windows
from charlm_jax.errors import CharLMError
from charlm_jax.train.loop import fit

from helpers import QUIET, TINY_CLI_FLAGS, tiny_config

MIXED = "Héllo, Wörld!\r\nΣΊΣΥΦΟΣ and İstanbul: tabs\tand 🙂 emoji.\n" * 5


@pytest.mark.parametrize("block_chars", [7, 1 << 20])  # blocks that split lines and words; one block
@pytest.mark.parametrize("lowercase", [True, False])
def test_streamed_preparation_equals_encoding_the_whole_text(tmp_path, block_chars, lowercase):
    source = tmp_path / "text.txt"
    source.write_text(MIXED, encoding="utf-8", newline="")
    corpus = prepare(source, tmp_path / "prepared", lowercase=lowercase, block_chars=block_chars)
    # Python lower-cases a capital sigma by its context; blocks of 7 cut "ΣΊΣΥΦΟΣ" and may differ there.
    text = "".join(
        block.lower() if lowercase else block
        for block in (MIXED[i : i + block_chars] for i in range(0, len(MIXED), block_chars))
    )
    vocab = Vocab.from_text(text)
    assert corpus.vocab == vocab and corpus.ids.dtype == np.uint8 and corpus.num_chars == len(text)
    np.testing.assert_array_equal(np.asarray(corpus.ids), vocab.encode(text))
    assert corpus.text(0, 20) == text[:20]
    meta = json.loads((tmp_path / "prepared" / META_NAME).read_text())
    assert meta["lowercase"] == lowercase and len(meta["source_sha256"]) == 64


def test_more_than_256_characters_take_uint16(tmp_path):
    text = "".join(chr(0x400 + i) for i in range(300)) * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    corpus = prepare(tmp_path / "t.txt", tmp_path / "p", lowercase=False)
    assert corpus.ids.dtype == np.uint16 and corpus.vocab.size == 300
    assert corpus.vocab.decode(corpus.ids) == text


def test_a_damaged_or_missing_preparation_is_one_line(tmp_path):
    with pytest.raises(CharLMError, match="is not a prepared corpus"):
        open_prepared(tmp_path)
    (tmp_path / "t.txt").write_text("abc" * 100)
    prepare(tmp_path / "t.txt", tmp_path / "p")
    with open(tmp_path / "p" / IDS_NAME, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CharLMError, match="100 bytes, 300 expected: the preparation was cut short"):
        open_prepared(tmp_path / "p")
    (tmp_path / "p" / META_NAME).write_text("{not json")
    with pytest.raises(CharLMError, match="is damaged"):
        open_prepared(tmp_path / "p")
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bad")
    with pytest.raises(CharLMError, match="is not UTF-8 text"):
        prepare(tmp_path / "bad.txt", tmp_path / "q")
    assert not (tmp_path / "q" / IDS_NAME).exists()  # nothing half-written is left


def test_a_preparation_is_reused_only_while_the_file_is_the_same(tmp_path):
    source = tmp_path / "t.txt"
    source.write_text("abcd" * 50)
    first = prepared_for(source, tmp_path / "cache", lowercase=True)
    mtime = (tmp_path / "cache" / IDS_NAME).stat().st_mtime_ns
    assert prepared_for(source, tmp_path / "cache", lowercase=True).num_chars == first.num_chars
    assert (tmp_path / "cache" / IDS_NAME).stat().st_mtime_ns == mtime  # reused, not rewritten
    source.write_text("abcde" * 50)
    assert prepared_for(source, tmp_path / "cache", lowercase=True).num_chars == 250


def test_training_on_a_prepared_corpus_equals_training_on_the_text(tmp_path, tiny_text):
    source = tmp_path / "text.txt"
    source.write_text(tiny_text)
    corpus = prepare(source, tmp_path / "prepared", block_chars=100)
    config = tiny_config(epochs=2)
    from_text = fit(config, tiny_text, tmp_path / "a", console=QUIET)
    from_ids = fit(config, corpus, tmp_path / "b", console=QUIET)
    for a, b in zip(from_text.history, from_ids.history):
        timing = ("seconds", "per_second")
        assert {k: v for k, v in a.items() if not k.endswith(timing)} == {
            k: v for k, v in b.items() if not k.endswith(timing)
        }
    assert charlm_jax.load(tmp_path / "a").default_prompt == charlm_jax.load(tmp_path / "b").default_prompt
    with pytest.raises(CharLMError, match="was lower-cased but this run's --lowercase is False"):
        fit(tiny_config(lowercase=False), corpus, tmp_path / "c", console=QUIET)


def test_the_validation_cap_scores_the_same_evenly_spaced_windows(tmp_path, tiny_text):
    full = split_windows(10_000, 60, 3, 0.1)
    capped = split_windows(10_000, 60, 3, 0.1, val_chars=300)
    assert full.val_windows_all == len(full.val_starts) == 940 and capped.val_windows_all == 940
    assert capped.val_stride == 4 and len(capped.val_starts) == 235 <= 300
    np.testing.assert_array_equal(capped.val_starts, full.val_starts[::4])
    np.testing.assert_array_equal(capped.train_starts, full.train_starts)
    assert len(split_windows(10_000, 60, 3, 0.1, val_chars=5_000).val_starts) == 940  # under the cap: all
    # The loop validates on the capped windows: its number is the mean score of exactly those.
    config = tiny_config(val_fraction=0.3, val_chars=50, sample_length=0)
    result = fit(config, tiny_text, tmp_path / "run", console=QUIET)
    lm = charlm_jax.load(tmp_path / "run")
    split = split_windows(len(tiny_text), config.maxlen, config.step, config.val_fraction, config.val_chars)
    assert split.val_stride > 1
    scores = charlm_jax.score(lm, tiny_text[split.val_start :])  # every window of the tail
    expected = -np.mean(scores[:: split.val_stride])
    assert result.history[-1]["val_bits_per_char"] == pytest.approx(expected, rel=1e-5)


def test_prepare_train_and_eval_from_the_cli(tmp_path, tiny_text, capsys):
    source = tmp_path / "text.txt"
    source.write_text(tiny_text)
    assert cli.main(["prepare", "--text", str(source), "--out", str(tmp_path / "data")]) == 0
    assert f"prepared {len(tiny_text):,} characters (28 distinct, uint8)" in capsys.readouterr().out
    flags = [
        *TINY_CLI_FLAGS,
        "--epochs",
        "1",
        "--sample-length",
        "0",
        "--no-progress",
    ]
    assert cli.main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *flags]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    lm = charlm_jax.load(tmp_path / "run")
    split = split_windows(len(tiny_text), 12, 2, 0.1)
    assert scored["characters"] == len(tiny_text) - split.val_start - 12  # the whole tail, uncapped
    assert scored["bits_per_char"] == pytest.approx(
        charlm_jax.bits_per_char(lm, tiny_text[split.val_start :]), rel=1e-6
    )


def test_a_large_text_file_trains_through_a_prepared_corpus_by_itself(tmp_path, tiny_text, capsys, monkeypatch):
    monkeypatch.setattr(cli_texts, "AUTO_PREPARE_BYTES", 1000)
    source = tmp_path / "text.txt"
    source.write_text(tiny_text)
    flags = [
        *TINY_CLI_FLAGS,
        "--epochs",
        "1",
        "--sample-length",
        "0",
        "--no-progress",
    ]
    assert cli.main(["train", "--text", str(source), "--out", str(tmp_path / "run"), *flags]) == 0
    assert "reading it through a prepared corpus" in capsys.readouterr().out
    assert open_prepared(tmp_path / "run" / "prepared").num_chars == len(tiny_text)
