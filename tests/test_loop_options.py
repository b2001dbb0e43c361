"""The loop's options: best checkpoint, early stopping, time limit, recipes from the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.errors import CharLMError
from charlm_jax.io.checkpoint import CheckpointStore
from charlm_jax.train.loop import Limits, fit

from helpers import QUIET, TickingClock, assert_trees_equal, tiny_config


def records_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_best_checkpoint_holds_the_epoch_with_the_lowest_validation(tmp_path, tiny_text):
    # A rate high enough that validation gets worse after it first improves, so best != last.
    config = tiny_config(epochs=4, learning_rate=0.05, sample_length=0)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    bits = [r["val_bits_per_char"] for r in result.history]
    best_epoch = int(np.argmin(bits)) + 1
    assert (result.best_epoch, result.best_val_bits_per_char) == (best_epoch, min(bits))
    best = charlm_jax.load(tmp_path / "best")
    store = CheckpointStore(tmp_path / "best", create=False)
    try:
        meta = store.restore_meta()
    finally:
        store.close()
    assert (meta.epoch, meta.val_bits_per_char) == (best_epoch, min(bits))
    # Its params are that epoch's: re-training to that epoch reproduces them exactly.
    again = fit(
        tiny_config(epochs=best_epoch, learning_rate=0.05, sample_length=0),
        tiny_text,
        tmp_path / "again",
        console=QUIET,
    )
    assert_trees_equal(best.params, again.state.params)
    assert [r.get("best", False) for r in result.history] == [
        b < min(bits[:i], default=np.inf) for i, b in enumerate(bits)
    ]


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path, tiny_text):
    # A learning rate far below float32 resolution leaves the params bit-identical, so
    # validation never improves after epoch 1.
    config = tiny_config(epochs=10, learning_rate=1e-30, early_stopping_patience=2, sample_length=0)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    assert result.stop_reason == "early_stopping" and not result.resumable
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best_epoch == 1
    assert len({r["val_bits_per_char"] for r in result.history}) == 1


def test_early_stopping_is_off_by_default(tmp_path, tiny_text):
    config = tiny_config(epochs=4, learning_rate=1e-30, sample_length=0)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    assert result.stop_reason == "completed" and len(result.history) == 4


def test_time_limit_validates_the_partial_epoch_and_resume_finishes_the_run(tmp_path, tiny_text):
    config = tiny_config(epochs=2, sample_length=0, steps_per_call=16)  # an epoch is 19 steps: one block is partial
    first = fit(config, tiny_text, tmp_path, console=QUIET, limits=Limits(max_seconds=1e-9))
    assert first.stop_reason == "time_limit" and first.resumable and not first.interrupted
    partial = records_of(tmp_path)[-1]
    assert partial["partial_epoch"] and partial["epoch"] == 1 and np.isfinite(partial["val_bits_per_char"])
    assert (
        partial["train_seconds"] > 0 and partial["step"] == int(first.state.step) == config.steps_per_call
    )  # one block
    done = fit(config, tiny_text, tmp_path, console=QUIET, resume=True)
    assert done.stop_reason == "completed"
    seconds = [r["train_seconds"] for r in records_of(tmp_path)]
    assert seconds == sorted(seconds)  # the training clock continues across the resume
    whole = fit(config, tiny_text, tmp_path / "whole", console=QUIET)
    assert_trees_equal(done.state.params, whole.state.params)


def test_records_carry_the_learning_rate_and_gradient_norms(tmp_path, tiny_text):
    config = tiny_config(epochs=2, lr_schedule="cosine", lr_final_fraction=0.1, sample_length=0)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    first, last = result.history
    assert last["learning_rate"] == pytest.approx(0.001, rel=1e-5)  # cosine reached its end value
    assert first["learning_rate"] > last["learning_rate"]
    assert 0 < first["grad_norm_mean"] <= first["grad_norm_max"]


@pytest.mark.slow  # a 2 x 192 CLI run; --recipe auto's CLI test covers the recipe path
def test_cli_recipe_fast_trains_with_its_values_and_flags_override(capsys, tmp_path, tiny_text):
    text_file = tmp_path / "tiny.txt"
    text_file.write_text(tiny_text)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--recipe",
            "fast",
            "--text",
            str(text_file),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--maxlen",
            "12",
            "--step",
            "2",
            "--hidden-size",
            "16",
            "--num-layers",
            "1",
            "--batch-size",
            "16",
            "--sample-length",
            "0",
            "--warmup-steps",
            "3",
            "--no-progress",
        ]
    )
    assert code == 0
    lm = charlm_jax.load(out)
    expected = charlm_jax.recipe_config(
        "fast",
        epochs=1,
        maxlen=12,
        step=2,
        hidden_size=16,
        num_layers=1,
        batch_size=16,
        sample_length=0,
        warmup_steps=3,
    )
    assert lm.config == expected and lm.config.objective == "dense" and lm.config.dropout == 0.4
    assert "best validation" in capsys.readouterr().out
    # --resume keeps the run's recipe; only --epochs changes.
    code = main(["train", "--text", str(text_file), "--out", str(out), "--epochs", "2", "--resume", "--no-progress"])
    assert code == 0 and charlm_jax.load(out).config == charlm_jax.recipe_config(
        "fast",
        epochs=2,
        maxlen=12,
        step=2,
        hidden_size=16,
        num_layers=1,
        batch_size=16,
        sample_length=0,
        warmup_steps=3,
    )
    assert charlm_jax.load(out / "best").step > 0


def test_cli_time_limit_must_be_positive(capsys, tmp_path):
    code = main(["train", "--time-limit", "0", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("charlm-jax: error: --time-limit (Limits.max_seconds) must be > 0")
        and err.count("\n") == 1
    )


def test_a_time_budget_fits_the_cosine_schedule_and_resume_keeps_the_plan(tmp_path, tiny_text):
    """With an injected clock (0.1 s per block of 4 steps) the plan is exact, whatever the machine's speed."""
    config = tiny_config(epochs=500, lr_schedule="cosine", warmup_steps=0, sample_length=0, steps_per_call=4)
    first = fit(
        config,
        tiny_text,
        tmp_path,
        console=QUIET,
        limits=Limits(max_train_seconds=3.0, clock=TickingClock(0.1)),
    )
    planned = records_of(tmp_path)[-1]
    assert first.stop_reason == "time_limit" and 3.0 <= planned["train_seconds"] < 3.2
    # Planned after the second block: 8 steps + 98 % of the 2.8 s left at 0.025 s per step, not 500 epochs.
    assert planned["schedule_steps"] == 8 + int(0.98 * 2.8 / 0.025) == 117
    assert planned["learning_rate"] < config.learning_rate  # the cosine has decayed within the budget
    with CheckpointStore(tmp_path, create=False) as store:
        assert store.restore_meta().schedule_steps == planned["schedule_steps"]
    fit(
        config,
        tiny_text,
        tmp_path,
        console=QUIET,
        limits=Limits(max_train_seconds=4.0, clock=TickingClock(0.1)),
        resume=True,
    )
    assert records_of(tmp_path)[-1]["schedule_steps"] == planned["schedule_steps"]  # the plan is kept


