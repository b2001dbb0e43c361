"""The run's TensorBoard events: what a run records is what TensorBoard reads back."""

import pytest

from charlm_jax.train.loop import fit

from helpers import QUIET, tiny_config


def test_tensorboard_reads_back_what_the_run_recorded(tmp_path, tiny_text):
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    result = fit(tiny_config(epochs=2, steps_per_call=4), tiny_text, tmp_path, console=QUIET)
    events = event_accumulator.EventAccumulator(
        str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in (
        "train/loss",
        "train/grad_norm",
        "train/learning_rate",
        "train/characters_per_second",
        "train/skipped_steps_total",
        "validation/bits_per_char",
    ):
        assert tag in scalars, tag
    val = [(e.step, e.value) for e in events.Scalars("validation/bits_per_char")]
    assert val == [(r["step"], pytest.approx(r["val_bits_per_char"], rel=1e-6)) for r in result.history]
    assert [e.value for e in events.Scalars("train/learning_rate")][0] == pytest.approx(0.01)
    assert events.Scalars("train/loss")[-1].step == result.history[-1]["step"]
    texts = [tag for tag in events.Tags()["tensors"] if tag.startswith("samples/")]
    assert len(texts) == 4  # one per temperature
    sample = events.Tensors(texts[0])[-1].tensor_proto.string_val[0].decode()
    assert sample.startswith(result.history[-1]["prompt"])
