"""Any integer is a seed: the same seed always gives the same key and text, different seeds different ones,
and a value that is not an integer is refused in one line, through the API and the CLI alike."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.errors import CharLMError
from charlm_jax.runtime.seeds import seed_key, seed_words
from charlm_jax.settings.config import TrainConfig
from charlm_jax.train.steps import RunKeys

from helpers import tiny_config

SEEDS_OF_EVERY_SIZE = [0, -1, -5, 2**31 - 1, 2**31, 2**32, 2**32 - 5, 2**63, 2**64, 2**70, 10**30, -(2**70)]


def key_bits(key) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_seeds_of_the_32_bit_range_are_jax_own_keys():
    for seed in (0, 1, -5, 2**31 - 1, -(2**31)):
        assert key_bits(seed_key(seed)) == key_bits(jax.random.key(seed))


def test_every_size_gives_its_own_key_the_same_each_time():
    keys = [key_bits(seed_key(seed)) for seed in SEEDS_OF_EVERY_SIZE]
    assert keys == [key_bits(seed_key(seed)) for seed in SEEDS_OF_EVERY_SIZE]
    assert len(set(keys)) == len(keys)  # jax.random.key alone maps 2**32 to 0's key


@settings(max_examples=40, deadline=None)
@given(st.integers(-(2**100), 2**100), st.integers(-(2**100), 2**100))
def test_two_different_seeds_never_share_a_key(first, second):
    if first != second:
        assert key_bits(seed_key(first)) != key_bits(seed_key(second))
    assert key_bits(seed_key(first)) == key_bits(seed_key(first))


@given(st.integers(-(2**200), 2**200))
def test_the_words_rebuild_the_seed(seed):
    words = seed_words(seed)
    assert all(0 <= word < 2**32 for word in words)
    assert sum(word << (32 * i) for i, word in enumerate(words)) == abs(seed)


@pytest.mark.parametrize("seed", [True, 1.5, "7", None])
def test_a_seed_that_is_not_an_integer_is_refused_in_one_line(seed):
    with pytest.raises(CharLMError, match="seed must be an integer"):
        seed_key(seed)
    with pytest.raises(CharLMError, match="seed must be an integer"):
        TrainConfig(seed=seed)


def test_a_run_of_any_seed_has_its_own_keys():
    inits = [key_bits(RunKeys.from_seed(tiny_config(seed=seed).seed).init) for seed in SEEDS_OF_EVERY_SIZE]
    assert len(set(inits)) == len(inits)
    assert tiny_config(seed=np.int64(3)).to_dict()["seed"] == 3 and type(tiny_config(seed=np.int64(3)).seed) is int


def test_generate_and_stream_take_any_seed(trained_run):
    out, _ = trained_run
    lm = charlm_jax.load(out)
    texts = {}
    for seed in SEEDS_OF_EVERY_SIZE:
        text = charlm_jax.generate(lm, "the quick", seed=seed, length=16, temperatures=[1.0])[0]
        assert text == charlm_jax.generate(lm, "the quick", seed=seed, length=16, temperatures=[1.0])[0]
        assert "".join(charlm_jax.stream(lm, "the quick", seed=seed, length=16, temperatures=[1.0], chunk=5)) == text
        texts[seed] = text
    assert len(set(texts.values())) > len(texts) // 2  # 16 characters at T=1: different seeds, different texts
    with pytest.raises(CharLMError, match="seed must be an integer"):
        charlm_jax.generate(lm, "the quick", seed=1.5, length=4)


def test_the_cli_takes_a_70_bit_seed_and_prints_the_api_text(capsys, trained_run):
    out, _ = trained_run
    seed = 2**70
    code = main(
        ["generate", "--checkpoint", str(out), "--prompt", "the quick", "--length", "16"]
        + ["--temperatures", "1.0", "--seed", str(seed)]
    )
    printed = capsys.readouterr()
    assert code == 0 and "Traceback" not in printed.err
    expected = charlm_jax.generate(charlm_jax.load(out), "the quick", seed=seed, length=16, temperatures=[1.0])[0]
    assert expected in printed.out