def test_a_wall_clock_budget_ends_the_run_within_it_final_record_included(tmp_path, tiny_text):
    """Every read of the injected clock is 0.1 s: blocks, validations, samples and checkpoints all cost time, and
    the run's last record (its checkpoint written) still comes before the budget is spent."""
    config = tiny_config(epochs=500, lr_schedule="cosine", warmup_steps=0, sample_length=0, steps_per_call=4)
    clock = TickingClock(0.1)
    result = fit(config, tiny_text, tmp_path, console=QUIET, limits=Limits(max_seconds=6.0, clock=clock, started=0.0))
    records = records_of(tmp_path)
    assert result.stop_reason == "time_limit" and records[-1]["step"] == int(result.state.step)
    assert records[-1]["wall_seconds"] <= 6.0 and clock.now <= 6.0 + 0.5  # the last line: within a few reads
    assert records[-1]["train_seconds"] < records[-1]["wall_seconds"]  # the wall clock counts more than training
    with CheckpointStore(tmp_path, create=False) as store:
        saved = store.restore_meta()
    assert 0 < saved.wall_seconds <= 6.0 and saved.schedule_steps == records[-1]["schedule_steps"]
    # A resume counts the wall clock already spent: at the budget, it is refused before any work.
    with pytest.raises(CharLMError, match="already its time limit"):
        fit(config, tiny_text, tmp_path, console=QUIET, resume=True, limits=Limits(max_seconds=saved.wall_seconds))


