"""`charlm-jax export`: the generation as a jax.export artifact that a fresh process runs with JAX alone and gets,
for a seed, the text `charlm_jax.generate` gives."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flatbuffers")

import charlm_jax  # noqa: E402
from charlm_jax.cli.app import main  # noqa: E402
from charlm_jax.errors import CharLMError  # noqa: E402
from charlm_jax.interop.export import write_export  # noqa: E402

RUNNER = Path(__file__).resolve().parent.parent / "examples" / "run_exported.py"


def run_exported(artifact: Path, *args: str) -> list[str]:
    """examples/run_exported.py in a fresh process (it asserts that charlm_jax was never imported)."""
    result = subprocess.run([sys.executable, str(RUNNER), str(artifact), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_the_exported_generation_gives_generates_text_in_a_process_without_charlm_jax(trained_run, tmp_path):
    lm = charlm_jax.load(trained_run[0])
    options = charlm_jax.GenerationOptions(length=60, temperatures=(1.0, 1.0, 1.0))
    artifact, _ = write_export(lm, options, tmp_path / "m.jaxexport", max_prompt=32, platforms=("cpu", "cuda", "tpu"))
    meta = json.loads((tmp_path / "m.jaxexport.json").read_text())
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["chars"] == list(lm.vocab.chars)
    for seed, prompt in ((0, "the "), (12345, "a stitch in time saves nine. all")):  # 4 and 32 characters
        texts = run_exported(artifact, "--prompt", prompt, "--seed", str(seed), "--temperatures", "0.4", "1.0", "0")
        assert texts == charlm_jax.generate(lm, prompt, seed=seed, temperatures=(0.4, 1.0, 0.0), length=60)
    too_long = subprocess.run(
        [sys.executable, str(RUNNER), str(artifact), "--prompt", "the " * 9], capture_output=True, text=True
    )
    assert too_long.returncode == 1 and "reads at most 32" in too_long.stderr


def test_filters_exported_as_inputs_take_their_values_at_call_time(trained_run, tmp_path):
    artifact = tmp_path / "f.jaxexport"
    flags = ["export", "--checkpoint", str(trained_run[0]), "--out", str(artifact), "--rows", "2", "--length", "50"]
    assert main([*flags, "--max-prompt", "16", "--with", "top_p", "repetition_penalty", "no_repeat_ngram"]) == 0
    lm = charlm_jax.load(trained_run[0])
    for values in (("0.8", "1.4", "3"), ("0.95", "1.1", "5")):
        texts = run_exported(artifact, "--prompt", "the ", "--seed", "7", "--temperatures", "1.2", "0.7",
                             "--filters", *values)  # fmt: skip
        expected = charlm_jax.generate(lm, "the ", seed=7, temperatures=(1.2, 0.7), length=50, top_p=float(values[0]),
                                       repetition_penalty=float(values[1]), no_repeat_ngram=int(values[2]))  # fmt: skip
        assert texts == expected


def test_what_export_cannot_write_is_refused_in_one_line(trained_run, tmp_path, capsys):
    lm = charlm_jax.load(trained_run[0])
    for options, fragment in (
        (charlm_jax.GenerationOptions(length=5, temperatures=(1.0,), mode="window"), "stateful"),
        (charlm_jax.GenerationOptions(length=5, temperatures=(1.0,), stop=("x",)), "stop strings"),
    ):
        with pytest.raises(CharLMError, match=fragment):
            write_export(lm, options, tmp_path / "x")
    with pytest.raises(CharLMError, match="platforms must be"):
        write_export(
            lm, charlm_jax.GenerationOptions(length=5, temperatures=(1.0,)), tmp_path / "x", platforms=("gpu",)
        )
    assert not (tmp_path / "x").exists()
    assert main(["export", "--checkpoint", str(trained_run[0]), "--out", str(tmp_path / "y"), "--rows", "0"]) == 2
    assert "--rows must be a positive integer" in capsys.readouterr().err
