"""The copy check: matching statistics from a suffix array equal a brute-force search; the report's longest span
and share; `generate --copy-check` against the run's own training text."""

import numpy as np
import pytest

pytest.importorskip("pydivsufsort")

import charlm_jax  # noqa: E402
from charlm_jax.cli.app import main  # noqa: E402
from charlm_jax.errors import CharLMError  # noqa: E402
from charlm_jax.use.copies import CopyIndex, copy_check, copy_report  # noqa: E402

from helpers import QUIET, tiny_config  # noqa: E402


def brute_force_lengths(text: np.ndarray, sample: np.ndarray) -> np.ndarray:
    haystack = "".join(chr(65 + int(i)) for i in text)
    needle = "".join(chr(65 + int(i)) for i in sample)
    lengths = []
    for start in range(len(needle)):
        length = 0
        while start + length < len(needle) and needle[start : start + length + 1] in haystack:
            length += 1
        lengths.append(length)
    return np.array(lengths)


@pytest.mark.parametrize("alphabet, size", [(2, 50), (4, 2000), (30, 5000), (300, 3000)])
def test_matching_lengths_equal_a_brute_force_search(alphabet, size):
    rng = np.random.default_rng(alphabet)
    text = rng.integers(0, alphabet, size)
    index = CopyIndex.build(text)
    for trial in range(12):
        sample = rng.integers(0, alphabet, 80)
        if trial % 2:  # a copied stretch, and one at the very end of the text
            sample[5:45] = text[(size - 40) // 2 : (size - 40) // 2 + 40]
            sample[60:] = text[-20:]
        np.testing.assert_array_equal(index.matching_lengths(sample), brute_force_lengths(text, sample))


def test_the_report_names_the_longest_span_and_the_share_in_long_spans():
    lengths = np.array([3, 2, 1, 0, 5, 4, 3, 2, 1, 0])  # spans [0, 3) and [4, 9)
    report = copy_report(lengths, "abcdefghij", min_span=3)
    assert (report.longest, report.longest_at, report.longest_text) == (5, 4, "efghi")
    assert report.copied_share == pytest.approx(8 / 10)
    assert copy_report(lengths, "abcdefghij", min_span=6).copied_share == 0.0
    with pytest.raises(CharLMError, match="min_span must be a positive integer"):
        copy_report(lengths, "abcdefghij", min_span=0)


def test_generate_copy_check_reads_the_runs_training_text(tmp_path, tiny_text, capsys):
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    charlm_jax.fit(tiny_config(epochs=1), charlm_jax.load_text(str(path)), tmp_path / "run", console=QUIET)
    lm = charlm_jax.load(tmp_path / "run")
    report = copy_check(lm, "the quick brown fox jumps xyz")
    assert report.longest == len("the quick brown fox jumps ") and report.longest_at == 0
    flags = ["generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "the ", "--length", "60"]
    assert main([*flags, "--temperatures", "0.2", "1.0", "--copy-check", "--copy-min", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("copy check: longest span found in the training text") == 2 and "spans of >= 8" in out


def test_the_ngram_table_bans_exactly_the_training_ngrams():
    """copied_ngrams against a Python set of the text's n-grams, for every context of random rows."""
    import jax.numpy as jnp

    from charlm_jax.use.copies import copied_ngrams, ngram_table

    rng = np.random.default_rng(0)
    vocab, n = 5, 3
    text = rng.integers(0, vocab, 400)
    grams = {tuple(text[i : i + n]) for i in range(len(text) - n + 1)}
    table = ngram_table(text, n)
    assert len(table[0]) == len(grams)
    rows = rng.integers(0, vocab, (64, 6)).astype(np.int32)  # each row's ring: 6 ids pushed, width 6
    banned = np.asarray(copied_ngrams(jnp.asarray(rows), jnp.full(64, 6), table, n, vocab))
    for row, bans in zip(rows, banned):
        expected = [tuple(row[-(n - 1) :]) + (v,) in grams for v in range(vocab)]
        np.testing.assert_array_equal(bans, expected)
    nothing_yet = np.asarray(copied_ngrams(jnp.asarray(rows), jnp.full(64, 1), table, n, vocab))
    assert not nothing_yet.any()  # fewer than n - 1 ids: no context, no ban


def test_a_row_that_never_completes_a_training_ngram_copies_no_span_that_long(tmp_path, tiny_text):
    path = tmp_path / "tiny.txt"
    path.write_text(tiny_text, encoding="utf-8")
    charlm_jax.fit(tiny_config(epochs=2), charlm_jax.load_text(str(path)), tmp_path / "run", console=QUIET)
    lm = charlm_jax.load(tmp_path / "run")
    from charlm_jax.use.copies import training_index

    index = training_index(lm)
    for n in (4, 6):
        texts = charlm_jax.generate(lm, "the ", seed=n, temperatures=(0.2, 1.0), length=150, no_copy_ngram=n)
        for text in texts:
            lengths = index.matching_lengths(lm.encode_prompt("the " + text))
            ends_in_generated = np.arange(len(lengths)) + n > len("the ")  # the prompt itself may be copied
            assert (lengths[ends_in_generated] < n).all()
            assert copy_check(lm, text, index, min_span=n).longest < n