def test_records_space_out_to_a_share_of_a_wall_clock_budget_and_a_run_past_its_best_stops():
    from types import SimpleNamespace

    from charlm_jax.train.loop import RECORD_SHARE, account_record, past_best
    from charlm_jax.train.past_best import PAST_BEST_SHARE
    from charlm_jax.train.run import RunState, val_windows

    now = [0.0]
    run = SimpleNamespace(
        limits=Limits(max_seconds=100.0, clock=lambda: now[0], started=0.0), config=tiny_config(eval_every_steps=10)
    )
    state = RunState(train=None, carries=None, step=100, step_seconds=0.01)
    state.history.append({"step": 100, "best": True, "eval_seconds": 0.4})
    account_record(run, state, 1.5)  # a validation of 0.4 s at 0.01 s a step: one per 500 steps is 8 %
    assert state.record_every == round(0.4 / (RECORD_SHARE * 0.01)) == 500
    assert state.record_seconds == 1.5 and state.best_wall_seconds == 0.0  # the whole record: the final's reserve
    for step in (600, 1100):
        state.step, now[0] = step, now[0] + 6.0
        state.history.append({"step": step, "eval_seconds": 0.4})
        account_record(run, state, 1.5)
        assert not past_best(run, state)  # 12 s past the best is under a fifth of 100 s, and two records only
    state.step, now[0] = 1600, PAST_BEST_SHARE * 100.0
    state.history.append({"step": 1600, "eval_seconds": 0.4})
    account_record(run, state, 1.5)
    assert past_best(run, state) and "since step 100" in state.stop_note
    untimed = SimpleNamespace(limits=Limits(max_train_seconds=100.0), config=run.config)
    assert not past_best(untimed, state)
    # How much of the tail a validation scores: --val-chars, and under a wall clock at most 100 a budget second.
    config = tiny_config(val_chars=20_000)
    assert val_windows(config, Limits(max_seconds=60.0)) == 6000 and val_windows(config, Limits()) == 20_000
    assert val_windows(config, Limits(max_train_seconds=60.0)) == 20_000


def test_eval_every_steps_adds_records_and_changes_no_parameter(tmp_path, tiny_text):
    config = tiny_config(epochs=2, sample_length=0, steps_per_call=4, eval_every_steps=10)
    result = fit(config, tiny_text, tmp_path / "often", console=QUIET)
    steps = [(r["step"], r.get("partial_epoch", False)) for r in result.history]
    # 35 steps per epoch in blocks of 4: evaluations after the blocks that reach 10, 20, 30, 40, 50, 60.
    assert steps == [(12, True), (20, True), (32, True), (35, False), (43, True), (51, True), (63, True), (70, False)]
    plain = fit(tiny_config(epochs=2, sample_length=0, steps_per_call=4), tiny_text, tmp_path / "plain", console=QUIET)
    assert_trees_equal(result.state.params, plain.state.params)
    assert result.history[-1]["val_bits_per_char"] == plain.history[-1]["val_bits_per_char"]


def test_a_second_fit_with_the_same_shapes_compiles_nothing(tmp_path, tiny_text):
    """The train block, the eval step and the samples' scans are compiled once per process, not per run."""
    from charlm_jax.runtime.distributed import make_mesh
    from charlm_jax.train.steps import compiled_train_block, eval_step
    from charlm_jax.use.decode import stream_chunk, stream_start

    compiled = (compiled_train_block(make_mesh()).jitted, eval_step, stream_start, stream_chunk)
    config = tiny_config(hidden_size=19, epochs=1, steps_per_call=7)  # shapes no other test compiles
    fit(config, tiny_text, tmp_path / "first", console=QUIET)
    after_first = [fn._cache_size() for fn in compiled]
    # Another seed, more epochs, other temperatures: the same shapes and static options.
    fit(
        tiny_config(hidden_size=19, epochs=2, steps_per_call=7, seed=3, temperatures=(0.7, 0.1, 1.5, 2.0)),
        tiny_text,
        tmp_path / "second",
        console=QUIET,
    )
    assert [fn._cache_size() for fn in compiled] == after_first


