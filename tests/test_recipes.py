"""The recipes: `book` is the book's config exactly, `fast` keeps its data and optimizer family, `auto` picks a
tier for the time budget and regularises a text its budget reads many times."""

import math

import pytest

from charlm_jax.errors import CharLMError
from charlm_jax.settings.config import TrainConfig
from charlm_jax.settings.recipes import RECIPES, recipe_config


def test_book_recipe_is_the_default_config():
    assert recipe_config("book") == TrainConfig() == recipe_config()
    book = TrainConfig()
    assert (book.maxlen, book.step, book.hidden_size, book.batch_size, book.learning_rate) == (60, 3, 128, 128, 0.01)
    assert (book.objective, book.clip_norm, book.lr_schedule, book.early_stopping_patience) == (
        "next_char",
        None,
        "constant",
        0,
    )


def test_fast_recipe_keeps_the_books_data_and_optimizer_family_and_overrides_apply():
    fast = recipe_config("fast")
    book = TrainConfig()
    assert (fast.maxlen, fast.step, fast.batch_size, fast.val_fraction, fast.lowercase) == (
        book.maxlen,
        book.step,
        book.batch_size,
        book.val_fraction,
        book.lowercase,
    )
    assert (fast.rmsprop_decay, fast.rmsprop_eps) == (book.rmsprop_decay, book.rmsprop_eps)
    assert fast.objective == "dense" and fast.clip_norm is not None and fast.lr_schedule == "cosine"
    assert recipe_config("fast", epochs=7, clip_norm=2.0).clip_norm == 2.0
    assert set(RECIPES) >= {"book", "fast"}
    with pytest.raises(CharLMError, match="unknown recipe 'nope'"):
        recipe_config("nope")


def test_auto_recipe_needs_a_budget_and_picks_a_tier_for_it():
    from charlm_jax.settings import recipes

    with pytest.raises(CharLMError, match="--recipe auto .*pass --time-limit SECONDS"):
        recipe_config("auto")
    with pytest.raises(CharLMError, match="--time-limit must be > 0"):
        recipe_config("auto", time_limit=0)
    for limit, values in recipes.AUTO_TIERS:  # a budget at a tier's upper limit is in that tier
        chosen = recipe_config("auto", time_limit=limit if math.isfinite(limit) else 1e6)
        assert chosen == TrainConfig(**values) and chosen.compute_dtype == "float32"
        # a dtype given wins over the tier's; every other flag overrides as with any recipe
        assert recipe_config("auto", time_limit=limit, compute_dtype="bfloat16").compute_dtype == "bfloat16"
        assert recipe_config("auto", time_limit=limit, epochs=3).epochs == 3
    # the tiers are ordered by budget and every one is a streams recipe that a time limit ends
    limits = [limit for limit, _ in recipes.AUTO_TIERS]
    assert limits == sorted(limits) and limits[-1] == float("inf")
    assert all(values["batching"] == "streams" for _, values in recipes.AUTO_TIERS)


def test_cli_recipe_auto_without_a_time_limit_is_one_line(capsys, tmp_path):
    from charlm_jax.cli.app import main

    assert main(["train", "--recipe", "auto", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --time-limit SECONDS" in err and "Traceback" not in err


def test_auto_regularises_a_text_its_budget_reads_many_times():
    from charlm_jax.settings import recipes

    short_limit = recipes.AUTO_TIERS[0][0]
    # the passes a budget makes over a text: this many characters make exactly the threshold
    threshold_chars = int(short_limit * recipes.SHORT_CHARS_PER_SECOND / recipes.SMALL_TEXT_PASSES)
    small = recipe_config("auto", time_limit=short_limit, corpus_chars=threshold_chars // 4)
    large = recipe_config("auto", time_limit=short_limit, corpus_chars=threshold_chars * 4)
    unknown = recipe_config("auto", time_limit=short_limit)
    assert small.dropout == recipes.SMALL_TEXT_DROPOUT > 0
    assert large.dropout == unknown.dropout == 0.0
    assert small == TrainConfig(**{**large.to_dict(), "temperatures": large.temperatures, "dropout": small.dropout})
    # the ten-minute tier's own dropout, raised for a text it reads more than MANY_PASSES times; the two-minute
    # tier keeps its own; a dropout given wins over the rule
    long_limit = 600.0
    many_chars = int(long_limit * recipes.LONG_CHARS_PER_SECOND / recipes.MANY_PASSES)
    assert recipe_config("auto", time_limit=long_limit, corpus_chars=many_chars * 2).dropout == 0.4
    assert recipe_config("auto", time_limit=long_limit).dropout == recipes.AUTO_TIERS[-1][1]["dropout"] == 0.4
    many_passes = recipe_config("auto", time_limit=long_limit, corpus_chars=many_chars // 2)
    assert many_passes.dropout == 0.55 and many_passes.anneal_start == recipes.MANY_PASSES_ANNEAL_START < 1.0
    assert many_passes.anneal_share == recipes.MANY_PASSES_ANNEAL_SHARE < TrainConfig().anneal_share
    few_passes = recipe_config("auto", time_limit=long_limit, corpus_chars=many_chars * 2)
    assert (few_passes.anneal_start, few_passes.anneal_share) == (1.0, TrainConfig().anneal_share)
    assert recipe_config("auto", time_limit=120, corpus_chars=1_000).dropout == recipes.AUTO_TIERS[1][1]["dropout"]
    assert recipe_config("auto", time_limit=60, corpus_chars=1_000, dropout=0.0).dropout == 0.0
    assert recipe_config("auto", time_limit=long_limit, corpus_chars=1_000, dropout=0.2).dropout == 0.2
    # every tier validates with one stateful pass over the tail's first AUTO_VAL_CHARS characters
    for limit, _ in recipes.AUTO_TIERS:
        tier = recipe_config("auto", time_limit=min(limit, 1e4))
        assert (tier.val_mode, tier.val_chars) == ("stateful", recipes.AUTO_VAL_CHARS)


def test_cli_recipe_auto_trains_what_the_library_picks_for_that_text(tmp_path, tiny_text):
    import charlm_jax
    from charlm_jax.cli.app import main

    text_file = tmp_path / "tiny.txt"
    text_file.write_text(tiny_text)
    out = tmp_path / "run"
    small = ["--maxlen", "12", "--hidden-size", "16", "--batch-size", "8", "--sample-length", "0"]
    flags = ["--recipe", "auto", "--time-limit", "3", "--compute-dtype", "float32", *small, "--no-progress"]
    assert main(["train", "--text", str(text_file), "--out", str(out), *flags]) == 0
    expected = recipe_config(
        "auto",
        time_limit=3,
        corpus_chars=len(tiny_text),
        compute_dtype="float32",
        maxlen=12,
        hidden_size=16,
        batch_size=8,
        sample_length=0,
    )
    assert charlm_jax.load(out).config == expected and expected.dropout > 0  # a tiny text: read many times
