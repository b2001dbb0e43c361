"""A run remembers its text: resumed and scored without being told it again, another text refused by sha256."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.data.corpus import load_text
from charlm_jax.data.record import text_sha256
from charlm_jax.errors import CharLMError
from charlm_jax.train.loop import fit

from helpers import QUIET, TINY_CLI_FLAGS, assert_trees_equal, tiny_config


def shuffled_lines(text: str) -> str:
    """The same characters in another order: the vocabulary cannot tell it from the original."""
    lines = text.split(". ")
    random.Random(0).shuffle(lines)
    return ". ".join(lines)


@pytest.fixture()
def text_file(tmp_path, tiny_text):
    path = tmp_path / "mine.txt"
    path.write_text(tiny_text.replace("dog.", "dog.\n"), encoding="utf-8")
    return path


def test_a_run_records_its_text_and_resume_reads_it_again(tmp_path, text_file):
    out = tmp_path / "run"
    fit(tiny_config(), load_text(text_file), out, console=QUIET)
    record = charlm_jax.load(out).text
    assert record.kind == "file" and record.source == str(text_file.resolve())
    assert record.sha256 == text_sha256(text_file.read_text(encoding="utf-8"))
    assert record.characters == len(text_file.read_text(encoding="utf-8"))
    # resume=True with no text continues on the recorded file: the same parameters as a run given the text.
    resumed = fit(None, None, out, resume=True, overrides={"epochs": 2}, console=QUIET)
    whole = fit(tiny_config(epochs=2), text_file.read_text(encoding="utf-8"), tmp_path / "whole", console=QUIET)
    assert_trees_equal(resumed.state.params, whole.state.params)


def test_a_resume_on_another_text_with_the_same_characters_is_refused_naming_both(tmp_path, text_file):
    out = tmp_path / "run"
    original = text_file.read_text(encoding="utf-8")
    fit(tiny_config(), load_text(text_file), out, console=QUIET)
    other = tmp_path / "other.txt"
    other.write_text(shuffled_lines(original), encoding="utf-8")
    assert sorted(set(other.read_text())) == sorted(set(original))
    with pytest.raises(CharLMError) as refused:
        fit(None, load_text(other), out, resume=True, overrides={"epochs": 2}, console=QUIET)
    message = str(refused.value)
    assert str(text_file.resolve()) in message and str(other.resolve()) in message
    assert "resume=True" in message and "--resume" not in message  # the API's words
    assert "--resume" in refused.value.cli_message and "--out" in refused.value.cli_message
    assert charlm_jax.load(out).step == 35  # nothing trained


def test_a_run_on_a_bare_string_is_recorded_by_its_hash_and_must_be_given_again(tmp_path, tiny_text):
    out = tmp_path / "run"
    fit(tiny_config(), tiny_text, out, console=QUIET)
    record = charlm_jax.load(out).text
    assert (record.kind, record.source, record.sha256) == ("string", None, text_sha256(tiny_text))
    with pytest.raises(CharLMError, match="a string passed to fit, which it cannot read again"):
        fit(None, None, out, resume=True, overrides={"epochs": 2}, console=QUIET)
    with pytest.raises(CharLMError, match="not on a string passed to fit"):
        fit(None, shuffled_lines(tiny_text), out, resume=True, overrides={"epochs": 2}, console=QUIET)
    assert fit(None, tiny_text, out, resume=True, overrides={"epochs": 2}, console=QUIET).state.step == 70


def test_the_api_refuses_in_its_own_words(tmp_path, tiny_text):
    out = tmp_path / "run"
    fit(tiny_config(), tiny_text, out, console=QUIET)
    with pytest.raises(CharLMError) as refused:
        fit(tiny_config(), tiny_text, out, console=QUIET)
    assert "pass resume=True to continue it, or choose another out_dir" in str(refused.value)
    assert "pass --resume to continue it, or choose another --out" in refused.value.cli_message
    with pytest.raises(CharLMError, match=r"pass epochs \(overrides=\{'epochs': N\}\) greater than 1"):
        fit(None, tiny_text, out, resume=True, console=QUIET)


def test_score_with_no_text_scores_the_held_out_tail_of_the_runs_own_text(tmp_path, text_file):
    out = tmp_path / "run"
    fit(tiny_config(), load_text(text_file), out, console=QUIET)
    lm = charlm_jax.load(out)
    original = text_file.read_text(encoding="utf-8")
    from charlm_jax.data.windows import split_windows

    split = split_windows(len(original), lm.config.maxlen, lm.config.step, lm.config.val_fraction)
    tail = original[split.val_start :]
    np.testing.assert_array_equal(charlm_jax.score(lm), charlm_jax.score(lm, tail))
    text_file.write_text(shuffled_lines(original), encoding="utf-8")  # the file changed since the run
    with pytest.raises(CharLMError, match="not on"):
        charlm_jax.score(lm)
    text_file.unlink()
    with pytest.raises(CharLMError, match="which is gone: put it back, or pass the run's text"):
        charlm_jax.score(lm)


def test_the_cli_resumes_and_evaluates_a_run_without_its_text(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    flags = [*TINY_CLI_FLAGS, "--no-progress", "--sample-length", "0"]
    assert main(["train", "--text", str(text_file), "--out", str(out), "--epochs", "1", *flags]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert "resuming at step 35" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    lm = charlm_jax.load(out)
    assert reported["bits_per_char"] == pytest.approx(float(-charlm_jax.score(lm).mean()), abs=1e-12)
    assert reported["scored"].startswith(f"the held-out tail of '{text_file.resolve()}'")
    other = tmp_path / "other.txt"
    other.write_text(shuffled_lines(text_file.read_text(encoding="utf-8")), encoding="utf-8")
    assert main(["train", "--text", str(other), "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("charlm-jax: error: the run in") and "\n" not in error
    assert "pass the run's own --text (or none: it is read again) with --resume" in error
