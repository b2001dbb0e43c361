"""Checkpoints: round trip, resume equality, and clear errors for damaged or foreign ones."""

import json
import shutil

import numpy as np
import pytest

import charlm_jax
from charlm_jax.errors import CharLMError
from charlm_jax.io.checkpoint import CheckpointFallbackWarning, CheckpointStore
from charlm_jax.train.loop import Limits, fit

from helpers import QUIET, assert_trees_equal, tiny_config


def test_load_returns_the_trained_params_vocab_and_config(trained_run):
    out, result = trained_run
    lm = charlm_jax.load(out)
    assert_trees_equal(lm.params, result.state.params)
    assert lm.vocab == result.vocab
    assert lm.config == result.config
    assert lm.step == int(result.state.step)
    assert len(lm.default_prompt) == lm.config.maxlen
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["val_bits_per_char"]) for r in records)
    assert set(records[0]["samples"]) == {"0.2", "0.5", "1", "1.2"}


def test_resume_reaches_the_same_params_as_an_uninterrupted_run(tmp_path, tiny_text):
    config = tiny_config(epochs=2, dropout=0.1, sample_length=0)
    whole = fit(config, tiny_text, tmp_path / "whole", console=QUIET)
    first = fit(config, tiny_text, tmp_path / "split", console=QUIET, limits=Limits(max_steps=7))
    assert first.resumable and not first.interrupted and int(first.state.step) == 7
    resumed = fit(config, tiny_text, tmp_path / "split", console=QUIET, resume=True)
    assert int(resumed.state.step) == int(whole.state.step)
    assert_trees_equal(resumed.state.params, whole.state.params)
    assert_trees_equal(resumed.state.opt_state, whole.state.opt_state)


def test_an_existing_run_is_never_overwritten_without_resume(trained_run, tiny_text):
    out, _ = trained_run
    with pytest.raises(CharLMError, match="already holds a run"):
        fit(tiny_config(), tiny_text, out, console=QUIET)


def test_resume_with_other_settings_or_text_is_refused(tmp_path, trained_run, tiny_text):
    out, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(CharLMError, match="differ from the checkpoint's: \\['hidden_size'\\]"):
        fit(tiny_config(epochs=3, hidden_size=32), tiny_text, copy, resume=True, console=QUIET)
    with pytest.raises(CharLMError, match="not on a string passed to fit"):
        fit(tiny_config(epochs=3), tiny_text + "~#", copy, resume=True, console=QUIET)


def test_missing_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CharLMError, match="no checkpoint directory"):
        charlm_jax.load(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharLMError, match="no checkpoint in"):
        charlm_jax.load(tmp_path / "empty")


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one_with_a_warning(tmp_path, trained_run):
    """The policy: the newest intact step is used, the damaged one named in a warning; a step asked for by
    number is never replaced; with no intact step left, a clear error."""
    out, result = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    newest = int(result.state.step)
    older = charlm_jax.load(out, step=newest // 2)
    for path in (broken / str(newest) / "params").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"garbage")
    with pytest.warns(CheckpointFallbackWarning, match=f"step {newest} .* is damaged .*using step {newest // 2}"):
        fallen_back = charlm_jax.load(broken)
    assert fallen_back.step == newest // 2
    assert_trees_equal(fallen_back.params, older.params)
    with pytest.raises(CharLMError, match="corrupt"):
        charlm_jax.load(broken, step=newest)
    for older in (newest // 2, 0):  # step 0: every run starts with one
        shutil.rmtree(broken / str(older) / "meta")
    with pytest.raises(CharLMError, match="no intact checkpoint"):
        charlm_jax.load(broken)


def test_incompatible_checkpoint_version_is_a_clear_error(tmp_path, trained_run):
    out, result = trained_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    meta_file = other / str(int(result.state.step)) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CharLMError, match="format version 99"):
        charlm_jax.load(other)


def test_store_lists_steps_and_keeps_the_latest_three(tmp_path, tiny_text):
    config = tiny_config(epochs=5, sample_length=0, val_fraction=0.0)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    steps_per_epoch = int(result.state.step) // 5
    with CheckpointStore(tmp_path, create=False) as store:
        assert store.all_steps() == [3 * steps_per_epoch, 4 * steps_per_epoch, 5 * steps_per_epoch]
        assert store.latest_step() == int(result.state.step)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == store.all_steps()
    for step in store.all_steps():  # each kept step loads
        assert charlm_jax.load(tmp_path, step=step).step == step
