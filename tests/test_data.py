"""Text -> ids -> windows: equal to the book's loops, O(corpus) memory, a clean split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm_jax.data.windows import (
    ShuffledWindows,
    Vocab,
    batches_per_epoch,
    gather_windows,
    host_windows,
    padded_eval_batches,
    shuffled,
    split_windows,
)
from charlm_jax.errors import CharLMError


def book_vectorize(text, maxlen, step):
    """The book's loops (section 8.1), verbatim in spirit: one-hot x and y."""
    sentences, next_chars = [], []
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i : i + maxlen])
        next_chars.append(text[i + maxlen])
    chars = sorted(list(set(text)))
    char_indices = dict((char, chars.index(char)) for char in chars)
    x = np.zeros((len(sentences), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(sentences), len(chars)), dtype=bool)
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t, char_indices[char]] = 1
        y[i, char_indices[next_chars[i]]] = 1
    return x, y, chars


@pytest.mark.parametrize("maxlen,step", [(60, 3), (7, 1), (5, 4)])
def test_windows_and_targets_equal_the_books_one_hot_arrays(tiny_text, maxlen, step):
    x, y, chars = book_vectorize(tiny_text, maxlen, step)
    vocab = Vocab.from_text(tiny_text)
    assert vocab.chars == "".join(chars)
    ids = vocab.encode(tiny_text)
    starts = split_windows(len(tiny_text), maxlen, step, 0.0).train_starts  # nothing held out: the book's range
    windows = host_windows(ids, starts, maxlen + 1)  # inputs, then the book's target
    np.testing.assert_array_equal(np.asarray(jax.nn.one_hot(windows[:, :maxlen], vocab.size)) > 0, x)
    np.testing.assert_array_equal(np.asarray(jax.nn.one_hot(windows[:, maxlen], vocab.size)) > 0, y)
    on_device = gather_windows(jnp.asarray(ids), jnp.asarray(starts), maxlen + 1)
    np.testing.assert_array_equal(np.asarray(on_device), windows)


def test_host_windows_read_a_memory_map_in_any_shape(tiny_text, tmp_path):
    vocab = Vocab.from_text(tiny_text)
    ids = vocab.encode(tiny_text)
    ids.astype(np.uint8).tofile(tmp_path / "ids.bin")
    mapped = np.memmap(tmp_path / "ids.bin", np.uint8, mode="r")
    starts = split_windows(len(tiny_text), 10, 3, 0.0).train_starts[:12].reshape(3, 4)  # a block: (steps, batch)
    windows = host_windows(mapped, starts, 11)
    assert windows.shape == (3, 4, 11) and windows.dtype == np.int32
    for s, row in zip(starts.reshape(-1), windows.reshape(-1, 11)):
        assert vocab.decode(row) == tiny_text[s : s + 11]


def test_vocab_is_the_books_sorted_set_and_round_trips_any_unicode():
    text = "Hello, wörld!\n\tÆ 🙂 \x00\uffff\U0010ffff"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int32
    assert [vocab.chars[i] for i in ids] == list(text)  # each id is the character's index
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.reshape(2, -1)) == text and vocab.decode([]) == ""


def test_encode_names_characters_outside_the_vocabulary():
    with pytest.raises(CharLMError, match="not in the model's vocabulary: 'xz'"):
        Vocab("abc").encode("abxcz")


def test_split_never_trains_on_the_validation_tail():
    n, maxlen, step = 1000, 20, 3
    split = split_windows(n, maxlen, step, 0.1)
    val_start = 900
    # Every training target, in both objectives, lies before the tail.
    assert int(split.train_starts.max()) + maxlen < val_start
    assert int(split.val_starts.min()) == val_start
    # Every tail character from val_start + maxlen on is predicted exactly once.
    targets = split.val_starts + maxlen
    np.testing.assert_array_equal(targets, np.arange(val_start + maxlen, n))


def test_text_shorter_than_a_window_is_refused():
    with pytest.raises(CharLMError, match="too short for one training window"):
        split_windows(50, 60, 3, 0.1)
    with pytest.raises(CharLMError, match="validation tail"):
        split_windows(200, 60, 3, 0.1)


SPLIT = split_windows(300 + 10, 10, 3, 0.0)  # 100 windows starting at 0, 3, ..., 297: 6 full batches of 16


@pytest.mark.parametrize("num_items", [1, 2, 3, 100, 1000, 4097, 30_011])
def test_shuffled_is_a_permutation_fixed_by_the_key(num_items):
    key = jax.random.key(7)
    order = shuffled(key, num_items, np.arange(num_items))
    np.testing.assert_array_equal(np.sort(order), np.arange(num_items))
    np.testing.assert_array_equal(shuffled(key, num_items, np.arange(num_items)[::-1]), order[::-1])  # random access
    if num_items >= 1000:
        assert not np.array_equal(order, shuffled(jax.random.key(8), num_items, np.arange(num_items)))
        # Looks shuffled: no drift with position, and neighbours far apart.
        assert abs(np.corrcoef(np.arange(num_items), order)[0, 1]) < 0.05
        assert np.median(np.abs(np.diff(order))) > num_items / 10


def test_shuffled_windows_are_a_permutation_fixed_by_the_key():
    split, starts = SPLIT, SPLIT.train_starts
    assert split.train_windows == 100 and starts[-1] == 297
    key = jax.random.key(3)
    blocks = list(ShuffledWindows(split, 16, 4).blocks(key))
    assert [b.shape for b in blocks] == [(4, 16), (2, 16)]  # a full block and the epoch's remainder
    first = np.concatenate(blocks).reshape(-1)
    again = np.concatenate(list(ShuffledWindows(split, 16, 4).blocks(key))).reshape(-1)
    other = np.concatenate(list(ShuffledWindows(split, 16, 4).blocks(jax.random.key(4)))).reshape(-1)
    assert batches_per_epoch(100, 16) == 6 and len(first) == 96  # last partial batch dropped
    assert len(set(first.tolist())) == 96 and set(first.tolist()) <= set(starts.tolist())
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The block size changes the grouping, never the order of batches.
    one_by_one = np.concatenate(list(ShuffledWindows(split, 16, 1).blocks(key))).reshape(-1)
    np.testing.assert_array_equal(one_by_one, first)


def test_a_resumed_epoch_finishes_its_block_then_falls_back_into_step():
    key = jax.random.key(3)
    whole = np.concatenate(list(ShuffledWindows(SPLIT, 16, 4).blocks(key))).reshape(-1)
    resumed = list(ShuffledWindows(SPLIT, 16, 4).blocks(key, 1))
    assert [b.shape[0] for b in resumed] == [3, 2]  # batches 1-3, then 4-5 as uninterrupted
    np.testing.assert_array_equal(np.concatenate(resumed).reshape(-1), whole[16:])


def test_padded_eval_batches_cover_every_window_once():
    starts = np.arange(10, 47, dtype=np.int32)  # 37 windows
    seen = []
    for chunk, weights in padded_eval_batches(starts, 16):
        assert chunk.shape == (16,) and weights.shape == (16,)
        seen.extend(chunk[weights > 0].tolist())
    assert seen == starts.tolist()
