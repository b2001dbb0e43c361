"""Fine-tuning (train --init-from): the union vocabulary, known rows kept, the source untouched, the new run a
run like any other, and every bad input refused in one line before anything is written."""

import hashlib
import json

import jax
import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.errors import CharLMError
from charlm_jax.train.loop import Limits, fine_tune

from helpers import QUIET, TINY_CLI_FLAGS

NEW_TEXT = "Ünïcödé notes — with émoji 😀 and CAPITALS. " * 30


def tree_digest(path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tuned(trained_run, tmp_path_factory):
    source, _ = trained_run
    before = tree_digest(source)
    out = tmp_path_factory.mktemp("tuned") / "run"
    result = fine_tune(source, NEW_TEXT, out, overrides={"epochs": 1}, console=QUIET)
    assert tree_digest(source) == before  # the source run is only read
    return source, out, result


def test_the_vocabulary_is_the_union_and_known_rows_keep_their_weights(tuned):
    source, out, _ = tuned
    old, new = charlm_jax.load(source), charlm_jax.load(out, step=0)
    assert new.vocab.chars == "".join(sorted(set(old.vocab.chars) | set(NEW_TEXT.lower())))
    rows = new.vocab.encode(old.vocab.chars)
    np.testing.assert_array_equal(
        new.params["input_kernel"]["embedding"][rows], old.params["input_kernel"]["embedding"]
    )
    np.testing.assert_array_equal(new.params["logits"]["kernel"][:, rows], old.params["logits"]["kernel"])
    np.testing.assert_array_equal(new.params["lstm_0"]["recurrent_kernel"], old.params["lstm_0"]["recurrent_kernel"])
    added = np.setdiff1d(np.arange(new.vocab.size), rows)
    assert len(added) > 0  # "😀" and the accented letters are new
    bias = np.asarray(new.params["logits"]["bias"])
    np.testing.assert_allclose(bias[added], np.min(old.params["logits"]["bias"]))  # the "mean" rule
    assert new.config.hidden_size == old.config.hidden_size and new.step == 0


def test_the_run_records_its_origin_and_resumes_as_any_run(tuned):
    source, out, result = tuned
    origin = json.loads((out / "init_from.json").read_text(encoding="utf-8"))
    assert origin["source_run"] == str(source.resolve()) and origin["source_step"] == charlm_jax.load(source).step
    assert "😀" in origin["added_characters"] and origin["source_text"]["sha256"]
    resumed = charlm_jax.fit(None, NEW_TEXT, out, resume=True, overrides={"epochs": 2}, console=QUIET)
    assert resumed.state.step > result.state.step
    assert "😀" in charlm_jax.load(out).vocab.chars


def test_fresh_rows_are_a_new_models_initialisation(trained_run, tmp_path):
    source, _ = trained_run
    out = tmp_path / "fresh"
    fine_tune(
        source, NEW_TEXT, out, overrides={"epochs": 1}, limits=Limits(max_steps=1), console=QUIET, new_rows="fresh"
    )
    assert json.loads((out / "init_from.json").read_text(encoding="utf-8"))["new_rows"] == "fresh"
    new = charlm_jax.load(out, step=0)
    added = np.setdiff1d(np.arange(new.vocab.size), new.vocab.encode(charlm_jax.load(source).vocab.chars))
    assert np.all(np.asarray(new.params["logits"]["bias"])[added] == 0.0)  # Dense's zero bias, as a new model


@pytest.mark.parametrize(
    "source_of, overrides, fragment",
    [
        (lambda run, tmp: tmp / "missing", {}, "is not a run directory"),
        (lambda run, tmp: tmp, {}, "no checkpoint in"),
        (lambda run, tmp: run, {"hidden_size": 64}, "keeps the source run's model shape"),
        (lambda run, tmp: run, {"num_layers": 3}, "num_layers=3 (source: 1)"),
    ],
)
def test_bad_sources_and_shapes_are_refused_before_anything_is_written(
    trained_run, tmp_path, source_of, overrides, fragment
):
    source, _ = trained_run
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    with pytest.raises(CharLMError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fine_tune(source_of(source, tmp_path / "empty"), NEW_TEXT, out, overrides=overrides, console=QUIET)
    assert not out.exists()


def test_the_cli_fine_tunes_and_refuses_init_from_with_resume(capsys, trained_run, tmp_path):
    source, _ = trained_run
    text = tmp_path / "notes.txt"
    text.write_text(NEW_TEXT, encoding="utf-8")
    out = tmp_path / "cli-tuned"
    code = main(
        ["train", "--init-from", str(source), "--text", str(text), "--out", str(out), "--epochs", "1"]
        + ["--sample-length", "0", "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0 and "fine-tuning from" in captured.out
    assert (out / "init_from.json").exists()
    code = main(["train", "--init-from", str(source), "--resume", "--out", str(out), *TINY_CLI_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "--init-from starts a new run" in err and len(err.strip().splitlines()) == 1
    code = main(
        ["train", "--init-from", str(source), "--text", str(text), "--out", str(tmp_path / "x"), "--hidden-size", "7"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model shape" in err and not (tmp_path / "x").exists()
    assert jax.tree.structure(charlm_jax.load(out).params) == jax.tree.structure(charlm_jax.load(source).params)


def test_fine_tuning_starts_at_half_the_sources_peak_rate_unless_given():
    from charlm_jax.settings.config import TrainConfig
    from charlm_jax.train.init_from import FINE_TUNE_LR_SCALE, fine_tune_config

    source = TrainConfig(learning_rate=0.02, hidden_size=32)
    assert fine_tune_config(source, None, {}).learning_rate == 0.02 * FINE_TUNE_LR_SCALE
    assert fine_tune_config(source, None, {"learning_rate": 0.003}).learning_rate == 0.003
    assert fine_tune_config(source, source, {}).learning_rate == 0.02  # a whole config is taken as it is
