"""A run past its best under a wall-clock budget: rewound to the best weights and annealed, stopped, or left alone."""

import json

import jax
import numpy as np
import pytest

import charlm_jax
import charlm_jax.train.past_best as past_best_module
from charlm_jax.io.checkpoint import CheckpointStore
from charlm_jax.settings.config import TrainConfig, validate_config
from charlm_jax.train.loop import Limits, fit
from charlm_jax.train.steps import Anneal, learning_rate_schedule

from helpers import QUIET, TickingClock, assert_trees_equal, tiny_config


def records_of(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_anneal_falls_from_the_best_steps_rate_to_the_final_rate():
    config = TrainConfig(lr_schedule="cosine", learning_rate=0.02, warmup_steps=10, lr_final_fraction=0.05)
    planned = learning_rate_schedule(config, 1000)
    anneal = Anneal(at_step=600, from_step=300, steps=100)
    rewound = learning_rate_schedule(config, 1000, anneal)
    before = np.arange(0, 600, 7)
    np.testing.assert_allclose([rewound(s) for s in before], [planned(s) for s in before], rtol=1e-6)
    np.testing.assert_allclose(rewound(600), planned(300), rtol=1e-6)  # the rate the best weights were trained at
    falling = np.array([rewound(s) for s in range(600, 701)])
    assert np.all(np.diff(falling) < 0)
    np.testing.assert_allclose([rewound(700), rewound(900)], [0.001, 0.001], rtol=1e-5)  # then the final rate


def test_the_anneal_can_start_below_the_best_steps_rate():
    config = TrainConfig(lr_schedule="cosine", learning_rate=0.02, lr_final_fraction=0.05, anneal_start=0.25)
    planned = learning_rate_schedule(config, 1000)
    rewound = learning_rate_schedule(config, 1000, Anneal(at_step=600, from_step=300, steps=100))
    np.testing.assert_allclose(rewound(600), 0.25 * planned(300), rtol=1e-6)
    np.testing.assert_allclose(rewound(700), 0.001, rtol=1e-5)  # the same final rate
    with pytest.raises(charlm_jax.CharLMError, match="anneal_start must be in"):
        validate_config(TrainConfig(anneal_start=0.0))


def stale_after_two_records(run, state):
    """Past its best at any record from the third on that is not itself the best (the tiny text soon overfits)."""
    best = past_best_module.best_step(state)
    return best if len(state.history) >= 3 and best is not None and best < state.step else None


def budgeted(**overrides):
    values = dict(epochs=500, lr_schedule="cosine", warmup_steps=0, sample_length=0, steps_per_call=4)
    return tiny_config(**{**values, **overrides})


def test_a_run_past_its_best_is_rewound_to_the_best_weights_annealed_and_ended(tmp_path, tiny_text, monkeypatch):
    monkeypatch.setattr(past_best_module, "stale_since", stale_after_two_records)
    rewinds = []
    real_rewind = past_best_module.rewind

    def watched_rewind(run, state, anneal):
        best = charlm_jax.load(run.directory.path / "best").params  # what <out>/best holds when it rewinds
        real_rewind(run, state, anneal)
        rewinds.append((anneal, best, jax.tree.map(np.asarray, state.train.params), int(state.train.step)))

    monkeypatch.setattr(past_best_module, "rewind", watched_rewind)
    limits = Limits(max_seconds=60.0, clock=TickingClock(0.05))
    config = budgeted(eval_every_steps=8, anneal_share=0.3)
    result = fit(config, tiny_text, tmp_path, console=QUIET, limits=limits)
    [(anneal, best, params, step)] = rewinds
    records = records_of(tmp_path)
    best_step = max(r["step"] for r in records if r.get("best") and r["step"] <= anneal.at_step)
    assert anneal.from_step == best_step and step == anneal.at_step  # the step counter runs on
    assert anneal.steps == int(0.3 * (anneal.at_step - best_step))  # the budget holds more
    assert_trees_equal(params, best)
    # The rate falls from the best step's to the final one, and the run ends at the block boundary where it has.
    assert result.stop_reason == "early_stopping" and anneal.end_step <= int(result.state.step) < anneal.end_step + 4
    assert records[-1]["step"] == int(result.state.step)
    np.testing.assert_allclose(records[-1]["learning_rate"], 0.01 * 0.1, rtol=1e-5)
    with CheckpointStore(tmp_path, create=False) as store:
        assert Anneal(*store.restore_meta().anneal) == anneal  # saved: a resumed run keeps falling


def test_a_rewound_run_interrupted_mid_anneal_resumes_to_the_same_weights(tmp_path, tiny_text, monkeypatch):
    monkeypatch.setattr(past_best_module, "stale_since", stale_after_two_records)
    config = budgeted(eval_every_steps=8)

    def run(out, **limits):
        return fit(config, tiny_text, out, console=QUIET, limits=Limits(clock=TickingClock(0.05), **limits))

    whole = run(tmp_path / "whole", max_seconds=60.0)
    with CheckpointStore(tmp_path / "whole", create=False) as store:
        anneal = Anneal(*store.restore_meta().anneal)
    assert whole.stop_reason == "early_stopping" and anneal.steps >= 4
    part = run(tmp_path / "part", max_seconds=60.0, max_steps=anneal.at_step + 4)
    assert part.stop_reason == "step_limit"
    resumed = fit(config, tiny_text, tmp_path / "part", console=QUIET, resume=True, limits=Limits(max_seconds=60.0))
    assert resumed.stop_reason == "early_stopping" and int(resumed.state.step) == anneal.end_step
    assert_trees_equal(whole.state.params, resumed.state.params)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"past_best": "stop"}, "early_stopping"), ({"lr_schedule": "constant"}, "early_stopping"),
     ({"past_best": "continue"}, "time_limit")],
)  # fmt: skip
def test_stop_and_a_constant_rate_end_at_once_and_continue_trains_on(
    tmp_path, tiny_text, monkeypatch, overrides, reason
):
    monkeypatch.setattr(past_best_module, "stale_since", stale_after_two_records)
    monkeypatch.setattr(past_best_module, "rewind", lambda *args: pytest.fail("rewound"))
    limits = Limits(max_seconds=60.0, clock=TickingClock(0.05))
    result = fit(budgeted(eval_every_steps=8, **overrides), tiny_text, tmp_path, console=QUIET, limits=limits)
    assert result.stop_reason == reason
    records = records_of(tmp_path)
    if reason == "early_stopping":
        assert "best" not in records[-1] and records[-2].get("best")  # ended at the first record past its best