def test_the_schedule_is_fitted_on_a_block_that_compiled_nothing():
    """A block of a length not run before includes compiling (an epoch's shorter last block): timed on it,
    the plan would be several times too short, so the fit waits for a length run before."""
    from types import SimpleNamespace

    from charlm_jax.train.loop import SCHEDULE_FIT_LATEST_BLOCK, schedule_fit_due
    from charlm_jax.train.run import RunState

    run = SimpleNamespace(limits=Limits(max_seconds=60.0), config=tiny_config(lr_schedule="cosine"))
    state = RunState(train=None, carries=None, step=0)

    def ran(length: int) -> bool:  # what train_one_block records of a block
        state.blocks_run += 1
        state.last_block_compiled = length not in state.block_lengths_run
        state.block_lengths_run.add(length)
        return schedule_fit_due(run, state)

    assert [ran(20), ran(7), ran(20)] == [False, False, True]  # 20 steps, the epoch's last 7, 20 again
    state = RunState(train=None, carries=None, step=0)
    assert [ran(n) for n in range(1, SCHEDULE_FIT_LATEST_BLOCK + 1)][-2:] == [False, True]  # never repeated
    untimed = SimpleNamespace(limits=Limits(), config=run.config)
    assert not schedule_fit_due(untimed, state)


def test_a_stateful_validation_is_one_pass_over_the_tail_with_the_state_carried(tmp_path, tiny_text):
    """val_mode="stateful": each record's figure is what `bits_per_char(..., mode="stateful")` gives the weights
    on the tail's first val_chars characters, and the record says which figure it holds."""
    from charlm_jax.data.windows import prepare_text, split_windows

    config = tiny_config(epochs=2, sample_length=0, val_mode="stateful", val_chars=100)
    result = fit(config, tiny_text, tmp_path, console=QUIET)
    last = records_of(tmp_path)[-1]
    assert last["val_mode"] == "stateful" and last["val_chars_scored"] == 100 and "val_windows" not in last
    prepared = prepare_text(tiny_text, config.lowercase)
    tail = prepared[split_windows(len(prepared), config.maxlen, config.step, config.val_fraction).val_start :][:101]
    lm = charlm_jax.load(tmp_path, step=int(result.state.step))
    expected = charlm_jax.bits_per_char(lm, tail, mode="stateful")
    np.testing.assert_allclose(last["val_bits_per_char"], expected, rtol=1e-5)
    fit(tiny_config(epochs=1, sample_length=0), tiny_text, tmp_path / "window", console=QUIET)
    window = records_of(tmp_path / "window")[-1]
    assert window["val_mode"] == "window" and window["val_windows"] > 0


def test_a_run_validated_statefully_ends_with_the_books_figure_of_its_best(tmp_path, tiny_text):
    """The end of a run validated statefully scores ``<out>/best`` on the tail's windows, each character from
    the maxlen before it: the figure the same run validated on windows records (val_mode does not change
    training: one epoch, one record, the same weights)."""
    import io

    from rich.console import Console

    config = tiny_config(epochs=1, sample_length=0, val_chars=0)
    printed = io.StringIO()
    console = Console(file=printed, width=400)
    stateful = fit(replace(config, val_mode="stateful"), tiny_text, tmp_path / "stateful", console=console)
    windowed = fit(config, tiny_text, tmp_path / "window", console=QUIET)
    assert stateful.best_val_bits_per_char != windowed.best_val_bits_per_char  # two figures
    assert stateful.best_val_bits_per_char_windows == pytest.approx(windowed.best_val_bits_per_char, rel=1e-6)
    assert windowed.best_val_bits_per_char_windows is None  # its records hold that figure already
    last_line = printed.getvalue().strip().splitlines()[-1]  # the run's last line says both
    assert f"{stateful.best_val_bits_per_char:.3f} bits/char (stateful)" in last_line
    assert f"{stateful.best_val_bits_per_char_windows:.3f} on the tail's windows" in last_line
