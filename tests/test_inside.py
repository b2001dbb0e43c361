"""Looking inside a model (charlm_jax.inspect, rank_cells, the page): the same numbers as score, the states the
model really carries, features read off the text, a chance level that a chance unit does not beat, and a page
that needs no network."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import charlm_jax
from charlm_jax.cli.app import main
from charlm_jax.use.cells import rank_cells, text_features
from charlm_jax.use.inside import inspect
from charlm_jax.use.page import page_data, write_page

from helpers import TINY_TEXT

TEXT = 'he said "the fox (a quick one)" and\n    then (the dog [lazy]) slept # at last\n' * 6


@pytest.fixture(scope="module")
def model(trained_run):
    return charlm_jax.load(trained_run[0])


def test_inspect_gives_score_s_probabilities_and_the_states_the_model_carries(model):
    text = TINY_TEXT[:700]
    seen = inspect(model, text, top_k=4, gates=True)
    assert np.isnan(seen.log2p[0])
    np.testing.assert_allclose(seen.log2p[1:], charlm_jax.score(model, text, mode="stateful"), rtol=1e-5, atol=1e-5)
    carries, _ = model.model.apply({"params": model.params}, np.asarray(seen.ids)[None, :], last_only=True)
    np.testing.assert_allclose(seen.c[-1, 0], np.asarray(carries[0][0])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen.h[-1, 0], np.asarray(carries[0][1])[0], rtol=1e-5, atol=1e-6)
    i, f, g = seen.gates[1:, 0, 0], seen.gates[1:, 0, 1], seen.gates[1:, 0, 2]
    np.testing.assert_allclose(seen.c[1:, 0], f * seen.c[:-1, 0] + i * g, rtol=1e-5, atol=1e-6)  # c = f c + i g
    assert np.all(np.diff(seen.top_probs, axis=1) <= 0) and np.all(seen.top_probs.sum(axis=1) <= 1 + 1e-6)
    actual = np.exp2(seen.log2p[1:])  # what the model gave the next character never beats its top choice
    assert np.all(actual <= seen.top_probs[:-1, 0] + 1e-6)
    layers, hidden = seen.c.shape[1:]
    assert seen.bytes_per_char == 8 * layers * hidden + 16 * layers * hidden + 8 * 4 + 4 + 8


def test_the_top_characters_are_next_char_probabilities_for_a_prompt_within_a_window(model):
    """A prompt shorter than maxlen is read from a zero state whole by both: the same distribution."""
    prompt = "the quick b"
    assert len(prompt) < model.config.maxlen
    seen = inspect(model, prompt, top_k=model.vocab.size)
    expected = charlm_jax.next_char_probabilities(model, prompt)[0]
    np.testing.assert_allclose(seen.top_probs[-1], np.sort(expected)[::-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(expected[seen.top_ids[-1]], seen.top_probs[-1], rtol=1e-5, atol=1e-7)


def test_a_byte_model_is_inspected_byte_by_byte(tmp_path):
    from helpers import QUIET, tiny_config

    text = ('naïve "café" — 😀 (x [y]) ' * 40).encode().decode()
    fit = charlm_jax.fit(tiny_config(units="bytes", lowercase=False), text, tmp_path / "run", console=QUIET)
    assert fit.history
    lm = charlm_jax.load(tmp_path / "run")
    seen = inspect(lm, text[:200])
    labels = seen.labels()
    assert len(labels) == len(text[:200].encode()) and "😀" in labels and "" in labels
    np.testing.assert_allclose(seen.log2p[1:], charlm_jax.score(lm, text[:200], mode="stateful"), rtol=1e-5)
    data = page_data(seen, rank_cells(seen.c, seen.h, seen.row_text()), "bytes", 5000)
    assert data["labels"] == labels and len(data["top"]) == len(labels)


def test_a_text_of_a_hundred_thousand_characters_fits(model):
    text = (TINY_TEXT * 80)[:100_000]
    seen = inspect(model, text)
    assert seen.c.shape[0] == 100_000 and np.isfinite(seen.log2p[1:]).all()
    assert seen.bytes_per_char * 100_000 < 50e6  # the tiny model: 16 units, about 160 bytes a character


def test_features_are_read_off_the_text():
    features = text_features('a "b" (c [d]) e\n  f # g\nh')
    assert features["inside double quotes"][:6].tolist() == [0, 0, 1, 1, 1, 0]
    assert features["bracket depth"][6:14].tolist() == [1, 1, 1, 2, 2, 1, 0, 0]
    assert features["position in line"][16:19].tolist() == [1, 2, 3] and features["position in line"][15] == 0
    assert features["indentation"][16:20].tolist() == [1, 2, 2, 2]
    assert features["inside a # comment"][20:24].tolist() == [1, 1, 1, 0]
    assert features["after a newline"][15] == 1 and features["inside a word"][0] == 1


def test_a_unit_that_follows_a_feature_beats_chance_and_a_random_one_does_not():
    rng = np.random.default_rng(0)
    depth = text_features(TEXT)["bracket depth"]
    n = len(TEXT)
    c = rng.normal(size=(n, 1, 8)).astype(np.float32)
    h = rng.normal(size=(n, 1, 8)).astype(np.float32)
    c[:, 0, 5] = depth + rng.normal(scale=0.3, size=n)  # unit c[0][5] tracks the bracket depth
    rankings = {r.feature: r for r in rank_cells(c, h, TEXT)}
    assert rankings["bracket depth"].unit == "c[0][5]" and rankings["bracket depth"].beats_chance
    # Units of pure noise: each feature's best beats its 99 shifted copies with probability 1/100, so two of the
    # seven features present doing so has a probability of about 0.2 % (a correct ranking fails this that often).
    noise = rank_cells(rng.normal(size=(n, 1, 8)), rng.normal(size=(n, 1, 8)), TEXT)
    assert sum(r.beats_chance for r in noise) <= 1
    assert not {r.feature: r for r in noise}["inside single quotes"].present  # TEXT has no single quote


def test_the_page_is_self_contained_and_the_cli_writes_it(model, trained_run, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TINY_TEXT[:900])
    page = tmp_path / "page.html"
    assert main(["inspect", "--checkpoint", str(trained_run[0]), "--text", str(text_file), "--out", str(page)]) == 0
    out = capsys.readouterr().out
    assert "bracket depth" in out and "bits/char (stateful)" in out
    html = page.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)  # nothing fetched from the network
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1))
    seen = inspect(model, TINY_TEXT[:900])
    assert data["labels"] == list(seen.text[: len(data["labels"])])
    np.testing.assert_allclose(data["surprisal"][1:50], -seen.log2p[1:50], atol=1e-3)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page, fragment: str) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=4000", "--dump-dom"]
    return subprocess.run([*command, f"file://{page}#{fragment}"], capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium: apt-get install chromium (the CI installs it)")
def test_the_page_renders_in_a_browser_and_a_choice_recolours_it(model, tmp_path):
    seen = inspect(model, TINY_TEXT[:600])
    page = write_page(tmp_path / "page.html", page_data(seen, rank_cells(seen.c, seen.h, seen.text), "t", 5000))
    units = json.loads(re.search(r'application/json">(.*?)</script>', page.read_text(), re.S).group(1))["units"]
    first, second, surprisal = (
        render(page, f"cell={units[0]}"),
        render(page, f"cell={units[3]}"),
        render(page, "view=surprisal"),
    )
    colours = [re.findall(r'<span data-i="\d+" style="background-color: ([^"]+)', dom) for dom in (first, second)]
    assert len(colours[0]) == 600 and colours[0] != colours[1]  # the text coloured, by the unit chosen
    assert f'data-view="{units[0]}"' in first and 'data-view="surprisal"' in surprisal
    assert first.count("<tr") >= 1 + 8 and "bracket depth" in first and "not in this text" in first  # the table
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,900",
         f"--screenshot={shot}", f"file://{page}#cell={units[0]}"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
